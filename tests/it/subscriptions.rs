//! Subscription (§7.6, §7.7, §14): another session observes a job in its own
//! gap-free, resumable sequence, never gaining cancel authority.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

async fn subscribe(
    server: &TestServer,
    sid: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    server
        .post_json(&format!("/v1/sessions/{sid}/subscriptions"), token, &body)
        .await
}

#[tokio::test]
async fn a_subscriber_stream_interleaves_two_jobs_gap_free_and_resumes() {
    let server = TestServer::start();
    let submitter = server.create_session(ALICE_TOKEN).await;
    let dashboard = server.create_session(ALICE_TOKEN).await;
    let (a_sid, d_sid) = (&submitter.session_id, &dashboard.session_id);
    let first = server
        .submit_ok(
            a_sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 20, "interval_ms": 20}}),
        )
        .await;
    let second = server
        .submit_ok(
            a_sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 20, "interval_ms": 25}}),
        )
        .await;

    let (status, subscribed) = subscribe(
        &server,
        d_sid,
        ALICE_TOKEN,
        json!({"job_id": first, "history": true, "from_event_seq": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{subscribed}");
    assert_eq!(subscribed["type"], "job.subscribed");
    for field in [
        "job_id",
        "current_status",
        "agent",
        "lease",
        "parent_job_id",
        "trace_id",
        "subscribed_from",
        "replayed",
    ] {
        assert!(subscribed["payload"].get(field).is_some(), "{field}");
    }
    assert!(subscribed["payload"].get("credentials").is_none());
    let (status, _) = subscribe(
        &server,
        d_sid,
        ALICE_TOKEN,
        json!({"job_id": second, "history": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Read part of the dashboard stream, drop it, resume, read the rest.
    let mut stream = server.stream(d_sid, &dashboard.resume_token, None).await;
    let token = stream.welcome().await.resume_token;
    let mut events = Vec::new();
    for _ in 0..10 {
        events.push(stream.next_event().await.unwrap());
    }
    drop(stream);
    let mut stream = server.stream(d_sid, &token, Some(10)).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.welcome().await;
    let mut finished = 0;
    while finished < 2 {
        let event = stream.next_event().await.unwrap();
        if event.event == "job.result" {
            finished += 1;
        }
        events.push(event);
    }
    assert_contiguous(&events, 1, 42);
    for job in [&first, &second] {
        let of_job: Vec<_> = events
            .iter()
            .filter(|e| e.data["job_id"] == job.as_str())
            .collect();
        assert_eq!(of_job.len(), 21, "every event of {job} exactly once");
        let currents: Vec<u64> = of_job[..20]
            .iter()
            .map(|e| e.data["payload"]["body"]["current"].as_u64().unwrap())
            .collect();
        assert_eq!(
            currents,
            (1..=20).collect::<Vec<_>>(),
            "in the job's own order"
        );
        assert!(
            of_job
                .iter()
                .all(|e| e.data["session_id"] == d_sid.as_str()),
            "re-stamped for the subscriber"
        );
    }
}

#[tokio::test]
async fn subscribing_confers_no_cancel_authority() {
    let server = TestServer::start();
    let submitter = server.create_session(ALICE_TOKEN).await;
    let observer = server.create_session(ALICE_TOKEN).await;
    let job = server
        .submit_ok(
            &submitter.session_id,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 1000, "interval_ms": 50}}),
        )
        .await;
    let (status, _) = subscribe(
        &server,
        &observer.session_id,
        ALICE_TOKEN,
        json!({"job_id": job}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.cancel(&observer.session_id, &job, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "PERMISSION_DENIED");
    let (status, _) = server
        .cancel(&submitter.session_id, &job, ALICE_TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn another_principal_can_neither_subscribe_nor_learn_the_job_exists() {
    let server = TestServer::start();
    let alice = server.create_session(ALICE_TOKEN).await;
    let bob = server.create_session(BOB_TOKEN).await;
    let job = server
        .submit_ok(
            &alice.session_id,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 50, "interval_ms": 20}}),
        )
        .await;

    let (status, real) =
        subscribe(&server, &bob.session_id, BOB_TOKEN, json!({"job_id": job})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, missing) = subscribe(
        &server,
        &bob.session_id,
        BOB_TOKEN,
        json!({"job_id": "job_does_not_exist"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        real, missing,
        "the same answer whether or not the job exists"
    );
    let (_, listing) = server
        .get_json(&format!("/v1/sessions/{}/jobs", bob.session_id), BOB_TOKEN)
        .await;
    assert_eq!(listing["payload"]["jobs"], json!([]));
}

#[tokio::test]
async fn a_broadened_policy_lets_other_principals_observe_but_still_not_cancel() {
    let server = TestServer::with_config(|config| {
        config.subscribe_policy = arcp_gateway::config::SubscribePolicy::AnyPrincipal
    });
    let alice = server.create_session(ALICE_TOKEN).await;
    let bob = server.create_session(BOB_TOKEN).await;
    let job = server
        .submit_ok(
            &alice.session_id,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 1000, "interval_ms": 50}}),
        )
        .await;
    let (status, _) = subscribe(&server, &bob.session_id, BOB_TOKEN, json!({"job_id": job})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.cancel(&bob.session_id, &job, BOB_TOKEN).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_history_below_the_floor_is_410() {
    let server = TestServer::with_config(|config| config.retention.max_events = 5);
    let submitter = server.create_session(ALICE_TOKEN).await;
    let observer = server.create_session(ALICE_TOKEN).await;
    let done = server
        .submit_ok(
            &submitter.session_id,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 10, "interval_ms": 0}}),
        )
        .await;
    server
        .wait_for_job(&submitter.session_id, &done, ALICE_TOKEN, |job| {
            job["status"] == "success"
        })
        .await;
    let (status, body) = subscribe(
        &server,
        &observer.session_id,
        ALICE_TOKEN,
        json!({"job_id": done, "history": true, "from_event_seq": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(body["code"], "RESUME_WINDOW_EXPIRED");

    let live = server
        .submit_ok(
            &submitter.session_id,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 1000, "interval_ms": 20}}),
        )
        .await;
    let (status, _) = subscribe(
        &server,
        &observer.session_id,
        ALICE_TOKEN,
        json!({"job_id": live}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = server.stream(&observer.session_id, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let before = stream.next_event().await.unwrap();
    assert_eq!(before.data["job_id"], live.as_str());
    let response = server
        .client
        .delete(server.url(&format!(
            "/v1/sessions/{}/subscriptions/{live}",
            observer.session_id
        )))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (_, job) = server
        .get_json(
            &format!("/v1/sessions/{}/jobs/{live}", observer.session_id),
            ALICE_TOKEN,
        )
        .await;
    let bounds_after = job["payload"]["last_event_seq"].as_u64().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, job) = server
        .get_json(
            &format!("/v1/sessions/{}/jobs/{live}", observer.session_id),
            ALICE_TOKEN,
        )
        .await;
    assert!(
        job["payload"]["last_event_seq"].as_u64().unwrap() > bounds_after,
        "the job kept running"
    );
    let response = server
        .client
        .delete(server.url(&format!(
            "/v1/sessions/{}/subscriptions/{live}",
            observer.session_id
        )))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "already unsubscribed"
    );
}
