//! Path spellings that some upstreams fold into another path (a trailing
//! `.` or space, fullwidth characters, zero-width and bidi characters) are
//! refused as `malformed-request` before any rule sees them, unless the
//! scope is `path_strictness = "lenient"`; `case_insensitive_paths` makes a
//! deny rule meet `SECRET`. Real curl through the real binary, each case
//! checked in the decision log and at the echo upstream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;

use common::{Harness, Options};

const EXTRA: &str = r#"
[[agent]]
name = "walker"
identities = ["spiffe://clawgate.local/agent/walker"]
scopes = ["strict"]

[[agent]]
name = "lax"
identities = ["spiffe://clawgate.local/agent/lax"]
scopes = ["lenient"]

[[agent]]
name = "folder"
identities = ["spiffe://clawgate.local/agent/folder"]
scopes = ["folded"]

[[scope]]
name = "strict"
upstream = "https://127.0.0.1:{echo_port}"
route = "strict"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]
[[scope.allow]]
paths = ["/allowed/**"]
[[scope.deny]]
id = "no-secret"
paths = ["/allowed/secret/**"]

[[scope]]
name = "lenient"
upstream = "https://127.0.0.1:{echo_port}"
route = "lenient"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]
path_strictness = "lenient"
[[scope.allow]]
paths = ["/allowed/**"]
[[scope.deny]]
paths = ["/allowed/secret/**"]

[[scope]]
name = "folded"
upstream = "https://127.0.0.1:{echo_port}"
route = "folded"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]
case_insensitive_paths = true
[[scope.allow]]
paths = ["/allowed/**"]
[[scope.deny]]
id = "no-secret-folded"
paths = ["/allowed/secret/**"]
"#;

/// The hazards of the issue, as an agent would send them (percent-encoded
/// where curl would otherwise change them).
const HAZARDS: [&str; 8] = [
    "/allowed/secret./x",
    "/allowed/secret%2e/x",
    "/allowed/secret%20/x",
    "/allowed/secret%C2%A0/x",    // no-break space
    "/allowed/secret%EF%BC%8E/x", // fullwidth full stop
    "/allowed/%EF%BD%93ecret/x",  // fullwidth s
    "/allowed/se%E2%80%8Bcret/x", // zero-width space
    "/allowed/secret%E2%80%AE/x", // right-to-left override
];

#[test]
fn hazards_are_refused_lenient_lets_them_through_and_folding_denies_upper_case() {
    let h = Harness::with(Options {
        extra_policy: vec![("walker.toml", EXTRA.to_owned())],
        agents: vec!["walker", "lax", "folder"],
        ..Options::default()
    });
    // One agent per scope: an agent has at most one scope per host.
    let get = |route: &str, path: &str| {
        let agent = match route {
            "strict" => "walker",
            "lenient" => "lax",
            _ => "folder",
        };
        h.curl(
            Some(agent),
            &["--path-as-is", &format!("{}/{route}{path}", h.base())],
        )
    };
    for path in HAZARDS {
        let r = get("strict", path);
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(r.json()["reason"], "malformed-request", "{path}");
        let record = h.decision(&r.request_id());
        assert_eq!(record.reason, "malformed-request", "{path}");
        assert_eq!(record.scope.as_deref(), Some("strict"));
        assert!(
            record
                .detail
                .as_deref()
                .unwrap_or_default()
                .contains("path"),
            "{path}: the record says which hazard: {record:?}"
        );
    }
    assert!(h.seen().is_empty(), "no hazard reached the upstream");

    // The lenient scope forwards each (its upstream is trusted not to fold).
    for path in HAZARDS {
        let r = get("lenient", path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(h.decision(&r.request_id()).reason, "allowed");
    }
    assert_eq!(h.seen().len(), HAZARDS.len());

    // Ordinary paths still pass the strict scope, and its deny rule holds.
    assert_eq!(get("strict", "/allowed/report.txt").status, 200);
    let r = get("strict", "/allowed/secret/x");
    assert_eq!(r.json()["reason"], "denied-by-rule");
    // `SECRET` is another path to a strict upstream; a folding scope
    // meets its deny rule with it.
    assert_eq!(get("strict", "/allowed/SECRET/x").status, 200);
    for path in ["/allowed/SECRET/x", "/ALLOWED/Secret/x"] {
        let r = get("folded", path);
        assert_eq!(r.status, 403, "{path}: {r:?}");
        let record = h.decision(&r.request_id());
        assert_eq!(record.reason, "denied-by-rule");
        assert_eq!(record.rule.as_deref(), Some("no-secret-folded"));
    }
    assert_eq!(get("folded", "/Allowed/other").status, 200);
}
