//! Procedure definitions, requests with their state and step records, maintenance
//! records, and the outbox of system actions for other components.

use chrono::{DateTime, Utc};

use super::codec::{
    date, from_json, instant, parse_date, parse_instant, parse_opt_instant, to_json, to_u32,
};
use super::{
    AgencyId, CatalogError, MaintenanceId, MaintenanceRecord, NewRequest, PendingActionId,
    PendingActionRecord, PendingStatus, RequestFilter, RequestId, RequestRecord, RequestSummary,
    ServerId, StoredDefinition, Tx,
};
use crate::workflow::{PendingAction, ProcedureCode, RequestState, Revision, StepRecord, Trigger};

#[derive(sqlx::FromRow)]
struct DefinitionRow {
    code: String,
    revision: i64,
    source: String,
    definition_json: String,
    content_hash: String,
    loaded_at: String,
}

impl DefinitionRow {
    fn decode(self) -> Result<StoredDefinition, CatalogError> {
        Ok(StoredDefinition {
            code: ProcedureCode(self.code),
            revision: Revision(to_u32("procedure_definitions", "revision", self.revision)?),
            source: self.source,
            definition_json: self.definition_json,
            content_hash: self.content_hash,
            loaded_at: parse_instant("procedure_definitions", &self.loaded_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    id: i64,
    procedure: String,
    revision: i64,
    agency_id: i64,
    server_id: Option<i64>,
    subject: String,
    details_json: String,
    sop_number: String,
    sop_revision_date: String,
    state_json: String,
    version: i64,
    updated_at: String,
}

impl RequestRow {
    fn decode(self) -> Result<RequestRecord, CatalogError> {
        let state: RequestState = from_json("requests", &self.state_json)?;
        // The columns are projections of the state; disagreement means the row was edited
        // outside cadang, and acting on it could run the wrong procedure.
        if state.procedure.as_str() != self.procedure
            || i64::from(state.revision.0) != self.revision
        {
            return Err(CatalogError::corrupt(
                "requests",
                format!(
                    "request {}: state says {} {}, columns say {} r{}",
                    self.id, state.procedure, state.revision, self.procedure, self.revision
                ),
            ));
        }
        Ok(RequestRecord {
            id: RequestId(self.id),
            agency_id: AgencyId(self.agency_id),
            server_id: self.server_id.map(ServerId),
            subject: self.subject,
            details_json: self.details_json,
            sop_number: self.sop_number,
            sop_revision_date: parse_date("requests", &self.sop_revision_date)?,
            state,
            version: self.version,
            updated_at: parse_instant("requests", &self.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    id: i64,
    procedure: String,
    revision: i64,
    agency_id: i64,
    subject: String,
    status: String,
    current_step: Option<i64>,
    outcome: Option<String>,
    opened_at: String,
}

#[derive(sqlx::FromRow)]
struct MaintenanceRow {
    id: i64,
    request_id: i64,
    agency_id: i64,
    server_id: Option<i64>,
    description: String,
    reported_at: String,
    status: String,
    closed_at: Option<String>,
}

impl MaintenanceRow {
    fn decode(self) -> Result<MaintenanceRecord, CatalogError> {
        Ok(MaintenanceRecord {
            id: MaintenanceId(self.id),
            request_id: RequestId(self.request_id),
            agency_id: AgencyId(self.agency_id),
            server_id: self.server_id.map(ServerId),
            description: self.description,
            reported_at: parse_instant("maintenance_requests", &self.reported_at)?,
            status: self.status,
            closed_at: parse_opt_instant("maintenance_requests", self.closed_at.as_deref())?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: i64,
    request_id: i64,
    step: i64,
    trigger_on: String,
    action: String,
    action_json: String,
    status: String,
    created_at: String,
    claimed_by: Option<String>,
    claimed_at: Option<String>,
    finished_at: Option<String>,
    result_json: Option<String>,
}

impl PendingRow {
    fn decode(self) -> Result<PendingActionRecord, CatalogError> {
        const TABLE: &str = "pending_actions";
        Ok(PendingActionRecord {
            id: PendingActionId(self.id),
            request_id: RequestId(self.request_id),
            step: to_u32(TABLE, "step", self.step)?,
            trigger: self.trigger_on,
            action: self.action,
            action_json: self.action_json,
            status: self
                .status
                .parse()
                .map_err(|message: String| CatalogError::corrupt(TABLE, message))?,
            created_at: parse_instant(TABLE, &self.created_at)?,
            claimed_by: self.claimed_by,
            claimed_at: parse_opt_instant(TABLE, self.claimed_at.as_deref())?,
            finished_at: parse_opt_instant(TABLE, self.finished_at.as_deref())?,
            result_json: self.result_json,
        })
    }
}

// DO NOTHING rather than an error: two daemons starting at once may both store the same
// revision, and on PostgreSQL a failed insert would abort the whole transaction.
const INSERT_DEFINITION: &str = "INSERT INTO procedure_definitions \
     (code, revision, source, definition_json, content_hash, loaded_at) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (code, revision) DO NOTHING";
const SELECT_DEFINITIONS: &str = "SELECT code, revision, source, definition_json, content_hash, loaded_at \
     FROM procedure_definitions ORDER BY code, revision";
const SELECT_DEFINITION: &str = "SELECT code, revision, source, definition_json, content_hash, loaded_at \
     FROM procedure_definitions WHERE code = $1 AND revision = $2";

const INSERT_REQUEST: &str = "INSERT INTO requests \
     (procedure, revision, sop_number, sop_revision_date, agency_id, server_id, subject, \
      details_json, state_json, status, current_step, outcome, version, opened_by, opened_at, \
      updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $14, $15) RETURNING id";
const SELECT_REQUEST: &str = "SELECT id, procedure, revision, agency_id, server_id, subject, \
     details_json, sop_number, sop_revision_date, state_json, version, updated_at \
     FROM requests WHERE id = $1";
const SELECT_REQUEST_FOR_UPDATE: &str = "SELECT id, procedure, revision, agency_id, server_id, subject, \
     details_json, sop_number, sop_revision_date, state_json, version, updated_at \
     FROM requests WHERE id = $1 FOR UPDATE";
const UPDATE_REQUEST_STATE: &str = "UPDATE requests SET state_json = $1, status = $2, \
     current_step = $3, outcome = $4, version = version + 1, updated_at = $5 \
     WHERE id = $6 AND version = $7";
const UPDATE_REQUEST_DETAILS: &str =
    "UPDATE requests SET details_json = $1, updated_at = $2 WHERE id = $3";
const UPDATE_REQUEST_SERVER: &str = "UPDATE requests SET server_id = $1 WHERE id = $2";
const LIST_REQUESTS: &str = "SELECT id, procedure, revision, agency_id, subject, status, \
     current_step, outcome, opened_at FROM requests \
     WHERE ($1 IS NULL OR procedure = $1) AND ($2 IS NULL OR status = $2) \
       AND ($3 IS NULL OR agency_id = $3) AND id > $4 \
     ORDER BY id LIMIT $5";

const UPSERT_STEP_RECORD: &str = "INSERT INTO step_records \
     (request_id, visit, step, started_at, finished_at, actor, role, decision, reason, note, \
      cancelled, documents_json, time_standard) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (request_id, visit) DO UPDATE SET step = excluded.step, \
       started_at = excluded.started_at, finished_at = excluded.finished_at, \
       actor = excluded.actor, role = excluded.role, decision = excluded.decision, \
       reason = excluded.reason, note = excluded.note, cancelled = excluded.cancelled, \
       documents_json = excluded.documents_json, time_standard = excluded.time_standard";
const COUNT_STEP_RECORDS: &str = "SELECT COUNT(*) FROM step_records WHERE request_id = $1";

const INSERT_MAINTENANCE: &str = "INSERT INTO maintenance_requests \
     (request_id, agency_id, server_id, description, reported_at, status) \
     VALUES ($1, $2, $3, $4, $5, 'open') RETURNING id";
const SELECT_MAINTENANCE: &str = "SELECT id, request_id, agency_id, server_id, description, \
     reported_at, status, closed_at FROM maintenance_requests WHERE request_id = $1";
const CLOSE_MAINTENANCE: &str = "UPDATE maintenance_requests SET status = 'closed', closed_at = $1 \
     WHERE request_id = $2 AND status = 'open'";

const INSERT_PENDING: &str = "INSERT INTO pending_actions \
     (request_id, step, trigger_on, action, action_json, status, created_at) \
     VALUES ($1, $2, $3, $4, $5, 'pending', $6) RETURNING id";
const PENDING_COLUMNS_BY_STATUS: &str = "SELECT id, request_id, step, trigger_on, action, \
     action_json, status, created_at, claimed_by, claimed_at, finished_at, result_json \
     FROM pending_actions WHERE status = 'pending' ORDER BY id LIMIT $1";
const PENDING_BY_REQUEST: &str = "SELECT id, request_id, step, trigger_on, action, \
     action_json, status, created_at, claimed_by, claimed_at, finished_at, result_json \
     FROM pending_actions WHERE request_id = $1 ORDER BY id";
const PENDING_BY_ID: &str = "SELECT id, request_id, step, trigger_on, action, \
     action_json, status, created_at, claimed_by, claimed_at, finished_at, result_json \
     FROM pending_actions WHERE id = $1";
const CLAIM_PENDING: &str = "UPDATE pending_actions SET status = 'claimed', claimed_by = $1, \
     claimed_at = $2 WHERE id = $3 AND status = 'pending'";
const RELEASE_STALE_PENDING: &str = "UPDATE pending_actions SET status = 'pending', claimed_by = NULL, \
     claimed_at = NULL WHERE status = 'claimed' AND action = $1 AND claimed_at < $2";
const RELEASE_PENDING: &str = "UPDATE pending_actions SET status = 'pending', claimed_by = NULL, \
     claimed_at = NULL WHERE id = $1 AND status = 'claimed' AND claimed_by = $2";
const FINISH_PENDING: &str = "UPDATE pending_actions SET status = $1, finished_at = $2, \
     result_json = $3 WHERE id = $4 AND status = 'claimed'";

/// The projection columns of a state: status, current step, outcome.
fn projection(state: &RequestState) -> (&'static str, Option<i64>, Option<&'static str>) {
    match state.current_step() {
        Some(step) => ("active", Some(i64::from(step.0)), None),
        None => (
            "finished",
            None,
            state.outcome().map(|outcome| outcome.code()),
        ),
    }
}

impl Tx {
    /// Stores a procedure revision unless one with its code and revision is stored
    /// already; returns whether it was stored.
    ///
    /// # Errors
    /// From the driver.
    pub async fn insert_definition(
        &mut self,
        definition: &StoredDefinition,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(INSERT_DEFINITION)
                .bind(definition.code.as_str())
                .bind(i64::from(definition.revision.0))
                .bind(&definition.source)
                .bind(&definition.definition_json)
                .bind(&definition.content_hash)
                .bind(instant(definition.loaded_at))
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected == 1)
    }

    /// Every stored procedure revision.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn definitions(&mut self) -> Result<Vec<StoredDefinition>, CatalogError> {
        let rows: Vec<DefinitionRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_DEFINITIONS)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(DefinitionRow::decode).collect()
    }

    /// One stored procedure revision.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn definition(
        &mut self,
        code: &ProcedureCode,
        revision: Revision,
    ) -> Result<Option<StoredDefinition>, CatalogError> {
        let row: Option<DefinitionRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_DEFINITION)
                .bind(code.as_str())
                .bind(i64::from(revision.0))
                .fetch_optional(&mut *conn)
                .await?
        });
        row.map(DefinitionRow::decode).transpose()
    }

    /// Stores a new request and the step records of its initial state.
    ///
    /// # Errors
    /// [`CatalogError::Constraint`] when the agency, server or procedure revision is not
    /// stored.
    pub async fn insert_request(
        &mut self,
        request: &NewRequest,
    ) -> Result<RequestRecord, CatalogError> {
        let state = &request.state;
        let state_json = to_json("requests", state)?;
        let (status, current, outcome) = projection(state);
        let opened_at = instant(state.opened_at);
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_REQUEST)
                .bind(state.procedure.as_str())
                .bind(i64::from(state.revision.0))
                .bind(&request.sop_number)
                .bind(date(request.sop_revision_date))
                .bind(request.agency_id.0)
                .bind(request.server_id.map(|id| id.0))
                .bind(&request.subject)
                .bind(&request.details_json)
                .bind(&state_json)
                .bind(status)
                .bind(current)
                .bind(outcome)
                .bind(&state.opened_by.0)
                .bind(&opened_at)
                .bind(&opened_at)
                .fetch_one(&mut *conn)
                .await?
        });
        let id = RequestId(id);
        self.save_step_records(id, &state.steps).await?;
        self.request(id).await
    }

    /// The request with this id.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`]; [`CatalogError::Corrupt`] when its state does not
    /// decode.
    pub async fn request(&mut self, id: RequestId) -> Result<RequestRecord, CatalogError> {
        let row: Option<RequestRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_REQUEST)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("request", id))?
            .decode()
    }

    /// The request with this id, locked until the transaction ends, for a use case that
    /// will change it (PostgreSQL: `FOR UPDATE`; SQLite: the transaction already holds the
    /// write lock).
    ///
    /// # Errors
    /// As [`Tx::request`].
    pub async fn request_for_update(
        &mut self,
        id: RequestId,
    ) -> Result<RequestRecord, CatalogError> {
        let row: Option<RequestRow> = with_conn_sql!(
            self,
            sql = (SELECT_REQUEST, SELECT_REQUEST_FOR_UPDATE),
            |conn| {
                sqlx::query_as(sql)
                    .bind(id.0)
                    .fetch_optional(&mut *conn)
                    .await?
            }
        );
        row.ok_or_else(|| CatalogError::not_found("request", id))?
            .decode()
    }

    /// Replaces a request's state (and its projections and step records), if it is still
    /// at `expected_version`. Returns the new version.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the request changed since it was read;
    /// [`CatalogError::NotFound`] when it does not exist.
    pub async fn update_request_state(
        &mut self,
        id: RequestId,
        expected_version: i64,
        state: &RequestState,
        now: DateTime<Utc>,
    ) -> Result<i64, CatalogError> {
        let state_json = to_json("requests", state)?;
        let (status, current, outcome) = projection(state);
        let affected = with_conn!(self, |conn| {
            sqlx::query(UPDATE_REQUEST_STATE)
                .bind(&state_json)
                .bind(status)
                .bind(current)
                .bind(outcome)
                .bind(instant(now))
                .bind(id.0)
                .bind(expected_version)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            // Tell a vanished request from a concurrent change.
            self.request(id).await?;
            return Err(CatalogError::Conflict(format!(
                "request {id} was changed by someone else since it was read; reload it"
            )));
        }
        self.save_step_records(id, &state.steps).await?;
        Ok(expected_version + 1)
    }

    /// Replaces a request's application data.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn update_request_details(
        &mut self,
        id: RequestId,
        details_json: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(UPDATE_REQUEST_DETAILS)
                .bind(details_json)
                .bind(instant(now))
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(CatalogError::not_found("request", id));
        }
        Ok(())
    }

    /// Links a request to a server.
    ///
    /// # Errors
    /// [`CatalogError::Constraint`] when the server does not exist.
    pub async fn set_request_server(
        &mut self,
        id: RequestId,
        server: ServerId,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(UPDATE_REQUEST_SERVER)
                .bind(server.0)
                .bind(id.0)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Requests matching `filter` with an id above `after`, by id, at most `limit`.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn list_requests(
        &mut self,
        filter: &RequestFilter,
        after: Option<RequestId>,
        limit: u32,
    ) -> Result<Vec<RequestSummary>, CatalogError> {
        let status = filter
            .active
            .map(|active| if active { "active" } else { "finished" });
        let rows: Vec<SummaryRow> = with_conn!(self, |conn| {
            sqlx::query_as(LIST_REQUESTS)
                .bind(filter.procedure.as_deref())
                .bind(status)
                .bind(filter.agency_id.map(|id| id.0))
                .bind(after.map_or(0, |id| id.0))
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter()
            .map(|row| {
                Ok(RequestSummary {
                    id: RequestId(row.id),
                    procedure: row.procedure,
                    revision: to_u32("requests", "revision", row.revision)?,
                    agency_id: AgencyId(row.agency_id),
                    subject: row.subject,
                    status: row.status,
                    current_step: row
                        .current_step
                        .map(|step| to_u32("requests", "current_step", step))
                        .transpose()?,
                    outcome: row.outcome,
                    opened_at: parse_instant("requests", &row.opened_at)?,
                })
            })
            .collect()
    }

    /// Writes the step records of a state (upserting each visit).
    async fn save_step_records(
        &mut self,
        id: RequestId,
        records: &[StepRecord],
    ) -> Result<(), CatalogError> {
        for (visit, record) in records.iter().enumerate() {
            let documents = to_json("step_records", &record.documents)?;
            let visit = i64::try_from(visit).unwrap_or(i64::MAX);
            with_conn!(self, |conn| {
                sqlx::query(UPSERT_STEP_RECORD)
                    .bind(id.0)
                    .bind(visit)
                    .bind(i64::from(record.step.0))
                    .bind(instant(record.started_at))
                    .bind(record.finished_at.map(instant))
                    .bind(record.actor.as_ref().map(|user| user.0.as_str()))
                    .bind(record.role.map(|role| role.code()))
                    .bind(record.decision.map(|answer| answer.to_string()))
                    .bind(record.reason.as_deref())
                    .bind(record.note.as_deref())
                    .bind(record.cancelled)
                    .bind(&documents)
                    .bind(record.time_standard.to_string())
                    .execute(&mut *conn)
                    .await?;
            });
        }
        Ok(())
    }

    /// How many step records a request has in the projection table.
    ///
    /// # Errors
    /// From the driver.
    pub async fn count_step_records(&mut self, id: RequestId) -> Result<i64, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query_scalar(COUNT_STEP_RECORDS)
                .bind(id.0)
                .fetch_one(&mut *conn)
                .await?
        }))
    }

    /// Opens the maintenance record of a maintenance request.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the request already has one.
    pub async fn insert_maintenance(
        &mut self,
        request: RequestId,
        agency: AgencyId,
        server: Option<ServerId>,
        description: &str,
        reported_at: DateTime<Utc>,
    ) -> Result<MaintenanceId, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_MAINTENANCE)
                .bind(request.0)
                .bind(agency.0)
                .bind(server.map(|id| id.0))
                .bind(description)
                .bind(instant(reported_at))
                .fetch_one(&mut *conn)
                .await?
        });
        Ok(MaintenanceId(id))
    }

    /// The maintenance record of a request.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn maintenance_for_request(
        &mut self,
        request: RequestId,
    ) -> Result<Option<MaintenanceRecord>, CatalogError> {
        let row: Option<MaintenanceRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_MAINTENANCE)
                .bind(request.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.map(MaintenanceRow::decode).transpose()
    }

    /// Closes the maintenance record of a request; returns whether one was open.
    ///
    /// # Errors
    /// From the driver.
    pub async fn close_maintenance(
        &mut self,
        request: RequestId,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(CLOSE_MAINTENANCE)
                .bind(instant(now))
                .bind(request.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Queues a system action for the component that runs it.
    ///
    /// # Errors
    /// [`CatalogError::Constraint`] when the request does not exist.
    pub async fn insert_pending_action(
        &mut self,
        request: RequestId,
        action: &PendingAction,
        now: DateTime<Utc>,
    ) -> Result<PendingActionId, CatalogError> {
        let action_json = to_json("pending_actions", &action.action)?;
        let trigger = match action.trigger {
            Trigger::Enter => "enter",
            Trigger::Complete => "complete",
        };
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_PENDING)
                .bind(request.0)
                .bind(i64::from(action.step.0))
                .bind(trigger)
                .bind(action.action.code())
                .bind(&action_json)
                .bind(instant(now))
                .fetch_one(&mut *conn)
                .await?
        });
        Ok(PendingActionId(id))
    }

    /// The oldest pending outbox entries, at most `limit`.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn pending_actions(
        &mut self,
        limit: u32,
    ) -> Result<Vec<PendingActionRecord>, CatalogError> {
        let rows: Vec<PendingRow> = with_conn!(self, |conn| {
            sqlx::query_as(PENDING_COLUMNS_BY_STATUS)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(PendingRow::decode).collect()
    }

    /// Every outbox entry of a request.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn pending_actions_for_request(
        &mut self,
        request: RequestId,
    ) -> Result<Vec<PendingActionRecord>, CatalogError> {
        let rows: Vec<PendingRow> = with_conn!(self, |conn| {
            sqlx::query_as(PENDING_BY_REQUEST)
                .bind(request.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(PendingRow::decode).collect()
    }

    /// One outbox entry.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn pending_action(
        &mut self,
        id: PendingActionId,
    ) -> Result<PendingActionRecord, CatalogError> {
        let row: Option<PendingRow> = with_conn!(self, |conn| {
            sqlx::query_as(PENDING_BY_ID)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("pending action", id))?
            .decode()
    }

    /// Marks a pending entry as claimed by `worker`; returns false when another worker got
    /// it first.
    ///
    /// # Errors
    /// From the driver.
    pub async fn claim_pending_action(
        &mut self,
        id: PendingActionId,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(CLAIM_PENDING)
                .bind(worker)
                .bind(instant(now))
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected == 1)
    }

    /// Puts back in the queue the entries of `action` claimed before `before` and never
    /// finished (their worker died); returns how many.
    ///
    /// # Errors
    /// From the driver.
    pub async fn release_stale_actions(
        &mut self,
        action: &str,
        before: DateTime<Utc>,
    ) -> Result<u64, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query(RELEASE_STALE_PENDING)
                .bind(action)
                .bind(instant(before))
                .execute(&mut *conn)
                .await?
                .rows_affected()
        }))
    }

    /// Puts a claimed entry back in the queue (its worker could not carry it out for a
    /// passing reason); `false` when `worker` did not hold it.
    ///
    /// # Errors
    /// From the driver.
    pub async fn release_pending_action(
        &mut self,
        id: PendingActionId,
        worker: &str,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(RELEASE_PENDING)
                .bind(id.0)
                .bind(worker)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected == 1)
    }

    /// Records the end of a claimed entry.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the entry is not claimed.
    pub async fn finish_pending_action(
        &mut self,
        id: PendingActionId,
        status: PendingStatus,
        result_json: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(FINISH_PENDING)
                .bind(status.code())
                .bind(instant(now))
                .bind(result_json)
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(CatalogError::Conflict(format!(
                "pending action {id} is not claimed"
            )));
        }
        Ok(())
    }
}
