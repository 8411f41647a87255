//! The shared application state: one `Arc<AppState>` of handles, cloned into
//! every connection. Nothing here is held across an `.await`.
//!
//! Whether sessions, logs and jobs live in this process (memory, or memory
//! with `--data-dir`) or in the cluster's Redis (`--redis-url`,
//! [`crate::cluster`]) is decided here: the operations in `sessions.rs` and
//! `jobs.rs` take either path, so `http/` never knows which one runs.

mod jobs;
mod sessions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::auth::{ApiTokens, ResumeTokenKeys};
use crate::config::Config;
use crate::event_log::budget::RetentionBudget;
use crate::event_log::EventLog;
use crate::jobs::agents::AgentRegistry;
use crate::jobs::JobRegistry;
use crate::metrics::Metrics;
use crate::session::{Session, SessionRegistry};
use crate::store::{Persistence, WriterStopped};

/// Features this runtime implements and may negotiate (§6.2).
pub const RUNTIME_FEATURES: &[&str] = &[
    "heartbeat",
    "ack",
    "list_jobs",
    "subscribe",
    "lease_expires_at",
    "cost.budget",
    "progress",
    "result_chunk",
    "agent_versions",
];

pub use jobs::{Accepted, JobView, SubmitError, SubscribeFailure, SubscribedView};
pub use sessions::{LogReader, LogWatch, OpError};

pub struct AppState {
    pub config: Config,
    pub api_tokens: ApiTokens,
    pub token_keys: ResumeTokenKeys,
    pub sessions: SessionRegistry,
    pub jobs: JobRegistry,
    pub agents: AgentRegistry,
    pub log: Arc<dyn EventLog>,
    /// Retained event bytes per principal and gateway-wide; `log` charges
    /// them, admission reads them.
    pub retention: Arc<RetentionBudget>,
    /// Bytes of request bodies being read, gateway-wide.
    pub body_budget: crate::http::body::BodyBudget,
    /// Session and job records (nothing in memory mode).
    pub store: Arc<dyn Persistence>,
    /// Begun when the gateway shuts down; every stream watches it.
    pub shutdown: Shutdown,
    /// Counters, gauges and histograms served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// This node of a cluster (`--redis-url`): sessions, logs and jobs are
    /// then in Redis, not in `sessions`, `log` and `store`.
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
}

impl AppState {
    /// The features this gateway may negotiate (§6.2).
    pub fn runtime_features(&self) -> &'static [&'static str] {
        RUNTIME_FEATURES
    }

    /// Writes a session's record and waits until it is durable, so a token
    /// or generation the client is about to receive survives a crash. An
    /// error when the store's writer has stopped: the client must not be
    /// told of something that was not kept.
    pub async fn persist_session(&self, session: &Session) -> Result<(), WriterStopped> {
        self.store
            .save_session(&session.id, &session.record())
            .wait()
            .await
    }

    /// The `/metrics` exposition, with the session gauges counted now.
    pub fn render_metrics(&self) -> String {
        let (open, closed) = self.sessions.count_by_state();
        self.metrics.render(open, closed)
    }
}

/// The gateway's shutdown: a token to wait on, and a flag to look at.
/// `CancellationToken::is_cancelled` takes the token's lock, one lock that
/// every stream would share, and streams look once per event.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    begun: AtomicBool,
    token: CancellationToken,
}

impl Shutdown {
    /// Starts the shutdown: the flag first, so whoever the token wakes
    /// sees it.
    pub fn begin(&self) {
        self.inner.begun.store(true, Ordering::Release);
        self.inner.token.cancel();
    }

    /// Whether the shutdown has begun; takes no lock.
    pub fn has_begun(&self) -> bool {
        self.inner.begun.load(Ordering::Acquire)
    }

    /// Completes once the shutdown has begun.
    pub fn begun(&self) -> WaitForCancellationFuture<'_> {
        self.inner.token.cancelled()
    }

    /// The token itself, for tasks that take one.
    pub fn token(&self) -> CancellationToken {
        self.inner.token.clone()
    }
}
