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
mod stores;

use std::process::Output;

use common::{Harness, Options, clawgate};
use stores::{Postgres, Redis};

const SCOPE: &str = r#"
[[scope]]
name = "shared-echo"
upstream = "https://{echo}"
route = "shared-echo"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]
{extra}

[[scope.allow]]
id = "all"
paths = ["/v1/**"]

[[agent]]
name = "fleeter"
identities = ["spiffe://clawgate.local/agent/fleeter"]
scopes = ["shared-echo"]

[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
auditors = ["spiffe://clawgate.local/agent/ops"]
"#;

fn replica(name: &str, pg: &Postgres, redis: Option<&Redis>, scope_extra: &str, more: &[&str]) -> Harness {
    let mut serve_args: Vec<String> = vec![
        "--store".into(),
        pg.url(),
        "--replica".into(),
        name.into(),
    ];
    if let Some(redis) = redis {
        serve_args.extend(["--limits".into(), redis.url()]);
    }
    serve_args.extend(more.iter().map(|s| (*s).to_owned()));
    Harness::with(Options {
        extra_policy: vec![("fleet.toml", SCOPE.replace("{extra}", scope_extra))],
        agents: vec!["fleeter", "ops"],
        serve_args,
        ..Options::default()
    })
}

fn call(h: &Harness) -> common::Reply {
    h.curl(Some("fleeter"), &[&format!("{}/shared-echo/v1/x", h.base())])
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

fn count(pg: &Postgres, sql_where: &str) -> i64 {
    pg.psql(
        "postgres",
        "clawgate",
        &format!("SELECT count(*) FROM audit_records WHERE {sql_where}"),
    )
    .parse()
    .unwrap()
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
        "audit", "query", "--store", &pg.url(), "--agent", "fleeter", "--format", "json",
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

    let second = std::process::Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off", "--policy"])
        .arg(&first.policy)
        .arg("--certs")
        .arg(&first.certs)
        .arg("--audit")
        .arg(first.path("second.db"))
        .args(["--store", &pg.url(), "--replica", "solo"])
        .env("ECHO_API_TOKEN", common::CANARY)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("chain `solo` is in use"), "{said}");
    assert_eq!(call(&first).status, 200);
    assert!(verify(&pg).status.success());
}
