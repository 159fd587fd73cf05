//! What MCP servers return, inspected end to end: the real binary in front
//! of the official Python SDK's server (tests/mcp/results_server.py), whose
//! tools, resource and prompt return a planted cloud key, the credential
//! clawgate injected, tag-character instructions and ANSI sequences, written
//! a few bytes at a time, in JSON and in SSE. Each case checks what the
//! client received and the outcome record's findings (never the text).
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

use common::{CANARY, Harness, Options};
use serde_json::{Value, json};

const POLICY: &str = r#"
[[agent]]
name = "mcp-results"
identities = ["spiffe://clawgate.local/agent/mcp-results"]
scopes = ["results-default", "results-strict"]

# The defaults: key formats and injected values redacted, invisible
# characters and escapes stripped. The byte-level reflection guard is off so
# that the injected credential is left to the result inspection.
[[scope]]
name = "results-default"
upstream = "http://127.0.0.1:{mcp_port}"
route = "results-default"
allow_private = ["127.0.0.1"]
reflection = "off"

[scope.credential]
kind = "secret"
env = "ECHO_API_TOKEN"
format = "Bearer {}"

[scope.mcp]

[[scope.mcp.allow]]
tools = ["*"]

[[scope.mcp.allow]]
resources = ["doc://*"]

[[scope.mcp.allow]]
prompts = ["*"]

[[scope]]
name = "results-strict"
upstream = "http://localhost:{mcp_port}"
route = "results-strict"
allow_private = ["localhost"]

[scope.mcp]

[[scope.mcp.allow]]
tools = ["*"]

[[scope.mcp.allow]]
prompts = ["*"]

[scope.mcp.results]
invisible = "refuse"
ansi = "report"
instructions = ['(?i)have a nice day']
instructions_action = "redact"
"#;

fn python() -> PathBuf {
    std::env::var_os("CLAWGATE_MCP_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mcpenv/bin/python"),
        PathBuf::from,
    )
}

/// The planted-content server, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(json: bool) -> Server {
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
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/results_server.py"))
            .arg(port.to_string())
            .arg(if json { "json" } else { "sse" })
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
            "results.toml",
            POLICY.replace("{mcp_port}", &server.port.to_string()),
        )],
        agents: vec!["mcp-results"],
        ..Options::default()
    })
}

/// One JSON-RPC request in the 2026-07-28 form, posted with curl; returns
/// the message that answers it (from a JSON body or an SSE stream) and the
/// request id clawgate gave the call.
fn ask(h: &Harness, route: &str, method: &str, params: &Value) -> (Value, String, String) {
    let mut params = params.clone();
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "curl", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}).to_string();
    let url = format!("{}/{route}/mcp", h.base());
    let name = params["name"].as_str().or(params["uri"].as_str()).unwrap();
    let method_header = format!("mcp-method: {method}");
    let name_header = format!("mcp-name: {name}");
    let reply = h.curl(
        Some("mcp-results"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-H",
            "mcp-protocol-version: 2026-07-28",
            "-H",
            &method_header,
            "-H",
            &name_header,
            "--data-binary",
            &body,
            &url,
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body_text());
    let text = reply.body_text();
    let message = if reply
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"))
    {
        text.split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                serde_json::from_str::<Value>(&data.join("\n")).ok()
            })
            .find(|m| m["id"] == json!(9))
            .unwrap_or_else(|| panic!("no answer in the stream: {text}"))
    } else {
        reply.json()
    };
    (message, reply.request_id(), text)
}

fn call(h: &Harness, route: &str, tool: &str) -> (Value, String, String) {
    ask(
        h,
        route,
        "tools/call",
        &json!({"name": tool, "arguments": {}}),
    )
}

fn text_of(message: &Value) -> String {
    message["result"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no content: {message}"))
        .iter()
        .filter_map(|c| c["text"].as_str())
        .collect()
}

fn detail(h: &Harness, request_id: &str) -> (String, String) {
    let outcome = h.outcome(request_id);
    (outcome.reason, outcome.detail.unwrap_or_default())
}

fn has_invisible(text: &str) -> bool {
    text.chars()
        .any(|c| matches!(c, '\u{E0000}'..='\u{E007F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'))
}

/// Every planted kind, through the default scope and the strict one.
fn check(json: bool) {
    let server = Server::start(json);
    let h = harness(&server);
    let everything = || {
        let log = std::fs::read(&h.audit).unwrap_or_default();
        String::from_utf8_lossy(&log).into_owned() + &h.stderr()
    };

    // A cloud key and a GitHub token: redacted. (The SDK returns a tool's
    // text twice, as content and as `structuredContent.result`: each
    // planted value is counted twice.)
    let (message, id, raw) = call(&h, "results-default", "cloud_key");
    let text = text_of(&message);
    assert_eq!(
        text,
        "config: aws_access_key_id=[clawgate:redacted] token=[clawgate:redacted] done"
    );
    assert!(!raw.contains("AKIAIOSFODNN7EXAMPLE"), "{raw}");
    assert_eq!(
        detail(&h, &id),
        (
            "allowed".into(),
            "tool-result: 4 key-format redacted".into()
        )
    );

    // The credential clawgate injected, echoed by the tool: redacted.
    let (message, id, raw) = call(&h, "results-default", "echo_auth");
    assert_eq!(text_of(&message), "you sent: Bearer [clawgate:redacted]");
    assert!(!raw.contains(CANARY));
    assert_eq!(
        detail(&h, &id),
        (
            "allowed".into(),
            "tool-result: 2 injected-secret redacted".into()
        )
    );

    // Tag-character instructions: stripped.
    let (message, id, _) = call(&h, "results-default", "tagged");
    assert_eq!(text_of(&message), "Weather: sunny. Have a nice day.");
    let (reason, found) = detail(&h, &id);
    assert_eq!(reason, "allowed");
    assert_eq!(found, "tool-result: 56 invisible-unicode stripped");

    // ANSI sequences (sent as `\u001b` escapes in JSON): stripped.
    let (message, id, _) = call(&h, "results-default", "coloured");
    assert_eq!(text_of(&message), "red plain link");
    assert_eq!(detail(&h, &id).1, "tool-result: 8 ansi-escape stripped");

    // Structured content is inspected like text.
    let (message, id, raw) = call(&h, "results-default", "structured");
    assert!(!raw.contains("AKIAIOSFODNN7EXAMPLE"), "{raw}");
    assert_eq!(
        message["result"]["structuredContent"]["key"],
        json!("[clawgate:redacted]"),
        "{message}"
    );
    assert!(detail(&h, &id).1.starts_with("tool-result: "), "{message}");

    // Ordinary text passes untouched and nothing is recorded.
    let (message, id, _) = call(&h, "results-default", "ordinary");
    assert_eq!(text_of(&message), "Nothing to see: café, 日本語, 😀.");
    assert_eq!(detail(&h, &id), ("allowed".into(), String::new()));

    // A resource's contents and a prompt's messages.
    let (message, id, _) = ask(
        &h,
        "results-default",
        "resources/read",
        &json!({"uri": "doc://planted"}),
    );
    assert_eq!(
        message["result"]["contents"][0]["text"],
        json!("doc with [clawgate:redacted] inside")
    );
    assert_eq!(detail(&h, &id).1, "tool-result: 1 key-format redacted");
    let (message, id, _) = ask(
        &h,
        "results-default",
        "prompts/get",
        &json!({"name": "planted_prompt", "arguments": {}}),
    );
    let prompt = message["result"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap();
    assert_eq!(prompt, "Summarise the text.");
    assert_eq!(
        detail(&h, &id).1,
        "tool-result: 28 invisible-unicode stripped"
    );

    // The strict scope refuses invisible characters: the agent gets a
    // JSON-RPC error, the outcome is `tool-result-refused`.
    let (message, id, raw) = call(&h, "results-strict", "tagged");
    assert_eq!(
        message["error"]["data"]["reason"],
        json!("tool-result-refused"),
        "{message}"
    );
    assert_eq!(
        message["error"]["data"]["kinds"],
        json!(["invisible-unicode"])
    );
    assert!(message.get("result").is_none());
    assert!(!has_invisible(&raw) && !raw.contains("sunny"), "{raw}");
    let (reason, found) = detail(&h, &id);
    assert_eq!(reason, "tool-result-refused");
    assert_eq!(
        found,
        "tool-result: 56 invisible-unicode refused, 2 instruction-pattern redacted"
    );
    let decision = h.decision(&id);
    assert_eq!(decision.mcp.unwrap().name.as_deref(), Some("tagged"));
    let (message, id, _) = ask(
        &h,
        "results-strict",
        "prompts/get",
        &json!({"name": "planted_prompt", "arguments": {}}),
    );
    assert_eq!(
        message["error"]["data"]["reason"],
        json!("tool-result-refused")
    );
    assert_eq!(detail(&h, &id).0, "tool-result-refused");

    // ANSI reported and passed on; a policy instruction pattern redacted.
    let (message, id, _) = call(&h, "results-strict", "coloured");
    assert!(text_of(&message).contains("\x1b[31mred"));
    assert_eq!(
        detail(&h, &id),
        (
            "allowed".into(),
            "tool-result: 8 ansi-escape reported".into()
        )
    );

    // No planted value reached the log or clawgate's own output.
    let written = everything();
    for planted in ["AKIAIOSFODNN7EXAMPLE", CANARY, "\u{E0049}"] {
        assert!(!written.contains(planted), "{planted} was written");
    }
}

#[test]
fn planted_results_in_json_bodies_are_redacted_stripped_or_refused() {
    check(true);
}

#[test]
fn planted_results_in_sse_streams_are_redacted_stripped_or_refused() {
    check(false);
}
