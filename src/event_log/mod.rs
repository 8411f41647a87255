//! The per-session event log: the single source of truth for what a session's
//! stream carries (§8.3).
//!
//! Jobs append; SSE readers only read. Each session has its own sequence that
//! starts at 1 and grows by exactly one per appended event, so a reader that
//! holds a cursor can never see a gap or a duplicate. Every entry keeps its
//! encoded wire frame, so replay writes stored bytes and never re-serializes
//! JSON.
//!
//! The trait is synchronous on purpose: appends and reads are short critical
//! sections, never held across an `.await`. Readers learn about new entries
//! through a [`NewestWatch`] carrying the newest sequence number.

pub mod budget;
mod crew;
mod entries;
pub mod memory;
pub mod signal;
pub mod sqlite;
mod tap;

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;

use crate::ids::{EventSeq, JobId, MessageId, Principal, SessionId};

pub use memory::{LogSink, MemoryEventLog, SessionReader};
pub use signal::{NewestWatch, StreamKick, WatchClosed, Woken};
pub use tap::{LiveTap, Offers};

/// An event before the log has given it a sequence number.
#[derive(Clone, Debug)]
pub struct EventDraft {
    /// Envelope `type`: `job.event`, `job.result` or `job.error`.
    pub message_type: &'static str,
    pub job_id: JobId,
    pub trace_id: Option<String>,
    pub payload: Value,
    /// The envelope's `id`, when it was fixed before the event was stored
    /// (cluster mode: a stored event reads back with the same id on every
    /// node and every replay). `None`: a fresh id when the frame is encoded.
    pub message_id: Option<MessageId>,
    /// The part of the envelope JSON that is the same in every session,
    /// serialized on first use. A job's event goes to its own session and to
    /// every subscribed one (§7.6), each with its own `session_id` and
    /// `event_seq`; the payload is serialized once, not once per session.
    shared_envelope: OnceLock<Bytes>,
}

impl EventDraft {
    pub fn new(
        message_type: &'static str,
        job_id: JobId,
        trace_id: Option<String>,
        payload: Value,
    ) -> Self {
        EventDraft {
            message_type,
            job_id,
            trace_id,
            payload,
            message_id: None,
            shared_envelope: OnceLock::new(),
        }
    }

    /// A draft whose shared envelope was serialized already (an event read
    /// back from the cluster's shared log, `crate::cluster`). Its payload
    /// is not kept: only the encoder's view (`shared_envelope`) is.
    pub fn from_shared_envelope(
        message_type: &'static str,
        job_id: JobId,
        message_id: MessageId,
        shared: Bytes,
    ) -> Self {
        let mut draft = EventDraft::new(message_type, job_id, None, Value::Null);
        draft.message_id = Some(message_id);
        let _ = draft.shared_envelope.set(shared);
        draft
    }

    /// The session-independent end of this event's envelope
    /// ([`crate::protocol::job_envelope_tail`]), serialized once.
    pub fn shared_envelope(&self) -> &Bytes {
        self.shared_envelope.get_or_init(|| {
            Bytes::from(crate::protocol::job_envelope_tail(
                self.trace_id.as_deref(),
                &self.job_id,
                &self.payload,
            ))
        })
    }
}

/// The bytes a reader writes for one event, and where inside them the
/// envelope JSON lies.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedFrame {
    pub frame: Bytes,
    pub envelope: std::ops::Range<usize>,
}

/// Turns a sequenced draft into the bytes readers will write. The log calls it
/// once per append, under the session's lock, so sequence and frame agree.
pub type FrameEncoder =
    fn(session_id: &SessionId, seq: EventSeq, draft: &EventDraft) -> EncodedFrame;

/// Writes the start of a job event's frame, for `session_id` at `seq` with
/// message id `message_id`: everything before the draft's shared envelope
/// ([`EventDraft::shared_envelope`]), which follows, then `\n\n`. Returns
/// where the envelope JSON starts. With it, [`MemoryEventLog`] keeps a
/// job's copies in its subscribers' logs as references to the one shared
/// envelope ([`MemoryEventLog::defer_fan_out`]). Contract: for one session,
/// the head's length and the envelope's start depend only on the number of
/// digits of `seq` and on `message_type` (message ids are ULIDs, all of
/// one length), so the log measures a head once per shape.
pub type HeadEncoder = fn(
    frame: &mut Vec<u8>,
    session_id: &SessionId,
    seq: EventSeq,
    message_type: &'static str,
    message_id: &str,
) -> usize;

/// One stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub seq: EventSeq,
    pub job_id: JobId,
    pub frame: Bytes,
    /// The span of `frame` holding the envelope JSON (§5), so an event can
    /// be re-stamped into another session's sequence (§7.6) without knowing
    /// the wire framing.
    pub envelope: std::ops::Range<usize>,
}

impl LogEntry {
    pub fn envelope_json(&self) -> &[u8] {
        self.frame.get(self.envelope.clone()).unwrap_or_default()
    }

    /// Rebuilds the draft this entry was appended from.
    pub fn to_draft(&self) -> Option<EventDraft> {
        let envelope: Value = serde_json::from_slice(self.envelope_json()).ok()?;
        let message_type = match envelope.get("type")?.as_str()? {
            "job.event" => "job.event",
            "job.result" => "job.result",
            "job.error" => "job.error",
            _ => return None,
        };
        let trace_id = envelope
            .get("trace_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let payload = envelope.get("payload")?.clone();
        Some(EventDraft::new(
            message_type,
            self.job_id.clone(),
            trace_id,
            payload,
        ))
    }
}

/// The range a cursor may take: `floor <= cursor <= newest`. Events
/// `floor + 1 ..= newest` are retained; anything at or below `floor` was
/// evicted or acknowledged away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    pub floor: EventSeq,
    pub newest: EventSeq,
}

/// Per-session retention limits. When either is exceeded the oldest events
/// are evicted and the floor rises; memory stays bounded whatever clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

/// A cap on one read, so a replay is written in large chunks of bounded size.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimit {
    pub max_entries: usize,
    pub max_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventLogError {
    /// No log for this session (never created, or removed).
    UnknownSession,
    /// The session's log already exists.
    SessionExists,
    /// The cursor is below the floor: those events are gone.
    CursorEvicted { floor: EventSeq },
    /// The cursor is beyond the newest event.
    CursorAhead { newest: EventSeq },
}

impl std::fmt::Display for EventLogError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventLogError::UnknownSession => write!(formatter, "no event log for this session"),
            EventLogError::SessionExists => write!(formatter, "event log already exists"),
            EventLogError::CursorEvicted { floor } => {
                write!(formatter, "events up to {floor} are no longer retained")
            }
            EventLogError::CursorAhead { newest } => {
                write!(formatter, "cursor is beyond the newest event ({newest})")
            }
        }
    }
}

/// A backend for per-session event logs. `MemoryEventLog` is the one
/// implementation: with `--data-dir` it stays the log that streams read, and
/// the durable store (`sqlite::SqliteStore`) is attached to it as its
/// `LogSink` rather than implementing this trait. The contract is checked
/// by the shared conformance suite in `tests/it/event_log.rs`.
pub trait EventLog: Send + Sync + 'static {
    /// Creates an empty log for a new session.
    fn create(&self, session_id: &SessionId) -> Result<(), EventLogError>;

    /// Creates an empty log for a session of `owner`, charged to that
    /// principal's retention budget where the backend keeps one
    /// ([`budget::RetentionBudget`]); otherwise the same as `create`.
    fn create_owned(&self, session_id: &SessionId, owner: &Principal) -> Result<(), EventLogError> {
        let _ = owner;
        self.create(session_id)
    }

    /// Assigns the next sequence number, encodes the frame and stores it.
    /// May evict the oldest entries to respect the retention limits.
    fn append(&self, session_id: &SessionId, draft: &EventDraft)
        -> Result<EventSeq, EventLogError>;

    /// Appends the same draft to several sessions' logs, in order, each as
    /// [`EventLog::append`] would (a job's subscribers, §7.6). Backends may
    /// override it to find the logs in one pass.
    fn append_each(
        &self,
        session_ids: &[&SessionId],
        draft: &EventDraft,
    ) -> Vec<Result<EventSeq, EventLogError>> {
        session_ids
            .iter()
            .map(|session_id| self.append(session_id, draft))
            .collect()
    }

    /// [`EventLog::append`], leaving the writes to the session's tap
    /// ([`LiveTap`], if one is attached) in `offers`, for the caller to
    /// [`Offers::deliver`] once it holds no lock of its own. Backends
    /// without taps just append.
    fn append_offering(
        &self,
        session_id: &SessionId,
        draft: &EventDraft,
        offers: &mut Offers,
    ) -> Result<EventSeq, EventLogError> {
        let _ = offers;
        self.append(session_id, draft)
    }

    /// [`EventLog::append_each`], leaving the writes to taps in `offers`
    /// ([`EventLog::append_offering`]).
    fn append_each_offering(
        &self,
        session_ids: &[&SessionId],
        draft: &EventDraft,
        offers: &mut Offers,
    ) -> Vec<Result<EventSeq, EventLogError>> {
        let _ = offers;
        self.append_each(session_ids, draft)
    }

    /// Entries with `seq > after`, oldest first, within `limit`. An empty
    /// result means the reader is caught up.
    fn read_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Vec<LogEntry>, EventLogError>;

    /// The frames of the entries after `after`, within `limit`, joined into
    /// one chunk, with the last sequence number in it; `None` when caught
    /// up. This is what streams write. Backends may override it to skip the
    /// per-entry clones of [`EventLog::read_after`].
    fn read_chunk_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Option<(EventSeq, Bytes)>, EventLogError> {
        let batch = self.read_after(session_id, after, limit)?;
        let Some(last) = batch.last().map(|entry| entry.seq) else {
            return Ok(None);
        };
        if batch.len() == 1 {
            return Ok(batch.into_iter().next().map(|entry| (last, entry.frame)));
        }
        let mut chunk = bytes::BytesMut::with_capacity(batch.iter().map(|e| e.frame.len()).sum());
        for entry in &batch {
            chunk.extend_from_slice(&entry.frame);
        }
        Ok(Some((last, chunk.freeze())))
    }

    /// The session's log, found once, for a reader that reads it many times
    /// (a stream). It does not keep the log alive: after `remove` (or for a
    /// session with no log) its reads fail with `UnknownSession`.
    fn session_reader(&self, session_id: &SessionId) -> SessionReader;

    fn bounds(&self, session_id: &SessionId) -> Result<LogBounds, EventLogError>;

    /// Frees every entry with `seq <= up_to` (acknowledged, §6.5) and raises
    /// the floor. Going backwards is a no-op.
    fn release_through(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> Result<LogBounds, EventLogError>;

    /// A receiver whose value is the newest sequence number. Closed once the
    /// session's log is removed.
    fn watch_newest(&self, session_id: &SessionId) -> Result<NewestWatch, EventLogError>;

    /// Drops the session's log; readers see their watch close.
    fn remove(&self, session_id: &SessionId);
}
