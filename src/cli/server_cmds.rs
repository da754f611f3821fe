//! `cadang daemon` and `cadang admin`: commands run on the daemon's own host.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::ExitCode;
use crate::config::{Config, LogFormat};
use crate::daemon;

/// `cadang daemon`.
#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Configuration file (default: built-in defaults — SQLite catalog and local
    /// repositories under ./var, listening on 127.0.0.1:7420).
    #[arg(long, env = "CADANG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen here instead of [daemon] listen (port 0: any free port, printed on start).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Data directory instead of [daemon] data_dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The daemon's configuration and data directory, for the `admin` commands that work
/// on its host with its catalog.
#[derive(Args, Debug)]
pub struct HostArgs {
    /// Configuration file of the daemon.
    #[arg(long, env = "CADANG_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory instead of [daemon] data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl HostArgs {
    fn load(self) -> Result<Config, String> {
        load(self.config.as_ref(), self.data_dir, None)
    }
}

/// `cadang admin ...`.
#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Create the first administrator and print its token once.
    Bootstrap {
        #[command(flatten)]
        host: HostArgs,
        /// Login name of the administrator.
        #[arg(long, default_value = "admin")]
        username: String,
    },
    /// Break glass: a new token for an administrator when none can sign in any more
    /// (the bootstrap token lost, every administrator's token expired or revoked).
    /// Printed once; audited as `token.recover`. Works only on the daemon's host, with
    /// its catalog.
    RecoverToken {
        #[command(flatten)]
        host: HostArgs,
        /// The administrator's login name.
        #[arg(long, default_value = "admin")]
        username: String,
        /// What the token is for.
        #[arg(long, default_value = "break-glass")]
        label: String,
        /// Lifetime, such as 1d or 12h (default: none, as `token create`).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Print the authorisation matrix (Markdown; docs/AUTHORIZATION.md is this output).
    AuthzMatrix,
    /// Break glass: print an agency repository's location and password, for the engine's
    /// own commands (`cadang -r LOCATION snapshots`) when the daemon cannot be used.
    /// Needs the master key, so it works only on the daemon's host.
    Repository {
        #[command(flatten)]
        host: HostArgs,
        /// The agency's code (DINKES).
        #[arg(long)]
        agency: String,
        /// The agency's replica repository instead (`[repositories] replica_root`).
        #[arg(long)]
        replica: bool,
    },
    /// Send a test message on every channel of `[notify]` and say how each went (run it
    /// after configuring the webhook or SMTP relay).
    NotifyTest {
        /// Configuration file of the daemon.
        #[arg(long, env = "CADANG_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn load(
    config: Option<&PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
) -> Result<Config, String> {
    let mut config =
        Config::load(config.map(PathBuf::as_path)).map_err(|error| error.to_string())?;
    if let Some(dir) = data_dir {
        config.daemon.data_dir = Some(dir);
    }
    if let Some(listen) = listen {
        config.daemon.listen = listen;
        config.revalidate().map_err(|error| error.to_string())?;
    }
    Ok(config)
}

/// Whether the daemon's configuration asks for JSON logs.
pub fn json_logs(args: &DaemonArgs) -> bool {
    Config::load(args.config.as_deref())
        .map(|config| config.daemon.log_format == LogFormat::Json)
        .unwrap_or(false)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cadang-daemon")
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))
}

/// Runs the daemon.
pub fn daemon(args: DaemonArgs) -> ExitCode {
    let result = load(args.config.as_ref(), args.data_dir, args.listen).and_then(|config| {
        runtime()?
            .block_on(daemon::run(config))
            .map_err(|error| error.to_string())
    });
    match result {
        Ok(()) => ExitCode::Ok,
        Err(error) => {
            tracing::error!(%error, "the daemon stopped");
            eprintln!("cadang: error: {error}");
            ExitCode::Failure
        }
    }
}

/// Runs an admin command.
pub fn admin(command: AdminCmd) -> ExitCode {
    let result = match command {
        AdminCmd::Bootstrap { host, username } => {
            host.load().and_then(|config| {
                runtime()?.block_on(async {
                    let app = daemon::open_app(&config).await.map_err(|error| error.to_string())?;
                    let (account, token) = app
                        .bootstrap_admin(&username, chrono::Utc::now())
                        .await
                        .map_err(|error| error.to_string())?;
                    println!("{}", token.secret.expose());
                    eprintln!(
                        "administrator `{}` created with token {}; store the token now, it cannot be shown again",
                        account.username, token.record.id
                    );
                    app.catalog().close().await;
                    Ok(())
                })
            })
        }
        AdminCmd::RecoverToken { host, username, label, ttl } => {
            host.load().and_then(|config| {
                let ttl = ttl
                    .map(|text| super::client::parse_ttl(&text).map(chrono::TimeDelta::seconds))
                    .transpose()
                    .map_err(|error| error.to_string())?;
                runtime()?.block_on(async {
                    let app = daemon::open_app(&config).await.map_err(|error| error.to_string())?;
                    let issued = app
                        .recover_admin_token(&username, &label, ttl, chrono::Utc::now())
                        .await
                        .map_err(|error| error.to_string());
                    app.catalog().close().await;
                    let issued = issued?;
                    println!("{}", issued.secret.expose());
                    eprintln!(
                        "token {} for administrator `{}` created (audited as token.recover); store it now, it cannot be shown again",
                        issued.record.id, issued.record.username
                    );
                    Ok(())
                })
            })
        }
        AdminCmd::Repository { host, agency, replica } => {
            host.load().and_then(|config| {
                let repositories = daemon::repositories(&config).map_err(|error| error.to_string())?;
                if replica {
                    let location = repositories
                        .replica_location(&agency)
                        .ok_or("no replicas are configured: [repositories] replica_root is not set")?;
                    println!("{location}");
                    println!("{}", repositories.replica_password(&agency).expose());
                } else {
                    println!("{}", repositories.location(&agency));
                    println!("{}", repositories.password(&agency).expose());
                }
                eprintln!("line 1: the repository (-r); line 2: its password (CADANG_PASSWORD). Keep the password out of shell history and logs.");
                Ok(())
            })
        }
        AdminCmd::NotifyTest { config } => load(config.as_ref(), None, None).and_then(|config| {
            let notifier = daemon::notifier(&config)
                .map_err(|error| error.to_string())?
                .ok_or("[notify] sets no channel: set webhook_url or smtp_host")?;
            runtime()?.block_on(async {
                let now = chrono::Utc::now();
                let mut failed = false;
                for channel in notifier.channels() {
                    let test = crate::catalog::NotificationRecord {
                        id: 0,
                        event_key: format!("test:{}", now.timestamp()),
                        channel: channel.clone(),
                        kind: "test".into(),
                        agency_id: None,
                        subject: "[cadang] test notification".into(),
                        body_json: serde_json::json!({
                            "event": "test",
                            "subject": "[cadang] test notification",
                            "at": now,
                        })
                        .to_string(),
                        status: "pending".into(),
                        attempts: 1,
                        next_attempt_at: now,
                        last_error: None,
                        created_at: now,
                        sent_at: None,
                    };
                    match notifier.send(&test).await {
                        Ok(()) => println!("{channel}: delivered"),
                        Err(error) => {
                            failed = true;
                            println!("{channel}: NOT delivered: {error}");
                        }
                    }
                }
                if failed {
                    Err("a channel did not deliver".to_owned())
                } else {
                    Ok(())
                }
            })
        }),
        AdminCmd::AuthzMatrix => daemon::definitions(None)
            .map_err(|error| error.to_string())
            .and_then(|definitions| {
                crate::workflow::Registry::from_sources(definitions).map_err(|error| error.to_string())
            })
            .map(|registry| print!("{}", crate::rpc::authz::render_markdown(&registry))),
    };
    match result {
        Ok(()) => ExitCode::Ok,
        Err(error) => {
            eprintln!("cadang: error: {error}");
            ExitCode::Failure
        }
    }
}
