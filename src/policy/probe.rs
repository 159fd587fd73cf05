//! A call described by hand (an agent, a method, a URL, headers, a body or
//! an MCP tool and its arguments) made into the [`Call`] that `decide`
//! judges, the way the pipeline would make it: the same routing, the same
//! path normalisation, the same IAM mapping.
//!
//! The URL says where the call goes: a host some scope names makes a
//! forward-proxy call (`https://api.example.com/v1/x`); any other host whose
//! first path segment is a gateway route makes a gateway call
//! (`https://clawgate/echo/v1/x`); `CONNECT` makes a tunnel decision.

use std::time::SystemTime;

use serde_json::Value;

use super::aws::{AwsRequest, FormBody, RequestView, classify};
use super::{Call, Policy, Target};
use crate::identity::PeerName;
use crate::mcp::McpCall;

/// Who makes a probed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An agent named in policy: its first identity is used.
    Agent(String),
    /// An identity as policy writes one (`spiffe://…`, `dns:…`, `cn:…`),
    /// which may prove no agent at all.
    Identity(String),
}

/// A call described by hand.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Who calls.
    pub caller: Caller,
    /// The HTTP method.
    pub method: String,
    /// Where: see the module documentation.
    pub url: String,
    /// Request headers (for AWS scopes: `x-amz-target`, `content-type`).
    pub headers: Vec<(String, String)>,
    /// The request body (for AWS form bodies).
    pub body: Option<String>,
    /// For an MCP scope: the tool a `tools/call` names.
    pub mcp_tool: Option<String>,
    /// Its arguments.
    pub mcp_args: Option<Value>,
    /// The time of the call (exceptions).
    pub now: SystemTime,
}

/// Why a probe cannot be made into a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The agent is not in policy.
    #[error("unknown agent `{0}`")]
    UnknownAgent(String),
    /// The agent has no identity.
    #[error("agent `{0}` has no identity")]
    NoIdentity(String),
    /// The identity is not one policy can name.
    #[error("identity `{0}` is not valid: {1}")]
    BadIdentity(String, String),
    /// The URL is not an absolute URL clawgate can route.
    #[error("url `{0}` is not usable: {1}")]
    BadUrl(String, String),
    /// The method is not an uppercase token.
    #[error("method `{0}` must be uppercase")]
    BadMethod(String),
}

/// A probe resolved against a policy: owns what the [`Call`] borrows.
#[derive(Debug)]
pub struct Resolved {
    peer: Vec<PeerName>,
    host: String,
    port: Option<u16>,
    route: Option<String>,
    connect: bool,
    method: String,
    path: String,
    aws: Option<AwsRequest>,
    mcp_args: Option<Value>,
    mcp_tool: Option<String>,
    now: SystemTime,
}

impl Probe {
    /// Resolves the probe's identity, target and AWS action in `policy`.
    pub fn resolve(&self, policy: &Policy) -> Result<Resolved, ProbeError> {
        if self.method.is_empty() || !self.method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ProbeError::BadMethod(self.method.clone()));
        }
        let peer = match &self.caller {
            Caller::Agent(name) => {
                let agent = policy
                    .agents
                    .iter()
                    .find(|a| &a.name == name)
                    .ok_or_else(|| ProbeError::UnknownAgent(name.clone()))?;
                let first = agent
                    .identities
                    .first()
                    .ok_or_else(|| ProbeError::NoIdentity(name.clone()))?;
                vec![first.clone()]
            }
            Caller::Identity(text) => vec![
                PeerName::parse_policy(text)
                    .map_err(|e| ProbeError::BadIdentity(text.clone(), e.to_string()))?,
            ],
        };
        let bad = |why: String| ProbeError::BadUrl(self.url.clone(), why);
        let uri: http::Uri = self.url.parse().map_err(|e| bad(format!("{e}")))?;
        let authority = uri
            .authority()
            .ok_or_else(|| bad("it names no host".into()))?;
        let host =
            crate::route::normalise_host(authority.host()).map_err(|e| bad(e.to_string()))?;
        let port = authority.port_u16();
        let path = crate::route::normalise_path(uri.path()).map_err(|e| bad(e.to_string()))?;
        let mut resolved = Resolved {
            peer,
            host,
            port,
            route: None,
            connect: self.method == "CONNECT",
            method: self.method.clone(),
            path,
            aws: None,
            mcp_args: self.mcp_args.clone(),
            mcp_tool: self.mcp_tool.clone(),
            now: self.now,
        };
        if !resolved.connect && !policy.by_host.contains_key(&resolved.host) {
            let rest = &resolved.path[1..];
            let (route, below) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if policy.by_route.contains_key(route) {
                resolved.route = Some(route.to_owned());
                resolved.path = if below.is_empty() { "/" } else { below }.to_owned();
            }
        }
        resolved.aws = self.aws_request(policy, &resolved);
        Ok(resolved)
    }

    /// The IAM action, when the call lands in an AWS scope.
    fn aws_request(&self, policy: &Policy, resolved: &Resolved) -> Option<AwsRequest> {
        let target = resolved.target();
        let agent = policy.agent_for(&resolved.peer)?;
        let (id, _) = policy.scope_at(agent, target, resolved.now)?;
        let scope = policy.scope(id);
        scope.aws()?;
        let (service, _) = scope.signing()?;
        let path = match target {
            Target::Route(_) => format!("{}{}", scope.upstream.base_path, resolved.path),
            Target::Host { .. } | Target::Connect { .. } => resolved.path.clone(),
        };
        let header = |name: &str| {
            let mut values = self
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name));
            match (values.next(), values.next()) {
                (None, _) => Ok(None),
                (Some((_, v)), None) => Ok(Some(v.as_str())),
                (Some(_), Some(_)) => Err(()),
            }
        };
        let x_amz_target = header("x-amz-target");
        let content_type = header("content-type");
        let s3_modifiers = self.headers.iter().any(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k == "x-amz-copy-source"
                || k == "x-amz-acl"
                || k.starts_with("x-amz-grant-")
                || k.starts_with("x-amz-object-lock-")
        });
        let is_form = content_type.ok().flatten().is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
        let form_body = match (&self.body, is_form && self.method == "POST") {
            (Some(body), true) => FormBody::Complete(body.as_bytes()),
            _ => FormBody::None,
        };
        let query = self.url.parse::<http::Uri>().ok();
        let view = RequestView {
            method: &self.method,
            path: &path,
            query: query.as_ref().and_then(http::Uri::query),
            target: x_amz_target.ok().flatten(),
            form_body,
            ambiguous: x_amz_target.is_err()
                || content_type.is_err()
                || (service == "s3" && s3_modifiers),
            host: &scope.upstream.host,
            service: &service,
        };
        classify(&view)
    }
}

impl Resolved {
    fn target(&self) -> Target<'_> {
        match (&self.route, self.connect) {
            (_, true) => Target::Connect {
                host: &self.host,
                port: self.port.unwrap_or(443),
            },
            (Some(route), false) => Target::Route(route),
            (None, false) => Target::Host {
                host: &self.host,
                port: self.port,
            },
        }
    }

    /// The path as the call carries it (below the route for a gateway call).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The IAM action the call maps to, if any.
    pub fn aws(&self) -> Option<&AwsRequest> {
        self.aws.as_ref()
    }

    /// Runs `f` on the call this probe describes. An MCP tool call is a
    /// `tools/call` whose tool definition is taken to match its pin.
    pub fn with_call<R>(&self, policy: &Policy, f: impl FnOnce(&Call<'_>) -> R) -> R {
        let target = self.target();
        let pin = self.mcp_tool.as_deref().and_then(|tool| {
            let agent = policy.agent_for(&self.peer)?;
            let (id, _) = policy.scope_at(agent, target, self.now)?;
            let rules = policy.scope(id).mcp.as_ref()?;
            rules.pins.get(tool).cloned()
        });
        let empty = Value::Object(serde_json::Map::new());
        let mcp = self.mcp_tool.as_deref().map(|tool| {
            let arguments = self.mcp_args.as_ref().unwrap_or(&empty);
            McpCall {
                method: "tools/call",
                name: Some(tool),
                arguments: Some(arguments),
                arguments_size: arguments.to_string().len(),
                definition: pin.as_deref(),
                first_pin: pin.as_deref(),
            }
        });
        let call = Call {
            peer: &self.peer,
            target,
            method: &self.method,
            path: &self.path,
            aws: self.aws.as_ref(),
            now: self.now,
            mcp: mcp.as_ref(),
        };
        f(&call)
    }
}
