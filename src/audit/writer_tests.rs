#![allow(clippy::unwrap_used, reason = "tests")]

use rusqlite::Connection;

use super::*;
use crate::audit::sqlite::SqliteStore;

fn outcome(i: usize) -> (Box<DecisionRecord>, Waiter) {
    let mut record = DecisionRecord::new(kind::OUTCOME, &format!("r{i}"));
    record.reason = "allowed".into();
    (Box::new(record), None)
}

#[test]
fn batches_stay_within_their_limit_retries_included_and_refusals_are_summarised() {
    // No table yet: every batch fails, as on a full disk.
    let mut conn = SqliteStore::new(Connection::open_in_memory().unwrap()).unwrap();
    let health = Health::default();
    let mut backlog = Backlog::default();
    let mut batch = Vec::new();
    for i in 0..3 * MAX_BATCH {
        batch.push(outcome(i));
        if batch.len() == MAX_BATCH {
            commit(&mut conn, &mut batch, &mut backlog, &health);
        }
    }
    assert_eq!(backlog.retry.len(), 3 * MAX_BATCH);
    assert!(!health.healthy.load(Ordering::Relaxed));
    health.unrecorded.store(7, Ordering::Relaxed);

    // Room again: a new durable record and the backlog, a batch at a time.
    crate::audit::timeline::prepare(&conn.conn).unwrap();
    let (done, mut answer) = crate::audit::answers::waiter();
    let mut record = DecisionRecord::new(kind::DECISION, "new");
    record.reason = "allowed".into();
    batch.push((Box::new(record), Some(done)));
    commit(&mut conn, &mut batch, &mut backlog, &health);
    assert!(health.healthy.load(Ordering::Relaxed));
    assert_eq!(health.last_batch.load(Ordering::Relaxed), MAX_BATCH as u64);
    assert!(matches!(answer.try_recv(), Ok(Ok(_))));
    while !backlog.retry.is_empty() || health.unrecorded.load(Ordering::Relaxed) > 0 {
        commit(&mut conn, &mut Vec::new(), &mut backlog, &health);
        assert!(health.last_batch.load(Ordering::Relaxed) <= MAX_BATCH as u64);
    }
    let conn = conn.conn;
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, (3 * MAX_BATCH + 2) as i64);
    let (count, detail): (i64, String) = conn
        .query_row(
            "SELECT COUNT(*), detail FROM records WHERE kind = 'summary'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(count, 1);
    assert!(detail.starts_with("7 calls refused"), "{detail}");
    // The retried records kept their order in the chain.
    let first: String = conn
        .query_row(
            "SELECT request_id FROM records ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(first, "r0");
}

#[test]
fn an_outcome_shares_the_next_decisions_commit_and_is_never_stranded() {
    let dir = tempfile::tempdir().unwrap();
    let (log, writer) = AuditLog::open(&dir.path().join("audit.db")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        // Alone, an outcome is committed once its wait is over.
        log.append(*outcome(0).0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.stats().records < 1 {
            assert!(
                Instant::now() < deadline,
                "a lone outcome was never committed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // An outcome and, a millisecond later, the next call's decision: one
        // commit for the two, not one each.
        let before = log.stats().batches;
        for i in 1..=20 {
            log.append(*outcome(i).0);
            std::thread::sleep(Duration::from_millis(1));
            let mut decision = DecisionRecord::new(kind::DECISION, &format!("d{i}"));
            decision.reason = "allowed".into();
            log.append_durable(decision).await.unwrap();
        }
        // Without the linger it is exactly 40: each outcome commits alone
        // before the decision arrives. A few pairs may still miss each other
        // on a loaded machine, hence the margin.
        let commits = log.stats().batches - before;
        assert!(commits <= 35, "{commits} commits for 20 pairs");
        assert_eq!(log.stats().records, 41);
    });
    writer.shutdown();
}
