//! Where credentials come from on a request, and who they make the caller.
//!
//! An api token arrives as `Authorization: Bearer <token>` (or, for
//! `session.hello`, in `payload.auth.token`, §6.1). A resume token (§6.3)
//! arrives as `Authorization: Bearer rt1.…`, as the `resume_token` query
//! parameter, or as the cookie this gateway sets, because a browser's
//! `EventSource` cannot send headers. When several resume tokens arrive, the
//! valid one with the newest generation wins.

use std::time::{SystemTime, UNIX_EPOCH};

use cookie::Cookie;
use hyper::header::{AUTHORIZATION, COOKIE};
use hyper::http::request::Parts;

use super::error::ApiError;
use crate::auth::resume_token::RESUME_TOKEN_PREFIX;
use crate::auth::{ResumeClaims, ResumeTokenError};
use crate::ids::{Principal, SessionId};
use crate::state::AppState;

/// The cookie that carries a session's newest resume token. Its `Path` is the
/// session's own URL prefix, so a browser only sends it for that session.
pub const RESUME_COOKIE: &str = "arcp_resume";

/// An authenticated caller.
#[derive(Debug)]
pub struct Caller {
    pub principal: Principal,
    /// Present when a resume token authenticated the caller.
    pub resume: Option<ResumeClaims>,
}

/// The query parameters this gateway reads, decoded.
#[derive(Default, Debug)]
pub struct Query {
    pub resume_token: Option<String>,
    pub last_event_seq: Option<String>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let mut parsed = Query::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "resume_token" => parsed.resume_token = Some(value.into_owned()),
                "last_event_seq" => parsed.last_event_seq = Some(value.into_owned()),
                _ => {}
            }
        }
        parsed
    }
}

/// The bearer token of the `Authorization` header, if any.
pub fn bearer_token(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(header) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let text = header
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("Authorization header is not valid text".into()))?;
    let Some((scheme, token)) = text.split_once(' ') else {
        return Err(ApiError::Unauthenticated(
            "Authorization must be `Bearer <token>`".into(),
        ));
    };
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthenticated(
            "Authorization must be `Bearer <token>`".into(),
        ));
    }
    Ok(Some(token.trim()))
}

pub fn is_resume_token(token: &str) -> bool {
    token.starts_with(RESUME_TOKEN_PREFIX)
}

fn resume_cookie_values(parts: &Parts) -> Vec<String> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|header| {
            Cookie::split_parse(header.to_owned())
                .filter_map(Result::ok)
                .filter(|cookie| cookie.name() == RESUME_COOKIE)
                .map(|cookie| cookie.value().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether a request carries a resume token anywhere a session endpoint
/// reads one (bearer, query or cookie): a stream opened with one is a resume.
pub fn carries_resume_token(parts: &Parts) -> bool {
    matches!(bearer_token(parts), Ok(Some(token)) if is_resume_token(token))
        || Query::parse(parts.uri.query()).resume_token.is_some()
        || !resume_cookie_values(parts).is_empty()
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Maps a token verification failure.
pub fn token_error(error: ResumeTokenError) -> ApiError {
    match error {
        ResumeTokenError::Malformed => {
            ApiError::Unauthenticated("resume token is malformed".into())
        }
        ResumeTokenError::BadSignature => {
            ApiError::Unauthenticated("resume token signature is invalid".into())
        }
        ResumeTokenError::Expired => {
            ApiError::ResumeWindowExpired("resume token has expired".into())
        }
    }
}

/// Names the authenticated principal on the request's log span.
pub fn note_principal(principal: &Principal) {
    tracing::Span::current().record("principal", principal.as_str());
}

/// Authenticates a request aimed at `session_id`. An api token names the
/// principal; resume tokens must be for this session and, when an api token
/// is also present, for the same principal.
pub fn authenticate_for_session(
    state: &AppState,
    parts: &Parts,
    query: &Query,
    session_id: &SessionId,
) -> Result<Caller, ApiError> {
    let caller = authenticate_caller(state, parts, query, session_id)?;
    note_principal(&caller.principal);
    Ok(caller)
}

fn authenticate_caller(
    state: &AppState,
    parts: &Parts,
    query: &Query,
    session_id: &SessionId,
) -> Result<Caller, ApiError> {
    let bearer = bearer_token(parts)?;
    let mut api_principal = None;
    let mut resume_candidates: Vec<String> = Vec::new();
    match bearer {
        Some(token) if is_resume_token(token) => resume_candidates.push(token.to_owned()),
        Some(token) => {
            let principal = state
                .api_tokens
                .authenticate(token)
                .ok_or_else(|| ApiError::Unauthenticated("unknown api token".into()))?;
            api_principal = Some(principal);
        }
        None => {}
    }
    resume_candidates.extend(query.resume_token.iter().cloned());
    resume_candidates.extend(resume_cookie_values(parts));

    // With a valid api token, a stale cookie or query token is ignored
    // rather than failing the request; alone, it must be valid.
    let resume = match best_resume_claims(state, &resume_candidates, session_id) {
        Ok(resume) => resume,
        Err(_) if api_principal.is_some() => None,
        Err(error) => return Err(error),
    };
    match (api_principal, resume) {
        (Some(principal), Some(claims)) => {
            if claims.principal != principal {
                return Err(ApiError::PermissionDenied(
                    "the resume token belongs to a different principal than the api token".into(),
                ));
            }
            // The api token authenticates fully; the resume token only had
            // to agree on the principal, and its generation is not consumed.
            Ok(Caller {
                principal,
                resume: None,
            })
        }
        (Some(principal), None) => Ok(Caller {
            principal,
            resume: None,
        }),
        (None, Some(claims)) => Ok(Caller {
            principal: claims.principal.clone(),
            resume: Some(claims),
        }),
        (None, None) => Err(ApiError::Unauthenticated(
            "missing credentials: send an api token or a resume token".into(),
        )),
    }
}

/// Verifies every candidate and keeps the newest valid generation for this
/// session. With candidates but none valid, the first failure is reported.
fn best_resume_claims(
    state: &AppState,
    candidates: &[String],
    session_id: &SessionId,
) -> Result<Option<ResumeClaims>, ApiError> {
    let now = now_unix();
    let mut best: Option<ResumeClaims> = None;
    let mut first_error: Option<ApiError> = None;
    for candidate in candidates {
        match state.token_keys.verify(candidate, now) {
            Ok(claims) if &claims.session_id == session_id => {
                if best
                    .as_ref()
                    .is_none_or(|b| claims.generation > b.generation)
                {
                    best = Some(claims);
                }
            }
            Ok(_) => {
                first_error.get_or_insert(ApiError::PermissionDenied(
                    "the resume token is for a different session".into(),
                ));
            }
            Err(error) => {
                first_error.get_or_insert(token_error(error));
            }
        }
    }
    match (best, first_error) {
        (Some(claims), _) => Ok(Some(claims)),
        (None, Some(error)) => Err(error),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts(cookies: &[&str]) -> Parts {
        let mut request = hyper::Request::builder().uri("/v1/sessions/s/events");
        for cookie in cookies {
            request = request.header(COOKIE, *cookie);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn resume_cookies_are_found_among_others() {
        let found = resume_cookie_values(&parts(&[
            "a=1; arcp_resume=rt1.x.y; b=2",
            "arcp_resume=rt1.z.w",
        ]));
        assert_eq!(found, ["rt1.x.y", "rt1.z.w"]);
        assert!(resume_cookie_values(&parts(&["arcp_resume"])).is_empty());
    }

    #[test]
    fn query_cursors_are_kept_as_sent_for_strict_parsing() {
        let query = Query::parse(Some("last_event_seq=%2B1&resume_token=rt1.a.b"));
        assert_eq!(query.last_event_seq.as_deref(), Some("+1"));
        assert_eq!(query.resume_token.as_deref(), Some("rt1.a.b"));
    }

    proptest! {
        /// Any Cookie header (visible ASCII, as `HeaderValue` allows for
        /// `to_str`) parses without panic, and a well-formed resume cookie
        /// among arbitrary others is always found, value intact.
        #[test]
        fn cookie_headers_never_panic_and_keep_the_token(
            noise in "[ -~]{0,80}",
            token in "rt1\\.[A-Za-z0-9_-]{1,40}\\.[A-Za-z0-9_-]{1,40}",
        ) {
            let _ = resume_cookie_values(&parts(&[noise.as_str()]));
            let header = format!("x=1; arcp_resume={token}; y=2");
            let found = resume_cookie_values(&parts(&[noise.as_str(), header.as_str()]));
            prop_assert!(found.contains(&token));
        }

        #[test]
        fn queries_never_panic(query in "\\PC{0,80}") {
            let _ = Query::parse(Some(&query));
        }
    }
}
