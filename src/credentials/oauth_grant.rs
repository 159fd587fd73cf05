//! The token request (the grant, and client authentication by secret or by
//! a signed assertion), what it needs fetched first (the token endpoint from
//! the issuer's metadata, secrets and keys kept in Secrets Manager) and the
//! reading of the endpoint's answer. Split from [`super`] for size.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};

use super::{
    ASSERTION_LIFE, Answer, ClientAuth, DEFAULT_LIFETIME, MintFailure, MintedToken, OAuthCredential,
};
use super::{Endpoint, JwtBearer, OAuthSource, PrivateKey};
use crate::credentials::SecretValue;
use crate::credentials::{MintContext, SecretSource};

/// A JWT bearer grant's life (Google accepts up to an hour).
const BEARER_LIFE: u64 = 300;

impl OAuthSource {
    /// The token endpoint: configured, or from the issuer's metadata.
    pub(super) async fn token_endpoint(
        &self,
        c: &OAuthCredential,
    ) -> Result<String, (MintFailure, String)> {
        let issuer = match &c.endpoint {
            Endpoint::Token(url) => return Ok(url.clone()),
            Endpoint::Issuer(issuer) => issuer,
        };
        if let Some(found) = self.discovered.get(issuer) {
            return Ok(found.clone());
        }
        let unreachable = |m: String| (MintFailure::EndpointUnreachable, m);
        let mut last = String::new();
        for url in metadata_urls(issuer) {
            let request = Request::get(&url)
                .header(header::ACCEPT, "application/json")
                .body(Full::new(Bytes::new()))
                .map_err(|e| unreachable(e.to_string()))?;
            match self.exchange(c, request).await {
                Ok(Answer {
                    status,
                    json: Some(meta),
                }) if status.is_success() => {
                    // RFC 8414 §3.3: the metadata must name the issuer asked.
                    if meta["issuer"].as_str() != Some(issuer.as_str()) {
                        return Err(unreachable(format!(
                            "metadata at `{url}` names another issuer"
                        )));
                    }
                    let Some(endpoint) = meta["token_endpoint"].as_str() else {
                        return Err(unreachable(format!(
                            "metadata at `{url}` has no token_endpoint"
                        )));
                    };
                    self.discovered.insert(issuer.clone(), endpoint.to_owned());
                    return Ok(endpoint.to_owned());
                }
                Ok(answer) => last = format!("metadata at `{url}`: HTTP {}", answer.status),
                Err(e) => last = e,
            }
        }
        Err(unreachable(last))
    }

    /// A signing key kept in Secrets Manager, fetched for this mint.
    pub(super) async fn private_key(
        &self,
        c: &OAuthCredential,
        ctx: &MintContext,
    ) -> Result<Option<SecretString>, (MintFailure, String)> {
        let key = match (&c.auth, &c.bearer) {
            (_, Some(bearer)) => &bearer.key,
            (ClientAuth::PrivateKeyJwt { key, .. }, None) => key,
            _ => return Ok(None),
        };
        match key {
            PrivateKey::Pem(_) => Ok(None),
            PrivateKey::SecretsManager(sm) => self
                .aws
                .fetch_secret(sm, ctx)
                .await
                .map(Some)
                .map_err(|e| (MintFailure::StoreFailed, e.to_string())),
        }
    }

    /// A client secret: read at load, or fetched from Secrets Manager.
    pub(super) async fn client_secret(
        &self,
        c: &OAuthCredential,
        ctx: &MintContext,
    ) -> Result<Option<SecretString>, (MintFailure, String)> {
        let (ClientAuth::SecretBasic(value) | ClientAuth::SecretPost(value)) = &c.auth else {
            return Ok(None);
        };
        match &value.source {
            SecretSource::SecretsManager(sm) => self
                .aws
                .fetch_secret(sm, ctx)
                .await
                .map(Some)
                .map_err(|e| (MintFailure::StoreFailed, e.to_string())),
            _ => Ok(value.loaded().cloned()),
        }
    }
}

/// RFC 8414's metadata URL for the issuer, then OpenID discovery's.
pub(super) fn metadata_urls(issuer: &str) -> Vec<String> {
    let trimmed = issuer.trim_end_matches('/');
    let (origin, path) = match trimmed.find("://").map(|i| i + 3) {
        Some(start) => match trimmed[start..].find('/') {
            Some(slash) => trimmed.split_at(start + slash),
            None => (trimmed, ""),
        },
        None => (trimmed, ""),
    };
    vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{trimmed}/.well-known/openid-configuration"),
    ]
}

/// The secrets a token request carries that are fetched per mint.
pub(super) struct Held {
    /// The client secret (`client_secret_basic`, `client_secret_post`).
    pub(super) client_secret: Option<SecretString>,
    /// A signing key fetched from Secrets Manager.
    pub(super) private_key: Option<SecretString>,
    /// The refresh token, for the `refresh_token` grant.
    pub(super) refresh_token: Option<SecretString>,
}

/// The token request for the credential's grant, authenticated as
/// configured.
pub(super) fn token_request(
    c: &OAuthCredential,
    endpoint: &str,
    audience: &str,
    held: &Held,
) -> Result<Request<Full<Bytes>>, String> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    match (&c.bearer, &held.refresh_token) {
        (None, None) => {
            form.append_pair("grant_type", "client_credentials");
        }
        (None, Some(refresh)) => {
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", refresh.expose_secret());
        }
        (Some(bearer), _) => {
            let assertion = bearer_assertion(c, bearer, pem(&bearer.key, held)?, endpoint)?;
            form.append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer");
            form.append_pair("assertion", assertion.expose_secret());
        }
    }
    if let Some(scope) = &c.scope {
        form.append_pair("scope", scope);
    }
    for resource in &c.resources {
        form.append_pair("resource", resource);
    }
    if let Some(aud) = &c.audience {
        form.append_pair("audience", aud);
    }
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json");
    match &c.auth {
        ClientAuth::SecretBasic(secret) => {
            let secret = client_secret(secret, held)?;
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(&c.client_id), enc(secret.expose_secret()));
            let mut value = http::HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
            .map_err(|_| "the client secret cannot be sent in a header".to_owned())?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        ClientAuth::SecretPost(secret) => {
            let secret = client_secret(secret, held)?;
            form.append_pair("client_id", &c.client_id);
            form.append_pair("client_secret", secret.expose_secret());
        }
        ClientAuth::PrivateKeyJwt {
            key,
            algorithm,
            key_id,
        } => {
            let key = pem(key, held)?;
            let assertion = client_assertion(c, key, *algorithm, key_id.clone(), audience)?;
            form.append_pair("client_id", &c.client_id);
            form.append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            );
            form.append_pair("client_assertion", assertion.expose_secret());
        }
        ClientAuth::None => {
            if !c.client_id.is_empty() {
                form.append_pair("client_id", &c.client_id);
            }
        }
    }
    request
        .body(Full::new(Bytes::from(form.finish())))
        .map_err(|e| e.to_string())
}

/// An RFC 7523 §2.1 grant: `iss` the configured issuer, `sub` the subject
/// (or the issuer), `aud` the token endpoint, five minutes of life, a fresh
/// `jti`, and the requested scope as a claim too (Google reads it there).
fn bearer_assertion(
    c: &OAuthCredential,
    bearer: &JwtBearer,
    key: &SecretString,
    endpoint: &str,
) -> Result<SecretString, String> {
    let pem = key.expose_secret().as_bytes();
    let encoding = match bearer.algorithm {
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(pem),
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(pem),
    }
    .map_err(|_| "the assertion's private key cannot be used".to_owned())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut claims = serde_json::json!({
        "iss": bearer.issuer,
        "sub": bearer.subject.as_deref().unwrap_or(&bearer.issuer),
        "aud": endpoint,
        "iat": now,
        "exp": now + BEARER_LIFE,
        "jti": random_id(),
    });
    if let Some(scope) = &c.scope {
        claims["scope"] = serde_json::Value::String(scope.clone());
    }
    let mut header = jsonwebtoken::Header::new(bearer.algorithm);
    header.kid = bearer.key_id.clone();
    jsonwebtoken::encode(&header, &claims, &encoding)
        .map(SecretString::from)
        .map_err(|_| "the assertion could not be signed".to_owned())
}

/// The PEM of a signing key: read at load, or fetched for this mint.
fn pem<'a>(key: &'a PrivateKey, held: &'a Held) -> Result<&'a SecretString, String> {
    match key {
        PrivateKey::Pem(pem) => Ok(pem),
        PrivateKey::SecretsManager(sm) => held.private_key.as_ref().ok_or_else(|| {
            format!(
                "private key `{}` has no value",
                crate::credentials::SecretSource::SecretsManager(sm.clone())
            )
        }),
    }
}

fn client_secret<'a>(secret: &SecretValue, held: &'a Held) -> Result<&'a SecretString, String> {
    held.client_secret
        .as_ref()
        .ok_or_else(|| format!("client secret `{}` has no value", secret.source))
}

/// A `private_key_jwt` client assertion: `iss` and `sub` the client id,
/// `aud` the issuer (or the token endpoint), a minute of life, a fresh `jti`.
fn client_assertion(
    c: &OAuthCredential,
    key: &SecretString,
    algorithm: jsonwebtoken::Algorithm,
    key_id: Option<String>,
    audience: &str,
) -> Result<SecretString, String> {
    let pem = key.expose_secret().as_bytes();
    let encoding = match algorithm {
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(pem),
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(pem),
    }
    .map_err(|_| "the client's private key cannot be used".to_owned())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = serde_json::json!({
        "iss": c.client_id,
        "sub": c.client_id,
        "aud": audience,
        "iat": now,
        "exp": now + ASSERTION_LIFE,
        "jti": random_id(),
    });
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = key_id;
    jsonwebtoken::encode(&header, &claims, &encoding)
        .map(SecretString::from)
        .map_err(|_| "the client assertion could not be signed".to_owned())
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token endpoint's answer as a token, or the failure it stands for. The
/// provider's `error_description` is passed on shortened; the body itself
/// (which holds the token) never is.
pub(super) fn parse_token_answer(
    c: &OAuthCredential,
    answer: Answer,
) -> Result<MintedToken, (MintFailure, String)> {
    let Some(json) = answer.json else {
        return Err((
            MintFailure::EndpointUnreachable,
            format!("HTTP {} without a JSON answer", answer.status.as_u16()),
        ));
    };
    if !answer.status.is_success() {
        let code = json["error"].as_str().unwrap_or("no error code");
        let description: String = json["error_description"]
            .as_str()
            .unwrap_or("")
            .chars()
            .filter(|ch| !ch.is_control())
            .take(200)
            .collect();
        let failure = if answer.status.is_server_error() {
            MintFailure::EndpointUnreachable
        } else {
            MintFailure::from_error_code(code)
        };
        return Err((
            failure,
            format!("HTTP {}: {code} {description}", answer.status.as_u16())
                .trim_end()
                .to_owned(),
        ));
    }
    let Some(token) = json["access_token"].as_str().filter(|t| !t.is_empty()) else {
        return Err((
            MintFailure::EndpointUnreachable,
            "the answer has no access_token".into(),
        ));
    };
    let token_type = json["token_type"].as_str().unwrap_or("");
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err((
            MintFailure::InvalidGrant,
            format!("token_type `{token_type}` is not Bearer"),
        ));
    }
    let lifetime = json["expires_in"]
        .as_u64()
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    Ok(MintedToken {
        value: SecretString::from(token.to_owned()),
        granted_scope: json["scope"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| c.scope.clone()),
        lifetime,
    })
}

/// The granted scopes that were not requested.
pub fn broader_scopes<'a>(requested: &str, granted: &'a str) -> Vec<&'a str> {
    let asked: Vec<&str> = requested.split_whitespace().collect();
    if asked.is_empty() {
        // Nothing was asked for: the provider's default is not "broader".
        return Vec::new();
    }
    granted
        .split_whitespace()
        .filter(|s| !asked.contains(s))
        .collect()
}
