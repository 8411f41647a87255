//! The SQLite `Coordinator`: each change is one request of the writer (one
//! savepoint of a committed transaction), each lookup one read; notices to
//! nodes go out through the in-process hub once the transaction has
//! committed. The SQL is in `sessions.rs` and `jobs.rs`.

use bytes::Bytes;
use rusqlite::params;
use tokio::sync::broadcast;

use super::{jobs, sessions, to_json, SqliteStorage};
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::storage::redis::keys::MAX_IDEMPOTENCY_KEY_LEN;
use crate::storage::{
    Coordinator, IdempotencyClaim, IdempotencyRecord, JobRecord, JobStatus, Lease, NodeNotice,
    ReapedJob, SessionRecord, SessionState, StorageError, StorageResult, StreamHolder,
};

impl Coordinator for SqliteStorage {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn create_session(&self, record: &SessionRecord) -> StorageResult<u64> {
        let session_id = record.session_id.clone();
        let record = to_json(record)?;
        self.write(move |connection, _| sessions::create(connection, &session_id, &record))
            .await
    }

    async fn session(&self, session_id: &SessionId) -> StorageResult<SessionRecord> {
        let session_id = session_id.clone();
        self.read(move |connection| sessions::record(connection, &session_id))
            .await
    }

    async fn session_state(&self, session_id: &SessionId) -> StorageResult<SessionState> {
        let session_id = session_id.clone();
        self.read(move |connection| sessions::state(connection, &session_id))
            .await
    }

    async fn acknowledge(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> StorageResult<EventSeq> {
        let session_id = session_id.clone();
        self.write(move |connection, _| sessions::acknowledge(connection, &session_id, up_to))
            .await
    }

    async fn resume(&self, session_id: &SessionId, presented: Option<u64>) -> StorageResult<u64> {
        let session_id = session_id.clone();
        self.write(move |connection, _| sessions::resume(connection, &session_id, presented))
            .await
    }

    async fn attach(
        &self,
        session_id: &SessionId,
        presented: Option<u64>,
        holder: &StreamHolder,
    ) -> StorageResult<(u64, Option<StreamHolder>)> {
        let (session_id, holder) = (session_id.clone(), holder.clone());
        self.write(move |connection, effects| {
            sessions::attach(connection, &session_id, presented, &holder, effects)
        })
        .await
    }

    async fn detach(&self, session_id: &SessionId, holder: &StreamHolder) -> StorageResult<bool> {
        let (session_id, holder) = (session_id.clone(), holder.clone());
        self.write(move |connection, _| sessions::detach(connection, &session_id, &holder))
            .await
    }

    async fn close_session(&self, session_id: &SessionId) -> StorageResult<Option<StreamHolder>> {
        let session_id = session_id.clone();
        self.write(move |connection, effects| sessions::close(connection, &session_id, effects))
            .await
    }

    fn notices(&self) -> broadcast::Receiver<NodeNotice> {
        self.notices.subscribe()
    }

    async fn put_job(&self, record: &JobRecord) -> StorageResult<()> {
        let json = to_json(record)?;
        let record = record.clone();
        self.write(move |connection, _| jobs::put(connection, &record, &json))
            .await
    }

    async fn locate_job(&self, job_id: &JobId) -> StorageResult<SessionId> {
        let job_id = job_id.clone();
        self.read(move |connection| jobs::locate(connection, &job_id))
            .await
    }

    async fn list_jobs(
        &self,
        principal: &Principal,
        after: u64,
        limit: usize,
    ) -> StorageResult<Vec<(u64, JobRecord)>> {
        let principal = principal.clone();
        self.read(move |connection| jobs::list(connection, &principal, after, limit))
            .await
    }

    async fn job(&self, session_id: &SessionId, job_id: &JobId) -> StorageResult<JobRecord> {
        let (session_id, job_id) = (session_id.clone(), job_id.clone());
        self.read(move |connection| jobs::record(connection, &session_id, &job_id))
            .await
    }

    async fn acquire_lease(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
        ttl_ms: u64,
    ) -> StorageResult<Lease> {
        let (session_id, job_id) = (session_id.clone(), job_id.clone());
        let node = self.node_id.clone();
        self.write(move |connection, _| {
            jobs::acquire_lease(connection, &session_id, &job_id, &node, ttl_ms)
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> StorageResult<bool> {
        let lease = lease.clone();
        self.write(move |connection, _| jobs::renew_lease(connection, &lease, ttl_ms))
            .await
    }

    async fn finish_job(
        &self,
        lease: &Lease,
        status: JobStatus,
        terminal: &serde_json::Value,
    ) -> StorageResult<()> {
        let lease = lease.clone();
        let terminal = to_json(terminal)?;
        self.write(move |connection, _| jobs::finish(connection, &lease, status, &terminal))
            .await
    }

    async fn request_cancel(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
    ) -> StorageResult<String> {
        let (session_id, job_id) = (session_id.clone(), job_id.clone());
        self.write(move |connection, effects| {
            jobs::request_cancel(connection, &session_id, &job_id, effects)
        })
        .await
    }

    /// Candidates are read first (their terminals are built here, outside
    /// the writer), then one write re-checks each lease and ends the job:
    /// racing reapers are serialized by the writer, so each job gets exactly
    /// one terminal. A lease counts as expired by the earlier of `now_ms`
    /// and this process's clock, so a caller's clock running ahead never
    /// reaps a live lease.
    async fn reap_expired(
        &self,
        now_ms: u64,
        limit: usize,
        terminal: &(dyn Fn(&SessionId, &JobId) -> Bytes + Sync),
        terminal_payload: &serde_json::Value,
    ) -> StorageResult<Vec<ReapedJob>> {
        let cutoff = now_ms.min(super::now_ms());
        let terminal_payload = to_json(terminal_payload)?;
        let candidates = self
            .read(move |connection| jobs::reap_candidates(connection, cutoff, limit))
            .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let candidates: Vec<_> = candidates
            .into_iter()
            .map(|(session_id, job_id, token)| {
                let body = terminal(&session_id, &job_id);
                (session_id, job_id, token, body)
            })
            .collect();
        self.write(move |connection, effects| {
            let mut reaped = Vec::new();
            for (session_id, job_id, token, body) in &candidates {
                // Each job in its own savepoint: one corrupt job row is
                // logged and skipped, never a reason to leave the others'
                // nodes unreaped.
                connection.execute_batch("SAVEPOINT reap_one")?;
                let outcome = jobs::reap_one(
                    connection,
                    session_id,
                    job_id,
                    token,
                    cutoff,
                    (body, &terminal_payload),
                    effects,
                );
                match outcome {
                    Ok(Ok(job)) => {
                        connection.execute_batch("RELEASE reap_one")?;
                        reaped.extend(job);
                    }
                    Ok(Err(error)) => skip_unreapable(connection, session_id, job_id, &error)?,
                    Err(error) => skip_unreapable(
                        connection,
                        session_id,
                        job_id,
                        &super::writer::sql_error(error),
                    )?,
                }
            }
            Ok(Ok(reaped))
        })
        .await
    }

    async fn claim_idempotency(
        &self,
        principal: &Principal,
        key: &str,
        record: &IdempotencyRecord,
        ttl_ms: u64,
    ) -> StorageResult<IdempotencyClaim> {
        // The same bound as the Redis backend, so a key one accepts the
        // other does too.
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(StorageError::InvalidId);
        }
        let (principal, key) = (principal.clone(), key.to_owned());
        let record = to_json(record)?;
        self.write(move |connection, _| {
            jobs::claim_idempotency(connection, &principal, &key, &record, ttl_ms)
        })
        .await
    }

    async fn subscribe(
        &self,
        subscriber: &SessionId,
        owner: &SessionId,
        job_id: &JobId,
    ) -> StorageResult<()> {
        let (subscriber, owner, job_id) = (subscriber.clone(), owner.clone(), job_id.clone());
        self.write(move |connection, _| {
            if !jobs::exists(connection, &owner, &job_id)? {
                return Ok(Err(StorageError::NotFound));
            }
            connection
                .prepare_cached(
                    "INSERT INTO subscriptions (owner, job_id, subscriber) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    owner.as_str(),
                    job_id.as_str(),
                    subscriber.as_str()
                ])?;
            Ok(Ok(()))
        })
        .await
    }

    async fn subscribers(
        &self,
        owner: &SessionId,
        job_id: &JobId,
    ) -> StorageResult<Vec<SessionId>> {
        let (owner, job_id) = (owner.clone(), job_id.clone());
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT subscriber FROM subscriptions WHERE owner = ?1 AND job_id = ?2",
            )?;
            let mut subscribers = statement
                .query_map(params![owner.as_str(), job_id.as_str()], |row| {
                    row.get::<_, String>(0)
                })?
                .map(|subscriber| subscriber.map(|s| SessionId::from_client(&s)))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            subscribers.sort();
            Ok(Ok(subscribers))
        })
        .await
    }
}

/// Rolls back one job's reaping and says why, loudly.
fn skip_unreapable(
    connection: &rusqlite::Connection,
    session_id: &SessionId,
    job_id: &JobId,
    error: &StorageError,
) -> rusqlite::Result<()> {
    connection.execute_batch("ROLLBACK TO reap_one; RELEASE reap_one")?;
    tracing::error!(
        session_id = %session_id,
        job_id = %job_id,
        %error,
        "a job whose lease expired could not be reaped; skipped"
    );
    Ok(())
}
