//! Credentials: api tokens name principals; resume tokens are signed, bound to
//! a session and principal, rotate by generation and expire (§6.1, §6.3, §14).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

/// Flips one character of the token at `index` to another base64url one.
fn flip(token: &str, index: usize) -> String {
    let mut bytes = token.as_bytes().to_vec();
    bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn a_forged_token_with_one_byte_flipped_is_unauthenticated() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let token = &session.resume_token;
    let claims_byte = 6;
    let mac_byte = token.len() - 5;
    for forged in [flip(token, claims_byte), flip(token, mac_byte)] {
        let stream = server.stream(&session.session_id, &forged, None).await;
        assert_eq!(stream.status, StatusCode::UNAUTHORIZED, "{forged}");
        assert_eq!(stream.error_code(), "UNAUTHENTICATED");
        let response = server
            .client
            .post(server.url("/v1/sessions/resume"))
            .json(&json!({"resume_token": forged}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // The session is intact: the genuine token still works.
    let mut stream = server.stream(&session.session_id, token, None).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.welcome().await;
}

#[tokio::test]
async fn a_resume_token_of_principal_a_with_principal_bs_api_token_is_denied() {
    let server = TestServer::start();
    let alice = server.create_session(ALICE_TOKEN).await;
    let url = server.url(&format!(
        "/v1/sessions/{}/events?resume_token={}",
        alice.session_id, alice.resume_token
    ));
    let response = server
        .client
        .get(url)
        .bearer_auth(BOB_TOKEN)
        .send()
        .await
        .unwrap();
    let stream = SseStream::from_response(response).await;
    assert_eq!(stream.status, StatusCode::FORBIDDEN);
    assert_eq!(stream.error_code(), "PERMISSION_DENIED");

    let response = server
        .client
        .post(server.url("/v1/sessions/resume"))
        .bearer_auth(BOB_TOKEN)
        .json(&json!({"resume_token": alice.resume_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn another_principals_session_is_off_limits_with_an_api_token() {
    let server = TestServer::start();
    let alice = server.create_session(ALICE_TOKEN).await;
    let stream = server.stream(&alice.session_id, BOB_TOKEN, None).await;
    assert_eq!(stream.status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .submit(&alice.session_id, BOB_TOKEN, json!({"agent": "echo"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_token_for_another_session_is_denied() {
    let server = TestServer::start();
    let first = server.create_session(ALICE_TOKEN).await;
    let second = server.create_session(ALICE_TOKEN).await;
    let stream = server
        .stream(&second.session_id, &first.resume_token, None)
        .await;
    assert_eq!(stream.status, StatusCode::FORBIDDEN);
    assert_eq!(stream.error_code(), "PERMISSION_DENIED");
}

#[tokio::test]
async fn a_superseded_generation_stops_working_after_rotation() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    // Generation 1 may be retried until a newer one is used.
    let mut stream = server.stream(sid, &session.resume_token, None).await;
    let second = stream.welcome().await.resume_token;
    drop(stream);
    let mut stream = server.stream(sid, &session.resume_token, None).await;
    assert_eq!(
        stream.status,
        StatusCode::OK,
        "a welcome lost in transit can be retried"
    );
    let third = stream.welcome().await.resume_token;
    drop(stream);
    // Using the newest generation retires every older one.
    let mut stream = server.stream(sid, &third, None).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.welcome().await;
    drop(stream);
    for old in [&session.resume_token, &second] {
        let stream = server.stream(sid, old, None).await;
        assert_eq!(stream.status, StatusCode::UNAUTHORIZED);
        assert_eq!(stream.error_code(), "UNAUTHENTICATED");
        let (status, _) = server.submit(sid, old, json!({"agent": "echo"})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn an_expired_token_gets_410() {
    let server = TestServer::with_config(|config| config.token_ttl = Duration::from_secs(1));
    let session = server.create_session(ALICE_TOKEN).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stream = server
        .stream(&session.session_id, &session.resume_token, None)
        .await;
    assert_eq!(stream.status, StatusCode::GONE);
    assert_eq!(stream.error_code(), "RESUME_WINDOW_EXPIRED");
    // The session itself is still there for its api token.
    let mut stream = server.stream(&session.session_id, ALICE_TOKEN, None).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.welcome().await;
}

#[tokio::test]
async fn the_resume_window_counts_from_the_last_disconnect() {
    let server =
        TestServer::with_config(|config| config.resume_window = Duration::from_millis(600));
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    // While a stream is attached, the window does not run.
    let mut stream = server.stream(&sid, &session.resume_token, None).await;
    let token = stream.welcome().await.resume_token;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let job = server
        .submit_ok(&sid, &token, json!({"agent": "echo", "input": 1}))
        .await;
    stream.events_until(is_terminal_for(&job)).await;
    drop(stream);
    // After it detaches and the window passes, the session is gone.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stream = server.stream(&sid, &token, Some(1)).await;
    assert_eq!(stream.status, StatusCode::GONE);
    assert_eq!(stream.error_code(), "RESUME_WINDOW_EXPIRED");
    let response = server
        .client
        .post(server.url("/v1/sessions/resume"))
        .json(&json!({"resume_token": token, "last_event_seq": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GONE);
    let stream = server.stream(&sid, ALICE_TOKEN, None).await;
    assert_eq!(
        stream.status,
        StatusCode::NOT_FOUND,
        "the expired session was swept"
    );
}

#[tokio::test]
async fn missing_unknown_or_misused_credentials_are_unauthenticated() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let events = server.url(&format!("/v1/sessions/{}/events", session.session_id));
    let cases = [
        server.client.get(&events),
        server.client.get(&events).bearer_auth("not-a-real-token"),
        server
            .client
            .get(&events)
            .header("Authorization", format!("Basic {ALICE_TOKEN}")),
        server
            .client
            .get(&events)
            .header("Authorization", "Bearer "),
        server
            .client
            .get(&events)
            .header("Cookie", "arcp_resume=rt1.garbage.garbage"),
    ];
    for request in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHENTICATED");
        assert_eq!(body["retryable"], false);
    }
    for token in ["", "nope", &session.resume_token] {
        let response = server
            .client
            .post(server.url("/v1/sessions"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token:?}");
    }
}

#[tokio::test]
async fn the_hello_may_carry_the_api_token_and_features_are_intersected() {
    let server = TestServer::start();
    let hello = json!({
        "type": "session.hello",
        "payload": {
            "client": {"name": "it", "version": "1"},
            "auth": {"scheme": "bearer", "token": BOB_TOKEN},
            "capabilities": {"encodings": ["json"], "features": ["progress", "teleport", "result_chunk"]}
        }
    });
    let response = server
        .client
        .post(server.url("/v1/sessions"))
        .json(&hello)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let welcome = Welcome::from_envelope(response.json().await.unwrap());
    assert_eq!(
        welcome.envelope["payload"]["capabilities"]["features"],
        json!(["progress", "result_chunk"])
    );
    let agents = &welcome.envelope["payload"]["capabilities"]["agents"];
    assert!(agents
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "ticker" && a["default"] == "1.0.0"));
    assert_eq!(
        welcome.envelope["payload"]["runtime"]["name"],
        "arcp-gateway"
    );
    assert_eq!(welcome.envelope["payload"]["resume_window_sec"], 600);
    assert_eq!(welcome.envelope["payload"]["heartbeat_interval_sec"], 15);
    // The session belongs to bob.
    let stream = server.stream(&welcome.session_id, ALICE_TOKEN, None).await;
    assert_eq!(stream.status, StatusCode::FORBIDDEN);
}
