//! The durable backend: SQLite (bundled, WAL mode) behind the in-memory log.
//!
//! Reads are served from [`MemoryEventLog`], which this store fills at start
//! and then follows as its [`LogSink`]. Every write (events, releases,
//! session and job records) goes, in order, into one bounded queue drained by
//! a single writer thread that group-commits: it takes everything queued,
//! commits it in one transaction, and only then marks the events durable,
//! which is when readers may see them. Under load many events share one
//! commit; when idle a lone event is committed at once.

mod files;
mod recovery;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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
pub use files::load_or_create_secret;
use files::{create_private_dir, create_private_file};
use recovery::read_all;

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
