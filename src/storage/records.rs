//! The typed records the storage backends keep, serialized with serde (JSON
//! inside Redis values, plain structs in memory).

use serde::{Deserialize, Serialize};

use crate::ids::{EventSeq, JobId, SessionId};

/// A session as every node must know it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    #[serde(with = "session_id")]
    pub session_id: SessionId,
    /// The owning principal's name (principals never cross).
    pub principal: String,
    /// The features negotiated at `session.hello` (§6.2).
    pub features: Vec<String>,
    pub created_at_ms: u64,
}

/// The one stream attached to a session, cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHolder {
    pub node: String,
    pub stream: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Its node was lost; a survivor appended the terminal.
    Lost,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "lost" => JobStatus::Lost,
            _ => return None,
        })
    }
}

/// A job, as any node may need to list, cancel or reap it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    #[serde(with = "session_id")]
    pub session_id: SessionId,
    #[serde(with = "job_id")]
    pub job_id: JobId,
    pub principal: String,
    pub agent: String,
    pub submitted_at_ms: u64,
    pub status: JobStatus,
    /// The node running it (set by `acquire_lease`).
    pub owner: Option<String>,
    pub cancel_requested: bool,
    /// The job's descriptor at acceptance (§6.6), as any node lists it.
    #[serde(default)]
    pub descriptor: serde_json::Value,
    /// The `job.accepted` payload, answered again to an idempotent
    /// resubmission through any node (§7.2).
    #[serde(default)]
    pub accepted: serde_json::Value,
    /// The terminal event's payload, once the job has ended on its node.
    #[serde(default)]
    pub terminal: Option<serde_json::Value>,
}

/// A session's shared state: its record and what every node must agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionState {
    pub record: SessionRecord,
    /// The newest token generation issued, and the newest one presented.
    pub issued: u64,
    pub used: u64,
    pub closed: bool,
    /// The highest acknowledged `event_seq` (§6.5), if any.
    pub acked: Option<EventSeq>,
    pub holder: Option<StreamHolder>,
}

/// A job's lease: who may append its events. The token is unique per
/// acquisition, so a node that lost the lease and took nothing since cannot
/// pass for the new holder (fencing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub session_id: SessionId,
    pub job_id: JobId,
    pub node: String,
    pub token: String,
}

/// What a node is told on its notice channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeNotice {
    /// A newer stream attached to the session; end this one.
    StreamReplaced {
        #[serde(with = "session_id")]
        session_id: SessionId,
        stream: u64,
    },
    /// Cancel the job (§7.5) if this node runs it.
    CancelRequested {
        #[serde(with = "session_id")]
        session_id: SessionId,
        #[serde(with = "job_id")]
        job_id: JobId,
    },
    /// Subscribe `subscriber` to the job `job_id` this node runs (§7.6),
    /// with its history after `history_after`; answer `request` on
    /// `reply_node`'s channel.
    SubscribeRequested {
        request: u64,
        reply_node: String,
        #[serde(with = "job_id")]
        job_id: JobId,
        #[serde(with = "session_id")]
        subscriber: SessionId,
        history_after: Option<EventSeq>,
    },
    /// The answer to a `SubscribeRequested` this node sent.
    SubscribeAnswered {
        request: u64,
        answer: SubscribeAnswer,
    },
    /// Stop copying the job's events to `subscriber`.
    Unsubscribed {
        #[serde(with = "job_id")]
        job_id: JobId,
        #[serde(with = "session_id")]
        subscriber: SessionId,
    },
    /// The session was closed (§6.7) while this node held its stream.
    SessionClosed {
        #[serde(with = "session_id")]
        session_id: SessionId,
        stream: u64,
    },
}

/// How a subscription request ended (§7.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SubscribeAnswer {
    /// Subscribed: events after `subscribed_from` in the job's own session
    /// follow; `replayed` says whether history was copied first.
    Subscribed {
        subscribed_from: EventSeq,
        replayed: bool,
    },
    /// The history asked for is no longer retained.
    HistoryEvicted,
    /// The job is not running on the node asked (it ended meanwhile).
    NotRunning,
    /// The store could not be reached.
    Unavailable,
}

/// A job the reaper ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReapedJob {
    pub session_id: SessionId,
    pub job_id: JobId,
    /// The terminal's sequence, or `None` when the session's log was already
    /// gone (nothing left to end).
    pub terminal_seq: Option<EventSeq>,
}

/// What an idempotency key points at (§7.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    #[serde(with = "session_id")]
    pub session_id: SessionId,
    #[serde(with = "job_id")]
    pub job_id: JobId,
    /// A digest of the submission, so a reused key with another body can be
    /// told apart from a retry.
    pub fingerprint: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdempotencyClaim {
    Claimed,
    Existing(IdempotencyRecord),
}

/// Why history is gone (§6.3 `RESUME_WINDOW_EXPIRED`). Each reason is a
/// distinct failure an operator wants to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoneReason {
    /// The cursor is below the floor: retention or acks freed those events.
    Evicted { floor: EventSeq },
    /// Events the bounds claim are missing (data loss in the store).
    HistoryLost,
    /// The session's records no longer exist: the window passed, or the
    /// store lost its data (flush, eviction, failover).
    SessionMissing,
}

impl std::fmt::Display for GoneReason {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GoneReason::Evicted { floor } => {
                write!(formatter, "events up to {floor} are no longer retained")
            }
            GoneReason::HistoryLost => write!(formatter, "stored events were lost"),
            GoneReason::SessionMissing => write!(formatter, "the session's records are gone"),
        }
    }
}

macro_rules! id_serde {
    ($module:ident, $type:ty) => {
        mod $module {
            use serde::{Deserialize, Deserializer, Serialize, Serializer};

            pub fn serialize<S: Serializer>(id: &$type, serializer: S) -> Result<S::Ok, S::Error> {
                id.serialize(serializer)
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(
                deserializer: D,
            ) -> Result<$type, D::Error> {
                let text = String::deserialize(deserializer)?;
                Ok(<$type>::from_client(&text))
            }
        }
    };
}

id_serde!(session_id, crate::ids::SessionId);
id_serde!(job_id, crate::ids::JobId);
