//! Jobs in SQL: records (listed per principal in submission order), leases
//! with wall-clock expiry, the reaper's per-job step, idempotency keys.
//! Runs on the writer or a reader thread, in the caller's transaction;
//! `Err` is an SQL failure, `Ok(Err(_))` a refusal.

use rusqlite::{params, Connection, OptionalExtension};

use super::writer::{Effect, Effects};
use super::{expiry, from_json, log, now_ms, Sql};
use crate::ids::{JobId, Principal, SessionId};
use crate::storage::{
    EventKind, IdempotencyClaim, JobRecord, JobStatus, Lease, NodeNotice, ReapedJob, StorageError,
    StorageResult,
};

/// A job's row: the record as submitted, then what changed since.
struct JobRow {
    record: String,
    status: String,
    owner: Option<String>,
    cancel_requested: bool,
    lease_token: Option<String>,
    lease_expires_ms: Option<u64>,
    terminal: Option<String>,
}

/// The columns [`JobRow::read`] expects, in order.
const JOB_COLUMNS: &str =
    "record, status, owner, cancel_requested, lease_token, lease_expires_ms, terminal";

impl JobRow {
    fn read(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<JobRow> {
        Ok(JobRow {
            record: row.get(first)?,
            status: row.get(first + 1)?,
            owner: row.get(first + 2)?,
            cancel_requested: row.get(first + 3)?,
            lease_token: row.get(first + 4)?,
            lease_expires_ms: row.get(first + 5)?,
            terminal: row.get(first + 6)?,
        })
    }
}

fn job_row(
    connection: &Connection,
    session_id: &SessionId,
    job_id: &JobId,
) -> rusqlite::Result<Option<JobRow>> {
    connection
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE session_id = ?1 AND job_id = ?2"
        ))?
        .query_row(params![session_id.as_str(), job_id.as_str()], |row| {
            JobRow::read(row, 0)
        })
        .optional()
}

pub fn exists(
    connection: &Connection,
    session_id: &SessionId,
    job_id: &JobId,
) -> rusqlite::Result<bool> {
    Ok(job_row(connection, session_id, job_id)?.is_some())
}

fn job_record(row: &JobRow) -> StorageResult<JobRecord> {
    let mut record: JobRecord = from_json(&row.record)?;
    record.status = JobStatus::parse(&row.status)
        .ok_or_else(|| StorageError::Corrupt(format!("job status {:?}", row.status)))?;
    record.owner = row.owner.clone();
    record.cancel_requested = row.cancel_requested;
    if let Some(terminal) = &row.terminal {
        record.terminal = Some(from_json(terminal)?);
    }
    Ok(record)
}

pub fn record(connection: &Connection, session_id: &SessionId, job_id: &JobId) -> Sql<JobRecord> {
    Ok(match job_row(connection, session_id, job_id)? {
        Some(row) => job_record(&row),
        None => Err(StorageError::NotFound),
    })
}

/// Stores a new job, listed under its principal at the next position.
pub fn put(connection: &Connection, record: &JobRecord, json: &str) -> Sql<()> {
    let position: u64 = connection
        .prepare_cached("SELECT coalesce(max(position), 0) + 1 FROM jobs WHERE principal = ?1")?
        .query_row([record.principal.as_str()], |row| row.get(0))?;
    let inserted = connection
        .prepare_cached(
            "INSERT INTO jobs (session_id, job_id, principal, position, record, status, owner,
                               cancel_requested)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (session_id, job_id) DO NOTHING",
        )?
        .execute(params![
            record.session_id.as_str(),
            record.job_id.as_str(),
            record.principal,
            position,
            json,
            record.status.as_str(),
            record.owner,
            record.cancel_requested
        ])?;
    Ok(if inserted == 1 {
        Ok(())
    } else {
        Err(StorageError::Exists)
    })
}

pub fn locate(connection: &Connection, job_id: &JobId) -> Sql<SessionId> {
    let session: Option<String> = connection
        .prepare_cached(
            "SELECT session_id FROM jobs WHERE job_id = ?1 ORDER BY session_id LIMIT 1",
        )?
        .query_row([job_id.as_str()], |row| row.get(0))
        .optional()?;
    Ok(session
        .map(|session| SessionId::from_client(&session))
        .ok_or(StorageError::NotFound))
}

/// A principal's jobs after position `after`, in submission order.
pub fn list(
    connection: &Connection,
    principal: &Principal,
    after: u64,
    limit: usize,
) -> Sql<Vec<(u64, JobRecord)>> {
    let after = after.min(i64::MAX as u64);
    let limit = limit.min(i64::MAX as usize) as u64;
    let mut statement = connection.prepare_cached(&format!(
        "SELECT position, {JOB_COLUMNS} FROM jobs WHERE principal = ?1 AND position > ?2
         ORDER BY position LIMIT ?3"
    ))?;
    let mut rows = statement.query(params![principal.as_str(), after, limit])?;
    let mut page = Vec::new();
    while let Some(row) = rows.next()? {
        let position: u64 = row.get(0)?;
        match job_record(&JobRow::read(row, 1)?) {
            Ok(record) => page.push((position, record)),
            Err(error) => return Ok(Err(error)),
        }
    }
    Ok(Ok(page))
}

pub fn acquire_lease(
    connection: &Connection,
    session_id: &SessionId,
    job_id: &JobId,
    node: &str,
    ttl_ms: u64,
) -> Sql<Lease> {
    let Some(row) = job_row(connection, session_id, job_id)? else {
        return Ok(Err(StorageError::NotFound));
    };
    let now = now_ms();
    if row.lease_token.is_some() && row.lease_expires_ms.is_some_and(|expires| expires > now) {
        return Ok(Err(StorageError::LeaseHeld));
    }
    // Unique per acquisition, so a node that lost the lease cannot pass for
    // the new holder.
    let token = format!("{node}:{:032x}", rand::random::<u128>());
    connection
        .prepare_cached(
            "UPDATE jobs SET lease_token = ?3, lease_expires_ms = ?4, owner = ?5
             WHERE session_id = ?1 AND job_id = ?2",
        )?
        .execute(params![
            session_id.as_str(),
            job_id.as_str(),
            token,
            expiry(now, ttl_ms),
            node
        ])?;
    Ok(Ok(Lease {
        session_id: session_id.clone(),
        job_id: job_id.clone(),
        node: node.to_owned(),
        token,
    }))
}

/// Jobs whose lease expired by `cutoff_ms`, oldest expiry first. A row
/// whose ids or token cannot be read is logged and left out, so it never
/// blocks the reaping of the others.
pub fn reap_candidates(
    connection: &Connection,
    cutoff_ms: u64,
    limit: usize,
) -> Sql<Vec<(SessionId, JobId, String)>> {
    let limit = limit.min(i64::MAX as usize) as u64;
    let mut statement = connection.prepare_cached(
        "SELECT session_id, job_id, lease_token FROM jobs
         WHERE lease_token IS NOT NULL AND lease_expires_ms <= ?1
         ORDER BY lease_expires_ms LIMIT ?2",
    )?;
    let mut rows = statement.query(params![cutoff_ms, limit])?;
    let mut candidates = Vec::new();
    while let Some(row) = rows.next()? {
        let read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<(String, String, String)> {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        };
        match read(row) {
            Ok((session_id, job_id, token)) => candidates.push((
                SessionId::from_client(&session_id),
                JobId::from_client(&job_id),
                token,
            )),
            Err(error) => {
                tracing::error!(%error, "an unreadable job row with an expired lease; skipped");
            }
        }
    }
    Ok(Ok(candidates))
}

/// Ends one job whose lease expired by `cutoff_ms`, unless its lease was
/// renewed or taken since the candidate was read (`token` no longer the
/// lease). `None` when there was nothing to do.
pub fn reap_one(
    connection: &Connection,
    session_id: &SessionId,
    job_id: &JobId,
    token: &str,
    cutoff_ms: u64,
    (body, terminal_payload): (&[u8], &str),
    effects: &mut Effects,
) -> Sql<Option<ReapedJob>> {
    let Some(row) = job_row(connection, session_id, job_id)? else {
        return Ok(Ok(None));
    };
    let still_expired = row.lease_token.as_deref() == Some(token)
        && row
            .lease_expires_ms
            .is_some_and(|expires| expires <= cutoff_ms);
    if !still_expired {
        return Ok(Ok(None));
    }
    connection
        .prepare_cached(
            "UPDATE jobs SET lease_token = NULL, lease_expires_ms = NULL
             WHERE session_id = ?1 AND job_id = ?2",
        )?
        .execute(params![session_id.as_str(), job_id.as_str()])?;
    if log::terminal_logged(connection, session_id, job_id)? {
        // Its node logged the terminal before the lease lapsed.
        return Ok(Ok(None));
    }
    let terminal_seq = match log::log_row(connection, session_id)? {
        Some(mut log_row) => {
            let seq = log::store(
                connection,
                session_id,
                &mut log_row,
                job_id,
                EventKind::Terminal,
                body,
            )?;
            effects.push(Effect::Wake {
                session_id: session_id.clone(),
                seq,
            });
            Some(seq)
        }
        None => None,
    };
    if terminal_seq.is_some() {
        connection
            .prepare_cached("UPDATE jobs SET terminal = ?3 WHERE session_id = ?1 AND job_id = ?2")?
            .execute(params![
                session_id.as_str(),
                job_id.as_str(),
                terminal_payload
            ])?;
    }
    connection
        .prepare_cached(
            "UPDATE jobs SET status = ?3 WHERE session_id = ?1 AND job_id = ?2 AND status = ?4",
        )?
        .execute(params![
            session_id.as_str(),
            job_id.as_str(),
            JobStatus::Lost.as_str(),
            JobStatus::Running.as_str()
        ])?;
    Ok(Ok(Some(ReapedJob {
        session_id: session_id.clone(),
        job_id: job_id.clone(),
        terminal_seq,
    })))
}

pub fn claim_idempotency(
    connection: &Connection,
    principal: &Principal,
    key: &str,
    record: &str,
    ttl_ms: u64,
) -> Sql<IdempotencyClaim> {
    let now = now_ms();
    let existing: Option<(String, u64)> = connection
        .prepare_cached(
            "SELECT record, expires_ms FROM idempotency WHERE principal = ?1 AND key = ?2",
        )?
        .query_row(params![principal.as_str(), key], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    if let Some((existing, expires)) = existing {
        if expires > now {
            return Ok(from_json(&existing).map(IdempotencyClaim::Existing));
        }
    }
    connection
        .prepare_cached(
            "INSERT INTO idempotency (principal, key, record, expires_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (principal, key)
             DO UPDATE SET record = excluded.record, expires_ms = excluded.expires_ms",
        )?
        .execute(params![
            principal.as_str(),
            key,
            record,
            expiry(now, ttl_ms)
        ])?;
    Ok(Ok(IdempotencyClaim::Claimed))
}

pub fn renew_lease(connection: &Connection, lease: &Lease, ttl_ms: u64) -> Sql<bool> {
    let now = now_ms();
    if !log::lease_valid(connection, lease, now)? {
        return Ok(Err(StorageError::Fenced));
    }
    let cancel: bool = connection
        .prepare_cached(
            "UPDATE jobs SET lease_expires_ms = ?3 WHERE session_id = ?1 AND job_id = ?2
             RETURNING cancel_requested",
        )?
        .query_row(
            params![
                lease.session_id.as_str(),
                lease.job_id.as_str(),
                expiry(now, ttl_ms)
            ],
            |row| row.get(0),
        )?;
    Ok(Ok(cancel))
}

/// Records the final status and terminal payload, and drops the lease.
pub fn finish(
    connection: &Connection,
    lease: &Lease,
    status: JobStatus,
    terminal: &str,
) -> Sql<()> {
    if !log::lease_valid(connection, lease, now_ms())? {
        return Ok(Err(StorageError::Fenced));
    }
    connection
        .prepare_cached(
            "UPDATE jobs SET lease_token = NULL, lease_expires_ms = NULL, status = ?3,
                             terminal = ?4
             WHERE session_id = ?1 AND job_id = ?2",
        )?
        .execute(params![
            lease.session_id.as_str(),
            lease.job_id.as_str(),
            status.as_str(),
            terminal
        ])?;
    Ok(Ok(()))
}

/// Marks the job cancel-requested and tells its owner; `NotFound` when the
/// job is unknown or nobody took it yet (the flag stays set).
pub fn request_cancel(
    connection: &Connection,
    session_id: &SessionId,
    job_id: &JobId,
    effects: &mut Effects,
) -> Sql<String> {
    let owner: Option<Option<String>> = connection
        .prepare_cached(
            "UPDATE jobs SET cancel_requested = 1 WHERE session_id = ?1 AND job_id = ?2
             RETURNING owner",
        )?
        .query_row(params![session_id.as_str(), job_id.as_str()], |row| {
            row.get(0)
        })
        .optional()?;
    let Some(Some(owner)) = owner else {
        return Ok(Err(StorageError::NotFound));
    };
    effects.push(Effect::Notice {
        node: owner.clone(),
        notice: NodeNotice::CancelRequested {
            session_id: session_id.clone(),
            job_id: job_id.clone(),
        },
    });
    Ok(Ok(owner))
}
