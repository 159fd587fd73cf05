//! Per-core shards for the listeners on the call path (agent and token).
//!
//! `serve` runs N shards: N OS threads, each with a single-threaded Tokio
//! runtime and its own socket bound to the listener's address with
//! `SO_REUSEPORT`, so that the kernel spreads connections over the shards
//! and a connection, its calls, their upstream connections ([`crate::forward`]
//! keeps the pooled clients per shard) and their bodies all run on one
//! thread, without waking another to hand work over. Everything else (admin,
//! vend, reload, metrics, retention, the stores' tasks) stays on the main
//! runtime, and the decision log's writer on its own thread.
//!
//! Invariants:
//! - A shard runs the one accept path ([`crate::accept`]) like every other
//!   listener; the shards of one listener share its handshake [`Gate`], so
//!   the admission bounds hold for the listener, not per shard.
//! - Every shard is listening before `serve` says it started; a socket that
//!   cannot be bound or listened on, or a runtime that cannot be built,
//!   fails the start.
//! - A shard's runtime lives until its work returns, and the listeners'
//!   work returns only when the whole pipeline is idle or the drain time is
//!   up, so no shard drops the tasks (tunnels, streams, outcome records) of
//!   a call still in flight.
//!
//! [`Gate`]: crate::accept::Gate

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};

use crate::accept::Rejections;
use crate::pipeline::Pipeline;
use crate::tls::TlsStore;

/// Connections a shard's socket queues before it accepts them.
const BACKLOG: u32 = 1024;

/// Why the shards did not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A shard's socket could not be made, bound or listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A shard's thread or runtime could not be started.
    #[error("cannot start shard {index}: {source}")]
    Start {
        /// The shard.
        index: usize,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// How many shards to run: `requested`, or [`automatic`] for the available
/// cores when it is 0. Without `SO_REUSEPORT` (not unix) there is one.
pub fn count(requested: usize) -> usize {
    if !cfg!(unix) {
        return 1;
    }
    if requested > 0 {
        return requested;
    }
    automatic(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// One shard per core but one, and at least one: the decision log's writer
/// is a busy thread of its own (it seals, inserts and syncs every record),
/// and a shard that shares its core with it is preempted mid-call. On the
/// 2-core development machine one shard cost 15-35% less CPU per call at
/// 3,000 req/s than two, with a lower p99 and about the same maximum
/// (benches/README.md, "Figures: the writer's queue and one shard").
pub fn automatic(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// One socket per shard bound to `addr` (not listening yet), and the
/// address they share: with port 0, the port the first one got. With more
/// than one shard the sockets set `SO_REUSEPORT`; only sockets of the same
/// user may join such a group (Linux), as with nginx's `reuseport`.
///
/// A port that anything already listens on is refused, as a plain bind
/// would refuse it: without that check a second clawgate of the same user
/// (another policy, an old version) would silently take a share of the
/// agents' connections.
pub fn bind(addr: SocketAddr, shards: usize) -> Result<(Vec<TcpSocket>, SocketAddr), ShardError> {
    let error = |source| ShardError::Bind { addr, source };
    // A socket without `SO_REUSEPORT` cannot bind where a group of them,
    // or any other listener, is bound: this one finds out, then makes way.
    let free = socket(addr, false).map_err(error)?;
    free.bind(addr).map_err(error)?;
    let mut bound = free.local_addr().map_err(error)?;
    if shards <= 1 {
        return Ok((vec![free], bound));
    }
    drop(free);
    let mut sockets = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = socket(addr, true).map_err(error)?;
        socket.bind(bound).map_err(error)?;
        bound = socket.local_addr().map_err(error)?;
        sockets.push(socket);
    }
    Ok((sockets, bound))
}

/// A TCP socket for `addr`'s family, with `SO_REUSEPORT` when `shared`.
fn socket(addr: SocketAddr, shared: bool) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    // As `TcpListener::bind` does: a restart can bind while old
    // connections linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    if shared {
        socket.set_reuseport(true)?;
    }
    #[cfg(not(unix))]
    let _ = shared;
    Ok(socket)
}

/// The running shards' threads.
#[derive(Debug)]
pub struct Shards {
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Starts one thread per entry of `sockets` (shard `i` gets `sockets[i]`,
/// one socket per listener it serves), puts its sockets in the listening
/// state on its own runtime and runs `work(i, listeners)` there. Returns
/// once every shard listens, or with the first shard's failure.
pub async fn start<F, Fut>(sockets: Vec<Vec<TcpSocket>>, work: F) -> Result<Shards, ShardError>
where
    F: Fn(usize, Vec<TcpListener>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let work = Arc::new(work);
    let mut threads = Vec::with_capacity(sockets.len());
    let mut ready = Vec::with_capacity(sockets.len());
    for (index, sockets) in sockets.into_iter().enumerate() {
        let (started, listening) = oneshot::channel();
        let work = Arc::clone(&work);
        let thread = std::thread::Builder::new()
            .name(format!("clawgate-shard{index}"))
            .spawn(move || run(index, sockets, started, &*work))
            .map_err(|source| ShardError::Start { index, source })?;
        threads.push(thread);
        ready.push(listening);
    }
    for (index, listening) in ready.into_iter().enumerate() {
        match listening.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ShardError::Start {
                    index,
                    source: std::io::Error::other("the shard ended while starting"),
                });
            }
        }
    }
    Ok(Shards { threads })
}

/// A shard's thread: its runtime, its listeners, its work.
fn run<F, Fut>(
    index: usize,
    sockets: Vec<TcpSocket>,
    started: oneshot::Sender<Result<(), ShardError>>,
    work: &F,
) where
    F: Fn(usize, Vec<TcpListener>) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => {
            let _ = started.send(Err(ShardError::Start { index, source }));
            return;
        }
    };
    crate::forward::enter_shard(index);
    runtime.block_on(async move {
        let mut listeners = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let addr = socket.local_addr();
            match socket.listen(BACKLOG) {
                Ok(listener) => listeners.push(listener),
                Err(source) => {
                    let addr = addr.unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    let _ = started.send(Err(ShardError::Bind { addr, source }));
                    return;
                }
            }
        }
        if started.send(Ok(())).is_err() {
            // The start gave up on another shard: nobody will stop this one.
            return;
        }
        // The decision log's answers for this thread's calls come through
        // one wake per commit (see `audit::post_box`).
        tokio::spawn(crate::audit::post_box());
        tokio::spawn(keep_next_wake_near());
        work(index, listeners).await;
    });
}

/// How often a shard's pacing timer fires: well under a call's shortest
/// timer (the 10 s header read timeout).
const PACE: Duration = Duration::from_millis(500);

/// Keeps a timer due within [`PACE`] on the shard's runtime, and so the
/// time driver's next wake near. Tokio wakes its own driver, with a write to
/// its eventfd, whenever a new timer is due before that next wake, even when
/// the timer is set on the driver's own thread while it runs
/// (tokio-rs/tokio#5207). Without this, a call's header read and upstream
/// timers, set a few seconds out on a runtime whose other timers are later,
/// cost that write and an extra turn of the event loop about every other
/// call.
async fn keep_next_wake_near() {
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        pace.tick().await;
    }
}

impl Shards {
    /// How many shards run.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether no shard runs.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Waits until every shard's work has returned and its runtime is gone.
    pub async fn join(self) {
        for thread in self.threads {
            match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => tracing::error!("a shard's thread panicked"),
                Err(e) => tracing::error!(error = %e, "cannot wait for a shard"),
            }
        }
    }
}

/// What the shards serve: the agent listener and, when there is one, the
/// token listener, each a socket per shard from [`bind`].
#[derive(Debug)]
pub struct CallListeners {
    /// The agent listener's sockets.
    pub agent: Vec<TcpSocket>,
    /// The token listener's sockets, as many as the agent's.
    pub token: Option<Vec<TcpSocket>>,
    /// TLS material for both.
    pub tls: Arc<TlsStore>,
    /// Where both record rejected handshakes.
    pub rejections: Arc<Rejections>,
    /// The pipeline every call goes through.
    pub pipeline: Arc<Pipeline>,
    /// Flips when `serve` stops.
    pub shutdown: watch::Receiver<bool>,
    /// How long calls in flight may finish at shutdown.
    pub drain: Duration,
}

/// Starts one shard per agent socket, each serving the agent listener and
/// the token listener on its own sockets, with one gate per listener
/// shared by every shard.
pub async fn serve_calls(listeners: CallListeners) -> Result<Shards, ShardError> {
    let CallListeners {
        agent,
        token,
        tls,
        rejections,
        pipeline,
        shutdown,
        drain,
    } = listeners;
    let agent_gate = crate::accept::new_gate();
    let token_gate = token.is_some().then(crate::accept::new_gate);
    let mut token = token.map(Vec::into_iter);
    let sockets = agent
        .into_iter()
        .map(|agent| {
            let mut sockets = vec![agent];
            sockets.extend(token.as_mut().and_then(Iterator::next));
            sockets
        })
        .collect();
    start(sockets, move |_, listeners| {
        let mut listeners = listeners.into_iter();
        let agent = listeners.next().map(|tcp| {
            crate::listener::serve(
                tcp,
                Arc::clone(&agent_gate),
                Arc::clone(&tls),
                Arc::clone(&rejections),
                Arc::clone(&pipeline),
                shutdown.clone(),
                drain,
            )
        });
        let token = listeners.next().zip(token_gate.clone()).map(|(tcp, gate)| {
            crate::token::listen::serve(
                tcp,
                gate,
                Arc::clone(&tls),
                Arc::clone(&rejections),
                Arc::clone(&pipeline),
                shutdown.clone(),
                drain,
            )
        });
        async move {
            let agent = async {
                if let Some(agent) = agent {
                    agent.await;
                }
            };
            let token = async {
                if let Some(token) = token {
                    token.await;
                }
            };
            tokio::join!(agent, token);
        }
    })
    .await
}

#[cfg(test)]
#[path = "shards_tests.rs"]
mod tests;
