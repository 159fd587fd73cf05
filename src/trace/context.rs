//! The W3C trace context (`traceparent`): read from the agent, continued by
//! clawgate's own span, and written to the upstream.

use http::HeaderValue;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// One span's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, the agent's when it sent a valid `traceparent`.
    pub trace_id: [u8; 16],
    /// clawgate's span for the call.
    pub span_id: [u8; 8],
    /// The agent's span, when it sent one.
    pub parent: Option<[u8; 8]>,
    /// The trace flags (bit 0: sampled), the agent's or sampled.
    pub flags: u8,
}

impl TraceContext {
    /// A new span in the agent's trace when `incoming` is a valid
    /// `traceparent`, else in a new trace. An invalid header is ignored, as
    /// the W3C recommendation says: a new trace starts.
    pub fn continue_or_start(incoming: Option<&HeaderValue>) -> TraceContext {
        let span_id = random_nonzero::<8>();
        match incoming.and_then(|v| v.to_str().ok()).and_then(parse) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent: Some(parent),
                flags,
            },
            None => TraceContext {
                trace_id: random_nonzero::<16>(),
                span_id,
                parent: None,
                flags: 1,
            },
        }
    }

    /// The trace id in lowercase hex, as records and collectors show it.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` the upstream receives: this trace, clawgate's span
    /// as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

/// The trace id, parent id and flags of a valid `traceparent`. Version 00
/// is exactly 55 characters; a later version may append fields after a `-`;
/// version `ff`, upper-case hex and all-zero ids are invalid.
pub(super) fn parse(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let value = value.trim_matches([' ', '\t']);
    let bytes = value.as_bytes();
    if bytes.len() < 55 || (bytes.len() > 55 && bytes[55] != b'-') {
        return None;
    }
    let version = lower_hex::<1>(value.get(0..2)?)?;
    if version[0] == 0xff || (version[0] == 0 && bytes.len() != 55) {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let trace_id = lower_hex::<16>(value.get(3..35)?)?;
    let parent = lower_hex::<8>(value.get(36..52)?)?;
    let flags = lower_hex::<1>(value.get(53..55)?)?[0];
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

fn lower_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Random bytes that are not all zero (an all-zero id is invalid).
fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    let rng = ring::rand::SystemRandom::new();
    let _ = ring::rand::SecureRandom::fill(&rng, &mut bytes);
    if bytes == [0; N] {
        bytes[N - 1] = 1;
    }
    bytes
}
