//! Logs as operators read them: the real binary with `--log-format json` at
//! the most verbose level (`ARCP_GATEWAY_LOG=trace`, every crate included)
//! through a scripted scenario. Every line must be one JSON object with the
//! documented keys, the request fields must be there, and no api token,
//! resume token, secret, cookie value or upstream credential may appear in
//! any line.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::support::*;

const API_TOKEN: &str = "alice-log-test-token-5d2e8b";
const OTHER_API_TOKEN: &str = "bob-log-test-token-71c3aa";
const SECRET: &str = "log-test-signing-secret-9a8b7c6d5e";
const UPSTREAM_AUTH: &str = "Bearer upstream-credential-0e4f2a77";
const WRONG_TOKEN: &str = "wrong-api-token-4c1d7e";

/// A one-shot HTTP agent: answers every job with a result line.
async fn upstream_agent() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/run", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // The head and the small job body arrive together; read
                // until the body's closing brace.
                while !request.ends_with(b"}") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let body = "{\"result\":{\"ok\":true}}\n";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, task)
}

fn resume_token_of(envelope: &Value) -> String {
    envelope["payload"]["resume_token"]
        .as_str()
        .expect("a resume token")
        .to_owned()
}

#[tokio::test]
async fn json_logs_at_trace_level_carry_request_fields_and_never_a_secret() {
    let (upstream_url, upstream) = upstream_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents.toml");
    std::fs::write(
        &agents,
        format!(
            "[[agent]]\nname = \"upstream\"\n  [[agent.version]]\n  version = \"1.0.0\"\n  url = \"{upstream_url}\"\n  authorization_env = \"LOGTEST_UPSTREAM_AUTH\"\n"
        ),
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_arcp-gateway"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--token", &format!("alice:{API_TOKEN}")])
        .args(["--token", &format!("bob:{OTHER_API_TOKEN}")])
        .args(["--secret", SECRET])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--agents")
        .arg(&agents)
        .env("ARCP_GATEWAY_LOG", "trace")
        .env("LOGTEST_UPSTREAM_AUTH", UPSTREAM_AUTH)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary starts");
    let stderr = child.stderr.take().unwrap();
    let collected = tokio::spawn(async move {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text).await;
        text
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = within("the banner", async {
        loop {
            let line = stdout.next_line().await.unwrap().expect("banner");
            if let Some(address) = line.strip_prefix("arcp-gateway listening on ") {
                return address.trim().to_owned();
            }
        }
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut secrets = vec![
        API_TOKEN.to_owned(),
        OTHER_API_TOKEN.to_owned(),
        SECRET.to_owned(),
        UPSTREAM_AUTH.to_owned(),
        "upstream-credential-0e4f2a77".to_owned(),
        WRONG_TOKEN.to_owned(),
    ];

    // Create a session; submit a ticker and the upstream agent's job.
    let created: Value = client
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = created["session_id"].as_str().unwrap().to_owned();
    let first_token = resume_token_of(&created);
    secrets.push(first_token.clone());
    let submit = |body: Value| {
        client
            .post(format!("{base}/v1/sessions/{sid}/jobs"))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
    };
    let ticker = submit(json!({"agent": "ticker", "input": {"count": 2, "interval_ms": 10}}))
        .await
        .unwrap();
    assert_eq!(ticker.status(), StatusCode::ACCEPTED);
    let upstream_job = submit(json!({"agent": "upstream", "input": {"x": 1}}))
        .await
        .unwrap();
    assert_eq!(upstream_job.status(), StatusCode::ACCEPTED);

    // Stream with the resume token until both jobs ended.
    let response = client
        .get(format!("{base}/v1/sessions/{sid}/events"))
        .bearer_auth(&first_token)
        .send()
        .await
        .unwrap();
    for cookie in response.headers().get_all("set-cookie") {
        secrets.push(cookie.to_str().unwrap().to_owned());
    }
    let mut stream = SseStream::from_response(response).await;
    let streamed_token = stream.welcome().await.resume_token;
    secrets.push(streamed_token.clone());
    let mut results = 0;
    let events = stream
        .events_until(|event| event.event == "job.result" || event.event == "job.error")
        .await;
    results += events.iter().filter(|e| e.event == "job.result").count();
    if results < 2 {
        let more = stream
            .events_until(|event| event.event == "job.result" || event.event == "job.error")
            .await;
        results += more.iter().filter(|e| e.event == "job.result").count();
    }
    assert_eq!(results, 2, "both jobs succeeded");
    drop(stream);

    // Resume explicitly, then stream with the cookie and the query token.
    let resumed: Value = client
        .post(format!("{base}/v1/sessions/resume"))
        .json(&json!({"resume_token": streamed_token}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resumed_token = resume_token_of(&resumed);
    secrets.push(resumed_token.clone());
    let response = client
        .get(format!(
            "{base}/v1/sessions/{sid}/events?resume_token={resumed_token}"
        ))
        .header("cookie", format!("arcp_resume={resumed_token}"))
        .header("Last-Event-ID", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = SseStream::from_response(response).await;
    let latest = stream.welcome().await.resume_token;
    secrets.push(latest.clone());

    // Submit and cancel with the resume token as the credential.
    let long: Value = client
        .post(format!("{base}/v1/sessions/{sid}/jobs"))
        .bearer_auth(&latest)
        .json(&json!({"agent": "ticker", "input": {"count": 100, "interval_ms": 1000}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = long["payload"]["job_id"].as_str().unwrap().to_owned();
    let cancelled = client
        .post(format!("{base}/v1/sessions/{sid}/jobs/{job}/cancel"))
        .bearer_auth(&latest)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    drop(stream);

    // Bad credentials: an unknown api token, a superseded and a forged
    // resume token, another principal, a resume token where an api token
    // is required.
    let status =
        |request: reqwest::RequestBuilder| async move { request.send().await.unwrap().status() };
    assert_eq!(
        status(
            client
                .get(format!("{base}/v1/agents"))
                .bearer_auth(WRONG_TOKEN)
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(client.get(format!("{base}/v1/agents")).bearer_auth(&latest)).await,
        StatusCode::UNAUTHORIZED
    );
    let events_url = format!("{base}/v1/sessions/{sid}/events");
    assert_eq!(
        status(client.get(&events_url).bearer_auth(&first_token)).await,
        StatusCode::UNAUTHORIZED
    );
    let forged = format!("{}x", &latest[..latest.len() - 1]);
    secrets.push(forged.clone());
    assert_eq!(
        status(client.get(&events_url).bearer_auth(&forged)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(
            client
                .get(format!("{base}/v1/sessions/{sid}"))
                .bearer_auth(OTHER_API_TOKEN)
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(client.get(format!("{base}/metrics")).bearer_auth(API_TOKEN)).await,
        StatusCode::OK
    );
    // The same over HTTP/2.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    assert_eq!(
        status(
            h2.get(format!("{base}/v1/sessions/{sid}"))
                .bearer_auth(API_TOKEN)
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        status(
            client
                .delete(format!("{base}/v1/sessions/{sid}"))
                .bearer_auth(&latest)
        )
        .await,
        StatusCode::OK
    );

    // Stop the gateway cleanly and read everything it logged.
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let exit = within("the gateway to stop", child.wait()).await.unwrap();
    assert!(exit.success(), "{exit:?}");
    let logged = within("standard error", collected).await.unwrap();
    upstream.abort();

    let mut lines = Vec::new();
    for line in logged.lines() {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(value.get(key).is_some(), "no {key:?} in {line}");
        }
        // Other crates may log fields alone; the gateway's lines say what
        // happened in words.
        if value["target"]
            .as_str()
            .unwrap()
            .starts_with("arcp_gateway")
        {
            assert!(value["message"].is_string(), "no message in {line}");
        }
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "a secret ({}…) appears in a log line: {line}",
                &secret[..8]
            );
        }
        lines.push(value);
    }
    assert!(
        lines.len() > 100,
        "trace level logs plenty: {}",
        lines.len()
    );
    assert!(
        lines.iter().any(|line| line["level"] == "TRACE"),
        "trace lines were written"
    );
    let find = |message: &str| {
        lines
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line"))
    };
    let created = find("session created");
    assert_eq!(created["span"]["route"], "CreateSession", "{created}");
    assert_eq!(created["span"]["principal"], "alice", "{created}");
    assert_eq!(created["session"], sid.as_str(), "{created}");
    let accepted = find("job accepted");
    assert_eq!(accepted["span"]["route"], "SubmitJob");
    assert_eq!(accepted["span"]["session"], sid.as_str());
    assert!(accepted["job"].is_string(), "{accepted}");
    let access = lines
        .iter()
        .find(|line| {
            line["target"] == "arcp_gateway::access" && line["span"]["route"] == "CancelJob"
        })
        .expect("an access line for the cancel");
    assert_eq!(access["status"], 200, "{access}");
    assert!(access["duration_ms"].as_f64().is_some(), "{access}");
    assert_eq!(access["span"]["job"], job.as_str(), "{access}");
    assert_eq!(access["span"]["principal"], "alice", "{access}");
}
