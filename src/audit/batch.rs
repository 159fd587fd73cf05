//! Gathering a group commit: what is queued joins the batch, and records
//! nobody waits for linger briefly for one somebody does.

use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use super::queue::Receiver;
use super::writer::{MAX_BATCH, Waiter};
use super::{Command, DecisionRecord};

/// The longest a record nobody waits for waits for a durable one to share
/// its commit (see [`linger`]).
pub(super) const LINGER: Duration = Duration::from_millis(5);

/// Moves what is already queued into `batch`, up to [`MAX_BATCH`].
pub(super) fn drain_waiting(
    rx: &Receiver,
    batch: &mut Vec<(Box<DecisionRecord>, Waiter)>,
    stopping: &mut bool,
) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(Command::Append(record, waiter)) => batch.push((record, waiter)),
            Ok(Command::Shutdown) => *stopping = true,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
}

/// Whether `batch` holds records and no caller waits for any of them.
pub(super) fn nobody_waits(batch: &[(Box<DecisionRecord>, Waiter)]) -> bool {
    !batch.is_empty() && batch.len() < MAX_BATCH && batch.iter().all(|(_, w)| w.is_none())
}

/// Records nobody waits for (a call's outcome, written after its answer)
/// wait until `deadline` (at most [`LINGER`] after they were queued) for a
/// record someone waits for, and share its commit: at a moderate rate a
/// call then costs one commit and one fsync, not two. Ends early when a
/// durable record arrives or the batch is full; returns whether the log is
/// shutting down.
pub(super) fn linger(
    rx: &Receiver,
    batch: &mut Vec<(Box<DecisionRecord>, Waiter)>,
    deadline: Instant,
) -> bool {
    while batch.len() < MAX_BATCH {
        if Instant::now() >= deadline {
            return false;
        }
        match rx.recv_deadline(deadline) {
            Ok(Command::Append(record, waiter)) => {
                let durable = waiter.is_some();
                batch.push((record, waiter));
                if durable {
                    return false;
                }
            }
            Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => return true,
            Err(RecvTimeoutError::Timeout) => return false,
        }
    }
    false
}
