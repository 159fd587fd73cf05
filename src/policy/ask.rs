//! `[[scope.ask]]`: calls that wait for a person. An ask rule names HTTP
//! calls (methods and paths), AWS calls (actions and resources) or MCP tool
//! calls (tool names), who may approve them, and for how long an approval
//! request and a grant live.
//!
//! Ask is a condition on an allowed call: [`ask_for`] is consulted only
//! after `decide` allowed the call, so a deny rule still wins over ask and
//! a call no allow rule lets through is refused without asking anyone. An
//! ask rule wins over allow: a call it names goes nowhere without an
//! approval. Pure, like `decide`: no I/O, no clock.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Target;
use super::credential::duration_field;
use super::glob::PathGlob;
use super::report::Report;
use crate::identity::PeerName;

/// The longest a call may be held open waiting (`hold`).
pub const MAX_HOLD: Duration = Duration::from_secs(120);
/// How long an approval request waits for an answer by default (`ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest `ttl` and `window` may be.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// `[[scope.ask]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AskFile {
    pub id: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub paths: Option<Vec<Spanned<String>>>,
    pub actions: Option<Vec<Spanned<String>>>,
    pub resources: Option<Vec<Spanned<String>>>,
    pub tools: Option<Vec<Spanned<String>>>,
    /// Identities (`spiffe://…`, `dns:…`, `cn:…`) or the role `admins`.
    pub approvers: Spanned<Vec<Spanned<String>>>,
    /// Shown to the approver.
    pub why: Spanned<String>,
    pub ttl: Option<Spanned<String>>,
    pub uses: Option<Spanned<u32>>,
    pub window: Option<Spanned<String>>,
    /// How long the call is held open; `0s` answers at once (retry).
    pub hold: Option<Spanned<String>>,
    /// An HTTPS URL told of each new approval request.
    pub webhook: Option<Spanned<String>>,
}

/// What an ask rule names.
#[derive(Debug)]
pub enum AskOn {
    /// HTTP calls: methods (every method when `None`) and path globs.
    Http {
        /// Upper-case methods.
        methods: Option<Vec<String>>,
        /// Path globs, below the upstream's base path.
        paths: Vec<PathGlob>,
    },
    /// AWS calls by IAM action (and resource).
    Aws(super::aws::AwsRule),
    /// MCP `tools/call` messages by tool name (`*` wildcards).
    Mcp {
        /// Tool name patterns.
        tools: Vec<String>,
    },
}

/// Who may answer an approval request.
#[derive(Debug, Clone, Default)]
pub struct Approvers {
    /// Anyone with the admin role may.
    pub admins: bool,
    /// These identities may.
    pub names: Vec<PeerName>,
}

/// One compiled `[[scope.ask]]`.
#[derive(Debug)]
pub struct AskRule {
    /// The rule's id (`<scope>.ask[<n>]` when none is written).
    pub id: Arc<str>,
    /// What it names.
    pub on: AskOn,
    /// Who may approve.
    pub approvers: Approvers,
    /// Shown to the approver.
    pub why: String,
    /// How long a request waits for an answer.
    pub ttl: Duration,
    /// How many calls one grant lets through.
    pub uses: u32,
    /// How long a grant stays usable after it is given; `None`: until the
    /// request's ttl runs out.
    pub window: Option<Duration>,
    /// How long the call is held open; zero: refused at once with an
    /// approval id to retry with.
    pub hold: Duration,
    /// Told of each new request (JSON; Slack-compatible).
    pub webhook: Option<String>,
}

impl Approvers {
    /// Whether a caller with these certificate names and this admin role
    /// may answer.
    pub fn admit(&self, names: &[PeerName], is_admin: bool) -> bool {
        (self.admins && is_admin) || names.iter().any(|n| self.names.contains(n))
    }

    /// As written in policy, for the approver and the record.
    pub fn describe(&self) -> Vec<String> {
        let role = self.admins.then(|| "admins".to_owned());
        role.into_iter()
            .chain(self.names.iter().map(ToString::to_string))
            .collect()
    }
}

/// The ask rule of `scope` that names this call, if any. `call.path` is the
/// path the scope's rules matched.
pub fn ask_for<'s>(scope: &'s super::Scope, call: &super::Call<'_>) -> Option<&'s AskRule> {
    let mcp_tool = call
        .mcp
        .filter(|m| m.method == "tools/call")
        .and_then(|m| m.name);
    let path = match call.target {
        Target::Route(_) => Some(call.path),
        Target::Host { .. } | Target::Connect { .. } => scope.upstream.strip_base(call.path),
    };
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
    scope.ask.iter().find(|rule| match &rule.on {
        AskOn::Http { methods, paths } => {
            call.mcp.is_none()
                && call.aws.is_none()
                && path.is_some()
                && methods
                    .as_ref()
                    .is_none_or(|m| m.iter().any(|m| m == call.method))
                && paths.iter().any(|g| g.matches(&segments))
        }
        AskOn::Aws(rule) => call.aws.is_some_and(|request| rule.matches(request)),
        AskOn::Mcp { tools } => {
            mcp_tool.is_some_and(|tool| tools.iter().any(|t| super::aws::wildcard(t, tool)))
        }
    })
}

/// The scope's `[[scope.ask]]` list, compiled; problems reported.
pub(super) fn compile_asks(
    report: &mut Report<'_>,
    file: usize,
    scope: &str,
    asks: &[Spanned<AskFile>],
) -> Vec<AskRule> {
    asks.iter()
        .enumerate()
        .filter_map(|(i, ask)| {
            let id = ask
                .get_ref()
                .id
                .as_ref()
                .map_or_else(|| format!("{scope}.ask[{i}]"), |id| id.get_ref().clone());
            compile_ask(report, file, ask, id)
        })
        .collect()
}

fn compile_ask(
    report: &mut Report<'_>,
    file: usize,
    ask: &Spanned<AskFile>,
    id: String,
) -> Option<AskRule> {
    let before = report.problems.len();
    let a = ask.get_ref();
    let on = compile_on(report, file, ask, &id);
    let approvers = compile_approvers(report, file, &a.approvers, &id);
    if a.why.get_ref().trim().is_empty() {
        report.error(file, a.why.span(), format!("ask `{id}` needs a `why`"));
    }
    let ttl = duration_field(report, file, a.ttl.as_ref()).unwrap_or(DEFAULT_TTL);
    let window = duration_field(report, file, a.window.as_ref());
    let hold = duration_field(report, file, a.hold.as_ref()).unwrap_or(Duration::ZERO);
    for (value, field, name) in [
        (Some(ttl), a.ttl.as_ref(), "ttl"),
        (window, a.window.as_ref(), "window"),
    ] {
        if let (Some(v), Some(f)) = (value, field)
            && (v.is_zero() || v > MAX_TTL)
        {
            report.error(
                file,
                f.span(),
                format!("{name} of ask `{id}` must be more than zero and at most 24h"),
            );
        }
    }
    if let Some(f) = a.hold.as_ref()
        && hold > MAX_HOLD.min(ttl)
    {
        report.error(
            file,
            f.span(),
            format!("hold of ask `{id}` must be at most 120s and at most its ttl"),
        );
    }
    let uses = a.uses.as_ref().map_or(1, |u| *u.get_ref());
    if let Some(u) = a.uses.as_ref()
        && !(1..=100).contains(u.get_ref())
    {
        report.error(
            file,
            u.span(),
            format!("uses of ask `{id}` must be 1 to 100"),
        );
    }
    if let Some(w) = a.webhook.as_ref()
        && !w.get_ref().starts_with("https://")
    {
        report.error(
            file,
            w.span(),
            format!("webhook of ask `{id}` must be an https:// URL"),
        );
    }
    if report.problems.len() != before {
        return None;
    }
    Some(AskRule {
        id: Arc::from(id),
        on: on?,
        approvers,
        why: a.why.get_ref().clone(),
        ttl,
        uses,
        window,
        hold,
        webhook: a.webhook.as_ref().map(|w| w.get_ref().clone()),
    })
}

fn compile_on(
    report: &mut Report<'_>,
    file: usize,
    ask: &Spanned<AskFile>,
    id: &str,
) -> Option<AskOn> {
    let a = ask.get_ref();
    let kinds = [a.paths.is_some(), a.actions.is_some(), a.tools.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 || (a.methods.is_some() && a.paths.is_none()) {
        report.error(
            file,
            ask.span(),
            format!("ask `{id}` must name exactly one of `paths` (with optional `methods`), `actions` (with optional `resources`) or `tools`"),
        );
        return None;
    }
    if a.resources.is_some() && a.actions.is_none() {
        report.error(
            file,
            ask.span(),
            format!("ask `{id}` has `resources` but no `actions`"),
        );
        return None;
    }
    if let Some(paths) = &a.paths {
        let mut globs = Vec::new();
        for path in paths {
            match super::scope::compile_glob(path.get_ref()) {
                Ok(alternatives) => globs.extend(alternatives),
                Err(message) => report.error(file, path.span(), message),
            }
        }
        let methods = a.methods.as_ref().map(|methods| {
            for method in methods {
                if let Err(message) = super::scope::check_method(method.get_ref()) {
                    report.error(file, method.span(), message);
                }
            }
            methods.iter().map(|m| m.get_ref().clone()).collect()
        });
        return Some(AskOn::Http {
            methods,
            paths: globs,
        });
    }
    if let Some(actions) = &a.actions {
        let rule = super::scope::compile_aws_rule(
            report,
            (file, ask.span()),
            id,
            super::Effect::Allow,
            actions,
            a.resources.as_deref(),
        );
        return Some(AskOn::Aws(rule));
    }
    let tools = a.tools.as_ref()?;
    if tools.is_empty() {
        report.error(file, ask.span(), format!("ask `{id}` names no tools"));
    }
    Some(AskOn::Mcp {
        tools: tools.iter().map(|t| t.get_ref().clone()).collect(),
    })
}

fn compile_approvers(
    report: &mut Report<'_>,
    file: usize,
    approvers: &Spanned<Vec<Spanned<String>>>,
    id: &str,
) -> Approvers {
    let mut out = Approvers::default();
    if approvers.get_ref().is_empty() {
        report.error(
            file,
            approvers.span(),
            format!("ask `{id}` names no approvers"),
        );
    }
    for approver in approvers.get_ref() {
        match approver.get_ref().as_str() {
            "admins" => out.admins = true,
            "auditors" => report.error(
                file,
                approver.span(),
                format!("ask `{id}`: auditors read, they cannot approve"),
            ),
            text => match PeerName::parse_policy(text) {
                Ok(name) => out.names.push(name),
                Err(e) => report.error(
                    file,
                    approver.span(),
                    format!(
                        "approver `{text}` of ask `{id}` is neither `admins` nor an identity: {e}"
                    ),
                ),
            },
        }
    }
    out
}

#[cfg(test)]
#[path = "ask_tests.rs"]
mod tests;
