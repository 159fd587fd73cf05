//! Operating clawgate, end to end against the real binary: export, verify
//! an archive, prune, restore into a fresh log, and retention on a schedule.
//! Each test checks the records as well as the commands' answers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;

use std::time::{Duration, Instant};

use clawgate::audit::DecisionRecord;
use common::{Harness, Options, clawgate};

fn ok(args: &[&str]) -> String {
    let out = clawgate(args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn records_of(db: &str) -> Vec<DecisionRecord> {
    let text = ok(&[
        "audit", "query", "--audit", db, "--format", "json", "--limit", "100000",
    ]);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn calls(h: &Harness, n: usize) {
    for _ in 0..n {
        let r = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
        assert_eq!(r.status, 200, "{r:?}");
    }
}

#[test]
fn export_verify_prune_and_restore_keep_the_chain_verifiable() {
    let mut h = Harness::start();
    calls(&h, 3);
    h.stop();
    let db = h.audit.to_str().unwrap().to_owned();
    let before = records_of(&db);
    assert_eq!(before.len(), 7, "one policy record, two per call");
    let archive = h.path("a.jsonl.gz");
    let archive_s = archive.to_str().unwrap();
    // Nothing archived yet: prune is refused and removes nothing.
    let out = clawgate(&["audit", "prune", "--audit", &db, "--before", "0s"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "refused: records 1..7 before that time are not covered by an archive recorded in the log"
        ),
        "{out:?}"
    );
    assert_eq!(records_of(&db), before);

    let out = ok(&[
        "audit", "export", "--audit", &db, "--until", "0s", archive_s,
    ]);
    assert!(out.starts_with("exported 7 records (1..7)"), "{out}");
    let out = ok(&["audit", "verify", "--archive", archive_s]);
    assert!(out.starts_with("ok: archive of 7 records, 1..7"), "{out}");
    assert!(out.ends_with(&format!("{}\n", before[6].hash)), "{out}");
    // The manifest is a record, chained like any other.
    let after = records_of(&db);
    let note = after.last().unwrap();
    assert_eq!(
        (note.seq, note.kind.as_str(), note.reason.as_str()),
        (8, "archive", "log-archived")
    );
    assert!(note.detail.as_deref().unwrap().contains(&before[6].hash));

    let out = ok(&["audit", "prune", "--audit", &db, "--before", "0s"]);
    assert!(out.starts_with("pruned 7 records"), "{out}");
    let left = records_of(&db);
    assert_eq!(
        left.iter()
            .map(|r| (r.seq, r.kind.as_str()))
            .collect::<Vec<_>>(),
        vec![(8, "archive"), (9, "prune")]
    );
    assert_eq!(left[1].reason, "log-pruned");
    let out = ok(&["audit", "verify", "--audit", &db]);
    assert!(
        out.starts_with(&format!(
            "ok: 2 records, from pruned anchor 7 {},",
            before[6].hash
        )),
        "{out}"
    );
    // A record cut beyond the anchor is still caught.
    let conn = rusqlite::Connection::open(&h.audit).unwrap();
    conn.execute("DELETE FROM records WHERE seq = 8", [])
        .unwrap();
    drop(conn);
    let out = clawgate(&["audit", "verify", "--audit", &db]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Restore: the archive into a fresh log, identical records, intact chain.
    let fresh = h.path("restored.db");
    let fresh_s = fresh.to_str().unwrap();
    let out = ok(&["audit", "restore", "--audit", fresh_s, archive_s]);
    assert!(out.starts_with("restored 7 records"), "{out}");
    assert_eq!(records_of(fresh_s), before);
    let out = ok(&["audit", "verify", "--audit", fresh_s]);
    assert!(out.starts_with("ok: 7 records, chain intact"), "{out}");

    // A damaged archive fails on its own, and does not restore.
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    std::fs::write(&archive, &bytes).unwrap();
    assert_eq!(
        clawgate(&["audit", "verify", "--archive", archive_s])
            .status
            .code(),
        Some(1)
    );
    let other = h.path("other.db");
    assert!(
        !clawgate(&[
            "audit",
            "restore",
            "--audit",
            other.to_str().unwrap(),
            archive_s
        ])
        .status
        .success()
    );
}

#[test]
fn retention_archives_and_prunes_on_a_schedule() {
    let dir = tempfile::tempdir().unwrap();
    // Created by the first round.
    let archives = dir.path().join("archive").to_str().unwrap().to_owned();
    let mut h = Harness::with(Options {
        serve_args: vec![
            "--retain".into(),
            "2s".into(),
            "--archive-dir".into(),
            archives.clone(),
            "--retain-every".into(),
            "500ms".into(),
        ],
        ..Options::default()
    });
    calls(&h, 3);
    // The last outcome record is written after its response has reached
    // curl, so wait for it rather than race it.
    let settle = Instant::now() + Duration::from_secs(5);
    let mut first_batch = h.records();
    while first_batch.len() < 7 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(50));
        first_batch = h.records();
    }
    assert_eq!(first_batch.len(), 7, "one policy record, two per call");
    // Past the retention period, the seven are archived and then pruned.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = h.records();
        if now.first().is_some_and(|r| r.seq > 7) {
            break;
        }
        assert!(Instant::now() < deadline, "not pruned: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    calls(&h, 1);
    h.stop();
    let db = h.audit.to_str().unwrap().to_owned();
    let out = ok(&["audit", "verify", "--audit", &db]);
    assert!(out.contains("from pruned anchor 7 "), "{out}");
    let left = records_of(&db);
    assert!(left.iter().any(|r| r.kind == "archive"));
    assert!(
        left.iter()
            .any(|r| r.kind == "prune" && r.reason == "log-pruned")
    );
    // The archive holds the seven and restores into a fresh log.
    let mut files: Vec<_> = std::fs::read_dir(&archives)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let fresh = h.path("restored.db");
    let fresh_s = fresh.to_str().unwrap();
    for f in &files {
        ok(&["audit", "verify", "--archive", f.to_str().unwrap()]);
        ok(&["audit", "restore", "--audit", fresh_s, f.to_str().unwrap()]);
    }
    let restored = records_of(fresh_s);
    assert_eq!(restored[..7].to_vec(), first_batch);
    ok(&["audit", "verify", "--audit", fresh_s]);
}

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
"#;

/// `promtool test rules` passes on the shipped rules, and every metric the
/// rules name is one a running clawgate serves, with the value the rule
/// expects after a rejected handshake and an override.
#[test]
fn alert_rules_pass_promtool_and_use_metrics_clawgate_serves() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let out = std::process::Command::new("promtool")
        .args(["test", "rules", "clawgate-rules.test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    assert!(out.status.success(), "promtool test rules: {out:?}");

    let h = Harness::with(Options {
        extra_policy: vec![("roles.toml", ROLES.to_owned())],
        agents: vec!["ops"],
        ..Options::default()
    });
    // A handshake without a client certificate is rejected and counted.
    let r = common::curl(&[
        "--cacert".into(),
        h.certs.join("ca.pem").display().to_string(),
        format!("{}/echo/v1/items", h.base()),
    ]);
    assert_ne!(r.status, 200);
    let r = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"kind":"isolate-agent","target":"reporter","reason":"rules test","expires_in":"30m"}"#,
            "/v1/overrides",
        ],
    );
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    let metrics = h.admin(Some("ops"), &["/metrics"]).body_text();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not served:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(value("clawgate_tls_rejections_total") >= 1.0);
    assert_eq!(
        value("clawgate_policy_drifted"),
        1.0,
        "an override is drift"
    );
    let left = value("clawgate_next_lapse_seconds");
    assert!((1700.0..=1800.0).contains(&left), "{left}");
    assert_eq!(value("clawgate_audit_healthy"), 1.0);
    assert_eq!(value("clawgate_policy_valid"), 1.0);
    let rules = std::fs::read_to_string(dir.join("clawgate-rules.yml")).unwrap();
    let mut named: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("clawgate_"))
        .collect();
    named.sort_unstable();
    named.dedup();
    assert!(named.len() >= 7, "{named:?}");
    for name in named {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "the rules use `{name}`, which clawgate does not serve"
        );
    }
    // The TLS rejection is recorded as well as counted.
    assert!(h.records().iter().any(|r| r.reason == "tls-rejected"));
}

/// `audit stats` and `audit findings` on the log, and the admin API's
/// `/v1/audit/stats` and `/v1/audit/findings` with live state added.
#[test]
fn stats_and_findings_from_the_cli_and_the_admin_api() {
    let h = Harness::with(Options {
        extra_policy: vec![("roles.toml", ROLES.to_owned())],
        agents: vec!["ops"],
        ..Options::default()
    });
    calls(&h, 3);
    for _ in 0..11 {
        let r = h.curl(Some("intruder"), &[&format!("{}/echo/v1/items", h.base())]);
        assert_eq!(r.status, 403, "{r:?}");
    }
    let records = h.records();
    let unknown = records
        .iter()
        .filter(|r| r.kind == "decision" && r.reason == "unknown-agent")
        .count();
    assert_eq!(unknown, 11);
    let db = h.audit.to_str().unwrap().to_owned();

    let out = ok(&[
        "audit", "stats", "--audit", &db, "--by", "agent", "--format", "json",
    ]);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["total"]["allowed"], 3, "{s}");
    assert_eq!(s["total"]["refused"], 11, "{s}");
    assert_eq!(
        s["top_refusal_reasons"][0],
        serde_json::json!(["unknown-agent", 11])
    );
    let research = s["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == "research")
        .unwrap();
    assert_eq!(research["allowed"], 3);
    let csv = ok(&[
        "audit", "stats", "--audit", &db, "--by", "reason", "--format", "csv",
    ]);
    assert!(csv.contains("group,\"unknown-agent\",0,11,0,11"), "{csv}");
    let table = ok(&["audit", "stats", "--audit", &db]);
    assert!(table.contains("top refusal reasons"), "{table}");

    let out = ok(&["audit", "findings", "--audit", &db, "--json"]);
    let found: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        found.iter().any(|f| f["kind"] == "burst"
            && f["subject"] == "127.0.0.1"
            && f["detail"].as_str().unwrap().contains("`unknown-agent`")),
        "{found:?}"
    );
    // Past the threshold no burst is left; what remains is one finding for
    // each of the three calls whose echo reflected the injected credential
    // (redacted by the reflection guard).
    let out = ok(&[
        "audit", "findings", "--audit", &db, "--burst", "20", "--json",
    ]);
    let kinds: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].to_string())
        .collect();
    assert_eq!(kinds, vec!["\"credential-reflected\""; 3], "{out}");

    // The admin API: the same counts; findings add what lapses and drift.
    let r = h.admin(Some("ops"), &["/v1/audit/stats?by=scope&since=1h"]);
    assert_eq!(r.status, 200, "{r:?}");
    let api: serde_json::Value = serde_json::from_str(&r.body_text()).unwrap();
    assert_eq!(api["total"], s["total"]);
    let r = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"kind":"isolate-agent","target":"reporter","reason":"findings test","expires_in":"2h"}"#,
            "/v1/overrides",
        ],
    );
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    let r = h.admin(Some("ops"), &["/v1/audit/findings"]);
    assert_eq!(r.status, 200, "{r:?}");
    let api: Vec<serde_json::Value> = serde_json::from_str(&r.body_text()).unwrap();
    let kinds: Vec<&str> = api.iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"burst"), "{api:?}");
    assert!(kinds.contains(&"lapsing-soon"), "{api:?}");
    assert!(kinds.contains(&"drift"), "{api:?}");
    assert_eq!(
        h.admin(Some("ops"), &["/v1/audit/stats?by=colour"]).status,
        400
    );
    assert_eq!(
        h.admin(Some("ops"), &["/v1/audit/stats?bogus=1"]).status,
        400
    );
}

/// The figures of the README's retention table: bytes per record in the
/// log (after VACUUM, indexes included) and in a compressed archive, over
/// 150 real calls (a decision and an outcome each).
#[test]
fn bytes_per_record_in_the_log_and_in_an_archive() {
    let mut h = Harness::start();
    let url = format!("{}/echo/v1/items", h.base());
    let args: Vec<&str> = std::iter::repeat_n(url.as_str(), 150).collect();
    // One curl, 150 requests on one connection: its reply holds them all.
    h.curl(Some("research"), &args);
    h.stop();
    let db = h.audit.to_str().unwrap().to_owned();
    let records = records_of(&db);
    assert_eq!(records.len(), 301, "a policy record and two per call");
    assert_eq!(
        records.iter().filter(|r| r.reason == "allowed").count(),
        300
    );
    let conn = rusqlite::Connection::open(&h.audit).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")
        .unwrap();
    drop(conn);
    let log_bytes = std::fs::metadata(&h.audit).unwrap().len() as f64 / 301.0;
    let archive = h.path("a.gz");
    ok(&[
        "audit",
        "export",
        "--audit",
        &db,
        "--until",
        "0s",
        archive.to_str().unwrap(),
    ]);
    let archive_bytes = std::fs::metadata(&archive).unwrap().len() as f64 / 301.0;
    eprintln!("bytes per record: log {log_bytes:.0}, archive {archive_bytes:.0}");
    assert!((200.0..2000.0).contains(&log_bytes), "{log_bytes}");
    assert!(
        archive_bytes < log_bytes / 3.0,
        "{archive_bytes} vs {log_bytes}"
    );
}

/// At `info` (the default) stderr carries no per-call line, CONNECT's
/// included, and no colour codes when it is not a terminal (here a file);
/// the calls are in the decision log.
#[test]
fn stderr_at_info_has_no_per_call_lines_and_no_colour_codes() {
    let mut h = Harness::with(Options {
        env: vec![("RUST_LOG".into(), "info".into())],
        ..Options::default()
    });
    let intercept_ca = h.certs.join("intercept-ca.pem").display().to_string();
    let echo_url = format!("https://127.0.0.1:{}/v1/items", h.echo.addr.port());
    let ok = h.curl_via_proxy("research", &["--cacert", &intercept_ca, &echo_url]);
    assert_eq!(ok.status, 200, "{ok:?}");
    let plain = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(plain.status, 200, "{plain:?}");
    let refused = h.curl_via_proxy("intruder", &[&echo_url]);
    assert_ne!(refused.exit, 0, "{refused:?}");
    h.stop();
    let stderr = h.stderr();
    assert!(stderr.contains("policy loaded"), "{stderr}");
    for line in [
        "connect allowed",
        "connect refused",
        "call forwarded",
        "call refused",
    ] {
        assert!(!stderr.contains(line), "{line}: {stderr}");
    }
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    let records = h.records();
    assert!(records.iter().any(|r| r.kind == "decision"
        && r.method.as_deref() == Some("CONNECT")
        && r.reason == "allowed"));
    assert!(
        records
            .iter()
            .any(|r| r.kind == "decision" && r.reason == "unknown-agent"),
        "{records:?}"
    );
}
