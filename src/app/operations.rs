//! The reports the Head of Infrastructure Section reviews: runs per plan (with the lag of
//! the plan's replica when it replicates), SOP steps past
//! their time standard by procedure and role, repository storage per agency, and plans
//! whose backups are later than their schedule promises. Each is plain data (serialised
//! for `--json` and gRPC); `report_html` draws them for print.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::plans::{Schedule, spec_of};
use super::{App, AppError, Caller};
use crate::catalog::{AgencyId, PlanId, RequestFilter, RunId, RunRecord};
use crate::workflow::Role;

use super::reports::StepOverrun;

/// Most runs one report reads.
const MAX_RUNS: u32 = 20_000;

/// Which runs a report covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFilter {
    /// Only this agency.
    pub agency: Option<AgencyId>,
    /// Only this plan.
    pub plan: Option<PlanId>,
    /// Runs due at or after (default: 30 days before `until`).
    pub since: Option<DateTime<Utc>>,
    /// Runs due before (default: now).
    pub until: Option<DateTime<Utc>>,
}

/// One run in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunLine {
    /// Run id.
    pub id: RunId,
    /// `backup`, `retention`, `verify`, `drill` or `replicate`.
    pub kind: String,
    /// What started it.
    pub trigger: String,
    /// How it ended (or `queued`, `running`).
    pub status: String,
    /// Its slot.
    pub due_at: DateTime<Utc>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds it took.
    pub duration_seconds: Option<f64>,
    /// Bytes read from the source (backups).
    pub bytes_read: Option<u64>,
    /// Bytes added to the repository after deduplication and compression (backups).
    pub bytes_added: Option<u64>,
    /// Bytes read per byte added (backups).
    pub dedup_ratio: Option<f64>,
    /// Bytes per second.
    pub throughput_bytes_per_second: Option<f64>,
    /// Snapshot made or drilled.
    pub snapshot_id: Option<String>,
    /// Why it failed, or what was partial.
    pub error: Option<String>,
}

/// The runs of one plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRuns {
    /// Plan id.
    pub plan_id: PlanId,
    /// Plan name.
    pub plan_name: String,
    /// Its agency.
    pub agency_id: AgencyId,
    /// The agency's code.
    pub agency_code: String,
    /// Runs by status.
    pub counts: BTreeMap<String, u64>,
    /// Bytes added by its backups.
    pub bytes_added: u64,
    /// How far its replica is behind, for a plan with a replicate schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_lag: Option<ReplicaLag>,
    /// The runs: those that did not end well first, then newest first.
    pub runs: Vec<RunLine>,
}

/// How far a plan's replica is behind its backups, from the catalog's runs: the good
/// backups that finished after the last good replication started are taken as not yet
/// replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLag {
    /// When the last replication that ended `ok` started (none: never replicated).
    pub last_replicated_at: Option<DateTime<Utc>>,
    /// Good backups not yet replicated.
    pub backups_pending: u64,
    /// When the oldest of them finished.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// When the newest of them finished.
    pub newest_pending_at: Option<DateTime<Utc>>,
    /// Age of the oldest backup not yet replicated at report time, seconds (how much
    /// of the plan's history the replica lacks); 0 when up to date.
    pub lag_seconds: i64,
}

impl ReplicaLag {
    /// Whether the replica holds every good backup.
    pub fn up_to_date(&self) -> bool {
        self.backups_pending == 0
    }
}

/// Most pending backups one lag figure counts.
const MAX_PENDING: u32 = 10_000;

/// `cadang report runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunsReport {
    /// When it was made.
    pub generated_at: DateTime<Utc>,
    /// From.
    pub since: DateTime<Utc>,
    /// To.
    pub until: DateTime<Utc>,
    /// Per plan.
    pub plans: Vec<PlanRuns>,
}

/// Overruns of one procedure and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaGroup {
    /// Procedure.
    pub procedure: String,
    /// Role doing the step.
    pub role: String,
    /// Step visits past their time standard.
    pub overruns: u64,
    /// Of which still open.
    pub open: u64,
    /// The worst lateness, seconds.
    pub max_late_seconds: i64,
}

/// `cadang report sla`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaReport {
    /// When it was made.
    pub generated_at: DateTime<Utc>,
    /// By procedure and role.
    pub groups: Vec<SlaGroup>,
    /// Every overrun, latest first.
    pub overruns: Vec<StepOverrun>,
}

/// One point of a repository's size history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizePoint {
    /// When measured (end of a run).
    pub at: DateTime<Utc>,
    /// Bytes stored.
    pub stored_bytes: u64,
}

/// One agency's repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgencyStorage {
    /// Agency.
    pub agency_id: AgencyId,
    /// Its code (the repository's name).
    pub agency_code: String,
    /// Bytes stored now (compressed, encrypted, deduplicated).
    pub stored_bytes: u64,
    /// Unique data they hold, uncompressed.
    pub unique_bytes: u64,
    /// Size of the latest snapshot of each plan, added up (what a full copy would take).
    pub logical_bytes: u64,
    /// Share saved by deduplication: 1 − unique / logical.
    pub dedup_savings: f64,
    /// Share saved by compression: 1 − stored / unique.
    pub compression_savings: f64,
    /// Growth over the report's period.
    pub growth_bytes: i64,
    /// Size after each run in the period.
    pub history: Vec<SizePoint>,
}

/// `cadang report storage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageReport {
    /// When it was made.
    pub generated_at: DateTime<Utc>,
    /// From.
    pub since: DateTime<Utc>,
    /// Per agency.
    pub agencies: Vec<AgencyStorage>,
}

/// One plan's schedule promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleLine {
    /// Plan id.
    pub plan_id: PlanId,
    /// Plan name.
    pub plan_name: String,
    /// Agency.
    pub agency_id: AgencyId,
    /// Its code.
    pub agency_code: String,
    /// Plan status.
    pub status: String,
    /// The backup schedule (cron) and its zone.
    pub schedule: String,
    /// The slot of the last backup that ended `ok`.
    pub last_good_at: Option<DateTime<Utc>>,
    /// The slot by which the next good backup was promised.
    pub expected_by: Option<DateTime<Utc>>,
    /// Whether that promise (plus the grace) has passed.
    pub overdue: bool,
    /// How late, seconds (0 when not overdue).
    pub late_by_seconds: i64,
    /// How the last backup ended, whatever it was.
    pub last_status: Option<String>,
}

/// `cadang report schedule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleReport {
    /// When it was made.
    pub generated_at: DateTime<Utc>,
    /// Grace allowed after a promised slot, minutes.
    pub grace_minutes: u32,
    /// Active and paused plans, overdue first.
    pub plans: Vec<ScheduleLine>,
}

fn stat_u64(stats: &serde_json::Value, key: &str) -> Option<u64> {
    stats.get(key).and_then(serde_json::Value::as_u64)
}

fn stat_f64(stats: &serde_json::Value, key: &str) -> Option<f64> {
    stats.get(key).and_then(serde_json::Value::as_f64)
}

fn stats_of(run: &RunRecord) -> serde_json::Value {
    run.stats_json
        .as_deref()
        .and_then(|stats| serde_json::from_str(stats).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn line(run: &RunRecord) -> RunLine {
    let stats = stats_of(run);
    RunLine {
        id: run.id,
        kind: run.kind.clone(),
        trigger: run.trigger.clone(),
        status: run.status.clone(),
        due_at: run.due_at,
        started_at: run.started_at,
        finished_at: run.finished_at,
        duration_seconds: stat_f64(&stats, "duration_seconds"),
        bytes_read: stat_u64(&stats, "bytes_read"),
        bytes_added: stat_u64(&stats, "bytes_added"),
        dedup_ratio: stat_f64(&stats, "dedup_ratio"),
        throughput_bytes_per_second: stat_f64(&stats, "throughput_bytes_per_second"),
        snapshot_id: run.snapshot_id.clone(),
        error: run.error.clone(),
    }
}

/// The lag of a plan's replica at `now`.
async fn replica_lag(
    tx: &mut crate::catalog::Tx,
    plan: PlanId,
    now: DateTime<Utc>,
) -> Result<ReplicaLag, AppError> {
    let last = tx.last_run_of(plan, "replicate", true).await?;
    let since = last.as_ref().and_then(|run| run.started_at);
    let pending = tx
        .ok_runs_finished_after(plan, "backup", since, MAX_PENDING)
        .await?;
    let oldest = pending.first().and_then(|run| run.finished_at);
    Ok(ReplicaLag {
        last_replicated_at: since,
        backups_pending: pending.len() as u64,
        oldest_pending_at: oldest,
        newest_pending_at: pending.last().and_then(|run| run.finished_at),
        lag_seconds: oldest.map_or(0, |at| (now - at).num_seconds().max(0)),
    })
}

fn well(status: &str) -> bool {
    matches!(status, "ok" | "queued" | "running")
}

fn role_name(role: Role) -> String {
    serde_json::to_value(role)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{role:?}"))
}

impl App {
    fn scope(caller: &Caller, agency: Option<AgencyId>) -> Result<Option<AgencyId>, AppError> {
        if let Some(agency) = agency {
            caller.check_agency(agency, &format!("agency {agency}"))?;
        }
        Ok(caller.confined_to().or(agency))
    }

    /// Runs per plan over a period, failures first.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for another agency's plan or agency;
    /// [`AppError::InvalidInput`] for an empty period.
    pub async fn runs_report(
        &self,
        caller: &Caller,
        filter: &RunFilter,
        now: DateTime<Utc>,
    ) -> Result<RunsReport, AppError> {
        let until = filter.until.unwrap_or(now);
        let since = filter.since.unwrap_or(until - TimeDelta::days(30));
        if since >= until {
            return Err(AppError::invalid("--since must be before --until"));
        }
        let agency = Self::scope(caller, filter.agency)?;
        let mut tx = self.catalog().begin_read().await?;
        if let Some(plan) = filter.plan {
            let plan = tx.plan(plan).await?;
            caller.check_agency(plan.agency_id, &format!("plan {}", plan.id))?;
        }
        let runs = tx
            .runs_between(filter.plan, agency, since, until, MAX_RUNS)
            .await?;
        let mut plans: BTreeMap<PlanId, PlanRuns> = BTreeMap::new();
        let mut codes: BTreeMap<AgencyId, String> = BTreeMap::new();
        for run in &runs {
            if !plans.contains_key(&run.plan_id) {
                let plan = tx.plan(run.plan_id).await?;
                if let Entry::Vacant(vacant) = codes.entry(plan.agency_id) {
                    vacant.insert(tx.agency(plan.agency_id).await?.code);
                }
                plans.insert(
                    plan.id,
                    PlanRuns {
                        plan_id: plan.id,
                        plan_name: plan.name.clone(),
                        agency_id: plan.agency_id,
                        agency_code: codes.get(&plan.agency_id).cloned().unwrap_or_default(),
                        counts: BTreeMap::new(),
                        bytes_added: 0,
                        replica_lag: None,
                        runs: Vec::new(),
                    },
                );
            }
            if let Some(entry) = plans.get_mut(&run.plan_id) {
                let line = line(run);
                *entry.counts.entry(run.status.clone()).or_default() += 1;
                // Replications add to the replica, not to the plan's repository.
                if run.kind == "backup" {
                    entry.bytes_added += line.bytes_added.unwrap_or(0);
                }
                entry.runs.push(line);
            }
        }
        for plan in plans.values_mut() {
            let record = tx.plan(plan.plan_id).await?;
            let replicates = spec_of(&record)
                .map(|spec| spec.replicate_schedule.is_some())
                .unwrap_or(false);
            if replicates {
                plan.replica_lag = Some(replica_lag(&mut tx, plan.plan_id, now).await?);
            }
        }
        let mut plans: Vec<PlanRuns> = plans.into_values().collect();
        for plan in &mut plans {
            plan.runs.sort_by(|a, b| {
                well(&a.status)
                    .cmp(&well(&b.status))
                    .then(b.due_at.cmp(&a.due_at))
                    .then(b.id.cmp(&a.id))
            });
        }
        // Plans with failures first.
        plans.sort_by_key(|plan| {
            (
                plan.runs.iter().all(|run| well(&run.status)),
                plan.agency_code.clone(),
                plan.plan_id,
            )
        });
        Ok(RunsReport {
            generated_at: now,
            since,
            until,
            plans,
        })
    }

    /// SOP steps past their time standard, grouped by procedure and role.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn sla_report(
        &self,
        caller: &Caller,
        now: DateTime<Utc>,
    ) -> Result<SlaReport, AppError> {
        let filter = RequestFilter {
            agency_id: caller.confined_to(),
            ..RequestFilter::default()
        };
        let mut overruns = self.overruns(&filter, now).await?;
        overruns.sort_by(|a, b| {
            b.deadline
                .cmp(&a.deadline)
                .then(b.request_id.cmp(&a.request_id))
        });
        let mut groups: BTreeMap<(String, String), SlaGroup> = BTreeMap::new();
        for overrun in &overruns {
            let roles: Vec<String> = if overrun.roles.is_empty() {
                vec!["(unassigned)".to_owned()]
            } else {
                overrun.roles.iter().map(|role| role_name(*role)).collect()
            };
            for role in roles {
                let group = groups
                    .entry((overrun.procedure.clone(), role.clone()))
                    .or_insert_with(|| SlaGroup {
                        procedure: overrun.procedure.clone(),
                        role,
                        overruns: 0,
                        open: 0,
                        max_late_seconds: 0,
                    });
                group.overruns += 1;
                group.open += u64::from(overrun.finished_at.is_none());
                group.max_late_seconds = group.max_late_seconds.max(overrun.late_by_seconds);
            }
        }
        Ok(SlaReport {
            generated_at: now,
            groups: groups.into_values().collect(),
            overruns,
        })
    }

    /// Repository size per agency, its growth since `since` (default 90 days), and the
    /// savings of deduplication and compression.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for another agency.
    pub async fn storage_report(
        &self,
        caller: &Caller,
        agency: Option<AgencyId>,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<StorageReport, AppError> {
        let since = since.unwrap_or(now - TimeDelta::days(90));
        let agency = Self::scope(caller, agency)?;
        let mut tx = self.catalog().begin_read().await?;
        let plans = tx.plans(agency).await?;
        let mut agencies: BTreeMap<AgencyId, AgencyStorage> = BTreeMap::new();
        let mut last_measured: BTreeMap<AgencyId, DateTime<Utc>> = BTreeMap::new();
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        for plan in &plans {
            if let Entry::Vacant(vacant) = agencies.entry(plan.agency_id) {
                let code = tx.agency(plan.agency_id).await?.code;
                vacant.insert(AgencyStorage {
                    agency_id: plan.agency_id,
                    agency_code: code,
                    stored_bytes: 0,
                    unique_bytes: 0,
                    logical_bytes: 0,
                    dedup_savings: 0.0,
                    compression_savings: 0.0,
                    growth_bytes: 0,
                    history: Vec::new(),
                });
            }
            let Some(entry) = agencies.get_mut(&plan.agency_id) else {
                continue;
            };
            if let Some(last) = tx.last_run_of(plan.id, "backup", true).await? {
                entry.logical_bytes += stat_u64(&stats_of(&last), "bytes_total").unwrap_or(0);
            }
            // The repository is the agency's: every plan's runs measure the same one,
            // and the newest measurement is its size now.
            for run in tx
                .runs_between(Some(plan.id), None, epoch, now, MAX_RUNS)
                .await?
            {
                let stats = stats_of(&run);
                let (Some(stored), Some(finished)) =
                    (stat_u64(&stats, "repository_stored_bytes"), run.finished_at)
                else {
                    continue;
                };
                let newest = last_measured
                    .get(&plan.agency_id)
                    .is_none_or(|at| *at <= finished);
                if newest {
                    last_measured.insert(plan.agency_id, finished);
                    entry.stored_bytes = stored;
                    entry.unique_bytes = stat_u64(&stats, "repository_raw_bytes").unwrap_or(0);
                }
                if finished >= since {
                    entry.history.push(SizePoint {
                        at: finished,
                        stored_bytes: stored,
                    });
                }
            }
        }
        let mut agencies: Vec<AgencyStorage> = agencies.into_values().collect();
        for entry in &mut agencies {
            entry.history.sort_by_key(|point| point.at);
            entry.history.dedup_by_key(|point| point.at);
            entry.growth_bytes = match (entry.history.first(), entry.history.last()) {
                (Some(first), Some(last)) => {
                    i64::try_from(last.stored_bytes).unwrap_or(i64::MAX)
                        - i64::try_from(first.stored_bytes).unwrap_or(i64::MAX)
                }
                _ => 0,
            };
            let ratio = |part: u64, whole: u64| {
                if whole == 0 {
                    0.0
                } else {
                    (1.0 - part as f64 / whole as f64).max(0.0)
                }
            };
            entry.dedup_savings = ratio(entry.unique_bytes, entry.logical_bytes);
            entry.compression_savings = ratio(entry.stored_bytes, entry.unique_bytes);
        }
        Ok(StorageReport {
            generated_at: now,
            since,
            agencies,
        })
    }

    /// Plans whose last good backup is older than their schedule promises.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for another agency.
    pub async fn schedule_report(
        &self,
        caller: &Caller,
        agency: Option<AgencyId>,
        now: DateTime<Utc>,
    ) -> Result<ScheduleReport, AppError> {
        let agency = Self::scope(caller, agency)?;
        Ok(ScheduleReport {
            generated_at: now,
            grace_minutes: self.config().overdue_grace_minutes,
            plans: self.schedule_lines(agency, now).await?,
        })
    }

    /// The schedule promise of every active or paused plan, overdue first.
    pub(crate) async fn schedule_lines(
        &self,
        agency: Option<AgencyId>,
        now: DateTime<Utc>,
    ) -> Result<Vec<ScheduleLine>, AppError> {
        let grace = TimeDelta::minutes(i64::from(self.config().overdue_grace_minutes));
        let mut tx = self.catalog().begin_read().await?;
        let mut lines = Vec::new();
        let mut codes: BTreeMap<AgencyId, String> = BTreeMap::new();
        for plan in tx.plans(agency).await? {
            if plan.status != "active" && plan.status != "paused" {
                continue;
            }
            let Ok(spec) = spec_of(&plan) else { continue };
            let Ok(schedule) = Schedule::parse(&spec.schedule, &spec.time_zone) else {
                continue;
            };
            if let Entry::Vacant(vacant) = codes.entry(plan.agency_id) {
                vacant.insert(tx.agency(plan.agency_id).await?.code);
            }
            let last_good = tx.last_run_of(plan.id, "backup", true).await?;
            let last = tx.last_run_of(plan.id, "backup", false).await?;
            let last_good_at = last_good.as_ref().map(|run| run.due_at);
            // The promise: a good backup at the first slot after the last good one (or
            // after the plan was made). A paused plan promises nothing new.
            let expected_by = schedule
                .next_after(last_good_at.unwrap_or(plan.created_at))
                .ok();
            let late = expected_by
                .filter(|_| plan.status == "active")
                .map(|expected| now - (expected + grace))
                .filter(|late| *late > TimeDelta::zero());
            lines.push(ScheduleLine {
                plan_id: plan.id,
                plan_name: plan.name.clone(),
                agency_id: plan.agency_id,
                agency_code: codes.get(&plan.agency_id).cloned().unwrap_or_default(),
                status: plan.status.clone(),
                schedule: format!("{} ({})", spec.schedule, spec.time_zone),
                last_good_at,
                expected_by,
                overdue: late.is_some(),
                late_by_seconds: late.map_or(0, |late| late.num_seconds()),
                last_status: last.map(|run| run.status),
            });
        }
        lines.sort_by(|a, b| {
            b.overdue
                .cmp(&a.overdue)
                .then(b.late_by_seconds.cmp(&a.late_by_seconds))
                .then(a.plan_id.cmp(&b.plan_id))
        });
        Ok(lines)
    }
}
