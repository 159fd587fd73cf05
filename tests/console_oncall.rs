//! The console an on-call engineer needs, against the real binary and read
//! in headless Chromium: the event timeline, filters, outcomes beside
//! decisions (allowed but failed upstream), one call's every field,
//! findings, drift in words, the pruned-history notice, and records full of
//! attacker-chosen text shown inert. Each page is checked against the log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;

use common::browser::{Console, chromium, dom};
use common::{Harness, Options, clawgate};

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
"#;

/// An agent whose scope's upstream is a closed port: its calls are allowed
/// and fail upstream with 502.
fn prober_policy(dead_port: u16) -> String {
    format!(
        "[[agent]]\nname = \"prober\"\nidentities = [\"spiffe://clawgate.local/agent/prober\"]\nscopes = [\"dead\"]\n\
         [[scope]]\nname = \"dead\"\nupstream = \"https://127.0.0.1:{dead_port}\"\nroute = \"dead\"\nallow_private = [\"127.0.0.1\"]\n\
         [[scope.allow]]\npaths = [\"/**\"]\n"
    )
}

fn ok(args: &[&str]) -> String {
    let out = clawgate(args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn override_(h: &Harness, target: &str, reason: &str) -> String {
    let body = serde_json::json!({
        "kind": "isolate-agent", "target": target, "reason": reason, "expires_in": "2h"
    })
    .to_string();
    let r = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            "/v1/overrides",
        ],
    );
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Where the test's screenshots go: `CLAWGATE_CONSOLE_SHOTS` (the docs
/// directory, to refresh them), else the test's own directory.
fn shot(h: &Harness, name: &str, url: &str) {
    let path = std::env::var_os("CLAWGATE_CONSOLE_SHOTS")
        .map_or_else(|| h.path(name), |d| std::path::PathBuf::from(d).join(name));
    chromium(
        &[
            format!("--screenshot={}", path.display()),
            "--window-size=1400,1400".into(),
            "--hide-scrollbars".into(),
        ],
        url,
    );
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
}

/// Calls of every kind, overrides, and a pruned history before them.
struct Scene {
    h: Harness,
    db: String,
    failed_id: String,
    marked_id: String,
}

fn scene() -> Scene {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut h = Harness::with(Options {
        extra_policy: vec![
            ("roles.toml", ROLES.to_owned()),
            ("prober.toml", prober_policy(dead_port)),
        ],
        agents: vec!["ops", "prober"],
        ..Options::default()
    });
    // History that is archived and pruned: the window reaches past it.
    let r = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(r.status, 200, "{r:?}");
    h.stop();
    let db = h.audit.to_str().unwrap().to_owned();
    let archive = h.path("old.jsonl.gz");
    ok(&[
        "audit",
        "export",
        "--audit",
        &db,
        "--until",
        "0s",
        archive.to_str().unwrap(),
    ]);
    assert!(ok(&["audit", "prune", "--audit", &db, "--before", "0s"]).starts_with("pruned"));
    h.serve(&[]);

    // The calls: allowed, allowed but failed upstream, refused, and a path
    // that carries markup.
    let r = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(r.status, 200, "{r:?}");
    let failed = h.curl(Some("prober"), &[&format!("{}/dead/v1/x", h.base())]);
    assert_eq!(failed.status, 502, "{failed:?}");
    let failed_id = failed.request_id();
    let r = h.curl(Some("intruder"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(r.status, 403, "{r:?}");
    let marked = h.curl(
        Some("research"),
        &[&format!(
            "{}/echo/v1/items/%3Cscript%3Ealert(1)%3C/script%3E",
            h.base()
        )],
    );
    let marked_id = marked.request_id();
    assert_eq!(
        h.decision(&marked_id).path.as_deref(),
        Some("/v1/items/<script>alert(1)</script>"),
        "the record holds the markup as the agent sent it"
    );
    // The log agrees: the failed call was allowed, and its outcome is a 502.
    assert_eq!(h.decision(&failed_id).decision.as_deref(), Some("allow"));
    assert_eq!(h.outcome(&failed_id).status, Some(502));
    // Overrides: one created and lifted, one left in force (drift), with
    // markup in their reasons.
    let lifted = override_(&h, "reporter", "INC-7 <img src=x onerror=alert(2)>");
    let r = h.admin(
        Some("ops"),
        &["-X", "DELETE", &format!("/v1/overrides/{lifted}")],
    );
    assert!(r.status == 200 || r.status == 204, "{r:?}");
    override_(&h, "prober", "INC-8 upstream down");

    Scene {
        h,
        db,
        failed_id,
        marked_id,
    }
}

#[test]
fn the_console_answers_an_on_call_engineer_and_shows_attacker_text_inert() {
    let Scene {
        h,
        db,
        failed_id,
        marked_id,
    } = scene();
    let mut console = Console::start(&h);
    overview_page(&h, &mut console);
    // Filters, through the login, in the browser.
    let rows = |query: &str, console: &mut Console| {
        let page = dom(&[], &format!("{}&{query}", console.login_url()));
        page.matches("<tr class=\"decision\">").count()
    };
    assert_eq!(rows("decision=deny", &mut console), 1);
    assert_eq!(rows("agent=prober", &mut console), 1);
    assert_eq!(rows("reason=unknown-agent", &mut console), 1);
    assert_eq!(rows("source=127.0.0.1", &mut console), 4);
    assert_eq!(rows("source=10.9.9.9", &mut console), 0);
    assert_eq!(rows("since=2h&agent=research", &mut console), 2);
    assert_eq!(rows("until=2000-01-01T00:00:00Z", &mut console), 0);

    record_pages(&h, &mut console, &failed_id, &marked_id);
    // The same filters from the command line: one call, both its records.
    let out = ok(&[
        "audit",
        "query",
        "--audit",
        &db,
        "--source",
        "127.0.0.1",
        "--request-id",
        &failed_id,
        "--format",
        "json",
    ]);
    let kinds: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].to_string())
        .collect();
    assert_eq!(kinds, ["\"decision\"", "\"outcome\""], "{out}");

    // The same figures from the command line: the failed call apart, and
    // the note that the window reaches past the prune.
    let out = clawgate(&[
        "audit", "stats", "--audit", &db, "--since", "1h", "--format", "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["total"]["failed_upstream"], 1, "{stats}");
    assert!(stats["covers_from"].is_string(), "{stats}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("note: the log was pruned: these figures cover only records from"),
        "{out:?}"
    );
}

/// The overview: markup inert, the timeline, drift, outcomes, the notice.
fn overview_page(h: &Harness, console: &mut Console) {
    let page = dom(&[], &console.login_url());
    // Attacker-chosen text is text: escaped, never an element.
    assert!(
        page.contains("<td class=\"path\">/v1/items/&lt;script&gt;alert(1)&lt;/script&gt;</td>"),
        "{page}"
    );
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(
        page.contains("INC-7 &lt;img src=x onerror=alert(2)&gt;"),
        "{page}"
    );
    // The timeline: the reload, the override created and lifted.
    for event in [
        "<td class=\"what\">override created</td>",
        "<td class=\"what\">override lifted</td>",
        "<td class=\"what\">policy: policy-loaded</td>",
    ] {
        assert!(page.contains(event), "{event}: {page}");
    }
    // Drift, in words; a finding for it.
    assert!(
        page.contains("id=\"drift-status\">DRIFTED</span>"),
        "{page}"
    );
    assert!(
        page.contains("<li>1 override in force: isolate agent prober until"),
        "{page}"
    );
    assert!(
        page.contains("<tr class=\"finding\"><td>drift</td>"),
        "{page}"
    );
    // Allowed is not success: the failed call is counted apart and shown
    // beside its decision.
    assert!(page.contains("(of which failed upstream 1)"), "{page}");
    assert!(
        page.contains("<td class=\"outcome bad\">502 failed upstream (upstream-unreachable)</td>"),
        "{page}"
    );
    assert!(page.contains("<td class=\"outcome ok\">200</td>"), "{page}");
    // The window reaches past the pruned history: said so.
    assert!(
        page.contains("id=\"pruned\">the log was pruned: these figures cover only records from"),
        "{page}"
    );
    shot(h, "console-oncall.png", &console.login_url());
}

/// One call, every field of its decision and outcome.
fn record_pages(h: &Harness, console: &mut Console, failed_id: &str, marked_id: &str) {
    let page = dom(&[], &format!("{}&id={failed_id}", console.login_url()));
    let decision = serde_json::to_value(h.decision(failed_id)).unwrap();
    for key in decision.as_object().unwrap().keys() {
        assert!(
            page.contains(&format!("class=\"field-{key}\"")),
            "{key}: {page}"
        );
    }
    assert!(
        page.contains("<td class=\"field-status\">502</td>"),
        "{page}"
    );
    assert!(
        page.contains("<td class=\"field-reason\">upstream-unreachable</td>"),
        "{page}"
    );
    assert!(page.contains("<td class=\"field-rule\">"), "{page}");
    assert_eq!(
        page.matches("<section class=\"record\">").count(),
        2,
        "{page}"
    );
    shot(
        h,
        "console-record.png",
        &format!("{}&id={failed_id}", console.login_url()),
    );
    let page = dom(&[], &format!("{}&id={marked_id}", console.login_url()));
    assert!(
        page.contains(
            "<td class=\"field-path\">/v1/items/&lt;script&gt;alert(1)&lt;/script&gt;</td>"
        ),
        "{page}"
    );
    assert!(!page.contains("<script"), "{page}");
}
