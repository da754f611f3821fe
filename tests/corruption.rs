//! Damage detection: flipped bytes in packs are all found by
//! `check --read-data`, which names the affected files; restore still
//! restores every undamaged file and lists the damaged ones. Missing and
//! truncated packs are found without reading data. Check changes nothing.

mod common;
use common::*;

use std::collections::BTreeSet;
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
    let target = tmp.path().join("out");
    let out = run(
        cadang(&repo)
            .args(["restore", "latest", "--verify", "--json", "--target"])
            .arg(&target),
        3,
    );
    let r = last_json(&out);
    assert_eq!(r["success"], false);
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
    assert_eq!(
        failed, affected,
        "restore must report exactly the files check names"
    );
    let restored = restored_path(&target, &src);
    for e in std::fs::read_dir(&src).unwrap() {
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
