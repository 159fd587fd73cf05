//! The token listener (`--token-listen`): TLS with server authentication
//! only, for clients that cannot present a certificate to a proxy. A run
//! token or a per-agent proxy key arrives as the password of
//! `Proxy-Authorization: Basic` (curl, Go, Node, Python and botocore send it
//! from the proxy URL), names the agent, and then goes through the same
//! pipeline as a certified call.
//!
//! Invariants: a call without a token is refused `run-token-missing` (407)
//! and recorded; the token is checked again in the pipeline, so this module
//! only finds out whom it claims to be; `Proxy-Authorization` never goes
//! upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::{HeaderValue, Request, header};
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{RUN_TOKEN_HEADER, proxy_key};
use crate::accept::{self, Accepted, Gate, Rejections, Served};
use crate::identity::PeerIdentity;
use crate::live::{Membership, Subject};
use crate::pipeline::{Peer, Pipeline};
use crate::tls::{Door, TlsStore};

/// The password of a `Proxy-Authorization: Basic` header.
fn basic_password(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// Accepts token-authenticated connections until `shutdown` flips, then
/// drains them within `drain`. Like the agent listener it runs on every
/// shard, each on its own socket, all with the token listener's one `gate`.
pub async fn serve(
    tcp: TcpListener,
    gate: Arc<Gate>,
    tls: Arc<TlsStore>,
    rejections: Arc<Rejections>,
    pipeline: Arc<Pipeline>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let listener = accept::Listener {
        name: "token",
        tcp,
        tls: Some((tls, Door::Token)),
        rejections,
        gate,
    };
    let make = move |accepted: Accepted| {
        let pipeline = Arc::clone(&pipeline);
        let addr = accepted.addr;
        // Each request names its agent by its own token; the connection is
        // a live member under the agent its latest token named, so an
        // override for that agent ends it.
        let membership = Arc::new(
            pipeline
                .live()
                .register(Subject::default(), pipeline.policy().digest()),
        );
        let until = membership.until();
        let service = service_fn(move |req| {
            let pipeline = Arc::clone(&pipeline);
            let membership = Arc::clone(&membership);
            async move { Ok::<_, Infallible>(handle(&pipeline, addr, &membership, req).await) }
        });
        Ok(Served {
            service,
            until: Some(Box::pin(async move {
                let ended = until.await;
                (ended.reason, ended.detail)
            })),
        })
    };
    accept::serve(listener, make, shutdown, drain).await;
}

async fn handle(
    pipeline: &Arc<Pipeline>,
    addr: SocketAddr,
    membership: &Membership,
    mut req: Request<hyper::body::Incoming>,
) -> http::Response<crate::body::ProxyBody> {
    let token = req
        .headers_mut()
        .remove(header::PROXY_AUTHORIZATION)
        .as_ref()
        .and_then(basic_password);
    // An agent's own header is not trusted here: the token comes from
    // `Proxy-Authorization` only.
    req.headers_mut().remove(RUN_TOKEN_HEADER);
    // No certificate: the names are those of the agent the token claims,
    // when it verifies; the pipeline checks the token again either way.
    let mut identity = PeerIdentity {
        names: Vec::new(),
        fingerprint: String::new(),
        serial: String::new(),
    };
    let mut proxy_key = None;
    match &token {
        Some(key) if proxy_key::is_proxy_key(key) => {
            // A proxy key: the names of the agent it belongs to, if any; the
            // pipeline proves it again against the policy in force.
            let sha256 = proxy_key::sha256(key);
            let policy = pipeline.policy();
            if let Some((agent, key)) = policy.proxy_key(&sha256) {
                identity.names = policy.agent(agent).identities.clone();
                // What records carry in place of a certificate fingerprint.
                identity.fingerprint = proxy_key::record_ref(&key.id);
                membership.name_agent(&policy.agent(agent).name);
                membership.name_proxy_key(sha256);
            }
            proxy_key = Some(sha256);
        }
        Some(token) => {
            if let Ok(claims) = pipeline.tokens().verify(token, None, SystemTime::now()) {
                let policy = pipeline.policy();
                if let Some(agent) = policy.agents().iter().find(|a| a.name == claims.sub) {
                    identity.names = agent.identities.clone();
                    membership.name_agent(&agent.name);
                }
            }
            if let Ok(value) = HeaderValue::from_str(token) {
                req.headers_mut().insert(RUN_TOKEN_HEADER, value);
            }
        }
        None => {}
    }
    let peer = Arc::new(Peer {
        addr,
        identity,
        proxy_key,
    });
    // A refusal for want of a token carries its own challenge.
    pipeline.handle(&peer, req).await
}
