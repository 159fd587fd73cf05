#![allow(clippy::unwrap_used)]

use std::time::Duration;

use secrecy::SecretString;

use super::*;

fn session() -> AwsSession {
    AwsSession {
        access_key_id: "ASIAMINTED".into(),
        secret_access_key: SecretString::from("minted-secret".to_owned()),
        session_token: SecretString::from("minted-token".to_owned()),
        expiration: SystemTime::now() + Duration::from_secs(900),
    }
}

fn scope(service: &str) -> SigningScope {
    SigningScope {
        service: service.into(),
        region: "us-east-1".into(),
        time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

fn agent_signed_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AKIDUMMY/20231114/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00"),
    );
    headers.insert(
        "x-amz-security-token",
        HeaderValue::from_static("agent-token"),
    );
    headers.insert("x-amz-date", HeaderValue::from_static("20200101T000000Z"));
    headers.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static("UNSIGNED-PAYLOAD"),
    );
    headers.insert("expect", HeaderValue::from_static("100-continue"));
    headers
}

#[test]
fn the_agents_signature_is_replaced_by_the_minted_one() {
    let mut headers = agent_signed_headers();
    let uri: Uri = "http://127.0.0.1:5000/bucket/key.txt".parse().unwrap();
    resign(
        &Method::PUT,
        &uri,
        &mut headers,
        Payload::Bytes(b"hello"),
        &session(),
        &scope("s3"),
    )
    .unwrap();
    let auth = headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=ASIAMINTED/20231114/us-east-1/s3/aws4_request"
        ),
        "{auth}"
    );
    assert!(!auth.contains("AKIDUMMY"));
    assert!(headers["authorization"].is_sensitive());
    assert_eq!(headers["x-amz-security-token"], "minted-token");
    assert_eq!(headers["x-amz-date"], "20231114T221320Z");
    // S3 gets the body's hash in a header of its own.
    assert_eq!(
        headers["x-amz-content-sha256"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert!(headers.get("expect").is_none());
}

#[test]
fn unsigned_payload_is_only_for_s3() {
    let uri: Uri = "https://s3.us-east-1.amazonaws.com/b/k".parse().unwrap();
    let mut headers = HeaderMap::new();
    resign(
        &Method::PUT,
        &uri,
        &mut headers,
        Payload::Unsigned,
        &session(),
        &scope("s3"),
    )
    .unwrap();
    assert_eq!(headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
    let mut headers = HeaderMap::new();
    let err = resign(
        &Method::POST,
        &uri,
        &mut headers,
        Payload::Unsigned,
        &session(),
        &scope("sqs"),
    );
    assert!(matches!(err, Err(CredentialError::Signing(_))));
}

#[test]
fn service_and_region_come_from_aws_hosts() {
    let cases = [
        ("s3.us-west-2.amazonaws.com", Some(("s3", "us-west-2"))),
        (
            "reports.s3.eu-west-1.amazonaws.com",
            Some(("s3", "eu-west-1")),
        ),
        ("reports.s3.amazonaws.com", Some(("s3", "us-east-1"))),
        ("s3.amazonaws.com", Some(("s3", "us-east-1"))),
        ("s3-eu-west-1.amazonaws.com", Some(("s3", "eu-west-1"))),
        ("s3-external-1.amazonaws.com", Some(("s3", "us-east-1"))),
        ("s3-x.s3.eu-west-2.amazonaws.com", Some(("s3", "eu-west-2"))),
        (
            "b.s3.dualstack.ap-south-1.amazonaws.com",
            Some(("s3", "ap-south-1")),
        ),
        (
            "logs.s3bak.s3.us-west-1.amazonaws.com",
            Some(("s3", "us-west-1")),
        ),
        (
            "dynamodb.eu-central-1.amazonaws.com",
            Some(("dynamodb", "eu-central-1")),
        ),
        ("sts.amazonaws.com", Some(("sts", "us-east-1"))),
        ("127.0.0.1", None),
        ("example.com", None),
    ];
    for (host, expected) in cases {
        let got = service_and_region(host);
        let expected = expected.map(|(s, r)| (s.to_owned(), r.to_owned()));
        assert_eq!(got, expected, "{host}");
    }
}

#[test]
fn presigning_parameters_are_stripped_and_the_rest_kept() {
    assert_eq!(
        strip_presign(
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&x-id=GetObject&X-Amz-Signature=ab&x-amz-credential=c"
        )
        .as_deref(),
        Some("x-id=GetObject")
    );
    assert_eq!(strip_presign("X-Amz-Signature=ab"), None);
}

#[test]
fn a_header_that_cannot_be_signed_refuses_the_request() {
    let mut headers = HeaderMap::new();
    headers.insert("x-note", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
    let uri: Uri = "https://s3.us-east-1.amazonaws.com/b/k".parse().unwrap();
    let err = resign(
        &Method::GET,
        &uri,
        &mut headers,
        Payload::Bytes(b""),
        &session(),
        &scope("s3"),
    );
    assert!(matches!(err, Err(CredentialError::Signing(_))));
}
