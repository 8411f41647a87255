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

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, watch};

use crate::event_log::{EncodedFrame, EventDraft, LiveTap, LogEntry, ReadLimit, StreamKick};
use crate::http::direct::DirectTap;
use crate::ids::{EventSeq, SessionId};
use crate::metrics::{Metrics, OpenGuard, StreamEnd, Transport};
use crate::protocol::{job_envelope_head, push_json_number, Envelope};
use crate::session::{Session, StreamId};
use crate::state::{LogReader, LogWatch, OpError, Shutdown};
use crate::storage::StorageError;

/// A keepalive comment (§6.4 heartbeats are not events and use no seq).
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// How long a stream's last words (`session.closed`, a `retry:` hint) may
/// wait for room in a slow client's buffer before the stream just ends.
pub const FINAL_FRAME_WAIT: Duration = Duration::from_secs(1);

/// Chunks buffered between a stream's pump and its response body.
const STREAM_CHANNEL_CHUNKS: usize = 4;

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

/// The [`crate::event_log::FrameEncoder`] for job events. The session's own
/// envelope fields are written here; the rest (payload included) is the
/// draft's shared serialization, copied, so fanning one event out to many
/// sessions serializes its payload once.
pub fn encode_job_event(session_id: &SessionId, seq: EventSeq, draft: &EventDraft) -> EncodedFrame {
    let shared = draft.shared_envelope();
    let mut frame = Vec::with_capacity(shared.len() + 192 + session_id.as_str().len());
    // A fresh id is formatted on the stack, not allocated as a `MessageId`.
    let mut fresh = [0u8; ulid::ULID_LEN];
    let id = match &draft.message_id {
        Some(id) => id.as_str(),
        None => ulid::Ulid::new().array_to_str(&mut fresh),
    };
    let start = encode_job_event_head(&mut frame, session_id, seq, draft.message_type, id);
    frame.extend_from_slice(shared);
    let envelope = start..frame.len();
    frame.extend_from_slice(b"\n\n");
    EncodedFrame {
        frame: Bytes::from(frame),
        envelope,
    }
}

/// The [`crate::event_log::HeadEncoder`] for job events: the frame of
/// [`encode_job_event`] up to the draft's shared envelope, for the message
/// id `id`. Returns where the envelope JSON starts.
pub fn encode_job_event_head(
    frame: &mut Vec<u8>,
    session_id: &SessionId,
    seq: EventSeq,
    message_type: &'static str,
    id: &str,
) -> usize {
    frame.extend_from_slice(b"id: ");
    push_json_number(frame, seq);
    frame.extend_from_slice(b"\nevent: ");
    frame.extend_from_slice(message_type.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    let start = frame.len();
    job_envelope_head(frame, message_type, session_id, seq, id);
    start
}

/// An event with no `id:` line, for control messages. `data` must be one
/// line (JSON from `serde_json` always is).
pub fn encode_unsequenced_event(event_type: &str, data: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(data.len() + event_type.len() + 20);
    frame.extend_from_slice(b"event: ");
    frame.extend_from_slice(event_type.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\n\n");
    frame.freeze()
}

/// The reconnection delay hint.
pub fn encode_retry(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", retry.as_millis()))
}

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

/// Why a stream stopped. Not sent to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    ClientGone,
    Replaced,
    Shutdown,
    LogGone,
    MaxDuration,
    /// Cluster mode: the shared store could not be read.
    StoreUnavailable,
}

impl Stop {
    fn metric(self) -> StreamEnd {
        match self {
            Stop::ClientGone => StreamEnd::ClientGone,
            Stop::Replaced => StreamEnd::Replaced,
            Stop::Shutdown => StreamEnd::Shutdown,
            Stop::LogGone => StreamEnd::SlowClient,
            Stop::MaxDuration => StreamEnd::MaxDuration,
            Stop::StoreUnavailable => StreamEnd::StoreUnavailable,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Stop::ClientGone => "client disconnected",
            Stop::Replaced => "replaced by a newer stream or closed",
            Stop::Shutdown => "gateway shutting down",
            Stop::LogGone => "log no longer covers the stream",
            Stop::MaxDuration => "maximum stream duration reached",
            Stop::StoreUnavailable => "the shared store is unavailable",
        }
    }
}

/// What a wait on the log produced.
pub enum Waited<T> {
    /// Entries (or their frames) after the cursor.
    Read(T),
    /// The heartbeat interval passed with nothing to send (§6.4).
    Heartbeat,
}

/// What a stream writes next.
pub enum Next {
    /// Event frames or a heartbeat.
    Chunk(Bytes),
    /// The stream's last words (a `retry:` hint, `session.closed`): write
    /// them within [`FINAL_FRAME_WAIT`], without interruption, then end.
    Farewell(Bytes),
    /// Nothing more; end the response.
    End,
}

/// One attached stream, read by whoever writes the response: the
/// connection's own task on the HTTP/1.1 fast path
/// ([`crate::http::h1_stream`]), or a pump task feeding [`SseBody`] under
/// hyper. It only reads the session's log (never writes it), holds no lock
/// across an await, and detaches itself from the session when dropped.
///
/// The writer loop is: `next()`; write a `Chunk` while racing
/// [`EventStream::interrupted`] (a slow client must not delay shutdown); on
/// an interruption or a failed write call [`EventStream::end`]; write a
/// `Farewell` with a timeout; stop at `End`.
pub struct EventStream {
    log: LogReader,
    session: Arc<Session>,
    stream_id: StreamId,
    cursor: EventSeq,
    /// The welcome and the first events, written with the response head.
    initial: Option<Bytes>,
    /// `None` when the log was already gone at open.
    newest: Option<LogWatch>,
    heartbeat: tokio::time::Interval,
    attached: watch::Receiver<Option<StreamId>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    shutdown: Shutdown,
    retry: Duration,
    /// Set once the stream must end; `next()` then says goodbye.
    stopped: Option<Stop>,
    finished: bool,
    metrics: Arc<Metrics>,
    /// Events up to here were logged before the stream opened (replay).
    replay_until: EventSeq,
    /// On the HTTP/1.1 fast path in memory: writes the events appended
    /// while the stream waits caught up ([`crate::http::direct`]).
    tap: Option<Arc<DirectTap>>,
    /// Counts the stream in `streams_open` while it lives.
    _open: OpenGuard,
}

impl EventStream {
    /// Opens the stream. The welcome and the first chunk of replay are read
    /// here, in the request's own task, so they leave with the response
    /// head (time to first event).
    pub async fn open(plan: StreamPlan) -> EventStream {
        let (mut stream, prelude) = EventStream::attach(plan).await;
        let mut initial = BytesMut::from(&prelude[..]);
        if let Ok(Some((last, chunk))) = stream
            .log
            .read_chunk_after(&stream.session.id, stream.cursor, FIRST_READ_LIMIT)
            .await
        {
            initial.extend_from_slice(&chunk);
            count_events(&stream.metrics, stream.replay_until, stream.cursor, last);
            stream.cursor = last;
        }
        stream.initial = Some(initial.freeze());
        stream
    }

    /// The stream's state at `plan.cursor`, counted as open, with nothing
    /// read yet (what both kinds of reader start from), and the plan's
    /// prelude.
    async fn attach(plan: StreamPlan) -> (EventStream, Bytes) {
        let open = plan.metrics.stream_opened(plan.transport);
        let replay_until = plan
            .log
            .bounds(&plan.session.id)
            .await
            .map_or(plan.cursor, |bounds| bounds.newest);
        let newest = plan.log.watch(&plan.session.id).await;
        if let Some(LogWatch::Local(watch)) = &newest {
            plan.session.set_stream_kick(|| watch.kick_handle());
        }
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + plan.heartbeat, plan.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stream = EventStream {
            attached: plan.session.watch_attached_stream(),
            deadline: plan
                .max_duration
                .map(|duration| Box::pin(tokio::time::sleep(duration))),
            shutdown: plan.shutdown,
            log: plan.log,
            session: plan.session,
            stream_id: plan.stream_id,
            cursor: plan.cursor,
            initial: None,
            newest,
            heartbeat,
            retry: plan.retry,
            stopped: None,
            finished: false,
            metrics: plan.metrics,
            replay_until,
            tap: None,
            _open: open,
        };
        (stream, plan.prelude)
    }

    /// The next thing to write. Cancel-safe: dropping the future loses
    /// nothing, because the cursor only moves when a chunk is returned.
    pub async fn next(&mut self) -> Next {
        if let Some(initial) = self.initial.take() {
            return Next::Chunk(initial);
        }
        if self.stopped.is_none() {
            match self.wait_for_chunk().await {
                Ok(chunk) => return Next::Chunk(chunk),
                Err(stop) => self.end(stop),
            }
        }
        if self.finished {
            return Next::End;
        }
        self.finished = true;
        match self.stopped.and_then(|stop| self.farewell(stop)) {
            Some(bytes) => Next::Farewell(bytes),
            None => Next::End,
        }
    }

    /// Records why the stream ends; the next `next()` returns its farewell.
    /// The first reason wins.
    pub fn end(&mut self, stop: Stop) {
        if self.stopped.is_none() {
            tracing::debug!(session = %self.session.id, reason = stop.reason(), "stream ended");
            self.stopped = Some(stop);
        }
    }

    /// Completes when the gateway ends the stream for a reason of its own
    /// (shutdown, a newer stream, the duration limit). Raced against writes,
    /// so a client that stopped reading cannot hold a stream open.
    pub async fn interrupted(&mut self) -> Stop {
        let deadline = self.deadline.as_mut().map(|sleep| sleep.as_mut());
        gateway_stop(&self.shutdown, &mut self.attached, self.stream_id, deadline).await
    }

    /// A reason of the gateway's own to end the stream that is already due,
    /// in the order `interrupted` gives them. It looks at the signals
    /// instead of polling waits on them: registering and removing a wait on
    /// the gateway-wide shutdown token takes that token's lock, which every
    /// stream shares, and this runs once per event.
    pub fn interrupted_now(&self) -> Option<Stop> {
        if self.shutdown.has_begun() {
            Some(Stop::Shutdown)
        } else if *self.attached.borrow() != Some(self.stream_id) {
            Some(Stop::Replaced)
        } else if self
            .deadline
            .as_ref()
            .is_some_and(|sleep| sleep.deadline() <= tokio::time::Instant::now())
        {
            Some(Stop::MaxDuration)
        } else {
            None
        }
    }

    async fn wait_for_chunk(&mut self) -> Result<Bytes, Stop> {
        loop {
            // A wait dropped half-way (the writer's select) may have left
            // the tap open: what it wrote is taken back before any read.
            if self.close_tap() {
                return Ok(Bytes::new());
            }
            let seen = self.mark_seen()?;
            // Live, a stream just wrote what it read last: the watch then
            // says there is nothing new, and the read is skipped.
            if !self.log.caught_up(seen, self.cursor) {
                let read = self
                    .log
                    .read_chunk_after(&self.session.id, self.cursor, STREAM_READ_LIMIT)
                    .await;
                if let Some((last, chunk)) = read.map_err(stop_for)? {
                    self.advance(last);
                    return Ok(chunk);
                }
            }
            self.open_tap();
            let waited = self.wait().await;
            let unfinished = self.close_tap();
            if let Waited::Heartbeat = waited? {
                return Ok(heartbeat_chunk(&self.session));
            }
            // The end of a frame cut short is written now, not after the
            // next event: an empty chunk hands it to the writer.
            if unfinished {
                return Ok(Bytes::new());
            }
        }
    }

    /// Gives the stream a tap ([`crate::http::direct`]) made by `make`
    /// with the kick of the stream's log, if that log is this node's
    /// in-memory log (no sink): while the stream waits caught up, appends
    /// are written by the tap. The writer must then write
    /// [`EventStream::take_unfinished`] before anything `next()` returns.
    pub fn attach_tap(&mut self, make: impl FnOnce(StreamKick) -> Arc<DirectTap>) {
        let (LogReader::Local(reader), Some(LogWatch::Local(watch))) = (&self.log, &self.newest)
        else {
            return;
        };
        let tap = make(watch.kick_handle());
        if reader.attach_tap(tap.clone()) {
            self.tap = Some(tap);
        }
    }

    /// Bytes to write as they are, before whatever `next()` returned: the
    /// end of a frame the tap could only write in part.
    pub fn take_unfinished(&mut self) -> Option<Bytes> {
        self.tap.as_ref().and_then(|tap| tap.take_pending())
    }

    /// Opens the tap at the cursor if the log holds nothing after it.
    fn open_tap(&self) {
        if let (Some(tap), LogReader::Local(reader)) = (&self.tap, &self.log) {
            tap.open(self.cursor, || reader.newest());
        }
    }

    /// Closes the tap and takes over from where it stopped, counting what
    /// it wrote. True when it left the end of a frame to write
    /// ([`EventStream::take_unfinished`]).
    fn close_tap(&mut self) -> bool {
        let Some(tap) = &self.tap else {
            return false;
        };
        let handover = tap.close();
        if handover.cursor > self.cursor {
            self.advance(handover.cursor);
        }
        handover.pending
    }

    /// For bindings that write one message per event (WebSocket): the next
    /// entries after the cursor (at most `limit`), or a heartbeat tick, or
    /// why the stream must stop. The same log reading, resume window and
    /// replacement rules as the SSE stream; the cursor moves only when
    /// entries are returned. Use on a stream opened with
    /// [`EventStream::open_for_entries`].
    pub async fn next_entries(&mut self, limit: ReadLimit) -> Result<Waited<Vec<LogEntry>>, Stop> {
        loop {
            let seen = self.mark_seen()?;
            if !self.log.caught_up(seen, self.cursor) {
                let entries = self
                    .log
                    .read_after(&self.session.id, self.cursor, limit)
                    .await
                    .map_err(stop_for)?;
                if let Some(last) = entries.last().map(|entry| entry.seq) {
                    self.advance(last);
                    return Ok(Waited::Read(entries));
                }
            }
            if let Waited::Heartbeat = self.wait().await? {
                return Ok(Waited::Heartbeat);
            }
        }
    }

    /// Opens a stream whose reader takes entries ([`EventStream::next_entries`])
    /// instead of SSE chunks: no prelude, nothing read ahead.
    pub async fn open_for_entries(plan: StreamPlan) -> EventStream {
        EventStream::attach(plan).await.0
    }

    /// Marks the newest sequence as seen before a read, so an append that
    /// lands after the read wakes the wait that follows it.
    fn mark_seen(&mut self) -> Result<EventSeq, Stop> {
        let newest = self.newest.as_mut().ok_or(Stop::LogGone)?;
        Ok(newest.mark_seen())
    }

    fn advance(&mut self, last: EventSeq) {
        count_events(&self.metrics, self.replay_until, self.cursor, last);
        self.cursor = last;
    }

    /// Waits, caught up, for an append (`Read(())`: read again), a
    /// heartbeat tick, or a reason to stop.
    async fn wait(&mut self) -> Result<Waited<()>, Stop> {
        if let Some(LogWatch::Local(_)) = &self.newest {
            return self.wait_on_local_log().await;
        }
        // Boxed: inline, this wait would size every stream's task, the
        // fast path's idle ones included, which never take it.
        Box::pin(self.wait_on_shared_log()).await
    }

    /// [`EventStream::wait`] on a log this node does not hold (a cluster's).
    async fn wait_on_shared_log(&mut self) -> Result<Waited<()>, Stop> {
        let newest = self.newest.as_mut().ok_or(Stop::LogGone)?;
        let deadline = self.deadline.as_mut().map(|sleep| sleep.as_mut());
        tokio::select! {
            biased;
            stop = gateway_stop(&self.shutdown, &mut self.attached, self.stream_id, deadline) => Err(stop),
            changed = newest.changed() => match changed {
                Ok(()) => Ok(Waited::Read(())),
                Err(_) => Err(Stop::LogGone),
            },
            _ = self.heartbeat.tick() => {
                if !Box::pin(self.log.still_attached(&self.session, self.stream_id)).await {
                    return Err(Stop::Replaced);
                }
                Ok(Waited::Heartbeat)
            }
        }
    }

    /// [`EventStream::wait`] on this node's log: one wait per event, on the
    /// log's watch, which the session kicks when its attached stream changes
    /// and the gateway when it shuts down ([`crate::event_log::StreamKick`]);
    /// the reasons to stop are looked at before waiting and again after
    /// every kick (the caller's loop comes back here). Registering on the
    /// gateway-wide shutdown token and the session's stream watch for every
    /// event cost each stream two more locks in and out per event, one of
    /// them shared by every stream.
    async fn wait_on_local_log(&mut self) -> Result<Waited<()>, Stop> {
        // Kicks so far are seen before the reasons are looked at, so one
        // that lands after the look still wakes the wait below.
        if let Some(LogWatch::Local(watch)) = self.newest.as_mut() {
            watch.mark_kicks_seen();
        }
        if let Some(stop) = self.interrupted_now() {
            return Err(stop);
        }
        let Some(LogWatch::Local(watch)) = self.newest.as_mut() else {
            return Err(Stop::LogGone);
        };
        let deadline = self.deadline.as_mut().map(|sleep| sleep.as_mut());
        tokio::select! {
            biased;
            woken = watch.changed_or_kicked() => match woken {
                Ok(_) => Ok(Waited::Read(())),
                Err(_) => Err(Stop::LogGone),
            },
            () = expired(deadline) => Err(Stop::MaxDuration),
            _ = self.heartbeat.tick() => {
                if !Box::pin(self.log.still_attached(&self.session, self.stream_id)).await {
                    return Err(Stop::Replaced);
                }
                Ok(Waited::Heartbeat)
            }
        }
    }

    /// The session this stream is attached to.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The stream's last words, by why it ends.
    fn farewell(&self, stop: Stop) -> Option<Bytes> {
        match stop {
            // Ask the client to come back soon (to this or another
            // instance); its Last-Event-ID or cookie resumes it exactly
            // where it was.
            Stop::Shutdown | Stop::MaxDuration | Stop::StoreUnavailable => {
                let reason = match stop {
                    Stop::Shutdown => "gateway shutting down",
                    Stop::MaxDuration => "stream duration limit",
                    _ => "store unavailable",
                };
                Some(Bytes::from(format!(
                    ": {reason}, reconnect\nretry: {}\n\n",
                    self.retry.as_millis()
                )))
            }
            // §6.7: tell the client why its stream ends.
            Stop::Replaced if self.session.is_closed() => {
                let payload = serde_json::json!({ "reason": "closed by client" });
                let envelope =
                    Envelope::new("session.closed", &self.session.id, &payload).to_json_bytes();
                Some(encode_unsequenced_event("session.closed", &envelope))
            }
            _ => None,
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let (Some(tap), LogReader::Local(reader)) = (self.tap.take(), &self.log) {
            tap.retire();
            let tap: Arc<dyn LiveTap> = tap;
            reader.detach_tap(&tap);
        }
        self.log.detach(&self.session, self.stream_id);
        // A stream dropped without a reason lost its connection.
        let stop = self.stopped.unwrap_or(Stop::ClientGone);
        self.metrics.stream_ended(stop.metric());
    }
}

/// Why a failed read ends a stream. Evicted under a slow reader, or the
/// session is gone: the reconnect gets an honest 410, never a skip. A store
/// that cannot be reached (cluster mode): the client comes back later.
fn stop_for(error: OpError) -> Stop {
    match error {
        OpError::Storage(
            StorageError::Unavailable(_)
            | StorageError::Indeterminate(_)
            | StorageError::WriterStopped,
        ) => Stop::StoreUnavailable,
        _ => Stop::LogGone,
    }
}

/// Counts the events `(from, to]` handed to a stream; sequence numbers have
/// no gaps, so their count is `to - from`.
fn count_events(metrics: &Metrics, replay_until: EventSeq, from: EventSeq, to: EventSeq) {
    let replayed = to.min(replay_until).saturating_sub(from);
    let live = to.saturating_sub(from) - replayed;
    metrics.stream_events(replayed, live);
}

/// The gateway's own reasons to end a stream, whichever comes first: shutdown,
/// a newer stream (or a close), the duration limit.
async fn gateway_stop(
    shutdown: &Shutdown,
    attached: &mut watch::Receiver<Option<StreamId>>,
    stream_id: StreamId,
    deadline: Option<Pin<&mut tokio::time::Sleep>>,
) -> Stop {
    tokio::select! {
        biased;
        () = shutdown.begun() => Stop::Shutdown,
        () = replaced(attached, stream_id) => Stop::Replaced,
        () = expired(deadline) => Stop::MaxDuration,
    }
}

/// Completes at the deadline; never without one.
async fn expired(deadline: Option<Pin<&mut tokio::time::Sleep>>) {
    match deadline {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

/// The response body of a stream served by hyper (HTTP/2, and HTTP/1.1
/// requests the fast path passes on): a pump task drives the
/// [`EventStream`] into a small bounded channel that this body drains, so a
/// slow client holds at most a few chunks in memory.
pub struct SseBody {
    initial: Option<Bytes>,
    receiver: mpsc::Receiver<Bytes>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(initial) = self.initial.take() {
            return Poll::Ready(Some(Ok(Frame::data(initial))));
        }
        self.receiver
            .poll_recv(context)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Starts the pump task and returns the body it feeds.
pub async fn open_stream(plan: StreamPlan) -> SseBody {
    let mut stream = EventStream::open(plan).await;
    let initial = stream.initial.take();
    let (sender, receiver) = mpsc::channel(STREAM_CHANNEL_CHUNKS);
    tokio::spawn(async move {
        loop {
            let chunk = tokio::select! {
                biased;
                () = sender.closed() => { stream.end(Stop::ClientGone); return }
                next = stream.next() => next,
            };
            match chunk {
                Next::Chunk(chunk) => {
                    tokio::select! {
                        biased;
                        stop = stream.interrupted() => stream.end(stop),
                        sent = sender.send(chunk) => if sent.is_err() { stream.end(Stop::ClientGone) },
                    }
                }
                Next::Farewell(bytes) => {
                    let _ = tokio::time::timeout(FINAL_FRAME_WAIT, sender.send(bytes)).await;
                }
                Next::End => return,
            }
        }
    });
    SseBody { initial, receiver }
}

/// A keepalive comment, plus a `session.ping` (§6.4, no `id:`, no seq) when
/// the session negotiated `heartbeat`.
fn heartbeat_chunk(session: &Session) -> Bytes {
    if !session.has_feature("heartbeat") {
        return Bytes::from_static(KEEPALIVE);
    }
    let payload = serde_json::json!({
        "nonce": format!("p_{:032x}", rand::random::<u128>()),
        "sent_at": crate::protocol::now_rfc3339(),
    });
    let envelope = Envelope::new("session.ping", &session.id, &payload).to_json_bytes();
    let mut chunk = BytesMut::from(KEEPALIVE);
    chunk.extend_from_slice(&encode_unsequenced_event("session.ping", &envelope));
    chunk.freeze()
}

/// Completes once `stream_id` is no longer the session's attached stream.
async fn replaced(attached: &mut watch::Receiver<Option<StreamId>>, stream_id: StreamId) {
    loop {
        if *attached.borrow_and_update() != Some(stream_id) {
            return;
        }
        if attached.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;
    use crate::event_log::LogEntry;
    use crate::ids::JobId;

    /// A parser that follows the WHATWG event-stream interpretation rules,
    /// for checking what a browser would see.
    fn parse_events(stream: &str) -> Vec<(Option<String>, String, String)> {
        let mut events = Vec::new();
        let (mut id, mut event, mut data): (Option<String>, String, Vec<String>) =
            (None, String::new(), Vec::new());
        for line in stream.split('\n') {
            if line.is_empty() {
                if !data.is_empty() {
                    events.push((id.take(), std::mem::take(&mut event), data.join("\n")));
                }
                data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = value.to_owned(),
                "data" => data.push(value.to_owned()),
                _ => {}
            }
        }
        events
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "\\PC*|[\\r\\n\\u{2028}:\\x00-\\x1f]*".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::hash_map("[a-z\\n:]{0,6}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn one_draft_fans_out_with_each_sessions_own_envelope_fields() {
        let draft = EventDraft::new(
            "job.result",
            JobId::from_client("job_f"),
            None,
            json!({"final_status": "success", "result": {"text": "a\nb"}}),
        );
        let mut ids = std::collections::HashSet::new();
        for (n, session) in ["sess_a", "sess_b", "sess_c"].into_iter().enumerate() {
            let seq = 10 + n as u64;
            let encoded = encode_job_event(&SessionId::from_client(session), seq, &draft);
            let envelope: Value =
                serde_json::from_slice(&encoded.frame[encoded.envelope.clone()]).unwrap();
            assert_eq!(envelope["session_id"], json!(session));
            assert_eq!(envelope["event_seq"], json!(seq));
            assert_eq!(envelope["type"], json!("job.result"));
            assert_eq!(envelope["job_id"], json!("job_f"));
            assert_eq!(envelope["payload"], draft.payload);
            assert!(envelope.get("trace_id").is_none());
            assert!(
                ids.insert(envelope["id"].as_str().unwrap().to_owned()),
                "message ids differ"
            );
        }
    }

    proptest! {
        #[test]
        fn job_event_frames_parse_back_to_one_event(payload in arbitrary_json(), seq in 1u64..u64::MAX) {
            let session_id = SessionId::from_client("sess_x");
            let draft = EventDraft::new("job.event", JobId::from_client("job_y"), Some("trace".into()), payload.clone());
            let encoded = encode_job_event(&session_id, seq, &draft);
            let text = std::str::from_utf8(&encoded.frame).unwrap();
            let entry = LogEntry { seq, job_id: draft.job_id.clone(), frame: encoded.frame.clone(), envelope: encoded.envelope };
            let rebuilt = entry.to_draft().unwrap();
            prop_assert_eq!(&rebuilt.payload, &payload);
            prop_assert_eq!(rebuilt.message_type, "job.event");
            let events = parse_events(text);
            prop_assert_eq!(events.len(), 1);
            let (id, event, data) = &events[0];
            let expected_id = seq.to_string();
            prop_assert_eq!(id.as_deref(), Some(expected_id.as_str()));
            prop_assert_eq!(event, "job.event");
            let envelope: Value = serde_json::from_str(data).unwrap();
            prop_assert_eq!(&envelope["payload"], &payload);
            prop_assert_eq!(&envelope["event_seq"], &json!(seq));
            prop_assert_eq!(&envelope["session_id"], &json!("sess_x"));
        }

        #[test]
        fn any_session_id_and_message_id_are_written_as_json_strings(
            session in any::<String>(),
            message in proptest::option::of(any::<String>()),
            seq in any::<u64>(),
        ) {
            let session_id = SessionId::from_client(&session);
            let mut draft = EventDraft::new("job.event", JobId::from_client("job_\"y"), None, json!(1));
            draft.message_id = message.as_deref().map(crate::ids::MessageId::from_client);
            let encoded = encode_job_event(&session_id, seq, &draft);
            let envelope: Value = serde_json::from_slice(&encoded.frame[encoded.envelope.clone()]).unwrap();
            prop_assert_eq!(&envelope["session_id"], &json!(session));
            prop_assert_eq!(&envelope["event_seq"], &json!(seq));
            prop_assert_eq!(&envelope["arcp"], &json!("1.1"));
            prop_assert_eq!(&envelope["job_id"], &json!("job_\"y"));
            match message {
                Some(message) => prop_assert_eq!(&envelope["id"], &json!(message)),
                None => prop_assert_eq!(envelope["id"].as_str().map(str::len), Some(26)),
            }
        }

        #[test]
        fn unsequenced_events_carry_no_id(payload in arbitrary_json()) {
            let data = serde_json::to_vec(&payload).unwrap();
            let frame = encode_unsequenced_event("session.welcome", &data);
            let events = parse_events(std::str::from_utf8(&frame).unwrap());
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(events[0].0.clone(), None);
            let parsed: Value = serde_json::from_str(&events[0].2).unwrap();
            prop_assert_eq!(parsed, payload);
        }
    }
}
