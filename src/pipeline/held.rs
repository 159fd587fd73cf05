//! The request body before a decision: how much of it clawgate may read,
//! and the body as admission holds it (untouched, or read in part).

use http_body_util::BodyExt;

use crate::body::{Prefix, ProxyBody};
use crate::error::Reason;

/// How many bytes of a body clawgate reads before deciding.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Bodies are scanned for sentinel placeholders up to this many bytes.
    pub sentinel_scan: usize,
    /// A form body is read up to this many bytes to find an AWS `Action`.
    pub aws_form: usize,
    /// How long reading a body before deciding may take in all.
    pub read_timeout: std::time::Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            sentinel_scan: 1024 * 1024,
            aws_form: 64 * 1024,
            read_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// The request body as admission holds it: untouched, or read in part.
pub(super) enum Held {
    Stream(ProxyBody),
    Read(Prefix),
}

impl Held {
    /// The body read up to `limit` bytes (more than an earlier, smaller
    /// read), within `timeout`: an agent that trickles its body holds no
    /// buffer for long.
    pub(super) async fn read(
        self,
        limit: usize,
        timeout: std::time::Duration,
    ) -> Result<Prefix, Reason> {
        let read = match self {
            Held::Read(prefix) => tokio::time::timeout(timeout, prefix.read_more(limit)).await,
            Held::Stream(body) => tokio::time::timeout(timeout, Prefix::read(body, limit)).await,
        };
        match read {
            Ok(Ok(prefix)) => Ok(prefix),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "request body could not be read");
                Err(Reason::MalformedRequest)
            }
            Err(_) => {
                tracing::debug!("request body did not arrive in time");
                Err(Reason::MalformedRequest)
            }
        }
    }

    pub(super) fn into_body(self) -> ProxyBody {
        match self {
            Held::Stream(body) => body,
            Held::Read(prefix) => Prefix::into_body(prefix.bytes, prefix.rest, prefix.trailers),
        }
    }
}

/// The agent's body, boxed for the upstream request.
pub(super) fn boxed(body: hyper::body::Incoming) -> ProxyBody {
    body.map_err(Into::into).boxed()
}
