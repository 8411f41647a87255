//! Cluster mode (`--redis-url`): this node's part of a gateway whose
//! sessions, logs and jobs live in Redis (`crate::storage::redis`), so that
//! any node serves, streams and resumes any session (docs/cluster.md).
//!
//! The node keeps no session of its own. Each request loads a *view* of its
//! session (a [`Session`] refreshed from the shared state); every change
//! (token generations, the one stream, close, acks) is one atomic script in
//! Redis, whose answer the view then takes. Streams read the shared log and
//! are woken by Redis pub/sub. Jobs run on the node that accepted them,
//! under a lease in Redis (`jobs.rs`); when a node dies, any survivor's
//! reaper ends its jobs with one terminal event.
//!
//! Nothing here knows HTTP; `crate::state` routes to it when cluster mode
//! is on.

pub mod jobs;
pub mod log;
mod subscriptions;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::event_log::{FrameEncoder, LogEntry};
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::jobs::Job;
use crate::metrics::Metrics;
use crate::session::{Session, SharedFields, StreamId, Welcome};
use crate::storage::redis::RedisStorage;
use crate::storage::{
    Coordinator, EventStore, LogBounds, NodeNotice, ReadBudget, Retention, SessionRecord,
    SessionState, StorageError, StorageResult, StreamHolder,
};

/// The settings of cluster mode (`--redis-url`, `--node-id`,
/// `--job-lease-ttl-ms`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub redis_url: String,
    pub node_id: String,
    /// How long a job's lease lasts without renewal: a lost node's jobs end
    /// within about this plus one reaper period. Renewed every third of it.
    pub lease_ttl: Duration,
}

impl ClusterConfig {
    /// How often each node looks for jobs whose lease expired.
    pub fn reaper_interval(&self) -> Duration {
        (self.lease_ttl / 5).max(Duration::from_millis(100))
    }
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterStartError {
    #[error("cannot reach Redis at the configured --redis-url: {0}")]
    Unreachable(StorageError),
    #[error("{0}")]
    Persistence(String),
}

/// This node of the cluster.
pub struct ClusterNode {
    storage: RedisStorage,
    config: ClusterConfig,
    retention: Retention,
    encode: FrameEncoder,
    next_stream: AtomicU64,
    /// Sessions whose stream is attached on this node: notices from other
    /// nodes (a newer stream, a close) reach that stream through its view.
    attached: Mutex<HashMap<SessionId, Arc<Session>>>,
    /// Jobs running on this node, for cancels sent through other nodes.
    running: Mutex<HashMap<JobId, Arc<Job>>>,
    /// Subscribe requests this node sent to a job's node, by request id.
    pending: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<crate::storage::SubscribeAnswer>>>,
    next_request: AtomicU64,
    metrics: Arc<Metrics>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ClusterNode {
    /// Connects to Redis, checks that it keeps data (`check_persistence`:
    /// a refusal is an error, a risk a logged warning), and waits for the
    /// node's pub/sub connection.
    pub async fn start(
        config: ClusterConfig,
        retention: Retention,
        resume_window: Duration,
        encode: FrameEncoder,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<ClusterNode>, ClusterStartError> {
        let storage = RedisStorage::connect(&config.redis_url, &config.node_id)
            .await
            .map_err(ClusterStartError::Unreachable)?
            .with_session_window(resume_window);
        let report = crate::storage::redis::check_persistence(&mut storage.connection())
            .await
            .map_err(ClusterStartError::Unreachable)?
            .into_result()
            .map_err(ClusterStartError::Persistence)?;
        for warning in &report.warnings {
            tracing::warn!(warning = %warning, "Redis persistence");
        }
        tracing::info!(
            redis_version = %report.redis_version,
            node = %config.node_id,
            "cluster mode: connected to Redis"
        );
        if !storage.wait_pubsub(Duration::from_secs(5)).await {
            return Err(ClusterStartError::Unreachable(StorageError::Unavailable(
                "the pub/sub connection did not come up within 5 s".into(),
            )));
        }
        Ok(Arc::new(ClusterNode {
            storage,
            config,
            retention,
            encode,
            next_stream: AtomicU64::new(1),
            attached: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            metrics,
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Starts the node's background work: notices from other nodes and the
    /// reaper of jobs whose node was lost. Both stop with `shutdown`.
    pub fn spawn_background(self: &Arc<Self>, shutdown: CancellationToken) {
        let node = self.clone();
        let notices = self.storage.notices();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = node.follow_notices(notices) => {}
            }
        });
        let node = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = node.reap_forever() => {}
            }
        });
    }

    async fn follow_notices(&self, mut notices: broadcast::Receiver<NodeNotice>) {
        loop {
            let notice = match notices.recv().await {
                Ok(notice) => notice,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "missed cluster notices");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            match notice {
                NodeNotice::StreamReplaced { session_id, stream } => {
                    if let Some(session) = self.attached_view(&session_id) {
                        session.end_stream(stream, false);
                    }
                }
                NodeNotice::SessionClosed { session_id, stream } => {
                    if let Some(session) = self.attached_view(&session_id) {
                        session.end_stream(stream, true);
                    }
                }
                NodeNotice::SubscribeRequested {
                    request,
                    reply_node,
                    job_id,
                    subscriber,
                    history_after,
                } => self.answer_subscribe(request, reply_node, &job_id, subscriber, history_after),
                NodeNotice::SubscribeAnswered { request, answer } => {
                    if let Some(waiter) = locked(&self.pending).remove(&request) {
                        let _ = waiter.send(answer);
                    }
                }
                NodeNotice::Unsubscribed { job_id, subscriber } => {
                    let job = locked(&self.running).get(&job_id).cloned();
                    if let Some(output) = job.as_ref().and_then(|job| job.shared_output()) {
                        output.unsubscribe(subscriber);
                    }
                }
                NodeNotice::CancelRequested { job_id, .. } => {
                    let job = locked(&self.running).get(&job_id).cloned();
                    if let Some(job) = job {
                        let _ = job.cancel();
                        tracing::info!(job = %job_id, "job cancelled through another node");
                    }
                }
            }
        }
    }

    fn attached_view(&self, session_id: &SessionId) -> Option<Arc<Session>> {
        locked(&self.attached).get(session_id).cloned()
    }

    // ----- sessions -----

    /// Stores a new session and its empty log; the view issues the first
    /// generation, as the store did.
    pub async fn create_session(&self, session: &Session) -> StorageResult<Welcome> {
        // The log first: a session never exists without its log. A log
        // whose session was never stored expires with the resume window.
        self.storage.create_log(&session.id, self.retention).await?;
        let record = SessionRecord {
            session_id: session.id.clone(),
            principal: session.principal.as_str().to_owned(),
            features: session.features.clone(),
            created_at_ms: crate::storage::redis::now_ms(),
        };
        let generation = self.storage.create_session(&record).await?;
        Ok(session.issued_by_store(generation))
    }

    /// A view of the session, refreshed from the shared state; the view of
    /// a session streamed on this node is that stream's own.
    pub async fn load_session(&self, session_id: &SessionId) -> StorageResult<Arc<Session>> {
        let state = self.storage.session_state(session_id).await?;
        let view = self.attached_view(session_id);
        let fields = |local_stream: Option<StreamId>| SharedFields {
            issued_generation: state.issued,
            used_generation: state.used,
            closed: state.closed,
            acked_through: state.acked,
            attached_elsewhere: state.holder.as_ref().is_some_and(|holder| {
                holder.node != self.config.node_id || Some(holder.stream) != local_stream
            }),
        };
        if let Some(view) = view {
            let local = *view.watch_attached_stream().borrow();
            view.adopt_shared(fields(local));
            return Ok(view);
        }
        let view = Arc::new(session_view(&state));
        view.adopt_shared(fields(None));
        Ok(view)
    }

    /// `session.resume` without a stream (§6.3), in the shared state.
    pub async fn resume(
        &self,
        session: &Session,
        presented: Option<u64>,
    ) -> StorageResult<Welcome> {
        let generation = self.storage.resume(&session.id, presented).await?;
        Ok(session.issued_by_store(generation))
    }

    /// Makes a new stream of this node the session's one stream,
    /// cluster-wide: the previous one, wherever it is, is told to end.
    pub async fn attach(
        &self,
        session: &Arc<Session>,
        presented: Option<u64>,
    ) -> StorageResult<(StreamId, Welcome)> {
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let holder = StreamHolder {
            node: self.config.node_id.clone(),
            stream: stream_id,
        };
        let (generation, _previous) = self.storage.attach(&session.id, presented, &holder).await?;
        // The view streamed here from now on (another view of the same
        // session on this node ends its stream on the notice).
        let previous_view = locked(&self.attached).insert(session.id.clone(), session.clone());
        if let Some(previous_view) = previous_view.filter(|view| !Arc::ptr_eq(view, session)) {
            if let Some(stream) = *previous_view.watch_attached_stream().borrow() {
                previous_view.end_stream(stream, false);
            }
        }
        Ok((stream_id, session.attach_shared(stream_id, generation)))
    }

    /// Whether this node's stream `stream_id` is the session's holder in
    /// Redis (true when Redis cannot say).
    pub async fn holds_stream(&self, session_id: &SessionId, stream_id: StreamId) -> bool {
        match self.storage.session_state(session_id).await {
            Ok(state) => state.holder.is_some_and(|holder| {
                holder.node == self.config.node_id && holder.stream == stream_id
            }),
            Err(StorageError::Gone(_)) => false,
            Err(_) => true,
        }
    }

    /// A stream ended: the shared state forgets it (and the resume window
    /// starts) unless a newer stream took its place.
    pub fn detach(&self, session: &Arc<Session>, stream_id: StreamId) {
        session.detach_stream(stream_id);
        {
            let mut attached = locked(&self.attached);
            let ours = attached
                .get(&session.id)
                .is_some_and(|view| Arc::ptr_eq(view, session));
            if ours && !session.stream_attached() {
                attached.remove(&session.id);
            }
        }
        let storage = self.storage.clone();
        let session_id = session.id.clone();
        let holder = StreamHolder {
            node: self.config.node_id.clone(),
            stream: stream_id,
        };
        tokio::spawn(async move {
            if let Err(error) = storage.detach(&session_id, &holder).await {
                tracing::debug!(session = %session_id, %error, "detaching a stream in Redis failed");
            }
        });
    }

    /// Closes the session (§6.7) everywhere: its stream ends on whichever
    /// node holds it.
    pub async fn close(&self, session: &Session) -> StorageResult<()> {
        self.storage.close_session(&session.id).await?;
        session.close();
        Ok(())
    }

    /// Records an acknowledgement (§6.5) and frees the log through it.
    pub async fn acknowledge(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> StorageResult<(EventSeq, LogBounds)> {
        let acked = self.storage.acknowledge(session_id, up_to).await?;
        let bounds = self.storage.release_through(session_id, acked).await?;
        Ok((acked, bounds))
    }

    // ----- the log -----

    pub async fn bounds(&self, session_id: &SessionId) -> StorageResult<LogBounds> {
        self.storage.bounds(session_id).await
    }

    /// Wakes when the session's log may have grown on any node.
    pub async fn watch(&self, session_id: &SessionId) -> StorageResult<watch::Receiver<u64>> {
        self.storage.watch(session_id).await
    }

    /// Frames after `after` in one chunk; `None` when caught up.
    pub async fn read_chunk_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        budget: ReadBudget,
    ) -> StorageResult<Option<(EventSeq, Bytes)>> {
        let events = self.storage.read_after(session_id, after, budget).await?;
        log::chunk(self.encode, session_id, events).map_err(undecodable)
    }

    /// Entries after `after`, one per event (the WebSocket binding).
    pub async fn read_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        budget: ReadBudget,
    ) -> StorageResult<Vec<LogEntry>> {
        let events = self.storage.read_after(session_id, after, budget).await?;
        events
            .into_iter()
            .map(|event| log::entry(self.encode, session_id, event))
            .collect::<Result<_, _>>()
            .map_err(undecodable)
    }

    // ----- jobs: see jobs.rs -----

    fn storage(&self) -> &RedisStorage {
        &self.storage
    }
}

fn undecodable(error: log::Undecodable) -> StorageError {
    StorageError::Corrupt(format!("stored event {} cannot be decoded", error.seq))
}

/// A fresh view of a session from its shared state.
fn session_view(state: &SessionState) -> Session {
    let created_at = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(state.record.created_at_ms) * 1_000_000,
    )
    .map(crate::protocol::format_rfc3339)
    .unwrap_or_default();
    Session::new(
        state.record.session_id.clone(),
        Principal::new(&state.record.principal),
        state.record.features.clone(),
        created_at,
    )
}
