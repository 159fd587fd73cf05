//! Sentinels: placeholders the agent holds in place of a secret.
//!
//! The policy binds each placeholder to a secret and to the hosts it may go
//! to. On the way out, clawgate looks for placeholders in the request's
//! path, header names and values, its query string and its body (up to the
//! scan limit; a longer body from an agent that may hold a placeholder is
//! refused), each also decoded (percent, JSON escapes, quoted-printable,
//! base64 runs); a
//! placeholder headed to a host it is bound to is swapped for the real value,
//! and one headed anywhere else refuses the whole call (`sentinel-misdirected`)
//! before anything is forwarded.
//!
//! Invariants: a placeholder is random and says nothing about its secret
//! (`clawgate sentinel new`); the real value is only ever written into a
//! request bound for one of the sentinel's hosts.

use aho_corasick::AhoCorasick;
use secrecy::{ExposeSecret, SecretString};

use super::SecretValue;

/// The prefix of every placeholder `clawgate sentinel new` makes.
pub const PREFIX: &str = "clawgate-sentinel-";
/// The shortest placeholder a policy may bind: long enough that it never
/// turns up in a request by accident.
pub const MIN_PLACEHOLDER: usize = 24;

/// One sentinel.
#[derive(Debug)]
pub struct Sentinel {
    /// Its name in policy and in records.
    pub name: String,
    /// The placeholder the agent holds.
    pub placeholder: String,
    /// The hosts (lowercase) the real value may go to.
    pub hosts: Vec<String>,
    /// The agents that may have it swapped in; every agent when `None`.
    pub agents: Option<Vec<String>>,
    /// The real value.
    pub value: SecretValue,
}

/// Every sentinel of a policy, with one matcher over all placeholders.
#[derive(Debug, Default)]
pub struct Sentinels {
    list: Vec<Sentinel>,
    matcher: Option<AhoCorasick>,
}

/// Which sentinels a request holds (indexes into the policy's list).
pub type Found = Vec<usize>;

impl Sentinels {
    /// Builds the matcher. Placeholders are validated by the policy loader.
    pub fn new(list: Vec<Sentinel>) -> Sentinels {
        let matcher = (!list.is_empty())
            .then(|| {
                // Case-insensitive: header names arrive lowercased, and a
                // placeholder in other case still names its secret.
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(list.iter().map(|s| s.placeholder.as_bytes()))
                    .ok()
            })
            .flatten();
        Sentinels { list, matcher }
    }

    /// Whether the policy has any sentinel (so requests must be scanned).
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The sentinel at `index`.
    pub fn get(&self, index: usize) -> &Sentinel {
        &self.list[index]
    }

    /// All sentinels.
    pub fn all(&self) -> &[Sentinel] {
        &self.list
    }

    /// Adds every sentinel whose placeholder occurs in `haystack` to `found`.
    pub fn scan(&self, haystack: &[u8], found: &mut Found) {
        let Some(matcher) = &self.matcher else {
            return;
        };
        for m in matcher.find_overlapping_iter(haystack) {
            let i = m.pattern().as_usize();
            if !found.contains(&i) {
                found.push(i);
            }
        }
    }

    /// Scans `haystack` and each decoded spelling of it (percent, JSON,
    /// quoted-printable; see [`super::decode`]).
    pub fn scan_decoded(&self, haystack: &[u8], found: &mut Found) {
        if self.matcher.is_none() {
            return;
        }
        self.scan(haystack, found);
        for variant in super::decode::variants(haystack) {
            self.scan(&variant, found);
        }
    }

    /// `text` with every placeholder replaced by `[sentinel <name>]`: what
    /// an approver may be shown of a request.
    pub fn mask(&self, text: &str) -> String {
        let Some(matcher) = &self.matcher else {
            return text.to_owned();
        };
        let names: Vec<String> = self
            .list
            .iter()
            .map(|s| format!("[sentinel {}]", s.name))
            .collect();
        matcher.replace_all(text, &names)
    }

    /// Whether `agent` may hold any placeholder (a sentinel without an
    /// `agents` list, or one naming it).
    pub fn bears(&self, agent: &str) -> bool {
        self.list.iter().any(|s| {
            s.agents
                .as_ref()
                .is_none_or(|agents| agents.iter().any(|a| a == agent))
        })
    }

    /// The first sentinel in `found` that may not go to `host` for `agent`.
    pub fn misdirected(&self, found: &Found, host: &str, agent: &str) -> Option<&Sentinel> {
        found.iter().map(|&i| &self.list[i]).find(|s| {
            !s.hosts.iter().any(|h| h == host)
                || s.agents
                    .as_ref()
                    .is_some_and(|agents| !agents.iter().any(|a| a == agent))
        })
    }

    /// `haystack` with every placeholder replaced by its value, each value
    /// passed through `encode` first (identity for headers and bodies,
    /// percent-encoding for a query string). `values[i]` holds the value of
    /// sentinel `i` when it was found.
    pub fn replace(
        &self,
        haystack: &[u8],
        values: &[Option<std::sync::Arc<SecretString>>],
        encode: fn(&str) -> String,
    ) -> Vec<u8> {
        let Some(matcher) = &self.matcher else {
            return haystack.to_vec();
        };
        let mut out = Vec::with_capacity(haystack.len());
        let mut last = 0;
        for m in matcher.find_iter(haystack) {
            out.extend_from_slice(&haystack[last..m.start()]);
            match values.get(m.pattern().as_usize()).and_then(Option::as_ref) {
                Some(value) => out.extend_from_slice(encode(value.expose_secret()).as_bytes()),
                None => out.extend_from_slice(&haystack[m.start()..m.end()]),
            }
            last = m.end();
        }
        out.extend_from_slice(&haystack[last..]);
        out
    }
}

/// A fresh placeholder: the prefix and 32 random hex digits.
pub fn new_placeholder() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    Ok(format!("{PREFIX}{}", hex::encode(bytes)))
}

#[cfg(test)]
#[path = "sentinel_tests.rs"]
mod tests;
