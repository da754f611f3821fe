//! The authorisation matrix: which roles may call which RPC. It is enforced in one place,
//! the [`super::AuthLayer`] in front of every service, before a handler runs; the use
//! cases then apply the finer rules that depend on the object (an agency's account acts
//! only for its agency; a SOP step only by the roles its procedure definition names).
//!
//! `docs/AUTHORIZATION.md` is generated from this table (`cadang admin authz-matrix`) and
//! a test keeps the two equal; another test fails when an RPC of the API has no row here,
//! so a new RPC cannot ship without a decision about who may call it.

use crate::workflow::{Registry, Role};

/// One row: an RPC and the roles that may call it.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Full gRPC method path, `/cadang.v1.Service/Method`.
    pub method: &'static str,
    /// Roles admitted.
    pub roles: &'static [Role],
    /// The finer rule the use case applies, for the documentation.
    pub scope: &'static str,
}

use Role::{Admin, KabidTik, Kadin, KasiInfras, Petugas, Skpd};

/// Every role.
const EVERYONE: &[Role] = &Role::ALL;
/// The roles that act in the SOP's procedures.
const SOP_ACTORS: &[Role] = &[Kadin, KabidTik, KasiInfras, Petugas, Skpd];
/// The data center's staff.
const STAFF: &[Role] = &[Kadin, KabidTik, KasiInfras, Petugas, Admin];
/// Those who oversee: heads and the administrator.
const OVERSIGHT: &[Role] = &[Kadin, KabidTik, KasiInfras, Admin];
/// Those who keep the capacity model and the register.
const INFRA: &[Role] = &[KasiInfras, Admin];
/// Those who may open sealed host passwords (the default `reveal_roles`).
const REVEAL: &[Role] = &[KabidTik, KasiInfras, Petugas];
/// Those who plan and steer backups.
const PLANNERS: &[Role] = &[KasiInfras, Petugas, Admin];
/// The administrator alone.
const ADMIN: &[Role] = &[Admin];
/// Those who approve restore plans (procedure C step 3).
const RESTORE_APPROVERS: &[Role] = &[KabidTik, Admin];
/// Who holds a snapshot past its retention, or releases it.
const HOLDERS: &[Role] = &[KabidTik, KasiInfras, Admin];
/// Who takes files out of a server's backups.
const ERASERS: &[Role] = &[KabidTik, Admin];
/// Those who hand servers over and look after their agents.
const AGENT_OFFICERS: &[Role] = &[KasiInfras, Petugas, Admin];
/// No person: the method is for agents, with their own credential.
const AGENTS_ONLY: &[Role] = &[];

const AGENT_CREDENTIAL: &str =
    "agents only, with their own credential (`cdga_…`); a person's token is refused";

const OWN_AGENCY: &str = "an agency's account sees only its own agency's objects";
const STEP_ROLES: &str =
    "the step's roles in the procedure definition; an agency's account only for its own agency";

/// The matrix.
#[rustfmt::skip]
pub const MATRIX: &[Rule] = &[
    Rule { method: "/cadang.v1.AuthService/WhoAmI", roles: EVERYONE, scope: "" },
    Rule { method: "/cadang.v1.AuthService/CreateToken", roles: EVERYONE, scope: "for oneself; ADMIN for any account" },
    Rule { method: "/cadang.v1.AuthService/ListTokens", roles: EVERYONE, scope: "one's own; ADMIN any account's" },
    Rule { method: "/cadang.v1.AuthService/RevokeToken", roles: EVERYONE, scope: "one's own; ADMIN any" },
    Rule { method: "/cadang.v1.DirectoryService/CreateAgency", roles: ADMIN, scope: "" },
    Rule { method: "/cadang.v1.DirectoryService/ListAgencies", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.DirectoryService/CreatePerson", roles: ADMIN, scope: "" },
    Rule { method: "/cadang.v1.DirectoryService/CreateAccount", roles: ADMIN, scope: "" },
    Rule { method: "/cadang.v1.DirectoryService/ListAccounts", roles: ADMIN, scope: "" },
    Rule { method: "/cadang.v1.DirectoryService/SetAccountActive", roles: ADMIN, scope: "" },
    Rule { method: "/cadang.v1.DirectoryService/SetAccountRoles", roles: ADMIN, scope: "" },
    Rule { method: "/cadang.v1.RequestService/OpenRequest", roles: SOP_ACTORS, scope: "the procedure's start roles; an agency's account only for its own agency" },
    Rule { method: "/cadang.v1.RequestService/GetRequest", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.RequestService/ListRequests", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.RequestService/CompleteStep", roles: SOP_ACTORS, scope: STEP_ROLES },
    Rule { method: "/cadang.v1.RequestService/DecideStep", roles: SOP_ACTORS, scope: STEP_ROLES },
    Rule { method: "/cadang.v1.RequestService/AttachDocument", roles: SOP_ACTORS, scope: "the step's roles or the procedure's attach roles; own agency" },
    Rule { method: "/cadang.v1.RequestService/CancelRequest", roles: SOP_ACTORS, scope: "the procedure's cancel roles; own agency" },
    Rule { method: "/cadang.v1.AssetService/ListServers", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.AssetService/GetServer", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.AssetService/RecordObservation", roles: STAFF, scope: "the roles of the handover step" },
    Rule { method: "/cadang.v1.AssetService/RegisterServer", roles: INFRA, scope: "" },
    Rule { method: "/cadang.v1.AssetService/RevealHostPassword", roles: REVEAL, scope: "the configured reveal_roles; every attempt audited" },
    Rule { method: "/cadang.v1.CapacityService/AddPowerFeed", roles: INFRA, scope: "" },
    Rule { method: "/cadang.v1.CapacityService/AddRack", roles: INFRA, scope: "" },
    Rule { method: "/cadang.v1.CapacityService/AddUplink", roles: INFRA, scope: "" },
    Rule { method: "/cadang.v1.CapacityService/ShowCapacity", roles: STAFF, scope: "" },
    Rule { method: "/cadang.v1.DocumentService/ListDocuments", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.DocumentService/GetDocument", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.DocumentService/IssueDocument", roles: STAFF, scope: "the roles of the request's current step, KABID_TIK and ADMIN" },
    Rule { method: "/cadang.v1.AuditService/VerifyAudit", roles: OVERSIGHT, scope: "" },
    Rule { method: "/cadang.v1.AuditService/ExportAudit", roles: OVERSIGHT, scope: "" },
    Rule { method: "/cadang.v1.ReportService/Overruns", roles: OVERSIGHT, scope: "" },
    Rule { method: "/cadang.v1.ReportService/RunsReport", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.ReportService/SlaReport", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.ReportService/StorageReport", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.ReportService/ScheduleReport", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.ReportService/ListNotifications", roles: OVERSIGHT, scope: "" },
    Rule { method: "/cadang.v1.PlanService/CreatePlan", roles: PLANNERS, scope: "for an active backup request" },
    Rule { method: "/cadang.v1.PlanService/ListPlans", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.PlanService/GetPlan", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.PlanService/RunNow", roles: PLANNERS, scope: "" },
    Rule { method: "/cadang.v1.PlanService/PausePlan", roles: PLANNERS, scope: "" },
    Rule { method: "/cadang.v1.PlanService/ResumePlan", roles: PLANNERS, scope: "" },
    Rule { method: "/cadang.v1.RunService/ListRuns", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.RunService/GetRun", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.AgentService/Enroll", roles: AGENTS_ONLY, scope: "no bearer: the one-time enrolment token in the message, usable once" },
    Rule { method: "/cadang.v1.AgentService/ReportInventory", roles: AGENTS_ONLY, scope: AGENT_CREDENTIAL },
    Rule { method: "/cadang.v1.AgentService/Jobs", roles: AGENTS_ONLY, scope: "agents only, with their own credential; only the jobs the daemon gives the agent's own server" },
    Rule { method: "/cadang.v1.AgentAdminService/CreateEnrollmentToken", roles: AGENT_OFFICERS, scope: "" },
    Rule { method: "/cadang.v1.AgentAdminService/ListAgents", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.AgentAdminService/RevokeAgent", roles: AGENT_OFFICERS, scope: "" },
    Rule { method: "/cadang.v1.AgentAdminService/GetInventory", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.RestoreService/StartRestore", roles: PLANNERS, scope: "source and target servers of one agency" },
    Rule { method: "/cadang.v1.RestoreService/GetRestore", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.RestoreService/ListRestores", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.RestoreService/ListServerSnapshots", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.RestoreService/ListSnapshotFiles", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.RestoreService/FindSnapshotFiles", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.RestoreService/SetRestorePlan", roles: PLANNERS, scope: "the roles of the planning step (C2), while it is current; servers of the request's agency" },
    Rule { method: "/cadang.v1.RestoreService/GetRestoreRequest", roles: EVERYONE, scope: OWN_AGENCY },
    Rule { method: "/cadang.v1.RestoreService/ConfirmOlderSnapshot", roles: RESTORE_APPROVERS, scope: "the roles of the approval step (C3), once the plan is approved" },
    Rule { method: "/cadang.v1.RestoreService/HoldSnapshot", roles: HOLDERS, scope: "every hold and release audited with its reason" },
    Rule { method: "/cadang.v1.RestoreService/EraseFiles", roles: ERASERS, scope: "refused while a snapshot it would change is held; every erasure audited with its reason and patterns (not the paths removed)" },
];

/// Paths served without a token: health checks and server reflection (they reveal the
/// API's shape and liveness, nothing of the catalog).
pub fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Paths called by agents with their own credential (not by people).
pub fn is_agent_path(path: &str) -> bool {
    path.starts_with("/cadang.v1.AgentService/") && !is_enrolment(path)
}

/// The enrolment call: authenticated by the one-time token in its message.
pub fn is_enrolment(path: &str) -> bool {
    path == "/cadang.v1.AgentService/Enroll"
}

/// The rule of a method path.
pub fn rule(path: &str) -> Option<&'static Rule> {
    MATRIX.iter().find(|rule| rule.method == path)
}

/// The matrix and the step roles of every loaded procedure, as Markdown.
pub fn render_markdown(registry: &Registry) -> String {
    let mut out = String::new();
    out.push_str("# Authorisation matrix\n\n");
    out.push_str(
        "Generated by `cadang admin authz-matrix` from `src/rpc/authz.rs` and the procedure \
         definitions in `config/sop/`; a test keeps this file equal to that output.\n\n\
         Every call needs a valid bearer token (none, unknown, expired, revoked, or a disabled \
         account: `UNAUTHENTICATED`). A role outside a method's row gets `PERMISSION_DENIED` \
         before the call reaches a use case; so does an agency's account (SKPD) naming another \
         agency's object. Health checks and server reflection need no token. The agents' \
         methods (a row without roles) take no person's token: an agent enrols with a \
         one-time token and then calls with its own credential.\n\n",
    );
    out.push_str("## Methods\n\n| method | ");
    out.push_str(
        &Role::ALL
            .iter()
            .map(|role| role.code())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    out.push_str(" | finer rule |\n|---|");
    out.push_str(&"---|".repeat(Role::ALL.len() + 1));
    out.push('\n');
    for rule in MATRIX {
        out.push_str(&format!(
            "| `{}` |",
            rule.method.trim_start_matches("/cadang.v1.")
        ));
        for role in Role::ALL {
            out.push_str(if rule.roles.contains(&role) {
                " ✔ |"
            } else {
                " |"
            });
        }
        out.push_str(&format!(" {} |\n", rule.scope));
    }
    out.push_str(
        "\n## SOP steps\n\nWho may complete or decide each step, from the procedure definitions.\n",
    );
    let mut definitions: Vec<_> = registry.iter().collect();
    definitions.sort_by(|a, b| {
        (a.code().to_string(), a.revision()).cmp(&(b.code().to_string(), b.revision()))
    });
    for definition in definitions {
        out.push_str(&format!(
            "\n### {} (revision {}, SOP {})\n\nStarted by: {}. Cancelled by: {}.\n\n| step | title | kind | roles |\n|---|---|---|---|\n",
            definition.code(),
            definition.revision(),
            definition.sop_number(),
            roles(&definition.policy().start_roles),
            roles(&definition.policy().cancel_roles),
        ));
        for step in definition.steps() {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                step.number,
                step.text.english.replace('|', "/"),
                if step.flow.is_decision() {
                    "decision"
                } else {
                    "task"
                },
                roles(&step.roles)
            ));
        }
    }
    out
}

fn roles(roles: &[Role]) -> String {
    if roles.is_empty() {
        "—".to_owned()
    } else {
        roles
            .iter()
            .map(|role| role.code())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
