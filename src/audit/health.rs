//! Whether the decision log's chain still verifies, checked on a schedule
//! while `serve` runs, so a record edited or removed behind clawgate's back
//! is a metric (`clawgate_audit_chain_intact`) and an alert, not a surprise
//! at the next manual `audit verify`.
//!
//! Invariants: a log that cannot be read is not called broken (that is an
//! outage, `clawgate_audit_healthy`'s business) and leaves the last answer
//! standing; once broken, the state stays broken until a walk finds the
//! chain whole again (a restored record).

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::{Source, VerifyError};

// 0 (the default) is "no walk finished yet".
const INTACT: u8 = 1;
const BROKEN: u8 = 2;

/// The last answer of the scheduled walk.
#[derive(Debug, Default)]
pub struct ChainHealth {
    state: AtomicU8,
    first_broken: AtomicI64,
}

/// What the last walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainState {
    /// Every record verified.
    Intact,
    /// The first record that does not verify (its seq; -1 when the store
    /// did not say).
    Broken(i64),
}

impl ChainHealth {
    /// The last walk's answer; `None` before the first one finished.
    pub fn state(&self) -> Option<ChainState> {
        match self.state.load(Ordering::Acquire) {
            INTACT => Some(ChainState::Intact),
            BROKEN => Some(ChainState::Broken(
                self.first_broken.load(Ordering::Acquire),
            )),
            _ => None,
        }
    }

    fn set(&self, state: ChainState) {
        match state {
            ChainState::Intact => self.state.store(INTACT, Ordering::Release),
            ChainState::Broken(seq) => {
                self.first_broken.store(seq, Ordering::Release);
                self.state.store(BROKEN, Ordering::Release);
            }
        }
    }
}

impl Source {
    /// Walks the whole log: intact, broken (and where), or `None` when it
    /// could not be read.
    pub async fn check_chain(&self) -> Option<ChainState> {
        match self {
            Source::Sqlite(path) => {
                let path = path.clone();
                let walked = tokio::task::spawn_blocking(move || super::verify(&path))
                    .await
                    .ok()?;
                match walked {
                    Ok(_) => Some(ChainState::Intact),
                    Err(VerifyError::Broken { seq, .. }) => Some(ChainState::Broken(seq)),
                    Err(VerifyError::Audit(_)) => None,
                }
            }
            Source::Postgres(target) => match super::postgres::verify(target, &[]).await {
                Ok(_) => Some(ChainState::Intact),
                Err(super::postgres::FleetVerifyError::Broken { seq, .. }) => {
                    Some(ChainState::Broken(seq))
                }
                Err(super::postgres::FleetVerifyError::Store(_)) => None,
            },
        }
    }
}

/// Walks the chain now and then every `every` until `stopped` flips,
/// keeping `health` current; a break is also said loudly on stderr, once.
pub async fn watch_chain(
    source: Source,
    every: Duration,
    health: std::sync::Arc<ChainHealth>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if let Some(state) = source.check_chain().await {
            if let ChainState::Broken(seq) = state
                && health.state() != Some(state)
            {
                tracing::error!(
                    seq,
                    "decision log chain broken: record {seq} does not verify"
                );
            }
            health.set(state);
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}
