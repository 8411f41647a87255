//! A job's event fanned out to its subscribers' logs as one shared record
//! ([`Deferred`]), whose copies' frames are written when they are read.

use std::hash::{Hash, Hasher};

use bytes::Bytes;

use crate::event_log::HeadEncoder;
use crate::ids::{EventSeq, SessionId};

/// What a deferred head's length depends on ([`HeadEncoder`]'s contract),
/// and that length with where its envelope starts.
#[derive(Clone, Copy)]
pub(super) struct HeadShape {
    pub(super) seq_digits: u32,
    pub(super) message_type: &'static str,
    pub(super) len: usize,
    pub(super) envelope_start: usize,
}

/// A job's event in its subscribers' logs, kept as what its frames are made
/// of rather than the frames: one record per event, shared by every copy
/// (one allocation for all of them, not one each). A copy's frame differs
/// from another's only by the session's id, its `event_seq` and its
/// envelope id, which [`Deferred::message_id`] derives from the session's
/// id, so every read of a copy writes the same bytes.
pub(crate) struct Deferred {
    head: HeadEncoder,
    pub(super) message_type: &'static str,
    /// Drawn once per event; each copy's id mixes the session's id into it.
    pub(super) event_id: ulid::Ulid,
    pub(super) shared: Bytes,
}

impl Deferred {
    pub(super) fn new(head: HeadEncoder, message_type: &'static str, shared: Bytes) -> Deferred {
        Deferred {
            head,
            message_type,
            event_id: ulid::Ulid::new(),
            shared,
        }
    }

    /// The envelope id of the copy in the log whose [`id_mix`] is `mix`:
    /// the event's id with its low 64 random bits mixed with a hash of the
    /// session's id. Its time stays the event's; two copies share an id
    /// only if their session ids hash alike in 64 bits, beside the 80
    /// random bits that make a fresh ULID unique.
    fn message_id(&self, mix: u64) -> ulid::Ulid {
        ulid::Ulid(self.event_id.0 ^ u128::from(mix))
    }

    /// Appends the head of the copy of `seq` in `session_id`'s log (the
    /// frame up to the shared envelope), `mix` being that log's
    /// [`id_mix`]; returns where its envelope JSON starts, relative to
    /// `frame`'s start.
    pub(crate) fn write_head(
        &self,
        frame: &mut Vec<u8>,
        session_id: &SessionId,
        mix: u64,
        seq: EventSeq,
    ) -> usize {
        let mut id = [0u8; ulid::ULID_LEN];
        let id = self.message_id(mix).array_to_str(&mut id);
        (self.head)(frame, session_id, seq, self.message_type, id)
    }

    /// The session-independent end of the envelope.
    pub(crate) fn shared(&self) -> &Bytes {
        &self.shared
    }

    /// Appends the whole frame of the copy of `seq` in `session_id`'s log
    /// (`mix` as in [`Deferred::write_head`]); returns where its envelope
    /// JSON starts, relative to the frame.
    pub(crate) fn write_frame(
        &self,
        frame: &mut Vec<u8>,
        session_id: &SessionId,
        mix: u64,
        seq: EventSeq,
    ) -> usize {
        let before = frame.len();
        let start = self.write_head(frame, session_id, mix, seq);
        frame.extend_from_slice(&self.shared);
        frame.extend_from_slice(b"\n\n");
        start - before
    }
}

/// What a session's id mixes into its copies' envelope ids
/// ([`Deferred::message_id`]): a hash with fixed keys, taken once per log.
pub(super) fn id_mix(session_id: &SessionId) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    session_id.as_str().hash(&mut hasher);
    hasher.finish()
}
