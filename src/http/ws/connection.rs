//! One WebSocket connection: the `session.hello` handshake (new session or
//! resume), then a loop that answers the client's requests and writes the
//! session's log as it grows.
//!
//! Memory per connection is bounded: one batch of log entries read ahead
//! ([`ENTRY_READ_LIMIT`]) and a send queue of [`SEND_QUEUE`] messages drained
//! by a writer task. The log is read only when the previous batch has been
//! queued, so a slow reader is served at its own pace from the log, as an
//! SSE stream is; a reader that accepts nothing for [`WRITE_STALL`] is cut
//! off (its session stays resumable). What each request gets back is in
//! `connection/requests.rs`.

mod requests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::metrics::Transport;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::frames;
use crate::event_log::ReadLimit;
use crate::http::credentials::{is_resume_token, now_unix, token_error, Caller};
use crate::http::error::ApiError;
use crate::http::handlers::{attach_stream, open_session, AttachedStream, HelloCapabilities};
use crate::http::sse::{EventStream, Stop, StreamPlan, Waited, FINAL_FRAME_WAIT};
use crate::ids::{EventSeq, MessageId, SessionId};
use crate::protocol::{now_rfc3339, Envelope};
use crate::session::Session;
use crate::state::AppState;

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Messages queued between the connection and its writer.
const SEND_QUEUE: usize = 16;

/// Log entries read ahead at once.
const ENTRY_READ_LIMIT: ReadLimit = ReadLimit {
    max_entries: 64,
    max_bytes: 256 * 1024,
};

/// A client that accepts no data for this long is disconnected.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Why the connection ends, and what the client is told.
enum Ending {
    /// The client closed, vanished or said `session.bye`: nothing to say.
    ClientGone,
    /// Say goodbye (`session.bye`) and close with this code.
    Bye(&'static str, CloseCode),
    /// `session.error`, then close with this code.
    Error(ApiError, CloseCode),
}

pub async fn run(state: Arc<AppState>, socket: Socket) {
    let (sink, mut source) = socket.split();
    let (out, queue) = mpsc::channel::<Message>(SEND_QUEUE);
    let writer = tokio::spawn(write_queue(sink, queue));
    let ending = match opened(&state, &mut source).await {
        Ok(attached) => serve(&state, attached, &out, &mut source).await,
        Err(error) => {
            let code = match error {
                ApiError::Unauthenticated(_) | ApiError::PermissionDenied(_) => CloseCode::Policy,
                _ => CloseCode::Protocol,
            };
            (Ending::Error(error, code), None)
        }
    };
    let (ending, session_id) = ending;
    let (last_words, code) = match ending {
        Ending::ClientGone => (None, CloseCode::Normal),
        Ending::Bye(reason, code) => {
            let payload = json!({ "reason": reason });
            let bye = session_id
                .as_ref()
                .map(|id| frames::control(&Envelope::new("session.bye", id, &payload)));
            (bye, code)
        }
        Ending::Error(error, code) => (
            Some(frames::session_error(session_id.as_ref(), &error, None)),
            code,
        ),
    };
    let farewell = async {
        if let Some(message) = last_words {
            out.send(message).await.ok()?;
        }
        let close = CloseFrame {
            code,
            reason: "".into(),
        };
        out.send(Message::Close(Some(close))).await.ok()
    };
    let _ = tokio::time::timeout(FINAL_FRAME_WAIT, farewell).await;
    drop(out);
    let _ = tokio::time::timeout(FINAL_FRAME_WAIT, writer).await;
}

/// Drains the send queue into the socket, flushing when the queue is empty.
async fn write_queue(mut sink: SplitSink<Socket, Message>, mut queue: mpsc::Receiver<Message>) {
    'outer: while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take().or_else(|| queue.try_recv().ok()) {
            let closing = matches!(message, Message::Close(_));
            match tokio::time::timeout(WRITE_STALL, sink.feed(message)).await {
                Ok(Ok(())) if !closing => {}
                _ => break 'outer,
            }
        }
        match tokio::time::timeout(WRITE_STALL, sink.flush()).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    let _ = tokio::time::timeout(FINAL_FRAME_WAIT, sink.close()).await;
}

#[derive(Deserialize)]
struct Hello {
    #[serde(default)]
    auth: Option<HelloAuth>,
    #[serde(default)]
    capabilities: Option<HelloCapabilities>,
    #[serde(default)]
    resume: Option<HelloResume>,
}

#[derive(Deserialize)]
struct HelloAuth {
    #[serde(default)]
    token: Option<String>,
}

/// The resume block of the official SDKs' `session.hello` (§6.3 resume,
/// carried on a hello rather than a `session.resume` message).
#[derive(Deserialize)]
struct HelloResume {
    session_id: String,
    resume_token: String,
    last_event_seq: EventSeq,
}

/// Waits (bounded) for the `session.hello` and opens or resumes its
/// session: authenticated by `payload.auth.token` (§6.1), then a new
/// session, or the resumed one with its token rotated and its cursor
/// checked exactly as an SSE reconnect's.
async fn opened(
    state: &AppState,
    source: &mut SplitStream<Socket>,
) -> Result<AttachedStream, ApiError> {
    let deadline = state.config.ws_hello_timeout;
    let first = tokio::time::timeout(deadline, source.next())
        .await
        .map_err(|_| {
            ApiError::InvalidRequest(format!(
                "no session.hello within {} ms",
                deadline.as_millis()
            ))
        })?;
    let text = match first {
        Some(Ok(Message::Text(text))) => text,
        Some(Err(error)) => return Err(read_error(&error)),
        _ => {
            return Err(ApiError::InvalidRequest(
                "the first message must be a session.hello text message".into(),
            ))
        }
    };
    let inbound = frames::parse_inbound(text.as_str())?;
    if inbound.message_type != "session.hello" {
        return Err(ApiError::InvalidRequest(
            "the first message must be a session.hello".into(),
        ));
    }
    let hello: Hello = frames::payload(&inbound)?;
    let token = hello
        .auth
        .and_then(|auth| auth.token)
        .ok_or_else(|| ApiError::Unauthenticated("missing payload.auth.token".into()))?;
    if is_resume_token(&token) {
        return Err(ApiError::Unauthenticated(
            "payload.auth.token must be an api token, not a resume token".into(),
        ));
    }
    let principal = state
        .api_tokens
        .authenticate(&token)
        .ok_or_else(|| ApiError::Unauthenticated("unknown api token".into()))?;
    match hello.resume {
        None => {
            let (session, _) = open_session(
                state,
                principal.clone(),
                hello.capabilities.unwrap_or_default(),
            )
            .await?;
            let caller = Caller {
                principal,
                resume: None,
            };
            attach_stream(state, &caller, &session.id, None).await
        }
        Some(resume) => {
            let claims = state
                .token_keys
                .verify(&resume.resume_token, now_unix())
                .map_err(token_error)?;
            if claims.session_id.as_str() != resume.session_id {
                return Err(ApiError::PermissionDenied(
                    "the resume token belongs to another session".into(),
                ));
            }
            if claims.principal != principal {
                return Err(ApiError::PermissionDenied(
                    "the resume token belongs to a different principal than the api token".into(),
                ));
            }
            let session_id = claims.session_id.clone();
            let caller = Caller {
                principal,
                resume: Some(claims),
            };
            attach_stream(state, &caller, &session_id, Some(resume.last_event_seq)).await
        }
    }
}

/// The error for a failed read: an over-limit message is named as such.
fn read_error(error: &WsError) -> ApiError {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            ApiError::InvalidRequest(format!(
                "message of {size} bytes exceeds this connection's limit of {max_size} bytes"
            ))
        }
        other => ApiError::InvalidRequest(format!("unreadable WebSocket message: {other}")),
    }
}

/// An open session on this connection.
struct Connection<'a> {
    state: &'a AppState,
    caller: Caller,
    session: Arc<Session>,
    out: &'a mpsc::Sender<Message>,
    /// When a heartbeat we sent started waiting for any sign of life.
    unanswered_since: Option<Instant>,
}

async fn serve(
    state: &Arc<AppState>,
    attached: AttachedStream,
    out: &mpsc::Sender<Message>,
    source: &mut SplitStream<Socket>,
) -> (Ending, Option<SessionId>) {
    let session = attached.session;
    let session_id = session.id.clone();
    let caller = Caller {
        principal: session.principal.clone(),
        // The claims were consumed by the attach; requests on this
        // connection are the session's own.
        resume: None,
    };
    let mut stream = EventStream::open_for_entries(StreamPlan {
        log: state.log_reader(&session_id),
        session: session.clone(),
        stream_id: attached.stream_id,
        cursor: attached.cursor,
        prelude: Bytes::new(),
        heartbeat: state.config.heartbeat_interval,
        shutdown: state.shutdown.clone(),
        max_duration: None,
        retry: state.config.retry,
        metrics: state.metrics.clone(),
        transport: Transport::WebSocket,
    })
    .await;
    if out.send(frames::value(&attached.welcome)).await.is_err() {
        return (Ending::ClientGone, Some(session_id));
    }
    let mut connection = Connection {
        state,
        caller,
        session,
        out,
        unanswered_since: None,
    };
    let limit = state.config.ws_max_frame_bytes;
    let mut pending: VecDeque<Message> = VecDeque::new();
    let ending = loop {
        tokio::select! {
            biased;
            inbound = source.next() => {
                connection.unanswered_since = None;
                let outcome = match inbound {
                    None | Some(Ok(Message::Close(_))) => Some(Ending::ClientGone),
                    Some(Err(WsError::Capacity(error))) => Some(Ending::Error(
                        read_error(&WsError::Capacity(error)),
                        CloseCode::Size,
                    )),
                    Some(Err(_)) => Some(Ending::ClientGone),
                    Some(Ok(Message::Text(text))) => connection.request(text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => connection.refuse(
                        ApiError::InvalidRequest("ARCP envelopes travel as text messages".into()),
                        None,
                    ).await,
                    Some(Ok(_)) => None,
                };
                if let Some(ending) = outcome {
                    break ending;
                }
            }
            permit = out.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(message) = pending.pop_front() {
                        permit.send(message);
                    }
                }
                Err(_) => break Ending::ClientGone,
            },
            next = stream.next_entries(ENTRY_READ_LIMIT), if pending.is_empty() => match next {
                Ok(Waited::Read(entries)) => {
                    pending.extend(entries.iter().map(|entry| frames::job_message(entry, limit)));
                }
                Ok(Waited::Heartbeat) => {
                    if let Some(ending) = connection.heartbeat().await {
                        break ending;
                    }
                }
                Err(stop) => break stopped(stop, &connection.session),
            },
        }
    };
    (ending, Some(session_id))
}

/// What the client hears when the gateway ends its stream.
fn stopped(stop: Stop, session: &Session) -> Ending {
    tracing::debug!(session = %session.id, reason = stop.reason(), "websocket stream ended");
    match stop {
        Stop::ClientGone => Ending::ClientGone,
        Stop::Shutdown | Stop::MaxDuration => Ending::Bye("gateway shutting down", CloseCode::Away),
        Stop::Replaced if session.is_closed() => Ending::Bye("session closed", CloseCode::Normal),
        Stop::Replaced => Ending::Bye("superseded by a newer stream", CloseCode::Normal),
        // 1013 "try again later": the client resumes once Redis is back.
        Stop::StoreUnavailable => Ending::Error(
            ApiError::StoreUnavailable("the shared store cannot be read".into()),
            CloseCode::Again,
        ),
        Stop::LogGone => Ending::Error(
            ApiError::ResumeWindowExpired(
                "the session's log no longer covers this stream; cannot continue without a gap"
                    .into(),
            ),
            CloseCode::Policy,
        ),
    }
}

impl Connection<'_> {
    /// Queues a message; `Some` when the client is gone.
    async fn send(&self, message: Message) -> Option<Ending> {
        match self.out.send(message).await {
            Ok(()) => None,
            Err(_) => Some(Ending::ClientGone),
        }
    }

    async fn refuse(&self, error: ApiError, request_id: Option<&str>) -> Option<Ending> {
        tracing::debug!(session = %self.session.id, code = error.code().as_str(), "websocket request refused");
        self.send(frames::session_error(
            Some(&self.session.id),
            &error,
            request_id,
        ))
        .await
    }

    /// A heartbeat tick on an idle connection (§6.4): a `session.ping` when
    /// the session negotiated `heartbeat` (a WebSocket ping otherwise); a
    /// client silent for two intervals after one is treated as gone, and
    /// its session stays resumable.
    async fn heartbeat(&mut self) -> Option<Ending> {
        let interval = self.state.config.heartbeat_interval;
        if let Some(since) = self.unanswered_since {
            if since.elapsed() >= interval * 2 {
                return Some(Ending::Error(ApiError::HeartbeatLost, CloseCode::Away));
            }
        }
        let message = if self.session.has_feature("heartbeat") {
            let payload = json!({ "nonce": MessageId::generate(), "sent_at": now_rfc3339() });
            frames::control(&Envelope::new("session.ping", &self.session.id, &payload))
        } else {
            Message::Ping(Bytes::new())
        };
        self.unanswered_since.get_or_insert_with(Instant::now);
        self.send(message).await
    }

    /// Answers one text message. `Some` ends the connection.
    async fn request(&mut self, text: &str) -> Option<Ending> {
        let inbound = match frames::parse_inbound(text) {
            Ok(inbound) => inbound,
            Err(error) => return self.refuse(error, None).await,
        };
        let request_id = inbound.id.clone();
        match inbound.message_type.as_str() {
            "session.bye" => return Some(Ending::ClientGone),
            "session.close" => {
                if let Err(error) = self.state.close_session(&self.session).await {
                    return self.refuse(error.into(), request_id.as_deref()).await;
                }
                let payload = json!({
                    "closed_at": now_rfc3339(),
                    "resume_window_sec": self.state.config.resume_window.as_secs(),
                });
                let closed = Envelope::new("session.closed", &self.session.id, &payload);
                let _ = self.send(frames::control(&closed)).await;
                return Some(Ending::Bye("session closed", CloseCode::Normal));
            }
            _ => {}
        }
        match self.answer(&inbound).await {
            Ok(Some(message)) => self.send(message).await,
            Ok(None) => None,
            Err(error) => self.refuse(error, request_id.as_deref()).await,
        }
    }
}
