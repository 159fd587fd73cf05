//! Loading a policy directory: read every `*.toml`, validate everything, then
//! compile the index. All or nothing: any problem anywhere means no policy,
//! and every problem is reported with its file, line and column.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use toml::Spanned;

use super::credential::compile_sentinels;
use super::exception::{compile_exceptions, compile_roles};
use super::file::{AgentFile, ExceptionFile, PolicyFile, RolesFile, ScopeFile, SentinelFile};
use super::scope::{compile_scope, placeholder_scope};
use super::{Agent, Policy, ScopeId};
use crate::identity::PeerName;

/// What loading needs from the outside world besides the files.
pub struct LoadOptions<'a> {
    /// Looks up an environment variable (the process environment in
    /// production; tests pass a map so they never mutate the environment).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The time exceptions are judged against.
    pub now: SystemTime,
    /// How far ahead an exception may expire.
    pub max_exception: Duration,
}

impl<'a> LoadOptions<'a> {
    /// Options with the clock read now and the default exception maximum.
    pub fn new(env: &'a dyn Fn(&str) -> Option<String>) -> LoadOptions<'a> {
        LoadOptions {
            env,
            now: SystemTime::now(),
            max_exception: super::exception::DEFAULT_MAX_EXCEPTION,
        }
    }
}

impl fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions").finish_non_exhaustive()
    }
}

/// One problem (or warning) at a place in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file, as found in the directory.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is about the whole file.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Lowercase, no trailing period, user input in backticks.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

/// A policy directory that did not validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// Every problem found, in file order.
    pub problems: Vec<PolicyError>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// A file's path and text, kept to turn byte spans into lines and columns.
struct Source {
    path: PathBuf,
    text: String,
}

/// Collects problems and warnings while validating.
pub(super) struct Report<'s> {
    sources: &'s [Source],
    pub(super) problems: Vec<PolicyError>,
    warnings: Vec<PolicyError>,
}

impl Report<'_> {
    fn at(&self, file: usize, span: Range<usize>, message: String) -> PolicyError {
        let source = &self.sources[file];
        let (line, col) = locate(&source.text, span.start);
        PolicyError {
            file: source.path.clone(),
            line,
            col,
            message,
        }
    }

    pub(super) fn error(&mut self, file: usize, span: Range<usize>, message: String) {
        let e = self.at(file, span, message);
        self.problems.push(e);
    }

    pub(super) fn warn(&mut self, file: usize, span: Range<usize>, message: String) {
        let w = self.at(file, span, message);
        self.warnings.push(w);
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn locate(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Every `*.toml` file in `dir`, sorted.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read policy directory: {e}"))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err("no `*.toml` policy files found".into());
    }
    Ok(paths)
}

fn hash_file(hasher: &mut Sha256, path: &Path, text: &str) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    hasher.update(name.unwrap_or_default().as_bytes());
    hasher.update([0]);
    hasher.update((text.len() as u64).to_be_bytes());
    hasher.update(text.as_bytes());
}

/// The digest the files in `dir` have now, as [`load`] would compute it,
/// without validating them.
pub fn disk_digest(dir: &Path) -> Result<String, String> {
    let mut hasher = Sha256::new();
    for path in policy_files(dir)? {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        hash_file(&mut hasher, &path, &text);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Loads, validates and compiles every `*.toml` file in `dir`. On success,
/// returns the policy and any warnings; on failure, every problem found.
pub fn load(
    dir: &Path,
    options: &LoadOptions<'_>,
) -> Result<(Policy, Vec<PolicyError>), LoadError> {
    let whole_dir = |message: String| LoadError {
        problems: vec![PolicyError {
            file: dir.to_path_buf(),
            line: 0,
            col: 0,
            message,
        }],
    };
    let paths = policy_files(dir).map_err(whole_dir)?;

    let mut sources = Vec::with_capacity(paths.len());
    let mut read_problems = Vec::new();
    let mut hasher = Sha256::new();
    for path in &paths {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                hash_file(&mut hasher, path, &text);
                sources.push(Source {
                    path: path.clone(),
                    text,
                });
            }
            Err(e) => read_problems.push(PolicyError {
                file: path.clone(),
                line: 0,
                col: 0,
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));

    let mut report = Report {
        sources: &sources,
        problems: read_problems,
        warnings: Vec::new(),
    };
    let mut agents: Vec<(usize, Spanned<AgentFile>)> = Vec::new();
    let mut scopes: Vec<(usize, Spanned<ScopeFile>)> = Vec::new();
    let mut sentinels: Vec<(usize, Spanned<SentinelFile>)> = Vec::new();
    let mut exceptions: Vec<(usize, Spanned<ExceptionFile>)> = Vec::new();
    let mut roles: Option<(usize, Spanned<RolesFile>)> = None;
    for (index, source) in sources.iter().enumerate() {
        match toml::from_str::<PolicyFile>(&source.text) {
            Ok(file) => {
                agents.extend(file.agent.into_iter().map(|a| (index, a)));
                scopes.extend(file.scope.into_iter().map(|s| (index, s)));
                sentinels.extend(file.sentinel.into_iter().map(|s| (index, s)));
                exceptions.extend(file.exception.into_iter().map(|e| (index, e)));
                if let Some(r) = file.roles {
                    if roles.is_some() {
                        report.error(index, r.span(), "`[roles]` is defined in two files".into());
                    }
                    roles = Some((index, r));
                }
            }
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                report.error(index, span, e.message().trim_end_matches('.').to_owned());
            }
        }
    }

    let mut compiled_scopes = Vec::with_capacity(scopes.len());
    let mut scope_ids: HashMap<String, ScopeId> = HashMap::new();
    let mut routes: HashMap<String, ScopeId> = HashMap::new();
    let mut by_host: HashMap<String, Vec<ScopeId>> = HashMap::new();
    let mut rule_count = 0;
    for (file, scope) in &scopes {
        let id = compiled_scopes.len();
        let name = scope.get_ref().name.get_ref();
        if scope_ids.insert(name.clone(), id).is_some() {
            report.error(
                *file,
                scope.get_ref().name.span(),
                format!("scope `{name}` is defined twice"),
            );
        }
        if let Some(compiled) = compile_scope(&mut report, *file, scope.get_ref(), dir, options) {
            if let Some(route) = &compiled.route
                && route == crate::route::RESERVED_ROUTE
            {
                let span = scope
                    .get_ref()
                    .route
                    .as_ref()
                    .map_or(scope.span(), |r| r.span());
                report.error(
                    *file,
                    span,
                    format!("route `{route}` is reserved for clawgate's own endpoints"),
                );
            }
            if let Some(route) = &compiled.route
                && routes.insert(route.clone(), id).is_some()
            {
                let span = scope
                    .get_ref()
                    .route
                    .as_ref()
                    .map_or(scope.span(), |r| r.span());
                report.error(
                    *file,
                    span,
                    format!("route `{route}` is used by two scopes"),
                );
            }
            by_host
                .entry(compiled.upstream.host.clone())
                .or_default()
                .push(id);
            rule_count += compiled.rules.rules.len()
                + compiled.aws_rules.len()
                + compiled.mcp.as_ref().map_or(0, |m| m.rules.len());
            compiled_scopes.push(compiled);
        } else {
            // Keep ids aligned with `scopes` even when a scope is broken; the
            // load fails anyway, this only keeps later messages accurate.
            compiled_scopes.push(placeholder_scope(name));
        }
    }

    let mut compiled_agents: Vec<Agent> = Vec::with_capacity(agents.len());
    let mut by_identity: HashMap<PeerName, usize> = HashMap::new();
    let mut agent_names: HashSet<String> = HashSet::new();
    for (file, agent) in &agents {
        let id = compiled_agents.len();
        let AgentFile {
            name,
            identities,
            scopes: scope_names,
            vend_token_file,
            rate,
            burst,
        } = agent.get_ref();
        let rate = compile_rate(&mut report, *file, rate.as_ref(), burst.as_ref());
        let vend_token = vend_token_file.as_ref().and_then(|path| {
            match crate::credentials::read_secret_file(&dir.join(path.get_ref())) {
                Some(token) if token.len() >= 32 => {
                    Some(<[u8; 32]>::from(Sha256::digest(token.as_bytes())))
                }
                Some(_) => {
                    report.error(
                        *file,
                        path.span(),
                        "a vending token must be at least 32 characters".into(),
                    );
                    None
                }
                None => {
                    report.error(
                        *file,
                        path.span(),
                        format!("cannot read vending token file `{}`", path.get_ref()),
                    );
                    None
                }
            }
        });
        if !valid_name(name.get_ref()) {
            report.error(
                *file,
                name.span(),
                format!(
                    "agent name `{}` must be 1 to 64 of a-z, 0-9, `.`, `_`, `-`",
                    name.get_ref()
                ),
            );
        }
        if !agent_names.insert(name.get_ref().clone()) {
            report.error(
                *file,
                name.span(),
                format!("agent `{}` is defined twice", name.get_ref()),
            );
        }
        if identities.is_empty() {
            report.error(
                *file,
                agent.span(),
                format!("agent `{}` has no identities", name.get_ref()),
            );
        }
        let mut parsed = Vec::with_capacity(identities.len());
        for identity in identities {
            match PeerName::parse_policy(identity.get_ref()) {
                Ok(peer) => {
                    if parsed.contains(&peer) {
                        report.error(
                            *file,
                            identity.span(),
                            format!(
                                "identity `{}` is listed twice in agent `{}`",
                                identity.get_ref(),
                                name.get_ref()
                            ),
                        );
                        continue;
                    }
                    if let Some(other) = by_identity.insert(peer.clone(), id) {
                        let other_name = compiled_agents
                            .get(other)
                            .map_or(name.get_ref().as_str(), |a| a.name.as_str());
                        report.error(
                            *file,
                            identity.span(),
                            format!(
                                "identity `{}` is claimed by agents `{other_name}` and `{}`",
                                identity.get_ref(),
                                name.get_ref()
                            ),
                        );
                    }
                    parsed.push(peer);
                }
                Err(e) => report.error(*file, identity.span(), e.to_string()),
            }
        }
        let mut agent_scopes = Vec::with_capacity(scope_names.len());
        let mut hosts: HashMap<&str, &str> = HashMap::new();
        for scope_name in scope_names {
            let Some(&scope_id) = scope_ids.get(scope_name.get_ref()) else {
                report.error(
                    *file,
                    scope_name.span(),
                    format!(
                        "unknown scope `{}` in agent `{}`",
                        scope_name.get_ref(),
                        name.get_ref()
                    ),
                );
                continue;
            };
            if agent_scopes.contains(&scope_id) {
                report.error(
                    *file,
                    scope_name.span(),
                    format!(
                        "scope `{}` is listed twice in agent `{}`",
                        scope_name.get_ref(),
                        name.get_ref()
                    ),
                );
                continue;
            }
            // One scope per host and agent, whatever the port: a forward-proxy
            // request that names no port must select exactly one scope.
            let upstream = &compiled_scopes[scope_id].upstream;
            if let Some(first) = hosts.insert(upstream.host.as_str(), scope_name.get_ref()) {
                report.error(
                    *file,
                    scope_name.span(),
                    format!(
                        "agent `{}` has two scopes for host `{}`: `{first}` and `{}`",
                        name.get_ref(),
                        upstream.host,
                        scope_name.get_ref()
                    ),
                );
            }
            agent_scopes.push(scope_id);
        }
        compiled_agents.push(Agent {
            name: name.get_ref().clone(),
            identities: parsed,
            scopes: agent_scopes,
            vend_token,
            rate,
        });
    }

    let sentinels = compile_sentinels(&mut report, &sentinels, dir, options, &agent_names);
    let agent_ids: HashMap<String, usize> = compiled_agents
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.clone(), i))
        .collect();
    let exceptions = compile_exceptions(&mut report, &exceptions, &agent_ids, &scope_ids, options);
    let roles = compile_roles(&mut report, roles.as_ref());

    if !report.problems.is_empty() {
        let mut problems = report.problems;
        problems.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        return Err(LoadError { problems });
    }
    let warnings = report.warnings;
    Ok((
        Policy {
            agents: compiled_agents,
            scopes: compiled_scopes,
            by_identity,
            by_route: routes,
            by_host,
            digest,
            files: paths,
            rule_count,
            sentinels,
            exceptions,
            roles,
        },
        warnings,
    ))
}

/// A `rate` with its optional `burst`, reported at its place.
pub(super) fn compile_rate(
    report: &mut Report<'_>,
    file: usize,
    rate: Option<&Spanned<String>>,
    burst: Option<&Spanned<u32>>,
) -> Option<crate::limits::Rate> {
    match (rate, burst) {
        (None, None) => None,
        (None, Some(b)) => {
            report.error(file, b.span(), "`burst` needs a `rate`".into());
            None
        }
        (Some(rate), burst) => {
            match crate::limits::Rate::parse(rate.get_ref(), burst.map(|b| *b.get_ref())) {
                Ok(r) => Some(r),
                Err(e) => {
                    let span = match (&e, burst) {
                        (crate::limits::RateError::ZeroBurst, Some(b)) => b.span(),
                        _ => rate.span(),
                    };
                    report.error(file, span, e.to_string());
                    None
                }
            }
        }
    }
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
pub(super) fn locate_for_tests(text: &str, offset: usize) -> (usize, usize) {
    locate(text, offset)
}
