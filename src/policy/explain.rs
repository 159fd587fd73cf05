//! `policy explain`: the decision on a call and why, step by step. The
//! steps come from [`decide_traced`], the code [`super::decide`] runs, so
//! the explanation cannot disagree with the decision.

use serde::Serialize;

use super::decide::{Step, decide_traced};
use super::{Call, Decision, Effect, Policy, Target};

/// Why a call gets its decision.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// `allow` or `deny`.
    pub effect: &'static str,
    /// The reason code.
    pub reason: &'static str,
    /// In report mode: the refusal enforce mode would have made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_deny: Option<&'static str>,
    /// The agent the identity proved.
    pub agent: Option<String>,
    /// The identity presented.
    pub identity: Option<String>,
    /// The scope that decided.
    pub scope: Option<String>,
    /// The rule that decided.
    pub rule: Option<String>,
    /// The exception whose grant the call relied on.
    pub exception: Option<String>,
    /// The IAM action the call maps to (AWS scopes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The credential that would be injected: kind and reference, never a value.
    pub credential: Option<String>,
    /// Every scope of the agent, and why it was or was not chosen.
    pub scopes: Vec<Note>,
    /// Every rule of the deciding scope, in file order, and what it did.
    pub rules: Vec<Note>,
    /// The ask rule an allowed call meets: it would wait for an approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ask: Option<Note>,
}

/// One line of an explanation: a name and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Note {
    /// The scope or rule.
    pub name: String,
    /// What it did.
    pub verdict: String,
}

/// Decides `call` in `policy`, and says why.
pub fn explain(call: &Call<'_>, policy: &Policy) -> (Decision, Explanation) {
    let mut steps: Vec<Step> = Vec::new();
    let decision = decide_traced(call, policy, &mut steps);
    let agent = decision.agent().map(|a| policy.agent(a));
    let scope = decision.scope().map(|s| policy.scope(s));
    let mut explanation = Explanation {
        effect: match decision.effect() {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        },
        reason: decision.reason().code(),
        would_deny: decision.would_deny().map(|r| r.code()),
        agent: agent.map(|a| a.name.clone()),
        identity: call.peer.first().map(ToString::to_string),
        scope: scope.map(|s| s.name.clone()),
        rule: decision.rule().map(str::to_owned),
        exception: decision
            .exception()
            .and_then(|i| policy.exceptions().get(i))
            .map(|e| e.id.clone()),
        action: call.aws.map(|a| a.action.clone()),
        credential: scope
            .filter(|_| decision.effect() == Effect::Allow)
            .and_then(|s| s.credential.as_deref())
            .map(|c| format!("{} {}", c.kind(), c.reference())),
        scopes: Vec::new(),
        rules: Vec::new(),
        ask: scope
            .filter(|_| decision.effect() == Effect::Allow)
            .and_then(|s| super::ask::ask_for(s, call))
            .map(|rule| Note {
                name: rule.id.to_string(),
                verdict: format!(
                    "asks {} (ttl {}, uses {}, {}): {}",
                    rule.approvers.describe().join(", "),
                    humantime::format_duration(rule.ttl),
                    rule.uses,
                    if rule.hold.is_zero() {
                        "retry".to_owned()
                    } else {
                        format!("hold {}", humantime::format_duration(rule.hold))
                    },
                    rule.why
                ),
            }),
    };
    if let Some(agent_id) = decision.agent() {
        explanation.scopes = scope_notes(policy, agent_id, call.target, decision.scope());
    }
    if let Some(scope_id) = decision.scope() {
        explanation.rules = rule_notes(policy, scope_id, &steps);
    }
    (decision, explanation)
}

/// Each of the agent's scopes: chosen, or why not.
fn scope_notes(
    policy: &Policy,
    agent_id: usize,
    target: Target<'_>,
    chosen: Option<usize>,
) -> Vec<Note> {
    let mut ids = policy.agent(agent_id).scopes.clone();
    if let Some(id) = chosen.filter(|id| !ids.contains(id)) {
        ids.push(id);
    }
    ids.iter()
        .map(|&id| {
            let scope = policy.scope(id);
            let verdict = if Some(id) == chosen {
                "chosen".to_owned()
            } else {
                match target {
                    Target::Route(route) if scope.route.as_deref() != Some(route) => {
                        format!("its route is not `{route}`")
                    }
                    Target::Host { host, .. } | Target::Connect { host, .. }
                        if scope.upstream.host != host =>
                    {
                        format!("its host `{}` is not `{host}`", scope.upstream.host)
                    }
                    _ => "the port is not one of its ports, or an earlier scope was chosen"
                        .to_owned(),
                }
            };
            Note {
                name: scope.name.clone(),
                verdict,
            }
        })
        .collect()
}

/// Each rule of the deciding scope, with what `decide` saw of it.
fn rule_notes(policy: &Policy, scope_id: usize, steps: &[Step]) -> Vec<Note> {
    let scope = policy.scope(scope_id);
    let mut notes = Vec::new();
    for step in steps {
        match step {
            Step::Blocked => notes.push(note(
                "-",
                "the upstream address is in a refused range".into(),
            )),
            Step::Tunnel => notes.push(note("-", "CONNECT: decided by host, no rules".into())),
            Step::AwsUnmapped => notes.push(note(
                "-",
                "the request maps to no IAM action: only a rule allowing every action applies"
                    .into(),
            )),
            Step::AwsRule { id, allow, matches } => notes.push(note(
                id,
                format!(
                    "{} rule: {}",
                    if *allow { "allow" } else { "deny" },
                    if *matches {
                        "matches the action and resource"
                    } else {
                        "does not match"
                    }
                ),
            )),
            Step::Mcp(verdict) => notes.push(note(
                verdict.rule.as_deref().unwrap_or("-"),
                format!("MCP rules: {}", verdict.reason.code()),
            )),
            Step::Report(reason) => notes.push(note(
                "-",
                format!("report mode: enforce would refuse with `{}`", reason.code()),
            )),
            Step::Agent(_) | Step::Scope(_) | Step::PathRule { .. } => {}
        }
    }
    let path_steps: Vec<_> = steps
        .iter()
        .filter_map(|s| match s {
            Step::PathRule {
                rule,
                method,
                trimmed,
            } => Some((*rule, *method, *trimmed)),
            _ => None,
        })
        .collect();
    let considered = !path_steps.is_empty()
        || (notes.is_empty() && !steps.iter().any(|s| matches!(s, Step::Mcp(_))));
    if considered {
        for (i, rule) in scope.rules.rules.iter().enumerate() {
            let effect = match rule.effect {
                Effect::Allow => "allow",
                Effect::Deny => "deny",
            };
            let methods = rule
                .methods
                .as_ref()
                .map_or_else(|| "any method".to_owned(), |m| m.join(","));
            let seen: Vec<_> = path_steps.iter().filter(|s| s.0 == i).collect();
            let what = match seen.iter().find(|s| s.1) {
                Some(s) if s.2 => "path (without its trailing slash) and method match",
                Some(_) => "path and method match",
                None if !seen.is_empty() => "path matches, method does not",
                None => "path does not match (or not reached)",
            };
            notes.push(note(
                &rule.id,
                format!("{effect} {methods} {}: {what}", rule.paths.join(" ")),
            ));
        }
    }
    notes
}

fn note(name: &str, verdict: String) -> Note {
    Note {
        name: name.to_owned(),
        verdict,
    }
}

impl Explanation {
    /// The explanation as text, one fact a line.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut out = String::new();
        let _ = writeln!(out, "decision:   {} ({})", self.effect, self.reason);
        if let Some(would) = self.would_deny {
            let _ = writeln!(out, "would deny: {would} (report mode)");
        }
        let _ = writeln!(out, "identity:   {}", dash(&self.identity));
        let _ = writeln!(out, "agent:      {}", dash(&self.agent));
        let _ = writeln!(out, "scope:      {}", dash(&self.scope));
        let _ = writeln!(out, "rule:       {}", dash(&self.rule));
        if let Some(action) = &self.action {
            let _ = writeln!(out, "action:     {action}");
        }
        let _ = writeln!(out, "exception:  {}", dash(&self.exception));
        let _ = writeln!(out, "credential: {}", dash(&self.credential));
        if let Some(ask) = &self.ask {
            let _ = writeln!(out, "ask:        {} {}", ask.name, ask.verdict);
        }
        if !self.scopes.is_empty() {
            let _ = writeln!(out, "scopes:");
            for n in &self.scopes {
                let _ = writeln!(out, "  {}: {}", n.name, n.verdict);
            }
        }
        if !self.rules.is_empty() {
            let _ = writeln!(out, "rules, in order:");
            for n in &self.rules {
                let _ = writeln!(out, "  {}: {}", n.name, n.verdict);
            }
        }
        out
    }
}
