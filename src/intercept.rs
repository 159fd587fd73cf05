//! TLS interception: leaf certificates minted on the fly by the interception
//! CA from `certs init`, one per host, cached.
//!
//! A leaf is ECDSA P-256, valid for [`LEAF_VALIDITY`] from five minutes ago,
//! names exactly the host the agent asked for (a DNS or IP SAN), and is
//! reused until half its validity has passed. The server configuration built
//! around it offers ALPN h2 and http/1.1. The agent's own identity was proven
//! on the outer mTLS connection, so the inner handshake asks for no client
//! certificate.
//!
//! Invariants: the interception CA key never leaves this module; a leaf is
//! only minted for a host that policy allowed a `CONNECT` to.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::certs::files;
use crate::egress::Host;
use crate::tls::{Alpn, Reloadable};

/// How long a minted leaf is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Hosts whose configuration is cached at once; past this the cache starts
/// over, so a stream of distinct names cannot grow memory without bound.
const MAX_CACHED: usize = 4096;

/// The interception CA could not be loaded or a leaf could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// A CA file is missing or unreadable.
    #[error(
        "cannot read `{path}`: {why}; run `clawgate certs init --dir {dir}` to create the interception CA"
    )]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
        /// The certificate directory.
        dir: String,
    },
    /// rcgen failed.
    #[error("cannot mint a leaf certificate: {0}")]
    Mint(#[from] rcgen::Error),
    /// rustls refused the leaf.
    #[error("cannot use a minted leaf: {0}")]
    Leaf(String),
    /// The host cannot be put in a certificate.
    #[error("host `{0}` cannot be named in a certificate")]
    BadHost(String),
}

/// Minted configurations by host, with the time they stay fresh until.
type LeafCache = HashMap<Host, (Arc<ServerConfig>, Instant)>;

/// Mints and caches interception leaves. Clones share the CA and cache, so
/// a reload of the CA reaches every holder.
#[derive(Clone)]
pub struct Interceptor {
    issuer: Arc<ArcSwap<Issuer<'static, KeyPair>>>,
    cache: Arc<Mutex<LeafCache>>,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor").finish_non_exhaustive()
    }
}

impl Interceptor {
    /// Loads `intercept-ca.pem` and its key from `certs_dir`.
    pub fn load(certs_dir: &Path) -> Result<Interceptor, InterceptError> {
        Ok(Interceptor {
            issuer: Arc::new(ArcSwap::from_pointee(Self::load_issuer(certs_dir)?)),
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn load_issuer(certs_dir: &Path) -> Result<Issuer<'static, KeyPair>, InterceptError> {
        let read = |name: &str| {
            let path = certs_dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| InterceptError::Ca {
                path: path.display().to_string(),
                why: e.to_string(),
                dir: certs_dir.display().to_string(),
            })
        };
        let cert = read(files::INTERCEPT_CA)?;
        let key = read(files::INTERCEPT_CA_KEY)?;
        let bad = |why: String| InterceptError::Ca {
            path: certs_dir.join(files::INTERCEPT_CA).display().to_string(),
            why,
            dir: certs_dir.display().to_string(),
        };
        let key = KeyPair::from_pem(&key).map_err(|e| bad(e.to_string()))?;
        // A certificate and key from different pairs (a half-finished
        // rotation) would sign leaves nobody can verify: refuse it.
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(cert.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let parsed = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(bad(format!(
                "its key is not the one in `{}`",
                files::INTERCEPT_CA_KEY
            )));
        }
        Issuer::from_ca_cert_pem(&cert, key).map_err(|e| bad(e.to_string()))
    }

    /// The server configuration for an intercepted connection to `host`:
    /// cached, or minted now.
    pub fn server_config(&self, host: &Host) -> Result<Arc<ServerConfig>, InterceptError> {
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((config, fresh_until)) = cache.get(host)
            && now < *fresh_until
        {
            return Ok(Arc::clone(config));
        }
        let config = Arc::new(self.mint(host)?);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(host.clone(), (Arc::clone(&config), now + LEAF_VALIDITY / 2));
        }
        Ok(config)
    }

    fn mint(&self, host: &Host) -> Result<ServerConfig, InterceptError> {
        let mut params = CertificateParams::default();
        let name = host.to_string();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params.subject_alt_names = vec![match host {
            Host::Ip(ip) => SanType::IpAddress(*ip),
            Host::Name(dns) => SanType::DnsName(
                dns.clone()
                    .try_into()
                    .map_err(|_| InterceptError::BadHost(name.clone()))?,
            ),
        }];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(300);
        params.not_after = now + LEAF_VALIDITY;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*self.issuer.load())?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        crate::tls::server_config(chain, key, None, Alpn::H2AndHttp11)
            .map_err(|e| InterceptError::Leaf(e.to_string()))
    }
}

impl Reloadable for Interceptor {
    /// A new CA replaces the old one and the cached leaves it signed.
    fn reload(&self, certs_dir: &Path) -> Result<(), String> {
        let issuer = Self::load_issuer(certs_dir).map_err(|e| e.to_string())?;
        self.issuer.store(Arc::new(issuer));
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "intercept_tests.rs"]
mod tests;
