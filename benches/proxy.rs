//! The cost of a call through an intercepted `CONNECT` tunnel against the
//! same call through the gateway, end to end on loopback: clawgate in
//! process, the echo upstream, the decision log on disk (each call waits for
//! its decision record to be committed, in both modes). The log lives on a
//! memory file system (`/dev/shm`) when there is one, so that the fsync, whose
//! cost is the same in both modes and depends on the disk, does not hide the
//! difference being measured.
//!
//! - `gateway`: `GET https://clawgate/echo/v1/items` on a kept-alive
//!   connection.
//! - `intercepted`: `GET /v1/items` inside one kept-alive intercepted tunnel
//!   (TLS to clawgate, `CONNECT`, TLS with the minted leaf, HTTP/1.1).
//! - `intercepted_new_tunnel`: the whole setup of a tunnel (outer TLS with
//!   the agent certificate, `CONNECT` with its own durable record, inner TLS
//!   with the cached leaf) and one call in it.
//!
//! - `intercept/mint_leaf`: minting the leaf for a host not yet cached.
//!
//! Run: `cargo bench --bench proxy`. `cargo test --benches` runs each once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark setup"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clawgate::certs::{self, files};
use clawgate::demo::echo::EchoUpstream;
use clawgate::forward::Timeouts;
use clawgate::serve::{self, ServeConfig};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn tls_config(roots_pem: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(roots_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

struct Setup {
    proxy: std::net::SocketAddr,
    echo: std::net::SocketAddr,
    outer: Arc<rustls::ClientConfig>,
    inner: Arc<rustls::ClientConfig>,
}

/// TLS with the agent certificate to clawgate, then HTTP/1.1 on it.
async fn outer_connection(s: &Setup) -> SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(s.proxy).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::clone(&s.outer))
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// A new intercepted tunnel to the echo upstream, ready for requests.
async fn tunnel(s: &Setup) -> SendRequest<Empty<Bytes>> {
    let mut outer = outer_connection(s).await;
    let target = s.echo.to_string();
    let connect = Request::connect(target.as_str())
        .header("host", target.as_str())
        .body(Empty::new())
        .unwrap();
    let response = outer.send_request(connect).await.unwrap();
    assert_eq!(response.status(), 200);
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let name = ServerName::IpAddress(s.echo.ip().into());
    let tls = TlsConnector::from(Arc::clone(&s.inner))
        .connect(name, TokioIo::new(upgraded))
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>, uri: &str, host: &str) {
    sender.ready().await.unwrap();
    let req = Request::get(uri)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    eprintln!("decision log in {}", dir.path().display());
    let certs_dir = dir.path().join("certs");
    certs::init(&certs_dir, &[], false).unwrap();
    certs::agent(&certs_dir, "research", 1, false).unwrap();
    let upstream_ca = certs::new_ca("bench upstream CA", 1).unwrap();
    let (upstream_cert, _) =
        certs::issue(&upstream_ca, &certs::server_spec(&[], 1).unwrap()).unwrap();
    let echo = rt.block_on(EchoUpstream::start(&upstream_cert)).unwrap();
    let policy_dir = dir.path().join("policy");
    clawgate::demo::write_example_policy(&policy_dir, echo.addr.port(), &upstream_ca.cert).unwrap();
    let config = ServeConfig {
        policy_dir,
        certs_dir: certs_dir.clone(),
        audit_path: dir.path().join("audit.db"),
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 0,
        crl: None,
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(30),
        },
        drain: Duration::from_secs(1),
        resolve: Vec::new(),
        broker: clawgate::credentials::BrokerConfig::default(),
        vend_listen: None,
        limits: clawgate::pipeline::BodyLimits::default(),
        decision_log_off_benchmark_only: false,
        admin_listen: None,
        watch_policy: false,
        max_exception: clawgate::policy::DEFAULT_MAX_EXCEPTION,
        token_listen: None,
        token_jwks: None,
        retention: None,
        chain_check_every: std::time::Duration::from_secs(300),
        anchors: None,
        otlp_endpoint: None,
        fleet: clawgate::serve::FleetConfig::default(),
    };
    let env = |name: &str| (name == "ECHO_API_TOKEN").then(|| "bench-token".to_owned());
    let running = rt
        .block_on(serve::start(&config, std::sync::Arc::new(env)))
        .unwrap();
    let agents = certs_dir.join("agents");
    let setup = Setup {
        proxy: running.addr,
        echo: echo.addr,
        outer: tls_config(
            &certs_dir.join(files::CA),
            Some((
                &agents.join("research.pem"),
                &agents.join("research-key.pem"),
            )),
        ),
        inner: tls_config(&certs_dir.join(files::INTERCEPT_CA), None),
    };

    let mut group = c.benchmark_group("call");
    let mut gateway = rt.block_on(outer_connection(&setup));
    group.bench_function("gateway", |b| {
        b.iter(|| rt.block_on(get(&mut gateway, "/echo/v1/items", "localhost")));
    });
    let mut inside = rt.block_on(tunnel(&setup));
    let host = setup.echo.to_string();
    group.bench_function("intercepted", |b| {
        b.iter(|| rt.block_on(get(&mut inside, "/v1/items", &host)));
    });
    group.bench_function("intercepted_new_tunnel", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut fresh = tunnel(&setup).await;
                get(&mut fresh, "/v1/items", &host).await;
            });
        });
    });
    group.finish();

    // Minting a leaf for a host not seen before (the cache is bypassed by a
    // new name each time).
    let interceptor = clawgate::intercept::Interceptor::load(&certs_dir).unwrap();
    let mut n = 0u64;
    c.bench_function("intercept/mint_leaf", |b| {
        b.iter(|| {
            n += 1;
            let host = clawgate::egress::Host::Name(format!("h{n}.example.com"));
            interceptor.server_config(&host).unwrap()
        });
    });
    drop((gateway, inside));
    rt.block_on(running.shutdown());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
