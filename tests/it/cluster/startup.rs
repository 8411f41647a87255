//! Cluster mode refuses to start when it could not keep its promises: no
//! explicit `--secret` (nodes could not verify each other's tokens), Redis
//! unreachable, or a Redis that would silently drop data.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::support::cluster::{within_for, CLUSTER_SECRET};
use crate::support::redis_server::RedisServer;
use crate::support::ALICE_TOKEN;

/// How long a refusing gateway may take to exit (it may retry Redis briefly).
const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// Runs `arcp-gateway --listen 127.0.0.1:0 ARGS` to its exit; returns
/// whether it succeeded and what it wrote (stdout and stderr).
async fn run_to_exit(args: &[&str]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arcp-gateway"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ARCP_GATEWAY_") {
            command.env_remove(name);
        }
    }
    let output = within_for(
        EXIT_LIMIT,
        "the gateway to refuse and exit",
        command.output(),
    )
    .await
    .expect("run the gateway");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A node with a shared secret and a token, on Redis at `url`.
async fn run_node_on(url: &str) -> (bool, String) {
    let token = format!("alice:{ALICE_TOKEN}");
    run_to_exit(&[
        "--redis-url",
        url,
        "--secret",
        CLUSTER_SECRET,
        "--token",
        &token,
    ])
    .await
}

async fn config_set(connection: &mut redis::aio::MultiplexedConnection, name: &str, value: &str) {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async::<()>(connection)
        .await
        .expect("CONFIG SET");
}

fn assert_refused(what: &str, (succeeded, output): &(bool, String), names: &[&str]) {
    assert!(
        !succeeded,
        "{what}: the gateway must exit non-zero:\n{output}"
    );
    assert!(
        !output.contains("listening on"),
        "{what}: it must not start serving:\n{output}"
    );
    assert!(
        !output.contains("panicked"),
        "{what}: a clear error, not a panic:\n{output}"
    );
    let lower = output.to_lowercase();
    for name in names {
        assert!(
            lower.contains(&name.to_lowercase()),
            "{what}: the message names {name:?}:\n{output}"
        );
    }
    assert!(
        !output.contains(CLUSTER_SECRET),
        "{what}: the secret is never printed"
    );
    assert!(
        !output.contains(ALICE_TOKEN),
        "{what}: tokens are never printed"
    );
}

#[tokio::test]
async fn cluster_mode_refuses_to_start_without_a_secret_or_a_safe_redis() {
    let redis = RedisServer::start().await;
    let url = redis.gateway_url();
    let token = format!("alice:{ALICE_TOKEN}");

    let without_secret = run_to_exit(&["--redis-url", &url, "--token", &token]).await;
    assert_refused("no --secret", &without_secret, &["--secret"]);

    let unreachable = run_node_on("redis://127.0.0.1:1/0").await;
    assert_refused("Redis refusing connections", &unreachable, &["redis"]);
    let missing_socket = format!(
        "redis+unix://{}/nobody.sock",
        redis.socket().parent().unwrap().display()
    );
    let unreachable = run_node_on(&missing_socket).await;
    assert_refused("no Redis on the socket", &unreachable, &["redis"]);

    // A Redis that would evict keys or lose them on restart.
    let mut connection = redis.connection().await;
    config_set(&mut connection, "maxmemory-policy", "allkeys-lru").await;
    let evicting = run_node_on(&url).await;
    assert_refused(
        "maxmemory-policy allkeys-lru",
        &evicting,
        &["maxmemory-policy"],
    );
    config_set(&mut connection, "maxmemory-policy", "noeviction").await;
    config_set(&mut connection, "appendonly", "no").await;
    let forgetful = run_node_on(&url).await;
    assert_refused("appendonly no", &forgetful, &["aof"]);
}
