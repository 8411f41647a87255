//! Shared test harness: a real gateway on an ephemeral port that shuts down
//! on drop, an HTTP client, and an SSE reader that parses the stream as a
//! browser would. Every wait is bounded by a timeout.

#![allow(dead_code)]

pub mod cluster;
pub mod nginx;
mod process;
pub mod redis_server;

pub use process::GatewayProcess;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use arcp_gateway::config::Config;
use arcp_gateway::ids::Principal;
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

pub const ALICE_TOKEN: &str = "alice-api-token-0001";
pub const BOB_TOKEN: &str = "bob-api-token-0002";

/// The longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future` or fails the test with `what`.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// A gateway served in-process on its own runtime thread.
pub struct TestServer {
    pub address: SocketAddr,
    api: Api,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with_config(|_| {})
    }

    /// Starts a gateway with principals `alice` and `bob` and a fixed secret;
    /// `adjust` changes anything else.
    pub fn with_config(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::development();
        config.api_tokens = vec![
            (Principal::new("alice"), ALICE_TOKEN.to_owned()),
            (Principal::new("bob"), BOB_TOKEN.to_owned()),
        ];
        config.generated_dev_token = None;
        config.secrets = vec![b"integration-test-secret-0123456789".to_vec()];
        config.secret_was_generated = false;
        config.shutdown_grace = Duration::from_secs(2);
        config.sweep_interval = Duration::from_millis(100);
        adjust(&mut config);

        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        let (shutdown_sender, shutdown_receiver) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                address_sender
                    .send(listener.local_addr().expect("address"))
                    .expect("report address");
                let shutdown = async {
                    let _ = shutdown_receiver.await;
                };
                arcp_gateway::serve(config, listener, shutdown)
                    .await
                    .expect("serve");
            });
        });
        let address = address_receiver
            .recv_timeout(WAIT)
            .expect("the test server did not report its address");
        TestServer {
            address,
            api: Api {
                base: format!("http://{address}"),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client"),
            },
            shutdown: Some(shutdown_sender),
            thread: Some(thread),
        }
    }
}

impl std::ops::Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// The gateway's HTTP API at one base URL: a test server, one cluster node
/// or the nginx in front of them.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `POST /v1/sessions` with an api token; panics unless it is 201.
    pub async fn create_session(&self, api_token: &str) -> Welcome {
        let (status, body) = self
            .post_json("/v1/sessions", api_token, &Value::Null)
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{} POST /v1/sessions: {body}",
            self.base
        );
        Welcome::from_envelope(body)
    }

    /// `POST /v1/sessions/{id}/jobs` with the given credential.
    pub async fn submit(
        &self,
        session_id: &str,
        credential: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.post_json(
            &format!("/v1/sessions/{session_id}/jobs"),
            credential,
            &body,
        )
        .await
    }

    /// Submits a job that must be accepted and returns its id.
    pub async fn submit_ok(&self, session_id: &str, credential: &str, body: Value) -> String {
        let (status, envelope) = self.submit(session_id, credential, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{}: {envelope}", self.base);
        envelope["payload"]["job_id"]
            .as_str()
            .expect("job_id")
            .to_owned()
    }

    pub async fn cancel(
        &self,
        session_id: &str,
        job_id: &str,
        credential: &str,
    ) -> (StatusCode, Value) {
        self.post_json(
            &format!("/v1/sessions/{session_id}/jobs/{job_id}/cancel"),
            credential,
            &Value::Null,
        )
        .await
    }

    pub async fn get_json(&self, path: &str, credential: &str) -> (StatusCode, Value) {
        send(self.client.get(self.url(path)).bearer_auth(credential)).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        credential: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        let mut request = self.client.post(self.url(path));
        if !credential.is_empty() {
            request = request.bearer_auth(credential);
        }
        if !body.is_null() {
            request = request.json(body);
        }
        send(request).await
    }

    pub async fn delete(&self, path: &str, credential: &str) -> (StatusCode, Value) {
        send(self.client.delete(self.url(path)).bearer_auth(credential)).await
    }

    /// Opens the session's stream with `Authorization: Bearer credential`
    /// and an optional `Last-Event-ID`.
    pub async fn stream(
        &self,
        session_id: &str,
        credential: &str,
        last_event_id: Option<u64>,
    ) -> SseStream {
        let mut request = self
            .client
            .get(self.url(&format!("/v1/sessions/{session_id}/events")))
            .bearer_auth(credential);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = within("stream open", request.send())
            .await
            .expect("stream request");
        SseStream::from_response(response).await
    }

    /// Polls the job until `predicate` holds on its status payload.
    pub async fn wait_for_job(
        &self,
        session_id: &str,
        job_id: &str,
        credential: &str,
        predicate: impl Fn(&Value) -> bool,
    ) -> Value {
        within("job state", async {
            loop {
                let (status, envelope) = self
                    .get_json(
                        &format!("/v1/sessions/{session_id}/jobs/{job_id}"),
                        credential,
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{envelope}");
                if predicate(&envelope["payload"]) {
                    return envelope["payload"].clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

/// Sends a request and reads its status and JSON body: `null` for an empty
/// body, a string saying so for one that is not JSON (an nginx error page).
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = within("an HTTP response", request.send())
        .await
        .expect("HTTP request");
    let status = response.status();
    let body = within("an HTTP body", response.bytes())
        .await
        .unwrap_or_default();
    if body.is_empty() {
        return (status, Value::Null);
    }
    let value = serde_json::from_slice(&body).unwrap_or_else(|_| {
        Value::String(format!("(not JSON) {}", String::from_utf8_lossy(&body)))
    });
    (status, value)
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The fields of a `session.welcome` the tests use.
#[derive(Clone, Debug)]
pub struct Welcome {
    pub session_id: String,
    pub resume_token: String,
    pub envelope: Value,
}

impl Welcome {
    pub fn from_envelope(envelope: Value) -> Welcome {
        assert_eq!(envelope["type"], "session.welcome", "{envelope}");
        Welcome {
            session_id: envelope["session_id"]
                .as_str()
                .expect("session_id")
                .to_owned(),
            resume_token: envelope["payload"]["resume_token"]
                .as_str()
                .expect("resume_token")
                .to_owned(),
            envelope,
        }
    }
}

/// One parsed SSE event.
#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

impl SseEvent {
    pub fn seq(&self) -> u64 {
        self.data["event_seq"].as_u64().expect("event_seq")
    }
}

/// An open stream, parsed incrementally.
pub struct SseStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The error body when the status is not 200.
    pub error: Value,
    body: Option<futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    buffer: String,
    pub retry_lines: Vec<String>,
    pub comments: usize,
}

impl SseStream {
    pub async fn from_response(response: reqwest::Response) -> SseStream {
        let status = response.status();
        let headers = response.headers().clone();
        if status != StatusCode::OK {
            let error = within("error body", response.json::<Value>())
                .await
                .unwrap_or(Value::Null);
            return SseStream {
                status,
                headers,
                error,
                body: None,
                buffer: String::new(),
                retry_lines: Vec::new(),
                comments: 0,
            };
        }
        SseStream {
            status,
            headers,
            error: Value::Null,
            body: Some(response.bytes_stream().boxed()),
            buffer: String::new(),
            retry_lines: Vec::new(),
            comments: 0,
        }
    }

    pub fn error_code(&self) -> &str {
        self.error["code"].as_str().unwrap_or("")
    }

    /// The next event, `None` when the server ended the stream. Panics after
    /// [`WAIT`] without one.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        within("the next SSE event", self.next_event_unbounded()).await
    }

    async fn next_event_unbounded(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.take_buffered_event() {
                return Some(event);
            }
            let body = self.body.as_mut()?;
            match body.next().await {
                Some(Ok(chunk)) => self
                    .buffer
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8 stream")),
                Some(Err(_)) | None => {
                    self.body = None;
                    return None;
                }
            }
        }
    }

    /// Parses one complete event out of the buffer (WHATWG rules: fields per
    /// line, blank line dispatches, `:` lines are comments).
    fn take_buffered_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buffer.find("\n\n")?;
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut id = None;
            let mut event = String::from("message");
            let mut data = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = Some(value.to_owned()),
                    "event" => event = value.to_owned(),
                    "data" => data.push(value.to_owned()),
                    "retry" => self.retry_lines.push(value.to_owned()),
                    _ => {}
                }
            }
            if data.is_empty() {
                continue;
            }
            let data = serde_json::from_str(&data.join("\n")).expect("event data is JSON");
            return Some(SseEvent { id, event, data });
        }
    }

    /// The stream's opening `session.welcome`.
    pub async fn welcome(&mut self) -> Welcome {
        let event = self.next_event().await.expect("welcome event");
        assert_eq!(event.event, "session.welcome");
        assert_eq!(event.id, None, "the welcome carries no id");
        Welcome::from_envelope(event.data)
    }

    /// Reads events until one satisfies `stop` (inclusive).
    pub async fn events_until(&mut self, stop: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut events = Vec::new();
        loop {
            let event = self
                .next_event()
                .await
                .expect("stream ended before the expected event");
            let done = stop(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// True once the server has ended the stream.
    pub async fn ended(&mut self) -> bool {
        within("the stream to end", async {
            while self.next_event_unbounded().await.is_some() {}
        })
        .await;
        true
    }
}

/// Is this the terminal event of `job_id`?
pub fn is_terminal_for(job_id: &str) -> impl Fn(&SseEvent) -> bool + '_ {
    move |event| {
        (event.event == "job.result" || event.event == "job.error")
            && event.data["job_id"] == job_id
    }
}

/// Asserts that `events` carry exactly the sequence numbers `from..=to`.
pub fn assert_contiguous(events: &[SseEvent], from: u64, to: u64) {
    let seqs: Vec<u64> = events.iter().map(SseEvent::seq).collect();
    let expected: Vec<u64> = (from..=to).collect();
    assert_eq!(
        seqs, expected,
        "event_seq must be contiguous with no gap or duplicate"
    );
    for event in events {
        assert_eq!(
            event.id.as_deref(),
            Some(event.seq().to_string().as_str()),
            "id: matches event_seq"
        );
    }
}
