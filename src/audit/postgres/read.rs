//! Reading the fleet's log (the same filters and output as SQLite's), and
//! moving a SQLite log over with its chain intact.

use std::path::Path;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{BATCH_SQL, PgError, PgTarget, chain_lock_sql};
use crate::audit::chain::{GENESIS, Head};
use crate::audit::{DecisionRecord, Filter};

pub(super) const RECORD_COLUMNS: &str = "seq, ts, kind, request_id, mode, agent, cert_fp, run_id,
    client_addr, method, host, path, scope, rule, decision, reason, would_deny,
    credential_kind, credential_ref, policy_digest, status, bytes_up, bytes_down,
    duration_ms, detail, prev_hash, hash, action, exception, mcp, chain, trace_id";

pub(super) fn from_row(row: &Row) -> Result<DecisionRecord, tokio_postgres::Error> {
    Ok(DecisionRecord {
        seq: row.try_get(0)?,
        ts: row.try_get(1)?,
        kind: row.try_get(2)?,
        request_id: row.try_get(3)?,
        mode: row.try_get(4)?,
        agent: row.try_get(5)?,
        cert_fp: row.try_get(6)?,
        run_id: row.try_get(7)?,
        client_addr: row.try_get(8)?,
        method: row.try_get(9)?,
        host: row.try_get(10)?,
        path: row.try_get(11)?,
        scope: row.try_get(12)?,
        rule: row.try_get(13)?,
        decision: row.try_get(14)?,
        reason: row.try_get(15)?,
        would_deny: row.try_get(16)?,
        credential_kind: row.try_get(17)?,
        credential_ref: row.try_get(18)?,
        policy_digest: row.try_get(19)?,
        status: row.try_get(20)?,
        bytes_up: row.try_get(21)?,
        bytes_down: row.try_get(22)?,
        duration_ms: row.try_get(23)?,
        detail: row.try_get(24)?,
        prev_hash: row.try_get(25)?,
        hash: row.try_get(26)?,
        action: row.try_get(27)?,
        exception: row.try_get(28)?,
        mcp: row
            .try_get::<_, Option<String>>(29)?
            .and_then(|text| serde_json::from_str(&text).ok()),
        chain: Some(row.try_get(30)?),
        trace_id: row.try_get(31)?,
    })
}

/// The records of every chain that pass `filter`, oldest first (by time,
/// then chain and position).
pub async fn query(target: &PgTarget, filter: &Filter) -> Result<Vec<DecisionRecord>, PgError> {
    let client = target.connect().await?;
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut text = |column: &str, value: &Option<String>, op: &str| {
        if let Some(v) = value {
            args.push(Box::new(v.clone()));
            clauses.push(format!("{column} {op} ${}", args.len()));
        }
    };
    text("agent", &filter.agent, "=");
    text("scope", &filter.scope, "=");
    text("decision", &filter.decision, "=");
    text("reason", &filter.reason, "=");
    text("host", &filter.host, "=");
    text("trace_id", &filter.trace_id, "=");
    text("request_id", &filter.request_id, "=");
    text("ts", &filter.since, ">=");
    text("ts", &filter.until, "<");
    if filter.would_deny {
        clauses.push("would_deny IS NOT NULL".into());
    }
    if !filter.kinds.is_empty() {
        args.push(Box::new(filter.kinds.clone()));
        clauses.push(format!("kind = ANY(${})", args.len()));
    }
    if let Some([bare, v4, v6]) = filter.source_forms() {
        let n = args.len();
        args.push(Box::new(bare));
        args.push(Box::new(v4));
        args.push(Box::new(v6));
        clauses.push(format!(
            "(client_addr = ${} OR starts_with(client_addr, ${}) OR starts_with(client_addr, ${}))",
            n + 1,
            n + 2,
            n + 3
        ));
    }
    let mut sql = format!("SELECT {RECORD_COLUMNS} FROM audit_records");
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(" ORDER BY ts DESC, chain DESC, seq DESC");
    if let Some(limit) = filter.limit {
        args.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" LIMIT ${}", args.len()));
    }
    let params: Vec<&(dyn ToSql + Sync)> =
        args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
    let rows = client.query(sql.as_str(), &params).await?;
    let mut records = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    records.reverse();
    Ok(records)
}

/// The time from which every pruned chain is complete: the latest of the
/// pruned chains' oldest records (a window starting before it misses
/// pruned records of some chain); `None` when no chain was pruned.
pub async fn retained_from(target: &PgTarget) -> Result<Option<String>, PgError> {
    let client = target.connect().await?;
    let rows = client
        .query(
            "SELECT detail FROM audit_records WHERE chain = $1 AND kind = $2",
            &[&super::OPS_CHAIN, &crate::audit::kind::PRUNE],
        )
        .await?;
    let chains: Vec<String> = rows
        .iter()
        .filter_map(|row| row.get::<_, Option<String>>(0))
        .filter_map(|d| serde_json::from_str::<crate::audit::archive::PruneNote>(&d).ok())
        .filter_map(|note| note.chain)
        .collect();
    if chains.is_empty() {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT max(first) FROM (SELECT min(ts) AS first FROM audit_records
             WHERE chain = ANY($1) GROUP BY chain) AS firsts",
            &[&chains],
        )
        .await?;
    Ok(row.get::<_, Option<String>>(0))
}

/// Records copied per statement by [`migrate`].
const MIGRATE_BATCH: usize = 500;

/// Copies the SQLite log at `path` into PostgreSQL as chain `chain`, with
/// every record's position and hashes unchanged, so that `audit verify`
/// passes on both. The SQLite log must verify first; the chain must be new.
pub async fn migrate(path: &Path, target: &PgTarget, chain: &str) -> Result<u64, PgError> {
    crate::audit::verify(path)
        .map_err(|e| PgError::Invalid(format!("the SQLite log does not verify: {e}")))?;
    let records = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            crate::audit::query(
                &path,
                &Filter {
                    limit: None,
                    ..Filter::default()
                },
            )
        })
        .await
        .map_err(|e| PgError::Invalid(format!("reading the SQLite log failed: {e}")))?
        .map_err(|e| PgError::Invalid(e.to_string()))?
    };
    let mut client = target.connect().await?;
    let created = client
        .execute(
            "INSERT INTO audit_chains (chain, genesis, seq, hash) VALUES ($1, $2, 0, $2)
             ON CONFLICT (chain) DO NOTHING",
            &[&chain, &GENESIS],
        )
        .await?;
    if created == 0 {
        return Err(PgError::Invalid(format!(
            "chain `{chain}` already exists; migrate into a new chain name"
        )));
    }
    let locked: bool = client.query_one(chain_lock_sql(), &[&chain]).await?.get(0);
    if !locked {
        return Err(PgError::ChainInUse(chain.to_owned()));
    }
    let insert = client.prepare(BATCH_SQL).await?;
    let mut head = Head {
        seq: 0,
        hash: GENESIS.to_owned(),
    };
    let mut copied = 0u64;
    for batch in records.chunks(MIGRATE_BATCH) {
        let Some(last) = batch.last() else { continue };
        let json = serde_json::to_string(batch)
            .map_err(|e| PgError::Invalid(format!("records not encodable: {e}")))?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                &insert,
                &[&chain, &head.seq, &head.hash, &last.seq, &last.hash, &json],
            )
            .await?;
        if usize::try_from(n).ok() != Some(batch.len()) {
            return Err(PgError::Invalid(format!(
                "chain `{chain}` moved while it was being migrated"
            )));
        }
        tx.commit().await?;
        copied += n;
        head = Head {
            seq: last.seq,
            hash: last.hash.clone(),
        };
    }
    Ok(copied)
}

/// Marks a chain closed (a replica retired for good): its writer is
/// refused from now on, and once a checkpoint has seen it closed, a record
/// added to it fails `audit verify`.
pub async fn close_chain(target: &PgTarget, chain: &str) -> Result<(), PgError> {
    let client = target.connect().await?;
    let locked: bool = client.query_one(chain_lock_sql(), &[&chain]).await?.get(0);
    if !locked {
        return Err(PgError::ChainInUse(chain.to_owned()));
    }
    let n = client
        .execute(
            "UPDATE audit_chains SET closed = true, updated = now() WHERE chain = $1",
            &[&chain],
        )
        .await?;
    if n == 0 {
        return Err(PgError::Invalid(format!("there is no chain `{chain}`")));
    }
    Ok(())
}
