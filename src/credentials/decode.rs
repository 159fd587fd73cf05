//! The spellings a placeholder can hide behind, undone before sentinels are
//! scanned for: percent-encoding (paths, queries, form bodies; `+` as a
//! space), JSON string escapes (`\u0063`, `\/`, surrogate pairs),
//! quoted-printable (multipart parts, with `=` soft line breaks), and runs
//! of base64 (multipart parts with `Content-Transfer-Encoding: base64`,
//! MIME line breaks included). Scan only: the request is never rewritten
//! from these.
//!
//! Pure, and lenient by design: a broken escape is kept as it is, since
//! what matters is whether some reader could see a placeholder.

/// The decoded forms of `bytes` worth scanning besides `bytes` itself:
/// each decoding that changes something, and percent after JSON (a JSON
/// string holding a form-encoded value).
pub fn variants(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let percent = bytes.contains(&b'%') || bytes.contains(&b'+');
    if percent {
        out.push(percent_decoded(bytes));
    }
    if bytes.contains(&b'\\') {
        let json = json_unescaped(bytes);
        if json.contains(&b'%') || json.contains(&b'+') {
            out.push(percent_decoded(&json));
        }
        out.push(json);
    }
    if bytes.contains(&b'=') {
        out.push(quoted_printable_decoded(bytes));
    }
    let base64 = base64_runs_decoded(bytes);
    if !base64.is_empty() {
        out.push(base64);
    }
    out
}

/// The shortest run of base64 characters worth decoding: a placeholder is
/// at least 24 bytes, 32 characters of base64.
const MIN_BASE64_RUN: usize = 32;

/// Every run of at least [`MIN_BASE64_RUN`] base64 characters (line breaks
/// inside a run skipped, as MIME wraps lines), decoded; the decoded runs
/// joined with a NUL so no match spans two of them.
pub fn base64_runs_decoded(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
    let flush = |run: &mut Vec<u8>, out: &mut Vec<u8>| {
        if run.len() >= MIN_BASE64_RUN {
            let data: Vec<u8> = run.iter().copied().filter(|&b| b != b'=').collect();
            // A length of 4n+1 cannot be base64: drop the stray character.
            let usable = data.len() - usize::from(data.len() % 4 == 1);
            if let Ok(decoded) = LENIENT.decode(&data[..usable]) {
                out.extend_from_slice(&decoded);
                out.push(0);
            }
        }
        run.clear();
    };
    let mut out = Vec::new();
    let mut run = Vec::new();
    let mut newlines = 0;
    for &b in bytes {
        if is_b64(b) {
            run.push(b);
            newlines = 0;
        } else if b == b'\n' {
            // A wrapped line continues the run; a blank line ends it.
            newlines += 1;
            if newlines > 1 {
                flush(&mut run, &mut out);
            }
        } else if b != b'\r' {
            flush(&mut run, &mut out);
        }
    }
    flush(&mut run, &mut out);
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// `%XX` decoded and `+` read as a space (form encoding); repeated while
/// it changes something, up to three times (double encoding).
pub fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    let mut current = once_percent(bytes);
    for _ in 0..2 {
        if !current.contains(&b'%') {
            break;
        }
        let next = once_percent(&current);
        if next == current {
            break;
        }
        current = next;
    }
    current
}

fn once_percent(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// JSON string escapes undone: `\uXXXX` (with surrogate pairs) as UTF-8,
/// and the one-character escapes.
pub fn json_unescaped(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let unit = |at: usize| -> Option<u32> {
        let digits = bytes.get(at..at + 4)?;
        digits
            .iter()
            .try_fold(0u32, |acc, &b| hex(b).map(|d| acc << 4 | u32::from(d)))
    };
    while i < bytes.len() {
        if bytes[i] != b'\\' || i + 1 >= bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let simple = match bytes[i + 1] {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            i += 2;
            continue;
        }
        if bytes[i + 1] == b'u'
            && let Some(first) = unit(i + 2)
        {
            let (code, used) = if (0xD800..0xDC00).contains(&first)
                && bytes.get(i + 6) == Some(&b'\\')
                && bytes.get(i + 7) == Some(&b'u')
                && let Some(second) = unit(i + 8)
                && (0xDC00..0xE000).contains(&second)
            {
                (0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00), 12)
            } else {
                (first, 6)
            };
            let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            i += used;
            continue;
        }
        out.push(b'\\');
        i += 1;
    }
    out
}

/// Quoted-printable undone: `=XX` as a byte, `=` at a line end (soft
/// break) removed.
pub fn quoted_printable_decoded(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes.get(i + 1) == Some(&b'\r') && bytes.get(i + 2) == Some(&b'\n') {
                i += 3;
                continue;
            }
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
