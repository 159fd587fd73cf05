//! `clawgate env --agent NAME`: what an agent's environment needs to send its
//! calls through clawgate as a forward proxy, with no change to its code.
//!
//! Two forms, by the credential the agent holds:
//! - a proxy key or a run token: the secret rides in the proxy URL of the
//!   token listener (`https://NAME:SECRET@clawgate:8445`), which every HTTP
//!   stack sends as `Proxy-Authorization: Basic`; this form needs nothing
//!   but environment variables in OpenClaw, Node, Python, the AWS SDKs, Go
//!   and curl;
//! - a client certificate: the mTLS listener, for the stacks that can
//!   present one to a proxy (curl through its `.curlrc`, httpx and undici
//!   in code).
//!
//! It writes one CA bundle per agent (the system roots, the interception CA
//! and the CA of clawgate's own listener) and a `.curlrc` (curl reads no
//! variable for the proxy's CA; `CURL_HOME` points it at the file), and
//! prints `export` lines. A certificate's key is named by path, never
//! printed; a proxy key or run token is printed, as it is the agent's own
//! credential and the proxy URL must carry it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::certs::files;

/// Where the system roots usually are (Debian, Fedora, Alpine and macOS).
pub const SYSTEM_ROOTS: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The variables that name the CA bundle.
pub const BUNDLE_VARS: [&str; 5] = [
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "AWS_CA_BUNDLE",
];

/// Why the environment could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A file clawgate needs is missing.
    #[error("cannot read `{path}`: {why}; {hint}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
        /// The command that creates it.
        hint: String,
    },
    /// No system roots were found.
    #[error("no system CA bundle found (looked at {0}); pass --system-roots FILE")]
    NoSystemRoots(String),
    /// The bundle could not be written.
    #[error("cannot write `{path}`: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The credential the agent's environment carries.
pub enum EnvCredential {
    /// A client certificate (`agents/NAME.pem`), for the mTLS listener.
    Certificate,
    /// A per-agent proxy key, for the token listener.
    ProxyKey(secrecy::SecretString),
    /// A run token, for the token listener.
    RunToken(secrecy::SecretString),
}

impl std::fmt::Debug for EnvCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.form())
    }
}

impl EnvCredential {
    /// The form's name, as printed in the block's first line.
    pub fn form(&self) -> &'static str {
        match self {
            EnvCredential::Certificate => "certificate",
            EnvCredential::ProxyKey(_) => "proxy key",
            EnvCredential::RunToken(_) => "run token",
        }
    }

    fn secret(&self) -> Option<&str> {
        use secrecy::ExposeSecret;
        match self {
            EnvCredential::Certificate => None,
            EnvCredential::ProxyKey(s) | EnvCredential::RunToken(s) => Some(s.expose_secret()),
        }
    }
}

/// Credential vending for the agent's AWS SDKs.
#[derive(Debug, Clone)]
pub struct Vending<'a> {
    /// The vending listener, `http://127.0.0.1:8444`.
    pub url: &'a str,
    /// The scope with `vend = true` whose credentials the SDKs get.
    pub scope: &'a str,
}

/// What `env` needs.
#[derive(Debug)]
pub struct EnvRequest<'a> {
    /// The agent's name (its certificate is `agents/NAME.pem`).
    pub agent: &'a str,
    /// The certificate directory.
    pub certs_dir: &'a Path,
    /// The listener's URL, `https://host:port`: the mTLS listener for a
    /// certificate, the token listener for a proxy key or run token.
    pub proxy: &'a str,
    /// What the agent proves itself with.
    pub credential: EnvCredential,
    /// Vending, when the agent has an AWS scope with `vend = true`.
    pub vending: Option<Vending<'a>>,
    /// The system roots to include; found in [`SYSTEM_ROOTS`] when `None`.
    pub system_roots: Option<&'a Path>,
}

/// Hosts the agent reaches without the proxy: loopback only (the vending
/// listener is there, and the SDKs' container provider must not be proxied).
pub const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// Writes the agent's CA bundle and `.curlrc` and returns the lines to print.
pub fn agent_env(req: &EnvRequest<'_>) -> Result<String, EnvError> {
    let init_hint = format!(
        "run `clawgate certs init --dir {}`",
        req.certs_dir.display()
    );
    let agent_hint = format!(
        "run `clawgate certs agent {} --dir {}`",
        req.agent,
        req.certs_dir.display()
    );
    let agents = req.certs_dir.join("agents");
    let cert = absolute(&agents.join(format!("{}.pem", req.agent)));
    let key = absolute(&agents.join(format!("{}-key.pem", req.agent)));
    if matches!(req.credential, EnvCredential::Certificate) {
        read_file(&cert, &agent_hint)?;
        if !key.exists() {
            return Err(EnvError::Missing {
                path: key,
                why: "no such file".into(),
                hint: agent_hint,
            });
        }
    }
    let bundle = bundle(req, &init_hint)?;
    let bundle_path = absolute(&agents.join(format!("{}-bundle.pem", req.agent)));
    write_file(&bundle_path, &bundle)?;
    let bundle_text = bundle_path.display().to_string();
    let curl_home = absolute(&agents.join(format!("{}-curl", req.agent)));
    write_curlrc(req, &curl_home, &bundle_text, &cert, &key)?;
    Ok(exports(req, &bundle_text, &curl_home, &cert, &key))
}

/// The CA bundle the agent's clients trust: the system roots, the
/// interception CA and the listener's CA.
fn bundle(req: &EnvRequest<'_>, init_hint: &str) -> Result<String, EnvError> {
    let roots_path = match req.system_roots {
        Some(path) => path.to_path_buf(),
        None => SYSTEM_ROOTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| EnvError::NoSystemRoots(SYSTEM_ROOTS.join(", ")))?,
    };
    let system = read_file(&roots_path, "pass --system-roots FILE")?;
    let intercept = read_file(&req.certs_dir.join(files::INTERCEPT_CA), init_hint)?;
    let listener_ca = read_file(&req.certs_dir.join(files::CA), init_hint)?;
    let mut bundle = String::new();
    for (label, pem) in [
        ("system roots", system.as_str()),
        ("clawgate interception CA", intercept.as_str()),
        ("clawgate listener CA", listener_ca.as_str()),
    ] {
        let _ = writeln!(bundle, "# {label}");
        bundle.push_str(pem.trim_end());
        bundle.push('\n');
    }
    Ok(bundle)
}

fn read_file(path: &Path, hint: &str) -> Result<String, EnvError> {
    std::fs::read_to_string(path).map_err(|e| EnvError::Missing {
        path: path.to_path_buf(),
        why: e.to_string(),
        hint: hint.to_owned(),
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), EnvError> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).map_err(|source| {
        EnvError::Write {
            path: path.to_path_buf(),
            source,
        }
    })?;
    std::fs::write(path, text).map_err(|source| EnvError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// curl reads no variable for the proxy's CA (`CURL_CA_BUNDLE` covers the
/// destination only), nor for a proxy certificate, but it reads
/// `$CURL_HOME/.curlrc`.
fn write_curlrc(
    req: &EnvRequest<'_>,
    curl_home: &Path,
    bundle_text: &str,
    cert: &Path,
    key: &Path,
) -> Result<(), EnvError> {
    let mut curlrc = format!(
        "# written by `clawgate env --agent {}`\ncacert = \"{bundle_text}\"\nproxy-cacert = \"{bundle_text}\"\n",
        req.agent
    );
    if matches!(req.credential, EnvCredential::Certificate) {
        let _ = writeln!(curlrc, "proxy-cert = \"{}\"", cert.display());
        let _ = writeln!(curlrc, "proxy-key = \"{}\"", key.display());
    }
    write_file(&curl_home.join(".curlrc"), &curlrc)
}

/// The `export` lines to print.
fn exports(
    req: &EnvRequest<'_>,
    bundle_text: &str,
    curl_home: &Path,
    cert: &Path,
    key: &Path,
) -> String {
    let proxy = match req.credential.secret() {
        Some(secret) => with_userinfo(req.proxy, req.agent, secret),
        None => req.proxy.to_owned(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# clawgate env for agent `{}` ({} form)",
        req.agent,
        req.credential.form()
    );
    let mut export = |var: &str, value: &str| {
        let _ = writeln!(out, "export {var}={}", quote(value));
    };
    for var in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
        export(var, &proxy);
    }
    export("NO_PROXY", NO_PROXY);
    export("no_proxy", NO_PROXY);
    // Node 24's own `fetch` and `http` follow the proxy variables only when
    // asked; OpenClaw routes every client by `OPENCLAW_PROXY_URL`.
    export("NODE_USE_ENV_PROXY", "1");
    // AWS SDKs sign S3 uploads chunk by chunk unless told otherwise, and a
    // chunk signature cannot be re-signed by clawgate.
    export("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required");
    export("OPENCLAW_PROXY_URL", &proxy);
    export("OPENCLAW_PROXY_CA_FILE", bundle_text);
    for var in BUNDLE_VARS {
        export(var, bundle_text);
    }
    export("CURL_HOME", &curl_home.display().to_string());
    if matches!(req.credential, EnvCredential::Certificate) {
        export("CLAWGATE_AGENT_CERT", &cert.display().to_string());
        export("CLAWGATE_AGENT_KEY", &key.display().to_string());
    }
    if let Some(vending) = &req.vending {
        export(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            &format!(
                "{}/v1/credentials/aws/{}",
                vending.url.trim_end_matches('/'),
                vending.scope
            ),
        );
        if let Some(secret) = req.credential.secret() {
            export("AWS_CONTAINER_AUTHORIZATION_TOKEN", secret);
        }
    }
    if matches!(req.credential, EnvCredential::Certificate) {
        let _ = writeln!(
            out,
            "# the proxy's TLS needs the agent certificate: curl reads it from $CURL_HOME/.curlrc; undici ProxyAgent proxyTls and httpx Proxy(ssl_context=...) take it in code; stacks that cannot present one (OpenClaw, botocore, requests, Go) use the proxy-key form"
        );
    }
    out
}

/// `https://host:port` with `NAME:SECRET@` put in front of the host.
fn with_userinfo(url: &str, user: &str, secret: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!(
        "{scheme}://{}:{}@{rest}",
        percent_encode(user),
        percent_encode(secret)
    )
}

/// Percent-encodes everything but the URL's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Quotes a value for a POSIX shell.
fn quote(value: &str) -> String {
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:+=@,".contains(&b))
    {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn the_secret_goes_into_the_proxy_url_encoded() {
        assert_eq!(
            with_userinfo("https://clawgate:8445", "openclaw", "cgpk_a-b_c"),
            "https://openclaw:cgpk_a-b_c@clawgate:8445"
        );
        // An old user info is replaced, and reserved characters are encoded.
        assert_eq!(
            with_userinfo("https://x:y@h:1", "a b", "p@ss:w/rd"),
            "https://a%20b:p%40ss%3Aw%2Frd@h:1"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("/plain/path.pem"), "/plain/path.pem");
    }

    #[test]
    fn a_proxy_key_block_names_every_variable_and_writes_a_curlrc() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        crate::certs::init(&certs, &[], false).unwrap();
        let out = agent_env(&EnvRequest {
            agent: "oc",
            certs_dir: &certs,
            proxy: "https://127.0.0.1:8445",
            credential: EnvCredential::ProxyKey("cgpk_secret".to_owned().into()),
            vending: Some(Vending {
                url: "http://127.0.0.1:8444/",
                scope: "s3",
            }),
            system_roots: Some(&certs.join("ca.pem")),
        })
        .unwrap();
        for line in [
            "export HTTPS_PROXY=https://oc:cgpk_secret@127.0.0.1:8445",
            "export OPENCLAW_PROXY_URL=https://oc:cgpk_secret@127.0.0.1:8445",
            "export NO_PROXY=localhost,127.0.0.1,::1",
            "export NODE_USE_ENV_PROXY=1",
            "export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:8444/v1/credentials/aws/s3",
            "export AWS_CONTAINER_AUTHORIZATION_TOKEN=cgpk_secret",
        ] {
            assert!(out.contains(line), "{line} missing:\n{out}");
        }
        assert!(!out.contains("CLAWGATE_AGENT_KEY"));
        let curlrc = std::fs::read_to_string(certs.join("agents/oc-curl/.curlrc")).unwrap();
        assert!(curlrc.contains("proxy-cacert = "), "{curlrc}");
        assert!(!curlrc.contains("proxy-cert"), "{curlrc}");
        assert_eq!(
            format!("{:?}", EnvCredential::ProxyKey("x".to_owned().into())),
            "proxy key"
        );
    }
}
