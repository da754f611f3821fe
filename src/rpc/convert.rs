//! Conversions between the API's messages and the application's types. Ids of 0 and
//! empty strings mean "none", as proto3 has no presence for scalars.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tonic::Status;

use super::pb;
use crate::app::{EventOutcome, RequestView};
use crate::catalog::{Account, Agency, DocumentRecord, Person, RequestSummary, TokenRecord};
use crate::workflow::Role;

/// RFC 3339 in UTC, to the second.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An optional instant; empty when absent.
pub fn opt_time(at: Option<DateTime<Utc>>) -> String {
    at.map(time).unwrap_or_default()
}

/// JSON of a value the application made (cannot fail for our types; an error becomes an
/// internal status rather than a panic).
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, Status> {
    serde_json::to_string(value).map_err(|error| {
        tracing::error!(%error, "cannot encode a reply as JSON");
        Status::internal("internal error; the daemon's log has the cause")
    })
}

/// The serde name of a unit enum value (`handover_minutes`).
pub fn code<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// An id field: positive, or absent when 0.
pub fn opt_id(field: &str, value: i64) -> Result<Option<i64>, Status> {
    match value {
        0 => Ok(None),
        id if id > 0 => Ok(Some(id)),
        id => Err(Status::invalid_argument(format!(
            "{field} must be a positive id, not {id}"
        ))),
    }
}

/// A restore's overwrite mode: empty for `always`.
pub fn overwrite_mode(value: &str) -> Result<crate::engine::restore::Overwrite, Status> {
    crate::engine::restore::Overwrite::parse_or_always(value).map_err(Status::invalid_argument)
}

/// A required id field.
pub fn id(field: &str, value: i64) -> Result<i64, Status> {
    opt_id(field, value)?.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))
}

/// An optional text field: trimmed, empty means absent.
pub fn opt_text(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// Role codes.
pub fn roles(codes: &[String]) -> Result<Vec<Role>, Status> {
    codes
        .iter()
        .map(|code| {
            code.trim()
                .to_ascii_uppercase()
                .parse::<Role>()
                .map_err(|_| {
                    Status::invalid_argument(format!(
                        "unknown role `{code}`; the roles are {}",
                        Role::ALL
                            .iter()
                            .map(|role| role.code())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        })
        .collect()
}

fn role_codes(roles: &[Role]) -> Vec<String> {
    roles.iter().map(|role| role.code().to_owned()).collect()
}

/// An agency message.
pub fn agency(agency: &Agency) -> pb::Agency {
    pb::Agency {
        id: agency.id.0,
        code: agency.code.clone(),
        name: agency.name.clone(),
        kind: agency.kind.to_string(),
        address: agency.address.clone(),
        phone: agency.phone.clone().unwrap_or_default(),
        created_at: time(agency.created_at),
    }
}

/// A person message.
pub fn person(person: &Person) -> pb::Person {
    pb::Person {
        id: person.id.0,
        name: person.name.clone(),
        nip: person.nip.clone(),
        position: person.position.clone().unwrap_or_default(),
        agency_id: person.agency_id.map_or(0, |id| id.0),
        phone: person.phone.clone().unwrap_or_default(),
    }
}

/// An account message.
pub fn account(account: &Account) -> pb::Account {
    pb::Account {
        id: account.id.0,
        username: account.username.clone(),
        person_id: account.person_id.map_or(0, |id| id.0),
        agency_id: account.agency_id.map_or(0, |id| id.0),
        roles: role_codes(&account.roles),
        active: account.active,
        created_at: time(account.created_at),
    }
}

/// A token message (never the secret).
pub fn token(token: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: token.id.0,
        username: token.username.clone(),
        label: token.label.clone(),
        created_at: time(token.created_at),
        expires_at: opt_time(token.expires_at),
        revoked_at: opt_time(token.revoked_at),
        last_used_at: opt_time(token.last_used_at),
    }
}

/// A request message.
pub fn request(view: &RequestView) -> Result<pb::Request, Status> {
    Ok(pb::Request {
        id: view.id.0,
        procedure: view.state.procedure.to_string(),
        revision: view.state.revision.0,
        sop_number: view.sop_number.clone(),
        agency_id: view.agency_id.0,
        server_id: view.server_id.map_or(0, |id| id.0),
        subject: view.subject.clone(),
        status: if view.state.is_finished() {
            "finished"
        } else {
            "active"
        }
        .to_owned(),
        current_step: view.state.current_step().map_or(0, |step| step.0),
        outcome: view
            .state
            .outcome()
            .map(|outcome| code(&outcome))
            .unwrap_or_default(),
        version: view.version,
        application_json: to_json(&view.details)?,
        state_json: to_json(&view.state)?,
        procedure_steps: Vec::new(),
        current_step_due_at: String::new(),
    })
}

/// A step of a procedure as the SOP defines it.
pub fn procedure_step(step: &crate::workflow::Step) -> pb::ProcedureStep {
    pb::ProcedureStep {
        number: step.number.0,
        text_id: step.text.indonesian.clone(),
        text_en: step.text.english.clone(),
        roles: role_codes(&step.roles),
        time_standard: step.time_standard.to_string(),
        decision: step.flow.is_decision(),
    }
}

/// What a change did.
pub fn outcome(outcome: &EventOutcome) -> Result<pb::RequestOutcome, Status> {
    Ok(pb::RequestOutcome {
        request: Some(request(&outcome.request)?),
        documents: outcome
            .documents
            .iter()
            .map(|document| pb::DocumentRef {
                kind: code(&document.kind),
                number: document.number.clone(),
            })
            .collect(),
        capacity_json: match &outcome.capacity {
            Some(report) => to_json(report)?,
            None => String::new(),
        },
        servers: outcome.servers.iter().map(|server| server.id.0).collect(),
        queued_actions: outcome.queued.iter().map(|id| id.0).collect(),
    })
}

/// One line of a request listing.
pub fn summary(summary: &RequestSummary) -> pb::RequestSummary {
    pb::RequestSummary {
        id: summary.id.0,
        procedure: summary.procedure.clone(),
        revision: summary.revision,
        agency_id: summary.agency_id.0,
        subject: summary.subject.clone(),
        status: summary.status.clone(),
        current_step: summary.current_step.unwrap_or(0),
        outcome: summary.outcome.clone().unwrap_or_default(),
        opened_at: time(summary.opened_at),
    }
}

/// A document message, with or without its HTML.
pub fn document(document: &DocumentRecord, with_html: bool) -> pb::Document {
    pb::Document {
        kind: code(&document.kind),
        number: document.number.clone(),
        title: document.title.clone(),
        request_id: document.request_id.map_or(0, |id| id.0),
        step: document.step.unwrap_or(0),
        issued_at: time(document.issued_at),
        issued_by: document.issued_by.clone(),
        html: if with_html {
            document.html.clone()
        } else {
            String::new()
        },
    }
}

/// A plan message.
pub fn plan(plan: &crate::app::PlanView) -> Result<pb::Plan, Status> {
    Ok(pb::Plan {
        id: plan.id.0,
        agency_id: plan.agency_id.0,
        request_id: plan.request_id.map_or(0, |id| id.0),
        name: plan.name.clone(),
        status: plan.status.clone(),
        spec_json: to_json(&plan.spec)?,
        next_backup_at: opt_time(plan.next[0]),
        next_retention_at: opt_time(plan.next[1]),
        next_verify_at: opt_time(plan.next[2]),
        next_replicate_at: opt_time(plan.next[4]),
    })
}

/// A run message.
pub fn run(run: &crate::catalog::RunRecord) -> pb::Run {
    pb::Run {
        id: run.id.0,
        plan_id: run.plan_id.0,
        kind: run.kind.clone(),
        trigger: run.trigger.clone(),
        due_at: time(run.due_at),
        status: run.status.clone(),
        attempts: run.attempts,
        queued_at: time(run.queued_at),
        started_at: opt_time(run.started_at),
        finished_at: opt_time(run.finished_at),
        stats_json: run.stats_json.clone().unwrap_or_default(),
        snapshot_id: run.snapshot_id.clone().unwrap_or_default(),
        error: run.error.clone().unwrap_or_default(),
        request_id: run.request_id.map_or(0, |id| id.0),
        step: run.step.unwrap_or(0),
        lease_owner: run.lease_owner.clone().unwrap_or_default(),
    }
}
