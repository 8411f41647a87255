//! The cluster benchmark (issue 12): the gateway's replay, live and fan-out
//! scenarios through round-robin nginx in front of 1, 2 and 3 cluster nodes
//! sharing one Redis, beside the single-node memory gateway (direct and
//! behind the same nginx) in the same run, plus what one append costs Redis.
//!
//! Run: `cargo bench --bench cluster` (options after `--`):
//!   `--quick`             smaller workloads (a smoke run, not for quoting)
//!   `--json PATH`         also write the results as JSON
//!   `--rate N`            total events/s of the live and fan-out scenarios
//!                         (default 2000)
//!   `--fsync always`      Redis `appendfsync always` (default `everysec`)
//!   `--only NAME`         one scenario: append, replay, live, fanout
//!
//! It starts everything itself in a temporary directory: `redis-server`
//! (deploy/cluster/redis.conf, on a unix socket, AOF on, noeviction), the
//! release binary as N nodes (`--redis-url`, one `--secret`, one token), and
//! nginx with deploy/cluster/nginx.conf's settings (its upstream rewritten to
//! the nodes' ports). A missing redis-server or nginx ends the run with what
//! to install, never a skipped figure.
//!
//! Scenarios, each measured through the same lean SSE client as
//! `benches/gateway/` (benches/common):
//! - append: 4 sessions each running an unpaced `firehose` (64 B events) at
//!   once; events/s, CPU of the nodes, nginx and Redis over the run, and
//!   Redis CPU per append (`INFO cpu` used_cpu_sys + used_cpu_user delta over
//!   the appends stored, read back from each log's `top`).
//! - replay: one session's finished log read from the start (best of 3).
//! - live: one session, one paced job, latency from the event's `ts_ns` to
//!   its arrival at the client.
//! - fan-out: one paced job, its events copied into K = 100 subscriber
//!   sessions (`subscribe`, §7.6), each read by its own stream; through
//!   nginx the subscribers' streams land on every node, the job on one.
//! - many producers: K = 100 sessions, each with its own paced job and its
//!   own stream, at the same total delivered rate as the fan-out (the same
//!   number of appends and streams, K producers instead of one).

// Shared with benches/gateway/, which uses the parts this one does not.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod stack;
mod table;

use std::time::{Duration, Instant};

use serde_json::json;

use common::{
    connect, machine_facts, percentile, read_all, sessions_with_streams, submit_paced,
    timed_replay, Api,
};
use stack::{tool, Target};
use table::{cpu_rows, Table};

const APPEND_SESSIONS: usize = 4;
const FANOUT_SESSIONS: u64 = 100;

struct Plan {
    quick: bool,
    rate: u64,
    fsync: String,
}

// ---------------------------------------------------------------- scenarios

async fn wait_all_done(api: &Api, jobs: &[(String, String)]) {
    for (session, job) in jobs {
        tokio::time::timeout(Duration::from_secs(300), api.wait_done(session, job))
            .await
            .expect("job finished within 300 s");
    }
}

async fn scenario_append(plan: &Plan, target: &Target, column: usize, table: &mut Table) {
    let count: u64 = if plan.quick { 2_000 } else { 10_000 };
    let api = Api::at(target.entry());
    let mut sessions = Vec::new();
    for _ in 0..APPEND_SESSIONS {
        sessions.push(api.session().await);
    }
    let before = target.cpu().await;
    let started = Instant::now();
    let mut jobs = Vec::new();
    for session in &sessions {
        let job = api
            .submit(session, json!({"count": count, "size": 64}))
            .await;
        jobs.push((session.clone(), job));
    }
    wait_all_done(&api, &jobs).await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = target.cpu().await;
    let label = format!("append: {APPEND_SESSIONS} sessions x {count} x 64 B, unpaced");
    let events = (APPEND_SESSIONS as u64 * count) as f64;
    table.put(column, &label, "events/s", "ev/s", Some(events / elapsed));
    cpu_rows(table, column, &label, &before, &after, elapsed);
    // Appends stored: every event of the logs, job lifecycle events included.
    let mut appends = 0;
    if let Some(redis) = &target.redis {
        for session in &sessions {
            appends += redis.log_top(session).await;
        }
    }
    let per_append = match (before.redis, after.redis) {
        (Some(a), Some(b)) if appends > 0 => Some((b - a) * 1e6 / appends as f64),
        _ => None,
    };
    table.put(column, &label, "Redis CPU per append", "µs", per_append);
}

async fn scenario_replay(plan: &Plan, target: &Target, column: usize, table: &mut Table) {
    let count: u64 = if plan.quick { 5_000 } else { 20_000 };
    let api = Api::at(target.entry());
    for size in [64u64, 1024] {
        let session = api.session().await;
        let job = api
            .submit(&session, json!({"count": count, "size": size}))
            .await;
        wait_all_done(&api, &[(session.clone(), job)]).await;
        let path = format!("/v1/sessions/{session}/events");
        let mut best = (Duration::MAX, Duration::MAX, 0u64);
        for _ in 0..3 {
            best = best.min(timed_replay(target.entry(), &path, Some(0), count).await);
        }
        let label = format!("replay {count} x {size} B from the start, best of 3");
        let seconds = best.0.as_secs_f64();
        table.put(
            column,
            &label,
            "events/s",
            "ev/s",
            Some((count + 1) as f64 / seconds),
        );
        table.put(
            column,
            &label,
            "throughput",
            "MB/s",
            Some(best.2 as f64 / 1e6 / seconds),
        );
        table.put(
            column,
            &label,
            "time to first event",
            "ms",
            Some(best.1.as_secs_f64() * 1e3),
        );
    }
}

/// Streams `sessions` sessions (one job each, `rate` ev/s in total, phases
/// spread over one period) and records delivery, latency and CPU.
async fn paced_sessions(
    plan: &Plan,
    target: &Target,
    sessions: u64,
    label: &str,
    column: usize,
    table: &mut Table,
) {
    let seconds = if plan.quick { 2 } else { 4 };
    let rate = (plan.rate / sessions).max(1);
    let per_session = rate * seconds;
    let api = Api::at(target.entry());
    let (ids, readers) = sessions_with_streams(&api, target.entry(), sessions).await;
    let start_at = Instant::now() + Duration::from_millis(1000 + 5 * sessions);
    submit_paced(&api, &ids, rate, per_session, start_at).await;
    tokio::time::sleep_until(start_at.into()).await;
    let before = target.cpu().await;
    let window = Instant::now();
    let (latencies, delivered) = read_all(readers, per_session).await;
    let after = target.cpu().await;
    record_delivery(table, column, label, latencies, delivered);
    cpu_rows(
        table,
        column,
        label,
        &before,
        &after,
        window.elapsed().as_secs_f64(),
    );
}

fn record_delivery(
    table: &mut Table,
    column: usize,
    label: &str,
    mut latencies: Vec<u64>,
    rate: f64,
) {
    latencies.sort_unstable();
    table.put(column, label, "delivered events/s", "ev/s", Some(rate));
    table.put(
        column,
        label,
        "p50 latency",
        "ms",
        Some(percentile(&latencies, 0.5)),
    );
    table.put(
        column,
        label,
        "p99 latency",
        "ms",
        Some(percentile(&latencies, 0.99)),
    );
    table.put(
        column,
        label,
        "max latency",
        "ms",
        Some(percentile(&latencies, 1.0)),
    );
}

async fn scenario_live(plan: &Plan, target: &Target, column: usize, table: &mut Table) {
    let label = format!("live: 1 session, {} ev/s", plan.rate);
    paced_sessions(plan, target, 1, &label, column, table).await;
}

async fn scenario_fanout(plan: &Plan, target: &Target, column: usize, table: &mut Table) {
    subscribe_fanout(plan, target, column, table).await;
    let label = format!(
        "many producers: {FANOUT_SESSIONS} sessions, a job each, {} ev/s total",
        plan.rate
    );
    paced_sessions(plan, target, FANOUT_SESSIONS, &label, column, table).await;
}

/// The fan-out proper: one job, FANOUT_SESSIONS subscriber sessions.
async fn subscribe_fanout(plan: &Plan, target: &Target, column: usize, table: &mut Table) {
    let seconds = if plan.quick { 2 } else { 4 };
    let rate = (plan.rate / FANOUT_SESSIONS).max(1);
    let count = rate * seconds;
    let api = Api::at(target.entry());
    let submitter = api.session().await;
    let delay = 1500 + FANOUT_SESSIONS * 5;
    let input = json!({"count": count, "size": 64, "rate": rate, "delay_ms": delay});
    let job = api.submit(&submitter, input).await;
    let job_starts = Instant::now() + Duration::from_millis(delay);
    let mut readers = Vec::new();
    for _ in 0..FANOUT_SESSIONS {
        let session = api.session().await;
        let subscription = json!({"job_id": job});
        let answer = api
            .post(
                &format!("/v1/sessions/{session}/subscriptions"),
                subscription,
            )
            .await;
        assert!(answer.get("code").is_none(), "subscribe refused: {answer}");
        let path = format!("/v1/sessions/{session}/events");
        readers.push(connect(target.entry(), &path, None, false).await);
    }
    // CPU from the job's first event (readers already read meanwhile).
    let reading = tokio::spawn(read_all(readers, count));
    tokio::time::sleep_until(job_starts.into()).await;
    let before = target.cpu().await;
    let window = Instant::now();
    let (latencies, delivered) = reading.await.expect("readers");
    let after = target.cpu().await;
    let label = format!(
        "fan-out: 1 job -> {FANOUT_SESSIONS} subscribers, {} ev/s delivered",
        rate * FANOUT_SESSIONS
    );
    record_delivery(table, column, &label, latencies, delivered);
    let seconds = window.elapsed().as_secs_f64();
    cpu_rows(table, column, &label, &before, &after, seconds);
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(args: Vec<String>) {
    let value = |name: &str| {
        args.windows(2)
            .find(|pair| pair[0] == name)
            .map(|pair| pair[1].clone())
    };
    let plan = Plan {
        quick: args.iter().any(|a| a == "--quick"),
        rate: value("--rate")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000)
            .max(FANOUT_SESSIONS),
        fsync: value("--fsync").unwrap_or_else(|| "everysec".into()),
    };
    let only = value("--only");
    let redis_server = tool("redis-server");
    let nginx = tool("nginx");
    let command = format!("cargo bench --bench cluster -- {}", args.join(" "));
    let machine = machine_facts();
    println!("command: {}", command.trim());
    println!("machine: {machine}");
    println!("load average before: {}", load_average());
    let started = Instant::now();
    let names = [
        "memory",
        "memory, nginx",
        "cluster 1 node",
        "cluster 2 nodes",
        "cluster 3 nodes",
    ];
    let mut table = Table {
        targets: names.iter().map(|name| name.to_string()).collect(),
        rows: Vec::new(),
    };
    let wanted = |name: &str| only.as_deref().is_none_or(|only| only == name);
    for (column, name) in names.iter().enumerate() {
        let target = match column {
            0 => Target::memory(false, &nginx).await,
            1 => Target::memory(true, &nginx).await,
            n => Target::cluster(n - 1, &plan.fsync, &redis_server, &nginx).await,
        };
        assert_eq!(&target.name, name);
        println!(
            "{}: {} node(s) up ({:.0} s)",
            target.name,
            target.nodes.len(),
            started.elapsed().as_secs_f64()
        );
        if wanted("append") {
            scenario_append(&plan, &target, column, &mut table).await;
        }
        if wanted("replay") {
            scenario_replay(&plan, &target, column, &mut table).await;
        }
        if wanted("live") {
            scenario_live(&plan, &target, column, &mut table).await;
        }
        if wanted("fanout") {
            scenario_fanout(&plan, &target, column, &mut table).await;
        }
    }
    println!("\nload average after: {}\n", load_average());
    table.print();
    println!("\nfinished in {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = value("--json") {
        let document = json!({
            "command": command.trim(), "machine": machine, "fsync": plan.fsync,
            "results": table.to_json(),
        });
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
    runtime.block_on(run(args));
}
