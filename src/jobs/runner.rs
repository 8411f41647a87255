//! One task per job: runs the agent until it ends, is cancelled, times out
//! (`max_runtime_sec`, §7.3) or outlives its lease (§9.5), and writes the
//! terminal event exactly once.

use std::sync::Arc;

use time::OffsetDateTime;

use super::agents::{Agent, AgentOutcome, JobContext};
use super::{Job, Terminal};
use crate::protocol::{ErrorCode, JobStatus};

/// Starts the job's task. The task owns the agent; dropping the agent future
/// (on cancel, timeout or lease expiry) stops it at its next `.await` (an
/// external agent's process is then signalled, its request dropped).
pub fn start(job: Arc<Job>, agent: Agent) {
    tokio::spawn(async move {
        job.mark_running();
        let context = JobContext::new(job.clone());
        let max_runtime = job.spec.max_runtime;
        let lease_expiry = job.spec.lease_expires_at.map(until);
        let terminal = tokio::select! {
            outcome = agent.run(context) => match outcome {
                AgentOutcome::Finished(terminal) => terminal,
            },
            () = job.stopped() => return,
            () = sleep_or_forever(max_runtime) => Terminal::failure(
                JobStatus::TimedOut,
                ErrorCode::Timeout,
                format!("job exceeded max_runtime_sec ({}s)", max_runtime.unwrap_or_default().as_secs()),
            ),
            () = sleep_or_forever(lease_expiry) => {
                // §14: expirations are logged for audit.
                tracing::info!(job = %job.spec.id, session = %job.spec.session_id, "lease expired while the job was running");
                Terminal::failure(
                JobStatus::Error,
                ErrorCode::LeaseExpired,
                "the job's lease expired (lease_constraints.expires_at) while it was running",
            )},
        };
        job.finish(terminal);
    });
}

fn until(at: OffsetDateTime) -> std::time::Duration {
    let remaining = at - OffsetDateTime::now_utc();
    remaining.try_into().unwrap_or_default()
}

async fn sleep_or_forever(duration: Option<std::time::Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}
