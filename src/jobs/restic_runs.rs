//! Runs of plans on existing restic repositories: the same run kinds and records as
//! cadang's own engine, carried out by the `restic` binary through [`crate::restic`].
//!
//! Backups, retention, verification and drills are judged as the native ones are: a
//! backup that could not read some files is `partial`, a check that finds errors or a
//! drill whose restore does not verify is `verify_differences`, never `ok`. The
//! `import` run lists the snapshots an adopted repository already holds into the run
//! record; a `replicate` run copies the repository's snapshots to the plan's restic
//! replica and checks it. The repository password comes from the catalog's sealed secrets and reaches
//! restic through a private file only (see [`crate::restic`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use super::{Repositories, verify_part};
use crate::app::PlanSpec;
use crate::catalog::{RunEnd, RunRecord};
use crate::remote::Progress;
use crate::restic::{
    BackupOptions, BackupStatus, Cancel, CheckOutcome, KeepPolicy, Restic, ResticError, ResticRepo,
    RestoreOptions,
};

/// Snapshots listed in an import run's record at most (the count is always whole).
const IMPORT_LISTED: usize = 1000;
/// Variables that choose S3 credentials.
const S3_CREDENTIALS: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
];
/// Per-file problems named in a run's error at most.
const PROBLEMS_NAMED: usize = 20;

/// Carries out `run` of a plan on a restic repository. Never panics on what restic
/// prints: every failure becomes a `failed` (or `cancelled`) record with the reason.
#[allow(clippy::too_many_arguments)]
pub async fn execute(
    repositories: &Repositories,
    agency_code: &str,
    repo: &ResticRepo,
    spec: &PlanSpec,
    run: &RunRecord,
    sequence: u64,
    cancel: Arc<AtomicBool>,
    progress: &Progress,
) -> RunEnd {
    let started = std::time::Instant::now();
    // The scheduler's flag, turned into restic's signal (SIGINT, then SIGKILL).
    let signal = Cancel::new();
    let watcher = {
        let (signal, cancel) = (signal.clone(), cancel.clone());
        tokio::spawn(async move {
            while !cancel.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            signal.cancel();
        })
    };
    let outcome = match Restic::locate(repositories.restic_binary.as_deref()).await {
        Ok(restic) => match run.kind.as_str() {
            "backup" => {
                backup(
                    repositories,
                    &restic,
                    repo,
                    spec,
                    run,
                    &signal,
                    &cancel,
                    progress,
                )
                .await
            }
            "retention" => match retention(&restic, repo, spec, run).await {
                Ok(end) => {
                    replica_retention(&restic, repositories, agency_code, spec, run, end).await
                }
                Err(error) => Err(error),
            },
            "verify" => verify(&restic, repo, spec, sequence).await,
            "drill" => drill(&restic, repo, &repositories.scratch, run, &signal).await,
            "import" => import(&restic, repo).await,
            "replicate" => {
                replicate(
                    &restic,
                    repositories,
                    agency_code,
                    repo,
                    spec,
                    run,
                    sequence,
                    &signal,
                )
                .await
            }
            other => Err(format!("unknown run kind `{other}`")),
        },
        Err(error) => Err(error.to_string()),
    };
    watcher.abort();
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(mut end) => {
            if let Ok(mut stats) = serde_json::from_str::<serde_json::Value>(&end.stats_json) {
                stats["engine"] = json!("restic");
                stats["duration_seconds"] = json!(seconds);
                end.stats_json = stats.to_string();
            }
            end
        }
        Err(error) => RunEnd {
            status: if cancel.load(Ordering::Relaxed) {
                "cancelled"
            } else {
                "failed"
            },
            stats_json: json!({ "engine": "restic", "duration_seconds": seconds }).to_string(),
            snapshot_id: None,
            error: Some(error),
        },
    }
}

fn restic_error(error: ResticError) -> String {
    error.to_string()
}

#[allow(clippy::too_many_arguments)]
async fn backup(
    repositories: &Repositories,
    restic: &Restic,
    repo: &ResticRepo,
    spec: &PlanSpec,
    run: &RunRecord,
    signal: &Cancel,
    cancel: &Arc<AtomicBool>,
    progress: &Progress,
) -> Result<RunEnd, String> {
    let run_tag = super::tags::run(run.id);
    // A run taken over from a daemon that died after restic saved the snapshot but
    // before the run was recorded: adopt that snapshot instead of backing up twice.
    if run.attempts > 1
        && let Some(done) = restic
            .snapshots(repo, std::slice::from_ref(&run_tag))
            .await
            .map_err(restic_error)?
            .pop()
    {
        return Ok(RunEnd {
            status: "ok",
            stats_json: json!({ "adopted_snapshot": true }).to_string(),
            snapshot_id: Some(done.id.to_string()),
            error: None,
        });
    }
    repositories.owe_after(spec, run)?;
    let outcome = {
        let (spec, cancel) = (spec.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || super::before_backup(&spec, &cancel))
            .await
            .map_err(|error| format!("the before-backup program's thread failed: {error}"))
            .and_then(|ran| ran)
    };
    let outcome = match outcome {
        Ok(()) => back_up_with_restic(restic, repo, spec, run, signal, progress).await,
        Err(error) => Err(error),
    };
    let (spec_, cancel) = (spec.clone(), cancel.clone());
    let end = tokio::task::spawn_blocking(move || super::after_backup(&spec_, outcome, &cancel))
        .await
        .map_err(|error| format!("the after-backup program's thread failed: {error}"))?;
    repositories.settle_after(run);
    end
}

/// Runs `restic backup` for the plan and reads its summary.
async fn back_up_with_restic(
    restic: &Restic,
    repo: &ResticRepo,
    spec: &PlanSpec,
    run: &RunRecord,
    signal: &Cancel,
    progress: &Progress,
) -> Result<RunEnd, String> {
    let run_tag = super::tags::run(run.id);
    let options = BackupOptions {
        paths: spec.paths.iter().map(PathBuf::from).collect(),
        tags: vec![super::tags::plan(run.plan_id), run_tag],
        host: Some(super::DAEMON_HOST.into()),
        excludes: spec.excludes.clone(),
        exclude_if_present: spec.exclude_if_present.clone(),
        exclude_caches: spec.exclude_caches,
        exclude_larger_than: spec.exclude_larger_than,
        limit_upload_kib: spec
            .bandwidth_limit_kib
            .map(|kib| u32::try_from(kib).unwrap_or(u32::MAX)),
    };
    let mut report = |now: &crate::restic::BackupProgress| {
        let value = json!({
            "percent_done": now.percent_done,
            "files_done": now.files_done,
            "files_total": now.total_files,
            "bytes_done": now.bytes_done,
            "bytes_total": now.total_bytes,
            "errors": now.error_count,
        });
        *progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
    };
    let outcome = restic
        .backup(repo, &options, &mut report, signal)
        .await
        .map_err(restic_error)?;
    let summary = &outcome.summary;
    let seconds = summary.total_duration.as_secs_f64();
    let stats = json!({
        "files_new": summary.files_new,
        "files_changed": summary.files_changed,
        "files_unchanged": summary.files_unmodified,
        "files_failed": outcome.file_errors_total,
        "bytes_read": summary.total_bytes_processed,
        "bytes_total": summary.total_bytes_processed,
        "bytes_added_raw": summary.data_added,
        "bytes_added": summary.data_added_packed.unwrap_or(summary.data_added),
        "dedup_ratio": if summary.data_added > 0 { summary.total_bytes_processed as f64 / summary.data_added as f64 } else { 0.0 },
        "throughput_bytes_per_second": if seconds > 0.0 { summary.total_bytes_processed as f64 / seconds } else { 0.0 },
        "restic_version": restic.version().to_string(),
    });
    let (status, error) = match outcome.status {
        BackupStatus::Complete => ("ok", None),
        BackupStatus::Partial => {
            let named: Vec<String> = outcome
                .file_errors
                .iter()
                .take(PROBLEMS_NAMED)
                .map(|problem| format!("{}: {}", problem.path, problem.message))
                .collect();
            (
                "partial",
                Some(format!(
                    "{} file(s) could not be read: {}",
                    outcome.file_errors_total,
                    named.join("; ")
                )),
            )
        }
    };
    // Restic before 0.17 reports the snapshot's short id; the catalog keeps the full one.
    let mut snapshot_id = summary.snapshot_id.as_ref().map(ToString::to_string);
    if snapshot_id.as_ref().is_some_and(|id| id.len() < 64)
        && let Ok(mut tagged) = restic.snapshots(repo, &[super::tags::run(run.id)]).await
        && let Some(full) = tagged.pop()
    {
        snapshot_id = Some(full.id.to_string());
    }
    Ok(RunEnd {
        status,
        stats_json: stats.to_string(),
        snapshot_id,
        error,
    })
}

fn keep(count: u32) -> Option<u32> {
    (count > 0).then_some(count)
}

/// The plan's retention policy, on the plan's own snapshots (an adopted repository may
/// hold others' too), keeping held ones.
fn policy(spec: &PlanSpec, run: &RunRecord) -> Result<KeepPolicy, String> {
    let retention = &spec.retention;
    if retention.is_empty() {
        return Err(
            "the plan's retention policy keeps nothing; refusing to remove every snapshot".into(),
        );
    }
    Ok(KeepPolicy {
        last: keep(retention.last),
        hourly: keep(retention.hourly),
        daily: keep(retention.daily),
        weekly: keep(retention.weekly),
        monthly: keep(retention.monthly),
        yearly: keep(retention.yearly),
        tags: vec![super::tags::plan(run.plan_id)],
        keep_tags: super::with_hold(&retention.keep_tags),
        ..KeepPolicy::default()
    })
}

/// The plan's retention on its restic replica, once a replication made it: the same
/// policy on the replica's copies (`restic copy` keeps times and tags), then a prune. As
/// for cadang replicas, it is applied to what the replica holds, not mirrored from what
/// the primary lost.
async fn replica_retention(
    restic: &Restic,
    repositories: &Repositories,
    agency_code: &str,
    spec: &PlanSpec,
    run: &RunRecord,
    mut end: RunEnd,
) -> Result<RunEnd, String> {
    if !repositories.has_replica() {
        return Ok(end);
    }
    let replica = repositories.restic_replica(agency_code, run.plan_id)?;
    let failed = |error: ResticError| {
        format!(
            "the primary's retention is done; the replica's failed: {}",
            restic_error(error)
        )
    };
    match restic.snapshots(&replica, &[]).await {
        Ok(_) => {}
        Err(ResticError::RepositoryNotFound { .. }) => return Ok(end),
        Err(error) => return Err(failed(error)),
    }
    let outcome = restic
        .forget(&replica, &policy(spec, run)?, true)
        .await
        .map_err(failed)?;
    if let Ok(mut stats) = serde_json::from_str::<serde_json::Value>(&end.stats_json) {
        stats["replica_snapshots_kept"] = json!(outcome.kept.len());
        stats["replica_snapshots_removed"] = json!(outcome.removed.len());
        stats["replica_pruned"] = json!(outcome.pruned);
        end.stats_json = stats.to_string();
    }
    Ok(end)
}

async fn retention(
    restic: &Restic,
    repo: &ResticRepo,
    spec: &PlanSpec,
    run: &RunRecord,
) -> Result<RunEnd, String> {
    let outcome = restic
        .forget(repo, &policy(spec, run)?, true)
        .await
        .map_err(restic_error)?;
    Ok(RunEnd {
        status: "ok",
        stats_json: json!({
            "snapshots_kept": outcome.kept.len(),
            "snapshots_removed": outcome.removed.len(),
            "pruned": outcome.pruned,
        })
        .to_string(),
        snapshot_id: None,
        error: None,
    })
}

async fn verify(
    restic: &Restic,
    repo: &ResticRepo,
    spec: &PlanSpec,
    sequence: u64,
) -> Result<RunEnd, String> {
    let (n, t) = verify_part(sequence, spec.verify_parts);
    let part = format!("{n}/{t}");
    let outcome = restic
        .check(repo, Some(&part))
        .await
        .map_err(restic_error)?;
    Ok(match outcome {
        CheckOutcome::NoErrors => RunEnd {
            status: "ok",
            stats_json: json!({ "part": part, "errors": 0 }).to_string(),
            snapshot_id: None,
            error: None,
        },
        CheckOutcome::ErrorsFound {
            messages,
            broken_packs,
        } => RunEnd {
            status: "verify_differences",
            stats_json: json!({
                "part": part,
                "errors": messages.len(),
                "broken_packs": broken_packs,
            })
            .to_string(),
            snapshot_id: None,
            error: Some(
                messages
                    .iter()
                    .take(PROBLEMS_NAMED)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        },
    })
}

/// The plan's latest snapshot restored to scratch, verified (restic's `--verify` and
/// cadang's own walk against the snapshot listing), and removed.
async fn drill(
    restic: &Restic,
    repo: &ResticRepo,
    scratch: &Path,
    run: &RunRecord,
    signal: &Cancel,
) -> Result<RunEnd, String> {
    let tag = super::tags::plan(run.plan_id);
    let latest = restic
        .snapshots(repo, std::slice::from_ref(&tag))
        .await
        .map_err(restic_error)?
        .pop()
        .ok_or_else(|| format!("plan {} has no snapshot to restore yet", run.plan_id))?;
    let target = scratch.join(format!("run-{}", run.id));
    // A drill taken over from a daemon that died leaves its half-restored tree.
    if target.exists() {
        std::fs::remove_dir_all(&target)
            .map_err(|error| format!("cannot clear {}: {error}", target.display()))?;
    }
    let started = std::time::Instant::now();
    let outcome = restic
        .restore(
            repo,
            &RestoreOptions::new(latest.id.to_string(), &target),
            signal,
        )
        .await;
    // The restored data is the agency's: never leave it lying in scratch.
    if target.exists()
        && let Err(error) = std::fs::remove_dir_all(&target)
    {
        tracing::warn!(target = %target.display(), %error, "cannot remove a drill's scratch copy");
    }
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(restored) => Ok(RunEnd {
            status: "ok",
            stats_json: json!({
                "snapshot_time": latest.time,
                "files_verified": restored.verified.files,
                "bytes_verified": restored.verified.bytes,
                "mismatches": 0,
                "throughput_bytes_per_second": if seconds > 0.0 { restored.verified.bytes as f64 / seconds } else { 0.0 },
            })
            .to_string(),
            snapshot_id: Some(latest.id.to_string()),
            error: None,
        }),
        Err(ResticError::RestoreIncomplete {
            problems,
            problems_total,
            ..
        }) => Ok(RunEnd {
            status: "verify_differences",
            stats_json: json!({
                "snapshot_time": latest.time,
                "mismatches": problems_total,
            })
            .to_string(),
            snapshot_id: Some(latest.id.to_string()),
            error: Some(
                problems
                    .iter()
                    .take(PROBLEMS_NAMED)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        }),
        Err(error) => Err(error.to_string()),
    }
}

/// Copies the repository's snapshots that its replica lacks (`restic copy`; the
/// replica is made on first use with the primary's chunker parameters, so copies
/// deduplicate), then checks the replica: its structure, and part `n/t` of its data
/// as the plan's verification reads the primary's, so consecutive runs read all of it.
/// Every snapshot of the repository is copied, the adopted ones too: a restore from
/// the plan may choose any of them. `ok` only when every snapshot has its copy and the
/// check found nothing.
#[allow(clippy::too_many_arguments)]
async fn replicate(
    restic: &Restic,
    repositories: &Repositories,
    agency_code: &str,
    repo: &ResticRepo,
    spec: &PlanSpec,
    run: &RunRecord,
    sequence: u64,
    signal: &Cancel,
) -> Result<RunEnd, String> {
    let replica = repositories.restic_replica(agency_code, run.plan_id)?;
    // Restic reads one set of S3 credentials per process, for both repositories of a
    // copy: a repository with credentials of its own cannot copy to an S3 replica.
    if replica.location.starts_with("s3:")
        && repo
            .env
            .iter()
            .any(|(name, _)| S3_CREDENTIALS.contains(&name.as_str()))
    {
        return Err(format!(
            "the plan's restic repository has S3 credentials of its own, and `restic copy` uses one set for both repositories, so it cannot open the replica at {}; give the daemon a directory replica_root for such plans",
            replica.location
        ));
    }
    // The primary first: a wrong password or a missing repository is named as the
    // primary's, not taken for the replica's.
    let primary = restic.snapshots(repo, &[]).await.map_err(restic_error)?;
    let before = match restic.snapshots(&replica, &[]).await {
        Ok(snapshots) => snapshots,
        Err(ResticError::RepositoryNotFound { .. }) => {
            match restic.init_copying_chunker(&replica, repo).await {
                // Another daemon made it at the same moment: use theirs.
                Ok(()) | Err(ResticError::AlreadyInitialized { .. }) => Vec::new(),
                Err(error) => return Err(format!("cannot create the replica: {error}")),
            }
        }
        Err(error) => return Err(format!("the replica: {error}")),
    };
    let copied_before = originals(&before);
    let todo: Vec<String> = primary
        .iter()
        .filter(|snapshot| !copied_before.contains(snapshot.id.as_str()))
        .map(|snapshot| snapshot.id.to_string())
        .collect();
    if !todo.is_empty() {
        restic
            .copy(&replica, repo, &todo, signal)
            .await
            .map_err(|error| format!("copying to the replica: {error}"))?;
    }
    let after = restic
        .snapshots(&replica, &[])
        .await
        .map_err(|error| format!("the replica: {error}"))?;
    let copied = originals(&after);
    let missing: Vec<&crate::restic::ResticSnapshot> = primary
        .iter()
        .filter(|snapshot| !copied.contains(snapshot.id.as_str()))
        .collect();
    let now = chrono::Utc::now();
    let lag_secs = missing
        .iter()
        .map(|snapshot| snapshot.time)
        .min()
        .map_or(0, |oldest| (now - oldest).num_seconds().max(0));
    let (n, t) = verify_part(sequence, spec.verify_parts);
    let part = format!("{n}/{t}");
    let check = restic
        .check(&replica, Some(&part))
        .await
        .map_err(|error| format!("checking the replica: {error}"))?;
    let check_errors: Vec<String> = match check {
        CheckOutcome::NoErrors => Vec::new(),
        CheckOutcome::ErrorsFound { messages, .. } => messages,
    };
    let mut problems: Vec<String> = missing
        .iter()
        .take(PROBLEMS_NAMED)
        .map(|snapshot| {
            format!(
                "snapshot {} has no copy in the replica",
                snapshot.id.short()
            )
        })
        .collect();
    problems.extend(check_errors.iter().take(PROBLEMS_NAMED).cloned());
    Ok(RunEnd {
        status: if problems.is_empty() {
            "ok"
        } else {
            "verify_differences"
        },
        stats_json: json!({
            "replica": replica.location,
            "snapshots_copied": after.len().saturating_sub(before.len()),
            "snapshots_skipped": primary.len() - todo.len(),
            "snapshots_pending": missing.len(),
            "lag_secs": lag_secs,
            "replica_check_part": part,
            "verify_errors": check_errors.len(),
        })
        .to_string(),
        snapshot_id: None,
        error: (!problems.is_empty()).then(|| problems.join("; ")),
    })
}

/// The ids, in the repository they were copied from, of a replica's snapshots.
fn originals(snapshots: &[crate::restic::ResticSnapshot]) -> HashSet<&str> {
    snapshots
        .iter()
        .map(|snapshot| snapshot.original.as_ref().unwrap_or(&snapshot.id).as_str())
        .collect()
}

/// Lists the snapshots an adopted restic repository holds: count, oldest, newest and
/// (bounded) each one, so the catalog knows what was there before cadang.
async fn import(restic: &Restic, repo: &ResticRepo) -> Result<RunEnd, String> {
    let snapshots = restic.snapshots(repo, &[]).await.map_err(restic_error)?;
    let listed: Vec<serde_json::Value> = snapshots
        .iter()
        .rev()
        .take(IMPORT_LISTED)
        .map(|snapshot| {
            json!({
                "id": snapshot.id.to_string(),
                "time": snapshot.time,
                "host": snapshot.host,
                "paths": snapshot.paths,
                "tags": snapshot.tags,
            })
        })
        .collect();
    let stats = restic.stats(repo).await.map_err(restic_error)?;
    Ok(RunEnd {
        status: "ok",
        stats_json: json!({
            "snapshots": snapshots.len(),
            "oldest": snapshots.first().map(|snapshot| snapshot.time),
            "newest": snapshots.last().map(|snapshot| snapshot.time),
            "listed": listed,
            "repository_stored_bytes": stats.total_size,
            "restic_version": restic.version().to_string(),
        })
        .to_string(),
        snapshot_id: snapshots.last().map(|snapshot| snapshot.id.to_string()),
        error: None,
    })
}
