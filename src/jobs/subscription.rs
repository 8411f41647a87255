//! §7.6 subscriptions: another session joins a job's audience, with the
//! job's retained history re-stamped into its log first, under the job's
//! lock, so history and live meet with no gap or duplicate.

use std::sync::Arc;

use super::{Job, JobOutput, JobState};
use crate::event_log::{EventDraft, EventLogError, ReadLimit};
use crate::ids::{EventSeq, SessionId};
use crate::session::Session;

/// Whether a subscription's history after `after` lost events of this job:
/// the origin log's floor passed `after`, and the job had an event at or
/// below the floor. Events of other jobs below the floor do not count
/// (§7.6: `from_event_seq: 0` works as long as this job's events remain).
fn history_lost(after: EventSeq, floor: EventSeq, state: &JobState) -> bool {
    after < floor && state.first_event_seq.is_some_and(|first| first <= floor)
}

/// Why a subscription could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// History was asked from a point the submitter's log no longer holds.
    HistoryEvicted { floor: EventSeq },
}

/// What a subscription delivered (§7.6 `subscribed_from`, `replayed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscribed {
    pub subscribed_from: EventSeq,
    pub replayed: bool,
}

impl Job {
    /// §7.6: adds `subscriber` to this job's audience. With `history_after`,
    /// the job's retained events with origin `seq > history_after` are first
    /// re-stamped into the subscriber's log; both steps happen under the job
    /// lock, so history and live meet with no gap or duplicate.
    pub fn subscribe(
        &self,
        subscriber: Arc<Session>,
        history_after: Option<EventSeq>,
    ) -> Result<Subscribed, SubscribeError> {
        let mut state = self.state();
        let subscribed_from = state.last_event_seq;
        let already = subscriber.id == self.spec.session_id
            || state.subscribers.iter().any(|s| s.id == subscriber.id);
        if already {
            return Ok(Subscribed {
                subscribed_from,
                replayed: false,
            });
        }
        let mut replayed = false;
        if let Some(after) = history_after {
            let drafts = self.history_after(after, &state)?;
            replayed = !drafts.is_empty();
            if let JobOutput::Local(log) = &self.output {
                for draft in &drafts {
                    let _ = log.append(&subscriber.id, draft);
                }
            }
        }
        if !state.status.is_terminal() {
            state.subscribers.push(subscriber);
            let _ = self.persist_locked(&state);
        }
        Ok(Subscribed {
            subscribed_from,
            replayed,
        })
    }

    /// Retained events of this job in the submitter's log after `after`.
    fn history_after(
        &self,
        after: EventSeq,
        state: &JobState,
    ) -> Result<Vec<EventDraft>, SubscribeError> {
        let origin = &self.spec.session_id;
        // Subscriptions are not offered in cluster mode (`RUNTIME_FEATURES`).
        let JobOutput::Local(log) = &self.output else {
            return Err(SubscribeError::HistoryEvicted {
                floor: EventSeq::MAX,
            });
        };
        let Ok(bounds) = log.bounds(origin) else {
            return Err(SubscribeError::HistoryEvicted {
                floor: EventSeq::MAX,
            });
        };
        if history_lost(after, bounds.floor, state) {
            return Err(SubscribeError::HistoryEvicted {
                floor: bounds.floor,
            });
        }
        let limit = ReadLimit {
            max_entries: 4096,
            max_bytes: 4 * 1024 * 1024,
        };
        let mut drafts = Vec::new();
        // Below the floor only other jobs' events were evicted; start there.
        let mut cursor = after.max(bounds.floor).min(bounds.newest);
        loop {
            let batch = match log.read_after(origin, cursor, limit) {
                Ok(batch) => batch,
                Err(EventLogError::CursorEvicted { floor }) => {
                    return Err(SubscribeError::HistoryEvicted { floor })
                }
                Err(_) => break,
            };
            let Some(last) = batch.last() else {
                break;
            };
            cursor = last.seq;
            drafts.extend(
                batch
                    .iter()
                    .filter(|entry| entry.job_id == self.spec.id)
                    .filter_map(|entry| {
                        let draft = entry.to_draft();
                        if draft.is_none() {
                            // Cannot happen for what the edge accepts
                            // (crate::json); say so loudly if it does.
                            tracing::error!(
                                job = %self.spec.id,
                                seq = entry.seq,
                                "a stored event cannot be re-read; it is left out of the history"
                            );
                        }
                        draft
                    }),
            );
        }
        Ok(drafts)
    }

    /// Stops delivering this job's events to `subscriber`.
    pub fn unsubscribe(&self, subscriber: &SessionId) -> bool {
        let mut state = self.state();
        let before = state.subscribers.len();
        state
            .subscribers
            .retain(|session| &session.id != subscriber);
        let changed = state.subscribers.len() != before;
        if changed {
            let _ = self.persist_locked(&state);
        }
        changed
    }
}
