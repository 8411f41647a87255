//! What the gateway benchmarks share (`benches/gateway/`,
//! `benches/cluster/`): starting the release binary as a process and
//! reading its CPU and memory from /proc, the control-plane client, the lean
//! SSE reader that counts events and collects `ts_ns` latencies, and the
//! machine facts printed with every run.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub const TOKEN: &str = "bench-api-token-0001";

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- processes

pub struct Server {
    pub child: Child,
    pub address: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Resident set size in bytes, from /proc.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// User + system CPU time in seconds, from /proc.
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.pid())
    }
}

/// User + system CPU time of process `pid` in seconds, from /proc (0 when
/// it is gone).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The CPUs every server process is held to (`--pin`), when not all.
static SERVER_CPUS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Holds this process (and every thread it starts from now on) to
/// `client_cpus` and each server started after this to `server_cpus`
/// (`taskset` lists, e.g. `0` and `1`), so that client and servers never
/// share a core. Once, before the runtime starts.
pub fn pin_cpus(client_cpus: &str, server_cpus: &str) {
    let status = std::process::Command::new("taskset")
        .args(["-p", "-c", client_cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset (util-linux) is needed for --pin");
    assert!(status.success(), "taskset -p -c {client_cpus} failed");
    SERVER_CPUS
        .set(server_cpus.to_owned())
        .expect("the CPUs are chosen once");
}

/// How many CPUs a server may use: those of `--pin`, else this process's.
pub fn server_cpu_count() -> usize {
    let own = || std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(cpus) = SERVER_CPUS.get() else {
        return own();
    };
    // A taskset list: "1", "2-3", "0,2-5".
    cpus.split(',')
        .map(|part| match part.split_once('-') {
            Some((from, to)) => match (from.trim().parse::<usize>(), to.trim().parse::<usize>()) {
                (Ok(from), Ok(to)) if to >= from => to - from + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

/// `command`, run under `taskset -c` when servers are pinned.
pub fn pinned(command: Command) -> Command {
    let Some(cpus) = SERVER_CPUS.get() else {
        return command;
    };
    let inner = command.as_std();
    let mut wrapped = Command::new("taskset");
    wrapped
        .args(["-c", cpus])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (name, value) in inner.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    if let Some(directory) = inner.get_current_dir() {
        wrapped.current_dir(directory);
    }
    wrapped
}

pub async fn start_process(command: Command) -> Server {
    let mut child = pinned(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let address = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                return rest.trim().parse::<SocketAddr>().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("server address");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server { child, address }
}

/// The gateway binary to measure, when not this build's
/// ([`use_gateway_binary`]).
static GATEWAY_BINARY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Measures `path` (another build of the gateway) instead of this build's
/// binary, for alternated comparisons (`scripts/bench-ab`). Once, before
/// any gateway starts.
pub fn use_gateway_binary(path: std::path::PathBuf) {
    GATEWAY_BINARY
        .set(path)
        .expect("the gateway binary is chosen once");
}

pub async fn start_gateway(extra: &[&str]) -> Server {
    let mut command = Command::new(
        GATEWAY_BINARY
            .get()
            .map_or(env!("CARGO_BIN_EXE_arcp-gateway").as_ref(), |path| {
                path.as_os_str()
            }),
    );
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            &format!("bench:{TOKEN}"),
        ])
        .args([
            "--max-sessions-per-principal",
            "20000",
            // The storm runs 1,000 jobs at once (the default limit) and
            // keeps about 450 MB of events (the default limits are 256 MiB
            // per principal and 1 GiB for all).
            "--max-running-jobs-per-principal",
            "20000",
            "--max-retained-bytes",
            "8589934592",
            "--max-retained-bytes-per-principal",
            "8589934592",
            "--max-stream-duration-sec",
            "0",
            // Every benchmark client connects from 127.0.0.1.
            "--max-connections-per-ip",
            "0",
        ])
        .args(extra)
        .env("ARCP_GATEWAY_LOG", "warn");
    start_process(command).await
}

// ------------------------------------------------------------ control plane

pub struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(server: &Server) -> Api {
        Api::at(server.address)
    }

    /// A client of whatever listens at `address` (a gateway, or nginx in
    /// front of several).
    pub fn at(address: SocketAddr) -> Api {
        Api {
            base: format!("http://{address}"),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("post");
        response.json().await.expect("json")
    }

    pub async fn session(&self) -> String {
        let welcome = self.post("/v1/sessions", json!({})).await;
        welcome["session_id"]
            .as_str()
            .expect("session id")
            .to_owned()
    }

    pub async fn submit(&self, session: &str, input: Value) -> String {
        let accepted = self
            .post(
                &format!("/v1/sessions/{session}/jobs"),
                json!({"agent": "firehose", "input": input}),
            )
            .await;
        accepted["payload"]["job_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no job id in the answer to a submission: {accepted}"))
            .to_owned()
    }

    pub async fn wait_done(&self, session: &str, job: &str) {
        loop {
            let status: Value = self
                .client
                .get(format!("{}/v1/sessions/{session}/jobs/{job}", self.base))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("json");
            if status["payload"]["status"] != "running" && status["payload"]["status"] != "pending"
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------- SSE client

/// One HTTP/1.1 connection reading an event stream, counting job events and
/// collecting `ts_ns` latencies.
///
/// Deliberately lean, because on two cores the client's own cost is part of
/// every figure (for the gateway and the baseline alike): one task per
/// connection reading the socket directly, the response head parsed with
/// `httparse`, chunked framing undone in place, events found with `memchr`.
/// (A hyper client needs two tasks per connection, one of them woken per
/// chunk, which made the client, not the server, the bottleneck at 1,000
/// subscribers.)
pub struct Reader {
    stream: TcpStream,
    /// Bytes read and not yet de-chunked.
    wire: BytesMut,
    chunked: bool,
    /// Body bytes still due in the current chunk.
    chunk_left: usize,
    /// The CRLF after a chunk's data is still due.
    chunk_crlf_due: bool,
    /// The body ended (final chunk or EOF).
    ended: bool,
    /// De-chunked body bytes not yet split into events.
    carry: BytesMut,
    pub events: u64,
    pub bytes: u64,
    pub first_event_at: Option<Instant>,
    pub last_event_at: Option<Instant>,
    pub latencies_ns: Vec<u64>,
    pub raw: Option<BytesMut>,
}

pub async fn connect(
    address: SocketAddr,
    path: &str,
    last_event_id: Option<u64>,
    capture: bool,
) -> Reader {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n"
    );
    if let Some(id) = last_event_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut wire = BytesMut::with_capacity(64 * 1024);
    let (head_length, chunked) = loop {
        if stream.read_buf(&mut wire).await.expect("read head") == 0 {
            panic!("stream closed before its head");
        }
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(length) = response.parse(&wire).expect("response head") {
            let status = response.code.unwrap_or(0);
            assert!((200..300).contains(&status), "stream refused: {status}");
            let chunked = response.headers.iter().any(|field| {
                field.name.eq_ignore_ascii_case("transfer-encoding")
                    && field.value.eq_ignore_ascii_case(b"chunked")
            });
            break (length, chunked);
        }
    };
    let _ = wire.split_to(head_length);
    Reader {
        stream,
        wire,
        chunked,
        chunk_left: 0,
        chunk_crlf_due: false,
        ended: false,
        carry: BytesMut::new(),
        events: 0,
        bytes: 0,
        first_event_at: None,
        last_event_at: None,
        latencies_ns: Vec::new(),
        raw: capture.then(BytesMut::new),
    }
}

impl Reader {
    /// Reads until `events` job events arrived (or the stream ends).
    pub async fn read_events(&mut self, until: u64, measure_latency: bool) {
        loop {
            let received = now_ns();
            self.take_body();
            self.split_events(received, measure_latency);
            if self.events >= until || self.ended {
                return;
            }
            if self.wire.capacity() - self.wire.len() < 64 * 1024 {
                self.wire.reserve(256 * 1024);
            }
            match self.stream.read_buf(&mut self.wire).await {
                Ok(0) | Err(_) => {
                    self.ended = true;
                    return;
                }
                Ok(_) => {}
            }
        }
    }

    /// Moves body bytes from `wire` to `carry`, undoing chunked framing.
    fn take_body(&mut self) {
        if !self.chunked {
            self.bytes += self.wire.len() as u64;
            self.carry.extend_from_slice(&self.wire);
            self.wire.clear();
            return;
        }
        loop {
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(self.wire.len());
                if take == 0 {
                    return;
                }
                self.carry.extend_from_slice(&self.wire[..take]);
                let _ = self.wire.split_to(take);
                self.bytes += take as u64;
                self.chunk_left -= take;
                self.chunk_crlf_due = self.chunk_left == 0;
                continue;
            }
            if self.chunk_crlf_due {
                if self.wire.len() < 2 {
                    return;
                }
                let _ = self.wire.split_to(2);
                self.chunk_crlf_due = false;
            }
            match httparse::parse_chunk_size(&self.wire) {
                Ok(httparse::Status::Complete((skip, 0))) => {
                    let _ = self.wire.split_to(skip);
                    self.ended = true;
                    return;
                }
                Ok(httparse::Status::Complete((skip, size))) => {
                    let _ = self.wire.split_to(skip);
                    self.chunk_left = size as usize;
                }
                Ok(httparse::Status::Partial) => return,
                Err(_) => panic!("bad chunk framing"),
            }
        }
    }

    /// Counts the complete events in `carry` and drops them.
    fn split_events(&mut self, received: u64, measure_latency: bool) {
        let mut consumed = 0;
        for end in memchr::memmem::find_iter(&self.carry, b"\n\n") {
            if end < consumed {
                continue;
            }
            let event = &self.carry[consumed..end + 2];
            consumed = end + 2;
            if !event.starts_with(b"id: ") {
                continue;
            }
            self.events += 1;
            let now = Instant::now();
            self.first_event_at.get_or_insert(now);
            self.last_event_at = Some(now);
            if let Some(raw) = &mut self.raw {
                raw.extend_from_slice(event);
            }
            if measure_latency {
                if let Some(ts) = ts_ns(event) {
                    self.latencies_ns.push(received.saturating_sub(ts));
                }
            }
        }
        let _ = self.carry.split_to(consumed);
    }
}

pub fn ts_ns(event: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(event, b"\"ts_ns\":")? + 8;
    let digits = event[at..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    std::str::from_utf8(&event[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1e6
}

/// One full replay read: (total time, time to first event, bytes).
pub async fn timed_replay(
    address: SocketAddr,
    path: &str,
    last_event_id: Option<u64>,
    count: u64,
) -> (Duration, Duration, u64) {
    let started = Instant::now();
    let mut reader = connect(address, path, last_event_id, false).await;
    reader.read_events(count + 1, false).await;
    let total = started.elapsed();
    let first = reader.first_event_at.map_or(total, |at| at - started);
    (total, first, reader.bytes)
}

/// Reads `events_each` from every reader; returns all latencies and the
/// delivered rate, counted from the first event anywhere to the last (so a
/// job's start delay does not dilute it).
pub async fn read_all(readers: Vec<Reader>, events_each: u64) -> (Vec<u64>, f64) {
    let delivery = deliver_all(readers, events_each).await;
    (delivery.latencies, delivery.rate)
}

/// What a set of readers received.
pub struct Delivery {
    /// Emit-to-client latency of every event that carried `ts_ns`, in ns.
    pub latencies: Vec<u64>,
    /// The same, per reader in the order it read them (for
    /// `--latencies`: which event each one belongs to).
    pub per_reader: Vec<Vec<u64>>,
    /// Events per second from the first event anywhere to the last.
    pub rate: f64,
    pub events: u64,
    /// Body bytes (after chunked framing is undone).
    pub bytes: u64,
}

impl Delivery {
    /// Mean body bytes per event: the frame size the server sent.
    pub fn frame_bytes(&self) -> f64 {
        self.bytes as f64 / self.events.max(1) as f64
    }
}

/// [`read_all`], with the events and bytes received.
pub async fn deliver_all(readers: Vec<Reader>, events_each: u64) -> Delivery {
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(60),
                    reader.read_events(events_each, true),
                )
                .await;
                reader
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut per_reader = Vec::new();
    let (mut events, mut bytes) = (0, 0);
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for task in tasks {
        let mut reader = task.await.expect("reader");
        events += reader.events;
        bytes += reader.bytes;
        latencies.extend_from_slice(&reader.latencies_ns);
        per_reader.push(std::mem::take(&mut reader.latencies_ns));
        first = match (first, reader.first_event_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(reader.last_event_at);
    }
    let span = match (first, last) {
        (Some(first), Some(last)) if last > first => (last - first).as_secs_f64(),
        _ => f64::INFINITY,
    };
    Delivery {
        latencies,
        per_reader,
        rate: events as f64 / span,
        events,
        bytes,
    }
}

/// Creates `count` sessions through `api`, each with its stream opened at
/// `address`.
pub async fn sessions_with_streams(
    api: &Api,
    address: SocketAddr,
    count: u64,
) -> (Vec<String>, Vec<Reader>) {
    let mut ids = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..count {
        let session = api.session().await;
        let path = format!("/v1/sessions/{session}/events");
        readers.push(connect(address, &path, None, false).await);
        ids.push(session);
    }
    (ids, readers)
}

/// Submits one paced job per session (`per_session` events of 64 B at
/// `rate` per second), all starting at `start_at`, their phases spread
/// evenly over one period as independent producers' are, rather than all
/// firing in one burst.
pub async fn submit_paced(
    api: &Api,
    sessions: &[String],
    rate: u64,
    per_session: u64,
    start_at: Instant,
) {
    let period_ms = 1000 / rate.max(1);
    let count = sessions.len() as u64;
    for (index, session) in sessions.iter().enumerate() {
        let phase = index as u64 * period_ms / count;
        let delay = start_at
            .saturating_duration_since(Instant::now())
            .as_millis() as u64
            + phase;
        let input = json!({"count": per_session, "size": 64, "rate": rate, "delay_ms": delay});
        api.submit(session, input).await;
    }
}

pub fn machine_facts() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_owned();
    let memory = read("/proc/meminfo")
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse::<u64>()
        .unwrap_or(0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": memory / 1024 / 1024,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}
