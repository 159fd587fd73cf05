//! Compiling an `oauth2` `[scope.credential]`: the token endpoint (or the
//! issuer to discover it from), the client and how it authenticates, what
//! is requested, and where the token goes. Every problem is reported at its
//! place in the file; a policy that loads can mint.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use rustls_pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::credential::{
    aws_only_fields, compile_placement, compile_value, duration_field, reject_fields,
};
use super::file::CredentialFile;
use super::report::{LoadOptions, Report};
use crate::credentials::SecretsManagerRef;
use crate::credentials::oauth::{
    ClientAuth, Endpoint, JwtBearer, OAuthCredential, PrivateKey, RefreshStore,
};
use crate::credentials::{Format, Placement};
use crate::egress::AllowPrivate;

/// Defaults for `oauth2` cache margins.
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);
const DEFAULT_SAFETY_MARGIN: Duration = Duration::from_secs(10);

type Span = std::ops::Range<usize>;

/// The `oauth2` fields present, to refuse them on other kinds.
pub(super) fn oauth_only_fields(c: &CredentialFile) -> Vec<(&'static str, Span)> {
    let mut present = Vec::new();
    let mut note = |name: &'static str, span: Option<Span>| {
        if let Some(span) = span {
            present.push((name, span));
        }
    };
    let span = |f: &Option<Spanned<String>>| f.as_ref().map(Spanned::span);
    note("token_endpoint", span(&c.token_endpoint));
    note("issuer", span(&c.issuer));
    note("client_id", span(&c.client_id));
    note("client_auth", span(&c.client_auth));
    note("private_key_file", span(&c.private_key_file));
    note("key_id", span(&c.key_id));
    note("signing_alg", span(&c.signing_alg));
    note("scope", span(&c.scope));
    note("audience", span(&c.audience));
    note("token_ca_file", span(&c.token_ca_file));
    note("assertion_issuer", span(&c.assertion_issuer));
    note("subject", span(&c.subject));
    note("refresh_token_file", span(&c.refresh_token_file));
    note(
        "refresh_token_secrets_manager",
        span(&c.refresh_token_secrets_manager),
    );
    note(
        "resource",
        c.resource
            .as_ref()
            .and_then(|r| r.first())
            .map(Spanned::span),
    );
    note(
        "token_allow_private",
        c.token_allow_private
            .as_ref()
            .and_then(|r| r.first())
            .map(Spanned::span),
    );
    present.extend(github_only_fields(c));
    present
}

/// The `github_app` fields present, to refuse them on other kinds.
pub(super) fn github_only_fields(c: &CredentialFile) -> Vec<(&'static str, Span)> {
    [
        ("api_url", c.api_url.as_ref().map(Spanned::span)),
        ("app_id", c.app_id.as_ref().map(Spanned::span)),
        (
            "installation_id",
            c.installation_id.as_ref().map(Spanned::span),
        ),
        (
            "repositories",
            c.repositories
                .as_ref()
                .and_then(|r| r.first())
                .map(Spanned::span),
        ),
        ("permissions", c.permissions.as_ref().map(Spanned::span)),
    ]
    .into_iter()
    .filter_map(|(name, span)| Some((name, span?)))
    .collect()
}

/// Where a minted token goes: `header`/`query` and `format`, with
/// `Bearer {}` the default for `authorization`.
pub(super) fn compile_token_placement(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
) -> Option<(Placement, Format)> {
    let c = credential.get_ref();
    let placement = compile_placement(report, file, c, credential.span())?;
    let default_format = match &placement {
        Placement::Header(name) if name == HeaderName::from_static("authorization") => "Bearer {}",
        _ => "{}",
    };
    let format = Format::parse(c.format.as_ref().map_or(default_format, |f| f.get_ref()));
    let Some(format) = format else {
        let span = c.format.as_ref().map_or(credential.span(), |f| f.span());
        report.error(file, span, "format must hold `{}` exactly once".into());
        return None;
    };
    Some((placement, format))
}

/// `refresh_margin` and `safety_margin`, checked against each other.
pub(super) fn margins(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
) -> (Duration, Duration) {
    let c = credential.get_ref();
    let refresh_margin =
        duration_field(report, file, c.refresh_margin.as_ref()).unwrap_or(DEFAULT_REFRESH_MARGIN);
    let safety_margin =
        duration_field(report, file, c.safety_margin.as_ref()).unwrap_or(DEFAULT_SAFETY_MARGIN);
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
    (refresh_margin, safety_margin)
}

/// `token_ca_file` and `token_allow_private`.
pub(super) fn token_net(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
    dir: &Path,
) -> Option<(Vec<CertificateDer<'static>>, AllowPrivate)> {
    let c = credential.get_ref();
    let roots = match &c.token_ca_file {
        None => Vec::new(),
        Some(path) => match super::scope::read_ca_file(&dir.join(path.get_ref())) {
            Ok(certs) => certs,
            Err(message) => {
                report.error(
                    file,
                    path.span(),
                    format!("cannot use CA file `{}`: {message}", path.get_ref()),
                );
                return None;
            }
        },
    };
    let mut allow_private = AllowPrivate::default();
    for entry in c.token_allow_private.iter().flatten() {
        match AllowPrivate::parse([entry.get_ref().as_str()]) {
            Ok(one) => allow_private.extend(one),
            Err(message) => report.error(
                file,
                entry.span(),
                format!("token_allow_private entry is not an address, range or host: {message}"),
            ),
        }
    }
    Some((roots, allow_private))
}

pub(super) fn compile_oauth2(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
    dir: &Path,
    options: &LoadOptions<'_>,
) -> Option<OAuthCredential> {
    let c = credential.get_ref();
    let aws_fields: Vec<_> = aws_only_fields(c)
        .into_iter()
        .filter(|(name, _)| !matches!(*name, "refresh_margin" | "safety_margin"))
        .collect();
    let mut aws_fields = aws_fields;
    aws_fields.extend(github_only_fields(c));
    let kind = c.kind.get_ref().as_str();
    let bearer_kind = kind == "jwt_bearer";
    if !bearer_kind {
        for (name, field) in [
            ("assertion_issuer", &c.assertion_issuer),
            ("subject", &c.subject),
        ] {
            if let Some(field) = field {
                aws_fields.push((name, field.span()));
            }
        }
    } else {
        for (name, field) in [
            ("refresh_token_file", &c.refresh_token_file),
            (
                "refresh_token_secrets_manager",
                &c.refresh_token_secrets_manager,
            ),
        ] {
            if let Some(field) = field {
                aws_fields.push((name, field.span()));
            }
        }
    }
    reject_fields(report, file, &aws_fields, kind);
    let endpoint = compile_endpoint(report, file, credential)?;
    let (client_id, auth, bearer) = if bearer_kind {
        compile_bearer(report, file, credential, dir)?
    } else {
        let Some(client_id) = &c.client_id else {
            report.error(
                file,
                credential.span(),
                "an `oauth2` credential needs `client_id`".into(),
            );
            return None;
        };
        let auth = compile_auth(report, file, credential, dir, options)?;
        (client_id.get_ref().clone(), auth, None)
    };
    let refresh = compile_refresh_store(report, file, c, dir)?;
    let (placement, format) = compile_token_placement(report, file, credential)?;
    let (refresh_margin, safety_margin) = margins(report, file, credential);
    let (roots, allow_private) = token_net(report, file, credential, dir)?;
    let text = |f: &Option<Spanned<String>>| f.as_ref().map(|v| v.get_ref().clone());
    let mut credential = OAuthCredential {
        endpoint,
        client_id,
        auth,
        bearer,
        refresh,
        scope: text(&c.scope).filter(|s| !s.trim().is_empty()),
        resources: c
            .resource
            .iter()
            .flatten()
            .map(|r| r.get_ref().clone())
            .collect(),
        audience: text(&c.audience),
        placement,
        format,
        refresh_margin,
        safety_margin,
        roots: Arc::new(roots),
        allow_private: Arc::new(allow_private),
        digest: [0; 32],
    };
    credential.digest = digest(&credential);
    Some(credential)
}

/// Where the `refresh_token` grant's token is kept: at most one of
/// `refresh_token_file` (which must be readable now, and whose directory
/// must be writable when the provider rotates) and
/// `refresh_token_secrets_manager` (the secret's whole string).
fn compile_refresh_store(
    report: &mut Report<'_>,
    file: usize,
    c: &CredentialFile,
    dir: &Path,
) -> Option<Option<RefreshStore>> {
    match (&c.refresh_token_file, &c.refresh_token_secrets_manager) {
        (None, None) => Some(None),
        (Some(path), None) => {
            let full = dir.join(path.get_ref());
            if crate::credentials::read_secret_file(&full).is_none_or(|t| t.is_empty()) {
                report.error(
                    file,
                    path.span(),
                    format!("cannot read a refresh token from `{}`", path.get_ref()),
                );
                return None;
            }
            Some(Some(RefreshStore::File(full)))
        }
        (None, Some(id)) => Some(Some(RefreshStore::SecretsManager(id.get_ref().clone()))),
        (Some(_), Some(id)) => {
            report.error(
                file,
                id.span(),
                "a refresh token comes from one of `refresh_token_file` or `refresh_token_secrets_manager`"
                    .into(),
            );
            None
        }
    }
}

/// A `jwt_bearer` credential's assertion (issuer, subject, key) and its
/// optional client id; it authenticates no client otherwise.
fn compile_bearer(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
    dir: &Path,
) -> Option<(String, ClientAuth, Option<JwtBearer>)> {
    let c = credential.get_ref();
    if let Some(method) = c.client_auth.as_ref().filter(|m| m.get_ref() != "none") {
        report.error(
            file,
            method.span(),
            "a `jwt_bearer` credential authenticates no client: `client_auth` can only be `none`"
                .into(),
        );
        return None;
    }
    let Some(issuer) = &c.assertion_issuer else {
        report.error(
            file,
            credential.span(),
            "a `jwt_bearer` credential needs `assertion_issuer` (a service account's `client_email`)"
                .into(),
        );
        return None;
    };
    let ClientAuth::PrivateKeyJwt {
        key,
        algorithm,
        key_id,
    } = compile_private_key(report, file, credential, dir)?
    else {
        return None;
    };
    let bearer = JwtBearer {
        issuer: issuer.get_ref().clone(),
        subject: c.subject.as_ref().map(|s| s.get_ref().clone()),
        key,
        algorithm,
        key_id,
    };
    let client_id = c
        .client_id
        .as_ref()
        .map(|id| id.get_ref().clone())
        .unwrap_or_default();
    Some((client_id, ClientAuth::None, Some(bearer)))
}

fn compile_endpoint(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
) -> Option<Endpoint> {
    let c = credential.get_ref();
    let (endpoint, field) = match (&c.token_endpoint, &c.issuer) {
        (Some(url), None) => (Endpoint::Token(url.get_ref().clone()), url),
        (None, Some(issuer)) => (Endpoint::Issuer(issuer.get_ref().clone()), issuer),
        _ => {
            report.error(
                file,
                credential.span(),
                "an `oauth2` credential needs exactly one of `token_endpoint` or `issuer`".into(),
            );
            return None;
        }
    };
    let url = field.get_ref();
    let valid = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("https") && u.host().is_some_and(|h| !h.is_empty()));
    if valid.is_none() {
        report.error(
            file,
            field.span(),
            format!("`{url}` is not an https URL (token endpoints are reached over verified TLS)"),
        );
        return None;
    }
    Some(endpoint)
}

fn compile_auth(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
    dir: &Path,
    options: &LoadOptions<'_>,
) -> Option<ClientAuth> {
    let c = credential.get_ref();
    let method = c.client_auth.as_ref().map_or(
        if c.private_key_file.is_some() {
            "private_key_jwt"
        } else {
            "client_secret_basic"
        },
        |m| m.get_ref().as_str(),
    );
    let span = c
        .client_auth
        .as_ref()
        .map_or(credential.span(), Spanned::span);
    match method {
        "client_secret_basic" | "client_secret_post" => {
            for (name, field) in [
                ("private_key_file", &c.private_key_file),
                ("key_id", &c.key_id),
                ("signing_alg", &c.signing_alg),
            ] {
                if let Some(field) = field {
                    report.error(
                        file,
                        field.span(),
                        format!("`{name}` applies only to `private_key_jwt`"),
                    );
                }
            }
            let value = compile_value(
                report,
                file,
                c.value_fields(),
                credential.span(),
                dir,
                options,
            )?;
            if !value.is_available() {
                report.warn(
                    file,
                    credential.span(),
                    format!(
                        "client secret `{}` has no value now; calls in this scope will get credential-grant-invalid",
                        value.source
                    ),
                );
            }
            Some(if method == "client_secret_basic" {
                ClientAuth::SecretBasic(value)
            } else {
                ClientAuth::SecretPost(value)
            })
        }
        "private_key_jwt" => compile_private_key(report, file, credential, dir),
        other => {
            report.error(
                file,
                span,
                format!(
                    "client_auth `{other}` is not known (expected `client_secret_basic`, `client_secret_post` or `private_key_jwt`)"
                ),
            );
            None
        }
    }
}

fn compile_private_key(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
    dir: &Path,
) -> Option<ClientAuth> {
    let c = credential.get_ref();
    let fields = c.value_fields();
    for (name, field) in [("env", fields.env), ("file", fields.file)] {
        if let Some(field) = field {
            report.error(
                file,
                field.span(),
                format!("`{name}` does not apply to a signing key (use `private_key_file` or `secrets_manager`)"),
            );
        }
    }
    let algorithm = signing_algorithm(report, file, credential)?;
    let key_id = c.key_id.as_ref().map(|k| k.get_ref().clone());
    let path = match (&c.private_key_file, fields.secrets_manager) {
        (Some(path), None) => path,
        (None, Some(id)) => {
            // Fetched when a token is minted; checked then.
            let text = |f: Option<&Spanned<String>>| f.map(|v| v.get_ref().clone());
            let key = PrivateKey::SecretsManager(SecretsManagerRef {
                id: id.get_ref().clone(),
                json_key: text(fields.json_key),
                version_stage: text(fields.version_stage),
            });
            return Some(ClientAuth::PrivateKeyJwt {
                key,
                algorithm,
                key_id,
            });
        }
        _ => {
            let who = if c.kind.get_ref() == "jwt_bearer" {
                "a `jwt_bearer` credential"
            } else {
                "`private_key_jwt`"
            };
            report.error(
                file,
                credential.span(),
                format!("{who} needs `private_key_file` or `secrets_manager` (not both)"),
            );
            return None;
        }
    };
    let Ok(pem) = std::fs::read_to_string(dir.join(path.get_ref())) else {
        report.error(
            file,
            path.span(),
            format!("cannot read private key file `{}`", path.get_ref()),
        );
        return None;
    };
    let usable = match algorithm {
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .is_ok();
    if !usable {
        report.error(
            file,
            path.span(),
            format!(
                "private key file `{}` does not hold a PEM key for {algorithm:?}",
                path.get_ref()
            ),
        );
        return None;
    }
    Some(ClientAuth::PrivateKeyJwt {
        key: PrivateKey::Pem(SecretString::from(pem)),
        algorithm,
        key_id,
    })
}

/// `signing_alg`: `RS256` (the default) or `ES256`.
fn signing_algorithm(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
) -> Option<jsonwebtoken::Algorithm> {
    let c = credential.get_ref();
    let algorithm = match c.signing_alg.as_ref().map_or("RS256", |a| a.get_ref()) {
        "RS256" => jsonwebtoken::Algorithm::RS256,
        "ES256" => jsonwebtoken::Algorithm::ES256,
        other => {
            let span = c
                .signing_alg
                .as_ref()
                .map_or(credential.span(), Spanned::span);
            report.error(
                file,
                span,
                format!("signing_alg `{other}` is not supported (expected `RS256` or `ES256`)"),
            );
            return None;
        }
    };
    Some(algorithm)
}

fn key_digest(field: &mut impl FnMut(&[u8]), key: &PrivateKey) {
    match key {
        PrivateKey::Pem(pem) => field(pem.expose_secret().as_bytes()),
        other => field(format!("{other:?}").as_bytes()),
    }
}

/// Everything that makes two credentials mint different tokens. Secrets go
/// in (a rotated secret is a new key) but only into this in-memory digest.
fn digest(c: &OAuthCredential) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(format!("{:?}", c.endpoint).as_bytes());
    field(c.client_id.as_bytes());
    field(c.auth.name().as_bytes());
    match &c.auth {
        ClientAuth::SecretBasic(v) | ClientAuth::SecretPost(v) => {
            field(v.source.to_string().as_bytes());
            field(v.loaded().map_or(&[][..], |s| s.expose_secret().as_bytes()));
        }
        ClientAuth::PrivateKeyJwt { key, key_id, .. } => {
            key_digest(&mut field, key);
            field(key_id.as_deref().unwrap_or("").as_bytes());
        }
        ClientAuth::None => {}
    }
    if let Some(bearer) = &c.bearer {
        field(format!("{bearer:?}").as_bytes());
        key_digest(&mut field, &bearer.key);
        field(bearer.key_id.as_deref().unwrap_or("").as_bytes());
    }
    field(format!("{:?}", c.refresh).as_bytes());
    field(c.scope.as_deref().unwrap_or("").as_bytes());
    for r in &c.resources {
        field(r.as_bytes());
    }
    field(c.audience.as_deref().unwrap_or("").as_bytes());
    field(&c.refresh_margin.as_millis().to_be_bytes());
    field(&c.safety_margin.as_millis().to_be_bytes());
    for root in c.roots.iter() {
        field(root.as_ref());
    }
    field(format!("{:?}", c.allow_private).as_bytes());
    h.finalize().into()
}
