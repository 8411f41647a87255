//! Events in the shared log: how a job's event is stored (once, without any
//! session's own fields), and how a reader turns stored events back into
//! the frames its stream writes.
//!
//! A stored body is `<type>\n<envelope id>\n<shared envelope>`: the
//! envelope's `id`, fixed when the event was queued so every read of it
//! gives the same bytes, and its session-independent end
//! ([`EventDraft::shared_envelope`]). The session's
//! own fields, `session_id` and the `event_seq` the store allocated, are
//! written by the node's [`FrameEncoder`] when the event is read, so the
//! bytes a client gets are the same whichever node serves it and whether
//! the event is replayed or live.

use bytes::{Bytes, BytesMut};

use crate::event_log::{EventDraft, FrameEncoder, LogEntry};
use crate::ids::{EventSeq, MessageId, SessionId};
use crate::storage::StoredEvent;

const MESSAGE_TYPES: [&str; 3] = ["job.event", "job.result", "job.error"];

/// The stored body of one event.
pub fn encode_body(message_type: &str, message_id: &MessageId, shared_envelope: &[u8]) -> Bytes {
    let id = message_id.as_str();
    let mut body =
        BytesMut::with_capacity(message_type.len() + id.len() + 2 + shared_envelope.len());
    body.extend_from_slice(message_type.as_bytes());
    body.extend_from_slice(b"\n");
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(b"\n");
    body.extend_from_slice(shared_envelope);
    body.freeze()
}

/// Splits a stored body; `None` for anything this node never writes.
pub fn decode_body(body: &Bytes) -> Option<(&'static str, MessageId, Bytes)> {
    let first = body.iter().position(|byte| *byte == b'\n')?;
    let message_type = MESSAGE_TYPES
        .into_iter()
        .find(|candidate| candidate.as_bytes() == &body[..first])?;
    let rest = &body[first + 1..];
    let second = rest.iter().position(|byte| *byte == b'\n')?;
    let id = std::str::from_utf8(&rest[..second]).ok()?;
    // Only ids this gateway generates (ULIDs) go back on the wire.
    ulid::Ulid::from_string(id).ok()?;
    Some((
        message_type,
        MessageId::from_client(id),
        body.slice(first + 1 + second + 1..),
    ))
}

/// Why stored events could not become frames.
#[derive(Debug, PartialEq, Eq)]
pub struct Undecodable {
    pub seq: EventSeq,
}

/// The frame of one stored event in `session_id`'s stream.
pub fn entry(
    encode: FrameEncoder,
    session_id: &SessionId,
    event: StoredEvent,
) -> Result<LogEntry, Undecodable> {
    let (message_type, message_id, shared) =
        decode_body(&event.body).ok_or(Undecodable { seq: event.seq })?;
    let draft =
        EventDraft::from_shared_envelope(message_type, event.job_id.clone(), message_id, shared);
    let encoded = encode(session_id, event.seq, &draft);
    Ok(LogEntry {
        seq: event.seq,
        job_id: event.job_id,
        frame: encoded.frame,
        envelope: encoded.envelope,
    })
}

/// The frames of stored events joined into one chunk, with the last
/// sequence number in it; `None` for no events.
pub fn chunk(
    encode: FrameEncoder,
    session_id: &SessionId,
    events: Vec<StoredEvent>,
) -> Result<Option<(EventSeq, Bytes)>, Undecodable> {
    let Some(last) = events.last().map(|event| event.seq) else {
        return Ok(None);
    };
    let mut chunk = BytesMut::new();
    for event in events {
        chunk.extend_from_slice(&entry(encode, session_id, event)?.frame);
    }
    Ok(Some((last, chunk.freeze())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bodies_round_trip(kind in 0usize..3, shared in proptest::collection::vec(any::<u8>(), 0..256)) {
            let message_type = MESSAGE_TYPES[kind];
            let id = MessageId::generate();
            let body = encode_body(message_type, &id, &shared);
            let (decoded_type, decoded_id, decoded) = decode_body(&body).expect("decodes");
            prop_assert_eq!(decoded_type, message_type);
            prop_assert_eq!(decoded_id, id);
            prop_assert_eq!(&decoded[..], &shared[..]);
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_body(&Bytes::from(body));
        }
    }

    #[test]
    fn unknown_types_are_refused() {
        let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        for body in [
            format!("session.welcome\n{id}\n{{}}"),
            "job.event".to_owned(),
            format!("job.event\n{id}"),
            "job.event\nnot-a-ulid\n{}".to_owned(),
        ] {
            assert!(decode_body(&Bytes::from(body)).is_none());
        }
        assert!(decode_body(&Bytes::from(format!("job.event\n{id}\n{{}}"))).is_some());
    }
}
