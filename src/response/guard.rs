//! The reflection guard on one call's response: the head's headers scanned,
//! the body wrapped in [`ReflectBody`], and a [`Tally`] of what was found
//! that the call's outcome record reads when it is written.
//!
//! Compression: a guarded call asks the upstream for `identity` (see
//! [`ask_identity`]). An upstream that compresses anyway with `gzip` or
//! `deflate` is decoded as it streams and passed on decoded; any other coding
//! cannot be scanned, and the response is refused (fail closed).
//!
//! Invariants: the tally holds counts and places (header names, `body`,
//! `trailer`), never a value; the body is never buffered whole.

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::reflect::{Needles, Scanner};
use crate::body::{BoxError, ProxyBody};
use crate::metrics::ReflectionCounts;
use crate::policy::Reflection;

/// What the guard found in one call's response, for its outcome record.
#[derive(Debug)]
pub struct Tally {
    inner: Mutex<Found>,
    scope: String,
    counts: Arc<ReflectionCounts>,
}

#[derive(Debug, Default)]
struct Found {
    hits: usize,
    places: Vec<String>,
    refused: bool,
}

/// The summary a tally gives the outcome record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `credential-reflected: 2 redacted (header x-echo, body)`.
    pub detail: String,
    /// Whether the response was cut (mode `refuse`).
    pub refused: bool,
}

impl Tally {
    pub(crate) fn add(&self, hits: usize, place: &str, refused: bool) {
        if let Ok(mut found) = self.inner.lock() {
            found.hits += hits;
            found.refused |= refused;
            // Bounded: a place is named once, and a few are enough to say where.
            if found.places.len() < 8 && !found.places.iter().any(|p| p == place) {
                found.places.push(place.to_owned());
            }
        }
    }

    /// What was found, once; counts it in `/metrics`. `None` when nothing.
    pub fn settle(&self) -> Option<Summary> {
        let found = std::mem::take(&mut *self.inner.lock().ok()?);
        if found.hits == 0 && !found.refused {
            return None;
        }
        let action = if found.refused { "refused" } else { "redacted" };
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((self.scope.clone(), action)).or_insert(0) += 1;
        }
        let places = if found.places.is_empty() {
            String::new()
        } else {
            format!(" ({})", found.places.join(", "))
        };
        Some(Summary {
            detail: format!("credential-reflected: {} {action}{places}", found.hits),
            refused: found.refused,
        })
    }
}

/// Why a response was refused before its head was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// An injected value was found (mode `refuse`).
    Reflected,
    /// The body's `Content-Encoding` is not one the guard can decode.
    Unscannable(String),
    /// A small body could not be read whole from the upstream.
    Unreadable,
}

/// Bodies declared this long or shorter (and not compressed) are read whole,
/// redacted, and sent with their exact new `Content-Length`: clients that
/// want a length (HTTP/1.0, progress bars) keep one, and a find in mode
/// `refuse` is answered with a 502 rather than a cut stream. Larger bodies,
/// and those without a length, stream chunked.
pub const WHOLE_BODY: u64 = 64 * 1024;

/// A response cut mid-stream by mode `refuse`.
#[derive(Debug, thiserror::Error)]
#[error("response cut: it carried an injected credential")]
pub struct ReflectionRefused;

/// The guard of one call.
#[derive(Debug, Clone)]
pub struct Guard {
    needles: Arc<Needles>,
    mode: Reflection,
    /// Read by the outcome record.
    pub tally: Arc<Tally>,
}

/// Asks the upstream for an uncompressed body: what is scanned need not be
/// decoded first.
pub fn ask_identity(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

impl Guard {
    /// A guard over `needles` for a call in `scope`; `None` for mode `off`.
    pub fn new(
        needles: Arc<Needles>,
        mode: Reflection,
        scope: &str,
        counts: Arc<ReflectionCounts>,
    ) -> Option<Guard> {
        if mode == Reflection::Off {
            return None;
        }
        Some(Guard {
            needles,
            mode,
            tally: Arc::new(Tally {
                inner: Mutex::default(),
                scope: scope.to_owned(),
                counts,
            }),
        })
    }

    /// What the guard does on a find.
    pub fn mode(&self) -> Reflection {
        self.mode
    }

    /// A fresh streaming scanner over this call's needles.
    pub fn scanner(&self) -> Scanner {
        Scanner::new(Arc::clone(&self.needles))
    }

    /// Scans every header name and value; redacts what it finds, or says
    /// the response must be refused.
    pub fn headers(&self, headers: &mut HeaderMap, place: &str) -> Result<(), Refused> {
        let mut found: Vec<(header::HeaderName, usize)> = Vec::new();
        for (name, value) in headers.iter() {
            let named = self.needles.redact(name.as_str().as_bytes()).is_some();
            if named || self.needles.redact(value.as_bytes()).is_some() {
                found.push((name.clone(), usize::from(named)));
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        for (name, named) in found {
            let shown = if named == 1 {
                format!("{place} name")
            } else {
                format!("{place} {name}")
            };
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            headers.remove(&name);
            let mut hits = named;
            let mut kept = Vec::new();
            for value in values {
                match self.needles.redact(value.as_bytes()) {
                    Some((text, n)) => {
                        hits += n;
                        kept.push(
                            HeaderValue::from_bytes(&text).unwrap_or_else(|_| {
                                HeaderValue::from_static("[clawgate:redacted]")
                            }),
                        );
                    }
                    None => kept.push(value),
                }
            }
            let refuse = self.mode == Reflection::Refuse;
            self.tally.add(hits, &shown, refuse);
            if refuse {
                return Err(Refused::Reflected);
            }
            if named == 0 {
                for value in kept {
                    headers.append(name.clone(), value);
                }
            }
        }
        Ok(())
    }

    /// Guards a response: its headers, then its body (see [`Guard::guard_body`]).
    /// `head` says the request was a `HEAD`.
    pub async fn response(
        &self,
        parts: &mut http::response::Parts,
        body: ProxyBody,
        head: bool,
        deadline: tokio::time::Instant,
    ) -> Result<ProxyBody, Refused> {
        self.headers(&mut parts.headers, "header")?;
        let bodiless = head
            || parts.status == http::StatusCode::NO_CONTENT
            || parts.status == http::StatusCode::NOT_MODIFIED;
        self.guard_body(body, &mut parts.headers, bodiless, deadline)
            .await
    }

    /// The guarded body: read whole and restated with its exact length when
    /// it is small (see [`WHOLE_BODY`]), streamed through [`ReflectBody`]
    /// otherwise. `deadline` bounds the whole read.
    pub async fn guard_body(
        &self,
        body: ProxyBody,
        headers: &mut HeaderMap,
        bodiless: bool,
        deadline: tokio::time::Instant,
    ) -> Result<ProxyBody, Refused> {
        let small = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= WHOLE_BODY);
        if bodiless || !small || headers.contains_key(header::CONTENT_ENCODING) {
            return self.body(body, headers, bodiless);
        }
        let read = tokio::time::timeout_at(deadline, body.collect()).await;
        let whole = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => return Err(Refused::Unreadable),
        };
        let whole = match self.needles.redact(&whole) {
            None => whole,
            Some((text, hits)) => {
                let refuse = self.mode == Reflection::Refuse;
                self.tally.add(hits, "body", refuse);
                if refuse {
                    return Err(Refused::Reflected);
                }
                Bytes::from(text)
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(whole.len()));
        Ok(http_body_util::Full::new(whole)
            .map_err(|never| match never {})
            .boxed())
    }

    /// Wraps `body`, fixing the head to match: `Content-Length` removed (the
    /// length may change; HTTP/1.1 switches to chunked), and a `gzip` or
    /// `deflate` body decoded. `bodiless` is a response to `HEAD`, a 204 or a
    /// 304, whose head describes a body that is not sent.
    pub fn body(
        &self,
        body: ProxyBody,
        headers: &mut HeaderMap,
        bodiless: bool,
    ) -> Result<ProxyBody, Refused> {
        if bodiless {
            return Ok(body);
        }
        let decoder = match headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("identity") | Some("") => None,
            Some("gzip") | Some("x-gzip") => Some(Decoder::Gzip(Box::new(
                flate2::write::GzDecoder::new(Vec::new()),
            ))),
            Some("deflate") => Some(Decoder::Zlib(Box::new(flate2::write::ZlibDecoder::new(
                Vec::new(),
            )))),
            Some(other) => {
                // Not scanned, so not passed: the response is refused.
                self.tally.add(0, "content-encoding", true);
                return Err(Refused::Unscannable(other.to_owned()));
            }
        };
        if decoder.is_some() {
            headers.remove(header::CONTENT_ENCODING);
        }
        headers.remove(header::CONTENT_LENGTH);
        Ok(ReflectBody {
            inner: body,
            scanner: self.scanner(),
            decoder,
            guard: self.clone(),
            trailers: None,
            ended: false,
        }
        .boxed())
    }
}

/// Compiled needles by the values they search for: the same credential (or
/// the same set of values) is compiled once, not on every call.
#[derive(Debug, Default)]
pub struct NeedleCache {
    compiled: dashmap::DashMap<[u8; 32], Arc<Needles>>,
}

/// Past this many entries the cache starts over (rotated secrets and STS
/// sessions leave old entries behind).
const CACHE_ENTRIES: usize = 4096;

impl NeedleCache {
    /// The needles for `values`, compiled at most once per distinct set;
    /// `None` when there is nothing to search for.
    pub fn get(&self, values: &[Arc<secrecy::SecretString>]) -> Option<Arc<Needles>> {
        use secrecy::ExposeSecret;
        use sha2::{Digest, Sha256};
        if values.is_empty() {
            return None;
        }
        // Kept in memory only, as the values themselves are.
        let mut hasher = Sha256::new();
        for value in values {
            let bytes = value.expose_secret().as_bytes();
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        }
        let key: [u8; 32] = hasher.finalize().into();
        if let Some(found) = self.compiled.get(&key) {
            return Some(Arc::clone(&found));
        }
        let needles = Arc::new(Needles::new(values)?);
        if self.compiled.len() >= CACHE_ENTRIES {
            self.compiled.clear();
        }
        self.compiled.insert(key, Arc::clone(&needles));
        Some(needles)
    }
}

/// A streaming decoder for a compressed body.
enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Zlib(Box<flate2::write::ZlibDecoder<Vec<u8>>>),
}

impl Decoder {
    fn write(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        let out = match self {
            Decoder::Gzip(d) => {
                d.write_all(data)?;
                d.get_mut()
            }
            Decoder::Zlib(d) => {
                d.write_all(data)?;
                d.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    fn finish(&mut self) -> std::io::Result<Bytes> {
        let out = match self {
            Decoder::Gzip(d) => {
                d.try_finish()?;
                d.get_mut()
            }
            Decoder::Zlib(d) => {
                d.try_finish()?;
                d.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }
}

/// The body filter: each chunk decoded (if it must be), scanned and passed
/// on redacted; only a possible needle's beginning is held for the next.
pub struct ReflectBody {
    inner: ProxyBody,
    scanner: Scanner,
    decoder: Option<Decoder>,
    guard: Guard,
    /// Trailers that arrived while held bytes were still to be sent.
    trailers: Option<HeaderMap>,
    ended: bool,
}

impl std::fmt::Debug for ReflectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReflectBody")
            .field("decoding", &self.decoder.is_some())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl ReflectBody {
    /// Scans `data` (already decoded) and returns what may be passed on.
    fn pass(&mut self, data: Bytes, last: bool) -> Result<Bytes, BoxError> {
        let (mut out, mut hits) = self.scanner.push(data);
        if last {
            let (rest, more) = self.scanner.finish();
            hits += more;
            if !rest.is_empty() {
                let mut joined = bytes::BytesMut::from(&out[..]);
                joined.extend_from_slice(&rest);
                out = joined.freeze();
            }
        }
        if hits > 0 {
            let refuse = self.guard.mode == Reflection::Refuse;
            self.guard.tally.add(hits, "body", refuse);
            if refuse {
                return Err(Box::new(ReflectionRefused));
            }
        }
        Ok(out)
    }

    fn decode(&mut self, data: &[u8], last: bool) -> Result<Bytes, BoxError> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(Bytes::copy_from_slice(data));
        };
        let mut out = decoder.write(data)?;
        if last {
            let rest = decoder.finish()?;
            if !rest.is_empty() {
                let mut joined = bytes::BytesMut::from(&out[..]);
                joined.extend_from_slice(&rest);
                out = joined.freeze();
            }
        }
        Ok(out)
    }
}

impl Body for ReflectBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => Some(frame),
                Poll::Ready(None) => None,
            };
            let (data, last) = match frame.map(Frame::into_data) {
                Some(Ok(data)) => (data, false),
                Some(Err(frame)) => {
                    // Trailers end the data: whatever is held goes first.
                    let mut trailers = frame.into_trailers().unwrap_or_default();
                    if let Err(Refused::Reflected) = this.guard.headers(&mut trailers, "trailer") {
                        return Poll::Ready(Some(Err(Box::new(ReflectionRefused))));
                    }
                    this.trailers = Some(trailers);
                    (Bytes::new(), true)
                }
                None => (Bytes::new(), true),
            };
            this.ended = last;
            let decoded = match this.decoder {
                Some(_) => this.decode(&data, last),
                None => Ok(data),
            };
            match decoded.and_then(|d| this.pass(d, last)) {
                Err(e) => {
                    this.ended = true;
                    this.trailers = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(out) if !out.is_empty() => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.trailers.is_none()
    }
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
