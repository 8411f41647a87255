//! Configuration: a raw parse of flags and environment variables
//! ([`RawArgs`], clap), then one validation step into [`Config`]. Nothing is
//! re-validated after start-up; tests build a [`Config`] directly.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::event_log::RetentionLimits;
use crate::ids::Principal;

/// The `--help` sections, in the order operators look for things. Every
/// flag names one (a test checks every flag appears in
/// docs/configuration.md).
pub mod heading {
    pub const LISTEN: &str = "Listen";
    pub const AUTH: &str = "Auth";
    pub const STORAGE: &str = "Storage";
    pub const AGENTS: &str = "Agents";
    pub const LIMITS: &str = "Limits and timing";
    pub const BROWSER: &str = "Browser and proxy";
    pub const LOGGING: &str = "Logging and metrics";
}

/// Shown after `-h`.
const AFTER_HELP: &str = "\
Every flag also reads its ARCP_GATEWAY_* environment variable (the flag wins).
Log filter: ARCP_GATEWAY_LOG (tracing EnvFilter syntax, default `info`).
More with --help; the reference is docs/configuration.md.";

/// Shown after `--help`.
const AFTER_LONG_HELP: &str = "\
Every flag also reads the environment variable shown next to it; the command
line wins over the environment. An invalid value exits with code 2.

Logging: ARCP_GATEWAY_LOG sets the filter in tracing's EnvFilter syntax
(default `info`; `info,arcp_gateway::access=debug` adds one line per
request). Logs go to standard error, as text or, with --log-format json,
one JSON object per line.

Documentation (in the source tree): README.md to get started,
docs/configuration.md for every flag, docs/metrics.md for /metrics,
docs/deployment.md for proxies and systemd.";

/// Flags as typed, each with an environment fallback.
/// Deliberately not `Debug`: it holds api tokens and secrets.
#[derive(Parser)]
#[command(
    name = "arcp-gateway",
    version,
    about = "A resumable ARCP v1.1 gateway over HTTP and Server-Sent Events",
    after_help = AFTER_HELP,
    after_long_help = AFTER_LONG_HELP
)]
pub struct RawArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, env = "ARCP_GATEWAY_LISTEN", default_value = "127.0.0.1:8080", help_heading = heading::LISTEN)]
    pub listen: String,

    /// An api token as PRINCIPAL:API_TOKEN (repeatable). Without any, a `dev`
    /// principal is created and its token printed at start-up.
    #[arg(
        long = "token",
        env = "ARCP_GATEWAY_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = heading::AUTH
    )]
    pub tokens: Vec<String>,

    /// Resume-token signing secret (repeatable): the first signs, all verify.
    /// Without any, one is generated and tokens do not survive a restart.
    #[arg(
        long = "secret",
        env = "ARCP_GATEWAY_SECRETS",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = heading::AUTH
    )]
    pub secrets: Vec<String>,

    /// Keep sessions, jobs and event logs in SQLite under this directory so they survive restarts
    /// (default: in memory only).
    #[arg(long, env = "ARCP_GATEWAY_DATA_DIR", help_heading = heading::STORAGE)]
    pub data_dir: Option<std::path::PathBuf>,

    /// Cluster mode: keep sessions, logs and jobs in this Redis (e.g. redis://127.0.0.1:6379/0);
    /// every node with the same URL, --secret and --token values is one gateway (docs/cluster.md).
    #[arg(long, env = "ARCP_GATEWAY_REDIS_URL", hide_env_values = true, help_heading = heading::STORAGE)]
    pub redis_url: Option<String>,

    /// This node's name in a cluster, in logs and job ownership: letters, digits, `_`, `-`
    /// (default: random).
    #[arg(long, env = "ARCP_GATEWAY_NODE_ID", help_heading = heading::STORAGE)]
    pub node_id: Option<String>,

    /// Cluster mode: how long a job's lease lasts unless its node renews it; a lost node's jobs
    /// end within about this plus a fifth of it.
    #[arg(long, env = "ARCP_GATEWAY_JOB_LEASE_TTL_MS", default_value_t = 10_000, help_heading = heading::STORAGE)]
    pub job_lease_ttl_ms: u64,

    /// A TOML file of external agents (commands or HTTP upstreams) to serve beside the built-in ones.
    #[arg(long = "agents", env = "ARCP_GATEWAY_AGENTS", help_heading = heading::AGENTS)]
    pub agents: Option<std::path::PathBuf>,

    /// How long a session stays resumable after its last stream disconnected.
    #[arg(long, env = "ARCP_GATEWAY_RESUME_WINDOW_SEC", default_value_t = 600, help_heading = heading::LIMITS)]
    pub resume_window_sec: u64,

    /// Interval of SSE keepalive comments, advertised as heartbeat_interval_sec.
    #[arg(
        long,
        env = "ARCP_GATEWAY_HEARTBEAT_INTERVAL_SEC",
        default_value_t = 15,
        help_heading = heading::LIMITS
    )]
    pub heartbeat_interval_sec: u64,

    /// Lifetime of each resume token from the moment it is issued.
    #[arg(long, env = "ARCP_GATEWAY_TOKEN_TTL_SEC", default_value_t = 86_400, help_heading = heading::AUTH)]
    pub token_ttl_sec: u64,

    /// Reconnect delay suggested to clients in the stream's `retry:` line.
    #[arg(long, env = "ARCP_GATEWAY_RETRY_MS", default_value_t = 2_000, help_heading = heading::LIMITS)]
    pub retry_ms: u64,

    /// Events retained per session before the oldest are evicted.
    #[arg(
        long,
        env = "ARCP_GATEWAY_MAX_EVENTS_PER_SESSION",
        default_value_t = 100_000,
        help_heading = heading::LIMITS
    )]
    pub max_events_per_session: usize,

    /// Encoded bytes retained per session before the oldest events are evicted.
    #[arg(long, env = "ARCP_GATEWAY_MAX_BYTES_PER_SESSION", default_value_t = 64 * 1024 * 1024, help_heading = heading::LIMITS)]
    pub max_bytes_per_session: usize,

    /// Largest accepted request body.
    #[arg(long, env = "ARCP_GATEWAY_MAX_BODY_BYTES", default_value_t = 1024 * 1024, help_heading = heading::LIMITS)]
    pub max_body_bytes: usize,

    /// Largest WebSocket message on /arcp, in either direction. The official
    /// SDKs refuse messages over 1 MiB.
    #[arg(
        long,
        env = "ARCP_GATEWAY_WS_MAX_FRAME_BYTES",
        default_value_t = 1024 * 1024,
        help_heading = heading::LIMITS
    )]
    pub ws_max_frame_bytes: usize,

    /// How long a new WebSocket connection may take to send its session.hello.
    #[arg(
        long,
        env = "ARCP_GATEWAY_WS_HELLO_TIMEOUT_MS",
        default_value_t = 10_000,
        help_heading = heading::LIMITS
    )]
    pub ws_hello_timeout_ms: u64,
    /// Bytes of request bodies being read at once, all connections together;
    /// past it, a body's request gets 503 (retryable).
    #[arg(long, env = "ARCP_GATEWAY_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 256 * 1024 * 1024, help_heading = heading::LIMITS)]
    pub max_body_bytes_in_flight: usize,

    /// Consumer lag (events past the last ack) that opens a back-pressure episode.
    #[arg(
        long,
        env = "ARCP_GATEWAY_BACK_PRESSURE_LAG_EVENTS",
        default_value_t = 1_000,
        help_heading = heading::LIMITS
    )]
    pub back_pressure_lag_events: u64,

    /// Who may subscribe to a job: `same-principal` (default, §14) or `any` authenticated principal.
    #[arg(
        long,
        env = "ARCP_GATEWAY_SUBSCRIBE_POLICY",
        default_value = "same-principal",
        help_heading = heading::AUTH
    )]
    pub subscribe_policy: String,

    /// Largest single result_chunk an agent may emit (§8.4, §14).
    #[arg(long, env = "ARCP_GATEWAY_MAX_RESULT_CHUNK_BYTES", default_value_t = 1024 * 1024, help_heading = heading::LIMITS)]
    pub max_result_chunk_bytes: u64,

    /// Live sessions one principal may hold at once (§14 heartbeat amplification).
    #[arg(
        long,
        env = "ARCP_GATEWAY_MAX_SESSIONS_PER_PRINCIPAL",
        default_value_t = 1_000,
        help_heading = heading::LIMITS
    )]
    pub max_sessions_per_principal: usize,

    /// Jobs one principal may have running at once, over all its sessions;
    /// past it a submission is refused (429) until one ends.
    #[arg(
        long,
        env = "ARCP_GATEWAY_MAX_RUNNING_JOBS_PER_PRINCIPAL",
        default_value_t = 1_000,
        help_heading = heading::LIMITS
    )]
    pub max_running_jobs_per_principal: usize,

    /// Encoded event bytes all sessions together retain. Past it, appending
    /// sessions evict their own oldest events and submissions get 503.
    #[arg(
        long,
        env = "ARCP_GATEWAY_MAX_RETAINED_BYTES",
        default_value_t = 1024 * 1024 * 1024,
        help_heading = heading::LIMITS
    )]
    pub max_retained_bytes: usize,

    /// Encoded event bytes one principal's sessions together retain. Past
    /// it, its appending sessions evict their own oldest events and its
    /// submissions get 429.
    #[arg(
        long,
        env = "ARCP_GATEWAY_MAX_RETAINED_BYTES_PER_PRINCIPAL",
        default_value_t = 256 * 1024 * 1024,
        help_heading = heading::LIMITS
    )]
    pub max_retained_bytes_per_principal: usize,

    /// Origin allowed to call the API from a browser (repeatable). Exact
    /// origins such as `https://app.example.com`; `*` only without credentials.
    #[arg(
        long = "cors-origin",
        env = "ARCP_GATEWAY_CORS_ORIGINS",
        value_delimiter = ',',
        help_heading = heading::BROWSER
    )]
    pub cors_origins: Vec<String>,

    /// Whether cross-origin requests may carry credentials (cookies, Authorization).
    #[arg(long, env = "ARCP_GATEWAY_CORS_CREDENTIALS", default_value_t = true, action = clap::ArgAction::Set, help_heading = heading::BROWSER)]
    pub cors_credentials: bool,

    /// Mark the resume cookie `Secure` even when the request did not arrive over TLS.
    #[arg(long, env = "ARCP_GATEWAY_COOKIE_SECURE", help_heading = heading::BROWSER)]
    pub cookie_secure: bool,

    /// Serve everything under this path prefix (e.g. `/arcp`), for proxies that mount the gateway there.
    #[arg(long, env = "ARCP_GATEWAY_BASE_PATH", default_value = "", help_heading = heading::BROWSER)]
    pub base_path: String,

    /// Proxy address or CIDR whose X-Forwarded-Proto / Forwarded headers are honoured (repeatable).
    #[arg(
        long = "trusted-proxy",
        env = "ARCP_GATEWAY_TRUSTED_PROXIES",
        value_delimiter = ',',
        help_heading = heading::BROWSER
    )]
    pub trusted_proxies: Vec<String>,

    /// Longest a single stream stays open before the gateway ends it (jittered down by up to 10 %); the
    /// client reconnects and resumes. 0 disables the limit.
    #[arg(
        long,
        env = "ARCP_GATEWAY_MAX_STREAM_DURATION_SEC",
        default_value_t = 300,
        help_heading = heading::LIMITS
    )]
    pub max_stream_duration_sec: u64,

    /// Job records one session keeps; past it the oldest finished jobs are forgotten,
    /// and a submission is refused (429) only when all of them are still running.
    #[arg(
        long,
        env = "ARCP_GATEWAY_MAX_JOBS_PER_SESSION",
        default_value_t = 10_000,
        help_heading = heading::LIMITS
    )]
    pub max_jobs_per_session: usize,

    /// Largest total streamed result per job (§8.4, §14).
    #[arg(long, env = "ARCP_GATEWAY_MAX_RESULT_BYTES", default_value_t = 64 * 1024 * 1024, help_heading = heading::LIMITS)]
    pub max_result_bytes: u64,

    /// Time a client has to send a complete request head, from its connection (or, on a kept-alive
    /// connection, from the head's first byte); then 408 and close.
    #[arg(long, env = "ARCP_GATEWAY_HEADER_TIMEOUT_SEC", default_value_t = 10, help_heading = heading::LIMITS)]
    pub header_timeout_sec: u64,

    /// How long a connection with no request in progress (no open stream either) stays open.
    #[arg(long, env = "ARCP_GATEWAY_IDLE_TIMEOUT_SEC", default_value_t = 60, help_heading = heading::LIMITS)]
    pub idle_timeout_sec: u64,

    /// Time a request body has to arrive completely once its handler starts reading it; then 408.
    #[arg(long, env = "ARCP_GATEWAY_BODY_TIMEOUT_SEC", default_value_t = 20, help_heading = heading::LIMITS)]
    pub body_timeout_sec: u64,

    /// Open connections the gateway serves at once; past it new ones get 503 and are closed.
    /// Lowered at start-up to leave file descriptors in reserve below the open-file limit.
    #[arg(long, env = "ARCP_GATEWAY_MAX_CONNECTIONS", default_value_t = 50_000, help_heading = heading::LIMITS)]
    pub max_connections: usize,

    /// Open connections one client IP may hold (peers inside a --trusted-proxy network are exempt);
    /// past it new ones get 429 and are closed. 0 disables the cap.
    #[arg(
        long,
        env = "ARCP_GATEWAY_MAX_CONNECTIONS_PER_IP",
        default_value_t = 1_000,
        help_heading = heading::LIMITS
    )]
    pub max_connections_per_ip: usize,

    /// Also serve /metrics, without credentials, on this IP:PORT (keep it private).
    #[arg(long, env = "ARCP_GATEWAY_METRICS_LISTEN", help_heading = heading::LISTEN)]
    pub metrics_listen: Option<String>,

    /// Log line format on standard error: `text` or `json` (one object per line).
    #[arg(
        long,
        env = "ARCP_GATEWAY_LOG_FORMAT",
        default_value = "text",
        help_heading = heading::LOGGING
    )]
    pub log_format: String,
}

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

#[cfg(test)]
mod tests {
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
}
