//! Backup plans and their runs: rows only. Which slot is due, who may change a plan, and
//! what a run did are decided in `app::plans`.

use chrono::{DateTime, Utc};

use super::codec::{instant, parse_instant, parse_opt_instant};
use super::{AgencyId, CatalogError, PlanId, RequestId, RunId, Tx};

/// A stored plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRecord {
    /// Id.
    pub id: PlanId,
    /// Owning agency.
    pub agency_id: AgencyId,
    /// The backup request it serves.
    pub request_id: Option<RequestId>,
    /// Name, unique per agency.
    pub name: String,
    /// The plan's specification (JSON of `app::PlanSpec`).
    pub spec_json: String,
    /// `approved`, `active`, `paused` or `stopped`.
    pub status: String,
    /// The next scheduled backup, while active.
    pub next_due_at: Option<DateTime<Utc>>,
    /// The next scheduled retention run, while active.
    pub next_retention_at: Option<DateTime<Utc>>,
    /// The next scheduled verification run, while active.
    pub next_verify_at: Option<DateTime<Utc>>,
    /// The next scheduled restore drill, while active.
    pub next_drill_at: Option<DateTime<Utc>>,
    /// The next scheduled replication to the replica repository, while active.
    pub next_replicate_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A plan to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPlan {
    /// Owning agency.
    pub agency_id: AgencyId,
    /// The backup request it serves.
    pub request_id: Option<RequestId>,
    /// Name.
    pub name: String,
    /// Specification JSON.
    pub spec_json: String,
    /// Who creates it.
    pub created_by: String,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Id.
    pub id: RunId,
    /// Its plan.
    pub plan_id: PlanId,
    /// `backup`, `retention` or `verify`.
    pub kind: String,
    /// `schedule`, `catch_up`, `ad_hoc` or `request`.
    pub trigger: String,
    /// The slot it serves.
    pub due_at: DateTime<Utc>,
    /// `queued`, `running`, `ok`, `partial`, `failed`, `cancelled`, `verify_differences`.
    pub status: String,
    /// The daemon holding it while running.
    pub lease_owner: Option<String>,
    /// When that lease lapses.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// How many times it was started (more than one after a takeover).
    pub attempts: i64,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// When it first started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Statistics (JSON).
    pub stats_json: Option<String>,
    /// The snapshot it made.
    pub snapshot_id: Option<String>,
    /// Why it failed (or what was partial).
    pub error: Option<String>,
    /// The request it serves.
    pub request_id: Option<RequestId>,
    /// The step of that request.
    pub step: Option<i64>,
    /// A run waiting for its backup window: not started before this instant.
    pub not_before: Option<DateTime<Utc>>,
}

/// A run to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    /// Its plan.
    pub plan_id: PlanId,
    /// Kind.
    pub kind: &'static str,
    /// Trigger.
    pub trigger: &'static str,
    /// The slot.
    pub due_at: DateTime<Utc>,
    /// The request it serves.
    pub request_id: Option<RequestId>,
    /// The step of that request.
    pub step: Option<i64>,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    /// Final status.
    pub status: &'static str,
    /// Statistics (JSON).
    pub stats_json: String,
    /// The snapshot made.
    pub snapshot_id: Option<String>,
    /// Error or partial report.
    pub error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct PlanRow {
    id: i64,
    agency_id: i64,
    request_id: Option<i64>,
    name: String,
    spec_json: String,
    status: String,
    next_due_at: Option<String>,
    next_retention_at: Option<String>,
    next_verify_at: Option<String>,
    next_drill_at: Option<String>,
    next_replicate_at: Option<String>,
    created_at: String,
    created_by: String,
    updated_at: String,
}

impl PlanRow {
    fn decode(self) -> Result<PlanRecord, CatalogError> {
        Ok(PlanRecord {
            id: PlanId(self.id),
            agency_id: AgencyId(self.agency_id),
            request_id: self.request_id.map(RequestId),
            name: self.name,
            spec_json: self.spec_json,
            status: self.status,
            next_due_at: parse_opt_instant("backup_plans", self.next_due_at.as_deref())?,
            next_retention_at: parse_opt_instant(
                "backup_plans",
                self.next_retention_at.as_deref(),
            )?,
            next_verify_at: parse_opt_instant("backup_plans", self.next_verify_at.as_deref())?,
            next_drill_at: parse_opt_instant("backup_plans", self.next_drill_at.as_deref())?,
            next_replicate_at: parse_opt_instant(
                "backup_plans",
                self.next_replicate_at.as_deref(),
            )?,
            created_at: parse_instant("backup_plans", &self.created_at)?,
            created_by: self.created_by,
            updated_at: parse_instant("backup_plans", &self.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: i64,
    plan_id: i64,
    kind: String,
    trigger: String,
    due_at: String,
    status: String,
    lease_owner: Option<String>,
    lease_expires_at: Option<String>,
    attempts: i64,
    queued_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    stats_json: Option<String>,
    snapshot_id: Option<String>,
    error: Option<String>,
    request_id: Option<i64>,
    step: Option<i64>,
    not_before: Option<String>,
}

impl RunRow {
    fn decode(self) -> Result<RunRecord, CatalogError> {
        Ok(RunRecord {
            id: RunId(self.id),
            plan_id: PlanId(self.plan_id),
            kind: self.kind,
            trigger: self.trigger,
            due_at: parse_instant("runs", &self.due_at)?,
            status: self.status,
            lease_owner: self.lease_owner,
            lease_expires_at: parse_opt_instant("runs", self.lease_expires_at.as_deref())?,
            attempts: self.attempts,
            queued_at: parse_instant("runs", &self.queued_at)?,
            started_at: parse_opt_instant("runs", self.started_at.as_deref())?,
            finished_at: parse_opt_instant("runs", self.finished_at.as_deref())?,
            stats_json: self.stats_json,
            snapshot_id: self.snapshot_id,
            error: self.error,
            request_id: self.request_id.map(RequestId),
            step: self.step,
            not_before: parse_opt_instant("runs", self.not_before.as_deref())?,
        })
    }
}

macro_rules! select_plans {
    ($tail:literal) => {
        concat!(
            "SELECT id, agency_id, request_id, name, spec_json, status, next_due_at, next_retention_at, next_verify_at, next_drill_at, next_replicate_at, ",
            "created_at, created_by, updated_at FROM backup_plans ",
            $tail
        )
    };
}

macro_rules! select_runs {
    ($tail:literal) => {
        concat!(
            "SELECT r.id, r.plan_id, r.kind, r.trigger, r.due_at, r.status, r.lease_owner, ",
            "r.lease_expires_at, r.attempts, r.queued_at, r.started_at, r.finished_at, ",
            "r.stats_json, r.snapshot_id, r.error, r.request_id, r.step, r.not_before FROM runs r ",
            $tail
        )
    };
}

const INSERT_PLAN: &str = "INSERT INTO backup_plans (agency_id, request_id, name, spec_json, status, \
     next_due_at, created_at, created_by, updated_at) VALUES ($1, $2, $3, $4, 'approved', NULL, $5, $6, $5) RETURNING id";
const UPDATE_PLAN: &str = "UPDATE backup_plans SET status = $1, next_due_at = $2, next_retention_at = $3, \
     next_verify_at = $4, next_drill_at = $5, next_replicate_at = $6, updated_at = $7 WHERE id = $8";
const INSERT_RUN: &str = "INSERT INTO runs (plan_id, kind, trigger, due_at, status, queued_at, request_id, step) \
     VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7) ON CONFLICT (plan_id, kind, due_at) DO NOTHING RETURNING id";
/// Claims the oldest claimable run: an expired lease first (its daemon died), then a
/// queued run whose plan runs nothing else and is neither paused nor stopped.
const CLAIM_RUN_SQLITE: &str = "UPDATE runs SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
     attempts = attempts + 1, started_at = COALESCE(started_at, $3) WHERE id = (\
     SELECT r.id FROM runs r JOIN backup_plans p ON p.id = r.plan_id \
     WHERE (r.status = 'running' AND r.lease_expires_at < $3) \
        OR (r.status = 'queued' AND r.due_at <= $3 AND (r.not_before IS NULL OR r.not_before <= $3) \
            AND p.status IN ('approved', 'active') \
            AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.plan_id = r.plan_id AND o.status = 'running')) \
     ORDER BY r.status DESC, r.due_at, r.id LIMIT 1) RETURNING id";
const CLAIM_RUN_POSTGRES: &str = "UPDATE runs SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
     attempts = attempts + 1, started_at = COALESCE(started_at, $3) WHERE id = (\
     SELECT r.id FROM runs r JOIN backup_plans p ON p.id = r.plan_id \
     WHERE (r.status = 'running' AND r.lease_expires_at < $3) \
        OR (r.status = 'queued' AND r.due_at <= $3 AND (r.not_before IS NULL OR r.not_before <= $3) \
            AND p.status IN ('approved', 'active') \
            AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.plan_id = r.plan_id AND o.status = 'running')) \
     ORDER BY r.status DESC, r.due_at, r.id LIMIT 1 FOR UPDATE OF r SKIP LOCKED) RETURNING id";
const LAPSE_RUN_LEASES: &str = "UPDATE runs SET lease_expires_at = $1 WHERE status = 'running' \
     AND lease_owner <> $2 AND lease_expires_at > $1";
const RENEW_LEASE: &str = "UPDATE runs SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'";
const FINISH_RUN: &str = "UPDATE runs SET status = $1, finished_at = $2, stats_json = $3, snapshot_id = $4, error = $5, \
     lease_owner = NULL, lease_expires_at = NULL WHERE id = $6 AND lease_owner = $7 AND status = 'running'";
const DEFER_RUN: &str = "UPDATE runs SET status = 'queued', not_before = $1, lease_owner = NULL, \
     lease_expires_at = NULL, attempts = attempts - 1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'";
const RELEASE_RUN: &str = "UPDATE runs SET status = 'queued', not_before = NULL, lease_owner = NULL, \
     lease_expires_at = NULL, stats_json = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'";
const CANCEL_QUEUED: &str = "UPDATE runs SET status = 'cancelled', finished_at = $1, error = $2 \
     WHERE plan_id = $3 AND status = 'queued'";

impl Tx {
    /// Stores a plan (status `approved`, not yet scheduled).
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the agency has a plan of that name.
    pub async fn insert_plan(
        &mut self,
        plan: &NewPlan,
        now: DateTime<Utc>,
    ) -> Result<PlanRecord, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_PLAN)
                .bind(plan.agency_id.0)
                .bind(plan.request_id.map(|id| id.0))
                .bind(&plan.name)
                .bind(&plan.spec_json)
                .bind(instant(now))
                .bind(&plan.created_by)
                .fetch_one(&mut *conn)
                .await?
        });
        self.plan(PlanId(id)).await
    }

    /// A plan.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn plan(&mut self, id: PlanId) -> Result<PlanRecord, CatalogError> {
        let row: Option<PlanRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_plans!("WHERE id = $1"))
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("plan", id))?
            .decode()
    }

    /// A plan, locked until the transaction ends (PostgreSQL; SQLite's write
    /// transaction already excludes other writers).
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn plan_for_update(&mut self, id: PlanId) -> Result<PlanRecord, CatalogError> {
        let row: Option<PlanRow> = with_conn_sql!(
            self,
            sql = (
                select_plans!("WHERE id = $1"),
                select_plans!("WHERE id = $1 FOR UPDATE")
            ),
            |conn| sqlx::query_as(sql)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        );
        row.ok_or_else(|| CatalogError::not_found("plan", id))?
            .decode()
    }

    /// Plans of one agency, or of all.
    ///
    /// # Errors
    /// From the driver.
    pub async fn plans(
        &mut self,
        agency: Option<AgencyId>,
    ) -> Result<Vec<PlanRecord>, CatalogError> {
        let rows: Vec<PlanRow> = match agency {
            Some(agency) => with_conn!(self, |conn| {
                sqlx::query_as(select_plans!("WHERE agency_id = $1 ORDER BY id"))
                    .bind(agency.0)
                    .fetch_all(&mut *conn)
                    .await?
            }),
            None => with_conn!(self, |conn| {
                sqlx::query_as(select_plans!("ORDER BY id"))
                    .fetch_all(&mut *conn)
                    .await?
            }),
        };
        rows.into_iter().map(PlanRow::decode).collect()
    }

    /// Plans of a request.
    ///
    /// # Errors
    /// From the driver.
    pub async fn plans_of_request(
        &mut self,
        request: RequestId,
    ) -> Result<Vec<PlanRecord>, CatalogError> {
        let rows: Vec<PlanRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_plans!("WHERE request_id = $1 ORDER BY id"))
                .bind(request.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(PlanRow::decode).collect()
    }

    /// Ids of active plans whose next slot is at or before `now`, oldest first.
    ///
    /// # Errors
    /// From the driver.
    pub async fn due_plans(
        &mut self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PlanId>, CatalogError> {
        let ids: Vec<i64> = with_conn!(self, |conn| {
            sqlx::query_scalar(
                "SELECT id FROM backup_plans WHERE status = 'active' AND (next_due_at <= $1 \
                 OR next_retention_at <= $1 OR next_verify_at <= $1 OR next_drill_at <= $1 \
                 OR next_replicate_at <= $1) \
                 ORDER BY id LIMIT $2",
            )
            .bind(instant(now))
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?
        });
        Ok(ids.into_iter().map(PlanId).collect())
    }

    /// Sets a plan's status and next slots (backup, retention, verification, drill,
    /// replication).
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn update_plan(
        &mut self,
        id: PlanId,
        status: &str,
        next: [Option<DateTime<Utc>>; 5],
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(UPDATE_PLAN)
                .bind(status)
                .bind(next[0].map(instant))
                .bind(next[1].map(instant))
                .bind(next[2].map(instant))
                .bind(next[3].map(instant))
                .bind(next[4].map(instant))
                .bind(instant(now))
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(CatalogError::not_found("plan", id));
        }
        Ok(())
    }

    /// Queues a run; `None` when that slot already has one (created by another daemon).
    ///
    /// # Errors
    /// From the driver.
    pub async fn insert_run(
        &mut self,
        run: &NewRun,
        now: DateTime<Utc>,
    ) -> Result<Option<RunId>, CatalogError> {
        let id: Option<i64> = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_RUN)
                .bind(run.plan_id.0)
                .bind(run.kind)
                .bind(run.trigger)
                .bind(instant(run.due_at))
                .bind(instant(now))
                .bind(run.request_id.map(|id| id.0))
                .bind(run.step)
                .fetch_optional(&mut *conn)
                .await?
        });
        Ok(id.map(RunId))
    }

    /// Claims one run for `owner` until `lease_until`, if any is claimable.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when another daemon claimed a run of the same plan at the
    /// same moment (try again later); driver errors.
    pub async fn claim_run(
        &mut self,
        owner: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<RunRecord>, CatalogError> {
        let id: Option<i64> =
            with_conn_sql!(self, sql = (CLAIM_RUN_SQLITE, CLAIM_RUN_POSTGRES), |conn| {
                sqlx::query_scalar(sql)
                    .bind(owner)
                    .bind(instant(lease_until))
                    .bind(instant(now))
                    .fetch_optional(&mut *conn)
                    .await?
            });
        match id {
            Some(id) => Ok(Some(self.run(RunId(id)).await?)),
            None => Ok(None),
        }
    }

    /// Ends now the leases of running runs held by anyone but `owner`, so the next
    /// claim takes them over; for a daemon that knows their holders are gone. Returns
    /// how many.
    ///
    /// # Errors
    /// From the driver.
    pub async fn lapse_run_leases_of_others(
        &mut self,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query(LAPSE_RUN_LEASES)
                .bind(instant(now))
                .bind(owner)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        }))
    }

    /// Extends a lease; `false` when `owner` no longer holds it.
    ///
    /// # Errors
    /// From the driver.
    pub async fn renew_lease(
        &mut self,
        id: RunId,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(RENEW_LEASE)
                .bind(instant(until))
                .bind(id.0)
                .bind(owner)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Records the end of a run; `false` when `owner` no longer held it (it was taken
    /// over, and the other daemon's result stands).
    ///
    /// # Errors
    /// From the driver.
    pub async fn finish_run(
        &mut self,
        id: RunId,
        owner: &str,
        end: &RunEnd,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(FINISH_RUN)
                .bind(end.status)
                .bind(instant(now))
                .bind(&end.stats_json)
                .bind(end.snapshot_id.as_deref())
                .bind(end.error.as_deref())
                .bind(id.0)
                .bind(owner)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Puts a running run back in the queue at once, keeping its attempt count, so the
    /// next daemon to claim it resumes it (a stopping daemon hands over a backup an agent
    /// can resume); `false` when `owner` no longer held it.
    ///
    /// # Errors
    /// From the driver.
    pub async fn release_run(
        &mut self,
        id: RunId,
        owner: &str,
        stats_json: &str,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(RELEASE_RUN)
                .bind(stats_json)
                .bind(id.0)
                .bind(owner)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Puts a claimed run back in the queue until `not_before` (its backup window is
    /// closed), undoing the claim; `false` when `owner` no longer held it.
    ///
    /// # Errors
    /// From the driver.
    pub async fn defer_run(
        &mut self,
        id: RunId,
        owner: &str,
        not_before: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(DEFER_RUN)
                .bind(instant(not_before))
                .bind(id.0)
                .bind(owner)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Cancels the queued runs of a plan; returns how many.
    ///
    /// # Errors
    /// From the driver.
    pub async fn cancel_queued_runs(
        &mut self,
        plan: PlanId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query(CANCEL_QUEUED)
                .bind(instant(now))
                .bind(reason)
                .bind(plan.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        }))
    }

    /// A run.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn run(&mut self, id: RunId) -> Result<RunRecord, CatalogError> {
        let row: Option<RunRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_runs!("WHERE r.id = $1"))
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("run", id))?
            .decode()
    }

    /// Runs of a plan, or of an agency's plans, or of all, newest first.
    ///
    /// # Errors
    /// From the driver.
    pub async fn runs(
        &mut self,
        plan: Option<PlanId>,
        agency: Option<AgencyId>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, CatalogError> {
        let limit = i64::from(limit);
        let rows: Vec<RunRow> = match (plan, agency) {
            (Some(plan), _) => with_conn!(self, |conn| {
                sqlx::query_as(select_runs!(
                    "WHERE r.plan_id = $1 ORDER BY r.id DESC LIMIT $2"
                ))
                .bind(plan.0)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?
            }),
            (None, Some(agency)) => with_conn!(self, |conn| {
                sqlx::query_as(select_runs!(
                    "JOIN backup_plans p ON p.id = r.plan_id WHERE p.agency_id = $1 ORDER BY r.id DESC LIMIT $2"
                ))
                .bind(agency.0)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?
            }),
            (None, None) => with_conn!(self, |conn| {
                sqlx::query_as(select_runs!("ORDER BY r.id DESC LIMIT $1"))
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?
            }),
        };
        rows.into_iter().map(RunRow::decode).collect()
    }
}

impl Tx {
    /// Runs due in `[since, until)`, of one plan or one agency's plans or all, oldest
    /// first (reports).
    ///
    /// # Errors
    /// From the driver.
    pub async fn runs_between(
        &mut self,
        plan: Option<PlanId>,
        agency: Option<AgencyId>,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, CatalogError> {
        let rows: Vec<RunRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_runs!(
                "JOIN backup_plans p ON p.id = r.plan_id WHERE ($1 IS NULL OR r.plan_id = $1) \
                 AND ($2 IS NULL OR p.agency_id = $2) AND r.due_at >= $3 AND r.due_at < $4 \
                 ORDER BY r.due_at, r.id LIMIT $5"
            ))
            .bind(plan.map(|id| id.0))
            .bind(agency.map(|id| id.0))
            .bind(instant(since))
            .bind(instant(until))
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?
        });
        rows.into_iter().map(RunRow::decode).collect()
    }

    /// How many runs of a plan of one kind serve slots before `due_at` (a run's place in
    /// its sequence: verification reads part `sequence mod t`).
    ///
    /// # Errors
    /// From the driver.
    pub async fn count_earlier_runs(
        &mut self,
        plan: PlanId,
        kind: &str,
        due_at: DateTime<Utc>,
    ) -> Result<u64, CatalogError> {
        let count: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM runs WHERE plan_id = $1 AND kind = $2 AND due_at < $3",
            )
            .bind(plan.0)
            .bind(kind)
            .bind(instant(due_at))
            .fetch_one(&mut *conn)
            .await?
        });
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// A plan's runs of one kind that ended `ok` and finished after `after` (every one
    /// when `None`), in the order they finished.
    ///
    /// # Errors
    /// From the driver.
    pub async fn ok_runs_finished_after(
        &mut self,
        plan: PlanId,
        kind: &str,
        after: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, CatalogError> {
        let rows: Vec<RunRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_runs!(
                "WHERE r.plan_id = $1 AND r.kind = $2 AND r.status = 'ok' \
                 AND r.finished_at IS NOT NULL AND ($3 IS NULL OR r.finished_at > $3) \
                 ORDER BY r.finished_at, r.id LIMIT $4"
            ))
            .bind(plan.0)
            .bind(kind)
            .bind(after.map(instant))
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?
        });
        rows.into_iter().map(RunRow::decode).collect()
    }

    /// The newest finished run of a plan of one kind (only `ok` ones with `ok_only`).
    ///
    /// # Errors
    /// From the driver.
    pub async fn last_run_of(
        &mut self,
        plan: PlanId,
        kind: &str,
        ok_only: bool,
    ) -> Result<Option<RunRecord>, CatalogError> {
        let row: Option<RunRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_runs!(
                "WHERE r.plan_id = $1 AND r.kind = $2 AND r.status NOT IN ('queued', 'running') \
                 AND ($3 = 0 OR r.status = 'ok') ORDER BY r.due_at DESC, r.id DESC LIMIT 1"
            ))
            .bind(plan.0)
            .bind(kind)
            .bind(i64::from(ok_only))
            .fetch_optional(&mut *conn)
            .await?
        });
        row.map(RunRow::decode).transpose()
    }
}
