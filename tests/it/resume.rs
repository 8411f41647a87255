//! The product's promise: a client that drops its stream and comes back with
//! `Last-Event-ID` and its newest resume token gets exactly what it missed
//! (§6.3, §8.3), terminal result included, with its cancel authority intact.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_dropped_stream_resumes_with_exactly_the_missed_events_and_cancel_authority() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    let ticker = server
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 30, "interval_ms": 20}}),
        )
        .await;

    // Read only part of the stream, keeping the token from its welcome.
    let mut stream = server.stream(&sid, &session.resume_token, None).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(
        stream.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(stream.headers["cache-control"], "no-cache");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    let rotated = stream.welcome().await.resume_token;
    assert_ne!(
        rotated, session.resume_token,
        "each welcome rotates the token"
    );
    let mut seen = Vec::new();
    for _ in 0..8 {
        seen.push(stream.next_event().await.expect("event"));
    }
    assert_contiguous(&seen, 1, 8);
    assert_eq!(stream.retry_lines, vec!["2000".to_owned()]);
    drop(stream);

    // Events keep being appended while nobody is connected.
    let long_job = server
        .submit_ok(
            &sid,
            &rotated,
            json!({"agent": "ticker", "input": {"count": 1000, "interval_ms": 50}}),
        )
        .await;
    server
        .wait_for_job(&sid, &ticker, ALICE_TOKEN, |job| job["status"] == "success")
        .await;

    // Resume from the last processed event with the rotated token.
    let mut resumed = server.stream(&sid, &rotated, Some(8)).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.error);
    let welcome = resumed.welcome().await;
    assert_eq!(welcome.session_id, sid, "the same session continues");
    let replayed = resumed.events_until(is_terminal_for(&ticker)).await;
    let first = replayed.first().expect("replayed events").seq();
    assert_eq!(first, 9, "replay starts right after the acknowledged event");
    let last = replayed.last().unwrap().seq();
    assert_contiguous(&replayed, 9, last);
    let ticker_events: Vec<_> = replayed
        .iter()
        .filter(|e| e.data["job_id"] == ticker.as_str())
        .collect();
    assert_eq!(
        ticker_events.len(),
        30 - 8 + 1,
        "22 missed progress events and the result"
    );
    let result = ticker_events.last().unwrap();
    assert_eq!(result.event, "job.result");
    let mut payload = result.data["payload"].clone();
    assert!(payload["completed_at"].is_string(), "{payload}");
    payload.as_object_mut().unwrap().remove("completed_at");
    assert_eq!(
        payload,
        json!({"final_status": "success", "result": {"ticks": 30}})
    );

    // The resumed session still holds cancel authority over its jobs.
    let (status, cancelled) = server.cancel(&sid, &long_job, &welcome.resume_token).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["type"], "job.cancelled");
    let tail = resumed.events_until(is_terminal_for(&long_job)).await;
    assert_contiguous(&tail, last + 1, tail.last().unwrap().seq());
    let terminal = tail.last().unwrap();
    assert_eq!(terminal.event, "job.error");
    assert_eq!(terminal.data["payload"]["final_status"], "cancelled");
    assert_eq!(terminal.data["payload"]["code"], "CANCELLED");
    assert_eq!(terminal.data["payload"]["retryable"], false);

    // Nothing follows a terminal event for that job.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, job) = server
        .get_json(&format!("/v1/sessions/{sid}/jobs/{long_job}"), ALICE_TOKEN)
        .await;
    assert_eq!(job["payload"]["status"], "cancelled");
    assert_eq!(job["payload"]["last_event_seq"], terminal.seq());
}

#[tokio::test]
async fn replay_and_live_meet_without_gap_or_duplicate() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    let job = server
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 300, "interval_ms": 1}}),
        )
        .await;
    // Connect and reconnect repeatedly while the job emits, each time from
    // the last event actually received.
    let mut cursor = 0;
    let mut token = session.resume_token.clone();
    let mut all = Vec::new();
    loop {
        let mut stream = server.stream(&sid, &token, Some(cursor)).await;
        assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
        token = stream.welcome().await.resume_token;
        let mut finished = false;
        for _ in 0..37 {
            let event = stream.next_event().await.expect("event");
            cursor = event.seq();
            finished = is_terminal_for(&job)(&event);
            all.push(event);
            if finished {
                break;
            }
        }
        if finished {
            break;
        }
    }
    assert_contiguous(&all, 1, 301);
}

#[tokio::test]
async fn a_second_stream_replaces_the_first() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let mut first = server.stream(&session.session_id, ALICE_TOKEN, None).await;
    first.welcome().await;
    let mut second = server.stream(&session.session_id, ALICE_TOKEN, None).await;
    second.welcome().await;
    assert!(
        first.ended().await,
        "the replaced stream is ended by the server"
    );
    // The replacement keeps working.
    let job = server
        .submit_ok(
            &session.session_id,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": {"x": 1}}),
        )
        .await;
    let events = second.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, 1, 1);
}

#[tokio::test]
async fn a_cursor_beyond_the_newest_event_is_invalid() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let stream = server
        .stream(&session.session_id, ALICE_TOKEN, Some(5))
        .await;
    assert_eq!(stream.status, StatusCode::BAD_REQUEST);
    assert_eq!(stream.error_code(), "INVALID_REQUEST");
}

#[tokio::test]
async fn a_cursor_below_the_oldest_retained_event_gets_410_never_a_gap() {
    let server = TestServer::with_config(|config| config.retention.max_events = 5);
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    let job = server
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 10, "interval_ms": 0}}),
        )
        .await;
    server
        .wait_for_job(&sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    // 11 events, 5 retained: 7..=11; a cursor of 6 is still covered.
    for evicted in [0, 1, 5] {
        let stream = server.stream(&sid, ALICE_TOKEN, Some(evicted)).await;
        assert_eq!(stream.status, StatusCode::GONE, "cursor {evicted}");
        assert_eq!(stream.error_code(), "RESUME_WINDOW_EXPIRED");
    }
    let mut covered = server.stream(&sid, ALICE_TOKEN, Some(6)).await;
    assert_eq!(covered.status, StatusCode::OK);
    covered.welcome().await;
    let events = covered.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, 7, 11);
    // With no cursor at all, the client gets everything still retained.
    drop(covered);
    let mut everything = server.stream(&sid, ALICE_TOKEN, None).await;
    everything.welcome().await;
    let events = everything.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, 7, 11);
}

#[tokio::test]
async fn query_parameters_and_the_cookie_work_for_clients_that_cannot_send_headers() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    let job = server
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 4, "interval_ms": 0}}),
        )
        .await;
    server
        .wait_for_job(&sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;

    let url = server.url(&format!(
        "/v1/sessions/{sid}/events?resume_token={}&last_event_seq=2",
        session.resume_token
    ));
    let response = server.client.get(url).send().await.unwrap();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("arcp_resume=rt1."), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        cookie.contains(&format!("Path=/v1/sessions/{sid}")),
        "{cookie}"
    );
    let mut stream = SseStream::from_response(response).await;
    let welcome = stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, 3, 5);
    drop(stream);

    // A browser sends the cookie back on reconnect, with Last-Event-ID.
    let cookie_pair = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(cookie_pair, format!("arcp_resume={}", welcome.resume_token));
    let response = server
        .client
        .get(server.url(&format!("/v1/sessions/{sid}/events")))
        .header("Cookie", cookie_pair)
        .header("Last-Event-ID", "4")
        .send()
        .await
        .unwrap();
    let mut stream = SseStream::from_response(response).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, 5, 5);
}

#[tokio::test]
async fn post_resume_validates_and_rotates_before_the_stream_opens() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    let job = server
        .submit_ok(&sid, ALICE_TOKEN, json!({"agent": "echo", "input": "hi"}))
        .await;
    server
        .wait_for_job(&sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;

    let resume = |token: String, seq: u64| {
        let server = &server;
        async move {
            server
                .client
                .post(server.url("/v1/sessions/resume"))
                .json(&json!({"resume_token": token, "last_event_seq": seq}))
                .send()
                .await
                .unwrap()
        }
    };
    let response = resume(session.resume_token.clone(), 0).await;
    assert_eq!(response.status(), StatusCode::OK);
    let welcome = Welcome::from_envelope(response.json().await.unwrap());
    assert_eq!(welcome.session_id, sid);
    assert_ne!(welcome.resume_token, session.resume_token);
    assert_eq!(welcome.envelope["payload"]["last_event_seq"], 1);

    // A cursor beyond the newest event is refused here too.
    let response = resume(welcome.resume_token.clone(), 2).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Using the new token supersedes the original.
    let mut stream = server.stream(&sid, &welcome.resume_token, Some(0)).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.welcome().await;
    drop(stream);
    let response = resume(session.resume_token.clone(), 0).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
