//! What a restart must know of a job (the durable store keeps it), as one
//! typed row, and the job rebuilt from it at recovery.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::{Job, JobLimits, JobOutput, JobSpec, JobState};
use crate::event_log::EventLog;
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::metrics::Metrics;
use crate::protocol::{format_rfc3339, parse_utc_timestamp, JobStatus};
use crate::session::Session;
use crate::store::{Durable, Persistence};

/// A job's durable record. Field names are the stored JSON's, so rows
/// written by earlier versions read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    #[serde(default)]
    pub index: u64,
    pub id: String,
    pub session_id: String,
    pub principal: String,
    pub agent: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default = "empty_object")]
    pub lease: Value,
    #[serde(default)]
    pub lease_constraints: Option<Value>,
    #[serde(default)]
    pub lease_expires_at: Option<String>,
    pub budget: BTreeMap<String, f64>,
    #[serde(default)]
    pub max_runtime_sec: Option<u64>,
    #[serde(default)]
    pub trace_id: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub fingerprint: Value,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub limits: LimitsRow,
    pub status: JobStatus,
    /// `null`: no event yet. Missing (rows written before the field
    /// existed): the job's events may start anywhere, so history checks
    /// stay conservative.
    #[serde(default = "unknown_first_event")]
    pub first_event_seq: Option<EventSeq>,
    #[serde(default)]
    pub terminal_payload: Option<Value>,
    #[serde(default)]
    pub budget_remaining: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    pub subscribers: Vec<String>,
}

/// [`JobLimits`] as stored; a missing cap reads as none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsRow {
    #[serde(default = "no_cap")]
    pub max_result_chunk_bytes: u64,
    #[serde(default = "no_cap")]
    pub max_result_bytes: u64,
    #[serde(default = "no_cap")]
    pub back_pressure_lag_events: u64,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

fn unknown_first_event() -> Option<EventSeq> {
    Some(1)
}

fn no_cap() -> u64 {
    u64::MAX
}

impl Job {
    /// Writes the job's record to the store (a no-op in memory).
    pub fn persist(&self) -> Durable {
        let state = self.state();
        self.persist_locked(&state)
    }

    pub(super) fn persist_locked(&self, state: &JobState) -> Durable {
        let spec = &self.spec;
        let row = JobRow {
            index: self.index,
            id: spec.id.as_str().to_owned(),
            session_id: spec.session_id.as_str().to_owned(),
            principal: spec.principal.as_str().to_owned(),
            agent: spec.agent.clone(),
            input: spec.input.clone(),
            lease: spec.lease.clone(),
            lease_constraints: spec.lease_constraints.clone(),
            lease_expires_at: spec.lease_expires_at.map(format_rfc3339),
            budget: spec.budget.clone(),
            max_runtime_sec: spec.max_runtime.map(|runtime| runtime.as_secs()),
            trace_id: spec.trace_id.clone(),
            created_at: spec.created_at.clone(),
            fingerprint: spec.fingerprint.clone(),
            idempotency_key: spec.idempotency_key.clone(),
            limits: LimitsRow {
                max_result_chunk_bytes: spec.limits.max_result_chunk_bytes,
                max_result_bytes: spec.limits.max_result_bytes,
                back_pressure_lag_events: spec.limits.back_pressure_lag_events,
            },
            status: state.status,
            first_event_seq: state.first_event_seq,
            terminal_payload: state.terminal_payload.clone(),
            budget_remaining: Some(state.budget_remaining.clone()),
            subscribers: state
                .subscribers
                .iter()
                .map(|session| session.id.as_str().to_owned())
                .collect(),
        };
        self.store.save_job(&spec.id, &spec.session_id, &row)
    }

    /// Rebuilds a job from its record (recovery). `session` finds live
    /// sessions by id: the origin (`None` if it is gone) and subscribers.
    /// The job is not running; an unfinished one is ended by the caller.
    pub fn restore(
        row: &JobRow,
        session: impl Fn(&SessionId) -> Option<Arc<Session>>,
        log: Arc<dyn EventLog>,
        store: Arc<dyn Persistence>,
        metrics: Arc<Metrics>,
    ) -> Option<Job> {
        let session_id = SessionId::from_client(&row.session_id);
        let origin = session(&session_id)?;
        let spec = JobSpec {
            id: JobId::from_client(&row.id),
            session_id,
            principal: Principal::new(&row.principal),
            agent: row.agent.clone(),
            input: row.input.clone(),
            lease: row.lease.clone(),
            lease_constraints: row.lease_constraints.clone().filter(|v| !v.is_null()),
            lease_expires_at: row
                .lease_expires_at
                .as_deref()
                .and_then(parse_utc_timestamp),
            budget: row.budget.clone(),
            max_runtime: row.max_runtime_sec.map(Duration::from_secs),
            trace_id: row.trace_id.clone(),
            created_at_time: parse_utc_timestamp(&row.created_at)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            created_at: row.created_at.clone(),
            fingerprint: row.fingerprint.clone(),
            limits: JobLimits {
                max_result_chunk_bytes: row.limits.max_result_chunk_bytes,
                max_result_bytes: row.limits.max_result_bytes,
                back_pressure_lag_events: row.limits.back_pressure_lag_events,
            },
            idempotency_key: row.idempotency_key.clone(),
        };
        let mut job = Job::new(spec, origin, JobOutput::Local(log), store, metrics);
        job.index = row.index;
        {
            let mut state = job.state();
            state.status = row.status;
            state.first_event_seq = row.first_event_seq;
            state.terminal_payload = row.terminal_payload.clone().filter(|v| !v.is_null());
            if let Some(remaining) = &row.budget_remaining {
                state.budget_remaining = remaining.clone();
            }
            state.subscribers = row
                .subscribers
                .iter()
                .filter_map(|id| session(&SessionId::from_client(id)))
                .collect();
        }
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: &str = r#"{"id":"job_1","session_id":"sess_1","principal":"alice",
        "agent":"echo@1.0.0","budget":{},"limits":{},"status":"running"}"#;

    #[test]
    fn an_older_row_reads_back_with_conservative_defaults() {
        let row: JobRow = serde_json::from_str(ROW).unwrap();
        // Written before first_event_seq existed: history checks must
        // assume the job's events may start anywhere.
        assert_eq!(row.first_event_seq, Some(1));
        assert_eq!(row.limits.max_result_bytes, u64::MAX);
        assert_eq!(row.lease, empty_object());
        let none: JobRow =
            serde_json::from_str(&ROW.replace("\"budget\"", "\"first_event_seq\":null,\"budget\""))
                .unwrap();
        assert_eq!(none.first_event_seq, None);
        let back: JobRow = serde_json::from_value(serde_json::to_value(&none).unwrap()).unwrap();
        assert_eq!(back, none);
    }
}
