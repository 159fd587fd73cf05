use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::*;
use crate::audit::{AuditLog, Filter, VerifyError, kind, query, verify};

fn ts(i: usize) -> String {
    format!("2026-01-01T00:{:02}:00.000Z", i)
}

/// A log of `n` decisions, record `i` stamped minute `i`, through the writer.
fn log_with(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let (log, writer) = AuditLog::open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 1..=n {
            let mut r = DecisionRecord::new(kind::DECISION, &format!("req-{i}"));
            r.ts = ts(i);
            r.agent = Some("research".into());
            r.reason = "allowed".into();
            log.append_durable(r).await.unwrap();
        }
    });
    writer.shutdown();
    (dir, path)
}

fn all(path: &Path) -> Vec<DecisionRecord> {
    query(path, &Filter::default()).unwrap()
}

#[test]
fn export_writes_a_range_that_verifies_and_records_its_manifest() {
    let (dir, db) = log_with(10);
    let file = dir.path().join("a.jsonl.gz");
    let e = export(&db, Some(&ts(3)), &ts(8), &file).unwrap();
    assert_eq!((e.manifest.first_seq, e.manifest.last_seq), (3, 7));
    assert_eq!(e.manifest.count, 5);
    assert_eq!(verify_archive(&file).unwrap(), e.manifest);
    assert_eq!(file_sha256(&file).unwrap(), e.sha256);
    let records = all(&db);
    let last = records.last().unwrap();
    assert_eq!((last.kind.as_str(), last.seq), (kind::ARCHIVE, 11));
    assert_eq!(last.reason, "log-archived");
    let note: ArchiveNote = serde_json::from_str(last.detail.as_deref().unwrap()).unwrap();
    assert_eq!(note.manifest, e.manifest);
    assert_eq!(note.sha256, e.sha256);
    assert_eq!(records[1].hash, e.manifest.first_prev_hash);
    assert_eq!(records[6].hash, e.manifest.last_hash);
    verify(&db).unwrap();
    // An existing file is never overwritten.
    assert!(export(&db, None, &ts(8), &file).is_err());
}

fn rewrite(file: &Path, edit: impl FnOnce(String) -> String) {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(file).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let text = edit(text);
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(file).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap();
}

#[test]
fn an_edited_cut_or_reordered_archive_fails_on_its_own() {
    let (dir, db) = log_with(6);
    let file = dir.path().join("a.jsonl.gz");
    export(&db, None, &ts(7), &file).unwrap();
    let original = std::fs::read(&file).unwrap();
    type Edit = fn(String) -> String;
    let cases: [(&str, Edit); 4] = [
        ("edited", |t| t.replacen("req-3", "req-X", 1)),
        ("deleted", |t| {
            let mut lines: Vec<&str> = t.lines().collect();
            lines.remove(3);
            lines.join("\n") + "\n"
        }),
        ("reordered", |t| {
            let mut lines: Vec<&str> = t.lines().collect();
            lines.swap(2, 3);
            lines.join("\n") + "\n"
        }),
        ("cut", |t| {
            let lines: Vec<&str> = t.lines().collect();
            lines[..lines.len() - 1].join("\n") + "\n"
        }),
    ];
    for (what, edit) in cases {
        std::fs::write(&file, &original).unwrap();
        rewrite(&file, edit);
        match verify_archive(&file) {
            Err(ArchiveError::Broken { .. }) => {}
            other => panic!("{what}: expected broken, got {other:?}"),
        }
    }
}

#[test]
fn prune_removes_only_archived_records_and_verify_starts_from_the_anchor() {
    let (dir, db) = log_with(10);
    // Nothing archived: refused, nothing pruned, whatever the time.
    match prune(&db, "9999") {
        Err(ArchiveError::Unarchived(what)) => assert_eq!(what, "records 1..10"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(all(&db).len(), 10);
    // Nothing old enough: nothing to do.
    assert!(prune(&db, &ts(0)).unwrap().is_none());
    let file = dir.path().join("a.jsonl.gz");
    let e = export(&db, None, &ts(6), &file).unwrap();
    assert_eq!(e.manifest.last_seq, 5);
    // Older than minute 8, but only 1..=5 are archived.
    let p = prune(&db, &ts(8)).unwrap().unwrap();
    assert_eq!((p.note.anchor_seq, p.note.removed), (5, 5));
    assert_eq!(p.note.anchor_hash, e.manifest.last_hash);
    assert_eq!(p.note.archives, vec![e.sha256.clone()]);
    let records = all(&db);
    assert_eq!(records.first().unwrap().seq, 6);
    let last = records.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.reason.as_str()),
        (kind::PRUNE, "log-pruned")
    );
    let report = verify(&db).unwrap();
    assert_eq!(report.anchor.unwrap().seq, 5);
    assert_eq!(report.count, 7);
    // Again: nothing more is archived, so nothing more goes.
    assert!(matches!(
        prune(&db, &ts(8)),
        Err(ArchiveError::Unarchived(_))
    ));
    assert_eq!(all(&db).len(), 7);
}

#[test]
fn a_pruned_log_without_its_prune_record_anchor_fails_verify() {
    let (dir, db) = log_with(6);
    export(&db, None, &ts(4), &dir.path().join("a.gz")).unwrap();
    prune(&db, &ts(4)).unwrap().unwrap();
    // Someone removes one more record beyond the anchor.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("DELETE FROM records WHERE seq = 4", [])
        .unwrap();
    drop(conn);
    match verify(&db) {
        Err(VerifyError::Broken { seq, .. }) => assert_eq!(seq, 4),
        other => panic!("expected broken, got {other:?}"),
    }
}

#[test]
fn archives_restore_in_order_into_a_fresh_log_that_verifies() {
    let (dir, db) = log_with(9);
    let a = dir.path().join("a.gz");
    let b = dir.path().join("b.gz");
    export(&db, None, &ts(5), &a).unwrap();
    export(&db, Some(&ts(5)), &ts(10), &b).unwrap();
    let original = all(&db);
    let fresh = dir.path().join("restored.db");
    // The second archive alone does not start a log.
    assert!(matches!(
        restore(&b, &fresh),
        Err(ArchiveError::Discontinuous(_))
    ));
    restore(&a, &fresh).unwrap();
    restore(&b, &fresh).unwrap();
    let restored = all(&fresh);
    assert_eq!(restored, original[..9].to_vec());
    let report = verify(&fresh).unwrap();
    assert_eq!(report.count, 9);
    assert!(report.anchor.is_none());
    // Twice is refused: the log already ends past it.
    assert!(restore(&b, &fresh).is_err());
}

/// A fleet's archive: one section per chain, each with its own header and
/// manifest, checked section by section.
#[test]
fn an_archive_of_several_chains_checks_each_section() {
    use crate::audit::chain::{Head, seal};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.jsonl.gz");
    let write = |file: &Path, edit: Option<(usize, &str)>| {
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(file).unwrap(),
            flate2::Compression::default(),
        );
        let mut line = 0;
        for chain in ["r1", "r2"] {
            let mut head = Head {
                seq: 0,
                hash: format!("genesis-{chain}"),
            };
            write_line(
                &mut gz,
                &Header {
                    format: FORMAT.into(),
                    chain: Some(chain.into()),
                    first_prev_hash: head.hash.clone(),
                },
                file,
            )
            .unwrap();
            line += 1;
            let mut m = None::<Manifest>;
            for i in 1..=3 {
                let mut r = DecisionRecord::new(kind::DECISION, &format!("{chain}-{i}"));
                r.ts = ts(i);
                r.reason = "allowed".into();
                seal(&mut head, &mut r);
                let mm = m.get_or_insert_with(|| Manifest {
                    format: FORMAT.into(),
                    chain: Some(chain.into()),
                    first_seq: 1,
                    last_seq: 0,
                    count: 0,
                    first_prev_hash: r.prev_hash.clone(),
                    last_hash: String::new(),
                    first_ts: r.ts.clone(),
                    last_ts: String::new(),
                });
                mm.last_seq = r.seq;
                mm.count += 1;
                mm.last_hash.clone_from(&r.hash);
                mm.last_ts.clone_from(&r.ts);
                line += 1;
                if let Some((at, path)) = edit
                    && at == line
                {
                    r.path = Some(path.into());
                }
                write_line(&mut gz, &r, file).unwrap();
            }
            write_line(
                &mut gz,
                &Trailer {
                    manifest: m.unwrap(),
                },
                file,
            )
            .unwrap();
            line += 1;
        }
        gz.finish().unwrap();
    };
    write(&file, None);
    let mut seen = Vec::new();
    let sections = read_sections(&file, |r| {
        seen.push((r.chain.clone().unwrap(), r.seq));
        Ok(())
    })
    .unwrap();
    assert_eq!(sections.len(), 2);
    assert_eq!(sections[1].chain.as_deref(), Some("r2"));
    assert_eq!((sections[1].first_seq, sections[1].last_seq), (1, 3));
    assert_eq!(seen[3], ("r2".to_owned(), 1));
    // A SQLite log does not take a fleet's archive.
    assert!(matches!(
        verify_archive(&file),
        Err(ArchiveError::Discontinuous(_))
    ));
    // An edited record in the second section (line 8) is named.
    write(&file, Some((8, "/v1/other")));
    match read_sections(&file, |_| Ok(())) {
        Err(ArchiveError::Broken { line, .. }) => assert_eq!(line, 8),
        other => panic!("expected broken, got {other:?}"),
    }
}
