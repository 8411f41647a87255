//! Browsers and reverse proxies, server side: HTTP/2 cleartext beside
//! HTTP/1.1, CORS, base path, trusted proxies, stream duration limits, the
//! shutdown retry hint, the status probe and the embedded assets.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn http2_prior_knowledge_and_http1_share_one_port() {
    let server = TestServer::start();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let response = h1.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);

    // Several streams multiplexed on one HTTP/2 connection.
    let session = server.create_session(ALICE_TOKEN).await;
    let other = server.create_session(ALICE_TOKEN).await;
    let mut streams = Vec::new();
    for sid in [&session.session_id, &other.session_id] {
        let response = h2
            .get(server.url(&format!("/v1/sessions/{sid}/events")))
            .bearer_auth(ALICE_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let mut stream = SseStream::from_response(response).await;
        stream.welcome().await;
        streams.push(stream);
    }
    let job = server
        .submit_ok(
            &other.session_id,
            ALICE_TOKEN,
            json!({"agent": "echo", "input": 1}),
        )
        .await;
    let events = streams[1].events_until(is_terminal_for(&job)).await;
    assert_contiguous(&events, 1, 1);
}

#[tokio::test]
async fn cors_allows_listed_origins_with_credentials_and_refuses_others() {
    let server =
        TestServer::with_config(|config| config.cors_origins = vec!["https://app.example".into()]);
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/v1/sessions"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        preflight.headers()["access-control-allow-credentials"],
        "true"
    );
    assert!(preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));

    let refused = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/v1/sessions"))
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));

    let response = server
        .client
        .post(server.url("/v1/sessions"))
        .header("Origin", "https://app.example")
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let foreign = server
        .client
        .post(server.url("/v1/sessions"))
        .header("Origin", "https://evil.example")
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(!foreign
        .headers()
        .contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn a_base_path_prefixes_every_route_and_the_cookie() {
    let server = TestServer::with_config(|config| config.base_path = "/arcp".into());
    let response = server
        .client
        .post(server.url("/arcp/v1/sessions"))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let welcome = Welcome::from_envelope(response.json().await.unwrap());
    assert!(
        cookie.contains(&format!("Path=/arcp/v1/sessions/{}", welcome.session_id)),
        "{cookie}"
    );
    let response = server
        .client
        .post(server.url("/v1/sessions"))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "outside the base path"
    );
    let response = server
        .client
        .get(server.url("/arcp/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = server
        .client
        .get(server.url(&format!("/arcp/v1/sessions/{}/events", welcome.session_id)))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    let mut stream = SseStream::from_response(response).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.welcome().await;
}

#[tokio::test]
async fn forwarded_https_marks_the_cookie_secure_only_from_trusted_proxies() {
    let cookie_for = |server: &TestServer| {
        let request = server
            .client
            .post(server.url("/v1/sessions"))
            .bearer_auth(ALICE_TOKEN)
            .header("X-Forwarded-Proto", "https");
        async move {
            request.send().await.unwrap().headers()["set-cookie"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    let trusting = TestServer::with_config(|config| {
        config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]
    });
    assert!(cookie_for(&trusting).await.contains("Secure"));
    let untrusting = TestServer::start();
    assert!(
        !cookie_for(&untrusting).await.contains("Secure"),
        "the header alone proves nothing"
    );
}

#[tokio::test]
async fn streams_end_at_their_maximum_duration_with_a_retry_hint_and_resume() {
    let server = TestServer::with_config(|config| {
        config.max_stream_duration = Some(Duration::from_millis(800));
        config.retry = Duration::from_millis(250);
    });
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let job = server
        .submit_ok(
            sid,
            ALICE_TOKEN,
            json!({"agent": "ticker", "input": {"count": 30, "interval_ms": 50}}),
        )
        .await;
    let mut all = Vec::new();
    let mut cursor = None;
    let mut connections = 0;
    loop {
        connections += 1;
        let mut stream = server.stream(sid, ALICE_TOKEN, cursor).await;
        stream.welcome().await;
        let mut finished = false;
        while let Some(event) = stream.next_event().await {
            cursor = Some(event.seq());
            finished = is_terminal_for(&job)(&event);
            all.push(event);
            if finished {
                break;
            }
        }
        if finished {
            break;
        }
        assert_eq!(
            stream.retry_lines.last().map(String::as_str),
            Some("250"),
            "the stream ends with a retry hint"
        );
    }
    assert!(
        connections >= 2,
        "the 1.5 s job outlived at least one 0.8 s stream"
    );
    assert_contiguous(&all, 1, 31);
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_retry_hint() {
    let server = TestServer::with_config(|config| config.retry = Duration::from_millis(1234));
    let session = server.create_session(ALICE_TOKEN).await;
    let mut stream = server.stream(&session.session_id, ALICE_TOKEN, None).await;
    stream.welcome().await;
    drop(server);
    assert!(stream.ended().await);
    assert_eq!(
        stream.retry_lines,
        vec!["1234".to_owned(), "1234".to_owned()]
    );
}

#[tokio::test]
async fn the_status_probe_tells_a_browser_why_its_stream_closed() {
    let server =
        TestServer::with_config(|config| config.resume_window = Duration::from_millis(500));
    let session = server.create_session(ALICE_TOKEN).await;
    let sid = &session.session_id;
    let cookie = format!("arcp_resume={}", session.resume_token);
    let probe = || {
        server
            .client
            .get(server.url(&format!("/v1/sessions/{sid}")))
            .header("Cookie", cookie.clone())
            .send()
    };
    let response = probe().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["type"], "session.status");
    assert_eq!(status["payload"]["last_event_seq"], 0);
    assert_eq!(status["payload"]["stream_attached"], false);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let response = probe().await.unwrap();
    assert_eq!(response.status(), StatusCode::GONE);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["code"], "RESUME_WINDOW_EXPIRED");
}

#[tokio::test]
async fn the_console_and_client_module_are_served_from_the_binary() {
    let server = TestServer::start();
    for (path, content_type, marker) in [
        ("/", "text/html", "<"),
        ("/console.js", "text/javascript", ""),
        ("/console.css", "text/css", ""),
        ("/v1/client.js", "text/javascript", "ArcpClient"),
    ] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(response.text().await.unwrap().contains(marker), "{path}");
    }
}

#[tokio::test]
async fn the_bare_base_path_redirects_to_the_console_with_its_slash() {
    let server = TestServer::with_config(|config| config.base_path = "/arcp".into());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client.get(server.url("/arcp")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(response.headers()["location"], "/arcp/");
}
