//! The reflection guard end to end: a mirror upstream that hands the
//! injected credential (and a sentinel's value) back in headers and bodies,
//! in JSON, HTML, base64, percent-encoding, gzip and SSE, chunked and with a
//! length, split across TCP writes; reached through the gateway, the
//! absolute-form forward proxy and an intercepted `CONNECT`, by curl. The
//! agent never receives a value in any of those forms, and the outcome record
//! says what was redacted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should stop the test loudly"
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use clawgate::certs::Pem;
use common::{CANARY, Harness, Options, Reply};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const PLACEHOLDER: &str = "clawgate-sentinel-1f2e3d4c5b6a79880716253443526170";
const SENTINEL_VALUE: &str = "sentinel-real-9c1d-do-not-leak";
const MARKER: &str = "[clawgate:redacted]";

/// What the mirror saw of each request: its `Accept-Encoding`.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// A TLS upstream that answers every request with its credential-bearing
/// headers reflected, in the form its path names. Blocking, one thread per
/// connection, `Connection: close`.
fn start_mirror(cert: &Pem) -> (u16, Seen) {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let seen_by_loop = Arc::clone(&seen);
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            let seen = Arc::clone(&seen_by_loop);
            std::thread::spawn(move || {
                let _ = serve_one(tcp, config, &seen);
            });
        }
    });
    (port, seen)
}

fn serve_one(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    seen: &Seen,
) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut tls);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    seen.lock().unwrap().push(get("accept-encoding"));
    let auth = get("authorization").unwrap_or_default();
    let key = get("x-api-key").unwrap_or_default();
    let case = path.trim_start_matches('/').split('?').next().unwrap_or("");
    // Both reflected values in one string; each form below encodes it.
    let both = format!("{auth} {key}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE;
    let pct: String = form_urlencoded::byte_serialize(both.as_bytes()).collect();
    let json = serde_json::json!({
        "headers": headers,
        "b64": b64.encode(&both),
        "b64url": b64url.encode(format!("x{both}")),
        "pct": pct,
    })
    .to_string();
    // `?quiet`: the head reflects nothing, only the body does.
    let echo_header = if path.contains("quiet") {
        String::new()
    } else {
        format!("x-echo-auth: {auth}\r\n")
    };
    let head =
        |extra: &str| format!("HTTP/1.1 200 OK\r\nconnection: close\r\n{echo_header}{extra}\r\n");
    // Two writes with a pause between them: the secret crosses TCP segments.
    let split_writes = |tls: &mut rustls::StreamOwned<_, TcpStream>, a: &[u8], b: &[u8]| {
        tls.write_all(a)?;
        tls.flush()?;
        std::thread::sleep(Duration::from_millis(50));
        tls.write_all(b)?;
        tls.flush()
    };
    match case {
        "json" => {
            let out = format!(
                "{}{json}",
                head(&format!(
                    "content-type: application/json\r\ncontent-length: {}\r\n",
                    json.len()
                ))
            );
            tls.write_all(out.as_bytes())?;
        }
        "html" => {
            // Chunked, the escaped secret split across two chunks and two
            // TCP writes.
            let page = format!(
                "<html><p>{}</p><p>{}</p></html>",
                html_escape(&auth),
                html_escape(&key)
            );
            let mid = page.find("canary").unwrap_or(page.len() / 2) + 5;
            let (a, b) = page.split_at(mid);
            let first = format!(
                "{}{:x}\r\n{a}\r\n",
                head("content-type: text/html\r\ntransfer-encoding: chunked\r\n"),
                a.len()
            );
            let second = format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len());
            split_writes(&mut tls, first.as_bytes(), second.as_bytes())?;
        }
        "gzip" => {
            // Compressed although clawgate asked for `identity`.
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(json.as_bytes())?;
            let body = gz.finish()?;
            let out = head(&format!(
                "content-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n",
                body.len()
            ));
            let (a, b) = body.split_at(body.len() / 2);
            let mut first = out.into_bytes();
            first.extend_from_slice(a);
            split_writes(&mut tls, &first, b)?;
        }
        "br" => {
            let out =
                head("content-type: text/plain\r\ncontent-encoding: br\r\ncontent-length: 4\r\n");
            tls.write_all(out.as_bytes())?;
            tls.write_all(&[0x0b, 0x01, 0x80, 0x03])?;
        }
        "sse" => {
            let first = "data: {\"n\":1}\n\n".to_owned();
            let second = format!("data: {{\"auth\":{}}}\n\n", serde_json::to_string(&auth)?);
            let (s1, s2) = second.split_at(second.len() / 2);
            let out = format!(
                "{}{:x}\r\n{first}\r\n{:x}\r\n{s1}\r\n",
                head("content-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"),
                first.len(),
                s1.len()
            );
            let rest = format!("{:x}\r\n{s2}\r\n0\r\n\r\n", s2.len());
            split_writes(&mut tls, out.as_bytes(), rest.as_bytes())?;
        }
        "ws" => {
            let key = get("sec-websocket-key").unwrap_or_default();
            return websocket(&mut tls, &key, &auth);
        }
        _ => {
            tls.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )?;
        }
    }
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let mut rest = Vec::new();
    let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = tls.read_to_end(&mut rest);
    Ok(())
}

/// Accepts the upgrade, waits for the agent's first message, and answers
/// with the credential in a text message of two fragments, written apart.
fn websocket(
    tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    key: &str,
    auth: &str,
) -> std::io::Result<()> {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    tls.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        )
        .as_bytes(),
    )?;
    tls.flush()?;
    // The agent's message: masked, short.
    let mut head = [0u8; 2];
    tls.read_exact(&mut head)?;
    let mut rest = vec![0u8; 4 + usize::from(head[1] & 0x7f)];
    tls.read_exact(&mut rest)?;
    let text = format!("{{\"auth\":\"{auth}\"}}");
    let mid = text.find("canary").unwrap() + 9;
    let (a, b) = text.as_bytes().split_at(mid);
    let frame = |b0: u8, payload: &[u8]| {
        let mut f = vec![b0, u8::try_from(payload.len()).unwrap()];
        f.extend_from_slice(payload);
        f
    };
    tls.write_all(&frame(0x01, a))?;
    tls.flush()?;
    std::thread::sleep(Duration::from_millis(50));
    tls.write_all(&frame(0x80, b))?;
    tls.flush()?;
    // Until the agent closes.
    let _ = tls.sock.set_read_timeout(Some(Duration::from_secs(5)));
    let mut sink = [0u8; 256];
    while matches!(tls.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn policy(port: u16) -> String {
    format!(
        r#"
[roles]
auditors = ["spiffe://clawgate.local/agent/watcher"]

[[agent]]
name = "mirrorer"
identities = ["spiffe://clawgate.local/agent/mirrorer"]
scopes = ["mirror", "mirror-refuse"]

[[scope]]
name = "mirror"
upstream = "https://127.0.0.1:{port}"
route = "mirror"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]
[scope.credential]
kind = "secret"
env = "ECHO_API_TOKEN"
header = "authorization"
format = "Bearer {{}}"
[[scope.allow]]
paths = ["/**"]

[[scope]]
name = "mirror-refuse"
upstream = "https://localhost:{port}"
route = "mirror-refuse"
ca_file = "upstream-ca.pem"
allow_private = ["localhost"]
reflection = "refuse"
[scope.credential]
kind = "secret"
env = "ECHO_API_TOKEN"
header = "authorization"
format = "Bearer {{}}"
[[scope.allow]]
paths = ["/**"]

[[sentinel]]
name = "mirror-key"
placeholder = "{PLACEHOLDER}"
hosts = ["127.0.0.1"]
env = "SENTINEL_REAL"
"#
    )
}

struct Mirror {
    h: Harness,
    port: u16,
    seen: Seen,
}

fn start() -> Mirror {
    let mut h = Harness::with(Options {
        agents: vec!["mirrorer", "watcher"],
        env: vec![("SENTINEL_REAL".into(), SENTINEL_VALUE.into())],
        start: false,
        ..Options::default()
    });
    let (port, seen) = start_mirror(&h.upstream_cert);
    std::fs::write(h.policy.join("mirror.toml"), policy(port)).unwrap();
    h.serve(&[]);
    Mirror { h, port, seen }
}

/// Every form of the two secrets that must never reach the agent.
fn forbidden() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = vec![CANARY.to_owned(), SENTINEL_VALUE.to_owned()];
    for v in [CANARY, SENTINEL_VALUE] {
        out.push(b64.encode(v).trim_end_matches('=').to_owned());
        out.push(form_urlencoded::byte_serialize(v.as_bytes()).collect());
    }
    // Base64 inside the longer reflected string, at its own alignment.
    let both = format!("Bearer {CANARY} {SENTINEL_VALUE}");
    let encoded = b64.encode(&both);
    out.push(encoded[12..40].to_owned());
    out
}

fn assert_clean(what: &str, reply: &Reply) {
    let all = format!("{}\n{}", reply.headers, reply.body_text());
    for form in forbidden() {
        assert!(
            !all.contains(&form),
            "{what}: `{form}` reached the agent:\n{all}"
        );
    }
}

impl Mirror {
    fn gateway(&self, case: &str) -> Reply {
        self.h.curl(
            Some("mirrorer"),
            &[
                "-H",
                &format!("x-api-key: {PLACEHOLDER}"),
                &format!("{}/mirror/{case}", self.h.base()),
            ],
        )
    }

    fn forward(&self, case: &str) -> Reply {
        self.h.curl_via_proxy(
            "mirrorer",
            &[
                "-H",
                &format!("x-api-key: {PLACEHOLDER}"),
                &format!("http://127.0.0.1:{}/{case}", self.port),
            ],
        )
    }

    fn intercepted(&self, case: &str) -> Reply {
        let ca = self.h.certs.join("intercept-ca.pem").display().to_string();
        self.h.curl_via_proxy(
            "mirrorer",
            &[
                "--cacert",
                &ca,
                "-H",
                &format!("x-api-key: {PLACEHOLDER}"),
                &format!("https://127.0.0.1:{}/{case}", self.port),
            ],
        )
    }
}

fn inner_id(reply: &Reply) -> String {
    reply.header_all("x-clawgate-request-id").pop().unwrap()
}

#[test]
fn reflected_credentials_are_redacted_on_every_road_and_recorded() {
    let m = start();
    type Road = fn(&Mirror, &str) -> Reply;
    let roads: [(&str, Road); 3] = [
        ("gateway", Mirror::gateway),
        ("forward", Mirror::forward),
        ("intercept", Mirror::intercepted),
    ];
    for (road, call) in roads {
        for case in ["json", "html", "gzip", "sse"] {
            let what = format!("{road} {case}");
            let reply = call(&m, case);
            assert_eq!((reply.exit, reply.status), (0, 200), "{what}: {reply:?}");
            assert_clean(&what, &reply);
            let body = reply.body_text();
            assert!(body.contains(MARKER), "{what}: {body}");
            // A small body with a length keeps one, restated exactly; the
            // others stream chunked; the decoded gzip body says it is not
            // compressed any more.
            let head = reply.headers.to_ascii_lowercase();
            if case == "json" {
                let length = reply.header_all("content-length").pop().unwrap();
                assert_eq!(length, reply.body.len().to_string(), "{what}");
            } else {
                assert!(!head.contains("content-length"), "{what}: {head}");
            }
            assert!(!head.contains("content-encoding"), "{what}: {head}");
            if case == "json" || case == "gzip" {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let auth = v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|kv| kv[0] == "authorization")
                    .unwrap();
                assert_eq!(auth[1], format!("Bearer {MARKER}"), "{what}");
                assert!(
                    reply.header("x-echo-auth").unwrap().contains(MARKER),
                    "{what}"
                );
            }
            if case == "sse" {
                assert!(body.starts_with("data: {\"n\":1}\n\n"), "{what}: {body}");
                assert!(body.contains(&format!("\"Bearer {MARKER}\"")), "{what}");
            }
            // The record says what was redacted and where; never the value.
            let id = inner_id(&reply);
            let outcome = m.h.outcome(&id);
            assert_eq!(outcome.reason, "allowed", "{what}: {outcome:?}");
            let detail = outcome.detail.clone().unwrap_or_default();
            assert!(
                detail.contains("credential-reflected: "),
                "{what}: {detail}"
            );
            assert!(detail.contains("redacted"), "{what}: {detail}");
            assert!(detail.contains("body"), "{what}: {detail}");
            assert!(detail.contains("header x-echo-auth"), "{what}: {detail}");
            assert!(!detail.contains(CANARY), "{what}: {detail}");
            assert_eq!(outcome.mode.as_deref(), Some(road), "{what}");
        }
    }
    // Every request asked the upstream for an uncompressed body.
    let seen = m.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 12);
    assert!(
        seen.iter().all(|e| e.as_deref() == Some("identity")),
        "{seen:?}"
    );

    // An encoding the guard cannot read is refused, not passed unscanned.
    let reply = m.gateway("br");
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.json()["reason"], "credential-reflected");
    let outcome = m.h.outcome(&reply.request_id());
    assert_eq!(outcome.reason, "credential-reflected");
    assert!(outcome.detail.unwrap().contains("`br` cannot be scanned"));

    // The console's numbers: `/metrics`, `audit findings`, top reasons.
    let metrics = m.h.admin(Some("watcher"), &["/metrics"]).body_text();
    for line in [
        "clawgate_credential_reflected_total{scope=\"mirror\",action=\"redacted\"} 12",
        "clawgate_credential_reflected_total{scope=\"mirror\",action=\"refused\"} 1",
    ] {
        assert!(metrics.contains(line), "{metrics}");
    }
    let findings =
        m.h.admin(Some("watcher"), &["/v1/audit/findings"])
            .body_text();
    assert!(findings.contains("credential-reflected"), "{findings}");
    let stats = m.h.admin(Some("watcher"), &["/v1/audit/stats"]).json();
    let top = stats["top_refusal_reasons"].to_string();
    assert!(top.contains("[\"credential-reflected\",13]"), "{top}");

    // Nothing clawgate wrote holds either value.
    let mut h = m.h;
    h.stop();
    for entry in std::fs::read_dir(h.dir.path()).unwrap().flatten() {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for secret in [CANARY, SENTINEL_VALUE] {
            assert!(
                !common::contains(&bytes, secret),
                "{secret} in {}",
                path.display()
            );
        }
    }
}

#[test]
fn refuse_mode_answers_502_or_cuts_the_stream_and_records_it() {
    let m = start();
    let url = |case: &str| format!("{}/mirror-refuse/{case}", m.h.base());
    // Found in the head: a 502 before anything is sent.
    let reply = m.h.curl(Some("mirrorer"), &[&url("json")]);
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.json()["reason"], "credential-reflected");
    assert_eq!(reply.json()["error"], "denied");
    assert_clean("refuse json", &reply);
    let outcome = m.h.outcome(&reply.request_id());
    assert_eq!(outcome.reason, "credential-reflected");
    assert!(
        outcome
            .detail
            .unwrap()
            .contains("refused (header x-echo-auth)"),
        "{reply:?}"
    );
    // Found in a small body read whole: a 502 as well.
    let reply = m.h.curl(Some("mirrorer"), &[&url("json?quiet")]);
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_clean("refuse quiet json", &reply);
    let outcome = m.h.outcome(&reply.request_id());
    assert_eq!(outcome.reason, "credential-reflected");
    assert!(outcome.detail.unwrap().contains("refused (body)"));
    // Found in a streamed body after the head went out: the stream is cut.
    let reply = m.h.curl(Some("mirrorer"), &[&url("sse?quiet")]);
    assert_ne!(reply.exit, 0, "a cut stream is an error to curl: {reply:?}");
    assert_clean("refuse sse", &reply);
    let outcome = m.h.outcome(&reply.request_id());
    assert_eq!(outcome.reason, "credential-reflected", "{outcome:?}");
}

#[test]
fn a_websocket_message_reflecting_the_credential_is_redacted_by_frame() {
    let m = start();
    let (cert, key) = m.h.agent_cert("mirrorer");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/undici_websocket.mjs");
    let out = std::process::Command::new("node")
        .arg(script)
        .arg(format!("https://localhost:{}", m.h.port))
        .args([
            &m.h.certs.join("ca.pem"),
            &cert,
            &key,
            &m.h.certs.join("intercept-ca.pem"),
        ])
        .arg(format!("wss://127.0.0.1:{}/ws", m.port))
        .arg("hello")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // undici reassembled the two fragments into one well-formed message.
    assert_eq!(
        answer["echoed"],
        format!("{{\"auth\":\"Bearer {MARKER}\"}}"),
        "{answer}"
    );
    assert!(!stdout.contains(CANARY));
    let upgrade = m.h.wait_for("the upgrade's outcome", |r| {
        r.kind == "outcome" && r.path.as_deref() == Some("/ws")
    });
    assert_eq!(upgrade[0].status, Some(101));
    assert_eq!(upgrade[0].reason, "tunnel-closed");
    let detail = upgrade[0].detail.clone().unwrap_or_default();
    assert!(
        detail.contains("credential-reflected: 1 redacted (frame)"),
        "{detail}"
    );
}
