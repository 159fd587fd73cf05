//! Where the fleet's PostgreSQL store is, and how it is reached: TLS with
//! `sslmode=verify-full` semantics (the chain is verified against
//! `sslrootcert`, or the web PKI roots when absent, and the certificate must
//! name the host), a SCRAM password from a file or the environment, and an
//! optional client certificate.
//!
//! Invariants:
//! - TLS is rustls with ring: the one TLS stack of the binary.
//! - A TCP host gets `verify-full` unless the string says `sslmode=disable`;
//!   `require`, `verify-ca` and `prefer` are refused, since each lets a
//!   man in the middle read the decision log. A Unix socket gets no TLS.
//! - The password never appears in `Debug`, logs or errors; the parser's
//!   own messages (which can quote the input) are never shown.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PgError;

/// How long a connection attempt may take before the batch fails.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "CLAWGATE_STORE_PASSWORD";

/// The connection-string keys read here rather than by tokio-postgres.
const OWN_KEYS: [&str; 5] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "password_file",
];

/// Where the fleet's store is: a `postgres://` URL or a libpq
/// `key=value` string, with `sslmode`, `sslrootcert`, `sslcert`, `sslkey`
/// and `password_file`.
#[derive(Clone)]
pub struct PgTarget {
    config: Arc<tokio_postgres::Config>,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The host and database only: never the password.
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        f.debug_struct("PgTarget")
            .field("hosts", &hosts)
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The keys this module reads, taken out of the string.
#[derive(Default)]
struct Own {
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
    password_file: Option<PathBuf>,
}

impl Own {
    fn take(&mut self, key: &str, value: &str) {
        match key {
            "sslmode" => self.sslmode = Some(value.to_owned()),
            "sslrootcert" => self.sslrootcert = Some(value.into()),
            "sslcert" => self.sslcert = Some(value.into()),
            "sslkey" => self.sslkey = Some(value.into()),
            _ => self.password_file = Some(value.into()),
        }
    }
}

/// Splits `text` into what tokio-postgres parses and what this module does.
fn split(text: &str) -> (String, Own) {
    let mut own = Own::default();
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        let Some((base, query)) = text.split_once('?') else {
            return (text.to_owned(), own);
        };
        let mut rest = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if OWN_KEYS.contains(&key.as_ref()) {
                own.take(&key, &value);
            } else {
                rest.append_pair(&key, &value);
            }
        }
        let rest = rest.finish();
        if rest.is_empty() {
            return (base.to_owned(), own);
        }
        return (format!("{base}?{rest}"), own);
    }
    let mut kept = Vec::new();
    for word in text.split_whitespace() {
        match word.split_once('=') {
            Some((key, value)) if OWN_KEYS.contains(&key) => own.take(key, value),
            _ => kept.push(word),
        }
    }
    (kept.join(" "), own)
}

/// The password in `path`, without its trailing line break.
fn read_password(path: &std::path::Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("password_file {}: {e}", path.display()))?;
    let text = text.trim_end_matches(['\r', '\n']);
    if text.is_empty() {
        return Err(format!("password_file {} is empty", path.display()));
    }
    Ok(SecretString::from(text.to_owned()))
}

/// The rustls connector for `verify-full`.
fn connector(own: &Own) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &own.sslrootcert {
        Some(path) => {
            for cert in crate::tls::read_certs(path).map_err(|e| format!("sslrootcert: {e}"))? {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots);
    let config = match (&own.sslcert, &own.sslkey) {
        (Some(cert), Some(key)) => {
            let chain = crate::tls::read_certs(cert).map_err(|e| format!("sslcert: {e}"))?;
            let key = crate::tls::read_key(key).map_err(|e| format!("sslkey: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert and sslkey do not make a client identity: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("sslcert and sslkey go together".into()),
    };
    Ok(MakeRustlsConnect::new(config))
}

impl FromStr for PgTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (rest, own) = split(text);
        // The parser's message can quote the input, password included.
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|_| {
            "the store must be a postgres:// URL or a `host=... dbname=...` string".to_owned()
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("clawgate");
        }
        if let Some(path) = &own.password_file {
            config.password(read_password(path)?.expose_secret());
        } else if config.get_password().is_none()
            && let Ok(password) = std::env::var(PASSWORD_ENV)
        {
            config.password(password);
        }
        let tcp = config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
        let tls = match own.sslmode.as_deref() {
            Some("disable") => None,
            Some("verify-full") if !tcp => {
                return Err("sslmode=verify-full needs a TCP host, not a Unix socket".into());
            }
            None if !tcp => None,
            Some("verify-full") | None => Some(connector(&own)?),
            Some(other) => {
                return Err(format!(
                    "sslmode={other} is not taken: use verify-full (the chain and the host name are checked) or disable"
                ));
            }
        };
        config.ssl_mode(if tls.is_some() {
            SslMode::Require
        } else {
            SslMode::Disable
        });
        Ok(PgTarget {
            config: Arc::new(config),
            tls,
        })
    }
}

impl PgTarget {
    /// The connection settings (they may hold a password: never print them).
    #[cfg(test)]
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Whether the store is reached over TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects (TLS when configured) and drives the connection on the
    /// current runtime; each notification is sent to `notes`.
    pub(crate) async fn open(
        &self,
        notes: Option<mpsc::UnboundedSender<()>>,
    ) -> Result<Client, PgError> {
        let attempt = async {
            match &self.tls {
                Some(tls) => {
                    let (client, connection) = self.config.connect(tls.clone()).await?;
                    drive(connection, notes);
                    Ok::<_, tokio_postgres::Error>(client)
                }
                None => {
                    let (client, connection) = self.config.connect(NoTls).await?;
                    drive(connection, notes);
                    Ok(client)
                }
            }
        };
        let client = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| PgError::Db("connection timed out".into()))??;
        Ok(client)
    }

    /// Connects and sets the session up (`synchronous_commit = on`).
    pub async fn connect(&self) -> Result<Client, PgError> {
        let client = self.open(None).await?;
        client.batch_execute("SET synchronous_commit TO on").await?;
        Ok(client)
    }
}

/// What went wrong, with its causes: tokio-postgres says "error performing
/// TLS handshake" and keeps rustls's reason (`UnknownIssuer`,
/// `NotValidForName`) as the source. The server's own message when there is
/// one. Never holds the password: neither does any of these.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Runs the connection until it ends, passing notifications on.
fn drive<S, T>(mut connection: Connection<S, T>, notes: Option<mpsc::UnboundedSender<()>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Some(notes) = &notes {
                        let _ = notes.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "postgresql connection ended");
                    break;
                }
            }
        }
    });
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
