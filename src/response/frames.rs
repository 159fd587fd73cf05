//! The reflection guard on a WebSocket: the frames the upstream sends are
//! parsed, the payloads of each data message scanned as one stream (a value
//! split across fragments is found), and the frames written again with their
//! new lengths. Control frames pass as they are.
//!
//! Invariants: only one frame is held at a time, and none larger than
//! [`MAX_FRAME`] (a larger one cuts the connection rather than pass
//! unscanned); a compressed frame (RSV1, `permessage-deflate`) cuts it too,
//! since a guarded upgrade never offers that extension.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::guard::Guard;
use super::reflect::Scanner;
use crate::policy::Reflection;

/// The largest frame the guard holds to scan.
pub const MAX_FRAME: u64 = 16 * 1024 * 1024;

/// Why a guarded WebSocket was cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    /// An injected value was found and the scope says `refuse`.
    #[error("an injected credential was reflected in a frame")]
    Reflected,
    /// A frame the guard cannot scan: compressed, or too large.
    #[error("a frame that cannot be scanned: {0}")]
    Unscannable(&'static str),
}

/// Parses server frames and redacts their data payloads.
#[derive(Debug)]
pub struct FrameFilter {
    guard: Guard,
    scanner: Scanner,
    input: BytesMut,
}

impl FrameFilter {
    /// A filter reporting into `guard`'s tally.
    pub fn new(guard: Guard) -> FrameFilter {
        FrameFilter {
            scanner: guard.scanner(),
            guard,
            input: BytesMut::new(),
        }
    }

    /// Takes bytes from the upstream; returns the frames complete so far,
    /// redacted and re-encoded.
    pub fn push(&mut self, data: &[u8]) -> Result<BytesMut, Cut> {
        self.input.extend_from_slice(data);
        let mut out = BytesMut::new();
        while let Some(frame) = self.next_frame()? {
            self.emit(frame, &mut out)?;
        }
        Ok(out)
    }

    /// The next whole frame in `input`, if there is one.
    fn next_frame(&mut self) -> Result<Option<Frame>, Cut> {
        let buf = &self.input[..];
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if len > MAX_FRAME {
            return Err(Cut::Unscannable("frame too large"));
        }
        let mask = if masked {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        let len = usize::try_from(len).map_err(|_| Cut::Unscannable("frame too large"))?;
        if buf.len() < at + len {
            return Ok(None);
        }
        self.input.advance(at);
        let mut payload = self.input.split_to(len);
        if let Some(m) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        Ok(Some(Frame {
            b0,
            payload: payload.freeze(),
        }))
    }

    fn emit(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), Cut> {
        let opcode = frame.b0 & 0x0f;
        let fin = frame.b0 & 0x80 != 0;
        if opcode >= 0x8 {
            // Control frames (close, ping, pong): as they came, unmasked.
            write_frame(out, frame.b0, &frame.payload);
            return Ok(());
        }
        if frame.b0 & 0x40 != 0 {
            return Err(Cut::Unscannable("compressed frame"));
        }
        let (mut payload, mut hits) = self.scanner.push(frame.payload);
        if fin {
            let (rest, more) = self.scanner.finish();
            hits += more;
            if !rest.is_empty() {
                let mut joined = BytesMut::from(&payload[..]);
                joined.extend_from_slice(&rest);
                payload = joined.freeze();
            }
        }
        if hits > 0 {
            let refuse = self.guard.mode() == Reflection::Refuse;
            self.guard.tally.add(hits, "frame", refuse);
            if refuse {
                return Err(Cut::Reflected);
            }
        }
        write_frame(out, frame.b0, &payload);
        Ok(())
    }
}

struct Frame {
    b0: u8,
    payload: Bytes,
}

/// One unmasked frame: the first byte as it came, the length as it is now.
fn write_frame(out: &mut BytesMut, b0: u8, payload: &[u8]) {
    out.put_u8(b0);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.extend_from_slice(payload);
}

/// Copies the upstream's side of a WebSocket to the agent through a
/// [`FrameFilter`]; ends with the upstream, or with an error when the guard
/// cuts the connection.
pub async fn pump<R, W>(mut from: R, mut to: W, guard: Guard) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut filter = FrameFilter::new(guard);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        let out = filter.push(&buf[..n]).map_err(std::io::Error::other)?;
        if !out.is_empty() {
            to.write_all(&out).await?;
            to.flush().await?;
        }
    }
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
