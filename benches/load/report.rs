//! Summaries, ratios, the Markdown table and the JSON copy.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::client::{Closed, Open, quantile_ms};

pub enum Measured {
    KeepAlive(&'static str, Closed),
    /// At half nginx's maximum (`own == false`) or half clawgate's.
    Open(&'static str, bool, Open),
    Handshake(&'static str, Closed),
}

pub struct Report {
    rounds: usize,
    connections: usize,
    seconds: Duration,
    keepalive: BTreeMap<&'static str, Vec<Closed>>,
    open: BTreeMap<&'static str, Vec<Open>>,
    open_own: BTreeMap<&'static str, Vec<Open>>,
    handshake: BTreeMap<&'static str, Vec<Closed>>,
    pub idle_rss_mib: BTreeMap<&'static str, f64>,
    pub peak_rss_mib: BTreeMap<&'static str, f64>,
    pub audit_verify: String,
    machine: String,
    load_before: String,
}

const COLUMNS: [&str; 4] = ["clawgate", "clawgate-log-off", "nginx", "direct"];

/// One target's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Summary {
    rate: f64,
    cpu_per_10k: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    own_p50: f64,
    own_p99: f64,
    own_p999: f64,
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
            open_own: BTreeMap::new(),
            handshake: BTreeMap::new(),
            idle_rss_mib: BTreeMap::new(),
            peak_rss_mib: BTreeMap::new(),
            audit_verify: String::new(),
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
            Measured::Open(name, false, o) => self.open.entry(name).or_default().push(o),
            Measured::Open(name, true, o) => self.open_own.entry(name).or_default().push(o),
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

    fn open_rate(&self, own: bool) -> f64 {
        if own { &self.open_own } else { &self.open }
            .values()
            .flatten()
            .map(|o| o.rate)
            .next()
            .unwrap_or(f64::NAN)
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
        let pooled = |open: &BTreeMap<&'static str, Vec<Open>>| {
            let mut latencies: Vec<u64> = open
                .get(name)
                .map(|runs| {
                    runs.iter()
                        .flat_map(|o| o.latencies_us.iter().copied())
                        .collect()
                })
                .unwrap_or_default();
            latencies.sort_unstable();
            latencies
        };
        let latencies = pooled(&self.open);
        let own = pooled(&self.open_own);
        let errors = keepalive
            .iter()
            .chain(handshake)
            .map(|c| c.errors)
            .sum::<u64>()
            + self
                .open
                .get(name)
                .into_iter()
                .chain(self.open_own.get(name))
                .flatten()
                .map(|o| o.errors)
                .sum::<u64>();
        Summary {
            rate: self.median_rate(name, false),
            cpu_per_10k: cpu_per_10k(keepalive),
            p50: quantile_ms(&latencies, 0.50),
            p99: quantile_ms(&latencies, 0.99),
            p999: quantile_ms(&latencies, 0.999),
            own_p50: quantile_ms(&own, 0.50),
            own_p99: quantile_ms(&own, 0.99),
            own_p999: quantile_ms(&own, 0.999),
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
        for (label, own, f) in [
            ("p50", false, (|x: &Summary| x.p50) as fn(&Summary) -> f64),
            ("p99", false, |x: &Summary| x.p99),
            ("p99.9", false, |x: &Summary| x.p999),
            ("p50", true, |x: &Summary| x.own_p50),
            ("p99", true, |x: &Summary| x.own_p99),
            ("p99.9", true, |x: &Summary| x.own_p999),
        ] {
            let whose = if own { "clawgate's" } else { "nginx's" };
            row(
                &mut out,
                &format!(
                    "latency {label}, ms, at {:.0} req/s = half {whose} max (open loop)",
                    self.open_rate(own)
                ),
                &f,
                2,
                by(&f),
            );
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
        let _ = writeln!(out, "| target | measured | met |\n|---|---:|---|");
        let keepalive_ratio = self.rate_ratio("clawgate", "nginx", false);
        let durable_ratio = self.rate_ratio("clawgate", "clawgate-log-off", false);
        let added = cg.p99 - di.p99;
        let cpu_ratio = cg.cpu_per_10k / ng.cpu_per_10k;
        for (goal, measured, met) in [
            (
                "throughput vs nginx",
                "≥ 1.0×",
                format!("{keepalive_ratio:.2}×"),
                keepalive_ratio >= 1.0,
            ),
            (
                "p99 added over direct at half nginx's max",
                "≤ 0.5 ms",
                format!("{added:.2} ms"),
                added <= 0.5,
            ),
            (
                "(for reference) p99 added over direct at half clawgate's max",
                "≤ 0.5 ms",
                format!("{:.2} ms", cg.own_p99 - di.own_p99),
                cg.own_p99 - di.own_p99 <= 0.5,
            ),
            (
                "durable log vs log off",
                "≥ 0.9×",
                format!("{durable_ratio:.2}×"),
                durable_ratio >= 0.9,
            ),
            (
                "CPU per request vs nginx",
                "≤ 1.0×",
                format!("{cpu_ratio:.2}×"),
                cpu_ratio <= 1.0,
            ),
            (
                "idle RSS",
                "≤ 30 MiB",
                format!("{:.1} MiB", cg.idle_rss),
                cg.idle_rss <= 30.0,
            ),
        ]
        .map(|(name, goal, measured, met)| (format!("{name} {goal}"), measured, met))
        {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                goal,
                measured,
                if met { "yes" } else { "no" }
            );
        }
        let _ = writeln!(out, "\nDecision log after the run: `{}`", self.audit_verify);
        out
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
                        "p50_ms": s.p50, "p99_ms": s.p99, "p999_ms": s.p999,
                        "half_clawgate_max": { "p50_ms": s.own_p50, "p99_ms": s.own_p99, "p999_ms": s.own_p999 },
                        "new_connection_rate": s.handshake_rate,
                        "new_connection_cpu_s_per_10k": s.handshake_cpu_per_10k,
                        "peak_rss_mib": s.peak_rss, "idle_rss_mib": s.idle_rss, "errors": s.errors,
                        "rounds": {
                            "keepalive": closed(self.keepalive.get(name)),
                            "new_connection": closed(self.handshake.get(name)),
                            "open_p99_ms": self.open.get(name).map(|runs| runs.iter().map(|o| quantile_ms(&o.latencies_us, 0.99)).collect::<Vec<_>>()),
                            "open_half_clawgate_p99_ms": self.open_own.get(name).map(|runs| runs.iter().map(|o| quantile_ms(&o.latencies_us, 0.99)).collect::<Vec<_>>()),
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
            "open_loop_rate_half_nginx": self.open_rate(false),
            "open_loop_rate_half_clawgate": self.open_rate(true),
            "ratios": {
                "throughput_vs_nginx": self.rate_ratio("clawgate", "nginx", false),
                "throughput_vs_direct": self.rate_ratio("clawgate", "direct", false),
                "throughput_durable_vs_log_off": self.rate_ratio("clawgate", "clawgate-log-off", false),
                "new_connection_vs_nginx": self.rate_ratio("clawgate", "nginx", true),
                "new_connection_vs_direct": self.rate_ratio("clawgate", "direct", true),
            },
            "targets": targets,
            "audit_verify": self.audit_verify,
        })
    }
}
