//! Driving existing restic repositories through the `restic` binary and its JSON
//! interface: init, backup with live progress, snapshots, ls, restore with an
//! independent verification, check, forget/prune and stats.
//!
//! This module owns the restic process and the parsing of its output. It knows
//! nothing of cadang's plans, runs or catalog, and must not: the daemon maps its
//! results there. It never writes to a repository except through restic, and never
//! puts the repository password on a command line, in a log or in an error (the
//! `process` submodule says how the password travels).
//!
//! Restic versions from 0.12 on are accepted. Behaviour that differs between versions
//! (exit codes, JSON fields, restore output) is handled for both the old and the new
//! form; the `json` and `error` submodules say how.

mod error;
mod json;
mod process;
mod verify;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use error::ResticError;
pub use json::{
    BackupProgress, BackupSummary, FileError, ForgetOutcome, NodeType, ResticNode, ResticSnapshot,
    ResticStats, ResticVersion, RestoreSummary, SnapshotId,
};
pub use verify::{ProblemKind, RestoreProblem, VerifiedCounts};

use json::{BackupLine, CheckLine, LsLine, StderrLine};
use process::{DOCUMENT_MAX, Invocation, STREAM_LINE_MAX, Scrubber};

/// Per-file errors kept in a [`BackupOutcome`]; the total is counted beyond this.
const MAX_FILE_ERRORS: usize = 1000;
/// Messages kept in [`CheckOutcome::ErrorsFound`].
const MAX_CHECK_MESSAGES: usize = 200;

/// A secret text, such as a repository password. `Debug` prints `[redacted]`; there
/// is no `Display`, so it cannot end up in a message by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself; for handing it to restic only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A restic repository and how to open it.
#[derive(Clone)]
pub struct ResticRepo {
    /// Where it is: a local path or a restic backend URL (`s3:…`, `rest:…`, `sftp:…`).
    pub location: String,
    /// The repository password.
    pub password: Secret,
    /// Extra environment for the backend, such as `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` for `s3:` repositories. Must not set
    /// `RESTIC_REPOSITORY*` or `RESTIC_PASSWORD*`: the fields above do. `RESTIC_*`
    /// variables of the daemon's own environment are not passed on, so settings such
    /// as `RESTIC_CACHE_DIR` or `RESTIC_COMPRESSION` belong here.
    pub env: Vec<(String, String)>,
}

impl ResticRepo {
    /// The repository at `location`, opened with `password`, with no extra environment.
    pub fn new(location: impl Into<String>, password: Secret) -> Self {
        ResticRepo {
            location: location.into(),
            password,
            env: Vec::new(),
        }
    }
}

impl fmt::Debug for ResticRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Backend variables are often credentials: show their names only.
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ResticRepo")
            .field("location", &self.location)
            .field("password", &self.password)
            .field("env", &names)
            .finish()
    }
}

/// A cancellation signal the daemon can trigger from any task. Cloning shares it.
///
/// On cancel, a running restic gets SIGINT (it stops at a safe point and removes its
/// lock), then SIGKILL if it has not exited after the grace period
/// ([`Restic::with_interrupt_grace`]).
#[derive(Clone, Debug)]
pub struct Cancel {
    sender: Arc<watch::Sender<bool>>,
}

impl Cancel {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Cancel {
            sender: Arc::new(watch::channel(false).0),
        }
    }

    /// Fires the signal; idempotent.
    pub fn cancel(&self) {
        self.sender.send_replace(true);
    }

    /// Whether the signal has fired.
    pub fn is_cancelled(&self) -> bool {
        *self.sender.borrow()
    }

    /// Completes once the signal has fired.
    pub async fn cancelled(&self) {
        let mut receiver = self.sender.subscribe();
        // The sender lives in `self`, so the channel cannot close while waiting.
        let _ = receiver.wait_for(|fired| *fired).await;
    }
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

/// What to back up and how to label it.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Absolute paths to back up.
    pub paths: Vec<PathBuf>,
    /// Tags for the snapshot (no commas: restic splits tags on them).
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot; restic uses the machine's when `None`.
    pub host: Option<String>,
    /// Exclude patterns, passed as `--exclude`.
    pub excludes: Vec<String>,
    /// Marker files (`NAME[:HEADER]`), passed as `--exclude-if-present`.
    pub exclude_if_present: Vec<String>,
    /// Pass `--exclude-caches`.
    pub exclude_caches: bool,
    /// Bytes, passed as `--exclude-larger-than`.
    pub exclude_larger_than: Option<u64>,
    /// Upload bandwidth limit in KiB/s (`--limit-upload`).
    pub limit_upload_kib: Option<u32>,
}

/// Whether a backup saved everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupStatus {
    /// Every source file was read.
    Complete,
    /// A snapshot was written, but some source files could not be read (restic's
    /// exit code 3, or per-file errors); see [`BackupOutcome::file_errors`].
    Partial,
}

/// The result of a backup that produced a summary.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// Complete or partial.
    pub status: BackupStatus,
    /// Restic's summary, with the new snapshot's id.
    pub summary: BackupSummary,
    /// The first files restic could not read (bounded), by path.
    pub file_errors: Vec<FileError>,
    /// How many per-file errors there were in total.
    pub file_errors_total: u64,
}

/// What to restore, and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Snapshot id, unique prefix, or `latest`.
    pub snapshot: String,
    /// Target directory; must not exist or be empty, so that everything found there
    /// afterwards was written by this restore.
    pub target: PathBuf,
    /// Restic `--include` patterns; everything when empty.
    pub includes: Vec<String>,
    /// Also pass `--verify`, so restic re-reads the restored files and compares their
    /// content with the repository. The independent verification checks presence,
    /// type and size; only this catches wrong content of the right size.
    pub restic_verify: bool,
}

impl RestoreOptions {
    /// Restores all of `snapshot` into `target`, with restic's content verification.
    pub fn new(snapshot: impl Into<String>, target: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            snapshot: snapshot.into(),
            target: target.into(),
            includes: Vec::new(),
            restic_verify: true,
        }
    }
}

/// A restore that restic completed without errors and that verified.
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    /// The snapshot restored (full id, resolved before restoring).
    pub snapshot_id: SnapshotId,
    /// Where it was restored.
    pub target: PathBuf,
    /// What the verification checked.
    pub verified: VerifiedCounts,
    /// Restic's own summary (restic ≥ 0.16; `None` for versions that print text).
    pub restic_summary: Option<RestoreSummary>,
}

/// The verdict of `restic check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Restic found no errors.
    NoErrors,
    /// Restic found errors in the repository.
    ErrorsFound {
        /// Restic's messages (bounded, scrubbed).
        messages: Vec<String>,
        /// Damaged pack files restic named (restic ≥ 0.17).
        broken_packs: Vec<String>,
    },
}

/// Which snapshots `forget` keeps; snapshots are grouped by host and paths, as restic
/// does by default, and each group is judged on its own.
#[derive(Debug, Clone, Default)]
pub struct KeepPolicy {
    /// Keep the last N snapshots.
    pub last: Option<u32>,
    /// Keep the last snapshot of each of the last N hours.
    pub hourly: Option<u32>,
    /// … days.
    pub daily: Option<u32>,
    /// … weeks.
    pub weekly: Option<u32>,
    /// … months.
    pub monthly: Option<u32>,
    /// … years.
    pub yearly: Option<u32>,
    /// Keep everything newer than this restic duration (`7d`, `1y6m`, `36h`).
    pub within: Option<String>,
    /// Consider only snapshots carrying all of these tags.
    pub tags: Vec<String>,
    /// Consider only snapshots of this host.
    pub host: Option<String>,
    /// Keep snapshots carrying all the tags of any of these lists (`hold,bpk-2026`).
    pub keep_tags: Vec<String>,
}

/// A located, version-checked restic binary.
#[derive(Debug, Clone)]
pub struct Restic {
    binary: PathBuf,
    version: ResticVersion,
    interrupt_grace: Duration,
}

impl Restic {
    /// How long restic gets to stop after SIGINT before it is killed, by default.
    pub const DEFAULT_INTERRUPT_GRACE: Duration = Duration::from_secs(10);

    /// Finds the binary — `configured`, else `restic` on `PATH` — runs
    /// `restic version` and checks that it is at least [`ResticVersion::MINIMUM`].
    ///
    /// # Errors
    /// [`ResticError::NotFound`] when there is no such binary,
    /// [`ResticError::NotRunnable`] when it cannot be run or does not print a restic
    /// version, [`ResticError::VersionTooOld`] for restic older than 0.12.
    pub async fn locate(configured: Option<&Path>) -> Result<Restic, ResticError> {
        let on_path = |name: &Path| {
            find_on_path(name).ok_or_else(|| ResticError::NotFound {
                path: name.to_path_buf(),
            })
        };
        let binary = match configured {
            Some(path) if path.exists() => path.to_path_buf(),
            // A bare name such as `restic-0.17` is looked up on PATH, as a shell would.
            Some(name) if name.components().count() == 1 && !name.is_absolute() => on_path(name)?,
            Some(path) => {
                return Err(ResticError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            None => on_path(Path::new("restic"))?,
        };
        let mut restic = Restic {
            binary,
            version: ResticVersion::new(0, 0, 0),
            interrupt_grace: Self::DEFAULT_INTERRUPT_GRACE,
        };
        let mut first_line: Option<String> = None;
        let exit = process::run(
            &restic,
            invocation("version", Vec::new(), None, None),
            |line| {
                if first_line.is_none() && !line.trim().is_empty() {
                    first_line = Some(line.to_string());
                }
                Ok(())
            },
            |_| false,
        )
        .await?;
        let printed = first_line.unwrap_or_default();
        let not_runnable = |reason: String| ResticError::NotRunnable {
            path: restic.binary.clone(),
            reason,
        };
        if exit.code != Some(0) {
            return Err(not_runnable(format!(
                "`version` failed ({})",
                exit.to_error()
            )));
        }
        let version = ResticVersion::parse(&printed).ok_or_else(|| {
            not_runnable(format!(
                "`version` printed {:?}, which is not a restic version",
                process::truncate(&printed, 100)
            ))
        })?;
        if version < ResticVersion::MINIMUM {
            return Err(ResticError::VersionTooOld {
                found: version,
                minimum: ResticVersion::MINIMUM,
            });
        }
        tracing::debug!(binary = %restic.binary.display(), %version, "found restic");
        restic.version = version;
        Ok(restic)
    }

    /// Sets how long restic gets to stop after SIGINT before it is killed.
    pub fn with_interrupt_grace(mut self, grace: Duration) -> Self {
        self.interrupt_grace = grace;
        self
    }

    /// The restic version found by [`Restic::locate`].
    pub fn version(&self) -> &ResticVersion {
        &self.version
    }

    /// The binary that is run.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    #[cfg(test)]
    pub(crate) fn for_tests(binary: &str) -> Restic {
        Restic {
            binary: PathBuf::from(binary),
            version: ResticVersion::new(0, 14, 0),
            interrupt_grace: Self::DEFAULT_INTERRUPT_GRACE,
        }
    }

    pub(crate) fn interrupt_grace(&self) -> Duration {
        self.interrupt_grace
    }

    /// Creates a repository at `repo.location`.
    ///
    /// # Errors
    /// [`ResticError::AlreadyInitialized`] when one exists there; the common errors
    /// (see [`ResticError`]) otherwise.
    pub async fn init(&self, repo: &ResticRepo) -> Result<(), ResticError> {
        let exit = process::run(
            self,
            invocation("init", Vec::new(), Some(repo), None),
            |_| Ok(()),
            |_| false,
        )
        .await?;
        exit.require(&[0]).map(drop)
    }

    /// Creates a repository at `repo.location` with the chunker parameters of `from`,
    /// so that what `copy` brings from `from` deduplicates against what is already
    /// there (`init --copy-chunker-params`).
    ///
    /// # Errors
    /// As [`Restic::init`]; the common errors for `from` too.
    pub async fn init_copying_chunker(
        &self,
        repo: &ResticRepo,
        from: &ResticRepo,
    ) -> Result<(), ResticError> {
        let mut invocation = invocation(
            "init",
            vec!["--copy-chunker-params".into()],
            Some(repo),
            None,
        );
        invocation.from = Some(from);
        let exit = process::run(self, invocation, |_| Ok(()), |_| false).await?;
        exit.require(&[0]).map(drop)
    }

    /// Copies snapshots of `from` into `repo` (`copy`): the ones named, or every one
    /// when `snapshots` is empty. Restic skips a snapshot that an earlier copy already
    /// brought (the copy records it as its `original`), so repeating a copy is cheap
    /// and an interrupted one resumes. Restic's `copy` has no JSON output: list the
    /// destination's snapshots to learn what arrived.
    ///
    /// # Errors
    /// [`ResticError::InvalidInput`] for a malformed snapshot id,
    /// [`ResticError::Cancelled`] when `cancel` fired first, and the common errors.
    pub async fn copy(
        &self,
        repo: &ResticRepo,
        from: &ResticRepo,
        snapshots: &[String],
        cancel: &Cancel,
    ) -> Result<(), ResticError> {
        let mut args = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots {
            if snapshot.is_empty() || !snapshot.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ResticError::InvalidInput(format!(
                    "copy takes snapshot ids; {snapshot:?} is not one"
                )));
            }
            args.push(snapshot.into());
        }
        let mut invocation = invocation("copy", args, Some(repo), Some(cancel));
        invocation.from = Some(from);
        let exit = process::run(self, invocation, |_| Ok(()), |_| false).await?;
        exit.require(&[0]).map(drop)
    }

    /// Runs `backup --json`, reporting progress through `progress` as restic prints
    /// it. Restic's exit code 3 (some source files could not be read) gives a
    /// [`BackupStatus::Partial`] outcome with a snapshot, not an error.
    ///
    /// # Errors
    /// [`ResticError::InvalidInput`] for unusable options, [`ResticError::Cancelled`]
    /// when `cancel` fired first, [`ResticError::Unparsable`] when restic finished
    /// without a readable summary, and the common errors.
    pub async fn backup(
        &self,
        repo: &ResticRepo,
        opts: &BackupOptions,
        progress: &mut (dyn FnMut(&BackupProgress) + Send),
        cancel: &Cancel,
    ) -> Result<BackupOutcome, ResticError> {
        let mut args: Vec<OsString> = vec!["--json".into()];
        if opts.paths.is_empty() {
            return Err(ResticError::InvalidInput(
                "a backup needs at least one path".into(),
            ));
        }
        for tag in &opts.tags {
            args.push(format!("--tag={}", check_tag(tag)?).into());
        }
        if let Some(host) = &opts.host {
            args.push(format!("--host={}", check_word("host", host)?).into());
        }
        for marker in &opts.exclude_if_present {
            args.push(
                format!(
                    "--exclude-if-present={}",
                    check_word("exclude marker", marker)?
                )
                .into(),
            );
        }
        if opts.exclude_caches {
            args.push("--exclude-caches".into());
        }
        if let Some(limit) = opts.exclude_larger_than {
            // restic reads a bare number as bytes.
            args.push(format!("--exclude-larger-than={limit}").into());
        }
        for exclude in &opts.excludes {
            args.push(format!("--exclude={}", check_word("exclude pattern", exclude)?).into());
        }
        if let Some(kib) = opts.limit_upload_kib {
            args.push(format!("--limit-upload={kib}").into());
        }
        // Everything after `--` is a path, even one that starts with `-`.
        args.push("--".into());
        for path in &opts.paths {
            if !path.is_absolute() {
                return Err(ResticError::InvalidInput(format!(
                    "backup path {} is relative; give an absolute path",
                    path.display()
                )));
            }
            args.push(path.clone().into_os_string());
        }

        let mut summary = None;
        let mut file_errors = Vec::new();
        let mut file_errors_total = 0u64;
        let exit = process::run(
            self,
            invocation("backup", args, Some(repo), Some(cancel)),
            |line| {
                match json::parse_backup_line(line)? {
                    BackupLine::Status(status) => progress(&status),
                    BackupLine::Summary(s) => summary = Some(s),
                    BackupLine::Other => {}
                }
                Ok(())
            },
            |line| match json::parse_stderr_line(line) {
                StderrLine::FileError(error) => {
                    file_errors_total += 1;
                    if file_errors.len() < MAX_FILE_ERRORS {
                        file_errors.push(error);
                    }
                    true
                }
                StderrLine::Text(_) => false,
            },
        )
        .await?;
        let code = exit.require(&[0, 3])?;
        let summary = summary.ok_or_else(|| ResticError::Unparsable {
            command: "backup".into(),
            reason: "restic exited successfully without printing a summary".into(),
            line: String::new(),
        })?;
        let status = if code == 3 || file_errors_total > 0 {
            BackupStatus::Partial
        } else {
            BackupStatus::Complete
        };
        Ok(BackupOutcome {
            status,
            summary,
            file_errors,
            file_errors_total,
        })
    }

    /// Lists the repository's snapshots, oldest first; with `tags`, only those
    /// carrying all of them.
    ///
    /// # Errors
    /// [`ResticError::InvalidInput`] for a tag with a comma, and the common errors.
    pub async fn snapshots(
        &self,
        repo: &ResticRepo,
        tags: &[String],
    ) -> Result<Vec<ResticSnapshot>, ResticError> {
        let mut args: Vec<OsString> = vec!["--json".into()];
        if !tags.is_empty() {
            args.push(tag_filter(tags)?.into());
        }
        let doc = self.document("snapshots", args, repo).await?;
        json::parse_snapshots(&doc).map_err(|reason| unparsable("snapshots", repo, reason, &doc))
    }

    /// Lists every entry of a snapshot (`ls --json`), in restic's order (parents
    /// before children).
    ///
    /// # Errors
    /// [`ResticError::InvalidInput`] for a malformed snapshot reference,
    /// [`ResticError::Unparsable`] for a line that is not a snapshot or node, and the
    /// common errors.
    pub async fn ls(
        &self,
        repo: &ResticRepo,
        snapshot: &str,
    ) -> Result<Vec<ResticNode>, ResticError> {
        Ok(self.listing(repo, snapshot, None).await?.1)
    }

    /// Streams the entries of `snapshot` in restic's order (parents before children)
    /// to `on_node`: all of them without `dir`; with it, the entry at that absolute
    /// path and, when it is a directory, its own entries (everything below it with
    /// `recursive`). When `on_node` answers `false`, restic is interrupted and the walk
    /// ends there without an error. Returns the snapshot's full id as restic named it.
    ///
    /// # Errors
    /// [`ResticError::InvalidInput`] for a malformed snapshot reference or a `dir` that
    /// is not an absolute path, [`ResticError::Unparsable`] for a line that is not a
    /// snapshot or node, and the common errors.
    pub async fn walk(
        &self,
        repo: &ResticRepo,
        snapshot: &str,
        dir: Option<&str>,
        recursive: bool,
        mut on_node: impl FnMut(ResticNode) -> bool,
    ) -> Result<Option<SnapshotId>, ResticError> {
        let mut args: Vec<OsString> = vec!["--json".into()];
        if recursive {
            args.push("--recursive".into());
        }
        args.push(check_snapshot_ref(snapshot)?.into());
        if let Some(dir) = dir {
            if !dir.starts_with('/') {
                return Err(ResticError::InvalidInput(format!(
                    "{dir:?} is not an absolute path in the snapshot"
                )));
            }
            args.push(check_word("path", dir)?.into());
        }
        let enough = Cancel::new();
        let mut id = None;
        let exit = process::run(
            self,
            invocation("ls", args, Some(repo), Some(&enough)),
            |line| {
                match json::parse_ls_line(line)? {
                    LsLine::Snapshot(s) => id = id.take().or(s),
                    LsLine::Node(node) => {
                        if !enough.is_cancelled() && !on_node(node) {
                            enough.cancel();
                        }
                    }
                    LsLine::Skip => {}
                }
                Ok(())
            },
            |_| false,
        )
        .await?;
        if !enough.is_cancelled() {
            exit.require(&[0])?;
        }
        Ok(id)
    }

    async fn listing(
        &self,
        repo: &ResticRepo,
        snapshot: &str,
        cancel: Option<&Cancel>,
    ) -> Result<(Option<SnapshotId>, Vec<ResticNode>), ResticError> {
        let args = vec!["--json".into(), check_snapshot_ref(snapshot)?.into()];
        let mut id = None;
        let mut nodes = Vec::new();
        let exit = process::run(
            self,
            invocation("ls", args, Some(repo), cancel),
            |line| {
                match json::parse_ls_line(line)? {
                    LsLine::Snapshot(s) => id = id.take().or(s),
                    LsLine::Node(node) => nodes.push(node),
                    LsLine::Skip => {}
                }
                Ok(())
            },
            |_| false,
        )
        .await?;
        exit.require(&[0])?;
        Ok((id, nodes))
    }

    /// Restores a snapshot into an empty target and verifies the result against the
    /// snapshot's listing: every selected file and directory must be on disk with its
    /// type and size, every file must read back completely, nothing else may appear,
    /// and restic must not have reported an error. Restic's `--json` restore output
    /// (≥ 0.16) is read for its summary; older versions' text is ignored.
    ///
    /// # Errors
    /// [`ResticError::RestoreIncomplete`] naming the paths when anything differs or
    /// restic reported per-file errors — never a success then;
    /// [`ResticError::InvalidInput`] for a non-empty target; the common errors.
    pub async fn restore(
        &self,
        repo: &ResticRepo,
        opts: &RestoreOptions,
        cancel: &Cancel,
    ) -> Result<RestoreOutcome, ResticError> {
        check_restore_target(&opts.target)?;
        for include in &opts.includes {
            check_word("include pattern", include)?;
        }
        // Resolve `latest` or a prefix once, so that the listing and the restore are
        // of the same snapshot even if a backup lands in between.
        let (id, nodes) = self.listing(repo, &opts.snapshot, Some(cancel)).await?;
        let id = id.unwrap_or_else(|| SnapshotId::new(opts.snapshot.clone()));

        let mut args: Vec<OsString> = vec![
            "--json".into(),
            check_snapshot_ref(id.as_str())?.into(),
            format!("--target={}", opts.target.display()).into(),
        ];
        for include in &opts.includes {
            args.push(format!("--include={include}").into());
        }
        if opts.restic_verify {
            args.push("--verify".into());
        }
        let mut restic_summary = None;
        let mut restic_errors = Vec::new();
        let exit = process::run(
            self,
            invocation("restore", args, Some(repo), Some(cancel)),
            |line| {
                if let Some(summary) = json::parse_restore_line(line) {
                    restic_summary = Some(summary);
                }
                Ok(())
            },
            |line| match json::parse_stderr_line(line) {
                StderrLine::FileError(error) => {
                    if restic_errors.len() < verify::MAX_PROBLEMS {
                        restic_errors.push(error);
                    }
                    true
                }
                StderrLine::Text(_) => false,
            },
        )
        .await?;
        if let Err(error) = exit.require(&[0]) {
            // A plain failure with per-file errors is a partial restore: verify it,
            // so the error names every path that is wrong. Anything else (wrong
            // password, lock, signal, cancel) is returned as it is.
            if restic_errors.is_empty() || !matches!(error, ResticError::Failed { .. }) {
                return Err(error);
            }
        }

        let target = opts.target.clone();
        let includes = opts.includes.clone();
        let watch = cancel.clone();
        let verified = tokio::task::spawn_blocking(move || {
            verify::verify(&target, &nodes, &includes, &restic_errors, &|| {
                !watch.is_cancelled()
            })
        })
        .await
        .map_err(|e| ResticError::io("restore verification stopped", std::io::Error::other(e)))?;
        let (counts, mut problems) = match verified {
            Ok(result) => result,
            Err(_) if cancel.is_cancelled() => {
                return Err(ResticError::Cancelled {
                    command: "restore".into(),
                    forced: false,
                });
            }
            Err(e) => {
                return Err(ResticError::io(
                    format!("cannot verify the restore in {}", opts.target.display()),
                    e,
                ));
            }
        };
        if problems.total > 0 {
            let scrubber = Scrubber::for_repo(Some(repo));
            for problem in &mut problems.list {
                problem.path = scrubber.scrub(&problem.path);
            }
            return Err(ResticError::RestoreIncomplete {
                snapshot: id.to_string(),
                target: opts.target.clone(),
                problems: problems.list,
                problems_total: problems.total,
            });
        }
        Ok(RestoreOutcome {
            snapshot_id: id,
            target: opts.target.clone(),
            verified: counts,
            restic_summary,
        })
    }

    /// Runs `check`, reading `read_data_subset` of the pack data when given (restic's
    /// `n/t`, `x%` or size forms; `100%` reads everything).
    ///
    /// # Errors
    /// A repository with errors is `Ok(CheckOutcome::ErrorsFound)`, not an error.
    /// [`ResticError::InvalidInput`] for a malformed subset; the common errors when
    /// the check could not run.
    pub async fn check(
        &self,
        repo: &ResticRepo,
        read_data_subset: Option<&str>,
    ) -> Result<CheckOutcome, ResticError> {
        let mut args: Vec<OsString> = vec!["--json".into()];
        if let Some(subset) = read_data_subset {
            let valid = !subset.is_empty()
                && subset
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/%.".contains(c));
            if !valid {
                return Err(ResticError::InvalidInput(format!(
                    "read-data subset {subset:?} is not of the form n/t, x% or a size such as 500M"
                )));
            }
            args.push(format!("--read-data-subset={subset}").into());
        }
        let mut clean_said = false;
        let mut summary = None;
        let mut messages = Vec::new();
        let mut dropped = 0u64;
        let exit = process::run(
            self,
            invocation("check", args, Some(repo), None),
            |line| {
                match json::parse_check_line(line) {
                    CheckLine::NoErrorsFound => clean_said = true,
                    CheckLine::Summary(s) => summary = Some(s),
                    CheckLine::Other => {}
                }
                Ok(())
            },
            |line| {
                let message = match json::parse_stderr_line(line) {
                    StderrLine::Text(text) => text,
                    StderrLine::FileError(e) => format!("{}: {}", e.path, e.message),
                };
                if messages.len() < MAX_CHECK_MESSAGES {
                    messages.push(message);
                } else {
                    dropped += 1;
                }
                false
            },
        )
        .await?;
        check_verdict(&exit, clean_said, summary, messages, dropped)
    }

    /// Applies a keep policy with `forget --json`, then prunes unreferenced data when
    /// `prune` is set.
    ///
    /// When pruning fails after the snapshots were forgotten, the error is returned
    /// and the snapshots are gone all the same: list them again to learn the state.
    ///
    /// # Errors
    /// [`ResticError::InvalidInput`] for a policy that keeps nothing explicitly (restic
    /// would then remove nothing, which is never what a caller meant) or a malformed
    /// duration or tag; the common errors.
    pub async fn forget(
        &self,
        repo: &ResticRepo,
        policy: &KeepPolicy,
        prune: bool,
    ) -> Result<ForgetOutcome, ResticError> {
        let mut args: Vec<OsString> = vec!["--json".into()];
        let counts = [
            ("last", policy.last),
            ("hourly", policy.hourly),
            ("daily", policy.daily),
            ("weekly", policy.weekly),
            ("monthly", policy.monthly),
            ("yearly", policy.yearly),
        ];
        for (name, count) in counts {
            if let Some(n) = count {
                args.push(format!("--keep-{name}={n}").into());
            }
        }
        if let Some(within) = &policy.within {
            let valid = !within.is_empty()
                && within.starts_with(|c: char| c.is_ascii_digit())
                && within
                    .chars()
                    .all(|c| c.is_ascii_digit() || "ymdh".contains(c));
            if !valid {
                return Err(ResticError::InvalidInput(format!(
                    "keep-within duration {within:?} is not of restic's form such as 7d, 1y6m or 36h"
                )));
            }
            args.push(format!("--keep-within={within}").into());
        }
        for list in &policy.keep_tags {
            let tags: Vec<&str> = list.split(',').map(str::trim).collect();
            args.push(format!("--keep-tag={}", tag_list(&tags)?).into());
        }
        if args.len() == 1 {
            return Err(ResticError::InvalidInput(
                "the keep policy keeps nothing explicitly; set at least one of last, hourly, daily, weekly, monthly, yearly, within or keep_tags"
                    .into(),
            ));
        }
        if !policy.tags.is_empty() {
            args.push(tag_filter(&policy.tags)?.into());
        }
        if let Some(host) = &policy.host {
            args.push(format!("--host={}", check_word("host", host)?).into());
        }
        if prune {
            args.push("--prune".into());
        }
        let doc = self.document("forget", args, repo).await?;
        json::parse_forget(&doc, prune).map_err(|reason| unparsable("forget", repo, reason, &doc))
    }

    /// Repository statistics from `stats --json --mode raw-data`.
    ///
    /// # Errors
    /// The common errors.
    pub async fn stats(&self, repo: &ResticRepo) -> Result<ResticStats, ResticError> {
        let args = vec!["--json".into(), "--mode=raw-data".into()];
        let doc = self.document("stats", args, repo).await?;
        json::parse_stats(&doc).map_err(|reason| unparsable("stats", repo, reason, &doc))
    }

    /// Runs a command whose stdout is one document, collecting it within
    /// [`DOCUMENT_MAX`] bytes.
    async fn document(
        &self,
        command: &'static str,
        args: Vec<OsString>,
        repo: &ResticRepo,
    ) -> Result<String, ResticError> {
        let mut doc = String::new();
        let mut inv = invocation(command, args, Some(repo), None);
        inv.max_line = DOCUMENT_MAX;
        let exit = process::run(
            self,
            inv,
            |line| {
                if doc.len() + line.len() >= DOCUMENT_MAX {
                    return Err(format!("output larger than {DOCUMENT_MAX} bytes"));
                }
                doc.push_str(line);
                doc.push('\n');
                Ok(())
            },
            |_| false,
        )
        .await?;
        exit.require(&[0])?;
        Ok(doc)
    }
}

/// Maps a finished `check` to its outcome: exit 0 without counted errors is clean;
/// a failed run is a verdict of errors only when restic says the repository contains
/// errors (0.14 text, or the ≥ 0.17 summary); otherwise the check itself failed.
fn check_verdict(
    exit: &error::Exit,
    clean_said: bool,
    summary: Option<json::CheckSummary>,
    mut messages: Vec<String>,
    dropped: u64,
) -> Result<CheckOutcome, ResticError> {
    let num_errors = summary.as_ref().map_or(0, |s| s.num_errors);
    if exit.code == Some(0) && num_errors == 0 {
        if !clean_said && summary.is_none() {
            tracing::debug!("restic check exited 0 without its usual verdict");
        }
        return Ok(CheckOutcome::NoErrors);
    }
    let found = num_errors > 0
        || messages
            .iter()
            .any(|m| m.contains("repository contains errors"));
    if !found || exit.cancelled.is_some() || exit.signal.is_some() {
        return Err(exit.to_error());
    }
    if dropped > 0 {
        messages.push(format!("… and {dropped} more messages"));
    }
    Ok(CheckOutcome::ErrorsFound {
        messages,
        broken_packs: summary.map(|s| s.broken_packs).unwrap_or_default(),
    })
}

fn invocation<'a>(
    command: &'static str,
    args: Vec<OsString>,
    repo: Option<&'a ResticRepo>,
    cancel: Option<&'a Cancel>,
) -> Invocation<'a> {
    Invocation {
        command,
        args,
        repo,
        from: None,
        cancel,
        max_line: STREAM_LINE_MAX,
    }
}

fn unparsable(command: &str, repo: &ResticRepo, reason: String, doc: &str) -> ResticError {
    let first = doc
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    // Scrub before truncating, so a cut cannot leave part of a secret behind.
    let scrubbed = Scrubber::for_repo(Some(repo)).scrub(first);
    ResticError::Unparsable {
        command: command.into(),
        reason,
        line: process::truncate(&scrubbed, 200),
    }
}

fn find_on_path(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A value passed as `--flag=value`: non-empty and free of control characters.
fn check_word<'a>(what: &str, value: &'a str) -> Result<&'a str, ResticError> {
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err(ResticError::InvalidInput(format!(
            "{what} {value:?} is empty or contains control characters"
        )));
    }
    Ok(value)
}

fn check_tag(tag: &str) -> Result<&str, ResticError> {
    check_word("tag", tag)?;
    if tag.contains(',') {
        return Err(ResticError::InvalidInput(format!(
            "tag {tag:?} contains a comma, which restic reads as a tag separator; remove it"
        )));
    }
    Ok(tag)
}

/// `--tag=a,b`: restic's filter for snapshots carrying all of the tags.
fn tag_filter(tags: &[String]) -> Result<String, ResticError> {
    Ok(format!("--tag={}", tag_list(tags)?))
}

/// `a,b`: restic's list of tags a snapshot must all carry, each checked.
fn tag_list<S: AsRef<str>>(tags: &[S]) -> Result<String, ResticError> {
    let checked = tags
        .iter()
        .map(|t| check_tag(t.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(checked.join(","))
}

/// A snapshot reference given as a positional argument: it must not look like a flag.
fn check_snapshot_ref(snapshot: &str) -> Result<&str, ResticError> {
    let valid = !snapshot.is_empty()
        && !snapshot.starts_with('-')
        && !snapshot
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(ResticError::InvalidInput(format!(
            "snapshot {snapshot:?} is not a snapshot id, id prefix or `latest`"
        )));
    }
    Ok(snapshot)
}

fn check_restore_target(target: &Path) -> Result<(), ResticError> {
    if target.as_os_str().is_empty() {
        return Err(ResticError::InvalidInput(
            "the restore target is empty".into(),
        ));
    }
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ResticError::InvalidInput(format!(
                    "restore target {} is not empty; restore into a new or empty directory so the result can be verified",
                    target.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ResticError::io(
            format!("cannot read restore target {}", target.display()),
            e,
        )),
    }
}
