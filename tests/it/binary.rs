//! The real binary, started as a user would: defaults, the printed dev token,
//! `curl -N` as the README shows it, and graceful shutdown on SIGTERM.

use serde_json::Value;
use tokio::process::Command;

use crate::support::*;

async fn start_binary(extra: &[&str]) -> GatewayProcess {
    GatewayProcess::start(extra).await
}

fn dev_token(gateway: &GatewayProcess) -> &str {
    gateway.dev_token.as_deref().expect("a generated dev token")
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
    let auth = format!("Authorization: Bearer {}", dev_token(&gateway));
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
        .bearer_auth(dev_token(&gateway))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = created["session_id"].as_str().unwrap();
    let response = client
        .get(format!("{}/v1/sessions/{sid}/events", gateway.base))
        .bearer_auth(dev_token(&gateway))
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
