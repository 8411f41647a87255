//! The raw parse: every flag as typed, with its environment fallback and
//! its `--help` heading. [`super::Config::from_raw`] validates it.

use clap::Parser;

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
