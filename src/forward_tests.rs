use super::*;
use http::HeaderValue;

#[test]
fn hop_by_hop_and_connection_named_headers_are_removed() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-secret-hop"),
    );
    headers.insert("x-secret-hop", HeaderValue::from_static("1"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert("proxy-authorization", HeaderValue::from_static("Basic abc"));
    headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    headers.insert("x-clawgate-run-token", HeaderValue::from_static("t"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    strip_hop_by_hop(&mut headers);
    let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    assert_eq!(left, vec!["accept"]);
}

#[test]
fn upstream_uri_joins_authority_path_and_query() {
    let upstream = Upstream {
        scheme: http::uri::Scheme::HTTPS,
        host: "api.example.com".into(),
        port: 443,
        base_path: "/v2".into(),
    };
    assert_eq!(
        upstream_uri(&upstream, "/v2/items/1", Some("a=1&b=2")).unwrap(),
        "https://api.example.com/v2/items/1?a=1&b=2"
    );
    let local = Upstream {
        scheme: http::uri::Scheme::HTTPS,
        host: "::1".into(),
        port: 9443,
        base_path: String::new(),
    };
    assert_eq!(
        upstream_uri(&local, "/", None).unwrap(),
        "https://[::1]:9443/"
    );
}
