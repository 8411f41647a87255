//! What browsers and reverse proxies need: CORS with an explicit allow-list
//! and preflight handling, the connection facts a handler may trust
//! (`X-Forwarded-Proto` / `Forwarded` only from configured proxies), and the
//! resume cookie's attributes.

use std::net::SocketAddr;

use cookie::Cookie;
use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ORIGIN, VARY,
};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};

use super::body::{empty_response, ResponseBody};
use super::credentials::RESUME_COOKIE;
use super::error::ApiError;
use crate::config::Config;
use crate::ids::SessionId;

/// Facts about the connection a request arrived on, put into the request's
/// extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
}

/// True when the client's request reached us over TLS: never directly (this
/// gateway speaks cleartext), but possibly through a trusted proxy that says
/// so in `X-Forwarded-Proto` or `Forwarded: proto=`.
pub fn came_over_tls(config: &Config, parts: &Parts) -> bool {
    let Some(info) = parts.extensions.get::<ConnectionInfo>() else {
        return false;
    };
    let trusted = config
        .trusted_proxies
        .iter()
        .any(|network| network.contains(&info.peer.ip()));
    if !trusted {
        return false;
    }
    forwarded_proto(&parts.headers).is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// The protocol a proxy reports: `Forwarded: proto=…` (RFC 7239, first
/// element) wins over `X-Forwarded-Proto` (first value).
fn forwarded_proto(headers: &HeaderMap) -> Option<String> {
    if let Some(forwarded) = headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        let first = forwarded.split(',').next().unwrap_or_default();
        for pair in first.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=') {
                if key.trim().eq_ignore_ascii_case("proto") {
                    return Some(value.trim().trim_matches('"').to_owned());
                }
            }
        }
    }
    let header = headers.get("x-forwarded-proto")?.to_str().ok()?;
    Some(header.split(',').next()?.trim().to_owned())
}

/// `Set-Cookie` for a session's newest resume token: HttpOnly,
/// SameSite=Strict, scoped to the session's own path (under the base path),
/// and Secure when the request came over TLS or the operator asked for it.
pub fn resume_cookie(
    config: &Config,
    parts: &Parts,
    session_id: &SessionId,
    token: &str,
) -> String {
    let secure = config.cookie_secure || came_over_tls(config, parts);
    Cookie::build((RESUME_COOKIE, token.to_owned()))
        .path(format!("{}/v1/sessions/{session_id}", config.base_path))
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(
            config.token_ttl.as_secs().min(i64::MAX as u64) as i64,
        ))
        .build()
        .to_string()
}

/// The allowed origin to echo for this request, if any.
fn allowed_origin(config: &Config, parts: &Parts) -> Option<HeaderValue> {
    let origin = parts.headers.get(ORIGIN)?;
    if config.cors_any_origin {
        return Some(HeaderValue::from_static("*"));
    }
    let text = origin.to_str().ok()?.to_ascii_lowercase();
    config.cors_origins.contains(&text).then(|| origin.clone())
}

/// Headers a browser needs to read responses and reconnect streams.
const EXPOSED_HEADERS: &str = "content-type, allow";
const ALLOWED_REQUEST_HEADERS: &str = "authorization, content-type, last-event-id, traceparent";
const ALLOWED_METHODS: &str = "GET, POST, DELETE, OPTIONS";

/// Adds CORS headers to a response for an allowed origin.
pub fn decorate<B>(config: &Config, parts: &Parts, response: &mut Response<B>) {
    let headers = response.headers_mut();
    if parts.headers.contains_key(ORIGIN) {
        headers.append(VARY, HeaderValue::from_static("origin"));
    }
    let Some(origin) = allowed_origin(config, parts) else {
        return;
    };
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
    if config.cors_credentials {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// Answers a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`). `None` when the request is not one.
pub fn preflight(
    config: &Config,
    parts: &Parts,
) -> Option<Result<Response<ResponseBody>, ApiError>> {
    if parts.method != hyper::Method::OPTIONS
        || !parts.headers.contains_key(ORIGIN)
        || !parts.headers.contains_key("access-control-request-method")
    {
        return None;
    }
    let Some(origin) = allowed_origin(config, parts) else {
        return Some(Err(ApiError::PermissionDenied(
            "this origin is not allowed (see --cors-origin)".into(),
        )));
    };
    let mut response = empty_response(StatusCode::NO_CONTENT);
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOWED_METHODS),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_REQUEST_HEADERS),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    headers.insert(VARY, HeaderValue::from_static("origin"));
    if config.cors_credentials {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    Some(Ok(response))
}

/// Strips the configured base path; `None` when the path lies outside it.
pub fn strip_base_path<'a>(config: &Config, path: &'a str) -> Option<&'a str> {
    if config.base_path.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(&config.base_path)?;
    match rest {
        "" => Some("/"),
        rest if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyper::Request;

    use super::*;

    fn config() -> Config {
        let mut config = Config::development();
        config.cors_origins = vec!["https://app.example".into()];
        config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        config.token_ttl = Duration::from_secs(60);
        config
    }

    fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().uri("/v1/sessions");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        parts.extensions.insert(ConnectionInfo {
            peer: peer.parse().unwrap(),
        });
        parts
    }

    #[test]
    fn cookie_attributes_are_strict_http_only_and_path_scoped() {
        let config = config();
        let cookie = resume_cookie(
            &config,
            &parts("127.0.0.1:1", &[]),
            &SessionId::from_client("sess_1"),
            "rt1.a.b",
        );
        assert!(cookie.starts_with("arcp_resume=rt1.a.b;"), "{cookie}");
        for attribute in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/v1/sessions/sess_1",
            "Max-Age=60",
        ] {
            assert!(cookie.contains(attribute), "{attribute} in {cookie}");
        }
        assert!(!cookie.contains("Secure"));
        let mut secure = config.clone();
        secure.cookie_secure = true;
        let cookie = resume_cookie(
            &secure,
            &parts("127.0.0.1:1", &[]),
            &SessionId::from_client("s"),
            "t",
        );
        assert!(cookie.contains("Secure"));
        let mut prefixed = config.clone();
        prefixed.base_path = "/arcp".into();
        let cookie = resume_cookie(
            &prefixed,
            &parts("127.0.0.1:1", &[]),
            &SessionId::from_client("s"),
            "t",
        );
        assert!(cookie.contains("Path=/arcp/v1/sessions/s"), "{cookie}");
    }

    #[test]
    fn forwarded_proto_is_trusted_only_from_configured_proxies() {
        let config = config();
        let via_proxy = parts("10.1.2.3:5555", &[("x-forwarded-proto", "https")]);
        assert!(came_over_tls(&config, &via_proxy));
        let spoofed = parts("192.0.2.9:5555", &[("x-forwarded-proto", "https")]);
        assert!(
            !came_over_tls(&config, &spoofed),
            "an untrusted peer cannot claim TLS"
        );
        let forwarded = parts(
            "10.0.0.1:1",
            &[("forwarded", "for=1.2.3.4;proto=https, proto=http")],
        );
        assert!(came_over_tls(&config, &forwarded));
        let plain = parts("10.0.0.1:1", &[("x-forwarded-proto", "http")]);
        assert!(!came_over_tls(&config, &plain));
        let cookie = resume_cookie(&config, &via_proxy, &SessionId::from_client("s"), "t");
        assert!(cookie.contains("Secure"));
    }

    #[test]
    fn preflight_answers_only_allowed_origins() {
        let config = config();
        let allowed = parts(
            "127.0.0.1:1",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
            ],
        );
        let mut allowed = allowed;
        allowed.method = hyper::Method::OPTIONS;
        let response = preflight(&config, &allowed).unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            response.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(response.headers()[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(response.headers()[ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap()
            .contains("last-event-id"));

        let mut foreign = parts(
            "127.0.0.1:1",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
        );
        foreign.method = hyper::Method::OPTIONS;
        assert!(preflight(&config, &foreign).unwrap().is_err());

        let mut not_preflight = parts("127.0.0.1:1", &[]);
        not_preflight.method = hyper::Method::OPTIONS;
        assert!(preflight(&config, &not_preflight).is_none());

        let mut response = empty_response(StatusCode::OK);
        decorate(
            &config,
            &parts("127.0.0.1:1", &[("origin", "https://evil.example")]),
            &mut response,
        );
        assert!(!response.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(response.headers()[VARY], "origin");
    }

    #[test]
    fn base_path_is_stripped_or_the_path_is_outside() {
        let mut config = config();
        assert_eq!(strip_base_path(&config, "/v1/agents"), Some("/v1/agents"));
        config.base_path = "/arcp".into();
        assert_eq!(
            strip_base_path(&config, "/arcp/v1/agents"),
            Some("/v1/agents")
        );
        assert_eq!(strip_base_path(&config, "/arcp"), Some("/"));
        assert_eq!(strip_base_path(&config, "/arcpx/v1"), None);
        assert_eq!(strip_base_path(&config, "/v1/agents"), None);
    }
}
