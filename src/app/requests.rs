//! Requests through the SOP's procedures: keeping the loaded definitions and the stored
//! ones in step, opening a request, applying events (complete, decide, attach, cancel)
//! through the pure workflow, and running the system actions the steps are bound to —
//! each event in one transaction with its audit rows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::audit::json;
use super::capacity::{self, CapacityReport};
use super::details::{self, OpenRequest, RequestDetails, Validity};
use super::documents::{self, RequestContext};
use super::secrets::HOST_ADMIN_PASSWORD;
use super::{App, AppError, Work, assets, required, restore_requests};
use crate::catalog::{
    Account, AgencyId, DocumentId, NewRequest, PendingActionId, RequestFilter, RequestId,
    RequestRecord, RequestSummary, Server, ServerId, ServerStatus, StoredDefinition,
};
use crate::workflow::{
    self, Actor, Answer, DocumentKind, Event, Flow, Outcome, ProcedureCode, ProcedureDefinition,
    Registry, Rejection, RequestState, Role, StepNumber, SystemAction, Target,
};

/// A request as the application shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestView {
    /// Id.
    pub id: RequestId,
    /// Requesting agency.
    pub agency_id: AgencyId,
    /// The server it concerns.
    pub server_id: Option<ServerId>,
    /// Subject.
    pub subject: String,
    /// Application data (passwords are never included).
    pub details: RequestDetails,
    /// Workflow state: procedure, revision, steps with their times, actors and reasons.
    pub state: RequestState,
    /// Version, bumped by every change.
    pub version: i64,
    /// SOP number of the revision it runs under.
    pub sop_number: String,
}

/// A document issued by a use case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedDocument {
    /// Its id.
    pub id: DocumentId,
    /// Which form or letter.
    pub kind: DocumentKind,
    /// Its official number.
    pub number: String,
}

/// What opening a request or applying an event did.
#[derive(Debug, Clone, PartialEq)]
pub struct EventOutcome {
    /// The request afterwards.
    pub request: RequestView,
    /// Documents issued.
    pub documents: Vec<IssuedDocument>,
    /// The capacity check run or the reservation taken, with the numbers.
    pub capacity: Option<CapacityReport>,
    /// Servers entered in (or withdrawn from) the asset register.
    pub servers: Vec<Server>,
    /// Actions queued for other components (backup plans, restores).
    pub queued: Vec<PendingActionId>,
}

/// Decodes a stored request's application data.
pub(crate) fn decode_details(record: &RequestRecord) -> Result<RequestDetails, AppError> {
    serde_json::from_str(&record.details_json).map_err(|error| {
        AppError::internal(format!(
            "request {}: unreadable application data: {error}",
            record.id
        ))
    })
}

fn view(record: &RequestRecord, details: RequestDetails) -> RequestView {
    RequestView {
        id: record.id,
        agency_id: record.agency_id,
        server_id: record.server_id,
        subject: record.subject.clone(),
        details,
        state: record.state.clone(),
        version: record.version,
        sop_number: record.sop_number.clone(),
    }
}

fn definition_json(definition: &ProcedureDefinition) -> Result<(String, String), AppError> {
    let text = serde_json::to_string(definition).map_err(|error| {
        AppError::internal(format!("cannot encode {}: {error}", definition.source()))
    })?;
    let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
    Ok((text, hash))
}

/// Brings the registry and the catalog's stored definitions together (see [`App::open`]).
pub(crate) async fn sync_definitions(
    app: &App,
    from_files: Registry,
    now: DateTime<Utc>,
) -> Result<Registry, AppError> {
    let mut work = app.system_work("system", now).await?;
    let stored = work.tx.definitions().await?;
    let mut registry = Registry::new();
    for definition in from_files.iter() {
        store_definition(&mut work, &stored, definition).await?;
        registry
            .insert(definition.clone())
            .map_err(|error| AppError::invalid(error.to_string()))?;
    }
    for kept in &stored {
        if registry.get(&kept.code, kept.revision).is_none() {
            let definition: ProcedureDefinition = serde_json::from_str(&kept.definition_json)
                .map_err(|error| {
                    AppError::internal(format!(
                        "stored definition {} {} cannot be read: {error}",
                        kept.code, kept.revision
                    ))
                })?;
            registry
                .insert(definition)
                .map_err(|error| AppError::internal(error.to_string()))?;
        }
    }
    work.commit().await?;
    Ok(registry)
}

/// Stores a definition unless the same revision is stored; refuses a changed revision.
async fn store_definition(
    work: &mut Work<'_>,
    stored: &[StoredDefinition],
    definition: &ProcedureDefinition,
) -> Result<bool, AppError> {
    let (text, hash) = definition_json(definition)?;
    let refuse_changed = |kept: &StoredDefinition| {
        AppError::invalid(format!(
            "{}: {} {} differs from the revision stored in the catalog (first loaded from {}); requests may run under it, so give the changed procedure a new revision number",
            definition.source(),
            definition.code(),
            definition.revision(),
            kept.source
        ))
    };
    if let Some(kept) = stored
        .iter()
        .find(|kept| &kept.code == definition.code() && kept.revision == definition.revision())
    {
        if kept.content_hash != hash {
            return Err(refuse_changed(kept));
        }
        return Ok(false);
    }
    let inserted = work
        .tx
        .insert_definition(&StoredDefinition {
            code: definition.code().clone(),
            revision: definition.revision(),
            source: definition.source().to_owned(),
            definition_json: text,
            content_hash: hash.clone(),
            loaded_at: work.now,
        })
        .await?;
    if !inserted {
        // Another daemon stored this revision since we read: it must be the same text.
        let kept = work
            .tx
            .definition(definition.code(), definition.revision())
            .await?
            .ok_or_else(|| AppError::internal("a stored definition vanished"))?;
        if kept.content_hash != hash {
            return Err(refuse_changed(&kept));
        }
        return Ok(false);
    }
    work.audit(
        "definition.load",
        "procedure",
        format!("{} {}", definition.code(), definition.revision()),
    )
    .after = Some(serde_json::json!({
        "code": definition.code(),
        "revision": definition.revision(),
        "source": definition.source(),
        "sop_number": definition.sop_number(),
        "content_hash": hash,
    }));
    Ok(true)
}

/// The actor as seen by one request: an SKPD account acting on another agency's request
/// loses its SKPD role (it may still act in other roles it holds).
struct ScopedActor {
    actor: Actor,
    foreign_skpd: bool,
}

fn scoped(account: &Account, agency: AgencyId) -> ScopedActor {
    let foreign_skpd = account.roles.contains(&Role::Skpd) && account.agency_id != Some(agency);
    ScopedActor {
        actor: Actor::new(
            account.username.clone(),
            account
                .roles
                .iter()
                .copied()
                .filter(|role| !(foreign_skpd && *role == Role::Skpd)),
        ),
        foreign_skpd,
    }
}

fn explain(
    rejection: Rejection,
    actor: &ScopedActor,
    account: &Account,
    agency: AgencyId,
) -> AppError {
    if let Rejection::WrongRole { allowed, .. } = &rejection
        && actor.foreign_skpd
        && allowed.contains(&Role::Skpd)
    {
        return AppError::forbidden(format!(
            "`{}` is an SKPD account of agency {}; it cannot act on a request of agency {agency} ({rejection})",
            account.username,
            account
                .agency_id
                .map_or_else(|| "?".to_owned(), |id| id.to_string()),
        ));
    }
    AppError::from(rejection)
}

/// The decision step whose "yes" reserves capacity: the step bound to `capacity_check`
/// if it is a decision, else the decision it leads to.
fn capacity_decision_step(definition: &ProcedureDefinition) -> Option<StepNumber> {
    let check = definition.steps().iter().find(|step| {
        step.actions
            .iter()
            .any(|binding| binding.action == SystemAction::CapacityCheck)
    })?;
    match check.flow {
        Flow::Decision { .. } => Some(check.number),
        Flow::Task {
            next: Target::Step(next),
        } => definition
            .step(next)
            .filter(|step| step.flow.is_decision())
            .map(|step| step.number),
        Flow::Task { .. } => None,
    }
}

/// Runs the system actions returned by the workflow, in order.
async fn run_actions(
    work: &mut Work<'_>,
    definition: &ProcedureDefinition,
    record: &RequestRecord,
    details: &RequestDetails,
    decision: &workflow::Decision,
    outcome: &mut EventOutcome,
) -> Result<(), AppError> {
    for pending in &decision.actions {
        let step_roles: Vec<Role> = definition
            .step(pending.step)
            .map(|step| step.roles.clone())
            .unwrap_or_default();
        let unfit = || {
            AppError::internal(format!(
                "{} is bound to step {} of {}, which a {} request cannot run",
                pending.action.code(),
                pending.step,
                definition.code(),
                details.kind_name()
            ))
        };
        match pending.action {
            SystemAction::CapacityCheck => {
                let RequestDetails::Colocation(application) = details else {
                    return Err(unfit());
                };
                outcome.capacity = Some(capacity::run_check(work, record.id, application).await?);
            }
            SystemAction::UpdateAssetRegister => match details {
                RequestDetails::Colocation(application) => {
                    let servers =
                        assets::register_handover(work, record.id, record.agency_id, application)
                            .await?;
                    outcome.servers.extend(servers);
                }
                RequestDetails::Withdrawal(application) => {
                    let server = assets::register_withdrawal(work, application).await?;
                    outcome.servers.push(server);
                }
                _ => return Err(unfit()),
            },
            SystemAction::RenderDocument { document } => {
                let context = RequestContext {
                    record,
                    details,
                    state: &decision.state,
                    step: pending.step,
                    step_roles: &step_roles,
                };
                outcome
                    .documents
                    .push(documents::issue(work, document, &context).await?);
            }
            SystemAction::StartBackupPlan
                if work.tx.plans_of_request(record.id).await?.is_empty() =>
            {
                // The step that starts the backup needs the plan it runs: refuse the step
                // with what to do rather than queue an action that can only fail.
                return Err(AppError::Conflict(format!(
                    "request {} has no backup plan yet: create it first with `cadang plan create --request {}` (paths, schedule, retention)",
                    record.id, record.id
                )));
            }
            SystemAction::StartBackupPlan
            | SystemAction::StopBackupPlan
            | SystemAction::RunRestore
            | SystemAction::VerifyRestore
            | SystemAction::FallbackRestore => {
                // Owned by the scheduler and restore components: queued in the same
                // transaction, so the step and its work are recorded together.
                let id = work
                    .tx
                    .insert_pending_action(record.id, pending, work.now)
                    .await?;
                work.audit("action.queue", "request", record.id).after = Some(serde_json::json!({
                    "pending_action": id,
                    "step": pending.step,
                    "trigger": pending.trigger,
                    "action": pending.action,
                }));
                outcome.queued.push(id);
            }
        }
    }
    Ok(())
}

/// What happens when a request ends: reserved capacity is given back unless the request
/// completed (a completed handover has already handed it to the servers), and a
/// maintenance record is closed.
async fn on_finished(
    work: &mut Work<'_>,
    record: &RequestRecord,
    state: &RequestState,
) -> Result<(), AppError> {
    let Some(outcome) = state.outcome() else {
        return Ok(());
    };
    if outcome != Outcome::Completed {
        capacity::release(work, record.id).await?;
    }
    if outcome == Outcome::Cancelled {
        restore_requests::cancel_queued(work, record.id).await?;
    }
    if work.tx.close_maintenance(record.id, work.now).await? {
        work.audit("maintenance.close", "request", record.id).after =
            Some(serde_json::json!({ "outcome": outcome }));
    }
    Ok(())
}

impl App {
    /// Loads a procedure definition at run time (a revised SOP), storing it in the
    /// catalog. Requests in flight keep their revision; new requests start under the
    /// highest one. ADMIN only. Loading an identical, already stored revision is a no-op.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for an invalid definition or a
    /// changed revision.
    pub async fn load_definition(
        &self,
        username: &str,
        source: &str,
        text: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let definition = ProcedureDefinition::from_toml(source, text)
            .map_err(|error| AppError::invalid(error.to_string()))?;
        let mut work = self.work(username, now).await?;
        work.require(&[Role::Admin], "load procedure definitions")?;
        let stored = work
            .tx
            .definition(definition.code(), definition.revision())
            .await?;
        let stored: Vec<StoredDefinition> = stored.into_iter().collect();
        store_definition(&mut work, &stored, &definition).await?;
        let mut registry = (*self.registry()).clone();
        if registry
            .get(definition.code(), definition.revision())
            .is_none()
        {
            registry
                .insert(definition)
                .map_err(|error| AppError::invalid(error.to_string()))?;
        }
        work.commit().await?;
        // Swapped only after the commit, so the registry never names a revision the
        // catalog does not hold.
        self.replace_registry(registry);
        Ok(())
    }

    /// Opens a request under the latest revision of `procedure`, with its application
    /// data. An SKPD account may only open requests for its own agency. Passwords in the
    /// application are sealed before anything is stored.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for an unknown procedure, agency, person or server;
    /// [`AppError::Forbidden`] for a role or agency the user may not act for;
    /// [`AppError::InvalidInput`] for application data that does not fit the procedure or
    /// is malformed (NIP, IP, domain, sizes …).
    pub async fn open_request(
        &self,
        username: &str,
        procedure: &str,
        input: OpenRequest,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, AppError> {
        let registry = self.registry();
        let code = ProcedureCode::from(procedure);
        let definition = registry.latest(&code).ok_or_else(|| {
            let known: Vec<String> = registry
                .iter()
                .map(|definition| definition.code().to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            AppError::NotFound(format!(
                "no procedure `{procedure}` is loaded (loaded: {})",
                known.join(", ")
            ))
        })?;
        let mut work = self.work(username, now).await?;
        let account = work.account()?.clone();
        let actor = scoped(&account, input.agency_id);
        let decision = workflow::start(definition, &actor.actor, now)
            .map_err(|rejection| explain(rejection, &actor, &account, input.agency_id))?;
        work.role = actor.actor.acting_role(&definition.policy().start_roles);

        let agency = work.tx.agency(input.agency_id).await?;
        let subject = required("the subject", &input.subject)?;
        if let Some(expected) = details::expected_kind(procedure)
            && expected != input.details.kind_name()
        {
            return Err(AppError::invalid(format!(
                "procedure {procedure} needs a {expected} application, not a {} one",
                input.details.kind_name()
            )));
        }
        let mut details = details::normalize(input.details)?;
        self.check_references(&mut work, &agency.id, &mut details)
            .await?;
        let details_json = serde_json::to_string(&details).map_err(|error| {
            AppError::internal(format!("cannot encode application data: {error}"))
        })?;

        let record = work
            .tx
            .insert_request(&NewRequest {
                agency_id: agency.id,
                server_id: details.server(),
                subject,
                details_json,
                sop_number: definition.sop_number().to_owned(),
                sop_revision_date: definition.sop_revision_date(),
                state: decision.state.clone(),
            })
            .await?;
        if let RequestDetails::Maintenance(maintenance) = &details {
            work.tx
                .insert_maintenance(
                    record.id,
                    agency.id,
                    maintenance.server_id,
                    &maintenance.description,
                    now,
                )
                .await?;
        }
        work.audit("request.open", "request", record.id).after = Some(serde_json::json!({
            "subject": record.subject,
            "agency": agency.id,
            "details": json(&details),
            "state": json(&record.state),
        }));
        let mut outcome = EventOutcome {
            request: view(&record, details.clone()),
            documents: Vec::new(),
            capacity: None,
            servers: Vec::new(),
            queued: Vec::new(),
        };
        run_actions(
            &mut work,
            definition,
            &record,
            &details,
            &decision,
            &mut outcome,
        )
        .await?;
        work.commit().await?;
        Ok(outcome)
    }

    /// Checks what the application data refers to, and seals passwords.
    async fn check_references(
        &self,
        work: &mut Work<'_>,
        agency: &AgencyId,
        details: &mut RequestDetails,
    ) -> Result<(), AppError> {
        let today = work
            .now
            .with_timezone(&self.config().calendar.config().time_zone)
            .date_naive();
        match details {
            RequestDetails::Colocation(application) => {
                let person = work.tx.person(application.responsible_person).await?;
                if person.agency_id.is_some_and(|owner| owner != *agency) {
                    return Err(AppError::invalid(format!(
                        "the responsible person {} ({}) works for another agency",
                        person.name, person.id
                    )));
                }
                if let Validity::Temporary { until } = application.validity
                    && until < today
                {
                    return Err(AppError::invalid(format!(
                        "a temporary colocation must last until a future date, not {until}"
                    )));
                }
                for server in &mut application.servers {
                    // Only the daemon names sealed secrets: a reference supplied with the
                    // application could point at another server's password.
                    if server.host_admin_secret.is_some() {
                        return Err(AppError::invalid(format!(
                            "server {}: host_admin_secret is set by cadang; send host_admin_password instead",
                            server.name
                        )));
                    }
                    if let Some(password) = server.host_admin_password.take() {
                        server.host_admin_secret = Some(
                            self.sealer()
                                .store(&mut work.tx, HOST_ADMIN_PASSWORD, &password, work.now)
                                .await?,
                        );
                    }
                }
            }
            RequestDetails::Withdrawal(withdrawal) => {
                let server = work.tx.server(withdrawal.server_id).await?;
                if server.agency_id != *agency {
                    return Err(AppError::invalid(format!(
                        "server {} belongs to another agency",
                        server.id
                    )));
                }
                if server.status != ServerStatus::Active {
                    return Err(AppError::Conflict(format!(
                        "server {} ({}) is already withdrawn",
                        server.id, server.name
                    )));
                }
            }
            RequestDetails::Backup(_)
            | RequestDetails::Restore(_)
            | RequestDetails::Maintenance(_) => {
                if let Some(server) = details.server() {
                    let server = work.tx.server(server).await?;
                    if server.agency_id != *agency {
                        return Err(AppError::invalid(format!(
                            "server {} belongs to another agency",
                            server.id
                        )));
                    }
                }
                if let RequestDetails::Restore(restore) = details
                    && let Some(backup) = restore.backup_request
                {
                    let backup = work.tx.request(backup).await?;
                    if backup.agency_id != *agency
                        || backup.state.procedure.as_str() != "backup_request"
                    {
                        return Err(AppError::invalid(format!(
                            "request {} is not a backup request of this agency",
                            backup.id
                        )));
                    }
                }
            }
            RequestDetails::General { .. } => {}
        }
        Ok(())
    }

    /// Applies an event to a request under the revision it started with: the workflow
    /// decides, then the new state, the capacity reservation (A4 "yes"), the system
    /// actions of the steps left and entered, and the audit rows are written in one
    /// transaction.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] for a role the user lacks (or an SKPD account of another
    /// agency); [`AppError::InvalidInput`] for a missing reason, a decision on a task
    /// step or a completion of a decision step, or a handover completed before the
    /// observed specification was entered; [`AppError::Conflict`] for an event on a step
    /// that is not current, on a finished request, or an A4 "yes" when the capacity was
    /// taken meanwhile; [`AppError::NotFound`].
    pub async fn submit(
        &self,
        username: &str,
        request: RequestId,
        event: Event,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, AppError> {
        let work = self.work(username, now).await?;
        self.apply_event(work, request, event, None).await
    }

    /// Applies an event as the system (`system:{worker}`), acting in the roles of the
    /// current step: the steps the system carries out itself (a restore run, verified
    /// and judged, its fallback chain) are recorded in the same workflow and audit trail
    /// as an officer's.
    ///
    /// # Errors
    /// As [`App::submit`].
    pub(crate) async fn submit_as_system(
        &self,
        worker: &str,
        request: RequestId,
        event: Event,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, AppError> {
        let work = self.system_work(&format!("system:{worker}"), now).await?;
        let user = work.actor_name.clone();
        self.apply_event(work, request, event, Some(user)).await
    }

    async fn apply_event(
        &self,
        mut work: Work<'_>,
        request: RequestId,
        event: Event,
        system: Option<String>,
    ) -> Result<EventOutcome, AppError> {
        let registry = self.registry();
        let now = work.now;
        let record = work.tx.request_for_update(request).await?;
        let definition = registry
            .for_request(&record.state)
            .map_err(|error| AppError::internal(error.to_string()))?;
        let actor = match &system {
            Some(user) => {
                let roles = record
                    .state
                    .current_step()
                    .and_then(|step| definition.step(step))
                    .map(|step| step.roles.clone())
                    .unwrap_or_default();
                ScopedActor {
                    actor: Actor::new(user.clone(), roles),
                    foreign_skpd: false,
                }
            }
            None => scoped(work.account()?, record.agency_id),
        };
        let decision =
            workflow::decide(definition, &record.state, event.clone(), &actor.actor, now).map_err(
                |rejection| match work.account() {
                    Ok(account) => explain(rejection, &actor, account, record.agency_id),
                    Err(_) => AppError::from(rejection),
                },
            )?;

        if system.is_none() {
            restore_requests::guard_officer_event(&mut work, definition, &record, &event).await?;
        }
        let current = record
            .state
            .current_step()
            .and_then(|step| definition.step(step));
        work.role = match (&event, current) {
            (Event::Cancel { .. }, _) => actor.actor.acting_role(&definition.policy().cancel_roles),
            (Event::Attach { .. }, Some(step)) => {
                let mut allowed = step.roles.clone();
                allowed.extend(definition.policy().attach_roles.iter().copied());
                actor.actor.acting_role(&allowed)
            }
            (_, Some(step)) => actor.actor.acting_role(&step.roles),
            (_, None) => None,
        };
        let details = decode_details(&record)?;
        let mut outcome = EventOutcome {
            request: view(&record, details.clone()),
            documents: Vec::new(),
            capacity: None,
            servers: Vec::new(),
            queued: Vec::new(),
        };

        // The capacity decision answered "yes" takes the reservation now, under lock: if
        // another request took the room since the check, the answer is refused.
        if let Event::Decide {
            step,
            answer: Answer::Yes,
            ..
        } = &event
            && capacity_decision_step(definition) == Some(*step)
            && let RequestDetails::Colocation(application) = &details
        {
            outcome.capacity = Some(capacity::reserve(&mut work, record.id, application).await?);
        }
        // The decision that lets a restore run approves exactly the plan written at C2.
        if let Event::Decide {
            step,
            answer: Answer::Yes,
            ..
        } = &event
            && restore_requests::approval_step(definition) == Some(*step)
        {
            restore_requests::approve_plan(&mut work, record.id).await?;
        }

        let version = work
            .tx
            .update_request_state(record.id, record.version, &decision.state, now)
            .await?;
        let entry = work.audit(&format!("request.{}", event.name()), "request", record.id);
        entry.before = Some(json(&record.state));
        entry.after = Some(serde_json::json!({
            "event": json(&event),
            "state": json(&decision.state),
        }));
        run_actions(
            &mut work,
            definition,
            &record,
            &details,
            &decision,
            &mut outcome,
        )
        .await?;
        on_finished(&mut work, &record, &decision.state).await?;
        work.commit().await?;

        outcome.request.state = decision.state;
        outcome.request.version = version;
        Ok(outcome)
    }

    /// A request.
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn request(&self, id: RequestId) -> Result<RequestView, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        let record = tx.request(id).await?;
        let details = decode_details(&record)?;
        Ok(view(&record, details))
    }

    /// Requests matching a filter, by id, after `after`, at most `limit`.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn list_requests(
        &self,
        filter: &RequestFilter,
        after: Option<RequestId>,
        limit: u32,
    ) -> Result<Vec<RequestSummary>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.list_requests(filter, after, limit).await?)
    }
}
