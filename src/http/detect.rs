//! Protocol detection: one step that reads a connection's request head into a
//! small buffer under a deadline, validates it, and says who serves the
//! connection, handing the bytes read on ([`Rewind`]), as hyper-util's `auto`
//! connection and linkerd2-proxy's `detect` do.
//!
//! - The HTTP/2 client preface (RFC 9113 §3.4): hyper's HTTP/2 server.
//! - An HTTP/1.x `GET <base>/v1/sessions/{id}/events` with no body: the
//!   event-stream fast path ([`super::h1_stream`]).
//! - Any other valid HTTP/1.x head: hyper's HTTP/1 server.
//! - A head that is malformed (400), over [`MAX_HEAD_BYTES`] or
//!   [`MAX_HEADER_FIELDS`] (431), or not complete within the header timeout
//!   (408) gets an ARCP error body and the connection is closed; hyper never
//!   sees it. A connection that sends nothing before the deadline, or closes,
//!   is dropped without an answer.
//!
//! The buffer starts at 1 KiB and grows only as a head needs; it is freed
//! once the head has been handed on (by the fast path at once, by [`Rewind`]
//! as soon as hyper has read it). A trickled head is parsed again only when
//! a read brings a line end, so dribbling bytes costs no re-parsing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::ApiError;
use super::h1_stream::{self, EventStreamRequest};
use crate::config::Config;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest request head accepted (request line and every field).
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// The most header fields a request head may carry (hyper's own default).
pub const MAX_HEADER_FIELDS: usize = 100;

/// The detection buffer's first size; it doubles as a head needs.
const INITIAL_BUFFER: usize = 1024;

/// Who serves a connection, and the bytes already read from it.
pub enum Detected {
    /// HTTP/2 with prior knowledge; the bytes read start with the preface.
    Http2(Bytes),
    /// An event-stream request for the fast path; its head was consumed and
    /// nothing followed it.
    EventStream(Box<EventStreamRequest>),
    /// A valid HTTP/1.x head (and whatever followed it) for hyper.
    Http1(Bytes),
    /// Answer with this error and close.
    Refused(ApiError),
    /// Closed, failed, or silent until the deadline: drop it.
    Closed,
}

/// What the bytes read so far say.
pub(crate) enum Classified {
    NeedMore,
    Http2,
    EventStream(Box<EventStreamRequest>),
    Http1,
    Refused(ApiError),
}

/// The head buffer and what it holds so far.
pub(crate) struct Detector {
    buffer: Vec<u8>,
    filled: usize,
}

impl Detector {
    pub(crate) fn new() -> Detector {
        Detector {
            buffer: vec![0; INITIAL_BUFFER],
            filled: 0,
        }
    }

    /// Room for the next read; empty once the head limit is reached.
    fn spare(&mut self) -> &mut [u8] {
        if self.filled == self.buffer.len() && self.buffer.len() < MAX_HEAD_BYTES {
            let grown = (self.buffer.len() * 2).min(MAX_HEAD_BYTES);
            self.buffer.resize(grown, 0);
        }
        &mut self.buffer[self.filled..]
    }

    /// Takes `read` more bytes (just written into [`Detector::spare`]) and
    /// classifies the whole.
    fn advance(&mut self, read: usize, config: &Config) -> Classified {
        let before = self.filled;
        self.filled += read;
        let seen = &self.buffer[..self.filled];
        if seen.len() < HTTP2_PREFACE.len() && HTTP2_PREFACE.starts_with(seen) {
            return Classified::NeedMore;
        }
        if seen.starts_with(HTTP2_PREFACE) {
            return Classified::Http2;
        }
        // A head can only complete, or fail at a new line, on a line end;
        // the first bytes are checked at once too, so that a peer speaking
        // something else (TLS, say) is refused rather than left waiting.
        let newline = seen[before..].contains(&b'\n');
        if newline || before == 0 {
            let classified = classify_http1(seen, config);
            if !matches!(classified, Classified::NeedMore) {
                return classified;
            }
        }
        if self.filled >= MAX_HEAD_BYTES {
            return Classified::Refused(ApiError::HeadTooLarge {
                limit: MAX_HEAD_BYTES,
            });
        }
        Classified::NeedMore
    }

    /// Feeds `bytes` as if read from a socket (what fits under the limit).
    #[cfg(test)]
    pub(crate) fn push(&mut self, mut bytes: &[u8], config: &Config) -> Classified {
        loop {
            let spare = self.spare();
            let taken = bytes.len().min(spare.len());
            spare[..taken].copy_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
            let classified = self.advance(taken, config);
            if bytes.is_empty() || !matches!(classified, Classified::NeedMore) {
                return classified;
            }
        }
    }

    fn into_bytes(mut self) -> Bytes {
        self.buffer.truncate(self.filled);
        Bytes::from(self.buffer)
    }
}

/// Parses and validates an HTTP/1.x head.
fn classify_http1(bytes: &[u8], config: &Config) -> Classified {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Classified::NeedMore,
        Err(httparse::Error::TooManyHeaders) => {
            return Classified::Refused(ApiError::HeadTooLarge {
                limit: MAX_HEAD_BYTES,
            })
        }
        Err(error) => return Classified::Refused(ApiError::MalformedHead(error.to_string())),
    };
    if let Err(reason) = check_head(&request) {
        return Classified::Refused(ApiError::MalformedHead(reason.into()));
    }
    if length == bytes.len() {
        if let Some(stream) = h1_stream::event_stream_request(&request, config) {
            return Classified::EventStream(stream);
        }
    }
    Classified::Http1
}

/// What hyper would refuse in a head httparse accepts, checked here so the
/// refusal is an ARCP error (RFC 9112 §3.2, §6.1, §6.3).
fn check_head(request: &httparse::Request<'_, '_>) -> Result<(), &'static str> {
    let target = request.path.unwrap_or_default();
    if target.parse::<hyper::Uri>().is_err() {
        return Err("the request target is not a valid URI");
    }
    let mut length = None;
    let mut transfer_codings = Vec::new();
    for field in request.headers.iter() {
        if field.name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str()) {
            // A list of equal values is allowed (RFC 9110 §8.6); digits only.
            for value in field.value.split(|byte| *byte == b',') {
                let value = value.trim_ascii();
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|text| text.parse::<u64>().ok())
                    .ok_or("invalid Content-Length")?;
                if length.is_some_and(|previous| previous != parsed) {
                    return Err("conflicting Content-Length values");
                }
                length = Some(parsed);
            }
        } else if field.name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str()) {
            transfer_codings.extend(
                field
                    .value
                    .split(|byte| *byte == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|coding| !coding.is_empty()),
            );
        }
    }
    if transfer_codings.is_empty() {
        return Ok(());
    }
    if request.version == Some(0) {
        return Err("Transfer-Encoding is not defined for HTTP/1.0");
    }
    if length.is_some() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if !transfer_codings
        .last()
        .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
    {
        return Err("the last transfer coding must be chunked");
    }
    Ok(())
}

/// Detects a new connection: its head must be complete within the header
/// timeout from now.
pub async fn detect_first(stream: &mut TcpStream, config: &Config) -> Detected {
    let deadline = Instant::now() + config.connections.header_timeout;
    detect(stream, config, deadline, None).await
}

/// Detects the next request on a kept-alive connection: its first byte
/// within the idle timeout, the rest of its head within the header timeout
/// of that.
pub async fn detect_next(stream: &mut TcpStream, config: &Config) -> Detected {
    let deadline = Instant::now() + config.connections.idle_timeout;
    detect(
        stream,
        config,
        deadline,
        Some(config.connections.header_timeout),
    )
    .await
}

async fn detect(
    stream: &mut TcpStream,
    config: &Config,
    mut deadline: Instant,
    head_time_after_first_byte: Option<Duration>,
) -> Detected {
    let mut detector = Detector::new();
    loop {
        let read = match tokio::time::timeout_at(deadline, stream.read(detector.spare())).await {
            Err(_) if detector.filled == 0 => return Detected::Closed,
            Err(_) => return Detected::Refused(ApiError::HeadTimeout),
            Ok(Ok(0) | Err(_)) => return Detected::Closed,
            Ok(Ok(read)) => read,
        };
        if detector.filled == 0 {
            if let Some(window) = head_time_after_first_byte {
                deadline = Instant::now() + window;
            }
        }
        match detector.advance(read, config) {
            Classified::NeedMore => {}
            Classified::Http2 => return Detected::Http2(detector.into_bytes()),
            Classified::EventStream(request) => return Detected::EventStream(request),
            Classified::Http1 => return Detected::Http1(detector.into_bytes()),
            Classified::Refused(error) => return Detected::Refused(error),
        }
    }
}

/// An IO that first replays bytes already read from `inner`, then reads
/// `inner` itself. The replayed bytes are freed once read.
pub struct Rewind<T> {
    prefix: Option<Bytes>,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Rewind<T> {
        Rewind {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(prefix) = self.prefix.as_mut() {
            let taken = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..taken]);
            prefix.advance(taken);
            if prefix.is_empty() {
                self.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a refusal may take to write, and how long the connection then
/// lingers (reading and discarding) so the client sees the answer rather
/// than a reset.
const REFUSAL_WRITE_WAIT: Duration = Duration::from_secs(1);
const REFUSAL_LINGER: Duration = Duration::from_millis(100);
const REFUSAL_LINGER_BYTES: usize = 64 * 1024;

/// Writes `error` as an ARCP error response with `Connection: close`, then
/// closes the connection.
pub async fn refuse(mut stream: TcpStream, error: &ApiError) {
    let response = super::body::error_response(error);
    let written = tokio::time::timeout(
        REFUSAL_WRITE_WAIT,
        h1_stream::write_full_response(&mut stream, response, false),
    )
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    let linger = async {
        let mut discard = [0u8; 512];
        let mut total = 0;
        while total < REFUSAL_LINGER_BYTES {
            match stream.read(&mut discard).await {
                Ok(0) | Err(_) => return,
                Ok(read) => total += read,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> Config {
        Config::development()
    }

    fn whole(bytes: &[u8]) -> Classified {
        Detector::new().push(bytes, &config())
    }

    /// Feeds `bytes` in pieces split at `cuts`; the first answer that is not
    /// `NeedMore`, or `NeedMore`.
    fn chunked(bytes: &[u8], cuts: &[usize]) -> Classified {
        let mut detector = Detector::new();
        let mut start = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        for cut in cuts {
            if cut < start {
                continue;
            }
            let classified = detector.push(&bytes[start..cut], &config());
            if !matches!(classified, Classified::NeedMore) {
                return classified;
            }
            start = cut;
        }
        Classified::NeedMore
    }

    fn kind(classified: &Classified) -> String {
        match classified {
            Classified::NeedMore => "more".into(),
            Classified::Http2 => "h2".into(),
            Classified::EventStream(_) => "events".into(),
            Classified::Http1 => "h1".into(),
            Classified::Refused(error) => format!("refused {}", error.status()),
        }
    }

    #[test]
    fn heads_are_sorted_to_their_servers() {
        for (head, expected) in [
            (
                "GET /v1/sessions/s/events HTTP/1.1\r\nHost: h\r\n\r\n",
                "events",
            ),
            ("GET /v1/sessions/s/events HTTP/1.0\r\n\r\n", "events"),
            // Bytes after the head (pipelined, or a body): hyper's.
            ("GET /v1/sessions/s/events HTTP/1.1\r\n\r\nGET /", "h1"),
            ("GET /healthz HTTP/1.1\r\n\r\n", "h1"),
            (
                "POST /v1/sessions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                "h1",
            ),
            (
                "POST /v1/sessions HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "h1",
            ),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2"),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0", "h2"),
            ("PRI * HTTP/2.0\r\n", "more"),
            ("GET /healthz HTTP/1.1\r\nHost:", "more"),
            (
                "GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
                "refused 400 Bad Request",
            ),
            ("NONSENSE\r\n\r\n", "refused 400 Bad Request"),
            ("GET /healthz HTTP/2.0\r\n\r\n", "refused 400 Bad Request"),
            (
                "GET http://[::1/ HTTP/1.1\r\n\r\n",
                "refused 400 Bad Request",
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                "refused 400 Bad Request",
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                "refused 400 Bad Request",
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "refused 400 Bad Request",
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "refused 400 Bad Request",
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "refused 400 Bad Request",
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "refused 400 Bad Request",
            ),
        ] {
            assert_eq!(kind(&whole(head.as_bytes())), expected, "{head:?}");
        }
        let many_fields = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(101));
        assert_eq!(
            kind(&whole(many_fields.as_bytes())),
            "refused 431 Request Header Fields Too Large"
        );
        let too_long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            kind(&whole(too_long.as_bytes())),
            "refused 431 Request Header Fields Too Large"
        );
    }

    #[test]
    fn rewind_replays_its_prefix_then_the_inner_reader() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut rewind = Rewind::new(Bytes::from_static(b"hello "), &b"world"[..]);
            let mut all = String::new();
            rewind.read_to_string(&mut all).await.unwrap();
            assert_eq!(all, "hello world");
            assert!(rewind.prefix.is_none());
        });
    }

    fn valid_head() -> impl Strategy<Value = String> {
        let method = prop_oneof![Just("GET"), Just("POST"), Just("DELETE"), Just("OPTIONS")];
        let path = prop_oneof![
            Just("/v1/sessions/s1/events".to_owned()),
            Just("/healthz".to_owned()),
            "/[a-z0-9/]{0,30}".prop_map(|p| p),
        ];
        let version = prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")];
        let fields =
            proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,40}"), 0..12);
        (method, path, version, fields).prop_map(|(method, path, version, fields)| {
            let mut head = format!("{method} {path} {version}\r\n");
            for (name, value) in fields {
                // Framing fields are exercised by the unit cases above.
                if name.eq_ignore_ascii_case("content-length")
                    || name.eq_ignore_ascii_case("transfer-encoding")
                {
                    continue;
                }
                head.push_str(&format!("{name}: {}\r\n", value.trim()));
            }
            head.push_str("\r\n");
            head
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_in_any_pieces_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let _ = whole(&bytes);
            let _ = chunked(&bytes, &cuts);
        }

        #[test]
        fn a_valid_head_split_anywhere_is_detected_the_same(
            head in valid_head(),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let at_once = kind(&whole(head.as_bytes()));
            prop_assert!(at_once == "events" || at_once == "h1", "{}: {}", head, at_once);
            prop_assert_eq!(kind(&chunked(head.as_bytes(), &cuts)), at_once);
        }

        #[test]
        fn a_head_prefix_is_never_refused_early_unless_invalid(
            head in valid_head(),
            cut in any::<usize>(),
        ) {
            let cut = cut % head.len();
            prop_assert_eq!(kind(&whole(&head.as_bytes()[..cut])), "more");
        }
    }
}
