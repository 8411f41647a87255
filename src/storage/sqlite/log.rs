//! The event log in SQL: one `logs` row per session (bounds, byte count,
//! retention caps), one `events` row per retained event, one `log_jobs` row
//! per job and session (its newest append index, the retry key, and its
//! terminal). These functions run on the writer or a reader thread, inside
//! the caller's transaction; `Err` is an SQL failure, `Ok(Err(_))` a refusal.

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use super::writer::{Effect, Effects};
use super::Sql;
use crate::ids::{EventSeq, JobId, SessionId};
use crate::storage::memory::check_cursor;
use crate::storage::{
    Append, AppendOutcome, EventKind, GoneReason, Lease, LogBounds, ReadBudget, Retention,
    StorageError, StoredEvent,
};

/// The most events one read returns (the same cap as the Redis backend).
pub const MAX_READ_EVENTS: usize = 1024;

fn gone<T>() -> Sql<T> {
    Ok(Err(StorageError::Gone(GoneReason::SessionMissing)))
}

/// A session's `logs` row.
pub struct LogRow {
    floor: u64,
    newest: u64,
    bytes: u64,
    max_events: u64,
    max_bytes: u64,
}

impl LogRow {
    fn bounds(&self) -> LogBounds {
        LogBounds {
            floor: self.floor,
            newest: self.newest,
        }
    }
}

pub fn log_row(
    connection: &Connection,
    session_id: &SessionId,
) -> rusqlite::Result<Option<LogRow>> {
    connection
        .prepare_cached(
            "SELECT floor, newest, bytes, max_events, max_bytes FROM logs WHERE session_id = ?1",
        )?
        .query_row([session_id.as_str()], |row| {
            Ok(LogRow {
                floor: row.get(0)?,
                newest: row.get(1)?,
                bytes: row.get(2)?,
                max_events: row.get(3)?,
                max_bytes: row.get(4)?,
            })
        })
        .optional()
}

fn save_log(connection: &Connection, session_id: &SessionId, log: &LogRow) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "UPDATE logs SET floor = ?2, newest = ?3, bytes = ?4 WHERE session_id = ?1",
        )?
        .execute(params![
            session_id.as_str(),
            log.floor,
            log.newest,
            log.bytes
        ])?;
    Ok(())
}

pub fn create_log(
    connection: &Connection,
    session_id: &SessionId,
    retention: Retention,
) -> Sql<()> {
    // Caps beyond SQLite's integer range mean "no cap".
    let max_events = retention.max_events.min(i64::MAX as u64);
    let max_bytes = retention.max_bytes.min(i64::MAX as u64);
    let inserted = connection
        .prepare_cached(
            "INSERT INTO logs (session_id, floor, newest, bytes, max_events, max_bytes)
             VALUES (?1, 0, 0, 0, ?2, ?3) ON CONFLICT (session_id) DO NOTHING",
        )?
        .execute(params![session_id.as_str(), max_events, max_bytes])?;
    Ok(if inserted == 1 {
        Ok(())
    } else {
        Err(StorageError::Exists)
    })
}

/// Whether `lease` is the job's current, unexpired lease at `now_ms`.
pub fn lease_valid(connection: &Connection, lease: &Lease, now_ms: u64) -> rusqlite::Result<bool> {
    let current: Option<(Option<String>, Option<u64>)> = connection
        .prepare_cached(
            "SELECT lease_token, lease_expires_ms FROM jobs WHERE session_id = ?1 AND job_id = ?2",
        )?
        .query_row(
            params![lease.session_id.as_str(), lease.job_id.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    Ok(matches!(
        current,
        Some((Some(token), Some(expires))) if token == lease.token && expires > now_ms
    ))
}

/// A job's `log_jobs` row: newest append index and its seq, terminal seq.
struct JobProgress {
    last_index: Option<u64>,
    last_seq: Option<u64>,
    terminal_seq: Option<u64>,
}

fn job_progress(
    connection: &Connection,
    session_id: &SessionId,
    job_id: &JobId,
) -> rusqlite::Result<Option<JobProgress>> {
    connection
        .prepare_cached(
            "SELECT last_index, last_seq, terminal_seq FROM log_jobs
             WHERE session_id = ?1 AND job_id = ?2",
        )?
        .query_row(params![session_id.as_str(), job_id.as_str()], |row| {
            Ok(JobProgress {
                last_index: row.get(0)?,
                last_seq: row.get(1)?,
                terminal_seq: row.get(2)?,
            })
        })
        .optional()
}

/// Whether the job already has its terminal in the session's log.
pub fn terminal_logged(
    connection: &Connection,
    session_id: &SessionId,
    job_id: &JobId,
) -> rusqlite::Result<bool> {
    Ok(job_progress(connection, session_id, job_id)?.is_some_and(|p| p.terminal_seq.is_some()))
}

/// One append: fence, dedup by the job's index, refuse after its terminal,
/// store with the next seq and apply retention.
pub fn append_one(
    connection: &Connection,
    append: &Append,
    now_ms: u64,
    effects: &mut Effects,
) -> Sql<AppendOutcome> {
    if let Some(lease) = &append.fence {
        if !lease_valid(connection, lease, now_ms)? {
            return Ok(Err(StorageError::Fenced));
        }
    }
    let Some(mut log) = log_row(connection, &append.session_id)? else {
        return gone();
    };
    let progress = job_progress(connection, &append.session_id, &append.job_id)?;
    if let Some(progress) = &progress {
        if let Some(last_index) = progress.last_index {
            if append.index <= last_index {
                let seq = if append.index == last_index {
                    progress.last_seq
                } else {
                    None
                };
                return Ok(Ok(AppendOutcome::Duplicate(seq)));
            }
        }
        if let Some(terminal_seq) = progress.terminal_seq {
            return Ok(Err(StorageError::JobClosed { terminal_seq }));
        }
    }
    let seq = store(
        connection,
        &append.session_id,
        &mut log,
        &append.job_id,
        append.kind,
        &append.body,
    )?;
    connection
        .prepare_cached(
            "INSERT INTO log_jobs (session_id, job_id, last_index, last_seq) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (session_id, job_id)
             DO UPDATE SET last_index = excluded.last_index, last_seq = excluded.last_seq",
        )?
        .execute(params![
            append.session_id.as_str(),
            append.job_id.as_str(),
            append.index,
            seq
        ])?;
    effects.push(Effect::Wake {
        session_id: append.session_id.clone(),
        seq,
    });
    Ok(Ok(AppendOutcome::Stored(seq)))
}

/// Stores one event with the next seq, records a terminal, applies
/// retention (oldest first, the newest always kept) and saves the bounds.
/// The job's append index is the caller's business (the reaper's terminal
/// leaves it alone, as in the other backends).
pub fn store(
    connection: &Connection,
    session_id: &SessionId,
    log: &mut LogRow,
    job_id: &JobId,
    kind: EventKind,
    body: &[u8],
) -> rusqlite::Result<EventSeq> {
    let seq = log
        .newest
        .checked_add(1)
        .filter(|seq| *seq <= i64::MAX as u64)
        .ok_or(rusqlite::Error::IntegralValueOutOfRange(1, i64::MAX))?;
    connection
        .prepare_cached(
            "INSERT INTO events (session_id, seq, job_id, body) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![session_id.as_str(), seq, job_id.as_str(), body])?;
    log.newest = seq;
    log.bytes = log.bytes.saturating_add(body.len() as u64);
    if kind == EventKind::Terminal {
        connection
            .prepare_cached(
                "INSERT INTO log_jobs (session_id, job_id, terminal_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (session_id, job_id) DO UPDATE SET terminal_seq = excluded.terminal_seq",
            )?
            .execute(params![session_id.as_str(), job_id.as_str(), seq])?;
    }
    let over = |log: &LogRow| {
        log.newest.saturating_sub(log.floor) > log.max_events || log.bytes > log.max_bytes
    };
    if over(log) {
        let mut oldest = connection.prepare_cached(
            "SELECT seq, length(body) FROM events
             WHERE session_id = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq",
        )?;
        let mut rows = oldest.query(params![session_id.as_str(), log.floor, seq])?;
        while over(log) {
            let Some(row) = rows.next()? else { break };
            let evicted: u64 = row.get(0)?;
            let size: u64 = row.get(1)?;
            log.floor = evicted;
            log.bytes = log.bytes.saturating_sub(size);
        }
        drop(rows);
        connection
            .prepare_cached("DELETE FROM events WHERE session_id = ?1 AND seq <= ?2")?
            .execute(params![session_id.as_str(), log.floor])?;
    }
    save_log(connection, session_id, log)?;
    Ok(seq)
}

pub fn read_after(
    connection: &Connection,
    session_id: &SessionId,
    after: EventSeq,
    budget: ReadBudget,
) -> Sql<Vec<StoredEvent>> {
    let Some(log) = log_row(connection, session_id)? else {
        return gone();
    };
    let bounds = log.bounds();
    if let Err(error) = check_cursor(bounds, after) {
        return Ok(Err(error));
    }
    let limit = budget.max_events.clamp(1, MAX_READ_EVENTS);
    let mut statement = connection.prepare_cached(
        "SELECT seq, job_id, body FROM events WHERE session_id = ?1 AND seq > ?2
         ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = statement.query(params![session_id.as_str(), after, limit as u64])?;
    let mut events = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let seq: u64 = row.get(0)?;
        // Contiguity: a row missing while the bounds say it exists is lost
        // history, never skipped silently.
        if seq != after + 1 + events.len() as u64 {
            return Ok(Err(StorageError::Gone(GoneReason::HistoryLost)));
        }
        let job_id: String = row.get(1)?;
        let body: Vec<u8> = row.get(2)?;
        if !events.is_empty() && bytes.saturating_add(body.len()) > budget.max_bytes {
            break;
        }
        bytes = bytes.saturating_add(body.len());
        events.push(StoredEvent {
            seq,
            job_id: JobId::from_client(&job_id),
            body: Bytes::from(body),
        });
    }
    if events.is_empty() && after < bounds.newest {
        return Ok(Err(StorageError::Gone(GoneReason::HistoryLost)));
    }
    Ok(Ok(events))
}

pub fn bounds(connection: &Connection, session_id: &SessionId) -> Sql<LogBounds> {
    Ok(log_row(connection, session_id)?
        .map(|log| log.bounds())
        .ok_or(StorageError::Gone(GoneReason::SessionMissing)))
}

pub fn release_through(
    connection: &Connection,
    session_id: &SessionId,
    up_to: EventSeq,
) -> Sql<LogBounds> {
    let Some(mut log) = log_row(connection, session_id)? else {
        return gone();
    };
    let up_to = up_to.min(log.newest);
    if log.floor < up_to {
        let freed: u64 = connection
            .prepare_cached(
                "SELECT coalesce(sum(length(body)), 0) FROM events
                 WHERE session_id = ?1 AND seq > ?2 AND seq <= ?3",
            )?
            .query_row(params![session_id.as_str(), log.floor, up_to], |row| {
                row.get(0)
            })?;
        connection
            .prepare_cached("DELETE FROM events WHERE session_id = ?1 AND seq <= ?2")?
            .execute(params![session_id.as_str(), up_to])?;
        log.floor = up_to;
        log.bytes = log.bytes.saturating_sub(freed);
        save_log(connection, session_id, &log)?;
    }
    Ok(Ok(log.bounds()))
}

pub fn remove_log(
    connection: &Connection,
    session_id: &SessionId,
    effects: &mut Effects,
) -> Sql<()> {
    for statement in [
        "DELETE FROM events WHERE session_id = ?1",
        "DELETE FROM log_jobs WHERE session_id = ?1",
        "DELETE FROM logs WHERE session_id = ?1",
    ] {
        connection
            .prepare_cached(statement)?
            .execute([session_id.as_str()])?;
    }
    effects.push(Effect::Forget {
        session_id: session_id.clone(),
    });
    Ok(Ok(()))
}
