//! Compiling a `github_app` `[scope.credential]`: the App, its key, the
//! installation, and the repositories and permissions its tokens are cut
//! down to. Every problem is reported at its place in the file.

use std::path::Path;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::credential::{aws_only_fields, reject_fields};
use super::file::CredentialFile;
use super::oauth::{
    compile_token_placement, github_only_fields, margins, oauth_only_fields, token_net,
};
use super::report::Report;
use crate::credentials::github::GithubAppCredential;

pub(super) fn compile_github_app(
    report: &mut Report<'_>,
    file: usize,
    credential: &Spanned<CredentialFile>,
    dir: &Path,
) -> Option<GithubAppCredential> {
    let c = credential.get_ref();
    reject_foreign(report, file, c);
    let (Some(app_id), Some(installation_id)) = (&c.app_id, &c.installation_id) else {
        report.error(
            file,
            credential.span(),
            "a `github_app` credential needs `app_id` and `installation_id`".into(),
        );
        return None;
    };
    let api_url = c
        .api_url
        .as_ref()
        .map_or("https://api.github.com".to_owned(), |u| {
            u.get_ref().trim_end_matches('/').to_owned()
        });
    if !api_url.starts_with("https://") {
        let span = c.api_url.as_ref().map_or(credential.span(), Spanned::span);
        report.error(
            file,
            span,
            format!("api_url `{api_url}` is not an https URL"),
        );
        return None;
    }
    let Some(path) = &c.private_key_file else {
        report.error(
            file,
            credential.span(),
            "a `github_app` credential needs `private_key_file` (the App's private key)".into(),
        );
        return None;
    };
    let pem = std::fs::read_to_string(dir.join(path.get_ref())).ok();
    let Some(pem) = pem.filter(|p| jsonwebtoken::EncodingKey::from_rsa_pem(p.as_bytes()).is_ok())
    else {
        report.error(
            file,
            path.span(),
            format!(
                "private key file `{}` does not hold an RSA PEM key",
                path.get_ref()
            ),
        );
        return None;
    };
    let permissions = c
        .permissions
        .as_ref()
        .map(|p| p.get_ref().clone())
        .unwrap_or_default();
    for (name, level) in &permissions {
        if !matches!(level.as_str(), "read" | "write" | "admin") {
            let span = c
                .permissions
                .as_ref()
                .map_or(credential.span(), Spanned::span);
            report.error(
                file,
                span,
                format!("permission `{name}` must be `read`, `write` or `admin`"),
            );
        }
    }
    let (placement, format) = compile_token_placement(report, file, credential)?;
    let (refresh_margin, safety_margin) = margins(report, file, credential);
    let (roots, allow_private) = token_net(report, file, credential, dir)?;
    let mut app = GithubAppCredential {
        api_url,
        app_id: *app_id.get_ref(),
        installation_id: *installation_id.get_ref(),
        key: SecretString::from(pem),
        repositories: c
            .repositories
            .iter()
            .flatten()
            .map(|r| r.get_ref().clone())
            .collect(),
        permissions,
        placement,
        format,
        refresh_margin,
        safety_margin,
        roots: Arc::new(roots),
        allow_private: Arc::new(allow_private),
        digest: [0; 32],
    };
    // The key goes into this in-memory digest only: a new key, a new entry.
    let mut h = Sha256::new();
    h.update(format!(
        "{app:?}|{:?}|{:?}|{:?}",
        app.refresh_margin, app.safety_margin, app.allow_private
    ));
    h.update(app.key.expose_secret().as_bytes());
    for root in app.roots.iter() {
        h.update(root.as_ref());
    }
    app.digest = h.finalize().into();
    Some(app)
}

/// Fields of the other kinds, and secret sources (an App has a key file).
fn reject_foreign(report: &mut Report<'_>, file: usize, c: &CredentialFile) {
    let shared = ["private_key_file", "token_ca_file", "token_allow_private"];
    let own: Vec<&str> = github_only_fields(c).iter().map(|(n, _)| *n).collect();
    let mut foreign: Vec<_> = aws_only_fields(c)
        .into_iter()
        .filter(|(name, _)| !matches!(*name, "refresh_margin" | "safety_margin"))
        .collect();
    foreign.extend(
        oauth_only_fields(c)
            .into_iter()
            .filter(|(name, _)| !shared.contains(name) && !own.contains(name)),
    );
    let fields = c.value_fields();
    for (name, field) in [
        ("env", fields.env),
        ("file", fields.file),
        ("secrets_manager", fields.secrets_manager),
    ] {
        if let Some(field) = field {
            foreign.push((name, field.span()));
        }
    }
    reject_fields(report, file, &foreign, "github_app");
}
