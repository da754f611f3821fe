//! `cadang restore-request …`: the restore plan of a restore request (procedure C step
//! 2), where its restore stands, and the confirmation an older snapshot needs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::agent_cmds::{finish, restore_json, runtime};
use super::client::{Conn, ConnArgs, print_json, rpc_error};
use super::output::ExitCode;
use crate::rpc::pb;
use crate::rpc::pb::restore_service_client::RestoreServiceClient;

/// `cadang restore-request …`
// Parsed once per process: the size of the `plan` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum RestoreRequestCmd {
    /// Write the restore plan of a request at step 2 (a new version each time; step 3
    /// approves the newest). From a JSON file, or from the options.
    Plan {
        /// The restore request.
        request: i64,
        /// The plan as JSON (see docs/API.md, "Restore plans"); the options are ignored.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The server whose backups are restored.
        #[arg(long = "source", id = "source_server", value_name = "SERVER")]
        source: Option<i64>,
        /// Restore from this plan's existing restic repository instead of the server's
        /// snapshots in the agency's cadang repository.
        #[arg(long = "from-plan", value_name = "PLAN")]
        from_plan: Option<i64>,
        /// `latest`, a snapshot id (prefix), or `as-of:TIME` (RFC 3339).
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Only this path of the snapshot (repeatable).
        #[arg(long = "path")]
        paths: Vec<String>,
        /// Leave out entries matching this glob, and what is below them (repeatable; as a
        /// backup plan's `--exclude`: without `/` a name anywhere, with `/` a path from
        /// the root).
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
        /// The server restored to (default: the source itself).
        #[arg(long)]
        target_server: Option<i64>,
        /// Absolute directory on the target (`/` restores in place).
        #[arg(long)]
        target: Option<String>,
        /// A check run on the target after the restore, such as "pg_isready -h
        /// 127.0.0.1" (split on spaces, no shell); exit status 0 passes.
        #[arg(long)]
        check: Option<String>,
        /// Seconds the check may take.
        #[arg(long, default_value_t = 60)]
        check_timeout: u64,
        /// The fallback chain, in order: replica, previous-snapshot, alternate-target.
        #[arg(long, value_delimiter = ',')]
        fallback: Vec<String>,
        /// The alternate target's server (for alternate-target).
        #[arg(long)]
        alternate_server: Option<i64>,
        /// The alternate target's directory (for alternate-target).
        #[arg(long)]
        alternate_dir: Option<String>,
    },
    /// Show a request's plan, restore attempts and verdicts.
    Show {
        /// The restore request.
        request: i64,
        /// Wait until the restore is verified, ends in verify differences, or waits for
        /// a confirmation; exit 3 for verify differences.
        #[arg(long)]
        wait: bool,
    },
    /// Let the fallback chain restore the snapshot before the planned one (it returns
    /// older data). By the role that approves restore plans.
    ConfirmOlder {
        /// The restore request.
        request: i64,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: String,
    },
}

fn plan_from_options(command: &RestoreRequestCmd) -> anyhow::Result<serde_json::Value> {
    let RestoreRequestCmd::Plan {
        source,
        from_plan,
        snapshot,
        paths,
        excludes,
        overwrite,
        delete,
        target_server,
        target,
        check,
        check_timeout,
        fallback,
        alternate_server,
        alternate_dir,
        ..
    } = command
    else {
        anyhow::bail!("not a plan command");
    };
    let source = source.context("--source SERVER names the server whose backups are restored")?;
    let target = target
        .as_deref()
        .context("--target DIR names the directory restored into (`/` in place)")?;
    let mut steps = Vec::new();
    for step in fallback {
        steps.push(match step.trim() {
            "replica" => json!({ "step": "replica" }),
            "previous-snapshot" | "previous_snapshot" => json!({ "step": "previous_snapshot" }),
            "alternate-target" | "alternate_target" => json!({
                "step": "alternate_target",
                "server": alternate_server.context("alternate-target needs --alternate-server")?,
                "dir": alternate_dir.as_deref().context("alternate-target needs --alternate-dir")?,
            }),
            other => anyhow::bail!(
                "unknown fallback step `{other}`: replica, previous-snapshot or alternate-target"
            ),
        });
    }
    let mut plan = json!({
        "server": source,
        "snapshot": snapshot,
        "paths": paths,
        "target": { "server": target_server.unwrap_or(source), "dir": target },
        "fallback": steps,
    });
    if !excludes.is_empty() {
        plan["excludes"] = json!(excludes);
    }
    if *overwrite != crate::engine::restore::Overwrite::Always {
        plan["overwrite"] = json!(overwrite.name());
    }
    if *delete {
        plan["delete"] = json!(true);
    }
    if let Some(from_plan) = from_plan {
        plan["backup_plan"] = json!(from_plan);
    }
    if let Some(check) = check {
        let command: Vec<&str> = check.split_whitespace().collect();
        plan["check"] = json!({ "command": command, "timeout_secs": check_timeout });
    }
    Ok(plan)
}

fn status_json(status: &pb::RestoreRequestStatus) -> serde_json::Value {
    json!({
        "request_id": status.request_id,
        "state": status.state,
        "plan": serde_json::from_str::<serde_json::Value>(&status.plan_json).ok(),
        "plan_version": status.plan_version,
        "plan_digest": status.plan_digest,
        "planned_by": status.planned_by,
        "approved_by": status.approved_by,
        "approved_at": status.approved_at,
        "older_confirmed_by": status.older_confirmed_by,
        "older_confirmed_at": status.older_confirmed_at,
        "attempts": status.attempts.iter().map(restore_json).collect::<Vec<_>>(),
        "verdicts": status
            .verdicts_json
            .iter()
            .filter_map(|v| serde_json::from_str::<serde_json::Value>(v).ok())
            .collect::<Vec<_>>(),
    })
}

fn print_status(json: bool, status: &pb::RestoreRequestStatus) {
    if json {
        print_json(&status_json(status));
        return;
    }
    println!("restore request {} — {}", status.request_id, status.state);
    if status.plan_version > 0 {
        println!(
            "  plan v{} by {} ({}){}",
            status.plan_version,
            status.planned_by,
            &status.plan_digest[..status.plan_digest.len().min(12)],
            if status.approved_by.is_empty() {
                String::new()
            } else {
                format!(
                    ", approved by {} at {}",
                    status.approved_by, status.approved_at
                )
            }
        );
        println!("  {}", status.plan_json);
    }
    if !status.older_confirmed_by.is_empty() {
        println!(
            "  older snapshot confirmed by {} at {}",
            status.older_confirmed_by, status.older_confirmed_at
        );
    }
    let verdicts: Vec<serde_json::Value> = status
        .verdicts_json
        .iter()
        .filter_map(|v| serde_json::from_str(v).ok())
        .collect();
    for (attempt, verdict) in status
        .attempts
        .iter()
        .zip(verdicts.iter().map(Some).chain(std::iter::repeat(None)))
    {
        println!(
            "  {} restore {}: {} → server {} {}{}",
            attempt.attempt,
            attempt.id,
            attempt.status,
            attempt.target_server_id,
            attempt.target_dir,
            if attempt.use_replica {
                " (damaged chunks from the replica)"
            } else {
                ""
            }
        );
        if let Some(verdict) = verdict {
            println!(
                "    {} {}",
                if verdict["passed"].as_bool() == Some(true) {
                    "PASSED"
                } else {
                    "FAILED"
                },
                verdict["summary"].as_str().unwrap_or("")
            );
        }
    }
    if status.state == "awaiting_confirmation" {
        println!(
            "  the next fallback step restores an older snapshot: confirm it with `cadang restore-request confirm-older {} --reason …`",
            status.request_id
        );
    }
}

fn settled(state: &str) -> bool {
    matches!(
        state,
        "verified" | "verify_differences" | "awaiting_confirmation"
    )
}

/// Runs `cadang restore-request …`.
pub fn restore_request(conn: &ConnArgs, json: bool, command: RestoreRequestCmd) -> ExitCode {
    finish(runtime().and_then(|rt| {
        rt.block_on(async {
            let conn = Conn::open(conn)?;
            let mut restores = RestoreServiceClient::new(conn.channel());
            match command {
                RestoreRequestCmd::Plan {
                    request, ref file, ..
                } => {
                    let plan_json = match file {
                        Some(file) => std::fs::read_to_string(file)
                            .with_context(|| format!("cannot read {}", file.display()))?,
                        None => plan_from_options(&command)?.to_string(),
                    };
                    let status = restores
                        .set_restore_plan(conn.req(pb::SetRestorePlanRequest {
                            request_id: request,
                            plan_json,
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    print_status(json, &status);
                    Ok(ExitCode::Ok)
                }
                RestoreRequestCmd::Show { request, wait } => {
                    let bar = (wait && !json).then(|| {
                        let bar = indicatif::ProgressBar::new_spinner();
                        bar.enable_steady_tick(Duration::from_millis(200));
                        bar
                    });
                    let status = loop {
                        let status = restores
                            .get_restore_request(conn.req(pb::GetRestoreRequestRequest {
                                request_id: request,
                            }))
                            .await
                            .map_err(rpc_error)?
                            .into_inner();
                        if !wait || settled(&status.state) {
                            break status;
                        }
                        if let Some(bar) = &bar {
                            let running = status
                                .attempts
                                .last()
                                .filter(|attempt| attempt.status == "running")
                                .map(|attempt| {
                                    format!(
                                        "; {} ({})",
                                        super::agent_cmds::progress_line(attempt),
                                        attempt.attempt
                                    )
                                })
                                .unwrap_or_default();
                            bar.set_message(format!(
                                "restore request {request}: {} — {} attempt(s){running}",
                                status.state,
                                status.attempts.len()
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    };
                    if let Some(bar) = bar {
                        bar.finish_and_clear();
                    }
                    print_status(json, &status);
                    Ok(if status.state == "verify_differences" {
                        ExitCode::Partial
                    } else {
                        ExitCode::Ok
                    })
                }
                RestoreRequestCmd::ConfirmOlder { request, reason } => {
                    let status = restores
                        .confirm_older_snapshot(conn.req(pb::ConfirmOlderSnapshotRequest {
                            request_id: request,
                            reason,
                        }))
                        .await
                        .map_err(rpc_error)?
                        .into_inner();
                    print_status(json, &status);
                    Ok(ExitCode::Ok)
                }
            }
        })
    }))
}
