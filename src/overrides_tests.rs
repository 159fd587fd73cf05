#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

fn new(kind: &str, target: &str, expires_in: &str) -> NewOverride {
    NewOverride {
        kind: kind.into(),
        target: target.into(),
        reason: "incident 42".into(),
        expires_in: expires_in.into(),
        force: false,
    }
}

/// A policy that defines agents `research`, `a` and scope `echo`.
struct Known;

impl Targets for Known {
    fn has_agent(&self, name: &str) -> bool {
        matches!(name, "research" | "a")
    }

    fn has_scope(&self, name: &str) -> bool {
        name == "echo"
    }

    fn has_proxy_key(&self, _: &str) -> bool {
        false
    }
}

#[test]
fn an_override_refuses_until_it_lapses_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let store = Overrides::open(&path).unwrap();
    let o = store
        .create(
            &new("isolate-agent", "research", "2h"),
            "admin",
            now,
            &Known,
        )
        .unwrap()
        .created;
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
        .create(
            &new("revoke-serial", "00:AB:cd", "1h"),
            "admin",
            now,
            &Known,
        )
        .unwrap();
    assert_eq!(serial.target_as_given, "00:AB:cd");
    let serial = serial.created;
    assert_eq!(serial.target, "abcd");
    assert!(store.refusing(None, Some("abcd"), None, now).is_some());
    assert!(store.refusing(None, Some("00abcd"), None, now).is_some());
    store
        .create(&new("disable-scope", "echo", "1h"), "admin", now, &Known)
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
        (new("isolate-agent", "ghost", "1h"), "unknown agent `ghost`"),
        (new("disable-scope", "ghost", "1h"), "unknown scope `ghost`"),
        (
            new("revoke-serial", "zz-not-hex", "1h"),
            "serial `zz-not-hex` must be hex",
        ),
        (new("revoke-serial", "ab::cd", "1h"), "must be hex"),
        (new("revoke-serial", ":ab", "1h"), "must be hex"),
        (
            new("revoke-serial", &"ab".repeat(21), "1h"),
            "longer than the 20 octets",
        ),
    ] {
        let e = store.create(&request, "admin", now, &Known).unwrap_err();
        assert!(e.to_string().contains(message), "{e}");
    }
    let mut no_reason = new("isolate-agent", "a", "1h");
    no_reason.reason = String::new();
    assert!(store.create(&no_reason, "admin", now, &Known).is_err());
    assert!(store.all().is_empty());
}

#[test]
fn force_lets_an_undefined_target_through_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = Overrides::open(&dir.path().join("o.db")).unwrap();
    let now = SystemTime::now();
    let mut request = new("isolate-agent", "newcomer", "1h");
    request.force = true;
    let made = store.create(&request, "admin", now, &Known).unwrap();
    assert!(made.forced);
    assert_eq!(made.created.target, "newcomer");
    let mut known = new("isolate-agent", "research", "1h");
    known.force = true;
    assert!(!store.create(&known, "admin", now, &Known).unwrap().forced);
}

#[test]
fn serials_normalise_one_way() {
    for (given, stored) in [
        ("3A:F2:01", "3af201"),
        ("3af201", "3af201"),
        ("00:00:ff", "ff"),
        ("0", "0"),
        ("00", "0"),
    ] {
        assert_eq!(normalise_serial(given).unwrap(), stored, "{given}");
    }
    for bad in ["", "zz", "0x1f", "1f-2e", "1f 2e", "ab:", "é"] {
        assert!(normalise_serial(bad).is_err(), "{bad}");
    }
}
