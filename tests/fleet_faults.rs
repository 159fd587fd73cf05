//! Faults between a replica and its TLS-only PostgreSQL that leave the two
//! disagreeing about what happened, and how the log is made to tell the
//! truth anyway. A relay between them (plain bytes: TLS passes through it
//! untouched, verified end to end) can swallow what the server answers, so
//! a batch commits on the server while its acknowledgement is lost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;
mod fleet_fixture;
mod stores;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Harness;
use fleet_fixture::{count, replica_with};
use stores::Postgres;

/// A TCP relay to `127.0.0.1:to` whose server-to-client direction can be
/// muted (bytes read and dropped) and whose connections can be cut.
struct Relay {
    port: u16,
    muted: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let muted = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (m, o) = (Arc::clone(&muted), Arc::clone(&open));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                {
                    let mut open = o.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                let pump =
                    |mut from: TcpStream, mut to: TcpStream, mute: Option<Arc<AtomicBool>>| {
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16 * 1024];
                            loop {
                                let n = match from.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if mute.as_ref().is_some_and(|m| m.load(Ordering::SeqCst)) {
                                    continue;
                                }
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    };
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    None,
                );
                pump(server, client, Some(Arc::clone(&m)));
            }
        });
        Relay { port, muted, open }
    }

    fn mute(&self, on: bool) {
        self.muted.store(on, Ordering::SeqCst);
    }

    /// Closes every connection relayed so far.
    fn cut_all(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn call(h: &Harness) -> common::Reply {
    h.curl(
        Some("fleeter"),
        &[&format!("{}/shared-echo/v1/x", h.base())],
    )
}

#[test]
fn a_decision_committed_without_its_acknowledgement_is_followed_by_an_outcome_saying_not_forwarded()
{
    let pg = Postgres::start();
    let relay = Relay::start(pg.port);
    let url = pg.url().replace(
        &format!("@localhost:{}/", pg.port),
        &format!("@localhost:{}/", relay.port),
    );
    let h = replica_with("u1", &url, "", Vec::new(), &[]);
    let first = call(&h);
    assert_eq!(first.status, 200, "{first:?}");

    // The first call's outcome committed: nothing of it is in flight.
    let first_id = first.request_id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &pg,
        &format!("request_id = '{first_id}' AND kind = 'outcome'"),
    ) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the first outcome was not written"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // PostgreSQL commits the next batch, but its answer never arrives.
    relay.mute(true);
    let r = call(&h);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["reason"], "audit-unavailable");
    let id = r.request_id();
    assert_eq!(
        count(
            &pg,
            &format!("request_id = '{id}' AND kind = 'decision' AND decision = 'allow'")
        ),
        1,
        "the decision committed on the server"
    );
    assert_eq!(
        count(&pg, &format!("request_id = '{id}' AND kind = 'outcome'")),
        0
    );

    // The store is reachable again: before anything else, the log says
    // what became of that call.
    relay.mute(false);
    relay.cut_all();
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(&h).status != 200 {
        assert!(Instant::now() < deadline, "service did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        count(
            &pg,
            &format!(
                "request_id = '{id}' AND kind = 'outcome' AND reason = 'audit-unavailable' \
                 AND status = 503 AND detail LIKE '%not forwarded%'"
            )
        ),
        1,
        "one outcome record for the refused call"
    );
    // Exactly one: the call that was answered is not given one too.
    assert_eq!(
        count(
            &pg,
            &format!("request_id = '{first_id}' AND reason = 'audit-unavailable'")
        ),
        0
    );
    let out = common::clawgate(&["audit", "verify", "--store", &pg.url()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
