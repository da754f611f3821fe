//! Damage detection: flipped bytes in packs are all found by
//! `check --read-data`, which names the affected files; restore still
//! restores every undamaged file and lists the damaged ones. Missing and
//! truncated packs are found without reading data. Check changes nothing.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn setup(tmp: &Path) -> (std::path::PathBuf, String) {
    let src = tmp.join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 24 distinct incompressible files of 5 MiB: several 16 MiB packs.
    for i in 0..24 {
        std::fs::write(
            src.join(format!("file{i:02}.bin")),
            bytes(5 << 20, 1000 + i),
        )
        .unwrap();
    }
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    let repo = tmp.join("repo").to_str().unwrap().to_string();
    run(cadang(&repo).arg("init"), 0);
    run(cadang(&repo).args(["backup", "-q"]).arg(&src), 0);
    (src, repo)
}

fn data_packs(repo: &str) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(Path::new(repo).join("data")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            // Tree packs are small; data packs carry the files.
            if std::fs::metadata(&p).unwrap().len() > 4 << 20 {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

fn snapshot_of_repo(repo: &str) -> BTreeSet<(String, Vec<u8>)> {
    let mut out = BTreeSet::new();
    fn walk(p: &Path, out: &mut BTreeSet<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(Path::new(repo), &mut out);
    out
}

#[test]
fn byte_flips_are_detected_named_and_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = setup(tmp.path());
    let packs = data_packs(&repo);
    assert!(packs.len() >= 5, "need several packs, got {}", packs.len());
    // Flip one byte in 4 packs: near the start (first blob), in the middle,
    // and in the trailing header of the last one.
    let victims = [&packs[0], &packs[1], &packs[2], &packs[3]];
    for (i, p) in victims.iter().enumerate() {
        let mut b = std::fs::read(p).unwrap();
        let pos = match i {
            0 => 100,
            3 => b.len() - 40,
            _ => b.len() / 2,
        };
        b[pos] ^= 0x55;
        std::fs::write(p, b).unwrap();
    }
    let before = snapshot_of_repo(&repo);
    // Structure-only check does not read data: it cannot see flips but must pass.
    run(cadang(&repo).arg("check"), 0);
    let out = run(cadang(&repo).args(["check", "--read-data", "--json"]), 1);
    let rep = last_json(&out);
    let damaged = rep["damaged_packs"].as_array().unwrap();
    assert_eq!(damaged.len(), 4, "{rep}");
    let damaged_names: BTreeSet<String> = damaged
        .iter()
        .map(|d| d["pack"].as_str().unwrap().to_string())
        .collect();
    for v in victims {
        assert!(damaged_names.contains(v.file_name().unwrap().to_str().unwrap()));
    }
    let mut affected = BTreeSet::new();
    let header_victim = packs[3].file_name().unwrap().to_str().unwrap();
    for d in damaged {
        let files = d["affected_files"].as_array().unwrap();
        if d["pack"] == header_victim {
            // A flip in the header leaves every blob intact: reported, but no file is lost.
            assert!(d["problem"].as_str().unwrap().contains("header"), "{d}");
            assert!(files.is_empty(), "{d}");
            continue;
        }
        assert!(
            !files.is_empty(),
            "damage must name the affected files: {d}"
        );
        for f in files {
            let f = f.as_str().unwrap();
            assert!(f.contains("/file"), "{f}");
            affected.insert(f.rsplit('/').next().unwrap().to_string());
        }
    }
    assert_eq!(
        snapshot_of_repo(&repo),
        before,
        "check must not change the repository"
    );

    // Restore: exit 3 (partial), damaged files listed and absent, all others identical.
    let failed = restore_expecting_failures(&repo, &src, &tmp.path().join("out"));
    assert_eq!(
        failed, affected,
        "restore must report exactly the files check names"
    );
}

#[test]
fn missing_and_truncated_packs_found_without_reading_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (_src, repo) = setup(tmp.path());
    let packs = data_packs(&repo);
    std::fs::remove_file(&packs[0]).unwrap();
    let b = std::fs::read(&packs[1]).unwrap();
    std::fs::write(&packs[1], &b[..10]).unwrap();
    let out = run(cadang(&repo).args(["check", "--json"]), 1);
    let rep = last_json(&out);
    let problems: Vec<String> = rep["damaged_packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["problem"].as_str().unwrap().to_string())
        .collect();
    assert!(
        problems.iter().any(|p| p.contains("missing")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("truncated")),
        "{problems:?}"
    );
    // Prune refuses to touch a damaged repository.
    let out = run(cadang(&repo).args(["prune", "--grace", "0"]), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
}

#[test]
fn corrupted_index_is_reported_and_repaired_from_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = setup(tmp.path());
    for e in std::fs::read_dir(Path::new(&repo).join("index")).unwrap() {
        let p = e.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        b[0] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    let out = run(cadang(&repo).args(["check"]), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("repair index"));
    run(cadang(&repo).args(["repair", "index"]), 0);
    run(cadang(&repo).args(["check", "--read-data"]), 0);
    let target = tmp.path().join("out");
    run(
        cadang(&repo)
            .args(["restore", "latest", "--verify", "--target"])
            .arg(&target),
        0,
    );
    assert_same_tree(&src, &restored_path(&target, &src));
}

/// Every `affected_files` entry of a check report, reduced to the file name.
fn affected_names(rep: &serde_json::Value) -> BTreeSet<String> {
    rep["damaged_packs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["affected_files"].as_array().unwrap().iter())
        .map(|f| f.as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect()
}

/// Restore `latest`, expect a partial restore (exit 3), and return the names
/// of the files it reports as failed; check every other file is identical.
fn restore_expecting_failures(repo: &str, src: &Path, target: &Path) -> BTreeSet<String> {
    let out = run(
        cadang(repo)
            .args(["restore", "latest", "--verify", "--json", "--target"])
            .arg(target),
        3,
    );
    let r = last_json(&out);
    assert_eq!(r["success"], false, "{r}");
    let failed: BTreeSet<String> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["path"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let restored = restored_path(target, src);
    for e in std::fs::read_dir(src).unwrap() {
        let name = e.unwrap().file_name().to_str().unwrap().to_string();
        let got = restored.join(&name);
        if failed.contains(&name) {
            assert!(
                !got.exists(),
                "damaged file {name} must not be put in place"
            );
        } else {
            assert_eq!(
                std::fs::read(&got).unwrap(),
                std::fs::read(src.join(&name)).unwrap(),
                "{name}"
            );
        }
    }
    failed
}

#[test]
fn zeroed_renamed_and_misplaced_packs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = setup(tmp.path());
    let packs = data_packs(&repo);
    assert!(packs.len() >= 4, "need several packs, got {}", packs.len());
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    // Zeroed: same length, every byte 0 (a block device that lost a write).
    let len = std::fs::metadata(&packs[0]).unwrap().len() as usize;
    std::fs::write(&packs[0], vec![0u8; len]).unwrap();
    // Renamed: moved to a well-formed pack name no index knows.
    let mut renamed = name(&packs[1]);
    let last = if renamed.ends_with('0') { "1" } else { "0" };
    renamed.replace_range(renamed.len() - 1.., last);
    let renamed_path = packs[1].with_file_name(&renamed);
    std::fs::rename(&packs[1], &renamed_path).unwrap();
    // Misplaced: another pack's intact bytes written back under this name
    // (an object restored from the wrong place, or replayed under a new name).
    std::fs::copy(&packs[3], &packs[2]).unwrap();
    let before = snapshot_of_repo(&repo);

    // A plain check reads no data: the renamed pack is missing (and its new
    // name an unreferenced object); the zeroed one keeps its size.
    let out = run(cadang(&repo).args(["check", "--json"]), 1);
    let rep = last_json(&out);
    let missing = rep["damaged_packs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["pack"] == name(&packs[1]).as_str())
        .unwrap_or_else(|| panic!("renamed pack not reported: {rep}"));
    assert!(
        missing["problem"].as_str().unwrap().contains("missing"),
        "{missing}"
    );
    assert!(
        !missing["affected_files"].as_array().unwrap().is_empty(),
        "{missing}"
    );
    assert!(
        rep["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(&renamed)),
        "the renamed object is reported as unreferenced: {rep}"
    );

    // Reading the data finds all three, each with the files it costs.
    let out = run(cadang(&repo).args(["check", "--read-data", "--json"]), 1);
    let rep = last_json(&out);
    let damaged: BTreeMap<String, serde_json::Value> = rep["damaged_packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["pack"].as_str().unwrap().to_string(), d.clone()))
        .collect();
    let want: BTreeSet<String> = [&packs[0], &packs[1], &packs[2]]
        .iter()
        .map(|p| name(p))
        .collect();
    assert_eq!(
        damaged.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "{rep}"
    );
    let zeroed = &damaged[&name(&packs[0])]["problem"];
    assert!(
        zeroed.as_str().unwrap().contains("header unreadable"),
        "{zeroed}"
    );
    let misplaced = damaged[&name(&packs[2])]["problem"].as_str().unwrap();
    assert!(
        misplaced.contains("does not match its name") || misplaced.contains("truncated"),
        "{misplaced}"
    );
    for d in damaged.values() {
        assert!(!d["affected_files"].as_array().unwrap().is_empty(), "{d}");
    }
    let affected = affected_names(&rep);
    assert_eq!(
        snapshot_of_repo(&repo),
        before,
        "check must not change the repository"
    );

    let failed = restore_expecting_failures(&repo, &src, &tmp.path().join("out"));
    assert_eq!(
        failed, affected,
        "restore fails exactly the files check names"
    );
}

#[test]
fn swapped_blob_ciphertexts_fail_authentication() {
    use cadang::engine::crypto::KdfParams;
    use cadang::engine::id::BlobId;
    use cadang::engine::{OpenOptions, Repository, Store, StoreOptions};

    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Two small incompressible files of equal length: one chunk each, and
    // sealed blobs of equal length, so their ciphertexts can trade places.
    std::fs::write(src.join("twin_a"), bytes(3000, 1)).unwrap();
    std::fs::write(src.join("twin_b"), bytes(3000, 2)).unwrap();
    std::fs::write(src.join("bystander"), bytes(2 << 20, 3)).unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = repo_path.to_str().unwrap().to_string();
    run(cadang(&repo).arg("init"), 0);
    run(cadang(&repo).args(["backup", "-q"]).arg(&src), 0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(&repo, &StoreOptions::default()).unwrap();
    let opts = OpenOptions {
        kdf: KdfParams::default(),
        host: None,
    };
    let r = Repository::open(rt.handle().clone(), store, PASSWORD.as_bytes(), &opts).unwrap();
    let (snaps, _) = r.load_snapshots().unwrap();
    let (index, _) = r.load_index().unwrap();
    fn find(
        r: &Repository,
        idx: &cadang::engine::index::Index,
        tree: &BlobId,
        name: &[u8],
    ) -> Option<BlobId> {
        for n in r.load_tree(idx, tree).unwrap().nodes {
            if n.name == name {
                return n.content.first().copied();
            }
            if let Some(sub) = n.subtree
                && let Some(c) = find(r, idx, &sub, name)
            {
                return Some(c);
            }
        }
        None
    }
    let root = snaps[0].1.tree;
    let a = find(&r, &index, &root, b"twin_a").unwrap();
    let b = find(&r, &index, &root, b"twin_b").unwrap();
    let (pa, la) = index.get(&a).unwrap();
    let (pb, lb) = index.get(&b).unwrap();
    assert_eq!(
        la.length, lb.length,
        "equal plaintexts seal to equal lengths"
    );
    drop(r);
    let pack_file = |p| repo_path.join(cadang::engine::repo::pack_key(&p));
    let mut bytes_a = std::fs::read(pack_file(pa)).unwrap();
    let range_a = la.offset as usize..(la.offset + la.length) as usize;
    let range_b = lb.offset as usize..(lb.offset + lb.length) as usize;
    if pa == pb {
        let ca = bytes_a[range_a.clone()].to_vec();
        let cb = bytes_a[range_b.clone()].to_vec();
        bytes_a[range_a].copy_from_slice(&cb);
        bytes_a[range_b].copy_from_slice(&ca);
        std::fs::write(pack_file(pa), bytes_a).unwrap();
    } else {
        let mut bytes_b = std::fs::read(pack_file(pb)).unwrap();
        let ca = bytes_a[range_a.clone()].to_vec();
        bytes_a[range_a].copy_from_slice(&bytes_b[range_b.clone()]);
        bytes_b[range_b].copy_from_slice(&ca);
        std::fs::write(pack_file(pa), bytes_a).unwrap();
        std::fs::write(pack_file(pb), bytes_b).unwrap();
    }

    // Each ciphertext is intact on its own, but sealed for another blob id:
    // authentication fails, and exactly the two files are named.
    let out = run(cadang(&repo).args(["check", "--read-data", "--json"]), 1);
    let rep = last_json(&out);
    let want: BTreeSet<String> = ["twin_a", "twin_b"].map(String::from).into();
    assert_eq!(affected_names(&rep), want, "{rep}");
    let failed = restore_expecting_failures(&repo, &src, &tmp.path().join("out"));
    assert_eq!(failed, want);
}

#[test]
fn corrupted_and_replayed_snapshots_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo").to_str().unwrap().to_string();
    run(cadang(&repo).arg("init"), 0);
    let mut dirs = Vec::new();
    let mut ids = Vec::new();
    for (i, name) in ["first", "second", "third"].iter().enumerate() {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{name}.bin")), bytes(3 << 20, 70 + i as u64)).unwrap();
        let out = run(cadang(&repo).args(["backup", "--json"]).arg(&d), 0);
        ids.push(last_json(&out)["snapshot_id"].as_str().unwrap().to_string());
        dirs.push(d);
    }
    let snap_file = |id: &str| Path::new(&repo).join("snapshots").join(id);
    let first_object = std::fs::read(snap_file(&ids[0])).unwrap();
    let old_indexes: Vec<(std::path::PathBuf, Vec<u8>)> =
        std::fs::read_dir(Path::new(&repo).join("index"))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();

    // Forget the first snapshot and prune its data away.
    run(
        cadang(&repo).args(["forget", &ids[0], "--prune", "--grace", "0h"]),
        0,
    );
    run(cadang(&repo).args(["check", "--read-data"]), 0);

    // Replayed: the old index objects come back (a prune's consolidated index
    // supersedes them, so they change nothing) ...
    for (p, b) in &old_indexes {
        std::fs::write(p, b).unwrap();
    }
    run(cadang(&repo).args(["check"]), 0);
    // ... and so does the forgotten snapshot object, whose data is gone: check
    // names that snapshot, and nothing else.
    std::fs::write(snap_file(&ids[0]), &first_object).unwrap();
    let out = run(cadang(&repo).args(["check", "--json"]), 1);
    let rep = last_json(&out);
    let errors: Vec<String> = rep["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert!(!errors.is_empty());
    // Its trees were pruned with its data, so the report stops at the root.
    for e in &errors {
        assert!(e.contains(&format!("snapshot {}", &ids[0][..8])), "{e}");
        assert!(
            e.contains("missing tree blob") || e.contains("not in any pack"),
            "{e}"
        );
    }
    let target = tmp.path().join("replayed");
    let out = run(
        cadang(&repo)
            .args(["restore", &ids[0], "--verify", "--json", "--target"])
            .arg(&target),
        3,
    );
    assert_eq!(last_json(&out)["success"], false);
    run(cadang(&repo).args(["forget", &ids[0]]), 0);
    run(cadang(&repo).args(["check", "--read-data"]), 0);

    // Corrupted: the newest snapshot object damaged. Check names it; the
    // listing shows the others and warns; `latest` is refused rather than
    // quietly meaning the older snapshot; the older one restores by id.
    let mut b = std::fs::read(snap_file(&ids[2])).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(snap_file(&ids[2]), b).unwrap();
    let out = run(cadang(&repo).args(["check", "--json"]), 1);
    let rep = last_json(&out);
    let errors = rep["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{rep}");
    let e = errors[0].as_str().unwrap();
    assert!(
        e.contains(&ids[2][..8]) && e.contains("does not match its name"),
        "{e}"
    );
    let out = run(cadang(&repo).args(["snapshots", "--json"]), 3);
    let listed = last_json(&out);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], ids[1].as_str());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&ids[2][..8]));
    let out = run(
        cadang(&repo)
            .args(["restore", "latest", "--target"])
            .arg(tmp.path().join("latest")),
        1,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&ids[2][..8]) && err.contains("latest"),
        "{err}"
    );
    assert!(!tmp.path().join("latest").exists());
    let target = tmp.path().join("second-restored");
    run(
        cadang(&repo)
            .args(["restore", &ids[1], "--verify", "--target"])
            .arg(&target),
        0,
    );
    assert_same_tree(&dirs[1], &restored_path(&target, &dirs[1]));
}

/// `cadang dump` writes one file of a snapshot, each chunk verified: the exact bytes on
/// standard output or under `--output` (with the recorded mode); with a damaged pack,
/// the files it holds fail with the damage named and leave nothing under the output
/// name, while every other file still dumps intact.
#[test]
fn dump_writes_a_verified_file_or_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = setup(tmp.path());
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::os::unix::fs::symlink("small.txt", src.join("link")).unwrap();
    std::fs::set_permissions(
        src.join("small.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    run(cadang(&repo).args(["backup", "-q"]).arg(&src), 0);
    let at = |name: &str| format!("{}/{name}", src.display());

    let out = run(cadang(&repo).args(["dump", "latest", &at("file03.bin")]), 0);
    assert!(out.stdout == std::fs::read(src.join("file03.bin")).unwrap());
    let target = tmp.path().join("out");
    std::fs::create_dir_all(&target).unwrap();
    let small = target.join("small.txt");
    let out = run(
        cadang(&repo)
            .args(["--json", "dump", "latest", &at("small.txt"), "-o"])
            .arg(&small),
        0,
    );
    assert_eq!(std::fs::read(&small).unwrap(), b"small");
    let mode = std::fs::metadata(&small).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    assert_eq!(last_json(&out)["bytes"], 5);
    for (path, reason) in [
        (at("link"), "not a regular file; `--archive tar`"),
        (at("nothing.txt"), "is not in the snapshot"),
        (at("small.txt/x"), "is not a directory"),
    ] {
        let out = run(cadang(&repo).args(["dump", "latest", &path]), 1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{path}: {stderr}");
        assert!(out.stdout.is_empty(), "{path}");
    }

    // One byte flipped in the middle of one data pack.
    let pack = &data_packs(&repo)[0];
    let mut data = std::fs::read(pack).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x40;
    std::fs::write(pack, &data).unwrap();
    let mut damaged = Vec::new();
    for i in 0..24 {
        let name = format!("file{i:02}.bin");
        let output = target.join(&name);
        let out = cadang(&repo)
            .args(["dump", "latest", &at(&name), "-o"])
            .arg(&output)
            .output()
            .unwrap();
        if out.status.success() {
            assert!(std::fs::read(&output).unwrap() == std::fs::read(src.join(&name)).unwrap());
        } else {
            assert_eq!(out.status.code(), Some(1), "{name}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("corrupt data blob"), "{name}: {stderr}");
            assert!(stderr.contains(&name), "{name}: {stderr}");
            assert!(!output.exists(), "{name}: nothing under the output name");
            damaged.push(name);
        }
    }
    assert_eq!(
        damaged.len(),
        1,
        "exactly the file under the flipped byte: {damaged:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "staged files removed: {left:?}");
    let out = run(cadang(&repo).args(["dump", "latest", &at(&damaged[0])]), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt data blob"));
}
