//! The hash chain: each record's hash covers its own fields (its position
//! included) and its predecessor's hash, so an edited, deleted, inserted or
//! reordered record breaks the chain at that point.
//!
//! What a chain cannot show on its own: records cut from the tail. An operator
//! anchors the head (`clawgate audit head`) somewhere clawgate cannot write,
//! and later checks that the anchored record is still in the chain.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, Row};
use sha2::{Digest, Sha256};

use super::{AuditError, DecisionRecord};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const DOMAIN: &[u8] = b"clawgate-audit-v1\n";

/// The last record of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Its position (0 when the log is empty).
    pub seq: i64,
    /// Its hash ([`GENESIS`] when the log is empty).
    pub hash: String,
}

impl Head {
    pub(super) fn read(conn: &Connection) -> rusqlite::Result<Head> {
        let mut stmt = conn.prepare("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")?;
        let mut rows = stmt.query([])?;
        match rows.next()? {
            Some(row) => Ok(Head {
                seq: row.get(0)?,
                hash: row.get(1)?,
            }),
            None => Ok(Head {
                seq: 0,
                hash: GENESIS.to_owned(),
            }),
        }
    }
}

/// The hash of `record`'s fields (not its `hash` or `prev_hash`) chained to
/// `prev_hash`.
pub fn record_hash(prev_hash: &str, record: &DecisionRecord) -> String {
    let mut body = record.clone();
    body.prev_hash.clear();
    body.hash.clear();
    body.chain = None;
    hash_of_cleared(prev_hash, &body)
}

/// [`record_hash`] of a record whose `hash` and `prev_hash` are empty and
/// whose `chain` is `None`.
fn hash_of_cleared(prev_hash: &str, body: &DecisionRecord) -> String {
    // Serialising a plain struct of strings and integers cannot fail; an
    // empty body would still chain, and verify would flag it.
    // Streamed into the hasher: no buffer per record.
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    let _ = serde_json::to_writer(&mut hasher, body);
    hex::encode(hasher.finalize())
}

/// Gives `record` the next position after `head`, chains it and advances
/// `head`.
pub(crate) fn seal(head: &mut Head, record: &mut DecisionRecord) {
    record.seq = head.seq + 1;
    // Hashed in place with both hash fields empty, as record_hash would see
    // it, without copying the record (this runs once per record written).
    record.prev_hash.clear();
    record.hash.clear();
    let chain = record.chain.take();
    let hash = hash_of_cleared(&head.hash, record);
    record.chain = chain;
    record.prev_hash.clone_from(&head.hash);
    record.hash = hash;
    head.seq = record.seq;
    head.hash.clone_from(&record.hash);
}

/// An intact chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many records were checked.
    pub count: u64,
    /// The last record.
    pub head: Head,
    /// Where a pruned log's chain starts (the last removed record, named by
    /// a `prune` record); `None` when the log starts at the genesis.
    pub anchor: Option<Head>,
}

/// Why the chain is not intact.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A record does not match its hash, or does not follow its predecessor.
    #[error("record {seq} is broken: {why}")]
    Broken {
        /// The first record that does not verify.
        seq: i64,
        /// What is wrong with it.
        why: String,
    },
    /// The database could not be read.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

pub(super) const COLUMNS: &str = "seq, ts, kind, request_id, mode, agent, cert_fp, run_id,
    client_addr, method, host, path, scope, rule, decision, reason, would_deny,
    credential_kind, credential_ref, policy_digest, status, bytes_up, bytes_down,
    duration_ms, detail, prev_hash, hash, action, exception, mcp";

pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<DecisionRecord> {
    Ok(DecisionRecord {
        seq: row.get(0)?,
        ts: row.get(1)?,
        kind: row.get(2)?,
        request_id: row.get(3)?,
        mode: row.get(4)?,
        agent: row.get(5)?,
        cert_fp: row.get(6)?,
        run_id: row.get(7)?,
        client_addr: row.get(8)?,
        method: row.get(9)?,
        host: row.get(10)?,
        path: row.get(11)?,
        scope: row.get(12)?,
        rule: row.get(13)?,
        decision: row.get(14)?,
        reason: row.get(15)?,
        would_deny: row.get(16)?,
        credential_kind: row.get(17)?,
        credential_ref: row.get(18)?,
        policy_digest: row.get(19)?,
        status: row.get(20)?,
        bytes_up: row.get(21)?,
        bytes_down: row.get(22)?,
        duration_ms: row.get(23)?,
        detail: row.get(24)?,
        prev_hash: row.get(25)?,
        hash: row.get(26)?,
        action: row.get(27)?,
        exception: row.get(28)?,
        mcp: row
            .get::<_, Option<String>>(29)?
            .and_then(|text| serde_json::from_str(&text).ok()),
        chain: None,
    })
}

pub(super) fn open_read_only(path: &Path) -> Result<Connection, AuditError> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| AuditError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Walks the whole chain and names the first record that does not verify.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    let conn = open_read_only(path)?;
    verify_conn(&conn)
}

pub(super) fn verify_conn(conn: &Connection) -> Result<VerifyReport, VerifyError> {
    let read = |e: rusqlite::Error| VerifyError::Audit(AuditError::Read(e));
    let mut stmt = conn
        .prepare(&format!("SELECT {COLUMNS} FROM records ORDER BY seq"))
        .map_err(read)?;
    let mut rows = stmt.query([]).map_err(read)?;
    let mut head = Head {
        seq: 0,
        hash: GENESIS.to_owned(),
    };
    let mut anchor = None;
    let mut count = 0u64;
    while let Some(row) = rows.next().map_err(read)? {
        let record = match from_row(row) {
            Ok(record) => record,
            Err(e) => {
                let seq = row.get::<_, i64>(0).unwrap_or(head.seq + 1);
                return Err(VerifyError::Broken {
                    seq,
                    why: format!("unreadable row ({e})"),
                });
            }
        };
        let broken = |why: String| VerifyError::Broken {
            seq: record.seq,
            why,
        };
        if count == 0 && record.seq != 1 {
            match super::archive::anchor_for(conn, &record).map_err(read)? {
                // A pruned log: the chain starts from the anchor its `prune`
                // record names (that record is checked further down the walk).
                Ok(start) => {
                    head = start.clone();
                    anchor = Some(start);
                }
                Err(Some(pruned)) => {
                    return Err(VerifyError::Broken {
                        seq: pruned + 1,
                        why: format!(
                            "missing: the log was pruned up to record {pruned}, and the first record present is {}",
                            record.seq
                        ),
                    });
                }
                Err(None) => {}
            }
        }
        if record.seq != head.seq + 1 {
            return Err(VerifyError::Broken {
                seq: head.seq + 1,
                why: format!("missing; the next record present is {}", record.seq),
            });
        }
        if record.prev_hash != head.hash {
            return Err(broken(
                "does not follow its predecessor (prev_hash differs): a record before it was deleted, inserted or reordered".into(),
            ));
        }
        if record_hash(&record.prev_hash, &record) != record.hash {
            return Err(broken(
                "contents do not match its hash: the record was edited".into(),
            ));
        }
        head = Head {
            seq: record.seq,
            hash: record.hash,
        };
        count += 1;
    }
    Ok(VerifyReport {
        count,
        head,
        anchor,
    })
}

/// Checks that the record at `anchor.seq` still exists with `anchor.hash`:
/// what catches a cut tail or a replaced log, which the chain alone cannot.
pub fn check_anchor(path: &Path, anchor: &Head) -> Result<(), VerifyError> {
    let conn = open_read_only(path)?;
    let found: Option<String> = conn
        .query_row(
            "SELECT hash FROM records WHERE seq = ?1",
            [anchor.seq],
            |row| row.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })
        .map_err(|e| VerifyError::Audit(AuditError::Read(e)))?;
    match found {
        None => Err(VerifyError::Broken {
            seq: anchor.seq,
            why: "the anchored record is missing: the log was cut after it".into(),
        }),
        Some(hash) if hash != anchor.hash => Err(VerifyError::Broken {
            seq: anchor.seq,
            why: "the anchored record has another hash: the log was replaced".into(),
        }),
        Some(_) => Ok(()),
    }
}

/// The last record's position and hash, for anchoring elsewhere.
pub fn head(path: &Path) -> Result<Head, AuditError> {
    let conn = open_read_only(path)?;
    Ok(Head::read(&conn)?)
}
