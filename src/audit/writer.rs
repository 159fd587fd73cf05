//! The one writer: a dedicated thread that owns the SQLite connection, drains
//! whatever records are waiting into one transaction, commits with a full
//! fsync, and only then answers the callers of that batch.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};

use super::chain::{COLUMNS, Head, seal};
use super::{AuditError, AuditLog, Command, DecisionRecord, Health};

/// Most records in one transaction; bounds the latency of a batch.
const MAX_BATCH: usize = 512;
/// Records waiting for the writer; past this, appends fail instead of
/// growing memory without bound.
const QUEUE_CAPACITY: usize = 65_536;
/// Unwritten records kept for retry after failed batches.
const MAX_RETRY: usize = 65_536;
/// How long a write waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1500);

pub(super) const SCHEMA: &str = "
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
    exception TEXT
);
CREATE INDEX IF NOT EXISTS records_request ON records(request_id);
CREATE INDEX IF NOT EXISTS records_agent_ts ON records(agent, ts);
CREATE INDEX IF NOT EXISTS records_ts ON records(ts);
";

/// Owns the writer thread; [`WriterHandle::shutdown`] drains and joins it.
#[derive(Debug)]
pub struct WriterHandle {
    log: AuditLog,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterHandle {
    /// Writes everything already queued, then stops the thread.
    pub fn shutdown(mut self) {
        // A blocking send is right here: shutdown runs off the runtime.
        let _ = self.log.tx.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(super) fn start(path: &Path) -> Result<(AuditLog, WriterHandle), AuditError> {
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
    conn.execute_batch(SCHEMA).map_err(open_error)?;
    add_missing_columns(&conn).map_err(open_error)?;
    Head::read(&conn).map_err(open_error)?;

    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
    let health = Arc::new(Health::default());
    let log = AuditLog {
        tx,
        health: Arc::clone(&health),
    };
    let thread = std::thread::Builder::new()
        .name("clawgate-audit".into())
        .spawn(move || run(conn, rx, &health))
        .map_err(|e| AuditError::Write(format!("cannot start writer thread: {e}")))?;
    Ok((
        log.clone(),
        WriterHandle {
            log,
            thread: Some(thread),
        },
    ))
}

/// Logs made before a column existed gain it, empty, so old records stay
/// verifiable (absent optional fields are not part of a record's hash).
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for column in ["action", "exception"] {
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

type Waiter = Option<tokio::sync::oneshot::Sender<Result<i64, String>>>;

fn run(mut conn: Connection, rx: Receiver<Command>, health: &Health) {
    let mut batch: Vec<(Box<DecisionRecord>, Waiter)> = Vec::with_capacity(MAX_BATCH);
    let mut stopping = false;
    while !stopping {
        match rx.recv() {
            Ok(Command::Append(record, waiter)) => batch.push((record, waiter)),
            Ok(Command::Shutdown) | Err(_) => stopping = true,
        }
        // Group commit: everything already waiting joins this transaction;
        // after shutdown, the loop below drains the rest.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Command::Append(record, waiter)) => batch.push((record, waiter)),
                Ok(Command::Shutdown) => stopping = true,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if !batch.is_empty() {
            commit(&mut conn, &mut batch, health);
        }
    }
    // Anything still queued at shutdown is written.
    while let Ok(command) = rx.try_recv() {
        if let Command::Append(record, waiter) = command {
            batch.push((record, waiter));
        }
        if batch.len() >= MAX_BATCH {
            commit(&mut conn, &mut batch, health);
        }
    }
    if !batch.is_empty() {
        commit(&mut conn, &mut batch, health);
    }
    if !batch.is_empty() {
        health
            .dropped
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        tracing::error!(
            records = batch.len(),
            "decision log closed with records it could not write"
        );
    }
}

/// Commits `batch`. Callers waiting for durability get the answer; records
/// nobody waits for (outcomes, handshake rejections) stay in `batch` when the
/// commit fails, to be retried with the next one, so a passing lock does not
/// lose them.
fn commit(conn: &mut Connection, batch: &mut Vec<(Box<DecisionRecord>, Waiter)>, health: &Health) {
    let started = std::time::Instant::now();
    let result = write_batch(conn, batch);
    health.note_batch(batch.len(), started.elapsed());
    match &result {
        Ok(()) => health.healthy.store(true, Ordering::Relaxed),
        Err(e) => {
            health.healthy.store(false, Ordering::Relaxed);
            tracing::error!(error = %e, records = batch.len(), "decision log batch failed");
        }
    }
    let mut retry = Vec::new();
    for (record, waiter) in batch.drain(..) {
        match (waiter, &result) {
            (Some(waiter), Ok(())) => {
                let _ = waiter.send(Ok(record.seq));
            }
            (Some(waiter), Err(e)) => {
                let _ = waiter.send(Err(e.to_string()));
            }
            (None, Ok(())) => {}
            (None, Err(_)) => retry.push((record, None)),
        }
    }
    if retry.len() > MAX_RETRY {
        let lost = retry.len() - MAX_RETRY;
        retry.drain(..lost);
        health.dropped.fetch_add(lost as u64, Ordering::Relaxed);
        tracing::error!(
            records = lost,
            "decision log retry queue full; records dropped"
        );
    }
    *batch = retry;
}

fn write_batch(
    conn: &mut Connection,
    batch: &mut [(Box<DecisionRecord>, Waiter)],
) -> rusqlite::Result<()> {
    // The head is read inside the write transaction, so the chain stays whole
    // even if something else (a second instance, an operator) wrote meanwhile.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut head = Head::read(&tx)?;
    for (record, _) in batch.iter_mut() {
        seal(&mut head, record);
        insert(&tx, record)?;
    }
    tx.commit()
}

/// Inserts one sealed record, every column.
pub(super) fn insert(conn: &Connection, r: &DecisionRecord) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(&format!(
        "INSERT INTO records ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
            ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)"
    ))?;
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
    ])?;
    Ok(())
}
