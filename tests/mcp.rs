//! The tool-call firewall end to end: the real binary between the official
//! MCP SDKs (Python `mcp` as server and client, TypeScript
//! `@modelcontextprotocol/sdk` as a second client), both protocol forms,
//! JSON and SSE responses; every case checks the decision record as well as
//! what the client saw.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawgate::audit::DecisionRecord;
use common::{CANARY, Harness, Options};
use serde_json::{Value, json};

const POLICY: &str = r#"
[[agent]]
name = "mcp-dev"
identities = ["spiffe://clawgate.local/agent/mcp-dev"]
scopes = ["mcp-tools", "mcp-expired"]

[[agent]]
name = "mcp-viewer"
identities = ["spiffe://clawgate.local/agent/mcp-viewer"]
scopes = ["mcp-viewer"]

[[scope]]
name = "mcp-tools"
upstream = "http://127.0.0.1:{mcp_port}"
route = "mcp-tools"
allow_private = ["127.0.0.1"]

[scope.credential]
kind = "secret"
env = "ECHO_API_TOKEN"
format = "Bearer {}"

[scope.mcp]
max_argument_bytes = 4096

[[scope.mcp.deny]]
id = "no-delete"
tools = ["delete_*"]

[[scope.mcp.allow]]
id = "repos"
tools = ["*_repo"]

[[scope.mcp.allow]]
id = "workspace-files"
tools = ["read_file"]
[scope.mcp.allow.args]
"/path" = { prefix = "/workspace/", glob = "/workspace/**", not_prefix = "/workspace/secret/", not_glob = "**/.env", not_regex = '\.\.' }

[[scope.mcp.allow]]
id = "acme-issues"
tools = ["create_issue"]
other_arguments = "deny"
[scope.mcp.allow.args]
"/owner" = { equals = "acme" }
"/repo" = { one_of = ["widgets", "gadgets"] }
"/title" = { type = "string", max_length = 20, not_equals = "test" }
"/labels" = { present = false }

[[scope.mcp.allow]]
id = "read-only-sql"
tools = ["execute_sql"]
[scope.mcp.allow.args]
"/query" = { regex = '^(?i)\s*select\b', not_regex = '(?i)\b(drop|delete|insert|update)\b', not_one_of = ["SELECT 1"] }

[[scope.mcp.allow]]
id = "sane-sizes"
tools = ["resize"]
[scope.mcp.allow.args]
"/width" = { type = "number", min = 1, max = 4096 }
"/height" = { not_min = 10000, not_max = 0 }
"/verbose" = { not_type = "string" }

[[scope.mcp.allow]]
id = "pings"
tools = ["ping_tool"]
rate = "2/min"

[[scope.mcp.allow]]
id = "misc"
tools = ["broken", "seen_auth", "rug_pull", "ask"]

[[scope.mcp.allow]]
id = "app-config"
resources = ["config://*"]

[[scope.mcp.allow]]
id = "summaries"
prompts = ["summarise"]

[[scope]]
name = "mcp-viewer"
upstream = "http://127.0.0.1:{mcp_port}"
route = "mcp-viewer"
allow_private = ["127.0.0.1"]

[scope.mcp]

[[scope.mcp.allow]]
tools = ["read_file"]

[[scope]]
name = "mcp-expired"
upstream = "http://localhost:{mcp_port}"
route = "mcp-expired"
allow_private = ["localhost"]

[scope.credential]
kind = "secret"
env = "MCP_EXPIRED_TOKEN"
format = "Bearer {}"

[scope.mcp]

[[scope.mcp.allow]]
tools = ["*"]
"#;

fn python() -> PathBuf {
    std::env::var_os("CLAWGATE_MCP_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mcpenv/bin/python"),
        PathBuf::from,
    )
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mcp")
        .join(name)
}

/// The Python SDK's server, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(json: bool) -> Server {
        Server::start_with(json, None)
    }

    /// With `tls`, the server speaks HTTPS with this certificate and key.
    fn start_with(json: bool, tls: Option<(&PathBuf, &PathBuf)>) -> Server {
        let python = python();
        assert!(
            python.exists(),
            "{} is missing: run `bash .ci/run` once (it installs the MCP SDKs)",
            python.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python)
            .arg(script("server.py"))
            .arg(port.to_string())
            .arg(if json { "json" } else { "sse" })
            .args(tls.into_iter().flat_map(|(c, k)| [c, k]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "MCP server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn harness(server: &Server) -> Harness {
    Harness::with(Options {
        extra_policy: vec![(
            "mcp.toml",
            POLICY.replace("{mcp_port}", &server.port.to_string()),
        )],
        agents: vec!["mcp-dev", "mcp-viewer"],
        env: vec![("MCP_EXPIRED_TOKEN".into(), "expired".into())],
        ..Options::default()
    })
}

/// Runs a client (`client.py` in `mode`, or `client.mjs`) as `agent` on
/// `route`, returning one JSON value per step.
fn run_client(
    h: &Harness,
    agent: &str,
    route: &str,
    mode: Option<&str>,
    steps: &Value,
) -> Vec<Value> {
    let (cert, key) = h.agent_cert(agent);
    let url = format!("{}/{route}/mcp", h.base());
    let ca = h.certs.join("ca.pem");
    let mut command = match mode {
        Some(mode) => {
            let mut c = Command::new(python());
            c.arg(script("client.py")).args([
                url.as_str(),
                ca.to_str().unwrap(),
                cert.to_str().unwrap(),
                key.to_str().unwrap(),
                mode,
            ]);
            c
        }
        None => {
            let mut c = Command::new("node");
            c.arg(script("client.mjs")).args([
                url.as_str(),
                ca.to_str().unwrap(),
                cert.to_str().unwrap(),
                key.to_str().unwrap(),
            ]);
            c
        }
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(steps.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        h.stderr()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Decision records of MCP messages with `method`, oldest first.
fn mcp_decisions(h: &Harness, method: &str) -> Vec<DecisionRecord> {
    h.records()
        .into_iter()
        .filter(|r| r.kind == "decision" && r.mcp.as_ref().is_some_and(|m| m.method == method))
        .collect()
}

fn reason_of(reply: &Value) -> Option<&str> {
    reply["error"]["data"]["reason"].as_str()
}

/// Every argument operator, allowed and refused: (tool, arguments, the
/// reason expected).
fn operator_cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "read_file",
            json!({"path": "/workspace/src/main.rs"}),
            "allowed",
        ),
        (
            "read_file",
            json!({"path": "/etc/passwd"}),
            "tool-arguments-refused",
        ),
        (
            "read_file",
            json!({"path": "/workspace/secret/key"}),
            "tool-arguments-refused",
        ),
        (
            "read_file",
            json!({"path": "/workspace/app/.env"}),
            "tool-arguments-refused",
        ),
        (
            "read_file",
            json!({"path": "/workspace/../etc/passwd"}),
            "tool-arguments-refused",
        ),
        ("read_file", json!({"path": 7}), "tool-arguments-refused"),
        (
            "create_issue",
            json!({"owner": "acme", "repo": "widgets", "title": "Bug"}),
            "allowed",
        ),
        (
            "create_issue",
            json!({"owner": "evil", "repo": "widgets", "title": "Bug"}),
            "tool-arguments-refused",
        ),
        (
            "create_issue",
            json!({"owner": "acme", "repo": "secrets", "title": "Bug"}),
            "tool-arguments-refused",
        ),
        (
            "create_issue",
            json!({"owner": "acme", "repo": "widgets", "title": "A title far too long to pass"}),
            "tool-arguments-refused",
        ),
        (
            "create_issue",
            json!({"owner": "acme", "repo": "widgets", "title": "test"}),
            "tool-arguments-refused",
        ),
        (
            "create_issue",
            json!({"owner": "acme", "repo": "widgets", "title": "Bug", "labels": ["x"]}),
            "tool-arguments-refused",
        ),
        (
            "execute_sql",
            json!({"query": "SELECT name FROM users"}),
            "allowed",
        ),
        (
            "execute_sql",
            json!({"query": "DROP TABLE users"}),
            "tool-arguments-refused",
        ),
        (
            "execute_sql",
            json!({"query": "SELECT 1; DROP TABLE users"}),
            "tool-arguments-refused",
        ),
        (
            "execute_sql",
            json!({"query": "SELECT 1"}),
            "tool-arguments-refused",
        ),
        (
            "resize",
            json!({"width": 100, "height": 50, "verbose": false}),
            "allowed",
        ),
        (
            "resize",
            json!({"width": 0, "height": 50}),
            "tool-arguments-refused",
        ),
        (
            "resize",
            json!({"width": 5000, "height": 50}),
            "tool-arguments-refused",
        ),
        (
            "resize",
            json!({"width": "100", "height": 50}),
            "tool-arguments-refused",
        ),
        (
            "resize",
            json!({"width": 100, "height": 20000}),
            "tool-arguments-refused",
        ),
        (
            "resize",
            json!({"width": 100, "height": -1}),
            "tool-arguments-refused",
        ),
        (
            "resize",
            json!({"width": 100, "height": 50, "verbose": "yes"}),
            "tool-arguments-refused",
        ),
        ("resize", json!({"width": 100}), "tool-arguments-refused"),
        (
            "delete_repo",
            json!({"owner": "acme", "repo": "widgets"}),
            "denied-by-rule",
        ),
        (
            "execute_sql",
            json!({"query": format!("SELECT '{}'", "x".repeat(5000))}),
            "tool-arguments-refused",
        ),
        ("no_such_tool", json!({}), "no-matching-rule"),
    ]
}

fn check_operators(h: &Harness, mode: Option<&str>) {
    let cases = operator_cases();
    let mut steps = vec![json!({"op": "list"})];
    steps.extend(
        cases
            .iter()
            .map(|(tool, args, _)| json!({"op": "call", "tool": tool, "args": args})),
    );
    let before = mcp_decisions(h, "tools/call").len();
    let replies = run_client(h, "mcp-dev", "mcp-tools", mode, &Value::from(steps));
    assert_eq!(
        replies[0]["tools"],
        json!([
            "ask",
            "broken",
            "create_issue",
            "execute_sql",
            "ping_tool",
            "read_file",
            "resize",
            "rug_pull",
            "seen_auth"
        ]),
        "{mode:?}: the list holds only what the agent may call"
    );
    let decisions = mcp_decisions(h, "tools/call");
    let decisions = &decisions[before..];
    assert_eq!(decisions.len(), cases.len(), "one decision per call");
    for (((tool, args, reason), reply), record) in cases.iter().zip(&replies[1..]).zip(decisions) {
        let seen = reason_of(reply).unwrap_or("allowed");
        assert_eq!(seen, *reason, "{mode:?} {tool} {args}: {reply}");
        assert_eq!(record.reason, *reason, "{tool} {args}");
        let mcp = record.mcp.as_ref().unwrap();
        assert_eq!(mcp.name.as_deref(), Some(*tool));
        assert!(mcp.id.is_some(), "the JSON-RPC id is recorded");
        assert!(
            mcp.arguments_hash
                .as_deref()
                .unwrap()
                .starts_with("hmac-sha256:")
        );
        if *reason == "allowed" {
            assert!(reply["isError"] == json!(false), "{reply}");
            assert!(record.rule.is_some());
        } else {
            // A refusal is a JSON-RPC error, not a transport failure, and
            // reads like an unknown tool.
            assert_eq!(reply["error"]["code"], json!(-32003), "{reply}");
            assert!(
                reply["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Unknown tool")
            );
            assert_eq!(
                reply["error"]["data"]["request_id"].as_str(),
                Some(record.request_id.as_str())
            );
        }
    }
    // Raw arguments never reach the log.
    let log = std::fs::read(&h.audit).unwrap();
    assert!(!common::contains(&log, "/workspace/secret/key"));
    assert!(!common::contains(&log, "DROP TABLE"));
}

#[test]
fn tools_are_decided_by_name_and_argument_in_both_protocol_forms_over_sse() {
    let server = Server::start(false);
    let h = harness(&server);
    check_operators(&h, Some("legacy"));
    check_operators(&h, Some("2026-07-28"));
    // Session-era calls carry the session; sessionless ones do not.
    let calls = mcp_decisions(&h, "tools/call");
    assert!(
        calls
            .first()
            .unwrap()
            .mcp
            .as_ref()
            .unwrap()
            .session
            .is_some()
    );
    assert!(
        calls
            .last()
            .unwrap()
            .mcp
            .as_ref()
            .unwrap()
            .session
            .is_none()
    );
    // The other methods are recorded too, and the session's end.
    assert!(!mcp_decisions(&h, "initialize").is_empty());
    assert!(!mcp_decisions(&h, "tools/list").is_empty());
    assert!(!mcp_decisions(&h, "DELETE").is_empty());
    // Another agent sees only its own tools.
    let replies = run_client(
        &h,
        "mcp-viewer",
        "mcp-viewer",
        Some("legacy"),
        &json!([{"op": "list"}]),
    );
    assert_eq!(replies[0]["tools"], json!(["read_file"]));
}

#[test]
fn json_responses_with_the_typescript_client_and_is_error_recorded() {
    let server = Server::start(true);
    let h = harness(&server);
    check_operators(&h, None);
    check_operators(&h, Some("2026-07-28"));
    let replies = run_client(
        &h,
        "mcp-dev",
        "mcp-tools",
        None,
        &json!([{"op": "call", "tool": "broken"}]),
    );
    assert_eq!(replies[0]["isError"], json!(true), "{replies:?}");
    let decision = mcp_decisions(&h, "tools/call").pop().unwrap();
    let outcome = h.outcome(&decision.request_id);
    assert_eq!(outcome.reason, "allowed");
    assert_eq!(outcome.mcp.unwrap().is_error, Some(true));
}

/// A sessionless (2026-07-28) POST with curl: headers and body as sent.
fn post(h: &Harness, headers: &[(&str, &str)], body: &str) -> common::Reply {
    let url = format!("{}/mcp-tools/mcp", h.base());
    let mut args: Vec<String> = vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-H".into(),
        "accept: application/json, text/event-stream".into(),
        "-H".into(),
        "mcp-protocol-version: 2026-07-28".into(),
    ];
    for (k, v) in headers {
        args.extend(["-H".into(), format!("{k}: {v}")]);
    }
    args.extend(["--data-binary".into(), body.into(), url]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.curl(Some("mcp-dev"), &refs)
}

fn body(id: Option<u64>, method: &str, params: &Value) -> String {
    let mut params = params.clone();
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "curl", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let mut message = json!({"jsonrpc": "2.0", "method": method, "params": params});
    if let Some(id) = id {
        message["id"] = json!(id);
    }
    message.to_string()
}

#[test]
fn batches_notifications_duplicate_keys_headers_resources_and_prompts() {
    let server = Server::start(true);
    let h = harness(&server);
    let call = |name: &str| {
        body(
            Some(1),
            "tools/call",
            &json!({"name": name, "arguments": {}}),
        )
    };
    let decision = |reply: &common::Reply| h.decision(&reply.request_id());

    // A batch is refused, as a whole.
    let batch = format!("[{},{}]", call("broken"), call("ping_tool"));
    let reply = post(&h, &[], &batch);
    assert_eq!(reply.status, 400);
    assert_eq!(reason_of(&reply.json()), Some("mcp-batch-refused"));
    assert_eq!(decision(&reply).reason, "mcp-batch-refused");

    // Duplicate keys make the message malformed: here the first `name` is
    // allowed, the second is not.
    let dup = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"broken","name":"delete_repo","arguments":{}}}"#;
    let reply = post(&h, &[], dup);
    assert_eq!(reply.status, 400);
    assert_eq!(reason_of(&reply.json()), Some("malformed-request"));
    assert_eq!(decision(&reply).mcp.unwrap().method, "invalid");

    // A header that disagrees with the body is refused.
    let reply = post(
        &h,
        &[("mcp-method", "tools/call"), ("mcp-name", "broken")],
        &call("delete_repo"),
    );
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], json!(-32020));
    assert_eq!(decision(&reply).reason, "mcp-header-mismatch");

    // The base64 form of Mcp-Name is decoded before comparing.
    let reply = post(
        &h,
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?YnJva2Vu?="),
        ],
        &call("broken"),
    );
    assert_eq!(reply.status, 200, "{}", reply.body_text());
    assert_eq!(decision(&reply).reason, "allowed");

    // A tools/call sent as a notification is decided like any other.
    let reply = post(
        &h,
        &[],
        &body(
            None,
            "tools/call",
            &json!({"name": "delete_repo", "arguments": {}}),
        ),
    );
    let record = decision(&reply);
    assert_eq!(record.reason, "denied-by-rule");
    let mcp = record.mcp.unwrap();
    assert_eq!((mcp.name.as_deref(), mcp.id), (Some("delete_repo"), None));
    assert_ne!(reply.status, 202);

    // A rewritten list is per agent and uncacheable.
    let reply = post(
        &h,
        &[("mcp-method", "tools/list")],
        &body(Some(6), "tools/list", &json!({})),
    );
    let list = reply.json();
    assert_eq!(list["result"]["ttlMs"], json!(0), "{list}");
    assert_eq!(list["result"]["cacheScope"], json!("private"));
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"read_file") && !names.contains(&"delete_repo"),
        "{names:?}"
    );

    // Absolute form through the forward proxy: the same decision.
    let url = format!("http://127.0.0.1:{}/mcp", server.port);
    let denied = body(
        Some(5),
        "tools/call",
        &json!({"name": "delete_repo", "arguments": {}}),
    );
    let reply = h.curl_via_proxy(
        "mcp-dev",
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-H",
            "mcp-protocol-version: 2026-07-28",
            "--data-binary",
            &denied,
            &url,
        ],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["id"], json!(5));
    let record = decision(&reply);
    assert_eq!(
        (record.mode.as_deref(), record.reason.as_str()),
        (Some("forward"), "denied-by-rule")
    );

    // Resources by URI, prompts by name.
    for (method, params, reason) in [
        ("resources/read", json!({"uri": "config://app"}), "allowed"),
        (
            "resources/read",
            json!({"uri": "secret://keys"}),
            "no-matching-rule",
        ),
        (
            "prompts/get",
            json!({"name": "summarise", "arguments": {"text": "x"}}),
            "allowed",
        ),
        (
            "prompts/get",
            json!({"name": "exfiltrate"}),
            "no-matching-rule",
        ),
    ] {
        let name = params
            .get("uri")
            .or(params.get("name"))
            .unwrap()
            .as_str()
            .unwrap();
        let headers = [("mcp-method", method), ("mcp-name", name)];
        let reply = post(&h, &headers, &body(Some(9), method, &params));
        let record = decision(&reply);
        assert_eq!(record.reason, reason, "{method} {params}");
        if reason == "allowed" {
            assert!(reply.json()["result"].is_object(), "{}", reply.body_text());
        } else {
            assert_eq!(reply.status, 200);
            assert_eq!(reply.json()["id"], json!(9));
            assert_eq!(reason_of(&reply.json()), Some(reason));
            assert!(!reply.body_text().contains("sk-not-for-agents"));
        }
    }
}

#[test]
fn a_changed_tool_is_hidden_and_refused_rates_apply_per_tool_and_credentials_are_injected() {
    let server = Server::start(false);
    let h = harness(&server);
    let replies = run_client(
        &h,
        "mcp-dev",
        "mcp-tools",
        Some("legacy"),
        &json!([
            {"op": "list"},
            {"op": "call", "tool": "read_file", "args": {"path": "/workspace/a"}},
            {"op": "call", "tool": "rug_pull"},
            {"op": "list"},
            {"op": "call", "tool": "read_file", "args": {"path": "/workspace/a"}},
            {"op": "call", "tool": "ping_tool"},
            {"op": "call", "tool": "ping_tool"},
            {"op": "call", "tool": "ping_tool"},
            {"op": "call", "tool": "seen_auth"},
        ]),
    );
    assert!(
        replies[0]["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("read_file"))
    );
    assert_eq!(replies[1]["isError"], json!(false));
    assert!(
        !replies[3]["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("read_file")),
        "{replies:?}"
    );
    assert_eq!(reason_of(&replies[4]), Some("tool-definition-changed"));
    let changed: Vec<_> = h
        .records()
        .into_iter()
        .filter(|r| r.kind == "pin" && r.reason == "tool-definition-changed")
        .collect();
    assert_eq!(changed.len(), 1, "the change is recorded once");
    assert_eq!(
        changed[0].mcp.as_ref().unwrap().name.as_deref(),
        Some("read_file")
    );
    assert!(changed[0].detail.as_deref().unwrap().contains("hidden"));
    let refused = mcp_decisions(&h, "tools/call")
        .into_iter()
        .find(|r| r.reason == "tool-definition-changed")
        .unwrap();
    assert_eq!(
        refused.mcp.unwrap().definition,
        changed[0].mcp.as_ref().unwrap().definition
    );

    // `clawgate mcp pins` prints the hashes clawgate pinned on first use
    // (the server has changed `read_file` since, so it prints the new one).
    let out = common::clawgate(&[
        "mcp",
        "pins",
        &format!("http://127.0.0.1:{}/mcp", server.port),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.contains("[scope.mcp.pins]"), "{printed}");
    let pinned: Vec<DecisionRecord> = h
        .records()
        .into_iter()
        .filter(|r| r.kind == "pin" && r.reason == "tool-pinned")
        .collect();
    let create_issue = pinned
        .iter()
        .find(|r| r.mcp.as_ref().unwrap().name.as_deref() == Some("create_issue"))
        .unwrap();
    let hash = create_issue
        .mcp
        .as_ref()
        .unwrap()
        .definition
        .clone()
        .unwrap();
    assert!(
        printed.contains(&format!("create_issue = \"{hash}\"")),
        "{printed}"
    );
    let changed_hash = changed[0].mcp.as_ref().unwrap().definition.clone().unwrap();
    assert!(
        printed.contains(&format!("read_file = \"{changed_hash}\"")),
        "{printed}"
    );

    // Two pings a minute.
    assert_eq!(replies[5]["isError"], json!(false));
    assert_eq!(replies[6]["isError"], json!(false));
    assert_eq!(reason_of(&replies[7]), Some("rate-limited"));
    let limited = mcp_decisions(&h, "tools/call")
        .into_iter()
        .find(|r| r.reason == "rate-limited")
        .unwrap();
    assert!(limited.detail.unwrap().contains("tool rate limit"));

    // The scope's credential reached the server (the agent's own did not),
    // and the server's echo of it came back redacted.
    assert_eq!(replies[8]["text"], json!("Bearer [clawgate:redacted]"));
    assert!(
        !serde_json::Value::from(replies.clone())
            .to_string()
            .contains(CANARY)
    );

    // An upstream OAuth challenge becomes a refusal, not an OAuth flow.
    let reply = h.curl(
        Some("mcp-dev"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-H",
            "mcp-protocol-version: 2026-07-28",
            "--data-binary",
            &body(
                Some(3),
                "tools/call",
                &json!({"name": "broken", "arguments": {}}),
            ),
            &format!("{}/mcp-expired/mcp", h.base()),
        ],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reason_of(&reply.json()), Some("upstream-auth-required"));
    assert!(reply.header("www-authenticate").is_none());
    let outcome = h.outcome(&reply.request_id());
    assert_eq!(outcome.reason, "upstream-auth-required");
}

const TUNNEL_POLICY: &str = r#"
[[agent]]
name = "mcp-tunnel"
identities = ["spiffe://clawgate.local/agent/mcp-tunnel"]
scopes = ["mcp-tls"]

[[scope]]
name = "mcp-tls"
upstream = "https://localhost:{tls_port}"
ca_file = "upstream-ca.pem"
allow_private = ["localhost"]

[scope.mcp]

[[scope.mcp.allow]]
tools = ["rug_pull", "seen_get", "read_file"]
"#;

/// A 2025-11-25 POST through clawgate as a forward proxy (intercepted).
fn tunnel_post(h: &Harness, url: &str, session: Option<&str>, body: &str) -> common::Reply {
    let mut args = vec![
        "--cacert".to_owned(),
        h.certs.join("intercept-ca.pem").display().to_string(),
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-H".into(),
        "accept: application/json, text/event-stream".into(),
        "-H".into(),
        "mcp-protocol-version: 2025-11-25".into(),
    ];
    if let Some(session) = session {
        args.extend(["-H".into(), format!("mcp-session-id: {session}")]);
    }
    args.extend(["--data-binary".into(), body.into(), url.into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.curl_via_proxy("mcp-tunnel", &refs)
}

#[test]
fn server_requests_pass_and_a_long_idle_sse_stream_survives_an_intercepted_tunnel() {
    // Elicitation: the server's request rides the POST's SSE stream, and
    // the client's JSON-RPC response comes back as a POST of its own.
    let plain = Server::start(false);
    let dir = tempfile::tempdir().unwrap();
    let mut probe = Harness::with(Options {
        start: false,
        ..Options::default()
    });
    let cert = dir.path().join("upstream.pem");
    let key = dir.path().join("upstream-key.pem");
    std::fs::write(&cert, &probe.upstream_cert.cert).unwrap();
    std::fs::write(&key, probe.upstream_cert.key_pem()).unwrap();
    let tls = Server::start_with(false, Some((&cert, &key)));
    std::fs::write(
        probe.policy.join("mcp.toml"),
        POLICY.replace("{mcp_port}", &plain.port.to_string()),
    )
    .unwrap();
    std::fs::write(
        probe.policy.join("tunnel.toml"),
        TUNNEL_POLICY.replace("{tls_port}", &tls.port.to_string()),
    )
    .unwrap();
    for agent in ["mcp-dev", "mcp-viewer", "mcp-tunnel"] {
        let out = common::clawgate(&[
            "certs",
            "agent",
            agent,
            "--dir",
            probe.certs.to_str().unwrap(),
        ]);
        assert!(out.status.success());
    }
    probe
        .env
        .push(("MCP_EXPIRED_TOKEN".into(), "expired".into()));
    // A total upstream deadline of 3 s: MCP streams must not be bound by it.
    probe.serve(&["--upstream-timeout".into(), "3s".into()]);
    let h = probe;

    let replies = run_client(
        &h,
        "mcp-dev",
        "mcp-tools",
        Some("legacy"),
        &json!([{"op": "call", "tool": "ask"}]),
    );
    assert_eq!(replies[0]["text"], json!("accept: yes"), "{replies:?}");
    let answer = mcp_decisions(&h, "response");
    assert_eq!(answer.len(), 1, "the client's answer is recorded");
    assert_eq!(answer[0].reason, "allowed");

    // The session-era GET stream through an intercepted CONNECT.
    let url = format!("https://localhost:{}/mcp", tls.port);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "curl", "version": "1"}}});
    let reply = tunnel_post(&h, &url, None, &init.to_string());
    assert_eq!(reply.status, 200, "{} {}", reply.body_text(), h.stderr());
    let session = reply
        .header_all("mcp-session-id")
        .pop()
        .expect("a session id");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let reply = tunnel_post(&h, &url, Some(&session), &initialized.to_string());
    assert_eq!(reply.status, 202);

    // Last-Event-ID and MCP-Protocol-Version reach the server (which, with
    // no event store, cannot resume: its answer passes through as it is).
    let resume = h.curl_via_proxy(
        "mcp-tunnel",
        &[
            "--cacert",
            h.certs.join("intercept-ca.pem").to_str().unwrap(),
            "-H",
            "accept: text/event-stream",
            "-H",
            &format!("mcp-session-id: {session}"),
            "-H",
            "mcp-protocol-version: 2025-11-25",
            "-H",
            "last-event-id: resume-7",
            &url,
        ],
    );
    assert_ne!(resume.status, 0);
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "seen_get", "arguments": {}}});
    let reply = tunnel_post(&h, &url, Some(&session), &call.to_string());
    let text = reply.body_text();
    assert!(
        text.contains("resume-7") && text.contains("2025-11-25"),
        "{text}"
    );

    let (cert, key) = h.agent_cert("mcp-tunnel");
    let stream_out = dir.path().join("stream.txt");
    let mut stream = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "25", "-o"])
        .arg(&stream_out)
        .args(["--proxy", &format!("https://localhost:{}", h.port)])
        .args(["--proxy-cacert", h.certs.join("ca.pem").to_str().unwrap()])
        .args([
            "--proxy-cert",
            cert.to_str().unwrap(),
            "--proxy-key",
            key.to_str().unwrap(),
        ])
        .args([
            "--cacert",
            h.certs.join("intercept-ca.pem").to_str().unwrap(),
        ])
        .args(["-H", "accept: text/event-stream"])
        .args(["-H", &format!("mcp-session-id: {session}")])
        .args(["-H", "mcp-protocol-version: 2025-11-25"])
        .arg(&url)
        .spawn()
        .unwrap();
    // Idle for longer than the upstream deadline.
    std::thread::sleep(Duration::from_secs(5));
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "rug_pull", "arguments": {}}});
    let reply = tunnel_post(&h, &url, Some(&session), &call.to_string());
    assert_eq!(reply.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = std::fs::read_to_string(&stream_out).unwrap_or_default();
        if got.contains("notifications/tools/list_changed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the GET stream delivered nothing after an idle spell: {got:?} {}",
            h.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stream.try_wait().unwrap().is_none(),
        "the stream is still open"
    );
    let _ = stream.kill();
    let _ = stream.wait();

    let get = mcp_decisions(&h, "GET").pop().unwrap();
    assert_eq!(get.mode.as_deref(), Some("intercept"));
    assert_eq!(get.mcp.unwrap().session.as_deref(), Some(session.as_str()));
    let calls: Vec<_> = mcp_decisions(&h, "tools/call")
        .into_iter()
        .filter(|r| r.mode.as_deref() == Some("intercept"))
        .collect();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|r| r.reason == "allowed"));
}
