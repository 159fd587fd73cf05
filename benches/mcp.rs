//! The tool-call firewall's costs, each against its baseline in the same run:
//! - deciding a `tools/call` with five argument conditions, against parsing
//!   the same body (strictly) alone: what the decision adds to the parse;
//! - filtering a large `tools/list` result streamed as SSE (500 tools), in
//!   MB/s, against passing the same stream through the SSE parser untouched,
//!   and the same with result inspection on;
//! - inspecting a 64 KiB `tools/call` result (`[scope.mcp.results]` with its
//!   defaults and one injected value), clean and with planted findings,
//!   against the same filter with inspection off: per KiB of result.
//!
//! Run: `cargo bench --bench mcp`. `cargo test --benches` runs each once.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use clawgate::identity::PeerName;
use clawgate::mcp::jsonrpc::parse_message;
use clawgate::mcp::response::{Action, IsError, ResponseFilter};
use clawgate::mcp::results::{Inspector, ResultRules};
use clawgate::mcp::sse::{Piece, SseParser};
use clawgate::mcp::{McpCall, McpState, headers};
use clawgate::policy::{Call, LoadOptions, Policy, Target, decide, load};
use clawgate::response::reflect::Needles;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const POLICY: &str = r#"
[[agent]]
name = "a"
identities = ["spiffe://clawgate.local/agent/a"]
scopes = ["github"]

[[scope]]
name = "github"
upstream = "https://api.githubcopilot.com"
route = "github"

[scope.mcp]
max_argument_bytes = 65536

[[scope.mcp.deny]]
tools = ["delete_*", "*_secret*"]

[[scope.mcp.allow]]
id = "issues"
tools = ["create_issue", "update_issue"]
[scope.mcp.allow.args]
"/owner" = { equals = "acme" }
"/repo" = { one_of = ["widgets", "gadgets", "gizmos"] }
"/title" = { type = "string", max_length = 200 }
"/body" = { not_regex = '(?i)ghp_[a-z0-9]{36}' }
"/labels" = { max_length = 10 }

[[scope.mcp.allow]]
tools = ["get_*", "list_*", "search_*"]
"#;

const BODY: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"create_issue","arguments":{"owner":"acme","repo":"widgets","title":"Crash when saving a file with a long name","body":"Steps to reproduce: open the editor, type a name of 300 characters, save. Expected: saved. Actual: crash.","labels":["bug","editor"]},"_meta":{"progressToken":7}}}"#;

fn policy() -> Policy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), POLICY).unwrap();
    load(dir.path(), &LoadOptions::new(&|_| None)).unwrap().0
}

fn decide_tool_call(c: &mut Criterion) {
    let policy = policy();
    let peer = [PeerName::Uri("spiffe://clawgate.local/agent/a".into())];
    let mut group = c.benchmark_group("mcp_tools_call");
    group.bench_function("parse_only", |b| {
        b.iter(|| black_box(parse_message(black_box(BODY.as_bytes())).unwrap()));
    });
    group.bench_function("parse_and_decide_5_conditions", |b| {
        b.iter(|| {
            let message = parse_message(black_box(BODY.as_bytes())).unwrap();
            let arguments = message.params().and_then(|p| p.get("arguments"));
            let size = arguments.map_or(0, |a| serde_json::to_vec(a).unwrap().len());
            let mcp = McpCall {
                method: message.method().unwrap(),
                name: headers::body_name(&message),
                arguments,
                arguments_size: size,
                definition: None,
                first_pin: None,
            };
            let call = Call {
                peer: &peer,
                target: Target::Route("github"),
                method: "POST",
                path: "/mcp",
                aws: None,
                mcp: Some(&mcp),
                now: SystemTime::UNIX_EPOCH,
            };
            let d = decide(&call, &policy);
            assert_eq!(d.rule(), Some("issues"));
            black_box(d)
        });
    });
    group.finish();
}

fn list_stream() -> Vec<u8> {
    let tools: Vec<_> = (0..500)
        .map(|i| {
            let name = if i % 3 == 0 { format!("delete_thing_{i}") } else { format!("get_thing_{i}") };
            json!({"name": name, "description": format!("Gets thing {i} with a description long enough to look like a real one."), "inputSchema": {"type": "object", "properties": {"id": {"type": "string"}, "verbose": {"type": "boolean"}}, "required": ["id"]}})
        })
        .collect();
    let message = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}});
    format!(": ka\n\nid: 1\nevent: message\ndata: {message}\n\n").into_bytes()
}

/// A response filter of the bench policy's scope for a request `own`, with
/// result inspection (its defaults, one injected value) when `inspect`.
fn response_filter(policy: &Policy, own: (&str, &str), inspect: bool) -> ResponseFilter {
    let rules = Arc::clone(policy.scope(0).mcp.as_ref().unwrap());
    let injected = [Arc::new(secrecy::SecretString::from(
        "ghp_injectedbenchvalue0123456789abcdef".to_owned(),
    ))];
    let results = inspect.then(|| {
        Inspector::new(
            &Arc::new(ResultRules::default()),
            true,
            Needles::new(&injected).map(Arc::new),
        )
    });
    ResponseFilter {
        state: Arc::new(McpState::ephemeral()),
        rules,
        scope: "github".into(),
        enforce: true,
        session: None,
        own: Some((own.0.into(), own.1.into())),
        is_error: Arc::new(IsError::default()),
        on_seen: Box::new(|_| {}),
        results,
    }
}

fn filter_list(c: &mut Criterion) {
    let policy = policy();
    let stream = list_stream();
    let filter = response_filter(&policy, ("1", "tools/list"), false);
    let inspecting = response_filter(&policy, ("1", "tools/list"), true);
    let chunks: Vec<Bytes> = stream
        .chunks(16 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let mut group = c.benchmark_group("mcp_sse_tools_list");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("parse_only", |b| {
        b.iter(|| {
            let mut parser = SseParser::new(1 << 24);
            let mut out = Vec::new();
            for chunk in &chunks {
                parser.feed(chunk, &mut out).unwrap();
            }
            black_box(out)
        });
    });
    group.bench_function("parse_and_filter_500_tools", |b| {
        b.iter(|| {
            let mut parser = SseParser::new(1 << 24);
            let mut out = Vec::new();
            for chunk in &chunks {
                parser.feed(chunk, &mut out).unwrap();
            }
            let mut kept = 0;
            for piece in out {
                if let Piece::Event(event) = piece
                    && let Action::Replace(data) = filter.message(&event.data)
                {
                    kept += event.with_data(&data).len();
                }
            }
            assert!(kept > 0);
            black_box(kept)
        });
    });
    group.bench_function("parse_and_filter_500_tools_inspecting", |b| {
        b.iter(|| {
            let mut parser = SseParser::new(1 << 24);
            let mut out = Vec::new();
            for chunk in &chunks {
                parser.feed(chunk, &mut out).unwrap();
            }
            let mut kept = 0;
            for piece in out {
                if let Piece::Event(event) = piece
                    && let Action::Replace(data) = inspecting.message(&event.data)
                {
                    kept += event.with_data(&data).len();
                }
            }
            assert!(kept > 0);
            black_box(kept)
        });
    });
    group.finish();
}

/// A `tools/call` result of about 64 KiB: half text content, half
/// structured content; with `planted`, a key, tag characters and an ANSI
/// sequence in every 4 KiB.
fn call_result(planted: bool) -> Vec<u8> {
    let line = "The quarterly report lists 42 items; café revenue rose 3% — see /workspace/reports/q3.csv.\n";
    let mut text = String::new();
    let mut fields = serde_json::Map::new();
    let mut i = 0;
    while text.len() < 32 * 1024 {
        text.push_str(line);
        if planted && text.len() % 4096 < line.len() {
            text.push_str("AKIAIOSFODNN7EXAMPLE \u{E0049}\u{E0047} \x1b[31mred\x1b[0m\n");
        }
        fields.insert(format!("row_{i}"), json!(line));
        i += 1;
    }
    let message = json!({"jsonrpc": "2.0", "id": 1, "result": {
        "content": [{"type": "text", "text": text}],
        "structuredContent": fields,
        "isError": false,
    }});
    serde_json::to_vec(&message).unwrap()
}

fn inspect_results(c: &mut Criterion) {
    let policy = policy();
    let plain = response_filter(&policy, ("1", "tools/call"), false);
    let inspecting = response_filter(&policy, ("1", "tools/call"), true);
    let mut group = c.benchmark_group("mcp_results");
    for (name, planted) in [("clean", false), ("planted", true)] {
        let body = call_result(planted);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name}_filter_only"), |b| {
            b.iter(|| black_box(plain.message(black_box(&body))));
        });
        group.bench_function(format!("{name}_filter_and_inspect"), |b| {
            b.iter(|| {
                let action = inspecting.message(black_box(&body));
                assert_eq!(matches!(action, Action::Replace(_)), planted);
                black_box(action)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decide_tool_call, filter_list, inspect_results);
criterion_main!(benches);
