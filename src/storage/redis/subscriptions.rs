//! Subscriptions (§7.6) and where each job stands in its session's log:
//! the calls `cluster/` makes beside the `Coordinator` trait. A session's
//! subscriptions are its hash's `subs` field (changed by `lua/session.lua`);
//! a job's position is its `j:` field in the session's meta, `t:` its
//! terminal's seq (both written by the append scripts).

use super::keys::{self, SessionKeys};
use super::{number, read_error, status, unexpected, write_error, RedisStorage};
use crate::ids::{EventSeq, JobId, SessionId};
use crate::storage::{GoneReason, StorageError, StorageResult};

/// A job's `j:` field in its session's meta, `index:seq` (the append
/// script writes it): its newest append index and that event's seq, or
/// zeros when there is none.
fn job_position(field: Option<&str>) -> (u64, EventSeq) {
    field
        .and_then(|text| text.split_once(':'))
        .and_then(|(index, seq)| Some((index.parse().ok()?, seq.parse().ok()?)))
        .unwrap_or((0, 0))
}

impl RedisStorage {
    /// Adds (`true`) or removes a job from a session's subscriptions
    /// (§7.6); whether anything changed.
    pub async fn set_subscription(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
        subscribed: bool,
    ) -> StorageResult<bool> {
        let op: &[u8] = if subscribed { b"sub" } else { b"unsub" };
        let job = keys::checked(job_id.as_str())?;
        let reply = self
            .session_script(session_id, &[op, job.as_bytes()])
            .await?;
        match (status(&reply)?, reply.get(1)) {
            ("ok", Some(changed)) => Ok(number(changed)? == 1),
            ("gone", _) => Err(StorageError::Gone(GoneReason::SessionMissing)),
            _ => Err(unexpected(&reply)),
        }
    }

    /// The newest append index of `job_id`'s events in a session's log (0
    /// for none): what a subscriber already holds of a job.
    pub async fn job_append_index(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
    ) -> StorageResult<u64> {
        let keys = SessionKeys::new(session_id)?;
        let mut connection = self.connection.clone();
        let position: Option<String> = redis::cmd("HGET")
            .arg(keys.meta())
            .arg(format!("j:{}", keys::checked(job_id.as_str())?))
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        Ok(job_position(position.as_deref()).0)
    }

    /// The jobs a session is subscribed to (§7.6).
    pub async fn subscriptions(&self, session_id: &SessionId) -> StorageResult<Vec<JobId>> {
        let keys = SessionKeys::new(session_id)?;
        let mut connection = self.connection.clone();
        let subs: Option<String> = redis::cmd("HGET")
            .arg(keys.session())
            .arg("subs")
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        Ok(subs
            .unwrap_or_default()
            .split_whitespace()
            .map(JobId::from_client)
            .collect())
    }

    /// Stops copying a job's events to `subscriber` (§7.6).
    pub async fn remove_job_subscriber(
        &self,
        owner: &SessionId,
        job_id: &JobId,
        subscriber: &SessionId,
    ) -> StorageResult<()> {
        let keys = SessionKeys::new(owner)?;
        let mut connection = self.connection.clone();
        redis::cmd("SREM")
            .arg(keys.subscribers(job_id)?)
            .arg(subscriber.as_str())
            .query_async::<i64>(&mut connection)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    /// Each job's newest `event_seq` in its own session's log (0 before its
    /// first event, or once the log is gone), in one round trip.
    pub async fn last_event_seqs(
        &self,
        jobs: &[(SessionId, JobId)],
    ) -> StorageResult<Vec<EventSeq>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (session_id, job_id) in jobs {
            let keys = SessionKeys::new(session_id)?;
            let job = keys::checked(job_id.as_str())?;
            pipe.cmd("HMGET")
                .arg(keys.meta())
                .arg(format!("j:{job}"))
                .arg(format!("t:{job}"));
        }
        let mut connection = self.connection.clone();
        let positions: Vec<(Option<String>, Option<String>)> = pipe
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        // `j:` is `index:seq` of the job's own newest append; `t:` the seq of
        // its terminal, which a reaper appends without moving `j:`.
        Ok(positions
            .iter()
            .map(|(position, terminal)| {
                let own = job_position(position.as_deref()).1;
                let terminal = terminal
                    .as_deref()
                    .and_then(|seq| seq.parse().ok())
                    .unwrap_or(0);
                own.max(terminal)
            })
            .collect())
    }
}
