//! Restic's output formats: `restic version` text and the `--json` documents and
//! JSON lines of backup, snapshots, ls, restore, check, forget and stats.
//!
//! Parsing is tolerant by design, because restic adds fields and message types
//! between versions (its documentation says so): unknown fields and unknown message
//! types are ignored, optional fields may be missing or `null`, the message type is
//! read from `message_type` (also `messageType`) or, for `ls` before 0.17, from
//! `struct_type`. Only what the adapter needs to be right is strict: a summary, a
//! snapshot list or a listing that does not parse is an error, never a guess.
//! Nothing here panics on any input.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A restic version as printed by `restic version`, such as `0.14.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResticVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl ResticVersion {
    /// The oldest restic the adapter drives: 0.12 is the first with `--json` for
    /// `backup`, `ls`, `forget` and `stats` in the shape parsed here.
    pub const MINIMUM: ResticVersion = ResticVersion::new(0, 12, 0);

    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        ResticVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses the first line of `restic version`, such as
    /// `restic 0.14.0 compiled with go1.19.8 on linux/amd64` or
    /// `restic 0.16.4-dev (compiled manually) compiled with go1.22 on linux/amd64`.
    /// Returns `None` for anything else.
    pub fn parse(output: &str) -> Option<ResticVersion> {
        let mut words = output.split_whitespace();
        if words.next()? != "restic" {
            return None;
        }
        let number = words.next()?.trim_start_matches('v');
        // A pre-release or build suffix ("-dev", "+ds") does not change the release.
        let number = number.split(['-', '+']).next()?;
        let mut parts = number.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(ResticVersion::new(major, minor, patch))
    }
}

impl fmt::Display for ResticVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A restic snapshot id (64 hex digits; restic also accepts unique prefixes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// Wraps an id as restic printed it.
    pub fn new(id: impl Into<String>) -> Self {
        SnapshotId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 8-character form restic shows in its tables.
    pub fn short(&self) -> &str {
        self.0.get(..8).unwrap_or(&self.0)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One snapshot as `restic snapshots --json` (and `forget --json`) describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResticSnapshot {
    /// Full id.
    pub id: SnapshotId,
    /// Short id (derived from `id` when restic omits it).
    pub short_id: String,
    /// When the backup started.
    pub time: DateTime<Utc>,
    /// Host the backup was taken on (restic's `hostname`).
    pub host: String,
    /// User restic ran as.
    pub username: String,
    /// The backed-up paths.
    pub paths: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// The snapshot this one was based on.
    pub parent: Option<SnapshotId>,
    /// For a snapshot that `copy` brought from another repository, the id it has
    /// there (restic ≥ 0.10 records it).
    pub original: Option<SnapshotId>,
    /// Root tree blob id.
    pub tree: String,
    /// Exclude patterns the backup used (restic ≥ 0.17 records them).
    pub excludes: Vec<String>,
    /// The restic that wrote it (restic ≥ 0.17 records it).
    pub program_version: Option<String>,
}

#[derive(Deserialize)]
struct RawSnapshot {
    id: Option<String>,
    short_id: Option<String>,
    time: DateTime<Utc>,
    #[serde(default, deserialize_with = "null_default")]
    hostname: String,
    #[serde(default, deserialize_with = "null_default")]
    username: String,
    #[serde(default, deserialize_with = "null_default")]
    paths: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    tags: Vec<String>,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    original: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    tree: String,
    #[serde(default, deserialize_with = "null_default")]
    excludes: Vec<String>,
    #[serde(default)]
    program_version: Option<String>,
}

impl RawSnapshot {
    fn into_snapshot(self) -> Result<ResticSnapshot, String> {
        let id = SnapshotId(self.id.ok_or("snapshot without an id")?);
        let short_id = self.short_id.unwrap_or_else(|| id.short().to_string());
        Ok(ResticSnapshot {
            id,
            short_id,
            time: self.time,
            host: self.hostname,
            username: self.username,
            paths: self.paths,
            tags: self.tags,
            parent: self.parent.filter(|p| !p.is_empty()).map(SnapshotId),
            original: self.original.filter(|o| !o.is_empty()).map(SnapshotId),
            tree: self.tree,
            excludes: self.excludes,
            program_version: self.program_version,
        })
    }
}

/// Live progress of a backup, from restic's `status` lines.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BackupProgress {
    /// Fraction done, 0.0 to 1.0 (restic's `percent_done` is a fraction).
    pub percent_done: f64,
    /// Seconds since the backup started.
    pub seconds_elapsed: u64,
    /// Restic's estimate of the seconds left, when it has one.
    pub seconds_remaining: Option<u64>,
    /// Files finished.
    pub files_done: u64,
    /// Files found so far.
    pub total_files: u64,
    /// Bytes finished.
    pub bytes_done: u64,
    /// Bytes found so far.
    pub total_bytes: u64,
    /// Errors so far.
    pub error_count: u64,
    /// Files being read right now.
    #[serde(deserialize_with = "null_default")]
    pub current_files: Vec<String>,
}

/// Restic's account of a finished backup (its `summary` line).
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    /// The new snapshot; `None` when restic skipped creating one (dry run, or
    /// `--skip-if-unchanged` in restic ≥ 0.17).
    pub snapshot_id: Option<SnapshotId>,
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files changed since the parent snapshot.
    pub files_changed: u64,
    /// Files unchanged since the parent snapshot.
    pub files_unmodified: u64,
    /// Directories not in the parent snapshot.
    pub dirs_new: u64,
    /// Directories changed since the parent snapshot.
    pub dirs_changed: u64,
    /// Directories unchanged since the parent snapshot.
    pub dirs_unmodified: u64,
    /// Data blobs added.
    pub data_blobs: i64,
    /// Tree blobs added.
    pub tree_blobs: i64,
    /// Bytes added to the repository, before compression.
    pub data_added: u64,
    /// Bytes added after compression (restic ≥ 0.16 reports it).
    pub data_added_packed: Option<u64>,
    /// Files processed.
    pub total_files_processed: u64,
    /// Bytes processed.
    pub total_bytes_processed: u64,
    /// Restic's own measure of the run time.
    pub total_duration: Duration,
    /// When the backup started (restic ≥ 0.17 reports it).
    pub backup_start: Option<DateTime<Utc>>,
    /// When the backup ended (restic ≥ 0.17 reports it).
    pub backup_end: Option<DateTime<Utc>>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawBackupSummary {
    snapshot_id: Option<String>,
    files_new: u64,
    files_changed: u64,
    files_unmodified: u64,
    dirs_new: u64,
    dirs_changed: u64,
    dirs_unmodified: u64,
    data_blobs: i64,
    tree_blobs: i64,
    data_added: u64,
    data_added_packed: Option<u64>,
    total_files_processed: u64,
    total_bytes_processed: u64,
    total_duration: f64,
    #[serde(deserialize_with = "lenient_time")]
    backup_start: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "lenient_time")]
    backup_end: Option<DateTime<Utc>>,
    dry_run: bool,
}

impl From<RawBackupSummary> for BackupSummary {
    fn from(raw: RawBackupSummary) -> Self {
        BackupSummary {
            snapshot_id: raw.snapshot_id.filter(|s| !s.is_empty()).map(SnapshotId),
            files_new: raw.files_new,
            files_changed: raw.files_changed,
            files_unmodified: raw.files_unmodified,
            dirs_new: raw.dirs_new,
            dirs_changed: raw.dirs_changed,
            dirs_unmodified: raw.dirs_unmodified,
            data_blobs: raw.data_blobs,
            tree_blobs: raw.tree_blobs,
            data_added: raw.data_added,
            data_added_packed: raw.data_added_packed,
            total_files_processed: raw.total_files_processed,
            total_bytes_processed: raw.total_bytes_processed,
            total_duration: Duration::try_from_secs_f64(raw.total_duration).unwrap_or_default(),
            backup_start: raw.backup_start,
            backup_end: raw.backup_end,
            dry_run: raw.dry_run,
        }
    }
}

/// A file restic could not back up or restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file (restic's `item`).
    pub path: String,
    /// What went wrong (scrubbed of the repository password).
    pub message: String,
    /// What restic was doing (`archival`, `scan`, `restore`, …), when it says.
    pub during: Option<String>,
}

/// One stdout line of `backup --json`.
#[derive(Debug, PartialEq)]
pub(crate) enum BackupLine {
    Status(BackupProgress),
    Summary(BackupSummary),
    /// Anything else: verbose status, message types of newer versions, text.
    Other,
}

/// Parses one stdout line of `backup --json`. Only a `summary` that does not parse
/// is an error: a run's result must not be guessed, while a malformed progress line
/// only costs one progress update.
pub(crate) fn parse_backup_line(line: &str) -> Result<BackupLine, String> {
    let Some(value) = json_object(line) else {
        return Ok(BackupLine::Other);
    };
    match message_type(&value) {
        Some("status") => Ok(serde_json::from_value(value)
            .map(BackupLine::Status)
            .unwrap_or(BackupLine::Other)),
        Some("summary") => serde_json::from_value::<RawBackupSummary>(value)
            .map(|raw| BackupLine::Summary(raw.into()))
            .map_err(|e| format!("invalid backup summary: {e}")),
        _ => Ok(BackupLine::Other),
    }
}

/// One stderr line of restic, which in JSON mode carries per-file errors and, in
/// newer versions, the fatal error as an `exit_error` message.
#[derive(Debug, PartialEq)]
pub(crate) enum StderrLine {
    /// A per-file error (`backup`, `restore`).
    FileError(FileError),
    /// A message to keep as text: plain text, `check`'s JSON errors, `exit_error`.
    Text(String),
}

/// Classifies one stderr line. JSON errors become [`StderrLine::FileError`] when they
/// name an item, otherwise their message is kept as text; restic 0.14's restore
/// prints per-file errors as `ignoring error for PATH: MESSAGE`.
pub(crate) fn parse_stderr_line(line: &str) -> StderrLine {
    if let Some(value) = json_object(line) {
        let message = error_message(&value);
        if let Some(item) = value.get("item").and_then(Value::as_str) {
            return StderrLine::FileError(FileError {
                path: item.to_string(),
                message,
                during: value
                    .get("during")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
        return StderrLine::Text(message);
    }
    if let Some(path) = line.strip_suffix(" does not exist, skipping") {
        // Restic 0.14 skips a missing backup source with only this warning and exit 0.
        return StderrLine::FileError(FileError {
            path: path.to_string(),
            message: "does not exist".to_string(),
            during: Some("scan".to_string()),
        });
    }
    if let Some(rest) = line.strip_prefix("ignoring error for ")
        && let Some((path, message)) = rest.split_once(": ")
    {
        return StderrLine::FileError(FileError {
            path: path.to_string(),
            message: message.to_string(),
            during: Some("restore".to_string()),
        });
    }
    StderrLine::Text(line.to_string())
}

/// The message of a JSON error line in any of the shapes restic has used: a top-level
/// `message` (check, exit_error), `error.message` (≥ 0.15), a Go `*PathError`
/// serialised as `{"Op","Path","Err"}` (0.14), or a plain string.
fn error_message(value: &Value) -> String {
    if let Some(m) = value.get("message").and_then(Value::as_str) {
        return m.to_string();
    }
    match value.get("error") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(obj)) => {
            if let Some(m) = obj.get("message").and_then(Value::as_str) {
                return m.to_string();
            }
            let op = obj.get("Op").and_then(Value::as_str);
            let path = obj.get("Path").and_then(Value::as_str);
            let errno = obj.get("Err").and_then(Value::as_i64);
            match (op, path, errno.and_then(|n| i32::try_from(n).ok())) {
                (Some(op), Some(path), Some(errno)) => {
                    format!("{op} {path}: {}", std::io::Error::from_raw_os_error(errno))
                }
                _ => Value::Object(obj.clone()).to_string(),
            }
        }
        Some(other) => other.to_string(),
        None => value.to_string(),
    }
}

/// The kind of a node in a snapshot listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeType {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Block device.
    Dev,
    /// Character device.
    CharDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Something restic could not classify when backing up.
    Irregular,
    /// A type a newer restic introduced.
    Other(String),
}

impl NodeType {
    fn from_restic(s: &str) -> NodeType {
        match s {
            "file" => NodeType::File,
            "dir" => NodeType::Dir,
            "symlink" => NodeType::Symlink,
            "dev" => NodeType::Dev,
            "chardev" => NodeType::CharDev,
            "fifo" => NodeType::Fifo,
            "socket" => NodeType::Socket,
            "irregular" => NodeType::Irregular,
            other => NodeType::Other(other.to_string()),
        }
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeType::File => "file",
            NodeType::Dir => "dir",
            NodeType::Symlink => "symlink",
            NodeType::Dev => "dev",
            NodeType::CharDev => "chardev",
            NodeType::Fifo => "fifo",
            NodeType::Socket => "socket",
            NodeType::Irregular => "irregular",
            NodeType::Other(s) => s,
        })
    }
}

/// One entry of a snapshot, as `restic ls --json` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResticNode {
    /// Path inside the snapshot, starting with `/`.
    pub path: String,
    /// The last path component.
    pub name: String,
    /// File, directory, symlink, …
    pub node_type: NodeType,
    /// Size in bytes (files only; 0 otherwise).
    pub size: u64,
    /// Go `os.FileMode` bits as restic stores them.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Option<DateTime<Utc>>,
    /// Symlink target, when restic lists it.
    pub link_target: Option<String>,
}

impl ResticNode {
    /// The permission bits in Unix form (`0o7777`): Go's `os.FileMode`, as restic
    /// records it, keeps setuid, setgid and sticky in high bits of its own.
    #[must_use]
    pub fn permissions(&self) -> u32 {
        const GO_SETUID: u32 = 1 << 23;
        const GO_SETGID: u32 = 1 << 22;
        const GO_STICKY: u32 = 1 << 20;
        let Some(mode) = self.mode else {
            return 0;
        };
        let mut bits = mode & 0o777;
        for (go, unix) in [
            (GO_SETUID, 0o4000),
            (GO_SETGID, 0o2000),
            (GO_STICKY, 0o1000),
        ] {
            if mode & go != 0 {
                bits |= unix;
            }
        }
        bits
    }
}

#[derive(Deserialize)]
struct RawNode {
    path: String,
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(rename = "type")]
    node_type: String,
    #[serde(default, deserialize_with = "null_default")]
    size: u64,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    uid: u32,
    #[serde(default, deserialize_with = "null_default")]
    gid: u32,
    #[serde(default, deserialize_with = "lenient_time")]
    mtime: Option<DateTime<Utc>>,
    #[serde(default, alias = "linktarget")]
    link_target: Option<String>,
}

/// One line of `ls --json`.
#[derive(Debug, PartialEq)]
pub(crate) enum LsLine {
    /// The snapshot header, with the snapshot's full id.
    Snapshot(Option<SnapshotId>),
    Node(ResticNode),
    /// Blank lines and message types of newer versions.
    Skip,
}

/// Parses one stdout line of `ls --json`. Strict: the listing is what a restore is
/// verified against, so a line that is not understood is an error, not a gap.
pub(crate) fn parse_ls_line(line: &str) -> Result<LsLine, String> {
    if line.trim().is_empty() {
        return Ok(LsLine::Skip);
    }
    let value = json_object(line).ok_or("not a JSON object")?;
    let kind = message_type(&value)
        .or_else(|| value.get("struct_type").and_then(Value::as_str))
        .map(str::to_string)
        .or_else(|| {
            // Before restic added type fields, the shape told them apart.
            if value.get("tree").is_some() {
                Some("snapshot".to_string())
            } else if value.get("type").is_some() {
                Some("node".to_string())
            } else {
                None
            }
        });
    match kind.as_deref() {
        Some("snapshot") => Ok(LsLine::Snapshot(
            value.get("id").and_then(Value::as_str).map(SnapshotId::new),
        )),
        Some("node") => {
            let raw: RawNode =
                serde_json::from_value(value).map_err(|e| format!("invalid node: {e}"))?;
            Ok(LsLine::Node(ResticNode {
                path: raw.path,
                name: raw.name,
                node_type: NodeType::from_restic(&raw.node_type),
                size: raw.size,
                mode: raw.mode,
                uid: raw.uid,
                gid: raw.gid,
                mtime: raw.mtime,
                link_target: raw.link_target.filter(|t| !t.is_empty()),
            }))
        }
        Some(_) => Ok(LsLine::Skip),
        None => Err("neither a snapshot nor a node".to_string()),
    }
}

/// Parses `snapshots --json`, oldest first.
pub(crate) fn parse_snapshots(doc: &str) -> Result<Vec<ResticSnapshot>, String> {
    let raw: Vec<RawSnapshot> = first_document(doc, '[')?;
    let mut snapshots = raw
        .into_iter()
        .map(RawSnapshot::into_snapshot)
        .collect::<Result<Vec<_>, _>>()?;
    sort_oldest_first(&mut snapshots);
    Ok(snapshots)
}

fn sort_oldest_first(snapshots: &mut [ResticSnapshot]) {
    snapshots.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
}

/// What `forget` decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ForgetOutcome {
    /// Snapshots the policy keeps, oldest first.
    pub kept: Vec<ResticSnapshot>,
    /// Snapshots removed, oldest first.
    pub removed: Vec<ResticSnapshot>,
    /// Whether unreferenced data was pruned afterwards.
    pub pruned: bool,
}

#[derive(Deserialize)]
struct RawForgetGroup {
    #[serde(default, deserialize_with = "null_default")]
    keep: Vec<RawSnapshot>,
    #[serde(default, deserialize_with = "null_default")]
    remove: Vec<RawSnapshot>,
}

/// Parses `forget --json`: one JSON array of groups, which `--prune` follows with
/// plain text. Restic prints nothing when there was nothing to consider.
pub(crate) fn parse_forget(doc: &str, pruned: bool) -> Result<ForgetOutcome, String> {
    if !doc.lines().any(|l| l.trim_start().starts_with('[')) {
        return Ok(ForgetOutcome {
            pruned,
            ..ForgetOutcome::default()
        });
    }
    let groups: Vec<RawForgetGroup> = first_document(doc, '[')?;
    let mut outcome = ForgetOutcome {
        pruned,
        ..ForgetOutcome::default()
    };
    for group in groups {
        for raw in group.keep {
            outcome.kept.push(raw.into_snapshot()?);
        }
        for raw in group.remove {
            outcome.removed.push(raw.into_snapshot()?);
        }
    }
    sort_oldest_first(&mut outcome.kept);
    sort_oldest_first(&mut outcome.removed);
    Ok(outcome)
}

/// Repository statistics from `stats --json --mode raw-data`, as restic reports them.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct ResticStats {
    /// Bytes stored in the repository (after compression, when restic compresses).
    pub total_size: u64,
    /// Files counted (restic reports 0 in raw-data mode; newer versions omit it).
    pub total_file_count: u64,
    /// Blobs stored.
    pub total_blob_count: Option<u64>,
    /// Snapshots counted.
    pub snapshots_count: Option<u64>,
    /// Bytes the blobs would take uncompressed (restic ≥ 0.14 with compression).
    pub total_uncompressed_size: Option<u64>,
    /// Compression ratio of the compressed data.
    pub compression_ratio: Option<f64>,
    /// Percentage of data already compressed.
    pub compression_progress: Option<f64>,
    /// Space saved by compression, in percent.
    pub compression_space_saving: Option<f64>,
}

/// Parses `stats --json`.
pub(crate) fn parse_stats(doc: &str) -> Result<ResticStats, String> {
    first_document(doc, '{')
}

/// The JSON `summary` of `check --json` (restic ≥ 0.17).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CheckSummary {
    pub num_errors: u64,
    #[serde(deserialize_with = "null_default")]
    pub broken_packs: Vec<String>,
}

/// One stdout line of `check`: restic 0.14 prints text, newer versions a JSON summary.
#[derive(Debug, PartialEq)]
pub(crate) enum CheckLine {
    NoErrorsFound,
    Summary(CheckSummary),
    Other,
}

pub(crate) fn parse_check_line(line: &str) -> CheckLine {
    if let Some(value) = json_object(line) {
        if message_type(&value) == Some("summary")
            && let Ok(summary) = serde_json::from_value(value)
        {
            return CheckLine::Summary(summary);
        }
        return CheckLine::Other;
    }
    if line.trim() == "no errors were found" {
        return CheckLine::NoErrorsFound;
    }
    CheckLine::Other
}

/// Restic's account of a restore (restic ≥ 0.16 with `--json`; 0.14 prints text).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct RestoreSummary {
    /// Seconds the restore took.
    pub seconds_elapsed: u64,
    /// Files in the restore set.
    pub total_files: u64,
    /// Files written.
    pub files_restored: u64,
    /// Files skipped because they were already there.
    pub files_skipped: u64,
    /// Bytes in the restore set.
    pub total_bytes: u64,
    /// Bytes written.
    pub bytes_restored: u64,
    /// Bytes skipped.
    pub bytes_skipped: u64,
}

/// Parses one stdout line of `restore --json`; returns the summary when it is one.
/// Status lines and restic 0.14's plain text are ignored.
pub(crate) fn parse_restore_line(line: &str) -> Option<RestoreSummary> {
    let value = json_object(line)?;
    if message_type(&value) != Some("summary") {
        return None;
    }
    serde_json::from_value(value).ok()
}

/// The line as a JSON object, when it is one.
fn json_object(line: &str) -> Option<Value> {
    let trimmed = line.trim();
    if !trimmed.starts_with('{') {
        return None;
    }
    serde_json::from_str::<Value>(trimmed)
        .ok()
        .filter(Value::is_object)
}

/// The message type in either spelling restic has used.
fn message_type(value: &Value) -> Option<&str> {
    value
        .get("message_type")
        .or_else(|| value.get("messageType"))
        .and_then(Value::as_str)
}

/// Deserialises the first JSON document in `doc` that starts a line with `open`,
/// ignoring text before it (warnings) and after it (`forget --prune`'s report).
fn first_document<T: DeserializeOwned>(doc: &str, open: char) -> Result<T, String> {
    let mut offset = 0;
    for line in doc.split_inclusive('\n') {
        if line.trim_start().starts_with(open) {
            let start = offset + (line.len() - line.trim_start().len());
            let rest = doc.get(start..).unwrap_or_default();
            return serde_json::Deserializer::from_str(rest)
                .into_iter::<T>()
                .next()
                .unwrap_or_else(|| Err(serde::de::Error::custom("empty document")))
                .map_err(|e| format!("invalid JSON document: {e}"));
        }
        offset += line.len();
    }
    Err(format!("no JSON document starting with `{open}`"))
}

fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An optional timestamp that tolerates formats it cannot read (it is informative).
fn lenient_time<'de, D>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error>
where
    D: Deserializer<'de>,
{
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(value
        .as_ref()
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_across_releases_and_reject_garbage() {
        let v014 = ResticVersion::parse(include_str!("testdata/version_0_14.txt"));
        assert_eq!(v014, Some(ResticVersion::new(0, 14, 0)));
        assert_eq!(
            ResticVersion::parse("restic 0.14.0 compiled with go1.19.8 on linux/amd64"),
            Some(ResticVersion::new(0, 14, 0))
        );
        assert_eq!(
            ResticVersion::parse("restic 0.17.3 compiled with go1.23.1 on linux/amd64\n"),
            Some(ResticVersion::new(0, 17, 3))
        );
        assert_eq!(
            ResticVersion::parse(
                "restic 0.16.4-dev (compiled manually) compiled with go1.22.0 on linux/amd64"
            ),
            Some(ResticVersion::new(0, 16, 4))
        );
        for garbage in [
            "",
            "garbage",
            "restic",
            "restic x.y.z compiled",
            "rustic 0.14.0",
            "restic 0.14.0.1",
            "restic 99999999999.1.0",
            "\u{0}\u{fffd}",
        ] {
            assert_eq!(ResticVersion::parse(garbage), None, "{garbage:?}");
        }
        assert_eq!(ResticVersion::new(0, 17, 3).to_string(), "0.17.3");
        assert!(ResticVersion::new(0, 11, 9) < ResticVersion::MINIMUM);
        assert!(ResticVersion::new(0, 14, 0) >= ResticVersion::MINIMUM);
    }

    fn backup_lines(text: &str) -> (Vec<BackupProgress>, Vec<BackupSummary>) {
        let mut statuses = Vec::new();
        let mut summaries = Vec::new();
        for line in text.lines() {
            match parse_backup_line(line) {
                Ok(BackupLine::Status(s)) => statuses.push(s),
                Ok(BackupLine::Summary(s)) => summaries.push(s),
                Ok(BackupLine::Other) => {}
                Err(e) => panic!("{line}: {e}"),
            }
        }
        (statuses, summaries)
    }

    #[test]
    fn backup_output_of_restic_0_14_parses() {
        let (statuses, summaries) = backup_lines(include_str!("testdata/backup_0_14.jsonl"));
        assert!(statuses.len() >= 2);
        assert!(statuses.iter().any(|s| !s.current_files.is_empty()));
        let last = statuses.last().map(|s| s.percent_done);
        assert_eq!(last, Some(1.0));
        let [summary] = summaries.as_slice() else {
            panic!("one summary expected, got {summaries:?}")
        };
        assert_eq!(summary.files_new, 3);
        assert_eq!(summary.dirs_new, 3);
        assert_eq!(summary.total_files_processed, 3);
        assert_eq!(summary.total_bytes_processed, 3_005_006);
        assert!(summary.total_duration > Duration::ZERO);
        assert_eq!(
            summary.snapshot_id.as_ref().map(|s| s.as_str().len()),
            Some(8)
        );
        assert_eq!(summary.backup_start, None);
        assert_eq!(summary.data_added_packed, None);

        // A run that exited 3 still ends with a summary and a snapshot.
        let (_, partial) = backup_lines(include_str!("testdata/backup_partial_0_14.jsonl"));
        assert_eq!(partial.len(), 1);
        assert!(partial[0].snapshot_id.is_some());
    }

    #[test]
    fn backup_output_of_restic_0_17_parses() {
        let (statuses, summaries) = backup_lines(include_str!("testdata/backup_0_17.jsonl"));
        assert_eq!(statuses.len(), 2);
        assert_eq!(statuses[0].seconds_remaining, Some(5));
        assert_eq!(statuses[0].error_count, 1);
        let [summary] = summaries.as_slice() else {
            panic!("one summary expected")
        };
        assert_eq!(summary.files_changed, 1);
        assert_eq!(summary.data_added_packed, Some(60_000_000));
        let start = summary.backup_start.map(|t| t.to_rfc3339());
        assert_eq!(
            start.as_deref(),
            Some("2024-11-02T03:00:00.123456789+00:00")
        );
        assert!(summary.backup_end > summary.backup_start);
        assert_eq!(summary.total_duration, Duration::from_millis(7376));
    }

    #[test]
    fn backup_lines_tolerate_text_unknown_types_and_bad_status() {
        for line in [
            "",
            "using parent snapshot 1234abcd",
            "[1, 2]",
            r#"{"message_type":"verbose_status","action":"new","item":"/a"}"#,
            r#"{"message_type":"brand_new","x":1}"#,
            r#"{"message_type":"status","percent_done":"half"}"#,
            r#"{"messageType":"something"}"#,
            "{ truncated",
        ] {
            assert_eq!(parse_backup_line(line), Ok(BackupLine::Other), "{line}");
        }
        let camel = r#"{"messageType":"status","percent_done":0.5}"#;
        assert!(matches!(
            parse_backup_line(camel),
            Ok(BackupLine::Status(s)) if s.percent_done == 0.5
        ));
        let minimal = r#"{"message_type":"summary"}"#;
        assert!(matches!(
            parse_backup_line(minimal),
            Ok(BackupLine::Summary(s)) if s.snapshot_id.is_none()
        ));
        let broken = r#"{"message_type":"summary","files_new":"many"}"#;
        assert!(parse_backup_line(broken).is_err());
        let negative = r#"{"message_type":"summary","total_duration":-3,"snapshot_id":"ab"}"#;
        assert!(matches!(
            parse_backup_line(negative),
            Ok(BackupLine::Summary(s)) if s.total_duration == Duration::ZERO
        ));
    }

    #[test]
    fn stderr_errors_of_both_formats_parse() {
        let captured = include_str!("testdata/backup_partial_0_14.stderr");
        let lines: Vec<_> = captured.lines().map(parse_stderr_line).collect();
        let StderrLine::FileError(err) = &lines[0] else {
            panic!("file error expected: {lines:?}")
        };
        assert_eq!(err.path, "/proc/self/mem");
        assert_eq!(err.during.as_deref(), Some("archival"));
        assert!(
            err.message.starts_with("read /proc/self/mem: "),
            "{}",
            err.message
        );
        assert_eq!(
            lines[1],
            StderrLine::Text("Warning: at least one source file could not be read".into())
        );

        let newer = include_str!("testdata/backup_0_17.stderr");
        let lines: Vec<_> = newer.lines().map(parse_stderr_line).collect();
        assert_eq!(
            lines[0],
            StderrLine::FileError(FileError {
                path: "/data/secret".into(),
                message: "open /data/secret: permission denied".into(),
                during: Some("archival".into()),
            })
        );
        assert_eq!(
            lines[1],
            StderrLine::Text("Fatal: unable to save snapshot: disk full".into())
        );

        let restore = include_str!("testdata/restore_damaged_0_14.stderr");
        let first = restore.lines().next().map(parse_stderr_line);
        assert_eq!(
            first,
            Some(StderrLine::FileError(FileError {
                path: "/big/r.bin".into(),
                message: "ciphertext verification failed".into(),
                during: Some("restore".into()),
            }))
        );
        assert_eq!(
            parse_stderr_line("/srv/gone does not exist, skipping"),
            StderrLine::FileError(FileError {
                path: "/srv/gone".into(),
                message: "does not exist".into(),
                during: Some("scan".into()),
            })
        );
        assert_eq!(
            parse_stderr_line(r#"{"message_type":"error","error":"plain"}"#),
            StderrLine::Text("plain".into())
        );
        assert_eq!(
            parse_stderr_line(r#"{"message_type":"error","error":{"weird":1},"item":"/x"}"#),
            StderrLine::FileError(FileError {
                path: "/x".into(),
                message: r#"{"weird":1}"#.into(),
                during: None,
            })
        );
    }

    #[test]
    fn snapshots_of_both_formats_parse_oldest_first() {
        let old = parse_snapshots(include_str!("testdata/snapshots_0_14.json"));
        let old = old.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.len(), 2);
        assert!(old[0].time < old[1].time);
        assert_eq!(old[0].host, "web1");
        assert_eq!(old[0].tags, vec!["daily".to_string()]);
        assert!(old[1].tags.is_empty());
        assert_eq!(old[0].id.as_str().len(), 64);
        assert_eq!(old[0].short_id, old[0].id.short());
        assert_eq!(old[0].original, None);

        // A copy names the snapshot it was copied from.
        let copied = parse_snapshots(include_str!("testdata/snapshots_copied_0_14.json"));
        let copied = copied.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            copied[0].original.as_ref().map(SnapshotId::as_str),
            Some("c358983bf821b22456bd5ed9931a443a10828e5ff2e3906ef5c4a8888f6dea08")
        );
        assert_eq!(copied[0].short_id, "2d903530");

        let new = parse_snapshots(include_str!("testdata/snapshots_0_17.json"));
        let new = new.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new.len(), 2);
        // Listed newest first in the file; returned oldest first, times normalised.
        assert_eq!(new[0].short_id, "0a1b2c3d");
        assert_eq!(new[0].time.to_rfc3339(), "2024-11-01T17:00:00+00:00");
        assert_eq!(
            new[1].parent.as_ref().map(SnapshotId::short),
            Some("0a1b2c3d")
        );
        assert_eq!(new[1].program_version.as_deref(), Some("restic 0.17.3"));
        assert_eq!(new[1].excludes, vec!["*.tmp".to_string()]);

        assert_eq!(parse_snapshots("[]"), Ok(Vec::new()));
        assert!(parse_snapshots("").is_err());
        assert!(parse_snapshots("[{\"id\":\"ab\"}]").is_err());
        assert!(parse_snapshots("[{\"time\":\"2024-01-01T00:00:00Z\"}]").is_err());
    }

    fn ls_lines(text: &str) -> (Vec<Option<SnapshotId>>, Vec<ResticNode>) {
        let mut snapshots = Vec::new();
        let mut nodes = Vec::new();
        for line in text.lines() {
            match parse_ls_line(line) {
                Ok(LsLine::Snapshot(id)) => snapshots.push(id),
                Ok(LsLine::Node(n)) => nodes.push(n),
                Ok(LsLine::Skip) => {}
                Err(e) => panic!("{line}: {e}"),
            }
        }
        (snapshots, nodes)
    }

    #[test]
    fn ls_output_of_both_formats_parses() {
        let (snaps, nodes) = ls_lines(include_str!("testdata/ls_0_14.jsonl"));
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].as_ref().map(|s| s.as_str().len()), Some(64));
        let file = nodes.iter().find(|n| n.path == "/src/sub/b.bin");
        let file = file.unwrap_or_else(|| panic!("b.bin listed: {nodes:?}"));
        assert_eq!(file.node_type, NodeType::File);
        assert_eq!(file.size, 5000);
        assert_eq!(file.mode, Some(0o644));
        assert!(file.mtime.is_some());
        assert!(nodes.iter().any(|n| n.node_type == NodeType::Symlink));
        assert!(
            nodes
                .iter()
                .any(|n| n.node_type == NodeType::Dir && n.size == 0)
        );

        let (snaps, nodes) = ls_lines(include_str!("testdata/ls_0_17.jsonl"));
        assert_eq!(snaps.len(), 1);
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[2].link_target.as_deref(), Some("a.txt"));
        assert_eq!(nodes[3].node_type, NodeType::Other("whiteout".into()));

        assert_eq!(parse_ls_line("   "), Ok(LsLine::Skip));
        assert_eq!(
            parse_ls_line(r#"{"message_type":"progress","percent":3}"#),
            Ok(LsLine::Skip)
        );
        assert!(parse_ls_line("snapshot 1234 of [/src]").is_err());
        assert!(parse_ls_line(r#"{"struct_type":"node","name":"a"}"#).is_err());
        assert!(parse_ls_line(r#"{"hello":"world"}"#).is_err());
        // Nodes without type fields (very old restic) are recognised by shape.
        assert!(matches!(
            parse_ls_line(r#"{"path":"/a","type":"file","size":null,"mtime":"bad"}"#),
            Ok(LsLine::Node(n)) if n.size == 0 && n.mtime.is_none()
        ));
    }

    #[test]
    fn go_file_modes_become_unix_permission_bits_and_owners_are_read() {
        let node = |line: &str| match parse_ls_line(line) {
            Ok(LsLine::Node(node)) => node,
            other => panic!("{line}: {other:?}"),
        };
        // A directory as restic 0.14 lists it (Go's ModeDir is the top bit).
        let dir =
            node(r#"{"name":"a","type":"dir","path":"/a","uid":1000,"gid":33,"mode":2147484141}"#);
        assert_eq!((dir.permissions(), dir.uid, dir.gid), (0o755, 1000, 33));
        let setuid = node(&format!(
            r#"{{"name":"su","type":"file","path":"/a/su","mode":{}}}"#,
            (1u32 << 23) | 0o755
        ));
        assert_eq!((setuid.permissions(), setuid.uid), (0o4755, 0));
        let sticky = node(&format!(
            r#"{{"name":"tmp","type":"dir","path":"/tmp","mode":{}}}"#,
            (1u32 << 31) | (1 << 20) | (1 << 22) | 0o777
        ));
        assert_eq!(sticky.permissions(), 0o3777);
        let unknown = node(r#"{"name":"x","type":"file","path":"/x","uid":null}"#);
        assert_eq!((unknown.permissions(), unknown.uid), (0, 0));
    }

    #[test]
    fn forget_output_of_both_formats_parses() {
        let old = parse_forget(include_str!("testdata/forget_prune_0_14.txt"), true);
        let old = old.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.kept.len(), 2);
        assert_eq!(old.removed.len(), 1);
        assert!(old.removed[0].time < old.kept[1].time);
        assert!(old.pruned);

        let new = parse_forget(include_str!("testdata/forget_0_17.json"), false);
        let new = new.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new.kept.len(), 1);
        assert_eq!(new.removed.len(), 2);
        assert!(new.removed[0].time < new.removed[1].time);

        assert_eq!(parse_forget("", false), Ok(ForgetOutcome::default()));
        assert!(parse_forget("[{\"keep\": 3}]", false).is_err());
    }

    #[test]
    fn stats_of_both_formats_parse() {
        let old = parse_stats(include_str!("testdata/stats_raw_0_14.json"));
        let old = old.unwrap_or_else(|e| panic!("{e}"));
        assert!(old.total_size > 3_000_000);
        assert_eq!(old.total_file_count, 0);
        assert_eq!(old.snapshots_count, Some(2));
        let new = parse_stats(include_str!("testdata/stats_0_17.json"));
        let new = new.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new.total_uncompressed_size, Some(3_020_000));
        assert_eq!(new.compression_ratio, Some(1.5));
        assert!(parse_stats("Fatal: nope").is_err());
    }

    #[test]
    fn check_output_of_both_formats_parses() {
        let text = include_str!("testdata/check_ok_0_14.stdout");
        assert!(
            text.lines()
                .any(|l| parse_check_line(l) == CheckLine::NoErrorsFound)
        );
        let json = include_str!("testdata/check_0_17.jsonl");
        let summary = json.lines().find_map(|l| match parse_check_line(l) {
            CheckLine::Summary(s) => Some(s),
            _ => None,
        });
        let summary = summary.unwrap_or_else(|| panic!("summary expected"));
        assert_eq!(summary.num_errors, 1);
        assert_eq!(summary.broken_packs.len(), 1);
        let err = include_str!("testdata/check_0_17.stderr").lines().next();
        assert!(matches!(
            err.map(parse_stderr_line),
            Some(StderrLine::Text(m)) if m.starts_with("Pack ID does not match")
        ));
    }

    #[test]
    fn restore_output_of_both_formats_parses() {
        let old = include_str!("testdata/restore_damaged_0_14.stdout");
        assert!(old.lines().all(|l| parse_restore_line(l).is_none()));
        let new = include_str!("testdata/restore_0_17.jsonl");
        let summaries: Vec<_> = new.lines().filter_map(parse_restore_line).collect();
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].files_restored, 3);
        assert_eq!(summaries[0].bytes_restored, 3_005_006);
        let err = include_str!("testdata/restore_0_17.stderr").lines().next();
        assert!(matches!(
            err.map(parse_stderr_line),
            Some(StderrLine::FileError(e)) if e.path == "/big/r.bin" && e.during.as_deref() == Some("restore")
        ));
    }
}
