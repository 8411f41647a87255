//! Cluster mode on Redis (issue 12), with real components only: one
//! `redis-server` (AOF on), three `arcp-gateway` processes started with
//! `--redis-url`, and nginx doing plain round robin over them
//! (`support/cluster.rs`). Any node serves any request of any session; these
//! tests check the promises that must survive that: exactly-once, byte-
//! identical replay across nodes and reconnects, one stream per session
//! cluster-wide, jobs reachable (cancel, idempotency, list, get, ack) from any
//! node, a lost node's job ending with one visible terminal, and Redis
//! trouble answered with retryable 503s and recovered from without a gap.
//!
//! Each test starts its own cluster (about a second): tests run in
//! parallel and some of them kill nodes or Redis.

mod any_node;
mod drops;
mod node_loss;
mod reaper;
mod redis_trouble;
mod startup;

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::cluster::{Api, RawEvent, RawStream};
use crate::support::ALICE_TOKEN;

/// A ticker job's submission body.
fn ticker(count: u64, interval_ms: u64) -> Value {
    json!({"agent": "ticker", "input": {"count": count, "interval_ms": interval_ms}})
}

/// Everything one client received from a session, across reconnects, with
/// the newest resume token. Every event must extend the sequence by exactly
/// one: a gap or a duplicate fails the test where it happens.
struct Received {
    events: Vec<RawEvent>,
    token: String,
}

impl Received {
    fn new(token: &str) -> Received {
        Received {
            events: Vec::new(),
            token: token.to_owned(),
        }
    }

    /// The newest `event_seq` received (0 before any).
    fn cursor(&self) -> u64 {
        self.events.last().map_or(0, |event| event.seq)
    }

    fn take(&mut self, event: RawEvent) {
        let expected = self.cursor() + 1;
        assert_eq!(
            event.seq,
            expected,
            "event_seq {} arrived after {}: a gap or a duplicate ({})",
            event.seq,
            self.cursor(),
            String::from_utf8_lossy(&event.raw)
        );
        self.events.push(event);
    }

    fn take_all(&mut self, events: Vec<RawEvent>) {
        for event in events {
            self.take(event);
        }
    }

    /// Keeps the token from the stream's welcome, or from its `Set-Cookie`
    /// when the welcome was cut off (what a browser would have).
    fn note_token(&mut self, stream: &RawStream) {
        let cookie = stream.cookie_token();
        if let Some(welcome) = &stream.welcome {
            if let Some(cookie) = &cookie {
                assert_eq!(
                    cookie, &welcome.resume_token,
                    "the cookie and the welcome carry the same token"
                );
            }
            self.token = welcome.resume_token.clone();
        } else if let Some(cookie) = cookie {
            self.token = cookie;
        }
    }

    fn has_terminal(&self, job_id: &str) -> bool {
        self.events
            .iter()
            .any(|event| event.is_terminal() && event.job_id() == Some(job_id))
    }

    fn of_job(&self, job_id: &str) -> Vec<&RawEvent> {
        self.events
            .iter()
            .filter(|event| event.job_id() == Some(job_id))
            .collect()
    }
}

/// Opens the session's stream with the api token and no cursor (everything
/// retained) and reads through `through`.
async fn full_replay(api: &Api, session_id: &str, through: u64) -> Vec<RawEvent> {
    let mut stream = api.stream_with_bearer(session_id, ALICE_TOKEN, None).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.read_welcome().await;
    if through == 0 {
        return Vec::new();
    }
    stream.events_until(|event| event.seq >= through).await
}

/// The events are exactly `1..=n`, each with the same bytes as in `replay`.
fn assert_identical_to_replay(received: &[RawEvent], replay: &[RawEvent]) {
    let seqs: Vec<u64> = received.iter().map(|event| event.seq).collect();
    let expected: Vec<u64> = (1..=received.len() as u64).collect();
    assert_eq!(seqs, expected, "received events are exactly 1..=n");
    assert_eq!(
        replay.len(),
        received.len(),
        "the replay holds as many events as were received"
    );
    for (live, replayed) in received.iter().zip(replay) {
        assert_eq!(live.seq, replayed.seq);
        assert!(
            live.raw == replayed.raw,
            "event {} differs between delivery and replay:\n{}\n{}",
            live.seq,
            String::from_utf8_lossy(&live.raw),
            String::from_utf8_lossy(&replayed.raw)
        );
    }
}

/// A ticker's events: progress `current` 1, 2, … with no gap or repeat, then
/// exactly one terminal, last. Returns the terminal.
fn assert_ticker_story<'a>(events: &[&'a RawEvent]) -> &'a RawEvent {
    let (terminal, progress) = events.split_last().expect("the job has events");
    assert!(
        terminal.is_terminal(),
        "the job's last event is its terminal: {}",
        String::from_utf8_lossy(&terminal.raw)
    );
    for (index, event) in progress.iter().enumerate() {
        assert!(
            !event.is_terminal(),
            "a terminal before the job's last event: {}",
            String::from_utf8_lossy(&event.raw)
        );
        assert_eq!(
            event.data["payload"]["body"]["current"],
            index as u64 + 1,
            "ticks arrive once each, in order: {}",
            String::from_utf8_lossy(&event.raw)
        );
    }
    terminal
}

/// Counts each job's terminal events in `events`.
fn terminals_per_job(events: &[RawEvent]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in events.iter().filter(|event| event.is_terminal()) {
        let job = event.job_id().expect("a terminal names its job").to_owned();
        *counts.entry(job).or_insert(0) += 1;
    }
    counts
}

/// Short pause used by polling loops.
const POLL: Duration = Duration::from_millis(100);
