//! End-to-end: governance that tells the truth. A revoked serial binds the
//! admin API and vending too; an override's target is checked and its
//! serial normalised; lapses are recorded before any decision that relies
//! on them; an unchanged reload records nothing; `policy check` reports
//! every problem; `policy status` says why it drifted; `token issue` checks
//! names against the policy. The real binary, curl and openssl; every case
//! checks the decision log as well as the answer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use clawgate::audit::DecisionRecord;
use common::{Harness, Options, clawgate};

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops", "spiffe://clawgate.local/agent/ops2"]
auditors = ["spiffe://clawgate.local/agent/watcher"]
"#;

fn harness(policy: &str) -> Harness {
    Harness::with(Options {
        extra_policy: vec![("gov.toml", format!("{ROLES}{policy}"))],
        agents: vec!["ops", "ops2", "watcher"],
        ..Options::default()
    })
}

fn post_override(h: &Harness, who: &str, body: &str) -> common::Reply {
    h.admin(
        Some(who),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            "/v1/overrides",
        ],
    )
}

/// The serial of an issued certificate, as openssl prints it (uppercase hex).
fn serial_of(h: &Harness, who: &str) -> String {
    let (cert, _) = h.agent_cert(who);
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().strip_prefix("serial=").unwrap().to_owned()
}

/// `AB12CD` as `ab:12:cd`.
fn with_colons(hex: &str) -> String {
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    };
    hex.as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(":")
}

fn normalised(hex: &str) -> String {
    let lower = hex.to_ascii_lowercase().replace(':', "");
    let trimmed = lower.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.to_owned()
    }
}

fn count(h: &Harness, pred: impl Fn(&DecisionRecord) -> bool) -> usize {
    h.records().iter().filter(|r| pred(r)).count()
}

fn verify(h: &Harness) {
    let out = clawgate(&["audit", "verify", "--audit", h.audit.to_str().unwrap()]);
    assert!(out.status.success(), "audit verify: {out:?}");
}

fn policy_status(h: &Harness, who: &str) -> Output {
    let (cert, key) = h.agent_cert(who);
    Command::new(common::BIN)
        .args(["policy", "status", "--admin"])
        .arg(format!("https://localhost:{}", h.admin_port))
        .arg("--ca")
        .arg(h.certs.join("ca.pem"))
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap()
}

#[test]
fn a_revoked_admin_serial_is_refused_on_every_admin_endpoint_and_self_revocation_is_refused() {
    let h = harness("");
    let ops2 = serial_of(&h, "ops2");

    // Revoking one's own serial would lock this admin out: refused, named,
    // and nothing is made.
    let own = serial_of(&h, "ops");
    let r = post_override(
        &h,
        "ops",
        &format!(
            r#"{{"kind":"revoke-serial","target":"{}","reason":"oops","expires_in":"1h"}}"#,
            with_colons(&own)
        ),
    );
    assert_eq!(r.status, 400, "{r:?}");
    let message = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        message.contains("it is the serial of the certificate making this request"),
        "{message}"
    );
    assert_eq!(count(&h, |r| r.kind == "override"), 0);
    assert_eq!(h.admin(Some("ops"), &["/healthz"]).status, 200);

    // Another admin revokes ops2's serial, written with colons.
    let r = post_override(
        &h,
        "ops",
        &format!(
            r#"{{"kind":"revoke-serial","target":"{}","reason":"laptop stolen","expires_in":"1h"}}"#,
            with_colons(&ops2).to_ascii_uppercase()
        ),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_owned();

    let delete = format!("/v1/overrides/{id}");
    let endpoints: Vec<Vec<&str>> = vec![
        vec!["/healthz"],
        vec!["/readyz"],
        vec!["/metrics"],
        vec!["/v1/audit"],
        vec!["/v1/policy/status"],
        vec!["/v1/overrides"],
        vec!["-X", "POST", "/v1/policy/reload"],
        vec![
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"kind":"isolate-agent","target":"research","reason":"x","expires_in":"1h"}"#,
            "/v1/overrides",
        ],
        vec!["-X", "DELETE", delete.as_str()],
    ];
    for args in &endpoints {
        let r = h.admin(Some("ops2"), args);
        assert_eq!(r.status, 403, "{args:?}: {r:?}");
        assert_eq!(r.json()["reason"], "serial-revoked", "{args:?}");
        let record = h.decision(&r.request_id());
        assert_eq!(record.reason, "serial-revoked");
        assert_eq!(record.decision.as_deref(), Some("deny"));
        assert_eq!(record.mode.as_deref(), Some("admin"));
        let path = args.last().unwrap();
        assert_eq!(record.path.as_deref(), Some(*path));
        assert!(record.cert_fp.is_some(), "{record:?}");
        assert!(
            record
                .detail
                .as_deref()
                .unwrap()
                .starts_with(&format!("override {id}")),
            "{record:?}"
        );
    }
    assert_eq!(
        count(&h, |r| r.reason == "serial-revoked"
            && r.mode.as_deref() == Some("admin")),
        endpoints.len()
    );
    // The revoked admin changed nothing: the override stands, no other was made.
    assert_eq!(count(&h, |r| r.kind == "override"), 1);
    let listed = h.admin(Some("watcher"), &["/v1/overrides"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // Other admins are unaffected.
    assert_eq!(h.admin(Some("ops"), &["/healthz"]).status, 200);
    assert_eq!(h.admin(Some("watcher"), &["/metrics"]).status, 200);
    verify(&h);
}

#[test]
fn a_revoked_agent_serial_is_refused_credential_vending() {
    let h = harness("");
    let serial = serial_of(&h, "research");
    let r = post_override(
        &h,
        "ops",
        &format!(
            r#"{{"kind":"revoke-serial","target":"{serial}","reason":"key leaked","expires_in":"1h"}}"#
        ),
    );
    assert_eq!(r.status, 201, "{r:?}");
    for scope in ["echo", "no-such-scope"] {
        let r = h.curl(
            Some("research"),
            &[&format!("{}/v1/credentials/aws/{scope}", h.base())],
        );
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(r.json()["reason"], "serial-revoked");
        let record = h.decision(&r.request_id());
        assert_eq!(record.reason, "serial-revoked");
        assert_eq!(record.mode.as_deref(), Some("vend"));
        assert_eq!(record.agent.as_deref(), Some("research"));
        assert!(record.detail.as_deref().unwrap().starts_with("override "));
    }
    verify(&h);
}

#[test]
fn override_targets_are_validated_serials_normalised_and_the_answer_says_what_is_in_force() {
    let h = harness("");
    // Unknown agent and scope: 400 naming them, nothing made.
    let r = post_override(
        &h,
        "ops",
        r#"{"kind":"isolate-agent","target":"reserch","reason":"typo","expires_in":"1h"}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("unknown agent `reserch`"),
        "{r:?}"
    );
    let r = post_override(
        &h,
        "ops",
        r#"{"kind":"disable-scope","target":"ecco","reason":"typo","expires_in":"1h"}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("unknown scope `ecco`"),
        "{r:?}"
    );
    // A serial that is not hex: refused, not stored as whatever hex it holds.
    let r = post_override(
        &h,
        "ops",
        r#"{"kind":"revoke-serial","target":"zz-not-hex","reason":"x","expires_in":"1h"}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("serial `zz-not-hex` must be hex"),
        "{r:?}"
    );
    assert_eq!(count(&h, |r| r.kind == "override"), 0);
    assert_eq!(
        h.admin(Some("ops"), &["/v1/overrides"]).json(),
        serde_json::json!([])
    );

    // A serial with colons, upper case: stored and echoed normalised.
    let serial = serial_of(&h, "reporter");
    let given = with_colons(&serial).to_ascii_uppercase();
    let r = post_override(
        &h,
        "ops",
        &format!(r#"{{"kind":"revoke-serial","target":"{given}","reason":"x","expires_in":"1h"}}"#),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let made = r.json();
    assert_eq!(made["target"], normalised(&serial).as_str(), "{made}");
    assert_eq!(made["target_as_given"], given.as_str());
    assert_eq!(made["forced"], false);
    assert!(
        made["effect"]
            .as_str()
            .unwrap()
            .contains("admin api request"),
        "{made}"
    );
    assert_eq!(made["in_force"].as_array().unwrap().len(), 1, "{made}");
    let r = h.curl(
        Some("reporter"),
        &[&format!("{}/echo-report/v1/items", h.base())],
    );
    assert_eq!(r.json()["reason"], "serial-revoked", "{r:?}");

    // An agent about to be added: only with `force`, and the record says so.
    let r = post_override(
        &h,
        "ops",
        r#"{"kind":"isolate-agent","target":"newcomer","reason":"pre-emptive","expires_in":"1h","force":true}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let made = r.json();
    assert_eq!(made["forced"], true);
    let in_force: Vec<&str> = made["in_force"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(in_force, ["revoke-serial", "isolate-agent"], "{made}");
    let created = h.wait_for("forced override", |r| {
        r.kind == "override" && r.detail.as_deref().is_some_and(|d| d.contains("forced"))
    });
    assert!(
        created[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("forced: the policy in force does not define `newcomer`"),
        "{created:?}"
    );
    verify(&h);
}

/// The record sequence of the first record matching `pred`.
fn seq_of(records: &[DecisionRecord], pred: impl Fn(&DecisionRecord) -> bool) -> Option<i64> {
    records.iter().find(|r| pred(r)).map(|r| r.seq)
}

#[test]
fn lapses_are_recorded_at_the_expiry_before_any_decision_that_follows_it() {
    // Whole seconds, as the policy file writes it.
    let expires_text = clawgate::policy::rfc3339(SystemTime::now() + Duration::from_secs(8));
    let expires = SystemTime::from(
        time::OffsetDateTime::parse(
            &expires_text,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap(),
    );
    let policy = format!(
        r#"
[[scope]]
name = "extra-echo"
upstream = "https://{{echo}}"
route = "extra-echo"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]

[[scope.allow]]
paths = ["/v1/**"]

[[exception]]
id = "inc-8"
agent = "research"
scopes = ["extra-echo"]
reason = "backfill"
approved_by = "alice"
expires = "{expires_text}"
"#
    );
    let h = harness(&policy);
    let r = post_override(
        &h,
        "ops",
        r#"{"kind":"isolate-agent","target":"reporter","reason":"incident","expires_in":"4s"}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");

    // Calls keep coming across both expiries.
    let started = Instant::now();
    let (mut reporter_back, mut research_refused) = (false, false);
    while !(reporter_back && research_refused) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "lapses never took effect"
        );
        let r = h.curl(
            Some("reporter"),
            &[&format!("{}/echo-report/v1/items", h.base())],
        );
        reporter_back |= r.status == 200;
        let r = h.curl(
            Some("research"),
            &[&format!("{}/extra-echo/v1/a", h.base())],
        );
        research_refused |= r.status == 403;
    }
    let records = h.records();
    let lapsed_override = seq_of(&records, |r| {
        r.kind == "override" && r.detail.as_deref().is_some_and(|d| d.starts_with("lapsed"))
    })
    .expect("override lapse recorded");
    let first_allowed_after = seq_of(&records, |r| {
        r.kind == "decision"
            && r.agent.as_deref() == Some("reporter")
            && r.decision.as_deref() == Some("allow")
    })
    .unwrap();
    assert!(
        lapsed_override < first_allowed_after,
        "the override's lapse ({lapsed_override}) comes before the first call it lets through ({first_allowed_after})"
    );
    let lapsed_exception = seq_of(&records, |r| r.reason == "exception-expired").unwrap();
    let first_refused_after = seq_of(&records, |r| {
        r.kind == "decision"
            && r.agent.as_deref() == Some("research")
            && r.reason == "no-matching-scope"
    })
    .unwrap();
    assert!(
        lapsed_exception < first_refused_after,
        "the exception's lapse ({lapsed_exception}) comes before the first call it refuses ({first_refused_after})"
    );
    // Recorded by the timer at the expiry, not when a call happened along.
    let lapse = records
        .iter()
        .find(|r| r.reason == "exception-expired")
        .unwrap();
    let at = time::OffsetDateTime::parse(&lapse.ts, &time::format_description::well_known::Rfc3339)
        .unwrap();
    let late = at - time::OffsetDateTime::from(expires);
    assert!(
        late >= time::Duration::ZERO && late < time::Duration::milliseconds(900),
        "lapse recorded {late} after the expiry"
    );
    assert_eq!(count(&h, |r| r.reason == "exception-expired"), 1);
    verify(&h);
}

#[test]
fn a_reload_with_the_digest_in_force_records_nothing_and_the_start_up_load_is_counted() {
    let h = harness("");
    let loads = |h: &Harness| count(h, |r| r.reason == "policy-loaded");
    assert_eq!(loads(&h), 1, "the start-up load");
    let metrics = h.admin(Some("watcher"), &["/metrics"]).body_text();
    assert!(
        metrics.contains("\nclawgate_policy_loads_total 1\n"),
        "{metrics}"
    );

    let r = h.admin(Some("ops"), &["-X", "POST", "/v1/policy/reload"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["changed"], false);
    h.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(loads(&h), 1, "nothing changed, nothing recorded");

    // A real change is loaded and recorded once.
    h.write_policy(
        "gov.toml",
        &format!("{ROLES}\n[[agent]]\nname = \"later\"\nidentities = [\"cn:later\"]\n"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while loads(&h) < 2 {
        assert!(Instant::now() < deadline, "the edit was not loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = h.admin(Some("ops"), &["-X", "POST", "/v1/policy/reload"]);
    assert_eq!(r.json()["changed"], false, "{r:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(loads(&h), 2);
    let metrics = h.admin(Some("watcher"), &["/metrics"]).body_text();
    assert!(
        metrics.contains("\nclawgate_policy_loads_total 2\n"),
        "{metrics}"
    );
    verify(&h);
}

#[test]
fn policy_check_lists_every_problem_and_the_rejected_record_and_status_say_the_same() {
    let h = harness("");
    // Three independent errors in one file: an unknown field, a bad rate,
    // an unknown scope. And an agent naming the scope with the typo, which
    // must not be reported as unknown.
    let broken = format!(
        r#"{ROLES}
[[agent]]
name = "newbie"
identities = ["cn:newbie"]
scopes = ["typo-scope", "ghost"]

[[scope]]
name = "typo-scope"
upstream = "https://typo.example"
colour = "red"

[[scope]]
name = "slow"
upstream = "https://slow.example"
rate = "often"
"#
    );
    let dir = h.dir.path().join("check");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("gov.toml"), &broken).unwrap();
    let out = clawgate(&["policy", "check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].contains("unknown scope `ghost` in agent `newbie`"),
        "{stdout}"
    );
    assert!(lines[1].contains("unknown field `colour`"), "{stdout}");
    assert!(lines[2].contains("gov.toml:19:8:"), "{stdout}");
    assert!(!stdout.contains("`typo-scope` in agent"), "{stdout}");

    // The same problems in the rejection record and in `policy status`.
    h.write_policy("gov.toml", &broken);
    let rejected = h.wait_for("policy-rejected", |r| r.reason == "policy-rejected");
    let detail = rejected[0].detail.as_deref().unwrap();
    assert!(detail.contains("unknown scope `ghost`"), "{detail}");
    assert!(detail.contains("unknown field `colour`"), "{detail}");
    assert!(detail.contains("gov.toml:19:8:"), "{detail}");
    assert!(!detail.contains("`typo-scope` in agent"), "{detail}");
    let out = policy_status(&h, "watcher");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("DRIFTED: the files on disk do not validate"),
        "{text}"
    );
    assert!(
        text.contains("unknown field `colour`") && text.contains("gov.toml:19:8:"),
        "{text}"
    );
    assert!(!text.contains("`typo-scope` in agent"), "{text}");
}

#[test]
fn policy_status_says_an_override_is_why_it_drifted() {
    let h = harness("");
    assert!(String::from_utf8_lossy(&policy_status(&h, "watcher").stdout).starts_with("in sync"));
    let r = post_override(
        &h,
        "ops",
        r#"{"kind":"isolate-agent","target":"research","reason":"INC-42","expires_in":"2h"}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let expires = r.json()["expires"].as_str().unwrap().to_owned();
    let out = policy_status(&h, "watcher");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        format!("DRIFTED: 1 override in force: isolate agent research until {expires}"),
        "{text}"
    );
    assert_eq!(count(&h, |r| r.kind == "override"), 1);
}

#[test]
fn token_issue_refuses_names_the_policy_does_not_define() {
    let h = Harness::with(Options {
        start: false,
        ..Options::default()
    });
    let certs = h.certs.to_str().unwrap();
    let policy = h.policy.to_str().unwrap();
    let issue = |extra: &[&str]| {
        let mut args = vec!["token", "issue", "--certs", certs];
        args.extend_from_slice(extra);
        clawgate(&args)
    };
    let out = issue(&["--agent", "reserch", "--policy", policy]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown agent `reserch`"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "no token printed: {out:?}");
    let out = issue(&[
        "--agent",
        "research",
        "--scopes",
        "echo,ecco",
        "--policy",
        policy,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown scope `ecco`"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "no token printed: {out:?}");
    let out = issue(&[
        "--agent", "research", "--scopes", "echo", "--policy", policy,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split('.')
            .count(),
        3
    );
    // Without a policy: issued, with a warning.
    let out = issue(&["--agent", "reserch"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not checked against a policy"),
        "{out:?}"
    );
}
