#[test]
fn accept_key_matches_rfc_6455() {
    assert_eq!(
        super::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(super::base64(b"ab"), "YWI=");
    assert_eq!(super::base64(b"a"), "YQ==");
}
