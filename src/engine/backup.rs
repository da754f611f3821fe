//! Backup: walk source paths, chunk, deduplicate, pack, and commit a snapshot.
//!
//! Parallelism: directory entries are processed in parallel on a rayon pool
//! sized to the machine; inside a large file, each buffer of chunks is hashed,
//! compressed and encrypted in parallel too, so one big file keeps every core
//! busy. Memory stays bounded: a 16 MiB read buffer per file being read,
//! one open pack per blob type, and a fixed number of packs in flight.
//!
//! Unchanged files (same size, mtime, ctime and inode as in the parent
//! snapshot) are not read again. Unreadable files are reported and skipped;
//! the snapshot is still written (partial success). Files that change while
//! being read are flagged.
//!
//! Commit order: packs → index → snapshot (see `docs/FORMAT.md`).

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use super::error::{Error, Result};
use super::id::{BlobId, BlobType, SnapshotId};
use super::index::Index;
use super::packer::{Packer, StepHook};
use super::repo::Repository;
use super::snapshot::{Snapshot, SnapshotSummary};
use super::tree::{Node, NodeKind, Tree};

/// What to back up and how.
#[derive(Clone, Default)]
pub struct BackupOptions {
    /// Source paths (files or directories).
    pub paths: Vec<PathBuf>,
    /// Tags for the snapshot.
    pub tags: Vec<String>,
    /// Exclude patterns (globs; a pattern without `/` matches a name anywhere).
    pub excludes: Vec<String>,
    /// A directory holding one of these files keeps only that file: the rest of what
    /// it holds is left out (`--exclude-if-present`, `--exclude-caches`).
    pub markers: Vec<ExcludeMarker>,
    /// Regular files larger than this many bytes are left out (a file given in
    /// `paths` itself is always read).
    pub exclude_larger_than: Option<u64>,
    /// Do not cross file system boundaries.
    pub one_file_system: bool,
    /// Host name to record (default: this machine's).
    pub host: Option<String>,
    /// Parent snapshot; `None` picks the latest with the same host and paths.
    pub parent: Option<SnapshotId>,
    /// Read every file even if unchanged since the parent.
    pub force: bool,
    /// Snapshot time (default: now). Only trusted writers set this.
    pub time: Option<DateTime<Utc>>,
    /// Set to stop at the next safe point.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Worker threads (default: available cores).
    pub threads: Option<usize>,
    /// zstd level for this run (default: the repository's).
    pub compression_level: Option<i32>,
    /// Test hook called after each durable commit step.
    pub step_hook: Option<StepHook>,
}

/// Live progress, updated by the backup and read by whoever displays it.
#[derive(Debug, Default)]
pub struct BackupProgress {
    /// Files found by the scanner so far.
    pub total_files: AtomicU64,
    /// Bytes found by the scanner so far.
    pub total_bytes: AtomicU64,
    /// Whether the scanner finished.
    pub scan_done: AtomicBool,
    /// Files processed.
    pub files_done: AtomicU64,
    /// Bytes processed (read or skipped as unchanged).
    pub bytes_done: AtomicU64,
    /// Bytes stored so far.
    pub bytes_stored: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
}

/// A file that could not be backed up.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileError {
    /// The path.
    pub path: String,
    /// What went wrong.
    pub error: String,
}

/// The outcome of a backup.
#[derive(Clone, Debug)]
pub struct BackupResult {
    /// The new snapshot.
    pub snapshot_id: SnapshotId,
    /// Its content.
    pub snapshot: Snapshot,
    /// Files skipped because they could not be read.
    pub errors: Vec<FileError>,
    /// Files that changed while being read (backed up as read).
    pub changed_during_read: Vec<String>,
}

impl BackupResult {
    /// Whether some files were skipped.
    pub fn is_partial(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// Read buffer per file being read: two maximum-size chunks, so a cut is
/// always found before the buffer must be refilled.
const READ_BUF: usize = 8 << 20;

/// Content already read for a hard-linked inode: (dev, ino) → (mtime, chunks).
type HardlinkContent = HashMap<(u64, u64), (u64, Vec<BlobId>)>;

struct Ctx<'a> {
    repo: &'a Repository,
    index: Index,
    packer: Packer,
    excludes: GlobSet,
    markers: Vec<ExcludeMarker>,
    larger_than: Option<u64>,
    one_fs: bool,
    force: bool,
    cancel: Option<Arc<AtomicBool>>,
    progress: &'a BackupProgress,
    errors: Mutex<Vec<FileError>>,
    changed: Mutex<Vec<String>>,
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs: AtomicU64,
    hardlinks: Mutex<HardlinkContent>,
}

/// A file whose presence leaves the rest of its directory out of a backup: restic's
/// `--exclude-if-present NAME[:HEADER]`. As with restic, the directory and the marker
/// itself are kept, so that a restored cache is still marked as one. With a header, the
/// file must be a regular file that starts with it, as the cache directory tag standard
/// asks (<https://bford.info/cachedir/>): `--exclude-caches` is `CACHEDIR.TAG` with its
/// signature. A marker that cannot be read leaves its directory in the backup: when in
/// doubt, more is kept, not less.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExcludeMarker {
    name: std::ffi::OsString,
    header: Option<Vec<u8>>,
}

/// The signature a cache directory tag starts with.
pub const CACHEDIR_TAG_SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";

impl ExcludeMarker {
    /// Parses `NAME` or `NAME:HEADER`: a file name (no `/`, not `.` or `..`) and the
    /// bytes it must start with.
    ///
    /// # Errors
    /// `InvalidInput` naming the specification.
    pub fn parse(spec: &str) -> Result<Self> {
        let (name, header) = match spec.split_once(':') {
            Some((name, header)) => (name, Some(header)),
            None => (spec, None),
        };
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
            || header.is_some_and(|header| header.is_empty() || header.len() > 4096)
        {
            return Err(Error::InvalidInput(format!(
                "exclude marker `{}`: a file name without `/`, optionally followed by `:` and the text it starts with",
                spec.escape_debug()
            )));
        }
        Ok(Self {
            name: name.into(),
            header: header.map(|header| header.as_bytes().to_vec()),
        })
    }

    /// `CACHEDIR.TAG` with its signature (`--exclude-caches`).
    pub fn cache_dir_tag() -> Self {
        Self {
            name: "CACHEDIR.TAG".into(),
            header: Some(CACHEDIR_TAG_SIGNATURE.as_bytes().to_vec()),
        }
    }

    /// Whether `dir` holds this marker.
    pub fn marks(&self, dir: &Path) -> bool {
        let path = dir.join(&self.name);
        let Some(header) = &self.header else {
            return std::fs::symlink_metadata(&path).is_ok();
        };
        // Only a regular file is opened: opening a device can act on it (a tape drive
        // rewinds), and a FIFO would wait for a writer.
        if !std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_file()) {
            return false;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let Ok(file) = file else { return false };
        if !file.metadata().is_ok_and(|meta| meta.is_file()) {
            return false;
        }
        let mut start = Vec::with_capacity(header.len());
        file.take(header.len() as u64)
            .read_to_end(&mut start)
            .is_ok_and(|_| start == *header)
    }
}

/// The `NAME:HEADER` (or `NAME`) form [`ExcludeMarker::parse`] reads back, as a job to
/// an agent carries it.
impl std::fmt::Display for ExcludeMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Both parts came from text (`parse`, `cache_dir_tag`): nothing is lost.
        f.write_str(&self.name.to_string_lossy())?;
        match &self.header {
            Some(header) => write!(f, ":{}", String::from_utf8_lossy(header)),
            None => Ok(()),
        }
    }
}

/// The markers of `--exclude-if-present` specifications and, with `caches`, the cache
/// directory tag of `--exclude-caches`.
///
/// # Errors
/// `InvalidInput` naming the first specification that cannot be read.
pub fn exclude_markers(specs: &[String], caches: bool) -> Result<Vec<ExcludeMarker>> {
    let mut markers = specs
        .iter()
        .map(|spec| ExcludeMarker::parse(spec))
        .collect::<Result<Vec<_>>>()?;
    if caches {
        markers.push(ExcludeMarker::cache_dir_tag());
    }
    Ok(markers)
}

/// The names of the markers `dir` holds: when there are any, those files are all of
/// `dir` a backup keeps. Empty when `dir` is not marked (or no markers are given).
pub fn marked(dir: &Path, markers: &[ExcludeMarker]) -> Vec<std::ffi::OsString> {
    markers
        .iter()
        .filter(|marker| marker.marks(dir))
        .map(|marker| marker.name.clone())
        .collect()
}

/// Whether `meta` is a regular file larger than `limit` bytes (`--exclude-larger-than`).
pub fn too_large(meta: &Metadata, limit: Option<u64>) -> bool {
    limit.is_some_and(|limit| meta.is_file() && meta.len() > limit)
}

/// Build the exclude matcher.
///
/// # Errors
/// `InvalidInput` naming a malformed pattern.
pub fn build_excludes(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let p = p.trim();
        if p.is_empty() || p.starts_with('#') {
            continue;
        }
        let full = if p.contains('/') {
            p.to_string()
        } else {
            format!("**/{p}")
        };
        let g = Glob::new(&full)
            .map_err(|e| Error::InvalidInput(format!("exclude pattern `{p}`: {e}")))?;
        b.add(g);
        // A directory pattern also excludes what is below it.
        if let Ok(g2) = Glob::new(&format!("{}/**", full.trim_end_matches('/'))) {
            b.add(g2);
        }
    }
    b.build()
        .map_err(|e| Error::InvalidInput(format!("exclude patterns: {e}")))
}

impl Ctx<'_> {
    fn cancelled(&self) -> Result<()> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(Error::Cancelled);
        }
        self.packer.check_failed()
    }

    fn fail(&self, path: &Path, err: impl std::fmt::Display) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        // Returned in the result, which its caller reports (the CLI once per file, the
        // daemon in the run's record): a warning here too would print each one twice.
        tracing::debug!(path = %path.display(), error = %err, "skipping unreadable file");
        self.errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(FileError {
                path: path.display().to_string(),
                error: err.to_string(),
            });
    }

    fn node_from_meta(name: &[u8], meta: &Metadata) -> Node {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            NodeKind::Dir
        } else if ft.is_symlink() {
            NodeKind::Symlink
        } else if ft.is_block_device() {
            NodeKind::BlockDev
        } else if ft.is_char_device() {
            NodeKind::CharDev
        } else if ft.is_fifo() {
            NodeKind::Fifo
        } else if ft.is_socket() {
            NodeKind::Socket
        } else {
            NodeKind::File
        };
        let mut n = Node::new(name.to_vec(), kind);
        n.mode = meta.mode() & 0o7777;
        n.uid = meta.uid();
        n.gid = meta.gid();
        n.mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        n.ctime_ns = meta.ctime() * 1_000_000_000 + meta.ctime_nsec();
        n.inode = meta.ino();
        n.dev = meta.dev();
        if matches!(kind, NodeKind::BlockDev | NodeKind::CharDev) {
            n.rdev = meta.rdev();
        }
        if kind == NodeKind::File {
            n.size = meta.len();
            if meta.nlink() > 1 {
                n.hardlink = Some(meta.ino() ^ meta.dev().rotate_left(32));
            }
        }
        n
    }

    /// Store a tree blob (if new) and return its id.
    fn save_tree(&self, tree: Tree) -> Result<BlobId> {
        let raw = tree.encode();
        let id = self.repo.keys().blob_id(&raw);
        if self.packer.claim(&self.index, &id) {
            self.packer.add(BlobType::Tree, id, &raw)?;
        }
        Ok(id)
    }

    fn parent_children(&self, parent: Option<&Node>) -> HashMap<Vec<u8>, Node> {
        let Some(sub) = parent.and_then(|p| {
            if p.kind == NodeKind::Dir {
                p.subtree
            } else {
                None
            }
        }) else {
            return HashMap::new();
        };
        match self.repo.load_tree(&self.index, &sub) {
            Ok(t) => t.nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
            Err(e) => {
                // A damaged parent only costs re-reading; it must not fail the backup.
                tracing::warn!(tree = %sub.short(), error = %e, "parent tree unreadable; reading files again");
                HashMap::new()
            }
        }
    }

    /// Process one entry (any kind). `None` means skipped (error or excluded).
    fn entry(
        &self,
        path: &Path,
        name: &[u8],
        meta: &Metadata,
        parent: Option<&Node>,
        root_dev: u64,
    ) -> Result<Option<Node>> {
        self.cancelled()?;
        let mut node = Self::node_from_meta(name, meta);
        // Read every time, unchanged files too: a parent snapshot written before they
        // were recorded has none, whatever the files had.
        match super::xattrs::read(path) {
            Ok(xattrs) => node.xattrs = xattrs,
            // Kept without them, and said.
            Err(e) => self.fail(path, format!("extended attributes: {e}")),
        }
        match node.kind {
            NodeKind::Dir => {
                self.dirs.fetch_add(1, Ordering::Relaxed);
                if self.one_fs && meta.dev() != root_dev {
                    // Record the mount point itself, empty, like restic.
                    node.subtree = Some(self.save_tree(Tree::default())?);
                    return Ok(Some(node));
                }
                let children = self.parent_children(parent);
                match self.dir(path, &children, root_dev) {
                    Ok(tree) => node.subtree = Some(self.save_tree(tree)?),
                    Err(Error::Io { path: p, source }) => {
                        // A directory that cannot be listed is kept, empty, with its own
                        // metadata (as restic does): a restore recreates it, and the
                        // error says what it held was not read.
                        self.fail(&p, source);
                        node.subtree = Some(self.save_tree(Tree::default())?);
                    }
                    Err(e) => return Err(e),
                }
            }
            NodeKind::Symlink => match std::fs::read_link(path) {
                Ok(t) => node.link_target = Some(t.as_os_str().as_bytes().to_vec()),
                Err(e) => {
                    self.fail(path, e);
                    return Ok(None);
                }
            },
            NodeKind::File => {
                self.progress.files_done.fetch_add(1, Ordering::Relaxed);
                match self.file(path, meta, &mut node, parent) {
                    Ok(()) => {}
                    Err(Error::Io { source, .. }) => {
                        self.fail(path, source);
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => {}
        }
        Ok(Some(node))
    }

    fn dir(
        &self,
        path: &Path,
        parent_children: &HashMap<Vec<u8>, Node>,
        root_dev: u64,
    ) -> Result<Tree> {
        let rd = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
        // A marked directory keeps only its markers.
        let only = marked(path, &self.markers);
        let mut entries = Vec::new();
        for ent in rd {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    self.fail(path, e);
                    continue;
                }
            };
            if !only.is_empty() && !only.contains(&ent.file_name()) {
                continue;
            }
            let p = ent.path();
            if self.excludes.is_match(&p) {
                continue;
            }
            match std::fs::symlink_metadata(&p) {
                Ok(m) if too_large(&m, self.larger_than) => {}
                Ok(m) => entries.push((p, ent.file_name(), m)),
                Err(e) => self.fail(&p, e),
            }
        }
        entries.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
        let nodes: Vec<Result<Option<Node>>> = entries
            .par_iter()
            .map(|(p, name, m)| {
                self.entry(
                    p,
                    name.as_bytes(),
                    m,
                    parent_children.get(name.as_bytes()),
                    root_dev,
                )
            })
            .collect();
        let mut tree = Tree::default();
        for n in nodes {
            if let Some(n) = n? {
                tree.nodes.push(n);
            }
        }
        Ok(tree)
    }

    fn file(
        &self,
        path: &Path,
        meta: &Metadata,
        node: &mut Node,
        parent: Option<&Node>,
    ) -> Result<()> {
        if !self.force
            && let Some(p) = parent
            && p.kind == NodeKind::File
            && p.size == node.size
            && p.mtime_ns == node.mtime_ns
            && p.ctime_ns == node.ctime_ns
            && p.inode == node.inode
            && p.content.iter().all(|c| self.index.contains(c))
        {
            node.content = p.content.clone();
            self.files_unmodified.fetch_add(1, Ordering::Relaxed);
            self.progress
                .bytes_done
                .fetch_add(node.size, Ordering::Relaxed);
            return Ok(());
        }
        if parent.is_some_and(|p| p.kind == NodeKind::File) {
            self.files_changed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.files_new.fetch_add(1, Ordering::Relaxed);
        }
        if node.hardlink.is_some() {
            let key = (meta.dev(), meta.ino());
            if let Some((mt, content)) = self
                .hardlinks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&key)
                && *mt == node.mtime_ns as u64
            {
                node.content = content.clone();
                self.progress
                    .bytes_done
                    .fetch_add(node.size, Ordering::Relaxed);
                return Ok(());
            }
        }
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let (content, read_total) = self.read_chunks(&mut f, node.size, path)?;
        // Detect a file modified while we read it.
        if let Ok(after) = f.metadata() {
            let mtime_after = after.mtime() * 1_000_000_000 + after.mtime_nsec();
            if after.len() != node.size || mtime_after != node.mtime_ns || read_total != node.size {
                self.changed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(path.display().to_string());
                node.size = read_total;
            }
        }
        if node.hardlink.is_some() {
            self.hardlinks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(
                    (meta.dev(), meta.ino()),
                    (node.mtime_ns as u64, content.clone()),
                );
        }
        node.content = content;
        Ok(())
    }

    /// Read `f` to its end, cut it into chunks and store those the repository lacks.
    /// `size_hint` sizes the read buffer (a file's stat size; `u64::MAX` when
    /// unknown). Returns the chunk ids in order and the bytes read.
    fn read_chunks(
        &self,
        f: &mut (dyn Read + Send),
        size_hint: u64,
        path: &Path,
    ) -> Result<(Vec<BlobId>, u64)> {
        let mut content = Vec::new();
        let first = usize::try_from(size_hint.saturating_add(1)).unwrap_or(READ_BUF);
        let mut buf = vec![0u8; READ_BUF.min(first).max(1)];
        let mut filled = 0usize;
        let mut eof = false;
        let mut read_total = 0u64;
        let chunker = self.repo.chunker();
        while !eof || filled > 0 {
            // Fill the buffer (short reads are normal).
            while !eof && filled < buf.len() {
                match f.read(&mut buf[filled..]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        filled += n;
                        read_total += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io(path, e)),
                }
                if !eof && filled == buf.len() && buf.len() < READ_BUF {
                    // The file grew past its stat size: widen the buffer.
                    buf.resize(READ_BUF, 0);
                }
            }
            // Cut chunks; without EOF keep a tail of at least one max chunk
            // so every cut is the one a streaming chunker would make.
            let mut cuts = Vec::new();
            let mut pos = 0;
            loop {
                let rest = filled - pos;
                if rest == 0 || (!eof && rest < chunker.max_size()) {
                    break;
                }
                let n = chunker.next_cut(&buf[pos..filled]);
                cuts.push((pos, n));
                pos += n;
            }
            let data = &buf[..filled];
            let ids: Vec<Result<BlobId>> = cuts
                .par_iter()
                .map(|&(off, n)| {
                    let chunk = &data[off..off + n];
                    let id = self.repo.keys().blob_id(chunk);
                    if self.packer.claim(&self.index, &id) {
                        self.packer.add(BlobType::Data, id, chunk)?;
                    }
                    Ok(id)
                })
                .collect();
            for id in ids {
                content.push(id?);
            }
            self.progress
                .bytes_done
                .fetch_add(pos as u64, Ordering::Relaxed);
            buf.copy_within(pos..filled, 0);
            filled -= pos;
            self.cancelled()?;
            if eof && filled == 0 {
                break;
            }
        }
        Ok((content, read_total))
    }
}

/// Count files and bytes under the paths (for progress totals), honouring excludes
/// and exclude markers.
pub fn scan(
    paths: &[PathBuf],
    excludes: &GlobSet,
    opts: &BackupOptions,
    progress: &BackupProgress,
) {
    // `top`: a path given to back up, read whatever its size.
    fn walk(p: &Path, ex: &GlobSet, opts: &BackupOptions, pr: &BackupProgress, top: bool) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return;
        };
        let markers = &opts.markers;
        if m.is_dir() {
            let only = marked(p, markers);
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    let c = e.path();
                    if (only.is_empty() || only.contains(&e.file_name())) && !ex.is_match(&c) {
                        walk(&c, ex, opts, pr, false);
                    }
                }
            }
        } else if m.is_file() && (top || !too_large(&m, opts.exclude_larger_than)) {
            pr.total_files.fetch_add(1, Ordering::Relaxed);
            pr.total_bytes.fetch_add(m.len(), Ordering::Relaxed);
        }
    }
    for p in paths {
        walk(p, excludes, opts, progress, true);
    }
    progress.scan_done.store(true, Ordering::Relaxed);
}

/// Back up `opts.paths` into `repo`.
///
/// # Errors
/// `InvalidInput` for missing source paths or bad patterns, `Cancelled`,
/// and storage errors. Unreadable files are not errors: they are listed in
/// the result, which is then partial.
pub fn backup(
    repo: &Repository,
    opts: &BackupOptions,
    progress: &BackupProgress,
) -> Result<BackupResult> {
    if opts.paths.is_empty() {
        return Err(Error::InvalidInput(
            "nothing to back up: give at least one path".into(),
        ));
    }
    let mut roots = Vec::new();
    for p in &opts.paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        let meta = std::fs::symlink_metadata(&abs).map_err(|e| Error::io(&abs, e))?;
        roots.push((abs, meta));
    }
    roots.sort_by(|a, b| a.0.cmp(&b.0));
    roots.dedup_by(|a, b| a.0 == b.0);
    let excludes = build_excludes(&opts.excludes)?;
    let paths: Vec<String> = roots.iter().map(|r| r.0.display().to_string()).collect();
    let run = Run::prepare(repo, opts, paths, excludes.clone(), progress)?;
    let scan_paths: Vec<PathBuf> = roots.iter().map(|r| r.0.clone()).collect();
    run.finish(opts, |ctx, parent_root| {
        std::thread::scope(|s| {
            s.spawn(|| scan(&scan_paths, &excludes, opts, progress));
            build_root(ctx, &roots, parent_root)
        })
    })
}

/// A stream to back up as one file of a snapshot, as database dumps are:
/// `pg_dump db | cadang backup --stdin --stdin-filename db.sql`.
pub struct StreamSource<'a> {
    /// The file's name in the snapshot: one path component.
    pub name: &'a str,
    /// The content, read to its end. A read error (a dump command that failed,
    /// say) fails the backup: no snapshot is written, and the chunks that
    /// landed are indexed for the next run.
    pub reader: &'a mut (dyn Read + Send),
}

/// Back up one stream into `repo`: the snapshot's root holds one regular file,
/// `/NAME`, mode 0600, owned by the user running the backup, with the time of
/// the backup as its mtime. Its path list is `/NAME`, so the previous backup
/// of the same name and host is the parent. `opts.paths`, excludes and
/// `one_file_system` do not apply; tags, host, time, cancel, threads and the
/// compression level do.
///
/// # Errors
/// `InvalidInput` for a name that is not one path component or for paths given
/// too, `Io` naming the stream when reading it failed, `Cancelled`, and storage
/// errors.
pub fn backup_stream(
    repo: &Repository,
    opts: &BackupOptions,
    source: StreamSource<'_>,
    progress: &BackupProgress,
) -> Result<BackupResult> {
    let name = source.name;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Error::InvalidInput(format!(
            "`{name}` cannot name the stream's file: give one path component, without `/`"
        )));
    }
    if !opts.paths.is_empty() {
        return Err(Error::InvalidInput(
            "a backup reads either paths or a stream, not both".into(),
        ));
    }
    let path = PathBuf::from(format!("/{name}"));
    let run = Run::prepare(
        repo,
        opts,
        vec![path.display().to_string()],
        GlobSet::empty(),
        progress,
    )?;
    let reader = source.reader;
    run.finish(opts, |ctx, _| {
        let now = Utc::now();
        let mut node = Node::new(name.as_bytes().to_vec(), NodeKind::File);
        node.mode = 0o600;
        // SAFETY: getuid and getgid have no preconditions and cannot fail.
        (node.uid, node.gid) = unsafe { (libc::getuid(), libc::getgid()) };
        node.mtime_ns = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
        node.ctime_ns = node.mtime_ns;
        ctx.progress.files_done.fetch_add(1, Ordering::Relaxed);
        ctx.files_new.fetch_add(1, Ordering::Relaxed);
        let (content, size) = ctx.read_chunks(reader, u64::MAX, &path)?;
        node.content = content;
        node.size = size;
        ctx.progress.total_files.store(1, Ordering::Relaxed);
        ctx.progress.total_bytes.store(size, Ordering::Relaxed);
        ctx.progress.scan_done.store(true, Ordering::Relaxed);
        Ok(Tree {
            nodes: vec![node],
            ..Tree::default()
        })
    })
}

/// What every backup holds between choosing its parent and committing its snapshot.
struct Run<'a> {
    ctx: Ctx<'a>,
    start: DateTime<Utc>,
    host: String,
    paths: Vec<String>,
    parent_id: Option<SnapshotId>,
    parent_root: Option<Tree>,
}

impl<'a> Run<'a> {
    /// Load the index and the parent snapshot (given, or the latest of the same
    /// host and paths unless forced) and set up the packer.
    fn prepare(
        repo: &'a Repository,
        opts: &BackupOptions,
        paths: Vec<String>,
        excludes: GlobSet,
        progress: &'a BackupProgress,
    ) -> Result<Self> {
        let start = Utc::now();
        let host = opts.host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        });
        let (index, bad_index) = repo.load_index()?;
        for (id, e) in &bad_index {
            tracing::warn!(index = %id.short(), error = %e, "ignoring unreadable index object; its chunks will be stored again");
        }
        let (snaps, _) = repo.load_snapshots()?;
        let parent_id = match opts.parent {
            Some(p) => Some(p),
            None if opts.force => None,
            None => snaps
                .iter()
                .rev()
                .find(|(_, s)| s.hostname == host && s.paths == paths)
                .map(|(id, _)| *id),
        };
        let parent_root = match parent_id {
            Some(pid) => {
                let s = repo.load_snapshot(&pid)?;
                match repo.load_tree(&index, &s.tree) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "parent snapshot unreadable; reading all files");
                        None
                    }
                }
            }
            None => None,
        };
        let ctx = Ctx {
            repo,
            index,
            packer: Packer::new(repo, 2, opts.step_hook.clone()).with_level(opts.compression_level),
            excludes,
            markers: opts.markers.clone(),
            larger_than: opts.exclude_larger_than,
            one_fs: opts.one_file_system,
            force: opts.force,
            cancel: opts.cancel.clone(),
            progress,
            errors: Mutex::new(Vec::new()),
            changed: Mutex::new(Vec::new()),
            files_new: AtomicU64::new(0),
            files_changed: AtomicU64::new(0),
            files_unmodified: AtomicU64::new(0),
            dirs: AtomicU64::new(0),
            hardlinks: Mutex::new(HashMap::new()),
        };
        Ok(Self {
            ctx,
            start,
            host,
            paths,
            parent_id,
            parent_root,
        })
    }

    /// Build the root tree with `build` on the worker pool, then commit: packs,
    /// index, snapshot. When `build` fails, what landed is indexed so the next
    /// run does not upload it again, and no snapshot is written.
    fn finish(
        self,
        opts: &BackupOptions,
        build: impl FnOnce(&Ctx<'a>, Option<&Tree>) -> Result<Tree> + Send,
    ) -> Result<BackupResult> {
        let ctx = &self.ctx;
        let repo = ctx.repo;
        let progress = ctx.progress;
        let pool = super::worker_pool("cadang-backup", opts.threads, 1)?;
        let built = pool.install(|| build(ctx, self.parent_root.as_ref()));
        let (tree, indexes) = match built {
            Ok(root) => {
                let tree = ctx.save_tree(root)?;
                (tree, ctx.packer.finish()?)
            }
            Err(e) => {
                if let Err(fe) = ctx.packer.flush() {
                    tracing::warn!(error = %fe, "could not index the packs of the interrupted run");
                }
                return Err(e);
            }
        };

        let st = ctx.packer.stats();
        let errors = std::mem::take(
            &mut *ctx
                .errors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let summary = SnapshotSummary {
            backup_start: Some(self.start),
            backup_end: Some(Utc::now()),
            files_new: ctx.files_new.load(Ordering::Relaxed),
            files_changed: ctx.files_changed.load(Ordering::Relaxed),
            files_unmodified: ctx.files_unmodified.load(Ordering::Relaxed),
            dirs: ctx.dirs.load(Ordering::Relaxed),
            files_failed: errors.len() as u64,
            data_blobs: st.data_blobs.load(Ordering::Relaxed),
            tree_blobs: st.tree_blobs.load(Ordering::Relaxed),
            data_added_raw: st.raw_bytes.load(Ordering::Relaxed),
            data_added: st.stored_bytes.load(Ordering::Relaxed),
            total_files_processed: progress.files_done.load(Ordering::Relaxed),
            total_bytes_processed: progress.bytes_done.load(Ordering::Relaxed),
        };
        progress
            .bytes_stored
            .store(summary.data_added, Ordering::Relaxed);
        let snapshot = Snapshot {
            version: 1,
            time: opts.time.unwrap_or_else(|| repo.now()),
            hostname: self.host,
            username: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            paths: self.paths,
            tags: opts.tags.clone(),
            parent: self.parent_id,
            tree,
            summary,
            original: None,
            rewritten_from: None,
            indexes,
        };
        // The commit point: everything the snapshot references is durable.
        let snapshot_id = repo.save_snapshot(&snapshot)?;
        if let Some(h) = &opts.step_hook {
            h("snapshot");
        }
        Ok(BackupResult {
            snapshot_id,
            snapshot,
            errors,
            changed_during_read: std::mem::take(
                &mut *ctx
                    .changed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ),
        })
    }
}

/// Build the root tree: the absolute source paths as a hierarchy of
/// directories (like restic), with each source fully processed at its leaf.
fn build_root(
    ctx: &Ctx<'_>,
    roots: &[(PathBuf, Metadata)],
    parent_root: Option<&Tree>,
) -> Result<Tree> {
    #[derive(Default)]
    struct Trie {
        children: std::collections::BTreeMap<Vec<u8>, Trie>,
        leaf: Option<usize>,
    }
    let mut trie = Trie::default();
    for (i, (p, _)) in roots.iter().enumerate() {
        let mut t = &mut trie;
        for c in p.components().skip(1) {
            t = t
                .children
                .entry(c.as_os_str().as_bytes().to_vec())
                .or_default();
        }
        t.leaf = Some(i);
    }
    fn build(
        ctx: &Ctx<'_>,
        roots: &[(PathBuf, Metadata)],
        t: &Trie,
        here: &Path,
        parent: Option<&Tree>,
    ) -> Result<Tree> {
        let parent_nodes: HashMap<&[u8], &Node> = parent
            .map(|p| p.nodes.iter().map(|n| (n.name.as_slice(), n)).collect())
            .unwrap_or_default();
        let mut tree = Tree::default();
        for (name, child) in &t.children {
            let path = here.join(std::ffi::OsStr::from_bytes(name));
            let pnode = parent_nodes.get(name.as_slice()).copied();
            if let Some(i) = child.leaf {
                let (p, m) = &roots[i];
                if let Some(n) = ctx.entry(p, name, m, pnode, m.dev())? {
                    tree.nodes.push(n);
                }
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            let sub_parent = match pnode.and_then(|n| n.subtree) {
                Some(id) => ctx.repo.load_tree(&ctx.index, &id).ok(),
                None => None,
            };
            let sub = build(ctx, roots, child, &path, sub_parent.as_ref())?;
            let mut n = Ctx::node_from_meta(name, &meta);
            n.kind = NodeKind::Dir;
            // A directory above what was given keeps its attributes too (an SELinux
            // label, an ACL), as it keeps its mode and owner.
            match super::xattrs::read(&path) {
                Ok(xattrs) => n.xattrs = xattrs,
                Err(e) => ctx.fail(&path, format!("extended attributes: {e}")),
            }
            n.subtree = Some(ctx.save_tree(sub)?);
            tree.nodes.push(n);
        }
        Ok(tree)
    }
    build(ctx, roots, &trie, Path::new("/"), parent_root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::repo::test_repository;

    /// Yields `data`, then fails as a dump whose database connection dropped.
    struct Failing<'a> {
        data: &'a [u8],
    }

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.data.is_empty() {
                return Err(std::io::Error::other("connection to server lost"));
            }
            let n = buf.len().min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// `--exclude-if-present` and `--exclude-caches`: a directory holding its marker
    /// keeps only the marker; a tag without the signature, or one that is a link, marks
    /// nothing.
    #[test]
    fn directories_holding_an_exclude_marker_keep_only_the_marker() {
        let (_runtime, _dir, repo) = test_repository();
        let source = tempfile::tempdir().unwrap();
        let root = source.path().join("srv");
        let write = |rel: &str, data: &[u8]| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        };
        write("app/data.db", b"rows");
        write("app/scratch/.nobackup", b"");
        write("app/scratch/huge.tmp", b"scratch");
        let tag = format!("{CACHEDIR_TAG_SIGNATURE}\n# made by a build tool\n");
        write("build/CACHEDIR.TAG", tag.as_bytes());
        write("build/out.o", b"object");
        write(
            "notes/CACHEDIR.TAG",
            b"a file that happens to have this name",
        );
        write("notes/todo.txt", b"keep");
        write("real/CACHEDIR.TAG", tag.as_bytes());
        write("real/deep/image.iso", b"cached");
        write("linked/kept.txt", b"keep");
        // A FIFO of the tag's name marks nothing, and the backup does not wait on it.
        write("pipe/data", b"keep");
        let fifo =
            std::ffi::CString::new(root.join("pipe/CACHEDIR.TAG").as_os_str().as_bytes()).unwrap();
        // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink(
            root.join("real/CACHEDIR.TAG"),
            root.join("linked/CACHEDIR.TAG"),
        )
        .unwrap();
        let opts = BackupOptions {
            paths: vec![root.clone()],
            markers: vec![
                ExcludeMarker::parse(".nobackup").unwrap(),
                ExcludeMarker::cache_dir_tag(),
            ],
            ..BackupOptions::default()
        };
        let done = backup(&repo, &opts, &BackupProgress::default()).unwrap();
        let (index, _) = repo.load_index().unwrap();
        let found = crate::engine::browse::list(
            &repo,
            &index,
            &done.snapshot.tree,
            root.as_os_str().as_bytes(),
            true,
            1000,
        )
        .unwrap();
        let prefix = format!("{}/", root.display());
        let listed: Vec<String> = found
            .entries
            .iter()
            .map(|entry| {
                String::from_utf8_lossy(&entry.path)
                    .trim_start_matches(&prefix)
                    .to_owned()
            })
            .collect();
        assert_eq!(
            listed,
            [
                "app",
                "app/data.db",
                "app/scratch",
                "app/scratch/.nobackup",
                "build",
                "build/CACHEDIR.TAG",
                "linked",
                "linked/CACHEDIR.TAG",
                "linked/kept.txt",
                "notes",
                "notes/CACHEDIR.TAG",
                "notes/todo.txt",
                "pipe",
                "pipe/CACHEDIR.TAG",
                "pipe/data",
                "real",
                "real/CACHEDIR.TAG",
            ],
            "the marked directories (app/scratch, build, real) keep only their markers"
        );
        for bad in ["", ".", "..", "a/b", "tag:", "nul\0"] {
            assert!(ExcludeMarker::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ExcludeMarker::parse(&format!("CACHEDIR.TAG:{CACHEDIR_TAG_SIGNATURE}")).unwrap(),
            ExcludeMarker::cache_dir_tag()
        );
        // What a job carries reads back as the same marker.
        for marker in exclude_markers(&[".nobackup".into(), "TAG:a:b".into()], true).unwrap() {
            assert_eq!(ExcludeMarker::parse(&marker.to_string()).unwrap(), marker);
        }
    }

    /// `--exclude-larger-than`: larger regular files are left out and not counted in the
    /// progress totals; a file given as a path to back up is read whatever its size.
    #[test]
    fn files_larger_than_the_limit_are_left_out_unless_named() {
        let (_runtime, _dir, repo) = test_repository();
        let source = tempfile::tempdir().unwrap();
        let root = source.path().join("srv");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("at-limit.txt"), [1u8; 10]).unwrap();
        std::fs::write(root.join("over.iso"), [2u8; 11]).unwrap();
        let named = source.path().join("named.iso");
        std::fs::write(&named, [3u8; 100]).unwrap();
        let opts = BackupOptions {
            paths: vec![root.clone(), named.clone()],
            exclude_larger_than: Some(10),
            ..BackupOptions::default()
        };
        let progress = BackupProgress::default();
        let done = backup(&repo, &opts, &progress).unwrap();
        let (index, _) = repo.load_index().unwrap();
        let found = crate::engine::browse::list(
            &repo,
            &index,
            &done.snapshot.tree,
            source.path().as_os_str().as_bytes(),
            true,
            1000,
        )
        .unwrap();
        let names: Vec<String> = found
            .entries
            .iter()
            .map(|entry| {
                String::from_utf8_lossy(&entry.path)
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(names, ["named.iso", "srv", "at-limit.txt"]);
        assert_eq!(progress.total_files.load(Ordering::Relaxed), 2);
        assert_eq!(progress.total_bytes.load(Ordering::Relaxed), 110);
    }

    /// A stream that fails half-way writes no snapshot, but the chunks it stored are
    /// indexed, so the next backup of the same stream does not store them again.
    #[test]
    fn a_failed_stream_writes_no_snapshot_and_its_chunks_serve_the_next_run() {
        let (_runtime, _dir, repo) = test_repository();
        // Incompressible, so packs fill at their target size: those done before the
        // failure land, the open one is dropped.
        let mut data = vec![0u8; 64 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for word in data.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let opts = BackupOptions::default();
        let progress = BackupProgress::default();
        let mut failing = Failing {
            data: &data[..56 << 20],
        };
        let source = StreamSource {
            name: "simpeg.sql",
            reader: &mut failing,
        };
        let err = backup_stream(&repo, &opts, source, &progress).unwrap_err();
        assert!(
            err.to_string()
                .contains("/simpeg.sql: connection to server lost"),
            "{err}"
        );
        assert!(repo.load_snapshots().unwrap().0.is_empty());
        let (index, bad) = repo.load_index().unwrap();
        assert!(bad.is_empty());
        assert!(
            index.len() >= 8,
            "packs finished before the failure are indexed: {}",
            index.len()
        );

        let mut whole = &data[..];
        let source = StreamSource {
            name: "simpeg.sql",
            reader: &mut whole,
        };
        let done = backup_stream(&repo, &opts, source, &BackupProgress::default()).unwrap();
        let summary = &done.snapshot.summary;
        assert_eq!(summary.total_bytes_processed, data.len() as u64);
        assert!(summary.data_added_raw <= 36 << 20, "{summary:?}");
        assert_eq!(done.snapshot.paths, ["/simpeg.sql"]);
        let root = repo
            .load_tree(&repo.load_index().unwrap().0, &done.snapshot.tree)
            .unwrap();
        assert_eq!(root.nodes.len(), 1);
        assert_eq!(root.nodes[0].name, b"simpeg.sql");
        assert_eq!(root.nodes[0].size, data.len() as u64);

        for name in ["", ".", "..", "a/b"] {
            let mut empty: &[u8] = &[];
            let source = StreamSource {
                name,
                reader: &mut empty,
            };
            let err = backup_stream(&repo, &opts, source, &BackupProgress::default());
            assert!(
                matches!(err, Err(Error::InvalidInput(_))),
                "{name}: {err:?}"
            );
        }
    }
}
