//! ARCP v1.1 wire vocabulary shared by every module: envelopes (§5), error
//! codes (§12), job statuses (§7.3) and timestamps.
//!
//! Nothing here knows about HTTP; the `http` module decides how these values
//! travel.

use serde::Serialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::ids::{EventSeq, JobId, MessageId, SessionId};

/// The protocol version stamped into every envelope's `arcp` field.
pub const ARCP_VERSION: &str = "1.1";

/// Every error code of the taxonomy (§12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    PermissionDenied,
    LeaseSubsetViolation,
    JobNotFound,
    DuplicateKey,
    AgentNotAvailable,
    AgentVersionNotAvailable,
    Cancelled,
    Timeout,
    ResumeWindowExpired,
    HeartbeatLost,
    LeaseExpired,
    BudgetExhausted,
    InvalidRequest,
    Unauthenticated,
    InternalError,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::PermissionDenied,
        ErrorCode::LeaseSubsetViolation,
        ErrorCode::JobNotFound,
        ErrorCode::DuplicateKey,
        ErrorCode::AgentNotAvailable,
        ErrorCode::AgentVersionNotAvailable,
        ErrorCode::Cancelled,
        ErrorCode::Timeout,
        ErrorCode::ResumeWindowExpired,
        ErrorCode::HeartbeatLost,
        ErrorCode::LeaseExpired,
        ErrorCode::BudgetExhausted,
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::LeaseSubsetViolation => "LEASE_SUBSET_VIOLATION",
            ErrorCode::JobNotFound => "JOB_NOT_FOUND",
            ErrorCode::DuplicateKey => "DUPLICATE_KEY",
            ErrorCode::AgentNotAvailable => "AGENT_NOT_AVAILABLE",
            ErrorCode::AgentVersionNotAvailable => "AGENT_VERSION_NOT_AVAILABLE",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::ResumeWindowExpired => "RESUME_WINDOW_EXPIRED",
            ErrorCode::HeartbeatLost => "HEARTBEAT_LOST",
            ErrorCode::LeaseExpired => "LEASE_EXPIRED",
            ErrorCode::BudgetExhausted => "BUDGET_EXHAUSTED",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }

    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }

    /// §12: `INTERNAL_ERROR` is always retryable; `LEASE_EXPIRED` and
    /// `BUDGET_EXHAUSTED` never are.
    pub fn forced_retryable(self) -> Option<bool> {
        match self {
            ErrorCode::InternalError => Some(true),
            ErrorCode::LeaseExpired | ErrorCode::BudgetExhausted => Some(false),
            _ => None,
        }
    }
}

/// An ARCP error payload `{code, message, retryable}` (§12).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorPayload {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
}

/// Job lifecycle states (§7.3). The last four are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    Success,
    Error,
    Cancelled,
    TimedOut,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Pending | JobStatus::Running)
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        [
            JobStatus::Pending,
            JobStatus::Running,
            JobStatus::Success,
            JobStatus::Error,
            JobStatus::Cancelled,
            JobStatus::TimedOut,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Success => "success",
            JobStatus::Error => "error",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
        }
    }
}

/// The fields of an envelope (§5) that this gateway fills in. Unknown fields on
/// incoming envelopes are ignored, as §5 requires.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub arcp: &'static str,
    pub id: MessageId,
    #[serde(rename = "type")]
    pub message_type: &'a str,
    pub session_id: &'a SessionId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<&'a JobId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_seq: Option<EventSeq>,
    pub payload: &'a Value,
}

impl<'a> Envelope<'a> {
    pub fn new(message_type: &'a str, session_id: &'a SessionId, payload: &'a Value) -> Self {
        Envelope {
            arcp: ARCP_VERSION,
            id: MessageId::generate(),
            message_type,
            session_id,
            trace_id: None,
            job_id: None,
            event_seq: None,
            payload,
        }
    }

    /// The envelope as one line of JSON. Serializing a `Value` cannot fail.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The fields of a job event's envelope that do not depend on the session it
/// is delivered in, as the end of a JSON object: `"trace_id":…,"job_id":…,
/// "payload":…}`. [`job_envelope_head`] writes the rest before it.
pub fn job_envelope_tail(trace_id: Option<&str>, job_id: &JobId, payload: &Value) -> Vec<u8> {
    #[derive(Serialize)]
    struct Tail<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        trace_id: Option<&'a str>,
        job_id: &'a JobId,
        payload: &'a Value,
    }
    let mut json = serde_json::to_vec(&Tail {
        trace_id,
        job_id,
        payload,
    })
    .unwrap_or_else(|_| br#"{"payload":null}"#.to_vec());
    // Drop the opening brace; the head supplies it.
    json.remove(0);
    json
}

/// The session-specific start of a job event's envelope (§5), up to and
/// including the comma before [`job_envelope_tail`]:
/// `{"arcp":"1.1","id":…,"type":…,"session_id":…,"event_seq":…,`.
///
/// Written once per event per session, so it is written field by field
/// rather than through a serde struct: a fan-out to 1,000 sessions spent
/// more time here than anywhere else in encoding. Strings that need no
/// escaping (ids the gateway generates always) are copied between quotes;
/// any other string and the number go through `serde_json`.
pub fn job_envelope_head(
    out: &mut Vec<u8>,
    message_type: &str,
    session_id: &SessionId,
    event_seq: EventSeq,
    id: &str,
) {
    out.extend_from_slice(b"{\"arcp\":\"");
    out.extend_from_slice(ARCP_VERSION.as_bytes());
    out.extend_from_slice(b"\",\"id\":");
    push_json_str(out, id);
    out.extend_from_slice(b",\"type\":");
    push_json_str(out, message_type);
    out.extend_from_slice(b",\"session_id\":");
    push_json_str(out, session_id.as_str());
    out.extend_from_slice(b",\"event_seq\":");
    push_json_number(out, event_seq);
    out.push(b',');
}

/// Appends `value` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, value: &str) {
    let plain = value
        .bytes()
        .all(|byte| (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, value).is_err() {
        // Writing to a `Vec` cannot fail; keep the JSON whole regardless.
        out.extend_from_slice(b"\"\"");
    }
}

/// Appends `value` as a JSON number.
pub fn push_json_number(out: &mut Vec<u8>, value: u64) {
    if serde_json::to_writer(&mut *out, &value).is_err() {
        out.push(b'0');
    }
}

/// Now, as an RFC 3339 UTC timestamp with millisecond precision.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// RFC 3339 in UTC with exactly three fractional digits, e.g.
/// `2026-05-13T19:42:13.020Z`.
pub fn format_rfc3339(at: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

/// Parses an RFC 3339 timestamp that must be UTC with a `Z` suffix (§9.5).
pub fn parse_utc_timestamp(text: &str) -> Option<OffsetDateTime> {
    if !text.ends_with('Z') {
        return None;
    }
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_their_wire_names() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, Value::String(code.as_str().to_owned()));
        }
        assert_eq!(ErrorCode::parse("NOT_A_CODE"), None);
    }

    #[test]
    fn timestamps_have_millisecond_precision() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_778_701_333_020_500_000).unwrap();
        assert_eq!(format_rfc3339(at), "2026-05-13T19:42:13.020Z");
        assert_eq!(
            parse_utc_timestamp(&format_rfc3339(at))
                .unwrap()
                .millisecond(),
            20
        );
    }

    #[test]
    fn utc_timestamps_require_the_z_suffix() {
        assert!(parse_utc_timestamp("2030-01-01T00:00:00Z").is_some());
        assert!(parse_utc_timestamp("2030-01-01T00:00:00+00:00").is_none());
        assert!(parse_utc_timestamp("yesterday").is_none());
    }
}
