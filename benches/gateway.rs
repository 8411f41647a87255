//! The gateway benchmark: the real release binary, driven over loopback by
//! many concurrent HTTP/1.1 SSE clients, next to a baseline, a minimal hyper
//! server (run as a separate process, like the gateway) streaming the same
//! pre-encoded frames. Every result is also given as a ratio to the baseline.
//!
//! Run: `cargo bench --bench gateway` (options after `--`):
//!   `--quick`          smaller workloads (a smoke run, not for quoting)
//!   `--json PATH`      also write the results as JSON
//!   `--only NAME`      one scenario: replay, live, fanout, idle, storm, append
//!
//! Scenarios (issue "Performance"): replay, live, fan-out, idle, resume storm,
//! append cost per backend. It measures and prints; it asserts nothing about
//! speed. The same scenarios in cluster mode (Redis, nginx, 1-3 nodes) are
//! `benches/cluster.rs`; what both use is in `benches/common/`.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcp_gateway::http::sse::STREAM_READ_LIMIT;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::process::Command;

use common::{
    connect, machine_facts, now_ns, percentile, read_all, start_gateway, start_process,
    timed_replay, Api, Server,
};

const TOTAL_LIVE_RATE: u64 = 10_000;

async fn start_baseline() -> Server {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.arg("--serve-baseline");
    start_process(command).await
}

// -------------------------------------------------------------- the baseline

/// A minimal hyper server streaming pre-encoded SSE frames: the loopback
/// limit the gateway is compared with.
async fn serve_baseline() {
    let listener = TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind baseline");
    println!(
        "baseline listening on http://{}",
        listener.local_addr().expect("address")
    );
    let replay_frames: Arc<std::sync::Mutex<HashMap<String, Bytes>>> = Arc::default();
    let (broadcast, _) = tokio::sync::broadcast::channel::<Bytes>(65_536);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let frames = replay_frames.clone();
        let broadcast = broadcast.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let frames = frames.clone();
                    let broadcast = broadcast.clone();
                    async move {
                        Ok::<_, Infallible>(baseline_response(request, frames, broadcast).await)
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type BaselineBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn query(request: &hyper::Request<hyper::body::Incoming>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn streaming(receiver: tokio::sync::mpsc::Receiver<Bytes>) -> hyper::Response<BaselineBody> {
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

/// A query parameter, or `default` when absent or unparsable.
fn param<T: std::str::FromStr>(params: &HashMap<String, String>, name: &str, default: T) -> T {
    params
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Frame `number` of a paced stream, and when it is due.
struct Paced {
    number: u64,
    due: Instant,
}

impl Paced {
    async fn due(&self) {
        tokio::time::sleep_until(self.due.into()).await;
    }
}

/// `count` frames at `rate` per second from now.
fn paced(rate: u64, count: u64) -> impl Iterator<Item = Paced> {
    let started = Instant::now();
    (1..=count).map(move |number| Paced {
        number,
        due: started + Duration::from_secs_f64(number as f64 / rate.max(1) as f64),
    })
}

fn live_frame(seq: u64, size: usize) -> Bytes {
    let data = json!({"type": "job.event", "event_seq": seq, "payload": {"kind": "log", "body": {"n": seq, "ts_ns": now_ns(), "message": "x".repeat(size)}}});
    Bytes::from(format!("id: {seq}\nevent: job.event\ndata: {data}\n\n"))
}

async fn baseline_response(
    request: hyper::Request<hyper::body::Incoming>,
    frames: Arc<std::sync::Mutex<HashMap<String, Bytes>>>,
    broadcast: tokio::sync::broadcast::Sender<Bytes>,
) -> hyper::Response<BaselineBody> {
    let params = query(&request);
    let name = params.get("name").cloned().unwrap_or_default();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(8);
    match request.uri().path() {
        // Stores frames to replay later (the bench uploads what the gateway sent).
        "/store" => {
            let body = request
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            frames.lock().expect("frames").insert(name, body);
            return hyper::Response::new(http_body_util::Full::new(Bytes::new()).boxed());
        }
        "/replay" => {
            let stored = frames
                .lock()
                .expect("frames")
                .get(&name)
                .cloned()
                .unwrap_or_default();
            tokio::spawn(async move {
                let mut offset = 0;
                while offset < stored.len() {
                    // The same chunk size the gateway's streams use.
                    let mut end = (offset + STREAM_READ_LIMIT.max_bytes).min(stored.len());
                    while end < stored.len() && !stored[..end].ends_with(b"\n\n") {
                        end += 1;
                    }
                    if sender.send(stored.slice(offset..end)).await.is_err() {
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
            let size: usize = param(&params, "size", 64);
            tokio::spawn(async move {
                for seq in paced(rate, count) {
                    seq.due().await;
                    if sender.send(live_frame(seq.number, size)).await.is_err() {
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
            tokio::spawn(async move {
                for seq in paced(rate, count) {
                    seq.due().await;
                    let _ = broadcast.send(live_frame(seq.number, 64));
                }
            });
            return hyper::Response::new(http_body_util::Full::new(Bytes::new()).boxed());
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

// ---------------------------------------------------------------- reporting

#[derive(Clone)]
struct Row {
    scenario: String,
    metric: String,
    gateway: f64,
    baseline: Option<f64>,
    unit: &'static str,
    /// Whether a larger value is better (for the ratio's reading).
    higher_is_better: bool,
}

fn latency_rows(rows: &mut Vec<Row>, scenario: &str, gateway: &mut [u64], baseline: &mut [u64]) {
    gateway.sort_unstable();
    baseline.sort_unstable();
    for (name, p) in [
        ("p50 latency", 0.5),
        ("p99 latency", 0.99),
        ("max latency", 1.0),
    ] {
        rows.push(Row {
            scenario: scenario.into(),
            metric: name.into(),
            gateway: percentile(gateway, p),
            baseline: Some(percentile(baseline, p)),
            unit: "ms",
            higher_is_better: false,
        });
    }
}

// ---------------------------------------------------------------- scenarios

struct Plan {
    quick: bool,
}

/// Reads per server in the replay scenario; the best is reported.
const REPLAY_ROUNDS: usize = 7;

async fn scenario_replay(plan: &Plan, rows: &mut Vec<Row>) {
    let sizes: &[u64] = if plan.quick {
        &[10_000]
    } else {
        &[10_000, 100_000]
    };
    for &count in sizes {
        for size in [64u64, 1024] {
            let gateway = start_gateway(&[
                "--max-events-per-session",
                "200000",
                "--max-bytes-per-session",
                "1000000000",
            ])
            .await;
            let api = Api::new(&gateway);
            let session = api.session().await;
            let job = api
                .submit(&session, json!({"count": count, "size": size}))
                .await;
            api.wait_done(&session, &job).await;
            // The first read captures what the gateway sends, for the
            // baseline to serve the same bytes.
            let mut capture = connect(
                gateway.address,
                &format!("/v1/sessions/{session}/events"),
                Some(0),
                true,
            )
            .await;
            capture.read_events(count + 1, false).await;
            let captured = capture.raw.take().unwrap_or_default().freeze();
            drop(capture);
            let baseline = start_baseline().await;
            let name = format!("replay-{count}-{size}");
            reqwest::Client::new()
                .post(format!("http://{}/store?name={name}", baseline.address))
                .body(captured)
                .send()
                .await
                .expect("upload");
            // Best of seven reads each, gateway and baseline alternating, so
            // a noisy moment on this shared machine hits both alike.
            let mut best_gateway = (Duration::MAX, Duration::MAX, 0u64);
            let mut best_baseline = (Duration::MAX, Duration::MAX, 0u64);
            for _ in 0..REPLAY_ROUNDS {
                let gateway_read = timed_replay(
                    gateway.address,
                    &format!("/v1/sessions/{session}/events"),
                    Some(0),
                    count,
                )
                .await;
                best_gateway = best_gateway.min(gateway_read);
                let baseline_read = timed_replay(
                    baseline.address,
                    &format!("/replay?name={name}"),
                    None,
                    count,
                )
                .await;
                best_baseline = best_baseline.min(baseline_read);
            }
            drop(gateway);
            drop(baseline);
            let label = format!("replay {count} x {size} B");
            let events = (count + 1) as f64;
            rows.push(Row {
                scenario: label.clone(),
                metric: "events/s".into(),
                gateway: events / best_gateway.0.as_secs_f64(),
                baseline: Some(events / best_baseline.0.as_secs_f64()),
                unit: "ev/s",
                higher_is_better: true,
            });
            rows.push(Row {
                scenario: label.clone(),
                metric: "throughput".into(),
                gateway: best_gateway.2 as f64 / 1e6 / best_gateway.0.as_secs_f64(),
                baseline: Some(best_gateway.2 as f64 / 1e6 / best_baseline.0.as_secs_f64()),
                unit: "MB/s",
                higher_is_better: true,
            });
            rows.push(Row {
                scenario: label,
                metric: "time to first event".into(),
                gateway: best_gateway.1.as_secs_f64() * 1e3,
                baseline: Some(best_baseline.1.as_secs_f64() * 1e3),
                unit: "ms",
                higher_is_better: false,
            });
        }
    }
}

async fn scenario_live(plan: &Plan, rows: &mut Vec<Row>) {
    let seconds = if plan.quick { 2 } else { 4 };
    let counts: &[u64] = if plan.quick {
        &[1, 100]
    } else {
        &[1, 100, 1000]
    };
    for &sessions in counts {
        let rate = TOTAL_LIVE_RATE / sessions;
        let per_session = rate * seconds;
        let gateway = start_gateway(&[]).await;
        let api = Api::new(&gateway);
        let mut ids = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..sessions {
            let session = api.session().await;
            readers.push(
                connect(
                    gateway.address,
                    &format!("/v1/sessions/{session}/events"),
                    None,
                    false,
                )
                .await,
            );
            ids.push(session);
        }
        // Every job starts after all are submitted, so the measurement is
        // steady-state delivery, not submission traffic (the baseline has
        // no submissions).
        let start_at = Instant::now() + Duration::from_millis(1000 + 3 * sessions);
        // Phases are spread evenly over one period, as independent streams'
        // (and the baseline's) are, rather than all firing in one burst.
        let period_ms = 1000 / rate.max(1);
        for (index, session) in ids.iter().enumerate() {
            let phase = index as u64 * period_ms / sessions;
            let delay = start_at
                .saturating_duration_since(Instant::now())
                .as_millis() as u64
                + phase;
            let input = json!({"count": per_session, "size": 64, "rate": rate, "delay_ms": delay});
            api.submit(session, input).await;
        }
        let (mut gateway_latency, gateway_rate) = read_all(readers, per_session).await;
        drop(gateway);
        let baseline = start_baseline().await;
        let mut readers = Vec::new();
        for _ in 0..sessions {
            readers.push(
                connect(
                    baseline.address,
                    &format!("/live?rate={rate}&count={per_session}&size=64"),
                    None,
                    false,
                )
                .await,
            );
        }
        let (mut baseline_latency, baseline_rate) = read_all(readers, per_session).await;
        let label = format!("live {sessions} sessions, {TOTAL_LIVE_RATE} ev/s total");
        rows.push(Row {
            scenario: label.clone(),
            metric: "delivered events/s".into(),
            gateway: gateway_rate,
            baseline: Some(baseline_rate),
            unit: "ev/s",
            higher_is_better: true,
        });
        latency_rows(rows, &label, &mut gateway_latency, &mut baseline_latency);
    }
}

async fn scenario_fanout(plan: &Plan, rows: &mut Vec<Row>) {
    let seconds = if plan.quick { 2 } else { 4 };
    let counts: &[u64] = if plan.quick { &[100] } else { &[100, 1000] };
    for &subscribers in counts {
        let rate = TOTAL_LIVE_RATE / subscribers;
        let count = rate * seconds;
        let gateway = start_gateway(&[]).await;
        let api = Api::new(&gateway);
        let submitter = api.session().await;
        let job = api.submit(&submitter, json!({"count": count, "size": 64, "rate": rate, "delay_ms": 1500 + subscribers * 4})).await;
        let mut readers = Vec::new();
        for _ in 0..subscribers {
            let session = api.session().await;
            api.post(
                &format!("/v1/sessions/{session}/subscriptions"),
                json!({"job_id": job}),
            )
            .await;
            readers.push(
                connect(
                    gateway.address,
                    &format!("/v1/sessions/{session}/events"),
                    None,
                    false,
                )
                .await,
            );
        }
        let (mut gateway_latency, gateway_rate) = read_all(readers, count).await;
        drop(gateway);
        let baseline = start_baseline().await;
        let mut readers = Vec::new();
        for _ in 0..subscribers {
            readers.push(connect(baseline.address, "/fanout", None, false).await);
        }
        reqwest::Client::new()
            .get(format!(
                "http://{}/fanout-start?rate={rate}&count={count}",
                baseline.address
            ))
            .send()
            .await
            .expect("start fan-out");
        let (mut baseline_latency, baseline_rate) = read_all(readers, count).await;
        let label =
            format!("fan-out 1 job -> {subscribers} subscribers, {TOTAL_LIVE_RATE} ev/s total");
        rows.push(Row {
            scenario: label.clone(),
            metric: "delivered events/s".into(),
            gateway: gateway_rate,
            baseline: Some(baseline_rate),
            unit: "ev/s",
            higher_is_better: true,
        });
        latency_rows(rows, &label, &mut gateway_latency, &mut baseline_latency);
    }
}

/// Opens `count` idle streams against `server` (creating a session for each
/// when `gateway`), returns (RSS per stream in bytes, CPU seconds per second).
async fn idle_cost(server: &Server, count: usize, gateway: bool) -> (f64, f64) {
    let api = Api::new(server);
    let mut paths = Vec::with_capacity(count);
    for _ in 0..count {
        paths.push(if gateway {
            format!("/v1/sessions/{}/events", api.session().await)
        } else {
            "/idle".into()
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss();
    let mut readers = Vec::with_capacity(count);
    for chunk in paths.chunks(200) {
        let opened = futures_util::future::join_all(
            chunk
                .iter()
                .map(|path| connect(server.address, path, None, false)),
        )
        .await;
        readers.extend(opened);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss();
    let cpu_start = server.cpu_seconds();
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let cpu = (server.cpu_seconds() - cpu_start) / window.as_secs_f64();
    drop(readers);
    (after.saturating_sub(before) as f64 / count as f64, cpu)
}

async fn scenario_idle(plan: &Plan, rows: &mut Vec<Row>) {
    let count = if plan.quick { 2_000 } else { 10_000 };
    let gateway = start_gateway(&["--heartbeat-interval-sec", "5"]).await;
    let (gateway_rss, gateway_cpu) = idle_cost(&gateway, count, true).await;
    drop(gateway);
    let baseline = start_baseline().await;
    let (baseline_rss, baseline_cpu) = idle_cost(&baseline, count, false).await;
    let label = format!("idle {count} streams, heartbeat 5 s");
    rows.push(Row {
        scenario: label.clone(),
        metric: "RSS per stream".into(),
        gateway: gateway_rss / 1024.0,
        baseline: Some(baseline_rss / 1024.0),
        unit: "KiB",
        higher_is_better: false,
    });
    rows.push(Row {
        scenario: label,
        metric: "CPU".into(),
        gateway: gateway_cpu * 100.0,
        baseline: Some(baseline_cpu * 100.0),
        unit: "% of a core",
        higher_is_better: false,
    });
}

async fn scenario_storm(plan: &Plan, rows: &mut Vec<Row>) {
    let clients: u64 = if plan.quick { 200 } else { 1_000 };
    let behind = 1_000u64;
    let gateway = start_gateway(&[]).await;
    let api = Arc::new(Api::new(&gateway));
    let mut sessions = Vec::new();
    for _ in 0..clients {
        let session = api.session().await;
        let job = api
            .submit(&session, json!({"count": behind, "size": 64}))
            .await;
        sessions.push((session, job));
    }
    for (session, job) in &sessions {
        api.wait_done(session, job).await;
    }
    let address = gateway.address;
    let storm = |targets: Vec<String>, address: SocketAddr| async move {
        let started = Instant::now();
        let spacing = Duration::from_secs(1) / targets.len().max(1) as u32;
        let tasks: Vec<_> = targets
            .into_iter()
            .enumerate()
            .map(|(index, path)| {
                tokio::spawn(async move {
                    tokio::time::sleep(spacing * index as u32).await;
                    let connecting = Instant::now();
                    let mut reader = connect(
                        address,
                        &path,
                        if path.starts_with("/v1") {
                            Some(0)
                        } else {
                            None
                        },
                        false,
                    )
                    .await;
                    reader.read_events(behind + 1, false).await;
                    reader
                        .first_event_at
                        .map_or(Duration::ZERO, |at| at - connecting)
                })
            })
            .collect();
        let mut firsts = Vec::new();
        for task in tasks {
            firsts.push(task.await.expect("client").as_nanos() as u64);
        }
        (started.elapsed(), firsts)
    };
    let targets: Vec<String> = sessions
        .iter()
        .map(|(session, _)| format!("/v1/sessions/{session}/events"))
        .collect();
    let (gateway_total, mut gateway_firsts) = storm(targets, address).await;
    // Capture one session's frames for the baseline.
    let mut sample = connect(
        address,
        &format!("/v1/sessions/{}/events", sessions[0].0),
        Some(0),
        true,
    )
    .await;
    sample.read_events(behind + 1, false).await;
    let frames = sample.raw.take().expect("captured").freeze();
    drop(gateway);
    let baseline = start_baseline().await;
    reqwest::Client::new()
        .post(format!("http://{}/store?name=storm", baseline.address))
        .body(frames)
        .send()
        .await
        .expect("upload");
    let targets = (0..clients)
        .map(|_| "/replay?name=storm".to_owned())
        .collect();
    let (baseline_total, mut baseline_firsts) = storm(targets, baseline.address).await;
    gateway_firsts.sort_unstable();
    baseline_firsts.sort_unstable();
    let label = format!("resume storm {clients} clients x {behind} behind, over 1 s");
    rows.push(Row {
        scenario: label.clone(),
        metric: "all caught up".into(),
        gateway: gateway_total.as_secs_f64(),
        baseline: Some(baseline_total.as_secs_f64()),
        unit: "s",
        higher_is_better: false,
    });
    rows.push(Row {
        scenario: label,
        metric: "p99 reconnect -> first replayed event".into(),
        gateway: percentile(&gateway_firsts, 0.99),
        baseline: Some(percentile(&baseline_firsts, 0.99)),
        unit: "ms",
        higher_is_better: false,
    });
}

async fn scenario_append(plan: &Plan, rows: &mut Vec<Row>) {
    let count: u64 = if plan.quick { 50_000 } else { 200_000 };
    let dir = std::env::temp_dir().join(format!("arcp-bench-append-{}", std::process::id()));
    let dir_text = dir.to_string_lossy().into_owned();
    for (backend, extra) in [
        ("memory", vec![]),
        ("sqlite", vec!["--data-dir", dir_text.as_str()]),
    ] {
        let mut args = vec!["--max-events-per-session", "300000"];
        args.extend(extra);
        let gateway = start_gateway(&args).await;
        let api = Api::new(&gateway);
        let session = api.session().await;
        let started = Instant::now();
        let job = api
            .submit(&session, json!({"count": count, "size": 64}))
            .await;
        api.wait_done(&session, &job).await;
        let elapsed = started.elapsed();
        rows.push(Row {
            scenario: format!("append {count} x 64 B, one session"),
            metric: format!("{backend} events/s"),
            gateway: count as f64 / elapsed.as_secs_f64(),
            baseline: None,
            unit: "ev/s",
            higher_is_better: true,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn print_table(rows: &[Row]) {
    println!("| scenario | metric | gateway | baseline | ratio to baseline |");
    println!("|---|---|---:|---:|---:|");
    for row in rows {
        let baseline = row
            .baseline
            .map_or("-".into(), |b| format!("{b:.2} {}", row.unit));
        let ratio = match row.baseline {
            Some(b) if b > 0.0 && row.gateway > 0.0 => {
                if row.higher_is_better {
                    format!("{:.0} %", 100.0 * row.gateway / b)
                } else {
                    format!("{:.2}x", row.gateway / b)
                }
            }
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {:.2} {} | {} | {} |",
            row.scenario, row.metric, row.gateway, row.unit, baseline, ratio
        );
    }
}

async fn run(args: Vec<String>) {
    let plan = Plan {
        quick: args.iter().any(|a| a == "--quick"),
    };
    let only = args
        .windows(2)
        .find(|pair| pair[0] == "--only")
        .map(|pair| pair[1].clone());
    let json_path = args
        .windows(2)
        .find(|pair| pair[0] == "--json")
        .map(|pair| pair[1].clone());
    let command = format!("cargo bench --bench gateway -- {}", args.join(" "));
    let machine = machine_facts();
    println!("command: {}", command.trim());
    println!("machine: {machine}");
    let started = Instant::now();
    let mut rows = Vec::new();
    let wanted = |name: &str| only.as_deref().is_none_or(|only| only == name);
    if wanted("replay") {
        scenario_replay(&plan, &mut rows).await;
    }
    if wanted("live") {
        scenario_live(&plan, &mut rows).await;
    }
    if wanted("fanout") {
        scenario_fanout(&plan, &mut rows).await;
    }
    if wanted("idle") {
        scenario_idle(&plan, &mut rows).await;
    }
    if wanted("storm") {
        scenario_storm(&plan, &mut rows).await;
    }
    if wanted("append") {
        scenario_append(&plan, &mut rows).await;
    }
    println!();
    print_table(&rows);
    println!("\nfinished in {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = json_path {
        let rows: Vec<Value> = rows
            .iter()
            .map(|row| {
                json!({
                    "scenario": row.scenario, "metric": row.metric, "unit": row.unit,
                    "gateway": row.gateway, "baseline": row.baseline,
                })
            })
            .collect();
        let document = json!({"command": command.trim(), "machine": machine, "rows": rows});
        std::fs::write(&path, serde_json::to_vec_pretty(&document).expect("json"))
            .expect("write json");
        println!("wrote {path}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.iter().any(|a| a == "--serve-baseline") {
        runtime.block_on(serve_baseline());
        return;
    }
    runtime.block_on(run(args));
}
