//! Command agents: one process per job.
//!
//! The gateway spawns the configured program in a process group of its own,
//! writes the job as one JSON line on its standard input and closes it, reads
//! NDJSON from its standard output (see the parent module) and turns standard
//! error into `log` events (§8.2), at a bounded rate.
//!
//! The process is owned by a supervisor task, so it is stopped however the
//! job ends, even when the job's future is simply dropped (cancel,
//! `max_runtime_sec`, lease expiry, budget exhaustion, gateway shutdown):
//!
//! - the agent ended the job itself: it gets `kill_grace` to exit on its own;
//! - otherwise, or after that: `SIGTERM` to the whole group, then `SIGKILL`
//!   after `kill_grace`;
//! - the process is always waited for (never left a zombie), and whatever is
//!   left in its group at the end gets `SIGKILL`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::{mpsc, oneshot};

use super::{internal, job_request, traceparent, AgentOutput, ExternalAgent, LineFramer};
use crate::jobs::{Job, Terminal};

/// Environment variables a command agent inherits from the gateway, besides
/// its `inherit_env`. Everything else (the gateway's own tokens and secrets
/// included) is withheld.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Longest standard-error line forwarded; the rest of a longer line is cut.
const MAX_STDERR_LINE_BYTES: usize = 4096;
/// Standard-error lines waiting for the job's task; more are dropped.
const STDERR_QUEUE: usize = 64;
/// Bytes read from standard output at a time.
const READ_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct CommandBackend {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Set for the process, after the inherited variables.
    pub env: BTreeMap<String, String>,
    /// Extra variables passed through from the gateway's environment.
    pub inherit_env: Vec<String>,
    pub cwd: PathBuf,
    /// How long a process gets between being asked to stop and `SIGKILL`.
    pub kill_grace: Duration,
    /// Standard-error lines forwarded per second (bursts of twice that);
    /// 0 discards standard error.
    pub stderr_lines_per_sec: u32,
}

impl CommandBackend {
    fn command(&self, job: &Job, traceparent: Option<&str>) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args).current_dir(&self.cwd).env_clear();
        let inherited = INHERITED_ENV
            .iter()
            .copied()
            .chain(self.inherit_env.iter().map(String::as_str));
        for name in inherited {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .envs(&self.env)
            .env("ARCP_JOB_ID", job.spec.id.as_str())
            .env("ARCP_TRACE_ID", &job.spec.trace_id);
        // §11: the trace context travels to the agent as W3C's TRACEPARENT.
        if let Some(traceparent) = traceparent {
            command.env("TRACEPARENT", traceparent);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command
    }
}

pub(super) async fn run(
    agent: &ExternalAgent,
    backend: &CommandBackend,
    job: &Arc<Job>,
) -> Terminal {
    let traceparent = traceparent(&job.spec.trace_id);
    let mut child = match backend.command(job, traceparent.as_deref()).spawn() {
        Ok(child) => child,
        Err(error) => {
            return internal(format!(
                "could not start the agent {} ({}): {error}",
                job.spec.agent,
                backend.program.display()
            ))
        }
    };
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let process = Supervised::start(child, backend.kill_grace);
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) = (stdin, stdout, stderr) else {
        return internal("the agent's standard streams were not available");
    };
    tracing::debug!(job = %job.spec.id, pid = ?process.pid, "agent process started");

    // The job line, from a task of its own: an agent that never reads its
    // input cannot block the job, and the pipe closes once it is written.
    let mut request =
        serde_json::to_vec(&job_request(job, agent, traceparent.as_deref())).unwrap_or_default();
    request.push(b'\n');
    tokio::spawn(async move {
        let _ = stdin.write_all(&request).await;
        let _ = stdin.shutdown().await;
    });

    let (stderr_sender, mut stderr_lines) = mpsc::channel(STDERR_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    tokio::spawn(forward_stderr(
        stderr,
        stderr_sender,
        backend.stderr_lines_per_sec,
        dropped.clone(),
    ));

    let mut output = AgentOutput::new(job, agent);
    let mut framer = LineFramer::strict(agent.max_line_bytes);
    let mut buffer = vec![0u8; READ_BYTES];
    let mut last_stderr: Option<String> = None;
    loop {
        // Room in the job's output first (cluster mode), so a slow shared
        // store slows reading the agent, never a runtime thread.
        job.ready().await;
        tokio::select! {
            biased;
            Some(log) = stderr_lines.recv() => {
                if emit_stderr(job, log, &mut last_stderr).is_err() {
                    return internal("the job already ended");
                }
            }
            read = stdout.read(&mut buffer) => match read {
                Ok(0) => break,
                Ok(length) => match framer.feed(&buffer[..length], |line| output.line(line)) {
                    Ok(ControlFlow::Continue(())) => {}
                    Ok(ControlFlow::Break(finished)) => {
                        report_dropped(job, &dropped);
                        if finished.by_agent {
                            process.finish();
                        }
                        return finished.terminal;
                    }
                    Err(too_long) => return output.too_long(too_long),
                },
                Err(error) => {
                    return internal(format!("reading the agent's standard output failed: {error}"))
                }
            },
        }
    }

    // Standard output closed. A last line without `\n` still counts.
    if let Some(line) = framer.finish() {
        if let ControlFlow::Break(finished) = output.line(&line) {
            report_dropped(job, &dropped);
            if finished.by_agent {
                process.finish();
            }
            return finished.terminal;
        }
    }
    // Let what the agent said on standard error (a traceback, say) reach the
    // stream before the error, for a bounded time.
    let settle = backend.kill_grace.min(Duration::from_secs(1));
    let drained = tokio::time::timeout(settle, async {
        while let Some(log) = stderr_lines.recv().await {
            if emit_stderr(job, log, &mut last_stderr).is_err() {
                break;
            }
        }
    });
    let _ = drained.await;
    report_dropped(job, &dropped);
    let status = process.exit_status(settle).await;
    let how = match status {
        Some(status) => format!("exited ({status})"),
        None => "closed its standard output".to_owned(),
    };
    let hint = last_stderr
        .map(|line| format!("; last standard-error line: {line:?}"))
        .unwrap_or_default();
    internal(format!(
        "the agent {} {how} without a result or error line{hint}",
        job.spec.agent
    ))
}

/// Emits a forwarded standard-error line, remembering it for the error
/// message should the agent die.
fn emit_stderr(
    job: &Job,
    log: Value,
    last: &mut Option<String>,
) -> Result<(), crate::jobs::JobFinished> {
    if log.get("source").is_some() {
        if let Some(message) = log.get("message").and_then(Value::as_str) {
            *last = Some(message.chars().take(300).collect());
        }
    }
    job.emit("log", log).map(|_| ())
}

/// Says how many standard-error lines were dropped since the last report.
fn report_dropped(job: &Job, dropped: &AtomicU64) {
    let count = dropped.swap(0, Ordering::Relaxed);
    if count > 0 {
        let _ = job.emit("log", dropped_note(count));
    }
}

fn dropped_note(count: u64) -> Value {
    json!({
        "level": "warn",
        "message": format!("{count} standard-error lines of the agent were dropped (rate limit)"),
    })
}

/// How the job is done with the process.
enum Ending {
    /// The agent ended the job: it may exit by itself within the grace.
    Finished,
    /// Stop it now.
    Stop,
}

/// The job's handle on its supervised process. Dropping it stops the
/// process.
struct Supervised {
    pid: Option<u32>,
    ending: Option<oneshot::Sender<Ending>>,
    exit: Option<oneshot::Receiver<Option<ExitStatus>>>,
}

impl Supervised {
    fn start(child: Child, grace: Duration) -> Supervised {
        let pid = child.id();
        let (ending_sender, ending) = oneshot::channel();
        let (exit_sender, exit) = oneshot::channel();
        tokio::spawn(supervise(child, grace, ending, exit_sender));
        Supervised {
            pid,
            ending: Some(ending_sender),
            exit: Some(exit),
        }
    }

    fn finish(mut self) {
        if let Some(ending) = self.ending.take() {
            let _ = ending.send(Ending::Finished);
        }
    }

    /// The exit status, if the process exits within `wait`.
    async fn exit_status(mut self, wait: Duration) -> Option<ExitStatus> {
        let exit = self.exit.take()?;
        tokio::time::timeout(wait, exit).await.ok()?.ok()?
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(ending) = self.ending.take() {
            let _ = ending.send(Ending::Stop);
        }
    }
}

/// The process group of an agent; dropping it kills whatever is left in it.
struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    fn signal(&self, signal: Signal) {
        if let Some(group) = self.0 {
            // ESRCH (nothing left in the group) is fine.
            let _ = killpg(group, signal);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // Strays the agent left behind, or everything when the runtime is
        // going away with the supervisor. The group id cannot name another
        // group while any of its members lives.
        self.signal(Signal::SIGKILL);
    }
}

/// Owns the child: reports its exit, stops it when the job is done with it,
/// and always reaps it.
async fn supervise(
    mut child: Child,
    grace: Duration,
    mut ending: oneshot::Receiver<Ending>,
    exit: oneshot::Sender<Option<ExitStatus>>,
) {
    let group = ProcessGroup(
        child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw),
    );
    let exited = tokio::select! {
        biased;
        status = child.wait() => Ok(status.ok()),
        asked = &mut ending => Err(asked.unwrap_or(Ending::Stop)),
    };
    match exited {
        // It exited by itself; sweep its group once the job is done with it.
        Ok(status) => {
            let _ = exit.send(status);
            let _ = ending.await;
        }
        Err(asked) => {
            let status = stop(&mut child, &group, asked, grace).await;
            let _ = exit.send(status);
        }
    }
}

async fn stop(
    child: &mut Child,
    group: &ProcessGroup,
    asked: Ending,
    grace: Duration,
) -> Option<ExitStatus> {
    if let Ending::Finished = asked {
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return status.ok();
        }
    }
    group.signal(Signal::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return status.ok();
    }
    group.signal(Signal::SIGKILL);
    // Reap it: no zombie is ever left behind.
    child.wait().await.ok()
}

/// Reads standard error line by line (each cut at 4 KiB) and forwards lines as
/// `log` bodies at most `per_second` a second, in bursts of up to twice that;
/// the rest is counted in `dropped` and reported (when the rate allows, and
/// by the job's task when the job ends). Never blocks the agent: it always
/// reads.
async fn forward_stderr(
    mut stderr: ChildStderr,
    queue: mpsc::Sender<Value>,
    per_second: u32,
    dropped: Arc<AtomicU64>,
) {
    let mut forwarder = StderrForwarder {
        queue,
        bucket: TokenBucket::new(per_second),
        dropped,
    };
    let mut framer = LineFramer::truncating(MAX_STDERR_LINE_BYTES);
    let mut buffer = vec![0u8; 8192];
    loop {
        let length = match stderr.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(length) => length,
        };
        let _ = framer.feed(&buffer[..length], |line| {
            forwarder.offer(line);
            ControlFlow::<()>::Continue(())
        });
    }
    if let Some(line) = framer.finish() {
        forwarder.offer(&line);
    }
}

struct StderrForwarder {
    queue: mpsc::Sender<Value>,
    bucket: TokenBucket,
    dropped: Arc<AtomicU64>,
}

impl StderrForwarder {
    fn offer(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        if self.dropped.load(Ordering::Relaxed) > 0 && self.bucket.take(2) {
            let count = self.dropped.swap(0, Ordering::Relaxed);
            if self.queue.try_send(dropped_note(count)).is_err() {
                self.dropped.fetch_add(count, Ordering::Relaxed);
            }
        }
        let log = json!({ "level": "info", "message": text, "source": "stderr" });
        if !(self.bucket.take(1) && self.queue.try_send(log).is_ok()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A classic token bucket: `rate` tokens a second, up to `2 × rate`.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(per_second: u32) -> TokenBucket {
        let rate = f64::from(per_second);
        TokenBucket {
            rate,
            tokens: rate * 2.0,
            last: Instant::now(),
        }
    }

    /// Takes `count` tokens if there are that many.
    fn take(&mut self, count: u32) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= f64::from(count) {
            self.tokens -= f64::from(count);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_bucket_bounds_bursts() {
        let mut bucket = TokenBucket::new(5);
        let granted = (0..100).filter(|_| bucket.take(1)).count();
        assert_eq!(granted, 10, "a burst of twice the rate");
        let mut silent = TokenBucket::new(0);
        assert!(!silent.take(1));
    }
}
