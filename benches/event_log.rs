//! Append and replay throughput of the event-log backends on one workload.
//!
//! Run: `cargo bench --bench event_log` (add `-- --events N --payload BYTES`).
//! Appends N events of a given payload size to one session, waits until they
//! are durable (a no-op for memory), then replays the whole log from cursor 0
//! in stream-sized reads: with `read_chunk_after` (one `Bytes` per read:
//! what streams write; the last four chunks are kept alive, as a stream's
//! channel does) and with `read_after` (one entry per event: what
//! subscriptions use). Each replay runs five times and the median is
//! reported. Reports events/s and MB/s; no pass/fail.
//!
//! For the memory backend it also runs the live pattern: a reader reads
//! after every append (as an attached stream does), then a full chunked
//! replay of that same log, which shows what reading while appending does
//! to a later replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arcp_gateway::event_log::sqlite::SqliteStore;
use arcp_gateway::event_log::{
    EventDraft, EventLog, LiveTap, MemoryEventLog, Offers, RetentionLimits,
};
use arcp_gateway::http::sse::{encode_job_event, encode_job_event_head, STREAM_READ_LIMIT};
use arcp_gateway::ids::{EventSeq, JobId, SessionId};
use arcp_gateway::metrics::Metrics;
use arcp_gateway::store::Persistence;
use serde_json::json;

struct Measured {
    backend: &'static str,
    append: Duration,
    /// Full replay with `read_chunk_after`, and how many chunks it took.
    replay_chunks: Duration,
    chunks: usize,
    /// Full replay with `read_after`.
    replay_entries: Duration,
    bytes: usize,
}

fn draft(n: u64, text: &str) -> EventDraft {
    EventDraft::new(
        "job.event",
        JobId::from_client("job_bench"),
        None,
        json!({"kind": "progress", "body": {"current": n, "data": text}}),
    )
}

/// How many times each replay runs; the median time is reported.
const REPLAYS: usize = 5;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Replays the whole log from cursor 0 in stream-sized chunks, keeping the
/// last four alive: the time, the number of chunks, and the bytes.
fn replay_chunks(log: &dyn EventLog, session: &SessionId, events: u64) -> (Duration, usize, usize) {
    let started = Instant::now();
    let (mut cursor, mut chunks, mut bytes) = (0, 0, 0);
    let mut in_flight = std::collections::VecDeque::new();
    while let Some((last, chunk)) = log
        .read_chunk_after(session, cursor, STREAM_READ_LIMIT)
        .expect("read chunk")
    {
        cursor = last;
        chunks += 1;
        bytes += chunk.len();
        in_flight.push_back(chunk);
        if in_flight.len() > 4 {
            in_flight.pop_front();
        }
    }
    assert_eq!(cursor, events, "the chunked replay saw every event");
    (started.elapsed(), chunks, bytes)
}

/// Replays the whole log from cursor 0 with `read_after`: the time and the
/// bytes.
fn replay_entries(log: &dyn EventLog, session: &SessionId, events: u64) -> (Duration, usize) {
    let started = Instant::now();
    let (mut cursor, mut bytes) = (0, 0);
    loop {
        let batch = log
            .read_after(session, cursor, STREAM_READ_LIMIT)
            .expect("read");
        let Some(last) = batch.last() else { break };
        cursor = last.seq;
        bytes += batch.iter().map(|entry| entry.frame.len()).sum::<usize>();
    }
    assert_eq!(cursor, events, "the replay saw every event");
    (started.elapsed(), bytes)
}

fn workload(log: &dyn EventLog, settle: &dyn Fn(), events: u64, payload: usize) -> Measured {
    let session = SessionId::from_client("sess_bench");
    log.create(&session).expect("create");
    let text = "x".repeat(payload);
    let started = Instant::now();
    for n in 1..=events {
        log.append(&session, &draft(n, &text)).expect("append");
    }
    settle();
    let append = started.elapsed();
    let (mut chunk_times, mut entry_times) = (Vec::new(), Vec::new());
    let (mut chunks, mut bytes) = (0, 0);
    for _ in 0..REPLAYS {
        let (time, count, chunk_bytes) = replay_chunks(log, &session, events);
        chunk_times.push(time);
        chunks = count;
        let (time, entry_bytes) = replay_entries(log, &session, events);
        entry_times.push(time);
        assert_eq!(
            entry_bytes, chunk_bytes,
            "both replays carry the same bytes"
        );
        bytes = entry_bytes;
    }
    Measured {
        backend: "",
        append,
        replay_chunks: median(chunk_times),
        chunks,
        replay_entries: median(entry_times),
        bytes,
    }
}

/// The live pattern on a fresh session: read after every append, as an
/// attached stream does; then a full chunked replay of the result.
/// Returns (append + read time, replay time, replay chunks).
fn live_then_replay(
    log: &dyn EventLog,
    events: u64,
    payload: usize,
) -> (Duration, Duration, usize) {
    let session = SessionId::from_client("sess_live");
    log.create(&session).expect("create");
    let text = "x".repeat(payload);
    let started = Instant::now();
    let mut cursor = 0;
    for n in 1..=events {
        log.append(&session, &draft(n, &text)).expect("append");
        let (last, _) = log
            .read_chunk_after(&session, cursor, STREAM_READ_LIMIT)
            .expect("live read")
            .expect("the new event");
        cursor = last;
    }
    let live = started.elapsed();
    let mut times = Vec::new();
    let mut chunks = 0;
    for _ in 0..REPLAYS {
        let (time, count, _) = replay_chunks(log, &session, events);
        times.push(time);
        chunks = count;
    }
    let replay = median(times);
    log.remove(&session);
    (live, replay, chunks)
}

/// A caught-up stream that takes every offer and writes nothing: the
/// fan-out figures below are the log's work, not the sockets'.
#[derive(Default)]
struct CountingTap {
    bytes: std::sync::atomic::AtomicUsize,
}

impl LiveTap for CountingTap {
    fn offer(&self, _: EventSeq, _: EventSeq, frames: &[&[u8]]) {
        let len = frames.iter().map(|frame| frame.len()).sum();
        self.bytes
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    }
    fn missed(&self) {}
}

/// A job's event copied to `subscribers` sessions (§7.6), each with a tap
/// attached, as in the gateway's fan-out benchmark: the time per copy of
/// the append (under the job's lock; the median, and the slowest event's
/// whole append) and of the pass that offers the copies to the taps (after
/// it; the median). Over `events` events. Between events, 4 MiB of other
/// memory is written, as a pass's socket writes would, so the sessions'
/// state is not all in the core's cache. Every tap must have been written
/// every copy: a declined offer would time less than the real work.
fn fan_out(subscribers: usize, events: u64) -> (Duration, Duration, Duration) {
    let mut elsewhere = vec![0u8; 4 << 20];
    let limits = RetentionLimits {
        max_events: usize::MAX,
        max_bytes: usize::MAX,
    };
    let log = MemoryEventLog::new(limits, encode_job_event);
    log.defer_fan_out(encode_job_event_head);
    let sessions: Vec<SessionId> = (0..subscribers)
        .map(|n| SessionId::from_client(&format!("sess_{:026}", n)))
        .collect();
    let mut taps = Vec::new();
    for session in &sessions {
        log.create(session).expect("create");
        let tap = Arc::new(CountingTap::default());
        assert!(log.session_reader(session).attach_tap(tap.clone()));
        taps.push(tap);
    }
    let ids: Vec<&SessionId> = sessions.iter().collect();
    let text = "x".repeat(64);
    let (mut appends, mut passes) = (Vec::new(), Vec::new());
    for n in 0..events {
        for line in elsewhere.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        let draft = draft(n, &text);
        let mut offers = Offers::default();
        let started = Instant::now();
        let appended = log.append_each_offering(&ids, &draft, &mut offers);
        let middle = Instant::now();
        offers.deliver();
        passes.push(middle.elapsed());
        appends.push(middle - started);
        assert!(appended.iter().all(Result::is_ok));
    }
    std::hint::black_box(&elsewhere);
    let frame_bytes = taps[0].bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(frame_bytes > 0, "the taps were offered nothing");
    assert!(
        taps.iter()
            .all(|tap| tap.bytes.load(std::sync::atomic::Ordering::Relaxed) == frame_bytes),
        "every tap takes every copy"
    );
    let slowest = appends.iter().max().copied().unwrap_or_default();
    let per_copy = |times: Vec<Duration>| median(times) / subscribers as u32;
    (per_copy(appends), slowest, per_copy(passes))
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
    if std::env::args().any(|arg| arg == "--fan-out-only") {
        return print_fan_out();
    }
    let events = argument("--events", 100_000);
    let payload = argument("--payload", 256) as usize;
    let limits = RetentionLimits {
        max_events: usize::MAX,
        max_bytes: usize::MAX,
    };
    let mut results = Vec::new();

    let memory = MemoryEventLog::new(limits, encode_job_event);
    results.push(Measured {
        backend: "memory",
        ..workload(&memory, &|| {}, events, payload)
    });
    let live = live_then_replay(&memory, events, payload);
    drop(memory);

    let dir = std::env::temp_dir().join(format!("arcp-bench-{}", std::process::id()));
    let (connection, _, path) = SqliteStore::open(&dir).expect("open store");
    let durable = Arc::new(MemoryEventLog::new(limits, encode_job_event));
    let store = SqliteStore::start(connection, path, Arc::downgrade(&durable), &Metrics::new());
    durable.attach_sink(store.clone());
    results.push(Measured {
        backend: "sqlite (WAL, synchronous=FULL)",
        ..workload(
            durable.as_ref(),
            &|| {
                store
                    .flush()
                    .wait_blocking()
                    .expect("the store writer is running")
            },
            events,
            payload,
        )
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
    println!("| backend | append events/s | append MB/s | replay chunks events/s | replay chunks MB/s | chunks | replay entries events/s | replay entries MB/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for result in &results {
        let mb = result.bytes as f64 / 1e6;
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {:.1} | {} | {:.0} | {:.1} |",
            result.backend,
            events as f64 / result.append.as_secs_f64(),
            mb / result.append.as_secs_f64(),
            events as f64 / result.replay_chunks.as_secs_f64(),
            mb / result.replay_chunks.as_secs_f64(),
            result.chunks,
            events as f64 / result.replay_entries.as_secs_f64(),
            mb / result.replay_entries.as_secs_f64(),
        );
    }
    println!();
    let (live, replay, chunks) = live;
    println!(
        "memory, live pattern (a chunked read after every append): {:.0} events/s; then a full chunked replay: {:.0} events/s in {chunks} chunks",
        events as f64 / live.as_secs_f64(),
        events as f64 / replay.as_secs_f64(),
    );
    println!();
    println!(
        "sqlite recovery (cold read of all {events} events from disk at start-up): {:.0} events/s ({:.2} s)",
        events as f64 / recovery.as_secs_f64(),
        recovery.as_secs_f64()
    );
    println!("replay is served from the in-memory cache for both backends; the durable one adds only the recovery read.");
    println!();
    print_fan_out();
}

fn print_fan_out() {
    println!("fan-out, one job event copied to K subscribers' logs with a tap each (median per copy; --fan-out-only runs this alone):");
    println!();
    println!("| subscribers | events | append ns/copy | slowest append (whole event) | offer pass ns/copy |");
    println!("|---:|---:|---:|---:|---:|");
    for subscribers in [100, 1000, 10_000] {
        let events = (400_000 / subscribers as u64).max(400);
        let (append, slowest, pass) = fan_out(subscribers, events);
        println!(
            "| {subscribers} | {events} | {} | {:.2} ms | {} |",
            append.as_nanos(),
            slowest.as_secs_f64() * 1e3,
            pass.as_nanos()
        );
    }
}
