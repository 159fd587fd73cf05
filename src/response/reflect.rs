//! The reflection guard's search: the exact values injected into one call,
//! in the encodings an upstream is likely to echo them in, found by one
//! Aho-Corasick automaton and replaced by a fixed marker.
//!
//! Invariants:
//! - A needle is never logged, formatted or recorded; [`Needles`] has a
//!   hand-written `Debug` that shows only counts.
//! - [`Scanner`] sees each byte once and holds back only the bytes that
//!   could begin a needle still to be completed by the next chunk (never more
//!   than the longest needle minus one byte), so a match split across reads
//!   is found and a stream is not delayed by more than that.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use secrecy::{ExposeSecret, SecretString};

/// What every occurrence of an injected value becomes. Safe inside JSON
/// strings, HTML, header values and URLs.
pub const MARKER: &[u8] = b"[clawgate:redacted]";

/// Below this length a value is searched only as it is: its encodings would
/// be short enough to match unrelated text.
const MIN_ENCODED: usize = 8;

/// Up to this many needles, the search uses a prefilter.
const PREFILTER_NEEDLES: usize = 16;

/// The needles of one call: every injected value in every encoding searched.
pub struct Needles {
    automaton: AhoCorasick,
    /// Sorted, for the hold-back check at a chunk's end.
    sorted: Vec<Vec<u8>>,
    /// Whether a byte begins some needle.
    first: [bool; 256],
    longest: usize,
    values: usize,
}

impl std::fmt::Debug for Needles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Needles")
            .field("values", &self.values)
            .field("needles", &self.sorted.len())
            .finish_non_exhaustive()
    }
}

impl Needles {
    /// The needles for `values` (empty values are skipped); `None` when
    /// there is nothing to search for.
    pub fn new(values: &[Arc<SecretString>]) -> Option<Needles> {
        let mut all: Vec<Vec<u8>> = Vec::new();
        let mut counted = 0;
        for value in values {
            let raw = value.expose_secret().as_bytes();
            if raw.is_empty() {
                continue;
            }
            counted += 1;
            all.extend(encodings(raw));
        }
        all.sort_unstable();
        all.dedup();
        if all.is_empty() {
            return None;
        }
        // A prefilter (Teddy) is fastest for the usual call's few needles;
        // with many, its false candidates cost more than a plain DFA walk
        // (measured: benches/README.md, `reflection`).
        let many = all.len() > PREFILTER_NEEDLES;
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .prefilter(!many)
            .kind(many.then_some(AhoCorasickKind::DFA))
            .build(&all)
            .ok()?;
        let mut first = [false; 256];
        for needle in &all {
            if let Some(&b) = needle.first() {
                first[usize::from(b)] = true;
            }
        }
        let longest = all.iter().map(Vec::len).max().unwrap_or(0);
        Some(Needles {
            automaton,
            sorted: all,
            first,
            longest,
            values: counted,
        })
    }

    /// How many needles are searched (values times encodings, deduplicated).
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether there are no needles (never, for a built set).
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// `text` with every needle replaced by [`MARKER`], and how many were;
    /// `None` when there was none.
    pub fn redact(&self, text: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut hits = 0;
        for m in self.automaton.find_iter(text) {
            out.extend_from_slice(&text[at..m.start()]);
            out.extend_from_slice(MARKER);
            at = m.end();
            hits += 1;
        }
        if hits == 0 {
            return None;
        }
        out.extend_from_slice(&text[at..]);
        Some((out, hits))
    }

    /// Whether `tail` is the beginning of some needle (a match the next
    /// chunk may complete).
    fn starts_a_needle(&self, tail: &[u8]) -> bool {
        let i = self.sorted.partition_point(|n| n.as_slice() < tail);
        self.sorted.get(i).is_some_and(|n| n.starts_with(tail))
    }

    /// Where the bytes that must wait for the next chunk begin: the first
    /// position from which the rest of `text` could begin a needle.
    fn hold_from(&self, text: &[u8], from: usize) -> usize {
        let start = from.max(text.len().saturating_sub(self.longest.saturating_sub(1)));
        (start..text.len())
            .find(|&p| self.first[usize::from(text[p])] && self.starts_a_needle(&text[p..]))
            .unwrap_or(text.len())
    }
}

/// The searched forms of one value: as it is, and (when long enough) JSON
/// escaped, percent- and form-encoded, HTML-escaped, and base64 (standard
/// and URL-safe alphabets, at each of the three alignments a value can have
/// inside a longer encoded string).
fn encodings(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![raw.to_vec()];
    if raw.len() < MIN_ENCODED {
        return out;
    }
    if let Ok(text) = std::str::from_utf8(raw)
        && let Ok(json) = serde_json::to_string(text)
    {
        let inner = &json[1..json.len() - 1];
        out.push(inner.as_bytes().to_vec());
        out.push(inner.replace('/', "\\/").into_bytes());
        out.push(html_escaped(text).into_bytes());
    }
    let percent = percent_encoded(raw);
    out.push(lower_hex(&percent));
    out.push(percent.into_bytes());
    out.push(
        form_urlencoded::byte_serialize(raw)
            .collect::<String>()
            .into_bytes(),
    );
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(raw);
            let encoded = engine.encode(&shifted);
            // Characters mixing in the prefix's bits, or the unknown bytes
            // after the value, depend on more than the value: drop them.
            let skip = if offset == 0 { 0 } else { 4 };
            let whole = (shifted.len() / 3) * 4;
            if whole > skip + MIN_ENCODED {
                out.push(encoded.as_bytes()[skip..whole].to_vec());
            }
        }
    }
    out
}

/// Every byte outside RFC 3986's unreserved set as `%XX` (upper case).
fn percent_encoded(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() * 3);
    for &b in raw {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` escapes in lower case, the rest unchanged.
fn lower_hex(percent: &str) -> Vec<u8> {
    let mut out = percent.as_bytes().to_vec();
    let mut i = 0;
    while i + 2 < out.len() {
        if out[i] == b'%' {
            out[i + 1] = out[i + 1].to_ascii_lowercase();
            out[i + 2] = out[i + 2].to_ascii_lowercase();
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

fn html_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// The streaming search over one body or one direction of a socket: each
/// chunk in, the chunk's safe part out, redacted.
#[derive(Debug)]
pub struct Scanner {
    needles: Arc<Needles>,
    held: BytesMut,
    /// Occurrences found so far.
    pub hits: usize,
}

impl Scanner {
    /// A scanner over `needles`.
    pub fn new(needles: Arc<Needles>) -> Scanner {
        Scanner {
            needles,
            held: BytesMut::new(),
            hits: 0,
        }
    }

    /// Takes the next chunk; returns what may be passed on now, redacted,
    /// and how many occurrences it held.
    pub fn push(&mut self, chunk: Bytes) -> (Bytes, usize) {
        let text = if self.held.is_empty() {
            chunk
        } else {
            self.held.extend_from_slice(&chunk);
            self.held.split().freeze()
        };
        self.scan(text, false)
    }

    /// The end of the stream: whatever was held back, redacted.
    pub fn finish(&mut self) -> (Bytes, usize) {
        let text = self.held.split().freeze();
        self.scan(text, true)
    }

    fn scan(&mut self, text: Bytes, last: bool) -> (Bytes, usize) {
        let needles = Arc::clone(&self.needles);
        let keep_from = |done: usize| {
            if last {
                text.len()
            } else {
                needles.hold_from(&text, done)
            }
        };
        let mut out: Option<BytesMut> = None;
        let mut at = 0;
        let mut hits = 0;
        // Every needle beginning before the hold-back point lies wholly in
        // `text`, so the matches found there are final.
        let mut cut = keep_from(0);
        for m in needles.automaton.find_iter(&text[..]) {
            if m.start() >= cut {
                break;
            }
            let buf = out.get_or_insert_with(|| BytesMut::with_capacity(text.len()));
            buf.extend_from_slice(&text[at..m.start()]);
            buf.extend_from_slice(MARKER);
            at = m.end();
            hits += 1;
            if at > cut {
                cut = keep_from(at);
            }
        }
        let cut = cut.max(at);
        self.held.extend_from_slice(&text[cut..]);
        self.hits += hits;
        let passed = match out {
            None => text.slice(..cut),
            Some(mut buf) => {
                buf.extend_from_slice(&text[at..cut]);
                buf.freeze()
            }
        };
        (passed, hits)
    }
}

#[cfg(test)]
#[path = "reflect_tests.rs"]
mod tests;
