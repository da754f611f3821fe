//! Crash safety: the real backup process is killed with SIGKILL at random
//! points; after every kill `check` passes (unreferenced packs are allowed
//! and reported), the next backup completes, and every committed snapshot
//! restores identically to the source.

mod common;
use common::*;

use std::time::{Duration, Instant};

fn seed() -> u64 {
    std::env::var("CADANG_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

#[test]
fn sigkill_during_backup_leaves_a_valid_repository() {
    let trials: usize = std::env::var("CADANG_CRASH_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed = seed();
    eprintln!("crash test seed {seed} (set CADANG_CRASH_SEED to replay), {trials} trials");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..24 {
        std::fs::write(src.join(format!("blob{i}.bin")), bytes(3 << 20, 100 + i)).unwrap();
    }
    for i in 0..400 {
        std::fs::write(src.join(format!("small{i}.txt")), format!("{i}\n").repeat(100)).unwrap();
    }
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);

    // Calibrate: how long does a full backup take here?
    let t = Instant::now();
    run(cadang(tmp.path().join("calib").to_str().unwrap()).arg("init"), 0);
    run(cadang(tmp.path().join("calib").to_str().unwrap()).arg("backup").arg("-q").arg(&src), 0);
    let full = t.elapsed().max(Duration::from_millis(200));

    let mut x = seed | 1;
    let mut killed = 0;
    for trial in 0..trials {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(x % (full.as_millis() as u64 + 1));
        // --force reads every file each time, so every trial exercises the
        // upload path rather than the unchanged-file shortcut.
        let mut child = cadang(repo).args(["backup", "-q", "--force"]).arg(&src).spawn().unwrap();
        std::thread::sleep(delay);
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let st = child.wait().unwrap();
        if st.code().is_none() {
            killed += 1;
        }
        let out = run(cadang(repo).args(["check", "--json"]), 0);
        let rep = last_json(&out);
        assert_eq!(rep["ok"], true, "trial {trial} (delay {delay:?}): {rep}");
    }
    eprintln!("{killed}/{trials} backups were killed before finishing");
    assert!(killed >= trials / 2, "too few kills landed mid-backup ({killed}/{trials}); the test would prove little");

    // The next backup completes, and every committed snapshot restores identically.
    run(cadang(repo).args(["backup", "-q"]).arg(&src), 0);
    run(cadang(repo).args(["check", "--read-data"]), 0);
    let snaps = last_json(&run(cadang(repo).args(["snapshots", "--json"]), 0));
    let ids: Vec<String> = snaps.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    assert!(!ids.is_empty());
    for id in &ids {
        let target = tmp.path().join(format!("r-{}", &id[..8]));
        run(cadang(repo).args(["restore", id, "--verify", "--target"]).arg(&target), 0);
        assert_same_tree(&src, &restored_path(&target, &src));
        std::fs::remove_dir_all(&target).unwrap();
    }
}
