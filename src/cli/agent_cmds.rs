//! `cadang agent …` (enrolment tokens, the agent process, inventories) and
//! `cadang restore-job …` (restores to agents).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::client::{Conn, ConnArgs, or_dash, print_json, rpc_error, table};
use super::output::ExitCode;
use crate::agent::{self, StateDir};
use crate::rpc::pb;
use crate::rpc::pb::agent_admin_service_client::AgentAdminServiceClient;
use crate::rpc::pb::restore_service_client::RestoreServiceClient;

/// Where the agent keeps its state unless told otherwise (systemd's StateDirectory).
const DEFAULT_STATE_DIR: &str = "/var/lib/cadang-agent";

/// `cadang agent …`
#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Create a one-time enrolment token for a server in the asset register (officers).
    EnrollToken {
        /// Server id in the asset register (or --request and --declared at a handover).
        #[arg(
            id = "server_id",
            value_name = "SERVER",
            required_unless_present = "request"
        )]
        server: Option<i64>,
        /// A colocation request at its handover step (procedure A step 7): the agent's
        /// measurement becomes the step's observation.
        #[arg(long, requires = "declared", conflicts_with = "server_id")]
        request: Option<i64>,
        /// The declared server's name in that request.
        #[arg(long)]
        declared: Option<String>,
        /// Hours the token stays valid (default 24).
        #[arg(long)]
        hours: Option<i64>,
    },
    /// Enrol this machine with a one-time token and store its credential (on the server):
    /// `cadang agent enroll --server https://backup.dc.local:7420 --ca ca.pem`.
    Enroll {
        /// The one-time enrolment token (prefer CADANG_ENROLL_TOKEN: flags show in `ps`).
        #[arg(long, env = "CADANG_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// State directory (credential, caches).
        #[arg(long, env = "CADANG_AGENT_STATE", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Run the agent: connect to the daemon and carry out its backups and restores.
    Run {
        /// State directory written by `cadang agent enroll`.
        #[arg(long, env = "CADANG_AGENT_STATE", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// A program the daemon may have this agent run (a plan's before-backup program,
        /// a restore's check), by absolute path; a directory ending in `/` allows the
        /// programs in it. Repeatable; CADANG_AGENT_ALLOW_PROGRAMS takes a `:`-separated
        /// list. Without it the agent runs no program.
        #[arg(
            long = "allow-program",
            value_name = "PATH",
            env = "CADANG_AGENT_ALLOW_PROGRAMS",
            value_delimiter = ':'
        )]
        allow_programs: Vec<PathBuf>,
    },
    /// List agents.
    List {
        /// Only this agency's.
        #[arg(long)]
        agency: Option<i64>,
    },
    /// Revoke an agent: its credential is refused from now on.
    Revoke {
        /// Agent id.
        id: i64,
    },
    /// A server's latest hardware inventory and its differences from the register; with
    /// --local, this machine's inventory (no daemon needed).
    Inventory {
        /// Server id in the asset register.
        #[arg(
            id = "server_id",
            value_name = "SERVER",
            required_unless_present = "local"
        )]
        server: Option<i64>,
        /// Read this machine's inventory instead.
        #[arg(long)]
        local: bool,
    },
}

/// `cadang restore-job …`
#[derive(Subcommand, Debug)]
pub enum RestoreJobCmd {
    /// Restore a server's snapshot through an agent, verifying every file.
    Start {
        /// The server whose backups are restored (register id).
        #[arg(long = "source", id = "source_server", value_name = "SERVER")]
        server: i64,
        /// Snapshot id (prefix) or `latest`.
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Absolute directory on the target server to restore into.
        #[arg(long)]
        target: String,
        /// Only this path of the snapshot (repeatable).
        #[arg(long = "path")]
        paths: Vec<String>,
        /// Leave out entries matching this glob, and what is below them (repeatable; as a
        /// plan's `--exclude`: without `/` a name anywhere, with `/` a path from the root).
        #[arg(short = 'e', long = "exclude", value_name = "GLOB")]
        excludes: Vec<String>,
        /// What becomes of files already in the target directory: `always` replaces
        /// them, but the agent reads each and keeps (sent no data, given the snapshot's
        /// metadata) a file whose content is already the snapshot's; `if-changed` takes
        /// a file of the recorded size and time as unchanged without reading it;
        /// `if-newer` replaces only what is older than the snapshot's copy; `never`
        /// leaves what exists as it is.
        #[arg(long, value_name = "MODE", default_value = "always")]
        overwrite: crate::engine::restore::Overwrite,
        /// Also delete from the target what the snapshot does not hold, in the
        /// directories restored at or below the snapshot's backed-up paths (never above
        /// them), among what the paths and `--exclude` select.
        #[arg(long)]
        delete: bool,
        /// Only find out what the restore would do: the agent reads what the target
        /// holds and says what it would write, keep and (with `--delete`) delete, but
        /// writes nothing; no content is sent. Not with `--request`.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Restore to another server of the same agency.
        #[arg(long)]
        to_server: Option<i64>,
        /// The restore request (procedure C) it serves.
        #[arg(long)]
        request: Option<i64>,
        /// Restore from this plan's existing restic repository instead of the server's
        /// snapshots in the agency's cadang repository.
        #[arg(long = "from-plan", value_name = "PLAN")]
        from_plan: Option<i64>,
        /// Wait for the result, showing progress; exit 3 when files failed verification.
        #[arg(long)]
        wait: bool,
    },
    /// List restores.
    List {
        /// Only this agency's.
        #[arg(long)]
        agency: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one restore with its failed files.
    Show {
        /// Restore id.
        id: i64,
        /// Wait until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// List the snapshots of a server's backups.
    Snapshots {
        /// Server id in the register.
        #[arg(id = "server_id", value_name = "SERVER")]
        server: i64,
        /// List the snapshots of this plan's existing restic repository instead (what
        /// `start --from-plan` restores from).
        #[arg(long = "from-plan", value_name = "PLAN")]
        from_plan: Option<i64>,
    },
    /// Hold a server's snapshot past its plan's retention (an audit, a dispute), or
    /// release the hold; the reason goes into the audit trail.
    Hold {
        /// Server id in the register.
        #[arg(id = "server_id", value_name = "SERVER")]
        server: i64,
        /// Snapshot id (prefix) or `latest`.
        snapshot: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
        /// Release the hold instead.
        #[arg(long)]
        release: bool,
    },
    /// Take files out of every backup of a server, in the agency's repository and its
    /// replica (personal data the agency must erase, a secret backed up by mistake), then
    /// repack what held them; the reason goes into the audit trail. The files must also
    /// leave the server, or the plan must exclude them, or the next backup takes them
    /// again.
    Erase {
        /// Server id in the register.
        #[arg(id = "server_id", value_name = "SERVER")]
        server: i64,
        /// What to take out: a plan's exclude pattern (without `/` a name anywhere, with
        /// `/` an absolute path; a directory goes with everything below it). Repeatable.
        #[arg(long = "exclude", short = 'e', value_name = "PATTERN", required = true)]
        patterns: Vec<String>,
        /// Why (required).
        #[arg(long)]
        reason: String,
        /// Show what would be taken out; change nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// List the files of a server's snapshot: one directory, everything below it
    /// (`--recursive`), or the file a path names — to choose the `--path`s of a restore.
    Ls {
        /// Server id in the register.
        #[arg(id = "server_id", value_name = "SERVER")]
        server: i64,
        /// Snapshot: id, unique prefix, `latest`, `as-of:TIME` or `before:SPEC`.
        snapshot: String,
        /// Absolute path in the snapshot (default: the root).
        #[arg(default_value = "/")]
        path: String,
        /// Everything below the path, not only its own entries.
        #[arg(long, short = 'R')]
        recursive: bool,
        /// At most this many entries (the daemon allows up to 100000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// List a snapshot of this plan's existing restic repository instead (ids as
        /// `snapshots --from-plan` gives them).
        #[arg(long = "from-plan", value_name = "PLAN")]
        from_plan: Option<i64>,
    },
    /// Find files by name in a server's snapshots, newest first: which backup still
    /// holds a lost file, and where it was.
    Find {
        /// Server id in the register.
        #[arg(id = "server_id", value_name = "SERVER")]
        server: i64,
        /// Shell globs: without `/` they match names (`*.xlsx`), with `/` absolute paths
        /// (`/var/www/**/index.php`).
        #[arg(required = true, value_name = "PATTERN")]
        patterns: Vec<String>,
        /// Only this snapshot (id, unique prefix, `latest`, `as-of:TIME`, `before:SPEC`).
        #[arg(long)]
        snapshot: Option<String>,
        /// Match letters of either case.
        #[arg(long, short = 'i')]
        ignore_case: bool,
        /// At most this many matches in all (the daemon allows up to 100000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Search the snapshots of this plan's existing restic repository instead (one
        /// restic listing per snapshot searched).
        #[arg(long = "from-plan", value_name = "PLAN")]
        from_plan: Option<i64>,
    },
}

/// A snapshot's entry as `ls -l` shows it.
fn file_row(file: &pb::SnapshotFile) -> Vec<String> {
    let link = if file.link_target.is_empty() {
        String::new()
    } else {
        format!(" -> {}", file.link_target)
    };
    vec![
        file.kind.clone(),
        format!("{:o}", file.mode),
        format!("{}:{}", file.uid, file.gid),
        file.size.to_string(),
        file.mtime.clone(),
        format!("{}{link}", file.path),
    ]
}

fn file_json(file: &pb::SnapshotFile) -> serde_json::Value {
    json!({"path": file.path, "type": file.kind, "mode": file.mode, "uid": file.uid, "gid": file.gid,
           "size": file.size, "mtime": file.mtime,
           "link_target": (!file.link_target.is_empty()).then_some(&file.link_target)})
}

const FILE_HEADERS: [&str; 6] = ["TYPE", "MODE", "OWNER", "SIZE", "MTIME", "PATH"];

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")
}

pub(super) fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cadang: error: {}", super::output::error_line(&error));
            ExitCode::Failure
        }
    }
}

/// Whether the command runs the long-lived agent (logs at `info`).
pub fn is_agent_process(command: &AgentCmd) -> bool {
    matches!(command, AgentCmd::Run { .. })
}

/// Runs `cadang agent …`.
pub fn agent(conn: &ConnArgs, json: bool, command: AgentCmd) -> ExitCode {
    finish(runtime().and_then(|rt| rt.block_on(agent_async(conn, json, command))))
}

async fn agent_async(conn: &ConnArgs, json: bool, command: AgentCmd) -> anyhow::Result<ExitCode> {
    match command {
        AgentCmd::Enroll { token, state_dir } => {
            let daemon = conn.server.clone().ok_or_else(|| {
                anyhow::anyhow!("give the daemon's address with --server (or CADANG_SERVER)")
            })?;
            let daemon = if daemon.contains("://") {
                daemon
            } else {
                format!("http://{daemon}")
            };
            let state = StateDir(state_dir.clone());
            let config = agent::enroll(&state, &daemon, conn.ca.as_deref(), &token).await?;
            if json {
                print_json(&json!({
                    "agent_id": config.agent_id, "server_id": config.server_id,
                    "agency_id": config.agency_id, "state_dir": state_dir,
                }));
            } else {
                println!(
                    "enrolled as agent {} of server {}; credential stored in {} (mode 0600). Start the agent with `systemctl enable --now cadang-agent` or `cadang agent run`.",
                    config.agent_id,
                    config.server_id,
                    state_dir.display()
                );
            }
            Ok(ExitCode::Ok)
        }
        AgentCmd::Run {
            state_dir,
            allow_programs,
        } => {
            let allowed = agent::programs::AllowedPrograms::new(&allow_programs)
                .map_err(anyhow::Error::msg)?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                crate::daemon::shutdown_signal().await;
                tracing::info!("stopping the agent");
                let _ = stop.send(true);
            });
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            match agent::run(StateDir(state_dir), allowed, stopped).await {
                Ok(()) => Ok(ExitCode::Ok),
                Err(error) if error.downcast_ref::<agent::Refused>().is_some() => {
                    eprintln!("cadang: error: {}", super::output::error_line(&error));
                    Ok(ExitCode::AgentRefused)
                }
                Err(error) => Err(error),
            }
        }
        AgentCmd::Inventory { local: true, .. } => {
            let inventory = tokio::task::spawn_blocking(agent::inventory::collect_local).await?;
            if json {
                print_json(&inventory);
            } else {
                for (label, value) in inventory.summary_lines() {
                    println!("{label:<14} {value}");
                }
            }
            Ok(ExitCode::Ok)
        }
        command => {
            let conn = Conn::open(conn)?;
            let mut admin = AgentAdminServiceClient::new(conn.channel());
            match command {
                AgentCmd::EnrollToken {
                    server,
                    request,
                    declared,
                    hours,
                } => {
                    let token = admin
                        .create_enrollment_token(conn.req(pb::CreateEnrollmentTokenRequest {
                            server_id: server.unwrap_or(0),
                            valid_hours: hours.unwrap_or(0),
                            request_id: request.unwrap_or(0),
                            declared_name: declared.clone().unwrap_or_default(),
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json {
                        print_json(&json!({
                            "agent_id": token.agent_id, "token": token.token, "expires_at": token.expires_at,
                        }));
                    } else {
                        println!("{}", token.token);
                        let what = match (server, request) {
                            (Some(server), _) => format!("server {server}"),
                            (None, Some(request)) => format!(
                                "server `{}` of request {request} at its handover",
                                declared.unwrap_or_default()
                            ),
                            _ => String::new(),
                        };
                        eprintln!(
                            "one-time enrolment token for {what} (agent {}), valid until {}. On the server: CADANG_ENROLL_TOKEN=… cadang agent enroll --server URL",
                            token.agent_id, token.expires_at
                        );
                    }
                }
                AgentCmd::List { agency } => {
                    let agents = admin
                        .list_agents(conn.req(pb::ListAgentsRequest {
                            agency_id: agency.unwrap_or(0),
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner()
                        .agents;
                    if json {
                        print_json(&agents.iter().map(agent_json).collect::<Vec<_>>());
                    } else {
                        let codes = conn.agency_codes(json).await;
                        table(
                            &[
                                "ID",
                                "SERVER",
                                "AGENCY",
                                "STATUS",
                                "CONNECTED",
                                "HOSTNAME",
                                "VERSION",
                                "LAST SEEN (WIB)",
                            ],
                            agents
                                .iter()
                                .map(|a| {
                                    vec![
                                        a.id.to_string(),
                                        a.server_id.to_string(),
                                        super::client::agency_cell(&codes, a.agency_id),
                                        a.status.clone(),
                                        if a.connected { "yes" } else { "no" }.into(),
                                        or_dash(&a.hostname),
                                        or_dash(&a.version),
                                        super::client::wib(&a.last_seen_at),
                                    ]
                                })
                                .collect(),
                        );
                    }
                }
                AgentCmd::Revoke { id } => {
                    let agent = admin
                        .revoke_agent(conn.req(pb::RevokeAgentRequest { agent_id: id }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json {
                        print_json(&agent_json(&agent));
                    } else {
                        println!("agent {} revoked", agent.id);
                    }
                }
                AgentCmd::Inventory { server, .. } => {
                    let report = admin
                        .get_inventory(conn.req(pb::GetInventoryRequest {
                            server_id: server.unwrap_or(0),
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    let inventory: serde_json::Value =
                        serde_json::from_str(&report.inventory_json).unwrap_or_default();
                    let mismatches: Vec<serde_json::Value> = report
                        .mismatches
                        .iter()
                        .map(|m| json!({"field": m.field, "declared": m.declared, "observed": m.observed}))
                        .collect();
                    if json {
                        print_json(&json!({
                            "server_id": report.server_id, "reported_at": report.reported_at,
                            "reports": report.reports, "inventory": inventory, "mismatches": mismatches,
                        }));
                    } else if report.reported_at.is_empty() {
                        println!(
                            "server {} has no inventory yet: enrol its agent",
                            report.server_id
                        );
                    } else {
                        let parsed: agent::inventory::Inventory =
                            serde_json::from_str(&report.inventory_json).unwrap_or_default();
                        println!(
                            "reported {} ({} reports kept)",
                            report.reported_at, report.reports
                        );
                        for (label, value) in parsed.summary_lines() {
                            println!("{label:<14} {value}");
                        }
                        if report.mismatches.is_empty() {
                            println!("\nmatches the asset register");
                        } else {
                            println!("\ndifferences from the asset register:");
                            table(
                                &["FIELD", "REGISTER", "MEASURED"],
                                report
                                    .mismatches
                                    .iter()
                                    .map(|m| {
                                        vec![
                                            m.field.clone(),
                                            m.declared.clone(),
                                            m.observed.clone(),
                                        ]
                                    })
                                    .collect(),
                            );
                        }
                    }
                }
                AgentCmd::Enroll { .. } | AgentCmd::Run { .. } => {}
            }
            Ok(ExitCode::Ok)
        }
    }
}

fn agent_json(agent: &pb::Agent) -> serde_json::Value {
    json!({
        "id": agent.id, "server_id": agent.server_id, "agency_id": agent.agency_id,
        "status": agent.status, "connected": agent.connected, "hostname": agent.hostname,
        "version": agent.version, "enrolled_at": agent.enrolled_at,
        "last_seen_at": agent.last_seen_at, "revoked_at": agent.revoked_at,
        "request_id": agent.request_id, "declared_name": agent.declared_name,
    })
}

pub(super) fn restore_json(restore: &pb::Restore) -> serde_json::Value {
    json!({
        "id": restore.id, "agency_id": restore.agency_id, "server_id": restore.server_id,
        "target_server_id": restore.target_server_id, "snapshot": restore.snapshot,
        "paths": restore.paths, "excludes": restore.excludes, "overwrite": restore.overwrite,
        "delete": restore.delete, "dry_run": restore.dry_run,
        "target_dir": restore.target_dir, "status": restore.status,
        "stats": serde_json::from_str::<serde_json::Value>(&restore.stats_json).unwrap_or_default(),
        "error": restore.error, "queued_at": restore.queued_at, "started_at": restore.started_at,
        "finished_at": restore.finished_at, "requested_by": restore.requested_by,
        "plan_id": (restore.plan_id != 0).then_some(restore.plan_id),
        "request_id": restore.request_id, "attempt": restore.attempt,
        "use_replica": restore.use_replica,
        "check": serde_json::from_str::<serde_json::Value>(&restore.check_json).ok(),
    })
}

fn finished(status: &str) -> bool {
    !matches!(status, "queued" | "running")
}

fn exit_for(status: &str) -> ExitCode {
    match status {
        "ok" => ExitCode::Ok,
        "verify_differences" => ExitCode::Partial,
        _ => ExitCode::Failure,
    }
}

async fn wait(
    restores: &mut RestoreServiceClient<tonic::transport::Channel>,
    conn: &Conn,
    id: i64,
    json: bool,
) -> anyhow::Result<pb::Restore> {
    let bar = (!json).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    loop {
        let restore = restores
            .get_restore(conn.req(pb::GetRestoreRequest { id }))
            .await
            .map_err(rpc_error)?
            .into_inner();
        if finished(&restore.status) {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Ok(restore);
        }
        if let Some(bar) = &bar {
            bar.set_message(progress_line(&restore));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One line of a restore's live progress, for a spinner.
pub(crate) fn progress_line(restore: &pb::Restore) -> String {
    let stats: serde_json::Value = serde_json::from_str(&restore.stats_json).unwrap_or_default();
    format!(
        "restore {}: {} — {} of {} entries sent, {} files verified",
        restore.id,
        restore.status,
        stats["entries_sent"].as_u64().unwrap_or(0),
        stats["entries"].as_u64().unwrap_or(0),
        stats["files_verified"].as_u64().unwrap_or(0),
    )
}

fn print_restore(json: bool, restore: &pb::Restore) {
    if json {
        print_json(&restore_json(restore));
        return;
    }
    let stats: serde_json::Value = serde_json::from_str(&restore.stats_json).unwrap_or_default();
    println!("restore {} — {}", restore.id, restore.status);
    println!(
        "  server {} → server {} into {}",
        restore.server_id, restore.target_server_id, restore.target_dir
    );
    println!("  snapshot {}", restore.snapshot);
    if restore.plan_id != 0 {
        println!("  from the restic repository of plan {}", restore.plan_id);
    }
    if !restore.paths.is_empty() {
        println!("  paths {}", restore.paths.join(", "));
    }
    if !restore.excludes.is_empty() {
        println!("  leaving out {}", restore.excludes.join(", "));
    }
    if !matches!(restore.overwrite.as_str(), "" | "always") {
        println!("  files already in the target: {}", restore.overwrite);
    }
    if restore.delete {
        println!("  deleting what the snapshot does not hold");
    }
    if restore.dry_run {
        println!("  dry run: nothing was written, changed or deleted");
    }
    if let Some(to_write) = stats["files_to_write"].as_u64() {
        println!(
            "  {to_write} files would be written ({} bytes), {} would fail",
            stats["bytes_to_write"].as_u64().unwrap_or(0),
            stats["files_failed"].as_u64().unwrap_or(0)
        );
    }
    if let Some(verified) = stats["files_verified"].as_u64() {
        println!(
            "  {verified} files verified, {} failed, {} bytes written",
            stats["files_failed"].as_u64().unwrap_or(0),
            stats["bytes"].as_u64().unwrap_or(0)
        );
    }
    let unchanged = stats["files_unchanged"].as_u64().unwrap_or(0);
    if unchanged > 0 {
        println!(
            "  {unchanged} files already in the target with the snapshot's content ({} bytes), kept",
            stats["bytes_unchanged"].as_u64().unwrap_or(0)
        );
    }
    let kept = stats["files_kept"].as_u64().unwrap_or(0);
    if kept > 0 {
        println!("  {kept} entries already in the target left as they were (not verified)");
    }
    let (deleted, listed, done) = if restore.dry_run {
        ("to_delete", "to_delete_paths", "would be deleted")
    } else {
        ("deleted", "deleted_paths", "deleted")
    };
    let listed = &stats[listed];
    let deleted = stats[deleted].as_u64().unwrap_or(0);
    if deleted > 0 {
        println!("  {deleted} entries the snapshot does not hold {done}:");
        const SHOWN: usize = 20;
        for path in listed.as_array().into_iter().flatten().take(SHOWN) {
            println!("    {}", path.as_str().unwrap_or_default());
        }
        if deleted > SHOWN as u64 {
            println!(
                "    and {} more (--json lists the first 1000; the agent's log names each)",
                deleted - SHOWN as u64
            );
        }
    }
    if let Some(failed) = stats["failed"].as_array() {
        for item in failed {
            println!(
                "  FAILED {}: {}",
                item["path"].as_str().unwrap_or(""),
                item["reason"].as_str().unwrap_or("")
            );
        }
    }
    if !restore.error.is_empty() {
        println!("  {}", restore.error);
    }
}

/// Runs `cadang restore-job …`.
pub fn restore_job(conn: &ConnArgs, json: bool, command: RestoreJobCmd) -> ExitCode {
    finish(runtime().and_then(|rt| {
        rt.block_on(async {
            let conn = Conn::open(conn)?;
            let mut restores = RestoreServiceClient::new(conn.channel());
            match command {
                RestoreJobCmd::Start {
                    server,
                    snapshot,
                    target,
                    paths,
                    excludes,
                    overwrite,
                    delete,
                    dry_run,
                    to_server,
                    request,
                    from_plan,
                    wait: wait_for_it,
                } => {
                    let restore = restores
                        .start_restore(conn.req(pb::StartRestoreRequest {
                            server_id: server,
                            snapshot,
                            paths,
                            excludes,
                            overwrite: overwrite.name().to_owned(),
                            delete,
                            dry_run,
                            target_server_id: to_server.unwrap_or(0),
                            target_dir: target,
                            request_id: request.unwrap_or(0),
                            plan_id: from_plan.unwrap_or(0),
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if wait_for_it {
                        let done = wait(&mut restores, &conn, restore.id, json).await?;
                        print_restore(json, &done);
                        return Ok(exit_for(&done.status));
                    }
                    if json {
                        print_json(&restore_json(&restore));
                    } else {
                        println!("restore {} queued; follow it with `cadang restore-job show {} --wait`", restore.id, restore.id);
                    }
                    Ok(ExitCode::Ok)
                }
                RestoreJobCmd::Show { id, wait: wait_for_it } => {
                    let restore = if wait_for_it {
                        wait(&mut restores, &conn, id, json).await?
                    } else {
                        restores
                            .get_restore(conn.req(pb::GetRestoreRequest { id }))
                            .await
                            .map_err(rpc_error)?
                            .into_inner()
                    };
                    print_restore(json, &restore);
                    Ok(if finished(&restore.status) { exit_for(&restore.status) } else { ExitCode::Ok })
                }
                RestoreJobCmd::List { agency, limit } => {
                    let list = restores
                        .list_restores(conn.req(pb::ListRestoresRequest {
                            agency_id: agency.unwrap_or(0),
                            limit,
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner()
                        .restores;
                    if json {
                        print_json(&list.iter().map(restore_json).collect::<Vec<_>>());
                    } else {
                        table(
                            &["ID", "SERVER", "TARGET", "STATUS", "SNAPSHOT", "DIRECTORY", "QUEUED (WIB)"],
                            list.iter()
                                .map(|r| {
                                    vec![
                                        r.id.to_string(),
                                        r.server_id.to_string(),
                                        r.target_server_id.to_string(),
                                        r.status.clone(),
                                        r.snapshot.chars().take(12).collect(),
                                        r.target_dir.clone(),
                                        super::client::wib(&r.queued_at),
                                    ]
                                })
                                .collect(),
                        );
                    }
                    Ok(ExitCode::Ok)
                }
                RestoreJobCmd::Snapshots { server, from_plan } => {
                    let list = restores
                        .list_server_snapshots(conn.req(pb::ListServerSnapshotsRequest {
                            server_id: server,
                            plan_id: from_plan.unwrap_or(0),
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner()
                        .snapshots;
                    if json {
                        print_json(
                            &list
                                .iter()
                                .map(|s| json!({"id": s.id, "time": s.time, "host": s.host, "paths": s.paths, "files": s.files, "bytes": s.bytes, "run_id": s.run_id, "held": s.held}))
                                .collect::<Vec<_>>(),
                        );
                    } else {
                        table(
                            &["ID", "TIME", "FILES", "BYTES", "RUN", "HELD", "PATHS"],
                            list.iter()
                                .map(|s| {
                                    vec![
                                        s.id.chars().take(12).collect(),
                                        s.time.clone(),
                                        s.files.to_string(),
                                        s.bytes.to_string(),
                                        s.run_id.to_string(),
                                        if s.held { "held" } else { "" }.to_owned(),
                                        s.paths.join(" "),
                                    ]
                                })
                                .collect(),
                        );
                    }
                    Ok(ExitCode::Ok)
                }
                RestoreJobCmd::Hold {
                    server,
                    snapshot,
                    reason,
                    release,
                } => {
                    let held = restores
                        .hold_snapshot(conn.req(pb::HoldSnapshotRequest {
                            server_id: server,
                            snapshot,
                            release,
                            reason,
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json {
                        print_json(&json!({"snapshot": held.snapshot, "held": held.held, "changed": held.changed}));
                    } else {
                        println!(
                            "snapshot {} {}{}",
                            held.snapshot.chars().take(12).collect::<String>(),
                            if held.held { "held" } else { "released" },
                            if held.changed { "" } else { " (it already was)" }
                        );
                    }
                    Ok(ExitCode::Ok)
                }
                RestoreJobCmd::Erase {
                    server,
                    patterns,
                    reason,
                    dry_run,
                } => {
                    let erased = restores
                        .erase_files(conn.req(pb::EraseFilesRequest {
                            server_id: server,
                            patterns,
                            reason,
                            dry_run,
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json {
                        print_json(&json!({
                            "dry_run": erased.dry_run,
                            "snapshots": erased.snapshots.iter().map(|s| json!({
                                "snapshot": s.snapshot,
                                "replaced_by": s.replaced_by,
                                "paths": s.paths,
                                "paths_total": s.paths_total,
                            })).collect::<Vec<_>>(),
                            "snapshots_unchanged": erased.snapshots_unchanged,
                            "replica": erased.replica,
                            "replica_copies_replaced": erased.replica_copies_replaced,
                            "replica_rewritten": erased.replica_rewritten,
                            "packs_repacked": erased.packs_repacked,
                            "bytes_marked": erased.bytes_marked,
                            "deletable_after": erased.deletable_after,
                            "notes": erased.notes,
                            "remaining": erased.remaining.iter().map(|r| json!({
                                "snapshot": r.snapshot,
                                "replica": r.replica,
                                "held": r.held,
                                "paths_total": r.paths_total,
                            })).collect::<Vec<_>>(),
                            "restic_plans_unreached": erased.restic_plans_unreached,
                        }));
                    } else {
                        print_erasure(&erased);
                    }
                    // Matches left behind (a hold, a backup while it ran, a restic plan's
                    // repository): not complete.
                    let complete =
                        erased.remaining.is_empty() && erased.restic_plans_unreached.is_empty();
                    Ok(if erased.dry_run || complete {
                        ExitCode::Ok
                    } else {
                        ExitCode::Partial
                    })
                }
                RestoreJobCmd::Ls {
                    server,
                    snapshot,
                    path,
                    recursive,
                    limit,
                    from_plan,
                } => {
                    let listing = restores
                        .list_snapshot_files(conn.req(pb::ListSnapshotFilesRequest {
                            server_id: server,
                            snapshot,
                            path,
                            recursive,
                            limit,
                            plan_id: from_plan.unwrap_or(0),
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json {
                        print_json(&json!({
                            "snapshot": listing.snapshot_id,
                            "files": listing.files.iter().map(file_json).collect::<Vec<_>>(),
                            "truncated": listing.truncated,
                        }));
                    } else {
                        println!("snapshot {}", listing.snapshot_id);
                        table(&FILE_HEADERS, listing.files.iter().map(file_row).collect());
                        if listing.truncated {
                            eprintln!("cadang: more entries than --limit {limit}; narrow the path or raise the limit");
                        }
                    }
                    Ok(ExitCode::Ok)
                }
                RestoreJobCmd::Find {
                    server,
                    patterns,
                    snapshot,
                    ignore_case,
                    limit,
                    from_plan,
                } => {
                    let found = restores
                        .find_snapshot_files(conn.req(pb::FindSnapshotFilesRequest {
                            server_id: server,
                            patterns,
                            snapshot: snapshot.unwrap_or_default(),
                            ignore_case,
                            limit,
                            plan_id: from_plan.unwrap_or(0),
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    if json {
                        print_json(&json!({
                            "snapshots": found.snapshots.iter().map(|s| json!({
                                "snapshot": s.snapshot_id, "time": s.time, "run_id": s.run_id,
                                "files": s.files.iter().map(file_json).collect::<Vec<_>>(),
                            })).collect::<Vec<_>>(),
                            "truncated": found.truncated,
                        }));
                    } else {
                        if found.snapshots.is_empty() {
                            println!("no match in the server's snapshots");
                        }
                        for matches in &found.snapshots {
                            println!(
                                "snapshot {} of {} (run {})",
                                matches.snapshot_id.chars().take(12).collect::<String>(),
                                matches.time,
                                matches.run_id
                            );
                            table(&FILE_HEADERS, matches.files.iter().map(file_row).collect());
                        }
                        if found.truncated {
                            eprintln!("cadang: more matches than --limit {limit}; older snapshots were not searched");
                        }
                    }
                    Ok(ExitCode::Ok)
                }
            }
        })
    }))
}

/// An erasure's outcome, for a person.
fn print_erasure(erased: &pb::EraseFilesResponse) {
    let short = |id: &str| id.chars().take(12).collect::<String>();
    for snapshot in &erased.snapshots {
        if erased.dry_run {
            println!("snapshot {} would lose:", short(&snapshot.snapshot));
        } else {
            println!(
                "snapshot {} replaced by {}, without:",
                short(&snapshot.snapshot),
                short(&snapshot.replaced_by)
            );
        }
        for path in &snapshot.paths {
            println!("  {path}");
        }
        let more = snapshot
            .paths_total
            .saturating_sub(snapshot.paths.len() as u64);
        if more > 0 {
            println!("  … and {more} more");
        }
    }
    println!(
        "{} snapshot(s) {}, {} without matches",
        erased.snapshots.len(),
        if erased.dry_run {
            "would change"
        } else {
            "changed"
        },
        erased.snapshots_unchanged
    );
    if !erased.dry_run {
        if erased.replica {
            println!(
                "replica: {} copies replaced, {} other snapshots rewritten",
                erased.replica_copies_replaced, erased.replica_rewritten
            );
        }
        println!(
            "{} packs repacked; {} marked, deleted by the first prune (a retention run) after {}",
            erased.packs_repacked,
            super::output::human_bytes(erased.bytes_marked),
            erased.deletable_after
        );
    }
    for note in &erased.notes {
        println!("note: {note}");
    }
}
