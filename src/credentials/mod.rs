//! Credentials that clawgate injects so the agent never holds them.
//!
//! Three kinds, as the policy names them:
//! - `secret`: a value from an environment variable or a file (read when the
//!   policy loads) or from AWS Secrets Manager (fetched and cached with a
//!   TTL), injected into a header or a query parameter with a format;
//! - `aws`: minutes-long STS credentials minted by AssumeRole for one agent
//!   and scope, used to re-sign the agent's request with SigV4 or vended in
//!   the container-credentials format;
//! - `oauth2` ([`oauth`]): access tokens minted from an OAuth 2.0 token
//!   endpoint, cached until shortly before expiry, injected like secrets;
//! - `github_app` ([`github`]): GitHub App installation tokens, minted the
//!   same way;
//! - sentinels ([`sentinel`]): placeholders the agent holds, swapped for the
//!   real value only on the way to a host they are bound to.
//!
//! Fetched and minted credentials go through one [`Broker`] and its caches.
//! Invariants: a secret value lives only in a [`SecretString`]; it is never
//! formatted into a log line, an error, a record or `Debug` output. Records
//! get the kind and a non-secret reference (`env:NAME`,
//! `secretsmanager:ID`, an STS access key id), never the value.

mod broker;
pub mod cache;
pub mod decode;
pub mod github;
pub mod oauth;
pub mod sentinel;
mod signer;
pub mod sigv4;
pub mod sts;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

pub use broker::{Broker, BrokerConfig, MintContext, Source};
pub use sts::{AwsCredential, AwsSession};

/// Where a `secret` credential's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretSource {
    /// An environment variable of the clawgate process.
    Env(String),
    /// A file whose contents (less a trailing newline) are the value.
    File(PathBuf),
    /// An AWS Secrets Manager secret.
    SecretsManager(SecretsManagerRef),
}

/// A secret in AWS Secrets Manager, and optionally one key of its JSON value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretsManagerRef {
    /// The secret's name or ARN.
    pub id: String,
    /// A key of the JSON object in `SecretString`; the whole string if `None`.
    pub json_key: Option<String>,
    /// A version stage such as `AWSCURRENT`; the service's default if `None`.
    pub version_stage: Option<String>,
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "env:{name}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
            SecretSource::SecretsManager(sm) => {
                write!(f, "secretsmanager:{}", sm.id)?;
                if let Some(key) = &sm.json_key {
                    write!(f, "#{key}")?;
                }
                if let Some(stage) = &sm.version_stage {
                    write!(f, "@{stage}")?;
                }
                Ok(())
            }
        }
    }
}

/// A value format with exactly one `{}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    prefix: String,
    suffix: String,
}

impl Format {
    /// Parses a format; it must hold `{}` exactly once.
    pub fn parse(text: &str) -> Option<Format> {
        let (prefix, suffix) = text.split_once("{}")?;
        if suffix.contains("{}") {
            return None;
        }
        Some(Format {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    fn apply(&self, secret: &str) -> String {
        let mut text = String::with_capacity(self.prefix.len() + secret.len() + self.suffix.len());
        text.push_str(&self.prefix);
        text.push_str(secret);
        text.push_str(&self.suffix);
        text
    }
}

/// Where a secret goes in the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A header (the agent's own value for it is removed).
    Header(HeaderName),
    /// A query parameter (the agent's own value for it is removed).
    Query(String),
}

/// How long fetched secrets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretTiming {
    /// How long a fetched value is served before it is fetched again.
    pub ttl: Duration,
    /// How long past the TTL a value is still served while fetches fail.
    pub grace: Duration,
}

impl Default for SecretTiming {
    fn default() -> Self {
        SecretTiming {
            ttl: Duration::from_secs(300),
            grace: Duration::from_secs(900),
        }
    }
}

/// A secret value's source, with the value itself when it was read at load.
pub struct SecretValue {
    /// Where the value comes from; this is what records reference.
    pub source: SecretSource,
    /// Cache timing for fetched sources.
    pub timing: SecretTiming,
    /// The value of an `env` or `file` source, read when the policy loaded.
    loaded: Option<SecretString>,
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("source", &self.source)
            .field("loaded", &self.loaded.is_some())
            .finish_non_exhaustive()
    }
}

impl SecretValue {
    /// A value whose `env` or `file` source is read now, through `env` (the
    /// process environment in production, a map in tests). A Secrets Manager
    /// source is fetched per call through the [`Broker`].
    pub fn resolve(
        source: SecretSource,
        timing: SecretTiming,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> SecretValue {
        let loaded = match &source {
            SecretSource::Env(name) => env(name),
            SecretSource::File(path) => read_secret_file(path),
            SecretSource::SecretsManager(_) => None,
        }
        .filter(|v| !v.is_empty())
        .map(SecretString::from);
        SecretValue {
            source,
            timing,
            loaded,
        }
    }

    /// Whether the value is fetched per call (rather than read at load).
    pub fn is_fetched(&self) -> bool {
        matches!(self.source, SecretSource::SecretsManager(_))
    }

    /// Whether a value is known now (always true for fetched sources, whose
    /// availability is only known when fetched).
    pub fn is_available(&self) -> bool {
        self.is_fetched() || self.loaded.is_some()
    }

    /// The value read at load, for `env` and `file` sources.
    pub fn loaded(&self) -> Option<&SecretString> {
        self.loaded.as_ref()
    }
}

/// A `secret` credential: a value, a placement and a format.
#[derive(Debug)]
pub struct SecretCredential {
    /// The value and where it comes from.
    pub value: SecretValue,
    /// Where the value goes.
    pub placement: Placement,
    /// How the value is written.
    pub format: Format,
}

/// The credential a scope's calls receive.
#[derive(Debug)]
pub enum Credential {
    /// A secret injected into a header or query parameter.
    Secret(SecretCredential),
    /// STS credentials; the request is re-signed with SigV4.
    Aws(AwsCredential),
    /// An OAuth 2.0 access token, minted and injected like a secret.
    OAuth2(Arc<oauth::OAuthCredential>),
    /// A GitHub App installation token, minted and injected like a secret.
    GithubApp(Arc<github::GithubAppCredential>),
}

impl Credential {
    /// The kind, as recorded.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Secret(_) => "secret",
            Credential::Aws(_) => "aws",
            Credential::OAuth2(oauth) => oauth.kind(),
            Credential::GithubApp(_) => "github_app",
        }
    }

    /// A non-secret reference, as recorded before anything is fetched.
    pub fn reference(&self) -> String {
        match self {
            Credential::Secret(secret) => secret.value.source.to_string(),
            Credential::Aws(aws) => aws.role_arn.clone(),
            Credential::OAuth2(oauth) => oauth.reference(),
            Credential::GithubApp(app) => app.reference(),
        }
    }
}

/// A credential could not be had or used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// No value was available when the policy loaded.
    #[error("credential `{0}` has no value")]
    Missing(String),
    /// The value cannot be carried in a header (for example, it holds a newline).
    #[error("credential `{0}` is not a valid header value")]
    NotAHeaderValue(String),
    /// A fetch or mint failed; the message names the source, never a value.
    #[error("credential `{source_ref}` could not be fetched: {message}")]
    Fetch {
        /// The non-secret reference.
        source_ref: String,
        /// What went wrong.
        message: String,
    },
    /// The request cannot be signed.
    #[error("request cannot be signed: {0}")]
    Signing(String),
    /// A token could not be minted; the failure sets the refusal's reason.
    #[error("credential `{source_ref}` could not be minted: {message}")]
    Minted {
        /// The non-secret reference.
        source_ref: String,
        /// What kind of failure, for the reason.
        failure: oauth::MintFailure,
        /// What went wrong (never a token or a secret).
        message: String,
    },
}

impl CredentialError {
    /// The reason a call refused for this error carries.
    pub fn reason(&self) -> crate::error::Reason {
        match self {
            CredentialError::Minted { failure, .. } => failure.reason(),
            _ => crate::error::Reason::CredentialUnavailable,
        }
    }
}

impl SecretCredential {
    /// Removes whatever credential the agent sent (its `Authorization` and
    /// the target header or parameter) and places `value`. Header values are
    /// marked sensitive so that hyper never indexes them in HPACK tables.
    pub fn inject(
        &self,
        value: &SecretString,
        headers: &mut HeaderMap,
        query: &mut Option<String>,
    ) -> Result<(), CredentialError> {
        place(
            &self.placement,
            &self.format,
            &self.value.source.to_string(),
            value,
            headers,
            query,
        )
    }
}

/// Removes whatever credential the agent sent (its `Authorization` and the
/// target header or parameter) and places `value` with `format`. Header
/// values are marked sensitive so that hyper never indexes them in HPACK
/// tables. `reference` names the credential in an error.
pub(crate) fn place(
    placement: &Placement,
    format: &Format,
    reference: &str,
    value: &SecretString,
    headers: &mut HeaderMap,
    query: &mut Option<String>,
) -> Result<(), CredentialError> {
    let text = format.apply(value.expose_secret());
    headers.remove(http::header::AUTHORIZATION);
    match placement {
        Placement::Header(name) => {
            let mut header_value = HeaderValue::from_str(&text)
                .map_err(|_| CredentialError::NotAHeaderValue(reference.to_owned()))?;
            header_value.set_sensitive(true);
            headers.remove(name);
            headers.insert(name.clone(), header_value);
        }
        Placement::Query(name) => {
            let mut out = form_urlencoded::Serializer::new(String::new());
            if let Some(existing) = query.as_deref() {
                for (k, v) in form_urlencoded::parse(existing.as_bytes()) {
                    if k != name.as_str() {
                        out.append_pair(&k, &v);
                    }
                }
            }
            out.append_pair(name, &text);
            *query = Some(out.finish());
        }
    }
    Ok(())
}

impl From<cache::FetchAborted> for CredentialError {
    fn from(_: cache::FetchAborted) -> CredentialError {
        CredentialError::Fetch {
            source_ref: "-".into(),
            message: "the fetch was cut short".into(),
        }
    }
}

/// Reads a secret file, less one trailing newline.
pub(crate) fn read_secret_file(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|mut text| {
        let trimmed = text.trim_end_matches(['\r', '\n']).len();
        text.truncate(trimmed);
        text
    })
}

#[cfg(test)]
mod tests;
