//! The job routes (§7): `job.submit` with its lease and budget checks,
//! a job's status, and `job.cancel`; the submission and cancel paths the
//! WebSocket binding shares.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::body::{json_response, ResponseBody};
use super::credentials::{authenticate_for_session, Caller, Query};
use super::error::ApiError;
use super::handlers::{read_payload, session_for};
use crate::cluster::jobs::CancelError;
use crate::ids::{JobId, Principal, SessionId};
use crate::jobs::agents::AgentResolveError;
use crate::jobs::{JobLimits, JobSpec};
use crate::protocol::{format_rfc3339, parse_utc_timestamp, Envelope};
use crate::session::Session;
use crate::state::{Accepted, AppState, JobView, SubmitError};
use crate::storage::StorageError;

/// The longest accepted `max_runtime_sec`: one week.
const MAX_RUNTIME_SEC: u64 = 7 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobSubmitPayload {
    agent: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    lease_request: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "crate::json::optional_object")]
    lease_constraints: Option<LeaseConstraints>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    max_runtime_sec: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseConstraints {
    #[serde(default)]
    expires_at: Option<String>,
}

/// A lease namespace: dot-separated lowercase words (§9.2).
fn is_valid_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= 64
        && namespace.split('.').all(|word| {
            let mut bytes = word.bytes();
            bytes.next().is_some_and(|b| b.is_ascii_lowercase())
                && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// `amount ::= currency ":" decimal` (§9.6).
fn is_valid_budget_amount(amount: &str) -> bool {
    let Some((currency, decimal)) = amount.split_once(':') else {
        return false;
    };
    let (whole, fraction) = match decimal.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (decimal, None),
    };
    let digits = |text: &str| {
        !text.is_empty() && text.len() <= 18 && text.bytes().all(|b| b.is_ascii_digit())
    };
    !currency.is_empty()
        && currency.len() <= 16
        && currency
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && digits(whole)
        && fraction.is_none_or(digits)
}

/// Validates `lease_request` (§9.2) and returns it as the effective lease.
fn effective_lease(request: Option<Map<String, Value>>) -> Result<Value, ApiError> {
    let Some(request) = request else {
        return Ok(json!({}));
    };
    for (namespace, patterns) in &request {
        if !is_valid_namespace(namespace) {
            return Err(ApiError::InvalidRequest(format!(
                "lease namespace {namespace:?} is not valid"
            )));
        }
        let Some(patterns) = patterns.as_array() else {
            return Err(ApiError::InvalidRequest(format!(
                "lease_request.{namespace} must be an array of strings"
            )));
        };
        for pattern in patterns {
            let Some(pattern) = pattern
                .as_str()
                .filter(|p| !p.is_empty() && p.len() <= 1024)
            else {
                return Err(ApiError::InvalidRequest(format!(
                    "lease_request.{namespace} must hold non-empty strings"
                )));
            };
            if namespace == "cost.budget" && !is_valid_budget_amount(pattern) {
                return Err(ApiError::InvalidRequest(format!(
                    "cost.budget amount {pattern:?} must look like CURRENCY:DECIMAL"
                )));
            }
        }
    }
    Ok(Value::Object(request))
}

/// `cost.budget` caps by currency (§9.6); one amount per currency.
fn budget_caps(lease: &Value) -> Result<std::collections::BTreeMap<String, f64>, ApiError> {
    let mut caps = std::collections::BTreeMap::new();
    let Some(amounts) = lease.get("cost.budget").and_then(Value::as_array) else {
        return Ok(caps);
    };
    for amount in amounts.iter().filter_map(Value::as_str) {
        let (currency, decimal) = amount.split_once(':').unwrap_or_default();
        let value: f64 = decimal.parse().map_err(|_| {
            ApiError::InvalidRequest(format!("cost.budget amount {amount:?} is not a decimal"))
        })?;
        if caps.insert(currency.to_owned(), value).is_some() {
            return Err(ApiError::InvalidRequest(format!(
                "cost.budget names {currency} more than once"
            )));
        }
    }
    Ok(caps)
}

/// The trace id from a W3C `traceparent` header (§11), if it is valid.
fn trace_id_from_traceparent(parts: &Parts) -> Option<String> {
    let header = parts.headers.get("traceparent")?.to_str().ok()?;
    let fields: Vec<&str> = header.trim().split('-').collect();
    let [version, trace_id, parent_id, flags] = fields.as_slice() else {
        return None;
    };
    let is_hex = |text: &str, length: usize| {
        text.len() == length
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = is_hex(version, 2)
        && *version != "ff"
        && is_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && is_hex(flags, 2);
    valid.then(|| (*trace_id).to_owned())
}

fn agent_error(error: AgentResolveError) -> ApiError {
    match error {
        AgentResolveError::InvalidName(name) => ApiError::InvalidRequest(format!(
            "agent {name:?} does not match name[@version] (§7.5)"
        )),
        AgentResolveError::NotAvailable(name) => ApiError::AgentNotAvailable(name),
        AgentResolveError::VersionNotAvailable { name, version } => {
            ApiError::AgentVersionNotAvailable(format!("{name}@{version}"))
        }
    }
}

/// `POST /v1/sessions/{id}/jobs`: `job.submit` -> `job.accepted` (§7.1).
pub async fn submit_job(
    state: &AppState,
    parts: &Parts,
    body: Incoming,
    session_id: &SessionId,
) -> Result<Response<ResponseBody>, ApiError> {
    let query = Query::parse(parts.uri.query());
    let caller = authenticate_for_session(state, parts, &query, session_id)?;
    let session = session_for(state, &caller, session_id, false).await?;
    let (submit, envelope_trace_id): (JobSubmitPayload, _) =
        read_payload(state, body, "job.submit").await?;
    let trace_id = match trace_id_from_traceparent(parts) {
        Some(trace_id) => Some(trace_id),
        None => checked_trace_id(envelope_trace_id)?,
    };
    let job = accept_job(state, &session, submit, trace_id).await?;
    // An idempotent repeat answers for the session that submitted the job.
    let mut envelope = Envelope::new("job.accepted", &job.session_id, &job.payload);
    envelope.job_id = Some(&job.job_id);
    envelope.trace_id = Some(&job.trace_id);
    Ok(json_response(StatusCode::ACCEPTED, &envelope))
}

/// An envelope's `trace_id` (§11), which must be a W3C trace id: 32
/// lowercase hex digits, not all zero (the official SDKs refuse any other).
pub(super) fn checked_trace_id(trace_id: Option<String>) -> Result<Option<String>, ApiError> {
    match trace_id {
        Some(text) if !is_w3c_trace_id(&text) => Err(ApiError::InvalidRequest(
            "trace_id must be 32 lowercase hex digits, not all zero (§11)".into(),
        )),
        other => Ok(other),
    }
}

fn is_w3c_trace_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}

/// `job.submit` (§7.1) for a session, whatever the binding: validates the
/// request, registers the job (or finds its idempotent original) and starts
/// it. The caller answers with `job.accepted`.
pub(super) async fn accept_job(
    state: &AppState,
    session: &Arc<Session>,
    submit: JobSubmitPayload,
    trace_id: Option<String>,
) -> Result<Accepted, ApiError> {
    let resolved = state.agents.resolve(&submit.agent).map_err(agent_error)?;
    resolved
        .agent
        .validate_input(&submit.input)
        .map_err(ApiError::InvalidRequest)?;
    let lease = effective_lease(submit.lease_request.clone())?;
    let budget = budget_caps(&lease)?;
    if !budget.is_empty() && !session.has_feature("cost.budget") {
        return Err(ApiError::InvalidRequest(
            "cost.budget was not negotiated for this session (§6.2)".into(),
        ));
    }
    if submit.lease_constraints.is_some() && !session.has_feature("lease_expires_at") {
        return Err(ApiError::InvalidRequest(
            "lease_expires_at was not negotiated for this session (§6.2)".into(),
        ));
    }
    let (lease_constraints, lease_expires_at) = match &submit.lease_constraints {
        None => (None, None),
        Some(constraints) => match &constraints.expires_at {
            None => (Some(json!({})), None),
            Some(text) => {
                let at = parse_utc_timestamp(text).ok_or_else(|| {
                    ApiError::InvalidRequest(
                        "lease_constraints.expires_at must be an RFC 3339 UTC time ending in Z"
                            .into(),
                    )
                })?;
                if at <= OffsetDateTime::now_utc() {
                    return Err(ApiError::InvalidRequest(
                        "lease_constraints.expires_at must be in the future".into(),
                    ));
                }
                (Some(json!({ "expires_at": text })), Some(at))
            }
        },
    };
    let max_runtime = match submit.max_runtime_sec {
        None => None,
        Some(seconds) if (1..=MAX_RUNTIME_SEC).contains(&seconds) => {
            Some(Duration::from_secs(seconds))
        }
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "max_runtime_sec must be 1..={MAX_RUNTIME_SEC}"
            )));
        }
    };
    if let Some(key) = &submit.idempotency_key {
        if key.is_empty() || key.len() > 256 {
            return Err(ApiError::InvalidRequest(
                "idempotency_key must be 1..=256 bytes".into(),
            ));
        }
    }
    let trace_id = trace_id.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let fingerprint = json!({
        "agent": resolved.qualified_name,
        "input": submit.input,
        "lease_request": lease,
        "lease_constraints": lease_constraints,
        "max_runtime_sec": submit.max_runtime_sec,
    });
    let created_at = OffsetDateTime::now_utc();
    let spec = JobSpec {
        id: JobId::generate(),
        session_id: session.id.clone(),
        principal: session.principal.clone(),
        agent: resolved.qualified_name.clone(),
        input: submit.input,
        lease,
        lease_constraints,
        lease_expires_at,
        budget,
        max_runtime,
        trace_id,
        created_at: format_rfc3339(created_at),
        created_at_time: created_at,
        fingerprint,
        idempotency_key: submit.idempotency_key.clone(),
        limits: JobLimits {
            max_result_chunk_bytes: state.config.max_result_chunk_bytes,
            max_result_bytes: state.config.max_result_bytes,
            back_pressure_lag_events: state.config.back_pressure_lag_events,
        },
    };
    // A resubmission with a known key answers with the earlier job (or 409)
    // whatever the budgets: a client retrying a lost 202 must learn of it.
    let principal = session.principal.clone();
    if !state.repeats_known_key(&principal, submit.idempotency_key.as_deref()) {
        admit_retention(state, &principal)?;
    }
    let accepted = state
        .submit_job(spec, session, resolved.agent)
        .await
        .map_err(|error| match error {
            SubmitError::ConflictingKey => ApiError::DuplicateKey,
            SubmitError::SessionFull => ApiError::TooManyJobs {
                limit: state.config.max_jobs_per_session,
            },
            SubmitError::PrincipalBusy => ApiError::TooManyRunningJobs {
                limit: state.config.max_running_jobs_per_principal,
            },
            SubmitError::Storage(error) => error.into(),
        })?;
    if accepted.fresh {
        state.metrics.job_accepted(&resolved.qualified_name);
        tracing::info!(session = %session.id, job = %accepted.job_id, agent = %resolved.qualified_name, "job accepted");
    } else {
        state.metrics.idempotent_hit();
    }
    Ok(accepted)
}

/// Refuses new work while the retained-event budgets are (7/8) used up: the
/// principal's (429, until it acknowledges or closes sessions) or the whole
/// gateway's (503, retryable). Running jobs are not stopped; their sessions
/// evict their own oldest events instead (`event_log::budget`).
fn admit_retention(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let budget = &state.retention;
    if budget.principal_at_high_water(principal) {
        return Err(ApiError::RetainedBytesPerPrincipal {
            limit: budget.per_principal_limit(),
        });
    }
    if budget.global().at_high_water() {
        tracing::warn!(
            used = budget.global().used(),
            limit = budget.global().limit(),
            "job refused: the gateway-wide retained-bytes budget is full"
        );
        return Err(ApiError::RetainedBytesFull);
    }
    Ok(())
}

/// A job the caller's principal may observe; anything else is "not found",
/// so other principals' jobs do not leak (§6.6).
async fn visible_job(
    state: &AppState,
    caller: &Caller,
    job_id: &JobId,
) -> Result<JobView, ApiError> {
    state
        .job_view(&caller.principal, job_id)
        .await?
        .ok_or(ApiError::JobNotFound)
}

/// `GET /v1/sessions/{id}/jobs/{job_id}`.
pub async fn get_job(
    state: &AppState,
    parts: &Parts,
    session_id: &SessionId,
    job_id: &JobId,
) -> Result<Response<ResponseBody>, ApiError> {
    let query = Query::parse(parts.uri.query());
    let caller = authenticate_for_session(state, parts, &query, session_id)?;
    let session = session_for(state, &caller, session_id, false).await?;
    let job = visible_job(state, &caller, job_id).await?;
    let mut payload = job.descriptor;
    payload["submitted_by_this_session"] = json!(job.session_id == session.id);
    payload["terminal"] = job.terminal.unwrap_or(Value::Null);
    let mut envelope = Envelope::new("job.status", &session.id, &payload);
    envelope.job_id = Some(&job.job_id);
    envelope.trace_id = Some(&job.trace_id);
    Ok(json_response(StatusCode::OK, &envelope))
}

/// `POST /v1/sessions/{id}/jobs/{job_id}/cancel`: `job.cancel` (§7.4).
pub async fn cancel_job(
    state: &AppState,
    parts: &Parts,
    session_id: &SessionId,
    job_id: &JobId,
) -> Result<Response<ResponseBody>, ApiError> {
    let query = Query::parse(parts.uri.query());
    let caller = authenticate_for_session(state, parts, &query, session_id)?;
    let session = session_for(state, &caller, session_id, false).await?;
    let job = cancel_in_session(state, &caller, &session, job_id).await?;
    let payload = json!({ "job_id": job.job_id });
    let mut envelope = Envelope::new("job.cancelled", &session.id, &payload);
    envelope.job_id = Some(&job.job_id);
    Ok(json_response(StatusCode::OK, &envelope))
}

/// `job.cancel` (§7.4), whatever the binding: only the submitting session
/// may cancel, and only a job that has not ended. The caller answers with
/// `job.cancelled`; the job's terminal goes through the log.
pub(super) async fn cancel_in_session(
    state: &AppState,
    caller: &Caller,
    session: &Session,
    job_id: &JobId,
) -> Result<JobView, ApiError> {
    let job = state
        .cancel_job(&caller.principal, session, job_id)
        .await
        .map_err(|error| match error {
            CancelError::Storage(StorageError::NotFound) => ApiError::JobNotFound,
            other => other.into(),
        })?;
    tracing::info!(session = %session.id, job = %job.job_id, "job cancelled");
    Ok(job)
}
