//! `clawgate demo`: a whole first run in a temporary directory, with real TLS,
//! real files and a real SQLite decision log.
//!
//! It makes certificates, writes the example policy, starts a local HTTPS
//! upstream that echoes what it received, starts clawgate, and makes four calls
//! with agent certificates: allowed (the injected credential arrives, the
//! agent's own does not), denied by a rule, from an unknown agent, and without
//! a certificate. Then it prints the decision log and verifies its chain.

pub mod echo;
pub mod websocket;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::audit::{self, Filter, Format};
use crate::certs::{self, files};
use crate::forward::Timeouts;
use crate::serve::{self, ServeConfig};

use echo::EchoUpstream;

/// The example policy shipped in `policy/`.
pub const EXAMPLE_POLICY: &str = include_str!("../../policy/example.toml");
/// The upstream port the example policy names, replaced by the echo's port.
pub const EXAMPLE_PORT: &str = ":9700";
/// The environment variable the example's credential reads.
pub const EXAMPLE_TOKEN_ENV: &str = "ECHO_API_TOKEN";

/// Writes the example policy into `policy_dir`, pointed at an upstream on
/// `port` whose CA is `upstream_ca_pem`.
pub fn write_example_policy(
    policy_dir: &Path,
    port: u16,
    upstream_ca_pem: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(policy_dir)?;
    let text = EXAMPLE_POLICY.replace(EXAMPLE_PORT, &format!(":{port}"));
    std::fs::write(policy_dir.join("example.toml"), text)?;
    std::fs::write(policy_dir.join("upstream-ca.pem"), upstream_ca_pem)?;
    Ok(())
}

/// Runs the demo. With `keep`, leaves clawgate and the echo running after the
/// scripted calls and prints curl commands to try, until interrupted.
pub async fn run(keep: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("clawgate-demo-")
        .tempdir()?;
    let root = dir.path().to_path_buf();
    let certs_dir = root.join("certs");
    let policy_dir = root.join("policy");
    let audit_path = root.join("clawgate-audit.db");
    println!("== clawgate demo in {}", root.display());

    certs::init(&certs_dir, &[], false)?;
    certs::agent(&certs_dir, "research", certs::DEFAULT_AGENT_DAYS, false)?;
    certs::agent(&certs_dir, "intruder", certs::DEFAULT_AGENT_DAYS, false)?;
    println!(
        "certificates: CA, server, interception CA, agents `research` and `intruder` (not in policy)"
    );

    let upstream_ca = certs::new_ca("demo upstream CA", 1)?;
    let (upstream_cert, _) = certs::issue(&upstream_ca, &certs::server_spec(&[], 1)?)?;
    let echo = EchoUpstream::start(&upstream_cert).await?;
    write_example_policy(&policy_dir, echo.addr.port(), &upstream_ca.cert)?;
    println!("echo upstream: https://{}", echo.addr);

    let token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let env_token = token.clone();
    let env = move |name: &str| (name == EXAMPLE_TOKEN_ENV).then(|| env_token.clone());
    let config = demo_config(policy_dir, certs_dir.clone(), audit_path.clone())?;
    let running = serve::start(&config, std::sync::Arc::new(env)).await?;
    let base = format!("https://localhost:{}", running.addr.port());
    println!("clawgate: listening on {}\n", running.addr);

    scripted_calls(&base, &certs_dir, &token, &echo).await?;

    if keep {
        println!("\nclawgate and the echo keep running; try:");
        println!(
            "  curl --cacert {c}/ca.pem --cert {c}/agents/research.pem --key {c}/agents/research-key.pem {base}/echo/v1/items",
            c = certs_dir.display()
        );
        println!(
            "  curl --proxy {base} --proxy-cacert {c}/ca.pem --proxy-cert {c}/agents/research.pem --proxy-key {c}/agents/research-key.pem --cacert {c}/intercept-ca.pem https://{echo}/v1/items",
            c = certs_dir.display(),
            echo = echo.addr
        );
        println!("  clawgate audit query --audit {}", audit_path.display());
        println!("press Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }

    // Let the outcome records of the calls above land, then stop and flush.
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.shutdown().await;

    show_log(&audit_path)?;
    drop(echo);
    drop(dir);
    Ok(())
}

/// clawgate's configuration for the demo: loopback, an ephemeral port, the
/// defaults otherwise.
fn demo_config(
    policy_dir: std::path::PathBuf,
    certs_dir: std::path::PathBuf,
    audit_path: std::path::PathBuf,
) -> anyhow::Result<ServeConfig> {
    Ok(ServeConfig {
        policy_dir,
        certs_dir,
        audit_path,
        listen: "127.0.0.1:0".parse()?,
        shards: 0,
        crl: None,
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(30),
        },
        drain: Duration::from_secs(5),
        broker: crate::credentials::BrokerConfig::default(),
        vend_listen: None,
        limits: crate::pipeline::BodyLimits::default(),
        resolve: Vec::new(),
        decision_log_off_benchmark_only: false,
        admin_listen: None,
        watch_policy: false,
        max_exception: crate::policy::DEFAULT_MAX_EXCEPTION,
        token_listen: None,
        token_jwks: None,
        retention: None,
        chain_check_every: std::time::Duration::from_secs(300),
        anchors: None,
        otlp_endpoint: None,
        fleet: crate::serve::FleetConfig::default(),
    })
}

/// The four scripted calls: allowed with the credential injected, denied by
/// a rule, an unknown agent, and no certificate at all.
async fn scripted_calls(
    base: &str,
    certs_dir: &Path,
    token: &str,
    echo: &EchoUpstream,
) -> anyhow::Result<()> {
    let research = agent_client(certs_dir, Some("research"))?;
    let intruder = agent_client(certs_dir, Some("intruder"))?;
    let anonymous = agent_client(certs_dir, None)?;

    // 1. Allowed: the echo shows what arrived upstream.
    let (status, body) = call(
        &research,
        "GET",
        &format!("{base}/echo/v1/items?page=2"),
        true,
    )
    .await?;
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let echoed = seen["headers"]
        .as_array()
        .and_then(|h| h.iter().find(|kv| kv[0] == "authorization"))
        .and_then(|kv| kv[1].as_str())
        .unwrap_or("(none)")
        .to_owned();
    let arrived = echo
        .seen()
        .last()
        .and_then(|s| s.headers.iter().find(|(k, _)| k == "authorization"))
        .map_or_else(|| "(none)".to_owned(), |(_, v)| v.clone());
    println!("1. research  GET /echo/v1/items?page=2      -> {status}");
    println!("   the agent sent:       authorization: Bearer agent-held-key");
    println!(
        "   the upstream received: authorization: {}",
        mask(&arrived, token)
    );
    println!("   the echo came back as: authorization: {echoed}");
    if status != StatusCode::OK
        || arrived != format!("Bearer {token}")
        || String::from_utf8_lossy(&body).contains(token)
    {
        bail!("the allowed call did not arrive with the injected credential, or it came back");
    }

    // 2. Denied by an explicit rule.
    let (status, body) = call(
        &research,
        "DELETE",
        &format!("{base}/echo/v1/items/admin/users"),
        true,
    )
    .await?;
    println!(
        "2. research  DELETE /echo/v1/items/admin/users -> {status} {}",
        String::from_utf8_lossy(&body)
    );

    // 3. A valid certificate that maps to no agent.
    let (status, body) = call(&intruder, "GET", &format!("{base}/echo/v1/items"), false).await?;
    println!(
        "3. intruder  GET /echo/v1/items             -> {status} {}",
        String::from_utf8_lossy(&body)
    );

    // 4. No certificate at all: the handshake fails, nothing is forwarded.
    match call(&anonymous, "GET", &format!("{base}/echo/v1/items"), false).await {
        Ok((status, _)) => bail!("a call without a certificate got an HTTP answer ({status})"),
        Err(e) => println!(
            "4. (no cert) GET /echo/v1/items             -> refused in the TLS handshake ({e})"
        ),
    }
    println!(
        "\nthe upstream saw {} request(s); clawgate refused the rest before they left",
        echo.seen().len()
    );

    Ok(())
}

/// Prints the decision log and its verification.
fn show_log(audit_path: &Path) -> anyhow::Result<()> {
    println!("\n== decision log ({})", audit_path.display());
    let records = audit::query(audit_path, &Filter::default())?;
    audit::render(&records, Format::Table, &mut std::io::stdout())?;
    let report = audit::verify(audit_path)?;
    println!(
        "\n== audit verify: {} records, chain intact, head {} {}",
        report.count, report.head.seq, report.head.hash
    );
    Ok(())
}

/// Shows a secret value only as its first characters.
fn mask(value: &str, secret: &str) -> String {
    value.replace(
        secret,
        &format!("{}… (injected by clawgate)", &secret[..secret.len().min(9)]),
    )
}

type DemoClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// An HTTPS client that trusts the clawgate CA and presents `agent`'s
/// certificate (or none).
pub fn agent_client(certs_dir: &Path, agent: Option<&str>) -> anyhow::Result<DemoClient> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs_dir.join(files::CA))? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match agent {
        Some(name) => {
            let agents: PathBuf = certs_dir.join("agents");
            let chain = CertificateDer::pem_file_iter(agents.join(format!("{name}.pem")))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(agents.join(format!("{name}-key.pem")))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

async fn call(
    client: &DemoClient,
    method: &str,
    url: &str,
    with_own_key: bool,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut req = Request::builder().method(method).uri(url);
    if with_own_key {
        req = req.header("authorization", "Bearer agent-held-key");
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Empty::new())?),
    )
    .await
    .context("timed out")?
    .map_err(|e| anyhow::anyhow!("{}", crate::forward::ErrorChain(&e)))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
