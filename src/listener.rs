//! The agent listener on top of the one accept path ([`crate::accept`]):
//! a client certificate is required and names the peer; every request goes
//! through the pipeline.
//!
//! Invariants: no byte of HTTP is read from a peer whose certificate did not
//! verify against the agent CA (and CRL, when given); a kept-alive
//! connection whose agent is isolated, whose serial is revoked or whose
//! agent leaves the policy is ended ([`crate::live`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accept::{self, Accepted, Gate, Rejections, Served};
use crate::identity;
use crate::live::Subject;
use crate::pipeline::{Peer, Pipeline};
use crate::tls::{Door, TlsStore};

/// Accepts agent connections until `shutdown` flips, then drains in-flight
/// calls, tunnels and upgraded sockets within `drain`. Each shard runs one
/// of these on its own socket, all with the one `gate` of the agent
/// listener; each returns only when the whole pipeline is idle (or the
/// drain time is up), so a shard's runtime outlives the tunnels and
/// streams it runs.
pub async fn serve(
    tcp: TcpListener,
    gate: Arc<Gate>,
    tls: Arc<TlsStore>,
    rejections: Arc<Rejections>,
    pipeline: Arc<Pipeline>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let listener = accept::Listener {
        name: "agent",
        tcp,
        tls: Some((tls, Door::Agent)),
        rejections,
        gate,
    };
    let calls = Arc::clone(&pipeline);
    let make = move |accepted: Accepted| {
        let leaf = accepted.leaf.ok_or("no client certificate")?;
        let identity = identity::from_der(&leaf).map_err(|e| e.to_string())?;
        let policy = calls.policy();
        let membership = calls.live().register(
            Subject {
                names: identity.names.clone(),
                serial: (!identity.serial.is_empty()).then(|| identity.serial.clone()),
                ..Subject::default()
            },
            policy.digest(),
        );
        let peer = Arc::new(Peer {
            addr: accepted.addr,
            identity,
            proxy_key: None,
        });
        let pipeline = Arc::clone(&calls);
        let service = service_fn(move |req| {
            let pipeline = Arc::clone(&pipeline);
            let peer = Arc::clone(&peer);
            async move { Ok::<_, Infallible>(pipeline.handle(&peer, req).await) }
        });
        let mut membership = membership;
        Ok(Served {
            service,
            until: Some(Box::pin(async move {
                let ended = membership.ended().await;
                (ended.reason, ended.detail)
            })),
        })
    };
    // The drain time counts from the signal, not from the start.
    let mut signal = shutdown.clone();
    let stopped_at = async move {
        let _ = signal.wait_for(|stop| *stop).await.is_ok();
        tokio::time::Instant::now()
    };
    let ((), stopped_at) = tokio::join!(accept::serve(listener, make, shutdown, drain), stopped_at);
    // Tunnels and intercepted connections left their HTTP connection at the
    // upgrade; they get what is left of the drain time, then are ended.
    let left = (stopped_at + drain).saturating_duration_since(tokio::time::Instant::now());
    if !pipeline.wait_idle(left).await {
        tracing::warn!("tunnels still open after the drain timeout; ending them");
    }
    pipeline.end_tunnels();
    // HTTP/2 streams run in tasks of their own; wait for their outcome records.
    if !pipeline.wait_idle(Duration::from_secs(5)).await {
        tracing::warn!("some outcome records were not queued before shutdown");
    }
}
