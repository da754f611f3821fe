//! Client commands: the officers' and agencies' side of the SOP, over gRPC to the daemon.
//!
//! The daemon's address, CA and token come from flags, then the environment
//! (`CADANG_SERVER`, `CADANG_CA`, `CADANG_TOKEN`), then `~/.config/cadang/cli.toml`
//! (`server`, `ca`, `token`). Output is a readable table, or JSON with `--json`; an error
//! is one line with the gRPC status and a non-zero exit code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use super::ExitCode;
use crate::rpc::pb::{self, *};

/// How to reach the daemon.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Daemon connection")]
pub struct ConnArgs {
    /// Daemon address, such as https://backup.dc.local:7420 (default http://127.0.0.1:7420).
    #[arg(long, env = "CADANG_SERVER", global = true)]
    pub server: Option<String>,
    /// Bearer token (prefer CADANG_TOKEN or cli.toml: flags show in `ps`).
    #[arg(long, env = "CADANG_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the daemon's certificate.
    #[arg(long, env = "CADANG_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), when the daemon asks for one.
    #[arg(long, env = "CADANG_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) of --client-cert.
    #[arg(long, env = "CADANG_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
}

/// `~/.config/cadang/cli.toml`.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct CliFile {
    server: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

fn cli_file() -> anyhow::Result<CliFile> {
    let path = match std::env::var_os("CADANG_CLI_CONFIG") {
        Some(path) => PathBuf::from(path),
        None => match std::env::var_os("XDG_CONFIG_HOME") {
            Some(base) => PathBuf::from(base).join("cadang/cli.toml"),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".config/cadang/cli.toml"),
                None => return Ok(CliFile::default()),
            },
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(CliFile::default()),
        Err(error) => Err(anyhow!("cannot read {}: {error}", path.display())),
    }
}

/// A connection: the channel and the bearer header.
pub struct Conn {
    channel: Channel,
    /// The daemon's address, as dialled.
    server: String,
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Conn {
    /// Agency codes by id, for the tables of a text output: officers know agencies by
    /// code (DINKES), not by number. Empty for JSON output, and when the listing fails
    /// (the tables then show ids alone).
    pub(crate) async fn agency_codes(&self, json: bool) -> HashMap<i64, String> {
        if json {
            return HashMap::new();
        }
        let mut directory =
            directory_service_client::DirectoryServiceClient::new(self.channel.clone());
        directory
            .list_agencies(self.req(ListAgenciesRequest {}))
            .await
            .map(|reply| {
                reply
                    .into_inner()
                    .agencies
                    .into_iter()
                    .map(|agency| (agency.id, agency.code))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Connects (lazily: the first call dials).
    ///
    /// # Errors
    /// Bad addresses, unreadable certificates, a token that is not text.
    pub fn open(args: &ConnArgs) -> anyhow::Result<Conn> {
        let file = cli_file()?;
        let server = args
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| format!("http://{}", crate::config::DEFAULT_LISTEN));
        let server = if server.contains("://") {
            server
        } else {
            format!("http://{server}")
        };
        let mut endpoint = Endpoint::from_shared(server.clone())
            .with_context(|| format!("bad daemon address `{server}`"))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120));
        let ca = args.ca.clone().or(file.ca);
        let cert = args.client_cert.clone().or(file.client_cert);
        let key = args.client_key.clone().or(file.client_key);
        if server.starts_with("https://") {
            let ca = ca.ok_or_else(|| {
                anyhow!("{server} uses TLS: give the CA that signed its certificate with --ca or CADANG_CA")
            })?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&ca)?));
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(read(&cert)?, read(&key)?));
                }
                (None, None) => {}
                _ => bail!("--client-cert and --client-key go together"),
            }
            endpoint = endpoint.tls_config(tls).context("TLS settings")?;
        } else if ca.is_some() && args.ca.is_some() {
            bail!("--ca is given but {server} is not https://");
        }
        let token = args.token.clone().or(file.token);
        let bearer = match token {
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse()
                    .map_err(|_| anyhow!("the token holds characters a header cannot carry"))?,
            ),
            None => None,
        };
        Ok(Conn {
            channel: endpoint.connect_lazy(),
            server,
            bearer,
        })
    }

    /// The channel to the daemon.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn req<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        request
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A failed call, printed as one line.
pub(crate) fn rpc_error(status: Status) -> anyhow::Error {
    let code = match status.code() {
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        _ => "ERROR",
    };
    let mut message = if status.code() == tonic::Code::Unavailable && status.message().is_empty() {
        "the daemon cannot be reached".to_owned()
    } else {
        status.message().to_owned()
    };
    if status.code() == tonic::Code::Unavailable {
        // A transport failure says little by itself ("tcp connect error"); its causes
        // say why (connection refused, no route, a certificate not trusted).
        let mut cause = std::error::Error::source(&status);
        while let Some(error) = cause {
            let text = error.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = error.source();
        }
    }
    anyhow!("{code}: {message}")
}

// ---------------------------------------------------------------------------------------
// Command line.

/// `cadang token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once.
    Create {
        /// Account the token acts as (default: yourself; others need ADMIN).
        #[arg(long)]
        user: Option<String>,
        /// Label to recognise it by.
        #[arg(long)]
        label: String,
        /// Lifetime such as 90d, 12h or 30m (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this account's.
        #[arg(long)]
        user: Option<String>,
        /// Include revoked and expired ones.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token at once.
    Revoke {
        /// Token id.
        id: i64,
    },
}

/// `cadang user ...`.
#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create an account.
    Add {
        /// Login name.
        username: String,
        /// Role (repeat): KADIN, KABID_TIK, KASI_INFRAS, PETUGAS, SKPD, ADMIN.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Agency of an SKPD account.
        #[arg(long)]
        agency: Option<i64>,
        /// The person behind it.
        #[arg(long)]
        person: Option<i64>,
    },
    /// List accounts.
    List,
    /// Disable an account (its tokens stop working at once).
    Disable {
        /// Login name.
        username: String,
    },
    /// Enable a disabled account.
    Enable {
        /// Login name.
        username: String,
    },
    /// Replace an account's roles.
    Roles {
        /// Login name.
        username: String,
        /// Role (repeat).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
}

/// `cadang agency ...`.
#[derive(Subcommand, Debug)]
pub enum AgencyCmd {
    /// Register an agency.
    Add {
        /// Short code, such as DINKES.
        #[arg(long)]
        code: String,
        /// Full name.
        #[arg(long)]
        name: String,
        /// skpd, kabupaten or kota.
        #[arg(long, default_value = "skpd")]
        kind: String,
        /// Postal address.
        #[arg(long)]
        address: String,
        /// Telephone.
        #[arg(long)]
        phone: Option<String>,
    },
    /// List agencies.
    List,
}

/// `cadang person ...`.
#[derive(Subcommand, Debug)]
pub enum PersonCmd {
    /// Register a person with a NIP.
    Add {
        /// Full name with titles.
        #[arg(long)]
        name: String,
        /// NIP (18 digits, spaces allowed).
        #[arg(long)]
        nip: String,
        /// Position.
        #[arg(long)]
        position: Option<String>,
        /// Agency (omit for the data center's staff).
        #[arg(long)]
        agency: Option<i64>,
        /// Telephone.
        #[arg(long)]
        phone: Option<String>,
    },
}

/// `cadang request <procedure> submit`.
#[derive(Args, Debug)]
pub struct ProcedureCmd {
    #[command(subcommand)]
    action: ProcedureAction,
}

#[derive(Subcommand, Debug)]
enum ProcedureAction {
    /// Submit a request of this procedure.
    Submit(SubmitArgs),
}

/// Fields of `request <procedure> submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Requesting agency id.
    #[arg(long)]
    agency: i64,
    /// Subject (perihal).
    #[arg(long)]
    subject: String,
    /// The form's fields as a TOML or JSON file (see docs/API.md).
    #[arg(long)]
    form: PathBuf,
}

/// `cadang request ...`.
#[derive(Subcommand, Debug)]
pub enum RequestCmd {
    /// Colocation handover (procedure A).
    Colocation(ProcedureCmd),
    /// Backup request (procedure B).
    Backup(ProcedureCmd),
    /// Restore request (procedure C).
    Restore(ProcedureCmd),
    /// Withdrawal of a colocated server.
    Withdrawal(ProcedureCmd),
    /// Maintenance of a colocated server.
    Maintenance(ProcedureCmd),
    /// List requests.
    List {
        /// Only this procedure (colocation_handover, backup_request, ...).
        #[arg(long)]
        procedure: Option<String>,
        /// Only active requests.
        #[arg(long)]
        active: bool,
        /// Only this agency.
        #[arg(long)]
        agency: Option<i64>,
        /// Page after this id.
        #[arg(long)]
        after: Option<i64>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one request with its steps.
    Show {
        /// Request id.
        id: i64,
    },
    /// Cancel an active request.
    Cancel {
        /// Request id.
        id: i64,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// `cadang step ...`.
#[derive(Subcommand, Debug)]
pub enum StepCmd {
    /// Complete the current task step.
    Complete {
        /// Request id.
        request: i64,
        /// Step number (must be the current one).
        step: u32,
        /// A note for the record.
        #[arg(long)]
        note: Option<String>,
        /// Reference of a document handed in (repeat).
        #[arg(long = "attach")]
        attach: Vec<String>,
    },
    /// Answer the current decision step.
    Decide {
        /// Request id.
        request: i64,
        /// Step number (must be the current one).
        step: u32,
        /// Answer yes (ya).
        #[arg(long, conflicts_with = "no", required_unless_present = "no")]
        yes: bool,
        /// Answer no (tidak).
        #[arg(long)]
        no: bool,
        /// Why (required).
        #[arg(long)]
        reason: String,
        /// Reference of a supporting document (repeat).
        #[arg(long = "attach")]
        attach: Vec<String>,
    },
    /// Attach a document reference to the current step.
    Attach {
        /// Request id.
        request: i64,
        /// Step number.
        step: u32,
        /// Document reference.
        document: String,
    },
}

/// `cadang asset ...`.
#[derive(Subcommand, Debug)]
pub enum AssetCmd {
    /// List an agency's servers.
    List {
        /// Agency (default: your own).
        #[arg(long)]
        agency: Option<i64>,
    },
    /// Show a server with its specification mismatches.
    Show {
        /// Server id.
        id: i64,
    },
    /// Enter a server colocated before cadang in the register (KASI_INFRAS, ADMIN).
    Register {
        /// Owning agency.
        #[arg(long)]
        agency: i64,
        /// JSON file: name, serial_number, server_type, brand, processor, ram,
        /// motherboard, storage, psu, ip_addresses, u_size, power_draw_w, bandwidth_mbps.
        #[arg(long)]
        file: PathBuf,
    },
    /// Record the servers measured at a handover (procedure A step 7).
    Observe {
        /// The colocation request.
        request: i64,
        /// JSON file: an array of observed servers.
        #[arg(long)]
        file: PathBuf,
    },
    /// Reveal a server's host admin password (audited).
    RevealPassword {
        /// Server id.
        id: i64,
        /// Why it is needed.
        #[arg(long)]
        reason: String,
    },
}

/// `cadang capacity ...`.
#[derive(Subcommand, Debug)]
pub enum CapacityCmd {
    /// Free rack space, power and bandwidth, and live allocations.
    Show,
    /// Add a power feed.
    AddFeed {
        /// Name.
        #[arg(long)]
        name: String,
        /// Watts.
        #[arg(long)]
        watts: i64,
    },
    /// Add a rack.
    AddRack {
        /// Name.
        #[arg(long)]
        name: String,
        /// NOC.
        #[arg(long)]
        noc: String,
        /// Room or row.
        #[arg(long)]
        location: String,
        /// Height in U.
        #[arg(long)]
        units: i64,
        /// Power budget in watts.
        #[arg(long)]
        watts: i64,
        /// Power feed id.
        #[arg(long)]
        feed: Option<i64>,
    },
    /// Add an uplink.
    AddUplink {
        /// Name.
        #[arg(long)]
        name: String,
        /// Mbit/s.
        #[arg(long)]
        mbps: i64,
    },
}

/// `cadang report ...`.
#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// Steps past their time standard.
    Overruns {
        /// Only this procedure.
        #[arg(long)]
        procedure: Option<String>,
        /// Only this agency.
        #[arg(long)]
        agency: Option<i64>,
    },
    /// Runs per plan (failures first): status, duration, bytes, dedup ratio, throughput.
    Runs {
        /// Only this agency.
        #[arg(long)]
        agency: Option<i64>,
        /// Only this plan.
        #[arg(long)]
        plan: Option<i64>,
        /// From this date (YYYY-MM-DD, Asia/Jakarta) or instant (RFC 3339); default 30 days ago.
        #[arg(long)]
        since: Option<String>,
        /// Until this date (exclusive) or instant; default now.
        #[arg(long)]
        until: Option<String>,
        /// Also write the report as an HTML page with charts.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// SOP steps past their time standard, by procedure and role.
    Sla {
        /// Also write the report as an HTML page with charts.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Repository size per agency, growth, deduplication and compression savings.
    Storage {
        /// Only this agency.
        #[arg(long)]
        agency: Option<i64>,
        /// History from this date or instant; default 90 days ago.
        #[arg(long)]
        since: Option<String>,
        /// Also write the report as an HTML page with charts.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// The notification log: sent, waiting for a retry, given up.
    Notifications {
        /// At most this many, newest first.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Plans whose last good backup is older than their schedule promises.
    Schedule {
        /// Only this agency.
        #[arg(long)]
        agency: Option<i64>,
        /// Also write the report as an HTML page with charts.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

/// An instant for a report: `YYYY-MM-DD` is midnight in Asia/Jakarta.
fn report_instant(flag: &str, text: Option<String>) -> anyhow::Result<String> {
    let Some(text) = text else {
        return Ok(String::new());
    };
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(&text) {
        return Ok(at.to_rfc3339());
    }
    let date = chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|_| {
        anyhow!("--{flag} `{text}` is neither a date (2026-03-01) nor an RFC 3339 instant")
    })?;
    let midnight = date
        .and_hms_opt(0, 0, 0)
        .and_then(|naive| {
            naive
                .and_local_timezone(chrono_tz::Asia::Jakarta)
                .earliest()
        })
        .ok_or_else(|| anyhow!("--{flag} `{text}` is not a valid date"))?;
    Ok(midnight.to_rfc3339())
}

/// Writes a report's HTML page, and prints it as JSON or a table.
fn emit_report(
    json: bool,
    reply: ReportResponse,
    html: Option<&Path>,
    table_of: impl FnOnce(&serde_json::Value),
) -> anyhow::Result<()> {
    if let Some(path) = html {
        std::fs::write(path, &reply.html)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let value = parse_json_text(&reply.report_json);
    if json {
        print_json(&value);
    } else {
        table_of(&value);
    }
    Ok(())
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "—".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn size(value: &serde_json::Value) -> String {
    value
        .as_u64()
        .map_or_else(|| "—".to_owned(), crate::app::report_html::bytes)
}

/// `cadang audit ...`.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Verify the hash chain of the audit trail.
    Verify {
        /// A checkpoint saved earlier: also detect truncation or rewriting since.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Save a new checkpoint here (keep it away from the catalog).
        #[arg(long)]
        save_checkpoint: Option<PathBuf>,
    },
    /// Export the trail as JSON lines.
    Export {
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `cadang form ...`.
#[derive(Subcommand, Debug)]
pub enum FormCmd {
    /// List the documents issued for a request.
    List {
        /// Request id.
        request: i64,
    },
    /// Issue a request's form or letter now (a copy, or a form its procedure's revision
    /// does not issue by itself).
    Issue {
        /// Request id.
        request: i64,
        /// Its kind: restore_execution_form, letter_restore_result, approval_form, ...
        #[arg(long)]
        kind: String,
    },
    /// Write a request's form or letter as HTML.
    Render {
        /// Request id.
        request: i64,
        /// Which document: its kind (handover_minutes, ...) or its number.
        #[arg(long)]
        form: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

/// What a backup plan is: `cadang plan create` and `cadang import restic`.
#[derive(Args, Debug)]
pub struct PlanCreateArgs {
    /// The backup request.
    #[arg(long)]
    pub request: i64,
    /// Plan name (unique within the agency).
    #[arg(long)]
    pub name: String,
    /// Path to back up (repeat; absolute): on the daemon's host, or with --server on
    /// that server, read by its agent.
    #[arg(long = "path", required = true)]
    pub paths: Vec<String>,
    /// The colocated server (register id) whose agent backs the paths up.
    #[arg(long = "on-server", id = "on_server", value_name = "SERVER")]
    pub server: Option<i64>,
    /// Exclude glob (repeat).
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// Leave out what a directory holding a file of this name holds, but that file
    /// (repeat); `NAME:HEADER` only when the file starts with HEADER.
    #[arg(long = "exclude-if-present", value_name = "FILE[:HEADER]")]
    pub exclude_if_present: Vec<String>,
    /// Leave out what cache directories hold (a `CACHEDIR.TAG` with its signature), but
    /// their tag.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out regular files larger than SIZE (bytes, or with K, M, G or T).
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size)]
    pub exclude_larger_than: Option<u64>,
    /// Backup schedule, cron: `0 2 * * *` is 02:00 daily.
    #[arg(long)]
    pub schedule: String,
    /// Time zone of the schedules.
    #[arg(long, default_value = "Asia/Jakarta")]
    pub time_zone: String,
    /// Keep the newest N snapshots.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep one per day for N days.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep one per week for N weeks.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep one per month for N months.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep one per year for N years.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep every snapshot carrying these tags, whatever the counts say (`legal,2026` for
    /// both tags; repeatable). Snapshots held with `restore-job hold` are always kept.
    #[arg(long = "keep-tag", value_name = "TAG[,TAG...]")]
    pub keep_tags: Vec<String>,
    /// When retention (forget + prune) runs, cron.
    #[arg(long)]
    pub retention_schedule: Option<String>,
    /// When verification runs, cron.
    #[arg(long)]
    pub verify_schedule: Option<String>,
    /// Verification reads 1/N of the data per run.
    #[arg(long, default_value_t = 7)]
    pub verify_parts: u32,
    /// When a restore drill (latest snapshot restored to scratch and verified) runs, cron.
    #[arg(long)]
    pub drill_schedule: Option<String>,
    /// When the plan's new snapshots are copied to the agency's replica repository and
    /// read back, cron (needs `[repositories] replica_root`).
    #[arg(long)]
    pub replicate_schedule: Option<String>,
    /// Hours backups may run in, local time: `22:00-05:00`.
    #[arg(long, value_name = "HH:MM-HH:MM")]
    pub window: Option<String>,
    /// Most KiB per second a backup writes to the repository.
    #[arg(long, value_name = "KIB")]
    pub bandwidth_limit: Option<u64>,
    /// Where the chunks of a plan read by an agent are compressed: `agent` (less on
    /// the wire) or `daemon` (the agency's server only reads and sends).
    #[arg(long, value_name = "SIDE", value_parser = ["agent", "daemon"], default_value = "agent")]
    pub compress_on: String,
    /// A program run before each backup on the host the plan reads, such as
    /// `"/usr/bin/pg_dump -Fc -f /var/backups/simpeg.dump simpeg"`: the program by
    /// absolute path, then its arguments, split at whitespace (no shell; a script for
    /// anything more). If it fails or times out, the run fails and nothing is read.
    #[arg(long, value_name = "COMMAND")]
    pub before_backup: Option<String>,
    /// Seconds the before-backup program may run before it is killed.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 3600,
        requires = "before_backup"
    )]
    pub before_backup_timeout: u64,
    /// A program run on the same host once the backup has read everything, whatever the
    /// outcome (in CADANG_BACKUP_RESULT: ok, partial, failed or cancelled), such as
    /// `"/usr/local/sbin/release-snapshot simpeg"`; written like --before-backup. Its
    /// failure is recorded with the run.
    #[arg(long, value_name = "COMMAND")]
    pub after_backup: Option<String>,
    /// Seconds the after-backup program may run before it is killed.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 3600,
        requires = "after_backup"
    )]
    pub after_backup_timeout: u64,
    /// Back up to this existing restic repository (a path, `s3:…`, `rest:…`) through the
    /// restic binary, instead of the agency's cadang repository.
    #[arg(long, value_name = "LOCATION")]
    pub restic_repo: Option<String>,
    /// File holding that restic repository's password.
    #[arg(
        long,
        env = "CADANG_RESTIC_PASSWORD_FILE",
        value_name = "FILE",
        requires = "restic_repo"
    )]
    pub restic_password_file: Option<PathBuf>,
    /// File of `NAME=value` lines for the restic repository's backend, such as
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` for an `s3:` repository; sealed
    /// in the catalog like the password (default: the daemon's own environment).
    #[arg(long, value_name = "FILE", requires = "restic_repo")]
    pub restic_env_file: Option<PathBuf>,
}

/// `cadang import ...`.
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ImportCmd {
    /// Adopt an existing restic repository: a plan that backs up to it through the
    /// restic binary (runs, retention, verification and drills as for cadang's own), and
    /// an `import` run listing the snapshots it already holds into the catalog.
    Restic(PlanCreateArgs),
}

/// `cadang plan ...`.
// Parsed once per process: the size of the `create` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum PlanCmd {
    /// Create a backup plan for a backup request (procedure B, step 2).
    Create(PlanCreateArgs),
    /// List plans.
    List {
        /// Only this agency.
        #[arg(long)]
        agency: Option<i64>,
    },
    /// Show a plan with its latest runs.
    Show {
        /// Plan id.
        id: i64,
    },
    /// Queue a backup now.
    RunNow {
        /// Plan id.
        id: i64,
        /// What to run: backup, verify, retention, drill (a test restore, verified) or
        /// replicate (new snapshots copied to the replica repository and read back).
        #[arg(long, default_value = "backup")]
        kind: String,
    },
    /// Pause an active plan.
    Pause {
        /// Plan id.
        id: i64,
    },
    /// Resume a paused plan.
    Resume {
        /// Plan id.
        id: i64,
    },
}

/// `cadang run ...`.
#[derive(Subcommand, Debug)]
pub enum RunCmd {
    /// List runs, newest first.
    List {
        /// Only this plan.
        #[arg(long)]
        plan: Option<i64>,
        /// Only this agency.
        #[arg(long)]
        agency: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one run.
    Show {
        /// Run id.
        id: i64,
    },
}

/// The client command families.
#[derive(Debug)]
pub enum ClientCommand {
    /// whoami
    WhoAmI,
    /// token
    Token(TokenCmd),
    /// user
    User(UserCmd),
    /// agency
    Agency(AgencyCmd),
    /// person
    Person(PersonCmd),
    /// request
    Request(RequestCmd),
    /// step
    Step(StepCmd),
    /// asset
    Asset(AssetCmd),
    /// capacity
    Capacity(CapacityCmd),
    /// report
    Report(ReportCmd),
    /// audit
    Audit(AuditCmd),
    /// form
    Form(FormCmd),
    /// plan
    Plan(PlanCmd),
    /// import
    Import(ImportCmd),
    /// run
    Run(RunCmd),
}

// ---------------------------------------------------------------------------------------
// Running.

/// Runs a client command.
pub fn run(conn: &ConnArgs, json: bool, command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cadang: error: cannot start the I/O runtime: {error}");
            return ExitCode::Failure;
        }
    };
    let mut server = None;
    let result = runtime.block_on(async {
        let conn = Conn::open(conn)?;
        server = Some(conn.server.clone());
        dispatch(&conn, json, command).await
    });
    match result {
        Ok(()) => ExitCode::Ok,
        Err(error) => {
            let line = super::output::error_line(&error);
            match server {
                // Which daemon could not be reached: the address came from a flag, the
                // environment, cli.toml or the default, and the officer may not know which.
                Some(server) if line.starts_with("UNAVAILABLE") => {
                    eprintln!("cadang: error: {line} (the daemon at {server})");
                }
                _ => eprintln!("cadang: error: {line}"),
            }
            ExitCode::Failure
        }
    }
}

pub(super) fn parse_ttl(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: i64 = number.parse().map_err(|_| {
        anyhow!("bad --ttl `{text}`: use a number and a unit, such as 90d, 12h or 30m")
    })?;
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" | "" => 1,
        _ => bail!("bad --ttl `{text}`: the unit is d, h, m or s"),
    };
    number
        .checked_mul(seconds)
        .filter(|seconds| *seconds > 0)
        .ok_or_else(|| anyhow!("bad --ttl `{text}`: must be positive"))
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("cadang: error: cannot print JSON: {error}"),
    }
}

/// A table with aligned columns.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "{}",
        line(headers.iter().map(|h| (*h).to_owned()).collect())
    );
    println!("{}", line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}

pub(crate) fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn form_json(procedure: &str, path: &Path) -> anyhow::Result<String> {
    let kind = match procedure {
        "colocation_handover" => "colocation",
        "backup_request" => "backup",
        "restore_request" => "restore",
        "colocation_withdrawal" => "withdrawal",
        _ => "maintenance",
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut value: serde_json::Value = if path.extension().is_some_and(|ext| ext == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?
    } else {
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        serde_json::to_value(table)?
    };
    let object = value
        .as_object_mut()
        .ok_or_else(|| anyhow!("{} must hold a table of fields", path.display()))?;
    object.insert("kind".into(), serde_json::Value::String(kind.into()));
    Ok(serde_json::to_string(&value)?)
}

fn print_outcome(json: bool, outcome: &RequestOutcome) {
    if json {
        print_json(&outcome_json(outcome));
        return;
    }
    if let Some(request) = &outcome.request {
        if request.status == "finished" {
            println!(
                "request {} ({}) finished: {}",
                request.id, request.procedure, request.outcome
            );
        } else {
            println!(
                "request {} ({}) now at step {}",
                request.id, request.procedure, request.current_step
            );
        }
    }
    for document in &outcome.documents {
        println!("issued {} {}", document.kind, document.number);
    }
    if !outcome.servers.is_empty() {
        println!("servers registered: {:?}", outcome.servers);
    }
    if !outcome.queued_actions.is_empty() {
        println!("actions queued: {:?}", outcome.queued_actions);
    }
}

fn parse_json_text(text: &str) -> serde_json::Value {
    if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
    }
}

fn request_json(request: &pb::Request) -> serde_json::Value {
    serde_json::json!({
        "id": request.id,
        "procedure": request.procedure,
        "revision": request.revision,
        "sop_number": request.sop_number,
        "agency_id": request.agency_id,
        "server_id": request.server_id,
        "subject": request.subject,
        "status": request.status,
        "current_step": request.current_step,
        "outcome": request.outcome,
        "version": request.version,
        "application": parse_json_text(&request.application_json),
        "state": parse_json_text(&request.state_json),
        "procedure_steps": request.procedure_steps.iter().map(|step| serde_json::json!({
            "number": step.number, "text_id": step.text_id, "text_en": step.text_en,
            "roles": step.roles, "time_standard": step.time_standard, "decision": step.decision,
        })).collect::<Vec<_>>(),
        "current_step_due_at": (!request.current_step_due_at.is_empty()).then_some(&request.current_step_due_at),
    })
}

fn outcome_json(outcome: &RequestOutcome) -> serde_json::Value {
    serde_json::json!({
        "request": outcome.request.as_ref().map(request_json),
        "documents": outcome.documents.iter().map(|d| serde_json::json!({"kind": d.kind, "number": d.number})).collect::<Vec<_>>(),
        "capacity": parse_json_text(&outcome.capacity_json),
        "servers": outcome.servers,
        "queued_actions": outcome.queued_actions,
    })
}

fn token_json(token: &TokenInfo) -> serde_json::Value {
    serde_json::json!({
        "id": token.id, "username": token.username, "label": token.label,
        "created_at": token.created_at, "expires_at": token.expires_at,
        "revoked_at": token.revoked_at, "last_used_at": token.last_used_at,
    })
}

fn account_json(account: &pb::Account) -> serde_json::Value {
    serde_json::json!({
        "id": account.id, "username": account.username, "person_id": account.person_id,
        "agency_id": account.agency_id, "roles": account.roles, "active": account.active,
        "created_at": account.created_at,
    })
}

fn print_accounts(json: bool, accounts: &[pb::Account]) {
    if json {
        print_json(&accounts.iter().map(account_json).collect::<Vec<_>>());
    } else {
        table(
            &["USER", "ROLES", "AGENCY", "ACTIVE"],
            accounts
                .iter()
                .map(|a| {
                    vec![
                        a.username.clone(),
                        a.roles.join(","),
                        if a.agency_id == 0 {
                            "-".into()
                        } else {
                            a.agency_id.to_string()
                        },
                        if a.active { "yes".into() } else { "no".into() },
                    ]
                })
                .collect(),
        );
    }
}

async fn dispatch(conn: &Conn, json: bool, command: ClientCommand) -> anyhow::Result<()> {
    let channel = conn.channel.clone();
    let mut auth = auth_service_client::AuthServiceClient::new(channel.clone());
    let mut directory = directory_service_client::DirectoryServiceClient::new(channel.clone());
    let mut requests = request_service_client::RequestServiceClient::new(channel.clone());
    let mut assets = asset_service_client::AssetServiceClient::new(channel.clone());
    let mut capacity = capacity_service_client::CapacityServiceClient::new(channel.clone());
    let mut documents = document_service_client::DocumentServiceClient::new(channel.clone());
    let mut audit = audit_service_client::AuditServiceClient::new(channel.clone());
    let mut reports = report_service_client::ReportServiceClient::new(channel.clone());
    let mut plans = plan_service_client::PlanServiceClient::new(channel.clone());
    let mut runs = run_service_client::RunServiceClient::new(channel);
    match command {
        ClientCommand::WhoAmI => {
            let me = auth
                .who_am_i(conn.req(WhoAmIRequest {}))
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                print_json(&serde_json::json!({
                    "username": me.username, "roles": me.roles, "agency_id": me.agency_id,
                    "token_id": me.token_id, "token_expires_at": me.token_expires_at,
                }));
            } else {
                println!(
                    "{} ({}){}",
                    me.username,
                    me.roles.join(", "),
                    if me.agency_id == 0 {
                        String::new()
                    } else {
                        format!(", agency {}", me.agency_id)
                    }
                );
            }
        }
        ClientCommand::Token(TokenCmd::Create { user, label, ttl }) => {
            let ttl_seconds = match ttl {
                Some(ttl) => parse_ttl(&ttl)?,
                None => 0,
            };
            let created = auth
                .create_token(conn.req(CreateTokenRequest {
                    username: user.unwrap_or_default(),
                    label,
                    ttl_seconds,
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                let mut value = created.info.as_ref().map(token_json).unwrap_or_default();
                value["token"] = serde_json::Value::String(created.token.clone());
                print_json(&value);
            } else {
                println!("{}", created.token);
                if let Some(info) = &created.info {
                    eprintln!(
                        "token {} for {} created; store it now, it cannot be shown again",
                        info.id, info.username
                    );
                }
            }
        }
        ClientCommand::Token(TokenCmd::List { user, all }) => {
            let tokens = auth
                .list_tokens(conn.req(ListTokensRequest {
                    username: user.unwrap_or_default(),
                    include_inactive: all,
                }))
                .await
                .map_err(rpc_error)?
                .into_inner()
                .tokens;
            if json {
                print_json(&tokens.iter().map(token_json).collect::<Vec<_>>());
            } else {
                table(
                    &[
                        "ID",
                        "USER",
                        "LABEL",
                        "CREATED (WIB)",
                        "EXPIRES (WIB)",
                        "REVOKED (WIB)",
                        "LAST USED (WIB)",
                    ],
                    tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.to_string(),
                                t.username.clone(),
                                t.label.clone(),
                                wib(&t.created_at),
                                wib(&t.expires_at),
                                wib(&t.revoked_at),
                                wib(&t.last_used_at),
                            ]
                        })
                        .collect(),
                );
            }
        }
        ClientCommand::Token(TokenCmd::Revoke { id }) => {
            auth.revoke_token(conn.req(RevokeTokenRequest { token_id: id }))
                .await
                .map_err(rpc_error)?;
            if !json {
                println!("token {id} revoked");
            } else {
                print_json(&serde_json::json!({"revoked": id}));
            }
        }
        ClientCommand::User(cmd) => match cmd {
            UserCmd::Add {
                username,
                roles,
                agency,
                person,
            } => {
                let account = directory
                    .create_account(conn.req(CreateAccountRequest {
                        username,
                        person_id: person.unwrap_or(0),
                        agency_id: agency.unwrap_or(0),
                        roles,
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                print_accounts(json, &[account]);
            }
            UserCmd::List => {
                let accounts = directory
                    .list_accounts(conn.req(ListAccountsRequest {}))
                    .await
                    .map_err(rpc_error)?
                    .into_inner()
                    .accounts;
                print_accounts(json, &accounts);
            }
            UserCmd::Disable { username } => {
                let account = directory
                    .set_account_active(conn.req(SetAccountActiveRequest {
                        username,
                        active: false,
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                print_accounts(json, &[account]);
            }
            UserCmd::Enable { username } => {
                let account = directory
                    .set_account_active(conn.req(SetAccountActiveRequest {
                        username,
                        active: true,
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                print_accounts(json, &[account]);
            }
            UserCmd::Roles { username, roles } => {
                let account = directory
                    .set_account_roles(conn.req(SetAccountRolesRequest { username, roles }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                print_accounts(json, &[account]);
            }
        },
        ClientCommand::Agency(AgencyCmd::Add {
            code,
            name,
            kind,
            address,
            phone,
        }) => {
            let agency = directory
                .create_agency(conn.req(CreateAgencyRequest {
                    code,
                    name,
                    kind,
                    address,
                    phone: phone.unwrap_or_default(),
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_agencies(json, &[agency]);
        }
        ClientCommand::Agency(AgencyCmd::List) => {
            let agencies = directory
                .list_agencies(conn.req(ListAgenciesRequest {}))
                .await
                .map_err(rpc_error)?
                .into_inner()
                .agencies;
            print_agencies(json, &agencies);
        }
        ClientCommand::Person(PersonCmd::Add {
            name,
            nip,
            position,
            agency,
            phone,
        }) => {
            let person = directory
                .create_person(conn.req(CreatePersonRequest {
                    name,
                    nip,
                    position: position.unwrap_or_default(),
                    agency_id: agency.unwrap_or(0),
                    phone: phone.unwrap_or_default(),
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                print_json(
                    &serde_json::json!({"id": person.id, "name": person.name, "nip": person.nip, "agency_id": person.agency_id}),
                );
            } else {
                println!("person {} {} (NIP {})", person.id, person.name, person.nip);
            }
        }
        ClientCommand::Request(cmd) => match cmd {
            RequestCmd::Colocation(form) => {
                submit(conn, json, &mut requests, "colocation_handover", form).await?
            }
            RequestCmd::Backup(form) => {
                submit(conn, json, &mut requests, "backup_request", form).await?
            }
            RequestCmd::Restore(form) => {
                submit(conn, json, &mut requests, "restore_request", form).await?
            }
            RequestCmd::Withdrawal(form) => {
                submit(conn, json, &mut requests, "colocation_withdrawal", form).await?
            }
            RequestCmd::Maintenance(form) => {
                submit(conn, json, &mut requests, "maintenance_request", form).await?
            }
            RequestCmd::List {
                procedure,
                active,
                agency,
                after,
                limit,
            } => {
                let list = requests
                    .list_requests(conn.req(ListRequestsRequest {
                        procedure: procedure.unwrap_or_default(),
                        active_only: active,
                        agency_id: agency.unwrap_or(0),
                        after: after.unwrap_or(0),
                        limit,
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner()
                    .requests;
                if json {
                    print_json(&list.iter().map(|r| serde_json::json!({
                        "id": r.id, "procedure": r.procedure, "revision": r.revision, "agency_id": r.agency_id,
                        "subject": r.subject, "status": r.status, "current_step": r.current_step,
                        "outcome": r.outcome, "opened_at": r.opened_at,
                    })).collect::<Vec<_>>());
                } else {
                    let codes = conn.agency_codes(json).await;
                    table(
                        &[
                            "ID",
                            "PROCEDURE",
                            "AGENCY",
                            "STATUS",
                            "STEP",
                            "OPENED (WIB)",
                            "SUBJECT",
                        ],
                        list.iter()
                            .map(|r| {
                                vec![
                                    r.id.to_string(),
                                    r.procedure.clone(),
                                    agency_cell(&codes, r.agency_id),
                                    if r.status == "finished" {
                                        r.outcome.clone()
                                    } else {
                                        r.status.clone()
                                    },
                                    if r.current_step == 0 {
                                        "-".into()
                                    } else {
                                        r.current_step.to_string()
                                    },
                                    wib(&r.opened_at),
                                    r.subject.clone(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            RequestCmd::Show { id } => {
                let request = requests
                    .get_request(conn.req(GetRequestRequest { request_id: id }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                if json {
                    print_json(&request_json(&request));
                } else {
                    print_request(&request, &conn.agency_codes(json).await);
                }
            }
            RequestCmd::Cancel { id, reason } => {
                let outcome = requests
                    .cancel_request(conn.req(CancelRequestRequest {
                        request_id: id,
                        reason,
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                print_outcome(json, &outcome);
            }
        },
        ClientCommand::Step(cmd) => {
            let outcome = match cmd {
                StepCmd::Complete {
                    request,
                    step,
                    note,
                    attach,
                } => {
                    requests
                        .complete_step(conn.req(CompleteStepRequest {
                            request_id: request,
                            step,
                            note: note.unwrap_or_default(),
                            documents: attach,
                        }))
                        .await
                }
                StepCmd::Decide {
                    request,
                    step,
                    yes,
                    no: _,
                    reason,
                    attach,
                } => {
                    requests
                        .decide_step(conn.req(DecideStepRequest {
                            request_id: request,
                            step,
                            yes,
                            reason,
                            documents: attach,
                        }))
                        .await
                }
                StepCmd::Attach {
                    request,
                    step,
                    document,
                } => {
                    requests
                        .attach_document(conn.req(AttachDocumentRequest {
                            request_id: request,
                            step,
                            document,
                        }))
                        .await
                }
            }
            .map_err(rpc_error)?
            .into_inner();
            print_outcome(json, &outcome);
        }
        ClientCommand::Asset(cmd) => match cmd {
            AssetCmd::List { agency } => {
                let servers = assets
                    .list_servers(conn.req(ListServersRequest {
                        agency_id: agency.unwrap_or(0),
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner()
                    .servers;
                if json {
                    print_json(
                        &servers
                            .iter()
                            .map(|s| parse_json_text(&s.detail_json))
                            .collect::<Vec<_>>(),
                    );
                } else {
                    table(
                        &["ID", "AGENCY", "NAME", "STATUS"],
                        servers
                            .iter()
                            .map(|s| {
                                vec![
                                    s.id.to_string(),
                                    s.agency_id.to_string(),
                                    s.name.clone(),
                                    s.status.clone(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            AssetCmd::Show { id } => {
                let server = assets
                    .get_server(conn.req(GetServerRequest { server_id: id }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                let value = serde_json::json!({
                    "server": parse_json_text(&server.detail_json),
                    "mismatches": parse_json_text(&server.mismatches_json),
                });
                print_json(&value);
            }
            AssetCmd::Register { agency, file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let server = assets
                    .register_server(conn.req(RegisterServerRequest {
                        agency_id: agency,
                        server_json: text,
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                if json {
                    print_json(
                        &serde_json::json!({"id": server.id, "agency_id": server.agency_id, "name": server.name, "status": server.status}),
                    );
                } else {
                    println!("server {} registered as {}", server.name, server.id);
                }
            }
            AssetCmd::Observe { request, file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                assets
                    .record_observation(conn.req(RecordObservationRequest {
                        request_id: request,
                        observed_json: text,
                    }))
                    .await
                    .map_err(rpc_error)?;
                if json {
                    print_json(&serde_json::json!({"recorded": request}));
                } else {
                    println!("observation recorded for request {request}");
                }
            }
            AssetCmd::RevealPassword { id, reason } => {
                let revealed = assets
                    .reveal_host_password(conn.req(RevealHostPasswordRequest {
                        server_id: id,
                        reason,
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                if json {
                    print_json(
                        &serde_json::json!({"user": revealed.user, "password": revealed.password}),
                    );
                } else {
                    println!(
                        "user: {}\npassword: {}",
                        or_dash(&revealed.user),
                        revealed.password
                    );
                }
            }
        },
        ClientCommand::Capacity(cmd) => {
            let added = match cmd {
                CapacityCmd::Show => {
                    let shown = capacity.show_capacity(conn.req(ShowCapacityRequest {})).await.map_err(rpc_error)?.into_inner();
                    let capacity = parse_json_text(&shown.capacity_json);
                    if json {
                        print_json(&serde_json::json!({"capacity": capacity, "allocations": parse_json_text(&shown.allocations_json)}));
                    } else {
                        print_capacity(&capacity);
                    }
                    return Ok(());
                }
                CapacityCmd::AddFeed { name, watts } => capacity.add_power_feed(conn.req(AddPowerFeedRequest { name, capacity_w: watts })).await,
                CapacityCmd::AddRack { name, noc, location, units, watts, feed } => capacity.add_rack(conn.req(AddRackRequest {
                    name, noc, location, u_size: units, power_budget_w: watts, power_feed_id: feed.unwrap_or(0),
                })).await,
                CapacityCmd::AddUplink { name, mbps } => capacity.add_uplink(conn.req(AddUplinkRequest { name, capacity_mbps: mbps })).await,
            }
            .map_err(rpc_error)?
            .into_inner();
            if json {
                print_json(&serde_json::json!({"id": added.id, "name": added.name}));
            } else {
                println!("added {} (id {})", added.name, added.id);
            }
        }
        ClientCommand::Report(ReportCmd::Overruns { procedure, agency }) => {
            let report = reports
                .overruns(conn.req(OverrunsRequest {
                    procedure: procedure.unwrap_or_default(),
                    agency_id: agency.unwrap_or(0),
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            let value = parse_json_text(&report.overruns_json);
            if json {
                print_json(&value);
            } else {
                let rows = value.as_array().cloned().unwrap_or_default();
                table(
                    &["REQUEST", "PROCEDURE", "AGENCY", "STEP", "LATE BY"],
                    rows.iter()
                        .map(|r| {
                            vec![
                                r["request_id"].to_string(),
                                r["procedure"].as_str().unwrap_or("").to_owned(),
                                r["agency_id"].to_string(),
                                r["step"].to_string(),
                                format_seconds(r["late_by_seconds"].as_i64().unwrap_or(0)),
                            ]
                        })
                        .collect(),
                );
            }
        }
        ClientCommand::Report(ReportCmd::Runs {
            agency,
            plan,
            since,
            until,
            html,
        }) => {
            let reply = reports
                .runs_report(conn.req(RunsReportRequest {
                    agency_id: agency.unwrap_or(0),
                    plan_id: plan.unwrap_or(0),
                    since: report_instant("since", since)?,
                    until: report_instant("until", until)?,
                    include_html: html.is_some(),
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            emit_report(json, reply, html.as_deref(), |report| {
                let mut rows = Vec::new();
                for plan in report["plans"].as_array().into_iter().flatten() {
                    for run in plan["runs"].as_array().into_iter().flatten() {
                        rows.push(vec![
                            text(&plan["agency_code"]),
                            format!("{} {}", plan["plan_id"], text(&plan["plan_name"])),
                            text(&run["id"]),
                            text(&run["kind"]),
                            text(&run["status"]),
                            run["due_at"].as_str().map_or_else(|| "—".to_owned(), wib),
                            run["duration_seconds"]
                                .as_f64()
                                .map_or_else(|| "—".into(), |s| format_seconds(s.round() as i64)),
                            size(&run["bytes_read"]),
                            size(&run["bytes_added"]),
                            run["dedup_ratio"]
                                .as_f64()
                                .map_or_else(|| "—".into(), |r| format!("{r:.1}x")),
                            text(&run["error"]),
                        ]);
                    }
                }
                table(
                    &[
                        "AGENCY",
                        "PLAN",
                        "RUN",
                        "KIND",
                        "STATUS",
                        "DUE (WIB)",
                        "DURATION",
                        "READ",
                        "ADDED",
                        "DEDUP",
                        "ERROR",
                    ],
                    rows,
                );
                for plan in report["plans"].as_array().into_iter().flatten() {
                    if let Ok(lag) = serde_json::from_value::<crate::app::ReplicaLag>(
                        plan["replica_lag"].clone(),
                    ) {
                        println!(
                            "{} {} {}: replica {}",
                            text(&plan["agency_code"]),
                            plan["plan_id"],
                            text(&plan["plan_name"]),
                            crate::app::report_html::replica_lag_text(&lag)
                        );
                    }
                }
            })?;
        }
        ClientCommand::Report(ReportCmd::Sla { html }) => {
            let reply = reports
                .sla_report(conn.req(SlaReportRequest {
                    include_html: html.is_some(),
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            emit_report(json, reply, html.as_deref(), |report| {
                table(
                    &["PROCEDURE", "ROLE", "OVERRUNS", "OPEN", "WORST"],
                    report["groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|group| {
                            vec![
                                text(&group["procedure"]),
                                text(&group["role"]),
                                text(&group["overruns"]),
                                text(&group["open"]),
                                format_seconds(group["max_late_seconds"].as_i64().unwrap_or(0)),
                            ]
                        })
                        .collect(),
                );
            })?;
        }
        ClientCommand::Report(ReportCmd::Storage {
            agency,
            since,
            html,
        }) => {
            let reply = reports
                .storage_report(conn.req(StorageReportRequest {
                    agency_id: agency.unwrap_or(0),
                    since: report_instant("since", since)?,
                    include_html: html.is_some(),
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            emit_report(json, reply, html.as_deref(), |report| {
                table(
                    &[
                        "AGENCY",
                        "STORED",
                        "UNIQUE",
                        "SNAPSHOTS",
                        "DEDUP SAVES",
                        "COMPRESSION SAVES",
                        "GROWTH",
                    ],
                    report["agencies"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|agency| {
                            vec![
                                text(&agency["agency_code"]),
                                size(&agency["stored_bytes"]),
                                size(&agency["unique_bytes"]),
                                size(&agency["logical_bytes"]),
                                format!(
                                    "{:.0}%",
                                    agency["dedup_savings"].as_f64().unwrap_or(0.0) * 100.0
                                ),
                                format!(
                                    "{:.0}%",
                                    agency["compression_savings"].as_f64().unwrap_or(0.0) * 100.0
                                ),
                                text(&agency["growth_bytes"]),
                            ]
                        })
                        .collect(),
                );
            })?;
        }
        ClientCommand::Report(ReportCmd::Notifications { limit }) => {
            let log = reports
                .list_notifications(conn.req(ListNotificationsRequest { limit }))
                .await
                .map_err(rpc_error)?
                .into_inner()
                .notifications;
            if json {
                print_json(
                    &log.iter()
                        .map(|n| {
                            serde_json::json!({
                                "id": n.id, "event_key": n.event_key, "channel": n.channel, "kind": n.kind,
                                "agency_id": n.agency_id, "subject": n.subject, "status": n.status,
                                "attempts": n.attempts, "next_attempt_at": n.next_attempt_at,
                                "last_error": n.last_error, "created_at": n.created_at, "sent_at": n.sent_at,
                            })
                        })
                        .collect::<Vec<_>>(),
                );
            } else {
                table(
                    &[
                        "ID",
                        "CHANNEL",
                        "KIND",
                        "STATUS",
                        "ATTEMPTS",
                        "CREATED (WIB)",
                        "SUBJECT",
                        "LAST ERROR",
                    ],
                    log.iter()
                        .map(|n| {
                            vec![
                                n.id.to_string(),
                                n.channel.clone(),
                                n.kind.clone(),
                                n.status.clone(),
                                n.attempts.to_string(),
                                wib(&n.created_at),
                                n.subject.clone(),
                                or_dash(&n.last_error),
                            ]
                        })
                        .collect(),
                );
            }
        }
        ClientCommand::Report(ReportCmd::Schedule { agency, html }) => {
            let reply = reports
                .schedule_report(conn.req(ScheduleReportRequest {
                    agency_id: agency.unwrap_or(0),
                    include_html: html.is_some(),
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            emit_report(json, reply, html.as_deref(), |report| {
                table(
                    &[
                        "AGENCY",
                        "PLAN",
                        "STATUS",
                        "LAST GOOD (WIB)",
                        "PROMISED BY (WIB)",
                        "LATE BY",
                        "LAST RUN",
                    ],
                    report["plans"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|plan| {
                            vec![
                                text(&plan["agency_code"]),
                                format!("{} {}", plan["plan_id"], text(&plan["plan_name"])),
                                text(&plan["status"]),
                                plan["last_good_at"]
                                    .as_str()
                                    .map_or_else(|| "—".to_owned(), wib),
                                plan["expected_by"]
                                    .as_str()
                                    .map_or_else(|| "—".to_owned(), wib),
                                if plan["overdue"] == serde_json::json!(true) {
                                    format_seconds(plan["late_by_seconds"].as_i64().unwrap_or(0))
                                } else {
                                    "on time".to_owned()
                                },
                                text(&plan["last_status"]),
                            ]
                        })
                        .collect(),
                );
            })?;
        }
        ClientCommand::Audit(AuditCmd::Verify {
            checkpoint,
            save_checkpoint,
        }) => {
            let checkpoint_json = match &checkpoint {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => String::new(),
            };
            let verdict = audit
                .verify_audit(conn.req(VerifyAuditRequest { checkpoint_json }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            if let Some(path) = &save_checkpoint {
                std::fs::write(path, &verdict.checkpoint_json)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if json {
                print_json(
                    &serde_json::json!({"intact": verdict.intact, "rows_checked": verdict.rows_checked, "last_seq": verdict.last_seq, "last_hash": verdict.last_hash, "problem": verdict.problem}),
                );
            } else if verdict.intact {
                println!(
                    "audit trail intact: {} rows, last #{} {}",
                    verdict.rows_checked, verdict.last_seq, verdict.last_hash
                );
            } else {
                println!("audit trail BROKEN: {}", verdict.problem);
            }
            if !verdict.intact {
                bail!("the audit trail does not verify");
            }
        }
        ClientCommand::Audit(AuditCmd::Export { out }) => {
            let mut lines = String::new();
            let mut after = 0;
            loop {
                let page = audit
                    .export_audit(conn.req(ExportAuditRequest {
                        after_seq: after,
                        limit: 1000,
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner()
                    .rows;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for row in &page {
                    let value = serde_json::json!({
                        "seq": row.seq, "at": row.at, "actor": row.actor, "role": row.role, "action": row.action,
                        "entity": row.entity, "entity_id": row.entity_id,
                        "before": parse_json_text(&row.before_json), "after": parse_json_text(&row.after_json),
                        "prev_hash": row.prev_hash, "hash": row.hash,
                    });
                    lines.push_str(&value.to_string());
                    lines.push('\n');
                }
            }
            match out {
                Some(path) => std::fs::write(&path, lines)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{lines}"),
            }
        }
        ClientCommand::Import(ImportCmd::Restic(args)) => {
            if args.restic_repo.is_none() {
                return Err(anyhow!(
                    "--restic-repo names the restic repository to adopt"
                ));
            }
            let plan = create_plan(&mut plans, conn, args).await?;
            // The snapshots it already holds, listed into the catalog by an `import` run.
            let run = plans
                .run_now(conn.req(RunNowRequest {
                    plan_id: plan.id,
                    kind: "import".into(),
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                print_json(
                    &serde_json::json!({ "plan": plan_json(&plan), "import_run": run_json(&run) }),
                );
            } else {
                print_plans(false, &[plan], &conn.agency_codes(false).await);
                print_runs(false, &[run]);
            }
        }
        ClientCommand::Plan(cmd) => match cmd {
            PlanCmd::Create(args) => {
                let plan = create_plan(&mut plans, conn, args).await?;
                print_plans(json, &[plan], &conn.agency_codes(json).await);
            }
            PlanCmd::List { agency } => {
                let list = plans
                    .list_plans(conn.req(ListPlansRequest {
                        agency_id: agency.unwrap_or(0),
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner()
                    .plans;
                print_plans(json, &list, &conn.agency_codes(json).await);
            }
            PlanCmd::Show { id } => {
                let shown = plans
                    .get_plan(conn.req(GetPlanRequest {
                        plan_id: id,
                        runs: 20,
                    }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                if json {
                    print_json(&serde_json::json!({
                        "plan": shown.plan.as_ref().map(plan_json),
                        "runs": shown.runs.iter().map(run_json).collect::<Vec<_>>(),
                    }));
                } else {
                    if let Some(plan) = &shown.plan {
                        print_plans(
                            false,
                            std::slice::from_ref(plan),
                            &conn.agency_codes(false).await,
                        );
                        print_plan_spec(plan);
                    }
                    println!();
                    print_runs(false, &shown.runs);
                }
            }
            PlanCmd::RunNow { id, kind } => {
                let run = plans
                    .run_now(conn.req(RunNowRequest { plan_id: id, kind }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                print_runs(json, &[run]);
            }
            PlanCmd::Pause { id } => {
                let plan = plans
                    .pause_plan(conn.req(PausePlanRequest { plan_id: id }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                print_plans(json, &[plan], &conn.agency_codes(json).await);
            }
            PlanCmd::Resume { id } => {
                let plan = plans
                    .resume_plan(conn.req(ResumePlanRequest { plan_id: id }))
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                print_plans(json, &[plan], &conn.agency_codes(json).await);
            }
        },
        ClientCommand::Run(RunCmd::List {
            plan,
            agency,
            limit,
        }) => {
            let list = runs
                .list_runs(conn.req(ListRunsRequest {
                    plan_id: plan.unwrap_or(0),
                    agency_id: agency.unwrap_or(0),
                    limit,
                }))
                .await
                .map_err(rpc_error)?
                .into_inner()
                .runs;
            print_runs(json, &list);
        }
        ClientCommand::Run(RunCmd::Show { id }) => {
            let run = runs
                .get_run(conn.req(GetRunRequest { run_id: id }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_json(&run_json(&run));
        }
        ClientCommand::Form(FormCmd::Issue { request, kind }) => {
            let issued = documents
                .issue_document(conn.req(IssueDocumentRequest {
                    request_id: request,
                    kind,
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                print_json(
                    &serde_json::json!({"kind": issued.kind, "number": issued.number, "title": issued.title, "step": issued.step, "issued_at": issued.issued_at, "issued_by": issued.issued_by}),
                );
            } else {
                println!(
                    "issued {} {} ({})",
                    issued.kind, issued.number, issued.title
                );
            }
        }
        ClientCommand::Form(FormCmd::List { request }) => {
            let list = documents
                .list_documents(conn.req(ListDocumentsRequest {
                    request_id: request,
                }))
                .await
                .map_err(rpc_error)?
                .into_inner()
                .documents;
            if json {
                print_json(&list.iter().map(|d| serde_json::json!({"kind": d.kind, "number": d.number, "title": d.title, "step": d.step, "issued_at": d.issued_at, "issued_by": d.issued_by})).collect::<Vec<_>>());
            } else {
                table(
                    &["NUMBER", "KIND", "STEP", "ISSUED (WIB)", "TITLE"],
                    list.iter()
                        .map(|d| {
                            vec![
                                d.number.clone(),
                                d.kind.clone(),
                                d.step.to_string(),
                                wib(&d.issued_at),
                                d.title.clone(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        ClientCommand::Form(FormCmd::Render { request, form, out }) => {
            let list = documents
                .list_documents(conn.req(ListDocumentsRequest {
                    request_id: request,
                }))
                .await
                .map_err(rpc_error)?
                .into_inner()
                .documents;
            let found: Vec<_> = list
                .iter()
                .filter(|d| d.kind == form || d.number == form)
                .collect();
            let chosen = match found.as_slice() {
                [] => bail!(
                    "request {request} has no document `{form}`; it has: {}",
                    list.iter()
                        .map(|d| d.kind.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                // A step visited twice issues its form twice: the latest is the one in force.
                several => several[several.len() - 1],
            };
            let document = documents
                .get_document(conn.req(GetDocumentRequest {
                    number: chosen.number.clone(),
                }))
                .await
                .map_err(rpc_error)?
                .into_inner();
            std::fs::write(&out, &document.html)
                .with_context(|| format!("cannot write {}", out.display()))?;
            if json {
                print_json(
                    &serde_json::json!({"number": document.number, "kind": document.kind, "out": out}),
                );
            } else {
                println!(
                    "{} {} written to {}",
                    document.kind,
                    document.number,
                    out.display()
                );
            }
        }
    }
    Ok(())
}

async fn submit(
    conn: &Conn,
    json: bool,
    requests: &mut request_service_client::RequestServiceClient<Channel>,
    procedure: &str,
    form: ProcedureCmd,
) -> anyhow::Result<()> {
    let ProcedureAction::Submit(args) = form.action;
    let application_json = form_json(procedure, &args.form)?;
    let outcome = requests
        .open_request(conn.req(OpenRequestRequest {
            procedure: procedure.into(),
            agency_id: args.agency,
            subject: args.subject,
            application_json,
        }))
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_outcome(json, &outcome);
    Ok(())
}

fn plan_json(plan: &pb::Plan) -> serde_json::Value {
    serde_json::json!({
        "id": plan.id, "agency_id": plan.agency_id, "request_id": plan.request_id, "name": plan.name,
        "status": plan.status, "spec": parse_json_text(&plan.spec_json),
        "next_backup_at": plan.next_backup_at, "next_retention_at": plan.next_retention_at,
        "next_verify_at": plan.next_verify_at, "next_replicate_at": plan.next_replicate_at,
    })
}

fn run_json(run: &pb::Run) -> serde_json::Value {
    serde_json::json!({
        "id": run.id, "plan_id": run.plan_id, "kind": run.kind, "trigger": run.trigger, "due_at": run.due_at,
        "status": run.status, "attempts": run.attempts, "queued_at": run.queued_at, "started_at": run.started_at,
        "finished_at": run.finished_at, "stats": parse_json_text(&run.stats_json), "snapshot_id": run.snapshot_id,
        "error": run.error, "request_id": run.request_id, "step": run.step, "lease_owner": run.lease_owner,
    })
}

/// Creates a plan from `plan create` / `import restic` arguments.
async fn create_plan(
    plans: &mut plan_service_client::PlanServiceClient<Channel>,
    conn: &Conn,
    args: PlanCreateArgs,
) -> anyhow::Result<pb::Plan> {
    let window = args
        .window
        .map(|window| match window.split_once('-') {
            Some((start, end)) => {
                Ok(serde_json::json!({ "start": start.trim(), "end": end.trim() }))
            }
            None => Err(anyhow!(
                "--window `{window}` must be two times of day, such as 22:00-05:00"
            )),
        })
        .transpose()?;
    let restic = match args.restic_repo {
        Some(repository) => {
            let file = args.restic_password_file.ok_or_else(|| {
                anyhow!("--restic-password-file (or CADANG_RESTIC_PASSWORD_FILE) gives the restic repository's password")
            })?;
            let password = String::from_utf8(super::repo_cmds::read_password_file(&file)?)
                .map_err(|_| anyhow!("{} does not hold UTF-8 text", file.display()))?;
            let env = args
                .restic_env_file
                .map(|file| {
                    std::fs::read_to_string(&file)
                        .map_err(|error| anyhow!("cannot read {}: {error}", file.display()))
                })
                .transpose()?;
            Some(serde_json::json!({ "repository": repository, "password": password, "env": env }))
        }
        None => None,
    };
    let program = |command: Option<String>, timeout_secs: u64| {
        command.map(|command| {
            let command: Vec<&str> = command.split_whitespace().collect();
            serde_json::json!({ "command": command, "timeout_secs": timeout_secs })
        })
    };
    let before_backup = program(args.before_backup, args.before_backup_timeout);
    let after_backup = program(args.after_backup, args.after_backup_timeout);
    let spec = serde_json::json!({
        "paths": args.paths, "excludes": args.excludes, "exclude_if_present": args.exclude_if_present,
        "exclude_caches": args.exclude_caches, "exclude_larger_than": args.exclude_larger_than,
        "schedule": args.schedule, "time_zone": args.time_zone,
        "retention": {"last": args.keep_last, "daily": args.keep_daily, "weekly": args.keep_weekly, "monthly": args.keep_monthly, "yearly": args.keep_yearly, "keep_tags": args.keep_tags},
        "retention_schedule": args.retention_schedule, "verify_schedule": args.verify_schedule, "verify_parts": args.verify_parts,
        "drill_schedule": args.drill_schedule, "replicate_schedule": args.replicate_schedule, "window": window, "bandwidth_limit_kib": args.bandwidth_limit,
        "server": args.server, "restic": restic, "compress_on": args.compress_on,
        "before_backup": before_backup, "after_backup": after_backup,
    });
    Ok(plans
        .create_plan(conn.req(CreatePlanRequest {
            request_id: args.request,
            name: args.name,
            spec_json: spec.to_string(),
        }))
        .await
        .map_err(rpc_error)?
        .into_inner())
}

/// An agency's id and, when known, its code: `1 DINKES`.
pub(crate) fn agency_cell(codes: &HashMap<i64, String>, id: i64) -> String {
    codes
        .get(&id)
        .map_or_else(|| id.to_string(), |code| format!("{id} {code}"))
}

fn print_plans(json: bool, plans: &[pb::Plan], codes: &HashMap<i64, String>) {
    if json {
        print_json(&plans.iter().map(plan_json).collect::<Vec<_>>());
    } else {
        table(
            &["ID", "AGENCY", "NAME", "STATUS", "NEXT BACKUP (WIB)"],
            plans
                .iter()
                .map(|p| {
                    vec![
                        p.id.to_string(),
                        agency_cell(codes, p.agency_id),
                        p.name.clone(),
                        p.status.clone(),
                        wib(&p.next_backup_at),
                    ]
                })
                .collect(),
        );
    }
}

fn print_runs(json: bool, runs: &[pb::Run]) {
    if json {
        print_json(&runs.iter().map(run_json).collect::<Vec<_>>());
    } else {
        table(
            &[
                "ID",
                "PLAN",
                "KIND",
                "TRIGGER",
                "DUE (WIB)",
                "STATUS",
                "SNAPSHOT",
                "ERROR",
            ],
            runs.iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.plan_id.to_string(),
                        r.kind.clone(),
                        r.trigger.clone(),
                        wib(&r.due_at),
                        r.status.clone(),
                        or_dash(&r.snapshot_id.chars().take(12).collect::<String>()),
                        r.error.chars().take(60).collect(),
                    ]
                })
                .collect(),
        );
    }
}

fn format_seconds(seconds: i64) -> String {
    let hours = seconds / 3600;
    let minutes = (seconds % 3600) / 60;
    if hours >= 24 {
        format!("{}d {}h", hours / 24, hours % 24)
    } else {
        format!("{hours}h {minutes}m")
    }
}

fn print_agencies(json: bool, agencies: &[pb::Agency]) {
    if json {
        print_json(&agencies.iter().map(|a| serde_json::json!({"id": a.id, "code": a.code, "name": a.name, "kind": a.kind, "address": a.address, "phone": a.phone})).collect::<Vec<_>>());
    } else {
        table(
            &["ID", "CODE", "KIND", "NAME"],
            agencies
                .iter()
                .map(|a| {
                    vec![
                        a.id.to_string(),
                        a.code.clone(),
                        a.kind.clone(),
                        a.name.clone(),
                    ]
                })
                .collect(),
        );
    }
}

fn print_request(request: &pb::Request, codes: &HashMap<i64, String>) {
    println!(
        "request {}  {} r{} (SOP {})",
        request.id, request.procedure, request.revision, request.sop_number
    );
    println!("subject: {}", request.subject);
    println!("agency:  {}", agency_cell(codes, request.agency_id));
    let defined = |number: u64| {
        request
            .procedure_steps
            .iter()
            .find(|step| u64::from(step.number) == number)
    };
    if request.status == "finished" {
        println!("status:  finished ({})", request.outcome);
    } else {
        println!("status:  active, at step {}", request.current_step);
        // What the step asks, of whom, and by when: what an officer needs to act on it.
        if let Some(step) = defined(u64::from(request.current_step)) {
            println!("         {} ({})", step.text_id, step.text_en);
            let due = if request.current_step_due_at.is_empty() {
                String::new()
            } else {
                format!(", due {} WIB", wib(&request.current_step_due_at))
            };
            println!(
                "         {} by {}, within {}{due}",
                if step.decision { "answered" } else { "done" },
                step.roles.join(" or "),
                step.time_standard
            );
        }
    }
    let state = parse_json_text(&request.state_json);
    if let Some(steps) = state["steps"].as_array() {
        println!();
        table(
            &[
                "STEP",
                "WHAT",
                "STARTED (WIB)",
                "FINISHED (WIB)",
                "BY",
                "ROLE",
                "DECISION",
                "REASON/NOTE",
            ],
            steps
                .iter()
                .map(|s| {
                    let what = s["step"]
                        .as_u64()
                        .and_then(defined)
                        .map(|step| shortened(&step.text_en, 40))
                        .unwrap_or_default();
                    vec![
                        s["step"].to_string(),
                        what,
                        wib(s["started_at"].as_str().unwrap_or_default()),
                        wib(s["finished_at"].as_str().unwrap_or_default()),
                        s["actor"].as_str().unwrap_or("-").to_owned(),
                        s["role"].as_str().unwrap_or("-").to_owned(),
                        s["decision"].as_str().unwrap_or("-").to_owned(),
                        s["reason"]
                            .as_str()
                            .or(s["note"].as_str())
                            .unwrap_or("")
                            .to_owned(),
                    ]
                })
                .collect(),
        );
    }
}

/// An RFC 3339 instant as `YYYY-MM-DD HH:MM` in Western Indonesian Time (the SOP's
/// clock), for tables; `-` for none, and the text itself when it is not an instant.
/// JSON output keeps RFC 3339 in UTC.
pub(crate) fn wib(at: &str) -> String {
    if at.is_empty() {
        return "-".to_owned();
    }
    chrono::DateTime::parse_from_rfc3339(at).map_or_else(
        |_| at.to_owned(),
        |at| {
            at.with_timezone(&crate::engine::forget::jakarta())
                .format("%Y-%m-%d %H:%M")
                .to_string()
        },
    )
}

/// A plan's specification as `name: value` lines, leaving out what is unset, and its
/// next scheduled runs.
fn print_plan_spec(plan: &pb::Plan) {
    fn shown(value: &serde_json::Value) -> Option<String> {
        match value {
            serde_json::Value::Null => None,
            serde_json::Value::Array(items) if items.is_empty() => None,
            serde_json::Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(shown)
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            serde_json::Value::Object(fields) => {
                let set: Vec<String> = fields
                    .iter()
                    .filter(|(_, v)| *v != &serde_json::json!(0))
                    .filter_map(|(k, v)| shown(v).map(|v| format!("{k} {v}")))
                    .collect();
                (!set.is_empty()).then(|| set.join(", "))
            }
            serde_json::Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        }
    }
    println!();
    let spec = parse_json_text(&plan.spec_json);
    if let Some(fields) = spec.as_object() {
        for (name, value) in fields {
            if let Some(value) = shown(value) {
                println!("{:<20} {value}", format!("{}:", name.replace('_', " ")));
            }
        }
    }
    for (name, at) in [
        ("next retention", &plan.next_retention_at),
        ("next verification", &plan.next_verify_at),
        ("next replication", &plan.next_replicate_at),
    ] {
        if !at.is_empty() {
            println!("{:<20} {} WIB", format!("{name}:"), wib(at));
        }
    }
}

/// `text` cut to at most `max` characters, the cut marked with `…`.
fn shortened(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn print_capacity(capacity: &serde_json::Value) {
    let racks = capacity["racks"].as_array().cloned().unwrap_or_default();
    table(
        &[
            "RACK",
            "NOC",
            "U FREE",
            "U SIZE",
            "LARGEST BLOCK",
            "POWER BUDGET W",
        ],
        racks
            .iter()
            .map(|r| {
                vec![
                    r["name"].as_str().unwrap_or("").to_owned(),
                    r["noc"].as_str().unwrap_or("").to_owned(),
                    r["free_u"].to_string(),
                    r["u_size"].to_string(),
                    r["largest_free_block"].to_string(),
                    r["power_budget_w"].to_string(),
                ]
            })
            .collect(),
    );
    let uplinks = capacity["uplinks"].as_array().cloned().unwrap_or_default();
    if !uplinks.is_empty() {
        println!();
        table(
            &["UPLINK", "DETAIL"],
            uplinks
                .iter()
                .map(|u| vec![u["name"].as_str().unwrap_or("").to_owned(), u.to_string()])
                .collect(),
        );
    }
}
