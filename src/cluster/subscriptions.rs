//! `job.subscribe` and `job.unsubscribe` (§7.6) across nodes. A running
//! job's copies are written by its own writer (`writer.rs`), on the node
//! that runs it, so a subscription asked through any node is a request to
//! that node, answered over the nodes' notice channels. A job that has
//! ended has no writer: the asking node copies its history itself.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::jobs::SharedJob;
use super::writer::copies;
use super::{locked, log, ClusterNode};
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::storage::{
    Coordinator, EventStore, NodeNotice, ReadBudget, StorageError, StorageResult, SubscribeAnswer,
};

/// How long a node waits for the job's node to answer a subscription.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);

impl ClusterNode {
    /// Subscribes `subscriber` to a job `principal` may see (§7.6), with
    /// its history when asked: `Some(Some(seq))` after `seq`, `Some(None)`
    /// from the oldest event its session retains.
    pub async fn subscribe(
        &self,
        principal: &Principal,
        subscriber: &SessionId,
        job_id: &JobId,
        history: Option<Option<EventSeq>>,
    ) -> StorageResult<(SharedJob, SubscribeAnswer)> {
        let mut job = self.job(principal, job_id).await?;
        let history_after = match history {
            None => None,
            Some(Some(after)) => Some(after),
            Some(None) => Some(self.storage().bounds(&job.session_id).await?.floor),
        };
        if &job.session_id == subscriber {
            let from = job.descriptor["last_event_seq"].as_u64().unwrap_or(0);
            let answer = SubscribeAnswer::Subscribed {
                subscribed_from: from,
                replayed: false,
            };
            return Ok((job, answer));
        }
        for _ in 0..20 {
            let answer = if job.status.is_terminal() {
                self.copy_finished(&job, subscriber, history_after).await?
            } else {
                self.ask_owner(&job, subscriber, history_after).await?
            };
            if answer != SubscribeAnswer::NotRunning {
                if matches!(answer, SubscribeAnswer::Subscribed { .. }) {
                    self.storage()
                        .set_subscription(subscriber, job_id, true)
                        .await?;
                }
                return Ok((job, answer));
            }
            // It ended between reading its record and asking its node.
            tokio::time::sleep(Duration::from_millis(50)).await;
            job = self.job(principal, job_id).await?;
        }
        Err(StorageError::Unavailable(
            "the job's node did not settle the subscription".into(),
        ))
    }

    /// Asks the node running the job (this one or another).
    async fn ask_owner(
        &self,
        job: &SharedJob,
        subscriber: &SessionId,
        history_after: Option<EventSeq>,
    ) -> StorageResult<SubscribeAnswer> {
        let local = locked(&self.running).get(&job.job_id).cloned();
        if let Some(local) = local {
            let answer = match local
                .shared_output()
                .and_then(|output| output.subscribe(subscriber.clone(), history_after))
            {
                Some(answer) => answer.await.unwrap_or(SubscribeAnswer::NotRunning),
                None => SubscribeAnswer::NotRunning,
            };
            return Ok(answer);
        }
        let Some(owner) = job.owner.clone() else {
            return Ok(SubscribeAnswer::NotRunning);
        };
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (waiter, answer) = tokio::sync::oneshot::channel();
        locked(&self.pending).insert(request, waiter);
        let notice = NodeNotice::SubscribeRequested {
            request,
            reply_node: self.node_id().to_owned(),
            job_id: job.job_id.clone(),
            subscriber: subscriber.clone(),
            history_after,
        };
        self.storage().publish_notice(&owner, &notice).await;
        let answer = tokio::time::timeout(ANSWER_LIMIT, answer).await;
        locked(&self.pending).remove(&request);
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            // A lost node never answers; its reaper ends the job soon.
            _ => Err(StorageError::Unavailable(format!(
                "node {owner} running the job did not answer the subscription"
            ))),
        }
    }

    /// Answers a subscription asked by `reply_node` for a job of this node.
    pub(super) fn answer_subscribe(
        &self,
        request: u64,
        reply_node: String,
        job_id: &JobId,
        subscriber: SessionId,
        history_after: Option<EventSeq>,
    ) {
        let job = locked(&self.running).get(job_id).cloned();
        let answer = job
            .as_ref()
            .and_then(|job| job.shared_output())
            .and_then(|output| output.subscribe(subscriber, history_after));
        let storage = self.storage().clone();
        tokio::spawn(async move {
            let answer = match answer {
                Some(answer) => answer.await.unwrap_or(SubscribeAnswer::NotRunning),
                None => SubscribeAnswer::NotRunning,
            };
            let notice = NodeNotice::SubscribeAnswered { request, answer };
            storage.publish_notice(&reply_node, &notice).await;
        });
    }

    /// A job that has ended: nothing more will be appended, so its history
    /// is copied here (a repeat copies nothing twice: the same indexes).
    async fn copy_finished(
        &self,
        job: &SharedJob,
        subscriber: &SessionId,
        history_after: Option<EventSeq>,
    ) -> StorageResult<SubscribeAnswer> {
        let from = job.descriptor["last_event_seq"].as_u64().unwrap_or(0);
        let Some(after) = history_after else {
            return Ok(SubscribeAnswer::Subscribed {
                subscribed_from: from,
                replayed: false,
            });
        };
        let storage = self.storage();
        let bounds = storage.bounds(&job.session_id).await?;
        // Without the job's first event at hand, history below the floor
        // counts as lost (conservative, never a silent gap).
        if after < bounds.floor {
            return Ok(SubscribeAnswer::HistoryEvicted);
        }
        let bodies = self
            .job_bodies(&job.session_id, &job.job_id, after.min(bounds.newest), 0)
            .await?;
        let appends = copies(subscriber, &job.job_id, &bodies);
        let replayed = !appends.is_empty();
        if replayed {
            match storage.append_batch(&appends).await {
                Ok(_) | Err(StorageError::JobClosed { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(SubscribeAnswer::Subscribed {
            subscribed_from: from,
            replayed,
        })
    }

    /// `job.unsubscribe`: false when the session was not subscribed.
    pub async fn unsubscribe(&self, subscriber: &SessionId, job_id: &JobId) -> StorageResult<bool> {
        if !self
            .storage()
            .set_subscription(subscriber, job_id, false)
            .await?
        {
            return Ok(false);
        }
        let Ok(owner_session) = self.storage().locate_job(job_id).await else {
            return Ok(true);
        };
        self.storage()
            .remove_job_subscriber(&owner_session, job_id, subscriber)
            .await?;
        let record = self.storage().job(&owner_session, job_id).await?;
        let local = locked(&self.running).get(job_id).cloned();
        if let Some(output) = local.as_ref().and_then(|job| job.shared_output()) {
            output.unsubscribe(subscriber.clone());
        } else if let Some(owner) = record.owner {
            let notice = NodeNotice::Unsubscribed {
                job_id: job_id.clone(),
                subscriber: subscriber.clone(),
            };
            self.storage().publish_notice(&owner, &notice).await;
        }
        Ok(true)
    }

    /// The jobs a session is subscribed to.
    pub async fn subscriptions(&self, session_id: &SessionId) -> StorageResult<Vec<JobId>> {
        self.storage().subscriptions(session_id).await
    }

    /// After the reaper ended a lost job in its own session: every
    /// subscriber gets what the lost node had not copied to it yet (events
    /// above the newest index it holds: the node may have died between an
    /// event and its copies), then the same terminal (§7.6), exactly once.
    pub(super) async fn copy_reaped_terminal(&self, owner: &SessionId, job_id: &JobId) {
        let Ok(subscribers) = self.storage().subscribers(owner, job_id).await else {
            return;
        };
        for subscriber in subscribers {
            let Ok(copied) = self.storage().job_append_index(&subscriber, job_id).await else {
                continue;
            };
            let Ok(missing) = self.job_bodies(owner, job_id, 0, copied).await else {
                continue;
            };
            let appends = copies(&subscriber, job_id, &missing);
            if let Err(error) = self.storage().append_batch(&appends).await {
                tracing::warn!(session = %subscriber, job = %job_id, %error, "copying a lost job's end to a subscriber failed");
            }
        }
    }

    /// The stored bodies of `job_id`'s events in `session_id` after `after`
    /// whose append index is above `above_index` (a reaper's terminal, index
    /// 0, always counts).
    async fn job_bodies(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
        after: EventSeq,
        above_index: u64,
    ) -> StorageResult<Vec<Bytes>> {
        let storage = self.storage();
        let floor = storage.bounds(session_id).await?.floor;
        let mut cursor = after.max(floor);
        let mut bodies = Vec::new();
        let budget = ReadBudget {
            max_events: 1024,
            max_bytes: 4 << 20,
        };
        loop {
            let batch = storage.read_after(session_id, cursor, budget).await?;
            let Some(last) = batch.last().map(|event| event.seq) else {
                return Ok(bodies);
            };
            cursor = last;
            bodies.extend(
                batch
                    .into_iter()
                    .filter(|event| &event.job_id == job_id)
                    .filter(|event| {
                        log::decode_body(&event.body)
                            .is_some_and(|body| body.index == 0 || body.index > above_index)
                    })
                    .map(|event| event.body),
            );
        }
    }
}
