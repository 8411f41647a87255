//! The embedded, in-memory event log backend.
//!
//! Sessions live in a map behind a read-write lock that is only written when a
//! session is created or removed; each session's log has its own mutex, so
//! sessions never contend with each other.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use super::{
    EventDraft, EventLog, EventLogError, FrameEncoder, LogBounds, LogEntry, ReadLimit,
    RetentionLimits,
};
use crate::ids::{EventSeq, SessionId};

pub struct MemoryEventLog {
    sessions: RwLock<HashMap<SessionId, Arc<Mutex<SessionLog>>>>,
    limits: RetentionLimits,
    encode: FrameEncoder,
}

struct SessionLog {
    /// Contiguous entries `floor + 1 ..= newest`.
    entries: VecDeque<LogEntry>,
    floor: EventSeq,
    newest: EventSeq,
    retained_bytes: usize,
    newest_sender: watch::Sender<EventSeq>,
}

impl SessionLog {
    fn bounds(&self) -> LogBounds {
        LogBounds {
            floor: self.floor,
            newest: self.newest,
        }
    }

    fn evict_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.retained_bytes -= entry.frame.len();
            self.floor = entry.seq;
        }
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
        }
    }

    fn session(&self, session_id: &SessionId) -> Result<Arc<Mutex<SessionLog>>, EventLogError> {
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

/// Locks a session log; a poisoned lock still holds consistent data because
/// every mutation below completes without panicking.
fn lock(log: &Mutex<SessionLog>) -> std::sync::MutexGuard<'_, SessionLog> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let (newest_sender, _) = watch::channel(0);
        let log = SessionLog {
            entries: VecDeque::new(),
            floor: 0,
            newest: 0,
            retained_bytes: 0,
            newest_sender,
        };
        sessions.insert(session_id.clone(), Arc::new(Mutex::new(log)));
        Ok(())
    }

    fn append(
        &self,
        session_id: &SessionId,
        draft: &EventDraft,
    ) -> Result<EventSeq, EventLogError> {
        let log = self.session(session_id)?;
        let mut log = lock(&log);
        let seq = log.newest + 1;
        let encoded = (self.encode)(session_id, seq, draft);
        log.retained_bytes += encoded.frame.len();
        log.entries.push_back(LogEntry {
            seq,
            job_id: draft.job_id.clone(),
            frame: encoded.frame,
            envelope: encoded.envelope,
        });
        log.newest = seq;
        while log.entries.len() > self.limits.max_events
            || (log.retained_bytes > self.limits.max_bytes && log.entries.len() > 1)
        {
            log.evict_front();
        }
        log.newest_sender.send_replace(seq);
        Ok(seq)
    }

    fn read_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        limit: ReadLimit,
    ) -> Result<Vec<LogEntry>, EventLogError> {
        let log = self.session(session_id)?;
        let log = lock(&log);
        if after < log.floor {
            return Err(EventLogError::CursorEvicted { floor: log.floor });
        }
        if after > log.newest {
            return Err(EventLogError::CursorAhead { newest: log.newest });
        }
        let start = (after - log.floor) as usize;
        let mut taken_bytes = 0usize;
        let mut batch = Vec::new();
        for entry in log.entries.range(start..) {
            if batch.len() >= limit.max_entries
                || (!batch.is_empty() && taken_bytes + entry.frame.len() > limit.max_bytes)
            {
                break;
            }
            taken_bytes += entry.frame.len();
            batch.push(entry.clone());
        }
        Ok(batch)
    }

    fn bounds(&self, session_id: &SessionId) -> Result<LogBounds, EventLogError> {
        let log = self.session(session_id)?;
        let bounds = lock(&log).bounds();
        Ok(bounds)
    }

    fn release_through(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> Result<LogBounds, EventLogError> {
        let log = self.session(session_id)?;
        let mut log = lock(&log);
        if up_to > log.newest {
            return Err(EventLogError::CursorAhead { newest: log.newest });
        }
        while log.floor < up_to && !log.entries.is_empty() {
            log.evict_front();
        }
        Ok(log.bounds())
    }

    fn watch_newest(
        &self,
        session_id: &SessionId,
    ) -> Result<watch::Receiver<EventSeq>, EventLogError> {
        let log = self.session(session_id)?;
        let receiver = lock(&log).newest_sender.subscribe();
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
        // Dropping the last `Arc` drops the sender, which closes every
        // reader's watch; done outside the map lock.
        drop(removed);
    }
}
