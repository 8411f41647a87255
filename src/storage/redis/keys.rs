//! The Redis key layout (docs/cluster.md). Every key of a session carries
//! the hash tag `{<session id>}`, so a session's keys share one slot and its
//! scripts stay single-slot.

use crate::ids::{JobId, Principal, SessionId};
use crate::storage::{StorageError, StorageResult};

/// The longest id (session, job, node) used inside a key.
const MAX_ID_LEN: usize = 128;
/// The longest idempotency key accepted (hex-encoded into the key).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// The sorted set of running jobs by lease expiry, for the reapers. It is
/// one key across sessions: fine on a single primary; a sharded Redis
/// Cluster would need it split (see docs/cluster.md).
pub const RUNNING: &str = "arcp:running";

/// Ids come from clients too: only characters that cannot break out of a
/// key segment or its hash tag (`{`, `}`, `:`, spaces) are accepted.
pub fn checked(id: &str) -> StorageResult<&str> {
    let usable = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if usable {
        Ok(id)
    } else {
        Err(StorageError::InvalidId)
    }
}

/// The keys of one session.
pub struct SessionKeys {
    prefix: String,
}

impl SessionKeys {
    pub fn new(session_id: &SessionId) -> StorageResult<Self> {
        Ok(SessionKeys {
            prefix: format!("arcp:{{{}}}", checked(session_id.as_str())?),
        })
    }

    pub fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }

    pub fn log(&self) -> String {
        format!("{}:log", self.prefix)
    }

    pub fn session(&self) -> String {
        format!("{}:sess", self.prefix)
    }

    /// The pub/sub channel carrying "this log grew to seq N" hints.
    pub fn wake(&self) -> String {
        format!("{}:wake", self.prefix)
    }

    pub fn job(&self, job_id: &JobId) -> StorageResult<String> {
        Ok(format!("{}:job:{}", self.prefix, checked(job_id.as_str())?))
    }

    pub fn lease(&self, job_id: &JobId) -> StorageResult<String> {
        Ok(format!(
            "{}:lease:{}",
            self.prefix,
            checked(job_id.as_str())?
        ))
    }

    pub fn subscribers(&self, job_id: &JobId) -> StorageResult<String> {
        Ok(format!(
            "{}:jsubs:{}",
            self.prefix,
            checked(job_id.as_str())?
        ))
    }
}

/// The member of [`RUNNING`] naming one job.
pub fn running_member(session_id: &SessionId, job_id: &JobId) -> StorageResult<String> {
    Ok(format!(
        "{} {}",
        checked(session_id.as_str())?,
        checked(job_id.as_str())?
    ))
}

pub fn parse_running_member(member: &str) -> Option<(SessionId, JobId)> {
    let (session, job) = member.split_once(' ')?;
    Some((SessionId::from_client(session), JobId::from_client(job)))
}

/// A node's notice channel.
pub fn node_channel(node_id: &str) -> StorageResult<String> {
    Ok(format!("arcp:node:{}:ctl", checked(node_id)?))
}

/// One principal's job listing: a hash holding the position counter, and
/// `<this>:order`, a sorted set of `"<sid> <jid>"` by position.
pub fn principal_jobs(principal: &Principal) -> String {
    format!("arcp:{{p:{}}}:jobs", hex(principal.as_str().as_bytes()))
}

/// Where a job lives: its session id, by job id.
pub fn job_location(job_id: &JobId) -> StorageResult<String> {
    Ok(format!("arcp:jobloc:{}", checked(job_id.as_str())?))
}

/// One principal's idempotency key: both parts hex-encoded, so no byte of
/// either can reach another principal's namespace.
pub fn idempotency(principal: &Principal, key: &str) -> StorageResult<String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(StorageError::InvalidId);
    }
    Ok(format!(
        "arcp:{{p:{}}}:idem:{}",
        hex(principal.as_str().as_bytes()),
        hex(key.as_bytes())
    ))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_a_key_are_refused() {
        for bad in ["", "a}b", "a{b", "a:b", "a b", "sess\n", &"x".repeat(129)] {
            assert_eq!(checked(bad), Err(StorageError::InvalidId), "{bad:?}");
        }
        assert_eq!(checked("sess_0f-A"), Ok("sess_0f-A"));
    }

    #[test]
    fn principals_get_disjoint_idempotency_namespaces() {
        let a = idempotency(&Principal::new("a"), "b:c").unwrap();
        let b = idempotency(&Principal::new("a:b"), "c").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, "arcp:{p:61}:idem:623a63");
    }
}
