//! The threads that own the SQLite connections, and the in-process signals
//! (wake-ups, node notices) that follow committed writes.
//!
//! - One **writer** thread per database file owns the only writing
//!   connection. Callers hand it a closure through a bounded queue
//!   (`Sender::send().await`: a full queue makes the caller wait, never a
//!   runtime thread) and await a oneshot reply. It group-commits: it takes
//!   everything queued (up to [`MAX_BATCH`]), runs each request in its own
//!   savepoint of one `BEGIN IMMEDIATE` transaction, commits once, then
//!   applies the requests' effects and only then sends their replies. A
//!   writer that died (panicked, or its queue closed) answers every pending
//!   and later request `WriterStopped`, never "committed".
//! - [`READERS`] **reader** threads, each with its own read-only connection,
//!   serve reads from a second bounded queue. WAL mode lets them read the
//!   last committed state while the writer works.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::ids::SessionId;
use crate::storage::{NodeNotice, StorageError, StorageResult};

/// Write requests queued ahead of the writer before callers wait.
const WRITE_QUEUE: usize = 1024;
/// Read requests queued ahead of the readers before callers wait.
const READ_QUEUE: usize = 1024;
/// The most requests one transaction takes.
pub const MAX_BATCH: usize = 256;
/// Reader threads per database file.
pub const READERS: usize = 2;
/// How many notices a node may fall behind before it misses some (it then
/// relies on lease renewal and holder checks, as with the other backends).
const NOTICE_CAPACITY: usize = 256;

/// What a committed write makes happen in this process.
pub enum Effect {
    /// The session's log grew to `seq`.
    Wake { session_id: SessionId, seq: u64 },
    /// The session's log was removed: its watchers' channel closes.
    Forget { session_id: SessionId },
    /// Tell node `node` something.
    Notice { node: String, notice: NodeNotice },
}

pub type Effects = Vec<Effect>;

/// Wake-up senders per session and notice channels per node, shared by
/// every handle on one database file in this process.
#[derive(Default)]
pub struct Signals {
    wakes: Mutex<Wakes>,
    nodes: Mutex<HashMap<String, broadcast::Sender<NodeNotice>>>,
}

#[derive(Default)]
struct Wakes {
    senders: HashMap<SessionId, watch::Sender<u64>>,
    /// Senders nobody listens to are swept once the map reaches this size,
    /// so it stays within twice the number of watched sessions.
    sweep_at: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Signals {
    /// A receiver bumped by every committed append to the session.
    pub fn watch(&self, session_id: &SessionId) -> watch::Receiver<u64> {
        let mut wakes = lock(&self.wakes);
        if wakes.senders.len() >= wakes.sweep_at {
            wakes
                .senders
                .retain(|_, sender| sender.receiver_count() > 0);
            wakes.sweep_at = (wakes.senders.len() * 2).max(64);
        }
        wakes
            .senders
            .entry(session_id.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Node `node`'s notice channel (created on first use).
    pub fn node(&self, node: &str) -> broadcast::Sender<NodeNotice> {
        lock(&self.nodes)
            .entry(node.to_owned())
            .or_insert_with(|| broadcast::channel(NOTICE_CAPACITY).0)
            .clone()
    }

    fn apply(&self, effects: Effects) {
        for effect in effects {
            match effect {
                Effect::Wake { session_id, seq } => {
                    let mut wakes = lock(&self.wakes);
                    if let Some(sender) = wakes.senders.get(&session_id) {
                        if sender.receiver_count() == 0 {
                            wakes.senders.remove(&session_id);
                        } else {
                            sender.send_replace(seq);
                        }
                    }
                }
                Effect::Forget { session_id } => {
                    lock(&self.wakes).senders.remove(&session_id);
                }
                Effect::Notice { node, notice } => {
                    if let Some(sender) = lock(&self.nodes).get(&node) {
                        // No receiver: the node is not listening right now.
                        let _ = sender.send(notice);
                    }
                }
            }
        }
    }
}

/// Maps a SQLite failure to the storage error a caller can act on: a busy,
/// full or failing disk is `Unavailable` (retryable, nothing written); a
/// row of the wrong type or a damaged file is `Corrupt`.
pub fn sql_error(error: rusqlite::Error) -> StorageError {
    use rusqlite::Error;
    match &error {
        Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::ReadOnly => StorageError::Unavailable(error.to_string()),
            _ => StorageError::Corrupt(error.to_string()),
        },
        _ => StorageError::Corrupt(error.to_string()),
    }
}

/// A write request with its reply, its result type erased for the queue.
trait WriteRequest: Send {
    /// Runs the request on the open transaction; returns whether to keep
    /// its changes and how to answer once the transaction has ended.
    fn run(self: Box<Self>, connection: &Connection, effects: &mut Effects) -> Staged;
    /// Answers without running (the transaction could not start).
    fn refuse(self: Box<Self>, error: StorageError);
}

struct Staged {
    keep: bool,
    reply: Box<dyn FnOnce(StorageResult<()>) + Send>,
}

struct Request<T, F> {
    op: F,
    reply: oneshot::Sender<StorageResult<T>>,
}

impl<T, F> WriteRequest for Request<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &mut Effects) -> rusqlite::Result<StorageResult<T>> + Send,
{
    fn run(self: Box<Self>, connection: &Connection, effects: &mut Effects) -> Staged {
        let Request { op, reply } = *self;
        let result = op(connection, effects);
        // A refusal (`Fenced`, `Exists`, ...) keeps what the request wrote
        // before deciding (an append batch keeps its stored part); an SQL
        // failure or a corrupt row rolls the request back.
        let keep = matches!(&result, Ok(Ok(_)))
            || matches!(&result, Ok(Err(error)) if !matches!(error, StorageError::Corrupt(_)));
        let result = result.map_err(sql_error).and_then(|outcome| outcome);
        Staged {
            keep,
            reply: Box::new(move |commit| {
                // The caller may have gone away; its write stands anyway.
                let _ = reply.send(commit.and(result));
            }),
        }
    }

    fn refuse(self: Box<Self>, error: StorageError) {
        let _ = self.reply.send(Err(error));
    }
}

/// The handle on the writer thread.
pub struct Writer {
    queue: mpsc::Sender<Box<dyn WriteRequest>>,
}

impl Writer {
    pub fn start(connection: Connection, signals: Arc<Signals>) -> StorageResult<Writer> {
        let (queue, receiver) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("arcp-storage-writer".into())
            .spawn(move || write_loop(connection, receiver, &signals))
            .map_err(|error| StorageError::Unavailable(format!("writer thread: {error}")))?;
        Ok(Writer { queue })
    }

    /// Runs `op` in the writer's next transaction and answers once that
    /// transaction has committed (or failed). `op` returns `Err` for an SQL
    /// failure (its changes are rolled back) and `Ok(Err(_))` for a refusal.
    pub async fn write<T, F>(&self, op: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Effects) -> rusqlite::Result<StorageResult<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Box::new(Request { op, reply }))
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        // A dropped reply means the writer died before the commit.
        answer.await.map_err(|_| StorageError::WriterStopped)?
    }

    pub fn is_stopped(&self) -> bool {
        self.queue.is_closed()
    }
}

/// Logs a writer thread's death by panic (the queue closes with it).
struct DeathNotice;

impl Drop for DeathNotice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the storage writer thread panicked: every pending and later write \
                 fails with WriterStopped until the store is reopened"
            );
        }
    }
}

fn write_loop(
    mut connection: Connection,
    mut queue: mpsc::Receiver<Box<dyn WriteRequest>>,
    signals: &Signals,
) {
    let _notice = DeathNotice;
    while let Some(first) = queue.blocking_recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        commit_batch(&mut connection, batch, signals);
    }
}

fn commit_batch(connection: &mut Connection, batch: Vec<Box<dyn WriteRequest>>, signals: &Signals) {
    let mut transaction = match connection.transaction_with_behavior(TransactionBehavior::Immediate)
    {
        Ok(transaction) => transaction,
        Err(error) => {
            let error = sql_error(error);
            for request in batch {
                request.refuse(error.clone());
            }
            return;
        }
    };
    let mut staged = Vec::with_capacity(batch.len());
    for request in batch {
        let savepoint = match transaction.savepoint() {
            Ok(savepoint) => savepoint,
            Err(error) => {
                request.refuse(sql_error(error));
                continue;
            }
        };
        let mut effects = Effects::new();
        let outcome = request.run(&savepoint, &mut effects);
        if !outcome.keep {
            // Dropping the savepoint rolls the request back.
            drop(savepoint);
            staged.push((Effects::new(), outcome.reply, None));
            continue;
        }
        match savepoint.commit() {
            Ok(()) => staged.push((effects, outcome.reply, None)),
            Err(error) => staged.push((Effects::new(), outcome.reply, Some(sql_error(error)))),
        }
    }
    match transaction.commit() {
        Ok(()) => {
            for (effects, reply, failure) in staged {
                signals.apply(effects);
                reply(failure.map_or(Ok(()), Err));
            }
        }
        Err(error) => {
            let error = sql_error(error);
            for (_, reply, _) in staged {
                reply(Err(error.clone()));
            }
        }
    }
}

/// A read request with its reply, its result type erased for the queue.
trait ReadRequest: Send {
    fn run(self: Box<Self>, connection: &mut Connection);
}

impl<T, F> ReadRequest for Request<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> rusqlite::Result<StorageResult<T>> + Send,
{
    fn run(self: Box<Self>, connection: &mut Connection) {
        let Request { op, reply } = *self;
        // One read transaction: every statement of `op` sees one snapshot.
        let result = connection.transaction().and_then(|transaction| {
            let outcome = op(&transaction)?;
            transaction.commit()?;
            Ok(outcome)
        });
        let _ = reply.send(result.map_err(sql_error).and_then(|outcome| outcome));
    }
}

type ReadQueue = Arc<Mutex<mpsc::Receiver<Box<dyn ReadRequest>>>>;

/// The handle on the reader threads.
pub struct Readers {
    queue: mpsc::Sender<Box<dyn ReadRequest>>,
}

impl Readers {
    /// Starts one reader thread per connection.
    pub fn start(connections: Vec<Connection>) -> StorageResult<Readers> {
        let (queue, receiver) = mpsc::channel(READ_QUEUE);
        let receiver: ReadQueue = Arc::new(Mutex::new(receiver));
        for connection in connections {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name("arcp-storage-reader".into())
                .spawn(move || read_loop(connection, &receiver))
                .map_err(|error| StorageError::Unavailable(format!("reader thread: {error}")))?;
        }
        Ok(Readers { queue })
    }

    /// Runs `op` in a read transaction on a reader thread.
    pub async fn read<T, F>(&self, op: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<StorageResult<T>> + Send + 'static,
    {
        let stopped = || StorageError::Unavailable("the storage readers stopped".into());
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Box::new(Request { op, reply }))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn read_loop(mut connection: Connection, queue: &Mutex<mpsc::Receiver<Box<dyn ReadRequest>>>) {
    loop {
        // The lock is held only while this thread waits for the next
        // request; another reader takes the one after.
        let Some(request) = lock(queue).blocking_recv() else {
            return;
        };
        request.run(&mut connection);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn insert(
        value: i64,
    ) -> impl FnOnce(&Connection, &mut Effects) -> rusqlite::Result<StorageResult<()>> {
        move |connection, _| {
            connection.execute("INSERT INTO t (x) VALUES (?1)", [value])?;
            Ok(Ok(()))
        }
    }

    fn count(path: &std::path::Path) -> i64 {
        let connection = Connection::open(path).expect("open");
        connection
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_writer_is_writer_stopped_never_committed() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("w.sqlite3");
        let connection = Connection::open(&path).expect("open");
        connection
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)")
            .expect("schema");
        let writer = Arc::new(Writer::start(connection, Arc::default()).expect("writer"));
        assert_eq!(writer.write(insert(1)).await, Ok(()));
        assert_eq!(count(&path), 1, "a reply means committed");

        // Hold the writer busy, so that the next two requests share one
        // transaction: a good insert, then a request that panics.
        let busy = writer.write(|_, _| {
            std::thread::sleep(Duration::from_millis(300));
            Ok(Ok(()))
        });
        let (busy, good, bad) = tokio::join!(
            busy,
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                writer.write(insert(2)).await
            },
            async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                writer
                    .write(|_, _| -> rusqlite::Result<StorageResult<()>> {
                        panic!("a bug in a storage request")
                    })
                    .await
            },
        );
        assert_eq!(busy, Ok(()));
        assert_eq!(
            good,
            Err(StorageError::WriterStopped),
            "its transaction never committed"
        );
        assert_eq!(bad, Err(StorageError::WriterStopped));
        assert_eq!(count(&path), 1, "nothing of the dead batch was committed");
        tokio::time::timeout(Duration::from_secs(5), async {
            while !writer.is_stopped() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the queue closes with the writer");
        assert_eq!(
            writer.write(insert(3)).await,
            Err(StorageError::WriterStopped),
            "later writes too"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusal_keeps_its_writes_a_failure_rolls_them_back() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("w.sqlite3");
        let connection = Connection::open(&path).expect("open");
        connection
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)")
            .expect("schema");
        let writer = Writer::start(connection, Arc::default()).expect("writer");
        let refused = writer
            .write(|connection, _| {
                connection.execute("INSERT INTO t (x) VALUES (1)", [])?;
                Ok(Err::<(), _>(StorageError::JobClosed { terminal_seq: 1 }))
            })
            .await;
        assert_eq!(refused, Err(StorageError::JobClosed { terminal_seq: 1 }));
        let failed = writer
            .write(|connection, _| {
                connection.execute("INSERT INTO t (x) VALUES (2)", [])?;
                connection.execute("INSERT INTO missing (x) VALUES (2)", [])?;
                Ok(Ok(()))
            })
            .await;
        assert!(
            matches!(failed, Err(StorageError::Corrupt(_))),
            "{failed:?}"
        );
        let corrupt = writer
            .write(|connection, _| {
                connection.execute("INSERT INTO t (x) VALUES (3)", [])?;
                Ok(Err::<(), _>(StorageError::Corrupt("bad row".into())))
            })
            .await;
        assert!(matches!(corrupt, Err(StorageError::Corrupt(_))));
        assert_eq!(count(&path), 1, "only the refusal's own write stays");
    }
}
