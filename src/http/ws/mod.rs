//! ARCP's own transport (§4): `GET <base>/arcp` upgraded to a WebSocket,
//! one JSON envelope per text message, as the official SDKs speak it.
//!
//! The upgrade goes through hyper (`hyper::upgrade::on`); the socket is then
//! driven by tokio-tungstenite in a task of its own (`connection.rs`). The
//! WebSocket binding shares sessions, tokens, jobs and the event log with
//! REST/SSE: a session opened here can be streamed over SSE and the other way
//! round, because both attach a stream to the same [`crate::session::Session`]
//! and read the same log through [`super::sse::EventStream`].
//!
//! No `Authorization` header is read on the upgrade: the api token travels in
//! `session.hello.payload.auth.token` (§6.1), so there are no ambient
//! credentials a cross-site page could ride on, and no Origin check is
//! needed for that reason.

mod connection;
mod frames;

use std::sync::Arc;

use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::body::{empty_response, ResponseBody};
use super::error::ApiError;
use crate::connections::HeldConnection;
use crate::state::AppState;

/// True when a header lists `token` among its comma-separated values.
fn header_has_token(parts: &Parts, name: impl hyper::header::AsHeaderName, token: &str) -> bool {
    parts
        .headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// `GET /arcp`: checks the WebSocket handshake (RFC 6455 §4.2.1), answers
/// 101 and hands the upgraded connection to its own task. No extension and
/// no subprotocol is negotiated (the official SDKs ask for none but
/// `permessage-deflate`, which is optional).
pub fn upgrade(state: &Arc<AppState>, parts: &Parts) -> Result<Response<ResponseBody>, ApiError> {
    let is_upgrade = header_has_token(parts, UPGRADE, "websocket")
        && header_has_token(parts, CONNECTION, "upgrade");
    let version_ok = parts
        .headers
        .get("sec-websocket-version")
        .is_some_and(|version| version.as_bytes() == b"13");
    let key = parts.headers.get("sec-websocket-key");
    let (true, true, Some(key)) = (is_upgrade, version_ok, key) else {
        return Err(ApiError::InvalidRequest(
            "GET /arcp is ARCP over WebSocket: send a WebSocket upgrade (version 13)".into(),
        ));
    };
    let Some(on_upgrade) = parts.extensions.get::<hyper::upgrade::OnUpgrade>().cloned() else {
        // HTTP/2 requests carry no upgrade (RFC 8441 is not offered).
        return Err(ApiError::InvalidRequest(
            "WebSocket upgrades need HTTP/1.1".into(),
        ));
    };
    let accept = derive_accept_key(key.as_bytes());
    let state = state.clone();
    // The upgraded connection keeps its place under the connection caps
    // until it ends, although hyper's connection ends at the upgrade.
    let held = parts.extensions.get::<HeldConnection>().cloned();
    tokio::spawn(async move {
        let _held = held;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        let limit = state.config.ws_max_frame_bytes;
        let config = WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        connection::run(state, socket).await;
    });
    let mut response = empty_response(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", value);
    }
    Ok(response)
}
