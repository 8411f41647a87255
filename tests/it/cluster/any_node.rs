//! Any node serves any request: a session created on one node streams on a
//! second and resumes on a third; one stream per session holds
//! cluster-wide; cancel, idempotent resubmission, list, get, ack, status and
//! close reach the session's state from any node.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use super::*;
use crate::support::cluster::Cluster;
use crate::support::{ALICE_TOKEN, BOB_TOKEN};

#[tokio::test]
async fn created_on_one_node_streamed_on_a_second_resumed_on_a_third() {
    let cluster = Cluster::start().await;
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));
    let session = n1.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    // Two jobs, run by two different nodes, append to the one session.
    let long = n1.submit_ok(&sid, ALICE_TOKEN, ticker(40, 20)).await;
    let short = n3.submit_ok(&sid, ALICE_TOKEN, ticker(20, 30)).await;

    // Stream on node 2 with the token from the creation, read part of it.
    let mut received = Received::new(&session.resume_token);
    let mut stream = n2.stream_with_bearer(&sid, &received.token, None).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    let welcome = stream.read_welcome().await;
    assert_eq!(welcome.session_id, sid, "node 2 serves node 1's session");
    assert_ne!(
        welcome.resume_token, session.resume_token,
        "the token rotates"
    );
    received.note_token(&stream);
    for _ in 0..12 {
        received.take(stream.next_event().await.expect("event"));
    }
    drop(stream);

    // Resume on node 3: Last-Event-ID and the newest token.
    let mut stream = n3
        .stream_with_bearer(&sid, &received.token, Some(received.cursor()))
        .await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.read_welcome().await;
    received.note_token(&stream);
    while !(received.has_terminal(&long) && received.has_terminal(&short)) {
        received.take(stream.next_event().await.expect("event"));
    }
    assert_eq!(received.events.len(), 40 + 1 + 20 + 1, "every event, once");
    for job in [&long, &short] {
        let terminal = assert_ticker_story(&received.of_job(job));
        assert_eq!(terminal.event, "job.result", "{}", terminal.data);
    }

    // The creation token was superseded on every node once a newer one was
    // used.
    for node in [&n1, &n2, &n3] {
        let stale = node
            .stream_with_bearer(&sid, &session.resume_token, Some(0))
            .await;
        assert_eq!(
            stale.status,
            StatusCode::UNAUTHORIZED,
            "{}: {}",
            node.base,
            stale.error
        );
    }
    drop(stream);

    // Byte for byte what a full replay from node 1 sends.
    let replay = full_replay(&n1, &sid, received.cursor()).await;
    assert_identical_to_replay(&received.events, &replay);

    // One stream per session, cluster-wide: a stream on node 1 ends the one
    // on node 2, which sees nothing more.
    let newest = received.cursor();
    let mut first = n2
        .stream_with_bearer(&sid, &received.token, Some(newest))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.error);
    first.read_welcome().await;
    received.note_token(&first);
    let replaced_at = Instant::now();
    let mut second = n1
        .stream_with_bearer(&sid, &received.token, Some(newest))
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.error);
    second.read_welcome().await;
    received.note_token(&second);
    let leftovers = first.until_end_within(Duration::from_secs(10)).await;
    println!(
        "cluster: a stream on node 1 ended the one on node 2 after {:?}",
        replaced_at.elapsed()
    );
    assert!(
        leftovers.is_empty(),
        "the replaced stream got {leftovers:?}"
    );
    // The replacement keeps receiving what any node appends.
    let echo = n3
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": {"x": 1}}),
        )
        .await;
    let event = second.next_event().await.expect("the echo's result");
    assert_eq!(event.seq, newest + 1);
    assert_eq!(event.job_id(), Some(echo.as_str()));
    assert_eq!(event.event, "job.result");
}

/// The `job.error` CANCELLED terminal of `job`, checked to be its only one.
fn the_cancelled_terminal<'a>(events: &[&'a RawEvent]) -> &'a RawEvent {
    let terminals: Vec<_> = events.iter().filter(|event| event.is_terminal()).collect();
    assert_eq!(terminals.len(), 1, "exactly one terminal: {terminals:?}");
    let terminal = *terminals[0];
    assert!(
        std::ptr::eq(terminal, *events.last().unwrap()),
        "nothing of the job follows its terminal"
    );
    assert_eq!(terminal.event, "job.error");
    assert_eq!(terminal.data["payload"]["code"], "CANCELLED");
    assert_eq!(terminal.data["payload"]["final_status"], "cancelled");
    assert_eq!(terminal.data["payload"]["retryable"], false);
    terminal
}

#[tokio::test]
async fn jobs_are_cancelled_resubmitted_listed_and_acked_through_any_node() {
    let cluster = Cluster::start().await;
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));
    let session = n2.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    let mut received = Received::new(&session.resume_token);
    let mut stream = n2.stream_with_bearer(&sid, &received.token, Some(0)).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.read_welcome().await;
    received.note_token(&stream);

    // Cancel through a node that does not run the job.
    let long = n1.submit_ok(&sid, ALICE_TOKEN, ticker(100_000, 50)).await;
    received.take(stream.next_event().await.expect("the first tick"));
    let asked = Instant::now();
    let (status, body) = n3.cancel(&sid, &long, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "job.cancelled", "{body}");
    while !received.has_terminal(&long) {
        received.take(stream.next_event().await.expect("event"));
    }
    println!(
        "cluster: cancel through node 3 ended node 1's job {:?} after the request",
        asked.elapsed()
    );
    let terminal_seq = the_cancelled_terminal(&received.of_job(&long)).seq;
    let (status, body) = n2.cancel(&sid, &long, ALICE_TOKEN).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "cancelling a finished job: {body}"
    );
    // Nothing of the job follows: the next event is another job's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let marker = n3
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": "marker"}),
        )
        .await;
    let next = stream.next_event().await.expect("the marker's result");
    assert_eq!(next.job_id(), Some(marker.as_str()), "{}", next.data);
    assert_eq!(next.seq, terminal_seq + 1);
    received.take(next);
    let (status, job) = n2
        .get_json(&format!("/v1/sessions/{sid}/jobs/{long}"), ALICE_TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["payload"]["status"], "cancelled", "{job}");
    assert_eq!(job["payload"]["last_event_seq"], terminal_seq, "{job}");
    // The record's terminal is the one on the stream.
    let streamed = received
        .events
        .iter()
        .find(|event| event.seq == terminal_seq)
        .expect("the terminal");
    assert_eq!(
        job["payload"]["terminal"], streamed.data["payload"],
        "{job}"
    );

    // Idempotent resubmission through other nodes returns the same job.
    let body = json!({
        "agent": "ticker",
        "input": {"count": 3, "interval_ms": 10},
        "idempotency_key": "cluster-key-1",
    });
    let (status, first) = n1.submit(&sid, ALICE_TOKEN, body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let keyed = first["payload"]["job_id"].as_str().unwrap().to_owned();
    for node in [&n2, &n3, &cluster.nginx()] {
        let (status, again) = node.submit(&sid, ALICE_TOKEN, body.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{}: {again}", node.base);
        assert_eq!(
            again["payload"], first["payload"],
            "{}: the same job",
            node.base
        );
    }
    let (status, conflict) = n3
        .submit(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": 2, "idempotency_key": "cluster-key-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["code"], "DUPLICATE_KEY");
    // Racing first submissions of one new key on all three nodes: one job.
    let racing = json!({"agent": "echo", "input": "race", "idempotency_key": "cluster-race"});
    let answers = futures_util::future::join_all(
        [&n1, &n2, &n3].map(|node| node.submit(&sid, ALICE_TOKEN, racing.clone())),
    )
    .await;
    let raced: BTreeSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
            body["payload"]["job_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(raced.len(), 1, "racing submissions made {raced:?}");
    let raced = raced.into_iter().next().unwrap();
    // Keys are per principal, on every node.
    let bob = n3.create_session(BOB_TOKEN).await;
    let (status, bobs) = n1
        .submit(
            &bob.session_id,
            BOB_TOKEN,
            json!({"agent": "echo", "input": 2, "idempotency_key": "cluster-key-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{bobs}");
    assert_ne!(bobs["payload"]["job_id"], keyed.as_str());
    while !(received.has_terminal(&keyed) && received.has_terminal(&raced)) {
        received.take(stream.next_event().await.expect("event"));
    }
    assert_eq!(
        received.of_job(&keyed).len(),
        4,
        "the keyed job ran once: three ticks and a result"
    );
    assert_eq!(received.of_job(&raced).len(), 1, "the raced job ran once");

    // List and get through every node; bob sees none of alice's jobs.
    let expected: BTreeSet<String> = [&long, &marker, &keyed, &raced]
        .into_iter()
        .cloned()
        .collect();
    for node in [&n1, &n2, &n3] {
        let (status, list) = node
            .get_json(&format!("/v1/sessions/{sid}/jobs"), ALICE_TOKEN)
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let listed: BTreeSet<String> = list["payload"]["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("a job list: {list}"))
            .iter()
            .map(|job| job["job_id"].as_str().expect("job_id").to_owned())
            .collect();
        assert_eq!(listed, expected, "{}: {list}", node.base);
        let (status, job) = node
            .get_json(&format!("/v1/sessions/{sid}/jobs/{keyed}"), ALICE_TOKEN)
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        assert_eq!(job["payload"]["status"], "success", "{job}");
        let (status, hidden) = node
            .get_json(
                &format!("/v1/sessions/{}/jobs/{keyed}", bob.session_id),
                BOB_TOKEN,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{hidden}");
    }

    // Status from any node knows the stream held on node 2.
    let (status, state) = n3
        .get_json(&format!("/v1/sessions/{sid}"), ALICE_TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(state["payload"]["stream_attached"], true, "{state}");
    assert_eq!(
        state["payload"]["last_event_seq"],
        received.cursor(),
        "{state}"
    );

    // Ack through node 3 frees history on every node.
    let acked = received.cursor() - 2;
    let (status, body) = n3
        .post_json(
            &format!("/v1/sessions/{sid}/ack"),
            ALICE_TOKEN,
            &json!({"last_processed_seq": acked}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = n1
        .post_json(
            &format!("/v1/sessions/{sid}/ack"),
            ALICE_TOKEN,
            &json!({"last_processed_seq": received.cursor() + 5}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an ack beyond the newest: {body}"
    );
    drop(stream);
    let below = n1
        .stream_with_bearer(&sid, &received.token, Some(acked - 1))
        .await;
    assert_eq!(below.status, StatusCode::GONE, "{}", below.error);
    assert_eq!(below.error_code(), "RESUME_WINDOW_EXPIRED");
    let mut at = n1
        .stream_with_bearer(&sid, &received.token, Some(acked))
        .await;
    assert_eq!(at.status, StatusCode::OK, "{}", at.error);
    at.read_welcome().await;
    received.note_token(&at);
    let tail = at.events_until(|event| event.seq == acked + 2).await;
    let expected_tail: Vec<&[u8]> = received.events[received.events.len() - 2..]
        .iter()
        .map(|event| event.raw.as_slice())
        .collect();
    let tail: Vec<&[u8]> = tail.iter().map(|event| event.raw.as_slice()).collect();
    assert_eq!(
        tail, expected_tail,
        "the unacknowledged tail, byte for byte"
    );

    // Close through node 2: the stream on node 1 ends with session.closed,
    // and no node takes new work for the session.
    let (status, closed) = n2.delete(&format!("/v1/sessions/{sid}"), ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["type"], "session.closed");
    at.until_end_within(Duration::from_secs(10)).await;
    let kinds: Vec<&str> = at
        .unsequenced
        .iter()
        .map(|(kind, _)| kind.as_str())
        .collect();
    assert_eq!(kinds, ["session.closed"], "{:?}", at.unsequenced);
    for node in [&n1, &n2, &n3] {
        let (status, body) = node
            .submit(&sid, ALICE_TOKEN, json!({"agent": "echo"}))
            .await;
        assert_eq!(status, StatusCode::GONE, "{}: {body}", node.base);
    }
}

#[tokio::test]
async fn a_subscription_made_on_one_node_delivers_another_nodes_job_in_order() {
    let cluster = Cluster::start().await;
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));
    let submitter = n1.create_session(ALICE_TOKEN).await;
    let dashboard = n2.create_session(ALICE_TOKEN).await;
    let (a_sid, d_sid) = (&submitter.session_id, &dashboard.session_id);
    let job = n1.submit_ok(a_sid, ALICE_TOKEN, ticker(30, 20)).await;

    // Subscribe through node 3, with history; stream on node 2.
    let (status, subscribed) = n3
        .post_json(
            &format!("/v1/sessions/{d_sid}/subscriptions"),
            ALICE_TOKEN,
            &json!({"job_id": job, "history": true, "from_event_seq": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{subscribed}");
    assert_eq!(subscribed["type"], "job.subscribed");
    // Bob learns nothing, whether or not the job exists.
    let bob = n1.create_session(BOB_TOKEN).await;
    let mut answers = Vec::new();
    for job_id in [job.as_str(), "job_does_not_exist"] {
        let (status, body) = n2
            .post_json(
                &format!("/v1/sessions/{}/subscriptions", bob.session_id),
                BOB_TOKEN,
                &json!({"job_id": job_id}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        answers.push(body);
    }
    assert_eq!(answers[0], answers[1], "the same answer either way");
    // A subscriber gains no cancel authority, on any node.
    let (status, body) = n3.cancel(d_sid, &job, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let mut received = Received::new(&dashboard.resume_token);
    let mut stream = n2.stream_with_bearer(d_sid, &received.token, Some(0)).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.read_welcome().await;
    received.note_token(&stream);
    for _ in 0..10 {
        received.take(stream.next_event().await.expect("event"));
    }
    drop(stream);
    // Resume on node 1 and read the rest.
    let mut stream = n1
        .stream_with_bearer(d_sid, &received.token, Some(received.cursor()))
        .await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.read_welcome().await;
    while !received.has_terminal(&job) {
        received.take(stream.next_event().await.expect("event"));
    }
    let events = received.of_job(&job);
    assert_eq!(events.len(), 31, "every event of the job once");
    assert_ticker_story(&events);
    assert!(
        events
            .iter()
            .all(|event| event.data["session_id"] == d_sid.as_str()),
        "re-stamped for the subscriber"
    );
    let replay = full_replay(&n3, d_sid, received.cursor()).await;
    assert_identical_to_replay(&received.events, &replay);
}
