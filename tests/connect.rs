//! Forward-proxy mode end to end: `CONNECT` with interception and tunnels, the
//! egress address check, and real clients (curl, Python, undici, httpx)
//! through the real binary, each case checked in the decision log too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{CANARY, Harness, Options, Reply};

/// A tunnel-only agent, an agent whose scopes name public hosts only (one
/// pinned to loopback with `--resolve`), next to the example policy.
const EXTRA: &str = r#"
[[agent]]
name = "tunneler"
identities = ["spiffe://clawgate.local/agent/tunneler"]
scopes = ["echo-tunnel"]

[[scope]]
name = "echo-tunnel"
upstream = "https://localhost:{echo_port}"
allow_private = ["127.0.0.1", "::1"]

[[agent]]
name = "outsider"
identities = ["spiffe://clawgate.local/agent/outsider"]
scopes = ["public", "rebind"]

[[scope]]
name = "public"
upstream = "https://public.test"

[[scope]]
name = "rebind"
upstream = "https://rebind.test"
[[scope.allow]]
paths = ["/**"]
"#;

fn harness() -> Harness {
    Harness::with(Options {
        extra_policy: vec![("connect.toml", EXTRA.to_owned())],
        agents: vec!["tunneler", "outsider"],
        serve_args: vec!["--resolve".into(), "rebind.test=127.0.0.1".into()],
        ..Options::default()
    })
}

fn intercept_ca(h: &Harness) -> String {
    h.certs.join("intercept-ca.pem").display().to_string()
}

/// The request id of the inner response (the last one in the headers).
fn inner_id(reply: &Reply) -> String {
    reply
        .header_all("x-clawgate-request-id")
        .pop()
        .unwrap_or_else(|| panic!("no request id: {reply:?}"))
}

fn echo_url(h: &Harness, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", h.echo.addr.port())
}

#[test]
fn an_intercepted_call_runs_the_whole_pipeline_and_is_recorded() {
    let mut h = harness();
    let ok = h.curl_via_proxy(
        "research",
        &[
            "--cacert",
            &intercept_ca(&h),
            "-H",
            "authorization: Bearer agent-own-token",
            &echo_url(&h, "/v1/items/7?page=2"),
        ],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    let seen = ok.json();
    let headers = seen["headers"].as_array().unwrap();
    let auth: Vec<&str> = headers
        .iter()
        .filter(|kv| kv[0] == "authorization")
        .map(|kv| kv[1].as_str().unwrap())
        .collect();
    // The upstream got the scope's credential; its echo of it reached the
    // agent redacted by the reflection guard.
    assert_eq!(auth, vec!["Bearer [clawgate:redacted]"], "{seen}");
    assert!(!ok.body_text().contains(CANARY));
    let upstream = h.seen();
    let sent: Vec<&str> = upstream[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(sent, vec![format!("Bearer {CANARY}")]);
    assert!(!ok.body_text().contains("agent-own-token"));
    assert_eq!(seen["path"], "/v1/items/7");

    // The CONNECT and the request inside it each have their records.
    let ids = ok.header_all("x-clawgate-request-id");
    assert_eq!(ids.len(), 2, "{ok:?}");
    let connect = h.decision(&ids[0]);
    assert_eq!(connect.mode.as_deref(), Some("connect"));
    assert_eq!(connect.method.as_deref(), Some("CONNECT"));
    assert_eq!(connect.reason, "allowed");
    assert_eq!(connect.scope.as_deref(), Some("echo"));
    assert_eq!(connect.host.as_deref(), Some("127.0.0.1"));
    assert!(connect.detail.as_deref().unwrap().starts_with("intercept"));
    let inner = h.decision(&ids[1]);
    assert_eq!(inner.mode.as_deref(), Some("intercept"));
    assert_eq!(inner.agent.as_deref(), Some("research"));
    assert_eq!(inner.rule.as_deref(), Some("read-items"));
    assert_eq!(inner.path.as_deref(), Some("/v1/items/7"));
    assert_eq!(inner.credential_ref.as_deref(), Some("env:ECHO_API_TOKEN"));
    assert_eq!(
        inner.detail.as_deref(),
        Some(format!("inside connect {}", ids[0]).as_str())
    );
    let outcome = h.outcome(&ids[1]);
    assert_eq!(outcome.status, Some(200));
    assert_eq!(outcome.reason, "allowed");
    // The CONNECT's own outcome lands when the tunnel closes.
    let tunnel = h.outcome(&ids[0]);
    assert_eq!(tunnel.reason, "tunnel-closed", "a normal end: {tunnel:?}");
    assert!(tunnel.bytes_up.unwrap() > 0 && tunnel.bytes_down.unwrap() > 0);

    // A denied path inside the tunnel: 403 with the reason, never forwarded.
    let before = h.seen().len();
    let denied = h.curl_via_proxy(
        "research",
        &[
            "--cacert",
            &intercept_ca(&h),
            &echo_url(&h, "/v1/items/admin"),
        ],
    );
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["reason"], "denied-by-rule");
    let record = h.decision(&inner_id(&denied));
    assert_eq!(record.mode.as_deref(), Some("intercept"));
    assert_eq!(record.reason, "denied-by-rule");
    assert_eq!(record.rule.as_deref(), Some("no-admin"));
    assert_eq!(h.seen().len(), before);

    // The minted leaf names the host and chains to the interception CA only:
    // without that CA, curl refuses it.
    let untrusted = h.curl_via_proxy("research", &[&echo_url(&h, "/v1/items")]);
    assert_ne!(untrusted.exit, 0, "{untrusted:?}");
    assert_eq!(h.seen().len(), before);

    // The injected secret reached the upstream and nothing clawgate wrote.
    h.stop();
    assert!(
        h.stderr().contains("connect allowed"),
        "the log was written"
    );
    assert!(!h.stderr().contains(CANARY) && !h.stdout().contains(CANARY));
    let audit_name = h.audit.file_name().unwrap().to_string_lossy().into_owned();
    for (path, bytes) in common::files_with_prefix(h.dir.path(), &audit_name) {
        assert!(!common::contains(&bytes, CANARY), "{}", path.display());
    }
}

#[test]
fn curl_speaks_http2_inside_the_intercepted_tunnel() {
    let h = harness();
    let reply = h.curl_via_proxy(
        "research",
        &[
            "--http2",
            "--cacert",
            &intercept_ca(&h),
            "-w",
            "|%{http_version}",
            &echo_url(&h, "/v1/items"),
        ],
    );
    assert_eq!(reply.exit, 0, "{reply:?}");
    assert!(reply.stdout.ends_with("|2"), "{reply:?}");
    let record = h.decision(&inner_id(&reply));
    assert_eq!(record.mode.as_deref(), Some("intercept"));
    assert_eq!(record.reason, "allowed");
    assert_eq!(h.outcome(&inner_id(&reply)).status, Some(200));
}

#[test]
fn a_tunnel_splices_bytes_and_the_agent_sees_the_upstream_certificate() {
    let h = harness();
    let url = format!("https://localhost:{}/v1/anything", h.echo.addr.port());
    let ca = h.policy.join("upstream-ca.pem").display().to_string();
    let reply = h.curl_via_proxy("tunneler", &["--cacert", &ca, "-w", "|%{certs}", &url]);
    assert_eq!(reply.exit, 0, "{reply:?}");
    // The chain curl saw is the echo's own certificate, byte for byte.
    let der_b64 = |pem: &str| -> String {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
    };
    let seen_pem = reply.stdout.split('|').nth(1).unwrap_or_default();
    let begin = seen_pem.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = seen_pem.find("-----END CERTIFICATE-----").unwrap();
    assert_eq!(
        der_b64(&seen_pem[begin..end]),
        der_b64(&h.upstream_cert.cert),
        "{reply:?}"
    );
    let seen = h.seen();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].headers.iter().any(|(k, _)| k == "authorization"));

    let connect_id = reply.header_all("x-clawgate-request-id")[0].clone();
    let decision = h.decision(&connect_id);
    assert_eq!(decision.mode.as_deref(), Some("connect"));
    assert_eq!(decision.scope.as_deref(), Some("echo-tunnel"));
    assert_eq!(decision.host.as_deref(), Some("localhost"));
    assert!(decision.detail.as_deref().unwrap().starts_with("tunnel"));
    let outcome = h.outcome(&connect_id);
    assert_eq!(outcome.reason, "tunnel-closed", "a normal end: {outcome:?}");
    let (up, down) = (outcome.bytes_up.unwrap(), outcome.bytes_down.unwrap());
    // A TLS handshake and one request each way: hundreds of bytes at least.
    assert!(up > 300 && down > 300, "up {up} down {down}");
    assert!(outcome.duration_ms.is_some());

    // A tunnel scope has no rules, so a plain request to it is refused.
    let plain = h.curl_via_proxy(
        "tunneler",
        &[&format!(
            "http://localhost:{}/v1/anything",
            h.echo.addr.port()
        )],
    );
    assert_eq!(plain.status, 403, "{plain:?}");
    assert_eq!(plain.json()["reason"], "no-matching-rule");
}

#[test]
fn a_host_in_no_scope_is_refused_at_connect_and_recorded() {
    let h = harness();
    for (agent, reason) in [
        ("research", "no-matching-scope"),
        ("intruder", "unknown-agent"),
    ] {
        let reply = h.curl_via_proxy(
            agent,
            &["-w", "|%{http_connect}", "https://api.example.com/v1/x"],
        );
        assert_ne!(reply.exit, 0);
        assert!(reply.stdout.ends_with("|403"), "{agent}: {reply:?}");
        let records = h.wait_for(reason, |r| {
            r.reason == reason && r.method.as_deref() == Some("CONNECT")
        });
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].host.as_deref(), Some("api.example.com"));
        assert_eq!(records[0].mode.as_deref(), Some("connect"));
    }
    // A host in a scope, on a port the scope does not list, is in no scope.
    let wrong_port = raw(
        &h,
        "outsider",
        &["CONNECT public.test:8443 HTTP/1.1\r\nHost: public.test:8443\r\nConnection: close\r\n\r\n".to_owned()],
    );
    assert_eq!(wrong_port[0]["status"], 403, "{wrong_port:?}");
    assert!(
        wrong_port[0]["body"]
            .as_str()
            .unwrap()
            .contains("no-matching-scope")
    );
    h.wait_for("wrong port", |r| {
        r.host.as_deref() == Some("public.test") && r.reason == "no-matching-scope"
    });
    assert!(h.seen().is_empty());
}

/// Raw request heads through Python's ssl module: curl would normalise the
/// odd spellings before they left it.
fn raw(h: &Harness, agent: &str, heads: &[String]) -> Vec<serde_json::Value> {
    let (cert, key) = h.agent_cert(agent);
    let mut child = Command::new("python3")
        .arg(clients_dir().join("raw_proxy.py"))
        .arg(h.port.to_string())
        .arg(h.certs.join("ca.pem"))
        .arg(cert)
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    serde_json::to_writer(child.stdin.take().unwrap(), heads).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

#[test]
fn egress_refuses_every_spelling_of_a_private_address() {
    let h = harness();
    let hosts = [
        "127.0.0.1",
        "localhost",
        "169.254.169.254",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0x7f000001",
        "2130706433",
        "017700000001",
        "0.0.0.0",
        "rebind.test",
    ];
    let mut heads = Vec::new();
    for host in hosts {
        heads.push(format!(
            "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nConnection: close\r\n\r\n"
        ));
        heads.push(format!(
            "GET http://{host}/v1/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ));
    }
    let answers = raw(&h, "outsider", &heads);
    assert_eq!(answers.len(), heads.len());
    for (head, answer) in heads.iter().zip(&answers) {
        assert_eq!(answer["status"], 403, "{head}: {answer}");
        let body: serde_json::Value =
            serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["reason"], "egress-address-blocked", "{head}: {answer}");
    }
    // Decision records are committed before each answer; the one outcome
    // record is queued, so wait for it before counting.
    h.wait_for("the pinned name's outcome", |r| {
        r.kind == "outcome" && r.reason == "egress-address-blocked"
    });
    let blocked = h.wait_for("egress records", |r| r.reason == "egress-address-blocked");
    // One decision per CONNECT and per literal request; the request to the
    // name pinned to loopback is allowed by policy and blocked at connect,
    // so its outcome record says why.
    assert_eq!(blocked.len(), heads.len(), "{blocked:#?}");
    let rebind_outcome = blocked
        .iter()
        .find(|r| r.kind == "outcome")
        .expect("the pinned name's outcome");
    assert_eq!(rebind_outcome.host.as_deref(), Some("rebind.test"));
    assert_eq!(rebind_outcome.status, Some(403));
    let rebind_connect = blocked
        .iter()
        .find(|r| {
            r.method.as_deref() == Some("CONNECT") && r.host.as_deref() == Some("rebind.test")
        })
        .unwrap();
    assert!(
        rebind_connect
            .detail
            .as_deref()
            .unwrap()
            .contains("loopback"),
        "{rebind_connect:?}"
    );
    for spelling in ["127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0"] {
        assert!(
            blocked.iter().any(|r| r.host.as_deref() == Some(spelling)),
            "{spelling} recorded in its canonical form"
        );
    }
    assert!(h.seen().is_empty(), "nothing reached the upstream");

    // A scope that names the private upstream explicitly reaches it.
    let ok = raw(
        &h,
        "research",
        &[format!(
            "GET http://127.0.0.1:{}/v1/items HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            h.echo.addr.port()
        )],
    );
    assert_eq!(ok[0]["status"], 200, "{ok:?}");
    assert_eq!(h.seen().len(), 1);
}

#[test]
fn undici_and_httpx_fetch_through_the_proxy() {
    let h = harness();
    let (cert, key) = h.agent_cert("research");
    let proxy = format!("https://localhost:{}", h.port);
    let ca = h.certs.join("ca.pem");
    let urls = [echo_url(&h, "/v1/items/1"), echo_url(&h, "/v1/items/admin")];
    let node_modules = clients_dir().join("node_modules/undici");
    assert!(
        node_modules.exists(),
        "undici is not installed: run .ci/run (npm install in tests/clients)"
    );
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "httpx is not installed: run .ci/run (a virtual environment in target/pyenv)"
    );
    let runs = [
        Command::new("node")
            .arg(clients_dir().join("undici_fetch.mjs"))
            .args([&proxy])
            .args([&ca, &cert, &key, &h.certs.join("intercept-ca.pem")])
            .args(&urls)
            .output()
            .unwrap(),
        Command::new(&python)
            .arg(clients_dir().join("httpx_fetch.py"))
            .args([&proxy])
            .args([&ca, &cert, &key, &h.certs.join("intercept-ca.pem")])
            .args(&urls)
            .output()
            .unwrap(),
    ];
    for out in runs {
        assert!(out.status.success(), "{out:?}");
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["status"], 200, "{lines:?}");
        let body = lines[0]["body"].as_str().unwrap();
        // The echo of the injected credential comes back redacted.
        assert!(body.contains("Bearer [clawgate:redacted]"), "{lines:?}");
        assert!(!body.contains(CANARY) && !body.contains("agent-own-token"));
        assert_eq!(lines[1]["status"], 403, "{lines:?}");
        assert!(
            lines[1]["body"]
                .as_str()
                .unwrap()
                .contains("denied-by-rule")
        );
    }
    let inner: Vec<_> = h
        .records()
        .into_iter()
        .filter(|r| r.kind == "decision" && r.mode.as_deref() == Some("intercept"))
        .collect();
    assert_eq!(inner.len(), 4, "{inner:#?}");
    assert_eq!(h.seen().len(), 2);
}

#[test]
fn env_prints_a_working_proxy_environment() {
    let h = harness();
    let out = Command::new(common::BIN)
        .args(["env", "--agent", "research", "--certs"])
        .arg(&h.certs)
        .args(["--proxy", &format!("https://localhost:{}", h.port)])
        // Stands in for the system roots so the test needs nothing from the host.
        .arg("--system-roots")
        .arg(h.policy.join("upstream-ca.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let vars: std::collections::HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .collect();
    for var in [
        "HTTPS_PROXY",
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "AWS_CA_BUNDLE",
        "CLAWGATE_AGENT_CERT",
        "CLAWGATE_AGENT_KEY",
    ] {
        assert!(vars.contains_key(var), "{var} missing: {text}");
    }
    let bundle = std::fs::read_to_string(vars["SSL_CERT_FILE"]).unwrap();
    for pem in ["intercept-ca.pem", "ca.pem"] {
        let ca = std::fs::read_to_string(h.certs.join(pem)).unwrap();
        assert!(bundle.contains(ca.trim()), "{pem} not in the bundle");
    }
    assert!(bundle.contains(h.upstream_ca.cert.trim()));
    assert!(!text.contains("PRIVATE KEY"));

    // curl, configured only from what `env` printed, reaches the upstream.
    let reply = common::curl(&[
        "--proxy".into(),
        vars["HTTPS_PROXY"].into(),
        "--proxy-cacert".into(),
        vars["CURL_CA_BUNDLE"].into(),
        "--cacert".into(),
        vars["CURL_CA_BUNDLE"].into(),
        "--proxy-cert".into(),
        vars["CLAWGATE_AGENT_CERT"].into(),
        "--proxy-key".into(),
        vars["CLAWGATE_AGENT_KEY"].into(),
        echo_url(&h, "/v1/items"),
    ]);
    assert_eq!(reply.status, 200, "{reply:?}");

    // A Node agent's unchanged code (global fetch), with the environment
    // `env` printed and the preload from the README.
    let out = Command::new("node")
        .arg(clients_dir().join("global_fetch.mjs"))
        .arg(echo_url(&h, "/v1/items/9"))
        .envs(vars.iter().map(|(k, v)| (*k, *v)))
        .env(
            "NODE_OPTIONS",
            format!(
                "--import={}",
                clients_dir().join("clawgate-proxy.mjs").display()
            ),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    let body = answer["body"].as_str().unwrap();
    assert!(body.contains("Bearer [clawgate:redacted]"), "{answer}");
    assert!(!body.contains(CANARY), "{answer}");
    h.wait_for("the fetch inside interception", |r| {
        r.mode.as_deref() == Some("intercept") && r.path.as_deref() == Some("/v1/items/9")
    });
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// clawgate's peak resident memory may not pass this while 200 MB go each
/// way through an intercepted connection: bodies are streamed, never held.
const STREAMING_RSS_BOUND_KIB: u64 = 64 * 1024;

#[test]
fn two_hundred_megabytes_stream_through_interception_in_bounded_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let h = harness();
    let file = h.path("upload.bin");
    std::fs::File::create(&file).unwrap().set_len(SIZE).unwrap();
    let (cert, key) = h.agent_cert("research");
    let run = |extra: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "300",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download} %{size_upload}",
            ])
            .args(["--proxy", &format!("https://localhost:{}", h.port)])
            .arg("--proxy-cacert")
            .arg(h.certs.join("ca.pem"))
            .arg("--proxy-cert")
            .arg(&cert)
            .arg("--proxy-key")
            .arg(&key)
            .args(["--cacert", &intercept_ca(&h)])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let up = run(&[
        "-T",
        file.to_str().unwrap(),
        &echo_url(&h, "/v1/uploads/big"),
    ]);
    assert_eq!(up, format!("200 {} {SIZE}", up.split(' ').nth(1).unwrap()));
    let seen = h.seen();
    assert_eq!(seen.last().unwrap().body_bytes, SIZE);
    let down = run(&[&echo_url(&h, &format!("/v1/items/bytes/{SIZE}"))]);
    assert_eq!(down, format!("200 {SIZE} 0"));
    let peak = peak_rss_kib(h.pid());
    eprintln!("clawgate peak RSS after 2 x 200 MB: {peak} KiB");
    assert!(
        peak < STREAMING_RSS_BOUND_KIB,
        "peak RSS {peak} KiB is over {STREAMING_RSS_BOUND_KIB} KiB"
    );
    // Outcome records are queued when each body ends; wait for both.
    let size = Some(SIZE as i64);
    let outcome = |r: &clawgate::audit::DecisionRecord| {
        r.kind == "outcome" && r.mode.as_deref() == Some("intercept") && r.reason == "allowed"
    };
    h.wait_for("the upload's outcome", |r| outcome(r) && r.bytes_up == size);
    h.wait_for("the download's outcome", |r| {
        outcome(r) && r.bytes_down == size
    });
}

#[test]
fn a_websocket_upgrade_inside_interception_is_adjudicated_and_recorded_once() {
    let h = harness();
    let (cert, key) = h.agent_cert("research");
    let proxy = format!("https://localhost:{}", h.port);
    let url = format!("wss://127.0.0.1:{}/v1/items/live", h.echo.addr.port());
    let out = Command::new("node")
        .arg(clients_dir().join("undici_websocket.mjs"))
        .arg(&proxy)
        .args([
            &h.certs.join("ca.pem"),
            &cert,
            &key,
            &h.certs.join("intercept-ca.pem"),
        ])
        .args([&url, "hello through clawgate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(answer["echoed"], "hello through clawgate", "{answer}");

    // The upstream saw one upgrade request, with the injected credential.
    let seen = h.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0]
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == &format!("Bearer {CANARY}"))
    );
    assert!(
        seen[0]
            .headers
            .iter()
            .any(|(k, v)| k == "upgrade" && v == "websocket")
    );

    let upgrades: Vec<_> = h
        .records()
        .into_iter()
        .filter(|r| r.mode.as_deref() == Some("intercept") && r.kind == "decision")
        .collect();
    assert_eq!(upgrades.len(), 1, "{upgrades:#?}");
    assert_eq!(upgrades[0].path.as_deref(), Some("/v1/items/live"));
    assert_eq!(upgrades[0].rule.as_deref(), Some("read-items"));
    let outcome = h.outcome(&upgrades[0].request_id);
    assert_eq!(outcome.status, Some(101));
    assert_eq!(outcome.reason, "tunnel-closed", "a normal end: {outcome:?}");
    // One message each way, framed: more than the text itself.
    assert!(outcome.bytes_up.unwrap() >= 22 && outcome.bytes_down.unwrap() >= 22);

    // A denied path is refused at the upgrade and never reaches the upstream.
    let denied = Command::new("node")
        .arg(clients_dir().join("undici_websocket.mjs"))
        .arg(&proxy)
        .args([
            &h.certs.join("ca.pem"),
            &cert,
            &key,
            &h.certs.join("intercept-ca.pem"),
        ])
        .args([
            &format!("wss://127.0.0.1:{}/v1/items/admin", h.echo.addr.port()),
            "x",
        ])
        .output()
        .unwrap();
    assert!(!denied.status.success(), "{denied:?}");
    assert_eq!(h.seen().len(), 1);
    h.wait_for("denied upgrade", |r| {
        r.mode.as_deref() == Some("intercept") && r.reason == "denied-by-rule"
    });
}

#[test]
fn proxy_refusals_carry_proxy_status_and_inner_refusals_name_their_connect() {
    let h = harness();
    // A refused CONNECT: the status line and body may be dropped by the
    // client's stack, the Proxy-Status header says why.
    let refused = h.curl_via_proxy("research", &["https://not-in-policy.test/"]);
    assert_ne!(refused.exit, 0, "{refused:?}");
    assert_eq!(
        refused.header("proxy-status").as_deref(),
        Some("clawgate; error=http_request_denied; details=\"no-matching-scope\""),
        "{refused:?}"
    );
    let record = h.decision(&refused.request_id());
    assert_eq!(record.mode.as_deref(), Some("connect"));
    assert_eq!(record.host.as_deref(), Some("not-in-policy.test"));
    assert_eq!(record.reason, "no-matching-scope");

    // Absolute form, refused: the same header.
    let forward = h.curl_via_proxy("research", &["http://not-in-policy.test/x"]);
    assert_eq!(forward.status, 403);
    assert_eq!(
        forward.header("proxy-status").as_deref(),
        Some("clawgate; error=http_request_denied; details=\"no-matching-scope\"")
    );

    // Inside an intercepted tunnel: refused by policy, with Proxy-Status,
    // and recorded as mode `intercept` with the CONNECT's id.
    let inner = h.curl_via_proxy(
        "research",
        &[
            "--cacert",
            &intercept_ca(&h),
            &echo_url(&h, "/v2/not-allowed"),
        ],
    );
    assert_eq!(inner.status, 403, "{inner:?}");
    let ids = inner.header_all("x-clawgate-request-id");
    assert_eq!(ids.len(), 2, "{inner:?}");
    let statuses = inner.header_all("proxy-status");
    assert_eq!(statuses.len(), 1, "only the refusal carries it: {inner:?}");
    assert!(statuses[0].contains(&format!(
        "details=\"{}\"",
        inner.json()["reason"].as_str().unwrap()
    )));
    let record = h.decision(&ids[1]);
    assert_eq!(record.mode.as_deref(), Some("intercept"));
    assert_eq!(record.scope.as_deref(), Some("echo"));
    assert_eq!(record.path.as_deref(), Some("/v2/not-allowed"));
    assert_eq!(
        record.detail.as_deref(),
        Some(format!("inside connect {}", ids[0]).as_str())
    );

    // The gateway is no proxy: no Proxy-Status there.
    let gateway = h.curl(
        Some("research"),
        &[&format!("{}/echo/v2/not-allowed", h.base())],
    );
    assert_eq!(gateway.status, 403);
    assert_eq!(gateway.header("proxy-status"), None);
}
