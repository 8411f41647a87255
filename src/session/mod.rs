//! Sessions (§6): who owns them, which resume-token generations still work,
//! which stream is attached, and when the resume window runs out.
//!
//! A session outlives its connections. The resume window (§6.3) counts from
//! the moment its last stream detached (or from creation, if none ever
//! attached); a session with an attached stream never expires.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::event_log::StreamKick;
use crate::ids::{EventSeq, JobId, Principal, SessionId};

mod record;

pub use record::SessionRow;

/// Why a session refused an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// The presented token generation is older than one already used.
    GenerationSuperseded,
    /// The resume window passed while no stream was attached.
    WindowExpired,
    /// The session was closed by its client.
    Closed,
}

/// An attached stream's identity within its session.
pub type StreamId = u64;

pub struct Session {
    pub id: SessionId,
    pub principal: Principal,
    /// The negotiated feature set: hello ∩ runtime (§6.2).
    pub features: Vec<String>,
    /// `features` includes `ack` (§6.5): read on every append, so kept
    /// apart from the list.
    acks: bool,
    pub created_at: String,
    state: Mutex<SessionState>,
    /// The currently attached stream, if any. A stream whose id is no longer
    /// here has been replaced and must end.
    attached_stream: watch::Sender<Option<StreamId>>,
    /// Wakes the streams waiting on the session's log (set by the first
    /// one), so they see a change of `attached_stream` or a shutdown.
    stream_kick: OnceLock<StreamKick>,
}

struct SessionState {
    /// The newest generation handed out in a welcome.
    issued_generation: u64,
    /// The newest generation a client has presented. Tokens below it were
    /// superseded by rotation.
    used_generation: u64,
    next_stream_id: StreamId,
    /// When the last stream detached; `None` while a stream is attached.
    detached_since: Option<Instant>,
    closed: bool,
    /// The highest `last_processed_seq` acknowledged (§6.5), if any.
    acked_through: Option<EventSeq>,
    /// True while a back-pressure episode is open (§6.5).
    lagging: bool,
    /// Jobs of other sessions whose events this session receives (§7.6).
    subscriptions: BTreeSet<JobId>,
    /// When the client last answered or sent a heartbeat (§6.4).
    last_heartbeat_from_client: Option<Instant>,
    /// Cluster mode: a stream is attached on another node.
    attached_elsewhere: bool,
}

/// What every node of a cluster agrees on about a session, as a view is
/// refreshed from the shared store (`crate::cluster`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedFields {
    pub issued_generation: u64,
    pub used_generation: u64,
    pub closed: bool,
    pub acked_through: Option<EventSeq>,
    pub attached_elsewhere: bool,
}

/// What a caller gets when a welcome is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub generation: u64,
}

impl Session {
    pub fn new(
        id: SessionId,
        principal: Principal,
        features: Vec<String>,
        created_at: String,
    ) -> Self {
        let (attached_stream, _) = watch::channel(None);
        Session {
            id,
            principal,
            acks: features.iter().any(|feature| feature == "ack"),
            features,
            created_at,
            state: Mutex::new(SessionState {
                issued_generation: 0,
                used_generation: 0,
                next_stream_id: 1,
                detached_since: Some(Instant::now()),
                closed: false,
                acked_through: None,
                lagging: false,
                subscriptions: BTreeSet::new(),
                last_heartbeat_from_client: None,
                attached_elsewhere: false,
            }),
            attached_stream,
            stream_kick: OnceLock::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cluster mode: takes the shared store's view of the session. The
    /// resume window is the store's to keep (its keys expire), so a view
    /// that exists is within it.
    pub fn adopt_shared(&self, shared: SharedFields) {
        let mut state = self.state();
        state.issued_generation = shared.issued_generation;
        state.used_generation = shared.used_generation;
        state.closed = shared.closed;
        state.acked_through = shared.acked_through;
        state.attached_elsewhere = shared.attached_elsewhere;
        if state.detached_since.is_some() {
            state.detached_since = Some(Instant::now());
        }
    }

    /// Cluster mode: records a generation the shared store issued.
    pub fn issued_by_store(&self, generation: u64) -> Welcome {
        let mut state = self.state();
        state.issued_generation = state.issued_generation.max(generation);
        Welcome { generation }
    }

    /// Cluster mode: attaches stream `stream_id` (numbered by the node)
    /// after the shared store made it the session's one stream and issued
    /// `generation`; a local stream attached before ends.
    pub fn attach_shared(&self, stream_id: StreamId, generation: u64) -> Welcome {
        let mut state = self.state();
        state.issued_generation = state.issued_generation.max(generation);
        state.detached_since = None;
        state.closed = false;
        state.attached_elsewhere = false;
        drop(state);
        self.set_attached(Some(stream_id));
        Welcome { generation }
    }

    /// Cluster mode: the shared store says stream `stream_id` was replaced
    /// (by a stream on another node) or its session closed; it ends.
    pub fn end_stream(&self, stream_id: StreamId, closed: bool) {
        let mut state = self.state();
        if closed {
            state.closed = true;
        }
        if *self.attached_stream.borrow() != Some(stream_id) {
            return;
        }
        state.detached_since = Some(Instant::now());
        drop(state);
        self.set_attached(None);
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Issues the first welcome of a new session.
    pub fn welcome_new(&self) -> Welcome {
        let mut state = self.state();
        state.issued_generation += 1;
        Welcome {
            generation: state.issued_generation,
        }
    }

    /// Checks that a token generation is still usable, without consuming it
    /// (used by plain requests that carry a resume token as credential).
    /// `reattach` allows a closed session, which a resume token may reopen.
    pub fn check_generation(
        &self,
        generation: u64,
        window: Duration,
        reattach: bool,
    ) -> Result<(), SessionError> {
        let state = self.state();
        if reattach {
            check_window(&state, window)?;
        } else {
            check_usable(&state, window)?;
        }
        if generation < state.used_generation {
            return Err(SessionError::GenerationSuperseded);
        }
        Ok(())
    }

    /// `session.resume` without a stream (§6.3): consumes `presented` (older
    /// generations stop working), issues a new generation and restarts the
    /// resume window so the client has time to attach.
    pub fn resume(
        &self,
        presented: Option<u64>,
        window: Duration,
    ) -> Result<Welcome, SessionError> {
        let mut state = self.state();
        check_reopenable(&state, window, presented)?;
        consume_generation(&mut state, presented)?;
        state.closed = false;
        if state.detached_since.is_some() {
            state.detached_since = Some(Instant::now());
        }
        state.issued_generation += 1;
        Ok(Welcome {
            generation: state.issued_generation,
        })
    }

    /// Attaches a new stream, replacing (and ending) any attached one.
    pub fn attach_stream(
        &self,
        presented: Option<u64>,
        window: Duration,
    ) -> Result<(StreamId, Welcome), SessionError> {
        let mut state = self.state();
        // A closed session is reopened only by an explicit `session.resume`
        // (POST /v1/sessions/resume), never by a browser's automatic reconnect.
        check_usable(&state, window)?;
        consume_generation(&mut state, presented)?;
        state.issued_generation += 1;
        let stream_id = state.next_stream_id;
        state.next_stream_id += 1;
        state.detached_since = None;
        let welcome = Welcome {
            generation: state.issued_generation,
        };
        drop(state);
        self.set_attached(Some(stream_id));
        Ok((stream_id, welcome))
    }

    /// Detaches a stream that ended. A stream that was already replaced
    /// changes nothing.
    pub fn detach_stream(&self, stream_id: StreamId) {
        let mut state = self.state();
        if *self.attached_stream.borrow() != Some(stream_id) {
            return;
        }
        state.detached_since = Some(Instant::now());
        drop(state);
        self.set_attached(None);
    }

    pub fn stream_attached(&self) -> bool {
        self.attached_stream.borrow().is_some() || self.state().attached_elsewhere
    }

    /// Changes the attached stream and wakes the streams waiting on the
    /// session's log, so the one replaced ends now.
    fn set_attached(&self, stream_id: Option<StreamId>) {
        self.attached_stream.send_replace(stream_id);
        self.kick_streams();
    }

    /// Wakes the session's streams to look again at why they might stop.
    pub fn kick_streams(&self) {
        if let Some(kick) = self.stream_kick.get() {
            kick.kick();
        }
    }

    /// Keeps `kick` as the way to wake this session's streams (its log's
    /// watch; the first stream to open gives it).
    pub fn set_stream_kick(&self, kick: impl FnOnce() -> StreamKick) {
        let _ = self.stream_kick.get_or_init(kick);
    }

    /// A receiver that changes whenever the attached stream changes.
    pub fn watch_attached_stream(&self) -> watch::Receiver<Option<StreamId>> {
        self.attached_stream.subscribe()
    }

    /// Closes the session (§6.7): its stream ends and the resume window
    /// starts now. Jobs are not affected. Until the window passes, a resume
    /// with a valid token reopens it.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.detached_since = Some(Instant::now());
        drop(state);
        self.set_attached(None);
    }

    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Records an acknowledgement (§6.5). Returns the new high-water mark;
    /// an older acknowledgement changes nothing.
    pub fn acknowledge(
        &self,
        last_processed_seq: EventSeq,
        lag_threshold: u64,
        newest: EventSeq,
    ) -> EventSeq {
        let mut state = self.state();
        let acked = state
            .acked_through
            .map_or(last_processed_seq, |acked| acked.max(last_processed_seq));
        state.acked_through = Some(acked);
        // The episode closes once the consumer is back within half the
        // threshold, so a client hovering at the limit is not flooded.
        if state.lagging && newest.saturating_sub(acked) <= lag_threshold / 2 {
            state.lagging = false;
        }
        acked
    }

    pub fn acked_through(&self) -> Option<EventSeq> {
        self.state().acked_through
    }

    /// Called after an event was appended at `seq`. Returns the lag when
    /// this append opens a back-pressure episode (§6.5): the session
    /// negotiated `ack`, has acknowledged at least once, and its consumer is
    /// more than `lag_threshold` events behind.
    pub fn note_append(&self, seq: EventSeq, lag_threshold: u64) -> Option<u64> {
        if !self.acks {
            return None;
        }
        let mut state = self.state();
        let acked = state.acked_through?;
        let lag = seq.saturating_sub(acked);
        if state.lagging || lag <= lag_threshold {
            return None;
        }
        state.lagging = true;
        Some(lag)
    }

    /// Adds a subscription; false when it already existed.
    pub fn add_subscription(&self, job_id: &JobId) -> bool {
        self.state().subscriptions.insert(job_id.clone())
    }

    /// Removes a subscription; false when there was none.
    pub fn remove_subscription(&self, job_id: &JobId) -> bool {
        self.state().subscriptions.remove(job_id)
    }

    pub fn subscriptions(&self) -> Vec<JobId> {
        self.state().subscriptions.iter().cloned().collect()
    }

    /// Records that the client spoke on the heartbeat channel (§6.4).
    pub fn heard_from_client(&self) {
        self.state().last_heartbeat_from_client = Some(Instant::now());
    }

    /// True once the resume window has passed with no stream attached.
    pub fn window_expired(&self, window: Duration, now: Instant) -> bool {
        let state = self.state();
        match state.detached_since {
            Some(since) => now.saturating_duration_since(since) > window,
            None => false,
        }
    }
}

/// Like [`check_usable`], but a closed session may be reopened by a resume
/// token within its window (§6.7: in-flight jobs "remain resumable within the
/// resume window"); an api token alone cannot reopen it.
fn check_reopenable(
    state: &SessionState,
    window: Duration,
    presented: Option<u64>,
) -> Result<(), SessionError> {
    if state.closed && presented.is_none() {
        return Err(SessionError::Closed);
    }
    check_window(state, window)
}

fn check_window(state: &SessionState, window: Duration) -> Result<(), SessionError> {
    if let Some(since) = state.detached_since {
        if since.elapsed() > window {
            return Err(SessionError::WindowExpired);
        }
    }
    Ok(())
}

fn check_usable(state: &SessionState, window: Duration) -> Result<(), SessionError> {
    if state.closed {
        return Err(SessionError::Closed);
    }
    check_window(state, window)
}

/// Rotation (§6.3): a presented generation may be reused until a newer one has
/// been presented (a client whose welcome was lost in transit can retry), but
/// never after.
fn consume_generation(
    state: &mut SessionState,
    presented: Option<u64>,
) -> Result<(), SessionError> {
    let Some(generation) = presented else {
        return Ok(());
    };
    if generation < state.used_generation {
        return Err(SessionError::GenerationSuperseded);
    }
    state.used_generation = generation;
    Ok(())
}

/// Every live session, by id.
#[derive(Default)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
}

impl SessionRegistry {
    fn map(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, session: Arc<Session>) {
        self.map().insert(session.id.clone(), session);
    }

    pub fn get(&self, session_id: &SessionId) -> Option<Arc<Session>> {
        self.map().get(session_id).cloned()
    }

    pub fn remove(&self, session_id: &SessionId) -> Option<Arc<Session>> {
        self.map().remove(session_id)
    }

    /// Open (not closed) sessions of a principal.
    pub fn count_open_for(&self, principal: &Principal) -> usize {
        self.map()
            .values()
            .filter(|s| &s.principal == principal && !s.is_closed())
            .count()
    }

    /// How many sessions are held: `(open, closed)`.
    pub fn count_by_state(&self) -> (usize, usize) {
        let map = self.map();
        let closed = map.values().filter(|s| s.is_closed()).count();
        (map.len() - closed, closed)
    }

    /// Wakes every session's streams (the gateway is shutting down).
    pub fn kick_all_streams(&self) {
        let sessions: Vec<Arc<Session>> = self.map().values().cloned().collect();
        for session in sessions {
            session.kick_streams();
        }
    }

    /// Removes and returns every session whose window has passed.
    pub fn remove_expired(&self, window: Duration, now: Instant) -> Vec<Arc<Session>> {
        let mut map = self.map();
        let expired: Vec<SessionId> = map
            .values()
            .filter(|session| session.window_expired(window, now))
            .map(|session| session.id.clone())
            .collect();
        expired.iter().filter_map(|id| map.remove(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new(
            SessionId::from_client("sess_1"),
            Principal::new("alice"),
            vec![],
            String::new(),
        )
    }

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn rotation_supersedes_older_generations_once_a_newer_one_is_used() {
        let session = session();
        let first = session.welcome_new();
        let (_, second) = session
            .attach_stream(Some(first.generation), WINDOW)
            .unwrap();
        // The first generation may be retried until the second is used.
        assert!(session
            .check_generation(first.generation, WINDOW, false)
            .is_ok());
        let (_, _third) = session
            .attach_stream(Some(second.generation), WINDOW)
            .unwrap();
        assert_eq!(
            session.attach_stream(Some(first.generation), WINDOW),
            Err(SessionError::GenerationSuperseded)
        );
    }

    #[test]
    fn a_new_stream_replaces_the_attached_one() {
        let session = session();
        let watcher = session.watch_attached_stream();
        let (first, _) = session.attach_stream(None, WINDOW).unwrap();
        let (second, _) = session.attach_stream(None, WINDOW).unwrap();
        assert_ne!(first, second);
        assert_eq!(*watcher.borrow(), Some(second));
        // The replaced stream ending does not detach the new one.
        session.detach_stream(first);
        assert!(!session.window_expired(Duration::ZERO, Instant::now() + WINDOW));
        session.detach_stream(second);
        assert!(session.window_expired(Duration::ZERO, Instant::now() + WINDOW));
    }
}
