//! Configuration: a raw parse of flags and environment variables
//! ([`RawArgs`], clap), then one validation step into [`Config`]. Nothing is
//! re-validated after start-up; tests build a [`Config`] directly.

use std::net::SocketAddr;
use std::time::Duration;

use crate::event_log::RetentionLimits;
use crate::ids::Principal;

mod args;
#[cfg(test)]
mod tests;

pub use self::args::{heading, RawArgs};

/// Who may observe (list, subscribe to) a job besides its submitter (§14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribePolicy {
    /// The default §14 requires: only the submitting principal.
    SamePrincipal,
    /// Any authenticated principal. Never grants cancel.
    AnyPrincipal,
}

/// Validated configuration.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `(principal, api token)` pairs.
    pub api_tokens: Vec<(Principal, String)>,
    /// Set when no token was configured and a `dev` one was generated.
    pub generated_dev_token: Option<String>,
    /// Signing secrets; the first signs.
    pub secrets: Vec<Vec<u8>>,
    pub secret_was_generated: bool,
    pub resume_window: Duration,
    pub heartbeat_interval: Duration,
    pub token_ttl: Duration,
    pub retry: Duration,
    pub retention: RetentionLimits,
    pub max_body_bytes: usize,
    /// The largest WebSocket message accepted or sent on /arcp.
    pub ws_max_frame_bytes: usize,
    /// The deadline for a WebSocket connection's `session.hello`.
    pub ws_hello_timeout: Duration,
    /// Bytes of request bodies being read at once, gateway-wide.
    pub max_body_bytes_in_flight: usize,
    /// How long graceful shutdown waits for connections to finish.
    pub shutdown_grace: Duration,
    /// How often expired sessions are swept.
    pub sweep_interval: Duration,
    pub back_pressure_lag_events: u64,
    pub subscribe_policy: SubscribePolicy,
    pub max_result_chunk_bytes: u64,
    pub max_result_bytes: u64,
    pub max_jobs_per_session: usize,
    pub max_sessions_per_principal: usize,
    pub max_running_jobs_per_principal: usize,
    /// Gateway-wide budget of retained event bytes (see `event_log::budget`).
    pub max_retained_bytes: usize,
    pub max_retained_bytes_per_principal: usize,
    /// Exact origins allowed by CORS; empty means no cross-origin access.
    pub cors_origins: Vec<String>,
    /// `*` was configured (only allowed without credentials).
    pub cors_any_origin: bool,
    pub cors_credentials: bool,
    pub cookie_secure: bool,
    /// Normalised prefix: empty, or `/segment[/segment…]` without a trailing slash.
    pub base_path: String,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `None` disables the limit.
    pub max_stream_duration: Option<Duration>,
    /// `Some` selects the durable SQLite store.
    pub data_dir: Option<std::path::PathBuf>,
    /// `Some` makes this gateway one node of a cluster on Redis.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// External agents from `--agents` (tests set them directly).
    pub agents: Vec<crate::agents_file::AgentDefinition>,
    /// Connection, head and body limits (docs/limits.md).
    pub connections: ConnectionLimits,
    /// A second listener serving only `/metrics`, without credentials.
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
}

/// Deadlines and caps on connections, request heads and request bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    /// Before the start-up check against the open-file limit.
    pub max_connections: usize,
    /// `None` disables the per-IP cap.
    pub max_connections_per_ip: Option<usize>,
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

const MIN_SECRET_BYTES: usize = 16;
const MIN_API_TOKEN_BYTES: usize = 8;
const MAX_WINDOW_SEC: u64 = 7 * 24 * 3600;

fn within(name: &str, value: u64, low: u64, high: u64) -> Result<u64, ConfigError> {
    if value < low || value > high {
        return Err(ConfigError(format!(
            "--{name} must be between {low} and {high} (got {value})"
        )));
    }
    Ok(value)
}

impl Config {
    /// Defaults for development and tests: a generated `dev` token and secret.
    pub fn development() -> Config {
        let dev_token = format!("arcp_dev_{:032x}", rand::random::<u128>());
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_tokens: vec![(Principal::new("dev"), dev_token.clone())],
            generated_dev_token: Some(dev_token),
            secrets: vec![generate_secret()],
            secret_was_generated: true,
            resume_window: Duration::from_secs(600),
            heartbeat_interval: Duration::from_secs(15),
            token_ttl: Duration::from_secs(86_400),
            retry: Duration::from_millis(2_000),
            retention: RetentionLimits {
                max_events: 100_000,
                max_bytes: 64 * 1024 * 1024,
            },
            max_body_bytes: 1024 * 1024,
            ws_max_frame_bytes: 1024 * 1024,
            ws_hello_timeout: Duration::from_secs(10),
            max_body_bytes_in_flight: 256 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(1),
            back_pressure_lag_events: 1_000,
            subscribe_policy: SubscribePolicy::SamePrincipal,
            max_result_chunk_bytes: 1024 * 1024,
            max_result_bytes: 64 * 1024 * 1024,
            max_sessions_per_principal: 1_000,
            max_jobs_per_session: 10_000,
            max_running_jobs_per_principal: 1_000,
            max_retained_bytes: 1024 * 1024 * 1024,
            max_retained_bytes_per_principal: 256 * 1024 * 1024,
            cors_origins: Vec::new(),
            cors_any_origin: false,
            cors_credentials: true,
            cookie_secure: false,
            base_path: String::new(),
            trusted_proxies: Vec::new(),
            max_stream_duration: Some(Duration::from_secs(300)),
            data_dir: None,
            cluster: None,
            agents: Vec::new(),
            connections: ConnectionLimits {
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                body_timeout: Duration::from_secs(20),
                max_connections: 50_000,
                max_connections_per_ip: Some(1_000),
            },
            metrics_listen: None,
            log_format: LogFormat::Text,
        }
    }

    pub fn from_raw(raw: RawArgs) -> Result<Config, ConfigError> {
        let mut config = Config::development();
        config.listen = raw.listen.parse().map_err(|_| {
            ConfigError(format!(
                "--listen {:?} is not an IP:PORT address",
                raw.listen
            ))
        })?;

        if !raw.tokens.is_empty() {
            config.api_tokens = parse_tokens(&raw.tokens)?;
            config.generated_dev_token = None;
        }
        if !raw.secrets.is_empty() {
            if let Some(short) = raw.secrets.iter().find(|s| s.len() < MIN_SECRET_BYTES) {
                return Err(ConfigError(format!(
                    "--secret values must be at least {MIN_SECRET_BYTES} bytes (one has {})",
                    short.len()
                )));
            }
            config.secrets = raw.secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
            config.secret_was_generated = false;
        }
        config.resume_window = Duration::from_secs(within(
            "resume-window-sec",
            raw.resume_window_sec,
            1,
            MAX_WINDOW_SEC,
        )?);
        config.heartbeat_interval = Duration::from_secs(within(
            "heartbeat-interval-sec",
            raw.heartbeat_interval_sec,
            1,
            3600,
        )?);
        config.token_ttl = Duration::from_secs(within(
            "token-ttl-sec",
            raw.token_ttl_sec,
            1,
            30 * 24 * 3600,
        )?);
        config.retry = Duration::from_millis(within("retry-ms", raw.retry_ms, 0, 3_600_000)?);
        let max_events = within(
            "max-events-per-session",
            raw.max_events_per_session as u64,
            1,
            100_000_000,
        )?;
        let max_bytes = within(
            "max-bytes-per-session",
            raw.max_bytes_per_session as u64,
            1024,
            1 << 40,
        )?;
        config.retention = RetentionLimits {
            max_events: max_events as usize,
            max_bytes: max_bytes as usize,
        };
        config.max_body_bytes = within(
            "max-body-bytes",
            raw.max_body_bytes as u64,
            1024,
            256 * 1024 * 1024,
        )? as usize;
        config.ws_max_frame_bytes = within(
            "ws-max-frame-bytes",
            raw.ws_max_frame_bytes as u64,
            4096,
            64 * 1024 * 1024,
        )? as usize;
        config.ws_hello_timeout = Duration::from_millis(within(
            "ws-hello-timeout-ms",
            raw.ws_hello_timeout_ms,
            100,
            600_000,
        )?);
        config.max_body_bytes_in_flight = within(
            "max-body-bytes-in-flight",
            raw.max_body_bytes_in_flight as u64,
            config.max_body_bytes as u64,
            1 << 40,
        )? as usize;
        config.back_pressure_lag_events = within(
            "back-pressure-lag-events",
            raw.back_pressure_lag_events,
            1,
            100_000_000,
        )?;
        config.subscribe_policy = match raw.subscribe_policy.as_str() {
            "same-principal" => SubscribePolicy::SamePrincipal,
            "any" => SubscribePolicy::AnyPrincipal,
            other => {
                return Err(ConfigError(format!(
                    "--subscribe-policy must be `same-principal` or `any` (got {other:?})"
                )))
            }
        };
        config.max_result_chunk_bytes = within(
            "max-result-chunk-bytes",
            raw.max_result_chunk_bytes,
            1,
            1 << 30,
        )?;
        config.max_result_bytes = within(
            "max-result-bytes",
            raw.max_result_bytes,
            config.max_result_chunk_bytes,
            1 << 40,
        )?;
        config.cors_credentials = raw.cors_credentials;
        for origin in &raw.cors_origins {
            if origin == "*" {
                if raw.cors_credentials {
                    return Err(ConfigError(
                        "--cors-origin '*' cannot be combined with credentials; list exact origins or pass --cors-credentials false".into(),
                    ));
                }
                config.cors_any_origin = true;
                continue;
            }
            config.cors_origins.push(parse_origin(origin)?);
        }
        config.cookie_secure = raw.cookie_secure;
        config.metrics_listen = match &raw.metrics_listen {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                ConfigError(format!(
                    "--metrics-listen {text:?} is not an IP:PORT address"
                ))
            })?),
        };
        config.log_format = match raw.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError(format!(
                    "--log-format must be `text` or `json` (got {other:?})"
                )))
            }
        };
        config.data_dir = raw.data_dir.clone();
        config.cluster = cluster_config(&raw, &config)?;
        if let Some(path) = &raw.agents {
            config.agents =
                crate::agents_file::load(path).map_err(|error| ConfigError(error.to_string()))?;
        }
        config.base_path = parse_base_path(&raw.base_path)?;
        config.trusted_proxies = raw
            .trusted_proxies
            .iter()
            .map(|text| parse_proxy(text))
            .collect::<Result<_, _>>()?;
        config.max_stream_duration = match within(
            "max-stream-duration-sec",
            raw.max_stream_duration_sec,
            0,
            86_400,
        )? {
            0 => None,
            seconds => Some(Duration::from_secs(seconds)),
        };
        config.max_jobs_per_session = within(
            "max-jobs-per-session",
            raw.max_jobs_per_session as u64,
            1,
            1_000_000,
        )? as usize;
        config.max_sessions_per_principal = within(
            "max-sessions-per-principal",
            raw.max_sessions_per_principal as u64,
            1,
            1_000_000,
        )? as usize;
        config.connections = ConnectionLimits {
            header_timeout: Duration::from_secs(within(
                "header-timeout-sec",
                raw.header_timeout_sec,
                1,
                3600,
            )?),
            idle_timeout: Duration::from_secs(within(
                "idle-timeout-sec",
                raw.idle_timeout_sec,
                1,
                86_400,
            )?),
            body_timeout: Duration::from_secs(within(
                "body-timeout-sec",
                raw.body_timeout_sec,
                1,
                3600,
            )?),
            max_connections: within("max-connections", raw.max_connections as u64, 1, 10_000_000)?
                as usize,
            max_connections_per_ip: match within(
                "max-connections-per-ip",
                raw.max_connections_per_ip as u64,
                0,
                10_000_000,
            )? {
                0 => None,
                limit => Some(limit as usize),
            },
        };
        config.max_running_jobs_per_principal = within(
            "max-running-jobs-per-principal",
            raw.max_running_jobs_per_principal as u64,
            1,
            1_000_000,
        )? as usize;
        config.max_retained_bytes = within(
            "max-retained-bytes",
            raw.max_retained_bytes as u64,
            1024 * 1024,
            1 << 40,
        )? as usize;
        config.max_retained_bytes_per_principal = within(
            "max-retained-bytes-per-principal",
            raw.max_retained_bytes_per_principal as u64,
            1024,
            1 << 40,
        )? as usize;
        Ok(config)
    }
}

fn parse_tokens(specs: &[String]) -> Result<Vec<(Principal, String)>, ConfigError> {
    let mut pairs: Vec<(Principal, String)> = Vec::new();
    for spec in specs {
        let Some((principal, token)) = spec.split_once(':') else {
            return Err(ConfigError(
                "--token must look like PRINCIPAL:API_TOKEN".into(),
            ));
        };
        let principal = principal.trim();
        if principal.is_empty() {
            return Err(ConfigError(
                "--token needs a principal name before the ':'".into(),
            ));
        }
        if token.len() < MIN_API_TOKEN_BYTES {
            return Err(ConfigError(format!(
                "the api token for principal {principal:?} must be at least {MIN_API_TOKEN_BYTES} bytes"
            )));
        }
        if pairs.iter().any(|(_, existing)| existing == token) {
            return Err(ConfigError(format!(
                "the api token for principal {principal:?} is already used by another principal"
            )));
        }
        pairs.push((Principal::new(principal), token.to_owned()));
    }
    Ok(pairs)
}

/// An origin is `scheme://host[:port]` with nothing after it.
fn parse_origin(text: &str) -> Result<String, ConfigError> {
    let invalid = || {
        ConfigError(format!(
            "--cors-origin {text:?} must look like https://host[:port]"
        ))
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(invalid)?;
    let host_ok = !rest.is_empty() && !rest.contains(['/', '?', '#', ' ', '*']);
    if !(scheme == "http" || scheme == "https") || !host_ok {
        return Err(invalid());
    }
    Ok(text.to_ascii_lowercase())
}

/// `""` or `/a/b` (a trailing slash is dropped).
fn parse_base_path(text: &str) -> Result<String, ConfigError> {
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let valid = trimmed.starts_with('/')
        && trimmed[1..].split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        });
    if !valid {
        return Err(ConfigError(format!(
            "--base-path {text:?} must look like /prefix or /a/b"
        )));
    }
    Ok(trimmed.to_owned())
}

/// An address (`10.0.0.5`) or a network (`10.0.0.0/8`).
fn parse_proxy(text: &str) -> Result<ipnet::IpNet, ConfigError> {
    let text = text.trim();
    if let Ok(network) = text.parse::<ipnet::IpNet>() {
        return Ok(network);
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| {
            ConfigError(format!(
                "--trusted-proxy {text:?} is not an IP address or CIDR network"
            ))
        })
}

/// Cluster mode's settings, checked: every node must verify what another
/// signed and accept the same api tokens, so both must be explicit.
fn cluster_config(
    raw: &RawArgs,
    config: &Config,
) -> Result<Option<crate::cluster::ClusterConfig>, ConfigError> {
    let Some(redis_url) = &raw.redis_url else {
        return Ok(None);
    };
    if raw.secrets.is_empty() {
        return Err(ConfigError(
            crate::storage::ClusterConfigError::SecretRequired.to_string(),
        ));
    }
    if config.generated_dev_token.is_some() {
        return Err(ConfigError(
            "cluster mode needs explicit --token values shared by every node (a generated dev \
             token would differ from node to node)"
                .into(),
        ));
    }
    if config.data_dir.is_some() {
        return Err(ConfigError(
            "--data-dir and --redis-url exclude each other: in cluster mode Redis keeps the state"
                .into(),
        ));
    }
    let node_id = match &raw.node_id {
        Some(node_id) => node_id.clone(),
        None => format!("node-{:08x}", rand::random::<u32>()),
    };
    let valid = !node_id.is_empty()
        && node_id.len() <= 64
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(ConfigError(format!(
            "--node-id must be 1 to 64 letters, digits, `_` or `-` (got {node_id:?})"
        )));
    }
    let lease_ttl_ms = within("job-lease-ttl-ms", raw.job_lease_ttl_ms, 1_000, 600_000)?;
    Ok(Some(crate::cluster::ClusterConfig {
        redis_url: redis_url.clone(),
        node_id,
        lease_ttl: Duration::from_millis(lease_ttl_ms),
    }))
}

fn generate_secret() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}
