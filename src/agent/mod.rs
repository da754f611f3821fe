//! The agent process on a colocated server (`cadang agent run`, unit
//! `cadang-agent.service`).
//!
//! It connects out to the daemon — the server needs no open port — with the credential
//! it received at enrolment, reports its hardware inventory at start and daily, and keeps
//! one stream open on which the daemon sends it backups ([`walk`]) and restores
//! ([`restore`]). A dropped stream is dialled again with back-off; the daemon resumes an
//! interrupted backup on the new stream, and chunks already stored are not sent again.
//!
//! What the agent keeps in its state directory (mode 0700): `agent.toml` (daemon address,
//! CA, ids), `credential` (mode 0600) and the files caches under `cache/`. It never holds
//! a repository's encryption key.

pub mod check;
pub mod inventory;
pub mod programs;
pub mod restore;
pub mod walk;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::rpc::pb;
use crate::rpc::pb::agent_message::Body as Up;
use crate::rpc::pb::agent_service_client::AgentServiceClient;
use crate::rpc::pb::daemon_message::Body as Down;

/// The agent's version, sent at enrolment and in every hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How often the inventory is reported.
const INVENTORY_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Longest wait between two dials.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest message on the stream (a 4 MiB chunk that does not compress, and headers).
pub const MAX_STREAM_MESSAGE: usize = 16 << 20;

/// The largest HTTP/2 frame either side of the job stream accepts (HTTP/2's default is
/// 16 KiB, which cuts a 1 MiB chunk into 64 frames, each its own write and wake-up).
pub const MAX_FRAME: u32 = 1 << 20;

/// The daemon refused this agent's credential: it was revoked or is unknown. Dialling
/// again would not help; the process stops with a distinct exit status.
#[derive(Debug, thiserror::Error)]
#[error("the daemon refused this agent: {0}")]
pub struct Refused(pub String);

/// `agent.toml`: where the daemon is and who this agent is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Daemon address (`https://…` or `http://` on loopback).
    pub server: String,
    /// CA certificate (PEM) of the daemon's certificate, for `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This agent's id.
    pub agent_id: i64,
    /// The server it runs on.
    pub server_id: i64,
    /// Its agency.
    pub agency_id: i64,
}

/// The state directory: configuration, credential, caches.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    fn config_path(&self) -> PathBuf {
        self.0.join("agent.toml")
    }
    fn credential_path(&self) -> PathBuf {
        self.0.join("credential")
    }
    fn cache_dir(&self) -> PathBuf {
        self.0.join("cache")
    }
    /// After-backup programs owed to the server ([`owed`]).
    pub fn owed_after(&self) -> crate::hook::owed::OwedAfter {
        crate::hook::owed::OwedAfter::new(self.0.join("after-backup-owed"))
    }

    /// Reads `agent.toml` and the credential.
    ///
    /// # Errors
    /// Missing files (not enrolled), unreadable ones, or a credential readable by others.
    pub fn load(&self) -> anyhow::Result<(AgentConfig, String)> {
        use std::os::unix::fs::PermissionsExt;
        let text = std::fs::read_to_string(self.config_path()).with_context(|| {
            format!(
                "{} is missing: enrol first with `cadang agent enroll`",
                self.config_path().display()
            )
        })?;
        let config: AgentConfig =
            toml::from_str(&text).with_context(|| format!("{}", self.config_path().display()))?;
        let path = self.credential_path();
        let mode = std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by others (mode {:o}): chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
        let credential = std::fs::read_to_string(&path)
            .with_context(|| format!("{}", path.display()))?
            .trim()
            .to_owned();
        Ok((config, credential))
    }

    /// Writes `agent.toml` and the credential (mode 0600, directory 0700), durably: the
    /// enrolment token is spent, so a credential lost to a power cut would take an
    /// officer to enrol the server again.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, config: &AgentConfig, credential: &str) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        crate::engine::store::create_dir_durably(&self.0, 0o700)
            .with_context(|| format!("cannot create {}", self.0.display()))?;
        let write = |path: &Path, bytes: &[u8]| -> anyhow::Result<()> {
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        };
        write(&self.credential_path(), credential.as_bytes())?;
        write(
            &self.config_path(),
            toml::to_string(config)
                .map_err(|e| anyhow!("cannot encode agent.toml: {e}"))?
                .as_bytes(),
        )?;
        std::fs::File::open(&self.0)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("cannot sync {}", self.0.display()))?;
        Ok(())
    }
}

/// Dials the daemon (no per-call deadline: the job stream lives for days).
///
/// # Errors
/// A bad address or CA.
pub fn channel(server: &str, ca: Option<&Path>) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("bad daemon address `{server}`"))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        // Restores stream whole files down: windows of a few chunks (see the daemon).
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_frame_size(Some(MAX_FRAME));
    if server.starts_with("https://") {
        let ca = ca.ok_or_else(|| anyhow!("{server} uses TLS: give its CA with --ca"))?;
        let pem = std::fs::read(ca).with_context(|| format!("{}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .context("TLS settings")?;
    }
    Ok(endpoint.connect_lazy())
}

fn bearer<T>(message: T, credential: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}")
            .parse()
            .map_err(|_| anyhow!("the credential holds characters a header cannot carry"))?,
    );
    Ok(request)
}

fn client(channel: Channel) -> AgentServiceClient<Channel> {
    AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_STREAM_MESSAGE)
        .max_encoding_message_size(MAX_STREAM_MESSAGE)
}

fn hostname() -> String {
    inventory::collect_local()
        .hostname
        .unwrap_or_else(|| "unknown".into())
}

/// Enrols with a one-time token, stores the credential, and reports the inventory.
///
/// # Errors
/// The daemon's refusal (used, expired or unknown token) or I/O errors.
pub async fn enroll(
    state: &StateDir,
    server: &str,
    ca: Option<&Path>,
    token: &str,
) -> anyhow::Result<AgentConfig> {
    let channel = channel(server, ca)?;
    let answer = client(channel.clone())
        .enroll(pb::EnrollRequest {
            enrollment_token: token.trim().to_owned(),
            hostname: hostname(),
            agent_version: VERSION.into(),
        })
        .await
        .map_err(|status| anyhow!("enrolment refused: {}", status.message()))?
        .into_inner();
    let config = AgentConfig {
        server: server.to_owned(),
        ca: ca.map(Path::to_path_buf),
        agent_id: answer.agent_id,
        server_id: answer.server_id,
        agency_id: answer.agency_id,
    };
    state.save(&config, &answer.credential)?;
    report_inventory(channel, &answer.credential).await?;
    Ok(config)
}

/// Reports this machine's inventory; returns the mismatches the daemon found.
///
/// # Errors
/// The daemon's refusal or a transport error.
pub async fn report_inventory(
    channel: Channel,
    credential: &str,
) -> anyhow::Result<Vec<pb::SpecMismatch>> {
    let inventory = tokio::task::spawn_blocking(inventory::collect_local).await?;
    let json = serde_json::to_string(&inventory)?;
    let answer = client(channel)
        .report_inventory(bearer(
            pb::ReportInventoryRequest {
                inventory_json: json,
            },
            credential,
        )?)
        .await
        .map_err(|status| anyhow!("inventory refused: {}", status.message()))?
        .into_inner();
    Ok(answer.mismatches)
}

/// Runs the agent until `shutdown` turns true: dial, serve jobs, dial again on loss.
/// `allowed` are the programs the daemon may have it run (see [`programs`]).
///
/// # Errors
/// Not enrolled, or the credential refused (revoked): those do not heal by retrying.
pub async fn run(
    state: StateDir,
    allowed: programs::AllowedPrograms,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (config, credential) = state.load()?;
    if allowed.is_empty() {
        tracing::info!(
            "no program is allowed: before-backup programs and restore checks are refused (--allow-program)"
        );
    } else {
        tracing::info!(programs = ?allowed.describe(), "programs the daemon may run here");
    }
    // Programs owed by jobs this agent stopped in (killed, rebooted) run before anything
    // else: a file system snapshot left behind slows the server's every write.
    let owed = state.owed_after();
    let allowed = Arc::new(allowed);
    {
        let allowed = allowed.clone();
        tokio::task::spawn_blocking(move || {
            owed.run_owed(&|command: &[String]| {
                allowed
                    .command(command)
                    .map_err(|refusal| format!("after-backup program refused: {refusal}"))
            })
        })
        .await?;
    }
    let mut backoff = Duration::from_secs(1);
    let mut next_inventory = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let channel = channel(&config.server, config.ca.as_deref())?;
        match session(
            &state,
            channel,
            &credential,
            &allowed,
            &mut shutdown,
            &mut next_inventory,
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(SessionError::Refused(message)) => return Err(Refused(message).into()),
            Err(SessionError::Lost(message)) => {
                tracing::warn!(%message, retry_in = ?backoff, "connection to the daemon lost");
            }
            Err(SessionError::Served) => backoff = Duration::from_secs(1),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum SessionError {
    /// Authentication failed: stop.
    Refused(String),
    /// The stream broke before it carried anything.
    Lost(String),
    /// The stream worked for a while, then broke: dial again at once.
    Served,
}

fn classify(status: &tonic::Status) -> SessionError {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            SessionError::Refused(status.message().to_owned())
        }
        _ => SessionError::Lost(format!("{}: {}", status.code(), status.message())),
    }
}

/// What the job threads receive from the stream.
enum ToBackup {
    Have(pb::HaveAnswer),
    End(pb::JobEnd),
}

struct BackupHandle {
    job_id: String,
    to_job: std::sync::mpsc::Sender<ToBackup>,
    cancel: Arc<AtomicBool>,
}

struct RestoreHandle {
    job_id: String,
    to_job: mpsc::Sender<Down>,
}

/// The walker's view of the stream.
struct StreamLink {
    up: mpsc::Sender<pb::AgentMessage>,
    from_stream: std::sync::mpsc::Receiver<ToBackup>,
    next_query: u64,
    /// Queries asked and not answered yet.
    waiting: HashSet<u64>,
    /// Answers that arrived before their turn, by query (at most the queries asked
    /// ahead).
    answered: HashMap<u64, Vec<u32>>,
    sent: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
    end: Option<pb::JobEnd>,
}

impl StreamLink {
    /// Whether the daemon ended the job as failed: a `JobEnd` seen by the walk, or
    /// one that arrives within a second (it precedes the daemon's closing of the job).
    fn failed_end(&mut self) -> bool {
        if let Some(end) = &self.end {
            return !end.ok;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.from_stream.recv_timeout(left) {
                Ok(ToBackup::End(end)) => {
                    let failed = !end.ok;
                    self.end = Some(end);
                    return failed;
                }
                Ok(ToBackup::Have(_)) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

impl walk::Link for StreamLink {
    fn send(&mut self, body: Up) -> Result<(), walk::WalkError> {
        let message = pb::AgentMessage { body: Some(body) };
        self.sent
            .fetch_add(message.encoded_len() as u64, Ordering::Relaxed);
        self.up
            .blocking_send(message)
            .map_err(|_| walk::WalkError::Disconnected)
    }

    fn ask(&mut self, job_id: &str, ids: Vec<[u8; 32]>) -> Result<u64, walk::WalkError> {
        self.next_query += 1;
        let query_id = self.next_query;
        self.send(Up::Have(pb::HaveQuery {
            job_id: job_id.to_owned(),
            query_id,
            ids: ids.iter().map(|id| id.to_vec()).collect(),
        }))?;
        self.waiting.insert(query_id);
        Ok(query_id)
    }

    fn answer(&mut self, query: u64, count: usize) -> Result<Vec<u32>, walk::WalkError> {
        let missing = loop {
            if let Some(missing) = self.answered.remove(&query) {
                break missing;
            }
            if self.cancel.load(Ordering::Relaxed) {
                return Err(walk::WalkError::Cancelled);
            }
            match self.from_stream.recv_timeout(Duration::from_millis(500)) {
                // Only answers to queries still waiting are kept.
                Ok(ToBackup::Have(answer)) => {
                    if self.waiting.remove(&answer.query_id) {
                        self.answered.insert(answer.query_id, answer.missing);
                    }
                }
                Ok(ToBackup::End(end)) => {
                    // The daemon ended the job early (it failed on its side).
                    self.end = Some(end);
                    return Err(walk::WalkError::Cancelled);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(walk::WalkError::Disconnected);
                }
            }
        };
        if missing.iter().any(|i| *i as usize >= count) {
            return Err(walk::WalkError::Invalid(
                "the daemon answered with a position outside the query".into(),
            ));
        }
        Ok(missing)
    }

    fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Whether each job's before-backup program has succeeded, by job. A job resumed on a new
/// stream waits for the program its first attempt started and does not run it again once
/// it succeeded; an agent that restarted runs it again.
static BEFORE_BACKUP: std::sync::LazyLock<
    std::sync::Mutex<HashMap<String, Arc<std::sync::Mutex<bool>>>>,
> = std::sync::LazyLock::new(Default::default);

/// Runs the job's before-backup program, once per job (see [`BEFORE_BACKUP`]).
fn before_backup(
    job: &pb::BackupJob,
    allowed: &programs::AllowedPrograms,
    cancel: &AtomicBool,
) -> Result<(), String> {
    let Some(program) = job.before_command.first() else {
        return Ok(());
    };
    let command = allowed
        .command(&job.before_command)
        .map_err(|refusal| format!("before-backup program refused: {refusal}"))?;
    let slot = BEFORE_BACKUP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(job.job_id.clone())
        .or_default()
        .clone();
    let mut succeeded = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *succeeded {
        return Ok(());
    }
    tracing::info!(job = %job.job_id, %program, "running the before-backup program");
    let timeout = Duration::from_secs(u64::from(job.before_timeout_secs.max(1)));
    crate::hook::run(crate::hook::Stage::Before, &command, &[], timeout, cancel)
        .map_err(|e| e.to_string())?;
    *succeeded = true;
    Ok(())
}

/// The job has ended for good with `result` (`ok`, `partial`, `failed`, `cancelled`):
/// runs its after-backup program, if it has one and this agent allows it, and forgets
/// that its before-backup program ran (what it did is undone; a resumed job runs it
/// again). Returns why the after program failed.
fn job_over(
    job: &pb::BackupJob,
    allowed: &programs::AllowedPrograms,
    owed: &crate::hook::owed::OwedAfter,
    result: &str,
) -> Option<String> {
    forget_before_backup(&job.job_id);
    if job.after_command.is_empty() {
        return None;
    }
    let failure = match allowed.command(&job.after_command) {
        Ok(command) => {
            let timeout = Duration::from_secs(u64::from(job.after_timeout_secs.max(1)));
            crate::hook::run_after(&command, timeout, result)
        }
        Err(refusal) => Some(format!("after-backup program refused: {refusal}")),
    };
    owed.settle(&job.job_id);
    failure
}

/// `error`, followed by the after-backup program's failure if there was one.
fn with_after(error: String, after: Option<String>) -> String {
    match after {
        Some(after) => crate::hook::and_after(Some(error), &after),
        None => error,
    }
}

/// The job is over (committed or failed): a new run starts from its program again.
fn forget_before_backup(job_id: &str) {
    BEFORE_BACKUP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(job_id);
}

/// One backup job on a blocking thread: walk, report, wait for the commit, keep the cache.
fn backup_job(
    job: pb::BackupJob,
    mut link: StreamLink,
    cache_dir: PathBuf,
    allowed: &programs::AllowedPrograms,
    owed: &crate::hook::owed::OwedAfter,
) {
    let job_id = job.job_id.clone();
    let fail = |link: &mut StreamLink, error: String| {
        let _ = walk::Link::send(
            link,
            Up::Failed(pb::JobFailed {
                job_id: job_id.clone(),
                error,
            }),
        );
    };
    let decoded = match walk::Job::from_message(&job) {
        Ok(decoded) => decoded,
        Err(error) => return fail(&mut link, error.to_string()),
    };
    // Owed from now until it has run, even if this agent stops in between.
    if let Err(error) = owed.record(&job.job_id, &job.after_command, job.after_timeout_secs) {
        return fail(
            &mut link,
            format!(
                "cannot record the after-backup program in the agent's state directory: {error}"
            ),
        );
    }
    if let Err(error) = before_backup(&job, allowed, &link.cancel) {
        tracing::warn!(job = %job_id, %error, "before-backup program failed; nothing read");
        let after = job_over(&job, allowed, owed, "failed");
        return fail(&mut link, with_after(error, after));
    }
    let cache_path =
        walk::FilesCache::path_for(&cache_dir, &job.repository_fingerprint, &job.paths);
    let cache = walk::FilesCache::load(&cache_path);
    tracing::info!(job = %job_id, paths = ?job.paths, cached_files = cache.len(), resumed = job.resumed, "backup started");
    let cancel = link.cancel.clone();
    // A job that fails while directories were vouched for as unchanged may have failed
    // because of them: the next one vouches for none.
    let vouched = cache.describes(&job.parent_snapshot, &job.parent_tree);
    let forget_subtrees = || {
        if vouched && let Err(error) = walk::FilesCache::forget_subtrees(&cache_path) {
            tracing::warn!(%error, "cannot update the files cache");
        }
    };
    let outcome = match walk::run(&decoded, &mut link, cache, cancel) {
        Ok(outcome) => outcome,
        // The daemon failed the job and closed it (its stream then drops the
        // messages that were still on their way).
        Err(walk::WalkError::Disconnected) if link.failed_end() => {
            job_over(&job, allowed, owed, "failed");
            forget_subtrees();
            return;
        }
        Err(walk::WalkError::Disconnected) => {
            tracing::warn!(job = %job_id, "stream lost during the backup; the daemon resumes it");
            return;
        }
        // Stopped by the daemon at a safe point (shutdown, end of the backup window):
        // nothing was wrong with what was sent.
        Err(walk::WalkError::Cancelled) if !link.failed_end() => {
            let after = job_over(&job, allowed, owed, "cancelled");
            return fail(
                &mut link,
                with_after(walk::WalkError::Cancelled.to_string(), after),
            );
        }
        Err(error) => {
            let after = job_over(&job, allowed, owed, "failed");
            forget_subtrees();
            return fail(&mut link, with_after(error.to_string(), after));
        }
    };
    // Everything is read: the after-backup program runs now (a file system snapshot is
    // released before the daemon's commit, which needs nothing more from this server).
    let result = if outcome.problems.is_empty() {
        "ok"
    } else {
        "partial"
    };
    let after_error = job_over(&job, allowed, owed, result).unwrap_or_default();
    let bytes_sent = walk::Link::bytes_sent(&link);
    if walk::Link::send(
        &mut link,
        Up::WalkDone(pb::WalkDone {
            job_id: job_id.clone(),
            files: outcome.files,
            bytes: outcome.bytes,
            problems: outcome.problems.clone(),
            files_unchanged: outcome.files_unchanged,
            bytes_sent,
            files_linked: outcome.files_linked,
            subtrees_unchanged: outcome.subtrees_unchanged,
            after_error,
        }),
    )
    .is_err()
    {
        return;
    }
    // Keep the new cache only once the snapshot that matches it is committed.
    let mut outcome = outcome;
    loop {
        match link.from_stream.recv() {
            Ok(ToBackup::End(end)) if end.ok => {
                outcome.cache.set_snapshot(&end.snapshot_id, &end.tree_id);
                if let Err(error) = outcome.cache.save(&cache_path) {
                    tracing::warn!(%error, "cannot save the files cache; the next backup reads every file");
                }
                tracing::info!(job = %job_id, snapshot = %end.snapshot_id, files = outcome.files, bytes_sent, "backup committed");
                return;
            }
            Ok(ToBackup::End(end)) => {
                tracing::warn!(job = %job_id, error = %end.error, "the daemon could not commit the backup");
                forget_subtrees();
                return;
            }
            Ok(ToBackup::Have(_)) => {}
            Err(_) => return,
        }
    }
}

/// What the restore's decoding thread hands the writer, in stream order.
enum Step {
    Message(Box<Down>),
    Chunk(restore::Decoded),
}

/// Chunks decoded ahead of the writer: enough to keep both threads busy.
const DECODED_AHEAD: usize = 8;

/// Decompresses and hashes the restore's chunks on a thread of its own, so that this
/// overlaps with writing; the rest of the stream passes through in order. The thread
/// ends with the stream, after its last message, or when the writer is gone.
fn decode_ahead(
    ids: crate::engine::crypto::IdKeys,
    mut from_stream: mpsc::Receiver<Down>,
) -> std::io::Result<std::sync::mpsc::Receiver<Step>> {
    let (ahead, decoded) = std::sync::mpsc::sync_channel(DECODED_AHEAD);
    std::thread::Builder::new()
        .name("cadang-restore-decode".into())
        .spawn(move || {
            while let Some(message) = from_stream.blocking_recv() {
                let last = matches!(message, Down::RestoreEnd(_));
                let step = match message {
                    Down::RestoreChunk(chunk) => Step::Chunk(restore::decode_chunk(&ids, &chunk)),
                    other => Step::Message(Box::new(other)),
                };
                if ahead.send(step).is_err() || last {
                    break;
                }
            }
        })?;
    Ok(decoded)
}

/// One restore on a blocking thread: entries and chunks in, results out.
fn restore_job(
    job: pb::RestoreJob,
    from_stream: mpsc::Receiver<Down>,
    up: mpsc::Sender<pb::AgentMessage>,
) {
    let send = |body: Up| {
        up.blocking_send(pb::AgentMessage { body: Some(body) })
            .is_ok()
    };
    let started = crate::engine::restore::Overwrite::parse_or_always(&job.overwrite)
        .and_then(|overwrite| {
            if job.dry_run {
                restore::RestoreWriter::new_dry_run(&job.target_dir, &job.id_key, overwrite)
            } else {
                restore::RestoreWriter::new(&job.target_dir, &job.id_key, overwrite)
            }
        })
        .and_then(|writer| {
            if job.delete {
                writer.deleting(&job.excludes, job.clean_target)
            } else {
                Ok(writer)
            }
        })
        .and_then(|writer| {
            let steps = decode_ahead(writer.ids().clone(), from_stream)
                .map_err(|error| format!("cannot start the decoding thread: {error}"))?;
            Ok((writer, steps))
        });
    let (mut writer, steps) = match started {
        Ok(started) => started,
        Err(error) => {
            send(Up::Failed(pb::JobFailed {
                job_id: job.job_id.clone(),
                error,
            }));
            return;
        }
    };
    tracing::info!(job = %job.job_id, target = %job.target_dir, snapshot = %job.snapshot_id, "restore started");
    let mut entries = 0u64;
    for step in steps {
        let message = match step {
            Step::Chunk(chunk) => {
                writer.chunk_decoded(chunk);
                continue;
            }
            Step::Message(message) => *message,
        };
        match message {
            Down::RestoreEntry(entry) => {
                writer.entry(entry);
                entries += 1;
                if entries.is_multiple_of(500) {
                    let (failed, verified) = writer.take_results();
                    if !send(Up::RestoreResults(pb::RestoreResults {
                        job_id: job.job_id.clone(),
                        failed,
                        verified,
                    })) {
                        return;
                    }
                }
            }
            Down::RestoreProbe(probe) => {
                let answer = writer.probe(&probe.files);
                if !send(Up::ProbeAnswer(pb::RestoreProbeAnswer {
                    job_id: job.job_id.clone(),
                    batch: probe.batch,
                    ..answer
                })) {
                    return;
                }
            }
            Down::RestoreEnd(end) => {
                let (summary, failed, verified) = writer.finish();
                tracing::info!(job = %job.job_id, verified = summary.files_verified, failed = summary.files_failed, unreadable = end.unreadable.len(), "restore finished");
                send(Up::RestoreResults(pb::RestoreResults {
                    job_id: job.job_id.clone(),
                    failed,
                    verified,
                }));
                send(Up::RestoreDone(pb::RestoreDone {
                    job_id: job.job_id.clone(),
                    files_verified: summary.files_verified,
                    files_failed: summary.files_failed,
                    bytes: summary.bytes,
                    files_unchanged: summary.files_unchanged,
                    bytes_unchanged: summary.bytes_unchanged,
                    files_kept: summary.files_kept,
                    deleted: summary.deleted,
                    deleted_paths: summary.deleted_paths,
                    bytes_reused: summary.bytes_reused,
                }));
                return;
            }
            _ => {}
        }
    }
    tracing::warn!(job = %job.job_id, "stream lost during the restore");
}

async fn session(
    state: &StateDir,
    channel: Channel,
    credential: &str,
    allowed: &Arc<programs::AllowedPrograms>,
    shutdown: &mut watch::Receiver<bool>,
    next_inventory: &mut tokio::time::Instant,
) -> Result<(), SessionError> {
    let (up, up_rx) = mpsc::channel::<pb::AgentMessage>(64);
    let hello = pb::AgentMessage {
        body: Some(Up::Hello(pb::AgentHello {
            version: VERSION.into(),
            hostname: hostname(),
            features: vec![
                crate::rpc::FEATURE_RESTORE_IN_PLACE.into(),
                crate::rpc::FEATURE_RESTORE_DELETE.into(),
                crate::rpc::FEATURE_RESTORE_DRY_RUN.into(),
            ],
        })),
    };
    up.send(hello)
        .await
        .map_err(|_| SessionError::Lost("cannot queue the hello".into()))?;
    let request = bearer(
        tokio_stream::wrappers::ReceiverStream::new(up_rx),
        credential,
    )
    .map_err(|e| SessionError::Refused(e.to_string()))?;
    let mut inbound = client(channel.clone())
        .jobs(request)
        .await
        .map_err(|status| classify(&status))?
        .into_inner();
    tracing::info!("connected to the daemon; waiting for work");
    let mut backup: Option<BackupHandle> = None;
    let mut restore: Option<RestoreHandle> = None;
    let sent = Arc::new(AtomicU64::new(0));
    let mut served = false;
    loop {
        let inventory_due = tokio::time::sleep_until(*next_inventory);
        tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => {
                        return Err(if served { SessionError::Served } else { SessionError::Lost("the daemon closed the stream".into()) });
                    }
                    Err(status) => {
                        if let Some(handle) = &backup { handle.cancel.store(true, Ordering::Relaxed); }
                        return Err(match classify(&status) {
                            SessionError::Lost(_) if served => SessionError::Served,
                            other => other,
                        });
                    }
                };
                served = true;
                match message.body {
                    Some(Down::Backup(job)) => {
                        if let Some(old) = backup.take() { old.cancel.store(true, Ordering::Relaxed); }
                        let (to_job, from_stream) = std::sync::mpsc::channel();
                        let cancel = Arc::new(AtomicBool::new(false));
                        backup = Some(BackupHandle { job_id: job.job_id.clone(), to_job, cancel: cancel.clone() });
                        let link = StreamLink {
                            up: up.clone(),
                            from_stream,
                            next_query: 0,
                            waiting: HashSet::new(),
                            answered: HashMap::new(),
                            sent: sent.clone(),
                            cancel,
                            end: None,
                        };
                        let cache_dir = state.cache_dir();
                        let owed = state.owed_after();
                        let allowed = allowed.clone();
                        tokio::task::spawn_blocking(move || {
                            backup_job(job, link, cache_dir, &allowed, &owed);
                            crate::release_free_memory();
                        });
                    }
                    Some(Down::Have(answer)) => {
                        if let Some(handle) = &backup { let _ = handle.to_job.send(ToBackup::Have(answer)); }
                    }
                    Some(Down::JobEnd(end)) => {
                        if let Some(handle) = backup.take_if(|h| h.job_id == end.job_id) {
                            let _ = handle.to_job.send(ToBackup::End(end));
                        }
                    }
                    Some(Down::Cancel(cancel)) => {
                        if let Some(handle) = backup.take_if(|h| h.job_id == cancel.job_id) {
                            tracing::info!(job = %cancel.job_id, reason = %cancel.reason, "job cancelled by the daemon");
                            handle.cancel.store(true, Ordering::Relaxed);
                        }
                        if restore.as_ref().is_some_and(|h| h.job_id == cancel.job_id) {
                            restore = None;
                        }
                    }
                    Some(Down::Restore(job)) => {
                        let (to_job, from_stream) = mpsc::channel(64);
                        restore = Some(RestoreHandle { job_id: job.job_id.clone(), to_job });
                        let up = up.clone();
                        tokio::task::spawn_blocking(move || {
                            restore_job(job, from_stream, up);
                            crate::release_free_memory();
                        });
                    }
                    Some(body @ (Down::RestoreEntry(_) | Down::RestoreChunk(_) | Down::RestoreEnd(_) | Down::RestoreProbe(_))) => {
                        let end = matches!(body, Down::RestoreEnd(_));
                        if let Some(handle) = &restore
                            && handle.to_job.send(body).await.is_err()
                        {
                            restore = None;
                        }
                        if end { restore = None; }
                    }
                    Some(Down::Check(job)) => {
                        let up = up.clone();
                        let allowed = allowed.clone();
                        tokio::spawn(async move {
                            tracing::info!(job = %job.job_id, command = ?job.command, "running the restore's check");
                            let done = check::run(job, &allowed).await;
                            let _ = up.send(pb::AgentMessage { body: Some(Up::CheckDone(done)) }).await;
                        });
                    }
                    None => {}
                }
            }
            () = inventory_due => {
                *next_inventory = tokio::time::Instant::now() + INVENTORY_EVERY;
                match report_inventory(channel.clone(), credential).await {
                    Ok(mismatches) if mismatches.is_empty() => tracing::info!("inventory reported; it matches the asset register"),
                    Ok(mismatches) => tracing::warn!(count = mismatches.len(), "inventory reported; it differs from the asset register"),
                    Err(error) => {
                        *next_inventory = tokio::time::Instant::now() + Duration::from_secs(3600);
                        tracing::warn!(%error, "cannot report the inventory; trying again in an hour");
                    }
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    if let Some(handle) = &backup { handle.cancel.store(true, Ordering::Relaxed); }
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan's before-backup program runs once per job: a resumed attempt of the same
    /// job does not run it again once it succeeded; a failure is not remembered, and a
    /// finished job's next run runs it again.
    #[test]
    fn the_before_backup_program_runs_once_per_job() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dumps.log");
        let flag = dir.path().join("fail");
        let script = format!(
            "test -e {} && exit 9; echo dumped >> {}",
            flag.display(),
            log.display()
        );
        let job = |id: &str| pb::BackupJob {
            job_id: id.into(),
            before_command: vec!["/bin/sh".into(), "-c".into(), script.clone()],
            before_timeout_secs: 30,
            ..Default::default()
        };
        let runs = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let no = AtomicBool::new(false);
        let sh = programs::AllowedPrograms::new(&[PathBuf::from("/bin/sh")]).unwrap();
        // Not allowed by this server's administrator: refused, nothing runs.
        let other = programs::AllowedPrograms::new(&[PathBuf::from("/bin/bash")]).unwrap();
        for allowed in [&programs::AllowedPrograms::default(), &other] {
            let error = before_backup(&job("run:70"), allowed, &no).unwrap_err();
            assert!(
                error.contains("refused") && error.contains("--allow-program /bin/sh"),
                "{error}"
            );
        }
        assert_eq!(runs(), 0);
        forget_before_backup("run:70");
        std::fs::write(&flag, b"").unwrap();
        let error = before_backup(&job("run:71"), &sh, &no).unwrap_err();
        assert!(error.contains("exit status: 9"), "{error}");
        std::fs::remove_file(&flag).unwrap();
        before_backup(&job("run:71"), &sh, &no).unwrap();
        before_backup(&job("run:71"), &sh, &no).unwrap();
        assert_eq!(runs(), 1, "the resumed attempt did not dump again");
        before_backup(&job("run:72"), &sh, &no).unwrap();
        assert_eq!(runs(), 2);
        forget_before_backup("run:71");
        before_backup(&job("run:71"), &sh, &no).unwrap();
        assert_eq!(runs(), 3);
        forget_before_backup("run:71");
        forget_before_backup("run:72");
        let none = pb::BackupJob {
            job_id: "run:73".into(),
            ..Default::default()
        };
        before_backup(&none, &programs::AllowedPrograms::default(), &no).unwrap();
    }

    /// When a job ends for good, its after-backup program runs with the outcome, and a
    /// later attempt of the job runs the before-backup program again.
    #[test]
    fn the_after_backup_program_is_told_the_outcome_and_resets_the_before_program() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hooks.log");
        let line = |what: &str| {
            vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!("echo {what}${{CADANG_BACKUP_RESULT}} >> {}", log.display()),
            ]
        };
        let job = pb::BackupJob {
            job_id: "run:80".into(),
            before_command: line("before"),
            before_timeout_secs: 30,
            after_command: line("after-"),
            after_timeout_secs: 30,
            ..Default::default()
        };
        let lines = || -> Vec<String> {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let no = AtomicBool::new(false);
        let sh = programs::AllowedPrograms::new(&[PathBuf::from("/bin/sh")]).unwrap();
        let owed = crate::hook::owed::OwedAfter::new(dir.path().join("owed"));
        let record = |job: &pb::BackupJob| {
            owed.record(&job.job_id, &job.after_command, job.after_timeout_secs)
                .unwrap();
        };
        record(&job);
        before_backup(&job, &sh, &no).unwrap();
        before_backup(&job, &sh, &no).unwrap();
        assert_eq!(job_over(&job, &sh, &owed, "partial"), None);
        before_backup(&job, &sh, &no).unwrap();
        assert_eq!(job_over(&job, &sh, &owed, "cancelled"), None);
        assert_eq!(
            lines(),
            ["before", "after-partial", "before", "after-cancelled"]
        );
        // Refused, or failing: the reason comes back for the run's record.
        record(&job);
        let refused = job_over(&job, &programs::AllowedPrograms::default(), &owed, "ok").unwrap();
        assert!(
            refused.starts_with("after-backup program refused"),
            "{refused}"
        );
        let failing = pb::BackupJob {
            after_command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo busy >&2; exit 5".into(),
            ],
            ..job.clone()
        };
        record(&failing);
        let failed = job_over(&failing, &sh, &owed, "ok").unwrap();
        assert!(
            failed.contains("after-backup program `/bin/sh` failed (exit status: 5)")
                && failed.ends_with("busy"),
            "{failed}"
        );
        assert_eq!(lines().len(), 4, "nothing else ran");
        assert_eq!(
            with_after("walk failed".into(), Some(failed.clone())),
            format!("walk failed; {failed}")
        );
        let plain = pb::BackupJob {
            job_id: "run:81".into(),
            ..Default::default()
        };
        assert_eq!(
            job_over(&plain, &programs::AllowedPrograms::default(), &owed, "ok"),
            None
        );
        // Run, refused or failed: the program is no longer owed.
        assert!(owed.run_owed(&|c: &[String]| Ok(c.to_vec())).is_empty());
        assert_eq!(lines().len(), 4);
    }

    fn stream_link() -> (StreamLink, std::sync::mpsc::Sender<ToBackup>) {
        let (up, _) = mpsc::channel(1);
        let (to_job, from_stream) = std::sync::mpsc::channel();
        let link = StreamLink {
            up,
            from_stream,
            next_query: 0,
            waiting: HashSet::new(),
            answered: HashMap::new(),
            sent: Arc::default(),
            cancel: Arc::default(),
            end: None,
        };
        (link, to_job)
    }

    /// A backup job the daemon failed (after which its files cache vouches for no
    /// directory) is told apart from a lost stream and from a stop at a safe point.
    #[test]
    fn a_job_the_daemon_failed_is_told_apart_from_a_lost_stream() {
        let end = |ok| {
            ToBackup::End(pb::JobEnd {
                ok,
                ..Default::default()
            })
        };
        let (mut link, to_job) = stream_link();
        to_job
            .send(ToBackup::Have(pb::HaveAnswer::default()))
            .unwrap();
        to_job.send(end(false)).unwrap();
        assert!(link.failed_end());
        assert!(link.failed_end(), "remembered");

        let (mut link, to_job) = stream_link();
        to_job.send(end(true)).unwrap();
        assert!(!link.failed_end());

        // The stream is gone without an end: at once.
        let (mut link, to_job) = stream_link();
        drop(to_job);
        let started = std::time::Instant::now();
        assert!(!link.failed_end());
        assert!(started.elapsed() < Duration::from_millis(500));

        // Nothing comes: a second at most.
        let (mut link, _to_job) = stream_link();
        let started = std::time::Instant::now();
        assert!(!link.failed_end());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
