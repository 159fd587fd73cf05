//! Every refusal is a record, end to end against the real binary: the
//! admin API's refusals (no role, an auditor asking for a change) and an
//! unknown certificate's, each with whose certificate it was.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;

use clawgate::audit::DecisionRecord;
use common::{Harness, Options, clawgate};

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
auditors = ["spiffe://clawgate.local/agent/watcher"]
"#;

fn harness() -> Harness {
    Harness::with(Options {
        extra_policy: vec![("roles.toml", ROLES.to_owned())],
        agents: vec!["ops", "watcher"],
        ..Options::default()
    })
}

fn the_record(h: &Harness, request_id: &str) -> DecisionRecord {
    let found: Vec<_> = h
        .records()
        .into_iter()
        .filter(|r| r.request_id == request_id)
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

#[test]
fn admin_api_refusals_are_records_with_role_identity_and_path() {
    let h = harness();
    // An agent's certificate: no role at all.
    let r = h.admin(Some("research"), &["/v1/policy/status"]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["reason"], "admin-role-required");
    assert_eq!(r.json()["error"], "no admin or auditor role");
    let id = r.header("x-clawgate-request-id").unwrap();
    let rec = the_record(&h, &id);
    assert_eq!(rec.kind, "decision");
    assert_eq!(rec.mode.as_deref(), Some("admin"));
    assert_eq!(rec.decision.as_deref(), Some("deny"));
    assert_eq!(rec.reason, "admin-role-required");
    assert_eq!(rec.method.as_deref(), Some("GET"));
    assert_eq!(rec.path.as_deref(), Some("/v1/policy/status"));
    assert!(
        rec.cert_fp.as_deref().is_some_and(|f| f.len() == 64),
        "{rec:?}"
    );
    let detail = rec.detail.unwrap();
    assert!(detail.contains("no admin or auditor role"), "{detail}");
    assert!(
        detail.contains("spiffe://clawgate.local/agent/research"),
        "{detail}"
    );

    // An auditor asking for a change: refused, recorded, nothing changed.
    let body = r#"{"kind":"isolate-agent","target":"research","reason":"x","expires_in":"1h"}"#;
    let r = h.admin(
        Some("watcher"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            "/v1/overrides",
        ],
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["error"], "this needs the admin role");
    let rec = the_record(&h, &r.header("x-clawgate-request-id").unwrap());
    assert_eq!(rec.reason, "admin-role-required");
    assert_eq!(rec.method.as_deref(), Some("POST"));
    assert_eq!(rec.path.as_deref(), Some("/v1/overrides"));
    let detail = rec.detail.unwrap();
    assert!(detail.contains("the caller is an auditor"), "{detail}");
    assert!(
        detail.contains("spiffe://clawgate.local/agent/watcher"),
        "{detail}"
    );
    assert!(!h.records().iter().any(|r| r.kind == "override"));
    // What an auditor may read is not refused, and not recorded as one.
    assert_eq!(h.admin(Some("watcher"), &["/v1/policy/status"]).status, 200);
    let refusals = h
        .records()
        .iter()
        .filter(|r| r.reason == "admin-role-required")
        .count();
    assert_eq!(refusals, 2);
    // The records joined the chain.
    let out = clawgate(&["audit", "verify", "--audit", h.audit.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// `policy status` answers 0 in sync, 2 drifted, 1 on error: a usage error
/// is 1 (clap's own 2 would read as drift), help is 0.
#[test]
fn a_usage_error_exits_1_not_the_drifted_2() {
    let out = clawgate(&[
        "policy",
        "status",
        "--cert",
        "x",
        "--key",
        "y",
        "--no-such-flag",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = clawgate(&["policy", "status", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = clawgate(&[
        "policy",
        "status",
        "--cert",
        "no-such.pem",
        "--key",
        "no-such.pem",
    ]);
    assert_eq!(out.status.code(), Some(1), "an error: {out:?}");
}

#[test]
fn an_unknown_certificates_record_names_its_sans() {
    let h = harness();
    let r = h.curl(Some("intruder"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(r.status, 403, "{r:?}");
    let rec = the_record(&h, &r.header("x-clawgate-request-id").unwrap());
    assert_eq!(rec.reason, "unknown-agent");
    assert!(rec.cert_fp.is_some(), "{rec:?}");
    let detail = rec.detail.unwrap_or_default();
    assert!(
        detail.contains("certificate names [spiffe://clawgate.local/agent/intruder"),
        "{detail}"
    );
}

/// The runbook's certificate steps: `certs admin` makes an operator's
/// certificate and prints the `[roles]` line that works as printed;
/// `certs agent --rotate` replaces a certificate and names the old serial.
#[test]
fn certs_admin_prints_a_roles_line_that_works_and_rotate_names_the_old_serial() {
    let mut h = Harness::with(Options {
        start: false,
        ..Options::default()
    });
    let dir = h.certs.to_str().unwrap().to_owned();
    let out = clawgate(&["certs", "admin", "oncall", "--dir", &dir]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let roles = &stdout[stdout.find("[roles]").unwrap_or_else(|| panic!("{stdout}"))..];
    assert_eq!(
        roles.trim(),
        "[roles]\nadmins = [\"spiffe://clawgate.local/agent/oncall\"]"
    );
    std::fs::write(h.policy.join("roles.toml"), roles).unwrap();
    h.serve(&[]);
    let r = h.admin(Some("oncall"), &["-X", "POST", "/v1/policy/reload"]);
    assert_eq!(r.status, 200, "the printed line makes an admin: {r:?}");

    let serial = |out: &str| -> (String, String) {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("serial: "))
            .unwrap_or_else(|| panic!("{out}"));
        let (new, old) = line.split_once(" (replaces ").unwrap();
        (new.to_owned(), old.trim_end_matches(')').to_owned())
    };
    let before = std::fs::read(h.certs.join("agents/research.pem")).unwrap();
    let out = clawgate(&["certs", "agent", "research", "--dir", &dir, "--rotate"]);
    assert!(out.status.success(), "{out:?}");
    let (new, old) = serial(&String::from_utf8_lossy(&out.stdout));
    assert_ne!(new, old);
    assert_ne!(
        std::fs::read(h.certs.join("agents/research.pem")).unwrap(),
        before
    );
    // The new certificate works; the old serial is what a revocation names.
    let r = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(r.status, 200, "{r:?}");
    let rec = h.decision(&r.header("x-clawgate-request-id").unwrap());
    assert_eq!(rec.agent.as_deref(), Some("research"));
    // Nothing to rotate: an error, nothing written.
    let out = clawgate(&["certs", "agent", "nobody", "--dir", &dir, "--rotate"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!h.certs.join("agents/nobody.pem").exists());
}

/// `certs revoke` keeps the CRL that `serve --crl` reloads: a rotated-out
/// certificate, revoked by its file, is refused at the handshake (and
/// recorded), while the new one works.
#[test]
fn certs_revoke_maintains_the_crl_serve_reloads() {
    let mut h = Harness::with(Options {
        start: false,
        ..Options::default()
    });
    let dir = h.certs.to_str().unwrap().to_owned();
    let crl = h.path("crl.pem");
    let crl_s = crl.to_str().unwrap().to_owned();
    // Bad input: a clear error, no CRL written.
    let out = clawgate(&["certs", "revoke", "not-hex", "--dir", &dir, "--crl", &crl_s]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be hexadecimal"));
    assert!(!crl.exists());
    let out = clawgate(&["certs", "revoke", "0a:0b", "--dir", &dir, "--crl", &crl_s]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked 0a0b"));
    h.serve(&["--crl".into(), crl_s.clone()]);

    let old = h.path("old-research.pem");
    let old_key = h.path("old-research-key.pem");
    std::fs::copy(h.certs.join("agents/research.pem"), &old).unwrap();
    std::fs::copy(h.certs.join("agents/research-key.pem"), &old_key).unwrap();
    let with_old = || {
        common::curl(&[
            "--cacert".into(),
            h.certs.join("ca.pem").display().to_string(),
            "--cert".into(),
            old.display().to_string(),
            "--key".into(),
            old_key.display().to_string(),
            format!("{}/echo/v1/items", h.base()),
        ])
    };
    assert_eq!(with_old().status, 200);
    let out = clawgate(&["certs", "agent", "research", "--dir", &dir, "--rotate"]);
    assert!(out.status.success(), "{out:?}");
    let loads = |h: &Harness| {
        h.records()
            .iter()
            .filter(|r| r.reason == "certs-loaded")
            .count()
    };
    let before = loads(&h);
    let out = clawgate(&[
        "certs",
        "revoke",
        old.to_str().unwrap(),
        "--dir",
        &dir,
        "--crl",
        &crl_s,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("lists 2 serial(s)"),
        "{out:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while loads(&h) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the CRL was not reloaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_ne!(with_old().status, 200);
    h.wait_for("the revoked handshake", |r| {
        r.reason == "tls-rejected"
            && r.detail
                .as_deref()
                .unwrap_or_default()
                .contains("certificate revoked")
    });
    let r = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(r.status, 200, "the rotated certificate works: {r:?}");
}
