//! Keeps `openapi.yaml` honest against the code: every route of the router's
//! table is documented with its method, no documented operation is stale,
//! every path parameter is declared, every local `$ref` resolves, every ARCP
//! error code the API can answer with is mentioned, the feature list and the
//! agent inventory match the runtime's, and, against a live gateway, the
//! documented feature gates and the common session errors are what the
//! handlers really answer.

use std::collections::BTreeSet;

use arcp_gateway::http::error::ApiError;
use arcp_gateway::http::router::{Route, RouteId, ROUTES};
use arcp_gateway::jobs::agents::AgentRegistry;
use arcp_gateway::state::RUNTIME_FEATURES;
use reqwest::StatusCode;
use serde_norway::Value;

use crate::support::*;

const OPENAPI_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");

/// The HTTP methods an OpenAPI path item can hold as operations.
const OPERATION_KEYS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn text() -> String {
    std::fs::read_to_string(OPENAPI_PATH)
        .unwrap_or_else(|error| panic!("cannot read {OPENAPI_PATH}: {error}"))
}

fn document() -> Value {
    serde_norway::from_str::<Value>(&text())
        .unwrap_or_else(|error| panic!("{OPENAPI_PATH} is not valid YAML: {error}"))
}

fn paths(document: &Value) -> &serde_norway::Mapping {
    document
        .get("paths")
        .and_then(Value::as_mapping)
        .expect("openapi.yaml has a `paths` mapping")
}

fn key_str(key: &Value) -> &str {
    key.as_str()
        .unwrap_or_else(|| panic!("non-string key in openapi.yaml: {key:?}"))
}

/// `(path, method)` for every operation in the document.
fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in paths(document) {
        let item = item
            .as_mapping()
            .unwrap_or_else(|| panic!("path item {path:?} is not a mapping"));
        for key in item.keys() {
            let key = key_str(key);
            if OPERATION_KEYS.contains(&key) {
                operations.insert((key_str(path).to_owned(), key.to_owned()));
            }
        }
    }
    operations
}

/// The `{name}` segments of a path template.
fn template_params(template: &str) -> BTreeSet<String> {
    template
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

/// Follows a local JSON pointer (`#/a/b`) through the document.
fn resolve_pointer<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix("#/")?;
    let mut node = document;
    for raw in pointer.split('/') {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        node = match node {
            Value::Mapping(mapping) => mapping.get(segment.as_str())?,
            Value::Sequence(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// A parameter object, following a `$ref` if it is one.
fn parameter<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => resolve_pointer(document, reference)
            .unwrap_or_else(|| panic!("parameter $ref {reference:?} does not resolve")),
        None => value,
    }
}

/// Path parameter names declared on a path item or on one of its operations.
fn declared_path_params(
    document: &Value,
    path_item: &Value,
    operation: &Value,
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for holder in [path_item, operation] {
        let Some(list) = holder.get("parameters").and_then(Value::as_sequence) else {
            continue;
        };
        for entry in list {
            let entry = parameter(document, entry);
            if entry.get("in").and_then(Value::as_str) == Some("path") {
                assert_eq!(
                    entry.get("required").and_then(Value::as_bool),
                    Some(true),
                    "path parameter {entry:?} must be required"
                );
                if let Some(name) = entry.get("name").and_then(Value::as_str) {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

fn collect_refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Mapping(mapping) => {
            for (key, child) in mapping {
                if key.as_str() == Some("$ref") {
                    if let Some(reference) = child.as_str() {
                        found.push(reference.to_owned());
                    }
                }
                collect_refs(child, found);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                collect_refs(item, found);
            }
        }
        Value::Tagged(tagged) => collect_refs(&tagged.value, found),
        _ => {}
    }
}

/// `ListAgents` -> `listAgents`.
fn lower_camel(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

#[test]
fn document_is_openapi_3_1() {
    let document = document();
    let version = document
        .get("openapi")
        .and_then(Value::as_str)
        .expect("`openapi` version string");
    assert!(version.starts_with("3.1"), "openapi version is {version}");
    assert!(document.get("info").is_some(), "missing `info`");
}

#[test]
fn every_route_is_documented_with_its_method() {
    let document = document();
    let paths = paths(&document);
    for route in ROUTES {
        let item = paths.get(route.template).unwrap_or_else(|| {
            panic!(
                "route {:?} ({} {}) is missing from openapi.yaml",
                route.id, route.method, route.template
            )
        });
        let method = route.method.as_str().to_ascii_lowercase();
        let operation = item.get(method.as_str()).unwrap_or_else(|| {
            panic!(
                "route {:?}: path {} has no `{method}` operation",
                route.id, route.template
            )
        });

        let route_name = format!("{:?}", route.id);
        assert_eq!(
            operation.get("x-route-id").and_then(Value::as_str),
            Some(route_name.as_str()),
            "{} {}: x-route-id should name the RouteId",
            route.method,
            route.template
        );
        assert_eq!(
            operation.get("operationId").and_then(Value::as_str),
            Some(lower_camel(&route_name).as_str()),
            "{} {}: operationId",
            route.method,
            route.template
        );

        assert_eq!(
            declared_path_params(&document, item, operation),
            template_params(route.template),
            "{} {}: declared path parameters differ from the template",
            route.method,
            route.template
        );

        let responses = operation
            .get("responses")
            .and_then(Value::as_mapping)
            .unwrap_or_else(|| panic!("{} {} has no responses", route.method, route.template));
        assert!(
            responses.keys().any(|status| {
                let status = match status {
                    Value::String(text) => text.clone(),
                    other => format!("{}", other.as_u64().unwrap_or(0)),
                };
                // The WebSocket upgrade succeeds with 101.
                status.starts_with('2') || (route.id == RouteId::ArcpWebSocket && status == "101")
            }),
            "{} {} documents no 2xx response",
            route.method,
            route.template
        );
    }
}

#[test]
fn every_documented_operation_is_a_route() {
    let document = document();
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|route| {
            (
                route.template.to_owned(),
                route.method.as_str().to_ascii_lowercase(),
            )
        })
        .collect();
    let documented = documented_operations(&document);
    let stale: Vec<_> = documented.difference(&routes).collect();
    assert!(stale.is_empty(), "documented but not routed: {stale:?}");
    assert_eq!(documented.len(), ROUTES.len(), "one operation per route");
}

#[test]
fn every_local_ref_resolves() {
    let document = document();
    let mut refs = Vec::new();
    collect_refs(&document, &mut refs);
    assert!(!refs.is_empty(), "expected $refs in openapi.yaml");
    let schemas = document
        .get("components")
        .and_then(|components| components.get("schemas"))
        .and_then(Value::as_mapping)
        .expect("components.schemas");
    for reference in &refs {
        assert!(
            reference.starts_with("#/"),
            "only local references are expected: {reference}"
        );
        if let Some(name) = reference.strip_prefix("#/components/schemas/") {
            assert!(
                schemas.contains_key(name),
                "$ref {reference} names no schema in components.schemas"
            );
        }
        assert!(
            resolve_pointer(&document, reference).is_some(),
            "$ref {reference} does not resolve"
        );
    }
    for required in [
        "Envelope",
        "Error",
        "Feature",
        "SessionWelcomePayload",
        "SessionClosedPayload",
        "SessionClosedEventPayload",
        "SessionPingPayload",
        "SessionPongPayload",
        "SessionPongRequestPayload",
        "SessionPingEventPayload",
        "SessionAckPayload",
        "SessionAckedPayload",
        "SessionJobsPayload",
        "JobDescriptor",
        "JobSubmitPayload",
        "JobAcceptedPayload",
        "Budget",
        "JobStatusPayload",
        "JobCancelledPayload",
        "JobSubscribePayload",
        "JobSubscribedPayload",
        "JobUnsubscribedPayload",
        "JobEventPayload",
        "JobResultPayload",
        "JobErrorPayload",
        "SpenderInput",
    ] {
        assert!(
            schemas.contains_key(required),
            "schema {required} is missing"
        );
    }
}

#[test]
fn every_api_error_code_and_status_is_mentioned() {
    let text = text();
    let errors = [
        ApiError::Unauthenticated(String::new()),
        ApiError::PermissionDenied(String::new()),
        ApiError::ResumeWindowExpired(String::new()),
        ApiError::InvalidRequest(String::new()),
        ApiError::BodyTooLarge { limit: 1 },
        ApiError::SessionNotFound,
        ApiError::JobNotFound,
        ApiError::AgentNotAvailable(String::new()),
        ApiError::AgentVersionNotAvailable(String::new()),
        ApiError::DuplicateKey,
        ApiError::TooManySessions { limit: 1 },
        ApiError::TooManyJobs { limit: 1 },
        ApiError::TooManyRunningJobs { limit: 1 },
        ApiError::RetainedBytesPerPrincipal { limit: 1 },
        ApiError::RetainedBytesFull,
        ApiError::JobAlreadyTerminal { status: "success" },
        ApiError::RouteNotFound,
        ApiError::MethodNotAllowed {
            allowed: vec!["GET"],
        },
        ApiError::MalformedHead(String::new()),
        ApiError::HeadTooLarge { limit: 1 },
        ApiError::HeadTimeout,
        ApiError::BodyTimeout,
        ApiError::TooManyConnections,
        ApiError::TooManyConnectionsFromPeer { limit: 1 },
        ApiError::HeartbeatLost,
    ];
    for error in &errors {
        let code = error.code().as_str();
        assert!(
            text.contains(code),
            "error code {code} ({error:?}) is not documented"
        );
        let status = error.status().as_u16().to_string();
        assert!(
            text.contains(&format!("'{status}'")) || text.contains(&format!("| {status} |")),
            "status {status} ({error:?}) is not documented"
        );
    }
}

/// The documented operation of a route.
fn operation<'a>(document: &'a Value, route: &Route) -> &'a Value {
    let method = route.method.as_str().to_ascii_lowercase();
    paths(document)
        .get(route.template)
        .and_then(|item| item.get(method.as_str()))
        .unwrap_or_else(|| panic!("{} {} is not documented", route.method, route.template))
}

/// The response status keys an operation documents.
fn documented_statuses(operation: &Value) -> BTreeSet<String> {
    operation
        .get("responses")
        .and_then(Value::as_mapping)
        .map(|responses| {
            responses
                .keys()
                .map(|status| match status {
                    Value::String(text) => text.clone(),
                    other => other.as_u64().unwrap_or(0).to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The feature an operation declares it needs (`x-arcp-feature`), if any.
fn declared_feature(operation: &Value) -> Option<&str> {
    operation.get("x-arcp-feature").and_then(Value::as_str)
}

fn is_session_scoped(route: &Route) -> bool {
    route.template.starts_with("/v1/sessions/{session_id}")
}

/// The route's template with its parameters filled in.
fn concrete_path(route: &Route, session_id: &str) -> String {
    route
        .template
        .replace("{session_id}", session_id)
        .replace("{job_id}", "job_00000000000000000000000000000000")
}

/// Sends `method path` with an optional bearer credential and a `{}` body on
/// POST. Only error bodies are read, so a stream's 200 does not block.
async fn send(
    server: &TestServer,
    route: &Route,
    path: &str,
    credential: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let method = reqwest::Method::from_bytes(route.method.as_str().as_bytes()).expect("method");
    let mut request = server.client.request(method, server.url(path));
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    if route.method.as_str() == "POST" {
        request = request.json(&serde_json::json!({}));
    }
    let response = within("request", request.send()).await.expect("request");
    let status = response.status();
    if status.is_success() {
        return (status, serde_json::Value::Null);
    }
    (status, response.json().await.unwrap_or_default())
}

/// Opens a session for alice that negotiated exactly `features`.
async fn session_with_features(server: &TestServer, features: &[&str]) -> String {
    let hello = serde_json::json!({ "capabilities": { "features": features } });
    let response = within(
        "session creation",
        server
            .client
            .post(server.url("/v1/sessions"))
            .bearer_auth(ALICE_TOKEN)
            .json(&hello)
            .send(),
    )
    .await
    .expect("create session");
    assert_eq!(response.status(), StatusCode::CREATED);
    Welcome::from_envelope(response.json().await.expect("welcome")).session_id
}

fn refused_for_feature(status: StatusCode, body: &serde_json::Value) -> bool {
    status == StatusCode::BAD_REQUEST
        && body["code"] == "INVALID_REQUEST"
        && body["message"]
            .as_str()
            .is_some_and(|message| message.contains("not negotiated"))
}

#[test]
fn features_match_the_runtime() {
    let document = document();
    let documented: Vec<&str> = document
        .get("components")
        .and_then(|components| components.get("schemas"))
        .and_then(|schemas| schemas.get("Feature"))
        .and_then(|feature| feature.get("enum"))
        .and_then(Value::as_sequence)
        .expect("components.schemas.Feature.enum")
        .iter()
        .map(|feature| feature.as_str().expect("feature name"))
        .collect();
    assert_eq!(
        documented, RUNTIME_FEATURES,
        "Feature enum must list RUNTIME_FEATURES in order"
    );
    for route in ROUTES {
        if let Some(feature) = declared_feature(operation(&document, route)) {
            assert!(
                RUNTIME_FEATURES.contains(&feature),
                "{:?}: x-arcp-feature {feature:?} is not a runtime feature",
                route.id
            );
            assert!(
                documented_statuses(operation(&document, route)).contains("400"),
                "{:?} needs {feature:?} but documents no 400",
                route.id
            );
        }
    }
}

#[test]
fn every_builtin_agent_and_version_is_documented() {
    let text = text();
    let inventory = AgentRegistry::builtin().inventory();
    for agent in inventory.as_array().expect("inventory array") {
        let name = agent["name"].as_str().expect("agent name");
        assert!(
            text.contains(&format!("`{name}`")),
            "agent {name} is not documented"
        );
        for version in agent["versions"].as_array().expect("versions") {
            let qualified = format!("{name}@{}", version.as_str().expect("version"));
            assert!(
                text.contains(&qualified),
                "agent version {qualified} is not documented"
            );
        }
    }
}

#[tokio::test]
async fn documented_feature_gates_are_the_real_ones() {
    let document = document();
    let server = TestServer::start();
    let mut gated = 0;
    for route in ROUTES.iter().filter(|route| is_session_scoped(route)) {
        match declared_feature(operation(&document, route)) {
            Some(feature) => {
                gated += 1;
                let others: Vec<&str> = RUNTIME_FEATURES
                    .iter()
                    .copied()
                    .filter(|other| *other != feature)
                    .collect();
                let session_id = session_with_features(&server, &others).await;
                let path = concrete_path(route, &session_id);
                let (status, body) = send(&server, route, &path, Some(ALICE_TOKEN)).await;
                assert!(
                    refused_for_feature(status, &body),
                    "{:?} is documented to need {feature:?}, but without it answered {status} {body}",
                    route.id
                );
                let with_it = session_with_features(&server, &[feature]).await;
                let path = concrete_path(route, &with_it);
                let (status, body) = send(&server, route, &path, Some(ALICE_TOKEN)).await;
                assert!(
                    !refused_for_feature(status, &body),
                    "{:?} refused a session that negotiated {feature:?}: {body}",
                    route.id
                );
            }
            None => {
                let session_id = session_with_features(&server, &[]).await;
                let path = concrete_path(route, &session_id);
                let (status, body) = send(&server, route, &path, Some(ALICE_TOKEN)).await;
                assert!(
                    !refused_for_feature(status, &body),
                    "{:?} documents no x-arcp-feature but refused a session without features: {body}",
                    route.id
                );
            }
        }
    }
    assert!(gated > 0, "expected feature-gated operations");
}

#[tokio::test]
async fn session_errors_are_answered_and_documented() {
    let document = document();
    let server = TestServer::start();
    let alive = server.create_session(ALICE_TOKEN).await.session_id;
    let closed = server.create_session(ALICE_TOKEN).await.session_id;
    let (status, _) = send(
        &server,
        ROUTES
            .iter()
            .find(|route| route.id == RouteId::CloseSession)
            .expect("close route"),
        &format!("/v1/sessions/{closed}"),
        Some(ALICE_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "closing a session");

    for route in ROUTES.iter().filter(|route| is_session_scoped(route)) {
        let statuses = documented_statuses(operation(&document, route));
        let cases = [
            (
                "no credentials",
                alive.as_str(),
                None,
                StatusCode::UNAUTHORIZED,
            ),
            (
                "another principal",
                alive.as_str(),
                Some(BOB_TOKEN),
                StatusCode::FORBIDDEN,
            ),
            (
                "unknown session",
                "sess_unknown",
                Some(ALICE_TOKEN),
                StatusCode::NOT_FOUND,
            ),
            (
                "closed session",
                closed.as_str(),
                Some(ALICE_TOKEN),
                StatusCode::GONE,
            ),
        ];
        for (case, session_id, credential, expected) in cases {
            let path = concrete_path(route, session_id);
            let (status, body) = send(&server, route, &path, credential).await;
            assert_eq!(status, expected, "{} {path} ({case}): {body}", route.method);
            assert!(
                statuses.contains(status.as_str()),
                "{} {} ({case}) answers {status}, which is not documented",
                route.method,
                route.template
            );
        }
    }
}

/// A method no path has gets 405 with an `Allow` header that lists exactly
/// the methods `openapi.yaml` documents for that path, as ARCP error JSON. A
/// literal path shadows a parameterised one for every method: `OPTIONS
/// /v1/sessions/resume` allows only `POST`, not the `GET, DELETE` of
/// `/v1/sessions/{session_id}`.
#[tokio::test]
async fn allow_lists_exactly_the_documented_methods_of_each_path() {
    let document = document();
    let server = TestServer::start();
    let session_id = server.create_session(ALICE_TOKEN).await.session_id;
    for (path, item) in paths(&document) {
        let template = key_str(path);
        let mut documented: Vec<String> = item
            .as_mapping()
            .expect("path item")
            .keys()
            .map(key_str)
            .filter(|key| OPERATION_KEYS.contains(key))
            .map(str::to_ascii_uppercase)
            .collect();
        documented.sort();
        let concrete = template
            .replace("{session_id}", &session_id)
            .replace("{job_id}", "job_00000000000000000000000000000000");
        for method in [reqwest::Method::OPTIONS, reqwest::Method::PATCH] {
            let response = within(
                "request",
                server
                    .client
                    .request(method.clone(), server.url(&concrete))
                    .bearer_auth(ALICE_TOKEN)
                    .send(),
            )
            .await
            .expect("request");
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {concrete}"
            );
            let allow = response.headers()["allow"]
                .to_str()
                .expect("Allow is text")
                .to_owned();
            let mut allowed: Vec<String> = allow.split(", ").map(str::to_owned).collect();
            allowed.sort();
            assert_eq!(allowed, documented, "Allow of {method} {template}");
            let body: serde_json::Value = response.json().await.expect("error JSON");
            assert_eq!(body["code"], "INVALID_REQUEST", "{method} {concrete}");
            assert_eq!(body["retryable"], false);
        }
    }
}

/// A payload member the document types as an object must be a JSON object:
/// serde alone would read an array into a record by position (found by
/// schemathesis: `"capabilities": [null, null]` opened a session). `null`
/// stays the documented "absent".
#[tokio::test]
async fn record_members_must_be_objects() {
    let server = TestServer::start();
    for hello in [
        serde_json::json!({"capabilities": [null, null]}),
        serde_json::json!({"capabilities": [["json"], ["heartbeat"]]}),
        serde_json::json!({"auth": ["a-token"]}),
        serde_json::json!({"capabilities": "json"}),
    ] {
        let (status, body) = server.post_json("/v1/sessions", ALICE_TOKEN, &hello).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{hello}: {body}");
        assert_eq!(body["code"], "INVALID_REQUEST", "{hello}");
    }
    let hello = serde_json::json!({"auth": null, "capabilities": {"features": null}});
    let (status, body) = server.post_json("/v1/sessions", ALICE_TOKEN, &hello).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let session = server.create_session(ALICE_TOKEN).await.session_id;
    let (status, body) = server
        .submit(
            &session,
            ALICE_TOKEN,
            serde_json::json!({"agent": "echo", "lease_constraints": ["2099-01-01T00:00:00Z"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "INVALID_REQUEST");
    let (status, body) = server
        .submit(
            &session,
            ALICE_TOKEN,
            serde_json::json!({"agent": "echo", "lease_constraints": null, "idempotency_key": null}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

/// The payloads the document closes (`additionalProperties: false`) refuse
/// an unknown member with 400; the open ones ignore it. (scripts/schemathesis
/// does not add unknown members, because it would add unknown query
/// parameters too, which the gateway ignores.)
#[tokio::test]
async fn closed_payloads_refuse_unknown_members_and_open_ones_ignore_them() {
    let server = TestServer::start();
    let welcome = server.create_session(ALICE_TOKEN).await;
    let session = session_with_features(
        &server,
        &["ack", "heartbeat", "subscribe", "lease_expires_at"],
    )
    .await;
    let job = server
        .submit_ok(&session, ALICE_TOKEN, serde_json::json!({"agent": "echo"}))
        .await;
    let base = format!("/v1/sessions/{session}");
    let closed = [
        (
            "/v1/sessions/resume".to_owned(),
            serde_json::json!({"resume_token": welcome.resume_token, "bogus": 1}),
        ),
        (
            format!("{base}/jobs"),
            serde_json::json!({"agent": "echo", "bogus": 1}),
        ),
        (
            format!("{base}/jobs"),
            serde_json::json!({"agent": "echo", "lease_constraints": {"bogus": 1}}),
        ),
        (
            format!("{base}/ack"),
            serde_json::json!({"last_processed_seq": 0, "bogus": 1}),
        ),
        (
            format!("{base}/subscriptions"),
            serde_json::json!({"job_id": job, "bogus": 1}),
        ),
    ];
    for (path, body) in closed {
        let (status, answer) = server.post_json(&path, ALICE_TOKEN, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|message| message.contains("unknown field")),
            "{path} {body}: {answer}"
        );
    }
    let open = [
        (
            "/v1/sessions".to_owned(),
            serde_json::json!({"bogus": 1}),
            StatusCode::CREATED,
        ),
        (
            format!("{base}/ping"),
            serde_json::json!({"nonce": "n1", "bogus": 1}),
            StatusCode::OK,
        ),
        (
            format!("{base}/pong"),
            serde_json::json!({"ping_nonce": "p1", "bogus": 1}),
            StatusCode::NO_CONTENT,
        ),
    ];
    for (path, body, expected) in open {
        let (status, answer) = server.post_json(&path, ALICE_TOKEN, &body).await;
        assert_eq!(status, expected, "{path} {body}: {answer}");
    }
}
