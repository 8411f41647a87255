//! What the cluster benchmark runs: redis-server, nginx and the gateway
//! nodes, each a child process in a temporary directory, and what they cost
//! in CPU.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::common::{process_cpu_seconds, start_gateway, Server};

const SECRET: &str = "cluster-bench-secret-0123456789abcdef";
const NGINX_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cluster/nginx.conf");
const REDIS_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cluster/redis.conf");

// ----------------------------------------------------------------- the tools

/// `name` on PATH or in the sbin directories; exits with what to install.
pub fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        eprintln!(
            "{name} is not installed; the cluster benchmark needs redis-server and nginx:\n  \
             apt-get update && apt-get install -y redis-server nginx-light\n\
             (scripts/test installs both)"
        );
        std::process::exit(2)
    })
}

pub struct Redis {
    child: Child,
    socket: PathBuf,
    connection: redis::aio::MultiplexedConnection,
}

impl Redis {
    async fn start(dir: &Path, redis_server: &Path, fsync: &str) -> Redis {
        let socket = dir.join("redis.sock");
        let child = Command::new(redis_server)
            .arg(REDIS_CONF)
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir)
            .args(["--appendfsync", fsync, "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        let url = format!("unix://{}", socket.display());
        let client = redis::Client::open(url).expect("redis url");
        let started = Instant::now();
        let connection = loop {
            if let Ok(connection) = client.get_multiplexed_async_connection().await {
                break connection;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Redis {
            child,
            socket,
            connection,
        }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// used_cpu_sys + used_cpu_user from `INFO cpu`, in seconds.
    pub async fn cpu_seconds(&self) -> f64 {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut self.connection.clone())
            .await
            .expect("INFO cpu");
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        field("used_cpu_sys") + field("used_cpu_user")
    }

    /// Events stored in `session`'s log (its newest sequence number).
    pub async fn log_top(&self, session: &str) -> u64 {
        redis::cmd("HGET")
            .arg(format!("arcp:{{{session}}}:meta"))
            .arg("top")
            .query_async::<Option<u64>>(&mut self.connection.clone())
            .await
            .expect("HGET top")
            .unwrap_or(0)
    }
}

/// nginx with deploy/cluster/nginx.conf's settings in front of `nodes`.
pub struct Nginx {
    child: Child,
    address: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM, not KILL: the master then stops its worker too.
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

impl Nginx {
    async fn start(dir: &Path, nginx: &Path, nodes: &[SocketAddr]) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let deploy = std::fs::read_to_string(NGINX_CONF).expect("read deploy/cluster/nginx.conf");
        let (mut servers_written, mut listen_written) = (false, false);
        let mut conf = String::new();
        for line in deploy.lines() {
            let trimmed = line.trim_start();
            if let Some(options) = trimmed.strip_prefix("server 127.0.0.1:808") {
                // `1 max_fails=1 fail_timeout=2s;`: keep the options.
                let options = options.split_once(' ').map_or(";", |(_, rest)| rest);
                if !servers_written {
                    for node in nodes {
                        conf.push_str(&format!("        server {node} {options}\n"));
                    }
                    servers_written = true;
                }
            } else if trimmed.starts_with("listen 127.0.0.1:8080;") {
                conf.push_str(&format!("        listen 127.0.0.1:{port};\n"));
                listen_written = true;
            } else {
                conf.push_str(line);
                conf.push('\n');
            }
        }
        assert!(
            servers_written && listen_written,
            "deploy/cluster/nginx.conf no longer has `server 127.0.0.1:808N` and \
             `listen 127.0.0.1:8080;` lines for the bench to rewrite"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(format!("{}/", dir.display()))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        while tokio::net::TcpStream::connect(address).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not listen within 10 s (config: {})",
                conf_path.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Nginx { child, address }
    }

    /// CPU seconds of the master and its workers.
    fn cpu_seconds(&self) -> f64 {
        let master = self.child.id().unwrap_or(0);
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        process_cpu_seconds(master)
            + children
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .map(process_cpu_seconds)
                .sum::<f64>()
    }
}

// ------------------------------------------------------------- the targets

/// What is measured: the memory gateway (direct, or behind nginx) or N
/// cluster nodes behind nginx, one Redis.
pub struct Target {
    pub name: String,
    pub nodes: Vec<Server>,
    pub nginx: Option<Nginx>,
    pub redis: Option<Redis>,
    _dir: tempfile::TempDir,
}

/// CPU seconds so far, per part (None: the target has no such part).
pub struct Cpu {
    pub nodes: Vec<f64>,
    pub nginx: Option<f64>,
    pub redis: Option<f64>,
}

/// Limits no scenario here may hit.
const NODE_ARGS: &[&str] = &[
    "--max-events-per-session",
    "200000",
    "--max-bytes-per-session",
    "1000000000",
];

impl Target {
    pub async fn memory(behind_nginx: bool, nginx: &Path) -> Target {
        let dir = tempfile::tempdir().expect("temporary directory");
        let node = start_gateway(NODE_ARGS).await;
        let proxy = match behind_nginx {
            true => Some(Nginx::start(dir.path(), nginx, &[node.address]).await),
            false => None,
        };
        Target {
            name: if behind_nginx {
                "memory, nginx".into()
            } else {
                "memory".into()
            },
            nodes: vec![node],
            nginx: proxy,
            redis: None,
            _dir: dir,
        }
    }

    pub async fn cluster(count: usize, fsync: &str, redis_server: &Path, nginx: &Path) -> Target {
        let dir = tempfile::tempdir().expect("temporary directory");
        let redis = Redis::start(dir.path(), redis_server, fsync).await;
        let url = redis.url();
        let mut nodes = Vec::new();
        for index in 1..=count {
            let node_id = format!("n{index}");
            let mut args = vec![
                "--redis-url",
                &url,
                "--node-id",
                &node_id,
                "--secret",
                SECRET,
            ];
            args.extend_from_slice(NODE_ARGS);
            nodes.push(start_gateway(&args).await);
        }
        let addresses: Vec<SocketAddr> = nodes.iter().map(|node| node.address).collect();
        let proxy = Nginx::start(dir.path(), nginx, &addresses).await;
        Target {
            name: format!("cluster {count} node{}", if count > 1 { "s" } else { "" }),
            nodes,
            nginx: Some(proxy),
            redis: Some(redis),
            _dir: dir,
        }
    }

    /// Where clients connect.
    pub fn entry(&self) -> SocketAddr {
        self.nginx
            .as_ref()
            .map_or(self.nodes[0].address, |nginx| nginx.address)
    }

    pub async fn cpu(&self) -> Cpu {
        Cpu {
            nodes: self.nodes.iter().map(Server::cpu_seconds).collect(),
            nginx: self.nginx.as_ref().map(Nginx::cpu_seconds),
            redis: match &self.redis {
                Some(redis) => Some(redis.cpu_seconds().await),
                None => None,
            },
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(redis) = &mut self.redis {
            let _ = redis.child.start_kill();
        }
    }
}
