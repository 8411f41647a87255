//! ARCP over WebSocket at `/arcp`: the unmodified official Python SDK
//! (`agentruntimecontrolprotocol==1.1.3`, installed by `scripts/test` into
//! `target/arcp-sdk-venv`) drives `examples/python_client.py` against the
//! gateway; a raw tokio-tungstenite client checks the limits and the
//! cross-binding cases the SDK cannot reach.
//!
//! These tests never skip: without the SDK they fail and say how to install
//! it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    assert_contiguous, is_terminal_for, within, TestServer, ALICE_TOKEN, BOB_TOKEN,
};

/// The Python of the virtual environment holding the official SDK.
pub(crate) fn sdk_python() -> PathBuf {
    let python = std::env::var_os("ARCP_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/arcp-sdk-venv/bin/python")
        });
    let importable = std::process::Command::new(&python)
        .args([
            "-c",
            "import arcp, sys; sys.exit(0 if arcp.IMPL_VERSION else 1)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !importable {
        let required = std::env::var("ARCP_E2E_REQUIRED").as_deref() == Ok("1");
        panic!(
            "the official ARCP Python SDK is not installed at {}.\n\
             Install it with `bash scripts/test` (which creates the virtual environment), or:\n  \
             python3 -m venv target/arcp-sdk-venv && \
             target/arcp-sdk-venv/bin/pip install agentruntimecontrolprotocol==1.1.3\n\
             (ARCP_SDK_PYTHON may name another interpreter that has it.)\n{}",
            python.display(),
            if required {
                "ARCP_E2E_REQUIRED=1 is set, and these tests are required."
            } else {
                "These tests never skip: a test that cannot run must not look green."
            }
        );
    }
    python
}

/// Runs one scenario of `examples/python_client.py` and returns what it printed.
async fn scenario(server: &TestServer, name: &str, token: &str) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/python_client.py");
    let url = format!("ws://{}/arcp", server.address);
    let child = tokio::process::Command::new(sdk_python())
        .arg(script)
        .args(["--url", &url, "--token", token, "--scenario", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("scenario {name} did not finish within 60 s"))
        .expect("python output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scenario {name} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| panic!("scenario {name} printed {stdout}"))
}

#[tokio::test]
async fn the_official_client_opens_submits_and_reads_the_result() {
    let server = TestServer::start();
    let outcome = scenario(&server, "basic", ALICE_TOKEN).await;
    assert_eq!(outcome["final_status"], "success", "{outcome}");
    assert_eq!(outcome["result"], json!({"hello": "world"}));
    assert!(outcome["completed_at"].is_string());
    assert_eq!(outcome["listed"], json!([outcome["job_id"]]));
    assert!(outcome["features"]
        .as_array()
        .unwrap()
        .contains(&json!("heartbeat")));
    // The session is the gateway's own: visible over REST with the api token.
    let (status, job) = server
        .get_json(
            &format!(
                "/v1/sessions/{}/jobs/{}",
                outcome["session_id"].as_str().unwrap(),
                outcome["job_id"].as_str().unwrap()
            ),
            ALICE_TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["payload"]["status"], "success");
}

#[tokio::test]
async fn the_official_client_resumes_after_a_drop_with_no_lost_or_repeated_event() {
    let server = TestServer::start();
    let outcome = scenario(&server, "resume", ALICE_TOKEN).await;
    assert_eq!(outcome["resumed_session_id"], outcome["session_id"]);
    assert_eq!(outcome["token_rotated"], true);
    let first: Vec<u64> = serde_json::from_value(outcome["first"].clone()).unwrap();
    let second: Vec<u64> = serde_json::from_value(outcome["second"].clone()).unwrap();
    let seen = outcome["last_seen_before_drop"].as_u64().unwrap();
    assert_eq!(first.last(), Some(&seen));
    // The job ran on while disconnected: the resumed connection replays
    // those events, then the live ones, then the terminal.
    let all: Vec<u64> = first.iter().chain(&second).copied().collect();
    let expected: Vec<u64> = (1..=41).collect();
    assert_eq!(all, expected, "every event once, in order: {outcome}");
    assert!(second.len() > 1 && second[0] == seen + 1);
    let terminal = &outcome["terminal"];
    assert_eq!(terminal["type"], "job.result");
    assert_eq!(terminal["event_seq"], 41);
    assert_eq!(terminal["payload"]["result"], json!({"ticks": 40}));
}

#[tokio::test]
async fn the_official_client_cancels_and_rest_keeps_the_spec_terminal() {
    let server = TestServer::start();
    let outcome = scenario(&server, "cancel", ALICE_TOKEN).await;
    assert_eq!(outcome["final_status"], "cancelled", "{outcome}");
    let types: Vec<&str> = outcome["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let accepted = types.iter().position(|t| *t == "job.accepted").unwrap();
    let first_event = types.iter().position(|t| *t == "job.event").unwrap();
    assert!(accepted < first_event, "job.accepted first: {types:?}");
    assert!(types.contains(&"job.cancelled"), "{types:?}");
    assert_eq!(types.last(), Some(&"job.result"), "{types:?}");
    // §7.4 on the HTTP binding: the same job's terminal is job.error CANCELLED.
    let sid = outcome["session_id"].as_str().unwrap();
    let job = outcome["job_id"].as_str().unwrap();
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(job)).await;
    let terminal = events.last().unwrap();
    assert_eq!(terminal.event, "job.error");
    assert_eq!(terminal.data["payload"]["code"], "CANCELLED");
    assert_eq!(terminal.data["payload"]["final_status"], "cancelled");
}

#[tokio::test]
async fn the_official_client_is_refused_with_a_bad_token() {
    let server = TestServer::start();
    let outcome = scenario(&server, "bad-token", ALICE_TOKEN).await;
    assert_eq!(outcome["refused"], true);
    assert_eq!(outcome["code"], "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_job_submitted_over_websocket_is_followed_over_sse() {
    let server = TestServer::start();
    let outcome = scenario(&server, "leave", ALICE_TOKEN).await;
    let sid = outcome["session_id"].as_str().unwrap();
    let job = outcome["job_id"].as_str().unwrap();
    let seen = outcome["last_event_seq"].as_u64().unwrap();
    let token = outcome["resume_token"].as_str().unwrap();
    let mut stream = server.stream(sid, token, Some(seen)).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(job)).await;
    assert_contiguous(&events, seen + 1, 31);
    assert_eq!(events.last().unwrap().event, "job.result");
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &TestServer) -> Client {
    let url = format!("ws://{}/arcp", server.address);
    within("websocket connect", tokio_tungstenite::connect_async(url))
        .await
        .expect("websocket handshake")
        .0
}

async fn send(client: &mut Client, envelope: Value) {
    within(
        "websocket send",
        client.send(Message::text(envelope.to_string())),
    )
    .await
    .expect("send");
}

/// The next text message as JSON; `None` once the socket closed.
async fn receive(client: &mut Client) -> Option<Value> {
    loop {
        match within("a websocket message", client.next()).await? {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(text.as_str()).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn hello(token: &str, resume: Option<Value>) -> Value {
    let mut payload = json!({"client": {"name": "raw", "version": "0"},
                             "auth": {"scheme": "bearer", "token": token}});
    if let Some(resume) = resume {
        payload["resume"] = resume;
    }
    json!({"arcp": "1.1", "id": "01JZ0000000000000000000001", "type": "session.hello", "payload": payload})
}

#[tokio::test]
async fn a_session_opened_over_rest_is_resumed_over_websocket() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 5, "interval_ms": 0}}),
        )
        .await;
    server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    let mut client = connect(&server).await;
    let resume =
        json!({"session_id": sid, "resume_token": session.resume_token, "last_event_seq": 2});
    send(&mut client, hello(ALICE_TOKEN, Some(resume))).await;
    let welcome = receive(&mut client).await.unwrap();
    assert_eq!(welcome["type"], "session.welcome", "{welcome}");
    assert_eq!(welcome["payload"]["session_id"], json!(sid));
    assert_ne!(
        welcome["payload"]["resume_token"],
        json!(session.resume_token)
    );
    let mut seqs = Vec::new();
    while let Some(message) = receive(&mut client).await {
        if let Some(seq) = message["event_seq"].as_u64() {
            seqs.push(seq);
        }
        if message["type"] == "job.result" {
            break;
        }
    }
    assert_eq!(seqs, vec![3, 4, 5, 6]);

    // Another principal's api token cannot take the session over.
    let mut intruder = connect(&server).await;
    let resume = json!({"session_id": sid, "resume_token": welcome["payload"]["resume_token"], "last_event_seq": 0});
    send(&mut intruder, hello(BOB_TOKEN, Some(resume))).await;
    let refused = receive(&mut intruder).await.unwrap();
    assert_eq!(refused["type"], "session.error");
    assert_eq!(refused["payload"]["code"], "PERMISSION_DENIED");
    assert!(
        receive(&mut intruder).await.is_none(),
        "closed after the error"
    );

    // Once the rotated token has been used, the first one no longer resumes
    // (§6.3 rotation), and the newer stream supersedes the older one.
    let mut again = connect(&server).await;
    let resume = json!({"session_id": sid, "resume_token": welcome["payload"]["resume_token"], "last_event_seq": 6});
    send(&mut again, hello(ALICE_TOKEN, Some(resume))).await;
    let rewelcome = receive(&mut again).await.unwrap();
    assert_eq!(rewelcome["type"], "session.welcome", "{rewelcome}");
    let bye = receive(&mut client).await.unwrap();
    assert_eq!(bye["type"], "session.bye", "{bye}");
    let mut stale = connect(&server).await;
    let resume =
        json!({"session_id": sid, "resume_token": session.resume_token, "last_event_seq": 0});
    send(&mut stale, hello(ALICE_TOKEN, Some(resume))).await;
    let refused = receive(&mut stale).await.unwrap();
    assert_eq!(refused["payload"]["code"], "UNAUTHENTICATED", "{refused}");
}

#[tokio::test]
async fn a_cursor_the_log_no_longer_holds_is_refused_explicitly() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 5, "interval_ms": 0}}),
        )
        .await;
    server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    let (status, _) = server
        .post_json(
            &format!("/v1/sessions/{sid}/ack"),
            ALICE_TOKEN,
            &json!({"last_processed_seq": 4}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut client = connect(&server).await;
    let resume =
        json!({"session_id": sid, "resume_token": session.resume_token, "last_event_seq": 1});
    send(&mut client, hello(ALICE_TOKEN, Some(resume))).await;
    let refused = receive(&mut client).await.unwrap();
    assert_eq!(refused["type"], "session.error");
    assert_eq!(refused["payload"]["code"], "RESUME_WINDOW_EXPIRED");
}

#[tokio::test]
async fn limits_hold_on_the_websocket() {
    let server = TestServer::with_config(|config| {
        config.ws_max_frame_bytes = 8 * 1024;
        config.ws_hello_timeout = Duration::from_millis(300);
    });
    // Not an upgrade: a clear 400.
    let response = server.client.get(server.url("/arcp")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_REQUEST");

    // No hello in time.
    let mut silent = connect(&server).await;
    let refused = receive(&mut silent).await.unwrap();
    assert_eq!(refused["payload"]["code"], "INVALID_REQUEST");
    assert!(refused["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("session.hello"));
    assert!(receive(&mut silent).await.is_none());

    // A message over the limit: named, then closed; the session survives.
    let mut client = connect(&server).await;
    send(&mut client, hello(ALICE_TOKEN, None)).await;
    let welcome = receive(&mut client).await.unwrap();
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let big = json!({"type": "job.submit", "id": "01JZ0000000000000000000002",
                     "payload": {"agent": "echo", "input": {"x": "y".repeat(16 * 1024)}}});
    send(&mut client, big).await;
    let refused = receive(&mut client).await.unwrap();
    assert_eq!(refused["type"], "session.error");
    assert!(
        refused["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds"),
        "{refused}"
    );
    assert!(receive(&mut client).await.is_none());
    let (status, _) = server
        .get_json(&format!("/v1/sessions/{sid}"), ALICE_TOKEN)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the session outlives the connection"
    );

    // An event bigger than the limit goes out as a note under its event_seq.
    let mut client = connect(&server).await;
    send(&mut client, hello(ALICE_TOKEN, None)).await;
    receive(&mut client).await.unwrap();
    send(
        &mut client,
        json!({"type": "job.submit", "id": "01JZ0000000000000000000003",
               "payload": {"agent": "echo", "input": {"x": "y".repeat(8050)}}}),
    )
    .await;
    let accepted = receive(&mut client).await.unwrap();
    assert_eq!(accepted["type"], "job.accepted", "{accepted}");
    assert_eq!(
        accepted["payload"]["request_id"],
        "01JZ0000000000000000000003"
    );
    let result = receive(&mut client).await.unwrap();
    assert_eq!(result["type"], "job.result", "{result}");
    assert_eq!(result["event_seq"], 1);
    assert!(result["payload"]["summary"]
        .as_str()
        .unwrap()
        .contains("message limit"));
}

/// The official runtime, `arcp serve` (its `echo` agent), on a free port.
pub(crate) struct OfficialRuntime {
    _child: tokio::process::Child,
    pub(crate) port: u16,
}

async fn official_runtime(token: &str) -> OfficialRuntime {
    let arcp = sdk_python().with_file_name("arcp");
    spawn_runtime(arcp, |port| {
        vec![
            "serve".into(),
            "--port".into(),
            port.to_string(),
            "--token".into(),
            token.into(),
        ]
    })
    .await
}

/// `tests/it/agents/arcp_ticker.py`: the official runtime with a slow agent;
/// cancelled jobs are noted in `cancelled`.
pub(crate) async fn ticker_runtime(token: &str, cancelled: &std::path::Path) -> OfficialRuntime {
    ticker_runtime_on(free_port(), token, cancelled).await
}

/// [`ticker_runtime`] on a given port (to restart one where it was).
pub(crate) async fn ticker_runtime_on(
    port: u16,
    token: &str,
    cancelled: &std::path::Path,
) -> OfficialRuntime {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/agents/arcp_ticker.py");
    let cancelled = cancelled.display().to_string();
    spawn_runtime_on(sdk_python(), port, |port| {
        vec![
            script.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--token".into(),
            token.into(),
            "--cancelled".into(),
            cancelled.clone(),
        ]
    })
    .await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

async fn spawn_runtime(program: PathBuf, args: impl FnOnce(u16) -> Vec<String>) -> OfficialRuntime {
    spawn_runtime_on(program, free_port(), args).await
}

async fn spawn_runtime_on(
    program: PathBuf,
    port: u16,
    args: impl FnOnce(u16) -> Vec<String>,
) -> OfficialRuntime {
    let child = tokio::process::Command::new(program)
        .args(args(port))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start arcp serve");
    within("arcp serve listening", async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    OfficialRuntime {
        _child: child,
        port,
    }
}

fn upstream_agents(port: u16, token: &str) -> Vec<arcp_gateway::agents_file::AgentDefinition> {
    upstream_agent("py-echo", "echo", port, token)
}

pub(crate) fn upstream_agent(
    name: &str,
    upstream: &str,
    port: u16,
    token: &str,
) -> Vec<arcp_gateway::agents_file::AgentDefinition> {
    let text = format!(
        r#"
[[agent]]
name = "{name}"
  [[agent.version]]
  version = "1.0.0"
  kind = "arcp"
  url = "ws://127.0.0.1:{port}/arcp"
  token = "{token}"
  upstream_agent = "{upstream}"
  connect_timeout_ms = 5000
  idle_timeout_ms = 20000
"#
    );
    arcp_gateway::agents_file::parse(&text, std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
        .expect("agents file")
}

#[tokio::test]
async fn the_official_runtime_runs_behind_the_gateway_and_its_job_resumes_over_sse() {
    let runtime = official_runtime("upstream-T0ken").await;
    let agents = upstream_agents(runtime.port, "upstream-T0ken");
    let server = TestServer::with_config(|config| config.agents = agents);
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "py-echo", "input": {"hello": "world"}}),
        )
        .await;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, 1, 2);
    assert_eq!(events[0].event, "job.event");
    assert_eq!(events[0].data["payload"]["kind"], "log");
    assert_eq!(events[0].data["payload"]["body"]["message"], "echo started");
    assert_eq!(events[1].event, "job.result");
    assert_eq!(
        events[1].data["payload"]["result"],
        json!({"echoed": {"hello": "world"}})
    );
    drop(stream);
    // Resume from the first event: exactly the rest, in the gateway's sequence.
    let mut resumed = server.stream(sid, &session.resume_token, Some(1)).await;
    assert_eq!(resumed.status, StatusCode::OK);
    resumed.welcome().await;
    let rest = resumed.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&rest, 2, 2);
    assert_eq!(rest[0].data, events[1].data);
}

#[tokio::test]
async fn an_upstream_runtime_that_refuses_or_is_missing_fails_the_job_explicitly() {
    let runtime = official_runtime("upstream-T0ken").await;
    let wrong = upstream_agents(runtime.port, "not-the-token");
    let server = TestServer::with_config(|config| config.agents = wrong);
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(sid, ALICE_TOKEN, json!({"agent": "py-echo", "input": {}}))
        .await;
    let status = server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "error")
        .await;
    assert_eq!(status["terminal"]["code"], "UNAUTHENTICATED", "{status}");

    // Nothing listens there any more.
    let port = runtime.port;
    drop(runtime);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gone = upstream_agents(port, "upstream-T0ken");
    let server = TestServer::with_config(|config| config.agents = gone);
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(sid, ALICE_TOKEN, json!({"agent": "py-echo", "input": {}}))
        .await;
    let status = server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "error")
        .await;
    assert_eq!(status["terminal"]["code"], "INTERNAL_ERROR", "{status}");
}

#[tokio::test]
async fn a_cancel_reaches_the_upstream_runtime_and_a_drop_is_an_explicit_error() {
    let dir = tempfile::tempdir().unwrap();
    let cancelled = dir.path().join("cancelled");
    let runtime = ticker_runtime("upstream-T0ken", &cancelled).await;
    let agents = upstream_agent("py-ticker", "ticker", runtime.port, "upstream-T0ken");
    let server = TestServer::with_config(|config| config.agents = agents);
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;

    // Cancel at the gateway: the upstream job is cancelled too.
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "py-ticker", "input": {"count": 1000, "interval_ms": 50}}),
        )
        .await;
    server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| {
            job["last_event_seq"].as_u64() >= Some(2)
        })
        .await;
    let (status, _) = server.cancel(sid, &job, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    within("the upstream runtime to see the cancel", async {
        while !std::fs::read_to_string(&cancelled).is_ok_and(|text| text.contains("cancelled")) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // The runtime goes away mid-job: the job fails, saying why, never
    // passing for complete.
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "py-ticker", "input": {"count": 1000, "interval_ms": 50}}),
        )
        .await;
    let before = server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| {
            job["last_event_seq"].as_u64().is_some_and(|seq| seq > 0)
        })
        .await;
    assert_eq!(before["status"], "running");
    drop(runtime);
    let status = server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "error")
        .await;
    let terminal = &status["terminal"];
    assert_eq!(terminal["code"], "INTERNAL_ERROR", "{status}");
    assert_eq!(terminal["retryable"], true);
    assert!(
        terminal["message"]
            .as_str()
            .unwrap()
            .contains("dropped the connection"),
        "{terminal}"
    );
}
