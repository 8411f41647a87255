//! One function per route. Handlers turn requests into calls on sessions,
//! jobs and the log, and results into envelopes; they hold no lock across an
//! `.await`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::body::{json_response, read_json, ResponseBody};
use super::browser::resume_cookie;
use super::credentials::{
    authenticate_for_session, bearer_token, is_resume_token, note_principal, now_unix, token_error,
    Caller, Query,
};
use super::error::{cursor_error, ApiError};
use super::sse::{encode_retry, encode_unsequenced_event, jittered, open_stream, StreamPlan};
use crate::auth::ResumeClaims;
use crate::event_log::EventLogError;
use crate::ids::{EventSeq, Principal, SessionId};
use crate::metrics::Transport;
use crate::protocol::{now_rfc3339, Envelope};
use crate::session::{Session, SessionError, StreamId, Welcome};
use crate::state::AppState;

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
