//! Append and replay throughput of the event-log backends on one workload.
//!
//! Run: `cargo bench --bench event_log` (add `-- --events N --payload BYTES`).
//! Appends N events of a given payload size to one session, waits until they
//! are durable (a no-op for memory), then replays the whole log from cursor 0
//! in stream-sized reads. Reports events/s and MB/s; no pass/fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arcp_gateway::event_log::sqlite::SqliteStore;
use arcp_gateway::event_log::{EventDraft, EventLog, MemoryEventLog, RetentionLimits};
use arcp_gateway::http::sse::{encode_job_event, STREAM_READ_LIMIT};
use arcp_gateway::ids::{JobId, SessionId};
use arcp_gateway::store::Persistence;
use serde_json::json;

struct Measured {
    backend: &'static str,
    append: Duration,
    replay: Duration,
    bytes: usize,
}

fn workload(
    log: &dyn EventLog,
    settle: &dyn Fn(),
    events: u64,
    payload: usize,
) -> (Duration, Duration, usize) {
    let session = SessionId::from_client("sess_bench");
    log.create(&session).expect("create");
    let text = "x".repeat(payload);
    let started = Instant::now();
    for n in 1..=events {
        let draft = EventDraft {
            message_type: "job.event",
            job_id: JobId::from_client("job_bench"),
            trace_id: None,
            payload: json!({"kind": "progress", "body": {"current": n, "data": text}}),
        };
        log.append(&session, &draft).expect("append");
    }
    settle();
    let append = started.elapsed();
    let started = Instant::now();
    let (mut cursor, mut bytes) = (0, 0);
    loop {
        let batch = log
            .read_after(&session, cursor, STREAM_READ_LIMIT)
            .expect("read");
        let Some(last) = batch.last() else { break };
        cursor = last.seq;
        bytes += batch.iter().map(|entry| entry.frame.len()).sum::<usize>();
    }
    assert_eq!(cursor, events, "the replay saw every event");
    (append, started.elapsed(), bytes)
}

fn argument(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].parse().ok())
        .unwrap_or(default)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cpu}, {cores} cores")
}

fn main() {
    let events = argument("--events", 100_000);
    let payload = argument("--payload", 256) as usize;
    let limits = RetentionLimits {
        max_events: usize::MAX,
        max_bytes: usize::MAX,
    };
    let mut results = Vec::new();

    let memory = MemoryEventLog::new(limits, encode_job_event);
    let (append, replay, bytes) = workload(&memory, &|| {}, events, payload);
    results.push(Measured {
        backend: "memory",
        append,
        replay,
        bytes,
    });

    let dir = std::env::temp_dir().join(format!("arcp-bench-{}", std::process::id()));
    let (connection, _, path) = SqliteStore::open(&dir).expect("open store");
    let durable = Arc::new(MemoryEventLog::new(limits, encode_job_event));
    let store = SqliteStore::start(connection, path, Arc::downgrade(&durable));
    durable.attach_sink(store.clone());
    let (append, replay, bytes) = workload(
        durable.as_ref(),
        &|| store.flush().wait_blocking(),
        events,
        payload,
    );
    results.push(Measured {
        backend: "sqlite (WAL, synchronous=FULL)",
        append,
        replay,
        bytes,
    });
    drop(store);
    drop(durable);
    // The cold path: recovery reads every retained event back from disk.
    let started = Instant::now();
    let (_, recovered, _) = SqliteStore::open(&dir).expect("reopen store");
    let recovery = started.elapsed();
    let recovered_events: usize = recovered
        .logs
        .iter()
        .map(|(_, _, entries)| entries.len())
        .sum();
    assert_eq!(recovered_events as u64, events);
    let _ = std::fs::remove_dir_all(&dir);

    println!("command: cargo bench --bench event_log -- --events {events} --payload {payload}");
    println!("machine: {}", machine());
    println!();
    println!("| backend | append events/s | append MB/s | replay events/s | replay MB/s |");
    println!("|---|---:|---:|---:|---:|");
    for result in &results {
        let mb = result.bytes as f64 / 1e6;
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {:.1} |",
            result.backend,
            events as f64 / result.append.as_secs_f64(),
            mb / result.append.as_secs_f64(),
            events as f64 / result.replay.as_secs_f64(),
            mb / result.replay.as_secs_f64(),
        );
    }
    println!();
    println!(
        "sqlite recovery (cold read of all {events} events from disk at start-up): {:.0} events/s ({:.2} s)",
        events as f64 / recovery.as_secs_f64(),
        recovery.as_secs_f64()
    );
    println!("replay is served from the in-memory cache for both backends; the durable one adds only the recovery read.");
}
