//! Replicas: a repository made with `init_from` and filled by `copy` stands
//! in for the primary during a restore. Damage in the primary (flipped bytes,
//! a lost pack, a damaged tree or snapshot object) is read around from the
//! replica, every file comes back identical and the repairs are listed; the
//! primary is never written. Damage in both is reported, not hidden. An
//! interrupted copy resumes without sending again what it had stored.

mod common;
#[path = "common/faulty.rs"]
mod faulty;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cadang::engine::Repository;
use cadang::engine::backup::{BackupOptions, BackupProgress, backup};
use cadang::engine::copy::{CopyOptions, copy, copy_with};
use cadang::engine::id::{BlobType, PackId, SnapshotId};
use cadang::engine::repo::pack_key;
use cadang::engine::restore::{Replica, RestoreOptions, RestoreProgress, RestoreResult, restore};
use common::*;
use faulty::{FaultyStore, faulty_repo};

fn cheap() -> cadang::engine::OpenOptions {
    cadang::engine::OpenOptions {
        kdf: cadang::engine::crypto::KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        host: None,
    }
}

/// `files` incompressible 5 MiB files (several 16 MiB packs), a few small
/// ones in a subdirectory.
fn source(dir: &Path, files: u64) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for i in 0..files {
        std::fs::write(src.join(format!("f{i:02}.bin")), bytes(5 << 20, 500 + i)).unwrap();
    }
    for i in 0..20 {
        std::fs::write(src.join(format!("sub/s{i}.txt")), format!("small {i}\n")).unwrap();
    }
    std::fs::write(src.join("sub/deeper/leaf"), b"leaf").unwrap();
    src
}

fn backup_of(repo: &Repository, src: &Path) -> SnapshotId {
    backup(
        repo,
        &BackupOptions {
            paths: vec![src.to_path_buf()],
            ..Default::default()
        },
        &BackupProgress::default(),
    )
    .unwrap()
    .snapshot_id
}

/// A replica of `primary` in `dir`, behind a fault-injecting store.
fn replica_of(
    rt: &tokio::runtime::Runtime,
    primary: &Repository,
    dir: &Path,
) -> (Arc<FaultyStore>, Repository) {
    std::fs::create_dir_all(dir).unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap();
    let faulty = Arc::new(FaultyStore::new(Arc::new(local)));
    let store = cadang::engine::Store::from_object_store(faulty.clone(), "faulty://replica");
    let repo = Repository::init_from(rt.handle().clone(), store, b"replica pw", &cheap(), primary)
        .unwrap();
    (faulty, repo)
}

/// Every object of a repository directory with its bytes.
fn objects(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

/// Packs of `repo` holding blobs of type `ty`.
fn packs_of(repo: &Repository, ty: BlobType) -> Vec<PackId> {
    let (index, _) = repo.load_index().unwrap();
    let set: BTreeSet<PackId> = index
        .iter()
        .filter(|(_, _, l)| l.ty == ty)
        .map(|(_, p, _)| p)
        .collect();
    set.into_iter().collect()
}

fn flip(path: &Path, at: impl Fn(usize) -> usize) {
    let mut b = std::fs::read(path).unwrap();
    let pos = at(b.len());
    b[pos] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

fn restore_into(
    repo: &Repository,
    id: &SnapshotId,
    target: &Path,
    replica: Option<Arc<Replica>>,
) -> RestoreResult {
    restore(
        repo,
        id,
        &RestoreOptions {
            target: target.to_path_buf(),
            verify: true,
            replica,
            ..Default::default()
        },
        &RestoreProgress::default(),
    )
    .unwrap()
}

#[test]
fn a_damaged_primary_restores_whole_from_its_replica() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 10);
    let primary_dir = tmp.path().join("primary");
    let (_, primary) = faulty_repo(&rt, &primary_dir);
    let id = backup_of(&primary, &src);
    let (_, replica_repo) = replica_of(&rt, &primary, &tmp.path().join("replica"));
    let copied = copy(&primary, &replica_repo, &[id], None).unwrap();
    assert_eq!(copied.copied.len(), 1);

    // Damage the primary: bytes flipped in two data packs and in the tree
    // pack, one data pack lost.
    let data = packs_of(&primary, BlobType::Data);
    let trees = packs_of(&primary, BlobType::Tree);
    assert!(
        data.len() >= 3,
        "need several data packs, got {}",
        data.len()
    );
    let path = |p: &PackId| primary_dir.join(pack_key(p));
    flip(&path(&data[0]), |_| 100);
    flip(&path(&data[1]), |n| n / 2);
    std::fs::remove_file(path(&data[2])).unwrap();
    for t in &trees {
        flip(&path(t), |_| 60);
    }
    let before = objects(&primary_dir);

    // Without the replica: files fail and are named.
    let alone = restore_into(&primary, &id, &tmp.path().join("alone"), None);
    assert!(!alone.is_success());
    assert!(!alone.errors.is_empty());
    assert!(!alone.damaged_blobs.is_empty());
    assert!(alone.repaired.is_empty());

    // With it: everything identical to the source, the repairs listed.
    let replica = Arc::new(Replica::open(replica_repo).unwrap());
    let target = tmp.path().join("with");
    let res = restore_into(&primary, &id, &target, Some(replica.clone()));
    assert!(res.is_success(), "{res:?}");
    assert!(res.damaged_blobs.is_empty(), "{:?}", res.damaged_blobs);
    assert!(res.verify.as_ref().unwrap().mismatches.is_empty());
    assert_same_tree(&src, &restored_path(&target, &src));
    assert!(
        res.repaired.iter().any(|r| r.starts_with("tree blob")),
        "{:?}",
        res.repaired
    );
    assert!(
        res.repaired
            .iter()
            .any(|r| r.contains(&format!("pack {}", data[2].short()))),
        "the lost pack is named: {:?}",
        res.repaired
    );
    assert!(
        res.repaired
            .iter()
            .all(|r| r.contains("damaged in the primary, read from the replica"))
    );
    assert_eq!(
        before,
        objects(&primary_dir),
        "the primary is never written"
    );

    // The snapshot object itself damaged: the replica's copy stands in.
    let snap = primary_dir.join(format!("snapshots/{}", id.to_hex()));
    flip(&snap, |n| n - 5);
    let target = tmp.path().join("snap");
    let res = restore_into(&primary, &id, &target, Some(replica.clone()));
    assert!(res.is_success(), "{res:?}");
    assert!(
        res.repaired[0].starts_with("snapshot"),
        "{:?}",
        res.repaired
    );
    assert_same_tree(&src, &restored_path(&target, &src));
    flip(&snap, |n| n - 5);

    // Damage in both: reported, not a success. Every data blob of the replica is
    // garbled (a byte in every 512), so those lost in the primary are lost in both
    // whatever the two copies' pack layouts.
    let replica_dir = tmp.path().join("replica");
    for p in packs_of(&replica.repo, BlobType::Data) {
        let path = replica_dir.join(pack_key(&p));
        let mut bytes = std::fs::read(&path).unwrap();
        for byte in bytes.iter_mut().step_by(512) {
            *byte ^= 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
    }
    let both = restore_into(&primary, &id, &tmp.path().join("both"), Some(replica));
    assert!(!both.is_success());
    assert!(!both.errors.is_empty());
    assert!(
        both.damaged_blobs
            .iter()
            .any(|d| d.contains("the replica cannot supply it either")),
        "{:?}",
        both.damaged_blobs
    );
}

#[test]
fn a_replica_with_other_keys_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    let (_, primary) = faulty_repo(&rt, &tmp.path().join("primary"));
    let id = backup_of(&primary, &src);
    let (_, other) = faulty_repo(&rt, &tmp.path().join("other"));
    let replica = Arc::new(Replica::open(other).unwrap());
    let res = restore(
        &primary,
        &id,
        &RestoreOptions {
            target: tmp.path().join("t"),
            replica: Some(replica),
            ..Default::default()
        },
        &RestoreProgress::default(),
    );
    assert!(res.is_err());
}

#[test]
fn an_interrupted_copy_resumes_without_sending_again() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 20);
    let (_, primary) = faulty_repo(&rt, &tmp.path().join("primary"));
    let id = backup_of(&primary, &src);

    let (_, full) = replica_of(&rt, &primary, &tmp.path().join("full"));
    let whole = copy(&primary, &full, &[id], None).unwrap();

    // The process "dies" right after the first index object landed: every
    // later write fails.
    let (faulty, replica) = replica_of(&rt, &primary, &tmp.path().join("replica"));
    let indexes = Arc::new(AtomicU64::new(0));
    let hook: cadang::engine::packer::StepHook = {
        let faulty = faulty.clone();
        let indexes = indexes.clone();
        Arc::new(move |step: &str| {
            if step == "index" && indexes.fetch_add(1, Ordering::SeqCst) == 0 {
                faulty.crash_after_writes(0);
            }
        })
    };
    assert!(copy(&primary, &replica, &[id], Some(hook)).is_err());
    faulty.clear();
    assert!(
        replica.load_snapshots().unwrap().0.is_empty(),
        "no snapshot before its data"
    );
    let (partial_index, _) = replica.load_index().unwrap();
    assert!(!partial_index.is_empty(), "the first packs were indexed");

    let resumed = copy(&primary, &replica, &[id], None).unwrap();
    assert_eq!(resumed.copied.len(), 1);
    assert!(
        resumed.blobs_copied < whole.blobs_copied,
        "resumed {} vs whole {}",
        resumed.blobs_copied,
        whole.blobs_copied
    );
    assert!(
        resumed.blobs_copied + partial_index.len() as u64 >= whole.blobs_copied,
        "nothing is left out"
    );
    assert_check_clean_allowing_leftovers(&replica);
    let (snaps, _) = replica.load_snapshots().unwrap();
    restore_and_compare(&replica, &snaps[0].0, &src, &tmp.path().join("r"));
}

#[test]
fn a_cancelled_copy_stops_indexes_what_landed_and_resumes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 20);
    let (_, primary) = faulty_repo(&rt, &tmp.path().join("primary"));
    let id = backup_of(&primary, &src);
    let (_, full) = replica_of(&rt, &primary, &tmp.path().join("full"));
    let whole = copy(&primary, &full, &[id], None).unwrap();

    // The operator cancels once the first pack has landed.
    let (_, replica) = replica_of(&rt, &primary, &tmp.path().join("replica"));
    let cancel = Arc::new(AtomicBool::new(false));
    let hook: cadang::engine::packer::StepHook = {
        let cancel = cancel.clone();
        Arc::new(move |step: &str| {
            if step == "pack" {
                cancel.store(true, Ordering::SeqCst);
            }
        })
    };
    let stopped = copy_with(
        &primary,
        &replica,
        &[id],
        &CopyOptions {
            hook: Some(hook),
            cancel: Some(cancel),
        },
    );
    assert!(
        matches!(stopped, Err(cadang::engine::Error::Cancelled)),
        "{stopped:?}"
    );
    assert!(replica.load_snapshots().unwrap().0.is_empty());
    let (partial_index, _) = replica.load_index().unwrap();
    assert!(
        !partial_index.is_empty(),
        "what landed before the cancel is indexed"
    );

    let resumed = copy(&primary, &replica, &[id], None).unwrap();
    assert_eq!(resumed.copied.len(), 1);
    assert!(
        resumed.blobs_copied < whole.blobs_copied,
        "resumed {} vs whole {}",
        resumed.blobs_copied,
        whole.blobs_copied
    );
    assert_check_clean_allowing_leftovers(&replica);
    let (snaps, _) = replica.load_snapshots().unwrap();
    restore_and_compare(&replica, &snaps[0].0, &src, &tmp.path().join("r"));
}

/// `check --read-data` finds no error (packs left unindexed by the
/// interruption are warnings: garbage for prune).
fn assert_check_clean_allowing_leftovers(repo: &Repository) {
    use cadang::engine::check::{CheckOptions, ReadData, check};
    let rep = check(
        repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
    )
    .unwrap();
    assert!(rep.is_ok(), "{rep:?}");
}
