//! Compiling one `[[scope]]`: upstream, route, mode, CA file, credential and
//! rules, each problem reported at its place in the file.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use globset::GlobBuilder;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use toml::Spanned;

use super::aws::AwsRule;
use super::credential::compile_credential;
use super::file::{RuleFile, ScopeFile};
use super::glob::{self, GlobIndex, PathGlob};
use super::report::{LoadOptions, Report, compile_rate, valid_name};
use super::scope_net::{
    check_blocked, compile_allow_private, compile_connect, compile_ports, parse_upstream,
};
use super::{ConnectMode, Effect, Mode, Reflection, Rule, RuleSet, Scope, Upstream};
use crate::credentials::Credential;

pub(super) fn placeholder_scope(name: &str) -> Scope {
    Scope {
        name: name.to_owned(),
        upstream: Upstream {
            scheme: http::uri::Scheme::HTTPS,
            host: String::new(),
            port: 0,
            base_path: String::new(),
        },
        route: None,
        mode: Mode::Enforce,
        ca_certs: Arc::new(Vec::new()),
        credential: None,
        connect: ConnectMode::Tunnel,
        allow_private: Arc::default(),
        ports: Vec::new(),
        blocked: None,
        rules: RuleSet::default(),
        aws_rules: Vec::new(),
        rate: None,
        mcp: None,
        ask: Vec::new(),
        strictness: super::Strictness::default(),
        reflection: Reflection::Redact,
    }
}

/// One `[[scope]]`, or `None` when it has any problem (each reported).
pub(super) fn compile_scope(
    report: &mut Report<'_>,
    file: usize,
    scope: &ScopeFile,
    dir: &Path,
    options: &LoadOptions<'_>,
) -> Option<Scope> {
    let before = report.problems.len();
    let name = scope.name.get_ref();
    if !valid_name(name) {
        report.error(
            file,
            scope.name.span(),
            format!("scope name `{name}` must be 1 to 64 of a-z, 0-9, `.`, `_`, `-`"),
        );
    }
    let upstream = match parse_upstream(scope.upstream.get_ref()) {
        Ok(upstream) => Some(upstream),
        Err(message) => {
            report.error(file, scope.upstream.span(), message);
            None
        }
    };
    let route = compile_route(report, file, scope);
    let mode = compile_mode(report, file, scope);
    let ca_certs = compile_ca_file(report, file, scope, dir);
    let (rules, aws_rules) = compile_rules(report, file, scope);
    let credential = scope
        .credential
        .as_ref()
        .and_then(|c| compile_credential(report, file, c, dir, options, &aws_rules));
    check_credential_fits(
        report,
        file,
        scope,
        (credential.as_ref(), upstream.as_ref()),
        (&rules, &aws_rules),
    );
    let mcp = super::mcp::compile_scope_mcp(report, file, scope);
    let connect = compile_connect(report, file, scope);
    let strictness =
        super::strictness::compile_strictness(report, file, scope, connect == ConnectMode::Tunnel);
    let allow_private = compile_allow_private(report, file, scope);
    let ports = compile_ports(report, file, scope, upstream.as_ref());
    let blocked = check_blocked(report, file, scope, upstream.as_ref(), &allow_private);
    let rate = compile_rate(report, file, scope.rate.as_ref(), scope.burst.as_ref());
    let reflection = compile_reflection(report, file, scope);
    let ask = super::ask::compile_asks(report, file, name, &scope.ask);
    if report.problems.len() != before {
        return None;
    }
    Some(Scope {
        name: name.clone(),
        upstream: upstream?,
        route,
        mode,
        ca_certs: Arc::new(ca_certs),
        credential: credential.map(Arc::new),
        connect,
        allow_private: Arc::new(allow_private),
        ports,
        blocked,
        rules,
        aws_rules,
        rate,
        mcp,
        ask,
        strictness,
        reflection,
    })
}

fn compile_reflection(report: &mut Report<'_>, file: usize, scope: &ScopeFile) -> Reflection {
    let Some(value) = scope.reflection.as_ref() else {
        return Reflection::Redact;
    };
    match value.get_ref().as_str() {
        "redact" => Reflection::Redact,
        "refuse" => Reflection::Refuse,
        "off" => Reflection::Off,
        other => {
            report.error(
                file,
                value.span(),
                format!("reflection `{other}` must be `redact`, `refuse` or `off`"),
            );
            Reflection::Redact
        }
    }
}

fn compile_route(report: &mut Report<'_>, file: usize, scope: &ScopeFile) -> Option<String> {
    let route = scope.route.as_ref()?;
    let text = route.get_ref();
    if !valid_route(text) {
        report.error(
            file,
            route.span(),
            format!("route `{text}` must be one path segment of a-z, A-Z, 0-9, `.`, `_`, `-`"),
        );
    }
    Some(text.clone())
}

fn compile_mode(report: &mut Report<'_>, file: usize, scope: &ScopeFile) -> Mode {
    match scope
        .mode
        .as_ref()
        .map(|m| (m.get_ref().as_str(), m.span()))
    {
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
    }
}

fn compile_ca_file(
    report: &mut Report<'_>,
    file: usize,
    scope: &ScopeFile,
    dir: &Path,
) -> Vec<CertificateDer<'static>> {
    let Some(ca_file) = &scope.ca_file else {
        return Vec::new();
    };
    match read_ca_file(&dir.join(ca_file.get_ref())) {
        Ok(certs) => certs,
        Err(message) => {
            report.error(
                file,
                ca_file.span(),
                format!("cannot use CA file `{}`: {message}", ca_file.get_ref()),
            );
            Vec::new()
        }
    }
}

/// The path rules (as one glob index) and the AWS rules, denies first.
fn compile_rules(
    report: &mut Report<'_>,
    file: usize,
    scope: &ScopeFile,
) -> (RuleSet, Vec<AwsRule>) {
    let name = scope.name.get_ref();
    let mut globs = Vec::new();
    let mut rules = Vec::new();
    let mut aws_rules = Vec::new();
    let mut rule_ids = HashSet::new();
    // A case-insensitive scope matches lowercase paths against lowercase
    // patterns.
    let fold = scope
        .case_insensitive_paths
        .as_ref()
        .is_some_and(|f| *f.get_ref());
    for (effect, list, label) in [
        (Effect::Deny, &scope.deny, "deny"),
        (Effect::Allow, &scope.allow, "allow"),
    ] {
        for (i, rule) in list.iter().enumerate() {
            let id = rule
                .get_ref()
                .id
                .as_ref()
                .map_or_else(|| format!("{name}.{label}[{i}]"), |id| id.get_ref().clone());
            if !rule_ids.insert(id.clone()) {
                report.error(
                    file,
                    rule.span(),
                    format!("rule id `{id}` is used twice in scope `{name}`"),
                );
            }
            if let Some(aws) = compile_action_rule(report, file, rule, &id, effect) {
                aws_rules.push(aws);
                continue;
            }
            let index = rules.len();
            let (rule, rule_globs) = compile_path_rule(report, file, rule, id, effect, fold);
            globs.extend(rule_globs.into_iter().map(|glob| (glob, index)));
            rules.push(rule);
        }
    }
    let rules = RuleSet {
        globs: GlobIndex::new(globs),
        rules,
    };
    (rules, aws_rules)
}

/// A rule with `actions`, when it has them.
fn compile_action_rule(
    report: &mut Report<'_>,
    file: usize,
    rule: &Spanned<RuleFile>,
    id: &str,
    effect: Effect,
) -> Option<AwsRule> {
    let r = rule.get_ref();
    let actions = r.actions.as_ref()?;
    if !r.paths.is_empty() || r.methods.is_some() {
        report.error(
            file,
            rule.span(),
            format!("rule `{id}` mixes `actions` with `paths` or `methods`"),
        );
    }
    Some(compile_aws_rule(
        report,
        (file, rule.span()),
        id,
        effect,
        actions,
        r.resources.as_deref(),
    ))
}

/// A rule on methods and paths, and the globs that select it.
fn compile_path_rule(
    report: &mut Report<'_>,
    file: usize,
    rule: &Spanned<RuleFile>,
    id: String,
    effect: Effect,
    fold: bool,
) -> (Rule, Vec<PathGlob>) {
    let RuleFile {
        methods,
        paths,
        resources,
        ..
    } = rule.get_ref();
    if let Some(resources) = resources {
        report.error(
            file,
            resources.first().map_or(rule.span(), Spanned::span),
            format!("rule `{id}` has `resources` but no `actions`"),
        );
    }
    if paths.is_empty() {
        report.error(file, rule.span(), format!("rule `{id}` has no paths"));
    }
    let mut globs = Vec::new();
    for path in paths {
        let pattern = if fold {
            path.get_ref().to_lowercase()
        } else {
            path.get_ref().clone()
        };
        match compile_glob(&pattern) {
            Ok(alternatives) => globs.extend(alternatives),
            Err(message) => report.error(file, path.span(), message),
        }
        // A deny for `/secret/` also refuses `/secret`: to most upstreams
        // the two are one resource (decide covers the other direction).
        if effect == Effect::Deny
            && pattern.len() > 1
            && pattern.ends_with('/')
            && let Ok(alternatives) = compile_glob(pattern.trim_end_matches('/'))
        {
            globs.extend(alternatives);
        }
    }
    let methods = methods.as_ref().map(|methods| {
        for method in methods {
            if let Err(message) = check_method(method.get_ref()) {
                report.error(file, method.span(), message);
            }
        }
        methods.iter().map(|m| m.get_ref().clone()).collect()
    });
    let rule = Rule {
        id: Arc::from(id),
        effect,
        methods,
        paths: paths.iter().map(|p| p.get_ref().clone()).collect(),
    };
    (rule, globs)
}

/// The credential agrees with the rules (actions need `aws`, `aws` needs
/// actions) and, for `aws`, with the upstream.
fn check_credential_fits(
    report: &mut Report<'_>,
    file: usize,
    scope: &ScopeFile,
    (credential, upstream): (Option<&Credential>, Option<&Upstream>),
    (rules, aws_rules): (&RuleSet, &[AwsRule]),
) {
    let name = scope.name.get_ref();
    // By what the file says, so a broken `aws` credential is one error, not two.
    let is_aws = scope
        .credential
        .as_ref()
        .is_some_and(|c| c.get_ref().kind.get_ref() == "aws");
    if !aws_rules.is_empty() && !is_aws {
        report.error(
            file,
            scope.name.span(),
            format!("scope `{name}` has rules with `actions` but no `aws` credential"),
        );
    }
    if is_aws && !rules.rules.is_empty() {
        report.error(
            file,
            scope.name.span(),
            format!(
                "scope `{name}` has an `aws` credential, so its rules take `actions`, not `paths`"
            ),
        );
    }
    if let (Some(Credential::Aws(aws)), Some(upstream)) = (credential, upstream)
        && super::signing_of(aws, &upstream.host).is_none()
    {
        report.error(
            file,
            scope.upstream.span(),
            format!(
                "cannot tell the AWS service and region from host `{}`: set `service` and `region` in the credential",
                upstream.host
            ),
        );
    }
}

fn valid_route(route: &str) -> bool {
    !route.is_empty()
        && route
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && route != "."
        && route != ".."
}

/// Validates a path glob with globset (so the accepted syntax is globset's),
/// then compiles it to the segment matcher `decide` uses.
pub(super) fn compile_glob(pattern: &str) -> Result<Vec<PathGlob>, String> {
    if !pattern.starts_with('/') {
        return Err(format!("path `{pattern}` must start with `/`"));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("path `{pattern}` is not a valid glob: {}", e.kind()))?;
    glob::compile(pattern).map_err(|e| format!("path `{pattern}` is not a valid glob: {e}"))
}

pub(super) fn check_method(method: &str) -> Result<(), String> {
    if method.is_empty() || method.len() > 32 || !method.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "method `{method}` must be an uppercase HTTP method such as `GET`"
        ));
    }
    Ok(())
}

pub(super) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificates".into());
    }
    Ok(certs)
}

pub(super) fn compile_aws_rule(
    report: &mut Report<'_>,
    (file, span): (usize, std::ops::Range<usize>),
    id: &str,
    effect: Effect,
    actions: &[Spanned<String>],
    resources: Option<&[Spanned<String>]>,
) -> AwsRule {
    if actions.is_empty() {
        report.error(
            file,
            span,
            format!("rule `{id}` has an empty `actions` list"),
        );
    }
    for action in actions {
        let text = action.get_ref();
        let valid = text == "*"
            || text.split_once(':').is_some_and(|(service, op)| {
                !service.is_empty()
                    && service
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !op.is_empty()
                    && op
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '*' || c == '?')
            });
        if !valid {
            report.error(
                file,
                action.span(),
                format!("action `{text}` must look like `s3:GetObject`, `s3:Get*` or `*`"),
            );
        }
    }
    let resources = match resources {
        None => vec!["*".to_owned()],
        Some(list) => {
            for resource in list {
                let text = resource.get_ref();
                if text != "*" && !text.starts_with("arn:") {
                    report.error(
                        file,
                        resource.span(),
                        format!("resource `{text}` must be an ARN or `*`"),
                    );
                }
            }
            list.iter().map(|r| r.get_ref().clone()).collect()
        }
    };
    AwsRule {
        id: Arc::from(id),
        allow: effect == Effect::Allow,
        actions: actions.iter().map(|a| a.get_ref().clone()).collect(),
        resources,
    }
}
