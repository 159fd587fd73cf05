//! Resource URIs as rules match them: one spelling per resource.
//!
//! A server resolves `file:///workspace/../etc/passwd` (or its `%2e%2e`
//! spelling) outside `/workspace`, while a glob over the text would see it
//! inside. So before any rule sees a URI, it is normalised (RFC 3986 §6.2.2:
//! scheme and host lowercased, percent-encoded unreserved characters decoded,
//! the hex of the remaining escapes uppercased), and a URI that still has a
//! dot segment — in any decoding, split at `/` or `\` — is refused rather
//! than resolved: clawgate cannot know how the server would resolve it.
//!
//! Invariants:
//! - Pure; the URI the server receives is the one the agent sent.
//! - A refused URI is never matched against rules.

/// Why a resource URI is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UriRefused {
    /// A `.` or `..` segment, however spelt.
    #[error("a dot segment in a resource uri")]
    DotSegment,
    /// A percent sign not followed by two hex digits, or a control byte.
    #[error("a malformed resource uri")]
    Malformed,
}

/// How many times an escape is decoded to look for a hidden dot segment
/// (`%252e` is `%2e` once decoded).
const DECODE_ROUNDS: usize = 3;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Decodes the escapes of unreserved characters, uppercases the rest.
fn normalise_escapes(text: &str) -> Result<String, UriRefused> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_control() {
            return Err(UriRefused::Malformed);
        }
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(UriRefused::Malformed);
        };
        let decoded = h * 16 + l;
        if is_unreserved(decoded) {
            out.push(decoded);
        } else {
            out.push(b'%');
            out.extend(format!("{decoded:02X}").bytes());
        }
        i += 3;
    }
    String::from_utf8(out).map_err(|_| UriRefused::Malformed)
}

/// Every escape decoded, as bytes (lossy where not UTF-8).
fn decode_all(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn has_dot_segment(path: &str) -> bool {
    path.split(['/', '\\']).any(|s| s == "." || s == "..")
}

/// The normalised form of a resource URI, or why it is refused.
pub fn normalise(uri: &str) -> Result<String, UriRefused> {
    let uri = normalise_escapes(uri)?;
    // The scheme, when there is one, is lowercased; so is the host.
    let (scheme, rest) = match uri.split_once(':') {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) =>
        {
            (Some(scheme.to_ascii_lowercase()), rest)
        }
        _ => (None, uri.as_str()),
    };
    let (authority, path) = match rest.strip_prefix("//") {
        Some(after) => {
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            let (authority, path) = after.split_at(end);
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => format!("{user}@{}", host.to_ascii_lowercase()),
                None => authority.to_ascii_lowercase(),
            };
            (Some(authority), path)
        }
        None => (None, rest),
    };
    // Dot segments are looked for in the path (not the query or fragment),
    // in every decoding a server might apply.
    let bare = path.split(['?', '#']).next().unwrap_or(path);
    let mut probe = bare.to_owned();
    for _ in 0..DECODE_ROUNDS {
        if has_dot_segment(&probe) {
            return Err(UriRefused::DotSegment);
        }
        let next = decode_all(&probe);
        if next == probe {
            break;
        }
        probe = next;
    }
    if has_dot_segment(&probe) {
        return Err(UriRefused::DotSegment);
    }
    let mut out = String::with_capacity(uri.len());
    if let Some(scheme) = scheme {
        out.push_str(&scheme);
        out.push(':');
    }
    if let Some(authority) = authority {
        out.push_str("//");
        out.push_str(&authority);
    }
    out.push_str(path);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_resource_meet() {
        for (given, expected) in [
            ("file:///workspace/a.txt", "file:///workspace/a.txt"),
            ("FILE:///workspace/%61.txt", "file:///workspace/a.txt"),
            ("HTTPS://Example.COM/Path", "https://example.com/Path"),
            ("https://User@Example.com/x", "https://User@example.com/x"),
            ("config://app", "config://app"),
            ("file:///a%2fb", "file:///a%2Fb"),
            ("file:///a/..b/c", "file:///a/..b/c"),
        ] {
            assert_eq!(normalise(given).as_deref(), Ok(expected), "{given}");
        }
    }

    #[test]
    fn dot_segments_are_refused_in_every_spelling() {
        for uri in [
            "file:///workspace/../etc/passwd",
            "file:///workspace/%2e%2e/etc/passwd",
            "file:///workspace/%2E%2e/etc/passwd",
            "file:///workspace/.%2e/etc/passwd",
            "file:///workspace/%252e%252e/etc/passwd",
            "file:///workspace/..%2fetc/passwd",
            "file:///workspace/..\\etc\\passwd",
            "file:///workspace/./a",
            "file:///workspace/..",
            "../x",
        ] {
            assert_eq!(normalise(uri), Err(UriRefused::DotSegment), "{uri}");
        }
        assert_eq!(normalise("file:///a%zz"), Err(UriRefused::Malformed));
        assert_eq!(normalise("file:///a\nb"), Err(UriRefused::Malformed));
        // A query is not a path: its dots are the server's business.
        assert!(normalise("file:///a?x=../b").is_ok());
    }
}
