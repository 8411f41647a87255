//! Events in the shared log: how a job's event is stored (once, without any
//! session's own fields), and how a reader turns stored events back into
//! the frames its stream writes.
//!
//! A stored body is `<type>\n<envelope id>\n<append index>\n<shared
//! envelope>`: the envelope's `id`, fixed when the event was queued so every
//! read of it gives the same bytes; the job's own number for the event (its
//! append index, which copies in subscribers' logs keep, so a copy missing
//! from a subscriber can be found); and the envelope's session-independent
//! end ([`EventDraft::shared_envelope`]). The session's
//! own fields, `session_id` and the `event_seq` the store allocated, are
//! written by the node's [`FrameEncoder`] when the event is read, so the
//! bytes a client gets are the same whichever node serves it and whether
//! the event is replayed or live.

use bytes::{Bytes, BytesMut};

use crate::event_log::{EventDraft, FrameEncoder, LogEntry};
use crate::ids::{EventSeq, MessageId, SessionId};
use crate::storage::StoredEvent;

const MESSAGE_TYPES: [&str; 3] = ["job.event", "job.result", "job.error"];

/// One stored event, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    pub message_type: &'static str,
    pub message_id: MessageId,
    /// The job's append index of the event (0 for a reaper's terminal).
    pub index: u64,
    pub shared: Bytes,
}

impl Body {
    /// The same event under a fresh envelope id (an id names one message
    /// in one session), for a copy in a subscriber's log.
    pub fn copy(&self) -> Bytes {
        encode_body(
            self.message_type,
            &MessageId::generate(),
            self.index,
            &self.shared,
        )
    }
}

/// The stored body of one event.
pub fn encode_body(
    message_type: &str,
    message_id: &MessageId,
    index: u64,
    shared_envelope: &[u8],
) -> Bytes {
    let id = message_id.as_str();
    let index = index.to_string();
    let mut body = BytesMut::with_capacity(
        message_type.len() + id.len() + index.len() + 3 + shared_envelope.len(),
    );
    for part in [message_type.as_bytes(), id.as_bytes(), index.as_bytes()] {
        body.extend_from_slice(part);
        body.extend_from_slice(b"\n");
    }
    body.extend_from_slice(shared_envelope);
    body.freeze()
}

/// Splits a stored body; `None` for anything this node never writes.
pub fn decode_body(body: &Bytes) -> Option<Body> {
    let mut parts = body.splitn(4, |byte| *byte == b'\n');
    let (name, id, index) = (parts.next()?, parts.next()?, parts.next()?);
    let shared_len = parts.next()?.len();
    let message_type = MESSAGE_TYPES
        .into_iter()
        .find(|candidate| candidate.as_bytes() == name)?;
    let id = std::str::from_utf8(id).ok()?;
    // Only ids this gateway generates (ULIDs) go back on the wire.
    ulid::Ulid::from_string(id).ok()?;
    let index = std::str::from_utf8(index).ok()?.parse().ok()?;
    Some(Body {
        message_type,
        message_id: MessageId::from_client(id),
        index,
        shared: body.slice(body.len() - shared_len..),
    })
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
    let body = decode_body(&event.body).ok_or(Undecodable { seq: event.seq })?;
    let draft = EventDraft::from_shared_envelope(
        body.message_type,
        event.job_id.clone(),
        body.message_id,
        body.shared,
    );
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
        fn bodies_round_trip(
            kind in 0usize..3,
            index in any::<u64>(),
            shared in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let message_type = MESSAGE_TYPES[kind];
            let id = MessageId::generate();
            let body = encode_body(message_type, &id, index, &shared);
            let decoded = decode_body(&body).expect("decodes");
            prop_assert_eq!(decoded.message_type, message_type);
            prop_assert_eq!(&decoded.message_id, &id);
            prop_assert_eq!(decoded.index, index);
            prop_assert_eq!(&decoded.shared[..], &shared[..]);
            let copy = decode_body(&decoded.copy()).expect("a copy decodes");
            prop_assert_ne!(&copy.message_id, &id);
            prop_assert_eq!((copy.index, copy.shared), (index, decoded.shared));
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
            format!("session.welcome\n{id}\n1\n{{}}"),
            "job.event".to_owned(),
            format!("job.event\n{id}\n1"),
            format!("job.event\n{id}\n{{}}"),
            format!("job.event\n{id}\n-1\n{{}}"),
            "job.event\nnot-a-ulid\n1\n{}".to_owned(),
        ] {
            assert!(decode_body(&Bytes::from(body)).is_none());
        }
        assert!(decode_body(&Bytes::from(format!("job.event\n{id}\n7\n{{}}"))).is_some());
    }
}
