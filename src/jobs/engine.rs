//! The engine a plan targets, behind one interface defined by what the daemon needs of
//! it — a run carried out to its end (backup with live progress and a summary,
//! retention, verification of a part of the data, a restore drill, replication, the
//! listing of an adopted repository) and a snapshot restored to an agent with every file
//! verified — not by any tool's command line.
//!
//! Two implementations: [`NativeEngine`], cadang's own repositories (the daemon's host,
//! or a server through its agent), and [`ResticEngine`], an existing restic repository
//! driven through the `restic` binary. A plan chooses by its `restic` target, kept with
//! the plan in the catalog; a restore by the plan it names. Everything above — the SOP
//! workflow, schedules, run records, verdicts, fallbacks, reports and audit — is the
//! same for both. Everything here blocks; the scheduler calls it on a blocking thread.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chrono::Utc;
use tokio::runtime::Handle;

use super::{Repositories, execute, restic_runs};
use crate::app::{PlanSpec, RestoreEnd};
use crate::catalog::{PlanId, RestoreRecord, RunEnd, RunRecord, Server};
use crate::hub::AgentHub;
use crate::remote::{Progress, RemoteOptions, backup_via_agent, restore_to_agent};
use crate::restic::ResticRepo;

/// What a run or a restore has from the daemon around it.
pub struct Context<'a> {
    /// Where the agencies' repositories are and how they are opened.
    pub repositories: &'a Repositories,
    /// The agents connected to this daemon.
    pub hub: &'a AgentHub,
    /// The runtime, for the asynchronous parts.
    pub handle: &'a Handle,
    /// The agency whose data it is.
    pub agency_code: &'a str,
    /// Turned on to stop at the next safe point.
    pub cancel: Arc<AtomicBool>,
    /// Live progress, recorded by the scheduler.
    pub progress: &'a Progress,
    /// How long to wait for an agent.
    pub remote: RemoteOptions,
}

/// An engine behind plans, runs and restores.
pub trait Engine: Send + Sync {
    /// `cadang` or `restic`.
    fn name(&self) -> &'static str;

    /// Carries out `run` of the plan specified by `spec` (`sequence` is its place among
    /// the plan's runs of the same kind). Never panics on bad data: every failure is a
    /// `failed` (or `cancelled`) record with the reason.
    fn run(&self, cx: &Context<'_>, spec: &PlanSpec, run: &RunRecord, sequence: u64) -> RunEnd;

    /// Restores `restore` (of `source`'s data) to the agent of `target`, which writes and
    /// verifies every file. Returns how it ended and the snapshot restored once resolved;
    /// `ok` only when every file verified.
    fn restore(
        &self,
        cx: &Context<'_>,
        source: &Server,
        target: &Server,
        restore: &RestoreRecord,
    ) -> (RestoreEnd, Option<String>);
}

/// Cadang's own engine: the agency's repository, written from the daemon's host or, for
/// a backup of a plan on a server, from what its agent sends.
#[derive(Debug, Clone, Default)]
pub struct NativeEngine {
    /// The plan's server, whose agent reads the files of a backup.
    pub agent_server: Option<Server>,
}

impl Engine for NativeEngine {
    fn name(&self) -> &'static str {
        "cadang"
    }

    fn run(&self, cx: &Context<'_>, spec: &PlanSpec, run: &RunRecord, sequence: u64) -> RunEnd {
        match &self.agent_server {
            Some(server) if run.kind == "backup" => backup_via_agent(
                cx.repositories,
                cx.hub,
                cx.handle,
                cx.agency_code,
                server,
                spec,
                run,
                cx.cancel.clone(),
                Utc::now(),
                cx.progress,
                cx.remote,
            ),
            _ => execute(
                cx.repositories,
                cx.handle,
                cx.agency_code,
                spec,
                run,
                sequence,
                cx.cancel.clone(),
                Utc::now(),
            ),
        }
    }

    fn restore(
        &self,
        cx: &Context<'_>,
        source: &Server,
        target: &Server,
        restore: &RestoreRecord,
    ) -> (RestoreEnd, Option<String>) {
        restore_to_agent(
            cx.repositories,
            cx.hub,
            cx.handle,
            cx.agency_code,
            source,
            target,
            restore,
            cx.cancel.clone(),
            cx.progress,
            cx.remote,
            None,
        )
    }
}

/// An existing restic repository, through the `restic` binary on the daemon's host.
#[derive(Debug)]
pub struct ResticEngine {
    /// The plan whose repository it is.
    pub plan: PlanId,
    /// Where the repository is and its password.
    pub repo: ResticRepo,
}

impl Engine for ResticEngine {
    fn name(&self) -> &'static str {
        "restic"
    }

    fn run(&self, cx: &Context<'_>, spec: &PlanSpec, run: &RunRecord, sequence: u64) -> RunEnd {
        cx.handle.block_on(restic_runs::execute(
            cx.repositories,
            cx.agency_code,
            &self.repo,
            spec,
            run,
            sequence,
            cx.cancel.clone(),
            cx.progress,
        ))
    }

    fn restore(
        &self,
        cx: &Context<'_>,
        _source: &Server,
        target: &Server,
        restore: &RestoreRecord,
    ) -> (RestoreEnd, Option<String>) {
        crate::remote::restic::restore_from_restic(
            cx.repositories,
            cx.hub,
            cx.handle,
            cx.agency_code,
            &self.repo,
            self.plan,
            target,
            restore,
            cx.cancel.clone(),
            cx.progress,
            cx.remote,
        )
    }
}
