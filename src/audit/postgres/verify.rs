//! The checkpoint chain over every replica's chain, and the walk that
//! verifies them all (CloudTrail's digest files are the model).
//!
//! A checkpoint hashes the previous checkpoint and the head of every chain
//! (position, hash, closed). One replica at a time makes it, under a
//! transaction-scoped advisory lock; the others skip that round. What the
//! checkpoints add to the chains: a chain cut below a checkpoint, or a
//! closed chain that grew, is caught; `audit head` exports the latest
//! checkpoint as the anchor to keep where clawgate cannot write.

use std::collections::{BTreeMap, HashMap};

use futures_util::{StreamExt, pin_mut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::Transaction;

use super::read::{RECORD_COLUMNS, from_row};
use super::{PgError, PgTarget};
use crate::audit::archive::PruneNote;
use crate::audit::chain::{GENESIS, Head, record_hash};

const DOMAIN: &[u8] = b"clawgate-checkpoint-v1\n";

/// One checkpoint's place in the checkpoint chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its position.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
}

/// The head of one chain as a checkpoint saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ChainHead {
    chain: String,
    seq: i64,
    hash: String,
    closed: bool,
}

/// A fleet's log that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetReport {
    /// Chains walked.
    pub chains: u64,
    /// Records in them.
    pub records: u64,
    /// Checkpoints walked.
    pub checkpoints: u64,
    /// The latest checkpoint, if any.
    pub head: Option<Checkpoint>,
    /// Chains whose walk started from a pruning anchor (their first records
    /// were archived and removed).
    pub pruned: u64,
}

/// Why the fleet's log is not intact.
#[derive(Debug, thiserror::Error)]
pub enum FleetVerifyError {
    /// A record or a checkpoint is wrong.
    #[error("{what} {seq} is broken: {why}")]
    Broken {
        /// `chain `NAME` record` or `checkpoint`.
        what: String,
        /// Its position.
        seq: i64,
        /// What is wrong.
        why: String,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] PgError),
}

fn checkpoint_hash(prev_hash: &str, seq: i64, ts: &str, made_by: &str, heads: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    for part in [prev_hash, &seq.to_string(), ts, made_by, heads] {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

async fn heads(client: &impl tokio_postgres::GenericClient) -> Result<Vec<ChainHead>, PgError> {
    let rows = client
        .query(
            "SELECT c.chain, c.genesis, c.closed, r.seq, r.hash FROM audit_chains c
             LEFT JOIN LATERAL (SELECT seq, hash FROM audit_records
                 WHERE chain = c.chain ORDER BY seq DESC LIMIT 1) r ON true
             ORDER BY c.chain",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ChainHead {
            chain: row.get(0),
            closed: row.get(2),
            seq: row.get::<_, Option<i64>>(3).unwrap_or(0),
            hash: row
                .get::<_, Option<String>>(4)
                .unwrap_or_else(|| row.get(1)),
        })
        .collect())
}

/// Appends a checkpoint over every chain's head, unless another replica
/// is making one right now or nothing moved since the last. Returns the
/// latest checkpoint.
pub async fn checkpoint(target: &PgTarget, made_by: &str) -> Result<Option<Checkpoint>, PgError> {
    let mut client = target.connect().await?;
    let tx = client.transaction().await?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock(hashtext('clawgate-checkpoint'))",
            &[],
        )
        .await?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let now = heads(&tx).await?;
    let heads_json = serde_json::to_string(&now)
        .map_err(|e| PgError::Invalid(format!("heads not encodable: {e}")))?;
    let last = tx
        .query_opt(
            "SELECT seq, hash, heads FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
    let (prev_seq, prev_hash) = match &last {
        Some(row) => {
            let (seq, hash, heads): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
            if heads == heads_json {
                return Ok(Some(Checkpoint { seq, hash }));
            }
            (seq, hash)
        }
        None => (0, GENESIS.to_owned()),
    };
    let seq = prev_seq + 1;
    let ts = crate::audit::now_rfc3339();
    let hash = checkpoint_hash(&prev_hash, seq, &ts, made_by, &heads_json);
    tx.execute(
        "INSERT INTO audit_checkpoints (seq, ts, made_by, heads, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&seq, &ts, &made_by, &heads_json, &prev_hash, &hash],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(Checkpoint { seq, hash }))
}

/// The latest checkpoint, the anchor to keep elsewhere.
pub async fn head(target: &PgTarget) -> Result<Option<Checkpoint>, PgError> {
    let client = target.connect().await?;
    let row = client
        .query_opt(
            "SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.map(|row| Checkpoint {
        seq: row.get(0),
        hash: row.get(1),
    }))
}

/// What the checkpoints say each chain must hold: position → (hash,
/// checkpoint), and the position at which a checkpoint saw it closed.
#[derive(Debug, Default)]
struct Expected {
    at: BTreeMap<i64, (String, i64)>,
    closed_at: Option<(i64, i64)>,
}

/// Walks the checkpoint chain, then every chain, and names the first bad
/// record. `anchors` are checkpoints exported earlier by `audit head`.
pub async fn verify(target: &PgTarget, anchors: &[Head]) -> Result<FleetReport, FleetVerifyError> {
    let mut client = target.connect().await?;
    // One snapshot for the whole walk: replicas keep writing meanwhile.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(PgError::from)?;
    let client = &tx;
    let (expected, checkpoints, latest) = walk_checkpoints(client, anchors).await?;
    let chains = client
        .query(
            "SELECT chain, genesis, seq, hash FROM audit_chains ORDER BY chain",
            &[],
        )
        .await
        .map_err(PgError::from)?;
    let anchors_of = prune_anchors(client).await?;
    let mut records = 0u64;
    let mut pruned = 0u64;
    let mut seen = Vec::new();
    for row in &chains {
        let chain: String = row.get(0);
        let genesis: String = row.get(1);
        let head_row = Head {
            seq: row.get(2),
            hash: row.get(3),
        };
        let empty = Expected::default();
        let want = expected.get(&chain).unwrap_or(&empty);
        let anchors = anchors_of.get(&chain).map_or(&[][..], Vec::as_slice);
        let (count, from_anchor) =
            walk_chain(client, &chain, &genesis, &head_row, want, anchors).await?;
        records += count;
        pruned += u64::from(from_anchor);
        seen.push(chain);
    }
    for (chain, want) in &expected {
        if !seen.contains(chain)
            && let Some((seq, (_, at))) = want.at.iter().next_back()
        {
            return Err(FleetVerifyError::Broken {
                what: format!("chain `{chain}` record"),
                seq: *seq,
                why: format!("the whole chain is gone, though checkpoint {at} holds it"),
            });
        }
    }
    Ok(FleetReport {
        chains: chains.len() as u64,
        records,
        checkpoints,
        head: latest,
        pruned,
    })
}

/// The anchors `prune` records of the operations chain name, per chain.
/// That chain is walked like every other, so these records are checked.
async fn prune_anchors(
    client: &Transaction<'_>,
) -> Result<HashMap<String, Vec<Head>>, FleetVerifyError> {
    let rows = client
        .query(
            "SELECT detail FROM audit_records WHERE chain = $1 AND kind = $2 ORDER BY seq",
            &[&super::OPS_CHAIN, &crate::audit::kind::PRUNE],
        )
        .await
        .map_err(PgError::from)?;
    let mut anchors: HashMap<String, Vec<Head>> = HashMap::new();
    for row in &rows {
        let Some(note) = row
            .get::<_, Option<String>>(0)
            .and_then(|d| serde_json::from_str::<PruneNote>(&d).ok())
        else {
            continue;
        };
        if let Some(chain) = note.chain {
            anchors.entry(chain).or_default().push(Head {
                seq: note.anchor_seq,
                hash: note.anchor_hash,
            });
        }
    }
    Ok(anchors)
}

type Walked = (HashMap<String, Expected>, u64, Option<Checkpoint>);

async fn walk_checkpoints(
    client: &Transaction<'_>,
    anchors: &[Head],
) -> Result<Walked, FleetVerifyError> {
    let rows = client
        .query(
            "SELECT seq, ts, made_by, heads, prev_hash, hash FROM audit_checkpoints ORDER BY seq",
            &[],
        )
        .await
        .map_err(PgError::from)?;
    let mut expected: HashMap<String, Expected> = HashMap::new();
    let mut prev = Head {
        seq: 0,
        hash: GENESIS.to_owned(),
    };
    let broken = |seq: i64, why: String| FleetVerifyError::Broken {
        what: "checkpoint".into(),
        seq,
        why,
    };
    for row in &rows {
        let (seq, ts, made_by, heads, prev_hash, hash): (
            i64,
            String,
            String,
            String,
            String,
            String,
        ) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        if seq != prev.seq + 1 {
            return Err(broken(
                prev.seq + 1,
                format!("missing; the next checkpoint present is {seq}"),
            ));
        }
        if prev_hash != prev.hash {
            return Err(broken(
                seq,
                "does not follow its predecessor: a checkpoint before it was deleted or replaced"
                    .into(),
            ));
        }
        if checkpoint_hash(&prev_hash, seq, &ts, &made_by, &heads) != hash {
            return Err(broken(
                seq,
                "contents do not match its hash: it was edited".into(),
            ));
        }
        let heads: Vec<ChainHead> = serde_json::from_str(&heads)
            .map_err(|_| broken(seq, "its list of chain heads is unreadable".into()))?;
        for h in heads {
            let want = expected.entry(h.chain).or_default();
            if h.seq > 0 {
                want.at.insert(h.seq, (h.hash, seq));
            }
            if h.closed && want.closed_at.is_none() {
                want.closed_at = Some((h.seq, seq));
            }
        }
        prev = Head { seq, hash };
    }
    for anchor in anchors {
        match rows.iter().find(|r| r.get::<_, i64>(0) == anchor.seq) {
            None => {
                return Err(broken(
                    anchor.seq,
                    "the anchored checkpoint is missing: the checkpoint chain was cut".into(),
                ));
            }
            Some(row) if row.get::<_, String>(5) != anchor.hash => {
                return Err(broken(
                    anchor.seq,
                    "the anchored checkpoint has another hash: the checkpoints were replaced"
                        .into(),
                ));
            }
            Some(_) => {}
        }
    }
    let latest = (prev.seq > 0).then_some(Checkpoint {
        seq: prev.seq,
        hash: prev.hash,
    });
    Ok((expected, rows.len() as u64, latest))
}

async fn walk_chain(
    client: &Transaction<'_>,
    chain: &str,
    genesis: &str,
    head_row: &Head,
    want: &Expected,
    anchors: &[Head],
) -> Result<(u64, bool), FleetVerifyError> {
    let broken = |seq: i64, why: String| FleetVerifyError::Broken {
        what: format!("chain `{chain}` record"),
        seq,
        why,
    };
    let sql = format!("SELECT {RECORD_COLUMNS} FROM audit_records WHERE chain = $1 ORDER BY seq");
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&chain];
    let rows = client
        .query_raw(sql.as_str(), params)
        .await
        .map_err(PgError::from)?;
    pin_mut!(rows);
    let mut head = Head {
        seq: 0,
        hash: genesis.to_owned(),
    };
    let mut count = 0u64;
    let mut from_anchor = false;
    while let Some(row) = rows.next().await {
        let record = from_row(&row.map_err(PgError::from)?).map_err(PgError::from)?;
        if count == 0 && record.seq != 1 {
            // A pruned chain starts from the anchor a `prune` record names.
            if let Some(anchor) = anchors
                .iter()
                .find(|a| a.seq + 1 == record.seq && a.hash == record.prev_hash)
            {
                head = anchor.clone();
                from_anchor = true;
            } else if let Some(highest) = anchors.iter().map(|a| a.seq).max() {
                return Err(broken(
                    highest + 1,
                    format!(
                        "missing: the chain was pruned up to record {highest}, and the first record present is {}",
                        record.seq
                    ),
                ));
            }
        }
        if let Some((closed, at)) = want.closed_at
            && record.seq > closed
        {
            return Err(broken(
                record.seq,
                format!(
                    "written after checkpoint {at} saw the chain closed at {closed}: a closed chain grew"
                ),
            ));
        }
        if record.seq != head.seq + 1 {
            return Err(broken(
                head.seq + 1,
                format!("missing; the next record present is {}", record.seq),
            ));
        }
        if record.prev_hash != head.hash {
            return Err(broken(
                record.seq,
                "does not follow its predecessor (prev_hash differs): a record before it was deleted, inserted or reordered".into(),
            ));
        }
        if record_hash(&record.prev_hash, &record) != record.hash {
            return Err(broken(
                record.seq,
                "contents do not match its hash: the record was edited".into(),
            ));
        }
        if let Some((hash, at)) = want.at.get(&record.seq)
            && *hash != record.hash
        {
            return Err(broken(
                record.seq,
                format!("differs from checkpoint {at}: the chain was rewritten"),
            ));
        }
        head = Head {
            seq: record.seq,
            hash: record.hash,
        };
        count += 1;
    }
    if let Some((seq, (_, at))) = want.at.iter().next_back()
        && *seq > head.seq
    {
        return Err(broken(
            head.seq + 1,
            format!(
                "missing: checkpoint {at} saw the chain reach {seq}; the chain was cut below a checkpoint"
            ),
        ));
    }
    if head_row.seq > head.seq {
        return Err(broken(
            head.seq + 1,
            format!(
                "missing: the chain's head row says {}; records were cut from its end",
                head_row.seq
            ),
        ));
    }
    if head_row.seq < head.seq {
        return Err(broken(
            head_row.seq + 1,
            "is past the chain's head row: it was written by something other than the chain's writer".into(),
        ));
    }
    if head_row.hash != head.hash {
        return Err(broken(head.seq, "differs from the chain's head row".into()));
    }
    Ok((count, from_anchor))
}
