//! The fan-out floor: how fast can *anything* on this machine deliver one
//! event to N loopback TCP connections, measured with the same kind of lean
//! client as `benches/gateway.rs`?
//!
//! The server here is no HTTP server at all: plain threads (one per core)
//! write each pre-encoded frame straight to their share of N accepted
//! sockets with blocking `write` calls, with no tasks, channels or logs. It
//! runs as a separate process, like the gateway. Its latency is a floor for
//! the fan-out scenario of `cargo bench --bench gateway` that no server can
//! go below on the same machine with the same client.
//!
//! Run: `cargo bench --bench fanout_floor` (options after `--`:
//! `--subscribers N` to measure one count, default 100 and 1,000).
//! Prints p50/p99/max emit-to-client latency at 10,000 deliveries per
//! second in total, as in the gateway bench, and how long one writer
//! thread's sends to its share of the sockets took per event (the kernel's
//! cost alone). It asserts nothing.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt;

const TOTAL_RATE: u64 = 10_000;
const SECONDS: u64 = 4;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The server process: accepts `subscribers` connections, then every
/// `1 / rate` seconds writes one frame to all of them, split over one
/// thread per core.
fn serve(subscribers: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("address"));
    let mut sockets = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (socket, _) = listener.accept().expect("accept");
        socket.set_nodelay(true).expect("nodelay");
        sockets.push(socket);
    }
    let rate = TOTAL_RATE / subscribers as u64;
    let events = rate * SECONDS;
    let threads = cores();
    let per_thread = subscribers.div_ceil(threads);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let mut groups: Vec<Vec<TcpStream>> = Vec::new();
    let mut remaining = sockets.into_iter();
    for _ in 0..threads {
        groups.push(remaining.by_ref().take(per_thread).collect());
    }
    let writers: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut bursts = Vec::with_capacity(events as usize);
                let start = std::time::Instant::now() + Duration::from_millis(500);
                for seq in 1..=events {
                    let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate);
                    barrier.wait();
                    std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                    let frame = format!(
                        "id: {seq}\nevent: job.event\ndata: {{\"ts_ns\":{},\"message\":\"{}\"}}\n\n",
                        now_ns(),
                        "x".repeat(64)
                    );
                    let burst = std::time::Instant::now();
                    for socket in &mut group {
                        if socket.write_all(frame.as_bytes()).is_err() {
                            return bursts;
                        }
                    }
                    bursts.push(burst.elapsed().as_nanos() as u64);
                }
                bursts
            })
        })
        .collect();
    // How long one thread's writes to its share of the sockets took, per
    // event: the kernel's cost of the sends alone.
    let mut bursts: Vec<u64> = writers
        .into_iter()
        .flat_map(|writer| writer.join().unwrap_or_default())
        .collect();
    bursts.sort_unstable();
    println!(
        "{:.2} {:.2}",
        percentile_ms(&bursts, 0.5),
        percentile_ms(&bursts, 0.99)
    );
}

/// Connects `subscribers` clients, one tokio task each, and collects every
/// frame's latency.
async fn measure(subscribers: usize) -> (Vec<u64>, String) {
    let mut server = Command::new(std::env::current_exe().expect("own path"))
        .args(["--serve", &subscribers.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the floor server");
    let mut server_output = std::io::BufReader::new(server.stdout.take().expect("stdout"));
    let mut address = String::new();
    std::io::BufRead::read_line(&mut server_output, &mut address).expect("server address");
    let address = address.trim().to_owned();
    let events = TOTAL_RATE / subscribers as u64 * SECONDS;
    let mut readers = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut socket = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        readers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(events as usize);
            let mut buffer = vec![0u8; 16 * 1024];
            let mut filled = 0;
            while (latencies.len() as u64) < events {
                let read = match socket.read(&mut buffer[filled..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => read,
                };
                let received = now_ns();
                filled += read;
                let mut consumed = 0;
                for end in memchr::memmem::find_iter(&buffer[..filled], b"\n\n") {
                    let frame = &buffer[consumed..end];
                    consumed = end + 2;
                    if let Some(at) = memchr::memmem::find(frame, b"\"ts_ns\":") {
                        let digits: String = frame[at + 8..]
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .map(|&b| b as char)
                            .collect();
                        if let Ok(sent) = digits.parse::<u64>() {
                            latencies.push(received.saturating_sub(sent));
                        }
                    }
                }
                buffer.copy_within(consumed..filled, 0);
                filled -= consumed;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for reader in readers {
        all.extend(reader.await.expect("reader"));
    }
    let mut bursts = String::new();
    let _ = std::io::BufRead::read_line(&mut server_output, &mut bursts);
    let _ = server.wait();
    (all, bursts.trim().replace(' ', " ms / ") + " ms")
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1e6
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let Some(at) = args.iter().position(|a| a == "--serve") {
        let subscribers = args[at + 1].parse().expect("subscriber count");
        serve(subscribers);
        return;
    }
    let counts: Vec<usize> = match args.iter().position(|a| a == "--subscribers") {
        Some(at) => vec![args[at + 1].parse().expect("subscriber count")],
        None => vec![100, 1000],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "command: cargo bench --bench fanout_floor -- {}",
        args.join(" ")
    );
    println!(
        "raw-socket floor: {} writer threads, {TOTAL_RATE} deliveries/s in total, {SECONDS} s",
        cores()
    );
    println!(
        "| subscribers | frames | p50 | p99 | max | one thread's sends per event, p50 / p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for subscribers in counts {
        let (mut latencies, sends) = runtime.block_on(measure(subscribers));
        latencies.sort_unstable();
        println!(
            "| {subscribers} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {sends} |",
            latencies.len(),
            percentile_ms(&latencies, 0.5),
            percentile_ms(&latencies, 0.99),
            percentile_ms(&latencies, 1.0)
        );
    }
}
