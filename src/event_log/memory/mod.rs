//! The embedded, in-memory event log backend, and the read cache of the
//! durable one.
//!
//! Sessions live in a map behind a read-write lock that is only written when a
//! session is created or removed; each session's log has its own mutex, so
//! sessions never contend with each other.
//!
//! With a [`LogSink`] attached (the durable store), every append, release and
//! removal is handed to the sink in order, and readers see an event only once
//! the sink reports it durable ([`MemoryEventLog::mark_durable`]): a client
//! can never have been sent an event that a crash then loses.
//!
//! # How a session's frames are stored
//!
//! A session's encoded frames lie back to back in a few large buffers, the
//! *blocks*, rather than one allocation per event. A read can then hand out
//! one [`Bytes`] that is a slice of stored memory, covering many frames,
//! instead of copying them into a fresh buffer. (A profile of replay with
//! small events showed that copy, and the page faults of the fresh 512 KiB
//! buffers, as its largest costs.)
//!
//! ```text
//!   sealed blocks: Bytes, never written again               the open tail: BytesMut
//!   ┌─────────────────┐┌──────────────────────────┐┌────┐  ┌─────────────┬─────────┐
//!   │ f5 f6 f7 f8     ││ f9 f10 ... f95           ││ f96│  │ f97 f98     │ (spare) │
//!   └─────────────────┘└──────────────────────────┘└────┘  └─────────────┴─────────┘
//!    block 3             block 4                    block 5  block 6 once sealed
//! ```
//!
//! - **Append** copies the encoder's frame to the end of the open tail (one
//!   copy of the new frame; frames already stored never move). When the
//!   tail has no room left, it is sealed and a new allocation starts, sized
//!   to a quarter of what the session retains, between 4 KiB and 1 MiB:
//!   a session with few events (or one whose client acknowledges as it
//!   goes) stays small, a long history gets large blocks. A frame larger
//!   than 1 MiB becomes a block of its own, the encoder's buffer kept as
//!   it is (no copy).
//! - **Sealing** is `tail.split().freeze()`: the written part of the tail
//!   becomes an immutable, shareable `Bytes` and the tail keeps the spare
//!   room of the same allocation. Nothing is copied.
//! - **Entries** keep only metadata: seq, job id, the number of the block
//!   holding the frame, where in it the frame starts, and its length.
//!   Frames never straddle two blocks. They lie in chunks (`Entries`,
//!   `event_log/entries.rs`), so an append never moves older entries: a
//!   job's subscribers' logs grow in step, and one doubling queue each
//!   made the same append move every subscriber's history at once.
//! - **Reads** that need a frame still in the tail seal the tail first, so
//!   in live streaming (a read after every append) each read is one small
//!   block, still without a copy. `read_chunk_after` returns
//!   `block.slice(..)` over consecutive frames of one block, cut at the end
//!   of the block and at the [`ReadLimit`]; `read_after` gives every entry a
//!   slice of its block.
//! - **One exception copies.** History that was read live consists of tiny
//!   blocks (one per read), and slicing it would replay it one frame per
//!   chunk. When a zero-copy chunk would be small (under 16 KiB) only because
//!   its block ends there, the frames of the following small blocks are
//!   copied into one chunk of at most 64 KiB instead; a block of 16 KiB or
//!   more is always sliced. History appended while no one read (the usual
//!   replay) lies in large blocks, so only its first few (small) blocks are
//!   copied.
//! - **Readers share blocks.** A `Bytes` handed out keeps its whole
//!   allocation alive until it is dropped, even once evicted here; streams
//!   hold a few chunks at most, and `read_after`'s callers drop entries
//!   quickly.
//! - **A job's copies to its subscribers are deferred** (§7.6; in memory
//!   only, see [`MemoryEventLog::defer_fan_out`]). The entry keeps a
//!   record of the event shared by every copy (the job's envelope, an id
//!   drawn once; one allocation per event, not per copy) and no frame:
//!   reads write its frame into the chunk they return, as the copied chunks
//!   above are written, with an envelope id derived from the session's.
//!   The job's serial work per subscriber shrinks to a short entry, and a
//!   fan-out to 1,000 subscribers held 88 MB instead of 242 MB (the fan-out
//!   bench's peak RSS; a record per copy then). Retention still counts the
//!   frame's full length.
//! - **The sink gets the encoder's buffer**, not a view of a block (see
//!   [`LogSink::appended`]): the store's write queue then never pins a
//!   block, and no block has to be sealed per append.
//! - **Eviction** (retention limits, `release_through`) pops entries from
//!   the front and drops a sealed block once no retained entry lies in it;
//!   with no entry left, every block goes, the tail included. The byte
//!   count stays per frame. What the blocks hold beyond the retained frames
//!   is bounded: the evicted front part of the oldest allocation still in
//!   use, and the unwritten room of the tail; each is less than one
//!   allocation, that is at most 1 MiB and at most a quarter of what the
//!   session retained when it was made (or 4 KiB).

mod blocks;
mod deferred;
mod session_log;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock, Weak};

use bytes::Bytes;

pub(crate) use self::deferred::Deferred;
use self::deferred::HeadShape;
use self::session_log::SessionLog;
pub use self::slot::SessionReader;
use self::slot::SessionSlot;

use crate::event_log::budget::{Account, RetentionBudget};
use crate::event_log::signal::NewestWatch;
use crate::event_log::tap::{OfferedFrame, Offers};
use crate::event_log::{
    EventDraft, EventLog, EventLogError, FrameEncoder, HeadEncoder, LogBounds, LogEntry, ReadLimit,
    RetentionLimits,
};
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::metrics::Metrics;

/// Where a durable backend receives the log's writes, in the order they
/// happened. Calls are made under the session's lock; they may wait for room
/// in a bounded queue (back-pressure on producers), so a sink must never need
/// that lock to make progress.
pub trait LogSink: Send + Sync {
    fn created(&self, session_id: &SessionId);
    /// `entry.frame` is the encoder's own buffer, not a view of the log's
    /// blocks, so keeping it does not pin a block in memory.
    fn appended(&self, session_id: &SessionId, entry: &LogEntry);
    /// Everything at or below `floor` is gone (evicted or acknowledged).
    fn released(&self, session_id: &SessionId, floor: EventSeq);
    fn removed(&self, session_id: &SessionId);
}

pub struct MemoryEventLog {
    sessions: RwLock<HashMap<SessionId, Arc<SessionSlot>, foldhash::fast::RandomState>>,
    limits: RetentionLimits,
    budget: Arc<RetentionBudget>,
    encode: FrameEncoder,
    /// Set by [`MemoryEventLog::defer_fan_out`].
    fan_out_head: OnceLock<HeadEncoder>,
    sink: OnceLock<Arc<dyn LogSink>>,
    metrics: OnceLock<Arc<Metrics>>,
}

impl MemoryEventLog {
    /// A log bounded per session only.
    pub fn new(limits: RetentionLimits, encode: FrameEncoder) -> Self {
        MemoryEventLog::with_budget(limits, encode, Arc::new(RetentionBudget::unlimited()))
    }

    /// A log bounded per session and by `budget` (per principal and
    /// gateway-wide).
    pub fn with_budget(
        limits: RetentionLimits,
        encode: FrameEncoder,
        budget: Arc<RetentionBudget>,
    ) -> Self {
        MemoryEventLog {
            sessions: RwLock::new(HashMap::default()),
            limits: RetentionLimits {
                max_events: limits.max_events.max(1),
                max_bytes: limits.max_bytes.max(1),
            },
            budget,
            encode,
            fan_out_head: OnceLock::new(),
            sink: OnceLock::new(),
            metrics: OnceLock::new(),
        }
    }

    fn account_of(&self, owner: Option<&Principal>) -> Arc<Account> {
        match owner {
            Some(principal) => self.budget.account(principal),
            None => self.budget.unowned(),
        }
    }

    /// Hands every later write to `sink` and shows readers only what the
    /// sink has confirmed durable. Set once, before serving.
    pub fn attach_sink(&self, sink: Arc<dyn LogSink>) {
        let _ = self.sink.set(sink);
    }

    /// From now on, [`EventLog::append_each`] (a job's event copied to its
    /// subscribers, §7.6) stores each copy as a reference to the draft's
    /// shared envelope plus a fixed message id, and writes its frame with
    /// `head` when it is read: the job's serial work per subscriber is a
    /// short entry, not a frame encoded and copied, and the subscribers'
    /// logs share the payload. Frames read are byte for byte those
    /// [`EventLog::append`] would have stored. Ignored while a sink is
    /// attached (the durable store needs every frame at append). Set once,
    /// before serving.
    pub fn defer_fan_out(&self, head: HeadEncoder) {
        let _ = self.fan_out_head.set(head);
    }

    /// Counts every later append in `metrics`. Set once, before serving.
    pub fn attach_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The sink confirmed events up to `seq` durable. Takes no log lock.
    pub fn mark_durable(&self, session_id: &SessionId, seq: EventSeq) {
        if let Ok(slot) = self.session(session_id) {
            slot.publish(seq);
        }
    }

    /// Rebuilds a session's log from storage (recovery): `entries` must be
    /// contiguous from `floor + 1`. They are durable already. Their frames
    /// are copied into blocks like appended ones.
    pub fn restore(&self, session_id: &SessionId, floor: EventSeq, entries: Vec<LogEntry>) {
        self.restore_owned(session_id, None, floor, entries);
    }

    /// [`MemoryEventLog::restore`], charging the log to `owner`'s budget.
    pub fn restore_owned(
        &self,
        session_id: &SessionId,
        owner: Option<&Principal>,
        floor: EventSeq,
        entries: Vec<LogEntry>,
    ) {
        let mut log = SessionLog::new(session_id.clone(), floor, self.account_of(owner));
        for entry in &entries {
            if entry.seq != log.newest + 1 {
                break;
            }
            log.push(entry);
        }
        drop(entries);
        let newest = log.newest;
        let slot = SessionSlot::new(log, self.sink.get().is_none());
        slot.publish(newest);
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sessions.insert(session_id.clone(), Arc::new(slot));
    }

    fn session(&self, session_id: &SessionId) -> Result<Arc<SessionSlot>, EventLogError> {
        let sessions = self
            .sessions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sessions
            .get(session_id)
            .cloned()
            .ok_or(EventLogError::UnknownSession)
    }
}

impl MemoryEventLog {
    /// Assigns the next sequence number in `slot`, stores the frame, and
    /// hands it to the sink or makes it visible.
    fn append_to(
        &self,
        session_id: &SessionId,
        slot: &SessionSlot,
        draft: &EventDraft,
        offers: &mut Offers,
    ) -> EventSeq {
        let mut log = slot.lock();
        let seq = log.newest + 1;
        let encoded = (self.encode)(session_id, seq, draft);
        // The entry keeps the encoder's buffer for the sink; the log stores
        // a copy of the frame in its blocks.
        let entry = LogEntry {
            seq,
            job_id: draft.job_id.clone(),
            frame: encoded.frame,
            envelope: encoded.envelope,
        };
        log.push(&entry);
        let floor_before = log.floor;
        self.stay_within_limits(&mut log, entry.frame.len());
        match self.sink.get() {
            Some(sink) => {
                sink.appended(session_id, &entry);
                if log.floor != floor_before {
                    sink.released(session_id, log.floor);
                }
            }
            None => slot.publish_or_offer(&log, seq, offers, || {
                OfferedFrame::Whole(entry.frame.clone())
            }),
        }
        seq
    }

    /// Appends `deferred` (of `job_id`'s event) to `slot` as a deferred
    /// entry (see [`MemoryEventLog::defer_fan_out`]); `scratch` is reused
    /// for the frame's head, written here only when its length may differ
    /// from the last one's.
    fn append_deferred_to(
        &self,
        session_id: &SessionId,
        slot: &SessionSlot,
        job_id: &JobId,
        deferred: &Arc<Deferred>,
        scratch: &mut Vec<u8>,
        offers: &mut Offers,
    ) -> EventSeq {
        let mut log = slot.lock();
        let seq = log.newest + 1;
        let seq_digits = seq.checked_ilog10().unwrap_or(0) + 1;
        let shape = match log.head_shape {
            Some(shape)
                if shape.seq_digits == seq_digits
                    && shape.message_type == deferred.message_type =>
            {
                shape
            }
            _ => {
                scratch.clear();
                let envelope_start = deferred.write_head(scratch, session_id, log.id_mix, seq);
                let shape = HeadShape {
                    seq_digits,
                    message_type: deferred.message_type,
                    len: scratch.len(),
                    envelope_start,
                };
                log.head_shape = Some(shape);
                shape
            }
        };
        let len = shape.len + deferred.shared().len() + 2;
        let envelope = shape.envelope_start..len - 2;
        log.push_deferred(seq, job_id.clone(), len, envelope, deferred.clone());
        self.stay_within_limits(&mut log, len);
        slot.publish_or_offer(&log, seq, offers, || OfferedFrame::Copy {
            deferred: deferred.clone(),
            session_id: session_id.clone(),
            id_mix: log.id_mix,
        });
        seq
    }

    /// Counts an append of `len` bytes and evicts what the limits no
    /// longer allow. Past a budget shared with other sessions (the owner's,
    /// the gateway's), this session gives up its own oldest events: the
    /// one just written always stays.
    fn stay_within_limits(&self, log: &mut SessionLog, len: usize) {
        if let Some(metrics) = self.metrics.get() {
            metrics.event_appended(len);
        }
        while log.entries.len() > self.limits.max_events
            || (log.entries.len() > 1
                && (log.retained_bytes > self.limits.max_bytes || log.account.over()))
        {
            log.evict_front();
        }
    }

    fn create_charged(
        &self,
        session_id: &SessionId,
        account: Arc<Account>,
    ) -> Result<(), EventLogError> {
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if sessions.contains_key(session_id) {
            return Err(EventLogError::SessionExists);
        }
        sessions.insert(
            session_id.clone(),
            Arc::new(SessionSlot::new(
                SessionLog::new(session_id.clone(), 0, account),
                self.sink.get().is_none(),
            )),
        );
        if let Some(sink) = self.sink.get() {
            sink.created(session_id);
        }
        Ok(())
    }
}

impl EventLog for MemoryEventLog {
    fn create(&self, session_id: &SessionId) -> Result<(), EventLogError> {
        self.create_charged(session_id, self.account_of(None))
    }

    fn create_owned(&self, session_id: &SessionId, owner: &Principal) -> Result<(), EventLogError> {
        self.create_charged(session_id, self.account_of(Some(owner)))
    }

    fn append(
        &self,
        session_id: &SessionId,
        draft: &EventDraft,
    ) -> Result<EventSeq, EventLogError> {
        let mut offers = Offers::default();
        let appended = self.append_offering(session_id, draft, &mut offers);
        offers.deliver();
        appended
    }

    fn append_each(
        &self,
        session_ids: &[&SessionId],
        draft: &EventDraft,
    ) -> Vec<Result<EventSeq, EventLogError>> {
        let mut offers = Offers::default();
        let appended = self.append_each_offering(session_ids, draft, &mut offers);
        offers.deliver();
        appended
    }

    fn append_offering(
        &self,
        session_id: &SessionId,
        draft: &EventDraft,
        offers: &mut Offers,
    ) -> Result<EventSeq, EventLogError> {
        let slot = self.session(session_id)?;
        Ok(self.append_to(session_id, &slot, draft, offers))
    }

    fn append_each_offering(
        &self,
        session_ids: &[&SessionId],
        draft: &EventDraft,
        offers: &mut Offers,
    ) -> Vec<Result<EventSeq, EventLogError>> {
        // The map's read lock once for all of them (its counter is shared
        // by every thread), not held while appending.
        let slots: Vec<Option<Arc<SessionSlot>>> = {
            let sessions = self
                .sessions
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            session_ids
                .iter()
                .map(|session_id| sessions.get(*session_id).cloned())
                .collect()
        };
        // Deferred copies need no sink (the durable store writes whole
        // frames) and a fresh id per copy (a draft with a fixed id is a
        // replayed event, written as it is).
        let deferred = match (self.sink.get(), self.fan_out_head.get()) {
            (None, Some(head)) if draft.message_id.is_none() => Some(Arc::new(Deferred::new(
                *head,
                draft.message_type,
                draft.shared_envelope().clone(),
            ))),
            _ => None,
        };
        let mut scratch = Vec::new();
        offers.expect(session_ids.len());
        session_ids
            .iter()
            .zip(slots)
            .map(|(session_id, slot)| match (slot, &deferred) {
                (Some(slot), Some(deferred)) => Ok(self.append_deferred_to(
                    session_id,
                    &slot,
                    &draft.job_id,
                    deferred,
                    &mut scratch,
                    offers,
                )),
                (Some(slot), None) => Ok(self.append_to(session_id, &slot, draft, offers)),
                (None, _) => Err(EventLogError::UnknownSession),
            })
            .collect()
    }

    fn read_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Vec<LogEntry>, EventLogError> {
        self.session(session_id)?.read_after(after, limit)
    }

    fn read_chunk_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Option<(EventSeq, Bytes)>, EventLogError> {
        self.session(session_id)?.read_chunk_after(after, limit)
    }

    fn session_reader(&self, session_id: &SessionId) -> SessionReader {
        SessionReader {
            slot: self
                .session(session_id)
                .map_or_else(|_| Weak::new(), |slot| Arc::downgrade(&slot)),
        }
    }

    fn bounds(&self, session_id: &SessionId) -> Result<LogBounds, EventLogError> {
        Ok(self.session(session_id)?.bounds())
    }

    fn release_through(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> Result<LogBounds, EventLogError> {
        let slot = self.session(session_id)?;
        let mut log = slot.lock();
        let bounds = log.bounds(slot.visible());
        if up_to > bounds.newest {
            return Err(EventLogError::CursorAhead {
                newest: bounds.newest,
            });
        }
        if up_to <= log.floor {
            return Ok(bounds);
        }
        while log.floor < up_to && !log.entries.is_empty() {
            log.evict_front();
        }
        if let Some(sink) = self.sink.get() {
            sink.released(session_id, log.floor);
        }
        Ok(log.bounds(slot.visible()))
    }

    fn watch_newest(&self, session_id: &SessionId) -> Result<NewestWatch, EventLogError> {
        let slot = self.session(session_id)?;
        let receiver = slot.visible.subscribe();
        Ok(receiver)
    }

    fn remove(&self, session_id: &SessionId) {
        let removed = {
            let mut sessions = self
                .sessions
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            sessions.remove(session_id)
        };
        if let Some(slot) = &removed {
            if let Some(sink) = self.sink.get() {
                sink.removed(session_id);
            }
            let tap = {
                let mut log = slot.lock();
                log.removed = true;
                log.tap.take()
            };
            if let Some(tap) = tap {
                tap.missed();
            }
        }
        // Dropping the last `Arc` drops the sender, which closes every
        // reader's watch; done outside the map lock.
        drop(removed);
    }
}
