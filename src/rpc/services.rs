//! The service implementations: decode, call one use case, encode.

use chrono::TimeDelta;
use tonic::{Request, Response, Status};

use super::convert::{self, id, opt_id, opt_text, to_json};
use super::pb::{self, *};
use super::{Ctx, caller, status};
use crate::app::{
    AuditCheckpoint, NewAccountInput, NewPersonInput, ObservedServer, OpenRequest, RequestDetails,
    report_html,
};
use crate::catalog::{
    AccountId, AgencyId, NewAgency, NewRack, PlanId, PowerFeedId, RequestFilter, RequestId, RunId,
    ServerId, TokenId,
};
use crate::workflow::{Answer, DocumentKind, DocumentRef, Event, StepNumber};

type Reply<T> = Result<Response<T>, Status>;

/// Largest message the daemon accepts or sends (a request's application, a document's
/// HTML, a page of the audit trail).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Every service of the API, ready for a tonic router.
pub fn routes(ctx: &Ctx) -> tonic::service::Routes {
    macro_rules! limited {
        ($($server:ident)::+, $service:expr) => {
            pb::$($server)::+::new($service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        };
    }
    tonic::service::Routes::new(limited!(
        auth_service_server::AuthServiceServer,
        Auth(ctx.clone())
    ))
    .add_service(limited!(
        directory_service_server::DirectoryServiceServer,
        Directory(ctx.clone())
    ))
    .add_service(limited!(
        request_service_server::RequestServiceServer,
        Requests(ctx.clone())
    ))
    .add_service(limited!(
        asset_service_server::AssetServiceServer,
        Assets(ctx.clone())
    ))
    .add_service(limited!(
        capacity_service_server::CapacityServiceServer,
        Capacity(ctx.clone())
    ))
    .add_service(limited!(
        document_service_server::DocumentServiceServer,
        Documents(ctx.clone())
    ))
    .add_service(limited!(
        audit_service_server::AuditServiceServer,
        Audit(ctx.clone())
    ))
    .add_service(limited!(
        report_service_server::ReportServiceServer,
        Reports(ctx.clone())
    ))
    .add_service(limited!(
        plan_service_server::PlanServiceServer,
        Plans(ctx.clone())
    ))
    .add_service(limited!(
        run_service_server::RunServiceServer,
        Runs(ctx.clone())
    ))
    .add_service(
        // Chunks of up to 4 MiB that do not compress travel on the agents' stream.
        agent_service_server::AgentServiceServer::new(super::agents::Agents(ctx.clone()))
            .max_decoding_message_size(crate::agent::MAX_STREAM_MESSAGE)
            .max_encoding_message_size(crate::agent::MAX_STREAM_MESSAGE),
    )
    .add_service(limited!(
        agent_admin_service_server::AgentAdminServiceServer,
        super::agents::AgentAdmin(ctx.clone())
    ))
    .add_service(limited!(
        restore_service_server::RestoreServiceServer,
        super::agents::Restores(ctx.clone())
    ))
}

fn json_field<T: serde::de::DeserializeOwned>(field: &str, text: &str) -> Result<T, Status> {
    serde_json::from_str(text)
        .map_err(|error| Status::invalid_argument(format!("{field} is not valid: {error}")))
}

fn documents(references: Vec<String>) -> Vec<DocumentRef> {
    references
        .into_iter()
        .filter_map(|reference| opt_text(&reference))
        .map(DocumentRef)
        .collect()
}

fn step(value: u32) -> Result<StepNumber, Status> {
    if value == 0 {
        Err(Status::invalid_argument(
            "step is required: the number of the request's current step",
        ))
    } else {
        Ok(StepNumber(value))
    }
}

struct Auth(Ctx);

#[tonic::async_trait]
impl auth_service_server::AuthService for Auth {
    async fn who_am_i(&self, request: Request<WhoAmIRequest>) -> Reply<WhoAmIResponse> {
        let caller = caller(&request)?;
        Ok(Response::new(WhoAmIResponse {
            username: caller.account.username.clone(),
            roles: caller
                .account
                .roles
                .iter()
                .map(|role| role.code().to_owned())
                .collect(),
            agency_id: caller.account.agency_id.map_or(0, |id| id.0),
            token_id: caller.token.id.0,
            token_expires_at: convert::opt_time(caller.token.expires_at),
        }))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Reply<CreateTokenResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let ttl = match message.ttl_seconds {
            0 => None,
            seconds if seconds < 0 => {
                return Err(Status::invalid_argument(
                    "ttl_seconds must be positive, or 0 for a token that does not expire",
                ));
            }
            seconds => Some(
                TimeDelta::try_seconds(seconds)
                    .ok_or_else(|| Status::invalid_argument("ttl_seconds is too large"))?,
            ),
        };
        let issued = self
            .0
            .app
            .create_token(
                &caller.account.username,
                opt_text(&message.username).as_deref(),
                &message.label,
                ttl,
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(CreateTokenResponse {
            token: issued.secret.expose().to_owned(),
            info: Some(convert::token(&issued.record)),
        }))
    }

    async fn list_tokens(&self, request: Request<ListTokensRequest>) -> Reply<ListTokensResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let tokens = self
            .0
            .app
            .list_tokens(
                &caller.account.username,
                opt_text(&message.username).as_deref(),
                message.include_inactive,
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(ListTokensResponse {
            tokens: tokens.iter().map(convert::token).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Reply<RevokeTokenResponse> {
        let caller = caller(&request)?;
        let token = id("token_id", request.get_ref().token_id)?;
        self.0
            .app
            .revoke_token(&caller.account.username, TokenId(token), self.0.now())
            .await
            .map_err(status)?;
        Ok(Response::new(RevokeTokenResponse {}))
    }
}

struct Directory(Ctx);

impl Directory {
    async fn account_id(&self, username: &str) -> Result<AccountId, Status> {
        let username =
            opt_text(username).ok_or_else(|| Status::invalid_argument("username is required"))?;
        Ok(self.0.app.account(&username).await.map_err(status)?.id)
    }
}

#[tonic::async_trait]
impl directory_service_server::DirectoryService for Directory {
    async fn create_agency(&self, request: Request<CreateAgencyRequest>) -> Reply<pb::Agency> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let kind = message
            .kind
            .trim()
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| {
                Status::invalid_argument(format!(
                    "agency kind `{}` is not one of skpd, kabupaten, kota",
                    message.kind
                ))
            })?;
        let agency = self
            .0
            .app
            .create_agency(
                &caller.account.username,
                NewAgency {
                    code: message.code,
                    name: message.name,
                    kind,
                    address: message.address,
                    phone: opt_text(&message.phone),
                },
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::agency(&agency)))
    }

    async fn list_agencies(
        &self,
        request: Request<ListAgenciesRequest>,
    ) -> Reply<ListAgenciesResponse> {
        let caller = caller(&request)?;
        let agencies = self.0.app.agencies_for(&caller).await.map_err(status)?;
        Ok(Response::new(ListAgenciesResponse {
            agencies: agencies.iter().map(convert::agency).collect(),
        }))
    }

    async fn create_person(&self, request: Request<CreatePersonRequest>) -> Reply<pb::Person> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let person = self
            .0
            .app
            .create_person(
                &caller.account.username,
                NewPersonInput {
                    name: message.name,
                    nip: message.nip,
                    position: opt_text(&message.position),
                    agency_id: opt_id("agency_id", message.agency_id)?.map(AgencyId),
                    phone: opt_text(&message.phone),
                },
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::person(&person)))
    }

    async fn create_account(&self, request: Request<CreateAccountRequest>) -> Reply<pb::Account> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let account = self
            .0
            .app
            .create_account(
                &caller.account.username,
                NewAccountInput {
                    username: message.username,
                    person_id: opt_id("person_id", message.person_id)?
                        .map(crate::catalog::PersonId),
                    agency_id: opt_id("agency_id", message.agency_id)?.map(AgencyId),
                    roles: convert::roles(&message.roles)?,
                },
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::account(&account)))
    }

    async fn list_accounts(
        &self,
        request: Request<ListAccountsRequest>,
    ) -> Reply<ListAccountsResponse> {
        let caller = caller(&request)?;
        let accounts = self
            .0
            .app
            .accounts(&caller.account.username)
            .await
            .map_err(status)?;
        Ok(Response::new(ListAccountsResponse {
            accounts: accounts.iter().map(convert::account).collect(),
        }))
    }

    async fn set_account_active(
        &self,
        request: Request<SetAccountActiveRequest>,
    ) -> Reply<pb::Account> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let account = self.account_id(&message.username).await?;
        let account = self
            .0
            .app
            .set_account_active(
                &caller.account.username,
                account,
                message.active,
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::account(&account)))
    }

    async fn set_account_roles(
        &self,
        request: Request<SetAccountRolesRequest>,
    ) -> Reply<pb::Account> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let account = self.account_id(&message.username).await?;
        let roles = convert::roles(&message.roles)?;
        let account = self
            .0
            .app
            .set_account_roles(&caller.account.username, account, roles, self.0.now())
            .await
            .map_err(status)?;
        Ok(Response::new(convert::account(&account)))
    }
}

struct Requests(Ctx);

impl Requests {
    async fn submit(
        &self,
        username: &str,
        request: i64,
        event: Event,
    ) -> Reply<pb::RequestOutcome> {
        let request = RequestId(id("request_id", request)?);
        let outcome = self
            .0
            .app
            .submit(username, request, event, self.0.now())
            .await
            .map_err(status)?;
        Ok(Response::new(convert::outcome(&outcome)?))
    }
}

#[tonic::async_trait]
impl request_service_server::RequestService for Requests {
    async fn open_request(
        &self,
        request: Request<OpenRequestRequest>,
    ) -> Reply<pb::RequestOutcome> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let procedure = opt_text(&message.procedure)
            .ok_or_else(|| Status::invalid_argument("procedure is required"))?;
        let agency = AgencyId(id("agency_id", message.agency_id)?);
        if message.application_json.trim().is_empty() {
            return Err(Status::invalid_argument(
                "application_json is required: the request's form as JSON",
            ));
        }
        let details: RequestDetails = json_field(
            "the request form (application_json)",
            &message.application_json,
        )?;
        let outcome = self
            .0
            .app
            .open_request(
                &caller.account.username,
                &procedure,
                OpenRequest {
                    agency_id: agency,
                    subject: message.subject,
                    details,
                },
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::outcome(&outcome)?))
    }

    async fn get_request(&self, request: Request<GetRequestRequest>) -> Reply<pb::Request> {
        let caller = caller(&request)?;
        let request = RequestId(id("request_id", request.get_ref().request_id)?);
        let view = self
            .0
            .app
            .request_for(&caller, request)
            .await
            .map_err(status)?;
        let mut message = convert::request(&view)?;
        // What each step asks and of whom, so a client can say what comes next.
        if let Ok(definition) = self.0.app.registry().for_request(&view.state) {
            message.procedure_steps = definition
                .steps()
                .iter()
                .map(convert::procedure_step)
                .collect();
        }
        message.current_step_due_at =
            convert::opt_time(self.0.app.current_step_due(&view, self.0.now()));
        Ok(Response::new(message))
    }

    async fn list_requests(
        &self,
        request: Request<ListRequestsRequest>,
    ) -> Reply<ListRequestsResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let filter = RequestFilter {
            procedure: opt_text(&message.procedure),
            active: message.active_only.then_some(true),
            agency_id: opt_id("agency_id", message.agency_id)?.map(AgencyId),
        };
        let after = opt_id("after", message.after)?.map(RequestId);
        let limit = if message.limit == 0 {
            100
        } else {
            message.limit
        };
        let requests = self
            .0
            .app
            .requests_for(&caller, filter, after, limit)
            .await
            .map_err(status)?;
        Ok(Response::new(ListRequestsResponse {
            requests: requests.iter().map(convert::summary).collect(),
        }))
    }

    async fn complete_step(
        &self,
        request: Request<CompleteStepRequest>,
    ) -> Reply<pb::RequestOutcome> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let event = Event::Complete {
            step: step(message.step)?,
            note: opt_text(&message.note),
            documents: documents(message.documents),
        };
        self.submit(&caller.account.username, message.request_id, event)
            .await
    }

    async fn decide_step(&self, request: Request<DecideStepRequest>) -> Reply<pb::RequestOutcome> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let event = Event::Decide {
            step: step(message.step)?,
            answer: if message.yes { Answer::Yes } else { Answer::No },
            reason: message.reason,
            documents: documents(message.documents),
        };
        self.submit(&caller.account.username, message.request_id, event)
            .await
    }

    async fn attach_document(
        &self,
        request: Request<AttachDocumentRequest>,
    ) -> Reply<pb::RequestOutcome> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let document = opt_text(&message.document)
            .ok_or_else(|| Status::invalid_argument("document is required"))?;
        let event = Event::Attach {
            step: step(message.step)?,
            document: DocumentRef(document),
        };
        self.submit(&caller.account.username, message.request_id, event)
            .await
    }

    async fn cancel_request(
        &self,
        request: Request<CancelRequestRequest>,
    ) -> Reply<pb::RequestOutcome> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let event = Event::Cancel {
            reason: message.reason,
        };
        self.submit(&caller.account.username, message.request_id, event)
            .await
    }
}

struct Assets(Ctx);

#[tonic::async_trait]
impl asset_service_server::AssetService for Assets {
    async fn list_servers(
        &self,
        request: Request<ListServersRequest>,
    ) -> Reply<ListServersResponse> {
        let caller = caller(&request)?;
        let agency = opt_id("agency_id", request.get_ref().agency_id)?.map(AgencyId);
        let servers = self
            .0
            .app
            .servers_for(&caller, agency)
            .await
            .map_err(status)?;
        let servers = servers
            .iter()
            .map(|server| {
                Ok(pb::Server {
                    id: server.id.0,
                    agency_id: server.agency_id.0,
                    name: server.name.clone(),
                    status: server.status.to_string(),
                    detail_json: to_json(server)?,
                    mismatches_json: String::new(),
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(ListServersResponse { servers }))
    }

    async fn get_server(&self, request: Request<GetServerRequest>) -> Reply<pb::Server> {
        let caller = caller(&request)?;
        let server = ServerId(id("server_id", request.get_ref().server_id)?);
        let (server, mismatches) = self
            .0
            .app
            .server_for(&caller, server)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Server {
            id: server.id.0,
            agency_id: server.agency_id.0,
            name: server.name.clone(),
            status: server.status.to_string(),
            detail_json: to_json(&server)?,
            mismatches_json: to_json(&mismatches)?,
        }))
    }

    async fn register_server(&self, request: Request<RegisterServerRequest>) -> Reply<pb::Server> {
        /// The JSON of a server to register.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            name: String,
            serial_number: String,
            #[serde(default)]
            server_type: String,
            #[serde(default)]
            brand: String,
            #[serde(default)]
            processor: String,
            #[serde(default)]
            ram: String,
            #[serde(default)]
            motherboard: String,
            #[serde(default)]
            storage: String,
            #[serde(default)]
            psu: String,
            #[serde(default)]
            ip_addresses: Vec<String>,
            #[serde(default = "one")]
            u_size: i64,
            #[serde(default)]
            power_draw_w: i64,
            #[serde(default)]
            bandwidth_mbps: i64,
            #[serde(default)]
            domain: Option<String>,
            #[serde(default)]
            contact: Option<String>,
        }
        fn one() -> i64 {
            1
        }
        let caller = caller(&request)?;
        let message = request.into_inner();
        let agency = AgencyId(id("agency_id", message.agency_id)?);
        let entry: Entry = json_field("the server (server_json)", &message.server_json)?;
        let server = self
            .0
            .app
            .register_server(
                &caller.account.username,
                crate::app::RegisterServer {
                    agency_id: agency,
                    name: entry.name,
                    hardware: crate::catalog::HardwareSpec {
                        serial_number: entry.serial_number,
                        server_type: entry.server_type,
                        brand: entry.brand,
                        processor: entry.processor,
                        ram: entry.ram,
                        motherboard: entry.motherboard,
                        storage: entry.storage,
                        psu: entry.psu,
                    },
                    ip_addresses: entry.ip_addresses,
                    domain: entry.domain,
                    domain_activated_on: None,
                    placement: None,
                    uplink_id: None,
                    u_size: entry.u_size,
                    power_draw_w: entry.power_draw_w,
                    bandwidth_mbps: entry.bandwidth_mbps,
                    validity: crate::app::Validity::Permanent,
                    host_admin_user: None,
                    host_admin_password: None,
                    contact: entry.contact,
                },
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Server {
            id: server.id.0,
            agency_id: server.agency_id.0,
            name: server.name.clone(),
            status: server.status.to_string(),
            detail_json: to_json(&server)?,
            mismatches_json: "[]".into(),
        }))
    }

    async fn record_observation(
        &self,
        request: Request<RecordObservationRequest>,
    ) -> Reply<RecordObservationResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let request = RequestId(id("request_id", message.request_id)?);
        let observed: Vec<ObservedServer> = json_field(
            "the handover measurements (observed_json)",
            &message.observed_json,
        )?;
        self.0
            .app
            .record_handover_observation(&caller.account.username, request, observed, self.0.now())
            .await
            .map_err(status)?;
        Ok(Response::new(RecordObservationResponse {}))
    }

    async fn reveal_host_password(
        &self,
        request: Request<RevealHostPasswordRequest>,
    ) -> Reply<RevealHostPasswordResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let server = ServerId(id("server_id", message.server_id)?);
        let (registered, _) = self
            .0
            .app
            .server_for(&caller, server)
            .await
            .map_err(status)?;
        let password = self
            .0
            .app
            .reveal_host_admin_password(
                &caller.account.username,
                server,
                &message.reason,
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(RevealHostPasswordResponse {
            user: registered.host_admin_user.unwrap_or_default(),
            password: password.expose().to_owned(),
        }))
    }
}

struct Capacity(Ctx);

#[tonic::async_trait]
impl capacity_service_server::CapacityService for Capacity {
    async fn add_power_feed(&self, request: Request<AddPowerFeedRequest>) -> Reply<CapacityItem> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let feed = self
            .0
            .app
            .add_power_feed(
                &caller.account.username,
                &message.name,
                message.capacity_w,
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(CapacityItem {
            id: feed.id.0,
            name: feed.name,
        }))
    }

    async fn add_rack(&self, request: Request<AddRackRequest>) -> Reply<CapacityItem> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let rack = self
            .0
            .app
            .add_rack(
                &caller.account.username,
                NewRack {
                    name: message.name,
                    noc: message.noc,
                    location: message.location,
                    u_size: message.u_size,
                    power_budget_w: message.power_budget_w,
                    power_feed_id: opt_id("power_feed_id", message.power_feed_id)?.map(PowerFeedId),
                },
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(CapacityItem {
            id: rack.id.0,
            name: rack.name,
        }))
    }

    async fn add_uplink(&self, request: Request<AddUplinkRequest>) -> Reply<CapacityItem> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let uplink = self
            .0
            .app
            .add_uplink(
                &caller.account.username,
                &message.name,
                message.capacity_mbps,
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(CapacityItem {
            id: uplink.id.0,
            name: uplink.name,
        }))
    }

    async fn show_capacity(
        &self,
        _request: Request<ShowCapacityRequest>,
    ) -> Reply<ShowCapacityResponse> {
        let report = self
            .0
            .app
            .capacity_for(&crate::app::CapacityNeeds {
                servers: Vec::new(),
            })
            .await
            .map_err(status)?;
        let allocations = self.0.app.live_allocations().await.map_err(status)?;
        Ok(Response::new(ShowCapacityResponse {
            capacity_json: to_json(&serde_json::json!({
                "racks": report.racks,
                "uplinks": report.uplinks,
            }))?,
            allocations_json: to_json(&allocations)?,
        }))
    }
}

struct Documents(Ctx);

#[tonic::async_trait]
impl document_service_server::DocumentService for Documents {
    async fn list_documents(
        &self,
        request: Request<ListDocumentsRequest>,
    ) -> Reply<ListDocumentsResponse> {
        let caller = caller(&request)?;
        let request = RequestId(id("request_id", request.get_ref().request_id)?);
        let documents = self
            .0
            .app
            .documents_for(&caller, request)
            .await
            .map_err(status)?;
        Ok(Response::new(ListDocumentsResponse {
            documents: documents
                .iter()
                .map(|document| convert::document(document, false))
                .collect(),
        }))
    }

    async fn get_document(&self, request: Request<GetDocumentRequest>) -> Reply<pb::Document> {
        let caller = caller(&request)?;
        let number = opt_text(&request.get_ref().number)
            .ok_or_else(|| Status::invalid_argument("number is required"))?;
        let document = self
            .0
            .app
            .document_for(&caller, &number)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::document(&document, true)))
    }

    async fn issue_document(&self, request: Request<IssueDocumentRequest>) -> Reply<pb::Document> {
        let caller = caller(&request)?;
        let message = request.get_ref();
        let request_id = RequestId(id("request_id", message.request_id)?);
        let kind = DocumentKind::from_code(message.kind.trim()).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown document kind `{}` (known: {})",
                message.kind,
                DocumentKind::ALL.map(DocumentKind::code).join(", ")
            ))
        })?;
        let app = &self.0.app;
        app.request_for(&caller, request_id).await.map_err(status)?;
        let issued = app
            .issue_document(&caller.account.username, request_id, kind, self.0.now())
            .await
            .map_err(status)?;
        let document = app
            .document_for(&caller, &issued.number)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::document(&document, false)))
    }
}

struct Audit(Ctx);

/// Most audit rows one page returns.
const MAX_AUDIT_PAGE: u32 = 5000;

#[tonic::async_trait]
impl audit_service_server::AuditService for Audit {
    async fn verify_audit(
        &self,
        request: Request<VerifyAuditRequest>,
    ) -> Reply<VerifyAuditResponse> {
        let message = request.into_inner();
        let checkpoint = match opt_text(&message.checkpoint_json) {
            Some(text) => Some(AuditCheckpoint::from_json(&text).map_err(status)?),
            None => None,
        };
        let verification = self
            .0
            .app
            .verify_audit(checkpoint.as_ref())
            .await
            .map_err(status)?;
        let next = self
            .0
            .app
            .audit_checkpoint(self.0.now())
            .await
            .map_err(status)?;
        Ok(Response::new(VerifyAuditResponse {
            intact: verification.is_intact(),
            rows_checked: verification.rows_checked,
            last_seq: verification.last_seq,
            last_hash: verification.last_hash.clone(),
            problem: verification
                .problem
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            checkpoint_json: next.to_json(),
        }))
    }

    async fn export_audit(
        &self,
        request: Request<ExportAuditRequest>,
    ) -> Reply<ExportAuditResponse> {
        let message = request.into_inner();
        let limit = match message.limit {
            0 => 500,
            limit if limit > MAX_AUDIT_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "at most {MAX_AUDIT_PAGE} audit rows per page, not {limit}"
                )));
            }
            limit => limit,
        };
        if message.after_seq < 0 {
            return Err(Status::invalid_argument("after_seq must not be negative"));
        }
        let rows = self
            .0
            .app
            .audit_rows(message.after_seq, limit)
            .await
            .map_err(status)?;
        Ok(Response::new(ExportAuditResponse {
            rows: rows
                .into_iter()
                .map(|row| pb::AuditRow {
                    seq: row.seq,
                    at: row.at,
                    actor: row.actor,
                    role: row.role.unwrap_or_default(),
                    action: row.action,
                    entity: row.entity,
                    entity_id: row.entity_id,
                    before_json: row.before_json.unwrap_or_default(),
                    after_json: row.after_json.unwrap_or_default(),
                    prev_hash: row.prev_hash,
                    hash: row.hash,
                })
                .collect(),
        }))
    }
}

struct Reports(Ctx);

#[tonic::async_trait]
impl report_service_server::ReportService for Reports {
    async fn overruns(&self, request: Request<OverrunsRequest>) -> Reply<OverrunsResponse> {
        let message = request.into_inner();
        let filter = RequestFilter {
            procedure: opt_text(&message.procedure),
            active: None,
            agency_id: opt_id("agency_id", message.agency_id)?.map(AgencyId),
        };
        let overruns = self
            .0
            .app
            .overruns(&filter, self.0.now())
            .await
            .map_err(status)?;
        Ok(Response::new(OverrunsResponse {
            overruns_json: to_json(&overruns)?,
        }))
    }

    async fn runs_report(&self, request: Request<RunsReportRequest>) -> Reply<ReportResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let filter = crate::app::RunFilter {
            agency: opt_id("agency_id", message.agency_id)?.map(AgencyId),
            plan: opt_id("plan_id", message.plan_id)?.map(PlanId),
            since: opt_instant("since", &message.since)?,
            until: opt_instant("until", &message.until)?,
        };
        let report = self
            .0
            .app
            .runs_report(&caller, &filter, self.0.now())
            .await
            .map_err(status)?;
        report_reply(&report, message.include_html, report_html::runs_html)
    }

    async fn sla_report(&self, request: Request<SlaReportRequest>) -> Reply<ReportResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let report = self
            .0
            .app
            .sla_report(&caller, self.0.now())
            .await
            .map_err(status)?;
        report_reply(&report, message.include_html, report_html::sla_html)
    }

    async fn storage_report(
        &self,
        request: Request<StorageReportRequest>,
    ) -> Reply<ReportResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let report = self
            .0
            .app
            .storage_report(
                &caller,
                opt_id("agency_id", message.agency_id)?.map(AgencyId),
                opt_instant("since", &message.since)?,
                self.0.now(),
            )
            .await
            .map_err(status)?;
        report_reply(&report, message.include_html, report_html::storage_html)
    }

    async fn schedule_report(
        &self,
        request: Request<ScheduleReportRequest>,
    ) -> Reply<ReportResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let report = self
            .0
            .app
            .schedule_report(
                &caller,
                opt_id("agency_id", message.agency_id)?.map(AgencyId),
                self.0.now(),
            )
            .await
            .map_err(status)?;
        report_reply(&report, message.include_html, report_html::schedule_html)
    }

    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Reply<ListNotificationsResponse> {
        let caller = caller(&request)?;
        let limit = match request.get_ref().limit {
            0 => 100,
            limit => limit,
        };
        let log = self
            .0
            .app
            .notifications_for(&caller, limit)
            .await
            .map_err(status)?;
        Ok(Response::new(ListNotificationsResponse {
            notifications: log
                .iter()
                .map(|n| pb::Notification {
                    id: n.id,
                    event_key: n.event_key.clone(),
                    channel: n.channel.clone(),
                    kind: n.kind.clone(),
                    agency_id: n.agency_id.map_or(0, |id| id.0),
                    subject: n.subject.clone(),
                    status: n.status.clone(),
                    attempts: n.attempts,
                    next_attempt_at: convert::time(n.next_attempt_at),
                    last_error: n.last_error.clone().unwrap_or_default(),
                    created_at: convert::time(n.created_at),
                    sent_at: convert::opt_time(n.sent_at),
                })
                .collect(),
        }))
    }
}

fn report_reply<T: serde::Serialize>(
    report: &T,
    include_html: bool,
    html: fn(&T) -> String,
) -> Reply<ReportResponse> {
    Ok(Response::new(ReportResponse {
        report_json: to_json(report)?,
        html: if include_html {
            html(report)
        } else {
            String::new()
        },
    }))
}

fn opt_instant(field: &str, text: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|at| Some(at.with_timezone(&chrono::Utc)))
        .map_err(|_| {
            Status::invalid_argument(format!(
                "{field} `{text}` is not an RFC 3339 instant, such as 2026-03-01T00:00:00+07:00"
            ))
        })
}

struct Plans(Ctx);

#[tonic::async_trait]
impl plan_service_server::PlanService for Plans {
    async fn create_plan(&self, request: Request<CreatePlanRequest>) -> Reply<pb::Plan> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let backup = RequestId(id("request_id", message.request_id)?);
        let spec: crate::app::PlanSpec = json_field("the plan (spec_json)", &message.spec_json)?;
        let plan = self
            .0
            .app
            .create_plan(
                &caller.account.username,
                backup,
                &message.name,
                spec,
                self.0.now(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(convert::plan(&plan)?))
    }

    async fn list_plans(&self, request: Request<ListPlansRequest>) -> Reply<ListPlansResponse> {
        let caller = caller(&request)?;
        let agency = opt_id("agency_id", request.get_ref().agency_id)?.map(AgencyId);
        let plans = self
            .0
            .app
            .plans_for(&caller, agency)
            .await
            .map_err(status)?;
        Ok(Response::new(ListPlansResponse {
            plans: plans.iter().map(convert::plan).collect::<Result<_, _>>()?,
        }))
    }

    async fn get_plan(&self, request: Request<GetPlanRequest>) -> Reply<GetPlanResponse> {
        let caller = caller(&request)?;
        let plan = PlanId(id("plan_id", request.get_ref().plan_id)?);
        let runs = match request.get_ref().runs {
            0 => 20,
            n => n.min(crate::app::MAX_PAGE),
        };
        let (plan, runs) = self
            .0
            .app
            .plan_for(&caller, plan, runs)
            .await
            .map_err(status)?;
        Ok(Response::new(GetPlanResponse {
            plan: Some(convert::plan(&plan)?),
            runs: runs.iter().map(convert::run).collect(),
        }))
    }

    async fn run_now(&self, request: Request<RunNowRequest>) -> Reply<pb::Run> {
        let caller = caller(&request)?;
        let plan = PlanId(id("plan_id", request.get_ref().plan_id)?);
        let kind = opt_text(&request.get_ref().kind).unwrap_or_else(|| "backup".to_owned());
        self.0
            .app
            .plan_for(&caller, plan, 0)
            .await
            .map_err(status)?;
        let run = self
            .0
            .app
            .run_now_kind(&caller.account.username, plan, &kind, self.0.now())
            .await
            .map_err(status)?;
        let run = self.0.app.run_for(&caller, run).await.map_err(status)?;
        Ok(Response::new(convert::run(&run)))
    }

    async fn pause_plan(&self, request: Request<PausePlanRequest>) -> Reply<pb::Plan> {
        let caller = caller(&request)?;
        let plan = PlanId(id("plan_id", request.get_ref().plan_id)?);
        self.0
            .app
            .plan_for(&caller, plan, 0)
            .await
            .map_err(status)?;
        let plan = self
            .0
            .app
            .set_plan_running(&caller.account.username, plan, false, self.0.now())
            .await
            .map_err(status)?;
        Ok(Response::new(convert::plan(&plan)?))
    }

    async fn resume_plan(&self, request: Request<ResumePlanRequest>) -> Reply<pb::Plan> {
        let caller = caller(&request)?;
        let plan = PlanId(id("plan_id", request.get_ref().plan_id)?);
        self.0
            .app
            .plan_for(&caller, plan, 0)
            .await
            .map_err(status)?;
        let plan = self
            .0
            .app
            .set_plan_running(&caller.account.username, plan, true, self.0.now())
            .await
            .map_err(status)?;
        Ok(Response::new(convert::plan(&plan)?))
    }
}

struct Runs(Ctx);

#[tonic::async_trait]
impl run_service_server::RunService for Runs {
    async fn list_runs(&self, request: Request<ListRunsRequest>) -> Reply<ListRunsResponse> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let plan = opt_id("plan_id", message.plan_id)?.map(PlanId);
        let agency = opt_id("agency_id", message.agency_id)?.map(AgencyId);
        let limit = if message.limit == 0 {
            100
        } else {
            message.limit
        };
        let runs = self
            .0
            .app
            .runs_for(&caller, plan, agency, limit)
            .await
            .map_err(status)?;
        Ok(Response::new(ListRunsResponse {
            runs: runs.iter().map(convert::run).collect(),
        }))
    }

    async fn get_run(&self, request: Request<GetRunRequest>) -> Reply<pb::Run> {
        let caller = caller(&request)?;
        let run = RunId(id("run_id", request.get_ref().run_id)?);
        let run = self.0.app.run_for(&caller, run).await.map_err(status)?;
        Ok(Response::new(convert::run(&run)))
    }
}
