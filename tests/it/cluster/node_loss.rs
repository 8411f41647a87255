//! SIGKILL of the node running a job: a survivor ends the job with exactly
//! one visible terminal (`job.error` INTERNAL_ERROR, retryable) within a
//! bounded time, and the client that resumes through a survivor gets every
//! event from before the kill exactly once, then that terminal, then nothing
//! more of the job. Other nodes' jobs are untouched.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use super::*;
use crate::support::cluster::{within_for, Cluster};
use crate::support::ALICE_TOKEN;

/// The bound on the time from a node's death to its jobs' terminal.
const NODE_LOSS_LIMIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_killed_nodes_job_ends_with_one_retryable_terminal_seen_through_a_survivor() {
    let mut cluster = Cluster::start().await;
    let nginx = cluster.nginx();
    let session = nginx.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    // The doomed job runs on node 2; another runs on node 3 across the kill.
    let doomed = cluster
        .node(2)
        .submit_ok(&sid, ALICE_TOKEN, ticker(100_000, 20))
        .await;
    let survivor = cluster
        .node(3)
        .submit_ok(&sid, ALICE_TOKEN, ticker(60, 100))
        .await;
    // Another session follows the doomed job (§7.6), subscribed through
    // node 1.
    let dashboard = cluster.node(3).create_session(ALICE_TOKEN).await;
    let (status, body) = cluster
        .node(1)
        .post_json(
            &format!("/v1/sessions/{}/subscriptions", dashboard.session_id),
            ALICE_TOKEN,
            &json!({"job_id": doomed, "history": true, "from_event_seq": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut received = Received::new(&session.resume_token);
    let mut stream = nginx
        .stream_with_bearer(&sid, &received.token, Some(0))
        .await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.read_welcome().await;
    received.note_token(&stream);
    while received.of_job(&doomed).len() < 25 {
        received.take(stream.next_event().await.expect("event"));
    }

    cluster.kill_node(2).await;
    let killed_at = Instant::now();
    let before_kill = received.cursor();
    // Resume through nginx (which skips the dead node) until the terminal.
    let mut reconnects = 0;
    let terminal_after = within_for(Duration::from_secs(30), "the lost job's terminal", async {
        loop {
            match stream.next_event_within(Duration::from_secs(20)).await {
                Some(event) => {
                    let done = event.is_terminal() && event.job_id() == Some(doomed.as_str());
                    received.take(event);
                    if done {
                        return killed_at.elapsed();
                    }
                }
                None => {
                    reconnects += 1;
                    stream = nginx
                        .stream_with_bearer(&sid, &received.token, Some(received.cursor()))
                        .await;
                    assert_eq!(
                        stream.status,
                        StatusCode::OK,
                        "resume after the kill: {}\n{}",
                        stream.error,
                        cluster.logs()
                    );
                    stream.read_welcome().await;
                    received.note_token(&stream);
                }
            }
        }
    })
    .await;
    println!(
        "cluster node loss: terminal seen {terminal_after:?} after SIGKILL \
         ({reconnects} reconnects, {} events of the job before it, {before_kill} read before the kill)",
        received.of_job(&doomed).len() - 1
    );
    assert!(
        terminal_after <= NODE_LOSS_LIMIT,
        "the terminal took {terminal_after:?}, over {NODE_LOSS_LIMIT:?}"
    );
    let terminal = assert_ticker_story(&received.of_job(&doomed)).clone();
    assert_eq!(terminal.event, "job.error", "{}", terminal.data);
    let payload = &terminal.data["payload"];
    assert_eq!(payload["code"], "INTERNAL_ERROR", "{payload}");
    assert_eq!(payload["retryable"], true, "{payload}");
    let message = payload["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        message.contains("node"),
        "the message says a node was lost: {payload}"
    );

    // The other node's job finishes normally.
    while !received.has_terminal(&survivor) {
        received.take(stream.next_event().await.expect("event"));
    }
    let finished = assert_ticker_story(&received.of_job(&survivor));
    assert_eq!(finished.event, "job.result", "{}", finished.data);
    assert_eq!(received.of_job(&survivor).len(), 61);

    // Several reaper periods later, still one terminal and nothing after it;
    // the job's record agrees from every surviving node.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let marker = cluster
        .node(1)
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": "after"}),
        )
        .await;
    let next = stream.next_event().await.expect("the marker's result");
    assert_eq!(next.job_id(), Some(marker.as_str()), "{}", next.data);
    received.take(next);
    let mut records = Vec::new();
    for number in [1, 3] {
        let (status, job) = cluster
            .node(number)
            .get_json(&format!("/v1/sessions/{sid}/jobs/{doomed}"), ALICE_TOKEN)
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        assert_eq!(job["payload"]["status"], payload["final_status"], "{job}");
        assert_eq!(job["payload"]["last_event_seq"], terminal.seq, "{job}");
        records.push(job);
    }
    drop(stream);
    let replay = full_replay(&nginx, &sid, received.cursor()).await;
    assert_identical_to_replay(&received.events, &replay);
    assert_eq!(terminals_per_job(&replay)[&doomed], 1);

    // The node comes back on its port and serves again.
    cluster.restart_node(2).await;
    let again = cluster
        .node(2)
        .submit_ok(&sid, ALICE_TOKEN, json!({"agent": "echo", "input": "back"}))
        .await;
    let mut stream = cluster
        .node(2)
        .stream_with_bearer(&sid, &received.token, Some(received.cursor()))
        .await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.read_welcome().await;
    let event = stream.next_event().await.expect("the new job's result");
    assert_eq!(event.job_id(), Some(again.as_str()));
    received.take(event);

    // Every node's record of the lost job carries the terminal the stream
    // delivered, `completed_at` included.
    for job in &records {
        assert_eq!(
            job["payload"]["terminal"], terminal.data["payload"],
            "the job's record and its terminal event disagree: {job}"
        );
    }

    // The subscriber got the job's story too, ending with the same terminal.
    let mut followed = Received::new(&dashboard.resume_token);
    let mut stream = cluster
        .node(3)
        .stream_with_bearer(&dashboard.session_id, &followed.token, Some(0))
        .await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.read_welcome().await;
    while !followed.has_terminal(&doomed) {
        followed.take(stream.next_event().await.expect("event"));
    }
    let copy = assert_ticker_story(&followed.of_job(&doomed));
    assert_eq!(
        copy.data["payload"], terminal.data["payload"],
        "the subscriber's terminal is the owner's"
    );
    assert_eq!(
        followed.of_job(&doomed).len(),
        received.of_job(&doomed).len(),
        "the subscriber got every event of the job that its own session got"
    );
}
