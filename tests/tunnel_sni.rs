//! Tunnels carry only the host their `CONNECT` named: the ClientHello inside
//! a tunnel is read (without terminating TLS) and its server name checked,
//! end to end through the real binary with real TLS clients: Python's ssl
//! (OpenSSL) for crafted and fragmented ClientHellos, curl on the agent and
//! the token listener, and hyper's HTTP/2 client for HTTP/2 `CONNECT` (the
//! curl of the test machines, 7.88, has no `--proxy-http2`). Every case is
//! checked in the decision log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Harness, Options, clawgate};

/// One strict tunnel scope (by name) and one that lets through what cannot
/// be checked (by address, where no SNI is the norm).
const EXTRA: &str = r#"
[roles]
admins = ["spiffe://clawgate.local/agent/ops"]

[[agent]]
name = "tunneler"
identities = ["spiffe://clawgate.local/agent/tunneler"]
scopes = ["strict-tunnel", "lenient-tunnel"]

[[scope]]
name = "strict-tunnel"
upstream = "https://localhost:{echo_port}"
allow_private = ["127.0.0.1", "::1"]

[[scope]]
name = "lenient-tunnel"
upstream = "https://127.0.0.1:{echo_port}"
allow_private = ["127.0.0.1"]
tunnel_without_sni = "allow"
tunnel_ech = "allow"
"#;

fn harness(serve_args: Vec<String>) -> Harness {
    Harness::with(Options {
        extra_policy: vec![("tunnels.toml", EXTRA.to_owned())],
        agents: vec!["tunneler", "ops"],
        serve_args,
        ..Options::default()
    })
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Opens a tunnel to `target` and starts TLS inside with `sni` (`-` for
/// none) sent as `shape`; returns the script's JSON line.
fn hello(h: &Harness, target: &str, sni: &str, shape: &str) -> serde_json::Value {
    let (cert, key) = h.agent_cert("tunneler");
    let out = Command::new("python3")
        .arg(clients_dir().join("tunnel_hello.py"))
        .arg(h.port.to_string())
        .arg(h.certs.join("ca.pem"))
        .arg(cert)
        .arg(key)
        .arg(target)
        .arg(sni)
        .arg(shape)
        .arg(h.policy.join("upstream-ca.pem"))
        .output()
        .expect("python3 is installed");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_tunnel_goes_only_where_its_connect_said() {
    let h = harness(Vec::new());
    let port = h.echo.addr.port();
    let by_name = format!("localhost:{port}");

    // A matching name works, however the ClientHello is cut: whole, across
    // TLS records, and across TCP segments.
    for shape in ["plain", "records", "segments"] {
        let r = hello(&h, &by_name, "localhost", shape);
        assert_eq!(r["connect"], 200, "{shape}: {r}");
        assert_eq!(r["handshake"], true, "{shape}: {r}");
        assert_eq!(r["status"], 200, "{shape}: {r}");
        let outcome = h.outcome(r["id"].as_str().unwrap());
        assert_eq!(outcome.reason, "tunnel-closed", "{shape}: {outcome:?}");
        assert!(
            outcome.detail.as_deref().unwrap().contains("sni localhost"),
            "{outcome:?}"
        );
    }
    assert_eq!(h.seen().len(), 3);

    // Another name (domain fronting), in one piece or fragmented; no name;
    // an encrypted ClientHello: each cut before a byte reaches the upstream.
    let refused = [
        (
            "evil.example",
            "plain",
            "tunnel-sni-mismatch",
            "sni evil.example",
        ),
        (
            "evil.example",
            "records",
            "tunnel-sni-mismatch",
            "sni evil.example",
        ),
        (
            "evil.example",
            "segments",
            "tunnel-sni-mismatch",
            "sni evil.example",
        ),
        ("-", "plain", "tunnel-sni-missing", "names no server"),
        ("localhost", "ech", "tunnel-ech", "encrypted client hello"),
    ];
    for (sni, shape, reason, detail) in refused {
        let r = hello(&h, &by_name, sni, shape);
        assert_eq!(r["connect"], 200, "{sni} {shape}: {r}");
        assert_eq!(r["handshake"], false, "{sni} {shape}: {r}");
        let id = r["id"].as_str().unwrap();
        assert_eq!(h.decision(id).reason, "allowed");
        let outcome = h.outcome(id);
        assert_eq!(outcome.reason, reason, "{sni} {shape}: {outcome:?}");
        assert!(
            outcome.detail.as_deref().unwrap().contains(detail),
            "{outcome:?}"
        );
        assert_eq!(outcome.scope.as_deref(), Some("strict-tunnel"));
    }
    assert_eq!(h.seen().len(), 3, "no refused tunnel reached the upstream");

    // The scope that allows it lets a nameless ClientHello through, and an
    // encrypted one past the check (the echo then refuses the altered
    // handshake itself), but never a wrong name.
    let by_address = format!("127.0.0.1:{port}");
    let r = hello(&h, &by_address, "-", "plain");
    assert_eq!(r["status"], 200, "{r}");
    let outcome = h.outcome(r["id"].as_str().unwrap());
    assert!(
        outcome
            .detail
            .as_deref()
            .unwrap()
            .contains("tunnel_without_sni")
    );
    let r = hello(&h, &by_address, "localhost", "ech");
    assert_ne!(h.outcome(r["id"].as_str().unwrap()).reason, "tunnel-ech");
    let r = hello(&h, &by_address, "localhost", "plain");
    assert_eq!(r["handshake"], false, "{r}");
    assert_eq!(
        h.outcome(r["id"].as_str().unwrap()).reason,
        "tunnel-sni-mismatch"
    );

    // The metrics count each refusal by its reason.
    let text = h.admin(Some("ops"), &["/metrics"]).body_text();
    for reason in ["tunnel-sni-mismatch", "tunnel-sni-missing", "tunnel-ech"] {
        assert!(
            text.contains(&format!("decision=\"deny\",reason=\"{reason}\"")),
            "{reason} in {text}"
        );
    }
    // And the findings name each fronting attempt.
    let out = clawgate(&[
        "audit",
        "findings",
        "--audit",
        h.audit.to_str().unwrap(),
        "--json",
    ]);
    let findings = String::from_utf8_lossy(&out.stdout);
    assert!(findings.contains("tunnel-sni-mismatch"), "{out:?}");
    // And the top refusal reasons (the console's) count them.
    let out = clawgate(&["audit", "stats", "--audit", h.audit.to_str().unwrap()]);
    let stats = String::from_utf8_lossy(&out.stdout);
    for reason in ["tunnel-sni-mismatch", "tunnel-sni-missing", "tunnel-ech"] {
        assert!(stats.contains(reason), "{reason} in {stats}");
    }
}

/// curl's `--connect-to` sends the `CONNECT` to one host and the SNI of
/// another: the fronting a new user would try first.
fn fronted(args: &[String], port: u16, sni_host: &str) -> Vec<String> {
    let mut all = args.to_vec();
    all.extend([
        "--connect-to".into(),
        format!("{sni_host}:{port}:localhost:{port}"),
        "-k".into(),
        "-w".into(),
        "|%{http_connect}".into(),
        format!("https://{sni_host}:{port}/v1/anything"),
    ]);
    all
}

#[test]
fn the_token_listener_checks_the_name_too() {
    let h = harness(vec!["--token-listen".into(), "127.0.0.1:0".into()]);
    let port = h.echo.addr.port();
    let (cert, key) = h.agent_cert("tunneler");
    let agent_proxy: Vec<String> = vec![
        "--proxy".into(),
        format!("https://localhost:{}", h.port),
        "--proxy-cacert".into(),
        h.certs.join("ca.pem").display().to_string(),
        "--proxy-cert".into(),
        cert.display().to_string(),
        "--proxy-key".into(),
        key.display().to_string(),
    ];
    let token_port: u16 = h
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("clawgate: token proxy on https://"))
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let out = clawgate(&[
        "token",
        "issue",
        "--certs",
        h.certs.to_str().unwrap(),
        "--agent",
        "tunneler",
    ]);
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let token_proxy: Vec<String> = vec![
        "--proxy".into(),
        format!("https://localhost:{token_port}"),
        "--proxy-cacert".into(),
        h.certs.join("ca.pem").display().to_string(),
        "--proxy-user".into(),
        format!("tunneler:{token}"),
    ];
    for (n, (label, proxy)) in [("agent", &agent_proxy), ("token", &token_proxy)]
        .into_iter()
        .enumerate()
    {
        // The same name works: the request reaches the echo.
        let before = h.seen().len();
        let ok = common::curl(&fronted(proxy, port, "localhost"));
        assert_eq!(ok.exit, 0, "{label}: {ok:?}");
        assert_eq!(h.seen().len(), before + 1, "{label}: {ok:?}");
        // Another name: the tunnel is answered, then cut at the hello.
        let before = h.seen().len();
        let bad = common::curl(&fronted(proxy, port, "evil.example"));
        assert_ne!(bad.exit, 0, "{label}: {bad:?}");
        assert!(bad.stdout.ends_with("|200"), "{label}: {bad:?}");
        assert_eq!(
            h.seen().len(),
            before,
            "{label}: nothing reached the upstream"
        );
        // The outcome lands when the cut tunnel's task ends.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let records = loop {
            let found: Vec<_> = h
                .records()
                .into_iter()
                .filter(|r| {
                    r.kind == "outcome"
                        && r.reason == "tunnel-sni-mismatch"
                        && r.detail
                            .as_deref()
                            .is_some_and(|d| d.contains("sni evil.example"))
                })
                .collect();
            if found.len() == n + 1 || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(records.len(), n + 1, "{label}: {records:?}");
        assert_eq!(records[n].agent.as_deref(), Some("tunneler"));
    }
    let mismatches = h
        .records()
        .into_iter()
        .filter(|r| r.kind == "outcome" && r.reason == "tunnel-sni-mismatch")
        .count();
    assert_eq!(mismatches, 2, "one per listener");
}

/// A rustls client configuration trusting `ca`, presenting `cert` when
/// given, offering `alpn`.
fn client_config(
    ca: &std::path::Path,
    cert: Option<(&std::path::Path, &std::path::Path)>,
    alpn: &[u8],
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    std::sync::Arc::new(config)
}

/// HTTP/2 `CONNECT` (hyper's client, one connection, two streams) reaches
/// the same check: the right name works, another is cut and recorded.
#[test]
fn http2_connect_checks_the_name_too() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    let h = harness(Vec::new());
    let port = h.echo.addr.port();
    let (cert, key) = h.agent_cert("tunneler");
    let proxy = client_config(&h.certs.join("ca.pem"), Some((&cert, &key)), b"h2");
    let upstream = client_config(&h.policy.join("upstream-ca.pem"), None, b"http/1.1");
    let proxy_port = h.port;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy_port))
            .await
            .unwrap();
        let tls = TlsConnector::from(proxy)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut results = Vec::new();
        let mut kept = Vec::new();
        for sni in ["localhost", "evil.example"] {
            let request = http::Request::builder()
                .method("CONNECT")
                .uri(format!("localhost:{port}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            send.ready().await.unwrap();
            let response = send.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200, "{sni}");
            let id = response.headers()["x-clawgate-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            let upgraded = hyper::upgrade::on(response).await.unwrap();
            let inner = TlsConnector::from(std::sync::Arc::clone(&upstream))
                .connect(
                    ServerName::try_from(sni.to_owned()).unwrap(),
                    TokioIo::new(upgraded),
                )
                .await;
            results.push((sni, id, inner.is_ok()));
            kept.push(inner);
        }
        drop(kept);
        results
    });
    drop(runtime);
    let seen = h.seen().len();
    assert!(results[0].2, "the right name completes its handshake");
    assert!(!results[1].2, "another name is cut");
    assert_eq!(h.outcome(&results[1].1).reason, "tunnel-sni-mismatch");
    assert!(
        h.outcome(&results[1].1)
            .detail
            .unwrap()
            .contains("sni evil.example")
    );
    assert!(
        h.outcome(&results[0].1)
            .detail
            .unwrap()
            .contains("sni localhost")
    );
    assert_eq!(seen, 0, "no request was sent inside either tunnel");
}
