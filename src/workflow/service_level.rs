//! Time standards as service levels: which step visits finished within their time
//! standard and which overran.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    ClockStart, RequestState, StepNumber, StepRecord, TimeStandard, WorkCalendar, deadline,
};

/// How one step visit fares against its time standard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTiming {
    /// The step.
    pub step: StepNumber,
    /// Which record of the request (index into [`RequestState::steps`]).
    pub visit: usize,
    /// The time standard applied.
    pub time_standard: TimeStandard,
    /// When the clock started; `None` while a step timed from its first document has none.
    pub clock_started_at: Option<DateTime<Utc>>,
    /// When the step was due; `None` while the clock has not started.
    pub deadline: Option<DateTime<Utc>>,
    /// When the step finished; `None` while open.
    pub finished_at: Option<DateTime<Utc>>,
    /// By how many seconds the step overran (measured to its finish, or to `now` while
    /// open); `None` when it did not (yet) overrun.
    pub late_by_seconds: Option<i64>,
}

impl StepTiming {
    /// Whether the step overran its time standard.
    pub fn is_overrun(&self) -> bool {
        self.late_by_seconds.is_some()
    }

    /// Whether the step is still open.
    pub fn is_open(&self) -> bool {
        self.finished_at.is_none()
    }
}

/// Judges one step record against its time standard. An open step is measured to `now`.
pub fn step_timing(
    record: &StepRecord,
    visit: usize,
    calendar: &WorkCalendar,
    now: DateTime<Utc>,
) -> StepTiming {
    let clock_started_at = match record.time_from {
        ClockStart::Entered => Some(record.started_at),
        ClockStart::FirstDocument => record
            .documents
            .iter()
            .map(|document| document.attached_at)
            .min(),
    };
    let due = clock_started_at.map(|start| deadline(start, record.time_standard, calendar));
    let measured_to = record.finished_at.unwrap_or(now);
    let late_by_seconds = due
        .filter(|due| measured_to > *due)
        .map(|due| (measured_to - due).num_seconds());
    StepTiming {
        step: record.step,
        visit,
        time_standard: record.time_standard,
        clock_started_at,
        deadline: due,
        finished_at: record.finished_at,
        late_by_seconds,
    }
}

/// The timing of every step visit of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrunReport {
    /// One entry per step record, in order.
    pub steps: Vec<StepTiming>,
}

impl OverrunReport {
    /// The visits that overran.
    pub fn overruns(&self) -> impl Iterator<Item = &StepTiming> {
        self.steps.iter().filter(|timing| timing.is_overrun())
    }
}

/// Judges every step record of a request; open steps are measured to `now`.
pub fn overrun_report(
    state: &RequestState,
    calendar: &WorkCalendar,
    now: DateTime<Utc>,
) -> OverrunReport {
    OverrunReport {
        steps: state
            .steps
            .iter()
            .enumerate()
            .map(|(visit, record)| step_timing(record, visit, calendar, now))
            .collect(),
    }
}
