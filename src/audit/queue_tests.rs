use std::sync::mpsc::{RecvTimeoutError, TrySendError};
use std::time::{Duration, Instant};

use super::*;
use crate::audit::DecisionRecord;

fn quiet() -> Command {
    Command::Append(Box::default(), None)
}

fn durable() -> (Command, tokio::sync::oneshot::Receiver<Result<i64, String>>) {
    let (tx, rx) = crate::audit::answers::waiter();
    (
        Command::Append(Box::<DecisionRecord>::default(), Some(tx)),
        rx,
    )
}

fn rings(tx: &Sender) -> u64 {
    tx.0.lock().rings
}

/// Waits (bounded) until the writer thread is in the given wait.
fn until_waiting(tx: &Sender, how: Waiting) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while tx.0.lock().waiting != how {
        assert!(Instant::now() < give_up, "the writer never waited");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_dozing_writer_is_rung_by_a_durable_record_not_by_a_quiet_one() {
    let (tx, rx) = queue(16, 8);
    let writer = std::thread::spawn(move || {
        let first = rx.recv_deadline(Instant::now() + Duration::from_secs(30));
        let second = rx.try_recv();
        (first.is_ok(), second.is_ok())
    });
    until_waiting(&tx, Waiting::Dozing);
    tx.try_send(quiet()).unwrap();
    assert_eq!(rings(&tx), 0, "a quiet record rang a dozing writer");
    assert_eq!(tx.0.lock().waiting, Waiting::Dozing);
    let (record, _answer) = durable();
    tx.try_send(record).unwrap();
    assert_eq!(rings(&tx), 1);
    // Both records are taken at that one wake-up, long before the deadline.
    assert_eq!(writer.join().unwrap(), (true, true));
}

#[test]
fn a_full_batch_rings_a_dozing_writer() {
    let (tx, rx) = queue(16, 3);
    let writer =
        std::thread::spawn(move || rx.recv_deadline(Instant::now() + Duration::from_secs(30)));
    until_waiting(&tx, Waiting::Dozing);
    tx.try_send(quiet()).unwrap();
    tx.try_send(quiet()).unwrap();
    assert_eq!(rings(&tx), 0);
    tx.try_send(quiet()).unwrap();
    assert_eq!(rings(&tx), 1);
    assert!(writer.join().unwrap().is_ok());
}

#[test]
fn a_sleeping_writer_is_rung_by_any_record_and_told_when_the_doze_ended() {
    let (tx, rx) = queue(16, 8);
    let writer = std::thread::spawn(move || rx.recv_after(Duration::from_millis(1)));
    until_waiting(&tx, Waiting::Asleep);
    tx.try_send(quiet()).unwrap();
    assert_eq!(rings(&tx), 1);
    let (command, doze_end) = writer.join().unwrap().expect("a command");
    assert!(matches!(command, Command::Append(_, None)));
    assert_eq!(doze_end, None, "it came in the sleep, not in the doze");
}

#[test]
fn a_doze_ends_at_its_deadline_with_what_came_in_quietly() {
    let (tx, rx) = queue(16, 8);
    tx.try_send(quiet()).unwrap();
    let started = Instant::now();
    let (_, doze_end) = rx.recv_after(Duration::from_millis(50)).expect("a command");
    // Queued before the wait began: taken at once, and the doze's end is
    // given so that the writer lingers no longer than it.
    assert!(doze_end.is_some_and(|end| end > started));
    assert_eq!(
        rx.recv_deadline(Instant::now() + Duration::from_millis(1))
            .unwrap_err(),
        RecvTimeoutError::Timeout
    );
}

#[test]
fn the_last_sender_going_wakes_the_writer_and_ends_it() {
    let (tx, rx) = queue(16, 8);
    let second = tx.clone();
    let writer = std::thread::spawn(move || rx.recv_after(Duration::from_millis(1)).is_none());
    until_waiting(&tx, Waiting::Asleep);
    drop(tx);
    assert_eq!(second.0.lock().rings, 0);
    drop(second);
    assert!(
        writer.join().unwrap(),
        "the writer did not see the senders go"
    );
}

#[test]
fn a_full_queue_refuses_and_a_gone_writer_disconnects() {
    let (tx, rx) = queue(2, 8);
    tx.try_send(quiet()).unwrap();
    tx.try_send(quiet()).unwrap();
    assert!(matches!(tx.try_send(quiet()), Err(TrySendError::Full(_))));
    // A shutdown gets through past the capacity.
    assert!(tx.send_always(Command::Shutdown).is_ok());
    drop(rx);
    assert!(matches!(
        tx.try_send(quiet()),
        Err(TrySendError::Disconnected(_))
    ));
    assert!(tx.send_always(Command::Shutdown).is_err());
}
