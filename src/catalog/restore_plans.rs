//! Restore plans of restore requests (procedure C, step 2), their approval (C3) and the
//! confirmation that an older snapshot may be restored (C6).

use chrono::{DateTime, Utc};

use super::codec::{instant, parse_instant, parse_opt_instant};
use super::{CatalogError, RequestId, Tx};

/// One version of a request's restore plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlanRecord {
    /// The request.
    pub request_id: RequestId,
    /// 1, 2, … — each change at C2 is a new version.
    pub version: i64,
    /// The plan (JSON).
    pub plan_json: String,
    /// BLAKE3 of `plan_json`: what C3 approved.
    pub digest: String,
    /// Who wrote it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Who approved it at C3.
    pub approved_by: Option<String>,
    /// When.
    pub approved_at: Option<DateTime<Utc>>,
    /// Who confirmed that an older snapshot may be restored instead.
    pub older_confirmed_by: Option<String>,
    /// When.
    pub older_confirmed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct PlanRow {
    request_id: i64,
    version: i64,
    plan_json: String,
    digest: String,
    created_by: String,
    created_at: String,
    approved_by: Option<String>,
    approved_at: Option<String>,
    older_confirmed_by: Option<String>,
    older_confirmed_at: Option<String>,
}

impl PlanRow {
    fn decode(self) -> Result<RestorePlanRecord, CatalogError> {
        Ok(RestorePlanRecord {
            request_id: RequestId(self.request_id),
            version: self.version,
            plan_json: self.plan_json,
            digest: self.digest,
            created_by: self.created_by,
            created_at: parse_instant("restore_plans", &self.created_at)?,
            approved_by: self.approved_by,
            approved_at: parse_opt_instant("restore_plans", self.approved_at.as_deref())?,
            older_confirmed_by: self.older_confirmed_by,
            older_confirmed_at: parse_opt_instant(
                "restore_plans",
                self.older_confirmed_at.as_deref(),
            )?,
        })
    }
}

const SELECT_LATEST: &str = "SELECT request_id, version, plan_json, digest, created_by, created_at, \
     approved_by, approved_at, older_confirmed_by, older_confirmed_at FROM restore_plans \
     WHERE request_id = $1 ORDER BY version DESC LIMIT 1";
const INSERT_PLAN: &str = "INSERT INTO restore_plans (request_id, version, plan_json, digest, created_by, \
     created_at) VALUES ($1, COALESCE((SELECT MAX(version) FROM restore_plans WHERE request_id = $1), 0) + 1, \
     $2, $3, $4, $5)";
const APPROVE_PLAN: &str = "UPDATE restore_plans SET approved_by = $1, approved_at = $2 \
     WHERE request_id = $3 AND version = $4 AND approved_at IS NULL";
const CONFIRM_OLDER: &str = "UPDATE restore_plans SET older_confirmed_by = $1, older_confirmed_at = $2 \
     WHERE request_id = $3 AND version = $4 AND approved_at IS NOT NULL AND older_confirmed_at IS NULL";

impl Tx {
    /// The newest version of a request's restore plan.
    ///
    /// # Errors
    /// From the driver.
    pub async fn restore_plan(
        &mut self,
        request: RequestId,
    ) -> Result<Option<RestorePlanRecord>, CatalogError> {
        let row: Option<PlanRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_LATEST)
                .bind(request.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.map(PlanRow::decode).transpose()
    }

    /// Stores a new version of a request's restore plan and returns it.
    ///
    /// # Errors
    /// From the driver.
    pub async fn insert_restore_plan(
        &mut self,
        request: RequestId,
        plan_json: &str,
        digest: &str,
        created_by: &str,
        now: DateTime<Utc>,
    ) -> Result<RestorePlanRecord, CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(INSERT_PLAN)
                .bind(request.0)
                .bind(plan_json)
                .bind(digest)
                .bind(created_by)
                .bind(instant(now))
                .execute(&mut *conn)
                .await?;
        });
        self.restore_plan(request)
            .await?
            .ok_or_else(|| CatalogError::not_found("restore plan of request", request))
    }

    /// Marks a plan version approved; `false` when it already was.
    ///
    /// # Errors
    /// From the driver.
    pub async fn approve_restore_plan(
        &mut self,
        request: RequestId,
        version: i64,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(APPROVE_PLAN)
                .bind(by)
                .bind(instant(now))
                .bind(request.0)
                .bind(version)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Records that an older snapshot may be restored; `false` when already confirmed
    /// (or the plan is not approved).
    ///
    /// # Errors
    /// From the driver.
    pub async fn confirm_older_snapshot(
        &mut self,
        request: RequestId,
        version: i64,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(CONFIRM_OLDER)
                .bind(by)
                .bind(instant(now))
                .bind(request.0)
                .bind(version)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }
}
