//! One session's log behind its lock, with the watermark readers see, and
//! the handle a stream reads it through.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use super::session_log::SessionLog;
use crate::event_log::signal::{NewestSender, NewestWatch};
use crate::event_log::tap::{Offer, OfferedFrame, Offers};
use crate::event_log::{EventLogError, LiveTap, LogBounds, LogEntry, ReadLimit};
use crate::ids::EventSeq;

/// One session's log, and the newest event readers may see: `newest`
/// without a sink, the newest durable one with. The watermark lives in a
/// [`NewestSender`], outside the log's mutex, so the store's writer thread
/// raises it without taking the log lock. (An appender waiting on a full
/// write queue while holding that lock must never stall the writer.)
pub(super) struct SessionSlot {
    pub(super) log: Mutex<SessionLog>,
    pub(super) visible: NewestSender,
}

impl SessionSlot {
    /// `taps`: whether a [`LiveTap`] may attach (only without a sink,
    /// where an event is visible the moment it is appended).
    pub(super) fn new(mut log: SessionLog, taps: bool) -> Self {
        log.taps = taps;
        SessionSlot {
            visible: NewestSender::new(log.floor),
            log: Mutex::new(log),
        }
    }

    pub(super) fn visible(&self) -> EventSeq {
        self.visible.get()
    }

    /// Raises the watermark; never lowers it.
    pub(super) fn publish(&self, seq: EventSeq) {
        self.visible.raise(seq);
    }

    /// Makes `seq` visible and hands it to the log's tap, if one is
    /// attached, instead of waking the watch: the tap writes it or wakes
    /// the stream ([`LiveTap`]).
    pub(super) fn publish_or_offer(
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
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, SessionLog> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn bounds(&self) -> LogBounds {
        self.lock().bounds(self.visible())
    }

    pub(super) fn read_after(
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

    pub(super) fn read_chunk_after(
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
    pub(super) slot: Weak<SessionSlot>,
}

impl SessionReader {
    fn slot(&self) -> Result<Arc<SessionSlot>, EventLogError> {
        self.slot.upgrade().ok_or(EventLogError::UnknownSession)
    }

    /// As [`EventLog::bounds`](crate::event_log::EventLog::bounds).
    pub fn bounds(&self) -> Result<LogBounds, EventLogError> {
        Ok(self.slot()?.bounds())
    }

    /// As [`EventLog::read_after`](crate::event_log::EventLog::read_after).
    pub fn read_after(
        &self,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Vec<LogEntry>, EventLogError> {
        self.slot()?.read_after(after, limit)
    }

    /// As [`EventLog::read_chunk_after`](crate::event_log::EventLog::read_chunk_after).
    pub fn read_chunk_after(
        &self,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Option<(EventSeq, Bytes)>, EventLogError> {
        self.slot()?.read_chunk_after(after, limit)
    }

    /// As [`EventLog::watch_newest`](crate::event_log::EventLog::watch_newest).
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
