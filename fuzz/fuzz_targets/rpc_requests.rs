//! The daemon's request handling: any bytes as the message of any RPC in the
//! authorisation matrix, sent by the administrator, by an officer holding every role of
//! the SOP's procedures, or with no credential, through the daemon's own auth layer and
//! services onto a real SQLite catalog that keeps what earlier inputs created. Every call
//! must end in a response or a status: never a panic, never `INTERNAL` or `UNKNOWN` (bad
//! input is the caller's fault and must be named as such), and the audit chain must
//! still verify.
//!
//! Input: byte 0 picks the method, byte 1 the caller, the rest is the message.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use cadang::app::{App, AppConfig, MasterKey, NewAccountInput};
use cadang::catalog::{Catalog, SqliteOptions};
use cadang::rpc::{AuthLayer, Ctx, authz};
use cadang::workflow::Role;
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt};

struct Daemon {
    runtime: tokio::runtime::Runtime,
    app: App,
    ctx: Ctx,
    /// Bearer secrets: the administrator's and the officer's.
    tokens: [String; 2],
    /// Keeps the catalog's directory for the whole run.
    _dir: tempfile::TempDir,
}

fn daemon() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        // In memory where the machine has it: the catalog syncs every commit.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temporary directory");
        let (app, tokens) = runtime.block_on(async {
            let catalog = Catalog::open_sqlite(dir.path(), &SqliteOptions::default())
                .await
                .expect("the catalog opens");
            let now = chrono::Utc::now();
            let definitions =
                cadang::daemon::definitions(None).expect("the built-in definitions");
            let app = App::open(
                catalog,
                definitions,
                AppConfig::default(),
                &MasterKey::from_bytes([7; 32]),
                now,
            )
            .await
            .expect("the application opens");
            let (_, admin) = app.bootstrap_admin("admin", now).await.expect("bootstrap");
            app.create_account(
                "admin",
                NewAccountInput {
                    username: "officer".into(),
                    person_id: None,
                    agency_id: None,
                    roles: vec![Role::Kadin, Role::KabidTik, Role::KasiInfras, Role::Petugas],
                },
                now,
            )
            .await
            .expect("the officer's account");
            let officer = app
                .create_token("admin", Some("officer"), "fuzz", None, now)
                .await
                .expect("the officer's token");
            (
                app,
                [
                    admin.secret.expose().to_owned(),
                    officer.secret.expose().to_owned(),
                ],
            )
        });
        let ctx = Ctx::new(app.clone());
        Daemon {
            runtime,
            app,
            ctx,
            tokens,
            _dir: dir,
        }
    })
}

/// A gRPC request frame: uncompressed flag, big-endian length, message.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

fuzz_target!(|data: &[u8]| {
    let [method, caller, message @ ..] = data else {
        return;
    };
    let daemon = daemon();
    let rule = &authz::MATRIX[*method as usize % authz::MATRIX.len()];
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://daemon{}", rule.method))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = daemon.tokens.get(*caller as usize % 3) {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(frame(message)))
        .expect("a well-formed request");
    let status = daemon.runtime.block_on(async {
        let service = AuthLayer::new(daemon.ctx.clone()).layer(cadang::rpc::routes(&daemon.ctx));
        let response = service
            .oneshot(request)
            .await
            .expect("the service answers");
        if let Some(status) = tonic::Status::from_header_map(response.headers()) {
            return Some(status);
        }
        // A streaming answer ends when its sender does; the agents' stream waits for an
        // agent that never speaks, so a bounded wait is the end of it.
        let collected =
            tokio::time::timeout(Duration::from_secs(2), response.into_body().collect()).await;
        match collected {
            Ok(Ok(body)) => body
                .trailers()
                .and_then(tonic::Status::from_header_map),
            Ok(Err(status)) => Some(status),
            Err(_) => None,
        }
    });
    if let Some(status) = status {
        assert!(
            !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
            "{} answered {:?}: {}",
            rule.method,
            status.code(),
            status.message()
        );
    }
    if data.len() % 64 == 0 {
        let verification = daemon
            .runtime
            .block_on(daemon.app.verify_audit(None))
            .expect("the audit chain reads");
        assert!(verification.problem.is_none(), "{verification:?}");
    }
});
