//! Sessions, streams, jobs, leases, idempotency and subscriptions in Redis:
//! the `Coordinator` half. Each change is one script in the session's slot
//! (`lua/session.lua`, `lua/job.lua`, invoked in `mod.rs`); notices to other
//! nodes go out on their pub/sub channel once the script has decided. The
//! subscription calls beside the trait are in `subscriptions.rs`.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::Value;
use tokio::sync::broadcast;

use super::keys::{self, SessionKeys, RUNNING};
use super::{number, read_error, status, text, unexpected, write_error, RedisStorage};
use crate::ids::{EventSeq, JobId, Principal, SessionId};
use crate::storage::{
    Coordinator, GoneReason, IdempotencyClaim, IdempotencyRecord, JobRecord, JobStatus, Lease,
    NodeNotice, ReapedJob, SessionRecord, SessionState, StorageError, StorageResult, StreamHolder,
};

/// How long a job's record, its listing entry and its location outlive the
/// job's end (a listing is bounded in time, not only by the session).
const LISTING_KEEP_MS: u64 = 24 * 60 * 60 * 1000;

/// The wall clock in milliseconds, for the reapers' index only (lease expiry
/// itself is Redis's PX, on Redis's clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn to_json<T: serde::Serialize>(value: &T) -> StorageResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|error| StorageError::Corrupt(error.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> StorageResult<T> {
    serde_json::from_slice(bytes).map_err(|error| StorageError::Corrupt(error.to_string()))
}

impl RedisStorage {
    /// Best effort: a lost notice is caught by the holder check of a
    /// stream's heartbeat and by lease renewal (`cancel` flag).
    pub async fn publish_notice(&self, node: &str, notice: &NodeNotice) {
        let (Ok(channel), Ok(payload)) = (keys::node_channel(node), to_json(notice)) else {
            return;
        };
        let mut connection = self.connection.clone();
        let _ = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut connection)
            .await;
    }

    fn generation_reply(reply: &[Value]) -> StorageResult<u64> {
        match (status(reply)?, reply.get(1)) {
            ("ok", Some(generation)) => number(generation),
            ("gone", _) => Err(StorageError::Gone(GoneReason::SessionMissing)),
            ("closed", _) => Err(StorageError::SessionClosed),
            ("superseded", _) => Err(StorageError::GenerationSuperseded),
            _ => Err(unexpected(reply)),
        }
    }
}

impl Coordinator for RedisStorage {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn create_session(&self, record: &SessionRecord) -> StorageResult<u64> {
        let rec = to_json(record)?;
        let reply = self
            .session_script(&record.session_id, &[b"create", &rec])
            .await?;
        match status(&reply)? {
            "exists" => Err(StorageError::Exists),
            _ => Self::generation_reply(&reply),
        }
    }

    async fn session(&self, session_id: &SessionId) -> StorageResult<SessionRecord> {
        let keys = SessionKeys::new(session_id)?;
        let mut connection = self.connection.clone();
        let rec: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(keys.session())
            .arg("rec")
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        match rec {
            Some(rec) => from_json(&rec),
            None => Err(StorageError::Gone(GoneReason::SessionMissing)),
        }
    }

    async fn session_state(&self, session_id: &SessionId) -> StorageResult<SessionState> {
        let keys = SessionKeys::new(session_id)?;
        let mut connection = self.connection.clone();
        #[allow(clippy::type_complexity)]
        let (rec, issued, used, closed, acked, holder): (
            Option<Vec<u8>>,
            Option<u64>,
            Option<u64>,
            Option<String>,
            Option<u64>,
            Option<Vec<u8>>,
        ) = redis::cmd("HMGET")
            .arg(keys.session())
            .arg(&["rec", "issued", "used", "closed", "acked", "holder"])
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        let Some(rec) = rec else {
            return Err(StorageError::Gone(GoneReason::SessionMissing));
        };
        Ok(SessionState {
            record: from_json(&rec)?,
            issued: issued.unwrap_or(0),
            used: used.unwrap_or(0),
            closed: closed.as_deref() == Some("1"),
            acked,
            holder: holder.map(|holder| from_json(&holder)).transpose()?,
        })
    }

    async fn acknowledge(
        &self,
        session_id: &SessionId,
        up_to: EventSeq,
    ) -> StorageResult<EventSeq> {
        let up_to = up_to.to_string();
        let reply = self
            .session_script(session_id, &[b"ack", up_to.as_bytes()])
            .await?;
        match (status(&reply)?, reply.get(1)) {
            ("ok", Some(acked)) => number(acked),
            ("gone", _) => Err(StorageError::Gone(GoneReason::SessionMissing)),
            _ => Err(unexpected(&reply)),
        }
    }

    async fn resume(&self, session_id: &SessionId, presented: Option<u64>) -> StorageResult<u64> {
        let presented = presented.map(|g| g.to_string()).unwrap_or_default();
        let reply = self
            .session_script(session_id, &[b"resume", presented.as_bytes()])
            .await?;
        Self::generation_reply(&reply)
    }

    async fn attach(
        &self,
        session_id: &SessionId,
        presented: Option<u64>,
        holder: &StreamHolder,
    ) -> StorageResult<(u64, Option<StreamHolder>)> {
        let presented = presented.map(|g| g.to_string()).unwrap_or_default();
        let holder = to_json(holder)?;
        let reply = self
            .session_script(session_id, &[b"attach", presented.as_bytes(), &holder])
            .await?;
        let generation = Self::generation_reply(&reply)?;
        let previous = match reply.get(2).map(text).transpose()? {
            None | Some("") => None,
            Some(previous) => Some(from_json::<StreamHolder>(previous.as_bytes())?),
        };
        if let Some(previous) = &previous {
            let notice = NodeNotice::StreamReplaced {
                session_id: session_id.clone(),
                stream: previous.stream,
            };
            self.publish_notice(&previous.node, &notice).await;
        }
        Ok((generation, previous))
    }

    async fn detach(&self, session_id: &SessionId, holder: &StreamHolder) -> StorageResult<bool> {
        let holder = to_json(holder)?;
        let reply = self
            .session_script(session_id, &[b"detach", &holder])
            .await?;
        match (status(&reply)?, reply.get(1)) {
            ("ok", Some(detached)) => Ok(number(detached)? == 1),
            ("gone", _) => Err(StorageError::Gone(GoneReason::SessionMissing)),
            _ => Err(unexpected(&reply)),
        }
    }

    async fn close_session(&self, session_id: &SessionId) -> StorageResult<Option<StreamHolder>> {
        let reply = self.session_script(session_id, &[b"close"]).await?;
        let holder = match (status(&reply)?, reply.get(1)) {
            ("ok", Some(holder)) => match text(holder)? {
                "" => None,
                holder => Some(from_json::<StreamHolder>(holder.as_bytes())?),
            },
            ("gone", _) => return Err(StorageError::Gone(GoneReason::SessionMissing)),
            _ => return Err(unexpected(&reply)),
        };
        if let Some(holder) = &holder {
            let notice = NodeNotice::SessionClosed {
                session_id: session_id.clone(),
                stream: holder.stream,
            };
            self.publish_notice(&holder.node, &notice).await;
        }
        Ok(holder)
    }

    fn notices(&self) -> broadcast::Receiver<NodeNotice> {
        self.notices_sender().subscribe()
    }

    async fn put_job(&self, record: &JobRecord) -> StorageResult<()> {
        let rec = to_json(record)?;
        let reply = self
            .job_script(&record.session_id, &record.job_id, &[b"put", &rec])
            .await?;
        match status(&reply)? {
            "ok" => {}
            "exists" => return Err(StorageError::Exists),
            _ => return Err(unexpected(&reply)),
        }
        // The listing index and the job's location live outside the
        // session's slot (they are per principal and per job id).
        let listing = keys::principal_jobs(&Principal::new(&record.principal));
        let member = keys::running_member(&record.session_id, &record.job_id)?;
        let mut connection = self.connection.clone();
        let position: u64 = redis::cmd("HINCRBY")
            .arg(&listing)
            .arg("next")
            .arg(1)
            .query_async(&mut connection)
            .await
            .map_err(write_error)?;
        redis::pipe()
            .cmd("ZADD")
            .arg(format!("{listing}:order"))
            .arg(position)
            .arg(&member)
            .ignore()
            .cmd("PEXPIRE")
            .arg(format!("{listing}:order"))
            .arg(LISTING_KEEP_MS)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&listing)
            .arg(LISTING_KEEP_MS)
            .ignore()
            .cmd("SET")
            .arg(keys::job_location(&record.job_id)?)
            .arg(record.session_id.as_str())
            .arg("PX")
            .arg(LISTING_KEEP_MS)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
            .map_err(write_error)
    }

    async fn locate_job(&self, job_id: &JobId) -> StorageResult<SessionId> {
        let mut connection = self.connection.clone();
        let session: Option<String> = redis::cmd("GET")
            .arg(keys::job_location(job_id)?)
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        session
            .map(|session| SessionId::from_client(&session))
            .ok_or(StorageError::NotFound)
    }

    async fn list_jobs(
        &self,
        principal: &Principal,
        after: u64,
        limit: usize,
    ) -> StorageResult<Vec<(u64, JobRecord)>> {
        let order = format!("{}:order", keys::principal_jobs(principal));
        let mut connection = self.connection.clone();
        let mut page = Vec::new();
        let mut after = after;
        while page.len() < limit {
            let members: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
                .arg(&order)
                .arg(format!("({after}"))
                .arg("+inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(limit - page.len())
                .query_async(&mut connection)
                .await
                .map_err(read_error)?;
            let Some(last) = members.last().map(|(_, position)| *position) else {
                break;
            };
            after = last;
            for (member, position) in members {
                let Some((session_id, job_id)) = keys::parse_running_member(&member) else {
                    continue;
                };
                match self.job(&session_id, &job_id).await {
                    Ok(record) => page.push((position, record)),
                    Err(StorageError::NotFound) => {
                        // Its session expired: drop it from the listing.
                        let _ = redis::cmd("ZREM")
                            .arg(&order)
                            .arg(&member)
                            .query_async::<i64>(&mut connection)
                            .await;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(page)
    }

    async fn job(&self, session_id: &SessionId, job_id: &JobId) -> StorageResult<JobRecord> {
        let keys = SessionKeys::new(session_id)?;
        let mut connection = self.connection.clone();
        #[allow(clippy::type_complexity)]
        let fields: (
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
        ) = redis::cmd("HMGET")
            .arg(keys.job(job_id)?)
            .arg("rec")
            .arg("status")
            .arg("owner")
            .arg("cancel")
            .arg("term")
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        let (Some(rec), status, owner, cancel, term) = fields else {
            return Err(StorageError::NotFound);
        };
        let mut record: JobRecord = from_json(&rec)?;
        if let Some(status) = status.as_deref().and_then(JobStatus::parse) {
            record.status = status;
        }
        record.owner = owner.or(record.owner);
        record.cancel_requested = cancel.as_deref() == Some("1");
        if let Some(term) = term.filter(|term| !term.is_empty()) {
            record.terminal = Some(from_json(&term)?);
        }
        Ok(record)
    }

    async fn acquire_lease(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
        ttl_ms: u64,
    ) -> StorageResult<Lease> {
        let token = format!("{}:{:032x}", self.node_id, rand::random::<u128>());
        let member = keys::running_member(session_id, job_id)?;
        let reply = self
            .job_script(
                session_id,
                job_id,
                &[
                    b"acquire",
                    token.as_bytes(),
                    ttl_ms.to_string().as_bytes(),
                    self.node_id.as_bytes(),
                    (now_ms() + ttl_ms).to_string().as_bytes(),
                    member.as_bytes(),
                ],
            )
            .await?;
        match status(&reply)? {
            "ok" => Ok(Lease {
                session_id: session_id.clone(),
                job_id: job_id.clone(),
                node: self.node_id.to_string(),
                token,
            }),
            "held" => Err(StorageError::LeaseHeld),
            "notfound" => Err(StorageError::NotFound),
            _ => Err(unexpected(&reply)),
        }
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> StorageResult<bool> {
        let member = keys::running_member(&lease.session_id, &lease.job_id)?;
        let reply = self
            .job_script(
                &lease.session_id,
                &lease.job_id,
                &[
                    b"renew",
                    lease.token.as_bytes(),
                    ttl_ms.to_string().as_bytes(),
                    (now_ms() + ttl_ms).to_string().as_bytes(),
                    member.as_bytes(),
                ],
            )
            .await?;
        match (status(&reply)?, reply.get(1)) {
            ("ok", Some(cancel)) => Ok(number(cancel)? == 1),
            ("fenced", _) => Err(StorageError::Fenced),
            _ => Err(unexpected(&reply)),
        }
    }

    async fn finish_job(
        &self,
        lease: &Lease,
        status_after: JobStatus,
        terminal: &serde_json::Value,
    ) -> StorageResult<()> {
        let member = keys::running_member(&lease.session_id, &lease.job_id)?;
        let terminal = to_json(terminal)?;
        let reply = self
            .job_script(
                &lease.session_id,
                &lease.job_id,
                &[
                    b"finish",
                    lease.token.as_bytes(),
                    status_after.as_str().as_bytes(),
                    member.as_bytes(),
                    &terminal,
                    LISTING_KEEP_MS.to_string().as_bytes(),
                ],
            )
            .await?;
        match status(&reply)? {
            "ok" => Ok(()),
            "fenced" => Err(StorageError::Fenced),
            _ => Err(unexpected(&reply)),
        }
    }

    async fn request_cancel(
        &self,
        session_id: &SessionId,
        job_id: &JobId,
    ) -> StorageResult<String> {
        let reply = self.job_script(session_id, job_id, &[b"cancel"]).await?;
        let owner = match (status(&reply)?, reply.get(1)) {
            ("ok", Some(owner)) => text(owner)?.to_owned(),
            ("notfound", _) => return Err(StorageError::NotFound),
            _ => return Err(unexpected(&reply)),
        };
        let notice = NodeNotice::CancelRequested {
            session_id: session_id.clone(),
            job_id: job_id.clone(),
        };
        self.publish_notice(&owner, &notice).await;
        Ok(owner)
    }

    async fn reap_expired(
        &self,
        now_ms: u64,
        limit: usize,
        terminal: &(dyn Fn(&SessionId, &JobId) -> Bytes + Sync),
        terminal_payload: &serde_json::Value,
    ) -> StorageResult<Vec<ReapedJob>> {
        let terminal_payload = to_json(terminal_payload)?;
        let mut connection = self.connection.clone();
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(RUNNING)
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        let mut reaped = Vec::new();
        for member in members {
            let Some((session_id, job_id)) = keys::parse_running_member(&member) else {
                continue;
            };
            let keys = SessionKeys::new(&session_id)?;
            let body = terminal(&session_id, &job_id);
            let reply = self
                .run_script(
                    &self.scripts.fail_orphan,
                    &[
                        &keys.meta(),
                        &keys.log(),
                        &keys.lease(&job_id)?,
                        &keys.job(&job_id)?,
                        RUNNING,
                    ],
                    &[
                        job_id.as_str().as_bytes(),
                        &body,
                        keys.wake().as_bytes(),
                        member.as_bytes(),
                        &terminal_payload,
                    ],
                    write_error,
                )
                .await?;
            let terminal_seq = match (status(&reply)?, reply.get(1)) {
                ("reaped", Some(seq)) => Some(number(seq)?),
                ("gone", _) => None,
                // Still leased (renewed, or another clock), or already ended
                // by its node or another reaper: nothing to do here.
                ("alive" | "done", _) => continue,
                _ => return Err(unexpected(&reply)),
            };
            reaped.push(ReapedJob {
                session_id,
                job_id,
                terminal_seq,
            });
        }
        Ok(reaped)
    }

    async fn claim_idempotency(
        &self,
        principal: &Principal,
        key: &str,
        record: &IdempotencyRecord,
        ttl_ms: u64,
    ) -> StorageResult<IdempotencyClaim> {
        let key = keys::idempotency(principal, key)?;
        let rec = to_json(record)?;
        let reply = self
            .run_script(
                &self.scripts.idempotency,
                &[&key],
                &[&rec, ttl_ms.to_string().as_bytes()],
                write_error,
            )
            .await?;
        match (status(&reply)?, reply.get(1)) {
            ("claimed", _) => Ok(IdempotencyClaim::Claimed),
            ("existing", Some(existing)) => Ok(IdempotencyClaim::Existing(from_json(
                text(existing)?.as_bytes(),
            )?)),
            _ => Err(unexpected(&reply)),
        }
    }

    async fn subscribe(
        &self,
        subscriber: &SessionId,
        owner: &SessionId,
        job_id: &JobId,
    ) -> StorageResult<()> {
        keys::checked(subscriber.as_str())?;
        let reply = self
            .job_script(
                owner,
                job_id,
                &[b"subscribe", subscriber.as_str().as_bytes()],
            )
            .await?;
        match status(&reply)? {
            "ok" => Ok(()),
            "notfound" => Err(StorageError::NotFound),
            _ => Err(unexpected(&reply)),
        }
    }

    async fn subscribers(
        &self,
        owner: &SessionId,
        job_id: &JobId,
    ) -> StorageResult<Vec<SessionId>> {
        let keys = SessionKeys::new(owner)?;
        let mut connection = self.connection.clone();
        let mut members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.subscribers(job_id)?)
            .query_async(&mut connection)
            .await
            .map_err(read_error)?;
        members.sort();
        Ok(members
            .iter()
            .map(|member| SessionId::from_client(member))
            .collect())
    }
}
