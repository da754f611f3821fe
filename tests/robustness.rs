//! Randomized robustness run: weighted random changes to a file tree, backups,
//! restores of random snapshots, forget and prune, all through the real
//! `cadang` binary, checked against an oracle kept outside the repository:
//! the fingerprint (kind, mode, owner, size, mtime, content hash, link target,
//! link count) of every entry at the moment each snapshot was taken.
//!
//! After every operation the snapshot list must equal the oracle's (nothing
//! lost, nothing phantom); every restore must match its snapshot's
//! fingerprint exactly, in both directions; `check` runs after every prune and
//! `check --read-data` at the end, when every surviving snapshot is restored.
//!
//! CI runs a short run. The long run is
//! `CADANG_ROBUST_STEPS=2000 cargo test --test robustness -- --nocapture`;
//! `CADANG_ROBUST_SEED` replays a run (the seed is printed first).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// xorshift64*: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| &v[self.below(v.len())])
    }
}

/// Names with the awkward cases a real server has.
fn new_name(rng: &mut Rng, n: u64) -> String {
    match rng.below(8) {
        0 => format!("with space {n}"),
        1 => format!("ünïcödé-{n}"),
        2 => format!("-dash{n}"),
        3 => format!(".hidden{n}"),
        _ => format!("f{n}"),
    }
}

/// Everything under `root`: (directories, regular files, symlinks), sorted.
fn entries(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
    let (mut dirs, mut files, mut links) = (vec![root.to_path_buf()], Vec::new(), Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
            if ft.is_dir() {
                dirs.push(p.clone());
                stack.push(p);
            } else if ft.is_symlink() {
                links.push(p);
            } else {
                files.push(p);
            }
        }
    }
    dirs.sort();
    files.sort();
    links.sort();
    (dirs, files, links)
}

fn tree_bytes(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .map(|f| std::fs::symlink_metadata(f).unwrap().len())
        .sum()
}

/// File contents: incompressible, compressible, empty, or borrowed from
/// another file (so chunks are shared and deduplicated).
fn content(rng: &mut Rng, files: &[PathBuf], seed: u64) -> Vec<u8> {
    let size = match rng.below(10) {
        0 => 0,
        1..=4 => rng.below(4096),
        5..=7 => 4096 + rng.below(300 << 10),
        _ => (1 << 20) + rng.below(5 << 20),
    };
    match rng.below(4) {
        0 => format!("line {seed} of a log that compresses well\n")
            .repeat(size / 30 + 1)
            .into_bytes()[..size]
            .to_vec(),
        1 if !files.is_empty() => {
            let mut b = std::fs::read(rng.pick(files).unwrap()).unwrap();
            b.extend_from_slice(&bytes(size / 4, seed));
            b
        }
        _ => bytes(size, seed),
    }
}

/// One weighted random change to the tree; returns a description.
fn mutate(rng: &mut Rng, root: &Path, counter: &mut u64) -> String {
    *counter += 1;
    let n = *counter;
    let (dirs, files, links) = entries(root);
    let over_budget = files.len() > 150 || tree_bytes(&files) > 48 << 20;
    let roll = if over_budget {
        90 + rng.below(10)
    } else {
        rng.below(100)
    };
    match roll {
        // New file.
        0..=29 => {
            let p = rng.pick(&dirs).unwrap().join(new_name(rng, n));
            let body = content(rng, &files, n);
            std::fs::write(&p, &body).unwrap();
            format!("create {} ({} bytes)", p.display(), body.len())
        }
        // Edit in place: overwrite a range, append or truncate.
        30..=49 if !files.is_empty() => {
            use std::io::{Seek, SeekFrom, Write};
            let p = rng.pick(&files).unwrap().clone();
            let len = std::fs::metadata(&p).unwrap().len();
            let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            match rng.below(3) {
                0 => {
                    let at = rng.below(len as usize + 1) as u64;
                    f.seek(SeekFrom::Start(at)).unwrap();
                    f.write_all(&bytes(1 + rng.below(64 << 10), n)).unwrap();
                    format!("overwrite {} at {at}", p.display())
                }
                1 => {
                    f.seek(SeekFrom::End(0)).unwrap();
                    f.write_all(&bytes(1 + rng.below(256 << 10), n)).unwrap();
                    format!("append to {}", p.display())
                }
                _ => {
                    let to = rng.below(len as usize + 1) as u64;
                    f.set_len(to).unwrap();
                    format!("truncate {} to {to}", p.display())
                }
            }
        }
        // Replace a file whole (a new inode under the old name).
        50..=54 if !files.is_empty() => {
            let p = rng.pick(&files).unwrap().clone();
            let tmp = p.with_file_name(format!(".tmp{n}"));
            std::fs::write(&tmp, content(rng, &files, n)).unwrap();
            std::fs::rename(&tmp, &p).unwrap();
            format!("replace {}", p.display())
        }
        // Move a file to another directory.
        55..=61 if !files.is_empty() => {
            let p = rng.pick(&files).unwrap().clone();
            let to = rng.pick(&dirs).unwrap().join(new_name(rng, n));
            std::fs::rename(&p, &to).unwrap();
            format!("move {} to {}", p.display(), to.display())
        }
        // New directory, sometimes nested two deep.
        62..=69 => {
            let mut p = rng.pick(&dirs).unwrap().join(format!("d{n}"));
            if rng.chance(30) {
                p = p.join(format!("inner{n}"));
            }
            std::fs::create_dir_all(&p).unwrap();
            format!("mkdir {}", p.display())
        }
        // Symlink: relative, absolute or dangling.
        70..=74 => {
            let p = rng.pick(&dirs).unwrap().join(format!("l{n}"));
            let target = match (rng.below(3), rng.pick(&files)) {
                (0, Some(f)) => f.clone(),
                (1, Some(f)) => PathBuf::from(f.file_name().unwrap()),
                _ => PathBuf::from(format!("missing/{n}")),
            };
            std::os::unix::fs::symlink(&target, &p).unwrap();
            format!("symlink {} -> {}", p.display(), target.display())
        }
        // Hard link to an existing file.
        75..=78 if !files.is_empty() => {
            let f = rng.pick(&files).unwrap().clone();
            let p = rng.pick(&dirs).unwrap().join(format!("h{n}"));
            std::fs::hard_link(&f, &p).unwrap();
            format!("hardlink {} = {}", p.display(), f.display())
        }
        // Permissions.
        79..=83 if !files.is_empty() => {
            let p = rng.pick(&files).unwrap().clone();
            let mode = *rng.pick(&[0o600, 0o640, 0o644, 0o755, 0o400]).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            format!("chmod {mode:o} {}", p.display())
        }
        // An old modification time (what `touch -d` or an unpacked archive leaves).
        84..=89 if !files.is_empty() => {
            let p = rng.pick(&files).unwrap().clone();
            let t = filetime::FileTime::from_unix_time(
                1_500_000_000 + rng.below(200_000_000) as i64,
                rng.below(1_000_000_000) as u32,
            );
            filetime::set_file_mtime(&p, t).unwrap();
            format!("set mtime of {}", p.display())
        }
        // Deletions: a file, a symlink, or a whole directory.
        _ => {
            let sub: Vec<PathBuf> = dirs.iter().filter(|d| *d != root).cloned().collect();
            match rng.below(4) {
                0 if !sub.is_empty() => {
                    let d = rng.pick(&sub).unwrap().clone();
                    std::fs::remove_dir_all(&d).unwrap();
                    format!("rm -r {}", d.display())
                }
                1 if !links.is_empty() => {
                    let l = rng.pick(&links).unwrap().clone();
                    std::fs::remove_file(&l).unwrap();
                    format!("rm {}", l.display())
                }
                _ if !files.is_empty() => {
                    let f = rng.pick(&files).unwrap().clone();
                    std::fs::remove_file(&f).unwrap();
                    format!("rm {}", f.display())
                }
                _ => "nothing to delete".into(),
            }
        }
    }
}

type Oracle = BTreeMap<String, BTreeMap<PathBuf, Fingerprint>>;

/// The repository's snapshots must be exactly the oracle's.
fn assert_snapshots_match(repo: &str, oracle: &Oracle) -> Vec<String> {
    let ids = snapshot_ids(repo);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        oracle.keys().cloned().collect::<Vec<_>>(),
        "the repository's snapshots differ from the oracle's"
    );
    ids
}

/// Restore `id` to a fresh directory and compare it with the oracle.
fn restore_and_compare(repo: &str, id: &str, src: &Path, work: &Path, oracle: &Oracle) {
    let target = work.join("restore");
    let _ = std::fs::remove_dir_all(&target);
    run(
        cadang(repo)
            .args(["restore", id, "--verify", "-q", "--target"])
            .arg(&target),
        0,
    );
    let got = fingerprint(&restored_path(&target, src));
    assert_same_fingerprints(&oracle[id], &got, &format!("snapshot {id}: "));
    std::fs::remove_dir_all(&target).unwrap();
}

#[test]
fn random_changes_backups_restores_and_pruning_agree_with_the_oracle() {
    let steps: usize = env_number("CADANG_ROBUST_STEPS", 150);
    let seed = seed_from("CADANG_ROBUST_SEED");
    eprintln!("robustness run: seed {seed} (CADANG_ROBUST_SEED to replay), {steps} steps");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let repo = tmp.path().join("repo").to_str().unwrap().to_string();
    run(cadang(&repo).arg("init"), 0);

    let mut oracle: Oracle = BTreeMap::new();
    let mut counter = 0u64;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for step in 0..steps {
        let roll = rng.below(100);
        let what = match roll {
            0..=49 => {
                for _ in 0..1 + rng.below(4) {
                    let m = mutate(&mut rng, &src, &mut counter);
                    eprintln!("[{step}] {m}");
                }
                "change"
            }
            50..=74 => {
                let want = fingerprint(&src);
                let mut c = cadang(&repo);
                c.args(["backup", "--json"]).arg(&src);
                if rng.chance(20) {
                    c.arg("--tag").arg("kept");
                }
                let id = last_json(&run(&mut c, 0))["snapshot_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                eprintln!("[{step}] backup -> {}", &id[..8]);
                assert!(
                    oracle.insert(id, want).is_none(),
                    "a snapshot id came back twice"
                );
                "backup"
            }
            75..=86 => {
                let ids: Vec<String> = oracle.keys().cloned().collect();
                if let Some(id) = rng.pick(&ids) {
                    eprintln!("[{step}] restore {}", &id[..8]);
                    restore_and_compare(&repo, id, &src, tmp.path(), &oracle);
                }
                "restore"
            }
            87..=94 => {
                let ids: Vec<String> = oracle.keys().cloned().collect();
                if rng.chance(50) {
                    if let Some(id) = rng.pick(&ids).cloned() {
                        eprintln!("[{step}] forget {}", &id[..8]);
                        run(cadang(&repo).args(["forget", &id]), 0);
                        oracle.remove(&id);
                    }
                } else {
                    // A policy: the newest N, of all snapshots or of the tagged ones only.
                    let keep = 1 + rng.below(4);
                    let only_tagged = rng.chance(40);
                    eprintln!("[{step}] forget --keep-last {keep} (only tagged: {only_tagged})");
                    let listed = last_json(&run(cadang(&repo).args(["snapshots", "--json"]), 0));
                    let considered: Vec<String> = listed
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|s| {
                            !only_tagged
                                || s["tags"].as_array().unwrap().iter().any(|t| t == "kept")
                        })
                        .map(|s| s["id"].as_str().unwrap().to_string())
                        .collect();
                    let mut c = cadang(&repo);
                    c.args(["forget", "--keep-last", &keep.to_string()]);
                    if only_tagged {
                        c.args(["--tag", "kept"]);
                    }
                    run(&mut c, 0);
                    let n = considered.len();
                    for id in considered.iter().take(n.saturating_sub(keep)) {
                        oracle.remove(id);
                    }
                }
                "forget"
            }
            _ => {
                let mut c = cadang(&repo);
                c.args(["prune", "--grace", "0h"]);
                if rng.chance(50) {
                    c.args(["--max-unused", "0"]);
                }
                eprintln!("[{step}] prune");
                run(&mut c, 0);
                run(cadang(&repo).arg("check"), 0);
                "prune"
            }
        };
        *counts.entry(what).or_default() += 1;
        assert_snapshots_match(&repo, &oracle);
    }

    // The end: prune everything prunable, read every byte, restore every snapshot.
    run(cadang(&repo).args(["prune", "--grace", "0h"]), 0);
    run(cadang(&repo).args(["check", "--read-data"]), 0);
    let ids = assert_snapshots_match(&repo, &oracle);
    for id in &ids {
        restore_and_compare(&repo, id, &src, tmp.path(), &oracle);
    }
    eprintln!(
        "robustness run: seed {seed}, {steps} steps {counts:?}, {} snapshots at the end, all restored identically",
        ids.len()
    );
}
