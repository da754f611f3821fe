//! `cadang daemon`: the composition root and lifecycle of the control plane.
//!
//! Start: data directory → master key → catalog (migrated) → procedure definitions →
//! application → gRPC server (with health, reflection, the auth layer, TLS when
//! configured) → `READY=1` to systemd. Stop: SIGTERM or SIGINT → health turns
//! NOT_SERVING and `STOPPING=1` → no new calls are accepted, running calls get
//! `shutdown_grace_secs` to finish (every use case is one transaction, so a call cut
//! short leaves the catalog as it was); scheduled runs stop at a safe point, then every
//! agent's stream is closed (the agents dial again) → the pool is closed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::app::{App, MasterKey};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::engine::store::StoreOptions;
use crate::jobs::Repositories;
use crate::notify::Notifier;
use crate::rpc::{self, AuthLayer, Ctx};
use crate::scheduler::{self, SchedulerOptions};

/// Context of the sub-key from which agency repository passwords are derived.
pub const REPOSITORY_PASSWORD_CONTEXT: &str = "cadang 2026 agency repository passwords v1";

/// The procedure definitions built into the binary, so the daemon runs from any
/// directory; `[daemon] sop_dir` adds more (new revisions, local procedures).
pub const BUILTIN_DEFINITIONS: &[(&str, &str)] = &[
    (
        "colocation_handover.r1.toml",
        include_str!("../config/sop/colocation_handover.r1.toml"),
    ),
    (
        "backup_request.r1.toml",
        include_str!("../config/sop/backup_request.r1.toml"),
    ),
    (
        "restore_request.r1.toml",
        include_str!("../config/sop/restore_request.r1.toml"),
    ),
    (
        "restore_request.r2.toml",
        include_str!("../config/sop/restore_request.r2.toml"),
    ),
    (
        "colocation_withdrawal.r1.toml",
        include_str!("../config/sop/colocation_withdrawal.r1.toml"),
    ),
    (
        "maintenance_request.r1.toml",
        include_str!("../config/sop/maintenance_request.r1.toml"),
    ),
];

/// The daemon could not start or stopped on an error. The message names what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DaemonError(pub String);

fn fail(context: impl std::fmt::Display) -> impl FnOnce(String) -> DaemonError {
    move |cause| DaemonError(format!("{context}: {cause}"))
}

/// The built-in definitions plus those in `sop_dir`.
///
/// # Errors
/// [`DaemonError`] when the directory cannot be read.
pub fn definitions(sop_dir: Option<&Path>) -> Result<Vec<(String, String)>, DaemonError> {
    let mut definitions: Vec<(String, String)> = BUILTIN_DEFINITIONS
        .iter()
        .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
        .collect();
    if let Some(dir) = sop_dir {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|error| {
                fail(format!("cannot read sop_dir {}", dir.display()))(error.to_string())
            })?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|error| {
                fail(format!("cannot read {}", path.display()))(error.to_string())
            })?;
            let name = path.display().to_string();
            // A file with the same content as a built-in one is the same definition.
            if !definitions.iter().any(|(_, known)| *known == text) {
                definitions.push((name, text));
            }
        }
    }
    Ok(definitions)
}

/// Creates the data directory (mode 0700: it holds the master key and the catalog),
/// durably.
fn prepare_data_dir(dir: &Path) -> Result<(), DaemonError> {
    crate::engine::store::create_dir_durably(dir, 0o700).map_err(|error| {
        fail(format!(
            "cannot create the data directory {}",
            dir.display()
        ))(error.to_string())
    })
}

/// The master key: `CADANG_MASTER_KEY`, or the key file, created with fresh randomness
/// (mode 0600, synced, directory synced) on first start.
///
/// # Errors
/// [`DaemonError`] for an unreadable or malformed key or an unwritable file.
pub fn master_key(config: &Config) -> Result<MasterKey, DaemonError> {
    if let Ok(hex) = std::env::var("CADANG_MASTER_KEY")
        && !hex.trim().is_empty()
    {
        return MasterKey::from_hex(&hex)
            .map_err(|error| DaemonError(format!("CADANG_MASTER_KEY: {error}")));
    }
    key_file(&config.master_key_file())
}

/// The master key in `path`, created there when there is none.
fn key_file(path: &Path) -> Result<MasterKey, DaemonError> {
    let read = |text: String| {
        MasterKey::from_hex(&text)
            .map_err(|error| DaemonError(format!("{}: {error}", path.display())))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => read(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate().map_err(|error| DaemonError(error.to_string()))?;
            if !write_new_key(path, &key)? {
                // Another process starting on the same data directory (the daemon and
                // `cadang admin` at first start) published its key first: use that one.
                let text = std::fs::read_to_string(path).map_err(|error| {
                    DaemonError(format!(
                        "cannot read the master key {}: {error}",
                        path.display()
                    ))
                })?;
                return read(text);
            }
            tracing::warn!(path = %path.display(), "created a new master key: back it up apart from the catalog; sealed secrets cannot be read without it");
            Ok(key)
        }
        Err(error) => Err(DaemonError(format!(
            "cannot read the master key {}: {error}",
            path.display()
        ))),
    }
}

/// Publishes a new key file; `false` when another process published one first.
///
/// The key is written whole under a temporary name, synced, and linked into place, then
/// the directory is synced: a power cut can leave a stray temporary file, never a torn
/// or empty key file that would stop every later start. A link, unlike a rename, never
/// replaces a key another process published in between.
fn write_new_key(path: &Path, key: &MasterKey) -> Result<bool, DaemonError> {
    use std::os::unix::fs::OpenOptionsExt;
    let context = format!("cannot create the master key {}", path.display());
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    // What a process of this pid left before a crash or a power cut.
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(key.to_hex().as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    let published = match linked {
        Ok(()) => true,
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(error) => return Err(fail(&context)(error.to_string())),
    };
    // The key file must survive a crash right after first start: sync its directory
    // entry too, or a power loss could leave a catalog whose secrets nothing can open.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| fail(&context)(error.to_string()))?;
    }
    Ok(published)
}

/// Opens the catalog and the application as the daemon would (also used by
/// `cadang admin`).
///
/// # Errors
/// [`DaemonError`] naming what failed.
pub async fn open_app(config: &Config) -> Result<App, DaemonError> {
    prepare_data_dir(&config.data_dir())?;
    let key = master_key(config)?;
    let url = config.catalog_url();
    let catalog = Catalog::open_url(&url)
        .await
        .map_err(|error| DaemonError(format!("cannot open the catalog: {error}")))?;
    let definitions = definitions(config.daemon.sop_dir.as_deref())?;
    let mut settings = config.app.clone();
    settings.notify_channels = notifier(config)?
        .map(|notifier| notifier.channels())
        .unwrap_or_default();
    App::open(catalog, definitions, settings, &key, Utc::now())
        .await
        .map_err(|error| DaemonError(format!("cannot start the application: {error}")))
}

async fn tls_config(config: &Config) -> Result<Option<ServerTlsConfig>, DaemonError> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    let read = |path: &PathBuf| {
        std::fs::read(path)
            .map_err(|error| DaemonError(format!("[tls] cannot read {}: {error}", path.display())))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.tls.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// The notifier of the `[notify]` section, if it sets a channel.
///
/// # Errors
/// [`DaemonError`] naming the setting at fault.
pub fn notifier(config: &Config) -> Result<Option<Notifier>, DaemonError> {
    Notifier::new(&config.notify, |name| std::env::var(name).ok()).map_err(DaemonError)
}

/// The agencies' repositories as configured, with passwords derived from the master key.
///
/// # Errors
/// [`DaemonError`] when the master key cannot be read.
pub fn repositories(config: &Config) -> Result<Repositories, DaemonError> {
    let key = master_key(config)?;
    Ok(Repositories::new(
        config.repository_root(),
        key.derive(REPOSITORY_PASSWORD_CONTEXT),
        StoreOptions {
            s3_endpoint: config.repositories.s3_endpoint.clone(),
            ..StoreOptions::default()
        },
    )
    .with_scratch(config.data_dir().join("drills"))
    .with_owed_after(config.data_dir().join("after-backup-owed"))
    .with_replica(
        config.repositories.replica_root.clone(),
        StoreOptions {
            s3_endpoint: config
                .repositories
                .replica_s3_endpoint
                .clone()
                .or_else(|| config.repositories.s3_endpoint.clone()),
            ..StoreOptions::default()
        },
    )
    .with_restic_binary(
        config
            .repositories
            .restic_binary
            .as_deref()
            .map(std::path::PathBuf::from),
    ))
}

/// This daemon's name in run leases: host, process and start time.
fn daemon_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}:{}:{}",
        std::process::id(),
        Utc::now().timestamp_millis()
    )
}

/// On SQLite one daemon runs alone: a second one sharing the catalog file is refused
/// with the reason (several daemons need PostgreSQL). The returned file holds the lock
/// for the life of the process.
fn single_daemon_guard(config: &Config) -> Result<Option<std::fs::File>, DaemonError> {
    let url = config.catalog_url();
    let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(None);
    };
    let lock_path = PathBuf::from(format!("{path}.daemon-lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| DaemonError(format!("cannot open {}: {error}", lock_path.display())))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor we own; the lock lives as long as the file.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        return Err(DaemonError(format!(
            "another cadang daemon is running on the SQLite catalog {path}: SQLite serves one daemon; use PostgreSQL ([catalog] url) to run several"
        )));
    }
    Ok(Some(file))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Tells systemd we are alive, every half watchdog interval, as long as the catalog
/// answers: a daemon whose database is gone is restarted rather than left hanging.
async fn watchdog(app: App) {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero())
    else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tick.tick().await;
        match app.catalog().begin_read().await {
            Ok(tx) => {
                drop(tx);
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Err(error) => tracing::warn!(%error, "catalog unreachable; not feeding the watchdog"),
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
///
/// Prints `cadang daemon listening on ADDR` on standard output once it accepts calls
/// (`listen` may use port 0; the line has the real port).
///
/// # Errors
/// [`DaemonError`] when it cannot start; serving errors.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let app = open_app(&config).await?;
    tracing::info!(
        catalog = %crate::catalog::redact_url(&config.catalog_url()),
        data_dir = %config.data_dir().display(),
        definitions = app.registry().len(),
        "cadang daemon starting"
    );
    if let Some(addr) = config.daemon.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|error| DaemonError(format!("cannot serve metrics on {addr}: {error}")))?;
        tracing::info!(%addr, "Prometheus metrics at /metrics");
    }
    let _single = single_daemon_guard(&config)?;
    let hub: crate::hub::Hub = Arc::default();
    let shared_repositories = Arc::new(repositories(&config)?);
    // After-backup programs owed by runs this daemon was stopped in (killed, its host
    // rebooted) run before it takes any run.
    {
        let repositories = shared_repositories.clone();
        tokio::task::spawn_blocking(move || repositories.run_owed_after())
            .await
            .map_err(|error| DaemonError(format!("owed after-backup programs: {error}")))?;
    }
    let ctx = Ctx::new(app.clone())
        .with_agents(hub.clone(), shared_repositories.clone())
        .with_throttle(crate::rpc::throttle::AuthThrottle::new(
            config.daemon.auth_max_failures,
            Duration::from_secs(config.daemon.auth_failure_window_secs),
            Duration::from_secs(config.daemon.auth_lockout_secs),
        ));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rpc::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| DaemonError(format!("cannot build server reflection: {error}")))?;

    let mut builder = Server::builder()
        .timeout(Duration::from_secs(config.daemon.request_timeout_secs))
        .concurrency_limit_per_connection(64)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Agents stream chunks of up to 4 MiB: HTTP/2's default 64 KiB window would
        // make every few kilobytes wait for a window update. Windows sized to a few
        // chunks keep the stream full; memory stays bounded by them.
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_frame_size(Some(crate::agent::MAX_FRAME));
    if let Some(tls) = tls_config(&config).await? {
        builder = builder
            .tls_config(tls)
            .map_err(|error| DaemonError(format!("[tls] {error}")))?;
    }
    let router = builder
        .layer(AuthLayer::new(ctx.clone()))
        .add_routes(rpc::routes(&ctx))
        .add_service(health_service)
        .add_service(reflection);

    let listener = TcpListener::bind(config.daemon.listen)
        .await
        .map_err(|error| {
            DaemonError(format!(
                "cannot listen on {}: {error}",
                config.daemon.listen
            ))
        })?;
    let bound: SocketAddr = listener
        .local_addr()
        .map_err(|error| DaemonError(error.to_string()))?;
    tracing::info!(addr = %bound, tls = config.tls_enabled(), "control plane listening");
    println!("cadang daemon listening on {bound}");
    let _ = std::io::stdout().flush();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = tokio::spawn(watchdog(app.clone()));
    let (stop_scheduler, scheduler_stop) = tokio::sync::watch::channel(false);
    let grace = Duration::from_secs(config.daemon.shutdown_grace_secs);
    let mut scheduler = if config.scheduler.enabled {
        let repositories = shared_repositories.clone();
        let options = SchedulerOptions {
            owner: daemon_name(),
            tick: Duration::from_secs(config.scheduler.tick_secs),
            lease: Duration::from_secs(config.scheduler.lease_secs),
            max_parallel: config.scheduler.max_parallel_runs,
            agent_wait: Duration::from_secs(config.scheduler.agent_wait_secs),
        };
        tracing::info!(owner = %options.owner, root = %config.repository_root(), "scheduler running");
        // Alone on a SQLite catalog, this daemon knows that whoever holds a run's lease
        // died (killed, or its host lost power): it takes that work back now rather
        // than after the lease lapses. Several daemons on PostgreSQL wait for it.
        if _single.is_some() {
            match app
                .take_back_work_of_gone_daemons(&options.owner, Utc::now())
                .await
            {
                Ok((0, 0)) => {}
                Ok((runs, restores)) => tracing::warn!(
                    runs,
                    restores,
                    "work of a daemon that stopped without finishing it is taken back"
                ),
                Err(error) => {
                    tracing::warn!(%error, "cannot take back the work of a stopped daemon; its leases will lapse")
                }
            }
        }
        let notifier = notifier(&config)?.map(Arc::new);
        if let Some(notifier) = &notifier {
            tracing::info!(channels = ?notifier.channels(), "notifications on");
        }
        Some(tokio::spawn(scheduler::run(
            app.clone(),
            repositories,
            hub.clone(),
            notifier,
            options,
            scheduler_stop,
            grace,
        )))
    } else {
        None
    };

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
        let _ = stop_rx.await;
    });
    tokio::pin!(serve);
    let result = tokio::select! {
        result = &mut serve => result,
        () = shutdown_signal() => {
            tracing::info!("shutting down: no new calls; running calls get {}s", grace.as_secs());
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            let _ = stop_tx.send(());
            let _ = stop_scheduler.send(true);
            let deadline = tokio::time::Instant::now() + grace;
            let runs = scheduler.take();
            let hub = &hub;
            let ((), served) = tokio::join!(
                async move {
                    // Runs stop at a safe point first, still on their agents' streams
                    // (a backup tells its agent to stop); then every agent stream is
                    // closed, or an idle agent would hold its connection, and this
                    // shutdown, for the whole grace period. The agents dial again and
                    // find the next daemon.
                    if let Some(runs) = runs {
                        let _ = tokio::time::timeout_at(deadline, runs).await;
                    }
                    hub.close_all("the daemon is stopping");
                },
                tokio::time::timeout_at(deadline, &mut serve),
            );
            match served {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("calls still running after the grace period were cut off (their transactions roll back)");
                    Ok(())
                }
            }
        }
    };
    watchdog.abort();
    let _ = stop_scheduler.send(true);
    if let Some(scheduler) = scheduler {
        let _ = tokio::time::timeout(grace + Duration::from_secs(5), scheduler).await;
    }
    app.catalog().close().await;
    tracing::info!("cadang daemon stopped");
    result.map_err(|error| DaemonError(format!("serving failed: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_is_published_whole_once_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        // A temporary key a power cut tore at an earlier first start is no key.
        std::fs::write(dir.path().join("master.key.tmp.1"), b"3f2a").unwrap();
        let first = key_file(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", first.to_hex()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Read again on the next start.
        assert_eq!(key_file(&path).unwrap().to_hex(), first.to_hex());
        // A process that generated its own key in the meantime does not replace it.
        let late = MasterKey::generate().unwrap();
        assert!(!write_new_key(&path, &late).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        // No temporary file of this process is left.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(&format!(".tmp.{}", std::process::id())))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // A torn key file (as the old create-in-place could leave) is refused clearly.
        let torn = dir.path().join("torn.key");
        std::fs::write(&torn, b"3f2a").unwrap();
        let error = key_file(&torn).unwrap_err().to_string();
        assert!(error.contains("torn.key"), "{error}");
    }
}
