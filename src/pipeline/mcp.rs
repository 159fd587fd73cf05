//! Admission of a request to an MCP scope: the one JSON-RPC message of a
//! POST to the endpoint, or of any request that may carry one, read
//! (strictly), checked against its headers, and made into the [`McpCall`]
//! that `decide` judges; and on the way back, every response of the scope
//! wrapped in the filter that rewrites list results, a redirect refused.

use std::sync::Arc;

use http::request::Parts;
use serde_json::Value;

use super::held::Held;
use crate::audit::{AuditLog, DecisionRecord, McpRecord, kind};
use crate::body::ProxyBody;
use crate::error::{Reason, Refusal, Via};
use crate::mcp::jsonrpc::{FrameError, Message, parse_message};
use crate::mcp::pins::Sighting;
use crate::mcp::response::{ResponseFilter, Seen};
use crate::mcp::{McpCall, McpRules, McpState, detect, headers};
use crate::policy::{Mode, Scope, Target};
use crate::record::CallRecord;
use http::Response;
use http_body_util::BodyExt;

/// The most bytes of an MCP request body clawgate reads to decide it.
pub const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// An MCP message read from a request, with what `decide` needs besides.
#[derive(Debug)]
pub(super) struct Read {
    pub message: Option<Message>,
    pub arguments_size: usize,
    pub definition: Option<(String, String)>,
}

impl Read {
    /// The call `decide` judges; `None` for a GET or DELETE.
    pub fn call(&self) -> Option<McpCall<'_>> {
        let message = self.message.as_ref()?;
        let arguments = match message.method() {
            Some("tools/call") => message.params().and_then(|p| p.get("arguments")),
            // The resources a 2026-07-28 listen stream subscribes to.
            Some("subscriptions/listen") => message
                .params()
                .and_then(|p| p.pointer("/notifications/resourceSubscriptions")),
            _ => None,
        };
        Some(McpCall {
            method: message.method().unwrap_or("response"),
            name: headers::body_name(message),
            arguments,
            arguments_size: self.arguments_size,
            first_pin: self.definition.as_ref().map(|(first, _)| first.as_str()),
            definition: self.definition.as_ref().map(|(_, last)| last.as_str()),
        })
    }
}

/// What the way back needs to know about an MCP exchange.
#[derive(Debug)]
pub(super) struct Exchange {
    pub rules: Arc<McpRules>,
    pub scope: String,
    pub enforce: bool,
    pub session: Option<String>,
    /// The request's id (JSON text) and method, for a request.
    pub own: Option<(String, String)>,
    pub method: http::Method,
    /// The inspection of results, set once the call's injected values are
    /// known.
    pub results: Option<crate::mcp::results::Inspector>,
}

/// The scope's MCP rules when `path` (as the target names it) is its endpoint.
pub(super) fn endpoint<'a>(
    scope: &'a Scope,
    target: Target<'_>,
    path: &str,
) -> Option<&'a Arc<McpRules>> {
    let rules = scope.mcp.as_ref()?;
    let path = match target {
        Target::Route(_) => Some(path),
        Target::Host { .. } | Target::Connect { .. } => scope.upstream.strip_base(path),
    };
    (path == Some(rules.endpoint.as_str())).then_some(rules)
}

/// The one text value of a header.
fn header(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads what a request to an MCP scope carries and fills in the record.
/// A POST to the endpoint, and a request anywhere on the scope whose body
/// may be JSON-RPC (see [`crate::mcp::detect`]), is read as one message: a
/// body that is no single strict JSON-RPC message, or whose headers
/// disagree with it, is refused. A GET or DELETE of the endpoint without
/// such a body is the session's stream or end; anything else is left to
/// the HTTP rules (`message` is `None`, and the record has no MCP part).
pub(super) async fn read(
    state: &McpState,
    scope: &Scope,
    at_endpoint: bool,
    parts: &Parts,
    held: Held,
    timeout: std::time::Duration,
    record: &mut CallRecord,
) -> Result<(Read, Held), Reason> {
    let none = Read {
        message: None,
        arguments_size: 0,
        definition: None,
    };
    let session = header(parts, "mcp-session-id");
    let noted = McpRecord {
        method: parts.method.as_str().to_owned(),
        session,
        ..McpRecord::default()
    };
    let held = if at_endpoint && parts.method == http::Method::POST {
        held
    } else {
        let prefix = held.read(MAX_REQUEST + 1, timeout).await?;
        let complete = prefix.is_complete() && prefix.bytes.len() <= MAX_REQUEST;
        if detect::sniff(&parts.headers, &prefix.bytes, complete) == detect::Sniff::Http {
            if at_endpoint {
                // The session's GET stream or DELETE.
                record.mcp = Some(noted);
            }
            return Ok((none, Held::Read(prefix)));
        }
        if !at_endpoint {
            record.add_detail("json-rpc off the endpoint path");
        }
        Held::Read(prefix)
    };
    read_message(state, scope, parts, held, timeout, noted, record).await
}

/// Reads the one JSON-RPC message of a request.
async fn read_message(
    state: &McpState,
    scope: &Scope,
    parts: &Parts,
    held: Held,
    timeout: std::time::Duration,
    mut noted: McpRecord,
    record: &mut CallRecord,
) -> Result<(Read, Held), Reason> {
    let prefix = held.read(MAX_REQUEST + 1, timeout).await?;
    if !prefix.is_complete() || prefix.bytes.len() > MAX_REQUEST {
        noted.method = "unread".into();
        record.mcp = Some(noted);
        return Err(Reason::RequestTooLarge);
    }
    let message = match parse_message(&prefix.bytes) {
        Ok(message) => message,
        Err(e) => {
            noted.method = match e {
                FrameError::Batch => "batch",
                FrameError::Json(_) | FrameError::Shape(_) => "invalid",
            }
            .into();
            // Never the parser's words: they may quote the body.
            record.detail = Some(
                match e {
                    FrameError::Batch => "json-rpc batch",
                    FrameError::Json(_) => "not strict json (a syntax error or a duplicate key)",
                    FrameError::Shape(why) => why,
                }
                .into(),
            );
            record.mcp = Some(noted);
            return Err(match e {
                FrameError::Batch => Reason::McpBatchRefused,
                _ => Reason::MalformedRequest,
            });
        }
    };
    noted.method = message.method().unwrap_or("response").to_owned();
    noted.id = message.id().map(|id| id.text());
    noted.name = headers::body_name(&message).map(|n| match noted.method.as_str() {
        // A URI's query may carry a token: it is not recorded.
        m if m.starts_with("resources/") => n.split('?').next().unwrap_or(n).to_owned(),
        _ => n.to_owned(),
    });
    let mut arguments_size = 0;
    let mut definition = None;
    if message.method() == Some("tools/call") {
        let empty = Value::Object(serde_json::Map::new());
        let arguments = message
            .params()
            .and_then(|p| p.get("arguments"))
            .unwrap_or(&empty);
        arguments_size = serde_json::to_vec(arguments).map_or(usize::MAX, |v| v.len());
        noted.arguments_hash = Some(state.arguments_hash(arguments));
        if let Some(tool) = headers::body_name(&message) {
            definition = state.pins.get(&scope.name, tool);
            noted.definition = definition.as_ref().map(|(_, last)| last.clone());
        }
    }
    if is_retry(&message) {
        // A 2026-07-28 multi-round-trip retry: decided again like any call.
        record.add_detail("mcp retry with input responses");
    }
    let checked = headers::check(&parts.headers, &message);
    record.mcp = Some(noted);
    if let Err(e) = checked {
        record.detail = Some(e.to_string());
        return Err(Reason::McpHeaderMismatch);
    }
    let read = Read {
        message: Some(message),
        arguments_size,
        definition,
    };
    Ok((read, Held::Read(prefix)))
}

/// Whether a request answers an earlier `input_required` result (its
/// params, or their `_meta`, carry `inputResponses` or `requestState`).
fn is_retry(message: &Message) -> bool {
    let Some(params) = message.params() else {
        return false;
    };
    let meta = params.get("_meta");
    ["inputResponses", "requestState"].iter().any(|key| {
        params.get(key).is_some()
            || meta
                .and_then(|m| m.get(format!("io.modelcontextprotocol/{key}")))
                .is_some()
    })
}

/// The exchange for the way back, noting a `tools/list` request as pending
/// in its session.
pub(super) fn exchange(
    state: &McpState,
    scope: &Scope,
    rules: &Arc<McpRules>,
    read: &Read,
    parts: &Parts,
) -> Exchange {
    let session = header(parts, "mcp-session-id");
    let own = read.message.as_ref().and_then(|m| match m {
        Message::Request { id, method, .. } => Some((id.text(), method.clone())),
        _ => None,
    });
    if let (Some(session), Some((id, method))) = (&session, &own)
        && crate::mcp::response::is_list(method)
    {
        state.expect_list(&scope.name, session, id);
    }
    Exchange {
        rules: Arc::clone(rules),
        scope: scope.name.clone(),
        enforce: scope.mode == Mode::Enforce,
        session,
        own,
        method: parts.method.clone(),
        results: None,
    }
}

/// The response filter of an exchange; sightings of tool definitions are
/// recorded as `pin` records.
pub(super) fn filter(
    exchange: Exchange,
    state: &Arc<McpState>,
    session: Option<String>,
    audit: AuditLog,
    template: DecisionRecord,
    is_error: Arc<crate::mcp::response::IsError>,
) -> ResponseFilter {
    let record_session = session.clone();
    let policy_pins = Arc::clone(&exchange.rules);
    ResponseFilter {
        state: Arc::clone(state),
        rules: exchange.rules,
        scope: exchange.scope,
        enforce: exchange.enforce,
        session,
        own: exchange.own,
        is_error,
        results: exchange.results,
        on_seen: Box::new(move |seen: Seen| {
            let mut record = template.clone();
            record.ts = crate::audit::now_rfc3339();
            record.kind = kind::PIN.to_owned();
            record.status = None;
            record.decision = None;
            record.rule = None;
            let policy_pin = policy_pins.pins.get(&seen.tool);
            let (reason, detail) = match &seen.sighting {
                // A first sighting that differs from the policy's pin is a
                // changed definition, not a new pin.
                Sighting::First if policy_pin.is_some_and(|p| *p != seen.hash) => (
                    Reason::ToolDefinitionChanged,
                    Some(format!(
                        "differs from the policy pin {}; {}",
                        policy_pin.map_or("", String::as_str),
                        if seen.hidden { "hidden" } else { "listed" }
                    )),
                ),
                Sighting::First => (Reason::ToolPinned, None),
                Sighting::Changed { before } => (
                    Reason::ToolDefinitionChanged,
                    Some(format!(
                        "was {before}; {}",
                        if seen.hidden { "hidden" } else { "listed" }
                    )),
                ),
                Sighting::Same => (Reason::ToolPinned, None),
            };
            record.reason = reason.code().to_owned();
            record.detail = detail;
            record.mcp = Some(McpRecord {
                method: "tools/list".into(),
                name: Some(seen.tool),
                session: record_session.clone(),
                definition: Some(seen.hash),
                ..McpRecord::default()
            });
            audit.append(record);
        }),
    }
}

impl super::Pipeline {
    /// The way back from an MCP endpoint: an OAuth challenge becomes a
    /// refusal, a DELETE ends the session, and the body goes through the
    /// filter that rewrites `tools/list` results. MCP streams are long-lived,
    /// so no total deadline applies to them.
    pub(super) fn mcp_response(
        &self,
        exchange: Exchange,
        parts: &mut http::response::Parts,
        body: ProxyBody,
        outcome: &mut crate::record::Outcome,
        request_id: &str,
        via: Via,
    ) -> Result<ProxyBody, Box<Response<ProxyBody>>> {
        let refused = if parts.status == http::StatusCode::UNAUTHORIZED
            && parts.headers.contains_key(http::header::WWW_AUTHENTICATE)
        {
            // The agent must not start an OAuth flow: clawgate holds the
            // credential, so this is clawgate's refusal to explain.
            Some(Reason::UpstreamAuthRequired)
        } else if parts.status.is_redirection()
            && parts.headers.contains_key(http::header::LOCATION)
        {
            // Not followed, and its `Location` (an upstream address, maybe
            // one the agent could not reach) never reaches the agent.
            Some(Reason::UpstreamRedirectRefused)
        } else {
            None
        };
        if let Some(reason) = refused {
            outcome.reason = reason;
            outcome.finished = true;
            let noted = outcome.record().and_then(|r| r.mcp.clone());
            let refused = Refusal::from(reason);
            let refusal = match noted.filter(|m| m.method != "GET" && m.method != "DELETE") {
                Some(m) => refused.mcp_response(request_id, via, &m),
                None => refused.response(request_id, via),
            };
            outcome.status = Some(refusal.status().as_u16());
            return Err(Box::new(refusal));
        }
        let session = exchange.session.clone().or_else(|| {
            parts
                .headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        if exchange.method == http::Method::DELETE
            && parts.status.is_success()
            && let Some(session) = &session
        {
            self.mcp.end_session(&exchange.scope, session);
        }
        let is_error = Arc::new(crate::mcp::response::IsError::default());
        if exchange.own.is_some() {
            outcome.watch_mcp(Arc::clone(&is_error));
        }
        let template = outcome.record().cloned().unwrap_or_default();
        let filter = filter(
            exchange,
            &self.mcp,
            session,
            self.audit.clone(),
            template,
            is_error,
        );
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // A filtered body may change length.
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Ok(crate::mcp::response::McpBody::new(body, content_type.as_deref(), filter).boxed())
    }
}

/// Writes the call's `traceparent` (the header clawgate set) into the
/// message's `params._meta`, where MCP carries trace context to servers
/// that read it there rather than from HTTP headers. Only a complete,
/// already validated request or notification whose `params` (and
/// `_meta`) are objects or absent is rewritten; anything else passes as it
/// came, as does every body when traces are off.
pub(super) fn carry_trace(parts: &mut Parts, held: Held) -> Held {
    let Some(traceparent) = parts
        .headers
        .get(crate::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return held;
    };
    let Held::Read(prefix) = held else {
        return held;
    };
    if !prefix.is_complete() {
        return Held::Read(prefix);
    }
    let Ok(mut message) = serde_json::from_slice::<Value>(&prefix.bytes) else {
        return Held::Read(prefix);
    };
    let Some(object) = message.as_object_mut().filter(|o| o.contains_key("method")) else {
        return Held::Read(prefix);
    };
    let params = object
        .entry("params")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let Some(meta) = params.as_object_mut().map(|p| {
        p.entry("_meta")
            .or_insert_with(|| Value::Object(serde_json::Map::new()))
    }) else {
        return Held::Read(prefix);
    };
    let Some(meta) = meta.as_object_mut() else {
        return Held::Read(prefix);
    };
    meta.insert("traceparent".into(), Value::String(traceparent));
    let Ok(bytes) = serde_json::to_vec(&message) else {
        return Held::Read(prefix);
    };
    parts.headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(bytes.len()),
    );
    Held::Read(crate::body::Prefix {
        bytes: bytes.into(),
        rest: None,
        trailers: prefix.trailers,
    })
}
