//! The one writer: a dedicated thread that owns the store (the SQLite file,
//! see `sqlite`, or a fleet's PostgreSQL), drains whatever records are
//! waiting into one transaction, commits it durably, and only then answers
//! the callers of that batch. Records nobody
//! waits for linger a few milliseconds for one somebody does, to share its
//! commit.
//!
//! When a batch fails (a full disk, a lock), its callers are told at once and
//! their calls refused (fail closed). Records nobody waits for (outcomes,
//! cancellations, handshake rejections) are kept for retry, at most
//! [`MAX_RETRY`], and retried every [`RETRY_EVERY`] in batches that never
//! exceed [`MAX_BATCH`], retries included, so that a little freed space is
//! enough to recover. Calls refused because their decision could not be
//! recorded are written, once the log recovers, as one `summary` record per
//! outage with their count. Errors are logged at most once per
//! [`LOG_EVERY`], with the number of repeats left out.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use super::answers::Delivery;
use super::batch::{LINGER, drain_waiting, linger, nobody_waits};
use super::queue::{self, Receiver as Queue};
use super::{AuditError, AuditLog, Command, DecisionRecord, Health, kind};
use crate::error::Reason;

/// Most records in one transaction; bounds the latency of a batch.
pub(super) const MAX_BATCH: usize = 512;
/// Records waiting for the writer; past this, appends fail instead of
/// growing memory without bound.
const QUEUE_CAPACITY: usize = 65_536;
/// Unwritten records kept for retry after failed batches.
const MAX_RETRY: usize = 16_384;
/// How often records kept for retry are tried again with nothing new to write.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// The least time between two error lines about the same failure.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(10);
/// A commit at least this slow is logged: each call in its batch waited.
const SLOW_COMMIT: Duration = Duration::from_millis(100);
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
        let _ = self.log.tx.send_always(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// BENCHMARK ONLY: a writer thread that acknowledges every record without
/// writing it, so the harness can compare a durable log with none at all.
pub(super) fn start_discarding() -> Result<(AuditLog, WriterHandle), AuditError> {
    let (tx, rx) = queue::queue(QUEUE_CAPACITY, MAX_BATCH);
    let log = AuditLog {
        tx,
        health: Arc::new(Health::default()),
    };
    let thread = std::thread::Builder::new()
        .name("clawgate-audit-off".into())
        .spawn(move || {
            // Answered like the durable writer's batches: everything
            // waiting at once, one wake per post box.
            while let Some((first, _)) = rx.recv_after(LINGER) {
                let mut delivery = Delivery::default();
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(command) = next {
                    match command {
                        Command::Append(_, Some(waiter)) => delivery.send(waiter, Ok(0)),
                        Command::Append(_, None) => {}
                        Command::Shutdown => return,
                    }
                    taken += 1;
                    next = (taken < MAX_BATCH).then(|| rx.try_recv().ok()).flatten();
                }
            }
        })
        .map_err(|e| AuditError::Write(format!("cannot start writer thread: {e}")))?;
    Ok((
        log.clone(),
        WriterHandle {
            log,
            thread: Some(thread),
        },
    ))
}

pub(super) type Waiter = Option<super::answers::Waiter>;

/// Where the writer puts a batch: the SQLite connection here, or another
/// backend (PostgreSQL). The loop above it (batching, answering callers,
/// retrying records nobody waits for) is the same for every backend.
pub(super) trait BatchStore {
    /// Seals every record of `batch` onto the chain and writes them all in
    /// one transaction; `Ok` only once that transaction is durable. On
    /// error nothing of the batch may be kept, and the chain head must not
    /// have moved.
    fn write_batch(&mut self, batch: &mut [(Box<DecisionRecord>, Waiter)]) -> Result<(), String>;

    /// Gives the store the writer's health, where it reports a chain head
    /// changed behind the writer's back; a store that cannot tell ignores it.
    fn watch_tail(&mut self, _health: Arc<Health>) {}
}

/// Starts the writer thread over `store`. `beside` runs first on that
/// thread and returns what to do before the store closes (the SQLite file
/// runs its checkpointer beside the writer with it).
pub(super) fn start_with<S, B, C>(
    store: S,
    beside: B,
) -> Result<(AuditLog, WriterHandle), AuditError>
where
    S: BatchStore + Send + 'static,
    B: FnOnce() -> C + Send + 'static,
    C: FnOnce(),
{
    let (tx, rx) = queue::queue(QUEUE_CAPACITY, MAX_BATCH);
    let health = Arc::new(Health::default());
    let mut store = store;
    store.watch_tail(Arc::clone(&health));
    let log = AuditLog {
        tx,
        health: Arc::clone(&health),
    };
    let thread = std::thread::Builder::new()
        .name("clawgate-audit".into())
        .spawn(move || {
            let before_close = beside();
            run(store, rx, &health, before_close);
        })
        .map_err(|e| AuditError::Write(format!("cannot start writer thread: {e}")))?;
    Ok((
        log.clone(),
        WriterHandle {
            log,
            thread: Some(thread),
        },
    ))
}

/// What the writer carries from one batch to the next.
#[derive(Default)]
struct Backlog {
    /// Records nobody waits for, from failed batches, oldest first.
    retry: std::collections::VecDeque<(Box<DecisionRecord>, Waiter)>,
    /// The last time a failure was logged, and failures since not logged.
    last_error_log: Option<Instant>,
    quiet_failures: u64,
}

fn run<S: BatchStore>(mut conn: S, rx: Queue, health: &Health, before_close: impl FnOnce()) {
    let mut backlog = Backlog::default();
    let mut batch: Vec<(Box<DecisionRecord>, Waiter)> = Vec::with_capacity(MAX_BATCH);
    let mut stopping = false;
    while !stopping {
        // With records to retry or a summary to write, wake up on a timer
        // too: recovery must not wait for the next call.
        let pending = !backlog.retry.is_empty() || health.unrecorded.load(Ordering::Relaxed) > 0;
        // After a commit the writer dozes for a while, so that the calls'
        // outcomes queue without waking it (see `queue`); `doze_end` is when
        // that doze ended, if the first record came in it.
        let (first, doze_end) = if pending {
            match rx.recv_timeout(RETRY_EVERY) {
                Ok(command) => (Some(command), None),
                Err(RecvTimeoutError::Timeout) => (None, None),
                Err(RecvTimeoutError::Disconnected) => (Some(Command::Shutdown), None),
            }
        } else {
            match rx.recv_after(LINGER) {
                Some((command, doze_end)) => (Some(command), doze_end),
                None => (Some(Command::Shutdown), None),
            }
        };
        match first {
            Some(Command::Append(record, waiter)) => batch.push((record, waiter)),
            Some(Command::Shutdown) => stopping = true,
            None => {}
        }
        // Group commit: everything already waiting joins this transaction;
        // after shutdown, the loop below drains the rest.
        drain_waiting(&rx, &mut batch, &mut stopping);
        if !stopping && nobody_waits(&batch) {
            // Not past the doze it came in: it has waited that long already.
            let until = doze_end.unwrap_or_else(|| Instant::now() + LINGER);
            stopping = linger(&rx, &mut batch, until);
            drain_waiting(&rx, &mut batch, &mut stopping);
        }
        commit(&mut conn, &mut batch, &mut backlog, health);
    }
    // Anything still queued at shutdown is written, in batches of the usual
    // size, retries included.
    while let Ok(command) = rx.try_recv() {
        if let Command::Append(record, waiter) = command {
            batch.push((record, waiter));
        }
        if batch.len() >= MAX_BATCH {
            commit(&mut conn, &mut batch, &mut backlog, health);
        }
    }
    // A last try for what the disk refused so far, then give up on it.
    for _ in 0..=(MAX_RETRY / MAX_BATCH) {
        if batch.is_empty() && backlog.retry.is_empty() {
            break;
        }
        let before = backlog.retry.len() + batch.len();
        commit(&mut conn, &mut batch, &mut backlog, health);
        if backlog.retry.len() >= before {
            break;
        }
    }
    before_close();
    let left = backlog.retry.len() + batch.len();
    if left > 0 {
        health.dropped.fetch_add(left as u64, Ordering::Relaxed);
        tracing::error!(
            records = left,
            "decision log closed with records it could not write"
        );
    }
}

/// Commits `batch` topped up with records kept for retry (never more than
/// [`MAX_BATCH`] in all) and, when calls were refused unrecorded, their
/// summary. Callers waiting for durability get the answer; records nobody
/// waits for go back to the retry queue when the commit fails, so a passing
/// lock or a full disk does not lose them.
fn commit<S: BatchStore>(
    conn: &mut S,
    batch: &mut Vec<(Box<DecisionRecord>, Waiter)>,
    backlog: &mut Backlog,
    health: &Health,
) {
    // Retries first, so the chain keeps their order.
    let room = MAX_BATCH.saturating_sub(batch.len());
    let retried = room.min(backlog.retry.len());
    let mut full: Vec<(Box<DecisionRecord>, Waiter)> = backlog.retry.drain(..retried).collect();
    full.append(batch);
    let unrecorded = health.unrecorded.swap(0, Ordering::Relaxed);
    let summarised = unrecorded > 0 && full.len() < MAX_BATCH;
    if summarised {
        full.push((Box::new(summary(health, unrecorded)), None));
    } else {
        health.unrecorded.fetch_add(unrecorded, Ordering::Relaxed);
    }
    if full.is_empty() {
        return;
    }
    let begun = Instant::now();
    let result = conn.write_batch(&mut full);
    health
        .last_batch
        .store(full.len() as u64, Ordering::Relaxed);
    match &result {
        Ok(()) => committed(health, backlog, summarised, full.len(), begun.elapsed()),
        Err(e) => failed(
            health,
            backlog,
            summarised.then_some(unrecorded),
            full.len(),
            e,
        ),
    }
    // Retried records go back to the front, new ones behind everything kept,
    // so the chain gets them in the order they came.
    let mut failed_retried = Vec::new();
    let mut delivery = Delivery::default();
    for (index, (record, waiter)) in full.into_iter().enumerate() {
        match (waiter, &result) {
            (Some(waiter), Ok(())) => delivery.send(waiter, Ok(record.seq)),
            (Some(waiter), Err(e)) => delivery.send(waiter, Err(e.to_string())),
            (None, Ok(())) => {}
            // A summary is counted again above, not retried as a record.
            (None, Err(_)) if record.kind == kind::SUMMARY => {}
            (None, Err(_)) if index < retried => failed_retried.push((record, None)),
            (None, Err(_)) => backlog.retry.push_back((record, None)),
        }
    }
    for entry in failed_retried.into_iter().rev() {
        backlog.retry.push_front(entry);
    }
    if backlog.retry.len() > MAX_RETRY {
        let lost = backlog.retry.len() - MAX_RETRY;
        // The newest go: the oldest are the ones a reader most needs.
        backlog.retry.truncate(MAX_RETRY);
        health.dropped.fetch_add(lost as u64, Ordering::Relaxed);
        tracing::error!(
            records = lost,
            "decision log retry queue full; records dropped"
        );
    }
}

/// Health after a committed batch: back to writable, the outage's summary
/// written, the commit's time counted.
fn committed(
    health: &Health,
    backlog: &mut Backlog,
    summarised: bool,
    records: usize,
    took: Duration,
) {
    if summarised {
        // Counted from now on is a new outage's.
        let since = health.unrecorded_since.load(Ordering::Relaxed);
        if health.unrecorded.load(Ordering::Relaxed) == 0 {
            let _ = health.unrecorded_since.compare_exchange(
                since,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
    if !health.healthy.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            failures = backlog.quiet_failures,
            "decision log writable again"
        );
        backlog.quiet_failures = 0;
        backlog.last_error_log = None;
    }
    if took >= SLOW_COMMIT {
        // Every call waiting for this batch waited this long.
        tracing::warn!(
            records,
            ms = took.as_millis(),
            "decision log commit was slow"
        );
    }
    let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
    health.commit_nanos.fetch_add(nanos, Ordering::Relaxed);
    health.max_commit_nanos.fetch_max(nanos, Ordering::Relaxed);
    health.batches.fetch_add(1, Ordering::Relaxed);
    health
        .committed
        .fetch_add(records as u64, Ordering::Relaxed);
}

/// Health after a failed batch: unwritable, the refused calls counted again
/// for the next summary, the failure logged at most once per interval.
fn failed(
    health: &Health,
    backlog: &mut Backlog,
    unrecorded: Option<u64>,
    records: usize,
    e: &str,
) {
    health.healthy.store(false, Ordering::Relaxed);
    if let Some(unrecorded) = unrecorded {
        health.unrecorded.fetch_add(unrecorded, Ordering::Relaxed);
    }
    let due = backlog
        .last_error_log
        .is_none_or(|at| at.elapsed() >= LOG_EVERY);
    if due {
        tracing::error!(
            error = %e,
            records,
            retry = backlog.retry.len(),
            failures_not_logged = backlog.quiet_failures,
            "decision log batch failed; calls are refused until it recovers"
        );
        backlog.last_error_log = Some(Instant::now());
        backlog.quiet_failures = 0;
    } else {
        backlog.quiet_failures += 1;
    }
}

/// The record that stands for the calls refused while their decisions could
/// not be recorded.
fn summary(health: &Health, count: u64) -> DecisionRecord {
    let request_id = uuid::Uuid::now_v7().to_string();
    let mut record = DecisionRecord::new(kind::SUMMARY, &request_id);
    record.decision = Some("deny".into());
    record.reason = Reason::AuditUnavailable.code().to_owned();
    let since = match health.unrecorded_since.load(Ordering::Relaxed) {
        0 => String::new(),
        secs => time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
            .map(|t| format!(", from {}", super::format_ts(t)))
            .unwrap_or_default(),
    };
    record.detail = Some(format!(
        "{count} calls refused unrecorded while the decision log was unavailable{since}"
    ));
    record.status = Some(i64::from(Reason::AuditUnavailable.status().as_u16()));
    record
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
