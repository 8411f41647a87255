//! The reaper of a lost job, deterministically: a "node" (a plain storage
//! handle) appends a job's events and copies only some of them to a
//! subscriber, as a node killed between an event and its copies leaves
//! them, and stops renewing its lease. A real `ClusterNode`'s reaper pass
//! must then give the subscriber the missing copies and the terminal, in
//! order, exactly once (§7.6: no gap for subscribers either).

use std::sync::Arc;
use std::time::Duration;

use arcp_gateway::cluster::log::{decode_body, encode_body};
use arcp_gateway::cluster::{ClusterConfig, ClusterNode};
use arcp_gateway::ids::{JobId, MessageId, SessionId};
use arcp_gateway::metrics::Metrics;
use arcp_gateway::storage::redis::RedisStorage;
use arcp_gateway::storage::{
    Append, Coordinator, EventKind, EventStore, JobRecord, JobStatus, ReadBudget, Retention,
    SessionRecord,
};
use serde_json::json;

use crate::support::redis_server::RedisServer;
use crate::support::within;

const RETENTION: Retention = Retention {
    max_events: 10_000,
    max_bytes: 1 << 20,
};

fn event(
    session: &SessionId,
    job: &JobId,
    index: u64,
    fence: Option<arcp_gateway::storage::Lease>,
) -> Append {
    let tail = arcp_gateway::protocol::job_envelope_tail(
        None,
        job,
        &json!({ "kind": "progress", "body": { "current": index } }),
    );
    Append {
        session_id: session.clone(),
        job_id: job.clone(),
        index,
        kind: EventKind::Event,
        body: encode_body("job.event", &MessageId::generate(), index, &tail),
        fence,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_jobs_subscriber_gets_the_copies_its_node_never_wrote_then_the_terminal() {
    within("the reaper scenario", async {
        let redis = RedisServer::start().await;
        let lost = RedisStorage::connect(&redis.url(), "lost")
            .await
            .expect("connect the lost node's handle");
        let (owner, subscriber, job) = (
            SessionId::generate(),
            SessionId::generate(),
            JobId::generate(),
        );
        for session in [&owner, &subscriber] {
            lost.create_log(session, RETENTION).await.expect("log");
            let record = SessionRecord {
                session_id: session.clone(),
                principal: "alice".into(),
                features: vec!["subscribe".into()],
                created_at_ms: 1,
            };
            lost.create_session(&record).await.expect("session");
        }
        let record = JobRecord {
            session_id: owner.clone(),
            job_id: job.clone(),
            principal: "alice".into(),
            agent: "ticker@1.0.0".into(),
            submitted_at_ms: 1,
            status: JobStatus::Running,
            owner: None,
            cancel_requested: false,
            descriptor: json!({ "job_id": job.as_str() }),
            accepted: json!({ "job_id": job.as_str() }),
            terminal: None,
        };
        lost.put_job(&record).await.expect("job");
        let lease = lost
            .acquire_lease(&owner, &job, 1_000)
            .await
            .expect("lease");
        let own: Vec<Append> = (1..=5)
            .map(|index| event(&owner, &job, index, Some(lease.clone())))
            .collect();
        lost.append_batch(&own).await.expect("the job's events");
        lost.subscribe(&subscriber, &owner, &job)
            .await
            .expect("subscribe");
        // Copies of events 1 to 3 only: the node died before copying 4 and 5.
        let copies: Vec<Append> = own[..3]
            .iter()
            .map(|append| Append {
                session_id: subscriber.clone(),
                fence: None,
                ..append.clone()
            })
            .collect();
        lost.append_batch(&copies).await.expect("some copies");

        let survivor = ClusterNode::start(
            ClusterConfig {
                redis_url: redis.url(),
                node_id: "survivor".into(),
                lease_ttl: Duration::from_secs(1),
            },
            RETENTION,
            Duration::from_secs(60),
            arcp_gateway::http::sse::encode_job_event,
            Arc::new(Metrics::new()),
        )
        .await
        .expect("a cluster node on the test redis");
        // Nothing is reaped while the lease holds.
        assert_eq!(survivor.reap_once().await.expect("reap"), 0);
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert_eq!(survivor.reap_once().await.expect("reap"), 1);
        assert_eq!(
            survivor.reap_once().await.expect("reap again"),
            0,
            "exactly once"
        );

        let all = ReadBudget {
            max_events: 100,
            max_bytes: usize::MAX,
        };
        let read = |session: SessionId| {
            let lost = lost.clone();
            async move {
                let events = lost.read_after(&session, 0, all).await.expect("read");
                let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
                let bodies: Vec<(&'static str, u64)> = events
                    .iter()
                    .map(|event| {
                        let body = decode_body(&event.body).expect("a body this gateway wrote");
                        (body.message_type, body.index)
                    })
                    .collect();
                (seqs, bodies)
            }
        };
        let (owner_seqs, owner_bodies) = read(owner.clone()).await;
        let (subscriber_seqs, subscriber_bodies) = read(subscriber.clone()).await;
        let expected: Vec<(&str, u64)> = (1..=5)
            .map(|index| ("job.event", index))
            .chain([("job.error", 0)])
            .collect();
        assert_eq!(owner_bodies, expected);
        assert_eq!(
            subscriber_bodies, expected,
            "missing copies, then the terminal"
        );
        assert_eq!(owner_seqs, (1..=6).collect::<Vec<_>>());
        assert_eq!(subscriber_seqs, (1..=6).collect::<Vec<_>>());
        // The lost node can write nothing more, to either session.
        let late = event(&owner, &job, 6, Some(lease.clone()));
        assert!(lost.append_batch(&[late]).await.is_err());
    })
    .await;
}
