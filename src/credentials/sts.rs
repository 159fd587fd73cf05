//! `aws` credentials: STS AssumeRole for one agent and scope, for minutes.
//!
//! What is pure lives here and is tested alone: the session name derived
//! from the agent, the session tags, the session policy generated from the
//! scope's AWS rules, the retry schedule. The call itself is in the broker.
//!
//! Invariants: the secret access key and session token live only in
//! [`SecretString`]s; an [`AwsSession`]'s `Debug` shows the access key id
//! (which CloudTrail joins on) and nothing else of it.

use std::fmt;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use serde_json::json;
use sha2::{Digest, Sha256};

/// STS's limit on a session policy, in characters.
pub const SESSION_POLICY_LIMIT: usize = 2048;
/// STS's shortest session.
pub const MIN_DURATION: Duration = Duration::from_secs(900);
/// STS's longest session for a role (the role's own maximum may be lower).
pub const MAX_DURATION: Duration = Duration::from_secs(12 * 3600);

/// The `aws` credential of a scope, as compiled from policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AwsCredential {
    /// The role to assume.
    pub role_arn: String,
    /// How long minted credentials last.
    pub duration: Duration,
    /// A new session is minted when less than this is left.
    pub refresh_margin: Duration,
    /// Credentials are never served with less than this left.
    pub safety_margin: Duration,
    /// The external id the role's trust policy asks for.
    pub external_id: Option<String>,
    /// Whether to tag sessions with agent, run and scope (needs `sts:TagSession`).
    pub session_tags: bool,
    /// The session policy (compact JSON) cut down to the scope's AWS rules.
    pub session_policy: String,
    /// `sha256:<hex>` of the session policy: part of the cache key.
    pub session_policy_digest: String,
    /// The signing service; derived from the upstream host when `None`.
    pub service: Option<String>,
    /// The signing region; derived from the upstream host when `None`.
    pub region: Option<String>,
    /// Whether S3 uploads larger than `max_signed_body` may be sent with
    /// `UNSIGNED-PAYLOAD` instead of a body hash.
    pub unsigned_payload: bool,
    /// Bodies up to this size are hashed into the signature.
    pub max_signed_body: u64,
    /// Whether agents may fetch these credentials themselves
    /// (`/v1/credentials/aws/<scope>`).
    pub vend: bool,
}

/// Minted STS credentials.
#[derive(Clone)]
pub struct AwsSession {
    /// The access key id (not secret: CloudTrail and records join on it).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: SecretString,
    /// The session token.
    pub session_token: SecretString,
    /// When the credentials stop working.
    pub expiration: SystemTime,
}

impl fmt::Debug for AwsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSession")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// One statement of the scope's AWS rules, as the session policy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Allow or deny.
    pub allow: bool,
    /// IAM actions (`s3:GetObject`, `s3:Get*`, `*`).
    pub actions: Vec<String>,
    /// Resource ARNs (`*` when the rule names none).
    pub resources: Vec<String>,
}

/// The session policy for `statements`, as compact JSON, and its digest.
pub fn session_policy(statements: &[Statement]) -> (String, String) {
    let statements: Vec<_> = statements
        .iter()
        .map(|s| {
            json!({
                "Effect": if s.allow { "Allow" } else { "Deny" },
                "Action": s.actions,
                "Resource": s.resources,
            })
        })
        .collect();
    let text = json!({ "Version": "2012-10-17", "Statement": statements }).to_string();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
    (text, digest)
}

/// The role session name for an agent: `clawgate.<agent>` cut to STS's
/// character set (`[\w+=,.@-]`) and 64 characters.
pub fn session_name(agent: &str) -> String {
    let mut name: String = format!("clawgate.{agent}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(64);
    name
}

/// A session tag value cut to STS's character set and 256 characters.
pub fn tag_value(value: &str) -> String {
    let mut out: String = value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Some((cut, _)) = out.char_indices().nth(256) {
        out.truncate(cut);
    }
    out
}

/// The session tags for a mint: agent, scope and (when there is one) run.
pub fn session_tags(agent: &str, scope: &str, run: Option<&str>) -> Vec<(&'static str, String)> {
    let mut tags = vec![
        ("clawgate-agent", tag_value(agent)),
        ("clawgate-scope", tag_value(scope)),
    ];
    if let Some(run) = run {
        tags.push(("clawgate-run", tag_value(run)));
    }
    tags
}

/// How many times an STS call is tried in all.
pub const MINT_ATTEMPTS: u32 = 4;

/// The pause before retry `attempt` (1-based): exponential from 100 ms,
/// capped at 2 s, with full jitter drawn from `random` (0..=u32::MAX).
pub fn backoff(attempt: u32, random: u32) -> Duration {
    let ceiling_ms = (100u64 << attempt.min(5)).min(2000);
    Duration::from_millis(ceiling_ms * u64::from(random) / u64::from(u32::MAX))
}

#[cfg(test)]
#[path = "sts_tests.rs"]
mod tests;
