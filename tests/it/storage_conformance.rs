//! One conformance suite for the cluster storage traits (`src/storage`): each
//! property is a generic function run against the in-memory backend and
//! against a real `redis-server`, with two or three handles acting as
//! separate nodes. Redis-only cases (lost replies, a flushed or damaged
//! Redis, start-up checks) follow at the end.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use arcp_gateway::ids::{JobId, Principal, SessionId};
use arcp_gateway::storage::memory::{MemoryNode, MemoryStorage};
use arcp_gateway::storage::redis::RedisStorage;
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

macro_rules! on_both_backends {
    ($($property:ident),* $(,)?) => {
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    let harness = super::MemoryHarness(super::MemoryStorage::new());
                    super::bounded(super::$property(harness)).await;
                }
            )*
        }
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    let harness = super::RedisHarness::start().await;
                    super::bounded(super::$property(harness)).await;
                }
            )*
        }
    };
}

on_both_backends!(
    sequence_is_gap_free_under_concurrent_appenders_on_two_nodes,
    a_retried_append_is_not_stored_twice,
    nothing_of_a_job_follows_its_terminal,
    retention_by_count_bytes_and_acks_reports_gone_honestly,
    lost_state_is_gone_and_never_renumbered,
    readers_on_another_node_are_woken_by_appends,
    an_expired_lease_gets_exactly_one_terminal_from_racing_reapers,
    a_node_that_lost_its_lease_cannot_append,
    idempotency_keys_are_set_once_per_principal,
    generations_are_consumed_then_issued,
    a_new_stream_ends_the_old_one_on_its_node,
    cancel_reaches_the_owning_node,
    subscriptions_are_shared,
);

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

async fn sequence_is_gap_free_under_concurrent_appenders_on_two_nodes<H: Harness>(harness: H) {
    const JOBS_PER_NODE: usize = 3;
    const EVENTS_PER_JOB: u64 = 60;
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_log(&a, ROOMY).await;
    let mut tasks = Vec::new();
    for node in [&a, &b] {
        for _ in 0..JOBS_PER_NODE {
            let node = node.clone();
            let session = session.clone();
            tasks.push(tokio::spawn(async move {
                let job = JobId::generate();
                let mut seqs = Vec::new();
                // Batches of three, as a job with subscribers would send.
                for first in (1..=EVENTS_PER_JOB).step_by(3) {
                    let batch: Vec<Append> = (first..first + 3)
                        .map(|index| event(&session, &job, index))
                        .collect();
                    for outcome in node.append_batch(&batch).await.expect("append") {
                        match outcome {
                            AppendOutcome::Stored(seq) => seqs.push(seq),
                            other => panic!("fresh append reported {other:?}"),
                        }
                    }
                }
                (job, seqs)
            }));
        }
    }
    let mut all = BTreeSet::new();
    let mut per_job = Vec::new();
    for task in tasks {
        let (job, seqs) = task.await.expect("appender task");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a job's seqs rise");
        all.extend(seqs.iter().copied());
        per_job.push((job, seqs));
    }
    let total = (2 * JOBS_PER_NODE) as u64 * EVENTS_PER_JOB;
    assert_eq!(all, (1..=total).collect(), "every seq once, no gap");
    let events = b.read_after(&session, 0, ALL).await.expect("read");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    for (job, seqs) in per_job {
        for (offset, seq) in seqs.iter().enumerate() {
            let stored = &events[(*seq - 1) as usize];
            assert_eq!(stored.job_id, job);
            assert_eq!(
                stored.body,
                body(&job, offset as u64 + 1),
                "bytes as appended"
            );
        }
    }
    assert_eq!(
        a.bounds(&session).await,
        Ok(LogBounds {
            floor: 0,
            newest: total
        })
    );
}

async fn a_retried_append_is_not_stored_twice<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_log(&a, ROOMY).await;
    let job = JobId::generate();
    let other = JobId::generate();
    assert_eq!(stored(&a, event(&session, &job, 1)).await, 1);
    assert_eq!(stored(&a, event(&session, &other, 1)).await, 2);
    assert_eq!(stored(&a, event(&session, &job, 2)).await, 3);
    // The reply of the last batch was "lost": the same batch again, through
    // another node, stores nothing.
    let retry = [event(&session, &job, 1), event(&session, &job, 2)];
    assert_eq!(
        b.append_batch(&retry).await,
        Ok(vec![
            AppendOutcome::Duplicate(None),
            AppendOutcome::Duplicate(Some(3))
        ])
    );
    // A partly applied batch: the applied part is skipped, the rest stored.
    let retry = [event(&session, &job, 2), event(&session, &job, 3)];
    assert_eq!(
        b.append_batch(&retry).await,
        Ok(vec![
            AppendOutcome::Duplicate(Some(3)),
            AppendOutcome::Stored(4)
        ])
    );
    let events = a.read_after(&session, 0, ALL).await.expect("read");
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].body, body(&job, 3));
}

async fn nothing_of_a_job_follows_its_terminal<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let session = new_log(&a, ROOMY).await;
    let job = JobId::generate();
    assert_eq!(stored(&a, event(&session, &job, 1)).await, 1);
    assert_eq!(stored(&a, terminal(&session, &job, 2)).await, 2);
    assert_eq!(
        a.append_batch(&[terminal(&session, &job, 2)]).await,
        Ok(vec![AppendOutcome::Duplicate(Some(2))]),
        "a retried terminal is a duplicate"
    );
    assert_eq!(
        a.append_batch(&[event(&session, &job, 3)]).await,
        Err(StorageError::JobClosed { terminal_seq: 2 })
    );
    assert_eq!(a.bounds(&session).await.map(|b| b.newest), Ok(2));
}

async fn retention_by_count_bytes_and_acks_reports_gone_honestly<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let job = JobId::generate();
    // By count.
    let by_count = new_log(
        &a,
        Retention {
            max_events: 5,
            max_bytes: 1 << 20,
        },
    )
    .await;
    for index in 1..=10 {
        stored(&a, event(&by_count, &job, index)).await;
    }
    assert_eq!(
        b.bounds(&by_count).await,
        Ok(LogBounds {
            floor: 5,
            newest: 10
        })
    );
    assert_eq!(
        b.read_after(&by_count, 4, ALL).await,
        Err(StorageError::Gone(GoneReason::Evicted { floor: 5 }))
    );
    let kept = b.read_after(&by_count, 5, ALL).await.expect("read");
    assert_eq!(
        kept.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10]
    );
    assert_eq!(
        b.read_after(&by_count, 11, ALL).await,
        Err(StorageError::RolledBack {
            cursor: 11,
            newest: 10
        })
    );
    assert_eq!(b.read_after(&by_count, 10, ALL).await, Ok(vec![]));
    // A read budget: by count, then by bytes (at least one event).
    let budget = ReadBudget {
        max_events: 2,
        max_bytes: usize::MAX,
    };
    assert_eq!(b.read_after(&by_count, 5, budget).await.unwrap().len(), 2);
    let budget = ReadBudget {
        max_events: 100,
        max_bytes: 1,
    };
    assert_eq!(b.read_after(&by_count, 5, budget).await.unwrap().len(), 1);

    // By bytes: each body is the same size; three fit.
    let size = body(&job, 1).len() as u64;
    let by_bytes = new_log(
        &a,
        Retention {
            max_events: 1000,
            max_bytes: 3 * size + size / 2,
        },
    )
    .await;
    for index in 1..=9 {
        stored(&a, event(&by_bytes, &job, index)).await;
    }
    assert_eq!(
        b.bounds(&by_bytes).await,
        Ok(LogBounds {
            floor: 6,
            newest: 9
        })
    );
    // One event larger than the cap is still kept (the newest always is).
    let huge = Append {
        body: Bytes::from(vec![b'x'; (4 * size) as usize]),
        ..event(&by_bytes, &job, 10)
    };
    assert_eq!(stored(&a, huge).await, 10);
    assert_eq!(
        b.bounds(&by_bytes).await,
        Ok(LogBounds {
            floor: 9,
            newest: 10
        })
    );
    // Then the bytes are counted right again after it leaves.
    for index in 11..=13 {
        stored(&a, event(&by_bytes, &job, index)).await;
    }
    assert_eq!(b.bounds(&by_bytes).await.map(|b| b.floor), Ok(10));

    // By acks (§6.5), from another node.
    let acked = new_log(&a, ROOMY).await;
    for index in 1..=6 {
        stored(&a, event(&acked, &job, index)).await;
    }
    assert_eq!(
        b.release_through(&acked, 4).await,
        Ok(LogBounds {
            floor: 4,
            newest: 6
        })
    );
    assert_eq!(
        a.release_through(&acked, 2).await.map(|b| b.floor),
        Ok(4),
        "acks never go backwards"
    );
    assert_eq!(
        a.read_after(&acked, 3, ALL).await,
        Err(StorageError::Gone(GoneReason::Evicted { floor: 4 }))
    );
    assert_eq!(
        a.release_through(&acked, 99).await,
        Ok(LogBounds {
            floor: 6,
            newest: 6
        }),
        "an ack beyond the newest stops at the newest"
    );
    assert_eq!(stored(&a, event(&acked, &job, 7)).await, 7);
    assert_eq!(a.read_after(&acked, 6, ALL).await.unwrap().len(), 1);
}

async fn lost_state_is_gone_and_never_renumbered<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_session(&a).await;
    let job = JobId::generate();
    for index in 1..=3 {
        stored(&a, event(&session, &job, index)).await;
    }
    harness.lose_everything().await;
    assert_gone(b.read_after(&session, 2, ALL).await);
    assert_gone(b.read_after(&session, 0, ALL).await);
    assert_gone(b.bounds(&session).await);
    assert_gone(b.session(&session).await);
    assert_gone(b.attach(&session, Some(1), &holder("n2", 1)).await);
    assert_gone(b.resume(&session, Some(1)).await);
    // The job keeps appending: refused, never restarted at seq 1.
    assert_gone(a.append_batch(&[event(&session, &job, 4)]).await);
    assert_gone(b.release_through(&session, 3).await);
    assert_gone(b.bounds(&session).await);
}

fn assert_gone<T: std::fmt::Debug>(result: Result<T, StorageError>) {
    match result {
        Err(StorageError::Gone(GoneReason::SessionMissing)) => {}
        other => panic!("expected Gone(SessionMissing), got {other:?}"),
    }
}

async fn readers_on_another_node_are_woken_by_appends<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_log(&a, ROOMY).await;
    let job = JobId::generate();
    let mut wake = b.watch(&session).await.expect("watch");
    wake.mark_unchanged();
    let mut cursor = 0;
    for index in 1..=20 {
        stored(&a, event(&session, &job, index)).await;
        // Wait for a wake only when the log has nothing new for us: a wake
        // is a hint, the log is the truth.
        loop {
            let events = b.read_after(&session, cursor, ALL).await.expect("read");
            if let Some(last) = events.last() {
                cursor = last.seq;
                break;
            }
            tokio::time::timeout(Duration::from_secs(5), wake.changed())
                .await
                .expect("a wake-up within 5 s of an append on another node")
                .expect("watch open");
        }
    }
    assert_eq!(cursor, 20);
}

fn node_lost(session: &SessionId, job: &JobId) -> Bytes {
    Bytes::from(format!(
        "{{\"session\":\"{session}\",\"job\":\"{job}\",\"error\":\"INTERNAL_ERROR\",\"message\":\"gateway node lost\"}}"
    ))
}

async fn an_expired_lease_gets_exactly_one_terminal_from_racing_reapers<H: Harness>(harness: H) {
    let owner = harness.node("n1").await;
    let reapers = [
        harness.node("n2").await,
        harness.node("n3").await,
        harness.node("n4").await,
    ];
    let session = new_session(&owner).await;
    let mut jobs = Vec::new();
    for _ in 0..5 {
        let job = new_job(&owner, &session).await;
        let lease = owner
            .acquire_lease(&session, &job, 1_000)
            .await
            .expect("lease");
        let first = Append {
            fence: Some(lease.clone()),
            ..event(&session, &job, 1)
        };
        stored(&owner, first).await;
        jobs.push((job, lease));
    }
    // A job that ends properly is never reaped.
    let (done, done_lease) = jobs.pop().expect("a job");
    let last = Append {
        fence: Some(done_lease.clone()),
        ..terminal(&session, &done, 2)
    };
    stored(&owner, last).await;
    owner
        .finish_job(&done_lease, JobStatus::Succeeded)
        .await
        .expect("finish");
    let before = owner.bounds(&session).await.expect("bounds").newest;

    // Nothing is reaped while leases live.
    let now = now_ms();
    assert_eq!(
        reapers[0].reap_expired(now, 100, &node_lost).await,
        Ok(vec![])
    );
    // The owner node dies: nothing renews. The reapers race.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let now = now_ms();
    let (r1, r2, r3) = tokio::join!(
        reapers[0].reap_expired(now, 100, &node_lost),
        reapers[1].reap_expired(now, 100, &node_lost),
        reapers[2].reap_expired(now, 100, &node_lost),
    );
    let mut reaped: Vec<_> = [r1, r2, r3]
        .into_iter()
        .flat_map(|result| result.expect("reap"))
        .collect();
    reaped.sort_by(|x, y| x.job_id.cmp(&y.job_id));
    let mut expected: Vec<JobId> = jobs.iter().map(|(job, _)| job.clone()).collect();
    expected.sort();
    assert_eq!(
        reaped.iter().map(|r| r.job_id.clone()).collect::<Vec<_>>(),
        expected,
        "each lost job reaped once, across all reapers"
    );
    let events = owner.read_after(&session, 0, ALL).await.expect("read");
    assert_eq!(events.len() as u64, before + jobs.len() as u64);
    for (job, lease) in &jobs {
        let theirs: Vec<_> = events.iter().filter(|e| &e.job_id == job).collect();
        assert_eq!(
            theirs.len(),
            2,
            "the event before the loss, then one terminal"
        );
        assert_eq!(theirs[1].body, node_lost(&session, job));
        let record = reapers[0].job(&session, job).await.expect("job record");
        assert_eq!(record.status, JobStatus::Lost);
        assert_eq!(record.owner.as_deref(), Some("n1"));
        // The old owner comes back: nothing more of that job is stored.
        let zombie = Append {
            fence: Some(lease.clone()),
            ..event(&session, job, 2)
        };
        assert_eq!(
            owner.append_batch(&[zombie]).await,
            Err(StorageError::Fenced)
        );
        let unfenced = event(&session, job, 2);
        assert!(matches!(
            owner.append_batch(&[unfenced]).await,
            Err(StorageError::JobClosed { .. })
        ));
    }
    assert_eq!(
        owner.job(&session, &done).await.map(|j| j.status),
        Ok(JobStatus::Succeeded)
    );
    // A later pass finds nothing.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        reapers[1].reap_expired(now_ms(), 100, &node_lost).await,
        Ok(vec![])
    );
}

async fn a_node_that_lost_its_lease_cannot_append<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_session(&a).await;
    let job = new_job(&a, &session).await;
    assert_eq!(
        a.acquire_lease(&session, &JobId::generate(), 1000).await,
        Err(StorageError::NotFound)
    );
    let old = a.acquire_lease(&session, &job, 1_000).await.expect("lease");
    assert_eq!(
        b.acquire_lease(&session, &job, 1_000).await,
        Err(StorageError::LeaseHeld)
    );
    assert_eq!(a.renew_lease(&old, 1_000).await, Ok(false));
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // The lease lapsed (a long GC pause, a partition); another node took it.
    let new = b.acquire_lease(&session, &job, 5000).await.expect("lease");
    assert_ne!(new.token, old.token);
    let stale = Append {
        fence: Some(old.clone()),
        ..event(&session, &job, 1)
    };
    assert_eq!(a.append_batch(&[stale]).await, Err(StorageError::Fenced));
    assert_eq!(a.renew_lease(&old, 1_000).await, Err(StorageError::Fenced));
    assert_eq!(
        a.finish_job(&old, JobStatus::Failed).await,
        Err(StorageError::Fenced)
    );
    let fresh = Append {
        fence: Some(new.clone()),
        ..event(&session, &job, 1)
    };
    assert_eq!(stored(&b, fresh).await, 1);
    assert_eq!(b.renew_lease(&new, 5000).await, Ok(false));
    assert_eq!(
        a.job(&session, &job).await.unwrap().owner.as_deref(),
        Some("n2")
    );
}

async fn idempotency_keys_are_set_once_per_principal<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let alice = Principal::new("alice");
    let bob = Principal::new("bob");
    let first = IdempotencyRecord {
        session_id: SessionId::generate(),
        job_id: JobId::generate(),
        fingerprint: "f1".into(),
    };
    let second = IdempotencyRecord {
        job_id: JobId::generate(),
        fingerprint: "f2".into(),
        ..first.clone()
    };
    assert_eq!(
        a.claim_idempotency(&alice, "key-1", &first, 60_000).await,
        Ok(IdempotencyClaim::Claimed)
    );
    assert_eq!(
        b.claim_idempotency(&alice, "key-1", &second, 60_000).await,
        Ok(IdempotencyClaim::Existing(first.clone())),
        "a resubmission through another node finds the first job"
    );
    assert_eq!(
        b.claim_idempotency(&bob, "key-1", &second, 60_000).await,
        Ok(IdempotencyClaim::Claimed),
        "another principal's key never meets alice's"
    );
    // Racing claims on two nodes: exactly one wins.
    let (x, y) = tokio::join!(
        a.claim_idempotency(&alice, "race", &first, 60_000),
        b.claim_idempotency(&alice, "race", &second, 60_000),
    );
    let claimed = [&x, &y]
        .iter()
        .filter(|claim| ***claim == Ok(IdempotencyClaim::Claimed))
        .count();
    assert_eq!(claimed, 1, "{x:?} {y:?}");
    // Keys expire.
    assert_eq!(
        a.claim_idempotency(&alice, "short", &first, 100).await,
        Ok(IdempotencyClaim::Claimed)
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        b.claim_idempotency(&alice, "short", &second, 100).await,
        Ok(IdempotencyClaim::Claimed)
    );
}

fn holder(node: &str, stream: u64) -> StreamHolder {
    StreamHolder {
        node: node.into(),
        stream,
    }
}

async fn generations_are_consumed_then_issued<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_session(&a).await;
    assert_eq!(
        b.attach(&session, Some(1), &holder("n2", 1)).await,
        Ok((2, None))
    );
    assert_eq!(a.resume(&session, Some(2)).await, Ok(3));
    assert_eq!(
        b.resume(&session, Some(1)).await,
        Err(StorageError::GenerationSuperseded),
        "a consumed generation's elders stop working on every node"
    );
    assert_eq!(
        b.resume(&session, Some(99)).await,
        Err(StorageError::GenerationSuperseded),
        "a generation never issued is refused"
    );
    // Two nodes present the same (newest) generation at once: each gets its
    // own new generation, and afterwards the older of the two no longer works.
    let (h7, h8) = (holder("n1", 7), holder("n2", 8));
    let (x, y) = tokio::join!(
        a.attach(&session, Some(3), &h7),
        b.attach(&session, Some(3), &h8),
    );
    let (gx, gy) = (x.expect("attach").0, y.expect("attach").0);
    assert_eq!(BTreeSet::from([gx, gy]), BTreeSet::from([4, 5]));
    assert_eq!(a.resume(&session, Some(5)).await, Ok(6));
    assert_eq!(
        a.resume(&session, Some(4)).await,
        Err(StorageError::GenerationSuperseded)
    );
    // A closed session refuses a stream but a resume reopens it.
    a.close_session(&session).await.expect("close");
    assert_eq!(
        b.attach(&session, Some(6), &holder("n2", 9)).await,
        Err(StorageError::SessionClosed)
    );
    assert_eq!(b.resume(&session, Some(6)).await, Ok(7));
    assert_eq!(
        b.attach(&session, None, &holder("n2", 9))
            .await
            .map(|r| r.0),
        Ok(8)
    );
}

async fn next_notice(notices: &mut tokio::sync::broadcast::Receiver<NodeNotice>) -> NodeNotice {
    tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .expect("a notice within 5 s")
        .expect("notice channel open")
}

async fn a_new_stream_ends_the_old_one_on_its_node<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let session = new_session(&a).await;
    let mut b_notices = b.notices();
    let mut a_notices = a.notices();
    let (generation, previous) = b
        .attach(&session, Some(1), &holder("n2", 41))
        .await
        .expect("attach on n2");
    assert_eq!(previous, None);
    let (_, previous) = a
        .attach(&session, Some(generation), &holder("n1", 42))
        .await
        .expect("attach on n1");
    assert_eq!(previous, Some(holder("n2", 41)));
    assert_eq!(
        next_notice(&mut b_notices).await,
        NodeNotice::StreamReplaced {
            session_id: session.clone(),
            stream: 41
        }
    );
    assert!(a_notices.try_recv().is_err(), "n1 was not told anything");
    // The replaced stream detaching changes nothing; the current one does.
    assert_eq!(b.detach(&session, &holder("n2", 41)).await, Ok(false));
    assert_eq!(b.detach(&session, &holder("n1", 42)).await, Ok(true));
    let (_, previous) = a
        .attach(&session, None, &holder("n1", 43))
        .await
        .expect("attach");
    assert_eq!(previous, None);
}

async fn cancel_reaches_the_owning_node<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let owner = harness.node("n2").await;
    let session = new_session(&a).await;
    let job = new_job(&a, &session).await;
    let mut notices = owner.notices();
    let lease = owner
        .acquire_lease(&session, &job, 5000)
        .await
        .expect("lease");
    assert_eq!(owner.renew_lease(&lease, 5000).await, Ok(false));
    assert_eq!(a.request_cancel(&session, &job).await, Ok("n2".to_owned()));
    assert_eq!(
        next_notice(&mut notices).await,
        NodeNotice::CancelRequested {
            session_id: session.clone(),
            job_id: job.clone()
        }
    );
    assert_eq!(
        owner.renew_lease(&lease, 5000).await,
        Ok(true),
        "renewal carries the cancel too, should the notice be lost"
    );
    assert!(a.job(&session, &job).await.unwrap().cancel_requested);
    assert_eq!(
        a.request_cancel(&session, &JobId::generate()).await,
        Err(StorageError::NotFound)
    );
}

async fn subscriptions_are_shared<H: Harness>(harness: H) {
    let a = harness.node("n1").await;
    let b = harness.node("n2").await;
    let owner = new_session(&a).await;
    let job = new_job(&a, &owner).await;
    let first = SessionId::generate();
    let second = SessionId::generate();
    b.subscribe(&second, &owner, &job).await.expect("subscribe");
    a.subscribe(&first, &owner, &job).await.expect("subscribe");
    a.subscribe(&first, &owner, &job).await.expect("again");
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(b.subscribers(&owner, &job).await, Ok(expected));
    assert_eq!(
        b.subscribe(&SessionId::generate(), &owner, &JobId::generate())
            .await,
        Err(StorageError::NotFound)
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

// ---- Redis only ---------------------------------------------------------

async fn redis_node(server: &RedisServer, name: &str) -> RedisStorage {
    RedisHarness::node_on(server, name).await
}

impl RedisHarness {
    async fn node_on(server: &RedisServer, name: &str) -> RedisStorage {
        let node = RedisStorage::connect(&server.url(), name)
            .await
            .expect("connect");
        assert!(node.wait_pubsub(Duration::from_secs(5)).await);
        node
    }
}

async fn command(server: &RedisServer, args: &[&str]) -> redis::Value {
    let mut connection = server.connection().await;
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("{args:?}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_append_whose_reply_was_lost_is_retried_without_a_duplicate() {
    bounded(async {
        let server = RedisServer::start().await;
        let node = redis_node(&server, "n1").await;
        let session = new_log(&node, ROOMY).await;
        let job = JobId::generate();
        assert_eq!(stored(&node, event(&session, &job, 1)).await, 1);
        // Writes stall past the client's 2 s response timeout, then apply:
        // the client sees an error although the append happened.
        command(&server, &["CLIENT", "PAUSE", "3000", "WRITE"]).await;
        let lost = node.append_batch(&[event(&session, &job, 2)]).await;
        assert!(
            matches!(lost, Err(StorageError::Indeterminate(_))),
            "a write without a reply is not reported committed: {lost:?}"
        );
        assert!(lost.unwrap_err().is_retryable());
        // The retry (same job, same index) after Redis resumes.
        let retried = loop {
            match node.append_batch(&[event(&session, &job, 2)]).await {
                Ok(outcomes) => break outcomes,
                Err(error) => {
                    assert!(error.is_retryable(), "{error:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(retried, vec![AppendOutcome::Duplicate(Some(2))]);
        let events = node.read_after(&session, 0, ALL).await.expect("read");
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(stored(&node, event(&session, &job, 3)).await, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_log_missing_its_events_is_history_lost_not_a_gap() {
    bounded(async {
        let server = RedisServer::start().await;
        let node = redis_node(&server, "n1").await;
        let session = new_log(&node, ROOMY).await;
        let job = JobId::generate();
        for index in 1..=5 {
            stored(&node, event(&session, &job, index)).await;
        }
        // Part of the stream vanishes while the meta survives.
        let log = format!("arcp:{{{session}}}:log");
        command(&server, &["XDEL", &log, "3-0"]).await;
        assert_eq!(
            node.read_after(&session, 1, ALL).await,
            Err(StorageError::Gone(GoneReason::HistoryLost))
        );
        assert_eq!(node.read_after(&session, 3, ALL).await.unwrap().len(), 2);
        command(&server, &["DEL", &log]).await;
        assert_eq!(
            node.read_after(&session, 4, ALL).await,
            Err(StorageError::Gone(GoneReason::HistoryLost))
        );
        // Appends continue numbering from the meta, never from 1.
        assert_eq!(stored(&node, event(&session, &job, 6)).await, 6);
        assert_eq!(
            node.read_after(&session, 4, ALL).await,
            Err(StorageError::Gone(GoneReason::HistoryLost))
        );
        assert_eq!(node.read_after(&session, 5, ALL).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ids_that_could_break_a_key_are_refused() {
    bounded(async {
        let server = RedisServer::start().await;
        let node = redis_node(&server, "n1").await;
        for bad in ["sess_}x", "sess_{x}", "a:b", "a b", ""] {
            let session = SessionId::from_client(bad);
            assert_eq!(
                node.create_log(&session, ROOMY).await,
                Err(StorageError::InvalidId)
            );
            assert_eq!(
                node.read_after(&session, 0, ALL).await,
                Err(StorageError::InvalidId)
            );
        }
        assert!(matches!(
            RedisStorage::connect(&server.url(), "node:1").await,
            Err(StorageError::InvalidId)
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_is_unavailable_at_connect() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("unix://{}", dir.path().join("nobody.sock").display());
        let result = RedisStorage::connect(&url, "n1").await;
        assert!(
            matches!(result, Err(StorageError::Unavailable(_))),
            "{:?}",
            result.err()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_persistence_check_refuses_eviction_and_no_aof() {
    use arcp_gateway::storage::redis::{check_persistence, PersistenceProblem, PersistenceWarning};
    bounded(async {
        let server = RedisServer::start().await;
        let node = redis_node(&server, "n1").await;
        let report = check_persistence(&mut node.connection())
            .await
            .expect("report");
        assert!(report.aof_enabled);
        assert_eq!(report.maxmemory_policy, "noeviction");
        assert_eq!(report.problems, vec![]);
        assert_eq!(
            report.warnings,
            vec![PersistenceWarning::FsyncNotAlways("everysec".into())]
        );
        assert!(report.clone().into_result().is_ok());

        command(&server, &["CONFIG", "SET", "appendfsync", "always"]).await;
        command(
            &server,
            &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
        )
        .await;
        command(&server, &["CONFIG", "SET", "appendonly", "no"]).await;
        let report = check_persistence(&mut node.connection())
            .await
            .expect("report");
        assert_eq!(report.warnings, vec![]);
        assert_eq!(
            report.problems,
            vec![
                PersistenceProblem::Evicts("allkeys-lru".into()),
                PersistenceProblem::AofDisabled
            ]
        );
        let message = report.into_result().expect_err("refused");
        assert!(message.contains("noeviction") && message.contains("appendonly yes"));
    })
    .await;
}

#[test]
fn cluster_mode_requires_an_explicit_secret() {
    use arcp_gateway::storage::{require_explicit_secret, ClusterConfigError};
    assert_eq!(
        require_explicit_secret(None),
        Err(ClusterConfigError::SecretRequired)
    );
    assert_eq!(
        require_explicit_secret(Some("")),
        Err(ClusterConfigError::SecretRequired)
    );
    assert_eq!(require_explicit_secret(Some("s3cret")), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_with_aof_loses_nothing_acknowledged_and_recovers() {
    bounded(async {
        let mut server = RedisServer::start().await;
        // Every acknowledged write on disk before the reply.
        command(&server, &["CONFIG", "SET", "appendfsync", "always"]).await;
        let writer = redis_node(&server, "n1").await;
        let reader = redis_node(&server, "n2").await;
        let session = new_session(&writer).await;
        let job = JobId::generate();
        for index in 1..=5 {
            stored(&writer, event(&session, &job, index)).await;
        }
        let mut wake = reader.watch(&session).await.expect("watch");

        server.kill();
        let down = writer.append_batch(&[event(&session, &job, 6)]).await;
        match &down {
            Err(error) => assert!(error.is_retryable(), "{error:?}"),
            Ok(outcomes) => panic!("an append to a dead Redis succeeded: {outcomes:?}"),
        }
        let read = reader.read_after(&session, 0, ALL).await;
        assert!(
            matches!(read, Err(StorageError::Unavailable(_))),
            "{read:?}"
        );

        server.restart().await;
        // The same nodes recover by themselves; the retry of event 6 is
        // stored once whatever happened to the first attempt.
        let retried = loop {
            match writer.append_batch(&[event(&session, &job, 6)]).await {
                Ok(outcomes) => break outcomes,
                Err(error) => {
                    assert!(error.is_retryable(), "{error:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert!(
            matches!(
                retried.as_slice(),
                [AppendOutcome::Stored(6) | AppendOutcome::Duplicate(Some(6))]
            ),
            "{retried:?}"
        );
        let events = loop {
            match reader.read_after(&session, 0, ALL).await {
                Ok(events) => break events,
                Err(error) => {
                    assert!(error.is_retryable(), "{error:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6],
            "nothing acknowledged lost, nothing renumbered"
        );
        assert_eq!(
            reader.session(&session).await.map(|r| r.principal),
            Ok("alice".into())
        );
        // The reader's pub/sub came back too: new appends wake it. (Its
        // reconnect bumps every watch once; three rounds need at least two
        // real wake-ups.)
        for index in 7..=9 {
            wake.mark_unchanged();
            stored(&writer, event(&session, &job, index)).await;
            tokio::time::timeout(Duration::from_secs(5), wake.changed())
                .await
                .expect("a wake-up after Redis came back")
                .expect("watch open");
        }
        assert_eq!(*wake.borrow(), 9, "the newest wake carries seq 9");
    })
    .await;
}
