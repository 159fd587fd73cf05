//! `policy replay` on a real SQLite log: records a second re-decided under a
//! candidate policy, streamed (one row at a time), against the baseline of
//! the same log only read (`read-only`), measured in the same run. One
//! thread, so the figure is per core. The issue's target: 200,000/s.
//!
//! Run: `cargo bench --bench replay`. `cargo test --benches` runs each once.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::time::Duration;

use clawgate::audit::{AuditLog, DecisionRecord, for_each_decision, kind};
use clawgate::policy::{LoadOptions, load};
use clawgate::replay::{Replay, Select};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: u64 = 100_000;

const POLICY: &str = r#"
[[agent]]
name = "research"
identities = ["spiffe://clawgate.local/agent/research"]
scopes = ["github"]

[[agent]]
name = "builder"
identities = ["spiffe://clawgate.local/agent/builder"]
scopes = ["github"]

[[scope]]
name = "github"
upstream = "https://api.example.com"
route = "github"

[[scope.allow]]
id = "read"
methods = ["GET"]
paths = ["/repos/*/*/issues", "/repos/*/*/issues/**"]

[[scope.deny]]
id = "no-admin"
paths = ["/repos/*/*/admin/**"]
"#;

/// A real call's decision record: allowed reads, refused admin calls,
/// writes no rule allows.
fn record(i: u64) -> DecisionRecord {
    let mut r = DecisionRecord::new(kind::DECISION, &format!("0193a1ff-90aa-7bcd-8e01-{i:012x}"));
    let (method, path, rule, reason) = match i % 4 {
        0 | 1 => (
            "GET",
            format!("/repos/acme/w{}/issues/{i}", i % 50),
            Some("read"),
            "allowed",
        ),
        2 => (
            "GET",
            "/repos/acme/widgets/admin/keys".to_owned(),
            Some("no-admin"),
            "denied-by-rule",
        ),
        _ => (
            "POST",
            "/repos/acme/widgets/issues".to_owned(),
            None,
            "no-matching-rule",
        ),
    };
    r.mode = Some("gateway".into());
    r.agent = Some(
        if i.is_multiple_of(3) {
            "builder"
        } else {
            "research"
        }
        .into(),
    );
    r.cert_fp = Some("9f".repeat(32));
    r.client_addr = Some("127.0.0.1:51234".into());
    r.method = Some(method.into());
    r.host = Some("api.example.com".into());
    r.path = Some(path);
    r.scope = Some("github".into());
    r.rule = rule.map(Into::into);
    r.decision = Some(if reason == "allowed" { "allow" } else { "deny" }.into());
    r.reason = reason.into();
    r.credential_kind = Some("secret".into());
    r.credential_ref = Some("env:GITHUB_TOKEN".into());
    r.policy_digest = Some("ab".repeat(32));
    r
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let db = dir.path().join("replay.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (log, writer) = AuditLog::open(&db).unwrap();
    runtime.block_on(async {
        for i in 0..RECORDS {
            if i % 4096 == 4095 {
                log.append_durable(record(i)).await.unwrap();
            } else {
                log.append(record(i));
            }
        }
        log.append_durable(record(RECORDS)).await.unwrap();
    });
    drop(log);
    writer.shutdown();
    // The candidate allows POST to issues: a quarter of the calls flip.
    let candidate_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        candidate_dir.path().join("p.toml"),
        POLICY.replace("methods = [\"GET\"]", "methods = [\"GET\", \"POST\"]"),
    )
    .unwrap();
    let (candidate, _) = load(candidate_dir.path(), &LoadOptions::new(&|_| None)).unwrap();

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(RECORDS + 1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("read-only", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for_each_decision(&db, None, |r| n += r.seq.unsigned_abs() & 1).unwrap();
            n
        });
    });
    group.bench_function("re-decided", |b| {
        b.iter(|| {
            let mut replay = Replay::new(&candidate, Select::default());
            for_each_decision(&db, None, |r| replay.feed(&r)).unwrap();
            assert!(replay.summary.flipped > 0);
            replay.summary.re_decided
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
