//! The per-call cost of governance: a rate-limit check, the override lookup
//! (none in force, and ten that do not match), counting the call for
//! `/metrics`, and verifying a run token (ES256), against a baseline of
//! cloning an agent name (which every call pays anyway), all in one run.
//!
//! Run: `cargo bench --bench governance`. Read the ratios, not the absolute
//! times: these machines are shared and noisy.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};

use clawgate::admin::metrics::Metrics;
use clawgate::limits::{Limits, Rate};
use clawgate::overrides::{NewOverride, Overrides, Targets};

/// A policy that defines nothing: every override in the bench is forced.
struct NoTargets;

impl Targets for NoTargets {
    fn has_agent(&self, _: &str) -> bool {
        false
    }

    fn has_scope(&self, _: &str) -> bool {
        false
    }

    fn has_proxy_key(&self, _: &str) -> bool {
        false
    }
}
use clawgate::token::{self, Verifier};

fn governance(c: &mut Criterion) {
    let mut group = c.benchmark_group("governance");
    group.bench_function("baseline: clone the agent name", |b| {
        let name = String::from("research");
        b.iter(|| black_box(name.clone()));
    });

    let limits = Limits::default();
    // High enough that the benchmark never runs out of budget.
    let rate = Some(Rate::parse("1000000000/sec", None).unwrap());
    group.bench_function("rate limit check (agent and scope)", |b| {
        b.iter(|| limits.check(black_box("research"), rate, black_box("echo"), rate));
    });

    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides::open(&dir.path().join("o.db")).unwrap();
    let now = SystemTime::now();
    group.bench_function("override lookup, none in force", |b| {
        b.iter(|| overrides.refusing(Some(black_box("research")), Some("1f"), Some("echo"), now));
    });
    for i in 0..10 {
        overrides
            .create(
                &NewOverride {
                    kind: "isolate-agent".into(),
                    target: format!("other-{i}"),
                    reason: "bench".into(),
                    expires_in: "1h".into(),
                    force: true,
                },
                "bench",
                now,
                &NoTargets,
            )
            .unwrap();
    }
    group.bench_function("override lookup, ten in force", |b| {
        b.iter(|| overrides.refusing(Some(black_box("research")), Some("1f"), Some("echo"), now));
    });

    let metrics = Metrics::default();
    group.bench_function("count the call for /metrics", |b| {
        b.iter(|| metrics.call("allow", "allowed", Some(black_box("echo"))));
    });

    let certs = tempfile::tempdir().unwrap();
    let (key, public) = clawgate::certs::token_key_pair().unwrap();
    std::fs::write(certs.path().join("token-key.pem"), key).unwrap();
    std::fs::write(certs.path().join("token-pub.pem"), public).unwrap();
    let jwt = token::issue(
        certs.path(),
        "research",
        Duration::from_secs(600),
        None,
        None,
        now,
    )
    .unwrap();
    let verifier = Verifier::load(certs.path(), None).unwrap();
    group.bench_function("verify a run token (ES256)", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(&jwt), Some("research"), now)
                .unwrap()
        });
    });
    group.finish();
}

criterion_group!(benches, governance);
criterion_main!(benches);
