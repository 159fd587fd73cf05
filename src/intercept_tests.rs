#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn leaves_are_cached_per_host_and_name_the_host() {
    let dir = tempfile::tempdir().unwrap();
    crate::certs::init(dir.path(), &[], false).unwrap();
    let interceptor = Interceptor::load(dir.path()).unwrap();
    let a = Host::Name("api.example.com".into());
    let b = Host::Ip("127.0.0.1".parse().unwrap());
    let first = interceptor.server_config(&a).unwrap();
    let again = interceptor.server_config(&a).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let other = interceptor.server_config(&b).unwrap();
    assert!(!Arc::ptr_eq(&first, &other));
    assert_eq!(
        first.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let missing = Interceptor::load(&dir.path().join("nothing")).unwrap_err();
    assert!(missing.to_string().contains("certs init"), "{missing}");
}
