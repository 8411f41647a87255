//! Jobs in cluster mode. A job runs on the node that accepted it, under a
//! lease in Redis that this node renews; every event it appends carries the
//! lease (fencing), so a node that lost its lease cannot write. When a node
//! dies, its leases lapse and any node's reaper appends the job's one
//! terminal `job.error` (`INTERNAL_ERROR`, retryable). Cancels sent through
//! another node reach this one as a notice, and through the lease renewal
//! if the notice was missed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{locked, ClusterNode};
use crate::ids::{JobId, Principal, SessionId};
use crate::jobs::agents::Agent;
use crate::jobs::{Job, ListFilter, Outgoing, Terminal};
use crate::protocol::{parse_utc_timestamp, ErrorCode, JobStatus};
use crate::storage::{
    Append, Coordinator, EventKind, EventStore, IdempotencyClaim, IdempotencyRecord, JobRecord,
    JobStatus as SharedStatus, Lease, StorageError, StorageResult,
};

/// How long an idempotency key keeps naming its job (§7.2).
const IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Events written to Redis in one batch at most.
const WRITE_BATCH: usize = 64;
/// The longest pause between two attempts to write to an unreachable Redis.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// What a node knows of a job of the cluster, wherever it runs.
#[derive(Clone, Debug)]
pub struct SharedJob {
    pub job_id: JobId,
    pub session_id: SessionId,
    pub principal: Principal,
    pub trace_id: String,
    pub agent: String,
    pub status: JobStatus,
    /// The descriptor (§6.6) with its current status.
    pub descriptor: Value,
    /// The terminal event's payload, once the job has ended.
    pub terminal: Option<Value>,
    /// The `job.accepted` payload (§7.1).
    pub accepted: Value,
}

impl SharedJob {
    fn from_record(record: JobRecord) -> SharedJob {
        let status = current_status(&record);
        let mut descriptor = record.descriptor;
        descriptor["status"] = json!(status);
        let trace_id = descriptor
            .get("trace_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let terminal = record
            .terminal
            .or_else(|| (record.status == SharedStatus::Lost).then(node_lost_payload));
        SharedJob {
            job_id: record.job_id,
            session_id: record.session_id,
            principal: Principal::new(&record.principal),
            trace_id,
            agent: record.agent,
            status,
            descriptor,
            terminal,
            accepted: record.accepted,
        }
    }

    fn created_at(&self) -> time::OffsetDateTime {
        self.descriptor
            .get("created_at")
            .and_then(Value::as_str)
            .and_then(parse_utc_timestamp)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }
}

/// The job's status as the protocol names it (§7.3).
fn current_status(record: &JobRecord) -> JobStatus {
    let from_terminal = record
        .terminal
        .as_ref()
        .and_then(|terminal| terminal.get("final_status"))
        .and_then(Value::as_str)
        .and_then(JobStatus::parse);
    from_terminal.unwrap_or(match record.status {
        SharedStatus::Running => JobStatus::Running,
        SharedStatus::Succeeded => JobStatus::Success,
        SharedStatus::Cancelled => JobStatus::Cancelled,
        SharedStatus::Failed | SharedStatus::Lost => JobStatus::Error,
    })
}

fn shared_status(status: JobStatus) -> SharedStatus {
    match status {
        JobStatus::Success => SharedStatus::Succeeded,
        JobStatus::Cancelled => SharedStatus::Cancelled,
        _ => SharedStatus::Failed,
    }
}

/// The terminal a survivor appends for a job whose node was lost.
fn node_lost_terminal() -> Terminal {
    Terminal::failure(
        JobStatus::Error,
        ErrorCode::InternalError,
        "the gateway node running this job was lost (it stopped renewing the job's lease); \
         the job did not finish and may be submitted again",
    )
}

fn node_lost_payload() -> Value {
    let (_, mut payload) = node_lost_terminal().message_type_and_payload();
    payload["completed_at"] = json!(crate::protocol::now_rfc3339());
    payload
}

/// What an idempotent submission found (§7.2).
pub enum Claim {
    /// The key is new: submit the job under this id.
    Fresh,
    /// The key names this earlier job, submitted with the same parameters.
    Existing(Box<SharedJob>),
    /// The key names a job submitted with other parameters.
    Conflict,
}

fn fingerprint_digest(fingerprint: &Value) -> String {
    let bytes = serde_json::to_vec(fingerprint).unwrap_or_default();
    let digest = Sha256::digest(bytes);
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl ClusterNode {
    /// Claims an idempotency key for a new job, cluster-wide.
    pub async fn claim_idempotency(
        &self,
        principal: &Principal,
        key: &str,
        session_id: &SessionId,
        job_id: &JobId,
        fingerprint: &Value,
    ) -> StorageResult<Claim> {
        let record = IdempotencyRecord {
            session_id: session_id.clone(),
            job_id: job_id.clone(),
            fingerprint: fingerprint_digest(fingerprint),
        };
        let claim = self
            .storage()
            .claim_idempotency(principal, key, &record, IDEMPOTENCY_TTL_MS)
            .await?;
        let existing = match claim {
            IdempotencyClaim::Claimed => return Ok(Claim::Fresh),
            IdempotencyClaim::Existing(existing) => existing,
        };
        if existing.fingerprint != record.fingerprint {
            return Ok(Claim::Conflict);
        }
        // The first submission may still be storing its record.
        for _ in 0..20 {
            match self
                .storage()
                .job(&existing.session_id, &existing.job_id)
                .await
            {
                Ok(record) => return Ok(Claim::Existing(Box::new(SharedJob::from_record(record)))),
                Err(StorageError::NotFound) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error),
            }
        }
        Err(StorageError::Unavailable(
            "the job this idempotency key names is not stored yet".into(),
        ))
    }

    /// Stores an accepted job, takes its lease, and runs it on this node:
    /// its agent (one task), the writer of its events and its lease renewal.
    pub async fn start_job(
        self: &Arc<Self>,
        job: Arc<Job>,
        events: mpsc::UnboundedReceiver<Outgoing>,
        agent: Agent,
    ) -> StorageResult<()> {
        let record = JobRecord {
            session_id: job.spec.session_id.clone(),
            job_id: job.spec.id.clone(),
            principal: job.spec.principal.as_str().to_owned(),
            agent: job.spec.agent.clone(),
            submitted_at_ms: crate::storage::redis::now_ms(),
            status: SharedStatus::Running,
            owner: None,
            cancel_requested: false,
            descriptor: job.descriptor(),
            accepted: job.accepted_payload.clone(),
            terminal: None,
        };
        self.storage().put_job(&record).await?;
        let ttl = self.lease_ttl_ms();
        let lease = self
            .storage()
            .acquire_lease(&record.session_id, &record.job_id, ttl)
            .await?;
        locked(&self.running).insert(job.spec.id.clone(), job.clone());
        let written = CancellationToken::new();
        tokio::spawn(self.clone().write_events(
            lease.clone(),
            events,
            job.clone(),
            written.clone(),
        ));
        tokio::spawn(self.clone().renew_lease(lease, job.clone(), written));
        crate::jobs::runner::start(job, agent);
        Ok(())
    }

    fn lease_ttl_ms(&self) -> u64 {
        u64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Appends the job's events in order, retrying what Redis did not
    /// confirm (same append index: never a duplicate), until the terminal
    /// is written and recorded.
    async fn write_events(
        self: Arc<Self>,
        lease: Lease,
        mut events: mpsc::UnboundedReceiver<Outgoing>,
        job: Arc<Job>,
        written: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while events.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            let appends: Vec<Append> = batch
                .iter()
                .map(|outgoing| Append {
                    session_id: lease.session_id.clone(),
                    job_id: outgoing.job_id.clone(),
                    index: outgoing.index,
                    kind: if outgoing.terminal {
                        EventKind::Terminal
                    } else {
                        EventKind::Event
                    },
                    body: super::log::encode_body(
                        outgoing.message_type,
                        &outgoing.message_id,
                        &outgoing.shared_envelope,
                    ),
                    fence: Some(lease.clone()),
                })
                .collect();
            if !self.append_until_done(&lease, &appends, &job).await {
                break;
            }
            if let Some(terminal) = batch.iter().find(|outgoing| outgoing.terminal) {
                let payload = terminal.terminal_payload.clone().unwrap_or(Value::Null);
                self.record_finish(&lease, &payload).await;
                break;
            }
            batch.clear();
        }
        locked(&self.running).remove(&job.spec.id);
        written.cancel();
    }

    /// One batch, retried while Redis is unreachable. False when the job may
    /// write no more (its lease is gone: another node ended it).
    async fn append_until_done(&self, lease: &Lease, appends: &[Append], job: &Job) -> bool {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.storage().append_batch(appends).await {
                Ok(_) => return true,
                Err(error) if error.is_retryable() => {
                    tracing::warn!(job = %lease.job_id, %error, "appending to Redis failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(StorageError::Fenced | StorageError::JobClosed { .. }) => {
                    tracing::warn!(job = %lease.job_id, "job lost its lease: another node ended it");
                    job.abandon();
                    return false;
                }
                // The session is gone (its window passed): like one node,
                // the job runs on but nobody can see its events.
                Err(StorageError::Gone(_)) => return true,
                Err(error) => {
                    tracing::error!(job = %lease.job_id, %error, "appending a job's events failed");
                    return true;
                }
            }
        }
    }

    async fn record_finish(&self, lease: &Lease, payload: &Value) {
        let status = payload
            .get("final_status")
            .and_then(Value::as_str)
            .and_then(JobStatus::parse)
            .unwrap_or(JobStatus::Error);
        let mut delay = Duration::from_millis(50);
        loop {
            match self
                .storage()
                .finish_job(lease, shared_status(status), payload)
                .await
            {
                Err(error) if error.is_retryable() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(error) => {
                    tracing::warn!(job = %lease.job_id, %error, "recording a job's end failed");
                    return;
                }
                Ok(()) => return,
            }
        }
    }

    /// Renews the lease every third of its life until the job's terminal is
    /// written. A cancel recorded through another node is honoured here if
    /// its notice was lost; a lost lease stops the agent.
    async fn renew_lease(self: Arc<Self>, lease: Lease, job: Arc<Job>, written: CancellationToken) {
        let every = self.config.lease_ttl / 3;
        loop {
            tokio::select! {
                () = written.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self
                .storage()
                .renew_lease(&lease, self.lease_ttl_ms())
                .await
            {
                Ok(true) => {
                    let _ = job.cancel();
                }
                Ok(false) => {}
                Err(StorageError::Fenced) => {
                    if !written.is_cancelled() {
                        tracing::warn!(job = %lease.job_id, "job lease lost; stopping its agent");
                        job.abandon();
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(job = %lease.job_id, %error, "renewing a job lease failed");
                }
            }
        }
    }

    /// Ends jobs whose node was lost, forever (every node runs it; the
    /// script makes each job end exactly once).
    pub(super) async fn reap_forever(&self) {
        let mut tick = tokio::time::interval(self.config.reaper_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // One payload per pass: the event every reaped job gets and the
            // terminal its record keeps are the same, `completed_at` included.
            let payload = node_lost_payload();
            let terminal = |_: &SessionId, job_id: &JobId| -> Bytes {
                let tail = crate::protocol::job_envelope_tail(None, job_id, &payload);
                super::log::encode_body("job.error", &crate::ids::MessageId::generate(), &tail)
            };
            match self
                .storage()
                .reap_expired(crate::storage::redis::now_ms(), 100, &terminal, &payload)
                .await
            {
                Ok(reaped) => {
                    for job in &reaped {
                        tracing::warn!(
                            session = %job.session_id,
                            job = %job.job_id,
                            "job ended: its gateway node was lost"
                        );
                    }
                    self.metrics.jobs_reaped(reaped.len());
                }
                Err(error) => tracing::debug!(%error, "reaper pass failed"),
            }
        }
    }

    /// A job the caller's principal may see (others' jobs are `NotFound`,
    /// so their existence does not leak, §6.6).
    pub async fn job(&self, principal: &Principal, job_id: &JobId) -> StorageResult<SharedJob> {
        let session_id = self.storage().locate_job(job_id).await?;
        let record = self.storage().job(&session_id, job_id).await?;
        if record.principal != principal.as_str() {
            return Err(StorageError::NotFound);
        }
        Ok(SharedJob::from_record(record))
    }

    /// `job.cancel` (§7.4) for a job submitted in `session_id`: at once if
    /// it runs here, else through the owning node.
    pub async fn cancel(
        &self,
        principal: &Principal,
        session_id: &SessionId,
        job_id: &JobId,
    ) -> Result<SharedJob, CancelError> {
        let job = self.job(principal, job_id).await?;
        if &job.session_id != session_id {
            return Err(CancelError::NotSubmitter);
        }
        if job.status.is_terminal() {
            return Err(CancelError::Finished(job.status));
        }
        let local = locked(&self.running).get(job_id).cloned();
        match local {
            Some(local) => local
                .cancel()
                .map_err(|finished| CancelError::Finished(finished.0))?,
            None => {
                self.storage().request_cancel(session_id, job_id).await?;
            }
        }
        Ok(job)
    }

    /// One page of the principal's jobs (§6.6), in submission order after
    /// `cursor`; the next page's cursor when more remain.
    pub async fn list_jobs(
        &self,
        principal: &Principal,
        filter: &ListFilter,
        cursor: u64,
        limit: usize,
    ) -> StorageResult<(Vec<SharedJob>, Option<u64>)> {
        let mut jobs = Vec::new();
        let mut after = cursor;
        let mut last_listed = cursor;
        loop {
            let page = self.storage().list_jobs(principal, after, 100).await?;
            if page.is_empty() {
                return Ok((jobs, None));
            }
            for (position, record) in page {
                after = position;
                let job = SharedJob::from_record(record);
                if !filter.admits_fields(job.status, &job.agent, job.created_at()) {
                    continue;
                }
                if jobs.len() == limit {
                    return Ok((jobs, Some(last_listed)));
                }
                last_listed = position;
                jobs.push(job);
            }
        }
    }
}

/// Why a cancel was refused.
#[derive(Debug)]
pub enum CancelError {
    Storage(StorageError),
    /// Only the submitting session may cancel (§7.4).
    NotSubmitter,
    Finished(JobStatus),
}

impl From<StorageError> for CancelError {
    fn from(error: StorageError) -> Self {
        CancelError::Storage(error)
    }
}
