//! JSON and memory limits (issue 11): what the edge refuses, and that
//! whatever it accepts can be re-read everywhere later: in subscribe history
//! (§7.6) and after a durable restart.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

/// The gateway's documented maximum (`arcp_gateway::json::MAX_DEPTH`).
const MAX_DEPTH: usize = arcp_gateway::json::MAX_DEPTH;

/// An input `levels` arrays deep, with a string at the bottom.
fn nested_input(levels: usize) -> Value {
    let mut value = json!("bottom");
    for _ in 0..levels {
        value = json!([value]);
    }
    value
}

/// The deepest echo input the edge accepts: the body `{"agent":…,"input":X}`
/// adds one level around it.
fn deepest_input() -> Value {
    nested_input(MAX_DEPTH - 1)
}

async fn post_raw(server: &TestServer, path: &str, body: &[u8]) -> (StatusCode, Value) {
    let response = within(
        "POST",
        server
            .client
            .post(server.url(path))
            .bearer_auth(ALICE_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send(),
    )
    .await
    .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn assert_invalid(status: StatusCode, body: &Value, mentions: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "INVALID_REQUEST", "{body}");
    assert_eq!(body["retryable"], false, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn duplicate_keys_are_refused_not_resolved_last_one_wins() {
    let server = TestServer::start();
    let sid = server.create_session(ALICE_TOKEN).await.session_id;
    let jobs = format!("/v1/sessions/{sid}/jobs");
    let (status, body) = post_raw(&server, &jobs, br#"{"agent":"echo","agent":"ticker"}"#).await;
    assert_invalid(status, &body, "\"agent\" more than once");
    // At any depth, and inside an envelope too.
    let (status, body) = post_raw(
        &server,
        &jobs,
        br#"{"type":"job.submit","payload":{"agent":"echo","input":{"a":1,"a":2}}}"#,
    )
    .await;
    assert_invalid(status, &body, "\"a\" more than once");
    // Nothing ran: the session's list is empty.
    let (_, listing) = server.get_json(&jobs, ALICE_TOKEN).await;
    assert_eq!(listing["payload"]["jobs"], json!([]), "{listing}");
}

#[tokio::test]
async fn nesting_beyond_the_maximum_is_refused_at_the_edge() {
    let server = TestServer::start();
    let sid = server.create_session(ALICE_TOKEN).await.session_id;
    for levels in [MAX_DEPTH, 126, 127, 128, 129] {
        let (status, body) = server
            .submit(
                &sid,
                ALICE_TOKEN,
                json!({"agent": "echo", "input": nested_input(levels)}),
            )
            .await;
        assert_invalid(status, &body, "deeper than");
    }
    // Far beyond serde_json's own limit (sent as text: a `Value` that deep
    // would overflow this test's own stack).
    let very_deep = format!(
        "{{\"agent\":\"echo\",\"input\":{}1{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (status, body) = post_raw(
        &server,
        &format!("/v1/sessions/{sid}/jobs"),
        very_deep.as_bytes(),
    )
    .await;
    assert_invalid(status, &body, "deeper than");
    // The same limit on every body, not just job submission.
    let deep = format!(
        "{{\"job_id\":\"x\",\"history\":{}true{}}}",
        "[".repeat(MAX_DEPTH),
        "]".repeat(MAX_DEPTH)
    );
    let (status, body) = post_raw(
        &server,
        &format!("/v1/sessions/{sid}/subscriptions"),
        deep.as_bytes(),
    )
    .await;
    assert_invalid(status, &body, "deeper than");
    // The deepest accepted input is accepted.
    server
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": deepest_input()}),
        )
        .await;
}

#[tokio::test]
async fn payloads_and_built_in_inputs_are_objects_never_read_by_position() {
    let server = TestServer::start();
    let sid = server.create_session(ALICE_TOKEN).await.session_id;
    let jobs = format!("/v1/sessions/{sid}/jobs");
    // The submit payload itself as an array (would be agent, input by
    // position).
    let (status, body) = post_raw(
        &server,
        &jobs,
        br#"{"type":"job.submit","payload":["echo",{}]}"#,
    )
    .await;
    assert_invalid(status, &body, "expected a JSON object");
    // A built-in agent's input as an array (would be count, interval_ms).
    let (status, body) = server
        .submit(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": [3, 0]}),
        )
        .await;
    assert_invalid(status, &body, "expected a JSON object");
    for input in [json!("3"), json!(3), json!(true)] {
        let (status, body) = server
            .submit(
                &sid,
                ALICE_TOKEN,
                json!({"agent": "ticker", "input": input}),
            )
            .await;
        assert_invalid(status, &body, "expected a JSON object");
    }
    // Wrong types and unknown fields inside the object.
    let (status, body) = server
        .submit(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": "3"}}),
        )
        .await;
    assert_invalid(status, &body, "invalid input");
    let (status, body) = server
        .submit(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"cuont": 3}}),
        )
        .await;
    assert_invalid(status, &body, "invalid input");
    // A nested struct as an array.
    let (status, body) = server
        .submit(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "echo", "lease_constraints": ["2099-01-01T00:00:00Z"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // An ack payload as an array.
    let (status, body) = post_raw(
        &server,
        &format!("/v1/sessions/{sid}/ack"),
        br#"{"type":"session.ack","payload":[0]}"#,
    )
    .await;
    assert_invalid(status, &body, "expected a JSON object");
    // Echo takes any JSON, arrays included.
    server
        .submit_ok(&sid, ALICE_TOKEN, json!({"agent": "echo", "input": [3, 0]}))
        .await;
}

#[tokio::test]
async fn the_deepest_accepted_input_survives_subscribe_history() {
    let server = TestServer::start();
    let submitter = server.create_session(ALICE_TOKEN).await;
    let observer = server.create_session(ALICE_TOKEN).await;
    let job = server
        .submit_ok(
            &submitter.session_id,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": deepest_input()}),
        )
        .await;
    server
        .wait_for_job(&submitter.session_id, &job, ALICE_TOKEN, |job| {
            job["status"] == "success"
        })
        .await;
    let (status, subscribed) = server
        .post_json(
            &format!("/v1/sessions/{}/subscriptions", observer.session_id),
            ALICE_TOKEN,
            &json!({"job_id": job, "history": true, "from_event_seq": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{subscribed}");
    assert_eq!(subscribed["payload"]["replayed"], true, "{subscribed}");
    let mut stream = server.stream(&observer.session_id, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let result = within("the re-stamped result", stream.next_event())
        .await
        .unwrap();
    assert_eq!(result.event, "job.result");
    assert_eq!(result.data["payload"]["result"], deepest_input());
}

/// §7.6's own example, `from_event_seq: 0`, after the submitter acked events
/// of another job: none of this job's events were evicted, so it is not 410.
#[tokio::test]
async fn history_from_zero_survives_acks_of_other_jobs() {
    let server = TestServer::start();
    let submitter = server.create_session(ALICE_TOKEN).await;
    let observer = server.create_session(ALICE_TOKEN).await;
    let sid = &submitter.session_id;
    let earlier = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 3, "interval_ms": 0}}),
        )
        .await;
    let earlier_state = server
        .wait_for_job(sid, &earlier, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    let acked = earlier_state["last_event_seq"].as_u64().unwrap();
    let (status, body) = server
        .post_json(
            &format!("/v1/sessions/{sid}/ack"),
            ALICE_TOKEN,
            &json!({"last_processed_seq": acked}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["payload"]["floor"], acked);
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 2, "interval_ms": 0}}),
        )
        .await;
    server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    let subscribe = |job: &str| {
        let job = job.to_owned();
        let path = format!("/v1/sessions/{}/subscriptions", observer.session_id);
        let server = &server;
        async move {
            server
                .post_json(
                    &path,
                    ALICE_TOKEN,
                    &json!({"job_id": job, "history": true, "from_event_seq": 0}),
                )
                .await
        }
    };
    let (status, subscribed) = subscribe(&job).await;
    assert_eq!(status, StatusCode::OK, "{subscribed}");
    assert_eq!(subscribed["payload"]["replayed"], true);
    let mut stream = server.stream(&observer.session_id, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert_eq!(events.len(), 3, "two ticks and the result: {events:?}");
    assert!(events
        .iter()
        .all(|event| event.data["job_id"] == job.as_str()));
    // The earlier job's events were acked away: that one is honestly gone.
    let (status, body) = subscribe(&earlier).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
}

#[tokio::test]
async fn cursors_are_plain_decimal_digits() {
    let server = TestServer::start();
    let sid = server.create_session(ALICE_TOKEN).await.session_id;
    let events = server.url(&format!("/v1/sessions/{sid}/events"));
    for bad in [
        "+1",
        "-0",
        " 1x",
        "0x1",
        "1e3",
        "１",
        "99999999999999999999999",
    ] {
        let response = within(
            "stream refusal",
            server
                .client
                .get(&events)
                .bearer_auth(ALICE_TOKEN)
                .header("Last-Event-ID", bad)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "Last-Event-ID {bad:?}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "INVALID_REQUEST");
        let response = within(
            "stream refusal",
            server
                .client
                .get(format!("{events}?last_event_seq={}", urlencode(bad)))
                .bearer_auth(ALICE_TOKEN)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "last_event_seq {bad:?}"
        );
    }
    // The job listing's cursor too.
    for bad in ["c+1", "c-1", "c 1", "c", "c00000000000000000000001"] {
        let (status, body) = server
            .get_json(
                &format!("/v1/sessions/{sid}/jobs?cursor={}", urlencode(bad)),
                ALICE_TOKEN,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "cursor {bad:?}: {body}");
    }
    // Digits are fine, and so is the leading zero of a plain "0".
    let mut stream = server.stream(&sid, ALICE_TOKEN, Some(0)).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.welcome().await;
}

fn urlencode(text: &str) -> String {
    form_urlencoded_byte_serialize(text)
}

fn form_urlencoded_byte_serialize(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The real binary with `--data-dir`: the deepest accepted input survives a
/// restart, and rows it cannot read (an old deeply nested record, a record
/// that is not JSON, an event with a broken envelope span) are quarantined
/// with the gateway still starting and serving every other session.
#[tokio::test]
async fn a_durable_gateway_restarts_past_records_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let args = [
        "--data-dir",
        data_dir.as_str(),
        "--token",
        "alice:alice-api-token-0001",
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let post = |base: String, path: String, body: Value| {
        let client = client.clone();
        async move {
            let response = within(
                "POST",
                client
                    .post(format!("{base}{path}"))
                    .bearer_auth(ALICE_TOKEN)
                    .json(&body)
                    .send(),
            )
            .await
            .unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let get = |base: String, path: String| {
        let client = client.clone();
        async move {
            let response = within(
                "GET",
                client
                    .get(format!("{base}{path}"))
                    .bearer_auth(ALICE_TOKEN)
                    .send(),
            )
            .await
            .unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    let gateway = GatewayProcess::start(&args).await;
    let base = gateway.base.clone();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (status, welcome) = post(base.clone(), "/v1/sessions".into(), Value::Null).await;
        assert_eq!(status, StatusCode::CREATED);
        sessions.push(welcome["session_id"].as_str().unwrap().to_owned());
    }
    let mut jobs = Vec::new();
    for sid in &sessions {
        let (status, accepted) = post(
            base.clone(),
            format!("/v1/sessions/{sid}/jobs"),
            json!({"agent": "echo", "input": deepest_input()}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        jobs.push(accepted["payload"]["job_id"].as_str().unwrap().to_owned());
    }
    within("the jobs to finish", async {
        for (sid, job) in sessions.iter().zip(&jobs) {
            loop {
                let (_, status) = get(base.clone(), format!("/v1/sessions/{sid}/jobs/{job}")).await;
                if status["payload"]["status"] == "success" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await;
    // SIGKILL only after the records are durable: a status read sees the
    // in-memory state, so give the group commit a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.kill().await;

    // Damage the store as an old version or a bad disk might have.
    {
        let connection =
            rusqlite::Connection::open(dir.path().join("arcp-gateway.sqlite3")).unwrap();
        // Session 0's job record: nested past serde_json's limit of 128.
        let deep = format!(
            "{{\"id\":\"{}\",\"session_id\":\"{}\",\"input\":{}1{}}}",
            jobs[0],
            sessions[0],
            "[".repeat(200),
            "]".repeat(200)
        );
        connection
            .execute(
                "UPDATE jobs SET record = ?1 WHERE id = ?2",
                rusqlite::params![deep, jobs[0]],
            )
            .unwrap();
        // Session 1's own record: not JSON at all.
        connection
            .execute(
                "UPDATE sessions SET record = 'not json' WHERE id = ?1",
                rusqlite::params![sessions[1]],
            )
            .unwrap();
        // Session 2's first event: its envelope span points past the frame.
        let changed = connection
            .execute(
                "UPDATE events SET envelope_end = 1000000000 WHERE session_id = ?1 AND seq = 1",
                rusqlite::params![sessions[2]],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }

    let gateway = GatewayProcess::start(&args).await;
    let base = gateway.base.clone();
    // Session 0 is served; its job record was set aside.
    let (status, body) = get(base.clone(), format!("/v1/sessions/{}", sessions[0])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = get(
        base.clone(),
        format!("/v1/sessions/{}/jobs/{}", sessions[0], jobs[0]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Session 1 is gone (its record was unreadable): an honest 410/404, not a 5xx.
    let (status, body) = get(base.clone(), format!("/v1/sessions/{}", sessions[1])).await;
    assert!(status.is_client_error(), "{status} {body}");
    // Session 2 is served, its log cut at the broken event; its job record,
    // holding the deepest accepted input, was read back.
    let (status, body) = get(base.clone(), format!("/v1/sessions/{}", sessions[2])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get(
        base.clone(),
        format!("/v1/sessions/{}/jobs/{}", sessions[2], jobs[2]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["payload"]["status"], "success", "{body}");
    assert_eq!(body["payload"]["terminal"]["result"], deepest_input());
    // A new session works, end to end, with the deepest input.
    let (status, welcome) = post(base.clone(), "/v1/sessions".into(), Value::Null).await;
    assert_eq!(status, StatusCode::CREATED);
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let (status, _) = post(
        base.clone(),
        format!("/v1/sessions/{sid}/jobs"),
        json!({"agent": "echo", "input": deepest_input()}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Session 0's retained events still replay, the deep result included.
    let response = within(
        "stream",
        client
            .get(format!("{base}/v1/sessions/{}/events", sessions[0]))
            .bearer_auth(ALICE_TOKEN)
            .header("Last-Event-ID", "0")
            .send(),
    )
    .await
    .unwrap();
    let mut stream = SseStream::from_response(response).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.error);
    stream.welcome().await;
    let result = within("the stored result", stream.next_event())
        .await
        .unwrap();
    assert_eq!(result.data["payload"]["result"], deepest_input());
    drop(stream);
    gateway.kill().await;

    // The quarantine holds the three rows, for an operator to look at.
    let connection = rusqlite::Connection::open(dir.path().join("arcp-gateway.sqlite3")).unwrap();
    let mut sources: Vec<String> = connection
        .prepare("SELECT source FROM quarantine ORDER BY source")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    sources.dedup();
    assert_eq!(sources, ["events", "jobs", "sessions"]);

    // And a third start finds nothing left to quarantine, and starts.
    let gateway = GatewayProcess::start(&args).await;
    let (status, _) = get(
        gateway.base.clone(),
        format!("/v1/sessions/{}", sessions[0]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_principal_runs_at_most_its_cap_of_jobs_across_sessions() {
    let server = TestServer::with_config(|config| config.max_running_jobs_per_principal = 2);
    let first = server.create_session(ALICE_TOKEN).await.session_id;
    let second = server.create_session(ALICE_TOKEN).await.session_id;
    let slow = json!({"agent": "ticker", "input": {"count": 1000, "interval_ms": 50}});
    let a = server.submit_ok(&first, ALICE_TOKEN, slow.clone()).await;
    server.submit_ok(&second, ALICE_TOKEN, slow.clone()).await;
    let (status, body) = server.submit(&first, ALICE_TOKEN, slow.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "PERMISSION_DENIED");
    assert_eq!(body["retryable"], true);
    assert!(body["message"].as_str().unwrap().contains("runs 2 jobs"));
    // Another principal is not affected.
    let bob = server.create_session(BOB_TOKEN).await.session_id;
    server.submit_ok(&bob, BOB_TOKEN, slow.clone()).await;
    // A finished job frees its slot.
    let (status, _) = server.cancel(&first, &a, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    server.submit_ok(&first, ALICE_TOKEN, slow).await;
}

#[tokio::test]
async fn a_principal_over_its_retained_bytes_gets_429_and_an_honest_410() {
    let server = TestServer::with_config(|config| {
        config.max_retained_bytes_per_principal = 64 * 1024;
    });
    let sid = server.create_session(ALICE_TOKEN).await.session_id;
    // About 200 KiB of events: more than alice may retain.
    let job = server
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "firehose", "input": {"count": 200, "size": 1000}}),
        )
        .await;
    let done = server
        .wait_for_job(&sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    let newest = done["last_event_seq"].as_u64().unwrap();
    let (_, status) = server
        .get_json(&format!("/v1/sessions/{sid}"), ALICE_TOKEN)
        .await;
    let floor = status["payload"]["floor"].as_u64().unwrap();
    assert!(floor > 0, "the oldest events were evicted: {status}");
    // History below the floor is honestly gone.
    let stream = server.stream(&sid, ALICE_TOKEN, Some(0)).await;
    assert_eq!(stream.status, StatusCode::GONE);
    assert_eq!(stream.error_code(), "RESUME_WINDOW_EXPIRED");
    // New work waits until alice acknowledges; bob is not affected.
    let echo = json!({"agent": "echo", "input": {}});
    let (status, body) = server.submit(&sid, ALICE_TOKEN, echo.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["retryable"], true);
    let bob = server.create_session(BOB_TOKEN).await.session_id;
    server.submit_ok(&bob, BOB_TOKEN, echo.clone()).await;
    let (status, body) = server
        .post_json(
            &format!("/v1/sessions/{sid}/ack"),
            ALICE_TOKEN,
            &json!({"last_processed_seq": newest}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.submit_ok(&sid, ALICE_TOKEN, echo).await;
}

#[tokio::test]
async fn a_full_gateway_budget_answers_503_retryable() {
    let server = TestServer::with_config(|config| {
        config.max_retained_bytes = 1024 * 1024;
    });
    let alice = server.create_session(ALICE_TOKEN).await.session_id;
    let firehose = json!({
        "agent": "firehose",
        "input": {"count": 1500, "size": 1000},
        "idempotency_key": "fill-the-budget",
    });
    let job = server
        .submit_ok(&alice, ALICE_TOKEN, firehose.clone())
        .await;
    server
        .wait_for_job(&alice, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    let bob = server.create_session(BOB_TOKEN).await.session_id;
    let (status, body) = server
        .submit(&bob, BOB_TOKEN, json!({"agent": "echo", "input": {}}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "INTERNAL_ERROR");
    assert_eq!(body["retryable"], true);
    // A resubmission of a job that was accepted still finds it (§7.2).
    let again = server.submit_ok(&alice, ALICE_TOKEN, firehose).await;
    assert_eq!(again, job);
    // Once alice acknowledges what she read, the bytes are free again.
    let done = server
        .wait_for_job(&alice, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    let (status, body) = server
        .post_json(
            &format!("/v1/sessions/{alice}/ack"),
            ALICE_TOKEN,
            &json!({"last_processed_seq": done["last_event_seq"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server
        .submit_ok(&bob, BOB_TOKEN, json!({"agent": "echo", "input": {}}))
        .await;
}
