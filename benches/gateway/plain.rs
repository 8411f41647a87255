//! The plain-writer baseline (`--serve-plain`), the loopback limit: no HTTP
//! library, raw tokio sockets, the request line parsed and nothing else,
//! HTTP/1.1 `200` `text/event-stream` with `Transfer-Encoding: chunked`, and
//! pre-encoded frames written in large writes. A separate process like the
//! others, with the hyper baseline's endpoints: `POST /store?name=` (the
//! bytes the gateway sent, chunk-encoded once there), `/replay?name=`,
//! `/live?rate=&count=&bytes=`, and anything else an idle stream.
//!
//! Replay writes each pre-encoded chunk with one `write_all` from the
//! connection's task. `/replay?...&threads=1` writes from a plain thread with
//! blocking writes instead, and `/store?...&chunk=N` chooses the chunk size;
//! both are there to compare the variants (see `CHUNK_BYTES`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::now_ns;
use crate::wire::{event_frame, paced, param, query};

/// Body bytes per HTTP chunk (and per write) in replay. 256 KiB, 1 MiB and
/// 4 MiB (`--plain-chunk`), each from tokio tasks and from blocking threads
/// (`--plain-threads`), were measured with `--only replay --runs 3`: all
/// six within each other's run-to-run spread, about 1.3-2.6 GB/s at 10k
/// events and 2.1-3.8 GB/s at 100k on this 2-core VM, where loopback and
/// the client are the limit. 1 MiB from tokio had the best medians in two
/// of four rows, and tokio keeps idle streams cheap (no thread each).
pub const CHUNK_BYTES: usize = 1 << 20;

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";

type Stored = Arc<Mutex<HashMap<String, Arc<Vec<Bytes>>>>>;

pub async fn serve() {
    let listener = TcpListener::bind("127.0.0.2:0").await.expect("bind plain");
    println!(
        "plain writer listening on http://{}",
        listener.local_addr().expect("address")
    );
    let stored: Stored = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, stored.clone()));
    }
}

/// `body` as HTTP/1.1 chunks of at most `chunk` bytes, each one buffer
/// (size line, data, CRLF) ready to write.
fn encode_chunks(body: &[u8], chunk: usize) -> Vec<Bytes> {
    body.chunks(chunk.max(1))
        .map(|data| {
            let mut encoded = BytesMut::with_capacity(data.len() + 16);
            encoded.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            encoded.extend_from_slice(data);
            encoded.extend_from_slice(b"\r\n");
            encoded.freeze()
        })
        .collect()
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut encoded = format!("{:x}\r\n", data.len()).into_bytes();
    encoded.extend_from_slice(data);
    encoded.extend_from_slice(b"\r\n");
    encoded
}

/// The request head: (target, Content-Length), and the bytes after it.
async fn read_head(stream: &mut TcpStream) -> Option<(String, usize, BytesMut)> {
    let mut buffer = BytesMut::with_capacity(2048);
    loop {
        if stream.read_buf(&mut buffer).await.ok()? == 0 {
            return None;
        }
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut fields);
        if let httparse::Status::Complete(length) = request.parse(&buffer).ok()? {
            let target = request.path?.to_owned();
            let content_length = request
                .headers
                .iter()
                .find(|field| field.name.eq_ignore_ascii_case("content-length"))
                .and_then(|field| std::str::from_utf8(field.value).ok()?.parse().ok())
                .unwrap_or(0);
            let rest = buffer.split_off(length);
            return Some((target, content_length, rest));
        }
    }
}

async fn connection(mut stream: TcpStream, stored: Stored) {
    let Some((target, content_length, mut body)) = read_head(&mut stream).await else {
        return;
    };
    let params = query(&target);
    let name = params.get("name").cloned().unwrap_or_default();
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/store" => {
            while body.len() < content_length {
                if stream.read_buf(&mut body).await.unwrap_or(0) == 0 {
                    return;
                }
            }
            let chunks = encode_chunks(&body, param(&params, "chunk", CHUNK_BYTES));
            stored
                .lock()
                .expect("stored")
                .insert(name, Arc::new(chunks));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        }
        "/replay" => {
            let chunks = stored
                .lock()
                .expect("stored")
                .get(&name)
                .cloned()
                .unwrap_or_default();
            if params.get("threads").is_some_and(|v| v == "1") {
                replay_on_thread(stream, chunks);
                return;
            }
            if stream.write_all(HEAD).await.is_err() {
                return;
            }
            for chunk in chunks.iter() {
                if stream.write_all(chunk).await.is_err() {
                    return;
                }
            }
            hold(stream).await;
        }
        "/live" => {
            let rate: u64 = param(&params, "rate", 1000);
            let count: u64 = param(&params, "count", 1000);
            let bytes: usize = param(&params, "bytes", 475);
            if stream.write_all(HEAD).await.is_err() {
                return;
            }
            for frame in paced(rate, count) {
                frame.wait().await;
                let encoded = chunk(event_frame(frame.number, now_ns(), bytes).as_bytes());
                if stream.write_all(&encoded).await.is_err() {
                    return;
                }
            }
            hold(stream).await;
        }
        _ => {
            drop(body);
            if stream.write_all(HEAD).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if stream.write_all(&chunk(b": keepalive\n\n")).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Keeps a finished stream open until the client closes it.
async fn hold(mut stream: TcpStream) {
    let mut sink = [0u8; 64];
    while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
}

/// The thread variant of replay: the socket in blocking mode, written by a
/// plain thread.
fn replay_on_thread(stream: TcpStream, chunks: Arc<Vec<Bytes>>) {
    let Ok(stream) = stream.into_std() else {
        return;
    };
    std::thread::spawn(move || {
        let mut stream = stream;
        if stream.set_nonblocking(false).is_err() || stream.write_all(HEAD).is_err() {
            return;
        }
        for chunk in chunks.iter() {
            if stream.write_all(chunk).is_err() {
                return;
            }
        }
        let mut sink = [0u8; 64];
        while matches!(std::io::Read::read(&mut stream, &mut sink), Ok(read) if read > 0) {}
    });
}
