//! Recovery: every row read back at start-up, and the rows that cannot be
//! read moved aside into `quarantine`, never a reason to refuse to start.

use bytes::Bytes;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection};
use serde_json::Value;

use super::Recovered;
use crate::event_log::LogEntry;
use crate::ids::{EventSeq, JobId, SessionId};

/// A row recovery could not read: kept aside for an operator, never a
/// reason to refuse to start (the rest of the store is still good).
struct Unreadable {
    source: &'static str,
    key: SqlValue,
    /// For an `events` row, its `seq` (the key is its session).
    seq: Option<SqlValue>,
    content: SqlValue,
    reason: String,
}

/// Moves each unreadable row into the `quarantine` table and out of its own,
/// with a loud log line per row. Runs before the writer thread starts.
fn quarantine(connection: &Connection, rows: Vec<Unreadable>) -> rusqlite::Result<()> {
    for row in rows {
        tracing::error!(
            table = row.source,
            key = %describe(&row.key),
            seq = row.seq.as_ref().map(describe).unwrap_or_default(),
            reason = %row.reason,
            "unreadable record moved to the quarantine table; the gateway starts without it"
        );
        let transaction = connection.unchecked_transaction()?;
        transaction.execute(
            "INSERT INTO quarantine (source, key, content, reason) VALUES (?1, ?2, ?3, ?4)",
            params![
                row.source,
                match &row.seq {
                    Some(seq) => format!("{}#{}", describe(&row.key), describe(seq)),
                    None => describe(&row.key),
                },
                row.content,
                row.reason
            ],
        )?;
        let delete = match row.source {
            "logs" => "DELETE FROM logs WHERE session_id = ?1",
            "sessions" => "DELETE FROM sessions WHERE id = ?1",
            "jobs" => "DELETE FROM jobs WHERE id = ?1",
            _ => "DELETE FROM events WHERE session_id = ?1 AND seq = ?2",
        };
        match row.seq {
            Some(seq) => transaction.execute(delete, params![row.key, seq])?,
            None => transaction.execute(delete, params![row.key])?,
        };
        transaction.commit()?;
    }
    Ok(())
}

fn describe(value: &SqlValue) -> String {
    match value {
        SqlValue::Text(text) => text.clone(),
        SqlValue::Integer(number) => number.to_string(),
        SqlValue::Real(number) => number.to_string(),
        SqlValue::Null => "NULL".into(),
        SqlValue::Blob(bytes) => format!("<{} byte blob>", bytes.len()),
    }
}

/// A record's JSON, parsed as the rest of recovery will use it.
fn parse_record(content: &SqlValue) -> Result<Value, String> {
    let SqlValue::Text(text) = content else {
        return Err(format!("record is {}, not text", describe_type(content)));
    };
    serde_json::from_str(text).map_err(|error| format!("record is not readable JSON: {error}"))
}

fn describe_type(value: &SqlValue) -> &'static str {
    match value {
        SqlValue::Null => "NULL",
        SqlValue::Integer(_) => "an integer",
        SqlValue::Real(_) => "a real",
        SqlValue::Text(_) => "text",
        SqlValue::Blob(_) => "a blob",
    }
}

/// One `events` row, checked: positive sequence, text job id, a blob frame
/// and an envelope span inside it.
fn read_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<LogEntry, (SqlValue, String)>> {
    let seq: SqlValue = row.get(0)?;
    let job_id: SqlValue = row.get(1)?;
    let frame: SqlValue = row.get(2)?;
    let start: SqlValue = row.get(3)?;
    let end: SqlValue = row.get(4)?;
    let checked = match (&seq, &job_id, frame, &start, &end) {
        (
            SqlValue::Integer(seq),
            SqlValue::Text(job_id),
            SqlValue::Blob(frame),
            SqlValue::Integer(start),
            SqlValue::Integer(end),
        ) if *seq > 0 && 0 <= *start && start <= end && *end as u64 <= frame.len() as u64 => {
            Ok(LogEntry {
                seq: *seq as EventSeq,
                job_id: JobId::from_client(job_id),
                frame: Bytes::from(frame),
                envelope: *start as usize..*end as usize,
            })
        }
        (_, _, frame, _, _) => Err((
            frame,
            format!(
                "event row has seq {}, job_id {}, envelope {}..{}",
                describe(&seq),
                describe_type(&job_id),
                describe(&start),
                describe(&end)
            ),
        )),
    };
    Ok(checked)
}

pub(super) fn read_all(connection: &Connection) -> rusqlite::Result<Recovered> {
    let mut unreadable = Vec::new();
    let mut floors: Vec<(String, i64)> = Vec::new();
    {
        let mut statement = connection.prepare("SELECT session_id, floor FROM logs")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, SqlValue>(0)?, row.get::<_, SqlValue>(1)?))
        })?;
        for row in rows {
            match row? {
                (SqlValue::Text(session), SqlValue::Integer(floor)) if floor >= 0 => {
                    floors.push((session, floor));
                }
                (key, floor) => unreadable.push(Unreadable {
                    source: "logs",
                    content: SqlValue::Text(describe(&floor)),
                    reason: format!("log row has floor {}", describe(&floor)),
                    key,
                    seq: None,
                }),
            }
        }
    }
    let mut logs = Vec::new();
    {
        let mut statement = connection.prepare(
            "SELECT seq, job_id, frame, envelope_start, envelope_end FROM events
             WHERE session_id = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        for (session, floor) in floors {
            let mut entries = Vec::new();
            let mut rows = statement.query(params![session, floor])?;
            // A log is a gapless sequence: from an unreadable event on, the
            // rest of it is set aside too, so that new events can take those
            // sequence numbers without old rows coming back after them.
            let mut cut = false;
            while let Some(row) = rows.next()? {
                let checked = match read_event(row)? {
                    Ok(entry) if !cut => Ok(entry),
                    Ok(entry) => Err((
                        SqlValue::Blob(entry.frame.to_vec()),
                        "follows an unreadable event of the same log".to_owned(),
                    )),
                    Err(unreadable) => Err(unreadable),
                };
                match checked {
                    Ok(entry) => entries.push(entry),
                    Err((content, reason)) => {
                        if !cut {
                            tracing::error!(
                                session = %session,
                                "the session's log is cut short at an unreadable event"
                            );
                        }
                        cut = true;
                        let seq: SqlValue = row.get(0)?;
                        unreadable.push(Unreadable {
                            source: "events",
                            key: SqlValue::Text(session.clone()),
                            seq: Some(seq),
                            content,
                            reason,
                        });
                    }
                }
            }
            logs.push((SessionId::from_client(&session), floor as EventSeq, entries));
        }
    }
    let mut sessions = Vec::new();
    let mut jobs = Vec::new();
    for (source, out) in [("sessions", &mut sessions), ("jobs", &mut jobs)] {
        let mut statement = connection.prepare(&format!("SELECT id, record FROM {source}"))?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, SqlValue>(0)?, row.get::<_, SqlValue>(1)?))
        })?;
        for row in rows {
            let (key, content) = row?;
            match parse_record(&content) {
                Ok(record) => out.push(record),
                Err(reason) => unreadable.push(Unreadable {
                    source,
                    key,
                    seq: None,
                    content,
                    reason,
                }),
            }
        }
    }
    quarantine(connection, unreadable)?;
    jobs.sort_by_key(|job| job.get("index").and_then(Value::as_u64).unwrap_or(0));
    Ok(Recovered {
        logs,
        sessions,
        jobs,
    })
}
