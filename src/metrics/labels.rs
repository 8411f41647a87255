//! The fixed vocabularies of the metrics' labels: every value a label can
//! take (besides configured agent names and route ids) is a variant here.

/// How a connection or stream reaches the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Http1,
    Http2,
    /// ARCP over WebSocket (`GET /arcp`, §4).
    WebSocket,
}

impl Transport {
    pub(super) const ALL: [Transport; 3] =
        [Transport::Http1, Transport::Http2, Transport::WebSocket];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http1 => "http1",
            Transport::Http2 => "http2",
            Transport::WebSocket => "websocket",
        }
    }
}

/// Why the gateway refused or dropped a connection before serving a
/// request (connection caps and timeouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionRefusal {
    /// The gateway-wide connection cap was reached.
    TotalCap,
    /// One peer address held its cap of connections.
    PerPeerCap,
    /// The request head did not arrive in time.
    HeaderTimeout,
    /// A connection stayed idle between requests for too long.
    IdleTimeout,
}

impl ConnectionRefusal {
    pub(super) const ALL: [ConnectionRefusal; 4] = [
        ConnectionRefusal::TotalCap,
        ConnectionRefusal::PerPeerCap,
        ConnectionRefusal::HeaderTimeout,
        ConnectionRefusal::IdleTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionRefusal::TotalCap => "total_cap",
            ConnectionRefusal::PerPeerCap => "per_peer_cap",
            ConnectionRefusal::HeaderTimeout => "header_timeout",
            ConnectionRefusal::IdleTimeout => "idle_timeout",
        }
    }
}

/// A request refused because a configured limit was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitRefusal {
    /// `--max-sessions-per-principal`.
    SessionsPerPrincipal,
    /// `--max-jobs-per-session`.
    JobsPerSession,
    /// `--max-body-bytes`.
    BodyBytes,
}

impl LimitRefusal {
    pub(super) const ALL: [LimitRefusal; 3] = [
        LimitRefusal::SessionsPerPrincipal,
        LimitRefusal::JobsPerSession,
        LimitRefusal::BodyBytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitRefusal::SessionsPerPrincipal => "sessions_per_principal",
            LimitRefusal::JobsPerSession => "jobs_per_session",
            LimitRefusal::BodyBytes => "body_bytes",
        }
    }
}

/// What became of a resume: a stream opened or `POST /v1/sessions/resume`
/// with a resume token (§6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResumeOutcome {
    Ok,
    /// A newer generation of the token was already used (401).
    Superseded,
    /// The token or the session's resume window expired (410).
    Expired,
    /// The cursor is older than the oldest retained event (410).
    Evicted,
    /// The session was closed and a stream tried to reopen it (410).
    Closed,
    /// The token is for another session, or another principal (403).
    WrongPrincipal,
    /// The token is malformed or its signature does not verify (401).
    BadSignature,
    /// Anything else (a cursor beyond the newest event, a swept session).
    Other,
}

impl ResumeOutcome {
    pub(super) const ALL: [ResumeOutcome; 8] = [
        ResumeOutcome::Ok,
        ResumeOutcome::Superseded,
        ResumeOutcome::Expired,
        ResumeOutcome::Evicted,
        ResumeOutcome::Closed,
        ResumeOutcome::WrongPrincipal,
        ResumeOutcome::BadSignature,
        ResumeOutcome::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResumeOutcome::Ok => "ok",
            ResumeOutcome::Superseded => "superseded",
            ResumeOutcome::Expired => "expired",
            ResumeOutcome::Evicted => "evicted",
            ResumeOutcome::Closed => "closed",
            ResumeOutcome::WrongPrincipal => "wrong_principal",
            ResumeOutcome::BadSignature => "bad_signature",
            ResumeOutcome::Other => "other",
        }
    }
}

/// Why a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamEnd {
    ClientGone,
    Replaced,
    Shutdown,
    /// The log no longer covers the stream's position: the client read too
    /// slowly for retention, or the session was swept.
    SlowClient,
    MaxDuration,
    /// Cluster mode: the shared store (Redis) could not be read.
    StoreUnavailable,
}

impl StreamEnd {
    pub(super) const ALL: [StreamEnd; 6] = [
        StreamEnd::ClientGone,
        StreamEnd::Replaced,
        StreamEnd::Shutdown,
        StreamEnd::SlowClient,
        StreamEnd::MaxDuration,
        StreamEnd::StoreUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::ClientGone => "client_gone",
            StreamEnd::Replaced => "replaced",
            StreamEnd::Shutdown => "shutdown",
            StreamEnd::SlowClient => "slow_client",
            StreamEnd::MaxDuration => "max_duration",
            StreamEnd::StoreUnavailable => "store_unavailable",
        }
    }
}
