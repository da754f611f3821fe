//! Storage faults: transient errors are retried, a lost write response is
//! resolved by verifying the object, one-off garbled reads are not reported
//! as damage while persistent ones always are, and a permanent failure gives
//! a clear error and leaves the repository valid.

mod common;
#[path = "common/faulty.rs"]
mod faulty;

use cadang::engine::backup::{BackupOptions, BackupProgress, backup};
use cadang::engine::check::{CheckOptions, ReadData, check};
use cadang::engine::restore::{RestoreOptions, RestoreProgress, restore};
use common::*;
use faulty::{Fault, Op, faulty_repo};

fn source(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        std::fs::write(src.join(format!("f{i}")), bytes(5 << 20, 50 + i)).unwrap();
    }
    src
}

#[test]
fn transient_errors_and_lost_responses_are_absorbed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path());
    let (faulty, repo) = faulty_repo(&rt, &tmp.path().join("repo"));
    faulty.add(Op::Put, "data/", Fault::Transient, Some(3));
    faulty.add(Op::Put, "data/", Fault::LostResponse, Some(2));
    faulty.add(Op::Put, "index/", Fault::LostResponse, Some(1));
    faulty.add(Op::Put, "snapshots/", Fault::LostResponse, Some(1));
    faulty.add(Op::List, "snapshots", Fault::Transient, Some(1));
    let r = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap();
    assert!(faulty.injected.load(std::sync::atomic::Ordering::Relaxed) >= 7);
    faulty.clear();
    assert_eq!(
        repo.load_snapshots().unwrap().0.len(),
        1,
        "exactly one snapshot, no double commit"
    );
    assert_check_clean(&repo);
    restore_and_compare(&repo, &r.snapshot_id, &src, &tmp.path().join("out"));
}

#[test]
fn one_off_garbled_reads_are_not_damage_persistent_ones_are() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path());
    let (faulty, repo) = faulty_repo(&rt, &tmp.path().join("repo"));
    let r = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap();

    // One pack garbled once, another truncated once: check re-reads them
    // and reports no damage (a transient note only).
    let packs: Vec<String> = repo.list_objects("data").unwrap().into_keys().collect();
    assert!(packs.len() >= 2);
    faulty.add(Op::Get, &packs[0], Fault::Garble, Some(1));
    faulty.add(Op::Get, &packs[1], Fault::Truncate, Some(1));
    let rep = check(
        &repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
    )
    .unwrap();
    assert!(
        rep.is_ok(),
        "transient read errors reported as damage: {rep:?}"
    );
    assert!(
        rep.warnings.iter().any(|w| w.contains("transient")),
        "{:?}",
        rep.warnings
    );
    // Restore through one-off garbled reads succeeds and verifies.
    faulty.add(Op::Get, &packs[0], Fault::Garble, Some(1));
    faulty.add(Op::Get, &packs[1], Fault::Garble, Some(1));
    restore_and_compare(&repo, &r.snapshot_id, &src, &tmp.path().join("out"));

    // Always garbled: damage, every time, naming files.
    faulty.clear();
    let packs = repo.list_objects("data").unwrap();
    let victim = packs
        .keys()
        .find(|k| packs[*k].size > 4 << 20)
        .unwrap()
        .clone();
    faulty.add(Op::Get, &victim, Fault::Garble, None);
    let rep = check(
        &repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
    )
    .unwrap();
    assert_eq!(rep.damaged_packs.len(), 1, "{rep:?}");
    assert!(!rep.damaged_packs[0].affected_files.is_empty());
    let t2 = tmp.path().join("out2");
    let res = restore(
        &repo,
        &r.snapshot_id,
        &RestoreOptions {
            target: t2,
            verify: true,
            ..Default::default()
        },
        &RestoreProgress::default(),
    )
    .unwrap();
    assert!(!res.is_success());
    assert!(!res.errors.is_empty());
}

#[test]
fn permanent_write_failure_is_clear_and_harmless() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path());
    let (faulty, repo) = faulty_repo(&rt, &tmp.path().join("repo"));
    faulty.add(Op::Put, "data/", Fault::Permanent, None);
    let err = backup(
        &repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("injected permanent failure"),
        "{err}"
    );
    assert_eq!(
        err.to_string().matches("storage error on").count(),
        1,
        "the cause is said once: {err}"
    );
    faulty.clear();
    assert!(repo.load_snapshots().unwrap().0.is_empty());
    assert!(check(&repo, &CheckOptions::default()).unwrap().is_ok());
    // And the next backup succeeds.
    backup(
        &repo,
        &BackupOptions {
            paths: vec![src],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap();
    assert!(
        check(
            &repo,
            &CheckOptions {
                read_data: ReadData::All
            }
        )
        .unwrap()
        .is_ok()
    );
}

/// Listings that lag behind writes and deletes (an eventually consistent S3-compatible
/// store): a backup made while its packs, index and snapshot are not yet listed, a
/// forgotten snapshot still listed, and a prune in the middle of it all. Nothing the
/// unlisted snapshot needs may be lost, neither by that prune nor by the sweep after
/// the grace period.
#[test]
fn listings_that_lag_behind_writes_and_deletes_never_lose_data() {
    use cadang::engine::prune::{PruneOptions, prune};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        std::fs::write(src.join(format!("f{i}")), bytes(1 << 20, 70 + i)).unwrap();
    }
    let (faulty, repo) = faulty_repo(&rt, &tmp.path().join("repo"));
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

    faulty.lag_lists();
    // One file changed, one added, two kept: the second backup shares the first's packs.
    std::fs::write(src.join("f0"), bytes(1 << 20, 90)).unwrap();
    std::fs::write(src.join("f9"), bytes(1 << 20, 91)).unwrap();
    let second = run_backup();
    // Not listed yet, but named: it restores at once (reads by key are exact), its
    // index objects read by the names the snapshot records.
    assert!(
        repo.list_snapshot_ids()
            .unwrap()
            .iter()
            .all(|(id, _)| *id != second.snapshot_id)
    );
    restore_and_compare(&repo, &second.snapshot_id, &src, &tmp.path().join("out0"));
    // Forget the first: its snapshot object is gone but still listed.
    repo.delete_snapshot(&first.snapshot_id).unwrap();
    let (listed, bad) = repo.load_snapshots().unwrap();
    assert!(
        listed.is_empty() && bad.is_empty(),
        "a deleted snapshot still listed is gone, not damage; the new one is not listed yet: {listed:?} {bad:?}"
    );
    // Prune sees no snapshot at all: it may mark, but must not delete.
    let now = chrono::Utc::now();
    let marked = prune(
        &repo,
        &PruneOptions {
            now,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(marked.packs_deleted, 0, "{marked:?}");

    // The listings catch up: the second snapshot restores byte for byte, check is clean.
    faulty.settle_lists();
    assert_eq!(repo.load_snapshots().unwrap().0.len(), 1);
    restore_and_compare(&repo, &second.snapshot_id, &src, &tmp.path().join("out1"));
    let report = check(
        &repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
    )
    .unwrap();
    assert!(report.is_ok(), "{report:?}");

    // After the grace period the sweep deletes only what no snapshot uses: the first
    // backup's copy of the old f0 goes, everything of the second stays.
    let swept = prune(
        &repo,
        &PruneOptions {
            now: now + chrono::Duration::hours(25),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(swept.packs_resurrected > 0, "{swept:?}");
    restore_and_compare(&repo, &second.snapshot_id, &src, &tmp.path().join("out2"));
    assert_check_clean(&repo);
}

/// Deletes that fail transiently or lose their response are retried and resolved; a
/// delete refused for good stops prune with a clear error, leaves the repository valid,
/// and the next prune finishes the job. Metadata reads fail transiently too.
#[test]
fn failed_deletes_leave_prune_resumable_and_the_repository_valid() {
    use cadang::engine::prune::{PruneOptions, prune};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let (faulty, repo) = faulty_repo(&rt, &tmp.path().join("repo"));
    let mut snapshots = Vec::new();
    for round in 0..3u64 {
        std::fs::write(src.join("changing"), bytes(2 << 20, 200 + round)).unwrap();
        std::fs::write(src.join("kept"), bytes(1 << 20, 7)).unwrap();
        snapshots.push(
            backup(
                &repo,
                &BackupOptions {
                    paths: vec![src.clone()],
                    ..Default::default()
                },
                &BackupProgress::default(),
            )
            .unwrap()
            .snapshot_id,
        );
    }
    let no_grace = || PruneOptions {
        grace: chrono::Duration::zero(),
        ..Default::default()
    };

    // Transient delete errors, a lost delete response and flaky metadata reads.
    repo.delete_snapshot(&snapshots[0]).unwrap();
    faulty.add(Op::Delete, "data/", Fault::Transient, Some(2));
    faulty.add(Op::Delete, "data/", Fault::LostResponse, Some(1));
    faulty.add(Op::Delete, "index/", Fault::Transient, Some(1));
    faulty.add(Op::Head, "", Fault::Transient, Some(2));
    // And a slow store: every put, read and delete waits 20 ms.
    faulty.set_latency(std::time::Duration::from_millis(20));
    let report = prune(&repo, &no_grace()).unwrap();
    assert!(report.packs_deleted > 0, "{report:?}");
    assert!(faulty.injected.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    faulty.clear();
    faulty.set_latency(std::time::Duration::ZERO);
    assert_check_clean(&repo);

    // A delete refused for good: a clear error, nothing the remaining snapshots need is
    // gone, and the next prune completes.
    repo.delete_snapshot(&snapshots[1]).unwrap();
    faulty.add(Op::Delete, "data/", Fault::Permanent, None);
    let err = prune(&repo, &no_grace()).unwrap_err();
    assert!(
        err.to_string().contains("injected permanent failure"),
        "{err}"
    );
    faulty.clear();
    let report = check(
        &repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
    )
    .unwrap();
    assert!(report.is_ok(), "{report:?}");
    restore_and_compare(&repo, &snapshots[2], &src, &tmp.path().join("out1"));
    let finished = prune(&repo, &no_grace()).unwrap();
    assert!(finished.packs_deleted > 0, "{finished:?}");
    assert_check_clean(&repo);
    restore_and_compare(&repo, &snapshots[2], &src, &tmp.path().join("out2"));
}
