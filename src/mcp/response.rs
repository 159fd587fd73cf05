//! The response side: `tools/list` results filtered to what the agent may
//! call, tool definitions hashed and held to their pins, and whether a
//! `tools/call` result was an error. Works on JSON bodies and, one event at
//! a time, on SSE streams (the POST's stream and the GET stream alike).
//!
//! Invariants:
//! - Every result carrying a list (`tools`, `prompts`, `resources`,
//!   `resourceTemplates`) is rewritten, whatever request it answers: ids
//!   are the client's, so a list cannot be recognised by id alone.
//! - A rewritten result is marked per-agent and uncacheable (`ttlMs` 0,
//!   `cacheScope` private), so no cache hands one agent's list to another.
//! - An SSE event whose data is not a strict JSON-RPC message is dropped:
//!   what clawgate cannot read, it does not hand on.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;

use super::jsonrpc::{Message, message_of, parse_strict};
use super::pins::{Sighting, definition_hash};
use super::rules::{Kind, McpRules};
use super::sse::{Piece, SseParser};
use super::state::McpState;
use crate::body::{BoxError, ProxyBody};

/// The most bytes of one JSON body or SSE event clawgate holds to filter.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// What the way back saw of the request's own answer: whether it passed,
/// and `isError` of a `tools/call` result (unknown, false or true).
#[derive(Debug, Default)]
pub struct IsError(
    AtomicU8,
    std::sync::atomic::AtomicBool,
    std::sync::atomic::AtomicBool,
);

impl IsError {
    /// Whether the answer to the POST's own request was handed on: the
    /// exchange is complete even if the agent then closes the stream.
    pub fn answered(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }

    /// What was seen: `None` when no result was.
    pub fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    /// Whether the answer was a 2026-07-28 `input_required` result: the
    /// client is to retry with `inputResponses`.
    pub fn input_required(&self) -> bool {
        self.2.load(Ordering::Relaxed)
    }

    fn set(&self, is_error: bool) {
        self.0
            .store(if is_error { 2 } else { 1 }, Ordering::Relaxed);
    }
}

/// A tool definition seen for the first time, or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The tool.
    pub tool: String,
    /// Its hash now.
    pub hash: String,
    /// What the sighting meant.
    pub sighting: Sighting,
    /// Whether the tool was hidden from the agent.
    pub hidden: bool,
}

/// What the filter needs to know about the exchange.
pub struct ResponseFilter {
    /// Shared MCP state.
    pub state: Arc<McpState>,
    /// The scope's MCP rules.
    pub rules: Arc<McpRules>,
    /// The scope's name.
    pub scope: String,
    /// Whether list results are filtered (not in report mode).
    pub enforce: bool,
    /// The MCP session, when the server assigned one.
    pub session: Option<String>,
    /// The POST's own request: its id (JSON text) and method.
    pub own: Option<(String, String)>,
    /// Set from the `tools/call` result.
    pub is_error: Arc<IsError>,
    /// Told of every first or changed definition.
    pub on_seen: Box<dyn Fn(Seen) + Send + Sync>,
    /// The inspection of results (`[scope.mcp.results]`).
    pub results: Option<super::results::Inspector>,
}

impl std::fmt::Debug for ResponseFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFilter")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// What to do with one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Hand it on as it came.
    Pass,
    /// Hand on this instead.
    Replace(Vec<u8>),
    /// Hand on nothing.
    Drop,
}

impl ResponseFilter {
    /// Whether the POST's own request was `method`.
    fn own_is(&self, method: &str) -> bool {
        self.own.as_ref().is_some_and(|(_, m)| m == method)
    }

    /// Decides what happens to one JSON-RPC message from the server.
    pub fn message(&self, bytes: &[u8]) -> Action {
        let Ok(message) = parse_strict(bytes).and_then(message_of) else {
            return Action::Drop;
        };
        let Message::Response {
            id: Some(id),
            result,
            ..
        } = message
        else {
            return Action::Pass;
        };
        let id_value = id;
        let id = id_value.text();
        let own = self.own.as_ref().is_some_and(|(own, _)| *own == id);
        if own {
            self.is_error.1.store(true, Ordering::Relaxed);
        }
        let Some(result) = result else {
            return Action::Pass;
        };
        let pending = self
            .session
            .as_deref()
            .is_some_and(|s| self.state.take_list(&self.scope, s, &id));
        if own && is_input_required(&result) {
            self.is_error.2.store(true, Ordering::Relaxed);
        }
        // A list is filtered by what it is, whatever request it answers:
        // ids are the client's to choose, and two concurrent requests with
        // one id may have their results delivered on each other's streams.
        let own_list = own && self.own.as_ref().is_some_and(|(_, m)| is_list(m));
        if own_list || pending || looks_like_list(&result) {
            return match self.rewrite_list(&id_value, result) {
                Some(out) => Action::Replace(out),
                None => Action::Drop,
            };
        }
        if own && self.own_is("tools/call") {
            let is_error = result.get("isError").and_then(Value::as_bool) == Some(true);
            self.is_error.set(is_error);
        }
        match &self.results {
            Some(inspector) if super::results::is_inspected(&result) => {
                inspected(inspector, &id_value, result)
            }
            _ => Action::Pass,
        }
    }

    /// A `tools/list` response with the tools the agent may not call left
    /// out, every definition held to its pin, and caching turned off.
    fn rewrite_list(&self, id: &super::jsonrpc::Id, mut result: Value) -> Option<Vec<u8>> {
        let fields = result.as_object_mut()?;
        if let Some(Value::Array(tools)) = fields.get_mut("tools") {
            tools.retain(|tool| self.keep(tool));
        }
        for (key, field, kind) in LISTED {
            if let Some(Value::Array(items)) = fields.get_mut(key) {
                items.retain(|item| {
                    !self.enforce
                        || item
                            .get(field)
                            .and_then(Value::as_str)
                            .is_some_and(|name| self.rules.listed(kind, name))
                });
            }
        }
        fields.insert("ttlMs".into(), Value::from(0));
        fields.insert("cacheScope".into(), Value::from("private"));
        serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": id.0, "result": result}))
            .ok()
    }

    fn keep(&self, tool: &Value) -> bool {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return false;
        };
        let hash = definition_hash(tool);
        let sighting = self.state.pins.observe(&self.scope, name, &hash);
        let first = self
            .state
            .pins
            .get(&self.scope, name)
            .map(|(first, _)| first);
        let visible = !self.enforce || self.rules.visible(name, &hash, first.as_deref());
        if sighting != Sighting::Same {
            (self.on_seen)(Seen {
                tool: name.to_owned(),
                hash,
                sighting,
                hidden: !visible,
            });
        }
        visible
    }
}

/// The lists besides `tools` a result may carry: the key, the member that
/// names an entry, and the rules that govern it.
const LISTED: [(&str, &str, Kind); 3] = [
    ("prompts", "name", Kind::Prompt),
    ("resources", "uri", Kind::Resource),
    ("resourceTemplates", "uriTemplate", Kind::Resource),
];

/// Whether `method` asks for a list the filter rewrites.
pub fn is_list(method: &str) -> bool {
    matches!(
        method,
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list"
    )
}

/// Whether a result carries a list (`tools`, `prompts`, `resources`,
/// `resourceTemplates`), whatever request it answers.
fn looks_like_list(result: &Value) -> bool {
    ["tools", "prompts", "resources", "resourceTemplates"]
        .iter()
        .any(|key| result.get(key).is_some_and(Value::is_array))
}

/// Whether a result is a 2026-07-28 multi-round-trip request for input
/// (`resultType` `input_required`, earlier drafts `incomplete`).
fn is_input_required(result: &Value) -> bool {
    matches!(
        result.get("resultType").and_then(Value::as_str),
        Some("input_required" | "incomplete")
    ) || result.get("inputRequests").is_some()
}

/// What the inspection of a result makes of its message.
fn inspected(
    inspector: &super::results::Inspector,
    id: &super::jsonrpc::Id,
    result: Value,
) -> Action {
    use super::results::{Inspector, Verdict};
    match inspector.result(result) {
        Verdict::Pass => Action::Pass,
        Verdict::Changed(result) => {
            serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": id.0, "result": result}))
                .map_or(Action::Drop, Action::Replace)
        }
        Verdict::Refused(kinds) => Action::Replace(Inspector::refusal(&id.0, &kinds)),
    }
}

enum Reading {
    Pass,
    Json(Vec<u8>),
    Sse(SseParser),
}

/// A response body run through a [`ResponseFilter`].
pub struct McpBody {
    inner: ProxyBody,
    filter: ResponseFilter,
    reading: Reading,
    out: VecDeque<Bytes>,
    done: bool,
}

impl std::fmt::Debug for McpBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpBody").finish_non_exhaustive()
    }
}

/// A message or event too large to filter.
#[derive(Debug, thiserror::Error)]
#[error("an MCP message is larger than clawgate filters ({MAX_MESSAGE} bytes)")]
pub struct MessageTooLarge;

impl McpBody {
    /// Wraps a response body of `content_type`.
    pub fn new(inner: ProxyBody, content_type: Option<&str>, filter: ResponseFilter) -> McpBody {
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        let reading = match media.as_deref() {
            Some("text/event-stream") => Reading::Sse(SseParser::new(MAX_MESSAGE)),
            // Whatever else answers a request is read as one JSON message,
            // so that an odd content type cannot carry an unfiltered list.
            _ if filter.own.is_some() => Reading::Json(Vec::new()),
            _ => Reading::Pass,
        };
        McpBody {
            inner,
            filter,
            reading,
            out: VecDeque::new(),
            done: false,
        }
    }

    fn take(&mut self, chunk: Bytes) -> Result<(), BoxError> {
        match &mut self.reading {
            Reading::Pass => self.out.push_back(chunk),
            Reading::Json(buffer) => {
                if buffer.len() + chunk.len() > MAX_MESSAGE {
                    return Err(Box::new(MessageTooLarge));
                }
                buffer.extend_from_slice(&chunk);
            }
            Reading::Sse(parser) => {
                let mut pieces = Vec::new();
                parser
                    .feed(&chunk, &mut pieces)
                    .map_err(|_| Box::new(MessageTooLarge) as BoxError)?;
                for piece in pieces {
                    match piece {
                        Piece::Raw(bytes) => self.out.push_back(bytes),
                        Piece::Event(event) if event.data.iter().all(u8::is_ascii_whitespace) => {
                            self.out.push_back(event.raw);
                        }
                        Piece::Event(event) => match self.filter.message(&event.data) {
                            Action::Pass => self.out.push_back(event.raw),
                            Action::Replace(data) => self.out.push_back(event.with_data(&data)),
                            Action::Drop => {
                                tracing::warn!("unreadable MCP event dropped");
                            }
                        },
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let Reading::Json(buffer) = &mut self.reading {
            let buffer = std::mem::take(buffer);
            if buffer.is_empty() {
                return;
            }
            match self.filter.message(&buffer) {
                Action::Pass => self.out.push_back(Bytes::from(buffer)),
                Action::Replace(data) => self.out.push_back(Bytes::from(data)),
                Action::Drop => tracing::warn!("unreadable MCP response dropped"),
            }
        }
    }
}

impl Body for McpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(bytes) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    this.finish();
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = this.take(data) {
                            this.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
