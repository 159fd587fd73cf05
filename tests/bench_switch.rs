//! The load harness's benchmark-only switch, `--benchmark-only-decision-log-off`:
//! hidden from help, loud at start, and it really records nothing while the
//! call path (policy, credential injection, refusals) stays the same.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::{CANARY, Harness, Options, clawgate};

const SWITCH: &str = "--benchmark-only-decision-log-off";

#[test]
fn the_switch_is_hidden_from_help() {
    let out = clawgate(&["serve", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--audit"), "{help}");
    assert!(!help.contains(SWITCH), "{help}");
}

#[test]
fn with_the_log_off_calls_are_judged_and_injected_and_nothing_is_recorded() {
    let mut h = Harness::with(Options {
        serve_args: vec![SWITCH.into()],
        ..Options::default()
    });
    let allowed = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let seen = h.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && *v == format!("Bearer {CANARY}"))
    );
    let denied = h.curl(
        Some("research"),
        &[&format!("{}/echo/v1/items/admin", h.base())],
    );
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["reason"], "denied-by-rule");
    h.stop();
    assert!(h.stderr().contains("BENCHMARK ONLY"), "{}", h.stderr());
    assert!(
        !h.audit.exists(),
        "the log-off switch created a decision log at {}",
        h.audit.display()
    );
}
