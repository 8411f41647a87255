//! What must survive a restart besides the event log: sessions and jobs, as
//! JSON records. The embedded in-memory deployment keeps nothing
//! ([`Ephemeral`]); the durable one (`event_log::sqlite`) writes records in
//! the same ordered, group-committed stream as the events.

use serde_json::Value;
use tokio::sync::oneshot;

use crate::ids::{JobId, SessionId};

/// Completes once a write is durable. Resolves at once for [`Ephemeral`].
pub struct Durable(Option<oneshot::Receiver<()>>);

impl Durable {
    pub fn now() -> Durable {
        Durable(None)
    }

    pub fn pending(receiver: oneshot::Receiver<()>) -> Durable {
        Durable(Some(receiver))
    }

    /// [`Durable::wait`] for synchronous callers (tests, start-up); must not
    /// be called from inside an async task.
    pub fn wait_blocking(self) {
        if let Some(receiver) = self.0 {
            let _ = receiver.blocking_recv();
        }
    }

    /// Waits for the write to be committed (or for the store to stop).
    pub async fn wait(self) {
        if let Some(receiver) = self.0 {
            let _ = receiver.await;
        }
    }
}

/// Durable storage of session and job records. Writes are queued, applied
/// in call order, and never block for I/O.
pub trait Persistence: Send + Sync {
    fn save_session(&self, session_id: &SessionId, record: Value) -> Durable;
    fn delete_session(&self, session_id: &SessionId);
    fn save_job(&self, job_id: &JobId, session_id: &SessionId, record: Value) -> Durable;
    fn delete_job(&self, job_id: &JobId);
    /// Completes once everything written so far is durable.
    fn flush(&self) -> Durable {
        Durable::now()
    }
}

/// Keeps nothing: the in-memory deployment.
pub struct Ephemeral;

impl Persistence for Ephemeral {
    fn save_session(&self, _: &SessionId, _: Value) -> Durable {
        Durable::now()
    }

    fn delete_session(&self, _: &SessionId) {}

    fn save_job(&self, _: &JobId, _: &SessionId, _: Value) -> Durable {
        Durable::now()
    }

    fn delete_job(&self, _: &JobId) {}
}
