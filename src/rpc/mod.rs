//! The gRPC control plane: thin adapters between tonic and the use cases in
//! [`crate::app`]. Each handler decodes its message, calls one use case and encodes the
//! answer; nothing here decides anything.
//!
//! * [`AuthLayer`] sits in front of every service: it authenticates the bearer token and
//!   applies the authorisation matrix ([`authz`]) before a handler runs, so no handler can
//!   forget to;
//! * [`status`] is the single mapping from [`AppError`] to a gRPC status;
//! * [`throttle`] locks out an address after too many failed authentications.

mod agents;
pub mod authz;
mod convert;
mod services;
pub mod throttle;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tonic::Status;
use tonic::codegen::http;

use crate::app::{App, AppError, Caller};

pub use services::routes;

/// The generated messages, services and clients of `proto/cadang/v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("cadang.v1");
    /// The encoded descriptors of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cadang_descriptor");
}

/// Where handlers get the time: the one place the control plane reads the clock.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// What every handler needs.
#[derive(Clone)]
pub struct Ctx {
    /// The use cases.
    pub app: App,
    /// The clock.
    pub clock: Clock,
    /// Connected agents.
    pub hub: crate::hub::Hub,
    /// The agencies' repositories (for listing servers' snapshots), when configured.
    pub repositories: Option<Arc<crate::jobs::Repositories>>,
    /// Failed authentications per peer address.
    pub throttle: Arc<throttle::AuthThrottle>,
    /// Turns of the requests that read a repository to answer (snapshot listings and
    /// searches): each opens the repository and loads its index, or starts restic, so
    /// at most [`BROWSING_AT_ONCE`] run together and the rest wait.
    pub browsing: Arc<tokio::sync::Semaphore>,
}

/// Repository-reading requests served at once (see [`Ctx::browsing`]).
pub const BROWSING_AT_ONCE: usize = 2;

/// An agent's feature: it answers [`pb::RestoreProbe`] with what the target already
/// holds, and honours `RestoreJob.overwrite` and `RestoreEntry.in_place`.
pub const FEATURE_RESTORE_IN_PLACE: &str = "restore-in-place";

/// An agent's feature: it honours `RestoreJob.delete` and `RestoreEntry.clean`.
pub const FEATURE_RESTORE_DELETE: &str = "restore-delete";

/// An agent's feature: it honours `RestoreJob.dry_run`.
pub const FEATURE_RESTORE_DRY_RUN: &str = "restore-dry-run";

impl Ctx {
    /// A context reading the system clock, with no agent connected yet and no
    /// repositories.
    pub fn new(app: App) -> Self {
        Ctx {
            app,
            clock: Arc::new(Utc::now),
            hub: Arc::default(),
            repositories: None,
            throttle: Arc::default(),
            browsing: Arc::new(tokio::sync::Semaphore::new(BROWSING_AT_ONCE)),
        }
    }

    /// Waits for a turn to read a repository for a request (see [`Ctx::browsing`]).
    pub(crate) async fn browsing_turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.browsing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the daemon is shutting down"))
    }

    /// The same context with this lockout policy for failed authentications.
    #[must_use]
    pub fn with_throttle(mut self, throttle: throttle::AuthThrottle) -> Self {
        self.throttle = Arc::new(throttle);
        self
    }

    /// Counts a failed authentication by `peer`; audits the start of a lockout.
    pub(crate) async fn authentication_failed(&self, peer: std::net::IpAddr, path: &str) {
        let Some(failures) = self.throttle.failed(peer, Instant::now()) else {
            return;
        };
        let lockout = self.throttle.lockout();
        tracing::warn!(%peer, failures, lockout_secs = lockout.as_secs(), method = %path, "too many failed authentications: address locked out");
        metrics::counter!("cadang_auth_lockouts_total").increment(1);
        if let Err(error) = self
            .app
            .record_auth_lockout(peer, failures, lockout.as_secs(), self.now())
            .await
        {
            tracing::error!(%peer, %error, "cannot audit an authentication lockout");
        }
    }

    /// The same context with the daemon's agent hub and repositories.
    #[must_use]
    pub fn with_agents(
        mut self,
        hub: crate::hub::Hub,
        repositories: Arc<crate::jobs::Repositories>,
    ) -> Self {
        self.hub = hub;
        self.repositories = Some(repositories);
        self
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Authenticates an agent's credential for an agent path. A person's valid token is
    /// refused with `PERMISSION_DENIED`: people do not speak for agents.
    async fn admit_agent(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<crate::app::AgentCaller, Status> {
        let secret = bearer_of(headers)?;
        if secret.starts_with("cdga_") {
            return self
                .app
                .authenticate_agent(secret, self.now())
                .await
                .map_err(status);
        }
        let caller = self
            .app
            .authenticate(secret, self.now())
            .await
            .map_err(status)?;
        Err(Status::permission_denied(format!(
            "`{}` ({}) may not call {}: it needs an agent's credential (`cadang agent enroll`)",
            caller.account.username,
            roles_of(&caller),
            path.trim_start_matches("/cadang.v1.")
        )))
    }

    /// Authenticates the token in `headers` and applies the matrix to `path`.
    async fn admit(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let Some(rule) = authz::rule(path) else {
            // A method of a service without a row: refuse rather than guess.
            return Err(Status::unimplemented(format!("unknown method {path}")));
        };
        let secret = bearer_of(headers)?;
        let caller = self
            .app
            .authenticate(secret, self.now())
            .await
            .map_err(status)?;
        if !rule.roles.iter().any(|role| caller.has(*role)) {
            return Err(Status::permission_denied(format!(
                "`{}` ({}) may not call {}: it needs {}",
                caller.account.username,
                roles_of(&caller),
                path.trim_start_matches("/cadang.v1."),
                rule.roles
                    .iter()
                    .map(|role| role.code())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(caller)
    }
}

/// The address a call came from (plain TCP or TLS), when the transport says.
fn peer_ip<B>(request: &http::Request<B>) -> Option<std::net::IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
        .map(|addr| addr.ip())
}

/// The bearer secret of a request.
fn bearer_of(headers: &http::HeaderMap) -> Result<&str, Status> {
    {
        let header = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no bearer token: pass one with --token, CADANG_TOKEN or cli.toml",
                )
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
        let secret = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?
            .trim();
        Ok(secret)
    }
}

fn roles_of(caller: &Caller) -> String {
    if caller.account.roles.is_empty() {
        "no role".to_owned()
    } else {
        caller
            .account
            .roles
            .iter()
            .map(|role| role.code())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The one mapping from use-case errors to gRPC statuses. Messages of the first five kinds
/// are written for the person at the terminal; an internal error's cause stays in the log.
pub fn status(error: AppError) -> Status {
    match error {
        AppError::NotFound(message) => Status::not_found(message),
        AppError::Conflict(message) => Status::failed_precondition(message),
        AppError::InvalidInput(message) => Status::invalid_argument(message),
        AppError::Unauthenticated(message) => Status::unauthenticated(message),
        AppError::Forbidden(message) => Status::permission_denied(message),
        AppError::Unavailable(message) => Status::unavailable(message),
        AppError::Internal(message) => {
            tracing::error!(%message, "internal error answered to a client");
            Status::internal("internal error; the daemon's log has the cause")
        }
    }
}

/// The caller admitted by [`AuthLayer`].
fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("the request bypassed authentication"))
}

/// A tower layer that authenticates and authorises every call (see the module docs).
#[derive(Clone)]
pub struct AuthLayer {
    ctx: Ctx,
}

impl AuthLayer {
    /// The layer over `ctx`.
    pub fn new(ctx: Ctx) -> Self {
        AuthLayer { ctx }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            ctx: self.ctx.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    ctx: Ctx,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let started = Instant::now();
            let peer = peer_ip(&request);
            if let Some(peer) = peer
                && let Some(wait) = ctx.throttle.locked(peer, started)
            {
                metrics::counter!("cadang_rpc_refused_total", "method" => path.clone(), "code" => "ResourceExhausted").increment(1);
                return Ok(Status::resource_exhausted(format!(
                    "too many failed authentications from {peer}; try again in {} s",
                    wait.as_secs().max(1)
                ))
                .into_http());
            }
            let admitted = if authz::is_agent_path(&path) {
                ctx.admit_agent(&path, request.headers())
                    .await
                    .map(|agent| {
                        request.extensions_mut().insert(agent);
                    })
            } else if !authz::is_public(&path) && !authz::is_enrolment(&path) {
                ctx.admit(&path, request.headers()).await.map(|caller| {
                    request.extensions_mut().insert(caller);
                })
            } else {
                Ok(())
            };
            if let Err(refusal) = admitted {
                tracing::info!(method = %path, code = ?refusal.code(), message = refusal.message(), "call refused");
                // Only a credential that was presented and refused counts as a guess.
                let presented = bearer_of(request.headers()).is_ok_and(|secret| !secret.is_empty());
                if let Some(peer) =
                    peer.filter(|_| presented && refusal.code() == tonic::Code::Unauthenticated)
                {
                    ctx.authentication_failed(peer, &path).await;
                }
                metrics::counter!("cadang_rpc_refused_total", "method" => path.clone(), "code" => format!("{:?}", refusal.code())).increment(1);
                return Ok(refusal.into_http());
            }
            let response = inner.call(request).await;
            metrics::histogram!("cadang_rpc_duration_seconds", "method" => path)
                .record(started.elapsed().as_secs_f64());
            response.map(undecodable_is_invalid_argument)
        })
    }
}

/// tonic answers a request message that does not decode with `INTERNAL`, which would
/// blame the daemon for the caller's bytes (and page whoever watches for internal
/// errors). The caller sent them: `INVALID_ARGUMENT`, with the decoder's reason.
fn undecodable_is_invalid_argument(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    match Status::from_header_map(response.headers()) {
        Some(status)
            if status.code() == tonic::Code::Internal
                && status
                    .message()
                    .starts_with("failed to decode Protobuf message") =>
        {
            Status::invalid_argument(format!(
                "the request is not a valid message: {}",
                status
                    .message()
                    .trim_start_matches("failed to decode Protobuf message: ")
            ))
            .into_http()
        }
        _ => response,
    }
}

/// Extended attributes as an agent sends or receives them.
pub fn xattrs_to_wire(xattrs: Vec<crate::engine::tree::Xattr>) -> Vec<pb::Xattr> {
    xattrs
        .into_iter()
        .map(|x| pb::Xattr {
            name: x.name,
            value: x.value,
        })
        .collect()
}

/// Extended attributes from the wire, sorted by name; refused when a name is empty,
/// holds a NUL or comes twice (nothing a file system can hold).
///
/// # Errors
/// What is wrong, for the run's error.
pub fn xattrs_from_wire(xattrs: &[pb::Xattr]) -> Result<Vec<crate::engine::tree::Xattr>, String> {
    let mut out: Vec<crate::engine::tree::Xattr> = xattrs
        .iter()
        .map(|x| crate::engine::tree::Xattr {
            name: x.name.clone(),
            value: x.value.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    crate::engine::tree::check_xattrs(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(response: &http::Response<tonic::body::Body>) -> tonic::Code {
        Status::from_header_map(response.headers())
            .expect("a status")
            .code()
    }

    #[test]
    fn an_undecodable_request_is_the_callers_fault() {
        let undecodable = Status::internal(
            "failed to decode Protobuf message: SetAccountRolesRequest.username: invalid varint",
        )
        .into_http();
        let mapped = undecodable_is_invalid_argument(undecodable);
        assert_eq!(code_of(&mapped), tonic::Code::InvalidArgument);
        let status = Status::from_header_map(mapped.headers()).expect("a status");
        assert_eq!(
            status.message(),
            "the request is not a valid message: SetAccountRolesRequest.username: invalid varint"
        );
        // The daemon's own internal errors stay what they are.
        let internal = Status::internal("the catalog answered nonsense").into_http();
        assert_eq!(
            code_of(&undecodable_is_invalid_argument(internal)),
            tonic::Code::Internal
        );
        let denied = Status::permission_denied("no").into_http();
        assert_eq!(
            code_of(&undecodable_is_invalid_argument(denied)),
            tonic::Code::PermissionDenied
        );
    }
}
