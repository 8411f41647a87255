//! Request and response bodies: bounded JSON reading, JSON responses, and the
//! boxed body type every handler returns.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::error::ApiError;

pub type ResponseBody = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed()
}

/// Reads the whole body, refusing more than `limit` bytes, and parses it as
/// JSON. An empty body reads as `null`.
pub async fn read_json(body: Incoming, limit: usize) -> Result<Value, ApiError> {
    let collected = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(ApiError::BodyTooLarge { limit });
            }
            return Err(ApiError::InvalidRequest(
                "could not read the request body".into(),
            ));
        }
    };
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
