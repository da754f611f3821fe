//! The daemon's configuration: typed TOML (`config/cadang.toml` documents every key with
//! its default), validated on load, with the secrets taken from the environment when set
//! there, and redacted from `Debug`.
//!
//! Environment overrides (they win over the file):
//! * `CADANG_CATALOG_URL` — the catalog URL (it may hold a PostgreSQL password);
//! * `CADANG_MASTER_KEY` — the master key, 64 hex digits, instead of `master_key_file`;
//! * `CADANG_WEBHOOK_TOKEN`, `CADANG_SMTP_PASSWORD` — the notification channels' secrets;
//! * `STATE_DIRECTORY` — set by systemd's `StateDirectory=`; the default data directory.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::app::AppConfig;
use crate::catalog::redact_url;

/// The documented default address of the control plane.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// The whole configuration file.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The daemon process.
    pub daemon: DaemonSection,
    /// The catalog database.
    pub catalog: CatalogSection,
    /// TLS of the control plane.
    pub tls: TlsSection,
    /// The master key.
    pub secrets: SecretsSection,
    /// The agencies' repositories.
    pub repositories: RepositoriesSection,
    /// Scheduled runs.
    pub scheduler: SchedulerSection,
    /// Notifications (webhook, email).
    pub notify: crate::notify::NotifySection,
    /// Letterhead, numbering, calendar, reveal roles.
    pub app: AppConfig,
}

/// `[repositories]`.
#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RepositoriesSection {
    /// Where each agency's repository is made: a directory (default
    /// `<data_dir>/repositories`) or `s3://bucket/prefix`; the agency's code is appended.
    pub root: Option<String>,
    /// Endpoint of an S3-compatible store (MinIO, Garage, Ceph RGW); credentials come
    /// from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub s3_endpoint: Option<String>,
    /// Where each agency's replica repository is made, on a second store: a directory or
    /// `s3://bucket/prefix`, the agency's code appended. Absent: no replicas.
    pub replica_root: Option<String>,
    /// Endpoint of the replicas' S3-compatible store (default: `s3_endpoint`).
    pub replica_s3_endpoint: Option<String>,
    /// The `restic` binary for plans on existing restic repositories: a path, or a name
    /// looked up on `PATH` (default `restic`).
    pub restic_binary: Option<String>,
}

/// `[scheduler]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSection {
    /// Whether this daemon runs scheduled work at all.
    pub enabled: bool,
    /// Seconds between looks for due work.
    pub tick_secs: u64,
    /// Seconds a claimed run's lease lasts; another daemon takes the run over after that
    /// if this one stops renewing it.
    pub lease_secs: u64,
    /// Runs this daemon executes at once.
    pub max_parallel_runs: usize,
    /// How long a backup or restore through an agent waits for the agent to connect
    /// (or to come back after its connection dropped) before it fails.
    pub agent_wait_secs: u64,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        SchedulerSection {
            enabled: true,
            tick_secs: 10,
            lease_secs: 300,
            max_parallel_runs: 2,
            agent_wait_secs: 300,
        }
    }
}

/// `[daemon]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSection {
    /// Address of the gRPC control plane.
    pub listen: SocketAddr,
    /// Where the catalog, the master key and local repositories live.
    pub data_dir: Option<PathBuf>,
    /// `human` or `json` log lines.
    pub log_format: LogFormat,
    /// Address of the Prometheus metrics endpoint; none when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds a call may take before it is cancelled.
    pub request_timeout_secs: u64,
    /// Seconds running calls get to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Extra procedure definitions (`*.toml`) loaded beside the built-in ones.
    pub sop_dir: Option<PathBuf>,
    /// Failed authentications from one address within `auth_failure_window_secs` that
    /// lock it out.
    pub auth_max_failures: u32,
    /// The window over which failed authentications are counted, seconds.
    pub auth_failure_window_secs: u64,
    /// How long a locked-out address is refused, seconds.
    pub auth_lockout_secs: u64,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            data_dir: None,
            log_format: LogFormat::Human,
            metrics_listen: None,
            request_timeout_secs: 60,
            shutdown_grace_secs: 30,
            sop_dir: None,
            auth_max_failures: 20,
            auth_failure_window_secs: 60,
            auth_lockout_secs: 300,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For a terminal.
    Human,
    /// One JSON object per line, for a log collector.
    Json,
}

/// `[catalog]`.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogSection {
    /// `sqlite:///path/catalog.db` or `postgres://user@host/db`; default: SQLite in the
    /// data directory.
    pub url: Option<String>,
}

impl fmt::Debug for CatalogSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogSection")
            .field("url", &self.url.as_deref().map(redact_url))
            .finish()
    }
}

/// `[tls]`.
#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of the daemon.
    pub cert: Option<PathBuf>,
    /// PEM private key of the daemon.
    pub key: Option<PathBuf>,
    /// PEM CA certificates; when set, clients must present a certificate signed by one.
    pub client_ca: Option<PathBuf>,
}

/// `[secrets]`.
#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsSection {
    /// File holding the master key (64 hex digits, mode 0600); default
    /// `<data_dir>/master.key`, created on first start.
    pub master_key_file: Option<PathBuf>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("daemon", &self.daemon)
            .field("catalog", &self.catalog)
            .field("tls", &self.tls)
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads and validates a configuration file; `None` gives the embedded defaults.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    ConfigError(format!("cannot read {}: {error}", path.display()))
                })?;
                Config::parse(&text)
                    .map_err(|error| ConfigError(format!("{}: {error}", path.display())))?
            }
            None => Config::default(),
        };
        Ok(config)
    }

    /// Parses and validates configuration text.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|error| ConfigError(error.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Validates again after a setting was overridden (command-line flags).
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn revalidate(&self) -> Result<(), ConfigError> {
        self.validate()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.app
            .validate()
            .map_err(|error| ConfigError(format!("[app] {error}")))?;
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError(
                    "[tls] cert and key must be given together".into(),
                ));
            }
            _ => {}
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            return Err(ConfigError(
                "[tls] client_ca needs cert and key: client certificates only work over TLS".into(),
            ));
        }
        if !self.daemon.listen.ip().is_loopback() && !self.tls_enabled() {
            return Err(ConfigError(format!(
                "[daemon] listen = \"{}\" is beyond loopback: set [tls] cert and key (tokens must not cross a network in clear)",
                self.daemon.listen
            )));
        }
        if self.scheduler.tick_secs == 0 || self.scheduler.max_parallel_runs == 0 {
            return Err(ConfigError(
                "[scheduler] tick_secs and max_parallel_runs must be at least 1".into(),
            ));
        }
        if self.scheduler.lease_secs < 3 * self.scheduler.tick_secs.max(1) {
            return Err(ConfigError(
                "[scheduler] lease_secs must be at least three ticks".into(),
            ));
        }
        if self.daemon.auth_max_failures == 0
            || self.daemon.auth_failure_window_secs == 0
            || self.daemon.auth_lockout_secs == 0
        {
            return Err(ConfigError(
                "[daemon] auth_max_failures, auth_failure_window_secs and auth_lockout_secs must be at least 1".into(),
            ));
        }
        if self.daemon.request_timeout_secs == 0 {
            return Err(ConfigError(
                "[daemon] request_timeout_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Whether the control plane serves TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls.cert.is_some()
    }

    /// The data directory: the configured one, systemd's `STATE_DIRECTORY`, or `./var`.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.daemon.data_dir {
            return dir.clone();
        }
        if let Some(state) = std::env::var_os("STATE_DIRECTORY") {
            // systemd may pass several, separated by ':'; the first is ours.
            if let Some(first) = state.to_string_lossy().split(':').next()
                && !first.is_empty()
            {
                return PathBuf::from(first);
            }
        }
        PathBuf::from("var")
    }

    /// The catalog URL: `CADANG_CATALOG_URL`, the file's, or SQLite in the data directory.
    pub fn catalog_url(&self) -> String {
        if let Ok(url) = std::env::var("CADANG_CATALOG_URL")
            && !url.trim().is_empty()
        {
            return url;
        }
        match &self.catalog.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir().join("catalog.db").display()),
        }
    }

    /// Where the agencies' repositories are made.
    pub fn repository_root(&self) -> String {
        self.repositories
            .root
            .clone()
            .unwrap_or_else(|| self.data_dir().join("repositories").display().to_string())
    }

    /// The master key file.
    pub fn master_key_file(&self) -> PathBuf {
        self.secrets
            .master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir().join("master.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_defaults_are_safe() {
        let text = include_str!("../config/cadang.toml");
        let config = Config::parse(text).expect("config/cadang.toml parses");
        assert_eq!(config.daemon.listen.to_string(), DEFAULT_LISTEN);
        assert!(!config.tls_enabled());
        let defaults = Config::parse("").unwrap();
        assert_eq!(defaults.daemon.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn listening_beyond_loopback_needs_tls() {
        let error = Config::parse("[daemon]\nlisten = \"0.0.0.0:7420\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("beyond loopback"), "{error}");
        Config::parse(
            "[daemon]\nlisten = \"0.0.0.0:7420\"\n[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n",
        )
        .unwrap();
        let error = Config::parse("[tls]\ncert = \"/c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("together"), "{error}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = Config::parse("[daemon]\nlisten_port = 1\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("listen_port"), "{error}");
    }

    #[test]
    fn catalog_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://cadang:s3cret@db.internal/cadang"),
            "postgres://cadang:***@db.internal/cadang"
        );
        let config = Config::parse("[catalog]\nurl = \"postgres://u:s3cret@h/d\"\n").unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
