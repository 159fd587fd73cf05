//! Credentials that clawgate injects so the agent never holds them.
//!
//! This slice knows one kind, `secret`: a value read from an environment
//! variable or a file when the policy loads, injected into a named header with
//! a format such as `Bearer {}`. Later kinds (Secrets Manager, sentinels, STS)
//! plug in here.
//!
//! Invariants: a secret value lives only in a [`SecretString`]; it is never
//! formatted into a log line, an error, a record or `Debug` output. The record
//! gets the credential's kind and a non-secret reference (`env:NAME`,
//! `file:PATH`), never the value.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

/// Where a `secret` credential's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the clawgate process.
    Env(String),
    /// A file whose contents (less a trailing newline) are the value.
    File(std::path::PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "env:{name}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
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
}

/// A credential that calls in one scope receive.
pub struct Credential {
    /// Where the value comes from; this is what records reference.
    pub source: SecretSource,
    /// The header the value is injected into.
    pub header: HeaderName,
    /// How the value is written into the header.
    pub format: Format,
    /// The value, or `None` when it could not be read at load time.
    value: Option<SecretString>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("source", &self.source)
            .field("header", &self.header)
            .field("available", &self.value.is_some())
            .finish_non_exhaustive()
    }
}

/// The credential could not be injected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// No value was available when the policy loaded.
    #[error("credential `{0}` has no value")]
    Missing(String),
    /// The value cannot be carried in a header (for example, it holds a newline).
    #[error("credential `{0}` is not a valid header value")]
    NotAHeaderValue(String),
}

impl Credential {
    /// Reads the value from its source through `env` (the process environment
    /// in production, a map in tests).
    pub fn resolve(
        source: SecretSource,
        header: HeaderName,
        format: Format,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Credential {
        let value = match &source {
            SecretSource::Env(name) => env(name),
            SecretSource::File(path) => std::fs::read_to_string(path).ok().map(|mut text| {
                let trimmed = text.trim_end_matches(['\r', '\n']).len();
                text.truncate(trimmed);
                text
            }),
        }
        .filter(|v| !v.is_empty())
        .map(SecretString::from);
        Credential {
            source,
            header,
            format,
            value,
        }
    }

    /// Whether a value was read.
    pub fn is_available(&self) -> bool {
        self.value.is_some()
    }

    /// The kind, as recorded.
    pub fn kind(&self) -> &'static str {
        "secret"
    }

    /// Removes whatever credential the agent sent (its `Authorization` and the
    /// target header) and inserts the real one, marked sensitive so that hyper
    /// never indexes it in HPACK tables.
    pub fn inject(&self, headers: &mut HeaderMap) -> Result<(), CredentialError> {
        let value = self
            .value
            .as_ref()
            .ok_or_else(|| CredentialError::Missing(self.source.to_string()))?;
        let secret = value.expose_secret();
        let mut text = String::with_capacity(
            self.format.prefix.len() + secret.len() + self.format.suffix.len(),
        );
        text.push_str(&self.format.prefix);
        text.push_str(secret);
        text.push_str(&self.format.suffix);
        let mut header_value = HeaderValue::from_str(&text)
            .map_err(|_| CredentialError::NotAHeaderValue(self.source.to_string()))?;
        header_value.set_sensitive(true);
        headers.remove(http::header::AUTHORIZATION);
        headers.remove(&self.header);
        headers.insert(self.header.clone(), header_value);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
