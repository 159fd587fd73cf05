//! Sentinel misdirection decodes before it scans: a placeholder headed to a
//! host it is not bound to is refused however it is spelled (percent-encoded
//! in the path, query, a header or a form body; JSON-escaped; in a header
//! name; quoted-printable or base64 in a multipart part; in other case), and
//! a body past the scan limit is refused rather than passed unscanned. Real curl
//! through the real binary; each refusal checked in the decision log, which
//! names the sentinel, and at the upstream, which sees nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;

use common::{Harness, Options, contains, files_with_prefix};

const PLACEHOLDER: &str = "clawgate-sentinel-6b2e0f4a9c8d7e1f3a5b7c9d0e2f4a6b";
const VALUE: &str = "sentinel-real-77c1-do-not-leak";

fn harness() -> Harness {
    let policy = format!(
        r#"
[[agent]]
name = "sender"
identities = ["spiffe://clawgate.local/agent/sender"]
scopes = ["bound", "elsewhere"]

[[scope]]
name = "bound"
upstream = "https://{{echo}}"
route = "bound"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]
[[scope.allow]]
paths = ["/**"]

[[scope]]
name = "elsewhere"
upstream = "https://localhost:{{echo_port}}"
route = "elsewhere"
ca_file = "upstream-ca.pem"
allow_private = ["localhost"]
[[scope.allow]]
paths = ["/**"]

[[sentinel]]
name = "echo-key"
placeholder = "{PLACEHOLDER}"
hosts = ["127.0.0.1"]
env = "SENTINEL_REAL"
"#
    );
    Harness::with(Options {
        extra_policy: vec![("sentinel.toml", policy)],
        agents: vec!["sender"],
        env: vec![("SENTINEL_REAL".into(), VALUE.into())],
        serve_args: vec!["--sentinel-scan-limit".into(), "4096".into()],
        ..Options::default()
    })
}

/// The placeholder with every `-` percent-encoded.
fn pct() -> String {
    PLACEHOLDER.replace('-', "%2D")
}

#[test]
fn every_spelling_of_a_misdirected_placeholder_is_refused_and_named() {
    let h = harness();
    let url = |rest: &str| format!("{}/elsewhere{rest}", h.base());
    let json_escaped = format!("{{\"key\":\"\\u0063\\u006c{}\"}}", &PLACEHOLDER[2..]);
    let quoted_printable = PLACEHOLDER.replacen('-', "=2D", 1);
    let multipart = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"key\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{quoted_printable}\r\n--XyZ--\r\n"
    );
    let base64_part = {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("token: {PLACEHOLDER}\n"));
        let (first, second) = encoded.split_at(40);
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"k.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{first}\r\n{second}\r\n--XyZ--\r\n"
        )
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "path",
            vec!["--path-as-is".into(), url(&format!("/v1/{}", pct()))],
        ),
        ("query", vec![url(&format!("/v1/items?key={}", pct()))]),
        (
            "header value",
            vec![
                "-H".into(),
                format!("x-api-key: {}", pct()),
                url("/v1/items"),
            ],
        ),
        (
            "header name",
            vec!["-H".into(), format!("{PLACEHOLDER}: 1"), url("/v1/items")],
        ),
        (
            "form body",
            vec![
                "-H".into(),
                "content-type: application/x-www-form-urlencoded".into(),
                "--data-binary".into(),
                format!("key={}&x=1", pct()),
                url("/v1/items"),
            ],
        ),
        (
            "json escapes",
            vec![
                "-H".into(),
                "content-type: application/json".into(),
                "--data-binary".into(),
                json_escaped,
                url("/v1/items"),
            ],
        ),
        (
            "multipart part",
            vec![
                "-H".into(),
                "content-type: multipart/form-data; boundary=XyZ".into(),
                "--data-binary".into(),
                multipart,
                url("/v1/items"),
            ],
        ),
        (
            "multipart base64 part",
            vec![
                "-H".into(),
                "content-type: multipart/form-data; boundary=XyZ".into(),
                "--data-binary".into(),
                base64_part,
                url("/v1/items"),
            ],
        ),
        (
            "upper case",
            vec![
                "-H".into(),
                format!("authorization: Bearer {}", PLACEHOLDER.to_uppercase()),
                url("/v1/items"),
            ],
        ),
    ];
    for (what, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = h.curl(Some("sender"), &args);
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert_eq!(r.json()["reason"], "sentinel-misdirected", "{what}");
        let record = h.decision(&r.request_id());
        assert_eq!(record.reason, "sentinel-misdirected", "{what}");
        assert!(
            record
                .detail
                .as_deref()
                .unwrap_or_default()
                .contains("sentinel `echo-key` misdirected to localhost"),
            "{what}: {record:?}"
        );
    }
    assert!(h.seen().is_empty(), "nothing was forwarded");

    // A body longer than the scan limit (past the frame that crosses it)
    // cannot be checked: refused, to either host, before anything is
    // forwarded.
    let big = h.dir.path().join("big.bin");
    std::fs::write(&big, "a".repeat(200_000)).unwrap();
    let big = format!("@{}", big.display());
    for route in ["bound", "elsewhere"] {
        let r = h.curl(
            Some("sender"),
            &[
                "--data-binary",
                &big,
                &format!("{}/{route}/v1/items", h.base()),
            ],
        );
        assert_eq!(r.status, 413, "{route}: {r:?}");
        let record = h.decision(&r.request_id());
        assert_eq!(record.reason, "request-too-large");
        assert!(
            record
                .detail
                .as_deref()
                .unwrap()
                .contains("sentinel scan limit"),
            "{record:?}"
        );
    }
    assert!(h.seen().is_empty());
    // A body within the limit still goes to the bound host, swapped.
    let r = h.curl(
        Some("sender"),
        &[
            "-H",
            &format!("x-api-key: {PLACEHOLDER}"),
            "--data-binary",
            "small",
            &format!("{}/bound/v1/items", h.base()),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = h.seen();
    let header = seen[0]
        .headers
        .iter()
        .find(|(k, _)| k == "x-api-key")
        .unwrap();
    assert_eq!(header.1, VALUE);

    let mut h = h;
    h.stop();
    for (path, bytes) in files_with_prefix(h.dir.path(), "audit.db") {
        assert!(!contains(&bytes, VALUE), "leaked into {}", path.display());
    }
}
