//! What a tunnel carries: the TLS ClientHello at its start, read without
//! terminating TLS.
//!
//! A tunnelled `CONNECT` is a host-level decision, so clawgate checks that
//! the TLS session inside goes to that host: the server name (SNI) of the
//! ClientHello must be the `CONNECT` target, otherwise one allowed host on
//! a shared address or CDN edge fronts for any other (domain fronting).
//! A ClientHello without a server name, or one offering Encrypted Client
//! Hello (which hides the real name behind a public one), cannot be
//! checked, and is refused unless the scope allows it.
//!
//! [`parse`] is a pure, allocation-light parser over the bytes read so far:
//! it reassembles a handshake message fragmented across TLS records (and so
//! across TCP segments: the caller reads more and calls again), and never
//! reads past [`MAX_HELLO`] bytes. Hand-written rather than a dependency:
//! the part of TLS it needs is small (record header, handshake header,
//! ClientHello fields up to the extensions), every length is checked
//! against what is left, and a fuzz-style property test drives it with
//! arbitrary bytes. [`read`] feeds it from the agent under a deadline;
//! [`judge`] decides whether the tunnel may go on.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::egress::Host;
use crate::error::Reason;
use crate::policy::Strictness;

/// At most this many bytes are read while looking for the ClientHello.
/// A ClientHello with post-quantum key shares and ECH is under 4 KiB;
/// this leaves room, and bounds what an agent can make clawgate hold.
pub const MAX_HELLO: usize = 32 * 1024;

/// The ClientHello must be complete within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS record content type of handshake messages.
const HANDSHAKE: u8 = 22;
/// The handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The `server_name` extension (RFC 6066).
const SERVER_NAME: u16 = 0;
/// The `host_name` entry of a `server_name` list.
const HOST_NAME: u8 = 0;
/// Extension code points that carry an encrypted ClientHello or server
/// name: `encrypted_client_hello` (RFC 9849, 0xfe0d), the drafts before it
/// (0xfe08 to 0xfe0c) and the older `encrypted_server_name` (0xffce).
const ECH: [u16; 7] = [0xfe0d, 0xfe0c, 0xfe0b, 0xfe0a, 0xfe09, 0xfe08, 0xffce];

/// What the start of a tunnel turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A TLS ClientHello: its server name (lowercase, without a trailing
    /// dot), and whether it offers Encrypted Client Hello.
    Tls {
        /// The `host_name` of the `server_name` extension.
        sni: Option<String>,
        /// Whether an encrypted ClientHello (or server name) extension is
        /// present.
        ech: bool,
    },
    /// Not a TLS ClientHello (or a malformed one): `why` says what.
    NotTls {
        /// What was wrong, for the record.
        why: &'static str,
    },
}

/// The result of parsing the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed.
    Incomplete,
    /// The start of the tunnel is known.
    Done(Hello),
}

fn not_tls(why: &'static str) -> Parse {
    Parse::Done(Hello::NotTls { why })
}

/// Parses the ClientHello at the start of `buf`, reassembling it from as
/// many handshake records as it spans.
pub fn parse(buf: &[u8]) -> Parse {
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        // The handshake header says how long the message is; once that
        // many bytes are reassembled, the records after it do not matter.
        if message.len() >= 4 {
            if message[0] != CLIENT_HELLO {
                return not_tls("the first handshake message is not a ClientHello");
            }
            let len = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            if len + 4 > MAX_HELLO {
                return not_tls("the ClientHello is larger than clawgate reads");
            }
            if message.len() >= len + 4 {
                return Parse::Done(client_hello(&message[4..len + 4]));
            }
        }
        if rest.is_empty() {
            return Parse::Incomplete;
        }
        if rest[0] != HANDSHAKE {
            return not_tls("the tunnel does not start with a TLS handshake record");
        }
        if rest.len() < 5 {
            return Parse::Incomplete;
        }
        if rest[1] != 3 {
            return not_tls("the record's protocol version is not TLS");
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 + 256 {
            return not_tls("a TLS record of impossible length");
        }
        if rest.len() < 5 + len {
            return Parse::Incomplete;
        }
        message.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
}

/// A cursor over a byte slice whose reads fail rather than run past it.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one- or two-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The server name and ECH offer of a ClientHello body.
fn client_hello(body: &[u8]) -> Hello {
    let malformed = Hello::NotTls {
        why: "a malformed ClientHello",
    };
    let mut r = Reader(body);
    let fields = (|| {
        let _version = r.take(2)?;
        let _random = r.take(32)?;
        let _session = r.vec8()?;
        let _suites = r.vec16()?;
        let _compression = r.vec8()?;
        Some(())
    })();
    if fields.is_none() {
        return malformed;
    }
    if r.0.is_empty() {
        // No extensions at all (SSL 3.0 style): no server name.
        return Hello::Tls {
            sni: None,
            ech: false,
        };
    }
    let Some(extensions) = r.vec16() else {
        return malformed;
    };
    if !r.0.is_empty() {
        return malformed;
    }
    let mut ext = Reader(extensions);
    let mut sni = None;
    let mut ech = false;
    let mut seen_sni = false;
    while !ext.0.is_empty() {
        let (Some(kind), Some(data)) = (ext.u16(), ext.vec16()) else {
            return malformed;
        };
        if ECH.contains(&kind) {
            ech = true;
        } else if kind == SERVER_NAME {
            // A second server_name extension is a ClientHello two servers
            // could read differently: refused as malformed.
            if seen_sni {
                return malformed;
            }
            seen_sni = true;
            match server_name(data) {
                Some(name) => sni = name,
                None => return malformed,
            }
        }
    }
    Hello::Tls { sni, ech }
}

/// The `host_name` of a `server_name` extension; `Some(None)` when it
/// names none, `None` when malformed (including two host names).
fn server_name(data: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(data);
    let list = r.vec16()?;
    if !r.0.is_empty() {
        return None;
    }
    let mut list = Reader(list);
    let mut name = None;
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let value = list.vec16()?;
        if kind != HOST_NAME {
            continue;
        }
        if name.is_some() || value.is_empty() {
            return None;
        }
        // A host name is ASCII letters, digits, `-`, `.` and `_`; anything
        // else is a name two parsers could read differently.
        if !value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return None;
        }
        let text = String::from_utf8_lossy(value).to_ascii_lowercase();
        name = Some(text.trim_end_matches('.').to_owned());
    }
    Some(name)
}

/// Why the start of a tunnel could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The agent closed the tunnel before a whole ClientHello arrived.
    #[error("the agent closed the tunnel before its ClientHello")]
    Closed,
    /// The ClientHello did not arrive in time.
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    /// Reading from the agent failed.
    #[error("reading the ClientHello failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads from `agent` into `buf` until the start of the tunnel is known.
/// `buf` keeps every byte read, also on error, to be sent on unchanged
/// when the tunnel is allowed.
pub async fn read<R: AsyncRead + Unpin>(
    agent: &mut R,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<Hello, ReadError> {
    let work = async {
        let mut chunk = vec![0u8; 4096];
        loop {
            if let Parse::Done(hello) = parse(buf) {
                return Ok(hello);
            }
            if buf.len() >= MAX_HELLO {
                return Ok(Hello::NotTls {
                    why: "the ClientHello is larger than clawgate reads",
                });
            }
            let room = (MAX_HELLO - buf.len()).min(chunk.len());
            let n = agent.read(&mut chunk[..room]).await?;
            if n == 0 {
                return Err(ReadError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(ReadError::Timeout(limit)))
}

/// Whether a tunnel to `host` may carry what it starts with, given what
/// the scope allows: `Ok` with what the record says, or the refusal's
/// reason and detail.
pub fn judge(hello: &Hello, host: &Host, allowed: Strictness) -> Result<String, (Reason, String)> {
    match hello {
        Hello::NotTls { why } if allowed.tunnel_without_sni => Ok(format!(
            "not a TLS ClientHello ({why}); allowed by tunnel_without_sni"
        )),
        Hello::NotTls { why } => Err((Reason::TunnelSniMissing, (*why).to_owned())),
        Hello::Tls { sni, ech: true } => {
            let outer = sni.as_deref().unwrap_or("none");
            if allowed.tunnel_ech {
                // The outer name of a real ECH is the provider's public
                // name, not the host: it is recorded, not compared.
                Ok(format!(
                    "sni {outer} (outer); encrypted client hello allowed by tunnel_ech"
                ))
            } else {
                Err((
                    Reason::TunnelEch,
                    format!("the ClientHello offers encrypted client hello; outer sni {outer}"),
                ))
            }
        }
        Hello::Tls { sni: None, .. } if allowed.tunnel_without_sni => {
            Ok("no sni; allowed by tunnel_without_sni".into())
        }
        Hello::Tls { sni: None, .. } => Err((
            Reason::TunnelSniMissing,
            "the ClientHello names no server".into(),
        )),
        Hello::Tls {
            sni: Some(name), ..
        } => match host {
            Host::Name(expected) if expected == name => Ok(format!("sni {name}")),
            // An address is never a server name (RFC 6066), so any name
            // sent to an address names another host.
            _ => Err((
                Reason::TunnelSniMismatch,
                format!("sni {name}, CONNECT {host}"),
            )),
        },
    }
}

#[cfg(test)]
#[path = "client_hello_tests.rs"]
mod tests;
