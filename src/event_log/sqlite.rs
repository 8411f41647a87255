//! The durable backend: SQLite (bundled, WAL mode) behind the in-memory log.
//!
//! Reads are served from [`MemoryEventLog`], which this store fills at start
//! and then follows as its [`LogSink`]. Every write (events, releases,
//! session and job records) goes, in order, into one bounded queue drained by
//! a single writer thread that group-commits: it takes everything queued,
//! commits it in one transaction, and only then marks the events durable,
//! which is when readers may see them. Under load many events share one
//! commit; when idle a lone event is committed at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection};
use serde_json::Value;
use tokio::sync::oneshot;

use super::memory::{LogSink, MemoryEventLog};
use super::LogEntry;
use crate::ids::{EventSeq, JobId, SessionId};
use crate::jobs::JobRow;
use crate::metrics::Metrics;
use crate::session::SessionRow;
use crate::store::{Durable, Persistence};

/// `PRAGMA application_id`: "ARCG". A database without it is not ours.
const APPLICATION_ID: i64 = 0x4152_4347;
const SCHEMA_VERSION: i64 = 1;
/// Writes queued ahead of the writer before producers wait.
const QUEUE_DEPTH: usize = 65_536;
/// The most operations one transaction takes.
const MAX_BATCH: usize = 8_192;

/// Why the store could not open.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

fn store_error(path: &Path, error: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{}: {error}", path.display()))
}

/// A write and its room in the queue, given back once it is committed.
struct Queued(Operation, Option<tokio::sync::OwnedSemaphorePermit>);

enum Operation {
    CreateLog {
        session_id: SessionId,
    },
    Append {
        session_id: SessionId,
        entry: LogEntry,
    },
    Release {
        session_id: SessionId,
        floor: EventSeq,
    },
    RemoveLog {
        session_id: SessionId,
    },
    SaveSession {
        session_id: SessionId,
        record: String,
        done: Option<oneshot::Sender<()>>,
    },
    DeleteSession {
        session_id: SessionId,
    },
    SaveJob {
        job_id: JobId,
        session_id: SessionId,
        record: String,
        done: Option<oneshot::Sender<()>>,
    },
    DeleteJob {
        job_id: JobId,
    },
    Flush {
        done: Option<oneshot::Sender<()>>,
    },
}

/// Everything read back at start.
pub struct Recovered {
    /// `(session, floor, entries)` per stored log.
    pub logs: Vec<(SessionId, EventSeq, Vec<LogEntry>)>,
    pub sessions: Vec<Value>,
    /// Job records in submission order.
    pub jobs: Vec<Value>,
}

pub struct SqliteStore {
    queue: Sender<Queued>,
    /// Room in the write queue: each queued write holds a permit until it is
    /// committed. Producers wait for room before they take a lock
    /// ([`crate::store::wait_for_room`]); the send itself never blocks.
    room: Arc<tokio::sync::Semaphore>,
    path: PathBuf,
    /// Writes queued and not yet taken by the writer.
    queue_depth: Gauge,
}

/// What the writer thread reports to `/metrics`.
struct WriterMetrics {
    queue_depth: Gauge,
    commit: Histogram,
}

impl SqliteStore {
    /// Opens (or creates) the database in `data_dir`, checks it is ours, and
    /// reads everything back.
    pub fn open(data_dir: &Path) -> Result<(Connection, Recovered, PathBuf), StoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join("arcp-gateway.sqlite3");
        create_private_file(&path)?;
        let connection = Connection::open(&path).map_err(|e| store_error(&path, e))?;
        prepare(&connection).map_err(|e| store_error(&path, e))?;
        let recovered = read_all(&connection).map_err(|e| store_error(&path, e))?;
        Ok((connection, recovered, path))
    }

    /// Starts the writer thread on `connection`; `log` is told when events
    /// become durable.
    pub fn start(
        connection: Connection,
        path: PathBuf,
        log: Weak<MemoryEventLog>,
        metrics: &Metrics,
    ) -> Arc<SqliteStore> {
        let (queue, receiver) = channel();
        let queue_depth = metrics.store_queue_depth();
        let writer_metrics = WriterMetrics {
            queue_depth: queue_depth.clone(),
            commit: metrics.store_commit_histogram(),
        };
        // The writer ends once every sender is gone (the store dropped).
        let spawned = std::thread::Builder::new()
            .name("arcp-store-writer".into())
            .spawn(move || write_loop(connection, receiver, log, writer_metrics));
        if let Err(error) = spawned {
            tracing::error!(%error, "could not start the store writer thread");
        }
        Arc::new(SqliteStore {
            queue,
            room: Arc::new(tokio::sync::Semaphore::new(QUEUE_DEPTH)),
            path,
            queue_depth,
        })
    }

    /// Queues a write without ever blocking (it may run under the session
    /// log's and the job's locks). A write that finds no room still goes in:
    /// the excess is bounded by the producers that raced past
    /// `wait_for_room`, each by the few writes of one step.
    fn enqueue(&self, operation: Operation) {
        self.queue_depth.inc();
        let permit = self.room.clone().try_acquire_owned().ok();
        if self.queue.send(Queued(operation, permit)).is_err() {
            self.queue_depth.dec();
            // The operation (and any commit waiter in it) is dropped: its
            // `Durable` reports `WriterStopped`, never "committed".
            tracing::error!(path = %self.path.display(), "the store writer has stopped; a write was refused");
        }
    }
}

fn prepare(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(Duration::from_secs(5))?;
    let application_id: i64 =
        connection.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let table_count: i64 = connection.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
        [],
        |row| row.get(0),
    )?;
    if application_id != APPLICATION_ID && (application_id != 0 || table_count != 0) {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "not an arcp-gateway database (application_id {application_id:#x}); refusing to touch it"
        )));
    }
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {version} is newer than this gateway understands ({SCHEMA_VERSION})"
        )));
    }
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID};
         PRAGMA user_version = {SCHEMA_VERSION};
         CREATE TABLE IF NOT EXISTS logs (
             session_id TEXT PRIMARY KEY,
             floor INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS events (
             session_id TEXT NOT NULL,
             seq INTEGER NOT NULL,
             job_id TEXT NOT NULL,
             frame BLOB NOT NULL,
             envelope_start INTEGER NOT NULL,
             envelope_end INTEGER NOT NULL,
             PRIMARY KEY (session_id, seq)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS sessions (
             id TEXT PRIMARY KEY,
             record TEXT NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS jobs (
             id TEXT PRIMARY KEY,
             session_id TEXT NOT NULL,
             record TEXT NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS quarantine (
             source TEXT NOT NULL,
             key TEXT NOT NULL,
             content BLOB,
             reason TEXT NOT NULL,
             quarantined_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
         );"
    ))?;
    // A quick structural check: a corrupt file fails here, not later.
    let check: String = connection.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database failed its integrity check: {check}"
        )));
    }
    Ok(())
}

/// A row recovery could not read: kept aside for an operator, never a
/// reason to refuse to start (the rest of the store is still good).
struct Unreadable {
    source: &'static str,
    key: SqlValue,
    /// For an `events` row, its `seq` (the key is its session).
    seq: Option<SqlValue>,
    content: SqlValue,
    reason: String,
}

/// Moves each unreadable row into the `quarantine` table and out of its own,
/// with a loud log line per row. Runs before the writer thread starts.
fn quarantine(connection: &Connection, rows: Vec<Unreadable>) -> rusqlite::Result<()> {
    for row in rows {
        tracing::error!(
            table = row.source,
            key = %describe(&row.key),
            seq = row.seq.as_ref().map(describe).unwrap_or_default(),
            reason = %row.reason,
            "unreadable record moved to the quarantine table; the gateway starts without it"
        );
        let transaction = connection.unchecked_transaction()?;
        transaction.execute(
            "INSERT INTO quarantine (source, key, content, reason) VALUES (?1, ?2, ?3, ?4)",
            params![
                row.source,
                match &row.seq {
                    Some(seq) => format!("{}#{}", describe(&row.key), describe(seq)),
                    None => describe(&row.key),
                },
                row.content,
                row.reason
            ],
        )?;
        let delete = match row.source {
            "logs" => "DELETE FROM logs WHERE session_id = ?1",
            "sessions" => "DELETE FROM sessions WHERE id = ?1",
            "jobs" => "DELETE FROM jobs WHERE id = ?1",
            _ => "DELETE FROM events WHERE session_id = ?1 AND seq = ?2",
        };
        match row.seq {
            Some(seq) => transaction.execute(delete, params![row.key, seq])?,
            None => transaction.execute(delete, params![row.key])?,
        };
        transaction.commit()?;
    }
    Ok(())
}

fn describe(value: &SqlValue) -> String {
    match value {
        SqlValue::Text(text) => text.clone(),
        SqlValue::Integer(number) => number.to_string(),
        SqlValue::Real(number) => number.to_string(),
        SqlValue::Null => "NULL".into(),
        SqlValue::Blob(bytes) => format!("<{} byte blob>", bytes.len()),
    }
}

/// A record's JSON, parsed as the rest of recovery will use it.
fn parse_record(content: &SqlValue) -> Result<Value, String> {
    let SqlValue::Text(text) = content else {
        return Err(format!("record is {}, not text", describe_type(content)));
    };
    serde_json::from_str(text).map_err(|error| format!("record is not readable JSON: {error}"))
}

fn describe_type(value: &SqlValue) -> &'static str {
    match value {
        SqlValue::Null => "NULL",
        SqlValue::Integer(_) => "an integer",
        SqlValue::Real(_) => "a real",
        SqlValue::Text(_) => "text",
        SqlValue::Blob(_) => "a blob",
    }
}

/// One `events` row, checked: positive sequence, text job id, a blob frame
/// and an envelope span inside it.
fn read_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<LogEntry, (SqlValue, String)>> {
    let seq: SqlValue = row.get(0)?;
    let job_id: SqlValue = row.get(1)?;
    let frame: SqlValue = row.get(2)?;
    let start: SqlValue = row.get(3)?;
    let end: SqlValue = row.get(4)?;
    let checked = match (&seq, &job_id, frame, &start, &end) {
        (
            SqlValue::Integer(seq),
            SqlValue::Text(job_id),
            SqlValue::Blob(frame),
            SqlValue::Integer(start),
            SqlValue::Integer(end),
        ) if *seq > 0 && 0 <= *start && start <= end && *end as u64 <= frame.len() as u64 => {
            Ok(LogEntry {
                seq: *seq as EventSeq,
                job_id: JobId::from_client(job_id),
                frame: Bytes::from(frame),
                envelope: *start as usize..*end as usize,
            })
        }
        (_, _, frame, _, _) => Err((
            frame,
            format!(
                "event row has seq {}, job_id {}, envelope {}..{}",
                describe(&seq),
                describe_type(&job_id),
                describe(&start),
                describe(&end)
            ),
        )),
    };
    Ok(checked)
}

fn read_all(connection: &Connection) -> rusqlite::Result<Recovered> {
    let mut unreadable = Vec::new();
    let mut floors: Vec<(String, i64)> = Vec::new();
    {
        let mut statement = connection.prepare("SELECT session_id, floor FROM logs")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, SqlValue>(0)?, row.get::<_, SqlValue>(1)?))
        })?;
        for row in rows {
            match row? {
                (SqlValue::Text(session), SqlValue::Integer(floor)) if floor >= 0 => {
                    floors.push((session, floor));
                }
                (key, floor) => unreadable.push(Unreadable {
                    source: "logs",
                    content: SqlValue::Text(describe(&floor)),
                    reason: format!("log row has floor {}", describe(&floor)),
                    key,
                    seq: None,
                }),
            }
        }
    }
    let mut logs = Vec::new();
    {
        let mut statement = connection.prepare(
            "SELECT seq, job_id, frame, envelope_start, envelope_end FROM events
             WHERE session_id = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        for (session, floor) in floors {
            let mut entries = Vec::new();
            let mut rows = statement.query(params![session, floor])?;
            // A log is a gapless sequence: from an unreadable event on, the
            // rest of it is set aside too, so that new events can take those
            // sequence numbers without old rows coming back after them.
            let mut cut = false;
            while let Some(row) = rows.next()? {
                let checked = match read_event(row)? {
                    Ok(entry) if !cut => Ok(entry),
                    Ok(entry) => Err((
                        SqlValue::Blob(entry.frame.to_vec()),
                        "follows an unreadable event of the same log".to_owned(),
                    )),
                    Err(unreadable) => Err(unreadable),
                };
                match checked {
                    Ok(entry) => entries.push(entry),
                    Err((content, reason)) => {
                        if !cut {
                            tracing::error!(
                                session = %session,
                                "the session's log is cut short at an unreadable event"
                            );
                        }
                        cut = true;
                        let seq: SqlValue = row.get(0)?;
                        unreadable.push(Unreadable {
                            source: "events",
                            key: SqlValue::Text(session.clone()),
                            seq: Some(seq),
                            content,
                            reason,
                        });
                    }
                }
            }
            logs.push((SessionId::from_client(&session), floor as EventSeq, entries));
        }
    }
    let mut sessions = Vec::new();
    let mut jobs = Vec::new();
    for (source, out) in [("sessions", &mut sessions), ("jobs", &mut jobs)] {
        let mut statement = connection.prepare(&format!("SELECT id, record FROM {source}"))?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, SqlValue>(0)?, row.get::<_, SqlValue>(1)?))
        })?;
        for row in rows {
            let (key, content) = row?;
            match parse_record(&content) {
                Ok(record) => out.push(record),
                Err(reason) => unreadable.push(Unreadable {
                    source,
                    key,
                    seq: None,
                    content,
                    reason,
                }),
            }
        }
    }
    quarantine(connection, unreadable)?;
    jobs.sort_by_key(|job| job.get("index").and_then(Value::as_u64).unwrap_or(0));
    Ok(Recovered {
        logs,
        sessions,
        jobs,
    })
}

fn write_loop(
    mut connection: Connection,
    receiver: Receiver<Queued>,
    log: Weak<MemoryEventLog>,
    metrics: WriterMetrics,
) {
    loop {
        let first = match receiver.recv_timeout(Duration::from_secs(1)) {
            Ok(queued) => queued,
            Err(RecvTimeoutError::Timeout) => {
                if log.strong_count() == 0 {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut queued = vec![first];
        while queued.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => queued.push(next),
                Err(_) => break,
            }
        }
        let (mut batch, _room): (Vec<Operation>, Vec<_>) = queued
            .into_iter()
            .map(|Queued(op, room)| (op, room))
            .unzip();
        metrics.queue_depth.dec_by(batch.len() as i64);
        let mut durable: HashMap<SessionId, EventSeq> = HashMap::new();
        let mut attempt: u32 = 0;
        let started = std::time::Instant::now();
        // A failed batch is retried until it commits, never skipped: a later
        // commit must not make an earlier, lost event visible, and a gap on
        // disk would cut the session's log short at recovery. Meanwhile
        // nothing new becomes visible and producers wait on the full queue.
        while let Err(error) = apply(&mut connection, &mut batch, &mut durable) {
            attempt += 1;
            if attempt == 1 || attempt.is_power_of_two() {
                tracing::error!(%error, attempt, "store commit failed; retrying");
            }
            durable.clear();
            std::thread::sleep(Duration::from_millis(100 * u64::from(attempt.min(50))));
        }
        metrics.commit.observe(started.elapsed().as_secs_f64());
        if let Some(log) = log.upgrade() {
            for (session_id, seq) in &durable {
                log.mark_durable(session_id, *seq);
            }
        }
        for operation in &mut batch {
            let waiter = match operation {
                Operation::SaveSession { done, .. }
                | Operation::SaveJob { done, .. }
                | Operation::Flush { done } => done.take(),
                _ => None,
            };
            if let Some(waiter) = waiter {
                let _ = waiter.send(());
            }
        }
    }
}

fn apply(
    connection: &mut Connection,
    batch: &mut [Operation],
    durable: &mut HashMap<SessionId, EventSeq>,
) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    {
        let mut insert_event = transaction.prepare_cached(
            "INSERT OR REPLACE INTO events (session_id, seq, job_id, frame, envelope_start, envelope_end)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for operation in batch.iter_mut() {
            match operation {
                Operation::CreateLog { session_id } => {
                    transaction.execute(
                        "INSERT OR IGNORE INTO logs (session_id, floor) VALUES (?1, 0)",
                        params![session_id.as_str()],
                    )?;
                }
                Operation::Append { session_id, entry } => {
                    insert_event.execute(params![
                        session_id.as_str(),
                        entry.seq as i64,
                        entry.job_id.as_str(),
                        &entry.frame[..],
                        entry.envelope.start as i64,
                        entry.envelope.end as i64,
                    ])?;
                    durable.insert(session_id.clone(), entry.seq);
                }
                Operation::Release { session_id, floor } => {
                    transaction.execute(
                        "DELETE FROM events WHERE session_id = ?1 AND seq <= ?2",
                        params![session_id.as_str(), *floor as i64],
                    )?;
                    transaction.execute(
                        "UPDATE logs SET floor = max(floor, ?2) WHERE session_id = ?1",
                        params![session_id.as_str(), *floor as i64],
                    )?;
                }
                Operation::RemoveLog { session_id } => {
                    transaction.execute(
                        "DELETE FROM events WHERE session_id = ?1",
                        params![session_id.as_str()],
                    )?;
                    transaction.execute(
                        "DELETE FROM logs WHERE session_id = ?1",
                        params![session_id.as_str()],
                    )?;
                    durable.remove(session_id);
                }
                Operation::SaveSession {
                    session_id, record, ..
                } => {
                    transaction.execute(
                        "INSERT OR REPLACE INTO sessions (id, record) VALUES (?1, ?2)",
                        params![session_id.as_str(), record.as_str()],
                    )?;
                }
                Operation::DeleteSession { session_id } => {
                    transaction.execute(
                        "DELETE FROM sessions WHERE id = ?1",
                        params![session_id.as_str()],
                    )?;
                }
                Operation::SaveJob {
                    job_id,
                    session_id,
                    record,
                    ..
                } => {
                    transaction.execute(
                        "INSERT OR REPLACE INTO jobs (id, session_id, record) VALUES (?1, ?2, ?3)",
                        params![job_id.as_str(), session_id.as_str(), record.as_str()],
                    )?;
                }
                Operation::DeleteJob { job_id } => {
                    transaction
                        .execute("DELETE FROM jobs WHERE id = ?1", params![job_id.as_str()])?;
                }
                Operation::Flush { .. } => {}
            }
        }
    }
    transaction.commit()
}

impl LogSink for SqliteStore {
    fn created(&self, session_id: &SessionId) {
        self.enqueue(Operation::CreateLog {
            session_id: session_id.clone(),
        });
    }

    fn appended(&self, session_id: &SessionId, entry: &LogEntry) {
        self.enqueue(Operation::Append {
            session_id: session_id.clone(),
            entry: entry.clone(),
        });
    }

    fn released(&self, session_id: &SessionId, floor: EventSeq) {
        self.enqueue(Operation::Release {
            session_id: session_id.clone(),
            floor,
        });
    }

    fn removed(&self, session_id: &SessionId) {
        self.enqueue(Operation::RemoveLog {
            session_id: session_id.clone(),
        });
    }
}

impl Persistence for SqliteStore {
    fn save_session(&self, session_id: &SessionId, record: &SessionRow) -> Durable {
        let (done, committed) = oneshot::channel();
        // Plain data: serializing cannot fail.
        let record = serde_json::to_string(record).unwrap_or_default();
        self.enqueue(Operation::SaveSession {
            session_id: session_id.clone(),
            record,
            done: Some(done),
        });
        Durable::pending(committed)
    }

    fn delete_session(&self, session_id: &SessionId) {
        self.enqueue(Operation::DeleteSession {
            session_id: session_id.clone(),
        });
    }

    fn save_job(&self, job_id: &JobId, session_id: &SessionId, record: &JobRow) -> Durable {
        let (done, committed) = oneshot::channel();
        let record = serde_json::to_string(record).unwrap_or_default();
        self.enqueue(Operation::SaveJob {
            job_id: job_id.clone(),
            session_id: session_id.clone(),
            record,
            done: Some(done),
        });
        Durable::pending(committed)
    }

    fn delete_job(&self, job_id: &JobId) {
        self.enqueue(Operation::DeleteJob {
            job_id: job_id.clone(),
        });
    }

    fn flush(&self) -> Durable {
        let (done, committed) = oneshot::channel();
        self.enqueue(Operation::Flush { done: Some(done) });
        Durable::pending(committed)
    }

    fn room(&self) -> Option<Arc<tokio::sync::Semaphore>> {
        Some(self.room.clone())
    }
}

/// The data directory holds every event payload: readable by its owner only
/// (0700) when this process creates it.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| store_error(dir, e))
}

/// Creates the database file 0600 before SQLite opens it; SQLite gives its
/// WAL and shared-memory files the same permissions.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(drop)
        .map_err(|e| store_error(path, e))
}

/// Reads the token secret kept in the data dir, creating it (mode 0600) on
/// first start, so resume tokens survive restarts.
pub fn load_or_create_secret(data_dir: &Path) -> Result<Vec<u8>, StoreError> {
    use std::io::Write;
    let path = data_dir.join("token-secret");
    create_private_dir(data_dir)?;
    if let Ok(existing) = std::fs::read(&path) {
        if existing.len() < 32 {
            return Err(store_error(
                &path,
                "token secret file is shorter than 32 bytes",
            ));
        }
        return Ok(existing);
    }
    let secret: [u8; 32] = rand::random();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(|e| store_error(&path, e))?;
    file.write_all(&secret)
        .and_then(|()| file.sync_all())
        .map_err(|e| store_error(&path, e))?;
    Ok(secret.to_vec())
}
