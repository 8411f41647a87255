//! What each upstream message means for the job: the welcome is answered
//! with the `job.submit`, a `session.ping` with a pong; this job's
//! `job.event`s become agent lines and its `job.result` or `job.error` the
//! job's terminal (then `session.bye`); a `session.error` ends the job.
//! Replays of events already mapped are dropped, and while a resume is under
//! way its replies go to `resume.rs`.

use std::ops::ControlFlow;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{
    envelope, resume, retryable, upstream_failure, Link, Params, Socket, Upstream, GOODBYE_TIMEOUT,
};
use crate::ids::MessageId;
use crate::jobs::Terminal;
use crate::protocol::{now_rfc3339, ErrorCode, JobStatus};

/// The error of an upstream `session.error` or `job.error` payload.
fn upstream_error(payload: &Value) -> Value {
    json!({
        "code": payload.get("code").cloned().unwrap_or(json!("INTERNAL_ERROR")),
        "message": payload.get("message").cloned().unwrap_or(Value::Null),
        "retryable": payload.get("retryable").cloned().unwrap_or(Value::Null),
    })
}

/// Handles one upstream message; `Break` ends the session.
pub(super) async fn message(
    params: &Params,
    trace_id: &str,
    out: &mpsc::Sender<Upstream>,
    socket: &mut Socket,
    link: &mut Link,
    text: &[u8],
) -> ControlFlow<Result<(), Terminal>> {
    let url = params.url.as_str();
    // Depth and duplicate keys checked as for every agent's output; the
    // size is bounded by the socket's message limit.
    let Ok(Value::Object(message)) = crate::json::parse(text) else {
        return ControlFlow::Break(Err(upstream_failure(
            url,
            "sent a message that is not a JSON object",
        )));
    };
    let message_type = message
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let payload = message.get("payload").cloned().unwrap_or(Value::Null);
    let for_this_job = link.job_id.is_some()
        && message.get("job_id").and_then(Value::as_str) == link.job_id.as_deref();
    if for_this_job && matches!(message_type, "job.event" | "job.result" | "job.error") {
        if let Some(seq) = message.get("event_seq").and_then(Value::as_u64) {
            link.last_seq = link.last_seq.max(seq);
        }
        let id = message.get("id").and_then(Value::as_str);
        if !link.seen.insert(id) {
            tracing::debug!(url, "dropped an upstream replay of an event already mapped");
            return ControlFlow::Continue(());
        }
    }
    let line = match message_type {
        "session.welcome" if link.session_id.is_none() => {
            link.session_id = payload
                .get("session_id")
                .or_else(|| message.get("session_id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            link.resume_token = payload
                .get("resume_token")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let submit = json!({"arcp": "1.1", "id": MessageId::generate(), "type": "job.submit",
                                "session_id": link.session_id, "trace_id": trace_id,
                                "payload": params.submit});
            if socket
                .send(Message::text(submit.to_string()))
                .await
                .is_err()
            {
                return ControlFlow::Break(Err(upstream_failure(
                    url,
                    "closed the connection at the submit",
                )));
            }
            None
        }
        "session.ping" => {
            let pong = json!({"ping_nonce": payload.get("nonce"), "received_at": now_rfc3339()});
            let _ = socket
                .send(envelope("session.pong", link.session_id.as_deref(), pong))
                .await;
            None
        }
        "session.pong" | "job.subscribed" if link.resuming.is_some() => {
            return resume::progress(socket, link, message_type, &payload)
                .await
                .map_break(|why| {
                    Err(retryable(upstream_failure(
                        url,
                        &format!("could not resume the job after a dropped connection: {why}"),
                    )))
                });
        }
        "session.error" if link.resuming.is_some() => {
            return ControlFlow::Break(Err(retryable(upstream_failure(
                url,
                &format!(
                    "refused to resume the job after a dropped connection: {}",
                    payload
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("no message")
                ),
            ))))
        }
        "session.error" => {
            return ControlFlow::Break(Err(Terminal::failure(
                JobStatus::Error,
                payload
                    .get("code")
                    .and_then(Value::as_str)
                    .and_then(ErrorCode::parse)
                    .unwrap_or(ErrorCode::InternalError),
                format!(
                    "the upstream ARCP runtime refused: {}",
                    payload
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("no message")
                ),
            )))
        }
        "job.accepted" if link.job_id.is_none() => {
            link.job_id = payload
                .get("job_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            None
        }
        "job.event" if for_this_job => {
            link.events += 1;
            Some(json!({"kind": payload.get("kind"), "body": payload.get("body")}))
        }
        "job.result" if for_this_job => match payload.get("final_status").and_then(Value::as_str) {
            Some("success") => {
                Some(json!({"result": payload.get("result").cloned().unwrap_or(Value::Null)}))
            }
            Some("cancelled") => {
                return ControlFlow::Break(end(out, Terminal::cancelled(), socket).await)
            }
            Some("timed_out") => {
                let terminal = Terminal::failure(
                    JobStatus::TimedOut,
                    ErrorCode::Timeout,
                    "the upstream ARCP runtime timed the job out",
                );
                return ControlFlow::Break(end(out, terminal, socket).await);
            }
            _ => {
                return ControlFlow::Break(Err(upstream_failure(
                    url,
                    "ended the job with an unknown final_status",
                )))
            }
        },
        "job.error" if for_this_job => Some(json!({"error": upstream_error(&payload)})),
        _ => None,
    };
    let Some(line) = line else {
        return ControlFlow::Continue(());
    };
    let terminal = line.get("result").is_some() || line.get("error").is_some();
    if out.send(Upstream::Line(line)).await.is_err() {
        return ControlFlow::Continue(()); // the job ended meanwhile: the next turn says goodbye
    }
    if terminal {
        let bye = envelope(
            "session.bye",
            link.session_id.as_deref(),
            json!({"reason": "client.close"}),
        );
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            let _ = socket.send(bye).await;
            let _ = socket.close(None).await;
        })
        .await;
        return ControlFlow::Break(Ok(()));
    }
    ControlFlow::Continue(())
}

async fn end<S>(
    out: &mpsc::Sender<Upstream>,
    terminal: Terminal,
    socket: &mut S,
) -> Result<(), Terminal>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let _ = out.send(Upstream::End(terminal)).await;
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, socket.close()).await;
    Ok(())
}
