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

#[test]
fn a_ca_whose_key_is_another_pairs_is_refused_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    crate::certs::init(dir.path(), &[], false).unwrap();
    crate::certs::init(other.path(), &[], false).unwrap();
    let interceptor = Interceptor::load(dir.path()).unwrap();
    std::fs::copy(
        other.path().join(files::INTERCEPT_CA_KEY),
        dir.path().join(files::INTERCEPT_CA_KEY),
    )
    .unwrap();
    let err = interceptor.reload(dir.path()).unwrap_err();
    assert!(err.contains("its key is not the one in"), "{err}");
    // Leaves are still minted by the CA in force.
    let host = Host::Name("example.com".into());
    assert!(interceptor.server_config(&host).is_ok());
}
