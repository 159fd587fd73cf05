//! End-to-end governance: rate limits, time-boxed exceptions, hot reload,
//! overrides, the admin API and its roles, `policy status`, and `/metrics`
//! read by prometheus_client's own parser. The real binary, real TLS, curl;
//! every case checks the decision log as well as the response.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clawgate::audit::DecisionRecord;
use common::{CANARY, Harness, Options, clawgate};

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
auditors = ["spiffe://clawgate.local/agent/watcher"]
"#;

/// A scope on the echo upstream, reached at `/<name>/…`, allowing `/v1/**`.
fn scope(name: &str, extra: &str) -> String {
    format!(
        r#"
[[scope]]
name = "{name}"
upstream = "https://{{echo}}"
route = "{name}"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]
{extra}

[[scope.allow]]
id = "all"
paths = ["/v1/**"]
"#
    )
}

fn agent(name: &str, scopes: &str, extra: &str) -> String {
    format!(
        r#"
[[agent]]
name = "{name}"
identities = ["spiffe://clawgate.local/agent/{name}"]
scopes = [{scopes}]
{extra}
"#
    )
}

fn harness(policy: String, agents: &[&'static str]) -> Harness {
    let mut all = vec!["ops", "watcher"];
    all.extend_from_slice(agents);
    Harness::with(Options {
        extra_policy: vec![("gov.toml", format!("{ROLES}{policy}"))],
        agents: all,
        ..Options::default()
    })
}

fn get(h: &Harness, agent: &str, path: &str) -> common::Reply {
    h.curl(Some(agent), &[&format!("{}{path}", h.base())])
}

/// The Python with prometheus_client (`.ci/run` makes it).
fn python() -> PathBuf {
    common::venv_python("prometheus_client")
}

fn rfc3339(t: SystemTime) -> String {
    clawgate::policy::rfc3339(t)
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

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(h: &Harness, pred: impl Fn(&DecisionRecord) -> bool) -> usize {
    h.records().iter().filter(|r| pred(r)).count()
}

#[test]
fn a_burst_passes_then_the_next_call_gets_429_with_retry_after() {
    let policy = format!(
        "{}{}{}",
        agent("limited", "\"limited-echo\"", ""),
        agent("chatty", "\"limited-echo\"", "rate = \"2/hour\""),
        scope("limited-echo", "rate = \"1/min\"\nburst = 3"),
    );
    let h = harness(policy, &["limited", "chatty"]);
    for _ in 0..3 {
        let r = get(&h, "limited", "/limited-echo/v1/a");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = get(&h, "limited", "/limited-echo/v1/a");
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.json()["reason"], "rate-limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    let record = h.decision(&r.request_id());
    assert_eq!(record.reason, "rate-limited");
    assert_eq!(record.decision.as_deref(), Some("deny"));
    assert_eq!(record.agent.as_deref(), Some("limited"));
    assert_eq!(record.scope.as_deref(), Some("limited-echo"));
    assert!(
        record
            .detail
            .as_deref()
            .unwrap()
            .starts_with("scope rate limit"),
        "{record:?}"
    );
    assert_eq!(h.seen().len(), 3, "the refused call was not forwarded");

    // Keys are agents: another agent has its own budget in the scope, and
    // its own overall rate refuses first.
    for _ in 0..2 {
        assert_eq!(get(&h, "chatty", "/limited-echo/v1/a").status, 200);
    }
    let r = get(&h, "chatty", "/limited-echo/v1/a");
    assert_eq!(r.status, 429);
    let record = h.decision(&r.request_id());
    assert!(
        record
            .detail
            .as_deref()
            .unwrap()
            .starts_with("agent rate limit"),
        "{record:?}"
    );
    assert_eq!(count(&h, |r| r.reason == "rate-limited"), 2);
}

#[test]
fn an_exception_grants_until_its_expiry_and_its_lapse_is_recorded_once() {
    let expires = SystemTime::now() + Duration::from_secs(6);
    let policy = format!(
        r#"{}
[[exception]]
id = "inc-7"
agent = "research"
scopes = ["extra-echo"]
reason = "backfill after incident 7"
approved_by = "alice"
ticket = "OPS-7"
expires = "{}"
"#,
        scope("extra-echo", ""),
        rfc3339(expires)
    );
    let h = harness(policy, &[]);
    let r = get(&h, "research", "/extra-echo/v1/a");
    assert_eq!(r.status, 200, "{r:?}");
    let record = h.decision(&r.request_id());
    assert_eq!(record.exception.as_deref(), Some("inc-7"));
    assert_eq!(record.scope.as_deref(), Some("extra-echo"));
    // A call within the agent's own scopes relies on no exception.
    let r = get(&h, "research", "/echo/v1/items");
    assert_eq!(h.decision(&r.request_id()).exception, None);
    assert_eq!(
        count(&h, |r| r.reason == "exception-expired"),
        0,
        "no lapse before the expiry"
    );

    let until = expires + Duration::from_millis(300);
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
    let r = get(&h, "research", "/extra-echo/v1/a");
    assert_eq!(r.status, 403, "{r:?}");
    let record = h.decision(&r.request_id());
    assert_eq!(record.reason, "no-matching-scope");
    assert_eq!(record.exception, None);

    let lapses = h.wait_for("exception lapse", |r| r.reason == "exception-expired");
    assert_eq!(lapses[0].exception.as_deref(), Some("inc-7"));
    assert_eq!(lapses[0].agent.as_deref(), Some("research"));
    assert_eq!(lapses[0].kind, "exception");
    std::thread::sleep(Duration::from_millis(2500));
    get(&h, "research", "/extra-echo/v1/a");
    assert_eq!(count(&h, |r| r.reason == "exception-expired"), 1);
    // Once across a restart too: the log remembers the lapse.
    let mut h = h;
    h.stop();
    h.serve(&[]);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(count(&h, |r| r.reason == "exception-expired"), 1);

    // `policy check` warns about the expired one, and refuses one without
    // an expiry or beyond the maximum.
    let dir = h.policy.to_str().unwrap().to_owned();
    let out = Command::new(common::BIN)
        .args(["policy", "check", &dir])
        .env("ECHO_API_TOKEN", CANARY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exception `inc-7` expired at"), "{stderr}");

    let far = rfc3339(SystemTime::now() + Duration::from_secs(8 * 86_400));
    let text = std::fs::read_to_string(h.policy.join("gov.toml")).unwrap();
    std::fs::write(
        h.policy.join("gov.toml"),
        text.replace(&rfc3339(expires), &far),
    )
    .unwrap();
    let out = clawgate(&["policy", "check", &dir]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("exception `inc-7` expires more than 7days ahead"),
        "{stdout}"
    );
    std::fs::write(
        h.policy.join("gov.toml"),
        text.replace(&format!("expires = \"{}\"", rfc3339(expires)), ""),
    )
    .unwrap();
    let out = clawgate(&["policy", "check", &dir]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("missing field `expires`"),
        "{out:?}"
    );
}

#[test]
fn a_reload_under_load_swaps_between_calls_and_a_broken_edit_keeps_the_last_good_policy() {
    let v1 = format!(
        "{}{}",
        agent("limited", "\"limited-echo\"", ""),
        scope("limited-echo", "")
    );
    let h = Arc::new(harness(v1.clone(), &["limited"]));
    assert_eq!(get(&h, "limited", "/limited-echo/v1/blocked").status, 200);
    let old_digest = h.records()[0].policy_digest.clone().unwrap();
    let out = policy_status(&h, "watcher");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("in sync"));

    // A client keeps calls in flight while the policy changes.
    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let h = Arc::clone(&h);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let r = get(&h, "research", "/echo/v1/items");
                seen.push((r.status, r.request_id()));
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    let v2 = v1.replace(
        "[[scope.allow]]",
        "[[scope.deny]]\nid = \"no-blocked\"\npaths = [\"/v1/blocked\"]\n\n[[scope.allow]]",
    );
    h.write_policy("gov.toml", &format!("{ROLES}{v2}"));
    wait_until("the edit takes effect", Duration::from_secs(10), || {
        get(&h, "limited", "/limited-echo/v1/blocked").status == 403
    });
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let seen = looping.join().unwrap();
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(
        seen.iter().all(|(status, _)| *status == 200),
        "a call failed across the swap: {seen:?}"
    );
    let records = h.records();
    let by_id: HashMap<&str, &DecisionRecord> = records
        .iter()
        .filter(|r| r.kind == "decision")
        .map(|r| (r.request_id.as_str(), r))
        .collect();
    let digests: Vec<&str> = seen
        .iter()
        .map(|(_, id)| by_id[id.as_str()].policy_digest.as_deref().unwrap())
        .collect();
    let new_digest = digests.last().unwrap().to_string();
    assert_ne!(new_digest, old_digest);
    assert_eq!(digests[0], old_digest);
    let swap = digests.iter().position(|d| *d == new_digest).unwrap();
    assert!(
        digests[swap..].iter().all(|d| *d == new_digest),
        "the digest changes once, at the swap: {digests:?}"
    );
    let loads: Vec<_> = records
        .iter()
        .filter(|r| r.reason == "policy-loaded" && r.policy_digest.as_deref() == Some(&new_digest))
        .collect();
    assert_eq!(loads.len(), 1, "{loads:?}");
    let detail = loads[0].detail.as_deref().unwrap();
    assert!(
        detail.contains("files: example.toml, gov.toml") && detail.contains("on file change"),
        "{detail}"
    );
    let r = get(&h, "limited", "/limited-echo/v1/blocked");
    let record = h.decision(&r.request_id());
    assert_eq!(record.rule.as_deref(), Some("no-blocked"));

    // A broken edit: refused, recorded, the last good policy stays.
    h.write_policy("gov.toml", &format!("{ROLES}\n[[agent]\nname = \"x\"\n"));
    let rejected = h.wait_for("policy-rejected", |r| r.reason == "policy-rejected");
    assert!(
        rejected[0].detail.as_deref().unwrap().contains("gov.toml"),
        "{rejected:?}"
    );
    assert_eq!(
        rejected[0].policy_digest.as_deref(),
        Some(new_digest.as_str())
    );
    let r = get(&h, "limited", "/limited-echo/v1/blocked");
    assert_eq!(r.status, 403);
    assert_eq!(
        h.decision(&r.request_id()).policy_digest.as_deref(),
        Some(new_digest.as_str())
    );
    assert_eq!(get(&h, "research", "/echo/v1/items").status, 200);
    let out = policy_status(&h, "watcher");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("DRIFTED"), "{stdout}");
    assert!(stdout.contains("do not validate"), "{stdout}");
    let metrics = h.admin(Some("watcher"), &["/metrics"]).body_text();
    assert!(metrics.contains("\nclawgate_policy_valid 0\n"), "{metrics}");

    // Put right again: in sync, valid.
    h.write_policy("gov.toml", &format!("{ROLES}{v2}"));
    wait_until("status in sync", Duration::from_secs(10), || {
        policy_status(&h, "watcher").status.code() == Some(0)
    });
    let metrics = h.admin(Some("watcher"), &["/metrics"]).body_text();
    assert!(metrics.contains("\nclawgate_policy_valid 1\n"), "{metrics}");

    // SIGHUP and the API load again; files with the digest in force put
    // nothing new in force and record nothing. Only admins may ask.
    let loads = |h: &Harness| count(h, |r| r.reason == "policy-loaded");
    let before = loads(&h);
    h.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(loads(&h), before, "an unchanged digest is no load");
    let r = h.admin(Some("ops"), &["-X", "POST", "/v1/policy/reload"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["digest"], new_digest.as_str());
    assert_eq!(r.json()["changed"], false);
    assert_eq!(loads(&h), before);
    let r = h.admin(Some("watcher"), &["-X", "POST", "/v1/policy/reload"]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(loads(&h), before);
}

#[test]
fn the_admin_api_refuses_agents_and_strangers_and_auditors_only_read() {
    let h = harness(String::new(), &[]);
    let r = h.admin(Some("research"), &["/v1/policy/status"]);
    assert_eq!(r.status, 403, "an agent certificate: {r:?}");
    let r = h.admin(Some("research"), &["/healthz"]);
    assert_eq!(r.status, 403, "{r:?}");
    let r = h.admin(None, &["/healthz"]);
    assert_ne!(r.exit, 0, "no certificate, no handshake: {r:?}");
    assert_eq!(r.status, 0);

    assert_eq!(h.admin(Some("watcher"), &["/healthz"]).status, 200);
    assert_eq!(h.admin(Some("watcher"), &["/readyz"]).status, 200);
    let call = get(&h, "research", "/echo/v1/items");
    let r = h.admin(
        Some("watcher"),
        &["/v1/audit?agent=research&decision=allow&limit=10"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let lines: Vec<serde_json::Value> = r
        .body_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["request_id"] == call.request_id().as_str() && l["kind"] == "decision"),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| l["agent"] == "research"));
    let r = h.admin(Some("watcher"), &["/v1/audit?colour=blue"]);
    assert_eq!(r.status, 400);

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
    assert_eq!(r.status, 403, "an auditor cannot create an override: {r:?}");
    assert_eq!(get(&h, "research", "/echo/v1/items").status, 200);
    assert_eq!(count(&h, |r| r.kind == "override"), 0);
}

#[test]
fn an_isolate_override_refuses_at_once_survives_a_restart_and_lapses_by_itself() {
    let mut h = harness(String::new(), &[]);
    let post = |h: &Harness, body: &str| {
        h.admin(
            Some("ops"),
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
    };
    let r = post(
        &h,
        r#"{"kind":"isolate-agent","target":"research","reason":"x","expires_in":"49h"}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body_text().contains("at most 48h"), "{r:?}");
    let r = post(
        &h,
        r#"{"kind":"isolate-agent","target":"research","reason":"x"}"#,
    );
    assert_eq!(r.status, 400, "expires_in is required: {r:?}");

    let r = post(
        &h,
        r#"{"kind":"isolate-agent","target":"research","reason":"incident 9","expires_in":"9s"}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let expires = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            time::OffsetDateTime::parse(
                created["expires"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
            .unix_timestamp() as u64,
        );
    let r = get(&h, "research", "/echo/v1/items");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["reason"], "agent-isolated");
    let record = h.decision(&r.request_id());
    assert_eq!(record.reason, "agent-isolated");
    assert_eq!(
        record.detail.as_deref(),
        Some(format!("override {id}").as_str())
    );
    let changes = h.wait_for("override created", |r| r.kind == "override");
    assert!(
        changes[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("created by spiffe://clawgate.local/agent/ops"),
        "{changes:?}"
    );
    // Only the isolated agent.
    assert_eq!(get(&h, "reporter", "/echo-report/v1/items").status, 200);
    let listed = h.admin(Some("watcher"), &["/v1/overrides"]).json();
    assert_eq!(listed[0]["id"], id.as_str());
    let out = policy_status(&h, "watcher");
    assert_eq!(out.status.code(), Some(2), "an override is drift: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("isolate-agent `research`"));

    // It survives a restart.
    h.stop();
    h.serve(&[]);
    let r = get(&h, "research", "/echo/v1/items");
    assert_eq!(r.status, 403, "still isolated after a restart: {r:?}");
    assert_eq!(r.json()["reason"], "agent-isolated");

    // It lapses by itself, once.
    if let Ok(left) = (expires + Duration::from_millis(200)).duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
    let r = get(&h, "research", "/echo/v1/items");
    assert_eq!(r.status, 200, "{r:?}");
    h.wait_for("override lapsed", |r| {
        r.kind == "override" && r.detail.as_deref().is_some_and(|d| d.starts_with("lapsed"))
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        count(&h, |r| r.kind == "override"
            && r.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("lapsed"))),
        1
    );
    assert_eq!(policy_status(&h, "watcher").status.code(), Some(0));

    // A scope disabled, then the override removed.
    let r = post(
        &h,
        r#"{"kind":"disable-scope","target":"echo","reason":"leak","expires_in":"1h"}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = get(&h, "research", "/echo/v1/items");
    assert_eq!(r.json()["reason"], "scope-disabled");
    assert_eq!(h.decision(&r.request_id()).scope.as_deref(), Some("echo"));
    let path = format!("/v1/overrides/{id}");
    let r = h.admin(Some("watcher"), &["-X", "DELETE", &path]);
    assert_eq!(r.status, 403);
    let r = h.admin(Some("ops"), &["-X", "DELETE", &path]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(get(&h, "research", "/echo/v1/items").status, 200);
    h.wait_for("override removed", |r| {
        r.kind == "override"
            && r.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("removed by"))
    });
    assert_eq!(h.admin(Some("ops"), &["-X", "DELETE", &path]).status, 404);

    // A certificate serial revoked in a hurry, read with openssl.
    let (cert, _) = h.agent_cert("research");
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let serial = String::from_utf8(out.stdout).unwrap();
    let serial = serial.trim().strip_prefix("serial=").unwrap().to_owned();
    let r = post(
        &h,
        &format!(
            r#"{{"kind":"revoke-serial","target":"{serial}","reason":"key leaked","expires_in":"1h"}}"#
        ),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let r = get(&h, "research", "/echo/v1/items");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["reason"], "serial-revoked");
    assert_eq!(h.decision(&r.request_id()).reason, "serial-revoked");
    assert_eq!(get(&h, "reporter", "/echo-report/v1/items").status, 200);
}

/// Samples by (name, sorted labels).
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// `/metrics` through prometheus_client's parser.
fn scrape(h: &Harness) -> Samples {
    let r = h.admin(Some("watcher"), &["/metrics"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{r:?}"
    );
    let mut child = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/metrics/parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&r.body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        r.body_text()
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut labels: Vec<(String, String)> = v["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            labels.sort();
            (
                (v["name"].as_str().unwrap().to_owned(), labels),
                v["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn sample(m: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    m.get(&(name.to_owned(), labels)).copied().unwrap_or(0.0)
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_the_calls() {
    let h = harness(String::new(), &[]);
    let before = scrape(&h);
    let allowed = [
        ("decision", "allow"),
        ("reason", "allowed"),
        ("scope", "echo"),
    ];
    let denied = [
        ("decision", "deny"),
        ("reason", "no-matching-rule"),
        ("scope", "echo"),
    ];
    assert_eq!(get(&h, "research", "/echo/v1/items").status, 200);
    assert_eq!(get(&h, "research", "/echo/v1/items/2").status, 200);
    assert_eq!(get(&h, "research", "/echo/v2/nothing").status, 403);
    let after = scrape(&h);
    assert_eq!(
        sample(&after, "clawgate_calls_total", &allowed)
            - sample(&before, "clawgate_calls_total", &allowed),
        2.0
    );
    assert_eq!(
        sample(&after, "clawgate_calls_total", &denied)
            - sample(&before, "clawgate_calls_total", &denied),
        1.0
    );
    let decided = |m: &Samples| sample(m, "clawgate_decide_seconds_count", &[]);
    assert_eq!(decided(&after) - decided(&before), 3.0);
    let upstream = |m: &Samples| sample(m, "clawgate_upstream_seconds_count", &[]);
    assert_eq!(upstream(&after) - upstream(&before), 2.0);
    let credential = |m: &Samples| sample(m, "clawgate_credential_seconds_count", &[]);
    assert_eq!(credential(&after) - credential(&before), 2.0);
    assert_eq!(sample(&after, "clawgate_policy_valid", &[]), 1.0);
    assert_eq!(sample(&after, "clawgate_audit_healthy", &[]), 1.0);
    assert!(sample(&after, "clawgate_audit_commits_total", &[]) >= 3.0);
    let digest = h.records()[0].policy_digest.clone().unwrap();
    assert_eq!(
        sample(
            &after,
            "clawgate_policy_info",
            &[("digest", digest.as_str())]
        ),
        1.0
    );
}

#[test]
fn refusal_records_are_as_complete_as_allowed_ones() {
    let policy = format!(
        "{}{}",
        agent("limited", "\"limited-echo\"", ""),
        scope("limited-echo", "rate = \"1/min\"\nburst = 1"),
    );
    let h = harness(policy, &["limited"]);
    let certs = h.certs.to_str().unwrap().to_owned();
    let token = |agent: &str, run: &str, ttl: &str| {
        let out = clawgate(&[
            "token", "issue", "--agent", agent, "--run", run, "--ttl", ttl, "--certs", &certs,
        ]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let with_token = |agent: &str, token: &str, path: &str| {
        h.curl(
            Some(agent),
            &[
                "-H",
                &format!("x-clawgate-run-token: {token}"),
                &format!("{}{path}", h.base()),
            ],
        )
    };
    let allowed = get(&h, "research", "/echo/v1/items/%7e1");
    assert_eq!(allowed.status, 200);
    let allowed = h.decision(&allowed.request_id());
    let complete = |r: &DecisionRecord, reason: &str| {
        assert_eq!(r.reason, reason);
        assert_eq!(r.decision.as_deref(), Some("deny"));
        assert_eq!(r.mode.as_deref(), Some("gateway"), "{r:?}");
        assert_eq!(r.host, allowed.host, "{r:?}");
        assert!(r.agent.is_some(), "{r:?}");
        assert!(r.scope.is_some(), "{r:?}");
    };

    // rate-limited: which limit, its name and its value.
    let limited_token = token("limited", "run-limited", "5m");
    assert_eq!(
        with_token("limited", &limited_token, "/limited-echo/v1/a").status,
        200
    );
    let r = with_token("limited", &limited_token, "/limited-echo/v1/a");
    assert_eq!(r.status, 429);
    let record = h.decision(&r.request_id());
    complete(&record, "rate-limited");
    assert_eq!(record.scope.as_deref(), Some("limited-echo"));
    assert_eq!(record.path.as_deref(), Some("/v1/a"));
    assert_eq!(record.run_id.as_deref(), Some("run-limited"));
    let detail = record.detail.unwrap();
    assert!(
        detail.starts_with("scope rate limit `limited-echo` 1/min burst 1; retry after"),
        "{detail}"
    );

    // run-token-expired: the run is named even though the token is refused.
    let expired = token("research", "run-expired", "1s");
    std::thread::sleep(Duration::from_secs(7));
    let r = with_token("research", &expired, "/echo/v1/items/%7e1");
    assert_eq!(r.status, 403);
    let record = h.decision(&r.request_id());
    complete(&record, "run-token-expired");
    assert_eq!(record.run_id.as_deref(), Some("run-expired"));
    assert_eq!(record.path, allowed.path, "the normalised path");
    assert_eq!(record.scope, allowed.scope);
    // Another agent's token names its run too.
    let r = with_token("research", &limited_token, "/echo/v1/items/%7e1");
    let record = h.decision(&r.request_id());
    complete(&record, "run-token-wrong-agent");
    assert_eq!(record.run_id.as_deref(), Some("run-limited"));

    // agent-isolated and scope-disabled: the same fields, and the override.
    let post = |body: &str| {
        let r = h.admin(
            Some("ops"),
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
        assert_eq!(r.status, 201, "{r:?}");
        r.json()["id"].as_str().unwrap().to_owned()
    };
    let run = token("research", "run-isolated", "5m");
    let id = post(
        r#"{"kind":"isolate-agent","target":"research","reason":"incident 3","expires_in":"1h"}"#,
    );
    let r = with_token("research", &run, "/echo/v1/items/%7e1");
    assert_eq!(r.status, 403);
    let record = h.decision(&r.request_id());
    complete(&record, "agent-isolated");
    assert_eq!(record.run_id.as_deref(), Some("run-isolated"));
    assert_eq!(record.path, allowed.path);
    assert_eq!(record.scope, allowed.scope);
    assert_eq!(record.detail, Some(format!("override {id}")));
    let id = post(
        r#"{"kind":"disable-scope","target":"limited-echo","reason":"incident 4","expires_in":"1h"}"#,
    );
    let r = get(&h, "limited", "/limited-echo/v1/b");
    let record = h.decision(&r.request_id());
    complete(&record, "scope-disabled");
    assert_eq!(record.path.as_deref(), Some("/v1/b"));
    assert_eq!(record.detail, Some(format!("override {id}")));
}
