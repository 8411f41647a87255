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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::{
    EventDraft, EventLog, EventLogError, FrameEncoder, LogBounds, LogEntry, ReadLimit,
    RetentionLimits,
};
use crate::ids::{EventSeq, SessionId};

/// Where a durable backend receives the log's writes, in the order they
/// happened. Calls are made under the session's lock; they may wait for room
/// in a bounded queue (back-pressure on producers), so a sink must never need
/// that lock to make progress.
pub trait LogSink: Send + Sync {
    fn created(&self, session_id: &SessionId);
    fn appended(&self, session_id: &SessionId, entry: &LogEntry);
    /// Everything at or below `floor` is gone (evicted or acknowledged).
    fn released(&self, session_id: &SessionId, floor: EventSeq);
    fn removed(&self, session_id: &SessionId);
}

pub struct MemoryEventLog {
    sessions: RwLock<HashMap<SessionId, Arc<SessionSlot>>>,
    limits: RetentionLimits,
    encode: FrameEncoder,
    sink: OnceLock<Arc<dyn LogSink>>,
}

/// One session's log, and the newest event readers may see: `newest`
/// without a sink, the newest durable one with. The watermark lives in the
/// `watch` channel, outside the log's mutex, so the store's writer thread
/// raises it without taking the log lock. (An appender waiting on a full
/// write queue while holding that lock must never stall the writer.)
struct SessionSlot {
    log: Mutex<SessionLog>,
    visible: watch::Sender<EventSeq>,
}

impl SessionSlot {
    fn new(log: SessionLog) -> Self {
        let (visible, _) = watch::channel(log.floor);
        SessionSlot {
            log: Mutex::new(log),
            visible,
        }
    }

    fn visible(&self) -> EventSeq {
        *self.visible.borrow()
    }

    /// Raises the watermark; never lowers it.
    fn publish(&self, seq: EventSeq) {
        self.visible.send_if_modified(|visible| {
            if seq > *visible {
                *visible = seq;
                return true;
            }
            false
        });
    }

    /// Locks the log; a poisoned lock still holds consistent data because
    /// every mutation below completes without panicking.
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionLog> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct SessionLog {
    /// Contiguous entries `floor + 1 ..= newest`.
    entries: VecDeque<LogEntry>,
    floor: EventSeq,
    newest: EventSeq,
    retained_bytes: usize,
}

impl SessionLog {
    fn new(floor: EventSeq) -> Self {
        SessionLog {
            entries: VecDeque::new(),
            floor,
            newest: floor,
            retained_bytes: 0,
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

    /// How many visible entries from `start` fit in `limit`, and their size.
    fn span(&self, start: usize, visible: EventSeq, limit: ReadLimit) -> (usize, usize) {
        let (mut count, mut size) = (0usize, 0usize);
        for entry in self.entries.range(start..) {
            if entry.seq > visible
                || count >= limit.max_entries
                || (count > 0 && size + entry.frame.len() > limit.max_bytes)
            {
                break;
            }
            count += 1;
            size += entry.frame.len();
        }
        (count, size)
    }

    fn evict_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.retained_bytes -= entry.frame.len();
            self.floor = entry.seq;
        }
    }

    fn push(&mut self, entry: LogEntry) {
        self.retained_bytes += entry.frame.len();
        self.newest = entry.seq;
        self.entries.push_back(entry);
    }
}

impl MemoryEventLog {
    pub fn new(limits: RetentionLimits, encode: FrameEncoder) -> Self {
        MemoryEventLog {
            sessions: RwLock::new(HashMap::new()),
            limits: RetentionLimits {
                max_events: limits.max_events.max(1),
                max_bytes: limits.max_bytes.max(1),
            },
            encode,
            sink: OnceLock::new(),
        }
    }

    /// Hands every later write to `sink` and shows readers only what the
    /// sink has confirmed durable. Set once, before serving.
    pub fn attach_sink(&self, sink: Arc<dyn LogSink>) {
        let _ = self.sink.set(sink);
    }

    /// The sink confirmed events up to `seq` durable. Takes no log lock.
    pub fn mark_durable(&self, session_id: &SessionId, seq: EventSeq) {
        if let Ok(slot) = self.session(session_id) {
            slot.publish(seq);
        }
    }

    /// Rebuilds a session's log from storage (recovery): `entries` must be
    /// contiguous from `floor + 1`. They are durable already.
    pub fn restore(&self, session_id: &SessionId, floor: EventSeq, entries: Vec<LogEntry>) {
        let mut log = SessionLog::new(floor);
        for entry in entries {
            if entry.seq != log.newest + 1 {
                break;
            }
            log.push(entry);
        }
        let newest = log.newest;
        let slot = SessionSlot::new(log);
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

impl EventLog for MemoryEventLog {
    fn create(&self, session_id: &SessionId) -> Result<(), EventLogError> {
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if sessions.contains_key(session_id) {
            return Err(EventLogError::SessionExists);
        }
        sessions.insert(
            session_id.clone(),
            Arc::new(SessionSlot::new(SessionLog::new(0))),
        );
        if let Some(sink) = self.sink.get() {
            sink.created(session_id);
        }
        Ok(())
    }

    fn append(
        &self,
        session_id: &SessionId,
        draft: &EventDraft,
    ) -> Result<EventSeq, EventLogError> {
        let slot = self.session(session_id)?;
        let mut log = slot.lock();
        let seq = log.newest + 1;
        let encoded = (self.encode)(session_id, seq, draft);
        log.push(LogEntry {
            seq,
            job_id: draft.job_id.clone(),
            frame: encoded.frame,
            envelope: encoded.envelope,
        });
        let floor_before = log.floor;
        while log.entries.len() > self.limits.max_events
            || (log.retained_bytes > self.limits.max_bytes && log.entries.len() > 1)
        {
            log.evict_front();
        }
        match self.sink.get() {
            Some(sink) => {
                if let Some(entry) = log.entries.back() {
                    sink.appended(session_id, entry);
                }
                if log.floor != floor_before {
                    sink.released(session_id, log.floor);
                }
            }
            None => slot.publish(seq),
        }
        Ok(seq)
    }

    fn read_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Vec<LogEntry>, EventLogError> {
        let slot = self.session(session_id)?;
        let log = slot.lock();
        let visible = slot.visible();
        let start = log.start_after(after, visible)?;
        let (count, _) = log.span(start, visible, limit);
        Ok(log.entries.range(start..start + count).cloned().collect())
    }

    fn read_chunk_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Option<(EventSeq, Bytes)>, EventLogError> {
        let slot = self.session(session_id)?;
        let log = slot.lock();
        let visible = slot.visible();
        let start = log.start_after(after, visible)?;
        let (count, size) = log.span(start, visible, limit);
        if count == 0 {
            return Ok(None);
        }
        let last = after + count as EventSeq;
        if count == 1 {
            // One frame: share the stored bytes, no copy.
            return Ok(log
                .entries
                .get(start)
                .map(|entry| (last, entry.frame.clone())));
        }
        let mut chunk = BytesMut::with_capacity(size);
        for entry in log.entries.range(start..start + count) {
            chunk.extend_from_slice(&entry.frame);
        }
        Ok(Some((last, chunk.freeze())))
    }

    fn bounds(&self, session_id: &SessionId) -> Result<LogBounds, EventLogError> {
        let slot = self.session(session_id)?;
        let bounds = slot.lock().bounds(slot.visible());
        Ok(bounds)
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

    fn watch_newest(
        &self,
        session_id: &SessionId,
    ) -> Result<watch::Receiver<EventSeq>, EventLogError> {
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
        if removed.is_some() {
            if let Some(sink) = self.sink.get() {
                sink.removed(session_id);
            }
        }
        // Dropping the last `Arc` drops the sender, which closes every
        // reader's watch; done outside the map lock.
        drop(removed);
    }
}
