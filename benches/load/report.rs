//! Summaries, ratios, the Markdown table and the JSON copy.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::client::{Closed, Open, quantile_ms};

pub enum Measured {
    KeepAlive(&'static str, Closed),
    Open(&'static str, Phase, Open),
    Handshake(&'static str, Closed),
}

/// The open loop's rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// A fixed moderate rate (`CLAWGATE_LOAD_RATE`, 3,000 req/s).
    Fixed,
    /// Half nginx's maximum.
    HalfNginx,
    /// Half clawgate's own maximum.
    HalfClawgate,
}

const PHASES: [Phase; 3] = [Phase::Fixed, Phase::HalfNginx, Phase::HalfClawgate];

impl Phase {
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Fixed => "fixed moderate rate",
            Phase::HalfNginx => "half nginx's max",
            Phase::HalfClawgate => "half clawgate's max",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Phase::Fixed => "fixed_rate",
            Phase::HalfNginx => "half_nginx_max",
            Phase::HalfClawgate => "half_clawgate_max",
        }
    }
}

pub struct Report {
    rounds: usize,
    connections: usize,
    seconds: Duration,
    keepalive: BTreeMap<&'static str, Vec<Closed>>,
    open: BTreeMap<(Phase, &'static str), Vec<Open>>,
    handshake: BTreeMap<&'static str, Vec<Closed>>,
    pub idle_rss_mib: BTreeMap<&'static str, f64>,
    pub peak_rss_mib: BTreeMap<&'static str, f64>,
    pub audit_verify: String,
    /// The log's disk, probed before and after the runs.
    pub disk: Vec<crate::disk::SyncLatency>,
    machine: String,
    load_before: String,
}

const COLUMNS: [&str; 4] = ["clawgate", "clawgate-log-off", "nginx", "direct"];

/// One target's open-loop figures at one rate.
#[derive(Debug, Default, Clone, Copy)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    /// CPU seconds per 10k requests over the measured windows.
    cpu_per_10k: f64,
}

/// One target's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Summary {
    rate: f64,
    cpu_per_10k: f64,
    /// By phase, in the order of `PHASES`.
    open: [Latency; 3],
    handshake_rate: f64,
    handshake_cpu_per_10k: f64,
    peak_rss: f64,
    idle_rss: f64,
    errors: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn cpu_per_10k(runs: &[Closed]) -> f64 {
    let requests: u64 = runs.iter().map(|r| r.requests).sum();
    let cpu: f64 = runs.iter().map(|r| r.cpu_seconds).sum();
    cpu / requests.max(1) as f64 * 10_000.0
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Report {
    pub fn new(rounds: usize, connections: usize, seconds: Duration) -> Report {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        Report {
            rounds,
            connections,
            seconds,
            keepalive: BTreeMap::new(),
            open: BTreeMap::new(),
            handshake: BTreeMap::new(),
            idle_rss_mib: BTreeMap::new(),
            peak_rss_mib: BTreeMap::new(),
            audit_verify: String::new(),
            disk: Vec::new(),
            machine: format!(
                "{cores} cores ({cpu}), {memory_gib:.0} GiB, Linux {}",
                sh("uname", &["-r"])
            ),
            load_before: load_average(),
        }
    }

    pub fn push(&mut self, measured: Measured) {
        match measured {
            Measured::KeepAlive(name, c) => self.keepalive.entry(name).or_default().push(c),
            Measured::Open(name, phase, o) => self.open.entry((phase, name)).or_default().push(o),
            Measured::Handshake(name, c) => self.handshake.entry(name).or_default().push(c),
        }
    }

    pub fn median_rate(&self, name: &str, handshake: bool) -> f64 {
        let runs = if handshake {
            &self.handshake
        } else {
            &self.keepalive
        };
        median(
            runs.get(name)
                .map(|r| r.iter().map(Closed::rate).collect())
                .unwrap_or_default(),
        )
    }

    /// The median over rounds of `a`'s rate over `b`'s in the same round.
    fn rate_ratio(&self, a: &str, b: &str, handshake: bool) -> f64 {
        let runs = if handshake {
            &self.handshake
        } else {
            &self.keepalive
        };
        let (Some(a), Some(b)) = (runs.get(a), runs.get(b)) else {
            return f64::NAN;
        };
        median(a.iter().zip(b).map(|(a, b)| a.rate() / b.rate()).collect())
    }

    fn open_rate(&self, phase: Phase) -> f64 {
        self.open
            .iter()
            .filter(|((p, _), _)| *p == phase)
            .flat_map(|(_, runs)| runs)
            .map(|o| o.rate)
            .next()
            .unwrap_or(f64::NAN)
    }

    fn latency(&self, phase: Phase, name: &str) -> Latency {
        let runs = self
            .open
            .iter()
            .filter(|((p, n), _)| *p == phase && *n == name)
            .flat_map(|(_, runs)| runs);
        let mut latencies: Vec<u64> = runs
            .clone()
            .flat_map(|o| o.latencies_us.iter().copied())
            .collect();
        latencies.sort_unstable();
        let cpu: f64 = runs.map(|o| o.cpu_seconds).sum();
        Latency {
            p50: quantile_ms(&latencies, 0.50),
            p99: quantile_ms(&latencies, 0.99),
            p999: quantile_ms(&latencies, 0.999),
            cpu_per_10k: cpu / latencies.len().max(1) as f64 * 10_000.0,
        }
    }

    fn summary(&self, name: &str) -> Summary {
        let keepalive = self
            .keepalive
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let handshake = self
            .handshake
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let errors = keepalive
            .iter()
            .chain(handshake)
            .map(|c| c.errors)
            .sum::<u64>()
            + self
                .open
                .iter()
                .filter(|((_, n), _)| *n == name)
                .flat_map(|(_, runs)| runs)
                .map(|o| o.errors)
                .sum::<u64>();
        Summary {
            rate: self.median_rate(name, false),
            cpu_per_10k: cpu_per_10k(keepalive),
            open: PHASES.map(|phase| self.latency(phase, name)),
            handshake_rate: self.median_rate(name, true),
            handshake_cpu_per_10k: cpu_per_10k(handshake),
            peak_rss: self.peak_rss_mib.get(name).copied().unwrap_or(f64::NAN),
            idle_rss: self.idle_rss_mib.get(name).copied().unwrap_or(f64::NAN),
            errors,
        }
    }

    pub fn markdown(&self) -> String {
        let s: Vec<Summary> = COLUMNS.iter().map(|n| self.summary(n)).collect();
        let (cg, off, ng, di) = (s[0], s[1], s[2], s[3]);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Load harness, {} UTC. Machine: {}. Load average before the run: {} (shared machine: read the ratios).\n",
            sh("date", &["-u", "+%Y-%m-%d %H:%M"]),
            self.machine,
            self.load_before
        );
        let _ = writeln!(
            out,
            "{} rounds, targets in rotating order; {} s measured per run after 1 s of warm-up; {} connections. \
             Throughput ratios are medians of per-round ratios. `log off` is a benchmark-only setting.\n",
            self.rounds,
            self.seconds.as_secs(),
            self.connections
        );
        let _ = writeln!(
            out,
            "| | clawgate | clawgate, log off (bench only) | nginx | direct | clawgate ÷ nginx | clawgate ÷ direct | clawgate ÷ log off |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let row = |out: &mut String,
                   label: &str,
                   f: &dyn Fn(&Summary) -> f64,
                   digits: usize,
                   ratios: [f64; 3]| {
            let _ = writeln!(
                out,
                "| {label} | {:.digits$} | {:.digits$} | {:.digits$} | {:.digits$} | {:.2}× | {:.2}× | {:.2}× |",
                f(&cg),
                f(&off),
                f(&ng),
                f(&di),
                ratios[0],
                ratios[1],
                ratios[2]
            );
        };
        let by = |f: &dyn Fn(&Summary) -> f64| [f(&cg) / f(&ng), f(&cg) / f(&di), f(&cg) / f(&off)];
        row(
            &mut out,
            "max throughput, req/s (closed loop, keep-alive)",
            &|x| x.rate,
            0,
            [
                self.rate_ratio("clawgate", "nginx", false),
                self.rate_ratio("clawgate", "direct", false),
                self.rate_ratio("clawgate", "clawgate-log-off", false),
            ],
        );
        row(
            &mut out,
            "CPU s per 10k requests (keep-alive)",
            &|x| x.cpu_per_10k,
            2,
            by(&|x| x.cpu_per_10k),
        );
        for (i, phase) in PHASES.iter().enumerate() {
            let rate = self.open_rate(*phase);
            let at = format!("at {rate:.0} req/s = {} (open loop)", phase.describe());
            for (label, f) in [
                (
                    "latency p50, ms",
                    (|l: &Latency| l.p50) as fn(&Latency) -> f64,
                ),
                ("latency p99, ms", |l: &Latency| l.p99),
                ("latency p99.9, ms", |l: &Latency| l.p999),
                ("CPU s per 10k requests", |l: &Latency| l.cpu_per_10k),
            ] {
                let g = move |x: &Summary| f(&x.open[i]);
                row(&mut out, &format!("{label}, {at}"), &g, 2, by(&g));
            }
        }
        row(
            &mut out,
            "new TLS connection per request, req/s",
            &|x| x.handshake_rate,
            0,
            [
                self.rate_ratio("clawgate", "nginx", true),
                self.rate_ratio("clawgate", "direct", true),
                self.rate_ratio("clawgate", "clawgate-log-off", true),
            ],
        );
        row(
            &mut out,
            "CPU s per 10k requests (new connection each)",
            &|x| x.handshake_cpu_per_10k,
            2,
            by(&|x| x.handshake_cpu_per_10k),
        );
        row(
            &mut out,
            "peak RSS, MiB",
            &|x| x.peak_rss,
            1,
            by(&|x| x.peak_rss),
        );
        row(
            &mut out,
            "idle RSS, MiB",
            &|x| x.idle_rss,
            1,
            by(&|x| x.idle_rss),
        );
        let _ = writeln!(
            out,
            "| errors | {} | {} | {} | {} | | | |",
            cg.errors, off.errors, ng.errors, di.errors
        );
        let _ = writeln!(
            out,
            "\nCPU is that of the process under test from /proc (nginx: master and workers; direct: the upstream). \
             The direct upstream asks for no client certificate.\n"
        );
        let _ = writeln!(
            out,
            "Goals of the issue, each measured in this run (the moderate rate is {:.0} req/s):\n",
            self.open_rate(Phase::Fixed)
        );
        let _ = writeln!(out, "| goal | measured | met |\n|---|---:|---|");
        for (goal, measured, met) in self.goals() {
            let _ = writeln!(
                out,
                "| {goal} | {measured} | {} |",
                if met { "yes" } else { "no" }
            );
        }
        for (when, d) in ["before", "after"].iter().zip(&self.disk) {
            let _ = writeln!(
                out,
                "\nThe log's disk {when} the runs: `fdatasync` of one rewritten 4 KiB page, {} syncs: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms. \
                 Every decision waits for at least one sync before its call is forwarded, so the durable log's p99 cannot be below this disk's.",
                d.syncs, d.p50, d.p99, d.p999
            );
        }
        let _ = writeln!(out, "\nDecision log after the run: `{}`", self.audit_verify);
        out
    }

    /// The reflection guard's cost: clawgate against the same clawgate with
    /// `reflection = "off"`, CPU per call at the moderate rate (and the
    /// saturated throughput ratio, for the record).
    fn guard_goal(&self) -> (String, String, bool) {
        let on = self.summary("clawgate");
        let off = self.summary("clawgate-guard-off");
        let cpu_fixed = on.open[0].cpu_per_10k / off.open[0].cpu_per_10k;
        let cpu_saturated = on.cpu_per_10k / off.cpu_per_10k;
        let throughput = self.rate_ratio("clawgate", "clawgate-guard-off", false);
        (
            "reflection guard: CPU per call ≤ 1.05× guard off, at the moderate rate".into(),
            format!(
                "{cpu_fixed:.3}× (saturated: CPU {cpu_saturated:.3}×, throughput {throughput:.3}×)"
            ),
            cpu_fixed <= 1.05,
        )
    }

    /// The issue's targets: (goal, what was measured, met).
    fn goals(&self) -> Vec<(String, String, bool)> {
        let cg = self.summary("clawgate");
        let ng = self.summary("nginx");
        let di = self.summary("direct");
        let fixed = |s: &Summary| s.open[0];
        let throughput = self.rate_ratio("clawgate", "nginx", false);
        let durable = self.rate_ratio("clawgate", "clawgate-log-off", false);
        let cpu_saturated = cg.cpu_per_10k / ng.cpu_per_10k;
        let cpu_fixed = fixed(&cg).cpu_per_10k / fixed(&ng).cpu_per_10k;
        let p50_added = fixed(&cg).p50 - fixed(&di).p50;
        let p99_added = fixed(&cg).p99 - fixed(&di).p99;
        let p99_added_nginx = fixed(&ng).p99 - fixed(&di).p99;
        // The issue says MB: 30 MB is 28.6 MiB.
        let idle_mb = cg.idle_rss * 1.048_576;
        vec![
            (
                "throughput ≥ 1.0× nginx's".into(),
                format!("{throughput:.2}×"),
                throughput >= 1.0,
            ),
            (
                "CPU per call ≤ 1.2× nginx's, at saturation".into(),
                format!("{cpu_saturated:.2}×"),
                cpu_saturated <= 1.2,
            ),
            (
                "CPU per call ≤ 1.2× nginx's, at the moderate rate".into(),
                format!("{cpu_fixed:.2}×"),
                cpu_fixed <= 1.2,
            ),
            (
                "p50 added over direct at the moderate rate ≤ 0.5 ms".into(),
                format!("{p50_added:.2} ms"),
                p50_added <= 0.5,
            ),
            (
                "p99 added over direct at the moderate rate ≤ 2× nginx's".into(),
                format!(
                    "{p99_added:.2} ms against nginx's {p99_added_nginx:.2} ms ({:.2}×); log off {:.2} ms; the disk's fdatasync p99 {}",
                    p99_added / p99_added_nginx,
                    fixed(&self.summary("clawgate-log-off")).p99 - fixed(&di).p99,
                    self.disk
                        .iter()
                        .map(|d| format!("{:.2} ms", d.p99))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ),
                p99_added <= 2.0 * p99_added_nginx,
            ),
            (
                "durable ÷ log-off throughput ≥ 0.9".into(),
                format!("{durable:.2}×"),
                durable >= 0.9,
            ),
            (
                "idle RSS ≤ 30 MB".into(),
                format!("{idle_mb:.1} MB"),
                idle_mb <= 30.0,
            ),
            self.guard_goal(),
        ]
    }

    pub fn json(&self) -> serde_json::Value {
        let closed = |runs: Option<&Vec<Closed>>| {
            runs.map(|runs| {
                runs.iter()
                    .map(|c| {
                        serde_json::json!({
                            "requests": c.requests, "errors": c.errors, "seconds": c.seconds,
                            "rate": c.rate(), "cpu_seconds": c.cpu_seconds,
                        })
                    })
                    .collect::<Vec<_>>()
            })
        };
        let targets: serde_json::Map<String, serde_json::Value> = COLUMNS
            .iter()
            .map(|&name| {
                let s = self.summary(name);
                (
                    name.to_owned(),
                    serde_json::json!({
                        "max_rate": s.rate, "cpu_s_per_10k": s.cpu_per_10k,
                        "open_loop": PHASES.iter().zip(s.open).map(|(p, l)| (p.key().to_owned(), serde_json::json!({
                            "rate": self.open_rate(*p), "p50_ms": l.p50, "p99_ms": l.p99, "p999_ms": l.p999,
                            "cpu_s_per_10k": l.cpu_per_10k,
                        }))).collect::<serde_json::Map<_, _>>(),
                        "new_connection_rate": s.handshake_rate,
                        "new_connection_cpu_s_per_10k": s.handshake_cpu_per_10k,
                        "peak_rss_mib": s.peak_rss, "idle_rss_mib": s.idle_rss, "errors": s.errors,
                        "rounds": {
                            "keepalive": closed(self.keepalive.get(name)),
                            "new_connection": closed(self.handshake.get(name)),
                            "open_p99_ms": PHASES.iter().map(|p| (p.key().to_owned(), serde_json::json!(
                                self.open.get(&(*p, name)).map(|runs| runs.iter().map(|o| quantile_ms(&o.latencies_us, 0.99)).collect::<Vec<_>>())
                            ))).collect::<serde_json::Map<_, _>>(),
                        },
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "date": sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            "machine": self.machine,
            "load_average_before": self.load_before,
            "load_average_after": load_average(),
            "rounds": self.rounds,
            "connections": self.connections,
            "seconds": self.seconds.as_secs(),
            "open_loop_rates": PHASES.iter().map(|p| (p.key().to_owned(), serde_json::json!(self.open_rate(*p)))).collect::<serde_json::Map<_, _>>(),
            "goals": self.goals().into_iter().map(|(goal, measured, met)| serde_json::json!({
                "goal": goal, "measured": measured, "met": met,
            })).collect::<Vec<_>>(),
            "ratios": {
                "throughput_vs_nginx": self.rate_ratio("clawgate", "nginx", false),
                "throughput_vs_direct": self.rate_ratio("clawgate", "direct", false),
                "throughput_durable_vs_log_off": self.rate_ratio("clawgate", "clawgate-log-off", false),
                "throughput_guard_on_vs_off": self.rate_ratio("clawgate", "clawgate-guard-off", false),
                "cpu_per_call_guard_on_vs_off_moderate": self.summary("clawgate").open[0].cpu_per_10k
                    / self.summary("clawgate-guard-off").open[0].cpu_per_10k,
                "new_connection_vs_nginx": self.rate_ratio("clawgate", "nginx", true),
                "new_connection_vs_direct": self.rate_ratio("clawgate", "direct", true),
            },
            "targets": targets,
            "audit_verify": self.audit_verify,
            "disk_fdatasync_ms": self.disk.iter().map(|d| serde_json::json!({
                "syncs": d.syncs, "p50": d.p50, "p99": d.p99, "p999": d.p999,
            })).collect::<Vec<_>>(),
        })
    }
}
