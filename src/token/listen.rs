//! The token listener (`--token-listen`): TLS with server authentication
//! only, for clients that cannot present a certificate to a proxy. The run
//! token arrives as the password of `Proxy-Authorization: Basic` (curl, Go
//! and Node send it from the proxy URL), names the agent, and then goes
//! through the same pipeline as a certified call.
//!
//! Invariants: a call without a token is refused `run-token-missing` (407)
//! and recorded; the token is checked again in the pipeline, so this module
//! only finds out whom it claims to be; `Proxy-Authorization` never goes
//! upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::{HeaderValue, Request, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::RUN_TOKEN_HEADER;
use crate::identity::PeerIdentity;
use crate::listener::ListenerError;
use crate::pipeline::{Peer, Pipeline};

/// TLS for the token listener: clawgate's server certificate, no client
/// certificate asked for.
pub fn server_config(certs_dir: &Path) -> Result<Arc<ServerConfig>, ListenerError> {
    let cert_path = certs_dir.join(crate::certs::files::SERVER);
    let key_path = certs_dir.join(crate::certs::files::SERVER_KEY);
    let unusable = |path: &Path, why: String| ListenerError::Unusable {
        path: path.to_path_buf(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| unusable(&cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| unusable(&cert_path, e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|e| unusable(&key_path, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ListenerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| ListenerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

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

/// Accepts token-authenticated connections until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    pipeline: Arc<Pipeline>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, addr)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let pipeline = Arc::clone(&pipeline);
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                        tracing::info!(client = %addr, "token listener handshake failed");
                        return;
                    };
                    let service = service_fn(move |req| {
                        let pipeline = Arc::clone(&pipeline);
                        async move { Ok::<_, Infallible>(handle(&pipeline, addr, req).await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
                    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                        tracing::debug!(error = %e, "token connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn handle(
    pipeline: &Arc<Pipeline>,
    addr: SocketAddr,
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
    if let Some(token) = &token {
        if let Ok(claims) = pipeline.tokens().verify(token, None, SystemTime::now()) {
            let policy = pipeline.policy();
            if let Some(agent) = policy.agents().iter().find(|a| a.name == claims.sub) {
                identity.names = agent.identities.clone();
            }
        }
        if let Ok(value) = HeaderValue::from_str(token) {
            req.headers_mut().insert(RUN_TOKEN_HEADER, value);
        }
    }
    let peer = Arc::new(Peer { addr, identity });
    // A refusal for want of a token carries its own challenge.
    pipeline.handle(&peer, req).await
}
