//! The rest of the session surface: ack and retention (§6.5), heartbeats
//! (§6.4), listing (§6.6) and close (§6.7).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

async fn ack(server: &TestServer, sid: &str, seq: Value) -> (StatusCode, Value) {
    server
        .post_json(
            &format!("/v1/sessions/{sid}/ack"),
            ALICE_TOKEN,
            &json!({"last_processed_seq": seq}),
        )
        .await
}

#[tokio::test]
async fn ack_frees_events_and_a_resume_below_the_floor_gets_410() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 9, "interval_ms": 0}}),
        )
        .await;
    server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;

    let (status, acked) = ack(&server, sid, json!(6)).await;
    assert_eq!(status, StatusCode::OK, "{acked}");
    assert_eq!(acked["payload"]["floor"], 6);
    let (status, _) = ack(&server, sid, json!(3)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "going backwards is a harmless no-op"
    );
    let (status, body) = ack(&server, sid, json!(11)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "beyond the newest: {body}");
    let (status, _) = ack(&server, sid, json!(-1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let stream = server.stream(sid, ALICE_TOKEN, Some(5)).await;
    assert_eq!(stream.status, StatusCode::GONE);
    assert_eq!(stream.error_code(), "RESUME_WINDOW_EXPIRED");
    let mut stream = server.stream(sid, ALICE_TOKEN, Some(6)).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, 7, 10);
}

#[tokio::test]
async fn a_lagging_consumer_gets_one_back_pressure_status_per_episode() {
    let server = TestServer::with_config(|config| config.back_pressure_lag_events = 5);
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let first = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 2, "interval_ms": 0}}),
        )
        .await;
    server
        .wait_for_job(sid, &first, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    ack(&server, sid, json!(3)).await;
    // Twenty more events with no ack: one episode, one signal.
    let second = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 19, "interval_ms": 0}}),
        )
        .await;
    server
        .wait_for_job(sid, &second, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    let mut stream = server.stream(sid, ALICE_TOKEN, Some(3)).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&second)).await;
    let signals: Vec<_> = events
        .iter()
        .filter(|e| e.data["payload"]["body"]["phase"] == "back_pressure")
        .collect();
    assert_eq!(signals.len(), 1, "once per episode");
    assert_eq!(signals[0].data["payload"]["kind"], "status");
    let last = events.last().unwrap().seq();
    assert_contiguous(&events, 4, last);

    // Catching up closes the episode; falling behind again opens a new one.
    ack(&server, sid, json!(last)).await;
    let third = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 9, "interval_ms": 0}}),
        )
        .await;
    let events = stream.events_until(is_terminal_for(&third)).await;
    let signals = events
        .iter()
        .filter(|e| e.data["payload"]["body"]["phase"] == "back_pressure")
        .count();
    assert_eq!(signals, 1);
}

#[tokio::test]
async fn heartbeats_are_pings_without_event_seq_and_jobs_survive_a_lost_client() {
    let server =
        TestServer::with_config(|config| config.heartbeat_interval = Duration::from_millis(200));
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let ping = stream.next_event().await.expect("a ping");
    assert_eq!(ping.event, "session.ping");
    assert_eq!(ping.id, None, "heartbeats take no event_seq");
    assert!(ping.data.get("event_seq").is_none());
    assert!(stream.comments >= 1, "keepalive comments accompany pings");
    let nonce = ping.data["payload"]["nonce"].as_str().unwrap().to_owned();

    let (status, _) = server
        .post_json(
            &format!("/v1/sessions/{sid}/pong"),
            ALICE_TOKEN,
            &json!({"ping_nonce": nonce}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, pong) = server
        .post_json(
            &format!("/v1/sessions/{sid}/ping"),
            ALICE_TOKEN,
            &json!({"nonce": "c1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pong["type"], "session.pong");
    assert_eq!(pong["payload"]["ping_nonce"], "c1");

    // The client vanishes mid-job; the job still finishes and the first
    // job event is still seq 1 (pings consumed nothing).
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 5, "interval_ms": 100}}),
        )
        .await;
    drop(stream);
    server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    let mut stream = server.stream(sid, ALICE_TOKEN, Some(0)).await;
    stream.welcome().await;
    let events: Vec<_> = stream
        .events_until(is_terminal_for(&job))
        .await
        .into_iter()
        .filter(|e| e.event != "session.ping")
        .collect();
    assert_contiguous(&events, 1, 6);
}

#[tokio::test]
async fn features_outside_the_negotiated_set_are_refused() {
    let server = TestServer::start();
    let hello = json!({"auth": {"token": ALICE_TOKEN}, "capabilities": {"features": ["progress"]}});
    let response = server
        .client
        .post(server.url("/v1/sessions"))
        .json(&hello)
        .send()
        .await
        .unwrap();
    let welcome = Welcome::from_envelope(response.json().await.unwrap());
    let sid = &welcome.session_id;
    let (status, body) = ack(&server, sid, json!(0)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = server
        .get_json(&format!("/v1/sessions/{sid}/jobs"), ALICE_TOKEN)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .submit(
            sid,
            ALICE_TOKEN,
            json!({"agent": "echo", "lease_request": {"cost.budget": ["USD:1"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn listing_filters_paginates_stably_and_hides_other_principals() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            server
                .submit_ok(sid, ALICE_TOKEN, json!({"agent": "echo", "input": n}))
                .await,
        );
    }
    let ticker = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 1000, "interval_ms": 50}}),
        )
        .await;
    ids.push(ticker.clone());
    let bob = server.create_session(BOB_TOKEN).await;
    let bobs_job = server
        .submit_ok(&bob.session_id, BOB_TOKEN, json!({"agent": "echo"}))
        .await;

    // Pages of two, in submission order, cover every job exactly once.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/sessions/{sid}/jobs?limit=2&cursor={cursor}"),
            None => format!("/v1/sessions/{sid}/jobs?limit=2"),
        };
        let (status, page) = server.get_json(&path, ALICE_TOKEN).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["type"], "session.jobs");
        for job in page["payload"]["jobs"].as_array().unwrap() {
            listed.push(job["job_id"].as_str().unwrap().to_owned());
            for field in [
                "agent",
                "status",
                "lease",
                "parent_job_id",
                "created_at",
                "trace_id",
                "last_event_seq",
            ] {
                assert!(job.get(field).is_some(), "{field} in {job}");
            }
        }
        match page["payload"]["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(listed, ids);
    assert!(
        !listed.contains(&bobs_job),
        "another principal's job never appears"
    );

    let (_, running) = server
        .get_json(
            &format!("/v1/sessions/{sid}/jobs?status=running,pending"),
            ALICE_TOKEN,
        )
        .await;
    let running: Vec<&str> = running["payload"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(running, [ticker.as_str()]);
    let (_, tickers) = server
        .get_json(
            &format!("/v1/sessions/{sid}/jobs?agent=ticker@1.0.0"),
            ALICE_TOKEN,
        )
        .await;
    assert_eq!(tickers["payload"]["jobs"].as_array().unwrap().len(), 1);
    let (_, future) = server
        .get_json(
            &format!("/v1/sessions/{sid}/jobs?created_after=2999-01-01T00:00:00Z"),
            ALICE_TOKEN,
        )
        .await;
    assert_eq!(future["payload"]["jobs"], json!([]));
    for bad in [
        "limit=0",
        "limit=5000",
        "status=sleeping",
        "cursor=xyz",
        "created_after=today",
    ] {
        let (status, _) = server
            .get_json(&format!("/v1/sessions/{sid}/jobs?{bad}"), ALICE_TOKEN)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn close_ends_the_stream_keeps_jobs_running_and_a_token_reopens_it() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 5, "interval_ms": 100}}),
        )
        .await;
    let mut stream = server.stream(sid, &session.resume_token, None).await;
    let token = stream.welcome().await.resume_token;

    let response = server
        .client
        .delete(server.url(&format!("/v1/sessions/{sid}")))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let closed: Value = response.json().await.unwrap();
    assert_eq!(closed["type"], "session.closed");
    let mut last_seen = 0;
    while let Some(event) = stream.next_event().await {
        if event.event == "session.closed" {
            break;
        }
        last_seen = event.seq();
    }
    assert!(stream.ended().await);

    // A closed session takes no new work from an api token…
    let (status, body) = server
        .submit(sid, ALICE_TOKEN, json!({"agent": "echo"}))
        .await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    // …nor does a browser's automatic reconnect reopen it…
    let stream = server.stream(sid, &token, Some(last_seen)).await;
    assert_eq!(stream.status, StatusCode::GONE, "{}", stream.error);
    // …but its job runs on, and an explicit session.resume reopens it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, welcome) = server
        .post_json(
            "/v1/sessions/resume",
            "",
            &json!({"resume_token": token, "last_event_seq": last_seen}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{welcome}");
    let token = welcome["payload"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut stream = server.stream(sid, &token, Some(last_seen)).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, last_seen + 1, 6);
    assert_eq!(events.last().unwrap().event, "job.result");
}
