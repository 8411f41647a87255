//! [`EventStream`]: one attached stream reading its session's log, whoever
//! writes it (the HTTP/1.1 fast path, the hyper pump, the WebSocket).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::{encode_unsequenced_event, StreamPlan, FIRST_READ_LIMIT, KEEPALIVE, STREAM_READ_LIMIT};
use crate::event_log::{LiveTap, LogEntry, ReadLimit, StreamKick};
use crate::http::direct::DirectTap;
use crate::ids::EventSeq;
use crate::metrics::{Metrics, OpenGuard, StreamEnd};
use crate::protocol::Envelope;
use crate::session::{Session, StreamId};
use crate::state::{LogReader, LogWatch, OpError, Shutdown};
use crate::storage::StorageError;

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
    /// them within [`FINAL_FRAME_WAIT`](super::FINAL_FRAME_WAIT), without interruption, then end.
    Farewell(Bytes),
    /// Nothing more; end the response.
    End,
}

/// One attached stream, read by whoever writes the response: the
/// connection's own task on the HTTP/1.1 fast path
/// ([`crate::http::h1_stream`]), or a pump task feeding [`SseBody`](super::SseBody) under
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
    pub(super) initial: Option<Bytes>,
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
