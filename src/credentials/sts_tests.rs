#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn session_names_fit_sts() {
    assert_eq!(session_name("research"), "clawgate.research");
    assert_eq!(session_name("a b/c"), "clawgate.a-b-c");
    let long = session_name(&"x".repeat(100));
    assert_eq!(long.len(), 64);
    assert!(
        long.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    );
}

#[test]
fn tags_carry_agent_scope_and_run_only_when_there_is_one() {
    let tags = session_tags("research", "s3-reports", None);
    assert_eq!(
        tags,
        vec![
            ("clawgate-agent", "research".to_owned()),
            ("clawgate-scope", "s3-reports".to_owned())
        ]
    );
    let tags = session_tags("research", "s3", Some("run#1"));
    assert_eq!(tags[2], ("clawgate-run", "run_1".to_owned()));
    assert_eq!(tag_value(&"é".repeat(300)).chars().count(), 256);
}

#[test]
fn session_policy_holds_every_rule_and_its_digest_follows_it() {
    let allow = Statement {
        allow: true,
        actions: vec!["s3:GetObject".into(), "s3:PutObject".into()],
        resources: vec!["arn:aws:s3:::reports/*".into()],
    };
    let deny = Statement {
        allow: false,
        actions: vec!["s3:DeleteBucket".into()],
        resources: vec!["*".into()],
    };
    let (text, digest) = session_policy(&[allow.clone(), deny]);
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed["Version"], "2012-10-17");
    assert_eq!(parsed["Statement"][0]["Effect"], "Allow");
    assert_eq!(parsed["Statement"][0]["Action"][1], "s3:PutObject");
    assert_eq!(
        parsed["Statement"][0]["Resource"][0],
        "arn:aws:s3:::reports/*"
    );
    assert_eq!(parsed["Statement"][1]["Effect"], "Deny");
    let (_, other) = session_policy(&[allow]);
    assert_ne!(digest, other);
    assert!(digest.starts_with("sha256:"));
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    assert_eq!(backoff(1, u32::MAX), Duration::from_millis(200));
    assert_eq!(backoff(2, u32::MAX), Duration::from_millis(400));
    assert_eq!(backoff(9, u32::MAX), Duration::from_millis(2000));
    assert_eq!(backoff(3, 0), Duration::ZERO);
    assert!(backoff(3, u32::MAX / 2) < backoff(3, u32::MAX));
}

#[test]
fn debug_shows_the_key_id_and_nothing_secret() {
    let session = AwsSession {
        access_key_id: "ASIAEXAMPLE".into(),
        secret_access_key: SecretString::from("canary-secret-key".to_owned()),
        session_token: SecretString::from("canary-token".to_owned()),
        expiration: SystemTime::UNIX_EPOCH,
    };
    let debug = format!("{session:?}");
    assert!(debug.contains("ASIAEXAMPLE"));
    assert!(!debug.contains("canary"), "{debug}");
}
