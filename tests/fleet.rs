//! A fleet: three clawgate replicas (the real binary, real TLS, curl) on
//! one throwaway PostgreSQL for the decision log and overrides, and one
//! throwaway Redis for rate limits. Every case checks the store as well as
//! the responses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;
mod fleet_fixture;
#[path = "listeners/net.rs"]
mod net;
mod stores;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Harness, Options, clawgate};
use fleet_fixture::{SCOPE, count, replica_with};
use stores::{Postgres, Redis};

fn replica(
    name: &str,
    pg: &Postgres,
    redis: Option<&Redis>,
    scope_extra: &str,
    more: &[&str],
) -> Harness {
    let mut serve_args: Vec<String> = Vec::new();
    if let Some(redis) = redis {
        serve_args.extend(redis.args());
    }
    serve_args.extend(more.iter().map(|s| (*s).to_owned()));
    replica_with(name, &pg.url(), scope_extra, Vec::new(), &serve_args)
}

fn call(h: &Harness) -> common::Reply {
    h.curl(
        Some("fleeter"),
        &[&format!("{}/shared-echo/v1/x", h.base())],
    )
}

fn fleet_cmd(args: &[&str]) -> Output {
    clawgate(args)
}

fn verify(pg: &Postgres) -> Output {
    fleet_cmd(&["audit", "verify", "--store", &pg.url()])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn calls_spread_over_three_replicas_land_in_three_chains_and_verify_passes() {
    let pg = Postgres::start();
    let replicas: Vec<Harness> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| replica(n, &pg, None, "", &[]))
        .collect();
    let mut ids = Vec::new();
    for i in 0..12 {
        let r = call(&replicas[i % 3]);
        assert_eq!(r.status, 200, "{r:?}");
        ids.push(r.request_id());
    }
    // Every acknowledged call has its decision record, on its replica's chain.
    for (i, id) in ids.iter().enumerate() {
        let chain = pg.psql(
            "postgres",
            "clawgate",
            &format!(
                "SELECT chain FROM audit_records WHERE request_id = '{id}' AND kind = 'decision'"
            ),
        );
        assert_eq!(chain, format!("r{}", i % 3 + 1));
    }
    let out = fleet_cmd(&["audit", "checkpoint", "--store", &pg.url()]);
    assert!(out.status.success(), "{out:?}");
    let out = verify(&pg);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("in 3 chains"), "{}", stdout(&out));
    // The same query on the store, from the CLI and from the admin API.
    let out = fleet_cmd(&[
        "audit",
        "query",
        "--store",
        &pg.url(),
        "--agent",
        "fleeter",
        "--format",
        "json",
    ]);
    let decisions = stdout(&out)
        .lines()
        .filter(|l| l.contains("\"kind\":\"decision\""))
        .count();
    assert_eq!(decisions, 12, "{}", stdout(&out));
    let r = replicas[1].admin(Some("ops"), &["/v1/audit?agent=fleeter&limit=500"]);
    assert_eq!(r.status, 200, "{r:?}");
    let text = r.body_text();
    for id in &ids {
        assert!(text.contains(id.as_str()), "{id} missing from /v1/audit");
    }
    assert!(text.contains("\"chain\":\"r1\"") && text.contains("\"chain\":\"r3\""));
    // The console's filters on the store: source address, request id, kinds.
    let lines = |q: &str| -> Vec<serde_json::Value> {
        let r = replicas[0].admin(Some("ops"), &[q]);
        assert_eq!(r.status, 200, "{r:?}");
        r.body_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let by_source = lines("/v1/audit?agent=fleeter&source=127.0.0.1&limit=500");
    assert_eq!(
        by_source.iter().filter(|r| r["kind"] == "decision").count(),
        12
    );
    assert!(lines("/v1/audit?source=10.9.9.9&limit=500").is_empty());
    let one = lines(&format!("/v1/audit?request_id={}", ids[0]));
    assert!(!one.is_empty() && one.iter().all(|r| r["request_id"] == ids[0].as_str()));
    let policy = lines("/v1/audit?kind=policy,certs&limit=500");
    assert!(
        !policy.is_empty()
            && policy
                .iter()
                .all(|r| r["kind"] == "policy" || r["kind"] == "certs")
    );
    // `audit head` gives the latest checkpoint as an anchor that verifies.
    let head = fleet_cmd(&["audit", "head", "--store", &pg.url()]);
    assert!(head.status.success(), "{head:?}");
    let anchor = stdout(&head).trim().replacen(' ', ":", 1);
    let out = fleet_cmd(&["audit", "verify", "--store", &pg.url(), "--anchor", &anchor]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_role_cannot_update_or_delete_records_and_a_second_process_on_a_chain_is_refused() {
    let pg = Postgres::start();
    let first = replica("solo", &pg, None, "", &[]);
    assert_eq!(call(&first).status, 200);
    for sql in [
        "UPDATE audit_records SET reason = 'x'",
        "DELETE FROM audit_records",
        "DELETE FROM audit_checkpoints",
    ] {
        let out = pg.try_psql("clawgate", "clawgate", sql);
        assert!(!out.status.success(), "`{sql}` was allowed");
    }
    // Even the owner is refused by the trigger.
    let out = pg.try_psql("postgres", "clawgate", "DELETE FROM audit_records");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("append-only"));

    let second = serve_once(&first, &pg, "solo");
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("chain `solo` is in use"), "{said}");
    assert_eq!(call(&first).status, 200);
    assert!(verify(&pg).status.success());

    // Past the lock, the compare-and-set: a head moved under the writer (as
    // another writer would move it) refuses the next batch, and its call.
    pg.psql(
        "clawgate",
        "clawgate",
        "UPDATE audit_chains SET seq = seq + 1 WHERE chain = 'solo'",
    );
    let refused = call(&first);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.json()["reason"], "audit-unavailable");
    assert!(
        first.stderr().contains("moved under this writer"),
        "{}",
        first.stderr()
    );
}

/// Runs `sql` as the superuser with triggers off: what an attacker with
/// the database's keys could do, and what verify must catch.
fn tamper(pg: &Postgres, sql: &str) {
    pg.psql(
        "postgres",
        "clawgate",
        &format!("SET session_replication_role = replica; {sql}"),
    );
}

fn restore(pg: &Postgres) {
    tamper(
        pg,
        "DELETE FROM audit_records; INSERT INTO audit_records SELECT * FROM backup_records;
         DELETE FROM audit_checkpoints; INSERT INTO audit_checkpoints SELECT * FROM backup_checkpoints;
         UPDATE audit_chains c SET seq = b.seq, hash = b.hash, closed = b.closed
             FROM backup_chains b WHERE b.chain = c.chain;",
    );
    let out = verify(pg);
    assert!(out.status.success(), "restored log must verify: {out:?}");
}

fn broken(pg: &Postgres, expect: &[&str]) {
    let out = verify(pg);
    let text = stdout(&out);
    assert!(
        !out.status.success(),
        "verify passed a tampered log: {text}"
    );
    for e in expect {
        assert!(text.contains(e), "verify said `{text}`, not `{e}`");
    }
}

#[test]
fn editing_deleting_cutting_and_growing_a_closed_chain_are_each_named_by_verify() {
    let pg = Postgres::start();
    let mut h = replica("t1", &pg, None, "", &[]);
    for _ in 0..4 {
        assert_eq!(call(&h).status, 200);
    }
    h.stop();
    let last: i64 = pg
        .psql(
            "postgres",
            "clawgate",
            "SELECT max(seq) FROM audit_records WHERE chain = 't1'",
        )
        .parse()
        .unwrap();
    assert!(
        last >= 8,
        "a policy record and 4 decisions and outcomes: {last}"
    );
    assert!(
        fleet_cmd(&["audit", "checkpoint", "--store", &pg.url()])
            .status
            .success()
    );
    pg.psql(
        "postgres",
        "clawgate",
        "CREATE TABLE backup_records AS SELECT * FROM audit_records;
         CREATE TABLE backup_checkpoints AS SELECT * FROM audit_checkpoints;
         CREATE TABLE backup_chains AS SELECT * FROM audit_chains;",
    );
    assert!(verify(&pg).status.success());

    tamper(
        &pg,
        "UPDATE audit_records SET agent = 'someone-else' WHERE chain = 't1' AND seq = 3",
    );
    broken(&pg, &["chain `t1` record 3", "edited"]);
    restore(&pg);

    tamper(
        &pg,
        "DELETE FROM audit_records WHERE chain = 't1' AND seq = 4",
    );
    broken(&pg, &["chain `t1` record 4", "missing"]);
    restore(&pg);

    // A careful cut: the tail goes and the head row is moved back to match,
    // so only the checkpoint still knows how far the chain reached.
    tamper(
        &pg,
        &format!(
            "DELETE FROM audit_records WHERE chain = 't1' AND seq > {keep};
             UPDATE audit_chains SET seq = {keep},
                 hash = (SELECT hash FROM audit_records WHERE chain = 't1' AND seq = {keep})
             WHERE chain = 't1';",
            keep = last - 2
        ),
    );
    broken(
        &pg,
        &[
            &format!("chain `t1` record {}", last - 1),
            "cut below a checkpoint",
        ],
    );
    restore(&pg);

    tamper(
        &pg,
        "UPDATE audit_checkpoints SET made_by = 'nobody' WHERE seq = 1",
    );
    broken(&pg, &["checkpoint 1", "edited"]);
    restore(&pg);

    // A retired replica's chain is closed and checkpointed; a record added
    // to it afterwards is named.
    let out = fleet_cmd(&[
        "audit",
        "close-chain",
        "--store",
        &pg.url(),
        "--replica",
        "t1",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        fleet_cmd(&["audit", "checkpoint", "--store", &pg.url()])
            .status
            .success()
    );
    assert!(verify(&pg).status.success());
    tamper(
        &pg,
        &format!(
            "INSERT INTO audit_records SELECT chain, seq + 1, ts, kind, request_id, mode, agent,
                 cert_fp, run_id, client_addr, method, host, path, scope, rule, decision, reason,
                 would_deny, credential_kind, credential_ref, policy_digest, status, bytes_up,
                 bytes_down, duration_ms, detail, hash, hash, action, exception
             FROM audit_records WHERE chain = 't1' AND seq = {last};
             UPDATE audit_chains SET seq = {next} WHERE chain = 't1';",
            next = last + 1
        ),
    );
    broken(
        &pg,
        &[
            &format!("chain `t1` record {}", last + 1),
            "closed chain grew",
        ],
    );
    // And a writer for the closed chain is refused at start.
    let out = serve_once(&h, &pg, "t1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chain `t1` is closed"),
        "{out:?}"
    );
}

/// `clawgate serve` on `h`'s files, for a start that is expected to fail.
fn serve_once(h: &Harness, pg: &Postgres, chain: &str) -> Output {
    std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--policy",
        ])
        .arg(&h.policy)
        .arg("--certs")
        .arg(&h.certs)
        .arg("--audit")
        .arg(h.path("second.db"))
        .args(["--store", &pg.url(), "--replica", chain])
        .env("ECHO_API_TOKEN", common::CANARY)
        .output()
        .unwrap()
}

#[test]
fn a_sqlite_log_migrates_with_its_chain_intact() {
    let pg = Postgres::start();
    let mut h = Harness::with(Options {
        extra_policy: vec![("fleet.toml", SCOPE.replace("{extra}", ""))],
        agents: vec!["fleeter", "ops"],
        ..Options::default()
    });
    let ids: Vec<String> = (0..3).map(|_| call(&h).request_id()).collect();
    h.stop();
    let sqlite_head = stdout(&fleet_cmd(&[
        "audit",
        "head",
        "--audit",
        h.audit.to_str().unwrap(),
    ]));
    let out = fleet_cmd(&[
        "audit",
        "migrate",
        "--audit",
        h.audit.to_str().unwrap(),
        "--store",
        &pg.url(),
        "--chain",
        "host-a",
    ]);
    assert!(out.status.success(), "{out:?}");
    // The SQLite head is the migrated chain's head: same position, same hash.
    let (seq, hash) = sqlite_head.trim().split_once(' ').unwrap();
    let row = pg.psql(
        "postgres",
        "clawgate",
        "SELECT seq || ' ' || hash FROM audit_chains WHERE chain = 'host-a'",
    );
    assert_eq!(row, format!("{seq} {hash}"));
    assert!(
        fleet_cmd(&["audit", "checkpoint", "--store", &pg.url()])
            .status
            .success()
    );
    let out = verify(&pg);
    assert!(out.status.success(), "{out:?}");
    let out = fleet_cmd(&["audit", "query", "--store", &pg.url(), "--format", "json"]);
    for id in &ids {
        assert!(stdout(&out).contains(id.as_str()));
    }
    // A second migration into the same chain is refused.
    let again = fleet_cmd(&[
        "audit",
        "migrate",
        "--audit",
        h.audit.to_str().unwrap(),
        "--store",
        &pg.url(),
        "--chain",
        "host-a",
    ]);
    assert!(!again.status.success());
}

#[test]
fn postgres_stopped_mid_load_refuses_with_audit_unavailable_and_service_comes_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let pg = Postgres::start();
    let h = Arc::new(replica("load", &pg, None, "", &[]));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (h, stop) = (Arc::clone(&h), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut replies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                replies.push(call(&h));
            }
            replies
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    pg.stop_immediate();
    std::thread::sleep(Duration::from_millis(1500));
    pg.restart();
    // Service comes back by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(&h);
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let replies = load.join().unwrap();
    let ok: Vec<&common::Reply> = replies.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<&common::Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(
        !ok.is_empty() && !refused.is_empty(),
        "{} ok, {} refused",
        ok.len(),
        refused.len()
    );
    for r in &refused {
        assert_eq!(r.json()["reason"], "audit-unavailable", "{r:?}");
    }
    let other: Vec<&common::Reply> = replies
        .iter()
        .filter(|r| r.status != 200 && r.status != 503)
        .collect();
    assert!(other.is_empty(), "unexpected replies: {other:?}");
    // No acknowledged call lacks its decision record.
    for r in &ok {
        let id = r.request_id();
        assert_eq!(
            count(
                &pg,
                &format!("request_id = '{id}' AND kind = 'decision' AND decision = 'allow'")
            ),
            1,
            "call {id} was answered 200 without its record"
        );
    }
    assert!(
        fleet_cmd(&["audit", "checkpoint", "--store", &pg.url()])
            .status
            .success()
    );
    let out = verify(&pg);
    assert!(out.status.success(), "{out:?}");
}

fn limited_replica(redis: &Redis, mode: &str) -> Harness {
    Harness::with(Options {
        extra_policy: vec![(
            "fleet.toml",
            SCOPE.replace("{extra}", "rate = \"3/hour\"\nburst = 3"),
        )],
        agents: vec!["fleeter", "ops"],
        serve_args: [
            redis.args(),
            vec!["--limits-failure-mode".into(), mode.into()],
        ]
        .concat(),
        ..Options::default()
    })
}

fn metric(h: &Harness, name: &str) -> f64 {
    let r = h.admin(Some("ops"), &["/metrics"]);
    r.body_text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no metric {name}"))
        .trim()
        .parse()
        .unwrap()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_shared_rate_limit_holds_in_total_across_three_replicas() {
    let redis = Redis::start();
    let replicas: Vec<Harness> = ["l1", "l2", "l3"]
        .iter()
        .map(|_| limited_replica(&redis, "local"))
        .collect();
    let mut allowed = 0;
    for i in 0..12 {
        let h = &replicas[i % 3];
        let r = call(h);
        match r.status {
            200 => allowed += 1,
            429 => {
                assert_eq!(r.json()["reason"], "rate-limited");
                let record = h.decision(&r.request_id());
                assert_eq!(record.reason, "rate-limited");
                assert!(
                    record
                        .detail
                        .as_deref()
                        .unwrap_or("")
                        .contains("scope rate limit")
                );
            }
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    // The burst of 3, fleet-wide; at 3/hour nothing more accrues meanwhile.
    assert_eq!(
        allowed, 3,
        "the fleet allowed {allowed} calls against a burst of 3"
    );
    // Both limits live under one hash tag, in Redis.
    let keys = redis.cli(&["--scan", "--pattern", "clawgate:{fleeter}:*"]);
    assert!(
        keys.contains("clawgate:{fleeter}:scope:shared-echo"),
        "{keys}"
    );
    for h in &replicas {
        assert_eq!(metric(h, "clawgate_limits_store_up"), 1.0);
    }
}

#[test]
fn redis_paused_then_killed_each_failure_mode_behaves_as_configured_and_says_so() {
    let mut redis = Redis::start();
    let open = limited_replica(&redis, "open");
    let closed = limited_replica(&redis, "closed");
    let local = limited_replica(&redis, "local");
    wait_until("three live replicas", Duration::from_secs(10), || {
        metric(&local, "clawgate_limits_replicas") >= 3.0
    });
    assert_eq!(call(&open).status, 200);

    redis.pause();
    // open: every call passes, past the burst.
    for _ in 0..5 {
        assert_eq!(call(&open).status, 200);
    }
    // closed: refused, and the record says why.
    let r = call(&closed);
    assert_eq!(r.status, 429, "{r:?}");
    assert!(
        closed
            .decision(&r.request_id())
            .detail
            .unwrap_or_default()
            .contains("store"),
    );
    // local: the fallback starts empty (what the fleet spent on Redis is
    // not handed back as a fresh burst), and at 3/hour nothing refills.
    let r = call(&local);
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(local.decision(&r.request_id()).reason, "rate-limited");
    for (h, mode) in [(&open, "open"), (&closed, "closed"), (&local, "local")] {
        assert_eq!(metric(h, "clawgate_limits_store_up"), 0.0, "{mode}");
        assert!(metric(h, "clawgate_limits_fallback_total") >= 1.0, "{mode}");
        let health = h.admin(Some("ops"), &["/healthz"]).body_text();
        assert!(
            health.contains(&format!("limits-store: down (failure mode {mode})")),
            "{health}"
        );
    }

    redis.kill();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(call(&open).status, 200);
    assert_eq!(call(&closed).status, 429);
    assert_eq!(call(&local).status, 429);
    assert!(metric(&closed, "clawgate_limits_store_failures_total") >= 1.0);
}

fn create_override(h: &Harness, body: &str) -> common::Reply {
    h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            "/v1/overrides",
        ],
    )
}

#[test]
fn an_override_on_one_replica_refuses_on_the_others_within_a_second_and_lapses_once() {
    let pg = Postgres::start();
    let replicas: Vec<Harness> = ["o1", "o2", "o3"]
        .iter()
        .map(|n| replica(n, &pg, None, "", &[]))
        .collect();
    for h in &replicas {
        assert_eq!(call(h).status, 200);
    }
    // A kept-alive connection on replica 3 that made one call.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cert, key) = replicas[2].agent_cert("fleeter");
    let config = net::client_config(&replicas[2].certs.join("ca.pem"), Some((&cert, &key)));
    let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let mut kept = rt.block_on(async {
        let mut kept = net::tls(&config, loopback, replicas[2].port).await;
        let head = net::exchange(
            &mut kept,
            "GET /shared-echo/v1/kept HTTP/1.1\r\nhost: localhost\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        net::read_body(&mut kept, &head).await;
        kept
    });
    let r = create_override(
        &replicas[0],
        r#"{"kind":"isolate-agent","target":"fleeter","reason":"incident 7","expires_in":"4s"}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let created = Instant::now();
    let id = r.json()["id"].as_str().unwrap().to_owned();
    for h in &replicas[1..] {
        wait_until(
            "the override reaches every replica",
            Duration::from_secs(1),
            || call(h).status == 403,
        );
    }
    assert!(created.elapsed() < Duration::from_millis(1500));
    // The kept-alive connection on replica 3 is ended too.
    let closed = rt.block_on(net::closed_within(&mut kept, Duration::from_secs(2)));
    assert!(
        closed.is_some(),
        "replica 3 kept the isolated agent's connection open"
    );
    let refused = call(&replicas[2]);
    assert_eq!(refused.json()["reason"], "agent-isolated");
    assert_eq!(
        count(
            &pg,
            &format!(
                "request_id = '{}' AND chain = 'o3' AND reason = 'agent-isolated'",
                refused.request_id()
            )
        ),
        1
    );
    // Every replica's status says on how many replicas it is in force.
    wait_until(
        "three replicas report the override",
        Duration::from_secs(5),
        || {
            let listed = replicas[1].admin(Some("ops"), &["/v1/overrides"]).json();
            listed[0]["id"] == id.as_str() && listed[0]["in_force_on_replicas"] == 3
        },
    );
    // It lapses by itself, and the lapse is one record in the whole fleet.
    wait_until("the override lapses", Duration::from_secs(10), || {
        count(
            &pg,
            &format!("request_id = '{id}' AND kind = 'override' AND detail LIKE 'lapsed%'"),
        ) >= 1
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count(
            &pg,
            &format!("request_id = '{id}' AND kind = 'override' AND detail LIKE 'lapsed%'")
        ),
        1
    );
    for h in &replicas {
        assert_eq!(call(h).status, 200);
    }
    assert!(
        fleet_cmd(&["audit", "checkpoint", "--store", &pg.url()])
            .status
            .success()
    );
    assert!(verify(&pg).status.success());
}

/// The auditor's views on a PostgreSQL store: `audit stats --store` counts
/// every replica's chain, and the admin API's stats, findings and verify
/// answer from the store (verify walks every chain).
#[test]
fn stats_findings_and_verify_read_every_chain_of_the_store() {
    let pg = Postgres::start();
    let replicas: Vec<Harness> = ["s1", "s2"]
        .iter()
        .map(|n| replica(n, &pg, None, "", &[]))
        .collect();
    for i in 0..6 {
        assert_eq!(call(&replicas[i % 2]).status, 200);
    }
    let out = fleet_cmd(&[
        "audit",
        "stats",
        "--store",
        &pg.url(),
        "--by",
        "agent",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["total"]["allowed"], 6, "{s}");
    assert_eq!(s["groups"][0]["key"], "fleeter", "{s}");
    let out = fleet_cmd(&["audit", "findings", "--store", &pg.url()]);
    assert!(out.status.success(), "{out:?}");
    let r = replicas[0].admin(Some("ops"), &["/v1/audit/stats"]);
    assert_eq!(r.status, 200, "{r:?}");
    let api: serde_json::Value = serde_json::from_str(&r.body_text()).unwrap();
    assert_eq!(api["total"], s["total"]);
    let r = replicas[1].admin(Some("ops"), &["/v1/audit/verify"]);
    let v: serde_json::Value = serde_json::from_str(&r.body_text()).unwrap();
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["chains"], 2, "{v}");
    // A tampered record: the API says so.
    tamper(
        &pg,
        "UPDATE audit_records SET path = '/v1/other' WHERE chain = 's1' AND seq = 2",
    );
    let r = replicas[1].admin(Some("ops"), &["/v1/audit/verify"]);
    let v: serde_json::Value = serde_json::from_str(&r.body_text()).unwrap();
    assert_eq!(v["intact"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("s1"), "{v}");
}
