use clap::Parser;

use super::*;

fn raw(args: &[&str]) -> RawArgs {
    let mut all = vec!["arcp-gateway"];
    all.extend_from_slice(args);
    RawArgs::try_parse_from(all).unwrap()
}

#[test]
fn defaults_create_a_dev_principal_and_a_generated_secret() {
    let config = Config::from_raw(raw(&[])).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.api_tokens.len(), 1);
    assert_eq!(config.api_tokens[0].0, Principal::new("dev"));
    assert!(config.generated_dev_token.is_some());
    assert!(config.secret_was_generated);
}

#[test]
fn bodies_in_flight_default_and_are_at_least_one_body() {
    let defaults = Config::from_raw(raw(&[])).unwrap();
    assert_eq!(defaults.max_body_bytes_in_flight, 256 << 20);
    assert_eq!(
        defaults.max_body_bytes_in_flight,
        Config::development().max_body_bytes_in_flight
    );
    let config = Config::from_raw(raw(&["--max-body-bytes-in-flight", "2097152"])).unwrap();
    assert_eq!(config.max_body_bytes_in_flight, 2 << 20);
    // Below one body's limit, a largest body could never be read.
    assert!(Config::from_raw(raw(&[
        "--max-body-bytes",
        "4096",
        "--max-body-bytes-in-flight",
        "4095"
    ]))
    .is_err());
}

#[test]
fn memory_budgets_default_and_are_validated() {
    let defaults = Config::from_raw(raw(&[])).unwrap();
    let development = Config::development();
    assert_eq!(defaults.max_retained_bytes, 1 << 30);
    assert_eq!(defaults.max_retained_bytes_per_principal, 256 << 20);
    assert_eq!(defaults.max_running_jobs_per_principal, 1_000);
    assert_eq!(defaults.max_retained_bytes, development.max_retained_bytes);
    assert_eq!(
        defaults.max_retained_bytes_per_principal,
        development.max_retained_bytes_per_principal
    );
    let config = Config::from_raw(raw(&[
        "--max-retained-bytes",
        "2097152",
        "--max-retained-bytes-per-principal",
        "65536",
        "--max-running-jobs-per-principal",
        "3",
    ]))
    .unwrap();
    assert_eq!(config.max_retained_bytes, 2 * 1024 * 1024);
    assert_eq!(config.max_retained_bytes_per_principal, 65_536);
    assert_eq!(config.max_running_jobs_per_principal, 3);
    for bad in [
        ["--max-retained-bytes", "1000"],
        ["--max-retained-bytes-per-principal", "10"],
        ["--max-running-jobs-per-principal", "0"],
    ] {
        assert!(Config::from_raw(raw(&bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn log_format_and_metrics_listener_are_validated() {
    let config = Config::from_raw(raw(&[
        "--log-format",
        "json",
        "--metrics-listen",
        "127.0.0.1:9464",
    ]))
    .unwrap();
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.metrics_listen.unwrap().port(), 9464);
    let defaults = Config::from_raw(raw(&[])).unwrap();
    assert_eq!(defaults.log_format, LogFormat::Text);
    assert!(defaults.metrics_listen.is_none());
    assert!(Config::from_raw(raw(&["--log-format", "xml"])).is_err());
    assert!(Config::from_raw(raw(&["--metrics-listen", "localhost"])).is_err());
}

#[test]
fn cluster_mode_needs_an_explicit_secret_and_tokens() {
    let base = [
        "--redis-url",
        "redis://127.0.0.1:6379/0",
        "--token",
        "alice:alice-token-1",
        "--secret",
        "0123456789abcdef0123",
    ];
    let config = Config::from_raw(raw(&base)).unwrap();
    let cluster = config.cluster.expect("cluster mode");
    assert!(cluster.node_id.starts_with("node-"));
    assert_eq!(cluster.lease_ttl, Duration::from_secs(10));
    let error = Config::from_raw(raw(&base[..4])).err().expect("no secret");
    assert!(error.0.contains("--secret"), "{}", error.0);
    let mut no_token = base.to_vec();
    no_token.drain(2..4);
    let error = Config::from_raw(raw(&no_token)).err().expect("no token");
    assert!(error.0.contains("--token"), "{}", error.0);
    for extra in [
        &["--data-dir", "/tmp/x"][..],
        &["--node-id", "no spaces"][..],
        &["--node-id", ""][..],
        &["--job-lease-ttl-ms", "10"][..],
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        assert!(Config::from_raw(raw(&args)).is_err(), "{extra:?}");
    }
    let mut named = base.to_vec();
    named.extend_from_slice(&["--node-id", "node_2-b", "--job-lease-ttl-ms", "3000"]);
    let cluster = Config::from_raw(raw(&named)).unwrap().cluster.unwrap();
    assert_eq!(cluster.node_id, "node_2-b");
    assert_eq!(cluster.reaper_interval(), Duration::from_millis(600));
}

#[test]
fn tokens_and_secrets_are_validated() {
    let config = Config::from_raw(raw(&[
        "--token",
        "alice:alice-token-1",
        "--token",
        "bob:bob-token-22",
        "--secret",
        "0123456789abcdef0123",
    ]))
    .unwrap();
    assert_eq!(config.api_tokens.len(), 2);
    assert!(config.generated_dev_token.is_none());
    assert!(!config.secret_was_generated);

    assert!(Config::from_raw(raw(&["--token", "nocolon"])).is_err());
    assert!(Config::from_raw(raw(&["--token", "a:short"])).is_err());
    assert!(
        Config::from_raw(raw(&["--token", "a:same-token", "--token", "b:same-token"])).is_err()
    );
    assert!(Config::from_raw(raw(&["--secret", "tooshort"])).is_err());
    assert!(Config::from_raw(raw(&["--resume-window-sec", "0"])).is_err());
    assert!(Config::from_raw(raw(&["--listen", "nowhere"])).is_err());
    assert!(Config::from_raw(raw(&["--subscribe-policy", "everyone"])).is_err());
    assert!(
        Config::from_raw(raw(&["--cors-origin", "*"])).is_err(),
        "* with credentials"
    );
    let any =
        Config::from_raw(raw(&["--cors-origin", "*", "--cors-credentials", "false"])).unwrap();
    assert!(any.cors_any_origin && !any.cors_credentials);
    assert!(Config::from_raw(raw(&["--cors-origin", "https://a.example/path"])).is_err());
    let cors = Config::from_raw(raw(&["--cors-origin", "https://App.Example:8443"])).unwrap();
    assert_eq!(cors.cors_origins, ["https://app.example:8443"]);
    assert_eq!(
        Config::from_raw(raw(&["--base-path", "/arcp/"]))
            .unwrap()
            .base_path,
        "/arcp"
    );
    assert!(Config::from_raw(raw(&["--base-path", "arcp"])).is_err());
    assert!(Config::from_raw(raw(&["--base-path", "/a//b"])).is_err());
    let proxies = Config::from_raw(raw(&["--trusted-proxy", "10.0.0.0/8,127.0.0.1"])).unwrap();
    assert_eq!(proxies.trusted_proxies.len(), 2);
    assert!(Config::from_raw(raw(&["--trusted-proxy", "proxy.local"])).is_err());
    assert_eq!(
        Config::from_raw(raw(&["--max-stream-duration-sec", "0"]))
            .unwrap()
            .max_stream_duration,
        None
    );
    let any = Config::from_raw(raw(&["--subscribe-policy", "any"])).unwrap();
    assert_eq!(any.subscribe_policy, SubscribePolicy::AnyPrincipal);
}

#[test]
fn connection_limits_have_defaults_and_bounds() {
    let defaults = Config::from_raw(raw(&[])).unwrap();
    assert_eq!(defaults.connections, Config::development().connections);
    let set = Config::from_raw(raw(&[
        "--header-timeout-sec",
        "3",
        "--idle-timeout-sec",
        "7",
        "--body-timeout-sec",
        "5",
        "--max-connections",
        "100",
        "--max-connections-per-ip",
        "0",
    ]))
    .unwrap()
    .connections;
    assert_eq!(set.header_timeout, Duration::from_secs(3));
    assert_eq!(set.idle_timeout, Duration::from_secs(7));
    assert_eq!(set.body_timeout, Duration::from_secs(5));
    assert_eq!(set.max_connections, 100);
    assert_eq!(set.max_connections_per_ip, None);
    assert!(Config::from_raw(raw(&["--header-timeout-sec", "0"])).is_err());
    assert!(Config::from_raw(raw(&["--body-timeout-sec", "0"])).is_err());
    assert!(Config::from_raw(raw(&["--max-connections", "0"])).is_err());
}
