//! The README's runbook, run as written: every line of its command block,
//! in order, through `sh` in a directory laid out as the README says
//! (`certs/`, `policy/`, `clawgate-audit.db`), against a running clawgate.
//! Only the admin port and the override's id (step 1's answer) are filled
//! in. After each step the test checks what it should have changed, in the
//! agent's answers and in the log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{BIN, Harness, Options};

/// The lines of the runbook's `sh` block: `# …` step titles and commands.
fn runbook() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme.find("\n### Runbook\n").expect("a Runbook section")..];
    let block = &section[section.find("```sh\n").expect("its command block") + 6..];
    let block = &block[..block.find("```").unwrap()];
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs `line` through `sh` in `dir`, with the binary first on `PATH` and
/// `ADMIN` as the README defines it.
fn sh(dir: &Path, line: &str, admin: &str) -> std::process::Output {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .env("PATH", path)
        .env(
            "ADMIN",
            format!(
                "--cacert certs/ca.pem --cert certs/agents/ops.pem --key certs/agents/ops-key.pem {admin}"
            ),
        )
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `f` holds (the CRL's reload is asynchronous).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_readme_runbook_runs_as_written_in_order() {
    let mut h = Harness::with(Options {
        start: false,
        ..Options::default()
    });
    let dir = h.dir.path().to_owned();
    h.audit = dir.join("clawgate-audit.db");
    // Beforehand, as the README says: the operator's certificate and its
    // roles line, and a CRL that lists nothing yet.
    let out = sh(&dir, "clawgate certs admin ops --dir certs", "-");
    assert!(out.status.success(), "{out:?}");
    let printed = text(&out);
    let roles = &printed[printed.find("[roles]").unwrap()..];
    std::fs::write(h.policy.join("roles.toml"), roles).unwrap();
    let out = sh(
        &dir,
        "clawgate certs revoke --dir certs --crl certs/crl.pem",
        "-",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out).contains("lists 0 serial(s)"), "{out:?}");
    h.serve(&[
        "--crl".into(),
        dir.join("certs/crl.pem").display().to_string(),
    ]);
    let admin = format!("https://localhost:{}", h.admin_port);
    let old_cert = h.path("old-research.pem");
    let old_key = h.path("old-research-key.pem");
    std::fs::copy(h.certs.join("agents/research.pem"), &old_cert).unwrap();
    std::fs::copy(h.certs.join("agents/research-key.pem"), &old_key).unwrap();
    let items = format!("{}/echo/v1/items", h.base());
    let with_old = || {
        common::curl(&[
            "--cacert".into(),
            h.certs.join("ca.pem").display().to_string(),
            "--cert".into(),
            old_cert.display().to_string(),
            "--key".into(),
            old_key.display().to_string(),
            items.clone(),
        ])
    };
    assert_eq!(with_old().status, 200);

    let lines = runbook();
    let mut override_id = String::new();
    let mut steps = 0;
    let mut commands = 0;
    for line in &lines {
        if line.starts_with('#') {
            steps += 1;
            continue;
        }
        let command = line
            .replace("https://localhost:9443", &admin)
            .replace("<id>", &override_id);
        let out = sh(&dir, &command, &admin);
        assert!(
            out.status.success(),
            "step {steps}, `{line}`: {}\n{}",
            text(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        commands += 1;
        let stdout = text(&out);
        if line.contains("/v1/overrides -H") {
            let made: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            override_id = made["id"].as_str().unwrap().to_owned();
            let r = h.curl(Some("research"), &[&items]);
            assert_eq!(r.status, 403, "{r:?}");
            assert_eq!(h.decision(&r.request_id()).reason, "agent-isolated");
        } else if line.starts_with("clawgate certs revoke") {
            // Isolated, the old certificate got a 403; revoked, no answer.
            eventually("the old certificate refused at the handshake", || {
                with_old().status != 403
            });
            assert_ne!(with_old().status, 200);
            h.wait_for("the revoked handshake", |r| {
                r.reason == "tls-rejected"
                    && r.detail
                        .as_deref()
                        .unwrap_or_default()
                        .contains("certificate revoked")
            });
        } else if line.contains("--rotate") {
            // The new certificate is the agent, and the agent is isolated.
            let r = h.curl(Some("research"), &[&items]);
            assert_eq!(r.status, 403, "{r:?}");
            assert_eq!(h.decision(&r.request_id()).reason, "agent-isolated");
        } else if line.starts_with("clawgate audit verify --archive") {
            assert!(stdout.starts_with("ok: archive of"), "{stdout}");
        } else if line.starts_with("clawgate audit query") {
            assert!(stdout.contains("\"reason\":\"agent-isolated\""), "{stdout}");
        } else if line.starts_with("clawgate audit restore") {
            let out = sh(&dir, "clawgate audit verify --audit incident-42.db", "-");
            assert!(out.status.success(), "{out:?}");
        } else if line.contains("/v1/audit/verify") {
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v["intact"], true, "{stdout}");
        } else if line.contains("-X DELETE") {
            let r = h.curl(Some("research"), &[&items]);
            assert_eq!(r.status, 200, "re-enabled: {r:?}");
            assert_eq!(h.decision(&r.request_id()).reason, "allowed");
        }
    }
    assert_eq!((steps, commands), (7, 13), "{lines:?}");
    // The log holds the incident: the override made and lifted, the CRL
    // reloaded, and it verifies.
    let records = h.records();
    for change in ["created by", "removed by"] {
        assert!(
            records.iter().any(|r| r.kind == "override"
                && r.detail.as_deref().unwrap_or_default().starts_with(change)
                && r.detail.as_deref().unwrap_or_default().contains("INC-42")),
            "{change}"
        );
    }
    assert!(records.iter().any(|r| r.reason == "certs-loaded"));
    h.stop();
    let out = sh(&dir, "clawgate audit verify", "-");
    assert!(out.status.success(), "{out:?}");
}
