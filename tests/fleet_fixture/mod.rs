//! The fleet tests' shared fixture: the scope every replica serves, a
//! replica started against a store, and a count of the store's records.
#![allow(
    clippy::unwrap_used,
    dead_code,
    reason = "test harness: a failed setup step should stop the test loudly"
)]

use crate::common::{Harness, Options};
use crate::stores::Postgres;

/// The scope and agents every replica serves; `{extra}` takes more lines
/// of the scope's table.
pub const SCOPE: &str = r#"
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

/// Replica `name` on the store at `store`: [`SCOPE`] with `scope_extra`,
/// the policy files `policy` beside it, and the serve flags `more`.
pub fn replica_with(
    name: &str,
    store: &str,
    scope_extra: &str,
    policy: Vec<(&'static str, String)>,
    more: &[String],
) -> Harness {
    let mut serve_args: Vec<String> = vec![
        "--store".into(),
        store.to_owned(),
        "--replica".into(),
        name.into(),
    ];
    serve_args.extend(more.iter().cloned());
    let mut extra_policy = vec![("fleet.toml", SCOPE.replace("{extra}", scope_extra))];
    extra_policy.extend(policy);
    Harness::with(Options {
        extra_policy,
        agents: vec!["fleeter", "ops"],
        serve_args,
        ..Options::default()
    })
}

/// Records in the store matching `sql_where`.
pub fn count(pg: &Postgres, sql_where: &str) -> i64 {
    pg.psql(
        "postgres",
        "clawgate",
        &format!("SELECT count(*) FROM audit_records WHERE {sql_where}"),
    )
    .parse()
    .unwrap()
}
