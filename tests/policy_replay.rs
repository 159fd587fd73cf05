//! `policy replay` against a decision log written by real calls through the
//! real binary: three candidate policies with known flips, exact counts and
//! groups, the not-re-decidable counts, the filters and the exit codes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;

use std::path::Path;

use common::{Harness, Options, clawgate};

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
"#;

/// An MCP scope on the echo upstream: a tool by name, a tool by argument.
const TOOLS: &str = r#"
[[agent]]
name = "toolsmith"
identities = ["spiffe://clawgate.local/agent/toolsmith"]
scopes = ["tools"]

[[scope]]
name = "tools"
upstream = "https://{echo}"
route = "tools"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]

[scope.mcp]

[[scope.mcp.allow]]
id = "read"
tools = ["read_file"]

[[scope.mcp.allow]]
id = "select"
tools = ["query"]
[scope.mcp.allow.args]
"/sql" = { prefix = "SELECT" }
"#;

/// A `tools/call` to the tools scope as `toolsmith`; its decision record.
fn tool_call(h: &Harness, tool: &str, args: &serde_json::Value) -> clawgate::audit::DecisionRecord {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": tool, "arguments": args,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "curl", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    })
    .to_string();
    let reply = h.curl(
        Some("toolsmith"),
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
            &body,
            &format!("{}/tools/mcp", h.base()),
        ],
    );
    h.decision(&reply.request_id())
}

/// A copy of `from` with `example.toml` edited by `edit`.
fn candidate(from: &Path, edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = if name == "example.toml" {
            let edited = edit(text.clone());
            assert_ne!(edited, text, "the edit changed nothing");
            edited
        } else {
            text
        };
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn replay(h: &Harness, dir: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec![
        "policy",
        "replay",
        dir.to_str().unwrap(),
        "--audit",
        h.audit.to_str().unwrap(),
        "--format",
        "json",
    ];
    args.extend(extra);
    let out = clawgate(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

/// The groups as `(direction, agent, scope, then, now, count)`.
fn groups(v: &serde_json::Value) -> Vec<(String, String, String, String, String, u64)> {
    let s = |x: &serde_json::Value| x.as_str().unwrap().to_owned();
    v["flips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                s(&g["direction"]),
                s(&g["agent"]),
                s(&g["scope"]),
                s(&g["then"]),
                s(&g["now"]),
                g["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn g(
    d: &str,
    a: &str,
    s: &str,
    then: &str,
    now: &str,
    n: u64,
) -> (String, String, String, String, String, u64) {
    (d.into(), a.into(), s.into(), then.into(), now.into(), n)
}

#[test]
fn replay_a_day_of_real_calls_under_three_candidates() {
    let mut h = Harness::with(Options {
        extra_policy: vec![
            ("roles.toml", ROLES.to_owned()),
            ("tools.toml", TOOLS.to_owned()),
        ],
        agents: vec!["ops", "toolsmith"],
        ..Options::default()
    });
    let base = h.base();
    let call = |agent: &str, method: &str, path: &str, times: usize| {
        for _ in 0..times {
            let reply = h.curl(Some(agent), &["-X", method, &format!("{base}{path}")]);
            assert!(reply.status > 0);
        }
    };
    call("research", "GET", "/echo/v1/items", 3);
    call("research", "GET", "/echo/v1/items/admin", 2);
    call("research", "DELETE", "/echo/v1/items/1", 1);
    call("research", "POST", "/echo/v1/items", 2);
    call("reporter", "GET", "/echo-report/v1/x", 1);
    call("reporter", "POST", "/echo-report/v1/x", 1);
    // MCP: by tool name (re-decidable), by argument (only a digest is
    // recorded: not re-decidable), and a tool no rule names.
    for (tool, args, reason) in [
        ("read_file", serde_json::json!({"path": "/a"}), "allowed"),
        ("read_file", serde_json::json!({"path": "/b"}), "allowed"),
        ("query", serde_json::json!({"sql": "SELECT 1"}), "allowed"),
        ("delete_all", serde_json::json!({}), "no-matching-rule"),
    ] {
        let record = tool_call(&h, tool, &args);
        assert_eq!(record.reason, reason, "{tool}: {record:?}");
        assert!(record.mcp.is_some(), "{record:?}");
    }
    // Not re-decidable: an unknown certificate (its names are not
    // recorded), and a call an override refused before policy was asked.
    call("intruder", "GET", "/echo/v1/items", 1);
    let made = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-d",
            r#"{"kind":"isolate-agent","target":"reporter","reason":"replay test","expires_in":"1h"}"#,
            "/v1/overrides",
        ],
    );
    assert!(made.status < 300, "{}", made.body_text());
    let reply = h.curl(
        Some("reporter"),
        &[&format!("{}/echo-report/v1/x", h.base())],
    );
    assert_eq!(reply.status, 403);
    h.stop();

    // 1. The policy in force: nothing flips.
    let same = candidate(&h.policy, |t| {
        t.replace("# The example policy.", "# unchanged")
    });
    let (code, v) = replay(&h, same.path(), &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["records"], 16, "{v}");
    assert_eq!(v["re_decided"], 13, "{v}");
    assert_eq!(v["unchanged"], 13, "{v}");
    assert_eq!(v["flipped"], 0, "{v}");
    assert_eq!(v["not_re_decidable"]["identity-not-recorded"], 1, "{v}");
    assert_eq!(v["not_re_decidable"]["refused-before-policy"], 1, "{v}");
    assert_eq!(v["not_re_decidable"]["mcp-arguments-digest-only"], 1, "{v}");

    // 2. No more admin deny, no more POST: both directions flip.
    let loose = candidate(&h.policy, |t| {
        t.replace(
            "[[scope.deny]]\nid = \"no-admin\"\npaths = [\"/v1/items/admin\", \"/v1/items/admin/**\"]\n",
            "",
        )
        .replace("methods = [\"POST\", \"PUT\"]", "methods = [\"PUT\"]")
    });
    let (code, v) = replay(&h, loose.path(), &[]);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["flipped"], 4, "{v}");
    assert_eq!(
        groups(&v),
        vec![
            g(
                "allow->deny",
                "research",
                "echo",
                "create-items",
                "no-matching-rule",
                2
            ),
            g(
                "deny->allow",
                "research",
                "echo",
                "no-admin",
                "read-items",
                2
            ),
        ],
        "{v}"
    );
    let examples = &v["flips"][1]["examples"];
    assert_eq!(examples.as_array().unwrap().len(), 2, "{v}");
    assert!(
        examples[0]["call"]
            .as_str()
            .unwrap()
            .ends_with("/v1/items/admin"),
        "{v}"
    );

    // 3. research loses its scope: every call it was allowed flips.
    let gone = candidate(&h.policy, |t| {
        t.replacen("scopes = [\"echo\"]", "scopes = [\"echo-report\"]", 1)
    });
    let (code, v) = replay(&h, gone.path(), &[]);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(
        groups(&v),
        vec![
            g(
                "allow->deny",
                "research",
                "echo",
                "create-items",
                "no-matching-scope",
                2
            ),
            g(
                "allow->deny",
                "research",
                "echo",
                "read-items",
                "no-matching-scope",
                3
            ),
        ],
        "{v}"
    );
    assert_eq!(v["unchanged"], 8, "{v}");
    // The same candidate, only reporter's calls: nothing flips.
    let (code, v) = replay(&h, gone.path(), &["--agent", "reporter"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["records"], 3, "{v}");
    assert_eq!(v["re_decided"], 2, "{v}");
    // Calls older than a second ago left out... none of this log is newer
    // than a day: --since 1d keeps them all.
    let (_, v) = replay(&h, gone.path(), &["--since", "1d"]);
    assert_eq!(v["records"], 16, "{v}");

    // The log pruned after export: the archive holds what the log lost,
    // and replay reads both (the archive first, checked as it is read).
    let archive = h.path("day.jsonl.gz");
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let audit = h.audit.to_str().unwrap().to_owned();
    let out = clawgate(&[
        "audit",
        "export",
        "--audit",
        &audit,
        "--until",
        &now,
        archive.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = clawgate(&["audit", "prune", "--audit", &audit, "--before", &now]);
    assert!(out.status.success(), "{out:?}");
    let (_, v) = replay(&h, gone.path(), &[]);
    assert_eq!(v["records"], 0, "{v}");
    let (code, v) = replay(&h, gone.path(), &["--archive", archive.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["records"], 16, "{v}");
    assert_eq!(v["flipped"], 5, "{v}");
    assert_eq!(v["not_re_decidable"]["identity-not-recorded"], 1, "{v}");

    // The text form says the same, for people.
    let out = clawgate(&[
        "policy",
        "replay",
        gone.path().to_str().unwrap(),
        "--archive",
        archive.to_str().unwrap(),
        "--audit",
        h.audit.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text.contains(
            "16 decision record(s): 13 re-decided (8 unchanged, 5 flip), 3 not re-decidable"
        ) && text.contains("allow->deny")
            && text.contains("then read-items  now no-matching-scope")
            && text.contains("not re-decidable      1  identity-not-recorded"),
        "{text}"
    );
}
