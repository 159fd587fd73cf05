//! Headless Chromium and a running `clawgate console`, for the console's
//! tests.

use std::io::BufRead as _;

use super::Harness;

/// Runs Debian's headless Chromium on `url` with `extra` (a fresh profile).
pub fn chromium(extra: &[String], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium (Debian's chromium package; .ci/run installs it)");
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "chromium: {out:?}");
    out
}

pub fn dom(extra: &[String], url: &str) -> String {
    let mut args = vec!["--dump-dom".to_owned()];
    args.extend_from_slice(extra);
    String::from_utf8(chromium(&args, url).stdout).unwrap()
}

/// A running `clawgate console` and what it prints.
pub struct Console {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Console {
    pub fn start(h: &Harness) -> Self {
        let (cert, key) = h.agent_cert("ops");
        let mut child = std::process::Command::new(super::BIN)
            .args(["console", "--listen", "127.0.0.1:0", "--admin"])
            .arg(format!("https://localhost:{}", h.admin_port))
            .arg("--ca")
            .arg(h.certs.join("ca.pem"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("{line}"))
            .trim_end_matches('/')
            .to_owned();
        Self { child, out, base }
    }

    /// The next one-time login URL the console prints.
    pub fn login_url(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let url = line
            .strip_prefix("log in (once): ")
            .unwrap_or_else(|| panic!("{line}"))
            .trim()
            .to_owned();
        assert!(url.starts_with(&format!("{}/login?token=", self.base)));
        url
    }

    pub fn port(&self) -> &str {
        self.base.rsplit(':').next().unwrap()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
