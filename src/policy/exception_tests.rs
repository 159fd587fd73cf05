//! Exceptions, rates and roles: loading, every new loader error, and how
//! `decide` treats an exception before and after its expiry.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Reason;
use crate::identity::PeerName;
use crate::policy::{Call, Effect, LoadOptions, Policy, PolicyError, Target, decide, load};

const NOW: u64 = 2_000_000_000;

const BASE: &str = "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"s\"]\n\n[[scope]]\nname = \"s\"\nupstream = \"https://s.example\"\nroute = \"s\"\n[[scope.allow]]\npaths = [\"/**\"]\n\n[[scope]]\nname = \"t\"\nupstream = \"https://t.example\"\nroute = \"t\"\n[[scope.allow]]\nid = \"t-all\"\npaths = [\"/**\"]\n";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn at(offset: i64) -> String {
    let t = if offset >= 0 {
        now() + Duration::from_secs(offset.unsigned_abs())
    } else {
        now() - Duration::from_secs(offset.unsigned_abs())
    };
    super::rfc3339(t)
}

fn exception(expires: &str) -> String {
    format!(
        "\n[[exception]]\nid = \"e1\"\nagent = \"a\"\nscopes = [\"t\"]\nreason = \"r\"\napproved_by = \"b\"\nexpires = \"{expires}\"\n"
    )
}

fn load_text(text: &str) -> Result<(Policy, Vec<PolicyError>), crate::policy::LoadError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), text).unwrap();
    let env = |_: &str| None;
    load(
        dir.path(),
        &LoadOptions {
            env: &env,
            now: now(),
            max_exception: crate::policy::DEFAULT_MAX_EXCEPTION,
        },
    )
}

fn call_t(policy: &Policy, at: SystemTime) -> crate::policy::Decision {
    let peer = [PeerName::Cn("a".into())];
    decide(
        &Call {
            peer: &peer,
            target: Target::Route("t"),
            method: "GET",
            path: "/x",
            aws: None,
            now: at,
        },
        policy,
    )
}

#[test]
fn an_exception_grants_its_scopes_until_its_expiry_and_not_after() {
    let (policy, warnings) = load_text(&format!("{BASE}{}", exception(&at(3600)))).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let before = call_t(&policy, now());
    assert_eq!(before.effect(), Effect::Allow);
    assert_eq!(before.exception(), Some(0));
    assert_eq!(before.rule(), Some("t-all"));
    let edge = call_t(&policy, now() + Duration::from_secs(3600));
    assert_eq!(edge.effect(), Effect::Deny);
    assert_eq!(edge.reason(), Reason::NoMatchingScope);
    assert_eq!(edge.exception(), None);
}

#[test]
fn an_expired_exception_loads_with_a_warning_and_grants_nothing() {
    let (policy, warnings) = load_text(&format!("{BASE}{}", exception(&at(-60)))).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].message.contains("exception `e1` expired at"),
        "{warnings:?}"
    );
    assert_eq!(call_t(&policy, now()).reason(), Reason::NoMatchingScope);
}

#[test]
fn every_new_loader_error_names_its_place() {
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{BASE}{}", exception(&at(8 * 86_400))),
            "base.toml:27:11: exception `e1` expires more than 7days ahead",
        ),
        (
            format!("{BASE}{}", exception("tomorrow")),
            "base.toml:27:11: expiry `tomorrow` of exception `e1` must be an RFC 3339 time",
        ),
        (
            format!("{BASE}{}", exception(&at(60)).replace("expires", "# ")),
            "base.toml:21:1: missing field `expires`",
        ),
        (
            format!(
                "{BASE}{}",
                exception(&at(60)).replace("agent = \"a\"", "agent = \"z\"")
            ),
            "base.toml:23:9: unknown agent `z` in exception `e1`",
        ),
        (
            format!("{BASE}{}", exception(&at(60)).replace("[\"t\"]", "[\"q\"]")),
            "base.toml:24:11: unknown scope `q` in exception `e1`",
        ),
        (
            format!("{BASE}{}", exception(&at(60)).replace("[\"t\"]", "[]")),
            "base.toml:21:1: exception `e1` grants no scopes",
        ),
        (
            format!(
                "{BASE}{}",
                exception(&at(60)).replace("reason = \"r\"", "reason = \" \"")
            ),
            "base.toml:25:10: exception `e1` needs a non-empty `reason`",
        ),
        (
            format!("{BASE}{}{}", exception(&at(60)), exception(&at(60))),
            "base.toml:30:6: exception `e1` is defined twice",
        ),
        (
            BASE.replace(
                "scopes = [\"s\"]",
                "scopes = [\"s\"]\nrate = \"10/fortnight\"",
            ),
            "base.toml:5:8: rate `10/fortnight` must be N/sec, N/min, N/hour or N/day",
        ),
        (
            BASE.replace("scopes = [\"s\"]", "scopes = [\"s\"]\nburst = 3"),
            "base.toml:5:9: `burst` needs a `rate`",
        ),
        (
            BASE.replace(
                "route = \"s\"",
                "route = \"s\"\nrate = \"5/min\"\nburst = 0",
            ),
            "base.toml:11:9: burst must be at least 1",
        ),
        (
            format!("{BASE}\n[roles]\nadmins = [\"ops\"]\n"),
            "base.toml:22:11: identity `ops` must be a URI",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in cases {
        let err = load_text(&text).unwrap_err();
        let first = &err.problems[0];
        let line = format!(
            "{}:{}:{}: {}",
            first.file.file_name().unwrap().to_string_lossy(),
            first.line,
            first.col,
            first.message
        );
        if !line.starts_with(expected) {
            wrong.push(format!("expected `{expected}`\n got `{line}`"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn rates_and_roles_compile() {
    let text = BASE.replace(
        "scopes = [\"s\"]",
        "scopes = [\"s\"]\nrate = \"60/min\"\nburst = 5",
    ) + "\n[roles]\nadmins = [\"spiffe://x/ops\"]\nauditors = [\"cn:auditor\"]\n";
    let (policy, _) = load_text(&text).unwrap();
    let rate = policy.agent(0).rate.unwrap();
    assert_eq!((rate.count.get(), rate.burst.get()), (60, 5));
    assert_eq!(
        policy.roles().admins,
        vec![PeerName::Uri("spiffe://x/ops".into())]
    );
    assert_eq!(
        policy.roles().auditors,
        vec![PeerName::Cn("auditor".into())]
    );
}
