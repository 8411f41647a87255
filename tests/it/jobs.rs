//! Jobs (§7, §8, §9.5): submission, agents and versions, cancellation
//! authority, idempotency, timeouts, lease expiry and streamed results.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::support::*;

#[tokio::test]
async fn only_the_submitting_session_may_cancel() {
    let server = TestServer::start();
    let owner = server.create_session(ALICE_TOKEN).await;
    let other = server.create_session(ALICE_TOKEN).await;
    let bob = server.create_session(BOB_TOKEN).await;
    let job = server
        .submit_ok(
            &owner.session_id,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 1000, "interval_ms": 50}}),
        )
        .await;

    let (status, body) = server.cancel(&other.session_id, &job, ALICE_TOKEN).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "same principal, other session: {body}"
    );
    assert_eq!(body["code"], "PERMISSION_DENIED");
    let (status, body) = server.cancel(&bob.session_id, &job, BOB_TOKEN).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another principal must not learn the job exists"
    );
    assert_eq!(body["code"], "JOB_NOT_FOUND");
    let (status, _) = server
        .get_json(
            &format!("/v1/sessions/{}/jobs/{job}", bob.session_id),
            BOB_TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = server.cancel(&owner.session_id, &job, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.cancel(&owner.session_id, &job, ALICE_TOKEN).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "cancelling a finished job: {body}"
    );

    let mut stream = server.stream(&owner.session_id, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    let errors: Vec<_> = events.iter().filter(|e| e.event == "job.error").collect();
    assert_eq!(errors.len(), 1, "exactly one terminal event");
    assert_eq!(errors[0].data["payload"]["code"], "CANCELLED");
}

#[tokio::test]
async fn idempotent_resubmission_returns_the_same_job() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let body = json!({"agent": "echo", "input": {"n": 1}, "idempotency_key": "key-1"});
    let (status, first) = server.submit(sid, ALICE_TOKEN, body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, again) = server.submit(sid, ALICE_TOKEN, body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        first["payload"], again["payload"],
        "the same job.accepted payload"
    );

    let (status, conflict) = server
        .submit(
            sid,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": {"n": 2}, "idempotency_key": "key-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict["code"], "DUPLICATE_KEY");

    // Keys are scoped per principal.
    let bob = server.create_session(BOB_TOKEN).await;
    let (status, bobs) = server
        .submit(
            &bob.session_id,
            BOB_TOKEN,
            json!({"agent": "echo", "input": {"n": 1}, "idempotency_key": "key-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(bobs["payload"]["job_id"], first["payload"]["job_id"]);
}

#[tokio::test]
async fn agents_resolve_by_name_and_version() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let (status, accepted) = server
        .submit(sid, ALICE_TOKEN, json!({"agent": "echo"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(accepted["payload"]["agent"], "echo@1.0.0");
    let (status, _) = server
        .submit(sid, ALICE_TOKEN, json!({"agent": "echo@1.0.0"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let cases: [(&str, StatusCode, &str); 4] = [
        (
            "echo@2.0.0",
            StatusCode::NOT_FOUND,
            "AGENT_VERSION_NOT_AVAILABLE",
        ),
        ("nobody", StatusCode::NOT_FOUND, "AGENT_NOT_AVAILABLE"),
        ("Echo", StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
        ("echo@", StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
    ];
    for (agent, expected_status, expected_code) in cases {
        let (status, body) = server
            .submit(sid, ALICE_TOKEN, json!({"agent": agent}))
            .await;
        assert_eq!(status, expected_status, "{agent}: {body}");
        assert_eq!(body["code"], expected_code, "{agent}");
    }
    let (status, inventory) = server.get_json("/v1/agents", ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = inventory["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["echo", "ticker", "chunker", "fail", "firehose", "spender"]
    );
    let echo = &inventory["agents"][0];
    assert_eq!(echo["versions"], json!(["0.9.0", "1.0.0"]));
    assert_eq!(echo["default"], "1.0.0");

    // A pinned older version runs that version's code.
    let legacy = server
        .submit_ok(sid, ALICE_TOKEN, json!({"agent": "echo@0.9.0", "input": 7}))
        .await;
    let status = server
        .wait_for_job(sid, &legacy, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    assert_eq!(status["agent"], "echo@0.9.0");
    assert_eq!(status["terminal"]["result"], json!({"echoed": 7}));
}

#[tokio::test]
async fn max_runtime_ends_a_job_with_timeout_exactly_once() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(sid, ALICE_TOKEN, json!({"agent": "ticker", "input": {"count": 100, "interval_ms": 100}, "max_runtime_sec": 1}))
        .await;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    let terminal = events.last().unwrap();
    assert_eq!(terminal.event, "job.error");
    assert_eq!(terminal.data["payload"]["final_status"], "timed_out");
    assert_eq!(terminal.data["payload"]["code"], "TIMEOUT");
    assert!(events.len() < 100, "the agent was stopped");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = server.wait_for_job(sid, &job, ALICE_TOKEN, |_| true).await;
    assert_eq!(status["status"], "timed_out");
    assert_eq!(
        status["last_event_seq"],
        terminal.seq(),
        "nothing after the terminal event"
    );
}

fn in_seconds(seconds: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(seconds))
        .replace_nanosecond(0)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn a_lease_that_expires_mid_job_ends_it_with_lease_expired() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let expires_at = in_seconds(2);
    let (status, accepted) = server
        .submit(
            sid,
            ALICE_TOKEN,
            json!({
                "agent": "ticker",
                "input": {"count": 1000, "interval_ms": 50},
                "lease_request": {"tool.call": ["search.*"], "cost.budget": ["USD:5.00"]},
                "lease_constraints": {"expires_at": expires_at}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        accepted["payload"]["lease_constraints"]["expires_at"],
        expires_at.as_str()
    );
    assert_eq!(
        accepted["payload"]["lease"]["tool.call"],
        json!(["search.*"])
    );
    let job = accepted["payload"]["job_id"].as_str().unwrap();
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(job)).await;
    let terminal = &events.last().unwrap().data["payload"];
    assert_eq!(terminal["code"], "LEASE_EXPIRED");
    assert_eq!(terminal["final_status"], "error");
    assert_eq!(terminal["retryable"], false);
}

#[tokio::test]
async fn invalid_leases_are_rejected_at_submission() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let bad: [Value; 6] = [
        json!({"agent": "echo", "lease_constraints": {"expires_at": in_seconds(-5)}}),
        json!({"agent": "echo", "lease_constraints": {"expires_at": "2099-01-01T00:00:00+02:00"}}),
        json!({"agent": "echo", "lease_constraints": {"expires_at": "tomorrow"}}),
        json!({"agent": "echo", "lease_request": {"fs.read": "/tmp"}}),
        json!({"agent": "echo", "lease_request": {"cost.budget": ["five dollars"]}}),
        json!({"agent": "echo", "lease_request": {"Bad Namespace": ["x"]}}),
    ];
    for body in bad {
        let (status, error) = server.submit(sid, ALICE_TOKEN, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error["code"], "INVALID_REQUEST");
    }
}

#[tokio::test]
async fn chunked_results_arrive_in_order_and_assemble_to_the_reported_size() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "chunker", "input": {"size": 10000, "chunk_size": 3000}}),
        )
        .await;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, 1, 5);
    let chunks: Vec<&Value> = events[..4].iter().map(|e| &e.data["payload"]).collect();
    let mut assembled = String::new();
    for (index, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["kind"], "result_chunk");
        assert_eq!(chunk["body"]["chunk_seq"], index);
        assert_eq!(chunk["body"]["encoding"], "utf8");
        assert_eq!(chunk["body"]["more"], index < 3);
        assembled.push_str(chunk["body"]["data"].as_str().unwrap());
    }
    let result = &events[4].data["payload"];
    assert_eq!(events[4].event, "job.result");
    assert_eq!(result["result_id"], chunks[0]["body"]["result_id"]);
    assert_eq!(result["result_size"], 10000);
    assert_eq!(assembled.len(), 10000);
    assert!(
        result.get("result").is_none(),
        "never an inline result with chunks (§8.4)"
    );
}

#[tokio::test]
async fn echo_and_fail_end_with_their_terminal_payloads() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let echo = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": {"hello": ["world", 1]}}),
        )
        .await;
    let fail = server
        .submit_ok(sid, ALICE_TOKEN, json!({"agent": "fail", "input": {"code": "BUDGET_EXHAUSTED", "message": "spent", "retryable": true}}))
        .await;
    let echo_status = server
        .wait_for_job(sid, &echo, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    assert_eq!(
        echo_status["terminal"]["result"],
        json!({"hello": ["world", 1]})
    );
    let fail_status = server
        .wait_for_job(sid, &fail, ALICE_TOKEN, |job| job["status"] == "error")
        .await;
    assert_eq!(fail_status["terminal"]["code"], "BUDGET_EXHAUSTED");
    assert_eq!(
        fail_status["terminal"]["retryable"], false,
        "§12: BUDGET_EXHAUSTED is never retryable"
    );
    assert_eq!(fail_status["agent"], "fail@1.0.0");
}

#[tokio::test]
async fn a_traceparent_header_becomes_the_trace_id() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let response = server
        .client
        .post(server.url(&format!("/v1/sessions/{}/jobs", session.session_id)))
        .bearer_auth(ALICE_TOKEN)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"agent": "echo"}))
        .send()
        .await
        .unwrap();
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(
        accepted["payload"]["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(accepted["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let job = accepted["payload"]["job_id"].as_str().unwrap();
    let mut stream = server.stream(&session.session_id, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(job)).await;
    assert_eq!(
        events[0].data["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    // An invalid traceparent is ignored and a fresh trace id is generated.
    let response = server
        .client
        .post(server.url(&format!("/v1/sessions/{}/jobs", session.session_id)))
        .bearer_auth(ALICE_TOKEN)
        .header(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )
        .json(&json!({"agent": "echo"}))
        .send()
        .await
        .unwrap();
    let accepted: Value = response.json().await.unwrap();
    let trace_id = accepted["payload"]["trace_id"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32);
    assert_ne!(trace_id, "00000000000000000000000000000000");
}

#[tokio::test]
async fn the_job_status_endpoint_reports_progress_and_the_terminal_payload() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 3, "interval_ms": 0}}),
        )
        .await;
    let status = server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    assert_eq!(status["last_event_seq"], 4);
    let mut terminal = status["terminal"].clone();
    assert!(terminal["completed_at"].is_string(), "{terminal}");
    terminal.as_object_mut().unwrap().remove("completed_at");
    assert_eq!(
        terminal,
        json!({"final_status": "success", "result": {"ticks": 3}})
    );
    assert_eq!(status["agent"], "ticker@1.0.0");
    let (status, body) = server
        .get_json(&format!("/v1/sessions/{sid}/jobs/job_nope"), ALICE_TOKEN)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "JOB_NOT_FOUND");
}

#[tokio::test]
async fn budgets_are_decremented_by_cost_metrics_and_exhaustion_ends_the_job_once() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let (status, accepted) = server
        .submit(
            sid,
            ALICE_TOKEN,
            json!({
                "agent": "spender",
                "input": {"steps": 10, "cost": 0.4, "currency": "USD", "interval_ms": 0},
                "lease_request": {"cost.budget": ["USD:1.00", "credits:50"]}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(
        accepted["payload"]["budget"],
        json!({"USD": "USD:1.00", "credits": "credits:50"}),
        "amounts echoed as CURRENCY:DECIMAL strings, as the official SDKs read them"
    );
    let job = accepted["payload"]["job_id"].as_str().unwrap();
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(job)).await;
    let remaining: Vec<f64> = events
        .iter()
        .filter(|e| e.data["payload"]["body"]["name"] == "cost.budget.remaining")
        .map(|e| e.data["payload"]["body"]["value"].as_f64().unwrap())
        .collect();
    assert_eq!(
        remaining.len(),
        3,
        "one remaining-metric per decrement: {remaining:?}"
    );
    assert!(
        (remaining[0] - 0.6).abs() < 1e-9
            && (remaining[1] - 0.2).abs() < 1e-9
            && remaining[2] <= 0.0
    );
    let terminal = &events.last().unwrap().data["payload"];
    assert_eq!(terminal["code"], "BUDGET_EXHAUSTED");
    assert_eq!(terminal["final_status"], "error");
    assert_eq!(terminal["retryable"], false);
    let errors = events.iter().filter(|e| e.event == "job.error").count();
    assert_eq!(errors, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = server.wait_for_job(sid, job, ALICE_TOKEN, |_| true).await;
    assert_eq!(
        status["last_event_seq"],
        events.last().unwrap().seq(),
        "the agent was stopped"
    );
    assert_eq!(
        status["budget"]["credits"], 50.0,
        "other currencies are untouched"
    );
}

#[tokio::test]
async fn negative_costs_are_rejected_without_a_decrement() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({
                "agent": "spender",
                "input": {"steps": 2, "cost": -1.0, "interval_ms": 0},
                "lease_request": {"cost.budget": ["USD:1.00"]}
            }),
        )
        .await;
    let status = server
        .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
        .await;
    assert_eq!(status["budget"]["USD"], 1.0);
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    let warnings = events
        .iter()
        .filter(|e| e.data["payload"]["kind"] == "log")
        .count();
    assert_eq!(warnings, 2, "each negative cost is reported, not applied");
}

#[tokio::test]
async fn result_chunk_rules_are_enforced_with_internal_error() {
    let server = TestServer::with_config(|config| {
        config.max_result_chunk_bytes = 2000;
        config.max_result_bytes = 5000;
    });
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let cases = [
        (
            json!({"size": 3000, "chunk_size": 2500}),
            "exceeds the 2000 byte cap",
        ),
        (
            json!({"size": 8000, "chunk_size": 2000}),
            "streamed result exceeds",
        ),
        (
            json!({"size": 3000, "chunk_size": 1000, "violate": "out_of_order"}),
            "out of order",
        ),
        (
            json!({"size": 3000, "chunk_size": 1000, "violate": "inline_result"}),
            "inline result",
        ),
    ];
    for (input, expected) in cases {
        let job = server
            .submit_ok(
                sid,
                ALICE_TOKEN,
                json!({"agent": "chunker", "input": input}),
            )
            .await;
        let status = server
            .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "error")
            .await;
        assert_eq!(status["terminal"]["code"], "INTERNAL_ERROR", "{input}");
        assert_eq!(
            status["terminal"]["retryable"], true,
            "§12: INTERNAL_ERROR is retryable"
        );
        let message = status["terminal"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{input}: {message}");
    }
}

#[tokio::test]
async fn the_firehose_emits_numbered_timestamped_events_at_the_asked_rate() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let started = std::time::Instant::now();
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "firehose", "input": {"count": 300, "size": 16, "rate": 1000}}),
        )
        .await;
    let mut stream = server.stream(sid, ALICE_TOKEN, None).await;
    stream.welcome().await;
    let events = stream.events_until(is_terminal_for(&job)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "300 events at 1000/s take about 0.3 s"
    );
    assert_contiguous(&events, 1, 301);
    let mut previous_ts = 0;
    for (index, event) in events[..300].iter().enumerate() {
        let body = &event.data["payload"]["body"];
        assert_eq!(body["n"], index as u64 + 1);
        assert_eq!(body["message"].as_str().unwrap().len(), 16);
        let ts = body["ts_ns"].as_u64().unwrap();
        assert!(ts >= previous_ts, "timestamps never go backwards");
        previous_ts = ts;
    }
    assert_eq!(events[300].data["payload"]["result"]["emitted"], 300);
}

#[tokio::test]
async fn a_session_keeps_a_bounded_number_of_job_records() {
    let server = TestServer::with_config(|config| config.max_jobs_per_session = 3);
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let mut finished = Vec::new();
    for n in 0..3 {
        let job = server
            .submit_ok(sid, ALICE_TOKEN, json!({"agent": "echo", "input": n}))
            .await;
        server
            .wait_for_job(sid, &job, ALICE_TOKEN, |job| job["status"] == "success")
            .await;
        finished.push(job);
    }
    // A fourth job makes the oldest finished record go; its events stay.
    let fourth = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 1000, "interval_ms": 50}}),
        )
        .await;
    let (status, _) = server
        .get_json(
            &format!("/v1/sessions/{sid}/jobs/{}", finished[0]),
            ALICE_TOKEN,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the oldest finished job was forgotten"
    );
    let (status, _) = server
        .get_json(
            &format!("/v1/sessions/{sid}/jobs/{}", finished[1]),
            ALICE_TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = server.stream(sid, ALICE_TOKEN, Some(0)).await;
    stream.welcome().await;
    let first = stream.next_event().await.unwrap();
    assert_eq!(
        first.data["job_id"],
        finished[0].as_str(),
        "its events are still in the log"
    );

    // When every retained job is still running, a new one is refused.
    for _ in 0..2 {
        server
            .submit_ok(
                sid,
                ALICE_TOKEN,
                json!({"agent": "ticker", "input": {"count": 1000, "interval_ms": 50}}),
            )
            .await;
    }
    let (status, body) = server
        .submit(sid, ALICE_TOKEN, json!({"agent": "echo"}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "PERMISSION_DENIED");
    // Cancelling one frees a slot.
    let (status, _) = server.cancel(sid, &fourth, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .submit(sid, ALICE_TOKEN, json!({"agent": "echo"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}
