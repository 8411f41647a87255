//! The one API error type: every failure a request can meet, each mapped to an
//! HTTP status and an ARCP error code (§12) in exactly one place.

use hyper::StatusCode;

use crate::cluster::jobs::CancelError;
use crate::event_log::EventLogError;
use crate::protocol::{ErrorCode, ErrorPayload};
use crate::session::SessionError;
use crate::state::OpError;
use crate::storage::StorageError;

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
    /// The principal already runs its cap of jobs (all sessions together).
    TooManyRunningJobs {
        limit: usize,
    },
    /// The principal's sessions already retain its cap of event bytes.
    RetainedBytesPerPrincipal {
        limit: usize,
    },
    /// The gateway-wide retained-bytes budget is used up: new work waits
    /// until clients acknowledge, close or abandon sessions.
    RetainedBytesFull,
    /// Request bodies being read hold the gateway's budget for them.
    BodiesInFlightFull,
    JobAlreadyTerminal {
        status: &'static str,
    },
    RouteNotFound,
    /// A WebSocket client stayed silent for two heartbeat intervals (§6.4).
    HeartbeatLost,
    MethodNotAllowed {
        allowed: Vec<&'static str>,
    },
    /// A request head the HTTP/1 parser refuses (RFC 9112 §2.2, §3, §5).
    MalformedHead(String),
    /// A request head over the size or field-count limit.
    HeadTooLarge {
        limit: usize,
    },
    /// The request head did not arrive within the header timeout.
    HeadTimeout,
    /// The request body did not arrive within the body timeout.
    BodyTimeout,
    /// The gateway holds its cap of open connections.
    TooManyConnections,
    /// This client address holds its cap of open connections.
    TooManyConnectionsFromPeer {
        limit: usize,
    },
    /// Cluster mode: the shared store (Redis) cannot be reached or did not
    /// confirm a write; nothing was lost, the request may be retried.
    StoreUnavailable(String),
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
            ApiError::TooManySessions { .. }
            | ApiError::TooManyJobs { .. }
            | ApiError::TooManyConnectionsFromPeer { .. }
            | ApiError::TooManyRunningJobs { .. }
            | ApiError::RetainedBytesPerPrincipal { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MalformedHead(_) => StatusCode::BAD_REQUEST,
            ApiError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::HeadTimeout | ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyConnections
            | ApiError::RetainedBytesFull
            | ApiError::BodiesInFlightFull
            | ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::PermissionDenied(_)
            | ApiError::TooManySessions { .. }
            | ApiError::TooManyJobs { .. }
            | ApiError::TooManyConnectionsFromPeer { .. }
            | ApiError::TooManyRunningJobs { .. }
            | ApiError::RetainedBytesPerPrincipal { .. } => ErrorCode::PermissionDenied,
            ApiError::MalformedHead(_)
            | ApiError::HeadTooLarge { .. }
            | ApiError::HeadTimeout
            | ApiError::BodyTimeout => ErrorCode::InvalidRequest,
            // §12: overload is a runtime condition the client may retry, and
            // INTERNAL_ERROR is always retryable.
            ApiError::TooManyConnections
            | ApiError::RetainedBytesFull
            | ApiError::BodiesInFlightFull
            | ApiError::StoreUnavailable(_) => ErrorCode::InternalError,
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
            ApiError::TooManyRunningJobs { limit } => format!(
                "this principal already runs {limit} jobs; wait for some to finish"
            ),
            ApiError::RetainedBytesPerPrincipal { limit } => format!(
                "this principal's sessions retain nearly their limit of {limit} bytes of events; acknowledge events (session.ack) or close sessions first"
            ),
            ApiError::RetainedBytesFull => {
                "the gateway's memory for retained events is full; retry later".into()
            }
            ApiError::BodiesInFlightFull => {
                "the gateway's memory for request bodies being read is full; retry later".into()
            }
            ApiError::TooManySessions { limit } => format!(
                "this principal already holds {limit} sessions; close some or let them expire"
            ),
            ApiError::MethodNotAllowed { allowed } => {
                format!("method not allowed; allowed: {}", allowed.join(", "))
            }
            ApiError::MalformedHead(reason) => format!("malformed request head: {reason}"),
            ApiError::HeadTooLarge { limit } => {
                format!("request head exceeds {limit} bytes or too many header fields")
            }
            ApiError::HeadTimeout => "the request head did not arrive in time".into(),
            ApiError::BodyTimeout => "the request body did not arrive in time".into(),
            ApiError::TooManyConnections => {
                "the gateway is at its connection limit; retry later".into()
            }
            ApiError::TooManyConnectionsFromPeer { limit } => {
                format!("this client address already holds {limit} connections; close some first")
            }
            ApiError::StoreUnavailable(reason) => {
                format!("the gateway's shared store is unavailable ({reason}); retry shortly")
            }
        }
    }

    /// Whether the same request may succeed later without changes (§12):
    /// what a code forces, a late head or body, and caps that free
    /// themselves (connections close, jobs end, events are acknowledged).
    pub fn retryable(&self) -> bool {
        match self.code().forced_retryable() {
            Some(forced) => forced,
            None => matches!(
                self,
                ApiError::HeadTimeout
                    | ApiError::BodyTimeout
                    | ApiError::TooManyConnectionsFromPeer { .. }
                    | ApiError::TooManyRunningJobs { .. }
                    | ApiError::RetainedBytesPerPrincipal { .. }
                    | ApiError::RetainedBytesFull
                    | ApiError::BodiesInFlightFull
            ),
        }
    }

    pub fn payload(&self) -> ErrorPayload {
        ErrorPayload {
            code: self.code(),
            message: self.message(),
            retryable: self.retryable(),
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

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Gone(reason) => ApiError::ResumeWindowExpired(format!(
                "{reason}: cannot resume without a gap"
            )),
            // The store holds fewer events than the client has seen: it lost
            // writes (a restart without its AOF tail, a failover). Never a
            // silent gap (§6.3).
            StorageError::RolledBack { cursor, newest } => ApiError::ResumeWindowExpired(format!(
                "the gateway's store holds events up to {newest} only, below the cursor {cursor}: history was lost"
            )),
            StorageError::GenerationSuperseded => SessionError::GenerationSuperseded.into(),
            StorageError::SessionClosed => SessionError::Closed.into(),
            StorageError::NotFound => ApiError::JobNotFound,
            StorageError::InvalidId => ApiError::InvalidRequest("malformed identifier".into()),
            StorageError::Unavailable(reason) | StorageError::Indeterminate(reason) => {
                ApiError::StoreUnavailable(reason)
            }
            StorageError::WriterStopped => ApiError::StoreUnavailable("writer stopped".into()),
            // Cannot reach a request (jobs' own writes), but never a 500.
            StorageError::Exists
            | StorageError::Fenced
            | StorageError::LeaseHeld
            | StorageError::JobClosed { .. }
            | StorageError::Corrupt(_) => ApiError::StoreUnavailable(error.to_string()),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(error: OpError) -> Self {
        match error {
            OpError::Session(error) => error.into(),
            OpError::Log(error) => cursor_error(error),
            OpError::Storage(error) => error.into(),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(error: CancelError) -> Self {
        match error {
            CancelError::Storage(error) => error.into(),
            CancelError::NotSubmitter => {
                ApiError::PermissionDenied("only the submitting session may cancel a job".into())
            }
            CancelError::Finished(status) => ApiError::JobAlreadyTerminal {
                status: status.as_str(),
            },
        }
    }
}
