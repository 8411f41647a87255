//! The accept loop: HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one port,
//! connection caps, deadlines, and graceful shutdown that ends every stream
//! and then waits, bounded, for connections to finish.
//!
//! Each admitted connection's request head is read and validated by
//! [`detect`] in one step under the header timeout: the HTTP/2 client preface
//! (RFC 9113 §3.4) goes to hyper's HTTP/2 server, an HTTP/1.x
//! `GET .../events` to the event-stream fast path, any other valid head to
//! hyper's HTTP/1 server (with the bytes already read replayed first), and a
//! malformed, oversized or late head gets an ARCP error and is closed.
//! Serving the plain protocols separately instead of through hyper-util's
//! combined `auto` connection, and streams on the fast path, keeps an idle
//! stream's memory small (measured with
//! `cargo bench --bench gateway -- --only idle`).
//!
//! Deadlines: the head within `--header-timeout-sec` (hyper's HTTP/1
//! `header_read_timeout` for later requests on a kept-alive connection, with
//! a timer so it is active); bodies within `--body-timeout-sec`
//! ([`http::body::read_body_bytes`]); a hyper connection with no request in
//! progress (a streaming response counts as in progress) is shut down
//! gracefully after `--idle-timeout-sec`; HTTP/2 pings a quiet peer and
//! bounds concurrent streams.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::connections::{self, ConnectionLimiter, HeldConnection};
use crate::http;
use crate::http::detect::{self, Detected, Rewind, MAX_HEADER_FIELDS, MAX_HEAD_BYTES};
use crate::http::error::ApiError;
use crate::metrics::{ConnectionRefusal, OpenGuard, Transport};
use crate::state::AppState;

/// HTTP/2: how often a quiet connection is pinged, and how long the answer
/// may take before the connection is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// HTTP/2: concurrent streams one connection may open.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// Refusals (503/429) being written at once (each holds its descriptor for
/// at most about a second); past this many, excess connections are closed
/// without an answer. Kept well under the reserved descriptors.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// The first and the longest pause after a failed `accept`.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long a connection being shut down for idleness may take to close.
const IDLE_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How long an HTTP/2 connection that sent no request within the header
/// timeout may take to close after its `GOAWAY` (a silent peer never
/// acknowledges the shutdown's ping).
const NO_REQUEST_CLOSE_WAIT: Duration = Duration::from_secs(1);

pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let open_file_limit = connections::raise_open_file_limit();
    let configured = state.config.connections.max_connections;
    let max_total = connections::effective_max_connections(configured, open_file_limit);
    if max_total < configured {
        tracing::warn!(
            configured,
            enforced = max_total,
            open_file_limit,
            "--max-connections lowered to keep file descriptors in reserve"
        );
    }
    tracing::info!(
        open_file_limit,
        max_connections = max_total,
        max_connections_per_ip = state.config.connections.max_connections_per_ip,
        "connection limits"
    );
    let limiter = ConnectionLimiter::new(
        &state.config.connections,
        max_total,
        &state.config.trusted_proxies,
    );
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let connections = TaskTracker::new();
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = ACCEPT_BACKOFF_FIRST;
                pair
            }
            Err(error) => {
                // Out of file descriptors and similar: back off, growing, so
                // a persistent failure is not spun on; keep serving.
                tracing::warn!(%error, ?backoff, "accept failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let permit = match limiter.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(error) => {
                tracing::debug!(%peer, code = error.code().as_str(), "connection refused");
                if matches!(error, ApiError::TooManyConnectionsFromPeer { .. }) {
                    state
                        .metrics
                        .connection_refused(ConnectionRefusal::PerPeerCap);
                } else {
                    state
                        .metrics
                        .connection_refused(ConnectionRefusal::TotalCap);
                }
                if let Ok(slot) = refusals.clone().try_acquire_owned() {
                    connections.spawn(async move {
                        detect::refuse(stream, &error).await;
                        drop(slot);
                    });
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let info = http::browser::ConnectionInfo { peer };
        connections.spawn(async move {
            serve_connection(state, stream, info, HeldConnection::new(permit)).await;
        });
    }
    drop(listener);
    tracing::info!("shutting down: ending streams");
    state.shutdown.begin();
    // Streams wait on their session's log alone; wake them to see it.
    state.sessions.kick_all_streams();
    connections.close();
    let grace = state.config.shutdown_grace;
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing"
        );
    }
}

/// Serves one connection to its end.
async fn serve_connection(
    state: Arc<AppState>,
    mut stream: TcpStream,
    info: http::browser::ConnectionInfo,
    held: HeldConnection,
) {
    let mut detected = tokio::select! {
        () = state.shutdown.begun() => return,
        detected = detect::detect_first(&mut stream, &state.config) => detected,
    };
    // Counts the connection as open once its protocol is known.
    let _open: Option<OpenGuard> = match &detected {
        Detected::EventStream(_) | Detected::Http1(_) => {
            Some(state.metrics.connection_opened(Transport::Http1))
        }
        Detected::Http2(_) => Some(state.metrics.connection_opened(Transport::Http2)),
        Detected::Refused(_) | Detected::Closed => None,
    };
    // A connection may carry several event streams in a row on the fast
    // path; anything else is hyper's for the rest of it.
    loop {
        match detected {
            Detected::EventStream(request) => {
                match http::h1_stream::serve(state.clone(), stream, request, info).await {
                    Some(kept) => stream = kept,
                    None => return,
                }
                detected = tokio::select! {
                    () = state.shutdown.begun() => return,
                    detected = detect::detect_next(&mut stream, &state.config) => detected,
                };
            }
            // Boxed: the fast path's idle streams do not carry hyper's
            // connection state in their task.
            Detected::Http1(prefix) => {
                return Box::pin(serve_http1(state, Rewind::new(prefix, stream), info, held)).await;
            }
            Detected::Http2(prefix) => {
                return Box::pin(serve_http2(state, Rewind::new(prefix, stream), info, held)).await;
            }
            Detected::Refused(error) => {
                tracing::debug!(peer = %info.peer, code = error.code().as_str(), "request head refused");
                if matches!(error, ApiError::HeadTimeout) {
                    state
                        .metrics
                        .connection_refused(ConnectionRefusal::HeaderTimeout);
                }
                return detect::refuse(stream, &error).await;
            }
            Detected::Closed => return,
        }
    }
}

async fn serve_http1(
    state: Arc<AppState>,
    io: Rewind<TcpStream>,
    info: http::browser::ConnectionInfo,
    held: HeldConnection,
) {
    let activity = Activity::new();
    let service = service(state.clone(), info, activity.clone(), held);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.connections.header_timeout)
        .max_headers(MAX_HEADER_FIELDS)
        .max_buf_size(MAX_HEAD_BYTES.max(8192));
    // With upgrades, for ARCP over WebSocket at `GET /arcp` (§4).
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    drive(
        connection,
        |connection| connection.graceful_shutdown(),
        &state,
        &activity,
        info,
    )
    .await;
}

async fn serve_http2(
    state: Arc<AppState>,
    io: Rewind<TcpStream>,
    info: http::browser::ConnectionInfo,
    held: HeldConnection,
) {
    let activity = Activity::new();
    let service = service(state.clone(), info, activity.clone(), held);
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    drive(
        connection,
        |connection| connection.graceful_shutdown(),
        &state,
        &activity,
        info,
    )
    .await;
}

/// The request handler for one hyper connection: every request carries the
/// connection's peer, and counts as activity until its response body ends.
/// Each request also carries the connection's place under the caps, so a
/// connection upgraded to WebSocket keeps it for as long as it lives.
fn service(
    state: Arc<AppState>,
    info: http::browser::ConnectionInfo,
    activity: Arc<Activity>,
    held: HeldConnection,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<Tracked<http::body::ResponseBody>>,
    Error = Infallible,
    Future = impl Future<
        Output = Result<hyper::Response<Tracked<http::body::ResponseBody>>, Infallible>,
    > + Send,
> + Clone {
    service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let state = state.clone();
        let busy = activity.begin();
        request.extensions_mut().insert(info);
        request.extensions_mut().insert(held.clone());
        async move {
            let response = http::handle(state, request).await;
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
        }
    })
}

/// Runs a hyper connection until it ends, shutting it down gracefully on
/// gateway shutdown or once it has been idle for the idle timeout.
async fn drive<C, E>(
    connection: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    state: &AppState,
    activity: &Activity,
    info: http::browser::ConnectionInfo,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    let idle_timeout = state.config.connections.idle_timeout;
    // Either the connection's end, or how long it may take to close.
    let result = tokio::select! {
        result = connection.as_mut() => Ok(result),
        () = state.shutdown.begun() => Err(state.config.shutdown_grace),
        () = activity.idle_for(idle_timeout) => {
            state.metrics.connection_refused(ConnectionRefusal::IdleTimeout);
            Err(IDLE_CLOSE_WAIT)
        }
        // HTTP/2: the preface came within the header timeout, the first
        // request's head must too (HTTP/1 heads were read by detection).
        () = activity.no_request_within(state.config.connections.header_timeout) => {
            state.metrics.connection_refused(ConnectionRefusal::HeaderTimeout);
            Err(NO_REQUEST_CLOSE_WAIT)
        }
    };
    let result = match result {
        Ok(result) => result,
        Err(wait) => {
            graceful_shutdown(connection.as_mut());
            match tokio::time::timeout(wait, connection).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(peer = %info.peer, %error, "connection ended with an error");
    }
}

/// Requests in progress on one hyper connection, and since when it has had
/// none.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// Whether any request has begun on the connection.
    began: AtomicBool,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            began: AtomicBool::new(false),
        })
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.began.store(true, Ordering::SeqCst);
        Busy {
            activity: self.clone(),
        }
    }

    fn idle_since(&self) -> Instant {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes if no request has begun within `timeout` of the
    /// connection's start; never completes otherwise.
    async fn no_request_within(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
        if self.began.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// Completes once no request has been in progress for `timeout`. Wakes
    /// at most once per `timeout` while requests are in progress.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let until = self.idle_since() + timeout;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
            // Re-check: a request may have come and gone meanwhile.
            if self.in_flight.load(Ordering::SeqCst) == 0
                && Instant::now() >= self.idle_since() + timeout
            {
                return;
            }
        }
    }
}

/// One request in progress; dropping it (with the response body) ends it.
struct Busy {
    activity: Arc<Activity>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The time first, so the watcher never sees zero with a stale time.
        *self
            .activity
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in progress until it
/// has been sent (or dropped).
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves `/metrics` alone on `listener` (`--metrics-listen`), over
/// HTTP/1.1, until the gateway shuts down.
pub async fn run_metrics(listener: TcpListener, state: Arc<AppState>) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = state.shutdown.begun() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let shutdown = state.shutdown.clone();
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(http::handle_metrics_only(state, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            // At shutdown the connection is simply dropped: a scrape is
            // one short request, and nothing else is served here.
            tokio::select! {
                _ = connection => {}
                () = shutdown.begun() => {}
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_event_stream_connection_is_a_small_task() {
        let state = crate::build_state(crate::config::Config::development())
            .await
            .expect("state");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, _client) = tokio::join!(listener.accept(), client);
        let (stream, peer) = accepted.expect("accept");
        let info = http::browser::ConnectionInfo { peer };
        let limits = crate::config::Config::development().connections;
        let limiter = ConnectionLimiter::new(&limits, 8, &[]);
        let held = HeldConnection::new(limiter.admit(peer.ip()).unwrap());
        // An idle stream costs about as much as its connection's task,
        // and a task is as large as its future's largest state, whether
        // or not that state is ever reached. The opening and the rare
        // waits are boxed so this stays small: it was 2,728 bytes before,
        // which made most of an idle stream's 5.2 KiB
        // (docs/performance.md).
        let task = serve_connection(state, stream, info, held);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1_200, "a connection's task takes {size} bytes");
    }
}
