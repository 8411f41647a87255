//! Wire compatibility with the official ARCP SDKs on the REST/SSE surface:
//! ULID envelope ids, W3C trace ids, the welcome's `session_id` and
//! `accepted_at`, `completed_at` on terminals, budgets echoed as strings.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{is_terminal_for, TestServer, ALICE_TOKEN};

/// The official SDK's id rule (`arcp/_envelope.py`): a ULID, or
/// `lowercase-prefix_<ULID>`.
fn is_sdk_id(text: &str) -> bool {
    let ulid = text.rsplit('_').next().unwrap_or_default();
    let prefix_ok = match text.rsplit_once('_') {
        Some((prefix, _)) => !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_lowercase()),
        None => true,
    };
    prefix_ok
        && ulid.len() == 26
        && ulid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
}

fn is_trace_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn assert_sdk_envelope(envelope: &Value) {
    let id = envelope["id"].as_str().expect("id");
    assert!(is_sdk_id(id), "envelope id {id:?} in {envelope}");
    if let Some(trace_id) = envelope.get("trace_id") {
        assert!(is_trace_id(trace_id.as_str().unwrap()), "{envelope}");
    }
}

#[tokio::test]
async fn envelopes_carry_what_the_official_sdk_validates() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let welcome = &session.envelope;
    assert_sdk_envelope(welcome);
    assert!(is_sdk_id(&session.session_id));
    assert_eq!(welcome["payload"]["session_id"], json!(session.session_id));
    let accepted_at = welcome["payload"]["accepted_at"].as_str().unwrap();
    assert!(arcp_gateway::protocol::parse_utc_timestamp(accepted_at).is_some());

    let (status, accepted) = server
        .submit(
            &session.session_id,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": {"x": 1},
                   "lease_request": {"cost.budget": ["USD:1.00"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_sdk_envelope(&accepted);
    assert_eq!(accepted["payload"]["budget"], json!({"USD": "USD:1.00"}));
    let job = accepted["payload"]["job_id"].as_str().unwrap().to_owned();
    assert!(is_sdk_id(&job));

    let mut stream = server.stream(&session.session_id, ALICE_TOKEN, None).await;
    let rewelcome = stream.welcome().await;
    assert_sdk_envelope(&rewelcome.envelope);
    let events = stream.events_until(is_terminal_for(&job)).await;
    for event in &events {
        assert_sdk_envelope(&event.data);
    }
    let terminal = &events.last().unwrap().data["payload"];
    let completed_at = terminal["completed_at"].as_str().expect("completed_at");
    assert!(arcp_gateway::protocol::parse_utc_timestamp(completed_at).is_some());
}

#[tokio::test]
async fn an_envelope_trace_id_must_be_a_w3c_trace_id() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let submit = |trace_id: &str| {
        json!({"arcp": "1.1", "id": "01JZ0000000000000000000000", "type": "job.submit",
               "trace_id": trace_id, "payload": {"agent": "echo"}})
    };
    let (status, body) = server
        .submit(&session.session_id, ALICE_TOKEN, submit("not-a-trace"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "INVALID_REQUEST");
    let (status, body) = server
        .submit(
            &session.session_id,
            ALICE_TOKEN,
            submit("0af7651916cd43dd8448eb211c80319c"),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["trace_id"], "0af7651916cd43dd8448eb211c80319c");
}
