//! `[scope.mcp]`: the file model of a scope's MCP rules and their
//! compilation into [`crate::mcp::McpRules`], each problem reported at its
//! place in the file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::file::ScopeFile;
use super::report::{Report, compile_rate};
use super::{Effect, Mode};
use crate::mcp::rules::{Condition, JsonType, Kind, McpRule, McpRules, Names, Op, PinMode};

/// `[scope.mcp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct McpFile {
    /// The MCP endpoint path, below the upstream's base path.
    pub endpoint: Option<Spanned<String>>,
    /// The most bytes the arguments of any `tools/call` may have.
    pub max_argument_bytes: Option<Spanned<u64>>,
    /// `first-use` (default) or `off`.
    pub pin: Option<Spanned<String>>,
    /// Tool name to `sha256:<hex>`.
    pub pins: Option<BTreeMap<String, Spanned<String>>>,
    #[serde(default)]
    pub allow: Vec<Spanned<McpRuleFile>>,
    #[serde(default)]
    pub deny: Vec<Spanned<McpRuleFile>>,
    /// `[scope.mcp.results]`: what results are inspected for.
    pub results: Option<Spanned<super::mcp_results::ResultsFile>>,
}

/// `[[scope.mcp.allow]]` and `[[scope.mcp.deny]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct McpRuleFile {
    pub id: Option<Spanned<String>>,
    pub tools: Option<Vec<Spanned<String>>>,
    pub resources: Option<Vec<Spanned<String>>>,
    pub prompts: Option<Vec<Spanned<String>>>,
    /// JSON pointer to conditions.
    pub args: Option<BTreeMap<String, Spanned<ConditionFile>>>,
    /// `allow` (default) or `deny`: arguments no condition names.
    pub other_arguments: Option<Spanned<String>>,
    pub max_argument_bytes: Option<Spanned<u64>>,
    pub rate: Option<Spanned<String>>,
    pub burst: Option<Spanned<u32>>,
    pub mode: Option<Spanned<String>>,
}

/// The operators on one JSON pointer; all must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConditionFile {
    equals: Option<toml::Value>,
    not_equals: Option<toml::Value>,
    one_of: Option<Vec<toml::Value>>,
    not_one_of: Option<Vec<toml::Value>>,
    glob: Option<String>,
    not_glob: Option<String>,
    prefix: Option<String>,
    not_prefix: Option<String>,
    regex: Option<String>,
    not_regex: Option<String>,
    min: Option<f64>,
    not_min: Option<f64>,
    max: Option<f64>,
    not_max: Option<f64>,
    max_length: Option<u64>,
    not_max_length: Option<u64>,
    #[serde(rename = "type")]
    type_: Option<String>,
    not_type: Option<String>,
    present: Option<bool>,
}

/// A scope's `[scope.mcp]`, compiled, with the checks that involve the rest
/// of the scope (an `aws` credential cannot go with MCP rules).
pub(super) fn compile_scope_mcp(
    report: &mut Report<'_>,
    file: usize,
    scope: &ScopeFile,
) -> Option<Arc<McpRules>> {
    let mcp = scope.mcp.as_ref()?;
    let name = scope.name.get_ref();
    let is_aws = scope
        .credential
        .as_ref()
        .is_some_and(|c| c.get_ref().kind.get_ref() == "aws");
    if is_aws {
        report.error(
            file,
            scope.name.span(),
            format!("scope `{name}` has an `aws` credential, so it cannot have MCP rules"),
        );
    }
    Some(Arc::new(compile_mcp(report, file, mcp, name)))
}

/// Compiles `[scope.mcp]` of scope `scope`.
pub(super) fn compile_mcp(
    report: &mut Report<'_>,
    file: usize,
    mcp: &Spanned<McpFile>,
    scope: &str,
) -> McpRules {
    let here = mcp.span();
    let mcp = mcp.get_ref();
    let endpoint = match &mcp.endpoint {
        None => "/mcp".to_owned(),
        Some(e) => {
            let text = e.get_ref();
            match crate::route::normalise_path(text) {
                Ok(path) if path == *text && text.starts_with('/') => path,
                _ => {
                    report.error(
                        file,
                        e.span(),
                        format!("endpoint `{text}` must be a normalised path starting with `/`"),
                    );
                    String::new()
                }
            }
        }
    };
    let pin_mode = match mcp.pin.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
        None | Some(("first-use", _)) => PinMode::FirstUse,
        Some(("off", _)) => PinMode::Off,
        Some((other, span)) => {
            report.error(
                file,
                span,
                format!("pin `{other}` must be `first-use` or `off`"),
            );
            PinMode::FirstUse
        }
    };
    let mut pins = HashMap::new();
    for (tool, hash) in mcp.pins.iter().flatten() {
        let text = hash.get_ref();
        let valid = text.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !valid {
            report.error(
                file,
                hash.span(),
                format!("pin of tool `{tool}` must be `sha256:` and 64 lowercase hex digits (from `clawgate mcp pins`)"),
            );
        }
        pins.insert(tool.clone(), text.clone());
    }
    let mut rules = Vec::new();
    let mut ids = HashSet::new();
    for (effect, list, label) in [
        (Effect::Deny, &mcp.deny, "deny"),
        (Effect::Allow, &mcp.allow, "allow"),
    ] {
        for (i, rule) in list.iter().enumerate() {
            let id = rule.get_ref().id.as_ref().map_or_else(
                || format!("{scope}.mcp.{label}[{i}]"),
                |id| id.get_ref().clone(),
            );
            if !ids.insert(id.clone()) {
                report.error(
                    file,
                    rule.span(),
                    format!("rule id `{id}` is used twice in scope `{scope}`"),
                );
            }
            if let Some(rule) = compile_rule(report, file, rule, id, effect) {
                rules.push(rule);
            }
        }
    }
    if mcp.allow.is_empty() && mcp.deny.is_empty() {
        report.warn(
            file,
            here,
            format!("scope `{scope}` has MCP rules but no allow rule: every tool call is refused"),
        );
    }
    McpRules {
        endpoint,
        rules,
        max_argument_bytes: mcp
            .max_argument_bytes
            .as_ref()
            .map(|m| usize::try_from(*m.get_ref()).unwrap_or(usize::MAX)),
        pin_mode,
        pins,
        results: Arc::new(super::mcp_results::compile_results(
            report,
            file,
            mcp.results.as_ref(),
        )),
    }
}

fn compile_rule(
    report: &mut Report<'_>,
    file: usize,
    rule: &Spanned<McpRuleFile>,
    id: String,
    effect: Effect,
) -> Option<McpRule> {
    let span = rule.span();
    let r = rule.get_ref();
    let named: Vec<(Kind, &Vec<Spanned<String>>)> = [
        (Kind::Tool, r.tools.as_ref()),
        (Kind::Resource, r.resources.as_ref()),
        (Kind::Prompt, r.prompts.as_ref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let [(kind, names)] = named.as_slice() else {
        report.error(
            file,
            span.clone(),
            format!("rule `{id}` needs exactly one of `tools`, `resources` or `prompts`"),
        );
        return None;
    };
    let (kind, names) = (*kind, *names);
    if names.is_empty() {
        report.error(file, span.clone(), format!("rule `{id}` names nothing"));
    }
    let names = name_set(report, file, kind, names)?;
    if kind != Kind::Tool
        && (r.args.is_some() || r.other_arguments.is_some() || r.max_argument_bytes.is_some())
    {
        report.error(
            file,
            span,
            format!("rule `{id}`: argument conditions apply to `tools` rules only"),
        );
    }
    let conditions = arg_conditions(report, file, r, &id);
    let other_arguments = match r
        .other_arguments
        .as_ref()
        .map(|o| (o.get_ref().as_str(), o.span()))
    {
        None | Some(("allow", _)) => true,
        Some(("deny", _)) => false,
        Some((other, span)) => {
            report.error(
                file,
                span,
                format!("other_arguments `{other}` must be `allow` or `deny`"),
            );
            true
        }
    };
    let mode = match r.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("enforce", _)) => Mode::Enforce,
        Some(("report", _)) => Mode::Report,
        Some((other, span)) => {
            report.error(
                file,
                span,
                format!("mode `{other}` must be `enforce` or `report`"),
            );
            Mode::Enforce
        }
    };
    let rate = compile_rate(report, file, r.rate.as_ref(), r.burst.as_ref());
    Some(McpRule {
        id: Arc::from(id),
        effect,
        kind,
        names: Names(names),
        conditions,
        other_arguments,
        max_argument_bytes: r
            .max_argument_bytes
            .as_ref()
            .map(|m| usize::try_from(*m.get_ref()).unwrap_or(usize::MAX)),
        rate,
        mode,
    })
}

/// The globs a rule names; `*` in a resource URI stays within a segment.
fn name_set(
    report: &mut Report<'_>,
    file: usize,
    kind: Kind,
    names: &[Spanned<String>],
) -> Option<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for name in names {
        // Resource URIs are path-like: `*` stays within a `/` segment.
        let built = GlobBuilder::new(name.get_ref())
            .literal_separator(kind == Kind::Resource)
            .build();
        match built {
            Ok(glob) => {
                set.add(glob);
            }
            Err(e) => report.error(
                file,
                name.span(),
                format!("`{}` is not a valid glob: {}", name.get_ref(), e.kind()),
            ),
        }
    }
    set.build().ok()
}

/// A `tools` rule's argument conditions, by JSON pointer.
fn arg_conditions(
    report: &mut Report<'_>,
    file: usize,
    r: &McpRuleFile,
    id: &str,
) -> Vec<Condition> {
    let mut conditions = Vec::new();
    for (pointer, condition) in r.args.iter().flatten() {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            report.error(
                file,
                condition.span(),
                format!("`{pointer}` is not a JSON pointer (it must start with `/`)"),
            );
            continue;
        }
        let before = conditions.len();
        compile_condition(report, file, pointer, condition, &mut conditions);
        if conditions.len() == before {
            report.error(
                file,
                condition.span(),
                format!("argument `{pointer}` of rule `{id}` has no condition"),
            );
        }
    }
    conditions
}

fn json_of(
    report: &mut Report<'_>,
    file: usize,
    span: std::ops::Range<usize>,
    value: &toml::Value,
) -> serde_json::Value {
    if let toml::Value::Datetime(_) = value {
        report.error(
            file,
            span.clone(),
            "a date-time cannot be compared with JSON: write it as a string".into(),
        );
    }
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn compile_condition(
    report: &mut Report<'_>,
    file: usize,
    pointer: &str,
    condition: &Spanned<ConditionFile>,
    out: &mut Vec<Condition>,
) {
    let span = condition.span();
    let c = condition.get_ref();
    let mut push = |op: Op, negated: bool| {
        out.push(Condition {
            pointer: pointer.to_owned(),
            op,
            negated,
        });
    };
    for (value, negated) in [(&c.equals, false), (&c.not_equals, true)] {
        if let Some(v) = value {
            push(Op::Equals(json_of(report, file, span.clone(), v)), negated);
        }
    }
    for (list, negated) in [(&c.one_of, false), (&c.not_one_of, true)] {
        if let Some(list) = list {
            let values = list
                .iter()
                .map(|v| json_of(report, file, span.clone(), v))
                .collect();
            push(Op::OneOf(values), negated);
        }
    }
    for (glob, negated) in [(&c.glob, false), (&c.not_glob, true)] {
        if let Some(glob) = glob {
            match GlobBuilder::new(glob).literal_separator(true).build() {
                Ok(g) => push(Op::Glob(g.compile_matcher()), negated),
                Err(e) => report.error(
                    file,
                    span.clone(),
                    format!("`{glob}` is not a valid glob: {}", e.kind()),
                ),
            }
        }
    }
    for (prefix, negated) in [(&c.prefix, false), (&c.not_prefix, true)] {
        if let Some(prefix) = prefix {
            push(Op::Prefix(prefix.clone()), negated);
        }
    }
    for (re, negated) in [(&c.regex, false), (&c.not_regex, true)] {
        if let Some(re) = re {
            match regex::RegexBuilder::new(re).size_limit(1 << 20).build() {
                Ok(r) => push(Op::Regex(r), negated),
                Err(e) => report.error(
                    file,
                    span.clone(),
                    format!(
                        "`{re}` is not a valid regular expression: {}",
                        first_line(&e.to_string())
                    ),
                ),
            }
        }
    }
    for (n, op, negated) in [
        (c.min, Op::Min as fn(f64) -> Op, false),
        (c.not_min, Op::Min, true),
        (c.max, Op::Max, false),
        (c.not_max, Op::Max, true),
    ] {
        if let Some(n) = n {
            if n.is_finite() {
                push(op(n), negated);
            } else {
                report.error(file, span.clone(), format!("`{n}` is not a finite number"));
            }
        }
    }
    for (n, negated) in [(c.max_length, false), (c.not_max_length, true)] {
        if let Some(n) = n {
            push(
                Op::MaxLength(usize::try_from(n).unwrap_or(usize::MAX)),
                negated,
            );
        }
    }
    for (name, negated) in [(&c.type_, false), (&c.not_type, true)] {
        if let Some(name) = name {
            match JsonType::parse(name) {
                Some(t) => push(Op::Type(t), negated),
                None => report.error(file, span.clone(), format!("type `{name}` must be one of string, number, integer, boolean, object, array, null")),
            }
        }
    }
    if let Some(present) = c.present {
        push(Op::Present(present), false);
    }
}

fn first_line(text: &str) -> &str {
    text.lines().last().unwrap_or(text).trim()
}

#[cfg(test)]
#[path = "mcp_tests.rs"]
mod tests;
