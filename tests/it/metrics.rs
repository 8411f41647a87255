//! `/metrics`: a scripted scenario against a live gateway, then a scrape
//! whose names and values must tell exactly what happened; the credentials
//! the main listener asks for; the store's metrics with `--data-dir`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

/// One scrape: `name{labels}` (as printed) to value.
pub struct Scrape {
    pub text: String,
    pub samples: BTreeMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: String) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample line has a value: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("a numeric value in {line:?}"));
            samples.insert(key.to_owned(), value);
        }
        Scrape { text, samples }
    }

    /// The value of a sample, 0 when it was never created.
    pub fn value(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }

    /// The families the exposition declares (`# TYPE name kind`).
    pub fn families(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_owned)
            .collect()
    }
}

pub async fn scrape(server: &TestServer) -> Scrape {
    let response = within(
        "the scrape",
        server
            .client
            .get(server.url("/metrics"))
            .bearer_auth(ALICE_TOKEN)
            .send(),
    )
    .await
    .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("scrape body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape::parse(text)
}

/// Polls until `check` holds on a scrape (counters that a background task
/// updates, such as a stream's end).
async fn scrape_until(server: &TestServer, check: impl Fn(&Scrape) -> bool) -> Scrape {
    within("the expected scrape", async {
        loop {
            let scrape = scrape(server).await;
            if check(&scrape) {
                return scrape;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn the_main_listener_wants_an_api_token_for_metrics() {
    let server = TestServer::start();
    let session = server.create_session(ALICE_TOKEN).await;
    for credential in ["", "not-a-token-at-all", session.resume_token.as_str()] {
        let mut request = server.client.get(server.url("/metrics"));
        if !credential.is_empty() {
            request = request.bearer_auth(credential);
        }
        let response = within("metrics", request.send()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{credential}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], "UNAUTHENTICATED");
    }
    // Any principal's api token reads the aggregates.
    let response = server
        .client
        .get(server.url("/metrics"))
        .bearer_auth(BOB_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_scrape_after_a_scripted_scenario_tells_what_happened() {
    let server = TestServer::with_config(|config| config.max_body_bytes = 2048);
    let before = scrape(&server).await;
    assert_eq!(
        before.value(&format!(
            "arcp_gateway_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0,
        "{}",
        before.text
    );
    assert_eq!(before.value("arcp_gateway_sessions_created_total"), 0.0);

    // A session, an echo job and its idempotent repeat, a cancelled ticker.
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = session.session_id.clone();
    let echo = json!({"agent": "echo", "input": {"n": 1}, "idempotency_key": "k-1"});
    let echo_job = server.submit_ok(&sid, ALICE_TOKEN, echo.clone()).await;
    assert_eq!(server.submit_ok(&sid, ALICE_TOKEN, echo).await, echo_job);
    let ticker = server
        .submit_ok(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 1000, "interval_ms": 60000}}),
        )
        .await;
    let (status, _) = server.cancel(&sid, &ticker, ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    server
        .wait_for_job(&sid, &echo_job, ALICE_TOKEN, |job| {
            job["status"] == "success"
        })
        .await;

    // Both terminal events (and nothing else) are in the log.
    let appended = scrape(&server)
        .await
        .value("arcp_gateway_events_appended_total");
    assert_eq!(appended, 2.0);

    // A resume: the stream replays them.
    let mut stream = server.stream(&sid, &session.resume_token, None).await;
    assert_eq!(stream.status, StatusCode::OK);
    let rotated = stream.welcome().await.resume_token;
    let replayed = stream
        .events_until(|event| event.seq() == appended as u64)
        .await;
    assert_eq!(replayed.len(), 2);
    let during = scrape(&server).await;
    assert_eq!(
        during.value("arcp_gateway_streams_open{transport=\"http1\"}"),
        1.0
    );
    assert_eq!(
        during.value("arcp_gateway_stream_events_total{delivery=\"replay\"}"),
        appended
    );
    assert!(during.value("arcp_gateway_events_appended_bytes_total") > 100.0 * appended);

    // A live event on the open stream.
    server
        .submit_ok(&sid, ALICE_TOKEN, json!({"agent": "echo"}))
        .await;
    stream
        .events_until(|event| event.event == "job.result")
        .await;

    // A newer stream replaces it (a second good resume); the first token is
    // now superseded; a forged one fails its signature.
    let mut second = server
        .stream(&sid, &rotated, Some(appended as u64 + 1))
        .await;
    assert_eq!(second.status, StatusCode::OK);
    let newest = second.welcome().await.resume_token;
    assert!(stream.ended().await);
    let superseded = server.stream(&sid, &session.resume_token, None).await;
    assert_eq!(superseded.status, StatusCode::UNAUTHORIZED);
    let mut forged = newest.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let forged = server.stream(&sid, &forged, None).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    drop(second);

    // `POST /v1/sessions/resume` with the newest token.
    let (status, _) = server
        .post_json(
            "/v1/sessions/resume",
            "",
            &json!({"resume_token": newest, "last_event_seq": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // An HTTP/2 stream, a body over --max-body-bytes, an unknown route.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = within(
        "an HTTP/2 stream",
        h2.get(server.url(&format!("/v1/sessions/{sid}/events")))
            .bearer_auth(ALICE_TOKEN)
            .header("Last-Event-ID", appended.to_string())
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let h2_open = scrape(&server).await;
    assert_eq!(
        h2_open.value("arcp_gateway_streams_open{transport=\"http2\"}"),
        1.0
    );
    drop(response);
    let (status, _) = server
        .submit(
            &sid,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": "x".repeat(4096)}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = server.get_json("/v1/nothing-here", ALICE_TOKEN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Close the session.
    let response = server
        .client
        .delete(server.url(&format!("/v1/sessions/{sid}")))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let after = scrape_until(&server, |scrape| {
        scrape.value("arcp_gateway_streams_open{transport=\"http2\"}") == 0.0
            && scrape.value("arcp_gateway_streams_open{transport=\"http1\"}") == 0.0
    })
    .await;
    let expect = |key: &str, value: f64| {
        assert_eq!(after.value(key), value, "{key} in\n{}", after.text);
    };
    expect("arcp_gateway_sessions_created_total", 1.0);
    expect("arcp_gateway_sessions{state=\"open\"}", 0.0);
    expect("arcp_gateway_sessions{state=\"closed\"}", 1.0);
    expect("arcp_gateway_sessions_closed_total{reason=\"client\"}", 1.0);
    expect("arcp_gateway_jobs_accepted_total{agent=\"echo\"}", 2.0);
    expect("arcp_gateway_jobs_accepted_total{agent=\"ticker\"}", 1.0);
    expect(
        "arcp_gateway_jobs_finished_total{agent=\"echo\",status=\"success\"}",
        2.0,
    );
    expect(
        "arcp_gateway_jobs_finished_total{agent=\"ticker\",status=\"cancelled\"}",
        1.0,
    );
    expect("arcp_gateway_idempotent_hits_total", 1.0);
    expect("arcp_gateway_events_appended_total", appended + 1.0);
    expect("arcp_gateway_stream_events_total{delivery=\"live\"}", 1.0);
    expect("arcp_gateway_resumes_total{outcome=\"ok\"}", 3.0);
    expect("arcp_gateway_resumes_total{outcome=\"superseded\"}", 1.0);
    expect("arcp_gateway_resumes_total{outcome=\"bad_signature\"}", 1.0);
    expect(
        "arcp_gateway_streams_opened_total{transport=\"http1\"}",
        2.0,
    );
    expect(
        "arcp_gateway_streams_opened_total{transport=\"http2\"}",
        1.0,
    );
    // The first stream was replaced by the second; the second and the
    // HTTP/2 one ended when their clients went (or, for the latter, at the
    // close, which also replaces).
    assert!(after.value("arcp_gateway_stream_ends_total{reason=\"replaced\"}") >= 1.0);
    assert_eq!(
        after.value("arcp_gateway_stream_ends_total{reason=\"replaced\"}")
            + after.value("arcp_gateway_stream_ends_total{reason=\"client_gone\"}"),
        3.0
    );
    // The HTTP/2 stream replayed the live echo's result again.
    expect(
        "arcp_gateway_stream_events_total{delivery=\"replay\"}",
        appended + 1.0,
    );
    expect(
        "arcp_gateway_limit_refusals_total{limit=\"body_bytes\"}",
        1.0,
    );
    expect("arcp_gateway_store_queue_depth", 0.0);
    expect(
        "arcp_gateway_request_duration_seconds_count{route=\"CreateSession\",status=\"201\"}",
        1.0,
    );
    expect(
        "arcp_gateway_request_duration_seconds_count{route=\"SubmitJob\",status=\"202\"}",
        4.0,
    );
    expect(
        "arcp_gateway_request_duration_seconds_count{route=\"SubmitJob\",status=\"413\"}",
        1.0,
    );
    expect(
        "arcp_gateway_request_duration_seconds_count{route=\"SessionEvents\",status=\"401\"}",
        2.0,
    );
    expect(
        "arcp_gateway_request_duration_seconds_count{route=\"unmatched\",status=\"404\"}",
        1.0,
    );
    assert!(after.value("arcp_gateway_connections_accepted_total{transport=\"http1\"}") >= 1.0);
    assert_eq!(
        after.value("arcp_gateway_connections_accepted_total{transport=\"http2\"}"),
        1.0
    );
    // Bounded labels: no session, job or token value anywhere.
    for secret in [
        sid.as_str(),
        echo_job.as_str(),
        ticker.as_str(),
        ALICE_TOKEN,
    ] {
        assert!(
            !after.text.contains(secret),
            "{secret} leaked into /metrics"
        );
    }
    assert!(!after.text.contains("rt1."));
}

#[tokio::test]
async fn the_durable_store_reports_its_commits_and_queue() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_owned();
    let server = TestServer::with_config(move |config| config.data_dir = Some(data_dir));
    let session = server.create_session(ALICE_TOKEN).await;
    let job = server
        .submit_ok(
            &session.session_id,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 3, "interval_ms": 1}}),
        )
        .await;
    server
        .wait_for_job(&session.session_id, &job, ALICE_TOKEN, |job| {
            job["status"] == "success"
        })
        .await;
    let scrape = scrape_until(&server, |scrape| {
        scrape.value("arcp_gateway_store_queue_depth") == 0.0
    })
    .await;
    // At least the session record, the job record and its events.
    assert!(
        scrape.value("arcp_gateway_store_commit_seconds_count") >= 2.0,
        "{}",
        scrape.text
    );
    assert!(scrape.value("arcp_gateway_store_commit_seconds_sum") > 0.0);
    assert_eq!(scrape.value("arcp_gateway_events_appended_total"), 4.0);
}

#[tokio::test]
async fn metrics_listen_serves_the_exposition_alone_without_credentials() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_arcp-gateway"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--base-path", "/arcp"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let metrics_url = within("the metrics banner", async {
        loop {
            let line = lines.next_line().await.unwrap().expect("banner");
            if let Some(url) = line.strip_prefix("metrics on ") {
                return url.trim().to_owned();
            }
        }
    })
    .await;
    let client = reqwest::Client::new();
    let response = within("a scrape", client.get(&metrics_url).send())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let scrape = Scrape::parse(response.text().await.unwrap());
    assert!(scrape.families().len() >= 15, "{}", scrape.text);
    let base = metrics_url.trim_end_matches("/metrics");
    let prefixed = client
        .get(format!("{base}/arcp/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(prefixed.status(), StatusCode::OK);
    // Nothing else is served there.
    for path in ["/v1/agents", "/", "/arcp/v1/sessions", "/metricsx"] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let response = client.post(&metrics_url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let _ = child.start_kill();
}
