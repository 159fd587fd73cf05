//! Loading a policy directory: read every `*.toml`, validate everything, then
//! compile the index. All or nothing: any problem anywhere means no policy,
//! and every problem is reported with its file, line and column.
//!
//! The steps, in order: [`read_sources`] (and the digest), [`parse_sources`]
//! (entry by entry), [`compile_scopes`], [`compile_agents`] (which need the
//! scopes), then sentinels, exceptions and roles (which need both).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use toml::Spanned;

use super::credential::compile_sentinels;
use super::exception::{compile_exceptions, compile_roles};
use super::file::AgentFile;
use super::parse::{Entries, parse_sources};
use super::proxy_key::{SeenKeys, compile_proxy_keys};
use super::report::{
    LoadError, LoadOptions, PolicyError, Report, Source, compile_rate, valid_name,
};
use super::scope::{compile_scope, placeholder_scope};
use super::{Agent, AgentId, Policy, Scope, ScopeId};
use crate::identity::PeerName;

/// Every `*.toml` file in `dir`, sorted; `*.test.toml` files are the
/// policy's test cases (`policy test`), not policy.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read policy directory: {e}"))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml") && p.is_file())
        .filter(|p| !super::cases::is_test_file(p))
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
    let paths = policy_files(dir).map_err(|message| LoadError {
        problems: vec![PolicyError {
            file: dir.to_path_buf(),
            line: 0,
            col: 0,
            message,
        }],
    })?;
    let (sources, unreadable, digest) = read_sources(&paths);
    let mut report = Report::new(&sources, unreadable);
    let entries = parse_sources(&mut report, &sources);
    let scopes = compile_scopes(&mut report, &entries, dir, options);
    let agents = compile_agents(&mut report, &entries, &scopes, dir, options.now);
    let sentinels = compile_sentinels(&mut report, &entries.sentinels, dir, options, &agents.names);
    super::strictness::check_sentinel_tunnels(
        &mut report,
        &entries.sentinels,
        &agents.agents,
        &scopes.scopes,
    );
    let exceptions = compile_exceptions(
        &mut report,
        &entries.exceptions,
        &agents.ids,
        &scopes.ids,
        options,
    );
    let roles = compile_roles(&mut report, entries.roles.as_ref());

    if !report.problems.is_empty() {
        let mut problems = report.problems;
        problems.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        return Err(LoadError { problems });
    }
    let warnings = report.warnings;
    Ok((
        Policy {
            agents: agents.agents,
            scopes: scopes.scopes,
            by_identity: agents.by_identity,
            by_route: scopes.routes,
            by_host: scopes.by_host,
            digest,
            files: paths,
            rule_count: scopes.rule_count,
            sentinels,
            exceptions,
            roles,
        },
        warnings,
    ))
}

/// Reads every file: the sources, a problem for each file that cannot be
/// read, and the digest over what was read.
fn read_sources(paths: &[PathBuf]) -> (Vec<Source>, Vec<PolicyError>, String) {
    let mut sources = Vec::with_capacity(paths.len());
    let mut problems = Vec::new();
    let mut hasher = Sha256::new();
    for path in paths {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                hash_file(&mut hasher, path, &text);
                sources.push(Source {
                    path: path.clone(),
                    text,
                });
            }
            Err(e) => problems.push(PolicyError {
                file: path.clone(),
                line: 0,
                col: 0,
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    (sources, problems, digest)
}

/// The compiled scopes and their indexes.
struct ScopeIndex {
    scopes: Vec<Scope>,
    ids: HashMap<String, ScopeId>,
    routes: HashMap<String, ScopeId>,
    by_host: HashMap<String, Vec<ScopeId>>,
    rule_count: usize,
}

fn compile_scopes(
    report: &mut Report<'_>,
    entries: &Entries,
    dir: &Path,
    options: &LoadOptions<'_>,
) -> ScopeIndex {
    let mut index = ScopeIndex {
        scopes: Vec::with_capacity(entries.scopes.len()),
        ids: HashMap::new(),
        routes: HashMap::new(),
        by_host: HashMap::new(),
        rule_count: 0,
    };
    for (file, scope) in &entries.scopes {
        let id = index.scopes.len();
        let name = scope.get_ref().name.get_ref();
        if index.ids.insert(name.clone(), id).is_some() {
            report.error(
                *file,
                scope.get_ref().name.span(),
                format!("scope `{name}` is defined twice"),
            );
        }
        let Some(compiled) = compile_scope(report, *file, scope.get_ref(), dir, options) else {
            // Keep ids aligned with the entries even when a scope is broken;
            // the load fails anyway, this only keeps later messages accurate.
            index.scopes.push(placeholder_scope(name));
            continue;
        };
        if let Some(route) = &compiled.route {
            let span = scope
                .get_ref()
                .route
                .as_ref()
                .map_or(scope.span(), Spanned::span);
            if route == crate::route::RESERVED_ROUTE {
                report.error(
                    *file,
                    span.clone(),
                    format!("route `{route}` is reserved for clawgate's own endpoints"),
                );
            }
            if index.routes.insert(route.clone(), id).is_some() {
                report.error(
                    *file,
                    span,
                    format!("route `{route}` is used by two scopes"),
                );
            }
        }
        index
            .by_host
            .entry(compiled.upstream.host.clone())
            .or_default()
            .push(id);
        index.rule_count += compiled.rules.rules.len()
            + compiled.aws_rules.len()
            + compiled.mcp.as_ref().map_or(0, |m| m.rules.len());
        index.scopes.push(compiled);
    }
    // A scope whose entry could not be read at all is still a name: agents
    // and exceptions naming it are not wrong, the scope is.
    for name in &entries.broken_scopes {
        if !index.ids.contains_key(name) {
            index.ids.insert(name.clone(), index.scopes.len());
            index.scopes.push(placeholder_scope(name));
        }
    }
    index
}

/// The compiled agents and their indexes.
struct AgentIndex {
    agents: Vec<Agent>,
    by_identity: HashMap<PeerName, AgentId>,
    names: HashSet<String>,
    ids: HashMap<String, AgentId>,
    /// Proxy key ids and hashes seen so far: each is unique in the policy.
    proxy_keys: SeenKeys,
}

fn compile_agents(
    report: &mut Report<'_>,
    entries: &Entries,
    scopes: &ScopeIndex,
    dir: &Path,
    now: SystemTime,
) -> AgentIndex {
    let mut index = AgentIndex {
        agents: Vec::with_capacity(entries.agents.len()),
        by_identity: HashMap::new(),
        names: HashSet::new(),
        ids: HashMap::new(),
        proxy_keys: SeenKeys::default(),
    };
    for (file, agent) in &entries.agents {
        let compiled = compile_agent(report, *file, agent, scopes, &mut index, dir, now);
        index.agents.push(compiled);
    }
    for name in &entries.broken_agents {
        if index.names.insert(name.clone()) {
            index.agents.push(Agent {
                name: name.clone(),
                identities: Vec::new(),
                scopes: Vec::new(),
                vend_token: None,
                proxy_keys: Vec::new(),
                rate: None,
            });
        }
    }
    index.ids = index
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.clone(), i))
        .collect();
    index
}

/// One `[[agent]]`; its identities are claimed in `index` as it goes.
fn compile_agent(
    report: &mut Report<'_>,
    file: usize,
    agent: &Spanned<AgentFile>,
    scopes: &ScopeIndex,
    index: &mut AgentIndex,
    dir: &Path,
    now: SystemTime,
) -> Agent {
    let a = agent.get_ref();
    let name = a.name.get_ref();
    if !valid_name(name) {
        report.error(
            file,
            a.name.span(),
            format!("agent name `{name}` must be 1 to 64 of a-z, 0-9, `.`, `_`, `-`"),
        );
    }
    if !index.names.insert(name.clone()) {
        report.error(
            file,
            a.name.span(),
            format!("agent `{name}` is defined twice"),
        );
    }
    if a.identities.is_empty() {
        report.error(
            file,
            agent.span(),
            format!("agent `{name}` has no identities"),
        );
    }
    Agent {
        name: name.clone(),
        identities: agent_identities(report, file, a, index),
        scopes: agent_scopes(report, file, a, scopes),
        vend_token: vend_token(report, file, a, dir),
        proxy_keys: compile_proxy_keys(
            report,
            file,
            name,
            &a.proxy_key,
            &mut index.proxy_keys,
            now,
        ),
        rate: compile_rate(report, file, a.rate.as_ref(), a.burst.as_ref()),
    }
}

/// The identities of an agent, each claimed by one agent only.
fn agent_identities(
    report: &mut Report<'_>,
    file: usize,
    agent: &AgentFile,
    index: &mut AgentIndex,
) -> Vec<PeerName> {
    let id = index.agents.len();
    let name = agent.name.get_ref();
    let mut parsed = Vec::with_capacity(agent.identities.len());
    for identity in &agent.identities {
        let peer = match PeerName::parse_policy(identity.get_ref()) {
            Ok(peer) => peer,
            Err(e) => {
                report.error(file, identity.span(), e.to_string());
                continue;
            }
        };
        if parsed.contains(&peer) {
            report.error(
                file,
                identity.span(),
                format!(
                    "identity `{}` is listed twice in agent `{name}`",
                    identity.get_ref()
                ),
            );
            continue;
        }
        if let Some(other) = index.by_identity.insert(peer.clone(), id) {
            let other_name = index
                .agents
                .get(other)
                .map_or(name.as_str(), |a| a.name.as_str());
            report.error(
                file,
                identity.span(),
                format!(
                    "identity `{}` is claimed by agents `{other_name}` and `{name}`",
                    identity.get_ref()
                ),
            );
        }
        parsed.push(peer);
    }
    parsed
}

/// The scopes an agent lists, each known, once, and one per host.
fn agent_scopes(
    report: &mut Report<'_>,
    file: usize,
    agent: &AgentFile,
    scopes: &ScopeIndex,
) -> Vec<ScopeId> {
    let name = agent.name.get_ref();
    let mut out = Vec::with_capacity(agent.scopes.len());
    let mut hosts: HashMap<&str, &str> = HashMap::new();
    for scope_name in &agent.scopes {
        let Some(&scope_id) = scopes.ids.get(scope_name.get_ref()) else {
            report.unknown_name(
                file,
                scope_name.span(),
                format!("unknown scope `{}` in agent `{name}`", scope_name.get_ref()),
            );
            continue;
        };
        if out.contains(&scope_id) {
            report.error(
                file,
                scope_name.span(),
                format!(
                    "scope `{}` is listed twice in agent `{name}`",
                    scope_name.get_ref()
                ),
            );
            continue;
        }
        out.push(scope_id);
        // One scope per host and agent, whatever the port: a forward-proxy
        // request that names no port must select exactly one scope. A broken
        // scope has no host yet; its own error says why.
        let upstream = &scopes.scopes[scope_id].upstream;
        if upstream.host.is_empty() {
            continue;
        }
        if let Some(first) = hosts.insert(upstream.host.as_str(), scope_name.get_ref()) {
            report.error(
                file,
                scope_name.span(),
                format!(
                    "agent `{name}` has two scopes for host `{}`: `{first}` and `{}`",
                    upstream.host,
                    scope_name.get_ref()
                ),
            );
        }
    }
    out
}

/// The SHA-256 of the agent's vending token, read from its file.
fn vend_token(
    report: &mut Report<'_>,
    file: usize,
    agent: &AgentFile,
    dir: &Path,
) -> Option<[u8; 32]> {
    let path = agent.vend_token_file.as_ref()?;
    match crate::credentials::read_secret_file(&dir.join(path.get_ref())) {
        Some(token) if token.len() >= 32 => {
            Some(<[u8; 32]>::from(Sha256::digest(token.as_bytes())))
        }
        Some(_) => {
            report.error(
                file,
                path.span(),
                "a vending token must be at least 32 characters".into(),
            );
            None
        }
        None => {
            report.error(
                file,
                path.span(),
                format!("cannot read vending token file `{}`", path.get_ref()),
            );
            None
        }
    }
}
