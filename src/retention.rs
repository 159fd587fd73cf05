//! Retention on a schedule (`serve --retain 30d --archive-dir DIR`): every
//! interval, the records older than the retention period are exported to a
//! new archive in the directory (its manifest recorded in the log), then
//! pruned. Nothing is pruned that the archive just written, or an earlier
//! one recorded in the log, does not cover.
//!
//! On a fleet's PostgreSQL store the same round covers every chain (see
//! [`crate::audit::postgres::archive`]): one archive a round, with one
//! section per chain holding what no earlier archive holds. Every replica
//! given `--retain` tries; the one that takes the operations chain's lock
//! does the round, the others skip it. Pruning needs the store's role
//! `clawgate_retention`: with the replicas' role, the export still runs and
//! the prune is refused (and logged) by the database.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::audit::archive::{self, ArchiveError};
use crate::audit::postgres::{FleetArchiveError, PgTarget, archive as fleet};

/// What `--retain` and `--archive-dir` ask for.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Records older than this are archived, then removed from the log.
    pub retain: Duration,
    /// Where archives are written.
    pub dir: PathBuf,
    /// How often to look (hourly by default).
    pub every: Duration,
}

/// Runs one round now: export what is older than the period, then prune.
/// Returns the archive written, if any.
pub fn run_once(db: &std::path::Path, r: &Retention) -> Result<Option<PathBuf>, ArchiveError> {
    let (until, file) = next_archive(r)?;
    let written = match archive::export(db, None, &until, &file) {
        Ok(e) => {
            tracing::info!(
                archive = %file.display(),
                records = e.manifest.count,
                first = e.manifest.first_seq,
                last = e.manifest.last_seq,
                "decision log range archived"
            );
            Some(file)
        }
        Err(ArchiveError::Empty) => None,
        Err(e) => return Err(e),
    };
    if let Some(p) = archive::prune(db, &until)? {
        tracing::info!(
            removed = p.note.removed,
            anchor = p.note.anchor_seq,
            "archived records pruned from the decision log"
        );
    }
    Ok(written)
}

/// The cut-off of a round now, and the new archive's path in the
/// directory (created if missing).
fn next_archive(r: &Retention) -> Result<(String, PathBuf), ArchiveError> {
    let cutoff = time::OffsetDateTime::now_utc() - r.retain;
    let until = crate::audit::format_ts(cutoff);
    let name = format!(
        "clawgate-audit-until-{}-{}.jsonl.gz",
        until.replace([':', '.'], ""),
        uuid::Uuid::now_v7().simple()
    );
    std::fs::create_dir_all(&r.dir).map_err(|source| ArchiveError::Io {
        path: r.dir.display().to_string(),
        source,
    })?;
    let file = r.dir.join(name);
    Ok((until, file))
}

/// One round on a fleet's store: export what is older than the period and
/// not yet archived, then prune every chain. `Ok(None)` when there was
/// nothing to archive or another replica is doing the round.
pub async fn run_once_store(
    target: &PgTarget,
    r: &Retention,
) -> Result<Option<PathBuf>, FleetArchiveError> {
    let (until, file) = next_archive(r)?;
    let written = match fleet::export(target, None, &until, &file, true).await {
        Ok(e) => {
            tracing::info!(
                archive = %file.display(),
                chains = e.manifests.len(),
                records = e.manifests.iter().map(|m| m.count).sum::<u64>(),
                "decision log ranges archived"
            );
            Some(file)
        }
        Err(FleetArchiveError::Archive(ArchiveError::Empty)) => None,
        Err(FleetArchiveError::Busy) => return Ok(None),
        Err(e) => return Err(e),
    };
    match fleet::prune(target, &until).await {
        Ok(p) => {
            for note in &p.pruned {
                tracing::info!(
                    chain = note.chain.as_deref().unwrap_or_default(),
                    removed = note.removed,
                    anchor = note.anchor_seq,
                    "archived records pruned from the decision log"
                );
            }
            if !p.left.is_empty() {
                tracing::warn!(left = %p.left.join(", "), "old records not covered by an archive were kept");
            }
        }
        Err(FleetArchiveError::Busy) => {}
        Err(e) => return Err(e),
    }
    Ok(written)
}

/// Runs [`run_once_store`] every `r.every` until `stopped` changes, on a
/// thread of its own (archives are written with blocking file I/O).
pub async fn run_store(target: PgTarget, r: Retention, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(r.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        let (target, r) = (target.clone(), r.clone());
        let round = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(run_once_store(&target, &r))
                .map_err(|e| e.to_string())
        })
        .await;
        match round {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "decision log retention failed"),
            Err(e) => tracing::error!(error = %e, "decision log retention stopped"),
        }
    }
}

/// Runs [`run_once`] every `r.every` until `stopped` changes.
pub async fn run(db: PathBuf, r: Retention, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(r.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        let (db, r) = (db.clone(), r.clone());
        match tokio::task::spawn_blocking(move || run_once(&db, &r)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "decision log retention failed"),
            Err(e) => tracing::error!(error = %e, "decision log retention stopped"),
        }
    }
}
