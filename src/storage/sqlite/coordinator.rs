//! Sessions, streams, jobs, leases, the reaper, idempotency keys and
//! subscriptions in SQL. Each change is one request of the writer (one
//! savepoint of a committed transaction); notices to nodes go out through
//! the in-process hub once that transaction has committed.

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::broadcast;

use super::writer::{Effect, Effects};
use super::{expiry, log, now_ms, SqliteStorage};
use crate::ids::{JobId, Principal, SessionId};
use crate::storage::redis::keys::MAX_IDEMPOTENCY_KEY_LEN;
use crate::storage::{
    Coordinator, EventKind, GoneReason, IdempotencyClaim, IdempotencyRecord, JobRecord, JobStatus,
    Lease, NodeNotice, ReapedJob, SessionRecord, StorageError, StorageResult, StreamHolder,
};

type Sql<T> = rusqlite::Result<StorageResult<T>>;

fn to_json<T: Serialize>(value: &T) -> StorageResult<String> {
    serde_json::to_string(value).map_err(|error| StorageError::Corrupt(error.to_string()))
}

fn from_json<T: DeserializeOwned>(text: &str) -> StorageResult<T> {
    serde_json::from_str(text).map_err(|error| StorageError::Corrupt(error.to_string()))
}

/// A session's token generations, open state and stream holder.
struct SessionRow {
    issued: u64,
    used: u64,
    closed: bool,
    holder: Option<String>,
}

fn session_row(
    connection: &Connection,
    session_id: &SessionId,
) -> rusqlite::Result<Option<SessionRow>> {
    connection
        .prepare_cached("SELECT issued, used, closed, holder FROM sessions WHERE session_id = ?1")?
        .query_row([session_id.as_str()], |row| {
            Ok(SessionRow {
                issued: row.get(0)?,
                used: row.get(1)?,
                closed: row.get(2)?,
                holder: row.get(3)?,
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
            "UPDATE sessions SET issued = ?2, used = ?3, closed = ?4, holder = ?5
             WHERE session_id = ?1",
        )?
        .execute(params![
            session_id.as_str(),
            row.issued,
            row.used,
            row.closed,
            row.holder
        ])?;
    Ok(())
}

fn resume(connection: &Connection, session_id: &SessionId, presented: Option<u64>) -> Sql<u64> {
    let Some(mut row) = session_row(connection, session_id)? else {
        return Ok(Err(StorageError::Gone(GoneReason::SessionMissing)));
    };
    let generation = match consume_then_issue(&mut row, presented) {
        Ok(generation) => generation,
        Err(error) => return Ok(Err(error)),
    };
    row.closed = false;
    save_session(connection, session_id, &row)?;
    Ok(Ok(generation))
}

fn attach(
    connection: &Connection,
    session_id: &SessionId,
    presented: Option<u64>,
    holder: &StreamHolder,
    effects: &mut Effects,
) -> Sql<(u64, Option<StreamHolder>)> {
    let Some(mut row) = session_row(connection, session_id)? else {
        return Ok(Err(StorageError::Gone(GoneReason::SessionMissing)));
    };
    if row.closed {
        return Ok(Err(StorageError::SessionClosed));
    }
    let previous = match row
        .holder
        .as_deref()
        .map(from_json::<StreamHolder>)
        .transpose()
    {
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

fn detach(connection: &Connection, session_id: &SessionId, holder: &StreamHolder) -> Sql<bool> {
    let Some(mut row) = session_row(connection, session_id)? else {
        return Ok(Err(StorageError::Gone(GoneReason::SessionMissing)));
    };
    let current = match row
        .holder
        .as_deref()
        .map(from_json::<StreamHolder>)
        .transpose()
    {
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

/// A job's row: the record as submitted, then what changed since.
struct JobRow {
    record: String,
    status: String,
    owner: Option<String>,
    cancel_requested: bool,
    lease_token: Option<String>,
    lease_expires_ms: Option<u64>,
}

fn job_row(
    connection: &Connection,
    session_id: &SessionId,
    job_id: &JobId,
) -> rusqlite::Result<Option<JobRow>> {
    connection
        .prepare_cached(
            "SELECT record, status, owner, cancel_requested, lease_token, lease_expires_ms
             FROM jobs WHERE session_id = ?1 AND job_id = ?2",
        )?
        .query_row(params![session_id.as_str(), job_id.as_str()], |row| {
            Ok(JobRow {
                record: row.get(0)?,
                status: row.get(1)?,
                owner: row.get(2)?,
                cancel_requested: row.get(3)?,
                lease_token: row.get(4)?,
                lease_expires_ms: row.get(5)?,
            })
        })
        .optional()
}

fn job_record(row: &JobRow) -> StorageResult<JobRecord> {
    let mut record: JobRecord = from_json(&row.record)?;
    record.status = JobStatus::parse(&row.status)
        .ok_or_else(|| StorageError::Corrupt(format!("job status {:?}", row.status)))?;
    record.owner = row.owner.clone();
    record.cancel_requested = row.cancel_requested;
    Ok(record)
}

fn acquire_lease(
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

/// Ends one job whose lease expired by `cutoff_ms`, unless its lease was
/// renewed or taken since the candidate was read (`token` no longer the
/// lease). `None` when there was nothing to do.
fn reap_one(
    connection: &Connection,
    session_id: &SessionId,
    job_id: &JobId,
    token: &str,
    cutoff_ms: u64,
    body: &[u8],
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

fn claim_idempotency(
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

impl Coordinator for SqliteStorage {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn create_session(&self, record: &SessionRecord) -> StorageResult<u64> {
        let session_id = record.session_id.clone();
        let record = to_json(record)?;
        self.write(move |connection, _| {
            let inserted = connection
                .prepare_cached(
                    "INSERT INTO sessions (session_id, record, issued, used, closed, holder)
                     VALUES (?1, ?2, 1, 0, 0, NULL) ON CONFLICT (session_id) DO NOTHING",
                )?
                .execute(params![session_id.as_str(), record])?;
            Ok(if inserted == 1 {
                Ok(1)
            } else {
                Err(StorageError::Exists)
            })
        })
        .await
    }

    async fn session(&self, session_id: &SessionId) -> StorageResult<SessionRecord> {
        let session_id = session_id.clone();
        self.read(move |connection| {
            let record: Option<String> = connection
                .prepare_cached("SELECT record FROM sessions WHERE session_id = ?1")?
                .query_row([session_id.as_str()], |row| row.get(0))
                .optional()?;
            Ok(match record {
                Some(record) => from_json(&record),
                None => Err(StorageError::Gone(GoneReason::SessionMissing)),
            })
        })
        .await
    }

    async fn resume(&self, session_id: &SessionId, presented: Option<u64>) -> StorageResult<u64> {
        let session_id = session_id.clone();
        self.write(move |connection, _| resume(connection, &session_id, presented))
            .await
    }

    async fn attach(
        &self,
        session_id: &SessionId,
        presented: Option<u64>,
        holder: &StreamHolder,
    ) -> StorageResult<(u64, Option<StreamHolder>)> {
        let (session_id, holder) = (session_id.clone(), holder.clone());
        self.write(move |connection, effects| {
            attach(connection, &session_id, presented, &holder, effects)
        })
        .await
    }

    async fn detach(&self, session_id: &SessionId, holder: &StreamHolder) -> StorageResult<bool> {
        let (session_id, holder) = (session_id.clone(), holder.clone());
        self.write(move |connection, _| detach(connection, &session_id, &holder))
            .await
    }

    async fn close_session(&self, session_id: &SessionId) -> StorageResult<()> {
        let session_id = session_id.clone();
        self.write(move |connection, _| {
            let changed = connection
                .prepare_cached("UPDATE sessions SET closed = 1 WHERE session_id = ?1")?
                .execute([session_id.as_str()])?;
            Ok(if changed == 1 {
                Ok(())
            } else {
                Err(StorageError::Gone(GoneReason::SessionMissing))
            })
        })
        .await
    }

    fn notices(&self) -> broadcast::Receiver<NodeNotice> {
        self.notices.subscribe()
    }

    async fn put_job(&self, record: &JobRecord) -> StorageResult<()> {
        let json = to_json(record)?;
        let record = record.clone();
        self.write(move |connection, _| {
            let inserted = connection
                .prepare_cached(
                    "INSERT INTO jobs (session_id, job_id, record, status, owner, cancel_requested)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (session_id, job_id) DO NOTHING",
                )?
                .execute(params![
                    record.session_id.as_str(),
                    record.job_id.as_str(),
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
        })
        .await
    }

    async fn job(&self, session_id: &SessionId, job_id: &JobId) -> StorageResult<JobRecord> {
        let (session_id, job_id) = (session_id.clone(), job_id.clone());
        self.read(move |connection| {
            Ok(match job_row(connection, &session_id, &job_id)? {
                Some(row) => job_record(&row),
                None => Err(StorageError::NotFound),
            })
        })
        .await
    }

    async fn acquire_lease(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
        ttl_ms: u64,
    ) -> StorageResult<Lease> {
        let (session_id, job_id) = (session_id.clone(), job_id.clone());
        let node = self.node_id.clone();
        self.write(move |connection, _| {
            acquire_lease(connection, &session_id, &job_id, &node, ttl_ms)
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> StorageResult<bool> {
        let lease = lease.clone();
        self.write(move |connection, _| {
            let now = now_ms();
            if !log::lease_valid(connection, &lease, now)? {
                return Ok(Err(StorageError::Fenced));
            }
            connection
                .prepare_cached(
                    "UPDATE jobs SET lease_expires_ms = ?3 WHERE session_id = ?1 AND job_id = ?2",
                )?
                .execute(params![
                    lease.session_id.as_str(),
                    lease.job_id.as_str(),
                    expiry(now, ttl_ms)
                ])?;
            let cancel: bool = connection
                .prepare_cached(
                    "SELECT cancel_requested FROM jobs WHERE session_id = ?1 AND job_id = ?2",
                )?
                .query_row(
                    params![lease.session_id.as_str(), lease.job_id.as_str()],
                    |row| row.get(0),
                )?;
            Ok(Ok(cancel))
        })
        .await
    }

    async fn finish_job(&self, lease: &Lease, status: JobStatus) -> StorageResult<()> {
        let lease = lease.clone();
        self.write(move |connection, _| {
            if !log::lease_valid(connection, &lease, now_ms())? {
                return Ok(Err(StorageError::Fenced));
            }
            connection
                .prepare_cached(
                    "UPDATE jobs SET lease_token = NULL, lease_expires_ms = NULL, status = ?3
                     WHERE session_id = ?1 AND job_id = ?2",
                )?
                .execute(params![
                    lease.session_id.as_str(),
                    lease.job_id.as_str(),
                    status.as_str()
                ])?;
            Ok(Ok(()))
        })
        .await
    }

    async fn request_cancel(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
    ) -> StorageResult<String> {
        let (session_id, job_id) = (session_id.clone(), job_id.clone());
        self.write(move |connection, effects| {
            let owner: Option<Option<String>> = connection
                .prepare_cached(
                    "UPDATE jobs SET cancel_requested = 1 WHERE session_id = ?1 AND job_id = ?2
                     RETURNING owner",
                )?
                .query_row(params![session_id.as_str(), job_id.as_str()], |row| {
                    row.get(0)
                })
                .optional()?;
            // No record, or nobody took it yet: nothing to notify.
            let Some(Some(owner)) = owner else {
                return Ok(Err(StorageError::NotFound));
            };
            effects.push(Effect::Notice {
                node: owner.clone(),
                notice: NodeNotice::CancelRequested { session_id, job_id },
            });
            Ok(Ok(owner))
        })
        .await
    }

    /// Candidates are read first (their terminals are built here, outside
    /// the writer), then one write re-checks each lease and ends the job:
    /// racing reapers are serialized by the writer, so each job gets exactly
    /// one terminal. A lease counts as expired by the earlier of `now_ms`
    /// and this process's clock, so a caller's clock running ahead never
    /// reaps a live lease.
    async fn reap_expired(
        &self,
        now_ms: u64,
        limit: usize,
        terminal: &(dyn Fn(&SessionId, &JobId) -> Bytes + Sync),
    ) -> StorageResult<Vec<ReapedJob>> {
        let cutoff = now_ms.min(super::now_ms());
        let limit = limit.min(i64::MAX as usize) as u64;
        let candidates: Vec<(String, String, String)> = self
            .read(move |connection| {
                let mut statement = connection.prepare_cached(
                    "SELECT session_id, job_id, lease_token FROM jobs
                     WHERE lease_token IS NOT NULL AND lease_expires_ms <= ?1
                     ORDER BY lease_expires_ms LIMIT ?2",
                )?;
                let rows = statement
                    .query_map(params![cutoff, limit], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(Ok(rows))
            })
            .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let candidates: Vec<_> = candidates
            .into_iter()
            .map(|(session_id, job_id, token)| {
                let (session_id, job_id) = (
                    SessionId::from_client(&session_id),
                    JobId::from_client(&job_id),
                );
                let body = terminal(&session_id, &job_id);
                (session_id, job_id, token, body)
            })
            .collect();
        self.write(move |connection, effects| {
            let mut reaped = Vec::new();
            for (session_id, job_id, token, body) in &candidates {
                match reap_one(connection, session_id, job_id, token, cutoff, body, effects)? {
                    Ok(Some(job)) => reaped.push(job),
                    Ok(None) => {}
                    Err(error) => return Ok(Err(error)),
                }
            }
            Ok(Ok(reaped))
        })
        .await
    }

    async fn claim_idempotency(
        &self,
        principal: &Principal,
        key: &str,
        record: &IdempotencyRecord,
        ttl_ms: u64,
    ) -> StorageResult<IdempotencyClaim> {
        // The same bound as the Redis backend, so a key one accepts the
        // other does too.
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(StorageError::InvalidId);
        }
        let (principal, key) = (principal.clone(), key.to_owned());
        let record = to_json(record)?;
        self.write(move |connection, _| {
            claim_idempotency(connection, &principal, &key, &record, ttl_ms)
        })
        .await
    }

    async fn subscribe(
        &self,
        subscriber: &SessionId,
        owner: &SessionId,
        job_id: &JobId,
    ) -> StorageResult<()> {
        let (subscriber, owner, job_id) = (subscriber.clone(), owner.clone(), job_id.clone());
        self.write(move |connection, _| {
            if job_row(connection, &owner, &job_id)?.is_none() {
                return Ok(Err(StorageError::NotFound));
            }
            connection
                .prepare_cached(
                    "INSERT INTO subscriptions (owner, job_id, subscriber) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    owner.as_str(),
                    job_id.as_str(),
                    subscriber.as_str()
                ])?;
            Ok(Ok(()))
        })
        .await
    }

    async fn subscribers(
        &self,
        owner: &SessionId,
        job_id: &JobId,
    ) -> StorageResult<Vec<SessionId>> {
        let (owner, job_id) = (owner.clone(), job_id.clone());
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT subscriber FROM subscriptions WHERE owner = ?1 AND job_id = ?2",
            )?;
            let mut subscribers = statement
                .query_map(params![owner.as_str(), job_id.as_str()], |row| {
                    row.get::<_, String>(0)
                })?
                .map(|subscriber| subscriber.map(|s| SessionId::from_client(&s)))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            subscribers.sort();
            Ok(Ok(subscribers))
        })
        .await
    }
}
