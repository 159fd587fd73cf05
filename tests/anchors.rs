//! Signed heads end to end against the real binary: `certs anchor-key`
//! makes the key pair, `serve --anchor-every` writes signed heads on
//! schedule, `audit verify --anchors` passes on the intact log, names the
//! anchor when the tail is cut, and refuses an anchor file edited by hand.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "end-to-end tests: a failed step should stop the test loudly"
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Harness, Options, clawgate};

fn calls(h: &Harness, n: usize) {
    for _ in 0..n {
        let r = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
        assert_eq!(r.status, 200, "{r:?}");
    }
}

fn anchors_in(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p, v)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn max_seq(h: &Harness) -> i64 {
    let conn = rusqlite::Connection::open(&h.audit).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("SELECT MAX(seq) FROM records", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn signed_heads_catch_a_cut_tail_and_a_forged_anchor() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("anchor.key");
    let key_arg = key.to_str().unwrap();
    let out = clawgate(&["certs", "anchor-key", "--out", key_arg]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let public = std::fs::read_to_string(keys.path().join("anchor.key.pub")).unwrap();
    assert_eq!(public.trim().len(), 64, "{public}");
    assert!(
        stdout.contains(&format!("public key: {}", public.trim())),
        "{stdout}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never replaced: a second run fails and the key stays the same.
    let before = std::fs::read(&key).unwrap();
    let again = clawgate(&["certs", "anchor-key", "--out", key_arg]);
    assert!(!again.status.success(), "{again:?}");
    assert_eq!(std::fs::read(&key).unwrap(), before);

    let anchor_dir = keys.path().join("anchors");
    let mut h = Harness::with(Options {
        serve_args: vec![
            "--anchor-every".into(),
            "1s".into(),
            "--anchor-key".into(),
            key_arg.into(),
            "--anchor-dir".into(),
            anchor_dir.to_str().unwrap().into(),
        ],
        ..Options::default()
    });
    calls(&h, 3);
    let head = max_seq(&h);
    // Bounded poll: an anchor of the head as it is after the calls.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !anchors_in(&anchor_dir)
        .iter()
        .any(|(_, a)| a["seq"].as_i64() >= Some(head))
    {
        assert!(
            Instant::now() < deadline,
            "no anchor of seq {head}: {:?}",
            anchors_in(&anchor_dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    h.stop();
    // Only finished anchors: no temp file left beside them.
    for entry in std::fs::read_dir(&anchor_dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name.starts_with("anchor-") && name.ends_with(".json"),
            "{name}"
        );
    }
    let anchors = anchors_in(&anchor_dir);
    let last_seq = anchors
        .iter()
        .map(|(_, a)| a["seq"].as_i64().unwrap())
        .max()
        .unwrap();
    let (last_file, _) = anchors
        .iter()
        .find(|(_, a)| a["seq"].as_i64() == Some(last_seq))
        .unwrap()
        .clone();

    let audit = h.audit.to_str().unwrap().to_owned();
    let pub_path = keys.path().join("anchor.key.pub");
    let verify = |dir: &Path| {
        clawgate(&[
            "audit",
            "verify",
            "--audit",
            &audit,
            "--anchors",
            dir.to_str().unwrap(),
            "--anchor-pub",
            pub_path.to_str().unwrap(),
        ])
    };
    let ok = verify(&anchor_dir);
    let text = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        text.contains(&format!("ok: {} signed anchors hold", anchors.len())),
        "{text}"
    );

    // A forged anchor: the signed fields changed by hand.
    let forged_dir = keys.path().join("forged");
    std::fs::create_dir(&forged_dir).unwrap();
    let mut forged = anchors[0].1.clone();
    forged["hash"] = serde_json::Value::String("0".repeat(64));
    let forged_file = forged_dir.join("anchor-forged.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let refused = verify(&forged_dir);
    let text = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        text.contains(&format!("anchor {}: refused", forged_file.display()))
            && text.contains("signature does not verify"),
        "{text}"
    );

    // The log's tail cut with sqlite: the chain alone still verifies...
    let conn = rusqlite::Connection::open(&h.audit).unwrap();
    let cut = conn
        .execute("DELETE FROM records WHERE seq >= ?1", [last_seq - 1])
        .unwrap();
    assert!(cut >= 2, "{cut}");
    drop(conn);
    let plain = clawgate(&["audit", "verify", "--audit", &audit]);
    assert!(plain.status.success(), "{plain:?}");
    // ...but not against the signed heads, and the anchor is named.
    let broken = verify(&anchor_dir);
    let text = String::from_utf8_lossy(&broken.stdout).into_owned();
    assert!(!broken.status.success(), "{broken:?}");
    assert!(
        text.contains(&format!(
            "broken: anchor {}",
            anchors
                .iter()
                .find(|(_, a)| a["seq"].as_i64() >= Some(last_seq - 1))
                .unwrap()
                .0
                .display()
        )) && text.contains("the log was cut after it"),
        "{text}; last {}",
        last_file.display()
    );
}
