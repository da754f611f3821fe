//! The daemon's register of connected agents: one stream per agent, and the jobs running
//! on each. The gRPC handler feeds what an agent sends into [`AgentHub::route`]; a job
//! runner opens a [`JobLink`] to send work and read the answers. When a stream ends, its
//! jobs' links see the end at once (their channel closes), and the runner decides
//! whether to wait for the agent to come back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    jobs: HashMap<String, mpsc::Sender<pb::AgentMessage>>,
}

/// Connected agents.
#[derive(Default)]
pub struct AgentHub {
    sessions: Mutex<HashMap<AgentId, Session>>,
    next_connection: AtomicU64,
    changed: Notify,
}

impl std::fmt::Debug for AgentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHub")
            .field("connected", &self.lock().len())
            .finish()
    }
}

/// A job's two directions on an agent's stream.
pub struct JobLink {
    /// To the agent.
    pub outbound: Outbound,
    /// From the agent, for this job only; `None` from `recv` when the stream ended.
    pub inbound: mpsc::Receiver<pb::AgentMessage>,
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
    /// returns its connection number.
    pub fn register(&self, agent: AgentId, server: ServerId, outbound: Outbound) -> u64 {
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(
            agent,
            Session {
                connection,
                server,
                outbound,
                jobs: HashMap::new(),
            },
        );
        metrics::gauge!("cadang_agents_connected").set(self.lock().len() as f64);
        self.changed.notify_waiters();
        connection
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
    /// # Errors
    /// `FAILED_PRECONDITION` for a message naming a job this stream does not carry: an
    /// agent can only ever speak for the jobs the daemon gave it.
    pub async fn route(
        &self,
        agent: AgentId,
        connection: u64,
        message: pb::AgentMessage,
    ) -> Result<(), Status> {
        let Some(job) = job_of(&message) else {
            return Ok(());
        };
        let sender = {
            let sessions = self.lock();
            sessions
                .get(&agent)
                .filter(|session| session.connection == connection)
                .and_then(|session| session.jobs.get(job).cloned())
        };
        match sender {
            // A job that ended meanwhile drops late messages (progress, answers).
            Some(sender) => {
                let _ = sender.send(message).await;
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

    /// Opens a job on the stream of `server`'s agent, if it is connected here.
    pub fn open_job(&self, server: ServerId, job: &str) -> Option<JobLink> {
        let mut sessions = self.lock();
        let session = sessions
            .values_mut()
            .find(|session| session.server == server)?;
        let (sender, inbound) = mpsc::channel(256);
        session.jobs.insert(job.to_owned(), sender);
        Some(JobLink {
            outbound: session.outbound.clone(),
            inbound,
        })
    }

    /// Closes a job's inbound side.
    pub fn close_job(&self, server: ServerId, job: &str) {
        for session in self.lock().values_mut() {
            if session.server == server {
                session.jobs.remove(job);
            }
        }
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
