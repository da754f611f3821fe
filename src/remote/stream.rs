//! Streaming a restore to an agent, whatever the content comes from: the entries in
//! order (directories before what they hold), each file's chunks after its entry, then
//! the agent's per-file verdicts. The agent checks every chunk against the id the entry
//! named (keyed BLAKE3 under the job's id key) and every file once written, so a restore
//! reports success only for what arrived intact.
//!
//! The source of the content is behind [`RestoreSource`]: the agency's cadang repository
//! (and its replica), or a staging copy that restic restored and cadang verified.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::runtime::Handle;

use super::{Progress, Received, open_link, receive, send, set_progress};
use crate::app::{MAX_FAILED_LISTED, RestoreEnd};
use crate::catalog::{RestoreRecord, Server};
use crate::engine::restore::Overwrite;
use crate::hub::{AgentHub, JobKind, JobLink};
use crate::rpc::pb;
use crate::rpc::pb::agent_message::Body as Up;
use crate::rpc::pb::daemon_message::Body as Down;

/// Where a restore's file content comes from.
pub(crate) trait RestoreSource {
    /// Chunk `n` of the file `entry` as sent to the agent: a blob payload (codec byte
    /// and data) whose plaintext, `raw_len` bytes, must hash to `entry.content[n]` under
    /// the job's id key (the agent checks it); or why it cannot be given (named as the
    /// file's problem).
    fn chunk(&mut self, entry: &pb::RestoreEntry, n: usize) -> Result<pb::RestoreChunk, String>;

    /// Chunk `n` of the file `entry` is not sent after all (the target already holds
    /// it): a source reading ahead moves past it.
    fn skip_chunk(&mut self, entry: &pb::RestoreEntry, n: usize) {
        let _ = (entry, n);
    }

    /// The file `entry` is not sent after all: a source reading ahead moves past its
    /// chunks.
    fn skip(&mut self, entry: &pb::RestoreEntry) {
        for n in 0..entry.content.len() {
            self.skip_chunk(entry, n);
        }
    }
}

/// What a restore to be streamed is.
pub(crate) struct Outgoing<'a> {
    /// The agent's server.
    pub target: &'a Server,
    /// The job: id, target directory, id key and snapshot.
    pub job: pb::RestoreJob,
    /// The entries in order.
    pub entries: Vec<pb::RestoreEntry>,
    /// How long to wait for the agent to connect.
    pub reconnect_wait: Duration,
}

impl<'a> Outgoing<'a> {
    /// `restore`'s entries, named under `id_key`, as the snapshot `snapshot`.
    pub(crate) fn for_restore(
        target: &'a Server,
        restore: &RestoreRecord,
        id_key: [u8; 32],
        snapshot: &str,
        entries: Vec<pb::RestoreEntry>,
        reconnect_wait: Duration,
    ) -> Self {
        Outgoing {
            target,
            job: pb::RestoreJob {
                job_id: format!("restore:{}", restore.id),
                target_dir: restore.target_dir.clone(),
                id_key: id_key.to_vec(),
                snapshot_id: snapshot.to_owned(),
                overwrite: restore.overwrite.clone(),
                // Set by the caller, which knows the snapshot's backed-up paths.
                delete: false,
                excludes: Vec::new(),
                clean_target: false,
                dry_run: restore.dry_run,
            },
            entries,
            reconnect_wait,
        }
    }
}

/// The agent finished: its verdicts, and what the daemon sent.
pub(crate) struct Streamed {
    /// Entries sent.
    pub entries: u64,
    /// Bytes of chunk payloads sent.
    pub bytes_sent: u64,
    /// Only a dry run: the agent's summary says what it would have done.
    pub dry_run: bool,
    /// The agent's summary.
    pub done: pb::RestoreDone,
    /// Files the agent could not write or verify.
    pub failed: Vec<pb::FileProblem>,
    /// Files (and directories) the source could not give.
    pub unreadable: Vec<pb::FileProblem>,
}

/// What the agent said so far of a restore.
#[derive(Default)]
struct Heard {
    /// Files it could not write or verify.
    failed: Vec<pb::FileProblem>,
    /// Files it wrote and verified.
    verified: u64,
    /// Its summary, once it finished.
    done: Option<pb::RestoreDone>,
    /// Why it could not carry out the job.
    failure: Option<String>,
    /// Its answers to probes not yet waited for, by batch (an answer can come while
    /// the batch before is being sent).
    answers: std::collections::HashMap<u64, pb::RestoreProbeAnswer>,
}

impl Heard {
    fn absorb(&mut self, message: pb::AgentMessage) {
        match message.body {
            Some(Up::RestoreResults(results)) => {
                self.verified += results.verified;
                self.failed.extend(results.failed);
            }
            Some(Up::RestoreDone(done)) => self.done = Some(done),
            Some(Up::Failed(failure)) => self.failure = Some(failure.error),
            Some(Up::ProbeAnswer(answer)) => {
                self.answers.insert(answer.batch, answer);
            }
            _ => {}
        }
    }
}

/// Entries per batch of a restore whose files the agent is asked about at once.
const PROBE_BATCH: usize = 1000;
/// Most bytes of file entries named in one probe: well within the stream's largest
/// message, however many chunks the files have.
const PROBE_BYTES: usize = 4 << 20;

/// `entries` in batches of at most [`PROBE_BATCH`] entries whose files' entries take at
/// most [`PROBE_BYTES`] (a file larger on its own has a batch of its own).
fn probe_batches(entries: Vec<pb::RestoreEntry>) -> Vec<Vec<pb::RestoreEntry>> {
    use prost::Message as _;
    let mut batches = Vec::new();
    let mut batch: Vec<pb::RestoreEntry> = Vec::new();
    let mut bytes = 0usize;
    for entry in entries {
        let size = if entry.kind == "file" {
            entry.encoded_len()
        } else {
            0
        };
        if !batch.is_empty() && (batch.len() == PROBE_BATCH || bytes + size > PROBE_BYTES) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(entry);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

fn end(status: &str, stats: serde_json::Value, error: Option<String>) -> RestoreEnd {
    RestoreEnd {
        status: status.to_owned(),
        stats_json: stats.to_string(),
        error,
    }
}

/// Sends `outgoing` to its agent and collects the verdicts. `unreadable` holds what the
/// caller already knows it cannot give (a directory unreadable in the repository); the
/// chunks the source cannot give are added to it. A stream that ends, an agent that
/// fails the job or a stop ends it with the [`RestoreEnd`] to record.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stream_restore(
    handle: &Handle,
    hub: &AgentHub,
    outgoing: Outgoing<'_>,
    source: &mut dyn RestoreSource,
    mut unreadable: Vec<pb::FileProblem>,
    cancel: &Arc<AtomicBool>,
    progress: &Progress,
) -> Result<Streamed, RestoreEnd> {
    let Outgoing {
        target,
        job,
        entries,
        reconnect_wait,
    } = outgoing;
    let job_id = job.job_id.clone();
    let snapshot = job.snapshot_id.clone();
    let failed = |error: String| end("failed", json!({ "snapshot": snapshot }), Some(error));
    let Some(mut link) = open_link(
        handle,
        hub,
        target.id,
        &job_id,
        JobKind::Restore,
        reconnect_wait,
        cancel,
        &|other| set_progress(progress, json!({ "waiting_for_job": other })),
    ) else {
        return Err(failed(format!(
            "the agent of server {} is not connected to this daemon",
            target.id
        )));
    };
    let lost = || {
        failed(
            "the agent's stream ended during the restore; start it again (restored files are replaced atomically, so a second run is safe)".into(),
        )
    };
    let stopped = || {
        end(
            "cancelled",
            json!({ "snapshot": snapshot }),
            Some("stopped by the daemon".into()),
        )
    };
    let stop = |link: &JobLink| {
        send(
            handle,
            link,
            Down::Cancel(pb::CancelJob {
                job_id: job_id.clone(),
                reason: "the daemon stops".into(),
            }),
        );
        hub.close_job(target.id, &job_id);
        stopped()
    };
    // Refused before the job starts: the agent's link is given back.
    let refuse = |error: String| {
        hub.close_job(target.id, &job_id);
        failed(error)
    };
    let overwrite = Overwrite::parse_or_always(&job.overwrite)
        .map_err(|error| refuse(format!("the restore's {error}")))?;
    let has = |feature: &str| link.features.iter().any(|known| known == feature);
    // An agent that can say what the target already holds is asked, batch by batch,
    // and is sent no chunk of what it holds; an older one is sent everything.
    let probing = has(crate::rpc::FEATURE_RESTORE_IN_PLACE);
    let older = |cannot: &str| {
        refuse(format!(
            "the agent of server {} is older than this daemon and cannot {cannot}",
            target.id
        ))
    };
    if !probing && overwrite != Overwrite::Always {
        return Err(older(&format!(
            "keep the files already in the target (--overwrite {overwrite}); upgrade it, or restore with --overwrite always"
        )));
    }
    // A dry run needs the agent's answers: it is sent no content.
    if job.dry_run && !(probing && has(crate::rpc::FEATURE_RESTORE_DRY_RUN)) {
        return Err(older("do a dry run; upgrade it"));
    }
    if job.delete && !has(crate::rpc::FEATURE_RESTORE_DELETE) {
        return Err(older(
            "delete what the snapshot does not hold; upgrade it, or restore without --delete",
        ));
    }
    let dry_run = job.dry_run;
    if !send(handle, &link, Down::Restore(job)) {
        return Err(lost());
    }
    let mut heard = Heard::default();
    let total = entries.len() as u64;
    let mut bytes_sent = 0u64;
    let mut batches = probe_batches(entries);
    let probe = |batch: usize, entries: &[pb::RestoreEntry]| {
        Down::RestoreProbe(pb::RestoreProbe {
            job_id: job_id.clone(),
            batch: batch as u64,
            files: entries
                .iter()
                .filter(|entry| entry.kind == "file")
                .cloned()
                .collect(),
        })
    };
    if probing
        && let Some(first) = batches.first()
        && !send(handle, &link, probe(0, first))
    {
        return Err(lost());
    }
    let mut n = 0usize;
    'batches: for b in 0..batches.len() {
        // Positions in this batch of the files the target already holds, and of those
        // it holds some chunks of (which are copied there, not sent).
        let mut in_place: HashSet<usize> = HashSet::new();
        let mut partial: std::collections::HashMap<usize, Vec<u8>> =
            std::collections::HashMap::new();
        if probing {
            let answer = loop {
                if let Some(answer) = heard.answers.remove(&(b as u64)) {
                    break answer;
                }
                if cancel.load(Ordering::Relaxed) {
                    return Err(stop(&link));
                }
                match receive(handle, &mut link) {
                    Received::Message(message) => heard.absorb(message),
                    Received::Idle => {}
                    Received::Closed => return Err(lost()),
                }
                if heard.failure.is_some() {
                    break 'batches;
                }
            };
            let files: Vec<usize> = batches[b]
                .iter()
                .enumerate()
                .filter(|(_, entry)| entry.kind == "file")
                .map(|(position, _)| position)
                .collect();
            in_place.extend(
                answer
                    .unchanged
                    .iter()
                    .chain(&answer.kept)
                    .filter_map(|k| files.get(*k as usize).copied()),
            );
            partial.extend(answer.partial.into_iter().filter_map(|file| {
                files
                    .get(file.file as usize)
                    .map(|position| (*position, file.chunks))
            }));
            // The next batch's question goes ahead of this batch's entries, so that the
            // agent answers it before it writes them and the stream never waits.
            if let Some(next) = batches.get(b + 1)
                && !send(handle, &link, probe(b + 1, next))
            {
                return Err(lost());
            }
        }
        for (position, mut entry) in std::mem::take(&mut batches[b]).into_iter().enumerate() {
            n += 1;
            if cancel.load(Ordering::Relaxed) {
                return Err(stop(&link));
            }
            // Drain what the agent said so far, so neither side waits on a full stream.
            while let Ok(message) = link.inbound.try_recv() {
                heard.absorb(message);
            }
            if heard.failure.is_some() {
                break 'batches;
            }
            // A dry run sends no content: the agent only decides.
            if dry_run || in_place.contains(&position) {
                source.skip(&entry);
                entry.in_place = in_place.contains(&position);
                if !send(handle, &link, Down::RestoreEntry(entry)) {
                    return Err(lost());
                }
                continue;
            }
            if let Some(reuse) = partial.remove(&position) {
                entry.reuse = reuse;
            }
            if !send(handle, &link, Down::RestoreEntry(entry.clone())) {
                return Err(lost());
            }
            // After a chunk the source cannot give, the file's other chunks are sent empty:
            // the agent fails the file and keeps what was there before.
            let mut file_problem: Option<String> = None;
            for index in 0..entry.content.len() {
                // Copied by the agent from the file already there.
                if crate::engine::restore::is_held(&entry.reuse, index) {
                    source.skip_chunk(&entry, index);
                    continue;
                }
                let chunk = if file_problem.is_some() {
                    pb::RestoreChunk::default()
                } else {
                    match source.chunk(&entry, index) {
                        Ok(chunk) => {
                            bytes_sent += chunk.payload.len() as u64;
                            chunk
                        }
                        Err(reason) => {
                            file_problem = Some(reason);
                            pb::RestoreChunk::default()
                        }
                    }
                };
                if !send(handle, &link, Down::RestoreChunk(chunk)) {
                    return Err(lost());
                }
            }
            if let Some(reason) = file_problem {
                unreadable.push(pb::FileProblem {
                    path: format!("/{}", String::from_utf8_lossy(&entry.path)),
                    reason,
                });
            }
            if n.is_multiple_of(200) {
                set_progress(
                    progress,
                    json!({ "snapshot": snapshot, "entries_sent": n, "entries": total,
                        "bytes_sent": bytes_sent, "files_verified": heard.verified }),
                );
            }
        }
    }
    if heard.failure.is_none()
        && !send(
            handle,
            &link,
            Down::RestoreEnd(pb::RestoreEnd {
                job_id: job_id.clone(),
                entries: total,
                unreadable: unreadable.clone(),
            }),
        )
    {
        return Err(lost());
    }
    while heard.done.is_none() && heard.failure.is_none() {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        match receive(handle, &mut link) {
            Received::Message(message) => heard.absorb(message),
            Received::Idle => {}
            Received::Closed => return Err(lost()),
        }
    }
    hub.close_job(target.id, &job_id);
    if let Some(error) = heard.failure {
        return Err(failed(format!("the agent could not restore: {error}")));
    }
    let Some(done) = heard.done else {
        return Err(stopped());
    };
    Ok(Streamed {
        entries: total,
        bytes_sent,
        dry_run,
        done,
        failed: heard.failed,
        unreadable,
    })
}

impl Streamed {
    /// The restore's end: `ok` only when the agent verified every file and the source
    /// gave everything; the statistics name each failed file once (the source's reason
    /// first, which says where the content was damaged). `extra` is merged into the
    /// statistics.
    pub(crate) fn judged(&self, snapshot: &str, extra: serde_json::Value) -> RestoreEnd {
        // Unreadable content fails its file on the agent too (which names it relative to
        // the target, without the leading `/`): list each file once.
        let known: HashSet<&str> = self
            .unreadable
            .iter()
            .map(|problem| problem.path.trim_start_matches('/'))
            .collect();
        let listed: Vec<serde_json::Value> = self
            .unreadable
            .iter()
            .chain(
                self.failed
                    .iter()
                    .filter(|problem| !known.contains(problem.path.trim_start_matches('/'))),
            )
            .take(MAX_FAILED_LISTED)
            .map(|problem| json!({ "path": problem.path, "reason": problem.reason }))
            .collect();
        // What the source could not give and the agent never saw (a directory unreadable
        // in the repository, a file restic could not restore) is only known here.
        let failed_on_agent: HashSet<&str> = self
            .failed
            .iter()
            .map(|problem| problem.path.trim_start_matches('/'))
            .collect();
        let only_here = self
            .unreadable
            .iter()
            .filter(|problem| !failed_on_agent.contains(problem.path.trim_start_matches('/')))
            .count() as u64;
        let files_failed = self.done.files_failed + only_here;
        let ok = files_failed == 0 && self.unreadable.is_empty();
        let mut stats = if self.dry_run {
            json!({
                "dry_run": true,
                "snapshot": snapshot,
                "entries": self.entries,
                "files_to_write": self.done.files_verified,
                "bytes_to_write": self.done.bytes,
                "files_failed": files_failed,
                "files_unchanged": self.done.files_unchanged,
                "bytes_unchanged": self.done.bytes_unchanged,
                "files_kept": self.done.files_kept,
                "to_delete": self.done.deleted,
                "to_delete_paths": self.done.deleted_paths,
                "bytes_sent": self.bytes_sent,
                "failed": listed,
            })
        } else {
            json!({
            "snapshot": snapshot,
            "entries": self.entries,
            "files_verified": self.done.files_verified,
            "files_failed": files_failed,
            "bytes": self.done.bytes,
            "files_unchanged": self.done.files_unchanged,
            "bytes_unchanged": self.done.bytes_unchanged,
            "files_kept": self.done.files_kept,
            "deleted": self.done.deleted,
            "deleted_paths": self.done.deleted_paths,
            "bytes_reused": self.done.bytes_reused,
            "bytes_sent": self.bytes_sent,
            "failed": listed,
            })
        };
        if let (Some(stats), serde_json::Value::Object(extra)) = (stats.as_object_mut(), extra) {
            stats.extend(extra);
        }
        end(
            if ok { "ok" } else { "verify_differences" },
            stats,
            (!ok).then(|| {
                if self.dry_run {
                    format!("{files_failed} file(s) could not be restored; see the list")
                } else {
                    format!(
                        "{files_failed} file(s) could not be restored and verified; see the list"
                    )
                }
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{AgentId, ServerId};

    /// Chunks asked of the source, each a one-byte raw payload, and chunks passed.
    struct Counting(u64, u64);

    impl RestoreSource for Counting {
        fn chunk(&mut self, _: &pb::RestoreEntry, _: usize) -> Result<pb::RestoreChunk, String> {
            self.0 += 1;
            Ok(pb::RestoreChunk {
                payload: vec![0, 7],
                raw_len: 1,
            })
        }

        fn skip_chunk(&mut self, _: &pb::RestoreEntry, _: usize) {
            self.1 += 1;
        }
    }

    #[test]
    fn an_agent_without_a_feature_a_restore_needs_is_refused_before_anything_is_sent() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        /// The agent's features, what the job asks, and what the refusal says.
        type Case = (
            &'static [&'static str],
            fn(&mut pb::RestoreJob),
            &'static str,
        );
        let cases: [Case; 4] = [
            (
                &[],
                |job| job.overwrite = "never".into(),
                "cannot keep the files",
            ),
            (
                &[crate::rpc::FEATURE_RESTORE_IN_PLACE],
                |job| job.dry_run = true,
                "cannot do a dry run",
            ),
            (
                &[crate::rpc::FEATURE_RESTORE_DRY_RUN],
                |job| job.dry_run = true,
                "cannot do a dry run",
            ),
            (
                &[
                    crate::rpc::FEATURE_RESTORE_IN_PLACE,
                    crate::rpc::FEATURE_RESTORE_DRY_RUN,
                ],
                |job| job.delete = true,
                "cannot delete what the snapshot does not hold",
            ),
        ];
        for (features, asks, refused) in cases {
            let hub = AgentHub::default();
            let (agent, server) = (AgentId(9), ServerId(5));
            let (outbound, mut to_agent) = tokio::sync::mpsc::channel(64);
            let features = features.iter().map(|f| (*f).to_owned()).collect();
            hub.register_with(agent, server, outbound, features)
                .unwrap();
            let target = Server::example(server);
            let mut job = pb::RestoreJob {
                job_id: "restore:1".into(),
                target_dir: "/srv".into(),
                id_key: vec![0; 32],
                snapshot_id: "ab".repeat(32),
                ..Default::default()
            };
            asks(&mut job);
            let outgoing = Outgoing {
                target: &target,
                job,
                entries: vec![file(1)],
                reconnect_wait: Duration::from_secs(5),
            };
            let end = stream_restore(
                runtime.handle(),
                &hub,
                outgoing,
                &mut Counting(0, 0),
                Vec::new(),
                &Arc::new(AtomicBool::new(false)),
                &Progress::default(),
            )
            .err()
            .expect("refused");
            assert_eq!(end.status, "failed");
            let error = end.error.unwrap_or_default();
            assert!(error.contains(refused), "{error}");
            assert!(error.contains("upgrade it"), "{error}");
            assert!(to_agent.try_recv().is_err(), "nothing sent to the agent");
        }
    }

    #[test]
    fn answers_that_come_while_a_batch_is_sent_are_kept_for_their_batch() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let hub = Arc::new(AgentHub::default());
        let (agent, server) = (AgentId(9), ServerId(5));
        let (outbound, mut to_agent) = tokio::sync::mpsc::channel(64);
        let connection = hub
            .register_with(
                agent,
                server,
                outbound,
                vec![crate::rpc::FEATURE_RESTORE_IN_PLACE.into()],
            )
            .unwrap();
        // An agent that answers each probe at once (every other file already there) and
        // counts what it is sent.
        let agent_hub = Arc::clone(&hub);
        let simulated = runtime.spawn(async move {
            let (mut entries, mut in_place, mut chunks, mut reusing) = (0u64, 0u64, 0u64, 0u64);
            while let Some(Ok(message)) = to_agent.recv().await {
                let reply = match message.body {
                    Some(Down::RestoreProbe(probe)) => Up::ProbeAnswer(pb::RestoreProbeAnswer {
                        job_id: probe.job_id,
                        batch: probe.batch,
                        unchanged: (0..probe.files.len() as u32).step_by(2).collect(),
                        kept: Vec::new(),
                        // Every fourth file from the second holds its first chunk.
                        partial: (1..probe.files.len() as u32)
                            .step_by(4)
                            .map(|file| pb::PartialFile {
                                file,
                                chunks: vec![1],
                            })
                            .collect(),
                    }),
                    Some(Down::RestoreEntry(entry)) => {
                        entries += 1;
                        in_place += u64::from(entry.in_place);
                        reusing += u64::from(entry.reuse == [1]);
                        continue;
                    }
                    Some(Down::RestoreChunk(_)) => {
                        chunks += 1;
                        continue;
                    }
                    Some(Down::RestoreEnd(end)) => Up::RestoreDone(pb::RestoreDone {
                        job_id: end.job_id,
                        files_unchanged: in_place,
                        ..Default::default()
                    }),
                    _ => continue,
                };
                let done = matches!(reply, Up::RestoreDone(_));
                let message = pb::AgentMessage { body: Some(reply) };
                agent_hub.route(agent, connection, message).await.unwrap();
                if done {
                    break;
                }
            }
            (entries, in_place, chunks, reusing)
        });
        let files = 2500u64;
        let entries: Vec<pb::RestoreEntry> = (0..files)
            .map(|n| pb::RestoreEntry {
                path: format!("f{n}").into_bytes(),
                kind: "file".into(),
                size: 2,
                content: vec![vec![7; 32]; 2],
                lengths: vec![1, 1],
                ..Default::default()
            })
            .collect();
        let target = Server::example(server);
        let outgoing = Outgoing {
            target: &target,
            job: pb::RestoreJob {
                job_id: "restore:1".into(),
                target_dir: "/srv".into(),
                id_key: vec![0; 32],
                snapshot_id: "ab".repeat(32),
                ..Default::default()
            },
            entries,
            reconnect_wait: Duration::from_secs(5),
        };
        // A restore that waits for an answer already taken in is stopped, not waited on.
        let cancel = Arc::new(AtomicBool::new(false));
        let watchdog = Arc::clone(&cancel);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(30));
            watchdog.store(true, Ordering::Relaxed);
        });
        let mut source = Counting(0, 0);
        // As on the daemon's blocking threads.
        let _entered = runtime.enter();
        let streamed = stream_restore(
            runtime.handle(),
            &hub,
            outgoing,
            &mut source,
            Vec::new(),
            &cancel,
            &Progress::default(),
        )
        .map_err(|end| end.error)
        .expect("the restore ends");
        let (entries, in_place, chunks, reusing) = runtime.block_on(simulated).unwrap();
        assert_eq!((entries, in_place, reusing), (files, files / 2, files / 4));
        // Two chunks of each file sent whole, one of each held in part; the source moves
        // past the others.
        let sent = 2 * files / 4 + files / 4;
        assert_eq!((chunks, source.0), (sent, sent));
        assert_eq!(source.1, 2 * files - sent);
        assert_eq!(streamed.done.files_unchanged, files / 2);
        assert_eq!(streamed.bytes_sent, 2 * sent);
    }

    fn file(chunks: usize) -> pb::RestoreEntry {
        pb::RestoreEntry {
            kind: "file".into(),
            content: vec![vec![7; 32]; chunks],
            lengths: vec![1 << 20; chunks],
            ..Default::default()
        }
    }

    #[test]
    fn probes_stay_small_whatever_the_files() {
        use prost::Message as _;
        let dir = pb::RestoreEntry {
            kind: "dir".into(),
            ..Default::default()
        };
        // Many small entries: batches of PROBE_BATCH.
        let small: Vec<pb::RestoreEntry> = (0..2500)
            .map(|n| if n % 10 == 0 { dir.clone() } else { file(1) })
            .collect();
        let batches = probe_batches(small);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [PROBE_BATCH, PROBE_BATCH, 500]
        );
        // Files of a VM image's chunk count: batches end before PROBE_BYTES, and a file
        // larger on its own goes alone; nothing is lost or reordered.
        let mut big: Vec<pb::RestoreEntry> = (0..40).map(|_| file(30_000)).collect();
        big.insert(7, file(200_000));
        let sizes: Vec<usize> = big.iter().map(|e| e.encoded_len()).collect();
        let batches = probe_batches(big);
        let mut at = 0;
        for batch in &batches {
            let bytes: usize = sizes[at..at + batch.len()].iter().sum();
            assert!(batch.len() == 1 || bytes <= PROBE_BYTES, "{bytes}");
            at += batch.len();
        }
        assert_eq!(at, 41);
        assert!(
            batches
                .iter()
                .any(|b| b.len() == 1 && b[0].content.len() == 200_000)
        );
    }
}
