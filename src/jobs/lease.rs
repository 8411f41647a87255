//! Lease checks on what an agent reports it is doing (§9).
//!
//! The gateway cannot stop an out-of-process agent from acting, but it sees
//! every event the agent reports. §9.3 says an operation not covered by the
//! effective lease fails with `PERMISSION_DENIED`; for operations the gateway
//! only learns about, the failure is surfaced "via the normal mechanism"
//! (§9.5): a `tool_result` event carrying the error, right after the event
//! that announced the operation.
//!
//! Two kinds of operation are visible:
//!
//! - `tool_call` events (§8.2), checked against the `tool.call` patterns;
//! - model invocations, checked against the `model.use` patterns (§9.7). An
//!   agent reports one with a `metric` event whose `dimensions.model` names
//!   the model (for example a token count or a `cost.*` metric, which also
//!   feeds the budget, §9.6).
//!
//! Patterns are globs (§9.2): `*` matches any run of characters, `?` exactly
//! one, everything else itself.

use serde_json::{json, Value};
use time::OffsetDateTime;

/// What a `model.use`-less lease means (§9.7: deployment policy decides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelPolicy {
    /// No `model.use` in the lease allows any model.
    #[default]
    AllowUnlisted,
    /// No `model.use` in the lease forbids every model.
    RequireLease,
}

/// Does `pattern` match all of `text`? `*` is any run (also empty), `?` any
/// single character. Linear backtracking on the last `*`, so a hostile
/// pattern costs at most `O(pattern × text)`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The patterns a lease grants in `namespace`, or `None` when the lease does
/// not name the namespace at all.
fn patterns<'a>(lease: &'a Value, namespace: &str) -> Option<impl Iterator<Item = &'a str>> {
    lease
        .get(namespace)
        .and_then(Value::as_array)
        .map(|patterns| patterns.iter().filter_map(Value::as_str))
}

/// Is `subject` covered by the lease's `namespace` patterns? A lease that does
/// not name the namespace grants nothing in it (§9.1).
pub fn covers(lease: &Value, namespace: &str, subject: &str) -> bool {
    patterns(lease, namespace).is_some_and(|mut all| all.any(|p| glob_match(p, subject)))
}

/// The checks the gateway runs on one job's reported operations.
pub struct LeaseCheck<'a> {
    pub lease: &'a Value,
    pub expires_at: Option<OffsetDateTime>,
    pub model_policy: ModelPolicy,
}

impl LeaseCheck<'_> {
    /// The `tool_result` body that answers an operation the lease does not
    /// allow, or `None` when it is allowed. `kind` and `body` are the event
    /// the agent reported.
    pub fn denial(&self, kind: &str, body: &Value) -> Option<Value> {
        let (call_id, denied) = match kind {
            "tool_call" => {
                let tool = body.get("tool").and_then(Value::as_str)?;
                (body.get("call_id").cloned(), self.tool_call(tool))
            }
            "metric" => {
                let dimensions = body.get("dimensions");
                let model = dimensions
                    .and_then(|d| d.get("model"))
                    .and_then(Value::as_str)?;
                let call_id = dimensions.and_then(|d| d.get("call_id")).cloned();
                (call_id, self.model_use(model))
            }
            _ => return None,
        };
        let (code, message) = denied?;
        Some(json!({
            "call_id": call_id.unwrap_or(Value::Null),
            "error": { "code": code, "message": message, "retryable": false },
        }))
    }

    /// §9.5: every operation at or after `expires_at` fails with
    /// `LEASE_EXPIRED` (the runner also ends the job at that instant).
    fn expired(&self) -> Option<(&'static str, String)> {
        let at = self.expires_at?;
        (OffsetDateTime::now_utc() >= at).then(|| {
            (
                "LEASE_EXPIRED",
                "the job's lease expired (lease_constraints.expires_at)".to_owned(),
            )
        })
    }

    /// §9.3: a tool the `tool.call` patterns do not cover is denied.
    fn tool_call(&self, tool: &str) -> Option<(&'static str, String)> {
        if let Some(expired) = self.expired() {
            return Some(expired);
        }
        (!covers(self.lease, "tool.call", tool)).then(|| {
            (
                "PERMISSION_DENIED",
                format!("tool {tool:?} is not covered by the lease's tool.call patterns"),
            )
        })
    }

    /// §9.7: a model the `model.use` patterns do not cover is denied; without
    /// `model.use` in the lease, the deployment's policy decides.
    fn model_use(&self, model: &str) -> Option<(&'static str, String)> {
        if let Some(expired) = self.expired() {
            return Some(expired);
        }
        let allowed = match patterns(self.lease, "model.use") {
            Some(mut all) => all.any(|p| glob_match(p, model)),
            None => self.model_policy == ModelPolicy::AllowUnlisted,
        };
        (!allowed).then(|| {
            (
                "PERMISSION_DENIED",
                format!("model {model:?} is not covered by the lease's model.use patterns"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything/at all"));
        assert!(glob_match("search.*", "search.web"));
        assert!(glob_match("search.*", "search."));
        assert!(!glob_match("search.*", "research.web"));
        assert!(glob_match(
            "anthropic/claude-3-haiku-*",
            "anthropic/claude-3-haiku-20240307"
        ));
        assert!(!glob_match(
            "anthropic/claude-3-haiku-*",
            "anthropic/claude-3-opus-1"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*b*b*", "abxxbyy"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("tier-fast/*", "tier-fast/small"));
        assert!(glob_match("é*", "été"));
        // Pathological input stays cheap.
        let text = "a".repeat(1000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &text));
    }

    #[test]
    fn tool_calls_outside_the_lease_are_denied() {
        let lease = json!({ "tool.call": ["search.*", "calc"] });
        let check = LeaseCheck {
            lease: &lease,
            expires_at: None,
            model_policy: ModelPolicy::AllowUnlisted,
        };
        let call = |tool: &str| json!({ "tool": tool, "args": {}, "call_id": "c1" });
        assert_eq!(check.denial("tool_call", &call("search.web")), None);
        assert_eq!(check.denial("tool_call", &call("calc")), None);
        let denied = check.denial("tool_call", &call("shell.exec")).unwrap();
        assert_eq!(denied["call_id"], "c1");
        assert_eq!(denied["error"]["code"], "PERMISSION_DENIED");
        assert_eq!(denied["error"]["retryable"], false);

        let empty = json!({});
        let none = LeaseCheck {
            lease: &empty,
            ..check
        };
        assert!(none.denial("tool_call", &call("search.web")).is_some());
        assert_eq!(none.denial("progress", &json!({"current": 1})), None);
    }

    #[test]
    fn model_use_follows_the_lease_and_the_policy() {
        let lease = json!({ "model.use": ["tier-fast/*"] });
        let check = LeaseCheck {
            lease: &lease,
            expires_at: None,
            model_policy: ModelPolicy::AllowUnlisted,
        };
        let metric = |model: &str| json!({ "name": "model.tokens", "value": 10, "dimensions": { "model": model } });
        assert_eq!(check.denial("metric", &metric("tier-fast/small")), None);
        assert!(check.denial("metric", &metric("gpt-4o")).is_some());
        assert_eq!(
            check.denial("metric", &json!({"name": "cost.x", "value": 1})),
            None
        );

        let empty = json!({});
        let open = LeaseCheck {
            lease: &empty,
            ..check
        };
        assert_eq!(open.denial("metric", &metric("gpt-4o")), None);
        let strict = LeaseCheck {
            model_policy: ModelPolicy::RequireLease,
            ..open
        };
        assert!(strict.denial("metric", &metric("gpt-4o")).is_some());
    }

    #[test]
    fn an_expired_lease_denies_with_lease_expired() {
        let lease = json!({ "tool.call": ["*"] });
        let check = LeaseCheck {
            lease: &lease,
            expires_at: Some(OffsetDateTime::now_utc() - time::Duration::seconds(1)),
            model_policy: ModelPolicy::AllowUnlisted,
        };
        let denied = check
            .denial("tool_call", &json!({"tool": "x", "call_id": "c"}))
            .unwrap();
        assert_eq!(denied["error"]["code"], "LEASE_EXPIRED");
    }
}
