//! The `clawgate` command line: serve, demo, certs, token, policy, audit, sentinel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use time::format_description::well_known::Rfc3339;

use clawgate::audit::{self, Filter, Format, VerifyError};
use clawgate::certs;
use clawgate::credentials::BrokerConfig;
use clawgate::forward::Timeouts;
use clawgate::pipeline::BodyLimits;
use clawgate::policy::{self, LoadOptions};
use clawgate::serve::{self, ServeConfig};

// Records and request heads are built on the runtime's threads and freed on
// the writer's; glibc's allocator spent about 14% of the proxy's CPU on that
// under load (see benches/README.md), mimalloc much less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "clawgate",
    version,
    about = "mTLS credential broker and tool-call proxy for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent listener.
    Serve(Box<ServeArgs>),
    /// A whole first run in a temporary directory: certificates, policy, an echo upstream, real calls.
    Demo {
        /// Keep clawgate and the echo upstream running after the scripted calls.
        #[arg(long)]
        keep: bool,
    },
    /// Development certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The decision log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print what an agent's environment needs to use clawgate as its HTTPS_PROXY.
    Env {
        /// The agent (its certificate is `agents/NAME.pem` in the certificate directory).
        #[arg(long)]
        agent: String,
        /// The certificate directory.
        #[arg(long, default_value = "./certs")]
        certs: PathBuf,
        /// The proxy URL the agent uses.
        #[arg(long, default_value = "https://localhost:8443")]
        proxy: String,
        /// The system CA bundle to include (found in the usual places when not given).
        #[arg(long)]
        system_roots: Option<PathBuf>,
    },
    /// Sentinel placeholders.
    #[command(subcommand)]
    Sentinel(SentinelCommand),
    /// Run tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign a run token with the key `certs init` created; prints the JWT.
    Issue {
        /// The agent's name in policy.
        #[arg(long)]
        agent: String,
        /// How long it lives (at most 24h).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Only these scopes (comma-separated); every scope of the agent when absent.
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// The run id (a random one when absent).
        #[arg(long)]
        run: Option<String>,
        /// The certificate directory holding `token-key.pem`.
        #[arg(long, default_value = "./certs")]
        certs: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SentinelCommand {
    /// Print a fresh random placeholder and the policy entry to bind it.
    New {
        /// The sentinel's name in policy.
        name: String,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The policy directory.
    #[arg(long, default_value = "./policy")]
    policy: PathBuf,
    /// The certificate directory (ca.pem, server.pem, server-key.pem).
    #[arg(long, default_value = "./certs")]
    certs: PathBuf,
    /// The decision log database.
    #[arg(long, default_value = "./clawgate-audit.db")]
    audit: PathBuf,
    /// Where agents connect.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// A PEM certificate revocation list for agent certificates.
    #[arg(long)]
    crl: Option<PathBuf>,
    /// Limit on connecting to an upstream.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Limit on a whole upstream exchange, response body included.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    upstream_timeout: Duration,
    /// At shutdown, how long in-flight calls may finish before they are ended.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// The endpoint for every AWS service the broker calls (moto, LocalStack);
    /// `AWS_ENDPOINT_URL` works too.
    #[arg(long)]
    aws_endpoint_url: Option<String>,
    /// A loopback address for credential vending by token (plain HTTP, for
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`).
    #[arg(long)]
    vend_listen: Option<SocketAddr>,
    /// How many bytes of a request body are scanned for sentinel placeholders.
    #[arg(long, default_value_t = 1024 * 1024)]
    sentinel_scan_limit: usize,
    /// Pin a name to an address, `NAME=ADDR` (repeatable), consulted before
    /// DNS. The egress address check still applies.
    #[arg(long, value_parser = parse_pin)]
    resolve: Vec<(String, std::net::IpAddr)>,
    /// BENCHMARK ONLY, hidden: record nothing, so the load harness can show
    /// what the durable decision log costs. Never for serving agents.
    #[arg(long, hide = true)]
    benchmark_only_decision_log_off: bool,
    /// Where the admin and auditor API listens (mTLS with the agent CA), or `off`.
    #[arg(long, default_value = "127.0.0.1:9443", value_parser = parse_listen)]
    admin_listen: Listen,
    /// Do not reload the policy when its files change (SIGHUP and the admin
    /// API still reload it).
    #[arg(long)]
    no_watch: bool,
    /// How far ahead a policy exception may expire (at most 7 days).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    max_exception: Duration,
    /// A TLS listener (no client certificate) taking a run token as the
    /// password of `Proxy-Authorization: Basic`.
    #[arg(long)]
    token_listen: Option<SocketAddr>,
    /// An external issuer's public keys for run tokens (a JWKS file).
    #[arg(long, requires = "token_issuer")]
    token_jwks: Option<PathBuf>,
    /// The `iss` of the external issuer's tokens.
    #[arg(long, requires = "token_jwks")]
    token_issuer: Option<String>,
}

fn parse_pin(text: &str) -> Result<(String, std::net::IpAddr), String> {
    let (name, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` must be NAME=ADDR"))?;
    let name = clawgate::egress::normalise_host(name).map_err(|e| e.to_string())?;
    let addr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    Ok((name.to_string(), addr))
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy)]
struct Listen(Option<SocketAddr>);

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text == "off" {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("`{text}` must be HOST:PORT or `off`"))
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create the CA, the server certificate and the interception CA.
    Init {
        /// The certificate directory.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// Extra subject alternative names for the server certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate for an agent.
    Agent {
        /// The agent's name.
        name: String,
        /// The certificate directory.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = certs::DEFAULT_AGENT_DAYS)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory: exit 0 with a summary, or 1 with every problem.
    Check {
        /// The policy directory.
        #[arg(default_value = "./policy")]
        dir: PathBuf,
        /// How far ahead an exception may expire.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        max_exception: Duration,
    },
    /// Ask a running clawgate's admin API: exit 0 in sync, 2 drifted, 1 on error.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The admin API.
    #[arg(long, default_value = "https://localhost:9443")]
    admin: String,
    /// The CA that signed clawgate's server certificate.
    #[arg(long, default_value = "./certs/ca.pem")]
    ca: PathBuf,
    /// An admin or auditor certificate.
    #[arg(long)]
    cert: PathBuf,
    /// Its key.
    #[arg(long)]
    key: PathBuf,
    /// Print the JSON the API answered instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DecisionArg {
    Allow,
    Deny,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print records, oldest first.
    Query {
        /// The decision log database.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Only allowed or denied calls.
        #[arg(long)]
        decision: Option<DecisionArg>,
        /// Only this reason code.
        #[arg(long)]
        reason: Option<String>,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Only report-mode calls that enforce mode would have refused.
        #[arg(long)]
        would_deny: bool,
        /// From this time: RFC 3339, or a duration back from now (15m, 24h).
        #[arg(long)]
        since: Option<String>,
        /// Before this time: RFC 3339, or a duration back from now.
        #[arg(long)]
        until: Option<String>,
        /// At most this many records (the most recent).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Walk the hash chain: exit 0 when intact, 1 naming the first bad record.
    Verify {
        /// The decision log database.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
        /// A head recorded earlier by `audit head`, as `SEQ:HASH`; the record
        /// must still be there with that hash (catches a cut tail).
        #[arg(long, value_parser = parse_anchor)]
        anchor: Vec<audit::Head>,
    },
    /// Print the last record's position and hash, to anchor elsewhere.
    Head {
        /// The decision log database.
        #[arg(long, default_value = "./clawgate-audit.db")]
        audit: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let config = ServeConfig {
                policy_dir: args.policy,
                certs_dir: args.certs,
                audit_path: args.audit,
                listen: args.listen,
                crl: args.crl,
                timeouts: Timeouts {
                    connect: args.connect_timeout,
                    total: args.upstream_timeout,
                },
                drain: args.drain_timeout,
                broker: BrokerConfig {
                    endpoint_url: args.aws_endpoint_url,
                },
                vend_listen: args.vend_listen,
                limits: BodyLimits {
                    sentinel_scan: args.sentinel_scan_limit,
                    ..BodyLimits::default()
                },
                resolve: args.resolve,
                decision_log_off_benchmark_only: args.benchmark_only_decision_log_off,
                admin_listen: args.admin_listen.0,
                watch_policy: !args.no_watch,
                max_exception: checked_max_exception(args.max_exception)?,
                token_listen: args.token_listen,
                token_jwks: args.token_jwks.zip(args.token_issuer),
            };
            runtime()?.block_on(async {
                let running = serve::start(&config, std::sync::Arc::new(process_env)).await?;
                if let Some(vend) = running.vend_addr {
                    println!("clawgate: vending credentials on http://{vend}");
                }
                if let Some(admin) = running.admin_addr {
                    println!("clawgate: admin api on https://{admin}");
                }
                if let Some(token) = running.token_addr {
                    println!("clawgate: token proxy on https://{token}");
                }
                println!("clawgate: listening on {}", running.addr);
                wait_for_stop().await;
                tracing::info!("stopping: draining in-flight calls");
                running.shutdown().await;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Sentinel(SentinelCommand::New { name }) => {
            let placeholder = clawgate::credentials::sentinel::new_placeholder()
                .map_err(|_| anyhow::anyhow!("no randomness available"))?;
            println!("{placeholder}");
            eprintln!(
                "bind it in policy:\n\n[[sentinel]]\nname = \"{name}\"\nplaceholder = \"{placeholder}\"\nhosts = [\"api.example.com\"]\nenv = \"REAL_SECRET_ENV\"  # or file = \"...\", or secrets_manager = \"...\""
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Env {
            agent,
            certs,
            proxy,
            system_roots,
        } => {
            print!(
                "{}",
                clawgate::agent_env::agent_env(&clawgate::agent_env::EnvRequest {
                    agent: &agent,
                    certs_dir: &certs,
                    proxy: &proxy,
                    system_roots: system_roots.as_deref(),
                })?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Issue {
            agent,
            ttl,
            scopes,
            run,
            certs,
        }) => {
            let token = clawgate::token::issue(
                &certs,
                &agent,
                ttl,
                scopes,
                run,
                std::time::SystemTime::now(),
            )?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { keep } => {
            runtime()?.block_on(clawgate::demo::run(keep))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::Init { dir, sans, force }) => {
            for path in certs::init(&dir, &sans, force)? {
                println!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::Agent {
            name,
            dir,
            days,
            force,
        }) => {
            for path in certs::agent(&dir, &name, days, force)? {
                println!("wrote {}", path.display());
            }
            println!("identity: {}", certs::agent_spiffe_id(&name));
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Status(args)) => runtime()?.block_on(policy_status(&args)),
        Command::Policy(PolicyCommand::Check { dir, max_exception }) => {
            let options = LoadOptions {
                max_exception: checked_max_exception(max_exception)?,
                ..LoadOptions::new(&process_env)
            };
            match policy::load(&dir, &options) {
                Ok((policy, warnings)) => {
                    for warning in warnings {
                        eprintln!("warning: {warning}");
                    }
                    println!("ok: {}", policy.summary());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    for problem in &e.problems {
                        println!("{problem}");
                    }
                    eprintln!("policy check failed: {} problem(s)", e.problems.len());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Audit(AuditCommand::Query {
            audit: path,
            agent,
            scope,
            decision,
            reason,
            host,
            would_deny,
            since,
            until,
            limit,
            format,
        }) => {
            let filter = Filter {
                agent,
                scope,
                decision: decision.map(|d| match d {
                    DecisionArg::Allow => "allow".to_owned(),
                    DecisionArg::Deny => "deny".to_owned(),
                }),
                reason,
                host,
                would_deny,
                since: since.as_deref().map(parse_time).transpose()?,
                until: until.as_deref().map(parse_time).transpose()?,
                limit: Some(limit),
            };
            let records = audit::query(&path, &filter)?;
            let format = match format {
                OutputFormat::Table => Format::Table,
                OutputFormat::Json => Format::Json,
                OutputFormat::Csv => Format::Csv,
            };
            audit::render(&records, format, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify {
            audit: path,
            anchor,
        }) => match audit::verify(&path).and_then(|report| {
            anchor
                .iter()
                .try_for_each(|a| audit::check_anchor(&path, a))
                .map(|()| report)
        }) {
            Ok(report) => {
                println!(
                    "ok: {} records, chain intact, head {} {}",
                    report.count, report.head.seq, report.head.hash
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(VerifyError::Broken { seq, why }) => {
                println!("broken: record {seq}: {why}");
                Ok(ExitCode::FAILURE)
            }
            Err(VerifyError::Audit(e)) => Err(e.into()),
        },
        Command::Audit(AuditCommand::Head { audit: path }) => {
            let head = audit::head(&path)?;
            println!("{} {}", head.seq, head.hash);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `policy status`: 0 in sync, 2 drifted, 1 on any error.
async fn policy_status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let (status, body) = clawgate::admin::client::get(
        &args.admin,
        "/v1/policy/status",
        &args.ca,
        &args.cert,
        &args.key,
    )
    .await?;
    if status != 200 {
        anyhow::bail!(
            "admin api answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).context("admin api answered something that is not JSON")?;
    if args.json {
        println!("{v}");
    } else {
        print_status(&v);
    }
    Ok(if v["in_sync"].as_bool() == Some(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn print_status(v: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let left = |v: &serde_json::Value| {
        humantime::format_duration(Duration::from_secs(
            v["expires_in_seconds"].as_u64().unwrap_or(0),
        ))
        .to_string()
    };
    let in_sync = v["in_sync"].as_bool() == Some(true);
    println!("{}", if in_sync { "in sync" } else { "DRIFTED" });
    println!("in force: {}", s(&v["in_force"]));
    match v["on_disk"].as_str() {
        Some(d) => println!("on disk:  {d}"),
        None => println!("on disk:  unreadable: {}", s(&v["on_disk_error"])),
    }
    if v["valid"].as_bool() == Some(false) {
        println!("the files on disk do not validate; the last good policy stays in force:");
        println!("{}", s(&v["error"]));
    }
    let empty = Vec::new();
    let exceptions = v["exceptions"].as_array().unwrap_or(&empty);
    println!("exceptions active: {}", exceptions.len());
    for e in exceptions {
        println!(
            "  {}  agent {}  scopes {}  expires {} (in {})  approved by {}",
            s(&e["id"]),
            s(&e["agent"]),
            e["scopes"],
            s(&e["expires"]),
            left(e),
            s(&e["approved_by"])
        );
    }
    let soon = v["lapsing_within_24h"].as_array().unwrap_or(&empty);
    if !soon.is_empty() {
        let ids: Vec<String> = soon.iter().map(s).collect();
        println!("lapsing within 24h: {}", ids.join(", "));
    }
    let overrides = v["overrides"].as_array().unwrap_or(&empty);
    println!("overrides active: {}", overrides.len());
    for o in overrides {
        println!(
            "  {}  {} `{}`  expires {} (in {})  by {}: {}",
            s(&o["id"]),
            s(&o["kind"]),
            s(&o["target"]),
            s(&o["expires"]),
            left(o),
            s(&o["created_by"]),
            s(&o["reason"])
        );
    }
}

/// The configured exception maximum, refused past the 7-day ceiling.
fn checked_max_exception(max: Duration) -> anyhow::Result<Duration> {
    if max > policy::DEFAULT_MAX_EXCEPTION {
        anyhow::bail!("--max-exception may be at most 7d");
    }
    Ok(max)
}

/// `SEQ:HASH` as printed by `audit head` (a space is accepted too).
fn parse_anchor(text: &str) -> Result<audit::Head, String> {
    let (seq, hash) = text
        .split_once([':', ' '])
        .ok_or_else(|| format!("anchor `{text}` must be SEQ:HASH"))?;
    let seq = seq
        .trim()
        .parse()
        .map_err(|_| format!("anchor `{text}` must start with a record number"))?;
    let hash = hash.trim();
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("anchor `{text}` must end with a 64-digit hex hash"));
    }
    Ok(audit::Head {
        seq,
        hash: hash.to_ascii_lowercase(),
    })
}

/// RFC 3339, or a duration back from now, as the records' time format.
fn parse_time(text: &str) -> anyhow::Result<String> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(audit::format_ts(t));
    }
    let back = humantime::parse_duration(text).with_context(|| {
        format!("`{text}` is neither an RFC 3339 time nor a duration such as `15m`")
    })?;
    Ok(audit::format_ts(time::OffsetDateTime::now_utc() - back))
}

async fn wait_for_stop() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
