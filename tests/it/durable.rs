//! The durable store under real crashes: the real binary with `--data-dir`,
//! killed with SIGKILL mid-stream, restarted on the same directory.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

const ALICE_TOKEN_FLAG: &str = "alice:alice-api-token-0001";

async fn start(dir: &std::path::Path) -> GatewayProcess {
    start_with(dir, &[]).await
}

async fn start_with(dir: &std::path::Path, extra: &[&str]) -> GatewayProcess {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec![
        "--data-dir",
        dir,
        "--token",
        ALICE_TOKEN_FLAG,
        "--heartbeat-interval-sec",
        "1",
    ];
    args.extend_from_slice(extra);
    GatewayProcess::start(&args).await
}

/// Room for every event the SIGKILL torture appends (8 rounds of up to
/// 60,000), so that how far its short reads fall behind fast appends never
/// decides the outcome: with the default limits a fast machine evicts the
/// reader's cursor (an honest 410, but not what the test is about).
const ROOM_FOR_THE_TORTURE: [&str; 8] = [
    "--max-events-per-session",
    "1000000",
    "--max-bytes-per-session",
    "1073741824",
    "--max-retained-bytes-per-principal",
    "1073741824",
    "--max-retained-bytes",
    "2147483648",
];

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn open_stream(base: &str, sid: &str, credential: &str, cursor: Option<u64>) -> SseStream {
    let mut request = client()
        .get(format!("{base}/v1/sessions/{sid}/events"))
        .bearer_auth(credential);
    if let Some(cursor) = cursor {
        request = request.header("Last-Event-ID", cursor.to_string());
    }
    SseStream::from_response(within("stream", request.send()).await.unwrap()).await
}

async fn get(base: &str, path: &str) -> Value {
    let response = within(
        "GET",
        client()
            .get(format!("{base}{path}"))
            .bearer_auth(ALICE_TOKEN)
            .send(),
    )
    .await
    .unwrap();
    response.json().await.unwrap_or(Value::Null)
}

async fn post(base: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let response = within(
        "POST",
        client()
            .post(format!("{base}{path}"))
            .bearer_auth(ALICE_TOKEN)
            .json(&body)
            .send(),
    )
    .await
    .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_client_resumes_across_a_sigkill_with_nothing_lost_and_the_truth_about_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(dir.path()).await;
    let (status, welcome) = post(&gateway.base, "/v1/sessions", Value::Null).await;
    assert_eq!(status, StatusCode::CREATED);
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let (_, accepted) = post(
        &gateway.base,
        &format!("/v1/sessions/{sid}/jobs"),
        json!({"agent": "ticker", "input": {"count": 500, "interval_ms": 10}}),
    )
    .await;
    let job = accepted["payload"]["job_id"].as_str().unwrap().to_owned();

    let mut stream = open_stream(
        &gateway.base,
        &sid,
        welcome["payload"]["resume_token"].as_str().unwrap(),
        None,
    )
    .await;
    let token = stream.welcome().await.resume_token;
    let mut received = Vec::new();
    for _ in 0..40 {
        received.push(stream.next_event().await.unwrap());
    }
    assert_contiguous(&received, 1, 40);
    gateway.kill().await;
    drop(stream);

    let gateway = start(dir.path()).await;
    // The old token still works: the secret lives in the data dir.
    let mut resumed = open_stream(&gateway.base, &sid, &token, Some(40)).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.error);
    resumed.welcome().await;
    let rest = resumed.events_until(is_terminal_for(&job)).await;
    let last = rest.last().unwrap();
    assert_contiguous(&rest, 41, last.seq());
    assert_eq!(last.event, "job.error");
    assert_eq!(last.data["payload"]["code"], "INTERNAL_ERROR");
    assert_eq!(last.data["payload"]["retryable"], true);
    assert_eq!(last.data["payload"]["message"], "gateway restarted");

    // Everything the client had been sent is still there, byte for byte.
    drop(resumed);
    let mut replay = open_stream(&gateway.base, &sid, ALICE_TOKEN, Some(0)).await;
    replay.welcome().await;
    let all = replay.events_until(is_terminal_for(&job)).await;
    assert_eq!(
        &all[..40],
        &received[..],
        "the events sent before the crash are unchanged"
    );
    let terminals = all.iter().filter(|e| e.event != "job.event").count();
    assert_eq!(terminals, 1, "the restart error is written exactly once");

    // A second restart does not add another terminal event.
    drop(replay);
    gateway.kill().await;
    let gateway = start(dir.path()).await;
    let status = get(&gateway.base, &format!("/v1/sessions/{sid}/jobs/{job}")).await;
    assert_eq!(status["payload"]["status"], "error");
    assert_eq!(status["payload"]["last_event_seq"], last.seq());

    // And a new job runs normally, continuing the same sequence.
    let (status, accepted) = post(
        &gateway.base,
        &format!("/v1/sessions/{sid}/jobs"),
        json!({"agent": "ticker", "input": {"count": 3, "interval_ms": 0}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let next = accepted["payload"]["job_id"].as_str().unwrap().to_owned();
    let mut stream = open_stream(&gateway.base, &sid, ALICE_TOKEN, Some(last.seq())).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&next)).await;
    assert_contiguous(&events, last.seq() + 1, last.seq() + 4);
    assert_eq!(events.last().unwrap().event, "job.result");

    // After one more restart each job still reports its own last event,
    // not the session's newest.
    drop(stream);
    gateway.kill().await;
    let gateway = start(dir.path()).await;
    let first = get(&gateway.base, &format!("/v1/sessions/{sid}/jobs/{job}")).await;
    assert_eq!(first["payload"]["last_event_seq"], last.seq());
    let second = get(&gateway.base, &format!("/v1/sessions/{sid}/jobs/{next}")).await;
    assert_eq!(second["payload"]["last_event_seq"], last.seq() + 4);
    assert_eq!(second["payload"]["status"], "success");

    // The store is private to the gateway's user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("arcp-gateway.sqlite3"), 0o600);
        assert_eq!(mode("token-secret"), 0o600);
    }
}

#[tokio::test]
async fn repeated_sigkills_during_heavy_appends_never_lose_a_delivered_event_or_open_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = start_with(dir.path(), &ROOM_FOR_THE_TORTURE).await;
    let (_, welcome) = post(&gateway.base, "/v1/sessions", Value::Null).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    // Every event any client was ever sent, by seq.
    let mut delivered: BTreeMap<u64, SseEvent> = BTreeMap::new();
    let mut cursor = 0;
    for round in 0..8u64 {
        for _ in 0..3 {
            let (status, _) = post(
                &gateway.base,
                &format!("/v1/sessions/{sid}/jobs"),
                json!({"agent": "ticker", "input": {"count": 20000, "interval_ms": 0}}),
            )
            .await;
            assert_eq!(status, StatusCode::ACCEPTED);
        }
        let mut stream = open_stream(&gateway.base, &sid, ALICE_TOKEN, Some(cursor)).await;
        assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
        stream.welcome().await;
        // Read for a pseudo-random while, then kill the gateway mid-flow.
        let read_for = Duration::from_millis(80 + (round * 37) % 170);
        let _ = tokio::time::timeout(read_for, async {
            while let Some(event) = stream.next_event().await {
                if event.event == "session.ping" {
                    continue;
                }
                cursor = event.seq();
                delivered.insert(event.seq(), event);
            }
        })
        .await;
        gateway.kill().await;
        drop(stream);
        gateway = start_with(dir.path(), &ROOM_FOR_THE_TORTURE).await;

        // The log is gap-free and holds every delivered event unchanged.
        let status = get(&gateway.base, &format!("/v1/sessions/{sid}")).await;
        let floor = status["payload"]["floor"].as_u64().unwrap();
        let newest = status["payload"]["last_event_seq"].as_u64().unwrap();
        assert!(
            newest >= cursor,
            "round {round}: the log lost delivered events ({newest} < {cursor})"
        );
        let mut check = open_stream(&gateway.base, &sid, ALICE_TOKEN, Some(floor)).await;
        check.welcome().await;
        let mut expected = floor + 1;
        while expected <= newest {
            let event = check.next_event().await.expect("replay");
            if event.event == "session.ping" {
                continue;
            }
            assert_eq!(event.seq(), expected, "round {round}: gap or duplicate");
            if let Some(seen) = delivered.get(&expected) {
                assert_eq!(seen, &event, "round {round}: a delivered event changed");
            }
            expected += 1;
        }
    }
    assert!(
        delivered.len() > 1000,
        "the torture actually delivered events ({})",
        delivered.len()
    );
}
