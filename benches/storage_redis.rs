//! What one append costs in the Redis storage backend (src/storage/redis).
//!
//! Run: `cargo bench --bench storage_redis` (add `-- --events N --payload
//! BYTES --tasks K --fsync always|everysec`). Starts its own `redis-server`
//! (unix socket, AOF on, `appendfsync everysec` unless told, in a temporary
//! directory), then for 1 and K
//! concurrent appenders (each its own job, all in one session, through one
//! node's multiplexed connection) appends N events in total and reports
//! appends/s, the client-side p50/p99 per append, and Redis's own CPU time per
//! append script from `INFO commandstats` (usec_per_call of evalsha). Then it
//! replays the log in reads of 256 events. No pass/fail.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arcp_gateway::ids::{JobId, SessionId};
use arcp_gateway::storage::redis::RedisStorage;
use arcp_gateway::storage::{Append, EventKind, EventStore, ReadBudget, Retention};
use bytes::Bytes;

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn argument(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

async fn command_stats(storage: &RedisStorage) -> (u64, f64) {
    let mut connection = storage.connection();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .expect("INFO commandstats");
    // cmdstat_evalsha:calls=N,usec=U,usec_per_call=X,...
    let line = info
        .lines()
        .find(|line| line.starts_with("cmdstat_evalsha:"))
        .unwrap_or("");
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field("calls") as u64, field("usec"))
}

async fn reset_stats(storage: &RedisStorage) {
    let mut connection = storage.connection();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut connection)
        .await
        .expect("CONFIG RESETSTAT");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = argument("--events", 20_000);
    let payload = argument("--payload", 200);
    let tasks = argument("--tasks", 8).max(1);
    let args: Vec<String> = std::env::args().collect();
    let fsync = args
        .iter()
        .position(|arg| arg == "--fsync")
        .and_then(|at| args.get(at + 1))
        .map_or("everysec", |value| value.as_str())
        .to_owned();

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("redis.sock");
    let child = Command::new("redis-server")
        .args(["--port", "0", "--unixsocket"])
        .arg(&socket)
        .arg("--dir")
        .arg(dir.path())
        .args(["--save", "", "--appendonly", "yes", "--appendfsync", &fsync])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let _server = Server { child, _dir: dir };
    let url = format!("unix://{}", socket.display());
    let storage = {
        let started = Instant::now();
        loop {
            match RedisStorage::connect(&url, "bench").await {
                Ok(storage) => break storage,
                Err(error) if started.elapsed() < Duration::from_secs(10) => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("redis did not start: {error}"),
            }
        }
    };
    let body = Bytes::from(vec![b'x'; payload]);
    println!("{events} appends of {payload} B, AOF appendfsync {fsync}, unix socket");
    for concurrency in [1, tasks] {
        let session = SessionId::generate();
        storage
            .create_log(
                &session,
                Retention {
                    max_events: u64::MAX >> 12,
                    max_bytes: u64::MAX >> 12,
                },
            )
            .await
            .expect("create log");
        reset_stats(&storage).await;
        let started = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..concurrency {
            let storage = storage.clone();
            let session = session.clone();
            let body = body.clone();
            let count = events / concurrency;
            handles.push(tokio::spawn(async move {
                let job = JobId::generate();
                let mut latencies = Vec::with_capacity(count);
                for index in 1..=count as u64 {
                    let append = Append {
                        session_id: session.clone(),
                        job_id: job.clone(),
                        index,
                        kind: EventKind::Event,
                        body: body.clone(),
                        fence: None,
                    };
                    let one = Instant::now();
                    storage.append_batch(&[append]).await.expect("append");
                    latencies.push(one.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for handle in handles {
            latencies.extend(handle.await.expect("appender"));
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let (calls, usec) = command_stats(&storage).await;
        println!(
            "appenders {concurrency:>2}: {:>8.0} appends/s  p50 {:>6.0} us  p99 {:>6.0} us  \
             redis cpu {:>5.1} us/append ({calls} evalsha)",
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.50).as_secs_f64() * 1e6,
            percentile(&latencies, 0.99).as_secs_f64() * 1e6,
            usec / calls.max(1) as f64,
        );
        let started = Instant::now();
        let mut cursor = 0;
        let mut bytes = 0;
        loop {
            let batch = storage
                .read_after(
                    &session,
                    cursor,
                    ReadBudget {
                        max_events: 256,
                        max_bytes: 1 << 20,
                    },
                )
                .await
                .expect("read");
            let Some(last) = batch.last() else { break };
            cursor = last.seq;
            bytes += batch.iter().map(|event| event.body.len()).sum::<usize>();
        }
        let elapsed = started.elapsed();
        println!(
            "              replay {cursor} events: {:>8.0} events/s  {:>6.1} MB/s",
            cursor as f64 / elapsed.as_secs_f64(),
            bytes as f64 / elapsed.as_secs_f64() / 1e6
        );
    }
}
