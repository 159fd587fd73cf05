//! The `clawgate` command line: serve, demo, certs, token, policy, audit, sentinel.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use time::format_description::well_known::Rfc3339;

use clawgate::audit;

mod approvals_cmd;
mod audit_cmd;
mod certs_cmd;
mod cli;
mod ops;
mod pins_cmd;
mod policy_cmd;
use clawgate::credentials::BrokerConfig;
use clawgate::forward::Timeouts;
use clawgate::pipeline::BodyLimits;
use clawgate::policy::{self, LoadOptions};
use clawgate::serve::{self, ServeConfig};
use cli::*;

// Records and request heads are built on the runtime's threads and freed on
// the writer's; glibc's allocator spent about 14% of the proxy's CPU on that
// under load (see benches/README.md), mimalloc much less. Built without
// transparent huge pages (`no_thp`): with them its first arena came up as
// huge pages, about 9 MiB of the idle RSS (28 MiB then, 19 MiB without).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A usage error exits 1, not clap's 2: `policy status` keeps 2 for
    // "drifted", so a typo in a script never reads as drift.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::from(e.use_stderr()));
        }
    };
    // Colour only for a person at a terminal: a file or a journal gets
    // plain text, not escape codes.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
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
        Command::Serve(args) => serve_command(*args),
        Command::Mcp(McpCommand::Pins {
            action: Some(action),
            ..
        }) => runtime()?.block_on(pins_cmd::run(action)),
        Command::Mcp(McpCommand::Pins {
            action: None,
            url,
            headers,
            ca_file,
        }) => {
            let Some(url) = url else {
                anyhow::bail!(
                    "`clawgate mcp pins` needs `list`, `accept`, `forget`, or a server's URL"
                );
            };
            let hashes = runtime()?.block_on(clawgate::mcp::fetch::tool_hashes(
                &url,
                &headers,
                ca_file.as_deref(),
            ))?;
            print!("{}", clawgate::mcp::fetch::pins_table(&url, &hashes));
            Ok(ExitCode::SUCCESS)
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
        Command::Lockdown(args) => lockdown(args),
        Command::Env(args) => {
            print!("{}", agent_env(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::ProxyKey(command) => proxy_key(command),
        Command::Token(command) => token(command),
        Command::Demo { keep } => {
            runtime()?.block_on(clawgate::demo::run(keep))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(command) => certs_cmd::run(command),
        Command::Policy(PolicyCommand::Status(args)) => runtime()?.block_on(policy_status(&args)),
        Command::Policy(PolicyCommand::Check { dir, max_exception }) => {
            policy_check(&dir, max_exception)
        }
        Command::Policy(PolicyCommand::Test { dir }) => policy_cmd::test(&dir),
        Command::Policy(PolicyCommand::Explain(args)) => policy_cmd::explain(&args),
        Command::Policy(PolicyCommand::Diff { old, new, json }) => {
            policy_cmd::diff(&old, &new, json)
        }
        Command::Policy(PolicyCommand::Replay(args)) => policy_cmd::replay(&args),
        Command::Console(args) => ops::console(args),
        Command::Audit(command) => audit_cmd::run(command),
        Command::Approvals(command) => runtime()?.block_on(approvals_cmd::run(command)),
    }
}

/// `lockdown`: the nftables rules that keep agents from bypassing clawgate.
fn lockdown(args: LockdownArgs) -> anyhow::Result<ExitCode> {
    let mut subjects: Vec<_> = args
        .uid
        .iter()
        .map(|&uid| clawgate::lockdown::Subject::Uid(uid))
        .collect();
    for user in &args.user {
        subjects.push(clawgate::lockdown::Subject::Uid(uid_of(user)?));
    }
    subjects.extend(
        args.cgroup
            .iter()
            .cloned()
            .map(clawgate::lockdown::Subject::Cgroup),
    );
    print!(
        "{}",
        clawgate::lockdown::rules(&clawgate::lockdown::Lockdown {
            subjects,
            proxies: args.proxy,
            dns: args.dns,
            loopback_ports: args.allow_loopback_port,
        })?
    );
    Ok(ExitCode::SUCCESS)
}

/// `proxy-key new`.
fn proxy_key(command: ProxyKeyCommand) -> anyhow::Result<ExitCode> {
    let ProxyKeyCommand::New {
        agent,
        id,
        certs,
        force,
    } = command;
    let id = id.unwrap_or_else(|| {
        let today = time::OffsetDateTime::now_utc().date();
        format!(
            "{agent}-{:04}{:02}{:02}",
            today.year(),
            u8::from(today.month()),
            today.day()
        )
    });
    let (path, entry) = clawgate::token::proxy_key::write_new(&certs, &agent, &id, force)?;
    eprintln!("wrote {}; admit it in policy:", path.display());
    print!("{entry}");
    Ok(ExitCode::SUCCESS)
}

/// `token issue`.
fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::Issue {
        agent,
        ttl,
        scopes,
        run,
        certs,
        policy: policy_dir,
    } = command;
    match &policy_dir {
        Some(dir) => {
            let options = LoadOptions::new(&process_env);
            let (policy, _) = policy::load(dir, &options).map_err(|e| {
                anyhow::anyhow!("policy `{}` does not validate:\n{e}", dir.display())
            })?;
            for warning in clawgate::token::check_against(&policy, &agent, scopes.as_deref())? {
                eprintln!("warning: {warning}");
            }
        }
        None => eprintln!(
            "warning: agent `{agent}` and the scopes are not checked against a policy; pass --policy DIR to refuse names it does not define"
        ),
    }
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

/// `policy check`: validates a policy directory, printing every problem.
fn policy_check(dir: &std::path::Path, max_exception: Duration) -> anyhow::Result<ExitCode> {
    let options = LoadOptions {
        max_exception: checked_max_exception(max_exception)?,
        ..LoadOptions::new(&process_env)
    };
    match policy::load(dir, &options) {
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

/// `serve`: runs until SIGTERM or Ctrl-C, then drains.
fn serve_command(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = serve_config(args)?;
    // Calls run on the shards' threads; this runtime keeps the admin API,
    // vending, reloads, metrics and the stores' tasks, which one thread
    // serves.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async {
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

/// `--anchor-every`/`--anchor-key`/`--anchor-dir`, the key loaded and the
/// directory made now so a bad one stops `serve` before it listens.
fn anchor_config(
    every: Option<std::time::Duration>,
    key: Option<std::path::PathBuf>,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<serve::AnchorConfig>> {
    let (Some(every), Some(key), Some(dir)) = (every, key, dir) else {
        return Ok(None);
    };
    let key = clawgate::audit::anchor::load_key(&key)?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("anchor directory {}: {e}", dir.display()))?;
    Ok(Some(serve::AnchorConfig {
        dir,
        key: std::sync::Arc::new(key),
        every,
    }))
}

/// The serve flags as the server's configuration.
fn serve_config(args: ServeArgs) -> anyhow::Result<ServeConfig> {
    let limits = args
        .limits
        .clone()
        .map(|text| {
            let target = text
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--limits: {e}"))?;
            redis_config(&args, target)
        })
        .transpose()?;
    Ok(ServeConfig {
        policy_dir: args.policy,
        certs_dir: args.certs,
        audit_path: args.audit,
        listen: args.listen,
        shards: args.shards,
        crl: args.crl,
        timeouts: Timeouts {
            connect: args.connect_timeout,
            total: args.upstream_timeout,
        },
        drain: args.drain_timeout,
        broker: BrokerConfig {
            endpoint_url: args.aws_endpoint_url,
            region: args.aws_region,
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
        retention: args.retain.map(|retain| clawgate::retention::Retention {
            retain,
            dir: args.archive_dir.clone().unwrap_or_default(),
            every: args.retain_every,
        }),
        chain_check_every: args.chain_check_every,
        anchors: anchor_config(args.anchor_every, args.anchor_key, args.anchor_dir)?,
        otlp_endpoint: args.otlp_endpoint,
        fleet: serve::FleetConfig {
            store: args.store.as_deref().map(cli::store).transpose()?,
            replica: args.replica.clone(),
            checkpoint_every: args.checkpoint_every,
            limits,
        },
    })
}

/// The fleet's Redis settings: the client (TLS, password) is built now, so
/// a bad file is an error at start, not at the first call.
fn redis_config(
    args: &ServeArgs,
    target: clawgate::limits::RedisTarget,
) -> anyhow::Result<clawgate::limits::redis::RedisConfig> {
    use clawgate::limits::redis_conn::{self, RedisAuth};
    let password = match &args.limits_password_file {
        Some(path) => Some(RedisAuth::read_password(path).map_err(anyhow::Error::msg)?),
        None => std::env::var(redis_conn::PASSWORD_ENV)
            .ok()
            .map(secrecy::SecretString::from),
    };
    let auth = RedisAuth {
        ca: args.limits_ca.clone(),
        client: args.limits_cert.clone().zip(args.limits_key.clone()),
        password,
    };
    let client = redis_conn::client(&target, &auth).map_err(anyhow::Error::msg)?;
    Ok(clawgate::limits::redis::RedisConfig {
        target,
        client,
        timeout: args.limits_timeout,
        failure_mode: args.limits_failure_mode,
        replica: args
            .replica
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
    })
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
    if in_sync {
        println!("in sync");
    } else {
        let why: Vec<String> = v["drift"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default();
        println!("DRIFTED: {}", why.join("; "));
    }
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

/// RFC 3339, or a duration back from now, as the records' time format.
pub(crate) fn parse_time(text: &str) -> anyhow::Result<String> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(audit::format_ts(t));
    }
    let back = humantime::parse_duration(text).with_context(|| {
        format!("`{text}` is neither an RFC 3339 time nor a duration such as `15m`")
    })?;
    Ok(audit::format_ts(time::OffsetDateTime::now_utc() - back))
}

pub(crate) async fn wait_for_stop() {
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

/// `clawgate env`: picks the form, reads or issues the credential, finds
/// the vended scope, then prints the block.
fn agent_env(args: &EnvArgs) -> anyhow::Result<String> {
    use clawgate::agent_env::{EnvCredential, EnvRequest, Vending};
    let key_file = args
        .proxy_key_file
        .clone()
        .unwrap_or_else(|| clawgate::token::proxy_key::key_path(&args.certs, &args.agent));
    let form = match args.form {
        EnvForm::Auto if key_file.exists() => EnvForm::ProxyKey,
        EnvForm::Auto => EnvForm::Certificate,
        form => form,
    };
    let (credential, proxy) = match form {
        EnvForm::ProxyKey => {
            let key = std::fs::read_to_string(&key_file).with_context(|| {
                format!(
                    "cannot read `{}`; run `clawgate proxy-key new --agent {}`",
                    key_file.display(),
                    args.agent
                )
            })?;
            (
                EnvCredential::ProxyKey(key.trim().to_owned().into()),
                &args.token_proxy,
            )
        }
        EnvForm::RunToken => {
            let token = clawgate::token::issue(
                &args.certs,
                &args.agent,
                args.ttl,
                None,
                None,
                std::time::SystemTime::now(),
            )?;
            (EnvCredential::RunToken(token.into()), &args.token_proxy)
        }
        EnvForm::Certificate | EnvForm::Auto => (EnvCredential::Certificate, &args.proxy),
    };
    let scope = match (&args.vend, &args.aws_scope) {
        (None, _) => None,
        (Some(_), Some(scope)) => Some(scope.clone()),
        (Some(_), None) => Some(vended_scope(&args.policy, &args.agent)?),
    };
    let vending = args
        .vend
        .as_deref()
        .zip(scope.as_deref())
        .map(|(url, scope)| Vending { url, scope });
    Ok(clawgate::agent_env::agent_env(&EnvRequest {
        agent: &args.agent,
        certs_dir: &args.certs,
        proxy,
        credential,
        vending,
        system_roots: args.system_roots.as_deref(),
    })?)
}

/// The agent's one scope with `vend = true`.
fn vended_scope(dir: &std::path::Path, agent: &str) -> anyhow::Result<String> {
    // Only the policy's shape is needed here: secrets need not be at hand.
    let any_value = |_: &str| Some("unused".to_owned());
    let (policy, _) = policy::load(dir, &LoadOptions::new(&any_value)).map_err(|e| {
        anyhow::anyhow!(
            "cannot read policy `{}` to find the vended scope (pass --aws-scope NAME): {e}",
            dir.display()
        )
    })?;
    let Some(id) = policy.agents().iter().position(|a| a.name == agent) else {
        anyhow::bail!("no agent `{agent}` in policy `{}`", dir.display());
    };
    let vended: Vec<&str> = policy
        .agent(id)
        .scopes
        .iter()
        .map(|&s| policy.scope(s))
        .filter(|s| s.aws().is_some_and(|a| a.vend))
        .map(|s| s.name.as_str())
        .collect();
    match vended.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => anyhow::bail!("agent `{agent}` has no scope with `vend = true`"),
        many => anyhow::bail!(
            "agent `{agent}` has several vended scopes ({}); pass --aws-scope NAME",
            many.join(", ")
        ),
    }
}

/// A user's numeric id from `/etc/passwd`.
fn uid_of(user: &str) -> anyhow::Result<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    passwd
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            (name == user).then_some(uid)
        })
        .next()
        .ok_or_else(|| anyhow::anyhow!("no user `{user}` in /etc/passwd; pass --uid N"))
}
