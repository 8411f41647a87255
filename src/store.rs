//! What must survive a restart besides the event log: sessions and jobs, as
//! typed records ([`SessionRow`], [`JobRow`]) the store keeps as JSON. The embedded in-memory deployment keeps nothing
//! ([`Ephemeral`]); the durable one (`event_log::sqlite`) writes records in
//! the same ordered, group-committed stream as the events.

use std::sync::Arc;

use tokio::sync::{oneshot, Semaphore};

use crate::ids::{JobId, SessionId};
use crate::jobs::JobRow;
use crate::session::SessionRow;

/// Completes once a write is durable. Resolves at once for [`Ephemeral`].
pub struct Durable(Option<oneshot::Receiver<()>>);

/// The store's writer stopped before the write was committed: nothing
/// written from then on is durable, and it is never reported as such.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the durable store's writer has stopped")]
pub struct WriterStopped;

impl Durable {
    pub fn now() -> Durable {
        Durable(None)
    }

    pub fn pending(receiver: oneshot::Receiver<()>) -> Durable {
        Durable(Some(receiver))
    }

    /// [`Durable::wait`] for synchronous callers (tests, start-up); must not
    /// be called from inside an async task.
    pub fn wait_blocking(self) -> Result<(), WriterStopped> {
        match self.0 {
            Some(receiver) => receiver.blocking_recv().map_err(|_| WriterStopped),
            None => Ok(()),
        }
    }

    /// Waits for the write to be committed; an error if the store's writer
    /// stopped first (the write is then not durable).
    pub async fn wait(self) -> Result<(), WriterStopped> {
        match self.0 {
            Some(receiver) => receiver.await.map_err(|_| WriterStopped),
            None => Ok(()),
        }
    }
}

/// Durable storage of session and job records. Writes are queued, applied
/// in call order, and never block for I/O.
pub trait Persistence: Send + Sync {
    fn save_session(&self, session_id: &SessionId, record: &SessionRow) -> Durable;
    fn delete_session(&self, session_id: &SessionId);
    fn save_job(&self, job_id: &JobId, session_id: &SessionId, record: &JobRow) -> Durable;
    fn delete_job(&self, job_id: &JobId);
    /// Completes once everything written so far is durable.
    fn flush(&self) -> Durable {
        Durable::now()
    }
    /// The room left in the store's write queue, for producers to wait on
    /// *before* they take a lock and write ([`wait_for_room`]); `None` when
    /// writes never wait.
    fn room(&self) -> Option<Arc<Semaphore>> {
        None
    }
}

/// Waits until the store's queue has room (at once without a queue). The
/// queue itself never blocks a writer: waiting happens here, in an async
/// task, before any lock is held.
pub async fn wait_for_room(store: &dyn Persistence) {
    if let Some(room) = store.room() {
        // A permit free now means room; it is given back at once and the
        // write takes its own.
        let _ = room.acquire().await;
    }
}

/// Keeps nothing: the in-memory deployment.
pub struct Ephemeral;

impl Persistence for Ephemeral {
    fn save_session(&self, _: &SessionId, _: &SessionRow) -> Durable {
        Durable::now()
    }

    fn delete_session(&self, _: &SessionId) {}

    fn save_job(&self, _: &JobId, _: &SessionId, _: &JobRow) -> Durable {
        Durable::now()
    }

    fn delete_job(&self, _: &JobId) {}
}
