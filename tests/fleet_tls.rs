//! The fleet's stores as a managed service runs them: PostgreSQL with
//! `ssl = on` and `hostssl ... scram-sha-256` only, Redis with `tls-port`,
//! `port 0` and an ACL user. Replicas reach both with the chain and host
//! name verified and a password from a file; a wrong CA, host name or
//! password is a clear error that never shows the password; and no failure
//! of Redis (stopped, restarted empty, stopped again) hands the fleet more
//! than the limit's burst.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;
mod fleet_fixture;
mod stores;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Harness, Options, clawgate};
use fleet_fixture::{SCOPE, count, replica_with};
use stores::{PASSWORD, Postgres, Redis};

fn call(h: &Harness) -> common::Reply {
    h.curl(
        Some("fleeter"),
        &[&format!("{}/shared-echo/v1/x", h.base())],
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn metric(h: &Harness, name: &str) -> f64 {
    let r = h.admin(Some("ops"), &["/metrics"]);
    r.body_text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A file in `dir` holding `password`.
fn password_file(dir: &std::path::Path, password: &str) -> String {
    let path = dir.join("other-password");
    std::fs::write(&path, password).unwrap();
    path.display().to_string()
}

#[test]
fn postgresql_is_reached_with_verify_full_and_a_password_and_each_wrong_setting_says_why() {
    let pg = Postgres::start();
    let url = pg.url();
    let ok = clawgate(&["audit", "verify", "--store", &url]);
    assert!(ok.status.success(), "{}", text(&ok));

    // The server's certificate from another CA: refused by the client.
    let wrong_ca = url.replace(
        &pg.secrets.ca.display().to_string(),
        &pg.secrets.wrong_ca.display().to_string(),
    );
    let out = clawgate(&["audit", "verify", "--store", &wrong_ca]);
    assert!(!out.status.success());
    assert!(text(&out).contains("UnknownIssuer"), "{}", text(&out));

    // The right server under a name its certificate does not carry.
    let wrong_name = url.replace("@localhost:", "@db.clawgate.test:") + "&hostaddr=127.0.0.1";
    let out = clawgate(&["audit", "verify", "--store", &wrong_name]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not valid for name"), "{}", text(&out));

    // Plain TCP: refused by the server (hostssl only).
    let out = clawgate(&["audit", "verify", "--store", &pg.url_plain()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no encryption"), "{}", text(&out));

    // A wrong password: the server's refusal, and no password in it.
    let dir = tempfile::tempdir().unwrap();
    let wrong_pw = url.replace(
        &pg.secrets.password_file.display().to_string(),
        &password_file(dir.path(), "not-the-password-9911"),
    );
    let out = clawgate(&["audit", "verify", "--store", &wrong_pw]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("password authentication failed"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("not-the-password-9911"));

    // A mode that does not verify is refused before anything is sent.
    let out = clawgate(&[
        "audit",
        "verify",
        "--store",
        &url.replace("?", "?sslmode=require&"),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("verify-full"), "{}", text(&out));
    // The server saw only the refused attempts, never a password in clear.
    assert!(!pg.log().contains(PASSWORD));
}

#[test]
fn a_fleet_over_tls_records_every_call_and_the_password_is_nowhere() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let replicas: Vec<Harness> = ["t1", "t2"]
        .iter()
        .map(|n| replica_with(n, &pg.url(), "", Vec::new(), &redis.args()))
        .collect();
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = call(&replicas[i % 2]);
        assert_eq!(r.status, 200, "{r:?}");
        ids.push(r.request_id());
    }
    for id in &ids {
        assert_eq!(
            count(&pg, &format!("request_id = '{id}' AND kind = 'decision'")),
            1
        );
    }
    assert_eq!(
        pg.psql(
            "postgres",
            "clawgate",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = 'clawgate' AND NOT s.ssl"
        ),
        "0",
        "every clawgate session is TLS"
    );
    for h in &replicas {
        assert_eq!(metric(h, "clawgate_limits_store_up"), 1.0);
    }
    let out = clawgate(&["audit", "verify", "--store", &pg.url()]);
    assert!(out.status.success(), "{}", text(&out));
    let mut replicas = replicas;
    for h in &mut replicas {
        h.stop();
        let logs = format!("{}{}", h.stdout(), h.stderr());
        assert!(!logs.contains(PASSWORD), "the password is in a log");
    }
    assert_eq!(
        count(&pg, &format!("audit_records::text LIKE '%{PASSWORD}%'")),
        0
    );
}

/// A replica with shared limits only, `rate` on the scope.
fn limited(rate: &str, flags: Vec<String>) -> Harness {
    Harness::with(Options {
        extra_policy: vec![("fleet.toml", SCOPE.replace("{extra}", rate))],
        agents: vec!["fleeter", "ops"],
        serve_args: flags,
        ..Options::default()
    })
}

#[test]
fn redis_with_a_wrong_password_or_ca_is_a_clear_error_and_follows_the_failure_mode() {
    let redis = Redis::start();
    let rate = "rate = \"3/hour\"\nburst = 3";
    let good = limited(rate, redis.args());
    assert_eq!(call(&good).status, 200);
    assert_eq!(metric(&good, "clawgate_limits_store_up"), 1.0);
    let keys = redis.cli(&["--scan", "--pattern", "clawgate:{fleeter}:*"]);
    assert!(
        keys.contains("clawgate:{fleeter}:scope:shared-echo"),
        "{keys}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut wrong_pw = redis.args();
    let at = wrong_pw
        .iter()
        .position(|a| a == "--limits-password-file")
        .unwrap();
    wrong_pw[at + 1] = password_file(dir.path(), "not-the-password-4242");
    wrong_pw.extend(["--limits-failure-mode".into(), "closed".into()]);
    let mut refused = limited(rate, wrong_pw);

    let mut wrong_ca = redis.args();
    let at = wrong_ca.iter().position(|a| a == "--limits-ca").unwrap();
    wrong_ca[at + 1] = redis.secrets.wrong_ca.display().to_string();
    wrong_ca.extend(["--limits-failure-mode".into(), "closed".into()]);
    let mut untrusted = limited(rate, wrong_ca);

    for (h, why) in [
        (&mut refused, "AuthenticationFailed"),
        (&mut untrusted, "UnknownIssuer"),
    ] {
        let r = call(h);
        assert_eq!(r.status, 429, "{r:?}");
        assert!(!r.body_text().contains("not-the-password"));
        assert_eq!(metric(h, "clawgate_limits_store_up"), 0.0);
        // The heartbeat waits long enough for the real reason to be logged.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !h.stderr().contains(why) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        h.stop();
        let logs = h.stderr();
        assert!(
            logs.contains(why),
            "{}",
            logs.lines()
                .filter(|l| l.contains("limits"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(!logs.contains("not-the-password-4242"));
        assert!(!logs.contains(PASSWORD));
    }
}

#[test]
fn redis_stopped_restarted_empty_and_stopped_again_never_gives_the_fleet_a_fresh_burst() {
    let mut redis = Redis::start();
    // 6/hour: nothing refills during the test; the burst is all there is.
    let rate = "rate = \"6/hour\"\nburst = 6";
    let flags = [
        redis.args(),
        vec!["--limits-timeout".into(), "500ms".into()],
    ]
    .concat();
    let replicas: Vec<Harness> = (0..3).map(|_| limited(rate, flags.clone())).collect();
    wait_until("three live replicas", Duration::from_secs(15), || {
        replicas
            .iter()
            .all(|h| metric(h, "clawgate_limits_replicas") >= 3.0)
    });
    let mut allowed = 0;
    // Calls until `n` were allowed.
    let spend = |allowed: &mut usize, n: usize| {
        for i in 0..30 {
            if *allowed == n {
                return;
            }
            if call(&replicas[i % 3]).status == 200 {
                *allowed += 1;
            }
        }
    };
    let round = |allowed: &mut usize, calls: usize| {
        for i in 0..calls {
            let h = &replicas[i % 3];
            let r = call(h);
            match r.status {
                200 => *allowed += 1,
                429 => assert_eq!(h.decision(&r.request_id()).reason, "rate-limited"),
                other => panic!("unexpected {other}: {r:?}"),
            }
        }
    };
    // Two of the burst of 6 spent on Redis: no refusal is cached anywhere,
    // so what follows is decided by the fallback and by Redis.
    spend(&mut allowed, 2);
    assert_eq!(allowed, 2);

    // Stopped: the local fallback starts empty on every replica (it used to
    // start each replica with its share of a full burst: 2 each, 6 more).
    redis.kill();
    round(&mut allowed, 9);
    assert_eq!(allowed, 2, "a stopped Redis gave the fleet a fresh burst");

    // Restarted with nothing: every replica learns of the loss before it
    // trusts Redis again, and counts what Redis forgot as spent.
    redis.restart();
    wait_until(
        "the store back on every replica",
        Duration::from_secs(20),
        || {
            replicas
                .iter()
                .all(|h| metric(h, "clawgate_limits_store_up") == 1.0)
        },
    );
    round(&mut allowed, 9);
    assert_eq!(
        allowed, 2,
        "a Redis restarted empty gave the fleet a fresh burst"
    );
    let epoch = redis.cli(&["GET", "clawgate:{replicas}:epoch"]);
    assert!(epoch.ends_with(":1"), "the epoch marks the loss: {epoch}");

    // Stopped again, under load.
    let stop = std::thread::spawn({
        let mut redis = redis;
        move || {
            std::thread::sleep(Duration::from_millis(300));
            redis.kill();
            redis
        }
    });
    round(&mut allowed, 15);
    let _redis = stop.join().unwrap();
    round(&mut allowed, 6);
    // Within limit + burst (6, with nothing accrued at 6/hour); in fact the
    // 2 spent before the first failure, since every failure starts empty.
    assert!(
        allowed <= 6,
        "the fleet allowed {allowed} against a burst of 6"
    );
    assert_eq!(allowed, 2);
    for h in &replicas {
        assert!(metric(h, "clawgate_limits_fallback_total") >= 1.0);
    }
}

#[test]
fn a_replica_without_a_store_and_a_password_in_the_redis_url_are_refused_at_start() {
    let out = clawgate(&["serve", "--replica", "r1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--store"), "{}", text(&out));
    let out = clawgate(&[
        "serve",
        "--limits",
        "rediss://clawgate:hunter2-canary@localhost:6380",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--limits-password-file"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("hunter2-canary"), "{}", text(&out));
}
