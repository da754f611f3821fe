//! Rewrite snapshots without some of what they hold (`cadang rewrite`), or with other
//! tags (`cadang tag`). The first is the answer
//! when backups took what they must not keep — a private key, a password file, personal
//! data an agency has been asked to erase.
//!
//! Each chosen snapshot is walked and the entries its exclude patterns match are left out
//! (the syntax of `backup --exclude`, matched against the absolute path the snapshot
//! records; a directory goes with everything below it). Only the trees on the way to a
//! dropped entry are written again; every other subtree keeps its id, and no data blob
//! is read or written. The new snapshot keeps the original's time, host, user, paths,
//! tags and summary, names the snapshot it replaces (`rewritten_from`: the first one, when that was itself
//! a rewrite) and, unless the
//! originals are forgotten, carries the tag `rewrite`. A snapshot the patterns do not
//! touch is left as it is.
//!
//! Commit order is a backup's: tree packs, index, new snapshot, and only then (with
//! `forget`) the original's deletion. A rewrite stopped at any point leaves every
//! original in place and the repository valid; trees it wrote without a snapshot are
//! what a prune collects.
//!
//! A rewrite removes references, not bytes: the data of the dropped files stays in its
//! packs until a prune repacks them (`prune --max-unused 0` repacks every pack with any
//! unused blob), and in every replica until that is rewritten as well.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use globset::GlobSet;
use serde::Serialize;

use super::backup::build_excludes;
use super::error::{Error, Result};
use super::id::{BlobId, BlobType, SnapshotId};
use super::index::Index;
use super::packer::{Packer, StepHook};
use super::repo::Repository;
use super::snapshot::Snapshot;
use super::tree::{NodeKind, Tree};

/// The tag a rewritten snapshot carries while its original is kept.
pub const REWRITE_TAG: &str = "rewrite";

/// How a rewrite runs.
#[derive(Clone, Default)]
pub struct RewriteOptions {
    /// Patterns of what to leave out (`backup --exclude` syntax).
    pub excludes: Vec<String>,
    /// Delete each original once its rewritten snapshot is stored.
    pub forget: bool,
    /// Report what would change; write nothing.
    pub dry_run: bool,
    /// Called after each durable step (crash-point tests).
    pub hook: Option<StepHook>,
    /// Set to stop at the next directory: nothing becomes visible.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for RewriteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewriteOptions")
            .field("excludes", &self.excludes)
            .field("forget", &self.forget)
            .field("dry_run", &self.dry_run)
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

/// One snapshot the patterns touched.
#[derive(Clone, Debug, Serialize)]
pub struct Rewritten {
    /// The original snapshot.
    pub from: String,
    /// The snapshot that replaces it (none in a dry run).
    pub to: Option<String>,
    /// The entries left out, as absolute paths (a directory ends in `/` and went with
    /// everything below it).
    pub removed: Vec<String>,
}

/// Outcome of a rewrite.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RewriteReport {
    /// Snapshots that lost entries, oldest first.
    pub rewritten: Vec<Rewritten>,
    /// Snapshots the patterns do not touch (left as they are).
    pub unchanged: Vec<String>,
    /// Originals deleted (with `forget`).
    pub forgotten: Vec<String>,
    /// Trees written.
    pub trees_written: u64,
    /// Nothing was written.
    pub dry_run: bool,
}

/// What a directory becomes: `None` when nothing below it matched.
type Outcome = Option<(BlobId, Arc<Removed>)>;

/// The entries left out of a directory: its own, and those of its subdirectories (shared
/// with every other place the same subdirectory's outcome is used, never copied).
#[derive(Debug, Default)]
struct Removed {
    here: Vec<String>,
    below: Vec<Arc<Removed>>,
}

impl Removed {
    fn flatten(&self, out: &mut Vec<String>) {
        out.extend(self.here.iter().cloned());
        for below in &self.below {
            below.flatten(out);
        }
    }
}

struct Rewriter<'a> {
    repo: &'a Repository,
    index: &'a Index,
    excludes: GlobSet,
    /// Trees go to the repository unless this is a dry run.
    packer: Option<Packer>,
    /// A directory's outcome depends on its tree and on where it sits (patterns with a
    /// `/` match whole paths); snapshots of one series share most of both.
    done: HashMap<(PathBuf, BlobId), Outcome>,
    cancel: Option<&'a AtomicBool>,
    trees_written: u64,
}

impl Rewriter<'_> {
    fn tree(&mut self, id: &BlobId, path: &Path, depth: usize) -> Result<Outcome> {
        super::copy::refuse_deeper(id, depth)?;
        let key = (path.to_path_buf(), *id);
        if let Some(outcome) = self.done.get(&key) {
            return Ok(outcome.clone());
        }
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cancelled);
        }
        let tree = self.repo.load_tree(self.index, id)?;
        let mut removed = Removed::default();
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for mut node in tree.nodes {
            let at = path.join(OsStr::from_bytes(&node.name));
            if self.excludes.is_match(&at) {
                let dir = if node.kind == NodeKind::Dir { "/" } else { "" };
                removed.here.push(format!("{}{dir}", at.display()));
                continue;
            }
            if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree)
                && let Some((new, below)) = self.tree(&sub, &at, depth + 1)?
            {
                node.subtree = Some(new);
                removed.below.push(below);
            }
            nodes.push(node);
        }
        let outcome = if removed.here.is_empty() && removed.below.is_empty() {
            None
        } else {
            let raw = Tree {
                version: tree.version,
                nodes,
            }
            .encode();
            let new = self.repo.blob_id(&raw);
            if let Some(packer) = &self.packer
                && packer.claim(self.index, &new)
            {
                packer.add(BlobType::Tree, new, &raw)?;
                self.trees_written += 1;
            }
            Some((new, Arc::new(removed)))
        };
        self.done.insert(key, outcome.clone());
        Ok(outcome)
    }
}

/// Rewrite `snapshots` of `repo` without the entries `opts.excludes` match.
///
/// # Errors
/// `InvalidInput` without patterns or with a malformed one; `Refused` when a snapshot
/// would be left empty; damage in a snapshot's trees and storage
/// errors stop the rewrite before any snapshot is written.
pub fn rewrite(
    repo: &Repository,
    snapshots: Vec<(SnapshotId, Snapshot)>,
    opts: &RewriteOptions,
) -> Result<RewriteReport> {
    let excludes = build_excludes(&opts.excludes)?;
    if excludes.is_empty() {
        return Err(Error::InvalidInput(
            "no exclude pattern given: say what to leave out with --exclude or --exclude-file"
                .into(),
        ));
    }
    let mut snapshots = snapshots;
    snapshots.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    snapshots.dedup_by_key(|(id, _)| *id);
    let (index, _) = repo.load_index()?;
    let mut w = Rewriter {
        repo,
        index: &index,
        excludes,
        packer: (!opts.dry_run).then(|| Packer::new(repo, 1, opts.hook.clone())),
        done: HashMap::new(),
        cancel: opts.cancel.as_deref(),
        trees_written: 0,
    };
    let walked = walk_all(&mut w, snapshots);
    // What was uploaded is indexed even when the walk stopped, so no pack is left
    // unknown to the index (the trees in it are unreferenced until a prune takes them).
    let indexes = match &w.packer {
        Some(packer) => packer.finish(),
        None => Ok(Vec::new()),
    };
    let (changed, unchanged) = walked?;
    let indexes = indexes?;
    let mut report = RewriteReport {
        unchanged,
        trees_written: w.trees_written,
        dry_run: opts.dry_run,
        ..RewriteReport::default()
    };
    // Originals and their replacements, oldest first.
    let mut replaced: Vec<(SnapshotId, SnapshotId)> = Vec::new();
    for (id, original, tree, removed) in changed {
        let to = if opts.dry_run {
            None
        } else {
            let mut new = original.clone();
            new.tree = tree;
            new.parent = original.parent.map(|p| replacement(&replaced, p));
            // A snapshot rewritten again keeps naming the first: requests written before
            // either rewrite still find it.
            new.rewritten_from = Some(original.rewritten_from.unwrap_or(id));
            for index in &indexes {
                if !new.indexes.contains(index) {
                    new.indexes.push(*index);
                }
            }
            if !opts.forget && !new.tags.iter().any(|t| t == REWRITE_TAG) {
                new.tags.push(REWRITE_TAG.to_owned());
            }
            let new_id = repo.save_snapshot(&new)?;
            if let Some(hook) = &opts.hook {
                hook("snapshot");
            }
            replaced.push((id, new_id));
            Some(new_id.to_hex())
        };
        let mut paths = Vec::new();
        removed.flatten(&mut paths);
        report.rewritten.push(Rewritten {
            from: id.to_hex(),
            to,
            removed: paths,
        });
    }
    if opts.forget && !opts.dry_run {
        for (original, _) in &replaced {
            repo.delete_snapshot(original)?;
            if let Some(hook) = &opts.hook {
                hook("forget");
            }
        }
        report.forgotten = report.rewritten.iter().map(|r| r.from.clone()).collect();
    }
    Ok(report)
}

/// What `id` became in this run (`id` itself when it was not replaced): a replaced
/// snapshot's children point at its replacement.
fn replacement(replaced: &[(SnapshotId, SnapshotId)], id: SnapshotId) -> SnapshotId {
    replaced
        .iter()
        .find(|(old, _)| *old == id)
        .map_or(id, |(_, new)| *new)
}

/// A change of snapshot tags (`cadang tag`).
#[derive(Clone, Debug, Default)]
pub struct TagChange {
    /// Replace the tags by these.
    pub set: Option<Vec<String>>,
    /// Tags to add.
    pub add: Vec<String>,
    /// Tags to remove.
    pub remove: Vec<String>,
    /// Tags starting with one of these are kept whatever `set` and `remove` say (the
    /// daemon finds its snapshots by its own tags).
    pub protected_prefixes: Vec<String>,
}

impl TagChange {
    fn protected(&self, tag: &str) -> bool {
        self.protected_prefixes
            .iter()
            .any(|p| tag.starts_with(p.as_str()))
    }

    /// The tags `tags` become.
    #[must_use]
    pub fn apply(&self, tags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = match &self.set {
            Some(set) => tags
                .iter()
                .filter(|t| self.protected(t))
                .chain(set)
                .cloned()
                .collect(),
            None => tags.to_vec(),
        };
        out.extend(self.add.iter().cloned());
        out.retain(|t| self.protected(t) || !self.remove.contains(t));
        let mut seen = std::collections::HashSet::new();
        out.retain(|t| !t.is_empty() && seen.insert(t.clone()));
        out
    }

    /// The tags of `remove` that this change keeps because they are protected.
    #[must_use]
    pub fn refused_removals(&self) -> Vec<&str> {
        self.remove
            .iter()
            .filter(|t| self.protected(t))
            .map(String::as_str)
            .collect()
    }
}

/// Change the tags of `snapshots`. Each whose tags change is replaced by a snapshot that
/// differs only in its tags and `rewritten_from`; the original is deleted once its
/// replacement is stored (a stop in between leaves both, never neither). Returns the
/// (original, replacement) pairs, oldest first; snapshots whose tags stay are left alone.
///
/// # Errors
/// Storage errors; what was replaced before one stays replaced.
pub fn retag(
    repo: &Repository,
    snapshots: Vec<(SnapshotId, Snapshot)>,
    change: &TagChange,
) -> Result<Vec<(SnapshotId, SnapshotId)>> {
    let mut snapshots = snapshots;
    snapshots.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    snapshots.dedup_by_key(|(id, _)| *id);
    let mut replaced: Vec<(SnapshotId, SnapshotId)> = Vec::new();
    for (id, original) in snapshots {
        let tags = change.apply(&original.tags);
        if tags == original.tags {
            continue;
        }
        let mut new = original.clone();
        new.tags = tags;
        new.rewritten_from = Some(original.rewritten_from.unwrap_or(id));
        new.parent = original.parent.map(|p| replacement(&replaced, p));
        let new_id = repo.save_snapshot(&new)?;
        repo.delete_snapshot(&id)?;
        replaced.push((id, new_id));
    }
    Ok(replaced)
}

/// Snapshots that lose entries (with their new root tree and what they lose), and the ids
/// of those that do not.
type Walked = (
    Vec<(SnapshotId, Snapshot, BlobId, Arc<Removed>)>,
    Vec<String>,
);

fn walk_all(w: &mut Rewriter<'_>, snapshots: Vec<(SnapshotId, Snapshot)>) -> Result<Walked> {
    // Refused before anything is written.
    if let Some((id, _)) = snapshots
        .iter()
        .find(|(_, s)| !s.paths.is_empty() && s.paths.iter().all(|p| w.excludes.is_match(p)))
    {
        return Err(Error::Refused(format!(
            "the patterns leave out every path of snapshot {}, and a snapshot is never \
             rewritten empty",
            id.short()
        )));
    }
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for (id, snapshot) in snapshots {
        match w.tree(&snapshot.tree, Path::new("/"), 0)? {
            None => unchanged.push(id.to_hex()),
            Some((tree, removed)) => changed.push((id, snapshot, tree, removed)),
        }
    }
    Ok((changed, unchanged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::backup::{BackupOptions, BackupProgress, backup};
    use crate::engine::repo::test_repository;

    fn back_up(
        repo: &Repository,
        src: &Path,
        tags: &[&str],
    ) -> crate::engine::backup::BackupResult {
        backup(
            repo,
            &BackupOptions {
                paths: vec![src.to_path_buf()],
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                ..Default::default()
            },
            &BackupProgress::default(),
        )
        .unwrap()
    }

    /// The paths below `tree`, files and directories.
    fn paths(repo: &Repository, index: &Index, tree: &BlobId, at: &str, out: &mut Vec<String>) {
        for node in repo.load_tree(index, tree).unwrap().nodes {
            let path = format!("{at}/{}", node.display_name());
            if let Some(sub) = node.subtree {
                paths(repo, index, &sub, &path, out);
            }
            out.push(path);
        }
    }

    /// Two directories with identical content share their trees; a pattern with a `/`
    /// takes the file out of one of them only, and a cancelled rewrite writes no snapshot.
    #[test]
    fn identical_subtrees_at_two_places_are_rewritten_by_place() {
        let (_runtime, dir, repo) = test_repository();
        let src = dir.path().join("src");
        for place in ["a", "b"] {
            std::fs::create_dir_all(src.join(place)).unwrap();
            std::fs::write(src.join(place).join("secret"), b"same").unwrap();
            std::fs::write(src.join(place).join("kept"), b"same too").unwrap();
        }
        let made = back_up(&repo, &src, &[]);
        let secret_in_a = format!("{}/a/secret", src.display());
        let options = |cancel: bool| RewriteOptions {
            excludes: vec![secret_in_a.clone()],
            cancel: Some(Arc::new(AtomicBool::new(cancel))),
            ..Default::default()
        };
        let chosen = vec![(made.snapshot_id, made.snapshot.clone())];
        assert!(matches!(
            rewrite(&repo, chosen.clone(), &options(true)),
            Err(Error::Cancelled)
        ));
        assert_eq!(repo.load_snapshots().unwrap().0.len(), 1);

        let report = rewrite(&repo, chosen, &options(false)).unwrap();
        assert_eq!(report.rewritten.len(), 1);
        assert_eq!(report.rewritten[0].removed, vec![secret_in_a.clone()]);
        // The root, the directories on the way and `a` are new; `b` keeps its tree.
        assert_eq!(report.trees_written as usize, src.components().count() + 1);
        let new: SnapshotId = report.rewritten[0].to.as_ref().unwrap().parse().unwrap();
        let snapshot = repo.load_snapshot(&new).unwrap();
        assert_eq!(snapshot.rewritten_from, Some(made.snapshot_id));
        assert_eq!(snapshot.time, made.snapshot.time);
        assert!(snapshot.tags.contains(&REWRITE_TAG.to_owned()));
        let (index, _) = repo.load_index_for(&snapshot).unwrap();
        let mut listed = Vec::new();
        paths(&repo, &index, &snapshot.tree, "", &mut listed);
        let below = |rest: &str| format!("{}/{rest}", src.display());
        assert!(!listed.contains(&secret_in_a), "{listed:?}");
        for kept in ["a/kept", "b/secret", "b/kept"] {
            assert!(listed.contains(&below(kept)), "{kept}: {listed:?}");
        }
    }

    #[test]
    fn tag_changes_keep_protected_tags_and_each_tag_once() {
        let tags = |list: &[&str]| list.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        let change = |set: Option<&[&str]>, add: &[&str], remove: &[&str]| TagChange {
            set: set.map(tags),
            add: tags(add),
            remove: tags(remove),
            protected_prefixes: tags(&["plan:"]),
        };
        let have = tags(&["plan:3", "nightly"]);
        assert_eq!(
            change(None, &["hold"], &[]).apply(&have),
            tags(&["plan:3", "nightly", "hold"])
        );
        assert_eq!(change(None, &["nightly"], &[]).apply(&have), have);
        assert_eq!(
            change(None, &[], &["nightly"]).apply(&have),
            tags(&["plan:3"])
        );
        assert_eq!(
            change(Some(&["a", "a", ""]), &[], &[]).apply(&have),
            tags(&["plan:3", "a"])
        );
        let refused = change(None, &[], &["plan:3", "x"]);
        assert_eq!(refused.apply(&have), have);
        assert_eq!(refused.refused_removals(), vec!["plan:3"]);
    }

    /// A tag change replaces each changed snapshot (the parent pointing at the
    /// replacement) and deletes the original; an unchanged one stays as it is.
    #[test]
    fn retagged_snapshots_replace_their_originals() {
        let (_runtime, dir, repo) = test_repository();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let mut made = Vec::new();
        for n in 0..3 {
            std::fs::write(src.join("f"), format!("{n}")).unwrap();
            let tags: &[&str] = if n == 2 { &["hold"] } else { &[] };
            made.push(back_up(&repo, &src, tags).snapshot_id);
        }
        let change = TagChange {
            add: vec!["hold".into()],
            ..TagChange::default()
        };
        let (all, _) = repo.load_snapshots().unwrap();
        let replaced = retag(&repo, all, &change).unwrap();
        assert_eq!(
            replaced.iter().map(|(from, _)| *from).collect::<Vec<_>>(),
            made[..2].to_vec()
        );
        let (left, _) = repo.load_snapshots().unwrap();
        let ids: Vec<SnapshotId> = left.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![replaced[0].1, replaced[1].1, made[2]]);
        assert!(left.iter().all(|(_, s)| s.tags == vec!["hold".to_owned()]));
        assert_eq!(left[0].1.rewritten_from, Some(made[0]));
        assert_eq!(left[1].1.parent, Some(replaced[0].1));
        assert_eq!(
            left[2].1.parent,
            Some(made[1]),
            "an unchanged snapshot is not rewritten"
        );
    }
}
