//! The outbox of system actions owned by other components — `start_backup_plan`,
//! `stop_backup_plan` (the scheduler), `run_restore`, `verify_restore`,
//! `fallback_restore` (the restore component). This is the interface those components
//! implement against:
//!
//! 1. a step's event queues the action in the same transaction as the step
//!    (`pending_actions`, status `pending`);
//! 2. a worker calls [`App::claim_actions`] with the action codes it runs, and gets
//!    [`ActionJob`]s (status `claimed`, so no other worker runs them);
//! 3. after the work, it calls [`App::finish_action`] with its report (`done`) or error
//!    (`failed`). The officer then completes or decides the step in the workflow (for C5,
//!    with the verification report in hand).
//!
//! Every claim and finish is audited like any other change.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{App, AppError};
use crate::catalog::{PendingActionId, PendingActionRecord, PendingStatus, RequestId};
use crate::workflow::{StepNumber, SystemAction, Trigger};

/// A claimed action for a worker to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionJob {
    /// The outbox entry.
    pub id: PendingActionId,
    /// The request.
    pub request_id: RequestId,
    /// The step it belongs to.
    pub step: StepNumber,
    /// Whether the step was entered or completed.
    pub trigger: Trigger,
    /// What to do.
    pub action: SystemAction,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
}

/// Entries scanned per claim.
const SCAN: u32 = 500;

fn job(record: &PendingActionRecord) -> Result<ActionJob, AppError> {
    let action: SystemAction = serde_json::from_str(&record.action_json)
        .map_err(|error| AppError::internal(format!("pending action {}: {error}", record.id)))?;
    let trigger = match record.trigger.as_str() {
        "enter" => Trigger::Enter,
        "complete" => Trigger::Complete,
        other => {
            return Err(AppError::internal(format!(
                "pending action {}: unknown trigger `{other}`",
                record.id
            )));
        }
    };
    Ok(ActionJob {
        id: record.id,
        request_id: record.request_id,
        step: StepNumber(record.step),
        trigger,
        action,
        queued_at: record.created_at,
    })
}

impl App {
    /// Claims up to `limit` pending actions whose code is in `actions`, oldest first, for
    /// `worker`.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] for an empty worker name; catalog errors.
    pub async fn claim_actions(
        &self,
        worker: &str,
        actions: &[&str],
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<ActionJob>, AppError> {
        let worker = super::required("the worker name", worker)?;
        let mut work = self.system_work(&format!("worker:{worker}"), now).await?;
        let mut claimed = Vec::new();
        for record in work.tx.pending_actions(SCAN).await? {
            if claimed.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
                break;
            }
            if !actions.contains(&record.action.as_str()) {
                continue;
            }
            if work
                .tx
                .claim_pending_action(record.id, &worker, now)
                .await?
            {
                let job = job(&record)?;
                work.audit("action.claim", "request", record.request_id)
                    .after =
                    Some(serde_json::json!({ "pending_action": record.id, "worker": worker }));
                claimed.push(job);
            }
        }
        work.commit().await?;
        Ok(claimed)
    }

    /// Records the end of a claimed action: its report, or why it failed.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Conflict`] when it is not claimed (by this
    /// worker).
    pub async fn finish_action(
        &self,
        worker: &str,
        id: PendingActionId,
        result: Result<serde_json::Value, String>,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut work = self.system_work(&format!("worker:{worker}"), now).await?;
        let record = work.tx.pending_action(id).await?;
        if record.claimed_by.as_deref() != Some(worker) {
            return Err(AppError::Conflict(format!(
                "pending action {id} is not claimed by {worker}"
            )));
        }
        let (status, report) = match result {
            Ok(report) => (PendingStatus::Done, report),
            Err(error) => (PendingStatus::Failed, serde_json::json!({ "error": error })),
        };
        work.tx
            .finish_pending_action(id, status, &report.to_string(), now)
            .await?;
        work.audit("action.finish", "request", record.request_id)
            .after = Some(serde_json::json!({
            "pending_action": id,
            "status": status,
            "report": report,
        }));
        work.commit().await?;
        Ok(())
    }

    /// The outbox entries of a request.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn pending_actions_of(
        &self,
        request: RequestId,
    ) -> Result<Vec<PendingActionRecord>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.pending_actions_for_request(request).await?)
    }
}
