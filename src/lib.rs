//! `arcp-gateway`: an ARCP v1.1 runtime gateway over HTTP and Server-Sent
//! Events, whose streams resume exactly where they dropped.
//!
//! [`build_state`] turns a validated `Config` into the shared state and
//! [`serve_state`] serves it until shutdown: `main.rs` calls both (so a bad
//! data directory is reported before anything is announced); [`serve`] does
//! both at once for tests. See `ARCHITECTURE.md` for the code map and the
//! invariants each module keeps.

#![forbid(unsafe_code)]

pub mod agents_file;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod event_log;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod json;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod state;
pub mod storage;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::auth::{ApiTokens, ResumeTokenKeys};
use crate::config::Config;
use crate::event_log::sqlite::{Recovered, SqliteStore};
use crate::event_log::{EventLog, MemoryEventLog};
use crate::jobs::agents::AgentRegistry;
use crate::jobs::JobRegistry;
use crate::jobs::{Job, Terminal};
use crate::protocol::{ErrorCode, JobStatus};
use crate::session::{Session, SessionRegistry};
use crate::state::AppState;
use crate::store::{Ephemeral, Persistence};

/// Why the gateway could not start.
#[derive(Debug)]
pub enum ServeError {
    /// No usable resume-token secret was configured.
    NoSecret,
    /// The data directory could not be opened, or holds something that is
    /// not ours (a clear start-up error, never a silent reset).
    Storage(String),
    /// Cluster mode could not start: Redis unreachable or unfit.
    Cluster(cluster::ClusterStartError),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::NoSecret => {
                formatter.write_str("at least one non-empty resume-token secret is required")
            }
            ServeError::Storage(message) => write!(formatter, "data directory: {message}"),
            ServeError::Cluster(error) => write!(formatter, "cluster mode: {error}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// Builds the shared state for a configuration: in memory, recovered from
/// the data directory, or one node of a cluster on Redis.
pub async fn build_state(mut config: Config) -> Result<Arc<AppState>, ServeError> {
    let storage = |error: event_log::sqlite::StoreError| ServeError::Storage(error.to_string());
    if let (Some(data_dir), true) = (&config.data_dir, config.secret_was_generated) {
        config.secrets = vec![event_log::sqlite::load_or_create_secret(data_dir).map_err(storage)?];
        config.secret_was_generated = false;
    }
    let token_keys = ResumeTokenKeys::new(config.secrets.clone()).ok_or(ServeError::NoSecret)?;
    let retention = Arc::new(event_log::budget::RetentionBudget::new(
        config.max_retained_bytes,
        config.max_retained_bytes_per_principal,
    ));
    let metrics = Arc::new(metrics::Metrics::new());
    let memory = Arc::new(MemoryEventLog::with_budget(
        config.retention,
        http::sse::encode_job_event,
        retention.clone(),
    ));
    memory.attach_metrics(metrics.clone());
    memory.defer_fan_out(http::sse::encode_job_event_head);
    let (store, recovered): (Arc<dyn Persistence>, Option<Recovered>) = match &config.data_dir {
        None => (Arc::new(Ephemeral), None),
        Some(data_dir) => {
            let (connection, recovered, path) = SqliteStore::open(data_dir).map_err(storage)?;
            // Each log is charged to its session's principal.
            let owners: std::collections::HashMap<&str, ids::Principal> = recovered
                .sessions
                .iter()
                .filter_map(|record| {
                    let id = record.get("id")?.as_str()?;
                    Some((id, ids::Principal::new(record.get("principal")?.as_str()?)))
                })
                .collect();
            for (session_id, floor, entries) in &recovered.logs {
                let owner = owners.get(session_id.as_str());
                memory.restore_owned(session_id, owner, *floor, entries.clone());
            }
            let store = SqliteStore::start(connection, path, Arc::downgrade(&memory), &metrics);
            memory.attach_sink(store.clone());
            (store, Some(recovered))
        }
    };
    let log: Arc<dyn EventLog> = memory;
    let cluster = match &config.cluster {
        None => None,
        Some(cluster_config) => Some(
            cluster::ClusterNode::start(
                cluster_config.clone(),
                storage::Retention {
                    max_events: config.retention.max_events as u64,
                    max_bytes: config.retention.max_bytes as u64,
                },
                config.resume_window,
                http::sse::encode_job_event,
                metrics.clone(),
            )
            .await
            .map_err(ServeError::Cluster)?,
        ),
    };
    let state = Arc::new(AppState {
        api_tokens: ApiTokens::new(&config.api_tokens),
        token_keys,
        sessions: SessionRegistry::default(),
        jobs: JobRegistry::default(),
        agents: AgentRegistry::with_external(&config.agents),
        log,
        retention,
        body_budget: http::body::BodyBudget::new(config.max_body_bytes_in_flight),
        store,
        shutdown: state::Shutdown::default(),
        metrics,
        cluster,
        config,
    });
    if let Some(recovered) = recovered {
        recover(&state, recovered);
    }
    Ok(state)
}

/// Puts recovered sessions and jobs back. Sessions get a fresh resume window;
/// a job that was running when the process died gets its terminal
/// `INTERNAL_ERROR` (retryable) now, exactly once: unless its log already
/// holds a terminal event (the crash fell between that event and the job's
/// record).
fn recover(state: &Arc<AppState>, recovered: Recovered) {
    for record in &recovered.sessions {
        let row = match serde_json::from_value::<session::SessionRow>(record.clone()) {
            Ok(row) => row,
            Err(error) => {
                tracing::error!(
                    session = record
                        .get("id")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("?"),
                    %error,
                    "skipping a session record recovery cannot use"
                );
                continue;
            }
        };
        let session = Session::restore(&row);
        if state.log.bounds(&session.id).is_err() {
            // A session whose log is missing cannot be resumed truthfully.
            let _ = state.log.create(&session.id);
        }
        state.sessions.insert(Arc::new(session));
    }
    let positions = job_positions(&recovered);
    let mut interrupted = 0;
    for record in &recovered.jobs {
        let restored = serde_json::from_value::<jobs::JobRow>(record.clone())
            .ok()
            .and_then(|row| {
                Job::restore(
                    &row,
                    |id| state.sessions.get(id),
                    state.log.clone(),
                    state.store.clone(),
                    state.metrics.clone(),
                )
            });
        let Some(job) = restored else {
            // Its session is gone (or the record unreadable): nothing can
            // ever observe it again, so the record goes too.
            let id = record.get("id").and_then(serde_json::Value::as_str);
            let session = record.get("session_id").and_then(serde_json::Value::as_str);
            if session.is_some_and(|s| {
                state
                    .sessions
                    .get(&ids::SessionId::from_client(s))
                    .is_some()
            }) {
                tracing::error!(
                    job = id.unwrap_or("?"),
                    "dropping a job record recovery cannot use (its session is still there)"
                );
            }
            if let Some(id) = id {
                state.store.delete_job(&ids::JobId::from_client(id));
            }
            continue;
        };
        let position = positions.get(&job.spec.id);
        job.set_recovered_position(position.map_or(0, |p| p.last_seq));
        let job = state.jobs.reinstate(job);
        if job.snapshot().status.is_terminal() {
            continue;
        }
        if let Some(terminal) = position.and_then(|p| p.terminal.clone()) {
            job.adopt_terminal(terminal);
            continue;
        }
        job.finish(Terminal::failure(
            JobStatus::Error,
            ErrorCode::InternalError,
            "gateway restarted",
        ));
        interrupted += 1;
    }
    tracing::info!(
        sessions = recovered.sessions.len(),
        jobs = recovered.jobs.len(),
        interrupted,
        "recovered state from the data directory"
    );
}

/// Where each job stands in its submitting session's recovered log.
struct JobPosition {
    last_seq: ids::EventSeq,
    /// The terminal event, if the log holds one.
    terminal: Option<(JobStatus, serde_json::Value)>,
}

/// One pass over every recovered log: each job's last event and terminal.
/// Subscriber copies carry the same job id, so only a job's own session
/// counts (its job record names it).
fn job_positions(recovered: &Recovered) -> std::collections::HashMap<ids::JobId, JobPosition> {
    let origin: std::collections::HashMap<&str, &str> = recovered
        .jobs
        .iter()
        .filter_map(|job| Some((job.get("id")?.as_str()?, job.get("session_id")?.as_str()?)))
        .collect();
    let mut positions = std::collections::HashMap::new();
    for (session_id, _, entries) in &recovered.logs {
        for entry in entries {
            if origin.get(entry.job_id.as_str()) != Some(&session_id.as_str()) {
                continue;
            }
            let position = positions
                .entry(entry.job_id.clone())
                .or_insert(JobPosition {
                    last_seq: 0,
                    terminal: None,
                });
            position.last_seq = entry.seq;
            let Some(draft) = entry.to_draft() else {
                tracing::error!(
                    session = %session_id,
                    seq = entry.seq,
                    job = %entry.job_id,
                    "a recovered event cannot be re-read; it still replays as stored"
                );
                continue;
            };
            if draft.message_type == "job.event" {
                continue;
            }
            let status = draft
                .payload
                .get("final_status")
                .cloned()
                .and_then(|s| serde_json::from_value(s).ok());
            position.terminal = status.map(|status| (status, draft.payload));
        }
    }
    positions
}

/// Serves the gateway on `listener` until `shutdown` completes, then ends
/// every stream and waits (bounded) for connections to close.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let state = build_state(config).await?;
    serve_state(state, listener, shutdown).await;
    Ok(())
}

/// [`serve`] for state already built (so `main` can report a bad data
/// directory before it announces anything).
pub async fn serve_state(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let sweeper = tokio::spawn(sweep_expired_sessions(state.clone()));
    if let Some(node) = &state.cluster {
        node.spawn_background(state.shutdown.token());
    }
    server::run(listener, state.clone(), shutdown).await;
    if let Some(node) = &state.cluster {
        node.end_jobs_at_shutdown(std::time::Duration::from_secs(3))
            .await;
    }
    if state.store.flush().wait().await.is_err() {
        tracing::error!(
            "the durable store's writer stopped before shutdown: recent writes may be lost"
        );
    }
    sweeper.abort();
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
        state.metrics.sessions_expired(expired.len());
        for session in &expired {
            state.log.remove(&session.id);
            state.store.delete_session(&session.id);
            tracing::info!(session = %session.id, "session expired: resume window passed");
        }
        state
            .jobs
            .forget_finished_of(|session_id| state.sessions.get(session_id).is_none());
    }
}
