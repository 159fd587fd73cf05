//! Export, prune and restore: retention that keeps the chain verifiable.
//!
//! An archive is one gzip stream of JSON lines: a header naming the format
//! and the `prev_hash` of its first record, the records of one contiguous
//! range in chain order, and a closing manifest (first and last position,
//! count, last hash). [`verify_archive`] checks it on its own.
//!
//! Exporting appends an `archive` record to the log carrying the manifest
//! and the SHA-256 of the archive file. Pruning removes only records that
//! such a recorded manifest covers, and appends a `prune` record naming the
//! anchor (the last removed record's position and hash); verification of
//! the pruned log starts from that anchor, which the chain itself protects.
//!
//! Invariants: nothing unarchived is removed; the `prune` record and the
//! removal commit in one transaction; an archive restores into a log whose
//! head is the archive's starting point (a fresh log for the first one).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::chain::{COLUMNS, Format, GENESIS, Head, from_row, hash_matches, seal};
use super::{DecisionRecord, kind};
use crate::error::Reason;

/// The header line's format name.
pub const FORMAT: &str = "clawgate-archive-v1";

/// What an archive holds, recorded in the log when it is exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The chain the records belong to (a PostgreSQL replica's), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// The position of the first record.
    pub first_seq: i64,
    /// The position of the last record.
    pub last_seq: i64,
    /// How many records.
    pub count: u64,
    /// The first record's `prev_hash`: where the range hangs on the chain.
    pub first_prev_hash: String,
    /// The last record's hash.
    pub last_hash: String,
    /// The first and last record's times.
    pub first_ts: String,
    /// See `first_ts`.
    pub last_ts: String,
}

/// The `archive` record's `detail`: the manifest and the file's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveNote {
    /// The archive's manifest.
    pub manifest: Manifest,
    /// SHA-256 of the archive file as written.
    pub sha256: String,
    /// The file's name (not its directory).
    pub file: String,
}

/// The `prune` record's `detail`: where verification starts now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneNote {
    /// The chain pruned, on a fleet's store (absent on SQLite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// The last removed record's position.
    pub anchor_seq: i64,
    /// The last removed record's hash.
    pub anchor_hash: String,
    /// How many records were removed.
    pub removed: u64,
    /// The digests of the archives that cover them.
    pub archives: Vec<String>,
}

/// The first line of an archive section.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) chain: Option<String>,
    pub(crate) first_prev_hash: String,
}

/// The last line of an archive section.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Trailer {
    pub(crate) manifest: Manifest,
}

/// Why an export, prune, restore or archive check failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The log could not be read or written.
    #[error("decision log: {0}")]
    Log(#[from] rusqlite::Error),
    /// The archive file could not be read or written.
    #[error("archive `{path}`: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// Nothing in the range.
    #[error("no records in the range")]
    Empty,
    /// The archive is not intact.
    #[error("archive broken at line {line}: {why}")]
    Broken {
        /// The line (1 is the header).
        line: u64,
        /// What is wrong.
        why: String,
    },
    /// Records before the cut that no recorded archive covers: nothing was
    /// removed.
    #[error(
        "refused: {0} before that time are not covered by an archive recorded in the log; export them first (nothing was pruned)"
    )]
    Unarchived(String),
    /// A restore target that the archive does not continue.
    #[error("the archive does not continue this log: {0}")]
    Discontinuous(String),
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The outcome of an export.
#[derive(Debug, Clone)]
pub struct Exported {
    /// What the archive holds.
    pub manifest: Manifest,
    /// SHA-256 of the file.
    pub sha256: String,
    /// The `archive` record's position in the log.
    pub recorded_seq: i64,
}

/// Writes every record from the first at or after `since` (the log's first
/// when `None`) to the last before `until` into `file`, then appends the
/// `archive` record carrying its manifest. `file` must not exist.
pub fn export(
    db: &Path,
    since: Option<&str>,
    until: &str,
    file: &Path,
) -> Result<Exported, ArchiveError> {
    let mut conn = open(db)?;
    let first = super::timeline::first_at_or_after(&conn, since.unwrap_or(""))?;
    let last = super::timeline::last_before(&conn, until)?;
    let (Some(first), Some(last)) = (first, last) else {
        return Err(ArchiveError::Empty);
    };
    if first > last {
        return Err(ArchiveError::Empty);
    }
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(io(file))?;
    let mut gz = GzEncoder::new(std::io::BufWriter::new(out), Compression::default());
    let mut manifest: Option<Manifest> = None;
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM records WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq"
        ))?;
        let mut rows = stmt.query([first, last])?;
        while let Some(row) = rows.next()? {
            let record = from_row(row)?;
            let m = manifest.get_or_insert_with(|| Manifest {
                format: FORMAT.to_owned(),
                chain: None,
                first_seq: record.seq,
                last_seq: record.seq,
                count: 0,
                first_prev_hash: record.prev_hash.clone(),
                last_hash: String::new(),
                first_ts: record.ts.clone(),
                last_ts: String::new(),
            });
            if m.count == 0 {
                write_line(
                    &mut gz,
                    &Header {
                        format: FORMAT.to_owned(),
                        chain: None,
                        first_prev_hash: record.prev_hash.clone(),
                    },
                    file,
                )?;
            }
            m.count += 1;
            m.last_seq = record.seq;
            m.last_hash.clone_from(&record.hash);
            m.last_ts.clone_from(&record.ts);
            write_line(&mut gz, &record, file)?;
        }
    }
    let manifest = manifest.ok_or(ArchiveError::Empty)?;
    write_line(
        &mut gz,
        &Trailer {
            manifest: manifest.clone(),
        },
        file,
    )?;
    let out = gz.finish().map_err(io(file))?;
    let out = out.into_inner().map_err(|e| io(file)(e.into_error()))?;
    out.sync_all().map_err(io(file))?;
    drop(out);
    let sha256 = file_sha256(file)?;
    let note = ArchiveNote {
        manifest: manifest.clone(),
        sha256: sha256.clone(),
        file: file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let mut record = DecisionRecord::new(kind::ARCHIVE, &uuid::Uuid::now_v7().to_string());
    record.reason = Reason::LogArchived.code().to_owned();
    record.detail = Some(serde_json::to_string(&note).unwrap_or_default());
    let recorded_seq = append_in(&mut conn, record, |_| Ok(()))?;
    Ok(Exported {
        manifest,
        sha256,
        recorded_seq,
    })
}

pub(crate) fn write_line<T: Serialize>(
    out: &mut impl Write,
    value: &T,
    file: &Path,
) -> Result<(), ArchiveError> {
    serde_json::to_writer(&mut *out, value)
        .map_err(|e| io(file)(std::io::Error::other(e.to_string())))?;
    out.write_all(b"\n").map_err(io(file))
}

/// SHA-256 of a file's bytes, hex.
pub fn file_sha256(file: &Path) -> Result<String, ArchiveError> {
    let mut f = std::fs::File::open(file).map_err(io(file))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(io(file))?;
    Ok(hex::encode(hasher.finalize()))
}

fn open(db: &Path) -> Result<Connection, ArchiveError> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Appends `record` at the head in one write transaction, after `then`
/// ran in that same transaction (so both commit or neither).
fn append_in(
    conn: &mut Connection,
    mut record: DecisionRecord,
    then: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> Result<i64, ArchiveError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut head = Head::read(&tx)?;
    if super::timeline::is_time_ordered(&tx)? {
        let mut floor = super::timeline::last_ts(&tx)?;
        super::timeline::order(&tx, &mut floor, &mut record)?;
    }
    seal(&mut head, &mut record);
    super::sqlite::insert_sealed(&tx, &record)?;
    then(&tx)?;
    tx.commit()?;
    Ok(record.seq)
}

/// Reads and checks an archive on its own: the header, every record's hash
/// and its link to the one before (the first to the header's
/// `first_prev_hash`), contiguous positions, and the closing manifest.
/// `each` sees every record in order. The archive must hold one section
/// (a SQLite log's); see [`read_sections`] for a fleet's.
pub fn read_archive(
    file: &Path,
    each: impl FnMut(&DecisionRecord) -> Result<(), ArchiveError>,
) -> Result<Manifest, ArchiveError> {
    let mut manifests = read_sections(file, each)?;
    match (manifests.pop(), manifests.is_empty()) {
        (Some(m), true) if m.chain.is_none() => Ok(m),
        _ => Err(ArchiveError::Discontinuous(
            "the archive holds a fleet's chains: restore it into a PostgreSQL store (`--store`)"
                .into(),
        )),
    }
}

/// Reads and checks an archive of one or more sections (a fleet's archive
/// holds one per chain, each a header, its records and its manifest), as
/// [`read_archive`] checks one. `each` sees every record, its `chain` set
/// to its section's. Returns the sections' manifests in order.
pub fn read_sections(
    file: &Path,
    mut each: impl FnMut(&DecisionRecord) -> Result<(), ArchiveError>,
) -> Result<Vec<Manifest>, ArchiveError> {
    let f = std::fs::File::open(file).map_err(io(file))?;
    let reader = BufReader::new(GzDecoder::new(f));
    let mut lines = reader.lines();
    let mut manifests = Vec::new();
    let mut line_no = 0u64;
    while let Some(line) = lines.next() {
        line_no += 1;
        let header: Header =
            serde_json::from_str(&line.map_err(io(file))?).map_err(|e| ArchiveError::Broken {
                line: line_no,
                why: if manifests.is_empty() {
                    format!("not a header: {e}")
                } else {
                    format!("lines after the manifest, not a header: {e}")
                },
            })?;
        if header.format != FORMAT {
            return Err(ArchiveError::Broken {
                line: line_no,
                why: format!("unknown format `{}`", header.format),
            });
        }
        manifests.push(read_section(
            file,
            &mut lines,
            &header,
            &mut line_no,
            &mut each,
        )?);
    }
    if manifests.is_empty() {
        return Err(ArchiveError::Broken {
            line: 1,
            why: "empty".into(),
        });
    }
    Ok(manifests)
}

/// One section after its header: records up to and including the manifest.
fn read_section(
    file: &Path,
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    header: &Header,
    line_no: &mut u64,
    each: &mut impl FnMut(&DecisionRecord) -> Result<(), ArchiveError>,
) -> Result<Manifest, ArchiveError> {
    let broken = |line: u64, why: String| ArchiveError::Broken { line, why };
    let mut prev = header.first_prev_hash.clone();
    let mut last_seq: Option<i64> = None;
    let mut first: Option<(i64, String)> = None;
    let mut last_ts = String::new();
    let mut format = Format::V2;
    // `count`: the records before this line.
    for (count, line) in (0u64..).zip(lines.by_ref()) {
        *line_no += 1;
        let line_no = *line_no;
        let line = line.map_err(io(file))?;
        if let Ok(trailer) = serde_json::from_str::<Trailer>(&line) {
            let m = trailer.manifest;
            let (first_seq, first_ts) =
                first.ok_or_else(|| broken(line_no, "no records".into()))?;
            let want = Manifest {
                format: FORMAT.to_owned(),
                chain: header.chain.clone(),
                first_seq,
                last_seq: last_seq.unwrap_or(0),
                count,
                first_prev_hash: header.first_prev_hash.clone(),
                last_hash: prev.clone(),
                first_ts,
                last_ts: last_ts.clone(),
            };
            if m != want {
                return Err(broken(
                    line_no,
                    "the manifest does not match the records".into(),
                ));
            }
            return Ok(m);
        }
        let mut record: DecisionRecord = serde_json::from_str(&line)
            .map_err(|e| broken(line_no, format!("not a record: {e}")))?;
        if let Some(seq) = last_seq
            && record.seq != seq + 1
        {
            return Err(broken(
                line_no,
                format!("record {} follows record {seq}", record.seq),
            ));
        }
        if record.prev_hash != prev {
            return Err(broken(
                line_no,
                format!("record {} does not follow its predecessor", record.seq),
            ));
        }
        if !hash_matches(&record, &mut format) {
            return Err(broken(
                line_no,
                format!("record {} does not match its hash", record.seq),
            ));
        }
        record.chain.clone_from(&header.chain);
        each(&record)?;
        first.get_or_insert_with(|| (record.seq, record.ts.clone()));
        last_seq = Some(record.seq);
        prev.clone_from(&record.hash);
        last_ts.clone_from(&record.ts);
    }
    Err(broken(
        *line_no,
        "no manifest: the archive was cut short".into(),
    ))
}

/// Checks an archive on its own; see [`read_archive`].
pub fn verify_archive(file: &Path) -> Result<Manifest, ArchiveError> {
    read_archive(file, |_| Ok(()))
}

/// The outcome of a prune.
#[derive(Debug, Clone)]
pub struct Pruned {
    /// What was removed, and where verification starts.
    pub note: PruneNote,
    /// The `prune` record's position.
    pub recorded_seq: i64,
}

/// Removes the records before `before` that archives recorded in the log
/// cover, from the log's first record on, and records the pruning. Returns
/// `None` when no record is old enough; refuses with
/// [`ArchiveError::Unarchived`], removing nothing, when old records exist
/// and no recorded archive covers the first of them.
pub fn prune(db: &Path, before: &str) -> Result<Option<Pruned>, ArchiveError> {
    let mut conn = open(db)?;
    let Some(first) = first_record(&conn)? else {
        return Ok(None);
    };
    let old = super::timeline::last_before(&conn, before)?;
    let Some(old) = old else { return Ok(None) };
    // The archives the log records, checked against the log itself: a
    // manifest only covers records whose hashes it names.
    let mut notes: Vec<ArchiveNote> = Vec::new();
    {
        let mut stmt = conn.prepare("SELECT detail FROM records WHERE kind = ?1 ORDER BY seq")?;
        let mut rows = stmt.query([kind::ARCHIVE])?;
        while let Some(row) = rows.next()? {
            let detail: Option<String> = row.get(0)?;
            if let Some(note) = detail.and_then(|d| serde_json::from_str::<ArchiveNote>(&d).ok()) {
                notes.push(note);
            }
        }
    }
    let hash_at = |seq: i64| -> rusqlite::Result<Option<String>> {
        conn.query_row("SELECT hash FROM records WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .optional()
    };
    // Covered from the first record on: extend while an archive starts at
    // or before the covered end and its last record is still the log's.
    let mut covered = first.seq - 1;
    let mut used: Vec<String> = Vec::new();
    loop {
        let next = notes
            .iter()
            .filter(|n| n.manifest.first_seq <= covered + 1 && n.manifest.last_seq > covered)
            .filter(|n| {
                hash_at(n.manifest.last_seq).ok().flatten().as_deref()
                    == Some(n.manifest.last_hash.as_str())
            })
            .max_by_key(|n| n.manifest.last_seq);
        match next {
            Some(n) => {
                covered = n.manifest.last_seq;
                used.push(n.sha256.clone());
            }
            None => break,
        }
    }
    let upto = covered.min(old);
    if upto < first.seq {
        return Err(ArchiveError::Unarchived(format!(
            "records {}..{old}",
            first.seq
        )));
    }
    let Some(anchor_hash) = hash_at(upto)? else {
        return Ok(None);
    };
    let note = PruneNote {
        chain: None,
        anchor_seq: upto,
        anchor_hash,
        removed: u64::try_from(upto - first.seq + 1).unwrap_or(0),
        archives: used,
    };
    let mut record = DecisionRecord::new(kind::PRUNE, &uuid::Uuid::now_v7().to_string());
    record.reason = Reason::LogPruned.code().to_owned();
    record.detail = Some(serde_json::to_string(&note).unwrap_or_default());
    let recorded_seq = append_in(&mut conn, record, |tx| {
        tx.execute("DELETE FROM records WHERE seq <= ?1", [upto])
            .map(|_| ())
    })?;
    Ok(Some(Pruned { note, recorded_seq }))
}

fn first_record(conn: &Connection) -> rusqlite::Result<Option<DecisionRecord>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM records ORDER BY seq LIMIT 1"),
        [],
        from_row,
    )
    .optional()
}

/// Where a pruned log's chain starts: the anchor named by the `prune`
/// record whose anchor is the record just before `first`. The `prune`
/// record itself is checked as the chain is walked. When none matches,
/// `Err` holds the highest anchor any `prune` record names, if any.
pub(super) fn anchor_for(
    conn: &Connection,
    first: &DecisionRecord,
) -> rusqlite::Result<Result<Head, Option<i64>>> {
    let mut stmt = conn.prepare("SELECT detail FROM records WHERE kind = ?1 ORDER BY seq")?;
    let mut rows = stmt.query([kind::PRUNE])?;
    let mut highest = None;
    while let Some(row) = rows.next()? {
        let detail: Option<String> = row.get(0)?;
        let Some(note) = detail.and_then(|d| serde_json::from_str::<PruneNote>(&d).ok()) else {
            continue;
        };
        if note.anchor_seq == first.seq - 1 && note.anchor_hash == first.prev_hash {
            return Ok(Ok(Head {
                seq: note.anchor_seq,
                hash: note.anchor_hash,
            }));
        }
        highest = highest.max(Some(note.anchor_seq));
    }
    Ok(Err(highest))
}

/// Restores an archive into the log at `db`: checks the archive, then
/// inserts its records unchanged. The log must be empty (and the archive
/// start the chain) or end exactly where the archive starts.
pub fn restore(file: &Path, db: &Path) -> Result<Manifest, ArchiveError> {
    let manifest = verify_archive(file)?;
    let mut conn = open(db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    super::timeline::prepare(&conn)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let head = Head::read(&tx)?;
    let fresh = head.seq == 0 && head.hash == GENESIS;
    let continues = head.seq + 1 == manifest.first_seq && head.hash == manifest.first_prev_hash;
    if !(continues || fresh && manifest.first_seq == 1 && manifest.first_prev_hash == GENESIS) {
        return Err(ArchiveError::Discontinuous(format!(
            "the log ends at record {} and the archive starts at record {}",
            head.seq, manifest.first_seq
        )));
    }
    read_archive(file, |record| {
        super::sqlite::insert_sealed(&tx, record).map_err(ArchiveError::from)
    })?;
    // The records come as they were sealed, times included: a log whose
    // times they put out of order goes back to its time indexes.
    super::timeline::keep_exact(&tx)?;
    tx.commit()?;
    Ok(manifest)
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
