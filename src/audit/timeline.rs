//! Time along the chain: the log's schema, and how a time maps to positions.
//!
//! A log this version creates is *time-ordered*: every writer keeps `ts`
//! non-decreasing along `seq` (a record made before its predecessor's time,
//! because it waited in the queue behind it, takes its predecessor's time),
//! so a time range is a range of positions, found by binary search on the
//! rowid. Such a log needs no index on `ts`: one B-tree fewer for every insert
//! to update and every commit to write. Its only index is `records_agent`
//! (`agent`, and so the rowid), which serves an agent's records in a range.
//!
//! A record stamped more than [`TOLERANCE`] before its predecessor means the
//! clock stepped back: it keeps its time, and the log goes back to the time
//! indexes for good rather than move a time that far.
//!
//! Logs made by earlier versions keep their `(ts)` and `(agent, ts)` indexes
//! and are queried by them, exactly as before: their `ts` may go backwards.
//! A log is time-ordered only while both marks hold: `PRAGMA user_version`
//! says so, and the `records_ts` index is absent. An earlier version that
//! opens the log recreates that index (and writes times unclamped), which
//! puts the log back on the index path; a restore that brings records out
//! of time order does the same (see [`keep_exact`]).

use rusqlite::{Connection, OptionalExtension};

use super::DecisionRecord;
use super::chain::{GENESIS, Head};

/// `PRAGMA user_version` of a time-ordered log.
const TIME_ORDERED: i64 = 1;

const TABLE: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT NOT NULL,
    mode TEXT, agent TEXT, cert_fp TEXT, run_id TEXT, client_addr TEXT,
    method TEXT, host TEXT, path TEXT, scope TEXT, rule TEXT,
    decision TEXT, reason TEXT NOT NULL, would_deny TEXT,
    credential_kind TEXT, credential_ref TEXT, policy_digest TEXT,
    status INTEGER, bytes_up INTEGER, bytes_down INTEGER, duration_ms INTEGER,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    action TEXT,
    exception TEXT,
    mcp TEXT,
    trace_id TEXT
);";

/// The indexes of a log whose `ts` may go backwards along `seq`.
const TIME_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS records_agent_ts ON records(agent, ts);
CREATE INDEX IF NOT EXISTS records_ts ON records(ts);
DROP INDEX IF EXISTS records_agent;";

/// The one index of a time-ordered log.
const ORDERED_INDEXES: &str = "CREATE INDEX IF NOT EXISTS records_agent ON records(agent);";

/// The schema earlier versions created: the table and both time indexes.
/// Tests build logs of that kind with it.
#[cfg(test)]
pub(super) fn legacy_schema() -> String {
    format!("{TABLE}{TIME_INDEXES}")
}

/// Creates the log's table and indexes: a new log is time-ordered; an
/// existing one keeps the kind it has.
pub(super) fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    let exists: bool = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'records'",
        [],
        |row| row.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !exists {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {TABLE} {ORDERED_INDEXES} PRAGMA user_version = {TIME_ORDERED}; COMMIT;"
        ))?;
        return Ok(());
    }
    conn.execute_batch(TABLE)?;
    if is_time_ordered(conn)? {
        conn.execute_batch(ORDERED_INDEXES)
    } else {
        conn.execute_batch(TIME_INDEXES)
    }
}

/// Whether `ts` is non-decreasing along `seq` in this log (see the module
/// doc), so that times map to positions without an index.
pub(super) fn is_time_ordered(conn: &Connection) -> rusqlite::Result<bool> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version != TIME_ORDERED {
        return Ok(false);
    }
    let indexed: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'records_ts'",
        [],
        |row| row.get(0),
    )?;
    Ok(indexed == 0)
}

/// After records were inserted as they are (a restore): if they broke the
/// time order, the log goes back to the time indexes, so that queries stay
/// exact. Scans the log once.
pub(super) fn keep_exact(conn: &Connection) -> rusqlite::Result<()> {
    if !is_time_ordered(conn)? {
        return Ok(());
    }
    let backwards: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM (SELECT ts, LAG(ts) OVER (ORDER BY seq) AS before
         FROM records) WHERE ts < before)",
        [],
        |row| row.get(0),
    )?;
    if backwards {
        conn.execute_batch(TIME_INDEXES)?;
    }
    Ok(())
}

/// The time of the last record, from which the next one's is clamped.
pub(super) fn last_ts(conn: &Connection) -> rusqlite::Result<String> {
    Ok(conn
        .prepare_cached("SELECT ts FROM records ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| row.get(0))
        .optional()?
        .unwrap_or_default())
}

/// The chain's head and the time of its last record, in one read (the
/// writer's, once a batch).
pub(super) fn head_and_ts(conn: &Connection) -> rusqlite::Result<(Head, String)> {
    Ok(conn
        .prepare_cached("SELECT seq, hash, ts FROM records ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| {
            Ok((
                Head {
                    seq: row.get(0)?,
                    hash: row.get(1)?,
                },
                row.get(2)?,
            ))
        })
        .optional()?
        .unwrap_or_else(|| {
            (
                Head {
                    seq: 0,
                    hash: GENESIS.to_owned(),
                },
                String::new(),
            )
        }))
}

/// The most a record's time may be moved forward to keep the order: a
/// record that waited in the queue behind a later one. A record further
/// behind its predecessor means the clock stepped back (or was wrong
/// before); its time is kept, and the log goes back to its time indexes.
pub(super) const TOLERANCE: time::Duration = time::Duration::seconds(10);

/// Keeps time non-decreasing along a time-ordered chain, before a record is
/// sealed (so its hash covers the time stored): a record stamped before
/// `floor` (its predecessor's time) by at most [`TOLERANCE`] takes that
/// time; `floor` becomes the record's time. Returns `false`, changing
/// nothing, for a record further behind: the caller then gives up the order
/// ([`give_up_order`]) rather than move a time by more. Texts compare as
/// times: every record's `ts` has the same fixed-width form
/// ([`super::format_ts`]).
pub(super) fn keep_order(floor: &mut String, record: &mut DecisionRecord) -> bool {
    if record.ts.as_str() >= floor.as_str() {
        floor.clone_from(&record.ts);
        return true;
    }
    let parse = |ts: &str| {
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()
    };
    match (parse(&record.ts), parse(floor)) {
        (Some(at), Some(before)) if before - at <= TOLERANCE => {
            record.ts.clone_from(floor);
            true
        }
        _ => false,
    }
}

/// Puts a time-ordered log back on the time indexes (in the caller's
/// transaction): from then on its times are kept as stamped, whatever their
/// order, and queries use the indexes. Builds the indexes over the whole log.
pub(super) fn give_up_order(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(TIME_INDEXES)
}

/// Clamps `record`'s time on a time-ordered log (see [`keep_order`]) or,
/// when its clock stepped back too far, gives the order up. Returns whether
/// the log is still time-ordered.
pub(super) fn order(
    conn: &Connection,
    floor: &mut String,
    record: &mut DecisionRecord,
) -> rusqlite::Result<bool> {
    if keep_order(floor, record) {
        return Ok(true);
    }
    tracing::warn!(
        record = %record.ts,
        before = %floor,
        "a record's time is well before its predecessor's (the clock stepped back); the decision log indexes times from now on"
    );
    give_up_order(conn)?;
    Ok(false)
}

/// The position of the first record at or after time `ts`, if any. A
/// time-ordered log is searched; any other by its `(ts)` index.
pub(super) fn first_at_or_after(conn: &Connection, ts: &str) -> rusqlite::Result<Option<i64>> {
    if !is_time_ordered(conn)? {
        return conn.query_row("SELECT MIN(seq) FROM records WHERE ts >= ?1", [ts], |r| {
            r.get(0)
        });
    }
    search(conn, ts)
}

/// The position of the last record before time `ts`, if any. A
/// time-ordered log is searched; any other by its `(ts)` index.
pub(super) fn last_before(conn: &Connection, ts: &str) -> rusqlite::Result<Option<i64>> {
    if !is_time_ordered(conn)? {
        return conn.query_row("SELECT MAX(seq) FROM records WHERE ts < ?1", [ts], |r| {
            r.get(0)
        });
    }
    match search(conn, ts)? {
        Some(cut) => conn.query_row("SELECT MAX(seq) FROM records WHERE seq < ?1", [cut], |r| {
            r.get(0)
        }),
        None => conn.query_row("SELECT MAX(seq) FROM records", [], |r| r.get(0)),
    }
}

/// On a time-ordered log, binary search by position: the position of the
/// first record at or after `ts`, if any.
fn search(conn: &Connection, ts: &str) -> rusqlite::Result<Option<i64>> {
    let (start, end): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MIN(seq), 1), COALESCE(MAX(seq), 0) + 1 FROM records",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    // The first record at or after a position; positions have no gaps in an
    // intact log, but a search must not assume it.
    let mut probe =
        conn.prepare_cached("SELECT seq, ts FROM records WHERE seq >= ?1 ORDER BY seq LIMIT 1")?;
    let mut at = |position: i64| -> rusqlite::Result<Option<(i64, String)>> {
        probe
            .query_row([position], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    };
    // The least position whose next record is at or after `ts` (or absent):
    // that holds from some position on, since times do not go backwards.
    let (mut low, mut high) = (start, end);
    while low < high {
        let middle = low + (high - low) / 2;
        match at(middle)? {
            Some((_, found)) if found.as_str() < ts => low = middle + 1,
            _ => high = middle,
        }
    }
    Ok(at(low)?.map(|(seq, _)| seq))
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
