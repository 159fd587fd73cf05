//! Routing: what an agent's request names as its destination, before policy.
//!
//! Three shapes reach the agent listener:
//! - gateway: `https://clawgate/<route>/<rest>?<query>` (origin form, and every
//!   HTTP/2 request), which policy resolves by route;
//! - forward proxy: `GET http://host/path` in absolute form (HTTP/1.x), which
//!   policy resolves by host;
//! - `CONNECT host:port`, refused for now.
//!
//! Paths are normalised here, once: policy matches the decoded path and the
//! upstream receives its one canonical encoding, so the two can never
//! disagree. Anything ambiguous (dot segments, encoded separators, double
//! encoding, empty segments, backslashes) is refused rather than guessed at.

use http::{Method, Request, Version};

/// How the agent reached clawgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Base-URL gateway: `/<route>/<rest>`.
    Gateway,
    /// Absolute-form forward-proxy request.
    Forward,
    /// A `CONNECT` tunnel request.
    Connect,
}

impl Mode {
    /// The name used in records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Gateway => "gateway",
            Mode::Forward => "forward",
            Mode::Connect => "connect",
        }
    }
}

/// Where a request is headed, as the agent named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A gateway route and the path below it.
    Route {
        /// The first path segment.
        route: String,
        /// The normalised path below the route, starting with `/`.
        path: String,
    },
    /// A forward-proxy host and path.
    Host {
        /// Lowercase host, trailing dot removed, IPv6 without brackets.
        host: String,
        /// The port, when the agent named one.
        port: Option<u16>,
        /// The normalised path, starting with `/`.
        path: String,
    },
    /// A `CONNECT` target.
    Connect {
        /// Lowercase host.
        host: String,
        /// The requested port.
        port: Option<u16>,
    },
}

/// A routed request: its mode, destination and raw query (forwarded as-is,
/// never recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// How the agent reached clawgate.
    pub mode: Mode,
    /// Where it is headed.
    pub destination: Destination,
    /// The query string without `?`, if any.
    pub query: Option<String>,
}

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path is ambiguous or invalid.
    #[error("path is not acceptable: {0}")]
    BadPath(&'static str),
    /// The request names no route or host.
    #[error("request names no destination")]
    NoDestination,
    /// The method is not an uppercase token.
    #[error("method must be uppercase")]
    BadMethod,
}

/// Classifies a request and normalises its path.
pub fn route<B>(req: &Request<B>) -> Result<Routed, RouteError> {
    // Methods are case-sensitive, but some upstreams upper-case them: a
    // lowercase `delete` must not slip past a rule written for `DELETE`.
    if !req
        .method()
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_uppercase())
    {
        return Err(RouteError::BadMethod);
    }
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        let authority = uri.authority().ok_or(RouteError::NoDestination)?;
        return Ok(Routed {
            mode: Mode::Connect,
            destination: Destination::Connect {
                host: normalise_host(authority.host()),
                port: authority.port_u16(),
            },
            query: None,
        });
    }
    let query = uri.query().map(str::to_owned);
    // HTTP/2 always carries an authority; only HTTP/1.x absolute form means a
    // forward-proxy request.
    let absolute = req.version() < Version::HTTP_2 && uri.authority().is_some();
    if absolute {
        let authority = uri.authority().ok_or(RouteError::NoDestination)?;
        let host = normalise_host(authority.host());
        if host.is_empty() {
            return Err(RouteError::NoDestination);
        }
        return Ok(Routed {
            mode: Mode::Forward,
            destination: Destination::Host {
                host,
                port: authority.port_u16(),
                path: normalise_path(uri.path())?,
            },
            query,
        });
    }
    let path = normalise_path(uri.path())?;
    let rest = &path[1..];
    let (route, below) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if route.is_empty() {
        return Err(RouteError::NoDestination);
    }
    Ok(Routed {
        mode: Mode::Gateway,
        destination: Destination::Route {
            route: route.to_owned(),
            path: below.to_owned(),
        },
        query,
    })
}

/// Lowercases a host, strips IPv6 brackets and a trailing dot.
pub fn normalise_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Normalises a request path so that policy and upstream see the same thing.
///
/// Every percent escape is decoded, and rules match the decoded text: an
/// upstream decodes before it routes, so `/admin%3Aexport` must meet the rule
/// written for `/admin:export`. The upstream then receives [`encode_path`] of
/// that same decoded text. Refused, because each is a known way to make a path
/// matcher and an upstream disagree: encoded `/`, `\`, `%` (double encoding)
/// or control characters, raw backslashes and control characters, bytes that
/// are not UTF-8, dot segments (also with `;` parameters, as in `..;`), and
/// empty segments.
pub fn normalise_path(raw: &str) -> Result<String, RouteError> {
    if !raw.starts_with('/') {
        return Err(RouteError::BadPath("must start with `/`"));
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                return Err(RouteError::BadPath("broken percent escape"));
            };
            match (hi * 16 + lo) as u8 {
                b'/' | b'\\' => return Err(RouteError::BadPath("encoded path separator")),
                b'%' => return Err(RouteError::BadPath("encoded percent sign")),
                c if c < 0x20 || c == 0x7f => {
                    return Err(RouteError::BadPath("encoded control character"));
                }
                c => decoded.push(c),
            }
            i += 3;
        } else {
            if b == b'\\' {
                return Err(RouteError::BadPath("backslash"));
            }
            if b < 0x20 || b == 0x7f {
                return Err(RouteError::BadPath("control character"));
            }
            decoded.push(b);
            i += 1;
        }
    }
    let path = String::from_utf8(decoded).map_err(|_| RouteError::BadPath("not UTF-8"))?;
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (n, segment) in segments.iter().enumerate() {
        // `..;x` is `..` to servlet containers, which drop `;` parameters.
        let name = segment.split(';').next().unwrap_or_default();
        if name == "." || name == ".." {
            return Err(RouteError::BadPath("dot segment"));
        }
        // A trailing slash is fine; an empty segment in the middle (`//`) is not.
        if segment.is_empty() && n != last {
            return Err(RouteError::BadPath("empty segment"));
        }
    }
    Ok(path)
}

/// The one wire form of a decoded path: unreserved characters, sub-delimiters,
/// `:`, `@` and `/` as they are, every other byte percent-encoded.
pub fn encode_path(decoded: &str) -> String {
    let mut out = String::with_capacity(decoded.len());
    for &b in decoded.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
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
                    let name = segment.split(';').next().unwrap_or_default();
                    proptest::prop_assert!(name != "." && name != "..");
                }
                proptest::prop_assert!(!path.contains("//"));
                proptest::prop_assert!(!path.contains('%') && !path.contains('\\'));
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
            ("/a;b=1/c", "/a;b=1/c"),
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
        ];
        for raw in bad {
            assert!(normalise_path(raw).is_err(), "{raw} should be refused");
        }
    }
}
