//! The daemon's register of connected agents: one stream per agent, and the jobs running
//! on each. The gRPC handler feeds what an agent sends into [`AgentHub::route`]; a job
//! runner opens a [`JobLink`] to send work and read the answers. When a stream ends, its
//! jobs' links see the end at once (their channel closes), and the runner decides
//! whether to wait for the agent to come back. A stopping daemon closes every stream
//! ([`AgentHub::close_all`]), so its connections drain at once and the agents dial the
//! next daemon.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tonic::Status;

use crate::catalog::{AgentId, ServerId};
use crate::rpc::pb;

/// What the daemon sends on a stream.
pub type Outbound = mpsc::Sender<Result<pb::DaemonMessage, Status>>;

struct Session {
    connection: u64,
    server: ServerId,
    outbound: Outbound,
    /// What the agent said it can do beyond what every agent does (its hello).
    features: Arc<[String]>,
    jobs: HashMap<String, (JobKind, mpsc::Sender<pb::AgentMessage>)>,
    /// The jobs of this stream that ended last, newest at the back: what the agent still
    /// sends for them (a progress report, chunks in flight when the daemon ended the
    /// job) is dropped instead of closing the stream.
    ended: VecDeque<String>,
}

/// How many ended jobs a stream remembers.
const ENDED_KEPT: usize = 16;

/// Connected agents.
#[derive(Default)]
pub struct AgentHub {
    sessions: Mutex<HashMap<AgentId, Session>>,
    next_connection: AtomicU64,
    changed: Notify,
    /// Set once by [`AgentHub::close_all`]: no stream is registered after it.
    closing: AtomicBool,
    closed: Notify,
}

impl std::fmt::Debug for AgentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHub")
            .field("connected", &self.lock().len())
            .finish()
    }
}

/// What a job is to the agent. An agent carries one backup and one restore at a time:
/// their messages share the stream without naming the job in each (an answer names its
/// query, a restore's chunk follows its entry). Checks are independent, any number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A backup walk.
    Backup,
    /// A restore into a directory.
    Restore,
    /// A restore plan's check.
    Check,
}

impl JobKind {
    /// Whether two jobs of this kind cannot share an agent.
    fn exclusive(self) -> bool {
        !matches!(self, Self::Check)
    }
}

/// Why a job could not be opened on an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The agent is not connected to this daemon.
    NotConnected,
    /// The agent carries another job of the same kind (named): this one waits its turn.
    Busy(String),
}

/// A job's two directions on an agent's stream.
pub struct JobLink {
    /// To the agent.
    pub outbound: Outbound,
    /// From the agent, for this job only; `None` from `recv` when the stream ended.
    pub inbound: mpsc::Receiver<pb::AgentMessage>,
    /// What the agent can do beyond what every agent does.
    pub features: Arc<[String]>,
}

/// The job a message belongs to, if it belongs to one.
fn job_of(message: &pb::AgentMessage) -> Option<&str> {
    use pb::agent_message::Body;
    Some(match message.body.as_ref()? {
        Body::Have(m) => &m.job_id,
        Body::Chunk(m) => &m.job_id,
        Body::Entries(m) => &m.job_id,
        Body::Progress(m) => &m.job_id,
        Body::WalkDone(m) => &m.job_id,
        Body::RestoreResults(m) => &m.job_id,
        Body::RestoreDone(m) => &m.job_id,
        Body::Failed(m) => &m.job_id,
        Body::CheckDone(m) => &m.job_id,
        Body::ProbeAnswer(m) => &m.job_id,
        Body::Hello(_) => return None,
    })
}

impl AgentHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers an agent's new stream (replacing an older one of the same agent) and
    /// returns its connection number; `None` once the daemon is stopping.
    pub fn register(&self, agent: AgentId, server: ServerId, outbound: Outbound) -> Option<u64> {
        self.register_with(agent, server, outbound, Vec::new())
    }

    /// As [`AgentHub::register`], for an agent that can do `features` beyond what every
    /// agent does.
    pub fn register_with(
        &self,
        agent: AgentId,
        server: ServerId,
        outbound: Outbound,
        features: Vec<String>,
    ) -> Option<u64> {
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed) + 1;
        let mut sessions = self.lock();
        // Checked under the lock `close_all` empties the register under.
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        sessions.insert(
            agent,
            Session {
                connection,
                server,
                outbound,
                features: features.into(),
                jobs: HashMap::new(),
                ended: VecDeque::new(),
            },
        );
        metrics::gauge!("cadang_agents_connected").set(sessions.len() as f64);
        drop(sessions);
        self.changed.notify_waiters();
        Some(connection)
    }

    /// Closes every agent's stream with `UNAVAILABLE` and registers no more: the daemon is
    /// stopping. Their jobs' links close (a running job stops at a safe point and resumes
    /// on the next daemon) and each stream's reader ends ([`AgentHub::closed`]), so the
    /// connections drain instead of holding the shutdown for its whole grace period.
    pub fn close_all(&self, reason: &str) {
        let sessions = {
            let mut sessions = self.lock();
            self.closing.store(true, Ordering::SeqCst);
            std::mem::take(&mut *sessions)
        };
        for session in sessions.into_values() {
            let _ = session
                .outbound
                .try_send(Err(Status::unavailable(reason.to_owned())));
        }
        metrics::gauge!("cadang_agents_connected").set(0.0);
        self.closed.notify_waiters();
        self.changed.notify_waiters();
    }

    /// Completes once [`AgentHub::close_all`] was called.
    pub async fn closed(&self) {
        loop {
            // Created before the check: a `close_all` in between still wakes it.
            let notified = self.closed.notified();
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Forgets a stream that ended (if it is still the agent's current one); its jobs'
    /// links close.
    pub fn unregister(&self, agent: AgentId, connection: u64) {
        let mut sessions = self.lock();
        if sessions
            .get(&agent)
            .is_some_and(|session| session.connection == connection)
        {
            sessions.remove(&agent);
        }
        metrics::gauge!("cadang_agents_connected").set(sessions.len() as f64);
        drop(sessions);
        self.changed.notify_waiters();
    }

    /// Closes an agent's stream at once (it was revoked).
    pub fn kick(&self, agent: AgentId, reason: &str) {
        if let Some(session) = self.lock().remove(&agent) {
            let _ = session
                .outbound
                .try_send(Err(Status::unauthenticated(reason.to_owned())));
        }
        self.changed.notify_waiters();
    }

    /// Hands a message from an agent to the job it names.
    ///
    /// A message for one of the stream's jobs that ended lately is dropped.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` for a message naming a job this stream was never given (or
    /// a stream that is no longer the agent's current one): an agent can only ever speak
    /// for the jobs the daemon gave it.
    pub async fn route(
        &self,
        agent: AgentId,
        connection: u64,
        message: pb::AgentMessage,
    ) -> Result<(), Status> {
        let Some(job) = job_of(&message) else {
            return Ok(());
        };
        let route = {
            let sessions = self.lock();
            sessions
                .get(&agent)
                .filter(|session| session.connection == connection)
                .and_then(|session| match session.jobs.get(job) {
                    Some((_, sender)) => Some(Some(sender.clone())),
                    None => session
                        .ended
                        .iter()
                        .any(|ended| ended == job)
                        .then_some(None),
                })
        };
        match route {
            Some(Some(sender)) => {
                // The job may end while this waits; its receiver is then gone.
                let _ = sender.send(message).await;
                Ok(())
            }
            Some(None) => {
                tracing::debug!(agent = %agent, job, "dropped a late message of an ended job");
                Ok(())
            }
            None => Err(Status::failed_precondition(format!(
                "job `{job}` was not given to this agent"
            ))),
        }
    }

    /// Whether the agent of `server` is connected here.
    pub fn connected_server(&self, server: ServerId) -> bool {
        self.lock().values().any(|session| session.server == server)
    }

    /// Whether `agent` is connected here.
    pub fn connected_agent(&self, agent: AgentId) -> bool {
        self.lock().contains_key(&agent)
    }

    /// Opens a job on the stream of `server`'s agent, if it is connected here and carries
    /// no other job of the same kind (see [`JobKind`]). The same job opened again (a
    /// resumed run) takes the place of its earlier link.
    ///
    /// # Errors
    /// [`Unavailable`].
    pub fn open_job(
        &self,
        server: ServerId,
        job: &str,
        kind: JobKind,
    ) -> Result<JobLink, Unavailable> {
        let mut sessions = self.lock();
        let session = sessions
            .values_mut()
            .find(|session| session.server == server)
            .ok_or(Unavailable::NotConnected)?;
        if kind.exclusive()
            && let Some((other, _)) = session
                .jobs
                .iter()
                .find(|(other, (other_kind, _))| *other_kind == kind && other.as_str() != job)
        {
            return Err(Unavailable::Busy(other.clone()));
        }
        let (sender, inbound) = mpsc::channel(256);
        session.jobs.insert(job.to_owned(), (kind, sender));
        Ok(JobLink {
            outbound: session.outbound.clone(),
            inbound,
            features: Arc::clone(&session.features),
        })
    }

    /// Waits until an agent comes or goes or a job ends, at most `timeout`.
    pub async fn changed_within(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }

    /// Closes a job's inbound side; the stream remembers the job as ended.
    pub fn close_job(&self, server: ServerId, job: &str) {
        for session in self.lock().values_mut() {
            if session.server == server && session.jobs.remove(job).is_some() {
                if session.ended.len() == ENDED_KEPT {
                    session.ended.pop_front();
                }
                session.ended.push_back(job.to_owned());
            }
        }
        // A job of the same kind may be waiting for this one.
        self.changed.notify_waiters();
    }

    /// Waits until `server`'s agent is connected here, at most `timeout`.
    pub async fn wait_for(&self, server: ServerId, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if self.connected_server(server) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.connected_server(server);
            }
        }
    }
}

/// A shared hub.
pub type Hub = Arc<AgentHub>;

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(job: &str) -> pb::AgentMessage {
        pb::AgentMessage {
            body: Some(pb::agent_message::Body::Progress(pb::JobProgress {
                job_id: job.to_owned(),
                ..Default::default()
            })),
        }
    }

    const AGENT: AgentId = AgentId(7);
    const SERVER: ServerId = ServerId(3);

    #[tokio::test]
    async fn late_messages_of_ended_jobs_are_dropped_and_strangers_refused() {
        let hub = AgentHub::default();
        let (outbound, _to_agent) = mpsc::channel(4);
        let connection = hub.register(AGENT, SERVER, outbound).unwrap();
        let mut link = hub.open_job(SERVER, "run-1", JobKind::Backup).unwrap();
        hub.route(AGENT, connection, progress("run-1"))
            .await
            .unwrap();
        assert!(
            link.inbound.recv().await.is_some(),
            "a running job hears its agent"
        );

        hub.close_job(SERVER, "run-1");
        assert!(
            link.inbound.recv().await.is_none(),
            "the ended job's link closed"
        );
        hub.route(AGENT, connection, progress("run-1"))
            .await
            .expect("a late message of an ended job is dropped, the stream stays");

        let refusal = hub
            .route(AGENT, connection, progress("run-of-another-server"))
            .await
            .unwrap_err();
        assert_eq!(refusal.code(), tonic::Code::FailedPrecondition);
        assert!(refusal.message().contains("was not given to this agent"));
        // A stream the agent replaced speaks for nothing, not even its ended jobs.
        let (newer, _to_agent_again) = mpsc::channel(4);
        let replaced = hub.register(AGENT, SERVER, newer).unwrap();
        assert_ne!(replaced, connection);
        assert!(
            hub.route(AGENT, connection, progress("run-1"))
                .await
                .is_err()
        );

        // Only the last ENDED_KEPT jobs are remembered.
        for n in 0..=ENDED_KEPT {
            hub.open_job(SERVER, &format!("old-{n}"), JobKind::Backup)
                .unwrap();
            hub.close_job(SERVER, &format!("old-{n}"));
        }
        assert!(hub.route(AGENT, replaced, progress("old-0")).await.is_err());
        let last = format!("old-{ENDED_KEPT}");
        assert!(hub.route(AGENT, replaced, progress(&last)).await.is_ok());
        // Closing a job that is not open remembers nothing.
        hub.close_job(SERVER, "never-opened");
        assert!(
            hub.route(AGENT, replaced, progress("never-opened"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_agent_carries_one_backup_and_one_restore_at_a_time_and_any_checks() {
        let hub = Arc::new(AgentHub::default());
        let (outbound, _to_agent) = mpsc::channel(4);
        let connection = hub.register(AGENT, SERVER, outbound).unwrap();
        let _backup = hub.open_job(SERVER, "run:1", JobKind::Backup).unwrap();
        assert_eq!(
            hub.open_job(SERVER, "run:2", JobKind::Backup).err(),
            Some(Unavailable::Busy("run:1".into()))
        );
        // A backup and a restore, and checks, share the agent.
        let _restore = hub.open_job(SERVER, "restore:1", JobKind::Restore).unwrap();
        assert_eq!(
            hub.open_job(SERVER, "restore:2", JobKind::Restore).err(),
            Some(Unavailable::Busy("restore:1".into()))
        );
        let _check_a = hub.open_job(SERVER, "check:1", JobKind::Check).unwrap();
        let _check_b = hub.open_job(SERVER, "check:2", JobKind::Check).unwrap();
        // The same run resumed opens again.
        let mut resumed = hub.open_job(SERVER, "run:1", JobKind::Backup).unwrap();
        hub.route(AGENT, connection, progress("run:1"))
            .await
            .unwrap();
        assert!(
            resumed.inbound.recv().await.is_some(),
            "the new link hears the job"
        );
        // The waiting backup is woken when the running one ends.
        let waiter = tokio::spawn({
            let hub = hub.clone();
            async move {
                loop {
                    match hub.open_job(SERVER, "run:2", JobKind::Backup) {
                        Ok(_) => return,
                        Err(Unavailable::Busy(_)) => {
                            hub.changed_within(Duration::from_secs(30)).await
                        }
                        Err(Unavailable::NotConnected) => panic!("the agent is connected"),
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        hub.close_job(SERVER, "run:1");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the end of the running backup")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_stopping_hub_closes_every_stream_and_takes_no_new_one() {
        let hub = Arc::new(AgentHub::default());
        let (outbound, mut to_agent) = mpsc::channel(4);
        hub.register(AGENT, SERVER, outbound).unwrap();
        let mut link = hub.open_job(SERVER, "run-1", JobKind::Backup).unwrap();
        let waiter = tokio::spawn({
            let hub = hub.clone();
            async move { hub.closed().await }
        });

        hub.close_all("the daemon is stopping");

        let status = to_agent.recv().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "the daemon is stopping");
        assert!(link.inbound.recv().await.is_none(), "the job's link closed");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("every stream reader is told")
            .unwrap();
        hub.closed().await;
        assert!(!hub.connected_server(SERVER));
        let (again, _) = mpsc::channel(4);
        assert!(hub.register(AGENT, SERVER, again).is_none());
        assert_eq!(
            hub.open_job(SERVER, "run-2", JobKind::Backup).err(),
            Some(Unavailable::NotConnected)
        );
    }
}
