//! The work of a run: a backup, a retention pass, a verification, a restore drill or a
//! replication of one agency's repository, through the engine. Each agency's backups live in their own repository
//! (`<root>/<agency code>`), with its own keys, so deduplication never crosses agencies
//! and no agency's data is readable with another's key.
//!
//! A repository's password is derived from the daemon's master key and the agency
//! code, so the daemon needs no stored repository secret and the catalog holds none;
//! the password has 256 bits of entropy, so its key slot uses Argon2id's lowest cost.
//!
//! An agency may also have a replica repository on a second store (`<replica root>/<agency
//! code>`), made from the primary with the same keys, so chunk ids are identical: a
//! `replicate` run copies the plan's new snapshots there and reads them back, and a
//! restore reads there what the primary cannot give. Its password comes from the same
//! key under another derivation context.
//!
//! Everything here blocks (the engine's API is blocking): the scheduler runs it on a
//! blocking thread.

mod engine;
pub mod erase;
mod restic_runs;
pub mod tags;

pub use engine::{Context, Engine, NativeEngine, ResticEngine};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::runtime::Handle;

use crate::app::{PlanSpec, SecretString};
use crate::catalog::{RunEnd, RunRecord};
use crate::engine::backup::{BackupOptions, BackupProgress, backup};
use crate::engine::check::{CheckOptions, ReadData, check};
use crate::engine::copy::{CopyOptions, copy_with, read_back};
use crate::engine::crypto::KdfParams;
use crate::engine::forget::{KeepPolicy, apply, jakarta};
use crate::engine::id::SnapshotId;
use crate::engine::prune::{PruneOptions, prune};
use crate::engine::repo::{OpenOptions, Repository};
use crate::engine::restore::{RestoreOptions, RestoreProgress, restore};
use crate::engine::store::{Store, StoreOptions};
use crate::hook::owed::OwedAfter;

/// Where the agencies' repositories live and how they are opened.
pub struct Repositories {
    root: String,
    key: [u8; 32],
    store: StoreOptions,
    scratch: PathBuf,
    replica_root: Option<String>,
    replica_store: StoreOptions,
    restic_binary: Option<PathBuf>,
    /// After-backup programs of this host's runs, owed until they have run.
    owed: Option<OwedAfter>,
}

impl std::fmt::Debug for Repositories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repositories")
            .field("root", &self.root)
            .field("replica_root", &self.replica_root)
            .finish_non_exhaustive()
    }
}

impl Repositories {
    /// Repositories under `root` (a directory or `s3://bucket/prefix`), with passwords
    /// derived from `key` (a sub-key of the master key for this purpose only).
    /// Restore drills write under the system's temporary directory until
    /// [`Repositories::with_scratch`] says otherwise.
    pub fn new(root: String, key: [u8; 32], store: StoreOptions) -> Self {
        Repositories {
            root,
            key,
            store,
            scratch: std::env::temp_dir().join("cadang-drills"),
            replica_root: None,
            replica_store: StoreOptions::default(),
            restic_binary: None,
            owed: None,
        }
    }

    /// Keeps the after-backup programs of runs on this host in `dir` while they are owed
    /// ([`crate::hook::owed`]): a daemon killed during a run runs them as it starts again.
    #[must_use]
    pub fn with_owed_after(mut self, dir: PathBuf) -> Self {
        self.owed = Some(OwedAfter::new(dir));
        self
    }

    /// Runs the after-backup programs owed by runs this host's daemon stopped in, with
    /// `CADANG_BACKUP_RESULT=interrupted` (at start, before any run is taken).
    pub fn run_owed_after(&self) {
        if let Some(owed) = &self.owed {
            owed.run_owed(&|command: &[String]| Ok(command.to_vec()));
        }
    }

    /// Records that `run` owes the plan's after-backup program, before its before-backup
    /// program starts.
    ///
    /// # Errors
    /// The daemon's data directory cannot be written: the run should not start.
    pub(crate) fn owe_after(&self, spec: &PlanSpec, run: &RunRecord) -> Result<(), String> {
        let (Some(owed), Some(after)) = (&self.owed, &spec.after_backup) else {
            return Ok(());
        };
        owed.record(
            &tags::run(run.id),
            &after.command,
            u32::try_from(after.timeout_secs).unwrap_or(u32::MAX),
        )
        .map_err(|error| {
            format!("cannot record the after-backup program in the data directory: {error}")
        })
    }

    /// The run's after-backup program has run: nothing is owed.
    pub(crate) fn settle_after(&self, run: &RunRecord) {
        if let Some(owed) = &self.owed {
            owed.settle(&tags::run(run.id));
        }
    }

    /// The `restic` binary for plans on restic repositories: a path, or a name looked up
    /// on `PATH`; `None` for `restic` on `PATH`.
    #[must_use]
    pub fn with_restic_binary(mut self, binary: Option<PathBuf>) -> Self {
        self.restic_binary = binary;
        self
    }

    /// Replica repositories under `root` (a directory or `s3://bucket/prefix` on a second
    /// store), opened with `store`; `None` keeps the agencies without replicas.
    #[must_use]
    pub fn with_replica(mut self, root: Option<String>, store: StoreOptions) -> Self {
        self.replica_root = root.filter(|root| !root.trim().is_empty());
        self.replica_store = store;
        self
    }

    /// The `restic` binary configured for plans on restic repositories (`None`: `restic`
    /// on `PATH`).
    pub fn restic_binary(&self) -> Option<&Path> {
        self.restic_binary.as_deref()
    }

    /// Where restore drills and restores from restic repositories put their trees.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// Whether replica repositories are configured.
    pub fn has_replica(&self) -> bool {
        self.replica_root.is_some()
    }

    /// The location of an agency's replica repository, when replicas are configured.
    pub fn replica_location(&self, agency_code: &str) -> Option<String> {
        self.replica_root.as_ref().map(|root| {
            format!(
                "{}/{}",
                root.trim_end_matches('/'),
                agency_code.to_ascii_lowercase()
            )
        })
    }

    /// The replica of the restic repository of `plan` (of `agency_code`): a restic
    /// repository of its own beside the agency's cadang replica,
    /// `<replica root>/<agency code>.restic-plan-<plan>` (agency codes hold no `.`, so
    /// it never meets an agency's repository), made by the first `replicate` run with
    /// the primary's chunker parameters. Its password is derived from the daemon's key,
    /// as the cadang replicas' are; it is never stored. An `s3://bucket/prefix` root
    /// becomes restic's `s3:<endpoint>/bucket/prefix/…` with the replica store's
    /// endpoint and region; credentials come from the daemon's `AWS_*` environment,
    /// as for the cadang replicas.
    ///
    /// # Errors
    /// "no replica configured" without `replica_root`; a root restic cannot address.
    pub fn restic_replica(
        &self,
        agency_code: &str,
        plan: crate::catalog::PlanId,
    ) -> Result<crate::restic::ResticRepo, String> {
        let root = self
            .replica_root
            .as_deref()
            .ok_or_else(|| "no replica configured ([repositories] replica_root)".to_owned())?;
        let agency = agency_code.to_ascii_lowercase();
        let name = format!("{agency}.restic-plan-{plan}");
        let mut env = Vec::new();
        let location = if let Some(rest) = root.strip_prefix("s3://") {
            let endpoint = self
                .replica_store
                .s3_endpoint
                .clone()
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                .filter(|endpoint| !endpoint.trim().is_empty())
                .unwrap_or_else(|| "s3.amazonaws.com".to_owned());
            if let Some(region) = &self.replica_store.s3_region {
                env.push(("AWS_DEFAULT_REGION".to_owned(), region.clone()));
            }
            format!(
                "s3:{}/{}/{name}",
                endpoint.trim_end_matches('/'),
                rest.trim_matches('/')
            )
        } else if root.contains("://") {
            return Err(format!(
                "restic cannot address the replica root {root}; plans on restic repositories replicate to a directory or an s3:// root"
            ));
        } else {
            if let Err(error) = crate::engine::store::create_dir_durably(Path::new(root), 0o777) {
                return Err(format!("cannot create {root}: {error}"));
            }
            format!("{}/{name}", root.trim_end_matches('/'))
        };
        let replica_key = blake3::derive_key(RESTIC_REPLICA_PASSWORD_CONTEXT, &self.key);
        let password = blake3::keyed_hash(&replica_key, name.as_bytes());
        let mut repo = crate::restic::ResticRepo::new(
            location,
            crate::restic::Secret::new(password.to_hex().to_string()),
        );
        repo.env = env;
        Ok(repo)
    }

    /// Where restore drills put their restored trees (each removed after its check).
    #[must_use]
    pub fn with_scratch(mut self, scratch: PathBuf) -> Self {
        self.scratch = scratch;
        self
    }

    /// The location of an agency's repository.
    pub fn location(&self, agency_code: &str) -> String {
        format!(
            "{}/{}",
            self.root.trim_end_matches('/'),
            agency_code.to_ascii_lowercase()
        )
    }

    /// An agency's repository password.
    pub fn password(&self, agency_code: &str) -> SecretString {
        let derived = blake3::keyed_hash(&self.key, agency_code.to_ascii_lowercase().as_bytes());
        SecretString::new(derived.to_hex().to_string())
    }

    /// An agency's replica password: derived from the same key under another context, so
    /// the replica's key slot never opens with the primary's password nor the reverse.
    pub fn replica_password(&self, agency_code: &str) -> SecretString {
        let replica_key = blake3::derive_key(REPLICA_PASSWORD_CONTEXT, &self.key);
        let derived = blake3::keyed_hash(&replica_key, agency_code.to_ascii_lowercase().as_bytes());
        SecretString::new(derived.to_hex().to_string())
    }

    /// Opens an agency's replica repository, creating it on first use from `primary`
    /// (same keys and chunker parameters, so chunk ids are identical and a restore can
    /// read the replica where the primary is damaged). Nothing is opened once `cancel`
    /// is set.
    ///
    /// # Errors
    /// "no replica configured" when there is no `replica_root`; a replica that does not
    /// share `primary`'s keys; engine errors, as text for the run record.
    pub fn open_replica(
        &self,
        handle: &Handle,
        agency_code: &str,
        primary: &Repository,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Repository, String> {
        let location = self
            .replica_location(agency_code)
            .ok_or_else(|| "no replica configured ([repositories] replica_root)".to_owned())?;
        // `Store::open` creates a local replica's directories, durably.
        if cancel.is_some_and(|cancel| cancel.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err("cancelled before the replica was opened".into());
        }
        let store =
            Store::open(&location, &self.replica_store).map_err(|error| error.to_string())?;
        let password = self.replica_password(agency_code);
        let opened = open_or_create(
            handle,
            store,
            &password,
            &location,
            "replica repository",
            |handle, store, password, options| {
                Repository::init_from(handle, store, password, options, primary)
            },
        )?;
        replica_of(primary, opened, &location)
    }

    /// Opens an agency's replica repository when there is one: `None` without replicas,
    /// or before the first replication made it.
    ///
    /// # Errors
    /// A replica that cannot be opened, or does not share `primary`'s keys.
    pub fn existing_replica(
        &self,
        handle: &Handle,
        agency_code: &str,
        primary: &Repository,
    ) -> Result<Option<Repository>, String> {
        let Some(location) = self.replica_location(agency_code) else {
            return Ok(None);
        };
        if !location.contains("://") && !Path::new(&location).exists() {
            return Ok(None);
        }
        let store =
            Store::open(&location, &self.replica_store).map_err(|error| error.to_string())?;
        let password = self.replica_password(agency_code);
        let replica = match Repository::open(
            handle.clone(),
            store,
            password.expose().as_bytes(),
            &daemon_open_options(),
        ) {
            Ok(replica) => replica,
            Err(crate::engine::error::Error::NotARepository { .. }) => return Ok(None),
            Err(error) => {
                return Err(format!(
                    "cannot open the replica repository at {location}: {error}"
                ));
            }
        };
        replica_of(primary, replica, &location).map(Some)
    }

    /// Opens an agency's repository, creating it on first use; new objects are written
    /// at most `upload_limit` bytes per second when one is given (a write waiting for
    /// its turn gives up when `cancel` is set).
    ///
    /// # Errors
    /// Engine errors, as text for the run record.
    pub fn open(
        &self,
        handle: &Handle,
        agency_code: &str,
        upload_limit: Option<u64>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Repository, String> {
        let location = self.location(agency_code);
        // `Store::open` creates a local repository's directories, durably: made here
        // with `create_dir_all`, they would have been found existing and never synced,
        // and a power cut could take the agency's whole repository with them.
        let mut store = Store::open(&location, &self.store).map_err(|error| error.to_string())?;
        if let Some(limit) = upload_limit {
            store = store.with_upload_limit(limit, cancel);
        }
        let password = self.password(agency_code);
        open_or_create(
            handle,
            store,
            &password,
            &location,
            "repository",
            Repository::init,
        )
    }
}

/// Opens the repository in `store`, creating it with `init` when there is none. Two
/// daemons (or two runs of one daemon) may create it at the same moment: the one that
/// loses the race for `config` opens the winner's.
fn open_or_create(
    handle: &Handle,
    store: Store,
    password: &SecretString,
    location: &str,
    what: &str,
    init: impl FnOnce(Handle, Store, &[u8], &OpenOptions) -> crate::engine::Result<Repository>,
) -> Result<Repository, String> {
    let options = daemon_open_options();
    let password = password.expose().as_bytes();
    match Repository::open(handle.clone(), store.clone(), password, &options) {
        Ok(repository) => Ok(repository),
        Err(crate::engine::error::Error::NotARepository { .. }) => {
            match init(handle.clone(), store.clone(), password, &options) {
                Ok(repository) => Ok(repository),
                Err(init_error) => Repository::open(handle.clone(), store, password, &options)
                    .map_err(|open_error| {
                        format!(
                            "cannot create the {what} at {location}: {init_error}; \
                             opening it afterwards failed: {open_error}"
                        )
                    }),
            }
        }
        Err(error) => Err(format!("cannot open the {what} at {location}: {error}")),
    }
}

/// `replica`, when it shares `primary`'s keys (it was made from it).
fn replica_of(
    primary: &Repository,
    replica: Repository,
    location: &str,
) -> Result<Repository, String> {
    if replica.keys().fingerprint() != primary.keys().fingerprint() {
        return Err(format!(
            "the repository at {location} is not a replica of the agency's repository (other keys)"
        ));
    }
    Ok(replica)
}

/// Derivation context of the replica passwords (from the repositories' sub-key).
const REPLICA_PASSWORD_CONTEXT: &str = "cadang 2026-11 replica repository password v1";
/// Derivation context of the passwords of restic plans' replicas.
const RESTIC_REPLICA_PASSWORD_CONTEXT: &str = "cadang 2026-12 restic replica password v1";

/// The host recorded in the key slots the daemon makes (and in the snapshots it takes
/// of its own host): `cadang key` refuses to remove or replace such a slot without
/// `--force`, since the daemon derives its password and cannot open the repository
/// without it.
pub const DAEMON_HOST: &str = "cadang-daemon";

/// Key slots of the daemon's repositories: the passwords have 256 bits of entropy, so
/// Argon2id at its lowest recommended cost.
fn daemon_open_options() -> OpenOptions {
    OpenOptions {
        kdf: KdfParams {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        },
        host: Some(DAEMON_HOST.into()),
    }
}

/// Runs one run to its end and says how it ended. Never panics on bad data: every
/// failure becomes a `failed` record with the reason.
/// `sequence` is the run's place among its plan's runs of the same kind.
#[allow(clippy::too_many_arguments)]
pub fn execute(
    repositories: &Repositories,
    handle: &Handle,
    agency_code: &str,
    spec: &PlanSpec,
    run: &RunRecord,
    sequence: u64,
    cancel: Arc<AtomicBool>,
    now: DateTime<Utc>,
) -> RunEnd {
    let started = std::time::Instant::now();
    let cancelled = cancel.clone();
    let limit = (run.kind == "backup")
        .then(|| spec.bandwidth_limit_kib.map(|kib| kib.saturating_mul(1024)))
        .flatten();
    let outcome = if run.kind == "replicate" && !repositories.has_replica() {
        Err("no replica configured: set [repositories] replica_root to replicate".to_owned())
    } else {
        Ok(())
    };
    let outcome = outcome
        .and_then(|()| repositories.open(handle, agency_code, limit, Some(cancel.clone())))
        .and_then(|repository| match run.kind.as_str() {
            "backup" => run_backup(repositories, &repository, spec, run, cancel, now)
                .map(|end| with_repository_size(&repository, end)),
            "retention" => run_retention(&repository, spec, run, now)
                .map(|end| with_repository_size(&repository, end))
                .and_then(|end| {
                    replica_retention(
                        repositories,
                        handle,
                        agency_code,
                        &repository,
                        spec,
                        run,
                        now,
                        end,
                    )
                }),
            "verify" => run_verify(&repository, spec, sequence),
            "drill" => run_drill(&repository, &repositories.scratch, run, cancel),
            "replicate" => run_replicate(
                repositories,
                handle,
                agency_code,
                &repository,
                run,
                cancel,
                now,
            ),
            other => Err(format!("unknown run kind `{other}`")),
        });
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(mut end) => {
            if let Ok(mut stats) = serde_json::from_str::<serde_json::Value>(&end.stats_json) {
                stats["duration_seconds"] = json!(seconds);
                end.stats_json = stats.to_string();
            }
            end
        }
        Err(error) => RunEnd {
            status: if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                "cancelled"
            } else {
                "failed"
            },
            stats_json: json!({ "duration_seconds": seconds }).to_string(),
            snapshot_id: None,
            error: Some(error),
        },
    }
}

/// Runs the plan's before-backup program on the daemon's host, for a plan that backs the
/// daemon's host up (an agent runs it for a plan on a colocated server).
///
/// # Errors
/// Why the program failed; the run then fails and nothing is read.
pub(crate) fn before_backup(spec: &PlanSpec, cancel: &AtomicBool) -> Result<(), String> {
    let Some(before) = &spec.before_backup else {
        return Ok(());
    };
    // The plan's spec comes from the catalog: an empty command is refused by `hook::run`,
    // not indexed here.
    let program = before.command.first().map_or("", String::as_str);
    tracing::info!(program, "running the plan's before-backup program");
    crate::hook::run(
        crate::hook::Stage::Before,
        &before.command,
        &[],
        std::time::Duration::from_secs(before.timeout_secs),
        cancel,
    )
    .map_err(|error| error.to_string())
}

/// Runs the plan's after-backup program on the daemon's host once a backup of its host
/// has ended — whatever the outcome, told in `CADANG_BACKUP_RESULT`, even when the
/// before-backup program failed (it may have half done what the after program undoes)
/// or the run was stopped — and adds its failure to the run's end. The snapshot stands.
pub(crate) fn after_backup(
    spec: &PlanSpec,
    outcome: Result<RunEnd, String>,
    cancel: &AtomicBool,
) -> Result<RunEnd, String> {
    let Some(after) = &spec.after_backup else {
        return outcome;
    };
    let result = match &outcome {
        Ok(end) => end.status,
        Err(_) if cancel.load(std::sync::atomic::Ordering::Relaxed) => "cancelled",
        Err(_) => "failed",
    };
    let timeout = std::time::Duration::from_secs(after.timeout_secs);
    let Some(failure) = crate::hook::run_after(&after.command, timeout, result) else {
        return outcome;
    };
    match outcome {
        Ok(mut end) => {
            if let Ok(mut stats) = serde_json::from_str::<serde_json::Value>(&end.stats_json) {
                stats["after_backup_error"] = json!(failure);
                end.stats_json = stats.to_string();
            }
            end.error = Some(crate::hook::and_after(end.error.take(), &failure));
            Ok(end)
        }
        Err(error) => Err(crate::hook::and_after(Some(error), &failure)),
    }
}

fn run_backup(
    repositories: &Repositories,
    repository: &Repository,
    spec: &PlanSpec,
    run: &RunRecord,
    cancel: Arc<AtomicBool>,
    now: DateTime<Utc>,
) -> Result<RunEnd, String> {
    let run_tag = tags::run(run.id);
    // A run taken over from a daemon that died after committing its snapshot but before
    // recording it: adopt that snapshot instead of backing up twice.
    if run.attempts > 1 {
        let (snapshots, _) = repository
            .load_snapshots()
            .map_err(|error| error.to_string())?;
        if let Some((id, _)) = snapshots
            .iter()
            .find(|(_, snapshot)| snapshot.tags.contains(&run_tag))
        {
            return Ok(RunEnd {
                status: "ok",
                stats_json: json!({ "adopted_snapshot": true }).to_string(),
                snapshot_id: Some(id.to_hex()),
                error: None,
            });
        }
    }
    repositories.owe_after(spec, run)?;
    let outcome = before_backup(spec, &cancel)
        .and_then(|()| back_up_here(repository, spec, run, &cancel, now));
    let end = after_backup(spec, outcome, &cancel);
    repositories.settle_after(run);
    end
}

/// Reads the plan's paths on the daemon's host and commits the snapshot.
fn back_up_here(
    repository: &Repository,
    spec: &PlanSpec,
    run: &RunRecord,
    cancel: &Arc<AtomicBool>,
    now: DateTime<Utc>,
) -> Result<RunEnd, String> {
    let options = BackupOptions {
        paths: spec.paths.iter().map(PathBuf::from).collect(),
        tags: vec![tags::plan(run.plan_id), tags::run(run.id)],
        excludes: spec.excludes.clone(),
        markers: spec.markers()?,
        exclude_larger_than: spec.exclude_larger_than,
        host: Some(DAEMON_HOST.into()),
        // The daemon's clock, not the source's, dates the snapshot: retention is steered
        // by trusted time.
        time: Some(now),
        cancel: Some(cancel.clone()),
        ..BackupOptions::default()
    };
    let progress = BackupProgress::default();
    let result = backup(repository, &options, &progress).map_err(|error| error.to_string())?;
    let summary = &result.snapshot.summary;
    let read = progress
        .bytes_done
        .load(std::sync::atomic::Ordering::Relaxed);
    let seconds = summary
        .backup_end
        .zip(summary.backup_start)
        .map(|(end, start)| (end - start).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(0.0);
    let stats = json!({
        "files_new": summary.files_new,
        "files_changed": summary.files_changed,
        "files_unchanged": summary.files_unmodified,
        "files_failed": summary.files_failed,
        "bytes_read": read,
        "bytes_total": summary.total_bytes_processed,
        "bytes_added_raw": summary.data_added_raw,
        "bytes_added": summary.data_added,
        "dedup_ratio": if summary.data_added > 0 { read as f64 / summary.data_added as f64 } else { 0.0 },
        "throughput_bytes_per_second": if seconds > 0.0 { read as f64 / seconds } else { 0.0 },
    });
    let cancelled = cancel.load(std::sync::atomic::Ordering::Relaxed);
    let (status, error) = if cancelled {
        (
            "cancelled",
            Some("stopped at a safe point (shutdown or window end)".to_owned()),
        )
    } else if result.is_partial() {
        let mut problems: Vec<String> = result
            .errors
            .iter()
            .take(20)
            .map(|error| format!("{error:?}"))
            .collect();
        problems.extend(
            result
                .changed_during_read
                .iter()
                .take(20)
                .map(|path| format!("{path}: changed while read")),
        );
        ("partial", Some(problems.join("; ")))
    } else {
        ("ok", None)
    };
    Ok(RunEnd {
        status,
        stats_json: stats.to_string(),
        snapshot_id: Some(result.snapshot_id.to_hex()),
        error,
    })
}

/// Applies the plan's retention to the plan's own snapshots (tagged `plan:ID`): the
/// agency's repository holds every plan's, and another plan's keep longer.
fn run_retention(
    repository: &Repository,
    spec: &PlanSpec,
    run: &RunRecord,
    now: DateTime<Utc>,
) -> Result<RunEnd, String> {
    let (removed, kept, report) = apply_retention(repository, spec, run, now, &HashSet::new())?;
    Ok(RunEnd {
        status: "ok",
        stats_json: json!({
            "snapshots_kept": kept,
            "snapshots_removed": removed,
            "packs_deleted": report.packs_deleted,
            "packs_repacked": report.packs_repacked,
            "partial_uploads_deleted": report.partial_uploads_deleted,
            "bytes_deleted": report.bytes_deleted,
        })
        .to_string(),
        snapshot_id: None,
        error: None,
    })
}

/// The plan's retention on the agency's replica, once it has been applied to the
/// primary: the same policy, on the replica's copies of the plan's snapshots (a copy
/// keeps its snapshot's time and tags, a hold included), then a prune. It is applied to
/// what the replica holds, not mirrored from what the primary lost: a primary that lost
/// snapshots to damage or to a mistake does not take their last copies with it. Nothing
/// is done without replicas, or before the first replication made the replica.
///
/// # Errors
/// The replica could not be opened, read or pruned (the primary's retention is done).
#[allow(clippy::too_many_arguments)]
fn replica_retention(
    repositories: &Repositories,
    handle: &Handle,
    agency_code: &str,
    primary: &Repository,
    spec: &PlanSpec,
    run: &RunRecord,
    now: DateTime<Utc>,
    mut end: RunEnd,
) -> Result<RunEnd, String> {
    let Some(replica) = repositories.existing_replica(handle, agency_code, primary)? else {
        return Ok(end);
    };
    // A copy made before its snapshot was held on the primary (the hold gave it a new
    // id there) is kept as the held snapshot is, until the held one is copied too.
    let (snapshots, _) = primary
        .load_snapshots()
        .map_err(|error| error.to_string())?;
    let held: HashSet<SnapshotId> = snapshots
        .iter()
        .filter(|(_, snapshot)| snapshot.tags.iter().any(|tag| tag == crate::app::HOLD_TAG))
        .flat_map(|(id, snapshot)| std::iter::once(*id).chain(snapshot.rewritten_from))
        .collect();
    let (removed, kept, report) =
        apply_retention(&replica, spec, run, now, &held).map_err(|error| {
            format!("the primary's retention is done; the replica's failed: {error}")
        })?;
    if let Ok(mut stats) = serde_json::from_str::<serde_json::Value>(&end.stats_json) {
        stats["replica_snapshots_kept"] = json!(kept);
        stats["replica_snapshots_removed"] = json!(removed);
        stats["replica_packs_deleted"] = json!(report.packs_deleted);
        stats["replica_packs_repacked"] = json!(report.packs_repacked);
        stats["replica_bytes_deleted"] = json!(report.bytes_deleted);
        end.stats_json = stats.to_string();
    }
    Ok(end)
}

/// Applies the plan's retention policy to the plan's own snapshots in `repository`
/// (held ones are always kept, and copies of the snapshots `held_originals` names),
/// then prunes: (removed, kept, what prune did).
fn apply_retention(
    repository: &Repository,
    spec: &PlanSpec,
    run: &RunRecord,
    now: DateTime<Utc>,
    held_originals: &HashSet<SnapshotId>,
) -> Result<(u64, u64, crate::engine::prune::PruneReport), String> {
    let retention = &spec.retention;
    if retention.is_empty() {
        return Err(
            "the plan's retention policy keeps nothing; refusing to remove every snapshot".into(),
        );
    }
    let policy = KeepPolicy {
        last: retention.last,
        hourly: retention.hourly,
        daily: retention.daily,
        weekly: retention.weekly,
        monthly: retention.monthly,
        yearly: retention.yearly,
        keep_tags: with_hold(&retention.keep_tags),
        ..KeepPolicy::default()
    };
    let (mut snapshots, _) = repository
        .load_snapshots()
        .map_err(|error| error.to_string())?;
    let tag = tags::plan(run.plan_id);
    snapshots.retain(|(_, snapshot)| snapshot.tags.contains(&tag));
    let decisions = apply(&policy, &snapshots, jakarta());
    let copy_of_held = |id: &SnapshotId| {
        snapshots.iter().any(|(copy, snapshot)| {
            copy == id
                && snapshot
                    .original
                    .is_some_and(|o| held_originals.contains(&o))
        })
    };
    let mut removed = 0u64;
    for decision in decisions
        .iter()
        .filter(|decision| !decision.keep && !copy_of_held(&decision.id))
    {
        repository
            .delete_snapshot(&decision.id)
            .map_err(|error| error.to_string())?;
        removed += 1;
    }
    let report = prune(
        repository,
        &PruneOptions {
            now,
            ..PruneOptions::default()
        },
    )
    .map_err(|error| error.to_string())?;
    Ok((removed, decisions.len() as u64 - removed, report))
}

/// A plan's keep-tag lists and the hold's: a held snapshot outlives every retention.
pub fn with_hold(keep_tags: &[String]) -> Vec<String> {
    let mut lists = keep_tags.to_vec();
    if !lists.iter().any(|list| list == crate::app::HOLD_TAG) {
        lists.push(crate::app::HOLD_TAG.to_owned());
    }
    lists
}

/// The part (`n` of `t`) the `sequence`-th verification reads: consecutive runs read
/// consecutive parts, so every `t` runs read every pack once, whatever the schedule.
pub fn verify_part(sequence: u64, parts: u32) -> (u32, u32) {
    let t = parts.max(1);
    let n = u32::try_from(sequence % u64::from(t)).unwrap_or(0) + 1;
    (n, t)
}

fn run_verify(repository: &Repository, spec: &PlanSpec, sequence: u64) -> Result<RunEnd, String> {
    let (n, t) = verify_part(sequence, spec.verify_parts);
    let report = check(
        repository,
        &CheckOptions {
            read_data: ReadData::Subset { n, t },
        },
    )
    .map_err(|error| error.to_string())?;
    let ok = report.is_ok();
    Ok(RunEnd {
        status: if ok { "ok" } else { "verify_differences" },
        stats_json: json!({
            "part": format!("{n}/{t}"),
            "snapshots": report.snapshots,
            "packs": report.packs,
            "packs_read": report.packs_read,
            "errors": report.errors.len(),
        })
        .to_string(),
        snapshot_id: None,
        error: (!ok).then(|| {
            report
                .errors
                .iter()
                .take(50)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        }),
    })
}

/// Adds the repository's size after a run to its statistics (the storage report's
/// source): bytes stored (compressed and encrypted) and the unique data they hold.
fn with_repository_size(repository: &Repository, mut end: RunEnd) -> RunEnd {
    let Ok((index, _)) = repository.load_index() else {
        return end;
    };
    let (mut stored, mut raw) = (0u64, 0u64);
    for (_, _, location) in index.iter() {
        stored += u64::from(location.length);
        raw += u64::from(location.raw_length);
    }
    if let Ok(mut stats) = serde_json::from_str::<serde_json::Value>(&end.stats_json) {
        stats["repository_stored_bytes"] = json!(stored);
        stats["repository_raw_bytes"] = json!(raw);
        end.stats_json = stats.to_string();
    }
    end
}

/// A restore drill: the plan's latest snapshot restored to a scratch directory, every
/// file re-read and compared with the snapshot, the scratch copy removed. Proves the
/// backups can be restored instead of assuming it.
fn run_drill(
    repository: &Repository,
    scratch: &Path,
    run: &RunRecord,
    cancel: Arc<AtomicBool>,
) -> Result<RunEnd, String> {
    let tag = tags::plan(run.plan_id);
    let (snapshots, _) = repository
        .load_snapshots()
        .map_err(|error| error.to_string())?;
    let (id, snapshot) = snapshots
        .iter()
        .filter(|(_, snapshot)| snapshot.tags.contains(&tag))
        .max_by_key(|(_, snapshot)| snapshot.time)
        .ok_or_else(|| format!("plan {} has no snapshot to restore yet", run.plan_id))?;
    let target = scratch.join(format!("run-{}", run.id));
    // A drill taken over from a daemon that died leaves its half-restored tree.
    if target.exists() {
        std::fs::remove_dir_all(&target)
            .map_err(|error| format!("cannot clear {}: {error}", target.display()))?;
    }
    let started = std::time::Instant::now();
    let progress = RestoreProgress::default();
    let outcome = restore(
        repository,
        id,
        &RestoreOptions {
            target: target.clone(),
            verify: true,
            cancel: Some(cancel),
            ..RestoreOptions::default()
        },
        &progress,
    );
    // The restored data is the agency's: never leave it lying in scratch.
    let cleaned = std::fs::remove_dir_all(&target);
    let result = outcome.map_err(|error| error.to_string())?;
    if let Err(error) = cleaned {
        tracing::warn!(target = %target.display(), %error, "cannot remove a drill's scratch copy");
    }
    let seconds = started.elapsed().as_secs_f64();
    let verify = result.verify.clone().unwrap_or_default();
    let ok = result.is_success() && result.damaged_blobs.is_empty();
    let mut problems: Vec<String> = result
        .errors
        .iter()
        .chain(verify.mismatches.iter())
        .take(50)
        .map(|error| format!("{error:?}"))
        .collect();
    problems.extend(
        result
            .damaged_blobs
            .iter()
            .take(20)
            .map(|blob| format!("damaged blob {blob}")),
    );
    Ok(RunEnd {
        status: if ok { "ok" } else { "verify_differences" },
        stats_json: json!({
            "snapshot_time": snapshot.time,
            "files_restored": result.files_restored,
            "bytes_restored": result.bytes_restored,
            "files_verified": verify.files_checked,
            "bytes_verified": verify.bytes_checked,
            "mismatches": verify.mismatches.len(),
            "errors": result.errors.len(),
            "damaged_blobs": result.damaged_blobs.len(),
            "throughput_bytes_per_second": if seconds > 0.0 { result.bytes_restored as f64 / seconds } else { 0.0 },
        })
        .to_string(),
        snapshot_id: Some(id.to_hex()),
        error: (!ok).then(|| problems.join("; ")),
    })
}

/// A replication: the plan's snapshots the replica does not hold yet (by `original`) are
/// copied to it, then every blob of every copied snapshot is read back from the replica
/// and authenticated. Stats: `snapshots_copied`, `snapshots_skipped` (already there),
/// `blobs_copied`, `bytes_added`, `blobs_verified`, `bytes_verified`, `verify_errors`,
/// `snapshots_pending` and `lag_secs` (age of the oldest plan snapshot still missing from
/// the replica; 0 when it holds everything).
fn run_replicate(
    repositories: &Repositories,
    handle: &Handle,
    agency_code: &str,
    primary: &Repository,
    run: &RunRecord,
    cancel: Arc<AtomicBool>,
    now: DateTime<Utc>,
) -> Result<RunEnd, String> {
    let replica = repositories.open_replica(handle, agency_code, primary, Some(cancel.clone()))?;
    let tag = tags::plan(run.plan_id);
    let (snapshots, _) = primary
        .load_snapshots()
        .map_err(|error| error.to_string())?;
    let plan_snapshots: Vec<_> = snapshots
        .iter()
        .filter(|(_, snapshot)| snapshot.tags.contains(&tag))
        .collect();
    let present = replicated(&replica)?;
    let todo: Vec<_> = plan_snapshots
        .iter()
        .filter(|(id, _)| !present.contains(id))
        .map(|(id, _)| *id)
        .collect();
    let stopped = || cancel.load(std::sync::atomic::Ordering::Relaxed);
    if stopped() {
        return Err("stopped before copying".into());
    }
    let report = copy_with(
        primary,
        &replica,
        &todo,
        &CopyOptions {
            hook: None,
            cancel: Some(cancel.clone()),
        },
    )
    .map_err(|error| error.to_string())?;
    if stopped() {
        return Err("stopped after copying, before reading the copies back".into());
    }
    let copied: Vec<_> = report
        .copied
        .iter()
        .filter_map(|(_, copy)| SnapshotId::from_hex(copy).ok())
        .collect();
    let read = read_back(&replica, &copied).map_err(|error| error.to_string())?;
    let present = replicated(&replica)?;
    let oldest_missing = plan_snapshots
        .iter()
        .filter(|(id, _)| !present.contains(id))
        .map(|(_, snapshot)| snapshot.time)
        .min();
    let lag_secs = oldest_missing.map_or(0, |time| (now - time).num_seconds().max(0));
    let pending = plan_snapshots
        .iter()
        .filter(|(id, _)| !present.contains(id))
        .count();
    let ok = read.is_ok();
    Ok(RunEnd {
        status: if ok { "ok" } else { "verify_differences" },
        stats_json: json!({
            "replica": repositories.replica_location(agency_code),
            "snapshots_copied": report.copied.len(),
            "snapshots_skipped": report.skipped.len() + (plan_snapshots.len() - todo.len()),
            "blobs_copied": report.blobs_copied,
            "bytes_added": report.bytes_added,
            "blobs_verified": read.blobs_verified,
            "bytes_verified": read.bytes_verified,
            "verify_errors": read.errors.len(),
            "snapshots_pending": pending,
            "lag_secs": lag_secs,
        })
        .to_string(),
        snapshot_id: None,
        error: (!ok).then(|| {
            format!(
                "the replica's copies do not read back: {}",
                read.errors
                    .iter()
                    .take(50)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }),
    })
}

/// The primary snapshots a replica holds copies of.
fn replicated(replica: &Repository) -> Result<HashSet<SnapshotId>, String> {
    let (copies, _) = replica
        .load_snapshots()
        .map_err(|error| error.to_string())?;
    Ok(copies
        .iter()
        .filter_map(|(_, snapshot)| snapshot.original)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Retention;
    use crate::catalog::{PlanId, RunId};

    fn spec(source: &Path) -> PlanSpec {
        PlanSpec {
            server: None,
            paths: vec![source.display().to_string()],
            excludes: vec![],
            exclude_if_present: vec![],
            exclude_caches: false,
            exclude_larger_than: None,
            schedule: "0 2 * * *".into(),
            time_zone: "Asia/Jakarta".into(),
            retention: Retention::default(),
            retention_schedule: None,
            verify_schedule: None,
            verify_parts: 7,
            drill_schedule: Some("0 3 * * 0".into()),
            replicate_schedule: None,
            window: None,
            bandwidth_limit_kib: None,
            compress_on: crate::app::CompressOn::Agent,
            restic: None,
            before_backup: None,
            after_backup: None,
        }
    }

    /// A spec read back from the catalog with an empty command fails the run with a
    /// reason; it never panics the daemon.
    #[test]
    fn a_stored_empty_before_backup_command_fails_the_run() {
        let mut plan = spec(Path::new("/srv"));
        plan.before_backup = Some(crate::app::BackupProgram {
            command: vec![],
            timeout_secs: 60,
        });
        let error = before_backup(&plan, &AtomicBool::new(false)).unwrap_err();
        assert!(error.contains("absolute path"), "{error}");
        plan.before_backup = Some(crate::app::BackupProgram {
            command: vec!["/bin/true".into()],
            timeout_secs: 60,
        });
        before_backup(&plan, &AtomicBool::new(false)).unwrap();
    }

    /// The after-backup program on the daemon's host hears the outcome, runs even for a
    /// cancelled run, and its failure joins the run's error; the snapshot stands.
    #[test]
    fn the_after_backup_program_hears_the_outcome_and_its_failure_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let heard = dir.path().join("heard");
        let mut plan = spec(Path::new("/srv"));
        plan.after_backup = Some(crate::app::BackupProgram {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo $CADANG_BACKUP_RESULT >> {}", heard.display()),
            ],
            timeout_secs: 60,
        });
        let ended = |status: &'static str| RunEnd {
            status,
            stats_json: json!({ "files_new": 3 }).to_string(),
            snapshot_id: Some("ab".repeat(32)),
            error: None,
        };
        let not_cancelled = AtomicBool::new(false);
        let cancelled = AtomicBool::new(true);
        assert_eq!(
            after_backup(&plan, Ok(ended("partial")), &not_cancelled).unwrap(),
            ended("partial")
        );
        after_backup(&plan, Err("disk gone".into()), &not_cancelled).unwrap_err();
        after_backup(&plan, Err("stopped".into()), &cancelled).unwrap_err();
        assert_eq!(
            std::fs::read_to_string(&heard).unwrap(),
            "partial\nfailed\ncancelled\n"
        );

        plan.after_backup = Some(crate::app::BackupProgram {
            command: vec!["/bin/false".into()],
            timeout_secs: 60,
        });
        let end = after_backup(&plan, Ok(ended("ok")), &not_cancelled).unwrap();
        assert_eq!((end.status, end.snapshot_id.is_some()), ("ok", true));
        let error = end.error.unwrap();
        assert!(
            error.contains("after-backup program `/bin/false` failed"),
            "{error}"
        );
        let stats: serde_json::Value = serde_json::from_str(&end.stats_json).unwrap();
        assert_eq!(
            (
                stats["files_new"].as_u64(),
                stats["after_backup_error"].as_str()
            ),
            (Some(3), Some(error.as_str()))
        );
        let error = after_backup(&plan, Err("disk gone".into()), &not_cancelled).unwrap_err();
        assert!(
            error.starts_with("disk gone; the after-backup program"),
            "{error}"
        );
    }

    fn run(id: i64, kind: &str) -> RunRecord {
        let now = Utc::now();
        RunRecord {
            id: RunId(id),
            plan_id: PlanId(7),
            kind: kind.into(),
            trigger: "schedule".into(),
            due_at: now,
            status: "running".into(),
            lease_owner: Some("test".into()),
            lease_expires_at: None,
            attempts: 1,
            queued_at: now,
            started_at: Some(now),
            finished_at: None,
            stats_json: None,
            snapshot_id: None,
            error: None,
            request_id: None,
            step: None,
            not_before: None,
        }
    }

    fn stats(end: &RunEnd) -> serde_json::Value {
        serde_json::from_str(&end.stats_json).unwrap()
    }

    #[test]
    fn a_drill_restores_and_verifies_the_latest_snapshot_and_reports_damage() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir_all(source.join("db")).unwrap();
        for n in 0..20u8 {
            let content: Vec<u8> = (0..40_000u32)
                .map(|i| (i as u8) ^ n.wrapping_mul(31))
                .collect();
            std::fs::write(source.join("db").join(format!("table{n}.dat")), content).unwrap();
        }
        let scratch = dir.path().join("drills");
        let repositories = Repositories::new(
            dir.path().join("repositories").display().to_string(),
            [9; 32],
            StoreOptions::default(),
        )
        .with_scratch(scratch.clone());
        let spec = spec(&source);
        let cancel = || Arc::new(AtomicBool::new(false));
        let handle = runtime.handle();

        // Nothing to drill before the first backup.
        let early = execute(
            &repositories,
            handle,
            "DINKES",
            &spec,
            &run(1, "drill"),
            0,
            cancel(),
            Utc::now(),
        );
        assert_eq!(early.status, "failed");
        assert!(
            early.error.as_deref().unwrap().contains("no snapshot"),
            "{early:?}"
        );

        let backup = execute(
            &repositories,
            handle,
            "DINKES",
            &spec,
            &run(2, "backup"),
            0,
            cancel(),
            Utc::now(),
        );
        assert_eq!(backup.status, "ok", "{backup:?}");
        let backup_stats = stats(&backup);
        assert!(backup_stats["repository_stored_bytes"].as_u64().unwrap() > 0);
        assert_eq!(backup_stats["bytes_total"], serde_json::json!(800_000));

        let drill = execute(
            &repositories,
            handle,
            "DINKES",
            &spec,
            &run(3, "drill"),
            0,
            cancel(),
            Utc::now(),
        );
        assert_eq!(drill.status, "ok", "{drill:?}");
        assert_eq!(drill.snapshot_id, backup.snapshot_id);
        let drill_stats = stats(&drill);
        assert_eq!(drill_stats["files_restored"], serde_json::json!(20));
        assert_eq!(drill_stats["bytes_verified"], serde_json::json!(800_000));
        assert!(
            std::fs::read_dir(&scratch).unwrap().next().is_none(),
            "the agency's data does not stay in scratch"
        );

        // Damage every pack: the drill says so instead of passing.
        let data = dir.path().join("repositories").join("dinkes").join("data");
        for entry in walk(&data) {
            let mut bytes = std::fs::read(&entry).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(&entry, bytes).unwrap();
        }
        let damaged = execute(
            &repositories,
            handle,
            "DINKES",
            &spec,
            &run(4, "drill"),
            0,
            cancel(),
            Utc::now(),
        );
        assert_ne!(damaged.status, "ok", "{damaged:?}");
        assert!(damaged.error.is_some());
        assert!(std::fs::read_dir(&scratch).unwrap().next().is_none());
    }

    /// A plan's retention removes its own snapshots only (another plan of the same agency,
    /// which keeps more, loses nothing), and never one its holds keep; once a replication
    /// made the replica, the same policy applies there (a copy of a snapshot held after
    /// it was copied is kept), and before that no replica is made.
    #[test]
    fn retention_keeps_to_its_own_plans_snapshots_in_the_primary_and_the_replica() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let replicas = dir.path().join("replicas");
        let repositories = Repositories::new(
            dir.path().join("repositories").display().to_string(),
            [3; 32],
            StoreOptions::default(),
        )
        .with_replica(
            Some(replicas.display().to_string()),
            StoreOptions::default(),
        );
        let mut specs = Vec::new();
        for name in ["web", "archive"] {
            let source = dir.path().join(name);
            std::fs::create_dir_all(&source).unwrap();
            specs.push(spec(&source));
        }
        specs[0].retention = Retention {
            last: 3,
            ..Retention::default()
        };
        let run_of = |id: i64, plan: i64, kind: &str| RunRecord {
            plan_id: PlanId(plan),
            ..run(id, kind)
        };
        let execute_run = |spec: &PlanSpec, run: &RunRecord| {
            execute(
                &repositories,
                runtime.handle(),
                "DINKES",
                spec,
                run,
                0,
                Arc::new(AtomicBool::new(false)),
                Utc::now(),
            )
        };
        let mut id = 0;
        for _ in 0..3 {
            for (plan, spec) in [(7, &specs[0]), (8, &specs[1])] {
                id += 1;
                std::fs::write(Path::new(&spec.paths[0]).join("f"), id.to_string()).unwrap();
                assert_eq!(execute_run(spec, &run_of(id, plan, "backup")).status, "ok");
            }
        }
        // Before the first replication there is no replica: retention makes none.
        id += 1;
        let nothing = execute_run(&specs[0], &run_of(id, 7, "retention"));
        assert_eq!(nothing.status, "ok", "{nothing:?}");
        assert_eq!(stats(&nothing)["snapshots_removed"], 0);
        assert!(stats(&nothing).get("replica_snapshots_kept").is_none());
        assert!(!replicas.exists());
        for (plan, spec) in [(7, &specs[0]), (8, &specs[1])] {
            id += 1;
            let copied = execute_run(spec, &run_of(id, plan, "replicate"));
            assert_eq!(stats(&copied)["snapshots_copied"], 3, "{copied:?}");
        }
        specs[0].retention.last = 1;
        // The plan's first snapshot is held (`HoldSnapshot`) after it was replicated:
        // kept though the plan names no keep-tag, and so is its copy in the replica
        // (which carries no hold tag: the hold gave the primary's a new id).
        let repository = repositories
            .open(runtime.handle(), "DINKES", None, None)
            .unwrap();
        let (all, _) = repository.load_snapshots().unwrap();
        let first = all
            .into_iter()
            .find(|(_, s)| s.tags.contains(&"plan:7".to_owned()))
            .unwrap();
        let hold = crate::engine::rewrite::TagChange {
            add: vec!["hold".into()],
            ..Default::default()
        };
        crate::engine::rewrite::retag(&repository, vec![first], &hold).unwrap();
        assert!(specs[0].retention.keep_tags.is_empty());

        let retention = execute_run(&specs[0], &run_of(id + 1, 7, "retention"));
        assert_eq!(retention.status, "ok", "{retention:?}");
        let retention = stats(&retention);
        let counts = |prefix: &str| {
            (
                retention[format!("{prefix}snapshots_kept")].as_u64(),
                retention[format!("{prefix}snapshots_removed")].as_u64(),
            )
        };
        assert_eq!(counts(""), (Some(2), Some(1)), "{retention}");
        // The replica: the same policy on its copies of the plan's snapshots.
        assert_eq!(counts("replica_"), (Some(2), Some(1)), "{retention}");
        let of = |left: &[(SnapshotId, crate::engine::snapshot::Snapshot)], tag: &str| {
            left.iter()
                .filter(|(_, s)| s.tags.contains(&tag.to_owned()))
                .count()
        };
        let (left, _) = repository.load_snapshots().unwrap();
        assert_eq!(
            (of(&left, "plan:7"), of(&left, "plan:8"), of(&left, "hold")),
            (2, 3, 1)
        );
        let replica = repositories
            .existing_replica(runtime.handle(), "DINKES", &repository)
            .unwrap()
            .expect("the replica made by the replications");
        let (copies, _) = replica.load_snapshots().unwrap();
        assert_eq!((of(&copies, "plan:7"), of(&copies, "plan:8")), (2, 3));
        // What the replica kept: the latest, and the copy of the held one.
        let kept: HashSet<SnapshotId> = copies.iter().filter_map(|(_, s)| s.original).collect();
        for (id, snapshot) in left
            .iter()
            .filter(|(_, s)| s.tags.contains(&"plan:7".to_owned()))
        {
            assert!(
                kept.contains(id) || snapshot.rewritten_from.is_some_and(|o| kept.contains(&o)),
                "{id:?} has a copy"
            );
        }
        assert!(
            crate::engine::check::check(&replica, &CheckOptions::default())
                .unwrap()
                .is_ok()
        );
    }

    /// Runs of several plans of one agency start together on a fresh daemon: each finds
    /// no repository and creates one; the runs that lose the race for `config` open the
    /// winner's repository instead of failing, for the primary and for the replica.
    #[test]
    fn runs_creating_an_agency_repository_at_once_all_open_the_same_one() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let repositories = Repositories::new(
            dir.path().join("repositories").display().to_string(),
            [5; 32],
            StoreOptions::default(),
        )
        .with_replica(
            Some(dir.path().join("replicas").display().to_string()),
            StoreOptions::default(),
        );
        for agency in ["DINKES", "BAPPEDA", "DISDIK"] {
            let opened: Vec<(String, String)> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            let handle = runtime.handle();
                            let primary = repositories.open(handle, agency, None, None)?;
                            let replica =
                                repositories.open_replica(handle, agency, &primary, None)?;
                            Ok::<_, String>((
                                primary.config().id.clone(),
                                replica.config().id.clone(),
                            ))
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|worker| worker.join().unwrap().unwrap())
                    .collect()
            });
            assert!(opened.iter().all(|ids| ids == &opened[0]), "{opened:?}");
            assert_ne!(opened[0].0, opened[0].1);
            for root in ["repositories", "replicas"] {
                let keys = dir
                    .path()
                    .join(root)
                    .join(agency.to_ascii_lowercase())
                    .join("keys");
                assert_eq!(
                    std::fs::read_dir(&keys).unwrap().count(),
                    1,
                    "the losers take back their key slots in {}",
                    keys.display()
                );
            }
        }
    }

    #[test]
    fn a_replication_copies_new_snapshots_reads_them_back_and_repairs_restores() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        for n in 0..8u8 {
            let content: Vec<u8> = (0..50_000u32).map(|i| (i as u8) ^ n).collect();
            std::fs::write(source.join(format!("f{n}")), content).unwrap();
        }
        let root = dir.path().join("repositories").display().to_string();
        let cancel = || Arc::new(AtomicBool::new(false));
        let handle = runtime.handle();
        let spec = spec(&source);

        // Without a replica root the run says what is missing.
        let bare = Repositories::new(root.clone(), [9; 32], StoreOptions::default());
        assert!(!bare.has_replica());
        assert_eq!(bare.replica_location("DINKES"), None);
        let refused = execute(
            &bare,
            handle,
            "DINKES",
            &spec,
            &run(1, "replicate"),
            0,
            cancel(),
            Utc::now(),
        );
        assert_eq!(refused.status, "failed");
        assert!(
            refused
                .error
                .as_deref()
                .unwrap()
                .contains("no replica configured"),
            "{refused:?}"
        );

        let replica_root = dir.path().join("replicas");
        let repositories = Repositories::new(root, [9; 32], StoreOptions::default()).with_replica(
            Some(replica_root.display().to_string()),
            StoreOptions::default(),
        );
        assert_eq!(
            repositories.replica_location("DINKES"),
            Some(format!("{}/dinkes", replica_root.display()))
        );
        assert_ne!(
            repositories.replica_password("DINKES").expose(),
            repositories.password("DINKES").expose(),
            "the replica has its own password"
        );
        let backup = |id| {
            let end = execute(
                &repositories,
                handle,
                "DINKES",
                &spec,
                &run(id, "backup"),
                0,
                cancel(),
                Utc::now(),
            );
            assert_eq!(end.status, "ok", "{end:?}");
        };
        let replicate = |id| {
            let end = execute(
                &repositories,
                handle,
                "DINKES",
                &spec,
                &run(id, "replicate"),
                0,
                cancel(),
                Utc::now(),
            );
            assert_eq!(end.status, "ok", "{end:?}");
            stats(&end)
        };
        backup(2);
        backup(3);
        let first = replicate(4);
        assert_eq!(first["snapshots_copied"], serde_json::json!(2));
        assert_eq!(first["snapshots_skipped"], serde_json::json!(0));
        assert!(first["blobs_copied"].as_u64().unwrap() > 0);
        assert!(first["blobs_verified"].as_u64().unwrap() >= 9);
        assert_eq!(first["bytes_verified"], serde_json::json!(400_000));
        assert_eq!(first["verify_errors"], serde_json::json!(0));
        assert_eq!(first["lag_secs"], serde_json::json!(0));
        // Nothing new: nothing copied, both skipped.
        let again = replicate(5);
        assert_eq!(again["snapshots_copied"], serde_json::json!(0));
        assert_eq!(again["snapshots_skipped"], serde_json::json!(2));
        assert_eq!(again["blobs_copied"], serde_json::json!(0));
        // One new backup: only it is copied (its unchanged chunks are already there).
        backup(6);
        let third = replicate(7);
        assert_eq!(third["snapshots_copied"], serde_json::json!(1));
        assert!(third["blobs_copied"].as_u64().unwrap() < first["blobs_copied"].as_u64().unwrap());

        // The replica stands in for a damaged primary in a restore.
        let primary = repositories
            .open(handle, "DINKES", None, None)
            .expect("primary");
        let replica = repositories
            .open_replica(handle, "DINKES", &primary, None)
            .expect("replica");
        let data = dir.path().join("repositories").join("dinkes").join("data");
        for entry in walk(&data) {
            let mut bytes = std::fs::read(&entry).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(&entry, bytes).unwrap();
        }
        let (snapshots, _) = primary.load_snapshots().unwrap();
        let (latest, _) = snapshots.last().unwrap();
        let restored = restore(
            &primary,
            latest,
            &RestoreOptions {
                target: dir.path().join("restored"),
                verify: true,
                replica: Some(Arc::new(
                    crate::engine::restore::Replica::open(replica).unwrap(),
                )),
                ..RestoreOptions::default()
            },
            &RestoreProgress::default(),
        )
        .unwrap();
        assert!(restored.is_success(), "{restored:?}");
        assert!(!restored.repaired.is_empty());
    }

    #[test]
    fn consecutive_verifications_read_every_part_once_per_cycle() {
        for parts in [1, 2, 6, 7, 30] {
            let mut seen: Vec<u32> = (0..u64::from(parts))
                .map(|sequence| verify_part(sequence, parts).0)
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (1..=parts).collect::<Vec<_>>(), "t = {parts}");
        }
        assert_eq!(verify_part(7, 7), (1, 7), "the next cycle starts over");
    }

    #[test]
    fn restic_replicas_have_their_own_place_and_password_per_plan() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Repositories::new("/srv/repos".into(), [3; 32], StoreOptions::default());
        let refused = plain.restic_replica("DINKES", crate::catalog::PlanId(4));
        assert!(refused.unwrap_err().contains("no replica configured"));

        let root = dir.path().join("replicas");
        let local = plain.with_replica(Some(root.display().to_string()), StoreOptions::default());
        let four = local
            .restic_replica("DINKES", crate::catalog::PlanId(4))
            .unwrap();
        let five = local
            .restic_replica("dinkes", crate::catalog::PlanId(5))
            .unwrap();
        assert_eq!(
            four.location,
            format!("{}/dinkes.restic-plan-4", root.display())
        );
        assert!(four.env.is_empty());
        assert_ne!(four.password.expose(), five.password.expose());
        assert_eq!(four.password.expose().len(), 64);
        assert_ne!(
            four.password.expose(),
            local.replica_password("dinkes").expose(),
            "never the cadang replica's password"
        );
        assert_eq!(
            four.password.expose(),
            local
                .restic_replica("dinkes", crate::catalog::PlanId(4))
                .unwrap()
                .password
                .expose(),
            "derived, so the same every time"
        );

        let s3 = Repositories::new("/srv/repos".into(), [3; 32], StoreOptions::default())
            .with_replica(
                Some("s3://backups/replicas/".into()),
                StoreOptions {
                    s3_endpoint: Some("http://127.0.0.1:9000/".into()),
                    s3_region: Some("id-west-1".into()),
                },
            );
        let remote = s3
            .restic_replica("dinkes", crate::catalog::PlanId(4))
            .unwrap();
        assert_eq!(
            remote.location,
            "s3:http://127.0.0.1:9000/backups/replicas/dinkes.restic-plan-4"
        );
        assert_eq!(
            remote.env,
            [("AWS_DEFAULT_REGION".to_owned(), "id-west-1".to_owned())]
        );
        let other = Repositories::new("/srv/repos".into(), [3; 32], StoreOptions::default())
            .with_replica(Some("gs://bucket".into()), StoreOptions::default());
        assert!(
            other
                .restic_replica("dinkes", crate::catalog::PlanId(4))
                .unwrap_err()
                .contains("restic cannot address")
        );
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
