#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::*;
use crate::credentials::{SecretSource, SecretTiming};

const GH: &str = "clawgate-sentinel-0123456789abcdef0123456789abcdef";
const SLACK: &str = "clawgate-sentinel-fedcba9876543210fedcba9876543210";

fn sentinels() -> Sentinels {
    let make = |name: &str, placeholder: &str, host: &str| Sentinel {
        name: name.into(),
        placeholder: placeholder.into(),
        hosts: vec![host.into()],
        agents: (name == "slack").then(|| vec!["chatter".to_owned()]),
        value: SecretValue::resolve(
            SecretSource::Env("X".into()),
            SecretTiming::default(),
            &|_| None,
        ),
    };
    Sentinels::new(vec![
        make("github", GH, "api.github.com"),
        make("slack", SLACK, "slack.com"),
    ])
}

#[test]
fn scan_finds_each_sentinel_once() {
    let s = sentinels();
    let mut found = Found::new();
    s.scan(
        format!("token {GH} and {GH} and {SLACK}").as_bytes(),
        &mut found,
    );
    s.scan(GH.as_bytes(), &mut found);
    assert_eq!(found, vec![0, 1]);
    let mut none = Found::new();
    s.scan(b"clawgate-sentinel-not-a-real-one", &mut none);
    assert!(none.is_empty());
}

#[test]
fn a_sentinel_is_misdirected_anywhere_but_its_hosts() {
    let s = sentinels();
    let found = vec![0];
    assert!(s.misdirected(&found, "api.github.com", "anyone").is_none());
    let to = |found: &Found, host: &str, agent: &str| {
        s.misdirected(found, host, agent).map(|m| m.name.clone())
    };
    assert_eq!(
        to(&found, "evil.example", "anyone").as_deref(),
        Some("github")
    );
    assert_eq!(
        to(&vec![0, 1], "api.github.com", "anyone").as_deref(),
        Some("slack")
    );
    // A sentinel bound to agents is misdirected from any other agent.
    assert_eq!(to(&vec![1], "slack.com", "chatter"), None);
    assert_eq!(
        to(&vec![1], "slack.com", "research").as_deref(),
        Some("slack")
    );
}

#[test]
fn replace_swaps_found_placeholders_and_leaves_the_rest() {
    let s = sentinels();
    let values = vec![
        Some(Arc::new(SecretString::from("gh-real".to_owned()))),
        None,
    ];
    let out = s.replace(
        format!("a {GH} b {SLACK} c {GH}").as_bytes(),
        &values,
        str::to_owned,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("a gh-real b {SLACK} c gh-real")
    );
    let encoded = s.replace(
        GH.as_bytes(),
        &[Some(Arc::new(SecretString::from("a b".to_owned()))), None],
        |v| v.replace(' ', "+"),
    );
    assert_eq!(encoded, b"a+b");
}

#[test]
fn new_placeholders_are_random_and_well_formed() {
    let a = new_placeholder().unwrap();
    let b = new_placeholder().unwrap();
    assert_ne!(a, b);
    assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 32);
    assert!(a.len() >= MIN_PLACEHOLDER);
}
