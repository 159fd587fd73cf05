#![allow(clippy::unwrap_used)]

use super::*;

fn env_with(value: &'static str) -> impl Fn(&str) -> Option<String> {
    move |name| (name == "TOKEN").then(|| value.to_owned())
}

fn secret(placement: Placement, format: &str, value: &'static str) -> SecretCredential {
    SecretCredential {
        value: SecretValue::resolve(
            SecretSource::Env("TOKEN".into()),
            SecretTiming::default(),
            &env_with(value),
        ),
        placement,
        format: Format::parse(format).unwrap(),
    }
}

fn header(name: &'static str) -> Placement {
    Placement::Header(HeaderName::from_static(name))
}

fn inject(
    cred: &SecretCredential,
    headers: &mut HeaderMap,
    query: &mut Option<String>,
) -> Result<(), CredentialError> {
    let value = cred.value.loaded().cloned().unwrap();
    cred.inject(&value, headers, query)
}

#[test]
fn format_needs_exactly_one_placeholder() {
    assert!(Format::parse("Bearer {}").is_some());
    assert!(Format::parse("{}").is_some());
    assert!(Format::parse("Bearer").is_none());
    assert!(Format::parse("{}{}").is_none());
}

#[test]
fn inject_replaces_the_agents_credential() {
    let cred = secret(header("authorization"), "Bearer {}", "s3cr3t");
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer agent-own"),
    );
    inject(&cred, &mut headers, &mut None).unwrap();
    assert_eq!(headers.get_all("authorization").iter().count(), 1);
    assert_eq!(headers["authorization"], "Bearer s3cr3t");
    assert!(headers["authorization"].is_sensitive());
}

#[test]
fn inject_into_another_header_still_drops_authorization() {
    let cred = secret(header("x-api-key"), "{}", "k");
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer agent-own"),
    );
    headers.insert("x-api-key", HeaderValue::from_static("agent-key"));
    inject(&cred, &mut headers, &mut None).unwrap();
    assert!(headers.get("authorization").is_none());
    assert_eq!(headers["x-api-key"], "k");
}

#[test]
fn inject_into_a_query_parameter_replaces_the_agents_own() {
    let cred = secret(Placement::Query("api_key".into()), "{}", "a b&c");
    let mut query = Some("q=1&api_key=agent-own&z=2".to_owned());
    let mut headers = HeaderMap::new();
    inject(&cred, &mut headers, &mut query).unwrap();
    assert_eq!(query.as_deref(), Some("q=1&z=2&api_key=a+b%26c"));
    let mut none = None;
    inject(&cred, &mut headers, &mut none).unwrap();
    assert_eq!(none.as_deref(), Some("api_key=a+b%26c"));
}

#[test]
fn a_missing_value_names_the_source_only() {
    let value = SecretValue::resolve(
        SecretSource::Env("ABSENT".into()),
        SecretTiming::default(),
        &env_with("never"),
    );
    assert!(!value.is_available());
    assert!(value.loaded().is_none());
    let fetched = SecretValue::resolve(
        SecretSource::SecretsManager(SecretsManagerRef {
            id: "prod/api".into(),
            json_key: Some("token".into()),
            version_stage: Some("AWSCURRENT".into()),
        }),
        SecretTiming::default(),
        &env_with("never"),
    );
    assert!(fetched.is_fetched() && fetched.is_available());
    assert_eq!(
        fetched.source.to_string(),
        "secretsmanager:prod/api#token@AWSCURRENT"
    );
}

#[test]
fn debug_never_shows_the_value() {
    let cred = secret(header("authorization"), "{}", "canary-value-123");
    let debug = format!("{cred:?}");
    assert!(!debug.contains("canary-value-123"), "{debug}");
    assert!(debug.contains("TOKEN"));
}

#[test]
fn a_value_with_a_newline_is_refused_not_injected() {
    let cred = secret(header("authorization"), "{}", "bad\nvalue");
    let mut headers = HeaderMap::new();
    assert!(matches!(
        inject(&cred, &mut headers, &mut None),
        Err(CredentialError::NotAHeaderValue(_))
    ));
    assert!(headers.is_empty());
}
