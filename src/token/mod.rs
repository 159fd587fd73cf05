//! Run tokens: short-lived JWTs (ES256) that name an agent, a run and
//! optionally a subset of the agent's scopes.
//!
//! Invariants:
//! - A token only ever narrows: the agent still comes from the certificate
//!   (on the agent listener), the token's agent must be that agent, and its
//!   scopes can only remove scopes from what policy allows.
//! - Signature, `exp`, `nbf`, issuer and audience are all checked, with a
//!   small leeway; the three ways a token fails (another agent, expired,
//!   anything else) are distinct reasons.
//! - The signing key never leaves `certs init`'s directory; verification
//!   needs only public keys (clawgate's own, and an external issuer's JWKS).

pub mod listen;
pub mod proxy_key;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::Reason;

/// The header a run token travels in on the agent listener.
pub const RUN_TOKEN_HEADER: &str = "x-clawgate-run-token";
/// The issuer and audience of clawgate's own tokens.
pub const ISSUER: &str = "clawgate";
/// The audience every run token must name.
pub const AUDIENCE: &str = "clawgate";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(5);
/// The longest a token may live.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The claims of a run token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The agent's name in policy.
    pub sub: String,
    /// The run id, copied into every record the token touches.
    pub run: String,
    /// When it expires (seconds since the epoch).
    pub exp: u64,
    /// Not before (seconds since the epoch).
    pub nbf: u64,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// When present, the only scopes the token may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// Why a token could not be made or keys not read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A key file is missing or unusable.
    #[error("cannot use `{path}`: {why}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The requested lifetime is out of bounds.
    #[error("ttl must be more than zero and at most 24h")]
    Ttl,
    /// Signing failed.
    #[error("token could not be signed: {0}")]
    Sign(String),
    /// The policy defines no such agent.
    #[error("unknown agent `{0}`: the policy defines no such agent")]
    UnknownAgent(String),
    /// The policy defines no such scope.
    #[error("unknown scope `{0}`: the policy defines no such scope")]
    UnknownScope(String),
}

/// Checks what a token would name against `policy` before it is issued: an
/// agent or scope the policy does not define is refused (a token for it
/// could only ever be refused, and the typo would surface at 3 a.m.). A
/// defined scope the agent does not have is a warning: calls in it will be
/// refused unless an exception grants it.
pub fn check_against(
    policy: &crate::policy::Policy,
    agent: &str,
    scopes: Option<&[String]>,
) -> Result<Vec<String>, TokenError> {
    let Some(agent_def) = policy.agents().iter().find(|a| a.name == agent) else {
        return Err(TokenError::UnknownAgent(agent.to_owned()));
    };
    let mut warnings = Vec::new();
    for scope in scopes.unwrap_or_default() {
        let Some(id) = policy.scope_named(scope) else {
            return Err(TokenError::UnknownScope(scope.clone()));
        };
        if !agent_def.scopes.contains(&id) {
            warnings.push(format!(
                "agent `{agent}` does not have scope `{scope}`: calls in it will be refused unless an exception grants it"
            ));
        }
    }
    Ok(warnings)
}

/// Signs a run token with the key in `certs_dir`.
pub fn issue(
    certs_dir: &Path,
    agent: &str,
    ttl: Duration,
    scopes: Option<Vec<String>>,
    run: Option<String>,
    now: SystemTime,
) -> Result<String, TokenError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(TokenError::Ttl);
    }
    let path = certs_dir.join(crate::certs::files::TOKEN_KEY);
    let pem = std::fs::read(&path).map_err(|e| TokenError::Key {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let key = EncodingKey::from_ec_pem(&pem).map_err(|e| TokenError::Key {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let now = secs(now);
    let claims = Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: agent.into(),
        run: run.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        exp: now + ttl.as_secs().max(1),
        nbf: now,
        iat: now,
        scopes,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key)
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// The keys run tokens are verified with.
pub struct Verifier {
    own: Option<DecodingKey>,
    external: Vec<(Option<String>, Algorithm, DecodingKey)>,
    external_issuer: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("own", &self.own.is_some())
            .field("external_keys", &self.external.len())
            .finish()
    }
}

impl Verifier {
    /// A verifier that knows no key: every token is refused as invalid.
    pub fn none() -> Verifier {
        Verifier {
            own: None,
            external: Vec::new(),
            external_issuer: None,
        }
    }

    /// clawgate's own public key from `certs_dir` (when `certs init` made
    /// one), and an external issuer's keys from a JWKS file.
    pub fn load(certs_dir: &Path, jwks: Option<(&Path, &str)>) -> Result<Verifier, TokenError> {
        let own_path = certs_dir.join(crate::certs::files::TOKEN_PUB);
        let own = match std::fs::read(&own_path) {
            Ok(pem) => Some(DecodingKey::from_ec_pem(&pem).map_err(|e| TokenError::Key {
                path: own_path.clone(),
                why: e.to_string(),
            })?),
            Err(_) => None,
        };
        let mut external = Vec::new();
        let mut external_issuer = None;
        if let Some((path, issuer)) = jwks {
            let key_error = |why: String| TokenError::Key {
                path: path.to_path_buf(),
                why,
            };
            let text = std::fs::read_to_string(path).map_err(|e| key_error(e.to_string()))?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| key_error(e.to_string()))?;
            for jwk in &set.keys {
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    _ => {
                        return Err(key_error(
                            "only EC P-256 and Ed25519 keys are accepted".into(),
                        ));
                    }
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| key_error(e.to_string()))?;
                external.push((jwk.common.key_id.clone(), alg, key));
            }
            external_issuer = Some(issuer.to_owned());
        }
        Ok(Verifier {
            own,
            external,
            external_issuer,
        })
    }

    /// Verifies a token for the agent `agent` at `now`.
    pub fn verify(
        &self,
        token: &str,
        agent: Option<&str>,
        now: SystemTime,
    ) -> Result<Claims, Reason> {
        self.verify_run(token, agent, now)
            .map_err(|refused| refused.reason)
    }

    /// As [`Verifier::verify`], and a refused token whose signature held
    /// (expired, not yet valid, another agent's) still names its run, so
    /// that the refusal record can.
    pub fn verify_run(
        &self,
        token: &str,
        agent: Option<&str>,
        now: SystemTime,
    ) -> Result<Claims, TokenRefused> {
        let invalid = TokenRefused {
            reason: Reason::RunTokenInvalid,
            run: None,
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid.clone())?;
        let mut candidates: Vec<(&DecodingKey, Algorithm, &str)> = Vec::new();
        if let Some(own) = &self.own
            && header.alg == Algorithm::ES256
        {
            candidates.push((own, Algorithm::ES256, ISSUER));
        }
        if let Some(issuer) = &self.external_issuer {
            for (kid, alg, key) in &self.external {
                if *alg == header.alg && (header.kid.is_none() || header.kid == *kid) {
                    candidates.push((key, *alg, issuer));
                }
            }
        }
        let mut outcome = Err(invalid);
        for (key, alg, issuer) in candidates {
            let mut validation = Validation::new(alg);
            validation.set_audience(&[AUDIENCE]);
            validation.set_issuer(&[issuer]);
            validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
            // Time is judged below against `now`, not the clock.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(_) => continue,
            }
        }
        let claims = outcome?;
        let refused = |reason| TokenRefused {
            reason,
            run: Some(claims.run.clone()),
        };
        let now = secs(now);
        if claims.exp + LEEWAY.as_secs() <= now {
            return Err(refused(Reason::RunTokenExpired));
        }
        if claims.nbf > now + LEEWAY.as_secs() {
            return Err(refused(Reason::RunTokenInvalid));
        }
        if agent.is_some_and(|a| a != claims.sub) {
            return Err(refused(Reason::RunTokenWrongAgent));
        }
        Ok(claims)
    }
}

/// A run token that was refused: why, and its run when its signature held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRefused {
    /// `run-token-invalid`, `run-token-expired` or `run-token-wrong-agent`.
    pub reason: Reason,
    /// The run the token names, if its signature verified.
    pub run: Option<String>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
