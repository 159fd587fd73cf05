//! The writer's answers, delivered with one wake per thread per commit.
//!
//! A caller waiting for its record to be durable holds a oneshot receiver.
//! Sending on its sender from the writer's thread wakes the caller's runtime
//! from outside: a push onto its inject queue and a write to its eventfd, for
//! every caller in the batch. A shard's thread instead runs a post box
//! ([`post_box`]): the writer drops every answer for that thread into it and
//! wakes it once, and the post box, on the thread itself, hands each answer
//! to its caller, where a wake is a push onto the local run queue.
//!
//! A caller on any other thread (the admin API, the main runtime's tasks)
//! is answered directly, as before. The post box is only for a thread that
//! runs one current-thread runtime, where a task never moves.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, oneshot};

/// What a caller is told: its record's sequence number, or why the batch
/// failed.
pub(super) type Answer = Result<i64, String>;

/// Where a durable record's answer goes.
#[derive(Debug)]
pub(super) struct Waiter {
    tx: oneshot::Sender<Answer>,
    /// The post box of the caller's thread, if it has one.
    post: Option<Arc<PostBox>>,
}

/// Answers for one thread, and the one wake that tells it they are there.
#[derive(Debug, Default)]
pub(super) struct PostBox {
    inbox: Mutex<Vec<(oneshot::Sender<Answer>, Answer)>>,
    ready: Notify,
}

impl PostBox {
    fn inbox(&self) -> MutexGuard<'_, Vec<(oneshot::Sender<Answer>, Answer)>> {
        // A panic while the lock was held left a vector: still usable.
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

thread_local! {
    /// The calling thread's post box, while [`post_box`] runs on it.
    static HERE: RefCell<Option<Arc<PostBox>>> = const { RefCell::new(None) };
}

/// A waiter for a record queued on this thread, and the receiver its
/// answer comes to.
pub(super) fn waiter() -> (Waiter, oneshot::Receiver<Answer>) {
    let (tx, rx) = oneshot::channel();
    let post = HERE.with(|here| here.borrow().clone());
    (Waiter { tx, post }, rx)
}

/// Runs the post box of the thread that polls it, until the runtime drops
/// it. Spawn it on a current-thread runtime, from the thread that runs that
/// runtime: a task there never moves, so the box is emptied on the thread
/// whose callers it answers. Records queued on the thread before its first
/// poll are answered directly.
pub(crate) async fn post_box() {
    let post = Arc::new(PostBox::default());
    HERE.with(|here| *here.borrow_mut() = Some(Arc::clone(&post)));
    let _forget = Forget(Arc::clone(&post));
    // Two vectors take turns, so neither side grows one per commit.
    let mut answers = Vec::new();
    loop {
        post.ready.notified().await;
        std::mem::swap(&mut *post.inbox(), &mut answers);
        for (tx, answer) in answers.drain(..) {
            let _ = tx.send(answer);
        }
    }
}

/// Removes the thread's post box when its runtime drops the delivery task:
/// nothing would empty it any more, and a waiter made from then on is
/// answered directly.
struct Forget(Arc<PostBox>);

impl Drop for Forget {
    fn drop(&mut self) {
        // A current-thread runtime drops its tasks on its own thread. Only
        // this box is removed; `try_with`: the thread may be tearing down
        // its locals.
        let _ = HERE.try_with(|here| {
            let mut here = here.borrow_mut();
            if here.as_ref().is_some_and(|post| Arc::ptr_eq(post, &self.0)) {
                *here = None;
            }
        });
    }
}

/// The answers of one commit: those for threads with a post box are put in
/// it, and each box is woken once when the delivery is dropped; the rest are
/// sent at once.
#[derive(Default)]
pub(super) struct Delivery {
    woken: Vec<Arc<PostBox>>,
}

impl Delivery {
    /// Answers `waiter`.
    pub(super) fn send(&mut self, waiter: Waiter, answer: Answer) {
        match waiter.post {
            Some(post) => {
                post.inbox().push((waiter.tx, answer));
                if !self.woken.iter().any(|w| Arc::ptr_eq(w, &post)) {
                    self.woken.push(post);
                }
            }
            None => {
                let _ = waiter.tx.send(answer);
            }
        }
    }
}

impl Drop for Delivery {
    /// Wakes every post box that got answers, once each.
    fn drop(&mut self) {
        for post in self.woken.drain(..) {
            post.ready.notify_one();
        }
    }
}

#[cfg(test)]
#[path = "answers_tests.rs"]
mod tests;
