//! Restores to an agent from a plan on an existing restic repository.
//!
//! Restic cannot stream a snapshot to another machine, and an agent holds no repository
//! password, so the daemon restores on its own host: `restic restore --verify` into a
//! private staging directory (mode 0700 under the scratch directory), verified by cadang
//! against `restic ls` (every entry present with its type and size, every file read back,
//! nothing extra). The staged tree is then streamed to the agent exactly as a native
//! restore is: each file's chunks named by keyed BLAKE3 under a key made for this job
//! only, so the agent checks every chunk it receives and every file it writes. A chunk
//! whose staged bytes changed after they were hashed fails its file. The staging copy is
//! the agency's data and is removed however the restore ends.
//!
//! Files restic could not restore are not sent; they are listed with restic's reason and
//! the restore ends `verify_differences`, never `ok`.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::runtime::Handle;

use super::stream::{Outgoing, RestoreSource, stream_restore};
use super::{Progress, RemoteOptions, choose_position, set_progress};
use crate::app::{MAX_FAILED_LISTED, RestoreEnd};
use crate::catalog::{PlanId, RestoreRecord, Server};
use crate::engine::browse::Patterns;
use crate::engine::crypto::IdKeys;
use crate::engine::format::encode_blob_payload;
use crate::hub::AgentHub;
use crate::jobs::Repositories;
use crate::remote::BrowseError;
use crate::restic::{
    Cancel, NodeType, Restic, ResticError, ResticNode, ResticRepo, ResticSnapshot, RestoreOptions,
    RestoreProblem,
};
use crate::rpc::pb;

/// Length of the pieces a staged file is sent in.
const PIECE: u64 = 1 << 20;

fn failed(stats: serde_json::Value, error: String) -> RestoreEnd {
    RestoreEnd {
        status: "failed".into(),
        stats_json: stats.to_string(),
        error: Some(error),
    }
}

/// The staging directory, removed when dropped.
struct Staging(PathBuf);

impl Staging {
    /// A new, empty, private directory at `path` under `scratch` (a leftover of a
    /// restore taken over from a daemon that died is removed first).
    fn create(scratch: &Path, path: PathBuf) -> Result<Staging, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(scratch)
            .map_err(|error| format!("cannot create {}: {error}", scratch.display()))?;
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .map_err(|error| format!("cannot clear {}: {error}", path.display()))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
        Ok(Staging(path))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(error) = std::fs::remove_dir_all(&self.0)
        {
            tracing::warn!(staging = %self.0.display(), %error, "cannot remove a restore's staging copy");
        }
    }
}

/// Why a restore from a restic repository cannot delete what its snapshot does not hold.
pub const DELETE_NEEDS_CADANG: &str = "--delete restores only the server's cadang snapshots: a restic snapshot is restored through a staging copy, which does not say which directories it holds whole";

/// Restores `restore` (which names `plan`) from the plan's restic repository `repo` to
/// the agent of `target`. Returns how it ended and the snapshot restored (full id) once
/// resolved. Blocks; runs on a blocking thread.
#[allow(clippy::too_many_arguments)]
pub fn restore_from_restic(
    repositories: &Repositories,
    hub: &AgentHub,
    handle: &Handle,
    agency_code: &str,
    repo: &ResticRepo,
    plan: PlanId,
    target: &Server,
    restore: &RestoreRecord,
    cancel: Arc<AtomicBool>,
    progress: &Progress,
    options: RemoteOptions,
) -> (RestoreEnd, Option<String>) {
    // Refused when the restore is asked for; a record that holds it anyway is not
    // restored without the deletion it asked for.
    if restore.delete {
        return (
            failed(json!({ "engine": "restic" }), DELETE_NEEDS_CADANG.into()),
            None,
        );
    }
    // Restic stages what the paths select; what the restore leaves out is left out of
    // what is streamed to the agent, with the engine's pattern syntax.
    let excludes = match super::restore_excludes(restore) {
        Ok(excludes) => excludes,
        Err(error) => return (failed(json!({ "engine": "restic" }), error), None),
    };
    // The replica step: the same snapshot, from the plan's restic replica (restic
    // cannot read one repository's damaged data from another).
    let replica;
    let repo = if restore.use_replica {
        match repositories.restic_replica(agency_code, plan) {
            Ok(found) => {
                replica = found;
                &replica
            }
            Err(error) => {
                return (
                    failed(
                        json!({ "engine": "restic", "replica": true }),
                        format!("plan {plan}'s restic replica: {error}"),
                    ),
                    None,
                );
            }
        }
    } else {
        repo
    };
    // The scheduler's flag, turned into restic's signal (SIGINT, then SIGKILL).
    let signal = Cancel::new();
    let watcher = {
        let (signal, cancel) = (signal.clone(), cancel.clone());
        handle.spawn(async move {
            while !cancel.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            signal.cancel();
        })
    };
    let outcome = handle.block_on(restic_part(
        repositories,
        repo,
        plan,
        restore,
        &signal,
        progress,
    ));
    watcher.abort();
    let (staging, snapshot, problems, restic_verified) = match outcome {
        Ok(staged) => staged,
        Err((error, snapshot)) => {
            let status = if cancel.load(Ordering::Relaxed) {
                "cancelled"
            } else {
                "failed"
            };
            return (
                RestoreEnd {
                    status: status.into(),
                    stats_json: json!({ "engine": "restic", "snapshot": snapshot }).to_string(),
                    error: Some(error),
                },
                snapshot,
            );
        }
    };
    let snapshot_hex = snapshot.clone();
    // Restic's problems, by path inside the snapshot: not sent, listed as unreadable.
    let skipped: HashSet<Vec<u8>> = problems
        .iter()
        .map(|problem| problem.path.trim_start_matches('/').as_bytes().to_vec())
        .collect();
    let mut unreadable: Vec<pb::FileProblem> = problems
        .iter()
        .take(MAX_FAILED_LISTED)
        .map(|problem| {
            let said = problem.to_string();
            let what = said
                .strip_prefix(&format!("{}: ", problem.path))
                .unwrap_or(&said);
            pb::FileProblem {
                path: problem.path.clone(),
                reason: format!("not restored by restic: {what}"),
            }
        })
        .collect();
    // A key for this job only: the ids name the staged pieces, nothing else.
    let mut key = [0u8; 32];
    if let Err(error) = getrandom::fill(&mut key) {
        return (
            failed(
                json!({ "engine": "restic" }),
                format!("no randomness for the job's id key: {error}"),
            ),
            Some(snapshot_hex),
        );
    }
    let ids = IdKeys::from_parts(key, 0);
    set_progress(
        progress,
        json!({ "snapshot": snapshot_hex, "phase": "hashing the staged copy" }),
    );
    let mut entries = Vec::new();
    if let Err(error) = staged_entries(
        &staging.0,
        &staging.0,
        &skipped,
        &excludes,
        &ids,
        &mut entries,
        &mut unreadable,
        &cancel,
    ) {
        return (
            failed(
                json!({ "engine": "restic", "snapshot": snapshot_hex }),
                error,
            ),
            Some(snapshot_hex),
        );
    }
    let (id_key, _) = ids.to_parts();
    let outgoing = Outgoing::for_restore(
        target,
        restore,
        id_key,
        &snapshot_hex,
        entries,
        options.reconnect_wait,
    );
    let mut source = Staged {
        root: staging.0.clone(),
        ids,
        open: None,
    };
    let end = match stream_restore(
        handle,
        hub,
        outgoing,
        &mut source,
        unreadable,
        &cancel,
        progress,
    ) {
        Ok(streamed) => streamed.judged(
            &snapshot_hex,
            json!({
                "engine": "restic",
                "restic_files_verified": restic_verified,
                "restic_problems": problems.len(),
                "replica": restore.use_replica,
            }),
        ),
        Err(end) => end,
    };
    drop(staging);
    (end, Some(snapshot_hex))
}

/// Every snapshot of the restic repository `repo`, oldest first: what a restore from
/// it chooses among.
///
/// # Errors
/// The binary missing or restic failing, with the reason.
pub async fn restic_snapshots(
    repositories: &Repositories,
    repo: &ResticRepo,
) -> Result<Vec<ResticSnapshot>, String> {
    let restic = Restic::locate(repositories.restic_binary())
        .await
        .map_err(|error| error.to_string())?;
    sorted_snapshots(&restic, repo).await
}

/// The id a restore names a snapshot of a restic plan by: in a replica, the id its
/// copy records as its original (restic's `copy` keeps it), elsewhere its own.
pub fn logical_id(snapshot: &ResticSnapshot) -> &str {
    snapshot.original.as_ref().unwrap_or(&snapshot.id).as_str()
}

/// What a listing of a restic plan's snapshot found.
#[derive(Debug)]
pub struct ResticListing {
    /// The snapshot listed.
    pub snapshot: ResticSnapshot,
    /// The entries, in restic's order (names sorted, a directory before what it holds).
    pub entries: Vec<ResticNode>,
    /// More entries were there than the limit allowed.
    pub truncated: bool,
}

/// What a search of a restic plan's snapshots found.
#[derive(Debug)]
pub struct ResticMatches {
    /// The snapshots with a match, newest first, each with what matched.
    pub snapshots: Vec<(ResticSnapshot, Vec<ResticNode>)>,
    /// The limit stopped the search: more entries, or snapshots not searched.
    pub truncated: bool,
}

fn browse_error(error: ResticError) -> BrowseError {
    match error {
        ResticError::InvalidInput(message) => BrowseError::Request(message),
        other => BrowseError::Repository(other.to_string()),
    }
}

/// A snapshot path in restic's form (`/var/www`; `/` for the root).
fn restic_path(path: &str) -> Result<String, BrowseError> {
    let mut clean = String::new();
    for part in path.split('/').filter(|part| !part.is_empty()) {
        if part == "." || part == ".." {
            return Err(BrowseError::Request(format!(
                "{path:?}: a path in a snapshot has no `.` or `..` components"
            )));
        }
        clean.push('/');
        clean.push_str(part);
    }
    if clean.is_empty() {
        clean.push('/');
    }
    Ok(clean)
}

/// The snapshots of the restic repository `repo` of `plan`, oldest first, with the
/// restic that reads them.
async fn browsed_snapshots(
    repositories: &Repositories,
    repo: &ResticRepo,
) -> Result<(Restic, Vec<ResticSnapshot>), BrowseError> {
    let restic = Restic::locate(repositories.restic_binary())
        .await
        .map_err(|error| BrowseError::Repository(error.to_string()))?;
    let snapshots = sorted_snapshots(&restic, repo)
        .await
        .map_err(BrowseError::Repository)?;
    Ok((restic, snapshots))
}

fn chosen_snapshot(
    snapshots: &[ResticSnapshot],
    spec: &str,
    plan: PlanId,
) -> Result<ResticSnapshot, BrowseError> {
    let position = choose_position(
        snapshots,
        |snapshot| logical_id(snapshot).to_owned(),
        |snapshot| snapshot.time,
        spec,
        &format!("the restic repository of plan {plan}"),
    )
    .map_err(BrowseError::Request)?;
    snapshots
        .get(position)
        .cloned()
        .ok_or_else(|| BrowseError::Request(format!("no snapshot `{spec}`")))
}

/// The entries at `path` of the snapshot `spec` names (the forms of
/// [`choose_position`]) in `plan`'s restic repository `repo`: a directory's entries
/// (with `recursive`, everything below it), or the one entry a file's path names — as
/// [`crate::remote::list_server_files`] gives for cadang's own snapshots. At most
/// `limit` entries; restic is stopped once they are found.
///
/// # Errors
/// [`BrowseError::Request`] for a snapshot or path the repository does not hold;
/// [`BrowseError::Repository`] when restic cannot run or read it.
pub async fn list_restic_files(
    repositories: &Repositories,
    repo: &ResticRepo,
    plan: PlanId,
    spec: &str,
    path: &str,
    recursive: bool,
    limit: usize,
) -> Result<ResticListing, BrowseError> {
    let dir = restic_path(path)?;
    let (restic, snapshots) = browsed_snapshots(repositories, repo).await?;
    let snapshot = chosen_snapshot(&snapshots, spec, plan)?;
    let mut entries = Vec::new();
    let mut truncated = false;
    let mut found = dir == "/";
    restic
        .walk(repo, snapshot.id.as_str(), Some(&dir), recursive, |node| {
            if node.path == dir {
                // The entry the path names: a directory lists what it holds, any
                // other entry itself.
                found = true;
                if node.node_type != NodeType::Dir {
                    entries.push(node);
                }
                return true;
            }
            if entries.len() >= limit {
                truncated = true;
                return false;
            }
            entries.push(node);
            true
        })
        .await
        .map_err(browse_error)?;
    if !found {
        return Err(BrowseError::Request(format!(
            "{dir} is not in snapshot {}",
            logical_id(&snapshot)
        )));
    }
    Ok(ResticListing {
        snapshot,
        entries,
        truncated,
    })
}

/// The entries of `plan`'s restic snapshots (`spec` alone when given) that `patterns`
/// match, newest snapshot first, at most `limit` in all — as
/// [`crate::remote::find_server_files`] gives for cadang's own snapshots. Each
/// snapshot is one `restic ls`; the search stops at the limit.
///
/// # Errors
/// As [`list_restic_files`].
pub async fn find_restic_files(
    repositories: &Repositories,
    repo: &ResticRepo,
    plan: PlanId,
    spec: Option<&str>,
    patterns: &Patterns,
    limit: usize,
) -> Result<ResticMatches, BrowseError> {
    let (restic, mut snapshots) = browsed_snapshots(repositories, repo).await?;
    if let Some(spec) = spec {
        snapshots = vec![chosen_snapshot(&snapshots, spec, plan)?];
    }
    let mut found = ResticMatches {
        snapshots: Vec::new(),
        truncated: false,
    };
    let mut count = 0;
    for snapshot in snapshots.into_iter().rev() {
        let mut matched = Vec::new();
        restic
            .walk(repo, snapshot.id.as_str(), None, true, |node| {
                if !patterns.is_match(node.name.as_bytes(), node.path.as_bytes()) {
                    return true;
                }
                if count >= limit {
                    found.truncated = true;
                    return false;
                }
                count += 1;
                matched.push(node);
                true
            })
            .await
            .map_err(browse_error)?;
        if !matched.is_empty() {
            found.snapshots.push((snapshot, matched));
        }
        if found.truncated {
            break;
        }
    }
    Ok(found)
}

async fn sorted_snapshots(
    restic: &Restic,
    repo: &ResticRepo,
) -> Result<Vec<ResticSnapshot>, String> {
    let mut snapshots = restic
        .snapshots(repo, &[])
        .await
        .map_err(|error| error.to_string())?;
    snapshots.sort_by(|a, b| {
        a.time
            .cmp(&b.time)
            .then_with(|| a.id.as_str().cmp(b.id.as_str()))
    });
    Ok(snapshots)
}

/// Restic's half: the snapshot chosen among all of the repository's, restored into
/// staging and verified. Returns the staging directory, the snapshot's full id, the
/// paths restic could not restore, and how many files its verification read back; or
/// the error and the snapshot when it was resolved.
async fn restic_part(
    repositories: &Repositories,
    repo: &ResticRepo,
    plan: PlanId,
    restore: &RestoreRecord,
    signal: &Cancel,
    progress: &Progress,
) -> Result<(Staging, String, Vec<RestoreProblem>, u64), (String, Option<String>)> {
    let restic = Restic::locate(repositories.restic_binary())
        .await
        .map_err(|error| (error.to_string(), None))?;
    let snapshots = sorted_snapshots(&restic, repo)
        .await
        .map_err(|error| (error, None))?;
    // A snapshot is named by its id in the plan's repository: in the replica, that is
    // the id its copy records as its original.
    let logical = |snapshot: &ResticSnapshot| logical_id(snapshot).to_owned();
    let position = choose_position(
        &snapshots,
        logical,
        |snapshot| snapshot.time,
        &restore.snapshot,
        &if restore.use_replica {
            format!("the restic replica of plan {plan}")
        } else {
            format!("the restic repository of plan {plan}")
        },
    )
    .map_err(|error| (error, None))?;
    let chosen = snapshots
        .get(position)
        .ok_or_else(|| (format!("no snapshot `{}`", restore.snapshot), None))?;
    let snapshot = logical(chosen);
    let in_repo = chosen.id.as_str().to_owned();
    let resolved = Some(snapshot.clone());
    set_progress(
        progress,
        json!({ "snapshot": snapshot, "phase": "restic restore" }),
    );
    let staging = Staging::create(
        repositories.scratch(),
        repositories
            .scratch()
            .join(format!("restore-{}", restore.id)),
    )
    .map_err(|error| (error, resolved.clone()))?;
    let paths: Vec<String> = serde_json::from_str(&restore.paths_json).unwrap_or_default();
    let options = RestoreOptions {
        includes: paths,
        ..RestoreOptions::new(in_repo, &staging.0)
    };
    match restic.restore(repo, &options, signal).await {
        Ok(outcome) => Ok((staging, snapshot, Vec::new(), outcome.verified.files)),
        Err(ResticError::RestoreIncomplete { problems, .. }) => {
            Ok((staging, snapshot, problems, 0))
        }
        Err(error) => Err((error.to_string(), resolved)),
    }
}

/// The entries under `dir` (directories before what they hold, names in byte order),
/// each file with the ids of its pieces. Paths in `skipped`, and entries `excludes`
/// matches (with what is below them), are left out; a file that cannot be read is
/// listed in `unreadable` and left out.
#[allow(clippy::too_many_arguments)]
fn staged_entries(
    root: &Path,
    dir: &Path,
    skipped: &HashSet<Vec<u8>>,
    excludes: &globset::GlobSet,
    ids: &IdKeys,
    out: &mut Vec<pb::RestoreEntry>,
    unreadable: &mut Vec<pb::FileProblem>,
    cancel: &AtomicBool,
) -> Result<(), String> {
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|error| format!("cannot read the staged {}: {error}", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .map_err(|error| format!("cannot read the staged {}: {error}", dir.display()))?;
    children.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    for path in children {
        if cancel.load(Ordering::Relaxed) {
            return Err("stopped by the daemon".into());
        }
        let rel = path
            .strip_prefix(root)
            .map_err(|_| format!("{} is outside the staging directory", path.display()))?
            .as_os_str()
            .as_bytes()
            .to_vec();
        if skipped.contains(&rel) || super::excluded(excludes, &rel) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|error| format!("cannot read the staged {}: {error}", path.display()))?;
        let kind = meta.file_type();
        let mut entry = pb::RestoreEntry {
            path: rel.clone(),
            kind: String::new(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            size: 0,
            content: Vec::new(),
            lengths: Vec::new(),
            link_target: Vec::new(),
            hardlink: 0,
            // What restic restored into the staging copy.
            xattrs: crate::rpc::xattrs_to_wire(crate::engine::xattrs::read(&path).map_err(
                |error| {
                    format!(
                        "cannot read the extended attributes of the staged {}: {error}",
                        path.display()
                    )
                },
            )?),
            in_place: false,
            clean: false,
            reuse: Vec::new(),
        };
        if kind.is_dir() {
            entry.kind = "dir".into();
            out.push(entry);
            staged_entries(root, &path, skipped, excludes, ids, out, unreadable, cancel)?;
            continue;
        }
        if kind.is_file() {
            entry.kind = "file".into();
            // restic restored the links of a hard-linked file as links: keep them so.
            if meta.nlink() > 1 {
                entry.hardlink = meta.ino() ^ meta.dev().rotate_left(32);
            }
            match piece_ids(&path, ids) {
                Ok((content, lengths, size)) => {
                    entry.content = content;
                    entry.lengths = lengths;
                    entry.size = size;
                    out.push(entry);
                }
                Err(error) => unreadable.push(pb::FileProblem {
                    path: format!("/{}", String::from_utf8_lossy(&rel)),
                    reason: format!("cannot read the staged copy: {error}"),
                }),
            }
            continue;
        }
        entry.kind = if kind.is_symlink() {
            entry.link_target = std::fs::read_link(&path)
                .map_err(|error| format!("cannot read the staged {}: {error}", path.display()))?
                .into_os_string()
                .into_vec();
            "symlink"
        } else if kind.is_fifo() {
            "fifo"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_char_device() {
            "chardev"
        } else {
            "blockdev"
        }
        .into();
        out.push(entry);
    }
    Ok(())
}

/// The ids and lengths of a file's pieces, and its size.
fn piece_ids(path: &Path, ids: &IdKeys) -> std::io::Result<(Vec<Vec<u8>>, Vec<u32>, u64)> {
    let mut file = open_staged(path)?;
    let mut content = Vec::new();
    let mut lengths = Vec::new();
    let mut size = 0u64;
    let mut buf = Vec::with_capacity(PIECE as usize);
    loop {
        buf.clear();
        let read = (&mut file).take(PIECE).read_to_end(&mut buf)?;
        if read == 0 {
            break;
        }
        content.push(ids.blob_id(&buf).0.to_vec());
        lengths.push(read as u32);
        size += read as u64;
    }
    Ok((content, lengths, size))
}

fn open_staged(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The staged files, read piece by piece as they are sent.
struct Staged {
    root: PathBuf,
    ids: IdKeys,
    /// The file being sent (its path relative to the root) where it is open, the next
    /// piece to read and where that piece starts.
    open: Option<(Vec<u8>, File, usize, u64)>,
}

impl RestoreSource for Staged {
    fn chunk(&mut self, entry: &pb::RestoreEntry, n: usize) -> Result<pb::RestoreChunk, String> {
        // Pieces are asked for in order (some skipped, which the agent holds already):
        // the file stays open from one to the next.
        if !matches!(&self.open, Some((rel, _, next, _)) if *rel == entry.path && *next <= n) {
            let path = self.root.join(std::ffi::OsStr::from_bytes(&entry.path));
            let file = open_staged(&path)
                .map_err(|error| format!("cannot read the staged copy: {error}"))?;
            self.open = Some((entry.path.clone(), file, 0, 0));
        }
        let Some((_, file, next, offset)) = self.open.as_mut() else {
            return Err("no staged file is open".into());
        };
        while *next < n {
            *offset += u64::from(entry.lengths.get(*next).copied().unwrap_or(0));
            *next += 1;
        }
        let length = entry.lengths.get(n).copied().unwrap_or(0) as usize;
        let mut data = vec![0; length];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut data, *offset)
            .map_err(|error| format!("cannot read the staged copy: {error}"))?;
        *offset += length as u64;
        *next = n + 1;
        if entry.content.get(n).map(Vec::as_slice) != Some(&self.ids.blob_id(&data).0[..]) {
            return Err(format!(
                "piece {} of the staged copy changed after it was verified",
                n + 1
            ));
        }
        // Compressed at level 1 for the wire (or sent raw where that does not pay).
        let mut payload = Vec::with_capacity(data.len() / 2);
        encode_blob_payload(&data, 1, &mut payload);
        Ok(pb::RestoreChunk {
            payload,
            raw_len: data.len() as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_trees_become_entries_in_order_with_verifiable_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("srv/db")).unwrap();
        let big: Vec<u8> = (0..(PIECE as usize * 2 + 17))
            .map(|n| (n % 251) as u8)
            .collect();
        std::fs::write(root.join("srv/db/dump.sql"), &big).unwrap();
        std::fs::write(root.join("srv/a.txt"), b"halo\n").unwrap();
        std::fs::write(root.join("srv/empty"), b"").unwrap();
        std::fs::write(root.join("srv/skip.txt"), b"restic failed this one").unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("srv/link")).unwrap();
        let ids = IdKeys::from_parts([9; 32], 0);
        std::fs::create_dir_all(root.join("srv/cache")).unwrap();
        std::fs::write(root.join("srv/cache/page.html"), b"left out").unwrap();
        std::fs::write(root.join("srv/a.tmp"), b"left out").unwrap();
        let skipped: HashSet<Vec<u8>> = [b"srv/skip.txt".to_vec()].into();
        let excludes =
            crate::engine::backup::build_excludes(&["*.tmp".into(), "/srv/cache".into()]).unwrap();
        let mut entries = Vec::new();
        let mut unreadable = Vec::new();
        staged_entries(
            root,
            root,
            &skipped,
            &excludes,
            &ids,
            &mut entries,
            &mut unreadable,
            &AtomicBool::new(false),
        )
        .unwrap();
        let names: Vec<(String, String)> = entries
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.path).into_owned(),
                    e.kind.clone(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = [
            ("srv", "dir"),
            ("srv/a.txt", "file"),
            ("srv/db", "dir"),
            ("srv/db/dump.sql", "file"),
            ("srv/empty", "file"),
            ("srv/link", "symlink"),
        ]
        .iter()
        .map(|(p, k)| ((*p).to_owned(), (*k).to_owned()))
        .collect();
        assert_eq!(names, expected);
        assert!(unreadable.is_empty());
        let dump = &entries[3];
        assert_eq!(dump.size, big.len() as u64);
        assert_eq!(dump.lengths, vec![PIECE as u32, PIECE as u32, 17]);
        assert_eq!(entries[5].link_target, b"a.txt");

        // Every piece reads back and matches its id; a piece changed after hashing fails.
        let mut source = Staged {
            root: root.to_path_buf(),
            ids: IdKeys::from_parts([9; 32], 0),
            open: None,
        };
        let mut back = Vec::new();
        for n in 0..dump.content.len() {
            let chunk = source.chunk(dump, n).unwrap();
            let plain =
                crate::engine::format::decode_blob_payload(&chunk.payload, chunk.raw_len as usize)
                    .unwrap();
            back.extend(plain);
        }
        assert_eq!(back, big);
        // Pieces the agent holds already are skipped: the next one asked for is read
        // at its own offset.
        let piece = |source: &mut Staged, n: usize| {
            let chunk = source.chunk(dump, n).unwrap();
            crate::engine::format::decode_blob_payload(&chunk.payload, chunk.raw_len as usize)
                .unwrap()
        };
        source.open = None;
        assert_eq!(
            piece(&mut source, 1),
            &big[PIECE as usize..2 * PIECE as usize]
        );
        assert_eq!(piece(&mut source, 2), &big[2 * PIECE as usize..]);
        assert_eq!(
            piece(&mut source, 0),
            &big[..PIECE as usize],
            "back to the start"
        );
        assert_eq!(piece(&mut source, 2), &big[2 * PIECE as usize..]);
        let mut changed = big.clone();
        changed[PIECE as usize + 5] ^= 1;
        std::fs::write(root.join("srv/db/dump.sql"), &changed).unwrap();
        assert!(source.chunk(dump, 0).is_ok());
        let error = source.chunk(dump, 1).unwrap_err();
        assert!(error.contains("changed after it was verified"), "{error}");
        // A file gone from staging is named, not a panic.
        std::fs::remove_file(root.join("srv/a.txt")).unwrap();
        let error = source.chunk(&entries[1], 0).unwrap_err();
        assert!(error.contains("cannot read the staged copy"), "{error}");
    }
}
