//! The daemon's side of work done by agents: a backup whose files an agent reads
//! (chunks checked, encrypted and stored here through [`crate::engine::ingest`]), and a
//! restore streamed from the repository to an agent, which writes and verifies it.
//!
//! A backup survives a dropped stream: what landed is indexed, the runner waits for the
//! agent to dial again, and sends the job once more marked resumed — the agent walks
//! again, but chunks already stored are answered "present" and not sent twice. A daemon
//! that dies mid-backup loses its lease; the daemon that takes the run over resumes the
//! same way (packs are indexed every few packs, so little is sent again).
//!
//! Everything here blocks (the engine's API does); the scheduler runs it on a blocking
//! thread.

pub(crate) mod restic;
pub(crate) mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prost::Message;
use rayon::prelude::*;
use serde_json::json;
use tokio::runtime::Handle;

use crate::app::restore_requests::CheckCommand;
use crate::app::{BackupProgram, CompressOn, MAX_FAILED_LISTED, PlanSpec, RestoreEnd};
use crate::catalog::{RestoreRecord, RunEnd, RunRecord, Server, ServerId};
use crate::engine::Repository;
use crate::engine::id::{BlobId, BlobType, SnapshotId};
use crate::engine::index::Index;
use crate::engine::ingest::{Ingest, IngestCommit};
use crate::engine::readahead::ReadAhead;
use crate::engine::restore::Replica;
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::{Node, NodeKind};
use crate::hub::{AgentHub, JobKind, JobLink, Unavailable};
use crate::jobs::Repositories;
use crate::rpc::pb;
use crate::rpc::pb::agent_message::Body as Up;
use crate::rpc::pb::daemon_message::Body as Down;

/// Most chunks taken from the stream to be checked and stored together.
const CHUNKS_AT_ONCE: usize = 16;
/// Batches of chunks waiting for the ingest worker at most: the stream is read on
/// while they are checked and stored, so the agent's next query is answered at once.
const BATCHES_QUEUED: usize = 2;

/// Takes in the ingest worker's verdicts on the batches handed to it: every one when
/// `wait` (before an entry may reference their chunks), else those already in. The
/// first refusal, if any.
fn settle(
    queued: &mut usize,
    verdicts: &std::sync::mpsc::Receiver<Result<(), String>>,
    wait: bool,
) -> Result<(), String> {
    let mut first = Ok(());
    while *queued > 0 {
        let verdict = if wait {
            verdicts
                .recv()
                .map_err(|_| "the chunk worker stopped".to_owned())?
        } else {
            match verdicts.try_recv() {
                Ok(verdict) => verdict,
                Err(_) => break,
            }
        };
        *queued -= 1;
        if first.is_ok() {
            first = verdict;
        }
    }
    first
}

/// How long a job waits for its agent to (re)connect.
#[derive(Debug, Clone, Copy)]
pub struct RemoteOptions {
    /// Waiting for the agent before a job starts or after its stream dropped.
    pub reconnect_wait: Duration,
}

impl Default for RemoteOptions {
    /// Five minutes.
    fn default() -> Self {
        RemoteOptions {
            reconnect_wait: Duration::from_secs(300),
        }
    }
}

/// Live progress shared with whoever records it.
pub type Progress = Arc<Mutex<Option<serde_json::Value>>>;

fn set_progress(progress: &Progress, value: serde_json::Value) {
    *progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
}

fn send(handle: &Handle, link: &JobLink, body: Down) -> bool {
    handle
        .block_on(
            link.outbound
                .send(Ok(pb::DaemonMessage { body: Some(body) })),
        )
        .is_ok()
}

enum Received {
    Message(pb::AgentMessage),
    Idle,
    Closed,
}

fn receive(handle: &Handle, link: &mut JobLink) -> Received {
    match handle.block_on(tokio::time::timeout(
        Duration::from_millis(500),
        link.inbound.recv(),
    )) {
        Ok(Some(message)) => Received::Message(message),
        Ok(None) => Received::Closed,
        Err(_) => Received::Idle,
    }
}

/// Opens `job` on the agent of `server`: waits up to `wait` for the agent to connect,
/// and as long as it takes (until cancelled) for its other job of the same kind to end,
/// telling `busy` which job that is. `None` when the agent did not come or the job was
/// cancelled.
#[allow(clippy::too_many_arguments)]
fn open_link(
    handle: &Handle,
    hub: &AgentHub,
    server: ServerId,
    job: &str,
    kind: JobKind,
    wait: Duration,
    cancel: &AtomicBool,
    busy: &dyn Fn(&str),
) -> Option<JobLink> {
    let mut deadline = std::time::Instant::now() + wait;
    let mut waited_for = None;
    loop {
        // Waiting in short slices, so a stopping daemon does not wait for an agent.
        let slice = Duration::from_millis(500);
        match hub.open_job(server, job, kind) {
            Ok(link) => return Some(link),
            Err(Unavailable::Busy(other)) => {
                if waited_for.as_ref() != Some(&other) {
                    tracing::info!(%server, job, running = %other, "the agent is busy with another job of this kind; waiting for it to end");
                    busy(&other);
                    waited_for = Some(other);
                }
                if cancel.load(Ordering::Relaxed) {
                    return None;
                }
                handle.block_on(hub.changed_within(slice));
                // The agent was there: the wait for it to connect starts when it leaves.
                deadline = std::time::Instant::now() + wait;
            }
            Err(Unavailable::NotConnected) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() || cancel.load(Ordering::Relaxed) {
                    return None;
                }
                handle.block_on(hub.wait_for(server, left.min(slice)));
            }
        }
    }
}

/// The tree node for an entry an agent sent (its name is set by the caller), refusing
/// what the daemon must not store: unknown kinds and chunk ids that are not 32 bytes.
///
/// # Errors
/// The reason, for the run's error.
pub fn node_from_entry(entry: &pb::FileEntry) -> Result<Node, String> {
    let kind = match entry.kind.as_str() {
        "file" => NodeKind::File,
        "dir" => NodeKind::Dir,
        "symlink" => NodeKind::Symlink,
        "blockdev" => NodeKind::BlockDev,
        "chardev" => NodeKind::CharDev,
        "fifo" => NodeKind::Fifo,
        "socket" => NodeKind::Socket,
        other => return Err(format!("unknown entry kind `{other}`")),
    };
    let mut node = Node::new(Vec::new(), kind);
    node.mode = entry.mode & 0o7777;
    node.uid = entry.uid;
    node.gid = entry.gid;
    node.mtime_ns = entry.mtime_ns;
    node.ctime_ns = entry.ctime_ns;
    node.inode = entry.inode;
    node.dev = entry.dev;
    node.size = entry.size;
    node.rdev = entry.rdev;
    node.hardlink = (entry.hardlink != 0).then_some(entry.hardlink);
    node.xattrs = crate::rpc::xattrs_from_wire(&entry.xattrs)?;
    if kind == NodeKind::Symlink {
        node.link_target = Some(entry.link_target.clone());
    }
    node.content = entry
        .content
        .iter()
        .map(|id| {
            <[u8; 32]>::try_from(id.as_slice())
                .map(BlobId)
                .map_err(|_| "a chunk id is not 32 bytes".to_owned())
        })
        .collect::<Result<_, _>>()?;
    Ok(node)
}

fn blob_id(bytes: &[u8]) -> Result<BlobId, String> {
    <[u8; 32]>::try_from(bytes)
        .map(BlobId)
        .map_err(|_| "a chunk id is not 32 bytes".to_owned())
}

fn failed(error: String, stats: serde_json::Value) -> RunEnd {
    RunEnd {
        status: "failed",
        stats_json: stats.to_string(),
        snapshot_id: None,
        error: Some(error),
    }
}

/// The snapshots of one server, oldest first.
pub fn server_snapshots(
    repository: &Repository,
    server: &Server,
) -> Result<Vec<(SnapshotId, Snapshot)>, String> {
    let tag = crate::jobs::tags::server(server.id);
    let (snapshots, _) = repository
        .load_snapshots()
        .map_err(|error| error.to_string())?;
    Ok(snapshots
        .into_iter()
        .filter(|(_, snapshot)| snapshot.tags.contains(&tag))
        .collect())
}

/// Sets (`hold`) or releases the hold on the server's snapshot `spec` names: the snapshot
/// is replaced by one with the hold tag added or removed ([`crate::app::HOLD_TAG`]; see
/// [`crate::engine::rewrite::retag`]). Returns the snapshot named and the snapshot as it
/// is now, the same id when nothing changed.
///
/// # Errors
/// [`BrowseError::Request`] for a snapshot the server does not have;
/// [`BrowseError::Repository`] when the repository cannot be read or written.
pub fn hold_snapshot(
    repository: &Repository,
    server: &Server,
    spec: &str,
    hold: bool,
) -> Result<(SnapshotId, SnapshotId), BrowseError> {
    let snapshots = server_snapshots(repository, server).map_err(BrowseError::Repository)?;
    let chosen = choose_snapshot(&snapshots, spec)
        .map_err(BrowseError::Request)?
        .clone();
    let named = chosen.0;
    let tag = vec![crate::app::HOLD_TAG.to_owned()];
    let change = crate::engine::rewrite::TagChange {
        add: if hold { tag.clone() } else { Vec::new() },
        remove: if hold { Vec::new() } else { tag },
        ..Default::default()
    };
    let replaced = crate::engine::rewrite::retag(repository, vec![chosen], &change)
        .map_err(|error| BrowseError::Repository(error.to_string()))?;
    Ok((named, replaced.first().map_or(named, |(_, now)| *now)))
}

/// Why a server's snapshot could not be browsed.
#[derive(Debug)]
pub enum BrowseError {
    /// The request names something the server's snapshots do not hold (a snapshot, a
    /// path), or a pattern that is not one.
    Request(String),
    /// The repository could not be read (logged by the caller, not shown).
    Repository(String),
}

fn unreadable(error: crate::engine::Error) -> BrowseError {
    match error {
        crate::engine::Error::InvalidInput(message) => BrowseError::Request(message),
        other => BrowseError::Repository(other.to_string()),
    }
}

/// The entries at `path` of the server's snapshot `spec` (the forms of
/// [`choose_snapshot`]): see [`crate::engine::browse::list`].
///
/// # Errors
/// [`BrowseError`].
pub fn list_server_files(
    repository: &Repository,
    server: &Server,
    spec: &str,
    path: &str,
    recursive: bool,
    limit: usize,
) -> Result<(SnapshotId, crate::engine::browse::Found), BrowseError> {
    let snapshots = server_snapshots(repository, server).map_err(BrowseError::Repository)?;
    let (id, snapshot) = choose_snapshot(&snapshots, spec).map_err(BrowseError::Request)?;
    let (index, _) = repository.load_index_for(snapshot).map_err(unreadable)?;
    let found = crate::engine::browse::list(
        repository,
        &index,
        &snapshot.tree,
        path.as_bytes(),
        recursive,
        limit,
    )
    .map_err(unreadable)?;
    Ok((*id, found))
}

/// The entries of the server's snapshots (`spec` alone when given) that `patterns`
/// match, newest snapshot first, at most `limit` in all.
///
/// # Errors
/// [`BrowseError`].
pub fn find_server_files(
    repository: &Repository,
    server: &Server,
    spec: Option<&str>,
    patterns: crate::engine::browse::Patterns,
    limit: usize,
) -> Result<crate::engine::browse::Matches<(SnapshotId, Snapshot)>, BrowseError> {
    let mut snapshots = server_snapshots(repository, server).map_err(BrowseError::Repository)?;
    if let Some(spec) = spec {
        let chosen = choose_snapshot(&snapshots, spec)
            .map_err(BrowseError::Request)?
            .clone();
        snapshots = vec![chosen];
    }
    let (index, _) = repository.load_index().map_err(unreadable)?;
    crate::engine::browse::Finder::new(repository, &index, patterns)
        .find_in(
            snapshots.into_iter().rev().map(|(id, snapshot)| {
                let root = snapshot.tree;
                ((id, snapshot), root)
            }),
            limit,
        )
        .map_err(unreadable)
}

/// A server's snapshots as a restore sees them: those the primary reads, the replica's
/// copies of those it cannot, and the snapshot objects neither can read.
struct RestoreCandidates {
    /// Oldest first.
    snapshots: Vec<(SnapshotId, Snapshot)>,
    /// Snapshots read from the replica, as repair notes.
    repaired: Vec<String>,
    /// Snapshot objects no copy could read (of any server: their tags are unreadable).
    unreadable: Vec<(SnapshotId, String)>,
}

fn restore_candidates(
    repository: &Repository,
    server: crate::catalog::ServerId,
    replica: Option<&Replica>,
) -> Result<RestoreCandidates, String> {
    let tag = crate::jobs::tags::server(server);
    let (mut snapshots, bad) = repository
        .load_snapshots()
        .map_err(|error| error.to_string())?;
    let mut repaired = Vec::new();
    let mut unreadable = Vec::new();
    for (id, error) in bad {
        match replica.map(|replica| replica.find_copy(&id)) {
            Some(Ok(Some((copy, snapshot)))) => {
                repaired.push(format!(
                    "snapshot {} (replica copy {}): {error} — damaged in the primary, read from the replica",
                    id.short(),
                    copy.short()
                ));
                snapshots.push((id, snapshot));
            }
            _ => unreadable.push((id, error.to_string())),
        }
    }
    snapshots.retain(|(_, snapshot)| snapshot.tags.contains(&tag));
    snapshots.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    Ok(RestoreCandidates {
        snapshots,
        repaired,
        unreadable,
    })
}

/// Whether `spec` names a snapshot regardless of the unreadable ones: only an id (or
/// prefix) none of them starts with. `latest`, `as-of:` and `before:` could each mean an
/// unreadable snapshot, and resolving them among the readable ones would return older
/// data than asked without anyone confirming it.
fn unaffected_by(spec: &str, unreadable: &[(SnapshotId, String)]) -> bool {
    unreadable.is_empty()
        || (spec.len() >= 4
            && spec.bytes().all(|b| b.is_ascii_hexdigit())
            && !unreadable
                .iter()
                .any(|(id, _)| id.to_hex().starts_with(spec)))
}

/// Picks the snapshot a restore names among a server's (oldest first): `latest`, an id
/// or unique prefix, `as-of:TIME` (the newest taken at or before it), or `before:SPEC`
/// (the one before what SPEC names: the restore fallback's "previous snapshot"). An id
/// no snapshot has any more names the snapshot that replaced it (`cadang rewrite
/// --forget`, `cadang tag`, a hold), so a request written before restores what is left.
///
/// # Errors
/// An ambiguous prefix, an unreadable time, or no such snapshot.
pub fn choose_snapshot<'a>(
    snapshots: &'a [(SnapshotId, Snapshot)],
    spec: &str,
) -> Result<&'a (SnapshotId, Snapshot), String> {
    let chosen = match choose_position(
        snapshots,
        |(id, _)| id.to_hex(),
        |(_, snapshot)| snapshot.time,
        spec,
        "the server",
    ) {
        Ok(chosen) => chosen,
        Err(missing) => replacement(snapshots, spec).unwrap_or(Err(missing))?,
    };
    snapshots
        .get(chosen)
        .ok_or_else(|| format!("the server has no snapshot `{spec}`"))
}

/// The position of the snapshot that replaced the one `spec` (an id or prefix) named, when
/// no snapshot has that id any more; `None` when `spec` is another form, an id still
/// there (an ambiguous prefix), or no rewrite came from it.
fn replacement(snapshots: &[(SnapshotId, Snapshot)], spec: &str) -> Option<Result<usize, String>> {
    if spec == "latest"
        || spec.contains(':')
        || snapshots
            .iter()
            .any(|(id, _)| id.to_hex().starts_with(spec))
    {
        return None;
    }
    let replacing: Vec<usize> = snapshots
        .iter()
        .enumerate()
        .filter(|(_, (_, snapshot))| {
            snapshot
                .rewritten_from
                .is_some_and(|from| from.to_hex().starts_with(spec))
        })
        .map(|(n, _)| n)
        .collect();
    match replacing[..] {
        [] => None,
        [one] => Some(Ok(one)),
        _ => Some(Err(format!(
            "snapshot `{spec}` was rewritten into several snapshots: name one of them"
        ))),
    }
}

/// The position of the snapshot `spec` names among `snapshots` (oldest first), each
/// known by its hex id and time; `whose` names the owner in errors ("the server").
/// The forms are those of [`choose_snapshot`].
///
/// # Errors
/// An ambiguous prefix, an unreadable time, or no such snapshot.
pub fn choose_position<T>(
    snapshots: &[T],
    hex: impl Fn(&T) -> String,
    time: impl Fn(&T) -> DateTime<Utc>,
    spec: &str,
    whose: &str,
) -> Result<usize, String> {
    let position = |spec: &str| -> Result<usize, String> {
        if spec == "latest" {
            return snapshots
                .len()
                .checked_sub(1)
                .ok_or_else(|| format!("{whose} has no snapshot"));
        }
        if let Some(at) = spec.strip_prefix("as-of:") {
            let at = DateTime::parse_from_rfc3339(at)
                .map_err(|error| format!("`{spec}`: {error}"))?
                .with_timezone(&Utc);
            return snapshots
                .iter()
                .rposition(|snapshot| time(snapshot) <= at)
                .ok_or_else(|| format!("{whose} has no snapshot taken at or before {at}"));
        }
        let matching: Vec<usize> = snapshots
            .iter()
            .enumerate()
            .filter(|(_, snapshot)| hex(snapshot).starts_with(spec))
            .map(|(n, _)| n)
            .collect();
        match matching[..] {
            [one] => Ok(one),
            [] => Err(format!("{whose} has no snapshot `{spec}`")),
            _ => Err(format!("snapshot `{spec}` is ambiguous")),
        }
    };
    match spec.strip_prefix("before:") {
        Some(inner) => position(inner)?
            .checked_sub(1)
            .ok_or_else(|| format!("{whose} has no snapshot older than `{inner}`")),
        None => position(spec),
    }
}

/// Runs a backup of `spec.paths` on `server` through its agent. Never panics on what the
/// agent sends: a bad chunk or entry fails the run with the reason.
#[allow(clippy::too_many_arguments)]
pub fn backup_via_agent(
    repositories: &Repositories,
    hub: &AgentHub,
    handle: &Handle,
    agency_code: &str,
    server: &Server,
    spec: &PlanSpec,
    run: &RunRecord,
    cancel: Arc<AtomicBool>,
    now: DateTime<Utc>,
    progress: &Progress,
    options: RemoteOptions,
) -> RunEnd {
    let started = std::time::Instant::now();
    let repository = match repositories.open(handle, agency_code, None, Some(cancel.clone())) {
        Ok(repository) => repository,
        Err(error) => return failed(error, json!({})),
    };
    let run_tag = format!("run:{}", run.id);
    let server_tag = crate::jobs::tags::server(server.id);
    let earlier = match server_snapshots(&repository, server) {
        Ok(snapshots) => snapshots,
        Err(error) => return failed(error, json!({})),
    };
    // A run taken over from a daemon that died after committing its snapshot: adopt it.
    if run.attempts > 1
        && let Some((id, _)) = earlier.iter().find(|(_, s)| s.tags.contains(&run_tag))
    {
        return RunEnd {
            status: "ok",
            stats_json: json!({ "adopted_snapshot": true, "agent": true }).to_string(),
            snapshot_id: Some(id.to_hex()),
            error: None,
        };
    }
    let parent = earlier.iter().rev().find(|(_, s)| s.paths == spec.paths);
    let mut ingest = match Ingest::new(&repository) {
        Ok(ingest) => ingest,
        Err(error) => return failed(error.to_string(), json!({})),
    };
    // The agent may name directories unchanged since the parent: taken from its tree.
    if let Some((_, snapshot)) = parent {
        ingest = ingest.with_parent_tree(snapshot.tree);
    }
    if spec.compress_on == CompressOn::Daemon {
        ingest = ingest.compressing_raw_chunks();
    }
    let parent_tree = parent.map(|(_, s)| s.tree.to_hex()).unwrap_or_default();
    let parent = parent.map(|(id, _)| *id);
    // Checked when the plan was written; a stored plan that no longer reads fails.
    let markers: Vec<String> = match spec.markers() {
        Ok(markers) => markers.iter().map(ToString::to_string).collect(),
        Err(error) => return failed(error, json!({})),
    };
    let config = repository.config();
    let (id_key, seed) = repository.keys().id_keys().to_parts();
    let job_id = format!("run:{}", run.id);
    // An earlier attempt (a daemon that stopped or died) left its counts in the run.
    let earlier_stats: serde_json::Value = run
        .stats_json
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let mut resumed = earlier_stats["resumed"].as_u64().unwrap_or(0) + u64::from(run.attempts > 1);
    let mut wire_bytes = earlier_stats["wire_bytes"].as_u64().unwrap_or(0);
    let mut agent_sent = 0u64;
    let mut seen_progress = json!({});
    let stats = |ingest: &Ingest<'_>, wire: u64, resumed: u64, extra: serde_json::Value| {
        let st = ingest.stats();
        let mut value = json!({
            "agent": true,
            "server": server.id,
            "wire_bytes": wire,
            "chunks_received": st.chunks_received.load(Ordering::Relaxed),
            "bytes_received_raw": st.raw_bytes.load(Ordering::Relaxed),
            "resumed": resumed,
            "duration_seconds": started.elapsed().as_secs_f64(),
        });
        if let (Some(target), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
            for (key, item) in extra {
                target.insert(key.clone(), item.clone());
            }
        }
        value
    };
    loop {
        let Some(mut link) = open_link(
            handle,
            hub,
            server.id,
            &job_id,
            JobKind::Backup,
            options.reconnect_wait,
            &cancel,
            &|other| set_progress(progress, json!({ "agent": true, "waiting_for_job": other })),
        ) else {
            let _ = ingest.flush();
            if cancel.load(Ordering::Relaxed) {
                return RunEnd {
                    status: "cancelled",
                    stats_json: stats(&ingest, wire_bytes, resumed, json!({})).to_string(),
                    snapshot_id: None,
                    error: Some("stopped while waiting for the agent to come back".into()),
                };
            }
            return failed(
                format!(
                    "the agent of server {} ({}) is not connected to this daemon; it did not dial in within {} s",
                    server.id,
                    server.name,
                    options.reconnect_wait.as_secs()
                ),
                stats(&ingest, wire_bytes, resumed, json!({})),
            );
        };
        let (before_command, before_timeout_secs) = program_fields(spec.before_backup.as_ref());
        let (after_command, after_timeout_secs) = program_fields(spec.after_backup.as_ref());
        let job = pb::BackupJob {
            job_id: job_id.clone(),
            paths: spec.paths.clone(),
            excludes: spec.excludes.clone(),
            exclude_if_present: markers.clone(),
            exclude_larger_than: spec.exclude_larger_than.unwrap_or(0),
            chunker: "fastcdc-v2020".into(),
            chunk_min: config.chunker.min_size,
            chunk_avg: config.chunker.avg_size,
            chunk_max: config.chunker.max_size,
            chunk_normalization: u32::from(config.chunker.normalization),
            chunker_seed: seed,
            id_key: id_key.to_vec(),
            // Level 0: the agent sends its chunks uncompressed.
            compression_level: match spec.compress_on {
                CompressOn::Agent => config.compression_level,
                CompressOn::Daemon => 0,
            },
            bandwidth_limit: spec
                .bandwidth_limit_kib
                .map_or(0, |kib| kib.saturating_mul(1024)),
            resumed: resumed > 0,
            repository_fingerprint: repository.keys().fingerprint().to_vec(),
            parent_snapshot: parent.map(|id| id.to_hex()).unwrap_or_default(),
            before_command,
            before_timeout_secs,
            after_command,
            after_timeout_secs,
            parent_tree: parent_tree.clone(),
        };
        if !send(handle, &link, Down::Backup(job)) {
            hub.close_job(server.id, &job_id);
            resumed += 1;
            continue;
        }
        let mut held: Option<pb::AgentMessage> = None;
        // Chunks are checked, encrypted and packed on a worker (on every core) while
        // this thread reads on: a query is answered while the chunks sent before it
        // are still being stored, and an agent asks about its next batch before it
        // sends the chunks of the last. A query's ids were never sent in this job (the
        // agent asks about each chunk once), so neither can change the answer. Entries
        // and the end of the walk wait for every batch before them.
        let outcome: Result<Option<pb::WalkDone>, String> = std::thread::scope(|scope| {
            let (to_worker, batches) =
                std::sync::mpsc::sync_channel::<Vec<pb::ChunkUpload>>(BATCHES_QUEUED);
            let (verdict, verdicts) = std::sync::mpsc::channel::<Result<(), String>>();
            let ingest = &ingest;
            scope.spawn(move || {
                // Every batch handed over is stored, even after the stream dropped:
                // what landed is kept and not asked for again.
                for batch in batches {
                    let refused = batch
                        .par_iter()
                        .map(|chunk| {
                            blob_id(&chunk.id).and_then(|id| {
                                ingest
                                    .add_chunk(id, chunk.raw_len, &chunk.payload)
                                    .map_err(|error| error.to_string())
                            })
                        })
                        .find_map_any(Result::err);
                    let _ = verdict.send(refused.map_or(Ok(()), Err));
                }
            });
            let mut queued = 0usize;
            loop {
                if let Err(error) = settle(&mut queued, &verdicts, false) {
                    break Err(format!("the agent sent a chunk that was refused: {error}"));
                }
                if cancel.load(Ordering::Relaxed) {
                    send(
                        handle,
                        &link,
                        Down::Cancel(pb::CancelJob {
                            job_id: job_id.clone(),
                            reason: "the daemon stops the run at a safe point".into(),
                        }),
                    );
                    break Err("cancelled".into());
                }
                let message = match held.take() {
                    Some(message) => message,
                    None => match receive(handle, &mut link) {
                        Received::Message(message) => message,
                        Received::Idle => continue,
                        Received::Closed => break Ok(None),
                    },
                };
                wire_bytes += message.encoded_len() as u64;
                match message.body {
                    Some(Up::Have(query)) => {
                        let ids: Result<Vec<BlobId>, String> =
                            query.ids.iter().map(|id| blob_id(id)).collect();
                        let ids = match ids {
                            Ok(ids) => ids,
                            Err(error) => {
                                break Err(format!("the agent sent a bad query: {error}"));
                            }
                        };
                        let missing = ingest.missing(&ids);
                        if !send(
                            handle,
                            &link,
                            Down::Have(pb::HaveAnswer {
                                query_id: query.query_id,
                                missing,
                            }),
                        ) {
                            break Ok(None);
                        }
                    }
                    Some(Up::Chunk(chunk)) => {
                        // Chunks already waiting go to the worker together; the first
                        // other message waits its turn.
                        let mut chunks = vec![chunk];
                        while chunks.len() < CHUNKS_AT_ONCE {
                            match link.inbound.try_recv() {
                                Ok(pb::AgentMessage {
                                    body: Some(Up::Chunk(next)),
                                }) => {
                                    // As on the wire: the oneof field's tag, length, body.
                                    let len = next.encoded_len();
                                    wire_bytes +=
                                        (1 + prost::length_delimiter_len(len) + len) as u64;
                                    chunks.push(next);
                                }
                                Ok(other) => {
                                    // Counted when it is taken up.
                                    held = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        if to_worker.send(chunks).is_err() {
                            break Err("the chunk worker stopped".into());
                        }
                        queued += 1;
                    }
                    Some(Up::Entries(batch)) => {
                        if let Err(error) = settle(&mut queued, &verdicts, true) {
                            break Err(format!("the agent sent a chunk that was refused: {error}"));
                        }
                        let mut refused = None;
                        for entry in &batch.entries {
                            let result = node_from_entry(entry).and_then(|node| {
                                if entry.unchanged_subtree {
                                    ingest.add_unchanged_subtree(
                                        &entry.path,
                                        node,
                                        entry.subtree_dirs,
                                    )
                                } else {
                                    ingest.add_entry(&entry.path, node)
                                }
                                .map_err(|error| error.to_string())
                            });
                            if let Err(error) = result {
                                refused = Some(error);
                                break;
                            }
                        }
                        if let Some(error) = refused {
                            break Err(format!(
                                "the agent sent an entry that was refused: {error}"
                            ));
                        }
                    }
                    Some(Up::Progress(p)) => {
                        seen_progress = json!({
                            "files": p.files, "bytes": p.bytes, "bytes_sent": p.bytes_sent,
                            "rate_bytes_per_second": p.rate,
                        });
                        set_progress(
                            progress,
                            stats(
                                ingest,
                                wire_bytes,
                                resumed,
                                json!({ "progress": seen_progress }),
                            ),
                        );
                    }
                    Some(Up::WalkDone(done)) => {
                        if let Err(error) = settle(&mut queued, &verdicts, true) {
                            break Err(format!("the agent sent a chunk that was refused: {error}"));
                        }
                        break Ok(Some(done));
                    }
                    Some(Up::Failed(failure)) => {
                        break Err(format!("the agent could not back up: {}", failure.error));
                    }
                    _ => {}
                }
            }
        });
        match outcome {
            Ok(None) => {
                // The stream dropped: keep what landed, wait for the agent, go again.
                hub.close_job(server.id, &job_id);
                if let Err(error) = ingest.flush() {
                    return failed(
                        format!("cannot index what the interrupted attempt stored: {error}"),
                        stats(&ingest, wire_bytes, resumed, json!({})),
                    );
                }
                ingest.reset_entries();
                resumed += 1;
                tracing::warn!(run = %run.id, server = %server.id, resumed, "agent stream lost mid-backup; waiting for it to come back");
                continue;
            }
            Err(error) => {
                hub.close_job(server.id, &job_id);
                let _ = ingest.flush();
                let cancelled = cancel.load(Ordering::Relaxed);
                if !cancelled {
                    send(
                        handle,
                        &link,
                        Down::JobEnd(pb::JobEnd {
                            job_id: job_id.clone(),
                            ok: false,
                            snapshot_id: String::new(),
                            error: error.clone(),
                            tree_id: String::new(),
                        }),
                    );
                }
                return RunEnd {
                    status: if cancelled { "cancelled" } else { "failed" },
                    stats_json: stats(&ingest, wire_bytes, resumed, json!({})).to_string(),
                    snapshot_id: None,
                    error: Some(if cancelled {
                        "stopped at a safe point (shutdown or window end); what was sent is kept and not sent again".into()
                    } else {
                        error
                    }),
                };
            }
            Ok(Some(done)) => {
                agent_sent += done.bytes_sent;
                let final_stats = stats(
                    &ingest,
                    wire_bytes,
                    resumed,
                    json!({
                        "files_new": done.files.saturating_sub(done.files_unchanged),
                        "files_unchanged": done.files_unchanged,
                        "files_linked": done.files_linked,
                        "subtrees_unchanged": done.subtrees_unchanged,
                        "files_failed": done.problems.len(),
                        "bytes_read": done.bytes,
                        "bytes_total": done.bytes,
                        "agent_bytes_sent": agent_sent,
                    }),
                );
                let commit = IngestCommit {
                    time: now,
                    hostname: server.name.clone(),
                    paths: spec.paths.clone(),
                    tags: vec![
                        format!("plan:{}", run.plan_id),
                        run_tag.clone(),
                        server_tag.clone(),
                    ],
                    parent,
                    started: now,
                    files: done.files,
                    bytes: done.bytes,
                    files_unchanged: done.files_unchanged,
                    files_failed: done.problems.len() as u64,
                };
                let stored_before_commit = ingest.stored_bytes();
                let committed = ingest.commit(&commit);
                hub.close_job(server.id, &job_id);
                let (status, snapshot, error) = match &committed {
                    Ok((id, _)) if done.problems.is_empty() => ("ok", Some(id.to_hex()), None),
                    Ok((id, _)) => (
                        "partial",
                        Some(id.to_hex()),
                        Some(
                            done.problems
                                .iter()
                                .take(20)
                                .map(|p| format!("{}: {}", p.path, p.reason))
                                .collect::<Vec<_>>()
                                .join("; "),
                        ),
                    ),
                    Err(error) => ("failed", None, Some(error.to_string())),
                };
                send(
                    handle,
                    &link,
                    Down::JobEnd(pb::JobEnd {
                        job_id: job_id.clone(),
                        ok: committed.is_ok(),
                        snapshot_id: snapshot.clone().unwrap_or_default(),
                        error: error.clone().unwrap_or_default(),
                        tree_id: committed
                            .as_ref()
                            .map(|(_, s)| s.tree.to_hex())
                            .unwrap_or_default(),
                    }),
                );
                let mut final_stats = final_stats;
                // The agent ran the after-backup program before it reported the walk.
                let error = if done.after_error.is_empty() {
                    error
                } else {
                    final_stats["after_backup_error"] = json!(done.after_error);
                    Some(crate::hook::and_after(error, &done.after_error))
                };
                if let Ok((_, snap)) = &committed {
                    final_stats["bytes_added"] = json!(snap.summary.data_added);
                    final_stats["bytes_added_raw"] = json!(snap.summary.data_added_raw);
                    let seconds = started.elapsed().as_secs_f64();
                    final_stats["throughput_bytes_per_second"] = json!(if seconds > 0.0 {
                        done.bytes as f64 / seconds
                    } else {
                        0.0
                    });
                } else {
                    final_stats["bytes_added"] = json!(stored_before_commit);
                }
                return RunEnd {
                    status,
                    stats_json: final_stats.to_string(),
                    snapshot_id: snapshot,
                    error,
                };
            }
        }
    }
}

/// A plan's before- or after-backup program as `BackupJob` carries it: the command and
/// its timeout; empty and 0 for none.
fn program_fields(program: Option<&BackupProgram>) -> (Vec<String>, u32) {
    program.map_or((Vec::new(), 0), |program| {
        (
            program.command.clone(),
            u32::try_from(program.timeout_secs).unwrap_or(u32::MAX),
        )
    })
}

/// A file, directory or link to send, with its path relative to the restore target.
struct Item {
    rel: Vec<u8>,
    node: Node,
    /// Restored with all it holds (not only on the way to a selected path).
    whole: bool,
    /// A directory whose listing the repository gave.
    listed: bool,
}

/// With `--delete`, whether the restore cleans the directory `rel` (relative to the
/// snapshot's root, empty for the root): at or below one of the snapshot's backed-up
/// `paths`. The directories above those hold in the snapshot only the way to them.
fn cleaned(rel: &[u8], backed_up: &[String]) -> bool {
    backed_up.iter().any(|path| {
        let path = path.trim_matches('/').as_bytes();
        path.is_empty()
            || rel == path
            || (rel.starts_with(path) && rel.get(path.len()) == Some(&b'/'))
    })
}

/// Whether `abs` (absolute path in the snapshot) is selected by `paths`: equal to or
/// under one (restored with all it holds), or above one (a directory on the way).
fn selected(abs: &[u8], paths: &[String]) -> (bool, bool) {
    if paths.is_empty() {
        return (true, true);
    }
    let mut on_way = false;
    for path in paths {
        let path = path.trim_end_matches('/').as_bytes();
        if abs == path || (abs.starts_with(path) && abs.get(path.len()) == Some(&b'/')) {
            return (true, true);
        }
        if path.starts_with(abs) && path.get(abs.len()) == Some(&b'/') {
            on_way = true;
        }
    }
    (on_way, false)
}

/// Where a restore reads: the primary repository, and the replica (same keys, same
/// chunk ids) for what the primary cannot give. Reads from the replica are listed.
struct Reader<'a> {
    repository: &'a Repository,
    index: &'a Index,
    replica: Option<&'a Replica>,
    repaired: Vec<String>,
    /// The primary's chunks in the order they are sent, once known.
    ahead: Option<ReadAhead<'a>>,
}

impl Reader<'_> {
    /// A verified blob from the primary, else from the replica (recording the repair).
    fn load(&mut self, ty: BlobType, id: &BlobId) -> Result<Vec<u8>, String> {
        let primary = self.repository.load_blob(self.index, ty, id);
        self.fall_back(ty, id, primary, |replica| replica.load_blob(ty, id))
    }

    /// An authenticated blob payload, still compressed, and its plaintext length: from
    /// the primary, else from the replica (recording the repair).
    fn load_payload(&mut self, ty: BlobType, id: &BlobId) -> Result<(Vec<u8>, u32), String> {
        let primary = match self.ahead.as_mut() {
            Some(ahead) if ty == BlobType::Data => ahead.payload(id),
            _ => self.repository.load_blob_payload(self.index, ty, id),
        };
        self.fall_back(ty, id, primary, |replica| replica.load_blob_payload(ty, id))
    }

    /// What the primary gave, or else what the replica gives (recording the repair).
    fn fall_back<R>(
        &mut self,
        ty: BlobType,
        id: &BlobId,
        primary: crate::engine::Result<R>,
        replica: impl FnOnce(&Replica) -> crate::engine::Result<R>,
    ) -> Result<R, String> {
        let primary_error = match primary {
            Ok(data) => return Ok(data),
            Err(error) => error,
        };
        let Some(copy) = self.replica else {
            return Err(primary_error.to_string());
        };
        match replica(copy) {
            Ok(data) => {
                let place = match self.index.get(id) {
                    Some((pack, _)) => format!("in pack {}", pack.short()),
                    None => "(no pack in the primary index)".to_owned(),
                };
                self.repaired.push(format!(
                    "{ty} blob {} {place}: {primary_error} — damaged in the primary, read from the replica",
                    id.short()
                ));
                Ok(data)
            }
            Err(error) => Err(format!(
                "{primary_error}; the replica cannot supply it either: {error}"
            )),
        }
    }

    /// A chunk's plaintext length, from the primary's index or else the replica's.
    fn raw_length(&self, id: &BlobId) -> u32 {
        self.index
            .get(id)
            .or_else(|| self.replica.and_then(|replica| replica.index.get(id)))
            .map_or(0, |(_, location)| location.raw_length)
    }
}

/// What a restore leaves out: its exclude patterns, as a backup's excludes match them
/// (against the path from the snapshot's root).
///
/// # Errors
/// The stored patterns cannot be read or are malformed (they were checked when the
/// restore was written, so only a damaged catalog row gets here).
pub(crate) fn restore_excludes(restore: &RestoreRecord) -> Result<globset::GlobSet, String> {
    let patterns: Vec<String> = serde_json::from_str(&restore.excludes_json)
        .map_err(|error| format!("the restore's exclude patterns cannot be read: {error}"))?;
    crate::engine::backup::build_excludes(&patterns).map_err(|error| error.to_string())
}

/// Whether `rel` (a path below the snapshot's root, without its leading `/`) is left out
/// by `excludes`, which match paths from the root.
pub(crate) fn excluded(excludes: &globset::GlobSet, rel: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    !excludes.is_empty()
        && excludes.is_match(std::path::Path::new("/").join(std::ffi::OsStr::from_bytes(rel)))
}

/// The entries of `tree` (at `prefix`, `depth` levels down) selected by `paths` and not
/// left out by `excludes`, in tree order, each directory before what it holds. Whether
/// `tree` could be read (else it is named in `unreadable`).
#[allow(clippy::too_many_arguments)]
fn collect(
    reader: &mut Reader<'_>,
    tree: &BlobId,
    prefix: &[u8],
    depth: usize,
    paths: &[String],
    excludes: &globset::GlobSet,
    whole: bool,
    out: &mut Vec<Item>,
    unreadable: &mut Vec<pb::FileProblem>,
) -> bool {
    if depth > crate::engine::tree::MAX_DEPTH {
        unreadable.push(pb::FileProblem {
            path: format!("/{}", String::from_utf8_lossy(prefix)),
            reason: crate::engine::tree::too_deep(),
        });
        return false;
    }
    let tree_data = match reader.load(BlobType::Tree, tree).and_then(|raw| {
        crate::engine::tree::Tree::decode(&raw).map_err(|error| format!("invalid tree: {error}"))
    }) {
        Ok(tree) => tree,
        Err(error) => {
            unreadable.push(pb::FileProblem {
                path: format!("/{}", String::from_utf8_lossy(prefix)),
                reason: format!("directory unreadable in the repository: {error}"),
            });
            return false;
        }
    };
    for node in tree_data.nodes {
        let mut rel = prefix.to_vec();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(&node.name);
        let mut abs = b"/".to_vec();
        abs.extend_from_slice(&rel);
        if excluded(excludes, &rel) {
            continue;
        }
        let (take, all) = if whole {
            (true, true)
        } else {
            selected(&abs, paths)
        };
        if !take {
            continue;
        }
        let subtree = node.subtree;
        let is_dir = node.kind == NodeKind::Dir;
        // A directory on the way to a selected path is sent without its other content.
        out.push(Item {
            rel: rel.clone(),
            node,
            whole: all,
            listed: false,
        });
        if is_dir && let Some(subtree) = subtree {
            let at = out.len() - 1;
            out[at].listed = collect(
                reader,
                &subtree,
                &rel,
                depth + 1,
                paths,
                excludes,
                all,
                out,
                unreadable,
            );
        }
    }
    true
}

/// The wire name of an entry's kind.
pub(crate) fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
        NodeKind::BlockDev => "blockdev",
        NodeKind::CharDev => "chardev",
        NodeKind::Fifo => "fifo",
        NodeKind::Socket => "socket",
    }
}

/// Streams a snapshot of `source` to the agent of `target`, which writes and verifies
/// it. Returns how it ended and the snapshot restored (when resolved). A chunk or
/// directory the repository cannot give is read from `replica` when one is given (the
/// agency's replica repository, same keys); the stats list those repairs under
/// `repaired_from_replica` and count them in `repaired`.
#[allow(clippy::too_many_arguments)]
pub fn restore_to_agent(
    repositories: &Repositories,
    hub: &AgentHub,
    handle: &Handle,
    agency_code: &str,
    source: &Server,
    target: &Server,
    restore: &RestoreRecord,
    cancel: Arc<AtomicBool>,
    progress: &Progress,
    options: RemoteOptions,
    replica: Option<Arc<Replica>>,
) -> (RestoreEnd, Option<String>) {
    let end = |status: &str, stats: serde_json::Value, error: Option<String>| RestoreEnd {
        status: status.to_owned(),
        stats_json: stats.to_string(),
        error,
    };
    let repository = match repositories.open(handle, agency_code, None, Some(cancel.clone())) {
        Ok(repository) => repository,
        Err(error) => return (end("failed", json!({}), Some(error)), None),
    };
    // An attempt that may read from the replica opens it here (after the primary, whose
    // keys it shares) unless the caller already did.
    let replica = match replica {
        Some(replica) => Some(replica),
        None if restore.use_replica => {
            match repositories
                .open_replica(handle, agency_code, &repository, Some(cancel.clone()))
                .and_then(|opened| Replica::open(opened).map_err(|error| error.to_string()))
            {
                Ok(opened) => Some(Arc::new(opened)),
                Err(error) => {
                    return (
                        end(
                            "failed",
                            json!({}),
                            Some(format!("the replica repository cannot be read: {error}")),
                        ),
                        None,
                    );
                }
            }
        }
        None => None,
    };
    let replica = replica.filter(|replica| replica.shares_keys_with(&repository));
    let candidates = match restore_candidates(&repository, source.id, replica.as_deref()) {
        Ok(candidates) => candidates,
        Err(error) => return (end("failed", json!({}), Some(error)), None),
    };
    if !unaffected_by(&restore.snapshot, &candidates.unreadable) {
        let names: Vec<String> = candidates
            .unreadable
            .iter()
            .take(MAX_FAILED_LISTED)
            .map(|(id, error)| format!("{}: {error}", id.short()))
            .collect();
        return (
            end(
                "failed",
                json!({ "unreadable_snapshots": names }),
                Some(format!(
                    "{} snapshot object(s) cannot be read from the primary repository{}, so which snapshot `{}` means cannot be decided safely ({}); the damage is reported for repair",
                    candidates.unreadable.len(),
                    if replica.is_some() {
                        " nor from the replica"
                    } else {
                        ""
                    },
                    restore.snapshot,
                    names.join("; ")
                )),
            ),
            None,
        );
    }
    let (snapshot_id, snapshot) = match choose_snapshot(&candidates.snapshots, &restore.snapshot) {
        Ok(chosen) => chosen,
        Err(error) => {
            return (
                end(
                    "failed",
                    json!({}),
                    Some(format!("server {}: {error}", source.id)),
                ),
                None,
            );
        }
    };
    let snapshot_hex = snapshot_id.to_hex();
    let paths: Vec<String> = serde_json::from_str(&restore.paths_json).unwrap_or_default();
    let excludes = match restore_excludes(restore) {
        Ok(excludes) => excludes,
        Err(error) => {
            return (end("failed", json!({}), Some(error)), Some(snapshot_hex));
        }
    };
    let (index, _) = match repository.load_index_for(snapshot) {
        Ok(index) => index,
        Err(error) => {
            return (
                end("failed", json!({}), Some(error.to_string())),
                Some(snapshot_hex),
            );
        }
    };
    let mut reader = Reader {
        repository: &repository,
        index: &index,
        replica: replica.as_deref(),
        repaired: candidates.repaired,
        ahead: None,
    };
    let mut items = Vec::new();
    let mut unreadable = Vec::new();
    let root_listed = collect(
        &mut reader,
        &snapshot.tree,
        b"",
        0,
        &paths,
        &excludes,
        false,
        &mut items,
        &mut unreadable,
    );
    let (id_key, _) = repository.keys().id_keys().to_parts();
    // With --delete: the directories wholly restored, listed, at or below the backed-up
    // paths.
    let clean = |item: &Item| {
        restore.delete
            && item.node.kind == NodeKind::Dir
            && item.whole
            && item.listed
            && cleaned(&item.rel, &snapshot.paths)
    };
    let clean_target =
        restore.delete && root_listed && selected(b"/", &paths).1 && cleaned(b"", &snapshot.paths);
    let entries: Vec<pb::RestoreEntry> = items
        .into_iter()
        .map(|item| {
            let clean = clean(&item);
            let node = item.node;
            let file = node.kind == NodeKind::File;
            pb::RestoreEntry {
                path: item.rel,
                kind: kind_name(node.kind).into(),
                mode: node.mode,
                uid: node.uid,
                gid: node.gid,
                mtime_ns: node.mtime_ns,
                size: node.size,
                lengths: if file {
                    node.content
                        .iter()
                        .map(|id| reader.raw_length(id))
                        .collect()
                } else {
                    Vec::new()
                },
                content: if file {
                    node.content.iter().map(|id| id.0.to_vec()).collect()
                } else {
                    Vec::new()
                },
                link_target: node.link_target.unwrap_or_default(),
                hardlink: if file { node.hardlink.unwrap_or(0) } else { 0 },
                xattrs: crate::rpc::xattrs_to_wire(node.xattrs),
                in_place: false,
                clean,
                reuse: Vec::new(),
            }
        })
        .collect();
    // The chunks in the order they will be sent: neighbours in a pack are read together.
    let plan = entries
        .iter()
        .flat_map(|entry| &entry.content)
        .filter_map(|id| <[u8; 32]>::try_from(id.as_slice()).ok().map(BlobId))
        .collect();
    reader.ahead = Some(ReadAhead::new(&repository, &index, plan));
    let mut outgoing = stream::Outgoing::for_restore(
        target,
        restore,
        id_key,
        &snapshot_hex,
        entries,
        options.reconnect_wait,
    );
    if restore.delete {
        outgoing.job.delete = true;
        outgoing.job.clean_target = clean_target;
        outgoing.job.excludes = serde_json::from_str(&restore.excludes_json).unwrap_or_default();
    }
    match stream::stream_restore(
        handle,
        hub,
        outgoing,
        &mut reader,
        unreadable,
        &cancel,
        progress,
    ) {
        Ok(streamed) => {
            let repaired: Vec<&String> = reader.repaired.iter().take(MAX_FAILED_LISTED).collect();
            let end = streamed.judged(
                &snapshot_hex,
                json!({
                    "repaired": reader.repaired.len(),
                    "repaired_from_replica": repaired,
                    "store_reads": reader.ahead.as_ref().map_or(0, ReadAhead::requests),
                }),
            );
            (end, Some(snapshot_hex))
        }
        Err(end) => (end, Some(snapshot_hex)),
    }
}

impl stream::RestoreSource for Reader<'_> {
    /// The chunk as stored, only decrypted: the agent decompresses it and checks it
    /// against its id, so the daemon does not decompress, hash and compress it again.
    fn chunk(&mut self, entry: &pb::RestoreEntry, n: usize) -> Result<pb::RestoreChunk, String> {
        let id = entry
            .content
            .get(n)
            .and_then(|id| <[u8; 32]>::try_from(id.as_slice()).ok())
            .map(BlobId)
            .ok_or_else(|| format!("chunk {} of the entry is not a chunk id", n + 1))?;
        let (payload, raw_len) = self.load_payload(BlobType::Data, &id).map_err(|error| {
            format!("chunk {} unreadable in the repository: {error}", id.short())
        })?;
        Ok(pb::RestoreChunk { payload, raw_len })
    }

    fn skip_chunk(&mut self, entry: &pb::RestoreEntry, n: usize) {
        if let Some(ahead) = self.ahead.as_mut()
            && let Some(Ok(id)) = entry
                .content
                .get(n)
                .map(|id| <[u8; 32]>::try_from(id.as_slice()))
        {
            ahead.pass(&BlobId(id));
        }
    }
}

/// Runs a restore plan's check on `target` through its agent once the restore verified.
/// Returns the result as recorded with the restore: `passed`, `exit_code`, `timed_out`,
/// `output` (its end), `error`.
#[allow(clippy::too_many_arguments)]
pub fn check_on_agent(
    hub: &AgentHub,
    handle: &Handle,
    target: &Server,
    job_id: &str,
    check: &CheckCommand,
    dir: &str,
    wait: Duration,
    cancel: &AtomicBool,
) -> serde_json::Value {
    let failed = |error: String| json!({ "command": check.command, "passed": false, "exit_code": null, "timed_out": false, "output": "", "error": error });
    let Some(mut link) = open_link(
        handle,
        hub,
        target.id,
        job_id,
        JobKind::Check,
        wait,
        cancel,
        &|_| {},
    ) else {
        return failed(format!(
            "the agent of server {} is not connected to run the check",
            target.id
        ));
    };
    let job = pb::CheckJob {
        job_id: job_id.to_owned(),
        command: check.command.clone(),
        timeout_secs: u32::try_from(check.timeout_secs).unwrap_or(u32::MAX),
        dir: dir.to_owned(),
    };
    if !send(handle, &link, Down::Check(job)) {
        hub.close_job(target.id, job_id);
        return failed("the agent's stream ended before the check started".into());
    }
    // The agent kills the check at its timeout; allow for the round trip.
    let deadline = std::time::Instant::now() + Duration::from_secs(check.timeout_secs + 30);
    let result = loop {
        if cancel.load(Ordering::Relaxed) {
            break failed("stopped by the daemon".into());
        }
        if std::time::Instant::now() > deadline {
            break failed("the agent did not report the check's end".into());
        }
        match receive(handle, &mut link) {
            Received::Message(pb::AgentMessage {
                body: Some(Up::CheckDone(done)),
            }) => {
                break json!({
                    "command": check.command,
                    "passed": done.exit_code == Some(0) && !done.timed_out,
                    "exit_code": done.exit_code,
                    "timed_out": done.timed_out,
                    "output": done.output.chars().take(4096).collect::<String>(),
                    "error": (!done.error.is_empty()).then_some(done.error),
                });
            }
            Received::Message(_) | Received::Idle => {}
            Received::Closed => break failed("the agent's stream ended during the check".into()),
        }
    };
    hub.close_job(target.id, job_id);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second backup for a busy agent is told what it waits for, opens once the first
    /// ends, and gives up when cancelled; a missing agent is waited for only `wait`.
    #[test]
    fn a_job_waits_for_the_agents_running_job_of_its_kind() {
        use crate::catalog::AgentId;
        let (runtime, _dir) = runtime_and_dir();
        let handle = runtime.handle().clone();
        let hub = Arc::new(AgentHub::default());
        let server = ServerId(5);
        let (outbound, _to_agent) = tokio::sync::mpsc::channel(4);
        hub.register(AgentId(9), server, outbound).unwrap();
        let _first = hub.open_job(server, "run:1", JobKind::Backup).unwrap();
        let heard = Mutex::new(Vec::<String>::new());
        let no = AtomicBool::new(false);
        let opened = std::thread::scope(|scope| {
            let waiting = scope.spawn(|| {
                open_link(
                    &handle,
                    &hub,
                    server,
                    "run:2",
                    JobKind::Backup,
                    Duration::from_millis(100),
                    &no,
                    &|other| heard.lock().unwrap().push(other.to_owned()),
                )
            });
            // Longer than the wait for a missing agent: a busy one is waited for.
            std::thread::sleep(Duration::from_millis(700));
            assert!(!waiting.is_finished());
            hub.close_job(server, "run:1");
            waiting.join().unwrap()
        });
        assert!(opened.is_some());
        assert_eq!(*heard.lock().unwrap(), ["run:1"]);

        let cancelled = AtomicBool::new(true);
        let busy = open_link(
            &handle,
            &hub,
            server,
            "run:3",
            JobKind::Backup,
            Duration::from_secs(60),
            &cancelled,
            &|_| {},
        );
        assert!(busy.is_none(), "a cancelled run stops waiting");
        let started = std::time::Instant::now();
        let missing = open_link(
            &handle,
            &hub,
            ServerId(6),
            "run:4",
            JobKind::Backup,
            Duration::from_millis(300),
            &no,
            &|_| {},
        );
        assert!(missing.is_none() && started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn path_selection_takes_what_is_under_and_the_directories_on_the_way() {
        let paths = vec!["/srv/data".to_owned()];
        assert_eq!(selected(b"/srv", &paths), (true, false));
        assert_eq!(selected(b"/srv/data", &paths), (true, true));
        assert_eq!(selected(b"/srv/data/x", &paths), (true, true));
        assert_eq!(selected(b"/srv/database", &paths), (false, false));
        assert_eq!(selected(b"/etc", &paths), (false, false));
        assert_eq!(selected(b"/anything", &[]), (true, true));
    }

    #[test]
    fn snapshots_are_chosen_by_latest_id_time_and_the_one_before() {
        let at =
            |hour: u32| chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 1, hour, 0, 0).unwrap();
        let snapshot = |n: u8, hour: u32| {
            (
                SnapshotId([n; 32]),
                Snapshot {
                    version: 1,
                    time: at(hour),
                    hostname: "web".into(),
                    username: "root".into(),
                    paths: vec!["/srv".into()],
                    tags: vec!["server:1".into()],
                    parent: None,
                    tree: BlobId([0; 32]),
                    summary: Default::default(),
                    original: None,
                    rewritten_from: None,
                    indexes: Vec::new(),
                },
            )
        };
        let mut list = vec![snapshot(0xa1, 1), snapshot(0xa2, 2), snapshot(0xb3, 3)];
        // 0xc4 was rewritten into 0xa2 and forgotten.
        list[1].1.rewritten_from = Some(SnapshotId([0xc4; 32]));
        let id = |spec: &str| choose_snapshot(&list, spec).map(|(id, _)| id.0[0]);
        assert_eq!(id("c4c4"), Ok(0xa2));
        assert_eq!(id(&"c4".repeat(32)), Ok(0xa2));
        assert_eq!(id(&"a2".repeat(32)), Ok(0xa2));
        assert!(id("before:c4c4").unwrap_err().contains("no snapshot"));
        assert_eq!(id("latest"), Ok(0xb3));
        assert_eq!(id("b3b3"), Ok(0xb3));
        assert!(id("a").unwrap_err().contains("ambiguous"));
        assert!(id("ffff").unwrap_err().contains("no snapshot"));
        assert_eq!(id("as-of:2026-11-01T02:30:00+00:00"), Ok(0xa2));
        assert_eq!(id("as-of:2026-11-01T02:00:00+00:00"), Ok(0xa2));
        assert!(id("as-of:2026-11-01T00:30:00+00:00").is_err());
        assert!(id("as-of:yesterday").is_err());
        assert_eq!(id("before:latest"), Ok(0xa2));
        assert_eq!(id(&format!("before:{}", "b3".repeat(32))), Ok(0xa2));
        assert!(id("before:a1a1").unwrap_err().contains("no snapshot older"));
        assert!(choose_snapshot(&[], "latest").is_err());
        // Rewritten twice (the first replacement kept, then the original forgotten): the
        // request must name one.
        list[2].1.rewritten_from = Some(SnapshotId([0xc4; 32]));
        let id = |spec: &str| choose_snapshot(&list, spec).map(|(id, _)| id.0[0]);
        assert!(id("c4").unwrap_err().contains("several"));
    }

    /// A one-worker runtime for a repository's I/O, and a directory for its store.
    fn runtime_and_dir() -> (tokio::runtime::Runtime, tempfile::TempDir) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        (runtime, tempfile::tempdir().unwrap())
    }

    #[test]
    fn a_damaged_snapshot_object_is_read_from_the_replica_or_stops_a_choice_it_could_change() {
        use crate::engine::{Store, StoreOptions};
        let (runtime, dir) = runtime_and_dir();
        let store = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).unwrap();
            Store::open(&path.display().to_string(), &StoreOptions::default()).unwrap()
        };
        let options = crate::engine::repo::TEST_OPTIONS;
        let handle = runtime.handle().clone();
        let primary = Repository::init(handle.clone(), store("primary"), b"pw", &options).unwrap();
        let at =
            |hour: u32| chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 1, hour, 0, 0).unwrap();
        let snapshot = |hour: u32, server: u32, original: Option<SnapshotId>| Snapshot {
            version: 1,
            time: at(hour),
            hostname: "web".into(),
            username: "root".into(),
            paths: vec!["/srv".into()],
            tags: vec![format!("server:{server}")],
            parent: None,
            tree: BlobId([0; 32]),
            summary: Default::default(),
            original,
            rewritten_from: None,
            indexes: Vec::new(),
        };
        let older = primary.save_snapshot(&snapshot(1, 1, None)).unwrap();
        let newer = primary.save_snapshot(&snapshot(2, 1, None)).unwrap();
        primary.save_snapshot(&snapshot(3, 2, None)).unwrap();
        let object = dir.path().join("primary/snapshots").join(newer.to_hex());
        let mut bytes = std::fs::read(&object).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        // Objects are written read-only.
        let mut permissions = std::fs::metadata(&object).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
        std::fs::set_permissions(&object, permissions).unwrap();
        std::fs::write(&object, bytes).unwrap();

        let server = crate::catalog::ServerId(1);
        let alone = restore_candidates(&primary, server, None).unwrap();
        assert_eq!(alone.snapshots.len(), 1, "only the older one reads");
        assert_eq!(alone.unreadable.len(), 1);
        // `latest` (or a time, or "the one before") could mean the damaged snapshot:
        // resolving it among the readable ones would return older data unasked.
        for spec in ["latest", "as-of:2026-11-01T05:00:00+00:00", "before:latest"] {
            assert!(!unaffected_by(spec, &alone.unreadable), "{spec}");
        }
        assert!(!unaffected_by(&newer.to_hex()[..8], &alone.unreadable));
        assert!(unaffected_by(&older.to_hex()[..8], &alone.unreadable));
        assert!(unaffected_by("latest", &[]));

        let replica =
            Repository::init_from(handle, store("replica"), b"pw", &options, &primary).unwrap();
        replica.save_snapshot(&snapshot(2, 1, Some(newer))).unwrap();
        let replica = Replica::open(replica).unwrap();
        let repaired = restore_candidates(&primary, server, Some(&replica)).unwrap();
        assert!(repaired.unreadable.is_empty());
        assert_eq!(repaired.repaired.len(), 1, "{:?}", repaired.repaired);
        let ids: Vec<SnapshotId> = repaired.snapshots.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            [older, newer],
            "the copy stands in under the primary's id"
        );
        assert_eq!(
            choose_snapshot(&repaired.snapshots, "latest").unwrap().0,
            newer
        );
    }

    #[test]
    fn trees_nested_beyond_any_path_are_reported_not_walked_to_the_end_of_the_stack() {
        use crate::engine::packer::Packer;
        use crate::engine::tree::{MAX_DEPTH, Tree};
        use crate::engine::{Store, StoreOptions};
        let (runtime, dir) = runtime_and_dir();
        let store =
            Store::open(&dir.path().display().to_string(), &StoreOptions::default()).unwrap();
        let options = crate::engine::repo::TEST_OPTIONS;
        let repository =
            Repository::init(runtime.handle().clone(), store, b"pw", &options).unwrap();
        // 5000 levels of one directory each, as only a hostile repository holds them;
        // this test runs on a 2 MiB stack, as the daemon's blocking threads do.
        let packer = Packer::new(&repository, 1, None);
        let mut below = Tree {
            version: 1,
            nodes: Vec::new(),
        };
        for _ in 0..5000 {
            let raw = below.encode();
            let id = repository.blob_id(&raw);
            if packer.claim(&Index::new(), &id) {
                packer.add(BlobType::Tree, id, &raw).unwrap();
            }
            let mut node = Node::new(b"d".to_vec(), NodeKind::Dir);
            node.subtree = Some(id);
            below = Tree {
                version: 1,
                nodes: vec![node],
            };
        }
        let raw = below.encode();
        let root = repository.blob_id(&raw);
        packer.add(BlobType::Tree, root, &raw).unwrap();
        packer.finish().unwrap();
        let (index, _) = repository.load_index().unwrap();
        let mut reader = Reader {
            repository: &repository,
            index: &index,
            replica: None,
            repaired: Vec::new(),
            ahead: None,
        };
        let (mut items, mut unreadable) = (Vec::new(), Vec::new());
        collect(
            &mut reader,
            &root,
            b"",
            0,
            &[],
            &globset::GlobSet::empty(),
            true,
            &mut items,
            &mut unreadable,
        );
        assert_eq!(
            items.len(),
            MAX_DEPTH + 1,
            "every level up to the limit is sent"
        );
        assert_eq!(unreadable.len(), 1, "{unreadable:?}");
        assert!(
            unreadable[0]
                .reason
                .contains("nested deeper than 2048 levels")
        );
        assert_eq!(unreadable[0].path.matches('d').count(), MAX_DEPTH + 1);
        // The deepest directory's listing is unknown, so --delete leaves it alone.
        assert!(!items.last().unwrap().listed);
        assert!(
            items[..MAX_DEPTH]
                .iter()
                .all(|item| item.listed && item.whole)
        );
    }

    #[test]
    fn delete_cleans_only_at_and_below_the_backed_up_paths() {
        let paths = ["/srv/www".to_owned(), "/etc/nginx/".to_owned()];
        for rel in ["srv/www", "srv/www/html", "etc/nginx", "etc/nginx/sites"] {
            assert!(cleaned(rel.as_bytes(), &paths), "{rel}");
        }
        for rel in ["", "srv", "etc", "srv/wwwx", "srv/ww", "var"] {
            assert!(!cleaned(rel.as_bytes(), &paths), "{rel}");
        }
        // A snapshot of `/`: everything, the target itself too.
        assert!(cleaned(b"", &["/".to_owned()]));
        assert!(cleaned(b"home", &["/".to_owned()]));
    }

    #[test]
    fn entries_with_bad_kinds_or_ids_are_refused() {
        let mut entry = pb::FileEntry {
            kind: "file".into(),
            content: vec![vec![0; 31]],
            ..Default::default()
        };
        assert!(node_from_entry(&entry).is_err());
        entry.content = vec![vec![0; 32]];
        assert!(node_from_entry(&entry).is_ok());
        entry.kind = "door".into();
        assert!(node_from_entry(&entry).is_err());
    }
}
