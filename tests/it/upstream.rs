//! Upstream ARCP runtimes whose connection drops mid-job: the official
//! runtime (`tests/it/agents/arcp_ticker.py` on the Python SDK 1.1.3) behind
//! a loopback TCP proxy that the test cuts. The gateway resumes the upstream
//! session, says so in the job's log before the resumed events, and the job
//! ends with the runtime's real result; or, when the runtime is gone, with
//! an explicit retryable `INTERNAL_ERROR` (see also
//! `websocket::a_cancel_reaches_the_upstream_runtime_and_a_drop_is_an_explicit_error`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use crate::support::{
    assert_contiguous, is_terminal_for, within, SseEvent, TestServer, Welcome, ALICE_TOKEN,
};
use crate::websocket::{ticker_runtime, upstream_agent};

/// A TCP proxy on loopback whose open connections can be cut at once.
struct CuttableProxy {
    port: u16,
    open: Arc<Mutex<Vec<AbortHandle>>>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(target: u16) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let open = open.clone();
            let accepted = accepted.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let relay = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    open.lock().unwrap().push(relay.abort_handle());
                }
            }
        });
        CuttableProxy {
            port,
            open,
            accepted,
            task,
        }
    }

    /// Closes every connection open now (both sides see it end).
    fn cut(&self) {
        for relay in self.open.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// The official ticker runtime behind a [`CuttableProxy`], a gateway whose
/// `py-ticker` agent reaches it through the proxy, and a session there.
struct Upstream {
    /// Where the runtime records the cancels it received.
    cancelled: std::path::PathBuf,
    runtime: crate::websocket::OfficialRuntime,
    proxy: CuttableProxy,
    server: TestServer,
    session: Welcome,
    sid: String,
    _dir: tempfile::TempDir,
}

impl Upstream {
    async fn start() -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let cancelled = dir.path().join("cancelled");
        let runtime = ticker_runtime("upstream-T0ken", &cancelled).await;
        let proxy = CuttableProxy::start(runtime.port).await;
        let agents = upstream_agent("py-ticker", "ticker", proxy.port, "upstream-T0ken");
        let server = TestServer::with_config(|config| config.agents = agents);
        let session = server.create_session(ALICE_TOKEN).await;
        let sid = session.session_id.clone();
        Upstream {
            cancelled,
            runtime,
            proxy,
            server,
            session,
            sid,
            _dir: dir,
        }
    }

    /// Submits a `py-ticker` job of `count` ticks every `interval_ms`.
    async fn submit(&self, count: u64, interval_ms: u64) -> String {
        self.server
            .submit_ok(
                &self.sid,
                ALICE_TOKEN,
                json!({"agent": "py-ticker", "input": {"count": count, "interval_ms": interval_ms}}),
            )
            .await
    }

    /// A long job, once its first two events are in the gateway's log.
    async fn running_job(&self) -> String {
        let job = self.submit(1000, 50).await;
        self.server
            .wait_for_job(&self.sid, &job, ALICE_TOKEN, |job| {
                job["last_event_seq"].as_u64() >= Some(2)
            })
            .await;
        job
    }
}

fn is_progress(event: &SseEvent) -> bool {
    event.event == "job.event" && event.data["payload"]["kind"] == "progress"
}

fn is_warning(event: &SseEvent) -> bool {
    event.event == "job.event"
        && event.data["payload"]["kind"] == "log"
        && event.data["payload"]["body"]["level"] == "warn"
}

fn tick(event: &SseEvent) -> u64 {
    event.data["payload"]["body"]["current"]
        .as_u64()
        .expect("a progress count")
}

#[tokio::test]
async fn an_upstream_drop_is_resumed_with_an_explicit_warning_before_the_resumed_events() {
    let upstream = Upstream::start().await;
    let (server, proxy, sid) = (&upstream.server, &upstream.proxy, &upstream.sid);
    let session = &upstream.session;
    let job = upstream.submit(20, 150).await;

    // Follow over SSE until a few ticks arrived, then cut the upstream link
    // and the SSE stream alike.
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let before = stream.events_until(|event| event.seq() >= 3).await;
    proxy.cut();
    drop(stream);

    // Resume over SSE: exactly the rest of the job, through its terminal.
    let last = before.last().unwrap().seq();
    let mut resumed = server.stream(sid, &session.resume_token, Some(last)).await;
    assert_eq!(resumed.status, StatusCode::OK);
    resumed.welcome().await;
    let rest = resumed.events_until(is_terminal_for(&job)).await;
    let events: Vec<SseEvent> = before.into_iter().chain(rest).collect();
    assert_contiguous(&events, 1, events.len() as u64);
    // More than one attempt if the runtime had not yet noticed the drop.
    assert!(proxy.accepted() >= 2, "a reconnect through the proxy");

    let terminal = events.last().unwrap();
    assert_eq!(terminal.event, "job.result", "{:?}", terminal.data);
    assert_eq!(
        terminal.data["payload"]["result"],
        json!({"ticks": 20}),
        "the runtime's real result"
    );

    // One warning, saying what happened, and the resumed ticks after it.
    let warnings: Vec<usize> = (0..events.len())
        .filter(|&i| is_warning(&events[i]))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per drop");
    let at = warnings[0];
    let message = events[at].data["payload"]["body"]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("py-ticker") || message.contains("ticker"),
        "{message}"
    );
    assert!(message.contains("dropped at"), "{message}");
    assert!(message.contains("may be missing"), "{message}");
    // Ticks before the warning run 1..=k with no gap, those after it run on
    // to 20 with no gap: any tick lost is lost exactly where the warning is,
    // and none is repeated.
    let ticks_before: Vec<u64> = events[..at]
        .iter()
        .filter(|e| is_progress(e))
        .map(tick)
        .collect();
    let ticks_after: Vec<u64> = events[at..]
        .iter()
        .filter(|e| is_progress(e))
        .map(tick)
        .collect();
    let k = *ticks_before.last().expect("ticks before the drop");
    assert_eq!(ticks_before, (1..=k).collect::<Vec<u64>>());
    let first_after = *ticks_after.first().expect("ticks after the resume");
    assert!(first_after > k, "{ticks_before:?} then {ticks_after:?}");
    assert_eq!(ticks_after, (first_after..=20).collect::<Vec<u64>>());
    eprintln!(
        "upstream resume: ticks 1..={k} before the drop, {first_after}..=20 after ({} lost)",
        first_after - k - 1
    );
}

#[tokio::test]
async fn a_cancel_during_an_upstream_reconnect_still_reaches_the_runtime() {
    let upstream = Upstream::start().await;
    let (server, proxy, sid) = (&upstream.server, &upstream.proxy, &upstream.sid);
    let cancelled = &upstream.cancelled;
    let job = upstream.running_job().await;
    proxy.cut();
    let (status, _) = server.cancel(sid, &job, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let ended = server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "cancelled")
        .await;
    assert_eq!(ended["terminal"]["code"], "CANCELLED", "{ended}");
    within("the upstream runtime to see the cancel", async {
        while !std::fs::read_to_string(cancelled).is_ok_and(|text| text.contains("cancelled")) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        proxy.accepted() >= 2,
        "the cancel went over a resumed session"
    );
}

#[tokio::test]
async fn a_runtime_that_cannot_resume_the_session_ends_the_job_explicitly() {
    // The runtime restarts behind the proxy: the session is gone, so the
    // resume is refused and the job ends with a retryable INTERNAL_ERROR.
    let upstream = Upstream::start().await;
    let job = upstream.running_job().await;
    let Upstream {
        cancelled,
        runtime,
        proxy,
        server,
        sid,
        ..
    } = upstream;
    let sid = &sid;
    let port = runtime.port;
    drop(runtime);
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _fresh = crate::websocket::ticker_runtime_on(port, "upstream-T0ken", &cancelled).await;
    let status = server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "error")
        .await;
    let terminal = &status["terminal"];
    assert_eq!(terminal["code"], "INTERNAL_ERROR", "{status}");
    assert_eq!(terminal["retryable"], true);
    let message = terminal["message"].as_str().unwrap();
    assert!(message.contains("could not be resumed"), "{message}");
    assert!(proxy.accepted() >= 2, "a resume was attempted");
    // No warning was logged: the resume never happened.
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert!(
        !events.iter().any(is_warning),
        "{:?}",
        events.iter().map(|e| &e.data).collect::<Vec<&Value>>()
    );
}

#[tokio::test]
async fn a_second_drop_is_resumed_too_and_nothing_is_repeated() {
    let upstream = Upstream::start().await;
    let (server, proxy, sid) = (&upstream.server, &upstream.proxy, &upstream.sid);
    let job = upstream.submit(30, 150).await;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let mut events = stream.events_until(|event| event.seq() >= 3).await;
    proxy.cut();
    // After the first resume, a few resumed ticks, then a second cut.
    events.extend(stream.events_until(is_warning).await);
    events.extend(stream.events_until(is_progress).await);
    events.extend(stream.events_until(is_progress).await);
    proxy.cut();
    events.extend(stream.events_until(is_terminal_for(&job)).await);
    assert_contiguous(&events, 1, events.len() as u64);
    assert!(proxy.accepted() >= 3, "two reconnects through the proxy");
    let terminal = events.last().unwrap();
    assert_eq!(terminal.event, "job.result", "{:?}", terminal.data);
    assert_eq!(terminal.data["payload"]["result"], json!({"ticks": 30}));
    assert_eq!(events.iter().filter(|e| is_warning(e)).count(), 2);
    // Between warnings the ticks run without a gap; across the whole job
    // they only go up (nothing repeated).
    let mut segments: Vec<Vec<u64>> = vec![Vec::new()];
    for event in &events {
        if is_warning(event) {
            segments.push(Vec::new());
        } else if is_progress(event) {
            segments.last_mut().unwrap().push(tick(event));
        }
    }
    let all: Vec<u64> = segments.iter().flatten().copied().collect();
    assert!(
        all.windows(2).all(|pair| pair[0] < pair[1]),
        "ticks only go up: {segments:?}"
    );
    for segment in &segments {
        if let (Some(first), Some(last)) = (segment.first(), segment.last()) {
            assert_eq!(
                segment,
                &(*first..=*last).collect::<Vec<u64>>(),
                "{segments:?}"
            );
        }
    }
    assert_eq!(all.last(), Some(&30), "{segments:?}");
    eprintln!("upstream resume twice: ticks {segments:?}");
}
