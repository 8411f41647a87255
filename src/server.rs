//! The accept loop: HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one port,
//! graceful shutdown that ends every stream and then waits, bounded, for
//! connections to finish.
//!
//! Each connection's first bytes are peeked (never consumed) by
//! [`h1_stream::sniff`]: the HTTP/2 client preface (RFC 9113 §3.4) goes to
//! hyper's HTTP/2 server, an HTTP/1.x `GET .../events` to the event-stream
//! fast path, and everything else to hyper's HTTP/1 server. Serving the
//! plain protocols separately instead of through hyper-util's combined
//! `auto` connection, and streams on the fast path, keeps an idle stream's
//! memory small (measured with `cargo bench --bench gateway -- --only idle`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::http;
use crate::http::h1_stream::{self, Opening};
use crate::state::AppState;

pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
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
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let mut stream = stream;
            // A connection may carry several event streams in a row on the
            // fast path; anything else is hyper's for the rest of it.
            let opening = loop {
                let opening = tokio::select! {
                    () = state.shutdown.cancelled() => return,
                    opening = h1_stream::sniff(&stream, &state.config) => opening,
                };
                let Opening::EventStream(request) = opening else {
                    break opening;
                };
                match h1_stream::serve(state.clone(), stream, request, info).await {
                    Some(kept) => stream = kept,
                    None => return,
                }
            };
            let shutdown = state.shutdown.clone();
            let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                let state = state.clone();
                request.extensions_mut().insert(info);
                async move { Ok::<_, Infallible>(http::handle(state, request).await) }
            });
            let io = TokioIo::new(stream);
            let served = match opening {
                Opening::Http2 => {
                    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    watcher.watch(builder.serve_connection(io, service)).await
                }
                Opening::Http1 => {
                    // With upgrades, for ARCP over WebSocket at /arcp. hyper-util's
                    // graceful watcher does not take an upgradeable connection, so
                    // the shutdown token asks it to finish its request and close.
                    drop(watcher);
                    let builder = hyper::server::conn::http1::Builder::new();
                    let connection = builder.serve_connection(io, service).with_upgrades();
                    tokio::pin!(connection);
                    tokio::select! {
                        served = connection.as_mut() => served,
                        () = shutdown.cancelled() => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    }
                }
                Opening::Closed | Opening::EventStream(_) => return,
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: ending streams");
    state.shutdown.cancel();
    connections.close();
    let grace = state.config.shutdown_grace;
    let drained = async {
        graceful.shutdown().await;
        connections.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing"
        );
    }
}
