//! Signed heads against a real SQLite log: they hold on the intact log, a
//! log rewritten from the anchored record onward (every hash recomputed, so
//! the chain alone verifies) is named, and another key's anchor is refused.

use super::*;
use crate::audit::{AuditLog, DecisionRecord, kind};

fn log_of(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let (log, writer) = AuditLog::open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for i in 0..n {
        let record = DecisionRecord {
            kind: kind::DECISION.into(),
            request_id: format!("req-{i}"),
            reason: "allowed".into(),
            ..DecisionRecord::default()
        };
        rt.block_on(log.append_durable(record)).unwrap();
    }
    writer.shutdown();
    (dir, path)
}

#[test]
fn a_rewritten_log_and_another_keys_anchor_are_named() {
    let (dir, path) = log_of(3);
    let key_path = dir.path().join("anchor.key");
    let public = hex::decode(generate_key(&key_path).unwrap()).unwrap();
    assert_eq!(load_public(&public_path(&key_path)).unwrap(), public);
    let key = load_key(&key_path).unwrap();
    let anchors = dir.path().join("anchors");
    fs::create_dir(&anchors).unwrap();
    let head = crate::audit::head(&path).unwrap();
    assert_eq!(head.seq, 3);
    let file = write_anchor(&anchors, &key, &head, SystemTime::now()).unwrap();
    assert_eq!(verify_anchors(&path, &anchors, &public).unwrap(), 1);

    // Another key's public half: the anchor is refused and named.
    let other = dir.path().join("other.key");
    let other_public = hex::decode(generate_key(&other).unwrap()).unwrap();
    match verify_anchors(&path, &anchors, &other_public) {
        Err(AnchorError::Forged(f, _)) => assert_eq!(f, file),
        other => panic!("{other:?}"),
    }

    // Rewrite record 3 and recompute its hash: the chain verifies, the
    // anchor does not.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let prev: String = conn
        .query_row("SELECT hash FROM records WHERE seq = 2", [], |r| r.get(0))
        .unwrap();
    let mut record = crate::audit::query(&path, &crate::audit::Filter::default())
        .unwrap()
        .into_iter()
        .find(|r| r.seq == 3)
        .unwrap();
    record.request_id = "rewritten".into();
    let hash = crate::audit::chain::record_hash(&prev, &record);
    conn.execute(
        "UPDATE records SET request_id = 'rewritten', hash = ?1 WHERE seq = 3",
        [&hash],
    )
    .unwrap();
    drop(conn);
    crate::audit::verify(&path).unwrap();
    match verify_anchors(&path, &anchors, &public) {
        Err(AnchorError::Broken { file: f, seq, why }) => {
            assert_eq!((f, seq), (file, 3));
            assert!(why.contains("another hash"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_key_is_never_replaced_and_garbage_is_not_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("anchor.key");
    generate_key(&path).unwrap();
    let before = fs::read(&path).unwrap();
    assert!(matches!(generate_key(&path), Err(AnchorError::Io { .. })));
    assert_eq!(fs::read(&path).unwrap(), before);
    fs::write(dir.path().join("bad.key"), "not hex\n").unwrap();
    assert!(matches!(
        load_key(&dir.path().join("bad.key")),
        Err(AnchorError::BadKey(_))
    ));
}
