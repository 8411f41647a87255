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
//!
//! By default every writer thread wakes on its own timer at the event's
//! due time, so all cores start writing at once with the frame in hand.
//! No server fed by one publisher can do that: its event appears on one
//! thread and reaches the others by a wake-up. `--floor-publisher` (a
//! sixth argument, `publisher`) measures that shape too: one thread wakes
//! on the timer, stamps and builds the frame, hands it to the other
//! writers over a channel and writes its own share; the rest wait on
//! their channels. Still blocking writes, no tasks, no logs.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::now_ns;
use crate::wire::event_frame;

const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The arguments after `--serve-floor`: `SUBSCRIBERS RATE COUNT BYTES`,
/// then `publisher` for the one-publisher shape.
pub fn serve(args: &[String]) {
    let number = |index: usize| -> u64 {
        args.get(index)
            .and_then(|value| value.parse().ok())
            .expect("--serve-floor SUBSCRIBERS RATE COUNT BYTES [publisher]")
    };
    let publisher = args.get(4).is_some_and(|mode| mode == "publisher");
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
    let pace = Pace {
        start: Instant::now() + Duration::from_millis(500),
        rate,
        count,
    };
    let mut remaining = sockets.into_iter();
    let mut groups: Vec<Vec<TcpStream>> = (0..threads)
        .map(|_| remaining.by_ref().take(per_thread).collect())
        .collect();
    let writers: Vec<_> = if publisher {
        let own = groups.remove(0);
        let mut senders = Vec::new();
        let mut writers: Vec<_> = groups
            .into_iter()
            .map(|group| {
                let (sender, receiver) = sync_channel(1);
                senders.push(sender);
                std::thread::spawn(move || write_handed(group, receiver))
            })
            .collect();
        writers.push(std::thread::spawn(move || {
            publish(own, &senders, pace, bytes)
        }));
        writers
    } else {
        let barrier = Arc::new(Barrier::new(threads));
        groups
            .into_iter()
            .map(|group| {
                let barrier = barrier.clone();
                std::thread::spawn(move || write_paced(group, &barrier, pace, bytes))
            })
            .collect()
    };
    for writer in writers {
        let _ = writer.join();
    }
    // Let the clients read the last frames before the sockets close.
    std::thread::sleep(Duration::from_secs(2));
}

/// Writes every frame of `pace` to every socket of `group`, in step with
/// the other writer threads.
fn write_paced(mut group: Vec<TcpStream>, barrier: &Barrier, pace: Pace, bytes: usize) {
    for seq in 1..=pace.count {
        barrier.wait();
        std::thread::sleep(pace.due(seq).saturating_duration_since(Instant::now()));
        let frame = event_frame(seq, now_ns(), bytes);
        group.retain_mut(|socket| socket.write_all(frame.as_bytes()).is_ok());
    }
}

/// `count` frames at `rate` per second from `start`.
#[derive(Clone, Copy)]
struct Pace {
    start: Instant,
    rate: u64,
    count: u64,
}

impl Pace {
    /// When the `seq`th frame (from 1) is due.
    fn due(&self, seq: u64) -> Instant {
        self.start + Duration::from_nanos(seq * 1_000_000_000 / self.rate.max(1))
    }
}

/// The one-publisher shape's paced thread: wakes when each frame is due,
/// hands it to the other writers, then writes its own share.
fn publish(
    mut group: Vec<TcpStream>,
    others: &[SyncSender<Arc<String>>],
    pace: Pace,
    bytes: usize,
) {
    for seq in 1..=pace.count {
        std::thread::sleep(pace.due(seq).saturating_duration_since(Instant::now()));
        let frame = Arc::new(event_frame(seq, now_ns(), bytes));
        for other in others {
            // A writer that has not yet taken the last frame holds this
            // one up (a channel of one), as a real server's hand-off would.
            let _ = other.send(frame.clone());
        }
        group.retain_mut(|socket| socket.write_all(frame.as_bytes()).is_ok());
    }
}

/// A writer of the one-publisher shape: each frame it is handed, to its
/// share of the sockets; ends when the publisher does.
fn write_handed(mut group: Vec<TcpStream>, frames: Receiver<Arc<String>>) {
    for frame in frames {
        group.retain_mut(|socket| socket.write_all(frame.as_bytes()).is_ok());
    }
}
