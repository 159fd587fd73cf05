//! The agent listener: rustls with a required client certificate, ALPN h2 and
//! http/1.1, one task per connection.
//!
//! Invariants: no byte of HTTP is read from a peer whose certificate did not
//! verify against the agent CA (and CRL, when given). Every rejected handshake
//! is logged and recorded as `tls-rejected`, at most [`REJECTIONS_PER_SECOND`]
//! records a second per source address; the rest are counted and the count is
//! recorded, so a flood can neither hide nor fill the disk.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::audit::{AuditLog, DecisionRecord, kind};
use crate::certs::files;
use crate::error::Reason;
use crate::identity;
use crate::pipeline::{Peer, Pipeline};

/// Records of rejected handshakes per source address and second.
pub const REJECTIONS_PER_SECOND: u32 = 10;
/// Records of rejected handshakes per second from all sources together.
pub const REJECTIONS_PER_SECOND_IN_ALL: u32 = 100;
/// Distinct sources tracked at once; beyond this, rejections share one counter.
const MAX_SOURCES: usize = 10_000;
/// TLS handshakes in progress at once.
const MAX_HANDSHAKES: usize = 1024;
/// A peer must finish the TLS handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer must send a request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
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

/// The agent listener's TLS configuration from `certs_dir` and an optional CRL.
pub fn server_config(
    certs_dir: &Path,
    crl: Option<&Path>,
) -> Result<Arc<ServerConfig>, ListenerError> {
    let need = |name: &str| {
        let path = certs_dir.join(name);
        if path.exists() {
            Ok(path)
        } else {
            Err(ListenerError::Missing {
                path,
                dir: certs_dir.display().to_string(),
            })
        }
    };
    let ca_path = need(files::CA)?;
    let cert_path = need(files::SERVER)?;
    let key_path = need(files::SERVER_KEY)?;
    let unusable = |path: &Path, why: String| ListenerError::Unusable {
        path: path.to_path_buf(),
        why,
    };

    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(&ca_path).map_err(|e| unusable(&ca_path, e.to_string()))?
    {
        let cert = cert.map_err(|e| unusable(&ca_path, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| unusable(&ca_path, e.to_string()))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| unusable(&cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| unusable(&cert_path, e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|e| unusable(&key_path, e.to_string()))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
    if let Some(crl_path) = crl {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(crl_path)
                .map_err(|e| unusable(crl_path, e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| unusable(crl_path, e.to_string()))?;
        if crls.is_empty() {
            return Err(unusable(crl_path, "holds no PEM CRL".into()));
        }
        verifier = verifier.with_crls(crls);
    }
    let verifier = verifier
        .build()
        .map_err(|e| ListenerError::Tls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ListenerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ListenerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts connections until `shutdown` flips, then drains in-flight calls.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    pipeline: Arc<Pipeline>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let rejections = Arc::new(Rejections::new(pipeline.audit().clone()));
    let graceful = GracefulShutdown::new();
    let sweeper = tokio::spawn(Arc::clone(&rejections).sweep_every(Duration::from_secs(5)));
    // Connection tasks are kept so that shutdown can end them and know they
    // are gone before the decision log closes.
    let mut connections = JoinSet::new();
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Handshakes cost CPU; past this many at once, new peers are
                // turned away (and counted) rather than queued.
                let Ok(handshake_slot) = Arc::clone(&handshakes).try_acquire_owned() else {
                    reject(&pipeline, &rejections, addr, "too many handshakes in progress".into());
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let pipeline = Arc::clone(&pipeline);
                let rejections = Arc::clone(&rejections);
                let watcher = graceful.watcher();
                connections.spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(handshake_slot);
                    let tls = match handshake {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return reject(&pipeline, &rejections, addr, describe_tls_error(&e)),
                        Err(_) => return reject(&pipeline, &rejections, addr, "handshake timed out".into()),
                    };
                    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                    let identity = match leaf.map(|der| identity::from_der(der)) {
                        Some(Ok(identity)) => identity,
                        Some(Err(e)) => return reject(&pipeline, &rejections, addr, e.to_string()),
                        None => return reject(&pipeline, &rejections, addr, "no client certificate".into()),
                    };
                    let peer = Arc::new(Peer { addr, identity });
                    let service = service_fn(move |req| {
                        let pipeline = Arc::clone(&pipeline);
                        let peer = Arc::clone(&peer);
                        async move { Ok::<_, Infallible>(pipeline.handle(&peer, req).await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder
                        .http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT);
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(error = %e, client = %addr, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    sweeper.abort();
    let drain_until = tokio::time::Instant::now() + drain;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight calls did not finish within the drain timeout; ending them");
    }
    // Tunnels and intercepted connections left their HTTP connection at the
    // upgrade; they get what is left of the drain time, then are ended.
    let left = drain_until.saturating_duration_since(tokio::time::Instant::now());
    if !pipeline.wait_idle(left).await {
        tracing::warn!("tunnels still open after the drain timeout; ending them");
    }
    pipeline.end_tunnels();
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    rejections.flush_suppressed(u64::MAX);
    // HTTP/2 streams run in tasks of their own; wait for their outcome records.
    if !pipeline.wait_idle(Duration::from_secs(5)).await {
        tracing::warn!("some outcome records were not queued before shutdown");
    }
}

/// The verifier's reason, in words an operator can act on.
fn describe_tls_error(e: &std::io::Error) -> String {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "connection closed during handshake".into(),
            _ => format!("handshake failed: {e}"),
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no client certificate".into(),
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not yet valid".into()
            }
            CertificateError::Revoked => "certificate revoked".into(),
            CertificateError::UnknownIssuer => "certificate not issued by the agent CA".into(),
            // Seen when a foreign CA shares the agent CA's name.
            CertificateError::BadSignature => {
                "certificate signature does not verify against the agent CA".into()
            }
            other => format!("certificate rejected: {other:?}"),
        },
        other => format!("handshake failed: {other}"),
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    second: u64,
    recorded: u32,
    suppressed: u64,
}

/// Per-source caps on `tls-rejected` records.
#[derive(Debug)]
struct Rejections {
    audit: AuditLog,
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
    global: Mutex<Window>,
}

fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Rejections {
    fn new(audit: AuditLog) -> Rejections {
        Rejections {
            audit,
            windows: Mutex::new(HashMap::new()),
            global: Mutex::new(Window::default()),
        }
    }

    /// Records a rejected handshake unless this source is over its cap; a
    /// recorded one carries the count suppressed since the last record.
    fn reject(&self, addr: SocketAddr, why: String) {
        let Some(earlier_suppressed) = self.admit(addr.ip(), now_second()) else {
            return;
        };
        tracing::warn!(client = %addr, reason = %why, "TLS handshake rejected");
        let detail = if earlier_suppressed > 0 {
            format!(
                "{why}; {earlier_suppressed} earlier rejections from this source were not recorded"
            )
        } else {
            why
        };
        self.audit
            .append(rejection_record(Some(addr.to_string()), detail));
    }

    /// `Some(suppressed_before)` when this rejection may be recorded.
    fn admit(&self, ip: IpAddr, second: u64) -> Option<u64> {
        let Ok(mut windows) = self.windows.lock() else {
            return Some(0);
        };
        let ip = source_key(ip);
        // Past the source limit, unknown sources share one window.
        let key = if windows.len() >= MAX_SOURCES && !windows.contains_key(&Some(ip)) {
            None
        } else {
            Some(ip)
        };
        let window = windows.entry(key).or_default();
        let mut carried = 0;
        if window.second != second {
            carried = window.suppressed;
            *window = Window {
                second,
                recorded: 0,
                suppressed: 0,
            };
        }
        // The global budget is only spent on what the source's own budget
        // admits, so one noisy source cannot crowd out the others' reasons.
        let admitted = window.recorded < REJECTIONS_PER_SECOND
            && self
                .global
                .lock()
                .map(|mut g| {
                    if g.second != second {
                        *g = Window {
                            second,
                            ..Window::default()
                        };
                    }
                    g.recorded += 1;
                    g.recorded <= REJECTIONS_PER_SECOND_IN_ALL
                })
                .unwrap_or(true);
        if admitted {
            window.recorded += 1;
            Some(carried)
        } else {
            // Keep what was carried: it is reported with the next record.
            window.suppressed += carried + 1;
            None
        }
    }

    /// Records the suppressed counts of windows older than `before` and
    /// forgets them.
    fn flush_suppressed(&self, before: u64) {
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        windows.retain(|source, window| {
            if window.second >= before {
                return true;
            }
            if window.suppressed > 0 {
                let who = source.map_or_else(|| "many sources".into(), |ip| ip.to_string());
                tracing::warn!(source = %who, count = window.suppressed, "TLS rejections not recorded individually");
                self.audit.append(rejection_record(
                    source.map(|ip| ip.to_string()),
                    format!("{} further rejections from {who} were not recorded individually", window.suppressed),
                ));
            }
            false
        });
    }

    async fn sweep_every(self: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            self.flush_suppressed(now_second().saturating_sub(2));
        }
    }
}

/// The source a rejection counts against: the address, or its /64 for IPv6,
/// where one host can hold a whole /64.
fn source_key(ip: IpAddr) -> IpAddr {
    // An IPv4 client on a dual-stack listener arrives as `::ffff:a.b.c.d`.
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
    }
}

/// Counts a rejected handshake in the metrics, then records it (capped).
fn reject(pipeline: &Pipeline, rejections: &Rejections, addr: SocketAddr, why: String) {
    pipeline.metrics().tls_rejected();
    rejections.reject(addr, why);
}

fn rejection_record(client_addr: Option<String>, detail: String) -> DecisionRecord {
    let mut record = DecisionRecord::new(kind::DECISION, &uuid::Uuid::now_v7().to_string());
    record.mode = Some("tls".into());
    record.client_addr = client_addr;
    record.decision = Some("deny".into());
    record.reason = Reason::TlsRejected.code().to_owned();
    record.detail = Some(detail);
    record
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
