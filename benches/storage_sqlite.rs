//! What one append costs in the SQLite storage backend (src/storage/sqlite).
//!
//! Run: `cargo bench --bench storage_sqlite` (add `-- --events N --payload
//! BYTES --tasks K`). Opens a fresh database in a temporary directory (WAL,
//! `synchronous=FULL`), then for 1 and K concurrent appenders (each its own
//! job, all in one session, one append per call) appends N events in total
//! and reports appends/s and the p50/p99 per append. One appender pays one
//! commit (one WAL fsync) per event; concurrent appenders share commits
//! through the writer's group commit. Then it replays the log in reads of
//! 256 events. No pass/fail.

use std::time::{Duration, Instant};

use arcp_gateway::ids::{JobId, SessionId};
use arcp_gateway::storage::sqlite::SqliteStorage;
use arcp_gateway::storage::{Append, EventKind, EventStore, ReadBudget, Retention};
use bytes::Bytes;

fn argument(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = argument("--events", 5_000);
    let payload = argument("--payload", 200);
    let tasks = argument("--tasks", 8).max(1);
    let dir = tempfile::tempdir().expect("temporary directory");
    let storage = SqliteStorage::open(dir.path().join("bench.sqlite3"), "bench")
        .await
        .expect("open");
    let body = Bytes::from(vec![b'x'; payload]);
    println!("{events} appends of {payload} B, synchronous=FULL, one append per call");
    for appenders in [1, tasks] {
        let session = SessionId::generate();
        let retention = Retention {
            max_events: u64::MAX,
            max_bytes: u64::MAX,
        };
        storage.create_log(&session, retention).await.expect("log");
        let per_task = events / appenders;
        let started = Instant::now();
        let handles: Vec<_> = (0..appenders)
            .map(|_| {
                let (storage, session, body) = (storage.clone(), session.clone(), body.clone());
                tokio::spawn(async move {
                    let job = JobId::generate();
                    let mut latencies = Vec::with_capacity(per_task);
                    for index in 1..=per_task as u64 {
                        let append = Append {
                            session_id: session.clone(),
                            job_id: job.clone(),
                            index,
                            kind: EventKind::Event,
                            body: body.clone(),
                            fence: None,
                        };
                        let at = Instant::now();
                        storage.append_batch(&[append]).await.expect("append");
                        latencies.push(at.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for handle in handles {
            latencies.extend(handle.await.expect("appender"));
        }
        let elapsed = started.elapsed();
        latencies.sort();
        println!(
            "appenders {appenders}: {:.0} appends/s, p50 {} µs, p99 {} µs",
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.50).as_micros(),
            percentile(&latencies, 0.99).as_micros(),
        );
        let budget = ReadBudget {
            max_events: 256,
            max_bytes: usize::MAX,
        };
        let started = Instant::now();
        let (mut cursor, mut bytes) = (0, 0);
        loop {
            let batch = storage
                .read_after(&session, cursor, budget)
                .await
                .expect("read");
            let Some(last) = batch.last() else { break };
            cursor = last.seq;
            bytes += batch.iter().map(|event| event.body.len()).sum::<usize>();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "  replay: {:.0} events/s, {:.1} MB/s",
            cursor as f64 / elapsed,
            bytes as f64 / elapsed / 1e6
        );
    }
}
