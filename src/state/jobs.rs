//! Job operations, on this process's jobs or on the cluster's.

use std::sync::Arc;

use serde_json::Value;

use super::{AppState, OpError};
use crate::cluster::jobs::{CancelError, Claim, SharedJob};
use crate::config::SubscribePolicy;
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::jobs::agents::Agent;
use crate::jobs::{
    Job, JobOutput, JobSpec, ListFilter, Registration, SharedOutput, SubscribeError,
};
use crate::session::Session;
use crate::storage::{StorageError, SubscribeAnswer};

/// A submission the gateway answered with `job.accepted` (§7.1).
pub struct Accepted {
    pub job_id: JobId,
    /// The session that submitted the job (an idempotent repeat answers
    /// for the original one).
    pub session_id: SessionId,
    pub trace_id: String,
    pub payload: Value,
    /// False for an idempotent repeat of an earlier submission (§7.2).
    pub fresh: bool,
}

/// Why a submission was refused.
#[derive(Debug)]
pub enum SubmitError {
    /// The idempotency key names a job with other parameters (§7.2).
    ConflictingKey,
    SessionFull,
    PrincipalBusy,
    Storage(StorageError),
}

/// What any node can say about a job.
pub struct JobView {
    pub job_id: JobId,
    pub principal: Principal,
    pub session_id: SessionId,
    pub trace_id: String,
    /// The descriptor (§6.6).
    pub descriptor: Value,
    /// The terminal event's payload, once the job ended.
    pub terminal: Option<Value>,
}

impl JobView {
    fn of_local(job: &Job) -> JobView {
        JobView {
            job_id: job.spec.id.clone(),
            principal: job.spec.principal.clone(),
            session_id: job.spec.session_id.clone(),
            trace_id: job.spec.trace_id.clone(),
            descriptor: job.descriptor(),
            terminal: job.snapshot().terminal_payload,
        }
    }

    fn of_shared(job: SharedJob) -> JobView {
        JobView {
            job_id: job.job_id,
            principal: job.principal,
            session_id: job.session_id,
            trace_id: job.trace_id,
            descriptor: job.descriptor,
            terminal: job.terminal,
        }
    }
}

impl AppState {
    /// Whether `principal` may observe `job` (§6.6, §14): its submitter
    /// always; others only when the deployment broadened the policy.
    pub fn may_observe(&self, principal: &Principal, job: &Job) -> bool {
        &job.spec.principal == principal
            || self.config.subscribe_policy == SubscribePolicy::AnyPrincipal
    }

    /// Whether a submission with this key repeats an earlier one this
    /// process knows (a repeat is answered whatever the budgets). In
    /// cluster mode the shared claim decides, in [`AppState::submit_job`].
    pub fn repeats_known_key(&self, principal: &Principal, key: Option<&str>) -> bool {
        self.cluster.is_none() && key.is_some_and(|key| self.jobs.has_key(principal, key))
    }

    /// Registers and starts a job (or finds its idempotent original, §7.2).
    pub async fn submit_job(
        &self,
        spec: JobSpec,
        session: &Arc<Session>,
        agent: Agent,
    ) -> Result<Accepted, SubmitError> {
        let Some(node) = &self.cluster else {
            let job = Job::new(
                spec,
                session.clone(),
                JobOutput::Local(self.log.clone()),
                self.store.clone(),
                self.metrics.clone(),
            );
            return match self.register(job)? {
                (job, true) => {
                    // Durable before the client hears "accepted".
                    if job.persist().wait().await.is_err() {
                        job.abandon();
                        return Err(SubmitError::Storage(StorageError::WriterStopped));
                    }
                    crate::jobs::runner::start(job.clone(), agent);
                    Ok(accepted(&job, true))
                }
                (job, false) => Ok(accepted(&job, false)),
            };
        };
        if let Some(key) = &spec.idempotency_key {
            let claim = node
                .claim_idempotency(
                    &spec.principal,
                    key,
                    &spec.session_id,
                    &spec.id,
                    &spec.fingerprint,
                )
                .await
                .map_err(SubmitError::Storage)?;
            match claim {
                Claim::Fresh => {}
                Claim::Conflict => return Err(SubmitError::ConflictingKey),
                Claim::Existing(job) => {
                    return Ok(Accepted {
                        job_id: job.job_id,
                        session_id: job.session_id,
                        trace_id: job.trace_id,
                        payload: job.accepted,
                        fresh: false,
                    })
                }
            }
        }
        let (output, events) = SharedOutput::channel();
        let job = Job::new(
            spec,
            session.clone(),
            JobOutput::Shared(output),
            self.store.clone(),
            self.metrics.clone(),
        );
        let (job, fresh) = self.register(job)?;
        if !fresh {
            return Ok(accepted(&job, false));
        }
        if let Err(error) = node.start_job(job.clone(), events, agent).await {
            // Never started: it must not count against the caps.
            job.abandon();
            return Err(SubmitError::Storage(error));
        }
        Ok(accepted(&job, true))
    }

    /// The job in this process's registry under the caps; true when new.
    fn register(&self, job: Job) -> Result<(Arc<Job>, bool), SubmitError> {
        match self.jobs.register(
            job,
            self.config.max_jobs_per_session,
            self.config.max_running_jobs_per_principal,
        ) {
            Registration::Accepted(job) => Ok((job, true)),
            Registration::Repeated(job) => Ok((job, false)),
            Registration::ConflictingKey => Err(SubmitError::ConflictingKey),
            Registration::SessionFull => Err(SubmitError::SessionFull),
            Registration::PrincipalBusy => Err(SubmitError::PrincipalBusy),
        }
    }

    /// A job `principal` may observe; `None` for any other (their existence
    /// does not leak, §6.6).
    pub async fn job_view(
        &self,
        principal: &Principal,
        job_id: &JobId,
    ) -> Result<Option<JobView>, OpError> {
        let Some(node) = &self.cluster else {
            return Ok(self
                .jobs
                .get(job_id)
                .filter(|job| self.may_observe(principal, job))
                .map(|job| JobView::of_local(&job)));
        };
        match node.job(principal, job_id).await {
            Ok(job) => Ok(Some(JobView::of_shared(job))),
            Err(StorageError::NotFound) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// One page of the jobs `principal` may observe, in submission order
    /// after `cursor` (§6.6): descriptors and the next page's cursor.
    pub async fn list_jobs(
        &self,
        principal: &Principal,
        filter: &ListFilter,
        cursor: u64,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<u64>), OpError> {
        let Some(node) = &self.cluster else {
            let page = self.jobs.list(
                |job| self.may_observe(principal, job),
                filter,
                cursor,
                limit,
            );
            let jobs = page.jobs.iter().map(|job| job.descriptor()).collect();
            return Ok((jobs, page.next_cursor));
        };
        let (jobs, next) = node.list_jobs(principal, filter, cursor, limit).await?;
        Ok((jobs.into_iter().map(|job| job.descriptor).collect(), next))
    }

    /// `job.cancel` (§7.4) from `session`: only the submitting session may
    /// cancel, and only a job that has not ended. The terminal goes through
    /// the log.
    pub async fn cancel_job(
        &self,
        principal: &Principal,
        session: &Session,
        job_id: &JobId,
    ) -> Result<JobView, CancelError> {
        if let Some(node) = &self.cluster {
            return Ok(JobView::of_shared(
                node.cancel(principal, &session.id, job_id).await?,
            ));
        }
        let job = self
            .jobs
            .get(job_id)
            .filter(|job| self.may_observe(principal, job))
            .ok_or(CancelError::Storage(StorageError::NotFound))?;
        if job.spec.session_id != session.id {
            return Err(CancelError::NotSubmitter);
        }
        job.cancel()
            .map_err(|finished| CancelError::Finished(finished.0))?;
        Ok(JobView::of_local(&job))
    }
}

/// A subscription made (§7.6): the job and where its events start.
pub struct SubscribedView {
    pub job: JobView,
    pub subscribed_from: EventSeq,
    pub replayed: bool,
}

/// Why a subscription was refused.
#[derive(Debug)]
pub enum SubscribeFailure {
    /// No job the principal may observe has that id (§6.6: the same answer
    /// whether it exists or not).
    NotVisible,
    /// The history asked for is no longer retained.
    HistoryEvicted,
    Storage(StorageError),
}

impl AppState {
    /// `job.subscribe` (§7.6): with `history`, the job's retained events
    /// after `from_event_seq` (default: the oldest retained) come first.
    pub async fn subscribe_job(
        &self,
        principal: &Principal,
        session: &Arc<Session>,
        job_id: &JobId,
        history: bool,
        from_event_seq: Option<EventSeq>,
    ) -> Result<SubscribedView, SubscribeFailure> {
        let Some(node) = &self.cluster else {
            return self
                .subscribe_local(principal, session, job_id, history, from_event_seq)
                .await;
        };
        let history = history.then_some(from_event_seq);
        let (job, answer) = match node
            .subscribe(principal, &session.id, job_id, history)
            .await
        {
            Ok(found) => found,
            Err(StorageError::NotFound) => return Err(SubscribeFailure::NotVisible),
            Err(error) => return Err(SubscribeFailure::Storage(error)),
        };
        match answer {
            SubscribeAnswer::Subscribed {
                subscribed_from,
                replayed,
            } => Ok(SubscribedView {
                job: JobView::of_shared(job),
                subscribed_from,
                replayed,
            }),
            SubscribeAnswer::HistoryEvicted => Err(SubscribeFailure::HistoryEvicted),
            SubscribeAnswer::NotRunning | SubscribeAnswer::Unavailable => {
                Err(SubscribeFailure::Storage(StorageError::Unavailable(
                    "the job's node could not add the subscription".into(),
                )))
            }
        }
    }

    async fn subscribe_local(
        &self,
        principal: &Principal,
        session: &Arc<Session>,
        job_id: &JobId,
        history: bool,
        from_event_seq: Option<EventSeq>,
    ) -> Result<SubscribedView, SubscribeFailure> {
        let job = self
            .jobs
            .get(job_id)
            .filter(|job| self.may_observe(principal, job))
            .ok_or(SubscribeFailure::NotVisible)?;
        let history_after = match (history, from_event_seq) {
            (false, _) => None,
            (true, Some(from)) => Some(from),
            (true, None) => Some(
                self.log
                    .bounds(&job.spec.session_id)
                    .map(|bounds| bounds.floor)
                    .unwrap_or(0),
            ),
        };
        let subscribed =
            job.subscribe(session.clone(), history_after)
                .map_err(|error| match error {
                    SubscribeError::HistoryEvicted { .. } => SubscribeFailure::HistoryEvicted,
                })?;
        if job.spec.session_id != session.id && session.add_subscription(job_id) {
            self.persist_session(session)
                .await
                .map_err(|_| SubscribeFailure::Storage(StorageError::WriterStopped))?;
        }
        Ok(SubscribedView {
            job: JobView::of_local(&job),
            subscribed_from: subscribed.subscribed_from,
            replayed: subscribed.replayed,
        })
    }

    /// `job.unsubscribe`: false when the session was not subscribed.
    pub async fn unsubscribe_job(
        &self,
        session: &Session,
        job_id: &JobId,
    ) -> Result<bool, OpError> {
        if let Some(node) = &self.cluster {
            return Ok(node.unsubscribe(&session.id, job_id).await?);
        }
        if !session.remove_subscription(job_id) {
            return Ok(false);
        }
        if let Some(job) = self.jobs.get(job_id) {
            job.unsubscribe(&session.id);
        }
        self.persist_session(session).await?;
        Ok(true)
    }

    /// The jobs a session is subscribed to.
    pub async fn session_subscriptions(&self, session: &Session) -> Result<Vec<JobId>, OpError> {
        match &self.cluster {
            Some(node) => Ok(node.subscriptions(&session.id).await?),
            None => Ok(session.subscriptions()),
        }
    }
}

fn accepted(job: &Job, fresh: bool) -> Accepted {
    Accepted {
        job_id: job.spec.id.clone(),
        session_id: job.spec.session_id.clone(),
        trace_id: job.spec.trace_id.clone(),
        payload: job.accepted_payload.clone(),
        fresh,
    }
}
