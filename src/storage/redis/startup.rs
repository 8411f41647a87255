//! The start-up check of a Redis that is to hold cluster state: it must keep
//! what it acknowledged. Decision (docs/cluster.md): an eviction policy other
//! than `noeviction`, AOF off, or a server too old for the scripts is an
//! error (refuse to start: each silently loses events or sessions); an AOF
//! that is not fsynced on every write is a warning (a Redis crash may lose
//! up to a second of acknowledged events, which resumes then report as an
//! explicit 410, never a silent gap).
//!
//! The facts come from `INFO`, which managed Redis services keep even when
//! they rename `CONFIG`; `appendfsync` is only in `CONFIG GET`, so when that
//! is refused the report says "unknown" and warns.

use redis::aio::ConnectionManager;

use crate::storage::{StorageError, StorageResult};

/// What the server reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistenceReport {
    pub redis_version: String,
    pub aof_enabled: bool,
    pub maxmemory_policy: String,
    /// `always`, `everysec`, `no`, or `None` when `CONFIG GET` is refused.
    pub appendfsync: Option<String>,
    /// Problems that make the Redis unfit: start-up must refuse.
    pub problems: Vec<PersistenceProblem>,
    /// Risks to log loudly at start-up.
    pub warnings: Vec<PersistenceWarning>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PersistenceProblem {
    #[error(
        "redis maxmemory-policy is {0:?}: it may evict session logs silently; set \
         `maxmemory-policy noeviction`"
    )]
    Evicts(String),
    #[error("redis AOF is off: a restart loses every session; set `appendonly yes`")]
    AofDisabled,
    #[error("redis {0} is too old: cluster mode needs 6.2 or newer (XTRIM MINID)")]
    TooOld(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PersistenceWarning {
    #[error(
        "redis appendfsync is {0:?}: a Redis crash may lose up to a second of acknowledged \
         events (resumes then get 410); `appendfsync always` closes that window"
    )]
    FsyncNotAlways(String),
    #[error("redis refused CONFIG GET appendfsync; cannot tell how often the AOF is synced")]
    FsyncUnknown,
}

impl PersistenceReport {
    /// The report, or the problems as one error message.
    pub fn into_result(self) -> Result<Self, String> {
        if self.problems.is_empty() {
            return Ok(self);
        }
        let problems: Vec<String> = self.problems.iter().map(ToString::to_string).collect();
        Err(problems.join("; "))
    }
}

/// Asks the server how it keeps data.
pub async fn check_persistence(
    connection: &mut ConnectionManager,
) -> StorageResult<PersistenceReport> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .arg("persistence")
        .arg("memory")
        .query_async(connection)
        .await
        .map_err(|error| StorageError::Unavailable(error.to_string()))?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
    };
    let redis_version = field("redis_version").unwrap_or_default();
    let aof_enabled = field("aof_enabled").as_deref() == Some("1");
    let maxmemory_policy = field("maxmemory_policy").unwrap_or_default();
    let appendfsync: Option<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async::<Vec<String>>(connection)
        .await
        .ok()
        .and_then(|pair| pair.get(1).cloned());

    let mut problems = Vec::new();
    if maxmemory_policy != "noeviction" {
        problems.push(PersistenceProblem::Evicts(maxmemory_policy.clone()));
    }
    if !aof_enabled {
        problems.push(PersistenceProblem::AofDisabled);
    }
    if !version_at_least(&redis_version, (6, 2)) {
        problems.push(PersistenceProblem::TooOld(redis_version.clone()));
    }
    let mut warnings = Vec::new();
    match appendfsync.as_deref() {
        Some("always") => {}
        Some(other) => warnings.push(PersistenceWarning::FsyncNotAlways(other.to_owned())),
        None => warnings.push(PersistenceWarning::FsyncUnknown),
    }
    Ok(PersistenceReport {
        redis_version,
        aof_enabled,
        maxmemory_policy,
        appendfsync,
        problems,
        warnings,
    })
}

fn version_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version.split('.').map(|part| part.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(found_major), Some(found_minor)) => (found_major, found_minor) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::version_at_least;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("7.0.15", (6, 2)));
        assert!(version_at_least("6.2.0", (6, 2)));
        assert!(version_at_least("10.0.0", (6, 2)));
        assert!(!version_at_least("6.0.9", (6, 2)));
        assert!(!version_at_least("", (6, 2)));
    }
}
