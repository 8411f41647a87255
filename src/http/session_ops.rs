//! The rest of the session surface: acknowledgement (§6.5), heartbeats
//! (§6.4), job listing (§6.6), close (§6.7) and subscription (§7.6).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{empty_response, json_response, ResponseBody};
use super::credentials::{authenticate_for_session, Caller, Query};
use super::error::ApiError;
use super::handlers::{read_payload, session_for};
use crate::ids::{EventSeq, JobId, SessionId};
use crate::jobs::ListFilter;
use crate::protocol::{now_rfc3339, parse_utc_timestamp, Envelope, JobStatus};
use crate::session::Session;
use crate::state::{AppState, JobView, SubscribeFailure};

/// The longest page of a job listing.
const MAX_LIST_LIMIT: usize = 1000;
const DEFAULT_LIST_LIMIT: usize = 100;

/// Authenticates the caller and loads the session for a plain request;
/// with `feature`, the session must have negotiated it (§6.2).
async fn caller_and_session(
    state: &AppState,
    parts: &Parts,
    session_id: &SessionId,
    feature: Option<&str>,
) -> Result<(Caller, Arc<Session>), ApiError> {
    let query = Query::parse(parts.uri.query());
    let caller = authenticate_for_session(state, parts, &query, session_id)?;
    let session = session_for(state, &caller, session_id, false).await?;
    if let Some(feature) = feature {
        require_feature(&session, feature)?;
    }
    Ok((caller, session))
}

/// §6.2: a peer must not use a feature outside the negotiated set.
fn require_feature(session: &Session, feature: &str) -> Result<(), ApiError> {
    if session.has_feature(feature) {
        return Ok(());
    }
    Err(ApiError::InvalidRequest(format!(
        "feature {feature:?} was not negotiated for this session (§6.2)"
    )))
}

fn envelope_response(
    status: StatusCode,
    message_type: &str,
    session: &Session,
    payload: &Value,
) -> Response<ResponseBody> {
    json_response(status, &Envelope::new(message_type, &session.id, payload))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckPayload {
    last_processed_seq: EventSeq,
}

/// `POST /v1/sessions/{id}/ack`: `session.ack` (§6.5). Frees retained
/// events up to the acknowledged one; a resume below it then gets 410.
pub async fn ack(
    state: &AppState,
    parts: &Parts,
    body: Incoming,
    session_id: &SessionId,
) -> Result<Response<ResponseBody>, ApiError> {
    let (_, session) = caller_and_session(state, parts, session_id, Some("ack")).await?;
    let (ack, _): (AckPayload, _) = read_payload(state, body, "session.ack").await?;
    let payload = acknowledge(state, &session, ack.last_processed_seq).await?;
    Ok(envelope_response(
        StatusCode::OK,
        "session.acked",
        &session,
        &payload,
    ))
}

/// `session.ack` (§6.5), whatever the binding: records the high-water mark
/// and frees the log up to it. Returns the `session.acked` payload.
pub(super) async fn acknowledge(
    state: &AppState,
    session: &Session,
    last_processed_seq: EventSeq,
) -> Result<Value, ApiError> {
    require_feature(session, "ack")?;
    let bounds = state.log_bounds(&session.id).await?;
    if last_processed_seq > bounds.newest {
        return Err(ApiError::InvalidRequest(format!(
            "last_processed_seq {last_processed_seq} is beyond the newest event_seq ({})",
            bounds.newest
        )));
    }
    let (acked, bounds) = state
        .acknowledge(session, last_processed_seq, bounds.newest)
        .await?;
    Ok(json!({ "last_processed_seq": acked, "floor": bounds.floor, "newest": bounds.newest }))
}

#[derive(Deserialize, Default)]
struct PingPayload {
    #[serde(default)]
    nonce: Option<String>,
}

/// `POST /v1/sessions/{id}/ping`: the client probes; the runtime answers with
/// `session.pong` at once (§6.4).
pub async fn ping(
    state: &AppState,
    parts: &Parts,
    body: Incoming,
    session_id: &SessionId,
) -> Result<Response<ResponseBody>, ApiError> {
    let (_, session) = caller_and_session(state, parts, session_id, Some("heartbeat")).await?;
    let (ping, _): (PingPayload, _) = read_payload(state, body, "session.ping").await?;
    session.heard_from_client();
    let payload = json!({ "ping_nonce": ping.nonce, "received_at": now_rfc3339() });
    Ok(envelope_response(
        StatusCode::OK,
        "session.pong",
        &session,
        &payload,
    ))
}

#[derive(Deserialize)]
struct PongPayload {
    ping_nonce: String,
}

/// `POST /v1/sessions/{id}/pong`: the client answers a `session.ping` the
/// stream carried (§6.4).
pub async fn pong(
    state: &AppState,
    parts: &Parts,
    body: Incoming,
    session_id: &SessionId,
) -> Result<Response<ResponseBody>, ApiError> {
    let (_, session) = caller_and_session(state, parts, session_id, Some("heartbeat")).await?;
    let (pong, _): (PongPayload, _) = read_payload(state, body, "session.pong").await?;
    if pong.ping_nonce.is_empty() || pong.ping_nonce.len() > 128 {
        return Err(ApiError::InvalidRequest(
            "ping_nonce must be 1..=128 bytes".into(),
        ));
    }
    session.heard_from_client();
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// `DELETE /v1/sessions/{id}`: `session.close` -> `session.closed` (§6.7).
/// The stream ends; jobs keep running; a resume token reopens the session
/// until the resume window passes.
pub async fn close_session(
    state: &AppState,
    parts: &Parts,
    session_id: &SessionId,
) -> Result<Response<ResponseBody>, ApiError> {
    let (_, session) = caller_and_session(state, parts, session_id, None).await?;
    state.close_session(&session).await?;
    state.metrics.session_closed_by_client();
    tracing::info!(session = %session.id, "session closed by its client");
    let payload = json!({ "closed_at": now_rfc3339(), "resume_window_sec": state.config.resume_window.as_secs() });
    Ok(envelope_response(
        StatusCode::OK,
        "session.closed",
        &session,
        &payload,
    ))
}

/// The listing's query parameters, decoded (§6.6 `filter`, `limit`, `cursor`).
fn list_parameters(query: Option<&str>) -> Result<(ListFilter, usize, u64), ApiError> {
    let mut filter = ListFilter::default();
    let mut limit = DEFAULT_LIST_LIMIT;
    let mut cursor = 0;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "status" => {
                for name in value.split(',').filter(|name| !name.is_empty()) {
                    let status = JobStatus::parse(name).ok_or_else(|| {
                        ApiError::InvalidRequest(format!("unknown job status {name:?}"))
                    })?;
                    filter.statuses.push(status);
                }
            }
            "agent" => filter.agent = Some(value.into_owned()),
            "created_after" => {
                let at = parse_utc_timestamp(&value).ok_or_else(|| {
                    ApiError::InvalidRequest(
                        "created_after must be an RFC 3339 UTC time ending in Z".into(),
                    )
                })?;
                filter.created_after = Some(at);
            }
            "limit" => {
                limit = crate::ids::parse_cursor(&value)
                    .and_then(|limit| usize::try_from(limit).ok())
                    .filter(|limit| (1..=MAX_LIST_LIMIT).contains(limit))
                    .ok_or_else(|| {
                        ApiError::InvalidRequest(format!("limit must be 1..={MAX_LIST_LIMIT}"))
                    })?;
            }
            "cursor" => {
                cursor = value
                    .strip_prefix("c")
                    .and_then(crate::ids::parse_cursor)
                    .ok_or_else(|| {
                        ApiError::InvalidRequest("cursor is not one this gateway issued".into())
                    })?;
            }
            _ => {}
        }
    }
    Ok((filter, limit, cursor))
}

/// `GET /v1/sessions/{id}/jobs`: `session.list_jobs` -> `session.jobs`
/// (§6.6). Only jobs the principal may observe; never another principal's
/// under the default policy, so their existence does not leak.
pub async fn list_jobs(
    state: &AppState,
    parts: &Parts,
    session_id: &SessionId,
) -> Result<Response<ResponseBody>, ApiError> {
    let (caller, session) = caller_and_session(state, parts, session_id, Some("list_jobs")).await?;
    let (filter, limit, cursor) = list_parameters(parts.uri.query())?;
    let payload = list_page(state, &caller, &filter, limit, cursor).await?;
    Ok(envelope_response(
        StatusCode::OK,
        "session.jobs",
        &session,
        &payload,
    ))
}

/// One page of `session.jobs` (§6.6), whatever the binding: only jobs the
/// caller's principal may observe.
pub(super) async fn list_page(
    state: &AppState,
    caller: &Caller,
    filter: &ListFilter,
    limit: usize,
    cursor: u64,
) -> Result<Value, ApiError> {
    let (jobs, next_cursor) = state
        .list_jobs(&caller.principal, filter, cursor, limit)
        .await?;
    let next_cursor = next_cursor.map(|index| format!("c{index}"));
    Ok(json!({ "jobs": jobs, "next_cursor": next_cursor }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubscribePayload {
    job_id: String,
    #[serde(default)]
    from_event_seq: Option<EventSeq>,
    #[serde(default)]
    history: bool,
}

/// `POST /v1/sessions/{id}/subscriptions`: `job.subscribe` -> `job.subscribed`
/// (§7.6). The job's events enter this session's own sequence. A job the
/// caller may not observe and a job that does not exist get the same 403, so
/// the answer reveals nothing about other principals (§6.6, §14).
pub async fn subscribe(
    state: &AppState,
    parts: &Parts,
    body: Incoming,
    session_id: &SessionId,
) -> Result<Response<ResponseBody>, ApiError> {
    let (caller, session) = caller_and_session(state, parts, session_id, Some("subscribe")).await?;
    let (request, _): (SubscribePayload, _) = read_payload(state, body, "job.subscribe").await?;
    let (job, payload) = subscribe_session(state, &caller, &session, request).await?;
    let mut envelope = Envelope::new("job.subscribed", &session.id, &payload);
    envelope.job_id = Some(&job.job_id);
    envelope.trace_id = Some(&job.trace_id);
    Ok(json_response(StatusCode::OK, &envelope))
}

/// `job.subscribe` (§7.6), whatever the binding. Returns the job and the
/// `job.subscribed` payload.
pub(super) async fn subscribe_session(
    state: &AppState,
    caller: &Caller,
    session: &Arc<Session>,
    request: SubscribePayload,
) -> Result<(JobView, Value), ApiError> {
    require_feature(session, "subscribe")?;
    let job_id = JobId::from_client(&request.job_id);
    let result = state
        .subscribe_job(
            &caller.principal,
            session,
            &job_id,
            request.history,
            request.from_event_seq,
        )
        .await;
    // §14: every subscribe decision is logged for audit.
    let target = match &result {
        Ok(subscribed) => subscribed.job.principal.as_str().to_owned(),
        Err(_) => "-".to_owned(),
    };
    tracing::info!(
        target: "arcp_gateway::audit",
        subscriber_principal = %caller.principal,
        subscriber_session = %session.id,
        job = %job_id,
        target_principal = %target,
        decision = if matches!(result, Err(SubscribeFailure::NotVisible)) { "deny" } else { "allow" },
        policy = ?state.config.subscribe_policy,
        "job.subscribe"
    );
    let subscribed = result.map_err(|failure| match failure {
        SubscribeFailure::NotVisible => {
            ApiError::PermissionDenied("no job this principal may observe has that id".into())
        }
        SubscribeFailure::HistoryEvicted => ApiError::ResumeWindowExpired(
            "the job's history from that event_seq is no longer retained".into(),
        ),
        SubscribeFailure::Storage(error) => error.into(),
    })?;
    let mut payload = subscribed.job.descriptor.clone();
    if let Some(object) = payload.as_object_mut() {
        if let Some(status) = object.remove("status") {
            object.insert("current_status".into(), status);
        }
        object.insert("subscribed_from".into(), json!(subscribed.subscribed_from));
        object.insert("replayed".into(), json!(subscribed.replayed));
    }
    Ok((subscribed.job, payload))
}

/// `DELETE /v1/sessions/{id}/subscriptions/{job_id}`: `job.unsubscribe`.
pub async fn unsubscribe(
    state: &AppState,
    parts: &Parts,
    session_id: &SessionId,
    job_id: &JobId,
) -> Result<Response<ResponseBody>, ApiError> {
    let (_, session) = caller_and_session(state, parts, session_id, Some("subscribe")).await?;
    unsubscribe_session(state, &session, job_id).await?;
    let payload = json!({ "job_id": job_id });
    Ok(envelope_response(
        StatusCode::OK,
        "job.unsubscribed",
        &session,
        &payload,
    ))
}

/// `job.unsubscribe`, whatever the binding.
pub(super) async fn unsubscribe_session(
    state: &AppState,
    session: &Session,
    job_id: &JobId,
) -> Result<(), ApiError> {
    require_feature(session, "subscribe")?;
    if !state.unsubscribe_job(session, job_id).await? {
        return Err(ApiError::JobNotFound);
    }
    Ok(())
}

/// `GET /v1/sessions/{id}`: the session's state, so a browser whose stream
/// closed can ask why (410 `RESUME_WINDOW_EXPIRED`, 401, …) with the same
/// credentials its `EventSource` used, the path-scoped cookie included.
pub async fn session_status(
    state: &AppState,
    parts: &Parts,
    session_id: &SessionId,
) -> Result<Response<ResponseBody>, ApiError> {
    let (_, session) = caller_and_session(state, parts, session_id, None).await?;
    let bounds = state.log_bounds(session_id).await?;
    let payload = json!({
        "principal": session.principal,
        "created_at": session.created_at,
        "features": session.features,
        "floor": bounds.floor,
        "last_event_seq": bounds.newest,
        "acked_through": session.acked_through(),
        "stream_attached": session.stream_attached(),
        "subscriptions": state.session_subscriptions(&session).await?,
    });
    Ok(envelope_response(
        StatusCode::OK,
        "session.status",
        &session,
        &payload,
    ))
}
