//! Where a job's events go: straight into this node's log (one node,
//! in memory or with `--data-dir`), or into a bounded queue that a writer
//! task drains into the shared store (cluster mode, `crate::cluster`).
//!
//! The shared store is remote, so an append there cannot happen under the
//! job's lock. Instead the job numbers its own events (the *append index*,
//! from 1, the store's retry key) and queues them in order; the writer
//! appends them in that order and retries a lost reply with the same index,
//! which the store recognises as a duplicate. The queue is bounded by
//! permits an agent's task takes *before* the job's lock ([`Job::ready`]),
//! so a full queue makes the agent wait, never a runtime thread.
//!
//! [`Job::ready`]: super::Job::ready

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::event_log::EventLog;
use crate::ids::{EventSeq, JobId, MessageId, SessionId};
use crate::storage::SubscribeAnswer;

/// Events a job may have queued for the shared store beyond the one being
/// written; a terminal event and the extra events of one budgeted metric
/// (§9.6) may exceed it by at most three.
pub const SHARED_QUEUE_EVENTS: usize = 256;

pub enum JobOutput {
    /// Appended to this node's log under the job's lock.
    Local(Arc<dyn EventLog>),
    /// Queued for the cluster's shared log.
    Shared(SharedOutput),
}

/// What a job's writer task is asked to do, in order.
pub enum JobMessage {
    /// Append an event (to the job's session and to its subscribers').
    Event(Outgoing),
    /// Add a subscriber (§7.6): its history is copied after every event
    /// queued before, and live events follow, with no gap and no duplicate.
    Subscribe {
        subscriber: SessionId,
        history_after: Option<EventSeq>,
        reply: oneshot::Sender<SubscribeAnswer>,
    },
    /// Stop copying events to a subscriber.
    Unsubscribe(SessionId),
}

/// One event on its way to the shared log.
pub struct Outgoing {
    pub job_id: JobId,
    /// The job's own count of events, from 1 (the store's retry key).
    pub index: u64,
    pub terminal: bool,
    /// `job.event`, `job.result` or `job.error`.
    pub message_type: &'static str,
    /// The envelope's `id`, fixed here so every read gives the same bytes.
    pub message_id: MessageId,
    /// The session-independent end of the envelope (see
    /// [`crate::event_log::EventDraft::shared_envelope`]).
    pub shared_envelope: Bytes,
    /// For a terminal: its payload, kept with the job's shared record.
    pub terminal_payload: Option<serde_json::Value>,
    /// Released once the event is written.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The producing end of a job's queue to the shared log.
pub struct SharedOutput {
    sender: mpsc::UnboundedSender<JobMessage>,
    permits: Arc<Semaphore>,
}

impl SharedOutput {
    /// A queue and its receiving end, for the writer task.
    pub fn channel() -> (SharedOutput, mpsc::UnboundedReceiver<JobMessage>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let output = SharedOutput {
            sender,
            permits: Arc::new(Semaphore::new(SHARED_QUEUE_EVENTS)),
        };
        (output, receiver)
    }

    /// Waits for room for one more event.
    pub async fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// Room for one more event, if there is some now.
    pub fn try_reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Queues an event. A writer that has stopped (its job was lost to
    /// another node) drops it: that job's log is closed.
    pub fn send(&self, outgoing: Outgoing) {
        let _ = self.sender.send(JobMessage::Event(outgoing));
    }

    /// Asks the writer to add a subscriber; `None` when it has stopped (the
    /// job's terminal is written).
    pub fn subscribe(
        &self,
        subscriber: SessionId,
        history_after: Option<EventSeq>,
    ) -> Option<oneshot::Receiver<SubscribeAnswer>> {
        let (reply, answer) = oneshot::channel();
        let message = JobMessage::Subscribe {
            subscriber,
            history_after,
            reply,
        };
        self.sender.send(message).ok().map(|()| answer)
    }

    pub fn unsubscribe(&self, subscriber: SessionId) {
        let _ = self.sender.send(JobMessage::Unsubscribe(subscriber));
    }
}
