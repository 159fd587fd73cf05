//! `policy replay`: the recorded calls re-decided under a candidate policy,
//! compared with what was decided then (the effect and rule each decision
//! record holds), grouped by direction, agent, scope and rule.
//!
//! Records are fed one at a time and only counts and three examples per
//! group are kept, so memory does not grow with the log. What a record
//! cannot answer is counted apart, never guessed:
//! - calls refused before policy was consulted (handshakes, run tokens,
//!   proxy keys, overrides, malformed requests, cancelled calls), and those
//!   refused after DNS (`egress-address-blocked` once a scope was chosen);
//! - calls from an unknown identity: records keep the certificate's
//!   fingerprint, not its names;
//! - MCP `tools/call`s whose candidate rules look at the arguments: records
//!   keep only the arguments' keyed digest;
//! - S3 calls whose candidate rules name resources: records keep the action
//!   but not the bucket and key;
//! - gateway calls to a scope the candidate no longer has: records keep the
//!   scope, not the route the agent used.
//!
//! Rate limits are not replayed: a call refused by a limit counts as allowed
//! by policy then, and is compared as such. Records hold no port: a call is
//! re-decided as if on a port its scope lists.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::audit::DecisionRecord;
use crate::error::Reason;
use crate::mcp::McpCall;
use crate::policy::aws::AwsRequest;
use crate::policy::{Call, Effect, Policy, Target, decide};

/// Which records to replay.
#[derive(Debug, Clone, Default)]
pub struct Select {
    /// Only this agent's calls.
    pub agent: Option<String>,
    /// Only calls recorded in this scope.
    pub scope: Option<String>,
}

/// A group of calls that flip the same way.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FlipKey {
    /// `allow->deny` or `deny->allow`.
    pub direction: &'static str,
    /// The agent.
    pub agent: String,
    /// The scope then (or now, when there was none then).
    pub scope: String,
    /// The rule (or reason) that decided then.
    pub then: String,
    /// The rule (or reason) that decides now.
    pub now: String,
}

/// One example call of a group.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// Its position in the log.
    pub seq: i64,
    /// When.
    pub ts: String,
    /// The request id.
    pub request_id: String,
    /// Method, host and path.
    pub call: String,
}

/// A group's count and first three examples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Group {
    /// How many calls.
    pub count: u64,
    /// The first three.
    pub examples: Vec<Example>,
}

/// What a replay found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Decision records read.
    pub records: u64,
    /// Records left out by `--agent` or `--scope`.
    pub skipped: u64,
    /// Records re-decided.
    pub re_decided: u64,
    /// Re-decided with the same effect.
    pub unchanged: u64,
    /// Calls that would flip.
    pub flipped: u64,
    /// The flips, grouped.
    #[serde(serialize_with = "groups")]
    pub flips: BTreeMap<FlipKey, Group>,
    /// Records that cannot be re-decided, counted by why.
    pub not_re_decidable: BTreeMap<&'static str, u64>,
}

fn groups<S: serde::Serializer>(flips: &BTreeMap<FlipKey, Group>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Row<'a> {
        #[serde(flatten)]
        key: &'a FlipKey,
        #[serde(flatten)]
        group: &'a Group,
    }
    s.collect_seq(flips.iter().map(|(key, group)| Row { key, group }))
}

/// Replays records under `candidate`, one at a time.
#[derive(Debug)]
pub struct Replay<'a> {
    candidate: &'a Policy,
    select: Select,
    /// What has been found so far.
    pub summary: Summary,
}

/// Where a record stands before re-deciding it.
enum Then {
    Decided(Effect),
    Not(&'static str),
}

/// The policy's effect then, as far as the record's reason tells it.
fn then_of(record: &DecisionRecord) -> Then {
    let Some(reason) = Reason::from_code(&record.reason) else {
        return Then::Not("unknown-reason");
    };
    match reason {
        Reason::Allowed => Then::Decided(Effect::Allow),
        Reason::UnknownAgent => Then::Not("identity-not-recorded"),
        Reason::EgressAddressBlocked if record.scope.is_some() => Then::Not("decided-after-dns"),
        Reason::NoMatchingScope
        | Reason::EgressAddressBlocked
        | Reason::NoMatchingRule
        | Reason::DeniedByRule
        | Reason::AwsActionUnmapped
        | Reason::ToolArgumentsRefused
        | Reason::ToolDefinitionChanged
        | Reason::ToolDefinitionUnverified => Then::Decided(Effect::Deny),
        // Policy allowed these; what came after refused them.
        Reason::RateLimited
        | Reason::CredentialUnavailable
        | Reason::SentinelMisdirected
        | Reason::UpstreamUnreachable
        | Reason::UpstreamTimeout
        | Reason::UpstreamAuthRequired
        | Reason::RunTokenScope
        | Reason::ScopeDisabled => Then::Decided(Effect::Allow),
        _ => Then::Not("refused-before-policy"),
    }
}

impl<'a> Replay<'a> {
    /// A replay under `candidate` of the records `select` picks.
    pub fn new(candidate: &'a Policy, select: Select) -> Replay<'a> {
        Replay {
            candidate,
            select,
            summary: Summary::default(),
        }
    }

    /// Re-decides one record (other kinds than decisions are ignored).
    pub fn feed(&mut self, record: &DecisionRecord) {
        if record.kind != crate::audit::kind::DECISION {
            return;
        }
        let picked = |want: &Option<String>, have: &Option<String>| {
            want.is_none() || want.as_deref() == have.as_deref()
        };
        if !picked(&self.select.agent, &record.agent) || !picked(&self.select.scope, &record.scope)
        {
            self.summary.skipped += 1;
            return;
        }
        self.summary.records += 1;
        let then = match then_of(record) {
            Then::Decided(effect) => effect,
            Then::Not(why) => return self.cannot(why),
        };
        let (effect, rule, reason, scope) = match self.redecide(record) {
            Ok(now) => now,
            Err(why) => return self.cannot(why),
        };
        self.summary.re_decided += 1;
        if effect == then {
            self.summary.unchanged += 1;
            return;
        }
        self.summary.flipped += 1;
        let name = |rule: Option<&str>, reason: &str| rule.unwrap_or(reason).to_owned();
        let key = FlipKey {
            direction: if then == Effect::Allow {
                "allow->deny"
            } else {
                "deny->allow"
            },
            agent: record.agent.clone().unwrap_or_default(),
            scope: record.scope.clone().or(scope).unwrap_or_else(|| "-".into()),
            then: name(record.rule.as_deref(), &record.reason),
            now: name(rule.as_deref(), reason),
        };
        let group = self.summary.flips.entry(key).or_default();
        group.count += 1;
        if group.examples.len() < 3 {
            let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            group.examples.push(Example {
                seq: record.seq,
                ts: record.ts.clone(),
                request_id: record.request_id.clone(),
                call: format!(
                    "{} {} {}",
                    opt(&record.method),
                    opt(&record.host),
                    opt(&record.path)
                ),
            });
        }
    }

    fn cannot(&mut self, why: &'static str) {
        *self.summary.not_re_decidable.entry(why).or_default() += 1;
    }

    /// The candidate's effect, rule, reason and scope for a record.
    #[expect(clippy::type_complexity, reason = "a private tuple, read at once")]
    fn redecide(
        &self,
        record: &DecisionRecord,
    ) -> Result<(Effect, Option<String>, &'static str, Option<String>), &'static str> {
        let policy = self.candidate;
        let agent = record.agent.as_deref().ok_or("identity-not-recorded")?;
        // An agent the candidate drops proves nothing any more.
        let peer = policy
            .agents()
            .iter()
            .find(|a| a.name == agent)
            .and_then(|a| a.identities.first().cloned());
        let peer: Vec<_> = peer.into_iter().collect();
        let method = record.method.as_deref().ok_or("no-method-recorded")?;
        let path = record.path.as_deref().ok_or("no-path-recorded")?;
        let (route, path) = match (record.mode.as_deref(), &record.scope) {
            (Some("gateway"), Some(scope)) => {
                let id = policy.scope_named(scope).ok_or("route-not-recorded")?;
                let route = policy.scope(id).route.clone().ok_or("route-not-recorded")?;
                (Some(route), path.to_owned())
            }
            (Some("gateway"), None) => {
                let rest = path.strip_prefix('/').unwrap_or(path);
                let (route, below) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let below = if below.is_empty() { "/" } else { below };
                (Some(route.to_owned()), below.to_owned())
            }
            (Some("forward" | "intercept"), _) => (None, path.to_owned()),
            _ => return Err("not-a-request"),
        };
        let host = record.host.as_deref().unwrap_or_default();
        let target = match &route {
            Some(route) => Target::Route(route),
            None => Target::Host { host, port: None },
        };
        let ts = humantime::parse_rfc3339_weak(&record.ts).unwrap_or_else(|_| SystemTime::now());
        let landed = policy
            .agent_for(&peer)
            .and_then(|a| policy.scope_at(a, target, ts))
            .map(|(id, _)| policy.scope(id));
        let mut aws = None;
        let mut mcp_name = None;
        if let Some(scope) = landed {
            if scope.aws().is_some() {
                let s3 = scope.signing().is_some_and(|(service, _)| service == "s3");
                if s3 && scope.aws_rules_name_resources() {
                    return Err("aws-resource-not-recorded");
                }
                aws = match (&record.action, Reason::from_code(&record.reason)) {
                    (Some(action), _) => Some(AwsRequest {
                        action: action.clone(),
                        resource: None,
                    }),
                    (None, Some(Reason::AwsActionUnmapped)) => None,
                    (None, _) => return Err("aws-action-not-recorded"),
                };
            }
            if let (Some(rules), Some(m)) = (&scope.mcp, &record.mcp) {
                if m.method == "tools/call"
                    && rules.depends_on_arguments(m.name.as_deref().unwrap_or_default())
                {
                    return Err("mcp-arguments-digest-only");
                }
                mcp_name = Some(m);
            }
        }
        let mcp = mcp_name
            .filter(|m| method == "POST" && m.method != "GET" && m.method != "DELETE")
            .map(|m| McpCall {
                method: &m.method,
                name: m.name.as_deref(),
                arguments: None,
                arguments_size: 0,
                definition: m.definition.as_deref(),
                first_pin: m.definition.as_deref(),
            });
        let call = Call {
            peer: &peer,
            target,
            method,
            path: &path,
            aws: aws.as_ref(),
            now: ts,
            mcp: mcp.as_ref(),
        };
        let decision = decide(&call, policy);
        Ok((
            decision.effect(),
            decision.rule().map(str::to_owned),
            decision.reason().code(),
            decision.scope().map(|s| policy.scope(s).name.clone()),
        ))
    }
}

impl Summary {
    /// The report as text.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let not: u64 = self.not_re_decidable.values().sum();
        let _ = writeln!(
            out,
            "{} decision record(s): {} re-decided ({} unchanged, {} flip), {} not re-decidable, {} left out",
            self.records, self.re_decided, self.unchanged, self.flipped, not, self.skipped
        );
        for (key, group) in &self.flips {
            let _ = writeln!(
                out,
                "{:<11} {:>6}  agent {}  scope {}  then {}  now {}",
                key.direction, group.count, key.agent, key.scope, key.then, key.now
            );
            for e in &group.examples {
                let _ = writeln!(
                    out,
                    "      e.g. #{} {} {} ({})",
                    e.seq, e.ts, e.call, e.request_id
                );
            }
        }
        for (why, count) in &self.not_re_decidable {
            let _ = writeln!(out, "not re-decidable {count:>6}  {why}");
        }
        out
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
