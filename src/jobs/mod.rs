//! Jobs (§7): their records, the one task per job that runs the agent, and
//! the agents themselves.
//!
//! A job appends to its submitting session's event log and nothing else reads
//! its state for streaming; streams only read the log. All appends for a job
//! go through [`Job::emit`] or [`Job::finish`], which hold the job's lock
//! while appending, so no event can follow the terminal one and the terminal
//! event is written exactly once, whichever of result, error, cancel, timeout
//! or lease expiry comes first.

pub mod agents;
pub mod runner;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::event_log::{EventDraft, EventLog};
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::protocol::{now_rfc3339, ErrorCode, ErrorPayload, JobStatus};

/// Everything fixed at acceptance.
pub struct JobSpec {
    pub id: JobId,
    pub session_id: SessionId,
    pub principal: Principal,
    /// Resolved `name@version` (§7.5).
    pub agent: String,
    pub input: Value,
    pub lease: Value,
    pub lease_constraints: Option<Value>,
    pub lease_expires_at: Option<OffsetDateTime>,
    pub max_runtime: Option<Duration>,
    pub trace_id: String,
    pub created_at: String,
    /// The parameters an idempotent resubmission must match (§7.2).
    pub fingerprint: Value,
}

pub struct Job {
    pub spec: JobSpec,
    /// The `job.accepted` payload, returned again for idempotent resubmits.
    pub accepted_payload: Value,
    state: Mutex<JobState>,
    cancel: CancellationToken,
    log: Arc<dyn EventLog>,
}

struct JobState {
    status: JobStatus,
    last_event_seq: EventSeq,
    terminal_payload: Option<Value>,
}

/// A point-in-time view of a job's progress.
#[derive(Clone, Debug)]
pub struct JobSnapshot {
    pub status: JobStatus,
    pub last_event_seq: EventSeq,
    pub terminal_payload: Option<Value>,
}

/// How a job ended.
#[derive(Clone, Debug)]
pub enum Terminal {
    /// `job.result` with the result inline.
    Success { result: Value },
    /// `job.result` referring to streamed `result_chunk` events (§8.4).
    StreamedSuccess {
        result_id: String,
        result_size: u64,
        summary: String,
    },
    /// `job.error` with its final status (§7.3).
    Failure {
        final_status: JobStatus,
        error: ErrorPayload,
    },
}

impl Terminal {
    pub fn failure(final_status: JobStatus, code: ErrorCode, message: impl Into<String>) -> Self {
        let retryable = code.forced_retryable().unwrap_or(false);
        Terminal::Failure {
            final_status,
            error: ErrorPayload {
                code,
                message: message.into(),
                retryable,
            },
        }
    }

    pub fn cancelled() -> Self {
        Terminal::failure(
            JobStatus::Cancelled,
            ErrorCode::Cancelled,
            "job cancelled by its submitting session",
        )
    }

    fn status(&self) -> JobStatus {
        match self {
            Terminal::Success { .. } | Terminal::StreamedSuccess { .. } => JobStatus::Success,
            Terminal::Failure { final_status, .. } => *final_status,
        }
    }

    fn message_type_and_payload(&self) -> (&'static str, Value) {
        match self {
            Terminal::Success { result } => (
                "job.result",
                json!({ "final_status": "success", "result": result }),
            ),
            Terminal::StreamedSuccess {
                result_id,
                result_size,
                summary,
            } => (
                "job.result",
                json!({
                    "final_status": "success",
                    "result_id": result_id,
                    "result_size": result_size,
                    "summary": summary,
                }),
            ),
            Terminal::Failure {
                final_status,
                error,
            } => (
                "job.error",
                json!({
                    "final_status": final_status,
                    "code": error.code,
                    "message": error.message,
                    "retryable": error.retryable,
                }),
            ),
        }
    }
}

/// The job already reached a terminal state; nothing more may be emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobFinished(pub JobStatus);

impl Job {
    pub fn new(spec: JobSpec, log: Arc<dyn EventLog>) -> Self {
        let mut accepted_payload = json!({
            "job_id": spec.id,
            "agent": spec.agent,
            "lease": spec.lease,
            "accepted_at": spec.created_at,
            "trace_id": spec.trace_id,
        });
        if let Some(constraints) = &spec.lease_constraints {
            accepted_payload["lease_constraints"] = constraints.clone();
        }
        Job {
            spec,
            accepted_payload,
            state: Mutex::new(JobState {
                status: JobStatus::Pending,
                last_event_seq: 0,
                terminal_payload: None,
            }),
            cancel: CancellationToken::new(),
            log,
        }
    }

    fn state(&self) -> MutexGuard<'_, JobState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self) -> JobSnapshot {
        let state = self.state();
        JobSnapshot {
            status: state.status,
            last_event_seq: state.last_event_seq,
            terminal_payload: state.terminal_payload.clone(),
        }
    }

    pub fn mark_running(&self) {
        let mut state = self.state();
        if state.status == JobStatus::Pending {
            state.status = JobStatus::Running;
        }
    }

    /// Completes when the job has been cancelled (or ended by another cause
    /// that must stop the agent).
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Appends a `job.event` (§8.1) with the given kind and body.
    pub fn emit(&self, kind: &str, body: Value) -> Result<EventSeq, JobFinished> {
        let payload = json!({ "kind": kind, "ts": now_rfc3339(), "body": body });
        let mut state = self.state();
        if state.status.is_terminal() {
            return Err(JobFinished(state.status));
        }
        let seq = self.append(&mut state, "job.event", payload);
        Ok(seq)
    }

    /// Writes the terminal event if none was written yet. Returns whether this
    /// call wrote it.
    pub fn finish(&self, terminal: Terminal) -> bool {
        let (message_type, payload) = terminal.message_type_and_payload();
        let mut state = self.state();
        if state.status.is_terminal() {
            return false;
        }
        state.status = terminal.status();
        state.terminal_payload = Some(payload.clone());
        self.append(&mut state, message_type, payload);
        drop(state);
        self.cancel.cancel();
        true
    }

    /// §7.4: ends the job with `CANCELLED` and stops its agent.
    pub fn cancel(&self) -> Result<(), JobFinished> {
        if self.finish(Terminal::cancelled()) {
            return Ok(());
        }
        Err(JobFinished(self.state().status))
    }

    fn append(&self, state: &mut JobState, message_type: &'static str, payload: Value) -> EventSeq {
        let draft = EventDraft {
            message_type,
            job_id: self.spec.id.clone(),
            trace_id: Some(self.spec.trace_id.clone()),
            payload,
        };
        // A session whose window passed has no log any more; the job still
        // runs to its end, but nobody can resume to see it.
        if let Ok(seq) = self.log.append(&self.spec.session_id, &draft) {
            state.last_event_seq = seq;
        }
        state.last_event_seq
    }
}

/// Outcome of registering a submission.
pub enum Registration {
    Accepted(Arc<Job>),
    /// Same idempotency key, identical parameters (§7.2).
    Repeated(Arc<Job>),
    /// Same idempotency key, different parameters (§7.2).
    ConflictingKey,
}

/// Every job the gateway knows, and the idempotency keys that name them.
#[derive(Default)]
pub struct JobRegistry {
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    jobs: HashMap<JobId, Arc<Job>>,
    /// Idempotency keys are scoped per principal (§7.2).
    by_key: HashMap<(Principal, String), JobId>,
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
    pub fn register(&self, job: Job, idempotency_key: Option<&str>) -> Registration {
        let mut inner = self.inner();
        if let Some(key) = idempotency_key {
            let scoped = (job.spec.principal.clone(), key.to_owned());
            if let Some(existing) = inner.by_key.get(&scoped).and_then(|id| inner.jobs.get(id)) {
                if existing.spec.fingerprint == job.spec.fingerprint {
                    return Registration::Repeated(existing.clone());
                }
                return Registration::ConflictingKey;
            }
            inner.by_key.insert(scoped, job.spec.id.clone());
        }
        let job = Arc::new(job);
        inner.jobs.insert(job.spec.id.clone(), job.clone());
        Registration::Accepted(job)
    }

    pub fn get(&self, job_id: &JobId) -> Option<Arc<Job>> {
        self.inner().jobs.get(job_id).cloned()
    }

    /// Forgets the finished jobs of a session that is gone, and their keys.
    /// Jobs still running are kept until a later sweep finds them finished.
    pub fn forget_finished_of(&self, is_gone: impl Fn(&SessionId) -> bool) {
        let mut inner = self.inner();
        let finished: Vec<JobId> = inner
            .jobs
            .values()
            .filter(|job| is_gone(&job.spec.session_id) && job.snapshot().status.is_terminal())
            .map(|job| job.spec.id.clone())
            .collect();
        for id in &finished {
            inner.jobs.remove(id);
        }
        let RegistryInner { jobs, by_key } = &mut *inner;
        by_key.retain(|_, id| jobs.contains_key(id));
    }

    pub fn len(&self) -> usize {
        self.inner().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
