//! Thin adapters for the agents' API (enrolment, inventory, the job stream), the officers'
//! agent administration, and restores to agents.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, id, opt_id, overwrite_mode};
use super::pb::{self, *};
use super::{Ctx, caller, status};
use crate::app::restore_requests::{RestorePlan, RestoreRequestView};
use crate::app::{AgentCaller, AppError, SpecDifference, StartRestore};
use crate::catalog::{
    AgencyId, AgentId, AgentRecord, PlanId, RequestId, RestoreId, RestoreRecord, ServerId,
};
use crate::restic::{ResticRepo, Secret};

type Reply<T> = Result<Response<T>, Status>;

/// How often a connected agent's credential is checked again (a revoked agent is also
/// cut off at once by the revocation itself when it is connected to the same daemon).
const RECHECK_EVERY: Duration = Duration::from_secs(30);

fn agent_caller<T>(request: &Request<T>) -> Result<AgentCaller, Status> {
    request
        .extensions()
        .get::<AgentCaller>()
        .cloned()
        .ok_or_else(|| Status::internal("the request bypassed agent authentication"))
}

fn mismatches(differences: &[SpecDifference]) -> Vec<SpecMismatch> {
    differences
        .iter()
        .map(|difference| SpecMismatch {
            field: difference.field.clone(),
            declared: difference.declared.clone().unwrap_or_default(),
            observed: difference.observed.clone().unwrap_or_default(),
        })
        .collect()
}

fn agent(record: &AgentRecord, connected: bool, now: chrono::DateTime<chrono::Utc>) -> pb::Agent {
    pb::Agent {
        id: record.id.0,
        server_id: record.server_id.map_or(0, |id| id.0),
        agency_id: record.agency_id.0,
        status: record.status(now).into(),
        hostname: record.hostname.clone().unwrap_or_default(),
        version: record.version.clone().unwrap_or_default(),
        enrolled_at: convert::opt_time(record.enrolled_at),
        last_seen_at: convert::opt_time(record.last_seen_at),
        connected,
        revoked_at: convert::opt_time(record.revoked_at),
        request_id: record.request_id.map_or(0, |id| id.0),
        declared_name: record.declared_name.clone().unwrap_or_default(),
    }
}

/// The run that made a snapshot, from its `run:N` tag; 0 when unknown.
fn run_of(tags: &[String]) -> i64 {
    crate::jobs::tags::run_of(tags).map_or(0, |run| run.0)
}

/// The wire form of a restore.
pub fn restore(record: &RestoreRecord) -> pb::Restore {
    pb::Restore {
        id: record.id.0,
        agency_id: record.agency_id.0,
        server_id: record.server_id.0,
        target_server_id: record.target_server_id.0,
        snapshot: record.snapshot.clone(),
        paths: serde_json::from_str(&record.paths_json).unwrap_or_default(),
        excludes: serde_json::from_str(&record.excludes_json).unwrap_or_default(),
        overwrite: record.overwrite.clone(),
        delete: record.delete,
        dry_run: record.dry_run,
        target_dir: record.target_dir.clone(),
        status: record.status.clone(),
        stats_json: record.stats_json.clone().unwrap_or_else(|| "{}".into()),
        error: record.error.clone().unwrap_or_default(),
        queued_at: convert::time(record.queued_at),
        started_at: convert::opt_time(record.started_at),
        finished_at: convert::opt_time(record.finished_at),
        requested_by: record.requested_by.clone(),
        request_id: record.request_id.map_or(0, |id| id.0),
        attempt: record.attempt.clone().unwrap_or_default(),
        use_replica: record.use_replica,
        check_json: record.check_json.clone().unwrap_or_default(),
        plan_id: record.plan_id.map_or(0, |id| id.0),
    }
}

fn restore_request_status(view: &RestoreRequestView) -> RestoreRequestStatus {
    let plan = view.plan.as_ref();
    RestoreRequestStatus {
        request_id: view.request.0,
        state: view.state.clone(),
        plan_json: plan.map(|p| p.plan_json.clone()).unwrap_or_default(),
        plan_version: plan.map_or(0, |p| p.version),
        plan_digest: plan.map(|p| p.digest.clone()).unwrap_or_default(),
        planned_by: plan.map(|p| p.created_by.clone()).unwrap_or_default(),
        approved_by: plan.and_then(|p| p.approved_by.clone()).unwrap_or_default(),
        approved_at: convert::opt_time(plan.and_then(|p| p.approved_at)),
        older_confirmed_by: plan
            .and_then(|p| p.older_confirmed_by.clone())
            .unwrap_or_default(),
        older_confirmed_at: convert::opt_time(plan.and_then(|p| p.older_confirmed_at)),
        attempts: view.attempts.iter().map(restore).collect(),
        verdicts_json: view
            .verdicts
            .iter()
            .map(|verdict| serde_json::to_string(verdict).unwrap_or_default())
            .collect(),
    }
}

/// The agents' service.
pub struct Agents(pub Ctx);

type DownStream = Pin<Box<dyn Stream<Item = Result<DaemonMessage, Status>> + Send>>;

#[tonic::async_trait]
impl agent_service_server::AgentService for Agents {
    async fn enroll(&self, request: Request<EnrollRequest>) -> Reply<EnrollResponse> {
        let peer = request.remote_addr().map(|addr| addr.ip());
        let message = request.into_inner();
        let enrolled = self
            .0
            .app
            .enroll_agent(
                &message.enrollment_token,
                &message.hostname,
                &message.agent_version,
                self.0.now(),
            )
            .await;
        let (record, credential) = match enrolled {
            Ok(enrolled) => enrolled,
            Err(error) => {
                // A refused enrolment token is a guess like a refused bearer token.
                if let (AppError::Unauthenticated(_), Some(peer)) = (&error, peer) {
                    self.0.authentication_failed(peer, "enroll").await;
                }
                return Err(status(error));
            }
        };
        tracing::info!(agent = %record.id, server = ?record.server_id, request = ?record.request_id, hostname = %message.hostname, "agent enrolled");
        Ok(Response::new(EnrollResponse {
            agent_id: record.id.0,
            server_id: record.server_id.map_or(0, |id| id.0),
            agency_id: record.agency_id.0,
            credential: credential.expose().to_owned(),
        }))
    }

    async fn report_inventory(
        &self,
        request: Request<ReportInventoryRequest>,
    ) -> Reply<ReportInventoryResponse> {
        let agent = agent_caller(&request)?;
        let message = request.into_inner();
        let differences = self
            .0
            .app
            .record_inventory(&agent, &message.inventory_json, self.0.now())
            .await
            .map_err(status)?;
        Ok(Response::new(ReportInventoryResponse {
            mismatches: mismatches(&differences),
        }))
    }

    type JobsStream = DownStream;

    async fn jobs(&self, request: Request<Streaming<AgentMessage>>) -> Reply<Self::JobsStream> {
        let agent = agent_caller(&request)?.agent;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its hello"))?;
        let Some(agent_message::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message must be `hello`",
            ));
        };
        let Some(server) = agent.server_id else {
            return Err(Status::failed_precondition(format!(
                "agent {} was enrolled at the handover of request {}; it receives work once the handover registers its server",
                agent.id,
                agent.request_id.map_or(0, |id| id.0)
            )));
        };
        let (outbound, receiver) = tokio::sync::mpsc::channel(64);
        let hub = self.0.hub.clone();
        let Some(connection) =
            hub.register_with(agent.id, server, outbound.clone(), hello.features)
        else {
            return Err(Status::unavailable("the daemon is stopping"));
        };
        tracing::info!(agent = %agent.id, server = %server, version = %hello.version, hostname = %hello.hostname, "agent connected");
        let app = self.0.app.clone();
        tokio::spawn(async move {
            let mut recheck = tokio::time::interval(RECHECK_EVERY);
            recheck.tick().await;
            // One wait for the daemon's stop, not one per message.
            let stopping = hub.closed();
            tokio::pin!(stopping);
            loop {
                tokio::select! {
                    message = inbound.next() => {
                        let message = match message {
                            Some(Ok(message)) => message,
                            Some(Err(error)) => {
                                tracing::info!(agent = %agent.id, %error, "agent stream broke");
                                break;
                            }
                            None => break,
                        };
                        if let Err(refusal) = hub.route(agent.id, connection, message).await {
                            tracing::warn!(agent = %agent.id, message = refusal.message(), "agent sent a message outside its jobs; closing its stream");
                            let _ = outbound.send(Err(refusal)).await;
                            break;
                        }
                    }
                    () = &mut stopping => break,
                    _ = recheck.tick() => {
                        if !app.agent_active(agent.id).await.unwrap_or(true) {
                            let _ = outbound.send(Err(Status::unauthenticated(format!("agent {} was revoked", agent.id)))).await;
                            break;
                        }
                    }
                }
            }
            hub.unregister(agent.id, connection);
            tracing::info!(agent = %agent.id, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// The officers' agent administration.
pub struct AgentAdmin(pub Ctx);

#[tonic::async_trait]
impl agent_admin_service_server::AgentAdminService for AgentAdmin {
    async fn create_enrollment_token(
        &self,
        request: Request<CreateEnrollmentTokenRequest>,
    ) -> Reply<EnrollmentToken> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let hours = (message.valid_hours != 0).then_some(message.valid_hours);
        let handover = opt_id("request_id", message.request_id)?;
        let (record, secret) = match (opt_id("server_id", message.server_id)?, handover) {
            (Some(server), None) => self
                .0
                .app
                .create_enrollment_token(
                    &caller.account.username,
                    ServerId(server),
                    hours,
                    self.0.now(),
                )
                .await
                .map_err(status)?,
            (None, Some(request)) => self
                .0
                .app
                .create_handover_enrollment_token(
                    &caller.account.username,
                    RequestId(request),
                    &message.declared_name,
                    hours,
                    self.0.now(),
                )
                .await
                .map_err(status)?,
            _ => {
                return Err(Status::invalid_argument(
                    "give either server_id (a registered server) or request_id and declared_name (a server at its handover)",
                ));
            }
        };
        Ok(Response::new(EnrollmentToken {
            agent_id: record.id.0,
            token: secret.expose().to_owned(),
            expires_at: convert::time(record.enrollment_expires_at),
        }))
    }

    async fn list_agents(&self, request: Request<ListAgentsRequest>) -> Reply<ListAgentsResponse> {
        let caller = caller(&request)?;
        let agency = opt_id("agency_id", request.get_ref().agency_id)?.map(AgencyId);
        let records = self
            .0
            .app
            .agents_for(&caller, agency)
            .await
            .map_err(status)?;
        let now = self.0.now();
        Ok(Response::new(ListAgentsResponse {
            agents: records
                .iter()
                .map(|record| agent(record, self.0.hub.connected_agent(record.id), now))
                .collect(),
        }))
    }

    async fn revoke_agent(&self, request: Request<RevokeAgentRequest>) -> Reply<pb::Agent> {
        let caller = caller(&request)?;
        let agent_id = AgentId(id("agent_id", request.get_ref().agent_id)?);
        let record = self
            .0
            .app
            .revoke_agent(&caller.account.username, agent_id, self.0.now())
            .await
            .map_err(status)?;
        self.0
            .hub
            .kick(agent_id, &format!("agent {agent_id} was revoked"));
        Ok(Response::new(agent(&record, false, self.0.now())))
    }

    async fn get_inventory(&self, request: Request<GetInventoryRequest>) -> Reply<InventoryReport> {
        let caller = caller(&request)?;
        let server = ServerId(id("server_id", request.get_ref().server_id)?);
        let view = self
            .0
            .app
            .inventory_for(&caller, server)
            .await
            .map_err(status)?;
        let (reported_at, inventory_json, mismatches_found) = match &view.latest {
            Some(latest) => (
                convert::time(latest.reported_at),
                latest.inventory_json.clone(),
                serde_json::from_str::<Vec<SpecDifference>>(&latest.mismatches_json)
                    .unwrap_or_default(),
            ),
            None => (String::new(), String::new(), Vec::new()),
        };
        Ok(Response::new(InventoryReport {
            server_id: server.0,
            reported_at,
            inventory_json,
            mismatches: mismatches(&mismatches_found),
            reports: view.reports,
        }))
    }
}

/// Restores to agents.
pub struct Restores(pub Ctx);

/// Entries a listing or a search returns when the caller names no limit, and the most
/// it may ask for.
const FILES_DEFAULT: u32 = 1000;
const FILES_MAX: u32 = 100_000;

fn files_limit(limit: u32) -> usize {
    (if limit == 0 {
        FILES_DEFAULT
    } else {
        limit.min(FILES_MAX)
    }) as usize
}

/// The wire form of a snapshot's entry.
fn snapshot_file(listed: &crate::engine::browse::Listed) -> SnapshotFile {
    let node = &listed.node;
    SnapshotFile {
        path: String::from_utf8_lossy(&listed.path).into_owned(),
        kind: crate::remote::kind_name(node.kind).into(),
        mode: node.mode,
        uid: node.uid,
        gid: node.gid,
        size: node.size,
        mtime: convert::time(chrono::DateTime::from_timestamp_nanos(node.mtime_ns)),
        link_target: node
            .link_target
            .as_deref()
            .map(|target| String::from_utf8_lossy(target).into_owned())
            .unwrap_or_default(),
    }
}

/// A restic plan's entry as the wire gives a snapshot's entry.
fn restic_file(node: &crate::restic::ResticNode) -> SnapshotFile {
    use crate::restic::NodeType;
    let kind = match &node.node_type {
        NodeType::Dev => "blockdev".to_owned(),
        other => other.to_string(),
    };
    SnapshotFile {
        path: node.path.clone(),
        kind,
        mode: node.permissions(),
        uid: node.uid,
        gid: node.gid,
        size: node.size,
        mtime: node.mtime.map(convert::time).unwrap_or_default(),
        link_target: node.link_target.clone().unwrap_or_default(),
    }
}

/// The answer to a browsing request that could not be served.
fn browse_status(error: crate::remote::BrowseError, what: impl std::fmt::Display) -> Status {
    match error {
        crate::remote::BrowseError::Request(message) => Status::invalid_argument(message),
        crate::remote::BrowseError::Repository(error) => {
            tracing::warn!(%error, "cannot read {what}");
            Status::unavailable(format!(
                "{what} cannot be read now; the daemon's log has the cause"
            ))
        }
    }
}

fn erase_status(error: crate::jobs::erase::EraseError, server: ServerId) -> Status {
    use crate::jobs::erase::EraseError;
    match error {
        EraseError::Request(message) => Status::invalid_argument(message),
        EraseError::Held(held) => Status::failed_precondition(format!(
            "held snapshots would change ({}): release their holds first",
            held.join(", ")
        )),
        EraseError::Repository(error) => {
            tracing::error!(%error, %server, "erasure failed");
            Status::unavailable(format!(
                "the agency's repository (server {server}) cannot be erased now; the daemon's \
                 log has the cause, and running the erasure again finishes it"
            ))
        }
    }
}

impl Restores {
    /// The server `server_id` names with its agency's code, if `caller` may read its
    /// snapshots, and the daemon's repositories.
    async fn readable_server(
        &self,
        caller: &crate::app::Caller,
        server_id: i64,
    ) -> Result<
        (
            crate::catalog::Server,
            String,
            std::sync::Arc<crate::jobs::Repositories>,
        ),
        Status,
    > {
        let server = ServerId(id("server_id", server_id)?);
        let (record, code) = self
            .0
            .app
            .server_with_agency_code(caller, server)
            .await
            .map_err(status)?;
        let Some(repositories) = self.0.repositories.clone() else {
            return Err(Status::unavailable(
                "this daemon has no repositories configured",
            ));
        };
        Ok((record, code, repositories))
    }

    /// The restic repository of `plan`, if `caller` may read the snapshots of the
    /// server `server_id` names and the plan is one of the server's agency on restic.
    async fn restic_plan(
        &self,
        caller: &crate::app::Caller,
        server_id: i64,
        plan: PlanId,
    ) -> Result<(std::sync::Arc<crate::jobs::Repositories>, ResticRepo), Status> {
        let (record, _, repositories) = self.readable_server(caller, server_id).await?;
        let (location, password, env) = self
            .0
            .app
            .restic_repository_of(plan, record.agency_id)
            .await
            .map_err(status)?;
        let mut repo = ResticRepo::new(location, Secret::new(password.expose()));
        repo.env = env;
        Ok((repositories, repo))
    }

    /// The server `server_id` names, if `caller` may read its snapshots, opened with its
    /// agency's repository; `read` runs on a blocking thread. Repository errors are
    /// logged and answered as unavailable, bad requests as invalid arguments.
    async fn browse<T: Send + 'static>(
        &self,
        caller: &crate::app::Caller,
        server_id: i64,
        read: impl FnOnce(
            &crate::engine::Repository,
            &crate::catalog::Server,
        ) -> Result<T, crate::remote::BrowseError>
        + Send
        + 'static,
    ) -> Result<T, Status> {
        let (record, code, repositories) = self.readable_server(caller, server_id).await?;
        let server = record.id;
        let handle = tokio::runtime::Handle::current();
        let turn = self.0.browsing_turn().await?;
        tokio::task::spawn_blocking(move || {
            // Held to the end of the work, even when the caller has gone.
            let _turn = turn;
            let repository = repositories
                .open(&handle, &code, None, None)
                .map_err(crate::remote::BrowseError::Repository)?;
            read(&repository, &record)
        })
        .await
        .map_err(|error| Status::internal(error.to_string()))?
        .map_err(|error| {
            browse_status(
                error,
                format_args!("the agency's repository (server {server})"),
            )
        })
    }
}

#[tonic::async_trait]
impl restore_service_server::RestoreService for Restores {
    async fn start_restore(&self, request: Request<StartRestoreRequest>) -> Reply<pb::Restore> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let server = ServerId(id("server_id", message.server_id)?);
        let target = opt_id("target_server_id", message.target_server_id)?.map_or(server, ServerId);
        let record = self
            .0
            .app
            .start_restore(
                &caller,
                StartRestore {
                    server_id: server,
                    snapshot: message.snapshot,
                    paths: message.paths,
                    excludes: message.excludes,
                    overwrite: overwrite_mode(&message.overwrite)?,
                    delete: message.delete,
                    dry_run: message.dry_run,
                    target_server_id: target,
                    target_dir: message.target_dir,
                    request_id: opt_id("request_id", message.request_id)?.map(RequestId),
                    plan_id: opt_id("plan_id", message.plan_id)?.map(PlanId),
                },
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(restore(&record)))
    }

    async fn get_restore(&self, request: Request<GetRestoreRequest>) -> Reply<pb::Restore> {
        let caller = caller(&request)?;
        let restore_id = RestoreId(id("id", request.get_ref().id)?);
        let record = self
            .0
            .app
            .restore_for(&caller, restore_id)
            .await
            .map_err(status)?;
        Ok(Response::new(restore(&record)))
    }

    async fn list_restores(
        &self,
        request: Request<ListRestoresRequest>,
    ) -> Reply<ListRestoresResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let agency = opt_id("agency_id", message.agency_id)?.map(AgencyId);
        let limit = if message.limit == 0 {
            100
        } else {
            message.limit
        };
        let records = self
            .0
            .app
            .restores_for(&caller, agency, limit)
            .await
            .map_err(status)?;
        Ok(Response::new(ListRestoresResponse {
            restores: records.iter().map(restore).collect(),
        }))
    }

    async fn set_restore_plan(
        &self,
        request: Request<SetRestorePlanRequest>,
    ) -> Reply<RestoreRequestStatus> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let request_id = RequestId(id("request_id", message.request_id)?);
        let plan: RestorePlan = serde_json::from_str(&message.plan_json).map_err(|error| {
            Status::invalid_argument(format!(
                "the restore plan is not valid JSON for a plan: {error}"
            ))
        })?;
        let app = &self.0.app;
        app.set_restore_plan(&caller, request_id, plan, self.0.now())
            .await
            .map_err(status)?;
        let view = app
            .restore_request_for(&caller, request_id)
            .await
            .map_err(status)?;
        Ok(Response::new(restore_request_status(&view)))
    }

    async fn get_restore_request(
        &self,
        request: Request<GetRestoreRequestRequest>,
    ) -> Reply<RestoreRequestStatus> {
        let caller = caller(&request)?;
        let request_id = RequestId(id("request_id", request.get_ref().request_id)?);
        let view = self
            .0
            .app
            .restore_request_for(&caller, request_id)
            .await
            .map_err(status)?;
        Ok(Response::new(restore_request_status(&view)))
    }

    async fn confirm_older_snapshot(
        &self,
        request: Request<ConfirmOlderSnapshotRequest>,
    ) -> Reply<RestoreRequestStatus> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let request_id = RequestId(id("request_id", message.request_id)?);
        let app = &self.0.app;
        app.confirm_older_snapshot(&caller, request_id, &message.reason, self.0.now())
            .await
            .map_err(status)?;
        let view = app
            .restore_request_for(&caller, request_id)
            .await
            .map_err(status)?;
        Ok(Response::new(restore_request_status(&view)))
    }

    async fn hold_snapshot(
        &self,
        request: Request<HoldSnapshotRequest>,
    ) -> Reply<HoldSnapshotResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let server = ServerId(id("server_id", message.server_id)?);
        if message.snapshot.is_empty() {
            return Err(Status::invalid_argument(
                "name the snapshot: an id, a unique prefix or `latest`",
            ));
        }
        let app = &self.0.app;
        let reason = app
            .check_snapshot_hold(&caller, &message.reason)
            .map_err(status)?;
        let hold = !message.release;
        let spec = message.snapshot.clone();
        let (named, now) = self
            .browse(&caller, message.server_id, move |repository, record| {
                crate::remote::hold_snapshot(repository, record, &spec, hold)
            })
            .await?;
        let recorded = crate::app::SnapshotHold {
            server,
            snapshot: named.to_hex(),
            now_snapshot: now.to_hex(),
            held: hold,
            changed: named != now,
            reason,
        };
        app.record_snapshot_hold(&caller.account.username, &recorded, self.0.now())
            .await
            .map_err(status)?;
        Ok(Response::new(HoldSnapshotResponse {
            snapshot: recorded.now_snapshot,
            held: hold,
            changed: recorded.changed,
        }))
    }

    async fn erase_files(&self, request: Request<EraseFilesRequest>) -> Reply<EraseFilesResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let server = ServerId(id("server_id", message.server_id)?);
        let reason = self
            .0
            .app
            .check_erasure(&caller, &message.reason)
            .map_err(status)?;
        if message.patterns.iter().all(|p| p.trim().is_empty()) {
            return Err(Status::invalid_argument(
                "name what to take out: at least one pattern",
            ));
        }
        let (record, code, repositories) = self.readable_server(&caller, message.server_id).await?;
        let unreached = self
            .0
            .app
            .restic_plans_of_server(record.agency_id, server)
            .await
            .map_err(status)?;
        let restic_plans_unreached = unreached.iter().map(|plan| plan.0).collect();
        let turn = self.0.browsing_turn().await?;
        let ctx = self.0.clone();
        // The erasure and its audit record run to their end even when the caller has
        // gone (an erasure of a large repository can outlast the caller's deadline).
        let erased = tokio::spawn(async move {
            let handle = tokio::runtime::Handle::current();
            let patterns = message.patterns.clone();
            let (dry_run, now) = (message.dry_run, ctx.now());
            let mut erased = tokio::task::spawn_blocking(move || {
                let _turn = turn;
                let request = crate::jobs::erase::EraseRequest {
                    agency_code: &code,
                    server: &record,
                    patterns: &patterns,
                    dry_run,
                    now,
                };
                crate::jobs::erase::erase(&repositories, &handle, &request)
            })
            .await
            .map_err(|error| Status::internal(error.to_string()))?
            .map_err(|error| erase_status(error, server))?;
            for plan in &unreached {
                erased.notes.push(format!(
                    "plan {plan} keeps the agency's backups in a restic repository, which an \
                     erasure does not reach (restic cannot rewrite a snapshot): if its snapshots \
                     hold the files, they keep them until its retention removes them"
                ));
            }
            if !erased.dry_run {
                let recorded = crate::app::Erasure {
                    server,
                    patterns: message.patterns,
                    replaced: erased
                        .rewritten
                        .iter()
                        .map(|r| (r.from.clone(), r.to.clone().unwrap_or_default()))
                        .collect(),
                    entries: erased
                        .rewritten
                        .iter()
                        .map(|r| r.removed.len() as u64)
                        .sum(),
                    replica: erased.replica,
                    replica_changed: erased.replica_copies_replaced + erased.replica_rewritten,
                    bytes_marked: erased.bytes_marked,
                    notes: erased.notes.clone(),
                    remaining: erased
                        .remaining
                        .iter()
                        .map(|r| {
                            let place = if r.replica { "replica" } else { "primary" };
                            format!("{place}:{}", r.snapshot.to_hex())
                        })
                        .chain(unreached.iter().map(|plan| format!("restic-plan:{plan}")))
                        .collect(),
                    reason,
                };
                ctx.app
                    .record_erasure(&caller.account.username, &recorded, ctx.now())
                    .await
                    .map_err(status)?;
            }
            Ok::<_, Status>(erased)
        })
        .await
        .map_err(|error| Status::internal(error.to_string()))??;
        Ok(Response::new(EraseFilesResponse {
            restic_plans_unreached,
            snapshots: erased
                .rewritten
                .into_iter()
                .map(|r| ErasedSnapshot {
                    snapshot: r.from,
                    replaced_by: r.to.unwrap_or_default(),
                    paths_total: r.removed.len() as u64,
                    paths: r.removed.into_iter().take(100).collect(),
                })
                .collect(),
            snapshots_unchanged: erased.unchanged as u64,
            dry_run: erased.dry_run,
            replica: erased.replica,
            replica_copies_replaced: erased.replica_copies_replaced,
            replica_rewritten: erased.replica_rewritten,
            packs_repacked: erased.packs_repacked,
            bytes_marked: erased.bytes_marked,
            deletable_after: convert::opt_time(erased.deletable_after),
            notes: erased.notes,
            remaining: erased
                .remaining
                .iter()
                .map(|r| pb::RemainingMatch {
                    snapshot: r.snapshot.to_hex(),
                    replica: r.replica,
                    held: r.held,
                    paths_total: r.paths as u64,
                })
                .collect(),
        }))
    }

    async fn list_server_snapshots(
        &self,
        request: Request<ListServerSnapshotsRequest>,
    ) -> Reply<ListServerSnapshotsResponse> {
        let caller = caller(&request)?;
        let server_id = request.get_ref().server_id;
        if let Some(plan) = opt_id("plan_id", request.get_ref().plan_id)?.map(PlanId) {
            let (repositories, repo) = self.restic_plan(&caller, server_id, plan).await?;
            let _turn = self.0.browsing_turn().await?;
            let listed = crate::remote::restic::restic_snapshots(&repositories, &repo)
                .await
                .map_err(|error| {
                    tracing::warn!(%error, %plan, "cannot list a restic repository's snapshots");
                    Status::unavailable(format!(
                        "the restic repository of plan {plan} cannot be read now; the daemon's log has the cause"
                    ))
                })?;
            return Ok(Response::new(ListServerSnapshotsResponse {
                snapshots: listed
                    .iter()
                    .map(|snapshot| ServerSnapshot {
                        id: crate::remote::restic::logical_id(snapshot).to_owned(),
                        time: convert::time(snapshot.time),
                        paths: snapshot.paths.clone(),
                        files: 0,
                        bytes: 0,
                        run_id: run_of(&snapshot.tags),
                        host: snapshot.host.clone(),
                        held: snapshot.tags.iter().any(|t| t == crate::app::HOLD_TAG),
                    })
                    .collect(),
            }));
        }
        let listed = self
            .browse(&caller, server_id, |repository, record| {
                crate::remote::server_snapshots(repository, record)
                    .map_err(crate::remote::BrowseError::Repository)
            })
            .await?;
        Ok(Response::new(ListServerSnapshotsResponse {
            snapshots: listed
                .iter()
                .map(|(id, snapshot)| ServerSnapshot {
                    id: id.to_hex(),
                    time: convert::time(snapshot.time),
                    paths: snapshot.paths.clone(),
                    files: snapshot.summary.total_files_processed as i64,
                    bytes: snapshot.summary.total_bytes_processed as i64,
                    run_id: run_of(&snapshot.tags),
                    host: snapshot.hostname.clone(),
                    held: snapshot.tags.iter().any(|t| t == crate::app::HOLD_TAG),
                })
                .collect(),
        }))
    }

    async fn list_snapshot_files(
        &self,
        request: Request<ListSnapshotFilesRequest>,
    ) -> Reply<ListSnapshotFilesResponse> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        if request.snapshot.is_empty() {
            return Err(Status::invalid_argument(
                "name the snapshot: an id, a unique prefix or `latest`",
            ));
        }
        let limit = files_limit(request.limit);
        if let Some(plan) = opt_id("plan_id", request.plan_id)?.map(PlanId) {
            let (repositories, repo) = self.restic_plan(&caller, request.server_id, plan).await?;
            let _turn = self.0.browsing_turn().await?;
            let listing = crate::remote::restic::list_restic_files(
                &repositories,
                &repo,
                plan,
                &request.snapshot,
                &request.path,
                request.recursive,
                limit,
            )
            .await
            .map_err(|error| {
                browse_status(error, format_args!("the restic repository of plan {plan}"))
            })?;
            return Ok(Response::new(ListSnapshotFilesResponse {
                snapshot_id: crate::remote::restic::logical_id(&listing.snapshot).to_owned(),
                files: listing.entries.iter().map(restic_file).collect(),
                truncated: listing.truncated,
            }));
        }
        let (snapshot, found) = self
            .browse(&caller, request.server_id, move |repository, record| {
                crate::remote::list_server_files(
                    repository,
                    record,
                    &request.snapshot,
                    &request.path,
                    request.recursive,
                    limit,
                )
            })
            .await?;
        Ok(Response::new(ListSnapshotFilesResponse {
            snapshot_id: snapshot.to_hex(),
            files: found.entries.iter().map(snapshot_file).collect(),
            truncated: found.truncated,
        }))
    }

    async fn find_snapshot_files(
        &self,
        request: Request<FindSnapshotFilesRequest>,
    ) -> Reply<FindSnapshotFilesResponse> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let patterns = crate::engine::browse::Patterns::new(&request.patterns, request.ignore_case)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let limit = files_limit(request.limit);
        let spec = (!request.snapshot.is_empty()).then_some(request.snapshot);
        if let Some(plan) = opt_id("plan_id", request.plan_id)?.map(PlanId) {
            let (repositories, repo) = self.restic_plan(&caller, request.server_id, plan).await?;
            let _turn = self.0.browsing_turn().await?;
            let found = crate::remote::restic::find_restic_files(
                &repositories,
                &repo,
                plan,
                spec.as_deref(),
                &patterns,
                limit,
            )
            .await
            .map_err(|error| {
                browse_status(error, format_args!("the restic repository of plan {plan}"))
            })?;
            return Ok(Response::new(FindSnapshotFilesResponse {
                snapshots: found
                    .snapshots
                    .iter()
                    .map(|(snapshot, nodes)| SnapshotMatches {
                        snapshot_id: crate::remote::restic::logical_id(snapshot).to_owned(),
                        time: convert::time(snapshot.time),
                        run_id: run_of(&snapshot.tags),
                        files: nodes.iter().map(restic_file).collect(),
                    })
                    .collect(),
                truncated: found.truncated,
            }));
        }
        let found = self
            .browse(&caller, request.server_id, move |repository, record| {
                crate::remote::find_server_files(
                    repository,
                    record,
                    spec.as_deref(),
                    patterns,
                    limit,
                )
            })
            .await?;
        Ok(Response::new(FindSnapshotFilesResponse {
            snapshots: found
                .snapshots
                .iter()
                .map(|((id, snapshot), found)| SnapshotMatches {
                    snapshot_id: id.to_hex(),
                    time: convert::time(snapshot.time),
                    run_id: run_of(&snapshot.tags),
                    files: found.entries.iter().map(snapshot_file).collect(),
                })
                .collect(),
            truncated: found.truncated,
        }))
    }
}
