//! End-to-end: the real binary, real TLS, real files, real SQLite, curl and
//! openssl as clients. Every case asserts on the decision record as well as
//! on the response.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{CANARY, Harness, Options, clawgate, contains, files_with_prefix};

#[test]
fn allowed_call_reaches_upstream_with_the_injected_credential_only() {
    let h = Harness::start();
    let reply = h.curl(
        Some("research"),
        &[
            "-H",
            "Authorization: Bearer agent-own-key",
            &format!("{}/echo/v1/items?page=2&q=x", h.base()),
        ],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = h.seen();
    assert_eq!(seen.len(), 1);
    let auth: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(auth, vec![format!("Bearer {CANARY}").as_str()]);
    assert!(
        !seen[0]
            .headers
            .iter()
            .any(|(_, v)| v.contains("agent-own-key"))
    );
    assert_eq!(seen[0].path, "/v1/items");
    assert_eq!(seen[0].query.as_deref(), Some("page=2&q=x"));
    // Unreserved escapes arrive decoded, others in their one canonical form.
    let r = h.curl(
        Some("research"),
        &[&format!("{}/echo/v1/items/%7e%61/caf%c3%a9", h.base())],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(h.seen()[1].path, "/v1/items/~a/caf%C3%A9");
    assert_eq!(
        h.decision(&r.request_id()).path.as_deref(),
        Some("/v1/items/~a/café")
    );
    assert_eq!(
        seen[0].authority.as_deref(),
        Some(h.echo.addr.to_string().as_str())
    );

    let id = reply.request_id();
    let d = h.decision(&id);
    assert_eq!(d.decision.as_deref(), Some("allow"));
    assert_eq!(d.reason, "allowed");
    assert_eq!(d.agent.as_deref(), Some("research"));
    assert_eq!(d.scope.as_deref(), Some("echo"));
    assert_eq!(d.rule.as_deref(), Some("read-items"));
    assert_eq!(d.mode.as_deref(), Some("gateway"));
    assert_eq!(
        d.path.as_deref(),
        Some("/v1/items"),
        "no query string in the record"
    );
    assert_eq!(d.credential_kind.as_deref(), Some("secret"));
    assert_eq!(d.credential_ref.as_deref(), Some("env:ECHO_API_TOKEN"));
    assert_eq!(d.cert_fp.as_ref().map(String::len), Some(64));
    assert!(d.policy_digest.as_deref().unwrap().starts_with("sha256:"));
    let o = h.outcome(&id);
    assert_eq!(o.status, Some(200));
    assert_eq!(o.bytes_down, Some(reply.body.len() as i64));
    // The policy in force at start is the first record, with the same digest.
    let first = &h.records()[0];
    assert_eq!(
        (first.kind.as_str(), first.reason.as_str()),
        ("policy", "policy-loaded")
    );
    assert_eq!(first.policy_digest, d.policy_digest);
    assert!(first.detail.as_deref().unwrap().contains("example.toml"));
}

#[test]
fn denied_path_is_refused_with_the_reason_and_never_forwarded() {
    let h = Harness::start();
    let reply = h.curl(
        Some("research"),
        &[
            "-X",
            "DELETE",
            &format!("{}/echo/v1/items/admin/users", h.base()),
        ],
    );
    assert_eq!(reply.status, 403);
    let body = reply.json();
    assert_eq!(body["error"], "denied");
    assert_eq!(body["reason"], "denied-by-rule");
    assert_eq!(body["request_id"], reply.request_id().as_str());
    let d = h.decision(&reply.request_id());
    assert_eq!(
        (d.decision.as_deref(), d.reason.as_str()),
        (Some("deny"), "denied-by-rule")
    );
    assert_eq!(d.rule.as_deref(), Some("no-admin"));
    assert_eq!(d.method.as_deref(), Some("DELETE"));

    // Deny by default: no allow rule for this method and path.
    let reply = h.curl(
        Some("research"),
        &["-X", "PATCH", &format!("{}/echo/v1/items", h.base())],
    );
    assert_refused(&h, &reply, 403, "no-matching-rule");

    // A route outside the agent's scopes.
    let reply = h.curl(
        Some("research"),
        &[&format!("{}/echo-report/v1/x", h.base())],
    );
    assert_refused(&h, &reply, 403, "no-matching-scope");

    // An ambiguous path is refused, not guessed at.
    let reply = h.curl(
        Some("research"),
        &[
            "--path-as-is",
            &format!("{}/echo/v1/items/%2e%2e/admin", h.base()),
        ],
    );
    assert_refused(&h, &reply, 400, "malformed-request");

    // Rules meet the decoded path: an encoded `:` does not slip past a deny.
    let reply = h.curl(
        Some("research"),
        &[&format!("{}/echo/v1/items/42%3Aexport", h.base())],
    );
    assert_refused(&h, &reply, 403, "denied-by-rule");
    assert_eq!(
        h.decision(&reply.request_id()).rule.as_deref(),
        Some("no-export")
    );
    // Servlet-style `..;` traversal and lowercase methods are refused.
    let reply = h.curl(
        Some("research"),
        &[
            "--path-as-is",
            &format!("{}/echo/v1/items/..;/admin", h.base()),
        ],
    );
    assert_refused(&h, &reply, 400, "malformed-request");
    let reply = h.curl(
        Some("research"),
        &["-X", "get", &format!("{}/echo/v1/items", h.base())],
    );
    assert_refused(&h, &reply, 400, "malformed-request");

    assert!(h.seen().is_empty(), "upstream saw {:?}", h.seen());
    let outcomes = h
        .records()
        .into_iter()
        .filter(|r| r.kind == "outcome")
        .count();
    assert_eq!(outcomes, 0, "refused calls have no outcome record");
}

#[test]
fn unknown_agent_gets_403_and_a_record_with_its_fingerprint() {
    let h = Harness::start();
    let reply = h.curl(Some("intruder"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["reason"], "unknown-agent");
    let d = h.decision(&reply.request_id());
    assert_eq!(d.reason, "unknown-agent");
    assert_eq!(d.agent, None);
    assert_eq!(d.cert_fp.as_ref().map(String::len), Some(64));
    assert!(h.seen().is_empty());
}

#[test]
fn report_mode_forwards_and_records_what_enforce_would_have_denied() {
    let h = Harness::start();
    let reply = h.curl(
        Some("reporter"),
        &[
            "-X",
            "POST",
            "-d",
            "x",
            &format!("{}/echo-report/v2/anything", h.base()),
        ],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(h.seen().len(), 1);
    let d = h.decision(&reply.request_id());
    assert_eq!(d.decision.as_deref(), Some("allow"));
    assert_eq!(d.would_deny.as_deref(), Some("no-matching-rule"));
    assert_eq!(d.scope.as_deref(), Some("echo-report"));
    // A call the rules allow carries no would_deny.
    let fine = h.curl(
        Some("reporter"),
        &[&format!("{}/echo-report/v1/fine", h.base())],
    );
    assert_eq!(fine.status, 200);
    assert_eq!(h.decision(&fine.request_id()).would_deny, None);
    // Auditors find what enforce mode would have refused.
    let audit = h.audit.to_str().unwrap();
    let out = clawgate(&[
        "audit",
        "query",
        "--audit",
        audit,
        "--would-deny",
        "--format",
        "json",
    ]);
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, vec![reply.request_id()]);
}

#[test]
fn forward_proxy_absolute_form_goes_through_the_same_pipeline() {
    let h = Harness::start();
    let url = format!("http://{}/v1/items/7", h.echo.addr);
    let reply = h.curl_via_proxy("research", &["-H", "Authorization: Bearer mine", &url]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = h.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/items/7");
    assert!(
        seen[0]
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == &format!("Bearer {CANARY}"))
    );
    assert!(!seen[0].headers.iter().any(|(k, _)| k == "proxy-connection"));
    let d = h.decision(&reply.request_id());
    assert_eq!(d.mode.as_deref(), Some("forward"));
    assert_eq!(d.scope.as_deref(), Some("echo"));
    assert_eq!(d.host.as_deref(), Some("127.0.0.1"));

    let other = h.curl_via_proxy("research", &["http://unlisted.example/v1/items"]);
    assert_eq!(
        (other.status, other.json()["reason"].as_str()),
        (403, Some("no-matching-scope"))
    );
    assert_eq!(
        h.decision(&other.request_id()).host.as_deref(),
        Some("unlisted.example")
    );
    assert_eq!(h.seen().len(), 1);
}

#[test]
fn http2_is_negotiated_on_the_agent_listener() {
    let h = Harness::start();
    let reply = h.curl(
        Some("research"),
        &["--http2", "-v", &format!("{}/echo/v1/items", h.base())],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.headers.starts_with("HTTP/2"), "{}", reply.headers);
    assert_eq!(
        h.decision(&reply.request_id()).mode.as_deref(),
        Some("gateway")
    );
}

#[test]
fn request_and_response_bodies_stream_and_are_counted() {
    let h = Harness::start();
    let upload = h.path("upload.bin");
    std::fs::write(&upload, vec![7u8; 3 * 1024 * 1024]).unwrap();
    let reply = h.curl(
        Some("research"),
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", upload.display()),
            &format!("{}/echo/v1/uploads/blob", h.base()),
        ],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(h.seen()[0].body_bytes, 3 * 1024 * 1024);
    assert_eq!(
        h.outcome(&reply.request_id()).bytes_up,
        Some(3 * 1024 * 1024)
    );

    let reply = h.curl(
        Some("research"),
        &[&format!("{}/echo/v1/items/bytes/5000000", h.base())],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 5_000_000);
    assert_eq!(h.outcome(&reply.request_id()).bytes_down, Some(5_000_000));
}

/// The reply is a refusal with this status and reason, in the body and in
/// exactly one decision record, which is returned.
fn assert_refused(
    h: &Harness,
    reply: &common::Reply,
    status: u16,
    reason: &str,
) -> clawgate::audit::DecisionRecord {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.json()["reason"], reason, "{reply:?}");
    assert_eq!(reply.json()["request_id"], reply.request_id().as_str());
    let record = h.decision(&reply.request_id());
    assert_eq!(record.reason, reason);
    assert_eq!(record.decision.as_deref(), Some("deny"));
    record
}

fn assert_handshake_rejected(h: &Harness, reply: &common::Reply, detail: &str) {
    assert_ne!(reply.exit, 0, "the handshake must fail: {reply:?}");
    assert_eq!(reply.status, 0, "no HTTP answer: {reply:?}");
    let records = h.wait_for(detail, |r| {
        r.reason == "tls-rejected" && r.detail.as_deref().is_some_and(|d| d.contains(detail))
    });
    let r = &records[0];
    assert_eq!(r.decision.as_deref(), Some("deny"));
    assert_eq!(r.mode.as_deref(), Some("tls"));
    assert!(r.client_addr.as_deref().unwrap().starts_with("127.0.0.1:"));
    assert!(h.seen().is_empty());
}

#[test]
fn no_certificate_fails_the_handshake_with_curl_and_openssl() {
    let h = Harness::start();
    let reply = h.curl(None, &[&format!("{}/echo/v1/items", h.base())]);
    assert_handshake_rejected(&h, &reply, "no client certificate");

    let before = h
        .records()
        .into_iter()
        .filter(|r| r.reason == "tls-rejected")
        .count();
    let mut s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", h.port),
            "-servername",
            "localhost",
            "-quiet",
            "-CAfile",
        ])
        .arg(h.certs.join("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    s_client
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /echo/v1/items HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = s_client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("HTTP/1.1"),
        "openssl got an HTTP answer: {stdout}"
    );
    // Its own rejection is recorded too, not only curl's.
    let rejected = |h: &Harness| {
        h.records()
            .into_iter()
            .filter(|r| r.reason == "tls-rejected")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rejected(&h) < before + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "openssl's rejection was not recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(h.seen().is_empty());
}

#[test]
fn a_certificate_from_another_ca_fails_the_handshake() {
    let h = Harness::start();
    let foreign_dir = h.path("foreign");
    assert!(
        clawgate(&["certs", "init", "--dir", foreign_dir.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        clawgate(&[
            "certs",
            "agent",
            "research",
            "--dir",
            foreign_dir.to_str().unwrap()
        ])
        .status
        .success()
    );
    let reply = common::curl(&[
        "--cacert".into(),
        h.certs.join("ca.pem").display().to_string(),
        "--cert".into(),
        foreign_dir
            .join("agents/research.pem")
            .display()
            .to_string(),
        "--key".into(),
        foreign_dir
            .join("agents/research-key.pem")
            .display()
            .to_string(),
        format!("{}/echo/v1/items", h.base()),
    ]);
    assert_handshake_rejected(&h, &reply, "the agent CA");
}

#[test]
fn an_expired_certificate_fails_the_handshake() {
    let h = Harness::start();
    let ca = clawgate::certs::read_pair(&h.certs, "ca.pem", "ca-key.pem").unwrap();
    let mut spec = clawgate::certs::agent_spec("research", 1).unwrap();
    spec.not_before = time::OffsetDateTime::now_utc() - std::time::Duration::from_secs(3 * 86_400);
    spec.not_after = time::OffsetDateTime::now_utc() - std::time::Duration::from_secs(86_400);
    let (leaf, _) = clawgate::certs::issue(&ca, &spec).unwrap();
    std::fs::write(h.path("old.pem"), &leaf.cert).unwrap();
    std::fs::write(h.path("old-key.pem"), leaf.key_pem()).unwrap();
    let reply = common::curl(&[
        "--cacert".into(),
        h.certs.join("ca.pem").display().to_string(),
        "--cert".into(),
        h.path("old.pem").display().to_string(),
        "--key".into(),
        h.path("old-key.pem").display().to_string(),
        format!("{}/echo/v1/items", h.base()),
    ]);
    assert_handshake_rejected(&h, &reply, "certificate expired");
}

#[test]
fn a_revoked_certificate_fails_the_handshake_when_a_crl_is_given() {
    let mut h = Harness::with(Options {
        start: false,
        ..Options::default()
    });
    let ca = clawgate::certs::read_pair(&h.certs, "ca.pem", "ca-key.pem").unwrap();
    let (revoked, serial) =
        clawgate::certs::issue(&ca, &clawgate::certs::agent_spec("research", 1).unwrap()).unwrap();
    std::fs::write(h.path("revoked.pem"), &revoked.cert).unwrap();
    std::fs::write(h.path("revoked-key.pem"), revoked.key_pem()).unwrap();
    std::fs::write(
        h.path("crl.pem"),
        clawgate::certs::crl(&ca, &[serial]).unwrap(),
    )
    .unwrap();
    let crl = h.path("crl.pem").display().to_string();
    h.serve(&["--crl".into(), crl]);
    let reply = common::curl(&[
        "--cacert".into(),
        h.certs.join("ca.pem").display().to_string(),
        "--cert".into(),
        h.path("revoked.pem").display().to_string(),
        "--key".into(),
        h.path("revoked-key.pem").display().to_string(),
        format!("{}/echo/v1/items", h.base()),
    ]);
    assert_handshake_rejected(&h, &reply, "certificate revoked");
    // The agent's own, unrevoked certificate still works under the CRL.
    let ok = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(ok.status, 200, "{ok:?}");
}

#[test]
fn upstream_failures_are_502_and_504_with_outcome_records() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let extra = format!(
        "[[agent]]\nname = \"prober\"\nidentities = [\"spiffe://clawgate.local/agent/prober\"]\nscopes = [\"dead\", \"slow\"]\n\
         [[scope]]\nname = \"dead\"\nupstream = \"https://127.0.0.1:{dead_port}\"\nroute = \"dead\"\nallow_private = [\"127.0.0.1\"]\n\
         [[scope.allow]]\npaths = [\"/**\"]\n\
         [[scope]]\nname = \"slow\"\nupstream = \"https://localhost:{{echo_port}}\"\nroute = \"slow\"\nca_file = \"upstream-ca.pem\"\nallow_private = [\"127.0.0.1\", \"::1\"]\n\
         [[scope.allow]]\npaths = [\"/**\"]\n"
    );
    let mut h = Harness::with(Options {
        agents: vec!["prober"],
        start: false,
        ..Options::default()
    });
    std::fs::write(
        h.policy.join("prober.toml"),
        extra.replace("{echo_port}", &h.echo.addr.port().to_string()),
    )
    .unwrap();
    h.serve(&["--upstream-timeout".into(), "1s".into()]);

    let reply = h.curl(Some("prober"), &[&format!("{}/dead/x", h.base())]);
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.json()["reason"], "upstream-unreachable");
    assert_eq!(reply.json()["error"], "unavailable");
    let id = reply.request_id();
    assert_eq!(h.decision(&id).decision.as_deref(), Some("allow"));
    let o = h.outcome(&id);
    assert_eq!(
        (o.status, o.reason.as_str()),
        (Some(502), "upstream-unreachable")
    );

    let reply = h.curl(Some("prober"), &[&format!("{}/slow/slow/3000", h.base())]);
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.json()["reason"], "upstream-timeout");
    let o = h.outcome(&reply.request_id());
    assert_eq!(
        (o.status, o.reason.as_str()),
        (Some(504), "upstream-timeout")
    );
}

#[test]
fn an_unwritable_decision_log_refuses_calls_and_forwards_nothing() {
    let h = Harness::start();
    let ok = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(ok.status, 200);
    let seen_before = h.seen().len();
    h.outcome(&ok.request_id());

    // Another process holds the write lock: clawgate cannot commit.
    let holder = rusqlite::Connection::open(&h.audit).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.json()["reason"], "audit-unavailable");
    assert_eq!(
        h.seen().len(),
        seen_before,
        "the upstream must receive nothing"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);

    // Once the log is writable again, calls flow and the chain is intact.
    let again = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(again.status, 200, "{again:?}");
    assert!(
        h.records()
            .iter()
            .all(|r| r.request_id != refused.request_id())
    );
    assert!(
        clawgate(&["audit", "verify", "--audit", h.audit.to_str().unwrap()])
            .status
            .success()
    );
    assert!(h.stderr().contains("decision not recorded"));
}

#[test]
fn a_tampered_row_makes_verify_exit_1_naming_it() {
    let mut h = Harness::start();
    for _ in 0..3 {
        assert_eq!(
            h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())])
                .status,
            200
        );
    }
    h.stop();
    let audit = h.audit.to_str().unwrap().to_owned();
    let out = clawgate(&["audit", "verify", "--audit", &audit]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One policy record, then a decision and an outcome per call.
    assert!(stdout.starts_with("ok: 7 records"), "{stdout}");
    let head = clawgate(&["audit", "head", "--audit", &audit]);
    let head = String::from_utf8_lossy(&head.stdout)
        .trim()
        .replace(' ', ":");
    assert!(head.starts_with("7:"), "{head}");
    let out = clawgate(&["audit", "verify", "--audit", &audit, "--anchor", &head]);
    assert!(out.status.success(), "{out:?}");

    // Cutting the tail keeps the chain intact, but not the anchor.
    let conn = rusqlite::Connection::open(&h.audit).unwrap();
    let saved: Vec<(i64, String)> = conn
        .prepare("SELECT seq, hash FROM records WHERE seq > 5")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(saved.len(), 2);
    conn.execute(
        "CREATE TABLE kept AS SELECT * FROM records WHERE seq > 5",
        [],
    )
    .unwrap();
    conn.execute("DELETE FROM records WHERE seq > 5", [])
        .unwrap();
    assert!(
        clawgate(&["audit", "verify", "--audit", &audit])
            .status
            .success()
    );
    let out = clawgate(&["audit", "verify", "--audit", &audit, "--anchor", &head]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("record 7"));
    conn.execute("INSERT INTO records SELECT * FROM kept", [])
        .unwrap();
    conn.execute("DROP TABLE kept", []).unwrap();
    drop(conn);

    rusqlite::Connection::open(&h.audit)
        .unwrap()
        .execute(
            "UPDATE records SET agent = 'someone-else' WHERE seq = 3",
            [],
        )
        .unwrap();
    let out = clawgate(&["audit", "verify", "--audit", &audit]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("record 3"), "{stdout}");
}

#[test]
fn a_broken_policy_fails_check_with_file_and_line_and_serve_refuses_to_start() {
    let mut h = Harness::with(Options {
        start: false,
        ..Options::default()
    });
    let policy = h.policy.to_str().unwrap().to_owned();
    let out = clawgate(&["policy", "check", &policy]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ok: 2 agents, 2 scopes, 5 rules, digest sha256:"),
        "{stdout}"
    );

    std::fs::write(
        h.policy.join("broken.toml"),
        "[[agent]]\nname = \"x\"\nidentities = [\"cn:x\"]\nscopes = [\"missing-scope\"]\n",
    )
    .unwrap();
    let out = clawgate(&["policy", "check", &policy]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("broken.toml:4:11: unknown scope `missing-scope` in agent `x`"),
        "{stdout}"
    );

    let out = Command::new(common::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--policy",
            &policy,
            "--certs",
        ])
        .arg(&h.certs)
        .arg("--audit")
        .arg(&h.audit)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.toml:4:11"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    h.stop();
}

#[test]
fn missing_certificates_say_which_command_creates_them() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    clawgate::demo::write_example_policy(
        &policy,
        9700,
        &clawgate::certs::new_ca("x", 1).unwrap().cert,
    )
    .unwrap();
    let out = Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--policy"])
        .arg(&policy)
        .arg("--certs")
        .arg(dir.path().join("nocerts"))
        .arg("--audit")
        .arg(dir.path().join("a.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("clawgate certs init --dir"), "{stderr}");

    let certs = dir.path().join("certs");
    assert!(
        clawgate(&["certs", "init", "--dir", certs.to_str().unwrap()])
            .status
            .success()
    );
    let again = clawgate(&["certs", "init", "--dir", certs.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("pass --force"));
}

#[test]
fn the_canary_secret_never_reaches_the_log_output_or_refusals() {
    let mut h = Harness::start();
    let base = h.base();
    let mut bodies = Vec::new();
    // Allowed calls whose upstream does not echo headers back.
    for path in ["/echo/v1/items/bytes/64", "/echo/v1/items/bytes/0"] {
        let r = h.curl(
            Some("research"),
            &[
                "-H",
                &format!("X-Note: {CANARY}-not-really"),
                &format!("{base}{path}"),
            ],
        );
        assert_eq!(r.status, 200);
        bodies.push(r);
    }
    for (agent, args) in [
        (Some("research"), vec!["-X", "DELETE"]),
        (Some("intruder"), vec![]),
        (Some("research"), vec!["-X", "POST"]),
    ] {
        let mut all = args.clone();
        let url = format!("{base}/echo/v1/items/admin");
        all.push(&url);
        bodies.push(h.curl(agent, &all));
    }
    // The canary did reach the upstream, so its absence elsewhere means something.
    assert!(h.seen().iter().any(|s| {
        s.headers
            .iter()
            .any(|(_, v)| v == &format!("Bearer {CANARY}"))
    }));
    h.stop();
    for reply in &bodies {
        assert!(
            !contains(&reply.body, CANARY),
            "response body: {}",
            reply.body_text()
        );
        assert!(!reply.headers.contains(CANARY));
    }
    let db_files = files_with_prefix(h.dir.path(), "audit.db");
    assert!(!db_files.is_empty());
    for (path, bytes) in db_files {
        assert!(
            !contains(&bytes, CANARY),
            "{} holds the canary",
            path.display()
        );
    }
    assert!(!h.stdout().contains(CANARY), "stdout holds the canary");
    assert!(!h.stderr().contains(CANARY), "stderr holds the canary");
    // stderr is at debug level here, so the absence is not for lack of logging.
    assert!(h.stderr().contains("call forwarded"));
}

#[test]
fn audit_query_filters_and_formats_from_the_command_line() {
    let h = Harness::start();
    assert_eq!(
        h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())])
            .status,
        200
    );
    assert_eq!(
        h.curl(
            Some("research"),
            &["-X", "DELETE", &format!("{}/echo/v1/items/1", h.base())]
        )
        .status,
        403
    );
    let audit = h.audit.to_str().unwrap();
    let out = clawgate(&[
        "audit",
        "query",
        "--audit",
        audit,
        "--decision",
        "deny",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["reason"], "no-matching-rule");
    let out = clawgate(&[
        "audit", "query", "--audit", audit, "--agent", "research", "--since", "10m", "--format",
        "csv",
    ]);
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(csv.lines().count() >= 3, "{csv}");
    let out = clawgate(&[
        "audit",
        "query",
        "--audit",
        audit,
        "--until",
        "2000-01-01T00:00:00Z",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "only the header"
    );
    let out = clawgate(&[
        "audit",
        "query",
        "--audit",
        audit,
        "--since",
        "yesterday-ish",
    ]);
    assert!(!out.status.success());
}

#[test]
fn an_agent_that_gives_up_leaves_a_client_cancelled_outcome() {
    let h = Harness::start();
    let reply = h.curl(
        Some("research"),
        &[
            "--max-time",
            "1",
            &format!("{}/echo/v1/items/slow/3000", h.base()),
        ],
    );
    assert_ne!(reply.exit, 0, "curl should give up: {reply:?}");
    let decisions = h.wait_for("the decision", |r| {
        r.kind == "decision" && r.path.as_deref() == Some("/v1/items/slow/3000")
    });
    let o = h.outcome(&decisions[0].request_id);
    assert_eq!(o.reason, "client-cancelled");
    assert_eq!(o.status, None, "no response head was received");
}

#[test]
fn shutdown_ends_calls_in_flight_and_keeps_their_outcome_records() {
    let mut h = Harness::with(Options {
        serve_args: vec!["--drain-timeout".into(), "500ms".into()],
        ..Options::default()
    });
    let certs = h.certs.clone();
    let base = h.base();
    let slow = std::thread::spawn(move || {
        common::curl(&[
            "--cacert".into(),
            certs.join("ca.pem").display().to_string(),
            "--cert".into(),
            certs.join("agents/research.pem").display().to_string(),
            "--key".into(),
            certs.join("agents/research-key.pem").display().to_string(),
            format!("{base}/echo/v1/items/slow/20000"),
        ])
    });
    let decisions = h.wait_for("the slow call's decision", |r| {
        r.kind == "decision" && r.path.as_deref() == Some("/v1/items/slow/20000")
    });
    let started = std::time::Instant::now();
    h.stop();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the drain timeout bounds shutdown"
    );
    let reply = slow.join().unwrap();
    assert_ne!(reply.status, 200);
    let o = h.outcome(&decisions[0].request_id);
    assert_eq!(o.reason, "client-cancelled");
    assert!(!h.stderr().contains("record dropped"), "{}", h.stderr());
    assert!(
        clawgate(&["audit", "verify", "--audit", h.audit.to_str().unwrap()])
            .status
            .success()
    );
}
