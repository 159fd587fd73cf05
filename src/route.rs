//! Routing: what an agent's request names as its destination, before policy.
//!
//! Three shapes reach the agent listener:
//! - gateway: `https://clawgate/<route>/<rest>?<query>` (origin form, and every
//!   HTTP/2 request), which policy resolves by route;
//! - forward proxy: `GET http://host/path` in absolute form (HTTP/1.x), which
//!   policy resolves by host;
//! - `CONNECT host:port`, which policy resolves by host and port, then
//!   tunnels or intercepts (see [`crate::connect`]).
//!
//! Paths are normalised here, once: policy matches the decoded path and the
//! upstream receives its one canonical encoding, so the two can never
//! disagree. Anything ambiguous (dot segments, encoded separators, double
//! encoding, empty segments, backslashes) is refused rather than guessed at.

use http::{Method, Request, Version};

/// The first path segment reserved for clawgate's own endpoints
/// (`/v1/credentials/aws/<scope>`); no scope may take it as a route.
pub const RESERVED_ROUTE: &str = "v1";

/// How the agent reached clawgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Base-URL gateway: `/<route>/<rest>`.
    Gateway,
    /// Absolute-form forward-proxy request.
    Forward,
    /// A `CONNECT` request (the tunnel itself).
    Connect,
    /// A request inside an intercepted `CONNECT`.
    Intercept,
}

impl Mode {
    /// The name used in records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Gateway => "gateway",
            Mode::Forward => "forward",
            Mode::Connect => "connect",
            Mode::Intercept => "intercept",
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
        /// The normalised host.
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
    /// The host is not a name or address clawgate can check.
    #[error("{0}")]
    BadHost(#[from] crate::egress::HostError),
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
                host: normalise_host(authority.host())?,
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
        let host = normalise_host(authority.host())?;
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

/// The one spelling of a host: see [`crate::egress::normalise_host`]. IP
/// literals in any form become their canonical text (IPv6 without brackets).
pub fn normalise_host(host: &str) -> Result<String, RouteError> {
    Ok(crate::egress::normalise_host(host)?.to_string())
}

/// Normalises a request path so that policy and upstream see the same thing.
///
/// Every percent escape is decoded, and rules match the decoded text: an
/// upstream decodes before it routes, so `/admin%3Aexport` must meet the rule
/// written for `/admin:export`. The upstream then receives [`encode_path`] of
/// that same decoded text. Refused, because each is a known way to make a path
/// matcher and an upstream disagree: encoded `/`, `\`, `%` (double encoding)
/// or control characters, raw backslashes and control characters, bytes that
/// are not UTF-8, `;` parameters (raw or encoded), dot segments, and empty
/// segments.
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
    // Servlet containers drop `;` parameters from a segment, so `admin;x`
    // is `admin` to them while a rule would see `admin;x`.
    if path.contains(';') {
        return Err(RouteError::BadPath("`;` parameter"));
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (n, segment) in segments.iter().enumerate() {
        if *segment == "." || *segment == ".." {
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

/// What requests inside an intercepted tunnel are bound to.
#[derive(Debug, Clone)]
pub struct Inside {
    /// The host the `CONNECT` named and policy allowed.
    pub host: crate::egress::Host,
    /// The port it named.
    pub port: u16,
    /// The `CONNECT`'s request id, written into every inner record.
    pub connect_id: String,
    /// The run token the `CONNECT` proved, which every request inside
    /// carries (a token peer has no other identity).
    pub run_token: Option<http::HeaderValue>,
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
