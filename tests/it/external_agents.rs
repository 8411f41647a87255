//! External agents (issue 6): the example agents of `examples/` (a shell
//! script, a Python program, an HTTP service) and a misbehaving one
//! (`tests/it/agents/rogue.py`), each run through a real gateway: events,
//! results, streamed results, errors, cancel (the process really gone),
//! timeouts, crashes, garbage, floods, stalled and failing upstreams, lease
//! enforcement, budgets, and resume across all of them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use arcp_gateway::agents_file::{self, AgentDefinition};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The example agents file, as `--agents examples/agents.toml` loads it.
fn example_agents() -> Vec<AgentDefinition> {
    agents_file::load(&examples().join("agents.toml")).expect("examples/agents.toml")
}

/// The misbehaving agent, in two flavours: lenient, and strict about leases.
const ROGUE: &str = r#"
[[agent]]
name = "rogue"
  [[agent.version]]
  version = "1.0.0"
  command = ["python3", "../tests/it/agents/rogue.py"]
  env = { ROGUE_FLAVOUR = "grape" }
  kill_grace_ms = 300
  max_line_bytes = 65536
  stderr_lines_per_sec = 20

[[agent]]
name = "rogue-strict"
require_model_use = true
lease_violation = "fail"
  [[agent.version]]
  version = "1.0.0"
  command = ["python3", "../tests/it/agents/rogue.py"]
  kill_grace_ms = 300

# Ignores SIGTERM, starts in milliseconds even on a loaded machine.
[[agent]]
name = "capped"
  [[agent.version]]
  version = "1.0.0"
  command = ["sh", "-c", "trap '' TERM; echo '{\"kind\":\"status\",\"body\":{\"pid\":'$$'}}'; while :; do sleep 1; done"]
  kill_grace_ms = 300
  max_runtime_sec = 1
"#;

/// A gateway serving the example agents and the rogue.
fn server() -> TestServer {
    let mut agents = example_agents();
    agents.extend(agents_file::parse(ROGUE, &examples()).expect("rogue agents"));
    TestServer::with_config(|config| config.agents = agents)
}

/// Submits with a W3C `traceparent` (§11) and returns the job id.
async fn submit(server: &TestServer, session_id: &str, body: Value) -> String {
    let response = within(
        "job submission",
        server
            .client
            .post(server.url(&format!("/v1/sessions/{session_id}/jobs")))
            .bearer_auth(ALICE_TOKEN)
            .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
            .json(&body)
            .send(),
    )
    .await
    .expect("submit");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.expect("job.accepted");
    accepted["payload"]["job_id"]
        .as_str()
        .expect("job_id")
        .to_owned()
}

/// Runs one job in a fresh session and returns its events, terminal last.
async fn run(server: &TestServer, body: Value) -> (String, Vec<SseEvent>) {
    let session = server.create_session(ALICE_TOKEN).await;
    let job = submit(server, &session.session_id, body).await;
    let mut stream = server.stream(&session.session_id, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    (job, events)
}

fn kind(event: &SseEvent) -> &str {
    event.data["payload"]["kind"].as_str().unwrap_or("")
}

fn bodies<'a>(events: &'a [SseEvent], wanted: &'a str) -> impl Iterator<Item = &'a Value> {
    events
        .iter()
        .filter(move |event| kind(event) == wanted)
        .map(|event| &event.data["payload"]["body"])
}

fn terminal(events: &[SseEvent]) -> &Value {
    &events.last().expect("a terminal event").data["payload"]
}

/// The pid an agent reported in its `status` event.
fn reported_pid(events: &[SseEvent], field: &str) -> u32 {
    bodies(events, "status")
        .find_map(|body| body[field].as_u64())
        .unwrap_or_else(|| panic!("a status event with a pid: {events:#?}")) as u32
}

/// Members of a process group, from `/proc/*/stat`.
fn group_members(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the `(comm)`: state, ppid, pgrp.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            fields.get(2).and_then(|pgrp| pgrp.parse::<u32>().ok()) == Some(group)
        })
        .collect()
}

/// Waits until `pid` is gone and reaped (a zombie keeps `/proc/<pid>`), and
/// nothing is left in its process group.
async fn wait_gone(pid: u32) {
    within("the agent process to be gone", async {
        loop {
            if !Path::new(&format!("/proc/{pid}")).exists() && group_members(pid).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The example HTTP agent on an ephemeral port.
struct HttpAgent {
    base: String,
    _process: tokio::process::Child,
}

impl HttpAgent {
    async fn start(token: &str) -> HttpAgent {
        let mut process = tokio::process::Command::new("python3")
            .arg(examples().join("agents/http_agent.py"))
            .args(["--port", "0", "--token", token])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the HTTP agent");
        let stdout = process.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = within("the HTTP agent to listen", lines.next_line())
            .await
            .expect("read")
            .expect("the HTTP agent printed its address");
        let base = line
            .strip_prefix("listening on ")
            .expect("listening on …")
            .to_owned();
        HttpAgent {
            base,
            _process: process,
        }
    }
}

/// A free local port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn http_agents(agent: &HttpAgent, token: &str) -> Vec<AgentDefinition> {
    let base = &agent.base;
    let refused = closed_port();
    let version = |route: &str, extra: &str| {
        format!(
            "  [[agent.version]]\n  version = \"1.0.0\"\n  url = \"{base}{route}\"\n  cancel_url = \"{base}/cancel\"\n{extra}\n"
        )
    };
    let auth = format!("  authorization = \"Bearer {token}\"\n  idle_timeout_ms = 5000");
    // Short enough to keep the test fast; only these two are meant to stall.
    let impatient = format!("  authorization = \"Bearer {token}\"\n  idle_timeout_ms = 400");
    let text = [
        ("shouter", version("/run", &auth)),
        ("shouter-sse", version("/run-sse", &auth)),
        ("stall", version("/stall", &impatient)),
        ("stall-mid", version("/stall-mid", &impatient)),
        ("fail", version("/fail", &auth)),
        ("reject", version("/reject", &auth)),
        ("no-auth", version("/run", "")),
        // TLS to a plain-HTTP server: the handshake fails.
        (
            "tls",
            format!(
                "  [[agent.version]]\n  version = \"1.0.0\"\n  url = \"{}/run\"\n",
                base.replace("http://", "https://")
            ),
        ),
        (
            "refused",
            format!("  [[agent.version]]\n  version = \"1.0.0\"\n  url = \"http://127.0.0.1:{refused}/run\"\n"),
        ),
    ]
    .iter()
    .map(|(name, version)| format!("[[agent]]\nname = \"up-{name}\"\n{version}"))
    .collect::<String>();
    agents_file::parse(&text, &examples()).expect("HTTP agents")
}

fn http_server(agent: &HttpAgent, token: &str) -> TestServer {
    let agents = http_agents(agent, token);
    TestServer::with_config(|config| config.agents = agents)
}

#[tokio::test]
async fn the_agents_file_adds_to_the_inventory() {
    let server = server();
    let (status, inventory) = server.get_json("/v1/agents", ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = inventory["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|agent| agent["name"].as_str())
        .collect();
    for name in [
        "echo",
        "ticker",
        "countdown",
        "wordcount",
        "shouter",
        "rogue",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let wordcount = inventory["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|agent| agent["name"] == "wordcount")
        .unwrap();
    assert_eq!(wordcount["versions"], json!(["1.0.0"]));
    assert_eq!(wordcount["default"], "1.0.0");
    let session = server.create_session(ALICE_TOKEN).await;
    let (status, body) = server
        .submit(
            &session.session_id,
            ALICE_TOKEN,
            json!({"agent": "wordcount@2.0.0"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "AGENT_VERSION_NOT_AVAILABLE");
}

#[tokio::test]
async fn a_shell_agent_streams_events_logs_and_its_result() {
    let server = server();
    let (job, events) = run(
        &server,
        json!({"agent": "countdown", "input": {"count": 3, "interval": 0.01}}),
    )
    .await;
    let started = bodies(&events, "status").next().expect("a status event");
    assert_eq!(started["phase"], "started");
    let ticks: Vec<u64> = bodies(&events, "progress")
        .map(|body| body["current"].as_u64().unwrap())
        .collect();
    assert_eq!(ticks, [1, 2, 3]);
    let logs: Vec<&str> = bodies(&events, "log")
        .filter_map(|body| body["message"].as_str())
        .collect();
    assert!(
        logs.iter()
            .any(|line| line.starts_with("countdown: starting at 3")),
        "standard error became log events: {logs:?}"
    );
    let result = terminal(&events);
    assert_eq!(events.last().unwrap().event, "job.result");
    assert_eq!(result["final_status"], "success");
    assert_eq!(result["result"]["counted"], 3);
    // §11: the trace context reached the agent, with the client's trace id.
    let traceparent = result["result"]["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{TRACE_ID}-")),
        "{traceparent}"
    );
    assert!(events.iter().all(|event| event.data["job_id"] == job));
    assert!(events
        .iter()
        .all(|event| event.data["trace_id"] == TRACE_ID));
    wait_gone(reported_pid(&events, "pid")).await;
}

#[tokio::test]
async fn a_python_agent_reports_model_use_and_charges_the_budget() {
    let server = server();
    let text = "the quick brown fox\njumps over the lazy dog\nthe end";
    let (job, events) = run(
        &server,
        json!({
            "agent": "wordcount",
            "input": {"text": text, "price_per_word": 0.01},
            "lease_request": {"cost.budget": ["USD:5.00"], "model.use": ["tier-fast/*"]},
        }),
    )
    .await;
    let result = terminal(&events);
    assert_eq!(result["final_status"], "success", "{result}");
    assert_eq!(result["result"]["words"], 11);
    assert_eq!(result["result"]["top"][0], json!(["the", 3]));
    let tokens: Vec<&Value> = bodies(&events, "metric")
        .filter(|body| body["name"] == "model.tokens")
        .collect();
    assert_eq!(tokens.len(), 3);
    assert_eq!(tokens[0]["dimensions"]["model"], "tier-fast/wordcount");
    assert_eq!(
        bodies(&events, "tool_result").count(),
        0,
        "the model is covered"
    );
    let remaining: Vec<f64> = bodies(&events, "metric")
        .filter(|body| body["name"] == "cost.budget.remaining")
        .map(|body| body["value"].as_f64().unwrap())
        .collect();
    assert_eq!(remaining.len(), 3, "one after each cost metric (§9.6)");
    assert!((remaining[2] - 4.89).abs() < 1e-9, "{remaining:?}");
    let session_id = events[0].data["session_id"].as_str().unwrap();
    let status = server
        .wait_for_job(session_id, &job, ALICE_TOKEN, |job| {
            job["status"] == "success"
        })
        .await;
    assert!((status["budget"]["USD"].as_f64().unwrap() - 4.89).abs() < 1e-9);
}

#[tokio::test]
async fn a_python_agent_streams_its_result_in_chunks() {
    let server = server();
    let (_, events) = run(
        &server,
        json!({"agent": "wordcount", "input": {"text": "b a c a", "chunk_size": 3}}),
    )
    .await;
    let chunks: Vec<&Value> = bodies(&events, "result_chunk").collect();
    let report = "a\t2\nb\t1\nc\t1\n";
    assert_eq!(chunks.len(), report.len().div_ceil(3));
    let result_id = chunks[0]["result_id"].as_str().unwrap();
    assert!(result_id.starts_with("res_"), "generated by the gateway");
    for (seq, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["chunk_seq"], seq as u64);
        assert_eq!(chunk["result_id"], result_id);
        assert_eq!(chunk["encoding"], "utf8");
        assert_eq!(chunk["more"], seq + 1 < chunks.len());
    }
    let data: String = chunks
        .iter()
        .map(|chunk| chunk["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, report);
    let result = terminal(&events);
    assert_eq!(result["final_status"], "success");
    assert_eq!(result["result_id"], result_id);
    assert_eq!(result["result_size"], report.len() as u64);
    assert!(result.get("result").is_none(), "§8.4: never inline too");
}

#[tokio::test]
async fn result_chunk_rules_hold_for_external_agents() {
    let server = server();
    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "bad_chunks"}}),
    )
    .await;
    let error = terminal(&events);
    assert_eq!(error["code"], "INTERNAL_ERROR");
    assert!(
        error["message"].as_str().unwrap().contains("out of order"),
        "{error}"
    );

    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "chunks_then_inline"}}),
    )
    .await;
    let error = terminal(&events);
    assert_eq!(error["code"], "INTERNAL_ERROR");
    assert!(
        error["message"].as_str().unwrap().contains("inline"),
        "{error}"
    );

    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "base64_chunks"}}),
    )
    .await;
    let result = terminal(&events);
    assert_eq!(result["result_id"], "res_mine");
    assert_eq!(result["result_size"], 11, "\"hello world\" decoded");
}

#[tokio::test]
async fn error_lines_become_job_errors() {
    let server = server();
    let (_, events) = run(
        &server,
        json!({"agent": "wordcount", "input": {"text": 42}}),
    )
    .await;
    assert_eq!(events.last().unwrap().event, "job.error");
    let error = terminal(&events);
    assert_eq!(error["code"], "INVALID_REQUEST");
    assert_eq!(error["retryable"], false);
    assert_eq!(error["final_status"], "error");
    assert_eq!(error["message"], "input.text must be a string");

    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "error", "code": "TIMEOUT"}}),
    )
    .await;
    assert_eq!(terminal(&events)["final_status"], "timed_out");
    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "error", "code": "INTERNAL_ERROR"}}),
    )
    .await;
    assert_eq!(terminal(&events)["retryable"], true, "§12");
}

#[tokio::test]
async fn cancel_stops_the_agent_and_its_whole_process_group() {
    let server = server();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let shell = submit(
        &server,
        sid,
        json!({"agent": "countdown", "input": {"count": 100000, "interval": 0.05}}),
    )
    .await;
    let python = submit(
        &server,
        sid,
        json!({"agent": "rogue", "input": {"do": "spawn"}}),
    )
    .await;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let mut pids = Vec::new();
    while pids.len() < 3 {
        let event = stream.next_event().await.expect("an event");
        if kind(&event) == "status" {
            let body = &event.data["payload"]["body"];
            pids.extend(body["pid"].as_u64().map(|pid| pid as u32));
            pids.extend(body["child"].as_u64().map(|pid| pid as u32));
        }
    }
    for job in [&shell, &python] {
        let (status, body) = server.cancel(sid, job, ALICE_TOKEN).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mut ended = 0;
    while ended < 2 {
        let event = stream.next_event().await.expect("an event");
        if event.event == "job.error" {
            assert_eq!(event.data["payload"]["code"], "CANCELLED");
            ended += 1;
        }
    }
    // The agents, the shell's `sleep` and the Python agent's grandchild.
    for pid in pids {
        wait_gone(pid).await;
    }
}

#[tokio::test]
async fn an_agent_ignoring_sigterm_is_killed_after_the_grace() {
    let server = server();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = submit(
        &server,
        sid,
        json!({"agent": "rogue", "input": {"do": "ignore_term"}}),
    )
    .await;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(|event| kind(event) == "status").await;
    let pid = reported_pid(&events, "pid");
    let cancelled_at = Instant::now();
    server.cancel(sid, &job, ALICE_TOKEN).await;
    wait_gone(pid).await;
    assert!(
        cancelled_at.elapsed() >= Duration::from_millis(250),
        "SIGTERM was ignored, so only SIGKILL after kill_grace_ms ended it"
    );
}

#[tokio::test]
async fn max_runtime_sec_times_an_agent_out() {
    let server = server();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let by_job = submit(
        &server,
        sid,
        json!({"agent": "countdown", "input": {"count": 100000, "interval": 0.05}, "max_runtime_sec": 1}),
    )
    .await;
    let by_agent = submit(&server, sid, json!({"agent": "capped"})).await;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let mut events = Vec::new();
    let mut terminals = 0;
    while terminals < 2 {
        let event = stream.next_event().await.expect("an event");
        terminals += usize::from(event.event == "job.error");
        events.push(event);
    }
    for job in [&by_job, &by_agent] {
        let mine: Vec<SseEvent> = events
            .iter()
            .filter(|event| event.data["job_id"] == **job)
            .cloned()
            .collect();
        let error = terminal(&mine);
        assert_eq!(error["code"], "TIMEOUT", "{error}");
        assert_eq!(error["final_status"], "timed_out");
        wait_gone(reported_pid(&mine, "pid")).await;
    }
}

#[tokio::test]
async fn a_crash_mid_job_is_a_retryable_internal_error() {
    let server = server();
    let (_, events) = run(&server, json!({"agent": "rogue", "input": {"do": "crash"}})).await;
    let ticks = bodies(&events, "progress").count();
    assert_eq!(ticks, 2, "what the agent said before it died is kept");
    let logs: Vec<&str> = bodies(&events, "log")
        .filter_map(|body| body["message"].as_str())
        .collect();
    assert!(
        logs.iter().any(|line| line.contains("Traceback")),
        "{logs:?}"
    );
    let error = terminal(&events);
    assert_eq!(error["code"], "INTERNAL_ERROR");
    assert_eq!(error["retryable"], true);
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("exit status: 1"), "{message}");
    assert!(
        message.contains("RuntimeError: rogue: crashed on purpose"),
        "{message}"
    );
    wait_gone(reported_pid(&events, "pid")).await;

    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "exit_silently"}}),
    )
    .await;
    let message = terminal(&events)["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("without a result or error line"),
        "{message}"
    );
}

#[tokio::test]
async fn garbage_output_ends_the_job_and_stops_the_agent() {
    let server = server();
    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "garbage"}}),
    )
    .await;
    let error = terminal(&events);
    assert_eq!(error["code"], "INTERNAL_ERROR");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("not JSON"), "{message}");
    assert!(message.contains("this is not json at all"), "{message}");
    // It was sleeping for 30 s: it was stopped, not waited for.
    wait_gone(reported_pid(&events, "pid")).await;

    for (what, expected) in [
        ("not_an_object", "not a JSON object"),
        ("unknown_kind", "unknown event kind \\\"delegate\\\""),
        ("too_deep", "deeper than 64 levels"),
        ("duplicate_keys", "the key \\\"verdict\\\" more than once"),
    ] {
        let (_, events) = run(&server, json!({"agent": "rogue", "input": {"do": what}})).await;
        let message = terminal(&events)["message"].to_string();
        assert!(message.contains(expected), "{what}: {message}");
    }
}

#[tokio::test]
async fn huge_output_is_bounded() {
    let server = server();
    // 16 MiB on one line, against a 64 KiB max_line_bytes.
    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "huge_line"}}),
    )
    .await;
    let message = terminal(&events)["message"].as_str().unwrap().to_owned();
    assert!(message.contains("more than 65536 bytes"), "{message}");
    wait_gone(reported_pid(&events, "pid")).await;

    // A flood of events: all delivered, in order, once.
    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "flood", "count": 5000}}),
    )
    .await;
    let ticks: Vec<u64> = bodies(&events, "progress")
        .map(|body| body["current"].as_u64().unwrap())
        .collect();
    assert_eq!(ticks, (1..=5000).collect::<Vec<u64>>());
    assert_contiguous(&events, 1, events.len() as u64);
    assert_eq!(terminal(&events)["result"]["flooded"], 5000);

    // A flood of standard error: forwarded at a bounded rate, the rest
    // counted.
    let started = Instant::now();
    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "stderr_flood", "count": 20000}}),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let logs: Vec<&Value> = bodies(&events, "log").collect();
    let allowed = 40.0 + 20.0 * elapsed + 2.0;
    assert!(
        (logs.len() as f64) <= allowed,
        "{} log events in {elapsed}s",
        logs.len()
    );
    assert!(
        logs.iter().any(|body| body["message"]
            .as_str()
            .unwrap()
            .contains("were dropped (rate limit)")),
        "the drop is reported"
    );
    assert_eq!(terminal(&events)["final_status"], "success");
}

#[tokio::test]
async fn an_agent_lingering_after_its_result_is_stopped() {
    let server = server();
    let (_, events) = run(
        &server,
        json!({"agent": "rogue", "input": {"do": "result_then_linger"}}),
    )
    .await;
    let result = &terminal(&events)["result"];
    assert_eq!(result["early"], true);
    assert!(
        bodies(&events, "status").next().is_none(),
        "nothing follows the terminal event"
    );
    // It got kill_grace_ms to exit by itself, then SIGTERM.
    wait_gone(result["pid"].as_u64().unwrap() as u32).await;
}

#[tokio::test]
async fn a_command_agent_gets_a_clean_environment() {
    let server = server();
    let (job, events) = run(&server, json!({"agent": "rogue", "input": {"do": "env"}})).await;
    let result = &terminal(&events)["result"];
    let env = result["env"].as_object().expect("env");
    assert_eq!(env["ROGUE_FLAVOUR"], "grape");
    assert_eq!(env["ARCP_JOB_ID"], job.as_str());
    assert_eq!(env["ARCP_TRACE_ID"], TRACE_ID);
    assert!(env["TRACEPARENT"]
        .as_str()
        .unwrap()
        .starts_with(&format!("00-{TRACE_ID}-")));
    // Nothing of the gateway's own environment (tokens, secrets, …) but the
    // few inherited variables reaches the agent. (A `python3` that is a pyenv
    // shim, a bash script, adds variables of its own; they are not checked.)
    let inherited = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let shim = name.contains("PYENV") || ["PWD", "OLDPWD", "SHLVL", "_"].contains(&&*name);
        if !inherited.contains(&&*name) && !shim {
            assert!(!env.contains_key(&*name), "{name} leaked into the agent");
        }
    }
    assert_eq!(
        Path::new(result["cwd"].as_str().unwrap()),
        examples(),
        "cwd defaults to the agents file's directory"
    );
}

#[tokio::test]
async fn lease_violations_are_answered_with_permission_denied() {
    let server = server();
    let (_, events) = run(
        &server,
        json!({
            "agent": "rogue",
            "input": {
                "do": "tools",
                "tools": ["search.web", "shell.exec"],
                "models": ["tier-fast/small", "gpt-4o"],
            },
            "lease_request": {"tool.call": ["search.*"], "model.use": ["tier-fast/*"]},
        }),
    )
    .await;
    let sequence: Vec<String> = events
        .iter()
        .filter(|event| event.event == "job.event")
        .map(|event| {
            let body = &event.data["payload"]["body"];
            match kind(event) {
                "tool_call" => format!("call {}", body["tool"].as_str().unwrap()),
                "metric" => format!("model {}", body["dimensions"]["model"].as_str().unwrap()),
                "tool_result" => format!(
                    "denied {} {}",
                    body["call_id"],
                    body["error"]["code"].as_str().unwrap()
                ),
                other => other.to_owned(),
            }
        })
        .collect();
    assert_eq!(
        sequence,
        [
            "call search.web",
            "call shell.exec",
            "denied \"call-2\" PERMISSION_DENIED",
            "model tier-fast/small",
            "model gpt-4o",
            "denied null PERMISSION_DENIED",
        ]
    );
    assert_eq!(
        terminal(&events)["final_status"],
        "success",
        "reported, not fatal"
    );

    // An agent configured with lease_violation = "fail" and
    // require_model_use = true: a lease without model.use forbids models.
    let (_, events) = run(
        &server,
        json!({
            "agent": "rogue-strict",
            "input": {"do": "tools", "tools": ["search.web"], "models": ["tier-fast/small"], "linger_ms": 5000},
            "lease_request": {"tool.call": ["*"]},
        }),
    )
    .await;
    assert_eq!(bodies(&events, "tool_result").count(), 1);
    let error = terminal(&events);
    assert_eq!(error["code"], "PERMISSION_DENIED", "{error}");
    assert!(error["message"].as_str().unwrap().contains("model.use"));
}

#[tokio::test]
async fn an_exhausted_budget_stops_an_external_agent() {
    let server = server();
    let (_, events) = run(
        &server,
        json!({
            "agent": "wordcount",
            "input": {"text": "one two\nthree four\nfive six", "price_per_word": 0.5, "delay_ms": 5000},
            "lease_request": {"cost.budget": ["USD:1.00"]},
        }),
    )
    .await;
    let error = terminal(&events);
    assert_eq!(error["code"], "BUDGET_EXHAUSTED");
    assert_eq!(error["retryable"], false);
    // It was sleeping 5 s after the first line: it was stopped.
    wait_gone(reported_pid(&events, "pid")).await;
}

#[tokio::test]
async fn an_http_agent_streams_ndjson_and_sse() {
    let token = "shouter-secret-1";
    let agent = HttpAgent::start(token).await;
    let server = http_server(&agent, token);
    for name in ["up-shouter", "up-shouter-sse"] {
        let (_, events) = run(
            &server,
            json!({"agent": name, "input": {"text": "hello there world"}}),
        )
        .await;
        let words: Vec<&str> = bodies(&events, "progress")
            .map(|body| body["message"].as_str().unwrap())
            .collect();
        assert_eq!(words, ["HELLO", "THERE", "WORLD"], "{name}");
        let result = terminal(&events);
        assert_eq!(result["result"]["shouted"], "HELLO THERE WORLD");
        let traceparent = result["result"]["traceparent"].as_str().unwrap();
        assert!(
            traceparent.starts_with(&format!("00-{TRACE_ID}-")),
            "§11: {traceparent}"
        );
    }
}

#[tokio::test]
async fn http_upstream_failures_become_job_errors() {
    let token = "shouter-secret-2";
    let agent = HttpAgent::start(token).await;
    let server = http_server(&agent, token);
    let cases = [
        ("up-refused", "INTERNAL_ERROR", true, "could not reach"),
        ("up-tls", "INTERNAL_ERROR", true, "could not reach"),
        (
            "up-fail",
            "INTERNAL_ERROR",
            true,
            "500 Internal Server Error",
        ),
        ("up-reject", "INVALID_REQUEST", false, "nothing to shout"),
        ("up-no-auth", "PERMISSION_DENIED", false, "401"),
        (
            "up-stall",
            "INTERNAL_ERROR",
            true,
            "sent no answer for 400 ms",
        ),
        (
            "up-stall-mid",
            "INTERNAL_ERROR",
            true,
            "sent nothing more for 400 ms",
        ),
    ];
    for (name, code, retryable, message) in cases {
        let (_, events) = run(&server, json!({"agent": name, "input": {"text": "x"}})).await;
        let error = terminal(&events);
        assert_eq!(error["code"], code, "{name}: {error}");
        assert_eq!(error["retryable"], retryable, "{name}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{name}: {error}"
        );
    }
    // The upstream validates input too: a 400 with an ARCP error body.
    let (_, events) = run(&server, json!({"agent": "up-shouter", "input": {}})).await;
    assert_eq!(terminal(&events)["code"], "INVALID_REQUEST");
}

#[tokio::test]
async fn cancelling_an_http_job_drops_the_request_and_tells_the_upstream() {
    let token = "shouter-secret-3";
    let agent = HttpAgent::start(token).await;
    let server = http_server(&agent, token);
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let text = vec!["word"; 200].join(" ");
    let job = submit(
        &server,
        sid,
        json!({"agent": "up-shouter-sse", "input": {"text": text, "interval_ms": 50}}),
    )
    .await;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    stream.events_until(|event| kind(event) == "progress").await;
    let (status, _) = server.cancel(sid, &job, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert_eq!(terminal(&events)["code"], "CANCELLED");
    let cancelled = within("the cancel notice", async {
        loop {
            let notices: Value = server
                .client
                .get(format!("{}/cancelled", agent.base))
                .send()
                .await
                .expect("GET /cancelled")
                .json()
                .await
                .expect("json");
            if notices
                .as_array()
                .is_some_and(|ids| ids.contains(&json!(job)))
            {
                return notices;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(cancelled, json!([job]), "one notice, for this job");
}

#[tokio::test]
async fn resume_is_exactly_once_across_every_kind_of_agent() {
    let token = "shouter-secret-4";
    let agent = HttpAgent::start(token).await;
    let mut agents = example_agents();
    agents.retain(|agent| agent.name != "shouter");
    agents.extend(http_agents(&agent, token));
    let server = TestServer::with_config(|config| config.agents = agents);
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let lines = vec!["a b"; 20].join("\n");
    let words = vec!["w"; 20].join(" ");
    let jobs = [
        submit(
            &server,
            sid,
            json!({"agent": "countdown", "input": {"count": 20, "interval": 0.01}}),
        )
        .await,
        submit(
            &server,
            sid,
            json!({"agent": "wordcount", "input": {"text": lines, "delay_ms": 10}}),
        )
        .await,
        submit(
            &server,
            sid,
            json!({"agent": "up-shouter", "input": {"text": words, "interval_ms": 10}}),
        )
        .await,
    ];

    // Read part of the stream, then drop the connection mid-job.
    let mut first = server.stream(sid, ALICE_TOKEN, None).await;
    let welcome = first.welcome().await;
    let mut seen = Vec::new();
    for _ in 0..15 {
        seen.push(first.next_event().await.expect("an event"));
    }
    drop(first);
    let cursor = seen.last().unwrap().seq();

    // Resume with Last-Event-ID and the newest resume token.
    let mut resumed = server
        .stream(sid, &welcome.resume_token, Some(cursor))
        .await;
    resumed.welcome().await;
    let mut open: Vec<&String> = jobs.iter().collect();
    let mut rest = Vec::new();
    while !open.is_empty() {
        let event = resumed.next_event().await.expect("an event");
        if event.event != "job.event" {
            open.retain(|job| event.data["job_id"] != ***job);
        }
        rest.push(event);
    }
    assert_eq!(rest[0].seq(), cursor + 1, "no gap");
    let mut all = seen.clone();
    all.extend(rest);
    assert_contiguous(&all, 1, all.len() as u64);
    for job in &jobs {
        let mine: Vec<&SseEvent> = all
            .iter()
            .filter(|event| event.data["job_id"] == *job)
            .collect();
        let ticks: Vec<u64> = mine
            .iter()
            .filter(|event| kind(event) == "progress")
            .map(|event| event.data["payload"]["body"]["current"].as_u64().unwrap())
            .collect();
        assert_eq!(
            ticks,
            (1..=20).collect::<Vec<u64>>(),
            "{job}: each once, in order"
        );
        let terminals = mine
            .iter()
            .filter(|event| event.event != "job.event")
            .count();
        assert_eq!(terminals, 1);
        assert_eq!(mine.last().unwrap().event, "job.result");
    }

    // A full replay is the same events, byte for byte.
    let mut replay = server.stream(sid, ALICE_TOKEN, Some(0)).await;
    replay.welcome().await;
    for expected in &all {
        assert_eq!(&replay.next_event().await.expect("replayed"), expected);
    }
}

#[tokio::test]
async fn the_binary_loads_an_agents_file_or_refuses_it() {
    let output = within(
        "the gateway to refuse the file",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_arcp-gateway"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--agents",
                "/nonexistent/agents.toml",
            ])
            .env_remove("ARCP_GATEWAY_AGENTS")
            .output(),
    )
    .await
    .expect("run the binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--agents /nonexistent/agents.toml"),
        "{stderr}"
    );

    let file = examples().join("agents.toml");
    let gateway = GatewayProcess::start(&["--agents", file.to_str().unwrap()]).await;
    let token = gateway.dev_token.clone().expect("dev token");
    let client = reqwest::Client::new();
    let inventory: Value = within(
        "the inventory",
        client
            .get(format!("{}/v1/agents", gateway.base))
            .bearer_auth(&token)
            .send(),
    )
    .await
    .expect("GET /v1/agents")
    .json()
    .await
    .expect("json");
    let names = inventory["agents"].to_string();
    assert!(
        names.contains("\"countdown\"") && names.contains("\"shouter\""),
        "{names}"
    );
    gateway.kill().await;
}
