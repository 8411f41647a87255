//! Server-Sent Events: frame encoding and the attached stream.
//!
//! A job event is one SSE event, `id: <event_seq>`, `event: <type>`,
//! `data: <envelope JSON on one line>`. The frame is encoded once, when the
//! event is appended to the log, and replay writes those stored bytes. Control
//! events (`session.welcome`) carry no `id:` so they never move a browser's
//! `Last-Event-ID`. Keepalives are comments.
//!
//! An [`EventStream`] reads the session's log from its cursor in coalesced
//! chunks and yields them to its writer: the connection's own task on the
//! HTTP/1.1 fast path (`h1_stream.rs`), or, under hyper, a pump task feeding
//! a small bounded channel that [`SseBody`] drains. Either way a slow client
//! holds at most a few chunks in memory.

mod body;
mod encode;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use self::body::{open_stream, SseBody};
pub use self::encode::{
    encode_job_event, encode_job_event_head, encode_retry, encode_unsequenced_event, KEEPALIVE,
};
pub use self::stream::{EventStream, Next, Stop, Waited};
use crate::event_log::ReadLimit;
use crate::ids::EventSeq;
use crate::metrics::{Metrics, Transport};
use crate::session::{Session, StreamId};
use crate::state::{LogReader, Shutdown};

/// How long a stream's last words (`session.closed`, a `retry:` hint) may
/// wait for room in a slow client's buffer before the stream just ends.
pub const FINAL_FRAME_WAIT: Duration = Duration::from_secs(1);

/// The first chunk of replay, sent with the welcome: small, so the first
/// event leaves at once; later chunks are large so a long replay costs few
/// writes.
const FIRST_READ_LIMIT: ReadLimit = ReadLimit {
    max_entries: 64,
    max_bytes: 16 * 1024,
};

/// The largest chunk a stream writes at once.
pub const STREAM_READ_LIMIT: ReadLimit = ReadLimit {
    max_entries: 4096,
    max_bytes: 1024 * 1024,
};

/// Everything a stream needs to start.
pub struct StreamPlan {
    pub log: LogReader,
    pub session: Arc<Session>,
    pub stream_id: StreamId,
    /// Replay starts after this sequence number.
    pub cursor: EventSeq,
    /// Written first: the `retry:` line and the welcome event.
    pub prelude: Bytes,
    pub heartbeat: Duration,
    pub shutdown: Shutdown,
    /// The stream ends by itself after this long (already jittered), so
    /// cookies refresh and proxies never hold a silent hour-long response.
    pub max_duration: Option<Duration>,
    /// The reconnect hint sent when the gateway ends a stream on purpose.
    pub retry: Duration,
    pub metrics: Arc<Metrics>,
    pub transport: Transport,
}

/// A duration cut by a random 0–10 %, so streams opened together do not all
/// end (and reconnect) together.
pub fn jittered(duration: Duration) -> Duration {
    duration.mul_f64(1.0 - rand::random::<f64>() * 0.1)
}
