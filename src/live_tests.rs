//! Which live connections a sweep ends, and why.

use std::path::Path;

use super::*;
use crate::identity::PeerName;
use crate::overrides::NewOverride;

const POLICY: &str = r#"
[[agent]]
name = "a"
identities = ["cn:a"]
scopes = ["t", "u"]

[[scope]]
name = "t"
upstream = "https://t.example"

[[scope]]
name = "u"
upstream = "https://u.example"
"#;

fn policy(dir: &Path, text: &str) -> Arc<Policy> {
    std::fs::write(dir.join("p.toml"), text).unwrap();
    let env = |_: &str| None;
    let (policy, _) = crate::policy::load(dir, &crate::policy::LoadOptions::new(&env)).unwrap();
    Arc::new(policy)
}

fn tunnel_to(host: &str, scope: &str) -> Subject {
    Subject {
        names: vec![PeerName::Cn("a".into())],
        agent: Some("a".into()),
        serial: Some("1f".into()),
        scope: Some(scope.into()),
        connect: Some((host.into(), 443)),
        proxy_key: None,
    }
}

#[tokio::test]
async fn overrides_and_withdrawing_reloads_end_members_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let first = policy(dir.path(), POLICY);
    let overrides = Overrides::open(Path::new(":memory:")).unwrap();
    let live = Arc::new(Live::default());
    let mut t = live.register(tunnel_to("t.example", "t"), first.digest());
    let mut u = live.register(tunnel_to("u.example", "u"), first.digest());
    // A token connection not yet named by a request is nobody's.
    let _anonymous = live.register(Subject::default(), first.digest());
    let now = SystemTime::now();
    assert_eq!(live.sweep(&first, &overrides, now), 0);

    let o = overrides
        .create(
            &NewOverride {
                kind: "disable-scope".into(),
                target: "t".into(),
                reason: "test".into(),
                expires_in: "1h".into(),
                force: false,
            },
            "test",
            now,
            &*first,
        )
        .unwrap()
        .created;
    assert_eq!(live.sweep(&first, &overrides, now), 1);
    let ended = t.ended().await;
    assert_eq!(ended.reason, Reason::EndedByOverride);
    assert!(ended.detail.contains(&o.id), "{ended:?}");
    assert_eq!(live.len(), 2);

    // A reload that drops scope `u` from the agent ends its tunnel; the
    // anonymous member stays.
    let second = policy(
        dir.path(),
        &POLICY.replace("scopes = [\"t\", \"u\"]", "scopes = [\"t\"]"),
    );
    assert_eq!(live.sweep(&second, &overrides, now), 1);
    let ended = u.ended().await;
    assert_eq!(ended.reason, Reason::EndedByPolicy);
    assert!(ended.detail.contains("scope `u`"), "{ended:?}");
    assert_eq!(live.len(), 1);
}

#[test]
fn a_dropped_membership_leaves_the_set() {
    let live = Arc::new(Live::default());
    let member = live.register(Subject::default(), "sha256:x");
    assert_eq!(live.len(), 1);
    drop(member);
    assert!(live.is_empty());
}
