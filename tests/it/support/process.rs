//! The real `arcp-gateway` binary as a child process, started as a user
//! would and killed on drop.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::within;

/// How long a logged gateway may take to print its banner (cluster nodes
/// connect to Redis and check it first).
const LOGGED_START_LIMIT: Duration = Duration::from_secs(20);

pub struct GatewayProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`, as printed at start-up.
    pub base: String,
    /// The generated dev token, when no `--token` was given.
    pub dev_token: Option<String>,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `arcp-gateway --listen LISTEN ARGS`, with no `ARCP_GATEWAY_*` setting of
/// the test's own environment leaking in.
fn command(listen: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arcp-gateway"));
    command
        .args(["--listen", listen])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ARCP_GATEWAY_") {
            command.env_remove(name);
        }
    }
    command
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

impl GatewayProcess {
    /// Starts `arcp-gateway --listen 127.0.0.1:0 ARGS` and reads the bound
    /// address (and the dev token, if one is printed) from standard output.
    pub async fn start(args: &[&str]) -> GatewayProcess {
        let mut command = command("127.0.0.1:0", args);
        command.stderr(Stdio::null());
        let generates_token = !args.contains(&"--token");
        let mut child = command.spawn().expect("the gateway binary starts");
        let banner = within(
            "the start-up banner",
            read_banner(&mut child, generates_token),
        )
        .await;
        let (base, dev_token) = banner.expect("the gateway exited during start-up");
        GatewayProcess {
            child,
            base,
            dev_token,
        }
    }

    /// Starts `arcp-gateway --listen LISTEN ARGS` with its log (standard
    /// error) appended to `log`; a failed start-up panics with the log's tail.
    pub async fn start_logged(listen: &str, args: &[&str], log: &Path) -> GatewayProcess {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the gateway log");
        let mut command = command(listen, args);
        command.stderr(Stdio::from(stderr));
        let generates_token = !args.contains(&"--token");
        let mut child = command.spawn().expect("the gateway binary starts");
        let banner =
            tokio::time::timeout(LOGGED_START_LIMIT, read_banner(&mut child, generates_token))
                .await;
        match banner {
            Ok(Some((base, dev_token))) => GatewayProcess {
                child,
                base,
                dev_token,
            },
            Ok(None) => panic!(
                "the gateway on {listen} exited during start-up; its log:\n{}",
                log_tail(log, 40)
            ),
            Err(_) => panic!(
                "the gateway on {listen} printed no banner within {LOGGED_START_LIMIT:?}; \
                 its log:\n{}",
                log_tail(log, 40)
            ),
        }
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(mut self) {
        self.kill_in_place().await;
    }

    /// SIGKILL without giving up the handle, and wait until the process is
    /// gone.
    pub async fn kill_in_place(&mut self) {
        let _ = self.child.start_kill();
        let _ = within("the killed gateway to exit", self.child.wait()).await;
    }
}

/// Reads the banner from the child's standard output: the bound address and,
/// when expected, the dev token. `None` when the process exits first. Keeps
/// draining standard output afterwards so the child never blocks on a full
/// pipe.
async fn read_banner(child: &mut Child, generates_token: bool) -> Option<(String, Option<String>)> {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut base, mut dev_token) = (None, None);
    while base.is_none() || (generates_token && dev_token.is_none()) {
        let line = lines.next_line().await.expect("read stdout")?;
        if let Some(address) = line.strip_prefix("arcp-gateway listening on ") {
            base = Some(address.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("dev api token (principal `dev`): ") {
            dev_token = Some(rest.trim().to_owned());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some((base.unwrap_or_default(), dev_token))
}
