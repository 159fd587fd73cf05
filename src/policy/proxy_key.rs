//! Per-agent proxy keys: `[[agent.proxy_key]]` entries, compiled and looked
//! up by hash.
//!
//! A proxy key is the password a long-running agent (one whose environment
//! is read once, at start) puts in its proxy URL for the token listener.
//! Policy holds only its SHA-256, never the key. Rotation is a policy edit:
//! add the new key, give the old one an `expires` a little ahead (the
//! overlap window), and remove it once it has lapsed.
//!
//! Invariants: key ids and hashes are unique across the whole policy (an
//! override names a key by id, and one secret must prove one agent); a key
//! past its `expires` proves nothing.

use std::collections::HashSet;
use std::time::SystemTime;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use toml::Spanned;

use super::report::Report;
use super::{AgentId, Policy, rfc3339};

/// `[[agent.proxy_key]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProxyKeyFile {
    pub id: Spanned<String>,
    /// Lowercase hex SHA-256 of the key, as `clawgate proxy-key new` prints it.
    pub sha256: Spanned<String>,
    /// RFC 3339; absent means until removed from policy.
    pub expires: Option<Spanned<String>>,
}

/// One compiled proxy key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyKey {
    /// The key's id: what records and overrides name.
    pub id: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// After this the key proves nothing.
    pub expires: Option<SystemTime>,
}

impl ProxyKey {
    /// Whether the key still proves its agent at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|expires| now < expires)
    }
}

/// Ids and hashes already used, across every agent of the policy.
#[derive(Debug, Default)]
pub(super) struct SeenKeys {
    ids: HashSet<String>,
    hashes: HashSet<[u8; 32]>,
}

/// Compiles one agent's proxy keys, reporting every problem.
pub(super) fn compile_proxy_keys(
    report: &mut Report<'_>,
    file: usize,
    agent: &str,
    keys: &[Spanned<ProxyKeyFile>],
    seen: &mut SeenKeys,
    now: SystemTime,
) -> Vec<ProxyKey> {
    let mut compiled = Vec::with_capacity(keys.len());
    for key in keys {
        let key = key.get_ref();
        let id = key.id.get_ref();
        if !super::report::valid_name(id) {
            report.error(
                file,
                key.id.span(),
                format!("proxy key id `{id}` must be 1 to 64 of a-z, 0-9, `.`, `_`, `-`"),
            );
        }
        if !seen.ids.insert(id.clone()) {
            report.error(
                file,
                key.id.span(),
                format!("proxy key id `{id}` is used twice"),
            );
        }
        let Some(sha256) = parse_sha256(key.sha256.get_ref()) else {
            report.error(
                file,
                key.sha256.span(),
                format!(
                    "proxy key `{id}` in agent `{agent}`: `sha256` must be 64 lowercase hex digits"
                ),
            );
            continue;
        };
        if !seen.hashes.insert(sha256) {
            report.error(
                file,
                key.sha256.span(),
                format!("proxy key `{id}` in agent `{agent}` has the hash of another key"),
            );
        }
        let expires = match &key.expires {
            None => None,
            Some(text) => match OffsetDateTime::parse(text.get_ref(), &Rfc3339) {
                Ok(t) => Some(SystemTime::from(t)),
                Err(_) => {
                    report.error(
                        file,
                        text.span(),
                        format!(
                            "proxy key `{id}`: `expires` `{}` is not an RFC 3339 time",
                            text.get_ref()
                        ),
                    );
                    continue;
                }
            },
        };
        if let (Some(text), Some(expires)) = (&key.expires, expires)
            && expires <= now
        {
            report.warn(
                file,
                text.span(),
                format!(
                    "proxy key `{id}` expired at {}; it opens nothing",
                    rfc3339(expires)
                ),
            );
        }
        compiled.push(ProxyKey {
            id: id.clone(),
            sha256,
            expires,
        });
    }
    compiled
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

impl Policy {
    /// The agent whose proxy key has this SHA-256, and the key, whether or
    /// not it is still valid (the caller tells expired from unknown).
    ///
    /// A scan over every agent's keys: a handful per agent, and only calls
    /// on the token listener that carry a key pay for it.
    pub fn proxy_key(&self, sha256: &[u8; 32]) -> Option<(AgentId, &ProxyKey)> {
        self.agents.iter().enumerate().find_map(|(id, agent)| {
            agent
                .proxy_keys
                .iter()
                .find(|k| &k.sha256 == sha256)
                .map(|k| (id, k))
        })
    }
}

#[cfg(test)]
#[path = "proxy_key_tests.rs"]
mod tests;
