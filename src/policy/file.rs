//! The policy file model: what an admin writes, exactly as TOML spells it.
//!
//! Every value that validation may complain about is `Spanned`, so an error
//! can name its file, line and column. Unknown fields are errors: a typo in a
//! security policy must never be silently ignored.

use serde::Deserialize;
use toml::Spanned;

/// One `*.toml` file in the policy directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    #[serde(default)]
    pub agent: Vec<Spanned<AgentFile>>,
    #[serde(default)]
    pub scope: Vec<Spanned<ScopeFile>>,
}

/// `[[agent]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentFile {
    pub name: Spanned<String>,
    pub identities: Vec<Spanned<String>>,
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
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
    #[serde(default)]
    pub allow: Vec<Spanned<RuleFile>>,
    #[serde(default)]
    pub deny: Vec<Spanned<RuleFile>>,
}

/// `[[scope.allow]]` and `[[scope.deny]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleFile {
    pub id: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub paths: Vec<Spanned<String>>,
}

/// `[scope.credential]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialFile {
    pub kind: Spanned<String>,
    pub env: Option<Spanned<String>>,
    pub file: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
}
