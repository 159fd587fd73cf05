//! The decision log: one SQLite database in WAL mode, one writer thread doing
//! group commit, every record chained to its predecessor by hash.
//!
//! Invariants:
//! - A caller that needs durability ([`AuditLog::append_durable`]) gets `Ok`
//!   only once its batch is committed; the pipeline forwards nothing before.
//! - Records never hold secret values or query strings; credentials appear as
//!   a kind and a non-secret reference.
//! - The chain head advances only on commit, so a failed batch leaves no gap.

pub mod anchor;
mod answers;
pub mod approval_findings;
pub mod archive;
mod batch;
mod chain;
pub mod health;
pub mod postgres;
mod query;
mod queue;
mod sqlite;
pub mod stats;
mod timeline;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::mpsc::TrySendError;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub(crate) use answers::post_box;
pub use chain::{Head, VerifyError, VerifyReport, check_anchor, head, verify};
pub use query::{Filter, Format, for_each_decision, query, render, retained_from};
pub use writer::WriterHandle;

/// The kind of a record.
pub mod kind {
    /// The decision on a call or handshake, written before anything is forwarded.
    pub const DECISION: &str = "decision";
    /// What happened after an allowed call: status, bytes, duration.
    pub const OUTCOME: &str = "outcome";
    /// A policy put in force: its digest and files.
    pub const POLICY: &str = "policy";
    /// A credential fetched or minted (one per STS or Secrets Manager call),
    /// with its non-secret reference (the STS access key id).
    pub const MINT: &str = "mint";
    /// A policy exception lapsed (once per exception).
    pub const EXCEPTION: &str = "exception";
    /// A runtime override was created, removed or lapsed.
    pub const OVERRIDE: &str = "override";
    /// An MCP tool definition seen first (pinned) or changed.
    pub const PIN: &str = "pin";
    /// Certificates reloaded, or a reload refused.
    pub const CERTS: &str = "certs";
    /// Calls refused while the log was unavailable, counted: one record per
    /// outage, written when the log recovers.
    pub const SUMMARY: &str = "summary";
    /// A range of the log was exported: the archive's manifest and digest.
    pub const ARCHIVE: &str = "archive";
    /// Archived records were removed: the anchor verification starts from.
    pub const PRUNE: &str = "prune";
    /// A step in an approval's life: requested, granted, denied, expired.
    pub const APPROVAL: &str = "approval";
}

/// One row of the decision log. Optional fields are omitted from the JSON
/// form (and so from the hash), which keeps old records verifiable when new
/// optional fields are added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Position in the chain, assigned by the writer.
    pub seq: i64,
    /// RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// `decision`, `outcome` or `policy`.
    pub kind: String,
    /// The id the agent sees in `x-clawgate-request-id`.
    pub request_id: String,
    /// `gateway`, `forward`, `connect` or `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The agent name, once identified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// SHA-256 of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fp: Option<String>,
    /// The run id from a run token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The peer's address and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    /// The HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The upstream (or requested) host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path, never the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The scope that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The rule that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `allow` or `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// A reason code from the README table.
    pub reason: String,
    /// In report mode, the reason enforce mode would have refused with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_deny: Option<String>,
    /// The kind of credential injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_kind: Option<String>,
    /// A non-secret reference to the credential (`env:NAME`, `file:PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_ref: Option<String>,
    /// The digest of the policy in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// The status the agent received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    /// Request body bytes sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<i64>,
    /// Response body bytes sent to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<i64>,
    /// Milliseconds from receipt to the end of the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Free text that is never secret (a TLS verifier reason, a count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The IAM action an AWS call maps to (`s3:GetObject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The id of the policy exception a decision relied on, or that lapsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
    /// For an MCP message: what it was (method, tool, ids, hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpRecord>,
    /// The W3C trace id of the call's span (32 hex digits), when traces are
    /// exported (`serve --otlp-endpoint`): the trace leads to this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The chain the record belongs to, on a store with one chain per
    /// replica (PostgreSQL); absent on SQLite. Not part of the hash: a
    /// chain's genesis ties its records to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// The hash of the previous record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prev_hash: String,
    /// The hash of this record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// What a record says about one MCP message. Never the arguments
/// themselves: they carry secrets; only their keyed hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpRecord {
    /// The JSON-RPC method (`tools/call`), `response` for a client's answer
    /// to a server request, or `GET`/`DELETE` for the session's stream and end.
    pub method: String,
    /// The tool name, resource URI or prompt name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The JSON-RPC id, as JSON text (`7`, `"a1"`); absent for a notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The `Mcp-Session-Id`, when the exchange has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// `hmac-sha256:<hex>` of the arguments' canonical JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_hash: Option<String>,
    /// `sha256:<hex>` of the tool's definition as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// In an outcome: whether the `tools/call` result had `isError`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
}

impl DecisionRecord {
    /// A record of `kind` for `request_id`, stamped now.
    pub fn new(kind: &str, request_id: &str) -> DecisionRecord {
        DecisionRecord {
            ts: now_rfc3339(),
            kind: kind.to_owned(),
            request_id: request_id.to_owned(),
            ..DecisionRecord::default()
        }
    }
}

/// Where the decision log is read from: the embedded SQLite file, or a
/// fleet's PostgreSQL store. Queries give the same records either way.
#[derive(Debug, Clone)]
pub enum Source {
    /// A SQLite database file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL store (every replica's chain).
    Postgres(postgres::PgTarget),
}

impl Source {
    /// The records that pass `filter`, oldest first.
    pub async fn query(&self, filter: &Filter) -> Result<Vec<DecisionRecord>, AuditError> {
        match self {
            Source::Sqlite(path) => {
                let path = path.clone();
                let filter = filter.clone();
                tokio::task::spawn_blocking(move || query(&path, &filter))
                    .await
                    .map_err(|_| AuditError::WriterGone)?
            }
            Source::Postgres(target) => postgres::query(target, filter)
                .await
                .map_err(|e| AuditError::Write(e.to_string())),
        }
    }
}

impl Source {
    /// The time from which the log is complete when it was pruned
    /// ([`retained_from`], [`postgres::retained_from`]); `None` when never
    /// pruned.
    pub async fn retained_from(&self) -> Result<Option<String>, AuditError> {
        match self {
            Source::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || retained_from(&path))
                    .await
                    .map_err(|_| AuditError::WriterGone)?
            }
            Source::Postgres(target) => postgres::retained_from(target)
                .await
                .map_err(|e| AuditError::Write(e.to_string())),
        }
    }

    /// Walks the whole log (every chain on PostgreSQL): `Ok` with a JSON
    /// summary when intact, `Err` naming what is broken or unreadable.
    pub async fn verify(&self) -> Result<serde_json::Value, String> {
        match self {
            Source::Sqlite(path) => {
                let path = path.clone();
                let report = tokio::task::spawn_blocking(move || verify(&path))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({
                    "records": report.count,
                    "head": format!("{} {}", report.head.seq, report.head.hash),
                    "pruned_anchor": report.anchor.map(|a| format!("{} {}", a.seq, a.hash)),
                }))
            }
            Source::Postgres(target) => {
                let report = postgres::verify(target, &[])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({
                    "records": report.records,
                    "chains": report.chains,
                    "checkpoints": report.checkpoints,
                    "pruned_chains": report.pruned,
                    "head": report.head.map(|c| format!("{} {}", c.seq, c.hash)),
                }))
            }
        }
    }
}

impl DecisionRecord {
    /// Adds a note to `detail`, after what is already there.
    pub fn add_detail(&mut self, note: &str) {
        self.detail = Some(match self.detail.take() {
            Some(before) if !before.is_empty() => format!("{before}; {note}"),
            _ => note.to_owned(),
        });
    }
}

/// The current time as RFC 3339 UTC with exactly three fractional digits, so
/// that text order is time order.
pub fn now_rfc3339() -> String {
    format_ts(time::OffsetDateTime::now_utc())
}

/// Formats a time the way records store it: `YYYY-MM-DDTHH:MM:SS.mmmZ` in
/// UTC. Every record takes one or two of these, so the digits are written
/// directly rather than through a format description.
pub fn format_ts(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return format_ts_described(t);
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut value = value;
        for i in (at..at + digits).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year.unsigned_abs(), 4);
    put(5, u32::from(u8::from(t.month())), 2);
    put(8, u32::from(t.day()), 2);
    put(11, u32::from(t.hour()), 2);
    put(14, u32::from(t.minute()), 2);
    put(17, u32::from(t.second()), 2);
    put(20, u32::from(t.millisecond()), 3);
    out.iter().map(|&b| char::from(b)).collect()
}

/// [`format_ts`] by its format description, for years outside 0..=9999.
fn format_ts_described(t: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(FORMAT).unwrap_or_default()
}

/// Why the decision log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// SQLite refused the batch (locked, disk full, read-only, corrupt).
    #[error("decision log write failed: {0}")]
    Write(String),
    /// SQLite refused a read.
    #[error("decision log read failed: {0}")]
    Read(#[from] rusqlite::Error),
    /// The writer thread is gone.
    #[error("decision log writer has stopped")]
    WriterGone,
    /// The database could not be opened or prepared.
    #[error("cannot open decision log `{path}`: {source}")]
    Open {
        /// The database path.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
}

enum Command {
    Append(Box<DecisionRecord>, Option<answers::Waiter>),
    Shutdown,
}

/// The answer to a queued durable record: its sequence number once its
/// batch is committed.
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<answers::Answer>);

impl Receipt {
    /// Waits for the batch holding the record to be committed.
    pub async fn committed(self) -> Result<i64, AuditError> {
        match self.0.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(message)) => Err(AuditError::Write(message)),
            Err(_) => Err(AuditError::WriterGone),
        }
    }
}

/// A cheap, cloneable handle to the writer.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: queue::Sender,
    health: Arc<Health>,
}

/// What the writer knows about its own state.
#[derive(Debug)]
struct Health {
    /// Whether the last batch was committed.
    healthy: AtomicBool,
    /// Records lost for good (queue full, or unwritable at shutdown).
    dropped: AtomicU64,
    /// Calls refused because their decision could not be recorded, not yet
    /// summarised in the log; and since when (Unix seconds, 0 for none).
    unrecorded: AtomicU64,
    unrecorded_since: AtomicU64,
    /// When an error about appends was last logged (Unix seconds), and the
    /// lines left out since.
    last_append_log: AtomicU64,
    quiet_appends: AtomicU64,
    /// Records in the last batch.
    last_batch: AtomicU64,
    /// Batches committed, records in them, and time spent committing them.
    batches: AtomicU64,
    committed: AtomicU64,
    commit_nanos: AtomicU64,
    max_commit_nanos: AtomicU64,
    /// The first position where the store's chain stopped being the one
    /// this writer wrote (0 while it is): found when a batch starts and the
    /// head the store holds is not the head the writer last committed.
    tail_broken: std::sync::atomic::AtomicI64,
}

/// What the writer has done since start: enough to tell the batch size and
/// the cost of one commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: u64,
    /// Records in those transactions.
    pub records: u64,
    /// Time spent in those transactions, from begin to the end of the fsync.
    pub commit_nanos: u64,
    /// The slowest of them.
    pub max_commit_nanos: u64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
            unrecorded: AtomicU64::new(0),
            unrecorded_since: AtomicU64::new(0),
            last_append_log: AtomicU64::new(0),
            quiet_appends: AtomicU64::new(0),
            last_batch: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            commit_nanos: AtomicU64::new(0),
            max_commit_nanos: AtomicU64::new(0),
            tail_broken: std::sync::atomic::AtomicI64::new(0),
        }
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Append(rec, _) => write!(f, "Append({})", rec.request_id),
            Command::Shutdown => f.write_str("Shutdown"),
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the database and starts the writer thread.
    pub fn open(path: &Path) -> Result<(AuditLog, WriterHandle), AuditError> {
        sqlite::open(path)
    }

    /// Opens chain `chain` on PostgreSQL (a fleet's store) and starts the
    /// writer thread over it. Blocks: call it off the async runtime.
    pub fn open_postgres(
        target: &postgres::PgTarget,
        chain: &str,
    ) -> Result<(AuditLog, WriterHandle), AuditError> {
        postgres::open(target, chain)
    }

    /// BENCHMARK ONLY: a log that writes nothing. Every record is taken and
    /// acknowledged at once, so a benchmark can show what durability costs.
    /// Nothing is recorded: never use it to serve agents.
    pub fn discarding_for_benchmarks() -> Result<(AuditLog, WriterHandle), AuditError> {
        writer::start_discarding()
    }

    /// Appends a record and waits until its batch is committed.
    pub async fn append_durable(&self, record: DecisionRecord) -> Result<i64, AuditError> {
        self.queue_durable(record)?.committed().await
    }

    /// Queues a record for the writer and returns the receipt that says when
    /// its batch is committed. Once this returns `Ok`, the record is written
    /// (or its failure reported to the receipt) even if nobody waits.
    pub fn queue_durable(&self, record: DecisionRecord) -> Result<Receipt, AuditError> {
        let (done, wait) = answers::waiter();
        // Never block the runtime: a full queue is an unavailable log.
        self.tx
            .try_send(Command::Append(Box::new(record), Some(done)))
            .map_err(|e| match e {
                TrySendError::Full(_) => AuditError::Write("the writer queue is full".into()),
                TrySendError::Disconnected(_) => AuditError::WriterGone,
            })?;
        Ok(Receipt(wait))
    }

    /// Appends a record without waiting (outcomes, handshake rejections).
    /// A failure is logged by the writer and turns health red.
    pub fn append(&self, record: DecisionRecord) {
        let lost = match self.tx.try_send(Command::Append(Box::new(record), None)) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "decision log writer queue is full; record dropped",
            Err(TrySendError::Disconnected(_)) => "decision log writer has stopped; record dropped",
        };
        self.health.healthy.store(false, Ordering::Relaxed);
        self.health.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(repeats) = self.log_due() {
            tracing::error!(repeats, "{lost}");
        }
    }

    /// Notes a call refused because its decision could not be recorded: it
    /// is counted into the next `summary` record, and logged at most once
    /// per interval.
    pub fn refused_unrecorded(&self, error: &AuditError) {
        if self.health.unrecorded.fetch_add(1, Ordering::Relaxed) == 0 {
            let _ = self.health.unrecorded_since.compare_exchange(
                0,
                unix_now(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if let Some(repeats) = self.log_due() {
            tracing::error!(error = %error, repeats, "decision not recorded; refusing the call");
        }
    }

    /// Whether an append error may be logged now, and how many were not.
    fn log_due(&self) -> Option<u64> {
        let now = unix_now();
        let last = self.health.last_append_log.load(Ordering::Relaxed);
        if now >= last + writer::LOG_EVERY.as_secs()
            && self
                .health
                .last_append_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.health.quiet_appends.swap(0, Ordering::Relaxed));
        }
        self.health.quiet_appends.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Where the writer found the store's chain head changed behind its
    /// back (a record cut from the tail, the last record rewritten, another
    /// writer): the first position affected. Stays set until restart: a cut
    /// tail still verifies, so no later walk can clear it.
    pub fn tail_break(&self) -> Option<i64> {
        match self.health.tail_broken.load(Ordering::Acquire) {
            0 => None,
            seq => Some(seq),
        }
    }

    /// Whether the last batch was committed.
    pub fn is_healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Relaxed)
    }

    /// Batches, records and commit time since start.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            batches: self.health.batches.load(Ordering::Relaxed),
            records: self.health.committed.load(Ordering::Relaxed),
            commit_nanos: self.health.commit_nanos.load(Ordering::Relaxed),
            max_commit_nanos: self.health.max_commit_nanos.load(Ordering::Relaxed),
        }
    }

    /// Records in the last group commit, commits so far, seconds spent
    /// committing in all.
    pub fn batch_stats(&self) -> (u64, u64, f64) {
        (
            self.health.last_batch.load(Ordering::Relaxed),
            self.health.batches.load(Ordering::Relaxed),
            self.health.commit_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }

    /// Records lost for good since start; anything but 0 is worth an alert.
    pub fn dropped_records(&self) -> u64 {
        self.health.dropped.load(Ordering::Relaxed)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
