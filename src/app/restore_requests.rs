//! Restore requests carried out (procedure C): the restore plan written at C2 and
//! approved as written at C3, the restore run at C4, the verdict of C5 taken from the
//! verification, and the fallback chain of C6 tried in order until a restore verifies or
//! the chain is exhausted.
//!
//! The system carries steps 4 to 6 itself, through the same workflow events an officer
//! would submit (acting as `system:{worker}` in the step's role), so the request's
//! history and audit trail show each attempt, its verification and each step's end. The
//! order of attempts is a pure function of the plan and what happened so far
//! ([`next_attempt`]); the daemon only carries out what it returns.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{App, AppError, Caller, Work};
use crate::catalog::{
    NewRestore, PendingStatus, PlanId, RequestFilter, RequestId, RestorePlanRecord, RestoreRecord,
    ServerId,
};
use crate::workflow::{
    Answer, Event, Flow, ProcedureDefinition, Role, StepNumber, SystemAction, Target,
};

/// Longest check command (arguments together).
const MAX_CHECK_LEN: usize = 4096;
/// Longest a check may run.
const MAX_CHECK_SECS: u64 = 3600;
/// Failed files named in a step's reason (the full list is in the verification report).
const REASON_FILES: usize = 5;

/// A restore plan (C2): what is restored, where, how success is judged, and what is
/// tried when it is not reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestorePlan {
    /// The server whose backups are restored.
    pub server: ServerId,
    /// A plan on an existing restic repository whose snapshots are restored, instead of
    /// the server's snapshots in the agency's cadang repository (`server` then names
    /// whose data it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_plan: Option<PlanId>,
    /// `latest`, a snapshot id (at least 4 hex digits), or `as-of:` followed by an
    /// RFC 3339 time (the newest snapshot taken at or before it).
    #[serde(default = "latest")]
    pub snapshot: String,
    /// Only these paths (absolute, as backed up); empty for everything.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Left out, with what is below them: patterns in a backup plan's exclude syntax
    /// (without `/` a name anywhere, with `/` a path from the snapshot's root).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// What becomes of files already in the target directory (`always` when not
    /// given: replaced, unless the agent finds the snapshot's content there).
    #[serde(default, skip_serializing_if = "is_always")]
    pub overwrite: crate::engine::restore::Overwrite,
    /// Also delete from the target what the snapshot does not hold, at or below the
    /// snapshot's backed-up paths: approved with the plan, like everything it does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
    /// Where the files go.
    pub target: RestoreTarget,
    /// A command run on the target after every file verified (no shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckCommand>,
    /// What C6 tries, in order, when the restore does not verify.
    #[serde(default)]
    pub fallback: Vec<FallbackStep>,
}

fn latest() -> String {
    "latest".to_owned()
}

fn is_always(overwrite: &crate::engine::restore::Overwrite) -> bool {
    *overwrite == crate::engine::restore::Overwrite::Always
}

/// A server of the agency (through its agent) and a directory on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTarget {
    /// The server (the source itself for a restore in place).
    pub server: ServerId,
    /// Absolute directory (`/` restores in place).
    pub dir: String,
}

/// The check run on the target after the restore, such as `pg_isready -h 127.0.0.1`
/// or `curl -fsS http://127.0.0.1/health`: success is exit status 0 within the timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckCommand {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Seconds before it is killed and counted as failed.
    #[serde(default = "sixty")]
    pub timeout_secs: u64,
}

fn sixty() -> u64 {
    60
}

/// One step of the fallback chain (C6). Each step keeps what the steps before it
/// changed: after `replica`, later attempts also read damaged chunks from the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
pub enum FallbackStep {
    /// Restore again, reading chunks damaged in the primary repository from the
    /// agency's replica; for a plan on a restic repository, restore the same snapshot
    /// from the plan's restic replica instead (restic cannot mix two repositories).
    Replica,
    /// Restore the snapshot before the one planned; it returns older data, so it waits
    /// for the approving role's confirmation.
    PreviousSnapshot,
    /// Restore to another server of the agency or another directory.
    AlternateTarget {
        /// The alternate target.
        server: ServerId,
        /// Absolute directory on it.
        dir: String,
    },
}

impl FallbackStep {
    /// The attempt label recorded with the restore.
    pub fn label(&self) -> &'static str {
        match self {
            FallbackStep::Replica => "replica",
            FallbackStep::PreviousSnapshot => "previous_snapshot",
            FallbackStep::AlternateTarget { .. } => "alternate_target",
        }
    }
}

fn check_dir(dir: &str, what: &str) -> Result<String, AppError> {
    let dir = dir.trim();
    if !dir.starts_with('/')
        || dir.split('/').any(|part| part == "..")
        || dir.len() > 4096
        || dir.contains('\0')
    {
        return Err(AppError::invalid(format!(
            "{what} must be an absolute directory without `..`"
        )));
    }
    Ok(dir.to_owned())
}

impl RestorePlan {
    /// Checks and normalises the plan (servers are checked against the catalog by the
    /// caller).
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] naming what is wrong.
    pub fn validate(mut self) -> Result<Self, AppError> {
        let snapshot = self.snapshot.trim();
        self.snapshot = if snapshot.is_empty() {
            latest()
        } else if let Some(time) = snapshot.strip_prefix("as-of:") {
            let time = DateTime::parse_from_rfc3339(time.trim()).map_err(|error| {
                AppError::invalid(format!(
                    "`{snapshot}`: the time after `as-of:` is RFC 3339, such as 2026-11-01T02:00:00+07:00 ({error})"
                ))
            })?;
            format!("as-of:{}", time.with_timezone(&Utc).to_rfc3339())
        } else if snapshot == "latest"
            || ((4..=64).contains(&snapshot.len())
                && snapshot.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            snapshot.to_ascii_lowercase()
        } else {
            return Err(AppError::invalid(
                "the snapshot is `latest`, an id (at least 4 hex digits) or `as-of:TIME`",
            ));
        };
        for path in &self.paths {
            if !path.starts_with('/') || path.split('/').any(|part| part == "..") {
                return Err(AppError::invalid(format!(
                    "`{path}`: restore paths are absolute paths as backed up, without `..`"
                )));
            }
        }
        super::plans::check_excludes(&self.excludes)?;
        self.target.dir = check_dir(&self.target.dir, "the target directory")?;
        if let Some(check) = &mut self.check {
            check.command.retain(|arg| !arg.is_empty());
            if check.command.is_empty() {
                return Err(AppError::invalid("the check command is empty"));
            }
            if check.command.iter().map(String::len).sum::<usize>() > MAX_CHECK_LEN
                || check.command.iter().any(|arg| arg.contains('\0'))
            {
                return Err(AppError::invalid(format!(
                    "the check command is longer than {MAX_CHECK_LEN} bytes or holds a NUL"
                )));
            }
            if !(1..=MAX_CHECK_SECS).contains(&check.timeout_secs) {
                return Err(AppError::invalid(format!(
                    "the check's timeout is 1–{MAX_CHECK_SECS} seconds"
                )));
            }
        }
        let mut seen = Vec::new();
        for step in &mut self.fallback {
            if seen.contains(&step.label()) {
                return Err(AppError::invalid(format!(
                    "the fallback chain names `{}` twice",
                    step.label()
                )));
            }
            seen.push(step.label());
            if let FallbackStep::AlternateTarget { dir, .. } = step {
                *dir = check_dir(dir, "the alternate target's directory")?;
            }
        }
        Ok(self)
    }

    /// Every server the plan names.
    pub fn servers(&self) -> Vec<ServerId> {
        let mut servers = vec![self.server, self.target.server];
        for step in &self.fallback {
            if let FallbackStep::AlternateTarget { server, .. } = step {
                servers.push(*server);
            }
        }
        servers
    }
}

/// One restore to carry out for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// `primary` or the fallback step's label.
    pub label: &'static str,
    /// The snapshot spec the restore resolves (`latest`, an id, `as-of:T`, `before:…`).
    pub snapshot: String,
    /// Target server.
    pub server: ServerId,
    /// Target directory.
    pub dir: String,
    /// Read damaged chunks from the replica.
    pub use_replica: bool,
}

/// What a request's restore needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Start this attempt.
    Start(Attempt),
    /// The last attempt is still queued or running.
    Wait,
    /// The next step restores an older snapshot: it waits for the approving role.
    AwaitConfirmation,
    /// The attempt at this position verified.
    Passed(usize),
    /// Every step was tried and none verified.
    Exhausted,
}

/// How a finished restore is judged (C5): every file verified and, when the plan has
/// one, the check passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the restore succeeded.
    pub passed: bool,
    /// One line for the step's reason.
    pub summary: String,
    /// The facts: files verified and failed (with the list), the check's output.
    pub report: serde_json::Value,
}

fn finished(record: &RestoreRecord) -> bool {
    !matches!(record.status.as_str(), "queued" | "running")
}

/// Judges a finished restore from its record.
pub fn judge(record: &RestoreRecord) -> Verdict {
    let stats: serde_json::Value = record
        .stats_json
        .as_deref()
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or(serde_json::Value::Null);
    let verified = stats["files_verified"].as_u64().unwrap_or(0);
    let failed_count = stats["files_failed"].as_u64().unwrap_or(0);
    let failed = stats["failed"].clone();
    let check = stats.get("check").cloned();
    let check_passed = check
        .as_ref()
        .is_none_or(|check| check["passed"].as_bool() == Some(true));
    let files_ok = record.status == "ok" && failed_count == 0;
    let passed = files_ok && check_passed;
    let mut summary = format!("restore {} ({}): ", record.id, record.status);
    if files_ok {
        summary.push_str(&format!(
            "all {verified} file(s) verified against the snapshot"
        ));
    } else if record.status == "verify_differences" || failed_count > 0 {
        let names: Vec<&str> = failed
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|item| item["path"].as_str())
                    .take(REASON_FILES)
                    .collect()
            })
            .unwrap_or_default();
        summary.push_str(&format!(
            "{failed_count} file(s) failed verification ({}{}), {verified} verified",
            names.join(", "),
            if failed_count as usize > names.len() {
                ", …"
            } else {
                ""
            }
        ));
    } else {
        summary.push_str(&format!(
            "did not complete: {}",
            record.error.as_deref().unwrap_or("no reason recorded")
        ));
    }
    if let Some(check) = &check {
        if check_passed {
            summary.push_str("; the check passed");
        } else if check["timed_out"].as_bool() == Some(true) {
            summary.push_str("; the check timed out");
        } else if let Some(code) = check["exit_code"].as_i64() {
            summary.push_str(&format!("; the check failed (exit status {code})"));
        } else {
            summary.push_str(&format!(
                "; the check failed: {}",
                check["error"].as_str().unwrap_or("no result")
            ));
        }
    }
    Verdict {
        passed,
        summary,
        report: serde_json::json!({
            "restore": record.id,
            "attempt": record.attempt,
            "status": record.status,
            "snapshot": record.snapshot,
            "target_server": record.target_server_id,
            "target_dir": record.target_dir,
            "use_replica": record.use_replica,
            "files_verified": verified,
            "files_failed": failed_count,
            "failed": failed,
            "repaired_from_replica": stats.get("repaired_from_replica"),
            "check": check,
            "error": record.error,
        }),
    }
}

/// The primary attempt (C4) of a plan.
pub fn primary_attempt(plan: &RestorePlan) -> Attempt {
    Attempt {
        label: "primary",
        snapshot: plan.snapshot.clone(),
        server: plan.target.server,
        dir: plan.target.dir.clone(),
        use_replica: false,
    }
}

/// What comes next in C6, given the attempts so far (the primary first) — pure, so the
/// order of the chain is tested without a daemon.
pub fn next_attempt(plan: &RestorePlan, attempts: &[RestoreRecord], older_confirmed: bool) -> Next {
    let Some(last) = attempts.last() else {
        return Next::Start(primary_attempt(plan));
    };
    if !finished(last) {
        return Next::Wait;
    }
    if let Some(position) = attempts.iter().position(|record| judge(record).passed) {
        return Next::Passed(position);
    }
    let tried = attempts.len() - 1;
    let Some(step) = plan.fallback.get(tried) else {
        return Next::Exhausted;
    };
    // Each step keeps what the steps before it changed.
    let mut attempt = primary_attempt(plan);
    let resolved = attempts[0].snapshot.clone();
    for earlier in &plan.fallback[..=tried] {
        match earlier {
            FallbackStep::Replica => attempt.use_replica = true,
            FallbackStep::PreviousSnapshot => {
                attempt.snapshot = format!("before:{resolved}");
            }
            FallbackStep::AlternateTarget { server, dir } => {
                attempt.server = *server;
                attempt.dir = dir.clone();
            }
        }
    }
    attempt.label = step.label();
    if *step == FallbackStep::PreviousSnapshot && !older_confirmed {
        return Next::AwaitConfirmation;
    }
    Next::Start(attempt)
}

/// The decision step whose "yes" lets a restore run (C3): it approves the plan.
pub fn approval_step(definition: &ProcedureDefinition) -> Option<StepNumber> {
    let run = step_with(definition, SystemAction::RunRestore)?;
    definition
        .steps()
        .iter()
        .find(
            |step| matches!(step.flow, Flow::Decision { yes: Target::Step(yes), .. } if yes == run),
        )
        .map(|step| step.number)
}

/// The step at which the plan is written (C2): the one leading to the approval.
pub fn plan_step(definition: &ProcedureDefinition) -> Option<StepNumber> {
    let approval = approval_step(definition)?;
    definition
        .steps()
        .iter()
        .find(
            |step| matches!(step.flow, Flow::Task { next: Target::Step(next) } if next == approval),
        )
        .map(|step| step.number)
}

fn step_with(definition: &ProcedureDefinition, action: SystemAction) -> Option<StepNumber> {
    definition
        .steps()
        .iter()
        .find(|step| step.actions.iter().any(|binding| binding.action == action))
        .map(|step| step.number)
}

fn decode_plan(record: &RestorePlanRecord) -> Result<RestorePlan, AppError> {
    serde_json::from_str(&record.plan_json).map_err(|error| {
        AppError::internal(format!(
            "restore plan {} of request {}: {error}",
            record.version, record.request_id
        ))
    })
}

/// Approves the request's plan as written (inside the C3 "yes" event).
pub(super) async fn approve_plan(work: &mut Work<'_>, request: RequestId) -> Result<(), AppError> {
    let Some(plan) = work.tx.restore_plan(request).await? else {
        return Err(AppError::Conflict(format!(
            "request {request} has no restore plan to approve: write it at step 2 with `cadang restore-request plan {request} …`"
        )));
    };
    let by = work.actor_name.clone();
    if work
        .tx
        .approve_restore_plan(request, plan.version, &by, work.now)
        .await?
    {
        work.audit("restore_plan.approve", "request", request).after = Some(serde_json::json!({
            "version": plan.version,
            "digest": plan.digest,
        }));
    }
    Ok(())
}

/// Keeps an officer's event from contradicting the system at the steps it carries out:
/// step 4 ends when the restore ends, step 5 is "yes" only when the restore verified,
/// step 6 ends when the fallback chain has run (or waits for a confirmation the officer
/// decides not to give). An officer may always answer step 5 "no" (the agency reports
/// the application broken although every file verified).
pub(super) async fn guard_officer_event(
    work: &mut Work<'_>,
    definition: &ProcedureDefinition,
    record: &crate::catalog::RequestRecord,
    event: &Event,
) -> Result<(), AppError> {
    let Some(step) = record
        .state
        .current_step()
        .and_then(|current| definition.step(current))
    else {
        return Ok(());
    };
    let Some(action) = step
        .actions
        .iter()
        .map(|binding| &binding.action)
        .find(|action| {
            matches!(
                action,
                SystemAction::RunRestore
                    | SystemAction::VerifyRestore
                    | SystemAction::FallbackRestore
            )
        })
    else {
        return Ok(());
    };
    let Some(plan_record) = work
        .tx
        .restore_plan(record.id)
        .await?
        .filter(|plan| plan.approved_at.is_some())
    else {
        return Ok(());
    };
    let plan = decode_plan(&plan_record)?;
    let attempts = work.tx.restores_of_request(record.id).await?;
    let request = record.id;
    match (action, event) {
        (SystemAction::RunRestore, Event::Complete { .. })
            if attempts.is_empty() || !attempts.iter().all(finished) =>
        {
            Err(AppError::Conflict(format!(
                "the restore of request {request} has not ended: step {} is completed by the system when it does (follow it with `cadang restore-request show {request} --wait`)",
                step.number
            )))
        }
        (
            SystemAction::VerifyRestore,
            Event::Decide {
                answer: Answer::Yes,
                ..
            },
        ) => match attempts.last().filter(|last| finished(last)).map(judge) {
            Some(verdict) if verdict.passed => Ok(()),
            Some(verdict) => Err(AppError::Conflict(format!(
                "step {} cannot be answered yes: {}",
                step.number, verdict.summary
            ))),
            None => Err(AppError::Conflict(format!(
                "step {} cannot be answered yet: the restore of request {request} has not ended",
                step.number
            ))),
        },
        (SystemAction::FallbackRestore, Event::Complete { .. }) => {
            match next_attempt(&plan, &attempts, plan_record.older_confirmed_at.is_some()) {
                Next::Start(_) | Next::Wait => Err(AppError::Conflict(format!(
                    "the fallback chain of request {request} is still running: step {} is completed by the system when it ends",
                    step.number
                ))),
                Next::AwaitConfirmation | Next::Passed(_) | Next::Exhausted => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// Cancels the restores a request still has queued (the request was cancelled).
pub(super) async fn cancel_queued(work: &mut Work<'_>, request: RequestId) -> Result<(), AppError> {
    let now = work.now;
    for attempt in work.tx.restores_of_request(request).await? {
        if attempt.status == "queued"
            && work
                .tx
                .end_queued_restore(attempt.id, "cancelled", "the request was cancelled", now)
                .await?
        {
            work.audit("restore.cancel", "restore", attempt.id).after = Some(
                serde_json::json!({ "request": request, "reason": "the request was cancelled" }),
            );
        }
    }
    Ok(())
}

/// A restore request as its officers follow it: the plan, every attempt and where it
/// stands.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreRequestView {
    /// The request.
    pub request: RequestId,
    /// The newest plan version, if one was written.
    pub plan: Option<RestorePlanRecord>,
    /// The attempts, the primary first.
    pub attempts: Vec<RestoreRecord>,
    /// `planning`, `approved`, `running`, `verified`, `awaiting_confirmation`,
    /// `verify_differences`.
    pub state: String,
    /// The verdict of each finished attempt (JSON list).
    pub verdicts: Vec<Verdict>,
}

const PLAN_ADMIN: [Role; 1] = [Role::Admin];

impl App {
    /// Writes the restore plan of a request at C2 (a new version each time). Only while
    /// C2 is the current step, by the roles of that step (or ADMIN); every server it
    /// names must be the request's agency's, and every target needs an enrolled agent.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::Conflict`] outside C2 or for a target with
    /// no agent; [`AppError::InvalidInput`]; [`AppError::NotFound`].
    pub async fn set_restore_plan(
        &self,
        caller: &Caller,
        request: RequestId,
        plan: RestorePlan,
        now: DateTime<Utc>,
    ) -> Result<RestorePlanRecord, AppError> {
        let plan = plan.validate()?;
        let mut work = self.work(&caller.account.username, now).await?;
        let record = work.tx.request_for_update(request).await?;
        caller.check_agency(record.agency_id, &format!("request {request}"))?;
        let registry = self.registry();
        let definition = registry
            .for_request(&record.state)
            .map_err(|error| AppError::internal(error.to_string()))?;
        let Some(step) = plan_step(definition) else {
            return Err(AppError::invalid(format!(
                "request {request} does not run a restore procedure"
            )));
        };
        let roles: Vec<Role> = definition
            .step(step)
            .map(|s| s.roles.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(PLAN_ADMIN)
            .collect();
        work.require(&roles, "write restore plans")?;
        if record.state.current_step() != Some(step) {
            return Err(AppError::Conflict(format!(
                "the restore plan is written at step {step}; request {request} is {}",
                record
                    .state
                    .current_step()
                    .map_or_else(|| "finished".to_owned(), |s| format!("at step {s}"))
            )));
        }
        if let Some(source) = plan.backup_plan {
            super::plans::restic_source(&mut work.tx, source, record.agency_id).await?;
            if plan.delete {
                return Err(AppError::invalid(
                    crate::remote::restic::DELETE_NEEDS_CADANG,
                ));
            }
        }
        for server in plan.servers() {
            let found = work.tx.server(server).await?;
            if found.agency_id != record.agency_id {
                return Err(AppError::forbidden(format!(
                    "server {server} belongs to another agency than request {request}: a restore never crosses agencies"
                )));
            }
        }
        let mut targets = vec![plan.target.server];
        targets.extend(plan.fallback.iter().filter_map(|step| match step {
            FallbackStep::AlternateTarget { server, .. } => Some(*server),
            _ => None,
        }));
        let agents = work.tx.agents(Some(record.agency_id)).await?;
        for target in targets {
            if !agents.iter().any(|agent| {
                agent.server_id == Some(target)
                    && agent.enrolled_at.is_some()
                    && agent.revoked_at.is_none()
            }) {
                return Err(AppError::Conflict(format!(
                    "server {target} has no enrolled agent to restore to: enrol one with `cadang agent enroll-token {target}`"
                )));
            }
        }
        let plan_json =
            serde_json::to_string(&plan).map_err(|error| AppError::internal(error.to_string()))?;
        let digest = blake3::hash(plan_json.as_bytes()).to_hex().to_string();
        let username = caller.account.username.clone();
        let stored = work
            .tx
            .insert_restore_plan(request, &plan_json, &digest, &username, now)
            .await?;
        work.audit("restore_plan.set", "request", request).after = Some(serde_json::json!({
            "version": stored.version,
            "digest": digest,
            "plan": plan,
        }));
        work.commit().await?;
        Ok(stored)
    }

    /// Confirms that the fallback chain may restore an older snapshot than planned. By
    /// the roles that approve the plan (C3) or ADMIN, once the plan is approved.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::Conflict`] when there is nothing to confirm.
    pub async fn confirm_older_snapshot(
        &self,
        caller: &Caller,
        request: RequestId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<RestorePlanRecord, AppError> {
        let reason = super::required("the reason", reason)?;
        let mut work = self.work(&caller.account.username, now).await?;
        let record = work.tx.request_for_update(request).await?;
        caller.check_agency(record.agency_id, &format!("request {request}"))?;
        let registry = self.registry();
        let definition = registry
            .for_request(&record.state)
            .map_err(|error| AppError::internal(error.to_string()))?;
        let roles: Vec<Role> = approval_step(definition)
            .and_then(|step| definition.step(step))
            .map(|step| step.roles.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(PLAN_ADMIN)
            .collect();
        work.require(&roles, "confirm restoring an older snapshot")?;
        let plan =
            work.tx.restore_plan(request).await?.ok_or_else(|| {
                AppError::Conflict(format!("request {request} has no restore plan"))
            })?;
        if !decode_plan(&plan)?
            .fallback
            .contains(&FallbackStep::PreviousSnapshot)
        {
            return Err(AppError::Conflict(format!(
                "the restore plan of request {request} has no previous-snapshot step to confirm"
            )));
        }
        let by = caller.account.username.clone();
        if !work
            .tx
            .confirm_older_snapshot(request, plan.version, &by, now)
            .await?
        {
            return Err(AppError::Conflict(format!(
                "the restore plan of request {request} is not approved yet, or the older snapshot was already confirmed"
            )));
        }
        work.audit("restore_plan.confirm_older", "request", request)
            .after = Some(serde_json::json!({ "version": plan.version, "reason": reason }));
        work.commit().await?;
        latest_plan(self, request).await
    }

    /// A restore request's plan, attempts and state.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Forbidden`] for another agency's.
    pub async fn restore_request_for(
        &self,
        caller: &Caller,
        request: RequestId,
    ) -> Result<RestoreRequestView, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let record = tx.request(request).await?;
        caller.check_agency(record.agency_id, &format!("request {request}"))?;
        let plan = tx.restore_plan(request).await?;
        let attempts = tx.restores_of_request(request).await?;
        drop(tx);
        let verdicts: Vec<Verdict> = attempts
            .iter()
            .filter(|attempt| finished(attempt))
            .map(judge)
            .collect();
        let state = match &plan {
            None => "planning",
            Some(plan) if plan.approved_at.is_none() => "planning",
            Some(plan) => {
                let decoded = decode_plan(plan)?;
                match next_attempt(&decoded, &attempts, plan.older_confirmed_at.is_some()) {
                    _ if attempts.is_empty() => "approved",
                    Next::Wait => "running",
                    Next::Passed(_) => "verified",
                    Next::AwaitConfirmation => "awaiting_confirmation",
                    Next::Exhausted => "verify_differences",
                    Next::Start(_) => "running",
                }
            }
        };
        Ok(RestoreRequestView {
            request,
            plan,
            attempts,
            state: state.to_owned(),
            verdicts,
        })
    }

    /// Carries restore requests forward: starts the planned restore when C4 is entered,
    /// completes C4 when it ends, decides C5 from its verification, runs the fallback
    /// chain at C6 and completes it when an attempt verifies or the chain is exhausted.
    /// Returns how many steps or attempts moved.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn advance_restore_requests(
        &self,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<usize, AppError> {
        let registry = self.registry();
        let codes: Vec<String> = registry
            .iter()
            .filter(|definition| step_with(definition, SystemAction::RunRestore).is_some())
            .map(|definition| definition.code().to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        drop(registry);
        let mut moved = 0;
        for code in codes {
            let requests = {
                let mut tx = self.catalog().begin_read().await?;
                tx.list_requests(
                    &RequestFilter {
                        procedure: Some(code),
                        active: Some(true),
                        agency_id: None,
                    },
                    None,
                    500,
                )
                .await?
            };
            for summary in requests {
                // A request can move through several steps in one pass (C4 ends, C5 is
                // decided, C6 starts its first attempt).
                for _ in 0..4 {
                    match self.advance_one(worker, summary.id, now).await {
                        Ok(true) => moved += 1,
                        Ok(false) => break,
                        Err(error) => {
                            tracing::warn!(request = %summary.id, %error, "restore request not advanced");
                            break;
                        }
                    }
                }
            }
        }
        Ok(moved)
    }

    async fn advance_one(
        &self,
        worker: &str,
        request: RequestId,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let (record, plan, attempts) = {
            let mut tx = self.catalog().begin_read().await?;
            let record = tx.request(request).await?;
            let plan = tx.restore_plan(request).await?;
            let attempts = tx.restores_of_request(request).await?;
            (record, plan, attempts)
        };
        let registry = self.registry();
        let definition = registry
            .for_request(&record.state)
            .map_err(|error| AppError::internal(error.to_string()))?;
        let Some(current) = record.state.current_step() else {
            return Ok(false);
        };
        let Some(step) = definition.step(current) else {
            return Ok(false);
        };
        let action = step
            .actions
            .iter()
            .map(|binding| binding.action)
            .find(|action| {
                matches!(
                    action,
                    SystemAction::RunRestore
                        | SystemAction::VerifyRestore
                        | SystemAction::FallbackRestore
                )
            });
        let Some(action) = action else {
            return Ok(false);
        };
        drop(registry);
        let Some(plan_record) = plan.filter(|plan| plan.approved_at.is_some()) else {
            return Ok(false);
        };
        let plan = decode_plan(&plan_record)?;
        let confirmed = plan_record.older_confirmed_at.is_some();
        match action {
            SystemAction::RunRestore => {
                if attempts.is_empty() {
                    let attempt = primary_attempt(&plan);
                    self.start_attempt(worker, &record, &plan, &attempt, 0, now)
                        .await?;
                    return Ok(true);
                }
                if attempts.iter().all(finished) {
                    self.submit_as_system(worker, request, Event::complete(current.0), now)
                        .await?;
                    return Ok(true);
                }
                Ok(false)
            }
            SystemAction::VerifyRestore => {
                let Some(last) = attempts.last().filter(|last| finished(last)) else {
                    return Ok(false);
                };
                let verdict = judge(last);
                self.settle_action(worker, request, "verify_restore", &verdict.report, now)
                    .await?;
                let answer = if verdict.passed {
                    Answer::Yes
                } else {
                    Answer::No
                };
                self.submit_as_system(
                    worker,
                    request,
                    Event::decide(current.0, answer, verdict.summary),
                    now,
                )
                .await?;
                Ok(true)
            }
            SystemAction::FallbackRestore => match next_attempt(&plan, &attempts, confirmed) {
                Next::Start(attempt) => {
                    self.start_attempt(worker, &record, &plan, &attempt, attempts.len(), now)
                        .await?;
                    Ok(true)
                }
                Next::Wait | Next::AwaitConfirmation => Ok(false),
                Next::Passed(position) => {
                    let verdict = judge(&attempts[position]);
                    let report = serde_json::json!({
                        "result": "verified",
                        "attempts": attempts.iter().map(|a| judge(a).report).collect::<Vec<_>>(),
                    });
                    self.settle_action(worker, request, "fallback_restore", &report, now)
                        .await?;
                    self.submit_as_system(worker, request, Event::complete(current.0), now)
                        .await?;
                    tracing::info!(%request, summary = %verdict.summary, "restore request recovered by its fallback chain");
                    Ok(true)
                }
                Next::Exhausted => {
                    let report = serde_json::json!({
                        "result": "verify_differences",
                        "attempts": attempts.iter().map(|a| judge(a).report).collect::<Vec<_>>(),
                    });
                    self.settle_action(worker, request, "fallback_restore", &report, now)
                        .await?;
                    self.submit_as_system(worker, request, Event::complete(current.0), now)
                        .await?;
                    tracing::warn!(%request, "restore request: the fallback chain is exhausted; the result is verify differences");
                    Ok(true)
                }
            },
            _ => Ok(false),
        }
    }

    async fn start_attempt(
        &self,
        worker: &str,
        record: &crate::catalog::RequestRecord,
        plan: &RestorePlan,
        attempt: &Attempt,
        tried: usize,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut work = self.system_work(&format!("system:{worker}"), now).await?;
        // Several daemons may look at the same request at once: under the request's lock,
        // only the one that still sees `tried` attempts starts the next.
        work.tx.request_for_update(record.id).await?;
        if work.tx.restores_of_request(record.id).await?.len() != tried {
            return Ok(());
        }
        let check_json = plan
            .check
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|error| AppError::internal(error.to_string()))?;
        let restore = work
            .tx
            .insert_restore(
                &NewRestore {
                    agency_id: record.agency_id,
                    server_id: plan.server,
                    target_server_id: attempt.server,
                    snapshot: attempt.snapshot.clone(),
                    paths_json: serde_json::to_string(&plan.paths)
                        .map_err(|error| AppError::internal(error.to_string()))?,
                    excludes_json: serde_json::to_string(&plan.excludes)
                        .map_err(|error| AppError::internal(error.to_string()))?,
                    overwrite: plan.overwrite.name().to_owned(),
                    delete: plan.delete,
                    dry_run: false,
                    target_dir: attempt.dir.clone(),
                    request_id: Some(record.id),
                    requested_by: work.actor_name.clone(),
                    attempt: Some(attempt.label.to_owned()),
                    use_replica: attempt.use_replica,
                    check_json,
                    plan_id: plan.backup_plan,
                },
                now,
            )
            .await?;
        work.audit("restore.start", "restore", restore.id).after = Some(serde_json::json!({
            "request": record.id,
            "attempt": attempt.label,
            "server": plan.server,
            "plan": plan.backup_plan,
            "target_server": attempt.server,
            "target_dir": attempt.dir,
            "snapshot": attempt.snapshot,
            "use_replica": attempt.use_replica,
            "delete": plan.delete,
        }));
        if tried == 0 {
            settle_in(
                &mut work,
                worker,
                record.id,
                "run_restore",
                &serde_json::json!({ "restore": restore.id }),
            )
            .await?;
        }
        work.commit().await
    }

    async fn settle_action(
        &self,
        worker: &str,
        request: RequestId,
        action: &str,
        report: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut work = self.system_work(&format!("system:{worker}"), now).await?;
        settle_in(&mut work, worker, request, action, report).await?;
        work.commit().await
    }
}

/// Marks the request's outstanding `action` entries done with `report`.
async fn settle_in(
    work: &mut Work<'_>,
    worker: &str,
    request: RequestId,
    action: &str,
    report: &serde_json::Value,
) -> Result<(), AppError> {
    for entry in work.tx.pending_actions_for_request(request).await? {
        if entry.action != action || entry.status != PendingStatus::Pending {
            continue;
        }
        if work
            .tx
            .claim_pending_action(entry.id, worker, work.now)
            .await?
        {
            work.tx
                .finish_pending_action(entry.id, PendingStatus::Done, &report.to_string(), work.now)
                .await?;
            work.audit("action.finish", "request", request).after = Some(serde_json::json!({
                "pending_action": entry.id,
                "status": PendingStatus::Done,
                "report": report,
            }));
        }
    }
    Ok(())
}

async fn latest_plan(app: &App, request: RequestId) -> Result<RestorePlanRecord, AppError> {
    let mut tx = app.catalog().begin_read().await?;
    tx.restore_plan(request)
        .await?
        .ok_or_else(|| AppError::internal(format!("request {request}: the plan vanished")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{AgencyId, RestoreId};

    fn plan(fallback: Vec<FallbackStep>) -> RestorePlan {
        RestorePlan {
            server: ServerId(1),
            backup_plan: None,
            snapshot: "latest".into(),
            paths: vec![],
            excludes: vec![],
            overwrite: crate::engine::restore::Overwrite::Always,
            delete: false,
            target: RestoreTarget {
                server: ServerId(1),
                dir: "/srv/restore".into(),
            },
            check: None,
            fallback,
        }
        .validate()
        .expect("valid plan")
    }

    fn attempt(id: i64, status: &str, failed: u64, check: Option<bool>) -> RestoreRecord {
        let mut stats = serde_json::json!({
            "files_verified": 10, "files_failed": failed,
            "failed": (0..failed).map(|n| serde_json::json!({"path": format!("/f{n}"), "reason": "differs"})).collect::<Vec<_>>(),
        });
        if let Some(passed) = check {
            stats["check"] =
                serde_json::json!({ "passed": passed, "exit_code": if passed { 0 } else { 1 } });
        }
        RestoreRecord {
            id: RestoreId(id),
            agency_id: AgencyId(1),
            server_id: ServerId(1),
            target_server_id: ServerId(1),
            snapshot: "ab".repeat(32),
            paths_json: "[]".into(),
            excludes_json: "[]".into(),
            overwrite: "always".into(),
            delete: false,
            dry_run: false,
            target_dir: "/srv/restore".into(),
            status: status.into(),
            request_id: Some(RequestId(1)),
            requested_by: "system:test".into(),
            queued_at: Utc::now(),
            started_at: None,
            finished_at: None,
            lease_owner: None,
            attempts: 1,
            stats_json: Some(stats.to_string()),
            error: None,
            attempt: Some("primary".into()),
            use_replica: false,
            check_json: None,
            plan_id: None,
        }
    }

    #[test]
    fn the_chain_runs_in_order_each_step_keeping_the_ones_before() {
        let alternate = FallbackStep::AlternateTarget {
            server: ServerId(2),
            dir: "/srv/other".into(),
        };
        let plan = plan(vec![
            FallbackStep::Replica,
            FallbackStep::PreviousSnapshot,
            alternate,
        ]);
        assert_eq!(
            next_attempt(&plan, &[], false),
            Next::Start(primary_attempt(&plan))
        );
        let mut attempts = vec![attempt(1, "running", 0, None)];
        assert_eq!(next_attempt(&plan, &attempts, false), Next::Wait);
        attempts[0] = attempt(1, "verify_differences", 2, None);
        let Next::Start(replica) = next_attempt(&plan, &attempts, false) else {
            panic!("the replica step comes first");
        };
        assert_eq!((replica.label, replica.use_replica), ("replica", true));
        assert_eq!(replica.snapshot, "latest");
        attempts.push(attempt(2, "verify_differences", 1, None));
        // The older snapshot waits for the approving role.
        assert_eq!(
            next_attempt(&plan, &attempts, false),
            Next::AwaitConfirmation
        );
        let Next::Start(older) = next_attempt(&plan, &attempts, true) else {
            panic!("confirmed, the previous snapshot is restored");
        };
        assert_eq!(older.label, "previous_snapshot");
        assert_eq!(older.snapshot, format!("before:{}", "ab".repeat(32)));
        assert!(
            older.use_replica,
            "later steps keep reading from the replica"
        );
        attempts.push(attempt(3, "failed", 0, None));
        let Next::Start(moved) = next_attempt(&plan, &attempts, true) else {
            panic!("the alternate target comes last");
        };
        assert_eq!(
            (moved.server, moved.dir.as_str()),
            (ServerId(2), "/srv/other")
        );
        assert!(moved.snapshot.starts_with("before:"));
        attempts.push(attempt(4, "verify_differences", 3, None));
        assert_eq!(next_attempt(&plan, &attempts, true), Next::Exhausted);
    }

    #[test]
    fn a_verified_attempt_ends_the_chain() {
        let plan = plan(vec![FallbackStep::Replica, FallbackStep::PreviousSnapshot]);
        let attempts = vec![
            attempt(1, "verify_differences", 1, None),
            attempt(2, "ok", 0, None),
        ];
        assert_eq!(next_attempt(&plan, &attempts, false), Next::Passed(1));
        assert_eq!(
            next_attempt(&plan, &[attempt(1, "failed", 0, None)][..], false),
            Next::Start(Attempt {
                label: "replica",
                snapshot: "latest".into(),
                server: ServerId(1),
                dir: "/srv/restore".into(),
                use_replica: true,
            })
        );
        assert_eq!(
            next_attempt(
                &self::plan(vec![]),
                &[attempt(1, "failed", 0, None)][..],
                false
            ),
            Next::Exhausted
        );
    }

    #[test]
    fn success_needs_every_file_verified_and_the_check_passed() {
        assert!(judge(&attempt(1, "ok", 0, None)).passed);
        assert!(judge(&attempt(1, "ok", 0, Some(true))).passed);
        let failed_check = judge(&attempt(1, "ok", 0, Some(false)));
        assert!(!failed_check.passed);
        assert!(
            failed_check.summary.contains("exit status 1"),
            "{}",
            failed_check.summary
        );
        let differences = judge(&attempt(1, "verify_differences", 7, None));
        assert!(!differences.passed);
        assert!(
            differences
                .summary
                .contains("7 file(s) failed verification")
        );
        assert!(differences.summary.contains("/f0") && differences.summary.contains('…'));
        assert_eq!(
            differences.report["failed"].as_array().map(Vec::len),
            Some(7)
        );
        assert!(!judge(&attempt(1, "failed", 0, None)).passed);
        assert!(!judge(&attempt(1, "cancelled", 0, None)).passed);
    }

    #[test]
    fn plans_are_checked() {
        let mut bad = plan(vec![]);
        bad.target.dir = "relative".into();
        assert!(bad.validate().is_err());
        let mut bad = plan(vec![]);
        bad.fallback = vec![FallbackStep::Replica, FallbackStep::Replica];
        assert!(bad.validate().is_err());
        let mut bad = plan(vec![]);
        bad.snapshot = "yesterday".into();
        assert!(bad.validate().is_err());
        let mut as_of = plan(vec![]);
        as_of.snapshot = "as-of:2026-11-01T09:00:00+07:00".into();
        assert_eq!(
            as_of.validate().expect("valid").snapshot,
            "as-of:2026-11-01T02:00:00+00:00"
        );
        let mut bad = plan(vec![]);
        bad.check = Some(CheckCommand {
            command: vec![String::new()],
            timeout_secs: 5,
        });
        assert!(bad.validate().is_err());
        let mut bad = plan(vec![]);
        bad.paths = vec!["/srv/../etc".into()];
        assert!(bad.validate().is_err());
        let mut bad = plan(vec![]);
        bad.excludes = vec!["cache".into(), "/srv/[unclosed".into()];
        let error = bad.validate().expect_err("a malformed exclude is refused");
        assert!(error.to_string().contains("/srv/[unclosed"), "{error}");
        let mut good = plan(vec![]);
        good.excludes = vec!["*.tmp".into(), "/var/lib/docker".into()];
        assert_eq!(
            good.validate().expect("valid excludes").excludes,
            ["*.tmp", "/var/lib/docker"]
        );
        let parsed: RestorePlan = serde_json::from_str(
            r#"{"server": 3, "target": {"server": 3, "dir": "/"},
                "check": {"command": ["pg_isready"]},
                "fallback": [{"step": "replica"}, {"step": "alternate_target", "server": 4, "dir": "/srv/x"}]}"#,
        )
        .expect("plan JSON");
        assert_eq!(parsed.snapshot, "latest");
        assert_eq!(parsed.check.as_ref().map(|c| c.timeout_secs), Some(60));
        // What becomes of files already there: `always` unless said, and written out only
        // when it is something else (so the digest of an older plan does not change).
        assert_eq!(parsed.overwrite, crate::engine::restore::Overwrite::Always);
        assert!(
            !serde_json::to_string(&parsed)
                .unwrap()
                .contains("overwrite")
        );
        let keeping: RestorePlan = serde_json::from_str(
            r#"{"server": 3, "target": {"server": 3, "dir": "/"}, "overwrite": "if-newer"}"#,
        )
        .expect("plan JSON");
        assert_eq!(
            keeping.overwrite,
            crate::engine::restore::Overwrite::IfNewer
        );
        assert!(
            serde_json::to_string(&keeping)
                .unwrap()
                .contains(r#""overwrite":"if-newer""#)
        );
        assert!(
            serde_json::from_str::<RestorePlan>(
                r#"{"server": 3, "target": {"server": 3, "dir": "/"}, "overwrite": "sometimes"}"#
            )
            .is_err()
        );
        // Deleting is off unless the plan says so, and said only then.
        assert!(!parsed.delete);
        assert!(!serde_json::to_string(&parsed).unwrap().contains("delete"));
        let deleting: RestorePlan = serde_json::from_str(
            r#"{"server": 3, "target": {"server": 3, "dir": "/"}, "delete": true}"#,
        )
        .expect("plan JSON");
        assert!(deleting.delete);
        assert!(
            serde_json::to_string(&deleting)
                .unwrap()
                .contains(r#""delete":true"#)
        );
        assert!(
            serde_json::from_str::<RestorePlan>(
                r#"{"server": 3, "target": {"server": 3, "dir": "/"}, "surprise": 1}"#
            )
            .is_err()
        );
    }
}
