//! Tests against the real restic binary, in temporary directories.
//!
//! Skipped with a printed notice when `restic` is not on `PATH`, unless
//! `CADANG_REQUIRE_RESTIC=1` is set (as in CI), in which case they fail.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CANARY: &str = "canary-pw-Zq8xR2vT";

async fn restic() -> Option<Restic> {
    if find_on_path(Path::new("restic")).is_none() {
        assert!(
            std::env::var("CADANG_REQUIRE_RESTIC").as_deref() != Ok("1"),
            "restic is not installed but CADANG_REQUIRE_RESTIC=1 requires it"
        );
        // Written to the stream directly: the test harness captures `eprintln!`, and
        // a skip should show in CI logs.
        let _ = writeln!(std::io::stderr(), "skipped: restic not installed");
        return None;
    }
    match Restic::locate(None).await {
        Ok(restic) => Some(restic),
        Err(e) => panic!("restic is on PATH but unusable: {e}"),
    }
}

fn repo_at(location: impl Into<String>, password: &str) -> ResticRepo {
    ResticRepo {
        location: location.into(),
        password: Secret::new(password),
        env: Vec::new(),
    }
}

/// Writes `size` bytes that do not compress or deduplicate (xorshift64*).
fn random_file(path: &Path, size: usize, seed: u64) -> std::io::Result<()> {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    data.truncate(size);
    std::fs::write(path, data)
}

/// A source tree: two files, a subdirectory, an empty directory, a symlink and a
/// file that the backup excludes.
fn source_tree(root: &Path) -> std::io::Result<PathBuf> {
    let src = root.join("src");
    std::fs::create_dir_all(src.join("sub"))?;
    std::fs::create_dir_all(src.join("empty"))?;
    std::fs::write(src.join("a.txt"), "hello\n")?;
    random_file(&src.join("sub/b.bin"), 200_000, 7)?;
    std::os::unix::fs::symlink("a.txt", src.join("link"))?;
    std::fs::write(src.join("skip.tmp"), "excluded")?;
    Ok(src)
}

/// The pid of a running restic whose command line contains `needle`.
fn find_restic_pid(needle: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("restic") && cmdline.contains(needle) {
            return Some(pid);
        }
    }
    None
}

/// The state letter of a process (`R`, `S`, `T` for stopped, ...), from /proc.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: the state follows the last `)`, since comm may hold spaces.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    for _ in 0..600 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 30 s");
}

fn assert_no_canary(error: &ResticError) {
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(CANARY), "password leaked: {shown}");
}

/// The password file a running restic was given.
fn password_file_of(pid: i32) -> Option<PathBuf> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    String::from_utf8_lossy(&environ)
        .split('\0')
        .find_map(|v| v.strip_prefix("RESTIC_PASSWORD_FILE="))
        .map(PathBuf::from)
}

/// A slow backup: 8 MB of random data uploaded at 64 KiB/s takes minutes, so it is
/// reliably still running when the test interferes with it.
fn slow_backup(root: &Path) -> std::io::Result<BackupOptions> {
    let src = root.join("slow-src");
    std::fs::create_dir_all(&src)?;
    random_file(&src.join("random.bin"), 8_000_000, 42)?;
    Ok(BackupOptions {
        paths: vec![src],
        limit_upload_kib: Some(64),
        ..BackupOptions::default()
    })
}

fn check_exit(code: Option<i32>, stderr: &[String]) -> error::Exit {
    error::Exit {
        command: "check".into(),
        location: "/srv/repo".into(),
        code,
        signal: None,
        cancelled: None,
        stderr_tail: stderr.to_vec(),
    }
}

fn check_of(code: i32, stdout: &str, stderr: &str) -> Result<CheckOutcome, ResticError> {
    let mut clean_said = false;
    let mut summary = None;
    for line in stdout.lines() {
        match json::parse_check_line(line) {
            CheckLine::NoErrorsFound => clean_said = true,
            CheckLine::Summary(s) => summary = Some(s),
            CheckLine::Other => {}
        }
    }
    let messages: Vec<String> = stderr
        .lines()
        .map(|l| match json::parse_stderr_line(l) {
            StderrLine::Text(t) => t,
            StderrLine::FileError(e) => e.message,
        })
        .collect();
    let exit = check_exit(Some(code), &messages);
    check_verdict(&exit, clean_said, summary, messages, 0)
}

#[test]
fn check_verdicts_map_text_json_and_exit_codes() {
    let clean = include_str!("testdata/check_ok_0_14.stdout");
    assert!(matches!(check_of(0, clean, ""), Ok(CheckOutcome::NoErrors)));

    let stdout = include_str!("testdata/check_read_data_damaged_0_14.stdout");
    let stderr = include_str!("testdata/check_read_data_damaged_0_14.stderr");
    match check_of(1, stdout, stderr) {
        Ok(CheckOutcome::ErrorsFound { messages, .. }) => {
            assert!(
                messages[0].starts_with("Pack ID does not match"),
                "{messages:?}"
            );
        }
        other => panic!("expected ErrorsFound, got {other:?}"),
    }
    let stderr = include_str!("testdata/check_tree_damaged_0_14.stderr");
    assert!(matches!(
        check_of(1, "", stderr),
        Ok(CheckOutcome::ErrorsFound { messages, .. }) if messages.len() == 7
    ));

    let stdout = include_str!("testdata/check_0_17.jsonl");
    let stderr = include_str!("testdata/check_0_17.stderr");
    match check_of(1, stdout, stderr) {
        Ok(CheckOutcome::ErrorsFound { broken_packs, .. }) => assert_eq!(broken_packs.len(), 1),
        other => panic!("expected ErrorsFound, got {other:?}"),
    }
    let clean_json = r#"{"message_type":"summary","num_errors":0}"#;
    assert!(matches!(
        check_of(0, clean_json, ""),
        Ok(CheckOutcome::NoErrors)
    ));

    let wrong = include_str!("testdata/wrong_password_0_14.stderr");
    assert!(matches!(
        check_of(1, "", wrong),
        Err(ResticError::WrongPassword { .. })
    ));
    assert!(matches!(
        check_of(12, "", ""),
        Err(ResticError::WrongPassword { .. })
    ));
    assert!(matches!(
        check_of(11, "", ""),
        Err(ResticError::Locked { .. })
    ));
    assert!(matches!(
        check_of(1, "", "Fatal: network unreachable"),
        Err(ResticError::Failed { code: 1, .. })
    ));
}

#[tokio::test]
async fn missing_or_broken_binaries_are_named() {
    let missing = Path::new("/nonexistent/bin/restic");
    match Restic::locate(Some(missing)).await {
        Err(e @ ResticError::NotFound { .. }) => {
            assert!(e.to_string().contains("/nonexistent/bin/restic"), "{e}");
            assert!(e.to_string().contains("configuration"), "{e}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // `echo version` prints "version": runnable, but not restic.
    match Restic::locate(Some(Path::new("/bin/echo"))).await {
        Err(ResticError::NotRunnable { reason, .. }) => {
            assert!(reason.contains("not a restic version"), "{reason}");
        }
        other => panic!("expected NotRunnable, got {other:?}"),
    }
    match Restic::locate(Some(Path::new("/bin/false"))).await {
        Err(ResticError::NotRunnable { .. }) => {}
        other => panic!("expected NotRunnable, got {other:?}"),
    }
    match Restic::locate(Some(Path::new("/"))).await {
        Err(ResticError::NotRunnable { .. }) => {}
        other => panic!("expected NotRunnable, got {other:?}"),
    }
}

#[tokio::test]
async fn versions_older_than_0_12_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fake = dir.path().join("restic");
    let mut script = std::fs::File::create(&fake)?;
    script.write_all(b"#!/bin/sh\necho 'restic 0.11.0 compiled with go1.15 on linux/amd64'\n")?;
    drop(script);
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    match Restic::locate(Some(&fake)).await {
        Err(e @ ResticError::VersionTooOld { .. }) => {
            assert!(e.to_string().contains("0.11.0"), "{e}");
            assert!(e.to_string().contains("0.12.0"), "{e}");
        }
        other => panic!("expected VersionTooOld, got {other:?}"),
    }
    Ok(())
}

/// A plan's exclude markers and size limit reach restic, which keeps a marked directory
/// and its marker and leaves out the rest of what it holds — as the engine and the agent
/// do — and files larger than the limit.
#[tokio::test]
async fn exclude_markers_and_size_limit_reach_restic() -> TestResult {
    let Some(restic) = restic().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let repo = repo_at(dir.path().join("repo").to_string_lossy(), "correct horse");
    restic.init(&repo).await?;
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("build"))?;
    std::fs::write(
        src.join("build/CACHEDIR.TAG"),
        format!("{}\n", crate::engine::backup::CACHEDIR_TAG_SIGNATURE),
    )?;
    std::fs::write(src.join("build/out.o"), "object")?;
    std::fs::create_dir_all(src.join("scratch"))?;
    std::fs::write(src.join("scratch/.nobackup"), "")?;
    std::fs::write(src.join("scratch/huge.bin"), "scratch")?;
    std::fs::write(src.join("a.txt"), "kept")?;
    std::fs::write(src.join("big.iso"), vec![7u8; 1001])?;
    let opts = BackupOptions {
        paths: vec![src.clone()],
        exclude_if_present: vec![".nobackup".into()],
        exclude_caches: true,
        exclude_larger_than: Some(1000),
        ..BackupOptions::default()
    };
    let done = restic
        .backup(&repo, &opts, &mut |_| {}, &Cancel::new())
        .await?;
    let id = done.summary.snapshot_id.clone().ok_or("no snapshot id")?;
    let nodes = restic.ls(&repo, id.as_str()).await?;
    let prefix = format!("{}/", src.display());
    let mut listed: Vec<&str> = nodes
        .iter()
        .filter_map(|node| node.path.strip_prefix(&prefix))
        .collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "a.txt",
            "build",
            "build/CACHEDIR.TAG",
            "scratch",
            "scratch/.nobackup"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn backup_snapshots_ls_restore_forget_stats_check() -> TestResult {
    let Some(restic) = restic().await else {
        return Ok(());
    };
    assert!(restic.version() >= &ResticVersion::MINIMUM);
    let dir = tempfile::tempdir()?;
    let repo = repo_at(dir.path().join("repo").to_string_lossy(), "correct horse");
    restic.init(&repo).await?;
    match restic.init(&repo).await {
        Err(ResticError::AlreadyInitialized { .. }) => {}
        other => panic!("expected AlreadyInitialized, got {other:?}"),
    }

    let src = source_tree(dir.path())?;
    let opts = BackupOptions {
        paths: vec![src.clone()],
        tags: vec!["daily".into(), "plan-7".into()],
        host: Some("web1".into()),
        excludes: vec!["*.tmp".into()],
        exclude_if_present: Vec::new(),
        exclude_caches: false,
        exclude_larger_than: None,
        limit_upload_kib: None,
    };
    let mut updates = Vec::new();
    let first = restic
        .backup(
            &repo,
            &opts,
            &mut |p| updates.push(p.clone()),
            &Cancel::new(),
        )
        .await?;
    assert_eq!(first.status, BackupStatus::Complete);
    assert_eq!(first.file_errors_total, 0);
    assert_eq!(first.summary.files_new, 2);
    assert_eq!(first.summary.total_files_processed, 2);
    assert_eq!(first.summary.total_bytes_processed, 200_006);
    assert!(first.summary.dirs_new >= 3);
    assert!(first.summary.data_added >= 200_000);
    assert!(!updates.is_empty(), "no progress reported");
    let first_id = first.summary.snapshot_id.clone().ok_or("no snapshot id")?;

    let snapshots = restic.snapshots(&repo, &[]).await?;
    assert_eq!(snapshots.len(), 1);
    let snap = &snapshots[0];
    assert!(snap.id.as_str().starts_with(first_id.as_str()));
    assert_eq!(snap.host, "web1");
    assert_eq!(snap.tags, ["daily", "plan-7"]);
    assert_eq!(snap.paths, [src.to_string_lossy()]);
    assert!(snap.parent.is_none());
    assert_eq!(restic.snapshots(&repo, &["daily".into()]).await?.len(), 1);
    assert!(
        restic
            .snapshots(&repo, &["nightly".into()])
            .await?
            .is_empty()
    );

    let nodes = restic.ls(&repo, snap.id.as_str()).await?;
    let find = |suffix: &str| nodes.iter().find(|n| n.path.ends_with(suffix));
    let b = find("/sub/b.bin").ok_or("b.bin not listed")?;
    assert_eq!((b.node_type.clone(), b.size), (NodeType::File, 200_000));
    assert_eq!(
        find("/link").map(|n| n.node_type.clone()),
        Some(NodeType::Symlink)
    );
    assert_eq!(
        find("/empty").map(|n| n.node_type.clone()),
        Some(NodeType::Dir)
    );
    assert!(find("skip.tmp").is_none(), "excluded file was backed up");

    let target = dir.path().join("restore-all");
    let restored = restic
        .restore(
            &repo,
            &RestoreOptions::new("latest", &target),
            &Cancel::new(),
        )
        .await?;
    assert_eq!(restored.snapshot_id, snap.id);
    assert_eq!(restored.verified.files, 2);
    assert_eq!(restored.verified.bytes, 200_006);
    assert_eq!(restored.verified.other, 1);
    assert!(restored.verified.dirs >= 3);

    let mut partial = RestoreOptions::new(first_id.as_str(), dir.path().join("restore-sub"));
    partial.includes = vec!["sub".into()];
    partial.restic_verify = false;
    let restored = restic.restore(&repo, &partial, &Cancel::new()).await?;
    assert_eq!(
        (restored.verified.files, restored.verified.bytes),
        (1, 200_000)
    );
    match restic
        .restore(
            &repo,
            &RestoreOptions::new("latest", &target),
            &Cancel::new(),
        )
        .await
    {
        Err(ResticError::InvalidInput(m)) => assert!(m.contains("not empty"), "{m}"),
        other => panic!("expected InvalidInput for a used target, got {other:?}"),
    }

    std::fs::write(src.join("a.txt"), "hello again\n")?;
    let second = restic
        .backup(&repo, &opts, &mut |_| {}, &Cancel::new())
        .await?;
    assert_eq!(second.summary.files_changed, 1);
    assert_eq!(second.summary.files_unmodified, 1);
    let snapshots = restic.snapshots(&repo, &[]).await?;
    assert_eq!(snapshots.len(), 2);
    assert_eq!(snapshots[1].parent.as_ref(), Some(&snapshots[0].id));

    // A hold keeps what the counts would remove.
    let held = KeepPolicy {
        last: Some(1),
        keep_tags: vec!["daily, plan-7".into()],
        ..KeepPolicy::default()
    };
    let forgotten = restic.forget(&repo, &held, false).await?;
    assert!(forgotten.removed.is_empty(), "{forgotten:?}");
    assert_eq!(forgotten.kept.len(), 2);
    let spaced = KeepPolicy {
        keep_tags: vec!["hold,".into()],
        ..KeepPolicy::default()
    };
    assert!(matches!(
        restic.forget(&repo, &spaced, false).await,
        Err(ResticError::InvalidInput(_))
    ));

    let policy = KeepPolicy {
        last: Some(1),
        tags: vec!["daily".into()],
        ..KeepPolicy::default()
    };
    let forgotten = restic.forget(&repo, &policy, true).await?;
    assert!(forgotten.pruned);
    let kept: Vec<_> = forgotten.kept.iter().map(|s| s.id.clone()).collect();
    let removed: Vec<_> = forgotten.removed.iter().map(|s| s.id.clone()).collect();
    assert_eq!(kept, [snapshots[1].id.clone()]);
    assert_eq!(removed, [snapshots[0].id.clone()]);
    let left = restic.snapshots(&repo, &[]).await?;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, snapshots[1].id);

    let stats = restic.stats(&repo).await?;
    assert!(stats.total_size >= 200_000, "{stats:?}");
    assert_eq!(stats.snapshots_count, Some(1));

    assert_eq!(restic.check(&repo, None).await?, CheckOutcome::NoErrors);
    assert_eq!(
        restic.check(&repo, Some("1/2")).await?,
        CheckOutcome::NoErrors
    );
    assert!(matches!(
        restic.check(&repo, Some("--read-data")).await,
        Err(ResticError::InvalidInput(_))
    ));
    assert!(matches!(
        restic.forget(&repo, &KeepPolicy::default(), false).await,
        Err(ResticError::InvalidInput(_))
    ));
    Ok(())
}

/// A replica made with the source's chunker parameters receives every snapshot once:
/// copies name their originals, a second copy brings nothing, and neither password
/// reaches restic's arguments or an error.
#[tokio::test]
async fn copy_fills_a_replica_once_and_names_originals() -> TestResult {
    let Some(restic) = restic().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let primary = repo_at(dir.path().join("primary").to_string_lossy(), CANARY);
    let replica = repo_at(dir.path().join("replica").to_string_lossy(), "replica pw 2");
    restic.init(&primary).await?;
    let src = source_tree(dir.path())?;
    let opts = BackupOptions {
        paths: vec![src.clone()],
        tags: vec!["plan:3".into()],
        host: Some("web1".into()),
        excludes: Vec::new(),
        exclude_if_present: Vec::new(),
        exclude_caches: false,
        exclude_larger_than: None,
        limit_upload_kib: None,
    };
    let first = restic
        .backup(&primary, &opts, &mut |_| {}, &Cancel::new())
        .await?;
    random_file(&src.join("later.bin"), 50_000, 9)?;
    restic
        .backup(&primary, &opts, &mut |_| {}, &Cancel::new())
        .await?;
    let originals = restic.snapshots(&primary, &[]).await?;
    assert_eq!(originals.len(), 2);

    // The replica does not exist yet: named as missing, then made from the primary.
    assert!(matches!(
        restic.snapshots(&replica, &[]).await,
        Err(ResticError::RepositoryNotFound { .. })
    ));
    restic.init_copying_chunker(&replica, &primary).await?;
    let chunker = |name: &str| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        // Both configs are encrypted; restic's `cat config` shows them.
        let output = std::process::Command::new("restic")
            .args(["cat", "config", "--no-cache"])
            .env("RESTIC_REPOSITORY", dir.path().join(name))
            .env(
                "RESTIC_PASSWORD",
                if name == "primary" {
                    CANARY
                } else {
                    "replica pw 2"
                },
            )
            .output()?;
        let config: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        Ok(config["chunker_polynomial"].clone())
    };
    assert_eq!(chunker("primary")?, chunker("replica")?);

    let first_id = first
        .summary
        .snapshot_id
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    restic
        .copy(
            &replica,
            &primary,
            std::slice::from_ref(&first_id),
            &Cancel::new(),
        )
        .await?;
    let one = restic.snapshots(&replica, &[]).await?;
    assert_eq!(one.len(), 1);
    assert!(
        one[0]
            .original
            .as_ref()
            .is_some_and(|original| original.as_str().starts_with(&first_id)),
        "{one:?}"
    );
    restic.copy(&replica, &primary, &[], &Cancel::new()).await?;
    restic.copy(&replica, &primary, &[], &Cancel::new()).await?;
    let copies = restic.snapshots(&replica, &[]).await?;
    assert_eq!(copies.len(), 2, "each snapshot copied once: {copies:?}");
    let mut from: Vec<&str> = copies
        .iter()
        .filter_map(|copy| copy.original.as_ref().map(SnapshotId::as_str))
        .collect();
    from.sort_unstable();
    let mut expected: Vec<&str> = originals.iter().map(|s| s.id.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(from, expected);
    assert!(matches!(
        restic.check(&replica, Some("100%")).await?,
        CheckOutcome::NoErrors
    ));

    // Bad input is refused before restic runs; a wrong source password is named.
    assert!(matches!(
        restic
            .copy(&replica, &primary, &["latest".into()], &Cancel::new())
            .await,
        Err(ResticError::InvalidInput(_))
    ));
    let wrong = repo_at(dir.path().join("primary").to_string_lossy(), "not it");
    let error = restic
        .copy(&replica, &wrong, &[], &Cancel::new())
        .await
        .expect_err("a wrong source password must fail");
    assert!(
        matches!(error, ResticError::WrongPassword { .. }),
        "{error:?}"
    );
    assert_no_canary(&error);
    Ok(())
}

#[tokio::test]
async fn unreadable_source_files_make_a_partial_backup() -> TestResult {
    let Some(restic) = restic().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let repo = repo_at(dir.path().join("repo").to_string_lossy(), "pw");
    restic.init(&repo).await?;
    let src = source_tree(dir.path())?;
    // Tests run as root, which reads files whatever their mode, so a chmod 000 file
    // would be read fine. /proc/self/mem stats as a regular file whose read fails
    // with EIO, which restic reports as an unreadable source file (exit code 3).
    let opts = BackupOptions {
        paths: vec![src, PathBuf::from("/proc/self/mem")],
        ..BackupOptions::default()
    };
    let outcome = restic
        .backup(&repo, &opts, &mut |_| {}, &Cancel::new())
        .await?;
    assert_eq!(outcome.status, BackupStatus::Partial);
    assert!(outcome.summary.snapshot_id.is_some());
    assert_eq!(outcome.file_errors_total, 1);
    assert_eq!(outcome.file_errors[0].path, "/proc/self/mem");
    assert!(!outcome.file_errors[0].message.is_empty());
    Ok(())
}

#[tokio::test]
async fn damaged_pack_is_found_by_check_and_restore_never_succeeds() -> TestResult {
    let Some(restic) = restic().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let repo_dir = dir.path().join("repo");
    let repo = repo_at(repo_dir.to_string_lossy(), "pw");
    restic.init(&repo).await?;
    let src = source_tree(dir.path())?;
    random_file(&src.join("big.bin"), 1_000_000, 99)?;
    let opts = BackupOptions {
        paths: vec![src],
        ..BackupOptions::default()
    };
    restic
        .backup(&repo, &opts, &mut |_| {}, &Cancel::new())
        .await?;

    // The largest pack holds file data (tree packs are small): flip a byte every 64 KiB
    // of it, short of its header at the end, so that every file blob in it is damaged
    // whichever order restic packed them in, while the listing still loads.
    let mut packs = Vec::new();
    for sub in std::fs::read_dir(repo_dir.join("data"))? {
        for pack in std::fs::read_dir(sub?.path())? {
            let pack = pack?;
            packs.push((pack.metadata()?.len(), pack.path()));
        }
    }
    packs.sort();
    let (_, largest) = packs.last().ok_or("no packs")?;
    let mut bytes = std::fs::read(largest)?;
    let blobs_end = bytes.len().saturating_sub(8 << 10);
    for at in (0..blobs_end).step_by(64 << 10) {
        bytes[at] ^= 0xff;
    }
    std::fs::set_permissions(largest, std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(largest, bytes)?;

    match restic.check(&repo, Some("100%")).await? {
        CheckOutcome::ErrorsFound { messages, .. } => {
            assert!(!messages.is_empty());
        }
        CheckOutcome::NoErrors => panic!("check read all data and found no errors"),
    }

    let target = dir.path().join("restore");
    let mut opts = RestoreOptions::new("latest", &target);
    opts.restic_verify = false;
    match restic.restore(&repo, &opts, &Cancel::new()).await {
        Ok(outcome) => panic!("a restore from a damaged pack succeeded: {outcome:?}"),
        Err(ResticError::RestoreIncomplete {
            problems,
            problems_total,
            ..
        }) => {
            assert!(problems_total >= 1);
            let named = problems.iter().any(|p| p.path.ends_with("/big.bin"));
            assert!(named, "big.bin not named: {problems:?}");
        }
        // Restic refusing the whole restore is acceptable too; success is not.
        Err(other) => eprintln!("restore failed as a whole: {other}"),
    }
    Ok(())
}

#[tokio::test]
async fn wrong_password_and_missing_repository_are_recognised_without_leaking() -> TestResult {
    let Some(restic) = restic().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let location = dir.path().join("repo").to_string_lossy().into_owned();
    restic.init(&repo_at(&location, "the real one")).await?;

    let wrong = repo_at(&location, CANARY);
    let error = restic.snapshots(&wrong, &[]).await.err().ok_or("opened")?;
    assert!(
        matches!(error, ResticError::WrongPassword { .. }),
        "{error:?}"
    );
    assert_no_canary(&error);
    let error = restic.stats(&wrong).await.err().ok_or("opened")?;
    assert!(
        matches!(error, ResticError::WrongPassword { .. }),
        "{error:?}"
    );

    // The password appears in the location, so restic's own message quotes it:
    // every error must still show it redacted.
    let nowhere = dir.path().join(CANARY).join("repo");
    let missing = repo_at(nowhere.to_string_lossy(), CANARY);
    let error = restic
        .snapshots(&missing, &[])
        .await
        .err()
        .ok_or("opened")?;
    assert!(
        matches!(error, ResticError::RepositoryNotFound { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("[redacted]"), "{error}");
    assert_no_canary(&error);
    let error = restic.check(&missing, None).await.err().ok_or("checked")?;
    assert!(
        matches!(error, ResticError::RepositoryNotFound { .. }),
        "{error:?}"
    );
    assert_no_canary(&error);
    assert_eq!(format!("{:?}", missing.password), "[redacted]");
    assert!(!format!("{wrong:?}").contains(CANARY));
    Ok(())
}

#[tokio::test]
async fn cancelled_backup_stops_restic_cleanly_and_never_exposes_the_password() -> TestResult {
    let Some(restic) = restic().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let repo = repo_at(dir.path().join("repo").to_string_lossy(), CANARY);
    restic.init(&repo).await?;
    let opts = slow_backup(dir.path())?;
    let needle = opts.paths[0].to_string_lossy().into_owned();
    let cancel = Cancel::new();
    let updates = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&updates);

    let mut on_progress = |_: &BackupProgress| {
        seen.fetch_add(1, Ordering::Relaxed);
    };
    let backup = restic.backup(&repo, &opts, &mut on_progress, &cancel);
    let interfere = async {
        wait_for(|| find_restic_pid(&needle).is_some() && updates.load(Ordering::Relaxed) > 0)
            .await;
        let pid = find_restic_pid(&needle).ok_or("restic gone")?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        assert!(!String::from_utf8_lossy(&cmdline).contains(CANARY));
        let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
        assert!(!String::from_utf8_lossy(&environ).contains(CANARY));
        let file = password_file_of(pid).ok_or("no RESTIC_PASSWORD_FILE")?;
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(&file)?, 0o600);
        assert_eq!(mode(file.parent().ok_or("no parent")?)?, 0o700);

        // The running backup holds a lock; check needs an exclusive one.
        let locked = restic.check(&repo, None).await.err().ok_or("check ran")?;
        assert!(matches!(locked, ResticError::Locked { .. }), "{locked:?}");
        assert_no_canary(&locked);

        cancel.cancel();
        Ok::<PathBuf, Box<dyn std::error::Error>>(file)
    };
    let (result, interfered) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(backup, interfere)
    })
    .await?;
    let password_file = interfered?;
    match result {
        Err(ResticError::Cancelled { forced: false, .. }) => {}
        other => panic!("expected a graceful Cancelled, got {other:?}"),
    }
    assert!(!password_file.exists(), "password file left behind");
    assert!(find_restic_pid(&needle).is_none(), "restic still running");
    assert_eq!(restic.check(&repo, None).await?, CheckOutcome::NoErrors);

    // A cancel that fired before the run starts nothing.
    let error = restic.backup(&repo, &opts, &mut |_| {}, &cancel).await;
    assert!(matches!(
        error,
        Err(ResticError::Cancelled { forced: false, .. })
    ));
    Ok(())
}

#[tokio::test]
async fn restic_ignoring_sigint_is_killed_after_the_grace_period() -> TestResult {
    let Some(restic) = restic().await else {
        return Ok(());
    };
    let restic = restic.with_interrupt_grace(Duration::from_millis(500));
    let dir = tempfile::tempdir()?;
    let repo = repo_at(dir.path().join("repo").to_string_lossy(), "pw");
    restic.init(&repo).await?;
    let opts = slow_backup(dir.path())?;
    let needle = opts.paths[0].to_string_lossy().into_owned();
    let cancel = Cancel::new();
    let mut on_progress = |_: &BackupProgress| {};
    let backup = restic.backup(&repo, &opts, &mut on_progress, &cancel);
    let interfere = async {
        wait_for(|| find_restic_pid(&needle).is_some()).await;
        // A stopped process cannot act on SIGINT; only SIGKILL ends it.
        if let Some(pid) = find_restic_pid(&needle) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            // The stop is asynchronous: cancel only once every thread has stopped, or
            // the SIGINT could still be handled and restic exit in time.
            wait_for(|| process_state(pid) == Some('T')).await;
        }
        cancel.cancel();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(backup, interfere)
    })
    .await?;
    match result {
        Err(e @ ResticError::Cancelled { forced: true, .. }) => {
            assert!(e.to_string().contains("unlock"), "{e}");
        }
        other => panic!("expected a forced Cancelled, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn restic_killed_from_outside_is_reported_with_the_signal() -> TestResult {
    let Some(restic) = restic().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let repo = repo_at(dir.path().join("repo").to_string_lossy(), "pw");
    restic.init(&repo).await?;
    let opts = slow_backup(dir.path())?;
    let needle = opts.paths[0].to_string_lossy().into_owned();
    let mut on_progress = |_: &BackupProgress| {};
    let never = Cancel::new();
    let backup = restic.backup(&repo, &opts, &mut on_progress, &never);
    let kill = async {
        wait_for(|| {
            find_restic_pid(&needle)
                .and_then(password_file_of)
                .is_some()
        })
        .await;
        let pid = find_restic_pid(&needle);
        let file = pid.and_then(password_file_of);
        if let Some(pid) = pid {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        file
    };
    let (result, password_file) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(backup, kill)
    })
    .await?;
    match result {
        Err(e @ ResticError::KilledBySignal { .. }) => {
            assert!(e.to_string().contains("SIGKILL"), "{e}");
        }
        other => panic!("expected KilledBySignal, got {other:?}"),
    }
    let password_file = password_file.ok_or("password file not seen")?;
    assert!(!password_file.exists(), "password file left behind");
    Ok(())
}
