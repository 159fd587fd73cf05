//! `policy diff OLD NEW`: what a policy change does, structurally (agents,
//! scopes, rules, credentials, exceptions added, removed or changed), with
//! the changes that widen what agents may do flagged as risks.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{ConnectMode, Effect, Mode, Policy, Rule, Scope};

/// A change that widens what agents may do, or weakens a guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Risk {
    /// An allow rule now admits more methods.
    WidensMethods,
    /// An allow rule now admits more paths, or a new allow rule appeared.
    WidensPaths,
    /// A scope may now reach private addresses it could not before.
    AllowPrivate,
    /// A scope's `CONNECT`s are now spliced through unseen.
    Tunnel,
    /// A deny rule was removed or narrowed.
    RemovedDeny,
    /// An exception is new or lasts longer.
    LongerException,
    /// A scope now only reports what it would refuse.
    ReportMode,
    /// An agent may now use a scope it could not before.
    NewScopeForAgent,
}

impl Risk {
    /// The flag as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::WidensMethods => "widens-methods",
            Risk::WidensPaths => "widens-paths",
            Risk::AllowPrivate => "allow-private",
            Risk::Tunnel => "tunnel",
            Risk::RemovedDeny => "removed-deny",
            Risk::LongerException => "longer-exception",
            Risk::ReportMode => "report-mode",
            Risk::NewScopeForAgent => "new-scope-for-agent",
        }
    }
}

/// One change between two policies.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// What changed: `agent research`, `scope echo`, `rule echo/read-items`.
    pub subject: String,
    /// How, in a few words.
    pub detail: String,
    /// The risk this change carries, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<Risk>,
}

/// The structural difference from `old` to `new`.
pub fn diff(old: &Policy, new: &Policy) -> Vec<Change> {
    let mut out = Vec::new();
    agents(old, new, &mut out);
    for scope in &new.scopes {
        match old.scopes.iter().find(|s| s.name == scope.name) {
            None => push(
                &mut out,
                "added",
                format!("scope {}", scope.name),
                describe(scope),
                None,
            ),
            Some(before) => scope_changes(before, scope, &mut out),
        }
    }
    for scope in &old.scopes {
        if new.scope_named(&scope.name).is_none() {
            push(
                &mut out,
                "removed",
                format!("scope {}", scope.name),
                String::new(),
                None,
            );
        }
    }
    exceptions(old, new, &mut out);
    out
}

fn push(
    out: &mut Vec<Change>,
    change: &'static str,
    subject: String,
    detail: String,
    risk: Option<Risk>,
) {
    out.push(Change {
        change,
        subject,
        detail,
        risk,
    });
}

fn describe(scope: &Scope) -> String {
    format!(
        "upstream {}://{}{} {}, {} rule(s)",
        scope.upstream.scheme,
        scope.upstream.authority(),
        scope.upstream.base_path,
        scope.connect.as_str(),
        scope.rules.rules.len() + scope.aws_rules.len()
    )
}

fn agents(old: &Policy, new: &Policy, out: &mut Vec<Change>) {
    let names = |p: &Policy, ids: &[usize]| -> BTreeSet<String> {
        ids.iter().map(|&i| p.scopes[i].name.clone()).collect()
    };
    for agent in &new.agents {
        let subject = format!("agent {}", agent.name);
        let Some(before) = old.agents.iter().find(|a| a.name == agent.name) else {
            let scopes: Vec<_> = names(new, &agent.scopes).into_iter().collect();
            push(
                out,
                "added",
                subject,
                format!("scopes {}", scopes.join(", ")),
                Some(Risk::NewScopeForAgent),
            );
            continue;
        };
        let (was, now) = (names(old, &before.scopes), names(new, &agent.scopes));
        for gained in now.difference(&was) {
            push(
                out,
                "changed",
                subject.clone(),
                format!("gains scope {gained}"),
                Some(Risk::NewScopeForAgent),
            );
        }
        for lost in was.difference(&now) {
            push(
                out,
                "changed",
                subject.clone(),
                format!("loses scope {lost}"),
                None,
            );
        }
        let ids = |a: &super::Agent| -> BTreeSet<String> {
            a.identities.iter().map(ToString::to_string).collect()
        };
        let (was, now) = (ids(before), ids(agent));
        for added in now.difference(&was) {
            push(
                out,
                "changed",
                subject.clone(),
                format!("new identity {added}"),
                None,
            );
        }
        for removed in was.difference(&now) {
            push(
                out,
                "changed",
                subject.clone(),
                format!("identity {removed} removed"),
                None,
            );
        }
    }
    for agent in &old.agents {
        if !new.agents.iter().any(|a| a.name == agent.name) {
            push(
                out,
                "removed",
                format!("agent {}", agent.name),
                String::new(),
                None,
            );
        }
    }
}

fn scope_changes(old: &Scope, new: &Scope, out: &mut Vec<Change>) {
    let subject = format!("scope {}", new.name);
    let mut changed =
        |detail: String, risk: Option<Risk>| push(out, "changed", subject.clone(), detail, risk);
    if old.upstream != new.upstream || old.route != new.route {
        changed(format!("{} (was {})", describe(new), describe(old)), None);
    }
    if old.mode != new.mode {
        let risk = (new.mode == Mode::Report).then_some(Risk::ReportMode);
        let name = |m: Mode| {
            if m == Mode::Report {
                "report"
            } else {
                "enforce"
            }
        };
        changed(
            format!("mode {} (was {})", name(new.mode), name(old.mode)),
            risk,
        );
    }
    if old.connect != new.connect {
        let risk = (new.connect == ConnectMode::Tunnel).then_some(Risk::Tunnel);
        changed(
            format!(
                "connect {} (was {})",
                new.connect.as_str(),
                old.connect.as_str()
            ),
            risk,
        );
    }
    let (was, now): (BTreeSet<_>, BTreeSet<_>) = (
        old.allow_private.entries().into_iter().collect(),
        new.allow_private.entries().into_iter().collect(),
    );
    for added in now.difference(&was) {
        changed(
            format!("allow_private gains {added}"),
            Some(Risk::AllowPrivate),
        );
    }
    let credential = |s: &Scope| {
        s.credential
            .as_deref()
            .map(|c| format!("{} {}", c.kind(), c.reference()))
    };
    if credential(old) != credential(new) {
        let show = |c: Option<String>| c.unwrap_or_else(|| "none".into());
        changed(
            format!(
                "credential {} (was {})",
                show(credential(new)),
                show(credential(old))
            ),
            None,
        );
    }
    rules(old, new, out);
}

fn rules(old: &Scope, new: &Scope, out: &mut Vec<Change>) {
    for rule in &new.rules.rules {
        let subject = format!("rule {}/{}", new.name, rule.id);
        match old.rules.rules.iter().find(|r| r.id == rule.id) {
            None => {
                let risk = (rule.effect == Effect::Allow).then_some(Risk::WidensPaths);
                push(out, "added", subject, show_rule(rule), risk);
            }
            Some(before) => rule_change(before, rule, subject, out),
        }
    }
    for rule in &old.rules.rules {
        if !new.rules.rules.iter().any(|r| r.id == rule.id) {
            let risk = (rule.effect == Effect::Deny).then_some(Risk::RemovedDeny);
            push(
                out,
                "removed",
                format!("rule {}/{}", new.name, rule.id),
                show_rule(rule),
                risk,
            );
        }
    }
    for rule in &new.aws_rules {
        let subject = format!("rule {}/{}", new.name, rule.id);
        let show = |r: &super::aws::AwsRule| {
            format!(
                "{} actions {} resources {}",
                if r.allow { "allow" } else { "deny" },
                r.actions.join(","),
                r.resources.join(",")
            )
        };
        match old.aws_rules.iter().find(|r| r.id == rule.id) {
            None => push(
                out,
                "added",
                subject,
                show(rule),
                rule.allow.then_some(Risk::WidensPaths),
            ),
            Some(before) if show(before) != show(rule) => {
                let risk = if rule.allow {
                    Risk::WidensPaths
                } else {
                    Risk::RemovedDeny
                };
                push(
                    out,
                    "changed",
                    subject,
                    format!("{} (was {})", show(rule), show(before)),
                    Some(risk),
                );
            }
            Some(_) => {}
        }
    }
    for rule in &old.aws_rules {
        if !new.aws_rules.iter().any(|r| r.id == rule.id) {
            let risk = (!rule.allow).then_some(Risk::RemovedDeny);
            push(
                out,
                "removed",
                format!("rule {}/{}", new.name, rule.id),
                String::new(),
                risk,
            );
        }
    }
}

fn show_rule(rule: &Rule) -> String {
    let methods = rule
        .methods
        .as_ref()
        .map_or_else(|| "any method".to_owned(), |m| m.join(","));
    let effect = if rule.effect == Effect::Allow {
        "allow"
    } else {
        "deny"
    };
    format!("{effect} {methods} {}", rule.paths.join(" "))
}

/// A rule kept under its id: methods and paths compared as sets.
fn rule_change(old: &Rule, new: &Rule, subject: String, out: &mut Vec<Change>) {
    if old.effect != new.effect {
        let risk = if new.effect == Effect::Allow {
            Risk::RemovedDeny
        } else {
            Risk::WidensPaths
        };
        let risk = (new.effect == Effect::Allow || old.effect == Effect::Deny).then_some(risk);
        push(
            out,
            "changed",
            subject,
            format!("{} (was {})", show_rule(new), show_rule(old)),
            risk,
        );
        return;
    }
    let methods = |r: &Rule| {
        r.methods
            .as_ref()
            .map(|m| m.iter().cloned().collect::<BTreeSet<_>>())
    };
    let (was_m, now_m) = (methods(old), methods(new));
    let more_methods = match (&was_m, &now_m) {
        (Some(_), None) => true,
        (Some(was), Some(now)) => !now.is_subset(was),
        (None, _) => false,
    };
    let fewer_methods = match (&was_m, &now_m) {
        (None, Some(_)) => true,
        (Some(was), Some(now)) => !was.is_subset(now),
        (_, None) => false,
    };
    let paths = |r: &Rule| r.paths.iter().cloned().collect::<BTreeSet<_>>();
    let (was_p, now_p) = (paths(old), paths(new));
    let more_paths = !now_p.is_subset(&was_p);
    let fewer_paths = !was_p.is_subset(&now_p);
    if !(more_methods || fewer_methods || more_paths || fewer_paths) {
        return;
    }
    let risk = match new.effect {
        Effect::Allow if more_methods => Some(Risk::WidensMethods),
        Effect::Allow if more_paths => Some(Risk::WidensPaths),
        Effect::Deny if fewer_methods || fewer_paths => Some(Risk::RemovedDeny),
        _ => None,
    };
    push(
        out,
        "changed",
        subject,
        format!("{} (was {})", show_rule(new), show_rule(old)),
        risk,
    );
}

fn exceptions(old: &Policy, new: &Policy, out: &mut Vec<Change>) {
    let show = |p: &Policy, e: &super::Exception| {
        let scopes: Vec<_> = e
            .scopes
            .iter()
            .map(|&i| p.scopes[i].name.as_str())
            .collect();
        format!(
            "agent {} scopes {} until {}",
            p.agents[e.agent].name,
            scopes.join(","),
            super::rfc3339(e.expires)
        )
    };
    for e in &new.exceptions {
        let subject = format!("exception {}", e.id);
        match old.exceptions.iter().find(|o| o.id == e.id) {
            None => push(
                out,
                "added",
                subject,
                show(new, e),
                Some(Risk::LongerException),
            ),
            Some(before) => {
                let (was, now) = (show(old, before), show(new, e));
                if was != now {
                    let risk = (e.expires > before.expires).then_some(Risk::LongerException);
                    push(out, "changed", subject, format!("{now} (was {was})"), risk);
                }
            }
        }
    }
    for e in &old.exceptions {
        if !new.exceptions.iter().any(|n| n.id == e.id) {
            push(
                out,
                "removed",
                format!("exception {}", e.id),
                show(old, e),
                None,
            );
        }
    }
}

/// The changes as text: one a line, risks flagged.
pub fn render(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes {
        let risk = c
            .risk
            .map(|r| format!("  RISK {}", r.as_str()))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<8} {}: {}{risk}\n",
            c.change, c.subject, c.detail
        ));
    }
    let risks = changes.iter().filter(|c| c.risk.is_some()).count();
    out.push_str(&format!("{} change(s), {risks} flagged\n", changes.len()));
    out
}
