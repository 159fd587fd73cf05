//! Whether a request to an MCP scope is an MCP message, by what it carries
//! rather than where it is sent.
//!
//! Servers fold path spellings together (the TypeScript SDK on Express
//! serves `/mcp`, `/mcp/` and `/MCP` alike), so on a scope with
//! `[scope.mcp]` the endpoint path only says where the session's GET stream
//! and DELETE go. A request anywhere on the scope is an MCP message when it
//! carries `Mcp-Method`, or when its body could be JSON-RPC: what clawgate
//! cannot read as JSON (a compressed body, UTF-16, a byte-order mark, a
//! syntax error) but might be JSON, it treats as a message, so the strict
//! parser refuses it. Only a body that is plainly not JSON, or strict JSON
//! with no JSON-RPC member, is left to the scope's HTTP rules.
//!
//! Invariants:
//! - Pure: headers and the body's first bytes in, a verdict out.
//! - Fails towards MCP: a doubt makes a message, never an HTTP call.

use http::HeaderMap;
use serde_json::Value;

use super::jsonrpc::parse_strict;

/// What a request to an MCP scope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// A JSON-RPC message, or what may be one: decided by the MCP rules.
    Message,
    /// Not JSON-RPC: decided by the scope's HTTP rules.
    Http,
}

/// Whether the headers say the body may be JSON (or cannot be read).
fn headers_say_json(headers: &HeaderMap) -> bool {
    if headers.contains_key("mcp-method") {
        return true;
    }
    let encoded = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| {
            v.to_str()
                .map_or(true, |v| !v.trim().eq_ignore_ascii_case("identity"))
        });
    let json_type = headers
        .get_all(http::header::CONTENT_TYPE)
        .iter()
        .any(|v| v.to_str().map_or(true, media_is_json));
    encoded || json_type
}

/// `application/json`, `text/json`, `application/json-rpc`, `…+json`.
fn media_is_json(value: &str) -> bool {
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let subtype = media.rsplit('/').next().unwrap_or("");
    subtype == "json" || subtype.starts_with("json-") || subtype.ends_with("+json")
}

/// Whether the first bytes may begin JSON in some encoding: `{` or `[`
/// after whitespace, a byte-order mark, or a NUL among the first four bytes
/// (UTF-16 or UTF-32 without one).
fn bytes_say_json(body: &[u8]) -> bool {
    if body.starts_with(&[0xEF, 0xBB, 0xBF])
        || body.starts_with(&[0xFE, 0xFF])
        || body.starts_with(&[0xFF, 0xFE])
        || body.iter().take(4).any(|&b| b == 0)
    {
        return true;
    }
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// Whether a JSON value holds a JSON-RPC member (`jsonrpc`, `method`, or
/// an `id` with a `result` or `error`), itself or, for an array, any
/// element.
fn holds_jsonrpc(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            map.contains_key("jsonrpc")
                || map.contains_key("method")
                || (map.contains_key("id")
                    && (map.contains_key("result") || map.contains_key("error")))
        }
        Value::Array(items) => items.iter().any(holds_jsonrpc),
        _ => false,
    }
}

/// What a request is, from its headers and body (`complete`: the whole
/// body is in `body`).
pub fn sniff(headers: &HeaderMap, body: &[u8], complete: bool) -> Sniff {
    if complete && body.is_empty() && !headers.contains_key("mcp-method") {
        // No body, no message: clients send their JSON content type on the
        // session's GET and DELETE too.
        return Sniff::Http;
    }
    if !headers_say_json(headers) && !bytes_say_json(body) {
        return Sniff::Http;
    }
    if !complete {
        // Too large to read: if it may be JSON, it may be a message.
        return Sniff::Message;
    }
    match parse_strict(body) {
        Ok(value) if !holds_jsonrpc(&value) => Sniff::Http,
        _ => Sniff::Message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, http::HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn what_may_be_json_rpc_is_a_message() {
        let none = headers(&[]);
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#;
        let m = Sniff::Message;
        assert_eq!(sniff(&none, call, true), m);
        assert_eq!(sniff(&none, b"  [{\"method\":\"x\"}]", true), m);
        assert_eq!(sniff(&none, br#"{"\u006asonrpc":"2.0"}"#, true), m);
        // Unreadable or not strict: the parser will refuse it.
        assert_eq!(sniff(&none, b"{\"a\":1,\"a\":2}", true), m);
        assert_eq!(sniff(&none, b"\xEF\xBB\xBF{}", true), m);
        assert_eq!(sniff(&none, b"\xFF\xFE{\x00}\x00", true), m);
        assert_eq!(sniff(&none, b"{\x00\"\x00", true), m);
        assert_eq!(sniff(&none, b"{", false), m);
        let gzip = headers(&[("content-encoding", "gzip")]);
        assert_eq!(sniff(&gzip, b"\x1f\x8b\x08", true), m);
        let json = headers(&[("content-type", "application/json; charset=utf-16")]);
        assert_eq!(sniff(&json, b"not json", true), m);
        let method = headers(&[("mcp-method", "tools/call")]);
        assert_eq!(sniff(&method, b"", true), m);
    }

    #[test]
    fn what_is_plainly_not_json_rpc_is_http() {
        let none = headers(&[]);
        assert_eq!(sniff(&none, b"", true), Sniff::Http);
        let json = headers(&[("content-type", "application/json")]);
        assert_eq!(sniff(&json, b"", true), Sniff::Http);
        assert_eq!(sniff(&none, b"hello=world", true), Sniff::Http);
        assert_eq!(sniff(&none, b"\x89PNG....", false), Sniff::Http);
        assert_eq!(sniff(&none, br#"{"name":"x"}"#, true), Sniff::Http);
        assert_eq!(sniff(&none, b"[1,2]", true), Sniff::Http);
        let identity = headers(&[
            ("content-encoding", "identity"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(sniff(&identity, b"plain", true), Sniff::Http);
    }
}
