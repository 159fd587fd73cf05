//! What an auditor asks of the log: counts (`audit stats`) and the things
//! that need a look (`audit findings`), computed from records read from
//! either backend, so that they mean the same on SQLite and PostgreSQL.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{DecisionRecord, kind};

/// What `stats` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The agent.
    Agent,
    /// The scope.
    Scope,
    /// The reason code.
    Reason,
    /// The tool: the AWS action a call maps to (and an MCP tool's name,
    /// once records carry one).
    Tool,
    /// The upstream host.
    Host,
}

impl std::str::FromStr for By {
    type Err = String;
    fn from_str(s: &str) -> Result<By, String> {
        Ok(match s {
            "agent" => By::Agent,
            "scope" => By::Scope,
            "reason" => By::Reason,
            "tool" => By::Tool,
            "host" => By::Host,
            other => {
                return Err(format!(
                    "`{other}` is not one of agent, scope, reason, tool, host"
                ));
            }
        })
    }
}

/// Counts of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// The group's key (`-` when the field is absent, `all` for the total).
    pub key: String,
    /// Decisions that allowed the call.
    pub allowed: u64,
    /// Decisions that refused it.
    pub refused: u64,
    /// Report-mode calls enforce mode would have refused.
    pub would_deny: u64,
    /// Allowed calls whose outcome record says they failed all the same:
    /// a status of 500 or more (the upstream's own, or clawgate's 502/504
    /// when the upstream could not be reached). Counted among `allowed`
    /// too: `allowed` counts decisions, not successes.
    pub failed_upstream: u64,
}

/// The answer of `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Every decision.
    pub total: Counts,
    /// One row per group, most calls first (empty without `--by`).
    pub groups: Vec<Counts>,
    /// Refusal reasons, most frequent first (at most ten).
    pub top_refusal_reasons: Vec<(String, u64)>,
    /// Hosts called, most frequent first (at most ten).
    pub top_hosts: Vec<(String, u64)>,
    /// Set when the window asked for reaches back past pruned history: the
    /// time of the oldest record left, from which the counts are complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub covers_from: Option<String>,
}

/// The time from which a window starting at `since` is complete, when the
/// log was pruned after `since` (`retained_from` is the oldest record left
/// in a pruned log, `None` for a log never pruned).
pub fn covers_from(since: &str, retained_from: Option<&str>) -> Option<String> {
    retained_from
        .filter(|from| *from > since)
        .map(ToOwned::to_owned)
}

/// What to say when a window reaches past pruned history.
pub fn pruned_notice(from: &str) -> String {
    format!(
        "the log was pruned: these figures cover only records from {from} on; \
         earlier ones are in the archives (`clawgate audit verify --archive FILE`)"
    )
}

fn key_of(r: &DecisionRecord, by: By) -> String {
    let field = match by {
        By::Agent => r.agent.as_deref(),
        By::Scope => r.scope.as_deref(),
        By::Reason => Some(r.reason.as_str()),
        By::Tool => r.action.as_deref(),
        By::Host => r.host.as_deref(),
    };
    field.unwrap_or("-").to_owned()
}

fn count(c: &mut Counts, r: &DecisionRecord, failed: &HashSet<&str>) {
    match r.decision.as_deref() {
        Some("allow") => {
            c.allowed += 1;
            if failed.contains(r.request_id.as_str()) {
                c.failed_upstream += 1;
            }
        }
        Some("deny") => c.refused += 1,
        _ => {}
    }
    if r.would_deny.is_some() {
        c.would_deny += 1;
    }
}

fn top(map: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(10);
    v
}

/// Counts the decision records among `records`.
pub fn stats(records: &[DecisionRecord], by: Option<By>) -> Stats {
    let mut total = Counts {
        key: "all".into(),
        ..Counts::default()
    };
    let mut groups: BTreeMap<String, Counts> = BTreeMap::new();
    let mut reasons = HashMap::new();
    let mut hosts = HashMap::new();
    let failed = failed_upstream(records);
    for r in records.iter().filter(|r| r.kind == kind::DECISION) {
        count(&mut total, r, &failed);
        if let Some(by) = by {
            let key = key_of(r, by);
            let g = groups.entry(key.clone()).or_insert_with(|| Counts {
                key,
                ..Counts::default()
            });
            count(g, r, &failed);
        }
        if r.decision.as_deref() == Some("deny") {
            *reasons.entry(r.reason.clone()).or_insert(0) += 1;
        }
        if let Some(h) = &r.host {
            *hosts.entry(h.clone()).or_insert(0) += 1;
        }
    }
    // A tunnel cut at its ClientHello was allowed at `CONNECT` and refused
    // after: its refusal is in the outcome record.
    for r in records.iter().filter(|r| r.kind == kind::OUTCOME) {
        if CUT_TUNNEL_REASONS.contains(&r.reason.as_str()) {
            *reasons.entry(r.reason.clone()).or_insert(0) += 1;
        }
    }
    // A response the reflection guard redacted or cut is an allowed call
    // whose outcome says so: it counts among the reasons to look at.
    let reflections = records.iter().filter(|r| reflected(r)).count() as u64;
    if reflections > 0 {
        reasons.insert(REFLECTED.to_owned(), reflections);
    }
    let mut groups: Vec<Counts> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        (b.allowed + b.refused)
            .cmp(&(a.allowed + a.refused))
            .then_with(|| a.key.cmp(&b.key))
    });
    Stats {
        total,
        groups,
        top_refusal_reasons: top(reasons),
        top_hosts: top(hosts),
        covers_from: None,
    }
}

/// The request ids whose outcome record carries a status of 500 or more.
pub fn failed_upstream(records: &[DecisionRecord]) -> HashSet<&str> {
    records
        .iter()
        .filter(|r| r.kind == kind::OUTCOME && r.status.is_some_and(|s| s >= 500))
        .map(|r| r.request_id.as_str())
        .collect()
}

/// Writes `stats` as an aligned table.
pub fn table(s: &Stats, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<40} {:>10} {:>16} {:>10} {:>10}",
        "key", "allowed", "(failed upstream)", "refused", "would-deny"
    )?;
    for c in std::iter::once(&s.total).chain(&s.groups) {
        writeln!(
            out,
            "{:<40} {:>10} {:>16} {:>10} {:>10}",
            c.key, c.allowed, c.failed_upstream, c.refused, c.would_deny
        )?;
    }
    writeln!(out, "\ntop refusal reasons")?;
    for (k, n) in &s.top_refusal_reasons {
        writeln!(out, "  {k:<38} {n:>10}")?;
    }
    writeln!(out, "\ntop hosts")?;
    for (k, n) in &s.top_hosts {
        writeln!(out, "  {k:<38} {n:>10}")?;
    }
    Ok(())
}

/// Writes `stats` as CSV:
/// `section,key,allowed,refused,would_deny,count,failed_upstream`.
pub fn csv(s: &Stats, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let q = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
    writeln!(
        out,
        "section,key,allowed,refused,would_deny,count,failed_upstream"
    )?;
    if let Some(from) = &s.covers_from {
        writeln!(out, "covers_from,{},,,,,", q(from))?;
    }
    for (section, c) in
        std::iter::once(("total", &s.total)).chain(s.groups.iter().map(|g| ("group", g)))
    {
        writeln!(
            out,
            "{section},{},{},{},{},{},{}",
            q(&c.key),
            c.allowed,
            c.refused,
            c.would_deny,
            c.allowed + c.refused,
            c.failed_upstream
        )?;
    }
    for (k, n) in &s.top_refusal_reasons {
        writeln!(out, "refusal_reason,{},,,,{n},", q(k))?;
    }
    for (k, n) in &s.top_hosts {
        writeln!(out, "host,{},,,,{n},", q(k))?;
    }
    Ok(())
}

/// Outcome reasons that are refusals of their own (a tunnel cut at its
/// ClientHello), counted among the top refusal reasons.
const CUT_TUNNEL_REASONS: [&str; 3] = ["tunnel-sni-mismatch", "tunnel-sni-missing", "tunnel-ech"];

/// Reasons whose bursts per source are findings.
const BURST_REASONS: [&str; 6] = [
    "tls-rejected",
    "unknown-agent",
    "run-token-invalid",
    "run-token-expired",
    "run-token-wrong-agent",
    "run-token-scope",
];

/// The reason code recorded when an MCP server's tool definition changes
/// from its pin ([`crate::error::Reason::ToolDefinitionChanged`]; a unit
/// test keeps the two equal, since a `match` needs a constant pattern).
pub const MCP_TOOLS_CHANGED: &str = "tool-definition-changed";

/// The reason code of a response that carried an injected value
/// ([`crate::error::Reason::CredentialReflected`]; a unit test keeps the two
/// equal).
pub const REFLECTED: &str = "credential-reflected";

/// Whether an outcome record says the reflection guard acted: cut
/// (its reason) or redacted (its detail).
fn reflected(r: &DecisionRecord) -> bool {
    r.kind == kind::OUTCOME
        && (r.reason == REFLECTED
            || r.detail
                .as_deref()
                .is_some_and(|d| d.contains("credential-reflected:")))
}

/// What a `mint` record's detail says when the provider granted more than
/// was asked (see `credentials::oauth` and `credentials::github`).
pub const GRANTED_BROADER: &str = "granted-broader";

/// Thresholds of `findings`.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Refusals of one burst reason from one source in the window.
    pub burst: u64,
    /// An agent's refusals in the recent part of the window against its
    /// own rate over the rest, as a factor.
    pub rise_factor: f64,
    /// Least recent refusals for a rise to count.
    pub rise_min: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            burst: 10,
            rise_factor: 3.0,
            rise_min: 5,
        }
    }
}

/// One thing that needs a look.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// `burst`, `refusals-rising`, `sentinel-misdirected`, `policy-rejected`,
    /// `tool-definition-changed`, `identity-ambiguous`, `tunnel-sni-mismatch`,
    /// `tunnel-ech`, `credential-reflected`, `credential-broader` (and, from live
    /// state, `lapsing-soon`, `drift`).
    pub kind: String,
    /// Who or what: a source address, an agent, an id.
    pub subject: String,
    /// What was seen.
    pub detail: String,
    /// How many records.
    pub count: u64,
}

fn source_of(r: &DecisionRecord) -> String {
    let addr = r.client_addr.as_deref().unwrap_or("-");
    // The host part: a source is a machine, not one of its ports.
    match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
            host.trim_matches(['[', ']']).to_owned()
        }
        _ => addr.to_owned(),
    }
}

/// The findings among `records` (oldest first, one window); `recent_from`
/// splits the window for the rise check (records at or after it are
/// recent, the rest the baseline).
pub fn findings(records: &[DecisionRecord], recent_from: &str, t: Thresholds) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut bursts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut per_agent: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // Scopes whose minted tokens carry more than they asked for.
    let mut broader: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for r in records {
        if r.kind == kind::DECISION && BURST_REASONS.contains(&r.reason.as_str()) {
            *bursts.entry((r.reason.clone(), source_of(r))).or_insert(0) += 1;
        }
        if r.kind == kind::DECISION
            && r.decision.as_deref() == Some("deny")
            && let Some(agent) = &r.agent
        {
            let e = per_agent.entry(agent.clone()).or_insert((0, 0));
            if r.ts.as_str() >= recent_from {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
        if r.kind == kind::MINT
            && let Some(detail) = r.detail.as_deref()
            && let Some(at) = detail.find(GRANTED_BROADER)
        {
            let scope = r.scope.clone().unwrap_or_else(|| "-".into());
            let e = broader.entry(scope).or_insert((0, String::new()));
            e.0 += 1;
            e.1 = format!(
                "{} minted at {}: {}",
                r.credential_kind.as_deref().unwrap_or("credential"),
                r.ts,
                &detail[at..]
            );
        }
        let single = match r.reason.as_str() {
            "sentinel-misdirected" => Some("sentinel-misdirected"),
            "policy-rejected" => Some("policy-rejected"),
            MCP_TOOLS_CHANGED => Some(MCP_TOOLS_CHANGED),
            "identity-ambiguous" => Some("identity-ambiguous"),
            "tunnel-sni-mismatch" => Some("tunnel-sni-mismatch"),
            "tunnel-ech" => Some("tunnel-ech"),
            _ if reflected(r) => Some(REFLECTED),
            _ => None,
        };
        if let Some(k) = single {
            out.push(Finding {
                kind: k.into(),
                subject: r
                    .agent
                    .clone()
                    .or_else(|| r.host.clone())
                    .unwrap_or_else(|| r.request_id.clone()),
                detail: format!(
                    "{} at {}{}",
                    r.reason,
                    r.ts,
                    r.detail
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
                count: 1,
            });
        }
    }
    for (scope, (n, last)) in broader {
        out.push(Finding {
            kind: "credential-broader".into(),
            subject: scope,
            detail: format!("{n} minted token(s) broader than requested; last {last}"),
            count: n,
        });
    }
    for ((reason, source), n) in bursts {
        if n >= t.burst {
            out.push(Finding {
                kind: "burst".into(),
                subject: source,
                detail: format!("{n} `{reason}` in the window (threshold {})", t.burst),
                count: n,
            });
        }
    }
    rises(records, recent_from, &per_agent, t, &mut out);
    out
}

/// Seconds from `a` to `b` (RFC 3339), 0 when either does not parse.
fn secs(a: &str, b: &str) -> f64 {
    let p = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
    };
    match (p(a), p(b)) {
        (Ok(a), Ok(b)) => b - a,
        _ => 0.0,
    }
}

/// `refusals-rising`: an agent's refusal rate in the recent part against
/// its own rate before. Only an agent with a baseline counts: its first
/// record in the window must lie at least as long before `recent_from` as
/// the recent part lasts (a young log, or an agent new to it, has no
/// "before" to rise against, and "against 0 before" would fire on any
/// first refusals).
fn rises(
    records: &[DecisionRecord],
    recent_from: &str,
    per_agent: &BTreeMap<String, (u64, u64)>,
    t: Thresholds,
    out: &mut Vec<Finding>,
) {
    let mut first_seen: HashMap<&str, &str> = HashMap::new();
    for r in records {
        if let Some(agent) = r.agent.as_deref() {
            first_seen.entry(agent).or_insert(r.ts.as_str());
        }
    }
    let last_ts = records.last().map(|r| r.ts.as_str()).unwrap_or_default();
    // Rates per second over each part, so unequal parts compare fairly.
    let recent_secs = secs(recent_from, last_ts).max(1.0);
    for (agent, &(base, recent)) in per_agent {
        let Some(first) = first_seen.get(agent.as_str()) else {
            continue;
        };
        let base_secs = secs(first, recent_from);
        if base_secs < recent_secs {
            continue;
        }
        let base_rate = base as f64 / base_secs;
        let recent_rate = recent as f64 / recent_secs;
        if recent >= t.rise_min && recent_rate > t.rise_factor * base_rate {
            out.push(Finding {
                kind: "refusals-rising".into(),
                subject: agent.clone(),
                detail: format!(
                    "{recent} refusals recently ({recent_rate:.3}/s) against {base} before ({base_rate:.3}/s, over {base_secs:.0} s)"
                ),
                count: recent,
            });
        }
    }
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
