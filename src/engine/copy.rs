//! Copy snapshots to another repository (replicas, migration).
//!
//! Every blob read from the source is verified before it is written to the
//! destination. When both repositories share keys (a replica created with
//! `init --from-repo`) blob ids are identical and blobs already present are
//! skipped without being read; otherwise blobs are re-identified with the
//! destination's id key and trees are rewritten. Commit order in the
//! destination is the same as for a backup: packs → index → snapshot.
//!
//! An interrupted copy resumes: index objects are written every few landed
//! packs (as in a backup), and the next copy skips what the destination's
//! index already lists. Skipping a tree skips everything below it, so a tree
//! may only become indexed after everything it references: every data blob
//! is landed and indexed before the first tree pack is sent, and tree packs
//! (children packed before their parents) land and are indexed one at a
//! time, in order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use rayon::prelude::*;

use super::error::{Error, Result};
use super::id::{BlobId, BlobType, PackId, SnapshotId};
use super::index::{Index, Location};
use super::pack::open_blob;
use super::packer::{Packer, StepHook};
use super::repo::Repository;
use super::repo::pack_key;
use super::snapshot::Snapshot;
use super::tree::{self, NodeKind, Tree};

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

/// How a copy runs.
#[derive(Clone, Default)]
pub struct CopyOptions {
    /// Called after each durable step (crash-point tests).
    pub hook: Option<StepHook>,
    /// Set to stop the copy: it ends with [`Error::Cancelled`] after indexing the data
    /// packs already landed, so the next copy resumes from them.
    pub cancel: Option<std::sync::Arc<AtomicBool>>,
}

impl std::fmt::Debug for CopyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOptions")
            .field("hook", &self.hook.is_some())
            .field("cancel", &self.cancel)
            .finish()
    }
}

struct Copier<'a> {
    cancel: Option<&'a AtomicBool>,
    src: &'a Repository,
    dst: &'a Repository,
    src_index: Index,
    dst_index: Index,
    /// Data blobs.
    packer: Packer,
    /// Tree blobs, one pack in flight at a time (see the module comment).
    trees: Packer,
    /// Source chunk id → destination chunk id (identity when keys are shared).
    chunk_map: HashMap<BlobId, BlobId>,
    tree_map: HashMap<BlobId, BlobId>,
}

impl Copier<'_> {
    /// Collect the data blobs reachable from `tree` that the destination lacks.
    fn collect(
        &self,
        tree: &BlobId,
        seen: &mut HashSet<BlobId>,
        need: &mut HashSet<BlobId>,
        same_keys: bool,
        depth: usize,
    ) -> Result<()> {
        refuse_deeper(tree, depth)?;
        if !seen.insert(*tree) || (same_keys && self.dst_index.contains(tree)) {
            return Ok(());
        }
        let t = self.src.load_tree(&self.src_index, tree)?;
        for n in &t.nodes {
            match n.kind {
                NodeKind::Dir => {
                    if let Some(sub) = &n.subtree {
                        self.collect(sub, seen, need, same_keys, depth + 1)?;
                    }
                }
                NodeKind::File => {
                    for c in &n.content {
                        if !same_keys || !self.dst_index.contains(c) {
                            need.insert(*c);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Read each source pack once, verify every needed blob, and store it in
    /// the destination (re-identified when the keys differ).
    fn copy_data(&mut self, need: &HashSet<BlobId>, same_keys: bool) -> Result<()> {
        let mut by_pack: HashMap<PackId, Vec<(BlobId, Location)>> = HashMap::new();
        for id in need {
            let (pack, loc) = self.src_index.get(id).ok_or_else(|| Error::MissingObject {
                what: format!("data blob {} (not in the source index)", id.short()),
            })?;
            by_pack.entry(pack).or_default().push((*id, loc));
        }
        let packs: Vec<(PackId, Vec<(BlobId, Location)>)> = by_pack.into_iter().collect();
        let (src, dst, src_index, dst_index, packer, cancel) = (
            self.src,
            self.dst,
            &self.src_index,
            &self.dst_index,
            &self.packer,
            self.cancel,
        );
        let maps: Vec<Result<Vec<(BlobId, BlobId)>>> = packs
            .par_iter()
            .map(|(pack, blobs)| {
                if cancel.is_some_and(|cancel| cancel.load(Ordering::Relaxed)) {
                    return Err(Error::Cancelled);
                }
                let span = blobs
                    .iter()
                    .map(|(_, l)| l.offset as u64 + l.length as u64)
                    .max()
                    .unwrap_or(0);
                let bytes = src
                    .block_on(src.store().get_range(&pack_key(pack), 0..span))
                    .ok();
                let mut out = Vec::with_capacity(blobs.len());
                for (id, l) in blobs {
                    let env = bytes.as_ref().and_then(|b| {
                        b.get(l.offset as usize..l.offset as usize + l.length as usize)
                    });
                    // Verified read; on any problem fall back to the repository's retrying read.
                    let data = match env
                        .map(|e| open_blob(src.keys(), BlobType::Data, id, l.raw_length, e))
                    {
                        Some(Ok(d)) => d,
                        _ => src.load_blob(src_index, BlobType::Data, id)?,
                    };
                    let new = if same_keys { *id } else { dst.blob_id(&data) };
                    if packer.claim(dst_index, &new) {
                        packer.add(BlobType::Data, new, &data)?;
                    }
                    out.push((*id, new));
                }
                Ok(out)
            })
            .collect();
        let mut cancelled = false;
        for m in maps {
            match m {
                Ok(m) => self.chunk_map.extend(m),
                Err(Error::Cancelled) => cancelled = true,
                Err(e) => return Err(e),
            }
        }
        if cancelled {
            // What landed is indexed, so the next copy does not send it again.
            self.packer.flush()?;
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// Write the tree (and its subtrees) into the destination with mapped ids.
    fn tree(&mut self, id: &BlobId, same_keys: bool, depth: usize) -> Result<BlobId> {
        refuse_deeper(id, depth)?;
        if let Some(m) = self.tree_map.get(id) {
            return Ok(*m);
        }
        if same_keys && self.dst_index.contains(id) {
            return Ok(*id);
        }
        if self
            .cancel
            .is_some_and(|cancel| cancel.load(Ordering::Relaxed))
        {
            return Err(Error::Cancelled);
        }
        let mut t: Tree = self.src.load_tree(&self.src_index, id)?;
        for n in &mut t.nodes {
            match n.kind {
                NodeKind::Dir => {
                    if let Some(sub) = n.subtree {
                        n.subtree = Some(self.tree(&sub, same_keys, depth + 1)?);
                    }
                }
                NodeKind::File => {
                    n.content = n
                        .content
                        .iter()
                        .map(|c| *self.chunk_map.get(c).unwrap_or(c))
                        .collect();
                }
                _ => {}
            }
        }
        let raw = t.encode();
        let new = self.dst.blob_id(&raw);
        if self.trees.claim(&self.dst_index, &new) {
            self.trees.add(BlobType::Tree, new, &raw)?;
        }
        self.tree_map.insert(*id, new);
        Ok(new)
    }
}

/// A tree nested deeper than [`tree::MAX_DEPTH`] levels is damage: the copy stops.
pub(crate) fn refuse_deeper(id: &BlobId, depth: usize) -> Result<()> {
    if depth > tree::MAX_DEPTH {
        return Err(Error::Corrupt {
            what: format!("tree {}", id.short()),
            detail: tree::too_deep(),
        });
    }
    Ok(())
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
    copy_with(src, dst, ids, &CopyOptions { hook, cancel: None })
}

/// [`copy`] with options (a cancellation flag).
///
/// # Errors
/// As [`copy`]; [`Error::Cancelled`] when `options.cancel` was set.
pub fn copy_with(
    src: &Repository,
    dst: &Repository,
    ids: &[SnapshotId],
    options: &CopyOptions,
) -> Result<CopyReport> {
    let hook = options.hook.clone();
    let (src_index, _) = src.load_index()?;
    let (dst_index, _) = dst.load_index()?;
    let (dst_snaps, _) = dst.load_snapshots()?;
    let present: HashSet<SnapshotId> = dst_snaps.iter().filter_map(|(_, s)| s.original).collect();
    let same_keys = src.keys().fingerprint() == dst.keys().fingerprint();
    let mut c = Copier {
        cancel: options.cancel.as_deref(),
        src,
        dst,
        src_index,
        dst_index,
        packer: Packer::new(dst, 2, hook.clone()),
        trees: Packer::new(dst, 1, hook.clone()),
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
    let mut seen = HashSet::new();
    let mut need = HashSet::new();
    for (_, s) in &todo {
        c.collect(&s.tree, &mut seen, &mut need, same_keys, 0)?;
    }
    c.copy_data(&need, same_keys)?;
    // Every data blob landed and indexed before the first tree is sent.
    c.packer.flush()?;
    let mut new_snaps = Vec::new();
    for (id, s) in todo {
        let tree = c.tree(&s.tree, same_keys, 0)?;
        let mut n = s.clone();
        n.tree = tree;
        n.parent = None;
        n.original = Some(s.original.unwrap_or(id));
        new_snaps.push((id, n));
    }
    let mut indexes = c.packer.finish()?;
    indexes.extend(c.trees.finish()?);
    for (id, mut n) in new_snaps {
        // The source's index objects mean nothing here; name this copy's own.
        n.indexes = indexes.clone();
        let nid = dst.save_snapshot(&n)?;
        if let Some(h) = &hook {
            h("snapshot");
        }
        rep.copied.push((id.to_hex(), nid.to_hex()));
    }
    for st in [c.packer.stats(), c.trees.stats()] {
        rep.blobs_copied += st.data_blobs.load(std::sync::atomic::Ordering::Relaxed)
            + st.tree_blobs.load(std::sync::atomic::Ordering::Relaxed);
        rep.bytes_added += st.stored_bytes.load(std::sync::atomic::Ordering::Relaxed);
    }
    Ok(rep)
}

/// Outcome of reading snapshots back (after a copy).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadBackReport {
    /// Distinct blobs (trees and data) read and authenticated.
    pub blobs_verified: u64,
    /// Plaintext bytes of the data blobs verified.
    pub bytes_verified: u64,
    /// Blobs that could not be read or failed verification.
    pub errors: Vec<String>,
}

impl ReadBackReport {
    /// Whether every blob was read and verified.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Read back every blob of snapshots `ids` of `repo` — each tree and each data
/// chunk, once — and authenticate it (decrypt, decompress, recompute the keyed
/// id). Proves a copy landed whole, rather than trusting the writes.
///
/// # Errors
/// Storage errors loading the index or a snapshot object. Damaged or missing
/// blobs are not errors: they are listed in the report.
pub fn read_back(repo: &Repository, ids: &[SnapshotId]) -> Result<ReadBackReport> {
    let (index, _) = repo.load_index()?;
    let mut rep = ReadBackReport::default();
    let mut trees_seen = HashSet::new();
    let mut data: HashSet<BlobId> = HashSet::new();
    let mut stack = Vec::new();
    for id in ids {
        stack.push(repo.load_snapshot(id)?.tree);
    }
    while let Some(tree) = stack.pop() {
        if !trees_seen.insert(tree) {
            continue;
        }
        match repo.load_tree(&index, &tree) {
            Ok(t) => {
                rep.blobs_verified += 1;
                for n in t.nodes {
                    match n.kind {
                        NodeKind::Dir => stack.extend(n.subtree),
                        NodeKind::File => data.extend(n.content),
                        _ => {}
                    }
                }
            }
            Err(e) => rep.errors.push(format!("tree {}: {e}", tree.short())),
        }
    }
    let mut by_pack: HashMap<PackId, Vec<(BlobId, Location)>> = HashMap::new();
    for id in data {
        match index.get(&id) {
            Some((pack, loc)) => by_pack.entry(pack).or_default().push((id, loc)),
            None => rep
                .errors
                .push(format!("data blob {} is not in the index", id.short())),
        }
    }
    let packs: Vec<(PackId, Vec<(BlobId, Location)>)> = by_pack.into_iter().collect();
    let results: Vec<(u64, u64, Vec<String>)> = packs
        .par_iter()
        .map(|(pack, blobs)| {
            let span = blobs
                .iter()
                .map(|(_, l)| l.offset as u64 + l.length as u64)
                .max()
                .unwrap_or(0);
            let bytes = repo
                .block_on(repo.store().get_range(&pack_key(pack), 0..span))
                .ok();
            let (mut n, mut b, mut errors) = (0u64, 0u64, Vec::new());
            for (id, l) in blobs {
                let env = bytes
                    .as_ref()
                    .and_then(|p| p.get(l.offset as usize..l.offset as usize + l.length as usize));
                // One read of the pack; a blob failing in it is read again on its own
                // (with the repository's retries) before it is called damaged.
                let verified = match env
                    .map(|e| open_blob(repo.keys(), BlobType::Data, id, l.raw_length, e))
                {
                    Some(Ok(_)) => Ok(()),
                    _ => repo.load_blob(&index, BlobType::Data, id).map(|_| ()),
                };
                match verified {
                    Ok(()) => {
                        n += 1;
                        b += l.raw_length as u64;
                    }
                    Err(e) => errors.push(format!(
                        "data blob {} in pack {}: {e}",
                        id.short(),
                        pack.short()
                    )),
                }
            }
            (n, b, errors)
        })
        .collect();
    for (n, b, errors) in results {
        rep.blobs_verified += n;
        rep.bytes_verified += b;
        rep.errors.extend(errors);
    }
    rep.errors.sort();
    Ok(rep)
}
