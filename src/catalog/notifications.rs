//! The notification outbox: rows only. Which events notify, and how a message is
//! delivered, are decided in `app::notify` and `crate::notify`.

use chrono::{DateTime, Utc};

use super::codec::{instant, parse_instant, parse_opt_instant};
use super::{AgencyId, CatalogError, Tx};

/// A stored notification (one event on one channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    /// Id.
    pub id: i64,
    /// The event it reports (unique per channel).
    pub event_key: String,
    /// `webhook` or `email`.
    pub channel: String,
    /// `run_failed`, `run_partial`, `run_cancelled`, `verify_differences`, `drill_failed`,
    /// `plan_overdue` or `step_overdue`.
    pub kind: String,
    /// The agency concerned, if one is.
    pub agency_id: Option<AgencyId>,
    /// One line for people (the email subject).
    pub subject: String,
    /// The event as JSON (the webhook body).
    pub body_json: String,
    /// `pending`, `sent` or `failed` (given up).
    pub status: String,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// When the next attempt may start.
    pub next_attempt_at: DateTime<Utc>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was delivered.
    pub sent_at: Option<DateTime<Utc>>,
}

/// A notification to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// The event it reports.
    pub event_key: String,
    /// Channel.
    pub channel: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Agency concerned.
    pub agency_id: Option<AgencyId>,
    /// Subject.
    pub subject: String,
    /// Body JSON.
    pub body_json: String,
}

#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: i64,
    event_key: String,
    channel: String,
    kind: String,
    agency_id: Option<i64>,
    subject: String,
    body_json: String,
    status: String,
    attempts: i64,
    next_attempt_at: String,
    last_error: Option<String>,
    created_at: String,
    sent_at: Option<String>,
}

impl NotificationRow {
    fn decode(self) -> Result<NotificationRecord, CatalogError> {
        Ok(NotificationRecord {
            id: self.id,
            event_key: self.event_key,
            channel: self.channel,
            kind: self.kind,
            agency_id: self.agency_id.map(AgencyId),
            subject: self.subject,
            body_json: self.body_json,
            status: self.status,
            attempts: self.attempts,
            next_attempt_at: parse_instant("notifications", &self.next_attempt_at)?,
            last_error: self.last_error,
            created_at: parse_instant("notifications", &self.created_at)?,
            sent_at: parse_opt_instant("notifications", self.sent_at.as_deref())?,
        })
    }
}

macro_rules! select_notifications {
    ($tail:literal) => {
        concat!(
            "SELECT id, event_key, channel, kind, agency_id, subject, body_json, status, attempts, ",
            "next_attempt_at, last_error, created_at, sent_at FROM notifications ",
            $tail
        )
    };
}

const INSERT: &str = "INSERT INTO notifications (event_key, channel, kind, agency_id, subject, body_json, \
     status, attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7) \
     ON CONFLICT (event_key, channel) DO NOTHING";
/// Claims the oldest deliverable notification by pushing its next attempt past the
/// claim's lease, so no other daemon picks it up while it is being sent.
const CLAIM_SQLITE: &str = "UPDATE notifications SET next_attempt_at = $1, attempts = attempts + 1 \
     WHERE id = (SELECT id FROM notifications WHERE status = 'pending' AND next_attempt_at <= $2 \
     ORDER BY next_attempt_at, id LIMIT 1) RETURNING id";
const CLAIM_POSTGRES: &str = "UPDATE notifications SET next_attempt_at = $1, attempts = attempts + 1 \
     WHERE id = (SELECT id FROM notifications WHERE status = 'pending' AND next_attempt_at <= $2 \
     ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id";
const FINISH: &str = "UPDATE notifications SET status = $1, next_attempt_at = $2, last_error = $3, sent_at = $4 \
     WHERE id = $5";

impl Tx {
    /// Queues a notification; `false` when that event was already queued on that
    /// channel.
    ///
    /// # Errors
    /// From the driver.
    pub async fn insert_notification(
        &mut self,
        notification: &NewNotification,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(INSERT)
                .bind(&notification.event_key)
                .bind(notification.channel)
                .bind(notification.kind)
                .bind(notification.agency_id.map(|id| id.0))
                .bind(&notification.subject)
                .bind(&notification.body_json)
                .bind(instant(now))
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Claims one notification due at `now`, holding it until `hold_until`.
    ///
    /// # Errors
    /// From the driver.
    pub async fn claim_notification(
        &mut self,
        hold_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<NotificationRecord>, CatalogError> {
        let id: Option<i64> = with_conn_sql!(self, sql = (CLAIM_SQLITE, CLAIM_POSTGRES), |conn| {
            sqlx::query_scalar(sql)
                .bind(instant(hold_until))
                .bind(instant(now))
                .fetch_optional(&mut *conn)
                .await?
        });
        let Some(id) = id else { return Ok(None) };
        let row: NotificationRow = with_conn!(self, |conn| {
            sqlx::query_as(select_notifications!("WHERE id = $1"))
                .bind(id)
                .fetch_one(&mut *conn)
                .await?
        });
        row.decode().map(Some)
    }

    /// Records a delivery attempt: `sent`, or `pending` again at `next_attempt_at`, or
    /// `failed` for good.
    ///
    /// # Errors
    /// From the driver.
    pub async fn finish_notification(
        &mut self,
        id: i64,
        status: &str,
        next_attempt_at: DateTime<Utc>,
        error: Option<&str>,
        sent_at: Option<DateTime<Utc>>,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(FINISH)
                .bind(status)
                .bind(instant(next_attempt_at))
                .bind(error)
                .bind(sent_at.map(instant))
                .bind(id)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Notifications, newest first.
    ///
    /// # Errors
    /// From the driver.
    pub async fn notifications(
        &mut self,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, CatalogError> {
        let rows: Vec<NotificationRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_notifications!("ORDER BY id DESC LIMIT $1"))
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(NotificationRow::decode).collect()
    }
}
