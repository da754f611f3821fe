//! The typed, validated form of a procedure definition (`config/sop/*.toml`).
//!
//! Definitions are only built by [`ProcedureDefinition::from_toml`] (or by deserializing
//! their serialized form, which goes through the same validation), so a definition in hand
//! is always consistent: step numbers are unique, every branch target exists, every step
//! can reach an end.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::load::{self, RawDefinition};
use super::{ClockStart, DefinitionError, Role, TimeStandard};

/// The code of a procedure, e.g. `colocation_handover`: lower-case ASCII letters, digits
/// and `_`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProcedureCode(pub String);

impl ProcedureCode {
    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the text is a well-formed code.
    pub fn is_valid(code: &str) -> bool {
        code.starts_with(|c: char| c.is_ascii_lowercase())
            && code
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }
}

impl fmt::Display for ProcedureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ProcedureCode {
    fn from(code: &str) -> Self {
        ProcedureCode(code.to_owned())
    }
}

/// The revision of a procedure definition, counted by us from 1. A request keeps the
/// revision it was started under until it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub u32);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// The number of a step within its procedure (the SOP's *No* column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepNumber(pub u32);

impl fmt::Display for StepNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A text in Indonesian (as users see it on forms and in the SOP) and English. Written
/// `{ id = "…", en = "…" }` in the files (ISO 639-1 language codes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bilingual {
    /// Indonesian, verbatim from the SOP where the SOP has it.
    #[serde(rename = "id")]
    pub indonesian: String,
    /// English.
    #[serde(rename = "en")]
    pub english: String,
}

impl Bilingual {
    /// A text from its Indonesian and English forms.
    pub fn new(indonesian: impl Into<String>, english: impl Into<String>) -> Self {
        Bilingual {
            indonesian: indonesian.into(),
            english: english.into(),
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The procedure ran to its regular end.
    Completed,
    /// A decision refused the request (A5, C3, the withdrawal's approval).
    Rejected,
    /// The infrastructure had no room (A4 "no" → A8).
    CapacityUnavailable,
    /// Cancelled by someone allowed to; never a branch target.
    Cancelled,
}

impl Outcome {
    /// The code used in files and JSON.
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Rejected => "rejected",
            Outcome::CapacityUnavailable => "capacity_unavailable",
            Outcome::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Where a step leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// To another step of the same procedure.
    Step(StepNumber),
    /// To the end of the request, with this outcome.
    End(Outcome),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Step(step) => write!(f, "step {step}"),
            Target::End(outcome) => write!(f, "end ({outcome})"),
        }
    }
}

/// A yes/no answer to a decision step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// *Ya*.
    Yes,
    /// *Tidak*.
    No,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Answer::Yes => "yes",
            Answer::No => "no",
        })
    }
}

/// What kind of step this is and where it leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// A step that is done and then leads on.
    Task {
        /// Where the request goes when the step is completed.
        next: Target,
    },
    /// A question answered yes or no, with a reason.
    Decision {
        /// Where "yes" leads.
        yes: Target,
        /// Where "no" leads.
        no: Target,
    },
}

impl Flow {
    /// Every target of this step.
    pub fn targets(&self) -> Vec<Target> {
        match *self {
            Flow::Task { next } => vec![next],
            Flow::Decision { yes, no } => vec![yes, no],
        }
    }

    /// Whether this is a decision step.
    pub fn is_decision(&self) -> bool {
        matches!(self, Flow::Decision { .. })
    }
}

/// A document the system can render (the SOP's forms and letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    /// Form 1, Formulir Pengajuan Colocation.
    ApplicationForm,
    /// Form 2, Formulir Persetujuan Colocation.
    ApprovalForm,
    /// Form 3, Formulir Serah Terima Colocation (with the handover minutes).
    HandoverForm,
    /// Form 4, the withdrawal form (permohonan penarikan colocation).
    WithdrawalForm,
    /// Letter to the agency: the request is approved (A6).
    LetterRequestApproved,
    /// Letter to the agency: infrastructure capacity is not available (A8).
    LetterCapacityUnavailable,
    /// Letter to the agency: the backup has been stopped (B8).
    LetterBackupStopped,
    /// Letter to the agency: the result of the restore (C7).
    LetterRestoreResult,
    /// Letter to the agency: the withdrawal was carried out.
    LetterWithdrawalDone,
    /// Letter to the agency: the withdrawal was refused, with the considerations.
    LetterWithdrawalRejected,
    /// The record of a maintenance request and what was done (record #2 of the SOP).
    MaintenanceReport,
    /// The restore execution form (C7): the approved plan, every attempt and its
    /// verification, the fallback steps and the times.
    RestoreExecutionForm,
}

impl DocumentKind {
    /// Every document kind.
    pub const ALL: [DocumentKind; 12] = [
        DocumentKind::ApplicationForm,
        DocumentKind::ApprovalForm,
        DocumentKind::HandoverForm,
        DocumentKind::WithdrawalForm,
        DocumentKind::LetterRequestApproved,
        DocumentKind::LetterCapacityUnavailable,
        DocumentKind::LetterBackupStopped,
        DocumentKind::LetterRestoreResult,
        DocumentKind::LetterWithdrawalDone,
        DocumentKind::LetterWithdrawalRejected,
        DocumentKind::MaintenanceReport,
        DocumentKind::RestoreExecutionForm,
    ];

    /// The code used in files and JSON.
    pub fn code(self) -> &'static str {
        match self {
            DocumentKind::ApplicationForm => "application_form",
            DocumentKind::ApprovalForm => "approval_form",
            DocumentKind::HandoverForm => "handover_form",
            DocumentKind::WithdrawalForm => "withdrawal_form",
            DocumentKind::LetterRequestApproved => "letter_request_approved",
            DocumentKind::LetterCapacityUnavailable => "letter_capacity_unavailable",
            DocumentKind::LetterBackupStopped => "letter_backup_stopped",
            DocumentKind::LetterRestoreResult => "letter_restore_result",
            DocumentKind::LetterWithdrawalDone => "letter_withdrawal_done",
            DocumentKind::LetterWithdrawalRejected => "letter_withdrawal_rejected",
            DocumentKind::MaintenanceReport => "maintenance_report",
            DocumentKind::RestoreExecutionForm => "restore_execution_form",
        }
    }

    /// The document kind with this code.
    pub fn from_code(code: &str) -> Option<Self> {
        DocumentKind::ALL
            .into_iter()
            .find(|kind| kind.code() == code)
    }
}

impl fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Work the system does for a step. The workflow only names it; the application layer
/// runs it (capacity, asset register and documents in the catalog issue; backup plans and
/// restores in the scheduler and restore issues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SystemAction {
    /// Compute free rack units, power headroom and bandwidth for the request (A3) and
    /// propose the A4 decision.
    CapacityCheck,
    /// Compare declared and observed server specification and update the asset register
    /// (A7, withdrawal).
    UpdateAssetRegister,
    /// Start (B3) or continue on its schedule (B5) the request's backup plan.
    StartBackupPlan,
    /// Stop the request's backup plan (B7).
    StopBackupPlan,
    /// Restore the backup data (C4).
    RunRestore,
    /// Verify the restored data and propose the C5 decision.
    VerifyRestore,
    /// Carry out the recovery steps planned earlier (C6).
    FallbackRestore,
    /// Render a form or letter.
    RenderDocument {
        /// Which document.
        document: DocumentKind,
    },
}

impl SystemAction {
    /// The code used in files and JSON.
    pub fn code(self) -> &'static str {
        match self {
            SystemAction::CapacityCheck => "capacity_check",
            SystemAction::UpdateAssetRegister => "update_asset_register",
            SystemAction::StartBackupPlan => "start_backup_plan",
            SystemAction::StopBackupPlan => "stop_backup_plan",
            SystemAction::RunRestore => "run_restore",
            SystemAction::VerifyRestore => "verify_restore",
            SystemAction::FallbackRestore => "fallback_restore",
            SystemAction::RenderDocument { .. } => "render_document",
        }
    }
}

/// When a bound action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// When the request enters the step: the system's work is what the step waits for
    /// (a restore runs while C4 is open; a letter is drafted for signature).
    #[default]
    Enter,
    /// When the step is completed or decided: the action needs what the step recorded
    /// (the observed specification at A7, the decision at A5).
    Complete,
}

/// A system action bound to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActionBinding {
    /// When it runs.
    pub on: Trigger,
    /// What runs.
    #[serde(flatten)]
    pub action: SystemAction,
}

/// Who may do what outside the steps themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Roles that may open a request.
    pub start_roles: Vec<Role>,
    /// Roles that may cancel a request in progress.
    pub cancel_roles: Vec<Role>,
    /// Roles that may attach documents to the current step besides the step's own roles
    /// (e.g. the administration staff scanning an incoming letter).
    pub attach_roles: Vec<Role>,
}

/// One step of a procedure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Its number.
    pub number: StepNumber,
    /// What is done (*uraian prosedur*).
    pub text: Bilingual,
    /// Who may do it (*pelaksana*); any one of them suffices.
    pub roles: Vec<Role>,
    /// Documents handed in (*penyerahan kelengkapan*).
    pub inputs: Vec<Bilingual>,
    /// How long it may take (*waktu*).
    pub time_standard: TimeStandard,
    /// When that time starts to run.
    pub time_from: ClockStart,
    /// The document it produces (*output*), if any.
    pub output: Option<Bilingual>,
    /// Task or decision, and where it leads.
    pub flow: Flow,
    /// System actions bound to it.
    pub actions: Vec<ActionBinding>,
}

impl Step {
    /// The actions bound to this step with this trigger, in file order.
    pub fn actions_on(&self, trigger: Trigger) -> impl Iterator<Item = SystemAction> + '_ {
        self.actions
            .iter()
            .filter(move |binding| binding.on == trigger)
            .map(|binding| binding.action)
    }
}

/// A validated procedure definition: one procedure of the SOP at one revision.
///
/// Serializes to the same shape as its TOML file, and deserializing validates again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RawDefinition", try_from = "RawDefinition")]
pub struct ProcedureDefinition {
    pub(super) source: String,
    pub(super) code: ProcedureCode,
    pub(super) label: Option<String>,
    pub(super) title: Bilingual,
    pub(super) sop_number: String,
    pub(super) sop_revision_date: NaiveDate,
    pub(super) revision: Revision,
    pub(super) policy: Policy,
    pub(super) start: StepNumber,
    /// Sorted by number.
    pub(super) steps: Vec<Step>,
}

impl ProcedureDefinition {
    /// Parses and validates a definition. `source` names it in errors (the file name).
    ///
    /// # Errors
    /// [`DefinitionError`] naming `source` and, where there is one, the step: TOML syntax
    /// or unknown fields, unsupported format, bad code or revision, empty texts, duplicate
    /// step numbers, unknown roles, actions or document kinds, bad time standards, missing
    /// `next` or branches, targets that do not exist, unreachable steps, steps that cannot
    /// reach an end.
    pub fn from_toml(source: &str, text: &str) -> Result<Self, DefinitionError> {
        let raw: RawDefinition = toml::from_str(text).map_err(|error| DefinitionError::Syntax {
            file: source.to_owned(),
            message: error.to_string(),
        })?;
        load::validate(source, raw)
    }

    /// The name it was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The procedure's code.
    pub fn code(&self) -> &ProcedureCode {
        &self.code
    }

    /// The SOP's letter for the procedure ("A", "B", "C"), where it has one.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// The procedure's title.
    pub fn title(&self) -> &Bilingual {
        &self.title
    }

    /// The SOP's number (*Nomor SOP*), e.g. `067/798`.
    pub fn sop_number(&self) -> &str {
        &self.sop_number
    }

    /// The SOP's revision date (*Tanggal Revisi*).
    pub fn sop_revision_date(&self) -> NaiveDate {
        self.sop_revision_date
    }

    /// This definition's revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The registry key: procedure code and revision.
    pub fn key(&self) -> (ProcedureCode, Revision) {
        (self.code.clone(), self.revision)
    }

    /// Who may start, cancel and attach.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The step a request starts at.
    pub fn start_step(&self) -> StepNumber {
        self.start
    }

    /// All steps, by number.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The step with this number.
    pub fn step(&self, number: StepNumber) -> Option<&Step> {
        self.steps
            .binary_search_by_key(&number, |step| step.number)
            .ok()
            .map(|index| &self.steps[index])
    }
}
