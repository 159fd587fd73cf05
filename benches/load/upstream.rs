//! The upstream every target forwards to: HTTPS (HTTP/1.1, keep-alive), one
//! answer of 1 KiB to any path. It checks the injected credential, so a proxy
//! that forgot to inject it shows up as errors, not as a fast run.

use std::convert::Infallible;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The answer's size.
pub const BODY_BYTES: usize = 1024;

/// Serves forever on `127.0.0.1:0`; prints the port on stdout first.
pub fn run(certs: &Path, token: &str) -> Result<(), Box<dyn std::error::Error>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.join("server.pem"))?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(certs.join("server-key.pem"))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let expected = Bytes::from(format!("Bearer {token}"));
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(acceptor, expected, body))?;
    Ok(())
}

async fn serve(acceptor: TlsAcceptor, expected: Bytes, body: Bytes) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let expected = expected.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |req: Request<Incoming>| {
                let authorized = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .is_some_and(|v| v.as_bytes() == expected.as_ref());
                let body = body.clone();
                async move {
                    let mut response =
                        Response::new(Full::new(if authorized { body } else { Bytes::new() }));
                    if !authorized {
                        *response.status_mut() = StatusCode::UNAUTHORIZED;
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
