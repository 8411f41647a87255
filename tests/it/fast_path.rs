//! The HTTP/1.1 event-stream fast path (`src/http/h1_stream.rs`), spoken
//! to over raw TCP so the wire format itself is checked: framing, keep-alive
//! after a stream, HTTP/1.0, refusals, pipelining, and heads that only hyper
//! serves.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::cluster::within_for;
use crate::support::{within, TestServer, ALICE_TOKEN};

/// A response read off a raw connection.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one whole response from `connection`, leaving later bytes unread
/// in `buffer`: content-length, chunked, or close-delimited.
async fn read_response(connection: &mut TcpStream, buffer: &mut Vec<u8>) -> RawResponse {
    within("a response", async {
        let (status, headers, head_length) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(length) =
                response.parse(buffer).expect("a valid response head")
            {
                let headers = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (response.code.expect("status"), headers, length);
            }
            fill(connection, buffer).await.expect("head before EOF");
        };
        buffer.drain(..head_length);
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().expect("content-length");
            while buffer.len() < length {
                fill(connection, buffer).await.expect("body before EOF");
            }
            response.body = buffer.drain(..length).collect();
        } else if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let (skip, size) = loop {
                    if let Ok(httparse::Status::Complete((skip, size))) =
                        httparse::parse_chunk_size(buffer)
                    {
                        break (skip, size as usize);
                    }
                    fill(connection, buffer).await.expect("chunk before EOF");
                };
                while buffer.len() < skip + size + 2 {
                    fill(connection, buffer).await.expect("chunk before EOF");
                }
                assert_eq!(&buffer[skip + size..skip + size + 2], b"\r\n");
                response.body.extend_from_slice(&buffer[skip..skip + size]);
                buffer.drain(..skip + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while fill(connection, buffer).await.is_some() {}
            response.body = std::mem::take(buffer);
        }
        response
    })
    .await
}

/// Reads more bytes into `buffer`; `None` at EOF.
async fn fill(connection: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    match connection.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            Some(read)
        }
    }
}

fn stream_request(session_id: &str, version: &str, extra: &str) -> String {
    format!(
        "GET /v1/sessions/{session_id}/events {version}\r\nHost: gateway\r\n\
         Authorization: Bearer {ALICE_TOKEN}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n";

fn short_streams() -> TestServer {
    TestServer::with_config(|config| {
        config.max_stream_duration = Some(Duration::from_millis(400));
        config.retry = Duration::from_millis(250);
    })
}

#[tokio::test]
async fn http_1_1_streams_are_chunked_and_the_connection_carries_on_after_them() {
    let server = short_streams();
    let session = server.create_session(ALICE_TOKEN).await;
    let mut connection = TcpStream::connect(server.address).await.unwrap();
    let mut buffer = Vec::new();
    for round in 0..2 {
        connection
            .write_all(stream_request(&session.session_id, "HTTP/1.1", "").as_bytes())
            .await
            .unwrap();
        let stream = read_response(&mut connection, &mut buffer).await;
        assert_eq!(stream.status, 200, "round {round}");
        assert_eq!(stream.header("transfer-encoding"), Some("chunked"));
        assert!(stream
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")));
        assert!(stream.header("date").is_some_and(|d| d.ends_with(" GMT")));
        assert!(stream
            .header("set-cookie")
            .is_some_and(|c| c.contains("HttpOnly")));
        let text = stream.body_text();
        assert!(text.contains("event: session.welcome"), "{text}");
        assert!(
            text.ends_with("retry: 250\n\n"),
            "ends with a retry hint: {text:?}"
        );
    }
    // The same connection then serves an ordinary request through hyper.
    connection.write_all(HEALTHZ.as_bytes()).await.unwrap();
    let health = read_response(&mut connection, &mut buffer).await;
    assert_eq!(health.status, 200);
    let body: Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn http_1_0_streams_are_delimited_by_closing_the_connection() {
    let server = short_streams();
    let session = server.create_session(ALICE_TOKEN).await;
    let mut connection = TcpStream::connect(server.address).await.unwrap();
    connection
        .write_all(stream_request(&session.session_id, "HTTP/1.0", "").as_bytes())
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let stream = read_response(&mut connection, &mut buffer).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("transfer-encoding"), None);
    assert_eq!(stream.header("connection"), Some("close"));
    let text = stream.body_text();
    assert!(text.starts_with("retry: "), "{text:?}");
    assert!(text.contains("event: session.welcome"));
    assert!(text.ends_with("retry: 250\n\n"), "{text:?}");
}

#[tokio::test]
async fn refused_stream_requests_get_an_arcp_error_and_keep_the_connection() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let mut connection = TcpStream::connect(server.address).await.unwrap();
    let forged = format!(
        "GET /v1/sessions/{}/events HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer not-a-token\r\n\r\n",
        session.session_id
    );
    connection.write_all(forged.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let refused = read_response(&mut connection, &mut buffer).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let error: Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(error["code"], "UNAUTHENTICATED");

    connection.write_all(HEALTHZ.as_bytes()).await.unwrap();
    assert_eq!(
        read_response(&mut connection, &mut buffer).await.status,
        200
    );

    // `Connection: close` is honoured on a refusal too.
    let mut connection = TcpStream::connect(server.address).await.unwrap();
    let closing = forged.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    connection.write_all(closing.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let refused = read_response(&mut connection, &mut buffer).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("connection"), Some("close"));
    assert_eq!(
        within("EOF", fill(&mut connection, &mut buffer)).await,
        None,
        "closed after the refusal"
    );
}

#[tokio::test]
async fn a_request_pipelined_behind_a_stream_is_answered_after_it() {
    let server = short_streams();
    let session = server.create_session(ALICE_TOKEN).await;
    let mut connection = TcpStream::connect(server.address).await.unwrap();
    connection
        .write_all(stream_request(&session.session_id, "HTTP/1.1", "").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    connection.write_all(HEALTHZ.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let stream = read_response(&mut connection, &mut buffer).await;
    assert_eq!(stream.status, 200);
    assert!(stream.body_text().ends_with("retry: 250\n\n"));
    let health = read_response(&mut connection, &mut buffer).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn oversized_split_and_trickled_heads_still_stream() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let request = stream_request(&session.session_id, "HTTP/1.1", "");
    // Over 8 KiB of head: detection grows its buffer for it.
    let padding = format!("X-Padding: {}\r\n", "p".repeat(9000));
    let big = vec![stream_request(&session.session_id, "HTTP/1.1", &padding)];
    // Split across two writes: detection reads until the head is whole.
    let (first, rest) = request.split_at(20);
    let split = vec![first.to_owned(), rest.to_owned()];
    // Trickled over more than 100 ms, well within the header timeout.
    let (second, third) = rest.split_at(20);
    let trickled = vec![first.to_owned(), second.to_owned(), third.to_owned()];
    for (name, parts, pause) in [
        ("big head", big, 0),
        ("split head", split, 30),
        ("trickled head", trickled, 80),
    ] {
        let mut connection = TcpStream::connect(server.address).await.unwrap();
        for part in parts {
            connection.write_all(part.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let mut buffer = Vec::new();
        within(name, async {
            while !String::from_utf8_lossy(&buffer).contains("event: session.welcome") {
                fill(&mut connection, &mut buffer).await.expect(name);
            }
        })
        .await;
        let head = String::from_utf8_lossy(&buffer).to_lowercase();
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{name}: {head}");
        assert!(head.contains("transfer-encoding: chunked"), "{name}");
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_detaches_its_stream_at_once() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let status_path = format!("/v1/sessions/{}", session.session_id);
    let mut connection = TcpStream::connect(server.address).await.unwrap();
    connection
        .write_all(stream_request(&session.session_id, "HTTP/1.1", "").as_bytes())
        .await
        .unwrap();
    let mut buffer = Vec::new();
    within("the welcome", async {
        while !String::from_utf8_lossy(&buffer).contains("session.welcome") {
            fill(&mut connection, &mut buffer).await.expect("welcome");
        }
    })
    .await;
    assert!(attached(&server, &status_path).await);
    drop(connection);
    within("the stream to detach", async {
        // Well under the default heartbeat interval: the hang-up itself is
        // noticed, not a failed heartbeat write.
        while attached(&server, &status_path).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn attached(server: &TestServer, status_path: &str) -> bool {
    let (status, body) = server.get_json(status_path, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    body["payload"]["stream_attached"]
        .as_bool()
        .expect("stream_attached")
}

/// The SSE events of a chunked stream body, read until `job.result`:
/// (id, event type, data as JSON). `slow` waits before reading at all and
/// then reads in small bites, so the gateway's writes to it fill the
/// connection and are cut short.
async fn read_until_result(connection: &mut TcpStream, slow: bool) -> Vec<(u64, String, Value)> {
    let mut buffer = Vec::new();
    if slow {
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        fill(connection, &mut buffer).await.expect("a head");
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    buffer.drain(..head_end);
    let (mut body, mut events) = (Vec::new(), Vec::new());
    loop {
        let (skip, size) = loop {
            match httparse::parse_chunk_size(&buffer) {
                Ok(httparse::Status::Complete((skip, size))) => break (skip, size as usize),
                Ok(httparse::Status::Partial) => {}
                Err(_) => panic!("bad chunk framing: {:?}", String::from_utf8_lossy(&buffer)),
            }
            fill(connection, &mut buffer).await.expect("a chunk");
        };
        assert!(size > 0, "the stream ended before the job's result");
        while buffer.len() < skip + size + 2 {
            fill(connection, &mut buffer).await.expect("a whole chunk");
            if slow {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        assert_eq!(
            &buffer[skip + size..skip + size + 2],
            b"\r\n",
            "chunk framing"
        );
        body.extend_from_slice(&buffer[skip..skip + size]);
        buffer.drain(..skip + size + 2);
        while let Some(end) = body.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = body.drain(..end + 2).collect();
            let text = String::from_utf8(event).expect("UTF-8 events");
            let (mut id, mut kind, mut data) = (None, String::new(), None);
            for line in text.lines() {
                if let Some(value) = line.strip_prefix("id: ") {
                    id = Some(value.parse::<u64>().expect("a numeric id"));
                } else if let Some(value) = line.strip_prefix("event: ") {
                    kind = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(value).expect("whole JSON"));
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                let done = kind == "job.result";
                events.push((id, kind, data));
                if done {
                    return events;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_fan_out_reaches_fast_and_stalled_readers_whole_and_in_order() {
    // Caught-up streams take a job's events straight from its appends
    // (src/http/direct.rs); a reader that stops reading makes those writes
    // block or stop halfway through a frame, and its stream must take over
    // with no gap, no duplicate and no torn frame. Eighteen subscribers: a
    // pass that large is shared with helper threads (src/event_log/crew.rs).
    let server = TestServer::start();
    let submitter = server.create_session(ALICE_TOKEN).await;
    let count = 2_000;
    let job = server
        .submit_ok(
            &submitter.session_id,
            ALICE_TOKEN,
            serde_json::json!({"agent": "firehose",
                "input": {"count": count, "size": 3000, "rate": 4000, "delay_ms": 400}}),
        )
        .await;
    let mut readers = Vec::new();
    for index in 0..18 {
        let session = server.create_session(ALICE_TOKEN).await;
        let (status, body) = server
            .post_json(
                &format!("/v1/sessions/{}/subscriptions", session.session_id),
                ALICE_TOKEN,
                &serde_json::json!({"job_id": job}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut connection = TcpStream::connect(server.address).await.unwrap();
        connection
            .write_all(stream_request(&session.session_id, "HTTP/1.1", "").as_bytes())
            .await
            .unwrap();
        let slow = index % 2 == 1;
        readers.push(tokio::spawn(async move {
            read_until_result(&mut connection, slow).await
        }));
    }
    for (index, reader) in readers.into_iter().enumerate() {
        // 2,000 x 3 KB to 18 readers, parsed by a debug build: longer than
        // the usual wait.
        let events = within_for(Duration::from_secs(60), "every event", reader)
            .await
            .unwrap();
        let ids: Vec<u64> = events.iter().map(|(id, _, _)| *id).collect();
        assert!(
            ids.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "reader {index}: ids not contiguous"
        );
        let numbers: Vec<u64> = events
            .iter()
            .filter(|(_, kind, _)| kind == "job.event")
            .filter_map(|(_, _, data)| data["payload"]["body"]["n"].as_u64())
            .collect();
        assert_eq!(
            numbers,
            (1..=count).collect::<Vec<_>>(),
            "reader {index}: every event once, in order"
        );
    }
}
