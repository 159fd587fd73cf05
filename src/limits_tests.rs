#![allow(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

use super::*;

#[test]
fn parses_rates_and_refuses_nonsense() {
    let r = Rate::parse("60/min", None).unwrap();
    assert_eq!(r.count.get(), 60);
    assert_eq!(r.per, Duration::from_secs(60));
    assert_eq!(r.burst.get(), 60);
    assert_eq!(Rate::parse("5/s", Some(2)).unwrap().burst.get(), 2);
    assert_eq!(Rate::parse("1/day", None).unwrap().per.as_secs(), 86_400);
    for bad in ["60", "0/min", "x/min", "60/fortnight", "-1/s", ""] {
        assert!(Rate::parse(bad, None).is_err(), "{bad}");
    }
    assert_eq!(Rate::parse("1/s", Some(0)), Err(RateError::ZeroBurst));
}

#[test]
fn a_burst_passes_then_the_next_call_waits() {
    let limits = Limits::default();
    let rate = Some(Rate::parse("1/min", Some(3)).unwrap());
    for _ in 0..3 {
        limits.check("a", None, "s", rate).unwrap();
    }
    let limited = limits.check("a", None, "s", rate).unwrap_err();
    assert_eq!(limited.which, "scope");
    assert!(limited.retry_after > Duration::from_secs(10));
    assert!(limited.retry_after_secs() <= 60);
    // Another agent, and the same agent in another scope, have their own budget.
    limits.check("b", None, "s", rate).unwrap();
    limits.check("a", None, "t", rate).unwrap();
}

#[test]
fn the_agent_rate_spans_scopes() {
    let limits = Limits::default();
    let rate = Some(Rate::parse("2/hour", None).unwrap());
    limits.check("a", rate, "s", None).unwrap();
    limits.check("a", rate, "t", None).unwrap();
    assert_eq!(
        limits.check("a", rate, "u", None).unwrap_err().which,
        "agent"
    );
}

#[test]
fn a_changed_rate_starts_afresh() {
    let limits = Limits::default();
    let one = Some(Rate::parse("1/hour", None).unwrap());
    limits.check("a", one, "s", None).unwrap();
    assert!(limits.check("a", one, "s", None).is_err());
    let two = Some(Rate::parse("2/hour", None).unwrap());
    limits.check("a", two, "s", None).unwrap();
}

#[test]
fn retry_after_rounds_up() {
    let l = Limited {
        which: "agent",
        name: "a".into(),
        rate: Rate::parse("1/sec", None).unwrap(),
        retry_after: Duration::from_millis(1500),
    };
    assert_eq!(l.retry_after_secs(), 2);
    let l = Limited {
        which: "agent",
        name: "a".into(),
        rate: Rate::parse("1/sec", None).unwrap(),
        retry_after: Duration::ZERO,
    };
    assert_eq!(l.retry_after_secs(), 1);
}
