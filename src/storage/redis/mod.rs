//! The Redis backend of the storage traits (docs/cluster.md).
//!
//! Every state change that must be atomic is one Lua script in one session's
//! hash slot (`lua/*.lua`); reads are plain commands in a MULTI. Appends are
//! idempotent by the job's append index, so a request whose reply was lost is
//! retried without duplicating anything. Wake-ups and node notices travel over
//! pub/sub (`wake.rs`); they are hints, the log is the only source of events.

mod coordinator;
pub use coordinator::now_ms;
pub mod keys;
pub mod startup;
mod subscriptions;
mod wake;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};
use tokio::sync::{broadcast, watch};

use super::{
    Append, AppendOutcome, EventKind, EventStore, GoneReason, LogBounds, NodeNotice, ReadBudget,
    Retention, StorageError, StorageResult, StoredEvent,
};
use crate::ids::{EventSeq, JobId, SessionId};
use keys::{SessionKeys, RUNNING};

pub use startup::{check_persistence, PersistenceProblem, PersistenceReport, PersistenceWarning};

/// How long one Redis request may take before it fails (`Unavailable` or,
/// for writes, `Indeterminate`).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many events per XRANGE of one read.
const MAX_READ_EVENTS: usize = 1024;

/// The scripts, hashed once; `EVALSHA` falls back to loading them when Redis
/// does not know them (restart, `SCRIPT FLUSH`).
struct Scripts {
    append: Script,
    fail_orphan: Script,
    release: Script,
    create_log: Script,
    session: Script,
    job: Script,
    idempotency: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            append: Script::new(concat!(
                include_str!("lua/append_core.lua"),
                include_str!("lua/append.lua")
            )),
            fail_orphan: Script::new(concat!(
                include_str!("lua/append_core.lua"),
                include_str!("lua/fail_orphan.lua")
            )),
            release: Script::new(include_str!("lua/release.lua")),
            create_log: Script::new(include_str!("lua/create_log.lua")),
            session: Script::new(include_str!("lua/session.lua")),
            job: Script::new(include_str!("lua/job.lua")),
            idempotency: Script::new(include_str!("lua/idempotency.lua")),
        }
    }
}

/// One node's handle on the shared Redis state. Cheap to clone.
#[derive(Clone)]
pub struct RedisStorage {
    connection: ConnectionManager,
    scripts: Arc<Scripts>,
    node_id: Arc<str>,
    wakes: wake::WakeHub,
    /// The resume window (§6.3) as the expiry of a session's keys while no
    /// stream is attached; 0 keeps them forever.
    session_window_ms: u64,
}

impl RedisStorage {
    /// Connects as node `node_id` (letters, digits, `_`, `-`), checks that
    /// Redis answers, and starts the pub/sub task for wake-ups and this
    /// node's notices. An unreachable Redis is an `Unavailable` error.
    pub async fn connect(url: &str, node_id: &str) -> StorageResult<Self> {
        keys::checked(node_id)?;
        let client = redis::Client::open(url)
            .map_err(|error| StorageError::Unavailable(format!("bad redis url: {error}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| StorageError::Unavailable("redis connect timed out".into()))?
        .map_err(read_error)?;
        let wakes = wake::WakeHub::start(client, keys::node_channel(node_id)?);
        Ok(RedisStorage {
            connection,
            scripts: Arc::new(Scripts::new()),
            node_id: Arc::from(node_id),
            wakes,
            session_window_ms: 0,
        })
    }

    /// Makes a session's keys expire once it has had no stream for
    /// `window` (the resume window, §6.3).
    pub fn with_session_window(mut self, window: Duration) -> Self {
        self.session_window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self
    }

    fn window_arg(&self) -> String {
        self.session_window_ms.to_string()
    }

    /// Waits until this node's pub/sub connection is up: until then it
    /// receives no notices and its readers no wake-ups (they still poll).
    /// False if `limit` passed first.
    pub async fn wait_pubsub(&self, limit: Duration) -> bool {
        self.wakes.wait_connected(limit).await
    }

    /// A connection for commands this module does not wrap (tests, checks).
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    fn notices_sender(&self) -> &broadcast::Sender<NodeNotice> {
        self.wakes.notices()
    }

    async fn run_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
        on_error: fn(RedisError) -> StorageError,
    ) -> StorageResult<Vec<Value>> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection.clone();
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(on_error)
    }

    /// `lua/session.lua` on a session's keys, the resume window inserted as
    /// its second argument.
    async fn session_script(
        &self,
        session_id: &SessionId,
        args: &[&[u8]],
    ) -> StorageResult<Vec<Value>> {
        let keys = SessionKeys::new(session_id)?;
        let window = self.window_arg();
        let mut full: Vec<&[u8]> = Vec::with_capacity(args.len() + 1);
        full.push(args[0]);
        full.push(window.as_bytes());
        full.extend_from_slice(&args[1..]);
        self.run_script(
            &self.scripts.session,
            &[&keys.session(), &keys.meta(), &keys.log()],
            &full,
            write_error,
        )
        .await
    }

    /// `lua/job.lua` on a job's keys and the running index ([`keys::RUNNING`]).
    async fn job_script(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
        args: &[&[u8]],
    ) -> StorageResult<Vec<Value>> {
        let keys = SessionKeys::new(session_id)?;
        self.run_script(
            &self.scripts.job,
            &[
                &keys.job(job_id)?,
                &keys.lease(job_id)?,
                RUNNING,
                &keys.subscribers(job_id)?,
            ],
            args,
            write_error,
        )
        .await
    }

    /// The append script's invocation for one event.
    fn append_invocation<'a>(
        &'a self,
        keys: &SessionKeys,
        append: &'a Append,
    ) -> StorageResult<redis::ScriptInvocation<'a>> {
        let lease_key = keys.lease(&append.job_id)?;
        let fence = append
            .fence
            .as_ref()
            .map(|lease| lease.token.as_bytes())
            .unwrap_or_default();
        let terminal: &[u8] = match append.kind {
            EventKind::Terminal => b"1",
            EventKind::Event => b"0",
        };
        let mut invocation = self.scripts.append.prepare_invoke();
        invocation
            .key(keys.meta())
            .key(keys.log())
            .key(lease_key)
            .arg(append.job_id.as_str().as_bytes())
            .arg(append.index.to_string().as_bytes())
            .arg(terminal)
            .arg(&append.body[..])
            .arg(fence)
            .arg(keys.wake().as_bytes());
        Ok(invocation)
    }

    /// The appends' scripts sent as one pipeline: one round trip for the
    /// batch instead of one per event. Redis runs them in order; each is
    /// idempotent by (job, index), so a batch whose reply was lost is
    /// retried whole. A Redis that lost its script cache (restart,
    /// `SCRIPT FLUSH`) refuses every call with `NOSCRIPT` and runs none, so
    /// the batch is sent again behind a `SCRIPT LOAD`.
    async fn append_pipelined(&self, appends: &[Append]) -> StorageResult<Vec<Vec<Value>>> {
        let keys: Vec<SessionKeys> = appends
            .iter()
            .map(|append| SessionKeys::new(&append.session_id))
            .collect::<StorageResult<_>>()?;
        let invocations: Vec<redis::ScriptInvocation<'_>> = appends
            .iter()
            .zip(&keys)
            .map(|(append, keys)| self.append_invocation(keys, append))
            .collect::<StorageResult<_>>()?;
        let pipeline = |load: bool| {
            let mut pipe = redis::pipe();
            if load {
                pipe.load_script(&self.scripts.append).ignore();
            }
            for invocation in &invocations {
                pipe.invoke_script(invocation);
            }
            pipe
        };
        let mut connection = self.connection.clone();
        match pipeline(false).query_async(&mut connection).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                pipeline(true)
                    .query_async(&mut connection)
                    .await
                    .map_err(write_error)
            }
            replies => replies.map_err(write_error),
        }
    }
}

/// What the append script answered for one event.
fn append_outcome(reply: &[Value]) -> StorageResult<AppendOutcome> {
    match (status(reply)?, reply.get(1)) {
        ("ok", Some(seq)) => Ok(AppendOutcome::Stored(number(seq)?)),
        ("dup", Some(seq)) => Ok(AppendOutcome::Duplicate(optional_number(seq)?)),
        ("closed", Some(seq)) => Err(StorageError::JobClosed {
            terminal_seq: number(seq)?,
        }),
        ("gone", _) => Err(StorageError::Gone(GoneReason::SessionMissing)),
        ("fenced", _) => Err(StorageError::Fenced),
        _ => Err(unexpected(reply)),
    }
}

impl EventStore for RedisStorage {
    async fn create_log(&self, session_id: &SessionId, retention: Retention) -> StorageResult<()> {
        let keys = SessionKeys::new(session_id)?;
        let reply = self
            .run_script(
                &self.scripts.create_log,
                &[&keys.meta()],
                &[
                    retention.max_events.to_string().as_bytes(),
                    retention.max_bytes.to_string().as_bytes(),
                    self.window_arg().as_bytes(),
                ],
                write_error,
            )
            .await?;
        match status(&reply)? {
            "ok" => Ok(()),
            "exists" => Err(StorageError::Exists),
            _ => Err(unexpected(&reply)),
        }
    }

    /// One pipeline of script calls, in order (`append_pipelined`); the
    /// first refused append is the batch's error, as if they had been sent
    /// one by one (the later ones are refused alike: the same closed job,
    /// missing session or lost lease).
    async fn append_batch(&self, appends: &[Append]) -> StorageResult<Vec<AppendOutcome>> {
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let replies = self.append_pipelined(appends).await?;
        if replies.len() != appends.len() {
            return Err(StorageError::Corrupt(format!(
                "redis answered {} of {} appends",
                replies.len(),
                appends.len()
            )));
        }
        replies.iter().map(|reply| append_outcome(reply)).collect()
    }

    async fn read_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        budget: ReadBudget,
    ) -> StorageResult<Vec<StoredEvent>> {
        let keys = SessionKeys::new(session_id)?;
        let count = budget.max_events.clamp(1, MAX_READ_EVENTS);
        let mut connection = self.connection.clone();
        let (bounds, entries): (Vec<Option<u64>>, Vec<StreamEntry>) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(keys.meta())
            .arg("top")
            .arg("floor")
            .cmd("XRANGE")
            .arg(keys.log())
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        let bounds = parse_bounds(&bounds)?;
        super::memory::check_cursor(bounds, after)?;
        let mut events = Vec::with_capacity(entries.len());
        let mut bytes = 0;
        for (offset, (id, fields)) in entries.into_iter().enumerate() {
            let expected = after + 1 + offset as u64;
            let event = parse_entry(&id, fields)?;
            // Contiguity: an entry missing from the stream while the meta
            // says it exists is lost history, never skipped silently.
            if event.seq != expected {
                return Err(StorageError::Gone(GoneReason::HistoryLost));
            }
            if !events.is_empty() && bytes + event.body.len() > budget.max_bytes {
                break;
            }
            bytes += event.body.len();
            events.push(event);
        }
        if events.is_empty() && after < bounds.newest {
            return Err(StorageError::Gone(GoneReason::HistoryLost));
        }
        Ok(events)
    }

    async fn bounds(&self, session_id: &SessionId) -> StorageResult<LogBounds> {
        let keys = SessionKeys::new(session_id)?;
        let mut connection = self.connection.clone();
        let bounds: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(keys.meta())
            .arg("top")
            .arg("floor")
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        parse_bounds(&bounds)
    }

    async fn release_through(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> StorageResult<LogBounds> {
        let keys = SessionKeys::new(session_id)?;
        let reply = self
            .run_script(
                &self.scripts.release,
                &[&keys.meta(), &keys.log()],
                &[up_to.to_string().as_bytes()],
                write_error,
            )
            .await?;
        match (status(&reply)?, reply.get(1), reply.get(2)) {
            ("ok", Some(floor), Some(newest)) => Ok(LogBounds {
                floor: number(floor)?,
                newest: number(newest)?,
            }),
            ("gone", _, _) => Err(StorageError::Gone(GoneReason::SessionMissing)),
            _ => Err(unexpected(&reply)),
        }
    }

    async fn watch(&self, session_id: &SessionId) -> StorageResult<watch::Receiver<u64>> {
        let keys = SessionKeys::new(session_id)?;
        Ok(self.wakes.watch(keys.wake()).await)
    }

    async fn remove_log(&self, session_id: &SessionId) -> StorageResult<()> {
        let keys = SessionKeys::new(session_id)?;
        let mut connection = self.connection.clone();
        redis::cmd("DEL")
            .arg(keys.meta())
            .arg(keys.log())
            .query_async::<()>(&mut connection)
            .await
            .map_err(write_error)
    }
}

fn parse_bounds(values: &[Option<u64>]) -> StorageResult<LogBounds> {
    match values {
        [Some(newest), Some(floor)] => Ok(LogBounds {
            floor: *floor,
            newest: *newest,
        }),
        _ => Err(StorageError::Gone(GoneReason::SessionMissing)),
    }
}

/// An XRANGE entry: id and flat field list.
type StreamEntry = (String, Vec<Bytes>);

/// A stream entry `<seq>-0` with fields `j <job> b <body>`.
fn parse_entry(id: &str, fields: Vec<Bytes>) -> StorageResult<StoredEvent> {
    let seq = id
        .strip_suffix("-0")
        .and_then(|seq| seq.parse().ok())
        .ok_or_else(|| StorageError::Corrupt(format!("log entry id {id:?}")))?;
    let mut fields = fields.into_iter();
    match (fields.next(), fields.next(), fields.next(), fields.next()) {
        (Some(j), Some(job), Some(b), Some(body)) if &j[..] == b"j" && &b[..] == b"b" => {
            let job = std::str::from_utf8(&job)
                .map_err(|_| StorageError::Corrupt("log entry job id".into()))?;
            Ok(StoredEvent {
                seq,
                job_id: JobId::from_client(job),
                body,
            })
        }
        _ => Err(StorageError::Corrupt(format!("log entry {id} fields"))),
    }
}

/// The first element of a script reply, its status word.
fn status(reply: &[Value]) -> StorageResult<&str> {
    match reply.first() {
        Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).map_err(|_| unexpected(reply)),
        Some(Value::SimpleString(text)) => Ok(text),
        _ => Err(unexpected(reply)),
    }
}

fn text(value: &Value) -> StorageResult<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .map_err(|_| StorageError::Corrupt("script reply is not UTF-8".into())),
        Value::SimpleString(text) => Ok(text),
        other => Err(StorageError::Corrupt(format!(
            "script reply field {other:?}"
        ))),
    }
}

fn number(value: &Value) -> StorageResult<u64> {
    match value {
        Value::Int(number) => u64::try_from(*number)
            .map_err(|_| StorageError::Corrupt(format!("negative number {number}"))),
        other => text(other)?
            .parse()
            .map_err(|_| StorageError::Corrupt(format!("script reply number {other:?}"))),
    }
}

fn optional_number(value: &Value) -> StorageResult<Option<u64>> {
    match text(value) {
        Ok("") => Ok(None),
        _ => number(value).map(Some),
    }
}

fn unexpected(reply: &[Value]) -> StorageError {
    StorageError::Corrupt(format!("unexpected script reply {reply:?}"))
}

/// Server replies that mean "not now" rather than "never".
fn transient_server_error(error: &RedisError) -> bool {
    matches!(
        error.code(),
        Some(
            "LOADING"
                | "BUSY"
                | "MASTERDOWN"
                | "READONLY"
                | "OOM"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
                | "NOSCRIPT"
        )
    )
}

/// For requests that change nothing, or are safe to repeat: any failure to
/// get an answer is `Unavailable`.
fn read_error(error: RedisError) -> StorageError {
    if error.code().is_some() && !transient_server_error(&error) {
        return StorageError::Corrupt(format!("redis refused: {error}"));
    }
    StorageError::Unavailable(error.to_string())
}

/// For writes: a request that may have reached Redis before the connection
/// failed has an unknown outcome (`Indeterminate`), never "committed".
fn write_error(error: RedisError) -> StorageError {
    if error.code().is_some() && !transient_server_error(&error) {
        return StorageError::Corrupt(format!("redis refused: {error}"));
    }
    if error.is_connection_refusal() || transient_server_error(&error) {
        return StorageError::Unavailable(error.to_string());
    }
    StorageError::Indeterminate(error.to_string())
}
