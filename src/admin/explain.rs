//! `GET /v1/policy/explain`: `policy explain` against the policy in force,
//! with the overrides in force now. Read-only, so auditors may ask too.

use std::time::SystemTime;

use http::{Response, StatusCode};

use super::{Admin, AdminBody, error, json};
use crate::policy::{Caller, Probe, explain};

impl Admin {
    /// Explains the call the query describes: `agent` (or `identity`),
    /// `method`, `url`, and optionally `mcp_tool`, `args` (JSON) and
    /// `header` (`name: value`, repeatable).
    pub(super) fn explain(&self, query: &str) -> Response<AdminBody> {
        let now = SystemTime::now();
        let probe = match probe_of(query, now) {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let policy = self.pipeline.policy();
        let resolved = match probe.resolve(&policy) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let (_, explanation) = resolved.with_call(&policy, |call| explain(call, &policy));
        let refusing = self.pipeline.overrides().refusing(
            explanation.agent.as_deref(),
            None,
            explanation.scope.as_deref(),
            now,
        );
        let mut value = serde_json::to_value(&explanation).unwrap_or_default();
        value["policy_digest"] = policy.digest().into();
        value["override"] = refusing.map_or(serde_json::Value::Null, |o| {
            serde_json::json!({
                "id": o.id,
                "kind": o.kind.as_str(),
                "target": o.target,
                "reason_code": o.kind.reason().code(),
            })
        });
        json(StatusCode::OK, &value)
    }
}

/// The probe a query describes.
fn probe_of(query: &str, now: SystemTime) -> Result<Probe, String> {
    let mut probe = Probe {
        caller: Caller::Agent(String::new()),
        method: String::new(),
        url: String::new(),
        headers: Vec::new(),
        body: None,
        mcp_tool: None,
        mcp_args: None,
        now,
    };
    let mut caller = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        match &*key {
            "agent" => caller = Some(Caller::Agent(value)),
            "identity" => caller = Some(Caller::Identity(value)),
            "method" => probe.method = value,
            "url" => probe.url = value,
            "mcp_tool" => probe.mcp_tool = Some(value),
            "args" => {
                probe.mcp_args = Some(
                    serde_json::from_str(&value).map_err(|e| format!("`args` is not JSON: {e}"))?,
                );
            }
            "header" => {
                let (name, v) = value
                    .split_once(':')
                    .ok_or_else(|| format!("header `{value}` is not `name: value`"))?;
                probe
                    .headers
                    .push((name.trim().to_owned(), v.trim().to_owned()));
            }
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    probe.caller = caller.ok_or("`agent` or `identity` is required")?;
    if probe.method.is_empty() || probe.url.is_empty() {
        return Err("`method` and `url` are required".into());
    }
    Ok(probe)
}
