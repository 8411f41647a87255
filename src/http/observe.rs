//! What every request leaves behind for operators: its log span (route,
//! session, job, principal), its access line, its metrics, and the
//! `/metrics` endpoint itself.
//!
//! Nothing here records a query string, a header or a body: credentials
//! travel in those, and no token may reach a log line.

use std::time::Instant;

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};

use super::body::{full, ResponseBody};
use super::credentials::{bearer_token, carries_resume_token, is_resume_token, note_principal};
use super::error::ApiError;
use super::router::RouteId;
use crate::metrics::{LimitRefusal, Metrics, ResumeOutcome};
use crate::state::AppState;

/// The `route` label of a redirect of the bare base path.
pub const REDIRECT: &str = "redirect";
/// The `route` label of a CORS preflight.
pub const PREFLIGHT: &str = "preflight";
/// The `route` label of a request no route matched (404, 405).
pub const UNMATCHED: &str = "unmatched";

/// Longest id recorded on a span: ids are client-supplied path segments.
const MAX_LOGGED_ID: usize = 128;

/// The span every log line of a request is written in. Its fields are
/// filled in as they become known.
pub fn request_span(parts: &Parts) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %parts.method,
        route = tracing::field::Empty,
        session = tracing::field::Empty,
        job = tracing::field::Empty,
        principal = tracing::field::Empty,
    )
}

/// Records the matched route and the session and job ids of its path.
pub fn note_route(route: RouteId, params: &[&str]) {
    let span = tracing::Span::current();
    span.record("route", route.name());
    if let Some(session) = params.first() {
        span.record("session", bounded(session));
    }
    if let Some(job) = params.get(1) {
        span.record("job", bounded(job));
    }
}

fn bounded(id: &str) -> &str {
    match id.char_indices().nth(MAX_LOGGED_ID) {
        Some((end, _)) => &id[..end],
        None => id,
    }
}

/// Counts and logs an answered request. The access line is at debug level
/// under `arcp_gateway::access`.
pub fn answered(state: &AppState, route: &'static str, status: StatusCode, started: Instant) {
    let elapsed = started.elapsed();
    state.metrics.request(route, status.as_u16(), elapsed);
    tracing::debug!(
        target: "arcp_gateway::access",
        route,
        status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request answered"
    );
}

/// Whether a request is a resume (§6.3): `POST /v1/sessions/resume`, or a
/// stream opened with a resume token.
pub fn is_resume(route: RouteId, parts: &Parts) -> bool {
    match route {
        RouteId::ResumeSession => true,
        RouteId::SessionEvents => carries_resume_token(parts),
        _ => false,
    }
}

/// The outcome of a resume, from its answer. The messages matched here are
/// the ones `error.rs` and `credentials.rs` write; a unit test below builds
/// each from its source, so a changed message fails it.
pub fn resume_outcome<T>(result: &Result<T, ApiError>) -> ResumeOutcome {
    let Err(error) = result else {
        return ResumeOutcome::Ok;
    };
    match error {
        ApiError::Unauthenticated(message) if message.contains("superseded") => {
            ResumeOutcome::Superseded
        }
        ApiError::Unauthenticated(message) if message.starts_with("resume token") => {
            ResumeOutcome::BadSignature
        }
        ApiError::PermissionDenied(_) => ResumeOutcome::WrongPrincipal,
        ApiError::ResumeWindowExpired(message) if message.contains("closed") => {
            ResumeOutcome::Closed
        }
        ApiError::ResumeWindowExpired(message) if message.contains("no longer retained") => {
            ResumeOutcome::Evicted
        }
        ApiError::ResumeWindowExpired(_) => ResumeOutcome::Expired,
        _ => ResumeOutcome::Other,
    }
}

/// Counts refusals by a configured limit.
pub fn refused(metrics: &Metrics, error: &ApiError) {
    let limit = match error {
        ApiError::TooManySessions { .. } => LimitRefusal::SessionsPerPrincipal,
        ApiError::TooManyJobs { .. } => LimitRefusal::JobsPerSession,
        ApiError::BodyTooLarge { .. } => LimitRefusal::BodyBytes,
        _ => return,
    };
    metrics.limit_refused(limit);
}

/// `GET /metrics` on the main listener: any configured api token may read
/// it (the exposition holds aggregates only, no per-principal label).
pub fn metrics(state: &AppState, parts: &Parts) -> Result<Response<ResponseBody>, ApiError> {
    let token = bearer_token(parts)?
        .filter(|token| !is_resume_token(token))
        .ok_or_else(|| {
            ApiError::Unauthenticated("/metrics needs an api token (Authorization: Bearer)".into())
        })?;
    let principal = state
        .api_tokens
        .authenticate(token)
        .ok_or_else(|| ApiError::Unauthenticated("unknown api token".into()))?;
    note_principal(&principal);
    Ok(exposition(state))
}

/// The exposition as a response: what `--metrics-listen` serves without
/// credentials.
pub fn exposition(state: &AppState) -> Response<ResponseBody> {
    let mut response = Response::new(full(state.render_metrics()));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ResumeTokenError;
    use crate::event_log::EventLogError;
    use crate::http::credentials::token_error;
    use crate::http::error::cursor_error;
    use crate::session::SessionError;

    fn outcome(error: ApiError) -> ResumeOutcome {
        resume_outcome::<()>(&Err(error))
    }

    #[test]
    fn every_resume_failure_has_its_outcome() {
        assert_eq!(resume_outcome(&Ok(())), ResumeOutcome::Ok);
        let cases = [
            (
                ApiError::from(SessionError::GenerationSuperseded),
                ResumeOutcome::Superseded,
            ),
            (
                ApiError::from(SessionError::WindowExpired),
                ResumeOutcome::Expired,
            ),
            (ApiError::from(SessionError::Closed), ResumeOutcome::Closed),
            (
                cursor_error(EventLogError::CursorEvicted { floor: 3 }),
                ResumeOutcome::Evicted,
            ),
            (
                cursor_error(EventLogError::UnknownSession),
                ResumeOutcome::Expired,
            ),
            (
                cursor_error(EventLogError::CursorAhead { newest: 3 }),
                ResumeOutcome::Other,
            ),
            (
                token_error(ResumeTokenError::Expired),
                ResumeOutcome::Expired,
            ),
            (
                token_error(ResumeTokenError::BadSignature),
                ResumeOutcome::BadSignature,
            ),
            (
                token_error(ResumeTokenError::Malformed),
                ResumeOutcome::BadSignature,
            ),
            (
                ApiError::PermissionDenied("the resume token is for a different session".into()),
                ResumeOutcome::WrongPrincipal,
            ),
            (
                ApiError::Unauthenticated("unknown api token".into()),
                ResumeOutcome::Other,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(outcome(error.clone()), expected, "{error:?}");
        }
    }

    #[test]
    fn logged_ids_are_bounded() {
        let long = "x".repeat(1000);
        assert_eq!(bounded(&long).len(), MAX_LOGGED_ID);
        assert_eq!(bounded("sess_1"), "sess_1");
    }
}
