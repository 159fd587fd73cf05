//! The writer's queue. Callers push records; the writer takes them in
//! batches. Unlike a plain channel it does not wake the writer for every
//! record: a record somebody waits for (a decision) rings at once, but a
//! record nobody waits for (an outcome) does not while the writer is dozing,
//! that is, waiting a bounded time for the next decision anyway. At a
//! moderate rate a call then wakes the writer once, not twice (waking a
//! sleeping thread is a futex call and two context switches).
//!
//! Invariants:
//! - A record nobody waits for is taken within the doze the writer is in
//!   (at most [`super::batch::LINGER`] in the writer's loop), or at once when
//!   the writer sleeps without a deadline: every push rings a sleeper.
//! - A record somebody waits for, a shutdown, a full batch and the last
//!   sender going away always ring a waiting writer.
//! - The queue holds at most its capacity of records; a push beyond it
//!   fails (`Full`) and never blocks the runtime.

use std::collections::VecDeque;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Command;

/// How the writer is waiting, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Not waiting: it will look at the queue before it waits again.
    No,
    /// Waiting until a deadline: only what cannot wait rings.
    Dozing,
    /// Waiting without a deadline: every push rings.
    Asleep,
}

struct State {
    items: VecDeque<Command>,
    waiting: Waiting,
    senders: usize,
    receiver_gone: bool,
    /// Times the writer was rung (for the tests and the bench).
    rings: u64,
}

struct Shared {
    state: Mutex<State>,
    bell: Condvar,
    capacity: usize,
    /// Queued records that make a full batch: the writer is rung for them.
    full_batch: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a queue of plain data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The callers' end; cloned into every [`super::AuditLog`].
pub(super) struct Sender(Arc<Shared>);

/// The writer's end.
pub(super) struct Receiver(Arc<Shared>);

/// A queue of at most `capacity` commands; `full_batch` queued commands
/// ring a dozing writer.
pub(super) fn queue(capacity: usize, full_batch: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            waiting: Waiting::No,
            senders: 1,
            receiver_gone: false,
            rings: 0,
        }),
        bell: Condvar::new(),
        capacity,
        full_batch,
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(Arc::clone(&self.0))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        if state.senders == 0 && state.waiting != Waiting::No {
            state.rings += 1;
            self.0.bell.notify_one();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.lock().receiver_gone = true;
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl Sender {
    /// Queues `command` without blocking.
    pub(super) fn try_send(&self, command: Command) -> Result<(), TrySendError<Command>> {
        let mut state = self.0.lock();
        if state.receiver_gone {
            return Err(TrySendError::Disconnected(command));
        }
        if state.items.len() >= self.0.capacity {
            return Err(TrySendError::Full(command));
        }
        let urgent = !matches!(command, Command::Append(_, None));
        state.items.push_back(command);
        let ring = match state.waiting {
            Waiting::No => false,
            Waiting::Asleep => true,
            Waiting::Dozing => urgent || state.items.len() >= self.0.full_batch,
        };
        if ring {
            // Rung once: the writer looks at everything when it wakes.
            state.waiting = Waiting::No;
            state.rings += 1;
            self.0.bell.notify_one();
        }
        Ok(())
    }

    /// Queues `command` past the capacity (a shutdown must get through).
    pub(super) fn send_always(&self, command: Command) -> Result<(), Command> {
        let mut state = self.0.lock();
        if state.receiver_gone {
            return Err(command);
        }
        state.items.push_back(command);
        if state.waiting != Waiting::No {
            state.waiting = Waiting::No;
            state.rings += 1;
            self.0.bell.notify_one();
        }
        Ok(())
    }
}

impl Receiver {
    /// Takes the next command if one is queued.
    pub(super) fn try_recv(&self) -> Result<Command, TryRecvError> {
        let mut state = self.0.lock();
        match state.items.pop_front() {
            Some(command) => Ok(command),
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Waits until `deadline` for a command, dozing: a record nobody waits
    /// for does not end the wait, but is returned when it ends.
    pub(super) fn recv_deadline(&self, deadline: Instant) -> Result<Command, RecvTimeoutError> {
        let mut state = self.0.lock();
        loop {
            if let Some(command) = state.items.pop_front() {
                state.waiting = Waiting::No;
                return Ok(command);
            }
            if state.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                state.waiting = Waiting::No;
                return Err(RecvTimeoutError::Timeout);
            };
            state.waiting = Waiting::Dozing;
            state = self
                .0
                .bell
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Waits up to `timeout`, dozing (see [`Receiver::recv_deadline`]).
    pub(super) fn recv_timeout(&self, timeout: Duration) -> Result<Command, RecvTimeoutError> {
        self.recv_deadline(Instant::now() + timeout)
    }

    /// Waits for a command: dozing for `doze` first (the next record is
    /// likely to come soon after a commit), then asleep, rung by any push.
    /// With the command comes the end of the doze when the command came in
    /// it, so that a record nobody waits for is not held past it again.
    pub(super) fn recv_after(&self, doze: Duration) -> Option<(Command, Option<Instant>)> {
        let until = Instant::now() + doze;
        match self.recv_deadline(until) {
            Ok(command) => return Some((command, Some(until))),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let mut state = self.0.lock();
        loop {
            if let Some(command) = state.items.pop_front() {
                state.waiting = Waiting::No;
                return Some((command, None));
            }
            if state.senders == 0 {
                return None;
            }
            state.waiting = Waiting::Asleep;
            state = self
                .0
                .bell
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
