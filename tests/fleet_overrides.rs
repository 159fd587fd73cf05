//! Overrides on a fleet while PostgreSQL is frozen (every server process
//! stopped with SIGSTOP, then resumed): the admin API's answer is what ends
//! up in force, an override's creation is recorded before any call is
//! refused by it, and its lapse is recorded once, stamped with its expiry;
//! a removal is out of force exactly when the API says so, never without
//! its `removed` record.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;
mod fleet_fixture;
mod stores;

use std::time::{Duration, Instant};

use common::Harness;
use fleet_fixture::{count, replica_with};
use stores::Postgres;

fn call(h: &Harness) -> u16 {
    h.curl(
        Some("fleeter"),
        &[&format!("{}/shared-echo/v1/x", h.base())],
    )
    .status
}

fn isolate(h: &Harness, expires_in: &str) -> common::Reply {
    let body = format!(
        r#"{{"kind":"isolate-agent","target":"fleeter","reason":"frozen store","expires_in":"{expires_in}"}}"#
    );
    h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            "/v1/overrides",
        ],
    )
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stored(pg: &Postgres) -> i64 {
    pg.psql("postgres", "clawgate", "SELECT count(*) FROM overrides")
        .parse()
        .unwrap()
}

fn first(pg: &Postgres, sql_where: &str) -> String {
    pg.psql(
        "postgres",
        "clawgate",
        &format!("SELECT min(ts) FROM audit_records WHERE {sql_where}"),
    )
}

#[test]
fn an_override_made_while_postgresql_is_frozen_is_in_force_exactly_when_the_api_says_so() {
    let pg = Postgres::start();
    let replicas: Vec<Harness> = ["f1", "f2"]
        .iter()
        .map(|n| replica_with(n, &pg.url(), "", Vec::new(), &[]))
        .collect();
    for h in &replicas {
        assert_eq!(call(h), 200);
    }

    // Frozen for longer than the API waits: it answers 503 while frozen,
    // and once PostgreSQL resumes, nothing ends up in force or recorded.
    pg.freeze();
    let refused = std::thread::scope(|s| s.spawn(|| isolate(&replicas[0], "1h")).join());
    let refused = refused.unwrap();
    pg.thaw();
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.body).contains("could not be stored"),
        "{refused:?}"
    );
    // The worker gets to the queued creation after the thaw; give it time
    // to do whatever it would, then look.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(stored(&pg), 0, "an override the API refused was stored");
    for h in &replicas {
        assert_eq!(call(h), 200, "an override the API refused is in force");
    }
    assert_eq!(count(&pg, "kind = 'override'"), 0);

    // Frozen briefly: the API waits for the real outcome, answers 201, and
    // the override is in force on every replica, its creation recorded
    // before any refusal.
    pg.freeze();
    let made = std::thread::scope(|s| {
        let post = s.spawn(|| isolate(&replicas[0], "8s"));
        std::thread::sleep(Duration::from_secs(3));
        pg.thaw();
        post.join()
    });
    let made = made.unwrap();
    assert_eq!(made.status, 201, "{made:?}");
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let expires = made.json()["expires"].as_str().unwrap().to_owned();
    assert_eq!(stored(&pg), 1);
    for h in &replicas {
        wait_until("the override is in force", Duration::from_secs(5), || {
            call(h) == 403
        });
    }
    let created = first(
        &pg,
        &format!("request_id = '{id}' AND detail LIKE 'created by%'"),
    );
    let refused = first(&pg, "reason = 'agent-isolated'");
    assert!(!created.is_empty() && !refused.is_empty());
    assert!(
        created <= refused,
        "a call was refused at {refused} before the creation record at {created}"
    );

    // The lapse is recorded once in the fleet, stamped with the expiry.
    let lapsed = format!("request_id = '{id}' AND kind = 'override' AND detail LIKE 'lapsed%'");
    wait_until("the lapse is recorded", Duration::from_secs(20), || {
        count(&pg, &lapsed) >= 1
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&pg, &lapsed), 1);
    assert_eq!(
        first(&pg, &lapsed),
        format!("{}.000Z", expires.trim_end_matches('Z'))
    );
    for h in &replicas {
        assert_eq!(call(h), 200);
    }
    let verified = common::clawgate(&["audit", "verify", "--store", &pg.url()]);
    assert!(verified.status.success(), "{verified:?}");
}

fn remove(h: &Harness, id: &str) -> common::Reply {
    h.admin(
        Some("ops"),
        &["-X", "DELETE", &format!("/v1/overrides/{id}")],
    )
}

#[test]
fn an_override_removed_while_postgresql_is_frozen_is_out_of_force_exactly_when_the_api_says_so() {
    let pg = Postgres::start();
    let replicas: Vec<Harness> = ["r1", "r2"]
        .iter()
        .map(|n| replica_with(n, &pg.url(), "", Vec::new(), &[]))
        .collect();
    let made = isolate(&replicas[0], "1h");
    assert_eq!(made.status, 201, "{made:?}");
    let id = made.json()["id"].as_str().unwrap().to_owned();
    for h in &replicas {
        wait_until("the override is in force", Duration::from_secs(5), || {
            call(h) == 403
        });
    }
    let removed = format!("request_id = '{id}' AND kind = 'override' AND detail LIKE 'removed%'");
    let not_removed = format!("request_id = '{id}' AND detail LIKE 'not removed%'");

    // Frozen for longer than the API waits: it answers 503 while frozen,
    // and once PostgreSQL resumes, the override is still in force and no
    // removal is recorded.
    pg.freeze();
    let refused = std::thread::scope(|s| s.spawn(|| remove(&replicas[1], &id)).join());
    let refused = refused.unwrap();
    pg.thaw();
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.body).contains("could not be removed"),
        "{refused:?}"
    );
    // The worker gets to the queued delete after the thaw; give it time to
    // do whatever it would, then look.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(stored(&pg), 1, "an override the API kept was deleted");
    for h in &replicas {
        assert_eq!(call(h), 403, "an override the API kept is out of force");
    }
    assert_eq!(
        count(&pg, &removed),
        0,
        "a removal the API refused was recorded"
    );
    assert_eq!(count(&pg, &not_removed), 0);

    // Frozen briefly: the API waits for the real outcome, answers 200, the
    // removal is recorded, and calls are allowed again on every replica.
    pg.freeze();
    let gone = std::thread::scope(|s| {
        let delete = s.spawn(|| remove(&replicas[1], &id));
        std::thread::sleep(Duration::from_secs(3));
        pg.thaw();
        delete.join()
    });
    let gone = gone.unwrap();
    assert_eq!(gone.status, 200, "{gone:?}");
    assert_eq!(gone.json()["removed"].as_str(), Some(id.as_str()));
    assert_eq!(stored(&pg), 0);
    assert_eq!(count(&pg, &removed), 1);
    assert_eq!(count(&pg, &not_removed), 0);
    for h in &replicas {
        wait_until(
            "the override is out of force",
            Duration::from_secs(5),
            || call(h) == 200,
        );
    }
    // Removed again: there is no such override any more.
    assert_eq!(remove(&replicas[0], &id).status, 404);
    assert_eq!(count(&pg, &removed), 1);
    let verified = common::clawgate(&["audit", "verify", "--store", &pg.url()]);
    assert!(verified.status.success(), "{verified:?}");
}
