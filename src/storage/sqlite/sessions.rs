//! Sessions in SQL: the record, token generations (consume-then-issue),
//! the open/closed state, the acknowledged high-water mark and the one
//! stream holder. Runs on the writer or a reader thread, in the caller's
//! transaction; `Err` is an SQL failure, `Ok(Err(_))` a refusal.

use rusqlite::{params, Connection, OptionalExtension};

use super::writer::{Effect, Effects};
use super::{from_json, to_json, Sql};
use crate::ids::{EventSeq, SessionId};
use crate::storage::{
    GoneReason, NodeNotice, SessionRecord, SessionState, StorageError, StorageResult, StreamHolder,
};

fn gone<T>() -> Sql<T> {
    Ok(Err(StorageError::Gone(GoneReason::SessionMissing)))
}

pub fn create(connection: &Connection, session_id: &SessionId, record: &str) -> Sql<u64> {
    let inserted = connection
        .prepare_cached(
            "INSERT INTO sessions (session_id, record, issued, used, closed, acked, holder)
             VALUES (?1, ?2, 1, 0, 0, NULL, NULL) ON CONFLICT (session_id) DO NOTHING",
        )?
        .execute(params![session_id.as_str(), record])?;
    Ok(if inserted == 1 {
        Ok(1)
    } else {
        Err(StorageError::Exists)
    })
}

/// A session's token generations, open state and stream holder.
struct SessionRow {
    issued: u64,
    used: u64,
    closed: bool,
    acked: Option<u64>,
    holder: Option<String>,
}

fn session_row(
    connection: &Connection,
    session_id: &SessionId,
) -> rusqlite::Result<Option<SessionRow>> {
    connection
        .prepare_cached(
            "SELECT issued, used, closed, acked, holder FROM sessions WHERE session_id = ?1",
        )?
        .query_row([session_id.as_str()], |row| {
            Ok(SessionRow {
                issued: row.get(0)?,
                used: row.get(1)?,
                closed: row.get(2)?,
                acked: row.get(3)?,
                holder: row.get(4)?,
            })
        })
        .optional()
}

/// Consumes `presented` (a generation between the newest used and the
/// newest issued) and issues the next one.
fn consume_then_issue(row: &mut SessionRow, presented: Option<u64>) -> StorageResult<u64> {
    if let Some(generation) = presented {
        if generation < row.used || generation > row.issued {
            return Err(StorageError::GenerationSuperseded);
        }
        row.used = generation;
    }
    row.issued = row
        .issued
        .checked_add(1)
        .filter(|issued| *issued <= i64::MAX as u64)
        .ok_or_else(|| StorageError::Corrupt("token generation overflow".into()))?;
    Ok(row.issued)
}

fn save_session(
    connection: &Connection,
    session_id: &SessionId,
    row: &SessionRow,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "UPDATE sessions SET issued = ?2, used = ?3, closed = ?4, acked = ?5, holder = ?6
             WHERE session_id = ?1",
        )?
        .execute(params![
            session_id.as_str(),
            row.issued,
            row.used,
            row.closed,
            row.acked,
            row.holder
        ])?;
    Ok(())
}

pub fn resume(connection: &Connection, session_id: &SessionId, presented: Option<u64>) -> Sql<u64> {
    let Some(mut row) = session_row(connection, session_id)? else {
        return gone();
    };
    let generation = match consume_then_issue(&mut row, presented) {
        Ok(generation) => generation,
        Err(error) => return Ok(Err(error)),
    };
    row.closed = false;
    save_session(connection, session_id, &row)?;
    Ok(Ok(generation))
}

pub fn attach(
    connection: &Connection,
    session_id: &SessionId,
    presented: Option<u64>,
    holder: &StreamHolder,
    effects: &mut Effects,
) -> Sql<(u64, Option<StreamHolder>)> {
    let Some(mut row) = session_row(connection, session_id)? else {
        return gone();
    };
    if row.closed {
        return Ok(Err(StorageError::SessionClosed));
    }
    let previous = match holder_of(&row) {
        Ok(previous) => previous,
        Err(error) => return Ok(Err(error)),
    };
    let generation = match consume_then_issue(&mut row, presented) {
        Ok(generation) => generation,
        Err(error) => return Ok(Err(error)),
    };
    row.holder = match to_json(holder) {
        Ok(holder) => Some(holder),
        Err(error) => return Ok(Err(error)),
    };
    save_session(connection, session_id, &row)?;
    if let Some(previous) = &previous {
        effects.push(Effect::Notice {
            node: previous.node.clone(),
            notice: NodeNotice::StreamReplaced {
                session_id: session_id.clone(),
                stream: previous.stream,
            },
        });
    }
    Ok(Ok((generation, previous)))
}

pub fn detach(connection: &Connection, session_id: &SessionId, holder: &StreamHolder) -> Sql<bool> {
    let Some(mut row) = session_row(connection, session_id)? else {
        return gone();
    };
    let current = match holder_of(&row) {
        Ok(current) => current,
        Err(error) => return Ok(Err(error)),
    };
    if current.as_ref() != Some(holder) {
        return Ok(Ok(false));
    }
    row.holder = None;
    save_session(connection, session_id, &row)?;
    Ok(Ok(true))
}

fn holder_of(row: &SessionRow) -> StorageResult<Option<StreamHolder>> {
    row.holder
        .as_deref()
        .map(from_json::<StreamHolder>)
        .transpose()
}

pub fn record(connection: &Connection, session_id: &SessionId) -> Sql<SessionRecord> {
    let record: Option<String> = connection
        .prepare_cached("SELECT record FROM sessions WHERE session_id = ?1")?
        .query_row([session_id.as_str()], |row| row.get(0))
        .optional()?;
    Ok(match record {
        Some(record) => from_json(&record),
        None => Err(StorageError::Gone(GoneReason::SessionMissing)),
    })
}

pub fn state(connection: &Connection, session_id: &SessionId) -> Sql<SessionState> {
    let record = match record(connection, session_id)? {
        Ok(record) => record,
        Err(error) => return Ok(Err(error)),
    };
    let Some(row) = session_row(connection, session_id)? else {
        return gone();
    };
    Ok(holder_of(&row).map(|holder| SessionState {
        record,
        issued: row.issued,
        used: row.used,
        closed: row.closed,
        acked: row.acked,
        holder,
    }))
}

/// Raises the acknowledged high-water mark (§6.5); an older one changes
/// nothing. A mark beyond SQLite's integers is kept at `i64::MAX`.
pub fn acknowledge(
    connection: &Connection,
    session_id: &SessionId,
    up_to: EventSeq,
) -> Sql<EventSeq> {
    let Some(mut row) = session_row(connection, session_id)? else {
        return gone();
    };
    let up_to = up_to.min(i64::MAX as u64);
    let acked = row.acked.map_or(up_to, |acked| acked.max(up_to));
    row.acked = Some(acked);
    save_session(connection, session_id, &row)?;
    Ok(Ok(acked))
}

/// Closes the session (§6.7) and detaches its stream, whose node is told.
pub fn close(
    connection: &Connection,
    session_id: &SessionId,
    effects: &mut Effects,
) -> Sql<Option<StreamHolder>> {
    let Some(mut row) = session_row(connection, session_id)? else {
        return gone();
    };
    let holder = match holder_of(&row) {
        Ok(holder) => holder,
        Err(error) => return Ok(Err(error)),
    };
    row.closed = true;
    row.holder = None;
    save_session(connection, session_id, &row)?;
    if let Some(holder) = &holder {
        effects.push(Effect::Notice {
            node: holder.node.clone(),
            notice: NodeNotice::SessionClosed {
                session_id: session_id.clone(),
                stream: holder.stream,
            },
        });
    }
    Ok(Ok(holder))
}
