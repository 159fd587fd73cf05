//! The one pure function that adjudicates a call: identity, scope (its own
//! or one an unexpired exception grants), then the scope's rules, by path or
//! by IAM action. No I/O, no clock (the caller passes `now`), deny by
//! default, and an explicit deny beats any allow.
//!
//! `policy explain` runs the very same code with a [`Trace`] that collects
//! each step; [`decide`] passes [`NoTrace`], whose steps compile to nothing,
//! so the explanation and the decision cannot disagree.

use std::sync::Arc;

use super::{AgentId, Call, Decision, Effect, Mode, Policy, Rule, Scope, ScopeId, Target};
use crate::egress::AllowPrivate;
use crate::error::Reason;

/// One step of a decision, as `policy explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The peer's names proved this agent, or none.
    Agent(Option<AgentId>),
    /// The scope the target landed in (and the exception that granted it),
    /// or none.
    Scope(Option<(ScopeId, Option<usize>)>),
    /// The scope's upstream is an address in a refused range.
    Blocked,
    /// A `CONNECT`: a host-level decision, no rules.
    Tunnel,
    /// A path rule (index in its scope) whose path matched, and whether its
    /// methods did; `trimmed` when the path matched without its trailing
    /// slash (deny rules only).
    PathRule {
        /// The rule's index in its scope.
        rule: usize,
        /// Whether the call's method is one of the rule's.
        method: bool,
        /// Matched on the path without its trailing slash.
        trimmed: bool,
    },
    /// An AWS rule was compared with the request's action and resource.
    AwsRule {
        /// The rule's id.
        id: Arc<str>,
        /// Whether the rule allows (or denies).
        allow: bool,
        /// Whether it matched.
        matches: bool,
    },
    /// The request maps to no IAM action.
    AwsUnmapped,
    /// The MCP rules' verdict on the message.
    Mcp(crate::mcp::McpVerdict),
    /// Report mode: the refusal enforce mode would have made.
    Report(Reason),
}

/// Where the steps of a decision go.
pub trait Trace {
    /// Notes a step; `step` is only called when the steps are kept.
    fn step(&mut self, step: impl FnOnce() -> Step);
}

/// Keeps nothing: what [`decide`] uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn step(&mut self, _step: impl FnOnce() -> Step) {}
}

impl Trace for Vec<Step> {
    fn step(&mut self, step: impl FnOnce() -> Step) {
        self.push(step());
    }
}

/// Adjudicates one call: pure, total, deny by default.
pub fn decide(call: &Call<'_>, policy: &Policy) -> Decision {
    decide_traced(call, policy, &mut NoTrace)
}

/// [`decide`], noting each step in `trace`.
pub fn decide_traced(call: &Call<'_>, policy: &Policy, trace: &mut impl Trace) -> Decision {
    let agent = policy.agent_for(call.peer);
    trace.step(|| Step::Agent(agent));
    let Some(agent_id) = agent else {
        return Decision::deny(Reason::UnknownAgent, None, None);
    };
    let landed = policy.scope_at(agent_id, call.target, call.now);
    trace.step(|| Step::Scope(landed));
    let Some((scope_id, exception)) = landed else {
        // An address no scope opens is named as such: it needs no DNS.
        let literal = match call.target {
            Target::Host { host, .. } | Target::Connect { host, .. } => Some(host),
            Target::Route(_) => None,
        };
        let blocked = literal.is_some_and(|host| {
            crate::egress::normalise_host(host)
                .is_ok_and(|h| AllowPrivate::default().check_literal(&h).is_err())
        });
        let reason = if blocked {
            Reason::EgressAddressBlocked
        } else {
            Reason::NoMatchingScope
        };
        return Decision::deny(reason, Some(agent_id), None);
    };
    let decision = decide_in_scope(call, policy, agent_id, scope_id, trace);
    if let Some(reason) = decision.would_deny {
        trace.step(|| Step::Report(reason));
    }
    Decision {
        exception,
        ..decision
    }
}

/// Adjudicates a call in the scope it landed in.
fn decide_in_scope(
    call: &Call<'_>,
    policy: &Policy,
    agent_id: AgentId,
    scope_id: ScopeId,
    trace: &mut impl Trace,
) -> Decision {
    let scope = &policy.scopes[scope_id];
    if scope.blocked.is_some() {
        trace.step(|| Step::Blocked);
        return Decision::deny(Reason::EgressAddressBlocked, Some(agent_id), Some(scope_id));
    }
    if let Target::Connect { .. } = call.target {
        // Inside an intercepted tunnel every request is decided on its own;
        // the tunnel itself is a host-level decision.
        trace.step(|| Step::Tunnel);
        return Decision {
            effect: Effect::Allow,
            reason: Reason::Allowed,
            agent: Some(agent_id),
            scope: Some(scope_id),
            rule: None,
            would_deny: None,
            exception: None,
        };
    }
    if let Some(mcp) = &scope.mcp {
        let path = match call.target {
            Target::Route(_) => Some(call.path),
            Target::Host { .. } | Target::Connect { .. } => scope.upstream.strip_base(call.path),
        };
        if path == Some(mcp.endpoint.as_str()) {
            return decide_mcp(call, scope, mcp, agent_id, scope_id, trace);
        }
        // A JSON-RPC message is decided as MCP wherever it is sent. Off the
        // endpoint it needs both: the path rules open its path, and the MCP
        // rules allow the message; neither can widen the other.
        if call.mcp.is_some() {
            let by_path = decide_paths(call, scope, agent_id, scope_id, trace);
            if by_path.effect == Effect::Deny {
                return by_path;
            }
            let mut by_message = decide_mcp(call, scope, mcp, agent_id, scope_id, trace);
            if by_message.would_deny.is_none() {
                by_message.would_deny = by_path.would_deny;
            }
            return by_message;
        }
    }
    if scope.aws().is_some() {
        return decide_aws(call, scope, agent_id, scope_id, trace);
    }
    decide_paths(call, scope, agent_id, scope_id, trace)
}

/// Adjudicates a call by the scope's method and path rules.
fn decide_paths(
    call: &Call<'_>,
    scope: &Scope,
    agent_id: AgentId,
    scope_id: ScopeId,
    trace: &mut impl Trace,
) -> Decision {
    // Rules are written relative to the upstream's base path.
    let path = match call.target {
        Target::Route(_) => Some(call.path),
        Target::Host { .. } | Target::Connect { .. } => scope.upstream.strip_base(call.path),
    };
    // A spelling some upstream folds into another path is refused before
    // any rule sees it (the whole path: the base path is the upstream's).
    if !scope.strictness.lenient_paths && super::path_hazard::hazard(call.path).is_some() {
        return conclude(
            Effect::Deny,
            Reason::MalformedRequest,
            None,
            scope.mode,
            agent_id,
            scope_id,
        );
    }
    // Rules of a case-insensitive scope were compiled lowercase.
    let folded;
    let path = if scope.strictness.case_insensitive_paths {
        folded = path.map(str::to_lowercase);
        folded.as_deref()
    } else {
        path
    };
    let segments: Vec<&str> = path
        .and_then(|p| p.strip_prefix('/'))
        .map(|p| p.split('/').collect())
        .unwrap_or_default();
    // Deny rules also meet the path without a trailing slash: to most
    // upstreams `/secret/` is `/secret`.
    let trimmed = match segments.split_last() {
        Some((&"", rest)) if !rest.is_empty() => rest,
        _ => &[],
    };
    let rules = &scope.rules.rules;
    let mut deny: Option<&Rule> = None;
    // The first allow rule in file order names the decision.
    let mut allow: Option<usize> = None;
    scope.rules.globs.for_each_match(&segments, |&i| {
        let rule = &rules[i];
        let method = rule.matches_method(call.method);
        trace.step(|| Step::PathRule {
            rule: i,
            method,
            trimmed: false,
        });
        if !method {
            return true;
        }
        match rule.effect {
            Effect::Deny => {
                deny = Some(rule);
                false
            }
            Effect::Allow => {
                allow = Some(allow.map_or(i, |a| a.min(i)));
                true
            }
        }
    });
    if deny.is_none() && !trimmed.is_empty() {
        scope.rules.globs.for_each_match(trimmed, |&i| {
            let rule = &rules[i];
            if rule.effect == Effect::Deny {
                let method = rule.matches_method(call.method);
                trace.step(|| Step::PathRule {
                    rule: i,
                    method,
                    trimmed: true,
                });
                if method {
                    deny = Some(rule);
                    return false;
                }
            }
            true
        });
    }
    let allow = allow.map(|i| &rules[i]);
    let (effect, reason, rule) = match (deny, allow) {
        (Some(rule), _) => (Effect::Deny, Reason::DeniedByRule, Some(rule)),
        (None, Some(rule)) => (Effect::Allow, Reason::Allowed, Some(rule)),
        (None, None) => (Effect::Deny, Reason::NoMatchingRule, None),
    };
    let rule = rule.map(|r| Arc::clone(&r.id));
    conclude(effect, reason, rule, scope.mode, agent_id, scope_id)
}

/// Adjudicates a call in a scope with an `aws` credential: by IAM action and
/// resource instead of path. A request that maps to no action is refused
/// unless the scope allows every action on every resource.
fn decide_aws(
    call: &Call<'_>,
    scope: &Scope,
    agent_id: AgentId,
    scope_id: ScopeId,
    trace: &mut impl Trace,
) -> Decision {
    let (effect, reason, rule) = match call.aws {
        None => {
            trace.step(|| Step::AwsUnmapped);
            match scope.aws_rules.iter().find(|r| r.allows_everything()) {
                Some(rule) => (Effect::Allow, Reason::Allowed, Some(&rule.id)),
                None => (Effect::Deny, Reason::AwsActionUnmapped, None),
            }
        }
        Some(request) => {
            let mut consider = |r: &&super::aws::AwsRule, allow: bool| {
                if r.allow != allow {
                    return false;
                }
                let matches = r.matches(request);
                trace.step(|| Step::AwsRule {
                    id: Arc::clone(&r.id),
                    allow,
                    matches,
                });
                matches
            };
            let deny = scope.aws_rules.iter().find(|r| consider(r, false));
            let allow = scope.aws_rules.iter().find(|r| consider(r, true));
            match (deny, allow) {
                (Some(rule), _) => (Effect::Deny, Reason::DeniedByRule, Some(&rule.id)),
                (None, Some(rule)) => (Effect::Allow, Reason::Allowed, Some(&rule.id)),
                (None, None) => (Effect::Deny, Reason::NoMatchingRule, None),
            }
        }
    };
    conclude(
        effect,
        reason,
        rule.cloned(),
        scope.mode,
        agent_id,
        scope_id,
    )
}

/// Adjudicates a request to a scope's MCP endpoint: a POST by the one
/// JSON-RPC message in its body, the session's GET stream and DELETE as
/// protocol, anything else by no rule.
fn decide_mcp(
    call: &Call<'_>,
    scope: &Scope,
    mcp: &crate::mcp::McpRules,
    agent_id: AgentId,
    scope_id: ScopeId,
    trace: &mut impl Trace,
) -> Decision {
    let verdict = match (call.method, call.mcp) {
        ("POST", Some(message)) => mcp.decide(message),
        ("POST", None) => crate::mcp::McpVerdict {
            effect: Effect::Deny,
            reason: Reason::MalformedRequest,
            rule: None,
            would_deny: None,
        },
        ("GET" | "DELETE", None) => crate::mcp::McpVerdict {
            effect: Effect::Allow,
            reason: Reason::Allowed,
            rule: None,
            would_deny: None,
        },
        _ => crate::mcp::McpVerdict {
            effect: Effect::Deny,
            reason: Reason::NoMatchingRule,
            rule: None,
            would_deny: None,
        },
    };
    trace.step(|| Step::Mcp(verdict.clone()));
    let mut decision = conclude(
        verdict.effect,
        verdict.reason,
        verdict.rule,
        scope.mode,
        agent_id,
        scope_id,
    );
    if decision.would_deny.is_none() {
        decision.would_deny = verdict.would_deny;
    }
    decision
}

/// The decision for a scope's verdict, with report mode applied.
fn conclude(
    effect: Effect,
    reason: Reason,
    rule: Option<Arc<str>>,
    mode: Mode,
    agent_id: AgentId,
    scope_id: ScopeId,
) -> Decision {
    match (effect, mode) {
        (Effect::Deny, Mode::Report) => Decision {
            effect: Effect::Allow,
            reason: Reason::Allowed,
            agent: Some(agent_id),
            scope: Some(scope_id),
            rule,
            would_deny: Some(reason),
            exception: None,
        },
        _ => Decision {
            effect,
            reason,
            agent: Some(agent_id),
            scope: Some(scope_id),
            rule,
            would_deny: None,
            exception: None,
        },
    }
}
