//! The load generator: HTTP/1.1 over rustls, presenting the agent's client
//! certificate, in three shapes:
//! - closed loop: N connections, keep-alive, each sends its next request as
//!   soon as the last answer is in (maximum throughput);
//! - open loop: requests due at a fixed rate, spread over N connections, each
//!   timed from when it was due (coordinated-omission correction);
//! - closed loop with a new TLS connection (full handshake, no resumption)
//!   for every request.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::upstream::BODY_BYTES;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where one target listens and what to ask it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `clawgate`, `nginx`, `direct`, …
    pub name: &'static str,
    pub port: u16,
    /// The request path.
    pub path: String,
    /// An `Authorization` value the client sends itself (direct only: the
    /// proxies inject it).
    pub authorization: Option<String>,
}

/// A TLS client with the agent's certificate, trusting the bench CA.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
}

impl Client {
    pub fn new(certs: &Path, agent: &str) -> Result<Client, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(certs.join("ca.pem"))?)?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certs.join(format!("agents/{agent}.pem")))?
                .collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(certs.join(format!("agents/{agent}-key.pem")))?;
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every new connection pays for a full handshake, on every target.
        config.resumption = Resumption::disabled();
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    async fn connect(&self, port: u16) -> Result<SendRequest<Empty<Bytes>>, Error> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: &Target,
    close: bool,
) -> Result<(), Error> {
    let mut request = Request::get(target.path.as_str()).header(header::HOST, "localhost");
    if let Some(value) = &target.authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    if close {
        request = request.header(header::CONNECTION, "close");
    }
    sender.ready().await?;
    let response = sender.send_request(request.body(Empty::new())?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK || body.len() != BODY_BYTES {
        return Err(format!("status {status}, {} bytes", body.len()).into());
    }
    Ok(())
}

/// What a closed-loop run measured over its measured window.
#[derive(Debug, Clone, Copy)]
pub struct Closed {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// CPU seconds the processes under test used in the window.
    pub cpu_seconds: f64,
}

impl Closed {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Closed loop on `connections` connections: a warm-up, then a measured
/// window. `cpu` reads the CPU seconds used so far by what is under test.
pub async fn closed(
    client: &Client,
    target: &Target,
    connections: usize,
    new_connection_per_request: bool,
    warmup: Duration,
    measure: Duration,
    cpu: &dyn Fn() -> f64,
) -> Closed {
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (client, target) = (client.clone(), target.clone());
        let (completed, errors, stop) = (completed.clone(), errors.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) {
                if sender.is_none() {
                    match client.connect(target.port).await {
                        Ok(s) => sender = Some(s),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(s) = sender.as_mut() else { continue };
                match exchange(s, &target, new_connection_per_request).await {
                    Ok(()) => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        sender = None;
                    }
                }
                if new_connection_per_request {
                    sender = None;
                }
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let (c0, e0, cpu0, t0) = (
        completed.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        cpu(),
        Instant::now(),
    );
    tokio::time::sleep(measure).await;
    let (c1, e1, cpu1, t1) = (
        completed.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        cpu(),
        Instant::now(),
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    Closed {
        requests: c1 - c0,
        errors: e1 - e0,
        seconds: (t1 - t0).as_secs_f64(),
        cpu_seconds: cpu1 - cpu0,
    }
}

/// What an open-loop run measured: one latency per request due in the
/// measured window, in microseconds.
#[derive(Debug, Default)]
pub struct Open {
    pub latencies_us: Vec<u64>,
    pub errors: u64,
    /// Requests due per second.
    pub rate: f64,
    /// CPU seconds the processes under test used over the measured window.
    pub cpu_seconds: f64,
}

impl Open {
    /// CPU seconds per 10,000 requests due in the measured window.
    pub fn cpu_per_10k(&self) -> f64 {
        self.cpu_seconds / self.latencies_us.len().max(1) as f64 * 10_000.0
    }
}

/// Open loop at `rate` requests a second over `connections` keep-alive
/// connections. A request is timed from when it was due if every connection
/// was busy then (the wait is the target's doing), and from when it was sent
/// if a connection was idle and waiting for the timer (a late timer is the
/// generator's doing, not the target's). `cpu` reads the CPU seconds used so
/// far by what is under test; it is read when the measured window opens and
/// when it closes.
pub async fn open(
    client: &Client,
    target: &Target,
    connections: usize,
    rate: f64,
    warmup: Duration,
    measure: Duration,
    cpu: &dyn Fn() -> f64,
) -> Result<Open, Error> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(client.connect(target.port).await?);
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(20);
    let measured_from = start + warmup;
    let end = measured_from + measure;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for mut sender in senders {
        let (client, target, next) = (client.clone(), target.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let due = start + interval.mul_f64(i as f64);
                if due >= end {
                    break;
                }
                let from = if Instant::now() < due {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                };
                let ok = exchange(&mut sender, &target, false).await.is_ok();
                let took = from.elapsed();
                if !ok {
                    errors += 1;
                    match client.connect(target.port).await {
                        Ok(s) => sender = s,
                        Err(_) => break,
                    }
                }
                if due >= measured_from {
                    latencies.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep_until(measured_from.into()).await;
    let cpu0 = cpu();
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = cpu();
    let mut open = Open {
        rate,
        cpu_seconds: cpu1 - cpu0,
        ..Open::default()
    };
    for task in tasks {
        let (latencies, errors) = task.await?;
        open.latencies_us.extend(latencies);
        open.errors += errors;
    }
    open.latencies_us.sort_unstable();
    Ok(open)
}

/// The `q` quantile of sorted samples, in milliseconds.
pub fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}
