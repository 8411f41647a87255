//! `arcp-gateway`: an ARCP v1.1 runtime gateway over HTTP and Server-Sent
//! Events, whose streams resume exactly where they dropped.
//!
//! [`serve`] is the whole program: `main.rs` and the tests both call it. See
//! `ARCHITECTURE.md` for the code map and the invariants each module keeps.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod event_log;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod protocol;
pub mod server;
pub mod session;
pub mod state;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{ApiTokens, ResumeTokenKeys};
use crate::config::Config;
use crate::event_log::{EventLog, MemoryEventLog};
use crate::jobs::agents::AgentRegistry;
use crate::jobs::JobRegistry;
use crate::session::SessionRegistry;
use crate::state::AppState;

/// Why the gateway could not start.
#[derive(Debug)]
pub enum ServeError {
    /// No usable resume-token secret was configured.
    NoSecret,
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::NoSecret => {
                formatter.write_str("at least one non-empty resume-token secret is required")
            }
        }
    }
}

impl std::error::Error for ServeError {}

/// Builds the shared state for a configuration.
pub fn build_state(config: Config) -> Result<Arc<AppState>, ServeError> {
    let token_keys = ResumeTokenKeys::new(config.secrets.clone()).ok_or(ServeError::NoSecret)?;
    let log: Arc<dyn EventLog> = Arc::new(MemoryEventLog::new(
        config.retention,
        http::sse::encode_job_event,
    ));
    Ok(Arc::new(AppState {
        api_tokens: ApiTokens::new(&config.api_tokens),
        token_keys,
        sessions: SessionRegistry::default(),
        jobs: JobRegistry::default(),
        agents: AgentRegistry::builtin(),
        log,
        shutdown: CancellationToken::new(),
        config,
    }))
}

/// Serves the gateway on `listener` until `shutdown` completes, then ends
/// every stream and waits (bounded) for connections to close.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let state = build_state(config)?;
    let sweeper = tokio::spawn(sweep_expired_sessions(state.clone()));
    server::run(listener, state.clone(), shutdown).await;
    sweeper.abort();
    Ok(())
}

/// Removes sessions whose resume window passed, their logs, and their
/// finished jobs; keeps memory bounded when clients never come back.
async fn sweep_expired_sessions(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let expired = state
            .sessions
            .remove_expired(state.config.resume_window, std::time::Instant::now());
        for session in &expired {
            state.log.remove(&session.id);
            tracing::info!(session = %session.id, "session expired: resume window passed");
        }
        state
            .jobs
            .forget_finished_of(|session_id| state.sessions.get(session_id).is_none());
    }
}
