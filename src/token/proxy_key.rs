//! Per-agent proxy keys: making one, telling one from a run token, and
//! proving an agent with one on the token listener.
//!
//! A proxy key is a bearer secret (`cgpk_` and 43 base64url characters, 256
//! random bits) for agents whose environment is read once at start, such as
//! an OpenClaw gateway, where a run token of minutes would lapse. Policy
//! holds its SHA-256 only (`[[agent.proxy_key]]`). A plain hash suffices: the
//! key is random, not a password a person chose.
//!
//! Invariants: the key is checked against the policy in force on every call
//! (a key removed by a reload, or past its `expires`, opens nothing from the
//! next call on), then against `revoke-proxy-key` overrides; records name the
//! key by id, never by value.

use std::time::SystemTime;

use base64::Engine;
use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};

use crate::audit::DecisionRecord;
use crate::error::Reason;
use crate::overrides::Overrides;
use crate::policy::{AgentId, Policy};

/// Every proxy key starts with this, so the token listener tells it from a
/// run token (a JWT) without trying both.
pub const PREFIX: &str = "cgpk_";

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProxyKeyError {
    /// The system's random source failed.
    #[error("no randomness available for a proxy key")]
    Random,
}

/// A fresh proxy key.
pub fn generate() -> Result<String, ProxyKeyError> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ProxyKeyError::Random)?;
    Ok(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Whether a proxy password is a proxy key (rather than a run token).
pub fn is_proxy_key(password: &str) -> bool {
    password.starts_with(PREFIX)
}

/// The SHA-256 policy stores for a key.
pub fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// What a record says about the credential: the key's id.
pub fn record_ref(id: &str) -> String {
    format!("proxy-key:{id}")
}

/// Proves the agent a key belongs to, against the policy in force and the
/// overrides at `now`. Fills the record's agent and credential reference as
/// far as they are known.
pub fn identify(
    policy: &Policy,
    overrides: &Overrides,
    sha256: &[u8; 32],
    now: SystemTime,
    record: &mut DecisionRecord,
) -> Result<AgentId, Reason> {
    let Some((agent, key)) = policy.proxy_key(sha256) else {
        return Err(Reason::ProxyKeyInvalid);
    };
    record.agent = Some(policy.agent(agent).name.clone());
    record.cert_fp = Some(record_ref(&key.id));
    if !key.valid_at(now) {
        return Err(Reason::ProxyKeyExpired);
    }
    if let Some(o) = overrides.revoking_proxy_key(&key.id, now) {
        record.add_detail(&format!("override {}", o.id));
        return Err(Reason::ProxyKeyRevoked);
    }
    Ok(agent)
}

/// Where `proxy-key new` writes an agent's key, and `env` looks for it.
pub fn key_path(certs_dir: &std::path::Path, agent: &str) -> std::path::PathBuf {
    certs_dir.join("agents").join(format!("{agent}.proxy-key"))
}

/// Why a key file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// No key could be made.
    #[error(transparent)]
    Key(#[from] ProxyKeyError),
    /// The file exists and `--force` was not given.
    #[error(
        "`{0}` exists; pass --force to replace it (rotate: keep the old key in policy with `expires` until agents restart)"
    )]
    Exists(std::path::PathBuf),
    /// The file could not be written.
    #[error("cannot write `{path}`: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Makes a key for `agent`, writes it (mode 0600) beside the agent's
/// certificates, and returns the file and the policy entry that admits it.
pub fn write_new(
    certs_dir: &std::path::Path,
    agent: &str,
    id: &str,
    force: bool,
) -> Result<(std::path::PathBuf, String), KeyFileError> {
    use std::io::Write as _;
    let path = key_path(certs_dir, agent);
    if path.exists() && !force {
        return Err(KeyFileError::Exists(path));
    }
    let key = generate()?;
    let write_error = |source| KeyFileError::Write {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(write_error)?;
    file.write_all(key.as_bytes()).map_err(write_error)?;
    file.write_all(b"\n").map_err(write_error)?;
    let entry = format!(
        "[[agent.proxy_key]]   # under the [[agent]] entry of `{agent}`\nid = \"{id}\"\nsha256 = \"{}\"\n",
        hex::encode(sha256(&key))
    );
    Ok((path, entry))
}
