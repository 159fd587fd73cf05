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

/// A running clawgate set up as the runbook expects, and the agent's
/// certificate from before the incident.
struct Incident {
    h: Harness,
    dir: std::path::PathBuf,
    items: String,
    old_cert: std::path::PathBuf,
    old_key: std::path::PathBuf,
}

impl Incident {
    /// A call with the certificate the runbook revokes.
    fn with_old(&self) -> common::Reply {
        common::curl(&[
            "--cacert".into(),
            self.h.certs.join("ca.pem").display().to_string(),
            "--cert".into(),
            self.old_cert.display().to_string(),
            "--key".into(),
            self.old_key.display().to_string(),
            self.items.clone(),
        ])
    }

    /// A call with the agent's current certificate: its status and the
    /// reason its decision record gives.
    fn call(&self) -> (u16, String) {
        let r = self.h.curl(Some("research"), &[&self.items]);
        (r.status, self.h.decision(&r.request_id()).reason)
    }
}

/// Beforehand, as the README says: the operator's certificate and its
/// roles line, a CRL that lists nothing yet, and clawgate serving with it.
fn beforehand() -> Incident {
    let mut h = Harness::with(Options {
        start: false,
        ..Options::default()
    });
    let dir = h.dir.path().to_owned();
    h.audit = dir.join("clawgate-audit.db");
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
    let old_cert = h.path("old-research.pem");
    let old_key = h.path("old-research-key.pem");
    std::fs::copy(h.certs.join("agents/research.pem"), &old_cert).unwrap();
    std::fs::copy(h.certs.join("agents/research-key.pem"), &old_key).unwrap();
    let items = format!("{}/echo/v1/items", h.base());
    let incident = Incident {
        h,
        dir,
        items,
        old_cert,
        old_key,
    };
    assert_eq!(incident.with_old().status, 200);
    incident
}

/// What the runbook line `line`, which printed `stdout`, should have
/// changed. Step 1's answer gives the override's id.
fn check(i: &Incident, line: &str, stdout: &str, override_id: &mut String) {
    if line.contains("/v1/overrides -H") {
        let made: serde_json::Value = serde_json::from_str(stdout).unwrap();
        *override_id = made["id"].as_str().unwrap().to_owned();
        assert_eq!(i.call(), (403, "agent-isolated".into()));
    } else if line.starts_with("clawgate certs revoke") {
        // Isolated, the old certificate got a 403; revoked, no answer.
        eventually("the old certificate refused at the handshake", || {
            i.with_old().status != 403
        });
        assert_ne!(i.with_old().status, 200);
        i.h.wait_for("the revoked handshake", |r| {
            r.reason == "tls-rejected"
                && r.detail
                    .as_deref()
                    .unwrap_or_default()
                    .contains("certificate revoked")
        });
    } else if line.contains("--rotate") {
        // The new certificate is the agent, and the agent is isolated.
        assert_eq!(i.call(), (403, "agent-isolated".into()));
    } else if line.starts_with("clawgate audit verify --archive") {
        assert!(stdout.starts_with("ok: archive of"), "{stdout}");
    } else if line.starts_with("clawgate audit query") {
        assert!(stdout.contains("\"reason\":\"agent-isolated\""), "{stdout}");
    } else if line.starts_with("clawgate audit restore") {
        let out = sh(&i.dir, "clawgate audit verify --audit incident-42.db", "-");
        assert!(out.status.success(), "{out:?}");
    } else if line.contains("/v1/audit/verify") {
        let v: serde_json::Value = serde_json::from_str(stdout).unwrap();
        assert_eq!(v["intact"], true, "{stdout}");
    } else if line.contains("-X DELETE") {
        assert_eq!(i.call(), (200, "allowed".into()), "re-enabled");
    }
}

#[test]
fn the_readme_runbook_runs_as_written_in_order() {
    let mut i = beforehand();
    let admin = format!("https://localhost:{}", i.h.admin_port);
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
        let out = sh(&i.dir, &command, &admin);
        assert!(
            out.status.success(),
            "step {steps}, `{line}`: {}\n{}",
            text(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        commands += 1;
        check(&i, line, &text(&out), &mut override_id);
    }
    assert_eq!((steps, commands), (7, 13), "{lines:?}");
    // The log holds the incident: the override made and lifted, the CRL
    // reloaded, and it verifies.
    let records = i.h.records();
    for change in ["created by", "removed by"] {
        assert!(
            records.iter().any(|r| r.kind == "override"
                && r.detail.as_deref().unwrap_or_default().starts_with(change)
                && r.detail.as_deref().unwrap_or_default().contains("INC-42")),
            "{change}"
        );
    }
    assert!(records.iter().any(|r| r.reason == "certs-loaded"));
    i.h.stop();
    let out = sh(&i.dir, "clawgate audit verify", "-");
    assert!(out.status.success(), "{out:?}");
}
