//! The policy file model: what an admin writes, exactly as TOML spells it.
//!
//! Every value that validation may complain about is `Spanned`, so an error
//! can name its file, line and column. Unknown fields are errors: a typo in a
//! security policy must never be silently ignored.

use serde::Deserialize;
use toml::Spanned;

/// `[[exception]]`: a time-boxed grant of scopes to one agent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExceptionFile {
    pub id: Spanned<String>,
    pub agent: Spanned<String>,
    pub scopes: Vec<Spanned<String>>,
    pub reason: Spanned<String>,
    pub approved_by: Spanned<String>,
    pub ticket: Option<Spanned<String>>,
    /// RFC 3339; required and bounded.
    pub expires: Spanned<String>,
}

/// `[roles]`: who may use the admin API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RolesFile {
    #[serde(default)]
    pub admins: Vec<Spanned<String>>,
    #[serde(default)]
    pub auditors: Vec<Spanned<String>>,
}

/// `[[agent]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentFile {
    pub name: Spanned<String>,
    pub identities: Vec<Spanned<String>>,
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    /// A file holding the agent's token for the credential-vending listener.
    pub vend_token_file: Option<Spanned<String>>,
    /// Proxy keys for the token listener, stored as hashes.
    #[serde(default)]
    pub proxy_key: Vec<Spanned<super::proxy_key::ProxyKeyFile>>,
    /// The agent's overall rate, `60/min`.
    pub rate: Option<Spanned<String>>,
    pub burst: Option<Spanned<u32>>,
}

/// `[[scope]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScopeFile {
    pub name: Spanned<String>,
    pub upstream: Spanned<String>,
    pub route: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub credential: Option<Spanned<CredentialFile>>,
    /// `intercept` or `tunnel`, for `CONNECT` to this scope's host.
    pub connect: Option<Spanned<String>>,
    /// Private addresses, ranges and hosts this scope may reach.
    pub allow_private: Option<Vec<Spanned<String>>>,
    /// Ports an agent may name for this scope's host.
    pub ports: Option<Spanned<Vec<u16>>>,
    /// The rate of each agent in this scope, `60/min`.
    pub rate: Option<Spanned<String>>,
    pub burst: Option<Spanned<u32>>,
    #[serde(default)]
    pub allow: Vec<Spanned<RuleFile>>,
    #[serde(default)]
    pub deny: Vec<Spanned<RuleFile>>,
    /// `[[scope.ask]]`: calls that wait for a person (see `ask.rs`).
    #[serde(default)]
    pub ask: Vec<Spanned<super::ask::AskFile>>,
    /// `[scope.mcp]`: the upstream speaks MCP; its rules (see `mcp.rs`).
    pub mcp: Option<Spanned<super::mcp::McpFile>>,
    /// `refuse` (default) or `allow`: a tunnel whose ClientHello names no
    /// server (or that is not TLS).
    pub tunnel_without_sni: Option<Spanned<String>>,
    /// `refuse` (default) or `allow`: a tunnel whose ClientHello offers
    /// Encrypted Client Hello.
    pub tunnel_ech: Option<Spanned<String>>,
    /// `strict` (default) or `lenient`: whether path hazards are refused.
    pub path_strictness: Option<Spanned<String>>,
    /// Rules match paths case-folded, for upstreams that fold case.
    pub case_insensitive_paths: Option<Spanned<bool>>,
    /// `redact` (default), `refuse` or `off`: injected values in responses.
    pub reflection: Option<Spanned<String>>,
}

/// `[[scope.allow]]` and `[[scope.deny]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleFile {
    pub id: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    /// IAM actions, for scopes whose credential is `aws`.
    pub actions: Option<Vec<Spanned<String>>>,
    /// Resource ARNs for `actions` (every resource when absent).
    pub resources: Option<Vec<Spanned<String>>>,
}

/// `[scope.credential]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialFile {
    pub kind: Spanned<String>,
    pub env: Option<Spanned<String>>,
    pub file: Option<Spanned<String>>,
    pub secrets_manager: Option<Spanned<String>>,
    pub json_key: Option<Spanned<String>>,
    pub version_stage: Option<Spanned<String>>,
    pub ttl: Option<Spanned<String>>,
    pub grace: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    // `aws`
    pub role_arn: Option<Spanned<String>>,
    pub duration_minutes: Option<Spanned<u64>>,
    pub refresh_margin: Option<Spanned<String>>,
    pub safety_margin: Option<Spanned<String>>,
    pub external_id: Option<Spanned<String>>,
    pub session_tags: Option<Spanned<bool>>,
    pub service: Option<Spanned<String>>,
    pub region: Option<Spanned<String>>,
    pub unsigned_payload: Option<Spanned<bool>>,
    pub max_signed_body: Option<Spanned<u64>>,
    pub vend: Option<Spanned<bool>>,
    // `oauth2`
    pub token_endpoint: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<String>>,
    pub private_key_file: Option<Spanned<String>>,
    pub key_id: Option<Spanned<String>>,
    pub signing_alg: Option<Spanned<String>>,
    pub scope: Option<Spanned<String>>,
    pub resource: Option<Vec<Spanned<String>>>,
    pub audience: Option<Spanned<String>>,
    pub token_ca_file: Option<Spanned<String>>,
    pub token_allow_private: Option<Vec<Spanned<String>>>,
    // `oauth2` with the `refresh_token` grant
    pub refresh_token_file: Option<Spanned<String>>,
    pub refresh_token_secrets_manager: Option<Spanned<String>>,
    // `jwt_bearer`
    pub assertion_issuer: Option<Spanned<String>>,
    pub subject: Option<Spanned<String>>,
    // `github_app`
    pub api_url: Option<Spanned<String>>,
    pub app_id: Option<Spanned<u64>>,
    pub installation_id: Option<Spanned<u64>>,
    pub repositories: Option<Vec<Spanned<String>>>,
    pub permissions: Option<Spanned<std::collections::BTreeMap<String, String>>>,
}

/// The fields that say where a secret value comes from, shared by
/// credentials and sentinels (serde's `flatten` would lose the spans).
#[derive(Debug, Clone, Copy)]
pub(super) struct ValueFields<'a> {
    pub env: Option<&'a Spanned<String>>,
    pub file: Option<&'a Spanned<String>>,
    pub secrets_manager: Option<&'a Spanned<String>>,
    pub json_key: Option<&'a Spanned<String>>,
    pub version_stage: Option<&'a Spanned<String>>,
    pub ttl: Option<&'a Spanned<String>>,
    pub grace: Option<&'a Spanned<String>>,
}

macro_rules! value_fields {
    ($t:ty) => {
        impl $t {
            pub fn value_fields(&self) -> ValueFields<'_> {
                ValueFields {
                    env: self.env.as_ref(),
                    file: self.file.as_ref(),
                    secrets_manager: self.secrets_manager.as_ref(),
                    json_key: self.json_key.as_ref(),
                    version_stage: self.version_stage.as_ref(),
                    ttl: self.ttl.as_ref(),
                    grace: self.grace.as_ref(),
                }
            }
        }
    };
}
value_fields!(CredentialFile);
value_fields!(SentinelFile);

/// `[[sentinel]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SentinelFile {
    pub name: Spanned<String>,
    pub placeholder: Spanned<String>,
    pub hosts: Vec<Spanned<String>>,
    /// The agents that may use the placeholder; every agent when absent.
    pub agents: Option<Vec<Spanned<String>>>,
    pub env: Option<Spanned<String>>,
    pub file: Option<Spanned<String>>,
    pub secrets_manager: Option<Spanned<String>>,
    pub json_key: Option<Spanned<String>>,
    pub version_stage: Option<Spanned<String>>,
    pub ttl: Option<Spanned<String>>,
    pub grace: Option<Spanned<String>>,
}
