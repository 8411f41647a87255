//! How a job ends (§7.3, §8.4): the terminal it reaches exactly once.

use serde_json::{json, Value};

use crate::protocol::{ErrorCode, ErrorPayload, JobStatus};

/// How a job ended.
#[derive(Clone, Debug)]
pub enum Terminal {
    /// `job.result` with the result inline.
    Success { result: Value },
    /// `job.result` referring to streamed `result_chunk` events (§8.4).
    StreamedSuccess {
        result_id: String,
        result_size: u64,
        summary: String,
    },
    /// `job.error` with its final status (§7.3).
    Failure {
        final_status: JobStatus,
        error: ErrorPayload,
    },
}

impl Terminal {
    pub fn failure(final_status: JobStatus, code: ErrorCode, message: impl Into<String>) -> Self {
        let retryable = code.forced_retryable().unwrap_or(false);
        Terminal::Failure {
            final_status,
            error: ErrorPayload {
                code,
                message: message.into(),
                retryable,
            },
        }
    }

    pub fn cancelled() -> Self {
        Terminal::failure(
            JobStatus::Cancelled,
            ErrorCode::Cancelled,
            "job cancelled by its submitting session",
        )
    }

    pub(super) fn internal(message: impl Into<String>) -> Self {
        Terminal::failure(JobStatus::Error, ErrorCode::InternalError, message)
    }

    pub(super) fn status(&self) -> JobStatus {
        match self {
            Terminal::Success { .. } | Terminal::StreamedSuccess { .. } => JobStatus::Success,
            Terminal::Failure { final_status, .. } => *final_status,
        }
    }

    pub fn message_type_and_payload(&self) -> (&'static str, Value) {
        match self {
            Terminal::Success { result } => (
                "job.result",
                json!({ "final_status": "success", "result": result }),
            ),
            Terminal::StreamedSuccess {
                result_id,
                result_size,
                summary,
            } => (
                "job.result",
                json!({
                    "final_status": "success",
                    "result_id": result_id,
                    "result_size": result_size,
                    "summary": summary,
                }),
            ),
            Terminal::Failure {
                final_status,
                error,
            } => (
                "job.error",
                json!({
                    "final_status": final_status,
                    "code": error.code,
                    "message": error.message,
                    "retryable": error.retryable,
                }),
            ),
        }
    }
}

/// The job already reached a terminal state; nothing more may be emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobFinished(pub JobStatus);
