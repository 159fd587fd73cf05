//! Counters and histograms for `/metrics`, rendered in the Prometheus text
//! exposition format (version 0.0.4).
//!
//! Label values are policy names and reason codes only: never paths, hosts
//! an agent made up, or anything secret, so the series count stays bounded
//! by the policy.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of every latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Which latency a histogram measures.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// `decide()`.
    Decide,
    /// Fetching or minting the scope's credential.
    Credential,
    /// The upstream exchange, until response headers.
    Upstream,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// One atomic add for the bucket (not one per bucket the value falls
    /// under: the render sums them), one for the count, one for the sum.
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|bound| secs <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut n = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            n += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Responses in which the reflection guard found an injected value, by
/// (scope, `redacted` or `refused`).
pub type ReflectionCounts = Mutex<BTreeMap<(String, &'static str), u64>>;

/// Calls by (decision, reason code), then by scope name.
type CallCounts = HashMap<(&'static str, &'static str), HashMap<String, u64>>;

/// What clawgate counts while it runs.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Calls by (decision, reason), then by scope: counting a call
    /// allocates nothing once its scope has been seen.
    calls: Mutex<CallCounts>,
    decide: Histogram,
    credential: Histogram,
    upstream: Histogram,
    reloads_ok: AtomicU64,
    reloads_rejected: AtomicU64,
    tls_rejections: AtomicU64,
    reflections: std::sync::Arc<ReflectionCounts>,
    /// Approvals answered (or expired): by outcome, (count, seconds from
    /// request to decision in all).
    approvals: Mutex<BTreeMap<&'static str, (u64, f64)>>,
}

/// Values read from elsewhere at render time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// The digest of the policy in force.
    pub policy_digest: String,
    /// Whether the last load of the files validated.
    pub policy_valid: bool,
    /// Credential cache: hits, misses, fetches (secrets and STS together).
    pub cache_hits: u64,
    /// See `cache_hits`.
    pub cache_misses: u64,
    /// See `cache_hits`.
    pub cache_fetches: u64,
    /// Records the decision log could not keep.
    pub audit_dropped: u64,
    /// Whether the decision log is writable.
    pub audit_healthy: bool,
    /// What the last scheduled walk of the chain found, once one finished.
    pub audit_chain: Option<crate::audit::health::ChainState>,
    /// Overrides in force.
    pub overrides_active: u64,
    /// Decision log batches: (records in the last batch, commits, seconds
    /// spent committing in all), when the writer reports them.
    pub audit_batches: Option<(u64, u64, f64)>,
    /// The shared rate limit store, when limits are on Redis.
    pub limits_store: Option<crate::limits::redis::RedisStats>,
    /// Whether runtime behaviour differs from the policy files (see
    /// `/v1/policy/status`).
    pub policy_drifted: bool,
    /// Seconds until the next override or exception in force lapses.
    pub next_lapse_seconds: Option<u64>,
    /// Per credential kind (`secret`, `aws`, `oauth2`): cache hits and
    /// mints (fetches, successful or not).
    pub credential_kinds: Vec<(&'static str, u64, u64)>,
    /// The span exporter's counts, when traces are exported.
    pub trace_spans: Option<std::sync::Arc<crate::trace::SpanCounts>>,
    /// Approval requests waiting for an answer.
    pub approvals_pending: u64,
    /// Calls held open waiting for approval.
    pub approvals_held: u64,
}

impl Metrics {
    /// Counts one call by decision, reason and scope (`none` when no scope
    /// was reached).
    pub fn call(&self, decision: &'static str, reason: &'static str, scope: Option<&str>) {
        let scope = scope.unwrap_or("none");
        if let Ok(mut calls) = self.calls.lock() {
            let by_scope = calls.entry((decision, reason)).or_default();
            match by_scope.get_mut(scope) {
                Some(n) => *n += 1,
                None => {
                    by_scope.insert(scope.to_owned(), 1);
                }
            }
        }
    }

    /// The counts of the reflection guard, which calls' outcomes add to.
    pub fn reflections(&self) -> std::sync::Arc<ReflectionCounts> {
        std::sync::Arc::clone(&self.reflections)
    }

    /// Counts one rejected TLS handshake (every one, recorded or not).
    pub fn tls_rejected(&self) {
        self.tls_rejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a stage took.
    pub fn observe(&self, stage: Stage, d: Duration) {
        match stage {
            Stage::Decide => self.decide.observe(d),
            Stage::Credential => self.credential.observe(d),
            Stage::Upstream => self.upstream.observe(d),
        }
    }

    /// Counts a policy load (`ok`) or a refused one.
    pub fn reload(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The whole exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        self.render_calls(&mut out);
        self.render_counters(&mut out, gauges);
        render_audit(&mut out, gauges);
        if let Some(store) = gauges.limits_store {
            render_limits_store(&mut out, store);
        }
        render_policy(&mut out, gauges);
        if let Some(spans) = &gauges.trace_spans {
            render_spans(&mut out, spans);
        }
        self.render_approvals(&mut out, gauges);
        out
    }

    /// Counts an approval's answer (`granted`, `denied`) or expiry, with the
    /// time from its request.
    pub fn approval_decided(&self, outcome: &'static str, times: &crate::approvals::Times) {
        let waited = times
            .decided
            .unwrap_or_else(std::time::SystemTime::now)
            .duration_since(times.requested)
            .unwrap_or_default()
            .as_secs_f64();
        if let Ok(mut approvals) = self.approvals.lock() {
            let entry = approvals.entry(outcome).or_default();
            entry.0 += 1;
            entry.1 += waited;
        }
    }

    fn render_approvals(&self, out: &mut String, gauges: &Gauges) {
        let _ = writeln!(
            out,
            "# HELP clawgate_approvals_pending Approval requests waiting for an answer.\n# TYPE clawgate_approvals_pending gauge\nclawgate_approvals_pending {}",
            gauges.approvals_pending
        );
        let _ = writeln!(
            out,
            "# HELP clawgate_approvals_held Calls held open waiting for approval.\n# TYPE clawgate_approvals_held gauge\nclawgate_approvals_held {}",
            gauges.approvals_held
        );
        out.push_str("# HELP clawgate_approval_decision_seconds Time from an approval request to its answer or expiry.\n# TYPE clawgate_approval_decision_seconds summary\n");
        if let Ok(approvals) = self.approvals.lock() {
            for (outcome, (count, seconds)) in approvals.iter() {
                let _ = writeln!(
                    out,
                    "clawgate_approval_decision_seconds_sum{{outcome=\"{outcome}\"}} {seconds}\nclawgate_approval_decision_seconds_count{{outcome=\"{outcome}\"}} {count}"
                );
            }
        }
    }

    /// Responses the reflection guard acted on.
    fn render_reflections(&self, out: &mut String) {
        out.push_str(
            "# HELP clawgate_credential_reflected_total Responses that carried an injected value, by scope and action.\n",
        );
        out.push_str("# TYPE clawgate_credential_reflected_total counter\n");
        if let Ok(counts) = self.reflections.lock() {
            for ((scope, action), n) in counts.iter() {
                let _ = writeln!(
                    out,
                    "clawgate_credential_reflected_total{{scope=\"{}\",action=\"{action}\"}} {n}",
                    escape(scope)
                );
            }
        }
    }

    /// Calls by decision, and the stages' histograms.
    fn render_calls(&self, out: &mut String) {
        out.push_str("# HELP clawgate_calls_total Calls by decision, reason and scope.\n");
        out.push_str("# TYPE clawgate_calls_total counter\n");
        // Sorted, so that the exposition is stable between scrapes.
        let calls: BTreeMap<(&str, &str, String), u64> = match self.calls.lock() {
            Ok(calls) => calls
                .iter()
                .flat_map(|(&(decision, reason), by_scope)| {
                    by_scope
                        .iter()
                        .map(move |(scope, n)| ((decision, reason, scope.clone()), *n))
                })
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        for ((decision, reason, scope), n) in &calls {
            let _ = writeln!(
                out,
                "clawgate_calls_total{{decision=\"{}\",reason=\"{}\",scope=\"{}\"}} {n}",
                escape(decision),
                escape(reason),
                escape(scope)
            );
        }
        self.render_reflections(out);
        self.decide
            .render(out, "clawgate_decide_seconds", "Time spent in decide().");
        self.credential.render(
            out,
            "clawgate_credential_seconds",
            "Time spent getting a scope's credential.",
        );
        self.upstream.render(
            out,
            "clawgate_upstream_seconds",
            "Time from sending upstream to response headers.",
        );
    }

    /// The credential cache, TLS rejections and policy loads.
    fn render_counters(&self, out: &mut String, gauges: &Gauges) {
        counter(
            out,
            "clawgate_credential_cache_hits_total",
            "Credential cache hits.",
            gauges.cache_hits,
        );
        counter(
            out,
            "clawgate_credential_cache_misses_total",
            "Credential cache misses.",
            gauges.cache_misses,
        );
        counter(
            out,
            "clawgate_credential_mints_total",
            "Credentials fetched or minted (Secrets Manager, STS, OAuth).",
            gauges.cache_fetches,
        );
        let _ = writeln!(
            out,
            "# HELP clawgate_credential_kind_cache_hits_total Credential cache hits by kind.\n# TYPE clawgate_credential_kind_cache_hits_total counter"
        );
        for (kind, hits, _) in &gauges.credential_kinds {
            let _ = writeln!(
                out,
                "clawgate_credential_kind_cache_hits_total{{kind=\"{kind}\"}} {hits}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP clawgate_credential_kind_mints_total Credentials fetched or minted by kind, failed attempts included.\n# TYPE clawgate_credential_kind_mints_total counter"
        );
        for (kind, _, mints) in &gauges.credential_kinds {
            let _ = writeln!(
                out,
                "clawgate_credential_kind_mints_total{{kind=\"{kind}\"}} {mints}"
            );
        }
        counter(
            out,
            "clawgate_tls_rejections_total",
            "TLS handshakes rejected (no, expired, revoked or foreign certificate), every one, including those past the per-source record cap.",
            self.tls_rejections.load(Ordering::Relaxed),
        );
        counter(
            out,
            "clawgate_policy_loads_total",
            "Policy loads put in force, the one at start included.",
            self.reloads_ok.load(Ordering::Relaxed),
        );
        counter(
            out,
            "clawgate_policy_rejections_total",
            "Policy loads refused because the files did not validate.",
            self.reloads_rejected.load(Ordering::Relaxed),
        );
    }
}

/// The decision log's health and group commits.
fn render_audit(out: &mut String, gauges: &Gauges) {
    counter(
        out,
        "clawgate_audit_dropped_records_total",
        "Records the decision log could not keep.",
        gauges.audit_dropped,
    );
    if let Some((last, commits, seconds)) = gauges.audit_batches {
        gauge(
            out,
            "clawgate_audit_last_batch_records",
            "Records in the last group commit.",
            last as f64,
        );
        counter(
            out,
            "clawgate_audit_commits_total",
            "Group commits of the decision log.",
            commits,
        );
        let _ = writeln!(
            out,
            "# HELP clawgate_audit_commit_seconds_total Time spent committing.\n# TYPE clawgate_audit_commit_seconds_total counter\nclawgate_audit_commit_seconds_total {seconds}"
        );
    }
    gauge(
        out,
        "clawgate_audit_healthy",
        "1 when the decision log can be written.",
        f64::from(u8::from(gauges.audit_healthy)),
    );
    render_chain(out, gauges.audit_chain);
}

/// The chain's health. Before the first walk has finished the families
/// are declared without a sample (unknown is not intact); the first broken
/// record's seq is 0 while the chain is intact.
fn render_chain(out: &mut String, chain: Option<crate::audit::health::ChainState>) {
    use crate::audit::health::ChainState;
    let families = [
        (
            "clawgate_audit_chain_intact",
            "1 when the last walk of the decision log's chain verified every record, 0 on a break.",
            chain.map(|s| f64::from(u8::from(s == ChainState::Intact))),
        ),
        (
            "clawgate_audit_chain_first_broken_seq",
            "The first record of the decision log that does not verify (0 when intact).",
            chain.map(|s| match s {
                ChainState::Intact => 0.0,
                // Seqs stay far below 2^53: exact as a float.
                #[expect(clippy::cast_precision_loss, reason = "seqs stay below 2^53")]
                ChainState::Broken(seq) => seq as f64,
            }),
        ),
    ];
    for (name, help, value) in families {
        match value {
            Some(v) => gauge(out, name, help, v),
            None => {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            }
        }
    }
}

/// The shared rate limit store (Redis).
fn render_limits_store(out: &mut String, store: crate::limits::redis::RedisStats) {
    gauge(
        out,
        "clawgate_limits_store_up",
        "1 when the shared rate limit store (Redis) answers; 0 while the failure mode decides.",
        f64::from(u8::from(store.up)),
    );
    counter(
        out,
        "clawgate_limits_store_failures_total",
        "Round trips to the rate limit store that failed or timed out.",
        store.failures,
    );
    counter(
        out,
        "clawgate_limits_fallback_total",
        "Calls decided by the failure mode instead of the rate limit store.",
        store.fallbacks,
    );
    counter(
        out,
        "clawgate_limits_cached_refusals_total",
        "Rate limit refusals answered from the local cache.",
        store.cached_refusals,
    );
    gauge(
        out,
        "clawgate_limits_replicas",
        "Live replicas sharing the rate limits, as last seen.",
        f64::from(store.replicas),
    );
}

/// The policy's validity, drift, lapses, overrides and digest.
fn render_policy(out: &mut String, gauges: &Gauges) {
    gauge(
        out,
        "clawgate_policy_valid",
        "1 when the policy files on disk validated at the last load.",
        f64::from(u8::from(gauges.policy_valid)),
    );
    gauge(
        out,
        "clawgate_policy_drifted",
        "1 when runtime behaviour differs from the policy files (edited and not loaded, refused, or an override in force).",
        f64::from(u8::from(gauges.policy_drifted)),
    );
    if let Some(left) = gauges.next_lapse_seconds {
        gauge(
            out,
            "clawgate_next_lapse_seconds",
            "Seconds until the next override or policy exception in force lapses (absent when none is).",
            left as f64,
        );
    }
    gauge(
        out,
        "clawgate_overrides_active",
        "Runtime overrides in force.",
        gauges.overrides_active as f64,
    );
    out.push_str("# HELP clawgate_policy_info The policy in force.\n");
    out.push_str("# TYPE clawgate_policy_info gauge\n");
    let _ = writeln!(
        out,
        "clawgate_policy_info{{digest=\"{}\"}} 1",
        escape(&gauges.policy_digest)
    );
}

fn render_spans(out: &mut String, spans: &crate::trace::SpanCounts) {
    counter(
        out,
        "clawgate_trace_spans_exported_total",
        "Call spans the OTLP collector accepted.",
        spans.exported.load(Ordering::Relaxed),
    );
    counter(
        out,
        "clawgate_trace_spans_dropped_total",
        "Call spans dropped because the export queue was full (the calls went on).",
        spans.dropped.load(Ordering::Relaxed),
    );
    counter(
        out,
        "clawgate_trace_spans_failed_total",
        "Call spans lost because an export request failed or timed out.",
        spans.failed.load(Ordering::Relaxed),
    );
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_render_cumulative_from_one_add_per_observation() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5)); // le 0.00001
        h.observe(Duration::from_micros(300)); // le 0.0005
        h.observe(Duration::from_secs(9)); // above every bound
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.00001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn calls_are_counted_by_decision_reason_and_scope_in_sorted_order() {
        let m = Metrics::default();
        m.call("allow", "allowed", Some("github"));
        m.call("allow", "allowed", Some("github"));
        m.call("deny", "no-matching-rule", None);
        m.call("allow", "allowed", Some("aws \"s3\""));
        let out = m.render(&Gauges::default());
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("clawgate_calls_total{"))
            .collect();
        assert_eq!(
            lines,
            [
                "clawgate_calls_total{decision=\"allow\",reason=\"allowed\",scope=\"aws \\\"s3\\\"\"} 1",
                "clawgate_calls_total{decision=\"allow\",reason=\"allowed\",scope=\"github\"} 2",
                "clawgate_calls_total{decision=\"deny\",reason=\"no-matching-rule\",scope=\"none\"} 1",
            ]
        );
    }
}
