//! Traces: one span per call, exported over OTLP/HTTP when `serve
//! --otlp-endpoint` names a collector, and the W3C trace context carried
//! from the agent to the upstream.
//!
//! Invariants:
//! - Off by default: without an endpoint no span is made, no id is written
//!   into a record and the agent's `traceparent` passes as it came.
//! - A call never waits for a span: spans go into a bounded queue; when it
//!   is full the span is dropped and counted
//!   (`clawgate_trace_spans_dropped_total`), never the call slowed.
//! - A span's attributes are the decision record's non-secret fields (agent,
//!   scope, rule, reason, MCP method and tool): never a header value, a
//!   query string, a credential or MCP arguments.
//! - The trace id the span carries is the one written in the call's record,
//!   so a trace leads to its record (`audit query --trace-id`).

mod context;
mod export;
mod proto;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

pub use context::{TRACEPARENT, TraceContext};
pub use export::{ExportConfig, TraceError};

use crate::audit::DecisionRecord;

/// How many spans one export request carries at most.
const BATCH: usize = 512;

/// Spans waiting to be exported, at most; more are dropped and counted.
const QUEUE: usize = 4096;

/// What the exporter counts, read by `/metrics`.
#[derive(Debug, Default)]
pub struct SpanCounts {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans lost because an export request failed.
    pub failed: AtomicU64,
}

/// The sending side of the exporter: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Tracer {
    queue: tokio::sync::mpsc::Sender<SpanData>,
    counts: Arc<SpanCounts>,
}

impl Tracer {
    /// What the exporter counted so far.
    pub fn counts(&self) -> &Arc<SpanCounts> {
        &self.counts
    }

    /// Queues `span` for export, or drops and counts it when the queue is
    /// full (or the exporter has stopped).
    pub fn send(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The span of a call that starts now, continuing the agent's trace
    /// when its `traceparent` is valid.
    pub fn start(&self, incoming: Option<&http::HeaderValue>) -> CallSpan {
        CallSpan {
            tracer: self.clone(),
            context: TraceContext::continue_or_start(incoming),
            start: SystemTime::now(),
            attributes: Vec::new(),
        }
    }
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string.
    Text(String),
    /// An integer.
    Int(i64),
}

/// One finished span, as the exporter encodes it.
#[derive(Debug, Clone)]
pub struct SpanData {
    /// Its trace and span ids, and its parent from the agent.
    pub context: TraceContext,
    /// The span's name.
    pub name: String,
    /// When the call started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Key and value pairs, never secret.
    pub attributes: Vec<(&'static str, Value)>,
    /// The reason code when the call was refused or failed.
    pub error: Option<String>,
}

/// The span of one call while it runs: its context is fixed at the start,
/// its attributes are taken from the decision record when the decision is
/// made, and the outcome (status, reason) is added at the end.
#[derive(Debug)]
pub struct CallSpan {
    tracer: Tracer,
    context: TraceContext,
    start: SystemTime,
    attributes: Vec<(&'static str, Value)>,
}

impl CallSpan {
    /// The call's trace context.
    pub fn context(&self) -> &TraceContext {
        &self.context
    }

    /// Takes the decision's attributes from its record.
    pub fn decided(&mut self, record: &DecisionRecord) {
        let text = |key: &'static str, value: Option<&str>| {
            value.map(|v| (key, Value::Text(v.to_owned())))
        };
        let mcp = record.mcp.as_ref();
        self.attributes = [
            text("clawgate.request_id", Some(&record.request_id)),
            text("clawgate.agent", record.agent.as_deref()),
            text("clawgate.run_id", record.run_id.as_deref()),
            text("clawgate.mode", record.mode.as_deref()),
            text("clawgate.scope", record.scope.as_deref()),
            text("clawgate.rule", record.rule.as_deref()),
            text("clawgate.decision", record.decision.as_deref()),
            text("clawgate.reason", Some(&record.reason)),
            text("clawgate.would_deny", record.would_deny.as_deref()),
            text("clawgate.exception", record.exception.as_deref()),
            text(
                "clawgate.credential_kind",
                record.credential_kind.as_deref(),
            ),
            text("clawgate.mcp.method", mcp.map(|m| m.method.as_str())),
            text("clawgate.mcp.tool", mcp.and_then(|m| m.name.as_deref())),
            text("http.request.method", record.method.as_deref()),
            text("server.address", record.host.as_deref()),
            text("url.path", record.path.as_deref()),
        ]
        .into_iter()
        .flatten()
        .collect();
    }

    /// Ends the span with the call's last record (the decision of a refused
    /// call, the outcome of an allowed one) and queues it.
    pub fn end(mut self, last: &DecisionRecord) {
        if let Some(status) = last.status {
            self.attributes
                .push(("http.response.status_code", Value::Int(status)));
        }
        let failed = last.reason != crate::error::Reason::Allowed.code();
        if last.kind == crate::audit::kind::OUTCOME {
            self.attributes
                .push(("clawgate.outcome", Value::Text(last.reason.clone())));
        } else if self.attributes.is_empty() {
            // Ended before it was decided (cancelled, shutdown).
            self.decided(last);
        }
        let name = match last.mcp.as_ref() {
            Some(m) => format!("mcp {}", m.method),
            None => format!("call {}", last.method.as_deref().unwrap_or("")),
        };
        let span = SpanData {
            context: self.context,
            name: name.trim_end().to_owned(),
            start: self.start,
            end: SystemTime::now(),
            attributes: std::mem::take(&mut self.attributes),
            error: failed.then(|| last.reason.clone()),
        };
        self.tracer.send(span);
    }
}

/// Starts the exporter task on the current runtime: it sends batches of up
/// to [`BATCH`] spans, at least every `config.every`, and ends when every
/// [`Tracer`] is dropped (after sending what is queued).
pub fn start(config: ExportConfig) -> Result<(Tracer, tokio::task::JoinHandle<()>), TraceError> {
    let (queue, receiver) = tokio::sync::mpsc::channel(QUEUE);
    let counts = Arc::new(SpanCounts::default());
    let exporter = export::Exporter::new(config, Arc::clone(&counts))?;
    let task = tokio::spawn(exporter.run(receiver));
    Ok((Tracer { queue, counts }, task))
}
