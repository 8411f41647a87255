//! External agents: a program the gateway spawns per job ([`command`]) or an
//! HTTP service it calls per job ([`http`]). Both speak one line protocol:
//!
//! - **In:** the job as one JSON object, `{job_id, agent, input, lease,
//!   lease_constraints, budget, trace_id, traceparent, max_runtime_sec}`
//!   (see [`job_request`]): one line on standard input, or the POST body.
//! - **Out:** newline-delimited JSON (or SSE `data:` for HTTP), one message a
//!   line:
//!   - `{"kind": K, "body": {...}}`: a job event of any §8.2 kind but
//!     `delegate` (§10 is not implemented);
//!   - `{"result": V}`: success with `V` inline;
//!   - `{"error": {"code", "message", "retryable"}}`: failure with a §12 code;
//!   - a streamed result (§8.4): `result_chunk` events; the one with
//!     `more: false` ends the job with a `job.result` naming the result.
//!
//! The gateway owns everything else: sequencing, resume, the lease checks of
//! [`super::lease`] and the budget and chunk rules of [`super::Job::emit`].
//! Whatever the agent writes, the gateway never panics and never buffers
//! more than one bounded line ([`LineFramer`]) per stream: output that breaks
//! the protocol ends the job with a clear `INTERNAL_ERROR`, and the agent is
//! stopped.
//!
//! Like built-in agents, an external agent runs inside the job's one task
//! (`runner.rs`); every event goes through `Job::emit` from that task.

pub mod arcp;
pub mod command;
pub mod http;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::lease::{LeaseCheck, ModelPolicy};
use super::{Job, Terminal};
use crate::protocol::{ErrorCode, ErrorPayload, JobStatus};

pub use arcp::ArcpBackend;
pub use command::CommandBackend;
pub use http::HttpBackend;

/// Event kinds an agent may emit (§8.2). `delegate` is left out: the gateway
/// does not implement delegation (§10).
pub const EVENT_KINDS: &[&str] = &[
    "log",
    "thought",
    "tool_call",
    "tool_result",
    "status",
    "metric",
    "artifact_ref",
    "progress",
    "result_chunk",
];

/// What the gateway does when an agent reports an operation its lease does
/// not cover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ViolationPolicy {
    /// Answer it with a `PERMISSION_DENIED` `tool_result` and keep going.
    #[default]
    Report,
    /// Answer it, then end the job with `PERMISSION_DENIED`.
    Fail,
}

/// One version of an agent defined in the agents file.
#[derive(Debug)]
pub struct ExternalAgent {
    pub backend: Backend,
    /// Longest line (NDJSON line or SSE event data) the agent may write.
    pub max_line_bytes: usize,
    /// A ceiling on every job of this agent, besides the job's own
    /// `max_runtime_sec` (§7.3).
    pub max_runtime: Option<Duration>,
    /// §9.7: what a lease without `model.use` allows.
    pub model_policy: ModelPolicy,
    pub lease_violation: ViolationPolicy,
}

#[derive(Debug)]
pub enum Backend {
    Command(CommandBackend),
    Http(HttpBackend),
    Arcp(ArcpBackend),
}

impl ExternalAgent {
    /// A short description for the inventory (§7.5) when the file gives none.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Command(_) => "external command agent",
            Backend::Http(_) => "HTTP upstream agent",
            Backend::Arcp(_) => "agent of an upstream ARCP runtime",
        }
    }
}

/// Runs one job on an external agent and returns how it ended. Dropping the
/// future (cancel, timeout, lease expiry, budget exhaustion) stops the agent:
/// the process is signalled, the request dropped.
pub async fn run(agent: &ExternalAgent, job: Arc<Job>) -> Terminal {
    let work = async {
        match &agent.backend {
            Backend::Command(backend) => command::run(agent, backend, &job).await,
            Backend::Http(backend) => http::run(agent, backend, &job).await,
            Backend::Arcp(backend) => arcp::run(agent, backend, &job).await,
        }
    };
    let Some(limit) = agent.max_runtime else {
        return work.await;
    };
    match tokio::time::timeout(limit, work).await {
        Ok(terminal) => terminal,
        Err(_) => Terminal::failure(
            JobStatus::TimedOut,
            ErrorCode::Timeout,
            format!(
                "job exceeded the agent's max_runtime_sec ({}s)",
                limit.as_secs()
            ),
        ),
    }
}

/// The job as the agent receives it.
pub fn job_request(job: &Job, agent: &ExternalAgent, traceparent: Option<&str>) -> Value {
    let spec = &job.spec;
    let max_runtime = match (spec.max_runtime, agent.max_runtime) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    json!({
        "job_id": spec.id,
        "agent": spec.agent,
        "input": spec.input,
        "lease": spec.lease,
        "lease_constraints": spec.lease_constraints,
        "budget": job.snapshot().budget_remaining,
        "trace_id": spec.trace_id,
        "traceparent": traceparent,
        "max_runtime_sec": max_runtime.map(|d| d.as_secs()),
    })
}

/// §11: a W3C `traceparent` for the gateway's hop to the agent: the job's
/// trace id with a fresh parent (span) id. `None` when the trace id is not a
/// W3C one (it came from an envelope `trace_id` in another format).
pub fn traceparent(trace_id: &str) -> Option<String> {
    let valid = trace_id.len() == 32
        && trace_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && trace_id.bytes().any(|b| b != b'0');
    valid.then(|| format!("00-{trace_id}-{:016x}-01", rand::random::<u64>() | 1))
}

fn internal(message: impl Into<String>) -> Terminal {
    Terminal::failure(JobStatus::Error, ErrorCode::InternalError, message)
}

/// §7.3: the final status that goes with an error code.
fn final_status(code: ErrorCode) -> JobStatus {
    match code {
        ErrorCode::Cancelled => JobStatus::Cancelled,
        ErrorCode::Timeout => JobStatus::TimedOut,
        _ => JobStatus::Error,
    }
}

/// A line longer than the agent's `max_line_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineTooLong {
    pub max: usize,
}

/// Splits a byte stream into lines while holding at most `max` bytes of a
/// line. In strict mode a longer line is an error; in truncating mode it is
/// cut at `max` and the rest of it skipped.
pub struct LineFramer {
    buffer: Vec<u8>,
    max: usize,
    truncate: bool,
    skipping: bool,
}

impl LineFramer {
    pub fn strict(max: usize) -> Self {
        LineFramer {
            buffer: Vec::new(),
            max,
            truncate: false,
            skipping: false,
        }
    }

    pub fn truncating(max: usize) -> Self {
        LineFramer {
            truncate: true,
            ..LineFramer::strict(max)
        }
    }

    /// Calls `each` on every complete line in `data` (without its `\n`),
    /// until `each` breaks. A partial line waits for the next call.
    pub fn feed<B>(
        &mut self,
        mut data: &[u8],
        mut each: impl FnMut(&[u8]) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B>, LineTooLong> {
        while !data.is_empty() {
            let (piece, complete) = match data.iter().position(|&b| b == b'\n') {
                Some(end) => (&data[..end], true),
                None => (data, false),
            };
            data = if complete {
                &data[piece.len() + 1..]
            } else {
                &[]
            };
            if self.skipping {
                self.skipping = !complete;
                continue;
            }
            let room = self.max.saturating_sub(self.buffer.len());
            if piece.len() > room {
                if !self.truncate {
                    self.buffer.clear();
                    return Err(LineTooLong { max: self.max });
                }
                self.buffer.extend_from_slice(&piece[..room]);
                self.skipping = !complete;
            } else {
                self.buffer.extend_from_slice(piece);
                if !complete {
                    continue;
                }
            }
            let flow = each(&self.buffer);
            self.buffer.clear();
            if flow.is_break() {
                return Ok(flow);
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The last line, when the stream ended without a final `\n`.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.skipping = false;
        (!self.buffer.is_empty()).then(|| std::mem::take(&mut self.buffer))
    }
}

/// Reassembles SSE events (WHATWG rules) from lines and hands out each
/// event's data; everything but `data:` is ignored.
pub struct SseData {
    data: Vec<u8>,
    has_data: bool,
    max: usize,
}

impl SseData {
    pub fn new(max: usize) -> Self {
        SseData {
            data: Vec::new(),
            has_data: false,
            max,
        }
    }

    /// Takes one line; returns an event's data when the line ends the event.
    pub fn line(&mut self, line: &[u8]) -> Result<Option<Vec<u8>>, LineTooLong> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return Ok(None), // a comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.data.len() + value.len() + 1 > self.max {
                return Err(LineTooLong { max: self.max });
            }
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        Ok(None)
    }

    /// The data of an event the stream ended in the middle of. The SSE rules
    /// would drop it; the gateway takes it, as it takes an NDJSON last line
    /// without `\n`.
    pub fn dispatch(&mut self) -> Option<Vec<u8>> {
        let had = std::mem::take(&mut self.has_data);
        had.then(|| std::mem::take(&mut self.data))
    }
}

/// How the agent's output ended the job.
pub struct Finished {
    pub terminal: Terminal,
    /// The agent ended the job itself (result, error or final chunk), so it
    /// may exit on its own; otherwise it is stopped at once.
    pub by_agent: bool,
}

impl Finished {
    fn by_agent(terminal: Terminal) -> ControlFlow<Finished> {
        ControlFlow::Break(Finished {
            terminal,
            by_agent: true,
        })
    }

    fn by_gateway(terminal: Terminal) -> ControlFlow<Finished> {
        ControlFlow::Break(Finished {
            terminal,
            by_agent: false,
        })
    }
}

/// The streamed result an agent is sending (§8.4).
#[derive(Default)]
struct Streamed {
    result_id: Option<String>,
    next_chunk_seq: u64,
    size: u64,
    chunks: u64,
}

/// Turns an agent's output lines into job events and, at the end, the
/// job's terminal. One per job run; lives in the job's task.
pub struct AgentOutput<'a> {
    job: &'a Job,
    agent: &'a ExternalAgent,
    lines: u64,
    streamed: Streamed,
}

/// A job the gateway already ended (budget, §8.4 violation, cancel): the
/// terminal was written; this one is never used.
fn already_ended() -> ControlFlow<Finished> {
    Finished::by_gateway(internal("the job already ended"))
}

impl<'a> AgentOutput<'a> {
    pub fn new(job: &'a Job, agent: &'a ExternalAgent) -> Self {
        AgentOutput {
            job,
            agent,
            lines: 0,
            streamed: Streamed::default(),
        }
    }

    /// Handles one output line (without its `\n`).
    pub fn line(&mut self, line: &[u8]) -> ControlFlow<Finished> {
        self.lines += 1;
        let line = line.trim_ascii();
        if line.is_empty() {
            return ControlFlow::Continue(());
        }
        match self.parse(line) {
            Ok(flow) => flow,
            Err(why) => Finished::by_gateway(self.malformed(&why, line)),
        }
    }

    /// The terminal for a line over the length limit.
    pub fn too_long(&self, error: LineTooLong) -> Terminal {
        internal(format!(
            "the agent {} wrote a line of more than {} bytes (max_line_bytes) after {} lines; the agent was stopped",
            self.job.spec.agent, error.max, self.lines
        ))
    }

    fn malformed(&self, why: &str, line: &[u8]) -> Terminal {
        const PREVIEW: usize = 160;
        let shown = String::from_utf8_lossy(&line[..line.len().min(PREVIEW)]);
        let ellipsis = if line.len() > PREVIEW { "…" } else { "" };
        internal(format!(
            "the agent {} wrote an invalid line {}: {why} (line: {shown:?}{ellipsis}); the agent was stopped",
            self.job.spec.agent, self.lines
        ))
    }

    /// Handles one message already parsed (an upstream ARCP runtime's
    /// event or terminal, mapped to this protocol).
    pub fn value(&mut self, value: Value) -> ControlFlow<Finished> {
        self.lines += 1;
        match self.message(value) {
            Ok(flow) => flow,
            Err(why) => Finished::by_gateway(internal(format!(
                "the agent {} sent an invalid message {}: {why}; the agent was stopped",
                self.job.spec.agent, self.lines
            ))),
        }
    }

    fn parse(&mut self, line: &[u8]) -> Result<ControlFlow<Finished>, String> {
        let value: Value = crate::json::parse(line).map_err(|error| match error {
            crate::json::JsonError::Syntax(detail) => format!("not JSON ({detail})"),
            refused => refused.to_string(),
        })?;
        self.message(value)
    }

    fn message(&mut self, value: Value) -> Result<ControlFlow<Finished>, String> {
        let Value::Object(mut message) = value else {
            return Err("not a JSON object".into());
        };
        if let Some(kind) = message.remove("kind") {
            let kind = kind.as_str().ok_or("`kind` is not a string")?.to_owned();
            let body = match message.remove("body") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(body)) => body,
                Some(_) => return Err("`body` is not a JSON object".into()),
            };
            return self.event(&kind, body);
        }
        if let Some(result) = message.remove("result") {
            return Ok(Finished::by_agent(Terminal::Success { result }));
        }
        if let Some(error) = message.remove("error") {
            return Ok(Finished::by_agent(agent_error(&error)?));
        }
        Err("expected an object with `kind`, `result` or `error`".into())
    }

    fn event(
        &mut self,
        kind: &str,
        mut body: Map<String, Value>,
    ) -> Result<ControlFlow<Finished>, String> {
        if !EVENT_KINDS.contains(&kind) {
            return Err(format!(
                "unknown event kind {kind:?} (one of {})",
                EVENT_KINDS.join(", ")
            ));
        }
        if kind == "tool_call" && !body.get("tool").is_some_and(Value::is_string) {
            return Err("a tool_call needs a string `tool` (§8.2)".into());
        }
        if kind == "result_chunk" {
            return Ok(self.result_chunk(body));
        }
        let body_value = Value::Object(std::mem::take(&mut body));
        let lease = LeaseCheck {
            lease: &self.job.spec.lease,
            expires_at: self.job.spec.lease_expires_at,
            model_policy: self.agent.model_policy,
        };
        let denial = lease.denial(kind, &body_value);
        if self.job.emit(kind, body_value).is_err() {
            return Ok(already_ended());
        }
        let Some(denial) = denial else {
            return Ok(ControlFlow::Continue(()));
        };
        // §9.3: the operation fails with PERMISSION_DENIED (or §9.5
        // LEASE_EXPIRED), surfaced as a tool_result right after it.
        let code = denial["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let message = denial["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        tracing::info!(
            target: "arcp_gateway::audit",
            job = %self.job.spec.id,
            agent = %self.job.spec.agent,
            %code,
            %message,
            "agent operation denied by the lease"
        );
        if self.job.emit("tool_result", denial).is_err() {
            return Ok(already_ended());
        }
        if self.agent.lease_violation == ViolationPolicy::Fail {
            let code = ErrorCode::parse(&code).unwrap_or(ErrorCode::PermissionDenied);
            return Ok(Finished::by_gateway(Terminal::failure(
                JobStatus::Error,
                code,
                message,
            )));
        }
        Ok(ControlFlow::Continue(()))
    }

    /// §8.4: fills in what the agent may leave out (`result_id`, generated by
    /// the runtime as the spec says; `chunk_seq`; `encoding: utf8`), lets
    /// `Job::emit` check the rules, and ends the job with the final chunk.
    fn result_chunk(&mut self, mut body: Map<String, Value>) -> ControlFlow<Finished> {
        let result_id = match body.get("result_id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => self
                .streamed
                .result_id
                .clone()
                .unwrap_or_else(|| format!("res_{:032x}", rand::random::<u128>())),
        };
        body.insert("result_id".into(), json!(result_id));
        body.entry("chunk_seq")
            .or_insert(json!(self.streamed.next_chunk_seq));
        body.entry("encoding").or_insert(json!("utf8"));
        let chunk_seq = body.get("chunk_seq").and_then(Value::as_u64);
        let more = body.get("more").and_then(Value::as_bool);
        let size = decoded_size(&body);
        if self.job.emit("result_chunk", Value::Object(body)).is_err() {
            // Job::emit ended the job with INTERNAL_ERROR (§8.4 rules).
            return already_ended();
        }
        self.streamed.result_id = Some(result_id.clone());
        self.streamed.next_chunk_seq = chunk_seq.unwrap_or(0) + 1;
        self.streamed.size += size;
        self.streamed.chunks += 1;
        if more != Some(false) {
            return ControlFlow::Continue(());
        }
        let Streamed { size, chunks, .. } = self.streamed;
        Finished::by_agent(Terminal::StreamedSuccess {
            result_id,
            result_size: size,
            summary: format!("{size} bytes in {chunks} chunks"),
        })
    }
}

/// The size of a chunk's decoded data (§8.4 `result_size`).
fn decoded_size(body: &Map<String, Value>) -> u64 {
    let data = body.get("data").and_then(Value::as_str).unwrap_or_default();
    match body.get("encoding").and_then(Value::as_str) {
        Some("base64") => (data.trim_end_matches('=').len() as u64 * 3) / 4,
        _ => data.len() as u64,
    }
}

/// `{"code", "message", "retryable"}` from the agent (§12), with the
/// retryable rules §12 forces.
fn agent_error(error: &Value) -> Result<Terminal, String> {
    let code_text = error
        .get("code")
        .and_then(Value::as_str)
        .ok_or("`error` needs a string `code`")?;
    let code = ErrorCode::parse(code_text)
        .ok_or_else(|| format!("error code {code_text:?} is not an ARCP error code (§12)"))?;
    let message = match error.get("message") {
        None | Some(Value::Null) => "the agent reported an error".to_owned(),
        Some(Value::String(message)) => message.clone(),
        Some(_) => return Err("error `message` is not a string".into()),
    };
    let retryable = match error.get("retryable") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(retryable)) => Some(*retryable),
        Some(_) => return Err("error `retryable` is not a boolean".into()),
    };
    Ok(Terminal::Failure {
        final_status: final_status(code),
        error: ErrorPayload {
            code,
            message,
            retryable: code.forced_retryable().or(retryable).unwrap_or(false),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(framer: &mut LineFramer, data: &[u8]) -> Result<Vec<String>, LineTooLong> {
        let mut seen = Vec::new();
        let _ = framer.feed(data, |line| {
            seen.push(String::from_utf8_lossy(line).into_owned());
            ControlFlow::<()>::Continue(())
        })?;
        Ok(seen)
    }

    proptest::proptest! {
        /// However the bytes are cut into reads, the framer yields the same
        /// lines as one read, none longer than its limit; a strict framer
        /// fails exactly when some complete or final line is too long.
        #[test]
        fn framing_does_not_depend_on_read_boundaries(
            data in proptest::collection::vec(proptest::prop_oneof![
                proptest::prelude::Just(b'\n'),
                proptest::prelude::any::<u8>(),
            ], 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..8),
            max in 1usize..40,
        ) {
            let expected: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
            let (complete, last) = expected.split_at(expected.len() - 1);
            let too_long = expected.iter().any(|line| line.len() > max);

            let mut cuts = cuts;
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort_unstable();
            let mut truncating = LineFramer::truncating(max);
            let mut strict = LineFramer::strict(max);
            let mut cut_lines = Vec::new();
            let mut strict_lines = Vec::new();
            let mut strict_failed = false;
            for window in cuts.windows(2) {
                let piece = &data[window[0].min(data.len())..window[1].min(data.len())];
                let _ = truncating.feed(piece, |line| {
                    cut_lines.push(line.to_vec());
                    ControlFlow::<()>::Continue(())
                });
                if !strict_failed {
                    let fed = strict.feed(piece, |line| {
                        strict_lines.push(line.to_vec());
                        ControlFlow::<()>::Continue(())
                    });
                    strict_failed = fed.is_err();
                }
            }
            cut_lines.extend(truncating.finish());
            let wanted: Vec<Vec<u8>> = complete
                .iter()
                .chain(last.iter().filter(|line| !line.is_empty()))
                .map(|line| line[..line.len().min(max)].to_vec())
                .collect();
            proptest::prop_assert_eq!(&cut_lines, &wanted);
            if !strict_failed {
                strict_lines.extend(strict.finish());
                proptest::prop_assert_eq!(&strict_lines, &wanted);
            }
            proptest::prop_assert_eq!(strict_failed, too_long);
        }

        /// SSE reassembly never panics and never holds more than its limit.
        #[test]
        fn sse_data_stays_bounded(
            lines in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..40),
            max in 1usize..100,
        ) {
            let mut sse = SseData::new(max);
            for line in &lines {
                if let Ok(Some(data)) = sse.line(line) {
                    proptest::prop_assert!(data.len() < max);
                }
            }
            if let Some(data) = sse.dispatch() {
                proptest::prop_assert!(data.len() < max);
            }
        }
    }

    #[test]
    fn the_framer_splits_lines_across_chunks() {
        let mut framer = LineFramer::strict(16);
        assert_eq!(lines(&mut framer, b"ab").unwrap(), Vec::<String>::new());
        assert_eq!(
            lines(&mut framer, b"c\nde\n\nf").unwrap(),
            ["abc", "de", ""]
        );
        assert_eq!(framer.finish(), Some(b"f".to_vec()));
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn a_strict_framer_refuses_long_lines_and_a_truncating_one_cuts_them() {
        let mut strict = LineFramer::strict(4);
        assert_eq!(lines(&mut strict, b"abcd\n").unwrap(), ["abcd"]);
        assert_eq!(lines(&mut strict, b"abc"), Ok(vec![]));
        assert_eq!(lines(&mut strict, b"de"), Err(LineTooLong { max: 4 }));

        let mut cut = LineFramer::truncating(4);
        assert_eq!(lines(&mut cut, b"abcdefgh").unwrap(), ["abcd"]);
        assert_eq!(lines(&mut cut, b"ijk\nxy\n").unwrap(), ["xy"]);
        assert_eq!(lines(&mut cut, b"0123456789\n1\n").unwrap(), ["0123", "1"]);
    }

    #[test]
    fn the_framer_stops_when_asked() {
        let mut framer = LineFramer::strict(16);
        let mut seen = 0;
        let flow = framer
            .feed(b"a\nb\nc\n", |_| {
                seen += 1;
                if seen == 2 {
                    ControlFlow::Break(seen)
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(flow, ControlFlow::Break(2));
    }

    #[test]
    fn sse_data_is_reassembled() {
        let mut sse = SseData::new(64);
        let mut events = Vec::new();
        for line in [
            &b": keepalive"[..],
            b"event: message",
            b"id: 7",
            b"data: {\"a\":",
            b"data:1}\r",
            b"",
            b"",
            b"data: x",
        ] {
            if let Some(data) = sse.line(line).unwrap() {
                events.push(String::from_utf8(data).unwrap());
            }
        }
        assert_eq!(events, ["{\"a\":\n1}"]);
        assert_eq!(sse.dispatch(), Some(b"x".to_vec()));
        let mut small = SseData::new(4);
        assert!(small.line(b"data: 12345").is_err());
    }

    #[test]
    fn traceparents_carry_the_trace_id() {
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let header = traceparent(trace_id).unwrap();
        let fields: Vec<&str> = header.split('-').collect();
        assert_eq!(fields[0], "00");
        assert_eq!(fields[1], trace_id);
        assert_eq!(fields[2].len(), 16);
        assert_ne!(fields[2], "0000000000000000");
        assert_eq!(fields[3], "01");
        assert_eq!(traceparent("not-a-w3c-trace"), None);
        assert_eq!(traceparent(&"0".repeat(32)), None);
    }

    #[test]
    fn agent_errors_follow_section_12() {
        let terminal = agent_error(&json!({"code": "INTERNAL_ERROR", "retryable": false})).unwrap();
        let Terminal::Failure {
            error,
            final_status,
        } = terminal
        else {
            panic!("a failure")
        };
        assert!(error.retryable, "INTERNAL_ERROR is always retryable");
        assert_eq!(final_status, JobStatus::Error);
        let Terminal::Failure { final_status, .. } =
            agent_error(&json!({"code": "TIMEOUT"})).unwrap()
        else {
            panic!("a failure")
        };
        assert_eq!(final_status, JobStatus::TimedOut);
        assert!(agent_error(&json!({"code": "NOPE"})).is_err());
        assert!(agent_error(&json!({"message": "x"})).is_err());
        assert!(agent_error(&json!({"code": "INVALID_REQUEST", "retryable": "no"})).is_err());
    }
}
