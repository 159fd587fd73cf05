use base64::Engine;
use http::header;

use super::grant::metadata_urls;

use super::*;

fn credential(auth: ClientAuth) -> OAuthCredential {
    OAuthCredential {
        endpoint: Endpoint::Token("https://idp.example/token".into()),
        client_id: "svc".into(),
        auth,
        bearer: None,
        refresh: None,
        scope: Some("read".into()),
        resources: vec!["https://api.example/".into()],
        audience: None,
        placement: Placement::Header(http::HeaderName::from_static("authorization")),
        format: Format::parse("Bearer {}").unwrap(),
        refresh_margin: Duration::from_secs(60),
        safety_margin: Duration::from_secs(10),
        roots: Arc::default(),
        allow_private: Arc::default(),
        digest: [1; 32],
    }
}

fn secret(value: &str) -> SecretValue {
    SecretValue::resolve(
        super::super::SecretSource::Env("CLIENT_SECRET".into()),
        super::super::SecretTiming::default(),
        &|_| Some(value.to_owned()),
    )
}

fn answer(status: u16, json: serde_json::Value) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        json: Some(json),
    }
}

#[test]
fn provider_errors_map_to_their_reasons() {
    let c = credential(ClientAuth::SecretBasic(secret("s3cret")));
    let cases = [
        (400, "invalid_grant", MintFailure::InvalidGrant),
        (401, "invalid_client", MintFailure::InvalidGrant),
        (400, "invalid_scope", MintFailure::InvalidGrant),
        (400, "consent_required", MintFailure::ConsentRequired),
        (400, "interaction_required", MintFailure::ConsentRequired),
        (
            503,
            "temporarily_unavailable",
            MintFailure::EndpointUnreachable,
        ),
        (500, "invalid_grant", MintFailure::EndpointUnreachable),
    ];
    for (status, code, expected) in cases {
        let got = parse_token_answer(&c, answer(status, serde_json::json!({"error": code})));
        assert_eq!(got.err().map(|e| e.0), Some(expected), "{status} {code}");
    }
    let no_json = Answer {
        status: StatusCode::BAD_GATEWAY,
        json: None,
    };
    assert_eq!(
        parse_token_answer(&c, no_json).err().map(|e| e.0),
        Some(MintFailure::EndpointUnreachable)
    );
}

#[test]
fn a_token_answer_gives_lifetime_and_granted_scope_and_never_shows_the_token() {
    let c = credential(ClientAuth::SecretPost(secret("s3cret")));
    let token = parse_token_answer(
        &c,
        answer(
            200,
            serde_json::json!({"access_token": "tok-canary", "token_type": "bearer", "expires_in": 120, "scope": "read write"}),
        ),
    )
    .unwrap();
    assert_eq!(token.lifetime, Duration::from_secs(120));
    assert_eq!(token.granted_scope.as_deref(), Some("read write"));
    assert!(!format!("{token:?}").contains("tok-canary"));
    assert!(!format!("{c:?}").contains("s3cret"));
    // Not Bearer: refused rather than injected the wrong way.
    let dpop = parse_token_answer(
        &c,
        answer(
            200,
            serde_json::json!({"access_token": "x", "token_type": "DPoP"}),
        ),
    );
    assert_eq!(dpop.err().map(|e| e.0), Some(MintFailure::InvalidGrant));
}

#[test]
fn broader_scopes_are_those_granted_but_not_asked() {
    assert_eq!(broader_scopes("read", "read write"), vec!["write"]);
    assert!(broader_scopes("read write", "read").is_empty());
    assert!(broader_scopes("", "anything").is_empty());
}

#[test]
fn metadata_urls_follow_rfc_8414_then_openid() {
    assert_eq!(
        metadata_urls("https://idp.example"),
        vec![
            "https://idp.example/.well-known/oauth-authorization-server",
            "https://idp.example/.well-known/openid-configuration"
        ]
    );
    assert_eq!(
        metadata_urls("https://idp.example/tenant/"),
        vec![
            "https://idp.example/.well-known/oauth-authorization-server/tenant",
            "https://idp.example/tenant/.well-known/openid-configuration"
        ]
    );
}

fn held(secret: &str) -> Held {
    Held {
        client_secret: Some(SecretString::from(secret.to_owned())),
        private_key: None,
        refresh_token: None,
    }
}

#[test]
fn basic_and_post_requests_carry_the_client_as_configured() {
    let basic = credential(ClientAuth::SecretBasic(secret("s:3")));
    let request = token_request(
        &basic,
        "https://idp.example/token",
        "https://idp.example",
        &held("s:3"),
    )
    .unwrap();
    let auth = request.headers()[header::AUTHORIZATION].to_str().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(decoded, b"svc:s%3A3");
    assert!(request.headers()[header::AUTHORIZATION].is_sensitive());
    let post = credential(ClientAuth::SecretPost(secret("s3")));
    let request = token_request(
        &post,
        "https://idp.example/token",
        "https://idp.example",
        &held("s3"),
    )
    .unwrap();
    assert!(request.headers().get(header::AUTHORIZATION).is_none());
}

#[test]
fn a_refresh_request_carries_the_refresh_token_and_the_client() {
    let mut c = credential(ClientAuth::SecretBasic(secret("s3")));
    c.refresh = Some(RefreshStore::File("rt".into()));
    let mut with = held("s3");
    with.refresh_token = Some(SecretString::from("rt-value".to_owned()));
    let request = token_request(
        &c,
        "https://idp.example/token",
        "https://idp.example",
        &with,
    )
    .unwrap();
    assert!(request.headers()[header::AUTHORIZATION].is_sensitive());
    let body = request.into_body();
    let bytes = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(body))
        .unwrap()
        .unwrap()
        .to_bytes();
    let form: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
    assert!(form.contains(&("grant_type".into(), "refresh_token".into())));
    assert!(form.contains(&("refresh_token".into(), "rt-value".into())));
    assert!(form.contains(&("scope".into(), "read".into())));
    // Without a client secret at hand, nothing is sent.
    with.client_secret = None;
    let err = token_request(
        &c,
        "https://idp.example/token",
        "https://idp.example",
        &with,
    )
    .unwrap_err();
    assert!(err.contains("env:CLIENT_SECRET"), "{err}");
}
