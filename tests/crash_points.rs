//! Crash-point enumeration of the commit protocols (backup, prune, copy, rewrite):
//! the storage refuses every write after the k-th, for every k a clean run
//! performs — exactly the state a crash right after that durable step
//! leaves. After each: check passes (unreferenced leftovers allowed), the
//! next run of the same operation succeeds, and every committed snapshot
//! restores identically.

mod common;
#[path = "common/faulty.rs"]
mod faulty;

use std::path::Path;
use std::sync::atomic::Ordering;

use cadang::engine::Repository;
use cadang::engine::backup::{BackupOptions, BackupProgress, backup};
use cadang::engine::check::{CheckOptions, ReadData, check};
use cadang::engine::copy::copy;
use cadang::engine::prune::{PruneOptions, prune};
use cadang::engine::rewrite::{RewriteOptions, rewrite};
use common::*;
use faulty::faulty_repo;

fn source(dir: &Path, version: u64) -> std::path::PathBuf {
    let src = dir.join(format!("src{version}"));
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("f{i}")), bytes(7 << 20, version * 10 + i)).unwrap();
    }
    std::fs::write(src.join("sub/small"), format!("v{version}")).unwrap();
    src
}

fn bk(
    repo: &Repository,
    src: &Path,
) -> cadang::engine::Result<cadang::engine::backup::BackupResult> {
    backup(
        repo,
        &BackupOptions {
            paths: vec![src.to_path_buf()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
}

/// Check clean, and every snapshot restores to the source it came from.
fn verify(repo: &Repository, tmp: &Path, sources: &[std::path::PathBuf]) {
    let rep = check(
        repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
    )
    .unwrap();
    assert!(rep.is_ok(), "{rep:?}");
    let (snaps, bad) = repo.load_snapshots().unwrap();
    assert!(bad.is_empty());
    for (id, s) in snaps {
        let src = sources
            .iter()
            .find(|p| s.paths[0] == p.display().to_string())
            .unwrap();
        let target = tmp.join(format!("r-{}", id.short()));
        restore_and_compare(repo, &id, src, &target);
        std::fs::remove_dir_all(&target).unwrap();
    }
}

#[test]
fn backup_crash_points() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 1);
    let (f, r) = faulty_repo(&rt, &tmp.path().join("count"));
    let before = f.writes.load(Ordering::Relaxed);
    bk(&r, &src).unwrap();
    let steps = f.writes.load(Ordering::Relaxed) - before;
    assert!(
        steps >= 4,
        "a backup should take several durable steps, took {steps}"
    );
    for k in 0..steps {
        let dir = tmp.path().join(format!("b{k}"));
        let (f, r) = faulty_repo(&rt, &dir);
        f.crash_after_writes(k);
        assert!(
            bk(&r, &src).is_err(),
            "crash point {k}: the run should have failed"
        );
        f.clear();
        assert!(
            check(&r, &CheckOptions::default()).unwrap().is_ok(),
            "crash point {k}"
        );
        bk(&r, &src).unwrap();
        verify(&r, &dir, std::slice::from_ref(&src));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn prune_crash_points() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s1 = source(tmp.path(), 1);
    let s2 = source(tmp.path(), 2);
    let setup = |dir: &Path| {
        let (f, r) = faulty_repo(&rt, dir);
        let b1 = bk(&r, &s1).unwrap();
        bk(&r, &s2).unwrap();
        r.delete_snapshot(&b1.snapshot_id).unwrap();
        (f, r)
    };
    let opts = PruneOptions {
        grace: chrono::Duration::zero(),
        ..Default::default()
    };
    let (f, r) = setup(&tmp.path().join("count"));
    let before = f.writes.load(Ordering::Relaxed);
    let rep = prune(&r, &opts).unwrap();
    assert!(rep.packs_deleted >= 1);
    let steps = f.writes.load(Ordering::Relaxed) - before;
    for k in 0..steps {
        let dir = tmp.path().join(format!("p{k}"));
        let (f, r) = setup(&dir);
        f.crash_after_writes(k);
        let _ = prune(&r, &opts);
        f.clear();
        // A crashed prune may leave its lease behind; it expires by itself,
        // and `unlock` removes it at once.
        cadang::engine::lock::unlock(&r, true).unwrap();
        verify(&r, &dir, std::slice::from_ref(&s2));
        prune(&r, &opts).unwrap();
        verify(&r, &dir, std::slice::from_ref(&s2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn copy_crash_points() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 1);
    let (_, a) = faulty_repo(&rt, &tmp.path().join("a"));
    let b1 = bk(&a, &src).unwrap();
    let (f, b) = faulty_repo(&rt, &tmp.path().join("count"));
    let before = f.writes.load(Ordering::Relaxed);
    copy(&a, &b, &[b1.snapshot_id], None).unwrap();
    let steps = f.writes.load(Ordering::Relaxed) - before;
    assert!(steps >= 3);
    for k in 0..steps {
        let dir = tmp.path().join(format!("c{k}"));
        let (f, b) = faulty_repo(&rt, &dir);
        f.crash_after_writes(k);
        assert!(
            copy(&a, &b, &[b1.snapshot_id], None).is_err(),
            "crash point {k}"
        );
        f.clear();
        assert!(
            b.load_snapshots().unwrap().0.is_empty(),
            "no snapshot may appear before its data"
        );
        assert!(check(&b, &CheckOptions::default()).unwrap().is_ok());
        copy(&a, &b, &[b1.snapshot_id], None).unwrap();
        verify(&b, &dir, std::slice::from_ref(&src));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A rewrite stopped after any durable step (tree pack, index, the new snapshot, the
/// original's deletion) leaves every visible snapshot whole: the original stays until its
/// replacement is stored, and the next rewrite finishes the job.
#[test]
fn rewrite_crash_points() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 1);
    let setup = |dir: &Path| {
        let (f, r) = faulty_repo(&rt, dir);
        bk(&r, &src).unwrap();
        (f, r)
    };
    let opts = RewriteOptions {
        excludes: vec!["small".into()],
        forget: true,
        ..Default::default()
    };
    let rewrite_all = |r: &Repository| rewrite(r, r.load_snapshots().unwrap().0, &opts);
    let (f, r) = setup(&tmp.path().join("count"));
    let before = f.writes.load(Ordering::Relaxed);
    assert_eq!(rewrite_all(&r).unwrap().rewritten.len(), 1);
    let steps = f.writes.load(Ordering::Relaxed) - before;
    assert!(steps >= 4, "pack, index, snapshot, deletion: {steps}");
    for k in 0..steps {
        let dir = tmp.path().join(format!("w{k}"));
        let (f, r) = setup(&dir);
        f.crash_after_writes(k);
        assert!(rewrite_all(&r).is_err(), "crash point {k}");
        f.clear();
        assert!(
            check(&r, &CheckOptions::default()).unwrap().is_ok(),
            "crash point {k}"
        );
        let (snaps, bad) = r.load_snapshots().unwrap();
        assert!(bad.is_empty());
        assert!(
            snaps.iter().any(|(_, s)| s.rewritten_from.is_none()),
            "crash point {k}: the original is kept until the rewrite completes"
        );
        rewrite_all(&r).unwrap();
        let (snaps, _) = r.load_snapshots().unwrap();
        assert!(
            snaps.iter().all(|(_, s)| s.rewritten_from.is_some()),
            "crash point {k}"
        );
        for (id, _) in &snaps {
            let target = dir.join(format!("r-{}", id.short()));
            restore_verified(&r, id, &target);
            let restored = restored_path(&target, &src);
            for i in 0..3 {
                let name = format!("f{i}");
                assert!(
                    std::fs::read(restored.join(&name)).unwrap()
                        == std::fs::read(src.join(&name)).unwrap()
                );
            }
            assert!(restored.join("sub").is_dir() && !restored.join("sub/small").exists());
        }
        assert!(rewrite_all(&r).unwrap().rewritten.is_empty());
        assert!(check(&r, &CheckOptions::default()).unwrap().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
