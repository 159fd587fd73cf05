//! The decision log's writer on its own: records a second with durable
//! commits (`synchronous=FULL`, one fsync per batch), with the batch size and
//! the commit latency that group commit reached.
//!
//! - `durable-64-callers`: 64 tasks each append a record and wait for its
//!   commit before the next, as 64 in-flight calls do.
//! - `queued-then-flushed`: records appended without waiting (as outcome
//!   records are), then one durable append, so the writer's own ceiling shows.
//!
//! The database lives under the target directory, on the same disk as a real
//! log would (not a tmpfs, where fsync costs nothing).
//!
//! Run: `cargo bench --bench audit`. `cargo test --benches` runs each once.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clawgate::audit::{AuditLog, DecisionRecord, WriterStats, kind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

// The allocator clawgate's binary runs with, so that the records' allocations
// cost what they cost in the proxy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CALLERS: u64 = 64;

/// A record as large as a real allowed call's decision record.
fn record(i: u64) -> DecisionRecord {
    let mut r = DecisionRecord::new(kind::DECISION, &format!("0193a1ff-90aa-7bcd-8e01-{i:012x}"));
    r.mode = Some("gateway".into());
    r.agent = Some("research".into());
    r.cert_fp = Some("9f".repeat(32));
    r.client_addr = Some("127.0.0.1:51234".into());
    r.method = Some("GET".into());
    r.host = Some("api.example.com".into());
    r.path = Some("/repos/acme/widgets/issues".into());
    r.scope = Some("github".into());
    r.rule = Some("github/allow/0".into());
    r.decision = Some("allow".into());
    r.reason = "allowed".into();
    r.credential_kind = Some("secret".into());
    r.credential_ref = Some("env:GITHUB_TOKEN".into());
    r.policy_digest = Some("ab".repeat(32));
    r
}

/// CPU time (user plus system) used so far by the whole process and by the
/// writer thread, in seconds, from `/proc` (clock ticks of 1/100 s). The
/// machine may be shared: CPU per record is what compares across runs, wall
/// time is not.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    process: f64,
    writer: f64,
}

fn cpu() -> Cpu {
    fn ticks(stat: &str) -> Option<f64> {
        // The fields after the command name, which may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / 100.0)
    }
    let read = |path: &std::path::Path| std::fs::read_to_string(path).ok();
    let process = read("/proc/self/stat".as_ref()).and_then(|s| ticks(&s));
    let writer = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .find(|task| read(&task.path().join("comm")).as_deref() == Some("clawgate-audit\n"))
        .and_then(|task| read(&task.path().join("stat")))
        .and_then(|s| ticks(&s));
    Cpu {
        process: process.unwrap_or(0.0),
        writer: writer.unwrap_or(0.0),
    }
}

fn report(name: &str, before: (WriterStats, Cpu), after: (WriterStats, Cpu), elapsed: Duration) {
    let ((before, cpu_before), (after, cpu_after)) = (before, after);
    let batches = after.batches - before.batches;
    let records = after.records - before.records;
    let nanos = after.commit_nanos - before.commit_nanos;
    if batches == 0 {
        return;
    }
    let per_record = |seconds: f64| seconds / records as f64 * 1e6;
    println!(
        "{name}: {:.0} records/s over {:.1} s; {batches} commits, mean batch {:.1} records, mean commit {:.2} ms (slowest since start {:.1} ms); CPU per record {:.2} µs (process), {:.2} µs (writer thread)",
        records as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        records as f64 / batches as f64,
        nanos as f64 / batches as f64 / 1e6,
        after.max_commit_nanos as f64 / 1e6,
        per_record(cpu_after.process - cpu_before.process),
        per_record(cpu_after.writer - cpu_before.writer),
    );
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (log, writer) = AuditLog::open(&dir.path().join("bench.db")).unwrap();
    let mut group = c.benchmark_group("audit-writer");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    let (before, started) = ((log.stats(), cpu()), Instant::now());
    group.bench_function("durable-64-callers", |b| {
        b.iter_custom(|iters| {
            let per_caller = iters.div_ceil(CALLERS);
            runtime.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..CALLERS)
                    .map(|caller| {
                        let log = log.clone();
                        tokio::spawn(async move {
                            for i in 0..per_caller {
                                log.append_durable(record(caller << 32 | i)).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                // Per record, whatever rounding up to whole callers added.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_caller * CALLERS) as f64)
            })
        });
    });
    report(
        "durable-64-callers",
        before,
        (log.stats(), cpu()),
        started.elapsed(),
    );

    let (before, started) = ((log.stats(), cpu()), Instant::now());
    let log = Arc::new(log);
    group.bench_function("queued-then-flushed", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for i in 0..iters.saturating_sub(1) {
                    log.append(record(i));
                    if i % 32_768 == 32_767 {
                        // Stay under the writer's queue bound.
                        log.append_durable(record(i)).await.unwrap();
                    }
                }
                log.append_durable(record(iters)).await.unwrap();
                start.elapsed()
            })
        });
    });
    report(
        "queued-then-flushed",
        before,
        (log.stats(), cpu()),
        started.elapsed(),
    );
    group.finish();
    assert_eq!(log.dropped_records(), 0);
    drop(log);
    writer.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);
