//! `clawgate serve`: load everything, refuse to start on any problem, then run
//! the agent listener until told to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::{AuditError, AuditLog, DecisionRecord, WriterHandle, kind};
use crate::credentials::{Broker, BrokerConfig};
use crate::error::Reason;
use crate::forward::{ForwardError, Timeouts, Upstreams};
use crate::intercept::{InterceptError, Interceptor};
use crate::listener::{self, ListenerError};
use crate::pipeline::vend::{self, VendListenError};
use crate::pipeline::{BodyLimits, Parts as PipelineParts, Pipeline};
use crate::policy::{self, LoadError, LoadOptions};

/// Everything `serve` needs, resolved from flags.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The policy directory.
    pub policy_dir: PathBuf,
    /// The certificate directory (`ca.pem`, `server.pem`, `server-key.pem`).
    pub certs_dir: PathBuf,
    /// The decision log database.
    pub audit_path: PathBuf,
    /// Where agents connect.
    pub listen: SocketAddr,
    /// A PEM CRL for agent certificates.
    pub crl: Option<PathBuf>,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// How long in-flight calls may finish at shutdown before they are ended.
    pub drain: Duration,
    /// How the credential broker reaches AWS.
    pub broker: BrokerConfig,
    /// Where the token-authenticated vending listener binds (loopback only).
    pub vend_listen: Option<SocketAddr>,
    /// How much of each body clawgate reads before deciding.
    pub limits: BodyLimits,
    /// Names pinned to addresses, consulted before DNS (`--resolve`).
    pub resolve: Vec<(String, std::net::IpAddr)>,
    /// BENCHMARK ONLY: record nothing (see [`AuditLog::discarding_for_benchmarks`]).
    /// The load harness sets it to show what the durable log costs.
    pub decision_log_off_benchmark_only: bool,
}

/// Why `serve` would not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The policy directory did not validate.
    #[error("policy refused:\n{0}")]
    Policy(#[from] LoadError),
    /// Certificates are missing or unusable.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The decision log cannot be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The upstream client could not be built.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The vending listener cannot start.
    #[error(transparent)]
    Vend(#[from] VendListenError),
    /// The interception CA is missing or unusable.
    #[error(transparent)]
    Intercept(#[from] InterceptError),
    /// The listen address is unavailable.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A running clawgate.
#[derive(Debug)]
pub struct Running {
    /// The bound agent listener address (useful with port 0).
    pub addr: SocketAddr,
    /// The bound vending listener address, when there is one.
    pub vend_addr: Option<SocketAddr>,
    /// The pipeline, for inspection.
    pub pipeline: Arc<Pipeline>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    vend_task: Option<JoinHandle<()>>,
    writer: WriterHandle,
}

impl Running {
    /// Stops accepting, drains in-flight calls, flushes the decision log.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some(task) = self.vend_task {
            let _ = task.await;
        }
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.shutdown()).await;
    }
}

/// Loads policy, certificates and the decision log, binds the listener and
/// starts serving. Any problem stops the start, with a message that says what
/// to do.
pub async fn start(
    config: &ServeConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Running, ServeError> {
    let (policy, warnings) = policy::load(&config.policy_dir, &LoadOptions { env })?;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        digest = policy.digest(),
        "policy loaded: {}",
        policy.summary()
    );
    let tls = listener::server_config(&config.certs_dir, config.crl.as_deref())?;
    let interceptor = Interceptor::load(&config.certs_dir)?;
    let mut pins: std::collections::HashMap<String, Vec<std::net::IpAddr>> =
        std::collections::HashMap::new();
    for (name, ip) in &config.resolve {
        pins.entry(name.clone()).or_default().push(*ip);
    }
    let upstreams = Upstreams::new(config.timeouts, Arc::new(pins))?;
    let (audit, writer) = if config.decision_log_off_benchmark_only {
        tracing::warn!(
            "BENCHMARK ONLY: the decision log is off; no decision or outcome is recorded"
        );
        AuditLog::discarding_for_benchmarks()?
    } else {
        AuditLog::open(&config.audit_path)?
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    // The policy in force is itself a record; a log that cannot take it
    // cannot take decisions either, so this is a reason not to start.
    audit.append_durable(policy_record(&policy)).await?;
    let vend_listener = match config.vend_listen {
        Some(addr) => Some(vend::bind(addr).await?),
        None => None,
    };
    let vend_addr = vend_listener.as_ref().and_then(|l| l.local_addr().ok());
    let broker = Arc::new(Broker::new(config.broker.clone(), audit.clone()));
    let pipeline = Arc::new(Pipeline::new(
        Arc::new(policy),
        audit,
        PipelineParts {
            upstreams,
            interceptor,
            broker,
            limits: config.limits,
        },
    ));
    let (stop, stopped) = watch::channel(false);
    let vend_task = vend_listener.map(|listener| {
        tokio::spawn(vend::serve(
            listener,
            Arc::clone(&pipeline),
            stopped.clone(),
        ))
    });
    let task = tokio::spawn(listener::serve(
        listener,
        tls,
        Arc::clone(&pipeline),
        stopped,
        config.drain,
    ));
    Ok(Running {
        addr,
        vend_addr,
        pipeline,
        stop,
        task,
        vend_task,
        writer,
    })
}

fn policy_record(policy: &policy::Policy) -> DecisionRecord {
    let mut record = DecisionRecord::new(kind::POLICY, &uuid::Uuid::now_v7().to_string());
    record.reason = Reason::PolicyLoaded.code().to_owned();
    record.policy_digest = Some(policy.digest().to_owned());
    let files: Vec<String> = policy
        .files()
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    record.detail = Some(format!("{}; files: {}", policy.summary(), files.join(", ")));
    record
}
