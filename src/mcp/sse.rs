//! A streaming Server-Sent Events parser that hands on one event at a time.
//!
//! Invariants:
//! - Bytes leave in the order they came. Comment lines (`:` keep-alives)
//!   outside an event, and events without `data`, are handed on as soon as
//!   they are complete, untouched; nothing waits for the end of the stream.
//! - An event is held only until its blank line: `id:`, `event:` and
//!   `retry:` lines stay with it and are kept when its data is rewritten.
//! - An event larger than the limit ends the stream with an error rather
//!   than growing without bound.

use bytes::Bytes;

/// One piece of the stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes to hand on untouched (comments, events without data, line ends).
    Raw(Bytes),
    /// A complete event with data.
    Event(Event),
}

/// A complete SSE event that carries data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event exactly as received, blank line included.
    pub raw: Bytes,
    /// Its lines other than `data:` (`id:`, `event:`, `retry:`, comments),
    /// each with its line end.
    pub fields: Vec<u8>,
    /// The data lines joined with `\n`, as an SSE client sees them.
    pub data: Vec<u8>,
}

impl Event {
    /// The event with its data replaced (as one `data:` line) and every
    /// other line kept.
    pub fn with_data(&self, data: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(self.fields.len() + data.len() + 10);
        out.extend_from_slice(&self.fields);
        for line in data.split(|&b| b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.push(b'\n');
        Bytes::from(out)
    }
}

/// An event past the parser's limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an SSE event is larger than {0} bytes")]
pub struct TooLarge(pub usize);

/// The parser's state between chunks.
#[derive(Debug)]
pub struct SseParser {
    limit: usize,
    /// The line being read, without its end.
    line: Vec<u8>,
    /// The event so far, raw.
    raw: Vec<u8>,
    fields: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// The last byte seen was a `\r` that ended a line; a `\n` right after
    /// it belongs to that line end.
    after_cr: bool,
}

impl SseParser {
    /// A parser that holds at most `limit` bytes of one event.
    pub fn new(limit: usize) -> SseParser {
        SseParser {
            limit,
            line: Vec::new(),
            raw: Vec::new(),
            fields: Vec::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
        }
    }

    /// Feeds one chunk; complete pieces are pushed to `out` in order.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Piece>) -> Result<(), TooLarge> {
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some((b'\n', tail)) = rest.split_first() {
                // The `\n` of a `\r\n` cut between chunks stays where it was:
                // in the event still being read, else right after what went.
                if self.raw.is_empty() {
                    out.push(Piece::Raw(Bytes::from_static(b"\n")));
                } else {
                    self.raw.push(b'\n');
                }
                rest = tail;
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.line.extend_from_slice(rest);
                    if self.line.len() + self.raw.len() > self.limit {
                        return Err(TooLarge(self.limit));
                    }
                    return Ok(());
                }
                Some(i) => {
                    self.line.extend_from_slice(&rest[..i]);
                    let end: &[u8] = match (rest[i], rest.get(i + 1)) {
                        (b'\r', Some(b'\n')) => b"\r\n",
                        (b'\r', None) => {
                            self.after_cr = true;
                            b"\r"
                        }
                        (b'\r', Some(_)) => b"\r",
                        _ => b"\n",
                    };
                    rest = &rest[i + end.len()..];
                    self.end_line(end, out);
                    if self.raw.len() > self.limit {
                        return Err(TooLarge(self.limit));
                    }
                }
            }
        }
        Ok(())
    }

    fn end_line(&mut self, end: &[u8], out: &mut Vec<Piece>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            // A blank line ends the event.
            self.raw.extend_from_slice(end);
            let raw = Bytes::from(std::mem::take(&mut self.raw));
            let fields = std::mem::take(&mut self.fields);
            let data = std::mem::take(&mut self.data);
            if std::mem::take(&mut self.has_data) {
                out.push(Piece::Event(Event { raw, fields, data }));
            } else {
                out.push(Piece::Raw(raw));
            }
            return;
        }
        if line.first() == Some(&b':') && self.raw.is_empty() {
            // A comment between events (a keep-alive): on at once.
            let mut bytes = line;
            bytes.extend_from_slice(end);
            out.push(Piece::Raw(Bytes::from(bytes)));
            return;
        }
        self.raw.extend_from_slice(&line);
        self.raw.extend_from_slice(end);
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        if name == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        } else {
            self.fields.extend_from_slice(&line);
            self.fields.extend_from_slice(b"\n");
        }
    }

    /// Whether the parser holds part of an event or line.
    pub fn is_mid_event(&self) -> bool {
        !self.raw.is_empty() || !self.line.is_empty()
    }
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
