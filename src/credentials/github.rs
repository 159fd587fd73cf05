//! `github_app` credentials: installation access tokens minted as GitHub
//! documents. An App JWT (RS256, `iss` = the App id, `iat` a minute in the
//! past, `exp` nine minutes ahead: within GitHub's ten) is exchanged with
//! `POST /app/installations/{id}/access_tokens` for a token restricted to
//! the repositories and permissions the scope names.
//!
//! Tokens share the `oauth2` machinery: the broker's cache (refresh ahead,
//! single flight, fail closed after the grace), the token endpoint's TLS and
//! egress checks, and a `mint` record per attempt that names the App, the
//! installation, the token's lifetime and the permissions GitHub granted,
//! never the token or the App's key.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use rustls_pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::broker::{MintContext, Source};
use super::cache::Entry;
use super::oauth::{Answer, MintFailure, MintedToken, Net, OAuthSource};
use super::{CredentialError, Format, Placement};
use crate::audit::{DecisionRecord, kind};
use crate::egress::AllowPrivate;
use crate::error::Reason;

/// How far back an App JWT's `iat` is set, for clock drift (GitHub's advice).
const JWT_BACKDATE: u64 = 60;
/// An App JWT's life past now; GitHub refuses more than ten minutes.
const JWT_LIFE: u64 = 540;

/// A `github_app` credential, compiled from `[scope.credential]`.
pub struct GithubAppCredential {
    /// The API root, `https://api.github.com` unless set (GitHub Enterprise).
    pub api_url: String,
    /// The App's id (the JWT's `iss`).
    pub app_id: u64,
    /// The installation whose token is minted.
    pub installation_id: u64,
    /// The App's private key (PEM, RSA).
    pub key: SecretString,
    /// Repository names the token is cut down to (all the installation's
    /// when empty).
    pub repositories: Vec<String>,
    /// Permissions the token is cut down to (`contents = "read"`).
    pub permissions: BTreeMap<String, String>,
    /// Where the token goes (default `authorization: Bearer {}`).
    pub placement: Placement,
    /// How the token is written.
    pub format: Format,
    /// A background refresh starts this long before expiry.
    pub refresh_margin: Duration,
    /// A token is never injected this close to its expiry.
    pub safety_margin: Duration,
    /// Extra roots for the API's TLS.
    pub roots: Arc<Vec<CertificateDer<'static>>>,
    /// Private addresses the API may resolve to.
    pub allow_private: Arc<AllowPrivate>,
    /// A digest of everything above (the key included, in memory only).
    pub digest: [u8; 32],
}

impl fmt::Debug for GithubAppCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubAppCredential")
            .field("api_url", &self.api_url)
            .field("app_id", &self.app_id)
            .field("installation_id", &self.installation_id)
            .field("repositories", &self.repositories)
            .field("permissions", &self.permissions)
            .finish_non_exhaustive()
    }
}

impl GithubAppCredential {
    /// The non-secret reference records carry.
    pub fn reference(&self) -> String {
        format!(
            "github_app:{}/installations/{}@{}",
            self.app_id, self.installation_id, self.api_url
        )
    }

    /// The permissions asked for, as `name:level` words.
    fn requested(&self) -> String {
        self.permissions
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The cache key: one entry per distinct credential (by digest).
#[derive(Debug, Clone)]
pub struct GithubKey(pub Arc<GithubAppCredential>);

impl PartialEq for GithubKey {
    fn eq(&self, other: &GithubKey) -> bool {
        self.0.digest == other.0.digest
    }
}
impl Eq for GithubKey {}
impl std::hash::Hash for GithubKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0.digest[..8]);
    }
}

/// Mints installation tokens through the `oauth2` source's clients and log.
#[derive(Debug)]
pub struct GithubApps(pub Arc<OAuthSource>);

impl Source for GithubApps {
    type Key = GithubKey;
    type Value = MintedToken;

    async fn fetch(
        &self,
        key: &GithubKey,
        ctx: &MintContext,
    ) -> Result<Entry<MintedToken>, CredentialError> {
        let c = &key.0;
        let started = Instant::now();
        let outcome = self.mint(c).await;
        self.record(c, ctx, started, &outcome);
        let token = outcome.map_err(|(failure, message)| {
            tracing::warn!(credential = %c.reference(), %message, "github app token not minted");
            CredentialError::Minted {
                source_ref: c.reference(),
                failure,
                message,
            }
        })?;
        let life = token.lifetime;
        let safety = c.safety_margin.min(life / 10);
        let refresh = c.refresh_margin.min(life / 3).max(safety);
        let now = Instant::now();
        Ok(Entry {
            value: Arc::new(token),
            refresh_at: now + life.saturating_sub(refresh),
            fresh_until: now + life.saturating_sub(safety),
            usable_until: now + life.saturating_sub(safety),
        })
    }
}

impl GithubApps {
    async fn mint(&self, c: &GithubAppCredential) -> Result<MintedToken, (MintFailure, String)> {
        let unreachable = |m: String| (MintFailure::EndpointUnreachable, m);
        let jwt = app_jwt(c).map_err(|m| (MintFailure::InvalidGrant, m))?;
        let url = format!(
            "{}/app/installations/{}/access_tokens",
            c.api_url.trim_end_matches('/'),
            c.installation_id
        );
        let mut body = serde_json::Map::new();
        if !c.repositories.is_empty() {
            body.insert("repositories".into(), serde_json::json!(c.repositories));
        }
        if !c.permissions.is_empty() {
            body.insert("permissions".into(), serde_json::json!(c.permissions));
        }
        let mut bearer = http::HeaderValue::from_str(&format!("Bearer {}", jwt.expose_secret()))
            .map_err(|_| unreachable("the App JWT is not a header value".into()))?;
        bearer.set_sensitive(true);
        let request = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(header::ACCEPT, "application/vnd.github+json")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "clawgate")
            .header("x-github-api-version", "2022-11-28")
            .header(header::AUTHORIZATION, bearer)
            .body(Full::new(Bytes::from(
                serde_json::Value::Object(body).to_string(),
            )))
            .map_err(|e| unreachable(e.to_string()))?;
        let net = Net {
            roots: &c.roots,
            allow_private: &c.allow_private,
            digest: &c.digest,
        };
        let answer = self
            .0
            .exchange_via(&net, request)
            .await
            .map_err(unreachable)?;
        parse_installation_token(answer)
    }

    fn record(
        &self,
        c: &GithubAppCredential,
        ctx: &MintContext,
        started: Instant,
        outcome: &Result<MintedToken, (MintFailure, String)>,
    ) {
        let mut record = DecisionRecord::new(kind::MINT, &ctx.request_id);
        record.agent = Some(ctx.agent.clone());
        record.run_id = ctx.run.clone();
        record.scope = Some(ctx.scope.clone());
        record.credential_kind = Some("github_app".into());
        record.credential_ref = Some(c.reference());
        record.duration_ms = Some(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX));
        let requested = c.requested();
        match outcome {
            Ok(token) => {
                record.decision = Some("allow".into());
                record.reason = Reason::Allowed.code().into();
                let granted = token.granted_scope.as_deref().unwrap_or("");
                let mut detail = format!(
                    "installation token: lifetime {}s, repositories `{}`, requested permissions `{requested}`, granted `{granted}`",
                    token.lifetime.as_secs(),
                    c.repositories.join(" ")
                );
                let broader = broader_permissions(&c.permissions, granted);
                if !c.permissions.is_empty() && !broader.is_empty() {
                    detail.push_str(&format!("; granted-broader `{}`", broader.join(" ")));
                }
                record.detail = Some(detail);
            }
            Err((failure, message)) => {
                record.decision = Some("deny".into());
                record.reason = failure.reason().code().into();
                record.detail = Some(format!("installation token: {message}"));
            }
        }
        self.0.audit().append(record);
    }
}

/// The App JWT: RS256, `iss` the App id, `iat` backdated a minute, `exp`
/// nine minutes ahead.
fn app_jwt(c: &GithubAppCredential) -> Result<SecretString, String> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(c.key.expose_secret().as_bytes())
        .map_err(|_| "the App's private key cannot be used".to_owned())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = serde_json::json!({
        "iat": now - JWT_BACKDATE,
        "exp": now + JWT_LIFE,
        "iss": c.app_id.to_string(),
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .map(SecretString::from)
    .map_err(|_| "the App JWT could not be signed".to_owned())
}

/// GitHub's answer as a token, or the failure it stands for: 401 (a JWT
/// GitHub will not take), 403, 404 (no such installation) and 422 (more
/// than the installation has) refuse the grant; 5xx is the endpoint's.
fn parse_installation_token(answer: Answer) -> Result<MintedToken, (MintFailure, String)> {
    let status = answer.status;
    let json = answer.json.unwrap_or_default();
    if !status.is_success() {
        let message: String = json["message"]
            .as_str()
            .unwrap_or("")
            .chars()
            .filter(|ch| !ch.is_control())
            .take(200)
            .collect();
        let failure = if status.is_server_error() {
            MintFailure::EndpointUnreachable
        } else {
            MintFailure::InvalidGrant
        };
        return Err((failure, format!("HTTP {}: {message}", status.as_u16())));
    }
    let Some(token) = json["token"].as_str().filter(|t| !t.is_empty()) else {
        return Err((
            MintFailure::EndpointUnreachable,
            format!("HTTP {} without a token", status.as_u16()),
        ));
    };
    let expires = json["expires_at"]
        .as_str()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .ok_or((
            MintFailure::EndpointUnreachable,
            "the answer has no usable expires_at".to_owned(),
        ))?;
    let left = (expires - time::OffsetDateTime::now_utc()).whole_seconds();
    let granted = json["permissions"]
        .as_object()
        .map(|p| {
            p.iter()
                .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Ok(MintedToken {
        value: SecretString::from(token.to_owned()),
        granted_scope: Some(granted),
        lifetime: Duration::from_secs(u64::try_from(left).unwrap_or(0)),
    })
}

/// Granted permissions beyond what was asked: a name not asked for, or
/// `write` where `read` was.
fn broader_permissions<'a>(asked: &BTreeMap<String, String>, granted: &'a str) -> Vec<&'a str> {
    granted
        .split_whitespace()
        .filter(|word| {
            let (name, level) = word.split_once(':').unwrap_or((word, ""));
            match asked.get(name).map(String::as_str) {
                None => true,
                Some("read") => level != "read",
                Some(_) => false,
            }
        })
        .collect()
}

/// Places a token as the credential says.
pub fn inject(
    c: &GithubAppCredential,
    token: &MintedToken,
    headers: &mut http::HeaderMap,
    query: &mut Option<String>,
) -> Result<(), CredentialError> {
    super::place(
        &c.placement,
        &c.format,
        &c.reference(),
        &token.value,
        headers,
        query,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broader_permissions_name_what_was_not_asked() {
        let asked: BTreeMap<String, String> = [("contents".to_owned(), "read".to_owned())].into();
        assert!(broader_permissions(&asked, "contents:read").is_empty());
        assert_eq!(
            broader_permissions(&asked, "contents:write metadata:read"),
            vec!["contents:write", "metadata:read"]
        );
    }

    #[test]
    fn github_errors_refuse_the_grant_and_5xx_is_the_endpoint() {
        let answer = |status: u16| Answer {
            status: http::StatusCode::from_u16(status).unwrap(),
            json: Some(serde_json::json!({"message": "Bad credentials"})),
        };
        for status in [401, 403, 404, 422] {
            assert_eq!(
                parse_installation_token(answer(status)).err().map(|e| e.0),
                Some(MintFailure::InvalidGrant)
            );
        }
        assert_eq!(
            parse_installation_token(answer(502)).err().map(|e| e.0),
            Some(MintFailure::EndpointUnreachable)
        );
    }
}
