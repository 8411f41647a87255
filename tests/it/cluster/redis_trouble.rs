//! Redis trouble while the cluster runs: a restart (AOF on) mid-stream, and
//! Redis killed for a while. Requests meanwhile get a retryable ARCP error
//! with 503, open streams end with a `retry:` hint, and once Redis is back
//! every node recovers by itself and the session resumes with no gap and no
//! duplicate.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::*;
use crate::support::cluster::{within_for, Api, Cluster, RawStream, NODES};
use crate::support::ALICE_TOKEN;

/// How long a node may take to serve again once Redis is back.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// A retryable ARCP error answered with 503.
fn assert_retryable_503(what: &str, status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert!(
        body["code"].as_str().is_some_and(|code| !code.is_empty()),
        "{what}: an ARCP error code: {body}"
    );
    assert!(body["message"].is_string(), "{what}: a message: {body}");
    assert_eq!(body["retryable"], true, "{what}: {body}");
}

/// Resumes the session through `api` with `Last-Event-ID` and the newest
/// token, retrying while the answer is a retryable 503 (Redis coming back).
async fn resume_when_ready(api: &Api, session_id: &str, received: &mut Received) -> RawStream {
    let started = Instant::now();
    within_for(RECOVERY_LIMIT, "the session to resume", async {
        loop {
            let mut stream = api
                .stream_with_bearer(session_id, &received.token, Some(received.cursor()))
                .await;
            if stream.status == StatusCode::OK {
                stream.read_welcome().await;
                received.note_token(&stream);
                if started.elapsed() > Duration::from_millis(500) {
                    println!(
                        "cluster redis: resumed after {:?} of retries",
                        started.elapsed()
                    );
                }
                return stream;
            }
            assert_retryable_503(
                "a resume while Redis comes back",
                stream.status,
                &stream.error,
            );
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// Reads through `api` (reconnecting when a stream ends) until `job` has its
/// terminal.
async fn read_until_terminal(
    api: &Api,
    sid: &str,
    received: &mut Received,
    stream: &mut RawStream,
    job: &str,
) {
    within_for(RECOVERY_LIMIT, "the job's terminal", async {
        while !received.has_terminal(job) {
            match stream.next_event_within(RECOVERY_LIMIT).await {
                Some(event) => received.take(event),
                None => *stream = resume_when_ready(api, sid, received).await,
            }
        }
    })
    .await;
}

/// Submits an echo on every node and reads the three results.
async fn every_node_takes_work(
    cluster: &Cluster,
    sid: &str,
    received: &mut Received,
    stream: &mut RawStream,
) {
    let mut echoes = Vec::new();
    for number in 1..=NODES {
        let input = json!({"agent": "echo", "input": format!("node {number}")});
        echoes.push(
            cluster
                .node(number)
                .submit_ok(sid, ALICE_TOKEN, input)
                .await,
        );
    }
    for echo in &echoes {
        read_until_terminal(&cluster.nginx(), sid, received, stream, echo).await;
    }
}

#[tokio::test]
async fn redis_restarted_mid_stream_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start().await;
    let nginx = cluster.nginx();
    let session = nginx.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    let job = cluster
        .node(1)
        .submit_ok(&sid, ALICE_TOKEN, ticker(200, 20))
        .await;
    let mut received = Received::new(&session.resume_token);
    let mut stream = nginx
        .stream_with_bearer(&sid, &received.token, Some(0))
        .await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.read_welcome().await;
    received.note_token(&stream);
    while received.events.len() < 30 {
        received.take(stream.next_event().await.expect("event"));
    }

    let restarted_at = Instant::now();
    cluster.redis_restart().await;
    println!("cluster redis: restarted in {:?}", restarted_at.elapsed());
    read_until_terminal(&nginx, &sid, &mut received, &mut stream, &job).await;
    let terminal = assert_ticker_story(&received.of_job(&job));
    println!(
        "cluster redis restart: the job ended with {} after {} ticks: {}",
        terminal.event,
        received.of_job(&job).len() - 1,
        terminal.data["payload"]
    );
    every_node_takes_work(&cluster, &sid, &mut received, &mut stream).await;
    drop(stream);
    let replay = full_replay(&nginx, &sid, received.cursor()).await;
    assert_identical_to_replay(&received.events, &replay);
    assert!(terminals_per_job(&replay).values().all(|count| *count == 1));
}

#[tokio::test]
async fn redis_killed_gives_retryable_503s_and_everything_recovers_when_it_returns() {
    let mut cluster = Cluster::start().await;
    let nginx = cluster.nginx();
    let n1 = cluster.node(1);
    let session = nginx.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    let done = cluster
        .node(3)
        .submit_ok(&sid, ALICE_TOKEN, ticker(5, 0))
        .await;
    let running = cluster
        .node(2)
        .submit_ok(&sid, ALICE_TOKEN, ticker(400, 25))
        .await;
    let mut received = Received::new(&session.resume_token);
    let mut stream = n1.stream_with_bearer(&sid, &received.token, Some(0)).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.read_welcome().await;
    received.note_token(&stream);
    while !(received.has_terminal(&done) && received.of_job(&running).len() >= 10) {
        received.take(stream.next_event().await.expect("event"));
    }

    cluster.redis_kill();
    let killed_at = Instant::now();
    // The open stream ends with a retry hint; what it sent before is kept.
    let last_words = stream.until_end_within(Duration::from_secs(20)).await;
    println!(
        "cluster redis: the stream on node 1 ended {:?} after Redis died",
        killed_at.elapsed()
    );
    received.take_all(last_words);
    assert!(
        stream.retry_lines.len() >= 2,
        "a retry: line at the start and one at the end: {:?} {:?}",
        stream.retry_lines,
        stream.comments
    );
    // Every node answers a retryable 503, whatever the request.
    let checks_started = Instant::now();
    let mut slowest = Duration::ZERO;
    for number in 1..=NODES {
        let node = cluster.node(number);
        let what = format!("node {number}");
        let asked = Instant::now();
        let (status, body) = node
            .post_json("/v1/sessions", ALICE_TOKEN, &Value::Null)
            .await;
        slowest = slowest.max(asked.elapsed());
        assert_retryable_503(&format!("{what} POST /v1/sessions"), status, &body);
        let (status, body) = node.submit(&sid, ALICE_TOKEN, ticker(1, 0)).await;
        assert_retryable_503(&format!("{what} submit"), status, &body);
        let (status, body) = node
            .get_json(&format!("/v1/sessions/{sid}/jobs/{running}"), ALICE_TOKEN)
            .await;
        assert_retryable_503(&format!("{what} GET job"), status, &body);
        let (status, body) = node
            .get_json(&format!("/v1/sessions/{sid}/jobs"), ALICE_TOKEN)
            .await;
        assert_retryable_503(&format!("{what} list jobs"), status, &body);
        let refused = node
            .stream_with_bearer(&sid, &received.token, Some(received.cursor()))
            .await;
        assert_retryable_503(&format!("{what} stream"), refused.status, &refused.error);
    }
    // Through nginx too: the client sees the gateway's 503, not a proxy error.
    let (status, body) = nginx
        .post_json("/v1/sessions", ALICE_TOKEN, &Value::Null)
        .await;
    assert_retryable_503("nginx POST /v1/sessions", status, &body);
    let refused = nginx
        .stream_with_bearer(&sid, &received.token, Some(received.cursor()))
        .await;
    assert_retryable_503("nginx stream", refused.status, &refused.error);
    println!(
        "cluster redis: 17 requests answered 503 in {:?} (a session creation took up to \
         {slowest:?}); Redis down for {:?}",
        checks_started.elapsed(),
        killed_at.elapsed()
    );

    cluster.redis_start().await;
    let back_at = Instant::now();
    for number in 1..=NODES {
        let node = cluster.node(number);
        within_for(RECOVERY_LIMIT, "a node to serve again", async {
            loop {
                let (status, body) = node
                    .post_json("/v1/sessions", ALICE_TOKEN, &Value::Null)
                    .await;
                if status == StatusCode::CREATED {
                    return;
                }
                assert_retryable_503("a node while Redis comes back", status, &body);
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        println!(
            "cluster redis: node {number} serves again {:?} after Redis returned",
            back_at.elapsed()
        );
    }

    // The session resumes gap-free through nginx; the job that ran across
    // the outage has exactly one terminal and nothing after it.
    let mut stream = resume_when_ready(&nginx, &sid, &mut received).await;
    read_until_terminal(&nginx, &sid, &mut received, &mut stream, &running).await;
    let terminal = assert_ticker_story(&received.of_job(&running));
    println!(
        "cluster redis kill: the running job ended with {} after {} ticks: {}",
        terminal.event,
        received.of_job(&running).len() - 1,
        terminal.data["payload"]
    );
    every_node_takes_work(&cluster, &sid, &mut received, &mut stream).await;
    drop(stream);
    let replay = full_replay(&nginx, &sid, received.cursor()).await;
    assert_identical_to_replay(&received.events, &replay);
    assert!(terminals_per_job(&replay).values().all(|count| *count == 1));
}
