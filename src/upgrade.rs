//! WebSocket upgrades (HTTP/1.1 `Upgrade: websocket`), in any mode and inside
//! intercepted tunnels.
//!
//! The upgrade request is adjudicated and recorded once, like any call, and
//! carries the injected credential. When the upstream answers 101, the two
//! upgraded connections are spliced and the outcome record (status 101, bytes
//! each way, duration) is written when the socket closes: `tunnel-closed`
//! when a peer closed it, `ended-by-override` or `ended-by-policy` when
//! clawgate cut it because it is no longer allowed. Messages inside are
//! not decided on; what the upstream sends passes the reflection guard's
//! frame filter when the call injected a value. Only `websocket` is passed on: other upgrades (`h2c`) are
//! dropped as the hop-by-hop headers they are.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::live::Membership;
use crate::record::Outcome;

/// The `Upgrade` value of an HTTP/1.1 WebSocket upgrade request.
pub fn websocket<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = req.headers().get(header::UPGRADE)?;
    (connection_upgrade && upgrade.as_bytes().eq_ignore_ascii_case(b"websocket"))
        .then(|| upgrade.clone())
}

/// Puts back the two hop-by-hop headers an upgrade needs on the next hop.
pub fn restore(headers: &mut HeaderMap, upgrade: &HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade.clone());
}

/// Splices the agent's and the upstream's upgraded connections until either
/// closes or clawgate stops; `outcome` records the session when it drops.
/// With a reflection `guard`, what the upstream sends passes through its
/// frame filter.
pub(crate) async fn splice(
    agent: OnUpgrade,
    upstream: OnUpgrade,
    mut outcome: Outcome,
    (mut stopping, mut membership): (watch::Receiver<bool>, Membership),
    guard: Option<crate::response::guard::Guard>,
) {
    let (agent, upstream) = match tokio::join!(agent, upstream) {
        (Ok(agent), Ok(upstream)) => (agent, upstream),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let agent = Counted {
        inner: TokioIo::new(agent),
        read: Arc::clone(&outcome.bytes_up),
        written: Arc::clone(&outcome.bytes_down),
    };
    let upstream = TokioIo::new(upstream);
    tokio::select! {
        result = relay(agent, upstream, guard) => match result {
            Ok(()) => outcome.closed(),
            Err(e) if closed_by_peer(&e) => outcome.closed(),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        },
        ended = membership.ended() => {
            tracing::debug!(reason = %ended.reason, "upgraded connection ended: no longer allowed");
            outcome.ended(ended);
        }
        _ = stopping.wait_for(|stop| *stop) => {
            tracing::debug!("upgraded connection ended at shutdown");
        }
    }
}

/// Both directions until both end: spliced as they are, or, with a guard,
/// the upstream's frames through the reflection guard.
async fn relay<A, U>(
    mut agent: A,
    mut upstream: U,
    guard: Option<crate::response::guard::Guard>,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let Some(guard) = guard else {
        return tokio::io::copy_bidirectional(&mut agent, &mut upstream)
            .await
            .map(|_| ());
    };
    let (mut agent_read, agent_write) = tokio::io::split(agent);
    let (upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let up = async {
        tokio::io::copy(&mut agent_read, &mut upstream_write).await?;
        upstream_write.shutdown().await
    };
    let down = crate::response::frames::pump(upstream_read, agent_write, guard);
    tokio::try_join!(up, down).map(|_| ())
}

/// Whether an error is just one end of a tunnel hanging up.
pub(crate) fn closed_by_peer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

/// Counts bytes read from and written to the agent side of a tunnel.
pub(crate) struct Counted<T> {
    pub(crate) inner: T,
    pub(crate) read: Arc<AtomicU64>,
    pub(crate) written: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
