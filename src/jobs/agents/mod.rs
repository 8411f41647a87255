//! The agent inventory (§7.5) and the built-in agents that make a fresh
//! gateway useful: `echo`, `ticker`, `chunker`, `fail`, `spender` and
//! `firehose`. Agents from the agents file (`external`) are served beside
//! them.

mod builtin;
pub mod pacer;

use std::sync::Arc;

use serde_json::{json, Value};

use super::external::{self, ExternalAgent};
use super::{Job, JobFinished, Terminal};
use crate::agents_file::AgentDefinition;

/// Largest single `result_chunk` (§14 suggests capping at about 1 MB).
pub const MAX_RESULT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Largest total streamed result the `chunker` agent will produce.
pub const MAX_STREAMED_RESULT_BYTES: u64 = 64 * 1024 * 1024;

/// Why a requested agent could not be resolved (§7.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentResolveError {
    /// The `agent` string does not follow the `name[@version]` grammar.
    InvalidName(String),
    NotAvailable(String),
    VersionNotAvailable {
        name: String,
        version: String,
    },
}

/// The built-in agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinAgent {
    Echo,
    /// `echo@0.9.0`: the result wraps the input as `{"echoed": input}`.
    EchoLegacy,
    Ticker,
    Chunker,
    Fail,
    /// Reports `cost.*` metrics, for budgets (§9.6).
    Spender,
    /// Emits `log` events as fast as asked, stamped with `ts_ns`, for the
    /// benchmarks.
    Firehose,
}

/// What runs for one agent version: a built-in, or an external command or
/// HTTP upstream from the agents file.
#[derive(Clone, Debug)]
pub enum Agent {
    Builtin(BuiltinAgent),
    External(Arc<ExternalAgent>),
}

impl Agent {
    /// Checked at submission so bad input is a `400`. External agents check
    /// their own input and answer with an `INVALID_REQUEST` error line.
    pub fn validate_input(&self, input: &Value) -> Result<(), String> {
        match self {
            Agent::Builtin(agent) => agent.validate_input(input),
            Agent::External(_) => Ok(()),
        }
    }

    pub async fn run(self, context: JobContext) -> AgentOutcome {
        match self {
            Agent::Builtin(agent) => agent.run(context).await,
            Agent::External(agent) => {
                AgentOutcome::Finished(external::run(&agent, context.job).await)
            }
        }
    }
}

pub struct AgentEntry {
    pub name: String,
    /// Each version and what runs for it.
    pub versions: Vec<(String, Agent)>,
    pub default_version: String,
    pub description: String,
}

/// A resolved agent: what runs, and the `name@version` it is known by.
#[derive(Clone, Debug)]
pub struct ResolvedAgent {
    pub qualified_name: String,
    pub agent: Agent,
}

pub struct AgentRegistry {
    entries: Vec<AgentEntry>,
}

impl AgentRegistry {
    pub fn builtin() -> Self {
        let entry = |name: &str, description: &str, agent| AgentEntry {
            name: name.into(),
            versions: vec![("1.0.0".into(), Agent::Builtin(agent))],
            default_version: "1.0.0".into(),
            description: description.into(),
        };
        AgentRegistry {
            entries: vec![
                AgentEntry {
                    name: "echo".into(),
                    versions: vec![
                        ("0.9.0".into(), Agent::Builtin(BuiltinAgent::EchoLegacy)),
                        ("1.0.0".into(), Agent::Builtin(BuiltinAgent::Echo)),
                    ],
                    default_version: "1.0.0".into(),
                    description: "returns its input as the result (0.9.0 wraps it as {echoed})"
                        .into(),
                },
                entry(
                    "ticker",
                    "input {count, interval_ms}: emits count progress events, then a result",
                    BuiltinAgent::Ticker,
                ),
                entry(
                    "chunker",
                    "input {size, chunk_size, interval_ms}: streams a result as result_chunk events",
                    BuiltinAgent::Chunker,
                ),
                entry(
                    "fail",
                    "input {code, message, retryable, delay_ms}: ends with job.error",
                    BuiltinAgent::Fail,
                ),
                entry(
                    "firehose",
                    "input {count, size, rate?, delay_ms?}: count log events of size bytes (rate per second, or as fast as possible), each stamped with ts_ns",
                    BuiltinAgent::Firehose,
                ),
                entry(
                    "spender",
                    "input {steps, cost, currency, interval_ms}: reports cost.* metrics against cost.budget",
                    BuiltinAgent::Spender,
                ),
            ],
        }
    }

    /// The built-in agents followed by those of the agents file (whose names
    /// were checked not to collide with them).
    pub fn with_external(definitions: &[AgentDefinition]) -> Self {
        let mut registry = AgentRegistry::builtin();
        for definition in definitions {
            let versions: Vec<&str> = definition
                .versions
                .iter()
                .map(|(v, _)| v.as_str())
                .collect();
            tracing::info!(agent = %definition.name, ?versions, "external agent configured");
        }
        registry
            .entries
            .extend(definitions.iter().map(|definition| {
                AgentEntry {
                    name: definition.name.clone(),
                    versions: definition
                        .versions
                        .iter()
                        .map(|(version, agent)| (version.clone(), Agent::External(agent.clone())))
                        .collect(),
                    default_version: definition.default_version.clone(),
                    description: definition.description.clone(),
                }
            }));
        registry
    }

    /// `capabilities.agents` of `session.welcome` (§6.2).
    pub fn inventory(&self) -> Value {
        Value::Array(
            self.entries
                .iter()
                .map(|entry| {
                    let versions: Vec<&str> = entry
                        .versions
                        .iter()
                        .map(|(version, _)| version.as_str())
                        .collect();
                    json!({
                        "name": entry.name,
                        "versions": versions,
                        "default": entry.default_version,
                        "description": entry.description,
                    })
                })
                .collect(),
        )
    }

    /// Resolves `name` to its default version or `name@version` exactly (§7.5).
    pub fn resolve(&self, requested: &str) -> Result<ResolvedAgent, AgentResolveError> {
        let (name, version) = match requested.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (requested, None),
        };
        if !is_valid_agent_name(name) || !version.is_none_or(is_valid_agent_version) {
            return Err(AgentResolveError::InvalidName(requested.to_owned()));
        }
        let Some(entry) = self.entries.iter().find(|entry| entry.name == name) else {
            return Err(AgentResolveError::NotAvailable(name.to_owned()));
        };
        let version = version.unwrap_or(&entry.default_version);
        let Some((_, agent)) = entry.versions.iter().find(|(known, _)| known == version) else {
            return Err(AgentResolveError::VersionNotAvailable {
                name: name.to_owned(),
                version: version.to_owned(),
            });
        };
        Ok(ResolvedAgent {
            qualified_name: format!("{name}@{version}"),
            agent: agent.clone(),
        })
    }
}

/// `name ::= [a-z0-9][a-z0-9._-]*` (§7.5).
pub fn is_valid_agent_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.len() <= 128
}

/// `version ::= [a-zA-Z0-9.+_-]+` (§7.5).
pub fn is_valid_agent_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 128
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+_-".contains(&b))
}

/// What an agent sees of its job.
pub struct JobContext {
    job: Arc<Job>,
}

/// How an agent's run ended.
pub enum AgentOutcome {
    Finished(Terminal),
}

impl JobContext {
    pub fn new(job: Arc<Job>) -> Self {
        JobContext { job }
    }

    pub fn input(&self) -> &Value {
        &self.job.spec.input
    }

    /// Emits one event, first waiting for room in the job's output.
    pub async fn event(&self, kind: &str, body: Value) -> Result<(), JobFinished> {
        self.job.ready().await;
        self.job.emit(kind, body).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_resolve_by_the_section_7_5_rules() {
        let registry = AgentRegistry::builtin();
        assert_eq!(
            registry.resolve("ticker").unwrap().qualified_name,
            "ticker@1.0.0"
        );
        assert_eq!(
            registry.resolve("ticker@1.0.0").unwrap().qualified_name,
            "ticker@1.0.0"
        );
        assert_eq!(
            registry.resolve("ticker@9.9.9").unwrap_err(),
            AgentResolveError::VersionNotAvailable {
                name: "ticker".into(),
                version: "9.9.9".into()
            }
        );
        assert_eq!(
            registry.resolve("nope").unwrap_err(),
            AgentResolveError::NotAvailable("nope".into())
        );
        for bad in [
            "",
            "Ticker",
            "-x",
            "ticker@",
            "ticker@1 0",
            "tick er",
            "a@b@c",
        ] {
            assert!(
                matches!(
                    registry.resolve(bad),
                    Err(AgentResolveError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn input_limits_are_enforced_at_submission() {
        assert!(BuiltinAgent::Ticker
            .validate_input(&json!({"count": 3}))
            .is_ok());
        assert!(BuiltinAgent::Ticker.validate_input(&Value::Null).is_ok());
        assert!(BuiltinAgent::Ticker
            .validate_input(&json!({"count": -1}))
            .is_err());
        assert!(BuiltinAgent::Ticker
            .validate_input(&json!({"count": 10_000_000}))
            .is_err());
        assert!(BuiltinAgent::Ticker
            .validate_input(&json!({"cuont": 3}))
            .is_err());
        assert!(BuiltinAgent::Chunker
            .validate_input(&json!({"chunk_size": 0}))
            .is_err());
        assert!(BuiltinAgent::Fail
            .validate_input(&json!({"code": "NOPE"}))
            .is_err());
        assert!(BuiltinAgent::Fail
            .validate_input(&json!({"code": "TIMEOUT"}))
            .is_ok());
    }
}
