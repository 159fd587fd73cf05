//! Restoring a fleet's archive into a PostgreSQL store: each section into
//! its chain, positions and hashes unchanged, in one transaction, so that
//! `audit verify --store` passes on the result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::archive::{FleetArchiveError, OPS_CHAIN};
use super::{BATCH_SQL, PgError, PgTarget, chain_lock_sql, genesis_of};
use crate::audit::DecisionRecord;
use crate::audit::archive::{ArchiveError, Manifest, read_sections};
use crate::audit::chain::{GENESIS, Head};
use tokio_postgres::Transaction;

/// Records inserted per statement.
const RESTORE_BATCH: usize = 500;

/// Restores a fleet's archive into the store: checks it, then copies each
/// section's records unchanged into its chain, in one transaction. A chain
/// must be new (and its section start it) or end exactly where its section
/// starts.
pub async fn restore(file: &Path, target: &PgTarget) -> Result<Vec<Manifest>, FleetArchiveError> {
    let manifests = read_sections(file, |_| Ok(()))?;
    if manifests.iter().any(|m| m.chain.is_none()) {
        return Err(ArchiveError::Discontinuous(
            "a SQLite log's archive restores into a SQLite log (`--audit`)".into(),
        )
        .into());
    }
    let mut client = target.connect().await?;
    let tx = client.transaction().await?;
    let mut heads: HashMap<String, Head> = HashMap::new();
    for m in &manifests {
        let chain = m.chain.as_deref().unwrap_or_default();
        if chain == OPS_CHAIN {
            return Err(PgError::Invalid(format!("`{OPS_CHAIN}` is not restored")).into());
        }
        let locked: bool = tx.query_one(chain_lock_sql(), &[&chain]).await?.get(0);
        if !locked {
            return Err(PgError::ChainInUse(chain.to_owned()).into());
        }
        let head = match heads.get(chain) {
            Some(h) => h.clone(),
            None => {
                let row = tx
                    .query_opt(
                        "SELECT seq, hash FROM audit_chains WHERE chain = $1",
                        &[&chain],
                    )
                    .await?;
                match row {
                    Some(row) => Head {
                        seq: row.get(0),
                        hash: row.get(1),
                    },
                    None => {
                        // A new chain: its genesis is where the section starts.
                        let starts = m.first_seq == 1
                            && (m.first_prev_hash == genesis_of(chain)
                                || m.first_prev_hash == GENESIS);
                        if !starts {
                            return Err(FleetArchiveError::Discontinuous {
                                chain: chain.to_owned(),
                                why: format!(
                                    "the chain is not in the store and the archive starts at record {}, not at its genesis",
                                    m.first_seq
                                ),
                            });
                        }
                        tx.execute(
                            "INSERT INTO audit_chains (chain, genesis, seq, hash)
                             VALUES ($1, $2, 0, $2)",
                            &[&chain, &m.first_prev_hash],
                        )
                        .await?;
                        Head {
                            seq: 0,
                            hash: m.first_prev_hash.clone(),
                        }
                    }
                }
            }
        };
        if head.seq + 1 != m.first_seq || head.hash != m.first_prev_hash {
            return Err(FleetArchiveError::Discontinuous {
                chain: chain.to_owned(),
                why: format!(
                    "the chain ends at record {} and the archive starts at record {}",
                    head.seq, m.first_seq
                ),
            });
        }
        heads.insert(
            chain.to_owned(),
            Head {
                seq: m.last_seq,
                hash: m.last_hash.clone(),
            },
        );
    }
    copy_records(&tx, file.to_owned()).await?;
    tx.commit().await?;
    Ok(manifests)
}

/// Reads the archive again on a thread of its own and inserts its records
/// in batches, each moving its chain's head with the compare-and-set.
async fn copy_records(tx: &Transaction<'_>, file: PathBuf) -> Result<(), FleetArchiveError> {
    type Batch = Result<(String, Vec<DecisionRecord>), ArchiveError>;
    let (send, mut batches) = tokio::sync::mpsc::channel::<Batch>(4);
    let reader = std::thread::spawn(move || {
        let mut batch: Vec<DecisionRecord> = Vec::new();
        let mut chain = String::new();
        let flush = |chain: &str, batch: &mut Vec<DecisionRecord>| {
            if batch.is_empty() {
                return Ok(());
            }
            send.blocking_send(Ok((chain.to_owned(), std::mem::take(batch))))
                .map_err(|_| ArchiveError::Empty)
        };
        let read = read_sections(&file, |r| {
            let this = r.chain.as_deref().unwrap_or_default();
            if this != chain || batch.len() >= RESTORE_BATCH {
                flush(&chain, &mut batch)?;
                this.clone_into(&mut chain);
            }
            let mut r = r.clone();
            r.chain = None;
            batch.push(r);
            Ok(())
        })
        .and_then(|_| flush(&chain, &mut batch));
        if let Err(e) = read {
            let _ = send.blocking_send(Err(e));
        }
    });
    let mut result = Ok(());
    while let Some(batch) = batches.recv().await {
        let step = async {
            let (chain, records) = batch?;
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                return Ok(());
            };
            let json = serde_json::to_string(&records)
                .map_err(|e| PgError::Invalid(format!("records not encodable: {e}")))?;
            let n = tx
                .execute(
                    BATCH_SQL,
                    &[
                        &chain,
                        &(first.seq - 1),
                        &first.prev_hash,
                        &last.seq,
                        &last.hash,
                        &json,
                    ],
                )
                .await?;
            if usize::try_from(n).ok() != Some(records.len()) {
                return Err(FleetArchiveError::Discontinuous {
                    chain,
                    why: format!("its head moved before record {}", first.seq),
                });
            }
            Ok(())
        };
        if let Err(e) = step.await {
            result = Err(e);
            break;
        }
    }
    drop(batches);
    let _ = reader.join();
    result
}
