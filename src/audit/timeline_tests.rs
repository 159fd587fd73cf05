#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::{Path, PathBuf};

use super::*;
use crate::audit::sqlite::SqliteStore;
use crate::audit::writer::{BatchStore, Waiter};
use crate::audit::{Filter, kind, query};

fn record(i: usize, ts: &str) -> (Box<DecisionRecord>, Waiter) {
    let mut r = DecisionRecord::new(kind::DECISION, &format!("r{i}"));
    r.ts = ts.to_owned();
    r.reason = "allowed".into();
    r.agent = Some(if i.is_multiple_of(2) { "even" } else { "odd" }.into());
    (Box::new(r), None)
}

fn new_log() -> (tempfile::TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let conn = Connection::open(&path).unwrap();
    prepare(&conn).unwrap();
    let store = SqliteStore::new(conn).unwrap();
    (dir, path, store)
}

fn ts(second: u32, milli: u32) -> String {
    format!("2026-11-30T01:00:{second:02}.{milli:03}Z")
}

/// Every `since`/`until` pair from `bounds`, with and without an agent,
/// gives exactly what a scan of every record by its stored time gives.
fn assert_time_queries_exact(path: &Path, bounds: &[String]) {
    let all = query(path, &Filter::default()).unwrap();
    let mut cases = vec![(None, None)];
    for a in bounds {
        cases.push((Some(a.clone()), None));
        cases.push((None, Some(a.clone())));
        for b in bounds {
            cases.push((Some(a.clone()), Some(b.clone())));
        }
    }
    for (since, until) in cases {
        for agent in [None, Some("odd".to_owned())] {
            let filter = Filter {
                since: since.clone(),
                until: until.clone(),
                agent: agent.clone(),
                ..Filter::default()
            };
            let got: Vec<i64> = query(path, &filter)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect();
            let want: Vec<i64> = all
                .iter()
                .filter(|r| since.as_ref().is_none_or(|s| r.ts >= *s))
                .filter(|r| until.as_ref().is_none_or(|u| r.ts < *u))
                .filter(|r| agent.is_none() || r.agent == agent)
                .map(|r| r.seq)
                .collect();
            assert_eq!(got, want, "since {since:?} until {until:?} agent {agent:?}");
        }
    }
}

fn bounds() -> Vec<String> {
    let mut bounds = vec![String::new(), "2026".into(), "2027".into()];
    for second in 0..8 {
        for milli in [0, 1, 500] {
            bounds.push(ts(second, milli));
        }
    }
    bounds
}

#[test]
fn a_new_log_keeps_time_in_order_and_queries_by_position_exactly() {
    let (_dir, path, mut store) = new_log();
    let conn = Connection::open(&path).unwrap();
    assert!(is_time_ordered(&conn).unwrap());
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(indexes, ["records_agent"]);
    // Stamped out of order, as records that waited behind later ones are.
    let stamped = [
        ts(1, 0),
        ts(1, 0),
        ts(2, 500),
        ts(2, 1),
        ts(3, 0),
        ts(1, 500),
        ts(5, 0),
        ts(4, 999),
    ];
    for (i, t) in stamped.iter().enumerate() {
        let mut batch = vec![record(i, t)];
        store.write_batch(&mut batch).unwrap();
    }
    let mut batch: Vec<_> = (8..20).map(|i| record(i, &ts(6, 0))).collect();
    batch.push(record(20, &ts(5, 500)));
    store.write_batch(&mut batch).unwrap();

    let all = query(&path, &Filter::default()).unwrap();
    let times: Vec<&str> = all.iter().map(|r| r.ts.as_str()).collect();
    assert_eq!(
        times[..8],
        [
            ts(1, 0),
            ts(1, 0),
            ts(2, 500),
            ts(2, 500),
            ts(3, 0),
            ts(3, 0),
            ts(5, 0),
            ts(5, 0),
        ]
    );
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(all.last().unwrap().ts, ts(6, 0));
    // The clamped time is the one sealed: the chain verifies.
    assert_eq!(crate::audit::verify(&path).unwrap().count, 21);
    assert!(is_time_ordered(&conn).unwrap());
    assert_time_queries_exact(&path, &bounds());
}

#[test]
fn a_clock_stepped_back_keeps_its_time_and_the_log_goes_back_to_indexes() {
    let (_dir, path, mut store) = new_log();
    let mut batch = vec![record(0, &ts(1, 0)), record(1, &ts(40, 0))];
    store.write_batch(&mut batch).unwrap();
    // Thirty seconds back, beyond the tolerance: kept as stamped.
    let mut batch = vec![record(2, &ts(10, 0)), record(3, &ts(5, 0))];
    store.write_batch(&mut batch).unwrap();
    let conn = Connection::open(&path).unwrap();
    assert!(!is_time_ordered(&conn).unwrap());
    let times: Vec<String> = query(&path, &Filter::default())
        .unwrap()
        .into_iter()
        .map(|r| r.ts)
        .collect();
    assert_eq!(times, [ts(1, 0), ts(40, 0), ts(10, 0), ts(5, 0)]);
    assert_eq!(crate::audit::verify(&path).unwrap().count, 4);
    let mut bounds = bounds();
    bounds.extend([ts(40, 0), ts(39, 0), ts(41, 0)]);
    assert_time_queries_exact(&path, &bounds);
    // Reopened, the writer stays on the indexes and no longer clamps.
    drop(store);
    let mut store = SqliteStore::new(Connection::open(&path).unwrap()).unwrap();
    let mut batch = vec![record(4, &ts(6, 0))];
    store.write_batch(&mut batch).unwrap();
    assert_eq!(query(&path, &Filter::default()).unwrap()[4].ts, ts(6, 0));
}

#[test]
fn a_log_of_earlier_versions_with_times_going_backwards_queries_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&legacy_schema()).unwrap();
    // As earlier versions wrote them: sealed in queue order, times unclamped.
    let mut head = crate::audit::chain::Head {
        seq: 0,
        hash: crate::audit::chain::GENESIS.to_owned(),
    };
    for (i, (second, milli)) in [(1, 0), (3, 0), (2, 0), (2, 500), (7, 0), (4, 0)]
        .into_iter()
        .enumerate()
    {
        let (mut r, _) = record(i, &ts(second, milli));
        crate::audit::chain::seal(&mut head, &mut r);
        crate::audit::sqlite::insert_sealed(&conn, &r).unwrap();
    }
    assert!(!is_time_ordered(&conn).unwrap());
    assert_time_queries_exact(&path, &bounds());
    // The old cut-offs: the first record at or after, the last before, by
    // time, wherever they sit.
    assert_eq!(first_at_or_after(&conn, &ts(2, 1)).unwrap(), Some(2));
    assert_eq!(last_before(&conn, &ts(3, 0)).unwrap(), Some(4));
    // Opened by this version's writer: it keeps the indexes and its times,
    // and verifies.
    let (log, writer) = crate::audit::AuditLog::open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut r, _) = record(9, &ts(0, 0));
    r.ts = ts(0, 0);
    rt.block_on(log.append_durable(*r)).unwrap();
    writer.shutdown();
    assert!(!is_time_ordered(&conn).unwrap());
    assert_eq!(query(&path, &Filter::default()).unwrap()[6].ts, ts(0, 0));
    assert_eq!(crate::audit::verify(&path).unwrap().count, 7);
    assert_time_queries_exact(&path, &bounds());
}

#[test]
fn an_earlier_version_reopening_a_new_log_puts_it_back_on_the_indexes() {
    let (_dir, path, store) = new_log();
    drop(store);
    let conn = Connection::open(&path).unwrap();
    // What an earlier version's schema does on open.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS records_agent_ts ON records(agent, ts);
         CREATE INDEX IF NOT EXISTS records_ts ON records(ts);",
    )
    .unwrap();
    assert!(!is_time_ordered(&conn).unwrap());
    prepare(&conn).unwrap();
    assert!(!is_time_ordered(&conn).unwrap());
}

#[test]
fn a_restore_that_breaks_the_time_order_goes_back_to_the_indexes() {
    // An archive of a log whose times go backwards, from an earlier version.
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    let conn = Connection::open(&old).unwrap();
    conn.execute_batch(&legacy_schema()).unwrap();
    let mut head = crate::audit::chain::Head {
        seq: 0,
        hash: crate::audit::chain::GENESIS.to_owned(),
    };
    for (i, second) in [1, 3, 2, 4].into_iter().enumerate() {
        let (mut r, _) = record(i, &ts(second, 0));
        crate::audit::chain::seal(&mut head, &mut r);
        crate::audit::sqlite::insert_sealed(&conn, &r).unwrap();
    }
    drop(conn);
    let file = dir.path().join("old.archive");
    crate::audit::archive::export(&old, None, "2027", &file).unwrap();

    let fresh = dir.path().join("fresh.db");
    crate::audit::archive::restore(&file, &fresh).unwrap();
    let conn = Connection::open(&fresh).unwrap();
    assert!(!is_time_ordered(&conn).unwrap());
    assert_time_queries_exact(&fresh, &bounds());

    // In order, a restore keeps the new log time-ordered.
    let (_dir, ordered, mut store) = new_log();
    let mut batch: Vec<_> = (0..4).map(|i| record(i, &ts(i as u32, 0))).collect();
    store.write_batch(&mut batch).unwrap();
    drop(store);
    let file = dir.path().join("ordered.archive");
    crate::audit::archive::export(&ordered, None, "2027", &file).unwrap();
    let again = dir.path().join("again.db");
    crate::audit::archive::restore(&file, &again).unwrap();
    assert!(is_time_ordered(&Connection::open(&again).unwrap()).unwrap());
    assert_time_queries_exact(&again, &bounds());
}
