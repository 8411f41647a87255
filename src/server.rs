//! The accept loop: HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one port,
//! graceful shutdown that ends every stream and then waits, bounded, for
//! connections to finish.
//!
//! The protocol is chosen by peeking at the connection's first bytes for the
//! HTTP/2 client preface (RFC 9113 §3.4), then the connection is served by
//! hyper's plain HTTP/1 or HTTP/2 machinery. This costs a few kilobytes less
//! per idle stream than hyper-util's combined `auto` connection (measured with
//! `cargo bench --bench gateway -- --only idle`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::http;
use crate::state::AppState;

pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and similar: back off, keep serving.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let info = http::browser::ConnectionInfo { peer };
        let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let state = state.clone();
            request.extensions_mut().insert(info);
            async move { Ok::<_, Infallible>(http::handle(state, request).await) }
        });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let served = if speaks_http2(io.inner()).await {
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                watcher.watch(builder.serve_connection(io, service)).await
            } else {
                let builder = hyper::server::conn::http1::Builder::new();
                watcher.watch(builder.serve_connection(io, service)).await
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: ending streams");
    state.shutdown.cancel();
    let grace = state.config.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing"
        );
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a connection may take to show whether it speaks HTTP/2.
const PREFACE_WAIT: Duration = Duration::from_secs(10);

/// True when the client opened with the HTTP/2 preface (prior knowledge).
/// Peeks without consuming, so whichever protocol serves the connection
/// reads it from the start.
async fn speaks_http2(stream: &TcpStream) -> bool {
    let detect = async {
        let mut seen = [0u8; 24];
        loop {
            let read = match stream.peek(&mut seen).await {
                Ok(0) | Err(_) => return false,
                Ok(read) => read,
            };
            if seen[..read] != HTTP2_PREFACE[..read] {
                return false;
            }
            if read == HTTP2_PREFACE.len() {
                return true;
            }
            // A prefix of the preface so far: wait for the rest.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(PREFACE_WAIT, detect)
        .await
        .unwrap_or(false)
}
