//! Restore: write a snapshot (or part of it) into a target directory, verify
//! every chunk on the way, and optionally re-read the result.
//!
//! The restore is organised by pack: each needed pack is read once (whole, or
//! by ranges when only a little of it is needed), every blob is decrypted and
//! checked against its keyed id, and its plaintext is written to every file
//! offset that needs it. Damage never stops the other files: a file with a
//! damaged or missing chunk is not put in place and is listed by path.
//!
//! Over an existing tree ([`Overwrite`]): a regular file already at its place is read
//! chunk by chunk at the snapshot's offsets. With every chunk there it is kept and
//! only given the snapshot's metadata; with some, the file is still restored to a
//! temporary name and renamed into place, but the chunks it holds are copied from it
//! (each checked against its id again) instead of being read from the repository,
//! which for a large file damaged in a few places, on a remote repository, is most
//! of the restore.
//!
//! Confinement: names come from a possibly hostile repository. Tree decoding
//! already refuses `..`, `/` and NUL in names; here every directory is
//! created or checked to be a real directory (never a symlink), files are
//! written to temporary names opened with `O_NOFOLLOW` and renamed into
//! place (a rename replaces a symlink, it does not follow it), and symlinks
//! are created last, so no write ever passes through a link that the restore
//! itself placed.
//!
//! Replica fallback: a restore may be given a [`Replica`], a second
//! repository sharing the primary's keys (made with
//! [`Repository::init_from`] and filled by [`super::copy::copy`]), so blob
//! ids are the same in both. A blob (data or tree) that the primary cannot
//! give — pack missing, bytes failing authentication, not indexed — is read
//! from the replica instead, verified the same way, and listed in
//! [`RestoreResult::repaired`] so the primary's damage can be repaired. The
//! primary is only ever read.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::backup::FileError;
use super::crypto::IdKeys;
use super::error::{Error, Result};
use super::id::{BlobId, BlobType, PackId, SnapshotId};
use super::index::Index;
use super::pack::with_blob;
use super::repo::{Repository, pack_key};
use super::snapshot::Snapshot;
use super::tree::{self, Node, NodeKind, Tree};
use super::writebehind::WriteBehind;

/// A replica of a repository: another repository holding copies of its
/// snapshots under the same keys, read when the primary's copy of a blob is
/// damaged.
pub struct Replica {
    /// The replica repository.
    pub repo: Repository,
    /// Its index, loaded once.
    pub index: Index,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("repo", &self.repo)
            .field("blobs", &self.index.len())
            .finish()
    }
}

impl Replica {
    /// Open a replica: load its index. Index objects that cannot be read are
    /// left out (their blobs are then simply not offered by the replica).
    ///
    /// # Errors
    /// Storage errors listing the index.
    pub fn open(repo: Repository) -> Result<Replica> {
        let (index, _) = repo.load_index()?;
        Ok(Replica { repo, index })
    }

    /// Whether the replica shares `primary`'s keys, so that a blob id means
    /// the same content in both.
    pub fn shares_keys_with(&self, primary: &Repository) -> bool {
        self.repo.keys().fingerprint() == primary.keys().fingerprint()
    }

    /// Load, decrypt and verify one blob from the replica.
    ///
    /// # Errors
    /// As [`Repository::load_blob`].
    pub fn load_blob(&self, ty: BlobType, id: &BlobId) -> Result<Vec<u8>> {
        self.repo.load_blob(&self.index, ty, id)
    }

    /// Load and decrypt one blob from the replica, still compressed.
    ///
    /// # Errors
    /// As [`Repository::load_blob_payload`].
    pub fn load_blob_payload(&self, ty: BlobType, id: &BlobId) -> Result<(Vec<u8>, u32)> {
        self.repo.load_blob_payload(&self.index, ty, id)
    }

    /// Load and decode a tree from the replica.
    ///
    /// # Errors
    /// As [`Repository::load_tree`].
    pub fn load_tree(&self, id: &BlobId) -> Result<Tree> {
        self.repo.load_tree(&self.index, id)
    }

    /// The replica's copy of primary snapshot `original`, if it holds one.
    ///
    /// # Errors
    /// Storage errors listing the replica's snapshots.
    pub fn find_copy(&self, original: &SnapshotId) -> Result<Option<(SnapshotId, Snapshot)>> {
        let (snapshots, _) = self.repo.load_snapshots()?;
        Ok(snapshots
            .into_iter()
            .find(|(_, s)| s.original.as_ref() == Some(original)))
    }
}

/// Load snapshot `id` from `primary`; when that fails and a replica is given,
/// take the replica's copy of it (same tree, same keys). The second value
/// names the repair when the replica supplied it.
///
/// # Errors
/// The primary's error when no replica holds a copy.
pub fn load_snapshot_with_fallback(
    primary: &Repository,
    id: &SnapshotId,
    replica: Option<&Replica>,
) -> Result<(Snapshot, Option<String>)> {
    match primary.load_snapshot(id) {
        Ok(s) => Ok((s, None)),
        Err(e) => {
            let Some(replica) = replica else {
                return Err(e);
            };
            match replica.find_copy(id) {
                Ok(Some((copy_id, s))) => Ok((
                    s,
                    Some(format!(
                        "snapshot {} (replica copy {}): {e} — damaged in the primary, read from the replica",
                        id.short(),
                        copy_id.short()
                    )),
                )),
                _ => Err(e),
            }
        }
    }
}

/// Where a restore reads blobs: the primary, and the replica for what the
/// primary cannot give.
struct Sources<'a> {
    repo: &'a Repository,
    index: &'a Index,
    replica: Option<&'a Replica>,
    repaired: Mutex<Vec<String>>,
}

impl Sources<'_> {
    /// Plaintext length of a data blob, from the primary's index or else the
    /// replica's.
    fn raw_length(&self, id: &BlobId) -> Option<u32> {
        self.index.get(id).map(|(_, l)| l.raw_length).or_else(|| {
            self.replica
                .and_then(|r| r.index.get(id))
                .map(|(_, l)| l.raw_length)
        })
    }

    /// Read a blob the primary failed to give (`primary_error`) from the
    /// replica, recording the repair. Without a replica, or when the replica
    /// fails too, the error text to report.
    fn fallback(
        &self,
        ty: BlobType,
        id: &BlobId,
        primary_error: &Error,
    ) -> std::result::Result<Vec<u8>, String> {
        let Some(replica) = self.replica else {
            return Err(primary_error.to_string());
        };
        match replica.load_blob(ty, id) {
            Ok(data) => {
                let place = match self.index.get(id) {
                    Some((pack, _)) => format!("in pack {}", pack.short()),
                    None => "(no pack in the primary index)".to_string(),
                };
                self.repaired
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(format!(
                        "{ty} blob {} {place}: {primary_error} — damaged in the primary, read from the replica",
                        id.short()
                    ));
                Ok(data)
            }
            Err(e) => Err(format!(
                "{primary_error}; the replica cannot supply it either: {e}"
            )),
        }
    }

    /// Load a tree from the primary, or from the replica when the primary's
    /// copy is damaged.
    fn load_tree(&self, id: &BlobId) -> std::result::Result<Tree, String> {
        match self.repo.load_tree(self.index, id) {
            Ok(t) => Ok(t),
            Err(e) => {
                let raw = self.fallback(BlobType::Tree, id, &e)?;
                Tree::decode(&raw).map_err(|d| format!("{e}; the replica's copy is invalid: {d}"))
            }
        }
    }
}

/// What a restore does with an entry already at the target where the snapshot has a
/// file, a symlink or a special file (directories are always reused and given the
/// snapshot's metadata).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overwrite {
    /// Replace it, unless it is a regular file whose content, read and compared chunk
    /// by chunk with the snapshot's ids, is already the snapshot's: such a file is kept
    /// and only given the snapshot's owner, mode, attributes and times.
    #[default]
    Always,
    /// As `Always`, but a regular file of the recorded size and modification time is
    /// taken as the snapshot's without being read.
    IfChanged,
    /// Replace only what is older (by modification time) than the snapshot's copy;
    /// leave the rest as it is.
    IfNewer,
    /// Leave everything that exists as it is.
    Never,
}

impl Overwrite {
    /// Every mode, as the command line names them.
    pub const ALL: [Overwrite; 4] = [
        Overwrite::Always,
        Overwrite::IfChanged,
        Overwrite::IfNewer,
        Overwrite::Never,
    ];

    /// `text` as a mode, `Always` when it is empty (as a message or record that does not
    /// say leaves it).
    ///
    /// # Errors
    /// An unknown mode, named with the known ones.
    pub fn parse_or_always(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "" => Ok(Overwrite::Always),
            text => text.parse(),
        }
    }

    /// The mode's name on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Overwrite::Always => "always",
            Overwrite::IfChanged => "if-changed",
            Overwrite::IfNewer => "if-newer",
            Overwrite::Never => "never",
        }
    }

    /// Whether an existing entry of modification time `existing_ns` is left as it is,
    /// whatever it holds, where the snapshot's copy was modified at `recorded_ns`.
    #[must_use]
    pub fn keeps(self, recorded_ns: i64, existing_ns: i64) -> bool {
        match self {
            Overwrite::Never => true,
            Overwrite::IfNewer => recorded_ns <= existing_ns,
            Overwrite::Always | Overwrite::IfChanged => false,
        }
    }

    /// What becomes of `found` (what the target holds, not followed) where the
    /// snapshot has a regular file of `size` bytes modified at `recorded_ns`.
    #[must_use]
    pub fn judge(self, size: u64, recorded_ns: i64, found: &std::fs::Metadata) -> Judged {
        let found_ns = mtime_ns(found);
        if self.keeps(recorded_ns, found_ns) {
            Judged::Kept
        } else if !found.is_file() || found.len() != size {
            Judged::Replace
        } else if self == Overwrite::IfChanged && found_ns == recorded_ns {
            Judged::Trusted
        } else {
            Judged::Compare
        }
    }
}

/// What a restore does with what the target holds where the snapshot has a regular
/// file ([`Overwrite::judge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// Left as it is, whatever it holds (`if-newer`, `never`).
    Kept,
    /// Replaced: not a regular file, or not of the snapshot's size.
    Replace,
    /// Taken as the snapshot's content without reading it (`if-changed`, same size
    /// and time).
    Trusted,
    /// Read and compared chunk by chunk with the snapshot's ids.
    Compare,
}

impl std::str::FromStr for Overwrite {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|o| o.name()).collect();
                format!("unknown overwrite mode `{s}` (known: {})", known.join(", "))
            })
    }
}

impl std::fmt::Display for Overwrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to restore and where.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Target directory (created if missing).
    pub target: PathBuf,
    /// Only restore these paths of the snapshot (and what is below them).
    pub includes: Vec<String>,
    /// Leave out entries matching these globs, and what is below them: the patterns
    /// of `backup --exclude` (one without `/` matches a name anywhere, one with `/`
    /// the whole path from the snapshot's root, such as `/var/lib/*/cache`).
    pub excludes: Vec<String>,
    /// Re-read every restored file and compare it with the snapshot.
    pub verify: bool,
    /// What to do with files already at the target.
    pub overwrite: Overwrite,
    /// Delete what the target holds that the snapshot does not, in every directory the
    /// restore writes at or below the snapshot's backed-up paths (only what the includes
    /// and excludes select).
    pub delete: bool,
    /// Decide everything (reading existing files to compare them) but write, replace
    /// and delete nothing: the result says what a restore would do.
    pub dry_run: bool,
    /// Set to stop at the next safe point.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Worker threads (default: available cores).
    pub threads: Option<usize>,
    /// Read blobs the primary cannot give from this replica (which must share
    /// the primary's keys).
    pub replica: Option<Arc<Replica>>,
}

/// Live progress.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Files to restore.
    pub total_files: AtomicU64,
    /// Bytes to restore.
    pub total_bytes: AtomicU64,
    /// Files done.
    pub files_done: AtomicU64,
    /// Bytes written.
    pub bytes_done: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
}

/// Result of re-reading the restored tree.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Files compared.
    pub files_checked: u64,
    /// Bytes compared.
    pub bytes_checked: u64,
    /// Files that differ from the snapshot, with the difference.
    pub mismatches: Vec<FileError>,
}

/// Outcome of a restore.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreResult {
    /// Regular files put in place.
    pub files_restored: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Other entries (symlinks, devices, fifos).
    pub others: u64,
    /// Bytes of file content written.
    pub bytes_restored: u64,
    /// Regular files already at the target with the snapshot's content, kept and
    /// given the snapshot's metadata.
    pub files_unchanged: u64,
    /// Their bytes.
    pub bytes_unchanged: u64,
    /// Entries already at the target left as they were (`--overwrite never` or
    /// `if-newer`); they are not verified.
    pub files_kept: u64,
    /// Bytes of restored files copied from the files already at their places (the
    /// chunks those still held at their offsets), included in `bytes_restored`.
    pub bytes_reused: u64,
    /// What was deleted from the target (`--delete`), relative to it.
    pub deleted: Vec<String>,
    /// Nothing was written: the counts say what a restore would do.
    pub dry_run: bool,
    /// Files (or entries) that could not be restored, with the reason.
    pub errors: Vec<FileError>,
    /// Blobs found damaged or missing and not readable anywhere.
    pub damaged_blobs: Vec<String>,
    /// Blobs (or the snapshot) damaged or missing in the primary and read
    /// from the replica instead: one line each naming the blob, the primary
    /// pack and the primary's error, so the primary can be repaired.
    pub repaired: Vec<String>,
    /// Present when verification was requested.
    pub verify: Option<VerifyReport>,
}

impl RestoreResult {
    /// Whether everything was restored and (if asked) verified.
    pub fn is_success(&self) -> bool {
        self.errors.is_empty() && self.verify.as_ref().is_none_or(|v| v.mismatches.is_empty())
    }
}

/// For one pack: each needed blob and the (file index, offset) pairs it fills.
type BlobDestinations = HashMap<BlobId, Vec<(usize, u64)>>;

struct Entry {
    rel: PathBuf,
    node: Node,
}

struct FileState {
    rel: PathBuf,
    tmp: PathBuf,
    damaged: AtomicBool,
    error: Mutex<Option<String>>,
    /// At most one chunk: the file is created, written, given its metadata through
    /// its descriptor and renamed into place as soon as that chunk is verified (or at
    /// once, when it is empty). Most files of a tree are such files, and this costs
    /// them two path lookups instead of seven.
    whole: bool,
    /// A whole file that is in place.
    placed: AtomicBool,
    /// The chunks the file already at its place holds at their offsets (a
    /// [`chunks_held`] bitmap), copied from it; empty when none.
    reuse: Vec<u8>,
    /// Bytes copied so.
    reused: AtomicU64,
}

/// Where verified chunks go: the files being restored under the target.
struct Outputs<'a> {
    files: &'a [(FileState, &'a Node)],
    target: &'a Path,
    owners: bool,
    progress: &'a RestoreProgress,
    /// Takes what was written to disk and out of the page cache.
    behind: &'a WriteBehind<usize>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn selected(rel: &Path, chosen: &Chosen) -> (bool, bool) {
    // (restore this entry, descend into it)
    if !chosen.excludes.is_empty() && chosen.excludes.is_match(Path::new("/").join(rel)) {
        return (false, false);
    }
    let includes = &chosen.includes;
    if includes.is_empty() {
        return (true, true);
    }
    for inc in includes {
        if rel.starts_with(inc) {
            return (true, true);
        }
        if inc.starts_with(rel) {
            return (false, true);
        }
    }
    (false, false)
}

/// What a restore takes from the snapshot: paths relative to its root, and the entries
/// it leaves out.
struct Chosen {
    includes: Vec<PathBuf>,
    excludes: globset::GlobSet,
}

impl Chosen {
    fn new(includes: &[String], excludes: &[String]) -> Result<Self> {
        Ok(Self {
            includes: includes
                .iter()
                .map(|i| PathBuf::from(i.trim_start_matches('/').trim_end_matches('/')))
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
            excludes: super::backup::build_excludes(excludes)?,
        })
    }
}

/// The entries of a tree and everything below it, in tree order (each directory
/// before what it holds), with what could not be read.
#[derive(Default)]
struct Collected {
    entries: Vec<Entry>,
    errors: Vec<FileError>,
    damaged: Vec<String>,
    /// Directories whose listing could not be read: what they hold is unknown, so
    /// `--delete` must not touch them.
    unlisted: Vec<PathBuf>,
}

impl Collected {
    fn append(&mut self, mut other: Collected) {
        self.entries.append(&mut other.entries);
        self.errors.append(&mut other.errors);
        self.damaged.append(&mut other.damaged);
        self.unlisted.append(&mut other.unlisted);
    }
}

/// Load a tree and, in parallel on the calling pool, its selected subtrees: a
/// restore from object storage would otherwise wait for one request per directory
/// in turn.
fn collect(
    sources: &Sources<'_>,
    tree: &BlobId,
    rel: &Path,
    chosen: &Chosen,
    depth: usize,
) -> Collected {
    if depth > tree::MAX_DEPTH {
        let mut refused = Collected::default();
        refused.unlisted.push(rel.to_path_buf());
        refused.errors.push(FileError {
            path: rel.display().to_string(),
            error: tree::too_deep(),
        });
        return refused;
    }
    let t = match sources.load_tree(tree) {
        Ok(t) => t,
        Err(e) => {
            let mut failed = Collected::default();
            failed.unlisted.push(rel.to_path_buf());
            failed.damaged.push(format!("tree {}: {e}", tree.short()));
            failed.errors.push(FileError {
                path: if rel.as_os_str().is_empty() {
                    "/".into()
                } else {
                    rel.display().to_string()
                },
                error: format!("directory listing unreadable: {e}"),
            });
            return failed;
        }
    };
    let parts: Vec<Option<Collected>> = t
        .nodes
        .into_par_iter()
        .map(|n| {
            let child = rel.join(OsStr::from_bytes(&n.name));
            let (take, descend) = selected(&child, chosen);
            if n.kind == NodeKind::Dir && descend {
                // Tree::decode refuses directories without a subtree.
                let sub = n.subtree?;
                // Included directories and the ancestors of included paths are
                // both created with their recorded metadata.
                let below = collect(sources, &sub, &child, chosen, depth + 1);
                let mut part = Collected::default();
                part.entries.push(Entry {
                    rel: child,
                    node: n,
                });
                part.append(below);
                Some(part)
            } else if take {
                let mut part = Collected::default();
                part.entries.push(Entry {
                    rel: child,
                    node: n,
                });
                Some(part)
            } else {
                None
            }
        })
        .collect();
    let mut all = Collected::default();
    for part in parts.into_iter().flatten() {
        all.append(part);
    }
    all
}

/// Make sure `dir` (under the target) is a real directory, creating it if
/// needed. Refuses to go through a symlink; with `replace` (`--delete`), removes a
/// symlink or other non-directory in the way (never what it points to) instead, and
/// says so. A dry run changes nothing and says what would happen.
fn ensure_dir(dir: &Path, replace: bool, dry_run: bool) -> std::io::Result<bool> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => Ok(false),
        Ok(_) if replace => {
            if !dry_run {
                std::fs::remove_file(dir)?;
                std::fs::create_dir(dir)?;
            }
            Ok(true)
        }
        Ok(m) if m.file_type().is_symlink() => Err(std::io::Error::other(
            "refusing to restore through a symbolic link (--delete replaces it)",
        )),
        Ok(_) => Err(std::io::Error::other(
            "a non-directory is in the way (--delete replaces it)",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !dry_run {
                std::fs::create_dir(dir)?;
            }
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Modification time of an existing entry, in nanoseconds since the epoch.
#[must_use]
pub fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// What the target holds where the snapshot has a regular file, and what becomes of it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Existing {
    /// Nothing, or something to replace: the file is restored.
    Replace,
    /// A regular file with the snapshot's content, now with its metadata.
    Unchanged,
    /// Something left as it is (`--overwrite never` or `if-newer`).
    Kept,
    /// A regular file that differs but holds some of the snapshot's chunks at their
    /// offsets (a bitmap, see [`chunks_held`]): the file is restored, those chunks
    /// copied from it rather than read from the repository.
    Partial(Vec<u8>),
}

/// Which of a file's chunks (ids and lengths, in order) the open regular file `f`, of
/// `len` bytes, holds at their offsets, compared by keyed id: a bitmap (bit `i % 8` of
/// byte `i / 8` for chunk `i`) and how many. What was read leaves the page cache.
pub fn chunks_held(
    keys: &IdKeys,
    f: &std::fs::File,
    len: u64,
    chunks: impl ExactSizeIterator<Item = ([u8; 32], u32)>,
) -> (Vec<u8>, usize) {
    let mut bitmap = vec![0u8; chunks.len().div_ceil(8)];
    let mut count = 0;
    let mut buf = Vec::new();
    let mut offset = 0u64;
    for (i, (id, length)) in chunks.enumerate() {
        let end = offset + u64::from(length);
        if end > len {
            break;
        }
        buf.resize(length as usize, 0);
        if read_exact_sparse(f, &mut buf, offset).is_ok() && keys.blob_id(&buf).0 == id {
            bitmap[i / 8] |= 1 << (i % 8);
            count += 1;
        }
        offset = end;
    }
    let _ = super::writebehind::drop_cached(f, 0, 0);
    (bitmap, count)
}

/// Whether chunk `i` is set in a [`chunks_held`] bitmap.
#[must_use]
pub fn is_held(bitmap: &[u8], i: usize) -> bool {
    bitmap
        .get(i / 8)
        .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
}

/// Decides what becomes of what `path` holds (the snapshot's `node` is a regular
/// file); a file found unchanged is given the snapshot's metadata here, unless this
/// is a dry run. Anything that cannot be decided is restored.
fn existing_file(
    sources: &Sources<'_>,
    path: &Path,
    node: &Node,
    opts: &RestoreOptions,
    owners: bool,
) -> Existing {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Existing::Replace;
    };
    let judged = opts.overwrite.judge(node.size, node.mtime_ns, &m);
    match judged {
        Judged::Kept => return Existing::Kept,
        // Of another size: its chunks may still be in place.
        Judged::Replace if !m.is_file() => return Existing::Replace,
        Judged::Replace | Judged::Trusted | Judged::Compare => {}
    }
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    else {
        return Existing::Replace;
    };
    if judged != Judged::Trusted {
        let lengths: Option<Vec<u32>> =
            node.content.iter().map(|c| sources.raw_length(c)).collect();
        let Some(lengths) = lengths else {
            return Existing::Replace;
        };
        let (bitmap, count) = chunks_held(
            sources.repo.keys().id_keys(),
            &f,
            m.len(),
            node.content.iter().map(|c| c.0).zip(lengths),
        );
        if judged == Judged::Replace || count < node.content.len() {
            // A file of one chunk is read from the repository whole.
            return if count > 0 && node.content.len() > 1 {
                Existing::Partial(bitmap)
            } else {
                Existing::Replace
            };
        }
    }
    if opts.dry_run || finish_file(&f, node, owners).is_ok() {
        Existing::Unchanged
    } else {
        Existing::Replace
    }
}

/// Whether what `path` holds is left as it is where the snapshot has `node`.
fn keeps_existing(path: &Path, node: &Node, overwrite: Overwrite) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| overwrite.keeps(node.mtime_ns, mtime_ns(&m)))
}

/// Whether two paths are links to one file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The first path of a hard-link group that later paths are linked to.
#[derive(Clone)]
enum LinkTo<'a> {
    /// A file this restore writes (index into the planned files).
    Restored(usize),
    /// A file already at the target with the snapshot's content.
    InPlace(&'a Entry),
}

impl<'a> LinkTo<'a> {
    fn node<'b>(&'b self, files: &'b [(FileState, &'a Node)]) -> &'b Node {
        match self {
            LinkTo::Restored(fi) => files[*fi].1,
            LinkTo::InPlace(e) => &e.node,
        }
    }
}

/// `--delete`: removes from each directory the restore writes what the snapshot's
/// copy of it does not hold (among the entries the includes and excludes select), at or
/// below the paths that were backed up. The directories above those (the target itself
/// among them) hold in the snapshot only the way to them, not what was beside it: they
/// are never cleaned, so a restore of `/srv/www` into `/` cannot touch `/etc`.
struct Cleaner<'a> {
    /// The names of each directory of the snapshot, by path, with their entries.
    listings: HashMap<&'a Path, HashMap<&'a OsStr, &'a Node>>,
    /// The backed-up paths, relative to the snapshot's root.
    within: Vec<PathBuf>,
    /// Directories whose listing is unknown: nothing is deleted there.
    unlisted: &'a [PathBuf],
    deleted: Vec<String>,
    errors: Vec<FileError>,
}

impl<'a> Cleaner<'a> {
    fn new(entries: &'a [Entry], unlisted: &'a [PathBuf], backed_up: &[String]) -> Self {
        let mut listings: HashMap<&Path, HashMap<&OsStr, &Node>> = HashMap::new();
        for e in entries {
            if let (Some(parent), Some(name)) = (e.rel.parent(), e.rel.file_name()) {
                listings.entry(parent).or_default().insert(name, &e.node);
            }
        }
        Self {
            listings,
            within: backed_up
                .iter()
                .map(|p| PathBuf::from(p.trim_start_matches('/')))
                .collect(),
            unlisted,
            deleted: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Whether `rel` is a backed-up path or below one.
    fn covers(&self, rel: &Path) -> bool {
        self.within.iter().any(|w| rel.starts_with(w))
    }

    /// Cleans directory `rel` of the target (a real directory, checked by the
    /// caller, or absent in a dry run). With `replaces`, a directory where the
    /// snapshot has something else goes too.
    fn clean(&mut self, target: &Path, rel: &Path, chosen: &Chosen, replaces: bool, dry_run: bool) {
        if !self.covers(rel) || self.unlisted.iter().any(|u| u == rel) {
            return;
        }
        let dir = target.join(rel);
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            // A dry run does not create the directories it would restore into.
            Err(e) if dry_run && e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if dry_run && e.raw_os_error() == Some(libc::ENOTDIR) => return,
            Err(e) => {
                self.errors.push(FileError {
                    path: rel.display().to_string(),
                    error: format!("cannot list it to delete what the snapshot does not hold: {e}"),
                });
                return;
            }
        };
        let snapshot = self.listings.get(rel);
        for item in listing {
            let (name, kind) = match item.and_then(|i| Ok((i.file_name(), i.file_type()?))) {
                Ok(found) => found,
                Err(e) => {
                    self.errors.push(FileError {
                        path: rel.display().to_string(),
                        error: format!(
                            "cannot list it to delete what the snapshot does not hold: {e}"
                        ),
                    });
                    return;
                }
            };
            let child = rel.join(&name);
            let goes = match snapshot.and_then(|names| names.get(name.as_os_str())) {
                None => selected(&child, chosen).0,
                Some(node) => replaces && kind.is_dir() && node.kind != NodeKind::Dir,
            };
            if !goes {
                continue;
            }
            let path = dir.join(&name);
            // Never followed: a symlink is removed itself, a directory with what it holds.
            let removed = if dry_run {
                Ok(())
            } else if kind.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => self.deleted.push(child.display().to_string()),
                Err(e) => self.errors.push(FileError {
                    path: child.display().to_string(),
                    error: format!("cannot delete it: {e}"),
                }),
            }
        }
    }
}

/// What a dry run reports once every file is planned: the files and entries a restore
/// would write, and the damage it would meet.
#[allow(clippy::too_many_arguments)]
fn dry_run_result(
    mut result: RestoreResult,
    files: &[(FileState, &Node)],
    hardlink_rest: &[(LinkTo<'_>, &Entry)],
    entries: &[Entry],
    in_bad_dir: &dyn Fn(&Path) -> bool,
    bad_dirs: &[PathBuf],
    target: &Path,
    overwrite: Overwrite,
    owners: bool,
) -> RestoreResult {
    let damaged = |fs: &FileState| fs.damaged.load(Ordering::Relaxed);
    for (fs, node) in files {
        if damaged(fs) {
            result.errors.push(FileError {
                path: fs.rel.display().to_string(),
                error: fs
                    .error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                    .unwrap_or_else(|| "damaged".into()),
            });
        } else {
            result.files_restored += 1;
            result.bytes_restored += node.size;
        }
    }
    for (first, e) in hardlink_rest {
        match first {
            LinkTo::Restored(fi) if damaged(&files[*fi].0) => result.errors.push(FileError {
                path: e.rel.display().to_string(),
                error: "hard link to a damaged file".into(),
            }),
            _ => result.files_restored += 1,
        }
    }
    for e in entries {
        if in_bad_dir(&e.rel) {
            continue;
        }
        match e.node.kind {
            NodeKind::Dir if !bad_dirs.contains(&e.rel) => result.dirs += 1,
            NodeKind::Symlink | NodeKind::Fifo | NodeKind::BlockDev | NodeKind::CharDev => {
                if keeps_existing(&target.join(&e.rel), &e.node, overwrite) {
                    result.files_kept += 1;
                } else if owners || matches!(e.node.kind, NodeKind::Symlink | NodeKind::Fifo) {
                    result.others += 1;
                }
            }
            _ => {}
        }
    }
    result.dry_run = true;
    result.damaged_blobs.sort();
    result.damaged_blobs.dedup();
    result
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".cadang-restore");
    path.with_file_name(name)
}

/// Set access and modification time without following a symlink and without
/// opening the file (opening a FIFO would block).
fn set_times(path: &Path, mtime_ns: i64) -> std::io::Result<()> {
    let t = file_time(mtime_ns);
    filetime::set_symlink_file_times(path, t, t)
}

/// A recorded mtime (nanoseconds since the epoch, negative before it) as a file time.
#[must_use]
pub fn file_time(mtime_ns: i64) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(
        mtime_ns.div_euclid(1_000_000_000),
        mtime_ns.rem_euclid(1_000_000_000) as u32,
    )
}

fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Create the temporary file `tmp` (never through a symlink). A file left there by
/// an interrupted restore is replaced.
fn create_tmp(tmp: &Path) -> std::io::Result<std::fs::File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(tmp)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(tmp)?;
            open()
        }
        other => other,
    }
}

/// Owner (when root), mode and times of a written file, through its descriptor.
fn finish_file(f: &std::fs::File, node: &Node, owners: bool) -> std::io::Result<()> {
    if owners {
        std::os::unix::fs::fchown(f, Some(node.uid), Some(node.gid))?;
    }
    // After the owner (which clears a file capability), before the mode.
    super::xattrs::restore_file(f, &node.xattrs, owners)?;
    f.set_permissions(std::fs::Permissions::from_mode(node.mode & 0o7777))?;
    let t = file_time(node.mtime_ns);
    filetime::set_file_handle_times(f, Some(t), Some(t))
}

/// Rename a finished temporary file to its place. A rename replaces a symlink or a
/// file found there and refuses a directory.
fn place(tmp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp, path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::IsADirectory {
            std::io::Error::other("a directory is in the way")
        } else {
            e
        }
    })
}

/// Restore snapshot `id` according to `opts`.
///
/// # Errors
/// `InvalidInput` for an unusable target, storage errors while loading the
/// snapshot or index, `Cancelled`. Damage is not an error: it is reported in
/// the result, and the result is then not a success.
pub fn restore(
    repo: &Repository,
    id: &SnapshotId,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreResult> {
    let (snap, repaired) = load_snapshot_with_fallback(repo, id, opts.replica.as_deref())?;
    let (index, _) = repo.load_index_for(&snap)?;
    let mut result = restore_tree(repo, &index, &snap.tree, &snap.paths, opts, progress)?;
    if let Some(r) = repaired {
        result.repaired.insert(0, r);
    }
    Ok(result)
}

/// Restore from a root tree with a given index of `repo` (and the replica
/// given in `opts`, if any, for what `repo` cannot give). `backed_up` are the paths the
/// tree was made of (a snapshot's `paths`): `--delete` acts only at and below them.
///
/// # Errors
/// As [`restore`]; `InvalidInput` when the replica does not share `repo`'s
/// keys.
pub fn restore_tree(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    backed_up: &[String],
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreResult> {
    if let Some(r) = &opts.replica
        && !r.shares_keys_with(repo)
    {
        return Err(Error::InvalidInput(
            "the replica does not share the repository's keys (it must be made with init --from-repo)"
                .into(),
        ));
    }
    let chosen = Chosen::new(&opts.includes, &opts.excludes)?;
    let sources = Sources {
        repo,
        index,
        replica: opts.replica.as_deref(),
        repaired: Mutex::new(Vec::new()),
    };
    let pool = super::worker_pool("cadang-restore", opts.threads, 2)?;
    let collected = pool.install(|| collect(&sources, root, Path::new(""), &chosen, 1));
    // A path asked for that the snapshot does not hold is a mistake (a typo, the wrong
    // snapshot), not a restore of nothing that succeeds; unless a directory on its way
    // could not be read, which is reported as damage below.
    if collected.errors.is_empty()
        && let Some(missing) = chosen
            .includes
            .iter()
            .find(|inc| !collected.entries.iter().any(|e| e.rel.starts_with(inc)))
    {
        return Err(Error::InvalidInput(format!(
            "/{} is not in the snapshot",
            missing.display()
        )));
    }
    let target = &opts.target;
    let not_a_directory =
        || Error::InvalidInput(format!("target {} is not a directory", target.display()));
    if std::fs::symlink_metadata(target).is_ok_and(|m| !m.is_dir()) {
        return Err(not_a_directory());
    }
    if !opts.dry_run {
        std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
        if !std::fs::symlink_metadata(target)
            .map_err(|e| Error::io(target, e))?
            .is_dir()
        {
            return Err(not_a_directory());
        }
    }
    let mut result = RestoreResult::default();
    let entries = collected.entries;
    result.errors = collected.errors;
    result.damaged_blobs = collected.damaged;
    let owners = is_root();
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };

    // 1. Directories, parents first (entries are in tree order); with --delete, each
    // loses what the snapshot does not hold before anything is written into it.
    let replaces =
        opts.delete && matches!(opts.overwrite, Overwrite::Always | Overwrite::IfChanged);
    let mut cleaner = opts
        .delete
        .then(|| Cleaner::new(&entries, &collected.unlisted, backed_up));
    if let Some(c) = &mut cleaner {
        c.clean(target, Path::new(""), &chosen, replaces, opts.dry_run);
    }
    let mut bad_dirs: Vec<PathBuf> = Vec::new();
    for e in entries.iter().filter(|e| e.node.kind == NodeKind::Dir) {
        if bad_dirs.iter().any(|b| e.rel.starts_with(b)) {
            continue;
        }
        let path = target.join(&e.rel);
        // Above the backed-up paths nothing is replaced: a link there (`/srv` to another
        // volume) is the server's own.
        let replace = replaces && cleaner.as_ref().is_some_and(|c| c.covers(&e.rel));
        match ensure_dir(&path, replace, opts.dry_run) {
            Err(err) => {
                result.errors.push(FileError {
                    path: e.rel.display().to_string(),
                    error: err.to_string(),
                });
                bad_dirs.push(e.rel.clone());
            }
            Ok(replaced) => {
                if let Some(c) = &mut cleaner {
                    if replaced {
                        c.deleted.push(e.rel.display().to_string());
                    }
                    c.clean(target, &e.rel, &chosen, replaces, opts.dry_run);
                }
            }
        }
    }
    if let Some(c) = cleaner {
        result.deleted = c.deleted;
        result.errors.extend(c.errors);
    }
    let in_bad_dir = |rel: &Path| bad_dirs.iter().any(|b| rel.starts_with(b) && rel != b);

    // 2. What is already at the target: files kept as they are, files whose content
    // is already the snapshot's, and the rest, to restore.
    let candidates: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.node.kind == NodeKind::File && !in_bad_dir(&e.rel))
        .collect();
    progress
        .total_files
        .store(candidates.len() as u64, Ordering::Relaxed);
    progress.total_bytes.store(
        candidates.iter().map(|e| e.node.size).sum(),
        Ordering::Relaxed,
    );
    let decisions: Vec<Existing> = pool.install(|| {
        candidates
            .par_iter()
            .map(|e| {
                if cancelled() {
                    return Existing::Replace;
                }
                let decision = existing_file(&sources, &target.join(&e.rel), &e.node, opts, owners);
                if matches!(decision, Existing::Kept | Existing::Unchanged) {
                    progress.files_done.fetch_add(1, Ordering::Relaxed);
                    if decision == Existing::Unchanged {
                        progress
                            .bytes_done
                            .fetch_add(e.node.size, Ordering::Relaxed);
                    }
                }
                decision
            })
            .collect()
    });
    if cancelled() {
        return Err(Error::Cancelled);
    }

    // Plan file content: blob -> destinations, grouped by pack.
    let mut files: Vec<(FileState, &Node)> = Vec::new();
    let mut kept: std::collections::HashSet<&Path> = std::collections::HashSet::new();
    let mut hardlink_first: HashMap<u64, LinkTo<'_>> = HashMap::new();
    let mut hardlink_rest: Vec<(LinkTo<'_>, &Entry)> = Vec::new();
    for (e, decision) in candidates.into_iter().zip(decisions) {
        if decision == Existing::Kept {
            result.files_kept += 1;
            kept.insert(&e.rel);
            continue;
        }
        if let Some(h) = e.node.hardlink {
            if let Some(first) = hardlink_first.get(&h)
                && first.node(&files).content == e.node.content
            {
                if matches!(decision, Existing::Replace | Existing::Partial(_)) {
                    // Linked once its first path is in place: nothing to count later.
                    progress.files_done.fetch_add(1, Ordering::Relaxed);
                }
                hardlink_rest.push((first.clone(), e));
                continue;
            }
            hardlink_first.insert(
                h,
                if decision == Existing::Unchanged {
                    LinkTo::InPlace(e)
                } else {
                    LinkTo::Restored(files.len())
                },
            );
        }
        if decision == Existing::Unchanged {
            result.files_unchanged += 1;
            result.bytes_unchanged += e.node.size;
            continue;
        }
        let path = target.join(&e.rel);
        files.push((
            FileState {
                rel: e.rel.clone(),
                tmp: tmp_name(&path),
                damaged: AtomicBool::new(false),
                error: Mutex::new(None),
                whole: e.node.content.len() <= 1,
                placed: AtomicBool::new(false),
                reuse: match decision {
                    Existing::Partial(bitmap) => bitmap,
                    _ => Vec::new(),
                },
                reused: AtomicU64::new(0),
            },
            &e.node,
        ));
    }

    let mut by_pack: HashMap<PackId, HashMap<BlobId, Vec<(usize, u64)>>> = HashMap::new();
    // Blobs the primary's index lacks but the replica holds.
    let mut replica_only: BlobDestinations = HashMap::new();
    // Chunks copied from the files already at their places: by file, offset and length.
    let mut local: HashMap<usize, Vec<(BlobId, u64, u32)>> = HashMap::new();
    for (fi, (fs, node)) in files.iter().enumerate() {
        let mut off = 0u64;
        let mut ok = true;
        for (i, c) in node.content.iter().enumerate() {
            let in_replica = sources
                .replica
                .and_then(|r| r.index.get(c))
                .filter(|(_, l)| l.ty == BlobType::Data);
            match (index.get(c), in_replica) {
                (Some((_, loc)), _) | (_, Some((_, loc)))
                    if loc.ty == BlobType::Data && is_held(&fs.reuse, i) =>
                {
                    local.entry(fi).or_default().push((*c, off, loc.raw_length));
                    off += loc.raw_length as u64;
                }
                (Some((pack, loc)), _) if loc.ty == BlobType::Data => {
                    by_pack
                        .entry(pack)
                        .or_default()
                        .entry(*c)
                        .or_default()
                        .push((fi, off));
                    off += loc.raw_length as u64;
                }
                (_, Some((_, loc))) => {
                    replica_only.entry(*c).or_default().push((fi, off));
                    off += loc.raw_length as u64;
                }
                _ => {
                    ok = false;
                    result
                        .damaged_blobs
                        .push(format!("data blob {} (not in the index)", c.short()));
                    *fs.error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(format!(
                        "chunk {} is missing from the repository",
                        c.short()
                    ));
                }
            }
        }
        if ok && off != node.size {
            ok = false;
            *fs.error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(format!(
                "chunks add up to {off} bytes but the file is recorded as {} bytes",
                node.size
            ));
        }
        if !ok {
            fs.damaged.store(true, Ordering::Relaxed);
        }
    }

    if opts.dry_run {
        return Ok(dry_run_result(
            result,
            &files,
            &hardlink_rest,
            &entries,
            &in_bad_dir,
            &bad_dirs,
            target,
            opts.overwrite,
            owners,
        ));
    }

    let behind = WriteBehind::start()
        .map_err(|e| Error::InvalidInput(format!("cannot start the write-behind thread: {e}")))?;
    let outputs = Outputs {
        files: &files,
        target,
        owners,
        progress,
        behind: &behind,
    };
    // Create the temporary files of several chunks at their final size (holes stay
    // holes); empty files are finished here.
    pool.install(|| {
        files.par_iter().enumerate().for_each(|(fi, (fs, node))| {
            if fs.damaged.load(Ordering::Relaxed) {
                return;
            }
            if fs.whole {
                if node.content.is_empty() {
                    write_whole(fi, &[], &outputs);
                }
                return;
            }
            let created = create_tmp(&fs.tmp).and_then(|f| f.set_len(node.size).map(|()| f));
            match created {
                Ok(f) => {
                    if let Some(chunks) = local.get(&fi) {
                        copy_held(fi, &f, chunks, &outputs, sources.repo.keys().id_keys());
                    }
                }
                Err(e) => {
                    fs.damaged.store(true, Ordering::Relaxed);
                    *fs.error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(format!("cannot create: {e}"));
                }
            }
        })
    });

    // 3. Read each pack once and write its blobs everywhere they go.
    let damaged_blobs = Mutex::new(Vec::new());
    let packs: Vec<(PackId, BlobDestinations)> = by_pack.into_iter().collect();
    pool.install(|| {
        packs.par_iter().for_each(|(pack, blobs)| {
            if cancelled() {
                return;
            }
            restore_pack(&sources, pack, blobs, &outputs, &damaged_blobs);
        });
        let only: Vec<(&BlobId, &Vec<(usize, u64)>)> = replica_only.iter().collect();
        only.par_iter().for_each(|(id, dests)| {
            if cancelled()
                || dests
                    .iter()
                    .all(|(fi, _)| files[*fi].0.damaged.load(Ordering::Relaxed))
            {
                return;
            }
            let missing = Error::MissingObject {
                what: format!("data blob {} (not in the index)", id.short()),
            };
            match sources.fallback(BlobType::Data, id, &missing) {
                Ok(data) => write_blob(&data, dests, &outputs),
                Err(e) => {
                    damaged_blobs
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(format!("data blob {}: {e}", id.short()));
                    mark_damaged(id, &e, dests, &files);
                }
            }
        });
    });
    // Everything written is on disk (or refused) before a file is called restored.
    let refused = behind.finish().unwrap_or_else(|error| {
        // What reached the disk is unknown: no file is called restored.
        (0..files.len()).map(|fi| (fi, error.clone())).collect()
    });
    for (fi, error) in refused {
        let refused = format!("the disk refused the write: {error}");
        let Some((fs, _)) = files.get(fi) else {
            continue;
        };
        fs.damaged.store(true, Ordering::Relaxed);
        fs.error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(refused);
    }
    if cancelled() {
        for (fs, _) in &files {
            let _ = std::fs::remove_file(&fs.tmp);
        }
        return Err(Error::Cancelled);
    }
    result.damaged_blobs.extend(
        damaged_blobs
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );

    // 4. Put files in place with their metadata (in parallel: each file is
    // independent, and on many small files this is mostly system calls).
    let result_bytes_reused = AtomicU64::new(0);
    let placed: Vec<std::result::Result<u64, FileError>> = pool.install(|| {
        files
            .par_iter()
            .map(|(fs, node)| {
                let err = |e: String| FileError {
                    path: fs.rel.display().to_string(),
                    error: e,
                };
                if fs.damaged.load(Ordering::Relaxed) {
                    let _ = std::fs::remove_file(&fs.tmp);
                    if fs.placed.load(Ordering::Relaxed) {
                        // A whole file whose write the disk refused after it was placed.
                        let _ = std::fs::remove_file(target.join(&fs.rel));
                    }
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    return Err(err(fs
                        .error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone()
                        .unwrap_or_else(|| "damaged".into())));
                }
                if fs.whole {
                    // Finished when its chunk was written (damage is handled above).
                    return if fs.placed.load(Ordering::Relaxed) {
                        Ok(node.size)
                    } else {
                        let _ = std::fs::remove_file(&fs.tmp);
                        Err(err("its content was never written".into()))
                    };
                }
                let final_path = target.join(&fs.rel);
                let r = (|| -> std::io::Result<()> {
                    // One descriptor of the restore's own temporary file (never through a
                    // symlink) serves the cache drop and the metadata.
                    let f = OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&fs.tmp)?;
                    // Its ranges are on disk and were dropped one by one; the pages two
                    // neighbouring chunks share, and any the kernel held busy when its
                    // range was dropped, go now that nothing writes the file any more.
                    // Failing to drop them only leaves them cached.
                    let _ = super::writebehind::drop_cached(&f, 0, 0);
                    finish_file(&f, node, owners)?;
                    drop(f);
                    place(&fs.tmp, &final_path)
                })();
                match r {
                    Ok(()) => {
                        progress.files_done.fetch_add(1, Ordering::Relaxed);
                        result_bytes_reused
                            .fetch_add(fs.reused.load(Ordering::Relaxed), Ordering::Relaxed);
                        Ok(node.size)
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&fs.tmp);
                        Err(err(e.to_string()))
                    }
                }
            })
            .collect()
    });
    for p in placed {
        match p {
            Ok(size) => {
                result.files_restored += 1;
                result.bytes_restored += size;
            }
            Err(e) => result.errors.push(e),
        }
    }
    result.bytes_reused = result_bytes_reused.into_inner();
    for (first, e) in &hardlink_rest {
        let first_rel = match first {
            LinkTo::Restored(fi) => {
                let (fs, _) = &files[*fi];
                if fs.damaged.load(Ordering::Relaxed) {
                    result.errors.push(FileError {
                        path: e.rel.display().to_string(),
                        error: "hard link to a damaged file".into(),
                    });
                    continue;
                }
                &fs.rel
            }
            LinkTo::InPlace(first) => &first.rel,
        };
        let first_path = target.join(first_rel);
        let dst = target.join(&e.rel);
        if same_file(&first_path, &dst) {
            // Already another link to the file the snapshot's content is in.
            result.files_unchanged += 1;
            result.bytes_unchanged += e.node.size;
            continue;
        }
        let linked = (|| {
            if let Ok(m) = std::fs::symlink_metadata(&dst) {
                if m.is_dir() {
                    return Err(std::io::Error::other("a directory is in the way"));
                }
                std::fs::remove_file(&dst)?;
            }
            std::fs::hard_link(&first_path, &dst)
        })();
        match linked {
            Ok(()) => result.files_restored += 1,
            Err(err) => result.errors.push(FileError {
                path: e.rel.display().to_string(),
                error: err.to_string(),
            }),
        }
    }

    // 5. Symlinks and special files, after every file write.
    for e in entries
        .iter()
        .filter(|e| !matches!(e.node.kind, NodeKind::File | NodeKind::Dir))
    {
        if in_bad_dir(&e.rel) {
            continue;
        }
        let path = target.join(&e.rel);
        if keeps_existing(&path, &e.node, opts.overwrite) {
            result.files_kept += 1;
            kept.insert(&e.rel);
            continue;
        }
        let res = restore_special(&path, &e.node, owners);
        match res {
            Ok(true) => result.others += 1,
            Ok(false) => {}
            Err(err) => result.errors.push(FileError {
                path: e.rel.display().to_string(),
                error: err.to_string(),
            }),
        }
    }

    // 6. Directory metadata, deepest first (writing inside a directory
    // changes its mtime).
    for e in entries
        .iter()
        .rev()
        .filter(|e| e.node.kind == NodeKind::Dir)
    {
        if in_bad_dir(&e.rel) || bad_dirs.contains(&e.rel) {
            continue;
        }
        let path = target.join(&e.rel);
        let r = (|| -> std::io::Result<()> {
            if owners {
                chown(&path, e.node.uid, e.node.gid)?;
            }
            super::xattrs::restore_path(&path, &e.node.xattrs, owners)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.node.mode & 0o7777))?;
            set_times(&path, e.node.mtime_ns)
        })();
        match r {
            Ok(()) => result.dirs += 1,
            Err(err) => result.errors.push(FileError {
                path: e.rel.display().to_string(),
                error: err.to_string(),
            }),
        }
    }

    if opts.verify {
        let report = pool.install(|| verify_entries(&sources, target, &entries, &kept));
        result.verify = Some(report);
    }
    result.damaged_blobs.sort();
    result.damaged_blobs.dedup();
    result.repaired = sources
        .repaired
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    result.repaired.sort();
    result.repaired.dedup();
    Ok(result)
}

fn restore_special(path: &Path, node: &Node, owners: bool) -> std::io::Result<bool> {
    let tmp = tmp_name(path);
    let _ = std::fs::remove_file(&tmp);
    let made = match node.kind {
        NodeKind::Symlink => {
            let target = node.link_target.as_deref().unwrap_or_default();
            std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp)?;
            true
        }
        NodeKind::Fifo => {
            mknod(&tmp, libc::S_IFIFO | (node.mode & 0o7777), 0)?;
            true
        }
        NodeKind::BlockDev | NodeKind::CharDev if owners => {
            let ty = if node.kind == NodeKind::BlockDev {
                libc::S_IFBLK
            } else {
                libc::S_IFCHR
            };
            mknod(&tmp, ty | (node.mode & 0o7777), node.rdev)?;
            true
        }
        // Devices need root; sockets are recreated by their servers.
        _ => return Ok(false),
    };
    if made {
        if let Ok(m) = std::fs::symlink_metadata(path)
            && m.is_dir()
        {
            let _ = std::fs::remove_file(&tmp);
            return Err(std::io::Error::other("a directory is in the way"));
        }
        if owners {
            chown(&tmp, node.uid, node.gid)?;
        }
        super::xattrs::restore_path(&tmp, &node.xattrs, owners)?;
        if node.kind != NodeKind::Symlink {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(node.mode & 0o7777))?;
        }
        set_times(&tmp, node.mtime_ns)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(made)
}

fn mknod(path: &Path, mode: u32, dev: u64) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let r = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn restore_pack(
    sources: &Sources<'_>,
    pack: &PackId,
    blobs: &BlobDestinations,
    out: &Outputs<'_>,
    damaged: &Mutex<Vec<String>>,
) {
    let files = out.files;
    let (repo, index) = (sources.repo, sources.index);
    let mut wanted: Vec<(BlobId, super::index::Location)> = blobs
        .keys()
        .filter_map(|b| index.get(b).map(|(_, l)| (*b, l)))
        .collect();
    wanted.sort_by_key(|(_, l)| l.offset);
    let key = pack_key(pack);
    let needed: u64 = wanted.iter().map(|(_, l)| l.length as u64).sum();
    let span = wanted
        .last()
        .map(|(_, l)| l.offset as u64 + l.length as u64)
        .unwrap_or(0);
    // One read of the pack when most of it is needed; ranges otherwise.
    let whole = if needed * 2 >= span {
        repo.block_on(repo.store().get_range(&key, 0..span)).ok()
    } else {
        None
    };
    // The pack's blobs are shared out among the workers too: packs differ in cost
    // (text to decompress, or raw data), and the last pack must not leave all but one
    // worker idle.
    wanted.par_iter().for_each(|(id, loc)| {
        let Some(dests) = blobs.get(id) else {
            return;
        };
        // Skip blobs whose every destination is already known damaged.
        if dests
            .iter()
            .all(|(fi, _)| files[*fi].0.damaged.load(Ordering::Relaxed))
        {
            return;
        }
        // Verified straight out of the pack read, through this thread's
        // buffers, and written.
        let written = whole.as_ref().and_then(|w| {
            let env = w.get(loc.offset as usize..loc.offset as usize + loc.length as usize)?;
            with_blob(repo.keys(), BlobType::Data, id, loc.raw_length, env, |d| {
                write_blob(d, dests, out);
            })
            .ok()
        });
        if written.is_some() {
            return;
        }
        // Fall back to the repository's verified read with retries, then to
        // the replica.
        let data = match repo.load_blob(index, BlobType::Data, id) {
            Ok(d) => Ok(d),
            Err(e) => sources.fallback(BlobType::Data, id, &e),
        };
        match data {
            Ok(d) => write_blob(&d, dests, out),
            Err(e) => {
                damaged
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(format!(
                        "data blob {} in pack {}: {e}",
                        id.short(),
                        pack.short()
                    ));
                mark_damaged(id, &e, dests, files);
            }
        }
    });
}

/// Mark every file that needs blob `id` as damaged.
fn mark_damaged(id: &BlobId, error: &str, dests: &[(usize, u64)], files: &[(FileState, &Node)]) {
    for (fi, _) in dests {
        let fs = &files[*fi].0;
        fs.damaged.store(true, Ordering::Relaxed);
        fs.error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(|| format!("chunk {} is damaged: {error}", id.short()));
    }
}

/// Write a verified blob's plaintext to every file offset that needs it.
fn write_blob(data: &[u8], dests: &[(usize, u64)], out: &Outputs<'_>) {
    let progress = out.progress;
    for (fi, off) in dests {
        let (fs, _) = &out.files[*fi];
        if fs.damaged.load(Ordering::Relaxed) {
            continue;
        }
        if fs.whole {
            write_whole(*fi, data, out);
            continue;
        }
        let w = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&fs.tmp)
            .and_then(|f| write_sparse(&f, data, *off).map(|_| f));
        let f = match w {
            Ok(f) => f,
            Err(e) => {
                fs.damaged.store(true, Ordering::Relaxed);
                fs.error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert_with(|| format!("write failed: {e}"));
                continue;
            }
        };
        out.behind.written(f, *off, data.len() as u64, *fi);
        progress
            .bytes_done
            .fetch_add(data.len() as u64, Ordering::Relaxed);
    }
}

/// Copies into the new file `f` of file `fi` the chunks the file already at its place
/// holds (`chunks`: id, offset and length), each read and checked against its id; one
/// that no longer matches (the file changed since it was read) fails the file.
fn copy_held(
    fi: usize,
    f: &std::fs::File,
    chunks: &[(BlobId, u64, u32)],
    out: &Outputs<'_>,
    keys: &IdKeys,
) {
    let (fs, _) = &out.files[fi];
    let copied = (|| -> std::result::Result<u64, String> {
        let old = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(out.target.join(&fs.rel))
            .map_err(|e| format!("cannot read the file there to copy from: {e}"))?;
        let mut buf = Vec::new();
        let mut bytes = 0;
        for (id, off, length) in chunks {
            buf.resize(*length as usize, 0);
            read_exact_sparse(&old, &mut buf, *off)
                .map_err(|e| format!("cannot read the file there to copy from: {e}"))?;
            if keys.blob_id(&buf) != *id {
                return Err(format!(
                    "chunk {} changed in the target during the restore; restore it again",
                    id.short()
                ));
            }
            write_sparse(f, &buf, *off).map_err(|e| format!("write failed: {e}"))?;
            if let Ok(dup) = f.try_clone() {
                out.behind.written(dup, *off, u64::from(*length), fi);
            }
            out.progress
                .bytes_done
                .fetch_add(u64::from(*length), Ordering::Relaxed);
            bytes += u64::from(*length);
        }
        let _ = super::writebehind::drop_cached(&old, 0, 0);
        Ok(bytes)
    })();
    match copied {
        Ok(bytes) => fs.reused.store(bytes, Ordering::Relaxed),
        Err(e) => {
            fs.damaged.store(true, Ordering::Relaxed);
            fs.error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_or_insert(e);
        }
    }
}

/// Create a file of at most one chunk from its verified content, finish its metadata
/// and rename it into place; a failure marks it damaged and leaves nothing behind.
fn write_whole(fi: usize, data: &[u8], out: &Outputs<'_>) {
    let (fs, node) = &out.files[fi];
    let done = (|| -> std::io::Result<std::fs::File> {
        let f = create_tmp(&fs.tmp)?;
        if write_sparse(&f, data, 0)? < node.size {
            // Ends in zeros: the hole runs to the recorded size.
            f.set_len(node.size)?;
        }
        finish_file(&f, node, out.owners)?;
        place(&fs.tmp, &out.target.join(&fs.rel))?;
        Ok(f)
    })();
    match done {
        Ok(f) => {
            fs.placed.store(true, Ordering::Relaxed);
            out.behind.written(f, 0, data.len() as u64, fi);
            out.progress
                .bytes_done
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            out.progress.files_done.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&fs.tmp);
            fs.damaged.store(true, Ordering::Relaxed);
            fs.error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_or_insert_with(|| format!("write failed: {e}"));
        }
    }
}

/// Write `data` at `off`, leaving 4 KiB blocks of zeros unwritten so they
/// stay holes in the (pre-sized) file: sparse files restore sparse, and
/// zero runs cost no disk. Returns the end of the last byte written (`off`
/// when nothing was).
pub(crate) fn write_sparse(f: &std::fs::File, data: &[u8], off: u64) -> std::io::Result<u64> {
    const BLOCK: usize = 4096;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut start: Option<usize> = None;
    let mut written = off;
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + BLOCK).min(data.len());
        // Slice equality compiles to memcmp, which is vectorised.
        let zero = data[pos..end] == ZEROS[..end - pos];
        match (zero, start) {
            (false, None) => start = Some(pos),
            (true, Some(s)) => {
                f.write_all_at(&data[s..pos], off + s as u64)?;
                written = off + pos as u64;
                start = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(s) = start {
        f.write_all_at(&data[s..], off + s as u64)?;
        written = off + data.len() as u64;
    }
    Ok(written)
}

/// Reads exactly `buf.len()` bytes at `off` of `f`, as `read_exact_at` does, but the
/// file's holes are filled with zeros here instead of read: the kernel reads a hole by
/// allocating page-cache pages and zeroing them one by one, which made reading back a
/// thin VM image's zero runs cost more than its data (7% of a restore's CPU through the
/// agent). Data and holes are told apart with `SEEK_DATA` and `SEEK_HOLE`; where the
/// file system cannot tell, everything is read.
pub(crate) fn read_exact_sparse(
    f: &std::fs::File,
    buf: &mut [u8],
    off: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // Where the next region of `whence` (data or hole) starts, at `pos` or after it;
    // `None` when the file system does not say (it is then read as data).
    let seek = |pos: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        let at = libc::off_t::try_from(pos).map_err(std::io::Error::other)?;
        // SAFETY: lseek on a descriptor `f` keeps open; it moves only the shared file
        // offset, which no caller uses (every read and write here is positional).
        let found = unsafe { libc::lseek(f.as_raw_fd(), at, whence) };
        if found >= 0 {
            return Ok(Some(found as u64));
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            // No data at or after `pos`: the rest is a hole.
            Some(libc::ENXIO) if whence == libc::SEEK_DATA => Ok(Some(u64::MAX)),
            Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(None),
            _ => Err(error),
        }
    };
    let end = off + buf.len() as u64;
    let mut pos = off;
    while pos < end {
        let data = match seek(pos, libc::SEEK_DATA)? {
            // Nothing but hole from `pos` to the end of the file: zeros, if the file
            // reaches `end` at all.
            Some(u64::MAX) => {
                if f.metadata()?.len() < end {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                end
            }
            Some(data) => data.clamp(pos, end),
            None => pos,
        };
        buf[(pos - off) as usize..(data - off) as usize].fill(0);
        pos = data;
        if pos == end {
            break;
        }
        let hole = match seek(pos, libc::SEEK_HOLE)? {
            Some(hole) if hole > pos => hole.min(end),
            _ => end,
        };
        f.read_exact_at(&mut buf[(pos - off) as usize..(hole - off) as usize], pos)?;
        pos = hole;
    }
    Ok(())
}

/// Re-read restored entries under `target` and compare them with the
/// snapshot: file content chunk by chunk (keyed ids), sizes, symlink targets
/// and entry types.
fn verify_entries(
    sources: &Sources<'_>,
    target: &Path,
    entries: &[Entry],
    kept: &std::collections::HashSet<&Path>,
) -> VerifyReport {
    let results: Vec<(u64, Option<FileError>)> = entries
        .par_iter()
        .filter(|e| {
            matches!(
                e.node.kind,
                NodeKind::File | NodeKind::Symlink | NodeKind::Dir
            ) && !kept.contains(e.rel.as_path())
        })
        .map(|e| {
            let path = target.join(&e.rel);
            let r = verify_one(sources, &path, &e.node);
            match r {
                Ok(n) => (n, None),
                Err(msg) => (
                    0,
                    Some(FileError {
                        path: e.rel.display().to_string(),
                        error: msg,
                    }),
                ),
            }
        })
        .collect();
    let mut rep = VerifyReport::default();
    for (n, err) in results {
        rep.files_checked += 1;
        rep.bytes_checked += n;
        if let Some(e) = err {
            rep.mismatches.push(e);
        }
    }
    rep.mismatches.sort_by(|a, b| a.path.cmp(&b.path));
    rep
}

fn verify_one(sources: &Sources<'_>, path: &Path, node: &Node) -> std::result::Result<u64, String> {
    let m = std::fs::symlink_metadata(path).map_err(|e| format!("missing after restore: {e}"))?;
    if let Some(difference) = super::xattrs::difference(path, &node.xattrs, is_root()) {
        return Err(difference);
    }
    match node.kind {
        NodeKind::Dir => {
            if !m.is_dir() {
                return Err("is not a directory".into());
            }
            Ok(0)
        }
        NodeKind::Symlink => {
            if !m.file_type().is_symlink() {
                return Err("is not a symbolic link".into());
            }
            let t = std::fs::read_link(path).map_err(|e| e.to_string())?;
            if Some(t.as_os_str().as_bytes()) != node.link_target.as_deref() {
                return Err("symbolic link target differs".into());
            }
            Ok(0)
        }
        _ => {
            if !m.is_file() {
                return Err("is not a regular file".into());
            }
            if m.len() != node.size {
                return Err(format!(
                    "size {} differs from the snapshot's {}",
                    m.len(),
                    node.size
                ));
            }
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| e.to_string())?;
            compare_content(sources, &f, node)?;
            Ok(node.size)
        }
    }
}

/// Reads the open regular file `f` chunk by chunk and compares it with `node`'s
/// content by keyed id; then drops what it read from the page cache.
fn compare_content(
    sources: &Sources<'_>,
    f: &std::fs::File,
    node: &Node,
) -> std::result::Result<(), String> {
    let mut buf = Vec::new();
    let mut at = 0u64;
    for (i, c) in node.content.iter().enumerate() {
        let len = sources
            .raw_length(c)
            .map(|l| l as usize)
            .ok_or_else(|| format!("chunk {} unknown to the index", c.short()))?;
        buf.resize(len, 0);
        read_exact_sparse(f, &mut buf, at).map_err(|e| format!("read failed at chunk {i}: {e}"))?;
        at += len as u64;
        if sources.repo.keys().blob_id(&buf) != *c {
            return Err(format!("content differs from the snapshot in chunk {i}"));
        }
    }
    let mut extra = [0u8; 1];
    if f.read_at(&mut extra, at).map_err(|e| e.to_string())? != 0 {
        return Err("file is longer than in the snapshot".into());
    }
    // Read once to check it, not to be read again from memory.
    let _ = super::writebehind::drop_cached(f, 0, 0);
    Ok(())
}

/// Verify an already restored target against a snapshot without writing
/// anything (the answer to "did the restore succeed?").
///
/// # Errors
/// Storage errors loading the snapshot or index.
pub fn verify_target(
    repo: &Repository,
    id: &SnapshotId,
    target: &Path,
    includes: &[String],
) -> Result<VerifyReport> {
    let snap = repo.load_snapshot(id)?;
    let (index, _) = repo.load_index_for(&snap)?;
    let chosen = Chosen::new(includes, &[])?;
    let sources = Sources {
        repo,
        index: &index,
        replica: None,
        repaired: Mutex::new(Vec::new()),
    };
    let pool = super::worker_pool("cadang-verify", None, 2)?;
    let collected = pool.install(|| collect(&sources, &snap.tree, Path::new(""), &chosen, 1));
    let mut rep = pool.install(|| {
        verify_entries(
            &sources,
            target,
            &collected.entries,
            &std::collections::HashSet::new(),
        )
    });
    rep.mismatches.extend(collected.errors);
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::{read_exact_sparse, write_sparse};
    use crate::engine::writebehind::tests::{cached_pages, on_tmpfs};

    /// A new file at `path`, `size` bytes of hole, open for reading and writing.
    fn hole_of(path: &std::path::Path, size: u64) -> std::fs::File {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        file.set_len(size).unwrap();
        file
    }

    /// A file of `size` bytes written with `write_sparse`: data blocks, zero blocks and
    /// unaligned runs of both, so its holes fall at 4 KiB boundaries only.
    fn sparse_file(dir: &std::path::Path, size: usize) -> (std::fs::File, Vec<u8>) {
        let file = hole_of(&dir.join("sparse"), size as u64);
        let mut content = vec![0u8; size];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut at = 0;
        while at < size {
            let run = (next() % 40_000) as usize + 1;
            let end = (at + run).min(size);
            if next() % 3 == 0 {
                for byte in &mut content[at..end] {
                    *byte = (next() % 255 + 1) as u8;
                }
            }
            at = end;
        }
        write_sparse(&file, &content, 0).unwrap();
        (file, content)
    }

    #[test]
    fn sparse_reads_give_what_plain_reads_give_for_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let (file, content) = sparse_file(dir.path(), 3 << 20);
        let mut x = 88_172_645_463_325_252u64;
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let start = (x % content.len() as u64) as usize;
            let len = ((x >> 32) % (content.len() - start) as u64) as usize + 1;
            let mut sparse = vec![0xAAu8; len];
            read_exact_sparse(&file, &mut sparse, start as u64).unwrap();
            let mut plain = vec![0x55u8; len];
            file.read_exact_at(&mut plain, start as u64).unwrap();
            assert!(sparse == plain, "range {start}+{len}");
            assert!(sparse == content[start..start + len], "range {start}+{len}");
        }
        // Past the end is an error, as with a plain read.
        let mut beyond = vec![0u8; 10];
        assert!(read_exact_sparse(&file, &mut beyond, content.len() as u64 - 5).is_err());
    }

    #[test]
    fn holes_are_not_read_into_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        if on_tmpfs(dir.path()) {
            return;
        }
        let path = dir.path().join("thin.img");
        let file = hole_of(&path, 64 << 20);
        file.write_all_at(b"start", 0).unwrap();
        file.write_all_at(b"end", (64 << 20) - 3).unwrap();
        file.sync_all().unwrap();
        crate::engine::writebehind::drop_cached(&file, 0, 0).unwrap();
        let mut buf = vec![0u8; 64 << 20];
        read_exact_sparse(&file, &mut buf, 0).unwrap();
        assert_eq!(&buf[..5], b"start");
        assert_eq!(&buf[buf.len() - 3..], b"end");
        assert!(buf[5..buf.len() - 3].iter().all(|b| *b == 0));
        let sparse = cached_pages(&path);
        assert!(sparse < 64, "{sparse} pages cached by a sparse read");
        // A plain read of the same file caches every page of its holes.
        file.read_exact_at(&mut buf, 0).unwrap();
        let plain = cached_pages(&path);
        assert!(plain > 10_000, "{plain} pages cached by a plain read");
    }
}
