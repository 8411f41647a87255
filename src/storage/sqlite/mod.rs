//! The SQLite backend of the storage traits: one database file, one node's
//! durable store (docs/cluster.md, "Storage backends").
//!
//! Every SQLite call runs on dedicated threads (`writer.rs`): one writer
//! that group-commits, and reader threads on their own connections, each fed
//! by a bounded queue the caller awaits. Handles opened on the same file in
//! one process share those threads and one in-process `writer::Signals`
//! hub (found by canonical path), so several handles act as separate nodes
//! of one gateway exactly as Redis nodes do: they see each other's writes,
//! wake each other's readers and receive each other's notices. Another
//! *process* on the same file is out of scope (its wake-ups and notices
//! would not arrive): SQLite mode is one gateway node.
//!
//! Lease and idempotency expiry use wall-clock milliseconds stored in the
//! rows (SQLite has no TTL). The `Coordinator` half is in `coordinator.rs`.

mod coordinator;
mod jobs;
mod log;
mod schema;
mod sessions;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};

use super::{
    Append, AppendOutcome, EventStore, LogBounds, NodeNotice, ReadBudget, Retention, StorageError,
    StorageResult, StoredEvent,
};
use crate::ids::{EventSeq, SessionId};
use writer::{Readers, Signals, Writer};

pub use schema::{APPLICATION_ID, SCHEMA_VERSION};

/// The threads and signals of one database file, shared by every handle on
/// it in this process.
struct Hub {
    writer: Writer,
    readers: Readers,
    signals: Arc<Signals>,
}

/// Live hubs by canonical database path. A hub whose writer died is
/// replaced on the next open (reopening is how a store recovers).
fn hubs() -> &'static Mutex<HashMap<PathBuf, Weak<Hub>>> {
    static HUBS: OnceLock<Mutex<HashMap<PathBuf, Weak<Hub>>>> = OnceLock::new();
    HUBS.get_or_init(Mutex::default)
}

impl Hub {
    /// The live hub of `path`, or a new one. Blocking (opens SQLite): runs
    /// on a blocking thread, holding the registry lock so two opens of one
    /// file cannot start two writers.
    fn shared(path: &Path) -> StorageResult<Arc<Hub>> {
        let mut hubs = hubs().lock().unwrap_or_else(PoisonError::into_inner);
        hubs.retain(|_, hub| hub.upgrade().is_some_and(|hub| !hub.writer.is_stopped()));
        if let Ok(canonical) = path.canonicalize() {
            if let Some(hub) = hubs.get(&canonical).and_then(Weak::upgrade) {
                return Ok(hub);
            }
        }
        let connection = schema::open_writer(path)?;
        let canonical = path
            .canonicalize()
            .map_err(|error| StorageError::Unavailable(format!("{}: {error}", path.display())))?;
        let readers = (0..writer::READERS)
            .map(|_| schema::open_reader(&canonical))
            .collect::<StorageResult<Vec<_>>>()?;
        let signals = Arc::new(Signals::default());
        let hub = Arc::new(Hub {
            writer: Writer::start(connection, signals.clone())?,
            readers: Readers::start(readers)?,
            signals,
        });
        hubs.insert(canonical, Arc::downgrade(&hub));
        Ok(hub)
    }
}

/// One node's handle on a SQLite storage file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStorage {
    hub: Arc<Hub>,
    node_id: Arc<str>,
    notices: broadcast::Sender<NodeNotice>,
}

impl SqliteStorage {
    /// Opens (creating it and its schema if missing) the database file at
    /// `path` as node `node_id`. The file is created with mode 0600. A
    /// database that is not an arcp-gateway storage file, or has a newer
    /// schema, is refused (`Corrupt`); an unusable path is `Unavailable`.
    pub async fn open(path: impl AsRef<Path>, node_id: &str) -> StorageResult<Self> {
        let path = path.as_ref().to_owned();
        let hub = tokio::task::spawn_blocking(move || Hub::shared(&path))
            .await
            .map_err(|error| StorageError::Unavailable(format!("opening the store: {error}")))??;
        let notices = hub.signals.node(node_id);
        Ok(SqliteStorage {
            hub,
            node_id: Arc::from(node_id),
            notices,
        })
    }

    async fn write<T, F>(&self, op: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(
                &rusqlite::Connection,
                &mut writer::Effects,
            ) -> rusqlite::Result<StorageResult<T>>
            + Send
            + 'static,
    {
        self.hub.writer.write(op).await
    }

    async fn read<T, F>(&self, op: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<StorageResult<T>> + Send + 'static,
    {
        self.hub.readers.read(op).await
    }
}

/// What the SQL functions return: `Err` for an SQL failure (the request is
/// rolled back), `Ok(Err(_))` for a refusal.
type Sql<T> = rusqlite::Result<StorageResult<T>>;

/// A record as stored (serde JSON of the `records.rs` types).
fn to_json<T: serde::Serialize>(value: &T) -> StorageResult<String> {
    serde_json::to_string(value).map_err(|error| StorageError::Corrupt(error.to_string()))
}

/// A stored record; anything that does not decode is `Corrupt`.
fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> StorageResult<T> {
    serde_json::from_str(text).map_err(|error| StorageError::Corrupt(error.to_string()))
}

/// The wall clock in milliseconds: lease and idempotency expiry.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// `now + ttl`, kept within SQLite's integer range.
fn expiry(now_ms: u64, ttl_ms: u64) -> u64 {
    now_ms.saturating_add(ttl_ms).min(i64::MAX as u64)
}

impl EventStore for SqliteStorage {
    async fn create_log(&self, session_id: &SessionId, retention: Retention) -> StorageResult<()> {
        let session_id = session_id.clone();
        self.write(move |connection, _| log::create_log(connection, &session_id, retention))
            .await
    }

    /// The whole batch is one request of the writer (so one transaction);
    /// each append is checked and stored on its own, and a refused append
    /// ends the batch with the ones before it kept, as the trait says.
    async fn append_batch(&self, appends: &[Append]) -> StorageResult<Vec<AppendOutcome>> {
        if appends.iter().any(|append| append.index > i64::MAX as u64) {
            // Beyond SQLite's integers; no job counts that far.
            return Err(StorageError::InvalidId);
        }
        let appends = appends.to_vec();
        self.write(move |connection, effects| {
            let now = now_ms();
            let mut outcomes = Vec::with_capacity(appends.len());
            for append in &appends {
                match log::append_one(connection, append, now, effects)? {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(error) => return Ok(Err(error)),
                }
            }
            Ok(Ok(outcomes))
        })
        .await
    }

    async fn read_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        budget: ReadBudget,
    ) -> StorageResult<Vec<StoredEvent>> {
        let session_id = session_id.clone();
        self.read(move |connection| log::read_after(connection, &session_id, after, budget))
            .await
    }

    async fn bounds(&self, session_id: &SessionId) -> StorageResult<LogBounds> {
        let session_id = session_id.clone();
        self.read(move |connection| log::bounds(connection, &session_id))
            .await
    }

    async fn release_through(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> StorageResult<LogBounds> {
        let session_id = session_id.clone();
        self.write(move |connection, _| log::release_through(connection, &session_id, up_to))
            .await
    }

    /// Subscribes first, then checks the log exists: an append committed
    /// after the check bumps the receiver, one before it is in the log.
    async fn watch(&self, session_id: &SessionId) -> StorageResult<watch::Receiver<u64>> {
        let receiver = self.hub.signals.watch(session_id);
        self.bounds(session_id).await.map(|_| receiver)
    }

    async fn remove_log(&self, session_id: &SessionId) -> StorageResult<()> {
        let session_id = session_id.clone();
        self.write(move |connection, effects| log::remove_log(connection, &session_id, effects))
            .await
    }
}
