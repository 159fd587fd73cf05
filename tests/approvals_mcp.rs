//! Ask for an MCP tool: the official MCP Python SDK client calls a tool an
//! `[[scope.ask]]` rule names through the real binary; the JSON-RPC error
//! carries the approval id, and after `clawgate approvals approve` the
//! retry executes exactly once on the server (counted by the server).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, Options};
use serde_json::{Value, json};

const POLICY: &str = r#"
[[agent]]
name = "mcp-asker"
identities = ["spiffe://clawgate.local/agent/mcp-asker"]
scopes = ["mcp-ask"]

[roles]
admins = ["spiffe://clawgate.local/agent/ops"]

[[scope]]
name = "mcp-ask"
upstream = "http://127.0.0.1:{mcp_port}"
route = "mcp-ask"
allow_private = ["127.0.0.1"]

[scope.mcp]

[[scope.mcp.allow]]
tools = ["deploy", "deploy_count"]

[[scope.ask]]
id = "deploys"
tools = ["deploy"]
approvers = ["admins"]
why = "deploys change production"
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

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> (Server, u16) {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run `bash .ci/run` once",
        python.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python)
        .arg(script("ask_server.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "MCP server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server(child), port)
}

fn run_client(h: &Harness, steps: &Value) -> Vec<Value> {
    let (cert, key) = h.agent_cert("mcp-asker");
    let url = format!("{}/mcp-ask/mcp", h.base());
    let ca = h.certs.join("ca.pem");
    let mut child = Command::new(python())
        .arg(script("client.py"))
        .args([
            url.as_str(),
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            "legacy",
        ])
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
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn an_ask_tool_is_refused_with_its_approval_and_runs_once_when_approved() {
    let (_server, port) = start_server();
    let h = Harness::with(Options {
        extra_policy: vec![(
            "mcp-ask.toml",
            POLICY.replace("{mcp_port}", &port.to_string()),
        )],
        agents: vec!["mcp-asker", "ops"],
        ..Options::default()
    });
    let deploy = json!({"op": "call", "tool": "deploy", "args": {"env": "prod"}});
    let count = json!({"op": "call", "tool": "deploy_count"});
    let first = run_client(&h, &json!([deploy, count]));
    let data = &first[0]["error"]["data"];
    assert_eq!(data["reason"], "approval-required", "{first:?}");
    let id = data["approval_id"].as_str().unwrap().to_owned();
    assert!(data["approval_url"].as_str().unwrap().ends_with(&id));
    assert_eq!(first[1]["text"], "0", "nothing ran: {first:?}");

    let shown = h.admin(Some("ops"), &[&format!("/v1/approvals/{id}")]);
    assert_eq!(shown.json()["request"]["tool"], "deploy");
    assert_eq!(shown.json()["request"]["arguments"], r#"{"env":"prod"}"#);

    let (cert, key) = h.agent_cert("ops");
    let out = common::clawgate(&[
        "approvals",
        "approve",
        &id,
        "--admin",
        &format!("https://localhost:{}", h.admin_port),
        "--ca",
        h.certs.join("ca.pem").to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");

    // Other arguments are another request; the approved one runs once.
    let staging = json!({"op": "call", "tool": "deploy", "args": {"env": "staging"}});
    let after = run_client(&h, &json!([staging, deploy, count, deploy, count]));
    assert_eq!(
        after[0]["error"]["data"]["reason"], "approval-required",
        "{after:?}"
    );
    assert_ne!(after[0]["error"]["data"]["approval_id"], id.as_str());
    assert_eq!(after[1]["text"], "deployed prod", "{after:?}");
    assert_eq!(after[2]["text"], "1");
    assert_eq!(
        after[3]["error"]["data"]["reason"], "approval-required",
        "uses = 1: {after:?}"
    );
    assert_eq!(after[4]["text"], "1", "executed exactly once on the server");

    let records = h.records();
    let granted: Vec<_> = records
        .iter()
        .filter(|r| r.kind == "approval" && r.request_id == id)
        .map(|r| r.reason.as_str())
        .collect();
    assert_eq!(granted, ["approval-requested", "approval-granted"]);
    let used: Vec<_> = records
        .iter()
        .filter(|r| {
            r.kind == "decision"
                && r.detail
                    .as_deref()
                    .is_some_and(|d| d.contains(&format!("approval {id} granted")))
        })
        .collect();
    assert_eq!(used.len(), 1, "one call used the approval");
    assert_eq!(
        used[0].mcp.as_ref().unwrap().name.as_deref(),
        Some("deploy")
    );
}
