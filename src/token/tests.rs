#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::{Duration, SystemTime};

use base64::Engine;

use super::*;

fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = crate::certs::token_key_pair().unwrap();
    std::fs::write(dir.path().join(crate::certs::files::TOKEN_KEY), key).unwrap();
    std::fs::write(dir.path().join(crate::certs::files::TOKEN_PUB), public).unwrap();
    dir
}

#[test]
fn a_token_verifies_for_its_agent_only_and_until_it_expires() {
    let dir = certs();
    let now = SystemTime::now();
    let scopes = Some(vec!["echo".to_owned()]);
    let token = issue(
        dir.path(),
        "research",
        Duration::from_secs(60),
        scopes.clone(),
        Some("run-1".into()),
        now,
    )
    .unwrap();
    let verifier = Verifier::load(dir.path(), None).unwrap();
    let claims = verifier.verify(&token, Some("research"), now).unwrap();
    assert_eq!((claims.run.as_str(), claims.scopes), ("run-1", scopes));
    assert_eq!(
        verifier.verify(&token, Some("reporter"), now),
        Err(Reason::RunTokenWrongAgent)
    );
    // Within the leeway, then past it.
    let later = now + Duration::from_secs(62);
    assert!(verifier.verify(&token, Some("research"), later).is_ok());
    let expired = now + Duration::from_secs(60) + LEEWAY;
    assert_eq!(
        verifier.verify(&token, Some("research"), expired),
        Err(Reason::RunTokenExpired)
    );
    let early = now - Duration::from_secs(60);
    assert_eq!(
        verifier.verify(&token, Some("research"), early),
        Err(Reason::RunTokenInvalid),
        "not before"
    );
}

#[test]
fn tampered_foreign_and_malformed_tokens_are_invalid() {
    let dir = certs();
    let now = SystemTime::now();
    let token = issue(
        dir.path(),
        "research",
        Duration::from_secs(60),
        None,
        None,
        now,
    )
    .unwrap();
    let verifier = Verifier::load(dir.path(), None).unwrap();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(b64.decode(&parts[1]).unwrap()).unwrap();
    parts[1] = b64.encode(payload.replace("\"research\"", "\"reporter\""));
    let tampered = parts.join(".");
    assert_eq!(
        verifier.verify(&tampered, Some("reporter"), now),
        Err(Reason::RunTokenInvalid)
    );
    let other = certs();
    let foreign = issue(
        other.path(),
        "research",
        Duration::from_secs(60),
        None,
        None,
        now,
    )
    .unwrap();
    assert_eq!(
        verifier.verify(&foreign, Some("research"), now),
        Err(Reason::RunTokenInvalid)
    );
    assert_eq!(
        verifier.verify("not.a.token", Some("research"), now),
        Err(Reason::RunTokenInvalid)
    );
    assert_eq!(
        Verifier::none().verify(&token, Some("research"), now),
        Err(Reason::RunTokenInvalid)
    );
}

#[test]
fn an_external_issuers_keys_come_from_a_jwks_file() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    assert_eq!(raw.len(), 65);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "ext-1", "use": "sig", "alg": "ES256",
        "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..]),
    }]});
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let verifier = Verifier::load(dir.path(), Some((&jwks_path, "https://idp.example"))).unwrap();

    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = Claims {
        iss: "https://idp.example".into(),
        aud: AUDIENCE.into(),
        sub: "research".into(),
        run: "ext-run".into(),
        exp: secs + 60,
        nbf: secs,
        iat: secs,
        scopes: None,
    };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ext-1".into());
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    assert_eq!(
        verifier.verify(&token, Some("research"), now).unwrap().run,
        "ext-run"
    );
    // The external key does not vouch for another issuer's name.
    let wrong_iss = Claims {
        iss: ISSUER.into(),
        ..claims
    };
    let token = jsonwebtoken::encode(&header, &wrong_iss, &key).unwrap();
    assert_eq!(
        verifier.verify(&token, Some("research"), now),
        Err(Reason::RunTokenInvalid)
    );
}

#[test]
fn ttl_is_bounded() {
    let dir = certs();
    let now = SystemTime::now();
    assert!(matches!(
        issue(dir.path(), "a", Duration::ZERO, None, None, now),
        Err(TokenError::Ttl)
    ));
    assert!(matches!(
        issue(
            dir.path(),
            "a",
            Duration::from_secs(25 * 3600),
            None,
            None,
            now
        ),
        Err(TokenError::Ttl)
    ));
}
