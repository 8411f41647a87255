//! Resuming an upstream session after its connection dropped mid-job.
//!
//! The official runtime (Python SDK 1.1.3) keeps a job running while its
//! client is away, but events it produces then go to the dead connection and
//! are lost; its own resume replays only what it had logged. So after a drop
//! the gateway:
//!
//! 1. reconnects within a [`Budget`] ([`MAX_ATTEMPTS`] attempts with
//!    back-off, all within [`BUDGET`] of the drop; the job's own deadlines
//!    still apply), and resumes the session: `session.hello` with
//!    `resume {session_id, resume_token, last_event_seq}` (§6.3);
//! 2. appends a `log` event at level `warn` to the job, before anything
//!    the resumed connection carries: the runtime cannot prove that nothing
//!    was lost, so the gap is never silent;
//! 3. sends a `session.ping` and maps whatever the runtime replays of the
//!    session until the matching `session.pong` (the runtime queues its
//!    replay before it reads anything, so the pong marks its end);
//! 4. sends `job.unsubscribe` (the runtime otherwise keeps feeding the job to
//!    the previous, dead connection of the same session after a second drop)
//!    and `job.subscribe {job_id, history: true, from_event_seq}`; the
//!    job's events then continue, renumbered by the runtime from 1;
//! 5. on `job.subscribed`, a job that already ended upstream (its terminal
//!    went to the dead connection) ends the gateway's job with an explicit
//!    error.
//!
//! Upstream `event_seq`s are not comparable across connections (each
//! connection, and each subscription, numbers from 1), so replays are
//! recognised by envelope id only ([`RecentIds`]): an id is unique to one
//! event, and the runtime's replays keep the ids it first sent. An event is
//! never dropped unless its id was mapped before.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{connect, envelope, hello_payload, job_envelope, Link, Params, Socket, Upstream};
use crate::ids::MessageId;
use crate::protocol::now_rfc3339;
use futures_util::StreamExt;

/// Reconnect attempts after one drop.
pub const MAX_ATTEMPTS: u32 = 3;
/// All attempts after one drop end within this time of it.
pub const BUDGET: Duration = Duration::from_secs(10);
/// The wait before each attempt (the runtime needs a moment to notice the
/// drop and keep the session resumable).
const BACKOFF: [Duration; MAX_ATTEMPTS as usize] = [
    Duration::from_millis(200),
    Duration::from_millis(1000),
    Duration::from_millis(3000),
];
/// Ids of the upstream events mapped last, kept for recognising replays.
const RECENT_IDS: usize = 16_384;

/// Ids of the upstream events mapped last (at most [`RECENT_IDS`]).
#[derive(Default)]
pub struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    /// Records `id`; false when it was already mapped (a replay). An event
    /// without an id cannot be recognised and counts as new.
    pub fn insert(&mut self, id: Option<&str>) -> bool {
        let Some(id) = id else { return true };
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == RECENT_IDS {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// Where a resume stands once the session is back.
pub enum Phase {
    /// The runtime's replay runs until the pong for this nonce.
    Replaying { nonce: String },
    /// `job.subscribe` sent; waiting for `job.subscribed`.
    Subscribing,
}

/// The reconnect budget of one drop (a drop before the resume completed
/// spends the same one).
pub struct Budget {
    deadline: Instant,
    attempts: u32,
}

impl Budget {
    pub fn start() -> Budget {
        Budget {
            deadline: Instant::now() + BUDGET,
            attempts: 0,
        }
    }
}

/// Reconnects and resumes the upstream session, then appends the warning.
/// `Err` says why it could not.
pub(super) async fn reconnect(
    params: &Params,
    out: &mpsc::Sender<Upstream>,
    link: &mut Link,
    budget: &mut Budget,
    dropped_at: &str,
) -> Result<Socket, String> {
    let mut last = String::from("no attempt left");
    while budget.attempts < MAX_ATTEMPTS {
        let wait = BACKOFF[budget.attempts as usize];
        budget.attempts += 1;
        tokio::time::sleep_until((Instant::now() + wait).min(budget.deadline)).await;
        let left = budget.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let attempt = attempt(params, link, left.min(params.connect_timeout));
        match tokio::time::timeout(left, attempt).await {
            Ok(Ok(mut socket)) => {
                let warning = format!(
                    "the upstream connection to {} at {} dropped at {dropped_at} and was resumed; \
                     events the runtime produced while disconnected may be missing",
                    params.upstream_agent, params.url
                );
                tracing::warn!(url = %params.url, dropped_at, "upstream ARCP session resumed after a drop");
                let line = json!({"kind": "log", "body": {"level": "warn", "message": warning}});
                // A job that ended meanwhile (cancel) still gets its goodbye.
                let _ = out.send(Upstream::Line(line)).await;
                let nonce = MessageId::generate().to_string();
                let ping = envelope(
                    "session.ping",
                    link.session_id.as_deref(),
                    json!({"nonce": nonce, "sent_at": now_rfc3339()}),
                );
                if socket.send(ping).await.is_err() {
                    last = "the connection closed again at once".into();
                    continue;
                }
                // `last_seq` stays: the replay continues the numbering the
                // runtime logged, and the subscription starts after it.
                link.resuming = Some(Phase::Replaying { nonce });
                return Ok(socket);
            }
            Ok(Err(why)) => {
                tracing::info!(url = %params.url, attempt = budget.attempts, %why, "upstream ARCP resume attempt failed");
                last = why;
            }
            Err(_) => last = "the reconnect budget ran out".into(),
        }
    }
    Err(format!(
        "{} attempts within {} s; last: {last}",
        budget.attempts,
        BUDGET.as_secs()
    ))
}

/// One connection and resume hello, up to the welcome.
async fn attempt(params: &Params, link: &mut Link, limit: Duration) -> Result<Socket, String> {
    let mut socket = connect(params, limit).await?;
    let mut hello = hello_payload(&params.token);
    hello["resume"] = json!({
        "session_id": link.session_id,
        "resume_token": link.resume_token,
        "last_event_seq": link.last_seq,
    });
    socket
        .send(envelope("session.hello", None, hello))
        .await
        .map_err(|_| "the connection closed at the resume hello".to_owned())?;
    loop {
        let text = match socket.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                return Err("the connection closed before the welcome".into())
            }
            Some(Ok(_)) => continue,
        };
        let Ok(Value::Object(message)) = crate::json::parse(text.as_bytes()) else {
            return Err("a message that is not a JSON object".into());
        };
        let payload = message.get("payload").cloned().unwrap_or(Value::Null);
        match message.get("type").and_then(Value::as_str) {
            Some("session.welcome") => {
                let same =
                    payload.get("session_id").and_then(Value::as_str) == link.session_id.as_deref();
                if !same {
                    return Err("the welcome is for another session".into());
                }
                link.resume_token = payload
                    .get("resume_token")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                return Ok(socket);
            }
            Some("session.error") => {
                return Err(format!(
                    "refused: {} {}",
                    payload
                        .get("code")
                        .and_then(Value::as_str)
                        .unwrap_or("(no code)"),
                    payload
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("(no message)")
                ))
            }
            _ => {}
        }
    }
}

/// Moves a resume on at a `session.pong` or `job.subscribed`; `Break` says
/// why the job cannot go on.
pub(super) async fn progress(
    socket: &mut Socket,
    link: &mut Link,
    message_type: &str,
    payload: &Value,
) -> std::ops::ControlFlow<String> {
    use std::ops::ControlFlow;
    let Some(job_id) = link.job_id.clone() else {
        return ControlFlow::Break("no job to resume".into());
    };
    match (&link.resuming, message_type) {
        (Some(Phase::Replaying { nonce }), "session.pong")
            if payload.get("ping_nonce").and_then(Value::as_str) == Some(nonce.as_str()) =>
        {
            let session_id = link.session_id.as_deref();
            let unsubscribe = job_envelope(
                "job.unsubscribe",
                session_id,
                &job_id,
                json!({"job_id": job_id}),
            );
            let subscribe = job_envelope(
                "job.subscribe",
                session_id,
                &job_id,
                json!({"job_id": job_id, "history": true, "from_event_seq": link.last_seq}),
            );
            if socket.send(unsubscribe).await.is_err() || socket.send(subscribe).await.is_err() {
                // The read side sees the drop next and resumes again.
                return ControlFlow::Continue(());
            }
            // The subscription numbers the job's events from 1 on this
            // connection, history and live alike.
            link.last_seq = 0;
            link.resuming = Some(Phase::Subscribing);
            ControlFlow::Continue(())
        }
        (Some(Phase::Subscribing), "job.subscribed")
            if payload.get("job_id").and_then(Value::as_str) == Some(job_id.as_str()) =>
        {
            let status = payload
                .get("current_status")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            if matches!(status, "success" | "error" | "cancelled" | "timed_out") {
                return ControlFlow::Break(format!(
                    "the job ended upstream ({status}) while the gateway was disconnected, \
                     and its terminal was never delivered"
                ));
            }
            link.resuming = None;
            ControlFlow::Continue(())
        }
        _ => ControlFlow::Continue(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_recognise_replays_and_stay_bounded() {
        let mut ids = RecentIds::default();
        assert!(ids.insert(Some("a")));
        assert!(!ids.insert(Some("a")), "a replay");
        assert!(ids.insert(None) && ids.insert(None), "no id: never dropped");
        for n in 0..RECENT_IDS {
            assert!(ids.insert(Some(&n.to_string())));
        }
        assert_eq!(ids.order.len(), RECENT_IDS);
        assert_eq!(ids.set.len(), RECENT_IDS);
        assert!(
            ids.insert(Some("a")),
            "forgotten after RECENT_IDS newer ones"
        );
    }
}
