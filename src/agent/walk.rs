//! The agent's side of a backup: walk the paths, cut and name chunks with the
//! repository's chunker and id key, ask the daemon which chunks it lacks, send only
//! those (compressed), then the entries that reference them.
//!
//! Files unchanged since the last completed backup (same size, mtime, ctime and inode)
//! are taken from the agent's files cache without being read; their chunk ids are still
//! asked about, and a file whose chunks the repository no longer has (pruned, or a
//! different repository) is read again. The cache is replaced only after the daemon
//! confirms the snapshot, so an interrupted job never leaves a cache that claims more
//! than the repository holds.
//!
//! Everything here blocks; the agent runs it on its own thread and talks to the stream
//! through a [`Link`].

use std::collections::{HashMap, HashSet};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::backup::build_excludes;
use crate::engine::chunker::Chunker;
use crate::engine::crypto::IdKeys;
use crate::engine::format::encode_blob_payload;
use crate::rpc::pb;

/// Read buffer per file: two largest chunks, so a cut is always found in it.
const READ_BUF: usize = 8 << 20;
/// A have-query is sent when the batch holds this many payload bytes…
const BATCH_BYTES: usize = 16 << 20;
/// …or this many ids.
const BATCH_IDS: usize = 2048;
/// Entries per message.
const ENTRIES_PER_MESSAGE: usize = 512;
/// How often progress is sent.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Why a backup job stopped.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The stream to the daemon is gone (the job resumes on the next connection).
    #[error("the connection to the daemon was lost")]
    Disconnected,
    /// The daemon asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// The job cannot be carried out (bad parameters, no source path).
    #[error("{0}")]
    Invalid(String),
}

/// The stream, as the walker sees it.
pub trait Link {
    /// Sends one message (blocks while the stream is full).
    ///
    /// # Errors
    /// [`WalkError::Disconnected`].
    fn send(&mut self, body: pb::agent_message::Body) -> Result<(), WalkError>;

    /// Sends a have-query and waits for its answer: the positions of missing ids.
    ///
    /// # Errors
    /// [`WalkError::Disconnected`] or [`WalkError::Cancelled`].
    fn have(&mut self, job_id: &str, ids: Vec<[u8; 32]>) -> Result<Vec<u32>, WalkError>;

    /// Bytes sent so far on this link (encoded messages).
    fn bytes_sent(&self) -> u64;
}

/// One file as the cache remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFile {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    content: Vec<[u8; 32]>,
}

/// The files cache of one source (paths) in one repository.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FilesCache {
    files: HashMap<Vec<u8>, CachedFile>,
}

impl FilesCache {
    /// The cache file for a repository and a set of paths under `dir`.
    pub fn path_for(dir: &Path, fingerprint: &[u8], paths: &[String]) -> PathBuf {
        let mut hasher = blake3::Hasher::new();
        hasher.update(fingerprint);
        for path in paths {
            hasher.update(path.as_bytes());
            hasher.update(b"\0");
        }
        let name = hasher.finalize().to_hex();
        dir.join(format!("files-{}.cache", &name[..24]))
    }

    /// Loads a cache; a missing or unreadable one is empty (it only saves reading).
    pub fn load(path: &Path) -> Self {
        let Ok(bytes) = std::fs::read(path) else {
            return Self::default();
        };
        zstd::decode_all(bytes.as_slice())
            .ok()
            .and_then(|raw| postcard::from_bytes(&raw).ok())
            .unwrap_or_else(|| {
                tracing::warn!(path = %path.display(), "files cache unreadable; every file is read again");
                Self::default()
            })
    }

    /// Writes the cache atomically (temporary file, fsync, rename), mode 0600.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let raw = postcard::to_stdvec(self).map_err(std::io::Error::other)?;
        let packed = zstd::encode_all(raw.as_slice(), 3)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&packed)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// What a finished walk reports.
#[derive(Debug, Default)]
pub struct WalkOutcome {
    /// Files done.
    pub files: u64,
    /// Bytes read or taken unchanged.
    pub bytes: u64,
    /// Files taken from the cache.
    pub files_unchanged: u64,
    /// Unreadable files.
    pub problems: Vec<pb::FileProblem>,
    /// The cache to keep once the daemon commits the snapshot.
    pub cache: FilesCache,
}

/// The parameters of a job, decoded and checked.
pub struct Job {
    /// Id.
    pub job_id: String,
    /// Paths.
    pub paths: Vec<PathBuf>,
    /// Exclude globs.
    pub excludes: Vec<String>,
    /// Chunker.
    pub chunker: Chunker,
    /// Naming capability.
    pub ids: IdKeys,
    /// zstd level.
    pub level: i32,
    /// Most payload bytes per second; 0 for no limit.
    pub bandwidth_limit: u64,
}

impl Job {
    /// Decodes a job message.
    ///
    /// # Errors
    /// [`WalkError::Invalid`] for parameters out of range.
    pub fn from_message(job: &pb::BackupJob) -> Result<Self, WalkError> {
        let params = crate::engine::chunker::ChunkerParams {
            algorithm: crate::engine::chunker::ChunkerAlgorithm::FastCdc2020,
            min_size: job.chunk_min,
            avg_size: job.chunk_avg,
            max_size: job.chunk_max,
            normalization: u8::try_from(job.chunk_normalization).unwrap_or(u8::MAX),
        };
        if job.chunker != "fastcdc-v2020" {
            return Err(WalkError::Invalid(format!(
                "unknown chunker `{}`",
                job.chunker
            )));
        }
        params.validate().map_err(WalkError::Invalid)?;
        if params.max_size as usize > READ_BUF / 2 {
            return Err(WalkError::Invalid("chunks larger than 4 MiB".into()));
        }
        let key: [u8; 32] = job
            .id_key
            .as_slice()
            .try_into()
            .map_err(|_| WalkError::Invalid("the id key must be 32 bytes".into()))?;
        if job.paths.is_empty() || job.paths.iter().any(|p| !p.starts_with('/')) {
            return Err(WalkError::Invalid(
                "a backup needs absolute paths".to_owned(),
            ));
        }
        Ok(Self {
            job_id: job.job_id.clone(),
            paths: job.paths.iter().map(PathBuf::from).collect(),
            excludes: job.excludes.clone(),
            chunker: Chunker::new(&params, job.chunker_seed),
            ids: IdKeys::from_parts(key, job.chunker_seed),
            level: job.compression_level.clamp(0, 19),
            bandwidth_limit: job.bandwidth_limit,
        })
    }
}

struct BatchChunk {
    id: [u8; 32],
    raw_len: u32,
    payload: Option<Vec<u8>>,
}

struct Walker<'a, L: Link> {
    job: &'a Job,
    link: &'a mut L,
    cancel: Arc<AtomicBool>,
    old: FilesCache,
    new: FilesCache,
    excludes: globset::GlobSet,
    batch: Vec<BatchChunk>,
    batch_ids: HashSet<[u8; 32]>,
    batch_bytes: usize,
    /// File entries waiting for their chunks' batch; `true` when from the cache.
    waiting: Vec<(pb::FileEntry, bool, PathBuf)>,
    ready: Vec<pb::FileEntry>,
    /// Chunks the daemon holds (answered present or sent) during this job.
    known: HashSet<[u8; 32]>,
    outcome: WalkOutcome,
    payload_sent: u64,
    started: Instant,
    last_progress: Instant,
    last_progress_bytes: u64,
}

fn entry_from_meta(path: &Path, meta: &Metadata) -> pb::FileEntry {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_block_device() {
        "blockdev"
    } else if ft.is_char_device() {
        "chardev"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "file"
    };
    pb::FileEntry {
        path: path.as_os_str().as_bytes().to_vec(),
        kind: kind.into(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        inode: meta.ino(),
        dev: meta.dev(),
        size: if kind == "file" { meta.len() } else { 0 },
        content: Vec::new(),
        link_target: Vec::new(),
        rdev: if matches!(kind, "blockdev" | "chardev") {
            meta.rdev()
        } else {
            0
        },
        hardlink: if kind == "file" && meta.nlink() > 1 {
            meta.ino() ^ meta.dev().rotate_left(32)
        } else {
            0
        },
    }
}

impl<L: Link> Walker<'_, L> {
    fn check_cancel(&self) -> Result<(), WalkError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(WalkError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn problem(&mut self, path: &Path, reason: impl std::fmt::Display) {
        tracing::warn!(path = %path.display(), %reason, "skipping unreadable file");
        self.outcome.problems.push(pb::FileProblem {
            path: path.display().to_string(),
            reason: reason.to_string(),
        });
    }

    fn progress(&mut self, force: bool) -> Result<(), WalkError> {
        let now = Instant::now();
        if !force && now.duration_since(self.last_progress) < PROGRESS_EVERY {
            return Ok(());
        }
        let elapsed = now
            .duration_since(self.last_progress)
            .as_secs_f64()
            .max(0.001);
        let rate = ((self.outcome.bytes - self.last_progress_bytes) as f64 / elapsed) as u64;
        self.last_progress = now;
        self.last_progress_bytes = self.outcome.bytes;
        let bytes_sent = self.link.bytes_sent();
        self.link
            .send(pb::agent_message::Body::Progress(pb::JobProgress {
                job_id: self.job.job_id.clone(),
                files: self.outcome.files,
                bytes: self.outcome.bytes,
                bytes_sent,
                rate,
            }))
    }

    fn push_ready(&mut self, entry: pb::FileEntry) -> Result<(), WalkError> {
        self.ready.push(entry);
        if self.ready.len() >= ENTRIES_PER_MESSAGE {
            self.send_ready()?;
        }
        Ok(())
    }

    fn send_ready(&mut self) -> Result<(), WalkError> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.ready);
        self.link
            .send(pb::agent_message::Body::Entries(pb::EntryBatch {
                job_id: self.job.job_id.clone(),
                entries,
            }))
    }

    /// Waits as long as the bandwidth limit asks before sending `len` more bytes.
    fn pace(&mut self, len: usize) -> Result<(), WalkError> {
        self.payload_sent += len as u64;
        if self.job.bandwidth_limit == 0 {
            return Ok(());
        }
        let due =
            Duration::from_secs_f64(self.payload_sent as f64 / self.job.bandwidth_limit as f64);
        loop {
            let elapsed = self.started.elapsed();
            if elapsed >= due {
                return Ok(());
            }
            self.check_cancel()?;
            std::thread::sleep((due - elapsed).min(Duration::from_millis(200)));
        }
    }

    fn add_chunk(&mut self, chunk: BatchChunk) -> Result<(), WalkError> {
        if self.known.contains(&chunk.id) || !self.batch_ids.insert(chunk.id) {
            return Ok(());
        }
        self.batch_bytes += chunk.payload.as_ref().map_or(0, Vec::len);
        self.batch.push(chunk);
        Ok(())
    }

    fn batch_full(&self) -> bool {
        self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_IDS
    }

    /// Asks about the batch, sends what is missing, then the entries that waited for
    /// it. Cached files whose chunks are gone are read again.
    fn flush(&mut self) -> Result<(), WalkError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_ids.clear();
        self.batch_bytes = 0;
        let mut stale: HashSet<[u8; 32]> = HashSet::new();
        if !batch.is_empty() {
            let ids: Vec<[u8; 32]> = batch.iter().map(|c| c.id).collect();
            let missing = self.link.have(&self.job.job_id, ids)?;
            let missing: HashSet<usize> = missing.into_iter().map(|i| i as usize).collect();
            for (i, chunk) in batch.into_iter().enumerate() {
                if !missing.contains(&i) {
                    self.known.insert(chunk.id);
                    continue;
                }
                match chunk.payload {
                    Some(payload) => {
                        self.check_cancel()?;
                        self.pace(payload.len())?;
                        self.link
                            .send(pb::agent_message::Body::Chunk(pb::ChunkUpload {
                                job_id: self.job.job_id.clone(),
                                id: chunk.id.to_vec(),
                                raw_len: chunk.raw_len,
                                payload,
                            }))?;
                        self.known.insert(chunk.id);
                    }
                    None => {
                        stale.insert(chunk.id);
                    }
                }
            }
        }
        let waiting = std::mem::take(&mut self.waiting);
        let mut reread = Vec::new();
        for (entry, from_cache, path) in waiting {
            let complete = !from_cache
                || entry.content.iter().all(|id| {
                    id.as_slice()
                        .try_into()
                        .is_ok_and(|id: [u8; 32]| !stale.contains(&id))
                });
            if complete {
                self.push_ready(entry)?;
            } else {
                reread.push((entry, path));
            }
        }
        for (mut entry, path) in reread {
            // Its chunks left the repository since the cache was written: read it again.
            self.outcome.files_unchanged = self.outcome.files_unchanged.saturating_sub(1);
            self.outcome.bytes = self.outcome.bytes.saturating_sub(entry.size);
            self.outcome.files = self.outcome.files.saturating_sub(1);
            entry.content.clear();
            self.new.files.remove(entry.path.as_slice());
            self.read_file(&path, entry)?;
        }
        Ok(())
    }

    fn walk(&mut self, path: &Path) -> Result<(), WalkError> {
        self.check_cancel()?;
        self.progress(false)?;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(error) => {
                self.problem(path, error);
                return Ok(());
            }
        };
        let mut entry = entry_from_meta(path, &meta);
        match entry.kind.as_str() {
            "dir" => {
                let listing = match std::fs::read_dir(path) {
                    Ok(listing) => listing,
                    Err(error) => {
                        self.problem(path, error);
                        return Ok(());
                    }
                };
                self.push_ready(entry)?;
                let mut children: Vec<PathBuf> = Vec::new();
                for child in listing {
                    match child {
                        Ok(child) => {
                            let p = child.path();
                            if !self.excludes.is_match(&p) {
                                children.push(p);
                            }
                        }
                        Err(error) => self.problem(path, error),
                    }
                }
                children.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
                for child in children {
                    self.walk(&child)?;
                }
            }
            "symlink" => match std::fs::read_link(path) {
                Ok(target) => {
                    entry.link_target = target.as_os_str().as_bytes().to_vec();
                    self.push_ready(entry)?;
                }
                Err(error) => self.problem(path, error),
            },
            "file" => {
                let key = entry.path.clone();
                let cached = self.old.files.get(&key).filter(|c| {
                    c.size == entry.size
                        && c.mtime_ns == entry.mtime_ns
                        && c.ctime_ns == entry.ctime_ns
                        && c.inode == entry.inode
                });
                if let Some(cached) = cached.cloned() {
                    entry.content = cached.content.iter().map(|id| id.to_vec()).collect();
                    self.outcome.files += 1;
                    self.outcome.files_unchanged += 1;
                    self.outcome.bytes += entry.size;
                    for id in &cached.content {
                        self.add_chunk(BatchChunk {
                            id: *id,
                            raw_len: 0,
                            payload: None,
                        })?;
                    }
                    self.new.files.insert(key, cached);
                    self.waiting.push((entry, true, path.to_path_buf()));
                    if self.batch_full() {
                        self.flush()?;
                    }
                } else {
                    self.read_file(path, entry)?;
                }
            }
            _ => self.push_ready(entry)?,
        }
        Ok(())
    }

    fn read_file(&mut self, path: &Path, mut entry: pb::FileEntry) -> Result<(), WalkError> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) => {
                self.problem(path, error);
                return Ok(());
            }
        };
        let mut buf = vec![0u8; READ_BUF.min(entry.size as usize + 1).max(1)];
        let mut filled = 0usize;
        let mut eof = false;
        let mut total = 0u64;
        let mut content: Vec<[u8; 32]> = Vec::new();
        loop {
            while !eof && filled < buf.len() {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        filled += n;
                        total += n as u64;
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        self.problem(path, error);
                        return Ok(());
                    }
                }
                if !eof && filled == buf.len() && buf.len() < READ_BUF {
                    buf.resize(READ_BUF, 0);
                }
            }
            let mut cuts = Vec::new();
            let mut pos = 0;
            loop {
                let rest = filled - pos;
                if rest == 0 || (!eof && rest < self.job.chunker.max_size()) {
                    break;
                }
                let n = self.job.chunker.next_cut(&buf[pos..filled]);
                cuts.push((pos, n));
                pos += n;
            }
            let data = &buf[..filled];
            let ids = &self.job.ids;
            let level = self.job.level;
            let known = &self.known;
            let chunks: Vec<BatchChunk> = cuts
                .par_iter()
                .map(|&(off, n)| {
                    let chunk = &data[off..off + n];
                    let id = ids.blob_id(chunk).0;
                    // Compress only what may have to be sent.
                    let payload = (!known.contains(&id)).then(|| {
                        let mut payload = Vec::new();
                        encode_blob_payload(chunk, level, &mut payload);
                        payload
                    });
                    BatchChunk {
                        id,
                        raw_len: n as u32,
                        payload,
                    }
                })
                .collect();
            for chunk in chunks {
                content.push(chunk.id);
                if chunk.payload.is_some() {
                    self.add_chunk(chunk)?;
                }
            }
            self.outcome.bytes += pos as u64;
            buf.copy_within(pos..filled, 0);
            filled -= pos;
            if self.batch_full() {
                self.flush()?;
            }
            self.check_cancel()?;
            self.progress(false)?;
            if eof && filled == 0 {
                break;
            }
        }
        entry.size = total;
        entry.content = content.iter().map(|id| id.to_vec()).collect();
        self.outcome.files += 1;
        let unchanged_after = file.metadata().is_ok_and(|after| {
            after.len() == total
                && after.mtime() * 1_000_000_000 + after.mtime_nsec() == entry.mtime_ns
        });
        if unchanged_after {
            self.new.files.insert(
                entry.path.clone(),
                CachedFile {
                    size: entry.size,
                    mtime_ns: entry.mtime_ns,
                    ctime_ns: entry.ctime_ns,
                    inode: entry.inode,
                    content,
                },
            );
        }
        self.waiting.push((entry, false, path.to_path_buf()));
        Ok(())
    }
}

/// Runs a backup job's walk to its end: every chunk the daemon lacks and every entry
/// sent, then [`pb::WalkDone`]. Returns the cache to keep if the daemon commits.
///
/// # Errors
/// [`WalkError`].
pub fn run<L: Link>(
    job: &Job,
    link: &mut L,
    cache: FilesCache,
    cancel: Arc<AtomicBool>,
) -> Result<WalkOutcome, WalkError> {
    let excludes = build_excludes(&job.excludes).map_err(|e| WalkError::Invalid(e.to_string()))?;
    let now = Instant::now();
    let mut walker = Walker {
        job,
        link,
        cancel,
        old: cache,
        new: FilesCache::default(),
        excludes,
        batch: Vec::new(),
        batch_ids: HashSet::new(),
        batch_bytes: 0,
        waiting: Vec::new(),
        ready: Vec::new(),
        known: HashSet::new(),
        outcome: WalkOutcome::default(),
        payload_sent: 0,
        started: now,
        last_progress: now,
        last_progress_bytes: 0,
    };
    // A path inside another path is walked with it, once.
    let mut roots = job.paths.clone();
    roots.sort();
    roots.dedup();
    let roots: Vec<PathBuf> = roots
        .iter()
        .filter(|root| {
            !job.paths
                .iter()
                .any(|other| other != *root && root.starts_with(other))
        })
        .cloned()
        .collect();
    // The directories above each path, so the daemon can build the tree down to it.
    let mut ancestors: Vec<PathBuf> = Vec::new();
    for root in &roots {
        let mut up = root.parent();
        while let Some(dir) = up {
            if dir != Path::new("/") && !ancestors.iter().any(|a| a == dir) {
                ancestors.push(dir.to_path_buf());
            }
            up = dir.parent();
        }
    }
    ancestors.sort();
    for dir in &ancestors {
        match std::fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => walker.push_ready(entry_from_meta(dir, &meta))?,
            Ok(_) => {
                return Err(WalkError::Invalid(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Err(error) => {
                return Err(WalkError::Invalid(format!("{}: {error}", dir.display())));
            }
        }
    }
    for root in &roots {
        if let Err(error) = std::fs::symlink_metadata(root) {
            return Err(WalkError::Invalid(format!("{}: {error}", root.display())));
        }
        walker.walk(root)?;
    }
    // Files read again after a flush wait for one more.
    while !walker.batch.is_empty() || !walker.waiting.is_empty() {
        walker.flush()?;
    }
    walker.send_ready()?;
    walker.progress(true)?;
    let mut outcome = walker.outcome;
    outcome.cache = walker.new;
    Ok(outcome)
}
