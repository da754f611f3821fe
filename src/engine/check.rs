//! Check: find what is missing or damaged, and name what it affects.
//!
//! A plain check reads the index, the list of packs, every snapshot and every
//! tree; `--read-data` (or a subset) also downloads packs and verifies every
//! blob. Damage is reported per pack with the snapshots and file paths it
//! affects. Check never modifies the repository.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use super::error::{Error, Result};
use super::id::{BlobId, PackId, SnapshotId};
use super::index::Index;
use super::pack::{read_pack_header, with_blob};

use super::repo::{Repository, pack_key};
use super::tree::{self, NodeKind};

/// Which packs to download and verify.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ReadData {
    /// None: structure only.
    #[default]
    None,
    /// Every pack.
    All,
    /// Partition `n` of `t` (1-based): over `t` runs with n = 1..t every pack
    /// is read exactly once.
    Subset { n: u32, t: u32 },
    /// A random fraction of packs (0–100).
    Percent(f64),
}

impl std::str::FromStr for ReadData {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p
                .parse()
                .map_err(|_| format!("`{s}`: expected a percentage like 10%"))?;
            if !(0.0..=100.0).contains(&v) || v.is_nan() {
                return Err(format!("`{s}`: percentage must be between 0 and 100"));
            }
            return Ok(Self::Percent(v));
        }
        let (n, t) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected N/T (e.g. 1/7) or P% (e.g. 5%)"))?;
        let n: u32 = n.parse().map_err(|_| format!("`{s}`: N is not a number"))?;
        let t: u32 = t.parse().map_err(|_| format!("`{s}`: T is not a number"))?;
        if t == 0 || n == 0 || n > t {
            return Err(format!("`{s}`: need 1 ≤ N ≤ T"));
        }
        Ok(Self::Subset { n, t })
    }
}

impl ReadData {
    /// Whether this setting selects `pack`.
    pub fn selects(&self, pack: &PackId) -> bool {
        match *self {
            Self::None => false,
            Self::All => true,
            Self::Subset { n, t } => pack.prefix_u64() % t as u64 == (n - 1) as u64,
            Self::Percent(p) => {
                let r: [u8; 8] = super::id::random_bytes();
                (u64::from_le_bytes(r) as f64 / u64::MAX as f64) * 100.0 < p
            }
        }
    }
}

/// A damaged or missing pack and what it affects.
#[derive(Clone, Debug, Serialize)]
pub struct DamagedPack {
    /// The pack.
    pub pack: String,
    /// What is wrong.
    pub problem: String,
    /// Affected files as `snapshot-short:/path`.
    pub affected_files: Vec<String>,
    /// Affected snapshots.
    pub affected_snapshots: Vec<String>,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Snapshots examined.
    pub snapshots: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Blobs in the index.
    pub blobs: usize,
    /// Packs downloaded and verified.
    pub packs_read: usize,
    /// Errors: the repository is damaged.
    pub errors: Vec<String>,
    /// Non-fatal findings (unreferenced packs, transient read errors).
    pub warnings: Vec<String>,
    /// Packs missing or damaged, with the files they affect.
    pub damaged_packs: Vec<DamagedPack>,
}

impl CheckReport {
    /// Whether no error was found.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty() && self.damaged_packs.is_empty()
    }
}

/// Options for check.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Packs to download and verify.
    pub read_data: ReadData,
}

/// Outcome of verifying one pack: `Ok(retried)` or the problem and the damaged blobs.
type PackVerdict = std::result::Result<bool, (String, Vec<BlobId>)>;

/// Read one pack fully and verify it: its hash, its header, and every
/// indexed blob on its own, so damage is attributed to exactly the blobs
/// (and so files) it hits. Retries twice so a one-off garbled read is not
/// reported as damage. On failure returns the problem and the damaged blobs.
fn verify_pack(
    repo: &Repository,
    index_entries: &[super::pack::PackEntry],
    pack: &PackId,
) -> std::result::Result<bool, (String, Vec<BlobId>)> {
    let mut last = (String::new(), Vec::new());
    for attempt in 0..3 {
        let bytes = match repo.read_pack(pack) {
            Ok(b) => b,
            Err(e) => {
                last = (e.to_string(), index_entries.iter().map(|e| e.id).collect());
                continue;
            }
        };
        let mut problems = Vec::new();
        if *blake3::hash(&bytes).as_bytes() != pack.0 {
            problems.push("content does not match its name (hash mismatch)".to_string());
        }
        match super::pack::parse_header(repo.keys(), "pack", &bytes) {
            Ok(header) => {
                let in_header: HashMap<BlobId, &super::pack::PackEntry> =
                    header.iter().map(|e| (e.id, e)).collect();
                let disagree = index_entries
                    .iter()
                    .filter(|e| {
                        in_header.get(&e.id).is_none_or(|h| {
                            h.offset != e.offset || h.length != e.length || h.ty != e.ty
                        })
                    })
                    .count();
                if disagree > 0 {
                    problems.push(format!(
                        "{disagree} indexed blob(s) disagree with the pack header"
                    ));
                }
            }
            Err(e) => problems.push(format!("header unreadable: {e}")),
        }
        let bad: Vec<BlobId> = index_entries
            .iter()
            .filter(|e| {
                let env = bytes.get(e.offset as usize..e.offset as usize + e.length as usize);
                env.is_none_or(|env| {
                    with_blob(repo.keys(), e.ty, &e.id, e.raw_length, env, |_| ()).is_err()
                })
            })
            .map(|e| e.id)
            .collect();
        if problems.is_empty() && bad.is_empty() {
            return Ok(attempt > 0);
        }
        if bad.is_empty() {
            problems
                .push("all blobs are intact (only the pack's header or trailer is damaged)".into());
        } else {
            problems.push(format!(
                "{} of {} blobs damaged",
                bad.len(),
                index_entries.len()
            ));
        }
        last = (problems.join("; "), bad);
    }
    Err(last)
}

/// Check the repository.
///
/// # Errors
/// Only storage errors that prevent listing; everything else is reported.
pub fn check(repo: &Repository, opts: &CheckOptions) -> Result<CheckReport> {
    let mut rep = CheckReport::default();
    let (snaps, bad_snaps) = repo.load_snapshots()?;
    rep.snapshots = snaps.len();
    for (id, e) in &bad_snaps {
        rep.errors.push(format!("snapshot {}: {e}", id.short()));
    }
    let (index, bad_index) = repo.load_index()?;
    for (id, e) in &bad_index {
        rep.errors.push(format!(
            "index {}: {e} (run `cadang repair index`)",
            id.short()
        ));
    }
    rep.packs = index.packs().len();
    rep.blobs = index.len();
    let by_pack = index.by_pack();
    let listed = repo.list_objects("data")?;

    // Structure: indexed packs exist and are long enough; unindexed packs are orphans.
    let mut bad: BTreeMap<PackId, String> = BTreeMap::new();
    let mut bad_blobs: HashMap<BlobId, PackId> = HashMap::new();
    for (pack, entries) in &by_pack {
        let key = pack_key(pack);
        match listed.get(&key) {
            None => {
                bad.insert(*pack, "pack is missing".into());
            }
            Some(info) => {
                let need = entries
                    .iter()
                    .map(|e| e.offset as u64 + e.length as u64)
                    .max()
                    .unwrap_or(0)
                    + 12;
                if info.size < need {
                    bad.insert(
                        *pack,
                        format!(
                            "pack is truncated ({} bytes, needs at least {need})",
                            info.size
                        ),
                    );
                }
            }
        }
    }
    // Every pack the index or a prune plan names, including a repacked one whose blobs
    // are all found in the new pack now (it is swept after the grace period).
    let indexed: HashSet<String> = index.packs().iter().map(pack_key).collect();
    for key in listed.keys() {
        if !indexed.contains(key) {
            rep.warnings.push(format!("{key}: not referenced by any index (left by an interrupted run; `cadang prune` removes it)"));
        }
    }
    for p in repo.block_on(repo.store().partial_uploads())? {
        rep.warnings.push(format!(
            "{}: a partial upload of {} bytes left by an interrupted write (`cadang prune` removes it after the grace period)",
            p.key, p.size
        ));
    }

    // Data: download and verify the selected packs.
    let selected: Vec<&PackId> = by_pack
        .keys()
        .filter(|p| !bad.contains_key(*p) && opts.read_data.selects(p))
        .collect();
    rep.packs_read = selected.len();
    let selected_set: HashSet<PackId> = selected.iter().map(|p| **p).collect();
    let results: Vec<(PackId, PackVerdict)> = selected
        .par_iter()
        .map(|p| (**p, verify_pack(repo, &by_pack[*p], p)))
        .collect();
    for (p, r) in results {
        match r {
            Ok(true) => rep.warnings.push(format!(
                "pack {}: verified after re-reading (transient read error, not damage)",
                p.short()
            )),
            Ok(false) => {}
            Err((e, blobs)) => {
                bad.insert(p, e);
                bad_blobs.extend(blobs.into_iter().map(|b| (b, p)));
            }
        }
    }

    // Trees: every snapshot's trees load and every referenced blob is indexed.
    // Missing and truncated packs lose every blob they hold.
    for (id, p, _) in index.iter() {
        if bad.contains_key(&p) && !bad_blobs.contains_key(id) && !selected_set.contains(&p) {
            bad_blobs.insert(*id, p);
        }
    }
    let mut trees = TreeWalk {
        repo,
        index: &index,
        bad_blobs: &bad_blobs,
        affected: HashMap::new(),
        seen: HashSet::new(),
        errors: Vec::new(),
    };
    for (sid, snap) in &snaps {
        trees.walk(sid, &snap.tree, "", 0);
    }
    rep.errors.append(&mut trees.errors);
    let mut affected = trees.affected;
    for (pack, problem) in bad {
        let (files, snaps) = affected.remove(&pack).unwrap_or_default();
        rep.damaged_packs.push(DamagedPack {
            pack: pack.to_hex(),
            problem,
            affected_files: files.into_iter().collect(),
            affected_snapshots: snaps.into_iter().collect(),
        });
    }
    Ok(rep)
}

/// The walk over every snapshot's trees: what damage each pack does, and what is
/// missing or unreadable.
struct TreeWalk<'a> {
    repo: &'a Repository,
    index: &'a Index,
    bad_blobs: &'a HashMap<BlobId, PackId>,
    /// Per damaged pack: the files (`snapshot:path`) and snapshots it affects.
    affected: HashMap<PackId, (BTreeSet<String>, BTreeSet<String>)>,
    seen: HashSet<BlobId>,
    errors: Vec<String>,
}

impl TreeWalk<'_> {
    fn walk(&mut self, sid: &SnapshotId, tree: &BlobId, path: &str, depth: usize) {
        if depth > tree::MAX_DEPTH {
            self.errors.push(format!(
                "snapshot {}: {path}/: {}",
                sid.short(),
                tree::too_deep()
            ));
            return;
        }
        // Trees are shared between snapshots; without damage one visit is enough,
        // but damaged blobs must be attributed to every snapshot, so only skip a
        // seen tree when nothing is damaged.
        if self.bad_blobs.is_empty() && !self.seen.insert(*tree) {
            return;
        }
        if let Some(p) = self.bad_blobs.get(tree) {
            let e = self.affected.entry(*p).or_default();
            e.0.insert(format!("{}:{}/ (directory listing)", sid.short(), path));
            e.1.insert(sid.short());
        }
        let t = match self.repo.load_tree(self.index, tree) {
            Ok(t) => t,
            Err(e) => {
                if !self.bad_blobs.contains_key(tree) {
                    self.errors.push(format!(
                        "snapshot {}: directory {}/: {e}",
                        sid.short(),
                        path
                    ));
                }
                return;
            }
        };
        for n in &t.nodes {
            let p = format!("{path}/{}", n.display_name());
            match n.kind {
                NodeKind::Dir => {
                    if let Some(sub) = &n.subtree {
                        self.walk(sid, sub, &p, depth + 1);
                    }
                }
                NodeKind::File => {
                    for c in &n.content {
                        if let Some(pack) = self.bad_blobs.get(c) {
                            let e = self.affected.entry(*pack).or_default();
                            e.0.insert(format!("{}:{p}", sid.short()));
                            e.1.insert(sid.short());
                        } else if !self.index.contains(c) {
                            self.errors.push(format!(
                                "snapshot {}: {p}: chunk {} is not in any pack",
                                sid.short(),
                                c.short()
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Rebuild the index from the packs themselves: every pack's header is read
/// and verified, and one new index object supersedes all existing ones.
/// Packs whose header cannot be read are reported and left out.
///
/// # Errors
/// Storage errors.
pub fn repair_index(repo: &Repository) -> Result<(usize, Vec<String>)> {
    let listed = repo.list_objects("data")?;
    let old = repo.list_index_ids()?;
    let results: Vec<std::result::Result<super::index::IndexPack, String>> = listed
        .par_iter()
        .filter_map(|(key, _)| {
            let id = PackId::from_hex(key.rsplit('/').next()?).ok()?;
            Some(id)
        })
        .map(|id| {
            let bytes = repo
                .read_pack(&id)
                .map_err(|e| format!("pack {}: {e}", id.short()))?;
            let header = read_pack_header(repo.keys(), &id, &bytes).map_err(|e| e.to_string())?;
            Ok(super::index::IndexPack { id, blobs: header })
        })
        .collect();
    let mut packs = Vec::new();
    let mut problems = Vec::new();
    for r in results {
        match r {
            Ok(p) => packs.push(p),
            Err(e) => problems.push(e),
        }
    }
    let n = packs.len();
    let f = super::index::IndexFile {
        version: 1,
        packs,
        supersedes: old.clone(),
    };
    repo.save_index_file(&f)?;
    for id in old {
        repo.block_on(repo.store().delete(&format!("index/{id}")))?;
    }
    Ok((n, problems))
}

/// Refuse destructive maintenance on a repository with missing packs.
///
/// # Errors
/// `Refused` naming the missing packs.
pub fn ensure_no_missing_packs(repo: &Repository, index: &Index) -> Result<()> {
    let listed = repo.list_objects("data")?;
    let missing: Vec<String> = index
        .packs()
        .iter()
        .filter(|p| !listed.contains_key(&pack_key(p)))
        .map(|p| p.short())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Refused(format!(
            "{} indexed pack(s) are missing ({}); refusing to prune a damaged repository — run `cadang check` and restore the packs or `cadang repair index`",
            missing.len(),
            missing.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::id::random_bytes;

    #[test]
    fn subsets_partition_every_pack_exactly_once() {
        let packs: Vec<PackId> = (0..2000).map(|_| PackId(random_bytes())).collect();
        for t in [1u32, 2, 7, 30] {
            for p in &packs {
                let hits = (1..=t)
                    .filter(|n| ReadData::Subset { n: *n, t }.selects(p))
                    .count();
                assert_eq!(hits, 1, "pack selected {hits} times over {t} runs");
            }
        }
        assert!(packs.iter().all(|p| ReadData::All.selects(p)));
        assert!(!packs.iter().any(|p| ReadData::None.selects(p)));
        let some = packs
            .iter()
            .filter(|p| ReadData::Percent(10.0).selects(p))
            .count();
        assert!((100..=300).contains(&some), "10% of 2000 selected {some}");
    }

    #[test]
    fn subset_syntax() {
        assert_eq!(
            "2/7".parse::<ReadData>().unwrap(),
            ReadData::Subset { n: 2, t: 7 }
        );
        assert_eq!("5%".parse::<ReadData>().unwrap(), ReadData::Percent(5.0));
        for bad in ["0/3", "4/3", "x/3", "3", "150%", "-1%", "1/0"] {
            assert!(bad.parse::<ReadData>().is_err(), "{bad}");
        }
    }
}
