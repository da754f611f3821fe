//! Time-standard reports: which step visits overran the SOP's *waktu* column, judged on
//! the configured working calendar ("1 hari" is one working day of office time).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{App, AppError};
use crate::catalog::{AgencyId, RequestFilter, RequestId};
use crate::workflow::{OverrunReport, Role, StepNumber, TimeStandard, overrun_report};

/// The timing report of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOverruns {
    /// The request.
    pub request_id: RequestId,
    /// Its procedure.
    pub procedure: String,
    /// Every step visit with its deadline and lateness.
    pub report: OverrunReport,
}

/// One step visit that overran its time standard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOverrun {
    /// The request.
    pub request_id: RequestId,
    /// Its procedure.
    pub procedure: String,
    /// The requesting agency.
    pub agency_id: AgencyId,
    /// The step.
    pub step: StepNumber,
    /// Which visit of the request (index into its step records).
    pub visit: usize,
    /// The time standard.
    pub time_standard: TimeStandard,
    /// Who does the step (*pelaksana*).
    #[serde(default)]
    pub roles: Vec<Role>,
    /// When the clock started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the step was due.
    pub deadline: Option<DateTime<Utc>>,
    /// When it finished (`None`: still open, measured to `now`).
    pub finished_at: Option<DateTime<Utc>>,
    /// By how many seconds it overran.
    pub late_by_seconds: i64,
}

/// Requests read per page when scanning for overruns.
const PAGE: u32 = 200;

impl App {
    /// The timing of every step visit of one request; open steps are measured to `now`.
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn overrun_report(
        &self,
        request: RequestId,
        now: DateTime<Utc>,
    ) -> Result<RequestOverruns, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let record = tx.request(request).await?;
        Ok(RequestOverruns {
            request_id: record.id,
            procedure: record.state.procedure.to_string(),
            report: overrun_report(&record.state, &self.config().calendar, now),
        })
    }

    /// When the step a request waits on is due by its time standard: `None` once the
    /// request is finished, or while the step's clock has not started.
    pub fn current_step_due(
        &self,
        view: &crate::app::RequestView,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        overrun_report(&view.state, &self.config().calendar, now)
            .steps
            .iter()
            .rev()
            .find(|timing| timing.is_open())
            .and_then(|timing| timing.deadline)
    }

    /// Every step visit that overran, over the requests matching `filter` (all of them
    /// by default), oldest request first.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn overruns(
        &self,
        filter: &RequestFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<StepOverrun>, AppError> {
        let calendar = &self.config().calendar;
        let registry = self.registry();
        let mut tx = self.catalog().begin_read().await?;
        let mut found = Vec::new();
        let mut after = None;
        loop {
            let page = tx.list_requests(filter, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for summary in &page {
                let record = tx.request(summary.id).await?;
                let report = overrun_report(&record.state, calendar, now);
                let definition = registry.for_request(&record.state).ok();
                for timing in report.overruns() {
                    found.push(StepOverrun {
                        request_id: record.id,
                        procedure: record.state.procedure.to_string(),
                        agency_id: record.agency_id,
                        step: timing.step,
                        visit: timing.visit,
                        time_standard: timing.time_standard,
                        roles: definition
                            .and_then(|definition| definition.step(timing.step))
                            .map(|step| step.roles.clone())
                            .unwrap_or_default(),
                        started_at: timing.clock_started_at,
                        deadline: timing.deadline,
                        finished_at: timing.finished_at,
                        late_by_seconds: timing.late_by_seconds.unwrap_or_default(),
                    });
                }
            }
        }
        Ok(found)
    }
}
