//! The broker: fetches and mints credentials through one cache, and records
//! every fetch and every STS call in the decision log (kind `mint`).
//!
//! Its own AWS access uses the SDK's standard chain (environment, profile,
//! container and instance metadata) and honours `AWS_ENDPOINT_URL` or the
//! `--aws-endpoint-url` flag. The SDK's own retries are off: every STS call
//! is made, retried and recorded here, so the log holds each one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use secrecy::SecretString;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::cache::{Cache, Entry};
use super::github::{GithubAppCredential, GithubApps, GithubKey};
use super::oauth::{MintedToken, OAuthCredential, OAuthKey, OAuthSource};
use super::sts::{self, AwsCredential, AwsSession, MINT_ATTEMPTS};
use super::{CredentialError, SecretSource, SecretValue, SecretsManagerRef};
use crate::audit::{AuditLog, DecisionRecord, kind};
use crate::egress::Pins;
use crate::error::Reason;
use crate::forward::Timeouts;

/// How the broker reaches AWS.
#[derive(Debug, Clone, Default)]
pub struct BrokerConfig {
    /// An endpoint for every AWS service (moto, LocalStack); the SDK's
    /// default resolution (including `AWS_ENDPOINT_URL`) when `None`.
    pub endpoint_url: Option<String>,
    /// The region the broker's own calls are signed for. When `None`, the
    /// SDK's chain (`AWS_REGION`, `AWS_DEFAULT_REGION`, the profile, then
    /// instance metadata), and `us-east-1` when that finds none. A region
    /// given here or in the environment means no instance-metadata probe.
    pub region: Option<String>,
}

/// Who a credential is fetched for: the call that needed it.
#[derive(Debug, Clone)]
pub struct MintContext {
    /// The request that triggered the fetch.
    pub request_id: String,
    /// The agent's name.
    pub agent: String,
    /// The run id, when a run token named one.
    pub run: Option<String>,
    /// The scope's name.
    pub scope: String,
}

/// Where fetched credentials come from: one implementation per kind, all
/// behind the one [`Cache`] (and so its single flight and refresh rules).
pub trait Source: Send + Sync + 'static {
    /// What names one credential: everything that makes two of them differ,
    /// so that two scopes share an entry only when they would fetch the same.
    type Key: Eq + std::hash::Hash + Clone + Send + Sync + 'static;
    /// The credential.
    type Value: Send + Sync + 'static;
    /// Fetches or mints the credential for `key`, with its cache windows.
    fn fetch(
        &self,
        key: &Self::Key,
        ctx: &MintContext,
    ) -> impl Future<Output = Result<Entry<Self::Value>, CredentialError>> + Send;
}

/// An STS session is one per role, session policy, agent and run (and the
/// rest of the credential's settings, which a session carries).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    credential: AwsCredential,
    agent: String,
    run: Option<String>,
    /// Only when session tags are on: the tags name the scope.
    scope: Option<String>,
}

/// A Secrets Manager value is one per secret, key and stage (and timing).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretKey {
    secret: SecretsManagerRef,
    timing: super::SecretTiming,
}

/// What both AWS sources share: the SDK clients and the decision log.
#[derive(Debug)]
pub(super) struct AwsAccess {
    config: BrokerConfig,
    clients: OnceCell<Arc<Clients>>,
    pub(super) audit: AuditLog,
}

/// `GetSecretValue`, recorded.
#[derive(Debug)]
struct SecretsManager(Arc<AwsAccess>);

/// `AssumeRole`, retried and recorded.
#[derive(Debug)]
struct Sts(Arc<AwsAccess>);

impl Source for SecretsManager {
    type Key = SecretKey;
    type Value = SecretString;

    async fn fetch(
        &self,
        key: &SecretKey,
        ctx: &MintContext,
    ) -> Result<Entry<SecretString>, CredentialError> {
        let value = self.0.fetch_secret(&key.secret, ctx).await?;
        let now = Instant::now();
        Ok(Entry {
            value: Arc::new(value),
            refresh_at: now + key.timing.ttl,
            fresh_until: now + key.timing.ttl,
            usable_until: now + key.timing.ttl + key.timing.grace,
        })
    }
}

impl Source for Sts {
    type Key = SessionKey;
    type Value = AwsSession;

    async fn fetch(
        &self,
        key: &SessionKey,
        ctx: &MintContext,
    ) -> Result<Entry<AwsSession>, CredentialError> {
        let credential = &key.credential;
        let session = self.0.mint(credential, ctx).await?;
        let left = session
            .expiration
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let now = Instant::now();
        Ok(Entry {
            value: Arc::new(session),
            refresh_at: now + left.saturating_sub(credential.refresh_margin),
            fresh_until: now + left.saturating_sub(credential.safety_margin),
            usable_until: now + left.saturating_sub(credential.safety_margin),
        })
    }
}

/// A source and its cache.
#[derive(Debug)]
struct Cached<S: Source> {
    source: Arc<S>,
    cache: Cache<S::Key, S::Value>,
}

impl<S: Source> Cached<S> {
    fn new(source: S) -> Cached<S> {
        Cached {
            source: Arc::new(source),
            cache: Cache::default(),
        }
    }

    async fn get(&self, key: S::Key, ctx: &MintContext) -> Result<Arc<S::Value>, CredentialError> {
        let source = Arc::clone(&self.source);
        let ctx = ctx.clone();
        let fetch_key = key.clone();
        self.cache
            .get(&key, move || {
                let source = Arc::clone(&source);
                let key = fetch_key.clone();
                let ctx = ctx.clone();
                async move { source.fetch(&key, &ctx).await }
            })
            .await
    }
}

#[derive(Debug)]
pub(super) struct Clients {
    sts: aws_sdk_sts::Client,
    pub(super) secrets: aws_sdk_secretsmanager::Client,
}

/// Fetches secrets and mints STS credentials and OAuth tokens, each
/// through its cache.
#[derive(Debug)]
pub struct Broker {
    secrets: Cached<SecretsManager>,
    sessions: Cached<Sts>,
    oauth: Cached<OAuthSource>,
    github: Cached<GithubApps>,
}

impl Broker {
    /// A broker that records into `audit`. AWS clients are made on first use.
    pub fn new(config: BrokerConfig, audit: AuditLog) -> Broker {
        let access = Arc::new(AwsAccess {
            config,
            clients: OnceCell::new(),
            audit,
        });
        let oauth = Cached::new(OAuthSource::new(Arc::clone(&access)));
        let github = Cached::new(GithubApps(Arc::clone(&oauth.source)));
        Broker {
            secrets: Cached::new(SecretsManager(Arc::clone(&access))),
            sessions: Cached::new(Sts(access)),
            oauth,
            github,
        }
    }

    /// Names pinned to addresses (`serve --resolve`) and the timeouts, for
    /// the token endpoints minted credentials are fetched from (as upstream
    /// calls use them). Set once, before the first call.
    pub fn set_egress(&self, pins: Pins, timeouts: Timeouts) {
        self.oauth.source.set_egress(pins, timeouts);
    }

    /// The cache counters per credential kind: `secret` (Secrets Manager),
    /// `aws` (STS), `oauth2`, `github_app`.
    pub fn kind_stats(&self) -> [(&'static str, &super::cache::CacheStats); 4] {
        [
            ("secret", self.secrets.cache.stats()),
            ("aws", self.sessions.cache.stats()),
            ("oauth2", self.oauth.cache.stats()),
            ("github_app", self.github.cache.stats()),
        ]
    }

    /// A GitHub App installation token for the credential, minted or cached.
    pub async fn github_app(
        &self,
        credential: &Arc<GithubAppCredential>,
        ctx: &MintContext,
    ) -> Result<Arc<MintedToken>, CredentialError> {
        self.github
            .get(GithubKey(Arc::clone(credential)), ctx)
            .await
    }

    /// An OAuth 2.0 access token for the credential, minted or cached.
    pub async fn oauth2(
        &self,
        credential: &Arc<OAuthCredential>,
        ctx: &MintContext,
    ) -> Result<Arc<MintedToken>, CredentialError> {
        self.oauth.get(OAuthKey(Arc::clone(credential)), ctx).await
    }

    /// The cache counters for STS sessions (hits, misses, mints).
    pub fn session_stats(&self) -> &super::cache::CacheStats {
        self.sessions.cache.stats()
    }

    /// The cache counters for fetched secrets.
    pub fn secret_stats(&self) -> &super::cache::CacheStats {
        self.secrets.cache.stats()
    }

    /// A secret's value: read at load, or fetched through the cache.
    pub async fn secret(
        &self,
        credential: &SecretValue,
        ctx: &MintContext,
    ) -> Result<Arc<SecretString>, CredentialError> {
        let sm = match &credential.source {
            SecretSource::SecretsManager(sm) => sm.clone(),
            other => {
                return credential
                    .loaded()
                    .cloned()
                    .map(Arc::new)
                    .ok_or_else(|| CredentialError::Missing(other.to_string()));
            }
        };
        let key = SecretKey {
            secret: sm,
            timing: credential.timing,
        };
        self.secrets.get(key, ctx).await
    }

    /// STS credentials for an agent in a scope, minted or cached.
    pub async fn aws(
        &self,
        credential: &AwsCredential,
        ctx: &MintContext,
    ) -> Result<Arc<AwsSession>, CredentialError> {
        let key = SessionKey {
            credential: credential.clone(),
            agent: ctx.agent.clone(),
            run: ctx.run.clone(),
            scope: credential.session_tags.then(|| ctx.scope.clone()),
        };
        self.sessions.get(key, ctx).await
    }
}

impl AwsAccess {
    pub(super) async fn clients(&self) -> Arc<Clients> {
        let clients = self
            .clients
            .get_or_init(|| async {
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .http_client(http)
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(3))
                            .operation_attempt_timeout(Duration::from_secs(10))
                            .build(),
                    );
                if let Some(url) = &self.config.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                if let Some(region) = &self.config.region {
                    // A region given outright: the chain (and its instance
                    // metadata probe) is never asked.
                    loader = loader.region(aws_config::Region::new(region.clone()));
                }
                let mut shared = loader.load().await;
                if shared.region().is_none() {
                    // STS and Secrets Manager need a region to sign; the
                    // global partition's default stands in when none is set.
                    shared = shared
                        .into_builder()
                        .region(aws_config::Region::from_static("us-east-1"))
                        .build();
                }
                Arc::new(Clients {
                    sts: aws_sdk_sts::Client::new(&shared),
                    secrets: aws_sdk_secretsmanager::Client::new(&shared),
                })
            })
            .await;
        Arc::clone(clients)
    }

    pub(super) async fn fetch_secret(
        &self,
        sm: &SecretsManagerRef,
        ctx: &MintContext,
    ) -> Result<SecretString, CredentialError> {
        let started = Instant::now();
        let reference = SecretSource::SecretsManager(sm.clone()).to_string();
        let clients = self.clients().await;
        let result = clients
            .secrets
            .get_secret_value()
            .secret_id(&sm.id)
            .set_version_stage(sm.version_stage.clone())
            .send()
            .await;
        let fail = |message: String| CredentialError::Fetch {
            source_ref: reference.clone(),
            message,
        };
        let outcome = match result {
            Ok(output) => {
                let version = output.version_id().unwrap_or("-").to_owned();
                match output.secret_string() {
                    None => Err(fail("the secret has no string value".into())),
                    Some(text) => select_json_key(text, sm.json_key.as_deref())
                        .map(|value| (value, version))
                        .map_err(fail),
                }
            }
            Err(e) => Err(fail(sdk_error_text(&e))),
        };
        let mut record = self.mint_record(ctx, "secret", started);
        match &outcome {
            Ok((_, version)) => {
                record.credential_ref = Some(format!("{reference}?version={version}"));
                record.decision = Some("allow".into());
                record.reason = Reason::Allowed.code().into();
            }
            Err(e) => {
                record.credential_ref = Some(reference.clone());
                record.detail = Some(e.to_string());
            }
        }
        self.audit.append(record);
        outcome.map(|(value, _)| value)
    }

    async fn mint(
        &self,
        credential: &AwsCredential,
        ctx: &MintContext,
    ) -> Result<AwsSession, CredentialError> {
        let clients = self.clients().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let mut call = clients
                .sts
                .assume_role()
                .role_arn(&credential.role_arn)
                .role_session_name(sts::session_name(&ctx.agent))
                .duration_seconds(i32::try_from(credential.duration.as_secs()).unwrap_or(900))
                .policy(&credential.session_policy)
                .set_external_id(credential.external_id.clone());
            if credential.session_tags {
                for (key, value) in sts::session_tags(&ctx.agent, &ctx.scope, ctx.run.as_deref()) {
                    let tag = aws_sdk_sts::types::Tag::builder()
                        .key(key)
                        .value(value)
                        .build()
                        .map_err(|e| CredentialError::Signing(e.to_string()))?;
                    call = call.tags(tag);
                }
            }
            let result = call.send().await;
            let mut record = self.mint_record(ctx, "aws", started);
            record.detail = Some(format!(
                "assume-role {} attempt {attempt}",
                credential.role_arn
            ));
            let (retry, error) = match result {
                Ok(output) => match session_from(output.credentials()) {
                    Some(session) => {
                        record.credential_ref = Some(session.access_key_id.clone());
                        record.decision = Some("allow".into());
                        record.reason = Reason::Allowed.code().into();
                        self.audit.append(record);
                        return Ok(session);
                    }
                    None => (false, "STS answered without credentials".to_owned()),
                },
                Err(e) => (retryable(&e), sdk_error_text(&e)),
            };
            record.credential_ref = Some(credential.role_arn.clone());
            record.detail = Some(format!(
                "assume-role {} attempt {attempt}: {error}",
                credential.role_arn
            ));
            self.audit.append(record);
            if !retry || attempt >= MINT_ATTEMPTS {
                return Err(CredentialError::Fetch {
                    source_ref: credential.role_arn.clone(),
                    message: error,
                });
            }
            tokio::time::sleep(sts::backoff(attempt, random_u32())).await;
        }
    }

    fn mint_record(
        &self,
        ctx: &MintContext,
        credential_kind: &str,
        started: Instant,
    ) -> DecisionRecord {
        let mut record = DecisionRecord::new(kind::MINT, &ctx.request_id);
        record.agent = Some(ctx.agent.clone());
        record.run_id = ctx.run.clone();
        record.scope = Some(ctx.scope.clone());
        record.credential_kind = Some(credential_kind.to_owned());
        record.decision = Some("deny".into());
        record.reason = Reason::CredentialUnavailable.code().into();
        record.duration_ms = Some(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX));
        record
    }
}

/// The secret string, or one key of it when it is a JSON object.
fn select_json_key(text: &str, key: Option<&str>) -> Result<SecretString, String> {
    let Some(key) = key else {
        return Ok(SecretString::from(text.to_owned()));
    };
    // The parser's message could quote the value; it is never passed on.
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| "the secret is not a JSON object".to_owned())?;
    match value.get(key) {
        Some(serde_json::Value::String(s)) => Ok(SecretString::from(s.clone())),
        Some(serde_json::Value::Number(n)) => Ok(SecretString::from(n.to_string())),
        Some(_) => Err(format!("key `{key}` of the secret is not a string")),
        None => Err(format!("the secret has no key `{key}`")),
    }
}

fn session_from(credentials: Option<&aws_sdk_sts::types::Credentials>) -> Option<AwsSession> {
    let c = credentials?;
    let expiration = SystemTime::try_from(*c.expiration()).ok()?;
    Some(AwsSession {
        access_key_id: c.access_key_id().to_owned(),
        secret_access_key: SecretString::from(c.secret_access_key().to_owned()),
        session_token: SecretString::from(c.session_token().to_owned()),
        expiration,
    })
}

/// Throttling, server errors and transport failures are worth another try;
/// a refusal (access denied, bad role) is not.
fn retryable<E: ProvideErrorMetadata, R>(e: &aws_sdk_sts::error::SdkError<E, R>) -> bool {
    use aws_sdk_sts::error::SdkError;
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            code.contains("Throttl")
                || code == "RequestLimitExceeded"
                || code == "ServiceUnavailable"
                || code == "InternalFailure"
                || code == "IDPCommunicationError"
        }
        SdkError::ResponseError(_) => true,
        _ => false,
    }
}

/// An SDK error as text: the service's error code, message and HTTP status
/// (and request id, to find the call in CloudTrail), or the kind of
/// transport failure. AWS error messages name resources, never secret
/// values. It goes to stderr and into the `mint` record.
pub(super) fn sdk_error_text<E: ProvideErrorMetadata + std::error::Error>(
    e: &aws_sdk_sts::error::SdkError<E, aws_sdk_sts::config::http::HttpResponse>,
) -> String {
    use aws_sdk_sts::error::SdkError;
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let status = service.raw().status().as_u16();
            let request_id = service
                .raw()
                .headers()
                .get("x-amzn-requestid")
                .or_else(|| service.raw().headers().get("x-amz-request-id"))
                .map(|id| format!(", request id {id}"))
                .unwrap_or_default();
            // When the SDK could not parse the error (an endpoint that
            // wraps it differently, as moto does), the body still names it.
            let body = service
                .raw()
                .body()
                .bytes()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
                .unwrap_or_default();
            let code = err
                .code()
                .map(str::to_owned)
                .or_else(|| xml_element(&body, "Code"));
            let message = err
                .message()
                .map(str::to_owned)
                .or_else(|| xml_element(&body, "Message"));
            format!(
                "{} (HTTP {status}{request_id}): {}",
                code.as_deref().unwrap_or("no error code"),
                message.as_deref().unwrap_or("no message")
            )
        }
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                "timed out connecting"
            } else if failure.is_io() {
                "connection failed"
            } else if failure.is_user() {
                "bad request setup"
            } else {
                "transport failure"
            };
            format!("could not reach the service: {kind}")
        }
        SdkError::ResponseError(response) => format!(
            "unreadable response (HTTP {})",
            response.raw().status().as_u16()
        ),
        _ => "request could not be built".into(),
    }
}

/// The text of the first `<NAME>` element of an XML error body, if short.
fn xml_element(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&format!("</{name}>"))?;
    let text = body[start..end].trim();
    (!text.is_empty() && text.len() <= 512).then(|| text.to_owned())
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // The jitter needs no strength; a failed draw means no jitter.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u32::from_le_bytes(bytes)
}
