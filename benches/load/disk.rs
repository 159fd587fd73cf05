//! The floor a durable log puts under latency: how long the disk the
//! decision log is on takes to make one page durable, measured in the same
//! run as the proxies. Every decision waits for at least one such sync
//! before its call is forwarded, so its p99 bounds the durable p99 from
//! below whatever clawgate does.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

/// Quantiles of `fdatasync` after rewriting one 4 KiB page in place, in ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncLatency {
    pub syncs: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

/// Rewrites and syncs one page of a preallocated file `syncs` times, in the
/// directory the decision log is in (so on the same disk).
pub fn probe(dir: &Path, syncs: usize) -> std::io::Result<SyncLatency> {
    let path = dir.join("fsync-probe");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let page = [0x5au8; 4096];
    for i in 0..64 {
        file.write_all_at(&page, i * 4096)?;
    }
    file.sync_all()?;
    let mut took = Vec::with_capacity(syncs);
    for i in 0..syncs {
        file.write_all_at(&page, (i as u64 % 64) * 4096)?;
        let started = Instant::now();
        file.sync_data()?;
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    took.sort_by(f64::total_cmp);
    let q = |p: f64| took[((p * took.len() as f64) as usize).min(took.len() - 1)];
    Ok(SyncLatency {
        syncs,
        p50: q(0.50),
        p99: q(0.99),
        p999: q(0.999),
    })
}
