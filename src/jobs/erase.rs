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
//!
//! The erasure ends by looking again: every snapshot of the server, in both repositories,
//! is searched for the patterns once more. What still matches — a snapshot held or
//! written by a backup while the erasure ran — is reported ([`EraseReport::remaining`]),
//! never passed over in silence.

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
    /// Snapshots that still hold matches when the erasure ends (held, or written, while
    /// it ran); empty in a dry run and after a complete erasure.
    pub remaining: Vec<Remaining>,
}

/// A snapshot found still holding matches when an erasure ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remaining {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// In the replica (otherwise the primary).
    pub replica: bool,
    /// It is held: only releasing it lets an erasure change it.
    pub held: bool,
    /// Matching paths in it.
    pub paths: usize,
}

impl Remaining {
    /// What the officer does about it.
    pub fn note(&self) -> String {
        let place = if self.replica { "replica" } else { "primary" };
        let (id, n) = (self.snapshot.short(), self.paths);
        if self.held {
            format!(
                "snapshot {id} ({place}) was held while the erasure ran and still holds {n} \
                 matching path(s): release its hold and run the erasure again"
            )
        } else {
            format!(
                "snapshot {id} ({place}) still holds {n} matching path(s): it was written \
                 while the erasure ran (are the files still on the server?); run the erasure \
                 again"
            )
        }
    }
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
        Error::InvalidInput(message) => EraseError::Request(message),
        // The one refusal of a rewrite: a snapshot the patterns would leave empty.
        Error::Refused(message) => EraseError::Request(format!(
            "{message}; an erasure keeps every snapshot (only retention removes one), so \
             narrow the patterns"
        )),
        other => EraseError::Repository(other.to_string()),
    }
}

/// What to erase, and where.
#[derive(Debug, Clone, Copy)]
pub struct EraseRequest<'a> {
    /// The agency whose repository (and replica) hold the server's snapshots.
    pub agency_code: &'a str,
    /// The server whose snapshots are erased.
    pub server: &'a Server,
    /// What to take out (a plan's exclude syntax).
    pub patterns: &'a [String],
    /// Report what would go and change nothing.
    pub dry_run: bool,
    /// The daemon's clock: when the marked packs may be deleted follows from it.
    pub now: DateTime<Utc>,
}

/// Takes what `request.patterns` match out of every snapshot of `request.server` in the
/// agency's repository and its replica (see the module documentation).
///
/// # Errors
/// [`EraseError`], before anything is changed, or when the primary could not be
/// rewritten (what was done is then finished by running the erasure again). Once the
/// primary is rewritten, what could not be done (the replica's part, a prune) is in
/// [`EraseReport::notes`].
pub fn erase(
    repositories: &Repositories,
    handle: &Handle,
    request: &EraseRequest<'_>,
) -> Result<EraseReport, EraseError> {
    erase_with(repositories, handle, request, |_| ())
}

/// [`erase`], with `meanwhile` run on the primary between the look at its snapshots and
/// their rewrite: where a hold or a backup of another caller can land.
fn erase_with(
    repositories: &Repositories,
    handle: &Handle,
    request: &EraseRequest<'_>,
    meanwhile: impl FnOnce(&Repository),
) -> Result<EraseReport, EraseError> {
    let EraseRequest {
        agency_code,
        server,
        patterns,
        dry_run,
        now,
    } = *request;
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
    meanwhile(&primary);
    // Only the snapshots the preview found matches in are walked again, and only those
    // still there: one held since has a new id (it is not to be changed, and the look at
    // the end reports it), one forgotten since needs no replacement.
    let unchanged = preview.unchanged.len();
    let present: HashSet<SnapshotId> = server_snapshots(&primary, server)
        .map_err(EraseError::Repository)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let touched: Vec<_> = snapshots
        .into_iter()
        .filter(|(id, _)| touched.contains(id.to_hex().as_str()) && present.contains(id))
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
    // The look at the end: whatever still matches is named.
    for (repository, is_replica) in [(Some(&primary), false), (replica.as_ref(), true)] {
        let Some(repository) = repository else {
            continue;
        };
        match remaining(repository, server, &options, is_replica) {
            Ok(found) => report.remaining.extend(found),
            Err(error) => report.notes.push(format!(
                "the {} repository could not be searched again after the erasure ({error}); \
                 run it again with --dry-run to see what still matches",
                if is_replica { "replica" } else { "primary" }
            )),
        }
    }
    for found in &report.remaining {
        report.notes.push(found.note());
    }
    Ok(report)
}

/// The server's snapshots in `repository` that the patterns of `options` still match.
fn remaining(
    repository: &Repository,
    server: &Server,
    options: &RewriteOptions,
    replica: bool,
) -> Result<Vec<Remaining>, String> {
    let snapshots = server_snapshots(repository, server)?;
    let held: HashSet<SnapshotId> = snapshots
        .iter()
        .filter(|(_, snapshot)| snapshot.tags.iter().any(|tag| tag == crate::app::HOLD_TAG))
        .map(|(id, _)| *id)
        .collect();
    let found = rewrite(
        repository,
        snapshots,
        &RewriteOptions {
            dry_run: true,
            ..options.clone()
        },
    )
    .map_err(|error| error.to_string())?;
    Ok(found
        .rewritten
        .into_iter()
        .filter_map(|r| {
            let snapshot = SnapshotId::from_hex(&r.from).ok()?;
            Some(Remaining {
                snapshot,
                replica,
                held: held.contains(&snapshot),
                paths: r.removed.len(),
            })
        })
        .collect())
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
    // A copy under a hold of its own is not changed (the look at the end reports it).
    let rest: Vec<_> = server_snapshots(replica, server)
        .map_err(EraseError::Repository)?
        .into_iter()
        .filter(|(_, copy)| !copy.tags.iter().any(|tag| tag == crate::app::HOLD_TAG))
        .collect();
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::catalog::ServerId;
    use crate::engine::backup::{BackupOptions, BackupProgress, backup};
    use crate::engine::rewrite::{TagChange, retag};
    use crate::engine::store::StoreOptions;

    fn server() -> Server {
        Server::example(ServerId(5))
    }

    fn back_up(repository: &Repository, source: &Path) -> SnapshotId {
        backup(
            repository,
            &BackupOptions {
                paths: vec![source.to_path_buf()],
                tags: vec!["server:5".into()],
                ..Default::default()
            },
            &BackupProgress::default(),
        )
        .unwrap()
        .snapshot_id
    }

    /// A hold set, and a backup committed, between an erasure's look at the snapshots and
    /// its rewrite: the held snapshot is neither changed nor duplicated, and both are
    /// reported as still holding the file instead of the erasure claiming it complete.
    #[test]
    fn what_is_held_or_written_while_an_erasure_runs_is_reported_not_passed_over() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let repositories = Repositories::new(
            dir.path().join("repositories").display().to_string(),
            [4; 32],
            StoreOptions::default(),
        );
        let source = dir.path().join("srv");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("kept"), b"kept").unwrap();
        std::fs::write(source.join("ktp.csv"), b"personal data").unwrap();
        let primary = repositories
            .open(runtime.handle(), "DINKES", None, None)
            .unwrap();
        let first = back_up(&primary, &source);
        std::fs::write(source.join("kept"), b"kept, changed").unwrap();
        let second = back_up(&primary, &source);
        let server = server();
        let patterns = vec!["**/ktp.csv".to_owned()];

        // A pattern that would leave a snapshot empty is refused in the daemon's words.
        let everything = vec![format!("{}", source.display())];
        let request = |patterns| EraseRequest {
            agency_code: "DINKES",
            server: &server,
            patterns,
            dry_run: false,
            now: Utc::now(),
        };
        match erase(&repositories, runtime.handle(), &request(&everything)) {
            Err(EraseError::Request(message)) => {
                assert!(message.contains("narrow the patterns"), "{message}");
                assert!(!message.contains("forget it"), "{message}");
            }
            other => panic!("{other:?}"),
        }

        let mut held = None;
        let mut written = None;
        let report = erase_with(
            &repositories,
            runtime.handle(),
            &request(&patterns),
            |primary| {
                let (snapshots, _) = primary.load_snapshots().unwrap();
                let chosen = snapshots.into_iter().find(|(id, _)| *id == first).unwrap();
                let hold = TagChange {
                    add: vec![crate::app::HOLD_TAG.into()],
                    ..Default::default()
                };
                held = Some(retag(primary, vec![chosen], &hold).unwrap()[0].1);
                written = Some(back_up(primary, &source));
            },
        )
        .unwrap();
        let (held, written) = (held.unwrap(), written.unwrap());
        assert_eq!(
            report
                .rewritten
                .iter()
                .map(|r| r.from.clone())
                .collect::<Vec<_>>(),
            vec![second.to_hex()]
        );
        let mut remaining = report.remaining.clone();
        remaining.sort_by_key(|r| r.held);
        assert_eq!(
            remaining,
            vec![
                Remaining {
                    snapshot: written,
                    replica: false,
                    held: false,
                    paths: 1
                },
                Remaining {
                    snapshot: held,
                    replica: false,
                    held: true,
                    paths: 1
                },
            ]
        );
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains(&held.short()) && n.contains("release its hold")),
            "{:?}",
            report.notes
        );
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains(&written.short()) && n.contains("written while")),
            "{:?}",
            report.notes
        );
        // The held snapshot, the new backup and the replacement of the second: no copy of
        // the held one without the file.
        let (snapshots, _) = primary.load_snapshots().unwrap();
        assert_eq!(snapshots.len(), 3, "{snapshots:?}");
        assert!(
            snapshots
                .iter()
                .all(|(id, _)| *id != first && *id != second)
        );

        // Once the file is gone from the server and the hold released, the next erasure
        // is complete.
        std::fs::remove_file(source.join("ktp.csv")).unwrap();
        let (snapshots, _) = primary.load_snapshots().unwrap();
        let chosen = snapshots.into_iter().find(|(id, _)| *id == held).unwrap();
        let release = TagChange {
            remove: vec![crate::app::HOLD_TAG.into()],
            ..Default::default()
        };
        retag(&primary, vec![chosen], &release).unwrap();
        let report = erase(&repositories, runtime.handle(), &request(&patterns)).unwrap();
        assert_eq!(report.rewritten.len(), 2);
        assert!(report.remaining.is_empty(), "{:?}", report.remaining);
        assert!(report.notes.is_empty(), "{:?}", report.notes);
    }
}
