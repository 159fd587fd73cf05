//! The decision log under stress, end to end against the real binary: a
//! full disk (a small tmpfs) and `kill -9` under load. Each test checks the
//! records, the chain (`audit verify`) and what the clients saw.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Harness, Options, clawgate};

fn verify(audit: &Path) {
    let out = clawgate(&["audit", "verify", "--audit", audit.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "audit verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One gateway call as `research`; its status and request id (if any).
fn echo_call(h: &Harness, port: u16) -> (u16, Option<String>) {
    let reply = h.curl(
        Some("research"),
        &[
            "--max-time",
            "10",
            &format!("https://localhost:{port}/echo/v1/items"),
        ],
    );
    (reply.status, reply.header("x-clawgate-request-id"))
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when this process may not mount (not root).
    fn mount(size: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed although root");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem at `dir` with 64 KiB files until it is full, then
/// with smaller writes until not one more byte fits; returns the files.
fn fill(dir: &Path) -> Vec<PathBuf> {
    use std::io::Write;
    let mut files = Vec::new();
    for chunk in [64 * 1024, 4096, 512, 1] {
        loop {
            let path = dir.join(format!("filler-{}", files.len()));
            let mut file = std::fs::File::create(&path).unwrap();
            let written = file
                .write_all(&vec![0x5a; chunk])
                .and_then(|()| file.sync_all());
            if written.is_err() {
                drop(file);
                let _ = std::fs::remove_file(&path);
                break;
            }
            files.push(path);
        }
    }
    files
}

#[test]
fn a_full_disk_fails_closed_summarises_refusals_and_recovers_without_restart() {
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        eprintln!(
            "SKIPPED a_full_disk_fails_closed_summarises_refusals_and_recovers_without_restart: \
             mounting a tmpfs needs root (CI runs as root)"
        );
        return;
    };
    let mut h = Harness::with(Options {
        start: false,
        ..Options::default()
    });
    h.audit = tmpfs.path().join("audit.db");
    h.serve(&[]);
    for _ in 0..5 {
        assert_eq!(echo_call(&h, h.port).0, 200);
    }

    // The disk fills up while calls keep coming.
    let files = fill(tmpfs.path());
    assert!(!files.is_empty());
    let full_at = Instant::now();
    // Four agents keep calling while the log runs out of room (the WAL may
    // hold a little), until each has been refused ten times in a row.
    let answered: Mutex<Vec<(u16, Option<String>)>> = Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut refused_in_a_row = 0;
                while refused_in_a_row < 10 {
                    assert!(Instant::now() < deadline, "the log never ran out of room");
                    let (status, id) = echo_call(&h, h.port);
                    refused_in_a_row = if status == 503 {
                        refused_in_a_row + 1
                    } else {
                        0
                    };
                    answered.lock().unwrap().push((status, id));
                }
            });
        }
    });
    let answered = answered.into_inner().unwrap();
    let refused = answered.iter().filter(|(status, _)| *status == 503).count();
    let allowed_while_full: Vec<&String> = answered
        .iter()
        .filter(|(status, _)| *status == 200)
        .filter_map(|(_, id)| id.as_ref())
        .collect();
    for (status, _) in &answered {
        assert!(
            *status == 200 || *status == 503,
            "with the disk full a call got {status}"
        );
    }
    let reply = h.curl(
        Some("research"),
        &[&format!("https://localhost:{}/echo/v1/items", h.port)],
    );
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json()["reason"], "audit-unavailable");
    let seen_before_free = h.seen().len();

    // A little room again: one 64 KiB filler goes.
    std::fs::remove_file(&files[0]).unwrap();
    let freed_at = Instant::now();
    let recovered = loop {
        let (status, id) = echo_call(&h, h.port);
        if status == 200 {
            break id.unwrap();
        }
        assert_eq!(status, 503);
        assert!(
            freed_at.elapsed() < Duration::from_secs(20),
            "clawgate did not recover with 64 KiB freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let recovery = freed_at.elapsed();
    assert!(h.seen().len() > seen_before_free);
    // The same process: no restart happened.
    assert!(
        Command::new("kill")
            .args(["-0", &h.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
    h.decision(&recovered);
    // Nothing passed unrecorded while the disk filled.
    for id in &allowed_while_full {
        h.decision(id);
    }

    // The refused calls are one summary record with their count, not one
    // record each.
    let summaries = h.wait_for("a summary of the refused calls", |r| r.kind == "summary");
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let summary = &summaries[0];
    assert_eq!(summary.reason, "audit-unavailable");
    let counted: usize = summary
        .detail
        .as_deref()
        .and_then(|d| d.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        counted > refused,
        "{counted} counted, {refused} refused calls (plus the probe and the retries)"
    );
    let refused_records = h
        .records()
        .into_iter()
        .filter(|r| r.kind == "decision" && r.reason == "audit-unavailable")
        .count();
    assert_eq!(refused_records, 0, "refusals are summarised, not queued");
    // Error lines are rate-limited: far fewer than refused calls.
    let error_lines = h
        .stderr()
        .lines()
        .chain(h.stdout().lines())
        .filter(|l| l.contains("ERROR"))
        .count();
    assert!(
        error_lines < 10,
        "{error_lines} error lines for {refused} refusals"
    );
    h.stop();
    verify(&h.audit);
    eprintln!(
        "disk full: {} calls fitted while the disk filled, {refused} refused by 4 agents \
         (summarised as {counted}), {} filler files; recovered {recovery:?} after 64 KiB freed \
         ({:?} after the disk filled)",
        allowed_while_full.len(),
        files.len(),
        freed_at.duration_since(full_at),
    );
}

#[test]
fn kill_dash_nine_under_load_loses_no_answered_decision_and_keeps_the_chain() {
    let mut h = Harness::start();
    for round in 0..3 {
        let answered: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let port = h.port;
        let h_ref = &h;
        std::thread::scope(|s| {
            for _ in 0..4 {
                let answered = Arc::clone(&answered);
                let stop = Arc::clone(&stop);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, id) = echo_call(h_ref, port);
                        if status != 0
                            && let Some(id) = id
                        {
                            answered.lock().unwrap().push(id);
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(1500));
            let killed = Command::new("kill")
                .args(["-KILL", &h_ref.pid().to_string()])
                .status()
                .unwrap();
            assert!(killed.success());
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
        });
        let answered = answered.lock().unwrap().clone();
        assert!(
            answered.len() >= 5,
            "round {round}: only {} answered calls",
            answered.len()
        );
        verify(&h.audit);
        let decided: HashSet<String> = h
            .records()
            .into_iter()
            .filter(|r| r.kind == "decision")
            .map(|r| r.request_id)
            .collect();
        let missing: Vec<_> = answered
            .iter()
            .filter(|id| !decided.contains(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: answered calls without a decision record: {missing:?}"
        );
        eprintln!(
            "kill -9 round {round}: {} answered calls, each with its decision record",
            answered.len()
        );
        h.serve(&[]);
    }
    h.stop();
    verify(&h.audit);
}
