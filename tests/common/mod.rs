//! Helpers shared by the integration tests: run the real `cadang` binary,
//! build source trees with awkward cases, and compare trees on every
//! attribute cadang restores.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Password used by every test repository.
pub const PASSWORD: &str = "correct horse battery staple";

/// A `cadang` command with the test password and cheap key stretching.
pub fn cadang(repo: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cadang"));
    c.arg("-r").arg(repo);
    c.env("CADANG_PASSWORD", PASSWORD);
    // Tests open many repositories: Argon2 at the OWASP floor (19 MiB,
    // 2 passes) keeps them fast; the default (64 MiB, 3 passes) is used
    // wherever this is not set.
    c.env("CADANG_KDF_MEMORY_KIB", "19456");
    c.env_remove("CADANG_REPOSITORY");
    c.env_remove("CADANG_PASSWORD_FILE");
    c
}

/// Run and return output, printing it when the exit code is unexpected.
pub fn run(c: &mut Command, expect: i32) -> Output {
    let t = std::time::Instant::now();
    let out = c.output().expect("run cadang");
    if std::env::var("CADANG_TEST_TIMING").is_ok() {
        eprintln!(
            "{:?} took {:?}",
            c.get_args().collect::<Vec<_>>(),
            t.elapsed()
        );
    }
    let code = out.status.code().unwrap_or(-1);
    if code != expect {
        panic!(
            "{c:?}\nexpected exit {expect}, got {code}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Last JSON line of stdout.
pub fn last_json(out: &Output) -> serde_json::Value {
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .rev()
        .find(|l| l.starts_with('{') || l.starts_with('['))
        .expect("a JSON line");
    serde_json::from_str(line).expect("valid JSON")
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Build a tree with the edge cases a backup tool must survive.
pub fn edge_case_tree(root: &Path, big_mib: usize) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::create_dir(root.join("empty-dir")).unwrap();
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), b"at the bottom").unwrap();
    std::fs::write(root.join("ünïcödé – ファイル.txt"), "unicode name").unwrap();
    std::fs::write(
        root.join(OsStr::from_bytes(b"odd\xff\xfe bytes \x01\x7f")),
        b"non-UTF-8 name",
    )
    .unwrap();
    std::fs::write(root.join("with\nnewline"), b"newline in name").unwrap();
    std::fs::write(root.join("spaces and 'quotes'"), b"q").unwrap();
    std::os::unix::fs::symlink("ünïcödé – ファイル.txt", root.join("link-ok")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("link-dangling")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-absolute")).unwrap();
    std::fs::write(root.join("hard-a"), b"hard linked content").unwrap();
    std::fs::hard_link(root.join("hard-a"), root.join("hard-b")).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::hard_link(root.join("hard-a"), root.join("sub/hard-c")).unwrap();
    // Sparse: 64 MiB apparent, a little data at both ends.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(root.join("sparse")).unwrap();
        f.write_all(b"start").unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(b"end").unwrap();
    }
    // Modes.
    std::fs::write(root.join("exec.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("exec.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("private"), b"secret-ish").unwrap();
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(root.join("restricted-dir")).unwrap();
    std::fs::write(root.join("restricted-dir/inner"), b"inner").unwrap();
    std::fs::set_permissions(
        root.join("restricted-dir"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    // A FIFO.
    let c = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    // Many small files.
    let small = root.join("many");
    std::fs::create_dir(&small).unwrap();
    for i in 0..1500 {
        let d = small.join(format!("d{}", i % 30));
        std::fs::create_dir_all(&d).unwrap();
        let body = format!("file {i}\n").repeat(1 + i % 17);
        std::fs::write(d.join(format!("f{i}.txt")), body).unwrap();
    }
    // Compressible and incompressible medium files, and a large one.
    std::fs::write(
        root.join("text.log"),
        "2026-11-29 INFO request served in 12 ms\n".repeat(50_000),
    )
    .unwrap();
    std::fs::write(root.join("random.bin"), bytes(3 << 20, 1)).unwrap();
    if big_mib > 0 {
        let mut big = Vec::with_capacity(big_mib << 20);
        let block = bytes(1 << 20, 2);
        for i in 0..big_mib {
            if i % 4 == 3 {
                big.extend(std::iter::repeat_n(0u8, 1 << 20));
            } else {
                // A VM-image-like file: mostly repeated blocks, a few edited.
                let mut b = block.clone();
                if i % 16 == 5 {
                    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
                }
                big.extend_from_slice(&b);
            }
        }
        std::fs::write(root.join("big.img"), big).unwrap();
    }
    // Old, fixed mtimes so they are compared meaningfully.
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_symlink_file_times(root.join("private"), t, t).unwrap();
    filetime::set_symlink_file_times(root.join("link-ok"), t, t).unwrap();
}

/// Everything about one entry that a restore must reproduce.
#[derive(Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub content: Option<[u8; 32]>,
    pub link: Option<Vec<u8>>,
    pub nlink: u64,
}

/// A number from the environment variable `var`, else `default` (test sizes).
pub fn env_number<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The seed of a randomised test: from `var` to replay a run, else from the clock.
pub fn seed_from(var: &str) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    env_number(var, clock)
}

/// The regular files under `root`, as paths relative to it (depth first, unsorted).
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out
}

/// Fingerprint every entry under `root` (relative paths as keys).
pub fn fingerprint(root: &Path) -> BTreeMap<PathBuf, Fingerprint> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Fingerprint>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else {
                "special"
            };
            let content = ft
                .is_file()
                .then(|| *blake3::hash(&std::fs::read(&p).unwrap()).as_bytes());
            let link = ft.is_symlink().then(|| {
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            });
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                Fingerprint {
                    kind: kind.into(),
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if ft.is_dir() { 0 } else { m.len() },
                    // Directory mtimes are restored too; symlink mtimes as well.
                    mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    content,
                    link,
                    nlink: if ft.is_file() { m.nlink() } else { 0 },
                },
            );
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Assert two trees are identical in both directions on every attribute.
pub fn assert_same_tree(src: &Path, restored: &Path) {
    assert_same_fingerprints(&fingerprint(src), &fingerprint(restored), "");
}

/// Assert `got` has exactly the entries of `want`, each identical; `context`
/// prefixes the failure message.
pub fn assert_same_fingerprints(
    want: &BTreeMap<PathBuf, Fingerprint>,
    got: &BTreeMap<PathBuf, Fingerprint>,
    context: &str,
) {
    for (p, fa) in want {
        match got.get(p) {
            None => panic!("{context}{} missing from the restore", p.display()),
            Some(fb) => assert_eq!(fa, fb, "{context}{} differs", p.display()),
        }
    }
    for p in got.keys() {
        assert!(
            want.contains_key(p),
            "{context}{} appeared in the restore but is not in the source",
            p.display()
        );
    }
}

/// Ids of the repository's snapshots, oldest first (`snapshots --json`).
pub fn snapshot_ids(repo: &str) -> Vec<String> {
    last_json(&run(cadang(repo).args(["snapshots", "--json"]), 0))
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| s["id"].as_str().expect("an id").to_string())
        .collect()
}

/// Where a restore of absolute source path `src` lands under `target`.
pub fn restored_path(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

/// Allocated blocks of a file (to check sparseness survives).
pub fn allocated_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Restore `id` with `--verify` into `target`; every file must verify (library-level
/// tests).
pub fn restore_verified(
    repo: &cadang::engine::Repository,
    id: &cadang::engine::id::SnapshotId,
    target: &Path,
) {
    use cadang::engine::restore::{RestoreOptions, RestoreProgress, restore};
    let opts = RestoreOptions {
        target: target.to_path_buf(),
        verify: true,
        ..Default::default()
    };
    let res = restore(repo, id, &opts, &RestoreProgress::default()).expect("restore runs");
    assert!(res.is_success(), "{res:?}");
}

/// Restore `id` with `--verify` into `target` and compare it with `src` on
/// every attribute (library-level tests).
pub fn restore_and_compare(
    repo: &cadang::engine::Repository,
    id: &cadang::engine::id::SnapshotId,
    src: &Path,
    target: &Path,
) {
    restore_verified(repo, id, target);
    assert_same_tree(src, &restored_path(target, src));
}

/// `check --read-data` finds nothing, not even a warning.
pub fn assert_check_clean(repo: &cadang::engine::Repository) {
    use cadang::engine::check::{CheckOptions, ReadData, check};
    let rep = check(
        repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
    )
    .expect("check runs");
    assert!(rep.is_ok() && rep.warnings.is_empty(), "{rep:?}");
}

/// Bytes of the file at `path` in the page cache (`fincore`), or `None` (with the reason
/// printed) where that cannot be known: no `fincore`, or a tmpfs, which is all cache.
pub fn cached_bytes(path: &Path) -> Option<u64> {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output();
    let on_tmpfs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"tmpfs"));
    match out {
        Ok(out) if out.status.success() && !on_tmpfs => {
            Some(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
        }
        _ => {
            eprintln!(
                "skipped: the page cache of {} cannot be measured here",
                path.display()
            );
            None
        }
    }
}
