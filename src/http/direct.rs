//! Direct delivery on the HTTP/1.1 fast path ([`super::h1_stream`]): a
//! caught-up stream's socket is written by whoever appends the event.
//!
//! Why: a job fanned out to 1,000 sessions used to wake 1,000 stream tasks
//! per event, each to read one frame from its log and write it. On two
//! cores that scheduling, not the writes, was most of the gateway's CPU
//! per delivery and the gap to a plain writer looping over its sockets
//! (docs/performance.md). With a [`DirectTap`] attached to its log, a
//! stream that is caught up sleeps; each append offers it the frame, and
//! the appender writes it at once without waiting (`try_write`), in its
//! own pass over the subscribers.
//!
//! The stream's task owns the connection whenever the tap is closed, and
//! the tap only writes while open, under its lock, so the two never write
//! at once. The stream ([`super::sse::EventStream`]) opens the tap just
//! before it waits, only when the log holds nothing after its cursor
//! (checked under the same lock that offers take), and closes it as soon
//! as it wakes. The tap takes an event only if it is exactly the next one.
//! Anything else (a socket that would block, a frame written in part, an
//! offer out of order or to a closed tap, the log removed) wakes the task
//! with a kick on its log's watch; the task takes the cursor and any
//! unwritten end of a frame, finishes that, and reads the log as before.
//! So the log's guarantees (no gap, no duplicate, every frame whole) do
//! not depend on the tap.

use std::io::{IoSlice, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::event_log::{LiveTap, StreamKick};
use crate::ids::EventSeq;

/// A stream's socket, shared with its log's appenders while the stream is
/// caught up. See the module documentation.
pub struct DirectTap {
    state: Mutex<TapState>,
    /// Wakes the stream's task: the tap did not write an event.
    kick: StreamKick,
    chunked: bool,
}

struct TapState {
    /// The connection, until the stream takes it back for good.
    socket: Option<Arc<TcpStream>>,
    /// Offers are written only while open.
    open: bool,
    /// The last event written to the socket, by the task or an offer.
    cursor: EventSeq,
    /// The end of a frame an offer wrote only in part, as wire bytes.
    pending: Option<Bytes>,
}

/// Where the stream's task takes over when it closes the tap.
pub struct Handover {
    /// The last event written, in whole or in part.
    pub cursor: EventSeq,
    /// The end of a frame cut short waits in [`DirectTap::take_pending`].
    pub pending: bool,
}

impl DirectTap {
    /// A closed tap on `socket`; `chunked` as the response's framing;
    /// `kick` wakes the stream.
    pub fn new(socket: Arc<TcpStream>, chunked: bool, kick: StreamKick) -> Arc<DirectTap> {
        Arc::new(DirectTap {
            state: Mutex::new(TapState {
                socket: Some(socket),
                open: false,
                cursor: 0,
                pending: None,
            }),
            kick,
            chunked,
        })
    }

    fn lock(&self) -> MutexGuard<'_, TapState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens the tap for the events after `cursor`, if `newest()` (the
    /// log's newest readable event, looked at under the tap's lock) is
    /// `cursor`. An append publishes its event before it offers it, so
    /// either this look sees it (and the tap stays closed: the task reads
    /// it) or its offer finds the tap open at `cursor`.
    pub fn open(&self, cursor: EventSeq, newest: impl FnOnce() -> Option<EventSeq>) -> bool {
        let mut state = self.lock();
        if state.socket.is_none() || state.pending.is_some() || newest() != Some(cursor) {
            return false;
        }
        state.open = true;
        state.cursor = cursor;
        true
    }

    /// Closes the tap; the task owns the connection again. If it was open,
    /// kicks the watch: another stream of the session waiting on it (one
    /// replacing this) missed the wake-ups of the events the tap wrote.
    pub fn close(&self) -> Handover {
        let mut state = self.lock();
        let was_open = std::mem::replace(&mut state.open, false);
        let handover = Handover {
            cursor: state.cursor,
            pending: state.pending.is_some(),
        };
        drop(state);
        if was_open {
            self.kick.kick();
        }
        handover
    }

    /// Wire bytes to write (as they are, framing included) before anything
    /// else: the end of a frame an offer wrote in part. The tap stays
    /// closed until they are taken.
    pub fn take_pending(&self) -> Option<Bytes> {
        self.lock().pending.take()
    }

    /// Closes the tap for good and lets go of the socket.
    pub fn retire(&self) {
        let mut state = self.lock();
        state.open = false;
        state.socket = None;
    }

    fn decline(&self, mut state: MutexGuard<'_, TapState>) {
        state.open = false;
        drop(state);
        self.kick.kick();
    }
}

impl LiveTap for DirectTap {
    fn offer(&self, first: EventSeq, last: EventSeq, frames: &[&[u8]]) {
        let mut state = self.lock();
        if !state.open {
            return self.decline(state);
        }
        if last <= state.cursor {
            return;
        }
        let socket = match &state.socket {
            Some(socket) if first == state.cursor + 1 && frames.len() <= 3 => socket,
            _ => return self.decline(state),
        };
        let mut parts: [&[u8]; 3] = [&[]; 3];
        parts[..frames.len()].copy_from_slice(frames);
        let [a, b, c] = parts;
        let length = a.len() + b.len() + c.len();
        if length == 0 {
            // Nothing to write (an empty chunk would end the body).
            state.cursor = last;
            return;
        }
        let size_line = SizeLine::new(length);
        let (size_line, trailer): (&[u8], &[u8]) = if self.chunked {
            (size_line.as_bytes(), b"\r\n")
        } else {
            (b"", b"")
        };
        let pieces = [size_line, a, b, c, trailer];
        let total: usize = pieces.iter().map(|piece| piece.len()).sum();
        match send(socket, &pieces, total) {
            Ok(written) if written == total => state.cursor = last,
            // Frames cut short: the task writes the rest before anything.
            Ok(written) if written > 0 => {
                state.pending = Some(unwritten(&pieces, written));
                state.cursor = last;
                self.decline(state);
            }
            // Would block, or failed: the task's own write finds out which.
            _ => self.decline(state),
        }
    }

    fn missed(&self) {
        let state = self.lock();
        self.decline(state);
    }
}

/// Up to this many bytes, an offer's pieces are copied into one buffer and
/// sent with one `send`; larger runs go out as one `writev` of the pieces.
const JOINED_SEND_BYTES: usize = 16 * 1024;

thread_local! {
    /// Where an appender joins an offer's pieces ([`send`]).
    static JOINED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `pieces` (`total` bytes) to `socket` without waiting.
///
/// An offered frame is five pieces of a few hundred bytes at most (the
/// size line, a copy's own head, the event's shared envelope, the frame's
/// end, the trailer). As a `writev`, the kernel imports the vector, goes
/// through the file layer and copies piece by piece: at 100 subscribers
/// and 100k deliveries/s, `perf` put that path at twice the plain
/// writer's `send` path, near a tenth of the gateway's CPU. Joined here
/// (one copy of a few hundred bytes) and sent with `send(2)`, the
/// gateway's CPU in that row fell by 9-11 % (docs/performance.md).
fn send(socket: &TcpStream, pieces: &[&[u8]; 5], total: usize) -> std::io::Result<usize> {
    if total > JOINED_SEND_BYTES {
        let slices = (*pieces).map(IoSlice::new);
        return socket.try_write_vectored(&slices);
    }
    JOINED.with_borrow_mut(|joined| {
        joined.clear();
        for piece in pieces {
            joined.extend_from_slice(piece);
        }
        socket.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(socket).send(joined)
        })
    })
}

/// A chunk's size line (RFC 9112 §7.1), hex digits and CRLF, on the stack:
/// at most 16 + 2 bytes. Chunks written by the tap and by its
/// stream ([`super::h1_stream`]) share it.
pub(super) struct SizeLine {
    bytes: [u8; 18],
    length: usize,
}

impl SizeLine {
    pub(super) fn new(chunk_length: usize) -> SizeLine {
        let mut bytes = [0u8; 18];
        let mut cursor = std::io::Cursor::new(&mut bytes[..]);
        // 16 hex digits hold any usize; the write cannot fail.
        let _ = write!(cursor, "{chunk_length:x}\r\n");
        let length = cursor.position() as usize;
        SizeLine { bytes, length }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.length]
    }
}

/// The bytes of `pieces` after the first `written`, joined.
fn unwritten(pieces: &[&[u8]], mut written: usize) -> Bytes {
    let mut rest = Vec::new();
    for piece in pieces {
        if written >= piece.len() {
            written -= piece.len();
        } else {
            rest.extend_from_slice(&piece[written..]);
            written = 0;
        }
    }
    Bytes::from(rest)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::event_log::signal::NewestSender;
    use crate::event_log::{NewestWatch, Woken};

    #[test]
    fn the_unwritten_end_spans_pieces() {
        let pieces: [&[u8]; 3] = [b"ab", b"", b"cde"];
        assert_eq!(unwritten(&pieces, 0), Bytes::from_static(b"abcde"));
        assert_eq!(unwritten(&pieces, 1), Bytes::from_static(b"bcde"));
        assert_eq!(unwritten(&pieces, 2), Bytes::from_static(b"cde"));
        assert_eq!(unwritten(&pieces, 4), Bytes::from_static(b"e"));
        assert_eq!(unwritten(&pieces, 5), Bytes::new());
    }

    /// The gateway's end and the client's end of a loopback connection.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    async fn read_exactly(client: &mut TcpStream, length: usize) -> Vec<u8> {
        let mut bytes = vec![0; length];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut bytes))
            .await
            .expect("in time")
            .unwrap();
        bytes
    }

    /// A tap on `socket` once the runtime knows it is writable (a tap's
    /// `try_write` trusts the readiness the stream's own writes keep), and
    /// the watch its kicks wake.
    async fn tap(socket: &Arc<TcpStream>, log: &NewestSender) -> (Arc<DirectTap>, NewestWatch) {
        tokio::time::timeout(Duration::from_secs(10), socket.writable())
            .await
            .expect("writable in time")
            .unwrap();
        let watch = log.subscribe();
        let tap = DirectTap::new(socket.clone(), true, watch.kick_handle());
        (tap, watch)
    }

    async fn kicked(watch: &mut NewestWatch) {
        let woken = tokio::time::timeout(Duration::from_secs(10), watch.changed_or_kicked())
            .await
            .expect("kicked in time");
        assert_eq!(woken, Ok(Woken::Kicked));
    }

    #[tokio::test]
    async fn an_open_tap_writes_the_next_events_as_one_chunk_and_declines_a_gap() {
        let (gateway, mut client) = connection().await;
        let log = NewestSender::new(0);
        let (tap, mut watch) = tap(&Arc::new(gateway), &log).await;
        // The log holds an event after the cursor: the stream reads it.
        assert!(!tap.open(3, || Some(4)));
        assert!(!tap.open(3, || None));
        // Closed: the stream is woken to read the event instead.
        tap.offer(4, 4, &[b"closed"]);
        kicked(&mut watch).await;
        assert!(tap.open(3, || Some(3)));
        tap.offer(4, 5, &[b"id: 4\n\n", b"id: 5", b"\n\n"]);
        // Already written (an offer behind the stream's own read): ignored.
        tap.offer(5, 5, &[b"again"]);
        assert_eq!(
            read_exactly(&mut client, 19).await,
            b"e\r\nid: 4\n\nid: 5\n\n\r\n"
        );
        // A gap (another appender's event not offered yet): declined.
        watch.mark_kicks_seen();
        tap.offer(7, 7, &[b"id: 7\n\n"]);
        kicked(&mut watch).await;
        let handover = tap.close();
        assert_eq!(handover.cursor, 5);
        assert!(!handover.pending);
        tap.offer(6, 6, &[b"id: 6\n\n"]);
        tap.retire();
        assert!(!tap.open(5, || Some(5)), "retired for good");
        drop(tap);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "nothing after the declined offer: {rest:?}"
        );
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_handed_to_the_stream_to_finish() {
        let (gateway, mut client) = connection().await;
        let gateway = Arc::new(gateway);
        let log = NewestSender::new(0);
        let (tap, mut watch) = tap(&gateway, &log).await;
        // Fill the connection while the client reads nothing.
        let mut filled = 0;
        loop {
            match gateway.try_write(&[b'f'; 64 * 1024]) {
                Ok(written) => filled += written,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => panic!("{error}"),
            }
        }
        assert!(filled > 0);
        assert!(tap.open(0, || Some(0)));
        // No room at all: nothing written, the event stays the stream's.
        tap.offer(1, 1, &[b"id: 1\n\n"]);
        kicked(&mut watch).await;
        let handover = tap.close();
        assert_eq!((handover.cursor, handover.pending), (0, false));
        // Room again: a frame larger than the buffers goes out in part.
        read_exactly(&mut client, filled).await;
        tokio::time::timeout(Duration::from_secs(10), gateway.writable())
            .await
            .expect("room in time")
            .unwrap();
        assert!(tap.open(0, || Some(0)));
        let frame = vec![b'x'; 64 * 1024 * 1024];
        tap.offer(1, 1, &[&frame]);
        let handover = tap.close();
        assert_eq!(handover.cursor, 1, "the event is the tap's, in part");
        assert!(handover.pending);
        assert!(!tap.open(1, || Some(1)), "not before the rest is taken");
        let pending = tap.take_pending().expect("the rest of the frame");
        assert!(tap.open(1, || Some(1)));
        let mut framed = b"4000000\r\n".to_vec();
        framed.extend_from_slice(&frame);
        framed.extend_from_slice(b"\r\n");
        assert!(pending.len() < framed.len());
        assert!(framed.ends_with(&pending));
        let written = framed.len() - pending.len();
        let seen = read_exactly(&mut client, written).await;
        assert_eq!(seen, &framed[..written]);
    }

    /// A frame small enough to be joined and sent whole
    /// ([`JOINED_SEND_BYTES`]), on a connection with the smallest buffers
    /// the kernel allows, goes out in part: the rest is the stream's, and
    /// what the client reads then the rest is exactly the chunk.
    #[tokio::test]
    async fn a_joined_frame_cut_short_is_handed_to_the_stream_to_finish() {
        // Sizes set before the handshake, so the window starts small.
        let listening = tokio::net::TcpSocket::new_v4().unwrap();
        listening.set_send_buffer_size(1).unwrap();
        listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listening.local_addr().unwrap();
        let listener = listening.listen(1).unwrap();
        let connecting = tokio::net::TcpSocket::new_v4().unwrap();
        connecting.set_recv_buffer_size(1).unwrap();
        let (client, accepted) = tokio::join!(connecting.connect(address), listener.accept());
        let (gateway, mut client) = (Arc::new(accepted.unwrap().0), client.unwrap());
        let log = NewestSender::new(0);
        let (tap, _watch) = tap(&gateway, &log).await;
        assert!(tap.open(0, || Some(0)));
        let head = b"id: 1\ndata: ".as_slice();
        let body = vec![b'x'; JOINED_SEND_BYTES - 64];
        tap.offer(1, 1, &[head, &body, b"\n\n"]);
        let handover = tap.close();
        assert_eq!(handover.cursor, 1);
        assert!(handover.pending, "a frame this size must not fit");
        let pending = tap.take_pending().expect("the rest of the frame");
        let length = head.len() + body.len() + 2;
        let mut framed = format!("{length:x}\r\n").into_bytes();
        framed.extend_from_slice(head);
        framed.extend_from_slice(&body);
        framed.extend_from_slice(b"\n\n\r\n");
        assert!(framed.ends_with(&pending));
        let written = framed.len() - pending.len();
        assert!(written > 0);
        assert_eq!(read_exactly(&mut client, written).await, &framed[..written]);
    }
}
