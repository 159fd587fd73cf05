//! A local HTTPS upstream that answers with what it received, for the demo and
//! the end-to-end tests. It reads request bodies as a stream and only counts
//! them, so large uploads cost no memory.
//!
//! Paths with a meaning:
//! - a path ending in `/bytes/N` answers with N zero bytes, streamed in 64 KiB
//!   chunks (and does not echo the request, so no header comes back);
//! - a path ending in `/slow/MS` waits MS milliseconds before answering;
//! - a WebSocket upgrade (HTTP/1.1) is accepted and every message echoed;
//! - anything else answers JSON: method, path, query, headers, body size.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::body::{BoxError, ProxyBody};
use crate::certs::Pem;

/// A request as the upstream saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The query, if any.
    pub query: Option<String>,
    /// The authority the request was sent to (`Host`, or `:authority` in HTTP/2).
    pub authority: Option<String>,
    /// Every header, in order, lowercase names.
    pub headers: Vec<(String, String)>,
    /// How many body bytes arrived.
    pub body_bytes: u64,
}

/// A running echo upstream.
#[derive(Debug)]
pub struct EchoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl EchoUpstream {
    /// Starts an echo upstream on `127.0.0.1:0` serving `cert` (h2 and http/1.1).
    pub async fn start(cert: &Pem) -> std::io::Result<EchoUpstream> {
        let invalid = |e: &dyn std::fmt::Display| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(&e))?;
        let key =
            PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).map_err(|e| invalid(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&seen)));
        Ok(EchoUpstream { addr, seen, task })
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, seen: Arc<Mutex<Vec<Seen>>>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |req| {
                let seen = Arc::clone(&seen);
                async move { Ok::<_, Infallible>(answer(req, &seen).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn answer(mut req: Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Response<ProxyBody> {
    let websocket_key = req
        .headers()
        .get(http::header::UPGRADE)
        .filter(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        .and_then(|_| req.headers().get("sec-websocket-key"))
        .and_then(|v| v.to_str().ok())
        .map(super::websocket::accept_key);
    let on_upgrade = websocket_key
        .is_some()
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let path = parts.uri.path().to_owned();
    let record = Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        authority: parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            }),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_bytes,
    };
    if let Ok(mut all) = seen.lock() {
        all.push(record.clone());
    }
    if let (Some(accept), Some(on_upgrade)) = (websocket_key, on_upgrade) {
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let _ = super::websocket::echo(TokioIo::new(upgraded)).await;
            }
        });
        let mut response = Response::new(BodyExt::boxed(
            http_body_util::Empty::new().map_err(|never| match never {}),
        ));
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        if let Ok(accept) = http::HeaderValue::from_str(&accept) {
            headers.insert("sec-websocket-accept", accept);
        }
        return response;
    }
    if let Some(n) = numeric_suffix(&path, "/bytes/") {
        return Response::new(BodyExt::boxed(StreamBody::new(zeros(n))));
    }
    if let Some(ms) = numeric_suffix(&path, "/slow/") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let json = serde_json::to_vec(&record).unwrap_or_default();
    let mut response = Response::new(
        Full::new(Bytes::from(json))
            .map_err(|never| match never {})
            .boxed(),
    );
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// `N` when `path` ends in `{marker}N`.
fn numeric_suffix(path: &str, marker: &str) -> Option<u64> {
    let at = path.rfind(marker)?;
    path[at + marker.len()..].parse().ok()
}

/// `n` zero bytes as a stream of 64 KiB frames.
fn zeros(n: u64) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![0u8; CHUNK as usize]);
    let sizes = std::iter::successors(Some(n), |left| left.checked_sub(CHUNK))
        .filter(|&left| left > 0)
        .map(move |left| Ok(Frame::data(chunk.slice(..left.min(CHUNK) as usize))));
    futures_util::stream::iter(sizes)
}
