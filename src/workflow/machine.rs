//! The pure state machine of a request: `start` and `decide` turn a definition, a state,
//! an event, an actor and the current time into a new state plus the system actions to
//! run, or a typed [`Rejection`]. Nothing here persists, reads the clock or runs actions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::definition::{
    Answer, Flow, Outcome, ProcedureCode, ProcedureDefinition, Revision, Step, StepNumber,
    SystemAction, Target, Trigger,
};
use super::role::{describe_held, describe_roles};
use super::{Actor, ClockStart, Role, TimeStandard, UserId};

/// The version of the persisted [`RequestState`] encoding.
pub const STATE_FORMAT: u32 = 1;

/// A reference to a document held by the catalog (its id or official number).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DocumentRef(pub String);

impl From<&str> for DocumentRef {
    fn from(reference: &str) -> Self {
        DocumentRef(reference.to_owned())
    }
}

/// A document attached to a step, with who attached it and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedDocument {
    /// The document.
    pub document: DocumentRef,
    /// Who attached it.
    pub attached_by: UserId,
    /// When.
    pub attached_at: DateTime<Utc>,
}

/// What happened at one visit of one step. A step visited twice (a loop back) has two
/// records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step.
    pub step: StepNumber,
    /// When the request entered the step.
    pub started_at: DateTime<Utc>,
    /// When it was completed, decided or cancelled; `None` while it is open.
    pub finished_at: Option<DateTime<Utc>>,
    /// Who finished it.
    pub actor: Option<UserId>,
    /// In which role.
    pub role: Option<Role>,
    /// The answer, on a decision step.
    pub decision: Option<Answer>,
    /// The decision's reason, or the cancellation's.
    pub reason: Option<String>,
    /// A free note left when completing.
    pub note: Option<String>,
    /// Whether the request was cancelled while at this step.
    pub cancelled: bool,
    /// Documents attached at this step.
    pub documents: Vec<AttachedDocument>,
    /// The step's time standard when it was entered (kept so a later revision of the
    /// definition cannot change how this record is judged).
    pub time_standard: TimeStandard,
    /// When that time standard starts to run.
    pub time_from: ClockStart,
}

impl StepRecord {
    fn entered(step: &Step, now: DateTime<Utc>) -> Self {
        StepRecord {
            step: step.number,
            started_at: now,
            finished_at: None,
            actor: None,
            role: None,
            decision: None,
            reason: None,
            note: None,
            cancelled: false,
            documents: Vec::new(),
            time_standard: step.time_standard,
            time_from: step.time_from,
        }
    }

    fn attach(&mut self, documents: Vec<DocumentRef>, actor: &Actor, now: DateTime<Utc>) {
        for document in documents {
            // Attaching the same reference twice is a no-op, so a retried call is harmless.
            if self.documents.iter().all(|held| held.document != document) {
                self.documents.push(AttachedDocument {
                    document,
                    attached_by: actor.user.clone(),
                    attached_at: now,
                });
            }
        }
    }

    fn finish(&mut self, actor: &Actor, role: Role, now: DateTime<Utc>) {
        self.finished_at = Some(now);
        self.actor = Some(actor.user.clone());
        self.role = Some(role);
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Progress {
    /// Waiting on a step.
    Active {
        /// The step it waits on.
        current: StepNumber,
    },
    /// Finished; the request can no longer change.
    Finished {
        /// How it ended.
        outcome: Outcome,
        /// When.
        at: DateTime<Utc>,
    },
}

/// The state of one request, as stored (JSON) by the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestState {
    /// [`STATE_FORMAT`] at the time it was written.
    pub format: u32,
    /// The procedure.
    pub procedure: ProcedureCode,
    /// The definition revision it runs under, to its end.
    pub revision: Revision,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
    /// Who opened it.
    pub opened_by: UserId,
    /// Where it stands.
    pub progress: Progress,
    /// The step visits, in order.
    pub steps: Vec<StepRecord>,
}

impl RequestState {
    /// The step it waits on, or `None` once finished.
    pub fn current_step(&self) -> Option<StepNumber> {
        match self.progress {
            Progress::Active { current } => Some(current),
            Progress::Finished { .. } => None,
        }
    }

    /// Whether it has finished.
    pub fn is_finished(&self) -> bool {
        matches!(self.progress, Progress::Finished { .. })
    }

    /// How it ended, once finished.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.progress {
            Progress::Active { .. } => None,
            Progress::Finished { outcome, .. } => Some(outcome),
        }
    }

    /// The record of the open step, while active.
    pub fn current_record(&self) -> Option<&StepRecord> {
        self.current_step().and_then(|current| {
            self.steps
                .last()
                .filter(|record| record.step == current && record.finished_at.is_none())
        })
    }

    /// The steps visited, in order.
    pub fn path(&self) -> Vec<StepNumber> {
        self.steps.iter().map(|record| record.step).collect()
    }
}

/// Something a user does to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Complete a task step.
    Complete {
        /// The step the user is completing (must be the current one).
        step: StepNumber,
        /// An optional note.
        note: Option<String>,
        /// Documents produced or handed in.
        documents: Vec<DocumentRef>,
    },
    /// Answer a decision step.
    Decide {
        /// The step the user is deciding (must be the current one).
        step: StepNumber,
        /// Yes or no.
        answer: Answer,
        /// Why; required.
        reason: String,
        /// Documents supporting the decision.
        documents: Vec<DocumentRef>,
    },
    /// Attach a document to the current step without finishing it.
    Attach {
        /// The step (must be the current one).
        step: StepNumber,
        /// The document.
        document: DocumentRef,
    },
    /// Cancel the request.
    Cancel {
        /// Why; required.
        reason: String,
    },
}

impl Event {
    /// A completion without note or documents.
    pub fn complete(step: u32) -> Self {
        Event::Complete {
            step: StepNumber(step),
            note: None,
            documents: Vec::new(),
        }
    }

    /// A decision without documents.
    pub fn decide(step: u32, answer: Answer, reason: impl Into<String>) -> Self {
        Event::Decide {
            step: StepNumber(step),
            answer,
            reason: reason.into(),
            documents: Vec::new(),
        }
    }

    /// The name used in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Complete { .. } => "complete",
            Event::Decide { .. } => "decide",
            Event::Attach { .. } => "attach",
            Event::Cancel { .. } => "cancel",
        }
    }
}

/// A system action the caller must run, and the step it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAction {
    /// The step the action is bound to.
    pub step: StepNumber,
    /// Whether it runs because the step was entered or completed.
    pub trigger: Trigger,
    /// The action.
    pub action: SystemAction,
}

/// The accepted result of an event: the new state and the actions to run, in order (those
/// of the step being completed, then those of the step being entered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The new state.
    pub state: RequestState,
    /// The system actions to run.
    pub actions: Vec<PendingAction>,
}

/// What kind of act a role guard refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    /// Opening a request.
    Start,
    /// Completing, deciding or attaching at a step.
    Step(StepNumber),
    /// Cancelling.
    Cancel,
}

impl std::fmt::Display for Act {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Act::Start => f.write_str("start this request"),
            Act::Step(step) => write!(f, "act on step {step}"),
            Act::Cancel => f.write_str("cancel this request"),
        }
    }
}

/// What the caller can do about a rejection (the rpc layer maps these to status codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionClass {
    /// The actor lacks a role: ask someone who has it.
    Forbidden,
    /// The event itself is malformed: fix it and retry.
    InvalidInput,
    /// The request moved on (or finished): reload and decide again.
    Conflict,
    /// The stored state does not fit the definition: a bug or a corrupted row.
    Internal,
}

/// Why an event was refused. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The actor holds none of the roles allowed.
    #[error("only {} may {act} (you hold: {})", describe_roles(.allowed), describe_held(.held))]
    WrongRole {
        /// What was attempted.
        act: Act,
        /// The roles that may do it.
        allowed: Vec<Role>,
        /// The roles the actor holds.
        held: Vec<Role>,
    },
    /// A decision or cancellation without a reason.
    #[error("a reason is required to {act}")]
    MissingReason {
        /// What was attempted.
        act: Act,
    },
    /// The event names a step the request is not waiting on.
    #[error("step {requested} is not the current step (the request waits on step {current})")]
    NotCurrentStep {
        /// The step the event named.
        requested: StepNumber,
        /// The current step.
        current: StepNumber,
    },
    /// `decide` on a task step.
    #[error("step {step} is not a decision step: complete it instead")]
    NotADecisionStep {
        /// The step.
        step: StepNumber,
    },
    /// `complete` on a decision step.
    #[error("step {step} is a decision step: decide it yes or no, with a reason")]
    DecisionRequired {
        /// The step.
        step: StepNumber,
    },
    /// A document reference that is empty.
    #[error("a document reference must not be empty")]
    EmptyDocumentRef,
    /// The request has finished; it can no longer change.
    #[error("the request is finished ({outcome}) and can no longer change")]
    Finished {
        /// How it ended.
        outcome: Outcome,
    },
    /// The state was started under another procedure or revision than the definition given.
    #[error(
        "the request runs under {state_procedure} {state_revision}, not {definition_procedure} {definition_revision}"
    )]
    WrongDefinition {
        /// The state's procedure.
        state_procedure: ProcedureCode,
        /// The state's revision.
        state_revision: Revision,
        /// The definition's procedure.
        definition_procedure: ProcedureCode,
        /// The definition's revision.
        definition_revision: Revision,
    },
    /// The state does not fit its definition (a step that does not exist, a current step
    /// without an open record).
    #[error("the stored request state is inconsistent with its definition: {0}")]
    InconsistentState(String),
}

impl Rejection {
    /// What the caller can do about it.
    pub fn class(&self) -> RejectionClass {
        match self {
            Rejection::WrongRole { .. } => RejectionClass::Forbidden,
            Rejection::MissingReason { .. }
            | Rejection::NotADecisionStep { .. }
            | Rejection::DecisionRequired { .. }
            | Rejection::EmptyDocumentRef => RejectionClass::InvalidInput,
            Rejection::NotCurrentStep { .. } | Rejection::Finished { .. } => {
                RejectionClass::Conflict
            }
            Rejection::WrongDefinition { .. } | Rejection::InconsistentState(_) => {
                RejectionClass::Internal
            }
        }
    }
}

/// Opens a request under `definition` at its start step.
///
/// # Errors
/// [`Rejection::WrongRole`] when the actor holds none of the definition's `start_roles`.
pub fn start(
    definition: &ProcedureDefinition,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    guard(actor, &definition.policy().start_roles, Act::Start)?;
    let first = definition.step(definition.start_step()).ok_or_else(|| {
        Rejection::InconsistentState(format!("start step {} is missing", definition.start_step()))
    })?;
    let state = RequestState {
        format: STATE_FORMAT,
        procedure: definition.code().clone(),
        revision: definition.revision(),
        opened_at: now,
        opened_by: actor.user.clone(),
        progress: Progress::Active {
            current: first.number,
        },
        steps: vec![StepRecord::entered(first, now)],
    };
    Ok(Decision {
        state,
        actions: bound(first, Trigger::Enter),
    })
}

/// Applies an event to a request.
///
/// Checks, in order: the state belongs to this definition and revision; the request is not
/// finished; a cancel is by a cancel role and has a reason; otherwise the event names the
/// current step, the actor holds one of the step's roles (or, to attach, one of the
/// definition's `attach_roles`), the event fits the kind of step, a decision has a reason,
/// and no document reference is empty.
///
/// # Errors
/// A [`Rejection`] saying which check failed; the state is then unchanged.
pub fn decide(
    definition: &ProcedureDefinition,
    state: &RequestState,
    event: Event,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    if state.procedure != *definition.code() || state.revision != definition.revision() {
        return Err(Rejection::WrongDefinition {
            state_procedure: state.procedure.clone(),
            state_revision: state.revision,
            definition_procedure: definition.code().clone(),
            definition_revision: definition.revision(),
        });
    }
    let current = match state.progress {
        Progress::Finished { outcome, .. } => return Err(Rejection::Finished { outcome }),
        Progress::Active { current } => current,
    };
    let step = definition.step(current).ok_or_else(|| {
        Rejection::InconsistentState(format!("current step {current} is not in the definition"))
    })?;
    if state.current_record().is_none() {
        return Err(Rejection::InconsistentState(format!(
            "current step {current} has no open record"
        )));
    }
    let mut next = state.clone();

    if let Event::Cancel { reason } = event {
        let role = guard(actor, &definition.policy().cancel_roles, Act::Cancel)?;
        let reason = required_reason(reason, Act::Cancel)?;
        let record = open_record(&mut next)?;
        record.finish(actor, role, now);
        record.cancelled = true;
        record.reason = Some(reason);
        next.progress = Progress::Finished {
            outcome: Outcome::Cancelled,
            at: now,
        };
        return Ok(Decision {
            state: next,
            actions: Vec::new(),
        });
    }

    let requested = match &event {
        Event::Complete { step, .. } | Event::Decide { step, .. } | Event::Attach { step, .. } => {
            *step
        }
        Event::Cancel { .. } => unreachable!("cancel handled above"),
    };
    if requested != current {
        return Err(Rejection::NotCurrentStep { requested, current });
    }

    match event {
        Event::Attach { document, .. } => {
            let allowed: Vec<Role> = step
                .roles
                .iter()
                .chain(&definition.policy().attach_roles)
                .copied()
                .collect();
            guard(actor, &allowed, Act::Step(current))?;
            let documents = checked_documents(vec![document])?;
            open_record(&mut next)?.attach(documents, actor, now);
            Ok(Decision {
                state: next,
                actions: Vec::new(),
            })
        }
        Event::Complete {
            note, documents, ..
        } => {
            let role = guard(actor, &step.roles, Act::Step(current))?;
            let Flow::Task { next: target } = step.flow else {
                return Err(Rejection::DecisionRequired { step: current });
            };
            let documents = checked_documents(documents)?;
            let record = open_record(&mut next)?;
            record.attach(documents, actor, now);
            record.note = note.filter(|note| !note.trim().is_empty());
            record.finish(actor, role, now);
            advance(definition, step, next, target, now)
        }
        Event::Decide {
            answer,
            reason,
            documents,
            ..
        } => {
            let role = guard(actor, &step.roles, Act::Step(current))?;
            let Flow::Decision { yes, no } = step.flow else {
                return Err(Rejection::NotADecisionStep { step: current });
            };
            let reason = required_reason(reason, Act::Step(current))?;
            let documents = checked_documents(documents)?;
            let record = open_record(&mut next)?;
            record.attach(documents, actor, now);
            record.decision = Some(answer);
            record.reason = Some(reason);
            record.finish(actor, role, now);
            let target = match answer {
                Answer::Yes => yes,
                Answer::No => no,
            };
            advance(definition, step, next, target, now)
        }
        Event::Cancel { .. } => unreachable!("cancel handled above"),
    }
}

/// Moves a request whose current step was just finished on to `target`.
fn advance(
    definition: &ProcedureDefinition,
    finished: &Step,
    mut state: RequestState,
    target: Target,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    let mut actions = bound(finished, Trigger::Complete);
    match target {
        Target::End(outcome) => {
            state.progress = Progress::Finished { outcome, at: now };
        }
        Target::Step(number) => {
            let entered = definition.step(number).ok_or_else(|| {
                Rejection::InconsistentState(format!("target step {number} is missing"))
            })?;
            state.steps.push(StepRecord::entered(entered, now));
            state.progress = Progress::Active { current: number };
            actions.extend(bound(entered, Trigger::Enter));
        }
    }
    Ok(Decision { state, actions })
}

fn bound(step: &Step, trigger: Trigger) -> Vec<PendingAction> {
    step.actions_on(trigger)
        .map(|action| PendingAction {
            step: step.number,
            trigger,
            action,
        })
        .collect()
}

/// The role guard: the role the actor acts in, or the rejection naming the allowed roles.
fn guard(actor: &Actor, allowed: &[Role], act: Act) -> Result<Role, Rejection> {
    actor
        .acting_role(allowed)
        .ok_or_else(|| Rejection::WrongRole {
            act,
            allowed: allowed.to_vec(),
            held: actor.roles.clone(),
        })
}

fn required_reason(reason: String, act: Act) -> Result<String, Rejection> {
    let trimmed = reason.trim();
    if trimmed.is_empty() {
        Err(Rejection::MissingReason { act })
    } else {
        Ok(trimmed.to_owned())
    }
}

fn checked_documents(documents: Vec<DocumentRef>) -> Result<Vec<DocumentRef>, Rejection> {
    if documents
        .iter()
        .any(|document| document.0.trim().is_empty())
    {
        Err(Rejection::EmptyDocumentRef)
    } else {
        Ok(documents)
    }
}

/// The open record of an active state (which `decide` checks before any change).
fn open_record(state: &mut RequestState) -> Result<&mut StepRecord, Rejection> {
    state
        .steps
        .last_mut()
        .ok_or_else(|| Rejection::InconsistentState("the current step has no open record".into()))
}
