//! Ask: calls an `[[scope.ask]]` rule holds until a person answers, through
//! the real binary, curl (gateway and forward proxy), the admin API and the
//! `clawgate approvals` CLI; each step checked in the decision log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod common;

use common::{CANARY, Harness, Options, Reply};

const POLICY: &str = r#"
[[agent]]
name = "builder"
identities = ["spiffe://clawgate.local/agent/builder"]
scopes = ["deploys", "deploys-held"]

[[agent]]
name = "builder2"
identities = ["spiffe://clawgate.local/agent/builder2"]
scopes = ["deploys-held"]

[roles]
admins = ["spiffe://clawgate.local/agent/ops"]
auditors = ["spiffe://clawgate.local/agent/watcher"]

[[scope]]
name = "deploys"
upstream = "https://{echo}"
route = "deploys"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1"]

[scope.credential]
kind = "secret"
env = "ECHO_API_TOKEN"
header = "authorization"
format = "Bearer {}"

[[scope.allow]]
id = "all-v1"
paths = ["/v1/**"]

[[scope.deny]]
id = "never-root"
paths = ["/v1/deploy/root"]

[[scope.ask]]
id = "prod-deploys"
methods = ["POST"]
paths = ["/v1/deploy/**"]
approvers = ["admins", "spiffe://clawgate.local/agent/builder", "spiffe://clawgate.local/agent/watcher"]
why = "a production deploy"
hold = "0s"

[[scope.ask]]
id = "quick"
methods = ["POST"]
paths = ["/v1/quick/**"]
approvers = ["admins"]
why = "short-lived"
ttl = "1s"

[[scope]]
name = "deploys-held"
upstream = "https://localhost:{echo_port}"
route = "held"
ca_file = "upstream-ca.pem"
allow_private = ["127.0.0.1", "::1"]

[[scope.allow]]
id = "all-v1"
paths = ["/v1/**"]

[[scope.ask]]
id = "held-deploys"
paths = ["/v1/deploy/**"]
approvers = ["admins"]
why = "held deploy"
hold = "60s"
"#;

fn harness() -> Harness {
    Harness::with(Options {
        extra_policy: vec![("approvals.toml", POLICY.to_owned())],
        agents: vec!["builder", "builder2", "ops", "watcher"],
        ..Options::default()
    })
}

fn post(h: &Harness, agent: &str, path: &str, body: &str) -> Reply {
    let url = format!("{}{path}", h.base());
    h.curl(Some(agent), &["-X", "POST", "--data-binary", body, &url])
}

fn approval_records(h: &Harness, id: &str, reason: &str) -> Vec<clawgate::audit::DecisionRecord> {
    h.records()
        .into_iter()
        .filter(|r| r.kind == "approval" && r.request_id == id && r.reason == reason)
        .collect()
}

fn approval_id(reply: &Reply) -> String {
    assert_eq!(reply.status, 403, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["reason"], "approval-required", "{body}");
    body["approval_id"].as_str().unwrap().to_owned()
}

fn cli(h: &Harness, who: &str, args: &[&str]) -> std::process::Output {
    let (cert, key) = h.agent_cert(who);
    let admin = format!("https://localhost:{}", h.admin_port);
    let ca = h.certs.join("ca.pem");
    let mut full: Vec<&str> = vec!["approvals"];
    full.extend(args);
    full.extend([
        "--admin",
        &admin,
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    common::clawgate(&full)
}

#[test]
fn retry_mode_approved_once_then_asked_again_denied_and_changed_bodies_ask_again() {
    let h = harness();
    let first = post(&h, "builder", "/deploys/v1/deploy/prod", r#"{"v":1}"#);
    let id = approval_id(&first);
    assert!(first.header("retry-after").is_some(), "{first:?}");
    assert!(
        first.json()["approval_url"]
            .as_str()
            .unwrap()
            .ends_with(&id)
    );
    assert!(h.seen().is_empty(), "nothing reached the upstream");
    let d = h.decision(&first.request_id());
    assert_eq!(d.reason, "approval-required");
    assert!(d.detail.as_deref().unwrap().contains(&id), "{d:?}");
    assert_eq!(approval_records(&h, &id, "approval-requested").len(), 1);

    // Asking again while pending names the same approval.
    let again = post(&h, "builder", "/deploys/v1/deploy/prod", r#"{"v":1}"#);
    assert_eq!(approval_id(&again), id);
    assert_eq!(approval_records(&h, &id, "approval-requested").len(), 1);

    // `policy explain` names the ask rule.
    let out = common::clawgate(&[
        "policy",
        "explain",
        h.policy.to_str().unwrap(),
        "POST",
        "https://clawgate/deploys/v1/deploy/prod",
        "--agent",
        "builder",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["ask"]["name"], "prod-deploys", "{e}");
    assert!(
        e["ask"]["verdict"]
            .as_str()
            .unwrap()
            .contains("a production deploy")
    );

    // A deny rule still wins over ask.
    let root = post(&h, "builder", "/deploys/v1/deploy/root", "{}");
    assert_eq!(root.json()["reason"], "denied-by-rule");

    // The list shows it, without the credential.
    let list = h.admin(Some("ops"), &["/v1/approvals"]);
    assert_eq!(list.status, 200, "{list:?}");
    assert!(list.body_text().contains(&id));
    assert!(list.body_text().contains("a production deploy"));
    assert!(!list.body_text().contains(CANARY));

    // Approve from the CLI.
    let out = cli(&h, "ops", &["approve", &id]);
    assert!(out.status.success(), "{out:?}");
    let granted = approval_records(&h, &id, "approval-granted");
    assert_eq!(granted.len(), 1);
    assert!(
        granted[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("by spiffe://clawgate.local/agent/ops")
    );

    // A changed body is another request: asked again.
    let changed = post(&h, "builder", "/deploys/v1/deploy/prod", r#"{"v":2}"#);
    assert_ne!(approval_id(&changed), id);

    // The approved call goes through, once, with the credential injected.
    let done = post(&h, "builder", "/deploys/v1/deploy/prod", r#"{"v":1}"#);
    assert_eq!(done.status, 200, "{done:?}");
    let seen = h.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/deploy/prod");
    let d = h.decision(&done.request_id());
    assert_eq!(d.decision.as_deref(), Some("allow"));
    assert!(
        d.detail
            .as_deref()
            .unwrap()
            .contains(&format!("approval {id} granted")),
        "{d:?}"
    );

    // uses = 1: the identical call asks again.
    let third = post(&h, "builder", "/deploys/v1/deploy/prod", r#"{"v":1}"#);
    let next = approval_id(&third);
    assert_ne!(next, id);
    assert_eq!(h.seen().len(), 1);

    // Denied, with a reason: refused with the reason code.
    let out = cli(
        &h,
        "ops",
        &["deny", &next, "--reason", "not during the freeze"],
    );
    assert!(out.status.success(), "{out:?}");
    let denied = post(&h, "builder", "/deploys/v1/deploy/prod", r#"{"v":1}"#);
    assert_eq!(
        (denied.status, denied.json()["reason"].as_str()),
        (403, Some("approval-denied"))
    );
    let records = approval_records(&h, &next, "approval-denied");
    assert_eq!(records.len(), 1);
    assert!(
        records[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("not during the freeze")
    );
    assert_eq!(h.seen().len(), 1);
    for r in h.records() {
        assert!(
            !format!("{r:?}").contains(CANARY),
            "a record holds the secret: {r:?}"
        );
    }
}

#[test]
fn the_agent_itself_and_auditors_cannot_approve_and_are_recorded() {
    let h = harness();
    let reply = post(&h, "builder", "/deploys/v1/deploy/x", "{}");
    let id = approval_id(&reply);
    let path = format!("/v1/approvals/{id}/approve");
    for (who, reason) in [
        ("builder", "approver-not-allowed"),
        ("watcher", "approver-not-allowed"),
        ("research", "admin-role-required"),
    ] {
        let refused = h.admin(Some(who), &["-X", "POST", "--data", "{}", &path]);
        assert_eq!(refused.status, 403, "{who}: {refused:?}");
        assert_eq!(refused.json()["reason"], reason, "{who}");
        let d = h.decision(&refused.request_id());
        assert_eq!(d.mode.as_deref(), Some("admin"));
        assert_eq!(d.reason, reason);
    }
    assert!(approval_records(&h, &id, "approval-granted").is_empty());
    // Still pending: the agent is still asked to wait.
    let again = post(&h, "builder", "/deploys/v1/deploy/x", "{}");
    assert_eq!(approval_id(&again), id);
    // An auditor may read it.
    let show = h.admin(Some("watcher"), &[&format!("/v1/approvals/{id}")]);
    assert_eq!(show.status, 200, "{show:?}");
    assert_eq!(show.json()["state"], "pending");
}

#[test]
fn an_unanswered_request_expires_and_the_call_is_refused() {
    let h = harness();
    let reply = post(&h, "builder", "/deploys/v1/quick/a", "{}");
    let id = approval_id(&reply);
    // Waits out the 1 s ttl (a wait for a state, not a timed assertion).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let late = post(&h, "builder", "/deploys/v1/quick/a", "{}");
    assert_eq!(
        (late.status, late.json()["reason"].as_str()),
        (403, Some("approval-expired"))
    );
    assert_eq!(approval_records(&h, &id, "approval-expired").len(), 1);
    let approve = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "--data",
            "{}",
            &format!("/v1/approvals/{id}/approve"),
        ],
    );
    assert_eq!(approve.status, 409, "{approve:?}");
    // Told once: the next identical call asks afresh.
    let fresh = post(&h, "builder", "/deploys/v1/quick/a", "{}");
    assert_ne!(approval_id(&fresh), id);
    assert!(h.seen().is_empty());
}

#[test]
fn forward_proxy_refusal_carries_proxy_status_and_the_approval() {
    let h = harness();
    let url = format!("http://{}/v1/deploy/fp", h.echo.addr);
    let reply = h.curl_via_proxy("builder", &["-X", "POST", "--data", "x=1", &url]);
    let id = approval_id(&reply);
    let status = reply.header("proxy-status").unwrap();
    assert!(status.contains("approval-required"), "{status}");
    let out = cli(&h, "ops", &["approve", &id]);
    assert!(out.status.success(), "{out:?}");
    let done = h.curl_via_proxy("builder", &["-X", "POST", "--data", "x=1", &url]);
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(h.seen().len(), 1);
    let d = h.decision(&done.request_id());
    assert_eq!(d.mode.as_deref(), Some("forward"));
    assert!(d.detail.as_deref().unwrap().contains(&id));
}

fn held_call(
    h: &Harness,
    agent: &'static str,
    path: &'static str,
) -> std::thread::JoinHandle<Reply> {
    let url = format!("{}{path}", h.base());
    let ca = h.certs.join("ca.pem").display().to_string();
    let (cert, key) = h.agent_cert(agent);
    std::thread::spawn(move || {
        common::curl(&[
            "--cacert".into(),
            ca,
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "-X".into(),
            "POST".into(),
            "--data".into(),
            "go".into(),
            url,
        ])
    })
}

fn pending_id(h: &Harness, rule: &str) -> String {
    let requested = h.wait_for("an approval request", |r| {
        r.kind == "approval" && r.reason == "approval-requested" && r.rule.as_deref() == Some(rule)
    });
    requested[0].request_id.clone()
}

#[test]
fn hold_mode_forwards_when_approved_and_refuses_when_denied() {
    let h = harness();
    let waiting = held_call(&h, "builder", "/held/v1/deploy/a");
    let id = pending_id(&h, "held-deploys");
    let ok = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "--data",
            "{}",
            &format!("/v1/approvals/{id}/approve"),
        ],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    let reply = waiting.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(h.seen().len(), 1);
    let d = h.decision(&reply.request_id());
    assert!(d.detail.as_deref().unwrap().contains(&id));

    let waiting = held_call(&h, "builder", "/held/v1/deploy/b");
    let requested = h.wait_for("a second request", |r| {
        r.kind == "approval" && r.reason == "approval-requested" && r.request_id != id
    });
    let second = requested[0].request_id.clone();
    let no = h.admin(
        Some("ops"),
        &[
            "-X",
            "POST",
            "--data",
            r#"{"reason":"wrong branch"}"#,
            &format!("/v1/approvals/{second}/deny"),
        ],
    );
    assert_eq!(no.status, 200, "{no:?}");
    let reply = waiting.join().unwrap();
    assert_eq!(
        (reply.status, reply.json()["reason"].as_str()),
        (403, Some("approval-denied"))
    );
    assert_eq!(h.seen().len(), 1);
}

#[test]
fn concurrent_held_calls_are_bounded_and_other_agents_are_still_served() {
    let h = harness();
    let calls: Vec<_> = (0..200)
        .map(|_| held_call(&h, "builder", "/held/v1/deploy/many"))
        .collect();
    let id = pending_id(&h, "held-deploys");
    // Another agent is served while the holds are taken.
    let other = h.curl(Some("research"), &[&format!("{}/echo/v1/items", h.base())]);
    assert_eq!(other.status, 200, "{other:?}");
    let other_held = held_call(&h, "builder2", "/held/v1/deploy/other");
    let other_id = h.wait_for("builder2's request", |r| {
        r.kind == "approval" && r.agent.as_deref() == Some("builder2")
    })[0]
        .request_id
        .clone();
    // Refusals arrive while the bound is full; then the pending approval is
    // denied and every held call ends.
    let mut refused = 0;
    let mut held = Vec::new();
    for call in calls {
        if call.is_finished() {
            let reply = call.join().unwrap();
            assert_eq!(reply.status, 429, "{reply:?}");
            assert_eq!(reply.json()["reason"], "approval-holds-exhausted");
            refused += 1;
        } else {
            held.push(call);
        }
    }
    let deny = |id: &str| {
        h.admin(
            Some("ops"),
            &[
                "-X",
                "POST",
                "--data",
                r#"{"reason":"load test"}"#,
                &format!("/v1/approvals/{id}/deny"),
            ],
        )
    };
    assert_eq!(deny(&id).status, 200);
    let mut denied = 0;
    for call in held {
        let reply = call.join().unwrap();
        match reply.json()["reason"].as_str() {
            Some("approval-denied") => denied += 1,
            Some("approval-holds-exhausted") => refused += 1,
            other => panic!("unexpected answer {other:?}: {reply:?}"),
        }
    }
    assert!(
        (1..=8).contains(&denied),
        "at most 8 held per agent, got {denied}"
    );
    assert_eq!(denied + refused, 200);
    assert_eq!(deny(&other_id).status, 200);
    let reply = other_held.join().unwrap();
    assert_eq!(
        reply.json()["reason"],
        "approval-denied",
        "builder2 held despite builder's flood"
    );
    let exhausted = h
        .records()
        .into_iter()
        .filter(|r| r.kind == "decision" && r.reason == "approval-holds-exhausted")
        .count();
    assert_eq!(exhausted, refused);
    assert!(
        h.seen().iter().all(|s| !s.path.contains("deploy")),
        "no held call went upstream"
    );
}

#[test]
fn a_pending_request_and_its_grant_survive_a_restart() {
    let mut h = harness();
    let first = post(&h, "builder", "/deploys/v1/deploy/restart", "{}");
    let id = approval_id(&first);
    h.stop();
    h.serve(&[]);
    let show = h.admin(Some("ops"), &[&format!("/v1/approvals/{id}")]);
    assert_eq!(show.status, 200, "{show:?}");
    assert_eq!(show.json()["state"], "pending");
    let out = cli(&h, "ops", &["approve", &id]);
    assert!(out.status.success(), "{out:?}");
    h.stop();
    h.serve(&[]);
    let done = post(&h, "builder", "/deploys/v1/deploy/restart", "{}");
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(h.seen().len(), 1);
    let again = post(&h, "builder", "/deploys/v1/deploy/restart", "{}");
    assert_ne!(approval_id(&again), id, "the use was spent");
}
