//! Cases only the SQLite backend can show: corrupt rows, a foreign file,
//! reopening, back-pressure of the bounded writer queue. (A writer thread
//! that dies is tested beside the writer, `storage::sqlite::writer`.)

use super::*;

/// Runs `sql` on the database through a connection of its own.
async fn tamper(harness: &SqliteHarness, sql: String) {
    let path = harness.path.clone();
    tokio::task::spawn_blocking(move || {
        let connection = rusqlite::Connection::open(&path).expect("open");
        connection
            .busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        connection.execute_batch(&sql).expect("tamper");
    })
    .await
    .expect("tamper task");
}

fn assert_corrupt<T: std::fmt::Debug>(what: &str, result: Result<T, StorageError>) {
    match result {
        Err(StorageError::Corrupt(_)) => {}
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_corrupt_rows_are_corrupt_never_a_panic() {
    bounded(async {
        let harness = SqliteHarness::new();
        let node = harness.node("n1").await;
        let session = new_session(&node).await;
        let job = new_job(&node, &session).await;
        for index in 1..=3 {
            stored(&node, event(&session, &job, index)).await;
        }
        let (s, j) = (session.as_str(), job.as_str());
        // Records that are not their JSON, statuses and counts of the wrong
        // type, an event body that is text.
        tamper(
            &harness,
            format!(
                "UPDATE sessions SET record = '{{\"session_id\": 7', holder = 'x' WHERE session_id = '{s}';
                 UPDATE jobs SET status = 'exploded' WHERE job_id = '{j}';
                 UPDATE events SET body = 'text, not a blob' WHERE session_id = '{s}' AND seq = 2;"
            ),
        )
        .await;
        assert_corrupt("session record", node.session(&session).await);
        assert_corrupt(
            "stream holder",
            node.attach(&session, Some(1), &holder("n1", 1)).await,
        );
        assert_corrupt("job status", node.job(&session, &job).await);
        assert_corrupt("event body", node.read_after(&session, 0, ALL).await);
        // The event before the bad one is still readable on its own.
        let budget = ReadBudget {
            max_events: 1,
            max_bytes: usize::MAX,
        };
        assert_eq!(node.read_after(&session, 0, budget).await.unwrap().len(), 1);

        tamper(
            &harness,
            format!(
                "UPDATE logs SET newest = -4 WHERE session_id = '{s}';
                 UPDATE jobs SET record = 'null', status = 'running' WHERE job_id = '{j}';"
            ),
        )
        .await;
        assert_corrupt("negative newest", node.bounds(&session).await);
        assert_corrupt("session state", node.session_state(&session).await);
        assert_corrupt(
            "append onto a corrupt log",
            node.append_batch(&[event(&session, &job, 4)]).await,
        );
        assert_corrupt("job record", node.job(&session, &job).await);
        assert_corrupt(
            "a listed job record",
            node.list_jobs(&Principal::new("alice"), 0, 10).await,
        );
        // Valid records again, then an unreadable ack and terminal payload.
        tamper(
            &harness,
            format!(
                "UPDATE sessions SET holder = NULL, acked = 'lots', record = json_object(
                     'session_id', '{s}', 'principal', 'alice', 'features', json_array(),
                     'created_at_ms', 1) WHERE session_id = '{s}';
                 UPDATE jobs SET terminal = '{{\"final', record = json_object(
                     'session_id', '{s}', 'job_id', '{j}', 'principal', 'alice', 'agent', 'echo',
                     'submitted_at_ms', 1, 'status', 'running', 'owner', NULL,
                     'cancel_requested', json('false')) WHERE job_id = '{j}';"
            ),
        )
        .await;
        assert!(node.session(&session).await.is_ok(), "the record reads again");
        assert_corrupt("textual ack", node.session_state(&session).await);
        assert_corrupt("acknowledge over it", node.acknowledge(&session, 2).await);
        assert_corrupt("terminal payload", node.job(&session, &job).await);
        tamper(
            &harness,
            format!("UPDATE jobs SET terminal = NULL WHERE job_id = '{j}';"),
        )
        .await;
        assert_eq!(
            node.job(&session, &job).await.map(|j| j.terminal),
            Ok(None),
            "it was the terminal payload"
        );

        tamper(
            &harness,
            format!("UPDATE logs SET newest = 'many' WHERE session_id = '{s}';"),
        )
        .await;
        assert_corrupt("text newest", node.release_through(&session, 1).await);
        // Nothing of the refused append was stored, and the store still
        // works for everything else.
        tamper(
            &harness,
            format!("UPDATE logs SET newest = 3 WHERE session_id = '{s}';"),
        )
        .await;
        assert_eq!(node.bounds(&session).await.map(|b| b.newest), Ok(3));
        let other = new_session(&node).await;
        assert_eq!(stored(&node, event(&other, &job, 1)).await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_everything_survives_reopening_and_is_never_renumbered() {
    bounded(async {
        let harness = SqliteHarness::new();
        let (session, job) = {
            let node = harness.node("n1").await;
            let session = new_session(&node).await;
            let job = new_job(&node, &session).await;
            for index in 1..=5 {
                stored(&node, event(&session, &job, index)).await;
            }
            node.release_through(&session, 2).await.expect("ack");
            (session, job)
        };
        // Every handle dropped: the writer and readers stop. A new open
        // starts new ones on the same file.
        let node = harness.node("n1").await;
        assert_eq!(
            node.bounds(&session).await,
            Ok(LogBounds {
                floor: 2,
                newest: 5
            })
        );
        assert_eq!(
            node.append_batch(&[event(&session, &job, 5)]).await,
            Ok(vec![AppendOutcome::Duplicate(Some(5))]),
            "the retry key survives"
        );
        assert_eq!(stored(&node, event(&session, &job, 6)).await, 6);
        assert_eq!(node.resume(&session, Some(1)).await, Ok(2));
        assert_eq!(
            node.job(&session, &job).await.map(|j| j.agent),
            Ok("echo".to_owned())
        );
        let events = node.read_after(&session, 2, ALL).await.expect("read");
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        assert_eq!(events[0].body, body(&job, 3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_foreign_database_is_refused_and_left_alone() {
    bounded(async {
        let harness = SqliteHarness::new();
        tamper(
            &harness,
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER);
             INSERT INTO accounts VALUES (1, 100);"
                .into(),
        )
        .await;
        assert_corrupt(
            "someone else's database",
            SqliteStorage::open(&harness.path, "n1").await.map(drop),
        );
        let path = harness.path.clone();
        let tables = tokio::task::spawn_blocking(move || {
            let connection = rusqlite::Connection::open(&path).expect("open");
            connection
                .query_row("SELECT count(*) FROM sqlite_master", [], |row| {
                    row.get::<_, i64>(0)
                })
                .expect("count")
        })
        .await
        .expect("count task");
        assert_eq!(tables, 1, "no table added to it");
        // A path that cannot be a database is unavailable, not a panic.
        let dir = harness.path.parent().expect("parent").to_owned();
        assert!(matches!(
            SqliteStorage::open(&dir, "n1").await,
            Err(StorageError::Unavailable(_))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_full_writer_queue_is_awaited_and_nothing_is_lost() {
    bounded(async {
        // Far more concurrent appends than the writer queue holds (1024).
        const APPENDERS: u64 = 3_000;
        let harness = SqliteHarness::new();
        let node = harness.node("n1").await;
        let session = new_log(&node, ROOMY).await;
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|_| {
                let (node, session) = (node.clone(), session.clone());
                tokio::spawn(async move {
                    let job = JobId::generate();
                    stored(&node, event(&session, &job, 1)).await
                })
            })
            .collect();
        let mut seqs = BTreeSet::new();
        for task in tasks {
            seqs.insert(task.await.expect("appender"));
        }
        assert_eq!(seqs, (1..=APPENDERS).collect());
    })
    .await;
}

/// The generic wake property never has to wait on a backend whose append
/// replies after commit (the read after the reply already sees the event):
/// here the reader waits first, on another handle opened through another
/// spelling of the path, and the append comes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_waiting_reader_on_another_handle_is_woken_and_released_by_remove() {
    bounded(async {
        let harness = SqliteHarness::new();
        let node = harness.node("n1").await;
        let alias = harness
            .path
            .parent()
            .expect("parent")
            .join(".")
            .join("storage.sqlite3");
        let other = SqliteStorage::open(&alias, "n2").await.expect("open alias");
        let session = new_log(&node, ROOMY).await;
        let mut wake = other.watch(&session).await.expect("watch");
        wake.mark_unchanged();
        assert_eq!(other.read_after(&session, 0, ALL).await, Ok(vec![]));
        let appender = {
            let (node, session) = (node.clone(), session.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stored(&node, event(&session, &JobId::generate(), 1)).await
            })
        };
        tokio::time::timeout(Duration::from_secs(5), wake.changed())
            .await
            .expect("woken within 5 s")
            .expect("watch open");
        assert_eq!(appender.await.expect("appender"), 1);
        assert_eq!(other.read_after(&session, 0, ALL).await.unwrap().len(), 1);
        // Removing the log closes its watchers' channel; watching a missing
        // log is Gone.
        node.remove_log(&session).await.expect("remove");
        let closed = tokio::time::timeout(Duration::from_secs(5), wake.changed())
            .await
            .expect("the watch ends within 5 s");
        assert!(closed.is_err(), "the channel closed");
        assert!(matches!(
            other.watch(&session).await,
            Err(StorageError::Gone(GoneReason::SessionMissing))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_idempotency_keys_have_the_redis_length_bound() {
    bounded(async {
        let harness = SqliteHarness::new();
        let node = harness.node("n1").await;
        let alice = Principal::new("alice");
        let record = IdempotencyRecord {
            session_id: SessionId::generate(),
            job_id: JobId::generate(),
            fingerprint: "f".into(),
        };
        for bad in [String::new(), "k".repeat(257)] {
            assert_eq!(
                node.claim_idempotency(&alice, &bad, &record, 60_000).await,
                Err(StorageError::InvalidId)
            );
        }
        assert_eq!(
            node.claim_idempotency(&alice, &"k".repeat(256), &record, 60_000)
                .await,
            Ok(IdempotencyClaim::Claimed)
        );
    })
    .await;
}

/// Every column a row decoder reads.
const COLUMNS: &[(&str, &str)] = &[
    ("logs", "floor"),
    ("logs", "newest"),
    ("logs", "bytes"),
    ("logs", "max_events"),
    ("logs", "max_bytes"),
    ("events", "seq"),
    ("events", "job_id"),
    ("events", "body"),
    ("log_jobs", "last_index"),
    ("log_jobs", "last_seq"),
    ("log_jobs", "terminal_seq"),
    ("sessions", "record"),
    ("sessions", "issued"),
    ("sessions", "used"),
    ("sessions", "closed"),
    ("sessions", "acked"),
    ("sessions", "holder"),
    ("jobs", "record"),
    ("jobs", "status"),
    ("jobs", "owner"),
    ("jobs", "cancel_requested"),
    ("jobs", "lease_token"),
    ("jobs", "lease_expires_ms"),
    ("jobs", "terminal"),
    ("jobs", "position"),
    ("subscriptions", "subscriber"),
];

fn any_sql_value() -> impl proptest::strategy::Strategy<Value = rusqlite::types::Value> {
    use proptest::prelude::*;
    use rusqlite::types::Value;
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        prop_oneof![Just(-1i64), Just(0), Just(1), Just(2), Just(i64::MAX)]
            .prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        "\\PC{0,12}".prop_map(Value::Text),
        Just(Value::Text("{\"node\":\"n1\",\"stream\":-1}".into())),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Blob),
    ]
}

/// Any value in any column a decoder reads: every operation answers (a
/// result or a `Corrupt`/domain error), nothing panics, and the writer and
/// readers keep serving other sessions.
#[test]
fn sqlite_any_value_in_any_column_is_answered_never_a_panic() {
    use proptest::strategy::Strategy;
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let harness = SqliteHarness::new();
    let node = runtime.block_on(harness.node("n1"));
    let tamper = rusqlite::Connection::open(&harness.path).expect("open");
    tamper
        .busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let mut runner = TestRunner::new(Config {
        cases: 128,
        ..Config::default()
    });
    let strategy = (0..COLUMNS.len(), any_sql_value());
    let started = std::time::Instant::now();
    runner
        .run(&strategy.boxed(), |(column, value)| {
            let (table, column) = COLUMNS[column];
            // A fresh session, job, lease, events and subscriber per case.
            // Its own principal too: rows of earlier cases stay as they were
            // left, and must not stop this one.
            let principal = Principal::new(&format!("p{}", SessionId::generate()));
            let (session, job, lease) = runtime.block_on(async {
                let session = new_session(&node).await;
                let job = JobId::generate();
                let record = JobRecord {
                    session_id: session.clone(),
                    job_id: job.clone(),
                    principal: principal.as_str().into(),
                    agent: "echo".into(),
                    submitted_at_ms: 1,
                    status: JobStatus::Running,
                    owner: None,
                    cancel_requested: false,
                    descriptor: serde_json::Value::Null,
                    accepted: serde_json::Value::Null,
                    terminal: None,
                };
                node.put_job(&record).await.expect("put job");
                let lease = node
                    .acquire_lease(&session, &job, 60_000)
                    .await
                    .expect("lease");
                for index in 1..=3 {
                    stored(
                        &node,
                        Append {
                            fence: Some(lease.clone()),
                            ..event(&session, &job, index)
                        },
                    )
                    .await;
                }
                node.attach(&session, Some(1), &holder("n1", 1))
                    .await
                    .expect("attach");
                node.subscribe(&SessionId::generate(), &session, &job)
                    .await
                    .expect("subscribe");
                (session, job, lease)
            });
            let filter = match table {
                "events" => "session_id = ?2 AND seq = 2",
                "jobs" | "log_jobs" => "job_id = ?3",
                "subscriptions" => "owner = ?2",
                _ => "session_id = ?2",
            };
            // A value a constraint refuses (NULL in NOT NULL, a duplicate
            // key) leaves the row as it was: still a valid case.
            let _ = tamper.execute(
                &format!("UPDATE \"{table}\" SET \"{column}\" = ?1 WHERE {filter}"),
                rusqlite::params![value, session.as_str(), job.as_str()],
            );
            runtime.block_on(async {
                let results: Vec<Result<(), StorageError>> = vec![
                    node.bounds(&session).await.map(drop),
                    node.read_after(&session, 0, ALL).await.map(drop),
                    node.read_after(&session, 1, ALL).await.map(drop),
                    node.session(&session).await.map(drop),
                    node.session_state(&session).await.map(drop),
                    node.job(&session, &job).await.map(drop),
                    node.locate_job(&job).await.map(drop),
                    node.list_jobs(&principal, 0, 1_000).await.map(drop),
                    node.subscribers(&session, &job).await.map(drop),
                    node.append_batch(&[Append {
                        fence: Some(lease.clone()),
                        ..event(&session, &job, 4)
                    }])
                    .await
                    .map(drop),
                    node.release_through(&session, 1).await.map(drop),
                    node.acknowledge(&session, 2).await.map(drop),
                    node.attach(&session, Some(2), &holder("n1", 2))
                        .await
                        .map(drop),
                    node.detach(&session, &holder("n1", 2)).await.map(drop),
                    node.resume(&session, None).await.map(drop),
                    node.renew_lease(&lease, 60_000).await.map(drop),
                    node.request_cancel(&session, &job).await.map(drop),
                    node.close_session(&session).await.map(drop),
                    node.finish_job(&lease, JobStatus::Succeeded, &serde_json::Value::Null)
                        .await,
                ];
                // One corrupt job row never stops the reaper.
                let reaped = node
                    .reap_expired(
                        now_ms(),
                        1_000,
                        &|_: &SessionId, _: &JobId| Bytes::from_static(b"{}"),
                        &serde_json::Value::Null,
                    )
                    .await;
                assert!(
                    reaped.is_ok(),
                    "{table}.{column} = {value:?}: reap {reaped:?}"
                );
                for result in results {
                    assert!(
                        !matches!(
                            result,
                            Err(StorageError::WriterStopped | StorageError::Unavailable(_))
                        ),
                        "{table}.{column} = {value:?}: {result:?}"
                    );
                }
                // The store keeps serving everything else.
                let other = new_log(&node, ROOMY).await;
                assert_eq!(stored(&node, event(&other, &JobId::generate(), 1)).await, 1);
            });
            Ok(())
        })
        .expect("every case answered");
    assert!(started.elapsed() < PROPERTY_LIMIT, "within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_corrupt_job_row_never_stops_the_reaper() {
    bounded(async {
        let harness = SqliteHarness::new();
        let node = harness.node("n1").await;
        let session = new_session(&node).await;
        let mut jobs = Vec::new();
        for _ in 0..3 {
            let job = new_job(&node, &session).await;
            node.acquire_lease(&session, &job, 1).await.expect("lease");
            jobs.push(job);
        }
        // The first expired long ago but its expiry is unreadable; the
        // second's token is a blob; the third is healthy.
        tamper(
            &harness,
            format!(
                "UPDATE jobs SET lease_expires_ms = -1 WHERE job_id = '{}';
                 UPDATE jobs SET lease_token = x'00ff' WHERE job_id = '{}';",
                jobs[0], jobs[1]
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reaped = node
            .reap_expired(
                now_ms(),
                100,
                &|_: &SessionId, _: &JobId| Bytes::from_static(b"{\"lost\":true}"),
                &serde_json::json!({"lost": true}),
            )
            .await
            .expect("the reaper goes on");
        assert_eq!(
            reaped.iter().map(|r| &r.job_id).collect::<Vec<_>>(),
            vec![&jobs[2]]
        );
        assert_eq!(
            node.job(&session, &jobs[2]).await.map(|j| j.status),
            Ok(JobStatus::Lost)
        );
        let events = node.read_after(&session, 0, ALL).await.expect("read");
        assert_eq!(events.len(), 1, "one terminal, for the healthy job only");
        assert_eq!(events[0].job_id, jobs[2]);
    })
    .await;
}
