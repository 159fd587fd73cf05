//! End-to-end: `clawgate lockdown` in a network namespace the test creates
//! (loopback only). With the rules applied, a process running as the agent's
//! user cannot reach an upstream directly (the attempt is dropped and
//! counted), but reaches the same upstream through clawgate with the
//! environment `clawgate env` printed. Needs root, `ip` and `nft` (`.ci/run`
//! installs them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, clawgate};

/// The agent's user: `nobody`.
const AGENT_UID: &str = "65534";

/// A namespace, and the processes started in it, removed on drop.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("clawgate-lockdown-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            children: Vec::new(),
        };
        run(&mut ns.exec(&["ip", "link", "set", "lo", "up"]));
        ns
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    /// A command run as the agent's user inside the namespace.
    fn as_agent(&self, args: &[&str]) -> Command {
        let mut all = vec![
            "setpriv",
            "--reuid",
            AGENT_UID,
            "--regid",
            AGENT_UID,
            "--clear-groups",
        ];
        all.extend_from_slice(args);
        self.exec(&all)
    }

    fn spawn(&mut self, mut command: Command, log: &Path) {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {out:?}");
    out
}

/// Waits until `log` has a line starting with `prefix`; returns its rest.
fn wait_line(log: &Path, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
            return rest.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "no `{prefix}` in {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn make_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_locked_down_agent_reaches_the_upstream_only_through_clawgate() {
    for tool in ["ip", "nft", "setpriv", "python3", "curl"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "`{tool}` is missing: run `bash .ci/run` once (it installs nftables and iproute2)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    make_readable(dir.path());
    let certs = dir.path().join("certs");
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    run(Command::new(BIN).args(["certs", "init", "--dir", certs.to_str().unwrap()]));
    make_readable(&certs);
    let out = run(Command::new(BIN).args([
        "proxy-key",
        "new",
        "--agent",
        "sandboxed",
        "--id",
        "sandboxed-1",
        "--certs",
        certs.to_str().unwrap(),
    ]));
    make_readable(&certs.join("agents"));
    let entry = String::from_utf8(out.stdout).unwrap();

    let mut ns = Netns::new();
    // The upstream: a plain HTTP server inside the namespace.
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("v1")).unwrap();
    std::fs::write(site.join("v1/hello"), "hello from the upstream\n").unwrap();
    let upstream_port = 18_080;
    let upstream_log = dir.path().join("upstream.log");
    let mut upstream = ns.exec(&[
        "python3",
        "-u",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "--directory",
        site.to_str().unwrap(),
        &upstream_port.to_string(),
    ]);
    upstream.env_remove("PYTHONPATH");
    ns.spawn(upstream, &upstream_log);
    wait_line(&upstream_log, "Serving HTTP on ");

    std::fs::write(
        policy.join("sandboxed.toml"),
        format!(
            r#"
[[agent]]
name = "sandboxed"
identities = ["spiffe://clawgate.local/agent/sandboxed"]
scopes = ["site"]
{entry}
[[scope]]
name = "site"
upstream = "http://upstream.test:{upstream_port}"
allow_private = ["127.0.0.1"]

[[scope.allow]]
id = "read"
methods = ["GET"]
paths = ["/v1/**"]
"#
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.db");
    let clawgate_log = dir.path().join("clawgate.log");
    let mut serve = ns.exec(&[BIN, "serve"]);
    serve
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(["--token-listen", "127.0.0.1:0", "--no-watch"])
        .args(["--resolve", "upstream.test=127.0.0.1"])
        .arg("--policy")
        .arg(&policy)
        .arg("--certs")
        .arg(&certs)
        .arg("--audit")
        .arg(&audit);
    ns.spawn(serve, &clawgate_log);
    let token_addr = wait_line(&clawgate_log, "clawgate: token proxy on https://");
    let token_port = token_addr.rsplit(':').next().unwrap().to_owned();

    // The rules, applied in the namespace.
    let rules = dir.path().join("lockdown.nft");
    let out = clawgate(&[
        "lockdown",
        "--uid",
        AGENT_UID,
        "--proxy",
        &format!("127.0.0.1:{token_port}"),
    ]);
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&rules, &out.stdout).unwrap();
    run(&mut ns.exec(&["nft", "-f", rules.to_str().unwrap()]));

    let url = format!("http://upstream.test:{upstream_port}/v1/hello");
    let direct = format!("http://127.0.0.1:{upstream_port}/v1/hello");
    // Root (not locked down) reaches the upstream directly: the server is up.
    let out = run(&mut ns.exec(&["curl", "-sS", "--max-time", "5", &direct]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the upstream"));

    // The agent's user cannot connect directly: dropped and counted.
    let out = ns
        .as_agent(&["curl", "-sS", "--max-time", "3", &direct])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a direct connection got through: {out:?}"
    );
    let counter = run(&mut ns.exec(&[
        "nft",
        "list",
        "counter",
        "inet",
        "clawgate_lockdown",
        "dropped",
    ]));
    let counter = String::from_utf8(counter.stdout).unwrap();
    let packets: u64 = counter
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(packets >= 1, "{counter}");

    // The same user, with the environment `clawgate env` printed, goes
    // through clawgate.
    let env = clawgate(&[
        "env",
        "--agent",
        "sandboxed",
        "--certs",
        certs.to_str().unwrap(),
        "--token-proxy",
        &format!("https://127.0.0.1:{token_port}"),
        "--system-roots",
        certs.join("ca.pem").to_str().unwrap(),
    ]);
    assert!(env.status.success(), "{env:?}");
    let vars: HashMap<String, String> = String::from_utf8(env.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect();
    for path in [
        &vars["SSL_CERT_FILE"],
        &format!("{}/.curlrc", vars["CURL_HOME"]),
    ] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    make_readable(Path::new(&vars["CURL_HOME"]));
    let mut curl = ns.as_agent(&["curl", "-sS", "--max-time", "10", &url]);
    curl.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&vars);
    let out = curl.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the upstream"));

    // The upstream saw root's direct call and the proxied one, nothing else.
    let log = std::fs::read_to_string(&upstream_log).unwrap();
    assert_eq!(log.matches("GET /v1/hello").count(), 2, "{log}");
    let records = run(Command::new(BIN).args([
        "audit",
        "query",
        "--audit",
        audit.to_str().unwrap(),
        "--format",
        "json",
    ]));
    let records: Vec<serde_json::Value> = String::from_utf8(records.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records.iter().any(|r| r["kind"] == "decision"
            && r["agent"] == "sandboxed"
            && r["host"] == "upstream.test"
            && r["reason"] == "allowed"
            && r["cert_fp"] == "proxy-key:sandboxed-1"),
        "{records:#?}"
    );
}
