//! The agent's side of a restore: write what the daemon streams into a target directory,
//! with the engine's restore safety, and verify every file against the snapshot.
//!
//! * No escape: every path is relative, each component is checked like a tree name
//!   (no `..`, no `/`, no NUL), and every directory on the way is a real directory —
//!   a symbolic link planted inside the target is never followed.
//! * Atomic replacement: a file is written to a temporary name beside its place, each
//!   chunk read back as it is written and checked against the snapshot's id, the whole
//!   given its owner, mode and times through its descriptor, and only then renamed into
//!   place. A file that
//!   fails is removed, so an older good copy is never replaced by a bad one. A file
//!   that replaces one already there is flushed to disk before the rename, so a crash
//!   leaves the old content or the new, never an empty file.
//! * Durable before reported: new files are not flushed one by one (a flush per file
//!   cost more than writing a small file). What is written is started to disk at once
//!   and dropped from the page cache once there, on a thread of its own
//!   ([`WriteBehind`]; a write the disk refuses fails its file), and the restore ends
//!   with one flush of the target's file system, whose failure fails the restore.
//! * Directory modes and times are applied last, deepest first, so a read-only
//!   directory does not stop its own restore.
//! * Hard links come back as links: a later path of a hard-linked file whose content
//!   matches the first restored path of its group is linked to it (atomically, beside
//!   its place, then renamed); the chunks sent with it are not written again.
//! * Sparse stays sparse: 4 KiB blocks of zeros are left as holes in the new file (as
//!   the engine's restore does), so a thin VM image comes back no larger on disk than
//!   it was, and zero runs cost no writes.
//! * In place: before each batch of entries the daemon names its files
//!   ([`RestoreWriter::probe`]); a file already in the target with the snapshot's
//!   content (read and compared by chunk id, or under `if-changed` of the recorded size
//!   and time) is kept and sent no chunk, and so is what `if-newer` or `never` leaves
//!   alone. When its entry comes, a kept file that changed since it was looked at
//!   fails; one that did not is given the entry's owner, mode, attributes and times.
//!   A file that differs but still holds some of the snapshot's chunks at their offsets
//!   (a database or disk image changed in a few places, a log that grew) is answered
//!   in part: those chunks are not sent but copied from it into the new file, each
//!   checked against its id, written and read back like a received one, and the new
//!   file replaces the old one atomically as ever.
//! * Deleting what the snapshot does not hold (`RestoreJob.delete`), only in the
//!   directories the daemon marks ([`pb::RestoreEntry::clean`]: at or below the
//!   snapshot's backed-up paths, wholly restored, listed in the repository), once every
//!   entry came and before directory times are set. What the restore's exclude patterns
//!   leave out is never deleted; a link is removed, never followed, and a directory with
//!   what it holds. With `always` or `if-changed`, a directory where the snapshot has
//!   something else (or a file or link where it has a directory) is replaced.
//! * A dry run ([`RestoreWriter::new_dry_run`]) reads what the target holds and decides
//!   as a restore would, but creates, writes, changes and deletes nothing: what it
//!   would write is counted as written, what it would delete as deleted.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::engine::crypto::IdKeys;
use crate::engine::format::decode_blob_payload;
use crate::engine::restore::{
    Judged, Overwrite, is_held, mtime_ns, read_exact_sparse, write_sparse,
};
use crate::engine::tree::check_name;
use crate::engine::writebehind::WriteBehind;
use crate::rpc::pb;

/// What a finished restore reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Files written and verified.
    pub files_verified: u64,
    /// Files that failed.
    pub files_failed: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Files the target held with the snapshot's content, kept in place.
    pub files_unchanged: u64,
    /// Their bytes.
    pub bytes_unchanged: u64,
    /// Entries the target held that were left as they were (`if-newer`, `never`).
    pub files_kept: u64,
    /// Entries deleted because the snapshot does not hold them.
    pub deleted: u64,
    /// The first [`DELETED_LISTED`] of them, relative to the target.
    pub deleted_paths: Vec<String>,
    /// Bytes copied from files already in the target (included in `bytes`).
    pub bytes_reused: u64,
}

/// Deleted paths named in a restore's summary (all are logged).
pub const DELETED_LISTED: usize = 1000;

/// `--delete`: what the snapshot holds in each directory the restore cleans.
struct Deleting {
    /// Left out of the restore, so never deleted (they match paths from the root).
    excludes: globset::GlobSet,
    /// By directory (relative to the target, empty for the target itself): the names
    /// the snapshot holds there, as their entries come.
    dirs: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    /// The directories in the order they came.
    order: Vec<Vec<u8>>,
}

impl Deleting {
    fn cleans(&self, dir: &[u8]) -> bool {
        self.dirs.contains_key(dir)
    }

    fn left_out(&self, rel: &[u8]) -> bool {
        !self.excludes.is_empty()
            && self
                .excludes
                .is_match(Path::new("/").join(OsStr::from_bytes(rel)))
    }
}

/// The directory holding `rel` (empty for the target) and its name.
fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(at) => (&rel[..at], &rel[at + 1..]),
        None => (&[], rel),
    }
}

fn join_rel(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut rel = dir.to_vec();
    if !rel.is_empty() {
        rel.push(b'/');
    }
    rel.extend_from_slice(name);
    rel
}

/// A file a probe found in the target and what it said of it.
struct Found {
    verdict: Verdict,
    /// The file seen: device, inode, size and modification time.
    seen: (u64, u64, u64, i64),
}

/// What a probe said of a file the target holds.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// With the snapshot's content: kept, given the entry's metadata.
    Unchanged,
    /// Left alone (`if-newer`, `never`).
    Kept,
    /// Holding some of the snapshot's chunks at their offsets (a bitmap, as
    /// [`pb::PartialFile::chunks`]): those are copied from it, not sent.
    Partial(Vec<u8>),
}

fn seen(meta: &std::fs::Metadata) -> (u64, u64, u64, i64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino(), meta.len(), mtime_ns(meta))
}

/// The chunk ids of a file entry, checked against its lengths and size.
fn entry_ids(entry: &pb::RestoreEntry) -> Result<Vec<[u8; 32]>, String> {
    let ids: Result<Vec<[u8; 32]>, _> = entry
        .content
        .iter()
        .map(|id| <[u8; 32]>::try_from(id.as_slice()))
        .collect();
    let Ok(ids) = ids else {
        return Err("a chunk id is not 32 bytes".into());
    };
    if ids.len() != entry.lengths.len() {
        return Err("chunk ids and lengths do not match".into());
    }
    if entry.lengths.iter().map(|l| u64::from(*l)).sum::<u64>() != entry.size {
        return Err("the chunk lengths do not add up to the file's size".into());
    }
    Ok(ids)
}

/// Which of `entry`'s chunks the open file `file` (of `len` bytes) holds at their
/// offsets: a bitmap ([`is_held`]) and how many (none for an entry whose chunk list
/// does not add up).
fn chunks_held(ids: &IdKeys, file: &File, len: u64, entry: &pb::RestoreEntry) -> (Vec<u8>, usize) {
    match entry_ids(entry) {
        Ok(chunk_ids) => crate::engine::restore::chunks_held(
            ids,
            file,
            len,
            chunk_ids.into_iter().zip(entry.lengths.iter().copied()),
        ),
        Err(_) => (Vec::new(), 0),
    }
}

/// Owner (when root), attributes, mode and times of `entry`, through an open file.
fn set_file_metadata(file: &File, entry: &pb::RestoreEntry, is_root: bool) -> Result<(), String> {
    if is_root {
        std::os::unix::fs::fchown(file, Some(entry.uid), Some(entry.gid))
            .map_err(|e| format!("cannot set the owner: {e}"))?;
    }
    // After the owner (which clears a file capability), before the mode.
    let xattrs = crate::rpc::xattrs_from_wire(&entry.xattrs)?;
    crate::engine::xattrs::restore_file(file, &xattrs, is_root)
        .map_err(|e| format!("cannot set {e}"))?;
    file.set_permissions(std::fs::Permissions::from_mode(entry.mode & 0o7777))
        .map_err(|e| format!("cannot set the mode: {e}"))?;
    let mtime = crate::engine::restore::file_time(entry.mtime_ns);
    filetime::set_file_handle_times(file, Some(mtime), Some(mtime))
        .map_err(|e| format!("cannot set the times: {e}"))
}

/// `rel` under `target` if every directory on the way is a real directory (none is
/// created); `None` otherwise.
fn existing_under(target: &Path, known: &HashSet<PathBuf>, rel: &[u8]) -> Option<PathBuf> {
    if rel.is_empty() || rel.first() == Some(&b'/') {
        return None;
    }
    let parts: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    if parts.iter().any(|part| check_name(part).is_err()) {
        return None;
    }
    let mut dir = target.to_path_buf();
    for part in &parts[..parts.len() - 1] {
        dir.push(OsStr::from_bytes(part));
        if !known.contains(&dir) && !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return None;
        }
    }
    Some(dir.join(OsStr::from_bytes(parts[parts.len() - 1])))
}

struct OpenFile {
    final_path: PathBuf,
    tmp_path: PathBuf,
    file: File,
    ids: Vec<[u8; 32]>,
    lengths: Vec<u32>,
    next: usize,
    /// Where the next chunk goes.
    offset: u64,
    failed: Option<String>,
    entry: pb::RestoreEntry,
    /// Names the file's ranges handed to the write-behind.
    handed: Handed,
    /// The file already at its place, which the chunks `entry.reuse` names are copied
    /// from (checked to be the one the probe read).
    local: Option<File>,
    /// Bytes copied from it.
    reused: u64,
}

/// A file whose written ranges are on their way to disk, for a write the disk refuses.
struct HandedFile {
    /// As the snapshot names it.
    path: Vec<u8>,
    /// Where it is placed once verified.
    final_path: PathBuf,
    size: u64,
    /// It failed for another reason (and was reported then), or was never placed.
    failed: std::sync::atomic::AtomicBool,
}
type Handed = Arc<HandedFile>;

/// A chunk off the restore stream, decompressed and hashed ([`decode_chunk`]); the
/// writer compares it with the snapshot's id and length for its place.
#[derive(Debug)]
pub enum Decoded {
    /// The daemon could not read it (an empty payload).
    Unreadable,
    /// Its plaintext and the plaintext's id under the job's id key.
    Plain {
        /// The plaintext.
        data: Vec<u8>,
        /// Its keyed id.
        id: [u8; 32],
    },
    /// A payload that does not decode.
    Invalid(String),
}

/// Decompresses a streamed chunk and computes its id (see [`Decoded`]).
#[must_use]
pub fn decode_chunk(ids: &IdKeys, chunk: &pb::RestoreChunk) -> Decoded {
    if chunk.payload.is_empty() {
        return Decoded::Unreadable;
    }
    match decode_blob_payload(&chunk.payload, chunk.raw_len as usize) {
        Ok(data) => {
            let id = ids.blob_id(&data).0;
            Decoded::Plain { data, id }
        }
        Err(e) => Decoded::Invalid(e),
    }
}

/// The id key of a restore job, or a message when it is not 32 bytes.
fn job_ids(id_key: &[u8]) -> Result<IdKeys, String> {
    let key: [u8; 32] = id_key
        .try_into()
        .map_err(|_| "the id key must be 32 bytes".to_owned())?;
    Ok(IdKeys::from_parts(key, 0))
}

/// Writes one restore.
pub struct RestoreWriter {
    target: PathBuf,
    ids: IdKeys,
    real_dirs: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, pb::RestoreEntry)>,
    current: Option<OpenFile>,
    failed: Vec<pb::FileProblem>,
    verified_since: u64,
    summary: RestoreSummary,
    is_root: bool,
    /// The first verified path of each hard-link group and its chunk ids.
    links: HashMap<u64, (PathBuf, Vec<[u8; 32]>)>,
    /// Chunks still to come for a path restored as a link (not written).
    skip_chunks: usize,
    /// Takes written ranges to disk and out of the page cache.
    behind: Option<WriteBehind<Handed>>,
    /// A chunk read back from the file it was written to.
    readback: Vec<u8>,
    /// A chunk copied from the file already at its place.
    copybuf: Vec<u8>,
    /// What becomes of what the target already holds.
    overwrite: Overwrite,
    /// Files a probe said the target holds, by path, until their entries come.
    found: HashMap<Vec<u8>, Found>,
    /// What the restore deletes (`--delete`), when it does.
    deleting: Option<Deleting>,
    /// Only deciding: nothing is created, written, changed or deleted.
    dry_run: bool,
    /// In a dry run, the hard-link groups with a path counted already.
    dry_groups: HashSet<u64>,
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

impl RestoreWriter {
    /// A writer into `target` (absolute; created if missing, and must not be a link),
    /// doing with what the target already holds as `overwrite` says.
    ///
    /// # Errors
    /// A message when the target is relative, cannot be created, or is not a directory.
    pub fn new(target: &str, id_key: &[u8], overwrite: Overwrite) -> Result<Self, String> {
        Self::start(target, id_key, overwrite, false)
    }

    /// A dry run into `target` (which need not exist): it reads what the target holds
    /// and decides as [`RestoreWriter::new`]'s would, but creates, writes, changes and
    /// deletes nothing.
    ///
    /// # Errors
    /// A message when the target is relative or something else than a directory.
    pub fn new_dry_run(target: &str, id_key: &[u8], overwrite: Overwrite) -> Result<Self, String> {
        Self::start(target, id_key, overwrite, true)
    }

    fn start(
        target: &str,
        id_key: &[u8],
        overwrite: Overwrite,
        dry_run: bool,
    ) -> Result<Self, String> {
        let ids = job_ids(id_key)?;
        let target = PathBuf::from(target);
        if !target.is_absolute() {
            return Err(format!("{} is not an absolute path", target.display()));
        }
        if !dry_run {
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        }
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", target.display())),
            Err(e) if dry_run && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", target.display())),
        }
        let mut real_dirs = HashSet::new();
        real_dirs.insert(target.clone());
        let behind = if dry_run {
            None
        } else {
            Some(
                WriteBehind::start()
                    .map_err(|e| format!("cannot start the write-behind thread: {e}"))?,
            )
        };
        Ok(Self {
            target,
            ids,
            real_dirs,
            dirs: Vec::new(),
            current: None,
            failed: Vec::new(),
            verified_since: 0,
            summary: RestoreSummary::default(),
            // SAFETY: geteuid has no preconditions and cannot fail.
            is_root: unsafe { libc::geteuid() } == 0,
            links: HashMap::new(),
            skip_chunks: 0,
            behind,
            readback: Vec::new(),
            copybuf: Vec::new(),
            overwrite,
            found: HashMap::new(),
            deleting: None,
            dry_run,
            dry_groups: HashSet::new(),
        })
    }

    /// This restore also deletes what the snapshot does not hold, in the directories
    /// whose entries say so (and in the target itself with `target_too`), except what
    /// `excludes` (the restore's exclude patterns) leave out.
    ///
    /// # Errors
    /// A message naming a pattern that cannot be read.
    pub fn deleting(mut self, excludes: &[String], target_too: bool) -> Result<Self, String> {
        let excludes = crate::engine::backup::build_excludes(excludes)
            .map_err(|e| format!("the restore's exclude patterns: {e}"))?;
        let mut deleting = Deleting {
            excludes,
            dirs: HashMap::new(),
            order: Vec::new(),
        };
        if target_too {
            deleting.dirs.insert(Vec::new(), HashSet::new());
            deleting.order.push(Vec::new());
        }
        self.deleting = Some(deleting);
        Ok(self)
    }

    /// What the target already holds of `files` (regular files of entries still to
    /// come), by position in the list: those with the snapshot's content, those left as
    /// they are under `if-newer` or `never`, and those that hold some of the snapshot's
    /// chunks at their offsets (copied from there, not sent). Files are read in
    /// parallel. The answer's job and batch are left for the caller.
    pub fn probe(&mut self, files: &[pb::RestoreEntry]) -> pb::RestoreProbeAnswer {
        let (target, known, ids, overwrite) =
            (&self.target, &self.real_dirs, &self.ids, self.overwrite);
        let found: Vec<Option<Found>> = files
            .par_iter()
            .map(|entry| {
                if entry.kind != "file" {
                    return None;
                }
                let path = existing_under(target, known, &entry.path)?;
                let meta = std::fs::symlink_metadata(&path).ok()?;
                let found = |verdict| Found {
                    verdict,
                    seen: seen(&meta),
                };
                let judged = overwrite.judge(entry.size, entry.mtime_ns, &meta);
                match judged {
                    Judged::Kept => return Some(found(Verdict::Kept)),
                    Judged::Trusted => return Some(found(Verdict::Unchanged)),
                    // Of another size: its chunks may still be in place.
                    Judged::Replace if !meta.is_file() => return None,
                    Judged::Replace | Judged::Compare => {}
                }
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .ok()?;
                // Compared with what was looked at: the same file, unchanged.
                let now = file.metadata().ok()?;
                if seen(&now) != seen(&meta) {
                    return None;
                }
                let (bitmap, count) = chunks_held(ids, &file, meta.len(), entry);
                if judged == Judged::Compare && count == entry.content.len() {
                    Some(found(Verdict::Unchanged))
                } else if count > 0 {
                    Some(found(Verdict::Partial(bitmap)))
                } else {
                    None
                }
            })
            .collect();
        let mut answer = pb::RestoreProbeAnswer::default();
        for (k, (entry, found)) in files.iter().zip(found).enumerate() {
            let Some(found) = found else { continue };
            let k = k as u32;
            match &found.verdict {
                Verdict::Unchanged => answer.unchanged.push(k),
                Verdict::Kept => answer.kept.push(k),
                Verdict::Partial(bitmap) => answer.partial.push(pb::PartialFile {
                    file: k,
                    chunks: bitmap.clone(),
                }),
            }
            self.found.insert(entry.path.clone(), found);
        }
        answer
    }

    /// A file the probe found in the target: kept as it is, or, unchanged since, given
    /// the entry's metadata.
    fn in_place(&mut self, entry: pb::RestoreEntry) {
        let Some(found) = self.found.remove(&entry.path) else {
            let path = entry.path.clone();
            self.fail(
                &path,
                "the daemon sent the file as already in place, but this agent did not find it there",
            );
            return;
        };
        match found.verdict {
            Verdict::Unchanged => {}
            Verdict::Kept => {
                self.summary.files_kept += 1;
                return;
            }
            Verdict::Partial(_) => {
                self.fail(
                    &entry.path,
                    "the daemon sent the file as already in place, but this agent found it different",
                );
                return;
            }
        }
        let kept = (|| -> Result<PathBuf, String> {
            let path = existing_under(&self.target, &self.real_dirs, &entry.path)
                .ok_or("a directory on its way was removed during the restore")?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| format!("it cannot be opened any more: {e}"))?;
            let meta = file.metadata().map_err(|e| e.to_string())?;
            if seen(&meta) != found.seen {
                return Err("it changed on the server during the restore; restore it again".into());
            }
            set_file_metadata(&file, &entry, self.is_root)?;
            // A later path of a hard-link group: linked to the group's first path when
            // it is a copy of its own (the content is the same, the inode is not).
            if entry.hardlink != 0
                && let Ok(ids) = entry_ids(&entry)
                && let Some((first, first_ids)) = self.links.get(&entry.hardlink)
                && *first_ids == ids
                && std::fs::symlink_metadata(first).is_ok_and(|first| {
                    use std::os::unix::fs::MetadataExt;
                    (first.dev(), first.ino()) != (meta.dev(), meta.ino())
                })
            {
                link_to(&path, first)?;
            }
            Ok(path)
        })();
        match kept {
            Ok(path) => {
                self.summary.files_unchanged += 1;
                self.summary.bytes_unchanged += entry.size;
                if entry.hardlink != 0
                    && let Ok(ids) = entry_ids(&entry)
                {
                    self.links.entry(entry.hardlink).or_insert((path, ids));
                }
            }
            Err(reason) => {
                let path = entry.path.clone();
                self.fail(&path, reason);
            }
        }
    }

    /// Whether what is at `path` stays as it is, where the snapshot has `entry` (a link
    /// or a pipe).
    fn keeps_existing(&self, path: &Path, entry: &pb::RestoreEntry) -> bool {
        std::fs::symlink_metadata(path)
            .is_ok_and(|meta| self.overwrite.keeps(entry.mtime_ns, mtime_ns(&meta)))
    }

    /// The job's id key, for [`decode_chunk`] on another thread.
    #[must_use]
    pub fn ids(&self) -> &IdKeys {
        &self.ids
    }

    fn fail(&mut self, path: &[u8], reason: impl std::fmt::Display) {
        tracing::warn!(path = %lossy(path), %reason, "restore of a file failed");
        self.summary.files_failed += 1;
        self.failed.push(pb::FileProblem {
            path: lossy(path),
            reason: reason.to_string(),
        });
    }

    /// Failures since the last call and the count of files verified since then.
    pub fn take_results(&mut self) -> (Vec<pb::FileProblem>, u64) {
        (
            std::mem::take(&mut self.failed),
            std::mem::take(&mut self.verified_since),
        )
    }

    /// Resolves a relative path under the target, making sure every directory on the
    /// way is a real directory (creating missing ones).
    fn place(&mut self, rel: &[u8]) -> Result<PathBuf, String> {
        if rel.is_empty() || rel.first() == Some(&b'/') {
            return Err("the path is empty or absolute".into());
        }
        let parts: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
        for part in &parts {
            check_name(part)?;
        }
        let mut dir = self.target.clone();
        for part in &parts[..parts.len() - 1] {
            dir.push(OsStr::from_bytes(part));
            if self.real_dirs.contains(&dir) {
                continue;
            }
            match std::fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(format!(
                        "{} is in the way and is not a directory",
                        dir.display()
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                Err(e) => return Err(format!("{}: {e}", dir.display())),
            }
            self.real_dirs.insert(dir.clone());
        }
        Ok(dir.join(OsStr::from_bytes(parts[parts.len() - 1])))
    }

    fn tmp_beside(path: &Path) -> PathBuf {
        let mut name = b".".to_vec();
        name.extend_from_slice(path.file_name().map(OsStr::as_bytes).unwrap_or(b"f"));
        name.extend_from_slice(format!(".cadang-{:016x}", rand_u64()).as_bytes());
        path.with_file_name(OsStr::from_bytes(&name))
    }

    /// Takes the next entry. A file's chunks follow as [`RestoreWriter::chunk_decoded`] calls.
    pub fn entry(&mut self, entry: pb::RestoreEntry) {
        // A path restored as a link is complete whether or not its chunks all came.
        self.skip_chunks = 0;
        if let Some(open) = self.current.take() {
            // The daemon moved on before sending every chunk.
            let _ = std::fs::remove_file(&open.tmp_path);
            let path = open.entry.path.clone();
            self.fail(
                &path,
                "the restore stream ended before the file's last chunk",
            );
        }
        if let Some(deleting) = self.deleting.as_mut() {
            let (dir, name) = split_parent(&entry.path);
            if let Some(names) = deleting.dirs.get_mut(dir) {
                names.insert(name.to_vec());
            }
        }
        if self.dry_run {
            self.dry_entry(entry);
            return;
        }
        if entry.in_place {
            self.in_place(entry);
            return;
        }
        let path = match self.place(&entry.path) {
            Ok(path) => path,
            Err(reason) => {
                let p = entry.path.clone();
                self.fail(&p, reason);
                return;
            }
        };
        if let Err(reason) = self.clear_the_way(&path, &entry) {
            let p = entry.path.clone();
            self.fail(&p, reason);
            return;
        }
        let result = match entry.kind.as_str() {
            "dir" => self.dir(&path, entry),
            "file" => self.start_file(path, entry),
            "symlink" => self.symlink(&path, &entry),
            "fifo" => self.fifo(&path, &entry),
            // Devices and sockets are recorded in the snapshot but not recreated here:
            // devices need the server's own administrator, sockets belong to processes.
            _ => Ok(()),
        };
        if let Err((p, reason)) = result {
            self.fail(&p, reason);
        }
    }

    /// An entry of a dry run: counted as what the restore would do with it.
    fn dry_entry(&mut self, entry: pb::RestoreEntry) {
        if entry.in_place {
            match self.found.remove(&entry.path).map(|found| found.verdict) {
                Some(Verdict::Unchanged) => {
                    self.summary.files_unchanged += 1;
                    self.summary.bytes_unchanged += entry.size;
                }
                Some(Verdict::Kept) => self.summary.files_kept += 1,
                Some(Verdict::Partial(_)) | None => self.fail(
                    &entry.path,
                    "the daemon sent the file as already in place, but this agent did not find it there",
                ),
            }
            return;
        }
        if let Some(bad) = entry
            .path
            .split(|b| *b == b'/')
            .find_map(|part| check_name(part).err())
        {
            self.fail(&entry.path, bad);
            return;
        }
        // Where every directory on the way exists; else everything there is new.
        let existing = existing_under(&self.target, &self.real_dirs, &entry.path);
        if let Some(path) = &existing
            && let Err(reason) = self.clear_the_way(path, &entry)
        {
            self.fail(&entry.path, reason);
            return;
        }
        let kept = || {
            existing
                .as_deref()
                .is_some_and(|path| self.keeps_existing(path, &entry))
        };
        match entry.kind.as_str() {
            "dir" => {
                if entry.clean
                    && let Some(deleting) = self.deleting.as_mut()
                    && !deleting.cleans(&entry.path)
                {
                    deleting.dirs.insert(entry.path.clone(), HashSet::new());
                    deleting.order.push(entry.path.clone());
                }
            }
            "file" => {
                self.found.remove(&entry.path);
                self.summary.files_verified += 1;
                // A later path of a hard-link group would be a link to the first.
                if entry.hardlink == 0 || self.dry_groups.insert(entry.hardlink) {
                    self.summary.bytes += entry.size;
                }
            }
            "symlink" | "fifo" => {
                if kept() {
                    self.summary.files_kept += 1;
                } else {
                    self.summary.files_verified += 1;
                }
            }
            _ => {}
        }
    }

    fn dir(&mut self, path: &Path, entry: pb::RestoreEntry) -> Result<(), (Vec<u8>, String)> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err((
                    entry.path,
                    "something that is not a directory is in its place".into(),
                ));
            }
            Err(_) => {
                if let Err(e) = std::fs::create_dir(path) {
                    return Err((entry.path, format!("cannot create the directory: {e}")));
                }
            }
        }
        self.real_dirs.insert(path.to_path_buf());
        if entry.clean
            && let Some(deleting) = self.deleting.as_mut()
            && !deleting.cleans(&entry.path)
        {
            deleting.dirs.insert(entry.path.clone(), HashSet::new());
            deleting.order.push(entry.path.clone());
        }
        self.dirs.push((path.to_path_buf(), entry));
        Ok(())
    }

    /// With `--delete`, in a directory the restore cleans, and unless what exists is
    /// kept (`if-newer`, `never`): removes a directory where the snapshot has something
    /// else, or anything but a directory where it has one.
    fn clear_the_way(&mut self, path: &Path, entry: &pb::RestoreEntry) -> Result<(), String> {
        let Some(deleting) = self.deleting.as_ref() else {
            return Ok(());
        };
        if !deleting.cleans(split_parent(&entry.path).0)
            || !matches!(self.overwrite, Overwrite::Always | Overwrite::IfChanged)
        {
            return Ok(());
        }
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return Ok(());
        };
        let wants_dir = entry.kind == "dir";
        if meta.is_dir() == wants_dir {
            return Ok(());
        }
        let removed = if self.dry_run {
            Ok(())
        } else if meta.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        removed.map_err(|e| format!("cannot delete what is in its place: {e}"))?;
        self.deleted(&entry.path);
        Ok(())
    }

    fn deleted(&mut self, rel: &[u8]) {
        if self.dry_run {
            tracing::info!(path = %lossy(rel), "would be deleted: not in the snapshot");
        } else {
            tracing::info!(path = %lossy(rel), "deleted: not in the snapshot");
        }
        self.summary.deleted += 1;
        if self.summary.deleted_paths.len() < DELETED_LISTED {
            self.summary.deleted_paths.push(lossy(rel));
        }
    }

    /// `--delete`, once every entry came: removes from each directory cleaned what the
    /// snapshot does not hold there (and the restore's excludes do not leave out).
    fn clean(&mut self) {
        let Some(deleting) = self.deleting.take() else {
            return;
        };
        for dir in &deleting.order {
            let Some(names) = deleting.dirs.get(dir) else {
                continue;
            };
            let path = self.target.join(OsStr::from_bytes(dir));
            // A directory swapped for a link since it was restored is not followed.
            let listing = match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => std::fs::read_dir(&path),
                Ok(_) => continue,
                Err(e) => Err(e),
            };
            let listing = match listing {
                Ok(listing) => listing,
                // A dry run creates no directory, and replaces nothing in one's way.
                Err(e)
                    if self.dry_run
                        && (e.kind() == std::io::ErrorKind::NotFound
                            || e.raw_os_error() == Some(libc::ENOTDIR)) =>
                {
                    continue;
                }
                Err(e) => {
                    self.fail(
                        dir,
                        format!("cannot list it to delete what the snapshot does not hold: {e}"),
                    );
                    continue;
                }
            };
            for item in listing {
                let (name, kind) = match item.and_then(|i| Ok((i.file_name(), i.file_type()?))) {
                    Ok(found) => found,
                    Err(e) => {
                        self.fail(
                            dir,
                            format!(
                                "cannot list it to delete what the snapshot does not hold: {e}"
                            ),
                        );
                        break;
                    }
                };
                let rel = join_rel(dir, name.as_bytes());
                if names.contains(name.as_bytes()) || deleting.left_out(&rel) {
                    continue;
                }
                let child = path.join(&name);
                // Never followed: a link is removed itself, a directory with what it holds.
                let removed = if self.dry_run {
                    Ok(())
                } else if kind.is_dir() {
                    std::fs::remove_dir_all(&child)
                } else {
                    std::fs::remove_file(&child)
                };
                match removed {
                    Ok(()) => self.deleted(&rel),
                    Err(e) => self.fail(&rel, format!("cannot delete it: {e}")),
                }
            }
        }
    }

    fn start_file(
        &mut self,
        path: PathBuf,
        entry: pb::RestoreEntry,
    ) -> Result<(), (Vec<u8>, String)> {
        let ids = match entry_ids(&entry) {
            Ok(ids) => ids,
            Err(reason) => return Err((entry.path, reason)),
        };
        // The chunks copied on the server are not sent.
        let streamed = (0..ids.len())
            .filter(|i| !is_held(&entry.reuse, *i))
            .count();
        let probed = self.found.remove(&entry.path);
        let first = (entry.hardlink != 0)
            .then(|| self.links.get(&entry.hardlink))
            .flatten()
            .filter(|(_, first_ids)| *first_ids == ids)
            .map(|(first, _)| first.clone());
        if let Some(first) = first {
            self.link_file(&path, &first, &entry.path)?;
            self.skip_chunks = streamed;
            return Ok(());
        }
        let local = if entry.reuse.is_empty() {
            None
        } else {
            let fail = |reason: &str| {
                // The chunks that come are not for any file.
                (entry.path.clone(), reason.to_owned())
            };
            let Some(Found {
                verdict: Verdict::Partial(_),
                seen: was,
            }) = probed
            else {
                self.skip_chunks = streamed;
                return Err(fail(
                    "the daemon sent chunks to copy from a file this agent did not find in part",
                ));
            };
            let local = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .ok()
                .filter(|file| file.metadata().is_ok_and(|meta| seen(&meta) == was));
            if local.is_none() {
                self.skip_chunks = streamed;
                return Err(fail(
                    "it changed on the server during the restore; restore it again",
                ));
            }
            local
        };
        let tmp_path = Self::tmp_beside(&path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp_path)
            .map_err(|e| (entry.path.clone(), format!("cannot create the file: {e}")))?;
        // At its size from the start: zero runs are left as holes, and a chunk is read
        // back as soon as it is written.
        if let Err(e) = file.set_len(entry.size) {
            let _ = std::fs::remove_file(&tmp_path);
            return Err((entry.path.clone(), format!("cannot size the file: {e}")));
        }
        let handed = Arc::new(HandedFile {
            path: entry.path.clone(),
            final_path: path.clone(),
            size: entry.size,
            failed: std::sync::atomic::AtomicBool::new(false),
        });
        self.current = Some(OpenFile {
            final_path: path,
            tmp_path,
            file,
            ids,
            lengths: entry.lengths.clone(),
            next: 0,
            offset: 0,
            failed: None,
            entry,
            handed,
            local,
            reused: 0,
        });
        self.advance();
        Ok(())
    }

    /// Copies the current file's next chunks that the file already at its place holds
    /// (each checked against its id, written and read back), and ends the file once it
    /// has every chunk.
    fn advance(&mut self) {
        let Some(open) = self.current.as_mut() else {
            return;
        };
        while open.next < open.ids.len() && is_held(&open.entry.reuse, open.next) {
            let index = open.next;
            open.next += 1;
            let length = open.lengths[index] as usize;
            if open.failed.is_none() {
                let copied = (|| -> Result<(), String> {
                    let local = open.local.as_ref().ok_or("no file to copy from")?;
                    self.copybuf.resize(length, 0);
                    read_exact_sparse(local, &mut self.copybuf, open.offset).map_err(|e| {
                        format!(
                            "chunk {} cannot be read from the file there: {e}",
                            index + 1
                        )
                    })?;
                    if self.ids.blob_id(&self.copybuf).0 != open.ids[index] {
                        return Err(format!(
                            "chunk {} changed on the server during the restore; restore it again",
                            index + 1
                        ));
                    }
                    write_sparse(&open.file, &self.copybuf, open.offset)
                        .map_err(|e| format!("cannot write: {e}"))?;
                    Self::read_back(&self.ids, &mut self.readback, open, index)
                })();
                match copied {
                    Ok(()) => {
                        open.reused += length as u64;
                        if let (Some(behind), Ok(dup)) = (&self.behind, open.file.try_clone()) {
                            behind.written(
                                dup,
                                open.offset,
                                length as u64,
                                Arc::clone(&open.handed),
                            );
                        }
                    }
                    Err(e) => open.failed = Some(e),
                }
            }
            open.offset += length as u64;
        }
        if open.next >= open.ids.len() {
            if let Some(local) = &open.local {
                let _ = crate::engine::writebehind::drop_cached(local, 0, 0);
            }
            self.finish_file();
        }
    }

    /// Decodes and takes the next chunk of the current file on this thread (the agent
    /// decodes on another: [`RestoreWriter::chunk_decoded`]). An empty payload means the
    /// daemon could not read that chunk from the repository.
    #[cfg(test)]
    fn chunk(&mut self, chunk: pb::RestoreChunk) {
        let decoded = decode_chunk(&self.ids, &chunk);
        self.chunk_decoded(decoded);
    }

    /// Takes the next chunk of the current file, decoded by [`decode_chunk`] (on
    /// another thread, so that decompressing and hashing overlap with writing).
    pub fn chunk_decoded(&mut self, chunk: Decoded) {
        if self.skip_chunks > 0 {
            self.skip_chunks -= 1;
            return;
        }
        let Some(open) = self.current.as_mut() else {
            tracing::warn!("a chunk arrived with no file open; ignored");
            return;
        };
        let index = open.next;
        open.next += 1;
        if open.failed.is_none() {
            match chunk {
                Decoded::Unreadable => {
                    open.failed = Some(format!(
                        "chunk {} could not be read from the repository",
                        index + 1
                    ));
                }
                Decoded::Plain { data, id }
                    if id == open.ids[index] && data.len() as u32 == open.lengths[index] =>
                {
                    let written = write_sparse(&open.file, &data, open.offset)
                        .map_err(|e| format!("cannot write: {e}"))
                        .and_then(|_| Self::read_back(&self.ids, &mut self.readback, open, index));
                    match written {
                        Ok(()) => {
                            // On to disk, and out of the page cache once there.
                            if let (Some(behind), Ok(dup)) = (&self.behind, open.file.try_clone()) {
                                behind.written(
                                    dup,
                                    open.offset,
                                    data.len() as u64,
                                    Arc::clone(&open.handed),
                                );
                            }
                        }
                        Err(e) => open.failed = Some(e),
                    }
                    open.offset += data.len() as u64;
                }
                Decoded::Plain { .. } => {
                    open.failed = Some(format!("chunk {} does not match the snapshot", index + 1));
                }
                Decoded::Invalid(e) => open.failed = Some(format!("chunk {}: {e}", index + 1)),
            }
        }
        self.advance();
    }

    fn finish_file(&mut self) {
        let Some(mut open) = self.current.take() else {
            return;
        };
        let outcome = open
            .failed
            .take()
            .map_or_else(|| self.verify_and_place(&mut open), Err);
        match outcome {
            Ok(bytes) => {
                self.summary.files_verified += 1;
                self.summary.bytes += bytes;
                self.summary.bytes_reused += open.reused;
                self.verified_since += 1;
                if open.entry.hardlink != 0 {
                    self.links
                        .entry(open.entry.hardlink)
                        .or_insert_with(|| (open.final_path.clone(), open.ids.clone()));
                }
            }
            Err(reason) => {
                let _ = std::fs::remove_file(&open.tmp_path);
                open.handed
                    .failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let path = open.entry.path.clone();
                self.fail(&path, reason);
            }
        }
    }

    /// Reads chunk `index`, just written at `open.offset`, back from the file and checks
    /// it against the snapshot's id.
    fn read_back(
        ids: &IdKeys,
        buf: &mut Vec<u8>,
        open: &OpenFile,
        index: usize,
    ) -> Result<(), String> {
        buf.resize(open.lengths[index] as usize, 0);
        read_exact_sparse(&open.file, buf, open.offset)
            .map_err(|e| format!("verification: chunk {} unreadable: {e}", index + 1))?;
        if ids.blob_id(buf).0 == open.ids[index] {
            Ok(())
        } else {
            Err(format!(
                "verification: chunk {} on disk differs from the snapshot",
                index + 1
            ))
        }
    }

    /// Checks the size of a file whose every chunk was read back, gives it its owner,
    /// mode and times, then moves it into place.
    fn verify_and_place(&self, open: &mut OpenFile) -> Result<u64, String> {
        let total = open.offset;
        let on_disk = open
            .file
            .metadata()
            .map_err(|e| format!("verification: {e}"))?
            .len();
        if on_disk != total || total != open.entry.size {
            return Err("verification: the file on disk has the wrong size".into());
        }
        set_file_metadata(&open.file, &open.entry, self.is_root)?;
        match rename_noreplace(&open.tmp_path, &open.final_path) {
            Ok(()) => {}
            // Something is there (or this file system or kernel cannot tell): the
            // old content must survive a crash until the new one is on disk.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EEXIST | libc::EINVAL | libc::ENOSYS)
                ) =>
            {
                open.file
                    .sync_all()
                    .map_err(|e| format!("cannot flush to disk: {e}"))?;
                std::fs::rename(&open.tmp_path, &open.final_path)
                    .map_err(|e| format!("cannot move into place: {e}"))?;
            }
            Err(e) => return Err(format!("cannot move into place: {e}")),
        }
        Ok(total)
    }

    /// Restores `path` as another link to `first`, a verified file of this restore with
    /// the same content (the inode carries the metadata).
    fn link_file(
        &mut self,
        path: &Path,
        first: &Path,
        rel: &[u8],
    ) -> Result<(), (Vec<u8>, String)> {
        link_to(path, first).map_err(|e| (rel.to_vec(), e))?;
        self.summary.files_verified += 1;
        self.verified_since += 1;
        Ok(())
    }

    fn apply_metadata(
        &self,
        path: &Path,
        entry: &pb::RestoreEntry,
        chmod: bool,
    ) -> Result<(), String> {
        if self.is_root {
            std::os::unix::fs::lchown(path, Some(entry.uid), Some(entry.gid))
                .map_err(|e| format!("cannot set the owner: {e}"))?;
        }
        let xattrs = crate::rpc::xattrs_from_wire(&entry.xattrs)?;
        crate::engine::xattrs::restore_path(path, &xattrs, self.is_root)
            .map_err(|e| format!("cannot set {e}"))?;
        if chmod {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(entry.mode & 0o7777))
                .map_err(|e| format!("cannot set the mode: {e}"))?;
        }
        let mtime = crate::engine::restore::file_time(entry.mtime_ns);
        filetime::set_symlink_file_times(path, mtime, mtime)
            .map_err(|e| format!("cannot set the times: {e}"))
    }

    fn symlink(&mut self, path: &Path, entry: &pb::RestoreEntry) -> Result<(), (Vec<u8>, String)> {
        if self.keeps_existing(path, entry) {
            self.summary.files_kept += 1;
            return Ok(());
        }
        let tmp = Self::tmp_beside(path);
        let fail = |e: String| (entry.path.clone(), e);
        std::os::unix::fs::symlink(OsStr::from_bytes(&entry.link_target), &tmp)
            .map_err(|e| fail(format!("cannot create the link: {e}")))?;
        if let Err(e) = self
            .apply_metadata(&tmp, entry, false)
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()))
        {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(e));
        }
        self.summary.files_verified += 1;
        self.verified_since += 1;
        Ok(())
    }

    fn fifo(&mut self, path: &Path, entry: &pb::RestoreEntry) -> Result<(), (Vec<u8>, String)> {
        if self.keeps_existing(path, entry) {
            self.summary.files_kept += 1;
            return Ok(());
        }
        let tmp = Self::tmp_beside(path);
        let c_path = std::ffi::CString::new(tmp.as_os_str().as_bytes())
            .map_err(|_| (entry.path.clone(), "NUL in path".to_owned()))?;
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
            return Err((
                entry.path.clone(),
                format!(
                    "cannot create the pipe: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
        if let Err(e) = self
            .apply_metadata(&tmp, entry, true)
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()))
        {
            let _ = std::fs::remove_file(&tmp);
            return Err((entry.path.clone(), e));
        }
        Ok(())
    }

    /// Ends the restore: a file still open failed; directory metadata is applied.
    pub fn finish(mut self) -> (RestoreSummary, Vec<pb::FileProblem>, u64) {
        self.skip_chunks = 0;
        if let Some(open) = self.current.take() {
            let _ = std::fs::remove_file(&open.tmp_path);
            // Never placed: a refused write of it must not remove what is at its place.
            open.handed
                .failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let path = open.entry.path.clone();
            self.fail(
                &path,
                "the restore stream ended before the file's last chunk",
            );
        }
        // Before directory times are set: deleting changes them.
        self.clean();
        let mut dirs = std::mem::take(&mut self.dirs);
        if self.dry_run {
            dirs.clear();
        }
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.as_os_str().len()));
        for (path, entry) in &dirs {
            if let Err(reason) = self.apply_metadata(path, entry, true) {
                let p = entry.path.clone();
                self.fail(&p, reason);
            }
        }
        // Every range written is on disk, or the disk refused it: that file failed.
        let refused = self
            .behind
            .take()
            .map_or_else(|| Ok(Vec::new()), WriteBehind::finish);
        match refused {
            Ok(refused) => {
                for (handed, error) in refused {
                    // Once per file: it was placed and counted as verified; it is
                    // removed, as a file that fails is.
                    if handed
                        .failed
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        continue;
                    }
                    let _ = std::fs::remove_file(&handed.final_path);
                    self.summary.files_verified = self.summary.files_verified.saturating_sub(1);
                    self.summary.bytes = self.summary.bytes.saturating_sub(handed.size);
                    self.fail(&handed.path, format!("the disk refused the write: {error}"));
                }
            }
            Err(e) => {
                let target = self.target.as_os_str().as_bytes().to_vec();
                self.fail(
                    &target,
                    format!("{e}: the restored files may not be on disk"),
                );
            }
        }
        // One flush for every file written: a restore is not reported until what it
        // wrote is on disk.
        if !self.dry_run
            && let Err(e) = sync_file_system(&self.target)
        {
            let target = self.target.as_os_str().as_bytes().to_vec();
            self.fail(
                &target,
                format!("the restored files could not be flushed to disk: {e}"),
            );
        }
        let (failed, verified) = self.take_results();
        (self.summary, failed, verified)
    }
}

/// Makes `path` another link to `first`: linked beside its place, then renamed over it.
fn link_to(path: &Path, first: &Path) -> Result<(), String> {
    let tmp = RestoreWriter::tmp_beside(path);
    std::fs::hard_link(first, &tmp)
        .map_err(|e| format!("cannot link to {}: {e}", first.display()))?;
    let placed = std::fs::rename(&tmp, path);
    // A rename onto another link of the same file succeeds without moving anything.
    let _ = std::fs::remove_file(&tmp);
    placed.map_err(|e| format!("cannot move into place: {e}"))
}

/// Renames `from` to `to` unless something is at `to` (`EEXIST`); `EINVAL` where the
/// file system cannot do that, `ENOSYS` on a kernel without `renameat2`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let c = |path: &Path| {
        std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("NUL in path"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Flushes the file system holding `dir` to disk (`syncfs`).
fn sync_file_system(dir: &Path) -> std::io::Result<()> {
    let handle = File::open(dir)?;
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&handle)) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Randomness only makes the temporary name unpredictable; the name is created with
    // O_EXCL, so a collision fails safely instead of overwriting.
    if getrandom::fill(&mut bytes).is_err() {
        return std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::format::encode_blob_payload;

    fn keys() -> IdKeys {
        IdKeys::from_parts([7; 32], 0)
    }

    fn file_entry(path: &str, data: &[u8]) -> (pb::RestoreEntry, Vec<pb::RestoreChunk>) {
        file_entry_in(path, data, 1000)
    }

    fn file_entry_in(
        path: &str,
        data: &[u8],
        chunk_len: usize,
    ) -> (pb::RestoreEntry, Vec<pb::RestoreChunk>) {
        let chunks: Vec<&[u8]> = data.chunks(chunk_len).collect();
        let entry = pb::RestoreEntry {
            path: path.as_bytes().to_vec(),
            kind: "file".into(),
            mode: 0o640,
            uid: 0,
            gid: 0,
            mtime_ns: 1_700_000_000_000_000_000,
            size: data.len() as u64,
            content: chunks
                .iter()
                .map(|c| keys().blob_id(c).0.to_vec())
                .collect(),
            lengths: chunks.iter().map(|c| c.len() as u32).collect(),
            link_target: Vec::new(),
            hardlink: 0,
            xattrs: Vec::new(),
            in_place: false,
            clean: false,
            reuse: Vec::new(),
        };
        let messages = chunks
            .iter()
            .map(|c| {
                let mut payload = Vec::new();
                encode_blob_payload(c, 3, &mut payload);
                pb::RestoreChunk {
                    payload,
                    raw_len: c.len() as u32,
                }
            })
            .collect();
        (entry, messages)
    }

    fn sorted(paths: &[String]) -> Vec<String> {
        let mut paths = paths.to_vec();
        paths.sort();
        paths
    }

    /// What a probe says is unchanged and kept (none found in part).
    fn probed(w: &mut RestoreWriter, files: &[pb::RestoreEntry]) -> (Vec<u32>, Vec<u32>) {
        let answer = w.probe(files);
        assert!(answer.partial.is_empty(), "{answer:?}");
        (answer.unchanged, answer.kept)
    }

    fn dir_entry(path: &str) -> pb::RestoreEntry {
        pb::RestoreEntry {
            path: path.as_bytes().to_vec(),
            kind: "dir".into(),
            mode: 0o750,
            ..Default::default()
        }
    }

    #[test]
    fn zero_runs_stay_holes_and_the_file_keeps_its_size() {
        use std::os::unix::fs::MetadataExt;
        let target = tempfile::tempdir().unwrap();
        let mut w =
            RestoreWriter::new(target.path().to_str().unwrap(), &[7; 32], Overwrite::Always)
                .unwrap();
        let text: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8 | 1).collect();
        // Data, 1 MiB of zeros, data, and 512 KiB of zeros at the end; and a file of
        // zeros alone, of which nothing is written.
        let mut image = text.clone();
        image.extend(std::iter::repeat_n(0u8, 1 << 20));
        image.extend(&text);
        image.extend(std::iter::repeat_n(0u8, 512 * 1024));
        let zeros = vec![0u8; 768 * 1024];
        for (name, data) in [("disk.img", &image), ("zeros.img", &zeros)] {
            let (entry, chunks) = file_entry_in(name, data, 64 * 1024);
            w.entry(entry);
            for c in chunks {
                w.chunk(c);
            }
        }
        let (summary, failed, _) = w.finish();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(summary.files_verified, 2);
        // Written, read back, on disk and out of the page cache.
        if !crate::engine::writebehind::tests::on_tmpfs(target.path()) {
            let cached =
                crate::engine::writebehind::tests::cached_pages(&target.path().join("disk.img"));
            assert_eq!(cached, 0, "pages of disk.img left in the page cache");
        }
        for (name, data, at_most) in [
            ("disk.img", &image, 2 * text.len() as u64),
            ("zeros.img", &zeros, 0),
        ] {
            let path = target.path().join(name);
            assert_eq!(&std::fs::read(&path).unwrap(), data, "{name}");
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.len(), data.len() as u64, "{name}");
            // What the file system allocated: the data, not the zero runs.
            assert!(
                meta.blocks() * 512 <= at_most + 8192,
                "{name}: {} bytes allocated for {} of data",
                meta.blocks() * 512,
                at_most
            );
        }
    }

    #[test]
    fn chunk_lengths_that_miss_the_size_fail_the_file_before_it_is_created() {
        let target = tempfile::tempdir().unwrap();
        let mut w =
            RestoreWriter::new(target.path().to_str().unwrap(), &[7; 32], Overwrite::Always)
                .unwrap();
        let (mut entry, chunks) = file_entry_in("f", &[9u8; 3000], 1000);
        entry.size = 1 << 40;
        w.entry(entry);
        for c in chunks {
            w.chunk(c);
        }
        let (summary, failed, _) = w.finish();
        assert_eq!(summary.files_failed, 1);
        assert!(
            failed[0].reason.contains("do not add up"),
            "{}",
            failed[0].reason
        );
        assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
    }

    #[test]
    fn files_the_target_already_holds_are_kept_and_only_given_their_metadata() {
        use std::os::unix::fs::MetadataExt;
        let target = tempfile::tempdir().unwrap();
        let root = target.path();
        std::fs::create_dir(root.join("srv")).unwrap();
        let good = b"laporan keuangan ".repeat(500);
        // Damaged throughout: no chunk of it can be kept.
        let bad: Vec<u8> = good.iter().map(|b| b ^ 1).collect();
        std::fs::write(root.join("srv/same.txt"), &good).unwrap();
        std::fs::set_permissions(
            root.join("srv/same.txt"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(root.join("srv/damaged.txt"), &bad).unwrap();
        std::fs::write(root.join("srv/changing.txt"), &good).unwrap();
        let same_inode = std::fs::metadata(root.join("srv/same.txt")).unwrap().ino();
        let entries: Vec<(pb::RestoreEntry, Vec<pb::RestoreChunk>)> =
            ["same.txt", "damaged.txt", "changing.txt", "absent.txt"]
                .iter()
                .map(|name| file_entry(&format!("srv/{name}"), &good))
                .collect();
        let mut w =
            RestoreWriter::new(root.to_str().unwrap(), &[7; 32], Overwrite::Always).unwrap();
        let files: Vec<pb::RestoreEntry> = entries.iter().map(|(e, _)| e.clone()).collect();
        let (unchanged, kept) = probed(&mut w, &files);
        assert_eq!(
            unchanged,
            [0, 2],
            "the damaged one is read and found different"
        );
        assert!(kept.is_empty());
        // Edited on the server after the agent looked: it must not be called restored.
        std::fs::write(root.join("srv/changing.txt"), b"edited after the look").unwrap();
        w.entry(dir_entry("srv"));
        for (k, (mut entry, chunks)) in entries.into_iter().enumerate() {
            if unchanged.contains(&(k as u32)) {
                entry.in_place = true;
                w.entry(entry);
                continue;
            }
            w.entry(entry);
            for c in chunks {
                w.chunk(c);
            }
        }
        // A file named in place that no probe found fails.
        let (mut stray, _) = file_entry("srv/stray.txt", &good);
        stray.in_place = true;
        w.entry(stray);
        let (summary, failed, _) = w.finish();
        assert_eq!(summary.files_unchanged, 1, "{summary:?}");
        assert_eq!(summary.bytes_unchanged, good.len() as u64);
        assert_eq!(summary.files_verified, 2, "damaged.txt and absent.txt");
        let mut reasons: Vec<(String, String)> =
            failed.into_iter().map(|f| (f.path, f.reason)).collect();
        reasons.sort();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert_eq!(reasons[0].0, "srv/changing.txt");
        assert!(
            reasons[0].1.contains("changed on the server"),
            "{reasons:?}"
        );
        assert_eq!(reasons[1].0, "srv/stray.txt");
        let same = std::fs::metadata(root.join("srv/same.txt")).unwrap();
        assert_eq!(same.ino(), same_inode, "kept in place, not rewritten");
        assert_eq!(same.mode() & 0o7777, 0o640, "given the snapshot's mode");
        assert_eq!(same.mtime(), 1_700_000_000);
        assert_eq!(std::fs::read(root.join("srv/damaged.txt")).unwrap(), good);
        assert_eq!(std::fs::read(root.join("srv/absent.txt")).unwrap(), good);
        assert_eq!(
            std::fs::read(root.join("srv/changing.txt")).unwrap(),
            b"edited after the look"
        );
    }

    #[test]
    fn never_and_if_newer_leave_what_exists_and_if_changed_trusts_size_and_time() {
        let target = tempfile::tempdir().unwrap();
        let root = target.path();
        let data = b"isi berkas ".repeat(300);
        let (entry, _) = file_entry("f.txt", &data);
        let recorded = filetime::FileTime::from_unix_time(1_700_000_000, 0);
        let probe = |overwrite: Overwrite, content: &[u8], mtime: filetime::FileTime| {
            std::fs::write(root.join("f.txt"), content).unwrap();
            filetime::set_file_mtime(root.join("f.txt"), mtime).unwrap();
            let mut w = RestoreWriter::new(root.to_str().unwrap(), &[7; 32], overwrite).unwrap();
            let answer = w.probe(std::slice::from_ref(&entry));
            let partial: Vec<u32> = answer.partial.iter().map(|p| p.file).collect();
            (answer.unchanged, answer.kept, partial)
        };
        let other = b"something else entirely";
        let older = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        let newer = filetime::FileTime::from_unix_time(1_800_000_000, 0);
        let none: (Vec<u32>, Vec<u32>, Vec<u32>) = (vec![], vec![], vec![]);
        let kept = (vec![], vec![0], vec![]);
        let unchanged = (vec![0], vec![], vec![]);
        let in_part = (vec![], vec![], vec![0]);
        assert_eq!(probe(Overwrite::Never, other, older), kept);
        assert_eq!(probe(Overwrite::IfNewer, other, newer), kept);
        assert_eq!(
            probe(Overwrite::IfNewer, other, older),
            none,
            "older: replaced"
        );
        assert_eq!(
            probe(Overwrite::IfNewer, &data, older),
            unchanged,
            "older but the same"
        );
        // Same size and time: taken as unchanged without being read.
        let mut same_size = data.clone();
        same_size[7] ^= 1;
        assert_eq!(probe(Overwrite::IfChanged, &same_size, recorded), unchanged);
        assert_eq!(
            probe(Overwrite::Always, &same_size, recorded),
            in_part,
            "read: differs in its first chunk"
        );
        assert_eq!(
            probe(Overwrite::IfChanged, &same_size, older),
            in_part,
            "time differs: read"
        );
        // A link where the snapshot has a link is kept under never, replaced otherwise.
        std::os::unix::fs::symlink("elsewhere", root.join("link")).unwrap();
        let link = pb::RestoreEntry {
            path: b"link".to_vec(),
            kind: "symlink".into(),
            link_target: b"f.txt".to_vec(),
            mtime_ns: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        for (overwrite, target) in [
            (Overwrite::Never, "elsewhere"),
            (Overwrite::Always, "f.txt"),
        ] {
            let mut w = RestoreWriter::new(root.to_str().unwrap(), &[7; 32], overwrite).unwrap();
            w.entry(link.clone());
            let (summary, failed, _) = w.finish();
            assert!(failed.is_empty(), "{failed:?}");
            assert_eq!(summary.files_kept, u64::from(overwrite == Overwrite::Never));
            assert_eq!(
                std::fs::read_link(root.join("link")).unwrap(),
                Path::new(target)
            );
        }
    }

    #[test]
    fn files_are_written_verified_and_replace_old_ones_atomically() {
        let target = tempfile::tempdir().unwrap();
        std::fs::create_dir(target.path().join("etc")).unwrap();
        std::fs::write(target.path().join("etc/app.conf"), b"old").unwrap();
        std::fs::create_dir(target.path().join("etc/in-the-way")).unwrap();
        let mut w =
            RestoreWriter::new(target.path().to_str().unwrap(), &[7; 32], Overwrite::Always)
                .unwrap();
        w.entry(dir_entry("etc"));
        let data = b"new configuration ".repeat(300);
        // One replaces a file, one is new, one meets a directory in its place.
        for name in ["etc/app.conf", "etc/fresh.conf", "etc/in-the-way"] {
            let (entry, chunks) = file_entry(name, &data);
            w.entry(entry);
            for c in chunks {
                w.chunk(c);
            }
        }
        let (summary, failed, _) = w.finish();
        assert_eq!(summary.files_verified, 2);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].path, "etc/in-the-way");
        assert!(
            failed[0].reason.contains("cannot move into place"),
            "{failed:?}"
        );
        for name in ["etc/app.conf", "etc/fresh.conf"] {
            let path = target.path().join(name);
            assert_eq!(std::fs::read(&path).unwrap(), data);
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, 0o640, "{name}");
            assert_eq!(
                std::os::unix::fs::MetadataExt::mtime(&meta),
                1_700_000_000,
                "{name}"
            );
        }
        assert!(target.path().join("etc/in-the-way").is_dir());
        let names: Vec<_> = std::fs::read_dir(target.path().join("etc"))
            .unwrap()
            .collect();
        assert_eq!(names.len(), 3, "no temporary file left behind");
    }

    #[test]
    fn extended_attributes_are_set_on_files_and_directories_and_bad_ones_refused() {
        let target = tempfile::tempdir().unwrap();
        let mut w =
            RestoreWriter::new(target.path().to_str().unwrap(), &[7; 32], Overwrite::Always)
                .unwrap();
        let xattr = |name: &str, value: &[u8]| pb::Xattr {
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
        };
        let mut dir = dir_entry("srv");
        dir.xattrs = vec![xattr("user.owner", b"DINKES")];
        w.entry(dir);
        let (mut good, chunks) = file_entry("srv/laporan.pdf", b"%PDF-1.7");
        good.xattrs = vec![
            xattr("user.mime_type", b"application/pdf"),
            xattr("user.checksum", &[0, 255]),
        ];
        w.entry(good);
        for c in chunks {
            w.chunk(c);
        }
        // A name no file system holds fails the file, which is not left behind.
        let (mut bad, chunks) = file_entry("srv/bad", b"x");
        bad.xattrs = vec![xattr("user.a", b"1"), xattr("user.a", b"2")];
        w.entry(bad);
        for c in chunks {
            w.chunk(c);
        }
        let (summary, failed, _) = w.finish();
        assert_eq!(summary.files_verified, 1, "{failed:?}");
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].reason.contains("given twice"), "{failed:?}");
        assert!(!target.path().join("srv/bad").exists());
        let get = |path: &str, name: &str| xattr::get(target.path().join(path), name).unwrap();
        assert_eq!(
            get("srv/laporan.pdf", "user.mime_type").as_deref(),
            Some(&b"application/pdf"[..])
        );
        assert_eq!(
            get("srv/laporan.pdf", "user.checksum").as_deref(),
            Some(&[0, 255][..])
        );
        assert_eq!(get("srv", "user.owner").as_deref(), Some(&b"DINKES"[..]));
    }

    #[test]
    fn a_rename_that_must_not_replace_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let refused = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        rename_noreplace(&a, &dir.path().join("c")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("c")).unwrap(), b"a");
    }

    #[test]
    fn a_dry_run_decides_as_a_restore_would_and_changes_nothing() {
        use std::os::unix::fs::MetadataExt;
        let target = tempfile::tempdir().unwrap();
        let root = target.path();
        let good = b"data dinas ".repeat(300);
        std::fs::create_dir_all(root.join("srv/www/cache")).unwrap();
        std::fs::write(root.join("srv/www/same.txt"), &good).unwrap();
        std::fs::write(root.join("srv/www/edited.txt"), b"edited").unwrap();
        std::fs::write(root.join("srv/www/planted.php"), b"<?php").unwrap();
        std::fs::write(root.join("srv/www/sub"), b"a file where a directory was").unwrap();
        // Every name, kind, size, time and inode under the target.
        let look = || {
            let mut seen = Vec::new();
            let mut stack = vec![root.to_path_buf()];
            while let Some(dir) = stack.pop() {
                for item in std::fs::read_dir(&dir).unwrap() {
                    let path = item.unwrap().path();
                    let meta = std::fs::symlink_metadata(&path).unwrap();
                    if meta.is_dir() {
                        stack.push(path.clone());
                    }
                    seen.push((path, meta.ino(), meta.len(), meta.mtime(), meta.mode()));
                }
            }
            seen.sort();
            seen
        };
        let before = look();
        let mut w = RestoreWriter::new_dry_run(root.to_str().unwrap(), &[7; 32], Overwrite::Always)
            .unwrap()
            .deleting(&[], false)
            .unwrap();
        let (same, _) = file_entry("srv/www/same.txt", &good);
        let (edited, _) = file_entry("srv/www/edited.txt", &good);
        let (first, _) = file_entry("srv/www/sub/new.txt", &good);
        let (mut linked, _) = file_entry("srv/www/sub/linked.txt", &good);
        let mut first = first;
        first.hardlink = 3;
        linked.hardlink = 3;
        let files = vec![same.clone(), edited.clone(), first.clone(), linked.clone()];
        let (unchanged, kept) = probed(&mut w, &files);
        assert_eq!((unchanged, kept), (vec![0], vec![]));
        let mut www = dir_entry("srv/www");
        www.clean = true;
        let mut sub = dir_entry("srv/www/sub");
        sub.clean = true;
        w.entry(dir_entry("srv"));
        w.entry(www);
        let mut same = same;
        same.in_place = true;
        w.entry(same);
        w.entry(edited);
        w.entry(sub);
        w.entry(first);
        w.entry(linked);
        let (summary, failed, _) = w.finish();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(summary.files_unchanged, 1);
        assert_eq!(
            summary.files_verified, 3,
            "edited.txt and the two links would be written"
        );
        assert_eq!(
            summary.bytes,
            2 * good.len() as u64,
            "the second link writes nothing"
        );
        assert_eq!(
            sorted(&summary.deleted_paths),
            ["srv/www/cache", "srv/www/planted.php", "srv/www/sub"],
            "the file in the directory's way, and what the snapshot lacks"
        );
        assert_eq!(look(), before, "nothing changed");
        // A target that does not exist is not created.
        let absent = root.join("not-yet");
        let w = RestoreWriter::new_dry_run(absent.to_str().unwrap(), &[7; 32], Overwrite::Always)
            .unwrap();
        let _ = w.finish();
        assert!(!absent.exists());
    }

    #[test]
    fn chunks_a_file_there_still_holds_are_copied_from_it_not_sent() {
        use std::os::unix::fs::MetadataExt;
        let target = tempfile::tempdir().unwrap();
        let root = target.path();
        // 9 chunks of 1000 bytes; the file there has chunk 4 damaged, another grew a
        // tail, a third is a shorter older copy, a fourth changes after the look.
        let good: Vec<u8> = (0..9000u32).map(|n| (n * 7 % 251) as u8).collect();
        let mut damaged = good.clone();
        damaged[4321] ^= 1;
        std::fs::write(root.join("damaged.bin"), &damaged).unwrap();
        let mut grown = good.clone();
        grown.extend_from_slice(b"appended after the snapshot");
        std::fs::write(root.join("grown.bin"), &grown).unwrap();
        std::fs::write(root.join("short.bin"), &good[..2500]).unwrap();
        std::fs::write(root.join("changing.bin"), &damaged).unwrap();
        let names = ["damaged.bin", "grown.bin", "short.bin", "changing.bin"];
        let entries: Vec<(pb::RestoreEntry, Vec<pb::RestoreChunk>)> =
            names.iter().map(|name| file_entry(name, &good)).collect();
        let mut w =
            RestoreWriter::new(root.to_str().unwrap(), &[7; 32], Overwrite::Always).unwrap();
        let files: Vec<pb::RestoreEntry> = entries.iter().map(|(e, _)| e.clone()).collect();
        let answer = w.probe(&files);
        assert!(
            answer.unchanged.is_empty() && answer.kept.is_empty(),
            "{answer:?}"
        );
        let bits = |file: &pb::PartialFile| -> Vec<usize> {
            (0..9).filter(|i| is_held(&file.chunks, *i)).collect()
        };
        let partial: Vec<(u32, Vec<usize>)> =
            answer.partial.iter().map(|p| (p.file, bits(p))).collect();
        assert_eq!(
            partial,
            [
                (0, vec![0, 1, 2, 3, 5, 6, 7, 8]),
                (1, (0..9).collect()),
                (2, vec![0, 1]),
                (3, vec![0, 1, 2, 3, 5, 6, 7, 8]),
            ]
        );
        std::fs::write(root.join("changing.bin"), &good).unwrap();
        let mut sent = 0;
        for (k, (mut entry, chunks)) in entries.into_iter().enumerate() {
            entry.reuse = answer.partial[k].chunks.clone();
            let reuse = entry.reuse.clone();
            w.entry(entry);
            for (i, c) in chunks.into_iter().enumerate() {
                if !is_held(&reuse, i) {
                    sent += 1;
                    w.chunk(c);
                }
            }
        }
        // damaged.bin its chunk 4, grown.bin nothing, short.bin 7, changing.bin 1.
        assert_eq!(sent, 9);
        let (summary, failed, _) = w.finish();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].path, "changing.bin");
        assert!(
            failed[0].reason.contains("changed on the server"),
            "{failed:?}"
        );
        assert_eq!(summary.files_verified, 3);
        assert_eq!(summary.bytes_reused, 8000 + 9000 + 2000);
        for name in ["damaged.bin", "grown.bin", "short.bin"] {
            assert_eq!(std::fs::read(root.join(name)).unwrap(), good, "{name}");
            assert_eq!(
                std::fs::metadata(root.join(name)).unwrap().mode() & 0o777,
                0o640
            );
        }
        assert_eq!(std::fs::read(root.join("changing.bin")).unwrap(), good);
        assert_eq!(
            std::fs::read_dir(root).unwrap().count(),
            4,
            "no temporary name left"
        );
        // Chunks to copy from a file no probe found: the file fails, the stream goes on.
        let mut w =
            RestoreWriter::new(root.to_str().unwrap(), &[7; 32], Overwrite::Always).unwrap();
        let (mut stray, chunks) = file_entry("stray.bin", &good);
        stray.reuse = vec![0xff, 0x01];
        w.entry(stray);
        let (after, after_chunks) = file_entry("after.bin", b"after");
        w.entry(after);
        for c in after_chunks {
            w.chunk(c);
        }
        drop(chunks);
        let (summary, failed, _) = w.finish();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].path, "stray.bin");
        assert_eq!(summary.files_verified, 1);
        assert!(!root.join("stray.bin").exists());
    }

    #[test]
    fn copies_of_a_hard_link_group_found_in_place_are_linked_again() {
        use std::os::unix::fs::MetadataExt;
        let target = tempfile::tempdir().unwrap();
        let root = target.path();
        let data = b"satu berkas, dua nama ".repeat(300);
        // Both paths hold the right content, but as two files (copied by hand, say).
        std::fs::write(root.join("a"), &data).unwrap();
        std::fs::write(root.join("b"), &data).unwrap();
        let ino = |name: &str| std::fs::metadata(root.join(name)).unwrap().ino();
        assert_ne!(ino("a"), ino("b"));
        let mut w =
            RestoreWriter::new(root.to_str().unwrap(), &[7; 32], Overwrite::Always).unwrap();
        let entries: Vec<pb::RestoreEntry> = ["a", "b"]
            .iter()
            .map(|name| {
                let (mut entry, _) = file_entry(name, &data);
                entry.hardlink = 5;
                entry
            })
            .collect();
        let (unchanged, kept) = probed(&mut w, &entries);
        assert_eq!((unchanged, kept), (vec![0, 1], vec![]));
        for mut entry in entries {
            entry.in_place = true;
            w.entry(entry);
        }
        let (summary, failed, _) = w.finish();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(summary.files_unchanged, 2);
        assert_eq!(summary.bytes, 0, "nothing written");
        assert_eq!(ino("a"), ino("b"), "one file again, as in the snapshot");
        assert_eq!(std::fs::metadata(root.join("a")).unwrap().nlink(), 2);
        assert_eq!(std::fs::read(root.join("b")).unwrap(), data);
        assert_eq!(
            std::fs::read_dir(root).unwrap().count(),
            2,
            "no temporary name left"
        );
    }

    #[test]
    fn delete_removes_only_what_the_snapshot_lacks_where_the_daemon_says() {
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep.txt"), b"not the restore's").unwrap();
        let root = target.path();
        // The server: /srv holds the restored www and things beside it; www holds a
        // planted script, a link out, a stray directory, a log the restore leaves out, a
        // directory where the snapshot has a file, and a file where it has a directory.
        std::fs::create_dir_all(root.join("srv/www/uploads/old")).unwrap();
        std::fs::create_dir_all(root.join("srv/www/index.html")).unwrap();
        std::fs::write(root.join("srv/www/index.html/inner"), b"x").unwrap();
        std::fs::write(root.join("srv/www/shell.php"), b"<?php system($_GET[c]);").unwrap();
        std::fs::write(root.join("srv/www/uploads/old/a.jpg"), b"jpg").unwrap();
        std::fs::write(root.join("srv/www/access.log"), b"GET /").unwrap();
        std::fs::write(
            root.join("srv/www/assets"),
            b"a file in a directory's place",
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("srv/www/out")).unwrap();
        std::fs::write(root.join("srv/beside.txt"), b"another site").unwrap();
        std::fs::write(root.join("top.txt"), b"the server's own").unwrap();
        let mut w = RestoreWriter::new(root.to_str().unwrap(), &[7; 32], Overwrite::Always)
            .unwrap()
            .deleting(&["*.log".to_owned()], false)
            .unwrap();
        let (index, index_chunks) = file_entry("srv/www/index.html", b"<h1>Dinas</h1>");
        let (style, style_chunks) = file_entry("srv/www/assets/style.css", b"h1{}");
        let mut www = dir_entry("srv/www");
        www.clean = true;
        let mut uploads = dir_entry("srv/www/uploads");
        uploads.clean = true;
        let mut assets = dir_entry("srv/www/assets");
        assets.clean = true;
        w.entry(dir_entry("srv"));
        w.entry(www);
        w.entry(index);
        for c in index_chunks {
            w.chunk(c);
        }
        w.entry(uploads);
        w.entry(assets);
        w.entry(style);
        for c in style_chunks {
            w.chunk(c);
        }
        let (summary, failed, _) = w.finish();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(
            sorted(&summary.deleted_paths),
            [
                "srv/www/assets",
                "srv/www/index.html",
                "srv/www/out",
                "srv/www/shell.php",
                "srv/www/uploads/old"
            ]
        );
        assert_eq!(summary.deleted, 5);
        assert_eq!(summary.files_verified, 2);
        assert_eq!(
            std::fs::read(root.join("srv/www/index.html")).unwrap(),
            b"<h1>Dinas</h1>"
        );
        assert_eq!(
            std::fs::read(root.join("srv/www/assets/style.css")).unwrap(),
            b"h1{}"
        );
        assert!(root.join("srv/www/uploads").is_dir());
        assert!(!root.join("srv/www/uploads/old").exists());
        assert!(
            root.join("srv/www/access.log").exists(),
            "left out, so kept"
        );
        assert!(
            root.join("srv/beside.txt").exists(),
            "above the backed-up path"
        );
        assert!(
            root.join("top.txt").exists(),
            "the target itself is not cleaned"
        );
        assert!(
            outside.path().join("keep.txt").exists(),
            "the link was removed, not followed"
        );
        // Under `never` a directory in a file's place stays, and so does the file.
        let mut w = RestoreWriter::new(root.to_str().unwrap(), &[7; 32], Overwrite::Never)
            .unwrap()
            .deleting(&["*.log".to_owned()], true)
            .unwrap();
        std::fs::create_dir(root.join("srv/www/new.html")).unwrap();
        let (mut new, _) = file_entry("srv/www/new.html", b"new");
        let (unchanged, kept) = probed(&mut w, std::slice::from_ref(&new));
        assert_eq!((unchanged, kept), (vec![], vec![0]));
        let mut www = dir_entry("srv/www");
        www.clean = true;
        w.entry(dir_entry("srv"));
        w.entry(www);
        new.in_place = true;
        w.entry(new);
        let (summary, failed, _) = w.finish();
        assert!(failed.is_empty(), "{failed:?}");
        assert!(root.join("srv/www/new.html").is_dir(), "kept under never");
        assert_eq!(summary.files_kept, 1);
        // What the snapshot does not hold still goes; the target itself is cleaned too
        // here (a snapshot of `/`).
        assert_eq!(
            sorted(&summary.deleted_paths),
            [
                "srv/www/assets",
                "srv/www/index.html",
                "srv/www/uploads",
                "top.txt"
            ]
        );
        assert!(
            root.join("srv/beside.txt").exists(),
            "srv is not marked clean"
        );
        assert!(root.join("srv/www/access.log").exists());
    }

    #[test]
    fn hard_links_are_restored_as_links_to_the_first_good_copy() {
        use std::os::unix::fs::MetadataExt;
        let target = tempfile::tempdir().unwrap();
        let root = target.path();
        // Restoring over an earlier restore: `b` is already a link to `a`'s old copy.
        std::fs::write(root.join("a"), b"old").unwrap();
        std::fs::hard_link(root.join("a"), root.join("b")).unwrap();
        let mut w =
            RestoreWriter::new(root.to_str().unwrap(), &[7; 32], Overwrite::Always).unwrap();
        let data = b"shared content ".repeat(400);
        let other = b"a different file in a group it does not belong to ".repeat(50);
        let send = |w: &mut RestoreWriter, path: &str, content: &[u8], group: u64, damage: bool| {
            let (mut entry, mut chunks) = file_entry(path, content);
            entry.hardlink = group;
            if damage {
                chunks[0].payload.clear();
            }
            w.entry(entry);
            for c in chunks {
                w.chunk(c);
            }
        };
        send(&mut w, "a", &data, 9, false);
        send(&mut w, "b", &data, 9, false);
        // Same group, other content: written as a file of its own.
        send(&mut w, "c", &other, 9, false);
        // A group whose first path fails: the next path is written and becomes the one
        // the others link to.
        send(&mut w, "d", &data, 11, true);
        send(&mut w, "e", &data, 11, false);
        send(&mut w, "f", &data, 11, false);
        let (summary, failed, _) = w.finish();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].path, "d");
        assert_eq!(summary.files_verified, 5);
        // Bytes written: `a`, `c` and `e` only.
        assert_eq!(summary.bytes, 2 * data.len() as u64 + other.len() as u64);
        let ino = |name: &str| std::fs::metadata(root.join(name)).unwrap().ino();
        assert_eq!(ino("a"), ino("b"));
        assert_ne!(ino("a"), ino("c"));
        assert_eq!(ino("e"), ino("f"));
        assert_ne!(ino("a"), ino("e"));
        assert_eq!(std::fs::metadata(root.join("a")).unwrap().nlink(), 2);
        for name in ["a", "b", "e", "f"] {
            assert_eq!(std::fs::read(root.join(name)).unwrap(), data, "{name}");
        }
        assert_eq!(std::fs::read(root.join("c")).unwrap(), other);
        assert!(!root.join("d").exists());
        let names = std::fs::read_dir(root).unwrap().count();
        assert_eq!(names, 5, "no temporary name left behind");
    }

    #[test]
    fn a_damaged_chunk_fails_the_file_and_keeps_the_old_copy() {
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("db"), b"good old copy").unwrap();
        let mut w =
            RestoreWriter::new(target.path().to_str().unwrap(), &[7; 32], Overwrite::Always)
                .unwrap();
        let data = vec![42u8; 3000];
        let (entry, mut chunks) = file_entry("db", &data);
        chunks[1].payload = vec![0, 1, 2, 3];
        chunks[1].raw_len = 3;
        w.entry(entry);
        for c in chunks {
            w.chunk(c);
        }
        let (summary, failed, _) = w.finish();
        assert_eq!(summary.files_failed, 1);
        assert_eq!(failed[0].path, "db");
        assert_eq!(
            std::fs::read(target.path().join("db")).unwrap(),
            b"good old copy"
        );
        // An unreadable chunk (empty payload) fails the file too.
        let mut w =
            RestoreWriter::new(target.path().to_str().unwrap(), &[7; 32], Overwrite::Always)
                .unwrap();
        let (entry, mut chunks) = file_entry("db", &data);
        chunks[0].payload.clear();
        w.entry(entry);
        for c in chunks {
            w.chunk(c);
        }
        assert_eq!(w.finish().0.files_failed, 1);
    }

    #[test]
    fn hostile_paths_and_planted_links_never_escape_the_target() {
        let outside = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("link")).unwrap();
        let mut w =
            RestoreWriter::new(target.path().to_str().unwrap(), &[7; 32], Overwrite::Always)
                .unwrap();
        for path in [
            "../escape",
            "/abs",
            "a/../../escape",
            "link/inside",
            "a//b",
            "",
        ] {
            let (entry, chunks) = file_entry(path, b"x");
            w.entry(entry);
            for c in chunks {
                w.chunk(c);
            }
        }
        let (summary, failed, _) = w.finish();
        assert_eq!(summary.files_verified, 0);
        assert_eq!(failed.len(), 6, "{failed:?}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(!target.path().parent().unwrap().join("escape").exists());
    }
}
