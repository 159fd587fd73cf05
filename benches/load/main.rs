//! The load harness: clawgate against nginx doing the same job, and against a
//! direct client-to-upstream TLS connection, measured in one run, in
//! alternation, and reported as ratios (the machines are shared and noisy).
//!
//! Run: `cargo bench --bench load` (see benches/README.md). Under
//! `cargo test --all-targets` it only compiles and says it was skipped.
//!
//! Settings (environment): `CLAWGATE_LOAD_SECONDS` (measured seconds per run,
//! default 5), `CLAWGATE_LOAD_ROUNDS` (rounds of alternation, default 3),
//! `CLAWGATE_LOAD_CONNECTIONS` (default 64), `CLAWGATE_LOAD_RATE` (the
//! open loop's fixed moderate rate, default 3000 requests a second).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark harness"
)]

mod client;
mod disk;
mod procs;
mod report;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use client::{Client, Target};
use procs::{Error, Server};
use report::{Measured, Phase, Report};

/// Set when this executable is started as the upstream.
const ROLE_ENV: &str = "CLAWGATE_LOAD_ROLE";
const CERTS_ENV: &str = "CLAWGATE_LOAD_CERTS";
/// The credential clawgate and nginx inject (it is not a real secret).
const TOKEN: &str = "load-harness-token";
const AGENT: &str = "bench";
const WARMUP: Duration = Duration::from_secs(1);
/// Syncs in each probe of the disk (about half a second each).
const DISK_SYNCS: usize = 2000;

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("upstream") {
        let certs = PathBuf::from(std::env::var(CERTS_ENV).unwrap_or_default());
        if let Err(e) = upstream::run(&certs, TOKEN) {
            eprintln!("upstream: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` does not.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load harness: skipped (run it with `cargo bench --bench load`)");
        return;
    }
    if let Err(e) = run() {
        eprintln!("load harness failed: {e}");
        std::process::exit(1);
    }
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Targets {
    upstream: Server,
    clawgate: Server,
    clawgate_off: Server,
    /// clawgate with the reflection guard off (`reflection = "off"`), the
    /// log durable: the guard's cost, in the same run.
    clawgate_guard_off: Server,
    nginx: Server,
}

fn run() -> Result<(), Error> {
    let seconds = Duration::from_secs(setting("CLAWGATE_LOAD_SECONDS", 5));
    let rounds = setting("CLAWGATE_LOAD_ROUNDS", 3) as usize;
    let connections = setting("CLAWGATE_LOAD_CONNECTIONS", 64) as usize;
    let fixed_rate = setting("CLAWGATE_LOAD_RATE", 3000) as f64;
    // Another build of clawgate may be measured against this one's, one
    // run after the other (`CLAWGATE_LOAD_BIN`).
    let bin = std::env::var_os("CLAWGATE_LOAD_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_clawgate")),
        PathBuf::from,
    );
    if cfg!(debug_assertions) {
        eprintln!("warning: not an optimised build; figures mean little");
    }
    // On the target disk, not a tmpfs, so the durable log's fsync is real.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("load");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let certs = dir.join("certs");
    clawgate(&bin, &["certs", "init", "--dir", path(&certs)])?;
    clawgate(&bin, &["certs", "agent", AGENT, "--dir", path(&certs)])?;

    let nginx_bin = procs::nginx_binary()?;
    let targets = start_all(&bin, &nginx_bin, &dir, &certs)?;
    let idle = [
        ("clawgate", targets.clawgate.memory_mib("VmRSS")),
        ("clawgate-log-off", targets.clawgate_off.memory_mib("VmRSS")),
        (
            "clawgate-guard-off",
            targets.clawgate_guard_off.memory_mib("VmRSS"),
        ),
        ("nginx", targets.nginx.memory_mib("VmRSS")),
        ("direct", targets.upstream.memory_mib("VmRSS")),
    ];
    let list = [
        (
            target("clawgate", &targets.clawgate, "/bench/data", false),
            &targets.clawgate,
        ),
        (
            target(
                "clawgate-log-off",
                &targets.clawgate_off,
                "/bench/data",
                false,
            ),
            &targets.clawgate_off,
        ),
        (
            target(
                "clawgate-guard-off",
                &targets.clawgate_guard_off,
                "/bench/data",
                false,
            ),
            &targets.clawgate_guard_off,
        ),
        (
            target("nginx", &targets.nginx, "/bench/data", false),
            &targets.nginx,
        ),
        // Direct: the upstream itself is what is under test.
        (
            target("direct", &targets.upstream, "/data", true),
            &targets.upstream,
        ),
    ];
    let client = Client::new(&certs, AGENT)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = Report::new(rounds, connections, seconds);
    // Before the proxies are loaded, and again after, on the log's disk.
    report.disk.push(disk::probe(&dir, DISK_SYNCS)?);
    for (name, mib) in idle {
        report.idle_rss_mib.insert(name, mib);
    }

    // A, B, A, B …: each round runs every target, in an order that rotates.
    let order = |round: usize| {
        let mut order: Vec<usize> = (0..list.len()).collect();
        order.rotate_left(round % list.len());
        order
    };
    eprintln!("== closed loop, {connections} connections, keep-alive");
    for round in 0..rounds {
        for i in order(round) {
            let (target, server) = &list[i];
            let cpu = || server.cpu_seconds();
            let closed = runtime.block_on(client::closed(
                &client,
                target,
                connections,
                false,
                WARMUP,
                seconds,
                &cpu,
            ));
            eprintln!(
                "   round {round} {:>16}: {:>8.0} req/s, {} errors",
                target.name,
                closed.rate(),
                closed.errors
            );
            report.push(Measured::KeepAlive(target.name, closed));
        }
    }
    // A fixed moderate rate (the issue's CPU and latency targets), then half
    // nginx's maximum and half clawgate's own, so that latency is also seen
    // where each proxy is at the same fraction of its ceiling.
    for (phase, rate) in [
        (Phase::Fixed, fixed_rate),
        (Phase::HalfNginx, report.median_rate("nginx", false) / 2.0),
        (
            Phase::HalfClawgate,
            report.median_rate("clawgate", false) / 2.0,
        ),
    ] {
        eprintln!("== open loop at {rate:.0} req/s ({})", phase.describe());
        for round in 0..rounds {
            for i in order(round) {
                let (target, server) = &list[i];
                let cpu = || server.cpu_seconds();
                let open = runtime.block_on(client::open(
                    &client,
                    target,
                    connections,
                    rate,
                    WARMUP,
                    seconds,
                    &cpu,
                ))?;
                eprintln!(
                    "   round {round} {:>16}: p50 {:.2} ms, p99 {:.2} ms, {:.2} CPU s per 10k, {} errors",
                    target.name,
                    client::quantile_ms(&open.latencies_us, 0.50),
                    client::quantile_ms(&open.latencies_us, 0.99),
                    open.cpu_per_10k(),
                    open.errors
                );
                report.push(Measured::Open(target.name, phase, open));
            }
        }
    }
    eprintln!("== closed loop, a new TLS connection per request");
    for round in 0..rounds {
        for i in order(round) {
            let (target, server) = &list[i];
            let cpu = || server.cpu_seconds();
            let closed = runtime.block_on(client::closed(
                &client,
                target,
                connections,
                true,
                WARMUP,
                seconds,
                &cpu,
            ));
            eprintln!(
                "   round {round} {:>16}: {:>8.0} req/s, {} errors",
                target.name,
                closed.rate(),
                closed.errors
            );
            report.push(Measured::Handshake(target.name, closed));
        }
    }
    for (target, server) in &list {
        report
            .peak_rss_mib
            .insert(target.name, server.memory_mib("VmHWM"));
    }
    let Targets {
        upstream,
        clawgate: durable,
        clawgate_off,
        clawgate_guard_off,
        nginx,
    } = targets;
    durable.stop();
    clawgate_off.stop();
    clawgate_guard_off.stop();
    nginx.stop();
    upstream.stop();
    report.disk.push(disk::probe(&dir, DISK_SYNCS)?);
    // The durable log really holds the run: its chain verifies.
    let verify = Command::new(&bin)
        .args(["audit", "verify", "--audit", path(&dir.join("audit.db"))])
        .output()?;
    report.audit_verify = String::from_utf8_lossy(&verify.stdout).trim().to_owned();
    if !verify.status.success() {
        return Err(format!("the decision log does not verify: {}", report.audit_verify).into());
    }

    let markdown = report.markdown();
    println!("{markdown}");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(&dir)
        .to_path_buf();
    std::fs::write(out.join("load-report.md"), &markdown)?;
    std::fs::write(
        out.join("load-report.json"),
        serde_json::to_string_pretty(&report.json())?,
    )?;
    eprintln!("written: target/load-report.md and target/load-report.json");
    Ok(())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn target(name: &'static str, server: &Server, path: &str, direct: bool) -> Target {
    Target {
        name,
        port: server.port,
        path: path.to_owned(),
        authorization: direct.then(|| format!("Bearer {TOKEN}")),
    }
}

fn clawgate(bin: &Path, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(bin).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "clawgate {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn start_all(bin: &Path, nginx_bin: &Path, dir: &Path, certs: &Path) -> Result<Targets, Error> {
    let mut command = Command::new(std::env::current_exe()?);
    command.env(ROLE_ENV, "upstream").env(CERTS_ENV, certs);
    let (child, port) = procs::start_and_wait("upstream", command, dir, "")?;
    let upstream_port: u16 = port.parse()?;
    let upstream = procs::server(child, upstream_port, false);

    let policy = dir.join("policy");
    let policy_guard_off = dir.join("policy-guard-off");
    let text = format!(
        r#"[[agent]]
name = "{AGENT}"
identities = ["spiffe://clawgate.local/agent/{AGENT}"]
scopes = ["bench"]

[[scope]]
name = "bench"
upstream = "https://localhost:{upstream_port}"
route = "bench"
ca_file = "{ca}"
allow_private = ["localhost"]

[scope.credential]
kind = "secret"
env = "BENCH_TOKEN"
format = "Bearer {{}}"

[[scope.allow]]
methods = ["GET"]
paths = ["/data"]
"#,
        ca = certs.join("ca.pem").display()
    );
    std::fs::create_dir_all(&policy)?;
    std::fs::write(policy.join("bench.toml"), &text)?;
    // The same scope with the reflection guard off: everything else equal.
    std::fs::create_dir_all(&policy_guard_off)?;
    std::fs::write(
        policy_guard_off.join("bench.toml"),
        text.replace(
            "route = \"bench\"\n",
            "route = \"bench\"\nreflection = \"off\"\n",
        ),
    )?;
    let start_clawgate =
        |name: &'static str, audit: &str, off: bool, policy: &Path| -> Result<Server, Error> {
            let mut command = Command::new(bin);
            command
                .args(["serve", "--listen", "127.0.0.1:0"])
                .args(["--policy", path(policy), "--certs", path(certs)])
                .args(["--audit", path(&dir.join(audit))])
                .env("BENCH_TOKEN", TOKEN);
            // Two clawgates run side by side: neither needs the admin API, and
            // its default port can be held only once.
            command.args(["--admin-listen", "off", "--no-watch"]);
            if off {
                command.arg("--benchmark-only-decision-log-off");
            }
            // More serve flags for both clawgates (`--shards 1`).
            if let Ok(extra) = std::env::var("CLAWGATE_LOAD_SERVE_ARGS") {
                command.args(extra.split_whitespace());
            }
            let (child, addr) =
                procs::start_and_wait(name, command, dir, "clawgate: listening on ")?;
            let port = addr.rsplit(':').next().unwrap_or_default().parse()?;
            Ok(procs::server(child, port, false))
        };
    let clawgate = start_clawgate("clawgate", "audit.db", false, &policy)?;
    let clawgate_off = start_clawgate("clawgate-log-off", "audit-off.db", true, &policy)?;
    let clawgate_guard_off = start_clawgate(
        "clawgate-guard-off",
        "audit-guard-off.db",
        false,
        &policy_guard_off,
    )?;

    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let nginx_port = procs::free_port()?;
    std::fs::write(
        nginx_dir.join("nginx.conf"),
        procs::nginx_config(&nginx_dir, certs, nginx_port, upstream_port, TOKEN),
    )?;
    let mut child = Command::new(nginx_bin)
        .arg("-p")
        .arg(&nginx_dir)
        .arg("-c")
        .arg(nginx_dir.join("nginx.conf"))
        .args(["-e", "stderr"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("nginx.out"))?)
        .stderr(std::fs::File::create(dir.join("nginx.err"))?)
        .spawn()?;
    procs::wait_for_port(nginx_port, &mut child, "nginx")?;
    let nginx = procs::server(child, nginx_port, true);
    // Give the processes a moment to settle before idle memory is read.
    std::thread::sleep(Duration::from_millis(500));
    Ok(Targets {
        upstream,
        clawgate,
        clawgate_off,
        clawgate_guard_off,
        nginx,
    })
}
