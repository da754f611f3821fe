//! An interrupted backup's uploaded chunks are indexed and reused: the next
//! backup does not upload them again. Also: prune's two phases keep data a
//! concurrent backup committed, and free space after the grace period.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cadang::engine::backup::{BackupOptions, BackupProgress, backup};
use cadang::engine::check::{CheckOptions, ReadData, check};
use cadang::engine::crypto::KdfParams;
use cadang::engine::prune::{PruneOptions, prune};
use cadang::engine::restore::{RestoreOptions, RestoreProgress, restore};
use cadang::engine::snapshot::Snapshot;
use cadang::engine::{Error, OpenOptions, Repository, Store, StoreOptions};

mod common;
use common::*;

fn open_new(rt: &tokio::runtime::Runtime, path: &std::path::Path) -> Repository {
    let store = Store::open(path.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let opts = OpenOptions {
        kdf: KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        host: None,
    };
    Repository::init(rt.handle().clone(), store, b"pw", &opts).unwrap()
}

#[test]
fn cancelled_backup_is_resumed_without_reupload() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..10 {
        std::fs::write(src.join(format!("f{i}")), bytes(12 << 20, i)).unwrap();
    }
    let repo = open_new(&rt, &tmp.path().join("repo"));
    let cancel = Arc::new(AtomicBool::new(false));
    let packs = Arc::new(AtomicUsize::new(0));
    let (c2, p2) = (cancel.clone(), packs.clone());
    let opts = BackupOptions {
        paths: vec![src.clone()],
        cancel: Some(cancel.clone()),
        threads: Some(2),
        step_hook: Some(Arc::new(move |step: &str| {
            if step == "pack" && p2.fetch_add(1, Ordering::SeqCst) + 1 >= 5 {
                c2.store(true, Ordering::SeqCst);
            }
        })),
        ..Default::default()
    };
    let r = backup(&repo, &opts, &BackupProgress::default());
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(
        repo.load_snapshots().unwrap().0.is_empty(),
        "no snapshot may be committed by a cancelled run"
    );
    let uploaded = packs.load(Ordering::SeqCst);
    assert!(uploaded >= 5);
    // The repository is valid, and the landed packs are indexed (no orphans).
    let rep = check(
        &repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
    )
    .unwrap();
    assert!(rep.is_ok(), "{rep:?}");
    assert!(
        rep.warnings.iter().all(|w| !w.contains("not referenced")),
        "{:?}",
        rep.warnings
    );

    let r2 = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap();
    let total = 120u64 << 20;
    let added = r2.snapshot.summary.data_added;
    assert!(
        added + (uploaded as u64 - 1) * (16 << 20) <= total + (2 << 20),
        "resumed backup added {added} bytes although {uploaded} packs had landed"
    );
    let target = tmp.path().join("out");
    restore_and_compare(&repo, &r2.snapshot_id, &src, &target);
    // Verifying an existing restore target: clean, then one changed byte is named.
    let verify = |t: &std::path::Path| {
        cadang::engine::restore::verify_target(&repo, &r2.snapshot_id, t, &[]).unwrap()
    };
    assert!(verify(&target).mismatches.is_empty());
    let f = restored_path(&target, &src).join("f3");
    let mut b = std::fs::read(&f).unwrap();
    b[12345] ^= 1;
    std::fs::write(&f, b).unwrap();
    let rep = verify(&target);
    assert_eq!(rep.mismatches.len(), 1, "{rep:?}");
    assert!(
        rep.mismatches[0].path.ends_with("f3")
            && rep.mismatches[0].error.contains("content differs")
    );
}

#[test]
fn prune_two_phases_keep_data_of_a_concurrent_backup() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), bytes(5 << 20, 1)).unwrap();
    std::fs::write(src.join("b"), bytes(5 << 20, 2)).unwrap();
    let repo = open_new(&rt, &tmp.path().join("repo"));
    let b1 = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap();
    let snap1: Snapshot = repo.load_snapshot(&b1.snapshot_id).unwrap();

    // Forget the only snapshot, then prune phase 1: packs are marked, not deleted.
    repo.delete_snapshot(&b1.snapshot_id).unwrap();
    let t0 = chrono::Utc::now();
    let r = prune(
        &repo,
        &PruneOptions {
            now: t0,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.packs_marked >= 1);
    assert_eq!(r.packs_deleted, 0);
    let data_before = repo.list_objects("data").unwrap().len();
    assert!(data_before >= 1);

    // A backup that had started before the prune commits a snapshot that
    // reuses those blobs (it loaded the old index).
    let mut late = snap1.clone();
    late.time = t0 + chrono::Duration::minutes(30);
    let late_id = repo.save_snapshot(&late).unwrap();

    // Within the grace period nothing is deleted.
    let r = prune(
        &repo,
        &PruneOptions {
            now: t0 + chrono::Duration::hours(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.packs_deleted, 0);
    // After it, the used packs are put back instead of deleted.
    let r = prune(
        &repo,
        &PruneOptions {
            now: t0 + chrono::Duration::hours(25),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.packs_resurrected >= 1, "{r:?}");
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    let rep = check(
        &repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
    )
    .unwrap();
    assert!(rep.is_ok(), "{rep:?}");
    restore_and_compare(&repo, &late_id, &src, &tmp.path().join("out"));

    // Now really forget everything: after the grace period the space is freed.
    repo.delete_snapshot(&late_id).unwrap();
    prune(
        &repo,
        &PruneOptions {
            now: t0 + chrono::Duration::hours(26),
            ..Default::default()
        },
    )
    .unwrap();
    let r = prune(
        &repo,
        &PruneOptions {
            now: t0 + chrono::Duration::hours(51),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.packs_deleted >= 1, "{r:?}");
    assert_eq!(repo.list_objects("data").unwrap().len(), 0);
    assert!(check(&repo, &CheckOptions::default()).unwrap().is_ok());
}

#[test]
fn prune_refuses_a_repository_with_a_missing_pack() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), bytes(1 << 20, 1)).unwrap();
    let repo = open_new(&rt, &tmp.path().join("repo"));
    backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap();
    let data = repo.list_objects("data").unwrap();
    let key = data.keys().next().unwrap().clone();
    std::fs::remove_file(tmp.path().join("repo").join(&key)).unwrap();
    let before = repo.list_objects("").unwrap().len();
    let r = prune(
        &repo,
        &PruneOptions {
            grace: chrono::Duration::zero(),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(Error::Refused(_))), "{r:?}");
    assert_eq!(
        repo.list_objects("").unwrap().len(),
        before,
        "a refused prune must not delete anything"
    );
}

#[test]
fn prune_repacks_partly_used_packs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("keep"), bytes(3 << 20, 1)).unwrap();
    std::fs::write(src.join("drop"), bytes(3 << 20, 2)).unwrap();
    let repo = open_new(&rt, &tmp.path().join("repo"));
    let b1 = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap();
    std::fs::remove_file(src.join("drop")).unwrap();
    let b2 = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap();
    repo.delete_snapshot(&b1.snapshot_id).unwrap();
    let size = |repo: &Repository| -> u64 {
        repo.list_objects("data")
            .unwrap()
            .values()
            .map(|i| i.size)
            .sum()
    };
    let before = size(&repo);
    let r = prune(
        &repo,
        &PruneOptions {
            grace: chrono::Duration::zero(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.packs_repacked >= 1, "{r:?}");
    assert!(r.packs_deleted >= 1, "{r:?}");
    let after = size(&repo);
    assert!(
        after + (2 << 20) < before,
        "prune freed too little: {before} -> {after}"
    );
    assert_check_clean(&repo);
    restore_and_compare(&repo, &b2.snapshot_id, &src, &tmp.path().join("out"));
}

#[test]
fn copy_between_repositories_with_different_keys() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    edge_case_tree(&src, 0);
    let a = open_new(&rt, &tmp.path().join("a"));
    let b = open_new(&rt, &tmp.path().join("b"));
    let r = backup(
        &a,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap();
    let rep = cadang::engine::copy::copy(&a, &b, &[r.snapshot_id], None).unwrap();
    assert_eq!(rep.copied.len(), 1);
    // Different id keys: no blob id is shared between the two repositories.
    let (ia, _) = a.load_index().unwrap();
    let (ib, _) = b.load_index().unwrap();
    assert!(
        ia.iter().all(|(id, _, _)| !ib.contains(id)),
        "ids leaked across keys"
    );
    let again = cadang::engine::copy::copy(&a, &b, &[r.snapshot_id], None).unwrap();
    assert!(again.copied.is_empty() && again.skipped.len() == 1);
    assert!(
        check(
            &b,
            &CheckOptions {
                read_data: ReadData::All
            }
        )
        .unwrap()
        .is_ok()
    );
    let (snaps, _) = b.load_snapshots().unwrap();
    assert_eq!(snaps[0].1.original, Some(r.snapshot_id));
    let target = tmp.path().join("out");
    let res = restore(
        &b,
        &snaps[0].0,
        &RestoreOptions {
            target: target.clone(),
            verify: true,
            ..Default::default()
        },
        &RestoreProgress::default(),
    )
    .unwrap();
    assert!(res.is_success(), "{res:?}");
    assert_same_tree(&src, &restored_path(&target, &src));
}

/// A pack marked by a repack still holds copies of used blobs; after the grace period the
/// sweep deletes it — the copies in the new pack serve — instead of putting it back, where
/// the next consolidated index would drop it again and leave an orphan for ever.
#[test]
fn a_repacked_pack_is_swept_after_the_grace_period_not_put_back() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("keep"), bytes(3 << 20, 11)).unwrap();
    std::fs::write(src.join("drop"), bytes(3 << 20, 12)).unwrap();
    let repo = open_new(&rt, &tmp.path().join("repo"));
    let run_backup = || {
        backup(
            &repo,
            &BackupOptions {
                paths: vec![src.clone()],
                ..Default::default()
            },
            &BackupProgress::default(),
        )
        .unwrap()
    };
    let first = run_backup();
    std::fs::remove_file(src.join("drop")).unwrap();
    let second = run_backup();
    repo.delete_snapshot(&first.snapshot_id).unwrap();
    let now = chrono::Utc::now();
    let at = |hours: i64| PruneOptions {
        now: now + chrono::Duration::hours(hours),
        ..Default::default()
    };
    let marked = prune(&repo, &at(0)).unwrap();
    assert!(
        marked.packs_repacked >= 1 && marked.packs_deleted == 0,
        "{marked:?}"
    );
    let swept = prune(&repo, &at(25)).unwrap();
    assert_eq!(swept.packs_resurrected, 0, "{swept:?}");
    assert!(swept.packs_deleted >= 1, "{swept:?}");
    assert_check_clean(&repo);
    let again = prune(&repo, &at(50)).unwrap();
    assert_eq!(
        (again.packs_deleted, again.packs_resurrected),
        (0, 0),
        "{again:?}"
    );
    restore_and_compare(&repo, &second.snapshot_id, &src, &tmp.path().join("out"));
}

#[test]
fn prune_sweeps_what_interrupted_writes_left_once_past_the_grace_period() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), bytes(3 << 20, 7)).unwrap();
    let root = tmp.path().join("repo");
    let repo = open_new(&rt, &root);
    let b = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap();

    // What a writer killed between staging an object and linking it into place leaves:
    // `<name>#<n>` beside the final name, which no listing shows. One from two days ago,
    // one that could be a running backup's upload; and a file that is not staged.
    let old = format!("data/ab/{}#7", "ab".repeat(32));
    let young = format!("snapshots/{}#2", "cd".repeat(32));
    let foreign = "data/ab/notes#draft";
    for (key, len) in [
        (&old, 20_000usize),
        (&young, 300),
        (&foreign.to_string(), 10),
    ] {
        std::fs::create_dir_all(root.join(key).parent().unwrap()).unwrap();
        std::fs::write(root.join(key), bytes(len, 1)).unwrap();
    }
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(48 * 3600);
    std::fs::File::options()
        .write(true)
        .open(root.join(&old))
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();

    let rep = check(&repo, &CheckOptions::default()).unwrap();
    assert!(rep.is_ok(), "{rep:?}");
    for key in [&old, &young] {
        assert!(
            rep.warnings
                .iter()
                .any(|w| w.starts_with(key.as_str()) && w.contains("partial upload")),
            "{key} not reported: {:?}",
            rep.warnings
        );
    }
    assert!(
        !rep.warnings
            .iter()
            .any(|w| w.contains("notes#draft") && w.contains("partial upload"))
    );

    let now = chrono::Utc::now();
    let dry = prune(
        &repo,
        &PruneOptions {
            now,
            dry_run: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(dry.partial_uploads_deleted, 1);
    assert!(root.join(&old).exists(), "a dry run deletes nothing");

    let r = prune(
        &repo,
        &PruneOptions {
            now,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.partial_uploads_deleted, 1);
    assert!(r.bytes_deleted >= 20_000);
    assert!(!root.join(&old).exists());
    assert!(
        root.join(&young).exists(),
        "within the grace period it may be a running upload"
    );
    assert!(
        root.join(foreign).exists(),
        "not a staged name: not prune's"
    );

    let later = prune(
        &repo,
        &PruneOptions {
            now: now + chrono::Duration::hours(25),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(later.partial_uploads_deleted, 1);
    assert!(!root.join(&young).exists());
    let rep = check(&repo, &CheckOptions::default()).unwrap();
    assert!(
        rep.is_ok() && !rep.warnings.iter().any(|w| w.contains("partial upload")),
        "{rep:?}"
    );
    restore_verified(&repo, &b.snapshot_id, &tmp.path().join("restored"));
}
