//! Agents on the colocated servers (their enrolment and credential hashes, never a
//! secret), the inventories they report, and restores to them.

use chrono::{DateTime, Utc};

use super::codec::{instant, parse_instant, parse_opt_instant};
use super::{AgencyId, AgentId, CatalogError, PlanId, RequestId, RestoreId, ServerId, Tx};

/// A stored agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// Id.
    pub id: AgentId,
    /// The agency owning the server.
    pub agency_id: AgencyId,
    /// The server it runs on; none while it waits for the handover to register it.
    pub server_id: Option<ServerId>,
    /// The colocation request it was enrolled for at the handover.
    pub request_id: Option<RequestId>,
    /// The declared server it measures at the handover.
    pub declared_name: Option<String>,
    /// Until when the enrolment token may be used.
    pub enrollment_expires_at: DateTime<Utc>,
    /// Host name reported at enrolment.
    pub hostname: Option<String>,
    /// Agent version reported.
    pub version: Option<String>,
    /// When the token was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    /// When the agent enrolled.
    pub enrolled_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last contact (to the minute).
    pub last_seen_at: Option<DateTime<Utc>>,
}

impl AgentRecord {
    /// `pending`, `enrolled`, `revoked` or `expired` at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.enrolled_at.is_some() {
            "enrolled"
        } else if now >= self.enrollment_expires_at {
            "expired"
        } else {
            "pending"
        }
    }
}

/// An agent to create with its enrolment token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    /// Agency.
    pub agency_id: AgencyId,
    /// Server, when it is in the register.
    pub server_id: Option<ServerId>,
    /// The colocation request at its handover, for a server not yet registered.
    pub request_id: Option<RequestId>,
    /// The declared server's name in that request.
    pub declared_name: Option<String>,
    /// Keyed hash of the enrolment token (hex).
    pub enrollment_hash: String,
    /// Until when the token may be used.
    pub enrollment_expires_at: DateTime<Utc>,
    /// Who creates it.
    pub created_by: String,
}

/// A stored inventory report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryRecord {
    /// Server (none before the handover registers it).
    pub server_id: Option<ServerId>,
    /// Reporting agent.
    pub agent_id: AgentId,
    /// When.
    pub reported_at: DateTime<Utc>,
    /// The inventory (JSON).
    pub inventory_json: String,
    /// Differences against the register (JSON).
    pub mismatches_json: String,
}

/// A restore to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRestore {
    /// Agency.
    pub agency_id: AgencyId,
    /// Source server.
    pub server_id: ServerId,
    /// Target server.
    pub target_server_id: ServerId,
    /// Snapshot asked for (`latest` or an id prefix).
    pub snapshot: String,
    /// Paths (JSON array).
    pub paths_json: String,
    /// Exclude patterns (JSON array): what the restore leaves out.
    pub excludes_json: String,
    /// What becomes of files already in the target: `always`, `if-changed`,
    /// `if-newer` or `never`.
    pub overwrite: String,
    /// What the snapshot does not hold is deleted from the target (at or below the
    /// snapshot's backed-up paths).
    pub delete: bool,
    /// Only a dry run: the agent decides and writes nothing.
    pub dry_run: bool,
    /// Target directory.
    pub target_dir: String,
    /// The request it serves.
    pub request_id: Option<RequestId>,
    /// Who asked.
    pub requested_by: String,
    /// Which attempt of a restore request's plan (`primary`, `replica`,
    /// `previous_snapshot`, `alternate_target`); none for a restore started directly.
    pub attempt: Option<String>,
    /// Read chunks damaged in the primary repository from the agency's replica.
    pub use_replica: bool,
    /// The check run on the target after the files are verified (JSON).
    pub check_json: Option<String>,
    /// The plan on a restic repository whose snapshots are restored; none for a
    /// server's snapshots in the agency's cadang repository.
    pub plan_id: Option<PlanId>,
}

/// How a restore ended, to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedRestore<'a> {
    /// `ok`, `verify_differences`, `failed` or `cancelled`.
    pub status: &'a str,
    /// Statistics and failed files (JSON).
    pub stats_json: &'a str,
    /// Why it failed.
    pub error: Option<&'a str>,
    /// The snapshot it resolved to (full id), when it got that far.
    pub snapshot: Option<&'a str>,
}

/// A stored restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRecord {
    /// Id.
    pub id: RestoreId,
    /// Agency.
    pub agency_id: AgencyId,
    /// Source server.
    pub server_id: ServerId,
    /// Target server.
    pub target_server_id: ServerId,
    /// Snapshot (resolved id once started).
    pub snapshot: String,
    /// Paths (JSON array).
    pub paths_json: String,
    /// Exclude patterns (JSON array): what the restore leaves out.
    pub excludes_json: String,
    /// What becomes of files already in the target: `always`, `if-changed`,
    /// `if-newer` or `never`.
    pub overwrite: String,
    /// What the snapshot does not hold is deleted from the target (at or below the
    /// snapshot's backed-up paths).
    pub delete: bool,
    /// Only a dry run: the agent decides and writes nothing.
    pub dry_run: bool,
    /// Target directory.
    pub target_dir: String,
    /// `queued`, `running`, `ok`, `verify_differences`, `failed` or `cancelled`.
    pub status: String,
    /// The request it serves.
    pub request_id: Option<RequestId>,
    /// Who asked.
    pub requested_by: String,
    /// Queued.
    pub queued_at: DateTime<Utc>,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The daemon carrying it out.
    pub lease_owner: Option<String>,
    /// Starts so far.
    pub attempts: i64,
    /// Statistics and failed files (JSON).
    pub stats_json: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Which attempt of a restore request's plan.
    pub attempt: Option<String>,
    /// Damaged chunks are read from the replica.
    pub use_replica: bool,
    /// The check run on the target after the files are verified (JSON).
    pub check_json: Option<String>,
    /// The plan on a restic repository restored from; none for cadang snapshots.
    pub plan_id: Option<PlanId>,
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    id: i64,
    agency_id: i64,
    server_id: Option<i64>,
    request_id: Option<i64>,
    declared_name: Option<String>,
    enrollment_expires_at: String,
    hostname: Option<String>,
    version: Option<String>,
    created_at: String,
    created_by: String,
    enrolled_at: Option<String>,
    revoked_at: Option<String>,
    last_seen_at: Option<String>,
}

impl AgentRow {
    fn decode(self) -> Result<AgentRecord, CatalogError> {
        Ok(AgentRecord {
            id: AgentId(self.id),
            agency_id: AgencyId(self.agency_id),
            server_id: self.server_id.map(ServerId),
            request_id: self.request_id.map(RequestId),
            declared_name: self.declared_name,
            enrollment_expires_at: parse_instant("agents", &self.enrollment_expires_at)?,
            hostname: self.hostname,
            version: self.version,
            created_at: parse_instant("agents", &self.created_at)?,
            created_by: self.created_by,
            enrolled_at: parse_opt_instant("agents", self.enrolled_at.as_deref())?,
            revoked_at: parse_opt_instant("agents", self.revoked_at.as_deref())?,
            last_seen_at: parse_opt_instant("agents", self.last_seen_at.as_deref())?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct InventoryRow {
    server_id: Option<i64>,
    agent_id: i64,
    reported_at: String,
    inventory_json: String,
    mismatches_json: String,
}

#[derive(sqlx::FromRow)]
struct RestoreRow {
    id: i64,
    agency_id: i64,
    server_id: i64,
    target_server_id: i64,
    snapshot: String,
    paths_json: String,
    excludes_json: String,
    overwrite: String,
    delete_extra: bool,
    dry_run: bool,
    target_dir: String,
    status: String,
    request_id: Option<i64>,
    requested_by: String,
    queued_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    lease_owner: Option<String>,
    attempts: i64,
    stats_json: Option<String>,
    error: Option<String>,
    attempt: Option<String>,
    use_replica: bool,
    check_json: Option<String>,
    plan_id: Option<i64>,
}

impl RestoreRow {
    fn decode(self) -> Result<RestoreRecord, CatalogError> {
        Ok(RestoreRecord {
            id: RestoreId(self.id),
            agency_id: AgencyId(self.agency_id),
            server_id: ServerId(self.server_id),
            target_server_id: ServerId(self.target_server_id),
            snapshot: self.snapshot,
            paths_json: self.paths_json,
            excludes_json: self.excludes_json,
            overwrite: self.overwrite,
            delete: self.delete_extra,
            dry_run: self.dry_run,
            target_dir: self.target_dir,
            status: self.status,
            request_id: self.request_id.map(RequestId),
            requested_by: self.requested_by,
            queued_at: parse_instant("restores", &self.queued_at)?,
            started_at: parse_opt_instant("restores", self.started_at.as_deref())?,
            finished_at: parse_opt_instant("restores", self.finished_at.as_deref())?,
            lease_owner: self.lease_owner,
            attempts: self.attempts,
            stats_json: self.stats_json,
            error: self.error,
            attempt: self.attempt,
            use_replica: self.use_replica,
            check_json: self.check_json,
            plan_id: self.plan_id.map(PlanId),
        })
    }
}

macro_rules! select_agents {
    ($tail:literal) => {
        concat!(
            "SELECT id, agency_id, server_id, request_id, declared_name, enrollment_expires_at, hostname, version, ",
            "created_at, created_by, enrolled_at, revoked_at, last_seen_at FROM agents ",
            $tail
        )
    };
}
macro_rules! select_restores {
    ($tail:literal) => {
        concat!(
            "SELECT id, agency_id, server_id, target_server_id, snapshot, paths_json, target_dir, ",
            "status, request_id, requested_by, queued_at, started_at, finished_at, lease_owner, ",
            "attempts, stats_json, error, attempt, use_replica, check_json, plan_id, excludes_json, overwrite, delete_extra, dry_run FROM restores ",
            $tail
        )
    };
}

const INSERT_AGENT: &str = "INSERT INTO agents (agency_id, server_id, request_id, declared_name, \
     enrollment_hash, enrollment_expires_at, created_at, created_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";
const BIND_AGENTS: &str = "UPDATE agents SET server_id = $1 WHERE request_id = $2 AND declared_name = $3 \
     AND server_id IS NULL";
const BIND_INVENTORIES: &str = "UPDATE agent_inventories SET server_id = $1 WHERE server_id IS NULL \
     AND agent_id IN (SELECT id FROM agents WHERE request_id = $2 AND declared_name = $3)";
const ENROLL_AGENT: &str = "UPDATE agents SET credential_hash = $1, hostname = $2, version = $3, \
     enrolled_at = $4, last_seen_at = $4 WHERE id = $5 AND enrolled_at IS NULL AND revoked_at IS NULL \
     AND enrollment_expires_at > $4";
const REVOKE_AGENT: &str = "UPDATE agents SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";
const TOUCH_AGENT: &str = "UPDATE agents SET last_seen_at = $1 WHERE id = $2";
const INSERT_INVENTORY: &str = "INSERT INTO agent_inventories (server_id, agent_id, reported_at, \
     inventory_json, mismatches_json) VALUES ($1, $2, $3, $4, $5)";
const LATEST_INVENTORY: &str = "SELECT server_id, agent_id, reported_at, inventory_json, mismatches_json \
     FROM agent_inventories WHERE server_id = $1 ORDER BY reported_at DESC, id DESC LIMIT 1";
const COUNT_INVENTORIES: &str = "SELECT COUNT(*) FROM agent_inventories WHERE server_id = $1";
const INSERT_RESTORE: &str = "INSERT INTO restores (agency_id, server_id, target_server_id, snapshot, paths_json, \
     target_dir, status, request_id, requested_by, queued_at, attempt, use_replica, check_json, plan_id, \
     excludes_json, overwrite, delete_extra, dry_run) VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, \
     $12, $13, $14, $15, $16, $17) RETURNING id";
const CLAIM_RESTORE: &str = "UPDATE restores SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
     attempts = attempts + 1, started_at = COALESCE(started_at, $3) WHERE id = $4 \
     AND (status = 'queued' OR (status = 'running' AND lease_expires_at < $3))";
const LAPSE_RESTORE_LEASES: &str = "UPDATE restores SET lease_expires_at = $1 WHERE status = 'running' \
     AND lease_owner <> $2 AND lease_expires_at > $1";
const RENEW_RESTORE: &str = "UPDATE restores SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 \
     AND status = 'running'";
const PROGRESS_RESTORE: &str = "UPDATE restores SET stats_json = $1, snapshot = $2 WHERE id = $3 \
     AND lease_owner = $4 AND status = 'running'";
const FINISH_RESTORE: &str = "UPDATE restores SET status = $1, finished_at = $2, stats_json = $3, error = $4, \
     snapshot = COALESCE($7, snapshot), \
     lease_owner = NULL, lease_expires_at = NULL WHERE id = $5 AND lease_owner = $6 AND status = 'running'";
const PROGRESS_RUN: &str =
    "UPDATE runs SET stats_json = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'";

impl Tx {
    /// Stores an agent with its enrolment token hash.
    ///
    /// # Errors
    /// From the driver.
    pub async fn insert_agent(
        &mut self,
        agent: &NewAgent,
        now: DateTime<Utc>,
    ) -> Result<AgentRecord, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_AGENT)
                .bind(agent.agency_id.0)
                .bind(agent.server_id.map(|id| id.0))
                .bind(agent.request_id.map(|id| id.0))
                .bind(agent.declared_name.as_deref())
                .bind(&agent.enrollment_hash)
                .bind(instant(agent.enrollment_expires_at))
                .bind(instant(now))
                .bind(&agent.created_by)
                .fetch_one(&mut *conn)
                .await?
        });
        self.agent(AgentId(id)).await
    }

    /// One agent.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn agent(&mut self, id: AgentId) -> Result<AgentRecord, CatalogError> {
        let row: Option<AgentRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_agents!("WHERE id = $1"))
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("agent", id))?
            .decode()
    }

    /// Agents, newest first; of one agency or all.
    ///
    /// # Errors
    /// From the driver.
    pub async fn agents(
        &mut self,
        agency: Option<AgencyId>,
    ) -> Result<Vec<AgentRecord>, CatalogError> {
        let rows: Vec<AgentRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_agents!(
                "WHERE ($1 IS NULL OR agency_id = $1) ORDER BY id DESC"
            ))
            .bind(agency.map(|id| id.0))
            .fetch_all(&mut *conn)
            .await?
        });
        rows.into_iter().map(AgentRow::decode).collect()
    }

    /// The agent whose enrolment token has this hash, used or not.
    ///
    /// # Errors
    /// From the driver.
    pub async fn agent_by_enrollment(
        &mut self,
        hash: &str,
    ) -> Result<Option<AgentRecord>, CatalogError> {
        let row: Option<AgentRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_agents!("WHERE enrollment_hash = $1"))
                .bind(hash)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.map(AgentRow::decode).transpose()
    }

    /// The agent whose credential has this hash.
    ///
    /// # Errors
    /// From the driver.
    pub async fn agent_by_credential(
        &mut self,
        hash: &str,
    ) -> Result<Option<AgentRecord>, CatalogError> {
        let row: Option<AgentRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_agents!("WHERE credential_hash = $1"))
                .bind(hash)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.map(AgentRow::decode).transpose()
    }

    /// Marks an agent enrolled with its credential; `false` when the token was used,
    /// revoked or expired in the meantime (exactly one enrolment wins).
    ///
    /// # Errors
    /// From the driver.
    pub async fn enroll_agent(
        &mut self,
        id: AgentId,
        credential_hash: &str,
        hostname: &str,
        version: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(ENROLL_AGENT)
                .bind(credential_hash)
                .bind(hostname)
                .bind(version)
                .bind(instant(now))
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Revokes an agent; `false` when it was revoked already.
    ///
    /// # Errors
    /// From the driver.
    pub async fn revoke_agent(
        &mut self,
        id: AgentId,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(REVOKE_AGENT)
                .bind(instant(now))
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Records the last contact.
    ///
    /// # Errors
    /// From the driver.
    pub async fn touch_agent(
        &mut self,
        id: AgentId,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(TOUCH_AGENT)
                .bind(instant(now))
                .bind(id.0)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Binds the agents enrolled at a handover for `declared_name` to the server step 7
    /// registered, with their inventories. Returns how many agents were bound.
    ///
    /// # Errors
    /// From the driver.
    pub async fn bind_handover_agents(
        &mut self,
        request: RequestId,
        declared_name: &str,
        server: ServerId,
    ) -> Result<u64, CatalogError> {
        let bound = with_conn!(self, |conn| {
            sqlx::query(BIND_INVENTORIES)
                .bind(server.0)
                .bind(request.0)
                .bind(declared_name)
                .execute(&mut *conn)
                .await?;
            sqlx::query(BIND_AGENTS)
                .bind(server.0)
                .bind(request.0)
                .bind(declared_name)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(bound)
    }

    /// Stores an inventory report.
    ///
    /// # Errors
    /// From the driver.
    pub async fn insert_inventory(&mut self, report: &InventoryRecord) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(INSERT_INVENTORY)
                .bind(report.server_id.map(|id| id.0))
                .bind(report.agent_id.0)
                .bind(instant(report.reported_at))
                .bind(&report.inventory_json)
                .bind(&report.mismatches_json)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// A server's latest inventory and how many it has.
    ///
    /// # Errors
    /// From the driver.
    pub async fn latest_inventory(
        &mut self,
        server: ServerId,
    ) -> Result<(Option<InventoryRecord>, i64), CatalogError> {
        let row: Option<InventoryRow> = with_conn!(self, |conn| {
            sqlx::query_as(LATEST_INVENTORY)
                .bind(server.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        let count: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(COUNT_INVENTORIES)
                .bind(server.0)
                .fetch_one(&mut *conn)
                .await?
        });
        let record = row
            .map(|row| {
                Ok::<_, CatalogError>(InventoryRecord {
                    server_id: row.server_id.map(ServerId),
                    agent_id: AgentId(row.agent_id),
                    reported_at: parse_instant("agent_inventories", &row.reported_at)?,
                    inventory_json: row.inventory_json,
                    mismatches_json: row.mismatches_json,
                })
            })
            .transpose()?;
        Ok((record, count))
    }

    /// Queues a restore.
    ///
    /// # Errors
    /// From the driver.
    pub async fn insert_restore(
        &mut self,
        restore: &NewRestore,
        now: DateTime<Utc>,
    ) -> Result<RestoreRecord, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_RESTORE)
                .bind(restore.agency_id.0)
                .bind(restore.server_id.0)
                .bind(restore.target_server_id.0)
                .bind(&restore.snapshot)
                .bind(&restore.paths_json)
                .bind(&restore.target_dir)
                .bind(restore.request_id.map(|id| id.0))
                .bind(&restore.requested_by)
                .bind(instant(now))
                .bind(restore.attempt.as_deref())
                .bind(restore.use_replica)
                .bind(restore.check_json.as_deref())
                .bind(restore.plan_id.map(|id| id.0))
                .bind(&restore.excludes_json)
                .bind(&restore.overwrite)
                .bind(restore.delete)
                .bind(restore.dry_run)
                .fetch_one(&mut *conn)
                .await?
        });
        self.restore(RestoreId(id)).await
    }

    /// One restore.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn restore(&mut self, id: RestoreId) -> Result<RestoreRecord, CatalogError> {
        let row: Option<RestoreRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_restores!("WHERE id = $1"))
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("restore", id))?
            .decode()
    }

    /// Restores, newest first; of one agency or all.
    ///
    /// # Errors
    /// From the driver.
    pub async fn restores(
        &mut self,
        agency: Option<AgencyId>,
        limit: i64,
    ) -> Result<Vec<RestoreRecord>, CatalogError> {
        let rows: Vec<RestoreRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_restores!(
                "WHERE ($1 IS NULL OR agency_id = $1) ORDER BY id DESC LIMIT $2"
            ))
            .bind(agency.map(|id| id.0))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        });
        rows.into_iter().map(RestoreRow::decode).collect()
    }

    /// Ends a restore that has not started (`cancelled` with the request, `failed` when
    /// its agent stayed away); `false` when it had started.
    ///
    /// # Errors
    /// From the driver.
    pub async fn end_queued_restore(
        &mut self,
        id: RestoreId,
        status: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE restores SET status = $1, finished_at = $2, error = $3 \
                 WHERE id = $4 AND status = 'queued'",
            )
            .bind(status)
            .bind(instant(now))
            .bind(error)
            .bind(id.0)
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    /// The restores of a request, oldest first.
    ///
    /// # Errors
    /// From the driver.
    pub async fn restores_of_request(
        &mut self,
        request: RequestId,
    ) -> Result<Vec<RestoreRecord>, CatalogError> {
        let rows: Vec<RestoreRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_restores!("WHERE request_id = $1 ORDER BY id"))
                .bind(request.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(RestoreRow::decode).collect()
    }

    /// Restores waiting to start, or whose daemon's lease lapsed, oldest first.
    ///
    /// # Errors
    /// From the driver.
    pub async fn claimable_restores(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<Vec<RestoreRecord>, CatalogError> {
        let rows: Vec<RestoreRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_restores!(
                "WHERE status = 'queued' OR (status = 'running' AND lease_expires_at < $1) ORDER BY id LIMIT 50"
            ))
            .bind(instant(now))
            .fetch_all(&mut *conn)
            .await?
        });
        rows.into_iter().map(RestoreRow::decode).collect()
    }

    /// Claims one restore for `owner`; `false` when another daemon was first.
    ///
    /// # Errors
    /// From the driver.
    pub async fn claim_restore(
        &mut self,
        id: RestoreId,
        owner: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(CLAIM_RESTORE)
                .bind(owner)
                .bind(instant(lease_until))
                .bind(instant(now))
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Ends now the leases of running restores held by anyone but `owner`, as
    /// [`Tx::lapse_run_leases_of_others`] does for runs. Returns how many.
    ///
    /// # Errors
    /// From the driver.
    pub async fn lapse_restore_leases_of_others(
        &mut self,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query(LAPSE_RESTORE_LEASES)
                .bind(instant(now))
                .bind(owner)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        }))
    }

    /// Extends a restore's lease; `false` when `owner` lost it.
    ///
    /// # Errors
    /// From the driver.
    pub async fn renew_restore_lease(
        &mut self,
        id: RestoreId,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(RENEW_RESTORE)
                .bind(instant(until))
                .bind(id.0)
                .bind(owner)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Records a running restore's progress and resolved snapshot.
    ///
    /// # Errors
    /// From the driver.
    pub async fn restore_progress(
        &mut self,
        id: RestoreId,
        owner: &str,
        snapshot: &str,
        stats_json: &str,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(PROGRESS_RESTORE)
                .bind(stats_json)
                .bind(snapshot)
                .bind(id.0)
                .bind(owner)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Records how a restore ended (and the snapshot it resolved to); `false` when
    /// `owner` no longer held it.
    ///
    /// # Errors
    /// From the driver.
    pub async fn finish_restore(
        &mut self,
        id: RestoreId,
        owner: &str,
        end: &FinishedRestore<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(FINISH_RESTORE)
                .bind(end.status)
                .bind(instant(now))
                .bind(end.stats_json)
                .bind(end.error)
                .bind(id.0)
                .bind(owner)
                .bind(end.snapshot)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Records a running run's live progress (its statistics so far).
    ///
    /// # Errors
    /// From the driver.
    pub async fn run_progress(
        &mut self,
        id: super::RunId,
        owner: &str,
        stats_json: &str,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(PROGRESS_RUN)
                .bind(stats_json)
                .bind(id.0)
                .bind(owner)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }
}
