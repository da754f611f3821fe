//! Reading procedure definitions: the raw file shape and its validation.
//!
//! The raw shape keeps roles, time standards, targets and actions as text, so that every
//! mistake is reported as a [`DefinitionError`] naming the file and the step instead of a
//! bare deserializer message.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::calendar::dates;
use super::definition::{
    ActionBinding, Bilingual, DocumentKind, Flow, Outcome, Policy, ProcedureCode,
    ProcedureDefinition, Revision, Step, StepNumber, SystemAction, Target, Trigger,
};
use super::{ClockStart, Role, TimeStandard};

/// The definition file format this build reads (the `format` key).
pub const DEFINITION_FORMAT: u32 = 1;

/// A procedure definition that cannot be loaded. Every variant names the file; those about
/// one step name the step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// Not valid TOML, a missing or unknown key, or a value of the wrong type.
    #[error("{file}: not a valid procedure definition: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The `format` key names a format this build does not read.
    #[error("{file}: unsupported definition format {found} (this build reads format {expected})")]
    UnsupportedFormat {
        /// The file.
        file: String,
        /// The format in the file.
        found: u32,
        /// The format this build reads.
        expected: u32,
    },
    /// The procedure code is not lower-case letters, digits and `_`.
    #[error(
        "{file}: invalid procedure code `{code}`: use lower-case letters, digits and `_`, starting with a letter"
    )]
    InvalidCode {
        /// The file.
        file: String,
        /// The code in the file.
        code: String,
    },
    /// Revisions count from 1.
    #[error("{file}: revision must be 1 or greater")]
    InvalidRevision {
        /// The file.
        file: String,
    },
    /// A required text of the procedure is empty.
    #[error("{file}: `{field}` must not be empty")]
    EmptyField {
        /// The file.
        file: String,
        /// The key.
        field: &'static str,
    },
    /// A role in `[policy]` is not known.
    #[error(
        "{file}: policy.{field}: unknown role `{role}` (known roles: KADIN, KABID_TIK, KASI_INFRAS, PETUGAS, SKPD, ADMIN)"
    )]
    UnknownPolicyRole {
        /// The file.
        file: String,
        /// The policy key.
        field: &'static str,
        /// The unknown role.
        role: String,
    },
    /// Nobody could start a request.
    #[error("{file}: policy.start_roles must name at least one role")]
    NoStartRoles {
        /// The file.
        file: String,
    },
    /// The definition has no step.
    #[error("{file}: the procedure has no steps")]
    NoSteps {
        /// The file.
        file: String,
    },
    /// The start step does not exist.
    #[error("{file}: start step {start} does not exist")]
    UnknownStartStep {
        /// The file.
        file: String,
        /// The start step in the file.
        start: u32,
    },
    /// Step numbers count from 1.
    #[error("{file}: step {step}: step numbers start at 1")]
    InvalidStepNumber {
        /// The file.
        file: String,
        /// The number in the file.
        step: u32,
    },
    /// Two steps have the same number.
    #[error("{file}: step {step}: the number is used by more than one step")]
    DuplicateStep {
        /// The file.
        file: String,
        /// The repeated number.
        step: u32,
    },
    /// A required text of a step is empty.
    #[error("{file}: step {step}: `{field}` must not be empty")]
    EmptyStepField {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// The key.
        field: &'static str,
    },
    /// A step names no executor role.
    #[error("{file}: step {step}: `roles` must name at least one role")]
    NoRoles {
        /// The file.
        file: String,
        /// The step.
        step: u32,
    },
    /// A step names a role that is not known.
    #[error(
        "{file}: step {step}: unknown role `{role}` (known roles: KADIN, KABID_TIK, KASI_INFRAS, PETUGAS, SKPD, ADMIN)"
    )]
    UnknownRole {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// The unknown role.
        role: String,
    },
    /// The step's `kind` is neither `task` nor `decision`.
    #[error("{file}: step {step}: unknown kind `{kind}` (expected \"task\" or \"decision\")")]
    UnknownStepKind {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// The kind in the file.
        kind: String,
    },
    /// The time standard does not parse.
    #[error(
        "{file}: step {step}: invalid time standard `{value}`: expected a positive number and a unit, like \"1 jam\", \"3 jam\" or \"1 hari\""
    )]
    InvalidTimeStandard {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// The text in the file.
        value: String,
    },
    /// `time_from` is neither `entered` nor `first_document`.
    #[error(
        "{file}: step {step}: unknown time_from `{value}` (expected \"entered\" or \"first_document\")"
    )]
    InvalidClockStart {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// The text in the file.
        value: String,
    },
    /// A task step without `next`: every step that is not a decision must lead somewhere,
    /// if only to `"end"`.
    #[error("{file}: step {step}: a task step needs `next` (a step number or \"end\")")]
    MissingNext {
        /// The file.
        file: String,
        /// The step.
        step: u32,
    },
    /// A decision step without one of its branches.
    #[error("{file}: step {step}: a decision step needs `{branch}` (a step number or \"end\")")]
    MissingBranch {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// `yes` or `no`.
        branch: &'static str,
    },
    /// A key that belongs to the other kind of step.
    #[error("{file}: step {step}: `{field}` is not allowed on a {kind} step")]
    MisplacedField {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// The key.
        field: &'static str,
        /// `task` or `decision`.
        kind: &'static str,
    },
    /// A target that is neither a step number, `"end"`, nor `{ end = "<outcome>" }`.
    #[error(
        "{file}: step {step}: `{field}` = {value} is not a target: use a step number, \"end\", or {{ end = \"completed\" | \"rejected\" | \"capacity_unavailable\" }}"
    )]
    InvalidTarget {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// `next`, `yes` or `no`.
        field: &'static str,
        /// The value in the file.
        value: String,
    },
    /// A target step that does not exist.
    #[error("{file}: step {step}: `{field}` leads to step {target}, which does not exist")]
    UnknownTarget {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// `next`, `yes` or `no`.
        field: &'static str,
        /// The missing step.
        target: u32,
    },
    /// A step that leads to itself.
    #[error("{file}: step {step}: `{field}` leads back to the step itself")]
    SelfTarget {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// `next`, `yes` or `no`.
        field: &'static str,
    },
    /// An action name that is not known.
    #[error(
        "{file}: step {step}: unknown action `{action}` (known: capacity_check, update_asset_register, start_backup_plan, stop_backup_plan, run_restore, verify_restore, fallback_restore, render_document)"
    )]
    UnknownAction {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// The action in the file.
        action: String,
    },
    /// `render_document` without `document`, or `document` on another action.
    #[error("{file}: step {step}: {message}")]
    ActionDocument {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// What is wrong.
        message: &'static str,
    },
    /// A document kind that is not known.
    #[error("{file}: step {step}: unknown document kind `{document}`")]
    UnknownDocumentKind {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// The kind in the file.
        document: String,
    },
    /// An action trigger that is neither `enter` nor `complete`.
    #[error(
        "{file}: step {step}: unknown action trigger `{on}` (expected \"enter\" or \"complete\")"
    )]
    UnknownTrigger {
        /// The file.
        file: String,
        /// The step.
        step: u32,
        /// The trigger in the file.
        on: String,
    },
    /// No path from the start step leads here.
    #[error("{file}: step {step}: cannot be reached from the start step {start}")]
    Unreachable {
        /// The file.
        file: String,
        /// The unreachable step.
        step: u32,
        /// The start step.
        start: u32,
    },
    /// Every path from here loops forever.
    #[error("{file}: step {step}: no path from this step reaches an end")]
    NoWayToEnd {
        /// The file.
        file: String,
        /// The trapped step.
        step: u32,
    },
}

/// The file shape of a definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefinition {
    format: u32,
    code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    title: Bilingual,
    sop_number: String,
    #[serde(deserialize_with = "dates::deserialize")]
    sop_revision_date: NaiveDate,
    revision: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<u32>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    steps: Vec<RawStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default = "default_start_roles")]
    start_roles: Vec<String>,
    #[serde(default = "default_cancel_roles")]
    cancel_roles: Vec<String>,
    #[serde(default)]
    attach_roles: Vec<String>,
}

fn default_start_roles() -> Vec<String> {
    vec!["SKPD".into(), "KADIN".into(), "ADMIN".into()]
}

fn default_cancel_roles() -> Vec<String> {
    vec!["KADIN".into(), "ADMIN".into()]
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            start_roles: default_start_roles(),
            cancel_roles: default_cancel_roles(),
            attach_roles: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    text: Bilingual,
    roles: Vec<String>,
    #[serde(default)]
    inputs: Vec<Bilingual>,
    time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<Bilingual>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    yes: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    no: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    actions: Vec<RawAction>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    document: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on: Option<String>,
}

/// Checks a raw definition and builds the typed one.
pub(super) fn validate(
    file: &str,
    raw: RawDefinition,
) -> Result<ProcedureDefinition, DefinitionError> {
    let file_name = || file.to_owned();
    if raw.format != DEFINITION_FORMAT {
        return Err(DefinitionError::UnsupportedFormat {
            file: file_name(),
            found: raw.format,
            expected: DEFINITION_FORMAT,
        });
    }
    if !ProcedureCode::is_valid(&raw.code) {
        return Err(DefinitionError::InvalidCode {
            file: file_name(),
            code: raw.code,
        });
    }
    if raw.revision == 0 {
        return Err(DefinitionError::InvalidRevision { file: file_name() });
    }
    let empty = |field| DefinitionError::EmptyField {
        file: file_name(),
        field,
    };
    if raw.title.indonesian.trim().is_empty() {
        return Err(empty("title.id"));
    }
    if raw.title.english.trim().is_empty() {
        return Err(empty("title.en"));
    }
    if raw.sop_number.trim().is_empty() {
        return Err(empty("sop_number"));
    }
    if raw
        .label
        .as_deref()
        .is_some_and(|label| label.trim().is_empty())
    {
        return Err(empty("label"));
    }

    let policy_roles = |field: &'static str, roles: &[String]| {
        roles
            .iter()
            .map(|role| {
                role.parse::<Role>()
                    .map_err(|_| DefinitionError::UnknownPolicyRole {
                        file: file_name(),
                        field,
                        role: role.clone(),
                    })
            })
            .collect::<Result<Vec<Role>, _>>()
    };
    let policy = Policy {
        start_roles: policy_roles("start_roles", &raw.policy.start_roles)?,
        cancel_roles: policy_roles("cancel_roles", &raw.policy.cancel_roles)?,
        attach_roles: policy_roles("attach_roles", &raw.policy.attach_roles)?,
    };
    if policy.start_roles.is_empty() {
        return Err(DefinitionError::NoStartRoles { file: file_name() });
    }

    if raw.steps.is_empty() {
        return Err(DefinitionError::NoSteps { file: file_name() });
    }
    let mut numbers = BTreeSet::new();
    for step in &raw.steps {
        if step.number == 0 {
            return Err(DefinitionError::InvalidStepNumber {
                file: file_name(),
                step: 0,
            });
        }
        if !numbers.insert(step.number) {
            return Err(DefinitionError::DuplicateStep {
                file: file_name(),
                step: step.number,
            });
        }
    }
    let mut steps = raw
        .steps
        .iter()
        .map(|step| validate_step(file, step, &numbers))
        .collect::<Result<Vec<Step>, _>>()?;
    steps.sort_by_key(|step| step.number);

    let start = raw.start.unwrap_or_else(|| steps[0].number.0);
    if !numbers.contains(&start) {
        return Err(DefinitionError::UnknownStartStep {
            file: file_name(),
            start,
        });
    }
    check_graph(file, &steps, StepNumber(start))?;

    Ok(ProcedureDefinition {
        source: file.to_owned(),
        code: ProcedureCode(raw.code),
        label: raw.label,
        title: raw.title,
        sop_number: raw.sop_number,
        sop_revision_date: raw.sop_revision_date,
        revision: Revision(raw.revision),
        policy,
        start: StepNumber(start),
        steps,
    })
}

fn validate_step(
    file: &str,
    raw: &RawStep,
    numbers: &BTreeSet<u32>,
) -> Result<Step, DefinitionError> {
    let step = raw.number;
    let empty = |field| DefinitionError::EmptyStepField {
        file: file.to_owned(),
        step,
        field,
    };
    check_text(&raw.text, "text.id", "text.en").map_err(empty)?;
    for input in &raw.inputs {
        check_text(input, "inputs.id", "inputs.en").map_err(empty)?;
    }
    if let Some(output) = &raw.output {
        check_text(output, "output.id", "output.en").map_err(empty)?;
    }

    if raw.roles.is_empty() {
        return Err(DefinitionError::NoRoles {
            file: file.to_owned(),
            step,
        });
    }
    let mut roles = Vec::new();
    for text in &raw.roles {
        let role = text
            .parse::<Role>()
            .map_err(|_| DefinitionError::UnknownRole {
                file: file.to_owned(),
                step,
                role: text.clone(),
            })?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }

    let time_standard =
        raw.time
            .parse::<TimeStandard>()
            .map_err(|_| DefinitionError::InvalidTimeStandard {
                file: file.to_owned(),
                step,
                value: raw.time.clone(),
            })?;
    let time_from = match raw.time_from.as_deref() {
        None | Some("entered") => ClockStart::Entered,
        Some("first_document") => ClockStart::FirstDocument,
        Some(other) => {
            return Err(DefinitionError::InvalidClockStart {
                file: file.to_owned(),
                step,
                value: other.to_owned(),
            });
        }
    };

    let target =
        |field: &'static str, value: &toml::Value| parse_target(file, step, field, value, numbers);
    let misplaced = |field, kind| DefinitionError::MisplacedField {
        file: file.to_owned(),
        step,
        field,
        kind,
    };
    let flow = match raw.kind.as_deref() {
        None | Some("task") => {
            if raw.yes.is_some() {
                return Err(misplaced("yes", "task"));
            }
            if raw.no.is_some() {
                return Err(misplaced("no", "task"));
            }
            let next = raw.next.as_ref().ok_or(DefinitionError::MissingNext {
                file: file.to_owned(),
                step,
            })?;
            Flow::Task {
                next: target("next", next)?,
            }
        }
        Some("decision") => {
            if raw.next.is_some() {
                return Err(misplaced("next", "decision"));
            }
            let branch = |field: &'static str, value: &Option<toml::Value>| match value {
                Some(value) => target(field, value),
                None => Err(DefinitionError::MissingBranch {
                    file: file.to_owned(),
                    step,
                    branch: field,
                }),
            };
            Flow::Decision {
                yes: branch("yes", &raw.yes)?,
                no: branch("no", &raw.no)?,
            }
        }
        Some(other) => {
            return Err(DefinitionError::UnknownStepKind {
                file: file.to_owned(),
                step,
                kind: other.to_owned(),
            });
        }
    };

    let actions = raw
        .actions
        .iter()
        .map(|action| parse_action(file, step, action))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Step {
        number: StepNumber(step),
        text: raw.text.clone(),
        roles,
        inputs: raw.inputs.clone(),
        time_standard,
        time_from,
        output: raw.output.clone(),
        flow,
        actions,
    })
}

/// Both languages must be present; returns the key of the empty one.
fn check_text(
    text: &Bilingual,
    indonesian: &'static str,
    english: &'static str,
) -> Result<(), &'static str> {
    if text.indonesian.trim().is_empty() {
        Err(indonesian)
    } else if text.english.trim().is_empty() {
        Err(english)
    } else {
        Ok(())
    }
}

fn parse_target(
    file: &str,
    step: u32,
    field: &'static str,
    value: &toml::Value,
    numbers: &BTreeSet<u32>,
) -> Result<Target, DefinitionError> {
    let invalid = || DefinitionError::InvalidTarget {
        file: file.to_owned(),
        step,
        field,
        value: value.to_string(),
    };
    let target = match value {
        toml::Value::Integer(number) => {
            let number = u32::try_from(*number).map_err(|_| invalid())?;
            if number == step {
                return Err(DefinitionError::SelfTarget {
                    file: file.to_owned(),
                    step,
                    field,
                });
            }
            if !numbers.contains(&number) {
                return Err(DefinitionError::UnknownTarget {
                    file: file.to_owned(),
                    step,
                    field,
                    target: number,
                });
            }
            Target::Step(StepNumber(number))
        }
        toml::Value::String(text) if text == "end" => Target::End(Outcome::Completed),
        toml::Value::Table(table) if table.len() == 1 => {
            let outcome = match table.get("end").and_then(toml::Value::as_str) {
                Some("completed") => Outcome::Completed,
                Some("rejected") => Outcome::Rejected,
                Some("capacity_unavailable") => Outcome::CapacityUnavailable,
                // `cancelled` is reserved for the cancel event.
                _ => return Err(invalid()),
            };
            Target::End(outcome)
        }
        _ => return Err(invalid()),
    };
    Ok(target)
}

fn parse_action(file: &str, step: u32, raw: &RawAction) -> Result<ActionBinding, DefinitionError> {
    let on = match raw.on.as_deref() {
        None | Some("enter") => Trigger::Enter,
        Some("complete") => Trigger::Complete,
        Some(other) => {
            return Err(DefinitionError::UnknownTrigger {
                file: file.to_owned(),
                step,
                on: other.to_owned(),
            });
        }
    };
    let document_error = |message| DefinitionError::ActionDocument {
        file: file.to_owned(),
        step,
        message,
    };
    let action = match raw.action.as_str() {
        "render_document" => {
            let code = raw.document.as_deref().ok_or_else(|| {
                document_error("action render_document needs `document` (the document kind)")
            })?;
            let document = DocumentKind::from_code(code).ok_or_else(|| {
                DefinitionError::UnknownDocumentKind {
                    file: file.to_owned(),
                    step,
                    document: code.to_owned(),
                }
            })?;
            return Ok(ActionBinding {
                on,
                action: SystemAction::RenderDocument { document },
            });
        }
        "capacity_check" => SystemAction::CapacityCheck,
        "update_asset_register" => SystemAction::UpdateAssetRegister,
        "start_backup_plan" => SystemAction::StartBackupPlan,
        "stop_backup_plan" => SystemAction::StopBackupPlan,
        "run_restore" => SystemAction::RunRestore,
        "verify_restore" => SystemAction::VerifyRestore,
        "fallback_restore" => SystemAction::FallbackRestore,
        other => {
            return Err(DefinitionError::UnknownAction {
                file: file.to_owned(),
                step,
                action: other.to_owned(),
            });
        }
    };
    if raw.document.is_some() {
        return Err(document_error(
            "`document` is only allowed on action render_document",
        ));
    }
    Ok(ActionBinding { on, action })
}

/// Every step must be reachable from the start, and from every step some path must reach
/// an end; otherwise a request could never get there or never finish.
fn check_graph(file: &str, steps: &[Step], start: StepNumber) -> Result<(), DefinitionError> {
    let successors: BTreeMap<StepNumber, Vec<StepNumber>> = steps
        .iter()
        .map(|step| {
            let next = step
                .flow
                .targets()
                .into_iter()
                .filter_map(|target| match target {
                    Target::Step(number) => Some(number),
                    Target::End(_) => None,
                })
                .collect();
            (step.number, next)
        })
        .collect();

    let mut reached = BTreeSet::from([start]);
    let mut queue = vec![start];
    while let Some(number) = queue.pop() {
        for next in &successors[&number] {
            if reached.insert(*next) {
                queue.push(*next);
            }
        }
    }
    if let Some(step) = steps.iter().find(|step| !reached.contains(&step.number)) {
        return Err(DefinitionError::Unreachable {
            file: file.to_owned(),
            step: step.number.0,
            start: start.0,
        });
    }

    // Fixed point: a step can finish if one of its targets is an end or a step that can.
    let mut can_finish: BTreeSet<StepNumber> = BTreeSet::new();
    loop {
        let before = can_finish.len();
        for step in steps {
            let finishes = step.flow.targets().iter().any(|target| match target {
                Target::End(_) => true,
                Target::Step(number) => can_finish.contains(number),
            });
            if finishes {
                can_finish.insert(step.number);
            }
        }
        if can_finish.len() == before {
            break;
        }
    }
    if let Some(step) = steps.iter().find(|step| !can_finish.contains(&step.number)) {
        return Err(DefinitionError::NoWayToEnd {
            file: file.to_owned(),
            step: step.number.0,
        });
    }
    Ok(())
}

impl TryFrom<RawDefinition> for ProcedureDefinition {
    type Error = DefinitionError;

    /// Validates a deserialized definition; errors name the file `<serialized>`.
    fn try_from(raw: RawDefinition) -> Result<Self, Self::Error> {
        validate("<serialized>", raw)
    }
}

impl From<ProcedureDefinition> for RawDefinition {
    fn from(definition: ProcedureDefinition) -> Self {
        let roles = |roles: &[Role]| roles.iter().map(|role| role.code().to_owned()).collect();
        let target = |target: Target| match target {
            Target::Step(number) => toml::Value::Integer(i64::from(number.0)),
            Target::End(Outcome::Completed) => toml::Value::String("end".to_owned()),
            Target::End(outcome) => {
                let mut table = toml::Table::new();
                table.insert(
                    "end".to_owned(),
                    toml::Value::String(outcome.code().to_owned()),
                );
                toml::Value::Table(table)
            }
        };
        let steps = definition
            .steps
            .iter()
            .map(|step| {
                let (kind, next, yes, no) = match step.flow {
                    Flow::Task { next } => (None, Some(target(next)), None, None),
                    Flow::Decision { yes, no } => (
                        Some("decision".to_owned()),
                        None,
                        Some(target(yes)),
                        Some(target(no)),
                    ),
                };
                RawStep {
                    number: step.number.0,
                    kind,
                    text: step.text.clone(),
                    roles: roles(&step.roles),
                    inputs: step.inputs.clone(),
                    time: step.time_standard.to_string(),
                    time_from: match step.time_from {
                        ClockStart::Entered => None,
                        ClockStart::FirstDocument => Some("first_document".to_owned()),
                    },
                    output: step.output.clone(),
                    next,
                    yes,
                    no,
                    actions: step
                        .actions
                        .iter()
                        .map(|binding| RawAction {
                            action: binding.action.code().to_owned(),
                            document: match binding.action {
                                SystemAction::RenderDocument { document } => {
                                    Some(document.code().to_owned())
                                }
                                _ => None,
                            },
                            on: Some(
                                match binding.on {
                                    Trigger::Enter => "enter",
                                    Trigger::Complete => "complete",
                                }
                                .to_owned(),
                            ),
                        })
                        .collect(),
                }
            })
            .collect();
        RawDefinition {
            format: DEFINITION_FORMAT,
            code: definition.code.0,
            label: definition.label,
            title: definition.title,
            sop_number: definition.sop_number,
            sop_revision_date: definition.sop_revision_date,
            revision: definition.revision.0,
            start: Some(definition.start.0),
            policy: RawPolicy {
                start_roles: roles(&definition.policy.start_roles),
                cancel_roles: roles(&definition.policy.cancel_roles),
                attach_roles: roles(&definition.policy.attach_roles),
            },
            steps,
        }
    }
}
