use std::time::{Duration, SystemTime};

use super::digest::{Bound, canonical_json, digest};
use super::store::Approver;
use super::*;

fn bound<'a>(body: &'a [u8]) -> Bound<'a> {
    Bound {
        agent: "research",
        run: None,
        scope: "deploys",
        method: "POST",
        host: "api.example",
        path: "/deploy",
        query: None,
        body,
        tool: None,
        aws: None,
    }
}

fn pending(id: &str, agent: &str, digest: &str, now: SystemTime, uses: u32) -> Approval {
    Approval {
        id: id.into(),
        agent: agent.into(),
        run: None,
        scope: "deploys".into(),
        rule: "deploys.ask[0]".into(),
        why: "production".into(),
        approvers: vec!["admins".into(), "cn:alice".into()],
        digest: digest.into(),
        request: Shown::default(),
        request_id: "r1".into(),
        state: State::Pending,
        requested_at: rfc3339(now),
        expires_at: rfc3339(now + Duration::from_secs(60)),
        decided_by: None,
        decided_at: None,
        deny_reason: None,
        uses_left: uses,
        usable_until: None,
        times: Times {
            requested: now,
            expires: now + Duration::from_secs(60),
            usable_until: None,
            decided: None,
            window: None,
        },
        told: false,
    }
}

fn alice() -> Approver<'static> {
    Approver {
        who: "cn:alice",
        names: vec!["cn:alice".into()],
        is_admin: false,
        agent: None,
    }
}

#[test]
fn any_changed_byte_changes_the_digest() {
    let base = digest(&bound(b"{\"v\":1}"));
    assert_eq!(base, digest(&bound(b"{\"v\":1}")));
    assert_ne!(base, digest(&bound(b"{\"v\":2}")));
    let mut other = bound(b"{\"v\":1}");
    other.query = Some("");
    assert_ne!(base, digest(&other), "an empty query is not no query");
    let mut other = bound(b"{\"v\":1}");
    other.run = Some("run-1");
    assert_ne!(base, digest(&other));
}

#[test]
fn canonical_json_sorts_keys_at_every_depth() {
    let a: serde_json::Value =
        serde_json::from_str(r#"{"b":1,"a":{"d":[2,{"z":1,"y":2}],"c":"x"}}"#).unwrap();
    assert_eq!(
        canonical_json(&a),
        r#"{"a":{"c":"x","d":[2,{"y":2,"z":1}]},"b":1}"#
    );
}

#[test]
fn a_grant_is_used_at_most_uses_times_by_its_agent_only() {
    let store = ApprovalStore::memory();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    store.insert(pending("a1", "research", "d1", now, 2));
    assert!(matches!(
        store.find("research", "d1", now).0,
        Found::Pending(_)
    ));
    store.answer("a1", &alice(), None, now).unwrap();
    assert!(matches!(store.find("other", "d1", now).0, Found::Nothing));
    assert!(matches!(
        store.find("research", "d2", now).0,
        Found::Nothing
    ));
    assert!(matches!(
        store.find("research", "d1", now).0,
        Found::Granted(_)
    ));
    assert!(matches!(
        store.find("research", "d1", now).0,
        Found::Granted(_)
    ));
    assert!(matches!(
        store.find("research", "d1", now).0,
        Found::Nothing
    ));
}

#[test]
fn answers_are_refused_to_the_agent_itself_and_to_others_not_named() {
    let store = ApprovalStore::memory();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    store.insert(pending("a1", "research", "d1", now, 1));
    let own = Approver {
        who: "cn:research",
        names: vec!["cn:alice".into()],
        is_admin: true,
        agent: Some("research"),
    };
    assert_eq!(
        store.answer("a1", &own, None, now).unwrap_err(),
        AnswerError::OwnCall
    );
    let bob = Approver {
        who: "cn:bob",
        names: vec!["cn:bob".into()],
        is_admin: false,
        agent: None,
    };
    assert!(matches!(
        store.answer("a1", &bob, None, now),
        Err(AnswerError::NotApprover(_))
    ));
    let admin = Approver {
        is_admin: true,
        ..bob
    };
    store.answer("a1", &admin, Some("not today"), now).unwrap();
    let (found, _) = store.find("research", "d1", now);
    assert!(matches!(found, Found::Denied(a) if a.deny_reason.as_deref() == Some("not today")));
    assert!(
        matches!(store.find("research", "d1", now).0, Found::Denied(_)),
        "a denial holds"
    );
    let later = now + Duration::from_secs(61);
    assert!(
        matches!(store.find("research", "d1", later).0, Found::Nothing),
        "until the ttl"
    );
    assert!(matches!(
        store.answer("a1", &alice(), None, now),
        Err(AnswerError::NotPending(_, "denied"))
    ));
}

#[test]
fn an_unanswered_request_expires_once() {
    let store = ApprovalStore::memory();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    store.insert(pending("a1", "research", "d1", now, 1));
    let later = now + Duration::from_secs(61);
    let (found, expired) = store.find("research", "d1", later);
    assert!(matches!(found, Found::Expired(_)));
    assert_eq!(expired.len(), 1);
    let (found, expired) = store.find("research", "d1", later);
    assert!(matches!(found, Found::Nothing));
    assert!(expired.is_empty());
    assert!(matches!(
        store.answer("a1", &alice(), None, later),
        Err(AnswerError::NotPending(_, "expired"))
    ));
}

#[test]
fn an_expiry_first_seen_by_show_answer_or_a_scrape_is_still_handed_out_once() {
    let store = ApprovalStore::memory();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    store.insert(pending("a1", "research", "d1", now, 1));
    store.insert(pending("a2", "research", "d2", now, 1));
    let later = now + Duration::from_secs(61);
    assert_eq!(store.pending_count(now), 2);
    assert_eq!(
        store.pending_count(later),
        0,
        "a scrape counts without lapsing"
    );
    assert_eq!(
        store.get("a1", later).map(|a| a.state),
        Some(State::Expired)
    );
    assert!(store.answer("a2", &alice(), None, later).is_err());
    let (_, expired) = store.list(later, false);
    let mut ids: Vec<_> = expired.iter().map(|a| a.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["a1", "a2"],
        "both expiries are handed out to be recorded"
    );
    assert!(store.list(later, false).1.is_empty(), "and only once");
}

#[test]
fn holds_are_bounded_per_agent_and_freed_on_drop() {
    let approvals = Approvals::new(
        ApprovalStore::memory(),
        HoldLimits {
            per_agent: 2,
            total: 3,
        },
        "https://x/".into(),
    );
    let a = approvals.hold("a").unwrap();
    let _b = approvals.hold("a").unwrap();
    assert!(approvals.hold("a").is_none());
    let _c = approvals.hold("b").unwrap();
    assert!(approvals.hold("c").is_none(), "overall bound");
    drop(a);
    assert!(approvals.hold("a").is_some());
}
