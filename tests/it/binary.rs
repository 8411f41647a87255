//! The real binary, started as a user would: defaults, the printed dev token,
//! `curl -N` as the README shows it, and graceful shutdown on SIGTERM.

use serde_json::Value;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

struct RunningBinary {
    child: Child,
    base: String,
    dev_token: String,
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts `arcp-gateway --listen 127.0.0.1:0` and reads the bound address
/// and the generated dev token from its standard output.
async fn start_binary(extra: &[&str]) -> RunningBinary {
    let mut child = Command::new(env!("CARGO_BIN_EXE_arcp-gateway"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("ARCP_GATEWAY_TOKENS")
        .env_remove("ARCP_GATEWAY_SECRETS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut base, mut dev_token) = (None, None);
    within("the start-up banner", async {
        while base.is_none() || dev_token.is_none() {
            let line = lines
                .next_line()
                .await
                .expect("read stdout")
                .expect("banner line");
            if let Some(address) = line.strip_prefix("arcp-gateway listening on ") {
                base = Some(address.trim().to_owned());
            }
            if let Some(rest) = line.strip_prefix("dev api token (principal `dev`): ") {
                dev_token = Some(rest.trim().to_owned());
            }
        }
    })
    .await;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    RunningBinary {
        child,
        base: base.unwrap(),
        dev_token: dev_token.unwrap(),
    }
}

async fn curl(args: &[&str]) -> String {
    let output = within("curl", Command::new("curl").args(args).output())
        .await
        .expect("curl must be installed");
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test]
async fn the_readme_curl_walkthrough_works_against_the_real_binary() {
    let gateway = start_binary(&[]).await;
    let auth = format!("Authorization: Bearer {}", gateway.dev_token);
    let base = &gateway.base;
    let created: Value = serde_json::from_str(
        &curl(&[
            "-s",
            "-X",
            "POST",
            "-H",
            &auth,
            &format!("{base}/v1/sessions"),
        ])
        .await,
    )
    .unwrap();
    let sid = created["session_id"].as_str().unwrap().to_owned();
    let submitted = curl(&[
        "-s",
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"agent":"ticker","input":{"count":5,"interval_ms":100}}"#,
        &format!("{base}/v1/sessions/{sid}/jobs"),
    ])
    .await;
    let accepted: Value = serde_json::from_str(&submitted).unwrap();
    assert_eq!(accepted["type"], "job.accepted");

    // `curl -N` streams until --max-time; everything up to the result arrives.
    let streamed = curl(&[
        "-sN",
        "--max-time",
        "2",
        "-H",
        &auth,
        &format!("{base}/v1/sessions/{sid}/events"),
    ])
    .await;
    assert!(
        streamed.starts_with("retry: 2000\n\nevent: session.welcome\ndata: {"),
        "{streamed}"
    );
    for seq in 1..=6 {
        assert!(
            streamed.contains(&format!("\nid: {seq}\n")),
            "event {seq} in {streamed}"
        );
    }
    assert!(streamed.contains("event: job.result\n"));

    // Resume after event 3 with the rotated token from the stream's welcome.
    let welcome_line = streamed
        .lines()
        .find(|l| l.starts_with("data: ") && l.contains("session.welcome"))
        .unwrap();
    let welcome: Value = serde_json::from_str(&welcome_line["data: ".len()..]).unwrap();
    let token = welcome["payload"]["resume_token"].as_str().unwrap();
    let resumed = curl(&[
        "-sN",
        "--max-time",
        "1",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Last-Event-ID: 3",
        &format!("{base}/v1/sessions/{sid}/events"),
    ])
    .await;
    assert!(
        !resumed.contains("\nid: 3\n"),
        "no duplicate of acknowledged events"
    );
    assert!(
        resumed.contains("\nid: 4\n") && resumed.contains("\nid: 6\n"),
        "{resumed}"
    );
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_cleanly() {
    let mut gateway = start_binary(&["--heartbeat-interval-sec", "1"]).await;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/v1/sessions", gateway.base))
        .bearer_auth(&gateway.dev_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = created["session_id"].as_str().unwrap();
    let response = client
        .get(format!("{}/v1/sessions/{sid}/events", gateway.base))
        .bearer_auth(&gateway.dev_token)
        .send()
        .await
        .unwrap();
    let mut stream = SseStream::from_response(response).await;
    stream.welcome().await;

    let pid = gateway.child.id().expect("pid").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    assert!(stream.ended().await);
    let exit = within("the gateway to exit", gateway.child.wait())
        .await
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test]
async fn invalid_configuration_exits_with_code_2() {
    let output = within(
        "the gateway to refuse its configuration",
        Command::new(env!("CARGO_BIN_EXE_arcp-gateway"))
            .args(["--token", "no-colon-here"])
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PRINCIPAL:API_TOKEN"), "{stderr}");
}
