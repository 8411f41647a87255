//! The fan-out floor (`--serve-floor SUBSCRIBERS RATE COUNT BYTES`): how
//! fast can anything on this machine deliver one event to K loopback TCP
//! connections, read by the same lean client as the gateway?
//!
//! No HTTP server at all: it accepts K connections, answers each with a
//! minimal response head (no chunked framing, the body runs until close)
//! so the same client reads it, then plain threads (one per core) write
//! each frame straight to their share of the sockets with blocking
//! `write` calls: no tasks, channels or logs. Frames are the size of the
//! gateway's job events in the same scenario and carry `ts_ns`.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::now_ns;
use crate::wire::event_frame;

const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The arguments after `--serve-floor`.
pub fn serve(args: &[String]) {
    let number = |index: usize| -> u64 {
        args.get(index)
            .and_then(|value| value.parse().ok())
            .expect("--serve-floor SUBSCRIBERS RATE COUNT BYTES")
    };
    let (subscribers, rate, count, bytes) =
        (number(0) as usize, number(1), number(2), number(3) as usize);
    let listener = TcpListener::bind("127.0.0.2:0").expect("bind floor");
    println!(
        "floor listening on http://{}",
        listener.local_addr().expect("address")
    );
    let mut sockets = Vec::with_capacity(subscribers);
    while sockets.len() < subscribers {
        let Ok((mut socket, _)) = listener.accept() else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        if socket.write_all(HEAD).is_ok() {
            sockets.push(socket);
        }
    }
    let threads = cores();
    let per_thread = subscribers.div_ceil(threads);
    let barrier = Arc::new(Barrier::new(threads));
    let start = Instant::now() + Duration::from_millis(500);
    let mut remaining = sockets.into_iter();
    let writers: Vec<_> = (0..threads)
        .map(|_| {
            let group: Vec<TcpStream> = remaining.by_ref().take(per_thread).collect();
            let barrier = barrier.clone();
            std::thread::spawn(move || write_paced(group, &barrier, start, rate, count, bytes))
        })
        .collect();
    for writer in writers {
        let _ = writer.join();
    }
    // Let the clients read the last frames before the sockets close.
    std::thread::sleep(Duration::from_secs(2));
}

/// Writes `count` frames at `rate` per second to every socket of `group`,
/// in step with the other writer threads.
fn write_paced(
    mut group: Vec<TcpStream>,
    barrier: &Barrier,
    start: Instant,
    rate: u64,
    count: u64,
    bytes: usize,
) {
    for seq in 1..=count {
        let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate.max(1));
        barrier.wait();
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let frame = event_frame(seq, now_ns(), bytes);
        group.retain_mut(|socket| socket.write_all(frame.as_bytes()).is_ok());
    }
}
