//! End-to-end run tokens: `clawgate token issue`, the header on the agent
//! listener (narrowing, run id in the records, distinct refusals), and the
//! token listener with `Proxy-Authorization: Basic` for clients without a
//! certificate. Real binary, real TLS, curl.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Harness, Options, clawgate};

const MULTI: &str = r#"
[[agent]]
name = "multi"
identities = ["spiffe://clawgate.local/agent/multi"]
scopes = ["one-echo", "two-echo"]

[[scope]]
name = "one-echo"
upstream = "https://{echo}"
route = "one-echo"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]
[[scope.allow]]
id = "one-all"
paths = ["/v1/**"]

[[scope]]
name = "two-echo"
upstream = "https://localhost:{echo_port}"
route = "two-echo"
ca_file = "upstream-ca.pem"
allow_private = ["localhost"]
[[scope.allow]]
id = "two-all"
paths = ["/v1/**"]
"#;

fn harness(serve_args: Vec<String>) -> Harness {
    Harness::with(Options {
        extra_policy: vec![("multi.toml", MULTI.to_owned())],
        agents: vec!["multi"],
        serve_args,
        ..Options::default()
    })
}

fn issue(h: &Harness, args: &[&str]) -> String {
    let mut all = vec!["token", "issue", "--certs", h.certs.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = clawgate(&all);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn call(h: &Harness, agent: &str, token: &str, path: &str) -> common::Reply {
    h.curl(
        Some(agent),
        &[
            "-H",
            &format!("x-clawgate-run-token: {token}"),
            &format!("{}{path}", h.base()),
        ],
    )
}

#[test]
fn a_narrower_token_refuses_what_it_dropped_and_names_its_run_in_every_record() {
    let h = harness(Vec::new());
    let token = issue(
        &h,
        &[
            "--agent", "multi", "--ttl", "10m", "--scopes", "one-echo", "--run", "run-42",
        ],
    );
    let r = call(&h, "multi", &token, "/one-echo/v1/a");
    assert_eq!(r.status, 200, "{r:?}");
    let decision = h.decision(&r.request_id());
    assert_eq!(decision.run_id.as_deref(), Some("run-42"));
    assert_eq!(h.outcome(&r.request_id()).run_id.as_deref(), Some("run-42"));
    assert!(
        !h.seen()[0]
            .headers
            .iter()
            .any(|(k, _)| k == "x-clawgate-run-token"),
        "the token never goes upstream"
    );

    let r = call(&h, "multi", &token, "/two-echo/v1/a");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["reason"], "run-token-scope");
    let record = h.decision(&r.request_id());
    assert_eq!(record.reason, "run-token-scope");
    assert_eq!(record.run_id.as_deref(), Some("run-42"));
    // Without the token the certificate allows both scopes; a token never widens.
    assert_eq!(
        h.curl(Some("multi"), &[&format!("{}/two-echo/v1/a", h.base())])
            .status,
        200
    );
    let wide = issue(&h, &["--agent", "research", "--scopes", "echo,one-echo"]);
    let r = call(&h, "research", &wide, "/one-echo/v1/a");
    assert_eq!(r.json()["reason"], "no-matching-scope", "{r:?}");
    assert_eq!(h.seen().len(), 2);
}

#[test]
fn another_agents_an_expired_and_a_tampered_token_are_refused_with_distinct_reasons() {
    let h = harness(Vec::new());
    let theirs = issue(&h, &["--agent", "research"]);
    let r = call(&h, "multi", &theirs, "/one-echo/v1/a");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "run-token-wrong-agent");
    assert_eq!(h.decision(&r.request_id()).reason, "run-token-wrong-agent");

    let mine = issue(&h, &["--agent", "multi", "--run", "honest"]);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts: Vec<String> = mine.split('.').map(str::to_owned).collect();
    let payload = String::from_utf8(b64.decode(&parts[1]).unwrap()).unwrap();
    parts[1] = b64.encode(payload.replace("\"honest\"", "\"forged\""));
    let r = call(&h, "multi", &parts.join("."), "/one-echo/v1/a");
    assert_eq!(r.json()["reason"], "run-token-invalid", "{r:?}");
    let record = h.decision(&r.request_id());
    assert_eq!(record.reason, "run-token-invalid");
    assert_eq!(record.run_id, None, "a forged run id is not recorded");

    let short = issue(&h, &["--agent", "multi", "--ttl", "1s"]);
    assert_eq!(call(&h, "multi", &short, "/one-echo/v1/a").status, 200);
    // Past the expiry and the leeway.
    std::thread::sleep(
        Duration::from_secs(1) + clawgate::token::LEEWAY + Duration::from_millis(1200),
    );
    let r = call(&h, "multi", &short, "/one-echo/v1/a");
    assert_eq!(r.json()["reason"], "run-token-expired", "{r:?}");
    assert_eq!(h.decision(&r.request_id()).reason, "run-token-expired");
    assert_eq!(h.seen().len(), 1, "no refused call was forwarded");
}

#[test]
fn the_token_listener_takes_the_token_as_proxy_password() {
    let h = harness(vec!["--token-listen".into(), "127.0.0.1:0".into()]);
    let port: u16 = h
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("clawgate: token proxy on https://"))
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = |user: Option<&str>| {
        let mut args: Vec<String> = vec![
            "--proxy".into(),
            format!("https://localhost:{port}"),
            "--proxy-cacert".into(),
            h.certs.join("ca.pem").display().to_string(),
        ];
        if let Some(user) = user {
            args.extend(["--proxy-user".into(), user.to_owned()]);
        }
        args.push(format!("http://{}/v1/items/7", h.echo.addr));
        common::curl(&args)
    };
    let token = issue(&h, &["--agent", "research", "--run", "no-cert-run"]);
    let r = proxy(Some(&format!("research:{token}")));
    assert_eq!(r.status, 200, "{r:?}");
    let record = h.decision(&r.request_id());
    assert_eq!(record.agent.as_deref(), Some("research"));
    assert_eq!(record.run_id.as_deref(), Some("no-cert-run"));
    assert_eq!(record.mode.as_deref(), Some("forward"));
    let seen = &h.seen()[0];
    assert!(
        !seen
            .headers
            .iter()
            .any(|(k, _)| k == "proxy-authorization" || k == "x-clawgate-run-token"),
        "{seen:?}"
    );

    let r = proxy(None);
    assert_eq!(r.status, 407, "{r:?}");
    assert_eq!(
        r.header("proxy-authenticate").as_deref(),
        Some("Basic realm=\"clawgate\"")
    );
    assert_eq!(h.decision(&r.request_id()).reason, "run-token-missing");

    let r = proxy(Some("research:not-a-token"));
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(h.decision(&r.request_id()).reason, "run-token-invalid");
    assert_eq!(h.seen().len(), 1);
}
