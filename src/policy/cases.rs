//! `policy test`: test cases kept beside the policy in `*.test.toml` files,
//! each a call and the decision it must get. The loader skips these files,
//! so they never change the policy or its digest.
//!
//! ```toml
//! [[case]]
//! name = "research reads an item"
//! agent = "research"                  # or identity = "spiffe://…"
//! method = "GET"
//! url = "https://clawgate/echo/v1/items/42"
//! expect = "allow"                    # allow | deny
//! reason = "allowed"                  # optional: the reason code
//! rule = "read-items"                 # optional: the rule id, "-" for none
//! scope = "echo"                      # optional
//! ```
//!
//! Optional inputs: `headers` (a table), `body`, `mcp_tool` and `mcp_args`
//! (a table, given to the tool as JSON), `at` (RFC 3339; default now).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use toml::Spanned;

use super::probe::{Caller, Probe};
use super::{Effect, Policy};

/// Whether `path` is a test file (`*.test.toml`) rather than policy.
pub fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".test.toml"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    case: Vec<Spanned<CaseFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    name: String,
    agent: Option<String>,
    identity: Option<String>,
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    mcp_tool: Option<String>,
    mcp_args: Option<toml::Table>,
    at: Option<String>,
    expect: Expect,
    reason: Option<String>,
    rule: Option<String>,
    scope: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// A test file that cannot be read or understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct CaseError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// `file:line` of the case.
    pub location: String,
    /// The case's name.
    pub name: String,
    /// `None` when it passed; else what differed.
    pub failure: Option<String>,
    /// The decision's explanation (shown for failures).
    pub trace: String,
}

/// Runs every case of every `*.test.toml` file in `dir` against `policy`.
/// An unreadable or malformed file (or none at all) is an error naming the
/// file and line.
pub fn run_cases(dir: &Path, policy: &Policy) -> Result<Vec<CaseReport>, CaseError> {
    let whole = |file: &Path, message: String| CaseError {
        file: file.display().to_string(),
        line: 1,
        column: 1,
        message,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| whole(dir, format!("cannot read directory: {e}")))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_test_file(p) && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(whole(dir, "no `*.test.toml` files found".into()));
    }
    let mut reports = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).map_err(|e| whole(file, format!("cannot read: {e}")))?;
        let parsed: CasesFile = toml::from_str(&text).map_err(|e| {
            let (line, column) = line_col(&text, e.span().map_or(0, |s| s.start));
            CaseError {
                file: file.display().to_string(),
                line,
                column,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        for case in parsed.case {
            let (line, column) = line_col(&text, case.span().start);
            let at = |message: String| CaseError {
                file: file.display().to_string(),
                line,
                column,
                message,
            };
            let probe = probe_of(case.get_ref()).map_err(&at)?;
            let report = run_case(case.get_ref(), &probe, policy).map_err(&at)?;
            reports.push(CaseReport {
                location: format!("{}:{line}", file.display()),
                ..report
            });
        }
    }
    Ok(reports)
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn probe_of(case: &CaseFile) -> Result<Probe, String> {
    let caller = match (&case.agent, &case.identity) {
        (Some(agent), None) => Caller::Agent(agent.clone()),
        (None, Some(identity)) => Caller::Identity(identity.clone()),
        _ => {
            return Err(format!(
                "case `{}` needs exactly one of `agent` and `identity`",
                case.name
            ));
        }
    };
    let now = match &case.at {
        None => SystemTime::now(),
        Some(text) => humantime::parse_rfc3339_weak(text)
            .map_err(|e| format!("case `{}`: `at` is not RFC 3339: {e}", case.name))?,
    };
    let mcp_args = case
        .mcp_args
        .as_ref()
        .map(|t| serde_json::to_value(t).map_err(|e| e.to_string()))
        .transpose()?;
    Ok(Probe {
        caller,
        method: case.method.clone(),
        url: case.url.clone(),
        headers: case
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body: case.body.clone(),
        mcp_tool: case.mcp_tool.clone(),
        mcp_args,
        now,
    })
}

fn run_case(case: &CaseFile, probe: &Probe, policy: &Policy) -> Result<CaseReport, String> {
    let resolved = probe
        .resolve(policy)
        .map_err(|e| format!("case `{}`: {e}", case.name))?;
    let (decision, explanation) =
        resolved.with_call(policy, |call| super::explain::explain(call, policy));
    let mut differences = Vec::new();
    let effect = match decision.effect() {
        Effect::Allow => Expect::Allow,
        Effect::Deny => Expect::Deny,
    };
    if effect != case.expect {
        differences.push(format!(
            "expected {}, got {}",
            expect_name(case.expect),
            explanation.effect
        ));
    }
    if let Some(reason) = &case.reason
        && reason != explanation.reason
    {
        differences.push(format!(
            "expected reason `{reason}`, got `{}`",
            explanation.reason
        ));
    }
    if let Some(rule) = &case.rule {
        let got = decision.rule().unwrap_or("-");
        if rule != got {
            differences.push(format!("expected rule `{rule}`, got `{got}`"));
        }
    }
    if let Some(scope) = &case.scope {
        let got = explanation.scope.as_deref().unwrap_or("-");
        if scope != got {
            differences.push(format!("expected scope `{scope}`, got `{got}`"));
        }
    }
    Ok(CaseReport {
        location: String::new(),
        name: case.name.clone(),
        failure: (!differences.is_empty()).then(|| differences.join("; ")),
        trace: explanation.render(),
    })
}

fn expect_name(expect: Expect) -> &'static str {
    match expect {
        Expect::Allow => "allow",
        Expect::Deny => "deny",
    }
}
