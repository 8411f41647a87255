//! A real `redis-server` for one test: its own temporary directory, a unix
//! socket there (no TCP port, so no port race between parallel tests), AOF
//! on, no RDB snapshots. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `redis-server` may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `redis-server` binary. Never skips: a missing server fails the test
/// with what to install (`scripts/test` installs it).
fn redis_server_binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file());
    match found {
        Some(binary) => binary,
        None => {
            let required = std::env::var("ARCP_E2E_REQUIRED").as_deref() == Ok("1")
                || std::env::var_os("CI").is_some_and(|value| !value.is_empty());
            panic!(
                "redis-server is not installed, and the Redis storage tests need a real one \
                 (`apt-get install redis-server`; `scripts/test` does it). {}",
                if required {
                    "CI or ARCP_E2E_REQUIRED=1 is set: these tests are required."
                } else {
                    "These tests never skip: a test that cannot run must not look green."
                }
            )
        }
    }
}

fn spawn(dir: &Path, socket: &Path) -> Child {
    Command::new(redis_server_binary())
        .args(["--port", "0"])
        .arg("--unixsocket")
        .arg(socket)
        .args(["--unixsocketperm", "700"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "yes"])
        .args(["--maxmemory-policy", "noeviction"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub async fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let socket = dir.path().join("redis.sock");
        let child = spawn(dir.path(), &socket);
        let server = RedisServer {
            child,
            socket,
            _dir: dir,
        };
        server.wait_ready().await;
        server
    }

    /// SIGKILL: Redis dies without a chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts Redis again on the same socket and directory: it reloads its
    /// AOF, as after a crash.
    pub async fn restart(&mut self) {
        self.kill();
        self.start_again().await;
    }

    /// After [`RedisServer::kill`]: starts Redis on the same socket and
    /// directory (it reloads its AOF) and waits until it answers PING.
    pub async fn start_again(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn(self._dir.path(), &self.socket);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if self.ping().await {
                return;
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "redis-server did not answer PING within {START_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let attempt = async {
            let mut connection = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .ok()
        };
        tokio::time::timeout(Duration::from_secs(1), attempt)
            .await
            .ok()
            .flatten()
            .is_some()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix:///…/redis.sock`, as the storage layer takes it.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `redis+unix:///…/redis.sock`, as `arcp-gateway --redis-url` takes it.
    pub fn gateway_url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// A plain connection for commands a test sends behind the storage's back
    /// (FLUSHALL, CONFIG SET, DEL, CLIENT PAUSE, INFO).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis url");
        tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("connect to redis within 5 s")
        .expect("connect to redis")
    }
}
