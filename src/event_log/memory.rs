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
//!   Frames never straddle two blocks. They lie in chunks ([`Entries`]),
//!   so an append never moves older entries: a job's subscribers' logs
//!   grow in step, and one doubling queue each made the same append move
//!   every subscriber's history at once.
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

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use bytes::{Bytes, BytesMut};

use super::budget::{Account, RetentionBudget};
use super::entries::Entries;
use super::signal::{NewestSender, NewestWatch};
use super::tap::{Offer, OfferedFrame, Offers};
use super::{
    EventDraft, EventLog, EventLogError, FrameEncoder, HeadEncoder, LiveTap, LogBounds, LogEntry,
    ReadLimit, RetentionLimits,
};
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::metrics::Metrics;

/// The smallest allocation for frames: what a session's first block gets.
const MIN_BLOCK_CAPACITY: usize = 4 * 1024;

/// The largest allocation for frames. A frame larger than this is stored as
/// a block of its own. A replay writes at most one block per write, so this
/// is also the largest replay write: at 256 KiB, `strace` of a 100k-event
/// replay showed 180 writes of 256 KiB where a plain writer makes 45 of
/// 1 MiB; reaching 1 MiB takes a session retaining 4 MiB (the quarter
/// rule above).
const MAX_BLOCK_CAPACITY: usize = 1024 * 1024;

/// A zero-copy chunk smaller than this, cut short only by the end of its
/// block, is replaced by a copied chunk spanning the following small blocks
/// (those under this size).
const SMALL_CHUNK: usize = 16 * 1024;

/// The largest copied chunk: small enough to be served from the allocator's
/// heap rather than a fresh mapping, large enough to make a replay of tiny
/// blocks cost few writes.
const MAX_COPIED_CHUNK: usize = 64 * 1024;

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

/// One session's log, and the newest event readers may see: `newest`
/// without a sink, the newest durable one with. The watermark lives in a
/// [`NewestSender`], outside the log's mutex, so the store's writer thread
/// raises it without taking the log lock. (An appender waiting on a full
/// write queue while holding that lock must never stall the writer.)
struct SessionSlot {
    log: Mutex<SessionLog>,
    visible: NewestSender,
}

impl SessionSlot {
    /// `taps`: whether a [`LiveTap`] may attach (only without a sink,
    /// where an event is visible the moment it is appended).
    fn new(mut log: SessionLog, taps: bool) -> Self {
        log.taps = taps;
        SessionSlot {
            visible: NewestSender::new(log.floor),
            log: Mutex::new(log),
        }
    }

    fn visible(&self) -> EventSeq {
        self.visible.get()
    }

    /// Raises the watermark; never lowers it.
    fn publish(&self, seq: EventSeq) {
        self.visible.raise(seq);
    }

    /// Makes `seq` visible and hands it to the log's tap, if one is
    /// attached, instead of waking the watch: the tap writes it or wakes
    /// the stream ([`LiveTap`]).
    fn publish_or_offer(
        &self,
        log: &SessionLog,
        seq: EventSeq,
        offers: &mut Offers,
        frame: impl FnOnce() -> OfferedFrame,
    ) {
        match &log.tap {
            Some(tap) => {
                self.visible.raise_quietly(seq);
                offers.push(Offer {
                    tap: tap.clone(),
                    seq,
                    frame: frame(),
                });
            }
            None => self.publish(seq),
        }
    }

    /// Locks the log; a poisoned lock still holds consistent data because
    /// every mutation below completes without panicking.
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionLog> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bounds(&self) -> LogBounds {
        self.lock().bounds(self.visible())
    }

    fn read_after(
        &self,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Vec<LogEntry>, EventLogError> {
        let mut log = self.lock();
        let visible = self.visible();
        let start = log.start_after(after, visible)?;
        let (count, _) = log.span(start, visible, limit, |_| false);
        if count == 0 {
            return Ok(Vec::new());
        }
        log.seal_through(start + count - 1);
        Ok(log
            .entries
            .range(start..start + count)
            .map(|entry| log.log_entry(entry))
            .collect())
    }

    fn read_chunk_after(
        &self,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Option<(EventSeq, Bytes)>, EventLogError> {
        let mut log = self.lock();
        let visible = self.visible();
        let start = log.start_after(after, visible)?;
        Ok(log.chunk(start, visible, limit))
    }
}

/// One session's log, found once for a reader that reads it many times (a
/// stream): its reads skip the lookup by id in the map every session
/// shares. It does not keep the log alive: once the log is removed, the
/// reads fail with `UnknownSession`, as reads by id would, and the watch
/// taken from the log closes.
#[derive(Clone)]
pub struct SessionReader {
    slot: Weak<SessionSlot>,
}

impl SessionReader {
    fn slot(&self) -> Result<Arc<SessionSlot>, EventLogError> {
        self.slot.upgrade().ok_or(EventLogError::UnknownSession)
    }

    /// As [`EventLog::bounds`].
    pub fn bounds(&self) -> Result<LogBounds, EventLogError> {
        Ok(self.slot()?.bounds())
    }

    /// As [`EventLog::read_after`].
    pub fn read_after(
        &self,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Vec<LogEntry>, EventLogError> {
        self.slot()?.read_after(after, limit)
    }

    /// As [`EventLog::read_chunk_after`].
    pub fn read_chunk_after(
        &self,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Option<(EventSeq, Bytes)>, EventLogError> {
        self.slot()?.read_chunk_after(after, limit)
    }

    /// As [`EventLog::watch_newest`].
    pub fn watch_newest(&self) -> Result<NewestWatch, EventLogError> {
        Ok(self.slot()?.visible.subscribe())
    }

    /// The newest event a reader may see now; `None` once the log is gone.
    pub fn newest(&self) -> Option<EventSeq> {
        self.slot.upgrade().map(|slot| slot.visible())
    }

    /// Offers every later append to `tap` (see [`LiveTap`]), in place of
    /// the one attached before. False when the log is gone or has a sink
    /// (taps are for the in-memory log alone): the stream then reads.
    pub fn attach_tap(&self, tap: Arc<dyn LiveTap>) -> bool {
        match self.slot.upgrade() {
            Some(slot) => {
                let mut log = slot.lock();
                if log.removed || !log.taps {
                    return false;
                }
                log.tap = Some(tap);
                true
            }
            _ => false,
        }
    }

    /// Stops offering appends to `tap`, if it is still the one attached.
    pub fn detach_tap(&self, tap: &Arc<dyn LiveTap>) {
        if let Some(slot) = self.slot.upgrade() {
            let mut log = slot.lock();
            if log.tap.as_ref().is_some_and(|held| Arc::ptr_eq(held, tap)) {
                log.tap = None;
            }
        }
    }
}

/// A session's frames, back to back in numbered blocks (see the module
/// documentation).
///
/// Blocks are numbered in the order they are started, from 0, and keep
/// their number for life. Sealed block `n` is `sealed[n - first]`; the open
/// tail is always number `first + sealed.len()`, which is the number it
/// keeps once sealed. So the number an entry records at append time stays
/// right when the tail is sealed and when older blocks are dropped.
struct Blocks {
    /// Immutable blocks, oldest first. Each holds at least one frame.
    sealed: VecDeque<Bytes>,
    /// The number of `sealed[0]`.
    first: u64,
    /// The block being written. Its spare capacity is never grown in place
    /// (that would move the frames already in it): when a frame does not
    /// fit, the tail is sealed and replaced.
    tail: BytesMut,
    /// How many frames the tail holds. (Counted rather than read off the
    /// length so that even an empty frame gets its block sealed.)
    tail_frames: usize,
}

impl Blocks {
    fn new() -> Self {
        Blocks {
            sealed: VecDeque::new(),
            first: 0,
            // No allocation until the first frame.
            tail: BytesMut::new(),
            tail_frames: 0,
        }
    }

    /// The number of the open tail.
    fn tail_number(&self) -> u64 {
        self.first + self.sealed.len() as u64
    }

    /// Stores a frame after every frame stored so far; returns the number of
    /// its block and where in that block it starts. If the tail has no room
    /// for it, the next allocation gets `capacity` bytes (or the frame's
    /// size if larger).
    fn push(&mut self, frame: &Bytes, capacity: usize) -> (u64, usize) {
        let room = self.tail.capacity() - self.tail.len();
        if frame.len() > room {
            self.seal_tail();
            if frame.len() > MAX_BLOCK_CAPACITY {
                // A block of its own: keep the encoder's buffer, no copy.
                let number = self.tail_number();
                self.sealed.push_back(frame.clone());
                return (number, 0);
            }
            self.tail = BytesMut::with_capacity(capacity.max(frame.len()));
        }
        let start = self.tail.len();
        // Fits in the spare capacity checked above, so this never
        // reallocates.
        self.tail.extend_from_slice(frame);
        self.tail_frames += 1;
        (self.tail_number(), start)
    }

    /// Turns what the tail holds into the next sealed block, without
    /// copying; the tail keeps the allocation's spare room. A tail without
    /// frames is left alone (no empty blocks), and keeps its number.
    fn seal_tail(&mut self) {
        if self.tail_frames > 0 {
            self.sealed.push_back(self.tail.split().freeze());
            self.tail_frames = 0;
        }
    }

    /// Sealed block `number`. Panics if it is not a retained sealed block,
    /// which would be a bug in [`SessionLog`]: every retained entry's block
    /// is retained, and readers seal the tail before slicing.
    fn sealed(&self, number: u64) -> &Bytes {
        number
            .checked_sub(self.first)
            .and_then(|index| self.sealed.get(index as usize))
            .expect("a retained entry lies in a retained sealed block")
    }

    /// The bytes of block `number`, sealed or the tail, for copying.
    fn contents(&self, number: u64) -> &[u8] {
        if number == self.tail_number() {
            &self.tail
        } else {
            self.sealed(number)
        }
    }

    /// How many bytes block `number` holds (the tail: so far).
    fn len(&self, number: u64) -> usize {
        self.contents(number).len()
    }

    /// Drops every sealed block numbered below `number`.
    fn drop_before(&mut self, number: u64) {
        while self.first < number && self.sealed.pop_front().is_some() {
            self.first += 1;
        }
    }
}

/// One retained event: where its frame lies, not the frame itself.
struct StoredEntry {
    seq: EventSeq,
    job_id: JobId,
    /// The number of the block holding the frame.
    block: u64,
    /// The frame is `block[start..start + len]`.
    start: usize,
    len: usize,
    /// The envelope JSON's span within the frame.
    envelope: Range<usize>,
    /// Set for a fan-out copy whose frame is not in the blocks but written
    /// when read. Its `block` is then the tail's number when it was
    /// appended (so entries' block numbers never decrease) and `start` is 0.
    deferred: Option<Arc<Deferred>>,
}

impl StoredEntry {
    fn frame_range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// What a deferred head's length depends on ([`HeadEncoder`]'s contract),
/// and that length with where its envelope starts.
#[derive(Clone, Copy)]
struct HeadShape {
    seq_digits: u32,
    message_type: &'static str,
    len: usize,
    envelope_start: usize,
}

/// A job's event in its subscribers' logs, kept as what its frames are made
/// of rather than the frames: one record per event, shared by every copy
/// (one allocation for all of them, not one each). A copy's frame differs
/// from another's only by the session's id, its `event_seq` and its
/// envelope id, which [`Deferred::message_id`] derives from the session's
/// id, so every read of a copy writes the same bytes.
pub(crate) struct Deferred {
    head: HeadEncoder,
    message_type: &'static str,
    /// Drawn once per event; each copy's id mixes the session's id into it.
    event_id: ulid::Ulid,
    shared: Bytes,
}

impl Deferred {
    fn new(head: HeadEncoder, message_type: &'static str, shared: Bytes) -> Deferred {
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

    /// [`Deferred::write_frame`] for the copy in `log`.
    fn write(&self, frame: &mut Vec<u8>, log: &SessionLog, seq: EventSeq) -> usize {
        self.write_frame(frame, &log.session_id, log.id_mix, seq)
    }
}

/// What a session's id mixes into its copies' envelope ids
/// ([`Deferred::message_id`]): a hash with fixed keys, taken once per log.
fn id_mix(session_id: &SessionId) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    session_id.as_str().hash(&mut hasher);
    hasher.finish()
}

struct SessionLog {
    /// Whose log it is: deferred frames carry the session's id.
    session_id: SessionId,
    /// [`id_mix`] of `session_id`.
    id_mix: u64,
    /// The shape of the last deferred head written for its length (see
    /// [`HeadEncoder`]): appends of the same shape skip writing it.
    head_shape: Option<HeadShape>,
    /// The session's stream, offered each append ([`LiveTap`]).
    tap: Option<Arc<dyn LiveTap>>,
    /// Set by [`EventLog::remove`]: no tap may attach any more.
    removed: bool,
    /// Whether a tap may attach at all (see [`SessionSlot::new`]).
    taps: bool,
    /// Contiguous entries `floor + 1 ..= newest`.
    entries: Entries<StoredEntry>,
    /// Their frames, in the same order.
    blocks: Blocks,
    floor: EventSeq,
    newest: EventSeq,
    /// The sum of the retained frames' lengths.
    retained_bytes: usize,
    /// Where `retained_bytes` is also counted (the owner's and the
    /// gateway's budgets).
    account: Arc<Account>,
}

impl Drop for SessionLog {
    fn drop(&mut self) {
        self.account.refund(self.retained_bytes);
    }
}

impl SessionLog {
    fn new(session_id: SessionId, floor: EventSeq, account: Arc<Account>) -> Self {
        SessionLog {
            id_mix: id_mix(&session_id),
            session_id,
            head_shape: None,
            tap: None,
            removed: false,
            taps: false,
            entries: Entries::new(),
            blocks: Blocks::new(),
            floor,
            newest: floor,
            retained_bytes: 0,
            account,
        }
    }

    fn bounds(&self, visible: EventSeq) -> LogBounds {
        LogBounds {
            floor: self.floor,
            newest: visible.min(self.newest).max(self.floor),
        }
    }

    /// Checks a cursor and returns the index of its first entry after it.
    fn start_after(&self, after: EventSeq, visible: EventSeq) -> Result<usize, EventLogError> {
        let bounds = self.bounds(visible);
        if after < bounds.floor {
            return Err(EventLogError::CursorEvicted {
                floor: bounds.floor,
            });
        }
        if after > bounds.newest {
            return Err(EventLogError::CursorAhead {
                newest: bounds.newest,
            });
        }
        Ok((after - self.floor) as usize)
    }

    /// How many visible entries from `start` fit in `limit`, and the size of
    /// their frames. The byte limit never cuts the first entry. It also
    /// stops before the first entry (after the first) for which
    /// `stop_before` is true.
    fn span(
        &self,
        start: usize,
        visible: EventSeq,
        limit: ReadLimit,
        stop_before: impl Fn(&StoredEntry) -> bool,
    ) -> (usize, usize) {
        let (mut count, mut size) = (0usize, 0usize);
        for entries in self.entries.slices_from(start) {
            for entry in entries {
                if entry.seq > visible
                    || count >= limit.max_entries
                    || (count > 0 && size + entry.len > limit.max_bytes)
                    || (count > 0 && stop_before(entry))
                {
                    return (count, size);
                }
                count += 1;
                size += entry.len;
            }
        }
        (count, size)
    }

    /// Seals the tail if the entry at `index` lies in it, so that its frame
    /// (and every one before it) can be shared.
    fn seal_through(&mut self, index: usize) {
        let tail = self.blocks.tail_number();
        if self
            .entries
            .get(index)
            .is_some_and(|entry| entry.block == tail)
        {
            self.blocks.seal_tail();
        }
    }

    /// The entry as a [`LogEntry`]: its frame shares its block's memory
    /// (the block must be sealed), or is written now if it is deferred.
    fn log_entry(&self, entry: &StoredEntry) -> LogEntry {
        let frame = match &entry.deferred {
            Some(deferred) => {
                let mut frame = Vec::with_capacity(entry.len);
                deferred.write(&mut frame, self, entry.seq);
                debug_assert_eq!(frame.len(), entry.len, "the head's length is its shape's");
                Bytes::from(frame)
            }
            None => self.blocks.sealed(entry.block).slice(entry.frame_range()),
        };
        LogEntry {
            seq: entry.seq,
            job_id: entry.job_id.clone(),
            frame,
            envelope: entry.envelope.clone(),
        }
    }

    /// The visible entries from `start` as one chunk within `limit`, and the
    /// last seq in it; `None` when there are none.
    ///
    /// Normally a slice of one sealed block, cut at the block's end: the
    /// frames of consecutive entries in a block are adjacent. When that
    /// slice would be under [`SMALL_CHUNK`] only because its block ends, and
    /// the next blocks are small too, the frames are copied instead, up to
    /// [`MAX_COPIED_CHUNK`] and never into a block of [`SMALL_CHUNK`] or
    /// more (the next read slices that one). Deferred frames are always
    /// written into a new chunk the same way, never sliced.
    fn chunk(
        &mut self,
        start: usize,
        visible: EventSeq,
        limit: ReadLimit,
    ) -> Option<(EventSeq, Bytes)> {
        let first = self.entries.get(start)?;
        let first_block = first.block;
        let sliceable = first.deferred.is_none();
        let (count, size) = if sliceable {
            self.span(start, visible, limit, |entry| {
                entry.block != first_block || entry.deferred.is_some()
            })
        } else {
            (0, 0)
        };
        if sliceable && count == 0 {
            return None;
        }
        if size < SMALL_CHUNK {
            let copy_limit = ReadLimit {
                max_entries: limit.max_entries,
                max_bytes: limit.max_bytes.min(MAX_COPIED_CHUNK),
            };
            let (copy_count, copy_size) = self.span(start, visible, copy_limit, |entry| {
                entry.deferred.is_none()
                    && entry.block != first_block
                    && self.blocks.len(entry.block) >= SMALL_CHUNK
            });
            // Equal counts: the slice was cut by the limit or the watermark,
            // or the next block is large; copying would not help.
            if copy_count > count {
                return Some(self.copied_chunk(start, copy_count, copy_size));
            }
            if copy_count == 0 {
                return None;
            }
        }
        self.seal_through(start);
        let first = &self.entries[start];
        let last = &self.entries[start + count - 1];
        debug_assert_eq!(first.block, last.block);
        debug_assert_eq!(first.start + size, last.start + last.len);
        let block = self.blocks.sealed(first.block);
        Some((last.seq, block.slice(first.start..first.start + size)))
    }

    /// Entries `start .. start + count`, whose frames total `size` bytes,
    /// copied (or, deferred, written) into one new chunk. Frames still in
    /// the tail are copied from it; nothing is sealed.
    fn copied_chunk(&self, start: usize, count: usize, size: usize) -> (EventSeq, Bytes) {
        let mut chunk = Vec::with_capacity(size);
        for entry in self.entries.range(start..start + count) {
            match &entry.deferred {
                Some(deferred) => {
                    deferred.write(&mut chunk, self, entry.seq);
                }
                None => {
                    chunk.extend_from_slice(&self.blocks.contents(entry.block)[entry.frame_range()])
                }
            }
        }
        debug_assert_eq!(chunk.len(), size);
        (self.entries[start + count - 1].seq, Bytes::from(chunk))
    }

    fn evict_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.retained_bytes -= entry.len;
            self.account.refund(entry.len);
            self.floor = entry.seq;
            match self.entries.front() {
                // Blocks before the oldest retained entry's hold no
                // retained frame.
                Some(oldest) => self.blocks.drop_before(oldest.block),
                // Nothing retained: free everything, the tail's allocation
                // too. No entry refers to a block number any more, so the
                // numbering may start over.
                None => self.blocks = Blocks::new(),
            }
        }
    }

    /// Appends an entry: its frame is copied into the blocks (or kept as a
    /// block of its own if it is large). A new allocation is sized to a
    /// quarter of what the session retains, so the blocks' slack stays in
    /// proportion to the history.
    fn push(&mut self, entry: &LogEntry) {
        let capacity = (self.retained_bytes / 4).clamp(MIN_BLOCK_CAPACITY, MAX_BLOCK_CAPACITY);
        let (block, start) = self.blocks.push(&entry.frame, capacity);
        self.retained_bytes += entry.frame.len();
        self.account.charge(entry.frame.len());
        self.newest = entry.seq;
        self.entries.push_back(StoredEntry {
            seq: entry.seq,
            job_id: entry.job_id.clone(),
            block,
            start,
            len: entry.frame.len(),
            envelope: entry.envelope.clone(),
            deferred: None,
        });
    }

    /// Appends a deferred entry whose frame, once written, is `len` bytes
    /// with its envelope at `envelope`. Nothing is copied into the blocks.
    fn push_deferred(
        &mut self,
        seq: EventSeq,
        job_id: JobId,
        len: usize,
        envelope: Range<usize>,
        deferred: Arc<Deferred>,
    ) {
        self.retained_bytes += len;
        self.account.charge(len);
        self.newest = seq;
        self.entries.push_back(StoredEntry {
            seq,
            job_id,
            block: self.blocks.tail_number(),
            start: 0,
            len,
            envelope,
            deferred: Some(deferred),
        });
    }
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
        let len = shape.len + deferred.shared.len() + 2;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_log::EncodedFrame;

    /// A frame of exactly `len` bytes for draft payload `{"len": len}`.
    fn encode(_: &SessionId, seq: EventSeq, draft: &EventDraft) -> EncodedFrame {
        let len = draft.payload["len"].as_u64().unwrap_or(16) as usize;
        let mut frame = format!("id: {seq}\n").into_bytes();
        frame.resize(len.max(frame.len() + 2) - 2, b'x');
        frame.extend_from_slice(b"\n\n");
        EncodedFrame {
            envelope: 0..0,
            frame: Bytes::from(frame),
        }
    }

    fn draft(len: usize) -> EventDraft {
        EventDraft::new(
            "job.event",
            JobId::from_client("job_1"),
            None,
            serde_json::json!({ "len": len }),
        )
    }

    const ALL: ReadLimit = ReadLimit {
        max_entries: usize::MAX,
        max_bytes: usize::MAX,
    };

    #[test]
    fn budgets_shared_across_sessions_evict_from_the_appending_session() {
        let budget = Arc::new(RetentionBudget::new(10_000, 4_000));
        let limits = RetentionLimits {
            max_events: usize::MAX,
            max_bytes: usize::MAX,
        };
        let log = MemoryEventLog::with_budget(limits, encode, budget.clone());
        let (alice, bob) = (Principal::new("alice"), Principal::new("bob"));
        let a1 = SessionId::from_client("a1");
        let a2 = SessionId::from_client("a2");
        let b1 = SessionId::from_client("b1");
        log.create_owned(&a1, &alice).unwrap();
        log.create_owned(&a2, &alice).unwrap();
        log.create_owned(&b1, &bob).unwrap();
        for _ in 0..3 {
            log.append(&a1, &draft(1_000)).unwrap();
        }
        assert_eq!(budget.used_by(&alice), 3_000);
        // a2 pushes alice past her 4,000: a2 gives up its own oldest, not a1's.
        for _ in 0..3 {
            log.append(&a2, &draft(1_000)).unwrap();
        }
        assert_eq!(log.bounds(&a1).unwrap().floor, 0, "a1 keeps its history");
        assert_eq!(log.bounds(&a2).unwrap().floor, 2, "a2 evicted its own");
        assert_eq!(budget.used_by(&alice), 4_000);
        // One event always stays, however large.
        log.append(&a2, &draft(5_000)).unwrap();
        assert_eq!(log.read_after(&a2, 3, ALL).unwrap().len(), 1);
        assert_eq!(budget.used_by(&alice), 8_000);
        // Bob fills the gateway-wide budget: his own session pays.
        for _ in 0..5 {
            log.append(&b1, &draft(1_000)).unwrap();
        }
        assert!(budget.used_by(&bob) <= 2_000 + 1_000);
        assert!(budget.global().used() <= 10_000 + 1_000);
        assert_eq!(log.bounds(&a1).unwrap().floor, 0);
        // Acknowledging, and removing a log, give the bytes back.
        log.release_through(&a1, 3).unwrap();
        assert_eq!(budget.used_by(&alice), 5_000);
        log.remove(&a2);
        log.remove(&b1);
        assert_eq!(budget.used_by(&alice), 0);
        assert_eq!(budget.global().used(), 0);
    }

    fn log(max_events: usize) -> (MemoryEventLog, SessionId) {
        let log = MemoryEventLog::new(
            RetentionLimits {
                max_events,
                max_bytes: usize::MAX,
            },
            encode,
        );
        let sid = SessionId::from_client("s");
        log.create(&sid).unwrap();
        (log, sid)
    }

    /// (sealed blocks, their bytes, tail capacity) of a session.
    fn blocks(log: &MemoryEventLog, sid: &SessionId) -> (usize, usize, usize) {
        let slot = log.session(sid).unwrap();
        let log = slot.lock();
        let bytes = log.blocks.sealed.iter().map(Bytes::len).sum();
        (log.blocks.sealed.len(), bytes, log.blocks.tail.capacity())
    }

    /// Every chunk of a full replay: (cursor before, last seq, bytes).
    fn replay(log: &MemoryEventLog, sid: &SessionId) -> Vec<(EventSeq, EventSeq, Bytes)> {
        let (mut chunks, mut cursor) = (Vec::new(), 0);
        while let Some((last, chunk)) = log.read_chunk_after(sid, cursor, ALL).unwrap() {
            chunks.push((cursor, last, chunk));
            cursor = last;
        }
        chunks
    }

    /// A head encoder for deferred copies: `id: <seq>\n`, then the envelope.
    fn head(frame: &mut Vec<u8>, _: &SessionId, seq: EventSeq, _: &str, id: &str) -> usize {
        frame.extend_from_slice(format!("id: {seq}\n{id} ").as_bytes());
        frame.len()
    }

    #[test]
    fn fan_out_copies_share_the_job_envelope_and_keep_no_frames() {
        let (log, sid) = log(usize::MAX);
        log.defer_fan_out(head);
        let other = SessionId::from_client("other");
        log.create(&other).unwrap();
        for n in 1..=100 {
            log.append_each(&[&sid, &other], &draft(300 + n));
        }
        assert_eq!(blocks(&log, &sid), (0, 0, 0), "no frame copied in");
        let slot = log.session(&sid).unwrap();
        let shared: Vec<*const u8> = {
            let inner = slot.lock();
            inner
                .entries
                .iter()
                .map(|entry| entry.deferred.as_ref().unwrap().shared.as_ptr())
                .collect()
        };
        let other_slot = log.session(&other).unwrap();
        let inner = other_slot.lock();
        for (entry, pointer) in inner.entries.iter().zip(shared) {
            assert_eq!(entry.deferred.as_ref().unwrap().shared.as_ptr(), pointer);
        }
        drop(inner);
        // Read whole, with the retained length counted per frame.
        let entries = log.read_after(&sid, 0, ALL).unwrap();
        assert_eq!(entries.len(), 100);
        let total: usize = entries.iter().map(|entry| entry.frame.len()).sum();
        assert_eq!(slot.lock().retained_bytes, total);
        let joined: Vec<u8> = entries.iter().flat_map(|e| e.frame.to_vec()).collect();
        let replayed: Vec<u8> = replay(&log, &sid)
            .into_iter()
            .flat_map(|(_, _, chunk)| chunk.to_vec())
            .collect();
        assert_eq!(replayed, joined);
        // A durable log writes whole frames: with a sink, copies are frames.
        let (durable, sid) = super::tests::log(usize::MAX);
        durable.attach_sink(Arc::new(RecordingSink::default()));
        durable.defer_fan_out(head);
        durable.append_each(&[&sid], &draft(300));
        assert!(durable.session(&sid).unwrap().lock().entries[0]
            .deferred
            .is_none());
    }

    #[test]
    fn fan_out_copies_share_one_record_and_each_has_its_own_id() {
        let (log, sid) = log(usize::MAX);
        log.defer_fan_out(head);
        let others: Vec<SessionId> = (0..50)
            .map(|n| SessionId::from_client(&format!("other{n}")))
            .collect();
        for other in &others {
            log.create(other).unwrap();
        }
        let mut all = vec![&sid];
        all.extend(others.iter());
        log.append_each(&all, &draft(300));
        let record = |id: &SessionId| {
            let slot = log.session(id).unwrap();
            let inner = slot.lock();
            inner.entries.get(0).unwrap().deferred.clone().unwrap()
        };
        let first = record(&sid);
        for other in &others {
            assert!(Arc::ptr_eq(&first, &record(other)), "one record per event");
        }
        // The head writes `id: <seq>\n<envelope id> `.
        let id_of = |id: &SessionId| {
            let entries = log.read_after(id, 0, ALL).unwrap();
            let frame = String::from_utf8(entries[0].frame.to_vec()).unwrap();
            let (_, rest) = frame.split_once('\n').unwrap();
            ulid::Ulid::from_string(&rest[..ulid::ULID_LEN]).unwrap()
        };
        let ids: Vec<ulid::Ulid> = all.iter().map(|id| id_of(id)).collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), all.len(), "every copy has an id of its own");
        assert!(ids
            .iter()
            .all(|id| id.timestamp_ms() == first.event_id.timestamp_ms()));
        let again: Vec<ulid::Ulid> = all.iter().map(|id| id_of(id)).collect();
        assert_eq!(ids, again, "every read writes the same id");
    }

    #[test]
    fn reads_share_stored_memory_instead_of_copying() {
        let (log, sid) = log(usize::MAX);
        for _ in 0..5000 {
            log.append(&sid, &draft(200)).unwrap();
        }
        let first = replay(&log, &sid);
        let second = replay(&log, &sid);
        assert_eq!(first.len(), second.len());
        let joined: Vec<u8> = first.iter().flat_map(|(_, _, c)| c.to_vec()).collect();
        assert_eq!(joined.len(), 5000 * 200);
        // A slice of a block is the same memory each time; a copy is not.
        // Only the first, small blocks (while the session retained under
        // 64 KiB) are copied.
        let (mut shared, mut copied) = (0, 0);
        for ((after, last, chunk), (_, _, again)) in first.iter().zip(&second) {
            if chunk.as_ptr() != again.as_ptr() {
                copied += chunk.len();
                assert_eq!(shared, 0, "no copy after the first slice");
                continue;
            }
            shared += chunk.len();
            assert!(chunk.len() <= MAX_BLOCK_CAPACITY);
            let entries = log.read_after(&sid, *after, ALL).unwrap();
            assert_eq!(entries[0].frame.as_ptr(), chunk.as_ptr());
            if *last > *after + 1 {
                assert_eq!(
                    entries[1].frame.as_ptr(),
                    chunk[200..].as_ptr(),
                    "frames lie back to back"
                );
            }
        }
        assert!(copied <= 96 * 1024, "{copied} bytes copied");
        assert_eq!(shared + copied, 5000 * 200);
    }

    #[test]
    fn live_reads_seal_small_blocks_and_a_later_replay_is_coalesced() {
        let (log, sid) = log(usize::MAX);
        let mut live = Vec::new();
        for n in 1..=1000 {
            log.append(&sid, &draft(100)).unwrap();
            let (last, chunk) = log.read_chunk_after(&sid, n - 1, ALL).unwrap().unwrap();
            assert_eq!(last, n);
            live.extend_from_slice(&chunk);
        }
        assert_eq!(blocks(&log, &sid).0, 1000, "one block per live read");
        let mut replay = Vec::new();
        let mut cursor = 0;
        let mut chunks = 0;
        while let Some((last, chunk)) = log.read_chunk_after(&sid, cursor, ALL).unwrap() {
            cursor = last;
            chunks += 1;
            assert!(chunk.len() <= MAX_COPIED_CHUNK);
            replay.extend_from_slice(&chunk);
        }
        assert_eq!(replay, live);
        assert_eq!(chunks, 2, "100 KB of tiny blocks in 64 KiB copies");
    }

    #[test]
    fn evicting_old_blocks_frees_them() {
        let (log, sid) = log(usize::MAX);
        for n in 1..=1000 {
            log.append(&sid, &draft(100)).unwrap();
            log.read_chunk_after(&sid, n - 1, ALL).unwrap();
        }
        assert_eq!(blocks(&log, &sid).0, 1000);
        log.release_through(&sid, 990).unwrap();
        assert_eq!(blocks(&log, &sid).0, 10, "only the blocks of 991..=1000");
        log.release_through(&sid, 1000).unwrap();
        assert_eq!(blocks(&log, &sid).0, 0, "nothing retained, no block");
        assert_eq!(log.append(&sid, &draft(100)).unwrap(), 1001);
        let (last, chunk) = log.read_chunk_after(&sid, 1000, ALL).unwrap().unwrap();
        assert_eq!(last, 1001);
        assert!(chunk.starts_with(b"id: 1001\n"));
    }

    #[test]
    fn memory_stays_bounded_under_the_retention_limits() {
        for read_live in [false, true] {
            let (log, sid) = log(50);
            for n in 1..=20_000u64 {
                // Mixed sizes, some larger than a block.
                let len = match n % 97 {
                    0 => 300 * 1024,
                    k => 50 + (k as usize) * 40,
                };
                log.append(&sid, &draft(len)).unwrap();
                if read_live {
                    log.read_chunk_after(&sid, n - 1, ALL).unwrap();
                }
                let (count, bytes, tail) = blocks(&log, &sid);
                let slot = log.session(&sid).unwrap();
                let inner = slot.lock();
                assert!(count <= 51, "{count} blocks for 50 entries");
                // Beyond the retained frames: at most the evicted front of
                // one block, plus the tail's room.
                assert!(
                    bytes <= inner.retained_bytes + MAX_BLOCK_CAPACITY,
                    "{bytes} sealed bytes for {} retained",
                    inner.retained_bytes
                );
                assert!(tail <= MAX_BLOCK_CAPACITY);
            }
        }
    }

    #[test]
    fn a_session_that_acknowledges_as_it_goes_keeps_small_blocks() {
        // Acknowledging everything now and then, or all but the last few
        // events every time: either way the session retains little, so its
        // allocations stay at the smallest size.
        for lag in [None, Some(5)] {
            let (log, sid) = log(usize::MAX);
            for n in 1..=10_000 {
                log.append(&sid, &draft(300)).unwrap();
                log.read_chunk_after(&sid, n - 1, ALL).unwrap();
                match lag {
                    None if n % 10 == 0 => {
                        log.release_through(&sid, n).unwrap();
                        assert_eq!(blocks(&log, &sid), (0, 0, 0), "nothing left");
                    }
                    Some(lag) if n > lag => {
                        log.release_through(&sid, n - lag).unwrap();
                    }
                    _ => {}
                }
                let (count, _, tail) = blocks(&log, &sid);
                assert!(count <= 10, "{count} blocks");
                assert!(tail <= MIN_BLOCK_CAPACITY, "{tail} bytes of tail");
            }
        }
    }

    /// Random appends, reads and releases against a plain model: every read
    /// returns exactly the frames the model holds, and the blocks stay in
    /// proportion to what is retained.
    #[test]
    fn random_operations_match_a_simple_model() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        for seed in 0..40u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let limits = RetentionLimits {
                max_events: rng.random_range(1..300),
                max_bytes: rng.random_range(1..2_000_000),
            };
            let log = MemoryEventLog::new(limits, encode);
            let sid = SessionId::from_client("s");
            log.create(&sid).unwrap();
            // Every frame ever appended, by seq (index 0 unused).
            let mut model: Vec<Bytes> = vec![Bytes::new()];
            for _ in 0..1500 {
                let bounds = log.bounds(&sid).unwrap();
                let limit = ReadLimit {
                    max_entries: rng.random_range(1..200),
                    max_bytes: rng.random_range(1..600_000),
                };
                match rng.random_range(0..10) {
                    0..=4 => {
                        let len = match rng.random_range(0..100) {
                            0 => rng.random_range(200_000..400_000),
                            1..=5 => rng.random_range(5_000..40_000),
                            _ => rng.random_range(20..600),
                        };
                        let seq = log.append(&sid, &draft(len)).unwrap();
                        assert_eq!(seq, model.len() as u64);
                        let frame = encode(&sid, seq, &draft(len)).frame;
                        model.push(frame);
                    }
                    5..=7 => {
                        let after = rng.random_range(bounds.floor..=bounds.newest);
                        match log.read_chunk_after(&sid, after, limit).unwrap() {
                            None => assert_eq!(after, bounds.newest),
                            Some((last, chunk)) => {
                                assert!(after < last && last <= bounds.newest);
                                assert!(last - after <= limit.max_entries as u64);
                                assert!(last - after == 1 || chunk.len() <= limit.max_bytes);
                                let expected: Vec<u8> = model[after as usize + 1..=last as usize]
                                    .iter()
                                    .flat_map(|frame| frame.to_vec())
                                    .collect();
                                assert_eq!(chunk.to_vec(), expected, "seed {seed}");
                            }
                        }
                    }
                    8 => {
                        let after = rng.random_range(bounds.floor..=bounds.newest);
                        let entries = log.read_after(&sid, after, limit).unwrap();
                        assert_eq!(entries.is_empty(), after == bounds.newest);
                        for (entry, seq) in entries.iter().zip(after + 1..) {
                            assert_eq!(entry.seq, seq);
                            assert_eq!(entry.frame, model[seq as usize], "seed {seed}");
                        }
                    }
                    _ => {
                        let up_to = rng.random_range(bounds.floor..=bounds.newest);
                        log.release_through(&sid, up_to).unwrap();
                    }
                }
                let bounds = log.bounds(&sid).unwrap();
                let retained: usize = model[bounds.floor as usize + 1..]
                    .iter()
                    .map(Bytes::len)
                    .sum();
                let slot = log.session(&sid).unwrap();
                let inner = slot.lock();
                assert_eq!(inner.retained_bytes, retained);
                assert!(inner.entries.len() <= limits.max_events);
                assert!(retained <= limits.max_bytes || inner.entries.len() == 1);
                assert!(inner.blocks.sealed.len() <= inner.entries.len() + 1);
                let sealed: usize = inner.blocks.sealed.iter().map(Bytes::len).sum();
                assert!(sealed <= retained + MAX_BLOCK_CAPACITY, "seed {seed}");
                assert!(inner.blocks.tail.capacity() <= MAX_BLOCK_CAPACITY);
            }
        }
    }

    /// Records what it is given; marks nothing durable by itself.
    #[derive(Default)]
    struct RecordingSink {
        appended: Mutex<Vec<LogEntry>>,
    }

    impl LogSink for RecordingSink {
        fn created(&self, _: &SessionId) {}
        fn appended(&self, _: &SessionId, entry: &LogEntry) {
            self.appended.lock().unwrap().push(entry.clone());
        }
        fn released(&self, _: &SessionId, _: EventSeq) {}
        fn removed(&self, _: &SessionId) {}
    }

    #[test]
    fn with_a_sink_reads_stop_at_the_durable_watermark() {
        let log = MemoryEventLog::new(
            RetentionLimits {
                max_events: usize::MAX,
                max_bytes: usize::MAX,
            },
            encode,
        );
        let sink = Arc::new(RecordingSink::default());
        log.attach_sink(sink.clone());
        let sid = SessionId::from_client("s");
        log.create(&sid).unwrap();
        let joined = |from: u64, to: u64| -> Vec<u8> {
            (from..=to)
                .flat_map(|seq| encode(&sid, seq, &draft(300)).frame.to_vec())
                .collect()
        };
        for _ in 0..10 {
            log.append(&sid, &draft(300)).unwrap();
        }
        assert_eq!(log.read_chunk_after(&sid, 0, ALL).unwrap(), None);
        assert!(log.read_after(&sid, 0, ALL).unwrap().is_empty());
        log.mark_durable(&sid, 5);
        let (last, chunk) = log.read_chunk_after(&sid, 0, ALL).unwrap().unwrap();
        assert_eq!((last, chunk.to_vec()), (5, joined(1, 5)));
        for _ in 0..5 {
            log.append(&sid, &draft(300)).unwrap();
        }
        log.mark_durable(&sid, 12);
        let (last, chunk) = log.read_chunk_after(&sid, 5, ALL).unwrap().unwrap();
        assert_eq!((last, chunk.to_vec()), (12, joined(6, 12)));
        assert_eq!(log.read_after(&sid, 5, ALL).unwrap().len(), 7);
        assert_eq!(log.read_chunk_after(&sid, 12, ALL).unwrap(), None);
        // The sink got every frame, as the encoder made it.
        let appended = sink.appended.lock().unwrap();
        assert_eq!(appended.len(), 15);
        let sunk: Vec<u8> = appended.iter().flat_map(|e| e.frame.to_vec()).collect();
        assert_eq!(sunk, joined(1, 15));
    }
}
