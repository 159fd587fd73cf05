use super::*;

fn env_with(value: &'static str) -> impl Fn(&str) -> Option<String> {
    move |name| (name == "TOKEN").then(|| value.to_owned())
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
    let cred = Credential::resolve(
        SecretSource::Env("TOKEN".into()),
        HeaderName::from_static("authorization"),
        Format::parse("Bearer {}").unwrap(),
        &env_with("s3cr3t"),
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer agent-own"),
    );
    cred.inject(&mut headers).unwrap();
    assert_eq!(headers.get_all("authorization").iter().count(), 1);
    assert_eq!(headers["authorization"], "Bearer s3cr3t");
    assert!(headers["authorization"].is_sensitive());
}

#[test]
fn inject_into_another_header_still_drops_authorization() {
    let cred = Credential::resolve(
        SecretSource::Env("TOKEN".into()),
        HeaderName::from_static("x-api-key"),
        Format::parse("{}").unwrap(),
        &env_with("k"),
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer agent-own"),
    );
    headers.insert("x-api-key", HeaderValue::from_static("agent-key"));
    cred.inject(&mut headers).unwrap();
    assert!(headers.get("authorization").is_none());
    assert_eq!(headers["x-api-key"], "k");
}

#[test]
fn missing_value_is_an_error_that_names_the_source_only() {
    let cred = Credential::resolve(
        SecretSource::Env("ABSENT".into()),
        HeaderName::from_static("authorization"),
        Format::parse("{}").unwrap(),
        &env_with("never"),
    );
    assert!(!cred.is_available());
    let err = cred.inject(&mut HeaderMap::new()).unwrap_err();
    assert_eq!(err.to_string(), "credential `env:ABSENT` has no value");
}

#[test]
fn debug_never_shows_the_value() {
    let cred = Credential::resolve(
        SecretSource::Env("TOKEN".into()),
        HeaderName::from_static("authorization"),
        Format::parse("{}").unwrap(),
        &env_with("canary-value-123"),
    );
    let debug = format!("{cred:?}");
    assert!(!debug.contains("canary-value-123"), "{debug}");
    assert!(debug.contains("env:TOKEN") || debug.contains("TOKEN"));
}

#[test]
fn a_value_with_a_newline_is_refused_not_injected() {
    let cred = Credential::resolve(
        SecretSource::Env("TOKEN".into()),
        HeaderName::from_static("authorization"),
        Format::parse("{}").unwrap(),
        &env_with("bad\nvalue"),
    );
    let mut headers = HeaderMap::new();
    assert!(matches!(
        cred.inject(&mut headers),
        Err(CredentialError::NotAHeaderValue(_))
    ));
    assert!(headers.is_empty());
}
