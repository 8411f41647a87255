//! Session and log operations, on this process's state or on the cluster's.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::AppState;
use crate::cluster::ClusterNode;
use crate::event_log::{EventLogError, LogBounds, LogEntry, NewestWatch, ReadLimit, SessionReader};
use crate::ids::{EventSeq, Principal, SessionId};
use crate::session::{Session, SessionError, StreamId, Welcome};
use crate::storage::{GoneReason, ReadBudget, StorageError};

/// Why a session or log operation failed, whichever backend ran it.
#[derive(Debug)]
pub enum OpError {
    Session(SessionError),
    Log(EventLogError),
    Storage(StorageError),
}

impl From<SessionError> for OpError {
    fn from(error: SessionError) -> Self {
        OpError::Session(error)
    }
}

impl From<EventLogError> for OpError {
    fn from(error: EventLogError) -> Self {
        OpError::Log(error)
    }
}

impl From<crate::store::WriterStopped> for OpError {
    fn from(_: crate::store::WriterStopped) -> Self {
        OpError::Storage(StorageError::WriterStopped)
    }
}

impl From<StorageError> for OpError {
    fn from(error: StorageError) -> Self {
        OpError::Storage(error)
    }
}

fn bounds_of(bounds: crate::storage::LogBounds) -> LogBounds {
    LogBounds {
        floor: bounds.floor,
        newest: bounds.newest,
    }
}

fn budget(limit: ReadLimit) -> ReadBudget {
    ReadBudget {
        max_events: limit.max_entries,
        max_bytes: limit.max_bytes,
    }
}

/// What a stream reads: its session's log in this process (found once, so
/// reads skip the lookup by id; the `session_id` arguments are then that
/// session's), or the cluster's log.
#[derive(Clone)]
pub enum LogReader {
    Local(SessionReader),
    Shared(Arc<ClusterNode>),
}

impl LogReader {
    pub async fn bounds(&self, session_id: &SessionId) -> Result<LogBounds, OpError> {
        match self {
            LogReader::Local(reader) => Ok(reader.bounds()?),
            LogReader::Shared(node) => Ok(bounds_of(node.bounds(session_id).await?)),
        }
    }

    /// A receiver that changes when the log may have grown; `None` when the
    /// log is gone.
    pub async fn watch(&self, session_id: &SessionId) -> Option<LogWatch> {
        match self {
            LogReader::Local(reader) => reader.watch_newest().ok().map(LogWatch::Local),
            LogReader::Shared(node) => node.watch(session_id).await.ok().map(LogWatch::Shared),
        }
    }

    /// Whether a reader at `cursor` whose watch last showed `seen` has
    /// nothing to read, without reading. In this process the watch carries
    /// the newest readable sequence number, so equal means caught up; the
    /// cluster's watch only signals that the log may have grown.
    pub fn caught_up(&self, seen: EventSeq, cursor: EventSeq) -> bool {
        match self {
            LogReader::Local(_) => seen == cursor,
            LogReader::Shared(_) => false,
        }
    }

    /// The frames after `after` in one chunk; `None` when caught up.
    pub async fn read_chunk_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Option<(EventSeq, Bytes)>, OpError> {
        match self {
            LogReader::Local(reader) => Ok(reader.read_chunk_after(after, limit)?),
            LogReader::Shared(node) => Ok(node
                .read_chunk_after(session_id, after, budget(limit))
                .await?),
        }
    }

    /// The entries after `after`, one per event.
    pub async fn read_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Vec<LogEntry>, OpError> {
        match self {
            LogReader::Local(reader) => Ok(reader.read_after(after, limit)?),
            LogReader::Shared(node) => {
                Ok(node.read_after(session_id, after, budget(limit)).await?)
            }
        }
    }

    /// Whether stream `stream_id` is still the session's one stream. In
    /// cluster mode this asks Redis: the backstop for a lost notice from the
    /// node that attached a newer stream. An unreachable store answers yes
    /// (the stream's next read will tell).
    pub async fn still_attached(&self, session: &Session, stream_id: StreamId) -> bool {
        match self {
            LogReader::Local(_) => true,
            LogReader::Shared(node) => node.holds_stream(&session.id, stream_id).await,
        }
    }

    /// A stream ended (called from its `Drop`: never waits).
    pub fn detach(&self, session: &Arc<Session>, stream_id: StreamId) {
        match self {
            LogReader::Local(_) => session.detach_stream(stream_id),
            LogReader::Shared(node) => node.detach(session, stream_id),
        }
    }
}

/// What a stream waits on for its log to grow: in this process the newest
/// readable sequence number; in the cluster a count of wake-ups.
pub enum LogWatch {
    Local(NewestWatch),
    Shared(watch::Receiver<u64>),
}

/// The log is gone: its watch closed.
#[derive(Debug)]
pub struct LogWatchClosed;

impl LogWatch {
    /// The current value, marked as seen.
    pub fn mark_seen(&mut self) -> u64 {
        match self {
            LogWatch::Local(watch) => watch.borrow_and_update(),
            LogWatch::Shared(watch) => *watch.borrow_and_update(),
        }
    }

    /// Waits for a value not yet seen. Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), LogWatchClosed> {
        match self {
            LogWatch::Local(watch) => watch.changed().await.map_err(|_| LogWatchClosed),
            LogWatch::Shared(watch) => watch.changed().await.map_err(|_| LogWatchClosed),
        }
    }
}

impl AppState {
    /// The reader of `session_id`'s log.
    pub fn log_reader(&self, session_id: &SessionId) -> LogReader {
        match &self.cluster {
            Some(node) => LogReader::Shared(node.clone()),
            None => LogReader::Local(self.log.session_reader(session_id)),
        }
    }

    /// Creates a session and its log, and issues its first generation.
    pub async fn create_session(
        &self,
        principal: Principal,
        features: Vec<String>,
    ) -> Result<(Arc<Session>, Welcome), OpError> {
        let session = Arc::new(Session::new(
            SessionId::generate(),
            principal,
            features,
            crate::protocol::now_rfc3339(),
        ));
        if let Some(node) = &self.cluster {
            let welcome = node.create_session(&session).await?;
            return Ok((session, welcome));
        }
        self.log.create_owned(&session.id, &session.principal)?;
        self.sessions.insert(session.clone());
        let welcome = session.welcome_new();
        self.persist_session(&session).await?;
        Ok((session, welcome))
    }

    /// The session, or `None` if it does not exist (any more).
    pub async fn find_session(
        &self,
        session_id: &SessionId,
    ) -> Result<Option<Arc<Session>>, OpError> {
        let Some(node) = &self.cluster else {
            return Ok(self.sessions.get(session_id));
        };
        match node.load_session(session_id).await {
            Ok(session) => Ok(Some(session)),
            // An id that could never name a session (not a key part) is
            // unknown, as on one node.
            Err(StorageError::Gone(GoneReason::SessionMissing) | StorageError::InvalidId) => {
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    pub async fn log_bounds(&self, session_id: &SessionId) -> Result<LogBounds, OpError> {
        self.log_reader(session_id).bounds(session_id).await
    }

    /// `session.resume` without a stream (§6.3).
    pub async fn resume_session(
        &self,
        session: &Session,
        presented: Option<u64>,
    ) -> Result<Welcome, OpError> {
        if let Some(node) = &self.cluster {
            return Ok(node.resume(session, presented).await?);
        }
        let welcome = session.resume(presented, self.config.resume_window)?;
        self.persist_session(session).await?;
        Ok(welcome)
    }

    /// Makes a new stream the session's only one (§6.3).
    pub async fn attach_stream(
        &self,
        session: &Arc<Session>,
        presented: Option<u64>,
    ) -> Result<(StreamId, Welcome), OpError> {
        if let Some(node) = &self.cluster {
            return Ok(node.attach(session, presented).await?);
        }
        let attached = session.attach_stream(presented, self.config.resume_window)?;
        self.persist_session(session).await?;
        Ok(attached)
    }

    /// `session.close` (§6.7).
    pub async fn close_session(&self, session: &Session) -> Result<(), OpError> {
        if let Some(node) = &self.cluster {
            return Ok(node.close(session).await?);
        }
        session.close();
        self.persist_session(session).await?;
        Ok(())
    }

    /// `session.ack` (§6.5): the new high-water mark and the log's bounds
    /// once it is freed through it. `newest` is the log's newest event.
    pub async fn acknowledge(
        &self,
        session: &Session,
        last_processed_seq: EventSeq,
        newest: EventSeq,
    ) -> Result<(EventSeq, LogBounds), OpError> {
        if let Some(node) = &self.cluster {
            let (acked, bounds) = node.acknowledge(&session.id, last_processed_seq).await?;
            return Ok((acked, bounds_of(bounds)));
        }
        let acked = session.acknowledge(
            last_processed_seq,
            self.config.back_pressure_lag_events,
            newest,
        );
        let _ = self.store.save_session(&session.id, &session.record());
        let bounds = self.log.release_through(&session.id, acked)?;
        Ok((acked, bounds))
    }
}
