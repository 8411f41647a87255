//! Every job this process knows: submission order (for listing cursors,
//! §6.6), idempotency keys (§7.2, per principal), and the caps on jobs per
//! session and running jobs per principal.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;

use super::Job;
use crate::ids::{JobId, Principal, SessionId};
use crate::protocol::JobStatus;

/// Outcome of registering a submission.
pub enum Registration {
    Accepted(Arc<Job>),
    /// Same idempotency key, identical parameters (§7.2).
    Repeated(Arc<Job>),
    /// Same idempotency key, different parameters (§7.2).
    ConflictingKey,
    /// The session already holds its cap of jobs, all still running.
    SessionFull,
    /// The principal already runs its cap of jobs.
    PrincipalBusy,
}

/// One of a principal's running jobs; the count drops when the job ends
/// (the slot is dropped with its terminal state).
pub(super) struct RunningSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for RunningSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Filters of a job listing (§6.6).
#[derive(Default)]
pub struct ListFilter {
    pub statuses: Vec<JobStatus>,
    /// `name` matches every version; `name@version` only that one.
    pub agent: Option<String>,
    pub created_after: Option<OffsetDateTime>,
}

/// One page of a listing, oldest first.
pub struct ListPage {
    pub jobs: Vec<Arc<Job>>,
    /// The index to pass back as `cursor` for the next page.
    pub next_cursor: Option<u64>,
}

/// Every job the gateway knows, and the idempotency keys that name them.
#[derive(Default)]
pub struct JobRegistry {
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    jobs: HashMap<JobId, Arc<Job>>,
    /// Submission order, for stable pagination.
    order: BTreeMap<u64, JobId>,
    next_index: u64,
    /// Idempotency keys are scoped per principal (§7.2).
    by_key: HashMap<(Principal, String), JobId>,
    /// Each session's retained jobs, oldest first, for the per-session cap.
    per_session: HashMap<SessionId, std::collections::BTreeSet<u64>>,
    /// Each principal's running jobs, for the per-principal cap. Principals
    /// come from the configured api tokens, so the map stays small.
    running: HashMap<Principal, Arc<std::sync::atomic::AtomicUsize>>,
}

impl RegistryInner {
    /// Drops a job's record, its listing slot, its key and its store row.
    fn forget(&mut self, index: u64) {
        let Some(id) = self.order.remove(&index) else {
            return;
        };
        if let Some(job) = self.jobs.remove(&id) {
            if let Some(key) = &job.spec.idempotency_key {
                self.by_key
                    .remove(&(job.spec.principal.clone(), key.clone()));
            }
            if let Some(indices) = self.per_session.get_mut(&job.spec.session_id) {
                indices.remove(&index);
                if indices.is_empty() {
                    self.per_session.remove(&job.spec.session_id);
                }
            }
            job.store.delete_job(&id);
        }
    }

    /// Makes room for one more job of `session_id` under `cap` by forgetting
    /// its oldest finished jobs. False when every retained job still runs.
    fn make_room(&mut self, session_id: &SessionId, cap: usize) -> bool {
        loop {
            let Some(indices) = self.per_session.get(session_id) else {
                return true;
            };
            if indices.len() < cap {
                return true;
            }
            let oldest_finished = indices.iter().copied().find(|index| {
                self.order
                    .get(index)
                    .and_then(|id| self.jobs.get(id))
                    .is_some_and(|job| job.snapshot().status.is_terminal())
            });
            match oldest_finished {
                Some(index) => self.forget(index),
                None => return false,
            }
        }
    }

    fn insert(&mut self, job: Arc<Job>) {
        self.order.insert(job.index, job.spec.id.clone());
        self.per_session
            .entry(job.spec.session_id.clone())
            .or_default()
            .insert(job.index);
        if let Some(key) = &job.spec.idempotency_key {
            self.by_key.insert(
                (job.spec.principal.clone(), key.clone()),
                job.spec.id.clone(),
            );
        }
        self.jobs.insert(job.spec.id.clone(), job);
    }
}

impl JobRegistry {
    fn inner(&self) -> MutexGuard<'_, RegistryInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a job, or resolves its idempotency key to an earlier one.
    /// The key check and insert happen under one lock, so two racing
    /// submissions with the same key yield one job.
    pub fn register(
        &self,
        mut job: Job,
        max_jobs_per_session: usize,
        max_running_per_principal: usize,
    ) -> Registration {
        let mut inner = self.inner();
        if let Some(key) = &job.spec.idempotency_key {
            let scoped = (job.spec.principal.clone(), key.clone());
            if let Some(existing) = inner.by_key.get(&scoped).and_then(|id| inner.jobs.get(id)) {
                if existing.spec.fingerprint == job.spec.fingerprint {
                    return Registration::Repeated(existing.clone());
                }
                return Registration::ConflictingKey;
            }
        }
        // Bounded memory however long a session lives: past the cap the
        // session's oldest finished jobs are forgotten (their events stay in
        // the log until retention drops them).
        let running = inner
            .running
            .entry(job.spec.principal.clone())
            .or_default()
            .clone();
        // Jobs only leave the count (never join it) outside this lock, so
        // the check and the increment cannot let two racing submissions
        // both take the last slot.
        if running.load(std::sync::atomic::Ordering::Relaxed) >= max_running_per_principal {
            return Registration::PrincipalBusy;
        }
        if !inner.make_room(&job.spec.session_id, max_jobs_per_session) {
            return Registration::SessionFull;
        }
        running.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        job.state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .running_slot = Some(RunningSlot(running));
        inner.next_index += 1;
        job.index = inner.next_index;
        let job = Arc::new(job);
        inner.insert(job.clone());
        Registration::Accepted(job)
    }

    /// Puts a recovered job back under its original index and key.
    pub fn reinstate(&self, job: Job) -> Arc<Job> {
        let mut inner = self.inner();
        inner.next_index = inner.next_index.max(job.index);
        let job = Arc::new(job);
        inner.insert(job.clone());
        job
    }

    pub fn get(&self, job_id: &JobId) -> Option<Arc<Job>> {
        self.inner().jobs.get(job_id).cloned()
    }

    /// Whether `principal` already used idempotency `key` (§7.2).
    pub fn has_key(&self, principal: &Principal, key: &str) -> bool {
        self.inner()
            .by_key
            .contains_key(&(principal.clone(), key.to_owned()))
    }

    /// A page of the jobs `may_observe` admits, in submission order, after
    /// `cursor` (§6.6).
    pub fn list(
        &self,
        may_observe: impl Fn(&Job) -> bool,
        filter: &ListFilter,
        cursor: u64,
        limit: usize,
    ) -> ListPage {
        let inner = self.inner();
        let mut jobs = Vec::new();
        let mut next_cursor = None;
        for job_id in inner
            .order
            .range(cursor.saturating_add(1)..)
            .map(|(_, id)| id)
        {
            let Some(job) = inner.jobs.get(job_id) else {
                continue;
            };
            if !may_observe(job) || !filter.admits(job) {
                continue;
            }
            if jobs.len() == limit {
                next_cursor = jobs.last().map(|job: &Arc<Job>| job.index);
                break;
            }
            jobs.push(job.clone());
        }
        ListPage { jobs, next_cursor }
    }

    /// Forgets the finished jobs of sessions that are gone, and their keys.
    /// Jobs still running are kept until a later sweep finds them finished.
    pub fn forget_finished_of(&self, is_gone: impl Fn(&SessionId) -> bool) {
        let mut inner = self.inner();
        let finished: Vec<u64> = inner
            .jobs
            .values()
            .filter(|job| is_gone(&job.spec.session_id) && job.snapshot().status.is_terminal())
            .map(|job| job.index)
            .collect();
        for index in finished {
            inner.forget(index);
        }
    }

    pub fn len(&self) -> usize {
        self.inner().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Job {
    pub fn index(&self) -> u64 {
        self.index
    }
}

impl ListFilter {
    fn admits(&self, job: &Job) -> bool {
        self.admits_fields(
            job.snapshot().status,
            &job.spec.agent,
            job.spec.created_at_time,
        )
    }

    /// Whether a job with these fields passes the filter (used for jobs
    /// known only by their shared record, in cluster mode).
    pub fn admits_fields(
        &self,
        status: JobStatus,
        agent: &str,
        created_at: OffsetDateTime,
    ) -> bool {
        if !self.statuses.is_empty() && !self.statuses.contains(&status) {
            return false;
        }
        if let Some(wanted) = &self.agent {
            let matches = if wanted.contains('@') {
                agent == wanted
            } else {
                agent.split('@').next() == Some(wanted.as_str())
            };
            if !matches {
                return false;
            }
        }
        if let Some(after) = self.created_after {
            if created_at <= after {
                return false;
            }
        }
        true
    }
}
