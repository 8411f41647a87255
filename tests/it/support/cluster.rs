//! Three real gateway processes in cluster mode on one real `redis-server`
//! (unix socket, AOF on), behind a real nginx doing plain round robin
//! (`deploy/cluster/nginx.conf`, see `nginx.rs`). Nodes can be SIGKILLed and
//! restarted on their port; Redis can be killed, started and restarted on its
//! data directory. Everything stops on drop; every wait is bounded.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

use super::nginx::RoundRobinNginx;
use super::process::{log_tail, GatewayProcess};
use super::redis_server::RedisServer;
pub use super::Api;
use super::{within, Welcome, ALICE_TOKEN, BOB_TOKEN, WAIT};

/// The resume-token secret every node shares.
pub const CLUSTER_SECRET: &str = "cluster-test-secret-0123456789abcdef";
pub const NODES: usize = 3;

/// Awaits `future` for at most `limit` or fails the test with `what`.
pub async fn within_for<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

pub struct Cluster {
    pub redis: RedisServer,
    /// Index 0 is node `n1`. `None` while a node is killed.
    nodes: Vec<Option<GatewayProcess>>,
    /// `127.0.0.1:PORT` of each node, kept across restarts.
    addresses: Vec<String>,
    nginx: RoundRobinNginx,
    pub client: reqwest::Client,
    dir: tempfile::TempDir,
}

/// A client with no overall timeout (streams last), a connect timeout, and
/// no pooled connection reused after a peer died.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

/// The command line of node `number` (1-based), cluster flags included.
pub fn node_args(redis_url: &str, number: usize) -> Vec<String> {
    vec![
        "--redis-url".into(),
        redis_url.to_owned(),
        "--node-id".into(),
        format!("n{number}"),
        "--secret".into(),
        CLUSTER_SECRET.into(),
        "--token".into(),
        format!("alice:{ALICE_TOKEN}"),
        "--token".into(),
        format!("bob:{BOB_TOKEN}"),
    ]
}

fn log_path(dir: &tempfile::TempDir, number: usize) -> PathBuf {
    dir.path().join(format!("node{number}.log"))
}

async fn spawn_node(args: Vec<String>, log: PathBuf, listen: String) -> GatewayProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    GatewayProcess::start_logged(&listen, &args, &log).await
}

impl Cluster {
    /// Redis, then three nodes `n1`..`n3` (principals alice and bob), then
    /// nginx in front of them.
    pub async fn start() -> Cluster {
        let keep = std::env::var("ARCP_E2E_KEEP").as_deref() == Ok("1");
        let dir = tempfile::Builder::new()
            .prefix("arcp-cluster-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("temporary directory");
        if keep {
            println!("keeping {}", dir.path().display());
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("make the temporary directory traversable");
        let redis = RedisServer::start().await;
        let redis_url = redis.gateway_url();
        let starts = (1..=NODES).map(|number| {
            spawn_node(
                node_args(&redis_url, number),
                log_path(&dir, number),
                "127.0.0.1:0".to_owned(),
            )
        });
        let mut nodes = Vec::new();
        let mut addresses = Vec::new();
        for node in futures_util::future::join_all(starts).await {
            let address = node
                .base
                .strip_prefix("http://")
                .expect("the banner gives an http:// address")
                .to_owned();
            addresses.push(address);
            nodes.push(Some(node));
        }
        let nginx = RoundRobinNginx::start(dir.path(), &addresses).await;
        Cluster {
            redis,
            nodes,
            addresses,
            nginx,
            client: client(),
            dir,
        }
    }

    /// The API through nginx.
    pub fn nginx(&self) -> Api {
        Api {
            base: self.nginx.base(),
            client: self.client.clone(),
        }
    }

    /// The API of node `number` (1-based), directly.
    pub fn node(&self, number: usize) -> Api {
        Api {
            base: format!("http://{}", self.addresses[number - 1]),
            client: self.client.clone(),
        }
    }

    /// SIGKILL node `number` and wait until it is gone.
    pub async fn kill_node(&mut self, number: usize) {
        let node = self.nodes[number - 1]
            .as_mut()
            .unwrap_or_else(|| panic!("node {number} is not running"));
        node.kill_in_place().await;
        self.nodes[number - 1] = None;
    }

    /// Starts node `number` again on its port (SIGKILLing it first if it
    /// still runs), with the same flags.
    pub async fn restart_node(&mut self, number: usize) {
        if self.nodes[number - 1].is_some() {
            self.kill_node(number).await;
        }
        let node = spawn_node(
            node_args(&self.redis.gateway_url(), number),
            log_path(&self.dir, number),
            self.addresses[number - 1].clone(),
        )
        .await;
        self.nodes[number - 1] = Some(node);
    }

    /// SIGKILL Redis (it keeps its data directory and AOF).
    pub fn redis_kill(&mut self) {
        self.redis.kill();
    }

    /// Starts Redis again on its socket and data directory after
    /// [`Cluster::redis_kill`].
    pub async fn redis_start(&mut self) {
        self.redis.start_again().await;
    }

    /// SIGKILL Redis and start it again at once (it reloads its AOF).
    pub async fn redis_restart(&mut self) {
        self.redis.restart().await;
    }

    /// The last lines of every node's log and nginx's, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for number in 1..=NODES {
            out.push_str(&format!(
                "--- node {number} log:\n{}\n",
                log_tail(&log_path(&self.dir, number), 25)
            ));
        }
        out.push_str(&format!("--- nginx:\n{}\n", self.nginx.log_tail()));
        out
    }
}

impl Api {
    /// `GET …/events` with `Authorization: Bearer credential` and an optional
    /// `Last-Event-ID`.
    pub async fn stream_with_bearer(
        &self,
        session_id: &str,
        credential: &str,
        last_event_id: Option<u64>,
    ) -> RawStream {
        let mut request = self
            .client
            .get(self.url(&format!("/v1/sessions/{session_id}/events")))
            .bearer_auth(credential);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        RawStream::open(request).await
    }

    /// `GET …/events` as a browser reconnects: the `arcp_resume` cookie and
    /// `Last-Event-ID`, no `Authorization`.
    pub async fn stream_with_cookie(
        &self,
        session_id: &str,
        resume_token: &str,
        last_event_id: u64,
    ) -> RawStream {
        let request = self
            .client
            .get(self.url(&format!("/v1/sessions/{session_id}/events")))
            .header("Cookie", format!("arcp_resume={resume_token}"))
            .header("Last-Event-ID", last_event_id.to_string());
        RawStream::open(request).await
    }
}

/// One sequenced SSE event and its exact bytes on the wire.
#[derive(Clone, Debug)]
pub struct RawEvent {
    pub seq: u64,
    pub event: String,
    pub data: Value,
    /// The whole frame, `id: …\nevent: …\ndata: …\n\n`.
    pub raw: Vec<u8>,
}

impl RawEvent {
    pub fn job_id(&self) -> Option<&str> {
        self.data["job_id"].as_str()
    }

    pub fn is_terminal(&self) -> bool {
        self.event == "job.result" || self.event == "job.error"
    }
}

/// How a budgeted read ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The client cut the connection at its byte budget.
    Cut,
    /// The client closed the connection after the event it waited for.
    Stopped,
    /// The server ended the stream.
    Ended,
    /// Nothing arrived for the idle period; the stream is still open.
    Idle,
}

/// An open SSE stream read as raw bytes, so that frames can be compared
/// byte for byte. Frames: the welcome (no id), sequenced events, comments,
/// `retry:` hints.
pub struct RawStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The error body when the status is not 200.
    pub error: Value,
    body: Option<futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    buffer: Vec<u8>,
    pub bytes_read: usize,
    pub retry_lines: Vec<String>,
    pub welcome: Option<Welcome>,
    /// Body bytes up to the end of the welcome.
    pub welcome_bytes: Option<usize>,
    /// Unsequenced events other than the welcome (`session.closed`, …).
    pub unsequenced: Vec<(String, Value)>,
    pub comments: Vec<String>,
}

impl RawStream {
    pub async fn open(request: reqwest::RequestBuilder) -> RawStream {
        let response = within("the stream's response headers", request.send())
            .await
            .expect("stream request");
        let status = response.status();
        let headers = response.headers().clone();
        if status != StatusCode::OK {
            let body = within("an error body", response.bytes())
                .await
                .unwrap_or_default();
            let error = serde_json::from_slice(&body).unwrap_or_else(|_| {
                Value::String(format!("(not JSON) {}", String::from_utf8_lossy(&body)))
            });
            return RawStream {
                status,
                headers,
                error,
                body: None,
                buffer: Vec::new(),
                bytes_read: 0,
                retry_lines: Vec::new(),
                welcome: None,
                welcome_bytes: None,
                unsequenced: Vec::new(),
                comments: Vec::new(),
            };
        }
        RawStream {
            status,
            headers,
            error: Value::Null,
            body: Some(response.bytes_stream().boxed()),
            buffer: Vec::new(),
            bytes_read: 0,
            retry_lines: Vec::new(),
            welcome: None,
            welcome_bytes: None,
            unsequenced: Vec::new(),
            comments: Vec::new(),
        }
    }

    pub fn error_code(&self) -> &str {
        self.error["code"].as_str().unwrap_or("")
    }

    /// The `arcp_resume` value of the response's `Set-Cookie`, if any.
    pub fn cookie_token(&self) -> Option<String> {
        let cookie = self.headers.get("set-cookie")?.to_str().ok()?;
        let pair = cookie.split(';').next()?;
        pair.strip_prefix("arcp_resume=").map(str::to_owned)
    }

    /// Reads until the welcome has arrived and returns it.
    pub async fn read_welcome(&mut self) -> Welcome {
        within("the welcome", async {
            while self.welcome.is_none() {
                if let Some(event) = self
                    .next_frame()
                    .await
                    .expect("stream ended before its welcome")
                {
                    panic!("an event before the welcome: {event:?}");
                }
            }
        })
        .await;
        self.welcome.clone().expect("welcome")
    }

    /// The next sequenced event within `limit`; `None` when the server ended
    /// the stream.
    pub async fn next_event_within(&mut self, limit: Duration) -> Option<RawEvent> {
        within_for(limit, "the next SSE event", async {
            loop {
                match self.next_frame().await {
                    None => return None,
                    Some(Some(event)) => return Some(event),
                    Some(None) => {}
                }
            }
        })
        .await
    }

    pub async fn next_event(&mut self) -> Option<RawEvent> {
        self.next_event_within(WAIT).await
    }

    /// Reads events until one satisfies `stop` (inclusive).
    pub async fn events_until(&mut self, stop: impl Fn(&RawEvent) -> bool) -> Vec<RawEvent> {
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

    /// Waits until the server ends the stream; returns the events that came
    /// before the end.
    pub async fn until_end_within(&mut self, limit: Duration) -> Vec<RawEvent> {
        within_for(limit, "the stream to end", async {
            let mut events = Vec::new();
            while let Some(frame) = self.next_frame().await {
                events.extend(frame);
            }
            events
        })
        .await
    }

    /// Reads whole events until `budget` bytes of the body have arrived (the
    /// client then drops the connection mid-frame, as a network cut would),
    /// an event satisfies `stop` (the client then drops the connection too),
    /// the server ends the stream, or nothing arrives for `idle`.
    pub async fn read_until_cut(
        &mut self,
        budget: usize,
        idle: Duration,
        mut stop: impl FnMut(&RawEvent) -> bool,
    ) -> (Vec<RawEvent>, ReadEnd) {
        let mut events = Vec::new();
        loop {
            while let Some(frame) = self.take_frame() {
                let Some(event) = frame else { continue };
                let done = stop(&event);
                events.push(event);
                if done {
                    self.body = None;
                    return (events, ReadEnd::Stopped);
                }
            }
            let Some(body) = self.body.as_mut() else {
                return (events, ReadEnd::Ended);
            };
            if self.bytes_read >= budget {
                self.body = None;
                return (events, ReadEnd::Cut);
            }
            match tokio::time::timeout(idle, body.next()).await {
                Err(_) => return (events, ReadEnd::Idle),
                Ok(Some(Ok(chunk))) => {
                    let room = budget - self.bytes_read;
                    let taken = chunk.len().min(room);
                    self.buffer.extend_from_slice(&chunk[..taken]);
                    self.bytes_read += taken;
                }
                Ok(Some(Err(_)) | None) => self.body = None,
            }
        }
    }

    /// Drops the connection.
    pub fn cut(&mut self) {
        self.body = None;
    }

    /// The next frame: `Some(Some(event))`, `Some(None)` for a frame that is
    /// not a sequenced event, `None` at the end of the stream.
    async fn next_frame(&mut self) -> Option<Option<RawEvent>> {
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            let body = self.body.as_mut()?;
            match body.next().await {
                Some(Ok(chunk)) => {
                    self.bytes_read += chunk.len();
                    self.buffer.extend_from_slice(&chunk);
                }
                Some(Err(_)) | None => {
                    self.body = None;
                    return None;
                }
            }
        }
    }

    /// Parses one complete frame out of the buffer.
    fn take_frame(&mut self) -> Option<Option<RawEvent>> {
        let end = self.buffer.windows(2).position(|pair| pair == b"\n\n")?;
        let raw: Vec<u8> = self.buffer.drain(..end + 2).collect();
        let text = std::str::from_utf8(&raw).expect("utf-8 stream");
        let (mut id, mut event, mut data) = (None, None, Vec::new());
        for line in text.lines().filter(|line| !line.is_empty()) {
            if let Some(comment) = line.strip_prefix(':') {
                self.comments.push(comment.trim().to_owned());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = Some(value.to_owned()),
                "data" => data.push(value.to_owned()),
                "retry" => self.retry_lines.push(value.to_owned()),
                other => panic!("unexpected SSE field {other:?} in {text:?}"),
            }
        }
        if data.is_empty() {
            return Some(None);
        }
        let data: Value = serde_json::from_str(&data.join("\n")).expect("event data is JSON");
        let event = event.unwrap_or_else(|| "message".to_owned());
        let Some(id) = id else {
            if event == "session.welcome" {
                assert!(self.welcome.is_none(), "a second welcome: {text}");
                self.welcome = Some(Welcome::from_envelope(data));
                self.welcome_bytes = Some(self.bytes_read - self.buffer.len());
            } else {
                self.unsequenced.push((event, data));
            }
            return Some(None);
        };
        let seq = data["event_seq"].as_u64().expect("event_seq");
        assert_eq!(id, seq.to_string(), "id: matches event_seq in {text}");
        Some(Some(RawEvent {
            seq,
            event,
            data,
            raw,
        }))
    }
}
