//! HTTP upstream agents: one POST per job.
//!
//! The gateway POSTs the job JSON (see the parent module) to the configured
//! URL, with `traceparent` (§11) and the configured `Authorization`, and
//! reads the answer as it streams: NDJSON, or SSE (`text/event-stream`)
//! whose events' `data` are the same lines.
//!
//! - Connecting is bounded by `connect_timeout`; waiting for the answer, and
//!   then for each further piece of it, by `idle_timeout` (a stalled upstream
//!   ends the job with a retryable `INTERNAL_ERROR`).
//! - A connection failure is a retryable `INTERNAL_ERROR`. A non-2xx answer
//!   becomes a `job.error`: an ARCP error body (`{code, message, retryable}`,
//!   or the same under `error`) is taken at its word; otherwise 400 and 422
//!   are `INVALID_REQUEST`, 401 and 403 `PERMISSION_DENIED`, 404 and 410
//!   `AGENT_NOT_AVAILABLE` (none retryable), and anything else, 408, 429 and
//!   5xx included, a retryable `INTERNAL_ERROR` (§12).
//! - Redirects are not followed, and no proxy is read from the environment.
//! - Ending the job early drops the request (the upstream sees its
//!   connection close) and, when a `cancel_url` is configured, POSTs
//!   `{job_id, reason}` there in the background.

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};

use super::{
    final_status, internal, job_request, traceparent, AgentOutput, ExternalAgent, Finished,
    LineFramer, SseData,
};
use crate::jobs::{Job, Terminal};
use crate::protocol::{ErrorCode, ErrorPayload, JobStatus};

/// Most of an error answer's body the gateway reads (and quotes).
const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;
/// How long a cancel notice may take.
const CANCEL_NOTICE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpBackend {
    pub url: Url,
    pub cancel_url: Option<Url>,
    /// The `Authorization` header value, marked sensitive.
    authorization: Option<HeaderValue>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Built on first use, inside the runtime.
    client: OnceLock<Result<reqwest::Client, String>>,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HttpBackend")
            .field("url", &self.url.as_str())
            .field("cancel_url", &self.cancel_url.as_ref().map(Url::as_str))
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl HttpBackend {
    /// `authorization` is the whole header value (`Bearer …`); it must be a
    /// valid header value.
    pub fn new(
        url: Url,
        cancel_url: Option<Url>,
        authorization: Option<&str>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<HttpBackend, String> {
        let authorization = match authorization {
            None => None,
            Some(value) => {
                let mut value = HeaderValue::from_str(value)
                    .map_err(|_| "the authorization value is not a valid header value")?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(HttpBackend {
            url,
            cancel_url,
            authorization,
            connect_timeout,
            idle_timeout,
            client: OnceLock::new(),
        })
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        self.client
            .get_or_init(|| {
                reqwest::Client::builder()
                    .connect_timeout(self.connect_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .build()
                    .map_err(|error| {
                        format!("could not build the HTTP client: {}", describe(&error))
                    })
            })
            .clone()
    }

    fn post(
        &self,
        client: &reqwest::Client,
        url: &Url,
        traceparent: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut request = client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        request
    }
}

pub(super) async fn run(agent: &ExternalAgent, backend: &HttpBackend, job: &Arc<Job>) -> Terminal {
    let client = match backend.client() {
        Ok(client) => client,
        Err(message) => return internal(message),
    };
    let traceparent = traceparent(&job.spec.trace_id);
    let body =
        serde_json::to_vec(&job_request(job, agent, traceparent.as_deref())).unwrap_or_default();
    let request = backend
        .post(&client, &backend.url, traceparent.as_deref())
        .header(ACCEPT, "application/x-ndjson, text/event-stream;q=0.9")
        .body(body);
    let mut notice = CancelNotice {
        armed: backend.cancel_url.is_some(),
        backend,
        client: &client,
        job,
        traceparent: traceparent.as_deref(),
    };

    let mut response = match tokio::time::timeout(backend.idle_timeout, request.send()).await {
        Err(_) => return stalled(backend, "sent no answer"),
        Ok(Err(error)) => {
            if error.is_connect() {
                // The upstream never got the job: nothing to cancel.
                notice.armed = false;
            }
            return internal(format!(
                "could not reach the upstream agent at {}: {}",
                backend.url,
                describe(&error)
            ));
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if !status.is_success() {
        notice.armed = false;
        let body = read_error_body(&mut response, backend.idle_timeout).await;
        return status_error(status, &body);
    }
    let sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("text/event-stream"));

    let mut output = AgentOutput::new(job, agent);
    // An SSE line carries `data: ` before the agent's line.
    let mut framer = LineFramer::strict(agent.max_line_bytes + if sse { 8 } else { 0 });
    let mut events = SseData::new(agent.max_line_bytes);
    let mut handle = |line: &[u8]| -> ControlFlow<Finished> {
        if !sse {
            return output.line(line);
        }
        match events.line(line) {
            Ok(Some(data)) => output.line(&data),
            Ok(None) => ControlFlow::Continue(()),
            Err(too_long) => ControlFlow::Break(Finished {
                terminal: output.too_long(too_long),
                by_agent: false,
            }),
        }
    };
    loop {
        job.ready().await;
        let chunk = match tokio::time::timeout(backend.idle_timeout, response.chunk()).await {
            Err(_) => return stalled(backend, "sent nothing more"),
            Ok(Err(error)) => {
                return internal(format!(
                    "reading the upstream agent's answer failed: {}",
                    describe(&error)
                ))
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        match framer.feed(&chunk, &mut handle) {
            Ok(ControlFlow::Continue(())) => {}
            Ok(ControlFlow::Break(finished)) => {
                notice.armed &= !finished.by_agent;
                return finished.terminal;
            }
            Err(too_long) => {
                return internal(format!(
                    "the upstream agent {} sent a line of more than {} bytes (max_line_bytes); the request was dropped",
                    job.spec.agent, too_long.max
                ))
            }
        }
    }
    // The answer ended. A last line without `\n` (or an unterminated SSE
    // event) still counts.
    let mut last = framer.finish().map(|rest| handle(&rest));
    if sse && !matches!(last, Some(ControlFlow::Break(_))) {
        last = events.dispatch().map(|data| output.line(&data));
    }
    if let Some(ControlFlow::Break(finished)) = last {
        notice.armed &= !finished.by_agent;
        return finished.terminal;
    }
    internal(format!(
        "the upstream agent {}'s answer ended without a result or error line",
        job.spec.agent
    ))
}

fn stalled(backend: &HttpBackend, what: &str) -> Terminal {
    internal(format!(
        "the upstream agent at {} {what} for {} ms (idle_timeout_ms)",
        backend.url,
        backend.idle_timeout.as_millis()
    ))
}

/// Up to [`MAX_ERROR_BODY_BYTES`] of an error answer, within `idle`.
async fn read_error_body(response: &mut reqwest::Response, idle: Duration) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match tokio::time::timeout(idle, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY_BYTES);
    body
}

/// The `job.error` for a non-2xx answer (see the module documentation).
fn status_error(status: StatusCode, body: &[u8]) -> Terminal {
    if let Ok(value) = crate::json::parse(body) {
        let error = value
            .get("error")
            .filter(|error| error.is_object())
            .unwrap_or(&value);
        let code = error
            .get("code")
            .and_then(Value::as_str)
            .and_then(ErrorCode::parse);
        if let Some(code) = code {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            let retryable = error.get("retryable").and_then(Value::as_bool);
            return Terminal::Failure {
                final_status: final_status(code),
                error: ErrorPayload {
                    code,
                    message: format!("the upstream agent answered {status}: {message}"),
                    retryable: code.forced_retryable().or(retryable).unwrap_or(false),
                },
            };
        }
    }
    let code = match status.as_u16() {
        400 | 422 => ErrorCode::InvalidRequest,
        401 | 403 => ErrorCode::PermissionDenied,
        404 | 410 => ErrorCode::AgentNotAvailable,
        _ => ErrorCode::InternalError,
    };
    const PREVIEW: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(PREVIEW)]);
    let text = text.trim();
    let quoted = if text.is_empty() {
        String::new()
    } else {
        format!(": {text:?}")
    };
    Terminal::failure(
        JobStatus::Error,
        code,
        format!("the upstream agent answered {status}{quoted}"),
    )
}

/// A reqwest error with its causes ("… : tcp connect error: Connection
/// refused").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Tells the upstream, on `cancel_url`, about a job that ended before the
/// upstream ended it; sent when dropped while armed.
struct CancelNotice<'a> {
    armed: bool,
    backend: &'a HttpBackend,
    client: &'a reqwest::Client,
    job: &'a Arc<Job>,
    traceparent: Option<&'a str>,
}

impl Drop for CancelNotice<'_> {
    fn drop(&mut self) {
        let Some(url) = self.backend.cancel_url.as_ref().filter(|_| self.armed) else {
            return;
        };
        // Shutting down: there is no runtime left to send it from.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self
            .backend
            .post(self.client, url, self.traceparent)
            .timeout(CANCEL_NOTICE_TIMEOUT);
        let job = self.job.clone();
        runtime.spawn(async move {
            // The job's terminal is written right after its agent stops.
            tokio::task::yield_now().await;
            let reason = job
                .snapshot()
                .terminal_payload
                .and_then(|payload| payload.get("code").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| "STOPPED".to_owned());
            let body = json!({ "job_id": job.spec.id, "reason": reason });
            let result = request.json_body(&body).send().await;
            if let Err(error) = result {
                tracing::debug!(job = %job.spec.id, error = %describe(&error), "cancel notice failed");
            }
        });
    }
}

/// `RequestBuilder::json` needs reqwest's `json` feature; this is all of it
/// the gateway needs.
trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.body(serde_json::to_vec(body).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(terminal: Terminal) -> (JobStatus, ErrorPayload) {
        match terminal {
            Terminal::Failure {
                final_status,
                error,
            } => (final_status, error),
            _ => panic!("a failure"),
        }
    }

    #[test]
    fn error_answers_map_to_section_12_codes() {
        let (_, error) = failure(status_error(StatusCode::INTERNAL_SERVER_ERROR, b"boom"));
        assert_eq!(error.code, ErrorCode::InternalError);
        assert!(error.retryable);
        assert!(error.message.contains("500"), "{}", error.message);
        let (_, error) = failure(status_error(StatusCode::TOO_MANY_REQUESTS, b""));
        assert_eq!(error.code, ErrorCode::InternalError);
        assert!(error.retryable);
        let (_, error) = failure(status_error(StatusCode::BAD_REQUEST, b"no"));
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(!error.retryable);
        let (_, error) = failure(status_error(StatusCode::NOT_FOUND, b""));
        assert_eq!(error.code, ErrorCode::AgentNotAvailable);
        let (_, error) = failure(status_error(StatusCode::FORBIDDEN, b""));
        assert_eq!(error.code, ErrorCode::PermissionDenied);

        let body = br#"{"code":"BUDGET_EXHAUSTED","message":"quota","retryable":true}"#;
        let (status, error) = failure(status_error(StatusCode::PAYMENT_REQUIRED, body));
        assert_eq!(error.code, ErrorCode::BudgetExhausted);
        assert!(!error.retryable, "§12 forces BUDGET_EXHAUSTED to false");
        assert_eq!(status, JobStatus::Error);
        let body = br#"{"error":{"code":"INVALID_REQUEST","message":"bad text"}}"#;
        let (_, error) = failure(status_error(StatusCode::UNPROCESSABLE_ENTITY, body));
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(error.message.contains("bad text"));
    }
}
