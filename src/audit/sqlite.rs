//! The decision log's SQLite file: opening it (WAL, full sync, the time
//! order, columns added since), the checkpointer beside the writer, and the
//! [`BatchStore`] that seals and inserts a batch in one transaction.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};

use super::chain::{COLUMNS, Head, seal};
use super::timeline;
use super::writer::{BatchStore, Waiter, WriterHandle, start_with};
use super::{AuditError, AuditLog, DecisionRecord};

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// WAL pages after which the writer checkpoints in its own commit, should the
/// checkpointer fall behind (SQLite's default is 1,000).
const WRITER_CHECKPOINT_PAGES: i64 = 4_000;
/// How long a write waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1500);

/// Indexes earlier versions made that no query uses: each cost every insert
/// a B-tree search and its pages in the WAL. Dropping one only drops what a
/// query could find faster; an older version opening the log makes it again.
const UNUSED_INDEXES: &str = "DROP INDEX IF EXISTS records_request;";

/// Opens (or creates) the SQLite file at `path` and starts the writer over
/// it, with a checkpointer beside it.
pub(super) fn open(path: &Path) -> Result<(AuditLog, WriterHandle), AuditError> {
    let open_error = |source| AuditError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open(path).map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_error)?;
    // FULL: in WAL mode this is what makes each commit durable.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_error)?;
    super::timeline::prepare(&conn).map_err(open_error)?;
    add_missing_columns(&conn).map_err(open_error)?;
    conn.execute_batch(UNUSED_INDEXES).map_err(open_error)?;
    Head::read(&conn).map_err(open_error)?;
    // Checkpoints run beside the writer (see `checkpoint_every`); the
    // writer's own only bounds the WAL when they fall behind.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
        .map_err(open_error)?;
    let checkpointer = Connection::open(path).map_err(open_error)?;
    checkpointer
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(open_error)?;
    checkpointer
        .pragma_update(None, "synchronous", "FULL")
        .map_err(open_error)?;

    let store = SqliteStore::new(conn).map_err(open_error)?;

    start_with(store, move || {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let checkpoints = std::thread::Builder::new()
            .name("clawgate-audit-checkpoint".into())
            .spawn(move || checkpoint_every(&checkpointer, &stopped));
        move || {
            // The checkpointer goes first, so that the writer's connection
            // is the last to close and SQLite folds the WAL back in.
            drop(stop);
            if let Ok(checkpoints) = checkpoints {
                let _ = checkpoints.join();
            }
        }
    })
}

/// Logs made before a column existed gain it, empty, so old records stay
/// verifiable (absent optional fields are not part of a record's hash).
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for column in ["action", "exception", "mcp", "trace_id"] {
        let has: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('records') WHERE name = ?1",
            [column],
            |row| row.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE records ADD COLUMN {column} TEXT"))?;
        }
    }
    Ok(())
}

/// Copies committed WAL frames into the database every `CHECKPOINT_EVERY`,
/// from a connection of its own, so that commits do not wait for it (as they
/// do for SQLite's automatic checkpoint, which runs inside a commit). A
/// passive checkpoint never blocks the writer. Stops when `stopped` hangs up.
fn checkpoint_every(conn: &Connection, stopped: &Receiver<()>) {
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "decision log checkpoint failed");
        }
    }
}

/// The SQLite file, and whether its log is time-ordered (see
/// [`timeline`]); only this writer and an explicit give-up change that, so
/// it is read once, not per batch.
pub(super) struct SqliteStore {
    pub(super) conn: Connection,
    ordered: bool,
    /// The head this writer last committed, to compare with the store's at
    /// the next batch.
    last: Option<Head>,
    health: Option<std::sync::Arc<super::Health>>,
}

impl SqliteStore {
    pub(super) fn new(conn: Connection) -> rusqlite::Result<SqliteStore> {
        let ordered = timeline::is_time_ordered(&conn)?;
        Ok(SqliteStore {
            conn,
            ordered,
            last: None,
            health: None,
        })
    }
}

impl BatchStore for SqliteStore {
    fn write_batch(&mut self, batch: &mut [(Box<DecisionRecord>, Waiter)]) -> Result<(), String> {
        let tail = Tail {
            last: &mut self.last,
            health: self.health.as_deref(),
        };
        write_batch(&mut self.conn, batch, &mut self.ordered, tail).map_err(|e| e.to_string())
    }

    fn watch_tail(&mut self, health: std::sync::Arc<super::Health>) {
        self.health = Some(health);
    }
}

/// The incremental check of the chain as the writer extends it: the head
/// the store holds must be the one this writer committed last.
struct Tail<'a> {
    last: &'a mut Option<Head>,
    health: Option<&'a super::Health>,
}

impl Tail<'_> {
    /// Compares the store's head with the last one committed, and reports
    /// the first position affected when they differ (a record cut from the
    /// tail, the last record rewritten). Records appended meanwhile by
    /// another writer in this file (`audit export` and `audit prune` note
    /// themselves in the log) are fine when they chain from that head.
    fn check(&self, conn: &Connection, found: &Head) -> rusqlite::Result<()> {
        let Some(last) = self.last.as_ref() else {
            return Ok(());
        };
        if last == found || (found.seq > last.seq && appended_in_line(conn, last, found)?) {
            return Ok(());
        }
        let first = match found.seq.cmp(&last.seq) {
            std::cmp::Ordering::Less => found.seq + 1,
            std::cmp::Ordering::Equal => found.seq,
            std::cmp::Ordering::Greater => last.seq + 1,
        };
        tracing::error!(
            committed.seq = last.seq,
            found.seq = found.seq,
            first_affected = first,
            "decision log changed behind the writer: the chain head is not the one it committed"
        );
        if let Some(health) = self.health {
            let _ = health.tail_broken.compare_exchange(
                0,
                first.max(1),
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            );
        }
        Ok(())
    }
}

/// Whether the records after `last` each verify and chain from it up to
/// `found`.
fn appended_in_line(conn: &Connection, last: &Head, found: &Head) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM records WHERE seq > ?1 ORDER BY seq"
    ))?;
    let mut rows = stmt.query([last.seq])?;
    let mut at = last.clone();
    let mut hint = super::chain::Format::V2;
    while let Some(row) = rows.next()? {
        let record = super::chain::from_row(row)?;
        if record.seq != at.seq + 1
            || record.prev_hash != at.hash
            || !super::chain::hash_matches(&record, &mut hint)
        {
            return Ok(false);
        }
        at = Head {
            seq: record.seq,
            hash: record.hash,
        };
    }
    Ok(&at == found)
}

fn write_batch(
    conn: &mut Connection,
    batch: &mut [(Box<DecisionRecord>, Waiter)],
    ordered: &mut bool,
    tail: Tail<'_>,
) -> rusqlite::Result<()> {
    // The head is read inside the write transaction, so the chain stays whole
    // even if something else (a second instance, an operator) wrote meanwhile.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // On a time-ordered log, times are kept in order as records are sealed,
    // from the last record's.
    let mut still_ordered = *ordered;
    let (mut head, mut floor) = if still_ordered {
        timeline::head_and_ts(&tx)?
    } else {
        (Head::read(&tx)?, String::new())
    };
    tail.check(&tx, &head)?;
    {
        // One statement for the whole batch, not one cache lookup per record.
        let mut statement = tx.prepare_cached(insert_sql())?;
        for (record, _) in batch.iter_mut() {
            if still_ordered {
                still_ordered = timeline::order(&tx, &mut floor, record)?;
            }
            seal(&mut head, record);
            insert_with(&mut statement, record)?;
        }
    }
    tx.commit()?;
    *tail.last = Some(head);
    *ordered = still_ordered;
    Ok(())
}

fn insert_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "INSERT INTO records ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
            ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31)"
        )
    })
}

/// Inserts one sealed record as it is (archives restore with it).
pub(super) fn insert_sealed(conn: &Connection, r: &DecisionRecord) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(insert_sql())?;
    insert_with(&mut statement, r)
}

/// Inserts one sealed record, every column (the tamper tests write with it).
#[cfg(test)]
pub(super) fn insert(conn: &Connection, r: &DecisionRecord) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(insert_sql())?;
    insert_with(&mut statement, r)
}

fn insert_with(
    statement: &mut rusqlite::Statement<'_>,
    r: &DecisionRecord,
) -> rusqlite::Result<()> {
    statement.execute(params![
        r.seq,
        r.ts,
        r.kind,
        r.request_id,
        r.mode,
        r.agent,
        r.cert_fp,
        r.run_id,
        r.client_addr,
        r.method,
        r.host,
        r.path,
        r.scope,
        r.rule,
        r.decision,
        r.reason,
        r.would_deny,
        r.credential_kind,
        r.credential_ref,
        r.policy_digest,
        r.status,
        r.bytes_up,
        r.bytes_down,
        r.duration_ms,
        r.detail,
        r.prev_hash,
        r.hash,
        r.action,
        r.exception,
        r.mcp.as_ref().and_then(|m| serde_json::to_string(m).ok()),
        r.trace_id,
    ])?;
    Ok(())
}
