#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;
use crate::overrides::{NewOverride, Targets};
use crate::policy::{LoadOptions, load};

struct Anything;

impl Targets for Anything {
    fn has_agent(&self, _: &str) -> bool {
        true
    }

    fn has_scope(&self, _: &str) -> bool {
        true
    }

    fn has_proxy_key(&self, _: &str) -> bool {
        true
    }
}

#[test]
fn each_lapse_is_recorded_once_when_due_and_the_next_deadline_follows() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let expires = now + Duration::from_secs(3600);
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(
        policy_dir.join("p.toml"),
        format!(
            "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\n\
             [[scope]]\nname = \"s\"\nupstream = \"https://s.example\"\n\
             [[exception]]\nid = \"e\"\nagent = \"a\"\nscopes = [\"s\"]\nreason = \"r\"\napproved_by = \"x\"\nexpires = \"{}\"\n",
            rfc3339(expires)
        ),
    )
    .unwrap();
    let no_env = |_: &str| None;
    let (policy, _) = load(&policy_dir, &LoadOptions::new(&no_env)).unwrap();
    let expires = policy.exceptions()[0].expires;
    let audit_path = dir.path().join("audit.db");
    let (audit, writer) = AuditLog::open(&audit_path).unwrap();
    let overrides = Overrides::open(&audit_path).unwrap();
    let isolate = NewOverride {
        kind: "isolate-agent".into(),
        target: "a".into(),
        reason: "r".into(),
        expires_in: "30m".into(),
        force: false,
    };
    let o = overrides
        .create(&isolate, "admin", now, &Anything)
        .unwrap()
        .created;

    let lapses = Lapses::default();
    assert!(
        lapses.next_due().is_some(),
        "due at once before the first look"
    );
    lapses.settle(&policy, &overrides, &audit, now);
    assert_eq!(
        lapses.next_due(),
        Some(o.expires),
        "the override lapses first"
    );
    // Before the deadline, nothing; at it, the override; then the exception.
    lapses.settle(
        &policy,
        &overrides,
        &audit,
        o.expires - Duration::from_millis(1),
    );
    assert_eq!(overrides.all().len(), 1);
    lapses.settle(&policy, &overrides, &audit, o.expires);
    assert!(overrides.all().is_empty());
    assert_eq!(lapses.next_due(), Some(expires));
    lapses.settle(&policy, &overrides, &audit, expires);
    lapses.settle(
        &policy,
        &overrides,
        &audit,
        expires + Duration::from_secs(5),
    );
    assert_eq!(lapses.next_due(), None);
    writer.shutdown();

    let records = crate::audit::query(&audit_path, &Filter::default()).unwrap();
    let kinds: Vec<(&str, Option<&str>)> = records
        .iter()
        .map(|r| (r.kind.as_str(), r.exception.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [("override", None), ("exception", Some("e"))],
        "{records:#?}"
    );
    // Remembered across a restart: a new ledger seeded from the log records
    // the exception's lapse no more.
    let again = Lapses::default();
    again.seed(&audit_path);
    let (audit, writer) = AuditLog::open(&audit_path).unwrap();
    again.settle(
        &policy,
        &overrides,
        &audit,
        expires + Duration::from_secs(9),
    );
    writer.shutdown();
    assert_eq!(
        crate::audit::query(&audit_path, &Filter::default())
            .unwrap()
            .len(),
        2
    );
}
