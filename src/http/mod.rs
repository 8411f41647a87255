//! The HTTP binding of ARCP: routing, handlers, bodies and SSE encoding.
//! Only this module and `server` know hyper.

pub mod assets;
pub mod body;
pub mod browser;
pub mod credentials;
pub mod detect;
pub mod direct;
pub mod error;
pub mod h1_stream;
pub mod handlers;
pub mod job_ops;
pub mod observe;
pub mod router;
pub mod session_ops;
pub mod sse;
pub mod ws;

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Request, Response};
use tracing::Instrument;

use self::body::{error_response, ResponseBody};
use self::error::ApiError;
use self::router::{match_route, RouteId, RouteMatch};
use crate::ids::{JobId, SessionId};
use crate::state::AppState;

/// Answers one request. Never fails: every error becomes an ARCP error body.
pub async fn handle(state: Arc<AppState>, request: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let span = observe::request_span(&parts);
    async {
        let (route, response) = route_and_answer(&state, &parts, body).await;
        observe::answered(&state, route, response.status(), started);
        response
    }
    .instrument(span)
    .await
}

/// Answers a request on the `--metrics-listen` listener: `GET /metrics`
/// (or `<base>/metrics`) without credentials, and 404 for anything else.
pub async fn handle_metrics_only(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let path = request.uri().path();
    let is_metrics =
        path == "/metrics" || browser::strip_base_path(&state.config, path) == Some("/metrics");
    match (request.method(), is_metrics) {
        (&hyper::Method::GET, true) => observe::exposition(&state),
        (_, true) => error_response(&ApiError::MethodNotAllowed {
            allowed: vec!["GET"],
        }),
        (_, false) => error_response(&ApiError::RouteNotFound),
    }
}

/// Routes and answers a request; also names the route for its metrics.
async fn route_and_answer(
    state: &Arc<AppState>,
    parts: &Parts,
    body: Incoming,
) -> (&'static str, Response<ResponseBody>) {
    let full_path = parts.uri.path();
    // `<base>` without its slash would break the console's relative URLs.
    if !state.config.base_path.is_empty() && full_path == state.config.base_path {
        let mut response = body::empty_response(hyper::StatusCode::PERMANENT_REDIRECT);
        if let Ok(location) = hyper::header::HeaderValue::from_str(&format!("{full_path}/")) {
            response
                .headers_mut()
                .insert(hyper::header::LOCATION, location);
        }
        return (observe::REDIRECT, response);
    }
    let (route, result) = match browser::preflight(&state.config, parts) {
        Some(answer) => (observe::PREFLIGHT, answer),
        None => match browser::strip_base_path(&state.config, full_path) {
            None => (observe::UNMATCHED, Err(ApiError::RouteNotFound)),
            Some(path) => match match_route(&parts.method, path) {
                RouteMatch::NotFound => (observe::UNMATCHED, Err(ApiError::RouteNotFound)),
                RouteMatch::MethodNotAllowed { allowed } => (
                    observe::UNMATCHED,
                    Err(ApiError::MethodNotAllowed { allowed }),
                ),
                RouteMatch::Found { id, params } => {
                    observe::note_route(id, &params);
                    let result = dispatch(state, id, &params, parts, body).await;
                    if observe::is_resume(id, parts) {
                        state.metrics.resume(observe::resume_outcome(&result));
                    }
                    (id.name(), result)
                }
            },
        },
    };
    let mut response = match result {
        Ok(response) => response,
        Err(error) => refused(state, parts, &error),
    };
    browser::decorate(&state.config, parts, &mut response);
    (route, response)
}

/// The error response for a refused request, logged at debug level.
fn refused(state: &AppState, parts: &Parts, error: &ApiError) -> Response<ResponseBody> {
    observe::refused(&state.metrics, error);
    tracing::debug!(method = %parts.method, path = %parts.uri.path(), code = error.code().as_str(), "request refused");
    error_response(error)
}

/// What the HTTP/1.1 fast path ([`h1_stream`]) writes for
/// `GET /v1/sessions/{id}/events`.
pub enum EventStreamAnswer {
    /// The stream is attached; write its head, then the stream.
    Stream(handlers::OpenedStream),
    /// The same error response [`handle`] would have given.
    Refused(Response<ResponseBody>),
}

/// Answers an event-stream request exactly as [`handle`] would, without
/// boxing the stream into a hyper body.
pub async fn answer_event_stream(
    state: &Arc<AppState>,
    parts: &Parts,
    session_id: &SessionId,
) -> EventStreamAnswer {
    let started = Instant::now();
    let span = observe::request_span(parts);
    async {
        observe::note_route(RouteId::SessionEvents, &[session_id.as_str()]);
        let opened = handlers::open_event_stream(state, parts, session_id).await;
        if observe::is_resume(RouteId::SessionEvents, parts) {
            state.metrics.resume(observe::resume_outcome(&opened));
        }
        let answer = match opened {
            Ok(mut opened) => {
                browser::decorate(&state.config, parts, &mut opened.head);
                EventStreamAnswer::Stream(opened)
            }
            Err(error) => {
                let mut response = refused(state, parts, &error);
                browser::decorate(&state.config, parts, &mut response);
                EventStreamAnswer::Refused(response)
            }
        };
        let status = match &answer {
            EventStreamAnswer::Stream(opened) => opened.head.status(),
            EventStreamAnswer::Refused(response) => response.status(),
        };
        observe::answered(state, RouteId::SessionEvents.name(), status, started);
        answer
    }
    .instrument(span)
    .await
}

/// The one routing `match`: a route id and its captured path segments to a
/// handler.
async fn dispatch(
    state: &Arc<AppState>,
    route: RouteId,
    params: &[&str],
    parts: &Parts,
    body: Incoming,
) -> Result<Response<ResponseBody>, ApiError> {
    let session_id = || SessionId::from_client(params[0]);
    let job_id = || JobId::from_client(params[1]);
    match route {
        RouteId::Healthz => Ok(handlers::healthz()),
        RouteId::Console => Ok(assets::serve(assets::Asset::ConsolePage)),
        RouteId::ConsoleScript => Ok(assets::serve(assets::Asset::ConsoleScript)),
        RouteId::ConsoleStyle => Ok(assets::serve(assets::Asset::ConsoleStyle)),
        RouteId::ClientScript => Ok(assets::serve(assets::Asset::ClientScript)),
        RouteId::SessionStatus => session_ops::session_status(state, parts, &session_id()).await,
        RouteId::ListAgents => handlers::list_agents(state, parts),
        RouteId::CreateSession => handlers::create_session(state, parts, body).await,
        RouteId::ResumeSession => handlers::resume_session(state, parts, body).await,
        RouteId::CloseSession => session_ops::close_session(state, parts, &session_id()).await,
        RouteId::SessionEvents => handlers::session_events(state, parts, &session_id()).await,
        RouteId::Ack => session_ops::ack(state, parts, body, &session_id()).await,
        RouteId::Ping => session_ops::ping(state, parts, body, &session_id()).await,
        RouteId::Pong => session_ops::pong(state, parts, body, &session_id()).await,
        RouteId::ListJobs => session_ops::list_jobs(state, parts, &session_id()).await,
        RouteId::SubmitJob => job_ops::submit_job(state, parts, body, &session_id()).await,
        RouteId::GetJob => job_ops::get_job(state, parts, &session_id(), &job_id()).await,
        RouteId::CancelJob => job_ops::cancel_job(state, parts, &session_id(), &job_id()).await,
        RouteId::Subscribe => session_ops::subscribe(state, parts, body, &session_id()).await,
        RouteId::Unsubscribe => {
            session_ops::unsubscribe(state, parts, &session_id(), &job_id()).await
        }
        RouteId::Metrics => observe::metrics(state, parts),
        RouteId::ArcpWebSocket => ws::upgrade(state, parts),
    }
}
