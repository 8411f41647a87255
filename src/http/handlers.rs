//! One function per route. Handlers turn requests into calls on sessions,
//! jobs and the log, and results into envelopes; they hold no lock across an
//! `.await`.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::body::{json_response, read_json, ResponseBody};
use super::browser::resume_cookie;
use super::credentials::{
    authenticate_for_session, bearer_token, is_resume_token, note_principal, now_unix, token_error,
    Caller, Query,
};
use super::error::{cursor_error, ApiError};
use super::sse::{encode_retry, encode_unsequenced_event, jittered, open_stream, StreamPlan};
use crate::auth::ResumeClaims;
use crate::cluster::jobs::CancelError;
use crate::event_log::EventLogError;
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::jobs::agents::AgentResolveError;
use crate::jobs::{JobLimits, JobSpec};
use crate::metrics::Transport;
use crate::protocol::{format_rfc3339, now_rfc3339, parse_utc_timestamp, Envelope};
use crate::session::{Session, SessionError, StreamId, Welcome};
use crate::state::{Accepted, AppState, JobView, SubmitError};
use crate::storage::StorageError;

/// The longest accepted `max_runtime_sec`: one week.
const MAX_RUNTIME_SEC: u64 = 7 * 24 * 3600;

pub fn healthz() -> Response<ResponseBody> {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

/// `GET /v1/agents`: the inventory (§7.5).
pub fn list_agents(state: &AppState, parts: &Parts) -> Result<Response<ResponseBody>, ApiError> {
    authenticate_api_token(state, parts, None)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "agents": state.agents.inventory() }),
    ))
}

/// Accepts a bare payload or a whole envelope of the expected `type` (§5);
/// returns the payload and the envelope's `trace_id`, if any.
fn unwrap_envelope(body: Value, expected_type: &str) -> Result<(Value, Option<String>), ApiError> {
    let Value::Object(mut object) = body else {
        if body.is_null() {
            return Ok((Value::Null, None));
        }
        return Err(ApiError::InvalidRequest(
            "request body must be a JSON object".into(),
        ));
    };
    let is_envelope = object.contains_key("payload") && object.contains_key("type");
    if !is_envelope {
        return Ok((Value::Object(object), None));
    }
    if object.get("type").and_then(Value::as_str) != Some(expected_type) {
        return Err(ApiError::InvalidRequest(format!(
            "envelope type must be {expected_type:?}"
        )));
    }
    let trace_id = object
        .get("trace_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((object.remove("payload").unwrap_or(Value::Null), trace_id))
}

/// Reads a request body as the payload of an envelope of `expected_type`
/// (or the bare payload), bounded by the configured body limit. Returns the
/// payload and the envelope's `trace_id`, if any.
pub(super) async fn read_payload<T: for<'de> Deserialize<'de>>(
    state: &AppState,
    body: Incoming,
    expected_type: &str,
) -> Result<(T, Option<String>), ApiError> {
    let body = read_json(
        body,
        state.config.max_body_bytes,
        state.config.connections.body_timeout,
        &state.body_budget,
    )
    .await?;
    let (payload, trace_id) = unwrap_envelope(body, expected_type)?;
    let parsed = parse_payload(payload, &format!("{expected_type} payload"))?;
    Ok((parsed, trace_id))
}

fn parse_payload<T: for<'de> Deserialize<'de>>(payload: Value, what: &str) -> Result<T, ApiError> {
    // serde's derived structs also accept an array, read by position; a
    // payload is an object (§5) or absent, nothing else.
    let payload = match payload {
        Value::Null => Value::Object(Map::new()),
        Value::Object(object) => Value::Object(object),
        _ => {
            return Err(ApiError::InvalidRequest(format!(
                "invalid {what}: expected a JSON object"
            )))
        }
    };
    serde_json::from_value(payload)
        .map_err(|error| ApiError::InvalidRequest(format!("invalid {what}: {error}")))
}

/// The principal of an api token in `Authorization`, or in the hello's
/// `payload.auth.token` (§6.1).
pub(super) fn authenticate_api_token(
    state: &AppState,
    parts: &Parts,
    payload_token: Option<&str>,
) -> Result<Principal, ApiError> {
    let token = match bearer_token(parts)? {
        Some(token) => token,
        None => payload_token.ok_or_else(|| {
            ApiError::Unauthenticated("missing api token (Authorization: Bearer)".into())
        })?,
    };
    if is_resume_token(token) {
        return Err(ApiError::Unauthenticated(
            "an api token is required here, not a resume token".into(),
        ));
    }
    let principal = state
        .api_tokens
        .authenticate(token)
        .ok_or_else(|| ApiError::Unauthenticated("unknown api token".into()))?;
    note_principal(&principal);
    Ok(principal)
}

#[derive(Deserialize, Default)]
struct HelloPayload {
    #[serde(default, deserialize_with = "crate::json::optional_object")]
    auth: Option<HelloAuth>,
    #[serde(default, deserialize_with = "crate::json::optional_object")]
    capabilities: Option<HelloCapabilities>,
}

#[derive(Deserialize)]
struct HelloAuth {
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct HelloCapabilities {
    #[serde(default)]
    encodings: Option<Vec<String>>,
    #[serde(default)]
    features: Option<Vec<String>>,
}

/// The `session.welcome` envelope (§6.2) with a freshly signed token.
pub(super) fn welcome(
    state: &AppState,
    session: &Session,
    generation: u64,
    newest: EventSeq,
) -> (Value, String) {
    let claims = ResumeClaims {
        session_id: session.id.clone(),
        principal: session.principal.clone(),
        generation,
        expires_at_unix: now_unix() + state.config.token_ttl.as_secs(),
    };
    let token = state.token_keys.sign(&claims);
    let payload = json!({
        "runtime": { "name": "arcp-gateway", "version": env!("CARGO_PKG_VERSION") },
        "session_id": session.id,
        "accepted_at": now_rfc3339(),
        "resume_token": token,
        "resume_window_sec": state.config.resume_window.as_secs(),
        "heartbeat_interval_sec": state.config.heartbeat_interval.as_secs(),
        "capabilities": {
            "encodings": ["json"],
            "features": session.features,
            "agents": state.agents.inventory(),
        },
        "last_event_seq": newest,
    });
    let envelope = Envelope::new("session.welcome", &session.id, &payload).to_value();
    (envelope, token)
}

fn with_cookie<B>(
    mut response: Response<B>,
    state: &AppState,
    parts: &Parts,
    session_id: &SessionId,
    token: &str,
) -> Response<B> {
    let cookie = resume_cookie(&state.config, parts, session_id, token);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// `POST /v1/sessions`: `session.hello` -> `session.welcome` (§6.2).
pub async fn create_session(
    state: &AppState,
    parts: &Parts,
    body: Incoming,
) -> Result<Response<ResponseBody>, ApiError> {
    // A token in `Authorization` is checked before the body is read, so an
    // unauthenticated client cannot make the gateway wait for a body; only a
    // hello carrying its token in the payload (§6.1) needs the body first.
    let header_principal = match bearer_token(parts)? {
        Some(_) => Some(authenticate_api_token(state, parts, None)?),
        None => None,
    };
    let (hello, _): (HelloPayload, _) = read_payload(state, body, "session.hello").await?;
    let principal = match header_principal {
        Some(principal) => principal,
        None => {
            let payload_token = hello.auth.as_ref().and_then(|auth| auth.token.as_deref());
            authenticate_api_token(state, parts, payload_token)?
        }
    };
    let (session, issued) =
        open_session(state, principal, hello.capabilities.unwrap_or_default()).await?;
    let (envelope, token) = welcome(state, &session, issued.generation, 0);
    let response = json_response(StatusCode::CREATED, &envelope);
    Ok(with_cookie(response, state, parts, &session.id, &token))
}

/// A new session for an authenticated principal (§6.2), whatever the
/// binding: negotiates features, enforces the per-principal cap, creates
/// its log and issues its first generation.
pub(super) async fn open_session(
    state: &AppState,
    principal: Principal,
    capabilities: HelloCapabilities,
) -> Result<(Arc<Session>, Welcome), ApiError> {
    if let Some(encodings) = &capabilities.encodings {
        if !encodings.iter().any(|encoding| encoding == "json") {
            return Err(ApiError::InvalidRequest(
                "this runtime only speaks the json encoding".into(),
            ));
        }
    }
    // §6.2: the effective set is the intersection. A client that lists no
    // features (curl) gets every runtime feature.
    let features: Vec<String> = state
        .runtime_features()
        .iter()
        .filter(|feature| {
            capabilities
                .features
                .as_ref()
                .is_none_or(|asked| asked.iter().any(|f| f == *feature))
        })
        .map(|feature| (*feature).to_owned())
        .collect();

    if state.sessions.count_open_for(&principal) >= state.config.max_sessions_per_principal {
        return Err(ApiError::TooManySessions {
            limit: state.config.max_sessions_per_principal,
        });
    }
    let (session, issued) = state.create_session(principal, features).await?;
    state.metrics.session_created();
    tracing::info!(session = %session.id, principal = %session.principal, "session created");
    Ok((session, issued))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumePayload {
    #[serde(default)]
    resume_token: Option<String>,
    #[serde(default)]
    last_event_seq: Option<EventSeq>,
}

/// Looks a session up for a caller; a session of another principal is
/// refused, and a signed token for a session that is gone means its window
/// passed.
pub(super) async fn session_for(
    state: &AppState,
    caller: &Caller,
    session_id: &SessionId,
    reattach: bool,
) -> Result<Arc<Session>, ApiError> {
    let Some(session) = state.find_session(session_id).await? else {
        if caller.resume.is_some() {
            return Err(ApiError::ResumeWindowExpired(
                "the session's resume window has passed".into(),
            ));
        }
        return Err(ApiError::SessionNotFound);
    };
    if session.principal != caller.principal {
        return Err(ApiError::PermissionDenied(
            "the session belongs to another principal".into(),
        ));
    }
    if let Some(claims) = &caller.resume {
        session.check_generation(claims.generation, state.config.resume_window, reattach)?;
    } else if session.is_closed() {
        return Err(SessionError::Closed.into());
    } else if session.window_expired(state.config.resume_window, std::time::Instant::now()) {
        return Err(ApiError::ResumeWindowExpired(
            "the session's resume window has passed".into(),
        ));
    }
    Ok(session)
}

/// Checks a client's cursor against the session's log.
pub(super) async fn check_cursor(
    state: &AppState,
    session_id: &SessionId,
    cursor: EventSeq,
) -> Result<EventSeq, ApiError> {
    let bounds = state.log_bounds(session_id).await?;
    if cursor < bounds.floor {
        return Err(cursor_error(EventLogError::CursorEvicted {
            floor: bounds.floor,
        }));
    }
    if cursor > bounds.newest {
        return Err(cursor_error(EventLogError::CursorAhead {
            newest: bounds.newest,
        }));
    }
    Ok(bounds.newest)
}

/// `POST /v1/sessions/resume`: `session.resume` (§6.3) without a stream.
pub async fn resume_session(
    state: &AppState,
    parts: &Parts,
    body: Incoming,
) -> Result<Response<ResponseBody>, ApiError> {
    let bearer = bearer_token(parts)?;
    // An api token in `Authorization` is checked before the body is read.
    let api_principal = match bearer {
        Some(token) if !is_resume_token(token) => Some(
            state
                .api_tokens
                .authenticate(token)
                .ok_or_else(|| ApiError::Unauthenticated("unknown api token".into()))?,
        ),
        _ => None,
    };
    let (resume, _): (ResumePayload, _) = read_payload(state, body, "session.resume").await?;
    let presented_token = match (&resume.resume_token, bearer) {
        (Some(token), _) => token.as_str(),
        (None, Some(token)) if is_resume_token(token) => token,
        _ => {
            return Err(ApiError::InvalidRequest(
                "session.resume needs a resume_token (in the body or as the bearer token)".into(),
            ))
        }
    };
    let claims = state
        .token_keys
        .verify(presented_token, now_unix())
        .map_err(token_error)?;
    if let Some(principal) = api_principal {
        if principal != claims.principal {
            return Err(ApiError::PermissionDenied(
                "the resume token belongs to a different principal than the api token".into(),
            ));
        }
    }
    note_principal(&claims.principal);
    let session_id = claims.session_id.clone();
    let caller = Caller {
        principal: claims.principal.clone(),
        resume: Some(claims),
    };
    let session = session_for(state, &caller, &session_id, true).await?;
    let newest = match resume.last_event_seq {
        Some(cursor) => check_cursor(state, &session_id, cursor).await?,
        None => state.log_bounds(&session_id).await?.newest,
    };
    let presented = caller.resume.as_ref().map(|claims| claims.generation);
    let generation = state.resume_session(&session, presented).await?.generation;
    let (envelope, token) = welcome(state, &session, generation, newest);
    tracing::info!(session = %session.id, "session resumed");
    Ok(with_cookie(
        json_response(StatusCode::OK, &envelope),
        state,
        parts,
        &session.id,
        &token,
    ))
}

/// The client's cursor: `Last-Event-ID`, else `last_event_seq`, else none
/// (replay everything retained).
fn requested_cursor(parts: &Parts, query: &Query) -> Result<Option<EventSeq>, ApiError> {
    let header = parts.headers.get("last-event-id").map(|value| {
        value
            .to_str()
            .map_err(|_| ApiError::InvalidRequest("Last-Event-ID is not valid text".into()))
            .map(str::to_owned)
    });
    let text = match header {
        Some(Ok(text)) if !text.is_empty() => Some(text),
        Some(Err(error)) => return Err(error),
        _ => query.last_event_seq.clone(),
    };
    let Some(text) = text else {
        return Ok(None);
    };
    crate::ids::parse_cursor(&text).map(Some).ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "event cursor {text:?} is not an event_seq: 1 to {} ASCII digits",
            crate::ids::MAX_CURSOR_DIGITS
        ))
    })
}

/// `GET /v1/sessions/{id}/events` under hyper: the session's SSE stream as
/// a response body.
pub async fn session_events(
    state: &Arc<AppState>,
    parts: &Parts,
    session_id: &SessionId,
) -> Result<Response<ResponseBody>, ApiError> {
    let opened = open_event_stream(state, parts, session_id).await?;
    let body = http_body_util::BodyExt::boxed(open_stream(opened.plan).await);
    Ok(opened.head.map(|()| body))
}

/// An attached stream, not yet written: its response head and what it
/// will carry.
pub struct OpenedStream {
    pub head: Response<()>,
    pub plan: StreamPlan,
}

/// `GET /v1/sessions/{id}/events`: authenticates, checks the cursor,
/// attaches the stream to the session (superseding any other, §6.3) and
/// prepares the welcome. Shared by hyper and the HTTP/1.1 fast path.
pub async fn open_event_stream(
    state: &Arc<AppState>,
    parts: &Parts,
    session_id: &SessionId,
) -> Result<OpenedStream, ApiError> {
    let query = Query::parse(parts.uri.query());
    let caller = authenticate_for_session(state, parts, &query, session_id)?;
    let requested = requested_cursor(parts, &query)?;
    let attached = attach_stream(state, &caller, session_id, requested).await?;
    let envelope_bytes = serde_json::to_vec(&attached.welcome).unwrap_or_default();
    let mut prelude = encode_retry(state.config.retry).to_vec();
    prelude.extend_from_slice(&encode_unsequenced_event(
        "session.welcome",
        &envelope_bytes,
    ));
    let token = attached.resume_token;
    let plan = StreamPlan {
        log: state.log_reader(session_id),
        session: attached.session,
        stream_id: attached.stream_id,
        cursor: attached.cursor,
        prelude: prelude.into(),
        heartbeat: state.config.heartbeat_interval,
        shutdown: state.shutdown.clone(),
        max_duration: state.config.max_stream_duration.map(jittered),
        retry: state.config.retry,
        metrics: state.metrics.clone(),
        transport: match parts.version {
            hyper::Version::HTTP_2 => Transport::Http2,
            _ => Transport::Http1,
        },
    };
    let mut head = Response::new(());
    let headers = head.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let head = with_cookie(head, state, parts, session_id, &token);
    Ok(OpenedStream { head, plan })
}

/// A stream attached to its session, with the welcome it starts with.
pub(super) struct AttachedStream {
    pub session: Arc<Session>,
    pub stream_id: StreamId,
    /// Replay starts after this sequence number.
    pub cursor: EventSeq,
    /// The `session.welcome` envelope, with a freshly rotated token.
    pub welcome: Value,
    pub resume_token: String,
}

/// Attaches a stream to a session for an authenticated caller, whatever the
/// binding (SSE or WebSocket): the session must be the caller's and usable,
/// a resume token's generation is consumed and rotated (§6.3), and the
/// cursor must lie within what the log still holds (`None`: replay all that
/// is retained). Any stream attached before is superseded.
pub(super) async fn attach_stream(
    state: &AppState,
    caller: &Caller,
    session_id: &SessionId,
    requested: Option<EventSeq>,
) -> Result<AttachedStream, ApiError> {
    let session = session_for(state, caller, session_id, true).await?;
    let cursor = match requested {
        Some(cursor) => {
            check_cursor(state, session_id, cursor).await?;
            cursor
        }
        None => state.log_bounds(session_id).await?.floor,
    };
    let presented = caller.resume.as_ref().map(|claims| claims.generation);
    let (stream_id, welcome_issued) = state.attach_stream(&session, presented).await?;
    let newest = state
        .log_bounds(session_id)
        .await
        .map(|b| b.newest)
        .unwrap_or(cursor);
    let (envelope, token) = welcome(state, &session, welcome_issued.generation, newest);
    tracing::info!(session = %session.id, cursor, "stream attached");
    Ok(AttachedStream {
        session,
        stream_id,
        cursor,
        welcome: envelope,
        resume_token: token,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobSubmitPayload {
    agent: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    lease_request: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "crate::json::optional_object")]
    lease_constraints: Option<LeaseConstraints>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    max_runtime_sec: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseConstraints {
    #[serde(default)]
    expires_at: Option<String>,
}

/// A lease namespace: dot-separated lowercase words (§9.2).
fn is_valid_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= 64
        && namespace.split('.').all(|word| {
            let mut bytes = word.bytes();
            bytes.next().is_some_and(|b| b.is_ascii_lowercase())
                && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// `amount ::= currency ":" decimal` (§9.6).
fn is_valid_budget_amount(amount: &str) -> bool {
    let Some((currency, decimal)) = amount.split_once(':') else {
        return false;
    };
    let (whole, fraction) = match decimal.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (decimal, None),
    };
    let digits = |text: &str| {
        !text.is_empty() && text.len() <= 18 && text.bytes().all(|b| b.is_ascii_digit())
    };
    !currency.is_empty()
        && currency.len() <= 16
        && currency
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && digits(whole)
        && fraction.is_none_or(digits)
}

/// Validates `lease_request` (§9.2) and returns it as the effective lease.
fn effective_lease(request: Option<Map<String, Value>>) -> Result<Value, ApiError> {
    let Some(request) = request else {
        return Ok(json!({}));
    };
    for (namespace, patterns) in &request {
        if !is_valid_namespace(namespace) {
            return Err(ApiError::InvalidRequest(format!(
                "lease namespace {namespace:?} is not valid"
            )));
        }
        let Some(patterns) = patterns.as_array() else {
            return Err(ApiError::InvalidRequest(format!(
                "lease_request.{namespace} must be an array of strings"
            )));
        };
        for pattern in patterns {
            let Some(pattern) = pattern
                .as_str()
                .filter(|p| !p.is_empty() && p.len() <= 1024)
            else {
                return Err(ApiError::InvalidRequest(format!(
                    "lease_request.{namespace} must hold non-empty strings"
                )));
            };
            if namespace == "cost.budget" && !is_valid_budget_amount(pattern) {
                return Err(ApiError::InvalidRequest(format!(
                    "cost.budget amount {pattern:?} must look like CURRENCY:DECIMAL"
                )));
            }
        }
    }
    Ok(Value::Object(request))
}

/// `cost.budget` caps by currency (§9.6); one amount per currency.
fn budget_caps(lease: &Value) -> Result<std::collections::BTreeMap<String, f64>, ApiError> {
    let mut caps = std::collections::BTreeMap::new();
    let Some(amounts) = lease.get("cost.budget").and_then(Value::as_array) else {
        return Ok(caps);
    };
    for amount in amounts.iter().filter_map(Value::as_str) {
        let (currency, decimal) = amount.split_once(':').unwrap_or_default();
        let value: f64 = decimal.parse().map_err(|_| {
            ApiError::InvalidRequest(format!("cost.budget amount {amount:?} is not a decimal"))
        })?;
        if caps.insert(currency.to_owned(), value).is_some() {
            return Err(ApiError::InvalidRequest(format!(
                "cost.budget names {currency} more than once"
            )));
        }
    }
    Ok(caps)
}

/// The trace id from a W3C `traceparent` header (§11), if it is valid.
fn trace_id_from_traceparent(parts: &Parts) -> Option<String> {
    let header = parts.headers.get("traceparent")?.to_str().ok()?;
    let fields: Vec<&str> = header.trim().split('-').collect();
    let [version, trace_id, parent_id, flags] = fields.as_slice() else {
        return None;
    };
    let is_hex = |text: &str, length: usize| {
        text.len() == length
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = is_hex(version, 2)
        && *version != "ff"
        && is_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && is_hex(flags, 2);
    valid.then(|| (*trace_id).to_owned())
}

fn agent_error(error: AgentResolveError) -> ApiError {
    match error {
        AgentResolveError::InvalidName(name) => ApiError::InvalidRequest(format!(
            "agent {name:?} does not match name[@version] (§7.5)"
        )),
        AgentResolveError::NotAvailable(name) => ApiError::AgentNotAvailable(name),
        AgentResolveError::VersionNotAvailable { name, version } => {
            ApiError::AgentVersionNotAvailable(format!("{name}@{version}"))
        }
    }
}

/// `POST /v1/sessions/{id}/jobs`: `job.submit` -> `job.accepted` (§7.1).
pub async fn submit_job(
    state: &AppState,
    parts: &Parts,
    body: Incoming,
    session_id: &SessionId,
) -> Result<Response<ResponseBody>, ApiError> {
    let query = Query::parse(parts.uri.query());
    let caller = authenticate_for_session(state, parts, &query, session_id)?;
    let session = session_for(state, &caller, session_id, false).await?;
    let (submit, envelope_trace_id): (JobSubmitPayload, _) =
        read_payload(state, body, "job.submit").await?;
    let trace_id = match trace_id_from_traceparent(parts) {
        Some(trace_id) => Some(trace_id),
        None => checked_trace_id(envelope_trace_id)?,
    };
    let job = accept_job(state, &session, submit, trace_id).await?;
    // An idempotent repeat answers for the session that submitted the job.
    let mut envelope = Envelope::new("job.accepted", &job.session_id, &job.payload);
    envelope.job_id = Some(&job.job_id);
    envelope.trace_id = Some(&job.trace_id);
    Ok(json_response(StatusCode::ACCEPTED, &envelope))
}

/// An envelope's `trace_id` (§11), which must be a W3C trace id: 32
/// lowercase hex digits, not all zero (the official SDKs refuse any other).
pub(super) fn checked_trace_id(trace_id: Option<String>) -> Result<Option<String>, ApiError> {
    match trace_id {
        Some(text) if !is_w3c_trace_id(&text) => Err(ApiError::InvalidRequest(
            "trace_id must be 32 lowercase hex digits, not all zero (§11)".into(),
        )),
        other => Ok(other),
    }
}

fn is_w3c_trace_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}

/// `job.submit` (§7.1) for a session, whatever the binding: validates the
/// request, registers the job (or finds its idempotent original) and starts
/// it. The caller answers with `job.accepted`.
pub(super) async fn accept_job(
    state: &AppState,
    session: &Arc<Session>,
    submit: JobSubmitPayload,
    trace_id: Option<String>,
) -> Result<Accepted, ApiError> {
    let resolved = state.agents.resolve(&submit.agent).map_err(agent_error)?;
    resolved
        .agent
        .validate_input(&submit.input)
        .map_err(ApiError::InvalidRequest)?;
    let lease = effective_lease(submit.lease_request.clone())?;
    let budget = budget_caps(&lease)?;
    if !budget.is_empty() && !session.has_feature("cost.budget") {
        return Err(ApiError::InvalidRequest(
            "cost.budget was not negotiated for this session (§6.2)".into(),
        ));
    }
    if submit.lease_constraints.is_some() && !session.has_feature("lease_expires_at") {
        return Err(ApiError::InvalidRequest(
            "lease_expires_at was not negotiated for this session (§6.2)".into(),
        ));
    }
    let (lease_constraints, lease_expires_at) = match &submit.lease_constraints {
        None => (None, None),
        Some(constraints) => match &constraints.expires_at {
            None => (Some(json!({})), None),
            Some(text) => {
                let at = parse_utc_timestamp(text).ok_or_else(|| {
                    ApiError::InvalidRequest(
                        "lease_constraints.expires_at must be an RFC 3339 UTC time ending in Z"
                            .into(),
                    )
                })?;
                if at <= OffsetDateTime::now_utc() {
                    return Err(ApiError::InvalidRequest(
                        "lease_constraints.expires_at must be in the future".into(),
                    ));
                }
                (Some(json!({ "expires_at": text })), Some(at))
            }
        },
    };
    let max_runtime = match submit.max_runtime_sec {
        None => None,
        Some(seconds) if (1..=MAX_RUNTIME_SEC).contains(&seconds) => {
            Some(Duration::from_secs(seconds))
        }
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "max_runtime_sec must be 1..={MAX_RUNTIME_SEC}"
            )));
        }
    };
    if let Some(key) = &submit.idempotency_key {
        if key.is_empty() || key.len() > 256 {
            return Err(ApiError::InvalidRequest(
                "idempotency_key must be 1..=256 bytes".into(),
            ));
        }
    }
    let trace_id = trace_id.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let fingerprint = json!({
        "agent": resolved.qualified_name,
        "input": submit.input,
        "lease_request": lease,
        "lease_constraints": lease_constraints,
        "max_runtime_sec": submit.max_runtime_sec,
    });
    let created_at = OffsetDateTime::now_utc();
    let spec = JobSpec {
        id: JobId::generate(),
        session_id: session.id.clone(),
        principal: session.principal.clone(),
        agent: resolved.qualified_name.clone(),
        input: submit.input,
        lease,
        lease_constraints,
        lease_expires_at,
        budget,
        max_runtime,
        trace_id,
        created_at: format_rfc3339(created_at),
        created_at_time: created_at,
        fingerprint,
        idempotency_key: submit.idempotency_key.clone(),
        limits: JobLimits {
            max_result_chunk_bytes: state.config.max_result_chunk_bytes,
            max_result_bytes: state.config.max_result_bytes,
            back_pressure_lag_events: state.config.back_pressure_lag_events,
        },
    };
    // A resubmission with a known key answers with the earlier job (or 409)
    // whatever the budgets: a client retrying a lost 202 must learn of it.
    let principal = session.principal.clone();
    if !state.repeats_known_key(&principal, submit.idempotency_key.as_deref()) {
        admit_retention(state, &principal)?;
    }
    let accepted = state
        .submit_job(spec, session, resolved.agent)
        .await
        .map_err(|error| match error {
            SubmitError::ConflictingKey => ApiError::DuplicateKey,
            SubmitError::SessionFull => ApiError::TooManyJobs {
                limit: state.config.max_jobs_per_session,
            },
            SubmitError::PrincipalBusy => ApiError::TooManyRunningJobs {
                limit: state.config.max_running_jobs_per_principal,
            },
            SubmitError::Storage(error) => error.into(),
        })?;
    if accepted.fresh {
        state.metrics.job_accepted(&resolved.qualified_name);
        tracing::info!(session = %session.id, job = %accepted.job_id, agent = %resolved.qualified_name, "job accepted");
    } else {
        state.metrics.idempotent_hit();
    }
    Ok(accepted)
}

/// Refuses new work while the retained-event budgets are (7/8) used up: the
/// principal's (429, until it acknowledges or closes sessions) or the whole
/// gateway's (503, retryable). Running jobs are not stopped; their sessions
/// evict their own oldest events instead (`event_log::budget`).
fn admit_retention(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let budget = &state.retention;
    if budget.principal_at_high_water(principal) {
        return Err(ApiError::RetainedBytesPerPrincipal {
            limit: budget.per_principal_limit(),
        });
    }
    if budget.global().at_high_water() {
        tracing::warn!(
            used = budget.global().used(),
            limit = budget.global().limit(),
            "job refused: the gateway-wide retained-bytes budget is full"
        );
        return Err(ApiError::RetainedBytesFull);
    }
    Ok(())
}

/// A job the caller's principal may observe; anything else is "not found",
/// so other principals' jobs do not leak (§6.6).
async fn visible_job(
    state: &AppState,
    caller: &Caller,
    job_id: &JobId,
) -> Result<JobView, ApiError> {
    state
        .job_view(&caller.principal, job_id)
        .await?
        .ok_or(ApiError::JobNotFound)
}

/// `GET /v1/sessions/{id}/jobs/{job_id}`.
pub async fn get_job(
    state: &AppState,
    parts: &Parts,
    session_id: &SessionId,
    job_id: &JobId,
) -> Result<Response<ResponseBody>, ApiError> {
    let query = Query::parse(parts.uri.query());
    let caller = authenticate_for_session(state, parts, &query, session_id)?;
    let session = session_for(state, &caller, session_id, false).await?;
    let job = visible_job(state, &caller, job_id).await?;
    let mut payload = job.descriptor;
    payload["submitted_by_this_session"] = json!(job.session_id == session.id);
    payload["terminal"] = job.terminal.unwrap_or(Value::Null);
    let mut envelope = Envelope::new("job.status", &session.id, &payload);
    envelope.job_id = Some(&job.job_id);
    envelope.trace_id = Some(&job.trace_id);
    Ok(json_response(StatusCode::OK, &envelope))
}

/// `POST /v1/sessions/{id}/jobs/{job_id}/cancel`: `job.cancel` (§7.4).
pub async fn cancel_job(
    state: &AppState,
    parts: &Parts,
    session_id: &SessionId,
    job_id: &JobId,
) -> Result<Response<ResponseBody>, ApiError> {
    let query = Query::parse(parts.uri.query());
    let caller = authenticate_for_session(state, parts, &query, session_id)?;
    let session = session_for(state, &caller, session_id, false).await?;
    let job = cancel_in_session(state, &caller, &session, job_id).await?;
    let payload = json!({ "job_id": job.job_id });
    let mut envelope = Envelope::new("job.cancelled", &session.id, &payload);
    envelope.job_id = Some(&job.job_id);
    Ok(json_response(StatusCode::OK, &envelope))
}

/// `job.cancel` (§7.4), whatever the binding: only the submitting session
/// may cancel, and only a job that has not ended. The caller answers with
/// `job.cancelled`; the job's terminal goes through the log.
pub(super) async fn cancel_in_session(
    state: &AppState,
    caller: &Caller,
    session: &Session,
    job_id: &JobId,
) -> Result<JobView, ApiError> {
    let job = state
        .cancel_job(&caller.principal, session, job_id)
        .await
        .map_err(|error| match error {
            CancelError::Storage(StorageError::NotFound) => ApiError::JobNotFound,
            other => other.into(),
        })?;
    tracing::info!(session = %session.id, job = %job.job_id, "job cancelled");
    Ok(job)
}
