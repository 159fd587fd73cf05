//! `decide()` over a generated policy of 10,000 rules across 1,000 scopes,
//! against a baseline of the same calls over a policy of 10 rules in 1 scope,
//! measured in the same run. The ratio shows whether the cost depends on the
//! size of the policy (it should not: lookup is by index, not a scan).
//!
//! Run: `cargo bench --bench decide`. `cargo test --benches` runs each
//! benchmark once so the bench cannot rot.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::fmt::Write;
use std::hint::black_box;

use clawgate::identity::PeerName;
use clawgate::policy::{Call, LoadOptions, Policy, Target, decide, load};
use criterion::{Criterion, criterion_group, criterion_main};

const RULES_PER_SCOPE: usize = 10;

/// `scopes` scopes of 10 rules each, shared out to agents of 10 scopes each.
fn generate(scopes: usize) -> Policy {
    generate_with(scopes, "")
}

/// As [`generate`], each scope with `extra` (a line of scope settings).
fn generate_with(scopes: usize, extra: &str) -> Policy {
    let mut text = String::new();
    for agent in 0..scopes.div_ceil(10) {
        let names: Vec<String> = (agent * 10..((agent + 1) * 10).min(scopes))
            .map(|s| format!("\"s{s}\""))
            .collect();
        writeln!(
            text,
            "[[agent]]\nname = \"a{agent}\"\nidentities = [\"spiffe://clawgate.local/agent/a{agent}\"]\nscopes = [{}]\n",
            names.join(", ")
        )
        .unwrap();
    }
    for s in 0..scopes {
        writeln!(
            text,
            "[[scope]]\nname = \"s{s}\"\nupstream = \"https://svc{s}.example.com\"\nroute = \"r{s}\"\n{extra}"
        )
        .unwrap();
        for j in 0..RULES_PER_SCOPE {
            if j % 5 == 0 {
                writeln!(text, "[[scope.deny]]\npaths = [\"/v1/admin{j}/**\"]").unwrap();
            } else {
                let method = if j % 2 == 0 { "GET" } else { "POST" };
                writeln!(
                    text,
                    "[[scope.allow]]\nmethods = [\"{method}\", \"HEAD\"]\npaths = [\"/v1/items{j}\", \"/v1/items{j}/**\", \"/v1/{{a,b}}/x{j}/*.json\"]"
                )
                .unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("generated.toml"), text).unwrap();
    let (policy, _) = load(dir.path(), &LoadOptions::new(&|_| None)).unwrap();
    assert_eq!(policy.rule_count(), scopes * RULES_PER_SCOPE);
    policy
}

struct OwnedCall {
    peer: Vec<PeerName>,
    route: String,
    method: &'static str,
    path: String,
}

/// A fixed, varied mix of calls: allowed, denied by rule, no matching rule,
/// other agents' scopes, unknown agents.
fn calls(scopes: usize) -> Vec<OwnedCall> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    (0..4096)
        .map(|_| {
            let scope = next(scopes);
            let agent = if next(20) == 0 { 999_999 } else { scope / 10 };
            let j = next(RULES_PER_SCOPE);
            let path = match next(4) {
                0 => format!("/v1/items{j}/42/details"),
                1 => format!("/v1/admin{j}/users"),
                2 => format!("/v1/a/x{j}/report.json"),
                _ => format!("/v1/nothing/{j}"),
            };
            OwnedCall {
                peer: vec![PeerName::Uri(format!(
                    "spiffe://clawgate.local/agent/a{agent}"
                ))],
                route: format!(
                    "r{}",
                    if next(10) == 0 {
                        (scope + 10) % scopes
                    } else {
                        scope
                    }
                ),
                method: ["GET", "POST", "HEAD", "DELETE"][next(4)],
                path,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for (name, scopes) in [("baseline-10-rules", 1), ("10k-rules-1k-scopes", 1000)] {
        let policy = generate(scopes);
        let calls = calls(scopes);
        bench_calls(&mut group, name, &policy, &calls);
    }
    group.finish();
}

/// The path checks' cost at 10,000 rules, in one run: `lenient` skips the
/// hazard scan (what `decide` did before it), `strict` is the default,
/// `case-folded` also lowercases the path. Half the calls carry non-ASCII
/// (a fullwidth letter), which is the hazard scan's slow path.
fn bench_path_checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_path_checks");
    let mut calls = calls(1000);
    for (n, call) in calls.iter_mut().enumerate() {
        if n % 2 == 0 {
            call.path.push_str("/caf\u{e9}-\u{ff41}");
        }
    }
    for (name, extra) in [
        ("lenient", "path_strictness = \"lenient\""),
        ("strict", ""),
        ("case-folded", "case_insensitive_paths = true"),
    ] {
        let policy = generate_with(1000, extra);
        bench_calls(&mut group, name, &policy, &calls);
    }
    group.finish();
}

fn bench_calls(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    policy: &Policy,
    calls: &[OwnedCall],
) {
    let mut i = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            let call = &calls[i % calls.len()];
            i += 1;
            black_box(decide(
                black_box(&Call {
                    peer: &call.peer,
                    target: Target::Route(&call.route),
                    method: call.method,
                    path: &call.path,
                    aws: None,
                    mcp: None,
                    now: std::time::SystemTime::UNIX_EPOCH,
                }),
                policy,
            ))
        });
    });
}

criterion_group!(benches, bench, bench_path_checks);
criterion_main!(benches);
