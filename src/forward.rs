//! The upstream side: pooled hyper clients, header hygiene, timeouts.
//!
//! Upstream TLS is always verified: webpki roots, plus the CA file a scope
//! names for a private upstream. Scopes that trust the same extra CAs share one
//! pooled client; scopes that trust none share the default one.
//!
//! Clients are kept per shard ([`crate::shards`]): hyper's pooled client runs
//! each connection in a task on the runtime that opened it, and its clones
//! share one pool, so one client for the whole process would hand a call
//! from its shard's thread to another's and back. A thread says which shard
//! it is with [`enter_shard`]; calls on any other thread share one more set
//! of clients. The shards' clients are built from the same roots, ranges and
//! pins, so which set a call uses changes nothing but the thread.
//!
//! Invariants: nothing here decides anything. A request only reaches
//! [`Upstreams::send`] with a [`Permitted`] that `decide` made; hop-by-hop
//! headers and clawgate's own headers never leave in either direction.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, Uri};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::body::{CountingBody, FailureFlag};
use crate::egress::{AllowPrivate, EgressError, EgressResolver, Pins};
use crate::error::Reason;
use crate::policy::{Permitted, Upstream};

/// The request body type sent upstream: the agent's body, streamed and counted.
pub type UpstreamBody = CountingBody<ProxyBody, FailureFlag>;
type PooledClient = Client<HttpsConnector<HttpConnector<EgressResolver>>, UpstreamBody>;

/// Connection limits for upstream calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Limit on TCP connect to the upstream.
    pub connect: Duration,
    /// Limit on the whole exchange, response body included.
    pub total: Duration,
}

thread_local! {
    /// The shard this thread serves, if it is a shard's thread.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the calling thread as shard `index`'s: upstream calls made on it
/// use that shard's clients.
pub fn enter_shard(index: usize) {
    SHARD.with(|shard| shard.set(Some(index)));
}

/// The upstream clients, one set per shard and one for any other thread;
/// in each set one client per distinct set of trusted roots and private
/// ranges (every client's resolver checks addresses against its scope's
/// `allow_private`).
pub struct Upstreams {
    timeouts: Timeouts,
    pins: Pins,
    /// Index `i` for shard `i`'s thread, the last for every other thread.
    shards: Box<[ShardClients]>,
}

/// The clients one shard's calls use.
struct ShardClients {
    default: PooledClient,
    private: Mutex<HashMap<[u8; 32], PooledClient>>,
    /// The clients by the identity of the scope's own `Arc`s, so that a call
    /// finds its client without hashing the roots. The entries hold those
    /// `Arc`s, so an address cannot be reused by another scope's while its
    /// entry exists.
    recent: Mutex<Vec<RecentClient>>,
}

/// A client found for one scope's roots and private ranges.
struct RecentClient {
    roots: Arc<Vec<CertificateDer<'static>>>,
    allow: Arc<AllowPrivate>,
    http1_only: bool,
    client: PooledClient,
}

/// Entries in the fast lookup; past this (policy reloads make new `Arc`s)
/// it is emptied and refilled from the hashed map.
const RECENT_CLIENTS: usize = 64;

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("timeouts", &self.timeouts)
            .field("shards", &(self.shards.len() - 1))
            .finish_non_exhaustive()
    }
}

/// An upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A scope's CA file holds a certificate rustls will not use as a root.
    #[error("upstream CA certificate rejected: {0}")]
    BadRoot(String),
    /// rustls refused the configuration.
    #[error("upstream TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

impl Upstreams {
    /// Builds the default clients (webpki roots only, public addresses
    /// only) for `shards` shards and for the other threads. `pins` are names
    /// fixed to addresses (`serve --resolve`).
    pub fn new(timeouts: Timeouts, pins: Pins, shards: usize) -> Result<Upstreams, ForwardError> {
        let shards = (0..=shards)
            .map(|_| {
                Ok(ShardClients {
                    default: build_client(&[], Arc::default(), Arc::clone(&pins), timeouts, false)?,
                    private: Mutex::new(HashMap::new()),
                    recent: Mutex::new(Vec::new()),
                })
            })
            .collect::<Result<_, ForwardError>>()?;
        Ok(Upstreams {
            timeouts,
            pins,
            shards,
        })
    }

    /// The configured timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Names pinned to addresses.
    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// The calling thread's set of clients.
    fn here(&self) -> &ShardClients {
        let other = self.shards.len() - 1;
        let index = SHARD.with(Cell::get).filter(|i| *i < other);
        &self.shards[index.unwrap_or(other)]
    }

    /// The client for a scope's roots and private ranges on this thread's
    /// shard: found by the identity of its `Arc`s, else by the hash of
    /// their contents.
    fn scope_client(
        &self,
        roots: &Arc<Vec<CertificateDer<'static>>>,
        allow: &Arc<AllowPrivate>,
        http1_only: bool,
    ) -> Result<PooledClient, ForwardError> {
        let here = self.here();
        if roots.is_empty() && allow.is_empty() && !http1_only {
            return Ok(here.default.clone());
        }
        let poisoned = || ForwardError::BadRoot("client cache poisoned".into());
        if let Some(found) = here
            .recent
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .find(|r| {
                Arc::ptr_eq(&r.roots, roots)
                    && Arc::ptr_eq(&r.allow, allow)
                    && r.http1_only == http1_only
            })
        {
            return Ok(found.client.clone());
        }
        let client = self.client_for(here, roots, allow, http1_only)?;
        let mut recent = here.recent.lock().map_err(|_| poisoned())?;
        if recent.len() >= RECENT_CLIENTS {
            recent.clear();
        }
        recent.push(RecentClient {
            roots: Arc::clone(roots),
            allow: Arc::clone(allow),
            http1_only,
            client: client.clone(),
        });
        Ok(client)
    }

    fn client_for(
        &self,
        here: &ShardClients,
        extra_roots: &[CertificateDer<'static>],
        allow: &Arc<AllowPrivate>,
        http1_only: bool,
    ) -> Result<PooledClient, ForwardError> {
        let mut hasher = Sha256::new();
        for root in extra_roots {
            hasher.update((root.as_ref().len() as u64).to_be_bytes());
            hasher.update(root.as_ref());
        }
        hasher.update(format!("{allow:?} {http1_only}").as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        let mut clients = here
            .private
            .lock()
            .map_err(|_| ForwardError::BadRoot("client cache poisoned".into()))?;
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = build_client(
            extra_roots,
            Arc::clone(allow),
            Arc::clone(&self.pins),
            self.timeouts,
            http1_only,
        )?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Sends a permitted request and waits for the response head, within the
    /// total timeout. `http1_only` is for upgrades, which HTTP/2 cannot carry.
    pub async fn send(
        &self,
        permit: &Permitted,
        request: Request<UpstreamBody>,
        http1_only: bool,
    ) -> Result<Response<Incoming>, Reason> {
        let scope = permit.scope();
        let client = self
            .scope_client(&scope.ca_certs, &scope.allow_private, http1_only)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot build upstream client");
                Reason::UpstreamUnreachable
            })?;
        match tokio::time::timeout(self.timeouts.total, client.request(request)).await {
            Err(_) => Err(Reason::UpstreamTimeout),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                if let Some(blocked) =
                    error_chain(&e).find_map(|cause| match cause.downcast_ref::<EgressError>() {
                        Some(EgressError::Blocked(blocked)) => Some(*blocked),
                        _ => None,
                    })
                {
                    tracing::warn!(error = %blocked, "upstream address refused");
                    return Err(Reason::EgressAddressBlocked);
                }
                let timed_out = error_chain(&e).any(|cause| {
                    cause
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                        || cause.to_string().contains("timed out")
                });
                tracing::warn!(error = %ErrorChain(&e), "upstream call failed");
                Err(if timed_out {
                    Reason::UpstreamTimeout
                } else {
                    Reason::UpstreamUnreachable
                })
            }
        }
    }
}

/// The client a credential's token endpoint is reached with: the same TLS
/// verification (webpki roots plus `extra_roots`) and the same egress checks
/// as upstream calls, over a body the broker builds whole.
pub type TokenClient =
    Client<HttpsConnector<HttpConnector<EgressResolver>>, http_body_util::Full<bytes::Bytes>>;

/// Builds a [`TokenClient`].
pub fn token_client(
    extra_roots: &[CertificateDer<'static>],
    allow: Arc<AllowPrivate>,
    pins: Pins,
    timeouts: Timeouts,
) -> Result<TokenClient, ForwardError> {
    build_client(extra_roots, allow, pins, timeouts, false)
}

fn build_client<B>(
    extra_roots: &[CertificateDer<'static>],
    allow: Arc<AllowPrivate>,
    pins: Pins,
    timeouts: Timeouts,
    http1_only: bool,
) -> Result<Client<HttpsConnector<HttpConnector<EgressResolver>>, B>, ForwardError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for root in extra_roots {
        roots
            .add(root.clone())
            .map_err(|e| ForwardError::BadRoot(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The resolver checks every address and the connector dials only what
    // it returned: the address checked is the address connected to.
    let mut http = HttpConnector::new_with_resolver(EgressResolver::new(allow, pins));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeouts.connect));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if http1_only {
        builder.enable_http1().wrap_connector(http)
    } else {
        builder.enable_all_versions().wrap_connector(http)
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(https))
}

fn error_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// Displays an error with its causes, `a: b: c`.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, cause) in error_chain(self.0).enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            write!(f, "{cause}")?;
        }
        Ok(())
    }
}

/// The upstream URI for a full upstream path and the agent's query.
pub fn upstream_uri(upstream: &Upstream, path: &str, query: Option<&str>) -> Result<Uri, Reason> {
    let mut text = format!("{}://{}{}", upstream.scheme, upstream.authority(), path);
    if let Some(query) = query {
        text.push('?');
        text.push_str(query);
    }
    text.parse().map_err(|_| Reason::MalformedRequest)
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, the headers `Connection` names, and every
/// `x-clawgate-*` header.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-clawgate-"))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
