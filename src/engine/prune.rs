//! Prune: remove data no snapshot needs, without ever blocking backups.
//!
//! Backups take no lock, so a backup that started before a prune may still
//! reference blobs the prune finds unused. Deletion therefore happens in two
//! phases (as kopia does):
//!
//! 1. **Mark.** Unused packs — and partly used packs above the repack
//!    threshold, after their live blobs are copied into new packs — are taken
//!    out of a new consolidated index and listed in a *prune plan*
//!    (`prune/<id>`) with the time. New backups no longer see them.
//! 2. **Sweep.** A later prune, once the plan is older than the grace period
//!    (default 24 h, longer than any backup runs), deletes those packs —
//!    except any whose blobs a snapshot committed in the meantime uses,
//!    which are put back into the index instead.
//!
//! Packs that no index lists (left by interrupted backups) are swept the
//! same way once older than the grace period. Prune refuses to run when an
//! indexed pack is missing or a snapshot's trees cannot be read, because it
//! could not know what is in use. Memory: the set of used blobs holds 8-byte
//! id prefixes (a collision only keeps garbage, never deletes data).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::check::ensure_no_missing_packs;
use super::error::{Error, Result};
use super::format::{ObjectKind, open_postcard, seal_postcard};
use super::id::{BlobId, IndexId, LockId, PackId, random_bytes};
use super::index::{IndexFile, IndexPack};
use super::pack::{PackEntry, open_blob, parse_header};
use super::packer::Packer;
use super::repo::{Repository, pack_key};
use super::store::ObjectInfo;
use super::tree::NodeKind;

/// Prune settings.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Report only; change nothing.
    pub dry_run: bool,
    /// How long marked packs wait before deletion.
    pub grace: Duration,
    /// Repack a partly used pack when more than this percentage of it is unused.
    pub max_unused_percent: f64,
    /// The time now (an input, so tests control it).
    pub now: DateTime<Utc>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            grace: Duration::hours(24),
            max_unused_percent: 10.0,
            now: Utc::now(),
        }
    }
}

/// What prune did (or would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Snapshots that define what is used.
    pub snapshots: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Packs marked for deletion in this run.
    pub packs_marked: usize,
    /// Packs whose live blobs were copied before marking.
    pub packs_repacked: usize,
    /// Packs deleted in this run (marked earlier, or orphans).
    pub packs_deleted: usize,
    /// Marked packs put back because a newer snapshot uses them.
    pub packs_resurrected: usize,
    /// Bytes deleted in this run.
    pub bytes_deleted: u64,
    /// Bytes marked, to be deleted after the grace period.
    pub bytes_marked: u64,
    /// Index objects replaced by the consolidated one.
    pub index_objects_replaced: usize,
    /// Partial uploads deleted (files an interrupted write left on a local store,
    /// older than the grace period); their bytes count in `bytes_deleted`.
    pub partial_uploads_deleted: usize,
    /// Notes for the operator.
    pub notes: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct PrunePlan {
    version: u8,
    created: DateTime<Utc>,
    packs: Vec<IndexPack>,
}

/// Packs marked for deletion by a prune plan and not yet swept.
///
/// # Errors
/// Storage errors. Unreadable plans are skipped (and reported by prune).
pub fn pending_packs(repo: &Repository) -> Result<Vec<IndexPack>> {
    let mut out = Vec::new();
    for info in repo.list_objects("prune")?.into_values() {
        let raw = match repo.block_on(repo.store().get(&info.key)) {
            Ok(r) => r,
            Err(Error::MissingObject { .. }) => continue,
            Err(e) => return Err(e),
        };
        if let Ok(p) =
            open_postcard::<PrunePlan>(repo.keys(), ObjectKind::PrunePlan, "prune plan", &raw)
        {
            out.extend(p.packs);
        }
    }
    Ok(out)
}

fn used_blobs(repo: &Repository, index: &super::index::Index) -> Result<(HashSet<u64>, usize)> {
    let (snaps, bad) = repo.load_snapshots()?;
    if let Some((id, e)) = bad.first() {
        return Err(Error::Refused(format!(
            "snapshot {} is unreadable ({e}); refusing to prune until `cadang check` is clean",
            id.short()
        )));
    }
    let mut used = HashSet::new();
    let mut stack: Vec<BlobId> = snaps.iter().map(|s| s.1.tree).collect();
    let mut seen: HashSet<BlobId> = HashSet::new();
    while let Some(t) = stack.pop() {
        if !seen.insert(t) {
            continue;
        }
        used.insert(t.prefix_u64());
        let tree = repo.load_tree(index, &t).map_err(|e| {
            Error::Refused(format!(
                "a tree cannot be read ({e}); refusing to prune until `cadang check` is clean"
            ))
        })?;
        for n in tree.nodes {
            match n.kind {
                NodeKind::Dir => stack.extend(n.subtree),
                NodeKind::File => used.extend(n.content.iter().map(|c| c.prefix_u64())),
                _ => {}
            }
        }
    }
    Ok((used, snaps.len()))
}

/// Run prune.
///
/// # Errors
/// `Refused` on a damaged repository, `Locked` when another prune runs,
/// storage errors.
pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let _lease = if opts.dry_run {
        None
    } else {
        Some(super::lock::acquire(repo, "prune")?)
    };
    let mut rep = PruneReport::default();
    // `index`: the index objects, which prune rewrites; `read_index`: also
    // the packs pending deletion, which snapshots may still use.
    let (index, bad_index) = repo.load_index_filtered(|_| true)?;
    let (read_index, _) = repo.load_index()?;
    if let Some((id, e)) = bad_index.first() {
        return Err(Error::Refused(format!(
            "index {} is unreadable ({e}); run `cadang repair index` before pruning",
            id.short()
        )));
    }
    ensure_no_missing_packs(repo, &index)?;
    let (used, nsnaps) = used_blobs(repo, &read_index)?;
    rep.snapshots = nsnaps;
    rep.packs = index.packs().len();
    let listed = repo.list_objects("data")?;
    let is_used = |e: &PackEntry| used.contains(&e.id.prefix_u64());
    // A pack on its way out is put back only for a used blob no indexed pack holds: one
    // whose blobs all have indexed copies (a repack copied them) would be dropped again
    // by the consolidated index, and come back as an orphan at every prune.
    let needed = |e: &PackEntry| is_used(e) && !index.contains(&e.id);

    // ---- sweep: plans past the grace period ----
    let mut plans = Vec::new();
    for info in repo.list_objects("prune")?.into_values() {
        let raw = repo.block_on(repo.store().get(&info.key))?;
        match open_postcard::<PrunePlan>(repo.keys(), ObjectKind::PrunePlan, "prune plan", &raw) {
            Ok(p) => plans.push((info.key, p)),
            Err(e) => rep
                .notes
                .push(format!("{}: unreadable prune plan ignored ({e})", info.key)),
        }
    }
    let in_plans: HashSet<PackId> = plans
        .iter()
        .flat_map(|(_, p)| p.packs.iter().map(|x| x.id))
        .collect();
    let mut resurrect: Vec<IndexPack> = Vec::new();
    let mut delete: Vec<(PackId, u64)> = Vec::new();
    let mut done_plans = Vec::new();
    let indexed: HashSet<PackId> = index.packs().iter().copied().collect();
    for (key, plan) in &plans {
        if opts.now - plan.created < opts.grace {
            continue;
        }
        for p in &plan.packs {
            if indexed.contains(&p.id) {
                continue; // a crash left it indexed: re-evaluated below
            }
            if p.blobs.iter().any(needed) {
                resurrect.push(p.clone());
            } else {
                let size = listed.get(&pack_key(&p.id)).map(|i| i.size).unwrap_or(0);
                delete.push((p.id, size));
            }
        }
        done_plans.push(key.clone());
    }
    // Orphans: listed, not indexed, not pending in a plan, older than grace.
    for (key, info) in &listed {
        let Some(id) = key
            .rsplit('/')
            .next()
            .and_then(|s| PackId::from_hex(s).ok())
        else {
            continue;
        };
        if indexed.contains(&id)
            || in_plans.contains(&id)
            || opts.now - info.last_modified < opts.grace
        {
            continue;
        }
        let header = repo
            .read_pack(&id)
            .and_then(|b| parse_header(repo.keys(), &format!("pack {}", id.short()), &b));
        match header {
            Ok(h) if h.iter().any(needed) => resurrect.push(IndexPack { id, blobs: h }),
            Ok(_) => delete.push((id, info.size)),
            Err(e) => rep.notes.push(format!(
                "unindexed pack {} has an unreadable header ({e}); kept for `cadang repair index`",
                id.short()
            )),
        }
    }

    // ---- mark: classify indexed packs ----
    let by_pack = index.by_pack();
    let mut marked: Vec<IndexPack> = Vec::new();
    let mut repack: Vec<(PackId, Vec<PackEntry>)> = Vec::new();
    for p in index.packs() {
        let entries = by_pack.get(p).cloned().unwrap_or_default();
        let size = listed.get(&pack_key(p)).map(|i| i.size).unwrap_or(0);
        let used_entries: Vec<PackEntry> = entries.iter().copied().filter(is_used).collect();
        // Unused means blobs no snapshot needs; the pack's header is not waste (counted
        // as such, every small pack would be repacked at every prune, for ever).
        let unused_bytes: u64 = entries
            .iter()
            .filter(|e| !is_used(e))
            .map(|e| e.length as u64)
            .sum();
        if used_entries.is_empty() {
            marked.push(IndexPack {
                id: *p,
                blobs: entries,
            });
            rep.bytes_marked += size;
        } else if size > 0
            && unused_bytes.min(size) as f64 * 100.0 / size as f64 > opts.max_unused_percent
        {
            repack.push((*p, used_entries));
            marked.push(IndexPack {
                id: *p,
                blobs: entries,
            });
            rep.bytes_marked += size;
        }
    }
    rep.packs_marked = marked.len();
    rep.packs_repacked = repack.len();
    rep.packs_resurrected = resurrect.len();
    // What interrupted writes left behind: only once older than the grace period, as
    // a running backup's upload in progress looks the same.
    let partial: Vec<ObjectInfo> = repo
        .block_on(repo.store().partial_uploads())?
        .into_iter()
        .filter(|p| opts.now - p.last_modified >= opts.grace)
        .collect();
    if opts.dry_run {
        rep.packs_deleted = delete.len();
        rep.partial_uploads_deleted = partial.len();
        rep.bytes_deleted =
            delete.iter().map(|d| d.1).sum::<u64>() + partial.iter().map(|p| p.size).sum::<u64>();
        return Ok(rep);
    }

    // Put back what is used before deleting anything.
    if !resurrect.is_empty() {
        repo.save_index_file(&IndexFile {
            version: 1,
            packs: resurrect.clone(),
            supersedes: Vec::new(),
        })?;
    }

    // Copy live blobs out of packs to be repacked (verified before copying).
    if !repack.is_empty() {
        let packer = Packer::new(repo, 2, None);
        let fresh = super::index::Index::new();
        for (pid, entries) in &repack {
            let bytes = repo.read_pack(pid)?;
            for e in entries {
                let env = bytes
                    .get(e.offset as usize..e.offset as usize + e.length as usize)
                    .ok_or_else(|| {
                        Error::corrupt(
                            format!("pack {}", pid.short()),
                            "shorter than its index says",
                        )
                    })?;
                open_blob(repo.keys(), e.ty, &e.id, e.raw_length, env)?;
                if packer.claim(&fresh, &e.id) {
                    packer.add_sealed(e.ty, e.id, env, e.raw_length)?;
                }
            }
        }
        packer.finish()?;
    }

    // Write the plan, then the consolidated index without the marked packs.
    let mut old_ids: Vec<IndexId> = repo.list_index_ids()?;
    if !marked.is_empty() {
        let plan = PrunePlan {
            version: 1,
            created: opts.now,
            packs: marked.clone(),
        };
        let sealed = seal_postcard(repo.keys(), ObjectKind::PrunePlan, &plan);
        let key = format!("prune/{}", LockId(random_bytes()));
        repo.block_on(
            repo.store()
                .put_create(&key, Bytes::from(sealed), |_| false),
        )?;
        if opts.grace <= Duration::zero() {
            // No grace: sweep the marked packs in this same run.
            for p in &marked {
                delete.push((
                    p.id,
                    listed.get(&pack_key(&p.id)).map(|i| i.size).unwrap_or(0),
                ));
            }
            done_plans.push(key);
        }
    }
    if !marked.is_empty() || old_ids.len() > 1 {
        old_ids = repo.list_index_ids()?;
        let marked_ids: HashSet<PackId> = marked.iter().map(|m| m.id).collect();
        let (now_index, _) = repo.load_index_filtered(|p| !marked_ids.contains(p))?;
        let grouped: HashMap<PackId, Vec<PackEntry>> = now_index.by_pack();
        let consolidated = IndexFile {
            version: 1,
            packs: grouped
                .into_iter()
                .map(|(id, blobs)| IndexPack { id, blobs })
                .collect(),
            supersedes: old_ids.clone(),
        };
        let new_id = repo.save_index_file(&consolidated)?;
        for id in old_ids.iter().filter(|i| **i != new_id) {
            repo.block_on(repo.store().delete(&format!("index/{id}")))?;
            rep.index_objects_replaced += 1;
        }
    }

    // Sweep. The plans go first: readers treat planned packs as present,
    // so a crash between deleting a pack and deleting its plan would leave
    // an indexed pack missing. The other way round, a crash leaves packs
    // in no index and no plan, which the next prune sweeps as orphans.
    for key in done_plans {
        repo.block_on(repo.store().delete(&key))?;
    }
    for (id, size) in &delete {
        repo.block_on(repo.store().delete(&pack_key(id)))?;
        rep.packs_deleted += 1;
        rep.bytes_deleted += size;
    }
    for p in &partial {
        repo.block_on(repo.store().delete_partial_upload(&p.key))?;
        rep.partial_uploads_deleted += 1;
        rep.bytes_deleted += p.size;
    }
    if rep.packs_marked > 0 && opts.grace > Duration::zero() {
        rep.notes.push(format!(
            "{} pack(s) marked; they are deleted by a prune run after the {}-hour grace period",
            rep.packs_marked,
            opts.grace.num_hours()
        ));
    }
    Ok(rep)
}
