//! The agents file (`--agents FILE`): external agents, in TOML, validated
//! once at start-up into [`AgentDefinition`]s that `AgentRegistry` serves
//! beside the built-in agents (§7.5).
//!
//! ```toml
//! require_model_use = false          # optional; §9.7 policy for every agent
//!
//! [[agent]]
//! name = "wordcount"
//! default = "1.0.0"                  # optional with a single version
//! description = "counts words"       # optional
//!   [[agent.version]]
//!   version = "1.0.0"
//!   command = ["python3", "agents/wordcount.py"]   # or: url = "http://127.0.0.1:9000/run"
//!   env = { LANG = "C" }             # optional
//!   cwd = "."                        # optional
//! ```
//!
//! Relative paths (`cwd`, and a program path with a `/` in it) are resolved
//! against the directory holding the agents file, so the file works from
//! anywhere. docs/agents.md lists every key.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::jobs::agents::{
    is_valid_agent_name, is_valid_agent_version, AgentRegistry, AgentResolveError,
};
use crate::jobs::external::{
    ArcpBackend, Backend, CommandBackend, ExternalAgent, HttpBackend, ViolationPolicy,
};
use crate::jobs::lease::ModelPolicy;

/// One agent of the file, with every version it offers.
#[derive(Clone, Debug)]
pub struct AgentDefinition {
    pub name: String,
    pub description: String,
    pub default_version: String,
    pub versions: Vec<(String, Arc<ExternalAgent>)>,
}

/// Why the agents file was refused; the gateway does not start (exit 2).
#[derive(Debug, PartialEq, Eq)]
pub struct AgentsFileError(pub String);

impl std::fmt::Display for AgentsFileError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for AgentsFileError {}

const DEFAULT_KILL_GRACE_MS: u64 = 5_000;
const DEFAULT_STDERR_LINES_PER_SEC: u32 = 20;
const DEFAULT_MAX_LINE_BYTES: u64 = 4 * 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    require_model_use: bool,
    #[serde(default)]
    agent: Vec<RawAgent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    default: Option<String>,
    description: Option<String>,
    require_model_use: Option<bool>,
    #[serde(default)]
    lease_violation: RawViolation,
    #[serde(default)]
    version: Vec<RawVersion>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawViolation {
    #[default]
    Report,
    Fail,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    version: String,
    /// `"arcp"`: `url` is an upstream ARCP runtime's WebSocket endpoint.
    kind: Option<String>,
    command: Option<Vec<String>>,
    url: Option<String>,
    // ARCP upstream agents.
    token: Option<String>,
    token_env: Option<String>,
    upstream_agent: Option<String>,
    // Command agents.
    env: Option<BTreeMap<String, String>>,
    inherit_env: Option<Vec<String>>,
    cwd: Option<PathBuf>,
    kill_grace_ms: Option<u64>,
    stderr_lines_per_sec: Option<u32>,
    // HTTP agents.
    cancel_url: Option<String>,
    authorization: Option<String>,
    authorization_env: Option<String>,
    connect_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    // Both.
    max_line_bytes: Option<u64>,
    max_runtime_sec: Option<u64>,
}

/// Reads and validates the agents file at `path`.
pub fn load(path: &Path) -> Result<Vec<AgentDefinition>, AgentsFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| AgentsFileError(format!("--agents {}: {error}", path.display())))?;
    let directory = directory_of(path)
        .map_err(|error| AgentsFileError(format!("--agents {}: {error}", path.display())))?;
    parse(&text, &directory)
        .map_err(|error| AgentsFileError(format!("--agents {}: {error}", path.display())))
}

/// The absolute directory holding `path`, against which the file's relative
/// paths resolve. `agents.toml` alone has the empty parent `""`, which
/// `std::path::absolute` refuses, so the file's own path is made absolute
/// first.
fn directory_of(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    Ok(absolute
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf))
}

/// Validates an agents file's text; relative paths resolve against `base`.
pub fn parse(text: &str, base: &Path) -> Result<Vec<AgentDefinition>, AgentsFileError> {
    let raw: RawFile = toml::from_str(text).map_err(|error| AgentsFileError(error.to_string()))?;
    let builtin = AgentRegistry::builtin();
    let mut names = HashSet::new();
    let mut definitions = Vec::new();
    for agent in raw.agent {
        let name = agent.name.clone();
        let fail = |message: String| AgentsFileError(format!("agent {name:?}: {message}"));
        if !is_valid_agent_name(&name) {
            return Err(fail(
                "the name must match [a-z0-9][a-z0-9._-]* (§7.5)".into(),
            ));
        }
        if !matches!(
            builtin.resolve(&name),
            Err(AgentResolveError::NotAvailable(_))
        ) {
            return Err(fail("a built-in agent already has this name".into()));
        }
        if !names.insert(name.clone()) {
            return Err(fail("defined more than once".into()));
        }
        if agent.version.is_empty() {
            return Err(fail("needs at least one [[agent.version]]".into()));
        }
        let policy = Policy {
            model: if agent.require_model_use.unwrap_or(raw.require_model_use) {
                ModelPolicy::RequireLease
            } else {
                ModelPolicy::AllowUnlisted
            },
            violation: match agent.lease_violation {
                RawViolation::Report => ViolationPolicy::Report,
                RawViolation::Fail => ViolationPolicy::Fail,
            },
        };
        let mut versions: Vec<(String, Arc<ExternalAgent>)> = Vec::new();
        for version in agent.version {
            let label = version.version.clone();
            if !is_valid_agent_version(&label) {
                return Err(fail(format!(
                    "version {label:?} must match [a-zA-Z0-9.+_-]+ (§7.5)"
                )));
            }
            if versions.iter().any(|(known, _)| known == &label) {
                return Err(fail(format!("version {label:?} is defined more than once")));
            }
            let external = version_agent(version, base, policy, &name)
                .map_err(|message| fail(format!("version {label:?}: {message}")))?;
            versions.push((label, Arc::new(external)));
        }
        let default_version = match agent.default {
            Some(default) if versions.iter().any(|(known, _)| known == &default) => default,
            Some(default) => {
                return Err(fail(format!(
                    "default {default:?} is not one of its versions"
                )))
            }
            None if versions.len() == 1 => versions[0].0.clone(),
            None => return Err(fail("`default` is required with several versions".into())),
        };
        let description = agent.description.unwrap_or_else(|| {
            let (_, default) = versions
                .iter()
                .find(|(known, _)| known == &default_version)
                .expect("the default is a version");
            default.kind().to_owned()
        });
        definitions.push(AgentDefinition {
            name,
            description,
            default_version,
            versions,
        });
    }
    Ok(definitions)
}

#[derive(Clone, Copy)]
struct Policy {
    model: ModelPolicy,
    violation: ViolationPolicy,
}

fn within(key: &str, value: Option<u64>, default: u64, low: u64, high: u64) -> Result<u64, String> {
    let value = value.unwrap_or(default);
    if value < low || value > high {
        return Err(format!(
            "{key} must be between {low} and {high} (got {value})"
        ));
    }
    Ok(value)
}

fn version_agent(
    mut raw: RawVersion,
    base: &Path,
    policy: Policy,
    agent_name: &str,
) -> Result<ExternalAgent, String> {
    let max_line_bytes = within(
        "max_line_bytes",
        raw.max_line_bytes,
        DEFAULT_MAX_LINE_BYTES,
        1024,
        256 * 1024 * 1024,
    )? as usize;
    let max_runtime = match raw.max_runtime_sec {
        None => None,
        Some(seconds) => Some(Duration::from_secs(within(
            "max_runtime_sec",
            Some(seconds),
            0,
            1,
            7 * 24 * 3600,
        )?)),
    };
    let arcp_only = [
        ("token", raw.token.is_some()),
        ("token_env", raw.token_env.is_some()),
        ("upstream_agent", raw.upstream_agent.is_some()),
    ];
    match raw.kind.as_deref() {
        None => {
            if let Some((key, _)) = arcp_only.iter().find(|(_, set)| *set) {
                return Err(format!("`{key}` applies to kind = \"arcp\" agents only"));
            }
        }
        Some("arcp") => {
            return Ok(ExternalAgent {
                backend: Backend::Arcp(arcp_backend(&raw, agent_name)?),
                max_line_bytes,
                max_runtime,
                model_policy: policy.model,
                lease_violation: policy.violation,
            })
        }
        Some(other) => {
            return Err(format!(
                "unknown kind {other:?} (the only kind is \"arcp\")"
            ))
        }
    }
    let backend = match (raw.command.take(), raw.url.take()) {
        (Some(_), Some(_)) => return Err("`command` and `url` are mutually exclusive".into()),
        (None, None) => return Err("needs a `command` or a `url`".into()),
        (Some(command), None) => Backend::Command(command_backend(command, raw, base)?),
        (None, Some(url)) => {
            let stray = [
                ("env", raw.env.is_some()),
                ("inherit_env", raw.inherit_env.is_some()),
                ("cwd", raw.cwd.is_some()),
                ("kill_grace_ms", raw.kill_grace_ms.is_some()),
                ("stderr_lines_per_sec", raw.stderr_lines_per_sec.is_some()),
            ];
            if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(format!("`{key}` applies to command agents only"));
            }
            Backend::Http(http_backend(&url, &raw)?)
        }
    };
    Ok(ExternalAgent {
        backend,
        max_line_bytes,
        max_runtime,
        model_policy: policy.model,
        lease_violation: policy.violation,
    })
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

fn command_backend(
    command: Vec<String>,
    raw: RawVersion,
    base: &Path,
) -> Result<CommandBackend, String> {
    let http_only = [
        ("cancel_url", raw.cancel_url.is_some()),
        ("authorization", raw.authorization.is_some()),
        ("authorization_env", raw.authorization_env.is_some()),
        ("connect_timeout_ms", raw.connect_timeout_ms.is_some()),
        ("idle_timeout_ms", raw.idle_timeout_ms.is_some()),
    ];
    if let Some((key, _)) = http_only.iter().find(|(_, set)| *set) {
        return Err(format!("`{key}` applies to url agents only"));
    }
    let env = raw.env.unwrap_or_default();
    let inherit_env = raw.inherit_env.unwrap_or_default();
    let mut parts = command.into_iter();
    let program = parts
        .next()
        .filter(|program| !program.is_empty())
        .ok_or("`command` needs at least a program")?;
    let args: Vec<String> = parts.collect();
    if args.iter().any(|arg| arg.contains('\0')) {
        return Err("`command` arguments may not contain NUL".into());
    }
    let cwd: PathBuf = base
        .join(raw.cwd.as_deref().unwrap_or(Path::new(".")))
        .components()
        .collect();
    if !cwd.is_dir() {
        return Err(format!("cwd {} is not a directory", cwd.display()));
    }
    // A bare name is looked up on PATH; a path is taken relative to cwd.
    let program = if program.contains('/') {
        let path = cwd.join(&program);
        if !path.is_file() {
            return Err(format!("the program {} does not exist", path.display()));
        }
        path
    } else {
        PathBuf::from(program)
    };
    if let Some(bad) = env
        .iter()
        .find(|(name, value)| !valid_env_name(name) || value.contains('\0'))
    {
        return Err(format!("env {:?} is not a valid variable", bad.0));
    }
    if let Some(bad) = inherit_env.iter().find(|name| !valid_env_name(name)) {
        return Err(format!("inherit_env {bad:?} is not a valid variable name"));
    }
    if let Some(gateway) = inherit_env
        .iter()
        .find(|name| name.starts_with("ARCP_GATEWAY_"))
    {
        return Err(format!(
            "inherit_env {gateway:?}: the gateway's own settings (tokens, secrets) are never passed to agents"
        ));
    }
    let kill_grace = within(
        "kill_grace_ms",
        raw.kill_grace_ms,
        DEFAULT_KILL_GRACE_MS,
        0,
        600_000,
    )?;
    let stderr_lines_per_sec = raw
        .stderr_lines_per_sec
        .unwrap_or(DEFAULT_STDERR_LINES_PER_SEC);
    if stderr_lines_per_sec > 10_000 {
        return Err("stderr_lines_per_sec must be at most 10000".into());
    }
    Ok(CommandBackend {
        program,
        args,
        env,
        inherit_env,
        cwd,
        kill_grace: Duration::from_millis(kill_grace),
        stderr_lines_per_sec,
    })
}

/// `kind = "arcp"`: `url` (ws://), `token` or `token_env`,
/// `upstream_agent` (default: the agent's own name), and the HTTP agents'
/// `connect_timeout_ms` and `idle_timeout_ms`.
fn arcp_backend(raw: &RawVersion, agent_name: &str) -> Result<ArcpBackend, String> {
    let stray = [
        ("command", raw.command.is_some()),
        ("env", raw.env.is_some()),
        ("inherit_env", raw.inherit_env.is_some()),
        ("cwd", raw.cwd.is_some()),
        ("kill_grace_ms", raw.kill_grace_ms.is_some()),
        ("stderr_lines_per_sec", raw.stderr_lines_per_sec.is_some()),
        ("cancel_url", raw.cancel_url.is_some()),
        ("authorization", raw.authorization.is_some()),
        ("authorization_env", raw.authorization_env.is_some()),
    ];
    if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
        return Err(format!("`{key}` does not apply to kind = \"arcp\" agents"));
    }
    let text = raw.url.as_deref().ok_or("kind = \"arcp\" needs a `url`")?;
    let url = reqwest::Url::parse(text).map_err(|error| format!("url {text:?}: {error}"))?;
    // No TLS in the WebSocket client (TLS ends at a proxy); a wss:// URL
    // would only fail at the first job.
    if url.scheme() != "ws" || url.host_str().is_none() {
        return Err(format!("url {text:?} must be a ws:// URL"));
    }
    let token = match (&raw.token, &raw.token_env) {
        (Some(_), Some(_)) => return Err("`token` and `token_env` are mutually exclusive".into()),
        (Some(token), None) => token.clone(),
        (None, Some(variable)) => std::env::var(variable)
            .map_err(|_| format!("token_env: the environment variable {variable:?} is not set"))?,
        (None, None) => return Err("kind = \"arcp\" needs a `token` or `token_env`".into()),
    };
    let (connect_timeout, idle_timeout) = upstream_timeouts(raw)?;
    Ok(ArcpBackend::new(
        url.to_string(),
        token,
        raw.upstream_agent
            .clone()
            .unwrap_or_else(|| agent_name.to_owned()),
        connect_timeout,
        idle_timeout,
    ))
}

fn parse_url(key: &str, text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|error| format!("{key} {text:?}: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{key} {text:?} must be an http:// or https:// URL"));
    }
    Ok(url)
}

fn http_backend(url: &str, raw: &RawVersion) -> Result<HttpBackend, String> {
    let url = parse_url("url", url)?;
    let cancel_url = raw
        .cancel_url
        .as_deref()
        .map(|text| parse_url("cancel_url", text))
        .transpose()?;
    let authorization = match (&raw.authorization, &raw.authorization_env) {
        (Some(_), Some(_)) => {
            return Err("`authorization` and `authorization_env` are mutually exclusive".into())
        }
        (Some(value), None) => Some(value.clone()),
        (None, Some(variable)) => Some(std::env::var(variable).map_err(|_| {
            format!("authorization_env: the environment variable {variable:?} is not set")
        })?),
        (None, None) => None,
    };
    let (connect_timeout, idle_timeout) = upstream_timeouts(raw)?;
    HttpBackend::new(
        url,
        cancel_url,
        authorization.as_deref(),
        connect_timeout,
        idle_timeout,
    )
}

/// The connect and idle timeouts of an upstream (HTTP or ARCP) agent.
fn upstream_timeouts(raw: &RawVersion) -> Result<(Duration, Duration), String> {
    let connect_timeout = within(
        "connect_timeout_ms",
        raw.connect_timeout_ms,
        DEFAULT_CONNECT_TIMEOUT_MS,
        1,
        600_000,
    )?;
    let idle_timeout = within(
        "idle_timeout_ms",
        raw.idle_timeout_ms,
        DEFAULT_IDLE_TIMEOUT_MS,
        1,
        86_400_000,
    )?;
    Ok((
        Duration::from_millis(connect_timeout),
        Duration::from_millis(idle_timeout),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
    }

    fn parse_error(text: &str) -> String {
        parse(text, &examples()).unwrap_err().0
    }

    #[test]
    fn the_example_file_loads() {
        let agents = load(&examples().join("agents.toml")).unwrap();
        let names: Vec<&str> = agents.iter().map(|agent| agent.name.as_str()).collect();
        assert_eq!(names, ["countdown", "wordcount", "shouter"]);
        let Backend::Command(command) = &agents[0].versions[0].1.backend else {
            panic!("countdown is a command agent");
        };
        assert_eq!(command.program, Path::new("sh"), "looked up on PATH");
        assert_eq!(command.args, ["agents/countdown.sh"]);
        assert_eq!(command.cwd, examples());
        let Backend::Http(http) = &agents[2].versions[0].1.backend else {
            panic!("shouter is an HTTP agent");
        };
        assert_eq!(http.url.as_str(), "http://127.0.0.1:9000/run");
    }

    proptest::proptest! {
        /// Arbitrary text, and arbitrary values in the shape of an agents
        /// file, are loaded or refused with a reason; never a panic.
        #[test]
        fn any_text_is_loaded_or_refused(text in "\\PC{0,200}") {
            let _ = parse(&text, &examples());
        }

        #[test]
        fn agent_tables_with_odd_values_never_panic(
            name in "\\PC{0,12}",
            version in "\\PC{0,8}",
            command in proptest::collection::vec("\\PC{0,8}", 0..3),
            url in "\\PC{0,24}",
            number in proptest::prelude::any::<i64>(),
        ) {
            let text = format!(
                "[[agent]]\nname = {name:?}\nversion = {version:?}\ncommand = {command:?}\n\
                 max_line_bytes = {number}\n[[agent]]\nname = {name:?}\nurl = {url:?}\n\
                 idle_timeout_ms = {number}\n"
            );
            let _ = parse(&text, &examples());
        }
    }

    #[test]
    fn a_bare_file_name_resolves_against_the_working_directory() {
        let here = std::env::current_dir().unwrap();
        assert_eq!(directory_of(Path::new("agents.toml")).unwrap(), here);
        assert_eq!(directory_of(Path::new("./agents.toml")).unwrap(), here);
        assert_eq!(
            directory_of(Path::new("sub/agents.toml")).unwrap(),
            here.join("sub")
        );
        assert_eq!(
            directory_of(Path::new("/etc/arcp/agents.toml")).unwrap(),
            Path::new("/etc/arcp")
        );
    }

    #[test]
    fn versions_and_defaults_are_checked() {
        let text = r#"
            [[agent]]
            name = "multi"
            default = "2.0.0"
            [[agent.version]]
            version = "1.0.0"
            command = ["true"]
            [[agent.version]]
            version = "2.0.0"
            url = "http://127.0.0.1:1/run"
        "#;
        let agents = parse(text, &examples()).unwrap();
        assert_eq!(agents[0].default_version, "2.0.0");
        assert_eq!(agents[0].description, "HTTP upstream agent");
        assert!(parse_error(&text.replace("default = \"2.0.0\"", "")).contains("default"));
        assert!(
            parse_error(&text.replace("default = \"2.0.0\"", "default = \"9\""))
                .contains("default")
        );
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        let one = |version: &str| {
            format!("[[agent]]\nname = \"x\"\n[[agent.version]]\nversion = \"1\"\n{version}\n")
        };
        let cases = [
            (one("command = [\"true\"]\nurl = \"http://a/\""), "mutually exclusive"),
            (one(""), "needs a `command` or a `url`"),
            (one("command = []"), "at least a program"),
            (one("command = [\"./missing.sh\"]"), "does not exist"),
            (one("command = [\"true\"]\ncwd = \"nowhere\""), "not a directory"),
            (one("command = [\"true\"]\ncancel_url = \"http://a/\""), "url agents only"),
            (one("url = \"http://a/\"\nenv = { A = \"b\" }"), "command agents only"),
            (one("url = \"ftp://a/\""), "http:// or https://"),
            (one("url = \"http://a/\"\nidle_timeout_ms = 0"), "idle_timeout_ms"),
            (one("command = [\"true\"]\ncommand_typo = 1"), "unknown field"),
            (one("kind = \"grpc\"\nurl = \"ws://a/arcp\""), "unknown kind"),
            (one("kind = \"arcp\"\ntoken = \"t\""), "needs a `url`"),
            (one("kind = \"arcp\"\nurl = \"http://a/arcp\"\ntoken = \"t\""), "must be a ws:// URL"),
            (one("kind = \"arcp\"\nurl = \"ws://a/arcp\""), "needs a `token`"),
            (one("kind = \"arcp\"\nurl = \"ws://a/arcp\"\ntoken = \"t\"\ncommand = [\"true\"]"), "does not apply"),
            (one("url = \"http://a/\"\ntoken = \"t\""), "kind = \"arcp\" agents only"),
            (one("command = [\"true\"]\ninherit_env = [\"ARCP_GATEWAY_SECRETS\"]"), "never passed"),
            (
                one("url = \"http://a/\"\nauthorization_env = \"ARCP_TEST_SURELY_UNSET_VARIABLE\""),
                "not set",
            ),
            ("[[agent]]\nname = \"echo\"\n[[agent.version]]\nversion = \"1\"\ncommand = [\"true\"]".into(), "built-in"),
            ("[[agent]]\nname = \"Bad Name\"\n[[agent.version]]\nversion = \"1\"\ncommand = [\"true\"]".into(), "must match"),
            ("[[agent]]\nname = \"x\"".into(), "at least one"),
            (format!("{}{}", one("command = [\"true\"]"), one("command = [\"true\"]")), "more than once"),
        ];
        for (text, expected) in cases {
            let error = parse_error(&text);
            assert!(
                error.contains(expected),
                "{text:?}: {error:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn the_authorization_is_redacted_from_debug_output() {
        let text = "[[agent]]\nname = \"x\"\n[[agent.version]]\nversion = \"1\"\nurl = \"http://a/\"\nauthorization = \"Bearer very-secret\"\n";
        let agents = parse(text, &examples()).unwrap();
        let shown = format!("{agents:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
