//! The daemon's scheduler: every tick it queues the runs that fell due (the catalog
//! decides which, exactly once across daemons), carries out the plan actions of
//! procedure B from the outbox, and claims runs to execute while it has room. A claimed
//! run holds a lease that is renewed while it runs; if this daemon dies, another takes
//! the run over once the lease lapses.
//!
//! Each tick also delivers what the notification outbox holds, and every few minutes
//! looks for overdue plans and SOP steps to notify about.
//!
//! On shutdown no new run is claimed, running backups are asked to stop at a safe point
//! (their run is recorded `cancelled`; the repository stays valid), and the scheduler
//! waits for them up to the grace period.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::restore_requests::CheckCommand;
use crate::app::{App, ClaimedRun, RestoreEnd, spec_of};
use crate::catalog::{RestoreRecord, RunEnd};
use crate::hub::Hub;
use crate::jobs::{Context, Engine, NativeEngine, Repositories, ResticEngine};
use crate::notify::{Notifier, deliver_due};
use crate::remote::{Progress, RemoteOptions, check_on_agent};

/// How often overdue plans and steps are looked for.
const OVERDUE_SCAN: TimeDelta = TimeDelta::minutes(5);

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// This daemon's name in leases (unique per daemon).
    pub owner: String,
    /// How often to look for due work.
    pub tick: Duration,
    /// How long a claimed run's lease lasts without renewal.
    pub lease: Duration,
    /// Runs executed at once by this daemon.
    pub max_parallel: usize,
    /// How long a backup through an agent waits for the agent to connect.
    pub agent_wait: Duration,
}

/// How often a running job's live progress is written to the catalog.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Runs the scheduler until `shutdown` turns true, then drains for at most `grace`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    app: App,
    repositories: Arc<Repositories>,
    hub: Hub,
    notifier: Option<Arc<Notifier>>,
    options: SchedulerOptions,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let remote = RemoteOptions {
        reconnect_wait: options.agent_wait,
    };
    let agent_wait = TimeDelta::from_std(options.agent_wait).unwrap_or(TimeDelta::minutes(5));
    let lease = TimeDelta::from_std(options.lease).unwrap_or(TimeDelta::minutes(5));
    let mut running: JoinSet<()> = JoinSet::new();
    let mut cancels: Vec<Arc<AtomicBool>> = Vec::new();
    let mut tick = tokio::time::interval(options.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_scan: Option<chrono::DateTime<Utc>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        while running.try_join_next().is_some() {}
        cancels.retain(|flag| Arc::strong_count(flag) > 1);
        let now = Utc::now();
        match app.queue_due_runs(now).await {
            Ok(queued) if !queued.is_empty() => tracing::info!(runs = ?queued, "runs queued"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot queue due runs"),
        }
        if let Err(error) = app.apply_plan_actions(&options.owner, now).await {
            tracing::warn!(%error, "cannot apply plan actions");
        }
        match app.advance_restore_requests(&options.owner, now).await {
            Ok(0) => {}
            Ok(moved) => tracing::info!(moved, "restore requests carried forward"),
            Err(error) => tracing::warn!(%error, "cannot carry restore requests forward"),
        }
        if let Some(notifier) = &notifier {
            if last_scan.is_none_or(|at| now - at >= OVERDUE_SCAN) {
                last_scan = Some(now);
                match app.queue_overdue_notifications(now).await {
                    Ok(0) => {}
                    Ok(new) => tracing::info!(events = new, "overdue plans or steps to notify"),
                    Err(error) => tracing::warn!(%error, "cannot look for overdue work"),
                }
            }
            if let Err(error) = deliver_due(&app, notifier, now).await {
                tracing::warn!(%error, "cannot deliver notifications");
            }
        }
        while running.len() < options.max_parallel {
            let here = |server| hub.connected_server(server);
            let restore = match app
                .claim_restore(&options.owner, lease, Utc::now(), &here, agent_wait)
                .await
            {
                Ok(restore) => restore,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim a restore");
                    None
                }
            };
            let Some(restore) = restore else { break };
            let cancel = Arc::new(AtomicBool::new(false));
            cancels.push(cancel.clone());
            running.spawn(execute_restore(
                app.clone(),
                repositories.clone(),
                hub.clone(),
                options.owner.clone(),
                lease,
                restore,
                cancel,
                remote,
            ));
        }
        while running.len() < options.max_parallel {
            let here = |server| hub.connected_server(server);
            let claimed = match app
                .claim_run_here(&options.owner, lease, Utc::now(), &here, agent_wait)
                .await
            {
                Ok(Some(claimed)) => claimed,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim a run");
                    break;
                }
            };
            let cancel = Arc::new(AtomicBool::new(false));
            cancels.push(cancel.clone());
            running.spawn(execute_claimed(
                app.clone(),
                repositories.clone(),
                hub.clone(),
                options.owner.clone(),
                lease,
                claimed,
                cancel,
                remote,
            ));
        }
    }
    if !running.is_empty() {
        tracing::info!(
            runs = running.len(),
            "asking running runs to stop at a safe point"
        );
        for flag in &cancels {
            flag.store(true, Ordering::Relaxed);
        }
        let drained = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "runs still going after the grace period; their leases will lapse and another daemon takes them over"
            );
            running.abort_all();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn execute_claimed(
    app: App,
    repositories: Arc<Repositories>,
    hub: Hub,
    owner: String,
    lease: TimeDelta,
    claimed: ClaimedRun,
    cancel: Arc<AtomicBool>,
    remote: RemoteOptions,
) {
    let ClaimedRun {
        run,
        plan,
        agency_code,
        window_closes_at,
        sequence,
    } = claimed;
    let started = std::time::Instant::now();
    tracing::info!(run = %run.id, plan = %plan.id, kind = %run.kind, trigger = %run.trigger, attempt = run.attempts, "run started");
    metrics::gauge!("cadang_runs_running").increment(1.0);
    let handle = tokio::runtime::Handle::current();
    let progress: Progress = Arc::default();
    let spec = spec_of(&plan).map_err(|error| error.to_string());
    let engine = match &spec {
        Ok(spec) => engine_for_plan(&app, &plan, spec, &run).await,
        Err(error) => Err(error.clone()),
    };
    // A backup through an agent, handed back to the queue when this daemon stops.
    let through_agent = engine.is_ok()
        && run.kind == "backup"
        && matches!(&spec, Ok(spec) if spec.server.is_some() && spec.restic.is_none());
    let work = {
        let run = run.clone();
        let cancel = cancel.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || match (engine, spec) {
            (Ok(engine), Ok(spec)) => {
                let cx = Context {
                    repositories: &repositories,
                    hub: &hub,
                    handle: &handle,
                    agency_code: &agency_code,
                    cancel,
                    progress: &progress,
                    remote,
                };
                let end = engine.run(&cx, &spec, &run, sequence);
                crate::release_free_memory();
                end
            }
            (Err(error), _) | (_, Err(error)) => RunEnd {
                status: "failed",
                stats_json: "{}".into(),
                snapshot_id: None,
                error: Some(error),
            },
        })
    };
    tokio::pin!(work);
    // Renew the lease at a third of its length while the work goes on.
    let period = (lease / 3).to_std().unwrap_or(Duration::from_secs(60));
    let mut renew = tokio::time::interval(period);
    renew.tick().await;
    // The end of the backup window, as a timer (far away when there is no window).
    let window_left = window_closes_at
        .map(|closes| (closes - Utc::now()).to_std().unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::from_secs(100 * 365 * 86_400));
    let window_end = tokio::time::sleep(window_left);
    tokio::pin!(window_end);
    let mut cut_off = false;
    let mut lease_lost = false;
    let mut report = tokio::time::interval(PROGRESS_EVERY);
    let end = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = report.tick() => {
                let current = progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                if let Some(current) = current
                    && let Err(error) = app.run_progress(run.id, &owner, &current).await
                {
                    tracing::warn!(run = %run.id, %error, "cannot record progress");
                }
            }
            () = &mut window_end, if !cut_off => {
                tracing::warn!(run = %run.id, "the backup window closed; stopping the run at a safe point");
                cut_off = true;
                cancel.store(true, Ordering::Relaxed);
            }
            _ = renew.tick() => {
                match app.renew_lease(run.id, &owner, lease, Utc::now()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(run = %run.id, "lease lost (taken over); stopping this attempt");
                        lease_lost = true;
                        cancel.store(true, Ordering::Relaxed);
                    }
                    Err(error) => tracing::warn!(run = %run.id, %error, "cannot renew the lease"),
                }
            }
        }
    };
    metrics::gauge!("cadang_runs_running").decrement(1.0);
    // A backup through an agent stopped because this daemon stops: hand it back to the
    // queue, so the daemon that claims it next (this one restarted, or another) resumes
    // it — what was sent is indexed and is not sent again.
    if let Ok(end) = &end
        && end.status == "cancelled"
        && through_agent
        && !cut_off
        && !lease_lost
    {
        match app.release_run(run.id, &owner, &end.stats_json).await {
            Ok(true) => {
                tracing::info!(run = %run.id, "backup through the agent handed back to the queue; it resumes on the next claim")
            }
            Ok(false) => {
                tracing::warn!(run = %run.id, "lease lost before the run could be handed back")
            }
            Err(error) => {
                tracing::error!(run = %run.id, %error, "cannot hand the run back; its lease will lapse")
            }
        }
        return;
    }
    let end = match end {
        Ok(mut end) if cut_off && end.status == "cancelled" => {
            if let Ok(mut stats) = serde_json::from_str::<serde_json::Value>(&end.stats_json) {
                stats["window_cut_off"] = serde_json::json!(true);
                end.stats_json = stats.to_string();
            }
            end.error = Some(format!(
                "stopped at a safe point when the backup window closed at {}; nothing of this run was committed, the next run starts over",
                window_closes_at.map_or_else(String::new, |at| at.to_rfc3339())
            ));
            end
        }
        Ok(end) => end,
        Err(error) => RunEnd {
            status: "failed",
            stats_json: "{}".into(),
            snapshot_id: None,
            error: Some(format!("the run's task failed: {error}")),
        },
    };
    metrics::counter!("cadang_runs_total", "kind" => run.kind.clone(), "status" => end.status)
        .increment(1);
    metrics::histogram!("cadang_run_duration_seconds", "kind" => run.kind.clone())
        .record(started.elapsed().as_secs_f64());
    match app.finish_run(run.id, &owner, &end, Utc::now()).await {
        Ok(true) => {
            tracing::info!(run = %run.id, status = end.status, error = end.error.as_deref().unwrap_or(""), "run finished")
        }
        Ok(false) => {
            tracing::warn!(run = %run.id, "run finished after its lease was taken over; the other daemon's result stands")
        }
        Err(error) => tracing::error!(run = %run.id, %error, "cannot record the end of a run"),
    }
}

/// The engine a run of `plan` goes through: restic for a plan on a restic repository
/// (its password opened from the catalog's secrets), else cadang's own, through the
/// plan's server's agent for a backup of a plan on a server.
async fn engine_for_plan(
    app: &App,
    plan: &crate::catalog::PlanRecord,
    spec: &crate::app::PlanSpec,
    run: &crate::catalog::RunRecord,
) -> Result<Box<dyn Engine>, String> {
    if spec.restic.is_some() {
        return restic_engine(app, plan.id, plan.agency_id).await;
    }
    let agent_server = match spec.server {
        Some(server) if run.kind == "backup" => {
            Some(app.server(server).await.map_err(|error| {
                tracing::warn!(run = %run.id, %error, "cannot load the plan's server");
                "the plan's server is not in the register".to_owned()
            })?)
        }
        _ => None,
    };
    Ok(Box::new(NativeEngine { agent_server }))
}

/// The engine of `plan`'s restic repository, which must be `agency`'s.
async fn restic_engine(
    app: &App,
    plan: crate::catalog::PlanId,
    agency: crate::catalog::AgencyId,
) -> Result<Box<dyn Engine>, String> {
    let (location, password, env) = app
        .restic_repository_of(plan, agency)
        .await
        .map_err(|error| error.to_string())?;
    let mut repo =
        crate::restic::ResticRepo::new(location, crate::restic::Secret::new(password.expose()));
    repo.env = env;
    Ok(Box::new(ResticEngine { plan, repo }))
}

/// Carries out a claimed restore to an agent connected here.
#[allow(clippy::too_many_arguments)]
async fn execute_restore(
    app: App,
    repositories: Arc<Repositories>,
    hub: Hub,
    owner: String,
    lease: TimeDelta,
    restore: RestoreRecord,
    cancel: Arc<AtomicBool>,
    remote: RemoteOptions,
) {
    tracing::info!(restore = %restore.id, server = %restore.server_id, target = %restore.target_server_id, "restore started");
    let loaded = async {
        let source = app.server(restore.server_id).await?;
        let target = app.server(restore.target_server_id).await?;
        let code = app.agency_code(restore.agency_id).await?;
        Ok::<_, crate::app::AppError>((source, target, code))
    }
    .await;
    let (source, target, code) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            let end = RestoreEnd {
                status: "failed".into(),
                stats_json: "{}".into(),
                error: Some(error.to_string()),
            };
            let _ = app
                .finish_restore(restore.id, &owner, &end, Utc::now())
                .await;
            return;
        }
    };
    let engine = match restore.plan_id {
        Some(plan) => restic_engine(&app, plan, restore.agency_id).await,
        None => Ok(Box::new(NativeEngine::default()) as Box<dyn Engine>),
    };
    let progress: Progress = Arc::default();
    let handle = tokio::runtime::Handle::current();
    let work = {
        let restore = restore.clone();
        let cancel = cancel.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            let cx = Context {
                repositories: &repositories,
                hub: &hub,
                handle: &handle,
                agency_code: &code,
                cancel: cancel.clone(),
                progress: &progress,
                remote,
            };
            let (mut end, snapshot) = match engine {
                Ok(engine) => engine.restore(&cx, &source, &target, &restore),
                Err(error) => (
                    RestoreEnd {
                        status: "failed".into(),
                        stats_json: "{}".into(),
                        error: Some(error),
                    },
                    None,
                ),
            };
            // The plan's check runs once every file verified; its result is judged
            // with the files (C5).
            let check = restore
                .check_json
                .as_deref()
                .and_then(|json| serde_json::from_str::<CheckCommand>(json).ok());
            if let Some(check) = check
                && end.status == "ok"
            {
                let result = check_on_agent(
                    &hub,
                    &handle,
                    &target,
                    &format!("check:{}", restore.id),
                    &check,
                    &restore.target_dir,
                    remote.reconnect_wait,
                    &cancel,
                );
                let mut stats: serde_json::Value =
                    serde_json::from_str(&end.stats_json).unwrap_or_else(|_| serde_json::json!({}));
                stats["check"] = result;
                end.stats_json = stats.to_string();
            }
            (end, snapshot)
        })
    };
    tokio::pin!(work);
    let mut renew = tokio::time::interval((lease / 3).to_std().unwrap_or(Duration::from_secs(60)));
    renew.tick().await;
    let mut report = tokio::time::interval(PROGRESS_EVERY);
    let outcome = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = report.tick() => {
                let current = progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                if let Some(current) = current {
                    let snapshot = current["snapshot"].as_str().unwrap_or(&restore.snapshot).to_owned();
                    if let Err(error) = app.restore_progress(restore.id, &owner, &snapshot, &current).await {
                        tracing::warn!(restore = %restore.id, %error, "cannot record progress");
                    }
                }
            }
            _ = renew.tick() => {
                if let Ok(false) = app.renew_restore_lease(restore.id, &owner, lease, Utc::now()).await {
                    tracing::warn!(restore = %restore.id, "restore lease lost; stopping");
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    let end = match outcome {
        Ok((end, _)) => end,
        Err(error) => RestoreEnd {
            status: "failed".into(),
            stats_json: "{}".into(),
            error: Some(format!("the restore's task failed: {error}")),
        },
    };
    metrics::counter!("cadang_restores_total", "status" => end.status.clone()).increment(1);
    match app
        .finish_restore(restore.id, &owner, &end, Utc::now())
        .await
    {
        Ok(_) => {
            tracing::info!(restore = %restore.id, status = %end.status, error = end.error.as_deref().unwrap_or(""), "restore finished")
        }
        Err(error) => {
            tracing::error!(restore = %restore.id, %error, "cannot record the end of a restore")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Window;
    use crate::app::tests::plans::{backup_request, spec};
    use crate::app::tests::{Env, KADIN, KASI, on_sqlite};
    use crate::engine::store::StoreOptions;

    /// 48 files of 1 MiB that do not compress.
    fn incompressible(dir: &std::path::Path) {
        std::fs::create_dir_all(dir).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for n in 0..48 {
            let bytes: Vec<u8> = (0..1 << 20)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[3]
                })
                .collect();
            std::fs::write(dir.join(format!("f{n:02}")), bytes).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_still_running_when_its_window_closes_is_stopped_and_marked() {
        on_sqlite(|catalog| async move {
            let env = Env::new(catalog).await;
            let dir = tempfile::tempdir().unwrap();
            let source = dir.path().join("source");
            incompressible(&source);
            let mut plan_spec = spec("0 23 * * *");
            plan_spec.paths = vec![source.display().to_string()];
            plan_spec.excludes = vec![];
            plan_spec.window = Some(Window {
                start: "06:00".into(),
                end: "20:00".into(),
            });
            // 48 MiB at 4 MiB/s: at least eight seconds of work.
            plan_spec.bandwidth_limit_kib = Some(4096);
            let request = backup_request(&env).await;
            env.complete(KADIN, request, 1).await;
            let plan = env
                .app
                .create_plan(KASI, request, "siang", plan_spec, env.now())
                .await
                .unwrap();
            // Office hours: the window is open.
            let now = env.now();
            let run = env.app.run_now(KASI, plan.id, now).await.unwrap();
            let mut claimed = env
                .app
                .claim_run("d1", TimeDelta::minutes(5), now)
                .await
                .unwrap()
                .expect("claimable inside the window");
            assert!(claimed.window_closes_at.is_some());
            // Let it close a second from now, on the clock the scheduler watches.
            claimed.window_closes_at = Some(Utc::now() + TimeDelta::seconds(1));
            let repositories = Arc::new(Repositories::new(
                dir.path().join("repositories").display().to_string(),
                [3; 32],
                StoreOptions::default(),
            ));
            let started = std::time::Instant::now();
            execute_claimed(
                env.app.clone(),
                repositories.clone(),
                Hub::default(),
                "d1".into(),
                TimeDelta::minutes(5),
                claimed,
                Arc::new(AtomicBool::new(false)),
                RemoteOptions::default(),
            )
            .await;
            let elapsed = started.elapsed();
            assert!(
                elapsed < Duration::from_secs(8),
                "stopped when the window closed, not at the end: {elapsed:?}"
            );
            let mut tx = env.app.catalog().begin_read().await.unwrap();
            let record = tx.run(run).await.unwrap();
            assert_eq!(record.status, "cancelled", "{record:?}");
            let stats: serde_json::Value =
                serde_json::from_str(record.stats_json.as_deref().unwrap()).unwrap();
            assert_eq!(stats["window_cut_off"], serde_json::json!(true));
            assert!(record.error.as_deref().unwrap().contains("window closed"));
            assert!(record.snapshot_id.is_none());
            let notified = tx.notifications(10).await.unwrap();
            assert!(
                notified.iter().any(|n| n.kind == "run_window_cut_off"),
                "{notified:?}"
            );
            drop(tx);
            // Nothing half-made: the repository has no snapshot and checks clean.
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let repository = repositories.open(&handle, "DINKES", None, None).unwrap();
                let (snapshots, _) = repository.load_snapshots().unwrap();
                assert!(snapshots.is_empty());
                let report = crate::engine::check::check(
                    &repository,
                    &crate::engine::check::CheckOptions {
                        read_data: crate::engine::check::ReadData::None,
                    },
                )
                .unwrap();
                assert!(report.is_ok(), "{report:?}");
            })
            .await
            .unwrap();
        })
        .await;
    }
}
