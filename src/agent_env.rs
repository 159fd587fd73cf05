//! `clawgate env --agent NAME`: what an agent's environment needs to send its
//! calls through clawgate as a forward proxy, with no change to its code.
//!
//! It writes one CA bundle per agent (the system roots, the interception CA
//! and the CA of clawgate's own listener) and prints `export` lines naming it
//! under every variable the common runtimes read, plus the proxy URL and the
//! agent's certificate and key. It never prints a key's contents.

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

/// What `env` needs.
#[derive(Debug, Clone)]
pub struct EnvRequest<'a> {
    /// The agent's name (its certificate is `agents/NAME.pem`).
    pub agent: &'a str,
    /// The certificate directory.
    pub certs_dir: &'a Path,
    /// The proxy URL agents use, `https://host:port`.
    pub proxy: &'a str,
    /// The system roots to include; found in [`SYSTEM_ROOTS`] when `None`.
    pub system_roots: Option<&'a Path>,
}

/// Writes the agent's CA bundle and returns the lines to print.
pub fn agent_env(req: &EnvRequest<'_>) -> Result<String, EnvError> {
    let read = |path: &Path, hint: &str| {
        std::fs::read_to_string(path).map_err(|e| EnvError::Missing {
            path: path.to_path_buf(),
            why: e.to_string(),
            hint: hint.to_owned(),
        })
    };
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
    read(&cert, &agent_hint)?;
    if !key.exists() {
        return Err(EnvError::Missing {
            path: key,
            why: "no such file".into(),
            hint: agent_hint,
        });
    }
    let roots_path = match req.system_roots {
        Some(path) => path.to_path_buf(),
        None => SYSTEM_ROOTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| EnvError::NoSystemRoots(SYSTEM_ROOTS.join(", ")))?,
    };
    let system = read(&roots_path, "pass --system-roots FILE")?;
    let intercept = read(&req.certs_dir.join(files::INTERCEPT_CA), &init_hint)?;
    let listener_ca = read(&req.certs_dir.join(files::CA), &init_hint)?;
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
    let bundle_path = absolute(&agents.join(format!("{}-bundle.pem", req.agent)));
    std::fs::write(&bundle_path, bundle).map_err(|source| EnvError::Write {
        path: bundle_path.clone(),
        source,
    })?;

    let mut out = String::new();
    let _ = writeln!(out, "export HTTPS_PROXY={}", quote(req.proxy));
    let _ = writeln!(out, "export HTTP_PROXY={}", quote(req.proxy));
    for var in BUNDLE_VARS {
        let _ = writeln!(
            out,
            "export {var}={}",
            quote(&bundle_path.display().to_string())
        );
    }
    let _ = writeln!(
        out,
        "export CLAWGATE_AGENT_CERT={}",
        quote(&cert.display().to_string())
    );
    let _ = writeln!(
        out,
        "export CLAWGATE_AGENT_KEY={}",
        quote(&key.display().to_string())
    );
    let _ = writeln!(
        out,
        "# the proxy's TLS needs the agent certificate: curl --proxy-cert \"$CLAWGATE_AGENT_CERT\" --proxy-key \"$CLAWGATE_AGENT_KEY\"; undici ProxyAgent proxyTls; httpx Proxy(ssl_context=...)"
    );
    Ok(out)
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
