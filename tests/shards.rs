//! Per-core shards: the real binary with `--shards N`, real clients (curl)
//! over many connections, and the decision log read back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, Options, clawgate, raise_open_files_limit};

/// Connections each phase opens at once, spread over the shards by the
/// kernel (`SO_REUSEPORT` hashes the peer's address and port).
const CONNECTIONS: usize = 32;
/// Calls each connection makes, kept alive.
const CALLS: usize = 4;

fn sharded(shards: &str, extra: &[&str]) -> Harness {
    let mut serve_args = vec!["--shards".to_owned(), shards.to_owned()];
    serve_args.extend(extra.iter().map(|a| (*a).to_owned()));
    Harness::with(Options {
        serve_args,
        ..Options::default()
    })
}

/// The shard threads of `pid` and the CPU time each has used, in ns.
fn shard_cpu(pid: u32) -> BTreeMap<String, u64> {
    let mut shards = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm.starts_with("clawgate-shard") {
            let schedstat = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
            let ns = schedstat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            shards.insert(comm.to_owned(), ns);
        }
    }
    shards
}

/// The request ids of the decisions and of the outcomes recorded for
/// paths starting with `prefix`, and the outcomes' statuses.
fn recorded(h: &Harness, prefix: &str) -> (BTreeSet<String>, BTreeMap<String, Option<i64>>) {
    let mut decisions = BTreeSet::new();
    let mut outcomes = BTreeMap::new();
    for r in h.records() {
        if !r.path.as_deref().unwrap_or_default().starts_with(prefix) {
            continue;
        }
        match r.kind.as_str() {
            "decision" => {
                assert_eq!(r.reason, "allowed", "{r:?}");
                assert!(
                    decisions.insert(r.request_id.clone()),
                    "two decisions: {r:?}"
                );
            }
            "outcome" => {
                let status = r.status;
                assert!(
                    outcomes.insert(r.request_id.clone(), status).is_none(),
                    "two outcomes: {r:?}"
                );
            }
            other => panic!("unexpected record kind `{other}`: {r:?}"),
        }
    }
    (decisions, outcomes)
}

#[test]
fn calls_over_two_shards_are_all_recorded_and_a_drain_loses_no_outcome() {
    let mut h = sharded("2", &["--drain-timeout", "10s"]);
    assert!(
        h.stderr().contains("serving calls on 2 shards"),
        "{}",
        h.stderr()
    );
    let pid = h.pid();
    let before = shard_cpu(pid);
    assert_eq!(
        before.keys().cloned().collect::<Vec<_>>(),
        ["clawgate-shard0", "clawgate-shard1"],
        "one thread per shard"
    );

    // Many connections at once, each with calls kept alive on it.
    let paths: Vec<Vec<String>> = (0..CONNECTIONS)
        .map(|c| {
            (0..CALLS)
                .map(|i| format!("/echo/v1/items/many-{c}-{i}"))
                .collect()
        })
        .collect();
    let statuses = Client::of(&h).run(&paths);
    for (c, statuses) in statuses.iter().enumerate() {
        assert_eq!(statuses, &vec![200; CALLS], "connection {c}");
    }
    let calls = CONNECTIONS * CALLS;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (decisions, outcomes) = loop {
        let (decisions, outcomes) = recorded(&h, "/v1/items/many-");
        if outcomes.len() >= calls || Instant::now() > deadline {
            break (decisions, outcomes);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(decisions.len(), calls, "a decision record for every call");
    assert_eq!(
        outcomes.keys().cloned().collect::<BTreeSet<_>>(),
        decisions,
        "an outcome record for every decision"
    );
    assert!(outcomes.values().all(|s| *s == Some(200)), "{outcomes:?}");
    // Both shards served: the kernel spread the connections over them.
    let after = shard_cpu(pid);
    let used: Vec<u64> = after
        .iter()
        .map(|(name, ns)| ns.saturating_sub(before[name]))
        .collect();
    let total: u64 = used.iter().sum();
    assert!(
        used.iter().all(|ns| *ns * 10 >= total),
        "every shard served part of the calls: {used:?} ns"
    );

    // A drain: calls in flight on both shards when SIGTERM arrives finish,
    // and every one of them has its outcome record once clawgate is gone.
    let slow: Vec<Vec<String>> = (0..CONNECTIONS)
        .map(|c| vec![format!("/echo/v1/items/drain-{c}/slow/1500")])
        .collect();
    let client = Client::of(&h);
    let in_flight = std::thread::spawn(move || client.run(&slow));
    let deadline = Instant::now() + Duration::from_secs(20);
    while recorded(&h, "/v1/items/drain-").0.len() < CONNECTIONS {
        assert!(Instant::now() < deadline, "the slow calls were not decided");
        std::thread::sleep(Duration::from_millis(20));
    }
    h.stop();
    let statuses = in_flight.join().unwrap();
    assert!(
        statuses.iter().all(|s| s == &vec![200]),
        "calls in flight finish within the drain: {statuses:?}"
    );
    let (decisions, outcomes) = recorded(&h, "/v1/items/drain-");
    assert_eq!(decisions.len(), CONNECTIONS);
    assert_eq!(
        outcomes.keys().cloned().collect::<BTreeSet<_>>(),
        decisions,
        "no outcome record lost in the drain"
    );
    assert!(outcomes.values().all(|s| *s == Some(200)), "{outcomes:?}");
    assert!(!h.stderr().contains("record dropped"), "{}", h.stderr());
    let verify = clawgate(&["audit", "verify", "--audit", h.audit.to_str().unwrap()]);
    assert!(verify.status.success(), "{verify:?}");
}

/// curl as agent `research`, from any thread.
struct Client {
    certs: std::path::PathBuf,
    base: String,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Client {
    fn of(h: &Harness) -> Client {
        let (cert, key) = h.agent_cert("research");
        Client {
            certs: h.certs.clone(),
            base: h.base(),
            cert,
            key,
        }
    }

    /// One curl per connection, all at once, each making its calls on its
    /// kept-alive connection; returns every call's status.
    fn run(&self, paths: &[Vec<String>]) -> Vec<Vec<u16>> {
        let children: Vec<_> = paths
            .iter()
            .map(|paths| {
                let mut command = Command::new("curl");
                command
                    .args(["-sS", "--max-time", "30", "--cacert"])
                    .arg(self.certs.join("ca.pem"))
                    .arg("--cert")
                    .arg(&self.cert)
                    .arg("--key")
                    .arg(&self.key);
                for path in paths {
                    command
                        .args(["-o", "/dev/null", "-w", "%{http_code}\\n"])
                        .arg(format!("{}{path}", self.base));
                }
                command
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        children
            .into_iter()
            .map(|child| {
                let out = child.wait_with_output().unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| l.trim().parse().unwrap_or(0))
                    .collect()
            })
            .collect()
    }
}

/// Idle peers from one source against four shards: more than the
/// listener's per-source bound, fewer than four times it.
const IDLE: usize = 700;

#[test]
fn the_shards_of_a_listener_share_one_handshake_gate() {
    // The test holds a descriptor per peer; take what the system allows.
    raise_open_files_limit();
    let h = sharded("4", &[]);
    assert!(h.stderr().contains("serving calls on 4 shards"));
    let pid = h.pid();
    let port = h.port;
    let held_before = common::open_fds(pid);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let peers = rt.block_on(async {
        let mut peers = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            if let Ok(Ok(tcp)) =
                tokio::time::timeout(Duration::from_secs(2), common::tcp_from(source, port)).await
            {
                peers.push(tcp);
            }
        }
        peers
    });
    assert_eq!(peers.len(), IDLE, "every idle peer connected");
    // Spread over four shards, each shard saw fewer than the per-source
    // bound (256); the bound held for the listener all the same.
    common::dropped_while_pending(&h, "127.0.0.2:");
    std::thread::sleep(Duration::from_millis(300));
    let held = common::open_fds(pid) - held_before;
    assert!(
        (200..=256 + 16).contains(&held),
        "clawgate holds {held} of {IDLE} idle peers from one source; the bound is 256"
    );
    drop(peers);
}
