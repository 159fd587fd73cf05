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
//! Invariants: every vend is one decision record (mode `vend`) with the
//! access key id, committed before the credentials leave; the secret key and
//! token appear only in the response body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Pipeline;
use crate::audit::{DecisionRecord, kind};
use crate::body::ProxyBody;
use crate::credentials::MintContext;
use crate::error::{REQUEST_ID_HEADER, Reason, refusal_response};
use crate::policy::{AgentId, Policy};

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
    /// The run, when a run token named the caller.
    pub run: Option<String>,
    /// The scopes a run token narrowed the caller to.
    pub token_scopes: Option<Vec<String>>,
    /// The peer address.
    pub addr: SocketAddr,
}

impl Pipeline {
    /// Answers one vending request.
    /// `policy` is the one the caller was identified with.
    pub async fn vend<B>(
        &self,
        policy: &Policy,
        caller: VendCaller<'_>,
        req: &Request<B>,
    ) -> Response<ProxyBody> {
        let started = tokio::time::Instant::now();
        let request_id = uuid::Uuid::now_v7().to_string();
        let mut record = DecisionRecord::new(kind::DECISION, &request_id);
        record.mode = Some("vend".into());
        record.client_addr = Some(caller.addr.to_string());
        record.cert_fp = caller.cert_fp.map(str::to_owned);
        record.method = Some(req.method().as_str().to_owned());
        record.path = Some(req.uri().path().to_owned());
        record.policy_digest = Some(policy.digest().to_owned());
        record.credential_kind = Some("aws".into());

        let scope_name = vend_scope(req).unwrap_or_default();
        record.run_id = caller.run.clone();
        let narrowed_out = caller
            .token_scopes
            .as_ref()
            .is_some_and(|scopes| !scopes.iter().any(|s| s == scope_name));
        let verdict = match caller.agent {
            None => Err(Reason::UnknownAgent),
            Some(_) if req.method() != http::Method::GET => Err(Reason::MalformedRequest),
            // A run token only ever narrows.
            Some(_) if narrowed_out => Err(Reason::RunTokenScope),
            Some(agent_id) => {
                let agent = policy.agent(agent_id);
                record.agent = Some(agent.name.clone());
                match policy
                    .scope_named(scope_name)
                    .filter(|id| agent.scopes.contains(id))
                    .map(|id| policy.scope(id))
                    .and_then(|scope| Some((scope, scope.aws()?)))
                    // Vending hands over the credentials themselves: only
                    // scopes that say so.
                    .filter(|(_, aws)| aws.vend)
                {
                    None => Err(Reason::NoMatchingScope),
                    // An isolated agent or a disabled scope gets nothing
                    // new to hold (credentials already vended cannot be
                    // recalled; they expire within their duration).
                    Some((scope, _))
                        if let Some(o) = self.overrides().refusing(
                            Some(&agent.name),
                            caller.serial,
                            Some(&scope.name),
                            std::time::SystemTime::now(),
                        ) =>
                    {
                        record.scope = Some(scope.name.clone());
                        record.detail = Some(format!("override {}", o.id));
                        Err(o.kind.reason())
                    }
                    Some((scope, aws)) => {
                        record.scope = Some(scope.name.clone());
                        record.host = Some(scope.upstream.host.clone());
                        record.credential_ref = Some(aws.role_arn.clone());
                        let ctx = MintContext {
                            request_id: request_id.clone(),
                            agent: agent.name.clone(),
                            run: caller.run.clone(),
                            scope: scope.name.clone(),
                        };
                        self.broker().aws(aws, &ctx).await.map_err(|e| {
                            tracing::warn!(error = %e, "aws credentials not available to vend");
                            Reason::CredentialUnavailable
                        })
                    }
                }
            }
        };
        let reason = verdict.as_ref().err().copied().unwrap_or(Reason::Allowed);
        record.reason = reason.code().to_owned();
        record.decision = Some(if verdict.is_ok() { "allow" } else { "deny" }.into());
        if let Ok(session) = &verdict {
            record.credential_ref = Some(session.access_key_id.clone());
        }
        record.status = Some(i64::from(reason.status().as_u16()));
        record.duration_ms = Some(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX));
        if let Err(e) = self.audit().append_durable(record).await {
            tracing::error!(error = %e, "vend not recorded; refusing it");
            return refusal_response(Reason::AuditUnavailable, &request_id);
        }
        let session = match verdict {
            Ok(session) => session,
            Err(reason) => return refusal_response(reason, &request_id),
        };
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
        let mut response =
            Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID_HEADER, id);
        }
        *response.status_mut() = StatusCode::OK;
        response
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

/// Who a vending-listener request comes from: the agent whose vending token
/// it carries in `Authorization`, or the agent (and run) of a valid run token
/// there (`Bearer ` optional), narrowed to the token's scopes.
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
        addr,
    };
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return caller;
    };
    if let Some(agent) = Pipeline::agent_by_vend_token(policy, token.as_bytes()) {
        caller.agent = Some(agent);
        return caller;
    }
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    if crate::token::proxy_key::is_proxy_key(token) {
        // An agent's proxy key vends too, so one secret in its environment
        // serves the proxy and the SDK's container provider.
        caller.agent = crate::token::proxy_key::identify(
            policy,
            pipeline.overrides(),
            &crate::token::proxy_key::sha256(token),
            std::time::SystemTime::now(),
            &mut crate::audit::DecisionRecord::new(crate::audit::kind::DECISION, ""),
        )
        .ok();
        return caller;
    }
    if let Ok(claims) = pipeline
        .tokens()
        .verify(token, None, std::time::SystemTime::now())
    {
        caller.agent = policy.agents().iter().position(|a| a.name == claims.sub);
        caller.run = Some(claims.run);
        caller.token_scopes = claims.scopes;
    }
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

/// Serves vending requests named by token until `shutdown` changes.
pub async fn serve(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((tcp, addr)) = accepted else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let pipeline = Arc::clone(&pipeline);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let pipeline = Arc::clone(&pipeline);
                        async move {
                            let policy = pipeline.policy();
                            let caller = token_caller(&pipeline, &policy, &req, addr);
                            let response = if vend_scope(&req).is_some() {
                                pipeline.vend(&policy, caller, &req).await
                            } else {
                                refusal_response(Reason::NoMatchingScope, "-")
                            };
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    connections.abort_all();
}
