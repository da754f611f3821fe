//! What snapshots hold and what they cost: `cadang stats`.
//!
//! One pass answers the questions restic's `stats` modes answer one at a time:
//!
//! - **restore size**: what restoring each chosen snapshot would write — its files, with
//!   every hard-linked file counted once per snapshot as the restore writes it once;
//! - **unique data**: the distinct chunks and trees the chosen snapshots reference, by
//!   their plaintext size and by what they take in the packs (compressed, encrypted), so
//!   the ratio of the first to the second is what deduplication saved and the ratio of the
//!   second to the third what compression saved;
//! - **the repository**: the packs in storage, the blobs the index lists and, when every
//!   snapshot is chosen, the indexed blobs no snapshot references (what prune would
//!   collect), and the packs a prune has marked for deletion.
//!
//! Trees are read once: a directory met again (in another snapshot, or unchanged in a later
//! one) reuses the sizes counted the first time, unless it holds hard links, whose sharing
//! depends on the rest of its snapshot. The sets of distinct chunks and trees, and the
//! sizes kept per directory, are keyed by 8-byte id prefixes, as prune's set is, so memory
//! stays at 8 bytes per chunk and 48 per directory; a collision of two prefixes (odds of
//! about one in thirty million for a repository of a million directories) would only
//! miscount.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::archive::in_path;
use super::browse::join;
use super::error::{Error, Result};
use super::id::{BlobId, BlobType, SnapshotId};
use super::index::Index;
use super::repo::Repository;
use super::snapshot::Snapshot;
use super::tree::{MAX_DEPTH, NodeKind, too_deep};

/// A number of blobs and their sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlobTotals {
    /// How many.
    pub count: u64,
    /// Their plaintext bytes.
    pub raw_bytes: u64,
    /// Their bytes in packs: compressed, encrypted, with the envelope's overhead.
    pub stored_bytes: u64,
}

impl BlobTotals {
    fn add(&mut self, raw: u32, stored: u32) {
        self.count += 1;
        self.raw_bytes += u64::from(raw);
        self.stored_bytes += u64::from(stored);
    }
}

/// What restoring the chosen snapshots would write (each snapshot in full).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RestoreSize {
    /// Regular files; the paths of a hard-linked file count once.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Directories below the snapshots' roots.
    pub dirs: u64,
    /// Symbolic links, devices, FIFOs and sockets.
    pub other: u64,
    /// Further paths of hard-linked files (restored as links, no bytes of their own).
    pub hardlinks: u64,
}

impl RestoreSize {
    fn add(&mut self, other: &Self) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.dirs += other.dirs;
        self.other += other.other;
        self.hardlinks += other.hardlinks;
    }
}

/// The repository as a whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RepositoryTotals {
    /// Pack objects in storage (indexed or not).
    pub packs: u64,
    /// Their bytes in storage.
    pub pack_bytes: u64,
    /// Content chunks the index lists.
    pub data: BlobTotals,
    /// Trees the index lists.
    pub trees: BlobTotals,
    /// Indexed blobs that no snapshot references: what a prune would collect. Only known
    /// when every snapshot was chosen and every snapshot could be read.
    pub unreferenced: Option<BlobTotals>,
    /// Packs a prune has marked for deletion and not yet deleted.
    pub packs_marked: u64,
}

/// The answer of [`stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Snapshots counted.
    pub snapshots: u64,
    /// What restoring them would write.
    pub restore: RestoreSize,
    /// Distinct content chunks they reference (found in the index).
    pub data: BlobTotals,
    /// Distinct trees they reference.
    pub trees: BlobTotals,
    /// Distinct chunks they reference that the index does not list (run `cadang check`).
    pub missing_chunks: u64,
    /// The whole repository.
    pub repository: RepositoryTotals,
}

/// Which snapshots [`stats`] counts.
#[derive(Clone, Copy, Debug)]
pub enum Chosen<'a> {
    /// Every snapshot of the repository (and the snapshots that could not be read, which
    /// are named in the error when there are any).
    All,
    /// These snapshots only.
    Some(&'a [(SnapshotId, Snapshot)]),
}

/// Counts the chosen snapshots and the repository (see the module documentation).
///
/// # Errors
/// `Refused` when every snapshot is asked for and one cannot be read; the repository's
/// errors for a tree that is missing or damaged, naming the snapshot and directory;
/// `Corrupt` for a tree nested deeper than [`MAX_DEPTH`]; storage errors.
pub fn stats(repo: &Repository, index: &Index, chosen: Chosen<'_>) -> Result<Stats> {
    let all;
    let (snapshots, whole) = match chosen {
        Chosen::All => {
            let (snaps, bad) = repo.load_snapshots()?;
            if let Some((id, e)) = bad.first() {
                return Err(Error::Refused(format!(
                    "snapshot {} cannot be read ({e}); run `cadang check`, or name the snapshots to count",
                    id.short()
                )));
            }
            all = snaps;
            (all.as_slice(), true)
        }
        Chosen::Some(snaps) => (snaps, false),
    };
    let mut counter = Counter {
        repo,
        index,
        sizes: HashMap::new(),
        chunks: HashSet::new(),
        trees: HashSet::new(),
        out: Stats::default(),
    };
    for (id, snapshot) in snapshots {
        let mut groups = HashSet::new();
        let size = counter
            .tree(&snapshot.tree, b"", 0, &mut groups)
            .map_err(|e| e.within(|what| format!("snapshot {}: {what}", id.short())))?;
        counter.out.restore.add(&size.size);
        counter.out.snapshots += 1;
    }
    let mut out = counter.out;
    let mut unreferenced = BlobTotals::default();
    for (id, _, location) in index.iter() {
        let totals = match location.ty {
            BlobType::Data => &mut out.repository.data,
            BlobType::Tree => &mut out.repository.trees,
        };
        totals.add(location.raw_length, location.length);
        let referenced = match location.ty {
            BlobType::Data => &counter.chunks,
            BlobType::Tree => &counter.trees,
        };
        if !referenced.contains(&id.prefix_u64()) {
            unreferenced.add(location.raw_length, location.length);
        }
    }
    out.repository.unreferenced = whole.then_some(unreferenced);
    for info in repo.list_objects("data")?.into_values() {
        out.repository.packs += 1;
        out.repository.pack_bytes += info.size;
    }
    out.repository.packs_marked = super::prune::pending_packs(repo)?.len() as u64;
    Ok(out)
}

/// A directory's restore size, and whether it holds hard links (then it is not reused:
/// which of its paths count depends on the rest of the snapshot).
#[derive(Clone, Copy)]
struct Sized {
    size: RestoreSize,
    hardlinks: bool,
}

struct Counter<'a> {
    repo: &'a Repository,
    index: &'a Index,
    /// Sizes of directories without hard links, by tree id prefix.
    sizes: HashMap<u64, RestoreSize>,
    /// Prefixes of the chunks and trees counted.
    chunks: HashSet<u64>,
    trees: HashSet<u64>,
    out: Stats,
}

impl Counter<'_> {
    /// The restore size of directory `path` (tree `id`), counting the chunks and trees
    /// below it not counted before. `groups`: the hard-link groups of this snapshot met so
    /// far.
    fn tree(
        &mut self,
        id: &BlobId,
        path: &[u8],
        depth: usize,
        groups: &mut HashSet<u64>,
    ) -> Result<Sized> {
        if let Some(size) = self.sizes.get(&id.prefix_u64()) {
            return Ok(Sized {
                size: *size,
                hardlinks: false,
            });
        }
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(
                format!("{}/", String::from_utf8_lossy(path)),
                too_deep(),
            ));
        }
        let shown: &[u8] = if path.is_empty() { b"/" } else { path };
        let tree = self
            .repo
            .load_tree(self.index, id)
            .map_err(|e| in_path(e, shown))?;
        if self.trees.insert(id.prefix_u64())
            && let Some((_, location)) = self.index.get(id)
        {
            self.out.trees.add(location.raw_length, location.length);
        }
        let mut here = Sized {
            size: RestoreSize::default(),
            hardlinks: false,
        };
        for node in &tree.nodes {
            match node.kind {
                NodeKind::Dir => {
                    here.size.dirs += 1;
                    if let Some(sub) = &node.subtree {
                        let below = self.tree(sub, &join(path, &node.name), depth + 1, groups)?;
                        here.size.add(&below.size);
                        here.hardlinks |= below.hardlinks;
                    }
                }
                NodeKind::File => {
                    if let Some(group) = node.hardlink {
                        here.hardlinks = true;
                        if !groups.insert(group) {
                            here.size.hardlinks += 1;
                            continue;
                        }
                    }
                    here.size.files += 1;
                    here.size.bytes += node.size;
                    for chunk in &node.content {
                        if self.chunks.insert(chunk.prefix_u64()) {
                            match self.index.get(chunk) {
                                Some((_, location)) => {
                                    self.out.data.add(location.raw_length, location.length);
                                }
                                None => self.out.missing_chunks += 1,
                            }
                        }
                    }
                }
                _ => here.size.other += 1,
            }
        }
        if !here.hardlinks {
            self.sizes.insert(id.prefix_u64(), here.size);
        }
        Ok(here)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::engine::backup::{BackupOptions, BackupProgress, backup};
    use crate::engine::index::Index;
    use crate::engine::repo::test_repository;

    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    #[test]
    fn restore_size_unique_data_and_what_prune_would_collect() {
        let (_runtime, _dir, repo) = test_repository();
        let src = tempfile::tempdir().unwrap();
        let s = src.path().join("srv");
        fs::create_dir_all(s.join("a")).unwrap();
        fs::create_dir_all(s.join("b")).unwrap();
        fs::create_dir_all(s.join("c/d")).unwrap();
        // Three chunks or more (1 MiB on average), stored twice under two names.
        let big = noise(3_500_000, 0x9E37_79B9_7F4A_7C15);
        fs::write(s.join("a/one.bin"), &big).unwrap();
        fs::write(s.join("a/two.bin"), &big).unwrap();
        fs::write(s.join("a/empty"), b"").unwrap();
        symlink("one.bin", s.join("a/link")).unwrap();
        fs::write(s.join("b/hard"), b"one file, two names\n").unwrap();
        fs::hard_link(s.join("b/hard"), s.join("b/hard2")).unwrap();
        fs::write(s.join("c/d/e.txt"), b"unchanged between the snapshots\n").unwrap();
        let options = BackupOptions {
            paths: vec![s.clone()],
            ..BackupOptions::default()
        };
        let first = backup(&repo, &options, &BackupProgress::default()).unwrap();
        let added = noise(200_000, 7);
        fs::write(s.join("a/new.bin"), &added).unwrap();
        let second = backup(&repo, &options, &BackupProgress::default()).unwrap();
        let (index, _) = repo.load_index().unwrap();

        // Each snapshot holds the directories on the way to the source, `srv` included:
        // as many as the temporary directory's path has components, `/` aside.
        let above = src.path().components().count() as u64;
        let files_first = 5; // one.bin, two.bin, empty, hard (hard2 is its link), e.txt
        let bytes_first = 2 * big.len() as u64 + 20 + 32;
        let all = stats(&repo, &index, Chosen::All).unwrap();
        assert_eq!(all.snapshots, 2);
        assert_eq!(all.restore.files, 2 * files_first + 1);
        assert_eq!(all.restore.bytes, 2 * bytes_first + added.len() as u64);
        assert_eq!(all.restore.hardlinks, 2, "one further path per snapshot");
        assert_eq!(all.restore.other, 2, "the symlink, in each snapshot");
        assert_eq!(all.restore.dirs, 2 * (above + 4));
        // Unique content: the big file once, the small ones, the added one.
        assert_eq!(
            all.data.raw_bytes,
            big.len() as u64 + 20 + 32 + added.len() as u64
        );
        assert!(all.data.count >= 4, "{:?}", all.data);
        assert!(
            all.data.stored_bytes > all.data.raw_bytes,
            "noise does not compress"
        );
        assert_eq!(all.missing_chunks, 0);
        // Every indexed blob is referenced; the packs hold them all.
        assert_eq!(all.repository.data, all.data);
        assert_eq!(all.repository.trees, all.trees);
        assert_eq!(all.repository.unreferenced, Some(BlobTotals::default()));
        assert!(all.repository.packs >= 1);
        assert!(
            all.repository.pack_bytes >= all.data.stored_bytes + all.trees.stored_bytes,
            "{:?}",
            all.repository
        );
        // A tree per directory and the root's; the second snapshot's differ on the way
        // to `a` only.
        assert_eq!(all.trees.count, (above + 5) + (above + 2));

        let (snaps, _) = repo.load_snapshots().unwrap();
        let only_first: Vec<_> = snaps
            .iter()
            .filter(|(id, _)| *id == first.snapshot_id)
            .cloned()
            .collect();
        let one = stats(&repo, &index, Chosen::Some(&only_first)).unwrap();
        assert_eq!(one.snapshots, 1);
        assert_eq!(one.restore.files, files_first);
        assert_eq!(one.restore.bytes, bytes_first);
        assert_eq!(one.restore.hardlinks, 1);
        assert_eq!(one.data.raw_bytes, big.len() as u64 + 20 + 32);
        assert_eq!(
            one.repository.unreferenced, None,
            "not every snapshot was counted"
        );

        // Forgotten, not yet pruned: the added file's chunk and the second snapshot's
        // own trees are what a prune would collect.
        repo.delete_snapshot(&second.snapshot_id).unwrap();
        let left = stats(&repo, &index, Chosen::All).unwrap();
        let unreferenced = left.repository.unreferenced.unwrap();
        assert_eq!(left.data, one.data);
        assert_eq!(
            unreferenced.count,
            all.data.count - one.data.count + all.trees.count - one.trees.count
        );
        assert_eq!(
            unreferenced.raw_bytes,
            added.len() as u64 + all.trees.raw_bytes - one.trees.raw_bytes
        );
    }

    #[test]
    fn chunks_the_index_lacks_are_counted_and_a_missing_tree_names_its_snapshot() {
        let (_runtime, _dir, repo) = test_repository();
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("x"), noise(100_000, 3)).unwrap();
        fs::write(src.path().join("y"), b"small\n").unwrap();
        let options = BackupOptions {
            paths: vec![src.path().to_path_buf()],
            ..BackupOptions::default()
        };
        let done = backup(&repo, &options, &BackupProgress::default()).unwrap();
        let (index, _) = repo.load_index().unwrap();
        let mut trees_only = Index::new();
        for (pack, entries) in index.by_pack() {
            let trees: Vec<_> = entries
                .into_iter()
                .filter(|e| e.ty == BlobType::Tree)
                .collect();
            trees_only.add_pack(pack, &trees);
        }
        let counted = stats(&repo, &trees_only, Chosen::All).unwrap();
        assert_eq!(counted.missing_chunks, 2);
        assert_eq!(counted.data, BlobTotals::default());
        assert_eq!(counted.restore.files, 2);

        let error = stats(&repo, &Index::new(), Chosen::All).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&done.snapshot_id.short()) && message.contains("(in /)"),
            "{message}"
        );
    }
}
