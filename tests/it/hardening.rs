//! Hostile connections: slow bodies, trickled and silent heads, huge
//! announced bodies, malformed heads and floods beyond the connection cap
//! (docs/limits.md). Every refusal is an ARCP error body; nothing stays open
//! past its deadline; memory stays bounded; established streams keep going.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Resident memory of a process, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Reads until the peer closes (or resets); all bytes received.
async fn read_to_close(connection: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match connection.read(&mut buffer).await {
            Ok(0) | Err(_) => return received,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

/// A response read from a raw connection: status and JSON body.
struct RawResponse {
    status: u16,
    head: String,
    body: Value,
}

fn parse_response(bytes: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("a response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head:?}"));
    RawResponse {
        status,
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

/// Sends `bytes` on a fresh connection and reads the answer until close.
async fn exchange(address: std::net::SocketAddr, bytes: &[u8]) -> (RawResponse, Duration) {
    let started = Instant::now();
    let mut connection = TcpStream::connect(address).await.unwrap();
    connection.write_all(bytes).await.unwrap();
    let received = within("the answer and close", read_to_close(&mut connection)).await;
    (parse_response(&received), started.elapsed())
}

fn assert_arcp_error(response: &RawResponse, status: u16) {
    assert_eq!(response.status, status, "{}", response.head);
    assert!(
        response.head.contains("content-type: application/json"),
        "{}",
        response.head
    );
    assert!(response.body["code"].is_string(), "{}", response.body);
    assert!(response.body["message"].is_string(), "{}", response.body);
    assert!(response.body["retryable"].is_boolean(), "{}", response.body);
}

fn server_with(adjust: impl FnOnce(&mut arcp_gateway::config::ConnectionLimits)) -> TestServer {
    TestServer::with_config(|config| adjust(&mut config.connections))
}

#[tokio::test]
async fn slow_request_bodies_keep_gateway_memory_bounded() {
    const CONNECTIONS: usize = 20;
    const DRIBBLE: Duration = Duration::from_secs(6);
    let gateway = GatewayProcess::start(&[]).await;
    let address = gateway.base.trim_start_matches("http://").to_owned();
    let pid = gateway.child.id().expect("pid");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut dribblers = Vec::new();
    for _ in 0..CONNECTIONS {
        let address = address.clone();
        dribblers.push(tokio::spawn(async move {
            let mut connection = TcpStream::connect(&address).await.unwrap();
            connection.set_nodelay(true).unwrap();
            // No credential: the hello may carry its token in the body.
            let head = "POST /v1/sessions HTTP/1.1\r\nHost: gateway\r\n\
                        Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n";
            connection.write_all(head.as_bytes()).await.unwrap();
            let started = Instant::now();
            let mut sent = 0u64;
            // One byte per segment.
            while started.elapsed() < DRIBBLE {
                if connection.write_all(b" ").await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (connection, sent)
        }));
    }
    let mut held = Vec::new();
    let mut sent = 0;
    for dribbler in dribblers {
        let (connection, bytes) = dribbler.await.unwrap();
        held.push(connection);
        sent += bytes;
    }
    let during = rss_kib(pid);
    let growth = during.saturating_sub(before);
    eprintln!(
        "slow bodies: {CONNECTIONS} connections, {sent} body bytes one per segment over {DRIBBLE:?}: \
         RSS {before} KiB -> {during} KiB (+{growth} KiB, {:.0} B per byte sent)",
        growth as f64 * 1024.0 / sent.max(1) as f64
    );
    assert!(
        sent > 1_000,
        "the dribblers sent too little ({sent} bytes) to measure"
    );
    assert!(
        growth < 20 * 1024,
        "RSS grew by {growth} KiB under {CONNECTIONS} slow bodies ({sent} bytes)"
    );
    drop(held);
}

#[tokio::test]
async fn a_trickled_head_is_answered_408_and_closed_at_the_header_deadline() {
    let server = server_with(|limits| limits.header_timeout = Duration::from_secs(2));
    let started = Instant::now();
    let mut connection = TcpStream::connect(server.address).await.unwrap();
    connection.set_nodelay(true).unwrap();
    connection
        .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let (mut reader, mut writer) = connection.into_split();
    let trickle = tokio::spawn(async move {
        // A byte every 100 ms, for longer than the test waits.
        for _ in 0..200 {
            if writer.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut received = Vec::new();
    within(
        "the trickled head to be cut off",
        reader.read_to_end(&mut received),
    )
    .await
    .ok();
    let open_for = started.elapsed();
    trickle.abort();
    eprintln!("trickled head: closed after {open_for:?} (header timeout 2 s)");
    assert!(
        open_for >= Duration::from_millis(1_800) && open_for < Duration::from_secs(4),
        "closed after {open_for:?}"
    );
    let response = parse_response(&received);
    assert_arcp_error(&response, 408);
    assert!(response.head.contains("connection: close"));
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_header_deadline() {
    let server = server_with(|limits| limits.header_timeout = Duration::from_secs(1));
    let started = Instant::now();
    let mut connection = TcpStream::connect(server.address).await.unwrap();
    let received = within(
        "the silent connection to close",
        read_to_close(&mut connection),
    )
    .await;
    let open_for = started.elapsed();
    assert!(received.is_empty(), "nothing is said to a silent client");
    assert!(
        open_for >= Duration::from_millis(900) && open_for < Duration::from_secs(3),
        "closed after {open_for:?}"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_once_idle() {
    let server = server_with(|limits| {
        limits.header_timeout = Duration::from_secs(1);
        limits.idle_timeout = Duration::from_secs(1);
    });
    let mut connection = TcpStream::connect(server.address).await.unwrap();
    connection
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    within("the first answer", connection.read_exact(&mut first))
        .await
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let idle_from = Instant::now();
    within(
        "the idle connection to close",
        read_to_close(&mut connection),
    )
    .await;
    let idle_for = idle_from.elapsed();
    assert!(
        idle_for < Duration::from_secs(3),
        "closed after {idle_for:?}"
    );
}

#[tokio::test]
async fn an_announced_body_over_the_limit_gets_413_before_it_is_sent() {
    let server = TestServer::start();
    for credential in [
        format!("Authorization: Bearer {ALICE_TOKEN}\r\n"),
        String::new(),
    ] {
        let head = format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: x\r\n{credential}Content-Length: 1073741824\r\n\r\n"
        );
        let started = Instant::now();
        let mut connection = TcpStream::connect(server.address).await.unwrap();
        connection.write_all(head.as_bytes()).await.unwrap();
        let mut buffer = vec![0u8; 4096];
        let read = within("the 413", connection.read(&mut buffer))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        let response = parse_response(&buffer[..read]);
        assert_arcp_error(&response, 413);
        assert_eq!(response.body["code"], "INVALID_REQUEST");
    }
}

#[tokio::test]
async fn a_bad_api_token_is_refused_before_the_body_is_read() {
    let server = TestServer::start();
    for path in ["/v1/sessions", "/v1/sessions/resume"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token-at-all\r\n\
             Content-Length: 100\r\n\r\n"
        );
        let mut connection = TcpStream::connect(server.address).await.unwrap();
        connection.write_all(head.as_bytes()).await.unwrap();
        let mut buffer = vec![0u8; 4096];
        // The body never comes: only a check before reading can answer.
        let read = tokio::time::timeout(Duration::from_secs(2), connection.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer without the body"))
            .unwrap();
        let response = parse_response(&buffer[..read]);
        assert_arcp_error(&response, 401);
        assert_eq!(response.body["code"], "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let server = server_with(|limits| limits.body_timeout = Duration::from_secs(1));
    let session = server.create_session(ALICE_TOKEN).await;
    let head = format!(
        "POST /v1/sessions/{}/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"agent\"",
        session.session_id
    );
    let started = Instant::now();
    let mut connection = TcpStream::connect(server.address).await.unwrap();
    connection.write_all(head.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let read = within("the 408", connection.read(&mut buffer))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let response = parse_response(&buffer[..read]);
    assert_arcp_error(&response, 408);
    assert_eq!(response.body["retryable"], true);
}

#[tokio::test]
async fn malformed_and_oversized_heads_get_arcp_errors() {
    let server = TestServer::start();
    let malformed: [&[u8]; 10] = [
        b"NONSENSE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
        b"GET  /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/sessions HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /v1/sessions HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET http://[::1/ HTTP/1.1\r\n\r\n",
        // Not HTTP and no line end (a TLS ClientHello): refused at once.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ];
    for head in malformed {
        let (response, took) = exchange(server.address, head).await;
        assert_arcp_error(&response, 400);
        assert_eq!(
            response.body["code"],
            "INVALID_REQUEST",
            "{}",
            String::from_utf8_lossy(head)
        );
        assert!(response.head.contains("connection: close"));
        assert!(took < Duration::from_secs(2));
    }
    let long_field = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40_000)
    );
    let many_fields = format!("GET /healthz HTTP/1.1\r\n{}\r\n", "X-F: v\r\n".repeat(150));
    for head in [long_field, many_fields] {
        let (response, _) = exchange(server.address, head.as_bytes()).await;
        assert_arcp_error(&response, 431);
    }
    // The gateway still serves.
    let (status, _) = server.get_json("/healthz", ALICE_TOKEN).await;
    assert_eq!(status, reqwest::StatusCode::OK);
}

#[tokio::test]
async fn a_flood_beyond_the_cap_is_refused_while_a_stream_keeps_every_event() {
    const CAP: usize = 24;
    const FLOOD: usize = 200;
    let server = server_with(|limits| {
        limits.max_connections = CAP;
        limits.max_connections_per_ip = None;
    });
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    let mut stream = server.stream(&sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let job = server
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 40, "interval_ms": 50}}),
        )
        .await;
    // The flood: silent connections, far beyond the cap.
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(server.address).await.unwrap());
    }
    let events = within(
        "every event of the job",
        stream.events_until(is_terminal_for(&job)),
    )
    .await;
    let seqs: Vec<u64> = events.iter().map(SseEvent::seq).collect();
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + seqs.len() as u64).collect::<Vec<_>>(),
        "the stream lost or repeated events"
    );
    assert!(
        events.len() >= 41,
        "40 progress events and the result: {}",
        events.len()
    );
    // The excess was refused at once with 503; the rest are held open.
    let (mut refused, mut closed, mut held) = (0, 0, 0);
    for mut connection in flood {
        let mut buffer = vec![0u8; 2048];
        match tokio::time::timeout(Duration::from_millis(200), connection.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => {
                let response = parse_response(&buffer[..read]);
                assert_arcp_error(&response, 503);
                assert_eq!(response.body["retryable"], true);
                refused += 1;
            }
            // Past the refusals in flight, the excess is closed unanswered.
            Ok(_) => closed += 1,
            Err(_) => held += 1,
        }
    }
    eprintln!(
        "flood: {FLOOD} connections at a cap of {CAP}: {refused} refused with 503, \
         {closed} closed unanswered, {held} held"
    );
    assert!(refused > 0, "no 503 answers");
    assert!(
        refused + closed >= FLOOD - CAP,
        "refused {refused}, closed {closed}, held {held}"
    );
    assert!(held < CAP, "held {held}");
}

#[tokio::test]
async fn one_address_is_capped_unless_it_is_a_trusted_proxy() {
    let capped = server_with(|limits| limits.max_connections_per_ip = Some(3));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(capped.address).await.unwrap());
    }
    let (response, took) = exchange(capped.address, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_arcp_error(&response, 429);
    assert!(took < Duration::from_secs(1));
    drop(held);

    let proxied = TestServer::with_config(|config| {
        config.connections.max_connections_per_ip = Some(3);
        config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    });
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(proxied.address).await.unwrap());
    }
    let (response, _) = exchange(
        proxied.address,
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn an_open_stream_is_not_an_idle_connection() {
    let server = TestServer::with_config(|config| {
        config.connections.idle_timeout = Duration::from_secs(1);
        config.heartbeat_interval = Duration::from_secs(1);
    });
    let session = server.create_session(ALICE_TOKEN).await;
    // Over HTTP/2, so hyper serves the stream and the idle timer watches it.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .get(server.url(&format!("/v1/sessions/{}/events", session.session_id)))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let mut stream = SseStream::from_response(response).await;
    stream.welcome().await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let job = server
        .submit_ok(
            &session.session_id,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 3, "interval_ms": 0}}),
        )
        .await;
    let events = within(
        "the job's events after idle time",
        stream.events_until(is_terminal_for(&job)),
    )
    .await;
    assert!(events.len() >= 4);
}

#[tokio::test]
async fn websocket_connections_keep_their_place_under_the_cap() {
    // hyper's connection ends at the upgrade; the upgraded connection must
    // still count, or WebSocket clients could hold descriptors past the cap.
    let server = server_with(|limits| {
        limits.max_connections = 3;
        limits.max_connections_per_ip = None;
    });
    let url = format!("ws://{}/arcp", server.address);
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (socket, _) = within("websocket connect", tokio_tungstenite::connect_async(&url))
            .await
            .expect("websocket handshake");
        sockets.push(socket);
    }
    let (response, took) = exchange(server.address, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_arcp_error(&response, 503);
    assert!(took < Duration::from_secs(1));

    drop(sockets);
    // Their places come back once the upgraded connections have ended.
    let freed = within("places freed", async {
        loop {
            let (response, _) = exchange(
                server.address,
                b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
            )
            .await;
            if response.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    freed.await;
}

/// The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113 §3.4).
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn an_h2c_connection_without_a_request_is_closed_at_the_header_deadline() {
    // The idle timeout and HTTP/2 pings (30 s + 20 s) would keep these far
    // longer: the first request's head is due within the header timeout.
    let server = server_with(|limits| {
        limits.header_timeout = Duration::from_secs(1);
        limits.idle_timeout = Duration::from_secs(60);
    });
    // A HEADERS frame's 9-byte frame header announcing 64 bytes, cut short.
    let trickled: &[u8] = b"\x00\x00\x40\x01\x05";
    for (case, after_preface) in [("silent", &b""[..]), ("trickled", trickled)] {
        let started = Instant::now();
        let mut connection = TcpStream::connect(server.address).await.unwrap();
        connection.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
        connection.write_all(after_preface).await.unwrap();
        let received = within(
            "the h2c connection without a request to close",
            read_to_close(&mut connection),
        )
        .await;
        let open_for = started.elapsed();
        assert!(
            open_for >= Duration::from_millis(900) && open_for < Duration::from_secs(4),
            "{case}: closed after {open_for:?}"
        );
        // The server's SETTINGS, then a GOAWAY (type 7) before the close.
        assert!(
            received.windows(4).any(|w| w[1..] == [0x08, 0x07, 0x00]),
            "{case}: no GOAWAY in {received:?}"
        );
    }
}

/// A `POST /v1/sessions` with a valid token and a JSON body padded to
/// `length` bytes; `Connection: close` so the answer ends with the connection.
fn padded_hello(length: usize) -> Vec<u8> {
    let body = format!("{{}}{}", " ".repeat(length - 2));
    format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE_TOKEN}\r\n\
         Content-Type: application/json\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n{body}"
    )
    .into_bytes()
}

#[tokio::test]
async fn bodies_being_read_share_one_gateway_wide_budget() {
    // Each body is under --max-body-bytes; together they may not pass
    // --max-body-bytes-in-flight, or connections sending large bodies
    // slowly would take 1 MiB each (about 535 MiB for 500 of them).
    let server = TestServer::with_config(|config| config.max_body_bytes_in_flight = 100_000);
    let mut hog = TcpStream::connect(server.address).await.unwrap();
    hog.write_all(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
        .await
        .unwrap();
    hog.write_all(&[b' '; 90_000]).await.unwrap();
    // Once the hog's bytes are read, a body that does not fit beside them
    // is refused, retryable.
    let refused = within("a body refused for the budget", async {
        loop {
            let (response, _) = exchange(server.address, &padded_hello(20_000)).await;
            if response.status == 503 {
                return response;
            }
            assert_eq!(response.status, 201, "{}", response.head);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_arcp_error(&refused, 503);
    assert_eq!(refused.body["code"], "INTERNAL_ERROR");
    assert_eq!(refused.body["retryable"], true);
    // A small body still fits; once the hog goes its share is given back.
    let (small, _) = exchange(server.address, &padded_hello(2_000)).await;
    assert_eq!(small.status, 201, "{}", small.head);
    drop(hog);
    within("the budget to be given back", async {
        loop {
            let (response, _) = exchange(server.address, &padded_hello(20_000)).await;
            if response.status == 201 {
                return;
            }
            assert_eq!(response.status, 503, "{}", response.head);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}
