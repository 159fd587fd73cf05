//! The one credential cache: single flight, refresh ahead, bounded staleness.
//!
//! Every entry carries three instants, set by the source that fetched it:
//! - before `refresh_at` the entry is served as it is (a hit);
//! - from `refresh_at` until `fresh_until` it is served while one background
//!   task fetches its successor;
//! - from `fresh_until` until `usable_until` the caller fetches a successor
//!   and falls back to the entry only if that fetch fails (a grace period);
//! - from `usable_until` on it is never served: fail closed.
//!
//! Invariants: at most one fetch per key is in flight, however many callers
//! miss at once (the per-key lock is held across the fetch); an entry is only
//! ever replaced by a successful fetch; a key names everything that makes two
//! credentials different, so two scopes share an entry only when they would
//! have fetched the same credential.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use tokio::time::Instant;

/// How long a failed background refresh waits before the next one.
const REFRESH_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// A fetched credential and the instants that govern its use.
#[derive(Debug)]
pub struct Entry<V> {
    /// The credential.
    pub value: Arc<V>,
    /// From here on, a background refresh starts.
    pub refresh_at: Instant,
    /// From here on, callers fetch first and fall back to this entry.
    pub fresh_until: Instant,
    /// From here on, this entry is never served.
    pub usable_until: Instant,
}

/// Counters for the cache, read by metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Calls served from the cache without waiting.
    pub hits: AtomicU64,
    /// Calls that had to wait for a fetch.
    pub misses: AtomicU64,
    /// Fetches made (successful or not).
    pub fetches: AtomicU64,
}

/// A fetch that ended without an answer (its task was cancelled).
#[derive(Debug, Clone, Copy)]
pub struct FetchAborted;

/// How long a failed fetch's error is handed to the callers queued behind it.
pub const FAILURE_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

type Failure = (Instant, Box<dyn std::any::Any + Send + Sync>);

struct Slot<V> {
    current: ArcSwapOption<Entry<V>>,
    /// Held across a fetch: the single-flight lock.
    fetching: Arc<tokio::sync::Mutex<()>>,
    /// The last failed fetch, for [`FAILURE_HOLD`].
    failure: std::sync::Mutex<Option<Failure>>,
    /// Set while a background refresh is running.
    refreshing: AtomicBool,
    /// After a failed background refresh, the next one waits until here, so
    /// an outage upstream is not met with one fetch per call.
    retry_not_before: std::sync::Mutex<Option<Instant>>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot {
            current: ArcSwapOption::empty(),
            fetching: Arc::default(),
            failure: std::sync::Mutex::new(None),
            refreshing: AtomicBool::new(false),
            retry_not_before: std::sync::Mutex::new(None),
        }
    }
}

impl<V> std::fmt::Debug for Slot<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl<V> Slot<V> {
    fn recent_failure<E: Clone + 'static>(&self) -> Option<E> {
        let failure = self.failure.lock().ok()?;
        let (at, error) = failure.as_ref()?;
        (Instant::now() < *at + FAILURE_HOLD)
            .then(|| error.downcast_ref::<E>().cloned())
            .flatten()
    }

    fn set_failure(&self, error: Option<Box<dyn std::any::Any + Send + Sync>>) {
        if let Ok(mut failure) = self.failure.lock() {
            *failure = error.map(|e| (Instant::now(), e));
        }
    }
}

/// A cache from key to credential.
#[derive(Debug)]
pub struct Cache<K: Eq + Hash, V> {
    slots: DashMap<K, Arc<Slot<V>>>,
    stats: Arc<CacheStats>,
}

impl<K: Eq + Hash, V> Default for Cache<K, V> {
    fn default() -> Self {
        Cache {
            slots: DashMap::new(),
            stats: Arc::default(),
        }
    }
}

impl<K, V> Cache<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// The cache's counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The credential for `key`, fetching it with `fetch` when the cache has
    /// nothing servable. `fetch` is a factory so that a background refresh can
    /// make its own future.
    ///
    /// The fetch runs in a task of its own: a caller that goes away does not
    /// cut a fetch (and its record) short. A failed fetch is remembered for
    /// [`FAILURE_HOLD`], so callers queued behind it share its error instead
    /// of each trying again.
    pub async fn get<F, Fut, E>(&self, key: &K, fetch: F) -> Result<Arc<V>, E>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Entry<V>, E>> + Send + 'static,
        E: Clone + From<FetchAborted> + Send + Sync + 'static,
    {
        let slot = self.slot(key);
        let now = Instant::now();
        if let Some(entry) = slot.current.load_full() {
            if now < entry.refresh_at.min(entry.fresh_until) {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Arc::clone(&entry.value));
            }
            if now < entry.fresh_until {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                self.refresh_in_background(&slot, fetch);
                return Ok(Arc::clone(&entry.value));
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        self.evict_expired(now);
        let stats = Arc::clone(&self.stats);
        let task = tokio::spawn(async move {
            let _flight = Arc::clone(&slot.fetching).lock_owned().await;
            // Another caller may have fetched while this one waited.
            let seen = slot.current.load_full();
            if let Some(entry) = &seen
                && Instant::now() < entry.fresh_until
            {
                return Ok(Arc::clone(&entry.value));
            }
            let fallback = |e: E| match &seen {
                // Grace: a failed fetch falls back to an entry still usable.
                Some(entry) if Instant::now() < entry.usable_until => Ok(Arc::clone(&entry.value)),
                _ => Err(e),
            };
            if let Some(e) = slot.recent_failure::<E>() {
                return fallback(e);
            }
            stats.fetches.fetch_add(1, Ordering::Relaxed);
            match fetch().await {
                Ok(entry) => {
                    let value = Arc::clone(&entry.value);
                    slot.current.store(Some(Arc::new(entry)));
                    slot.set_failure(None);
                    Ok(value)
                }
                Err(e) => {
                    slot.set_failure(Some(Box::new(e.clone())));
                    fallback(e)
                }
            }
        });
        task.await.unwrap_or_else(|_| Err(E::from(FetchAborted)))
    }

    /// Drops entries no longer servable that nobody is fetching, so the map
    /// does not grow with every key ever seen.
    fn evict_expired(&self, now: Instant) {
        self.slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|e| now < e.usable_until)
        });
    }

    /// How many keys the cache holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn slot(&self, key: &K) -> Arc<Slot<V>> {
        if let Some(slot) = self.slots.get(key) {
            return Arc::clone(&slot);
        }
        Arc::clone(&self.slots.entry(key.clone()).or_default())
    }

    fn refresh_in_background<F, Fut, E>(&self, slot: &Arc<Slot<V>>, fetch: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Entry<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        let backing_off = slot
            .retry_not_before
            .lock()
            .map(|t| t.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false);
        if backing_off || slot.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let slot = Arc::clone(slot);
        let stats = Arc::clone(&self.stats);
        tokio::spawn(async move {
            {
                let _flight = slot.fetching.lock().await;
                let due = slot
                    .current
                    .load()
                    .as_ref()
                    .is_none_or(|e| Instant::now() >= e.refresh_at);
                if due {
                    stats.fetches.fetch_add(1, Ordering::Relaxed);
                    // A failed refresh keeps the current entry; the source
                    // recorded the failure, and the next call tries again.
                    let failed = match fetch().await {
                        Ok(entry) => {
                            slot.current.store(Some(Arc::new(entry)));
                            None
                        }
                        Err(_) => Some(Instant::now() + REFRESH_RETRY),
                    };
                    if let Ok(mut next) = slot.retry_not_before.lock() {
                        *next = failed;
                    }
                }
            }
            slot.refreshing.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
