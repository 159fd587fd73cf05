//! The writer checks the chain as it extends it: a tail cut behind its back
//! (which still verifies: every remaining record links) is caught at the
//! next batch, turns `clawgate_audit_chain_intact` to 0 with the first
//! missing position, and `/readyz` to 503. Real binary, real SQLite file
//! edited by another process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::{Duration, Instant};

use common::{Harness, Options, clawgate};

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
"#;

#[test]
fn a_tail_cut_behind_the_writer_is_caught_at_its_next_batch() {
    // The scheduled walk is kept out of the way: this is the writer's catch.
    let h = Harness::with(Options {
        extra_policy: vec![("roles.toml", ROLES.to_owned())],
        agents: vec!["ops"],
        serve_args: vec!["--chain-check-every".into(), "1h".into()],
        ..Options::default()
    });
    let call = || {
        let r = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
        assert_eq!(r.status, 200, "{r:?}");
        h.outcome(&r.request_id());
    };
    call();
    call();
    let metric = |name: &str| -> Option<f64> {
        h.admin(Some("ops"), &["/metrics"])
            .body_text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(|v| v.trim().parse().unwrap())
    };
    assert_ne!(metric("clawgate_audit_chain_intact"), Some(0.0));

    // Another writer that chains properly (an export notes itself in the
    // log) is no break.
    let audit = h.audit.display().to_string();
    let archive = h.path("archive.jsonl.gz");
    let archive_s = archive.to_str().unwrap();
    let export = clawgate(&[
        "audit", "export", "--audit", &audit, "--until", "0s", archive_s,
    ]);
    assert!(export.status.success(), "{export:?}");
    call();
    assert_ne!(metric("clawgate_audit_chain_intact"), Some(0.0));
    assert!(
        !h.stderr()
            .contains("decision log changed behind the writer")
    );

    // Cut the last two records from another process.
    let conn = rusqlite::Connection::open(&h.audit).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let last: i64 = conn
        .query_row("SELECT MAX(seq) FROM records", [], |r| r.get(0))
        .unwrap();
    let cut = conn
        .execute("DELETE FROM records WHERE seq >= ?1", [last - 1])
        .unwrap();
    assert_eq!(cut, 2);
    drop(conn);
    // What is left still verifies: only the writer can tell.
    let verify = clawgate(&["audit", "verify", "--audit", &audit]);
    assert!(verify.status.success(), "{verify:?}");

    // The next batch finds the head it did not leave.
    call();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric("clawgate_audit_chain_intact") != Some(0.0) {
        assert!(Instant::now() < deadline, "the cut tail went unnoticed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric("clawgate_audit_chain_first_broken_seq"),
        Some((last - 1) as f64)
    );
    let ready = h.admin(Some("ops"), &["/readyz"]);
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready
            .body_text()
            .contains(&format!("chain is broken at record {}", last - 1)),
        "{ready:?}"
    );
    assert!(
        h.stderr()
            .contains("decision log changed behind the writer"),
        "{}",
        h.stderr()
    );
    // Calls go on, recorded: the writer chains onto what the store holds.
    call();
}
