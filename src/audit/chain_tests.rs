//! The hash formats: both pinned to hashes computed outside this code, and a
//! log written in format 1 (by earlier versions) verifying, continuing and
//! exporting in format 2.

use rusqlite::Connection;

use super::*;
use crate::audit::{AuditLog, McpRecord, kind, sqlite};

const PREV: &str = "abababababababababababababababababababababababababababababababab";

/// A record with strings, integers, a non-ASCII text and an MCP part.
fn sample() -> DecisionRecord {
    DecisionRecord {
        seq: 7,
        ts: "2026-11-29T22:00:00.000Z".into(),
        kind: kind::DECISION.into(),
        request_id: "req-1".into(),
        mode: Some("gateway".into()),
        agent: Some("research".into()),
        path: Some("/v1/items/1".into()),
        decision: Some("allow".into()),
        reason: "allowed".into(),
        status: Some(200),
        detail: Some("café; 3 calls".into()),
        mcp: Some(McpRecord {
            method: "tools/call".into(),
            name: Some("echo".into()),
            is_error: Some(false),
            ..McpRecord::default()
        }),
        ..DecisionRecord::default()
    }
}

// Both hashes were computed by an independent script from the formats'
// descriptions (SHA-256 of the domain line, `prev_hash`, a newline and the
// body: for format 1 the compact JSON, for format 2 the tagged encoding).
const V1: &str = "eb2990d6d332ea499d62f8d70e8edd4b4c3cb129edb1331a481de68bdc64eca6";
const V2: &str = "960e1d6cf70434405d2a0ae773a3cfcd3976946688a11a09b900558c49d40505";

#[test]
fn format_1_is_the_json_hash_earlier_versions_wrote() {
    assert_eq!(hash_as(Format::V1, PREV, &sample()), V1);
}

#[test]
fn format_2_is_pinned_and_is_what_records_are_sealed_with() {
    assert_eq!(record_hash(PREV, &sample()), V2);
    let mut head = Head {
        seq: 6,
        hash: PREV.into(),
    };
    let mut record = sample();
    record.chain = Some("replica-a".into());
    seal(&mut head, &mut record);
    assert_eq!((record.seq, record.hash.as_str()), (7, V2));
    assert_eq!(head.hash, V2);
}

#[test]
fn a_record_matches_under_its_own_format_only() {
    let mut record = sample();
    record.prev_hash = PREV.into();
    for (hash, format) in [(V1, Format::V1), (V2, Format::V2)] {
        record.hash = hash.into();
        for start in [Format::V1, Format::V2] {
            let mut hint = start;
            assert!(hash_matches(&record, &mut hint));
            assert_eq!(hint, format);
        }
    }
    record.hash = V2.into();
    record.detail = Some("cafe; 3 calls".into());
    assert!(!hash_matches(&record, &mut Format::V2));
}

#[test]
fn moving_text_between_fields_changes_the_hash() {
    let mut a = sample();
    a.agent = Some("ab".into());
    a.scope = Some("c".into());
    let mut b = sample();
    b.agent = Some("a".into());
    b.scope = Some("bc".into());
    assert_ne!(record_hash(PREV, &a), record_hash(PREV, &b));
    // An empty optional field is not an absent one.
    let mut c = sample();
    c.rule = Some(String::new());
    assert_ne!(record_hash(PREV, &c), record_hash(PREV, &sample()));
}

/// Records 1..=3 sealed in format 1 into a log laid out as earlier versions
/// made it (their extra index included), as those versions would have.
fn format_1_log() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&crate::audit::timeline::legacy_schema())
        .unwrap();
    conn.execute_batch("CREATE INDEX records_request ON records(request_id);")
        .unwrap();
    let mut prev = GENESIS.to_owned();
    for seq in 1..=3 {
        let mut record = sample();
        record.seq = seq;
        record.request_id = format!("old-{seq}");
        record.hash = hash_as(Format::V1, &prev, &record);
        record.prev_hash = std::mem::replace(&mut prev, record.hash.clone());
        sqlite::insert(&conn, &record).unwrap();
    }
    (dir, path)
}

#[test]
fn a_format_1_log_verifies_continues_in_format_2_and_exports() {
    let (dir, path) = format_1_log();
    assert_eq!(verify(&path).unwrap().count, 3);
    let (log, writer) = AuditLog::open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for i in 0..2 {
        let mut record = sample();
        record.request_id = format!("new-{i}");
        rt.block_on(log.append_durable(record)).unwrap();
    }
    writer.shutdown();
    let report = verify(&path).unwrap();
    assert_eq!(report.count, 5);
    let conn = open_read_only(&path).unwrap();
    let unused: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'records_request'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unused, 0, "the unused index is dropped");
    // Format 1 and format 2 records side by side in one archive.
    let file = dir.path().join("mixed.jsonl.gz");
    crate::audit::archive::export(&path, None, "2100-01-01T00:00:00.000Z", &file).unwrap();
    let manifest = crate::audit::archive::verify_archive(&file).unwrap();
    assert_eq!((manifest.count, manifest.last_hash), (5, report.head.hash));
}

#[test]
fn an_edited_format_1_record_is_named() {
    let (_dir, path) = format_1_log();
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE records SET decision = 'deny' WHERE seq = 2", [])
        .unwrap();
    match verify(&path) {
        Err(VerifyError::Broken { seq, why }) => {
            assert_eq!(seq, 2);
            assert!(why.contains("edited"), "{why}");
        }
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn a_trace_id_is_hashed_as_field_29_and_its_absence_changes_nothing() {
    // Absent, the record hashes as before the field existed (V2 above).
    assert_eq!(record_hash(PREV, &sample()), V2);
    let mut traced = sample();
    traced.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
    let mut expected = Vec::new();
    encode_v2(&sample(), &mut expected);
    expected.push(29);
    expected.extend_from_slice(&32u32.to_le_bytes());
    expected.extend_from_slice(b"4bf92f3577b34da6a3ce929d0e0e4736");
    let mut encoded = Vec::new();
    encode_v2(&traced, &mut encoded);
    assert_eq!(encoded, expected);
    // An edited trace id breaks the record.
    let mut hint = Format::V2;
    traced.hash = record_hash(PREV, &traced);
    traced.prev_hash = PREV.into();
    assert!(hash_matches(&traced, &mut hint));
    traced.trace_id = Some("00000000000000000000000000000001".into());
    assert!(!hash_matches(&traced, &mut hint));
}
