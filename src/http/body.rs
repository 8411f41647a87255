//! Request and response bodies: bounded, deadlined JSON reading, JSON responses, and the
//! boxed body type every handler returns.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::error::ApiError;

pub type ResponseBody = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed()
}

/// Reads the whole body, refusing more than `limit` bytes or taking longer
/// than `deadline`, and parses it as JSON. An empty body reads as `null`.
pub async fn read_json(
    body: Incoming,
    limit: usize,
    deadline: Duration,
    budget: &BodyBudget,
) -> Result<Value, ApiError> {
    let collected = read_body_bytes(body, limit, deadline, budget).await?;
    parse_json(&collected)
}

/// Parses a client's JSON body within the limits of [`crate::json`] (depth,
/// no duplicate keys). An empty body reads as `null`.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    crate::json::parse(bytes)
        .map_err(|error| ApiError::InvalidRequest(format!("request body is refused: {error}")))
}

/// Reads a whole request body into one buffer of at most `limit` bytes,
/// within `deadline` from now.
///
/// A body announcing more than `limit` (its `Content-Length`) is refused
/// before anything is read. Each received frame is copied and dropped at
/// once: keeping frames would keep the connection's read buffer they were
/// cut from, several KiB for a frame of one byte.
pub async fn read_body_bytes(
    body: impl Body<Data = Bytes, Error = hyper::Error>,
    limit: usize,
    deadline: Duration,
    budget: &BodyBudget,
) -> Result<Vec<u8>, ApiError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut held = BodyBytesHeld { budget, bytes: 0 };
    let deadline = tokio::time::Instant::now() + deadline;
    let mut body = std::pin::pin!(body);
    let mut collected = Vec::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ApiError::BodyTimeout),
            Ok(None) => return Ok(collected),
            Ok(Some(Err(_))) => {
                return Err(ApiError::InvalidRequest(
                    "could not read the request body".into(),
                ))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if collected.len() + data.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        held.grow(data.len())?;
        collected.extend_from_slice(&data);
    }
}

/// The bytes of request bodies being read, gateway-wide, and their limit
/// (`--max-body-bytes-in-flight`): each body is bounded, this bounds them all
/// together, so many connections sending large bodies slowly cannot take
/// more than this much memory.
#[derive(Debug)]
pub struct BodyBudget {
    in_use: AtomicUsize,
    limit: usize,
}

impl BodyBudget {
    pub fn new(limit: usize) -> BodyBudget {
        BodyBudget {
            in_use: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes held by bodies being read now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| {
                in_use
                    .checked_add(bytes)
                    .filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.in_use.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What one body being read holds of the [`BodyBudget`], given back when
/// the read ends (with the buffer handed on or dropped).
struct BodyBytesHeld<'a> {
    budget: &'a BodyBudget,
    bytes: usize,
}

impl BodyBytesHeld<'_> {
    fn grow(&mut self, bytes: usize) -> Result<(), ApiError> {
        if !self.budget.try_take(bytes) {
            return Err(ApiError::BodiesInFlightFull);
        }
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for BodyBytesHeld<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub fn empty_response(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The single place errors become responses: `{code, message, retryable}`.
pub fn error_response(error: &ApiError) -> Response<ResponseBody> {
    let mut response = json_response(error.status(), &error.payload());
    if let ApiError::MethodNotAllowed { allowed } = error {
        if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
            response.headers_mut().insert(ALLOW, value);
        }
    }
    response
}
