//! The end-to-end harness: the real `clawgate` binary on port 0 in a temporary
//! directory, a local HTTPS echo upstream, and real clients (curl, openssl).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test harness: a failed setup step should stop the test loudly"
)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clawgate::audit::{self, DecisionRecord, Filter};
use clawgate::certs::{self, Pem};
use clawgate::demo::echo::{EchoUpstream, Seen};

pub mod browser;

pub const BIN: &str = env!("CARGO_BIN_EXE_clawgate");
/// The injected secret; tests look for it everywhere it must not be.
pub const CANARY: &str = "canary-7f3a9c1e-do-not-leak";

/// Runs the binary with `args` and returns its output.
pub fn clawgate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run clawgate")
}

pub struct Options {
    /// Extra policy files, `{echo}` replaced by the echo's `host:port`.
    pub extra_policy: Vec<(&'static str, String)>,
    /// Extra agents to issue certificates for.
    pub agents: Vec<&'static str>,
    /// Extra `serve` flags.
    pub serve_args: Vec<String>,
    /// Start clawgate (or only prepare the directory).
    pub start: bool,
    /// Extra environment for the clawgate process.
    pub env: Vec<(String, String)>,
    /// Extra names in the echo upstream's certificate (reached through
    /// `--resolve NAME=127.0.0.1`).
    pub upstream_sans: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            extra_policy: Vec::new(),
            agents: Vec::new(),
            serve_args: Vec::new(),
            start: true,
            env: Vec::new(),
            upstream_sans: Vec::new(),
        }
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub policy: PathBuf,
    pub audit: PathBuf,
    pub echo: EchoUpstream,
    pub upstream_ca: Pem,
    /// The echo upstream's own certificate.
    pub upstream_cert: Pem,
    pub port: u16,
    /// The vending listener's port, when `--vend-listen` was given.
    pub vend_port: Option<u16>,
    /// The admin listener's port.
    pub admin_port: u16,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    // Keeps the echo's runtime alive for the test.
    _runtime: tokio::runtime::Runtime,
}

impl Harness {
    pub fn start() -> Harness {
        Harness::with(Options::default())
    }

    pub fn with(options: Options) -> Harness {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let policy = dir.path().join("policy");
        let audit = dir.path().join("audit.db");
        let out = clawgate(&["certs", "init", "--dir", certs.to_str().unwrap()]);
        assert!(out.status.success(), "certs init: {out:?}");
        for agent in ["research", "reporter", "intruder"]
            .iter()
            .chain(&options.agents)
        {
            let out = clawgate(&["certs", "agent", agent, "--dir", certs.to_str().unwrap()]);
            assert!(out.status.success(), "certs agent: {out:?}");
        }
        let upstream_ca = certs::new_ca("test upstream CA", 1).unwrap();
        let (upstream_cert, _) = certs::issue(
            &upstream_ca,
            &certs::server_spec(&options.upstream_sans, 1).unwrap(),
        )
        .unwrap();
        let echo = runtime
            .block_on(EchoUpstream::start(&upstream_cert))
            .unwrap();
        clawgate::demo::write_example_policy(&policy, echo.addr.port(), &upstream_ca.cert).unwrap();
        for (name, text) in &options.extra_policy {
            std::fs::write(
                policy.join(name),
                text.replace("{echo}", &echo.addr.to_string())
                    .replace("{echo_port}", &echo.addr.port().to_string()),
            )
            .unwrap();
        }
        let mut harness = Harness {
            dir,
            certs,
            policy,
            audit,
            echo,
            upstream_ca,
            upstream_cert,
            port: 0,
            vend_port: None,
            admin_port: 0,
            env: options.env,
            child: None,
            _runtime: runtime,
        };
        if options.start {
            harness.serve(&options.serve_args);
        }
        harness
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `clawgate serve` and waits for its listening line.
    pub fn serve(&mut self, extra: &[String]) {
        let stdout = std::fs::File::create(self.path("stdout.log")).unwrap();
        let stderr = std::fs::File::create(self.path("stderr.log")).unwrap();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--policy".into(),
            self.policy.display().to_string(),
            "--certs".into(),
            self.certs.display().to_string(),
            "--audit".into(),
            self.audit.display().to_string(),
        ];
        if !extra.iter().any(|a| a == "--admin-listen") {
            args.extend(["--admin-listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().cloned());
        let child = Command::new(BIN)
            .args(&args)
            .env("ECHO_API_TOKEN", CANARY)
            .env("RUST_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(self.path("stdout.log")).unwrap_or_default();
            if let Some(addr) = out
                .lines()
                .find_map(|l| l.strip_prefix("clawgate: listening on "))
            {
                self.port = addr.trim().rsplit(':').next().unwrap().parse().unwrap();
                self.vend_port = out
                    .lines()
                    .find_map(|l| l.strip_prefix("clawgate: vending credentials on http://"))
                    .map(|a| a.trim().rsplit(':').next().unwrap().parse().unwrap());
                self.admin_port = out
                    .lines()
                    .find_map(|l| l.strip_prefix("clawgate: admin api on https://"))
                    .map_or(0, |a| a.trim().rsplit(':').next().unwrap().parse().unwrap());
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("clawgate exited early ({status}): {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "clawgate did not start: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops clawgate with SIGTERM and waits for it to flush and exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("clawgate did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The process id of the running clawgate.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("clawgate is running").id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.path("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }

    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn agent_cert(&self, agent: &str) -> (PathBuf, PathBuf) {
        let agents = self.certs.join("agents");
        (
            agents.join(format!("{agent}.pem")),
            agents.join(format!("{agent}-key.pem")),
        )
    }

    /// curl with the clawgate CA and, when given, an agent's certificate.
    pub fn curl(&self, agent: Option<&str>, args: &[&str]) -> Reply {
        let mut full: Vec<String> = vec![
            "--cacert".into(),
            self.certs.join("ca.pem").display().to_string(),
        ];
        if let Some(agent) = agent {
            let (cert, key) = self.agent_cert(agent);
            full.extend([
                "--cert".into(),
                cert.display().to_string(),
                "--key".into(),
                key.display().to_string(),
            ]);
        }
        full.extend(args.iter().map(|a| (*a).to_owned()));
        curl(&full)
    }

    /// curl to the admin API with a certificate issued for `who` (or none).
    pub fn admin(&self, who: Option<&str>, args: &[&str]) -> Reply {
        let mut full: Vec<String> = vec![
            "--cacert".into(),
            self.certs.join("ca.pem").display().to_string(),
        ];
        if let Some(who) = who {
            let (cert, key) = self.agent_cert(who);
            full.extend([
                "--cert".into(),
                cert.display().to_string(),
                "--key".into(),
                key.display().to_string(),
            ]);
        }
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if let Some(last) = args.last_mut()
            && last.starts_with('/')
        {
            *last = format!("https://localhost:{}{last}", self.admin_port);
        }
        full.extend(args);
        curl(&full)
    }

    /// Replaces a policy file (written whole, then renamed into place, as
    /// editors do), `{echo}` replaced as in [`Options::extra_policy`].
    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!("{name}.tmp"));
        std::fs::write(
            &tmp,
            text.replace("{echo}", &self.echo.addr.to_string())
                .replace("{echo_port}", &self.echo.addr.port().to_string()),
        )
        .unwrap();
        std::fs::rename(&tmp, self.policy.join(name)).unwrap();
    }

    /// Sends a signal to clawgate.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("clawgate runs");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// curl through clawgate as a forward proxy.
    pub fn curl_via_proxy(&self, agent: &str, args: &[&str]) -> Reply {
        let (cert, key) = self.agent_cert(agent);
        let mut full: Vec<String> = vec![
            "--proxy".into(),
            format!("https://localhost:{}", self.port),
            "--proxy-cacert".into(),
            self.certs.join("ca.pem").display().to_string(),
            "--proxy-cert".into(),
            cert.display().to_string(),
            "--proxy-key".into(),
            key.display().to_string(),
        ];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        curl(&full)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.echo.seen()
    }

    pub fn records(&self) -> Vec<DecisionRecord> {
        audit::query(&self.audit, &Filter::default()).unwrap()
    }

    /// The decision record for a request id.
    pub fn decision(&self, request_id: &str) -> DecisionRecord {
        let found: Vec<_> = self
            .records()
            .into_iter()
            .filter(|r| r.request_id == request_id && r.kind == "decision")
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one decision record for {request_id}: {found:?}"
        );
        found.into_iter().next().unwrap()
    }

    /// The outcome record for a request id, waiting for it to land.
    pub fn outcome(&self, request_id: &str) -> DecisionRecord {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<_> = self
                .records()
                .into_iter()
                .filter(|r| r.request_id == request_id && r.kind == "outcome")
                .collect();
            assert!(found.len() <= 1, "more than one outcome record: {found:?}");
            if let Some(r) = found.into_iter().next() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no outcome record for {request_id}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for records matching `pred` and returns them.
    pub fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&DecisionRecord) -> bool,
    ) -> Vec<DecisionRecord> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<_> = self.records().into_iter().filter(|r| pred(r)).collect();
            if !found.is_empty() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no record: {what}; have {:#?}",
                self.records()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub exit: i32,
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// Every value of a header, in order (a proxied reply holds the
    /// `CONNECT` answer's headers first).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .lines()
            .filter_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .collect()
    }

    pub fn request_id(&self) -> String {
        self.header("x-clawgate-request-id")
            .unwrap_or_else(|| panic!("no request id header: {self:?}"))
    }
}

/// Runs curl, capturing status, headers and body separately.
pub fn curl(args: &[String]) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let mut body_bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(&body) {
        f.read_to_end(&mut body_bytes).unwrap();
    }
    Reply {
        exit: out.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: body_bytes,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every file in `dir` whose name starts with `prefix`, as bytes.
pub fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect()
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The Python that `.ci/run` makes at `target/venv` (or CLAWGATE_TEST_PYTHON),
/// with `needs` named in the message when it is missing.
pub fn venv_python(needs: &str) -> PathBuf {
    let path = std::env::var_os("CLAWGATE_TEST_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run `bash .ci/run` once, or set CLAWGATE_TEST_PYTHON to a Python with {needs}",
        path.display()
    );
    path
}

/// A TCP connection to clawgate's `port` on loopback, from `source` (another
/// loopback address, so that per-source bounds can be told apart).
pub async fn tcp_from(
    source: std::net::IpAddr,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// Raises this process's open-files limit to the most it may have, for a
/// test that holds a descriptor per peer.
pub fn raise_open_files_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

/// Descriptors process `pid` holds open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits for the `tls-rejected` records of idle peers dropped while their
/// handshake was pending, and checks the first came from `source` (an
/// address prefix such as `127.0.0.2:`).
pub fn dropped_while_pending(h: &Harness, source: &str) -> Vec<DecisionRecord> {
    let dropped = h.wait_for("idle peers dropped while pending", |r| {
        r.reason == "tls-rejected"
            && r.detail
                .as_deref()
                .unwrap_or_default()
                .contains("dropped while pending")
    });
    assert!(
        dropped[0]
            .client_addr
            .as_deref()
            .unwrap()
            .starts_with(source),
        "{:?}",
        dropped[0].client_addr
    );
    dropped
}
