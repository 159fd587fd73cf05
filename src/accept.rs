//! One accept path for every listener (agent, token, admin, vend) and for
//! interception's inner TLS: handshake admission, `tls-rejected` records,
//! the header-read timeout, HTTP/1.1 and HTTP/2 with upgrades, and the
//! graceful drain at shutdown.
//!
//! Invariants:
//! - No byte of HTTP is read from a peer before its handshake completed
//!   against the configuration in force (see [`crate::tls`]).
//! - Idle or slow peers cannot starve the door: the ClientHello must arrive
//!   within [`CLIENT_HELLO_TIMEOUT`], pending connections are bounded per
//!   source and overall with the oldest dropped first ([`gate`]), and the
//!   CPU-bound part of a handshake runs under a small number of permits.
//! - Every rejected or dropped handshake is a `tls-rejected` record, capped
//!   per source ([`rejections`]); a client certificate with more than one
//!   clawgate identity is refused in the handshake and recorded as
//!   `identity-ambiguous` ([`crate::tls::one_identity`]).
//! - At shutdown a listener stops accepting, lets its connections finish
//!   within the drain time, then ends them.

pub mod gate;
pub mod rejections;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::{LazyConfigAcceptor, server::TlsStream};

pub use gate::Gate;
pub use rejections::Rejections;
use rejections::{describe_tls_error, tls_error_reason};

use crate::error::Reason;
use crate::tls::{Door, TlsStore};

/// A peer must send its ClientHello within this time.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// After its ClientHello, a peer must finish the handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer must send a whole request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that is no longer allowed may finish the response in hand
/// for this long, then it is cut.
pub const UNTIL_GRACE: Duration = Duration::from_millis(500);

/// Resolves when a connection must end before its peer is done (an
/// override or a policy reload withdrew what it was allowed), with the
/// reason (`ended-by-override`, `ended-by-policy`) and what withdrew it.
pub type Until = Pin<Box<dyn Future<Output = (Reason, String)> + Send>>;

impl<S> std::fmt::Debug for Served<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("until", &self.until.is_some())
            .finish_non_exhaustive()
    }
}

/// What a connection's service is made from.
#[derive(Debug)]
pub struct Accepted {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The peer's verified leaf certificate, on a door that asks for one.
    pub leaf: Option<CertificateDer<'static>>,
}

/// A connection's service, and when it must end early.
pub struct Served<S> {
    /// Serves the connection's requests.
    pub service: S,
    /// Ends the connection when it resolves.
    pub until: Option<Until>,
}

/// One listener: where it listens, how peers authenticate, whom rejections
/// are recorded by.
#[derive(Debug)]
pub struct Listener {
    /// A name for logs and records (`agent`, `token`, `admin`, `vend`).
    pub name: &'static str,
    /// The bound socket.
    pub tcp: TcpListener,
    /// TLS material and which configuration of it; `None` is plain HTTP
    /// (the loopback vend listener).
    pub tls: Option<(Arc<TlsStore>, Door)>,
    /// Where rejected handshakes are recorded.
    pub rejections: Arc<Rejections>,
    /// The listener's handshake admission ([`new_gate`]). The shards that
    /// serve one listener share one gate, so its bounds hold for the
    /// listener, not per shard.
    pub gate: Arc<Gate>,
}

/// A listener's handshake admission with the bounds every listener has.
pub fn new_gate() -> Arc<Gate> {
    Gate::new(
        pending_bound(),
        gate::PENDING_PER_SOURCE,
        gate::HANDSHAKE_PERMITS,
    )
}

/// Serves `listener` until `shutdown` flips, then drains for at most `drain`.
pub async fn serve<M, S, B>(
    listener: Listener,
    make: M,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    M: Fn(Accepted) -> Result<Served<S>, String> + Send + Sync + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Listener {
        name,
        tcp,
        tls,
        rejections,
        gate,
    } = listener;
    let make = Arc::new(make);
    // Flips when the listener drains: every connection finishes the
    // request in hand, then closes.
    let (draining, drain_signal) = watch::channel(false);
    // Connection tasks are kept so that shutdown can end them and know they
    // are gone before the decision log closes.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = tcp.accept() => {
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let make = Arc::clone(&make);
                let rejections = Arc::clone(&rejections);
                let watcher = drain_signal.clone();
                let Some((store, door)) = tls.clone() else {
                    connections.spawn(async move {
                        match make(Accepted { addr, leaf: None }) {
                            Ok(served) => serve_http(stream, served, watcher, (name, addr), &rejections).await,
                            Err(why) => rejections.reject(addr, format!("{name} listener: {why}")),
                        }
                    });
                    continue;
                };
                // Admitted before the handshake is spawned, so the oldest
                // idle peer makes room at once.
                let (ticket, dropped) = gate.enter(addr.ip());
                if dropped > 0 {
                    tracing::debug!(listener = name, dropped, "oldest pending connections dropped");
                }
                let gate = Arc::clone(&gate);
                connections.spawn(async move {
                    let config = store.config(door);
                    let tls = match handshake(stream, config, &gate, ticket).await {
                        Ok(tls) => tls,
                        Err((reason, why)) => {
                            return rejections.reject_as(addr, reason, format!("{name} listener: {why}"));
                        }
                    };
                    let leaf = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.clone().into_owned());
                    match make(Accepted { addr, leaf }) {
                        Ok(served) => serve_http(tls, served, watcher, (name, addr), &rejections).await,
                        Err(why) => rejections.reject(addr, format!("{name} listener: {why}")),
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(tcp);
    draining.send_replace(true);
    let all_done = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, all_done).await.is_err() {
        tracing::warn!(
            listener = name,
            "connections did not finish within the drain timeout; ending them"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    rejections.flush_suppressed(u64::MAX);
    rejections.flush_parse();
}

/// Raises the soft limit on open files to the hard limit, as a server that
/// holds one descriptor per peer must; returns the limit now in force.
#[cfg(unix)]
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open files limit");
        }
    }
    open_files_limit()
}

/// Elsewhere the limit is left alone.
#[cfg(not(unix))]
pub fn raise_open_files_limit() -> Option<u64> {
    None
}

#[cfg(unix)]
fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(unix))]
fn open_files_limit() -> Option<u64> {
    None
}

/// The pending bound, kept well below the file descriptor limit so that
/// accepting never fails for lack of descriptors.
fn pending_bound() -> usize {
    open_files_limit().map_or(gate::MAX_PENDING, |limit| {
        usize::try_from(limit / 4)
            .unwrap_or(gate::MAX_PENDING)
            .clamp(64, gate::MAX_PENDING)
    })
}

/// The TLS handshake under admission: the ClientHello within its deadline,
/// then the rest under a permit; a newer peer may push this one out while
/// it waits.
async fn handshake<I>(
    stream: I,
    config: Arc<ServerConfig>,
    gate: &Gate,
    mut ticket: gate::Ticket,
) -> Result<TlsStream<I>, (Reason, String)>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let rejected = |why: String| (Reason::TlsRejected, why);
    let failed = |e: &std::io::Error| (tls_error_reason(e), describe_tls_error(e));
    let evicted = || rejected("dropped while pending to admit a newer connection".into());
    let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = tokio::select! {
        hello = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, lazy) => match hello {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => return Err(failed(&e)),
            Err(_) => return Err(rejected("no ClientHello in time".into())),
        },
        () = ticket.evicted() => return Err(evicted()),
    };
    let finish = async {
        let _permit = gate.permit().await;
        start.into_stream(config).await
    };
    let tls = tokio::select! {
        done = tokio::time::timeout(HANDSHAKE_TIMEOUT, finish) => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(failed(&e)),
            Err(_) => return Err(rejected("handshake timed out".into())),
        },
        () = ticket.evicted() => return Err(evicted()),
    };
    drop(ticket);
    Ok(tls)
}

/// Interception's inner TLS: the agent's handshake with a minted leaf,
/// under the same deadlines. The agent's identity was proven on the outer
/// connection, so this is not admission-controlled again.
pub async fn inner_handshake<I>(
    stream: I,
    config: Arc<ServerConfig>,
) -> Result<TlsStream<I>, String>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout(CLIENT_HELLO_TIMEOUT + HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(describe_tls_error(&e)),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// The HTTP builder every connection uses: header-read timeout, HTTP/1.1
/// and HTTP/2.
pub fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves HTTP on an accepted connection, upgrades included, until the
/// peer is done, the drain ends it, or `until` resolves.
async fn serve_http<I, S, B>(
    io: I,
    served: Served<S>,
    mut draining: watch::Receiver<bool>,
    (name, addr): (&'static str, SocketAddr),
    rejections: &Rejections,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = http_builder();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), served.service);
    tokio::pin!(conn);
    let until = async {
        match served.until {
            Some(until) => until.await,
            None => std::future::pending().await,
        }
    };
    // Either way the connection finishes the request in hand (which the
    // pipeline refuses, when an override is why) and then closes; an idle
    // kept-alive connection closes at once.
    let result = tokio::select! {
        result = conn.as_mut() => result,
        ended = until => {
            tracing::info!(client = %addr, reason = ended.0.code(), "connection ended: no longer allowed");
            rejections.connection_ended(name, addr, ended);
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(UNTIL_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
        }
        () = async { let _ = draining.wait_for(|d| *d).await.is_ok(); } => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        match rejections::ParseRejection::of(&*e) {
            Some(kind) => rejections.parse_rejected(name, addr, kind),
            None => tracing::debug!(error = %e, client = %addr, "connection ended with an error"),
        }
    }
}
