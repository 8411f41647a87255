//! Envelopes on the WebSocket binding: what clients send, parsed and bounded;
//! what the gateway sends, built as typed records; and logged job events
//! adapted to what the official SDKs accept.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::event_log::LogEntry;
use crate::http::error::ApiError;
use crate::ids::{MessageId, SessionId};
use crate::protocol::{now_rfc3339, Envelope, ErrorPayload, ARCP_VERSION};

/// The longest envelope `id`, `type` or `job_id` accepted from a client.
const MAX_ID_BYTES: usize = 128;

/// An envelope a client sent (§5). Unknown top-level fields are ignored.
#[derive(Deserialize)]
pub struct Inbound {
    #[serde(default)]
    pub arcp: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub message_type: String,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub payload: Value,
}

/// Parses one text message. Its size is already bounded by the socket's
/// message limit.
pub fn parse_inbound(text: &str) -> Result<Inbound, ApiError> {
    // The same limits as every JSON body (nesting depth, no duplicate keys),
    // so what a WebSocket client sends re-reads like what a REST client does.
    let value = crate::json::parse(text.as_bytes())
        .map_err(|error| ApiError::InvalidRequest(format!("not an ARCP envelope: {error}")))?;
    let inbound: Inbound = serde_json::from_value(value)
        .map_err(|error| ApiError::InvalidRequest(format!("not an ARCP envelope: {error}")))?;
    if inbound.arcp.as_deref().is_some_and(|v| v != ARCP_VERSION) {
        return Err(ApiError::InvalidRequest(format!(
            "this runtime speaks arcp {ARCP_VERSION}"
        )));
    }
    let too_long = |text: &Option<String>| text.as_ref().is_some_and(|t| t.len() > MAX_ID_BYTES);
    if inbound.message_type.len() > MAX_ID_BYTES
        || too_long(&inbound.id)
        || too_long(&inbound.job_id)
    {
        return Err(ApiError::InvalidRequest(format!(
            "envelope id, type and job_id are at most {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(inbound)
}

/// The envelope's payload as `T`; a missing payload reads as `{}`.
pub fn payload<T: DeserializeOwned>(inbound: &Inbound) -> Result<T, ApiError> {
    let payload = match &inbound.payload {
        Value::Null => Value::Object(Map::new()),
        other => other.clone(),
    };
    serde_json::from_value(payload).map_err(|error| {
        ApiError::InvalidRequest(format!("invalid {} payload: {error}", inbound.message_type))
    })
}

fn text(json: Vec<u8>) -> Message {
    // serde_json writes UTF-8.
    Message::Text(Utf8Bytes::try_from(Bytes::from(json)).unwrap_or_default())
}

/// A control envelope of the session (welcome, pong, jobs, …).
pub fn control(envelope: &Envelope<'_>) -> Message {
    text(envelope.to_json_bytes())
}

/// The welcome, already built as an envelope value.
pub fn value(envelope: &Value) -> Message {
    text(serde_json::to_vec(envelope).unwrap_or_default())
}

/// `session.error` (§12): `{code, message, retryable}`, with the id of the
/// request it answers when there is one. Before a session exists it has no
/// `session_id`.
pub fn session_error(
    session_id: Option<&SessionId>,
    error: &ApiError,
    request_id: Option<&str>,
) -> Message {
    #[derive(Serialize)]
    struct ErrorEnvelope<'a> {
        arcp: &'static str,
        id: MessageId,
        #[serde(rename = "type")]
        message_type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_id: Option<&'a SessionId>,
        payload: ErrorBody<'a>,
    }
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        #[serde(flatten)]
        error: ErrorPayload,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    }
    let envelope = ErrorEnvelope {
        arcp: ARCP_VERSION,
        id: MessageId::generate(),
        message_type: "session.error",
        session_id,
        payload: ErrorBody {
            error: error.payload(),
            request_id,
        },
    };
    text(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// A logged job event as one text message. Two adaptations, both on this
/// binding only (the log and SSE keep the spec's form):
///
/// - a `job.error` whose `final_status` is `cancelled` or `timed_out` goes out
///   as `job.result` with the same payload (code and message kept): the
///   official SDKs accept only `final_status: "error"` on `job.error` and end
///   cancelled and timed-out jobs with `job.result` (CONFORMANCE.md §7.4);
/// - an envelope over `limit` bytes is replaced, under the same `event_seq`,
///   by a small one of the same type that says so, so the sequence has no
///   gap and the client no message it would refuse.
pub fn job_message(entry: &LogEntry, limit: usize) -> Message {
    let mut json = entry.frame.slice(entry.envelope.clone());
    if is_job_error(&json) {
        if let Some(adapted) = adapt_terminal(&json) {
            json = adapted;
        }
    }
    if json.len() > limit {
        json = oversized(&json, limit);
    }
    match Utf8Bytes::try_from(json) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Text(Utf8Bytes::default()),
    }
}

/// The log writes job envelopes head first (`{"arcp":…,"id":…,"type":…`), so
/// the type is within the first bytes.
fn is_job_error(json: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"type\":\"job.error\"";
    let head = &json[..json.len().min(96)];
    head.windows(NEEDLE.len()).any(|window| window == NEEDLE)
}

fn adapt_terminal(json: &[u8]) -> Option<Bytes> {
    let mut envelope: Value = serde_json::from_slice(json).ok()?;
    let status = envelope.pointer("/payload/final_status")?.as_str()?;
    if status != "cancelled" && status != "timed_out" {
        return None;
    }
    envelope["type"] = json!("job.result");
    serde_json::to_vec(&envelope).ok().map(Bytes::from)
}

fn oversized(json: &[u8], limit: usize) -> Bytes {
    let Ok(Value::Object(mut envelope)) = serde_json::from_slice::<Value>(json) else {
        return Bytes::new();
    };
    let original = envelope.remove("payload").unwrap_or(Value::Null);
    let seq = envelope.get("event_seq").cloned().unwrap_or(Value::Null);
    let note = format!(
        "event_seq {seq} is {} bytes, over this connection's {limit}-byte message limit; \
         read it over SSE (GET /v1/sessions/{{id}}/events)",
        json.len()
    );
    let text_field = |field: &str| original.get(field).cloned().unwrap_or(Value::Null);
    let payload = match envelope.get("type").and_then(Value::as_str) {
        Some("job.result") => json!({
            "final_status": text_field("final_status"),
            "completed_at": text_field("completed_at"),
            "summary": note,
        }),
        Some("job.error") => json!({
            "final_status": text_field("final_status"),
            "code": text_field("code"),
            "message": note,
            "retryable": text_field("retryable"),
            "completed_at": text_field("completed_at"),
        }),
        _ => json!({
            "kind": "log",
            "ts": now_rfc3339(),
            "body": { "level": "warn", "message": note },
        }),
    };
    envelope.insert("payload".into(), payload);
    serde_json::to_vec(&envelope)
        .map(Bytes::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_log::EventDraft;
    use crate::http::sse::encode_job_event;
    use crate::ids::JobId;

    fn entry(message_type: &'static str, payload: Value) -> LogEntry {
        let draft = EventDraft::new(message_type, JobId::from_client("job_1"), None, payload);
        let encoded = encode_job_event(&SessionId::from_client("sess_1"), 7, &draft);
        LogEntry {
            seq: 7,
            job_id: draft.job_id.clone(),
            frame: encoded.frame,
            envelope: encoded.envelope,
        }
    }

    fn parsed(message: Message) -> Value {
        let Message::Text(text) = message else {
            panic!("not text")
        };
        serde_json::from_str(text.as_str()).unwrap()
    }

    #[test]
    fn cancelled_and_timed_out_errors_go_out_as_results() {
        for status in ["cancelled", "timed_out"] {
            let out = parsed(job_message(
                &entry(
                    "job.error",
                    json!({"final_status": status, "code": "CANCELLED", "message": "m",
                           "retryable": false, "completed_at": "2026-01-01T00:00:00.000Z"}),
                ),
                1 << 20,
            ));
            assert_eq!(out["type"], "job.result");
            assert_eq!(out["payload"]["final_status"], status);
            assert_eq!(out["event_seq"], 7);
        }
        let failed = parsed(job_message(
            &entry(
                "job.error",
                json!({"final_status": "error", "code": "TIMEOUT"}),
            ),
            1 << 20,
        ));
        assert_eq!(failed["type"], "job.error");
    }

    #[test]
    fn an_oversized_event_keeps_its_seq_and_says_why() {
        let big = "x".repeat(10_000);
        let out = job_message(
            &entry(
                "job.event",
                json!({"kind": "log", "body": {"message": big}}),
            ),
            4096,
        );
        let Message::Text(text) = &out else { panic!() };
        assert!(text.len() < 4096);
        let out = parsed(out);
        assert_eq!(out["event_seq"], 7);
        assert_eq!(out["type"], "job.event");
        assert!(out["payload"]["body"]["message"]
            .as_str()
            .unwrap()
            .contains("message limit"));
    }

    #[test]
    fn inbound_envelopes_are_bounded() {
        assert!(parse_inbound(r#"{"type":"session.ping","payload":{}}"#).is_ok());
        assert!(parse_inbound(r#"{"arcp":"2.0","type":"session.ping"}"#).is_err());
        assert!(parse_inbound("[1,2]").is_err());
        let long = format!(r#"{{"type":"{}"}}"#, "t".repeat(200));
        assert!(parse_inbound(&long).is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let deep = format!(r#"{{"type":"x","payload":{deep}}}"#);
        assert!(parse_inbound(&deep).is_err(), "nesting is bounded");
    }
}
