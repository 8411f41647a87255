//! The one writer of a job's events in cluster mode: it appends them to the
//! job's session in order, fenced by the job's lease, copies each to the
//! subscribed sessions (§7.6), and records the job's end after its
//! terminal. Whatever Redis did not confirm is retried with the same append
//! indexes, which the store recognises as duplicates, so nothing is written
//! twice and nothing is skipped.
//!
//! Subscriptions are handled here, between two events, so a subscriber's
//! history (copied first) and its live events meet with no gap and no
//! duplicate, whichever node asked.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::jobs::shared_status;
use super::{locked, log, ClusterNode};
use crate::ids::{EventSeq, JobId, SessionId};
use crate::jobs::{Job, JobMessage, Outgoing};
use crate::protocol::JobStatus;
use crate::storage::{
    Append, AppendOutcome, Coordinator, EventKind, EventStore, Lease, ReadBudget, StorageError,
    StoredEvent, SubscribeAnswer,
};

/// Events written to Redis in one batch at most.
const WRITE_BATCH: usize = 64;
/// The longest pause between two attempts to write to an unreachable Redis.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The append index of the terminal a reaper copies to a subscriber: above
/// any index a job reaches, so it is stored after whatever was copied, and
/// exact in a Lua number.
pub(super) const REAPED_COPY_INDEX: u64 = 1 << 52;

/// What the writer knows while the job runs.
struct Writer {
    node: Arc<ClusterNode>,
    lease: Lease,
    job: Arc<Job>,
    /// Sessions that receive copies of the job's events. A copy keeps the
    /// event's append index, so the store refuses a copy twice and a
    /// reaper can find the copies a lost node did not write.
    subscribers: Vec<SessionId>,
    /// The job's newest and first `event_seq` in its own session.
    last_seq: EventSeq,
    first_seq: Option<EventSeq>,
}

/// Why a write cannot go on.
enum Halt {
    /// The lease is gone: another node ended the job.
    LeaseLost,
}

impl ClusterNode {
    /// Runs the job's writer until its terminal is written and recorded (or
    /// its lease is lost); then `written` is cancelled.
    pub(super) async fn write_events(
        self: Arc<Self>,
        lease: Lease,
        mut messages: mpsc::UnboundedReceiver<JobMessage>,
        job: Arc<Job>,
        written: CancellationToken,
    ) {
        let job_id = job.spec.id.clone();
        let mut writer = Writer {
            node: self.clone(),
            lease,
            job,
            subscribers: Vec::new(),
            last_seq: 0,
            first_seq: None,
        };
        let mut received = Vec::with_capacity(WRITE_BATCH);
        'run: while messages.recv_many(&mut received, WRITE_BATCH).await > 0 {
            let mut events = Vec::new();
            for message in received.drain(..) {
                match message {
                    JobMessage::Event(outgoing) => events.push(outgoing),
                    other => {
                        // Everything queued before it is written first.
                        match writer.write(&events).await {
                            Ok(true) => break 'run,
                            Ok(false) => events.clear(),
                            Err(Halt::LeaseLost) => break 'run,
                        }
                        writer.control(other).await;
                    }
                }
            }
            match writer.write(&events).await {
                Ok(false) => {}
                Ok(true) | Err(Halt::LeaseLost) => break,
            }
        }
        locked(&self.running).remove(&job_id);
        written.cancel();
    }
}

impl Writer {
    /// Writes events in order; true once the terminal is written (and the
    /// job's end recorded).
    async fn write(&mut self, events: &[Outgoing]) -> Result<bool, Halt> {
        if events.is_empty() {
            return Ok(false);
        }
        let own: Vec<Append> = events
            .iter()
            .map(|outgoing| Append {
                session_id: self.lease.session_id.clone(),
                job_id: outgoing.job_id.clone(),
                index: outgoing.index,
                kind: kind(outgoing.terminal),
                body: log::encode_body(
                    outgoing.message_type,
                    &outgoing.message_id,
                    outgoing.index,
                    &outgoing.shared_envelope,
                ),
                fence: Some(self.lease.clone()),
            })
            .collect();
        let outcomes = self.append_retrying(&own).await?;
        for outcome in outcomes {
            let seq = match outcome {
                AppendOutcome::Stored(seq) | AppendOutcome::Duplicate(Some(seq)) => seq,
                AppendOutcome::Duplicate(None) => continue,
            };
            self.last_seq = self.last_seq.max(seq);
            self.first_seq.get_or_insert(seq);
        }
        let bodies: Vec<Bytes> = own.iter().map(|append| append.body.clone()).collect();
        self.copy_to_subscribers(&bodies).await;
        let Some(terminal) = events.iter().find(|outgoing| outgoing.terminal) else {
            return Ok(false);
        };
        let payload = terminal.terminal_payload.clone().unwrap_or(Value::Null);
        self.record_finish(&payload).await;
        Ok(true)
    }

    /// One batch, retried while Redis is unreachable.
    async fn append_retrying(&self, appends: &[Append]) -> Result<Vec<AppendOutcome>, Halt> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.node.storage().append_batch(appends).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(job = %self.lease.job_id, %error, "appending to Redis failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(StorageError::Fenced | StorageError::JobClosed { .. }) => {
                    tracing::warn!(job = %self.lease.job_id, "job lost its lease: another node ended it");
                    self.job.abandon();
                    return Err(Halt::LeaseLost);
                }
                // The session is gone (its window passed): like one node,
                // the job runs on but nobody can see its events.
                Err(StorageError::Gone(_)) => return Ok(Vec::new()),
                Err(error) => {
                    tracing::error!(job = %self.lease.job_id, %error, "appending a job's events failed");
                    return Ok(Vec::new());
                }
            }
        }
    }

    /// Copies events to every subscriber, each under a fresh envelope id;
    /// a subscriber whose session is gone is dropped. Copies are retried
    /// like the job's own events.
    async fn copy_to_subscribers(&mut self, bodies: &[Bytes]) {
        let mut position = 0;
        while position < self.subscribers.len() {
            let appends = copies(&self.subscribers[position], &self.lease.job_id, bodies);
            if self.copy_retrying(&appends).await {
                position += 1;
            } else {
                let gone = self.subscribers.remove(position);
                let _ = self
                    .node
                    .storage()
                    .remove_job_subscriber(&self.lease.session_id, &self.lease.job_id, &gone)
                    .await;
            }
        }
    }

    /// False when the subscriber's session is gone (or refuses copies).
    async fn copy_retrying(&self, appends: &[Append]) -> bool {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.node.storage().append_batch(appends).await {
                Ok(_) => return true,
                Err(error) if error.is_retryable() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(_) => return false,
            }
        }
    }

    async fn control(&mut self, message: JobMessage) {
        match message {
            JobMessage::Event(_) => {}
            JobMessage::Subscribe {
                subscriber,
                history_after,
                reply,
            } => {
                let answer = self.subscribe(subscriber, history_after).await;
                let _ = reply.send(answer);
            }
            JobMessage::Unsubscribe(subscriber) => {
                self.subscribers.retain(|entry| *entry != subscriber);
            }
        }
    }

    /// §7.6: copies the job's retained events after `history_after` (if
    /// asked), then makes the session receive every later event.
    async fn subscribe(
        &mut self,
        subscriber: SessionId,
        history_after: Option<EventSeq>,
    ) -> SubscribeAnswer {
        let already = subscriber == self.lease.session_id || self.subscribers.contains(&subscriber);
        if already {
            return SubscribeAnswer::Subscribed {
                subscribed_from: self.last_seq,
                replayed: false,
            };
        }
        let history = match history_after {
            None => Vec::new(),
            Some(after) => match self.history_after(after).await {
                Ok(history) => history,
                Err(answer) => return answer,
            },
        };
        let appends = copies(&subscriber, &self.lease.job_id, &history);
        if !appends.is_empty() && !self.copy_retrying(&appends).await {
            return SubscribeAnswer::Unavailable;
        }
        let storage = self.node.storage();
        if storage
            .subscribe(&subscriber, &self.lease.session_id, &self.lease.job_id)
            .await
            .is_err()
        {
            return SubscribeAnswer::Unavailable;
        }
        self.subscribers.push(subscriber);
        SubscribeAnswer::Subscribed {
            subscribed_from: self.last_seq,
            replayed: !appends.is_empty(),
        }
    }

    /// The job's retained events after `after` in its own session, as
    /// bodies. 410-worthy only if the floor passed one of this job's events
    /// (events of other jobs below the floor do not count, as on one node).
    async fn history_after(&self, after: EventSeq) -> Result<Vec<Bytes>, SubscribeAnswer> {
        let storage = self.node.storage();
        let origin = &self.lease.session_id;
        let bounds = storage
            .bounds(origin)
            .await
            .map_err(|_| SubscribeAnswer::Unavailable)?;
        if after < bounds.floor && self.first_seq.is_some_and(|first| first <= bounds.floor) {
            return Err(SubscribeAnswer::HistoryEvicted);
        }
        let mut cursor = after.max(bounds.floor).min(bounds.newest);
        let mut history = Vec::new();
        let budget = ReadBudget {
            max_events: 1024,
            max_bytes: 4 << 20,
        };
        loop {
            let batch: Vec<StoredEvent> = match storage.read_after(origin, cursor, budget).await {
                Ok(batch) => batch,
                Err(StorageError::Gone(_)) => return Err(SubscribeAnswer::HistoryEvicted),
                Err(_) => return Err(SubscribeAnswer::Unavailable),
            };
            let Some(last) = batch.last().map(|event| event.seq) else {
                return Ok(history);
            };
            cursor = last;
            history.extend(
                batch
                    .into_iter()
                    .filter(|event| event.job_id == self.lease.job_id)
                    .map(|event| event.body),
            );
        }
    }

    async fn record_finish(&self, payload: &Value) {
        let status = payload
            .get("final_status")
            .and_then(Value::as_str)
            .and_then(JobStatus::parse)
            .unwrap_or(JobStatus::Error);
        let mut delay = Duration::from_millis(50);
        loop {
            match self
                .node
                .storage()
                .finish_job(&self.lease, shared_status(status), payload)
                .await
            {
                Err(error) if error.is_retryable() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(error) => {
                    tracing::warn!(job = %self.lease.job_id, %error, "recording a job's end failed");
                    return;
                }
                Ok(()) => return,
            }
        }
    }
}

fn kind(terminal: bool) -> EventKind {
    if terminal {
        EventKind::Terminal
    } else {
        EventKind::Event
    }
}

/// Copies of stored bodies for `subscriber`: each keeps the event's append
/// index and gets a fresh envelope id.
pub(super) fn copies(subscriber: &SessionId, job_id: &JobId, bodies: &[Bytes]) -> Vec<Append> {
    bodies
        .iter()
        .filter_map(log::decode_body)
        .map(|body| Append {
            session_id: subscriber.clone(),
            job_id: job_id.clone(),
            // A reaper's terminal has no index of the job's own.
            index: match body.index {
                0 => REAPED_COPY_INDEX,
                index => index,
            },
            kind: kind(body.message_type != "job.event"),
            body: body.copy(),
            fence: None,
        })
        .collect()
}
