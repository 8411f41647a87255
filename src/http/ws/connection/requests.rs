//! The requests a client sends on an open session and the reply to each:
//! `job.submit`, `job.cancel`, `session.ack`, `session.ping`/`session.pong`,
//! `session.list_jobs`, `job.subscribe` and `job.unsubscribe`, with their
//! payloads. `session.bye` and `session.close`, which end the connection,
//! are handled in `connection.rs` before a request gets here.

use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::Connection;
use crate::http::error::ApiError;
use crate::http::job_ops::{accept_job, cancel_in_session, checked_trace_id, JobSubmitPayload};
use crate::http::session_ops::{
    acknowledge, list_page, subscribe_session, unsubscribe_session, SubscribePayload,
};
use crate::http::ws::frames::{self, Inbound};
use crate::ids::{EventSeq, JobId};
use crate::jobs::ListFilter;
use crate::protocol::{now_rfc3339, parse_utc_timestamp, Envelope, JobStatus};

/// The longest page of `session.jobs`.
const MAX_LIST_LIMIT: usize = 1000;

#[derive(Deserialize)]
struct AckRequest {
    last_processed_seq: EventSeq,
}

#[derive(Deserialize, Default)]
struct PingRequest {
    #[serde(default)]
    nonce: Option<String>,
}

#[derive(Deserialize)]
struct CancelRequest {
    #[serde(default)]
    job_id: Option<String>,
}

#[derive(Deserialize)]
struct UnsubscribeRequest {
    job_id: String,
}

#[derive(Deserialize, Default)]
struct ListRequest {
    #[serde(default)]
    filter: Option<ListFilterRequest>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Deserialize, Default)]
struct ListFilterRequest {
    #[serde(default)]
    status: Option<Vec<String>>,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    created_after: Option<String>,
}

impl Connection<'_> {
    /// The reply to a request, if it has one.
    pub(super) async fn answer(&mut self, inbound: &Inbound) -> Result<Option<Message>, ApiError> {
        let session_id = &self.session.id;
        let request_id = inbound.id.as_deref();
        match inbound.message_type.as_str() {
            "job.submit" => {
                let submit: JobSubmitPayload = frames::payload(inbound)?;
                let trace_id = checked_trace_id(inbound.trace_id.clone())?;
                let job = accept_job(self.state, &self.session, submit, trace_id).await?;
                // Queued before this loop reads the log again, so it reaches
                // the client before any event of the job.
                let mut payload = job.payload.clone();
                payload["request_id"] = json!(request_id);
                let mut envelope = Envelope::new("job.accepted", &job.session_id, &payload);
                envelope.job_id = Some(&job.job_id);
                envelope.trace_id = Some(&job.trace_id);
                Ok(Some(frames::control(&envelope)))
            }
            "job.cancel" => {
                let request: CancelRequest = frames::payload(inbound)?;
                let job_id =
                    inbound.job_id.clone().or(request.job_id).ok_or_else(|| {
                        ApiError::InvalidRequest("job.cancel needs a job_id".into())
                    })?;
                let job = cancel_in_session(
                    self.state,
                    &self.caller,
                    &self.session,
                    &JobId::from_client(&job_id),
                )
                .await?;
                let payload = json!({ "job_id": job.job_id });
                let mut envelope = Envelope::new("job.cancelled", session_id, &payload);
                envelope.job_id = Some(&job.job_id);
                Ok(Some(frames::control(&envelope)))
            }
            "session.ack" => {
                let ack: AckRequest = frames::payload(inbound)?;
                acknowledge(self.state, &self.session, ack.last_processed_seq).await?;
                Ok(None)
            }
            "session.ping" => {
                let ping: PingRequest = frames::payload(inbound)?;
                self.session.heard_from_client();
                let payload = json!({ "ping_nonce": ping.nonce, "received_at": now_rfc3339() });
                Ok(Some(frames::control(&Envelope::new(
                    "session.pong",
                    session_id,
                    &payload,
                ))))
            }
            "session.pong" => {
                self.session.heard_from_client();
                Ok(None)
            }
            "session.list_jobs" => {
                if !self.session.has_feature("list_jobs") {
                    return Err(ApiError::InvalidRequest(
                        "feature \"list_jobs\" was not negotiated for this session (§6.2)".into(),
                    ));
                }
                let request: ListRequest = frames::payload(inbound)?;
                let (filter, limit, cursor) = list_parameters(request)?;
                let mut payload =
                    list_page(self.state, &self.caller, &filter, limit, cursor).await?;
                payload["request_id"] = json!(request_id);
                Ok(Some(frames::control(&Envelope::new(
                    "session.jobs",
                    session_id,
                    &payload,
                ))))
            }
            "job.subscribe" => {
                let request: SubscribePayload = frames::payload(inbound)?;
                let (job, mut payload) =
                    subscribe_session(self.state, &self.caller, &self.session, request).await?;
                payload["request_id"] = json!(request_id);
                let mut envelope = Envelope::new("job.subscribed", session_id, &payload);
                envelope.job_id = Some(&job.job_id);
                envelope.trace_id = Some(&job.trace_id);
                Ok(Some(frames::control(&envelope)))
            }
            "job.unsubscribe" => {
                let request: UnsubscribeRequest = frames::payload(inbound)?;
                let job_id = JobId::from_client(&request.job_id);
                unsubscribe_session(self.state, &self.session, &job_id).await?;
                let payload = json!({ "job_id": job_id });
                Ok(Some(frames::control(&Envelope::new(
                    "job.unsubscribed",
                    session_id,
                    &payload,
                ))))
            }
            "session.hello" => Err(ApiError::InvalidRequest(
                "this connection already has a session".into(),
            )),
            other => Err(ApiError::InvalidRequest(format!(
                "unknown message type {other:?}"
            ))),
        }
    }
}

/// `session.list_jobs` payload (§6.6) -> filter, page size, cursor.
fn list_parameters(request: ListRequest) -> Result<(ListFilter, usize, u64), ApiError> {
    let mut filter = ListFilter::default();
    let wanted = request.filter.unwrap_or_default();
    for name in wanted.status.unwrap_or_default() {
        let status = JobStatus::parse(&name)
            .ok_or_else(|| ApiError::InvalidRequest(format!("unknown job status {name:?}")))?;
        filter.statuses.push(status);
    }
    filter.agent = wanted.agent;
    if let Some(text) = wanted.created_after {
        filter.created_after = Some(parse_utc_timestamp(&text).ok_or_else(|| {
            ApiError::InvalidRequest(
                "created_after must be an RFC 3339 UTC time ending in Z".into(),
            )
        })?);
    }
    let limit = match request.limit {
        None => 100,
        Some(limit) if (1..=MAX_LIST_LIMIT).contains(&limit) => limit,
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "limit must be 1..={MAX_LIST_LIMIT}"
            )))
        }
    };
    let cursor = match request.cursor {
        None => 0,
        Some(text) => text
            .strip_prefix('c')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                ApiError::InvalidRequest("cursor is not one this gateway issued".into())
            })?,
    };
    Ok((filter, limit, cursor))
}
