//! `clawgate mcp pins`: asks an MCP server for its tools (the session-era
//! handshake, which every Streamable HTTP server answers: `initialize`,
//! `notifications/initialized`, then every page of `tools/list`) and prints
//! each tool's definition hash as a `[scope.mcp.pins]` table to paste into
//! policy. Admin tooling: it talks to the server directly, not through
//! clawgate, and never runs in the proxy.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use super::jsonrpc::{Message, message_of, parse_strict};
use super::pins::definition_hash;
use super::sse::{Piece, SseParser};

/// Why the tools could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL, a header or the CA file is not usable.
    #[error("{0}")]
    Setup(String),
    /// The exchange with the server failed.
    #[error("`{method}` failed: {why}")]
    Exchange {
        /// The JSON-RPC method.
        method: &'static str,
        /// What went wrong.
        why: String,
    },
}

/// A tool name and its definition hash.
pub type ToolHash = (String, String);

struct Session {
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    url: http::Uri,
    headers: HeaderMap,
    session: Option<HeaderValue>,
}

impl Session {
    async fn send(
        &mut self,
        method: &'static str,
        id: Option<u64>,
        params: Value,
    ) -> Result<Option<Value>, FetchError> {
        let fail = |why: String| FetchError::Exchange { method, why };
        let mut message = json!({"jsonrpc": "2.0", "method": method, "params": params});
        if let Some(id) = id {
            message["id"] = json!(id);
        }
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let req = req
            .body(Full::new(Bytes::from(message.to_string())))
            .map_err(|e| fail(e.to_string()))?;
        let response = self
            .client
            .request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("status {}", response.status())));
        }
        if let Some(s) = response.headers().get("mcp-session-id") {
            self.session = Some(s.clone());
        }
        let sse = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let Some(id) = id else {
            return Ok(None);
        };
        let mut body = response.into_body();
        let mut parser = SseParser::new(super::response::MAX_MESSAGE);
        let mut json_body = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| fail(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if !sse {
                json_body.extend_from_slice(&data);
                continue;
            }
            let mut pieces = Vec::new();
            parser
                .feed(&data, &mut pieces)
                .map_err(|e| fail(e.to_string()))?;
            for piece in pieces {
                if let Piece::Event(event) = piece
                    && let Some(result) = answer(&event.data, id)?
                {
                    return Ok(Some(result));
                }
            }
        }
        match answer(&json_body, id)? {
            Some(result) => Ok(Some(result)),
            None => Err(fail("no answer".into())),
        }
    }
}

/// The result of the response to `id` in `data`, if that is what it holds.
fn answer(data: &[u8], id: u64) -> Result<Option<Value>, FetchError> {
    let Ok(value) = parse_strict(data) else {
        return Ok(None);
    };
    let result = value.get("result").cloned();
    match message_of(value) {
        Ok(Message::Response {
            id: Some(got),
            error,
            ..
        }) if got.0 == json!(id) => {
            if error {
                return Err(FetchError::Exchange {
                    method: "tools/list",
                    why: "the server answered with an error".into(),
                });
            }
            Ok(result)
        }
        _ => Ok(None),
    }
}

/// Fetches every tool of the MCP server at `url` and hashes its definition.
pub async fn tool_hashes(
    url: &str,
    headers: &[String],
    ca_file: Option<&std::path::Path>,
) -> Result<Vec<ToolHash>, FetchError> {
    let url: http::Uri = url
        .parse()
        .map_err(|_| FetchError::Setup(format!("`{url}` is not a URL")))?;
    let mut map = HeaderMap::new();
    for header in headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| FetchError::Setup(format!("header `{header}` must be `Name: value`")))?;
        let name = HeaderName::try_from(name.trim())
            .map_err(|_| FetchError::Setup(format!("`{}` is not a header name", name.trim())))?;
        let value = HeaderValue::try_from(value.trim()).map_err(|_| {
            FetchError::Setup(format!("the value of `{name}` is not a header value"))
        })?;
        map.append(name, value);
    }
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let bytes = std::fs::read(path)
            .map_err(|e| FetchError::Setup(format!("cannot read `{}`: {e}", path.display())))?;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            let cert = cert.map_err(|e| FetchError::Setup(format!("`{}`: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| FetchError::Setup(format!("`{}`: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let mut session = Session {
        client: Client::builder(TokioExecutor::new()).build(https),
        url,
        headers: map,
        session: None,
    };
    let init = json!({
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "clawgate-mcp-pins", "version": env!("CARGO_PKG_VERSION")},
    });
    session.send("initialize", Some(1), init).await?;
    session
        .send("notifications/initialized", None, json!({}))
        .await?;
    let mut hashes = Vec::new();
    let mut cursor: Option<Value> = None;
    for page in 0..1000u64 {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let result = session
            .send("tools/list", Some(2 + page), params)
            .await?
            .unwrap_or_default();
        for tool in result
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = tool.get("name").and_then(Value::as_str) {
                hashes.push((name.to_owned(), definition_hash(tool)));
            }
        }
        cursor = result.get("nextCursor").filter(|c| !c.is_null()).cloned();
        if cursor.is_none() {
            break;
        }
    }
    hashes.sort();
    Ok(hashes)
}

/// The `[scope.mcp.pins]` table for `hashes`.
pub fn pins_table(url: &str, hashes: &[ToolHash]) -> String {
    let mut out = format!("# definition hashes of the tools of {url}\n[scope.mcp.pins]\n");
    for (name, hash) in hashes {
        out.push_str(&format!("{} = \"{hash}\"\n", toml_key(name)));
    }
    out
}

fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_owned()
    } else {
        Value::String(name.to_owned()).to_string()
    }
}
