//! What MCP adjudication keeps between messages: definition pins, the
//! `tools/list` requests whose results are still to come (per session), and
//! the key that hashes arguments for records.
//!
//! Invariants:
//! - Arguments never reach a record: only their keyed hash does.
//! - Pending ids are bounded per session and in sessions, so an agent that
//!   never reads its results cannot grow memory without bound. Past the
//!   bound a list result is still filtered: the response side also treats
//!   any non-own result carrying a `tools` array as a list.

use std::collections::HashSet;

use dashmap::DashMap;
use ring::hmac;
use serde_json::Value;

use super::pins::{PinStore, canonical};

/// Most pending `tools/list` ids kept per session.
const MAX_PENDING: usize = 1024;
/// Most sessions with pending ids.
const MAX_SESSIONS: usize = 65_536;

/// Shared MCP state of one clawgate process.
pub struct McpState {
    /// Tool definitions seen, per scope.
    pub pins: PinStore,
    pending: DashMap<(String, String), HashSet<String>>,
    key: hmac::Key,
}

impl std::fmt::Debug for McpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpState").finish_non_exhaustive()
    }
}

/// Reads the 32-byte argument key at `path`, or makes one (mode 0600).
pub fn load_or_create_key(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "shorter than 32 bytes",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut key = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| std::io::Error::other("no randomness available"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    std::io::Write::write_all(&mut file, &key)?;
    file.sync_all()?;
    Ok(key)
}

impl McpState {
    /// State whose argument hashes are keyed with `key` (at least 32 bytes
    /// of secret).
    pub fn new(key: &[u8]) -> McpState {
        McpState {
            pins: PinStore::default(),
            pending: DashMap::new(),
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// State with a random key: hashes match within this process only.
    pub fn ephemeral() -> McpState {
        let mut key = [0u8; 32];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key);
        McpState::new(&key)
    }

    /// `hmac-sha256:<hex>` of the arguments' canonical JSON.
    pub fn arguments_hash(&self, arguments: &Value) -> String {
        let mut text = String::new();
        canonical(arguments, &mut text);
        let tag = hmac::sign(&self.key, text.as_bytes());
        format!("hmac-sha256:{}", hex::encode(tag.as_ref()))
    }

    /// Notes that `tools/list` request `id` was sent in `session` of `scope`.
    pub fn expect_list(&self, scope: &str, session: &str, id: &str) {
        let key = (scope.to_owned(), session.to_owned());
        if !self.pending.contains_key(&key) && self.pending.len() >= MAX_SESSIONS {
            return;
        }
        let mut ids = self.pending.entry(key).or_default();
        if ids.len() < MAX_PENDING {
            ids.insert(id.to_owned());
        }
    }

    /// Whether a response with `id` in `session` answers a pending
    /// `tools/list`; it is pending no more.
    pub fn take_list(&self, scope: &str, session: &str, id: &str) -> bool {
        let key = (scope.to_owned(), session.to_owned());
        let Some(mut ids) = self.pending.get_mut(&key) else {
            return false;
        };
        let found = ids.remove(id);
        let empty = ids.is_empty();
        drop(ids);
        if empty {
            self.pending.remove_if(&key, |_, ids| ids.is_empty());
        }
        found
    }

    /// Forgets a session (`DELETE`).
    pub fn end_session(&self, scope: &str, session: &str) {
        self.pending.remove(&(scope.to_owned(), session.to_owned()));
    }
}
