use proptest::prelude::*;

use super::*;

const BASE: &str = r#"
[[agent]]
name = "research"
identities = ["spiffe://clawgate.local/agent/research", "dns:research.bots.internal"]
scopes = ["api", "report", "plain"]

[[agent]]
name = "legacy"
identities = ["cn:legacy-bot"]
scopes = ["api"]

[[scope]]
name = "api"
upstream = "https://api.example.com/v2"
route = "api"

[[scope.allow]]
id = "read"
methods = ["GET", "HEAD"]
paths = ["/items", "/items/**"]

[[scope.allow]]
id = "write"
methods = ["POST"]
paths = ["/items"]

[[scope.deny]]
id = "no-admin"
paths = ["/items/admin/**"]

[[scope]]
name = "report"
upstream = "https://report.example.com"
route = "report"
mode = "report"

[[scope.allow]]
id = "r-read"
methods = ["GET"]
paths = ["/ok/*"]

[[scope.deny]]
id = "r-deny"
paths = ["/secret"]

[[scope]]
name = "plain"
upstream = "http://plain.example.com:8080"
route = "plain"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_text(files: &[(&str, &str)]) -> Result<(Policy, Vec<PolicyError>), LoadError> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    load(dir.path(), &LoadOptions::new(&no_env))
}

fn base() -> Policy {
    load_text(&[("base.toml", BASE)]).unwrap().0
}

fn uri(s: &str) -> PeerName {
    PeerName::Uri(s.into())
}

const RESEARCH: &str = "spiffe://clawgate.local/agent/research";

fn decide_route(
    policy: &Policy,
    peer: &[PeerName],
    route: &str,
    method: &str,
    path: &str,
) -> Decision {
    decide(
        &Call {
            peer,
            target: Target::Route(route),
            method,
            path,
            aws: None,
            mcp: None,
            now: std::time::SystemTime::UNIX_EPOCH,
        },
        policy,
    )
}

#[test]
fn decide_table() {
    let policy = base();
    let research = [uri(RESEARCH)];
    type Case<'a> = (&'a str, &'a str, &'a str, Effect, Reason, Option<&'a str>);
    let cases: &[Case<'_>] = &[
        (
            "api",
            "GET",
            "/items",
            Effect::Allow,
            Reason::Allowed,
            Some("read"),
        ),
        (
            "api",
            "GET",
            "/items/42",
            Effect::Allow,
            Reason::Allowed,
            Some("read"),
        ),
        (
            "api",
            "HEAD",
            "/items/a/b/c",
            Effect::Allow,
            Reason::Allowed,
            Some("read"),
        ),
        (
            "api",
            "POST",
            "/items",
            Effect::Allow,
            Reason::Allowed,
            Some("write"),
        ),
        (
            "api",
            "POST",
            "/items/42",
            Effect::Deny,
            Reason::NoMatchingRule,
            None,
        ),
        (
            "api",
            "DELETE",
            "/items",
            Effect::Deny,
            Reason::NoMatchingRule,
            None,
        ),
        (
            "api",
            "GET",
            "/other",
            Effect::Deny,
            Reason::NoMatchingRule,
            None,
        ),
        (
            "api",
            "GET",
            "/items/admin/users",
            Effect::Deny,
            Reason::DeniedByRule,
            Some("no-admin"),
        ),
        (
            "api",
            "POST",
            "/items/admin/x",
            Effect::Deny,
            Reason::DeniedByRule,
            Some("no-admin"),
        ),
        (
            "nope",
            "GET",
            "/items",
            Effect::Deny,
            Reason::NoMatchingScope,
            None,
        ),
        // A scope with no rules allows nothing.
        (
            "plain",
            "GET",
            "/",
            Effect::Deny,
            Reason::NoMatchingRule,
            None,
        ),
    ];
    for (route, method, path, effect, reason, rule) in cases {
        let d = decide_route(&policy, &research, route, method, path);
        assert_eq!(
            (d.effect(), d.reason()),
            (*effect, *reason),
            "{method} /{route}{path}"
        );
        assert_eq!(d.rule(), *rule, "{method} /{route}{path}");
    }
}

#[test]
fn deny_rules_also_meet_the_path_without_its_trailing_slash() {
    let policy = base();
    let research = [uri(RESEARCH)];
    let d = decide_route(&policy, &research, "report", "GET", "/secret/");
    assert_eq!(d.would_deny(), Some(Reason::DeniedByRule));
    let d = decide_route(&policy, &research, "api", "GET", "/items/admin/");
    assert_eq!(d.reason(), Reason::DeniedByRule);
    // And the other way round: a deny written with the slash refuses without.
    let text = format!("{BASE}\n[[scope.deny]]\nid = \"slash\"\npaths = [\"/private/\"]\n");
    let slash = load_text(&[("base.toml", &text)]).unwrap().0;
    let d = decide_route(&slash, &research, "plain", "GET", "/private");
    assert_eq!(
        (d.reason(), d.rule()),
        (Reason::DeniedByRule, Some("slash"))
    );
    // Allow rules do not widen that way.
    let d = decide_route(&policy, &research, "report", "GET", "/ok/a/");
    assert_eq!(d.would_deny(), Some(Reason::NoMatchingRule));
}

#[test]
fn star_does_not_cross_a_slash_and_double_star_does() {
    let policy = base();
    let research = [uri(RESEARCH)];
    let d = decide_route(&policy, &research, "report", "GET", "/ok/a");
    assert_eq!((d.rule(), d.would_deny()), (Some("r-read"), None));
    let d = decide_route(&policy, &research, "report", "GET", "/ok/a/b");
    assert_eq!(d.would_deny(), Some(Reason::NoMatchingRule));
}

#[test]
fn report_mode_allows_and_says_what_enforce_would_have_done() {
    let policy = base();
    let research = [uri(RESEARCH)];
    let d = decide_route(&policy, &research, "report", "DELETE", "/secret");
    assert_eq!(d.effect(), Effect::Allow);
    assert_eq!(d.reason(), Reason::Allowed);
    assert_eq!(d.would_deny(), Some(Reason::DeniedByRule));
    assert_eq!(d.rule(), Some("r-deny"));
    assert!(Permitted::new(&Arc::new(base()), &d).is_some());
}

#[test]
fn identities_resolve_by_kind_and_precedence() {
    let policy = base();
    let by = |names: Vec<PeerName>| {
        policy
            .agent_for(&names)
            .map(|id| policy.agent(id).name.clone())
    };
    assert_eq!(by(vec![uri(RESEARCH)]).as_deref(), Some("research"));
    assert_eq!(
        by(vec![PeerName::Dns("research.bots.internal".into())]).as_deref(),
        Some("research")
    );
    assert_eq!(
        by(vec![PeerName::Cn("legacy-bot".into())]).as_deref(),
        Some("legacy")
    );
    // A CN that spells a URI identity proves nothing.
    assert_eq!(by(vec![PeerName::Cn(RESEARCH.into())]), None);
    // Only the strongest kind of name counts: an unknown URI SAN is not
    // rescued by a known CN.
    assert_eq!(
        by(vec![
            uri("spiffe://other/unknown"),
            PeerName::Cn("legacy-bot".into())
        ]),
        None
    );
    assert_eq!(
        by(vec![uri(RESEARCH), PeerName::Cn("legacy-bot".into())]).as_deref(),
        Some("research")
    );
    // Two URI SANs naming two agents prove neither.
    let text =
        format!("{BASE}\n[[agent]]\nname = \"other\"\nidentities = [\"spiffe://x/other\"]\n");
    let two = load_text(&[("base.toml", &text)]).unwrap().0;
    assert_eq!(
        two.agent_for(&[uri(RESEARCH), uri("spiffe://x/other")]),
        None
    );
    assert!(
        two.agent_for(&[uri(RESEARCH), uri("spiffe://x/unlisted")])
            .is_some()
    );
}

#[test]
fn agents_only_reach_their_own_scopes() {
    let policy = base();
    let legacy = [PeerName::Cn("legacy-bot".into())];
    assert_eq!(
        decide_route(&policy, &legacy, "api", "GET", "/items").effect,
        Effect::Allow
    );
    assert_eq!(
        decide_route(&policy, &legacy, "report", "GET", "/ok/a").reason,
        Reason::NoMatchingScope
    );
}

#[test]
fn forward_proxy_targets_resolve_by_host_and_optional_port() {
    let policy = base();
    let research = [uri(RESEARCH)];
    let host = |host: &str, port: Option<u16>| {
        decide(
            &Call {
                peer: &research,
                target: Target::Host { host, port },
                method: "GET",
                path: "/items",
                aws: None,
                mcp: None,
                now: std::time::SystemTime::UNIX_EPOCH,
            },
            &policy,
        )
    };
    // Forward-proxy paths are full upstream paths; rules match below the base path.
    assert_eq!(host("api.example.com", None).effect, Effect::Deny);
    let full = |path: &str| {
        decide(
            &Call {
                peer: &research,
                target: Target::Host {
                    host: "api.example.com",
                    port: None,
                },
                method: "GET",
                path,
                aws: None,
                mcp: None,
                now: std::time::SystemTime::UNIX_EPOCH,
            },
            &policy,
        )
    };
    assert_eq!(full("/v2/items").effect, Effect::Allow);
    assert_eq!(full("/v2/items/admin/x").reason, Reason::DeniedByRule);
    assert_eq!(full("/v2items").reason, Reason::NoMatchingRule);
    assert_eq!(full("/v2").reason, Reason::NoMatchingRule);
    let host = |host: &str, port: Option<u16>| {
        decide(
            &Call {
                peer: &research,
                target: Target::Host { host, port },
                method: "GET",
                path: "/v2/items",
                aws: None,
                mcp: None,
                now: std::time::SystemTime::UNIX_EPOCH,
            },
            &policy,
        )
    };
    assert_eq!(host("api.example.com", None).effect, Effect::Allow);
    assert_eq!(host("api.example.com", Some(443)).effect, Effect::Allow);
    assert_eq!(
        host("api.example.com", Some(8443)).reason,
        Reason::NoMatchingScope
    );
    assert_eq!(
        host("evil.example.com", None).reason,
        Reason::NoMatchingScope
    );
}

#[test]
fn permitted_only_comes_from_an_allow() {
    let policy = Arc::new(base());
    let research = [uri(RESEARCH)];
    let denied = decide_route(&policy, &research, "api", "DELETE", "/items");
    assert!(Permitted::new(&policy, &denied).is_none());
    let allowed = decide_route(&policy, &research, "api", "GET", "/items");
    let permit = Permitted::new(&policy, &allowed).unwrap();
    assert_eq!(permit.scope().name, "api");
    assert_eq!(permit.scope().upstream.base_path, "/v2");
}

#[test]
fn summary_counts_and_digest_is_stable_and_content_sensitive() {
    let a = base();
    assert_eq!(a.agents().len(), 2);
    assert_eq!(a.scopes().len(), 3);
    assert_eq!(a.rule_count(), 5);
    assert!(
        a.summary()
            .starts_with("2 agents, 3 scopes, 5 rules, digest sha256:")
    );
    assert_eq!(a.digest(), base().digest());
    let changed = load_text(&[(
        "base.toml",
        &BASE.replace("/items/admin/**", "/items/admin/*"),
    )])
    .unwrap()
    .0;
    assert_ne!(a.digest(), changed.digest());
}

fn arb_segment() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "items", "admin", "x1"]).prop_map(str::to_owned)
}

fn arb_path() -> impl Strategy<Value = String> {
    prop::collection::vec(arb_segment(), 1..4).prop_map(|s| format!("/{}", s.join("/")))
}

fn arb_glob() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![arb_segment(), Just("*".to_owned()), Just("**".to_owned())],
        1..4,
    )
    .prop_map(|s| format!("/{}", s.join("/")))
}

fn policy_with_rules(allow: &[String], deny: &[String]) -> Policy {
    let mut text = String::from(
        "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"s\"]\n[[scope]]\nname = \"s\"\nupstream = \"https://x.example\"\nroute = \"s\"\n",
    );
    for glob in allow {
        text.push_str(&format!("[[scope.allow]]\npaths = [\"{glob}\"]\n"));
    }
    for glob in deny {
        text.push_str(&format!("[[scope.deny]]\npaths = [\"{glob}\"]\n"));
    }
    load_text(&[("p.toml", &text)]).unwrap().0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whenever any deny rule matches, the call is denied, whatever allows.
    #[test]
    fn deny_beats_allow(allow in prop::collection::vec(arb_glob(), 0..4),
                        deny in prop::collection::vec(arb_glob(), 1..3),
                        path in arb_path()) {
        let policy = policy_with_rules(&allow, &deny);
        let d = decide_route(&policy, &[PeerName::Cn("a".into())], "s", "GET", &path);
        let deny_matches = deny.iter().any(|g| {
            globset::GlobBuilder::new(g).literal_separator(true).build().unwrap()
                .compile_matcher().is_match(&path)
        });
        if deny_matches {
            prop_assert_eq!(d.effect(), Effect::Deny);
            prop_assert_eq!(d.reason(), Reason::DeniedByRule);
        } else if d.effect() == Effect::Deny {
            prop_assert_eq!(d.reason(), Reason::NoMatchingRule);
        }
    }

    /// A peer whose names are not in policy is refused, whatever it asks for.
    #[test]
    fn unknown_identity_is_always_refused(name in "[a-z]{1,12}",
                                          kind in 0u8..3,
                                          route in prop::sample::select(vec!["api", "report", "plain", "x"]),
                                          path in arb_path()) {
        let policy = base();
        let peer = match kind {
            0 => PeerName::Uri(format!("spiffe://clawgate.local/agent/{name}-unknown")),
            1 => PeerName::Dns(format!("{name}.unknown")),
            _ => PeerName::Cn(format!("{name}-unknown")),
        };
        for method in ["GET", "POST", "DELETE"] {
            let d = decide_route(&policy, std::slice::from_ref(&peer), route, method, &path);
            prop_assert_eq!(d.effect(), Effect::Deny);
            prop_assert_eq!(d.reason(), Reason::UnknownAgent);
            prop_assert!(Permitted::new(&Arc::new(base()), &d).is_none());
        }
    }
}

#[test]
fn strip_base_keeps_paths_below_the_base_only() {
    let policy = base();
    let api = policy.scopes().iter().find(|s| s.name == "api").unwrap();
    assert_eq!(api.upstream.strip_base("/v2/a"), Some("/a"));
    assert_eq!(api.upstream.strip_base("/v2"), Some("/"));
    assert_eq!(api.upstream.strip_base("/v2a"), None);
    assert_eq!(api.upstream.strip_base("/a"), None);
    let plain = policy.scopes().iter().find(|s| s.name == "plain").unwrap();
    assert_eq!(plain.upstream.strip_base("/a"), Some("/a"));
}

#[path = "load_tests.rs"]
mod loader;

#[test]
fn connect_is_decided_by_host_and_port_and_literals_by_range() {
    let policy = base();
    let peer = [uri(RESEARCH)];
    let connect = |host: &str, port: u16| {
        decide(
            &Call {
                peer: &peer,
                target: Target::Connect { host, port },
                method: "CONNECT",
                path: "/",
                aws: None,
                mcp: None,
                now: std::time::SystemTime::now(),
            },
            &policy,
        )
    };
    let allowed = connect("api.example.com", 443);
    assert_eq!(allowed.reason(), Reason::Allowed);
    assert_eq!(allowed.rule(), None, "a host-level decision names no rule");
    assert_eq!(
        connect("api.example.com", 8443).reason(),
        Reason::NoMatchingScope
    );
    assert_eq!(
        connect("other.example.com", 443).reason(),
        Reason::NoMatchingScope
    );
    for literal in [
        "127.0.0.1",
        "169.254.169.254",
        "::1",
        "localhost",
        "10.0.0.1",
    ] {
        assert_eq!(
            connect(literal, 443).reason(),
            Reason::EgressAddressBlocked,
            "{literal}"
        );
    }
    let forward = decide(
        &Call {
            peer: &peer,
            target: Target::Host {
                host: "::ffff:127.0.0.1",
                port: None,
            },
            method: "GET",
            path: "/",
            aws: None,
            mcp: None,
            now: std::time::SystemTime::now(),
        },
        &policy,
    );
    assert_eq!(forward.reason(), Reason::EgressAddressBlocked);
}
