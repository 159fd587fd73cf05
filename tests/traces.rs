//! Traces end to end: the real binary exports one span per call over
//! OTLP/HTTP to a receiver built on the OpenTelemetry project's protobuf
//! bindings (`opentelemetry-proto`, Python), continues the agent's W3C
//! trace, hands the upstream clawgate's span as the parent, and writes the
//! trace id into the call's records.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{CANARY, Harness, Options, clawgate};
use serde_json::Value;

/// The receiver's Python, which `.ci/run` makes at `target/otelenv`.
fn python() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/otelenv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run `bash .ci/run` once (it installs opentelemetry-proto there)",
        path.display()
    );
    path
}

struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let out = dir.join("spans.jsonl");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/receiver.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("receiver said {line:?}"))
            .parse()
            .unwrap();
        Receiver { child, port, out }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The one span of `trace_id`, waiting for the exporter's batch.
    fn span(&self, trace_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            assert!(found.len() <= 1, "one span per call: {found:#?}");
            if let Some(span) = found.into_iter().next() {
                return span;
            }
            assert!(
                Instant::now() < deadline,
                "no span of trace {trace_id}; have {:#?}",
                self.spans()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
"#;

/// An MCP scope whose server is the receiver's `/mcp`.
const MCP_POLICY: &str = r#"
[[agent]]
name = "mcp-dev"
identities = ["spiffe://clawgate.local/agent/mcp-dev"]
scopes = ["mcp-traced"]

[[scope]]
name = "mcp-traced"
upstream = "http://127.0.0.1:{port}"
route = "mcp-traced"
allow_private = ["127.0.0.1"]

[scope.mcp]

[[scope.mcp.allow]]
id = "lookups"
tools = ["lookup"]
"#;

fn traced(receiver: &Receiver) -> Harness {
    Harness::with(Options {
        extra_policy: vec![
            ("roles.toml", ROLES.to_owned()),
            (
                "mcp.toml",
                MCP_POLICY.replace("{port}", &receiver.port.to_string()),
            ),
        ],
        agents: vec!["ops", "mcp-dev"],
        serve_args: vec![
            "--otlp-endpoint".into(),
            format!("http://127.0.0.1:{}", receiver.port),
        ],
        ..Options::default()
    })
}

const AGENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AGENT_SPAN: &str = "00f067aa0ba902b7";

#[test]
fn a_call_continues_the_agents_trace_and_its_span_leads_to_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let h = traced(&receiver);
    let reply = h.curl(
        Some("research"),
        &[
            "-H",
            &format!("traceparent: 00-{AGENT_TRACE}-{AGENT_SPAN}-01"),
            &format!("{}/echo/v1/items?token=query-secret", h.base()),
        ],
    );
    assert_eq!(reply.status, 200, "{reply:?}");

    // The upstream sees the agent's trace with clawgate's span as parent.
    let seen = h.seen();
    let parents: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(parents.len(), 1, "{parents:?}");
    let fields: Vec<&str> = parents[0].split('-').collect();
    assert_eq!((fields[0], fields[1], fields[3]), ("00", AGENT_TRACE, "01"));
    let clawgate_span = fields[2];
    assert_ne!(clawgate_span, AGENT_SPAN);

    // Both records of the call carry the trace id, and the chain holds.
    let request_id = reply.request_id();
    let decision = h.decision(&request_id);
    let outcome = h.outcome(&request_id);
    assert_eq!(decision.trace_id.as_deref(), Some(AGENT_TRACE));
    assert_eq!(outcome.trace_id.as_deref(), Some(AGENT_TRACE));
    let audit = h.audit.display().to_string();
    let verify = clawgate(&["audit", "verify", "--audit", &audit]);
    assert!(verify.status.success(), "{verify:?}");

    // One span: the agent's trace, its span as parent, the decision's
    // attributes, the upstream's status.
    let span = receiver.span(AGENT_TRACE);
    assert_eq!(span["span_id"], clawgate_span);
    assert_eq!(span["parent_span_id"], AGENT_SPAN);
    assert_eq!(span["kind"], 2, "a server span");
    assert_eq!(span["status_code"], 1, "ok");
    assert_eq!(span["resource"]["service.name"], "clawgate");
    let attrs = &span["attributes"];
    assert_eq!(attrs["clawgate.request_id"], request_id.as_str());
    assert_eq!(attrs["clawgate.agent"], "research");
    assert_eq!(attrs["clawgate.scope"].as_str(), decision.scope.as_deref());
    assert_eq!(attrs["clawgate.rule"].as_str(), decision.rule.as_deref());
    assert!(decision.rule.is_some());
    assert_eq!(attrs["clawgate.decision"], "allow");
    assert_eq!(attrs["clawgate.reason"], "allowed");
    assert_eq!(attrs["clawgate.outcome"], "allowed");
    assert_eq!(attrs["http.response.status_code"], 200);
    assert_eq!(attrs["url.path"], "/v1/items");
    assert!(span["end"].as_u64() >= span["start"].as_u64());

    // The trace leads to the records.
    let found = clawgate(&[
        "audit",
        "query",
        "--audit",
        &audit,
        "--trace-id",
        AGENT_TRACE,
        "--format",
        "json",
    ]);
    assert!(found.status.success(), "{found:?}");
    let found: Vec<Value> = String::from_utf8_lossy(&found.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(found.len(), 2, "decision and outcome: {found:#?}");
    assert!(found.iter().all(|r| r["request_id"] == request_id.as_str()));

    // A refused call without a traceparent starts a trace of its own.
    let refused = h.curl(
        Some("research"),
        &[
            "-X",
            "DELETE",
            "-H",
            "traceparent: 00-not-a-valid-header",
            &format!("{}/echo/v1/items/admin/users", h.base()),
        ],
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    let denied = h.decision(&refused.request_id());
    let trace = denied.trace_id.clone().expect("a trace id in the record");
    assert_eq!(trace.len(), 32);
    assert_ne!(trace, AGENT_TRACE);
    let span = receiver.span(&trace);
    assert_eq!(
        span["parent_span_id"], "",
        "an invalid traceparent is ignored"
    );
    assert_eq!(span["status_code"], 2, "error");
    assert_eq!(span["status_message"], "denied-by-rule");
    assert_eq!(span["attributes"]["clawgate.reason"], "denied-by-rule");
    assert_eq!(span["attributes"]["clawgate.rule"], "no-admin");
    assert_eq!(span["attributes"]["clawgate.decision"], "deny");

    // No secret in any span: not the injected credential, not the query.
    let all = std::fs::read_to_string(&receiver.out).unwrap();
    assert!(!all.contains(CANARY));
    assert!(!all.contains("query-secret"));

    let metrics = h.admin(Some("ops"), &["/metrics"]).body_text();
    assert!(
        metrics.contains("clawgate_trace_spans_exported_total 2")
            || metrics.contains("clawgate_trace_spans_exported_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("clawgate_trace_spans_dropped_total 0"));
}

/// One MCP message as curl sends it to the gateway route.
fn mcp_post(h: &Harness, body: &Value, traceparent: Option<&str>) -> common::Reply {
    let url = format!("{}/mcp-traced/mcp", h.base());
    let mut args: Vec<String> = [
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(tp) = traceparent {
        args.extend(["-H".into(), format!("traceparent: {tp}")]);
    }
    args.extend(["--data-binary".into(), body.to_string(), url]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.curl(Some("mcp-dev"), &refs)
}

#[test]
fn an_mcp_tool_call_carries_the_trace_in_meta_and_its_span_names_the_tool() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let h = traced(&receiver);
    let call = serde_json::json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "lookup", "arguments": {"q": "arg-secret-1234"},
                   "_meta": {"progressToken": "p1"}}
    });
    let reply = mcp_post(
        &h,
        &call,
        Some(&format!("00-{AGENT_TRACE}-{AGENT_SPAN}-01")),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["result"]["isError"], false, "{reply:?}");
    let request_id = reply.request_id();
    let decision = h.decision(&request_id);
    assert_eq!(decision.reason, "allowed");
    assert_eq!(decision.trace_id.as_deref(), Some(AGENT_TRACE));

    // The server saw the same traceparent in the header and in `_meta`,
    // beside the agent's own `_meta` and unchanged arguments.
    let seen: Vec<Value> = std::fs::read_to_string(receiver.out.with_extension("jsonl.mcp"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let header = seen[0]["traceparent"].as_str().unwrap();
    assert!(
        header.starts_with(&format!("00-{AGENT_TRACE}-")),
        "{header}"
    );
    let params = &seen[0]["message"]["params"];
    assert_eq!(params["_meta"]["traceparent"], header);
    assert_eq!(params["_meta"]["progressToken"], "p1");
    assert_eq!(params["arguments"]["q"], "arg-secret-1234");

    let span = receiver.span(AGENT_TRACE);
    assert_eq!(span["name"], "mcp tools/call");
    assert_eq!(span["span_id"].as_str(), header.split('-').nth(2));
    let attrs = &span["attributes"];
    assert_eq!(attrs["clawgate.mcp.method"], "tools/call");
    assert_eq!(attrs["clawgate.mcp.tool"], "lookup");
    assert_eq!(attrs["clawgate.rule"], "lookups");
    assert_eq!(attrs["clawgate.scope"], "mcp-traced");
    assert_eq!(attrs["clawgate.agent"], "mcp-dev");

    // A refused tool: a span with the reason, nothing reaches the server,
    // and the arguments are in no span.
    let denied = serde_json::json!({
        "jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "delete_all", "arguments": {"q": "arg-secret-5678"}}
    });
    let reply = mcp_post(&h, &denied, None);
    assert_eq!(reply.status, 200, "a JSON-RPC error: {reply:?}");
    let record = h.decision(&reply.request_id());
    assert_eq!(record.decision.as_deref(), Some("deny"));
    let span = receiver.span(record.trace_id.as_deref().unwrap());
    assert_eq!(span["attributes"]["clawgate.mcp.tool"], "delete_all");
    assert_eq!(
        span["attributes"]["clawgate.reason"],
        record.reason.as_str()
    );
    assert_eq!(
        std::fs::read_to_string(receiver.out.with_extension("jsonl.mcp"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    let all = std::fs::read_to_string(&receiver.out).unwrap();
    assert!(!all.contains("arg-secret"), "{all}");
}

#[test]
fn without_an_endpoint_nothing_is_traced_and_the_agents_header_passes() {
    let h = Harness::with(Options {
        extra_policy: vec![("roles.toml", ROLES.to_owned())],
        agents: vec!["ops"],
        ..Options::default()
    });
    let incoming = format!("00-{AGENT_TRACE}-{AGENT_SPAN}-01");
    let reply = h.curl(
        Some("research"),
        &[
            "-H",
            &format!("traceparent: {incoming}"),
            &format!("{}/echo/v1/items", h.base()),
        ],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = h.seen();
    assert!(
        seen[0]
            .headers
            .iter()
            .any(|(k, v)| k == "traceparent" && *v == incoming)
    );
    assert_eq!(h.decision(&reply.request_id()).trace_id, None);
    assert_eq!(h.outcome(&reply.request_id()).trace_id, None);
    let metrics = h.admin(Some("ops"), &["/metrics"]).body_text();
    assert!(!metrics.contains("clawgate_trace_spans"));
}
