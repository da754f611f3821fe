//! The SOP as a workflow: the data center's procedures (colocation handover, backup
//! request, restore request, colocation withdrawal, maintenance request) loaded as data
//! from `config/sop/*.toml`, the pure state machine that moves a request through them,
//! the role guard, and the time standards judged as service levels on a working calendar.
//!
//! This module owns the *rules*: which step comes next, who may act, what a decision
//! needs, when a step is late. It must not touch anything else: no file or network I/O
//! (callers hand it the text of definition files), no database, no clock reads (`now` is
//! always a parameter), no running of system actions (it returns them for the
//! application layer to run). It imports nothing from the rest of the crate.
//!
//! The usual call sequence in the application layer:
//! 1. at startup, read `config/sop/*.toml` and build a [`Registry`];
//! 2. to open a request, [`start`] with [`Registry::latest`];
//! 3. for each user event, load the [`RequestState`], look up its definition with
//!    [`Registry::for_request`] (the revision it started under), call [`decide`], then
//!    persist the new state and audit row and run the returned [`PendingAction`]s;
//! 4. for reports, [`overrun_report`] over the state on a [`WorkCalendar`].

mod calendar;
mod definition;
mod load;
mod machine;
mod registry;
mod role;
mod service_level;
mod time_standard;

pub use calendar::{CalendarError, WorkCalendar, WorkCalendarConfig, deadline};
pub use definition::{
    ActionBinding, Answer, Bilingual, DocumentKind, Flow, Outcome, Policy, ProcedureCode,
    ProcedureDefinition, Revision, Step, StepNumber, SystemAction, Target, Trigger,
};
pub use load::{DEFINITION_FORMAT, DefinitionError};
pub use machine::{
    Act, AttachedDocument, Decision, DocumentRef, Event, PendingAction, Progress, Rejection,
    RejectionClass, RequestState, STATE_FORMAT, StepRecord, decide, start,
};
pub use registry::{Registry, RegistryError};
pub use role::{Actor, Role, UnknownRole, UserId};
pub use service_level::{OverrunReport, StepTiming, overrun_report, step_timing};
pub use time_standard::{ClockStart, InvalidTimeStandard, TimeStandard};

#[cfg(test)]
mod tests;
