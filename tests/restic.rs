//! Plans on existing restic repositories, end to end: the real daemon drives the real
//! `restic` binary. A repository that already holds a snapshot is adopted with
//! `cadang import restic` (its snapshot listed into the catalog); the plan backs up on
//! its procedure's start, verifies, drills a restore, applies retention to its own
//! snapshots only and shows in the runs report beside native plans. A wrong password, a
//! missing binary and a restic killed mid-backup each end the run `failed` with a clear
//! reason, and the next run goes on.
//!
//! Needs `restic` on PATH (Debian's package; `.ci/run` installs it and sets
//! `CADANG_REQUIRE_RESTIC=1`, which turns a missing binary into a failure).

mod e2e;
mod s3_server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

/// Restic on PATH; `None` (the test skips) when it is not installed, unless
/// `CADANG_REQUIRE_RESTIC` says it must be.
fn restic_or_skip() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("restic"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CADANG_REQUIRE_RESTIC").is_none(),
            "CADANG_REQUIRE_RESTIC is set but restic is not on PATH"
        );
        eprintln!("skipped: restic not installed (apt-get install -y restic)");
    }
    found
}

/// Restic run directly, as the data center did before cadang.
fn restic(repo: &Path, password: &Path, args: &[&str]) -> std::process::Output {
    let output = Command::new("restic")
        .args(args)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD_FILE", password)
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"))
        .output()
        .expect("restic runs");
    assert!(
        output.status.success(),
        "restic {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn snapshots(repo: &Path, password: &Path) -> Vec<Value> {
    let output = restic(repo, password, &["snapshots", "--json"]);
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn run_now(server: &str, token: &str, plan: &str, kind: &str, count: usize) -> Value {
    ok(server, token, &["plan", "run-now", plan, "--kind", kind]);
    wait_for_run(server, token, plan, count)
}

fn stats(run: &Value) -> Value {
    run["stats"].clone()
}

/// Adopts the restic repository `repo` (password in `password`) as plan `arsip-restic`
/// backing up `source` daily at 02:00 (`cadang import restic`), with `extra` options.
fn adopt(
    server: &str,
    token: &str,
    request: i64,
    (source, repo, password): (&Path, &Path, &Path),
    extra: &[&str],
) -> Value {
    let request = request.to_string();
    let source = source.display().to_string();
    let repo = repo.display().to_string();
    let password = password.display().to_string();
    let mut args = vec![
        "import",
        "restic",
        "--request",
        &request,
        "--name",
        "arsip-restic",
        "--path",
        &source,
        "--schedule",
        "0 2 * * *",
        "--restic-repo",
        &repo,
        "--restic-password-file",
        &password,
    ];
    args.extend_from_slice(extra);
    ok(server, token, &args)
}

fn install(wrapper: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(wrapper, text).unwrap();
    std::fs::set_permissions(wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn plans_on_restic_repositories_run_verify_restore_and_fail_clearly() {
    let Some(real_restic) = restic_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The daemon runs restic through a wrapper that notes each process's id and
    // subcommand, so the test can kill one and take the binary away.
    let wrapper = dir.path().join("bin/restic");
    let pids = dir.path().join("restic-pids");
    std::fs::create_dir_all(wrapper.parent().unwrap()).unwrap();
    let wrapper_text = format!(
        "#!/bin/sh\necho \"$$ $1\" >> {}\nexec {} \"$@\"\n",
        pids.display(),
        real_restic.display()
    );
    install(&wrapper, &wrapper_text);
    let data = dir.path().join("var");
    let config = dir.path().join("cadang.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\n[scheduler]\ntick_secs = 1\nlease_secs = 5\n[repositories]\nrestic_binary = \"{}\"\n",
            wrapper.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(
        &data,
        &[("HOME", &dir.path().display().to_string())],
        Some(&config),
    );
    let admin = Daemon::bootstrap(&data, &[]);
    let server = daemon.url();
    let site = set_up(&server, &admin);

    // The repository the data center already keeps, with one snapshot of its own.
    let repo = dir.path().join("restic-arsip");
    let password = dir.path().join("restic-password");
    std::fs::write(&password, "kata sandi lama\n").unwrap();
    restic(&repo, &password, &["init"]);
    let old = dir.path().join("lama");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("catatan.txt"), "sebelum cadang\n").unwrap();
    restic(&repo, &password, &["backup", &old.display().to_string()]);
    assert_eq!(snapshots(&repo, &password).len(), 1);

    // The agency's data now backed up through cadang into that repository.
    let source = dir.path().join("srv-arsip");
    std::fs::create_dir_all(source.join("db")).unwrap();
    std::fs::write(source.join("db/dump.sql"), noise(3, 3 << 20)).unwrap();
    std::fs::write(source.join("index.html"), "<h1>arsip</h1>\n".repeat(100)).unwrap();
    std::os::unix::fs::symlink("index.html", source.join("beranda.html")).unwrap();
    let request = active_backup_request(&server, &site, site.dinkes, dir.path(), "arsip");
    let adopted = adopt(
        &server,
        &site.kasi,
        request,
        (&source, &repo, &password),
        &["--keep-last", "1", "--verify-parts", "1"],
    );
    let plan = adopted["plan"]["id"].as_i64().unwrap().to_string();
    // The password is in the catalog sealed, never in clear.
    let mut catalog = std::fs::read(data.join("catalog.db")).unwrap();
    catalog.extend(std::fs::read(data.join("catalog.db-wal")).unwrap_or_default());
    assert!(
        !catalog
            .windows(b"kata sandi lama".len())
            .any(|window| window == b"kata sandi lama"),
        "the restic password is stored in clear"
    );
    let import = wait_for_run(&server, &site.kasi, &plan, 1);
    assert_eq!(import["kind"], "import", "{import}");
    assert_eq!(import["status"], "ok", "{import}");
    let listed = stats(&import);
    assert_eq!(listed["snapshots"], 1, "{import}");
    assert!(listed["listed"].to_string().contains("lama"), "{import}");

    // B3 starts the plan: a backup through restic, its statistics recorded.
    step(&server, &site.kasi, request, "complete", 2, &[]);
    let first = wait_for_run(&server, &site.kasi, &plan, 2);
    assert_eq!(first["kind"], "backup", "{first}");
    assert_eq!(first["status"], "ok", "{first}");
    let summary = stats(&first);
    assert_eq!(summary["engine"], "restic", "{first}");
    assert!(summary["files_new"].as_u64().unwrap() >= 2, "{first}");
    let snapshot = first["snapshot_id"].as_str().unwrap().to_owned();
    assert_eq!(snapshot.len(), 64, "{first}");
    let tagged: Vec<Value> = snapshots(&repo, &password)
        .into_iter()
        .filter(|s| s["tags"].to_string().contains(&format!("plan:{plan}")))
        .collect();
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0]["id"], snapshot.as_str());

    // Verification and a restore drill, verified file by file.
    let verify = run_now(&server, &site.petugas, &plan, "verify", 3);
    assert_eq!(verify["status"], "ok", "{verify}");
    assert_eq!(stats(&verify)["part"], "1/1", "{verify}");
    let drill = run_now(&server, &site.petugas, &plan, "drill", 4);
    assert_eq!(drill["status"], "ok", "{drill}");
    assert!(
        stats(&drill)["files_verified"].as_u64().unwrap() >= 2,
        "{drill}"
    );

    // A second backup, then retention keeps the plan's newest only; the snapshot the
    // data center made before cadang is not the plan's to forget.
    std::fs::write(source.join("index.html"), "<h1>arsip baru</h1>\n").unwrap();
    let second = run_now(&server, &site.petugas, &plan, "backup", 5);
    assert_eq!(second["status"], "ok", "{second}");
    let retention = run_now(&server, &site.petugas, &plan, "retention", 6);
    assert_eq!(retention["status"], "ok", "{retention}");
    assert_eq!(stats(&retention)["snapshots_removed"], 1, "{retention}");
    let left = snapshots(&repo, &password);
    assert_eq!(left.len(), 2, "the plan's newest and the old one: {left:?}");
    assert!(left.iter().any(|s| s["paths"].to_string().contains("lama")));

    // The runs report shows the plan beside native ones.
    let report = ok(&server, &site.kasi, &["report", "runs", "--plan", &plan]);
    let kinds = report["plans"][0]["runs"].to_string();
    for kind in ["import", "backup", "verify", "drill", "retention"] {
        assert!(kinds.contains(kind), "the report lacks {kind}: {report}");
    }

    // A plan with the wrong password: a clear failure, nothing written.
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "bukan ini\n").unwrap();
    let mistaken = ok(
        &server,
        &site.kasi,
        &[
            "plan",
            "create",
            "--request",
            &request.to_string(),
            "--name",
            "arsip-salah",
            "--path",
            &source.display().to_string(),
            "--schedule",
            "0 3 * * *",
            "--restic-repo",
            &repo.display().to_string(),
            "--restic-password-file",
            &wrong.display().to_string(),
        ],
    )[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let refused_run = run_now(&server, &site.petugas, &mistaken, "backup", 1);
    assert_eq!(refused_run["status"], "failed", "{refused_run}");
    assert!(
        refused_run["error"].as_str().unwrap().contains("password"),
        "{refused_run}"
    );
    assert!(!refused_run.to_string().contains("bukan ini"));

    // The binary gone: a clear failure naming it; back, and the plan goes on.
    std::fs::remove_file(&wrapper).unwrap();
    let missing = run_now(&server, &site.petugas, &plan, "backup", 7);
    assert_eq!(missing["status"], "failed", "{missing}");
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains(&wrapper.display().to_string()),
        "{missing}"
    );
    install(&wrapper, &wrapper_text);

    // Restic killed mid-backup (a big new file at a limited upload rate).
    std::fs::write(source.join("besar.bin"), noise(4, 24 << 20)).unwrap();
    let slow = ok(
        &server,
        &site.kasi,
        &[
            "plan",
            "create",
            "--request",
            &request.to_string(),
            "--name",
            "arsip-lambat",
            "--path",
            &source.display().to_string(),
            "--schedule",
            "0 4 * * *",
            "--bandwidth-limit",
            "2048",
            "--restic-repo",
            &repo.display().to_string(),
            "--restic-password-file",
            &password.display().to_string(),
        ],
    )[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    std::fs::write(&pids, "").unwrap();
    ok(&server, &site.petugas, &["plan", "run-now", &slow]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let noted = std::fs::read_to_string(&pids).unwrap_or_default();
        if let Some(pid) = noted
            .lines()
            .find(|line| line.ends_with(" backup"))
            .and_then(|line| line.split(' ').next())
        {
            break pid.to_owned();
        }
        assert!(Instant::now() < deadline, "restic backup never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        Command::new("kill")
            .args(["-9", &victim])
            .status()
            .unwrap()
            .success()
    );
    let killed = wait_for_run(&server, &site.kasi, &slow, 1);
    assert_eq!(killed["status"], "failed", "{killed}");
    assert!(
        killed["error"].as_str().unwrap().contains("SIGKILL")
            || killed["error"].as_str().unwrap().contains("killed"),
        "{killed}"
    );
    // The catalog is consistent and the repository usable: the next backup goes on.
    let after = run_now(&server, &site.petugas, &plan, "backup", 8);
    assert_eq!(after["status"], "ok", "{after}");
    drop(daemon);
}

/// Restores from a plan on a restic repository reach the agency's server through its
/// agent: restic restores on the daemon's host into a private staging copy, cadang
/// verifies it against restic's listing, the agent verifies every chunk and file it
/// writes, and the staging copy is gone afterwards — started directly (everything, or one
/// path of an older snapshot) and as a restore request (procedure C). The plan's restic
/// replica is made and filled by replicate runs, and when the primary is damaged the
/// replica step of procedure C restores the same snapshot from it. Restoring from a
/// plan that is not the agency's or not on restic is refused.
#[test]
fn restores_from_a_restic_plan_reach_the_agent_verified() {
    if restic_or_skip().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let config = dir.path().join("cadang.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\n[scheduler]\ntick_secs = 1\nlease_secs = 5\nagent_wait_secs = 30\n[repositories]\nreplica_root = \"{}\"\n",
            dir.path().join("replicas").display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(
        &data,
        &[("HOME", &dir.path().display().to_string())],
        Some(&config),
    );
    let admin = Daemon::bootstrap(&data, &[]);
    let server = daemon.url();
    let site = set_up(&server, &admin);
    let web = register_server(
        dir.path(),
        &server,
        &site.kasi,
        site.dinkes,
        "arsip-web-01",
        "SN-A1",
    )
    .to_string();
    let kendal = register_server(
        dir.path(),
        &server,
        &site.kasi,
        site.kendal,
        "kendal-01",
        "SN-K1",
    )
    .to_string();
    let token = enrollment_token(&server, &site.petugas, &web);
    let state = dir.path().join("agent-web");
    let enrolled = enroll(&server, &token, &state);
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let _agent = AgentProcess::start(&state, &dir.path().join("agent-web.log"));

    // The agency's data, backed up twice through restic into the adopted repository.
    let repo = dir.path().join("restic-arsip");
    let password = dir.path().join("restic-password");
    std::fs::write(&password, "kata sandi arsip\n").unwrap();
    restic(&repo, &password, &["init"]);
    let source = dir.path().join("srv-arsip");
    std::fs::create_dir_all(source.join("db")).unwrap();
    std::fs::create_dir_all(source.join("html/gambar")).unwrap();
    std::fs::write(source.join("db/dump.sql"), noise(21, (3 << 20) + 123)).unwrap();
    std::fs::write(
        source.join("html/index.html"),
        "<h1>arsip</h1>\n".repeat(50),
    )
    .unwrap();
    std::fs::write(source.join("html/gambar/kosong.png"), "").unwrap();
    std::os::unix::fs::symlink("html/index.html", source.join("beranda.html")).unwrap();
    let request = active_backup_request(&server, &site, site.dinkes, dir.path(), "arsip");
    let plan = adopt(
        &server,
        &site.kasi,
        request,
        (&source, &repo, &password),
        &["--keep-last", "1"],
    )["plan"]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    assert_eq!(wait_for_run(&server, &site.kasi, &plan, 1)["status"], "ok");
    step(&server, &site.kasi, request, "complete", 2, &[]);
    let first = wait_for_run(&server, &site.kasi, &plan, 2);
    assert_eq!(first["status"], "ok", "{first}");
    let first_snapshot = first["snapshot_id"].as_str().unwrap().to_owned();
    let first_tree = tree_of(&source);
    std::fs::write(source.join("html/index.html"), "<h1>arsip baru</h1>\n").unwrap();
    std::fs::write(source.join("db/baru.bin"), noise(22, 1 << 20)).unwrap();
    let second = run_now(&server, &site.petugas, &plan, "backup", 3);
    assert_eq!(second["status"], "ok", "{second}");
    let second_tree = tree_of(&source);
    // What a restore from the plan chooses among: the repository's snapshots, oldest
    // first, as restic lists them.
    let listed = ok(
        &server,
        &site.petugas,
        &["restore-job", "snapshots", &web, "--from-plan", &plan],
    );
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|snapshot| snapshot["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            first_snapshot.as_str(),
            second["snapshot_id"].as_str().unwrap()
        ],
        "{listed}"
    );
    assert_eq!(listed[1]["host"], "cadang-daemon", "{listed}");
    assert_eq!(listed[1]["run_id"], second["id"], "{listed}");
    refused(
        &server,
        &site.petugas,
        &["restore-job", "snapshots", &kendal, "--from-plan", &plan],
        "PERMISSION_DENIED",
    );
    // An erasure of the agency's server says that the plan's restic repository is out
    // of its reach, and names the plan.
    let erasure = ok(
        &server,
        &site.kabid,
        &[
            "restore-job",
            "erase",
            &web,
            "-e",
            "dump.sql",
            "--reason",
            "permintaan penghapusan",
            "--dry-run",
        ],
    );
    assert_eq!(
        erasure["restic_plans_unreached"],
        serde_json::json!([plan.parse::<i64>().unwrap()]),
        "{erasure}"
    );
    assert!(
        erasure["notes"][0].as_str().unwrap().contains(&format!(
            "plan {plan} keeps the agency's backups in a restic"
        )),
        "{erasure}"
    );

    // What the plan's snapshots hold, to choose the `--path`s of a restore: read from
    // the restic repository, in the form of the server's own snapshots.
    let src = source.display().to_string();
    let second_snapshot = second["snapshot_id"].as_str().unwrap().to_owned();
    let paths = |found: &Value| -> Vec<String> {
        found["files"]
            .as_array()
            .unwrap_or_else(|| panic!("{found}"))
            .iter()
            .map(|file| file["path"].as_str().unwrap().to_owned())
            .collect()
    };
    let browse = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--from-plan", &plan]);
        ok(&server, &site.petugas, &all)
    };
    let html = browse(&["restore-job", "ls", &web, "latest", &format!("{src}/html/")]);
    assert_eq!(html["snapshot"], second_snapshot.as_str(), "{html}");
    assert_eq!(html["truncated"], false, "{html}");
    assert_eq!(
        paths(&html),
        vec![
            format!("{src}/html/gambar"),
            format!("{src}/html/index.html")
        ]
    );
    assert_eq!(html["files"][0]["type"], "dir", "{html}");
    assert_eq!(html["files"][0]["mode"], 0o755, "{html}");
    let index = &html["files"][1];
    assert_eq!(index["type"], "file", "{html}");
    assert_eq!(index["size"], "<h1>arsip baru</h1>\n".len(), "{html}");
    assert_eq!(index["mode"], 0o644, "{html}");
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(source.join("html/index.html"))
            .unwrap()
            .uid()
    };
    assert_eq!(index["uid"], owner, "{html}");
    assert!(index["mtime"].as_str().unwrap().ends_with('Z'), "{html}");
    let everything = browse(&["restore-job", "ls", &web, "latest", &src, "-R"]);
    assert_eq!(
        paths(&everything),
        [
            "beranda.html",
            "db",
            "db/baru.bin",
            "db/dump.sql",
            "html",
            "html/gambar",
            "html/gambar/kosong.png",
            "html/index.html",
        ]
        .map(|path| format!("{src}/{path}")),
        "{everything}"
    );
    let link = &everything["files"][0];
    assert_eq!(link["type"], "symlink", "{everything}");
    // restic lists a link's target only from 0.16 on; where it does, it is passed on.
    assert!(
        link["link_target"].is_null() || link["link_target"] == "html/index.html",
        "{everything}"
    );
    // The older snapshot by a prefix of its id; one file; the limit.
    let older = browse(&[
        "restore-job",
        "ls",
        &web,
        &first_snapshot[..8],
        &format!("{src}/db"),
    ]);
    assert_eq!(older["snapshot"], first_snapshot.as_str(), "{older}");
    assert_eq!(paths(&older), vec![format!("{src}/db/dump.sql")]);
    let one = browse(&[
        "restore-job",
        "ls",
        &web,
        "latest",
        &format!("{src}/db/baru.bin"),
    ]);
    assert_eq!(paths(&one), vec![format!("{src}/db/baru.bin")]);
    assert_eq!(one["files"][0]["size"], 1 << 20, "{one}");
    let capped = browse(&[
        "restore-job",
        "ls",
        &web,
        "latest",
        "/",
        "-R",
        "--limit",
        "3",
    ]);
    assert_eq!(paths(&capped).len(), 3, "{capped}");
    assert_eq!(capped["truncated"], true, "{capped}");
    // A search names the snapshots that hold a file, newest first.
    let found = browse(&["restore-job", "find", &web, "*.sql", "baru.*"]);
    let held: Vec<(&str, Vec<String>)> = found["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|matches| (matches["snapshot"].as_str().unwrap(), paths(matches)))
        .collect();
    assert_eq!(
        held,
        vec![
            (
                second_snapshot.as_str(),
                vec![format!("{src}/db/baru.bin"), format!("{src}/db/dump.sql")]
            ),
            (first_snapshot.as_str(), vec![format!("{src}/db/dump.sql")]),
        ],
        "{found}"
    );
    assert_eq!(found["snapshots"][0]["run_id"], second["id"], "{found}");
    assert_eq!(found["truncated"], false, "{found}");
    let first_hit = browse(&["restore-job", "find", &web, "*.SQL", "-i", "--limit", "1"]);
    assert_eq!(first_hit["truncated"], true, "{first_hit}");
    assert_eq!(
        first_hit["snapshots"].as_array().unwrap().len(),
        1,
        "{first_hit}"
    );
    let pinned = browse(&[
        "restore-job",
        "find",
        &web,
        &format!("{src}/html/**"),
        "--snapshot",
        &first_snapshot,
    ]);
    assert_eq!(pinned["snapshots"][0]["snapshot"], first_snapshot.as_str());
    assert_eq!(paths(&pinned["snapshots"][0]).len(), 3, "{pinned}");
    // What is not there, or not the caller's, is refused.
    for args in [
        vec!["restore-job", "ls", &web, "latest", "/nowhere"],
        vec!["restore-job", "ls", &web, "latest", "/a/../etc"],
        vec!["restore-job", "ls", &web, "ffffffff", "/"],
        vec!["restore-job", "find", &web, "[unclosed"],
    ] {
        let mut all = args.clone();
        all.extend_from_slice(&["--from-plan", &plan]);
        refused(&server, &site.petugas, &all, "INVALID_ARGUMENT");
    }
    for args in [
        vec!["restore-job", "ls", &kendal, "latest", "/"],
        vec!["restore-job", "find", &kendal, "*"],
    ] {
        let mut all = args.clone();
        all.extend_from_slice(&["--from-plan", &plan]);
        refused(&server, &site.petugas, &all, "PERMISSION_DENIED");
    }
    // A restic snapshot is restored through a staging copy, which cannot say which
    // directories it holds whole: deleting what it lacks is refused before anything runs.
    refused(
        &server,
        &site.petugas,
        &[
            "restore-job",
            "start",
            "--source",
            &web,
            "--from-plan",
            &plan,
            "--target",
            "/srv/pulih",
            "--delete",
        ],
        "INVALID_ARGUMENT",
    );
    let inside = |target: &Path| target.join(source.strip_prefix("/").unwrap());
    let staging_left = || {
        std::fs::read_dir(data.join("drills"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_name().to_string_lossy().starts_with("restore-"))
                    .count()
            })
            .unwrap_or(0)
    };

    // Everything of the latest snapshot, to the agent.
    let target = dir.path().join("dipulihkan");
    // Restores of the plan's snapshots to the web server, waited for: the output and
    // its JSON.
    let restore_job = |target: &Path, extra: &[&str]| {
        let target = target.display().to_string();
        let mut args = vec![
            "restore-job",
            "start",
            "--source",
            &web,
            "--from-plan",
            &plan,
            "--target",
            &target,
            "--wait",
        ];
        args.extend_from_slice(extra);
        let output = cli(&server, &site.petugas, &args);
        let shown: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output, shown)
    };
    let (output, restored) = restore_job(&target, &[]);
    assert!(output.status.success(), "{restored}");
    assert_eq!(restored["status"], "ok", "{restored}");
    assert_eq!(restored["plan_id"].to_string(), plan, "{restored}");
    assert_eq!(
        restored["snapshot"],
        second["snapshot_id"].as_str().unwrap(),
        "{restored}"
    );
    let restore_stats = &restored["stats"];
    assert_eq!(restore_stats["engine"], "restic", "{restored}");
    assert_eq!(restore_stats["files_failed"], 0, "{restored}");
    assert!(
        restore_stats["files_verified"].as_u64().unwrap() >= 4,
        "{restored}"
    );
    assert_eq!(tree_of(&inside(&target)), second_tree);
    assert_eq!(
        std::fs::read_link(inside(&target).join("beranda.html")).unwrap(),
        Path::new("html/index.html")
    );
    assert_eq!(staging_left(), 0, "the staging copy is removed");

    // One path of the first snapshot, named by a prefix of its id.
    let older = dir.path().join("dipulihkan-lama");
    let db = source.join("db").display().to_string();
    let (output, restored) = restore_job(
        &older,
        &["--snapshot", &first_snapshot[..10], "--path", &db],
    );
    assert!(output.status.success(), "{restored}");
    assert_eq!(restored["status"], "ok", "{restored}");
    assert_eq!(restored["snapshot"], first_snapshot.as_str(), "{restored}");
    let only_db: std::collections::BTreeMap<String, Vec<u8>> = first_tree
        .iter()
        .filter(|(path, _)| path.starts_with("db"))
        .map(|(path, bytes)| (path.clone(), bytes.clone()))
        .collect();
    assert_eq!(tree_of(&inside(&older)), only_db);
    assert_eq!(staging_left(), 0, "the staging copy is removed");

    // What may not be restored from.
    let native = ok(
        &server,
        &site.kasi,
        &[
            "plan",
            "create",
            "--request",
            &request.to_string(),
            "--name",
            "arsip-cadang",
            "--path",
            &source.display().to_string(),
            "--schedule",
            "0 5 * * *",
        ],
    )[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let nowhere = dir.path().join("tidak-ada").display().to_string();
    let start = |source_server: &str, from: &str| {
        vec![
            "restore-job".to_owned(),
            "start".into(),
            "--source".into(),
            source_server.into(),
            "--from-plan".into(),
            from.into(),
            "--target".into(),
            nowhere.clone(),
        ]
    };
    let refuse = |args: Vec<String>, code: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&server, &site.petugas, &args, code)
    };
    let why = refuse(start(&web, &native), "INVALID_ARGUMENT");
    assert!(why.contains("cadang repository"), "{why}");
    let why = refuse(start(&kendal, &plan), "PERMISSION_DENIED");
    assert!(why.contains("another agency"), "{why}");
    refuse(start(&web, "999999"), "NOT_FOUND");
    refused(
        &server,
        &site.skpd_other,
        &[
            "restore-job",
            "start",
            "--source",
            &web,
            "--from-plan",
            &plan,
            "--target",
            &nowhere,
        ],
        "PERMISSION_DENIED",
    );
    assert!(!Path::new(&nowhere).exists());

    // Procedure C from the restic plan: planned at C2 with a fallback chain, approved
    // at C3, restored and judged by the system; the request as shown once settled.
    let procedure_c = |name: &str, target: &Path, fallback: &str| {
        let form = write(
            dir.path(),
            &format!("restore-{name}.toml"),
            &format!(
                "server_id = {web}\nbackup_request = {request}\nrestore_point = \"terbaru\"\ntarget = \"server arsip-web-01\"\nreason = \"berkas arsip rusak\"\n"
            ),
        );
        let restore_request = ok(
            &server,
            &site.skpd,
            &[
                "request",
                "restore",
                "submit",
                "--agency",
                &site.dinkes.to_string(),
                "--subject",
                name,
                "--form",
                &form,
            ],
        )["request"]["id"]
            .as_i64()
            .unwrap();
        step(&server, &site.kadin, restore_request, "complete", 1, &[]);
        let id = restore_request.to_string();
        let planned = ok(
            &server,
            &site.petugas,
            &[
                "restore-request",
                "plan",
                &id,
                "--source",
                &web,
                "--from-plan",
                &plan,
                "--target",
                &target.display().to_string(),
                "--fallback",
                fallback,
            ],
        );
        assert_eq!(
            planned["plan"]["backup_plan"].to_string(),
            plan,
            "{planned}"
        );
        step(&server, &site.petugas, restore_request, "complete", 2, &[]);
        step(
            &server,
            &site.kabid,
            restore_request,
            "decide",
            3,
            &["--yes", "--reason", "rencana restore disetujui"],
        );
        let output = cli(
            &server,
            &site.kasi,
            &["restore-request", "show", &id, "--wait"],
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let through_c = dir.path().join("dipulihkan-c");
    let shown = procedure_c("Restore arsip", &through_c, "previous-snapshot");
    assert_eq!(shown["state"], "verified", "{shown}");
    assert_eq!(shown["attempts"][0]["attempt"], "primary", "{shown}");
    assert_eq!(shown["attempts"][0]["status"], "ok", "{shown}");
    assert_eq!(tree_of(&inside(&through_c)), second_tree);
    assert_eq!(staging_left(), 0, "the staging copy is removed");

    // The plan's replica: a restic repository of its own under the replica root, made by
    // the first replicate run with the primary's chunker parameters, holding a copy of
    // every snapshot; a second run finds nothing to copy.
    let replicated = run_now(&server, &site.petugas, &plan, "replicate", 4);
    assert_eq!(replicated["status"], "ok", "{replicated}");
    let copied = stats(&replicated);
    assert_eq!(copied["snapshots_copied"], 2, "{replicated}");
    assert_eq!(copied["snapshots_pending"], 0, "{replicated}");
    assert_eq!(copied["verify_errors"], 0, "{replicated}");
    let replica_repo = PathBuf::from(copied["replica"].as_str().unwrap());
    assert!(
        replica_repo.starts_with(dir.path().join("replicas")),
        "{replicated}"
    );
    assert!(
        replica_repo
            .display()
            .to_string()
            .ends_with(&format!(".restic-plan-{plan}")),
        "{replicated}"
    );
    assert!(replica_repo.join("config").is_file());
    let again = run_now(&server, &site.petugas, &plan, "replicate", 5);
    assert_eq!(again["status"], "ok", "{again}");
    assert_eq!(stats(&again)["snapshots_copied"], 0, "{again}");
    assert_eq!(stats(&again)["snapshots_skipped"], 2, "{again}");
    // Retention keeps the newest of the plan's snapshots, in the repository and in the
    // replica alike.
    let retention = run_now(&server, &site.petugas, &plan, "retention", 6);
    assert_eq!(retention["status"], "ok", "{retention}");
    let kept = stats(&retention);
    for prefix in ["", "replica_"] {
        assert_eq!(kept[format!("{prefix}snapshots_kept")], 1, "{retention}");
        assert_eq!(kept[format!("{prefix}snapshots_removed")], 1, "{retention}");
    }
    // The replica's password is the daemon's to derive: the primary's does not open it.
    let foreign = Command::new("restic")
        .args(["snapshots", "--no-cache"])
        .env("RESTIC_REPOSITORY", &replica_repo)
        .env("RESTIC_PASSWORD_FILE", &password)
        .output()
        .unwrap();
    assert!(
        !foreign.status.success(),
        "the primary's password opens the replica"
    );

    // Damage in the restic repository: the biggest data pack garbled. The restore does
    // not report success, names what restic could not restore, and leaves no staging.
    let mut packs = Vec::new();
    for sub in std::fs::read_dir(repo.join("data")).unwrap() {
        for pack in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let path = pack.unwrap().path();
            packs.push((std::fs::metadata(&path).unwrap().len(), path));
        }
    }
    let (_, biggest) = packs.into_iter().max().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mut bytes = std::fs::read(&biggest).unwrap();
        for byte in bytes.iter_mut().step_by(512) {
            *byte ^= 0x5a;
        }
        std::fs::set_permissions(&biggest, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&biggest, bytes).unwrap();
    }
    let damaged = dir.path().join("dipulihkan-rusak");
    let (output, shown) = restore_job(&damaged, &[]);
    assert_eq!(
        output.status.code(),
        Some(3),
        "verify differences exit 3: {shown} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(shown["status"], "verify_differences", "{shown}");
    assert!(
        shown["stats"]["files_failed"].as_u64().unwrap() > 0,
        "{shown}"
    );
    assert!(
        shown["stats"]["failed"].to_string().contains("dump.sql"),
        "the damaged file is named: {shown}"
    );
    assert_eq!(staging_left(), 0, "the staging copy is removed");

    // Procedure C with the replica step: the primary's restore finds the damage, the
    // same snapshot restored from the replica verifies, and every file is the source's.
    let repaired = dir.path().join("dipulihkan-replika");
    let shown = procedure_c("Restore arsip dari replika", &repaired, "replica");
    assert_eq!(shown["state"], "verified", "{shown}");
    assert_eq!(shown["attempts"][0]["attempt"], "primary", "{shown}");
    assert_ne!(shown["attempts"][0]["status"], "ok", "{shown}");
    assert_eq!(shown["attempts"][1]["attempt"], "replica", "{shown}");
    assert_eq!(shown["attempts"][1]["status"], "ok", "{shown}");
    assert_eq!(
        shown["attempts"][1]["snapshot"],
        second["snapshot_id"].as_str().unwrap(),
        "the replica's copy of the same snapshot, named by its id in the plan's repository: {shown}"
    );
    assert_eq!(tree_of(&inside(&repaired)), second_tree);
    assert_eq!(staging_left(), 0, "the staging copy is removed");
    drop(daemon);
}

/// A plan on a restic repository in S3 (a real S3 protocol server started here) whose
/// credentials are the plan's own, not the daemon's: sealed in the catalog with its
/// password and handed to restic in its environment only — never in clear in the
/// catalog, a run record, the log or an error. The plan backs up, and its replica under
/// a directory root is filled from S3. A variable the daemon sets itself is refused
/// naming it (never its value), and wrong credentials fail the run clearly.
#[test]
fn a_restic_repository_in_s3_runs_with_the_plans_sealed_credentials() {
    if restic_or_skip().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s3root = dir.path().join("s3");
    std::fs::create_dir_all(s3root.join("arsip")).unwrap();
    let addr = s3_server::start_s3(&s3root);
    let location = format!("s3:http://{addr}/arsip/restic");
    let password = dir.path().join("restic-password");
    std::fs::write(&password, "kata sandi s3\n").unwrap();
    let restic_s3 = |args: &[&str]| {
        let output = Command::new("restic")
            .args(args)
            .env("RESTIC_REPOSITORY", &location)
            .env("RESTIC_PASSWORD_FILE", &password)
            .env("RESTIC_CACHE_DIR", dir.path().join("cache"))
            .env("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    };
    restic_s3(&["init"]);

    let data = dir.path().join("var");
    let config = dir.path().join("cadang.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\n[scheduler]\ntick_secs = 1\nlease_secs = 5\n[repositories]\nreplica_root = \"{}\"\n",
            dir.path().join("replicas").display()
        ),
    )
    .unwrap();
    // The daemon has no S3 credentials of its own.
    let daemon = Daemon::start(
        &data,
        &[
            ("HOME", &dir.path().display().to_string()),
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
        ],
        Some(&config),
    );
    let admin = Daemon::bootstrap(&data, &[]);
    let server = daemon.url();
    let site = set_up(&server, &admin);

    let source = dir.path().join("srv-arsip");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("dump.sql"), noise(31, (1 << 20) + 7)).unwrap();
    std::fs::write(source.join("index.html"), "<h1>arsip</h1>\n".repeat(40)).unwrap();
    let request = active_backup_request(&server, &site, site.dinkes, dir.path(), "arsip-s3");
    let env_file = write(
        dir.path(),
        "arsip-s3.env",
        &format!(
            "# kredensial S3 arsip\nexport AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n\nAWS_DEFAULT_REGION=us-east-1\n",
            s3_server::ACCESS_KEY,
            s3_server::SECRET_KEY
        ),
    );
    let plan = adopt(
        &server,
        &site.kasi,
        request,
        (&source, Path::new(&location), &password),
        &["--restic-env-file", &env_file, "--verify-parts", "1"],
    )["plan"]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let import = wait_for_run(&server, &site.kasi, &plan, 1);
    assert_eq!(import["status"], "ok", "{import}");
    assert_eq!(stats(&import)["snapshots"], 0, "{import}");
    step(&server, &site.kasi, request, "complete", 2, &[]);
    let backup = wait_for_run(&server, &site.kasi, &plan, 2);
    assert_eq!(backup["status"], "ok", "{backup}");
    let snapshot = backup["snapshot_id"].as_str().unwrap().to_owned();
    let listed: Value = serde_json::from_slice(&restic_s3(&["snapshots", "--json"])).unwrap();
    assert_eq!(listed[0]["id"], snapshot.as_str(), "{listed}");
    let verify = run_now(&server, &site.petugas, &plan, "verify", 3);
    assert_eq!(verify["status"], "ok", "{verify}");
    let replicated = run_now(&server, &site.petugas, &plan, "replicate", 4);
    assert_eq!(replicated["status"], "ok", "{replicated}");
    assert_eq!(stats(&replicated)["snapshots_copied"], 1, "{replicated}");

    // Refused before anything is stored: a variable the daemon sets itself.
    let leaky = write(
        dir.path(),
        "bocor.env",
        "AWS_ACCESS_KEY_ID=testkey\nRESTIC_PASSWORD=rahasia-bocor-77\n",
    );
    let create = |name: &str, env_file: &str| {
        vec![
            "plan".to_owned(),
            "create".into(),
            "--request".into(),
            request.to_string(),
            "--name".into(),
            name.into(),
            "--path".into(),
            source.display().to_string(),
            "--schedule".into(),
            "0 3 * * *".into(),
            "--restic-repo".into(),
            location.clone(),
            "--restic-password-file".into(),
            password.display().to_string(),
            "--restic-env-file".into(),
            env_file.into(),
        ]
    };
    let args = create("arsip-bocor", &leaky);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let why = refused(&server, &site.kasi, &args, "INVALID_ARGUMENT");
    assert!(why.contains("RESTIC_PASSWORD"), "{why}");
    assert!(!why.contains("rahasia-bocor-77"), "{why}");

    // Wrong credentials: the run fails with a clear reason that does not quote them.
    let wrong = write(
        dir.path(),
        "salah.env",
        "AWS_ACCESS_KEY_ID=testkey\nAWS_SECRET_ACCESS_KEY=salah-rahasia-123\nAWS_DEFAULT_REGION=us-east-1\n",
    );
    let args = create("arsip-salah", &wrong);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mistaken = ok(&server, &site.kasi, &args)[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let failed = run_now(&server, &site.petugas, &mistaken, "backup", 1);
    assert_eq!(failed["status"], "failed", "{failed}");
    let reason = failed["error"].as_str().unwrap();
    assert!(
        reason.contains("credentials") || reason.contains("Access"),
        "{failed}"
    );
    assert!(
        !failed.to_string().contains("salah-rahasia-123"),
        "{failed}"
    );

    // No secret in clear anywhere the daemon writes.
    let shown = ok(&server, &site.kasi, &["plan", "show", &plan]).to_string();
    let everything = [
        bytes_under(&data),
        std::fs::read(data.with_extension("log")).unwrap_or_default(),
    ]
    .concat();
    for secret in [
        s3_server::SECRET_KEY,
        "salah-rahasia-123",
        "kata sandi s3",
        "rahasia-bocor-77",
    ] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
        assert!(
            !everything
                .windows(secret.len())
                .any(|window| window == secret.as_bytes()),
            "{secret} is stored in clear"
        );
    }
    drop(daemon);
}
