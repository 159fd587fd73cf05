//! Reaching Redis: the maintained `redis` crate (multiplexed connection,
//! reconnection, EVALSHA with NOSCRIPT recovery), over TLS with rustls
//! (`rediss://`, the chain verified against `--limits-ca` or the system's
//! roots, the host name checked) and ACL authentication (the user in the
//! URL, the password from a file or `CLAWGATE_LIMITS_PASSWORD`).
//!
//! Invariants:
//! - A password in the URL is refused: a command line is readable by every
//!   user of the machine. `#insecure` (no host name check) is refused.
//! - Neither `Debug` nor an error says the password: the crate's parse
//!   errors, which can quote the URL, are never shown.

use std::path::PathBuf;

use redis::{ConnectionAddr, IntoConnectionInfo};
use secrecy::{ExposeSecret, SecretString};

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "CLAWGATE_LIMITS_PASSWORD";

/// Where Redis is: `rediss://[USER@]HOST:PORT`, `redis://[USER@]HOST:PORT`
/// or `unix:///PATH`.
#[derive(Clone)]
pub struct RedisTarget {
    info: redis::ConnectionInfo,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addr = match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}"),
            ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}"),
            ConnectionAddr::Unix(path) => format!("unix://{}", path.display()),
            _ => "redis".to_owned(),
        };
        f.debug_struct("RedisTarget")
            .field("addr", &addr)
            .field("user", &self.info.redis_settings().username())
            .finish_non_exhaustive()
    }
}

impl PartialEq for RedisTarget {
    fn eq(&self, other: &Self) -> bool {
        self.info.addr() == other.info.addr()
            && self.info.redis_settings().username() == other.info.redis_settings().username()
    }
}

impl std::str::FromStr for RedisTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const FORMS: &str = "rediss://[USER@]HOST:PORT, redis://[USER@]HOST:PORT or unix:///PATH";
        let known = ["redis://", "rediss://", "unix://", "redis+unix://"];
        if !known.iter().any(|p| text.starts_with(p)) {
            return Err(format!("the Redis address must be {FORMS}"));
        }
        // The crate's message can quote the URL, password included.
        let info = text
            .into_connection_info()
            .map_err(|_| format!("the Redis address must be {FORMS}"))?;
        if info.redis_settings().password().is_some() {
            return Err(format!(
                "a password in the Redis URL is not taken (a command line is visible to every user): \
                 use --limits-password-file or {PASSWORD_ENV}"
            ));
        }
        if let ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
            return Err(
                "`#insecure` is not taken: the Redis server's host name is always checked".into(),
            );
        }
        Ok(RedisTarget { info })
    }
}

impl RedisTarget {
    /// Whether Redis is reached over TLS.
    pub fn tls(&self) -> bool {
        matches!(self.info.addr(), ConnectionAddr::TcpTls { .. })
    }
}

/// How this replica proves itself to Redis and checks Redis.
#[derive(Clone, Default)]
pub struct RedisAuth {
    /// The CA that signed Redis's certificate (the system's roots when absent).
    pub ca: Option<PathBuf>,
    /// A client certificate and key, when Redis asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
    /// The ACL user's password.
    pub password: Option<SecretString>,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("ca", &self.ca)
            .field("client", &self.client)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RedisAuth {
    /// The password in `path`, without its trailing line break.
    pub fn read_password(path: &std::path::Path) -> Result<SecretString, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--limits-password-file {}: {e}", path.display()))?;
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            return Err(format!(
                "--limits-password-file {} is empty",
                path.display()
            ));
        }
        Ok(SecretString::from(text.to_owned()))
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// A client for `target` with `auth`; nothing is contacted yet.
pub fn client(target: &RedisTarget, auth: &RedisAuth) -> Result<redis::Client, String> {
    let mut info = target.info.clone();
    if let Some(password) = &auth.password {
        let settings = info
            .redis_settings()
            .clone()
            .set_password(password.expose_secret());
        info = info.set_redis_settings(settings);
    }
    if !target.tls() {
        if auth.ca.is_some() || auth.client.is_some() {
            return Err("--limits-ca and --limits-cert need a rediss:// address".into());
        }
        return redis::Client::open(info).map_err(|e| format!("redis: {}", e.kind_name()));
    }
    for pem in auth.ca.iter() {
        crate::tls::read_certs(pem).map_err(|e| format!("--limits-ca: {e}"))?;
    }
    let certificates = redis::TlsCertificates {
        client_tls: match &auth.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert, "--limits-cert")?,
                client_key: read(key, "--limits-key")?,
            }),
            None => None,
        },
        root_cert: auth
            .ca
            .as_deref()
            .map(|ca| read(ca, "--limits-ca"))
            .transpose()?,
    };
    redis::Client::build_with_tls(info, certificates)
        .map_err(|e| format!("redis tls settings: {e}"))
}

/// The name of an error kind, for messages that must not quote input.
trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for redis::RedisError {
    fn kind_name(&self) -> String {
        format!("{:?}", self.kind())
    }
}
