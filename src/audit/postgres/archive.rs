//! Export, prune and restore on a fleet's store, with SQLite's contracts.
//!
//! A fleet has one chain per replica, so an archive has one section per
//! chain: each a header (format, chain, the first record's `prev_hash`),
//! that chain's contiguous range, and its own manifest. `audit verify
//! --archive` checks every section on its own.
//!
//! The manifests and the pruning anchors are records of the operations
//! chain [`OPS_CHAIN`], written by `audit export`, `audit prune` and
//! `serve --retain` (one process at a time, under that chain's lock), so
//! live replicas are never disturbed and checkpoints cover those records
//! like any others. The operations chain itself is never pruned.
//!
//! Invariants:
//! - Records leave the store only through the `clawgate_prune` database
//!   function (provisioned by `deploy/postgres/clawgate.sql`, executable by
//!   the role `clawgate_retention` only), which re-checks in the database
//!   that every record it removes is covered by a recorded manifest whose
//!   last record still has its hash, and that a `prune` record names the
//!   anchor; the `prune` records and the removals commit in one transaction.
//! - A chain keeps at least its last record (the one its head row names).

use std::collections::HashMap;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use futures_util::{StreamExt, pin_mut};
use tokio_postgres::{Client, GenericClient, Transaction};

use super::read::{RECORD_COLUMNS, from_row};
use super::{BATCH_SQL, PgError, PgTarget, chain_lock_sql, genesis_of};
use crate::audit::archive::{
    ArchiveError, ArchiveNote, FORMAT, Header, Manifest, PruneNote, Trailer, file_sha256, io,
    write_line,
};
use crate::audit::chain::{Head, record_hash, seal};
use crate::audit::{DecisionRecord, kind};
use crate::error::Reason;

/// The chain that holds a fleet's archive manifests and pruning anchors.
/// No replica may take this name.
pub const OPS_CHAIN: &str = ":ops";

/// Why a fleet's export, prune or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetArchiveError {
    /// The store refused or could not be reached.
    #[error(transparent)]
    Store(#[from] PgError),
    /// The archive could not be written or read, or is not intact.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Another process holds the operations chain.
    #[error("another clawgate process is exporting or pruning this store now; try again")]
    Busy,
    /// Records before the cut that no recorded archive covers: nothing was
    /// removed.
    #[error(
        "refused: {0} before that time are not covered by an archive recorded in the log; export them first (nothing was pruned)"
    )]
    Unarchived(String),
    /// An archive that does not continue the store's chain.
    #[error("the archive does not continue chain `{chain}`: {why}")]
    Discontinuous {
        /// The chain.
        chain: String,
        /// What differs.
        why: String,
    },
}

impl From<tokio_postgres::Error> for FleetArchiveError {
    fn from(e: tokio_postgres::Error) -> Self {
        FleetArchiveError::Store(e.into())
    }
}

/// The outcome of a fleet's export.
#[derive(Debug, Clone)]
pub struct FleetExported {
    /// One manifest per chain, in the archive's order.
    pub manifests: Vec<Manifest>,
    /// SHA-256 of the file.
    pub sha256: String,
    /// The `archive` records' positions in the operations chain.
    pub recorded: Vec<i64>,
}

/// The outcome of a fleet's prune.
#[derive(Debug, Clone, Default)]
pub struct FleetPruned {
    /// What was removed from each chain, and where its verification starts.
    pub pruned: Vec<PruneNote>,
    /// Chains with old records that no recorded archive covers (kept):
    /// `chain `r1` records 5..9`.
    pub left: Vec<String>,
}

/// Connects and takes the operations chain's lock (held until the client
/// is dropped); creates the chain if new. Returns its head.
async fn open_ops(target: &PgTarget) -> Result<(Client, Head), FleetArchiveError> {
    let client = target.connect().await?;
    let genesis = genesis_of(OPS_CHAIN);
    client
        .execute(
            "INSERT INTO audit_chains (chain, genesis, seq, hash) VALUES ($1, $2, 0, $2)
             ON CONFLICT (chain) DO NOTHING",
            &[&OPS_CHAIN, &genesis],
        )
        .await?;
    let locked: bool = client
        .query_one(chain_lock_sql(), &[&OPS_CHAIN])
        .await?
        .get(0);
    if !locked {
        return Err(FleetArchiveError::Busy);
    }
    let head = ops_head(&client).await?;
    Ok((client, head))
}

async fn ops_head(client: &impl GenericClient) -> Result<Head, FleetArchiveError> {
    let row = client
        .query_one(
            "SELECT seq, hash FROM audit_chains WHERE chain = $1",
            &[&OPS_CHAIN],
        )
        .await?;
    Ok(Head {
        seq: row.get(0),
        hash: row.get(1),
    })
}

/// Seals `records` onto the operations chain after `head` and inserts
/// them with the writers' compare-and-set statement.
async fn append_ops(
    tx: &Transaction<'_>,
    head: &mut Head,
    records: &mut [DecisionRecord],
) -> Result<Vec<i64>, FleetArchiveError> {
    let before = head.clone();
    for record in records.iter_mut() {
        record.chain = None;
        seal(head, record);
    }
    let json = serde_json::to_string(&records)
        .map_err(|e| PgError::Invalid(format!("records not encodable: {e}")))?;
    let n = tx
        .execute(
            BATCH_SQL,
            &[
                &OPS_CHAIN,
                &before.seq,
                &before.hash,
                &head.seq,
                &head.hash,
                &json,
            ],
        )
        .await?;
    if usize::try_from(n).ok() != Some(records.len()) {
        return Err(PgError::Invalid(format!(
            "the head of chain `{OPS_CHAIN}` moved under this process"
        ))
        .into());
    }
    Ok(records.iter().map(|r| r.seq).collect())
}

/// The replicas' chains (every chain but the operations chain).
async fn chains(client: &impl GenericClient) -> Result<Vec<String>, FleetArchiveError> {
    let rows = client
        .query(
            "SELECT chain FROM audit_chains WHERE chain <> $1 ORDER BY chain",
            &[&OPS_CHAIN],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The archive manifests recorded in the operations chain.
async fn recorded_archives(
    client: &impl GenericClient,
) -> Result<Vec<ArchiveNote>, FleetArchiveError> {
    let rows = client
        .query(
            "SELECT detail FROM audit_records WHERE chain = $1 AND kind = $2 ORDER BY seq",
            &[&OPS_CHAIN, &kind::ARCHIVE],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .filter_map(|d| serde_json::from_str::<ArchiveNote>(&d).ok())
        .filter(|n| n.manifest.chain.is_some())
        .collect())
}

/// Writes every chain's records from the first at or after `since` to the
/// last before `until` into `file` (one section per chain), then records
/// each section's manifest in the operations chain. With `after_archived`,
/// each chain starts after the last record a recorded archive holds (what
/// retention does: nothing is archived twice). `file` must not exist.
pub async fn export(
    target: &PgTarget,
    since: Option<&str>,
    until: &str,
    file: &Path,
    after_archived: bool,
) -> Result<FleetExported, FleetArchiveError> {
    let (mut client, mut head) = open_ops(target).await?;
    let mut after: HashMap<String, i64> = HashMap::new();
    if after_archived {
        for note in recorded_archives(&client).await? {
            if let Some(chain) = note.manifest.chain {
                let e = after.entry(chain).or_insert(0);
                *e = (*e).max(note.manifest.last_seq);
            }
        }
    }
    let mut ranges = Vec::new();
    for chain in chains(&client).await? {
        let from = after.get(&chain).copied().unwrap_or(0);
        let row = client
            .query_one(
                "SELECT (SELECT MIN(seq) FROM audit_records
                         WHERE chain = $1 AND ts >= $2 AND seq > $4),
                        (SELECT MAX(seq) FROM audit_records WHERE chain = $1 AND ts < $3)",
                &[&chain, &since.unwrap_or(""), &until, &from],
            )
            .await?;
        if let (Some(first), Some(last)) = (row.get::<_, Option<i64>>(0), row.get(1))
            && first <= last
        {
            ranges.push((chain, first, last));
        }
    }
    if ranges.is_empty() {
        return Err(ArchiveError::Empty.into());
    }
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(io(file))?;
    let mut gz = GzEncoder::new(std::io::BufWriter::new(out), Compression::default());
    let mut manifests = Vec::new();
    for (chain, first, last) in &ranges {
        manifests.push(write_section(&client, &mut gz, file, chain, *first, *last).await?);
    }
    let out = gz.finish().map_err(io(file))?;
    let out = out.into_inner().map_err(|e| io(file)(e.into_error()))?;
    out.sync_all().map_err(io(file))?;
    drop(out);
    let sha256 = file_sha256(file)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut notes: Vec<DecisionRecord> = manifests
        .iter()
        .map(|m| {
            let note = ArchiveNote {
                manifest: m.clone(),
                sha256: sha256.clone(),
                file: name.clone(),
            };
            let mut record = DecisionRecord::new(kind::ARCHIVE, &uuid::Uuid::now_v7().to_string());
            record.reason = Reason::LogArchived.code().to_owned();
            record.detail = Some(serde_json::to_string(&note).unwrap_or_default());
            record
        })
        .collect();
    let tx = client.transaction().await?;
    let recorded = append_ops(&tx, &mut head, &mut notes).await?;
    tx.commit().await?;
    Ok(FleetExported {
        manifests,
        sha256,
        recorded,
    })
}

/// One chain's section: its header, its records (each checked against its
/// predecessor and its hash on the way out), its manifest.
async fn write_section(
    client: &Client,
    out: &mut impl std::io::Write,
    file: &Path,
    chain: &str,
    first: i64,
    last: i64,
) -> Result<Manifest, FleetArchiveError> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM audit_records
         WHERE chain = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq"
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&chain, &first, &last];
    let rows = client.query_raw(sql.as_str(), params).await?;
    pin_mut!(rows);
    let mut manifest: Option<Manifest> = None;
    while let Some(row) = rows.next().await {
        let mut record = from_row(&row?)?;
        record.chain = None;
        let broken = |why: &str| {
            PgError::Invalid(format!(
                "chain `{chain}` record {} {why}: run `audit verify --store` first",
                record.seq
            ))
        };
        if let Some(m) = &manifest
            && (record.seq != m.last_seq + 1 || record.prev_hash != m.last_hash)
        {
            return Err(broken("does not follow its predecessor").into());
        }
        if record_hash(&record.prev_hash, &record) != record.hash {
            return Err(broken("does not match its hash").into());
        }
        if manifest.is_none() {
            write_line(
                out,
                &Header {
                    format: FORMAT.to_owned(),
                    chain: Some(chain.to_owned()),
                    first_prev_hash: record.prev_hash.clone(),
                },
                file,
            )?;
            manifest = Some(Manifest {
                format: FORMAT.to_owned(),
                chain: Some(chain.to_owned()),
                first_seq: record.seq,
                last_seq: record.seq,
                count: 0,
                first_prev_hash: record.prev_hash.clone(),
                last_hash: String::new(),
                first_ts: record.ts.clone(),
                last_ts: String::new(),
            });
        }
        let Some(m) = manifest.as_mut() else { continue };
        m.count += 1;
        m.last_seq = record.seq;
        m.last_hash.clone_from(&record.hash);
        m.last_ts.clone_from(&record.ts);
        write_line(out, &record, file)?;
    }
    let manifest = manifest.ok_or(ArchiveError::Empty)?;
    if manifest.last_seq != last {
        return Err(PgError::Invalid(format!(
            "chain `{chain}` has no record {last} though it had a moment ago"
        ))
        .into());
    }
    write_line(
        out,
        &Trailer {
            manifest: manifest.clone(),
        },
        file,
    )?;
    Ok(manifest)
}

/// Removes, from each chain, the records before `before` that archives
/// recorded in the operations chain cover, contiguously from its first
/// record, and records the pruning: one `prune` record per chain naming
/// its anchor, in the same transaction as the removals (done by the
/// database's `clawgate_prune`, which checks the coverage again).
///
/// Refused with [`FleetArchiveError::Unarchived`], nothing removed, when
/// records before `before` exist but none of them is covered. Chains whose
/// old records are only partly covered are pruned as far as covered, and
/// the rest is listed in [`FleetPruned::left`].
pub async fn prune(target: &PgTarget, before: &str) -> Result<FleetPruned, FleetArchiveError> {
    let (mut client, mut head) = open_ops(target).await?;
    let notes = recorded_archives(&client).await?;
    let mut plans: Vec<PruneNote> = Vec::new();
    let mut left = Vec::new();
    for chain in chains(&client).await? {
        let row = client
            .query_one(
                "SELECT MIN(seq), MAX(seq), MAX(seq) FILTER (WHERE ts < $2)
                 FROM audit_records WHERE chain = $1",
                &[&chain, &before],
            )
            .await?;
        let (Some(first), Some(last), Some(old)) = (
            row.get::<_, Option<i64>>(0),
            row.get::<_, Option<i64>>(1),
            row.get::<_, Option<i64>>(2),
        ) else {
            continue;
        };
        let (covered, used) = covered_from(&client, &chain, first, &notes).await?;
        if old > covered {
            left.push(format!(
                "chain `{chain}` records {}..{old}",
                (covered + 1).max(first)
            ));
        }
        // The chain keeps its last record: the one its head row names.
        let upto = covered.min(old).min(last - 1);
        if upto < first {
            continue;
        }
        let anchor: String = client
            .query_one(
                "SELECT hash FROM audit_records WHERE chain = $1 AND seq = $2",
                &[&chain, &upto],
            )
            .await?
            .get(0);
        plans.push(PruneNote {
            chain: Some(chain),
            anchor_seq: upto,
            anchor_hash: anchor,
            removed: u64::try_from(upto - first + 1).unwrap_or(0),
            archives: used,
        });
    }
    if plans.is_empty() {
        if left.is_empty() {
            return Ok(FleetPruned::default());
        }
        return Err(FleetArchiveError::Unarchived(left.join(", ")));
    }
    let mut records: Vec<DecisionRecord> = plans
        .iter()
        .map(|note| {
            let mut record = DecisionRecord::new(kind::PRUNE, &uuid::Uuid::now_v7().to_string());
            record.reason = Reason::LogPruned.code().to_owned();
            record.detail = Some(serde_json::to_string(note).unwrap_or_default());
            record
        })
        .collect();
    let tx = client.transaction().await?;
    append_ops(&tx, &mut head, &mut records).await?;
    for note in &plans {
        let chain = note.chain.as_deref().unwrap_or_default();
        let removed: i64 = tx
            .query_one("SELECT clawgate_prune($1, $2)", &[&chain, &note.anchor_seq])
            .await?
            .get(0);
        if u64::try_from(removed).ok() != Some(note.removed) {
            return Err(PgError::Invalid(format!(
                "chain `{chain}`: {removed} records removed where {} were expected; nothing was pruned",
                note.removed
            ))
            .into());
        }
    }
    tx.commit().await?;
    Ok(FleetPruned {
        pruned: plans,
        left,
    })
}

/// How far from `first` the recorded archives cover `chain` (`first - 1`
/// when not at all), and the digests of the archives used. A manifest
/// counts only if the chain's record at its last position still has its
/// last hash.
async fn covered_from(
    client: &Client,
    chain: &str,
    first: i64,
    notes: &[ArchiveNote],
) -> Result<(i64, Vec<String>), FleetArchiveError> {
    let mut covered = first - 1;
    let mut used: Vec<String> = Vec::new();
    loop {
        let mut best: Option<&ArchiveNote> = None;
        for n in notes.iter().filter(|n| {
            n.manifest.chain.as_deref() == Some(chain)
                && n.manifest.first_seq <= covered + 1
                && n.manifest.last_seq > covered
        }) {
            let hash: Option<String> = client
                .query_opt(
                    "SELECT hash FROM audit_records WHERE chain = $1 AND seq = $2",
                    &[&chain, &n.manifest.last_seq],
                )
                .await?
                .map(|r| r.get(0));
            if hash.as_deref() == Some(n.manifest.last_hash.as_str())
                && best.is_none_or(|b| b.manifest.last_seq < n.manifest.last_seq)
            {
                best = Some(n);
            }
        }
        match best {
            Some(n) => {
                covered = n.manifest.last_seq;
                used.push(n.sha256.clone());
            }
            None => return Ok((covered, used)),
        }
    }
}
