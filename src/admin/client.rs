//! A small mTLS client for the admin API, used by `clawgate policy status`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the admin API could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A certificate or key file is unusable.
    #[error("cannot use `{path}`: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The URL is not usable.
    #[error("admin url `{0}` must be https://HOST:PORT")]
    Url(String),
    /// The exchange failed.
    #[error("admin api unreachable: {0}")]
    Exchange(String),
}

/// GETs `path` from the admin API at `base` with a client certificate;
/// answers the status and body.
pub async fn get(
    base: &str,
    path: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(u16, Bytes), ClientError> {
    request(base, (http::Method::GET, path, None), ca, cert, key).await
}

/// Sends `method` to `path` of the admin API at `base`, with `body` as
/// JSON when given; answers the status and body.
pub async fn request(
    base: &str,
    (method, path, body): (http::Method, &str, Option<Bytes>),
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(u16, Bytes), ClientError> {
    let file_error = |path: &Path, why: String| ClientError::File {
        path: path.to_path_buf(),
        why,
    };
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_error(ca, e.to_string()))? {
        roots
            .add(c.map_err(|e| file_error(ca, e.to_string()))?)
            .map_err(|e| file_error(ca, e.to_string()))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Exchange(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| file_error(cert, e.to_string()))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let uri: http::Uri = format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .map_err(|_| ClientError::Url(base.to_owned()))?;
    if uri.scheme_str() != Some("https") {
        return Err(ClientError::Url(base.to_owned()));
    }
    let mut request = http::Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| ClientError::Exchange(e.to_string()))?;
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
            .await
            .map_err(|_| ClientError::Exchange("timed out".into()))?
            .map_err(|e| ClientError::Exchange(with_sources(&e)))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Exchange(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// An error and its sources, joined: the client's own message alone says
/// little ("client error (Connect)").
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
