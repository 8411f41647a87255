//! The in-memory `Coordinator`: sessions, streams, jobs, leases, the reaper,
//! idempotency keys and subscriptions, in the same shared state as the logs.

use std::future::{ready, Future};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::broadcast;

use super::{LeaseState, MemoryNode};
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::storage::{
    Coordinator, EventKind, GoneReason, IdempotencyClaim, IdempotencyRecord, JobRecord, JobStatus,
    Lease, NodeNotice, ReapedJob, SessionRecord, SessionState, StorageError, StorageResult,
    StreamHolder,
};

impl Coordinator for MemoryNode {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn create_session(
        &self,
        record: &SessionRecord,
    ) -> impl Future<Output = StorageResult<u64>> + Send {
        let mut shared = self.shared();
        let result = if shared.sessions.contains_key(&record.session_id) {
            Err(StorageError::Exists)
        } else {
            shared.sessions.insert(
                record.session_id.clone(),
                SessionState {
                    record: record.clone(),
                    issued: 1,
                    used: 0,
                    closed: false,
                    acked: None,
                    holder: None,
                },
            );
            Ok(1)
        };
        ready(result)
    }

    fn session(
        &self,
        session_id: &SessionId,
    ) -> impl Future<Output = StorageResult<SessionRecord>> + Send {
        let shared = self.shared();
        ready(
            shared
                .sessions
                .get(session_id)
                .map(|state| state.record.clone())
                .ok_or(StorageError::Gone(GoneReason::SessionMissing)),
        )
    }

    fn session_state(
        &self,
        session_id: &SessionId,
    ) -> impl Future<Output = StorageResult<SessionState>> + Send {
        let shared = self.shared();
        ready(
            shared
                .sessions
                .get(session_id)
                .cloned()
                .ok_or(StorageError::Gone(GoneReason::SessionMissing)),
        )
    }

    fn acknowledge(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> impl Future<Output = StorageResult<EventSeq>> + Send {
        let mut shared = self.shared();
        let result = shared
            .sessions
            .get_mut(session_id)
            .ok_or(StorageError::Gone(GoneReason::SessionMissing))
            .map(|state| {
                let acked = state.acked.map_or(up_to, |acked| acked.max(up_to));
                state.acked = Some(acked);
                acked
            });
        ready(result)
    }

    fn resume(
        &self,
        session_id: &SessionId,
        presented: Option<u64>,
    ) -> impl Future<Output = StorageResult<u64>> + Send {
        let mut shared = self.shared();
        let result = shared
            .sessions
            .get_mut(session_id)
            .ok_or(StorageError::Gone(GoneReason::SessionMissing))
            .and_then(|state| {
                consume(state, presented)?;
                state.closed = false;
                state.issued += 1;
                Ok(state.issued)
            });
        ready(result)
    }

    fn attach(
        &self,
        session_id: &SessionId,
        presented: Option<u64>,
        holder: &StreamHolder,
    ) -> impl Future<Output = StorageResult<(u64, Option<StreamHolder>)>> + Send {
        let mut shared = self.shared();
        let result = shared
            .sessions
            .get_mut(session_id)
            .ok_or(StorageError::Gone(GoneReason::SessionMissing))
            .and_then(|state| {
                if state.closed {
                    return Err(StorageError::SessionClosed);
                }
                consume(state, presented)?;
                state.issued += 1;
                let previous = state.holder.replace(holder.clone());
                Ok((state.issued, previous))
            });
        if let Ok((_, Some(previous))) = &result {
            shared.notify(
                &previous.node,
                NodeNotice::StreamReplaced {
                    session_id: session_id.clone(),
                    stream: previous.stream,
                },
            );
        }
        ready(result)
    }

    fn detach(
        &self,
        session_id: &SessionId,
        holder: &StreamHolder,
    ) -> impl Future<Output = StorageResult<bool>> + Send {
        let mut shared = self.shared();
        let result = shared
            .sessions
            .get_mut(session_id)
            .ok_or(StorageError::Gone(GoneReason::SessionMissing))
            .map(|state| {
                let current = state.holder.as_ref() == Some(holder);
                if current {
                    state.holder = None;
                }
                current
            });
        ready(result)
    }

    fn close_session(
        &self,
        session_id: &SessionId,
    ) -> impl Future<Output = StorageResult<Option<StreamHolder>>> + Send {
        let mut shared = self.shared();
        let result = shared
            .sessions
            .get_mut(session_id)
            .ok_or(StorageError::Gone(GoneReason::SessionMissing))
            .map(|state| {
                state.closed = true;
                state.holder.take()
            });
        if let Ok(Some(holder)) = &result {
            shared.notify(
                &holder.node,
                NodeNotice::SessionClosed {
                    session_id: session_id.clone(),
                    stream: holder.stream,
                },
            );
        }
        ready(result)
    }

    fn notices(&self) -> broadcast::Receiver<NodeNotice> {
        self.notices.subscribe()
    }

    fn put_job(&self, record: &JobRecord) -> impl Future<Output = StorageResult<()>> + Send {
        let mut shared = self.shared();
        let key = (record.session_id.clone(), record.job_id.clone());
        let result = match shared.jobs.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => Err(StorageError::Exists),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(record.clone());
                Ok(())
            }
        };
        if result.is_ok() {
            shared.list_counter += 1;
            let position = shared.list_counter;
            let principal = Principal::new(&record.principal);
            shared
                .listed
                .entry(principal)
                .or_default()
                .insert(position, (record.session_id.clone(), record.job_id.clone()));
            shared
                .located
                .insert(record.job_id.clone(), record.session_id.clone());
        }
        ready(result)
    }

    fn locate_job(&self, job_id: &JobId) -> impl Future<Output = StorageResult<SessionId>> + Send {
        let shared = self.shared();
        ready(
            shared
                .located
                .get(job_id)
                .cloned()
                .ok_or(StorageError::NotFound),
        )
    }

    fn list_jobs(
        &self,
        principal: &Principal,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = StorageResult<Vec<(u64, JobRecord)>>> + Send {
        let shared = self.shared();
        let page = shared
            .listed
            .get(principal)
            .map(|listed| {
                listed
                    .range(after.saturating_add(1)..)
                    .filter_map(|(position, key)| Some((*position, shared.jobs.get(key)?.clone())))
                    .take(limit)
                    .collect()
            })
            .unwrap_or_default();
        ready(Ok(page))
    }

    fn job(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
    ) -> impl Future<Output = StorageResult<JobRecord>> + Send {
        let shared = self.shared();
        ready(
            shared
                .jobs
                .get(&(session_id.clone(), job_id.clone()))
                .cloned()
                .ok_or(StorageError::NotFound),
        )
    }

    fn acquire_lease(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
        ttl_ms: u64,
    ) -> impl Future<Output = StorageResult<Lease>> + Send {
        let mut shared = self.shared();
        let key = (session_id.clone(), job_id.clone());
        let now = Instant::now();
        let result = if !shared.jobs.contains_key(&key) {
            Err(StorageError::NotFound)
        } else if shared.leases.get(&key).is_some_and(|l| l.expires > now) {
            Err(StorageError::LeaseHeld)
        } else {
            shared.lease_counter += 1;
            let token = format!("{}:{}", self.node_id, shared.lease_counter);
            shared.leases.insert(
                key.clone(),
                LeaseState {
                    token: token.clone(),
                    expires: now + Duration::from_millis(ttl_ms),
                },
            );
            if let Some(job) = shared.jobs.get_mut(&key) {
                job.owner = Some(self.node_id.clone());
            }
            Ok(Lease {
                session_id: session_id.clone(),
                job_id: job_id.clone(),
                node: self.node_id.clone(),
                token,
            })
        };
        ready(result)
    }

    fn renew_lease(
        &self,
        lease: &Lease,
        ttl_ms: u64,
    ) -> impl Future<Output = StorageResult<bool>> + Send {
        let mut shared = self.shared();
        let key = (lease.session_id.clone(), lease.job_id.clone());
        let result = if shared.lease_valid(lease) {
            if let Some(state) = shared.leases.get_mut(&key) {
                state.expires = Instant::now() + Duration::from_millis(ttl_ms);
            }
            Ok(shared
                .jobs
                .get(&key)
                .is_some_and(|job| job.cancel_requested))
        } else {
            Err(StorageError::Fenced)
        };
        ready(result)
    }

    fn finish_job(
        &self,
        lease: &Lease,
        status: JobStatus,
        terminal: &serde_json::Value,
    ) -> impl Future<Output = StorageResult<()>> + Send {
        let mut shared = self.shared();
        let key = (lease.session_id.clone(), lease.job_id.clone());
        let result = if shared.lease_valid(lease) {
            shared.leases.remove(&key);
            if let Some(job) = shared.jobs.get_mut(&key) {
                job.status = status;
                job.terminal = Some(terminal.clone());
            }
            Ok(())
        } else {
            Err(StorageError::Fenced)
        };
        ready(result)
    }

    fn request_cancel(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
    ) -> impl Future<Output = StorageResult<String>> + Send {
        let mut shared = self.shared();
        let owner = shared
            .jobs
            .get_mut(&(session_id.clone(), job_id.clone()))
            .ok_or(StorageError::NotFound)
            .and_then(|job| {
                job.cancel_requested = true;
                job.owner.clone().ok_or(StorageError::NotFound)
            });
        if let Ok(owner) = &owner {
            shared.notify(
                owner,
                NodeNotice::CancelRequested {
                    session_id: session_id.clone(),
                    job_id: job_id.clone(),
                },
            );
        }
        ready(owner)
    }

    fn reap_expired(
        &self,
        _now_ms: u64,
        limit: usize,
        terminal: &(dyn Fn(&SessionId, &JobId) -> Bytes + Sync),
        terminal_payload: &serde_json::Value,
    ) -> impl Future<Output = StorageResult<Vec<ReapedJob>>> + Send {
        let mut shared = self.shared();
        let now = Instant::now();
        let expired: Vec<(SessionId, JobId)> = shared
            .leases
            .iter()
            .filter(|(_, lease)| lease.expires <= now)
            .map(|(key, _)| key.clone())
            .take(limit)
            .collect();
        let mut reaped = Vec::with_capacity(expired.len());
        for (session_id, job_id) in expired {
            shared.leases.remove(&(session_id.clone(), job_id.clone()));
            let log = shared.logs.get_mut(&session_id);
            if log
                .as_ref()
                .is_some_and(|log| log.terminals.contains_key(&job_id))
            {
                // Its node logged the terminal before the lease lapsed.
                continue;
            }
            let terminal_seq = log.map(|log| {
                let body = terminal(&session_id, &job_id);
                log.store(&job_id, EventKind::Terminal, body)
            });
            if let Some(job) = shared.jobs.get_mut(&(session_id.clone(), job_id.clone())) {
                if job.status == JobStatus::Running {
                    job.status = JobStatus::Lost;
                }
                if terminal_seq.is_some() {
                    job.terminal = Some(terminal_payload.clone());
                }
            }
            reaped.push(ReapedJob {
                session_id,
                job_id,
                terminal_seq,
            });
        }
        ready(Ok(reaped))
    }

    fn claim_idempotency(
        &self,
        principal: &Principal,
        key: &str,
        record: &IdempotencyRecord,
        ttl_ms: u64,
    ) -> impl Future<Output = StorageResult<IdempotencyClaim>> + Send {
        let mut shared = self.shared();
        let now = Instant::now();
        let map_key = (principal.clone(), key.to_owned());
        let claim = match shared.idempotency.get(&map_key) {
            Some((existing, expires)) if *expires > now => {
                IdempotencyClaim::Existing(existing.clone())
            }
            _ => {
                shared.idempotency.insert(
                    map_key,
                    (record.clone(), now + Duration::from_millis(ttl_ms)),
                );
                IdempotencyClaim::Claimed
            }
        };
        ready(Ok(claim))
    }

    fn subscribe(
        &self,
        subscriber: &SessionId,
        owner: &SessionId,
        job_id: &JobId,
    ) -> impl Future<Output = StorageResult<()>> + Send {
        let mut shared = self.shared();
        let result = if shared.jobs.contains_key(&(owner.clone(), job_id.clone())) {
            shared
                .subscribers
                .entry((owner.clone(), job_id.clone()))
                .or_default()
                .insert(subscriber.clone());
            Ok(())
        } else {
            Err(StorageError::NotFound)
        };
        ready(result)
    }

    fn subscribers(
        &self,
        owner: &SessionId,
        job_id: &JobId,
    ) -> impl Future<Output = StorageResult<Vec<SessionId>>> + Send {
        let shared = self.shared();
        ready(Ok(shared
            .subscribers
            .get(&(owner.clone(), job_id.clone()))
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()))
    }
}

fn consume(state: &mut SessionState, presented: Option<u64>) -> StorageResult<()> {
    let Some(generation) = presented else {
        return Ok(());
    };
    if generation < state.used || generation > state.issued {
        return Err(StorageError::GenerationSuperseded);
    }
    state.used = generation;
    Ok(())
}
