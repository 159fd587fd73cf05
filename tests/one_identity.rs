//! One identity per certificate: a client certificate from clawgate's own CA
//! that carries two SPIFFE identities (an agent's and an admin's) is refused
//! in the handshake on every listener that asks for a certificate, and each
//! refusal is an `identity-ambiguous` record. Real curl against the real
//! binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;

use clawgate::certs;
use common::{Harness, Options, clawgate};

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
"#;

/// Issues, with the agent CA, a certificate naming both `research` and
/// `ops`; returns its (cert, key) paths.
fn dual_identity_cert(h: &Harness) -> (String, String) {
    let ca = certs::read_pair(&h.certs, "ca.pem", "ca-key.pem").unwrap();
    let mut spec = certs::agent_spec("research", 1).unwrap();
    spec.sans.extend(certs::agent_spec("ops", 1).unwrap().sans);
    let (pem, _) = certs::issue(&ca, &spec).unwrap();
    let cert = h.dir.path().join("dual.pem");
    let key = h.dir.path().join("dual-key.pem");
    std::fs::write(&cert, &pem.cert).unwrap();
    std::fs::write(&key, pem.key_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn a_certificate_with_two_identities_is_refused_on_every_listener() {
    let h = Harness::with(Options {
        extra_policy: vec![("roles.toml", ROLES.to_owned())],
        agents: vec!["ops"],
        serve_args: vec!["--token-listen".into(), "127.0.0.1:0".into()],
        ..Options::default()
    });
    // Each identity alone works where it belongs.
    let ok = h.curl(
        Some("research"),
        &[&format!("{}/echo/v1/items/7", h.base())],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    let ok = h.admin(Some("ops"), &["/metrics"]);
    assert_eq!(ok.status, 200, "{ok:?}");

    let (cert, key) = dual_identity_cert(&h);
    let with_dual = |url: String| {
        common::curl(&[
            "--cacert".into(),
            h.certs.join("ca.pem").display().to_string(),
            "--cert".into(),
            cert.clone(),
            "--key".into(),
            key.clone(),
            url,
        ])
    };
    let seen_before = h.seen().len();
    let agent = with_dual(format!("{}/echo/v1/items/7", h.base()));
    assert_eq!(
        agent.status, 0,
        "no HTTP answer on the agent listener: {agent:?}"
    );
    assert_ne!(agent.exit, 0);
    let admin = with_dual(format!("https://localhost:{}/metrics", h.admin_port));
    assert_eq!(
        admin.status, 0,
        "no HTTP answer on the admin listener: {admin:?}"
    );
    assert_ne!(admin.exit, 0);
    assert_eq!(h.seen().len(), seen_before, "nothing was forwarded");

    for listener in ["agent listener", "admin listener"] {
        let records = h.wait_for(listener, |r| {
            r.reason == "identity-ambiguous"
                && r.detail.as_deref().is_some_and(|d| d.starts_with(listener))
        });
        let record = &records[0];
        assert_eq!(record.mode.as_deref(), Some("tls"));
        assert_eq!(record.decision.as_deref(), Some("deny"));
        assert!(
            record
                .detail
                .as_deref()
                .unwrap()
                .contains("more than one clawgate identity"),
            "{record:?}"
        );
        assert_eq!(record.agent, None, "no identity is taken from it");
    }

    // The token listener asks for no certificate, so the dual certificate
    // proves nothing there: without a token the answer asks for one.
    let token_port: u16 = h
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("clawgate: token proxy on https://"))
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let token = common::curl(&[
        "--proxy".into(),
        format!("https://localhost:{token_port}"),
        "--proxy-cacert".into(),
        h.certs.join("ca.pem").display().to_string(),
        "--proxy-cert".into(),
        cert.clone(),
        "--proxy-key".into(),
        key.clone(),
        format!("http://{}/v1/items/7", h.echo.addr),
    ]);
    assert_eq!(token.status, 407, "{token:?}");
    assert_eq!(h.decision(&token.request_id()).reason, "run-token-missing");
    assert_eq!(h.seen().len(), seen_before);

    // And the findings name each refusal.
    let out = clawgate(&[
        "audit",
        "findings",
        "--audit",
        h.audit.to_str().unwrap(),
        "--json",
    ]);
    let findings = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        findings
            .lines()
            .filter(|l| l.contains("\"kind\":\"identity-ambiguous\""))
            .count(),
        2,
        "{findings}"
    );
}
