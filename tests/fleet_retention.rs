//! Retention on a fleet's PostgreSQL store, with the real binary, real
//! replicas (real TLS, curl) and a throwaway PostgreSQL: export, the
//! archive checked on its own, prune (only as the role
//! `clawgate_retention`, only what a recorded archive covers), verify from
//! the pruning anchors, restore into a fresh store, `serve --retain` on a
//! schedule; and `audit findings` asked of the admin API. Every case
//! checks the store's rows, not only exit codes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;
mod fleet_fixture;
mod stores;

use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Harness, clawgate};
use fleet_fixture::{count, replica_with};
use stores::Postgres;

fn replica_at(
    name: &str,
    store: &str,
    policy: Vec<(&'static str, String)>,
    more: &[&str],
) -> Harness {
    let more: Vec<String> = more.iter().map(|s| (*s).to_owned()).collect();
    replica_with(name, store, "", policy, &more)
}

fn replica(name: &str, pg: &Postgres) -> Harness {
    replica_at(name, &pg.url(), Vec::new(), &[])
}

/// The store as the role that may prune.
fn retention_url(pg: &Postgres) -> String {
    pg.url_as("clawgate_retention")
}

fn call(h: &Harness) {
    let r = h.curl(
        Some("fleeter"),
        &[&format!("{}/shared-echo/v1/x", h.base())],
    );
    assert_eq!(r.status, 200, "{r:?}");
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let out = clawgate(args);
    assert!(out.status.success(), "clawgate {args:?}: {out:?}");
    stdout(&out)
}

/// (chain, seq, hash, prev_hash) of the replicas' records that pass `sql_where`.
fn rows(pg: &Postgres, sql_where: &str) -> BTreeSet<String> {
    pg.psql(
        "postgres",
        "clawgate",
        &format!(
            "SELECT chain || ' ' || seq || ' ' || hash || ' ' || prev_hash FROM audit_records
             WHERE chain <> ':ops' AND {sql_where} ORDER BY chain, seq"
        ),
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A time just after everything written so far.
fn cut() -> String {
    std::thread::sleep(Duration::from_millis(20));
    let t = clawgate::audit::now_rfc3339();
    std::thread::sleep(Duration::from_millis(20));
    t
}

#[test]
fn export_verify_prune_verify_and_restore_on_postgresql() {
    let pg = Postgres::start();
    let replicas = [replica("r1", &pg), replica("r2", &pg)];
    for i in 0..6 {
        call(&replicas[i % 2]);
    }
    wait_until("six outcomes", Duration::from_secs(5), || {
        count(&pg, "kind = 'outcome'") == 6
    });
    let until = cut();
    // Later records: the archived ones are not the chains' last.
    call(&replicas[0]);
    call(&replicas[1]);
    wait_until("eight outcomes", Duration::from_secs(5), || {
        count(&pg, "kind = 'outcome'") == 8
    });
    let archived = rows(&pg, &format!("ts < '{until}'"));
    assert_eq!(
        archived.len(),
        2 + 12,
        "a policy record per replica, two per call"
    );

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("fleet.jsonl.gz");
    let archive_s = archive.to_str().unwrap();
    let url = pg.url();
    // The replicas' role may not write the operations chain, where the
    // manifests that pruning trusts live.
    let refused = clawgate(&[
        "audit", "export", "--store", &url, "--until", &until, archive_s,
    ]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        stderr(&refused).contains("only the role clawgate_retention writes the operations chain"),
        "{}",
        stderr(&refused)
    );
    assert!(!archive.exists());
    let keeper = retention_url(&pg);
    let out = ok(&[
        "audit", "export", "--store", &keeper, "--until", &until, archive_s,
    ]);
    assert!(out.starts_with("exported 2 chains"), "{out}");
    assert!(out.contains("chain `r1`: 7 records (1..7)"), "{out}");
    // The archive checks on its own: one section per chain, each with its
    // own anchor (the first record's prev_hash) and manifest.
    let out = ok(&["audit", "verify", "--archive", archive_s]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("ok: chain `r1`: archive of 7 records, 1..7"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("ok: chain `r2`: archive of 7 records, 1..7"),
        "{out}"
    );
    // The manifests are records of the operations chain.
    assert_eq!(count(&pg, "chain = ':ops' AND kind = 'archive'"), 2);
    let noted = pg.psql(
        "postgres",
        "clawgate",
        "SELECT detail::jsonb #>> '{manifest,last_hash}' FROM audit_records
         WHERE chain = ':ops' AND kind = 'archive' AND detail::jsonb #>> '{manifest,chain}' = 'r1'",
    );
    assert!(
        archived
            .iter()
            .any(|r| r.starts_with("r1 7 ") && r.contains(&noted))
    );

    // The replicas' role cannot prune: the database refuses, nothing moves.
    let total = count(&pg, "true");
    let refused = clawgate(&["audit", "prune", "--store", &url, "--before", &until]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        stderr(&refused).contains("only the role clawgate_retention writes the operations chain"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(count(&pg, "true"), total);

    let out = ok(&[
        "audit",
        "prune",
        "--store",
        &retention_url(&pg),
        "--before",
        &until,
    ]);
    assert!(
        out.contains("pruned 7 records of chain `r1`; it now starts after anchor 7 "),
        "{out}"
    );
    assert!(out.contains("pruned 7 records of chain `r2`"), "{out}");
    // Figures over a window that reaches past the prune say so.
    let stats = clawgate(&[
        "audit", "stats", "--store", &url, "--since", "24h", "--format", "json",
    ]);
    assert!(stats.status.success(), "{stats:?}");
    assert!(
        stderr(&stats).contains("note: the log was pruned: these figures cover only records from"),
        "{stats:?}"
    );
    let figures: serde_json::Value = serde_json::from_str(&stdout(&stats)).unwrap();
    assert!(
        figures["covers_from"]
            .as_str()
            .is_some_and(|t| t >= until.as_str()),
        "{figures}"
    );
    // Exactly the archived records are gone; the later ones stay.
    assert_eq!(
        count(&pg, &format!("chain <> ':ops' AND ts < '{until}'")),
        0
    );
    assert_eq!(count(&pg, "chain IN ('r1', 'r2')"), 4);
    assert_eq!(
        count(
            &pg,
            "chain = ':ops' AND kind = 'prune' AND reason = 'log-pruned'"
        ),
        2
    );
    // Each chain's first record hangs on the anchor its prune record names.
    for chain in ["r1", "r2"] {
        let anchor = pg.psql(
            "postgres",
            "clawgate",
            &format!(
                "SELECT (detail::jsonb ->> 'anchor_seq') || ' ' || (detail::jsonb ->> 'anchor_hash')
                 FROM audit_records WHERE chain = ':ops' AND kind = 'prune'
                   AND detail::jsonb ->> 'chain' = '{chain}'"
            ),
        );
        let last_archived = archived
            .iter()
            .find(|r| r.starts_with(&format!("{chain} 7 ")))
            .unwrap();
        let (seq_hash, _) = last_archived[chain.len() + 1..].rsplit_once(' ').unwrap();
        assert_eq!(anchor, seq_hash);
        let first = pg.psql(
            "postgres",
            "clawgate",
            &format!("SELECT seq || ' ' || prev_hash FROM audit_records WHERE chain = '{chain}' ORDER BY seq LIMIT 1"),
        );
        let (_, hash) = seq_hash.split_once(' ').unwrap();
        assert_eq!(first, format!("8 {hash}"));
    }
    ok(&["audit", "checkpoint", "--store", &url]);
    let out = ok(&["audit", "verify", "--store", &url]);
    assert!(
        out.contains("in 3 chains (2 from a pruned anchor)"),
        "{out}"
    );

    // Restore: the archive into a fresh store, identical rows, intact chains.
    let fresh = Postgres::start();
    let out = ok(&["audit", "restore", "--store", &fresh.url(), archive_s]);
    assert!(
        out.contains("restored 7 records (1..7) into chain `r1`"),
        "{out}"
    );
    assert!(
        out.contains("restored 7 records (1..7) into chain `r2`"),
        "{out}"
    );
    assert_eq!(rows(&fresh, "true"), archived);
    let out = ok(&["audit", "verify", "--store", &fresh.url()]);
    assert!(out.starts_with("ok: 14 records in 2 chains"), "{out}");
    // Restored twice: refused, nothing added.
    let again = clawgate(&["audit", "restore", "--store", &fresh.url(), archive_s]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("does not continue chain `r1`"),
        "{}",
        stderr(&again)
    );
    assert_eq!(count(&fresh, "true"), 14);

    // A record cut beyond the anchor is still caught.
    pg.psql(
        "postgres",
        "clawgate",
        "SET session_replication_role = replica; DELETE FROM audit_records WHERE chain = 'r1' AND seq = 8",
    );
    let out = clawgate(&["audit", "verify", "--store", &url]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).contains("chain `r1` record 8: missing: the chain was pruned up to record 7"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_prune_of_unarchived_records_is_refused_and_removes_nothing() {
    let pg = Postgres::start();
    let h = replica("u1", &pg);
    for _ in 0..3 {
        call(&h);
    }
    wait_until("three outcomes", Duration::from_secs(5), || {
        count(&pg, "kind = 'outcome'") == 3
    });
    let before = rows(&pg, "true");
    let store = retention_url(&pg);
    let refused = clawgate(&["audit", "prune", "--store", &store, "--before", "0s"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        stderr(&refused).contains(
            "refused: chain `u1` records 1..7 before that time are not covered by an archive recorded in the log"
        ),
        "{}",
        stderr(&refused)
    );
    assert_eq!(rows(&pg, "true"), before);
    assert_eq!(count(&pg, "kind = 'prune'"), 0);

    // The database refuses on its own, whoever asks and whatever they wrote.
    let hash2 = pg.psql(
        "postgres",
        "clawgate",
        "SELECT hash FROM audit_records WHERE chain = 'u1' AND seq = 2",
    );
    let out = pg.try_psql("clawgate", "clawgate", "SELECT clawgate_prune('u1', 2)");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied for function"));
    // Nor may it forge a manifest in the operations chain.
    let out = pg.try_psql(
        "clawgate",
        "clawgate",
        "INSERT INTO audit_records (chain, seq, ts, kind, request_id, reason, prev_hash, hash)
         VALUES (':ops', 999, 'x', 'archive', 'x', 'log-archived', 'x', 'x')",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only the role clawgate_retention"),
        "{out:?}"
    );
    // The trigger's setting opens nothing to a role without DELETE.
    let out = pg.try_psql(
        "clawgate",
        "clawgate",
        "SET clawgate.prune_chain = 'u1'; SET clawgate.prune_upto = '99'; DELETE FROM audit_records WHERE chain = 'u1'",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied for table audit_records")
    );
    let out = pg.try_psql(
        "clawgate_retention",
        "clawgate",
        "SELECT clawgate_prune('u1', 2)",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no prune record names record 2 of chain u1"),
        "{out:?}"
    );
    // A forged prune record without an archive: still refused.
    let out = pg.try_psql(
        "clawgate_retention",
        "clawgate",
        &format!(
            "BEGIN;
             INSERT INTO audit_chains (chain, genesis, seq, hash) VALUES (':ops', 'g', 0, 'g') ON CONFLICT DO NOTHING;
             INSERT INTO audit_records (chain, seq, ts, kind, request_id, reason, detail, prev_hash, hash)
             VALUES (':ops', 999, 'x', 'prune', 'x', 'log-pruned',
                     '{{\"chain\":\"u1\",\"anchor_seq\":2,\"anchor_hash\":\"{hash2}\"}}', 'x', 'x');
             SELECT clawgate_prune('u1', 2);
             COMMIT;"
        ),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("records of chain u1 up to 2 are not all covered by an archive"),
        "{out:?}"
    );
    assert_eq!(rows(&pg, "true"), before);
    ok(&["audit", "verify", "--store", &pg.url()]);

    // Partly archived: the covered part goes, the rest is kept and named.
    let until = cut();
    call(&h);
    wait_until("four outcomes", Duration::from_secs(5), || {
        count(&pg, "kind = 'outcome'") == 4
    });
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("part.jsonl.gz");
    ok(&[
        "audit",
        "export",
        "--store",
        &store,
        "--until",
        &until,
        archive.to_str().unwrap(),
    ]);
    let out = clawgate(&["audit", "prune", "--store", &store, "--before", "0s"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("pruned 7 records of chain `u1`"),
        "{out:?}"
    );
    assert!(
        stderr(&out).contains(
            "kept, not covered by an archive recorded in the log: chain `u1` records 8..9"
        ),
        "{out:?}"
    );
    assert_eq!(count(&pg, "chain = 'u1'"), 2);
    ok(&["audit", "verify", "--store", &pg.url()]);
}

#[test]
fn serve_retain_archives_and_prunes_every_chain_on_a_schedule() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let archives = dir.path().join("archive");
    let archives_s = archives.to_str().unwrap().to_owned();
    // One replica prunes for the fleet, with the role that may.
    let plain = replica("k1", &pg);
    let keeper = replica_at(
        "k2",
        &retention_url(&pg),
        Vec::new(),
        &[
            // Long enough that the four calls and their TLS handshakes are
            // counted whole before the keeper archives any of them, on a
            // loaded machine too.
            "--retain",
            "6s",
            "--archive-dir",
            &archives_s,
            "--retain-every",
            "500ms",
        ],
    );
    for _ in 0..2 {
        call(&plain);
        call(&keeper);
    }
    wait_until("four outcomes", Duration::from_secs(5), || {
        count(&pg, "kind = 'outcome'") == 4
    });
    let written = rows(&pg, "true");
    assert_eq!(written.len(), 10);
    // Past the period, both chains are archived, then pruned to their last record.
    wait_until(
        "both chains archived whole and pruned",
        Duration::from_secs(30),
        || {
            count(&pg, "chain = 'k1'") == 1
                && count(&pg, "chain = 'k2'") == 1
                && count(
                    &pg,
                    "chain = ':ops' AND kind = 'archive' AND (detail::jsonb #>> '{manifest,last_seq}')::bigint = 5",
                ) == 2
        },
    );
    assert!(count(&pg, "chain = ':ops' AND kind = 'prune'") >= 2);
    ok(&["audit", "checkpoint", "--store", &pg.url()]);
    let out = ok(&["audit", "verify", "--store", &pg.url()]);
    assert!(out.contains("(2 from a pruned anchor)"), "{out}");
    // The archives hold everything written, and restore in order into a
    // fresh store that verifies.
    let mut files: Vec<_> = std::fs::read_dir(&archives)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let fresh = Postgres::start();
    for f in &files {
        ok(&["audit", "verify", "--archive", f.to_str().unwrap()]);
        ok(&[
            "audit",
            "restore",
            "--store",
            &fresh.url(),
            f.to_str().unwrap(),
        ]);
    }
    let restored = rows(&fresh, "true");
    assert!(
        written.is_subset(&restored),
        "{written:?} not all in {restored:?}"
    );
    ok(&["audit", "verify", "--store", &fresh.url()]);
}

/// `audit findings` asked of the admin API: the log's findings plus drift
/// and the exceptions and overrides lapsing within 24 h, from the same code
/// as `/v1/audit/findings`.
#[test]
fn findings_from_the_cli_name_drift_and_what_lapses_within_a_day() {
    let pg = Postgres::start();
    let expires =
        clawgate::audit::format_ts(time::OffsetDateTime::now_utc() + time::Duration::hours(2));
    let exception = format!(
        r#"
[[exception]]
id = "inc-9"
agent = "research"
scopes = ["shared-echo"]
reason = "findings test"
approved_by = "alice"
expires = "{expires}"
"#
    );
    let h = replica_at("f1", &pg.url(), vec![("exceptions.toml", exception)], &[]);
    call(&h);
    let (cert, key) = h.agent_cert("ops");
    let admin = format!("https://localhost:{}", h.admin_port);
    let ca = h.certs.join("ca.pem");
    let findings = || -> Vec<serde_json::Value> {
        ok(&[
            "audit",
            "findings",
            "--admin",
            &admin,
            "--ca",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--json",
        ])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
    };
    let found = findings();
    assert!(
        found.iter().any(|f| f["kind"] == "lapsing-soon"
            && f["subject"] == "inc-9"
            && f["detail"]
                .as_str()
                .unwrap()
                .starts_with("exception lapses in")),
        "{found:?}"
    );
    assert!(!found.iter().any(|f| f["kind"] == "drift"), "{found:?}");
    let r = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"kind":"isolate-agent","target":"reporter","reason":"findings cli","expires_in":"3h"}"#,
            "/v1/overrides",
        ],
    );
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    let found = findings();
    assert!(found.iter().any(|f| f["kind"] == "drift"), "{found:?}");
    assert!(
        found.iter().any(|f| f["kind"] == "lapsing-soon"
            && f["detail"]
                .as_str()
                .unwrap()
                .starts_with("override lapses in")),
        "{found:?}"
    );
    // The table form says the same.
    let table = ok(&[
        "audit",
        "findings",
        "--admin",
        &admin,
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(table.lines().any(|l| l.starts_with("drift ")), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("lapsing-soon") && l.contains("inc-9")),
        "{table}"
    );
}
