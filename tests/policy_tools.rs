//! Policy changes seen before they land, end to end against the real binary:
//! `policy test` (the shipped cases, a broken case, malformed files),
//! `policy explain` (equal to the live decision recorded for real calls, on
//! the command line and from the admin API) and `policy diff` (each risk).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{Harness, Options, clawgate};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn shipped_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policy")
}

/// A copy of the shipped policy (without its tests) in a fresh directory.
fn policy_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["example.toml", "upstream-ca.pem"] {
        std::fs::copy(shipped_policy().join(name), dir.path().join(name)).unwrap();
    }
    dir
}

#[test]
fn the_shipped_policy_passes_its_tests() {
    let out = clawgate(&["policy", "test", shipped_policy().to_str().unwrap()]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("15 case(s), 15 passed, 0 failed"), "{all}");
    // Each rule of the shipped policy is named by some case.
    let cases = std::fs::read_to_string(shipped_policy().join("example.test.toml")).unwrap();
    for rule in [
        "read-items",
        "create-items",
        "no-admin",
        "no-export",
        "report-read",
    ] {
        assert!(cases.contains(&format!("rule = \"{rule}\"")), "{rule}");
    }
    // The test file is no policy: `policy check` loads the same directory.
    let out = clawgate(&["policy", "check", shipped_policy().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_broken_case_fails_with_the_decision_trace() {
    let dir = policy_copy();
    std::fs::write(
        dir.path().join("mine.test.toml"),
        r#"
[[case]]
name = "fine"
agent = "research"
method = "GET"
url = "https://clawgate/echo/v1/items"
expect = "allow"
rule = "read-items"

[[case]]
name = "wrong on purpose"
agent = "research"
method = "GET"
url = "https://clawgate/echo/v1/items/7"
expect = "deny"
rule = "no-admin"
"#,
    )
    .unwrap();
    let out = clawgate(&["policy", "test", dir.path().to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("ok    fine"), "{all}");
    assert!(
        all.contains("FAIL  wrong on purpose")
            && all.contains("mine.test.toml:10")
            && all.contains("expected deny, got allow")
            && all.contains("expected rule `no-admin`, got `read-items`"),
        "{all}"
    );
    // The trace: the decision and each rule with what it did.
    assert!(
        all.contains("decision:   allow (allowed)")
            && all.contains("rules, in order:")
            && all.contains(
                "read-items: allow GET,HEAD /v1/items /v1/items/**: path and method match"
            )
            && all.contains("no-admin: deny any method"),
        "{all}"
    );
    assert!(all.contains("2 case(s), 1 passed, 1 failed"), "{all}");
}

#[test]
fn malformed_test_files_name_file_and_line() {
    let cases = [
        (
            "typo.test.toml",
            "[[case]]\nname = \"x\"\nagent = \"research\"\nmethod = \"GET\"\nurll = \"https://clawgate/echo/v1\"\nexpect = \"allow\"\n",
            "typo.test.toml:5:",
            "unknown field `urll`",
        ),
        (
            "effect.test.toml",
            "[[case]]\nname = \"x\"\nagent = \"research\"\nmethod = \"GET\"\nurl = \"https://clawgate/echo/v1\"\nexpect = \"maybe\"\n",
            "effect.test.toml:6:",
            "unknown variant `maybe`",
        ),
        (
            "who.test.toml",
            "\n\n[[case]]\nname = \"both\"\nagent = \"research\"\nidentity = \"cn:x\"\nmethod = \"GET\"\nurl = \"https://clawgate/echo/v1\"\nexpect = \"allow\"\n",
            "who.test.toml:3:",
            "needs exactly one of `agent` and `identity`",
        ),
        (
            "ghost.test.toml",
            "[[case]]\nname = \"ghost\"\nagent = \"nobody\"\nmethod = \"GET\"\nurl = \"https://clawgate/echo/v1\"\nexpect = \"deny\"\n",
            "ghost.test.toml:1:",
            "unknown agent `nobody`",
        ),
    ];
    for (name, body, at, message) in cases {
        let dir = policy_copy();
        std::fs::write(dir.path().join(name), body).unwrap();
        let out = clawgate(&["policy", "test", dir.path().to_str().unwrap()]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {all}");
        assert!(all.contains(at) && all.contains(message), "{name}: {all}");
    }
    // No test file at all is an error too, not a silent pass.
    let dir = policy_copy();
    let out = clawgate(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no `*.test.toml` files found"));
}

/// The URL `policy explain` takes for a recorded call, from the record
/// alone (as `audit query` prints it).
fn url_of(record: &clawgate::audit::DecisionRecord) -> String {
    let path = record.path.clone().unwrap();
    match (&record.scope, &record.host) {
        (Some(_), Some(host)) => format!("https://{host}{path}"),
        _ => format!("https://clawgate{path}"),
    }
}

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
"#;

#[test]
fn explain_equals_the_live_decision_of_real_calls() {
    let mut h = Harness::with(Options {
        extra_policy: vec![("roles.toml", ROLES.to_owned())],
        agents: vec!["ops"],
        ..Options::default()
    });
    let calls = [
        ("research", "GET", "/echo/v1/items"),
        ("research", "GET", "/echo/v1/items/admin"),
        ("research", "GET", "/echo/v1/items/9%3Aexport"),
        ("research", "DELETE", "/echo/v1/items/9"),
        ("research", "GET", "/echo-report/v1/items"),
        ("reporter", "GET", "/echo-report/v1/items"),
        ("reporter", "POST", "/echo-report/v1/items"),
    ];
    for (agent, method, path) in calls {
        let reply = h.curl(Some(agent), &["-X", method, &format!("{}{path}", h.base())]);
        let record = h.decision(&reply.request_id());
        let url = url_of(&record);
        let out = clawgate(&[
            "policy",
            "explain",
            h.policy.to_str().unwrap(),
            method,
            &url,
            "--agent",
            agent,
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let what = format!("{agent} {method} {path} ({url}): {e}");
        assert_eq!(e["effect"].as_str(), record.decision.as_deref(), "{what}");
        assert_eq!(e["reason"].as_str(), Some(record.reason.as_str()), "{what}");
        assert_eq!(e["rule"].as_str(), record.rule.as_deref(), "{what}");
        assert_eq!(e["scope"].as_str(), record.scope.as_deref(), "{what}");
        assert_eq!(
            e["would_deny"].as_str(),
            record.would_deny.as_deref(),
            "{what}"
        );
    }

    // The admin API explains against the policy in force, with overrides.
    let ask = "/v1/policy/explain?agent=research&method=GET&url=https%3A%2F%2Fclawgate%2Fecho%2Fv1%2Fitems%2Fadmin";
    let reply = h.admin(Some("ops"), &[ask]);
    assert_eq!(reply.status, 200, "{}", reply.body_text());
    let e = reply.json();
    assert_eq!(e["effect"], "deny");
    assert_eq!(e["rule"], "no-admin");
    assert!(e["override"].is_null(), "{e}");
    let made = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-d",
            r#"{"kind":"isolate-agent","target":"research","reason":"explain test","expires_in":"1h"}"#,
            "/v1/overrides",
        ],
    );
    assert!(made.status < 300, "{}", made.body_text());
    let (cert, key) = h.agent_cert("ops");
    let out = clawgate(&[
        "policy",
        "explain",
        h.policy.to_str().unwrap(),
        "GET",
        "https://clawgate/echo/v1/items",
        "--agent",
        "research",
        "--admin",
        &format!("https://localhost:{}", h.admin_port),
        "--ca",
        h.certs.join("ca.pem").to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["effect"], "allow", "{e}");
    assert_eq!(e["override"]["kind"], "isolate-agent", "{e}");
    assert_eq!(e["override"]["reason_code"], "agent-isolated", "{e}");
    // Bad input is a clear 400, and nothing else.
    let reply = h.admin(
        Some("ops"),
        &["/v1/policy/explain?agent=research&method=get"],
    );
    assert_eq!(reply.status, 400, "{}", reply.body_text());
    h.stop();
}

const OLD: &str = r#"
[[agent]]
name = "a"
identities = ["spiffe://x/a"]
scopes = ["api", "pass"]

[[scope]]
name = "api"
upstream = "https://api.example.com"

[[scope.allow]]
id = "read"
methods = ["GET"]
paths = ["/v1/items/*"]

[[scope.deny]]
id = "no-admin"
paths = ["/v1/admin/**"]

[[scope]]
name = "pass"
upstream = "https://pass.example.com"
connect = "intercept"

[[exception]]
id = "e1"
agent = "a"
scopes = ["api"]
reason = "incident 7"
approved_by = "lead"
expires = "EXP1"
"#;

fn rfc3339_in(hours: u64) -> String {
    let t = SystemTime::now() + Duration::from_secs(hours * 3600);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[test]
fn diff_flags_each_risk() {
    let old = tempfile::tempdir().unwrap();
    let new = tempfile::tempdir().unwrap();
    let old_text = OLD.replace("EXP1", &rfc3339_in(24));
    std::fs::write(old.path().join("p.toml"), &old_text).unwrap();
    let new_text = old_text
        .replace("methods = [\"GET\"]", "methods = [\"GET\", \"DELETE\"]")
        .replace(
            "paths = [\"/v1/items/*\"]",
            "paths = [\"/v1/items/*\", \"/v1/**\"]",
        )
        .replace(
            "[[scope.deny]]\nid = \"no-admin\"\npaths = [\"/v1/admin/**\"]\n",
            "",
        )
        .replace(
            "upstream = \"https://api.example.com\"",
            "upstream = \"https://api.example.com\"\nallow_private = [\"10.0.0.0/8\"]",
        )
        .replace("connect = \"intercept\"", "connect = \"tunnel\"")
        .replace(&rfc3339_in(24), &rfc3339_in(72));
    std::fs::write(new.path().join("p.toml"), &new_text).unwrap();
    let out = clawgate(&[
        "policy",
        "diff",
        old.path().to_str().unwrap(),
        new.path().to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let changes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let flagged = |risk: &str, subject: &str| {
        changes
            .iter()
            .any(|c| c["risk"] == risk && c["subject"] == subject)
    };
    let all = serde_json::to_string_pretty(&changes).unwrap();
    assert!(flagged("widens-methods", "rule api/read"), "{all}");
    assert!(flagged("allow-private", "scope api"), "{all}");
    assert!(flagged("tunnel", "scope pass"), "{all}");
    assert!(flagged("removed-deny", "rule api/no-admin"), "{all}");
    assert!(flagged("longer-exception", "exception e1"), "{all}");
    // Paths alone widen too.
    std::fs::write(
        new.path().join("p.toml"),
        old_text.replace(
            "paths = [\"/v1/items/*\"]",
            "paths = [\"/v1/items/*\", \"/v1/**\"]",
        ),
    )
    .unwrap();
    let out = clawgate(&[
        "policy",
        "diff",
        old.path().to_str().unwrap(),
        new.path().to_str().unwrap(),
    ]);
    let all = text(&out);
    assert!(
        all.contains("changed  rule api/read:") && all.contains("RISK widens-paths"),
        "{all}"
    );
    assert!(all.contains("1 change(s), 1 flagged"), "{all}");
    // The same directory twice: nothing.
    let out = clawgate(&[
        "policy",
        "diff",
        old.path().to_str().unwrap(),
        old.path().to_str().unwrap(),
    ]);
    assert!(text(&out).contains("0 change(s), 0 flagged"));
}
