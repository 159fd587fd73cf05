//! The hash chain: each record's hash covers its own fields (its position
//! included) and its predecessor's hash, so an edited, deleted, inserted or
//! reordered record breaks the chain at that point.
//!
//! This module is the one place that knows how a record is hashed. Records
//! are sealed in format 2 (a compact binary encoding); records of format 1
//! (their JSON, written by earlier versions) still verify, so a log may hold
//! both, and every verifier (SQLite, PostgreSQL, archives) goes through
//! [`hash_matches`].
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
/// Format 1: the record's JSON (serde's field order, absent optional fields
/// left out). Written by versions before format 2; still verified.
const DOMAIN_V1: &[u8] = b"clawgate-audit-v1\n";
/// Format 2: the compact binary encoding of [`encode_v2`]. What `seal` writes.
const DOMAIN_V2: &[u8] = b"clawgate-audit-v2\n";

/// The encodings a record's hash may use. Each has its own domain prefix, so
/// a hash names its format implicitly: a record verifies under exactly the
/// format it was sealed with, and one format's input can never be read as
/// another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// JSON, records written before format 2.
    V1,
    /// The binary encoding, every record sealed now.
    V2,
}

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
        let mut stmt =
            conn.prepare_cached("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")?;
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

/// The hash of `record`'s fields (not its `hash`, `prev_hash` or `chain`)
/// chained to `prev_hash`, in the format records are sealed with now.
pub fn record_hash(prev_hash: &str, record: &DecisionRecord) -> String {
    hash_as(Format::V2, prev_hash, record)
}

/// Whether `record`'s hash matches its fields and its `prev_hash`, in
/// whichever format sealed it. `hint` is the format to try first (the last
/// record's) and is updated to the one that matched, so a log of one format
/// costs one hash a record to verify.
pub(crate) fn hash_matches(record: &DecisionRecord, hint: &mut Format) -> bool {
    let first = *hint;
    let second = match first {
        Format::V1 => Format::V2,
        Format::V2 => Format::V1,
    };
    for format in [first, second] {
        if hash_as(format, &record.prev_hash, record) == record.hash {
            *hint = format;
            return true;
        }
    }
    false
}

/// The hash of `record` in `format`; its `hash`, `prev_hash` and `chain`
/// fields are never part of it.
fn hash_as(format: Format, prev_hash: &str, record: &DecisionRecord) -> String {
    let mut hasher = Sha256::new();
    match format {
        Format::V1 => {
            hasher.update(DOMAIN_V1);
            hasher.update(prev_hash.as_bytes());
            hasher.update(b"\n");
            let mut body = record.clone();
            body.prev_hash.clear();
            body.hash.clear();
            body.chain = None;
            // Serialising a plain struct of strings and integers cannot
            // fail; an empty body would still chain, and verify would flag it.
            let _ = serde_json::to_writer(&mut hasher, &body);
        }
        Format::V2 => {
            hasher.update(DOMAIN_V2);
            hasher.update(prev_hash.as_bytes());
            hasher.update(b"\n");
            let mut body = Vec::with_capacity(512);
            encode_v2(record, &mut body);
            hasher.update(&body);
        }
    }
    to_hex(&hasher.finalize())
}

/// Lowercase hex, as `hex::encode` writes it, without its per-character
/// iterator (this runs once per record sealed and once per record verified).
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Format 2's canonical encoding of a record's hashed fields.
///
/// Every field present is written as its number (one byte, fixed forever),
/// then its value: a string as its length (u32, little-endian) and its UTF-8
/// bytes; an integer as i64 little-endian; a flag as one byte (0 or 1); the
/// MCP part as its own length (u32) and its fields encoded the same way.
/// Fields go in number order; an absent optional field writes nothing (as in
/// format 1's JSON, so a field added later leaves older records' hashes as
/// they were), while `seq`, `ts`, `kind`, `request_id` and `reason` are
/// always written. Lengths make the encoding injective: no two records
/// encode alike.
fn encode_v2(r: &DecisionRecord, out: &mut Vec<u8>) {
    int(out, 1, Some(r.seq));
    text(out, 2, Some(&r.ts));
    text(out, 3, Some(&r.kind));
    text(out, 4, Some(&r.request_id));
    text(out, 5, r.mode.as_deref());
    text(out, 6, r.agent.as_deref());
    text(out, 7, r.cert_fp.as_deref());
    text(out, 8, r.run_id.as_deref());
    text(out, 9, r.client_addr.as_deref());
    text(out, 10, r.method.as_deref());
    text(out, 11, r.host.as_deref());
    text(out, 12, r.path.as_deref());
    text(out, 13, r.scope.as_deref());
    text(out, 14, r.rule.as_deref());
    text(out, 15, r.decision.as_deref());
    text(out, 16, Some(&r.reason));
    text(out, 17, r.would_deny.as_deref());
    text(out, 18, r.credential_kind.as_deref());
    text(out, 19, r.credential_ref.as_deref());
    text(out, 20, r.policy_digest.as_deref());
    int(out, 21, r.status);
    int(out, 22, r.bytes_up);
    int(out, 23, r.bytes_down);
    int(out, 24, r.duration_ms);
    text(out, 25, r.detail.as_deref());
    text(out, 26, r.action.as_deref());
    text(out, 27, r.exception.as_deref());
    if let Some(m) = &r.mcp {
        out.push(28);
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        text(out, 1, Some(&m.method));
        text(out, 2, m.name.as_deref());
        text(out, 3, m.id.as_deref());
        text(out, 4, m.session.as_deref());
        text(out, 5, m.arguments_hash.as_deref());
        text(out, 6, m.definition.as_deref());
        if let Some(flag) = m.is_error {
            out.extend_from_slice(&[7, u8::from(flag)]);
        }
        let len = length(out.len() - at - 4);
        out[at..at + 4].copy_from_slice(&len);
    }
    text(out, 29, r.trace_id.as_deref());
}

fn text(out: &mut Vec<u8>, field: u8, value: Option<&str>) {
    if let Some(value) = value {
        out.push(field);
        out.extend_from_slice(&length(value.len()));
        out.extend_from_slice(value.as_bytes());
    }
}

fn int(out: &mut Vec<u8>, field: u8, value: Option<i64>) {
    if let Some(value) = value {
        out.push(field);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A length as four bytes. No field comes near 4 GiB (a record is a row of
/// short texts); one that did would saturate, and its record would still
/// chain, only no longer injectively.
fn length(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes()
}

/// Gives `record` the next position after `head`, chains it (in the current
/// format) and advances `head`.
pub(crate) fn seal(head: &mut Head, record: &mut DecisionRecord) {
    record.seq = head.seq + 1;
    record.prev_hash.clone_from(&head.hash);
    let hash = record_hash(&head.hash, record);
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
    duration_ms, detail, prev_hash, hash, action, exception, mcp, trace_id";

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
        trace_id: row.get(30)?,
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
    let mut format = Format::V2;
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
        if !hash_matches(&record, &mut format) {
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

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
