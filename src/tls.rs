//! TLS material: the one place PEM files are read and rustls server
//! configurations are built, for every listener and for interception's
//! inner TLS, and the hot reload of that material.
//!
//! Invariants:
//! - TLS 1.2 and 1.3 only, ring as the one crypto provider.
//! - Material is loaded and validated whole, then swapped: a bad file (on
//!   SIGHUP, on a file change or from the admin API) never replaces what is
//!   in force. It is a `certs-rejected` record; a swap is a `certs-loaded`
//!   record. Open connections keep the configuration they were accepted
//!   with; the next handshake uses the new one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::audit::{AuditLog, DecisionRecord, kind};
use crate::certs::files;
use crate::error::Reason;

pub mod one_identity;

/// A TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate file is missing.
    #[error(
        "missing `{path}`: run `clawgate certs init --dir {dir}` to create development certificates"
    )]
    Missing {
        /// The file.
        path: PathBuf,
        /// The certificate directory.
        dir: String,
    },
    /// A file could not be read or parsed.
    #[error("cannot use `{path}`: {why}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

fn unusable(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::Unusable {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| unusable(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| unusable(path, e))?;
    if certs.is_empty() {
        return Err(unusable(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| unusable(path, e))
}

/// Every CRL in a PEM file (at least one).
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_file_iter(path)
            .map_err(|e| unusable(path, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| unusable(path, e))?;
    if crls.is_empty() {
        return Err(unusable(path, "holds no PEM CRL"));
    }
    Ok(crls)
}

/// Which protocols a listener offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 and HTTP/1.1.
    H2AndHttp11,
    /// HTTP/1.1 only (the admin API: small requests, plain refusals).
    Http11,
}

/// The one builder of a rustls server configuration. `clients`, when
/// given, makes a client certificate required and verified.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    alpn: Alpn,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Tls(e.to_string()))?;
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Tls(e.to_string()))?;
    config.alpn_protocols = match alpn {
        Alpn::H2AndHttp11 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Alpn::Http11 => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// The verifier of agent (and admin) client certificates: the agent CA,
/// plus the CRL when there is one.
fn client_verifier(
    ca_path: &Path,
    crl: Option<&Path>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_path)? {
        roots.add(cert).map_err(|e| unusable(ca_path, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if let Some(crl) = crl {
        verifier = verifier.with_crls(read_crls(crl)?);
    }
    let verifier = verifier.build().map_err(|e| TlsError::Tls(e.to_string()))?;
    Ok(Arc::new(one_identity::OneIdentity(verifier)))
}

/// Which configuration a listener takes from the [`Material`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The agent listener: client certificate required, h2 and http/1.1.
    Agent,
    /// The token listener: server authentication only, h2 and http/1.1.
    Token,
    /// The admin API: client certificate required, http/1.1.
    Admin,
}

/// One consistent set of server configurations, loaded together.
#[derive(Debug)]
pub struct Material {
    agent: Arc<ServerConfig>,
    token: Arc<ServerConfig>,
    admin: Arc<ServerConfig>,
}

impl Material {
    /// Loads the server certificate and key, the agent CA and the CRL.
    pub fn load(certs_dir: &Path, crl: Option<&Path>) -> Result<Material, TlsError> {
        let need = |name: &str| {
            let path = certs_dir.join(name);
            if path.exists() {
                Ok(path)
            } else {
                Err(TlsError::Missing {
                    path,
                    dir: certs_dir.display().to_string(),
                })
            }
        };
        let ca = need(files::CA)?;
        let cert = need(files::SERVER)?;
        let key_path = need(files::SERVER_KEY)?;
        let chain = read_certs(&cert)?;
        let key = read_key(&key_path)?;
        let verifier = client_verifier(&ca, crl)?;
        // rustls checks the certificate against its key here; say which
        // files it was about.
        let agent = server_config(
            chain.clone(),
            key.clone_key(),
            Some(Arc::clone(&verifier)),
            Alpn::H2AndHttp11,
        )
        .map_err(|e| match e {
            TlsError::Tls(why) => unusable(&cert, format!("{why} (with `{}`)", key_path.display())),
            other => other,
        })?;
        let admin = server_config(chain.clone(), key.clone_key(), Some(verifier), Alpn::Http11)?;
        let token = server_config(chain, key, None, Alpn::H2AndHttp11)?;
        Ok(Material {
            agent: Arc::new(agent),
            token: Arc::new(token),
            admin: Arc::new(admin),
        })
    }

    /// The configuration for `door`.
    pub fn config(&self, door: Door) -> Arc<ServerConfig> {
        Arc::clone(match door {
            Door::Agent => &self.agent,
            Door::Token => &self.token,
            Door::Admin => &self.admin,
        })
    }
}

/// What identifies a version of a file on disk, to notice a change.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Something else that reloads with the certificates (the interception CA).
pub trait Reloadable: Send + Sync {
    /// Loads again from `certs_dir`; on error the old material stays.
    fn reload(&self, certs_dir: &Path) -> Result<(), String>;
}

/// The material in force, and how to load it again.
pub struct TlsStore {
    certs_dir: PathBuf,
    crl: Option<PathBuf>,
    current: ArcSwap<Material>,
    stamps: Mutex<Vec<Stamp>>,
    also: Mutex<Vec<Arc<dyn Reloadable>>>,
    audit: Mutex<Option<AuditLog>>,
    serial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TlsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStore")
            .field("certs_dir", &self.certs_dir)
            .finish_non_exhaustive()
    }
}

impl TlsStore {
    /// Loads the material once; a problem stops the start.
    pub fn load(certs_dir: &Path, crl: Option<&Path>) -> Result<TlsStore, TlsError> {
        let material = Material::load(certs_dir, crl)?;
        let store = TlsStore {
            certs_dir: certs_dir.to_path_buf(),
            crl: crl.map(Path::to_path_buf),
            current: ArcSwap::from_pointee(material),
            stamps: Mutex::new(Vec::new()),
            also: Mutex::new(Vec::new()),
            audit: Mutex::new(None),
            serial: tokio::sync::Mutex::new(()),
        };
        if let Ok(mut stamps) = store.stamps.lock() {
            *stamps = store.stamps_now();
        }
        Ok(store)
    }

    /// Reload records go to `audit`; `also` reloads with the certificates.
    pub fn attach(&self, audit: AuditLog, also: Vec<Arc<dyn Reloadable>>) {
        if let Ok(mut slot) = self.audit.lock() {
            *slot = Some(audit);
        }
        if let Ok(mut slot) = self.also.lock() {
            *slot = also;
        }
    }

    /// The configuration in force for `door`.
    pub fn config(&self, door: Door) -> Arc<ServerConfig> {
        self.current.load().config(door)
    }

    fn watched(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = [
            files::CA,
            files::SERVER,
            files::SERVER_KEY,
            files::INTERCEPT_CA,
            files::INTERCEPT_CA_KEY,
        ]
        .iter()
        .map(|name| self.certs_dir.join(name))
        .collect();
        paths.extend(self.crl.clone());
        paths
    }

    fn stamps_now(&self) -> Vec<Stamp> {
        self.watched().iter().map(|p| stamp(p)).collect()
    }

    /// Whether a watched file changed since the last load attempt.
    pub fn changed_on_disk(&self) -> bool {
        let now = self.stamps_now();
        self.stamps.lock().map(|s| *s != now).unwrap_or(false)
    }

    /// Loads everything again and swaps it in, or keeps the old material
    /// and says why. Either way it is a record.
    pub async fn reload(&self, trigger: &str) -> Result<(), String> {
        let _one_at_a_time = self.serial.lock().await;
        if let Ok(mut stamps) = self.stamps.lock() {
            *stamps = self.stamps_now();
        }
        let loaded =
            Material::load(&self.certs_dir, self.crl.as_deref()).map_err(|e| e.to_string());
        let result = loaded.and_then(|material| {
            let also = self.also.lock().map(|a| a.clone()).unwrap_or_default();
            for other in also {
                other.reload(&self.certs_dir)?;
            }
            self.current.store(Arc::new(material));
            Ok(())
        });
        let (reason, detail) = match &result {
            Ok(()) => {
                tracing::info!(trigger, "certificates reloaded");
                (Reason::CertsLoaded, format!("reloaded ({trigger})"))
            }
            Err(e) => {
                tracing::error!(trigger, error = %e, "certificates not reloaded; the old ones stay in force");
                (Reason::CertsRejected, format!("{e} ({trigger})"))
            }
        };
        let audit = self.audit.lock().ok().and_then(|a| a.clone());
        if let Some(audit) = audit {
            let mut record = DecisionRecord::new(kind::CERTS, &uuid::Uuid::now_v7().to_string());
            record.reason = reason.code().to_owned();
            record.detail = Some(detail);
            audit.append(record);
        }
        result
    }
}
