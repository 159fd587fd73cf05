use std::path::Path;

use rusqlite::Connection;

use super::chain::verify_conn;
use super::*;

fn record(i: usize) -> DecisionRecord {
    let mut r = DecisionRecord::new(kind::DECISION, &format!("req-{i}"));
    r.agent = Some("research".into());
    r.scope = Some("echo".into());
    r.decision = Some(if i.is_multiple_of(2) { "allow" } else { "deny" }.into());
    r.reason = if i.is_multiple_of(2) {
        "allowed"
    } else {
        "denied-by-rule"
    }
    .into();
    r.path = Some(format!("/v1/items/{i}"));
    r
}

/// A log with `n` records, written through the real writer.
fn log_with(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let (log, writer) = AuditLog::open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 1..=n {
            log.append_durable(record(i)).await.unwrap();
        }
    });
    writer.shutdown();
    (dir, path)
}

fn record_at(conn: &Connection, seq: i64) -> DecisionRecord {
    conn.prepare(&format!(
        "SELECT {} FROM records WHERE seq = ?1",
        chain::COLUMNS
    ))
    .unwrap()
    .query_row([seq], chain::from_row)
    .unwrap()
}

fn broken_at(path: &Path) -> i64 {
    match verify(path) {
        Err(VerifyError::Broken { seq, .. }) => seq,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn an_untouched_chain_verifies() {
    let (_dir, path) = log_with(5);
    let report = verify(&path).unwrap();
    assert_eq!(report.count, 5);
    assert_eq!(report.head, head(&path).unwrap());
    assert_eq!(report.head.seq, 5);
}

#[test]
fn the_chain_continues_across_reopen() {
    let (_dir, path) = log_with(3);
    let (log, writer) = AuditLog::open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let seq = rt.block_on(log.append_durable(record(4))).unwrap();
    writer.shutdown();
    assert_eq!(seq, 4);
    assert_eq!(verify(&path).unwrap().count, 4);
}

#[test]
fn an_edited_field_is_named() {
    let (_dir, path) = log_with(5);
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE records SET decision = 'allow' WHERE seq = 3", [])
        .unwrap();
    assert_eq!(broken_at(&path), 3);
}

#[test]
fn an_edit_that_also_rehashes_the_row_breaks_the_next_link() {
    let (_dir, path) = log_with(5);
    let conn = Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE records SET reason = 'denied-by-rule' WHERE seq = 2",
        [],
    )
    .unwrap();
    let edited = record_at(&conn, 2);
    let rehash = chain::record_hash(&edited.prev_hash, &edited);
    conn.execute("UPDATE records SET hash = ?1 WHERE seq = 2", [rehash])
        .unwrap();
    assert_eq!(broken_at(&path), 3);
}

#[test]
fn a_deleted_record_is_named() {
    let (_dir, path) = log_with(5);
    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM records WHERE seq = 2", [])
        .unwrap();
    assert_eq!(broken_at(&path), 2);
}

#[test]
fn an_inserted_record_is_named() {
    let (_dir, path) = log_with(4);
    let conn = Connection::open(&path).unwrap();
    // Make room after record 2, then insert a well-formed forgery chained to
    // record 2: it verifies on its own, so the break shows at the record after.
    conn.execute("UPDATE records SET seq = seq + 100 WHERE seq > 2", [])
        .unwrap();
    conn.execute("UPDATE records SET seq = seq - 99 WHERE seq > 100", [])
        .unwrap();
    let two = record_at(&conn, 2);
    let mut forged = record(99);
    forged.seq = 3;
    forged.prev_hash = two.hash.clone();
    forged.hash = chain::record_hash(&forged.prev_hash, &forged);
    sqlite::insert(&conn, &forged).unwrap();
    match verify(&path) {
        Err(VerifyError::Broken { seq, why }) => {
            assert_eq!(seq, 4);
            assert!(why.contains("does not follow"), "{why}");
        }
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn reordered_records_are_named() {
    let (_dir, path) = log_with(5);
    let conn = Connection::open(&path).unwrap();
    conn.execute("UPDATE records SET seq = 100 WHERE seq = 2", [])
        .unwrap();
    conn.execute("UPDATE records SET seq = 2 WHERE seq = 3", [])
        .unwrap();
    conn.execute("UPDATE records SET seq = 3 WHERE seq = 100", [])
        .unwrap();
    assert_eq!(broken_at(&path), 2);
}

#[test]
fn a_cut_tail_is_not_detectable_without_an_anchor() {
    let (_dir, path) = log_with(5);
    let anchored = head(&path).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM records WHERE seq > 3", [])
        .unwrap();
    // The chain alone still verifies: this is why operators anchor the head.
    let report = verify(&path).unwrap();
    assert_eq!(report.count, 3);
    assert_ne!(report.head, anchored);
    // The anchor catches it.
    match check_anchor(&path, &anchored) {
        Err(VerifyError::Broken { seq: 5, why }) => assert!(why.contains("missing"), "{why}"),
        other => panic!("expected the anchor to fail, got {other:?}"),
    }
    check_anchor(&path, &report.head).unwrap();
    let forged = Head {
        seq: 2,
        hash: "ab".repeat(32),
    };
    assert!(matches!(
        check_anchor(&path, &forged),
        Err(VerifyError::Broken { seq: 2, .. })
    ));
}

#[test]
fn verify_conn_on_an_empty_log_is_intact() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(&super::timeline::legacy_schema())
        .unwrap();
    let report = verify_conn(&conn).unwrap();
    assert_eq!(report.count, 0);
    assert_eq!(report.head.hash, chain::GENESIS);
}

#[test]
fn query_filters_and_limits_return_oldest_first() {
    let (_dir, path) = log_with(6);
    let all = query(&path, &Filter::default()).unwrap();
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    let denies = query(
        &path,
        &Filter {
            decision: Some("deny".into()),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(
        denies.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 3, 5]
    );
    let none_reported = query(
        &path,
        &Filter {
            would_deny: true,
            ..Filter::default()
        },
    )
    .unwrap();
    assert!(none_reported.is_empty());
    let last_two = query(
        &path,
        &Filter {
            limit: Some(2),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(
        last_two.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![5, 6]
    );
    let none = query(
        &path,
        &Filter {
            since: Some("2999-01-01T00:00:00.000Z".into()),
            ..Filter::default()
        },
    )
    .unwrap();
    assert!(none.is_empty());
}

#[test]
fn render_formats() {
    let (_dir, path) = log_with(2);
    let records = query(&path, &Filter::default()).unwrap();
    let mut json = Vec::new();
    render(&records, Format::Json, &mut json).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["reason"], "allowed");
    assert_eq!(lines[1]["hash"], records[1].hash.as_str());
    let mut csv = Vec::new();
    render(&records, Format::Csv, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.starts_with("seq,ts,kind,request_id,"));
    assert_eq!(csv.lines().count(), 3);
    let mut table = Vec::new();
    render(&records, Format::Table, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.lines().next().unwrap().starts_with("seq  time"));
    assert!(table.contains("denied-by-rule"));
}

#[test]
fn a_locked_database_fails_the_batch_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let (log, writer) = AuditLog::open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(log.append_durable(record(1))).unwrap();
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = rt.block_on(log.append_durable(record(2))).unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(!log.is_healthy());
    // A record nobody waits for (an outcome) is kept and retried, not lost.
    log.append(record(10));
    std::thread::sleep(std::time::Duration::from_millis(200));
    holder.execute_batch("COMMIT").unwrap();
    let seq = rt.block_on(log.append_durable(record(3))).unwrap();
    assert_eq!(seq, 3, "the retried record, then this one, with no gap");
    assert!(log.is_healthy());
    writer.shutdown();
    assert_eq!(verify(&path).unwrap().count, 3);
    assert_eq!(log.dropped_records(), 0);
    let ids: Vec<String> = query(&path, &Filter::default())
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(ids, vec!["req-1", "req-10", "req-3"]);
}

/// The direct formatter writes exactly what the format description does,
/// across days, leap years, millisecond edges, offsets and the year bounds.
#[test]
fn timestamps_format_as_the_description_does() {
    use time::{Duration, OffsetDateTime, UtcOffset};
    let mut t = OffsetDateTime::from_unix_timestamp(-62_167_219_200).unwrap(); // 0000-01-01
    let end = OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap(); // 9999-12-31
    // A prime step in milliseconds walks every field through its range.
    let step = Duration::milliseconds(27_182_818_284);
    let mut seen = 0;
    while t <= end {
        assert_eq!(format_ts(t), format_ts_described(t), "{t}");
        seen += 1;
        match t.checked_add(step) {
            Some(next) => t = next,
            None => break,
        }
    }
    assert!(seen > 10_000, "{seen}");
    for (unix_ms, text) in [
        (0, "1970-01-01T00:00:00.000Z"),
        (951_782_399_999, "2000-02-28T23:59:59.999Z"),
        (951_868_800_001, "2000-03-01T00:00:00.001Z"),
        (1_796_000_000_123, "2026-11-30T00:53:20.123Z"),
    ] {
        let t = OffsetDateTime::from_unix_timestamp_nanos(unix_ms * 1_000_000).unwrap();
        assert_eq!(format_ts(t), text);
        // The same instant in another offset is stored as UTC.
        let east = t.to_offset(UtcOffset::from_hms(5, 30, 0).unwrap());
        assert_eq!(format_ts(east), text);
    }
    // Outside four-digit years the description still answers.
    let far = OffsetDateTime::from_unix_timestamp(-62_167_219_201).unwrap();
    assert_eq!(format_ts(far), format_ts_described(far));
}

/// The console's filters: a source address (whatever its port, IPv4 or
/// IPv6, compared as text rather than as a pattern), a request id, kinds;
/// and the oldest record's time once the log has been pruned.
#[test]
fn query_filters_by_source_request_id_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let (log, writer) = AuditLog::open(&path).unwrap();
    let addrs = [
        "10.0.0.1:4000",
        "10.0.0.10:4000",
        "[::1]:5000",
        "10_0_0_1:1",
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for (i, a) in addrs.iter().enumerate() {
            let mut r = record(i + 1);
            r.client_addr = Some((*a).into());
            log.append_durable(r).await.unwrap();
        }
        let mut o = DecisionRecord::new(kind::OVERRIDE, "ov-1");
        o.reason = "override-changed".into();
        log.append_durable(o).await.unwrap();
    });
    writer.shutdown();
    let seqs =
        |f: Filter| -> Vec<i64> { query(&path, &f).unwrap().iter().map(|r| r.seq).collect() };
    let by_source = |s: &str| {
        seqs(Filter {
            source: Some(s.into()),
            ..Filter::default()
        })
    };
    assert_eq!(by_source("10.0.0.1"), vec![1]);
    assert_eq!(by_source("::1"), vec![3]);
    assert_eq!(by_source("10_0_0_1"), vec![4]);
    assert_eq!(by_source("10.0.0.%"), Vec::<i64>::new());
    assert_eq!(
        seqs(Filter {
            request_id: Some("req-2".into()),
            ..Filter::default()
        }),
        vec![2]
    );
    assert_eq!(
        seqs(Filter {
            kinds: vec!["override".into(), "policy".into()],
            ..Filter::default()
        }),
        vec![5]
    );
    assert_eq!(retained_from(&path).unwrap(), None, "never pruned");
}
