//! SSE frames: a job event's frame, encoded once when it is appended (or its
//! head alone, for fan-out copies), control events without `id:`, and the
//! `retry:` hint.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::event_log::{EncodedFrame, EventDraft};
use crate::ids::{EventSeq, SessionId};
use crate::protocol::{job_envelope_head, push_json_number};

/// A keepalive comment (§6.4 heartbeats are not events and use no seq).
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// The [`crate::event_log::FrameEncoder`] for job events. The session's own
/// envelope fields are written here; the rest (payload included) is the
/// draft's shared serialization, copied, so fanning one event out to many
/// sessions serializes its payload once.
pub fn encode_job_event(session_id: &SessionId, seq: EventSeq, draft: &EventDraft) -> EncodedFrame {
    let shared = draft.shared_envelope();
    let mut frame = Vec::with_capacity(shared.len() + 192 + session_id.as_str().len());
    // A fresh id is formatted on the stack, not allocated as a `MessageId`.
    let mut fresh = [0u8; ulid::ULID_LEN];
    let id = match &draft.message_id {
        Some(id) => id.as_str(),
        None => ulid::Ulid::new().array_to_str(&mut fresh),
    };
    let start = encode_job_event_head(&mut frame, session_id, seq, draft.message_type, id);
    frame.extend_from_slice(shared);
    let envelope = start..frame.len();
    frame.extend_from_slice(b"\n\n");
    EncodedFrame {
        frame: Bytes::from(frame),
        envelope,
    }
}

/// The [`crate::event_log::HeadEncoder`] for job events: the frame of
/// [`encode_job_event`] up to the draft's shared envelope, for the message
/// id `id`. Returns where the envelope JSON starts.
pub fn encode_job_event_head(
    frame: &mut Vec<u8>,
    session_id: &SessionId,
    seq: EventSeq,
    message_type: &'static str,
    id: &str,
) -> usize {
    frame.extend_from_slice(b"id: ");
    push_json_number(frame, seq);
    frame.extend_from_slice(b"\nevent: ");
    frame.extend_from_slice(message_type.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    let start = frame.len();
    job_envelope_head(frame, message_type, session_id, seq, id);
    start
}

/// An event with no `id:` line, for control messages. `data` must be one
/// line (JSON from `serde_json` always is).
pub fn encode_unsequenced_event(event_type: &str, data: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(data.len() + event_type.len() + 20);
    frame.extend_from_slice(b"event: ");
    frame.extend_from_slice(event_type.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\n\n");
    frame.freeze()
}

/// The reconnection delay hint.
pub fn encode_retry(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", retry.as_millis()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;
    use crate::event_log::LogEntry;
    use crate::ids::JobId;

    /// A parser that follows the WHATWG event-stream interpretation rules,
    /// for checking what a browser would see.
    fn parse_events(stream: &str) -> Vec<(Option<String>, String, String)> {
        let mut events = Vec::new();
        let (mut id, mut event, mut data): (Option<String>, String, Vec<String>) =
            (None, String::new(), Vec::new());
        for line in stream.split('\n') {
            if line.is_empty() {
                if !data.is_empty() {
                    events.push((id.take(), std::mem::take(&mut event), data.join("\n")));
                }
                data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = value.to_owned(),
                "data" => data.push(value.to_owned()),
                _ => {}
            }
        }
        events
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "\\PC*|[\\r\\n\\u{2028}:\\x00-\\x1f]*".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::hash_map("[a-z\\n:]{0,6}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn one_draft_fans_out_with_each_sessions_own_envelope_fields() {
        let draft = EventDraft::new(
            "job.result",
            JobId::from_client("job_f"),
            None,
            json!({"final_status": "success", "result": {"text": "a\nb"}}),
        );
        let mut ids = std::collections::HashSet::new();
        for (n, session) in ["sess_a", "sess_b", "sess_c"].into_iter().enumerate() {
            let seq = 10 + n as u64;
            let encoded = encode_job_event(&SessionId::from_client(session), seq, &draft);
            let envelope: Value =
                serde_json::from_slice(&encoded.frame[encoded.envelope.clone()]).unwrap();
            assert_eq!(envelope["session_id"], json!(session));
            assert_eq!(envelope["event_seq"], json!(seq));
            assert_eq!(envelope["type"], json!("job.result"));
            assert_eq!(envelope["job_id"], json!("job_f"));
            assert_eq!(envelope["payload"], draft.payload);
            assert!(envelope.get("trace_id").is_none());
            assert!(
                ids.insert(envelope["id"].as_str().unwrap().to_owned()),
                "message ids differ"
            );
        }
    }

    proptest! {
        #[test]
        fn job_event_frames_parse_back_to_one_event(payload in arbitrary_json(), seq in 1u64..u64::MAX) {
            let session_id = SessionId::from_client("sess_x");
            let draft = EventDraft::new("job.event", JobId::from_client("job_y"), Some("trace".into()), payload.clone());
            let encoded = encode_job_event(&session_id, seq, &draft);
            let text = std::str::from_utf8(&encoded.frame).unwrap();
            let entry = LogEntry { seq, job_id: draft.job_id.clone(), frame: encoded.frame.clone(), envelope: encoded.envelope };
            let rebuilt = entry.to_draft().unwrap();
            prop_assert_eq!(&rebuilt.payload, &payload);
            prop_assert_eq!(rebuilt.message_type, "job.event");
            let events = parse_events(text);
            prop_assert_eq!(events.len(), 1);
            let (id, event, data) = &events[0];
            let expected_id = seq.to_string();
            prop_assert_eq!(id.as_deref(), Some(expected_id.as_str()));
            prop_assert_eq!(event, "job.event");
            let envelope: Value = serde_json::from_str(data).unwrap();
            prop_assert_eq!(&envelope["payload"], &payload);
            prop_assert_eq!(&envelope["event_seq"], &json!(seq));
            prop_assert_eq!(&envelope["session_id"], &json!("sess_x"));
        }

        #[test]
        fn any_session_id_and_message_id_are_written_as_json_strings(
            session in any::<String>(),
            message in proptest::option::of(any::<String>()),
            seq in any::<u64>(),
        ) {
            let session_id = SessionId::from_client(&session);
            let mut draft = EventDraft::new("job.event", JobId::from_client("job_\"y"), None, json!(1));
            draft.message_id = message.as_deref().map(crate::ids::MessageId::from_client);
            let encoded = encode_job_event(&session_id, seq, &draft);
            let envelope: Value = serde_json::from_slice(&encoded.frame[encoded.envelope.clone()]).unwrap();
            prop_assert_eq!(&envelope["session_id"], &json!(session));
            prop_assert_eq!(&envelope["event_seq"], &json!(seq));
            prop_assert_eq!(&envelope["arcp"], &json!("1.1"));
            prop_assert_eq!(&envelope["job_id"], &json!("job_\"y"));
            match message {
                Some(message) => prop_assert_eq!(&envelope["id"], &json!(message)),
                None => prop_assert_eq!(envelope["id"].as_str().map(str::len), Some(26)),
            }
        }

        #[test]
        fn unsequenced_events_carry_no_id(payload in arbitrary_json()) {
            let data = serde_json::to_vec(&payload).unwrap();
            let frame = encode_unsequenced_event("session.welcome", &data);
            let events = parse_events(std::str::from_utf8(&frame).unwrap());
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(events[0].0.clone(), None);
            let parsed: Value = serde_json::from_str(&events[0].2).unwrap();
            prop_assert_eq!(parsed, payload);
        }
    }
}
