//! Bad input gets a clear ARCP error with the right status, never a 5xx, and
//! leaves the session intact.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn malformed_bodies_get_400_and_the_session_survives() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let jobs = server.url(&format!("/v1/sessions/{sid}/jobs"));
    let bodies: [&[u8]; 8] = [
        b"{not json",
        b"[1,2,3]",
        b"\"just a string\"",
        b"{\"agent\": 5}",
        b"{\"agent\": \"echo\", \"agnet\": \"typo\"}",
        b"{\"agent\": \"echo\", \"max_runtime_sec\": -1}",
        b"{\"agent\": \"echo\", \"max_runtime_sec\": 99999999999999999999999}",
        b"{\"agent\": \"ticker\", \"input\": {\"count\": 1e12}}",
    ];
    for body in bodies {
        let response = server
            .client
            .post(&jobs)
            .bearer_auth(ALICE_TOKEN)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(body)
        );
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], "INVALID_REQUEST");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _) = server
        .submit(
            sid,
            ALICE_TOKEN,
            json!({"type": "job.cancel", "payload": {"agent": "echo"}}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an envelope of the wrong type"
    );
    // The session still works, and nothing was appended to its log.
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"type": "job.submit", "payload": {"agent": "echo"}}),
        )
        .await;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, 1, 1);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let server = TestServer::with_config(|config| config.max_body_bytes = 4096);
    let session = server.create_session(ALICE_TOKEN).await;
    let huge = json!({"agent": "echo", "input": "x".repeat(10_000)});
    let (status, body) = server.submit(&session.session_id, ALICE_TOKEN, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["code"], "INVALID_REQUEST");
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_both_in_json() {
    let server = TestServer::start();
    let response = server.client.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["content-type"], "application/json");
    let response = server
        .client
        .delete(server.url("/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_REQUEST");
    let response = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn absurd_cursors_are_400() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let events = server.url(&format!("/v1/sessions/{}/events", session.session_id));
    for cursor in [
        "-1",
        "abc",
        "99999999999999999999999",
        "1.5",
        "18446744073709551615",
    ] {
        let response = server
            .client
            .get(&events)
            .bearer_auth(ALICE_TOKEN)
            .header("Last-Event-ID", cursor)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "Last-Event-ID {cursor}"
        );
        let response = server
            .client
            .get(format!("{events}?last_event_seq={cursor}"))
            .bearer_auth(ALICE_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "last_event_seq {cursor}"
        );
    }
}

#[tokio::test]
async fn no_request_shape_produces_a_server_error() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let paths = [
        "/".to_owned(),
        "/healthz".to_owned(),
        "/v1/agents".to_owned(),
        "/v1/sessions".to_owned(),
        "/v1/sessions/resume".to_owned(),
        format!("/v1/sessions/{sid}/events"),
        format!("/v1/sessions/{sid}/jobs"),
        format!("/v1/sessions/{sid}/jobs/job_x"),
        format!("/v1/sessions/{sid}/jobs/job_x/cancel"),
        "/v1/sessions/%00/jobs".to_owned(),
        "/v1/sessions/sess_unknown/events".to_owned(),
    ];
    let bodies: [&[u8]; 5] = [b"", b"{", b"null", b"{\"resume_token\": 7}", b"\xff\xfe"];
    let credentials = ["", ALICE_TOKEN, BOB_TOKEN, "rt1.x.y", &session.resume_token];
    for path in &paths {
        for method in [Method::GET, Method::POST, Method::PUT] {
            for body in bodies {
                for credential in credentials {
                    let mut request = server
                        .client
                        .request(method.clone(), server.url(path))
                        .body(body.to_vec());
                    if !credential.is_empty() {
                        request = request.bearer_auth(credential);
                    }
                    let response = within("response", request.send()).await.unwrap();
                    assert!(
                        response.status().as_u16() < 500,
                        "{method} {path} -> {}",
                        response.status()
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn a_principal_cannot_hold_more_than_its_session_cap() {
    let server = TestServer::with_config(|config| config.max_sessions_per_principal = 2);
    server.create_session(ALICE_TOKEN).await;
    server.create_session(ALICE_TOKEN).await;
    let response = server
        .client
        .post(server.url("/v1/sessions"))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "PERMISSION_DENIED");
    // Other principals are unaffected.
    server.create_session(BOB_TOKEN).await;
}
