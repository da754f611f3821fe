//! Crash safety: the real backup process is killed with SIGKILL at random
//! points; after every kill `check` passes (unreferenced packs are allowed
//! and reported), the next backup completes, and every committed snapshot
//! restores identically to what was backed up.
//!
//! Each trial backs up new data (so every trial exercises packing and
//! uploading): a fixed `base/` plus `cur/` holding files generated from the
//! trial number, so any snapshot's expected content can be regenerated.

mod common;
use common::*;

use std::path::Path;
use std::time::{Duration, Instant};

const FILES: u64 = 12;
const FILE_SIZE: usize = 4 << 20;

fn write_trial(src: &Path, trial: u64) {
    let cur = src.join("cur");
    let _ = std::fs::remove_dir_all(&cur);
    std::fs::create_dir_all(&cur).unwrap();
    for i in 0..FILES {
        std::fs::write(
            cur.join(format!("t{trial}_{i}")),
            bytes(FILE_SIZE, trial * 1000 + i),
        )
        .unwrap();
    }
}

/// Files object_store staged an upload under (`<name>#<n>`), relative to the repository.
fn staged_files(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = files_under(root)
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.rsplit('/').next().unwrap_or(p).contains('#'))
        .collect();
    out.sort();
    out
}

#[test]
fn sigkill_during_backup_leaves_a_valid_repository() {
    let trials: u64 = env_number("CADANG_CRASH_TRIALS", 20);
    let seed = seed_from("CADANG_CRASH_SEED");
    eprintln!("crash test seed {seed} (set CADANG_CRASH_SEED to replay), {trials} trials");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("base")).unwrap();
    for i in 0..200 {
        std::fs::write(
            src.join(format!("base/small{i}.txt")),
            format!("{i}\n").repeat(100),
        )
        .unwrap();
    }
    let repo = tmp.path().join("repo");
    let repo = repo.to_str().unwrap();
    run(cadang(repo).arg("init"), 0);

    // Calibrate: how long does backing up one trial's new data take here? The faster of
    // two runs into fresh repositories: the first may pay for a cold page cache, and an
    // overestimate would let backups finish before the kill lands.
    let mut full = Duration::MAX;
    for round in 0..2 {
        let calib = tmp.path().join(format!("calib{round}"));
        run(cadang(calib.to_str().unwrap()).arg("init"), 0);
        write_trial(&src, 999_990 + round);
        let t = Instant::now();
        run(
            cadang(calib.to_str().unwrap())
                .arg("backup")
                .arg("-q")
                .arg(&src),
            0,
        );
        full = full.min(t.elapsed());
    }
    let full = full.max(Duration::from_millis(100));

    let mut x = seed | 1;
    let mut killed = 0;
    for trial in 0..trials {
        write_trial(&src, trial);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Kill somewhere within the first 80% of a full run, so that nearly every
        // trial interrupts a backup in flight.
        let delay = Duration::from_micros(x % (full.as_micros() as u64 * 4 / 5 + 1));
        let mut child = cadang(repo)
            .args(["backup", "-q"])
            .arg(&src)
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        if child.wait().unwrap().code().is_none() {
            killed += 1;
        }
        let rep = last_json(&run(cadang(repo).args(["check", "--json"]), 0));
        assert_eq!(rep["ok"], true, "trial {trial} (delay {delay:?}): {rep}");
    }
    eprintln!(
        "{killed}/{trials} backups were killed before finishing (full backup takes {full:?})"
    );
    assert!(
        killed >= trials / 2,
        "too few kills landed mid-backup ({killed}/{trials}); the test would prove little"
    );

    // The next backup completes and check reads everything clean.
    run(cadang(repo).args(["backup", "-q"]).arg(&src), 0);
    run(cadang(repo).args(["check", "--read-data"]), 0);

    // A kill between staging an upload and linking it into place leaves the staged
    // file, which no listing shows; check names each and prune sweeps them.
    let staged = staged_files(Path::new(repo));
    let out = run(cadang(repo).args(["check"]), 0);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for f in &staged {
        assert!(
            said.contains(f.as_str()) && said.contains("partial upload"),
            "{f} not reported:\n{said}"
        );
    }
    run(cadang(repo).args(["prune", "--grace", "0h"]), 0);
    assert_eq!(staged_files(Path::new(repo)), Vec::<String>::new());
    eprintln!(
        "{} partial upload(s) left by the kills, all swept by prune",
        staged.len()
    );

    // Every committed snapshot restores identically to what it backed up.
    let ids = snapshot_ids(repo);
    assert!(!ids.is_empty());
    for id in &ids {
        let target = tmp.path().join(format!("r-{}", &id[..8]));
        run(
            cadang(repo)
                .args(["restore", id, "--verify", "--target"])
                .arg(&target),
            0,
        );
        let r = restored_path(&target, &src);
        assert_same_tree(&src.join("base"), &r.join("base"));
        let mut names: Vec<String> = std::fs::read_dir(r.join("cur"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len() as u64, FILES, "snapshot {id}: {names:?}");
        for n in names {
            let (t, i) = n[1..].split_once('_').unwrap();
            let (t, i): (u64, u64) = (t.parse().unwrap(), i.parse().unwrap());
            assert!(
                std::fs::read(r.join("cur").join(&n)).unwrap() == bytes(FILE_SIZE, t * 1000 + i),
                "snapshot {id}: {n} differs"
            );
        }
        std::fs::remove_dir_all(&target).unwrap();
    }
    eprintln!("{} committed snapshots restored identically", ids.len());
}
