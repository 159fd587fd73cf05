//! The console's approvals page, through the one-time login: it lists a
//! pending request, and an approve from it (with the session's CSRF token)
//! goes through the admin API as the console's operator, recorded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use std::io::BufRead;

use common::{CANARY, Harness, Options};

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
paths = ["/v1/deploy/**"]
approvers = ["admins"]
why = "console approval"
"#;

struct Console(std::process::Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_console_lists_and_approves_behind_its_login() {
    let h = Harness::with(Options {
        extra_policy: vec![("console.toml", POLICY.to_owned())],
        agents: vec!["builder", "ops"],
        ..Options::default()
    });
    let url = format!("{}/deploys/v1/deploy/prod", h.base());
    let first = h.curl(Some("builder"), &["-X", "POST", "--data", "go", &url]);
    let id = first.json()["approval_id"].as_str().unwrap().to_owned();

    let (cert, key) = h.agent_cert("ops");
    let mut child = std::process::Command::new(common::BIN)
        .args(["console", "--listen", "127.0.0.1:0", "--admin"])
        .arg(format!("https://localhost:{}", h.admin_port))
        .arg("--ca")
        .arg(h.certs.join("ca.pem"))
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let _console = Console(child);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    line.clear();
    out.read_line(&mut line).unwrap();
    let login = line
        .strip_prefix("log in (once): ")
        .unwrap()
        .trim()
        .to_owned();

    // Nothing without a session.
    let anonymous = common::curl(&[format!("{base}/approvals")]);
    assert_eq!(anonymous.status, 401);
    assert!(!anonymous.body_text().contains(&id));

    let jar = h.path("cookies");
    let jar = jar.to_str().unwrap();
    let logged = common::curl(&["-c".into(), jar.into(), login]);
    assert_eq!(logged.status, 303, "{logged:?}");
    let page = common::curl(&["-b".into(), jar.into(), format!("{base}/approvals")]);
    assert_eq!(page.status, 200, "{page:?}");
    let html = page.body_text();
    assert!(
        html.contains(&id) && html.contains("console approval") && html.contains("/v1/deploy/prod"),
        "{html}"
    );
    assert!(!html.contains(CANARY));
    let csrf = html
        .split("name=csrf value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();

    // A wrong CSRF token changes nothing.
    let forged = common::curl(&[
        "-b".into(),
        jar.into(),
        "--data".into(),
        format!("csrf=wrong&id={id}&verb=approve"),
        format!("{base}/approvals/answer"),
    ]);
    assert_eq!(forged.status, 403);
    assert!(h.records().iter().all(|r| r.reason != "approval-granted"));

    let approved = common::curl(&[
        "-b".into(),
        jar.into(),
        "--data".into(),
        format!("csrf={csrf}&id={id}&verb=approve"),
        format!("{base}/approvals/answer"),
    ]);
    assert_eq!(approved.status, 303, "{approved:?}");
    let granted: Vec<_> = h
        .records()
        .into_iter()
        .filter(|r| r.kind == "approval" && r.reason == "approval-granted" && r.request_id == id)
        .collect();
    assert_eq!(granted.len(), 1);
    assert!(
        granted[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("by spiffe://clawgate.local/agent/ops")
    );
    let done = h.curl(Some("builder"), &["-X", "POST", "--data", "go", &url]);
    assert_eq!(done.status, 200, "{done:?}");
}
