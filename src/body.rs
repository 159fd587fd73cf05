//! Streaming bodies: the one response body type, and a wrapper that counts
//! bytes as they pass and enforces the total deadline of an exchange.
//!
//! Bodies are never buffered whole: frames are passed on as they arrive, and
//! the counters are the only state kept.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use tokio::time::{Instant, Sleep};

/// Errors that a streamed body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response clawgate sends to an agent.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// The exchange ran past its total deadline while a body was streaming.
#[derive(Debug, thiserror::Error)]
#[error("upstream exchange exceeded its total timeout")]
pub struct DeadlineExceeded;

/// What a body's guard is told about how the stream went.
pub trait BodyGuard {
    /// The stream reached its end.
    fn finished(&mut self) {}
    /// The inner stream failed.
    fn failed(&mut self) {}
    /// The total deadline passed and the stream was cut short.
    fn deadline_passed(&mut self) {}
}

impl BodyGuard for () {}

/// Raises a shared flag when the stream fails: lets the pipeline tell an
/// agent's broken upload from an upstream that failed.
#[derive(Debug, Clone, Default)]
pub struct FailureFlag(pub Arc<std::sync::atomic::AtomicBool>);

impl BodyGuard for FailureFlag {
    fn failed(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Counts data bytes passing through `inner` into a shared counter, fails the
/// stream once `deadline` has passed, and tells `guard` how the stream went.
///
/// The guard is dropped with the body, which is how the outcome record is
/// emitted exactly once: whether the stream ended, failed, or the agent went
/// away.
#[derive(Debug)]
pub struct CountingBody<B: Body, G: BodyGuard = ()> {
    inner: B,
    counter: Arc<AtomicU64>,
    deadline: Option<Pin<Box<Sleep>>>,
    guard: G,
    ended: bool,
}

impl<B: Body> CountingBody<B, ()> {
    /// Counts into `counter` with no deadline and no guard.
    pub fn new(inner: B, counter: Arc<AtomicU64>) -> Self {
        CountingBody::guarded(inner, counter, None, ())
    }
}

impl<B: Body, G: BodyGuard> CountingBody<B, G> {
    /// Counts into `counter`, fails after `deadline`, reports to `guard`.
    pub fn guarded(inner: B, counter: Arc<AtomicU64>, deadline: Option<Instant>, guard: G) -> Self {
        CountingBody {
            inner,
            counter,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            guard,
            ended: false,
        }
    }
}

impl<B: Body, G: BodyGuard> Drop for CountingBody<B, G> {
    fn drop(&mut self) {
        // A body that was empty from the start may never be polled.
        if !self.ended && self.inner.is_end_stream() {
            self.guard.finished();
        }
    }
}

impl<B, G> Body for CountingBody<B, G>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    G: BodyGuard + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            this.ended = true;
            this.guard.deadline_passed();
            return Poll::Ready(Some(Err(Box::new(DeadlineExceeded))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                this.guard.failed();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if !this.ended {
                    this.ended = true;
                    this.guard.finished();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The first bytes of a request body, read before a decision that needs
/// them (an AWS action in a form body, a body hash to sign, sentinels to
/// find), and what is left of the stream.
#[derive(Debug)]
pub struct Prefix {
    /// The data read so far (whole frames; may pass the limit by one frame).
    pub bytes: Bytes,
    /// The rest of the body, or `None` when `bytes` is all of it.
    pub rest: Option<ProxyBody>,
    /// Trailers met while reading, passed on after the data.
    pub trailers: Option<http::HeaderMap>,
}

impl Prefix {
    /// Reads `body` until `limit` bytes are held or it ends.
    pub async fn read(mut body: ProxyBody, limit: usize) -> Result<Prefix, BoxError> {
        use http_body_util::BodyExt;
        let mut buf = bytes::BytesMut::new();
        let mut trailers = None;
        while buf.len() < limit {
            match body.frame().await {
                None => {
                    return Ok(Prefix {
                        bytes: buf.freeze(),
                        rest: None,
                        trailers,
                    });
                }
                Some(frame) => match frame?.into_data() {
                    Ok(data) => buf.extend_from_slice(&data),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
            }
        }
        let rest = (!body.is_end_stream()).then_some(body);
        Ok(Prefix {
            bytes: buf.freeze(),
            rest,
            trailers,
        })
    }

    /// Reads on until `limit` bytes are held in all or the body ends.
    pub async fn read_more(self, limit: usize) -> Result<Prefix, BoxError> {
        let Some(rest) = self.rest else {
            return Ok(self);
        };
        if self.bytes.len() >= limit {
            return Ok(Prefix {
                rest: Some(rest),
                ..self
            });
        }
        let more = Prefix::read(rest, limit - self.bytes.len()).await?;
        let mut bytes = bytes::BytesMut::from(&self.bytes[..]);
        bytes.extend_from_slice(&more.bytes);
        Ok(Prefix {
            bytes: bytes.freeze(),
            rest: more.rest,
            trailers: more.trailers.or(self.trailers),
        })
    }

    /// Reads and drops what is left of a body that was refused, up to
    /// `limit` bytes and for at most `within`, before the refusal is sent.
    /// An HTTP/2 client still sending when its stream is answered and
    /// dropped can see the stream reset instead of the answer; one that
    /// finished sending sees the answer. A body past either bound is cut off.
    pub async fn discard_rest(self, limit: usize, within: std::time::Duration) {
        use http_body_util::BodyExt;
        let Some(mut rest) = self.rest else {
            return;
        };
        let _ = tokio::time::timeout(within, async {
            let mut seen = 0usize;
            while seen < limit {
                match rest.frame().await {
                    Some(Ok(frame)) => {
                        seen += frame.data_ref().map_or(0, Bytes::len);
                    }
                    Some(Err(_)) | None => break,
                }
            }
        })
        .await;
    }

    /// Whether the whole body was read.
    pub fn is_complete(&self) -> bool {
        self.rest.is_none()
    }

    /// The body again: `bytes` (perhaps rewritten), then the rest, then any
    /// trailers.
    pub fn into_body(
        bytes: Bytes,
        rest: Option<ProxyBody>,
        trailers: Option<http::HeaderMap>,
    ) -> ProxyBody {
        use futures_util::StreamExt;
        use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
        if rest.is_none() && trailers.is_none() {
            // Exact size: the upstream gets a Content-Length, and an empty
            // body stays empty rather than becoming a chunked one.
            return Full::new(bytes).map_err(|never| match never {}).boxed();
        }
        let head = futures_util::stream::iter(
            (!bytes.is_empty()).then(|| Ok::<_, BoxError>(Frame::data(bytes))),
        );
        let tail =
            futures_util::stream::iter(trailers.map(|t| Ok::<_, BoxError>(Frame::trailers(t))));
        match rest {
            None => BodyExt::boxed(StreamBody::new(head.chain(tail))),
            Some(rest) => BodyExt::boxed(StreamBody::new(
                head.chain(BodyStream::new(rest)).chain(tail),
            )),
        }
    }
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
