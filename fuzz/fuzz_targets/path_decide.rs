//! Any request path: normalisation never panics, its wire form decodes back
//! to the same text, and `decide` over a policy of varied globs never panics.
#![no_main]

use std::sync::OnceLock;

use clawgate::identity::PeerName;
use clawgate::policy::{Call, LoadOptions, Policy, Target, decide, load};
use clawgate::route::{encode_path, normalise_path};
use libfuzzer_sys::fuzz_target;

const POLICY: &str = r#"
[[agent]]
name = "a"
identities = ["cn:a"]
scopes = ["s"]

[[scope]]
name = "s"
upstream = "https://fuzz.example"
route = "s"

[[scope.allow]]
paths = ["/v1/**", "/a/*/b", "/x?/*.json", "/{c,d}/e/**", "/"]

[[scope.deny]]
paths = ["/v1/admin/**", "/**/secret", "/*a*b*c*/z"]
"#;

fn policy() -> Option<&'static Policy> {
    static POLICY_CELL: OnceLock<Option<Policy>> = OnceLock::new();
    POLICY_CELL
        .get_or_init(|| {
            let dir = tempfile::tempdir().ok()?;
            std::fs::write(dir.path().join("p.toml"), POLICY).ok()?;
            load(dir.path(), &LoadOptions::new(&|_| None))
                .ok()
                .map(|(p, _)| p)
        })
        .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = normalise_path(raw) else {
        return;
    };
    assert_eq!(
        normalise_path(&encode_path(&path)).as_deref(),
        Ok(path.as_str())
    );
    let Some(policy) = policy() else {
        return;
    };
    let peer = [PeerName::Cn("a".into())];
    for method in ["GET", "DELETE"] {
        let _ = decide(
            &Call {
                peer: &peer,
                target: Target::Route("s"),
                method,
                path: &path,
                aws: None,
                now: std::time::SystemTime::UNIX_EPOCH,
            },
            policy,
        );
    }
});
