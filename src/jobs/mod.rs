//! Jobs (§7): their records, the one task per job that runs the agent, and
//! the agents themselves.
//!
//! A job appends to its submitting session's event log, and to the logs of
//! the sessions subscribed to it (§7.6), each re-stamped with that session's
//! own `event_seq`. Streams only read logs. All appends for a job go through
//! [`Job::emit`] or [`Job::finish`], which hold the job's lock while
//! appending, so no event can follow the terminal one, the terminal event is
//! written exactly once whichever of result, error, cancel, timeout, lease
//! expiry or budget exhaustion comes first, and a subscription taken while
//! the job runs sees neither a gap nor a duplicate between history and live.

pub mod agents;
pub mod external;
pub mod lease;
pub mod output;
mod record;
mod registry;
pub mod runner;
mod subscription;
mod terminal;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::event_log::{EventDraft, EventLog, Offers};
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::metrics::Metrics;
use crate::protocol::{now_rfc3339, ErrorCode, JobStatus};
use crate::session::Session;
use crate::store::Persistence;
pub use output::{JobMessage, JobOutput, Outgoing, SharedOutput};
pub use record::JobRow;
use registry::RunningSlot;
pub use registry::{JobRegistry, ListFilter, ListPage, Registration};
pub use subscription::{SubscribeError, Subscribed};
pub use terminal::{JobFinished, Terminal};

/// Remaining budget at or below this counts as exhausted (§9.6).
const BUDGET_EPSILON: f64 = 1e-9;

/// Caps the gateway enforces on what an agent emits (§8.4, §14).
#[derive(Clone, Copy, Debug)]
pub struct JobLimits {
    pub max_result_chunk_bytes: u64,
    pub max_result_bytes: u64,
    /// Consumer lag, in events, that opens a back-pressure episode (§6.5).
    pub back_pressure_lag_events: u64,
}

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
    /// `cost.budget` caps by currency (§9.6).
    pub budget: BTreeMap<String, f64>,
    pub max_runtime: Option<Duration>,
    pub trace_id: String,
    pub created_at: String,
    pub created_at_time: OffsetDateTime,
    /// The parameters an idempotent resubmission must match (§7.2).
    pub fingerprint: Value,
    pub limits: JobLimits,
    /// The key this job answers for (§7.2), kept so a restart keeps it.
    pub idempotency_key: Option<String>,
}

pub struct Job {
    pub spec: JobSpec,
    /// The `job.accepted` payload, returned again for idempotent resubmits.
    pub accepted_payload: Value,
    /// Position in submission order, for stable listing cursors (§6.6).
    index: u64,
    origin: Arc<Session>,
    state: Mutex<JobState>,
    cancel: CancellationToken,
    output: JobOutput,
    store: Arc<dyn Persistence>,
    metrics: Arc<Metrics>,
}

struct JobState {
    status: JobStatus,
    /// The newest `event_seq` of this job in the submitting session.
    last_event_seq: EventSeq,
    /// The first one (`None` before any): history from a cursor was lost
    /// only if the log's floor passed one of this job's events (§7.6).
    first_event_seq: Option<EventSeq>,
    terminal_payload: Option<Value>,
    /// Sessions that receive this job's events besides the submitter.
    subscribers: Vec<Arc<Session>>,
    /// Counts this job among its principal's running jobs until it ends.
    running_slot: Option<RunningSlot>,
    /// Remaining budget per currency (§9.6).
    budget_remaining: BTreeMap<String, f64>,
    streamed_result: Option<StreamedResult>,
    /// Events queued for the shared log so far: the next one's append
    /// index is this plus one (cluster mode, [`output`]).
    queued: u64,
    /// Room in the shared queue taken by [`Job::ready`] for the next event.
    reserved: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Events for the streams that take them as they are appended
    /// ([`crate::event_log::LiveTap`]): written once the lock is released
    /// ([`StateGuard`]), so a fan-out's socket writes never hold it.
    offers: Offers,
}

/// The job's lock. Dropping it delivers the offers its holder's appends
/// left, after unlocking.
struct StateGuard<'a> {
    guard: Option<MutexGuard<'a, JobState>>,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = JobState;

    fn deref(&self) -> &JobState {
        self.guard.as_deref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut JobState {
        self.guard.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut state) = self.guard.take() {
            let offers = std::mem::take(&mut state.offers);
            drop(state);
            offers.deliver();
        }
    }
}

/// Progress of a result streamed as `result_chunk` events (§8.4).
struct StreamedResult {
    result_id: String,
    next_chunk_seq: u64,
    total_bytes: u64,
    complete: bool,
}

/// A point-in-time view of a job's progress.
#[derive(Clone, Debug)]
pub struct JobSnapshot {
    pub status: JobStatus,
    pub last_event_seq: EventSeq,
    pub terminal_payload: Option<Value>,
    pub budget_remaining: BTreeMap<String, f64>,
}

/// `job.accepted.payload.budget`: each currency's granted amount as the
/// `CURRENCY:DECIMAL` string it was requested with (§9.6), e.g.
/// `{"USD": "USD:1.00"}`, the shape the official SDKs read.
fn budget_echo(lease: &Value) -> Value {
    let amounts = lease
        .get("cost.budget")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    let mut echo = serde_json::Map::new();
    for amount in amounts {
        let currency = amount
            .split_once(':')
            .map_or(amount, |(currency, _)| currency);
        echo.insert(currency.to_owned(), json!(amount));
    }
    Value::Object(echo)
}

/// Reads one numeric field of an event body.
fn number(body: &Value, field: &str) -> Option<f64> {
    body.get(field).and_then(Value::as_f64)
}

impl Job {
    pub fn new(
        spec: JobSpec,
        origin: Arc<Session>,
        output: JobOutput,
        store: Arc<dyn Persistence>,
        metrics: Arc<Metrics>,
    ) -> Self {
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
        if !spec.budget.is_empty() {
            accepted_payload["budget"] = budget_echo(&spec.lease);
        }
        let budget_remaining = spec.budget.clone();
        Job {
            spec,
            accepted_payload,
            index: 0,
            origin,
            state: Mutex::new(JobState {
                status: JobStatus::Pending,
                last_event_seq: 0,
                first_event_seq: None,
                terminal_payload: None,
                subscribers: Vec::new(),
                running_slot: None,
                budget_remaining,
                streamed_result: None,
                queued: 0,
                reserved: None,
                offers: Offers::default(),
            }),
            cancel: CancellationToken::new(),
            output,
            store,
            metrics,
        }
    }

    /// Sets the job's newest `event_seq` in its session, as found in the
    /// recovered log.
    pub fn set_recovered_position(&self, last_event_seq: EventSeq) {
        self.state().last_event_seq = last_event_seq;
    }

    /// Takes a terminal state found in the log at recovery, without writing
    /// another terminal event.
    pub fn adopt_terminal(&self, (status, payload): (JobStatus, Value)) {
        let mut state = self.state();
        state.status = status;
        state.running_slot = None;
        state.terminal_payload = Some(payload);
        let _ = self.persist_locked(&state);
    }

    fn state(&self) -> StateGuard<'_> {
        StateGuard {
            guard: Some(
                self.state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            ),
        }
    }

    pub fn snapshot(&self) -> JobSnapshot {
        let state = self.state();
        JobSnapshot {
            status: state.status,
            last_event_seq: state.last_event_seq,
            terminal_payload: state.terminal_payload.clone(),
            budget_remaining: state.budget_remaining.clone(),
        }
    }

    pub fn mark_running(&self) {
        let mut state = self.state();
        if state.status == JobStatus::Pending {
            state.status = JobStatus::Running;
        }
    }

    /// Completes when the job has ended for any reason, so its agent stops.
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Appends a `job.event` (§8.1) with the given kind and body, applying
    /// the gateway's rules for budgets (§9.6) and streamed results (§8.4).
    pub fn emit(&self, kind: &str, body: Value) -> Result<EventSeq, JobFinished> {
        let mut state = self.state();
        if state.status.is_terminal() {
            return Err(JobFinished(state.status));
        }
        match kind {
            "result_chunk" => {
                if let Err(message) = self.check_result_chunk(&mut state, &body) {
                    self.finish_locked(&mut state, Terminal::internal(message));
                    return Err(JobFinished(state.status));
                }
            }
            "metric" => return Ok(self.emit_metric(&mut state, body)),
            _ => {}
        }
        Ok(self.append_event(&mut state, kind, body))
    }

    fn append_event(&self, state: &mut JobState, kind: &str, body: Value) -> EventSeq {
        let payload = json!({ "kind": kind, "ts": now_rfc3339(), "body": body });
        self.append(state, "job.event", payload)
    }

    /// §9.6: `cost.*` metrics in a budgeted currency decrement its counter,
    /// followed by a `cost.budget.remaining` metric; at or below zero the job
    /// ends with `BUDGET_EXHAUSTED`. Negative costs are rejected.
    fn emit_metric(&self, state: &mut JobState, body: Value) -> EventSeq {
        let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
        let unit = body
            .get("unit")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let value = number(&body, "value");
        let budgeted = name.starts_with("cost.")
            && name != "cost.budget.remaining"
            && state.budget_remaining.contains_key(&unit);
        if !budgeted {
            return self.append_event(state, "metric", body);
        }
        let Some(cost) = value.filter(|cost| cost.is_finite() && *cost >= 0.0) else {
            let message =
                format!("rejected cost metric {name:?}: value must be a non-negative number");
            return self.append_event(state, "log", json!({ "level": "warn", "message": message }));
        };
        let seq = self.append_event(state, "metric", body);
        let remaining = {
            let counter = state.budget_remaining.entry(unit.clone()).or_insert(0.0);
            *counter -= cost;
            *counter
        };
        let _ = self.persist_locked(state);
        let seq = seq.max(self.append_event(
            state,
            "metric",
            json!({ "name": "cost.budget.remaining", "value": remaining, "unit": unit }),
        ));
        // A tolerance keeps decimal costs summed in binary floating point
        // from leaving a phantom remainder (0.1 + 0.2 style).
        if remaining <= BUDGET_EPSILON {
            let message = format!("cost.budget for {unit} is exhausted");
            self.finish_locked(
                state,
                Terminal::failure(JobStatus::Error, ErrorCode::BudgetExhausted, message),
            );
        }
        seq
    }

    /// §8.4: one streamed result per job, chunks in `chunk_seq` order from 0,
    /// nothing after `more: false`, and per-chunk and total size caps.
    fn check_result_chunk(&self, state: &mut JobState, body: &Value) -> Result<(), String> {
        let result_id = body
            .get("result_id")
            .and_then(Value::as_str)
            .ok_or("result_chunk without result_id")?;
        let chunk_seq = body
            .get("chunk_seq")
            .and_then(Value::as_u64)
            .ok_or("result_chunk without chunk_seq")?;
        let data = body
            .get("data")
            .and_then(Value::as_str)
            .ok_or("result_chunk without string data")?;
        let more = body
            .get("more")
            .and_then(Value::as_bool)
            .ok_or("result_chunk without more")?;
        match body.get("encoding").and_then(Value::as_str) {
            Some("utf8" | "base64") => {}
            _ => return Err("result_chunk encoding must be utf8 or base64".into()),
        }
        let limits = self.spec.limits;
        let size = data.len() as u64;
        if size > limits.max_result_chunk_bytes {
            return Err(format!(
                "result_chunk of {size} bytes exceeds the {} byte cap",
                limits.max_result_chunk_bytes
            ));
        }
        let streamed = state.streamed_result.get_or_insert_with(|| StreamedResult {
            result_id: result_id.to_owned(),
            next_chunk_seq: 0,
            total_bytes: 0,
            complete: false,
        });
        if streamed.result_id != result_id {
            return Err("a job streams at most one result".into());
        }
        if streamed.complete {
            return Err("result_chunk after the final chunk".into());
        }
        if chunk_seq != streamed.next_chunk_seq {
            return Err(format!(
                "result_chunk out of order: got {chunk_seq}, expected {}",
                streamed.next_chunk_seq
            ));
        }
        streamed.total_bytes += size;
        if streamed.total_bytes > limits.max_result_bytes {
            return Err(format!(
                "streamed result exceeds the {} byte cap",
                limits.max_result_bytes
            ));
        }
        streamed.next_chunk_seq += 1;
        streamed.complete = !more;
        Ok(())
    }

    /// Writes the terminal event if none was written yet. Returns whether this
    /// call wrote it.
    pub fn finish(&self, terminal: Terminal) -> bool {
        let mut state = self.state();
        if state.status.is_terminal() {
            return false;
        }
        self.finish_locked(&mut state, terminal);
        true
    }

    fn finish_locked(&self, state: &mut JobState, terminal: Terminal) {
        let terminal = match (&terminal, &state.streamed_result) {
            // §8.4: never an inline result after chunks.
            (Terminal::Success { .. }, Some(_)) => Terminal::internal(
                "the agent returned an inline result after streaming result_chunk events",
            ),
            (Terminal::StreamedSuccess { result_id, .. }, streamed) => match streamed {
                Some(streamed) if &streamed.result_id == result_id && streamed.complete => terminal,
                _ => Terminal::internal(
                    "job.result names a streamed result that was not completely streamed",
                ),
            },
            _ => terminal,
        };
        let (message_type, mut payload) = terminal.message_type_and_payload();
        // Every terminal says when the job ended (the official SDKs require it).
        payload["completed_at"] = json!(crate::protocol::now_rfc3339());
        state.status = terminal.status();
        state.running_slot = None;
        self.metrics.job_finished(&self.spec.agent, state.status);
        state.terminal_payload = Some(payload.clone());
        self.append(state, message_type, payload);
        let _ = self.persist_locked(state);
        self.cancel.cancel();
    }

    /// §7.4: ends the job with `CANCELLED` and stops its agent.
    pub fn cancel(&self) -> Result<(), JobFinished> {
        if self.finish(Terminal::cancelled()) {
            return Ok(());
        }
        Err(JobFinished(self.state().status))
    }

    fn append(&self, state: &mut JobState, message_type: &'static str, payload: Value) -> EventSeq {
        let draft = EventDraft::new(
            message_type,
            self.spec.id.clone(),
            Some(self.spec.trace_id.clone()),
            payload,
        );
        let log = match &self.output {
            JobOutput::Local(log) => log,
            JobOutput::Shared(output) => {
                self.queue_shared(state, output, draft);
                return state.last_event_seq;
            }
        };
        // A session whose window passed has no log any more; the job still
        // runs to its end, but nobody can resume to see it.
        if let Ok(seq) = log.append_offering(&self.spec.session_id, &draft, &mut state.offers) {
            state.last_event_seq = seq;
            if state.first_event_seq.is_none() {
                state.first_event_seq = Some(seq);
                // Queued behind the event itself, in the same ordered store
                // stream: a durable event implies a durable first_event_seq.
                let _ = self.persist_locked(state);
            }
            self.signal_back_pressure(log.as_ref(), &self.origin, seq);
        }
        if !state.subscribers.is_empty() {
            let ids: Vec<&SessionId> = state.subscribers.iter().map(|s| &s.id).collect();
            let mut appended = log
                .append_each_offering(&ids, &draft, &mut state.offers)
                .into_iter();
            state
                .subscribers
                .retain(|subscriber| match appended.next() {
                    Some(Ok(seq)) => {
                        self.signal_back_pressure(log.as_ref(), subscriber, seq);
                        true
                    }
                    _ => false,
                });
        }
        state.last_event_seq
    }

    /// Cluster mode: numbers the event and queues it for the writer task
    /// (`crate::cluster`), which appends it to the shared log in order.
    fn queue_shared(&self, state: &mut JobState, output: &SharedOutput, draft: EventDraft) {
        state.queued += 1;
        let terminal = draft.message_type != "job.event";
        let permit = state.reserved.take().or_else(|| output.try_reserve());
        output.send(Outgoing {
            job_id: self.spec.id.clone(),
            index: state.queued,
            terminal,
            message_type: draft.message_type,
            message_id: crate::ids::MessageId::generate(),
            shared_envelope: draft.shared_envelope().clone(),
            terminal_payload: terminal.then(|| draft.payload.clone()),
            permit,
        });
    }

    /// Waits until the job's output has room for one more event: the
    /// durable store's write queue, or the queue to the cluster's log (at
    /// once in memory). Agents' tasks call it before they emit, so a slow
    /// store slows the agent, never a runtime thread or a holder of the
    /// job's lock.
    pub async fn ready(&self) {
        let output = match &self.output {
            JobOutput::Local(_) => {
                crate::store::wait_for_room(self.store.as_ref()).await;
                return;
            }
            JobOutput::Shared(output) => output,
        };
        if self.state().reserved.is_some() {
            return;
        }
        let permit = output.reserve().await;
        let mut state = self.state();
        if state.reserved.is_none() {
            state.reserved = permit;
        }
    }

    /// The queue to the cluster's log (cluster mode only).
    pub fn shared_output(&self) -> Option<&SharedOutput> {
        match &self.output {
            JobOutput::Shared(output) => Some(output),
            JobOutput::Local(_) => None,
        }
    }

    /// Stops the job's agent without writing a terminal: another node has
    /// taken the job over (its lease was lost) and ended it in the shared
    /// log (cluster mode).
    pub fn abandon(&self) {
        let mut state = self.state();
        if !state.status.is_terminal() {
            state.status = JobStatus::Error;
            state.running_slot = None;
        }
        drop(state);
        self.cancel.cancel();
    }

    /// §6.5: tells a lagging consumer, once per episode, with a `status`
    /// event in its own session only.
    fn signal_back_pressure(&self, log: &dyn EventLog, session: &Session, seq: EventSeq) {
        let Some(lag) = session.note_append(seq, self.spec.limits.back_pressure_lag_events) else {
            return;
        };
        self.metrics.back_pressure_signal();
        let payload = json!({
            "kind": "status",
            "ts": now_rfc3339(),
            "body": {
                "phase": "back_pressure",
                "message": format!("consumer is {lag} events behind its last acknowledgement"),
            },
        });
        let draft = EventDraft::new(
            "job.event",
            self.spec.id.clone(),
            Some(self.spec.trace_id.clone()),
            payload,
        );
        let _ = log.append(&session.id, &draft);
    }

    /// The observable, non-secret view of the job (§6.6, §7.6).
    pub fn descriptor(&self) -> Value {
        let snapshot = self.snapshot();
        let mut descriptor = json!({
            "job_id": self.spec.id,
            "agent": self.spec.agent,
            "status": snapshot.status,
            "lease": self.spec.lease,
            "parent_job_id": null,
            "created_at": self.spec.created_at,
            // §6.6's name for it, which the official SDKs require.
            "submitted_at": self.spec.created_at,
            "trace_id": self.spec.trace_id,
            "last_event_seq": snapshot.last_event_seq,
        });
        if let Some(constraints) = &self.spec.lease_constraints {
            descriptor["lease_constraints"] = constraints.clone();
        }
        if !snapshot.budget_remaining.is_empty() {
            descriptor["budget"] = json!(snapshot.budget_remaining);
        }
        descriptor
    }
}
