#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

fn new(kind: &str, target: &str, expires_in: &str) -> NewOverride {
    NewOverride {
        kind: kind.into(),
        target: target.into(),
        reason: "incident 42".into(),
        expires_in: expires_in.into(),
    }
}

#[test]
fn an_override_refuses_until_it_lapses_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let store = Overrides::open(&path).unwrap();
    let o = store
        .create(&new("isolate-agent", "research", "2h"), "admin", now)
        .unwrap();
    assert_eq!(o.expires, now + Duration::from_secs(7200));
    let hit = store
        .refusing(Some("research"), Some("01"), None, now)
        .unwrap();
    assert_eq!(hit.kind.reason(), Reason::AgentIsolated);
    assert!(
        store
            .refusing(Some("reporter"), Some("01"), None, now)
            .is_none()
    );
    drop(store);

    let store = Overrides::open(&path).unwrap();
    assert_eq!(store.all().len(), 1);
    let later = now + Duration::from_secs(7200);
    assert!(
        store
            .refusing(Some("research"), Some("01"), None, later)
            .is_none()
    );
    let lapsed = store.sweep(later).unwrap();
    assert_eq!(lapsed.len(), 1);
    assert!(
        store.sweep(later).unwrap().is_empty(),
        "a lapse is taken once"
    );
    assert!(Overrides::open(&path).unwrap().all().is_empty());
}

#[test]
fn serials_and_scopes_match_and_removal_works() {
    let dir = tempfile::tempdir().unwrap();
    let store = Overrides::open(&dir.path().join("o.db")).unwrap();
    let now = SystemTime::now();
    let serial = store
        .create(&new("revoke-serial", "00:AB:cd", "1h"), "admin", now)
        .unwrap();
    assert_eq!(serial.target, "abcd");
    assert!(store.refusing(None, Some("abcd"), None, now).is_some());
    assert!(store.refusing(None, Some("00abcd"), None, now).is_some());
    store
        .create(&new("disable-scope", "echo", "1h"), "admin", now)
        .unwrap();
    let hit = store
        .refusing(Some("a"), Some("ff"), Some("echo"), now)
        .unwrap();
    assert_eq!(hit.kind, OverrideKind::DisableScope);
    assert_eq!(store.remove(&serial.id).unwrap().unwrap().id, serial.id);
    assert!(store.remove(&serial.id).unwrap().is_none());
    assert!(store.refusing(None, Some("abcd"), None, now).is_none());
}

#[test]
fn bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Overrides::open(&dir.path().join("o.db")).unwrap();
    let now = SystemTime::now();
    for (request, message) in [
        (new("isolate-agent", "a", "49h"), "at most 48h"),
        (new("isolate-agent", "a", "0s"), "more than zero"),
        (new("isolate-agent", "a", "soon"), "must be a duration"),
        (new("banish", "a", "1h"), "kind `banish`"),
        (new("isolate-agent", " ", "1h"), "`target` is required"),
    ] {
        let e = store.create(&request, "admin", now).unwrap_err();
        assert!(e.to_string().contains(message), "{e}");
    }
    let mut no_reason = new("isolate-agent", "a", "1h");
    no_reason.reason = String::new();
    assert!(store.create(&no_reason, "admin", now).is_err());
    assert!(store.all().is_empty());
}
