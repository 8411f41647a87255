//! A real nginx doing plain round robin over gateway nodes, configured from
//! `deploy/cluster/nginx.conf` itself: the shipped file with only its
//! addresses replaced (the nodes' ports, nginx's own port) and
//! `master_process off` added, so nginx is one process that dies with its
//! handle. Runs in the foreground in a temporary directory; killed on drop.
//! Never skips: without nginx the test fails and says what to install.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::process::log_tail;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// How long nginx may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(15);
/// The addresses in `deploy/cluster/nginx.conf` that a test replaces.
const DEPLOY_LISTEN: &str = "listen 127.0.0.1:8080;";
const DEPLOY_NODE_PREFIX: &str = "server 127.0.0.1:808";

pub struct RoundRobinNginx {
    child: Child,
    pub port: u16,
    error_log: PathBuf,
}

impl Drop for RoundRobinNginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The nginx binary, or a loud failure naming what to install.
fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|candidate| is_executable(candidate));
    match found {
        Some(binary) => binary,
        None => {
            let required = std::env::var("ARCP_E2E_REQUIRED").as_deref() == Ok("1")
                || std::env::var_os("CI").is_some_and(|value| !value.is_empty());
            panic!(
                "nginx is not installed, and the cluster tests put a real one in front of \
                 three gateway nodes (`apt-get install nginx-light`; `scripts/test` does it). {}",
                if required {
                    "CI or ARCP_E2E_REQUIRED=1 is set: these tests are required."
                } else {
                    "These tests never skip: a test that cannot run must not look green."
                }
            )
        }
    }
}

/// `deploy/cluster/nginx.conf` with nginx listening on `port` and one
/// upstream `server` line per node address (each keeping the shipped
/// parameters), plus `master_process off`.
pub fn cluster_config(port: u16, nodes: &[String]) -> String {
    let path = Path::new(REPO).join("deploy/cluster/nginx.conf");
    let text = std::fs::read_to_string(&path).expect("read deploy/cluster/nginx.conf");
    let shipped_nodes: Vec<&str> = text
        .lines()
        .filter(|line| line.trim_start().starts_with(DEPLOY_NODE_PREFIX))
        .collect();
    assert_eq!(
        shipped_nodes.len(),
        3,
        "deploy/cluster/nginx.conf must list three `{DEPLOY_NODE_PREFIX}N` upstream servers"
    );
    assert!(
        text.contains(DEPLOY_LISTEN),
        "deploy/cluster/nginx.conf must contain `{DEPLOY_LISTEN}`"
    );
    // `server 127.0.0.1:8081 max_fails=1 fail_timeout=2s;` keeps everything
    // after its address.
    let parameters = shipped_nodes[0]
        .trim_start()
        .split_once(' ')
        .and_then(|(_, rest)| rest.split_once(' '))
        .map_or(";", |(_, parameters)| parameters);
    let mut out = String::new();
    let mut nodes_written = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with(DEPLOY_NODE_PREFIX) {
            if !nodes_written {
                for node in nodes {
                    out.push_str(&format!("{indent}server {node} {parameters}\n"));
                }
                nodes_written = true;
            }
        } else if trimmed == DEPLOY_LISTEN {
            out.push_str(&format!("{indent}listen 127.0.0.1:{port};\n"));
        } else if trimmed == "daemon off;" {
            out.push_str(line);
            out.push_str("\n# Added by the test: one process, killed with its handle.\n");
            out.push_str("master_process off;\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        out.contains("master_process off;"),
        "deploy/cluster/nginx.conf must contain `daemon off;`"
    );
    out
}

/// A port that was free a moment ago (nginx binds it next; a lost race is
/// retried).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl RoundRobinNginx {
    /// Starts nginx in `dir` in front of `nodes` (`127.0.0.1:PORT` each) and
    /// waits until it accepts connections.
    pub async fn start(dir: &Path, nodes: &[String]) -> RoundRobinNginx {
        let binary = nginx_binary();
        let conf = dir.join("nginx.conf");
        let error_log = dir.join("nginx.stderr");
        let mut failures = Vec::new();
        for _attempt in 0..3 {
            let port = free_port();
            std::fs::write(&conf, cluster_config(port, nodes)).expect("write nginx.conf");
            let stderr = std::fs::File::create(&error_log).expect("create nginx.stderr");
            let prefix = format!("{}/", dir.display());
            let early_log = dir.join("nginx.early.log");
            let mut child = Command::new(&binary)
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&early_log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(stderr))
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.display()));
            let deadline = Instant::now() + START_LIMIT;
            let exited = loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break None;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    break Some(status);
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx did not accept connections on port {port} within {START_LIMIT:?}:\n{}",
                    log_tail(&error_log, 20)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let Some(status) = exited else {
                return RoundRobinNginx {
                    child,
                    port,
                    error_log,
                };
            };
            let message = format!("{}\n{}", log_tail(&error_log, 20), log_tail(&early_log, 20));
            if !message.contains("Address already in use") {
                panic!("nginx exited at start-up ({status}):\n{message}");
            }
            failures.push(message);
        }
        panic!(
            "nginx could not bind a free port in 3 attempts:\n{}",
            failures.join("\n")
        );
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The tail of nginx's error log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.error_log, 30)
    }
}
