//! Cases only Redis can show: lost replies, damaged or flushed data, a
//! killed server, start-up checks.

use super::*;

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

/// A Redis server, a node on it, and a session's log holding the first
/// event of a job.
async fn one_event_stored() -> (RedisServer, RedisStorage, SessionId, JobId) {
    let server = RedisServer::start().await;
    let node = redis_node(&server, "n1").await;
    let session = new_log(&node, ROOMY).await;
    let job = JobId::generate();
    assert_eq!(stored(&node, event(&session, &job, 1)).await, 1);
    (server, node, session, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_append_whose_reply_was_lost_is_retried_without_a_duplicate() {
    bounded(async {
        let (server, node, session, job) = one_event_stored().await;
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

/// The ids of the pub/sub clients Redis has now.
async fn pubsub_client_ids(server: &RedisServer) -> Vec<String> {
    let mut connection = server.connection().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut connection)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// A node's wake connection is pinged every 5 s; subscribed, Redis answers
/// `["pong", ""]`. That reply once failed to parse as a string, so every
/// node dropped and re-made its pub/sub connection at each ping, and live
/// delivery stalled ~100 ms (the reconnect delay) every 5 s (found by
/// `cargo bench --bench cluster`). The same connection must survive pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_the_wake_connection_survives_its_keepalive_pings() {
    bounded(async {
        let server = RedisServer::start().await;
        let _node = redis_node(&server, "n1").await;
        let before = pubsub_client_ids(&server).await;
        assert_eq!(before.len(), 1, "one pub/sub connection per node");
        // Past the first ping (5 s) and the 100 ms a reconnect would wait.
        tokio::time::sleep(Duration::from_millis(6_500)).await;
        assert_eq!(
            pubsub_client_ids(&server).await,
            before,
            "the pub/sub connection was replaced: its ping was taken for a failure"
        );
    })
    .await;
}

/// A batch goes to Redis as one pipeline of script calls. After Redis lost
/// its script cache (a restart, `SCRIPT FLUSH`) every call in it is refused
/// with NOSCRIPT and none runs; the batch is sent again behind a load, and
/// each event is stored once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_batch_after_the_script_cache_was_flushed_is_stored_once_in_order() {
    bounded(async {
        let (server, node, session, job) = one_event_stored().await;
        command(&server, &["SCRIPT", "FLUSH"]).await;
        let batch: Vec<Append> = (2..=5).map(|index| event(&session, &job, index)).collect();
        let outcomes = node.append_batch(&batch).await.expect("batch");
        assert_eq!(
            outcomes,
            (2..=5).map(AppendOutcome::Stored).collect::<Vec<_>>()
        );
        // The same batch again (a retry after a lost reply): all duplicates
        // (the job's newest index still knows its seq, older ones do not).
        let again = node.append_batch(&batch).await.expect("retry");
        assert_eq!(
            again,
            vec![
                AppendOutcome::Duplicate(None),
                AppendOutcome::Duplicate(None),
                AppendOutcome::Duplicate(None),
                AppendOutcome::Duplicate(Some(5)),
            ]
        );
        let events = node.read_after(&session, 0, ALL).await.expect("read");
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
    })
    .await;
}
