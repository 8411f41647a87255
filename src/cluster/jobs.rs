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
use crate::jobs::{Job, JobMessage, ListFilter, Terminal};
use crate::protocol::{parse_utc_timestamp, ErrorCode, JobStatus};
use crate::storage::{
    Coordinator, IdempotencyClaim, IdempotencyRecord, JobRecord, JobStatus as SharedStatus, Lease,
    StorageError, StorageResult,
};

/// How long an idempotency key keeps naming its job (§7.2).
const IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// The pause before renewing a lease again after a renewal failed.
const RENEW_RETRY: Duration = Duration::from_millis(250);

/// What a node knows of a job of the cluster, wherever it runs.
#[derive(Clone, Debug)]
pub struct SharedJob {
    pub job_id: JobId,
    pub session_id: SessionId,
    pub principal: Principal,
    pub trace_id: String,
    pub agent: String,
    pub status: JobStatus,
    /// The node running it (while it runs).
    pub owner: Option<String>,
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
            owner: record.owner,
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

pub(super) fn shared_status(status: JobStatus) -> SharedStatus {
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

pub(super) fn node_lost_payload() -> Value {
    let (_, mut payload) = node_lost_terminal().message_type_and_payload();
    payload["completed_at"] = json!(crate::protocol::now_rfc3339());
    payload
}

/// The stored body of the terminal a reaper appends for a lost job, with
/// `payload` (from [`node_lost_payload`], one per reaper pass).
pub(super) fn node_lost_body(job_id: &JobId, payload: &Value) -> Bytes {
    let tail = crate::protocol::job_envelope_tail(None, job_id, payload);
    super::log::encode_body("job.error", &crate::ids::MessageId::generate(), 0, &tail)
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
        events: mpsc::UnboundedReceiver<JobMessage>,
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

    /// Renews the lease every third of its life until the job's terminal is
    /// written; after a failed renewal (Redis unreachable), retries every
    /// [`RENEW_RETRY`], so a Redis outage shorter than what is left of the
    /// lease does not cost the job. A cancel recorded through another node
    /// is honoured here if its notice was lost; a lost lease stops the agent.
    async fn renew_lease(self: Arc<Self>, lease: Lease, job: Arc<Job>, written: CancellationToken) {
        let every = self.config.lease_ttl / 3;
        let mut wait = every;
        loop {
            tokio::select! {
                () = written.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = every;
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
                    wait = every.min(RENEW_RETRY);
                }
            }
        }
    }

    /// At a graceful shutdown: ends the jobs this node runs at once (one
    /// retryable `INTERNAL_ERROR` each) rather than leaving them to the
    /// reapers after their leases lapse, and waits (bounded) for their
    /// writers to store the terminals.
    pub async fn end_jobs_at_shutdown(&self, limit: Duration) {
        let running: Vec<Arc<Job>> = locked(&self.running).values().cloned().collect();
        for job in &running {
            job.finish(Terminal::failure(
                JobStatus::Error,
                ErrorCode::InternalError,
                "the gateway node running this job shut down; the job did not finish and may be \
                 submitted again",
            ));
        }
        let deadline = tokio::time::Instant::now() + limit;
        while !locked(&self.running).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends jobs whose node was lost, forever (every node runs it; the
    /// script makes each job end exactly once).
    pub(super) async fn reap_forever(&self) {
        let mut tick = tokio::time::interval(self.config.reaper_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.reap_once().await {
                tracing::debug!(%error, "reaper pass failed");
            }
        }
    }

    /// One reaper pass: ends (at most 100) jobs whose lease lapsed, in their
    /// own session and in their subscribers'. Returns how many it ended.
    pub async fn reap_once(&self) -> StorageResult<usize> {
        // One payload per pass: the event every reaped job gets and the
        // terminal its record keeps are the same, `completed_at` included.
        let payload = node_lost_payload();
        let terminal =
            |_: &SessionId, job_id: &JobId| -> Bytes { node_lost_body(job_id, &payload) };
        let reaped = self
            .storage()
            .reap_expired(crate::storage::redis::now_ms(), 100, &terminal, &payload)
            .await?;
        for job in &reaped {
            tracing::warn!(
                session = %job.session_id,
                job = %job.job_id,
                "job ended: its gateway node was lost"
            );
            if job.terminal_seq.is_some() {
                self.copy_reaped_terminal(&job.session_id, &job.job_id)
                    .await;
            }
        }
        self.metrics.jobs_reaped(reaped.len());
        Ok(reaped.len())
    }

    /// A job the caller's principal may see (others' jobs are `NotFound`,
    /// so their existence does not leak, §6.6).
    pub async fn job(&self, principal: &Principal, job_id: &JobId) -> StorageResult<SharedJob> {
        let session_id = match self.storage().locate_job(job_id).await {
            // An id that could never name a job is simply unknown.
            Err(StorageError::InvalidId) => return Err(StorageError::NotFound),
            other => other?,
        };
        let record = self.storage().job(&session_id, job_id).await?;
        if record.principal != principal.as_str() {
            return Err(StorageError::NotFound);
        }
        let mut jobs = [SharedJob::from_record(record)];
        self.fill_positions(&mut jobs).await?;
        let [job] = jobs;
        Ok(job)
    }

    /// Sets each descriptor's `last_event_seq` (§6.6) from the shared log.
    async fn fill_positions(&self, jobs: &mut [SharedJob]) -> StorageResult<()> {
        let keys: Vec<(SessionId, JobId)> = jobs
            .iter()
            .map(|job| (job.session_id.clone(), job.job_id.clone()))
            .collect();
        let positions = self.storage().last_event_seqs(&keys).await?;
        for (job, seq) in jobs.iter_mut().zip(positions) {
            job.descriptor["last_event_seq"] = json!(seq);
        }
        Ok(())
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
                self.fill_positions(&mut jobs).await?;
                return Ok((jobs, None));
            }
            for (position, record) in page {
                after = position;
                let job = SharedJob::from_record(record);
                if !filter.admits_fields(job.status, &job.agent, job.created_at()) {
                    continue;
                }
                if jobs.len() == limit {
                    self.fill_positions(&mut jobs).await?;
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
