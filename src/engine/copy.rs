//! Copy snapshots to another repository (replicas, migration).
//!
//! Every blob read from the source is verified before it is written to the
//! destination. When both repositories share keys (a replica created with
//! `init --from-repo`) blob ids are identical and blobs already present are
//! skipped without being read; otherwise blobs are re-identified with the
//! destination's id key and trees are rewritten. Commit order in the
//! destination is the same as for a backup: packs → index → snapshot.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::error::Result;
use super::id::{BlobId, BlobType, SnapshotId};
use super::index::Index;
use super::packer::{Packer, StepHook};
use super::repo::Repository;
use super::snapshot::Snapshot;
use super::tree::{NodeKind, Tree};

/// Outcome of a copy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyReport {
    /// Source snapshots copied now: (source id, destination id).
    pub copied: Vec<(String, String)>,
    /// Source snapshots already present in the destination.
    pub skipped: Vec<String>,
    /// Blobs written to the destination.
    pub blobs_copied: u64,
    /// Bytes added to the destination.
    pub bytes_added: u64,
}

struct Copier<'a> {
    src: &'a Repository,
    dst: &'a Repository,
    src_index: Index,
    dst_index: Index,
    same_keys: bool,
    packer: Packer,
    tree_map: HashMap<BlobId, BlobId>,
    chunk_map: HashMap<BlobId, BlobId>,
}

impl Copier<'_> {
    fn chunk(&mut self, id: &BlobId) -> Result<BlobId> {
        if self.same_keys {
            if self.dst_index.contains(id) {
                return Ok(*id);
            }
            if self.packer.claim(&self.dst_index, id) {
                let data = self.src.load_blob(&self.src_index, BlobType::Data, id)?;
                self.packer.add(BlobType::Data, *id, &data)?;
            }
            return Ok(*id);
        }
        if let Some(m) = self.chunk_map.get(id) {
            return Ok(*m);
        }
        let data = self.src.load_blob(&self.src_index, BlobType::Data, id)?;
        let new = self.dst.blob_id(&data);
        if self.packer.claim(&self.dst_index, &new) {
            self.packer.add(BlobType::Data, new, &data)?;
        }
        self.chunk_map.insert(*id, new);
        Ok(new)
    }

    fn tree(&mut self, id: &BlobId) -> Result<BlobId> {
        if let Some(m) = self.tree_map.get(id) {
            return Ok(*m);
        }
        if self.same_keys && self.dst_index.contains(id) {
            return Ok(*id);
        }
        let mut t: Tree = self.src.load_tree(&self.src_index, id)?;
        for n in &mut t.nodes {
            match n.kind {
                NodeKind::Dir => {
                    if let Some(sub) = n.subtree {
                        n.subtree = Some(self.tree(&sub)?);
                    }
                }
                NodeKind::File => {
                    let mut content = Vec::with_capacity(n.content.len());
                    for c in &n.content {
                        content.push(self.chunk(c)?);
                    }
                    n.content = content;
                }
                _ => {}
            }
        }
        let raw = t.encode();
        let new = self.dst.blob_id(&raw);
        if self.packer.claim(&self.dst_index, &new) {
            self.packer.add(BlobType::Tree, new, &raw)?;
        }
        self.tree_map.insert(*id, new);
        Ok(new)
    }
}

impl Repository {
    /// Keyed id under this repository's id key.
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        self.keys().blob_id(data)
    }
}

/// Copy snapshots `ids` from `src` to `dst`.
///
/// # Errors
/// Damage in the source (the copy stops; nothing partial becomes visible),
/// storage errors.
pub fn copy(
    src: &Repository,
    dst: &Repository,
    ids: &[SnapshotId],
    hook: Option<StepHook>,
) -> Result<CopyReport> {
    let (src_index, _) = src.load_index()?;
    let (dst_index, _) = dst.load_index()?;
    let (dst_snaps, _) = dst.load_snapshots()?;
    let present: HashSet<SnapshotId> = dst_snaps.iter().filter_map(|(_, s)| s.original).collect();
    let mut c = Copier {
        src,
        dst,
        src_index,
        dst_index,
        same_keys: src.keys().fingerprint() == dst.keys().fingerprint(),
        packer: Packer::new(dst, 2, hook.clone()),
        tree_map: HashMap::new(),
        chunk_map: HashMap::new(),
    };
    let mut rep = CopyReport::default();
    let mut todo: Vec<(SnapshotId, Snapshot)> = Vec::new();
    for id in ids {
        if present.contains(id) {
            rep.skipped.push(id.to_hex());
            continue;
        }
        let s = src.load_snapshot(id)?;
        // A snapshot copied onward keeps pointing at its first origin.
        if s.original.is_some_and(|o| present.contains(&o)) {
            rep.skipped.push(id.to_hex());
            continue;
        }
        todo.push((*id, s));
    }
    let mut new_snaps = Vec::new();
    for (id, s) in todo {
        let tree = c.tree(&s.tree)?;
        let mut n = s.clone();
        n.tree = tree;
        n.parent = None;
        n.original = Some(s.original.unwrap_or(id));
        new_snaps.push((id, n));
    }
    c.packer.finish()?;
    for (id, n) in new_snaps {
        let nid = dst.save_snapshot(&n)?;
        if let Some(h) = &hook {
            h("snapshot");
        }
        rep.copied.push((id.to_hex(), nid.to_hex()));
    }
    let st = c.packer.stats();
    rep.blobs_copied = st.data_blobs.load(std::sync::atomic::Ordering::Relaxed)
        + st.tree_blobs.load(std::sync::atomic::Ordering::Relaxed);
    rep.bytes_added = st.stored_bytes.load(std::sync::atomic::Ordering::Relaxed);
    Ok(rep)
}
