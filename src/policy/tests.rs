use std::path::Path;

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
    load(dir.path(), &LoadOptions { env: &no_env })
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

/// Each broken fixture and the message `policy check` must print for it.
#[test]
fn every_loader_error_names_file_line_and_column() {
    let agent = "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"s\"]\n";
    let scope = "[[scope]]\nname = \"s\"\nupstream = \"https://x.example\"\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{agent}{scope}colour = \"red\"\n"),
            "base.toml:8:1: unknown field `colour`",
        ),
        (
            agent.replace("[\"s\"]", "[\"s\", \"ghost\"]") + scope,
            "base.toml:4:16: unknown scope `ghost` in agent `a`",
        ),
        (
            format!("{agent}{scope}[[agent]]\nname = \"b\"\nidentities = [\"cn:a\"]\n"),
            "base.toml:10:15: identity `cn:a` is claimed by agents `a` and `b`",
        ),
        (
            format!("{agent}{scope}[[scope.allow]]\npaths = [\"/a/[z-a]\"]\n"),
            "base.toml:9:10: path `/a/[z-a]` is not a valid glob",
        ),
        (
            format!("{agent}{scope}[[scope.allow]]\npaths = [\"a\"]\n"),
            "base.toml:9:10: path `a` must start with `/`",
        ),
        (
            format!("{agent}{scope}[[scope.allow]]\nmethods = [\"get\"]\npaths = [\"/\"]\n"),
            "base.toml:9:12: method `get` must be an uppercase HTTP method",
        ),
        (
            format!("{agent}[[scope]]\nname = \"s\"\n"),
            "base.toml:5:1: missing field `upstream`",
        ),
        (
            format!("{agent}{scope}ca_file = \"missing-ca.pem\"\n"),
            "base.toml:8:11: cannot use CA file `missing-ca.pem`",
        ),
        (
            format!("{agent}{}", scope.replace("https://x.example", "ftp://x")),
            "base.toml:7:12: upstream `ftp://x` must start with `https://` or `http://`",
        ),
        (
            format!("{agent}{scope}mode = \"audit\"\n"),
            "base.toml:8:8: mode `audit` must be `enforce` or `report`",
        ),
        (
            format!("{agent}{scope}route = \"a/b\"\n"),
            "base.toml:8:9: route `a/b` must be one path segment",
        ),
        (
            format!("{agent}{scope}[scope.credential]\nkind = \"secret\"\n"),
            "base.toml:8:1: a `secret` credential needs exactly one of `env` or `file`",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"secret\"\nenv = \"T\"\nformat = \"Bearer\"\n"
            ),
            "base.toml:11:10: format must hold `{}` exactly once",
        ),
        (
            format!("{agent}{scope}{scope}"),
            "base.toml:9:8: scope `s` is defined twice",
        ),
        (
            agent.replace("cn:a", "just-a-name") + scope,
            "base.toml:3:15: identity `just-a-name` must be a URI",
        ),
        (
            format!("{agent}{scope}upstream = 3\n"),
            "base.toml:8:1: duplicate key",
        ),
        (
            format!(
                "{agent}{}",
                scope.replace("https://x.example", "https://x.example/v2/../admin")
            ),
            "base.toml:7:12: upstream `https://x.example/v2/../admin`: base path is not acceptable: dot segment",
        ),
    ];
    for (text, expected) in cases {
        let err = load_text(&[("base.toml", &text)]).unwrap_err();
        let printed = err.to_string();
        let shown = printed.replace(&format!("{}", Path::new("").display()), "");
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
            "expected `{expected}`\n got `{line}`\n all: {shown}"
        );
    }
}

#[test]
fn problems_across_files_are_all_reported_and_nothing_loads() {
    let err = load_text(&[
        (
            "a.toml",
            "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"nope\"]\n",
        ),
        ("b.toml", "bogus = 1\n"),
    ])
    .unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.problems[0].file.ends_with("a.toml"));
    assert!(err.problems[1].file.ends_with("b.toml"));
}

#[test]
fn an_empty_or_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path(), &LoadOptions { env: &no_env }).unwrap_err();
    assert!(
        err.to_string().contains("no `*.toml` policy files"),
        "{err}"
    );
    let err = load(&dir.path().join("absent"), &LoadOptions { env: &no_env }).unwrap_err();
    assert!(
        err.to_string().contains("cannot read policy directory"),
        "{err}"
    );
}

#[test]
fn missing_credential_value_is_a_warning_not_an_error() {
    let text = format!("{BASE}\n[scope.credential]\nkind = \"secret\"\nenv = \"PLAIN_TOKEN\"\n");
    let (policy, warnings) = load_text(&[("base.toml", &text)]).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].message.contains("env:PLAIN_TOKEN"));
    let plain = policy.scopes().iter().find(|s| s.name == "plain").unwrap();
    assert!(!plain.credential.as_ref().unwrap().is_available());
}

#[test]
fn two_scopes_for_one_host_in_one_agent_are_refused() {
    let text = r#"
[[agent]]
name = "a"
identities = ["cn:a"]
scopes = ["one", "two"]
[[scope]]
name = "one"
upstream = "https://h.example"
[[scope]]
name = "two"
upstream = "https://h.example/other"
"#;
    let err = load_text(&[("p.toml", text)]).unwrap_err();
    assert!(
        err.to_string()
            .contains("has two scopes for host `h.example`"),
        "{err}"
    );
}

#[test]
fn locate_counts_lines_and_characters() {
    assert_eq!(load::locate_for_tests("ab\ncdé\nx", 0), (1, 1));
    assert_eq!(load::locate_for_tests("ab\ncdé\nx", 3), (2, 1));
    assert_eq!(load::locate_for_tests("ab\ncdé\nx", 7), (2, 4));
    assert_eq!(load::locate_for_tests("ab\ncdé\nx", 8), (3, 1));
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

#[test]
fn listing_a_scope_or_identity_twice_is_named_as_such() {
    let text = "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\", \"cn:a\"]\nscopes = [\"s\", \"s\"]\n[[scope]]\nname = \"s\"\nupstream = \"https://h.example\"\n";
    let err = load_text(&[("p.toml", text)]).unwrap_err().to_string();
    assert!(
        err.contains("identity `cn:a` is listed twice in agent `a`"),
        "{err}"
    );
    assert!(
        err.contains("scope `s` is listed twice in agent `a`"),
        "{err}"
    );
}
