//! One conformance suite for the cluster storage traits (`src/storage`): each
//! property is a generic function run against the in-memory backend,
//! against a real `redis-server` and against a SQLite file, with two or
//! three handles acting as separate nodes. Redis-only cases (lost replies, a
//! flushed or damaged Redis, start-up checks) and SQLite-only cases (a dead
//! writer, corrupt rows, reopening) follow at the end.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use arcp_gateway::ids::{JobId, Principal, SessionId};
use arcp_gateway::storage::memory::{MemoryNode, MemoryStorage};
use arcp_gateway::storage::redis::RedisStorage;
use arcp_gateway::storage::sqlite::SqliteStorage;
use arcp_gateway::storage::{
    Append, AppendOutcome, Coordinator, EventKind, EventStore, GoneReason, IdempotencyClaim,
    IdempotencyRecord, JobRecord, JobStatus, LogBounds, NodeNotice, ReadBudget, Retention,
    SessionRecord, StorageError, StreamHolder,
};
use bytes::Bytes;

use crate::support::redis_server::RedisServer;

/// Every property finishes well within this.
const PROPERTY_LIMIT: Duration = Duration::from_secs(30);
const ROOMY: Retention = Retention {
    max_events: 100_000,
    max_bytes: 64 << 20,
};
const ALL: ReadBudget = ReadBudget {
    max_events: 100_000,
    max_bytes: usize::MAX,
};

/// A backend under test: a way to get node handles sharing one state, and
/// to make that state lose everything (what a flushed or restarted store
/// without persistence does).
trait Harness: Send + Sync {
    type Node: EventStore + Coordinator + Clone;
    fn node(&self, name: &str) -> impl Future<Output = Self::Node> + Send;
    fn lose_everything(&self) -> impl Future<Output = ()> + Send;
}

struct MemoryHarness(MemoryStorage);

impl Harness for MemoryHarness {
    type Node = MemoryNode;

    async fn node(&self, name: &str) -> MemoryNode {
        self.0.node(name)
    }

    async fn lose_everything(&self) {
        self.0.clear();
    }
}

struct RedisHarness(RedisServer);

impl RedisHarness {
    async fn start() -> Self {
        RedisHarness(RedisServer::start().await)
    }
}

impl Harness for RedisHarness {
    type Node = RedisStorage;

    async fn node(&self, name: &str) -> RedisStorage {
        let node = RedisStorage::connect(&self.0.url(), name)
            .await
            .expect("connect to the test redis");
        assert!(
            node.wait_pubsub(Duration::from_secs(5)).await,
            "pub/sub of node {name} up within 5 s"
        );
        node
    }

    async fn lose_everything(&self) {
        let mut connection = self.0.connection().await;
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut connection)
            .await
            .expect("FLUSHALL");
    }
}

/// A SQLite file in a temporary directory; every node handle opens it
/// (handles of one process share its writer and signals, as the gateway's
/// would).
struct SqliteHarness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl SqliteHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("storage.sqlite3");
        SqliteHarness { _dir: dir, path }
    }
}

impl Harness for SqliteHarness {
    type Node = SqliteStorage;

    async fn node(&self, name: &str) -> SqliteStorage {
        SqliteStorage::open(&self.path, name)
            .await
            .expect("open the test database")
    }

    /// Deletes every row behind the nodes' backs, through a connection of
    /// its own: what a store that lost its data leaves behind.
    async fn lose_everything(&self) {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let connection = rusqlite::Connection::open(&path).expect("open the test database");
            connection
                .busy_timeout(Duration::from_secs(5))
                .expect("busy timeout");
            let tables: Vec<String> = connection
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                .and_then(|mut statement| {
                    statement
                        .query_map([], |row| row.get(0))?
                        .collect::<Result<_, _>>()
                })
                .expect("list tables");
            assert!(!tables.is_empty(), "the schema exists");
            for table in tables {
                connection
                    .execute(&format!("DELETE FROM \"{table}\""), [])
                    .expect("delete rows");
            }
        })
        .await
        .expect("lose everything");
    }
}

/// Runs each property against every backend (the name is older than the
/// third backend).
macro_rules! on_both_backends {
    ($($property:ident),* $(,)?) => {
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    use crate::storage_conformance::{bounded, MemoryHarness};
                    use arcp_gateway::storage::memory::MemoryStorage;
                    bounded(super::$property(MemoryHarness(MemoryStorage::new()))).await;
                }
            )*
        }
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    use crate::storage_conformance::{bounded, RedisHarness};
                    bounded(super::$property(RedisHarness::start().await)).await;
                }
            )*
        }
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    use crate::storage_conformance::{bounded, SqliteHarness};
                    bounded(super::$property(SqliteHarness::new())).await;
                }
            )*
        }
    };
}

mod coordinator;
mod log;
mod redis_only;
mod sqlite_only;

async fn bounded(property: impl Future<Output = ()>) {
    tokio::time::timeout(PROPERTY_LIMIT, property)
        .await
        .expect("the property finished within its time limit");
}

fn body(job: &JobId, index: u64) -> Bytes {
    Bytes::from(format!("{{\"job\":\"{job}\",\"index\":{index}}}"))
}

fn event(session: &SessionId, job: &JobId, index: u64) -> Append {
    Append {
        session_id: session.clone(),
        job_id: job.clone(),
        index,
        kind: EventKind::Event,
        body: body(job, index),
        fence: None,
    }
}

fn terminal(session: &SessionId, job: &JobId, index: u64) -> Append {
    Append {
        kind: EventKind::Terminal,
        ..event(session, job, index)
    }
}

async fn new_log<N: EventStore>(node: &N, retention: Retention) -> SessionId {
    let session = SessionId::generate();
    node.create_log(&session, retention)
        .await
        .expect("create log");
    session
}

async fn new_session<N: EventStore + Coordinator>(node: &N) -> SessionId {
    let session = new_log(node, ROOMY).await;
    let record = SessionRecord {
        session_id: session.clone(),
        principal: "alice".into(),
        features: vec!["ack".into()],
        created_at_ms: 1,
    };
    assert_eq!(node.create_session(&record).await, Ok(1));
    assert_eq!(
        node.create_session(&record).await,
        Err(StorageError::Exists)
    );
    assert_eq!(node.session(&session).await, Ok(record));
    session
}

async fn new_job<N: Coordinator>(node: &N, session: &SessionId) -> JobId {
    let job = JobId::generate();
    let record = JobRecord {
        session_id: session.clone(),
        job_id: job.clone(),
        principal: "alice".into(),
        agent: "echo".into(),
        submitted_at_ms: 1,
        status: JobStatus::Running,
        owner: None,
        cancel_requested: false,
        descriptor: serde_json::json!({ "job_id": job.as_str() }),
        accepted: serde_json::json!({ "job_id": job.as_str() }),
        terminal: None,
    };
    node.put_job(&record).await.expect("put job");
    assert_eq!(node.put_job(&record).await, Err(StorageError::Exists));
    job
}

async fn stored<N: EventStore>(node: &N, append: Append) -> u64 {
    match node.append_batch(&[append]).await.expect("append") {
        outcomes if outcomes.len() == 1 => match outcomes[0] {
            AppendOutcome::Stored(seq) => seq,
            ref other => panic!("expected a stored event, got {other:?}"),
        },
        other => panic!("one outcome per append, got {other:?}"),
    }
}

fn holder(node: &str, stream: u64) -> StreamHolder {
    StreamHolder {
        node: node.into(),
        stream,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}
