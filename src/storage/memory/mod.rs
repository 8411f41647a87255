//! The in-memory backend of the storage traits: one process, any number of
//! node handles sharing one state (so the conformance suite can run "two
//! nodes" against it exactly as against Redis).
//!
//! Every operation takes the one mutex for a short critical section and
//! answers with a ready future; nothing awaits while holding it. The
//! `Coordinator` half is in `coordinator.rs`.

mod coordinator;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::{ready, Future};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use super::{
    Append, AppendOutcome, EventKind, EventStore, GoneReason, IdempotencyRecord, JobRecord, Lease,
    LogBounds, NodeNotice, ReadBudget, Retention, SessionState, StorageError, StorageResult,
    StoredEvent,
};
use crate::ids::{EventSeq, JobId, Principal, SessionId};

/// How many notices a node may fall behind before it misses some (it then
/// relies on lease renewal and holder checks, as with Redis pub/sub).
const NOTICE_CAPACITY: usize = 256;

/// The shared state; [`MemoryStorage::node`] makes a handle per node.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    shared: Arc<Mutex<Shared>>,
}

/// One node's view of a [`MemoryStorage`].
#[derive(Clone)]
pub struct MemoryNode {
    shared: Arc<Mutex<Shared>>,
    node_id: String,
    notices: broadcast::Sender<NodeNotice>,
}

#[derive(Default)]
struct Shared {
    logs: HashMap<SessionId, Log>,
    sessions: HashMap<SessionId, SessionState>,
    jobs: HashMap<(SessionId, JobId), JobRecord>,
    /// Each principal's jobs by submission position, and where each job is.
    listed: HashMap<Principal, std::collections::BTreeMap<u64, (SessionId, JobId)>>,
    located: HashMap<JobId, SessionId>,
    list_counter: u64,
    leases: HashMap<(SessionId, JobId), LeaseState>,
    idempotency: HashMap<(Principal, String), (IdempotencyRecord, Instant)>,
    subscribers: HashMap<(SessionId, JobId), BTreeSet<SessionId>>,
    nodes: HashMap<String, broadcast::Sender<NodeNotice>>,
    lease_counter: u64,
}

struct Log {
    events: VecDeque<StoredEvent>,
    floor: EventSeq,
    newest: EventSeq,
    bytes: u64,
    retention: Retention,
    /// Per job: newest index and its sequence (the retry key).
    last_index: HashMap<JobId, (u64, EventSeq)>,
    /// Per job: the terminal's sequence.
    terminals: HashMap<JobId, EventSeq>,
    wake: watch::Sender<u64>,
}

struct LeaseState {
    token: String,
    expires: Instant,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every log, session, job, lease and key: what a store that
    /// lost its data leaves behind (the conformance suite checks that this
    /// reads as `Gone`, never as a fresh log).
    pub fn clear(&self) {
        let mut shared = lock(&self.shared);
        let nodes = std::mem::take(&mut shared.nodes);
        *shared = Shared {
            nodes,
            ..Shared::default()
        };
    }

    /// A handle acting as node `node_id`, with its own notice channel.
    pub fn node(&self, node_id: &str) -> MemoryNode {
        let notices = lock(&self.shared)
            .nodes
            .entry(node_id.to_owned())
            .or_insert_with(|| broadcast::channel(NOTICE_CAPACITY).0)
            .clone();
        MemoryNode {
            shared: self.shared.clone(),
            node_id: node_id.to_owned(),
            notices,
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic elsewhere never leaves the maps half-updated in a way later
    // calls cannot handle, so a poisoned lock is still usable.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryNode {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }
}

impl Shared {
    fn lease_valid(&self, lease: &Lease) -> bool {
        self.leases
            .get(&(lease.session_id.clone(), lease.job_id.clone()))
            .is_some_and(|state| state.token == lease.token && state.expires > Instant::now())
    }

    fn notify(&self, node: &str, notice: NodeNotice) {
        if let Some(sender) = self.nodes.get(node) {
            // No receiver: the node is not listening; nothing to do.
            let _ = sender.send(notice);
        }
    }

    fn append_one(&mut self, append: &Append) -> StorageResult<AppendOutcome> {
        if let Some(lease) = &append.fence {
            if !self.lease_valid(lease) {
                return Err(StorageError::Fenced);
            }
        }
        let log = self
            .logs
            .get_mut(&append.session_id)
            .ok_or(StorageError::Gone(GoneReason::SessionMissing))?;
        log.append(append)
    }
}

impl Log {
    fn new(retention: Retention) -> Self {
        Log {
            events: VecDeque::new(),
            floor: 0,
            newest: 0,
            bytes: 0,
            retention,
            last_index: HashMap::new(),
            terminals: HashMap::new(),
            wake: watch::channel(0).0,
        }
    }

    fn append(&mut self, append: &Append) -> StorageResult<AppendOutcome> {
        if let Some(&(index, seq)) = self.last_index.get(&append.job_id) {
            if append.index <= index {
                return Ok(AppendOutcome::Duplicate(
                    (append.index == index).then_some(seq),
                ));
            }
        }
        if let Some(&terminal_seq) = self.terminals.get(&append.job_id) {
            return Err(StorageError::JobClosed { terminal_seq });
        }
        let seq = self.store(&append.job_id, append.kind, append.body.clone());
        self.last_index
            .insert(append.job_id.clone(), (append.index, seq));
        Ok(AppendOutcome::Stored(seq))
    }

    /// Stores one event and applies retention. The job's append index is the
    /// caller's business: the reaper's terminal leaves it alone, so a retry
    /// of what the job sent still reads as a duplicate and anything new as
    /// closed.
    fn store(&mut self, job_id: &JobId, kind: EventKind, body: Bytes) -> EventSeq {
        self.newest += 1;
        let seq = self.newest;
        self.bytes += body.len() as u64;
        self.events.push_back(StoredEvent {
            seq,
            job_id: job_id.clone(),
            body,
        });
        if kind == EventKind::Terminal {
            self.terminals.insert(job_id.clone(), seq);
        }
        while self.events.len() > 1
            && (self.events.len() as u64 > self.retention.max_events
                || self.bytes > self.retention.max_bytes)
        {
            self.evict_oldest();
        }
        self.wake.send_replace(seq);
        seq
    }

    fn evict_oldest(&mut self) {
        if let Some(event) = self.events.pop_front() {
            self.bytes -= event.body.len() as u64;
            self.floor = event.seq;
        }
    }

    fn bounds(&self) -> LogBounds {
        LogBounds {
            floor: self.floor,
            newest: self.newest,
        }
    }
}

impl EventStore for MemoryNode {
    fn create_log(
        &self,
        session_id: &SessionId,
        retention: Retention,
    ) -> impl Future<Output = StorageResult<()>> + Send {
        let mut shared = self.shared();
        let result = if shared.logs.contains_key(session_id) {
            Err(StorageError::Exists)
        } else {
            shared.logs.insert(session_id.clone(), Log::new(retention));
            Ok(())
        };
        ready(result)
    }

    fn append_batch(
        &self,
        appends: &[Append],
    ) -> impl Future<Output = StorageResult<Vec<AppendOutcome>>> + Send {
        let mut shared = self.shared();
        let mut outcomes = Vec::with_capacity(appends.len());
        let mut result = Ok(());
        for append in appends {
            match shared.append_one(append) {
                Ok(outcome) => outcomes.push(outcome),
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        ready(result.map(|()| outcomes))
    }

    fn read_after(
        &self,
        session_id: &SessionId,
        after: EventSeq,
        budget: ReadBudget,
    ) -> impl Future<Output = StorageResult<Vec<StoredEvent>>> + Send {
        let shared = self.shared();
        let result = shared
            .logs
            .get(session_id)
            .ok_or(StorageError::Gone(GoneReason::SessionMissing))
            .and_then(|log| {
                check_cursor(log.bounds(), after)?;
                let skip = (after - log.floor) as usize;
                let mut bytes = 0;
                let mut batch = Vec::new();
                for event in log.events.iter().skip(skip).take(budget.max_events) {
                    if !batch.is_empty() && bytes + event.body.len() > budget.max_bytes {
                        break;
                    }
                    bytes += event.body.len();
                    batch.push(event.clone());
                }
                Ok(batch)
            });
        ready(result)
    }

    fn bounds(
        &self,
        session_id: &SessionId,
    ) -> impl Future<Output = StorageResult<LogBounds>> + Send {
        let shared = self.shared();
        ready(
            shared
                .logs
                .get(session_id)
                .map(Log::bounds)
                .ok_or(StorageError::Gone(GoneReason::SessionMissing)),
        )
    }

    fn release_through(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> impl Future<Output = StorageResult<LogBounds>> + Send {
        let mut shared = self.shared();
        let result = shared
            .logs
            .get_mut(session_id)
            .ok_or(StorageError::Gone(GoneReason::SessionMissing))
            .map(|log| {
                let up_to = up_to.min(log.newest);
                while log.floor < up_to {
                    log.evict_oldest();
                }
                log.bounds()
            });
        ready(result)
    }

    fn watch(
        &self,
        session_id: &SessionId,
    ) -> impl Future<Output = StorageResult<watch::Receiver<u64>>> + Send {
        let shared = self.shared();
        ready(
            shared
                .logs
                .get(session_id)
                .map(|log| log.wake.subscribe())
                .ok_or(StorageError::Gone(GoneReason::SessionMissing)),
        )
    }

    fn remove_log(&self, session_id: &SessionId) -> impl Future<Output = StorageResult<()>> + Send {
        self.shared().logs.remove(session_id);
        ready(Ok(()))
    }
}

/// `floor <= after <= newest`, or the matching error.
pub(crate) fn check_cursor(bounds: LogBounds, after: EventSeq) -> StorageResult<()> {
    if after < bounds.floor {
        return Err(StorageError::Gone(GoneReason::Evicted {
            floor: bounds.floor,
        }));
    }
    if after > bounds.newest {
        return Err(StorageError::RolledBack {
            cursor: after,
            newest: bounds.newest,
        });
    }
    Ok(())
}
