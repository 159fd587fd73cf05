use super::*;

fn req(method: &str, uri: &str, version: Version) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(())
        .unwrap()
}

#[test]
fn gateway_paths_split_into_route_and_rest_and_keep_the_query() {
    let r = route(&req("GET", "/echo/v1/items?page=2", Version::HTTP_11)).unwrap();
    assert_eq!(r.mode, Mode::Gateway);
    assert_eq!(
        r.destination,
        Destination::Route {
            route: "echo".into(),
            path: "/v1/items".into()
        }
    );
    assert_eq!(r.query.as_deref(), Some("page=2"));
    let r = route(&req("GET", "/echo", Version::HTTP_11)).unwrap();
    assert_eq!(
        r.destination,
        Destination::Route {
            route: "echo".into(),
            path: "/".into()
        }
    );
}

#[test]
fn http2_requests_are_gateway_requests_even_with_an_authority() {
    let r = route(&req(
        "GET",
        "https://localhost:8443/echo/x",
        Version::HTTP_2,
    ))
    .unwrap();
    assert_eq!(r.mode, Mode::Gateway);
}

#[test]
fn absolute_form_is_a_forward_proxy_request() {
    let r = route(&req(
        "GET",
        "http://API.Example.com.:8080/a/b?x=1",
        Version::HTTP_11,
    ))
    .unwrap();
    assert_eq!(r.mode, Mode::Forward);
    assert_eq!(
        r.destination,
        Destination::Host {
            host: "api.example.com".into(),
            port: Some(8080),
            path: "/a/b".into()
        }
    );
}

#[test]
fn connect_is_classified_with_its_target() {
    let r = route(&req("CONNECT", "example.com:443", Version::HTTP_11)).unwrap();
    assert_eq!(r.mode, Mode::Connect);
    assert_eq!(
        r.destination,
        Destination::Connect {
            host: "example.com".into(),
            port: Some(443)
        }
    );
}

#[test]
fn root_names_no_route() {
    assert_eq!(
        route(&req("GET", "/", Version::HTTP_11)),
        Err(RouteError::NoDestination)
    );
}

proptest::proptest! {
    /// Whatever an agent sends, an accepted path has no dot segments and
    /// no empty segments, and its wire form decodes back to exactly the
    /// text policy matched.
    #[test]
    fn accepted_paths_are_canonical(raw in "/[a-zA-Z0-9%./\\\\_~;:é -]{0,24}") {
        if let Ok(path) = normalise_path(&raw) {
            proptest::prop_assert!(path.starts_with('/'));
            for segment in path[1..].split('/') {
            proptest::prop_assert!(segment != "." && segment != "..");
            }
            proptest::prop_assert!(!path.contains("//"));
        proptest::prop_assert!(!path.contains(['%', '\\', ';']));
            let wire = encode_path(&path);
            proptest::prop_assert!(wire.is_ascii());
            proptest::prop_assert_eq!(normalise_path(&wire), Ok(path.clone()));
        }
    }
}

#[test]
fn lowercase_methods_are_refused() {
    assert_eq!(
        route(&req("delete", "/echo/x", Version::HTTP_11)),
        Err(RouteError::BadMethod)
    );
    assert!(route(&req("PROPFIND", "/echo/x", Version::HTTP_11)).is_ok());
}

#[test]
fn wire_form_encodes_what_is_not_a_path_character() {
    assert_eq!(encode_path("/a b/café?#"), "/a%20b/caf%C3%A9%3F%23");
    assert_eq!(
        encode_path("/admin:export;v=1/@x+y"),
        "/admin:export;v=1/@x+y"
    );
}

#[test]
fn path_normalisation_table() {
    let ok = [
        ("/", "/"),
        ("/a/b/", "/a/b/"),
        ("/%61%62c", "/abc"),
        ("/a%2db", "/a-b"),
        ("/a%20b", "/a b"),
        ("/a%3fb", "/a?b"),
        ("/admin%3Aexport", "/admin:export"),
        ("/v1/items.json", "/v1/items.json"),
        ("/caf%C3%A9", "/café"),
        ("/café", "/café"),
    ];
    for (raw, want) in ok {
        assert_eq!(normalise_path(raw).as_deref(), Ok(want), "{raw}");
    }
    let bad = [
        "relative",
        "/a/../admin",
        "/a/./b",
        "/a/%2e%2e/admin",
        "/a/%2E/b",
        "/a%2fadmin",
        "/a%5Cadmin",
        "/a\\b",
        "//admin",
        "/a//b",
        "/a%zz",
        "/a%4",
        "/a%00",
        "/..",
        "/a/..;/admin",
        "/a/.;x/b",
        "/a/%2e%2e;/b",
        "/a%252e%252e/b",
        "/a%FF",
        "/a\u{7f}",
        "/a%0a",
        "/v1/admin;x/users",
        "/v1/admin%3Bx/users",
        "/a;b=1/c",
    ];
    for raw in bad {
        assert!(normalise_path(raw).is_err(), "{raw} should be refused");
    }
}
