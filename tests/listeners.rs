//! The one accept path end to end: the token listener does what the agent
//! listener does (curl, undici, httpx), overrides end live connections
//! within a second, certificates reload under a running server, and a
//! flood of idle and slow peers does not lock agents out. Real binary,
//! real clients, every case checked in the decision log too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;
#[path = "listeners/net.rs"]
mod net;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{CANARY, Harness, Options, Reply, clawgate, raise_open_files_limit};

/// A tunnel-only agent next to the example policy.
const EXTRA: &str = r#"
[[agent]]
name = "tunneler"
identities = ["spiffe://clawgate.local/agent/tunneler"]
scopes = ["echo-tunnel"]

[[scope]]
name = "echo-tunnel"
upstream = "https://localhost:{echo_port}"
allow_private = ["127.0.0.1", "::1"]

[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
"#;

fn harness(serve_args: &[&str]) -> Harness {
    Harness::with(Options {
        extra_policy: vec![("listeners.toml", EXTRA.to_owned())],
        agents: vec!["tunneler", "ops"],
        serve_args: serve_args.iter().map(|a| (*a).to_owned()).collect(),
        ..Options::default()
    })
}

fn token_port(h: &Harness) -> u16 {
    h.stdout()
        .lines()
        .find_map(|l| l.strip_prefix("clawgate: token proxy on https://"))
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn issue(h: &Harness, agent: &str, run: &str) -> String {
    let out = clawgate(&[
        "token",
        "issue",
        "--certs",
        h.certs.to_str().unwrap(),
        "--agent",
        agent,
        "--run",
        run,
    ]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn ca(h: &Harness) -> String {
    h.certs.join("ca.pem").display().to_string()
}

fn intercept_ca(h: &Harness) -> String {
    h.certs.join("intercept-ca.pem").display().to_string()
}

/// curl through the token listener, the token as the proxy password.
fn via_token(h: &Harness, port: u16, user: &str, args: &[&str]) -> Reply {
    let mut full: Vec<String> = vec![
        "--proxy".into(),
        format!("https://localhost:{port}"),
        "--proxy-cacert".into(),
        ca(h),
        "--proxy-user".into(),
        user.to_owned(),
    ];
    full.extend(args.iter().map(|a| (*a).to_owned()));
    common::curl(&full)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_token_listener_does_everything_the_agent_listener_does() {
    let h = harness(&["--token-listen", "127.0.0.1:0"]);
    let port = token_port(&h);
    let token = issue(&h, "research", "matrix-run");
    let user = format!("research:{token}");
    let echo_port = h.echo.addr.port();

    // CONNECT with interception (the case that used to drop after 200).
    let r = via_token(
        &h,
        port,
        &user,
        &[
            "--cacert",
            &intercept_ca(&h),
            "-H",
            "authorization: Bearer agent-own-token",
            &format!("https://127.0.0.1:{echo_port}/v1/items/7"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    // The echo of the injected credential comes back redacted.
    assert!(
        r.body_text().contains("Bearer [clawgate:redacted]"),
        "{r:?}"
    );
    assert!(!r.body_text().contains(CANARY), "{r:?}");
    let ids = r.header_all("x-clawgate-request-id");
    assert_eq!(ids.len(), 2, "{r:?}");
    let connect = h.decision(&ids[0]);
    assert_eq!(connect.mode.as_deref(), Some("connect"));
    assert_eq!(connect.run_id.as_deref(), Some("matrix-run"));
    let inner = h.decision(&ids[1]);
    assert_eq!(inner.mode.as_deref(), Some("intercept"));
    assert_eq!(inner.agent.as_deref(), Some("research"));
    assert_eq!(inner.run_id.as_deref(), Some("matrix-run"));
    // A tunnel that ends normally reads as such, not as a failure.
    let outcome = h.outcome(&ids[0]);
    assert_eq!(outcome.reason, "tunnel-closed", "{outcome:?}");
    assert_eq!(outcome.run_id.as_deref(), Some("matrix-run"));
    assert_eq!(h.outcome(&ids[1]).run_id.as_deref(), Some("matrix-run"));

    // HTTP/2 inside the intercepted tunnel.
    let r = via_token(
        &h,
        port,
        &user,
        &[
            "--http2",
            "--cacert",
            &intercept_ca(&h),
            "-w",
            "|%{http_code}|%{http_version}",
            &format!("https://127.0.0.1:{echo_port}/v1/items/8"),
        ],
    );
    assert!(r.stdout.ends_with("|200|2"), "{r:?}");

    // A spliced tunnel: the tunnel-only agent's own token.
    let tunnel_token = issue(&h, "tunneler", "tunnel-run");
    let r = via_token(
        &h,
        port,
        &format!("tunneler:{tunnel_token}"),
        &[
            "--cacert",
            &h.policy.join("upstream-ca.pem").display().to_string(),
            &format!("https://localhost:{echo_port}/v1/anything"),
        ],
    );
    assert_eq!(r.exit, 0, "{r:?}");
    let id = r.header_all("x-clawgate-request-id")[0].clone();
    let record = h.decision(&id);
    assert_eq!(record.scope.as_deref(), Some("echo-tunnel"));
    assert_eq!(record.run_id.as_deref(), Some("tunnel-run"));
    assert_eq!(h.outcome(&id).reason, "tunnel-closed");

    // A CONNECT without a token is refused and recorded, with a challenge.
    let r = common::curl(&[
        "--proxy".into(),
        format!("https://localhost:{port}"),
        "--proxy-cacert".into(),
        ca(&h),
        "--cacert".into(),
        intercept_ca(&h),
        format!("https://127.0.0.1:{echo_port}/v1/items/7"),
    ]);
    assert_ne!(r.exit, 0, "{r:?}");
    h.wait_for("connect without a token", |r| {
        r.mode.as_deref() == Some("connect") && r.reason == "run-token-missing"
    });

    // The gateway, over HTTP/2, straight to the token listener.
    let basic = base64::engine::general_purpose::STANDARD.encode(&user);
    let r = common::curl(&[
        "--http2".into(),
        "--cacert".into(),
        ca(&h),
        "-H".into(),
        format!("proxy-authorization: Basic {basic}"),
        "-w".into(),
        "|%{http_code}|%{http_version}".into(),
        format!("https://localhost:{port}/echo/v1/items/3"),
    ]);
    assert!(r.stdout.ends_with("|200|2"), "{r:?}");
    let record = h.decision(&r.header("x-clawgate-request-id").unwrap());
    assert_eq!(record.mode.as_deref(), Some("gateway"));
    assert_eq!(record.run_id.as_deref(), Some("matrix-run"));

    // undici's ProxyAgent and httpx, the token in the proxy URL.
    let proxy_url = format!("https://research:{token}@localhost:{port}");
    let urls = [
        format!("https://127.0.0.1:{echo_port}/v1/items/1"),
        format!("https://127.0.0.1:{echo_port}/v1/items/admin"),
    ];
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    assert!(python.exists(), "httpx is not installed: run .ci/run");
    let runs = [
        Command::new("node")
            .arg(clients_dir().join("undici_fetch.mjs"))
            .args([&proxy_url, &ca(&h), "-", "-", &intercept_ca(&h)])
            .args(&urls)
            .output()
            .unwrap(),
        Command::new(&python)
            .arg(clients_dir().join("httpx_fetch.py"))
            .args([&proxy_url, &ca(&h), "-", "-", &intercept_ca(&h)])
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
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["status"], 200, "{lines:?}");
        // undici and httpx read the guarded (chunked, redacted) answer.
        let body = lines[0]["body"].as_str().unwrap();
        assert!(body.contains("Bearer [clawgate:redacted]"), "{lines:?}");
        assert!(!body.contains(CANARY), "{lines:?}");
        assert_eq!(lines[1]["status"], 403, "{lines:?}");
        assert!(
            lines[1]["body"]
                .as_str()
                .unwrap()
                .contains("denied-by-rule")
        );
    }

    // A WebSocket inside interception, through undici.
    let out = Command::new("node")
        .arg(clients_dir().join("undici_websocket.mjs"))
        .args([&proxy_url, &ca(&h), "-", "-", &intercept_ca(&h)])
        .args([
            &format!("wss://127.0.0.1:{echo_port}/v1/items/live"),
            "hello through the token listener",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(answer["echoed"], "hello through the token listener");
    let upgrade = h.wait_for("the websocket upgrade", |r| {
        r.kind == "decision" && r.path.as_deref() == Some("/v1/items/live")
    });
    assert_eq!(upgrade[0].run_id.as_deref(), Some("matrix-run"));
    let outcome = h.outcome(&upgrade[0].request_id);
    assert_eq!(outcome.status, Some(101));
    assert_eq!(outcome.reason, "tunnel-closed");

    // A kept-alive token connection is ended when its agent is isolated.
    let rt = runtime();
    let plain = net::client_config(&h.certs.join("ca.pem"), None);
    let mut kept = rt.block_on(async {
        let mut kept = net::tls(&plain, "127.0.0.1".parse().unwrap(), port).await;
        let head = net::exchange(
            &mut kept,
            &format!(
                "GET /echo/v1/items/4 HTTP/1.1\r\nhost: localhost\r\nproxy-authorization: Basic {basic}\r\n\r\n"
            ),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        net::read_body(&mut kept, &head).await;
        kept
    });
    post_override(
        &h,
        r#"{"kind":"isolate-agent","target":"research","reason":"incident 13","expires_in":"1h"}"#,
    );
    let closed = rt.block_on(net::closed_within(&mut kept, Duration::from_secs(1)));
    assert!(
        closed.is_some(),
        "the kept-alive token connection outlived the isolation"
    );

    // Every record of a call through the token listener names the run.
    for r in h.records() {
        if matches!(r.kind.as_str(), "decision" | "outcome") && r.agent.is_some() {
            assert!(r.run_id.is_some(), "a record without its run: {r:?}");
        }
    }
}

fn serial_of(cert: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

fn post_override(h: &Harness, body: &str) -> String {
    let r = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            "/v1/overrides",
        ],
    );
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["id"].as_str().unwrap().to_owned()
}

#[test]
fn overrides_end_open_tunnels_websockets_and_connections_within_a_second() {
    let h = harness(&[]);
    let rt = runtime();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let port = h.port;
    let echo_port = h.echo.addr.port();
    let (cert, key) = h.agent_cert("research");
    let research = net::client_config(&h.certs.join("ca.pem"), Some((&cert, &key)));
    let (tcert, tkey) = h.agent_cert("tunneler");
    let tunneler = net::client_config(&h.certs.join("ca.pem"), Some((&tcert, &tkey)));
    let inner = net::client_config(&h.certs.join("intercept-ca.pem"), None);

    let (mut kept, mut socket, mut intercepted, mut tunnel, ids) = rt.block_on(async {
        // A kept-alive connection that made one call.
        let mut kept = net::tls(&research, loopback, port).await;
        let head = net::exchange(
            &mut kept,
            "GET /echo/v1/items/1 HTTP/1.1\r\nhost: localhost\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        net::read_body(&mut kept, &head).await;
        // A WebSocket through the gateway.
        let mut socket = net::tls(&research, loopback, port).await;
        let head = net::exchange(
            &mut socket,
            "GET /echo/v1/items/live HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\n\
             upgrade: websocket\r\nsec-websocket-version: 13\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let ws_id = net::header(&head, "x-clawgate-request-id").unwrap();
        // An intercepted connection, its inner TLS up and one call made.
        let mut outer = net::tls(&research, loopback, port).await;
        let head = net::exchange(
            &mut outer,
            &format!(
                "CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\nhost: 127.0.0.1:{echo_port}\r\n\r\n"
            ),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let intercept_id = net::header(&head, "x-clawgate-request-id").unwrap();
        let mut intercepted = tokio_rustls::TlsConnector::from(inner)
            .connect(
                rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                outer,
            )
            .await
            .unwrap();
        let head = net::exchange(
            &mut intercepted,
            "GET /v1/items/2 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        net::read_body(&mut intercepted, &head).await;
        // A spliced tunnel of another agent.
        let mut tunnel = net::tls(&tunneler, loopback, port).await;
        let head = net::exchange(
            &mut tunnel,
            &format!(
                "CONNECT localhost:{echo_port} HTTP/1.1\r\nhost: localhost:{echo_port}\r\n\r\n"
            ),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let tunnel_id = net::header(&head, "x-clawgate-request-id").unwrap();
        (
            kept,
            socket,
            intercepted,
            tunnel,
            (ws_id, intercept_id, tunnel_id),
        )
    });
    let (ws_id, intercept_id, tunnel_id) = ids;

    // Isolating the agent ends its three connections; revoking the other
    // agent's serial ends its tunnel.
    let isolate = post_override(
        &h,
        r#"{"kind":"isolate-agent","target":"research","reason":"incident 12","expires_in":"1h"}"#,
    );
    let isolated_at = Instant::now();
    let revoke = post_override(
        &h,
        &format!(
            r#"{{"kind":"revoke-serial","target":"{}","reason":"incident 12","expires_in":"1h"}}"#,
            serial_of(&tcert)
        ),
    );
    let revoked_at = Instant::now();
    let limit = Duration::from_secs(1);
    rt.block_on(async {
        for (what, since, closed) in [
            (
                "kept-alive",
                isolated_at,
                net::closed_within(&mut kept, limit).await,
            ),
            (
                "websocket",
                isolated_at,
                net::closed_within(&mut socket, limit).await,
            ),
            (
                "intercepted",
                isolated_at,
                net::closed_within(&mut intercepted, limit).await,
            ),
            (
                "tunnel",
                revoked_at,
                net::closed_within(&mut tunnel, limit).await,
            ),
        ] {
            assert!(closed.is_some(), "{what} still open");
            let elapsed = since.elapsed();
            eprintln!("{what} closed {elapsed:?} after its override");
        }
    });
    assert!(
        isolated_at.elapsed() < Duration::from_secs(2),
        "the closes took too long"
    );
    for (id, override_id) in [
        (&ws_id, &isolate),
        (&intercept_id, &isolate),
        (&tunnel_id, &revoke),
    ] {
        let outcome = h.outcome(id);
        assert_eq!(outcome.reason, "ended-by-override", "{outcome:?}");
        assert!(
            outcome
                .detail
                .as_deref()
                .unwrap_or_default()
                .contains(override_id.as_str()),
            "{outcome:?}"
        );
    }
    // The kept-alive connection, idle when it was ended, leaves a record.
    let ended = h.wait_for("the idle connection's end", |r| {
        r.mode.as_deref() == Some("connection")
            && r.detail
                .as_deref()
                .is_some_and(|d| d.contains(isolate.as_str()))
    });
    assert_eq!(ended[0].reason, "ended-by-override", "{ended:?}");
    assert!(
        ended[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("agent listener: connection ended: "),
        "{ended:?}"
    );
    // The isolated agent's next call is refused as before.
    let r = h.curl(
        Some("research"),
        &[&format!("{}/echo/v1/items/1", h.base())],
    );
    assert_eq!(r.json()["reason"], "agent-isolated", "{r:?}");
}

#[test]
fn a_disabled_scope_or_a_policy_reload_that_withdraws_it_ends_its_tunnel() {
    let h = harness(&[]);
    let rt = runtime();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let (tcert, tkey) = h.agent_cert("tunneler");
    let tunneler = net::client_config(&h.certs.join("ca.pem"), Some((&tcert, &tkey)));
    let echo_port = h.echo.addr.port();
    let port = h.port;
    let open = || {
        rt.block_on(async {
            let mut tunnel = net::tls(&tunneler, loopback, port).await;
            let head = net::exchange(
                &mut tunnel,
                &format!(
                    "CONNECT localhost:{echo_port} HTTP/1.1\r\nhost: localhost:{echo_port}\r\n\r\n"
                ),
            )
            .await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            (tunnel, net::header(&head, "x-clawgate-request-id").unwrap())
        })
    };
    // Disabling the scope ends the tunnel open in it.
    let (mut tunnel, id) = open();
    let disable = post_override(
        &h,
        r#"{"kind":"disable-scope","target":"echo-tunnel","reason":"incident 14","expires_in":"1h"}"#,
    );
    let closed = rt.block_on(net::closed_within(&mut tunnel, Duration::from_secs(1)));
    assert!(closed.is_some(), "the tunnel outlived the disabled scope");
    let outcome = h.outcome(&id);
    assert_eq!(outcome.reason, "ended-by-override", "{outcome:?}");
    assert!(
        outcome.detail.as_deref().unwrap().contains(&disable),
        "{outcome:?}"
    );
    let r = h.admin(
        Some("ops"),
        &["-X", "DELETE", &format!("/v1/overrides/{disable}")],
    );
    assert_eq!(r.status, 200, "{r:?}");

    // A reload that takes the scope from the agent ends the next one.
    let (mut tunnel, id) = open();
    h.write_policy(
        "listeners.toml",
        &EXTRA.replace("scopes = [\"echo-tunnel\"]", "scopes = []"),
    );
    h.signal("HUP");
    let closed = rt.block_on(net::closed_within(&mut tunnel, Duration::from_secs(10)));
    assert!(closed.is_some(), "the tunnel outlived the reload");
    let outcome = h.outcome(&id);
    assert_eq!(outcome.reason, "ended-by-policy", "{outcome:?}");
    assert!(
        outcome.detail.as_deref().unwrap().contains("echo-tunnel"),
        "{outcome:?}"
    );
}

/// A server certificate and key for `localhost`, signed by the agent CA in
/// `certs` with openssl, written into `dir`.
fn openssl_server_cert(certs: &std::path::Path, dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let key = dir.join("new-server-key.pem");
    let csr = dir.join("new-server.csr");
    let cert = dir.join("new-server.pem");
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-noout",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/CN=localhost",
        "-out",
        csr.to_str().unwrap(),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        certs.join("ca.pem").to_str().unwrap(),
        "-CAkey",
        certs.join("ca-key.pem").to_str().unwrap(),
        "-set_serial",
        "0x5eed",
        "-days",
        "1",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

/// Replaces `to` with `from` the way deployment tools do: write, rename.
fn swap_in(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("swap");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

fn served_leaf(
    rt: &tokio::runtime::Runtime,
    config: &std::sync::Arc<rustls::ClientConfig>,
    port: u16,
) -> Vec<u8> {
    rt.block_on(async {
        let stream = net::tls(config, "127.0.0.1".parse().unwrap(), port).await;
        stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    })
}

fn der_of(pem: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn a_certificate_swapped_under_a_running_server_is_served_without_dropping_connections() {
    let h = harness(&["--token-listen", "127.0.0.1:0"]);
    let rt = runtime();
    let port = h.port;
    let (cert, key) = h.agent_cert("research");
    let research = net::client_config(&h.certs.join("ca.pem"), Some((&cert, &key)));
    let old_leaf = served_leaf(&rt, &research, port);
    assert_eq!(old_leaf, der_of(&h.certs.join("server.pem")));
    let mut kept = rt.block_on(async {
        let mut kept = net::tls(&research, "127.0.0.1".parse().unwrap(), port).await;
        let head = net::exchange(
            &mut kept,
            "GET /echo/v1/items/1 HTTP/1.1\r\nhost: localhost\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        net::read_body(&mut kept, &head).await;
        kept
    });

    // A bad file is refused and recorded; the old certificate stays.
    let garbage = h.path("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let good_old = h.path("old-server.pem");
    std::fs::copy(h.certs.join("server.pem"), &good_old).unwrap();
    swap_in(&garbage, &h.certs.join("server.pem"));
    let rejected = h.wait_for("certs-rejected", |r| {
        r.kind == "certs" && r.reason == "certs-rejected"
    });
    assert!(
        rejected[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("server.pem"),
        "{rejected:?}"
    );
    assert_eq!(served_leaf(&rt, &research, port), old_leaf);

    // A new certificate from the same CA is picked up on the file change.
    let (new_cert, new_key) = openssl_server_cert(&h.certs, h.dir.path());
    swap_in(&new_key, &h.certs.join("server-key.pem"));
    swap_in(&new_cert, &h.certs.join("server.pem"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_leaf(&rt, &research, port) != der_of(&new_cert) {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    h.wait_for("certs-loaded", |r| {
        r.kind == "certs" && r.reason == "certs-loaded"
    });
    // The token listener serves the new one too.
    let token = net::client_config(&h.certs.join("ca.pem"), None);
    assert_eq!(served_leaf(&rt, &token, token_port(&h)), der_of(&new_cert));

    // The connection opened before the swap still works.
    rt.block_on(async {
        let head = net::exchange(
            &mut kept,
            "GET /echo/v1/items/2 HTTP/1.1\r\nhost: localhost\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    });

    // SIGHUP and the admin API reload too, each a record.
    h.signal("HUP");
    h.wait_for("certs reloaded on SIGHUP", |r| {
        r.reason == "certs-loaded" && r.detail.as_deref().unwrap_or_default().contains("SIGHUP")
    });
    let r = h.admin(Some("ops"), &["-X", "POST", "/v1/certs/reload"]);
    assert_eq!(r.status, 200, "{r:?}");
    h.wait_for("certs reloaded from the api", |r| {
        r.reason == "certs-loaded" && r.detail.as_deref().unwrap_or_default().contains("api by")
    });
    // A refused reload from the API (a broken interception CA) says so and
    // keeps everything in force.
    swap_in(&garbage, &h.certs.join("intercept-ca.pem"));
    let r = h.admin(Some("ops"), &["-X", "POST", "/v1/certs/reload"]);
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body_text().contains("intercept-ca.pem"), "{r:?}");
    assert_eq!(served_leaf(&rt, &research, port), der_of(&new_cert));
}

/// Resident memory of a process now, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Idle TCP peers held against the agent listener, all from one source.
const IDLE: usize = 3000;
/// TLS peers (with a valid certificate) sending a request head a byte at a time.
const SLOW: usize = 300;
/// clawgate's resident memory may not pass this under that flood (README).
const FLOOD_RSS_BOUND_KIB: u64 = 128 * 1024;

#[test]
fn a_flood_of_idle_and_slow_peers_does_not_lock_agents_out() {
    // The test holds a descriptor per peer; take what the system allows.
    raise_open_files_limit();
    let available = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let idle = IDLE.min(available.saturating_sub(SLOW + 200));
    let h = harness(&[]);
    let rt = runtime();
    let port = h.port;
    let pid = h.pid();
    let rss_before = rss_kib(pid);
    let (cert, key) = h.agent_cert("reporter");
    let slow_config = net::client_config(&h.certs.join("ca.pem"), Some((&cert, &key)));

    let (idle_peers, slow_peers) = rt.block_on(async {
        let idle_source: IpAddr = "127.0.0.2".parse().unwrap();
        let mut idle_peers = Vec::with_capacity(idle);
        for _ in 0..idle {
            if let Ok(Ok(tcp)) =
                tokio::time::timeout(Duration::from_secs(2), common::tcp_from(idle_source, port))
                    .await
            {
                idle_peers.push(tcp);
            }
        }
        let slow_source: IpAddr = "127.0.0.3".parse().unwrap();
        let mut slow_peers = Vec::with_capacity(SLOW);
        for _ in 0..SLOW {
            let mut tls = net::tls(&slow_config, slow_source, port).await;
            slow_peers.push(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                for byte in b"GET /echo/v1/items/1 HTTP/1.1\r\nhost: localhost\r\nx-slow: "
                    .iter()
                    .cycle()
                {
                    if tls.write_all(&[*byte]).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
        (idle_peers, slow_peers)
    });
    assert!(
        idle_peers.len() >= idle / 2,
        "only {} idle peers connected",
        idle_peers.len()
    );

    // An agent's calls still succeed, promptly.
    let mut latencies = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        let r = h.curl(
            Some("research"),
            &[&format!("{}/echo/v1/items/{i}", h.base())],
        );
        latencies.push(started.elapsed());
        assert_eq!(r.status, 200, "call {i} under flood: {r:?}");
        assert_eq!(h.decision(&r.request_id()).reason, "allowed");
    }
    let rss = rss_kib(pid);
    let fds = common::open_fds(pid);
    latencies.sort();
    eprintln!(
        "flood: {} idle TCP peers, {SLOW} slow TLS peers; clawgate holds {fds} descriptors; \
         RSS {rss_before} KiB before, {rss} KiB under flood; agent call latency median {:?}, max {:?}",
        idle_peers.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    assert!(rss < FLOOD_RSS_BOUND_KIB, "RSS {rss} KiB under flood");
    // The idle peers from one source were pushed out oldest first: clawgate
    // holds at most its per-source bound of them, not all.
    assert!(fds < 256 + SLOW + 200, "clawgate holds {fds} descriptors");
    assert!(latencies[latencies.len() - 1] < Duration::from_secs(5));
    common::dropped_while_pending(&h, "127.0.0.2:");
    // Rejections are capped per source and second, so the flood did not
    // turn into thousands of records.
    let rejected = h
        .records()
        .into_iter()
        .filter(|r| r.reason == "tls-rejected")
        .count();
    assert!(rejected < 200, "{rejected} tls-rejected records");
    for peer in slow_peers {
        peer.abort();
    }
    drop(idle_peers);
}

#[test]
fn every_listener_records_rejected_handshakes_and_vend_has_a_header_timeout() {
    let h = harness(&[
        "--token-listen",
        "127.0.0.1:0",
        "--vend-listen",
        "127.0.0.1:0",
    ]);
    // The admin API without a certificate.
    let r = h.admin(None, &["/healthz"]);
    assert_ne!(r.exit, 0, "{r:?}");
    h.wait_for("admin rejection", |r| {
        r.reason == "tls-rejected"
            && r.detail
                .as_deref()
                .unwrap_or_default()
                .starts_with("admin listener: no client certificate")
    });
    // Plain HTTP to the token listener's TLS port.
    let rt = runtime();
    let token = token_port(&h);
    let vend = h.vend_port.unwrap();
    let closed = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut plain = common::tcp_from("127.0.0.1".parse().unwrap(), token)
            .await
            .unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        net::closed_within(&mut plain, Duration::from_secs(5)).await
    });
    assert!(closed.is_some());
    h.wait_for("token rejection", |r| {
        r.reason == "tls-rejected"
            && r.detail
                .as_deref()
                .unwrap_or_default()
                .starts_with("token listener:")
    });
    // A vend peer that never finishes its request head is cut off.
    let closed = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut slow = common::tcp_from("127.0.0.1".parse().unwrap(), vend)
            .await
            .unwrap();
        slow.write_all(b"GET /v1/credentials/aws/x HTTP/1.1\r\n")
            .await
            .unwrap();
        net::closed_within(&mut slow, Duration::from_secs(15)).await
    });
    let closed = closed.expect("the vend listener kept a stalled request head open");
    assert!(closed >= Duration::from_secs(9), "closed after {closed:?}");
}

#[test]
fn shutdown_drains_calls_in_flight_on_the_token_listener() {
    let mut h = harness(&["--token-listen", "127.0.0.1:0", "--drain-timeout", "5s"]);
    let port = token_port(&h);
    let token = issue(&h, "research", "drain-run");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("research:{token}"));
    let ca = ca(&h);
    let slow = std::thread::spawn(move || {
        common::curl(&[
            "--cacert".into(),
            ca,
            "-H".into(),
            format!("proxy-authorization: Basic {basic}"),
            format!("https://localhost:{port}/echo/v1/items/slow/1500"),
        ])
    });
    let decisions = h.wait_for("the slow call's decision", |r| {
        r.kind == "decision" && r.path.as_deref() == Some("/v1/items/slow/1500")
    });
    h.stop();
    let reply = slow.join().unwrap();
    assert_eq!(
        reply.status, 200,
        "the call in flight was drained: {reply:?}"
    );
    let outcome = h.outcome(&decisions[0].request_id);
    assert_eq!(outcome.reason, "allowed", "{outcome:?}");
    assert_eq!(outcome.run_id.as_deref(), Some("drain-run"));
}

#[test]
fn a_crl_reloaded_under_a_running_server_refuses_the_newly_revoked() {
    let mut h = Harness::with(Options {
        extra_policy: vec![("listeners.toml", EXTRA.to_owned())],
        agents: vec!["tunneler", "ops"],
        start: false,
        ..Options::default()
    });
    let ca = clawgate::certs::read_pair(&h.certs, "ca.pem", "ca-key.pem").unwrap();
    let (second, serial) =
        clawgate::certs::issue(&ca, &clawgate::certs::agent_spec("research", 1).unwrap()).unwrap();
    std::fs::write(h.path("second.pem"), &second.cert).unwrap();
    std::fs::write(h.path("second-key.pem"), second.key_pem()).unwrap();
    let crl = h.path("crl.pem");
    std::fs::write(&crl, clawgate::certs::crl(&ca, &[]).unwrap()).unwrap();
    h.serve(&["--crl".into(), crl.display().to_string()]);
    let with_second = || {
        common::curl(&[
            "--cacert".into(),
            ca_path(&h),
            "--cert".into(),
            h.path("second.pem").display().to_string(),
            "--key".into(),
            h.path("second-key.pem").display().to_string(),
            format!("{}/echo/v1/items/1", h.base()),
        ])
    };
    assert_eq!(with_second().status, 200);

    // The CRL now lists the second certificate: picked up on the change.
    let next = h.path("crl.next");
    std::fs::write(&next, clawgate::certs::crl(&ca, &[serial]).unwrap()).unwrap();
    std::fs::rename(&next, &crl).unwrap();
    h.wait_for("certs-loaded", |r| r.reason == "certs-loaded");
    let reply = with_second();
    assert_ne!(reply.status, 200, "{reply:?}");
    h.wait_for("the revoked handshake", |r| {
        r.reason == "tls-rejected"
            && r.detail
                .as_deref()
                .unwrap_or_default()
                .contains("certificate revoked")
    });
    // The agent's own certificate still works.
    let ok = h.curl(
        Some("research"),
        &[&format!("{}/echo/v1/items/2", h.base())],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
}

fn ca_path(h: &Harness) -> String {
    h.certs.join("ca.pem").display().to_string()
}

#[test]
fn a_new_interception_ca_signs_the_next_intercepted_connection() {
    let h = harness(&[]);
    let url = format!("https://127.0.0.1:{}/v1/items/5", h.echo.addr.port());
    let old_ca = h.path("old-intercept-ca.pem");
    std::fs::copy(h.certs.join("intercept-ca.pem"), &old_ca).unwrap();
    let via = |ca: &std::path::Path| {
        h.curl_via_proxy("research", &["--cacert", ca.to_str().unwrap(), &url])
    };
    assert_eq!(via(&old_ca).status, 200);

    // Another interception CA, from a fresh `certs init`.
    let other = h.path("other-certs");
    let out = clawgate(&["certs", "init", "--dir", other.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    swap_in(
        &other.join("intercept-ca-key.pem"),
        &h.certs.join("intercept-ca-key.pem"),
    );
    swap_in(
        &other.join("intercept-ca.pem"),
        &h.certs.join("intercept-ca.pem"),
    );
    let r = h.admin(Some("ops"), &["-X", "POST", "/v1/certs/reload"]);
    assert_eq!(r.status, 200, "{r:?}");
    let new_ca = other.join("intercept-ca.pem");
    let r = via(&new_ca);
    assert_eq!(r.status, 200, "the new CA signs the next leaf: {r:?}");
    let r = via(&old_ca);
    assert_ne!(r.exit, 0, "the old CA no longer verifies: {r:?}");
}
