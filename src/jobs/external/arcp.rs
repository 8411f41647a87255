//! Upstream ARCP runtimes as agents: each job opens one session on the
//! runtime's WebSocket endpoint (`kind = "arcp"` in the agents file),
//! submits the job there and maps what comes back into the gateway's job
//! (`arcp/mapping.rs`).
//!
//! - `session.hello` with the configured token (§6.1), then `job.submit` for
//!   the configured upstream agent with the job's input, lease and trace id.
//! - Upstream `job.event`s go through the same [`AgentOutput`] as every
//!   external agent's lines (event kinds, lease checks, budgets, result
//!   chunks), so they land in the gateway's log under the gateway's own
//!   `event_seq`, never the runtime's.
//! - The upstream terminal becomes the job's: `job.result` success, or
//!   `cancelled`/`timed_out` (as the official runtime ends them), or
//!   `job.error` with its §12 code; a `session.error` is a failure too.
//! - Ending the job early (cancel, timeout, lease expiry, budget) drops the
//!   job's side of the channel; the session task then sends `job.cancel` and
//!   `session.bye` upstream, bounded in time.
//! - Bounds: connecting within `connect_timeout_ms`; no message from the
//!   runtime (its heartbeats included) for `idle_timeout_ms` ends the job;
//!   messages are limited to `max_line_bytes`.
//! - A dropped upstream connection is resumed (`arcp/resume.rs`): reconnect
//!   within a small budget, `session.hello` with `resume`, `job.subscribe`,
//!   and a `warn` log event in the job before the resumed events, since the
//!   official runtime loses what it produced while nobody was connected. A
//!   resume that fails ends the job with a retryable `INTERNAL_ERROR` that
//!   says so. An explicit error or warning is never mistaken for a
//!   complete job.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{internal, AgentOutput, ExternalAgent, Finished};

mod mapping;
mod resume;
use crate::ids::MessageId;
use crate::jobs::{Job, Terminal};
use crate::protocol::{now_rfc3339, ErrorCode, JobStatus};

/// How long the goodbye (`job.cancel`, `session.bye`) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest `max_runtime_sec` the official SDK accepts.
const SDK_MAX_RUNTIME_SEC: u64 = 86_400;

pub struct ArcpBackend {
    /// `ws://…/arcp` (no TLS in the client: put a proxy in between).
    pub url: String,
    /// The api token presented in `session.hello` (never logged).
    token: String,
    /// The agent to run upstream (`name` or `name@version`).
    pub upstream_agent: String,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for ArcpBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ArcpBackend")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("upstream_agent", &self.upstream_agent)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl ArcpBackend {
    pub fn new(
        url: String,
        token: String,
        upstream_agent: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> ArcpBackend {
        ArcpBackend {
            url,
            token,
            upstream_agent,
            connect_timeout,
            idle_timeout,
        }
    }
}

/// What the session task hands the job.
enum Upstream {
    /// One message in the external-agent line protocol (`{kind, body}`,
    /// `{result}`, `{error}`).
    Line(Value),
    /// The job ends this way.
    End(Terminal),
}

/// Everything the session task owns.
struct Params {
    url: String,
    upstream_agent: String,
    token: String,
    submit: Value,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_message_bytes: usize,
}

pub(super) async fn run(agent: &ExternalAgent, backend: &ArcpBackend, job: &Arc<Job>) -> Terminal {
    let spec = &job.spec;
    let mut submit = json!({
        "agent": backend.upstream_agent,
        "input": spec.input,
        "lease_request": spec.lease,
    });
    let max_runtime = match (spec.max_runtime, agent.max_runtime) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(limit) = max_runtime {
        submit["max_runtime_sec"] = json!(limit.as_secs().clamp(1, SDK_MAX_RUNTIME_SEC));
    }
    let params = Params {
        url: backend.url.clone(),
        upstream_agent: backend.upstream_agent.clone(),
        token: backend.token.clone(),
        submit,
        connect_timeout: backend.connect_timeout,
        idle_timeout: backend.idle_timeout,
        max_message_bytes: agent.max_line_bytes,
    };
    let trace_id = spec.trace_id.clone();
    let (sender, mut receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        if let Err(terminal) = session(&params, &trace_id, &sender).await {
            let _ = sender.send(Upstream::End(terminal)).await;
        }
    });
    let mut output = AgentOutput::new(job, agent);
    loop {
        job.ready().await;
        let Some(item) = receiver.recv().await else {
            break;
        };
        match item {
            Upstream::Line(message) => {
                if let ControlFlow::Break(Finished { terminal, .. }) = output.value(message) {
                    return terminal;
                }
            }
            Upstream::End(terminal) => return terminal,
        }
    }
    internal(format!(
        "the session with the upstream ARCP runtime at {} ended without a terminal",
        backend.url
    ))
}

fn envelope(message_type: &str, session_id: Option<&str>, payload: Value) -> Message {
    let mut envelope = json!({
        "arcp": "1.1",
        "id": MessageId::generate(),
        "type": message_type,
        "payload": payload,
    });
    if let Some(session_id) = session_id {
        envelope["session_id"] = json!(session_id);
    }
    Message::text(envelope.to_string())
}

fn upstream_failure(url: &str, what: &str) -> Terminal {
    Terminal::failure(
        JobStatus::Error,
        ErrorCode::InternalError,
        format!("the upstream ARCP runtime at {url} {what}"),
    )
}

/// What the session task knows of the upstream session and job, kept
/// across connections.
#[derive(Default)]
struct Link {
    session_id: Option<String>,
    resume_token: Option<String>,
    job_id: Option<String>,
    /// The highest upstream `event_seq` of this job seen on the current
    /// connection (the official runtime restarts its numbering on each).
    last_seq: u64,
    /// Upstream events of this job mapped so far, over all connections.
    events: u64,
    /// Envelope ids of the events mapped last, to drop replays of them.
    seen: resume::RecentIds,
    /// Set while a resume is under way.
    resuming: Option<resume::Phase>,
}

/// How one connection ended.
enum Drive {
    /// The job's end (`Err`) or the session's (`Ok`).
    Finished(Result<(), Terminal>),
    /// The connection dropped; `at` is when.
    Dropped { at: String },
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(params: &Params, limit: Duration) -> Result<Socket, String> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(params.max_message_bytes))
        .max_frame_size(Some(params.max_message_bytes));
    let connecting =
        tokio_tungstenite::connect_async_with_config(params.url.as_str(), Some(config), false);
    match tokio::time::timeout(limit, connecting).await {
        Err(_) => Err("did not accept a connection in time".to_owned()),
        Ok(Err(error)) => Err(format!("could not be reached: {error}")),
        Ok(Ok((socket, _))) => Ok(socket),
    }
}

fn hello_payload(token: &str) -> Value {
    json!({
        "client": { "name": "arcp-gateway", "version": env!("CARGO_PKG_VERSION") },
        "auth": { "scheme": "bearer", "token": token },
        "capabilities": { "encodings": ["json"], "features": ["heartbeat", "progress", "result_chunk", "subscribe"] },
    })
}

/// One upstream session, from hello to terminal, resumed after drops
/// ([`resume`]). `Err` is the job's end.
async fn session(
    params: &Params,
    trace_id: &str,
    out: &mpsc::Sender<Upstream>,
) -> Result<(), Terminal> {
    let url = params.url.as_str();
    let mut socket = connect(params, params.connect_timeout)
        .await
        .map_err(|why| upstream_failure(url, &why))?;
    if socket
        .send(envelope(
            "session.hello",
            None,
            hello_payload(&params.token),
        ))
        .await
        .is_err()
    {
        return Err(upstream_failure(url, "closed the connection at the hello"));
    }
    let mut link = Link::default();
    let mut budget: Option<resume::Budget> = None;
    loop {
        match drive(params, trace_id, out, &mut socket, &mut link).await {
            Drive::Finished(end) => return end,
            Drive::Dropped { at } => {
                if link.job_id.is_none() || link.resume_token.is_none() {
                    return Err(dropped(url, &link));
                }
                // A drop before the last resume completed spends its budget;
                // any other drop starts a new one.
                if link.resuming.is_none() {
                    budget = None;
                }
                let episode = budget.get_or_insert_with(resume::Budget::start);
                socket = resume::reconnect(params, out, &mut link, episode, &at)
                    .await
                    .map_err(|why| {
                        retryable(upstream_failure(
                            url,
                            &format!(
                                "dropped the connection after {} events of this job and the \
                                 session could not be resumed ({why}); the job ends here rather \
                                 than pass for complete",
                                link.events
                            ),
                        ))
                    })?;
            }
        }
    }
}

fn retryable(mut terminal: Terminal) -> Terminal {
    if let Terminal::Failure { error, .. } = &mut terminal {
        error.retryable = true;
    }
    terminal
}

fn dropped(url: &str, link: &Link) -> Terminal {
    retryable(upstream_failure(
        url,
        &format!(
            "dropped the connection after {} events of this job, before the job was accepted, \
             so there is nothing to resume; the job ends here",
            link.events
        ),
    ))
}

/// Reads one connection until the job's end or the connection's.
async fn drive(
    params: &Params,
    trace_id: &str,
    out: &mpsc::Sender<Upstream>,
    socket: &mut Socket,
    link: &mut Link,
) -> Drive {
    let url = params.url.as_str();
    loop {
        let next = tokio::select! {
            biased;
            () = out.closed() => {
                // The job ended on the gateway's side: cancel upstream, over
                // a resumed session if this connection is already gone.
                if !still_open(socket) {
                    return Drive::Dropped { at: now_rfc3339() };
                }
                return match goodbye(socket, link).await {
                    Goodbye::Done => Drive::Finished(Ok(())),
                    Goodbye::Dropped => Drive::Dropped { at: now_rfc3339() },
                };
            }
            next = tokio::time::timeout(params.idle_timeout, socket.next()) => next,
        };
        let text = match next {
            Err(_) => {
                return Drive::Finished(Err(upstream_failure(
                    url,
                    &format!(
                        "sent nothing for {} ms (idle_timeout_ms)",
                        params.idle_timeout.as_millis()
                    ),
                )))
            }
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                return Drive::Dropped { at: now_rfc3339() }
            }
            Ok(Some(Ok(_))) => continue,
        };
        match mapping::message(params, trace_id, out, socket, link, text.as_bytes()).await {
            ControlFlow::Continue(()) => {}
            ControlFlow::Break(end) => return Drive::Finished(end),
        }
    }
}

/// Whether the connection is still open, as far as can be told without
/// waiting. What the runtime sent meanwhile no longer matters: the job ended.
fn still_open(socket: &mut Socket) -> bool {
    loop {
        match socket.next().now_or_never() {
            None => return true,
            Some(Some(Ok(Message::Close(_)))) | Some(None) | Some(Some(Err(_))) => return false,
            Some(Some(Ok(_))) => {}
        }
    }
}

/// How a goodbye went.
enum Goodbye {
    Done,
    /// The connection dropped before the runtime confirmed the cancel.
    Dropped,
}

/// `job.cancel` (once the job is known upstream), waiting for the runtime's
/// terminal that confirms it, then `session.bye`; bounded in time.
async fn goodbye(socket: &mut Socket, link: &Link) -> Goodbye {
    let session_id = link.session_id.as_deref();
    if let Some(job_id) = &link.job_id {
        let cancel = job_envelope(
            "job.cancel",
            session_id,
            job_id,
            json!({"reason": "cancelled at the gateway"}),
        );
        let confirmed = async {
            if socket.send(cancel).await.is_err() {
                return false;
            }
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        if ends_job(text.as_bytes(), job_id) {
                            return true;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                    Some(Ok(_)) => {}
                }
            }
        };
        // Not confirmed in time: the runtime ignores cancels; leave anyway.
        if let Ok(false) = tokio::time::timeout(GOODBYE_TIMEOUT, confirmed).await {
            return Goodbye::Dropped;
        }
    }
    let bye = envelope("session.bye", session_id, json!({"reason": "client.close"}));
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        let _ = socket.send(bye).await;
        let _ = socket.close(None).await;
    })
    .await;
    Goodbye::Done
}

/// Whether an upstream message is the terminal of the job `job_id`.
fn ends_job(text: &[u8], job_id: &str) -> bool {
    let Ok(Value::Object(message)) = crate::json::parse(text) else {
        return false;
    };
    message.get("job_id").and_then(Value::as_str) == Some(job_id)
        && matches!(
            message.get("type").and_then(Value::as_str),
            Some("job.result" | "job.error")
        )
}

fn job_envelope(
    message_type: &str,
    session_id: Option<&str>,
    job_id: &str,
    payload: Value,
) -> Message {
    let mut envelope = json!({
        "arcp": "1.1",
        "id": MessageId::generate(),
        "type": message_type,
        "job_id": job_id,
        "payload": payload,
    });
    if let Some(session_id) = session_id {
        envelope["session_id"] = json!(session_id);
    }
    Message::text(envelope.to_string())
}
