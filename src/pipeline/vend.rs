//! Credential vending: `GET /v1/credentials/aws/<scope>` answers with the
//! scope's minted STS credentials in the AWS container-credentials format,
//! so any AWS SDK can use them through `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
//!
//! Two ways in: the agent listener (the client certificate names the agent)
//! and the optional vending listener (`--vend-listen`), plain HTTP on a
//! loopback address only, where the agent is named by its vending token in
//! `Authorization` (`AWS_CONTAINER_AUTHORIZATION_TOKEN`). Plain HTTP because
//! the SDKs' container provider checks https against its own bundled roots,
//! never `AWS_CA_BUNDLE`, and accepts http only on loopback: the same
//! contract as the ECS endpoint.
//!
//! Invariants: every request, on either listener and on every path, is one
//! decision record (mode `vend`, a [`CallRecord`]) with the access key id
//! when allowed, committed before the credentials leave; the secret key and
//! token appear only in the response body. Run tokens are verified as on a
//! gateway call, with the same reasons, and their run is recorded (even for
//! an expired token).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use super::{Peer, Pipeline};
use crate::body::ProxyBody;
use crate::credentials::{AwsSession, MintContext};
use crate::error::{Challenge, REQUEST_ID_HEADER, Reason, Refusal, Via};
use crate::policy::{AgentId, Policy};
use crate::record::CallRecord;
use crate::route::normalise_path;
use crate::token::{Claims, RUN_TOKEN_HEADER, TokenRefused};

/// The path prefix of the vending endpoint.
pub const VEND_PREFIX: &str = "/v1/credentials/aws/";

/// The scope a vending request names, if the request is one.
pub fn vend_scope<B>(req: &Request<B>) -> Option<&str> {
    let scope = req.uri().path().strip_prefix(VEND_PREFIX)?;
    (!scope.is_empty() && !scope.contains('/')).then_some(scope)
}

/// Who asks for credentials, as the listener established it.
#[derive(Debug)]
pub struct VendCaller<'a> {
    /// The agent, when the certificate or token names one.
    pub agent: Option<AgentId>,
    /// The client certificate's fingerprint, on the agent listener.
    pub cert_fp: Option<&'a str>,
    /// The client certificate's serial, on the agent listener.
    pub serial: Option<&'a str>,
    /// The run, when a run token named the caller (even a refused one).
    pub run: Option<String>,
    /// The scopes a run token narrowed the caller to.
    pub token_scopes: Option<Vec<String>>,
    /// Why the caller's credentials were refused, when they were.
    pub refused: Option<Refusal>,
    /// The peer address.
    pub addr: SocketAddr,
}

impl VendCaller<'_> {
    /// Applies a run token's verdict: its run, its scopes, or its refusal.
    fn run_token(&mut self, verdict: Result<Claims, TokenRefused>) {
        match verdict {
            Ok(claims) => {
                tracing::Span::current().record("run.id", claims.run.as_str());
                self.run = Some(claims.run);
                self.token_scopes = claims.scopes;
            }
            Err(refused) => {
                tracing::debug!(reason = %refused.reason, "run token refused");
                self.run = refused.run;
                self.refused = Some(refused.reason.into());
            }
        }
    }
}

impl Pipeline {
    /// A vend on the agent listener: the certificate names the agent, and a
    /// run token in [`RUN_TOKEN_HEADER`] is verified exactly as on a
    /// gateway call (it must name the certificate's agent, and narrows).
    pub(crate) async fn vend_for_peer(
        &self,
        peer: &Peer,
        req: Request<hyper::body::Incoming>,
    ) -> Response<ProxyBody> {
        let policy = self.policy();
        let mut key_refused = None;
        let agent = match &peer.proxy_key {
            // A key proves its agent against the policy in force; one that
            // no longer does vends nothing, and the refusal says why.
            Some(sha256) => crate::token::proxy_key::identify(
                &policy,
                self.overrides(),
                sha256,
                SystemTime::now(),
                &mut crate::audit::DecisionRecord::new(crate::audit::kind::DECISION, ""),
            )
            .map_err(|reason| key_refused = Some(reason))
            .ok(),
            None => policy.agent_for(&peer.identity.names),
        };
        let mut caller = VendCaller {
            agent,
            cert_fp: Some(&peer.identity.fingerprint),
            serial: Some(&peer.identity.serial),
            run: None,
            token_scopes: None,
            refused: None,
            addr: peer.addr,
        };
        if peer.identity.fingerprint.is_empty() && !req.headers().contains_key(RUN_TOKEN_HEADER) {
            // The token listener: without a certificate the token is the
            // only identity, and the answer asks for one.
            caller.refused = Some(Refusal::Unauthenticated(Challenge::Proxy));
        }
        if let Some(reason) = key_refused {
            caller.refused = Some(reason.into());
        }
        if let Some(value) = req.headers().get(RUN_TOKEN_HEADER) {
            let name = agent.map(|a| policy.agent(a).name.as_str());
            let verdict = match value.to_str() {
                Ok(token) => self
                    .tokens()
                    .verify_run(token.trim(), name, SystemTime::now()),
                Err(_) => Err(TokenRefused {
                    reason: Reason::RunTokenInvalid,
                    run: None,
                }),
            };
            caller.run_token(verdict);
        }
        self.vend(&policy, caller, &req).await
    }

    /// Answers one vending request, and records it whatever happens.
    /// `policy` is the one the caller was identified with.
    pub async fn vend<B>(
        &self,
        policy: &Policy,
        caller: VendCaller<'_>,
        req: &Request<B>,
    ) -> Response<ProxyBody> {
        let request_id = uuid::Uuid::now_v7().to_string();
        let span = tracing::info_span!(
            "vend",
            request.id = %request_id,
            agent.id = tracing::field::Empty,
            run.id = caller.run.as_deref(),
            scope.id = tracing::field::Empty,
        );
        // Made first: a vend cancelled mid mint still leaves its record.
        let mut record = self.start_record(&request_id, false);
        record.mode = Some("vend".into());
        record.client_addr = Some(caller.addr.to_string());
        record.cert_fp = caller.cert_fp.map(str::to_owned);
        record.method = Some(req.method().as_str().to_owned());
        let raw = req.uri().path();
        record.path = Some(normalise_path(raw).unwrap_or_else(|_| raw.to_owned()));
        record.policy_digest = Some(policy.digest().to_owned());
        record.credential_kind = Some("aws".into());
        record.run_id = caller.run.clone();
        if let Some(agent) = caller.agent {
            let name = &policy.agent(agent).name;
            span.record("agent.id", name.as_str());
            record.agent = Some(name.clone());
        }

        let verdict = self
            .vend_steps(policy, &caller, req, &request_id, &mut record)
            .instrument(span.clone())
            .await;
        let reason = verdict
            .as_ref()
            .err()
            .map_or(Reason::Allowed, Refusal::reason);
        record.status = Some(i64::from(match &verdict {
            Ok(_) => StatusCode::OK.as_u16(),
            Err(refusal) => refusal.response("-", Via::Server).status().as_u16(),
        }));
        record.duration_ms =
            Some(i64::try_from(record.started().elapsed().as_millis()).unwrap_or(i64::MAX));
        if let Ok(session) = &verdict {
            record.credential_ref = Some(session.access_key_id.clone());
        }
        self.metrics().call(
            if reason == Reason::Allowed {
                "allow"
            } else {
                "deny"
            },
            reason.code(),
            record.scope.as_deref(),
        );
        if record.commit(verdict.as_ref().map(|_| ())).await.is_err() {
            return Refusal::from(Reason::AuditUnavailable).response(&request_id, Via::Server);
        }
        match verdict {
            Ok(session) => vended(&session, &request_id),
            Err(refusal) => refusal.response(&request_id, Via::Server),
        }
    }

    /// The steps of a vend, in order: the caller's credentials, the method,
    /// the scope, the overrides, then the mint. Fills in the record.
    async fn vend_steps<B>(
        &self,
        policy: &Policy,
        caller: &VendCaller<'_>,
        req: &Request<B>,
        request_id: &str,
        record: &mut CallRecord,
    ) -> Result<Arc<AwsSession>, Refusal> {
        if let Some(refusal) = &caller.refused {
            return Err(refusal.clone());
        }
        let Some(agent_id) = caller.agent else {
            return Err(Reason::UnknownAgent.into());
        };
        let agent = policy.agent(agent_id);
        // Overrides right after identity: an isolated agent or a revoked
        // certificate learns nothing about scopes.
        let now = SystemTime::now();
        self.settle_lapses(now);
        if let Some(o) = self.overrides().refusing(
            Some(&agent.name),
            caller.serial.filter(|s| !s.is_empty()),
            None,
            now,
        ) {
            record.detail = Some(format!("override {}", o.id));
            return Err(o.kind.reason().into());
        }
        let Some(scope_name) = vend_scope(req) else {
            return Err(Reason::NoMatchingScope.into());
        };
        if req.method() != http::Method::GET {
            return Err(Reason::MalformedRequest.into());
        }
        let Some((scope, aws)) = policy
            .scope_named(scope_name)
            .filter(|id| agent.scopes.contains(id))
            .map(|id| policy.scope(id))
            .and_then(|scope| Some((scope, scope.aws()?)))
            // Vending hands over the credentials themselves: only scopes
            // that say so.
            .filter(|(_, aws)| aws.vend)
        else {
            return Err(Reason::NoMatchingScope.into());
        };
        tracing::Span::current().record("scope.id", scope.name.as_str());
        record.scope = Some(scope.name.clone());
        record.host = Some(scope.upstream.host.clone());
        record.credential_ref = Some(aws.role_arn.clone());
        if caller
            .token_scopes
            .as_ref()
            .is_some_and(|scopes| !scopes.contains(&scope.name))
        {
            // A run token only ever narrows.
            return Err(Reason::RunTokenScope.into());
        }
        // A disabled scope vends nothing new (credentials already vended
        // cannot be recalled; they expire within their duration).
        if let Some(o) = self
            .overrides()
            .refusing(None, None, Some(&scope.name), now)
        {
            record.detail = Some(format!("override {}", o.id));
            return Err(o.kind.reason().into());
        }
        let ctx = MintContext {
            request_id: request_id.to_owned(),
            agent: agent.name.clone(),
            run: caller.run.clone(),
            scope: scope.name.clone(),
        };
        self.broker().aws(aws, &ctx).await.map_err(|e| {
            tracing::warn!(error = %e, "aws credentials not available to vend");
            Reason::CredentialUnavailable.into()
        })
    }

    /// The agent whose vending token is `token`, if any, in `policy`.
    fn agent_by_vend_token(policy: &Policy, token: &[u8]) -> Option<AgentId> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        policy
            .agents()
            .iter()
            .position(|a| a.vend_token.is_some_and(|t| t == digest))
    }
}

/// The vended credentials in the container-credentials format.
fn vended(session: &AwsSession, request_id: &str) -> Response<ProxyBody> {
    let expiration = time::OffsetDateTime::from(session.expiration)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let body = serde_json::json!({
        "AccessKeyId": session.access_key_id,
        "SecretAccessKey": session.secret_access_key.expose_secret(),
        "Token": session.session_token.expose_secret(),
        "Expiration": expiration,
    })
    .to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
    *response.status_mut() = StatusCode::OK;
    response
}

/// Who a vending-listener request comes from. `Authorization` carries the
/// agent's vending token (`AWS_CONTAINER_AUTHORIZATION_TOKEN`) or a run
/// token (`Bearer ` optional). With a vending token, a run token in
/// [`RUN_TOKEN_HEADER`] is verified as on a gateway call: it must name
/// that agent, and narrows. Each way a token fails is its own reason:
/// none at all `run-token-missing` (401 with a challenge), an unusable one
/// `run-token-invalid`, an expired one `run-token-expired`, another agent's
/// `run-token-wrong-agent`.
fn token_caller<'a, B>(
    pipeline: &Pipeline,
    policy: &Policy,
    req: &Request<B>,
    addr: SocketAddr,
) -> VendCaller<'a> {
    let mut caller = VendCaller {
        agent: None,
        cert_fp: None,
        serial: None,
        run: None,
        token_scopes: None,
        refused: None,
        addr,
    };
    let now = SystemTime::now();
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        caller.refused = Some(Refusal::Unauthenticated(Challenge::Bearer));
        return caller;
    };
    let Ok(token) = value.to_str() else {
        caller.refused = Some(Reason::RunTokenInvalid.into());
        return caller;
    };
    if let Some(agent) = Pipeline::agent_by_vend_token(policy, token.as_bytes()) {
        caller.agent = Some(agent);
        if let Some(run) = req.headers().get(RUN_TOKEN_HEADER) {
            let name = policy.agent(agent).name.as_str();
            let verdict = match run.to_str() {
                Ok(run) => pipeline.tokens().verify_run(run.trim(), Some(name), now),
                Err(_) => Err(TokenRefused {
                    reason: Reason::RunTokenInvalid,
                    run: None,
                }),
            };
            caller.run_token(verdict);
        }
        return caller;
    }
    let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
    if crate::token::proxy_key::is_proxy_key(token) {
        // An agent's proxy key vends too, so one secret in its environment
        // serves the proxy and the SDK's container provider.
        match crate::token::proxy_key::identify(
            policy,
            pipeline.overrides(),
            &crate::token::proxy_key::sha256(token),
            now,
            &mut crate::audit::DecisionRecord::new(crate::audit::kind::DECISION, ""),
        ) {
            Ok(agent) => caller.agent = Some(agent),
            Err(reason) => caller.refused = Some(reason.into()),
        }
        return caller;
    }
    let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
    let verdict = pipeline.tokens().verify_run(token, None, now);
    if let Ok(claims) = &verdict {
        // A token for an agent policy does not define is `unknown-agent`.
        caller.agent = policy.agents().iter().position(|a| a.name == claims.sub);
    }
    caller.run_token(verdict);
    caller
}

/// Why the vending listener would not start.
#[derive(Debug, thiserror::Error)]
pub enum VendListenError {
    /// Plain HTTP is only safe on a loopback address.
    #[error("--vend-listen `{0}` must be a loopback address (it serves plain HTTP)")]
    NotLoopback(SocketAddr),
    /// The address is unavailable.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Binds the vending listener; loopback only.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, VendListenError> {
    if !addr.ip().is_loopback() {
        return Err(VendListenError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| VendListenError::Bind(addr, e))
}

/// Serves vending requests named by token until `shutdown` changes. Plain
/// HTTP on loopback, through the same accept path (header timeout) as every
/// listener. Vends are not drained: one still minting is ended, and its
/// record says `shutdown`.
pub async fn serve(
    tcp: TcpListener,
    rejections: Arc<crate::accept::Rejections>,
    pipeline: Arc<Pipeline>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = crate::accept::Listener {
        name: "vend",
        tcp,
        tls: None,
        rejections,
        gate: crate::accept::new_gate(),
    };
    let calls = Arc::clone(&pipeline);
    let make = move |accepted: crate::accept::Accepted| {
        let pipeline = Arc::clone(&calls);
        let addr = accepted.addr;
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let pipeline = Arc::clone(&pipeline);
            async move {
                let policy = pipeline.policy();
                let caller = token_caller(&pipeline, &policy, &req, addr);
                // Every request is a vend, recorded, whatever its path: one
                // that names no scope is refused.
                Ok::<_, Infallible>(pipeline.vend(&policy, caller, &req).await)
            }
        });
        Ok(crate::accept::Served {
            service,
            until: None,
        })
    };
    // Shutdown is marked before the connections end, so their records say
    // `shutdown`.
    let (stop, stopped) = watch::channel(false);
    let mark = async move {
        let _ = shutdown.wait_for(|s| *s).await.is_ok();
        pipeline.begin_shutdown();
        stop.send_replace(true);
    };
    tokio::join!(
        mark,
        crate::accept::serve(listener, make, stopped, std::time::Duration::ZERO)
    );
}
