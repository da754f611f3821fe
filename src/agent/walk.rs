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
//! The cache also keeps, for each directory, a digest of everything sent for it and
//! below, and the snapshot that was committed from it. When the daemon names that
//! snapshot as the job's parent, a directory whose digest is unchanged is sent as one
//! `unchanged_subtree` entry and nothing below it crosses the wire — neither entries
//! nor chunk queries: the daemon takes its tree from the parent snapshot. A second
//! backup of an unchanged tree sends a handful of messages.
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
use crate::engine::id::BlobId;
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

    /// Sends a have-query without waiting for its answer; returns the query's number.
    /// The daemon answers queries in the order they were asked, from what it holds when
    /// it reads each one.
    ///
    /// # Errors
    /// [`WalkError::Disconnected`].
    fn ask(&mut self, job_id: &str, ids: Vec<[u8; 32]>) -> Result<u64, WalkError>;

    /// Waits for the answer to query `query`, which asked about `count` ids: the
    /// positions of the missing ones. Answers to other queries that arrive meanwhile are
    /// kept for their own turn.
    ///
    /// # Errors
    /// [`WalkError::Disconnected`], [`WalkError::Cancelled`], or
    /// [`WalkError::Invalid`] for an answer naming a position outside the query.
    fn answer(&mut self, query: u64, count: usize) -> Result<Vec<u32>, WalkError>;

    /// Asks about `ids` and waits for the answer.
    ///
    /// # Errors
    /// As [`Link::ask`] and [`Link::answer`].
    fn have(&mut self, job_id: &str, ids: Vec<[u8; 32]>) -> Result<Vec<u32>, WalkError> {
        let count = ids.len();
        let query = self.ask(job_id, ids)?;
        self.answer(query, count)
    }

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

impl CachedFile {
    /// Whether `entry` is this file unchanged (same size, mtime, ctime and inode).
    fn matches(&self, entry: &pb::FileEntry) -> bool {
        self.size == entry.size
            && self.mtime_ns == entry.mtime_ns
            && self.ctime_ns == entry.ctime_ns
            && self.inode == entry.inode
    }
}

/// The files cache of one source (paths) in one repository.
#[derive(Debug, Default)]
pub struct FilesCache {
    files: HashMap<Vec<u8>, CachedFile>,
    /// Digest of each directory as sent (itself and everything below), for directories
    /// whose walk met no problem.
    dirs: HashMap<Vec<u8>, [u8; 32]>,
    /// The snapshot committed from what this cache describes (hex id); empty when
    /// unknown, and then no directory is sent as unchanged.
    snapshot: String,
    /// That snapshot's root tree (hex id), empty when unknown. A snapshot with this
    /// tree is described as well: tagging or holding a snapshot gives it a new id, not
    /// a new tree.
    tree: String,
}

/// The directory digests of a cache, stored after the files: a cache written before
/// they existed still loads (without them).
#[derive(Debug, Default, Serialize, Deserialize)]
struct CachedDirs {
    dirs: HashMap<Vec<u8>, [u8; 32]>,
    snapshot: String,
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
            .and_then(|raw| {
                let (files, rest) = postcard::take_from_bytes(&raw).ok()?;
                let (CachedDirs { dirs, snapshot }, rest) = if rest.is_empty() {
                    (CachedDirs::default(), rest)
                } else {
                    postcard::take_from_bytes(rest).ok()?
                };
                // The tree follows the directories; a cache written before it was
                // kept has none.
                let tree = if rest.is_empty() {
                    String::new()
                } else {
                    postcard::from_bytes(rest).ok()?
                };
                Some(Self {
                    files,
                    dirs,
                    snapshot,
                    tree,
                })
            })
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
        let mut raw = postcard::to_stdvec(&self.files).map_err(std::io::Error::other)?;
        raw.extend(
            postcard::to_stdvec(&CachedDirs {
                dirs: self.dirs.clone(),
                snapshot: self.snapshot.clone(),
            })
            .map_err(std::io::Error::other)?,
        );
        raw.extend(postcard::to_stdvec(&self.tree).map_err(std::io::Error::other)?);
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

    /// Records the snapshot the daemon committed from this cache's walk, and its root
    /// tree (hex ids; the tree empty when the daemon did not say).
    pub fn set_snapshot(&mut self, snapshot: &str, tree: &str) {
        snapshot.clone_into(&mut self.snapshot);
        tree.clone_into(&mut self.tree);
    }

    /// Whether this cache's directory digests describe the snapshot `snapshot` with
    /// the root tree `tree` (hex ids, either may be empty): the cache was kept when
    /// that snapshot was committed, or when one with the same tree was (the snapshot
    /// was tagged or held since, which gives it a new id and keeps its content).
    pub fn describes(&self, snapshot: &str, tree: &str) -> bool {
        (!snapshot.is_empty() && self.snapshot == snapshot)
            || (!tree.is_empty() && self.tree == tree)
    }

    /// Drops the directory digests of the cache at `path` (the file records stay): a
    /// backup that used them failed, and the next one sends every directory.
    ///
    /// # Errors
    /// I/O errors writing the cache.
    pub fn forget_subtrees(path: &Path) -> std::io::Result<()> {
        let mut cache = Self::load(path);
        if cache.snapshot.is_empty() && cache.tree.is_empty() && cache.dirs.is_empty() {
            return Ok(());
        }
        cache.dirs.clear();
        cache.snapshot.clear();
        cache.tree.clear();
        cache.save(path)
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
    /// Chunks of files read by the walk that were compressed (neither in a batch of this
    /// job already nor held by the parent snapshot).
    pub chunks_compressed: u64,
    /// Files whose content another link to the same inode gave (read once).
    pub files_linked: u64,
    /// Directories sent as unchanged since the parent snapshot.
    pub subtrees_unchanged: u64,
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
    /// A directory holding one of these files keeps only that file.
    pub markers: Vec<crate::engine::backup::ExcludeMarker>,
    /// Regular files larger than this many bytes are left out.
    pub larger_than: Option<u64>,
    /// Chunker.
    pub chunker: Chunker,
    /// Naming capability.
    pub ids: IdKeys,
    /// zstd level.
    pub level: i32,
    /// Most payload bytes per second; 0 for no limit.
    pub bandwidth_limit: u64,
    /// The snapshot the daemon builds on (hex id), empty for none.
    pub parent_snapshot: String,
    /// Its root tree (hex id), empty for none or when the daemon did not say.
    pub parent_tree: String,
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
        let markers = crate::engine::backup::exclude_markers(&job.exclude_if_present, false)
            .map_err(|error| WalkError::Invalid(error.to_string()))?;
        Ok(Self {
            job_id: job.job_id.clone(),
            paths: job.paths.iter().map(PathBuf::from).collect(),
            excludes: job.excludes.clone(),
            markers,
            larger_than: (job.exclude_larger_than > 0).then_some(job.exclude_larger_than),
            chunker: Chunker::new(&params, job.chunker_seed),
            ids: IdKeys::from_parts(key, job.chunker_seed),
            level: job.compression_level.clamp(0, 19),
            bandwidth_limit: job.bandwidth_limit,
            parent_snapshot: job.parent_snapshot.clone(),
            parent_tree: job.parent_tree.clone(),
        })
    }
}

struct BatchChunk {
    id: [u8; 32],
    raw_len: u32,
    payload: Option<Vec<u8>>,
}

/// What the walker hands to the sender, in order: the sender asks about each batch of
/// chunks and sends what is missing before the entries that follow it, so every entry
/// reaches the daemon after its chunks. Walking and chunking go on while the sender
/// waits for answers and the stream: the two overlap.
enum Work {
    /// Ask about these chunks; send those the daemon lacks (payload present) or note
    /// them stale (payload absent: named by the files cache, or held by the file's
    /// version in the parent snapshot and not compressed).
    Chunks(Vec<BatchChunk>),
    /// An entry whose chunks were in earlier batches (or that has none).
    Entry(pb::FileEntry),
    /// A file taken from the cache: sent as is unless one of its chunks turned out
    /// stale, then read again first.
    Cached(pb::FileEntry, PathBuf),
}

/// Files and bytes the walker has done, read by the sender for progress reports.
#[derive(Default)]
struct Counters {
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// Work items waiting between walker and sender.
const WORK_QUEUE: usize = 4;
/// Batches the sender has asked about before it waits for the oldest answer. The next
/// batch's query travels ahead of the current batch's chunks, so its answer is there
/// when they are sent: the stream never idles for a round trip, and a daemon that falls
/// behind still holds the sender back (its answers wait behind the chunks it reads).
const QUERIES_AHEAD: usize = 2;

/// What the sender holds between asking and sending, in the walker's order.
enum Ahead {
    /// A batch asked about, waiting for its answer.
    Asked { query: u64, batch: Vec<BatchChunk> },
    /// An entry or cached file that follows the batches before it.
    Then(Work),
}

/// What the walker knows of a chunk it has just named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    /// Nothing: it is compressed, asked about, and sent if the daemon lacks it.
    No,
    /// It is in a batch of this job already: not asked about again.
    InBatch,
    /// A file of the parent snapshot held it (as the files cache recorded it), so the
    /// repository almost surely has it: asked about without being compressed (the file
    /// is read again in the rare case that the daemon lacks it). A file edited in place
    /// — a database, a disk image — is mostly such chunks, and so is one renamed or
    /// copied since (a rotated log).
    InParent,
}

/// Reads a file and cuts it into chunks, handing each (named, and compressed when
/// `known` knows nothing of it) to `each` with what was known. Returns the bytes read.
fn chunk_file(
    job: &Job,
    path: &Path,
    size_hint: u64,
    known: &(dyn Fn(&[u8; 32]) -> Known + Sync),
    cancel: &AtomicBool,
    each: &mut dyn FnMut(BatchChunk, Known) -> Result<(), WalkError>,
) -> Result<Result<u64, std::io::Error>, WalkError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) => return Ok(Err(error)),
    };
    let mut buf = vec![0u8; READ_BUF.min(size_hint as usize + 1).max(1)];
    let mut filled = 0usize;
    let mut eof = false;
    let mut total = 0u64;
    loop {
        while !eof && filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => eof = true,
                Ok(n) => {
                    filled += n;
                    total += n as u64;
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Ok(Err(error)),
            }
            if !eof && filled == buf.len() && buf.len() < READ_BUF {
                buf.resize(READ_BUF, 0);
            }
        }
        let mut cuts = Vec::new();
        let mut pos = 0;
        loop {
            let rest = filled - pos;
            if rest == 0 || (!eof && rest < job.chunker.max_size()) {
                break;
            }
            let n = job.chunker.next_cut(&buf[pos..filled]);
            cuts.push((pos, n));
            pos += n;
        }
        let data = &buf[..filled];
        let chunks: Vec<(BatchChunk, Known)> = cuts
            .par_iter()
            .map(|&(off, n)| {
                let chunk = &data[off..off + n];
                let id = job.ids.blob_id(chunk).0;
                let known = known(&id);
                // Compress only what may have to be sent.
                let payload = (known == Known::No).then(|| {
                    let mut payload = Vec::new();
                    encode_blob_payload(chunk, job.level, &mut payload);
                    payload
                });
                let chunk = BatchChunk {
                    id,
                    raw_len: n as u32,
                    payload,
                };
                (chunk, known)
            })
            .collect();
        for (chunk, known) in chunks {
            each(chunk, known)?;
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
        if cancel.load(Ordering::Relaxed) {
            return Err(WalkError::Cancelled);
        }
        if eof && filled == 0 {
            break;
        }
    }
    Ok(Ok(total))
}

/// The walking side: metadata, the files cache, chunking. Directory entries are
/// walked in parallel on the walk's own pool, and inside a large file each buffer's
/// chunks are named and compressed in parallel, so reading, cutting and compressing
/// of different files overlap and every core stays busy.
struct Walker<'a> {
    job: &'a Job,
    cancel: Arc<AtomicBool>,
    /// Set when a branch of the walk failed: the others stop at their next step.
    stopped: AtomicBool,
    old: FilesCache,
    /// The chunks of every file in `old`, by the first 8 bytes of their keyed ids
    /// ([`BlobId::prefix_u64`]), about 10 bytes of memory per chunk. Ids are keyed
    /// hashes, so two chunks share a prefix with a probability of about n²/2⁶⁵, and a
    /// chunk wrongly taken for one of the parent's only costs its file being read again
    /// (the daemon answers that it lacks it).
    parent_chunks: HashSet<u64>,
    /// Whether `old` describes the job's parent snapshot: unchanged directories are
    /// then sent as such.
    graft: bool,
    /// Key of the directory digests: what else decides which entries are sent.
    digest_key: [u8; 32],
    excludes: globset::GlobSet,
    markers: Vec<crate::engine::backup::ExcludeMarker>,
    larger_than: Option<u64>,
    /// Chunk ids already put in a batch during this job: read while chunks are named in
    /// parallel, written only with `state` held (so an id and its batch go in together).
    seen: std::sync::RwLock<HashSet<[u8; 32]>>,
    /// Hard-linked files of this job by device and inode: the other links to an
    /// unchanged inode take the content of the first instead of reading it again.
    links: std::sync::Mutex<HashMap<(u64, u64), LinkState>>,
    /// Links met while another link to their inode was being read: taken up after the
    /// walk (a walk thread never waits for another, which may be waiting for it).
    deferred: std::sync::Mutex<Vec<(PathBuf, pb::FileEntry)>>,
    state: std::sync::Mutex<WalkState>,
    counters: Arc<Counters>,
}

/// What a walked path leaves to its directory: its digest, and what of it was not
/// sent yet — kept back until the directory knows whether it is unchanged.
struct Walked {
    /// Digest of the entry as sent (a directory's covers everything below it).
    digest: [u8; 32],
    /// No problem met at or below it, nothing left for later: its digest can be kept.
    clean: bool,
    /// Directories at and below it.
    dirs: u64,
    held: Held,
}

/// The part of a walked path not yet handed to the sender.
enum Held {
    /// Everything was handed over (files read, directories that changed).
    Sent,
    /// An entry without content: a symlink or special file.
    Entry(pb::FileEntry),
    /// A file taken from the cache (its entry carries the cached chunk ids).
    Cached(pb::FileEntry, PathBuf),
    /// A directory unchanged since the parent snapshot: its `unchanged_subtree` entry.
    Subtree(pb::FileEntry),
}

impl Walked {
    /// A path whose entry was handed over already.
    fn sent(digest: [u8; 32], clean: bool) -> Self {
        Walked {
            digest,
            clean,
            dirs: 0,
            held: Held::Sent,
        }
    }
}

fn entry_digest(entry: &pb::FileEntry) -> [u8; 32] {
    *blake3::hash(&prost::Message::encode_to_vec(entry)).as_bytes()
}

/// Where the walk is with a hard-linked inode.
enum LinkState {
    /// One of its links is being read.
    Reading,
    /// Read, unchanged while it was read: its record as the files cache keeps it.
    Read(CachedFile),
}

/// What [`Walker::claim_link`] decided for a file.
enum Claim {
    /// Take this content, read through another link.
    Linked(Vec<[u8; 32]>),
    /// Another link is being read: come back later.
    Busy,
    /// Read the file.
    Read,
}

/// What the walk's threads share. Everything handed to the sender goes through it, so
/// the order rule holds across threads: an entry is queued only after its chunks are in
/// a batch, and a batch is handed over before the items queued after it.
struct WalkState {
    out: std::sync::mpsc::SyncSender<Work>,
    batch: Vec<BatchChunk>,
    batch_bytes: usize,
    /// Items that must follow the current batch.
    after: Vec<Work>,
    new: FilesCache,
    outcome: WalkOutcome,
}

impl WalkState {
    fn emit(&self, work: Work) -> Result<(), WalkError> {
        // The sender stopped (the stream broke or the job was cancelled): its own
        // error is what the caller reports.
        self.out.send(work).map_err(|_| WalkError::Disconnected)
    }

    /// Hands the current batch over, followed by what waited for it.
    fn flush(&mut self) -> Result<(), WalkError> {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.batch_bytes = 0;
            self.emit(Work::Chunks(batch))?;
        }
        for work in std::mem::take(&mut self.after) {
            self.emit(work)?;
        }
        Ok(())
    }

    fn add_chunk(
        &mut self,
        seen: &std::sync::RwLock<HashSet<[u8; 32]>>,
        chunk: BatchChunk,
    ) -> Result<(), WalkError> {
        let new = seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(chunk.id);
        if !new {
            return Ok(());
        }
        self.batch_bytes += chunk.payload.as_ref().map_or(0, Vec::len);
        self.batch.push(chunk);
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_IDS {
            // Only the batch: entries waiting for it go when their own chunks are in.
            let batch = std::mem::take(&mut self.batch);
            self.batch_bytes = 0;
            self.emit(Work::Chunks(batch))?;
        }
        Ok(())
    }

    /// Queues an item behind the current batch.
    fn push_after(&mut self, work: Work) -> Result<(), WalkError> {
        self.after.push(work);
        if self.after.len() >= ENTRIES_PER_MESSAGE {
            self.flush()?;
        }
        Ok(())
    }

    /// Counts a finished file for the outcome and for progress reports.
    fn count_file(&mut self, counters: &Counters, bytes: u64, unchanged: bool) {
        self.outcome.files += 1;
        self.outcome.bytes += bytes;
        self.outcome.files_unchanged += u64::from(unchanged);
        counters.files.store(self.outcome.files, Ordering::Relaxed);
        counters.bytes.store(self.outcome.bytes, Ordering::Relaxed);
    }
}

/// The files cache's record of a file read (or linked) in this job.
fn cached_file(entry: &pb::FileEntry, content: Vec<[u8; 32]>) -> CachedFile {
    CachedFile {
        size: entry.size,
        mtime_ns: entry.mtime_ns,
        ctime_ns: entry.ctime_ns,
        inode: entry.inode,
        content,
    }
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
        unchanged_subtree: false,
        subtree_dirs: 0,
        xattrs: Vec::new(),
    }
}

impl Walker<'_> {
    fn state(&self) -> std::sync::MutexGuard<'_, WalkState> {
        // Every change under the lock is whole before anything can fail or panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check_cancel(&self) -> Result<(), WalkError> {
        if self.cancel.load(Ordering::Relaxed) || self.stopped.load(Ordering::Relaxed) {
            Err(WalkError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn problem(&self, path: &Path, reason: impl std::fmt::Display) {
        tracing::warn!(path = %path.display(), %reason, "skipping unreadable file");
        self.state().outcome.problems.push(pb::FileProblem {
            path: path.display().to_string(),
            reason: reason.to_string(),
        });
    }

    fn push_entry(&self, entry: pb::FileEntry) -> Result<(), WalkError> {
        self.state().push_after(Work::Entry(entry))
    }

    /// Hands over what a walked path held back.
    fn release(&self, held: Held) -> Result<(), WalkError> {
        match held {
            Held::Sent => Ok(()),
            Held::Entry(entry) => self.push_entry(entry),
            Held::Subtree(entry) => {
                let mut state = self.state();
                state.outcome.subtrees_unchanged += 1;
                state.push_after(Work::Entry(entry))
            }
            Held::Cached(entry, path) => {
                // One critical section: no other file's entry can slip in between
                // these chunk ids and this entry (it might rely on a chunk that only a
                // re-read of this file will send).
                let mut state = self.state();
                let ids = entry
                    .content
                    .iter()
                    .filter_map(|id| <[u8; 32]>::try_from(id.as_slice()).ok());
                for id in ids {
                    state.add_chunk(
                        &self.seen,
                        BatchChunk {
                            id,
                            raw_len: 0,
                            payload: None,
                        },
                    )?;
                }
                state.push_after(Work::Cached(entry, path))
            }
        }
    }

    /// Walks `path`; `None` when it could not be read (reported as a problem).
    fn walk(&self, path: &Path, known: Option<Metadata>) -> Result<Option<Walked>, WalkError> {
        self.check_cancel()?;
        // The metadata the directory's listing already read, else read here.
        let meta = match known.map_or_else(|| std::fs::symlink_metadata(path), Ok) {
            Ok(meta) => meta,
            Err(error) => {
                self.problem(path, error);
                return Ok(None);
            }
        };
        let mut entry = entry_from_meta(path, &meta);
        match crate::engine::xattrs::read(path) {
            Ok(xattrs) => entry.xattrs = crate::rpc::xattrs_to_wire(xattrs),
            // Sent without them, and said.
            Err(error) => self.problem(path, format!("extended attributes: {error}")),
        }
        let leaf = |entry: pb::FileEntry| Walked {
            digest: entry_digest(&entry),
            clean: true,
            dirs: 0,
            held: Held::Entry(entry),
        };
        match entry.kind.as_str() {
            "dir" => self.walk_dir(path, entry),
            "symlink" => match std::fs::read_link(path) {
                Ok(target) => {
                    entry.link_target = target.as_os_str().as_bytes().to_vec();
                    Ok(Some(leaf(entry)))
                }
                Err(error) => {
                    self.problem(path, error);
                    Ok(None)
                }
            },
            "file" => {
                let key = entry.path.clone();
                let cached = self.old.files.get(&key).filter(|c| c.matches(&entry));
                if let Some(cached) = cached {
                    entry.content = cached.content.iter().map(|id| id.to_vec()).collect();
                    let mut state = self.state();
                    state.count_file(&self.counters, entry.size, true);
                    state.new.files.insert(key, cached.clone());
                    drop(state);
                    Ok(Some(Walked {
                        digest: entry_digest(&entry),
                        clean: true,
                        dirs: 0,
                        held: Held::Cached(entry, path.to_path_buf()),
                    }))
                } else {
                    match self.claim_link(&entry) {
                        Claim::Linked(content) => {
                            Ok(Some(Walked::sent(self.push_linked(entry, content)?, true)))
                        }
                        Claim::Busy => {
                            // Sent after the walk: nothing to vouch for here.
                            self.deferred
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push((path.to_path_buf(), entry));
                            Ok(Some(Walked::sent([0; 32], false)))
                        }
                        Claim::Read => Ok(self
                            .read_file(path, entry)?
                            .map(|(digest, clean)| Walked::sent(digest, clean))),
                    }
                }
            }
            _ => Ok(Some(leaf(entry))),
        }
    }

    /// Walks a directory's entries in parallel, then decides: unchanged since the
    /// parent snapshot (everything below held back, and the same digest as then) — its
    /// one `unchanged_subtree` entry is held for its own directory; otherwise what its
    /// entries held back is sent, then its entry.
    fn walk_dir(&self, path: &Path, mut entry: pb::FileEntry) -> Result<Option<Walked>, WalkError> {
        let listing = match std::fs::read_dir(path) {
            Ok(listing) => listing,
            Err(error) => {
                // Kept, empty, with its own metadata, as a local backup keeps it; the
                // problem says what it held was not read, and it is never taken as
                // unchanged (nor is anything above it).
                self.problem(path, error);
                self.push_entry(entry)?;
                return Ok(Some(Walked {
                    digest: [0; 32],
                    clean: false,
                    dirs: 1,
                    held: Held::Sent,
                }));
            }
        };
        let mut clean = true;
        let mut children: Vec<(PathBuf, Option<Metadata>)> = Vec::new();
        // A marked directory keeps only its markers.
        let only = crate::engine::backup::marked(path, &self.markers);
        for child in listing {
            match child {
                Ok(child) => {
                    if !only.is_empty() && !only.contains(&child.file_name()) {
                        continue;
                    }
                    let p = child.path();
                    if self.excludes.is_match(&p) {
                        continue;
                    }
                    // Only regular files (as the listing already tells) are measured, and
                    // what was read for it is not read again.
                    let mut known = None;
                    if self.larger_than.is_some()
                        && child.file_type().is_ok_and(|kind| kind.is_file())
                        && let Ok(meta) = child.metadata()
                    {
                        if crate::engine::backup::too_large(&meta, self.larger_than) {
                            continue;
                        }
                        known = Some(meta);
                    }
                    children.push((p, known));
                }
                Err(error) => {
                    clean = false;
                    self.problem(path, error);
                }
            }
        }
        children.sort_by(|(a, _), (b, _)| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
        let walked: Result<Vec<Option<Walked>>, WalkError> = children
            .into_par_iter()
            .map(|(child, known)| self.walk(&child, known))
            .collect();
        let walked = match walked {
            Ok(walked) => walked,
            Err(error) => {
                self.stopped.store(true, Ordering::Relaxed);
                return Err(error);
            }
        };
        let mut digest = blake3::Hasher::new_keyed(&self.digest_key);
        digest.update(&prost::Message::encode_to_vec(&entry));
        let mut dirs = 1u64;
        let mut all_held = true;
        for child in &walked {
            match child {
                Some(child) => {
                    digest.update(&child.digest);
                    clean &= child.clean;
                    dirs += child.dirs;
                    all_held &= !matches!(child.held, Held::Sent);
                }
                None => clean = false,
            }
        }
        let digest = *digest.finalize().as_bytes();
        let unchanged =
            clean && all_held && self.graft && self.old.dirs.get(&entry.path) == Some(&digest);
        if clean {
            self.state().new.dirs.insert(entry.path.clone(), digest);
        }
        if unchanged {
            entry.unchanged_subtree = true;
            entry.subtree_dirs = dirs - 1;
            return Ok(Some(Walked {
                digest,
                clean,
                dirs,
                held: Held::Subtree(entry),
            }));
        }
        for child in walked.into_iter().flatten() {
            self.release(child.held)?;
        }
        self.push_entry(entry)?;
        Ok(Some(Walked {
            digest,
            clean,
            dirs,
            held: Held::Sent,
        }))
    }

    /// What to do with a file that may be one of several links to its inode: take the
    /// content another link gave (the inode unchanged since: size, mtime and ctime
    /// alike), come back to it later (another link is being read), or read it (the
    /// first link met, which is then marked as being read).
    fn claim_link(&self, entry: &pb::FileEntry) -> Claim {
        if entry.hardlink == 0 {
            return Claim::Read;
        }
        let mut links = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match links.get(&(entry.dev, entry.inode)) {
            Some(LinkState::Read(read)) if read.matches(entry) => {
                Claim::Linked(read.content.clone())
            }
            // Changed since it was read through another name: read again.
            Some(LinkState::Read(_)) => Claim::Read,
            Some(LinkState::Reading) => Claim::Busy,
            None => {
                links.insert((entry.dev, entry.inode), LinkState::Reading);
                Claim::Read
            }
        }
    }

    /// Records how the read of a hard-linked file ended: its content for the other
    /// links if it did not change while read, otherwise nothing (they read their own).
    fn settle_link(&self, entry: &pb::FileEntry, content: Option<&[[u8; 32]]>) {
        if entry.hardlink == 0 {
            return;
        }
        let mut links = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (entry.dev, entry.inode);
        match content {
            // Recorded after the chunks are in a batch: an entry that takes them is
            // queued behind that batch.
            Some(content) => {
                links.insert(key, LinkState::Read(cached_file(entry, content.to_vec())));
            }
            None => {
                if matches!(links.get(&key), Some(LinkState::Reading)) {
                    links.remove(&key);
                }
            }
        }
    }

    /// Sends a file whose content another link to its inode gave.
    /// Returns the entry's digest.
    fn push_linked(
        &self,
        mut entry: pb::FileEntry,
        content: Vec<[u8; 32]>,
    ) -> Result<[u8; 32], WalkError> {
        entry.content = content.iter().map(|id| id.to_vec()).collect();
        let digest = entry_digest(&entry);
        let mut state = self.state();
        state.count_file(&self.counters, entry.size, false);
        state.outcome.files_linked += 1;
        let key = entry.path.clone();
        state.new.files.insert(key, cached_file(&entry, content));
        state.push_after(Work::Entry(entry))?;
        Ok(digest)
    }

    /// Takes up the links met while another link to their inode was being read.
    fn walk_deferred(&self) -> Result<(), WalkError> {
        let deferred = std::mem::take(
            &mut *self
                .deferred
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (path, entry) in deferred {
            self.check_cancel()?;
            match self.claim_link(&entry) {
                Claim::Linked(content) => {
                    self.push_linked(entry, content)?;
                }
                // Its first link failed or changed while read: read this one.
                Claim::Busy | Claim::Read => {
                    self.read_file(&path, entry)?;
                }
            }
        }
        Ok(())
    }

    /// Reads, sends and counts a file; returns the digest of its entry and whether it
    /// stayed unchanged while read, or `None` when it could not be read.
    fn read_file(
        &self,
        path: &Path,
        mut entry: pb::FileEntry,
    ) -> Result<Option<([u8; 32], bool)>, WalkError> {
        let mut content: Vec<[u8; 32]> = Vec::new();
        let mut compressed = 0u64;
        let known = |id: &[u8; 32]| {
            if self
                .seen
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(id)
            {
                Known::InBatch
            } else if self.parent_chunks.contains(&BlobId(*id).prefix_u64()) {
                Known::InParent
            } else {
                Known::No
            }
        };
        let read = chunk_file(
            self.job,
            path,
            entry.size,
            &known,
            &self.cancel,
            &mut |chunk, known| {
                content.push(chunk.id);
                compressed += u64::from(known == Known::No);
                if known != Known::InBatch {
                    self.state().add_chunk(&self.seen, chunk)?;
                }
                Ok(())
            },
        )?;
        let total = match read {
            Ok(total) => total,
            Err(error) => {
                self.settle_link(&entry, None);
                self.problem(path, error);
                return Ok(None);
            }
        };
        entry.size = total;
        entry.content = content.iter().map(|id| id.to_vec()).collect();
        let unchanged_after = std::fs::symlink_metadata(path).is_ok_and(|after| {
            after.len() == total
                && after.mtime() * 1_000_000_000 + after.mtime_nsec() == entry.mtime_ns
        });
        self.settle_link(&entry, unchanged_after.then_some(content.as_slice()));
        let mut state = self.state();
        state.count_file(&self.counters, total, false);
        state.outcome.chunks_compressed += compressed;
        if unchanged_after {
            state
                .new
                .files
                .insert(entry.path.clone(), cached_file(&entry, content));
        }
        let digest = entry_digest(&entry);
        state.push_after(Work::Entry(entry))?;
        Ok(Some((digest, unchanged_after)))
    }
}

/// What the sender did besides sending.
#[derive(Default)]
struct SenderOutcome {
    /// Files read again: taken from the cache, or read with chunks of the parent
    /// snapshot that had left the repository.
    reread: Vec<Vec<u8>>,
    /// How many of `reread` were taken from the cache.
    cached_reread: u64,
    /// Files that could not be read again.
    problems: Vec<pb::FileProblem>,
}

/// The sending side: asks, sends chunks (paced), sends entries.
struct Sender<'a, L: Link> {
    job: &'a Job,
    link: &'a mut L,
    cancel: Arc<AtomicBool>,
    stale: HashSet<[u8; 32]>,
    entries: Vec<pb::FileEntry>,
    payload_sent: u64,
    started: Instant,
    last_progress: Instant,
    last_bytes: u64,
    outcome: SenderOutcome,
    counters: Arc<Counters>,
    /// Batches asked about and what follows them, oldest first.
    ahead: std::collections::VecDeque<Ahead>,
    /// How many of `ahead` are batches.
    asked: usize,
}

impl<L: Link> Sender<'_, L> {
    fn check_cancel(&self) -> Result<(), WalkError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(WalkError::Cancelled)
        } else {
            Ok(())
        }
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

    fn send_entries(&mut self) -> Result<(), WalkError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.entries);
        self.link
            .send(pb::agent_message::Body::Entries(pb::EntryBatch {
                job_id: self.job.job_id.clone(),
                entries,
            }))
    }

    fn entry(&mut self, entry: pb::FileEntry) -> Result<(), WalkError> {
        self.entries.push(entry);
        if self.entries.len() >= ENTRIES_PER_MESSAGE {
            self.send_entries()?;
        }
        Ok(())
    }

    /// Asks about a batch and sends what the daemon lacks (used where nothing may
    /// overtake the batch: a file read again).
    fn chunks(&mut self, batch: Vec<BatchChunk>) -> Result<(), WalkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<[u8; 32]> = batch.iter().map(|c| c.id).collect();
        let missing = self.link.have(&self.job.job_id, ids)?;
        self.send_missing(batch, missing)
    }

    /// Sends the chunks of `batch` at the positions `missing`; notes as stale those the
    /// daemon lacks but that came without content (named by the files cache, or held
    /// by the parent snapshot): the files referencing them are read again.
    fn send_missing(&mut self, batch: Vec<BatchChunk>, missing: Vec<u32>) -> Result<(), WalkError> {
        let missing: HashSet<usize> = missing.into_iter().map(|i| i as usize).collect();
        for (i, chunk) in batch.into_iter().enumerate() {
            if !missing.contains(&i) {
                self.stale.remove(&chunk.id);
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
                            payload: payload.into(),
                        }))?;
                    self.stale.remove(&chunk.id);
                    if self.last_progress.elapsed() >= PROGRESS_EVERY {
                        self.progress()?;
                    }
                }
                None => {
                    self.stale.insert(chunk.id);
                }
            }
        }
        Ok(())
    }

    /// A cached file whose chunks left the repository: read it again and send it.
    fn reread(&mut self, mut entry: pb::FileEntry, path: &Path) -> Result<(), WalkError> {
        self.outcome.reread.push(entry.path.clone());
        let mut batch = Vec::new();
        let mut content = Vec::new();
        let mut failed = None;
        let cancel = self.cancel.clone();
        let job = self.job;
        let read = {
            let mut each = |chunk: BatchChunk, _: Known| -> Result<(), WalkError> {
                content.push(chunk.id);
                batch.push(chunk);
                if batch.len() >= 64 {
                    let full = std::mem::take(&mut batch);
                    if let Err(error) = self.chunks(full) {
                        failed = Some(error);
                        return Err(WalkError::Cancelled);
                    }
                }
                Ok(())
            };
            chunk_file(job, path, entry.size, &|_| Known::No, &cancel, &mut each)
        };
        if let Some(error) = failed {
            return Err(error);
        }
        match read? {
            Ok(total) => {
                self.chunks(batch)?;
                entry.size = total;
                entry.content = content.iter().map(|id| id.to_vec()).collect();
                self.entry(entry)
            }
            Err(error) => {
                self.outcome.problems.push(pb::FileProblem {
                    path: path.display().to_string(),
                    reason: error.to_string(),
                });
                Ok(())
            }
        }
    }

    fn progress(&mut self) -> Result<(), WalkError> {
        let files = self.counters.files.load(Ordering::Relaxed);
        let bytes = self.counters.bytes.load(Ordering::Relaxed);
        let now = Instant::now();
        let elapsed = now
            .duration_since(self.last_progress)
            .as_secs_f64()
            .max(0.001);
        let rate = (bytes.saturating_sub(self.last_bytes) as f64 / elapsed) as u64;
        self.last_progress = now;
        self.last_bytes = bytes;
        let bytes_sent = self.link.bytes_sent();
        self.link
            .send(pb::agent_message::Body::Progress(pb::JobProgress {
                job_id: self.job.job_id.clone(),
                files,
                bytes,
                bytes_sent,
                rate,
            }))
    }

    /// An entry or cached file whose batches are all sent.
    fn follow(&mut self, item: Work) -> Result<(), WalkError> {
        match item {
            Work::Chunks(batch) => self.chunks(batch),
            Work::Entry(entry) if self.has_stale(&entry) => {
                // A chunk asked about without its content (held by the parent) is
                // missing after all.
                let path = PathBuf::from(std::ffi::OsStr::from_bytes(&entry.path));
                self.reread(entry, &path)
            }
            Work::Entry(entry) => self.entry(entry),
            Work::Cached(entry, path) => {
                if self.has_stale(&entry) {
                    self.outcome.cached_reread += 1;
                    self.reread(entry, &path)
                } else {
                    self.entry(entry)
                }
            }
        }
    }

    /// Whether `entry` references a chunk the daemon lacks and that was not sent.
    fn has_stale(&self, entry: &pb::FileEntry) -> bool {
        !self.stale.is_empty()
            && entry.content.iter().any(|id| {
                <[u8; 32]>::try_from(id.as_slice()).is_ok_and(|id| self.stale.contains(&id))
            })
    }

    /// Takes what is ready off the front of `ahead`: entries whose batches are sent, and
    /// the oldest batches (waiting for their answers) while more than `keep` are asked.
    fn settle(&mut self, keep: usize) -> Result<(), WalkError> {
        loop {
            match self.ahead.front() {
                Some(Ahead::Then(_)) => {
                    if let Some(Ahead::Then(item)) = self.ahead.pop_front() {
                        self.follow(item)?;
                    }
                }
                Some(Ahead::Asked { .. }) if self.asked > keep => {
                    if let Some(Ahead::Asked { query, batch }) = self.ahead.pop_front() {
                        self.asked -= 1;
                        let missing = self.link.answer(query, batch.len())?;
                        self.send_missing(batch, missing)?;
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn run(mut self, work: std::sync::mpsc::Receiver<Work>) -> Result<SenderOutcome, WalkError> {
        for item in work {
            self.check_cancel()?;
            match item {
                Work::Chunks(batch) if batch.is_empty() => {}
                Work::Chunks(batch) => {
                    let ids: Vec<[u8; 32]> = batch.iter().map(|c| c.id).collect();
                    let query = self.link.ask(&self.job.job_id, ids)?;
                    self.ahead.push_back(Ahead::Asked { query, batch });
                    self.asked += 1;
                }
                other => self.ahead.push_back(Ahead::Then(other)),
            }
            self.settle(QUERIES_AHEAD - 1)?;
            if self.last_progress.elapsed() >= PROGRESS_EVERY {
                self.progress()?;
            }
        }
        self.settle(0)?;
        self.send_entries()?;
        self.progress()?;
        Ok(self.outcome)
    }
}

/// Runs a backup job's walk to its end: every chunk the daemon lacks and every entry
/// sent. Returns the cache to keep if the daemon commits. The caller sends
/// [`pb::WalkDone`].
///
/// # Errors
/// [`WalkError`].
pub fn run<L: Link + Send>(
    job: &Job,
    link: &mut L,
    cache: FilesCache,
    cancel: Arc<AtomicBool>,
) -> Result<WalkOutcome, WalkError> {
    let excludes = build_excludes(&job.excludes).map_err(|e| WalkError::Invalid(e.to_string()))?;
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
    let mut above = Vec::new();
    for dir in &ancestors {
        match std::fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => {
                let mut entry = entry_from_meta(dir, &meta);
                // With its extended attributes, as the engine's backup keeps them: a
                // directory above the backed-up paths can carry a label or an ACL.
                if let Ok(xattrs) = crate::engine::xattrs::read(dir) {
                    entry.xattrs = crate::rpc::xattrs_to_wire(xattrs);
                }
                above.push(entry);
            }
            Ok(_) => {
                return Err(WalkError::Invalid(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Err(error) => return Err(WalkError::Invalid(format!("{}: {error}", dir.display()))),
        }
    }
    for root in &roots {
        if let Err(error) = std::fs::symlink_metadata(root) {
            return Err(WalkError::Invalid(format!("{}: {error}", root.display())));
        }
    }
    let (out, work) = std::sync::mpsc::sync_channel(WORK_QUEUE);
    let now = Instant::now();
    let counters: Arc<Counters> = Arc::default();
    let sender = Sender {
        job,
        link,
        cancel: cancel.clone(),
        stale: HashSet::new(),
        entries: Vec::new(),
        payload_sent: 0,
        started: now,
        last_progress: now,
        last_bytes: 0,
        outcome: SenderOutcome::default(),
        counters: counters.clone(),
        ahead: std::collections::VecDeque::new(),
        asked: 0,
    };
    // The walk's own pool: the sender re-reads stale files on the global one, which
    // must never wait behind walk threads that wait for the sender.
    let pool = crate::engine::worker_pool("cadang-walk", None, 1)
        .map_err(|e| WalkError::Invalid(e.to_string()))?;
    let walker = Walker {
        job,
        cancel: cancel.clone(),
        stopped: AtomicBool::new(false),
        graft: cache.describes(&job.parent_snapshot, &job.parent_tree),
        parent_chunks: cache
            .files
            .values()
            .flat_map(|file| file.content.iter().map(|id| BlobId(*id).prefix_u64()))
            .collect(),
        digest_key: {
            let mut key = blake3::Hasher::new_derive_key("cadang agent directory digest v1");
            for exclude in &job.excludes {
                key.update(exclude.as_bytes());
                key.update(b"\0");
            }
            // What leaves directories and files out is part of what a digest stands for.
            key.update(b"\0larger than\0");
            key.update(&job.larger_than.unwrap_or(0).to_le_bytes());
            key.update(b"\0markers\0");
            for marker in &job.markers {
                key.update(marker.to_string().as_bytes());
                key.update(b"\0");
            }
            *key.finalize().as_bytes()
        },
        old: cache,
        excludes,
        markers: job.markers.clone(),
        larger_than: job.larger_than,
        seen: std::sync::RwLock::default(),
        links: std::sync::Mutex::default(),
        deferred: std::sync::Mutex::default(),
        state: std::sync::Mutex::new(WalkState {
            out,
            batch: Vec::new(),
            batch_bytes: 0,
            after: Vec::new(),
            new: FilesCache::default(),
            outcome: WalkOutcome::default(),
        }),
        counters,
    };
    let (walked, sent) = std::thread::scope(|scope| {
        let sending = scope.spawn(move || sender.run(work));
        let walked = pool.install(|| {
            for entry in above {
                walker.push_entry(entry)?;
            }
            for root in &roots {
                if let Some(walked) = walker.walk(root, None)? {
                    walker.release(walked.held)?;
                }
            }
            walker.walk_deferred()?;
            walker.state().flush()
        });
        // Closing the queue ends the sender once it has sent everything.
        let WalkState {
            out, new, outcome, ..
        } = walker
            .state
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(out);
        let sent = sending
            .join()
            .unwrap_or(Err(WalkError::Invalid("the sender thread panicked".into())));
        (walked.map(|()| (new, outcome)), sent)
    });
    // The sender's error explains a walker that could not hand work over.
    let sent = sent?;
    let (mut new, mut outcome) = walked?;
    for path in &sent.reread {
        // Read again this time: keep it out of the cache so the next run checks again,
        // and the directories above it out of the digests (it may have been sent
        // differently from what they vouch for).
        new.files.remove(path);
        let mut up = Path::new(std::ffi::OsStr::from_bytes(path)).parent();
        while let Some(dir) = up {
            new.dirs.remove(dir.as_os_str().as_bytes());
            up = dir.parent();
        }
    }
    outcome.problems.extend(sent.problems);
    outcome.files_unchanged = outcome.files_unchanged.saturating_sub(sent.cached_reread);
    outcome.cache = new;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's side of the protocol over an in-memory set of chunk ids: answers
    /// queries from what it holds, checks every upload against its id and every entry
    /// against what it holds, and can forget everything (a pruned repository).
    #[derive(Default)]
    struct Repository {
        held: HashSet<[u8; 32]>,
        uploads: usize,
        entries: Vec<pb::FileEntry>,
        sent: u64,
        queries: u64,
        answers: HashMap<u64, Vec<u32>>,
        log: Vec<Logged>,
    }

    /// What crossed the loopback, in order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Logged {
        Query(u64),
        Answered(u64),
        Chunk,
    }

    struct Loopback<'a> {
        repo: &'a mut Repository,
        ids: IdKeys,
    }

    impl Link for Loopback<'_> {
        fn send(&mut self, body: pb::agent_message::Body) -> Result<(), WalkError> {
            use prost::Message;
            self.repo.sent += pb::AgentMessage {
                body: Some(body.clone()),
            }
            .encoded_len() as u64;
            match body {
                pb::agent_message::Body::Chunk(chunk) => {
                    let data = crate::engine::format::decode_blob_payload(
                        &chunk.payload,
                        chunk.raw_len as usize,
                    )
                    .expect("a valid payload");
                    assert_eq!(self.ids.blob_id(&data).0.to_vec(), chunk.id, "named right");
                    self.repo
                        .held
                        .insert(chunk.id.as_slice().try_into().unwrap());
                    self.repo.uploads += 1;
                    self.repo.log.push(Logged::Chunk);
                }
                pb::agent_message::Body::Entries(batch) => {
                    for entry in batch.entries {
                        for id in &entry.content {
                            let id: [u8; 32] = id.as_slice().try_into().unwrap();
                            assert!(self.repo.held.contains(&id), "an entry after its chunks");
                        }
                        self.repo.entries.push(entry);
                    }
                }
                _ => {}
            }
            Ok(())
        }

        fn ask(&mut self, _: &str, ids: Vec<[u8; 32]>) -> Result<u64, WalkError> {
            // Answered from what is held when the query is read, as the daemon does:
            // chunks sent after the query cannot change its answer.
            let missing = ids
                .iter()
                .enumerate()
                .filter(|(_, id)| !self.repo.held.contains(*id))
                .map(|(i, _)| i as u32)
                .collect();
            self.repo.queries += 1;
            self.repo.answers.insert(self.repo.queries, missing);
            self.repo.log.push(Logged::Query(self.repo.queries));
            Ok(self.repo.queries)
        }

        fn answer(&mut self, query: u64, _: usize) -> Result<Vec<u32>, WalkError> {
            let missing = self
                .repo
                .answers
                .remove(&query)
                .expect("a query asked once");
            self.repo.log.push(Logged::Answered(query));
            Ok(missing)
        }

        fn bytes_sent(&self) -> u64 {
            self.repo.sent
        }
    }

    /// A whole walk of `job` against `repo`, starting from `cache`.
    fn walk_over(job: &Job, repo: &mut Repository, cache: FilesCache) -> WalkOutcome {
        let mut link = Loopback {
            repo,
            ids: job.ids.clone(),
        };
        run(job, &mut link, cache, Arc::default()).unwrap()
    }

    fn job(paths: Vec<PathBuf>) -> Job {
        let params = crate::engine::chunker::ChunkerParams {
            algorithm: crate::engine::chunker::ChunkerAlgorithm::FastCdc2020,
            min_size: 64 << 10,
            avg_size: 128 << 10,
            max_size: 512 << 10,
            normalization: 1,
        };
        Job {
            job_id: "run:1".into(),
            paths,
            excludes: vec!["*.tmp".into()],
            markers: vec![crate::engine::backup::ExcludeMarker::cache_dir_tag()],
            larger_than: None,
            chunker: Chunker::new(&params, 7),
            ids: IdKeys::from_parts([9; 32], 7),
            level: 3,
            bandwidth_limit: 0,
            parent_snapshot: String::new(),
            parent_tree: String::new(),
        }
    }

    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    /// Every path under `root`, as the walk names them.
    fn tree_paths(root: &Path, into: &mut Vec<Vec<u8>>) {
        into.push(root.as_os_str().as_bytes().to_vec());
        if std::fs::symlink_metadata(root).unwrap().is_dir() {
            for child in std::fs::read_dir(root).unwrap() {
                tree_paths(&child.unwrap().path(), into);
            }
        }
    }

    #[test]
    fn hard_links_to_one_inode_are_read_once_and_name_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("srv");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::create_dir_all(src.join("b")).unwrap();
        std::fs::write(src.join("a/one"), noise(77, 900 << 10)).unwrap();
        std::fs::hard_link(src.join("a/one"), src.join("b/two")).unwrap();
        std::fs::hard_link(src.join("a/one"), src.join("b/three")).unwrap();
        std::fs::write(src.join("b/other"), noise(78, 5000)).unwrap();
        // Roots are walked one after the other: `a/one` is read before the other links
        // are reached.
        let job = job(vec![src.join("a"), src.join("b")]);
        let mut expected = Vec::new();
        chunk_file(
            &job,
            &src.join("a/one"),
            900 << 10,
            &|_| Known::No,
            &AtomicBool::new(false),
            &mut |chunk, _| {
                expected.push(chunk.id.to_vec());
                Ok(())
            },
        )
        .unwrap()
        .unwrap();
        assert!(expected.len() > 2, "a file of several chunks");
        let mut repo = Repository::default();
        let outcome = walk_over(&job, &mut repo, FilesCache::default());
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        assert_eq!((outcome.files, outcome.files_linked), (4, 2));
        let linked: Vec<&pb::FileEntry> = repo
            .entries
            .iter()
            .filter(|e| e.kind == "file" && e.hardlink != 0)
            .collect();
        assert_eq!(linked.len(), 3);
        for entry in &linked {
            assert_eq!(entry.content, expected, "{:?}", entry.path);
            assert_eq!(entry.size, 900 << 10);
        }
        // Every link is in the files cache: the next run reads none of them.
        assert_eq!(outcome.cache.len(), 4);
        repo.entries.clear();
        let again = walk_over(&job, &mut repo, outcome.cache);
        assert_eq!((again.files_unchanged, again.files_linked), (4, 0));

        // A link changed since the first was read is read, not linked: a new inode
        // behind one of the names.
        std::fs::remove_file(src.join("b/three")).unwrap();
        std::fs::write(src.join("b/three"), noise(79, 70_000)).unwrap();
        std::fs::create_dir(src.join("c")).unwrap();
        std::fs::hard_link(src.join("b/three"), src.join("c/four")).unwrap();
        repo.entries.clear();
        let job = self::job(vec![src.join("a"), src.join("b"), src.join("c")]);
        let changed = walk_over(&job, &mut repo, FilesCache::default());
        assert_eq!((changed.files, changed.files_linked), (5, 2));
        let three = repo
            .entries
            .iter()
            .find(|e| e.path.ends_with(b"b/three"))
            .unwrap();
        let four = repo
            .entries
            .iter()
            .find(|e| e.path.ends_with(b"c/four"))
            .unwrap();
        assert_eq!(three.content, four.content);
        assert_ne!(three.content, expected);
    }

    #[test]
    fn a_tree_walked_in_parallel_sends_every_entry_once_and_after_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("srv");
        // Directories walked side by side, with files that share their content across
        // directories (so that threads race to send the same chunks).
        for d in 0..6u64 {
            let sub = src.join(format!("d{d}")).join("nested");
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..30u64 {
                let content = if f % 5 == 0 {
                    noise(1000 + f % 3, 300 << 10)
                } else {
                    noise(d * 100 + f, 20_000 + f as usize * 997)
                };
                std::fs::write(sub.join(format!("f{f}")), content).unwrap();
            }
            std::fs::write(src.join(format!("d{d}/empty")), b"").unwrap();
            std::os::unix::fs::symlink("nested/f1", src.join(format!("d{d}/link"))).unwrap();
        }
        let mut expected = Vec::new();
        tree_paths(&src, &mut expected);
        expected.sort();
        let job = job(vec![src.clone()]);
        let mut repo = Repository::default();
        let mut cache = FilesCache::default();
        // First run; then everything cached but the repository lost every chunk, so the
        // cached files are read again, racing files that share their content.
        for round in 0..3 {
            repo.entries.clear();
            if round == 2 {
                repo.held.clear();
            }
            let outcome = walk_over(&job, &mut repo, cache);
            assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
            assert_eq!(outcome.files, 6 * 31, "round {round}");
            let mut sent: Vec<Vec<u8>> = repo
                .entries
                .iter()
                .map(|e| e.path.clone())
                .filter(|p| p.starts_with(src.as_os_str().as_bytes()))
                .collect();
            sent.sort();
            assert_eq!(sent, expected, "round {round}: every entry once");
            for entry in &repo.entries {
                if entry.kind == "file" {
                    let on_disk = std::fs::read(std::ffi::OsStr::from_bytes(&entry.path)).unwrap();
                    assert_eq!(entry.size, on_disk.len() as u64);
                    let mut at = 0;
                    let named: Vec<Vec<u8>> = job
                        .chunker
                        .split_all(&on_disk)
                        .into_iter()
                        .map(|n| {
                            at += n;
                            job.ids.blob_id(&on_disk[at - n..at]).0.to_vec()
                        })
                        .collect();
                    assert_eq!(entry.content, named, "round {round}: content of a file");
                }
            }
            if round == 1 {
                assert_eq!(outcome.files_unchanged, 6 * 31);
            }
            cache = outcome.cache;
        }
    }

    /// A directory that becomes a cache (a `CACHEDIR.TAG` appears in it) keeps only its
    /// tag in the next backup.
    #[test]
    fn a_directory_tagged_as_a_cache_keeps_only_its_tag() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("srv");
        std::fs::create_dir_all(src.join("app/cache")).unwrap();
        std::fs::write(src.join("app/data.db"), noise(1, 50_000)).unwrap();
        std::fs::write(src.join("app/cache/page.html"), noise(2, 70_000)).unwrap();
        let job = job(vec![src.clone()]);
        let cache_dir = src.join("app/cache");
        let under_cache = |repo: &Repository| {
            repo.entries
                .iter()
                .filter(|e| e.path.starts_with(cache_dir.as_os_str().as_bytes()))
                .count()
        };
        let mut repo = Repository::default();
        let outcome = walk_over(&job, &mut repo, FilesCache::default());
        assert_eq!(outcome.files, 2);
        assert_eq!(under_cache(&repo), 2, "the directory and its file");
        std::fs::write(
            cache_dir.join("CACHEDIR.TAG"),
            format!("{}\n", crate::engine::backup::CACHEDIR_TAG_SIGNATURE),
        )
        .unwrap();
        repo.entries.clear();
        let outcome = walk_over(&job, &mut repo, outcome.cache);
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        assert_eq!(outcome.files, 2, "the data and the tag");
        assert_eq!(
            under_cache(&repo),
            2,
            "the directory and its tag: {:?}",
            repo.entries
        );
        assert!(!repo.entries.iter().any(|e| e.path.ends_with(b"page.html")));
        assert!(
            repo.entries
                .iter()
                .any(|e| e.path == src.join("app/data.db").as_os_str().as_bytes())
        );
    }

    /// Files larger than the job's limit are neither read nor listed.
    #[test]
    fn files_larger_than_the_limit_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("srv");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("small.db"), noise(1, 50_000)).unwrap();
        std::fs::write(src.join("large.iso"), noise(2, 70_000)).unwrap();
        let mut job = job(vec![src.clone()]);
        job.larger_than = Some(60_000);
        let mut repo = Repository::default();
        let outcome = walk_over(&job, &mut repo, FilesCache::default());
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        assert_eq!(outcome.files, 1);
        let sent: Vec<&[u8]> = repo.entries.iter().map(|e| e.path.as_slice()).collect();
        assert!(sent.iter().any(|p| p.ends_with(b"small.db")), "{sent:?}");
        assert!(!sent.iter().any(|p| p.ends_with(b"large.iso")), "{sent:?}");
    }

    #[test]
    fn the_next_batch_is_asked_about_before_the_chunks_of_the_last_are_sent() {
        // Enough small files for several batches of ids.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("srv");
        for d in 0..9u64 {
            let sub = src.join(format!("d{d}"));
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..500u64 {
                // (Even seeds: `noise` makes a seed and the next odd one alike.)
                std::fs::write(sub.join(format!("f{f}")), noise((d * 1000 + f) * 2, 300)).unwrap();
            }
        }
        let job = job(vec![src.clone()]);
        let mut repo = Repository::default();
        let mut cache = FilesCache::default();
        // Then everything cached but the repository lost its chunks: the files read
        // again ask their own queries while the next batch's is out.
        for round in 0..2 {
            if round == 1 {
                repo.held.clear();
            }
            repo.log.clear();
            repo.entries.clear();
            let outcome = walk_over(&job, &mut repo, cache);
            assert_eq!(outcome.files, 4500, "round {round}");
            assert_eq!(
                repo.entries.iter().filter(|e| e.kind == "file").count(),
                4500
            );
            assert!(
                repo.answers.is_empty(),
                "round {round}: every query answered"
            );
            let at = |wanted: Logged| repo.log.iter().position(|l| *l == wanted);
            let queries: Vec<u64> = repo
                .log
                .iter()
                .filter_map(|l| match l {
                    Logged::Query(q) => Some(*q),
                    _ => None,
                })
                .collect();
            assert!(
                queries.len() >= 3,
                "round {round}: {} queries",
                queries.len()
            );
            // The first batch's chunks go out only once the second batch is asked about.
            let first_chunk = at(Logged::Chunk).unwrap();
            assert!(at(Logged::Query(queries[1])).unwrap() < first_chunk);
            assert!(at(Logged::Answered(queries[0])).unwrap() < first_chunk);
            if round == 1 {
                assert_eq!(
                    outcome.files_unchanged, 0,
                    "every cached file was read again"
                );
                assert_eq!(repo.held.len(), 4500);
            }
            cache = outcome.cache;
        }
    }

    #[test]
    fn unchanged_files_come_from_the_cache_and_stale_ones_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("srv");
        std::fs::create_dir_all(src.join("db")).unwrap();
        std::fs::write(src.join("db/a.bin"), noise(1, 3 << 20)).unwrap();
        std::fs::write(src.join("db/b.bin"), noise(2, 1 << 20)).unwrap();
        std::fs::write(src.join("db/copy.bin"), noise(1, 3 << 20)).unwrap();
        std::fs::write(src.join("skip.tmp"), b"excluded").unwrap();
        // A directory above the backed-up path keeps its extended attributes.
        xattr::set(dir.path(), "user.zone", b"colocation").unwrap();
        let job = job(vec![src.clone()]);
        let mut repo = Repository::default();
        let first = walk_over(&job, &mut repo, FilesCache::default());
        assert_eq!(first.files, 3);
        assert!(first.problems.is_empty());
        let paths: Vec<String> = repo
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert!(paths.iter().all(|p| !p.ends_with("skip.tmp")), "excluded");
        assert!(
            paths.contains(&dir.path().display().to_string()),
            "ancestors sent"
        );
        let above = repo
            .entries
            .iter()
            .find(|e| e.path == dir.path().as_os_str().as_bytes())
            .unwrap();
        let xattrs = crate::rpc::xattrs_from_wire(&above.xattrs).unwrap();
        assert!(
            xattrs
                .iter()
                .any(|x| x.name == b"user.zone" && x.value == b"colocation"),
            "{xattrs:?}"
        );
        // The copy deduplicates: about 4 MiB uploaded, not 7.
        let uploaded: u64 = repo.sent;
        assert!(uploaded < 5 << 20, "{uploaded}");

        // Second run, nothing changed: no chunk is uploaded.
        let uploads = repo.uploads;
        repo.entries.clear();
        let second = walk_over(&job, &mut repo, first.cache);
        assert_eq!(second.files_unchanged, 3);
        assert_eq!(repo.uploads, uploads);
        assert_eq!(repo.entries.len(), paths.len());

        // The repository lost everything (pruned, or another one): the cached files are
        // read again and their chunks sent before their entries.
        repo.held.clear();
        repo.entries.clear();
        let third = walk_over(&job, &mut repo, second.cache);
        // b.bin is read again, and one of a.bin and copy.bin (they are walked side by
        // side, so either may be first); the other, whose chunks that reading just put
        // back, can stay as cached.
        assert!(third.files_unchanged <= 1, "{third:?}");
        assert!(repo.uploads > uploads);
        let a = repo
            .entries
            .iter()
            .find(|e| e.path.ends_with(b"db/a.bin"))
            .unwrap();
        assert_eq!(a.size, 3 << 20);
        assert!(!a.content.is_empty());
        // Files read again are left out of the cache, so they are checked again next time.
        assert!(third.cache.len() <= 1);
        let kept = |name: &[u8]| third.cache.files.keys().any(|path| path.ends_with(name));
        assert!(!kept(b"b.bin"));
        assert!(!(kept(b"/a.bin") && kept(b"copy.bin")));
    }

    /// A file edited in place (a database, a disk image): the chunks its version in
    /// the parent snapshot held are asked about without being compressed, and only the
    /// new ones are compressed and sent. Should the repository have lost those chunks
    /// after all, the file is read again and sent whole, every entry after its chunks,
    /// and it is left out of the cache.
    #[test]
    fn a_file_edited_in_place_compresses_only_its_new_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("srv");
        std::fs::create_dir_all(&src).unwrap();
        let image = src.join("disk.img");
        let mut data = noise(5, 4 << 20);
        std::fs::write(&image, &data).unwrap();
        let job = job(vec![src.clone()]);
        let chunks_of = |known: &(dyn Fn(&[u8; 32]) -> Known + Sync)| {
            let mut chunks = Vec::new();
            chunk_file(
                &job,
                &image,
                4 << 20,
                known,
                &AtomicBool::new(false),
                &mut |chunk, known| {
                    chunks.push((chunk.id, chunk.payload.is_some(), known));
                    Ok(())
                },
            )
            .unwrap()
            .unwrap();
            chunks
        };
        // What the parent held is not compressed; the rest is.
        let all = chunks_of(&|_| Known::No);
        assert!(all.len() > 8, "a file of many chunks");
        assert!(all.iter().all(|&(_, compressed, _)| compressed));
        let first_id = all[0].0;
        let parted = chunks_of(&|id| {
            if *id == first_id {
                Known::No
            } else {
                Known::InParent
            }
        });
        assert!(parted[0].1);
        assert!(
            parted[1..]
                .iter()
                .all(|&(_, compressed, known)| !compressed && known == Known::InParent)
        );
        // Overwrites 64 KiB in the middle, as a database rewrites a few pages (a time of
        // its own, so the change is seen whatever the clock's granularity).
        let edit = |data: &mut Vec<u8>, at: usize, seed: u64, secs: u64| {
            data[at..at + (64 << 10)].copy_from_slice(&noise(seed, 64 << 10));
            std::fs::write(&image, &*data).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&image)
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
                .unwrap();
        };
        let entry_of = |repo: &Repository| {
            repo.entries
                .iter()
                .find(|e| e.path == image.as_os_str().as_bytes())
                .unwrap()
                .content
                .clone()
        };
        let fresh = || -> Vec<Vec<u8>> {
            chunks_of(&|_| Known::No)
                .into_iter()
                .map(|(id, _, _)| id.to_vec())
                .collect()
        };

        let mut repo = Repository::default();
        let first = walk_over(&job, &mut repo, FilesCache::default());
        assert!(first.problems.is_empty());
        let uploads = repo.uploads;
        edit(&mut data, 2 << 20, 6, 1_000_000);
        repo.entries.clear();
        let second = walk_over(&job, &mut repo, first.cache);
        let sent = repo.uploads - uploads;
        assert!(
            (1..=3).contains(&sent),
            "only the chunks around the edit: {sent}"
        );
        assert_eq!(
            second.chunks_compressed as usize, sent,
            "and only they compressed"
        );
        assert_eq!(entry_of(&repo), fresh());
        assert!(
            second
                .cache
                .files
                .contains_key(image.as_os_str().as_bytes())
        );

        // The repository lost everything: the file is read again and sent whole.
        edit(&mut data, 1 << 20, 7, 2_000_000);
        repo.held.clear();
        repo.entries.clear();
        let before = repo.uploads;
        let third = walk_over(&job, &mut repo, second.cache);
        assert!(third.problems.is_empty(), "{:?}", third.problems);
        let content = entry_of(&repo);
        assert_eq!(content, fresh());
        let distinct: HashSet<&Vec<u8>> = content.iter().collect();
        assert_eq!(repo.uploads - before, distinct.len());
        assert!(!third.cache.files.contains_key(image.as_os_str().as_bytes()));
        assert_eq!(third.files_unchanged, 0);
    }

    /// A file renamed since the parent snapshot (a rotated log) or copied is read under
    /// its new name, but what any file of the parent held is not compressed again; if
    /// the repository lost it, the file is read again and sent whole.
    #[test]
    fn a_moved_file_compresses_nothing_the_parent_held() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("srv");
        std::fs::create_dir_all(src.join("log")).unwrap();
        let log = noise(11, 3 << 20);
        std::fs::write(src.join("log/app.log"), &log).unwrap();
        std::fs::write(src.join("log/other.log"), noise(12, 300 << 10)).unwrap();
        let job = job(vec![src.clone()]);
        let content_of = |repo: &Repository, name: &str| {
            let path = src.join(name);
            repo.entries
                .iter()
                .rfind(|e| e.path == path.as_os_str().as_bytes())
                .unwrap_or_else(|| panic!("{name} was sent"))
                .content
                .clone()
        };
        let mut repo = Repository::default();
        let first = walk_over(&job, &mut repo, FilesCache::default());
        assert!(first.problems.is_empty());
        assert!(first.chunks_compressed >= 10, "{first:?}");
        let app_log = content_of(&repo, "log/app.log");

        // Rotated: app.log → app.log.1, and a new app.log begins; a copy elsewhere.
        std::fs::rename(src.join("log/app.log"), src.join("log/app.log.1")).unwrap();
        std::fs::write(src.join("log/app.log"), noise(13, 5000)).unwrap();
        std::fs::copy(src.join("log/other.log"), src.join("other.copy")).unwrap();
        let uploads = repo.uploads;
        let second = walk_over(&job, &mut repo, first.cache);
        assert!(second.problems.is_empty(), "{:?}", second.problems);
        assert_eq!(second.files, 4);
        assert_eq!(second.files_unchanged, 1, "other.log");
        assert_eq!(
            second.chunks_compressed, 1,
            "only the new app.log's one chunk"
        );
        assert_eq!(repo.uploads - uploads, 1);
        assert_eq!(content_of(&repo, "log/app.log.1"), app_log);
        assert_eq!(
            content_of(&repo, "other.copy"),
            content_of(&repo, "log/other.log")
        );

        // Renamed again after the repository lost everything: read again, sent whole.
        std::fs::rename(src.join("log/app.log.1"), src.join("log/app.log.2")).unwrap();
        repo.held.clear();
        let before = repo.uploads;
        let third = walk_over(&job, &mut repo, second.cache);
        assert!(third.problems.is_empty(), "{:?}", third.problems);
        assert_eq!(content_of(&repo, "log/app.log.2"), app_log);
        let distinct: HashSet<&Vec<u8>> = app_log.iter().collect();
        assert!(
            repo.uploads - before >= distinct.len(),
            "every chunk sent again"
        );
        assert!(
            !third
                .cache
                .files
                .contains_key(src.join("log/app.log.2").as_os_str().as_bytes()),
            "a file read again stays out of the cache"
        );
    }

    /// A tree walked again after the snapshot of its last walk was committed: a
    /// directory whose every entry is as sent then goes as one `unchanged_subtree`
    /// entry, with nothing below it — no entries, no chunk queries; a change sends its
    /// directory and those above it. A cache that describes another snapshot vouches
    /// for nothing, one kept for a snapshot with the same tree (tagged or held since)
    /// describes it, and one that lost its digests (or predates them) still names files.
    #[test]
    fn unchanged_directories_go_as_one_entry_when_the_cache_describes_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("srv");
        std::fs::create_dir_all(src.join("a/deep")).unwrap();
        std::fs::create_dir_all(src.join("b")).unwrap();
        std::fs::write(src.join("a/deep/x.bin"), noise(1, 1 << 20)).unwrap();
        std::fs::write(src.join("a/y.txt"), b"versi 1").unwrap();
        std::fs::write(src.join("b/z.txt"), b"arsip").unwrap();
        std::fs::write(src.join("top.txt"), b"atas").unwrap();
        std::os::unix::fs::symlink("top.txt", src.join("link")).unwrap();
        let cache_path = dir.path().join("files.cache");
        let mut job = job(vec![src.clone()]);
        let mut repo = Repository::default();
        let first = walk_over(&job, &mut repo, FilesCache::default());
        assert_eq!(first.subtrees_unchanged, 0);
        let sent_first = repo.entries.len();
        let mut cache = first.cache;
        cache.set_snapshot("s1", "t1");
        cache.save(&cache_path).unwrap();
        let markers = |repo: &Repository| -> Vec<(String, u64)> {
            repo.entries
                .iter()
                .filter(|e| e.unchanged_subtree)
                .map(|e| {
                    (
                        String::from_utf8_lossy(&e.path).into_owned(),
                        e.subtree_dirs,
                    )
                })
                .collect()
        };

        // The daemon builds on another snapshot (another tree: rewritten since, say):
        // everything is sent, as without digests.
        job.parent_snapshot = "s0".into();
        job.parent_tree = "t0".into();
        repo.entries.clear();
        let other = walk_over(&job, &mut repo, FilesCache::load(&cache_path));
        assert_eq!(repo.entries.len(), sent_first);
        assert!(markers(&repo).is_empty());
        assert_eq!(other.files_unchanged, 4);

        // On the snapshot it describes, held since (a new id, the same tree): the whole
        // source is one entry, nothing asked.
        job.parent_snapshot = "s1-held".into();
        job.parent_tree = "t1".into();
        repo.entries.clear();
        let queries = repo.queries;
        let sent_before = repo.sent;
        let same = walk_over(&job, &mut repo, FilesCache::load(&cache_path));
        assert_eq!(markers(&repo), vec![(src.display().to_string(), 3)]);
        assert!(
            repo.entries
                .iter()
                .all(|e| !e.path.starts_with(src.as_os_str().as_bytes())
                    || e.path == src.as_os_str().as_bytes()),
            "nothing below the unchanged source"
        );
        assert_eq!(repo.queries, queries, "no chunk asked about");
        assert!(
            repo.sent - sent_before < 2048,
            "{} bytes",
            repo.sent - sent_before
        );
        assert_eq!(
            (same.files, same.files_unchanged, same.subtrees_unchanged),
            (4, 4, 1)
        );
        let mut cache = same.cache;
        // A daemon that does not name the tree: the snapshot id alone.
        cache.set_snapshot("s2", "");
        cache.save(&cache_path).unwrap();

        // One file changes: its directory and those above are sent, the others are not.
        std::fs::write(src.join("a/y.txt"), b"versi 2, lebih panjang").unwrap();
        job.parent_snapshot = "s2".into();
        job.parent_tree = String::new();
        repo.entries.clear();
        let changed = walk_over(&job, &mut repo, FilesCache::load(&cache_path));
        let mut marked = markers(&repo);
        marked.sort();
        assert_eq!(
            marked,
            vec![
                (src.join("a/deep").display().to_string(), 0),
                (src.join("b").display().to_string(), 0),
            ]
        );
        let sent: HashSet<String> = repo
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        for path in ["", "a", "a/y.txt", "top.txt", "link"] {
            let path = src.join(path).display().to_string();
            let path = path.trim_end_matches('/');
            assert!(sent.contains(path), "{path} sent");
        }
        for below in ["a/deep/x.bin", "b/z.txt"] {
            assert!(!sent.contains(&src.join(below).display().to_string()));
        }
        assert_eq!(changed.subtrees_unchanged, 2);
        assert_eq!(changed.files, 4);
        let y = repo
            .entries
            .iter()
            .find(|e| e.path.ends_with(b"a/y.txt"))
            .unwrap();
        assert_eq!(y.size, 22);

        // A failed job forgets the digests; the files are still named from the cache.
        let mut cache = changed.cache;
        cache.set_snapshot("s3", "t3");
        cache.save(&cache_path).unwrap();
        let kept = FilesCache::load(&cache_path);
        assert!(kept.describes("s3", "") && kept.describes("s3-tagged", "t3"));
        assert!(!kept.describes("s3-rewritten", "t4") && !kept.describes("", ""));
        // A cache written before trees were kept describes its snapshot by id only.
        let mut before_trees = postcard::to_stdvec(&kept.files).unwrap();
        before_trees.extend(
            postcard::to_stdvec(&CachedDirs {
                dirs: kept.dirs.clone(),
                snapshot: kept.snapshot.clone(),
            })
            .unwrap(),
        );
        std::fs::write(
            &cache_path,
            zstd::encode_all(before_trees.as_slice(), 3).unwrap(),
        )
        .unwrap();
        let untreed = FilesCache::load(&cache_path);
        assert_eq!((untreed.len(), untreed.dirs.len()), (4, kept.dirs.len()));
        assert!(untreed.describes("s3", "t3") && !untreed.describes("s3-tagged", "t3"));
        kept.save(&cache_path).unwrap();
        FilesCache::forget_subtrees(&cache_path).unwrap();
        let forgot = FilesCache::load(&cache_path);
        assert!(!forgot.describes("s3", "t3"));
        assert!(forgot.dirs.is_empty());
        assert_eq!(forgot.len(), 4);
        // A cache written before directory digests existed loads with its files.
        let files_only = postcard::to_stdvec(&forgot.files).unwrap();
        std::fs::write(
            &cache_path,
            zstd::encode_all(files_only.as_slice(), 3).unwrap(),
        )
        .unwrap();
        let older = FilesCache::load(&cache_path);
        assert_eq!(older.len(), 4);
        assert!(!older.describes("s3", "t3"));
    }
}
