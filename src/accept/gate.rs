//! Handshake admission: which connections may wait for a TLS handshake, and
//! how many handshakes do their CPU-bound work at once.
//!
//! Invariants:
//! - A newcomer is always admitted. When its source (an IPv4 address, or an
//!   IPv6 /64) already has [`Gate::per_source`] connections pending, or the
//!   whole pending set is full, the *oldest* pending connection (of that
//!   source, or overall) is dropped instead. Idle peers therefore cannot
//!   hold the door shut: they can only push each other out.
//! - Handshakes past their ClientHello (signatures, certificate checks) hold
//!   one of a small number of permits; waiting sockets hold none.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, SemaphorePermit, oneshot};

use super::rejections::source_key;

/// Connections that may wait for their handshake at once, all sources.
pub const MAX_PENDING: usize = 4096;
/// Connections that may wait for their handshake at once, per source.
pub const PENDING_PER_SOURCE: usize = 256;
/// Handshakes past the ClientHello that may run at once.
pub const HANDSHAKE_PERMITS: usize = 64;

#[derive(Debug, Default)]
struct State {
    next: u64,
    pending: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
    by_source: HashMap<IpAddr, BTreeSet<u64>>,
}

impl State {
    fn remove(&mut self, id: u64) -> bool {
        let Some((key, _evict)) = self.pending.remove(&id) else {
            return false;
        };
        if let Some(ids) = self.by_source.get_mut(&key) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&key);
            }
        }
        true
    }
}

/// The pending set and the handshake permits of one listener.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    cpu: Semaphore,
    max_pending: usize,
    per_source: usize,
}

/// A connection's place in the pending set; leaves it when dropped.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    gate: Arc<Gate>,
    evicted: oneshot::Receiver<()>,
}

impl Gate {
    /// A gate with the given bounds.
    pub fn new(max_pending: usize, per_source: usize, permits: usize) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(State::default()),
            cpu: Semaphore::new(permits.max(1)),
            max_pending: max_pending.max(1),
            per_source: per_source.max(1),
        })
    }

    /// Admits a connection from `ip`, dropping the oldest pending ones
    /// when a bound is reached. Returns the ticket and how many were dropped.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> (Ticket, usize) {
        let key = source_key(ip);
        let (tx, rx) = oneshot::channel();
        let mut dropped = 0;
        let id = match self.state.lock() {
            Ok(mut state) => {
                while state.by_source.get(&key).map_or(0, BTreeSet::len) >= self.per_source {
                    let oldest = state
                        .by_source
                        .get(&key)
                        .and_then(|ids| ids.first().copied());
                    match oldest {
                        Some(id) if state.remove(id) => dropped += 1,
                        _ => break,
                    }
                }
                while state.pending.len() >= self.max_pending {
                    let oldest = state.pending.keys().next().copied();
                    match oldest {
                        Some(id) if state.remove(id) => dropped += 1,
                        _ => break,
                    }
                }
                let id = state.next;
                state.next += 1;
                state.pending.insert(id, (key, tx));
                state.by_source.entry(key).or_default().insert(id);
                id
            }
            Err(_) => u64::MAX,
        };
        let ticket = Ticket {
            id,
            gate: Arc::clone(self),
            evicted: rx,
        };
        (ticket, dropped)
    }

    /// Connections waiting for their handshake now.
    pub fn pending(&self) -> usize {
        self.state.lock().map_or(0, |s| s.pending.len())
    }

    /// A permit for the CPU-bound part of a handshake.
    pub async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        self.cpu.acquire().await.ok()
    }
}

impl Ticket {
    /// Resolves when this connection is dropped to make room for a newer one.
    pub async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut state) = self.gate.state.lock() {
            state.remove(self.id);
        }
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
