//! Scoped policy: the file model, loading and validation, the compiled index,
//! and the one pure function that adjudicates a call.
//!
//! Invariants:
//! - [`decide`] does no I/O, reads no clock and cannot fail: deny by default,
//!   an explicit deny beats any allow, and every [`Decision`] names its reason
//!   and the rule or scope that decided it.
//! - A [`Policy`] only exists once every file in the directory validated; a
//!   broken directory never replaces a working policy (see [`load`]).
//! - Lookup is by index (identity, route, host, then one glob set per scope),
//!   never a scan over all rules.

pub mod ask;
pub mod aws;
mod cases;
mod credential;
mod decide;
pub mod diff;
mod exception;
mod explain;
mod file;
mod github;
mod glob;
mod load;
mod mcp;
mod mcp_results;
mod oauth;
mod parse;
mod path_hazard;
mod probe;
mod proxy_key;
mod report;
mod scope;
mod scope_net;
mod strictness;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use crate::credentials::Credential;
use crate::egress::{AllowPrivate, Blocked};
use crate::error::Reason;
use crate::identity::PeerName;

pub use cases::{CaseError, CaseReport, is_test_file, run_cases};
pub use decide::{NoTrace, Step, Trace, decide, decide_traced};
pub use exception::{Exception, Roles, rfc3339};
pub use explain::{Explanation, explain};
use glob::GlobIndex;
pub use load::{disk_digest, load};
pub use path_hazard::hazard as path_hazard;
pub use probe::{Caller, Probe, ProbeError, Resolved};
pub use proxy_key::ProxyKey;
pub use report::{DEFAULT_MAX_EXCEPTION, LoadError, LoadOptions, PolicyError};

/// Index of an agent in [`Policy::agents`].
pub type AgentId = usize;
/// Index of a scope in [`Policy::scopes`].
pub type ScopeId = usize;

/// A compiled, validated policy directory.
#[derive(Debug)]
pub struct Policy {
    agents: Vec<Agent>,
    scopes: Vec<Scope>,
    by_identity: HashMap<PeerName, AgentId>,
    by_route: HashMap<String, ScopeId>,
    by_host: HashMap<String, Vec<ScopeId>>,
    digest: String,
    files: Vec<PathBuf>,
    rule_count: usize,
    sentinels: crate::credentials::sentinel::Sentinels,
    exceptions: Vec<Exception>,
    roles: Roles,
}

/// An agent: a name, the identities that prove it, and its scopes.
#[derive(Debug)]
pub struct Agent {
    /// The agent's name, as written in policy and in every record.
    pub name: String,
    /// Identities that prove this agent.
    pub identities: Vec<PeerName>,
    /// The scopes this agent may use.
    pub scopes: Vec<ScopeId>,
    /// SHA-256 of the agent's token for the credential-vending listener.
    pub vend_token: Option<[u8; 32]>,
    /// The agent's proxy keys for the token listener (hashes only).
    pub proxy_keys: Vec<ProxyKey>,
    /// The agent's overall rate limit.
    pub rate: Option<crate::limits::Rate>,
}

/// Whether a scope's refusals are enforced or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refusals are enforced (the default).
    Enforce,
    /// Calls are allowed, and a refusal is recorded as `would_deny`.
    Report,
}

/// What the reflection guard does when a value clawgate injected (a
/// credential, a sentinel's value, an STS session) comes back in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reflection {
    /// Each occurrence is replaced by a fixed marker (the default).
    #[default]
    Redact,
    /// The response is cut: a 502 `credential-reflected` before its head is
    /// sent, a broken stream after.
    Refuse,
    /// Nothing is scanned (unsafe: the agent can read back what it must
    /// never hold).
    Off,
}

/// What a `CONNECT` to a scope's host becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectMode {
    /// clawgate terminates TLS with a minted leaf and runs every request
    /// inside through the pipeline.
    Intercept,
    /// Bytes are spliced through untouched; a host-level decision only.
    Tunnel,
}

impl ConnectMode {
    /// The name used in policy files and records.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnectMode::Intercept => "intercept",
            ConnectMode::Tunnel => "tunnel",
        }
    }
}

/// Where a scope's calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `https` or `http`.
    pub scheme: http::uri::Scheme,
    /// Lowercase host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// The port, defaulted from the scheme.
    pub port: u16,
    /// A path prefix prepended to every forwarded path; empty or `/x/y`.
    pub base_path: String,
}

impl Upstream {
    /// The authority as sent in `Host`, with the port only when it is not the
    /// scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl Upstream {
    /// The part of a full upstream `path` below the base path, which is what
    /// rules match; `None` when the path lies outside the base path.
    pub fn strip_base<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.base_path.is_empty() {
            return Some(path);
        }
        match path.strip_prefix(self.base_path.as_str())? {
            "" => Some("/"),
            rest if rest.starts_with('/') => Some(rest),
            _ => None,
        }
    }
}

/// A scope: one upstream, its rules, its mode and its credential.
#[derive(Debug)]
pub struct Scope {
    /// The scope's name.
    pub name: String,
    /// Where calls in this scope go.
    pub upstream: Upstream,
    /// The gateway route (`/<route>/…`), when the scope has one.
    pub route: Option<String>,
    /// Enforce or report.
    pub mode: Mode,
    /// Extra roots trusted for this upstream (private CAs).
    pub ca_certs: Arc<Vec<CertificateDer<'static>>>,
    /// The credential injected into calls in this scope.
    pub credential: Option<Arc<Credential>>,
    /// Intercept or tunnel `CONNECT`s to this scope's host.
    pub connect: ConnectMode,
    /// Private ranges and hosts this scope may reach.
    pub allow_private: Arc<AllowPrivate>,
    /// Ports an agent may name (`CONNECT`, absolute form) for this host.
    pub ports: Vec<u16>,
    /// Set when the upstream is an address literal (or `localhost`) in a
    /// refused range that `allow_private` does not name.
    pub blocked: Option<Blocked>,
    rules: RuleSet,
    aws_rules: Vec<aws::AwsRule>,
    /// The rate limit of each agent in this scope.
    pub rate: Option<crate::limits::Rate>,
    /// The scope's MCP rules, when its upstream speaks MCP.
    pub mcp: Option<Arc<crate::mcp::McpRules>>,
    /// `[[scope.ask]]`: calls that wait for a person's approval.
    pub ask: Vec<ask::AskRule>,
    /// What the reflection guard does with an injected value that comes
    /// back in a response.
    pub reflection: Reflection,
    /// What the scope lets through unchecked (all off by default).
    pub strictness: Strictness,
}

/// What a scope lets through that clawgate refuses by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strictness {
    /// A tunnel whose start is not a ClientHello naming a server
    /// (`tunnel_without_sni = "allow"`).
    pub tunnel_without_sni: bool,
    /// A tunnel whose ClientHello offers Encrypted Client Hello
    /// (`tunnel_ech = "allow"`).
    pub tunnel_ech: bool,
    /// Paths with hazards (segments ending in `.` or whitespace, characters
    /// that normalise to ASCII, invisible code points) are let through
    /// (`path_strictness = "lenient"`).
    pub lenient_paths: bool,
    /// Rules match the path case-folded (`case_insensitive_paths = true`).
    pub case_insensitive_paths: bool,
}

impl Scope {
    /// The scope's `aws` credential, when it has one.
    pub fn aws(&self) -> Option<&crate::credentials::AwsCredential> {
        match self.credential.as_deref() {
            Some(Credential::Aws(aws)) => Some(aws),
            _ => None,
        }
    }

    /// Whether some AWS rule names resources other than `*`: a record keeps
    /// the action, not the resource, so replay cannot re-decide then.
    pub fn aws_rules_name_resources(&self) -> bool {
        self.aws_rules
            .iter()
            .any(|r| r.resources.iter().any(|x| x != "*"))
    }

    /// The signing service and region: the credential's, else the host's.
    pub fn signing(&self) -> Option<(String, String)> {
        signing_of(self.aws()?, &self.upstream.host)
    }
}

/// The signing service and region of an `aws` credential towards `host`.
fn signing_of(aws: &crate::credentials::AwsCredential, host: &str) -> Option<(String, String)> {
    let derived = crate::credentials::sigv4::service_and_region(host);
    let service = aws
        .service
        .clone()
        .or_else(|| derived.as_ref().map(|d| d.0.clone()))?;
    let region = aws.region.clone().or_else(|| derived.map(|d| d.1))?;
    Some((service, region))
}

/// Whether a rule allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The call may proceed.
    Allow,
    /// The call is refused.
    Deny,
}

#[derive(Debug)]
struct Rule {
    id: Arc<str>,
    effect: Effect,
    /// `None` matches every method.
    methods: Option<Vec<String>>,
    /// The path globs as written (for `policy explain` and `policy diff`).
    paths: Vec<String>,
}

impl Rule {
    fn matches_method(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m == method))
    }
}

/// The rules of one scope, and every path glob pointing back at its rule.
#[derive(Debug, Default)]
struct RuleSet {
    globs: GlobIndex<usize>,
    rules: Vec<Rule>,
}

/// What the call names as its destination, before policy resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A gateway route: the first path segment of `https://clawgate/<route>/…`.
    Route(&'a str),
    /// A forward-proxy host (lowercase, no trailing dot) and explicit port.
    Host {
        /// The host name or IP literal.
        host: &'a str,
        /// The port the agent named, if any.
        port: Option<u16>,
    },
    /// A `CONNECT` to a host and port: a host-level decision.
    Connect {
        /// The host name or IP literal.
        host: &'a str,
        /// The requested port.
        port: u16,
    },
}

/// A call as adjudication sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The names the peer certificate proves, in precedence order.
    pub peer: &'a [PeerName],
    /// Where the call is headed.
    pub target: Target<'a>,
    /// The HTTP method.
    pub method: &'a str,
    /// The normalised path: below the route for a gateway call, the full
    /// upstream path for a forward-proxy call.
    pub path: &'a str,
    /// For a scope with an `aws` credential: the IAM action and resource the
    /// request maps to, or `None` when it maps to nothing.
    pub aws: Option<&'a aws::AwsRequest>,
    /// The time of the call, for exceptions (decide reads no clock).
    pub now: SystemTime,
    /// For a POST to an MCP scope's endpoint: the message, as read from the
    /// body (`None` when the body held none).
    pub mcp: Option<&'a crate::mcp::McpCall<'a>>,
}

/// The outcome of [`decide`]. Only `decide` makes one and its fields cannot
/// be changed afterwards, so a [`Permitted`] made from it is real proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    effect: Effect,
    reason: Reason,
    agent: Option<AgentId>,
    scope: Option<ScopeId>,
    rule: Option<Arc<str>>,
    would_deny: Option<Reason>,
    exception: Option<usize>,
}

impl Decision {
    /// The exception whose grant the call relied on, if any.
    pub fn exception(&self) -> Option<usize> {
        self.exception
    }

    /// Allow or deny.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// Why; [`Reason::Allowed`] when allowed.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The agent the peer was identified as.
    pub fn agent(&self) -> Option<AgentId> {
        self.agent
    }

    /// The scope that decided.
    pub fn scope(&self) -> Option<ScopeId> {
        self.scope
    }

    /// The id of the rule that decided, when a rule did.
    pub fn rule(&self) -> Option<&str> {
        self.rule.as_deref()
    }

    /// In report mode: the refusal that enforce mode would have made.
    pub fn would_deny(&self) -> Option<Reason> {
        self.would_deny
    }

    fn deny(reason: Reason, agent: Option<AgentId>, scope: Option<ScopeId>) -> Decision {
        Decision {
            effect: Effect::Deny,
            reason,
            agent,
            scope,
            rule: None,
            would_deny: None,
            exception: None,
        }
    }
}

/// Proof that [`decide`] allowed a call. Only this module can make one, so
/// code that forwards a call cannot be reached without a decision.
#[derive(Debug, Clone)]
pub struct Permitted {
    policy: Arc<Policy>,
    scope: ScopeId,
}

impl Permitted {
    /// Turns an allowing decision into a permit; a denial stays a denial.
    pub fn new(policy: &Arc<Policy>, decision: &Decision) -> Option<Permitted> {
        match (decision.effect, decision.scope) {
            (Effect::Allow, Some(scope)) => Some(Permitted {
                policy: Arc::clone(policy),
                scope,
            }),
            _ => None,
        }
    }

    /// The scope the call was permitted in.
    pub fn scope(&self) -> &Scope {
        &self.policy.scopes[self.scope]
    }
}

impl Policy {
    /// The scope of `agent` that `target` lands in, if any.
    pub fn scope_for(&self, agent_id: AgentId, target: Target<'_>) -> Option<ScopeId> {
        let agent = &self.agents[agent_id];
        match target {
            Target::Route(route) => self
                .by_route
                .get(route)
                .copied()
                .filter(|id| agent.scopes.contains(id)),
            Target::Host { host, port } => self.by_host.get(host).and_then(|ids| {
                ids.iter().copied().find(|id| {
                    agent.scopes.contains(id)
                        && port.is_none_or(|p| self.scopes[*id].ports.contains(&p))
                })
            }),
            Target::Connect { host, port } => self.by_host.get(host).and_then(|ids| {
                ids.iter()
                    .copied()
                    .find(|id| agent.scopes.contains(id) && self.scopes[*id].ports.contains(&port))
            }),
        }
    }

    /// The scope `target` lands in for `agent` at `now`: one of its own
    /// scopes, else one granted by an exception still active at `now` (with
    /// that exception's index).
    pub fn scope_at(
        &self,
        agent_id: AgentId,
        target: Target<'_>,
        now: SystemTime,
    ) -> Option<(ScopeId, Option<usize>)> {
        if let Some(id) = self.scope_for(agent_id, target) {
            return Some((id, None));
        }
        self.exceptions
            .iter()
            .enumerate()
            .filter(|(_, e)| e.agent == agent_id && e.active_at(now))
            .find_map(|(i, e)| {
                e.scopes
                    .iter()
                    .copied()
                    .find(|&id| self.lands_in(id, target))
                    .map(|id| (id, Some(i)))
            })
    }

    fn lands_in(&self, id: ScopeId, target: Target<'_>) -> bool {
        let scope = &self.scopes[id];
        match target {
            Target::Route(route) => scope.route.as_deref() == Some(route),
            Target::Host { host, port } => {
                scope.upstream.host == host && port.is_none_or(|p| scope.ports.contains(&p))
            }
            Target::Connect { host, port } => {
                scope.upstream.host == host && scope.ports.contains(&port)
            }
        }
    }

    /// Every exception, expired or not.
    pub fn exceptions(&self) -> &[Exception] {
        &self.exceptions
    }

    /// Who may use the admin API.
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// The scope named `name`, if any.
    pub fn scope_named(&self, name: &str) -> Option<ScopeId> {
        self.scopes.iter().position(|s| s.name == name)
    }

    /// The policy's sentinels.
    pub fn sentinels(&self) -> &crate::credentials::sentinel::Sentinels {
        &self.sentinels
    }

    /// The agent a certificate proves. Only the strongest kind of name the
    /// certificate carries counts (URI SANs, else DNS SANs, else the CN): a
    /// certificate with an unknown SPIFFE id is not rescued by its CN. Names
    /// of that kind that point at two agents prove neither.
    pub fn agent_for(&self, names: &[PeerName]) -> Option<AgentId> {
        let strongest = std::mem::discriminant(names.first()?);
        let mut found = None;
        for name in names
            .iter()
            .filter(|n| std::mem::discriminant(*n) == strongest)
        {
            if let Some(&id) = self.by_identity.get(name) {
                match found {
                    None => found = Some(id),
                    Some(other) if other != id => return None,
                    Some(_) => {}
                }
            }
        }
        found
    }

    /// The agent with this id.
    pub fn agent(&self, id: AgentId) -> &Agent {
        &self.agents[id]
    }

    /// The scope with this id.
    pub fn scope(&self, id: ScopeId) -> &Scope {
        &self.scopes[id]
    }

    /// All agents.
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    /// All scopes.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// `sha256:<hex>` over the names and contents of every policy file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The files this policy was loaded from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// How many allow and deny rules the policy holds.
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// The one-line summary `policy check` prints.
    pub fn summary(&self) -> String {
        format!(
            "{} agents, {} scopes, {} rules, digest {}",
            self.agents.len(),
            self.scopes.len(),
            self.rule_count,
            self.digest
        )
    }
}
