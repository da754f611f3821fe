//! Ingest: a backup whose files are read elsewhere — by an agent on a colocated server —
//! and whose chunks, already cut, named and compressed there, arrive here to be checked,
//! encrypted, packed and committed as a snapshot.
//!
//! The remote side holds only the naming capability ([`super::crypto::IdKeys`]): it can
//! say what content is called, never decrypt anything. Nothing it sends is trusted:
//! every chunk is decompressed and its keyed id recomputed before it is stored (a
//! dishonest sender could otherwise plant wrong content under an id another server will
//! later deduplicate against), every entry's name is checked like a tree read from disk,
//! and every chunk an entry references must be in the repository or received in this
//! session. The snapshot's time is the caller's, never the sender's.
//!
//! A sender that keeps a record of what it sent for the parent snapshot may name a
//! directory whose every entry is as it was then ([`Ingest::add_unchanged_subtree`]):
//! the directory's tree is taken from the parent snapshot, and nothing below it crosses
//! the wire. Only the parent the caller chose can be named, and only a directory that is
//! there with its tree still in the index.
//!
//! Commit order is the local backup's: packs → index → snapshot. An interrupted session
//! flushes what landed into the index ([`Ingest::flush`]), so a resumed one is answered
//! "present" for those chunks and they are not sent again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::error::{Error, Result};
use super::format::{raw_payload_data, with_blob_plaintext};
use super::id::{BlobId, BlobType, SnapshotId};
use super::index::Index;
use super::packer::Packer;
use super::repo::Repository;
use super::snapshot::{Snapshot, SnapshotSummary};
use super::tree::{Node, NodeKind, Tree, check_name};

/// What the session received and stored.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Chunks received.
    pub chunks_received: AtomicU64,
    /// Payload bytes received (compressed, as on the wire).
    pub payload_bytes: AtomicU64,
    /// Uncompressed bytes of the chunks received.
    pub raw_bytes: AtomicU64,
    /// Chunks received that another sender had stored in the meantime.
    pub chunks_duplicate: AtomicU64,
    /// Entries received.
    pub entries: AtomicU64,
}

/// What the caller says about the snapshot to write.
#[derive(Debug, Clone)]
pub struct IngestCommit {
    /// The snapshot's time (the daemon's clock).
    pub time: DateTime<Utc>,
    /// Host name recorded (the server's name in the register).
    pub hostname: String,
    /// The backed-up paths, as given to the sender.
    pub paths: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// The previous snapshot of the same source, for the record.
    pub parent: Option<SnapshotId>,
    /// When the session started.
    pub started: DateTime<Utc>,
    /// Files the sender read or took from its cache, and their bytes.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
    /// Files the sender found unchanged.
    pub files_unchanged: u64,
    /// Files the sender could not read.
    pub files_failed: u64,
}

/// A backup session fed from elsewhere. Blocking, like the rest of the engine.
pub struct Ingest<'a> {
    repo: &'a Repository,
    index: Index,
    packer: Packer,
    max_chunk: u32,
    /// The entries received, behind a lock so that entries and chunks can arrive on
    /// different threads (chunks are checked while the next messages are read).
    entries: Mutex<Entries>,
    /// Uncompressed chunks are compressed here before they are stored.
    compress_raw: bool,
    /// The root tree of the parent snapshot, which unchanged subtrees are taken from.
    parent: Option<BlobId>,
    /// Trees of the parent snapshot read so far, by id.
    parent_trees: Mutex<HashMap<BlobId, Arc<Tree>>>,
    stats: IngestStats,
}

/// The entries of a session.
#[derive(Default)]
struct Entries {
    /// Entries by the absolute path of their directory (`/` for the root).
    children: BTreeMap<Vec<u8>, Vec<Node>>,
    paths: HashSet<Vec<u8>>,
    /// Directories below the unchanged subtrees taken from the parent snapshot.
    dirs_below_unchanged: u64,
}

/// Splits an absolute path into its directory and name, checking every component.
fn split_path(path: &[u8]) -> std::result::Result<(Vec<u8>, Vec<u8>), String> {
    if path.first() != Some(&b'/') || path.len() > 4096 {
        return Err(format!(
            "`{}` is not an absolute path",
            String::from_utf8_lossy(path)
        ));
    }
    let trimmed = &path[1..];
    let mut parts: Vec<&[u8]> = trimmed.split(|b| *b == b'/').collect();
    let name = parts.pop().unwrap_or_default();
    check_name(name)?;
    for part in &parts {
        check_name(part)?;
    }
    let dir = if parts.is_empty() {
        b"/".to_vec()
    } else {
        let mut dir = Vec::with_capacity(trimmed.len());
        for part in &parts {
            dir.push(b'/');
            dir.extend_from_slice(part);
        }
        dir
    };
    Ok((dir, name.to_vec()))
}

impl<'a> Ingest<'a> {
    /// Starts a session on `repo` (loads its index).
    ///
    /// # Errors
    /// Storage errors.
    pub fn new(repo: &'a Repository) -> Result<Self> {
        let (index, bad) = repo.load_index()?;
        for (id, e) in &bad {
            tracing::warn!(index = %id.short(), error = %e, "ignoring unreadable index object; its chunks will be asked for again");
        }
        Ok(Self {
            repo,
            index,
            packer: Packer::new(repo, 2, None),
            max_chunk: repo.config().chunker.max_size,
            entries: Mutex::new(Entries::default()),
            compress_raw: false,
            parent: None,
            parent_trees: Mutex::new(HashMap::new()),
            stats: IngestStats::default(),
        })
    }

    /// Names the parent snapshot's root tree: the sender may then mark directories as
    /// unchanged since it ([`Ingest::add_unchanged_subtree`]).
    #[must_use]
    pub fn with_parent_tree(mut self, root: BlobId) -> Self {
        self.parent = Some(root);
        self
    }

    /// Has chunks that arrive uncompressed compressed at the repository's level before
    /// they are stored: the sender only reads, cuts and names.
    #[must_use]
    pub fn compressing_raw_chunks(mut self) -> Self {
        self.compress_raw = true;
        self
    }

    /// What was received so far.
    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// Bytes stored in new packs so far.
    pub fn stored_bytes(&self) -> u64 {
        self.packer.stats().stored_bytes.load(Ordering::Relaxed)
    }

    fn known(&self, id: &BlobId) -> bool {
        self.index.contains(id) || self.packer.is_pending(id)
    }

    /// Positions in `ids` of the chunks the repository lacks.
    pub fn missing(&self, ids: &[BlobId]) -> Vec<u32> {
        ids.iter()
            .enumerate()
            .filter(|(_, id)| !self.known(id))
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Checks a chunk against its id and stores it if it is new.
    ///
    /// # Errors
    /// `Refused` when the payload does not decode to `raw_len` bytes named `id` or is
    /// larger than the repository's largest chunk; storage errors.
    pub fn add_chunk(&self, id: BlobId, raw_len: u32, payload: &[u8]) -> Result<()> {
        if raw_len > self.max_chunk || payload.len() > self.max_chunk as usize + 64 {
            return Err(Error::Refused(format!(
                "chunk {} is {raw_len} bytes, larger than this repository's chunks ({})",
                id.short(),
                self.max_chunk
            )));
        }
        // Named from the plaintext without keeping it: raw payloads are hashed where
        // they lie, compressed ones in this thread's reused buffer.
        let named = with_blob_plaintext(payload, raw_len as usize, |plain| {
            self.repo.keys().blob_id(plain)
        })
        .map_err(|e| Error::Refused(format!("chunk {}: {e}", id.short())))?;
        if named != id {
            return Err(Error::Refused(format!(
                "chunk {} does not match its id: the sender's content or key is wrong",
                id.short()
            )));
        }
        self.stats.chunks_received.fetch_add(1, Ordering::Relaxed);
        self.stats
            .payload_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        self.stats
            .raw_bytes
            .fetch_add(u64::from(raw_len), Ordering::Relaxed);
        if self.packer.claim(&self.index, &id) {
            match raw_payload_data(payload) {
                Some(data) if self.compress_raw => self.packer.add(BlobType::Data, id, data),
                _ => self
                    .packer
                    .add_payload(BlobType::Data, id, payload, raw_len),
            }
        } else {
            self.stats.chunks_duplicate.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    /// Records one walked entry at the absolute `path`. The chunks it references must
    /// have been added before.
    ///
    /// # Errors
    /// `Refused` for a bad or repeated path, or a file referencing a chunk that is
    /// neither in the repository nor received.
    pub fn add_entry(&self, path: &[u8], mut node: Node) -> Result<()> {
        let (dir, name) = split_path(path).map_err(Error::Refused)?;
        let mut entries = self.entries();
        if !entries.paths.insert(path.to_vec()) {
            return Err(Error::Refused(format!(
                "`{}` was sent twice",
                String::from_utf8_lossy(path)
            )));
        }
        if node.kind == NodeKind::File {
            if let Some(missing) = node.content.iter().find(|id| !self.known(id)) {
                return Err(Error::Refused(format!(
                    "`{}` references chunk {} that was never sent",
                    String::from_utf8_lossy(path),
                    missing.short()
                )));
            }
        } else {
            node.content.clear();
        }
        node.subtree = None;
        node.name = name;
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        entries.children.entry(dir).or_default().push(node);
        Ok(())
    }

    /// Adds a directory whose whole content is as in the parent snapshot: its tree is
    /// the parent's tree at the same path, and nothing is expected below it.
    /// `dirs_below` (the sender's count of directories under it) only feeds the
    /// snapshot's statistics.
    ///
    /// # Errors
    /// `Refused` when there is no parent, the path is bad, repeated or not a directory
    /// of the parent snapshot, or its tree is no longer in the index; storage and
    /// corruption errors reading the parent's trees.
    pub fn add_unchanged_subtree(
        &self,
        path: &[u8],
        mut node: Node,
        dirs_below: u64,
    ) -> Result<()> {
        let (dir, name) = split_path(path).map_err(Error::Refused)?;
        if node.kind != NodeKind::Dir {
            return Err(Error::Refused(format!(
                "`{}` is sent as an unchanged subtree but is not a directory",
                String::from_utf8_lossy(path)
            )));
        }
        let subtree = self.parent_subtree(path)?;
        let mut entries = self.entries();
        if !entries.paths.insert(path.to_vec()) {
            return Err(Error::Refused(format!(
                "`{}` was sent twice",
                String::from_utf8_lossy(path)
            )));
        }
        node.content.clear();
        node.link_target = None;
        node.subtree = Some(subtree);
        node.name = name;
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        entries.dirs_below_unchanged = entries.dirs_below_unchanged.saturating_add(dirs_below);
        entries.children.entry(dir).or_default().push(node);
        Ok(())
    }

    /// The tree of the directory at `path` in the parent snapshot.
    fn parent_subtree(&self, path: &[u8]) -> Result<BlobId> {
        let refused = |why: &str| {
            Error::Refused(format!(
                "`{}` is sent as unchanged since the parent snapshot, but {why}",
                String::from_utf8_lossy(path)
            ))
        };
        let mut at = self
            .parent
            .ok_or_else(|| refused("this backup has no parent"))?;
        for name in path[1..].split(|b| *b == b'/') {
            let tree = self.parent_tree(&at)?;
            let node = tree
                .nodes
                .iter()
                .find(|node| node.name == name)
                .ok_or_else(|| refused("the parent snapshot does not hold it"))?;
            at = match (node.kind, node.subtree) {
                (NodeKind::Dir, Some(subtree)) => subtree,
                _ => return Err(refused("it is not a directory in the parent snapshot")),
            };
        }
        if !self.index.contains(&at) {
            return Err(refused("its tree is no longer in the repository"));
        }
        Ok(at)
    }

    fn parent_tree(&self, id: &BlobId) -> Result<Arc<Tree>> {
        let mut trees = self
            .parent_trees
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tree) = trees.get(id) {
            return Ok(tree.clone());
        }
        let tree = Arc::new(self.repo.load_tree(&self.index, id)?);
        trees.insert(*id, tree.clone());
        Ok(tree)
    }

    /// Forgets the entries received (a resumed sender walks again); chunks stay.
    pub fn reset_entries(&self) {
        *self.entries() = Entries::default();
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Entries are only ever pushed whole: a panicked holder left them consistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes what landed durable and indexed, so the chunks are known after a restart.
    ///
    /// # Errors
    /// Storage errors.
    pub fn flush(&self) -> Result<()> {
        self.packer.flush()
    }

    fn save_tree(&self, tree: Tree) -> Result<BlobId> {
        let raw = tree.encode();
        let id = self.repo.keys().blob_id(&raw);
        if self.packer.claim(&self.index, &id) {
            self.packer.add(BlobType::Tree, id, &raw)?;
        }
        Ok(id)
    }

    fn build(&self, dir: &[u8], pending: &mut HashMap<Vec<u8>, Vec<Node>>) -> Result<BlobId> {
        let mut nodes = pending.remove(dir).unwrap_or_default();
        for node in &mut nodes {
            // A directory taken from the parent snapshot comes with its tree.
            if node.kind == NodeKind::Dir && node.subtree.is_none() {
                let mut child = if dir == b"/" {
                    Vec::new()
                } else {
                    dir.to_vec()
                };
                child.push(b'/');
                child.extend_from_slice(&node.name);
                node.subtree = Some(self.build(&child, pending)?);
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.save_tree(Tree { version: 1, nodes })
    }

    /// Builds the trees, writes the last packs and the index, then the snapshot.
    ///
    /// # Errors
    /// `Refused` when entries were sent whose directory was not; storage errors.
    pub fn commit(self, meta: &IngestCommit) -> Result<(SnapshotId, Snapshot)> {
        let (children, dirs_below_unchanged) = {
            let mut entries = self.entries();
            (
                std::mem::take(&mut entries.children),
                entries.dirs_below_unchanged,
            )
        };
        self.parent_trees
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        let mut pending: HashMap<Vec<u8>, Vec<Node>> = children.into_iter().collect();
        let dirs = pending
            .values()
            .flatten()
            .filter(|n| n.kind == NodeKind::Dir)
            .count() as u64
            + dirs_below_unchanged;
        let tree = self.build(b"/", &mut pending)?;
        if let Some(orphan) = pending.keys().next() {
            return Err(Error::Refused(format!(
                "entries under `{}` were sent without that directory",
                String::from_utf8_lossy(orphan)
            )));
        }
        let indexes = self.packer.finish()?;
        let st = self.packer.stats();
        let summary = SnapshotSummary {
            backup_start: Some(meta.started),
            backup_end: Some(meta.time.max(meta.started)),
            files_new: meta.files.saturating_sub(meta.files_unchanged),
            files_changed: 0,
            files_unmodified: meta.files_unchanged,
            dirs,
            files_failed: meta.files_failed,
            data_blobs: st.data_blobs.load(Ordering::Relaxed),
            tree_blobs: st.tree_blobs.load(Ordering::Relaxed),
            data_added_raw: st.raw_bytes.load(Ordering::Relaxed),
            data_added: st.stored_bytes.load(Ordering::Relaxed),
            total_files_processed: meta.files,
            total_bytes_processed: meta.bytes,
        };
        let snapshot = Snapshot {
            version: 1,
            time: meta.time,
            hostname: meta.hostname.clone(),
            username: "cadang-agent".into(),
            paths: meta.paths.clone(),
            tags: meta.tags.clone(),
            parent: meta.parent,
            tree,
            summary,
            original: None,
            rewritten_from: None,
            indexes,
        };
        // The commit point: everything the snapshot references is durable.
        let id = self.repo.save_snapshot(&snapshot)?;
        Ok((id, snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::format::encode_blob_payload;
    use crate::engine::store::{Store, StoreOptions};

    fn repo(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> Repository {
        let store = Store::open(dir.to_str().unwrap(), &StoreOptions::default()).unwrap();
        Repository::init(
            rt.handle().clone(),
            store,
            b"pw",
            &crate::engine::repo::TEST_OPTIONS,
        )
        .unwrap()
    }

    /// Restores a snapshot into a new directory, every file verified.
    fn restore_verified(repo: &Repository, snap_id: &SnapshotId) -> tempfile::TempDir {
        let target = tempfile::tempdir().unwrap();
        let restored = crate::engine::restore::restore(
            repo,
            snap_id,
            &crate::engine::restore::RestoreOptions {
                target: target.path().to_path_buf(),
                verify: true,
                ..Default::default()
            },
            &crate::engine::restore::RestoreProgress::default(),
        )
        .unwrap();
        assert!(restored.is_success());
        target
    }

    fn payload(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_blob_payload(data, 3, &mut out);
        out
    }

    #[test]
    fn split_path_checks_every_component() {
        assert_eq!(
            split_path(b"/srv/data/a.txt").unwrap(),
            (b"/srv/data".to_vec(), b"a.txt".to_vec())
        );
        assert_eq!(
            split_path(b"/srv").unwrap(),
            (b"/".to_vec(), b"srv".to_vec())
        );
        for bad in [
            &b"srv/a"[..],
            b"/srv/../etc",
            b"/srv//a",
            b"/",
            b"/a/.",
            b"",
        ] {
            assert!(
                split_path(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunks_are_checked_against_their_ids_and_a_snapshot_restores() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path(), &rt);
        let content = b"hello from a colocated server".repeat(100);
        let id = repo.keys().blob_id(&content);
        let ingest = Ingest::new(&repo).unwrap();
        assert_eq!(ingest.missing(&[id]), vec![0]);
        // A chunk under a wrong id is refused and not stored.
        let wrong = repo.keys().blob_id(b"other");
        let refused = ingest.add_chunk(wrong, content.len() as u32, &payload(&content));
        assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
        assert_eq!(ingest.missing(&[wrong]), vec![0]);
        // A lying length is refused.
        assert!(ingest.add_chunk(id, 7, &payload(&content)).is_err());
        ingest
            .add_chunk(id, content.len() as u32, &payload(&content))
            .unwrap();
        assert!(ingest.missing(&[id]).is_empty());
        // An entry referencing an unsent chunk is refused.
        let mut ghost = Node::new("ghost", NodeKind::File);
        ghost.content = vec![wrong];
        assert!(ingest.add_entry(b"/srv/ghost", ghost).is_err());
        let srv = Node::new("srv", NodeKind::Dir);
        ingest.add_entry(b"/srv", srv.clone()).unwrap();
        assert!(ingest.add_entry(b"/srv", srv).is_err(), "a path twice");
        let mut file = Node::new("f", NodeKind::File);
        file.size = content.len() as u64;
        file.content = vec![id];
        ingest.add_entry(b"/srv/f", file).unwrap();
        let (snap_id, snap) = commit_one_file(
            ingest,
            "web-01",
            vec!["server:1".into()],
            content.len() as u64,
        );
        assert_eq!(repo.load_snapshot(&snap_id).unwrap().time, snap.time);
        let target = restore_verified(&repo, &snap_id);
        assert_eq!(std::fs::read(target.path().join("srv/f")).unwrap(), content);
    }

    /// Commits a session of one file under `/srv`, now.
    fn commit_one_file(
        ingest: Ingest<'_>,
        hostname: &str,
        tags: Vec<String>,
        bytes: u64,
    ) -> (SnapshotId, Snapshot) {
        let now = Utc::now();
        ingest
            .commit(&IngestCommit {
                time: now,
                hostname: hostname.into(),
                paths: vec!["/srv".into()],
                tags,
                parent: None,
                started: now,
                files: 1,
                bytes,
                files_unchanged: 0,
                files_failed: 0,
            })
            .unwrap()
    }

    /// A sender that does not compress (the plan compresses on the daemon): raw chunks
    /// are compressed before they are stored, and read back as they were sent.
    #[test]
    fn raw_chunks_are_compressed_here_when_the_sender_does_not() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let text = b"INSERT INTO pasien VALUES (1, 'Sri');\n".repeat(4000);
        let mut raw = Vec::new();
        encode_blob_payload(&text, 0, &mut raw);
        assert_eq!(raw_payload_data(&raw), Some(&text[..]));
        for compress_here in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let repo = repo(dir.path(), &rt);
            let id = repo.keys().blob_id(&text);
            let mut ingest = Ingest::new(&repo).unwrap();
            if compress_here {
                ingest = ingest.compressing_raw_chunks();
            }
            ingest.add_chunk(id, text.len() as u32, &raw).unwrap();
            ingest
                .add_entry(b"/srv", Node::new("srv", NodeKind::Dir))
                .unwrap();
            let mut file = Node::new("dump.sql", NodeKind::File);
            file.size = text.len() as u64;
            file.content = vec![id];
            ingest.add_entry(b"/srv/dump.sql", file).unwrap();
            let (snap_id, snap) = commit_one_file(ingest, "db-01", vec![], text.len() as u64);
            let stored = snap.summary.data_added;
            if compress_here {
                assert!(stored < text.len() as u64 / 10, "{stored} bytes stored");
            } else {
                assert!(stored > text.len() as u64, "stored as sent: {stored} bytes");
            }
            let target = restore_verified(&repo, &snap_id);
            assert_eq!(
                std::fs::read(target.path().join("srv/dump.sql")).unwrap(),
                text
            );
        }
    }

    /// A directory unchanged since the parent snapshot comes as one entry: its tree is
    /// the parent's, and it restores as it was. Only what the parent holds can be named.
    #[test]
    fn unchanged_directories_are_taken_from_the_parent_snapshot_and_nothing_else() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path(), &rt);
        let old = b"laporan keuangan 2025\n".repeat(300);
        let new = b"laporan keuangan 2026\n".repeat(300);
        let (old_id, new_id) = (repo.keys().blob_id(&old), repo.keys().blob_id(&new));
        let file = |name: &str, content: &[u8], id: BlobId| {
            let mut node = Node::new(name, NodeKind::File);
            node.size = content.len() as u64;
            node.content = vec![id];
            node
        };
        let first = Ingest::new(&repo).unwrap();
        first
            .add_chunk(old_id, old.len() as u32, &payload(&old))
            .unwrap();
        for (path, node) in [
            (&b"/srv"[..], Node::new("srv", NodeKind::Dir)),
            (b"/srv/arsip", Node::new("arsip", NodeKind::Dir)),
            (b"/srv/arsip/2025", Node::new("2025", NodeKind::Dir)),
            (b"/srv/arsip/2025/a.txt", file("a.txt", &old, old_id)),
            (b"/srv/b.txt", file("b.txt", &old, old_id)),
        ] {
            first.add_entry(path, node).unwrap();
        }
        let (_, parent) = commit_one_file(first, "web-01", vec![], 0);

        // Without a parent nothing can be named unchanged.
        let orphan = Ingest::new(&repo).unwrap();
        let refused =
            orphan.add_unchanged_subtree(b"/srv/arsip", Node::new("arsip", NodeKind::Dir), 1);
        assert!(
            matches!(refused, Err(Error::Refused(ref m)) if m.contains("no parent")),
            "{refused:?}"
        );

        let second = Ingest::new(&repo).unwrap().with_parent_tree(parent.tree);
        second
            .add_chunk(new_id, new.len() as u32, &payload(&new))
            .unwrap();
        // Paths the parent does not hold as directories are refused.
        for (path, kind, why) in [
            (&b"/srv/baru"[..], NodeKind::Dir, "does not hold it"),
            (
                b"/srv/b.txt",
                NodeKind::Dir,
                "not a directory in the parent",
            ),
            (
                b"/srv/arsip/2025/a.txt/x",
                NodeKind::Dir,
                "not a directory in the parent",
            ),
            (b"/srv/arsip", NodeKind::File, "is not a directory"),
            (b"/srv/../etc", NodeKind::Dir, "`..`"),
        ] {
            let refused = second.add_unchanged_subtree(path, Node::new("x", kind), 0);
            assert!(
                matches!(refused, Err(Error::Refused(ref m)) if m.contains(why)),
                "{}: {refused:?}",
                String::from_utf8_lossy(path)
            );
        }
        second
            .add_entry(b"/srv", Node::new("srv", NodeKind::Dir))
            .unwrap();
        second
            .add_unchanged_subtree(b"/srv/arsip", Node::new("arsip", NodeKind::Dir), 1)
            .unwrap();
        let twice =
            second.add_unchanged_subtree(b"/srv/arsip", Node::new("arsip", NodeKind::Dir), 1);
        assert!(twice.is_err(), "a path twice");
        second
            .add_entry(b"/srv/b.txt", file("b.txt", &new, new_id))
            .unwrap();
        let (snap_id, snap) = commit_one_file(second, "web-01", vec![], 0);
        assert_eq!(
            snap.summary.dirs, 3,
            "the directory below the unchanged one counts"
        );
        let target = restore_verified(&repo, &snap_id);
        assert_eq!(
            std::fs::read(target.path().join("srv/arsip/2025/a.txt")).unwrap(),
            old
        );
        assert_eq!(std::fs::read(target.path().join("srv/b.txt")).unwrap(), new);

        // Entries sent below a directory taken whole are refused at commit.
        let third = Ingest::new(&repo).unwrap().with_parent_tree(parent.tree);
        third
            .add_entry(b"/srv", Node::new("srv", NodeKind::Dir))
            .unwrap();
        third
            .add_unchanged_subtree(b"/srv/arsip", Node::new("arsip", NodeKind::Dir), 1)
            .unwrap();
        third
            .add_entry(b"/srv/arsip/c.txt", file("c.txt", &old, old_id))
            .unwrap();
        let now = Utc::now();
        let refused = third.commit(&IngestCommit {
            time: now,
            hostname: "web-01".into(),
            paths: vec!["/srv".into()],
            tags: vec![],
            parent: None,
            started: now,
            files: 1,
            bytes: 0,
            files_unchanged: 0,
            files_failed: 0,
        });
        assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
    }

    #[test]
    fn entries_without_their_directory_are_refused_at_commit() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path(), &rt);
        let ingest = Ingest::new(&repo).unwrap();
        ingest
            .add_entry(b"/srv/orphan", Node::new("x", NodeKind::Fifo))
            .unwrap();
        let now = Utc::now();
        let refused = ingest.commit(&IngestCommit {
            time: now,
            hostname: "h".into(),
            paths: vec!["/srv".into()],
            tags: vec![],
            parent: None,
            started: now,
            files: 0,
            bytes: 0,
            files_unchanged: 0,
            files_failed: 0,
        });
        assert!(matches!(refused, Err(Error::Refused(_))));
        assert!(repo.load_snapshots().unwrap().0.is_empty(), "no snapshot");
    }
}
