//! First-use pins that outlast the process: the real binary in front of the
//! official Python SDK's server (tests/mcp/server.py). A rug pull recorded
//! before a restart is still a changed definition after it: the call is
//! refused and recorded `tool-definition-changed`, and nothing re-pins the
//! pulled definition. A first sighting that differs from a policy pin is
//! `tool-definition-changed` too, never `tool-pinned`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawgate::audit::DecisionRecord;
use common::{Harness, Options};
use serde_json::{Value, json};

const POLICY: &str = r#"
[[agent]]
name = "mcp-pins"
identities = ["spiffe://clawgate.local/agent/mcp-pins"]
scopes = ["pinned-tools", "policy-pinned"]

[[scope]]
name = "pinned-tools"
upstream = "http://127.0.0.1:{mcp_port}"
route = "pinned-tools"
allow_private = ["127.0.0.1"]

[scope.mcp]

[[scope.mcp.allow]]
tools = ["*"]

[[scope]]
name = "policy-pinned"
upstream = "http://localhost:{mcp_port}"
route = "policy-pinned"
allow_private = ["localhost"]

[scope.mcp]

[scope.mcp.pins]
ping_tool = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

[[scope.mcp.allow]]
tools = ["*"]
"#;

fn python() -> PathBuf {
    std::env::var_os("CLAWGATE_MCP_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mcpenv/bin/python"),
        PathBuf::from,
    )
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
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
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/server.py"))
            .arg(port.to_string())
            .arg("json")
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

/// One JSON-RPC request in the 2026-07-28 form; the reply's JSON and the
/// request id clawgate gave it.
fn ask(h: &Harness, route: &str, method: &str, params: &Value) -> (Value, String) {
    let mut params = params.clone();
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "curl", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let body = json!({"jsonrpc": "2.0", "id": 5, "method": method, "params": params}).to_string();
    let url = format!("{}/{route}/mcp", h.base());
    let mut headers = vec![format!("mcp-method: {method}")];
    if let Some(name) = params["name"].as_str() {
        headers.push(format!("mcp-name: {name}"));
    }
    let mut args: Vec<&str> = vec![
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
        "-H",
        "mcp-protocol-version: 2026-07-28",
    ];
    for header in &headers {
        args.extend(["-H", header.as_str()]);
    }
    args.extend(["--data-binary", body.as_str(), url.as_str()]);
    let reply = h.curl(Some("mcp-pins"), &args);
    assert_eq!(reply.status, 200, "{}", reply.body_text());
    (reply.json(), reply.request_id())
}

fn listed(h: &Harness, route: &str) -> Vec<String> {
    let (reply, _) = ask(h, route, "tools/list", &json!({}));
    reply["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {reply}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn pin_records(h: &Harness, scope: &str, tool: &str) -> Vec<DecisionRecord> {
    h.records()
        .into_iter()
        .filter(|r| {
            r.kind == "pin"
                && r.scope.as_deref() == Some(scope)
                && r.mcp.as_ref().and_then(|m| m.name.as_deref()) == Some(tool)
        })
        .collect()
}

/// Waits until the pin table beside the log holds `tool` with a changed
/// definition (the store writes from its own thread).
fn wait_for_stored_change(h: &Harness, scope: &str, tool: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conn = rusqlite::Connection::open(&h.audit).unwrap();
        let changed: Option<bool> = conn
            .query_row(
                "SELECT first != last FROM mcp_pins WHERE scope = ?1 AND tool = ?2",
                [scope, tool],
                |r| r.get(0),
            )
            .ok();
        if changed == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "the change was never stored");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_rug_pull_outlasts_a_restart_and_a_policy_pin_mismatch_is_a_change() {
    let server = Server::start();
    let mut h = Harness::with(Options {
        extra_policy: vec![(
            "pins.toml",
            POLICY.replace("{mcp_port}", &server.port.to_string()),
        )],
        agents: vec!["mcp-pins"],
        ..Options::default()
    });

    // First sighting: pinned. Then the rug pull, seen in the next list.
    assert!(listed(&h, "pinned-tools").contains(&"read_file".to_owned()));
    let (reply, _) = ask(
        &h,
        "pinned-tools",
        "tools/call",
        &json!({"name": "rug_pull", "arguments": {}}),
    );
    assert!(reply.get("result").is_some(), "{reply}");
    assert!(!listed(&h, "pinned-tools").contains(&"read_file".to_owned()));
    h.wait_for("the rug pull's pin record", |r| {
        r.kind == "pin" && r.reason == "tool-definition-changed"
    });
    let reasons: Vec<String> = pin_records(&h, "pinned-tools", "read_file")
        .into_iter()
        .map(|r| r.reason)
        .collect();
    assert_eq!(reasons, ["tool-pinned", "tool-definition-changed"]);
    wait_for_stored_change(&h, "pinned-tools", "read_file");

    // Restart: the call to the pulled tool, without a list first, is refused.
    h.stop();
    h.serve(&[]);
    let (reply, id) = ask(
        &h,
        "pinned-tools",
        "tools/call",
        &json!({"name": "read_file", "arguments": {"path": "/workspace/a"}}),
    );
    assert_eq!(
        reply["error"]["data"]["reason"],
        json!("tool-definition-changed"),
        "{reply}"
    );
    assert_eq!(h.decision(&id).reason, "tool-definition-changed");
    // And a list after the restart neither shows it nor re-pins it.
    assert!(!listed(&h, "pinned-tools").contains(&"read_file".to_owned()));

    // A policy pin the server's definition does not match: the first
    // sighting is a change, and the tool is hidden and refused.
    assert!(!listed(&h, "policy-pinned").contains(&"ping_tool".to_owned()));
    h.wait_for("the policy pin's mismatch", |r| {
        r.kind == "pin" && r.scope.as_deref() == Some("policy-pinned")
    });
    // The log is in order: the list above wrote whatever it was going to.
    let reasons: Vec<String> = pin_records(&h, "pinned-tools", "read_file")
        .into_iter()
        .map(|r| r.reason)
        .collect();
    assert_eq!(
        reasons,
        ["tool-pinned", "tool-definition-changed"],
        "nothing re-pinned"
    );
    let records = pin_records(&h, "policy-pinned", "ping_tool");
    let policy_pinned: Vec<_> = records
        .iter()
        .filter(|r| r.scope.as_deref() == Some("policy-pinned"))
        .collect();
    assert_eq!(policy_pinned.len(), 1, "{records:?}");
    assert_eq!(policy_pinned[0].reason, "tool-definition-changed");
    assert!(
        policy_pinned[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("differs from the policy pin sha256:0000")
    );
    let (reply, _) = ask(
        &h,
        "policy-pinned",
        "tools/call",
        &json!({"name": "ping_tool", "arguments": {}}),
    );
    assert_eq!(
        reply["error"]["data"]["reason"],
        json!("tool-definition-changed"),
        "{reply}"
    );
}

/// `clawgate mcp pins ...` as `who`, through the admin API.
fn pins_cli(h: &Harness, who: &str, args: &[&str]) -> std::process::Output {
    let (cert, key) = h.agent_cert(who);
    let admin = format!("https://localhost:{}", h.admin_port);
    let ca = h.certs.join("ca.pem");
    let mut full: Vec<&str> = vec!["mcp", "pins"];
    full.extend(args);
    full.extend([
        "--admin",
        &admin,
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    common::clawgate(&full)
}

fn stored_pin(h: &Harness, scope: &str, tool: &str) -> Option<(String, String)> {
    let conn = rusqlite::Connection::open(&h.audit).unwrap();
    conn.query_row(
        "SELECT first, last FROM mcp_pins WHERE scope = ?1 AND tool = ?2",
        [scope, tool],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

#[test]
fn an_admin_accepts_a_changed_pin_and_forgets_one_an_auditor_cannot() {
    let server = Server::start();
    let policy = format!(
        "[roles]\nadmins = [\"spiffe://clawgate.local/agent/ops\"]\nauditors = [\"spiffe://clawgate.local/agent/watcher\"]\n{}",
        POLICY.replace("{mcp_port}", &server.port.to_string())
    );
    let h = Harness::with(Options {
        extra_policy: vec![("pins.toml", policy)],
        agents: vec!["mcp-pins", "ops", "watcher"],
        ..Options::default()
    });
    let call = |h: &Harness| {
        ask(
            h,
            "pinned-tools",
            "tools/call",
            &json!({"name": "read_file", "arguments": {"path": "/workspace/a"}}),
        )
    };

    // Pinned, then pulled: refused.
    assert!(listed(&h, "pinned-tools").contains(&"read_file".to_owned()));
    let (reply, _) = ask(
        &h,
        "pinned-tools",
        "tools/call",
        &json!({"name": "rug_pull", "arguments": {}}),
    );
    assert!(reply.get("result").is_some(), "{reply}");
    assert!(!listed(&h, "pinned-tools").contains(&"read_file".to_owned()));
    wait_for_stored_change(&h, "pinned-tools", "read_file");
    let (reply, id) = call(&h);
    assert_eq!(
        reply["error"]["data"]["reason"],
        json!("tool-definition-changed"),
        "{reply}"
    );
    assert_eq!(h.decision(&id).reason, "tool-definition-changed");
    let (old, pulled) = stored_pin(&h, "pinned-tools", "read_file").unwrap();
    assert_ne!(old, pulled);

    // The list shows it changed; an auditor may list.
    let out = pins_cli(&h, "watcher", &["list"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("pinned-tools read_file "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("CHANGED") && line.contains(&pulled), "{line}");

    // An auditor cannot accept: 403, recorded, nothing changed.
    let out = pins_cli(&h, "watcher", &["accept", "pinned-tools", "read_file"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );
    h.wait_for("the auditor's refusal", |r| {
        r.reason == "admin-role-required" && r.path.as_deref() == Some("/v1/mcp/pins/accept")
    });
    assert_eq!(
        stored_pin(&h, "pinned-tools", "read_file"),
        Some((old.clone(), pulled.clone()))
    );
    let (reply, _) = call(&h);
    assert_eq!(
        reply["error"]["data"]["reason"],
        json!("tool-definition-changed")
    );

    // Bad input: a malformed hash changes nothing.
    let out = pins_cli(
        &h,
        "ops",
        &[
            "accept",
            "pinned-tools",
            "read_file",
            "--hash",
            "sha256:xyz",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("400"),
        "{out:?}"
    );

    // The admin accepts the definition last seen: the call is allowed.
    let out = pins_cli(&h, "ops", &["accept", "pinned-tools", "read_file"]);
    assert!(out.status.success(), "{out:?}");
    let accepted = pin_records(&h, "pinned-tools", "read_file")
        .into_iter()
        .find(|r| r.mode.as_deref() == Some("admin"))
        .expect("the accept's record");
    assert_eq!(accepted.reason, "allowed");
    let detail = accepted.detail.unwrap();
    assert!(
        detail.contains("accepted by spiffe://clawgate.local/agent/ops")
            && detail.contains(&format!("old pin {old}"))
            && detail.contains(&format!("new pin {pulled}")),
        "{detail}"
    );
    assert_eq!(
        stored_pin(&h, "pinned-tools", "read_file"),
        Some((pulled.clone(), pulled.clone()))
    );
    assert!(listed(&h, "pinned-tools").contains(&"read_file".to_owned()));
    let (reply, id) = call(&h);
    assert!(reply.get("result").is_some(), "{reply}");
    assert_eq!(h.decision(&id).reason, "allowed");

    // Forget: the row goes, and the next list pins the tool afresh.
    let out = pins_cli(&h, "ops", &["forget", "pinned-tools", "read_file"]);
    assert!(out.status.success(), "{out:?}");
    h.wait_for("the forget's record", |r| {
        r.kind == "pin"
            && r.mode.as_deref() == Some("admin")
            && r.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("pin forgotten by"))
    });
    assert_eq!(stored_pin(&h, "pinned-tools", "read_file"), None);
    let before = pin_records(&h, "pinned-tools", "read_file").len();
    assert!(listed(&h, "pinned-tools").contains(&"read_file".to_owned()));
    h.wait_for("the fresh pin", |r| {
        r.kind == "pin"
            && r.reason == "tool-pinned"
            && r.mode.as_deref() != Some("admin")
            && r.mcp.as_ref().and_then(|m| m.name.as_deref()) == Some("read_file")
            && r.mcp.as_ref().and_then(|m| m.definition.as_deref()) == Some(pulled.as_str())
    });
    assert!(pin_records(&h, "pinned-tools", "read_file").len() > before);
    let (reply, _) = call(&h);
    assert!(reply.get("result").is_some(), "{reply}");
}
