//! Erasure: files taken out of every backup of one server, in the agency's repository and
//! in its replica (`RestoreService.EraseFiles`, `cadang restore-job erase`) — personal data
//! an agency must erase, a key or a password file backed up by mistake.
//!
//! On the primary, each of the server's snapshots the patterns touch is replaced by one
//! without the matches ([`crate::engine::rewrite`], the originals forgotten once every
//! replacement is stored). On the replica, a copy of a replaced snapshot is replaced by a
//! copy of its replacement (copied first, then the old copy deleted), and whatever else
//! the replica holds of the server (copies of snapshots the primary has since let go) is
//! rewritten in place. Both repositories are then pruned with no unused space allowed, so
//! every pack that held a removed file is repacked and marked; the first prune after the
//! grace period (a plan's retention run) deletes those packs, and the data leaves the
//! stores.
//!
//! A snapshot under a hold is never changed: the erasure is refused while one it would
//! touch is held. An erasure stopped anywhere leaves every snapshot readable (a
//! replacement is stored before its original goes) and is finished by running it again.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio::runtime::Handle;

use super::Repositories;
use crate::catalog::Server;
use crate::engine::copy::{CopyOptions, copy_with};
use crate::engine::id::SnapshotId;
use crate::engine::prune::{PruneOptions, prune};
use crate::engine::rewrite::{RewriteOptions, RewriteReport, Rewritten, rewrite};
use crate::engine::{Error, Repository};
use crate::remote::server_snapshots;

/// What an erasure did (or, in a dry run, would do).
#[derive(Debug, Default)]
pub struct EraseReport {
    /// The server's snapshots in the primary that held matches: each with its replacement
    /// (none in a dry run) and the entries taken out.
    pub rewritten: Vec<Rewritten>,
    /// The server's snapshots the patterns do not touch.
    pub unchanged: usize,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Whether the agency has a replica, and it was erased as well.
    pub replica: bool,
    /// Copies in the replica replaced by copies of their snapshots' replacements.
    pub replica_copies_replaced: u64,
    /// Other snapshots of the server in the replica rewritten in place.
    pub replica_rewritten: u64,
    /// Packs repacked by the prunes (primary and replica).
    pub packs_repacked: u64,
    /// Bytes marked for deletion by the prunes.
    pub bytes_marked: u64,
    /// From when the marked packs may be deleted (the next prune after it deletes them).
    pub deletable_after: Option<DateTime<Utc>>,
    /// What is left to do: a prune that could not run now, say.
    pub notes: Vec<String>,
}

/// Why an erasure did not run.
#[derive(Debug)]
pub enum EraseError {
    /// Bad patterns, or patterns that would leave a snapshot empty.
    Request(String),
    /// Snapshots it would change are held (short ids).
    Held(Vec<String>),
    /// The repositories could not be read or written (for the log, not the caller).
    Repository(String),
}

fn engine(error: Error) -> EraseError {
    match error {
        Error::InvalidInput(message) | Error::Refused(message) => EraseError::Request(message),
        other => EraseError::Repository(other.to_string()),
    }
}

/// Takes what `patterns` match out of every snapshot of `server` in the agency's
/// repository and its replica (see the module documentation); `dry_run` reports what
/// would go and changes nothing.
///
/// # Errors
/// [`EraseError`], before anything is changed, or when the primary could not be
/// rewritten (what was done is then finished by running the erasure again). Once the
/// primary is rewritten, what could not be done (the replica's part, a prune) is in
/// [`EraseReport::notes`].
pub fn erase(
    repositories: &Repositories,
    handle: &Handle,
    agency_code: &str,
    server: &Server,
    patterns: &[String],
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<EraseReport, EraseError> {
    let primary = repositories
        .open(handle, agency_code, None, None)
        .map_err(EraseError::Repository)?;
    let snapshots = server_snapshots(&primary, server).map_err(EraseError::Repository)?;
    let options = RewriteOptions {
        excludes: patterns.to_vec(),
        forget: true,
        dry_run: true,
        ..RewriteOptions::default()
    };
    let preview = rewrite(&primary, snapshots.clone(), &options).map_err(engine)?;
    let touched: HashSet<&str> = preview.rewritten.iter().map(|r| r.from.as_str()).collect();
    let held: Vec<String> = snapshots
        .iter()
        .filter(|(id, snapshot)| {
            touched.contains(id.to_hex().as_str())
                && snapshot.tags.iter().any(|tag| tag == crate::app::HOLD_TAG)
        })
        .map(|(id, _)| id.short())
        .collect();
    if !held.is_empty() {
        return Err(EraseError::Held(held));
    }
    if dry_run {
        return Ok(report_of(preview));
    }
    // What each snapshot has been known as: its id, and the snapshot it replaced when a
    // hold or a tag gave it a new id (a replica's copy names the id it was copied from).
    let names: Vec<(SnapshotId, Option<SnapshotId>)> = snapshots
        .iter()
        .map(|(id, snapshot)| (*id, snapshot.rewritten_from))
        .collect();
    // Only the snapshots the preview found matches in are walked again.
    let unchanged = preview.unchanged.len();
    let touched: Vec<_> = snapshots
        .into_iter()
        .filter(|(id, _)| touched.contains(id.to_hex().as_str()))
        .collect();
    let done = rewrite(
        &primary,
        touched,
        &RewriteOptions {
            dry_run: false,
            ..options.clone()
        },
    )
    .map_err(engine)?;
    let replaced: Vec<Replaced> = done
        .rewritten
        .iter()
        .filter_map(|r| {
            let from = SnapshotId::from_hex(&r.from).ok()?;
            let earlier = names.iter().find(|(id, _)| *id == from)?.1;
            Some(Replaced {
                names: std::iter::once(from).chain(earlier).collect(),
                by: SnapshotId::from_hex(r.to.as_deref()?).ok()?,
            })
        })
        .collect();
    let mut report = EraseReport {
        unchanged,
        ..report_of(done)
    };
    let replica = repositories
        .existing_replica(handle, agency_code, &primary)
        .map_err(EraseError::Repository)?;
    if let Some(replica) = &replica {
        report.replica = true;
        // The primary is done: what stops the replica's part is left to a second run.
        if let Err(error) =
            erase_replica(&primary, replica, server, &replaced, &options, &mut report)
        {
            let why = match error {
                EraseError::Request(why) | EraseError::Repository(why) => why,
                EraseError::Held(held) => format!("held: {}", held.join(", ")),
            };
            report.notes.push(format!(
                "the replica was not erased completely ({why}); run the erasure again"
            ));
        }
    }
    // Every pack that held a removed file is repacked and marked now, the replica's too.
    let grace = PruneOptions::default().grace;
    for (repository, which) in [(Some(&primary), "primary"), (replica.as_ref(), "replica")] {
        let Some(repository) = repository else {
            continue;
        };
        match prune(
            repository,
            &PruneOptions {
                max_unused_percent: 0.0,
                grace,
                now,
                ..PruneOptions::default()
            },
        ) {
            Ok(pruned) => {
                report.packs_repacked += pruned.packs_repacked as u64;
                report.bytes_marked += pruned.bytes_marked;
            }
            Err(error) => report.notes.push(format!(
                "the {which} repository was not pruned ({error}): the removed files' data stays \
                 in its packs until a prune repacks them; run the erasure again"
            )),
        }
    }
    report.deletable_after = Some(now + grace);
    Ok(report)
}

/// A snapshot of the primary the erasure replaced.
struct Replaced {
    /// What it has been known as (its id, and the one it replaced when a hold or a tag
    /// gave it a new id).
    names: Vec<SnapshotId>,
    /// Its replacement.
    by: SnapshotId,
}

/// The replica's part: copies of replaced snapshots replaced by copies of their
/// replacements, then whatever else the replica holds of the server rewritten in place.
fn erase_replica(
    primary: &Repository,
    replica: &Repository,
    server: &Server,
    replaced: &[Replaced],
    options: &RewriteOptions,
    report: &mut EraseReport,
) -> Result<(), EraseError> {
    let (copies, _) = replica.load_snapshots().map_err(engine)?;
    let copied: HashSet<SnapshotId> = copies
        .iter()
        .filter_map(|(_, copy)| copy.original)
        .collect();
    let replacements: Vec<SnapshotId> = replaced
        .iter()
        .filter(|r| r.names.iter().any(|name| copied.contains(name)))
        .map(|r| r.by)
        .collect();
    if !replacements.is_empty() {
        copy_with(primary, replica, &replacements, &CopyOptions::default()).map_err(engine)?;
    }
    for (id, copy) in &copies {
        if copy
            .original
            .is_some_and(|original| replaced.iter().any(|r| r.names.contains(&original)))
        {
            replica.delete_snapshot(id).map_err(engine)?;
            report.replica_copies_replaced += 1;
        }
    }
    let rest = server_snapshots(replica, server).map_err(EraseError::Repository)?;
    let again = rewrite(
        replica,
        rest,
        &RewriteOptions {
            dry_run: false,
            ..options.clone()
        },
    )
    .map_err(engine)?;
    report.replica_rewritten = again.rewritten.len() as u64;
    Ok(())
}

fn report_of(rewritten: RewriteReport) -> EraseReport {
    EraseReport {
        unchanged: rewritten.unchanged.len(),
        dry_run: rewritten.dry_run,
        rewritten: rewritten.rewritten,
        ..EraseReport::default()
    }
}
