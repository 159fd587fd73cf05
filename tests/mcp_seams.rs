//! The tool-call firewall's seams, end to end: the real binary in front of
//! the official TypeScript SDK server on Express and the official Python SDK
//! server, on scopes whose HTTP rules also allow every path (`/**`). Every
//! case checks what the server saw (its own log), what the client got, and
//! the decision record.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, Options, Reply};
use serde_json::{Value, json};

const POLICY: &str = r#"
[[agent]]
name = "seams"
identities = ["spiffe://clawgate.local/agent/seams"]
scopes = ["ts-tools", "py-tools"]

[[scope]]
name = "ts-tools"
upstream = "http://127.0.0.1:{ts_port}"
route = "ts-tools"
allow_private = ["127.0.0.1"]

[[scope.allow]]
paths = ["/**"]

[[scope.deny]]
id = "no-private"
paths = ["/private/**"]

[scope.mcp]

[[scope.mcp.deny]]
id = "no-delete"
tools = ["delete_*"]

[[scope.mcp.allow]]
id = "files"
tools = ["read_file", "slow_tool"]

[[scope.mcp.allow]]
id = "confirm-not-prod"
tools = ["confirm"]
[scope.mcp.allow.args]
"/target" = { not_equals = "prod" }

[[scope.mcp.allow]]
id = "workspace"
resources = ["file:///workspace/**"]

[[scope.mcp.allow]]
id = "summaries"
prompts = ["summarise"]

[[scope]]
name = "py-tools"
upstream = "http://localhost:{py_port}"
route = "py-tools"
allow_private = ["localhost"]

[[scope.allow]]
paths = ["/**"]

[scope.mcp]

[[scope.mcp.deny]]
id = "no-delete"
tools = ["delete_*"]

[[scope.mcp.allow]]
id = "files"
tools = ["read_file"]
"#;

fn here(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An MCP server process writing what it saw to `log`, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The TypeScript SDK server on Express (tests/mcp/server_express.mjs).
    fn express() -> Server {
        let sdk = here("tests/mcp/node_modules/express/package.json");
        assert!(
            sdk.exists(),
            "run `bash .ci/run` once: it installs the MCP SDKs"
        );
        Server::spawn(|port, log| {
            let mut c = Command::new("node");
            c.arg(here("tests/mcp/server_express.mjs"))
                .arg(port.to_string())
                .arg(log);
            c
        })
    }

    /// The Python SDK server (tests/mcp/server.py), JSON responses.
    fn python() -> Server {
        let python = here("target/mcpenv/bin/python");
        assert!(
            python.exists(),
            "run `bash .ci/run` once: it installs the MCP SDKs"
        );
        Server::spawn(|port, log| {
            let mut c = Command::new(&python);
            c.arg(here("tests/mcp/server.py"))
                .arg(port.to_string())
                .arg("json")
                .env("CLAWGATE_MCP_LOG", log);
            c
        })
    }

    fn spawn(command: impl Fn(u16, &Path) -> Command) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("seen.jsonl");
        std::fs::write(&log, "").unwrap();
        let port = free_port();
        let child = command(port, &log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "MCP server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// What the server saw, one JSON value per request or execution.
    fn seen(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn saw(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).unwrap().contains(needle)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn harness(ts: u16, py: u16) -> Harness {
    Harness::with(Options {
        extra_policy: vec![(
            "seams.toml",
            POLICY
                .replace("{ts_port}", &ts.to_string())
                .replace("{py_port}", &py.to_string()),
        )],
        agents: vec!["seams"],
        ..Options::default()
    })
}

/// A POST through clawgate to `path` (under the gateway), with `headers`
/// and the body read from `body` (bytes, sent as they are).
fn post(h: &Harness, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    post_with(h, path, headers, body, &[])
}

/// [`post`] with extra curl arguments.
fn post_with(
    h: &Harness,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    extra: &[&str],
) -> Reply {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let mut args: Vec<String> = vec!["-X".into(), "POST".into()];
    let mut has_type = false;
    for (k, v) in headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        args.extend(["-H".into(), format!("{k}: {v}")]);
    }
    if !has_type {
        args.extend(["-H".into(), "content-type: application/json".into()]);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args.extend([
        "-H".into(),
        "accept: application/json, text/event-stream".into(),
        "--data-binary".into(),
        format!("@{}", file.path().display()),
        format!("{}{path}", h.base()),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.curl(Some("seams"), &refs)
}

fn rpc(id: u64, method: &str, params: &Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        .to_string()
        .into_bytes()
}

/// A sessionless 2026-07-28 request: the client's state rides in `_meta`.
fn modern_rpc(id: u64, method: &str, params: &Value) -> Vec<u8> {
    let mut params = params.clone();
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "curl", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    rpc(id, method, &params)
}

/// The JSON-RPC messages of a reply, JSON or SSE.
fn messages(reply: &Reply) -> Vec<Value> {
    let text = reply.body_text();
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return vec![v];
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

fn reason_of(reply: &Reply) -> Option<String> {
    messages(reply)
        .iter()
        .find_map(|m| m["error"]["data"]["reason"].as_str().map(str::to_owned))
}

/// Opens a session on `path` (initialize, then initialized); its id.
fn session(h: &Harness, path: &str) -> String {
    let init = json!({
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "curl", "version": "1"}
    });
    let reply = post(h, path, &[], &rpc(1, "initialize", &init));
    assert_eq!(reply.status, 200, "initialize: {}", reply.body_text());
    let id = reply.header("mcp-session-id").expect("a session id");
    let done = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let reply = post(h, path, &[("mcp-session-id", &id)], done);
    assert!(reply.status < 300, "initialized: {}", reply.status);
    id
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn utf16(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let mut out = vec![0xFF, 0xFE];
    out.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    out
}

#[test]
fn every_spelling_on_express_is_decided_as_mcp_and_nothing_denied_runs() {
    let ts = Server::express();
    let h = harness(ts.port, free_port());
    let delete = json!({"name": "delete_repo", "arguments": {"repo": "widgets"}});
    let read = json!({"name": "read_file", "arguments": {"path": "/workspace/a"}});
    for path in ["/mcp", "/mcp/", "/MCP", "/Mcp/", "/other/place"] {
        let route = format!("/ts-tools{path}");
        let sid = session(&h, &route);
        let with = [("mcp-session-id", sid.as_str())];

        let reply = post(&h, &route, &with, &rpc(2, "tools/call", &delete));
        assert_eq!(
            reason_of(&reply).as_deref(),
            Some("denied-by-rule"),
            "{path}"
        );
        let record = h.decision(&reply.request_id());
        assert_eq!(record.reason, "denied-by-rule");
        assert_eq!(record.rule.as_deref(), Some("no-delete"));
        let mcp = record.mcp.unwrap();
        assert_eq!(mcp.method, "tools/call");
        assert_eq!(mcp.name.as_deref(), Some("delete_repo"));
        if path != "/mcp" {
            assert!(
                record
                    .detail
                    .unwrap()
                    .contains("json-rpc off the endpoint path")
            );
        }

        // Compressed, UTF-16 and duplicate-key spellings of the same call
        // are refused, not handed to the HTTP rules.
        let body = rpc(3, "tools/call", &delete);
        for (headers, bytes) in [
            (vec![("content-encoding", "gzip")], gzip(&body)),
            (
                vec![("content-type", "application/json; charset=utf-16")],
                utf16(&body),
            ),
            (
                vec![("content-type", "text/plain")],
                br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"read_file","name":"delete_repo","arguments":{}}}"#.to_vec(),
            ),
        ] {
            let mut all = with.to_vec();
            all.extend(headers);
            let reply = post(&h, &route, &all, &bytes);
            assert_eq!(reply.status, 400, "{path}: {}", reply.body_text());
            assert_eq!(reason_of(&reply).as_deref(), Some("malformed-request"));
            assert_eq!(h.decision(&reply.request_id()).reason, "malformed-request");
        }

        let reply = post(&h, &route, &with, &rpc(5, "tools/call", &read));
        assert!(
            reply.body_text().contains("read_file ran"),
            "{path}: {}",
            reply.body_text()
        );
        let record = h.decision(&reply.request_id());
        assert_eq!(
            (record.reason.as_str(), record.rule.as_deref()),
            ("allowed", Some("files"))
        );

        let reply = post(&h, &route, &with, &rpc(6, "tools/list", &json!({})));
        let text = reply.body_text();
        assert!(text.contains("read_file"), "{path}: {text}");
        assert!(
            !text.contains("delete_repo") && !text.contains("IGNORE"),
            "{path}: {text}"
        );
    }
    // Off the endpoint a message needs the path rules too: the tool rules
    // do not open a path they close.
    let sid = session(&h, "/ts-tools/mcp");
    let with = [("mcp-session-id", sid.as_str())];
    let reply = post(
        &h,
        "/ts-tools/private/x",
        &with,
        &rpc(8, "tools/call", &read),
    );
    assert_eq!(reason_of(&reply).as_deref(), Some("denied-by-rule"));
    let record = h.decision(&reply.request_id());
    assert_eq!(record.rule.as_deref(), Some("no-private"));
    assert_eq!(record.mcp.unwrap().name.as_deref(), Some("read_file"));

    // The server's side: the denied tool never reached it, let alone ran.
    assert!(!ts.saw("delete_repo"), "{:?}", ts.seen());
    assert!(!ts.saw("/private"), "{:?}", ts.seen());
    let ran = ts
        .seen()
        .iter()
        .filter(|e| e["executed"] == "read_file")
        .count();
    assert_eq!(ran, 5);

    // The SDK's own client on a folded spelling: the list is filtered and
    // the denied tool refused.
    let (cert, key) = h.agent_cert("seams");
    let mut client = Command::new("node")
        .arg(here("tests/mcp/client.mjs"))
        .arg(format!("{}/ts-tools/MCP/", h.base()))
        .args([h.certs.join("ca.pem"), cert, key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let steps =
        json!([{"op": "list"}, {"op": "call", "tool": "delete_repo", "args": {"repo": "x"}}]);
    client
        .stdin
        .take()
        .unwrap()
        .write_all(steps.to_string().as_bytes())
        .unwrap();
    let out = client.wait_with_output().unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0]["tools"],
        json!(["read_file", "slow_tool"]),
        "{lines:?}"
    );
    assert_eq!(
        lines[1]["error"]["data"]["reason"], "denied-by-rule",
        "{lines:?}"
    );
    assert!(!ts.saw("delete_repo"));
}

#[test]
fn every_spelling_on_the_python_sdk_is_decided_as_mcp_and_its_redirect_refused() {
    let py = Server::python();
    let h = harness(free_port(), py.port);
    let delete = json!({"name": "delete_repo", "arguments": {"owner": "a", "repo": "b"}});
    let read = json!({"name": "read_file", "arguments": {"path": "/workspace/a"}});
    let modern = [("mcp-protocol-version", "2026-07-28")];
    for path in ["/mcp", "/mcp/", "/MCP", "/elsewhere"] {
        let route = format!("/py-tools{path}");
        let reply = post(&h, &route, &modern, &modern_rpc(1, "tools/call", &delete));
        assert_eq!(
            reason_of(&reply).as_deref(),
            Some("denied-by-rule"),
            "{path}"
        );
        let record = h.decision(&reply.request_id());
        assert_eq!(record.mcp.unwrap().name.as_deref(), Some("delete_repo"));

        let reply = post(&h, &route, &modern, &modern_rpc(2, "tools/call", &read));
        let record = h.decision(&reply.request_id());
        assert_eq!(record.reason, "allowed", "{path}");
        if path == "/mcp/" {
            // Starlette redirects to `/mcp`: clawgate does not pass the
            // upstream's address on.
            assert_eq!(
                reason_of(&reply).as_deref(),
                Some("upstream-redirect-refused")
            );
            assert!(reply.header("location").is_none(), "{reply:?}");
            assert!(!reply.body_text().contains("127.0.0.1"));
            let outcome = h.outcome(&reply.request_id());
            assert_eq!(outcome.reason, "upstream-redirect-refused");
        }
    }
    assert!(!py.saw("delete_repo"), "{:?}", py.seen());
    assert!(py.saw("read_file"));
}

#[test]
fn lists_are_filtered_whatever_request_their_result_answers() {
    let ts = Server::express();
    let h = harness(ts.port, free_port());
    let sid = session(&h, "/ts-tools/mcp");
    let with = [("mcp-session-id", sid.as_str())];
    let list = rpc(7, "tools/list", &json!({}));
    let call = rpc(
        7,
        "tools/call",
        &json!({"name": "slow_tool", "arguments": {}}),
    );
    // Rounds of the race until it has been seen (the server answers lists
    // late, so the call, sent just after, takes over the id's stream).
    let mut crossed = 0;
    for round in 0..20 {
        let (a, b) = std::thread::scope(|s| {
            // A crossed race leaves one stream unanswered by the server.
            const QUICK: [&str; 2] = ["--max-time", "3"];
            let a = s.spawn(|| post_with(&h, "/ts-tools/mcp", &with, &list, &QUICK));
            std::thread::sleep(Duration::from_millis(30));
            let b = s.spawn(|| post_with(&h, "/ts-tools/mcp", &with, &call, &QUICK));
            (a.join().unwrap(), b.join().unwrap())
        });
        for reply in [&a, &b] {
            let text = reply.body_text();
            assert!(!text.contains("delete_repo"), "round {round}: {text}");
            assert!(!text.contains("IGNORE PREVIOUS"), "round {round}: {text}");
        }
        if b.body_text().contains("read_file") {
            // The list came back on the call's stream, filtered.
            crossed += 1;
            let record = h.decision(&b.request_id());
            assert_eq!(record.mcp.unwrap().method, "tools/call");
            if crossed == 3 {
                break;
            }
        }
    }
    assert!(crossed > 0, "the race was never seen");

    // Prompts, resources and resource templates are filtered too.
    let reply = post(
        &h,
        "/ts-tools/mcp",
        &with,
        &rpc(8, "prompts/list", &json!({})),
    );
    let text = reply.body_text();
    assert!(
        text.contains("summarise") && !text.contains("exfiltrate"),
        "{text}"
    );
    let reply = post(
        &h,
        "/ts-tools/mcp",
        &with,
        &rpc(9, "resources/list", &json!({})),
    );
    let text = reply.body_text();
    assert!(
        text.contains("notes.txt") && !text.contains("/etc/passwd"),
        "{text}"
    );
    let reply = post(
        &h,
        "/ts-tools/mcp",
        &with,
        &rpc(10, "resources/templates/list", &json!({})),
    );
    let text = reply.body_text();
    assert!(text.contains("file:///workspace/{name}"), "{text}");
    assert!(!text.contains("secret://"), "{text}");
    let record = h.decision(&reply.request_id());
    assert_eq!(record.mcp.unwrap().method, "resources/templates/list");
}

#[test]
fn resource_uris_are_normalised_and_dot_segments_never_reach_the_server() {
    let ts = Server::express();
    let h = harness(ts.port, free_port());
    let sid = session(&h, "/ts-tools/mcp");
    let with = [("mcp-session-id", sid.as_str())];
    let read = |uri: &str| {
        post(
            &h,
            "/ts-tools/mcp",
            &with,
            &rpc(3, "resources/read", &json!({"uri": uri})),
        )
    };

    let reply = read("file:///workspace/notes.txt");
    assert!(
        reply.body_text().contains("\"notes\""),
        "{}",
        reply.body_text()
    );
    assert_eq!(
        h.decision(&reply.request_id()).rule.as_deref(),
        Some("workspace")
    );

    for uri in [
        "file:///workspace/../etc/passwd",
        "file:///workspace/%2e%2e/etc/passwd",
        "FILE:///workspace/%2E%2e/etc/passwd",
        "file:///workspace/..%2fetc/passwd",
        "file:///workspace/%252e%252e/etc/passwd",
    ] {
        let reply = read(uri);
        assert_eq!(
            reason_of(&reply).as_deref(),
            Some("resource-uri-refused"),
            "{uri}"
        );
        let record = h.decision(&reply.request_id());
        assert_eq!(record.reason, "resource-uri-refused");
        assert_eq!(record.mcp.unwrap().method, "resources/read");
    }
    // A resource no rule names stays refused, however its scheme is spelt.
    let reply = read("FILE:///etc/passwd");
    assert_eq!(reason_of(&reply).as_deref(), Some("no-matching-rule"));
    assert!(
        !ts.saw("passwd") && !ts.saw("%2e") && !ts.saw("%2E"),
        "{:?}",
        ts.seen()
    );

    // A 2026-07-28 listen stream's resource subscriptions are decided too.
    let listen = |uri: &str| {
        let params = json!({"notifications": {"resourceSubscriptions": [uri]}});
        post(
            &h,
            "/ts-tools/mcp",
            &with,
            &rpc(4, "subscriptions/listen", &params),
        )
    };
    let reply = listen("file:///workspace/../etc/passwd");
    assert_eq!(reason_of(&reply).as_deref(), Some("resource-uri-refused"));
    let reply = listen("file:///workspace/notes.txt");
    let record = h.decision(&reply.request_id());
    assert_eq!(record.reason, "allowed");
    assert_eq!(record.mcp.unwrap().method, "subscriptions/listen");
    let reply = post(
        &h,
        "/ts-tools/mcp",
        &with,
        &rpc(5, "server/discover", &json!({})),
    );
    assert_eq!(
        h.decision(&reply.request_id()).mcp.unwrap().method,
        "server/discover"
    );
}

#[test]
fn an_input_required_round_trip_works_and_the_retry_is_decided_again() {
    let ts = Server::express();
    let h = harness(ts.port, free_port());
    let modern = [("mcp-protocol-version", "2026-07-28")];
    let first = json!({"name": "confirm", "arguments": {"target": "staging"}});
    let reply = post(&h, "/ts-tools/mcp", &modern, &rpc(1, "tools/call", &first));
    let result = &messages(&reply)[0]["result"];
    assert_eq!(
        result["resultType"],
        "input_required",
        "{}",
        reply.body_text()
    );
    assert_eq!(
        result["inputRequests"]["ok"]["method"],
        "elicitation/create"
    );
    let outcome = h.outcome(&reply.request_id());
    assert!(
        outcome
            .detail
            .unwrap_or_default()
            .contains("mcp input required")
    );
    assert!(!ts.saw("\"executed\""));

    let answers = json!({"ok": {"action": "accept", "content": {}}});
    let retry = |target: &str| {
        let params = json!({
            "name": "confirm",
            "arguments": {"target": target},
            "inputResponses": answers,
            "requestState": "state-1"
        });
        post(&h, "/ts-tools/mcp", &modern, &rpc(2, "tools/call", &params))
    };
    let reply = retry("staging");
    assert!(
        reply.body_text().contains("confirmed"),
        "{}",
        reply.body_text()
    );
    let record = h.decision(&reply.request_id());
    assert_eq!(record.rule.as_deref(), Some("confirm-not-prod"));
    assert!(
        record
            .detail
            .unwrap()
            .contains("mcp retry with input responses")
    );

    // The retry carries its own arguments: they are decided again.
    let reply = retry("prod");
    assert_eq!(reason_of(&reply).as_deref(), Some("tool-arguments-refused"));
    let record = h.decision(&reply.request_id());
    assert_eq!(record.reason, "tool-arguments-refused");
    let ran: Vec<Value> = ts
        .seen()
        .into_iter()
        .filter(|e| e["executed"] == "confirm")
        .collect();
    assert_eq!(
        ran,
        vec![json!({"executed": "confirm", "target": "staging"})]
    );
}

#[test]
fn an_upstream_redirect_is_refused_without_its_location() {
    let ts = Server::express();
    let h = harness(ts.port, free_port());
    // A JSON-RPC message: refused in JSON-RPC.
    let reply = post(
        &h,
        "/ts-tools/moved",
        &[],
        &rpc(1, "tools/list", &json!({})),
    );
    assert_eq!(
        reason_of(&reply).as_deref(),
        Some("upstream-redirect-refused")
    );
    assert!(reply.header("location").is_none(), "{reply:?}");
    assert!(!reply.body_text().contains("10.20.30.40"));
    let outcome = h.outcome(&reply.request_id());
    assert_eq!(outcome.reason, "upstream-redirect-refused");
    assert_eq!(
        h.decision(&reply.request_id()).mcp.unwrap().method,
        "tools/list"
    );
    // Plain HTTP on the same scope, passed by the path rule: refused too.
    let reply = post(
        &h,
        "/ts-tools/moved",
        &[("content-type", "text/plain")],
        b"hello",
    );
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(reply.header("location").is_none());
    assert!(!reply.body_text().contains("10.20.30.40"));
    let outcome = h.outcome(&reply.request_id());
    assert_eq!(outcome.reason, "upstream-redirect-refused");
    assert!(h.decision(&reply.request_id()).mcp.is_none());
    assert_eq!(
        ts.seen().iter().filter(|e| e["path"] == "/moved").count(),
        2
    );
}
