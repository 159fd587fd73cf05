#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use super::*;

fn entry(value: u32, refresh: u64, fresh: u64, usable: u64) -> Entry<u32> {
    let now = Instant::now();
    Entry {
        value: Arc::new(value),
        refresh_at: now + Duration::from_secs(refresh),
        fresh_until: now + Duration::from_secs(fresh),
        usable_until: now + Duration::from_secs(usable),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Failed;

impl From<FetchAborted> for Failed {
    fn from(_: FetchAborted) -> Failed {
        Failed
    }
}

type Fetch = std::pin::Pin<Box<dyn Future<Output = Result<Entry<u32>, Failed>> + Send>>;

/// A source that counts its fetches and fails while `failing` is set.
#[derive(Default)]
struct Source {
    calls: AtomicU32,
    failing: AtomicBool,
}

impl Source {
    fn fetcher(
        self: &Arc<Self>,
        windows: (u64, u64, u64),
    ) -> impl Fn() -> Fetch + Send + Sync + 'static {
        let source = Arc::clone(self);
        move || {
            let source = Arc::clone(&source);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let n = source.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if source.failing.load(Ordering::SeqCst) {
                    return Err(Failed);
                }
                Ok(entry(n, windows.0, windows.1, windows.2))
            })
        }
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_make_one_fetch() {
    let cache: Arc<Cache<&str, u32>> = Arc::default();
    let source = Arc::new(Source::default());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let cache = Arc::clone(&cache);
        let fetch = source.fetcher((60, 120, 180));
        tasks.push(tokio::spawn(async move { cache.get(&"k", fetch).await }));
    }
    for task in tasks {
        assert_eq!(*task.await.unwrap().unwrap(), 1);
    }
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn keys_do_not_share_entries() {
    let cache: Cache<&str, u32> = Cache::default();
    let source = Arc::new(Source::default());
    let a = cache
        .get(&"a", source.fetcher((60, 120, 180)))
        .await
        .unwrap();
    let b = cache
        .get(&"b", source.fetcher((60, 120, 180)))
        .await
        .unwrap();
    assert_ne!(a, b);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_serves_the_old_value_then_the_new() {
    let cache: Cache<&str, u32> = Cache::default();
    let source = Arc::new(Source::default());
    assert_eq!(
        *cache
            .get(&"k", source.fetcher((10, 100, 100)))
            .await
            .unwrap(),
        1
    );
    tokio::time::advance(Duration::from_secs(11)).await;
    // Past refresh_at: served at once, and a background fetch starts.
    assert_eq!(
        *cache
            .get(&"k", source.fetcher((10, 100, 100)))
            .await
            .unwrap(),
        1
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        *cache
            .get(&"k", source.fetcher((10, 100, 100)))
            .await
            .unwrap(),
        2
    );
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn grace_then_fail_closed() {
    let cache: Cache<&str, u32> = Cache::default();
    let source = Arc::new(Source::default());
    // Fresh for 10 s, usable for 30 s.
    assert_eq!(
        *cache.get(&"k", source.fetcher((10, 10, 30))).await.unwrap(),
        1
    );
    source.failing.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(15)).await;
    // The fetch fails; the old value is still within its grace.
    assert_eq!(
        *cache.get(&"k", source.fetcher((10, 10, 30))).await.unwrap(),
        1
    );
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(cache.get(&"k", source.fetcher((10, 10, 30))).await.is_err());
    // Once the source recovers, the next call after the failure hold is served.
    source.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(FAILURE_HOLD).await;
    assert!(cache.get(&"k", source.fetcher((10, 10, 30))).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_failed_background_refresh_backs_off() {
    let cache: Cache<&str, u32> = Cache::default();
    let source = Arc::new(Source::default());
    cache
        .get(&"k", source.fetcher((1, 100, 100)))
        .await
        .unwrap();
    source.failing.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..20 {
        assert_eq!(
            *cache
                .get(&"k", source.fetcher((1, 100, 100)))
                .await
                .unwrap(),
            1
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // One initial fetch, one failed refresh, then nothing until the back-off ends.
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn callers_queued_behind_a_failed_fetch_share_its_error() {
    let cache: Arc<Cache<&str, u32>> = Arc::default();
    let source = Arc::new(Source::default());
    source.failing.store(true, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let cache = Arc::clone(&cache);
        let fetch = source.fetcher((60, 120, 180));
        tasks.push(tokio::spawn(async move { cache.get(&"k", fetch).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Err(Failed));
    }
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_does_not_cut_the_fetch_short() {
    let cache: Arc<Cache<&str, u32>> = Arc::default();
    let source = Arc::new(Source::default());
    let waiting = tokio::time::timeout(
        Duration::from_millis(10),
        cache.get(&"k", source.fetcher((60, 120, 180))),
    )
    .await;
    assert!(waiting.is_err(), "the caller gave up first");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The fetch finished anyway and its value is served.
    assert_eq!(
        *cache
            .get(&"k", source.fetcher((60, 120, 180)))
            .await
            .unwrap(),
        1
    );
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn entries_past_use_are_evicted() {
    let cache: Cache<String, u32> = Cache::default();
    let source = Arc::new(Source::default());
    for i in 0..10 {
        cache
            .get(&i.to_string(), source.fetcher((1, 1, 1)))
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    cache
        .get(&"fresh".to_owned(), source.fetcher((60, 60, 60)))
        .await
        .unwrap();
    assert_eq!(cache.len(), 1);
}
