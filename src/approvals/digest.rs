//! The digest an approval binds: SHA-256 over the exact request, each part
//! length-prefixed so no two requests share an encoding.
//!
//! HTTP and AWS calls bind agent, run, scope, method, host, normalised path,
//! query and body (for AWS also the IAM action and resource). An MCP
//! `tools/call` binds the tool and the canonical JSON of its arguments in
//! place of the body, since the JSON-RPC id changes between retries.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// What a digest is computed over.
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    /// The agent's name.
    pub agent: &'a str,
    /// The run id, if any.
    pub run: Option<&'a str>,
    /// The scope's name.
    pub scope: &'a str,
    /// The HTTP method.
    pub method: &'a str,
    /// The upstream host.
    pub host: &'a str,
    /// The normalised path.
    pub path: &'a str,
    /// The query string.
    pub query: Option<&'a str>,
    /// The body, or for MCP the canonical arguments.
    pub body: &'a [u8],
    /// For MCP: the tool's name.
    pub tool: Option<&'a str>,
    /// For AWS: the action and resource.
    pub aws: Option<(&'a str, Option<&'a str>)>,
}

/// `sha256:<hex>` over every part of `bound`.
pub fn digest(bound: &Bound<'_>) -> String {
    let mut hash = Sha256::new();
    let mut part = |label: &str, value: Option<&[u8]>| {
        hash.update(label.as_bytes());
        match value {
            Some(v) => {
                hash.update([1]);
                hash.update((v.len() as u64).to_be_bytes());
                hash.update(v);
            }
            None => hash.update([0]),
        }
    };
    part("agent", Some(bound.agent.as_bytes()));
    part("run", bound.run.map(str::as_bytes));
    part("scope", Some(bound.scope.as_bytes()));
    part("method", Some(bound.method.as_bytes()));
    part("host", Some(bound.host.as_bytes()));
    part("path", Some(bound.path.as_bytes()));
    part("query", bound.query.map(str::as_bytes));
    part("body", Some(bound.body));
    part("tool", bound.tool.map(str::as_bytes));
    part("action", bound.aws.map(|(a, _)| a.as_bytes()));
    part(
        "resource",
        bound.aws.and_then(|(_, r)| r).map(str::as_bytes),
    );
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// The canonical JSON of `value`: object keys sorted, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
