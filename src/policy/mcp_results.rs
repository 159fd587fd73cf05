//! `[scope.mcp.results]`: what a scope looks for in what its MCP server
//! returns, and what it does with each kind of finding; compiled into
//! [`ResultRules`], each problem reported at its place in the file.
//! Without the table a scope gets the safe defaults
//! ([`ResultRules::default`]).

use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::report::Report;
use crate::mcp::results::{Act, ResultRules};

/// `[scope.mcp.results]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResultsFile {
    /// Values clawgate injected: `redact` (default) or `refuse`.
    injected: Option<Spanned<String>>,
    /// Well-known key formats: `redact` (default), `refuse`, `report`, `off`.
    key_formats: Option<Spanned<String>>,
    /// Invisible Unicode: `strip` (default), `refuse`, `report`, `off`.
    invisible: Option<Spanned<String>>,
    /// ANSI escape sequences: `strip` (default), `refuse`, `report`, `off`.
    ansi: Option<Spanned<String>>,
    /// Secret regexes the policy adds.
    secrets: Option<Vec<Spanned<String>>>,
    /// `redact` (default), `refuse`, `report`.
    secrets_action: Option<Spanned<String>>,
    /// Hidden-instruction regexes the policy adds.
    instructions: Option<Vec<Spanned<String>>>,
    /// `refuse` (default), `redact`, `report`.
    instructions_action: Option<Spanned<String>>,
}

/// Compiles `[scope.mcp.results]` (or the defaults when absent).
pub(super) fn compile_results(
    report: &mut Report<'_>,
    file: usize,
    results: Option<&Spanned<ResultsFile>>,
) -> ResultRules {
    let defaults = ResultRules::default();
    let Some(results) = results else {
        return defaults;
    };
    let r = results.get_ref();
    let mut act = |field: &str, value: &Option<Spanned<String>>, allowed: &[&str], default| {
        let Some(value) = value else {
            return default;
        };
        let text = value.get_ref().as_str();
        if !allowed.contains(&text) {
            let list = allowed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ");
            report.error(
                file,
                value.span(),
                format!("`{field}` is `{text}`; it must be one of {list}"),
            );
            return default;
        }
        match text {
            "redact" => Act::Redact,
            "strip" => Act::Strip,
            "refuse" => Act::Refuse,
            "report" => Act::Report,
            _ => Act::Off,
        }
    };
    let findings = ["redact", "refuse", "report", "off"];
    let hidden = ["strip", "refuse", "report", "off"];
    let patterns = ["redact", "refuse", "report"];
    let injected = act("injected", &r.injected, &["redact", "refuse"], Act::Redact);
    let key_formats = act(
        "key_formats",
        &r.key_formats,
        &findings,
        defaults.key_formats,
    );
    let invisible = act("invisible", &r.invisible, &hidden, defaults.invisible);
    let ansi = act("ansi", &r.ansi, &hidden, defaults.ansi);
    let secrets_action = act("secrets_action", &r.secrets_action, &patterns, Act::Redact);
    let instructions_action = act(
        "instructions_action",
        &r.instructions_action,
        &patterns,
        Act::Refuse,
    );
    let secrets = alternation(report, file, r.secrets.as_deref()).map(|re| (re, secrets_action));
    let instructions =
        alternation(report, file, r.instructions.as_deref()).map(|re| (re, instructions_action));
    ResultRules {
        injected,
        key_formats,
        invisible,
        ansi,
        secrets,
        instructions,
    }
}

/// The patterns as one alternation; each is checked on its own first, so an
/// error names the one at fault.
fn alternation(
    report: &mut Report<'_>,
    file: usize,
    patterns: Option<&[Spanned<String>]>,
) -> Option<Regex> {
    let patterns = patterns.filter(|p| !p.is_empty())?;
    let mut ok = true;
    for pattern in patterns {
        let text = pattern.get_ref();
        let problem = match build(text) {
            Ok(re) if re.is_match("") => Some("it matches the empty text".to_owned()),
            Ok(_) => None,
            Err(e) => Some(e.to_string().lines().last().unwrap_or("").trim().to_owned()),
        };
        if let Some(problem) = problem {
            ok = false;
            report.error(
                file,
                pattern.span(),
                format!("`{text}` is not a usable pattern: {problem}"),
            );
        }
    }
    if !ok {
        return None;
    }
    let joined = patterns
        .iter()
        .map(|p| format!("(?:{})", p.get_ref()))
        .collect::<Vec<_>>()
        .join("|");
    build(&joined).ok()
}

fn build(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).size_limit(1 << 20).build()
}

#[cfg(test)]
#[path = "mcp_results_tests.rs"]
mod tests;
