//! Compiling `[scope.credential]` and `[[sentinel]]`: every problem reported
//! at its place in the file, and the limits STS imposes checked here, so a
//! policy that loads can mint.

use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::aws::AwsRule;
use super::file::{CredentialFile, SentinelFile, ValueFields};
use super::report::{LoadOptions, Report, valid_name};
use crate::credentials::sentinel::{MIN_PLACEHOLDER, Sentinel, Sentinels};
use crate::credentials::sts::{self, AwsCredential, Statement};
use crate::credentials::{
    Credential, Format, Placement, SecretCredential, SecretSource, SecretTiming, SecretValue,
    SecretsManagerRef,
};

/// Default and bounds for `aws` credentials.
const DEFAULT_DURATION_MINUTES: u64 = 15;
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);
const DEFAULT_SAFETY_MARGIN: Duration = Duration::from_secs(60);
const DEFAULT_MAX_SIGNED_BODY: u64 = 8 * 1024 * 1024;
const MAX_SIGNED_BODY_LIMIT: u64 = 64 * 1024 * 1024;

pub(super) fn compile_credential(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
    dir: &Path,
    options: &LoadOptions<'_>,
    aws_rules: &[AwsRule],
) -> Option<Credential> {
    let c = credential.get_ref();
    match c.kind.get_ref().as_str() {
        "secret" => {
            reject_fields(report, file, &aws_only_fields(c), "secret");
            reject_fields(report, file, &super::oauth::oauth_only_fields(c), "secret");
            let value = compile_value(
                report,
                file,
                c.value_fields(),
                credential.span(),
                dir,
                options,
            )?;
            let placement = compile_placement(report, file, c, credential.span())?;
            let format = match &c.format {
                None => Format::parse("{}"),
                Some(f) => Format::parse(f.get_ref()),
            };
            let Some(format) = format else {
                let span = c.format.as_ref().map_or(credential.span(), |f| f.span());
                report.error(file, span, "format must hold `{}` exactly once".into());
                return None;
            };
            if !value.is_available() {
                report.warn(
                    file,
                    credential.span(),
                    format!(
                        "credential `{}` has no value now; calls in this scope will get credential-unavailable",
                        value.source
                    ),
                );
            }
            Some(Credential::Secret(SecretCredential {
                value,
                placement,
                format,
            }))
        }
        "aws" => {
            reject_fields(report, file, &super::oauth::oauth_only_fields(c), "aws");
            compile_aws(report, file, credential, aws_rules).map(Credential::Aws)
        }
        "oauth2" | "jwt_bearer" => {
            super::oauth::compile_oauth2(report, file, credential, dir, options)
                .map(|c| Credential::OAuth2(std::sync::Arc::new(c)))
        }
        "github_app" => super::github::compile_github_app(report, file, credential, dir)
            .map(|c| Credential::GithubApp(std::sync::Arc::new(c))),
        other => {
            report.error(
                file,
                c.kind.span(),
                format!("credential kind `{other}` is not known (expected `secret`, `aws`, `oauth2`, `jwt_bearer` or `github_app`)"),
            );
            None
        }
    }
}

pub(super) fn aws_only_fields(c: &CredentialFile) -> Vec<(&'static str, std::ops::Range<usize>)> {
    let mut present = Vec::new();
    let mut note = |name: &'static str, span: Option<std::ops::Range<usize>>| {
        if let Some(span) = span {
            present.push((name, span));
        }
    };
    note("role_arn", c.role_arn.as_ref().map(Spanned::span));
    note(
        "duration_minutes",
        c.duration_minutes.as_ref().map(Spanned::span),
    );
    note(
        "refresh_margin",
        c.refresh_margin.as_ref().map(Spanned::span),
    );
    note("safety_margin", c.safety_margin.as_ref().map(Spanned::span));
    note("external_id", c.external_id.as_ref().map(Spanned::span));
    note("session_tags", c.session_tags.as_ref().map(Spanned::span));
    note("service", c.service.as_ref().map(Spanned::span));
    note("region", c.region.as_ref().map(Spanned::span));
    note(
        "unsigned_payload",
        c.unsigned_payload.as_ref().map(Spanned::span),
    );
    note(
        "max_signed_body",
        c.max_signed_body.as_ref().map(Spanned::span),
    );
    present
}

pub(super) fn reject_fields(
    report: &mut Report<'_>,
    file: usize,
    fields: &[(&'static str, std::ops::Range<usize>)],
    kind: &str,
) {
    for (name, span) in fields {
        report.error(
            file,
            span.clone(),
            format!("`{name}` does not apply to a `{kind}` credential"),
        );
    }
}

fn compile_aws(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
    aws_rules: &[AwsRule],
) -> Option<AwsCredential> {
    let c = credential.get_ref();
    let value_fields = c.value_fields();
    for (name, field) in [
        ("env", value_fields.env),
        ("file", value_fields.file),
        ("secrets_manager", value_fields.secrets_manager),
        ("header", c.header.as_ref()),
        ("query", c.query.as_ref()),
        ("format", c.format.as_ref()),
    ] {
        if let Some(field) = field {
            report.error(
                file,
                field.span(),
                format!("`{name}` does not apply to an `aws` credential"),
            );
        }
    }
    let Some(role_arn) = &c.role_arn else {
        report.error(
            file,
            credential.span(),
            "an `aws` credential needs `role_arn`".into(),
        );
        return None;
    };
    if !role_arn.get_ref().starts_with("arn:aws") || !role_arn.get_ref().contains(":role/") {
        report.error(
            file,
            role_arn.span(),
            format!("role_arn `{}` is not a role ARN", role_arn.get_ref()),
        );
    }
    let (duration, refresh_margin, safety_margin) = aws_durations(report, file, credential);
    let statements: Vec<Statement> = aws_rules
        .iter()
        .map(|rule| Statement {
            allow: rule.allow,
            actions: rule.actions.clone(),
            resources: rule.resources.clone(),
        })
        .collect();
    if !statements.iter().any(|s| s.allow) {
        report.error(
            file,
            credential.span(),
            "a scope with an `aws` credential needs at least one allow rule with `actions`".into(),
        );
        return None;
    }
    let (session_policy, session_policy_digest) = sts::session_policy(&statements);
    if session_policy.len() > sts::SESSION_POLICY_LIMIT {
        report.error(
            file,
            credential.span(),
            format!(
                "the session policy generated from this scope's rules is {} characters; STS allows {}",
                session_policy.len(),
                sts::SESSION_POLICY_LIMIT
            ),
        );
    }
    let max_signed_body = aws_max_signed_body(report, file, credential);
    let text = |f: &Option<Spanned<String>>| f.as_ref().map(|v| v.get_ref().clone());
    Some(AwsCredential {
        role_arn: role_arn.get_ref().clone(),
        duration,
        refresh_margin,
        safety_margin,
        external_id: text(&c.external_id),
        session_tags: c.session_tags.as_ref().is_none_or(|t| *t.get_ref()),
        session_policy,
        session_policy_digest,
        service: text(&c.service),
        region: text(&c.region),
        unsigned_payload: c.unsigned_payload.as_ref().is_some_and(|u| *u.get_ref()),
        max_signed_body,
        vend: c.vend.as_ref().is_some_and(|v| *v.get_ref()),
    })
}

/// An `aws` credential's session duration and its refresh and safety
/// margins, each checked against the others.
fn aws_durations(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
) -> (Duration, Duration, Duration) {
    let c = credential.get_ref();
    let minutes = c
        .duration_minutes
        .as_ref()
        .map_or(DEFAULT_DURATION_MINUTES, |d| *d.get_ref());
    let duration = Duration::from_secs(minutes.saturating_mul(60));
    if duration < sts::MIN_DURATION || duration > sts::MAX_DURATION {
        let span = c
            .duration_minutes
            .as_ref()
            .map_or(credential.span(), Spanned::span);
        report.error(
            file,
            span,
            format!("duration_minutes `{minutes}` must be 15 (STS's minimum) to 720"),
        );
    }
    let refresh_margin =
        duration_field(report, file, c.refresh_margin.as_ref()).unwrap_or(DEFAULT_REFRESH_MARGIN);
    let safety_margin =
        duration_field(report, file, c.safety_margin.as_ref()).unwrap_or(DEFAULT_SAFETY_MARGIN);
    if safety_margin >= duration {
        let span = c
            .safety_margin
            .as_ref()
            .map_or(credential.span(), Spanned::span);
        report.error(
            file,
            span,
            "safety_margin must be shorter than the duration".into(),
        );
    }
    if refresh_margin >= duration {
        let span = c
            .refresh_margin
            .as_ref()
            .map_or(credential.span(), Spanned::span);
        report.warn(
            file,
            span,
            "refresh_margin is not shorter than the duration: every call mints".into(),
        );
    }
    if refresh_margin < safety_margin {
        let span = c
            .refresh_margin
            .as_ref()
            .map_or(credential.span(), Spanned::span);
        report.error(
            file,
            span,
            "refresh_margin must not be shorter than safety_margin".into(),
        );
    }
    (duration, refresh_margin, safety_margin)
}

/// The largest body an `aws` credential signs (held in memory to hash it).
fn aws_max_signed_body(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
) -> u64 {
    let c = credential.get_ref();
    let max_signed_body = c
        .max_signed_body
        .as_ref()
        .map_or(DEFAULT_MAX_SIGNED_BODY, |m| *m.get_ref());
    if max_signed_body > MAX_SIGNED_BODY_LIMIT {
        let span = c
            .max_signed_body
            .as_ref()
            .map_or(credential.span(), Spanned::span);
        report.error(
            file,
            span,
            format!("max_signed_body must be at most {MAX_SIGNED_BODY_LIMIT} (64 MiB): bodies to sign are held in memory"),
        );
    }
    max_signed_body
}

pub(super) fn compile_placement(
    report: &mut Report<'_>,
    file: usize,
    c: &CredentialFile,
    span: std::ops::Range<usize>,
) -> Option<Placement> {
    match (&c.header, &c.query) {
        (Some(_), Some(_)) => {
            report.error(
                file,
                span,
                "a credential takes `header` or `query`, not both".into(),
            );
            None
        }
        (None, Some(q)) => {
            let name = q.get_ref();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                report.error(
                    file,
                    q.span(),
                    format!("query parameter `{name}` must be of a-z, A-Z, 0-9, `-`, `_`, `.`"),
                );
                return None;
            }
            Some(Placement::Query(name.clone()))
        }
        (None, None) => Some(Placement::Header(HeaderName::from_static("authorization"))),
        (Some(h), None) => {
            match HeaderName::from_bytes(h.get_ref().to_ascii_lowercase().as_bytes()) {
                Ok(name) => Some(Placement::Header(name)),
                Err(_) => {
                    report.error(
                        file,
                        h.span(),
                        format!("header `{}` is not a valid header name", h.get_ref()),
                    );
                    None
                }
            }
        }
    }
}

/// A secret value's source from exactly one of `env`, `file` and
/// `secrets_manager`, read now for the first two.
pub(super) fn compile_value(
    report: &mut Report<'_>,
    file: usize,
    fields: ValueFields<'_>,
    span: std::ops::Range<usize>,
    dir: &Path,
    options: &LoadOptions<'_>,
) -> Option<SecretValue> {
    let text = |f: Option<&Spanned<String>>| f.map(|v| v.get_ref().clone());
    let source = match (fields.env, fields.file, fields.secrets_manager) {
        (Some(env), None, None) => SecretSource::Env(env.get_ref().clone()),
        (None, Some(path), None) => SecretSource::File(dir.join(path.get_ref())),
        (None, None, Some(id)) => SecretSource::SecretsManager(SecretsManagerRef {
            id: id.get_ref().clone(),
            json_key: text(fields.json_key),
            version_stage: text(fields.version_stage),
        }),
        _ => {
            report.error(
                file,
                span,
                "a secret needs exactly one of `env`, `file` or `secrets_manager`".into(),
            );
            return None;
        }
    };
    if fields.secrets_manager.is_none() {
        for (name, field) in [
            ("json_key", fields.json_key),
            ("version_stage", fields.version_stage),
            ("ttl", fields.ttl),
            ("grace", fields.grace),
        ] {
            if let Some(field) = field {
                report.error(
                    file,
                    field.span(),
                    format!("`{name}` applies only to `secrets_manager`"),
                );
            }
        }
    }
    let defaults = SecretTiming::default();
    let timing = SecretTiming {
        ttl: duration_field(report, file, fields.ttl).unwrap_or(defaults.ttl),
        grace: duration_field(report, file, fields.grace).unwrap_or(defaults.grace),
    };
    if timing.ttl.is_zero()
        && let Some(ttl) = fields.ttl
    {
        report.error(file, ttl.span(), "ttl must be more than zero".into());
    }
    Some(SecretValue::resolve(source, timing, options.env))
}

pub(super) fn duration_field(
    report: &mut Report<'_>,
    file: usize,
    field: Option<&Spanned<String>>,
) -> Option<Duration> {
    let field = field?;
    match humantime::parse_duration(field.get_ref()) {
        Ok(d) => Some(d),
        Err(_) => {
            report.error(
                file,
                field.span(),
                format!(
                    "`{}` is not a duration such as `30s`, `5m` or `1h`",
                    field.get_ref()
                ),
            );
            None
        }
    }
}

pub(super) fn compile_sentinels(
    report: &mut Report<'_>,
    sentinels: &[(usize, Spanned<SentinelFile>)],
    dir: &Path,
    options: &LoadOptions<'_>,
    agent_names: &std::collections::HashSet<String>,
) -> Sentinels {
    let mut list: Vec<Sentinel> = Vec::with_capacity(sentinels.len());
    for (file, sentinel) in sentinels {
        let s = sentinel.get_ref();
        let name = s.name.get_ref();
        if !valid_name(name) {
            report.error(
                *file,
                s.name.span(),
                format!("sentinel name `{name}` must be 1 to 64 of a-z, 0-9, `.`, `_`, `-`"),
            );
        }
        if list.iter().any(|other| &other.name == name) {
            report.error(
                *file,
                s.name.span(),
                format!("sentinel `{name}` is defined twice"),
            );
        }
        let placeholder = s.placeholder.get_ref();
        if placeholder.len() < MIN_PLACEHOLDER
            || !placeholder
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            report.error(
                *file,
                s.placeholder.span(),
                format!(
                    "placeholder of sentinel `{name}` must be at least {MIN_PLACEHOLDER} of a-z, A-Z, 0-9, `-`, `_` (make one with `clawgate sentinel new {name}`)"
                ),
            );
        }
        if list.iter().any(|other| {
            other.placeholder.contains(placeholder.as_str())
                || placeholder.contains(&other.placeholder)
        }) {
            report.error(
                *file,
                s.placeholder.span(),
                format!("placeholder of sentinel `{name}` overlaps another sentinel's"),
            );
        }
        if s.hosts.is_empty() {
            report.error(
                *file,
                sentinel.span(),
                format!("sentinel `{name}` has no hosts"),
            );
        }
        let hosts = s
            .hosts
            .iter()
            .map(|h| h.get_ref().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let agents = s.agents.as_ref().map(|agents| {
            for agent in agents {
                if !agent_names.contains(agent.get_ref()) {
                    report.unknown_name(
                        *file,
                        agent.span(),
                        format!("unknown agent `{}` in sentinel `{name}`", agent.get_ref()),
                    );
                }
            }
            agents.iter().map(|a| a.get_ref().clone()).collect()
        });
        let Some(value) = compile_value(
            report,
            *file,
            s.value_fields(),
            sentinel.span(),
            dir,
            options,
        ) else {
            continue;
        };
        if !value.is_available() {
            report.warn(
                *file,
                sentinel.span(),
                format!("sentinel `{name}` has no value now; calls carrying it will get credential-unavailable"),
            );
        }
        list.push(Sentinel {
            name: name.clone(),
            placeholder: placeholder.clone(),
            hosts,
            agents,
            value,
        });
    }
    Sentinels::new(list)
}
