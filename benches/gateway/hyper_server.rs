//! The hyper baseline (`--serve-baseline`): a minimal hyper server streaming
//! pre-encoded SSE frames, run as a separate process like the gateway.
//! Endpoints: `POST /store?name=` keeps a body (the bytes the gateway sent)
//! for `/replay?name=`; `/live?rate=&count=&bytes=` one paced stream;
//! `/fanout` subscribes to the frames `/fanout-start?rate=&count=&bytes=`
//! broadcasts; anything else is an idle stream with a comment every 5 s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arcp_gateway::http::sse::STREAM_READ_LIMIT;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::common::now_ns;
use crate::wire::{event_frame, paced, param, query};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
type Stored = Arc<Mutex<HashMap<String, Bytes>>>;

pub async fn serve() {
    let listener = TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind baseline");
    println!(
        "hyper baseline listening on http://{}",
        listener.local_addr().expect("address")
    );
    let stored: Stored = Arc::default();
    let (broadcast, _) = tokio::sync::broadcast::channel::<Bytes>(65_536);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stored = stored.clone();
        let broadcast = broadcast.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let stored = stored.clone();
                    let broadcast = broadcast.clone();
                    async move { Ok::<_, Infallible>(respond(request, stored, broadcast).await) }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn streaming(receiver: tokio::sync::mpsc::Receiver<Bytes>) -> hyper::Response<Body> {
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), receiver))
    });
    let mut response = hyper::Response::new(StreamBody::new(stream).boxed());
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("header"));
    response
}

fn empty() -> hyper::Response<Body> {
    hyper::Response::new(http_body_util::Full::new(Bytes::new()).boxed())
}

async fn respond(
    request: hyper::Request<hyper::body::Incoming>,
    stored: Stored,
    broadcast: tokio::sync::broadcast::Sender<Bytes>,
) -> hyper::Response<Body> {
    let params = query(&request.uri().to_string());
    let name = params.get("name").cloned().unwrap_or_default();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(8);
    match request.uri().path() {
        "/store" => {
            let body = request
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            stored.lock().expect("stored").insert(name, body);
            return empty();
        }
        "/replay" => {
            let frames = stored
                .lock()
                .expect("stored")
                .get(&name)
                .cloned()
                .unwrap_or_default();
            tokio::spawn(async move {
                let mut offset = 0;
                while offset < frames.len() {
                    // The same chunk size the gateway's streams use.
                    let mut end = (offset + STREAM_READ_LIMIT.max_bytes).min(frames.len());
                    while end < frames.len() && !frames[..end].ends_with(b"\n\n") {
                        end += 1;
                    }
                    if sender.send(frames.slice(offset..end)).await.is_err() {
                        return;
                    }
                    offset = end;
                }
                std::future::pending::<()>().await;
            });
        }
        "/live" => {
            let rate: u64 = param(&params, "rate", 1000);
            let count: u64 = param(&params, "count", 1000);
            let bytes: usize = param(&params, "bytes", 475);
            tokio::spawn(async move {
                for frame in paced(rate, count) {
                    frame.wait().await;
                    let encoded = event_frame(frame.number, now_ns(), bytes);
                    if sender.send(Bytes::from(encoded)).await.is_err() {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            });
        }
        "/fanout" => {
            let mut subscription = broadcast.subscribe();
            tokio::spawn(async move {
                while let Ok(frame) = subscription.recv().await {
                    if sender.send(frame).await.is_err() {
                        return;
                    }
                }
            });
        }
        "/fanout-start" => {
            let rate: u64 = param(&params, "rate", 1000);
            let count: u64 = param(&params, "count", 1000);
            let bytes: usize = param(&params, "bytes", 475);
            tokio::spawn(async move {
                for frame in paced(rate, count) {
                    frame.wait().await;
                    let encoded = event_frame(frame.number, now_ns(), bytes);
                    let _ = broadcast.send(Bytes::from(encoded));
                }
            });
            return empty();
        }
        _ => {
            // Idle: a keepalive comment now and then, nothing else.
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    if sender
                        .send(Bytes::from_static(b": keepalive\n\n"))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    }
    streaming(receiver)
}
