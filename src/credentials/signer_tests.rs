//! The signer against `aws-sigv4`'s, on the same requests: both must send
//! the same headers, byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::{Signed, Signing, sign};

const TOKEN: &str = "FwoGZXIvYXdzEXAMPLETOKEN";

fn signing(
    secret: &str,
    region: &'static str,
    service: &'static str,
    time: SystemTime,
) -> Signing<'static> {
    Signing {
        access_key_id: "ASIAEXAMPLE",
        secret_access_key: Box::leak(secret.to_owned().into_boxed_str()),
        session_token: TOKEN,
        region,
        service,
        time,
        s3: service == "s3",
    }
}

/// What `aws-sigv4` sends for the same request, as `resign` used it.
fn reference(
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    payload_hash: &str,
    s: &Signing<'_>,
) -> Signed {
    let mut settings = SigningSettings::default();
    if s.s3 {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let identity: Identity = aws_credential_types::Credentials::new(
        s.access_key_id,
        s.secret_access_key,
        Some(s.session_token.to_owned()),
        None,
        "test",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(s.region)
        .name(s.service)
        .time(s.time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let body = match payload_hash {
        "UNSIGNED-PAYLOAD" => SignableBody::UnsignedPayload,
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => SignableBody::StreamingUnsignedPayloadTrailer,
        hash => SignableBody::Precomputed(hash.to_owned()),
    };
    let list: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    let request = SignableRequest::new(method, uri.to_string(), list.into_iter(), body).unwrap();
    let (instructions, _) = aws_sigv4::http_request::sign(request, &params)
        .unwrap()
        .into_parts();
    let (out, _) = instructions.into_parts();
    let find = |name: &str| {
        out.iter()
            .find(|h| h.name() == name)
            .map(|h| h.value().to_owned())
    };
    assert_eq!(find("x-amz-security-token").as_deref(), Some(TOKEN));
    Signed {
        x_amz_date: find("x-amz-date").unwrap(),
        authorization: find("authorization").unwrap(),
        content_sha256: find("x-amz-content-sha256"),
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

fn assert_same(method: &str, uri: &str, h: &HeaderMap, payload: &str, s: &Signing<'_>) {
    let uri: Uri = uri.parse().unwrap();
    let ours = sign(method, &uri, h, payload, s).unwrap();
    let theirs = reference(method, &uri, h, payload, s);
    assert_eq!(ours, theirs, "{method} {uri}");
}

#[test]
fn signatures_match_aws_sigv4_on_chosen_requests() {
    let body = hex::encode(Sha256::digest(b"{\"TableName\":\"t\"}"));
    let plain = headers(&[
        ("content-type", "application/x-amz-json-1.0"),
        ("x-amz-target", "DynamoDB_20120810.ListTables"),
        ("user-agent", "agent/1.0"),
        ("accept", "  a   b  "),
        ("x-custom", "one"),
        ("x-custom", "two"),
        ("x-amzn-trace-id", "Root=1-5759e988"),
    ]);
    let with_host = headers(&[("host", "example.amazonaws.com:8443"), ("accept", "*/*")]);
    for service in ["dynamodb", "s3", "sts"] {
        for (uri, h) in [
            ("https://dynamodb.us-east-1.amazonaws.com/", &plain),
            ("https://dynamodb.us-east-1.amazonaws.com", &plain),
            (
                "https://s3.amazonaws.com:443/bucket/a/../b/./c//d.txt",
                &plain,
            ),
            (
                "http://127.0.0.1:5000/bucket/key%20with%2Fslash?list-type=2&prefix=a%2Fb&b=&a=z+y",
                &plain,
            ),
            (
                "https://example.amazonaws.com/p?X=1&x=2&%E2%82%AC=%E2%82%AC&flag",
                &with_host,
            ),
            ("http://localhost:80/-_.~!$&'()*+,;=:@/?q=%20%2B+", &plain),
            (
                "https://h.amazonaws.com/%7Euser/%2e%2e/x?a=b&a=a",
                &HeaderMap::new(),
            ),
        ] {
            for payload in [body.as_str(), "UNSIGNED-PAYLOAD"] {
                let s = signing(
                    "wJalrXUtnFEMI/K7MDENG",
                    "us-east-1",
                    service,
                    at(1_700_000_000),
                );
                assert_same("GET", uri, h, payload, &s);
                assert_same("POST", uri, h, payload, &s);
            }
        }
    }
}

#[test]
fn a_cached_key_serves_only_its_own_secret_day_region_and_service() {
    let uri = "https://sqs.eu-west-1.amazonaws.com/?Action=ListQueues";
    let h = headers(&[("content-type", "text/plain")]);
    let payload = hex::encode(Sha256::digest(b""));
    // The same access key id with another secret, another day, region or
    // service: each must sign with its own key, as the reference does.
    for (secret, region, service, time) in [
        ("secret-one", "eu-west-1", "sqs", at(1_700_000_000)),
        ("secret-one", "eu-west-1", "sqs", at(1_700_000_100)),
        ("secret-two", "eu-west-1", "sqs", at(1_700_000_000)),
        ("secret-one", "eu-west-1", "sqs", at(1_700_090_000)),
        ("secret-one", "eu-west-2", "sqs", at(1_700_000_000)),
        ("secret-one", "eu-west-1", "sns", at(1_700_000_000)),
        ("secret-one", "eu-west-1", "sqs", at(1_700_000_000)),
    ] {
        assert_same(
            "GET",
            uri,
            &h,
            &payload,
            &signing(secret, region, service, time),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn signatures_match_aws_sigv4_on_generated_requests(
        segments in prop::collection::vec("[a-zA-Z0-9._~%!$'()*+,;=:@-]{0,8}", 0..5),
        query in prop::collection::vec(("[a-zA-Z0-9._~%+ -]{0,6}", "[a-zA-Z0-9._~%+=/ -]{0,6}"), 0..4),
        values in prop::collection::vec(("x-[a-c]", "[ a-z0-9]{0,8}"), 0..4),
        s3 in any::<bool>(),
        day in 0u64..3,
    ) {
        let mut uri = format!("https://svc.us-west-2.amazonaws.com/{}", segments.join("/"));
        let pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !pairs.is_empty() {
            uri.push('?');
            uri.push_str(&pairs.join("&"));
        }
        let uri = uri.replace(' ', "%20");
        // Only what `http` parses is a request clawgate could sign.
        prop_assume!(uri.parse::<Uri>().is_ok());
        let pairs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let h = headers(&pairs);
        let service = if s3 { "s3" } else { "execute-api" };
        let s = signing("generated-secret", "us-west-2", service, at(1_700_000_000 + day * 86_400));
        let payload = hex::encode(Sha256::digest(uri.as_bytes()));
        assert_same("PUT", &uri, &h, &payload, &s);
    }
}
