//! `clawgate console` against the real binary and a running clawgate, read
//! in headless Chromium: nothing without the one-time login URL, the page
//! with it, and nothing through a forged `Host` (DNS rebinding).
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

fn calls(h: &Harness, n: usize) {
    for _ in 0..n {
        let r = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
        assert_eq!(r.status, 200, "{r:?}");
    }
}

fn harness() -> Harness {
    Harness::with(Options {
        extra_policy: vec![("roles.toml", ROLES.to_owned())],
        agents: vec!["ops"],
        ..Options::default()
    })
}

/// Without the login URL a browser sees nothing; a forged `Host` (a DNS
/// rebinding page's name mapped to loopback) is refused and does not even
/// spend the token; the token opens the page once; another site's
/// `Origin` is refused; logging out needs the CSRF token.
#[test]
fn the_console_shows_nothing_without_the_login_url_and_refuses_a_forged_host() {
    let h = harness();
    calls(&h, 1);
    let mut console = Console::start(&h);
    let login = console.login_url();

    // No token: no data, in a browser and with curl.
    let page = dom(&[], &format!("{}/", console.base));
    assert!(page.contains("id=\"login\""), "{page}");
    assert!(!page.contains("chain-status"), "{page}");
    assert!(!page.contains("research"), "{page}");
    let r = common::curl(&[format!("{}/", console.base)]);
    assert_eq!(r.status, 401, "{r:?}");
    let r = common::curl(&[format!("{}/login?token=0123", console.base)]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        !r.headers.to_ascii_lowercase().contains("set-cookie"),
        "{r:?}"
    );

    // A forged Host, in a browser that resolves the rebinding name to
    // loopback, with the real token: refused.
    let rebound = login.replace("127.0.0.1", "rebind.example");
    let page = dom(
        &["--host-resolver-rules=MAP rebind.example 127.0.0.1".into()],
        &rebound,
    );
    assert!(page.contains("unexpected Host"), "{page}");
    assert!(!page.contains("chain-status"), "{page}");
    let r = common::curl(&[
        "-H".into(),
        format!("Host: rebind.example:{}", console.port()),
        format!("{}/", console.base),
    ]);
    assert_eq!(r.status, 403, "{r:?}");

    // The token, not spent by the refused request, opens the page.
    let page = dom(&[], &login);
    assert!(page.contains("id=\"chain-status\">intact</span>"), "{page}");
    assert!(page.contains("<td class=\"agent\">research</td>"), "{page}");
    // Spent: the same URL in another browser shows nothing.
    let next = console.login_url();
    let page = dom(&[], &login);
    assert!(page.contains("already used"), "{page}");
    assert!(!page.contains("chain-status"), "{page}");

    // The cookie, seen by curl: HttpOnly, SameSite=Strict, a short life.
    let jar = h.path("jar");
    let jar_s = jar.display().to_string();
    let r = common::curl(&["-c".into(), jar_s.clone(), next]);
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = r
        .headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{r:?}"));
    for part in [
        "clawgate_console=",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=1800",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let r = common::curl(&["-b".into(), jar_s.clone(), format!("{}/", console.base)]);
    assert_eq!(r.status, 200, "{r:?}");
    let body = String::from_utf8(r.body).unwrap();
    assert!(body.contains("chain-status"));
    assert!(r.headers.contains("no-store"), "{}", r.headers);
    // Another site's Origin, with the session's cookie: refused.
    let r = common::curl(&[
        "-b".into(),
        jar_s.clone(),
        "-H".into(),
        "Origin: http://rebind.example".into(),
        format!("{}/", console.base),
    ]);
    assert_eq!(r.status, 403, "{r:?}");
    // Logging out is a state change: refused without the CSRF token.
    let logout = |csrf: &str| {
        common::curl(&[
            "-b".into(),
            jar_s.clone(),
            "-d".into(),
            format!("csrf={csrf}"),
            format!("{}/logout", console.base),
        ])
    };
    assert_eq!(logout("forged").status, 403);
    let csrf = body
        .split("name=csrf value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    assert_eq!(logout(csrf).status, 200);
    let r = common::curl(&["-b".into(), jar_s, format!("{}/", console.base)]);
    assert_eq!(r.status, 401, "{r:?}");
}

/// The console, loaded in a real browser against a running clawgate: the
/// chain status, drift, calls by decision, top refusal reasons, the override
/// with its time left, and the tail, filtered by agent.
#[test]
fn the_console_shows_governance_in_a_headless_browser() {
    let h = harness();
    calls(&h, 3);
    for _ in 0..2 {
        let r = h.curl(Some("intruder"), &[&format!("{}/echo/v1/items", h.base())]);
        assert_eq!(r.status, 403);
    }
    let r = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"kind":"isolate-agent","target":"reporter","reason":"console test","expires_in":"2h"}"#,
            "/v1/overrides",
        ],
    );
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    let mut console = Console::start(&h);
    // Read-only: nothing but the page, the login and the logout.
    let post = common::curl(&["-X".into(), "POST".into(), format!("{}/", console.base)]);
    assert_eq!(post.status, 404);
    // Loopback only.
    let out = clawgate(&[
        "console",
        "--listen",
        "0.0.0.0:0",
        "--cert",
        "x",
        "--key",
        "y",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback only"),
        "{out:?}"
    );

    let dom = dom(&[], &console.login_url());
    assert!(
        dom.contains("<span class=\"ok\" id=\"chain-status\">intact</span>"),
        "{dom}"
    );
    assert!(dom.contains("id=\"drift-status\">DRIFTED</span>"), "{dom}");
    assert!(dom.contains("<td>unknown-agent</td><td>2</td>"), "{dom}");
    assert!(
        dom.contains("<td class=\"allowed\">3</td><td class=\"refused\">2</td>"),
        "{dom}"
    );
    assert!(dom.contains("override isolate-agent</td>"), "{dom}");
    assert!(dom.contains("<td>reporter</td><td>1h 59m"), "{dom}");
    assert_eq!(
        dom.matches("<td class=\"agent\">research</td>").count(),
        3,
        "{dom}"
    );
    // The filters ride along through the login.
    let filtered = self::dom(&[], &format!("{}&agent=research", console.login_url()));
    assert_eq!(
        filtered.matches("<tr class=\"decision\">").count(),
        3,
        "{filtered}"
    );
    assert!(
        !filtered.contains("<td class=\"agent\">-</td>"),
        "{filtered}"
    );
    let shot = std::env::var_os("CLAWGATE_CONSOLE_PNG")
        .map_or_else(|| h.path("console.png"), std::path::PathBuf::from);
    chromium(
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".into(),
            "--hide-scrollbars".into(),
        ],
        &console.login_url(),
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
    // What the console showed, the log holds: the override is a record.
    assert!(
        h.records()
            .iter()
            .any(|r| r.kind == "override" && r.reason == "override-changed")
    );
}

/// A record edited behind clawgate's back: the scheduled walk finds it,
/// `clawgate_audit_chain_intact` drops to 0 with the record's seq (what
/// `ClawgateAuditChainBroken` fires on), and the console turns red.
#[test]
fn a_tampered_record_turns_the_metric_and_the_console_red() {
    let h = Harness::with(Options {
        extra_policy: vec![("roles.toml", ROLES.to_owned())],
        agents: vec!["ops"],
        serve_args: vec!["--chain-check-every".into(), "200ms".into()],
        ..Options::default()
    });
    calls(&h, 2);
    let metric = |name: &str| -> Option<f64> {
        let text = h.admin(Some("ops"), &["/metrics"]).body_text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(|v| v.trim().parse().unwrap())
    };
    let wait_for = |name: &str, want: f64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while metric(name) != Some(want) {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never became {want}: {:?}",
                metric(name)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for("clawgate_audit_chain_intact", 1.0);
    assert_eq!(metric("clawgate_audit_chain_first_broken_seq"), Some(0.0));
    let ready = h.admin(Some("ops"), &["/readyz"]);
    assert_eq!((ready.status, ready.body_text()), (200, "ready\n".into()));
    let audit = h.audit.to_str().unwrap().to_owned();
    let reads = [
        ["audit", "stats", "--audit", &audit, "--since", "1h"],
        ["audit", "query", "--audit", &audit, "--since", "1h"],
    ];
    for args in &reads {
        let out = clawgate(args);
        assert!(out.status.success(), "{out:?}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("warning"),
            "{out:?}"
        );
    }

    let conn = rusqlite::Connection::open(&h.audit).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let changed = conn
        .execute(
            "UPDATE records SET agent = 'someone-else' WHERE seq = 3",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    wait_for("clawgate_audit_chain_intact", 0.0);
    assert_eq!(metric("clawgate_audit_chain_first_broken_seq"), Some(3.0));
    // Not ready while the evidence does not verify, and it says why.
    let ready = h.admin(Some("ops"), &["/readyz"]);
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready
            .body_text()
            .contains("the decision log's chain is broken at record 3"),
        "{ready:?}"
    );
    // Reading across the break warns, and still answers.
    for args in &reads {
        let out = clawgate(args);
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("warning: the decision log's chain is broken at record 3"),
            "{out:?}"
        );
    }

    let mut console = Console::start(&h);
    let page = dom(&[], &console.login_url());
    assert!(
        page.contains("<span class=\"bad\" id=\"chain-status\">BROKEN</span>"),
        "{page}"
    );
    assert!(page.contains("record 3"), "{page}");
}
