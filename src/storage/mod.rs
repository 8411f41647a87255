//! The storage seam (issue 12): an async event log and a coordinator for
//! sessions and jobs, with in-memory, Redis and SQLite backends behind the
//! same traits. `tests/it/storage_conformance/` runs one suite against all
//! three.
//!
//! Cluster mode (`crate::cluster`) serves from the Redis backend; the
//! single-node modes still serve from `event_log`, `session` and `jobs`
//! (docs/cluster.md, "What comes next"). Nothing here knows HTTP or the wire
//! framing: an event is an opaque `body` the node built, and the log only
//! gives it a sequence number (§8.3).
//!
//! The traits return `impl Future + Send` rather than boxed futures: the
//! memory backend answers with ready futures and no allocation, and the
//! gateway picks its backend once at start-up, so static dispatch (a generic
//! or an enum over the backends) is enough.

pub mod memory;
pub mod records;
pub mod redis;
pub mod sqlite;

use std::future::Future;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use crate::ids::{EventSeq, JobId, Principal, SessionId};

pub use records::{
    GoneReason, IdempotencyClaim, IdempotencyRecord, JobRecord, JobStatus, Lease, NodeNotice,
    ReapedJob, SessionRecord, SessionState, StreamHolder, SubscribeAnswer,
};

/// Why a storage operation failed. Each variant is small and says what a
/// caller may do next; the HTTP layer will map them (later step) to
/// `503 UNAVAILABLE` (retryable), `410 RESUME_WINDOW_EXPIRED` (§6.3) and so on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The backend cannot be reached or refused to work right now. Nothing
    /// was written; the request may be retried (maps to 503, retryable).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A write was sent but its reply was lost (connection dropped,
    /// timeout): it may or may not have been applied. Retrying the same
    /// append (same job and index) is safe; it is never reported committed.
    #[error("storage write outcome unknown: {0}")]
    Indeterminate(String),
    /// The local writer that owns durability has stopped: nothing submitted
    /// to it from now on is committed.
    #[error("storage writer stopped")]
    WriterStopped,
    /// The history a cursor needs no longer exists (§6.3); never a silent gap.
    #[error("history gone: {0}")]
    Gone(GoneReason),
    /// The cursor is beyond the newest stored event: the store lost writes it
    /// had acknowledged (restart without AOF, failover) or the client lies.
    #[error("cursor {cursor} is beyond the newest stored event {newest}")]
    RolledBack { cursor: EventSeq, newest: EventSeq },
    /// The record already exists.
    #[error("already exists")]
    Exists,
    /// No such job or session record (for sessions, see `Gone` first: a
    /// session whose record vanished is history lost, not "unknown").
    #[error("not found")]
    NotFound,
    /// The presented token generation is older than one already used.
    #[error("token generation superseded")]
    GenerationSuperseded,
    /// The session is closed.
    #[error("session closed")]
    SessionClosed,
    /// The caller's job lease is no longer valid: another node reaped the job
    /// or it expired. The write was refused.
    #[error("job lease lost")]
    Fenced,
    /// Another node holds the job's lease.
    #[error("job lease held by another node")]
    LeaseHeld,
    /// The job already has its terminal event; nothing may follow it.
    #[error("job already ended at event {terminal_seq}")]
    JobClosed { terminal_seq: EventSeq },
    /// An id cannot be used as (part of) a storage key.
    #[error("identifier not usable as a storage key")]
    InvalidId,
    /// A stored record could not be decoded.
    #[error("corrupt stored record: {0}")]
    Corrupt(String),
}

impl StorageError {
    /// Whether the same request may succeed later without any change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StorageError::Unavailable(_)
                | StorageError::Indeterminate(_)
                | StorageError::WriterStopped
        )
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// What kind of event an append carries; a terminal closes its job's log
/// entries in that session (§7.4): nothing of the job may follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Event,
    Terminal,
}

/// One event to append to one session's log.
#[derive(Clone, Debug)]
pub struct Append {
    pub session_id: SessionId,
    pub job_id: JobId,
    /// The job's own count of events, from 1, the same in every session
    /// the event is copied to. It is the retry key: an append whose index is
    /// not above the newest one stored for this job in this session is a
    /// duplicate and is not stored again.
    pub index: u64,
    pub kind: EventKind,
    /// The encoded event, stored and replayed as is.
    pub body: Bytes,
    /// The job's lease, when the appender runs the job (its own session's
    /// log): a stale lease makes the append fail with `Fenced`. Copies to
    /// subscribed sessions (§7.6) carry none.
    pub fence: Option<Lease>,
}

/// The result of one append in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored with this sequence number.
    Stored(EventSeq),
    /// Already stored by an earlier attempt. The sequence is known when this
    /// was the job's newest event in the session.
    Duplicate(Option<EventSeq>),
}

/// One stored event as a reader gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: EventSeq,
    pub job_id: JobId,
    pub body: Bytes,
}

/// `floor <= cursor <= newest`: events `floor+1 ..= newest` are retained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    pub floor: EventSeq,
    pub newest: EventSeq,
}

/// Per-session retention caps, applied by every append (oldest first; the
/// newest event is always kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_events: u64,
    pub max_bytes: u64,
}

/// A cap on one read. At least one event is returned when any is available,
/// even if it alone exceeds `max_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBudget {
    pub max_events: usize,
    pub max_bytes: usize,
}

/// An async, per-session event log shared by every node.
pub trait EventStore: Send + Sync + 'static {
    /// Creates the empty log of a new session (`Exists` if it has one).
    fn create_log(
        &self,
        session_id: &SessionId,
        retention: Retention,
    ) -> impl Future<Output = StorageResult<()>> + Send;

    /// Appends in order. Each append is atomic on its own (sequence
    /// allocation, store, retention, wake-up); the batch is not a
    /// transaction. A transport failure returns `Indeterminate` or
    /// `Unavailable` for the whole batch: retrying it is safe. A refused
    /// append (`Fenced`, `JobClosed`, `Gone`) fails the batch with that error;
    /// appends before it in the batch stay stored.
    fn append_batch(
        &self,
        appends: &[Append],
    ) -> impl Future<Output = StorageResult<Vec<AppendOutcome>>> + Send;

    /// Events with `seq > after`, oldest first, within `budget`; empty when
    /// the reader is caught up. Fails with `Gone` when any of them is missing.
    fn read_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        budget: ReadBudget,
    ) -> impl Future<Output = StorageResult<Vec<StoredEvent>>> + Send;

    fn bounds(
        &self,
        session_id: &SessionId,
    ) -> impl Future<Output = StorageResult<LogBounds>> + Send;

    /// Frees every event with `seq <= up_to` (acknowledged, §6.5). Going
    /// backwards is a no-op; `up_to` beyond the newest stops at the newest.
    fn release_through(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> impl Future<Output = StorageResult<LogBounds>> + Send;

    /// A node-local receiver that changes when the session's log may have
    /// grown (appends from any node). Wake-ups are hints: readers re-read
    /// the log, they never trust the value as a sequence number.
    fn watch(
        &self,
        session_id: &SessionId,
    ) -> impl Future<Output = StorageResult<watch::Receiver<u64>>> + Send;

    /// Deletes the session's log.
    fn remove_log(&self, session_id: &SessionId) -> impl Future<Output = StorageResult<()>> + Send;
}

/// Sessions, streams and jobs across nodes.
pub trait Coordinator: Send + Sync + 'static {
    /// This node's id, as it appears in leases and stream holders.
    fn node_id(&self) -> &str;

    /// Stores a new session and issues its first token generation (1).
    fn create_session(
        &self,
        record: &SessionRecord,
    ) -> impl Future<Output = StorageResult<u64>> + Send;

    /// `Gone(SessionMissing)` when the record vanished.
    fn session(
        &self,
        session_id: &SessionId,
    ) -> impl Future<Output = StorageResult<SessionRecord>> + Send;

    /// The session's shared state (record, generations, close, ack,
    /// holder); `Gone(SessionMissing)` when it vanished.
    fn session_state(
        &self,
        session_id: &SessionId,
    ) -> impl Future<Output = StorageResult<SessionState>> + Send;

    /// Records an acknowledgement (§6.5); returns the high-water mark (an
    /// older acknowledgement changes nothing).
    fn acknowledge(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> impl Future<Output = StorageResult<EventSeq>> + Send;

    /// `session.resume` without a stream (§6.3): consumes `presented` (older
    /// generations stop working), reopens a closed session and issues the
    /// next generation, atomically.
    fn resume(
        &self,
        session_id: &SessionId,
        presented: Option<u64>,
    ) -> impl Future<Output = StorageResult<u64>> + Send;

    /// Attaches a stream: consume-then-issue like `resume` (but refuses a
    /// closed session), and makes `holder` the session's only stream. The
    /// previous holder, if any, is returned and sent a
    /// [`NodeNotice::StreamReplaced`] on its node's notice channel.
    fn attach(
        &self,
        session_id: &SessionId,
        presented: Option<u64>,
        holder: &StreamHolder,
    ) -> impl Future<Output = StorageResult<(u64, Option<StreamHolder>)>> + Send;

    /// Detaches `holder` if it is still the attached stream.
    fn detach(
        &self,
        session_id: &SessionId,
        holder: &StreamHolder,
    ) -> impl Future<Output = StorageResult<bool>> + Send;

    /// Closes the session (§6.7) and detaches its stream; the holder, if
    /// any, is returned and sent [`NodeNotice::SessionClosed`].
    fn close_session(
        &self,
        session_id: &SessionId,
    ) -> impl Future<Output = StorageResult<Option<StreamHolder>>> + Send;

    /// This node's notices (stream replaced, cancel requested).
    fn notices(&self) -> broadcast::Receiver<NodeNotice>;

    /// Stores a new job record (`Exists` if the id is taken) and lists it
    /// under its principal, in submission order.
    fn put_job(&self, record: &JobRecord) -> impl Future<Output = StorageResult<()>> + Send;

    /// The session a job was submitted in (`NotFound` if unknown).
    fn locate_job(&self, job_id: &JobId) -> impl Future<Output = StorageResult<SessionId>> + Send;

    /// A principal's jobs in submission order after position `after` (0:
    /// from the start), at most `limit`, each with its position (the next
    /// page's cursor). Jobs whose record is gone are skipped.
    fn list_jobs(
        &self,
        principal: &Principal,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = StorageResult<Vec<(u64, JobRecord)>>> + Send;

    fn job(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
    ) -> impl Future<Output = StorageResult<JobRecord>> + Send;

    /// Takes the job's lease for this node for `ttl_ms` (`LeaseHeld` if
    /// another holds it). The lease's token fences every append of the job.
    fn acquire_lease(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
        ttl_ms: u64,
    ) -> impl Future<Output = StorageResult<Lease>> + Send;

    /// Extends the lease; `Fenced` if it was lost. Returns whether a cancel
    /// was requested (the backstop when a notice was missed).
    fn renew_lease(
        &self,
        lease: &Lease,
        ttl_ms: u64,
    ) -> impl Future<Output = StorageResult<bool>> + Send;

    /// Records the job's final status and drops its lease (after its
    /// terminal was appended). `Fenced` if the lease was lost.
    fn finish_job(
        &self,
        lease: &Lease,
        status: JobStatus,
        terminal: &serde_json::Value,
    ) -> impl Future<Output = StorageResult<()>> + Send;

    /// Marks the job cancel-requested and notifies the owning node. Returns
    /// the owner's node id.
    fn request_cancel(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
    ) -> impl Future<Output = StorageResult<String>> + Send;

    /// Ends jobs whose lease expired (their node is lost): appends exactly one
    /// terminal built by `terminal` to the job's session log, unless the job
    /// already has one, and marks the record `Lost` with `terminal_payload`
    /// (the payload of that event) as its terminal, so every node reports
    /// the terminal that was delivered. Safe to run on every node at once.
    /// `now_ms` is this node's wall clock.
    fn reap_expired(
        &self,
        now_ms: u64,
        limit: usize,
        terminal: &(dyn Fn(&SessionId, &JobId) -> Bytes + Sync),
        terminal_payload: &serde_json::Value,
    ) -> impl Future<Output = StorageResult<Vec<ReapedJob>>> + Send;

    /// Claims an idempotency key for `principal` (SET NX): `Claimed` for the
    /// first caller, `Existing` with the first record for every later one.
    /// Keys of different principals never meet.
    fn claim_idempotency(
        &self,
        principal: &Principal,
        key: &str,
        record: &IdempotencyRecord,
        ttl_ms: u64,
    ) -> impl Future<Output = StorageResult<IdempotencyClaim>> + Send;

    /// Subscribes `subscriber` to the job `job_id` of session `owner` (§7.6).
    fn subscribe(
        &self,
        subscriber: &SessionId,
        owner: &SessionId,
        job_id: &JobId,
    ) -> impl Future<Output = StorageResult<()>> + Send;

    /// The sessions subscribed to a job, sorted.
    fn subscribers(
        &self,
        owner: &SessionId,
        job_id: &JobId,
    ) -> impl Future<Output = StorageResult<Vec<SessionId>>> + Send;
}

/// Cluster mode needs an explicit shared secret: every node must sign and
/// check resume tokens with the same key, and a random per-process default
/// would make tokens from one node fail on the next.
pub fn require_explicit_secret(secret: Option<&str>) -> Result<(), ClusterConfigError> {
    match secret {
        Some(secret) if !secret.is_empty() => Ok(()),
        _ => Err(ClusterConfigError::SecretRequired),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterConfigError {
    #[error(
        "cluster mode needs an explicit --secret shared by every node (resume tokens \
         signed by one node are checked by the others)"
    )]
    SecretRequired,
}
