//! The fleet's scale model, measured on one machine (see benches/README.md):
//! the decision log's writers on PostgreSQL, 1 to 8 of them at once, each
//! on its own chain (the contention curve, with statements and WAL bytes per
//! record and this process's CPU per record); PostgreSQL's own ceiling
//! (pgbench); Redis's ceiling for the rate limit script (redis-benchmark);
//! and what TLS to the stores costs: the same writers and the same limit
//! checks over TLS (verify-full, SCRAM / ACL password) and over plain TCP,
//! against the same servers in the same run.
//! Throwaway servers in temporary directories, as the fleet tests start.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark harness: a failed step should stop it loudly"
)]

#[path = "../tests/stores/mod.rs"]
mod stores;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clawgate::audit::postgres::PgTarget;
use clawgate::audit::{AuditLog, DecisionRecord, kind};
use stores::{Postgres, Redis};

/// Callers per writer, each waiting for its record's commit before the next.
const CALLERS: usize = 32;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15; after the `)` they are 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn record() -> DecisionRecord {
    let mut r = DecisionRecord::new(kind::DECISION, &uuid::Uuid::now_v7().to_string());
    r.mode = Some("gateway".into());
    r.agent = Some("research".into());
    r.cert_fp = Some("ab".repeat(32));
    r.client_addr = Some("127.0.0.1:50000".into());
    r.method = Some("GET".into());
    r.host = Some("api.example.com".into());
    r.path = Some("/v1/items/42".into());
    r.scope = Some("example".into());
    r.rule = Some("read".into());
    r.decision = Some("allow".into());
    r.reason = "allowed".into();
    r.credential_kind = Some("secret".into());
    r.credential_ref = Some("env:EXAMPLE_TOKEN".into());
    r.policy_digest = Some("cd".repeat(32));
    r
}

fn wal_bytes(pg: &Postgres) -> f64 {
    pg.psql(
        "postgres",
        "clawgate",
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')",
    )
    .parse()
    .unwrap()
}

struct Row {
    writers: usize,
    records_per_s: f64,
    mean_batch: f64,
    mean_commit_ms: f64,
    wal_per_record: f64,
    cpu_us_per_record: f64,
}

fn contention(pg: &Postgres, target: &PgTarget, writers: usize, seconds: Duration) -> Row {
    let logs: Vec<(AuditLog, clawgate::audit::WriterHandle)> = (0..writers)
        .map(|i| AuditLog::open_postgres(target, &format!("bench-{writers}-{i}")).unwrap())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let wal0 = wal_bytes(pg);
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for (log, _) in &logs {
            for _ in 0..CALLERS {
                let (log, stop) = (log.clone(), Arc::clone(&stop));
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        log.append_durable(record()).await.unwrap();
                    }
                }));
            }
        }
        tokio::time::sleep(seconds).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let wal = wal_bytes(pg) - wal0;
    let (mut records, mut batches, mut nanos) = (0u64, 0u64, 0u64);
    for (log, _) in &logs {
        let s = log.stats();
        records += s.records;
        batches += s.batches;
        nanos += s.commit_nanos;
    }
    for (_, handle) in logs {
        handle.shutdown();
    }
    let records_f = records.max(1) as f64;
    Row {
        writers,
        records_per_s: records as f64 / elapsed,
        mean_batch: records_f / batches.max(1) as f64,
        mean_commit_ms: nanos as f64 / 1e6 / batches.max(1) as f64,
        wal_per_record: wal / records_f,
        cpu_us_per_record: cpu * 1e6 / records_f,
    }
}

fn pgbench(pg: &Postgres) -> String {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin/pgbench"))
        .find(|p| p.exists())
        .expect("pgbench");
    let host = pg.socket().display().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .args(["-h", &host, "-U", "postgres", "-p", &pg.port.to_string()])
            .args(args)
            .arg("clawgate")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["-i", "-q", "-s", "4"]);
    let out = run(&["-N", "-c", "8", "-j", "2", "-T", "8"]);
    out.lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("tps = ?")
        .to_owned()
}

fn redis_benchmark(redis: &Redis) -> String {
    let sha = redis.cli(&["SCRIPT", "LOAD", clawgate::limits::redis::GCRA]);
    let out = Command::new("redis-benchmark")
        .args(["--tls", "--cacert"])
        .arg(&redis.secrets.ca)
        .args(["-h", "localhost", "-p"])
        .arg(redis.port.to_string())
        .args(["--user", "clawgate", "-a", stores::PASSWORD])
        .args(["-n", "200000", "-c", "32", "-q", "EVALSHA", &sha, "2"])
        .args([
            "clawgate:{__rand_int__}:agent",
            "clawgate:{__rand_int__}:scope:s",
        ])
        .args(["1000", "1000000", "1000", "1000000", "0"])
        .args(["-r", "100000"])
        .output()
        .expect("redis-benchmark (Debian's redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.rsplit('\r')
        .find(|l| l.contains("requests per second"))
        .unwrap_or(&text)
        .trim()
        .to_owned()
}

/// Limit checks a second through [`RedisLimits`], 32 callers on random
/// agents, over `flags`' connection.
fn limit_checks(flags: &[String], seconds: Duration) -> f64 {
    use clawgate::limits::redis::{FailureMode, RedisConfig, RedisLimits};
    use clawgate::limits::redis_conn::{self, RedisAuth};
    let target: clawgate::limits::RedisTarget = flags[1].parse().unwrap();
    let flag = |name: &str| {
        flags
            .iter()
            .position(|f| f == name)
            .map(|i| std::path::PathBuf::from(&flags[i + 1]))
    };
    let auth = RedisAuth {
        ca: flag("--limits-ca"),
        client: None,
        password: Some(secrecy::SecretString::from(stores::PASSWORD.to_owned())),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let limits = Arc::new(RedisLimits::new(RedisConfig {
            client: redis_conn::client(&target, &auth).unwrap(),
            target,
            timeout: Duration::from_secs(2),
            failure_mode: FailureMode::Closed,
            replica: "bench".into(),
        }));
        let rate = Some(clawgate::limits::Rate::parse("1000000/sec", None).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..CALLERS {
            let (limits, stop, done) = (Arc::clone(&limits), Arc::clone(&stop), Arc::clone(&done));
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let agent = format!("a{t}-{}", i % 1000);
                    limits.check(&agent, rate, "s", rate).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
        tokio::time::sleep(seconds).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    })
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet scale model: skipped (run it with `cargo bench --bench fleet`)");
        return;
    }
    let seconds = Duration::from_secs(
        std::env::var("CLAWGATE_FLEET_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    // Plain TCP admitted beside TLS, only so that the baseline can be
    // measured against the same servers.
    let pg = Postgres::start_with(true);
    let redis = Redis::start_with(true);
    let target: PgTarget = pg.url().parse().unwrap();
    let plain: PgTarget = pg.url_plain().parse().unwrap();
    assert!(target.tls() && !plain.tls());
    let mut report = String::from(
        "| writers | records/s (all) | records/s per writer | mean batch | mean commit, ms | statements per record | WAL bytes per record | clawgate CPU µs per record |\n|---|---|---|---|---|---|---|---|\n",
    );
    for writers in 1..=8 {
        let r = contention(&pg, &target, writers, seconds);
        let line = format!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.2} | {:.3} | {:.0} | {:.1} |\n",
            r.writers,
            r.records_per_s,
            r.records_per_s / r.writers as f64,
            r.mean_batch,
            r.mean_commit_ms,
            1.0 / r.mean_batch,
            r.wal_per_record,
            r.cpu_us_per_record,
        );
        print!("{line}");
        report.push_str(&line);
    }
    report.push_str(
        "\nTLS on vs off, same servers, same run:\n\n| writers | records/s, TLS | records/s, plain | TLS ÷ plain |\n|---|---|---|---|\n",
    );
    for writers in [1, 4, 8] {
        let tls = contention(&pg, &target, writers, seconds).records_per_s;
        let off = contention(&pg, &plain, writers, seconds).records_per_s;
        let line = format!("| {writers} | {tls:.0} | {off:.0} | {:.2} |\n", tls / off);
        print!("{line}");
        report.push_str(&line);
    }
    let tls = limit_checks(&redis.args(), seconds);
    let off = limit_checks(&redis.args_plain(), seconds);
    let line = format!(
        "\nRedis limit checks/s through RedisLimits (32 callers): TLS {tls:.0}, plain {off:.0}, TLS ÷ plain {:.2}\n",
        tls / off
    );
    print!("{line}");
    report.push_str(&line);
    let pg_ceiling = pgbench(&pg);
    let redis_ceiling = redis_benchmark(&redis);
    report.push_str(&format!(
        "\npgbench -N (8 clients, scale 4): {pg_ceiling}\nredis-benchmark EVALSHA of the GCRA script (32 clients, random agents): {redis_ceiling}\n"
    ));
    println!("pgbench -N: {pg_ceiling}");
    println!("redis-benchmark EVALSHA: {redis_ceiling}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fleet-report.md");
    std::fs::write(&out, report).unwrap();
    println!("written to {}", out.display());
}
