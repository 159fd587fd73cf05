//! The request-metadata headers of the 2026-07-28 transport (`Mcp-Method`,
//! `Mcp-Name`), checked against the body. clawgate decides from the body;
//! a header that disagrees with it is refused, so that no component behind
//! clawgate can act on a different reading.

use base64::Engine;
use http::HeaderMap;

use super::jsonrpc::Message;

/// A header that disagrees with the body, or cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderMismatch {
    /// Sent more than once, or not text.
    #[error("header `{0}` is unreadable or repeated")]
    Unreadable(&'static str),
    /// Its value differs from the body's.
    #[error("header `{0}` does not match the body")]
    Differs(&'static str),
}

/// Decodes a header value that may use the `=?base64?…?=` form.
pub fn decode_value(value: &str) -> Option<String> {
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(encoded) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(value.to_owned()),
    }
}

fn single(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, HeaderMismatch> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(decode_value)
            .map(Some)
            .ok_or(HeaderMismatch::Unreadable(name)),
        (Some(_), Some(_)) => Err(HeaderMismatch::Unreadable(name)),
    }
}

/// The name a message's `Mcp-Name` header mirrors: `params.name` or
/// `params.uri`.
pub fn body_name(message: &Message) -> Option<&str> {
    let params = message.params()?;
    params
        .get("name")
        .or_else(|| params.get("uri"))
        .and_then(serde_json::Value::as_str)
}

/// Checks `Mcp-Method` and `Mcp-Name`, when sent, against the body.
pub fn check(headers: &HeaderMap, message: &Message) -> Result<(), HeaderMismatch> {
    if let Some(method) = single(headers, "mcp-method")?
        && message.method() != Some(method.as_str())
    {
        return Err(HeaderMismatch::Differs("Mcp-Method"));
    }
    if let Some(name) = single(headers, "mcp-name")?
        && body_name(message) != Some(name.as_str())
    {
        return Err(HeaderMismatch::Differs("Mcp-Name"));
    }
    Ok(())
}
