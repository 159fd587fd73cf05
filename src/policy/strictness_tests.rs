use crate::error::Reason;
use crate::identity::PeerName;
use crate::policy::{Call, LoadOptions, Policy, PolicyError, Target, decide, load};

const POLICY: &str = r#"
[[agent]]
name = "a"
identities = ["spiffe://clawgate.local/agent/a"]
scopes = ["strict", "lenient", "folded", "tunnel"]

[[scope]]
name = "strict"
upstream = "https://strict.example"
route = "strict"
[[scope.allow]]
paths = ["/allowed/**"]
[[scope.deny]]
paths = ["/allowed/secret/**"]

[[scope]]
name = "lenient"
upstream = "https://lenient.example"
route = "lenient"
path_strictness = "lenient"
[[scope.allow]]
paths = ["/allowed/**"]
[[scope.deny]]
paths = ["/allowed/secret/**"]

[[scope]]
name = "folded"
upstream = "https://folded.example"
route = "folded"
case_insensitive_paths = true
[[scope.allow]]
paths = ["/Allowed/**"]
[[scope.deny]]
paths = ["/allowed/secret/**"]

[[scope]]
name = "tunnel"
upstream = "https://tunnel.example"
tunnel_without_sni = "allow"
tunnel_ech = "refuse"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_text(text: &str) -> Result<(Policy, Vec<PolicyError>), crate::policy::LoadError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    load(dir.path(), &LoadOptions::new(&no_env))
}

fn reason(policy: &Policy, route: &str, path: &str) -> Reason {
    let peer = [PeerName::Uri("spiffe://clawgate.local/agent/a".into())];
    decide(
        &Call {
            peer: &peer,
            target: Target::Route(route),
            method: "GET",
            path,
            aws: None,
            mcp: None,
            now: std::time::SystemTime::UNIX_EPOCH,
        },
        policy,
    )
    .reason()
}

const HAZARDS: [&str; 6] = [
    "/allowed/secret./x",
    "/allowed/secret /x",
    "/allowed/secret\u{FF0E}/x",
    "/allowed/\u{FF53}ecret/x",
    "/allowed/se\u{200B}cret/x",
    "/allowed/secret\u{202E}/x",
];

#[test]
fn path_hazards_are_refused_unless_the_scope_is_lenient() {
    let (policy, problems) = load_text(POLICY).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    for path in HAZARDS {
        assert_eq!(
            reason(&policy, "strict", path),
            Reason::MalformedRequest,
            "{path:?}"
        );
        assert_eq!(
            reason(&policy, "lenient", path),
            Reason::Allowed,
            "{path:?}"
        );
    }
    assert_eq!(reason(&policy, "strict", "/allowed/x"), Reason::Allowed);
    assert_eq!(
        reason(&policy, "lenient", "/allowed/secret/x"),
        Reason::DeniedByRule
    );
}

#[test]
fn a_case_insensitive_scope_matches_rules_case_folded() {
    let (policy, _) = load_text(POLICY).unwrap();
    for path in [
        "/allowed/SECRET/x",
        "/ALLOWED/Secret/x",
        "/allowed/secret/x",
    ] {
        assert_eq!(
            reason(&policy, "folded", path),
            Reason::DeniedByRule,
            "{path}"
        );
        // A scope that does not fold meets `SECRET` as another path.
        assert_ne!(reason(&policy, "strict", path), Reason::MalformedRequest);
    }
    assert_eq!(
        reason(&policy, "strict", "/allowed/SECRET/x"),
        Reason::Allowed
    );
    assert_eq!(reason(&policy, "folded", "/ALLOWED/other"), Reason::Allowed);
}

#[test]
fn tunnel_settings_compile_and_bad_ones_name_their_place() {
    let (policy, _) = load_text(POLICY).unwrap();
    let tunnel = policy.scopes.iter().find(|s| s.name == "tunnel").unwrap();
    assert!(tunnel.strictness.tunnel_without_sni);
    assert!(!tunnel.strictness.tunnel_ech);
    let broken = [
        (
            "tunnel_ech = \"maybe\"",
            "tunnel_ech `maybe` must be `refuse` or `allow`",
        ),
        (
            "path_strictness = \"lenient\"",
            "scope `t` tunnels, so `path_strictness` does not apply",
        ),
    ];
    for (line, message) in broken {
        let text = format!(
            "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"t\"]\n\n[[scope]]\nname = \"t\"\nupstream = \"https://t.example\"\n{line}\n"
        );
        let err = load_text(&text).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
        assert!(err.contains("p.toml:9"), "{err}");
    }
    let text = "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"t\"]\n\n[[scope]]\nname = \"t\"\nupstream = \"https://t.example\"\ntunnel_without_sni = \"allow\"\n[[scope.allow]]\npaths = [\"/**\"]\n";
    let err = load_text(text).unwrap_err().to_string();
    assert!(
        err.contains("intercepts, so `tunnel_without_sni` does not apply"),
        "{err}"
    );
}

#[test]
fn a_sentinel_bound_to_a_tunnelled_host_is_an_error_at_its_host() {
    let text = r#"[[agent]]
name = "claw"
identities = ["cn:claw"]
scopes = ["model"]

[[scope]]
name = "model"
upstream = "https://api.openai.com"

[[sentinel]]
name = "model-key"
placeholder = "clawgate-sentinel-0123456789abcdef0123"
hosts = ["api.openai.com"]
env = "OPENAI_API_KEY"
"#;
    let err = load_text(text).unwrap_err().to_string();
    assert!(
        err.contains("p.toml:13:10: sentinel `model-key` is bound to `api.openai.com`, which scope `model` of agent `claw` tunnels"),
        "{err}"
    );
    // The same scope, intercepting, is fine.
    let fixed = text.replace(
        "upstream = \"https://api.openai.com\"\n",
        "upstream = \"https://api.openai.com\"\n[[scope.allow]]\npaths = [\"/v1/**\"]\n",
    );
    assert!(load_text(&fixed).is_ok());
    // A sentinel the tunnelling agent may not use is no concern of its.
    let other = text.replace(
        "env = \"OPENAI_API_KEY\"",
        "env = \"OPENAI_API_KEY\"\nagents = []",
    );
    assert!(load_text(&other).is_ok(), "{:?}", load_text(&other).err());
}
