//! Proxy keys in policy: every validation message, lookup by hash, expiry.

use std::time::{Duration, SystemTime};

use super::super::{LoadError, LoadOptions, Policy, PolicyError, load};

const HASH_A: &str = "6ee23c887d29a5d1981b22c5717423715ae5c206b1383a22bdcba2fe49ec3286";
const HASH_B: &str = "0b5c2a7e1f4d3c6b8a9e0f1d2c3b4a5968776655443322110ffeeddccbbaa998";

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn load_text(text: &str) -> Result<(Policy, Vec<PolicyError>), LoadError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), text).unwrap();
    let env = |_: &str| None;
    load(
        dir.path(),
        &LoadOptions {
            env: &env,
            now: now(),
            max_exception: super::super::DEFAULT_MAX_EXCEPTION,
        },
    )
}

fn agent(name: &str, keys: &str) -> String {
    format!("[[agent]]\nname = \"{name}\"\nidentities = [\"cn:{name}\"]\n{keys}")
}

fn key(id: &str, hash: &str, extra: &str) -> String {
    format!("[[agent.proxy_key]]\nid = \"{id}\"\nsha256 = \"{hash}\"\n{extra}")
}

#[test]
fn every_proxy_key_error_names_file_line_and_column() {
    let cases = [
        (
            agent("a", &key("Bad Id", HASH_A, "")),
            "base.toml:5:6: proxy key id `Bad Id` must be 1 to 64",
        ),
        (
            agent("a", &(key("k", HASH_A, "") + &key("k", HASH_B, ""))),
            "base.toml:8:6: proxy key id `k` is used twice",
        ),
        (
            agent("a", &key("k", "ABC", "")),
            "base.toml:6:10: proxy key `k` in agent `a`: `sha256` must be 64 lowercase hex digits",
        ),
        (
            agent("a", &key("k1", HASH_A, "")) + &agent("b", &key("k2", HASH_A, "")),
            "base.toml:12:10: proxy key `k2` in agent `b` has the hash of another key",
        ),
        (
            agent("a", &key("k", HASH_A, "expires = \"tomorrow\"\n")),
            "base.toml:7:11: proxy key `k`: `expires` `tomorrow` is not an RFC 3339 time",
        ),
        (
            agent("a", &key("k", HASH_A, "colour = \"red\"\n")),
            "base.toml:7:1: unknown field `colour`",
        ),
    ];
    for (text, expected) in cases {
        let err = load_text(&text).unwrap_err();
        let first = err.problems.first().unwrap();
        let line = format!(
            "{}:{}:{}: {}",
            first.file.file_name().unwrap().to_string_lossy(),
            first.line,
            first.col,
            first.message
        );
        assert!(
            line.starts_with(expected),
            "expected `{expected}`\n got `{line}`"
        );
    }
}

#[test]
fn a_key_is_found_by_its_hash_and_an_expired_one_is_flagged() {
    let past = "expires = \"2020-01-01T00:00:00Z\"\n";
    let text = agent("a", &(key("old", HASH_A, past) + &key("new", HASH_B, "")));
    let (policy, warnings) = load_text(&text).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.message.contains("proxy key `old` expired")),
        "{warnings:?}"
    );
    let hash_b: [u8; 32] = hex::decode(HASH_B).unwrap().try_into().unwrap();
    let (agent_id, found) = policy.proxy_key(&hash_b).unwrap();
    assert_eq!(policy.agent(agent_id).name, "a");
    assert_eq!(found.id, "new");
    assert!(found.valid_at(now()));
    let hash_a: [u8; 32] = hex::decode(HASH_A).unwrap().try_into().unwrap();
    assert!(!policy.proxy_key(&hash_a).unwrap().1.valid_at(now()));
    assert!(policy.proxy_key(&[0; 32]).is_none());
    // The stored value is the hash of the key, as `proxy-key new` makes it.
    let made = crate::token::proxy_key::generate().unwrap();
    assert_ne!(crate::token::proxy_key::sha256(&made), [0; 32]);
    assert!(crate::token::proxy_key::is_proxy_key(&made));
}
