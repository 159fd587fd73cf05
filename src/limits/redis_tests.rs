#![allow(clippy::unwrap_used, reason = "tests")]

use std::num::NonZeroU32;
use std::time::Duration;

use super::super::redis_conn::{RedisAuth, RedisTarget, client};
use super::{FailureMode, Rate, share};

fn rate(count: u32, burst: u32) -> Rate {
    Rate {
        count: NonZeroU32::new(count).unwrap(),
        per: Duration::from_secs(60),
        burst: NonZeroU32::new(burst).unwrap(),
    }
}

#[test]
fn a_replica_share_splits_rate_and_burst_but_never_below_one() {
    assert_eq!(share(rate(90, 30), 3), rate(30, 10));
    assert_eq!(share(rate(2, 2), 3), rate(1, 1));
    assert_eq!(share(rate(5, 5), 1), rate(5, 5));
}

#[test]
fn failure_modes_and_targets_parse_and_credentials_in_a_url_are_refused() {
    assert_eq!("local".parse::<FailureMode>(), Ok(FailureMode::Local));
    assert_eq!("closed".parse::<FailureMode>(), Ok(FailureMode::Closed));
    assert!("sometimes".parse::<FailureMode>().is_err());
    let plain: RedisTarget = "redis://10.0.0.5".parse().unwrap();
    assert!(!plain.tls());
    let tls: RedisTarget = "rediss://clawgate@redis.example:6380".parse().unwrap();
    assert!(tls.tls());
    assert!(format!("{tls:?}").contains("rediss://redis.example:6380"));
    assert!("unix:///run/redis.sock".parse::<RedisTarget>().is_ok());
    for url in [
        "redis://user:hunter2@h:1",
        "rediss://user:hunter2@h:1",
        "rediss://:hunter2@h:1",
    ] {
        let refused = url.parse::<RedisTarget>().unwrap_err();
        assert!(!refused.contains("hunter2"), "{refused}");
        assert!(refused.contains("--limits-password-file"), "{refused}");
    }
    let insecure = "rediss://h:1/#insecure".parse::<RedisTarget>().unwrap_err();
    assert!(insecure.contains("insecure"), "{insecure}");
    assert!("http://h".parse::<RedisTarget>().is_err());
}

#[test]
fn a_ca_for_a_plain_address_is_refused_and_a_password_never_shows() {
    let plain: RedisTarget = "redis://10.0.0.5:6379".parse().unwrap();
    let auth = RedisAuth {
        ca: Some("/nonexistent/ca.pem".into()),
        client: None,
        password: Some(secrecy::SecretString::from("canary-redis-pw".to_owned())),
    };
    let e = client(&plain, &auth).unwrap_err();
    assert!(e.contains("rediss://"), "{e}");
    assert!(!format!("{auth:?}").contains("canary"));
    let tls: RedisTarget = "rediss://clawgate@h:6380".parse().unwrap();
    let e = client(&tls, &auth).unwrap_err();
    assert!(e.contains("--limits-ca"), "{e}");
}
