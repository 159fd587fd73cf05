//! `clawgate serve`: load everything, refuse to start on any problem, then run
//! the agent listener (and the token listener) on per-core shards
//! ([`crate::shards`]) and the rest on the caller's runtime until told to
//! stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::shards::{self, CallListeners, ShardError, Shards};

use crate::accept::Rejections;
use crate::audit::postgres::PgTarget;
use crate::audit::{AuditError, AuditLog, Source, WriterHandle};
use crate::background;
use crate::credentials::{Broker, BrokerConfig};
use crate::forward::{ForwardError, Timeouts, Upstreams};
use crate::intercept::{InterceptError, Interceptor};
use crate::limits::redis::{RedisConfig, RedisLimits};
use crate::overrides::{OverrideError, Overrides};
use crate::pipeline::vend::{self, VendListenError};
use crate::pipeline::{BodyLimits, Parts as PipelineParts, Pipeline};
use crate::policy::{self, LoadError, LoadOptions};
use crate::reload::{Env, Reloader, policy_record};
use crate::tls::{TlsError, TlsStore};

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
    /// How many shards serve the agent and token listeners; 0 is one per
    /// available core.
    pub shards: usize,
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
    /// Where the admin and auditor API binds (mTLS, same CA), if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// Reload the policy when its files change (SIGHUP and the API always work).
    pub watch_policy: bool,
    /// How far ahead a policy exception may expire.
    pub max_exception: Duration,
    /// Where the token listener binds (TLS, run token as proxy password).
    pub token_listen: Option<SocketAddr>,
    /// An external issuer's public keys (a JWKS file) and its `iss`.
    pub token_jwks: Option<(PathBuf, String)>,
    /// Shared stores for a fleet of replicas; none by default.
    pub fleet: FleetConfig,
    /// Archive and prune the decision log on a schedule (SQLite, or every
    /// chain of the PostgreSQL store).
    pub retention: Option<crate::retention::Retention>,
    /// How often the whole chain is walked to find a record edited or
    /// removed behind clawgate's back (`clawgate_audit_chain_intact`).
    pub chain_check_every: Duration,
    /// Signed heads of the SQLite log written on a schedule; none by default.
    pub anchors: Option<AnchorConfig>,
    /// The OTLP/HTTP collector that receives one span per call; none (no
    /// traces) by default.
    pub otlp_endpoint: Option<String>,
}

/// Where and how often `serve` writes signed heads (`--anchor-every`).
#[derive(Debug, Clone)]
pub struct AnchorConfig {
    /// The anchor directory (one file per anchor).
    pub dir: PathBuf,
    /// The signing key, loaded at start.
    pub key: std::sync::Arc<ring::signature::Ed25519KeyPair>,
    /// How often the head is anchored.
    pub every: Duration,
}

/// Where a fleet keeps what one replica would keep to itself. Every field
/// empty (the default) is the embedded single-host setup.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The decision log and overrides on PostgreSQL, instead of SQLite.
    pub store: Option<PgTarget>,
    /// This replica's name: its chain in the store.
    pub replica: Option<String>,
    /// How often this replica tries to append a checkpoint.
    pub checkpoint_every: Duration,
    /// Rate limits on Redis, instead of in this process.
    pub limits: Option<RedisConfig>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            store: None,
            replica: None,
            checkpoint_every: Duration::from_secs(60),
            limits: None,
        }
    }
}

/// Why `serve` would not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The policy directory did not validate.
    #[error("policy refused:\n{0}")]
    Policy(#[from] LoadError),
    /// Certificates are missing or unusable.
    #[error(transparent)]
    Listener(#[from] TlsError),
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
    /// The run token keys cannot be read.
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
    /// The override store cannot be opened.
    #[error(transparent)]
    Overrides(#[from] OverrideError),
    /// The approval store beside the decision log cannot be opened.
    #[error("approval store: {0}")]
    Approvals(String),
    /// The key that hashes MCP arguments cannot be read or made.
    #[error("cannot use the MCP argument key `{path}`: {source}")]
    McpKey {
        /// The key file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The OTLP endpoint is unusable.
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    /// The MCP pins kept beside the decision log cannot be read.
    #[error("cannot read the MCP pins in `{path}`: {message}")]
    McpPins {
        /// The decision log's database.
        path: String,
        /// What SQLite said.
        message: String,
    },
    /// The shards serving the agent and token listeners cannot start
    /// (their address is unavailable, or a thread cannot be made).
    #[error(transparent)]
    Shards(#[from] ShardError),
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
    /// The bound admin listener address, when there is one.
    pub admin_addr: Option<SocketAddr>,
    /// The bound token listener address, when there is one.
    pub token_addr: Option<SocketAddr>,
    /// The pipeline, for inspection.
    pub pipeline: Arc<Pipeline>,
    stop: watch::Sender<bool>,
    shards: Shards,
    vend_task: Option<JoinHandle<()>>,
    other_tasks: Vec<JoinHandle<()>>,
    writer: WriterHandle,
}

impl Running {
    /// How many shards serve the agent and token listeners.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Stops accepting, drains in-flight calls, flushes the decision log
    /// once every shard's connections are gone.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.shards.join().await;
        if let Some(task) = self.vend_task {
            let _ = task.await;
        }
        for task in self.other_tasks {
            let _ = task.await;
        }
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.shutdown()).await;
    }
}

/// Loads policy, certificates and the decision log, binds the listener and
/// starts serving. Any problem stops the start, with a message that says what
/// to do.
pub async fn start(config: &ServeConfig, env: Env) -> Result<Running, ServeError> {
    let policy = load_policy(config, &env)?;
    // A server holds one descriptor per peer: take what the system allows.
    let open_files = crate::accept::raise_open_files_limit();
    tracing::debug!(?open_files, "open files limit");
    let tls = Arc::new(TlsStore::load(&config.certs_dir, config.crl.as_deref())?);
    let interceptor = Interceptor::load(&config.certs_dir)?;
    let shard_count = shards::count(config.shards);
    let upstreams = Upstreams::new(config.timeouts, Arc::new(pins(config)), shard_count)?;
    let (audit, writer) = open_log(config).await?;
    let (agent_sockets, addr) = shards::bind(config.listen, shard_count)?;
    // The policy in force is itself a record; a log that cannot take it
    // cannot take decisions either, so this is a reason not to start.
    audit.append_durable(policy_record(&policy)).await?;
    let vend_listener = match config.vend_listen {
        Some(addr) => Some(vend::bind(addr).await?),
        None => None,
    };
    let vend_addr = vend_listener.as_ref().and_then(|l| l.local_addr().ok());
    let admin_listener = bind_optional(config.admin_listen).await?;
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let token_sockets = config
        .token_listen
        .map(|addr| shards::bind(addr, shard_count))
        .transpose()?;
    let token_addr = token_sockets.as_ref().map(|(_, addr)| *addr);
    let (pipeline, shared_limits) =
        assemble_pipeline(config, policy, audit, (upstreams, interceptor), admin_addr).await?;
    let reloader = Arc::new(Reloader::new(
        config.policy_dir.clone(),
        env,
        config.max_exception,
        Arc::clone(&pipeline),
    ));
    let audit_source = match &config.fleet.store {
        Some(target) => Source::Postgres(target.clone()),
        None => Source::Sqlite(config.audit_path.clone()),
    };
    if !config.decision_log_off_benchmark_only {
        seed_lapses(&pipeline, &audit_source).await;
    }
    // The start-up load is a load like any other: `policy-loaded` above,
    // and counted in `clawgate_policy_loads_total`.
    pipeline.metrics().reload(true);
    tls.attach(
        pipeline.audit().clone(),
        vec![Arc::new(pipeline.interceptor.clone())],
    );
    let rejections =
        Arc::new(Rejections::new(pipeline.audit().clone()).counting(Arc::clone(&pipeline)));
    let (stop, stopped) = watch::channel(false);
    let other_tasks = background::spawn_tasks(
        config,
        &pipeline,
        &rejections,
        &tls,
        &stopped,
        background::Background {
            reloader,
            audit_source,
            admin_listener,
            shared_limits,
        },
    );
    let vend_task = vend_listener.map(|listener| {
        tokio::spawn(vend::serve(
            listener,
            Arc::clone(&rejections),
            Arc::clone(&pipeline),
            stopped.clone(),
        ))
    });
    let shards = shards::serve_calls(CallListeners {
        agent: agent_sockets,
        token: token_sockets.map(|(sockets, _)| sockets),
        tls,
        rejections,
        pipeline: Arc::clone(&pipeline),
        shutdown: stopped,
        drain: config.drain,
    })
    .await?;
    tracing::info!(
        shards = shards.len(),
        "serving calls on {} shards",
        shards.len()
    );
    Ok(Running {
        addr,
        vend_addr,
        admin_addr,
        token_addr,
        pipeline,
        stop,
        shards,
        vend_task,
        other_tasks,
        writer,
    })
}

/// The pipeline every call goes through, over the policy in force, the
/// decision log and the parts `serve` loaded; with the fleet's shared rate
/// limit store, when there is one.
async fn assemble_pipeline(
    config: &ServeConfig,
    policy: policy::Policy,
    audit: AuditLog,
    (upstreams, interceptor): (Upstreams, Interceptor),
    admin_addr: Option<SocketAddr>,
) -> Result<(Arc<Pipeline>, Option<Arc<RedisLimits>>), ServeError> {
    let tokens = crate::token::Verifier::load(
        &config.certs_dir,
        config
            .token_jwks
            .as_ref()
            .map(|(path, issuer)| (path.as_path(), issuer.as_str())),
    )?;
    let overrides = open_overrides(config).await?;
    let broker = Arc::new(Broker::new(config.broker.clone(), audit.clone()));
    broker.set_egress(Arc::clone(upstreams.pins()), upstreams.timeouts());
    let mcp = mcp_state(config)?;
    let shared_limits = config
        .fleet
        .limits
        .clone()
        .map(|c| Arc::new(RedisLimits::new(c)));
    let parts = PipelineParts {
        upstreams,
        interceptor,
        broker,
        limits: config.limits,
        overrides,
    };
    let mut pipeline = Pipeline::new(Arc::new(policy), audit, parts)
        .with_tokens(tokens)
        .with_mcp(mcp);
    if let Some(admin) = admin_addr {
        // Kept beside the SQLite decision log; in memory on a fleet's store
        // (or with the log off, for benchmarks).
        let store = if config.fleet.store.is_some() || config.decision_log_off_benchmark_only {
            crate::approvals::ApprovalStore::memory()
        } else {
            crate::approvals::ApprovalStore::open(&config.audit_path)
                .map_err(|e| ServeError::Approvals(e.to_string()))?
        };
        // An approval's link is where approvers answer it.
        let approvals = crate::approvals::Approvals::new(
            store,
            crate::approvals::HoldLimits::default(),
            format!("https://{admin}/v1/approvals/"),
        );
        pipeline = pipeline.with_approvals(Arc::new(approvals));
    }
    if let Some(store) = &shared_limits {
        pipeline = pipeline.with_limits(Arc::clone(store) as _);
    }
    if let Some(endpoint) = &config.otlp_endpoint {
        // The exporter ends by itself once the pipeline (the last holder of
        // its queue) is dropped, after sending what was queued.
        let (tracer, _exporter) = crate::trace::start(crate::trace::ExportConfig {
            endpoint: endpoint.clone(),
            instance: config
                .fleet
                .replica
                .clone()
                .unwrap_or_else(|| "clawgate".to_owned()),
            every: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        })?;
        tracing::info!(endpoint = %endpoint, "call spans exported over otlp/http");
        pipeline = pipeline.with_tracer(tracer);
    }
    Ok((Arc::new(pipeline), shared_limits))
}

/// The policy files, validated; their warnings logged.
fn load_policy(config: &ServeConfig, env: &Env) -> Result<policy::Policy, ServeError> {
    let options = LoadOptions {
        env: &**env,
        now: std::time::SystemTime::now(),
        max_exception: config.max_exception,
    };
    let (policy, warnings) = policy::load(&config.policy_dir, &options)?;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        digest = policy.digest(),
        "policy loaded: {}",
        policy.summary()
    );
    Ok(policy)
}

/// Names pinned to addresses (`--resolve NAME=IP`, repeatable).
fn pins(config: &ServeConfig) -> std::collections::HashMap<String, Vec<std::net::IpAddr>> {
    let mut pins: std::collections::HashMap<String, Vec<std::net::IpAddr>> =
        std::collections::HashMap::new();
    for (name, ip) in &config.resolve {
        pins.entry(name.clone()).or_default().push(*ip);
    }
    pins
}

/// The exception lapses an earlier run already recorded, so that a restart
/// does not record them again.
async fn seed_lapses(pipeline: &Pipeline, audit_source: &Source) {
    match audit_source {
        Source::Sqlite(path) => pipeline.lapses().seed(path),
        Source::Postgres(_) => {
            if let Ok(records) = audit_source
                .query(&crate::lapse::Lapses::seed_filter())
                .await
            {
                pipeline.lapses().seed_from(records);
            }
        }
    }
}

/// The decision log this replica writes: SQLite, a fleet's PostgreSQL
/// chain, or (benchmarks only) none.
async fn open_log(config: &ServeConfig) -> Result<(AuditLog, WriterHandle), ServeError> {
    Ok(if config.decision_log_off_benchmark_only {
        tracing::warn!(
            "BENCHMARK ONLY: the decision log is off; no decision or outcome is recorded"
        );
        AuditLog::discarding_for_benchmarks()?
    } else if let Some(target) = &config.fleet.store {
        let Some(replica) = config.fleet.replica.clone() else {
            return Err(ServeError::Audit(AuditError::Write(
                "`--store` needs `--replica`: the name of this replica's chain".into(),
            )));
        };
        let target = target.clone();
        tracing::info!(replica = %replica, "decision log on postgresql");
        tokio::task::spawn_blocking(move || AuditLog::open_postgres(&target, &replica))
            .await
            .map_err(|e| AuditError::Write(format!("cannot open the decision log: {e}")))??
    } else {
        AuditLog::open(&config.audit_path)?
    })
}

/// A listener on `addr`, when one is configured.
async fn bind_optional(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, ServeError> {
    match addr {
        Some(addr) => Ok(Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        )),
        None => Ok(None),
    }
}

/// The overrides store: shared on a fleet, beside the log otherwise.
async fn open_overrides(config: &ServeConfig) -> Result<Arc<Overrides>, ServeError> {
    // With the log off (benchmarks only) nothing may touch the log's file.
    let overrides_path = if config.decision_log_off_benchmark_only {
        std::path::Path::new(":memory:")
    } else {
        config.audit_path.as_path()
    };
    Ok(Arc::new(
        match (&config.fleet.store, &config.fleet.replica) {
            (Some(target), Some(replica)) if !config.decision_log_off_benchmark_only => {
                let (target, replica) = (target.clone(), replica.clone());
                tokio::task::spawn_blocking(move || Overrides::open_shared(target, replica))
                    .await
                    .map_err(|e| OverrideError::Shared(e.to_string()))??
            }
            _ => Overrides::open(overrides_path)?,
        },
    ))
}

/// MCP arguments are recorded as keyed hashes; the key lives beside the
/// log so that hashes match across restarts.
fn mcp_state(config: &ServeConfig) -> Result<crate::mcp::McpState, ServeError> {
    Ok(if config.decision_log_off_benchmark_only {
        crate::mcp::McpState::ephemeral()
    } else {
        let mut path = config.audit_path.clone().into_os_string();
        path.push(".mcp-key");
        let path = PathBuf::from(path);
        let key =
            crate::mcp::state::load_or_create_key(&path).map_err(|source| ServeError::McpKey {
                path: path.display().to_string(),
                source,
            })?;
        let state = crate::mcp::McpState::new(&key);
        // On a fleet the log is in PostgreSQL: pins stay per process there.
        if config.fleet.store.is_none() {
            let (rows, sink) = crate::mcp::pin_store::open(&config.audit_path).map_err(|e| {
                ServeError::McpPins {
                    path: config.audit_path.display().to_string(),
                    message: e.to_string(),
                }
            })?;
            state.pins.restore(rows);
            state.pins.persist_to(sink, config.audit_path.clone());
        }
        state
    })
}
