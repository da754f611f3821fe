//! Disk full, for real: the repository and the catalog each on a tmpfs of a few MiB that
//! runs out of space, then is given more. Mounting needs root; without it these tests say
//! so and pass, unless `CADANG_REQUIRE_TMPFS=1` (set by `.ci/run`) makes them mandatory.

mod common;
mod e2e;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted for one test; unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `path`, or `None` (with the reason printed) where
    /// this process may not mount and the tests are not required.
    fn mount(path: &Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs {
                path: path.to_owned(),
            }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("CADANG_REQUIRE_TMPFS").is_none(),
                    "CADANG_REQUIRE_TMPFS is set but a tmpfs cannot be mounted: {why}"
                );
                eprintln!("skipped: cannot mount a tmpfs here ({why})");
                None
            }
        }
    }

    /// Gives the file system `mib` MiB in all ("the operator freed space").
    fn grow(&self, mib: u32) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {}", self.path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system holding `dir` with one file until a write fails with ENOSPC, then
/// gives back `slack` bytes.
fn fill(dir: &Path, slack: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    loop {
        if let Err(e) = file.write_all(&block).and_then(|_| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // Single pages may still be free: take them too.
    while file.write_all(&block[..512]).is_ok() {}
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(slack)).unwrap();
    file.sync_all().unwrap();
    path
}

fn no_panic(stderr: &[u8]) {
    let text = String::from_utf8_lossy(stderr);
    assert!(!text.contains("panicked"), "a panic: {text}");
}

#[test]
fn a_full_repository_disk_fails_the_backup_cleanly_and_recovers_when_space_is_freed() {
    let base = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&base.path().join("fs"), 8) else {
        return;
    };
    let repo = fs.path.join("repo").display().to_string();
    common::run(common::cadang(&repo).arg("init"), 0);

    let small = base.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("a.bin"), common::bytes(2 << 20, 1)).unwrap();
    common::run(
        common::cadang(&repo).args(["backup", "--json"]).arg(&small),
        0,
    );

    // 12 MiB that do not compress, onto a disk with about 6 MiB left.
    let big = base.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..3 {
        std::fs::write(
            big.join(format!("part{i}.bin")),
            common::bytes(4 << 20, 10 + i),
        )
        .unwrap();
    }
    let out = common::cadang(&repo)
        .args(["backup", "--json"])
        .arg(&big)
        .output()
        .unwrap();
    no_panic(&out.stderr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the backup cannot have fit: {stderr}"
    );
    assert!(
        stderr.contains("No space left on device"),
        "the cause is named: {stderr}"
    );
    eprintln!("repository disk full: {}", stderr.trim());
    assert!(
        stderr.lines().count() <= 3,
        "a short error, not a retry storm: {stderr}"
    );
    for line in stderr.lines() {
        assert!(
            line.matches("storage error on").count() <= 1,
            "the cause is said once, not wrapped once per blob that came after it: {line}"
        );
    }

    // The repository is still valid: one snapshot, check clean (orphans allowed), the
    // earlier snapshot restores.
    let snaps = common::last_json(&common::run(
        common::cadang(&repo).args(["snapshots", "--json"]),
        0,
    ));
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    common::run(common::cadang(&repo).args(["check", "--read-data"]), 0);

    // The operator frees space: the same backup now succeeds and both snapshots restore
    // byte for byte.
    fs.grow(64);
    common::run(
        common::cadang(&repo).args(["backup", "--json"]).arg(&big),
        0,
    );
    common::run(common::cadang(&repo).args(["check", "--read-data"]), 0);
    let snaps = common::last_json(&common::run(
        common::cadang(&repo).args(["snapshots", "--json"]),
        0,
    ));
    let ids: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{snaps}");
    for (id, src) in ids.iter().zip([&small, &big]) {
        let target = base.path().join(format!("restored-{id}"));
        common::run(
            common::cadang(&repo)
                .args(["restore", id, "--verify", "--target"])
                .arg(&target),
            0,
        );
        common::assert_same_tree(src, &common::restored_path(&target, src));
    }
}

#[test]
fn a_full_catalog_disk_refuses_writes_clearly_keeps_every_acknowledged_one_and_recovers() {
    let base = tempfile::tempdir().unwrap();
    // The data directory itself is the mount point: the daemon's log and config live
    // beside it, on the ordinary disk.
    let data = base.path().join("data");
    let Some(fs) = Tmpfs::mount(&data, 4) else {
        return;
    };
    let admin = e2e::Daemon::bootstrap(&data, &[]);
    let daemon = e2e::Daemon::start(&data, &[], None);
    let server = daemon.url();
    e2e::ok(&server, &admin, &["agency", "list"]);

    let filler = fill(&fs.path, 160 * 1024);
    // Writes go on until the catalog cannot grow; each one answered as done must be kept.
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 0..400 {
        let code = format!("AG-{i:03}");
        let name = format!("Dinas Percobaan Nomor {i} {}", "x".repeat(400));
        let out = e2e::cli(
            &server,
            &admin,
            &[
                "agency",
                "add",
                "--code",
                &code,
                "--name",
                &name,
                "--address",
                "Jl. Pahlawan No. 9, Semarang",
            ],
        );
        if out.status.success() {
            acknowledged.push(code);
        } else {
            refusal = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let refusal = refusal.expect("a full disk refuses a catalog write");
    assert!(!acknowledged.is_empty(), "the slack took some writes");
    eprintln!(
        "catalog disk full after {} acknowledged writes: {}",
        acknowledged.len(),
        refusal.trim()
    );
    assert!(
        refusal.contains("full") && refusal.contains("catalog"),
        "the refusal says the catalog's disk is full: {refusal}"
    );
    assert_eq!(refusal.trim().lines().count(), 1, "{refusal}");

    // Reads still work and the daemon keeps running through scheduler ticks.
    std::thread::sleep(Duration::from_secs(2));
    let listed = e2e::ok(&server, &admin, &["agency", "list"]);
    let codes: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["code"].as_str().unwrap().to_owned())
        .collect();
    for code in &acknowledged {
        assert!(codes.contains(code), "{code} was acknowledged, then lost");
    }

    // Space is freed: writes succeed again, and after a restart everything acknowledged
    // is there and the audit chain verifies.
    std::fs::remove_file(&filler).unwrap();
    e2e::ok(
        &server,
        &admin,
        &[
            "agency",
            "add",
            "--code",
            "AFTER",
            "--name",
            "Dinas Setelah Pengosongan",
            "--address",
            "Jl. Pemuda No. 1, Semarang",
        ],
    );
    let mut daemon = daemon;
    daemon.restart();
    let server = daemon.url();
    let listed = e2e::ok(&server, &admin, &["agency", "list"]);
    let text = listed.to_string();
    for code in acknowledged
        .iter()
        .chain(std::iter::once(&"AFTER".to_owned()))
    {
        assert!(text.contains(code.as_str()), "{code} missing after restart");
    }
    e2e::ok(&server, &admin, &["audit", "verify"]);
    let log = match std::env::var_os("CADANG_E2E_LOG") {
        Some(path) => std::fs::read_to_string(path).unwrap(),
        None => std::fs::read_to_string(data.with_extension("log")).unwrap(),
    };
    assert!(
        !log.contains("transaction depth"),
        "a connection was left in a rolled-back transaction"
    );
    assert!(!log.contains("panicked"), "the daemon panicked: {log}");
}
