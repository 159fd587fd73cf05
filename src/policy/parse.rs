//! Reading the TOML of each policy file into the file model, entry by entry,
//! so that one problem never hides another.
//!
//! - A syntax error does not stop the file: the parser recovers and every
//!   syntax error is reported; the entries it could read are still checked.
//! - Each `[[agent]]`, `[[scope]]`, `[[sentinel]]`, `[[exception]]` and
//!   `[roles]` is read on its own. An unknown key is reported and left out,
//!   and the entry is read again without it, so its other problems are
//!   found too and nothing else is affected by the typo.
//! - An entry that still cannot be read (a missing field, a wrong type)
//!   leaves its name behind when it has one, so that references to it are
//!   not reported as unknown: that would only be a consequence.

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::file::{AgentFile, ExceptionFile, RolesFile, ScopeFile, SentinelFile};
use super::report::{Report, Source};

/// How many unknown keys one entry may have before it is given up on.
const MAX_UNKNOWN_KEYS: usize = 32;

/// Every entry of every file, with the index of its file.
#[derive(Default)]
pub(super) struct Entries {
    pub agents: Vec<(usize, Spanned<AgentFile>)>,
    pub scopes: Vec<(usize, Spanned<ScopeFile>)>,
    pub sentinels: Vec<(usize, Spanned<SentinelFile>)>,
    pub exceptions: Vec<(usize, Spanned<ExceptionFile>)>,
    pub roles: Option<(usize, Spanned<RolesFile>)>,
    /// Names of `[[scope]]` entries that could not be read.
    pub broken_scopes: Vec<String>,
    /// Names of `[[agent]]` entries that could not be read.
    pub broken_agents: Vec<String>,
}

/// Reads every source, reporting each problem at its place.
pub(super) fn parse_sources(report: &mut Report<'_>, sources: &[Source]) -> Entries {
    let mut entries = Entries::default();
    for (index, source) in sources.iter().enumerate() {
        let (root, errors) = DeTable::parse_recoverable(&source.text);
        for e in errors {
            report.syntax_error(index, e.span().unwrap_or(0..0), clean(e.message()));
        }
        parse_file(report, index, root.into_inner(), &mut entries);
    }
    entries
}

fn parse_file(report: &mut Report<'_>, file: usize, root: DeTable<'_>, entries: &mut Entries) {
    for (key, value) in root {
        match key.get_ref().as_ref() {
            "agent" => {
                for entry in tables(report, file, "agent", value) {
                    match read_entry::<AgentFile>(report, file, entry) {
                        Ok(agent) => entries.agents.push((file, agent)),
                        Err(name) => entries.broken_agents.extend(name),
                    }
                }
            }
            "scope" => {
                for entry in tables(report, file, "scope", value) {
                    match read_entry::<ScopeFile>(report, file, entry) {
                        Ok(scope) => entries.scopes.push((file, scope)),
                        Err(name) => entries.broken_scopes.extend(name),
                    }
                }
            }
            "sentinel" => {
                for entry in tables(report, file, "sentinel", value) {
                    if let Ok(s) = read_entry::<SentinelFile>(report, file, entry) {
                        entries.sentinels.push((file, s));
                    }
                }
            }
            "exception" => {
                for entry in tables(report, file, "exception", value) {
                    if let Ok(e) = read_entry::<ExceptionFile>(report, file, entry) {
                        entries.exceptions.push((file, e));
                    }
                }
            }
            "roles" => {
                if !matches!(value.get_ref(), DeValue::Table(_)) {
                    report.error(
                        file,
                        value.span(),
                        "`roles` must be a table (`[roles]`)".into(),
                    );
                    continue;
                }
                if let Ok(roles) = read_entry::<RolesFile>(report, file, value) {
                    if entries.roles.is_some() {
                        report.error(
                            file,
                            roles.span(),
                            "`[roles]` is defined in two files".into(),
                        );
                    }
                    entries.roles = Some((file, roles));
                }
            }
            // After a syntax error, the recovered keys may be fragments.
            other => report.unknown_name(file, key.span(), format!("unknown field `{other}`")),
        }
    }
}

/// The tables of an array of tables such as `[[agent]]`.
fn tables<'i>(
    report: &mut Report<'_>,
    file: usize,
    name: &str,
    value: Spanned<DeValue<'i>>,
) -> Vec<Spanned<DeValue<'i>>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items.iter() {
                if matches!(item.get_ref(), DeValue::Table(_)) {
                    out.push(item.clone());
                } else {
                    report.error(
                        file,
                        item.span(),
                        format!("each `{name}` must be a table (`[[{name}]]`)"),
                    );
                }
            }
            out
        }
        _ => {
            report.error(
                file,
                span,
                format!("`{name}` must be a list of tables (`[[{name}]]`)"),
            );
            Vec::new()
        }
    }
}

/// Reads one entry. An unknown key is reported and the entry read again
/// without it; any other problem is reported and gives the entry up,
/// answering its `name` when it has one.
fn read_entry<'i, T: Deserialize<'i>>(
    report: &mut Report<'_>,
    file: usize,
    mut entry: Spanned<DeValue<'i>>,
) -> Result<Spanned<T>, Option<String>> {
    for _ in 0..MAX_UNKNOWN_KEYS {
        let attempt = ValueDeserializer::from(entry.clone());
        match Spanned::<T>::deserialize(attempt) {
            Ok(value) => return Ok(value),
            Err(e) => {
                let span = e.span().unwrap_or_else(|| entry.span());
                let message = clean(e.message());
                report.error(file, span.clone(), message.clone());
                let unknown_key = message.starts_with("unknown field");
                if !(unknown_key && remove_key_at(entry.get_mut(), span.start)) {
                    return Err(name_of(&entry));
                }
            }
        }
    }
    Err(name_of(&entry))
}

/// Removes the key that starts at `offset`, at whatever depth; whether there
/// was one.
fn remove_key_at(value: &mut DeValue<'_>, offset: usize) -> bool {
    match value {
        DeValue::Table(table) => {
            let found = table.keys().find(|k| k.span().start == offset).cloned();
            if let Some(key) = found {
                return table.remove(&key).is_some();
            }
            // Not by the spans of the values: an array of tables has none
            // that covers its tables.
            table
                .iter_mut()
                .any(|(_, v)| remove_key_at(v.get_mut(), offset))
        }
        DeValue::Array(items) => items.iter_mut().any(|v| remove_key_at(v.get_mut(), offset)),
        _ => false,
    }
}

/// The `name` of an entry that could not be read, when it has a string one.
fn name_of(entry: &Spanned<DeValue<'_>>) -> Option<String> {
    let DeValue::Table(table) = entry.get_ref() else {
        return None;
    };
    table
        .get("name")
        .and_then(|v| v.get_ref().as_str())
        .map(str::to_owned)
}

/// The parser's message as this project words messages: one line, no
/// trailing period.
fn clean(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .trim_end_matches('.')
        .to_owned()
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
