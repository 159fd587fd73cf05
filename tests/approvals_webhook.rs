//! The approval webhook: a local HTTPS receiver (Python's `http.server`
//! over TLS, a certificate of the scope's private CA) gets one JSON
//! notification per approval request, Slack-compatible, with the approval
//! link and without the scope's secret.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{CANARY, Harness, Options};

const RECEIVER: &str = r#"
import http.server, ssl, sys
port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        with open(out, "ab") as f:
            f.write(body + b"\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Hook)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

const POLICY: &str = r#"
[[agent]]
name = "builder"
identities = ["spiffe://clawgate.local/agent/builder"]
scopes = ["deploys"]

[roles]
admins = ["spiffe://clawgate.local/agent/ops"]

[[scope]]
name = "deploys"
upstream = "https://{echo}"
route = "deploys"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]

[scope.credential]
kind = "secret"
env = "ECHO_API_TOKEN"
header = "authorization"
format = "Bearer {}"

[[scope.allow]]
paths = ["/v1/**"]

[[scope.ask]]
id = "hooked"
paths = ["/v1/deploy/**"]
approvers = ["admins"]
why = "deploys are announced"
webhook = "https://127.0.0.1:{hook_port}/hook"
"#;

struct Receiver(std::process::Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_webhook_gets_the_request_and_its_link_without_secrets() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut h = Harness::with(Options {
        extra_policy: vec![(
            "hook.toml",
            POLICY.replace("{hook_port}", &port.to_string()),
        )],
        agents: vec!["builder", "ops"],
        start: false,
        ..Options::default()
    });
    let cert = h.path("hook.pem");
    let key = h.path("hook-key.pem");
    std::fs::write(&cert, &h.upstream_cert.cert).unwrap();
    std::fs::write(&key, h.upstream_cert.key_pem()).unwrap();
    let out = h.path("hook.jsonl");
    let _receiver = Receiver(
        Command::new("python3")
            .args(["-c", RECEIVER, &port.to_string()])
            .args([&cert, &key, &out])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "receiver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    h.serve(&[]);

    let url = format!("{}/deploys/v1/deploy/prod", h.base());
    let reply = h.curl(Some("builder"), &["-X", "POST", "--data", "go", &url]);
    assert_eq!(reply.status, 403, "{reply:?}");
    let id = reply.json()["approval_id"].as_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if !text.is_empty() {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no webhook arrived: {}",
            h.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !text.contains(CANARY),
        "the webhook carried the secret: {text}"
    );
    let hook: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let link = format!("https://127.0.0.1:{}/v1/approvals/{id}", h.admin_port);
    assert_eq!(hook["url"], link.as_str(), "{hook}");
    assert_eq!(hook["approval"]["id"], id.as_str());
    assert_eq!(hook["approval"]["request"]["path"], "/v1/deploy/prod");
    let slack = hook["text"].as_str().unwrap();
    assert!(
        slack.contains("builder")
            && slack.contains(&link)
            && slack.contains("deploys are announced"),
        "{slack}"
    );
    assert_eq!(text.lines().count(), 1, "one notification per request");
}
