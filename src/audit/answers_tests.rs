use super::*;

use tokio::sync::oneshot::error::TryRecvError;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `delivery` on another thread, as the writer does, and waits for it.
fn on_writer_thread(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(f).join().unwrap();
}

#[test]
fn a_thread_without_a_post_box_is_answered_at_once() {
    let (waiter, mut rx) = waiter();
    assert!(waiter.post.is_none());
    let mut delivery = Delivery::default();
    delivery.send(waiter, Ok(7));
    // Sent before the delivery ends: nothing waits for a wake.
    assert_eq!(rx.try_recv().unwrap(), Ok(7));
    assert!(delivery.woken.is_empty());
}

#[test]
fn a_commit_reaches_a_post_box_in_one_wake_and_every_caller_gets_its_own_answer() {
    let rt = current_thread();
    rt.block_on(async {
        tokio::spawn(post_box());
        // Its first poll makes it this thread's post box.
        tokio::task::yield_now().await;
        let mut receivers = Vec::new();
        let mut waiters = Vec::new();
        for _ in 0..5 {
            let (waiter, rx) = waiter();
            assert!(waiter.post.is_some(), "queued on a thread with a post box");
            waiters.push(waiter);
            receivers.push(rx);
        }
        let post = Arc::clone(waiters[0].post.as_ref().unwrap());
        let (direct_tx, mut direct_rx) = oneshot::channel();
        let (held, release) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let mut delivery = Delivery::default();
            for (i, waiter) in waiters.into_iter().enumerate() {
                let answer = if i == 3 {
                    Err("disk full".to_owned())
                } else {
                    Ok(i as i64 + 10)
                };
                delivery.send(waiter, answer);
            }
            delivery.send(
                Waiter {
                    tx: direct_tx,
                    post: None,
                },
                Ok(99),
            );
            // One box to wake, holding all five answers, none delivered yet.
            assert_eq!(delivery.woken.len(), 1);
            assert_eq!(post.inbox().len(), 5);
            held.send(()).unwrap();
            drop(delivery);
        });
        // The writer's thread holds the answers until its delivery ends.
        tokio::task::spawn_blocking(move || release.recv().unwrap())
            .await
            .unwrap();
        writer.join().unwrap();
        assert_eq!(direct_rx.try_recv().unwrap(), Ok(99));
        for (i, rx) in receivers.into_iter().enumerate() {
            let want = if i == 3 {
                Err("disk full".to_owned())
            } else {
                Ok(i as i64 + 10)
            };
            assert_eq!(rx.await.unwrap(), want);
        }
    });
}

#[test]
fn answers_before_the_wake_stay_in_the_box() {
    let rt = current_thread();
    rt.block_on(async {
        tokio::spawn(post_box());
        // Its first poll makes it this thread's post box.
        tokio::task::yield_now().await;
        let (waiter, mut rx) = waiter();
        let post = Arc::clone(waiter.post.as_ref().unwrap());
        // Put in the box without a wake: the caller must not have it, which
        // shows the box (and not the writer's thread) hands answers out.
        post.inbox().push((waiter.tx, Ok(1)));
        tokio::task::yield_now().await;
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        post.ready.notify_one();
        assert_eq!(rx.await.unwrap(), Ok(1));
    });
}

#[test]
fn many_commits_from_the_writer_thread_lose_no_answer() {
    let rt = current_thread();
    rt.block_on(async {
        tokio::spawn(post_box());
        // Its first poll makes it this thread's post box.
        tokio::task::yield_now().await;
        let mut receivers = Vec::new();
        let mut batches = Vec::new();
        for batch in 0..50 {
            let mut waiters = Vec::new();
            for i in 0..8 {
                let (waiter, rx) = waiter();
                waiters.push((waiter, batch * 8 + i));
                receivers.push((rx, batch * 8 + i));
            }
            batches.push(waiters);
        }
        let writer = std::thread::spawn(move || {
            for waiters in batches {
                let mut delivery = Delivery::default();
                for (waiter, n) in waiters {
                    delivery.send(waiter, Ok(n));
                }
            }
        });
        for (rx, n) in receivers {
            assert_eq!(rx.await.unwrap(), Ok(n));
        }
        writer.join().unwrap();
    });
}

#[test]
fn a_dropped_runtime_takes_its_post_box_with_it() {
    let rt = current_thread();
    rt.block_on(async {
        tokio::spawn(post_box());
        // Its first poll makes it this thread's post box.
        tokio::task::yield_now().await;
    });
    let (with_box, _rx) = waiter();
    assert!(with_box.post.is_some());
    drop(rt);
    // The runtime dropped the delivery task on this thread: later records
    // are answered directly, not put where nobody reads.
    let (waiter, mut rx) = waiter();
    assert!(waiter.post.is_none());
    on_writer_thread(move || {
        let mut delivery = Delivery::default();
        delivery.send(waiter, Ok(5));
    });
    assert_eq!(rx.try_recv().unwrap(), Ok(5));
}
