//! Retention on a schedule (`serve --retain 30d --archive-dir DIR`): every
//! interval, the records older than the retention period are exported to a
//! new archive in the directory (its manifest recorded in the log), then
//! pruned. Nothing is pruned that the archive just written, or an earlier
//! one recorded in the log, does not cover.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::audit::archive::{self, ArchiveError};

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
