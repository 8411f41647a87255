//! The HTTP/1.1 fast path for event streams ([`super::detect`] chooses it).
//!
//! Why it exists: an idle stream served by hyper's HTTP/1 connection costs
//! about 11 KiB of resident memory, most of it two 8 KiB buffers (read and
//! header write) that hyper allocates per connection and cannot be told to
//! shrink, plus our pump task and its channel. A gateway holding tens of
//! thousands of quiet browser tabs pays that per tab. (Measured with
//! `cargo bench --bench gateway -- --only idle`; see docs/performance.md.)
//!
//! So when a connection opens with `GET <base>/v1/sessions/{id}/events`, the
//! request head (read and parsed with `httparse`, the parser hyper itself
//! uses, by [`super::detect`]) is answered by the same handler code as under hyper
//! ([`super::answer_event_stream`]), and the stream is written by the
//! connection's own task straight from the session's log: no per-connection
//! buffers, no pump task, no channel, one wake-up per event.
//!
//! Anything this path does not fully handle (HTTP/2, any other route or
//! method, a request with a body, bytes pipelined after the head) goes to
//! hyper with the bytes already read, so hyper's behaviour stays the rule;
//! this path is the exception for one well-understood request shape.
//!
//! Responses are HTTP/1.1 with chunked transfer coding (RFC 9112 §7.1), so
//! the connection can carry further requests once a stream ends on purpose;
//! HTTP/1.0 clients get a close-delimited body (RFC 9112 §6.3).

use std::io::IoSlice;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::http::request::Parts;
use hyper::{Method, Response, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::ResponseBody;
use super::browser::{strip_base_path, ConnectionInfo};
use super::direct::{DirectTap, SizeLine};
use super::router::{match_route, RouteId, RouteMatch};
use super::sse::{EventStream, Next, Stop, FINAL_FRAME_WAIT};
use super::{answer_event_stream, EventStreamAnswer};
use crate::config::Config;
use crate::ids::SessionId;
use crate::state::AppState;

/// A parsed `GET .../events` request head, already read from the socket.
pub struct EventStreamRequest {
    parts: Parts,
    session_id: SessionId,
    keep_alive: bool,
    chunked: bool,
}

/// The fast-path request for a complete, valid head ([`super::detect`]
/// parsed it), or `None` when hyper should serve it.
pub(super) fn event_stream_request(
    request: &httparse::Request<'_, '_>,
    config: &Config,
) -> Option<Box<EventStreamRequest>> {
    if request.method != Some("GET") {
        return None;
    }
    let version = match request.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return None,
    };
    let mut builder = hyper::Request::builder()
        .method(Method::GET)
        .uri(request.path.unwrap_or_default())
        .version(version);
    for field in request.headers.iter() {
        builder = builder.header(field.name, field.value);
    }
    let (parts, ()) = builder.body(()).ok()?.into_parts();
    // A GET with a body is legal but odd; hyper knows how to skip it.
    let has_body = parts.headers.contains_key(TRANSFER_ENCODING)
        || parts
            .headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|length| length.as_bytes() != b"0");
    if has_body {
        return None;
    }
    let path = strip_base_path(config, parts.uri.path())?;
    let session_id = match match_route(&Method::GET, path) {
        RouteMatch::Found {
            id: RouteId::SessionEvents,
            params,
        } => SessionId::from_client(params[0]),
        _ => return None,
    };
    let wants_close = parts.headers.get_all(CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    });
    let chunked = version == Version::HTTP_11;
    Some(Box::new(EventStreamRequest {
        parts,
        session_id,
        keep_alive: chunked && !wants_close,
        chunked,
    }))
}

/// Serves one event-stream request on `stream`. Returns the connection when
/// it may carry another request (the stream ended on purpose and both sides
/// keep the connection alive), `None` when it must close.
///
/// An idle stream's whole cost is mostly its task, and a task is as large
/// as its largest state. So the opening (the answer, a refusal, the head)
/// runs boxed and is freed once the stream is open, and the streaming
/// state holds only the stream, its socket and small waits (see
/// `server::tests` for the size it is held to).
pub async fn serve(
    state: Arc<AppState>,
    stream: TcpStream,
    request: Box<EventStreamRequest>,
    info: ConnectionInfo,
) -> Option<TcpStream> {
    let keep_alive = request.keep_alive;
    let chunked = request.chunked;
    let (socket, mut events) = match Box::pin(open(state, stream, request, info)).await {
        Opening::Streaming(socket, events) => (socket, events),
        Opening::Answered(kept) => return kept,
    };
    let ended_cleanly = write_stream(&socket, &mut events, chunked).await;
    drop(events);
    // The stream's tap let go of its handle: this one is the last.
    let stream = Arc::try_unwrap(socket).ok()?;
    (ended_cleanly && keep_alive).then_some(stream)
}

/// How an event-stream request was answered.
enum Opening {
    /// The head is written and the stream open, its tap on the socket.
    Streaming(Arc<TcpStream>, Box<EventStream>),
    /// Refused (the connection, if it may carry another request) or the
    /// head could not be written (`None`).
    Answered(Option<TcpStream>),
}

/// Answers the request: a refusal in full, or the stream's head.
async fn open(
    state: Arc<AppState>,
    mut stream: TcpStream,
    request: Box<EventStreamRequest>,
    info: ConnectionInfo,
) -> Opening {
    let EventStreamRequest {
        mut parts,
        session_id,
        keep_alive,
        chunked,
    } = *request;
    parts.extensions.insert(info);
    match answer_event_stream(&state, &parts, &session_id).await {
        EventStreamAnswer::Refused(response) => {
            let written = write_full_response(&mut stream, response, keep_alive).await;
            Opening::Answered((written.is_ok() && keep_alive).then_some(stream))
        }
        EventStreamAnswer::Stream(opened) => {
            drop(parts);
            let framing = if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            };
            let head = encode_head(&opened.head, framing);
            if stream.write_all(&head).await.is_err() {
                return Opening::Answered(None);
            }
            drop(head);
            let mut events = Box::new(EventStream::open(opened.plan).await);
            let socket = Arc::new(stream);
            events.attach_tap(|kick| DirectTap::new(socket.clone(), chunked, kick));
            Opening::Streaming(socket, events)
        }
    }
}

/// How a response body is delimited.
#[derive(Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The status line and header fields of a response.
fn encode_head(response: &Response<()>, framing: Framing) -> Vec<u8> {
    let status = response.status();
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(http_date().as_bytes());
    head.extend_from_slice(b"\r\n");
    match framing {
        Framing::Length(length) => {
            head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::UntilClose => head.extend_from_slice(b"connection: close\r\n"),
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Now as an IMF-fixdate (RFC 9110 §5.6.7), for the `Date` field.
fn http_date() -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// Writes a complete (non-stream) response, such as an ARCP error.
pub(super) async fn write_full_response(
    stream: &mut TcpStream,
    response: Response<ResponseBody>,
    keep_alive: bool,
) -> std::io::Result<()> {
    let (head, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let mut head = Response::from_parts(head, ());
    if !keep_alive {
        head.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let mut bytes = encode_head(&head, Framing::Length(body.len()));
    bytes.extend_from_slice(&body);
    stream.write_all(&bytes).await
}

/// Writes the stream until it ends. True when it ended on purpose with its
/// farewell and final chunk written, so the connection is still usable.
/// While the stream waits caught up, its tap (if it has one) writes on
/// the same socket; `next()` returns only once the tap is closed.
async fn write_stream(socket: &TcpStream, events: &mut EventStream, chunked: bool) -> bool {
    let mut watch_client = true;
    loop {
        let next = tokio::select! {
            biased;
            gone = client_left(socket), if watch_client => {
                if gone {
                    events.end(Stop::ClientGone);
                    return false;
                }
                // The client sent more bytes (a pipelined request): leave
                // them for after the stream; write failures still notice a
                // departed client.
                watch_client = false;
                continue;
            }
            next = events.next() => next,
        };
        // The end of a frame the tap wrote in part goes first, whatever
        // comes next, or the framing is torn.
        if let Some(unfinished) = events.take_unfinished() {
            if !write_chunk(socket, events, &unfinished, false).await {
                return false;
            }
        }
        match next {
            Next::Chunk(chunk) => {
                // A stop already due skips the chunk, so the farewell still
                // goes out on a well-framed stream.
                if let Some(stop) = events.interrupted_now() {
                    events.end(stop);
                    continue;
                }
                if !write_chunk(socket, events, &chunk, chunked).await {
                    return false;
                }
            }
            Next::Farewell(bytes) => {
                // Boxed, as is the last chunk below: once per stream, and
                // inline they would size the task for its whole life.
                let written = Box::pin(tokio::time::timeout(
                    FINAL_FRAME_WAIT,
                    write_body(socket, &bytes, chunked),
                ))
                .await;
                if !matches!(written, Ok(Ok(()))) {
                    return false;
                }
            }
            Next::End => {
                if !chunked {
                    return false;
                }
                let written = Box::pin(tokio::time::timeout(
                    FINAL_FRAME_WAIT,
                    write_raw(socket, b"0\r\n\r\n"),
                ))
                .await;
                return matches!(written, Ok(Ok(())));
            }
        }
    }
}

/// Writes one chunk of the stream (framed for chunked transfer coding
/// when asked). False when the stream must close: the client is gone, or a
/// stop came mid-write and tore the framing (a slow client must not delay
/// shutdown).
async fn write_chunk(
    socket: &TcpStream,
    events: &mut EventStream,
    chunk: &Bytes,
    chunked: bool,
) -> bool {
    // The write first: one that completes at once (the usual case) never
    // polls the wait; one that blocks races it.
    let written = tokio::select! {
        biased;
        written = write_body(socket, chunk, chunked) => Ok(written),
        stop = events.interrupted() => Err(stop),
    };
    match written {
        Ok(Ok(())) => true,
        Ok(Err(_)) => {
            events.end(Stop::ClientGone);
            false
        }
        Err(stop) => {
            events.end(stop);
            false
        }
    }
}

/// Completes when the client closed its side (true) or sent bytes (false).
/// Only peeks, so pipelined bytes stay for the next request.
/// (`poll_peek` rather than `peek`: it waits in the socket's own slot for
/// its task, where `peek` carries a waiter of its own in the task.)
async fn client_left(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    let peeked = std::future::poll_fn(|context| {
        stream.poll_peek(context, &mut tokio::io::ReadBuf::new(&mut probe))
    })
    .await;
    matches!(peeked, Ok(0) | Err(_))
}

/// Writes one body chunk, framed for chunked transfer coding when asked.
async fn write_body(socket: &TcpStream, data: &Bytes, chunked: bool) -> std::io::Result<()> {
    if data.is_empty() {
        // An empty chunk would end a chunked body.
        return Ok(());
    }
    if !chunked {
        return write_raw(socket, data).await;
    }
    let size_line = SizeLine::new(data.len());
    let mut slices = [
        IoSlice::new(size_line.as_bytes()),
        IoSlice::new(data),
        IoSlice::new(b"\r\n"),
    ];
    write_all_vectored(socket, &mut slices).await
}

async fn write_raw(socket: &TcpStream, data: &[u8]) -> std::io::Result<()> {
    write_all_vectored(socket, &mut [IoSlice::new(data)]).await
}

/// Writes every byte of `slices` (none empty) through a shared handle on the
/// socket, which its [`DirectTap`] also writes through when open.
async fn write_all_vectored(
    socket: &TcpStream,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        // The socket's own slot for its task, as in `client_left`.
        std::future::poll_fn(|context| socket.poll_write_ready(context)).await?;
        match socket.try_write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::development()
    }

    fn parse(head: &str, config: &Config) -> Option<Box<EventStreamRequest>> {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut fields);
        match request.parse(head.as_bytes()) {
            Ok(httparse::Status::Complete(_)) => event_stream_request(&request, config),
            _ => None,
        }
    }

    fn parsed(head: &str) -> Option<Box<EventStreamRequest>> {
        parse(head, &config())
    }

    #[test]
    fn a_plain_event_stream_request_takes_the_fast_path() {
        let head =
            "GET /v1/sessions/sess_a/events?x=1 HTTP/1.1\r\nHost: h\r\nLast-Event-ID: 7\r\n\r\n";
        let request = parsed(head).expect("fast path");
        assert_eq!(request.session_id.as_str(), "sess_a");
        assert!(request.keep_alive && request.chunked);
        assert_eq!(request.parts.headers["last-event-id"], "7");
        assert_eq!(request.parts.uri.query(), Some("x=1"));
    }

    #[test]
    fn http_1_0_and_connection_close_turn_off_keep_alive() {
        let old = parsed("GET /v1/sessions/s/events HTTP/1.0\r\n\r\n").expect("fast path");
        assert!(!old.keep_alive && !old.chunked);
        let close =
            parsed("GET /v1/sessions/s/events HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n")
                .expect("fast path");
        assert!(!close.keep_alive && close.chunked);
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            "POST /v1/sessions/s/events HTTP/1.1\r\n\r\n",
            "GET /v1/sessions/s HTTP/1.1\r\n\r\n",
            "GET /healthz HTTP/1.1\r\n\r\n",
            "GET /v1/sessions/s/events HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            "GET /v1/sessions/s/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(parsed(head).is_none(), "{head:?}");
        }
    }

    #[test]
    fn the_base_path_applies() {
        let mut config = config();
        config.base_path = "/arcp".into();
        let inside = "GET /arcp/v1/sessions/s/events HTTP/1.1\r\n\r\n";
        assert!(parse(inside, &config).is_some());
        let outside = "GET /v1/sessions/s/events HTTP/1.1\r\n\r\n";
        assert!(parse(outside, &config).is_none());
    }

    #[test]
    fn heads_carry_framing_and_a_date() {
        let mut response = Response::new(());
        response.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        let head = String::from_utf8(encode_head(&response, Framing::Chunked)).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ndate: "));
        assert!(
            head.ends_with(" GMT\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
        let head = String::from_utf8(encode_head(&response, Framing::Length(12))).unwrap();
        assert!(head.ends_with("content-length: 12\r\n\r\n"));
    }
}
