//! Which events notify the operators, and the outbox they wait in: a failed, partial,
//! window-cut or verify-differences run (queued in the same transaction that records the
//! run's end, so it cannot be lost or sent for a run that did not end), a restore that
//! did not verify or that needed the replica (the primary is damaged), a plan whose
//! backup is later than its schedule promises, and a SOP step past its time standard.
//! Each event has a key, so finding it again (next tick, another daemon) never sends it
//! twice. How a message travels (webhook, SMTP) is `crate::notify`'s business.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use super::{App, AppError, Caller};
use crate::catalog::{
    AgencyId, NewNotification, NotificationRecord, PlanRecord, RequestFilter, RunRecord, Tx,
};
use crate::workflow::Role;

/// Who may read the notification log.
const LOG_ROLES: [Role; 4] = [Role::Kadin, Role::KabidTik, Role::KasiInfras, Role::Admin];

/// An event worth telling people about.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unique key of the event.
    pub key: String,
    /// Kind (`run_failed`, `plan_overdue`, `step_overdue`, …).
    pub kind: &'static str,
    /// Agency concerned.
    pub agency_id: Option<AgencyId>,
    /// One line for people.
    pub subject: String,
    /// Details.
    pub body: serde_json::Value,
}

/// The event a finished run raises, if it should raise one.
pub fn run_event(run: &RunRecord, plan: &PlanRecord, agency_code: &str) -> Option<Event> {
    let window_cut = run
        .stats_json
        .as_deref()
        .and_then(|stats| serde_json::from_str::<serde_json::Value>(stats).ok())
        .is_some_and(|stats| stats["window_cut_off"] == json!(true));
    let kind = match (run.kind.as_str(), run.status.as_str()) {
        ("drill", "failed" | "verify_differences") => "drill_failed",
        (_, "failed") => "run_failed",
        (_, "partial") => "run_partial",
        (_, "verify_differences") => "verify_differences",
        (_, "cancelled") if window_cut => "run_window_cut_off",
        _ => return None,
    };
    let subject = format!(
        "[cadang] {agency_code}: {} run {} of plan \"{}\" ended {}",
        run.kind, run.id, plan.name, run.status
    );
    Some(Event {
        key: format!("run:{}", run.id),
        kind,
        agency_id: Some(plan.agency_id),
        subject,
        body: json!({
            "event": kind,
            "agency": { "id": plan.agency_id, "code": agency_code },
            "plan": { "id": plan.id, "name": plan.name },
            "run": {
                "id": run.id, "kind": run.kind, "trigger": run.trigger, "status": run.status,
                "due_at": run.due_at, "started_at": run.started_at, "finished_at": run.finished_at,
                "snapshot_id": run.snapshot_id, "error": run.error,
            },
        }),
    })
}

/// The event a finished restore raises: a restore that did not verify, or one that
/// read chunks damaged in the primary repository from the replica (the primary needs
/// repair although the restore succeeded).
pub fn restore_event(
    restore: &crate::catalog::RestoreRecord,
    status: &str,
    stats: &serde_json::Value,
    agency_code: &str,
) -> Option<Event> {
    let repaired = stats["repaired"].as_u64().unwrap_or(0);
    let (kind, subject) = match status {
        "failed" | "verify_differences" => (
            "restore_failed",
            format!(
                "[cadang] {agency_code}: restore {} to server {} ended {status}",
                restore.id, restore.target_server_id
            ),
        ),
        "ok" if repaired > 0 => (
            "primary_damaged",
            format!(
                "[cadang] {agency_code}: restore {} read {repaired} damaged chunk(s) from the replica; repair the primary repository",
                restore.id
            ),
        ),
        _ => return None,
    };
    Some(Event {
        key: format!("restore:{}", restore.id),
        kind,
        agency_id: Some(restore.agency_id),
        subject,
        body: json!({
            "event": kind,
            "agency": { "id": restore.agency_id, "code": agency_code },
            "restore": {
                "id": restore.id, "request": restore.request_id, "attempt": restore.attempt,
                "server": restore.server_id, "target_server": restore.target_server_id,
                "target_dir": restore.target_dir, "snapshot": stats["snapshot"], "status": status,
                "files_verified": stats["files_verified"], "files_failed": stats["files_failed"],
                "repaired_from_replica": stats["repaired_from_replica"],
            },
        }),
    })
}

/// Queues an event on every configured channel (none configured: nothing is queued).
pub(crate) async fn queue_event(
    tx: &mut Tx,
    channels: &[String],
    event: &Event,
    now: DateTime<Utc>,
) -> Result<bool, AppError> {
    let mut queued = false;
    let mut body = event.body.clone();
    body["subject"] = json!(event.subject);
    body["event_key"] = json!(event.key);
    body["at"] = json!(now);
    for channel in channels {
        let channel = match channel.as_str() {
            "webhook" => "webhook",
            "email" => "email",
            other => {
                return Err(AppError::internal(format!(
                    "unknown notification channel `{other}`"
                )));
            }
        };
        queued |= tx
            .insert_notification(
                &NewNotification {
                    event_key: event.key.clone(),
                    channel,
                    kind: event.kind,
                    agency_id: event.agency_id,
                    subject: event.subject.clone(),
                    body_json: body.to_string(),
                },
                now,
            )
            .await?;
    }
    Ok(queued)
}

/// How long after a failed delivery attempt the next one starts: 30 s, doubling, at
/// most an hour.
pub fn retry_delay(attempts: i64) -> TimeDelta {
    let exponent = u32::try_from(attempts.clamp(1, 8) - 1).unwrap_or(0);
    TimeDelta::seconds(30 * 2_i64.pow(exponent)).min(TimeDelta::hours(1))
}

impl App {
    /// Looks for plans whose backups are overdue and SOP steps past their time
    /// standard, and queues a notification for each one not yet notified. Returns how
    /// many events were new.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn queue_overdue_notifications(&self, now: DateTime<Utc>) -> Result<usize, AppError> {
        let channels = &self.config().notify_channels;
        if channels.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::new();
        for line in self.schedule_lines(None, now).await? {
            if let (true, Some(expected)) = (line.overdue, line.expected_by) {
                events.push(Event {
                    key: format!("overdue:{}:{}", line.plan_id, expected.to_rfc3339()),
                    kind: "plan_overdue",
                    agency_id: Some(line.agency_id),
                    subject: format!(
                        "[cadang] {}: plan \"{}\" has no good backup since {}",
                        line.agency_code,
                        line.plan_name,
                        line.last_good_at
                            .map_or_else(|| "it started".to_owned(), |at| at.to_rfc3339())
                    ),
                    body: json!({ "event": "plan_overdue", "plan": line }),
                });
            }
        }
        for overrun in self.overruns(&RequestFilter::default(), now).await? {
            // Only steps still open or closed within the last day: old history is a
            // report, not news.
            if overrun
                .finished_at
                .is_some_and(|finished| now - finished > TimeDelta::days(1))
            {
                continue;
            }
            events.push(Event {
                key: format!("sla:{}:{}", overrun.request_id, overrun.visit),
                kind: "step_overdue",
                agency_id: Some(overrun.agency_id),
                subject: format!(
                    "[cadang] request {} ({}): step {} is past its time standard",
                    overrun.request_id, overrun.procedure, overrun.step
                ),
                body: json!({ "event": "step_overdue", "overrun": overrun }),
            });
        }
        let mut tx = self.catalog().begin().await?;
        let mut new = 0;
        for event in &events {
            if queue_event(&mut tx, channels, event, now).await? {
                new += 1;
            }
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Claims one notification to deliver, held for `hold` against other daemons.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn claim_notification(
        &self,
        hold: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Option<NotificationRecord>, AppError> {
        let mut tx = self.catalog().begin().await?;
        let claimed = tx.claim_notification(now + hold, now).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Records a delivery attempt: sent, retried later with back-off, or given up after
    /// `max_attempts`.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn record_delivery(
        &self,
        notification: &NotificationRecord,
        outcome: Result<(), String>,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut tx = self.catalog().begin().await?;
        match outcome {
            Ok(()) => {
                tx.finish_notification(notification.id, "sent", now, None, Some(now))
                    .await?;
            }
            Err(error) => {
                let give_up = notification.attempts >= i64::from(max_attempts);
                let status = if give_up { "failed" } else { "pending" };
                let next = now + retry_delay(notification.attempts);
                tx.finish_notification(notification.id, status, next, Some(&error), None)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The notification log, newest first (the data center's staff only: it speaks of
    /// every agency).
    ///
    /// # Errors
    /// [`AppError::Forbidden`].
    pub async fn notifications_for(
        &self,
        caller: &Caller,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, AppError> {
        if !LOG_ROLES.iter().any(|role| caller.has(*role)) {
            return Err(AppError::Forbidden(
                "only the data center's oversight roles may read the notification log".into(),
            ));
        }
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.notifications(limit.clamp(1, super::MAX_PAGE)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(retry_delay(1), TimeDelta::seconds(30));
        assert_eq!(retry_delay(2), TimeDelta::seconds(60));
        assert_eq!(retry_delay(4), TimeDelta::seconds(240));
        assert_eq!(retry_delay(50), TimeDelta::hours(1));
    }
}
