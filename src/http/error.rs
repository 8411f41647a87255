//! The one API error type: every failure a request can meet, each mapped to an
//! HTTP status and an ARCP error code (§12) in exactly one place.

use hyper::StatusCode;

use crate::event_log::EventLogError;
use crate::protocol::{ErrorCode, ErrorPayload};
use crate::session::SessionError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// Missing, malformed, forged or superseded credential.
    Unauthenticated(String),
    /// Authenticated, but not allowed (foreign session, wrong principal,
    /// non-submitter cancel).
    PermissionDenied(String),
    /// Token expired, window passed, or the log no longer covers the cursor.
    ResumeWindowExpired(String),
    InvalidRequest(String),
    BodyTooLarge {
        limit: usize,
    },
    SessionNotFound,
    JobNotFound,
    AgentNotAvailable(String),
    AgentVersionNotAvailable(String),
    DuplicateKey,
    /// The principal already holds the configured number of sessions.
    TooManySessions {
        limit: usize,
    },
    /// The session holds its cap of jobs and every one is still running.
    TooManyJobs {
        limit: usize,
    },
    JobAlreadyTerminal {
        status: &'static str,
    },
    RouteNotFound,
    /// A WebSocket client stayed silent for two heartbeat intervals (§6.4).
    HeartbeatLost,
    MethodNotAllowed {
        allowed: Vec<&'static str>,
    },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ApiError::ResumeWindowExpired(_) => StatusCode::GONE,
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::SessionNotFound
            | ApiError::JobNotFound
            | ApiError::AgentNotAvailable(_)
            | ApiError::AgentVersionNotAvailable(_)
            | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::DuplicateKey | ApiError::JobAlreadyTerminal { .. } => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::HeartbeatLost => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManySessions { .. } | ApiError::TooManyJobs { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::PermissionDenied(_)
            | ApiError::TooManySessions { .. }
            | ApiError::TooManyJobs { .. } => ErrorCode::PermissionDenied,
            ApiError::ResumeWindowExpired(_) => ErrorCode::ResumeWindowExpired,
            ApiError::InvalidRequest(_)
            | ApiError::BodyTooLarge { .. }
            | ApiError::SessionNotFound
            | ApiError::JobAlreadyTerminal { .. }
            | ApiError::RouteNotFound
            | ApiError::MethodNotAllowed { .. } => ErrorCode::InvalidRequest,
            ApiError::JobNotFound => ErrorCode::JobNotFound,
            ApiError::AgentNotAvailable(_) => ErrorCode::AgentNotAvailable,
            ApiError::AgentVersionNotAvailable(_) => ErrorCode::AgentVersionNotAvailable,
            ApiError::DuplicateKey => ErrorCode::DuplicateKey,
            ApiError::HeartbeatLost => ErrorCode::HeartbeatLost,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthenticated(message)
            | ApiError::PermissionDenied(message)
            | ApiError::ResumeWindowExpired(message)
            | ApiError::InvalidRequest(message) => message.clone(),
            ApiError::BodyTooLarge { limit } => format!("request body exceeds {limit} bytes"),
            ApiError::SessionNotFound => "no such session".into(),
            ApiError::JobNotFound => "no such job".into(),
            ApiError::AgentNotAvailable(name) => format!("agent {name:?} is not registered"),
            ApiError::AgentVersionNotAvailable(agent) => {
                format!("agent version {agent:?} is not available")
            }
            ApiError::DuplicateKey => {
                "idempotency_key was already used with different parameters".into()
            }
            ApiError::JobAlreadyTerminal { status } => {
                format!("the job already ended with status {status:?}")
            }
            ApiError::RouteNotFound => "no such endpoint".into(),
            ApiError::HeartbeatLost => {
                "no message from the client for two heartbeat intervals; resume to continue".into()
            }
            ApiError::TooManyJobs { limit } => format!(
                "this session already has {limit} jobs, all still running; wait for some to finish"
            ),
            ApiError::TooManySessions { limit } => format!(
                "this principal already holds {limit} sessions; close some or let them expire"
            ),
            ApiError::MethodNotAllowed { allowed } => {
                format!("method not allowed; allowed: {}", allowed.join(", "))
            }
        }
    }

    pub fn payload(&self) -> ErrorPayload {
        ErrorPayload {
            code: self.code(),
            message: self.message(),
            retryable: false,
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        match error {
            SessionError::GenerationSuperseded => ApiError::Unauthenticated(
                "resume token was superseded by a newer generation; use the newest token".into(),
            ),
            SessionError::WindowExpired => {
                ApiError::ResumeWindowExpired("the session's resume window has passed".into())
            }
            SessionError::Closed => ApiError::ResumeWindowExpired("the session was closed".into()),
        }
    }
}

/// Maps a log error met while validating a client's cursor.
pub fn cursor_error(error: EventLogError) -> ApiError {
    match error {
        EventLogError::CursorEvicted { floor } => ApiError::ResumeWindowExpired(format!(
            "events up to event_seq {floor} are no longer retained; cannot resume without a gap"
        )),
        EventLogError::CursorAhead { newest } => ApiError::InvalidRequest(format!(
            "last_event_seq is beyond the newest event_seq ({newest})"
        )),
        EventLogError::UnknownSession | EventLogError::SessionExists => {
            ApiError::ResumeWindowExpired("the session's event log is gone".into())
        }
    }
}
