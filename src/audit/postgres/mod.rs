//! The decision log on PostgreSQL, for a fleet of replicas.
//!
//! Each replica process writes its own hash chain (named by `--replica`),
//! so replicas never wait on each other. A chain has a head row; every
//! batch is one statement that moves the head with a compare-and-set on
//! the previous head and inserts the batch's records, so one round trip
//! commits a batch and a second writer on the same chain is refused rather
//! than interleaved. A session advisory lock per chain refuses a second
//! process at start. Checkpoints (see [`checkpoint`]) chain the heads of
//! every chain together.
//!
//! Invariants:
//! - `synchronous_commit = on` for every session: a batch is durable before
//!   its callers are answered, as on SQLite.
//! - On any error the connection is dropped; the next batch reconnects,
//!   takes the chain's lock again and reads its head from the database, so
//!   service comes back by itself when PostgreSQL does.
//! - The connection string may hold a password: it is never logged or
//!   printed (`Debug` shows the host and database only).

pub mod archive;
mod read;
mod restore;
mod target;
mod unsettled;
mod verify;

use std::time::Duration;

use tokio_postgres::{Client, Statement};

use super::chain::{Head, seal};
use super::writer::{BatchStore, Waiter, start_with};
use super::{AuditError, AuditLog, WriterHandle};

pub use archive::{FleetArchiveError, FleetExported, FleetPruned, OPS_CHAIN};
pub use read::{close_chain, migrate, query, retained_from};
pub use restore::restore;
pub use target::{PASSWORD_ENV, PgTarget, describe};
pub use verify::{Checkpoint, FleetReport, FleetVerifyError, checkpoint, head, verify};

/// How long one batch may take before it is failed (and the connection
/// dropped): the calls in it wait this long at most.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why PostgreSQL could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server refused, or the connection failed.
    #[error("postgresql: {0}")]
    Db(String),
    /// Another process holds the chain.
    #[error(
        "chain `{0}` is in use by another clawgate process; give each replica its own `--replica`"
    )]
    ChainInUse(String),
    /// The chain was retired.
    #[error("chain `{0}` is closed; start this replica under another `--replica` name")]
    ChainClosed(String),
    /// Something that should be there is not.
    #[error("{0}")]
    Invalid(String),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        // `as_db_error` carries the server's message; the plain form says
        // "db error" only.
        PgError::Db(target::describe(&e))
    }
}

impl From<PgError> for AuditError {
    fn from(e: PgError) -> Self {
        AuditError::Write(e.to_string())
    }
}

/// The genesis of a new chain: its name hashed, so that a chain's first
/// record cannot be moved to another chain unnoticed.
pub fn genesis_of(chain: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"clawgate-chain-v1\n");
    hasher.update(chain.as_bytes());
    hex::encode(hasher.finalize())
}

/// The key of a chain's session advisory lock.
fn chain_lock_sql() -> &'static str {
    "SELECT pg_try_advisory_lock(hashtext('clawgate-chain'), hashtext($1))"
}

/// The one statement that commits a batch: move the head if it is still
/// where this writer left it, and insert the records only if it moved.
const BATCH_SQL: &str = "
WITH head AS (
    UPDATE audit_chains SET seq = $4, hash = $5, updated = now()
    WHERE chain = $1 AND seq = $2 AND hash = $3 AND NOT closed
    RETURNING chain)
INSERT INTO audit_records (chain, seq, ts, kind, request_id, mode, agent, cert_fp,
    run_id, client_addr, method, host, path, scope, rule, decision, reason, would_deny,
    credential_kind, credential_ref, policy_digest, status, bytes_up, bytes_down,
    duration_ms, detail, prev_hash, hash, action, exception, mcp, trace_id)
SELECT head.chain, r.seq, r.ts, r.kind, r.request_id, r.mode, r.agent, r.cert_fp,
    r.run_id, r.client_addr, r.method, r.host, r.path, r.scope, r.rule, r.decision,
    r.reason, r.would_deny, r.credential_kind, r.credential_ref, r.policy_digest,
    r.status, r.bytes_up, r.bytes_down, r.duration_ms, r.detail, r.prev_hash, r.hash,
    r.action, r.exception, r.mcp, r.trace_id
FROM head, jsonb_to_recordset($6::text::jsonb) AS r(seq bigint, ts text, kind text,
    request_id text, mode text, agent text, cert_fp text, run_id text, client_addr text,
    method text, host text, path text, scope text, rule text, decision text, reason text,
    would_deny text, credential_kind text, credential_ref text, policy_digest text,
    status bigint, bytes_up bigint, bytes_down bigint, duration_ms bigint, detail text,
    prev_hash text, hash text, action text, exception text, mcp text, trace_id text)";

/// A live session holding the chain's lock.
struct Session {
    client: Client,
    insert: Statement,
}

/// The writer's side of one chain: runs on the writer thread, with a
/// runtime of its own.
struct ChainWriter {
    runtime: tokio::runtime::Runtime,
    target: PgTarget,
    chain: String,
    session: Option<Session>,
    head: Head,
    /// A batch sent without an answer, until the head says whether it
    /// committed.
    unsettled: Option<unsettled::Unsettled>,
}

impl ChainWriter {
    /// Connects, creates the chain's head row if new, takes the chain's
    /// lock and reads its head.
    async fn open_session(target: &PgTarget, chain: &str) -> Result<(Session, Head), PgError> {
        let client = target.connect().await?;
        let genesis = genesis_of(chain);
        client
            .execute(
                "INSERT INTO audit_chains (chain, genesis, seq, hash) VALUES ($1, $2, 0, $2)
                 ON CONFLICT (chain) DO NOTHING",
                &[&chain, &genesis],
            )
            .await?;
        let locked: bool = client.query_one(chain_lock_sql(), &[&chain]).await?.get(0);
        if !locked {
            return Err(PgError::ChainInUse(chain.to_owned()));
        }
        let row = client
            .query_one(
                "SELECT seq, hash, closed FROM audit_chains WHERE chain = $1",
                &[&chain],
            )
            .await?;
        if row.get::<_, bool>(2) {
            return Err(PgError::ChainClosed(chain.to_owned()));
        }
        let head = Head {
            seq: row.get(0),
            hash: row.get(1),
        };
        let insert = client.prepare(BATCH_SQL).await?;
        Ok((Session { client, insert }, head))
    }

    fn write(&mut self, batch: &mut [(Box<super::DecisionRecord>, Waiter)]) -> Result<(), PgError> {
        if self.session.is_none() {
            let (session, head) = self
                .runtime
                .block_on(Self::open_session(&self.target, &self.chain))?;
            if head != self.head {
                tracing::info!(
                    chain = %self.chain,
                    seq = head.seq,
                    "decision log chain head read from postgresql"
                );
            }
            self.head = head;
            self.session = Some(session);
            if let Some(unsettled) = self.unsettled.take() {
                self.settle(unsettled)?;
            }
        }
        let Some(session) = &self.session else {
            return Err(PgError::Db("no session".into()));
        };
        let before = self.head.clone();
        let mut head = before.clone();
        for (record, _) in batch.iter_mut() {
            record.chain = None;
            seal(&mut head, record);
        }
        let records: Vec<&super::DecisionRecord> = batch.iter().map(|(r, _)| &**r).collect();
        let json = serde_json::to_string(&records)
            .map_err(|e| PgError::Invalid(format!("records not encodable: {e}")))?;
        let chain = self.chain.as_str();
        let inserted = self.runtime.block_on(async {
            tokio::time::timeout(
                BATCH_TIMEOUT,
                session.client.execute(
                    &session.insert,
                    &[
                        &chain,
                        &before.seq,
                        &before.hash,
                        &head.seq,
                        &head.hash,
                        &json,
                    ],
                ),
            )
            .await
        });
        match inserted {
            Ok(Ok(n)) if usize::try_from(n).ok() == Some(batch.len()) => {
                self.head = head;
                for (record, _) in batch.iter_mut() {
                    record.chain = Some(self.chain.clone());
                }
                Ok(())
            }
            Ok(Ok(_)) => {
                self.session = None;
                Err(PgError::Db(format!(
                    "the head of chain `{}` moved under this writer: another process writes it",
                    self.chain
                )))
            }
            Ok(Err(e)) => {
                self.session = None;
                if e.as_db_error().is_none() {
                    // The connection failed: the batch may have committed.
                    self.unsettled =
                        unsettled::Unsettled::of(&head, batch.iter().map(|(r, _)| &**r));
                }
                Err(e.into())
            }
            Err(_) => {
                self.session = None;
                self.unsettled = unsettled::Unsettled::of(&head, batch.iter().map(|(r, _)| &**r));
                Err(PgError::Db("the batch timed out".into()))
            }
        }
    }

    /// Writes the outcome records owed by a batch that committed without
    /// its answer reaching this writer (see [`unsettled`]).
    fn settle(&mut self, unsettled: unsettled::Unsettled) -> Result<(), PgError> {
        let again = unsettled::Unsettled {
            committed: unsettled.committed.clone(),
            decisions: unsettled.decisions.clone(),
        };
        let mut owed = unsettled.owed(&self.head);
        if owed.is_empty() {
            return Ok(());
        }
        let Some(session) = &self.session else {
            return Err(PgError::Db("no session".into()));
        };
        let before = self.head.clone();
        let mut head = before.clone();
        for record in &mut owed {
            seal(&mut head, record);
        }
        let json = serde_json::to_string(&owed)
            .map_err(|e| PgError::Invalid(format!("records not encodable: {e}")))?;
        let chain = self.chain.as_str();
        let written = self.runtime.block_on(async {
            tokio::time::timeout(
                BATCH_TIMEOUT,
                session.client.execute(
                    &session.insert,
                    &[
                        &chain,
                        &before.seq,
                        &before.hash,
                        &head.seq,
                        &head.hash,
                        &json,
                    ],
                ),
            )
            .await
        });
        match written {
            Ok(Ok(n)) if usize::try_from(n).ok() == Some(owed.len()) => {
                tracing::warn!(
                    chain = %self.chain,
                    calls = owed.len(),
                    "decisions committed without acknowledgement: outcome records say the calls were not forwarded"
                );
                self.head = head;
                Ok(())
            }
            _ => {
                // Try again with the next session: if these outcomes did
                // commit after all, the head will have moved past `again`'s.
                self.session = None;
                self.unsettled = Some(again);
                Err(PgError::Db(
                    "outcome records of unacknowledged decisions not written".into(),
                ))
            }
        }
    }
}

impl BatchStore for ChainWriter {
    fn write_batch(
        &mut self,
        batch: &mut [(Box<super::DecisionRecord>, Waiter)],
    ) -> Result<(), String> {
        self.write(batch).map_err(|e| e.to_string())
    }
}

/// Opens `chain` on PostgreSQL and starts the writer thread over it.
/// Refuses when another process holds the chain or the chain is closed.
pub fn open(target: &PgTarget, chain: &str) -> Result<(AuditLog, WriterHandle), AuditError> {
    if chain.is_empty() || chain.len() > 200 {
        return Err(PgError::Invalid("the replica name must be 1 to 200 characters".into()).into());
    }
    if chain == OPS_CHAIN {
        return Err(PgError::Invalid(format!(
            "`{OPS_CHAIN}` is the chain of archive manifests and pruning anchors, not a replica's"
        ))
        .into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AuditError::Write(format!("cannot start the writer runtime: {e}")))?;
    let (session, head) = runtime.block_on(ChainWriter::open_session(target, chain))?;
    let writer = ChainWriter {
        runtime,
        target: target.clone(),
        chain: chain.to_owned(),
        session: Some(session),
        head,
        unsettled: None,
    };
    start_with(writer, || || {})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::{PgTarget, genesis_of};

    #[test]
    fn a_store_url_never_shows_its_password() {
        let target: PgTarget = "postgres://clawgate:hunter2@db.internal/clawgate"
            .parse()
            .unwrap();
        let shown = format!("{target:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
        let refused = "postgres://u:hunter2@h:notaport/db"
            .parse::<PgTarget>()
            .unwrap_err();
        assert!(!refused.contains("hunter2"), "{refused}");
    }

    #[test]
    fn each_chain_has_its_own_genesis() {
        assert_ne!(genesis_of("r1"), genesis_of("r2"));
        assert_eq!(genesis_of("r1").len(), 64);
    }
}
