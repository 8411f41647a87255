//! What this machine charges for a wake-up, measured before each run: one
//! process writes an 8-byte stamp to a loopback TCP socket every 10 ms, as
//! a job paced at 100 events/s does, and another process blocked in `read`
//! takes the time it woke. The reader sits first on the other core (idle
//! between stamps, as a reader is between a fan-out's events), then on the
//! writer's own core, each held there with `taskset`.
//!
//! Why: at 100 subscribers a fan-out row's p99 is under a millisecond, and
//! a server whose event appears on one core reaches a reader on the other,
//! idle core only through that core's wake-up. The floor's threads each
//! wake on their own timer and never pay it (`floor.rs`). On a virtual
//! machine that wake-up changes from hour to hour, so the report keeps
//! each run's.
//!
//! The writer and the reader are this bench binary re-executed with
//! `--wake-writer READER_CPU` and `--wake-reader ADDRESS`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{now_ns, percentile};

const STAMPS: usize = 300;
const GAP: Duration = Duration::from_millis(10);

/// p50 and p99 of one placement, in µs.
#[derive(Clone, Copy)]
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
}

/// A run's wake-up figures.
#[derive(Clone, Copy)]
pub struct Wake {
    pub other_core: Spread,
    pub same_core: Spread,
}

impl Wake {
    pub fn line(&self) -> String {
        format!(
            "a reader woken 10 ms after its last read: on the other, idle core p50 {:.0} / p99 {:.0} µs; on the writer's core p50 {:.0} / p99 {:.0} µs",
            self.other_core.p50, self.other_core.p99, self.same_core.p50, self.same_core.p99
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "other_core_p50_us": self.other_core.p50,
            "other_core_p99_us": self.other_core.p99,
            "same_core_p50_us": self.same_core.p50,
            "same_core_p99_us": self.same_core.p99,
        })
    }
}

/// Both placements, or why not (one core, or no `taskset`).
pub async fn measure() -> Result<Wake, String> {
    tokio::task::spawn_blocking(|| {
        // The machine's CPUs, not this process's: `--pin` holds the bench
        // to one, and the probe places its own processes.
        let cpus = std::fs::read_to_string("/proc/cpuinfo").map_or(0, |info| {
            info.lines().filter(|l| l.starts_with("processor")).count()
        });
        if cpus < 2 {
            return Err("one core: no other core to wake".to_owned());
        }
        Ok(Wake {
            other_core: placement(1)?,
            same_core: placement(0)?,
        })
    })
    .await
    .unwrap_or_else(|error| Err(format!("the probe failed: {error}")))
}

/// The writer on CPU 0, the reader on `reader_cpu`.
fn placement(reader_cpu: u32) -> Result<Spread, String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let output = Command::new("taskset")
        .args(["-c", "0"])
        .arg(exe)
        .args(["--wake-writer", &reader_cpu.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| format!("taskset (util-linux) is needed: {error}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut numbers = text.split_whitespace().map(str::parse::<f64>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(p50)), Some(Ok(p99))) if output.status.success() => Ok(Spread { p50, p99 }),
        _ => Err(format!("the wake-up probe printed {:?}", text.trim())),
    }
}

/// `--wake-writer READER_CPU`: starts the reader there, sends the stamps,
/// prints the reader's `p50 p99` (µs).
pub fn writer(args: &[String]) {
    let reader_cpu = args.first().expect("--wake-writer READER_CPU");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let mut reader = Command::new("taskset")
        .args(["-c", reader_cpu])
        .arg(std::env::current_exe().expect("own path"))
        .args(["--wake-reader", &address])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the reader");
    let mut socket = accept_within(&listener, Duration::from_secs(10))
        .expect("the reader connects within 10 s (could it run on that CPU?)");
    socket.set_nodelay(true).expect("nodelay");
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..STAMPS {
        std::thread::sleep(GAP);
        socket.write_all(&now_ns().to_le_bytes()).expect("write");
    }
    socket
        .write_all(&0u64.to_le_bytes())
        .expect("write the end");
    let mut line = String::new();
    BufReader::new(reader.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the reader's figures");
    let _ = reader.wait();
    print!("{line}");
}

/// The first connection to `listener`, or `None` after `limit`: a reader
/// that could not start (its CPU not allowed here) must not hang the bench.
fn accept_within(listener: &TcpListener, limit: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        match listener.accept() {
            Ok((socket, _)) => {
                socket.set_nonblocking(false).ok()?;
                return Some(socket);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return None,
        }
    }
    None
}

/// `--wake-reader ADDRESS`: reads stamps until a zero, prints `p50 p99`.
pub fn reader(args: &[String]) {
    let mut socket = TcpStream::connect(args.first().expect("--wake-reader ADDRESS"))
        .expect("connect to the writer");
    let mut latencies = Vec::with_capacity(STAMPS);
    let mut stamp = [0u8; 8];
    while socket.read_exact(&mut stamp).is_ok() {
        let sent = u64::from_le_bytes(stamp);
        if sent == 0 {
            break;
        }
        latencies.push(now_ns().saturating_sub(sent));
    }
    if latencies.is_empty() {
        println!("- -");
        return;
    }
    latencies.sort_unstable();
    // The bench's own percentile, in ms; printed in µs.
    let at = |fraction: f64| percentile(&latencies, fraction) * 1000.0;
    println!("{:.1} {:.1}", at(0.5), at(0.99));
}
