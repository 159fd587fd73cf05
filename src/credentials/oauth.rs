//! `oauth2` credentials: access tokens minted from an OAuth 2.0 token
//! endpoint (the `client_credentials` grant, RFC 6749 §4.4), with client
//! authentication by secret (`client_secret_basic`, `client_secret_post`)
//! or by a signed JWT (`private_key_jwt`, RFC 7523 §2.2), a requested
//! `scope`, `resource` indicators (RFC 8707) and an `audience`; the token
//! endpoint is configured or found in the issuer's metadata (RFC 8414, then
//! OpenID discovery).
//!
//! Tokens go through the broker's one cache: served until `refresh_margin`
//! before expiry, then refreshed in the background (one mint per key in
//! flight) while the old token is served, until `safety_margin` before its
//! expiry; from then on a call waits for a mint and, when it fails, is
//! refused with the failure's reason (fail closed: a token past that point
//! is never injected).
//!
//! Invariants: the token, the client secret and the signing key live only in
//! [`SecretString`]s; records and errors carry the client id, the endpoint,
//! lifetimes and scopes, never a token or a secret. The token endpoint is
//! reached over verified TLS (webpki roots plus `token_ca_file`), through the
//! same egress checks as upstreams (`token_allow_private` for a private
//! provider).

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use rustls_pki_types::CertificateDer;
use secrecy::SecretString;
use tokio::time::Instant;

use super::broker::{AwsAccess, MintContext, Source};
use super::cache::Entry;
use super::{CredentialError, Format, Placement, SecretSource, SecretValue, SecretsManagerRef};
use crate::audit::{AuditLog, DecisionRecord, kind};
use crate::egress::{AllowPrivate, Pins, normalise_host};
use crate::error::Reason;
use crate::forward::{Timeouts, TokenClient, token_client};

/// A token endpoint's answer is read up to this size.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// The lifetime assumed when a token response has no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// A `private_key_jwt` assertion's life.
const ASSERTION_LIFE: u64 = 60;

/// How clawgate authenticates to the token endpoint.
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1).
    SecretBasic(SecretValue),
    /// The client id and secret in the form body.
    SecretPost(SecretValue),
    /// A JWT signed with the client's private key (RFC 7523 §2.2).
    PrivateKeyJwt {
        /// The PEM private key (RSA for RS256, EC P-256 for ES256).
        key: PrivateKey,
        /// `RS256` or `ES256`.
        algorithm: jsonwebtoken::Algorithm,
        /// The `kid` header, when the provider needs it.
        key_id: Option<String>,
    },
    /// No client authentication; the client id, when set, is sent in the
    /// form (RFC 7523 §2.1 grants, as Google's, need none).
    None,
}

/// A signing key: a PEM read when the policy loaded, or one kept in Secrets
/// Manager and fetched when a token is minted.
pub enum PrivateKey {
    /// Read from `private_key_file` at load.
    Pem(SecretString),
    /// A Secrets Manager secret (or one key of its JSON, such as a Google
    /// service account key's `private_key`).
    SecretsManager(SecretsManagerRef),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivateKey::Pem(_) => f.write_str("Pem(..)"),
            PrivateKey::SecretsManager(sm) => {
                write!(f, "{}", SecretSource::SecretsManager(sm.clone()))
            }
        }
    }
}

/// The RFC 7523 §2.1 JWT bearer grant: a JWT clawgate signs is the grant.
pub struct JwtBearer {
    /// The assertion's `iss` (a Google service account's `client_email`).
    pub issuer: String,
    /// The assertion's `sub` (the user, for domain-wide delegation); the
    /// issuer when absent.
    pub subject: Option<String>,
    /// The PEM private key.
    pub key: PrivateKey,
    /// `RS256` or `ES256`.
    pub algorithm: jsonwebtoken::Algorithm,
    /// The `kid` header (a Google key's `private_key_id`).
    pub key_id: Option<String>,
}

impl fmt::Debug for JwtBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBearer")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// The method's name, as OAuth registers it.
    pub fn name(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
            ClientAuth::None => "none",
        }
    }
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAuth::SecretBasic(v) | ClientAuth::SecretPost(v) => f
                .debug_tuple(self.name())
                .field(&v.source.to_string())
                .finish(),
            ClientAuth::PrivateKeyJwt { key_id, .. } => f
                .debug_struct(self.name())
                .field("key_id", key_id)
                .finish_non_exhaustive(),
            ClientAuth::None => f.write_str("none"),
        }
    }
}

/// Where the token endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Configured outright.
    Token(String),
    /// Found in this issuer's metadata.
    Issuer(String),
}

/// An `oauth2` credential, compiled from `[scope.credential]`.
pub struct OAuthCredential {
    /// The token endpoint, or the issuer whose metadata names it.
    pub endpoint: Endpoint,
    /// The client id.
    pub client_id: String,
    /// How the client authenticates.
    pub auth: ClientAuth,
    /// The JWT bearer grant (`jwt_bearer`); `client_credentials` when `None`.
    pub bearer: Option<JwtBearer>,
    /// The `refresh_token` grant: where the refresh token is kept.
    pub refresh: Option<RefreshStore>,
    /// The requested scope (space-separated), if any.
    pub scope: Option<String>,
    /// RFC 8707 resource indicators.
    pub resources: Vec<String>,
    /// An `audience` parameter, for providers that take one.
    pub audience: Option<String>,
    /// Where the token goes in the upstream request.
    pub placement: Placement,
    /// How the token is written (`Bearer {}` by default).
    pub format: Format,
    /// A background refresh starts this long before expiry.
    pub refresh_margin: Duration,
    /// A token is never injected this close to its expiry.
    pub safety_margin: Duration,
    /// Extra roots for the token endpoint's TLS.
    pub roots: Arc<Vec<CertificateDer<'static>>>,
    /// Private addresses the token endpoint may resolve to.
    pub allow_private: Arc<AllowPrivate>,
    /// A digest of everything above (secrets included, in memory only): two
    /// credentials share cached tokens only when their digests are equal.
    pub digest: [u8; 32],
}

impl fmt::Debug for OAuthCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthCredential")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .field("refresh", &self.refresh)
            .field("scope", &self.scope)
            .field("resources", &self.resources)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl OAuthCredential {
    /// The non-secret reference records carry: `oauth2:CLIENT@ENDPOINT`,
    /// or `jwt_bearer:ISSUER@ENDPOINT`.
    pub fn reference(&self) -> String {
        let at = match &self.endpoint {
            Endpoint::Token(url) | Endpoint::Issuer(url) => url,
        };
        match &self.bearer {
            Some(bearer) => format!("jwt_bearer:{}@{at}", bearer.issuer),
            None => format!("oauth2:{}@{at}", self.client_id),
        }
    }

    /// The kind, as policy and records name it.
    pub fn kind(&self) -> &'static str {
        if self.bearer.is_some() {
            "jwt_bearer"
        } else {
            "oauth2"
        }
    }

    /// The grant, as records name it.
    fn grant(&self) -> &'static str {
        if self.bearer.is_some() {
            "jwt_bearer"
        } else if self.refresh.is_some() {
            "refresh_token"
        } else {
            "client_credentials"
        }
    }
}

/// A minted access token and what the endpoint said of it.
pub struct MintedToken {
    /// The token.
    pub value: SecretString,
    /// The scope the endpoint granted (the requested one when it said none).
    pub granted_scope: Option<String>,
    /// The lifetime the endpoint gave.
    pub lifetime: Duration,
}

impl fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedToken")
            .field("granted_scope", &self.granted_scope)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Why a mint failed, as the refusal's reason says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintFailure {
    /// The provider refused the client or the grant (`invalid_grant`,
    /// `invalid_client`, `unauthorized_client`, `invalid_scope`, ...).
    InvalidGrant,
    /// The provider needs a person's consent or login first.
    ConsentRequired,
    /// The endpoint could not be reached or gave no usable answer.
    EndpointUnreachable,
    /// A rotated refresh token could not be stored where the old one was.
    StoreFailed,
}

impl MintFailure {
    /// The reason a call refused for this failure carries.
    pub fn reason(self) -> Reason {
        match self {
            MintFailure::InvalidGrant => Reason::CredentialGrantInvalid,
            MintFailure::ConsentRequired => Reason::CredentialConsentRequired,
            MintFailure::EndpointUnreachable => Reason::CredentialEndpointUnreachable,
            MintFailure::StoreFailed => Reason::CredentialStoreFailed,
        }
    }

    /// The failure an OAuth `error` code stands for.
    pub fn from_error_code(code: &str) -> MintFailure {
        match code {
            "consent_required"
            | "interaction_required"
            | "login_required"
            | "account_selection_required" => MintFailure::ConsentRequired,
            "temporarily_unavailable" | "server_error" => MintFailure::EndpointUnreachable,
            _ => MintFailure::InvalidGrant,
        }
    }
}

/// The cache key: one entry per distinct credential (by digest).
#[derive(Debug, Clone)]
pub struct OAuthKey(pub Arc<OAuthCredential>);

impl PartialEq for OAuthKey {
    fn eq(&self, other: &OAuthKey) -> bool {
        self.0.digest == other.0.digest
    }
}
impl Eq for OAuthKey {}
impl std::hash::Hash for OAuthKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0.digest[..8]);
    }
}

/// Mints `oauth2` tokens: one HTTP client per credential, discovered
/// endpoints remembered, every attempt recorded.
pub struct OAuthSource {
    audit: AuditLog,
    /// Secrets Manager, for client secrets and refresh tokens kept there.
    aws: Arc<AwsAccess>,
    /// One lock per refresh-token store (see [`refresh`]).
    refresh_locks: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Rotated refresh tokens not yet stored, by store.
    unstored: DashMap<String, SecretString>,
    egress: OnceLock<(Pins, Timeouts)>,
    clients: Mutex<std::collections::HashMap<[u8; 32], TokenClient>>,
    discovered: DashMap<String, String>,
}

impl fmt::Debug for OAuthSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthSource").finish_non_exhaustive()
    }
}

/// What the token endpoint answered, parsed.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) json: Option<serde_json::Value>,
}

/// How a minted kind reaches its endpoint.
pub(super) struct Net<'a> {
    pub(super) roots: &'a [CertificateDer<'static>],
    pub(super) allow_private: &'a Arc<AllowPrivate>,
    pub(super) digest: &'a [u8; 32],
}

impl OAuthSource {
    /// A source that records into the broker's decision log and reaches
    /// Secrets Manager through the broker's AWS access.
    pub(super) fn new(aws: Arc<AwsAccess>) -> OAuthSource {
        OAuthSource {
            audit: aws.audit.clone(),
            aws,
            refresh_locks: DashMap::new(),
            unstored: DashMap::new(),
            egress: OnceLock::new(),
            clients: Mutex::default(),
            discovered: DashMap::new(),
        }
    }

    /// Names pinned to addresses and the timeouts, as upstream calls use.
    pub fn set_egress(&self, pins: Pins, timeouts: Timeouts) {
        let _ = self.egress.set((pins, timeouts));
    }

    fn timeouts(&self) -> Timeouts {
        self.egress.get().map_or(
            Timeouts {
                connect: Duration::from_secs(3),
                total: Duration::from_secs(10),
            },
            |(_, t)| *t,
        )
    }

    fn client(&self, net: &Net<'_>) -> Result<TokenClient, String> {
        let mut clients = self.clients.lock().map_err(|_| "client cache poisoned")?;
        if let Some(client) = clients.get(net.digest) {
            return Ok(client.clone());
        }
        let pins = self
            .egress
            .get()
            .map(|(p, _)| Arc::clone(p))
            .unwrap_or_default();
        let client = token_client(
            net.roots,
            Arc::clone(net.allow_private),
            pins,
            self.timeouts(),
        )
        .map_err(|e| e.to_string())?;
        clients.insert(*net.digest, client.clone());
        Ok(client)
    }

    /// One HTTPS exchange with the provider: the address checked as upstream
    /// addresses are, the body read up to a limit, within the total timeout.
    async fn exchange(
        &self,
        c: &OAuthCredential,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, String> {
        let net = Net {
            roots: &c.roots,
            allow_private: &c.allow_private,
            digest: &c.digest,
        };
        self.exchange_via(&net, request).await
    }

    /// [`Self::exchange`] for any minted kind: its roots, private ranges and
    /// the digest its client is kept under.
    pub(super) async fn exchange_via(
        &self,
        net: &Net<'_>,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, String> {
        let uri = request.uri().clone();
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(format!("`{uri}` is not https"));
        }
        let host = normalise_host(uri.host().unwrap_or_default()).map_err(|e| e.to_string())?;
        // IP literals never reach the resolver: checked here, as decide does.
        net.allow_private
            .check_literal(&host)
            .map_err(|b| b.to_string())?;
        let client = self.client(net)?;
        let call = async {
            let response = client.request(request).await.map_err(|e| {
                format!(
                    "could not reach `{}`: {}",
                    uri.authority().map_or("", |a| a.as_str()),
                    crate::forward::ErrorChain(&e)
                )
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map_err(|_| "the answer could not be read (or was too large)".to_owned())?
                .to_bytes();
            let json = serde_json::from_slice(&body).ok();
            Ok(Answer { status, json })
        };
        tokio::time::timeout(self.timeouts().total, call)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    async fn mint(
        &self,
        c: &OAuthCredential,
        ctx: &MintContext,
    ) -> Result<(MintedToken, Option<String>), (MintFailure, String)> {
        let endpoint = self.token_endpoint(c).await?;
        let unreachable = |m: String| (MintFailure::EndpointUnreachable, m);
        let audience = match &c.endpoint {
            Endpoint::Issuer(issuer) => issuer.clone(),
            Endpoint::Token(url) => url.clone(),
        };
        let mut held = Held {
            client_secret: self.client_secret(c, ctx).await?,
            private_key: self.private_key(c, ctx).await?,
            refresh_token: None,
        };
        let Some(store) = &c.refresh else {
            let request = token_request(c, &endpoint, &audience, &held).map_err(unreachable)?;
            let answer = self.exchange(c, request).await.map_err(unreachable)?;
            return parse_token_answer(c, answer).map(|t| (t, None));
        };
        // One refresh per store, from reading its token to storing the
        // token that replaces it.
        let _held_lock = self.refresh_lock(store).await;
        let used = self.current_refresh_token(store, ctx).await?;
        held.refresh_token = Some(used.clone());
        let request = token_request(c, &endpoint, &audience, &held).map_err(unreachable)?;
        let answer = self.exchange(c, request).await.map_err(unreachable)?;
        let rotation = Rotation::from_answer(answer.json.as_ref(), &used);
        let token = parse_token_answer(c, answer)?;
        let Some(rotation) = rotation else {
            return Ok((token, None));
        };
        // Stored before the access token it came with is used.
        self.store_rotation(store, rotation.token).await?;
        Ok((
            token,
            Some(format!("refresh token rotated, stored in `{store}`")),
        ))
    }

    /// The decision log, for the other minted kinds' records.
    pub(super) fn audit(&self) -> &AuditLog {
        &self.audit
    }

    fn record(
        &self,
        c: &OAuthCredential,
        ctx: &MintContext,
        started: Instant,
        outcome: &Result<(MintedToken, Option<String>), (MintFailure, String)>,
    ) {
        let mut record = DecisionRecord::new(kind::MINT, &ctx.request_id);
        record.agent = Some(ctx.agent.clone());
        record.run_id = ctx.run.clone();
        record.scope = Some(ctx.scope.clone());
        record.credential_kind = Some(c.kind().into());
        record.credential_ref = Some(c.reference());
        record.duration_ms = Some(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX));
        let requested = c.scope.as_deref().unwrap_or("");
        match outcome {
            Ok((token, note)) => {
                record.decision = Some("allow".into());
                record.reason = Reason::Allowed.code().into();
                let granted = token.granted_scope.as_deref().unwrap_or(requested);
                let broader = broader_scopes(requested, granted);
                let mut detail = format!(
                    "{} via {}: lifetime {}s, requested scope `{requested}`, granted `{granted}`",
                    c.grant(),
                    c.auth.name(),
                    token.lifetime.as_secs()
                );
                if !broader.is_empty() {
                    detail.push_str(&format!("; granted-broader `{}`", broader.join(" ")));
                }
                if let Some(note) = note {
                    detail.push_str("; ");
                    detail.push_str(note);
                }
                record.detail = Some(detail);
            }
            Err((failure, message)) => {
                record.decision = Some("deny".into());
                record.reason = failure.reason().code().into();
                record.detail = Some(format!("{} via {}: {message}", c.grant(), c.auth.name()));
            }
        }
        self.audit.append(record);
    }
}

impl Source for OAuthSource {
    type Key = OAuthKey;
    type Value = MintedToken;

    async fn fetch(
        &self,
        key: &OAuthKey,
        ctx: &MintContext,
    ) -> Result<Entry<MintedToken>, CredentialError> {
        let c = &key.0;
        let started = Instant::now();
        let outcome = self.mint(c, ctx).await;
        self.record(c, ctx, started, &outcome);
        let (token, _) = outcome.map_err(|(failure, message)| {
            tracing::warn!(credential = %c.reference(), %message, "oauth2 token not minted");
            CredentialError::Minted {
                source_ref: c.reference(),
                failure,
                message,
            }
        })?;
        let life = token.lifetime;
        // Margins longer than a short token's life shrink to fit it.
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

/// Places a token as the credential says (see [`super::place`]).
pub fn inject(
    c: &OAuthCredential,
    token: &MintedToken,
    headers: &mut HeaderMap,
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

#[path = "oauth_grant.rs"]
mod grant;
pub use grant::broader_scopes;
use grant::{Held, parse_token_answer, token_request};

#[path = "oauth_refresh.rs"]
mod refresh;
pub use refresh::RefreshStore;
use refresh::Rotation;

#[cfg(test)]
#[path = "oauth_tests.rs"]
mod tests;
