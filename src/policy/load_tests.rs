//! The loader: every validation error, with its file, line and column.

use std::path::Path;

use super::*;

const AWS_SCOPE: &str = "[[scope]]\nname = \"s\"\nupstream = \"https://s3.us-east-1.amazonaws.com\"\n[scope.credential]\nkind = \"aws\"\nrole_arn = \"arn:aws:iam::123456789012:role/r\"\n";
const AWS_ALLOW: &str = "[[scope.allow]]\nactions = [\"s3:GetObject\"]\n";

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
            format!("{agent}{scope}reflection = \"log\"\n"),
            "base.toml:8:14: reflection `log` must be `redact`, `refuse` or `off`",
        ),
        (
            format!("{agent}{scope}route = \"a/b\"\n"),
            "base.toml:8:9: route `a/b` must be one path segment",
        ),
        (
            format!("{agent}{scope}[scope.credential]\nkind = \"secret\"\n"),
            "base.toml:8:1: a secret needs exactly one of `env`, `file` or `secrets_manager`",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"secret\"\nenv = \"T\"\nttl = \"5m\"\n"
            ),
            "base.toml:11:7: `ttl` applies only to `secrets_manager`",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"secret\"\nsecrets_manager = \"x\"\nttl = \"soon\"\n"
            ),
            "base.toml:11:7: `soon` is not a duration",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"secret\"\nenv = \"T\"\nheader = \"x\"\nquery = \"y\"\n"
            ),
            "base.toml:8:1: a credential takes `header` or `query`, not both",
        ),
        (
            format!("{agent}{scope}[scope.credential]\nkind = \"token\"\n"),
            "base.toml:9:8: credential kind `token` is not known",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"aws\"\n[[scope.allow]]\nactions = [\"s3:GetObject\"]\n"
            ),
            "base.toml:8:1: an `aws` credential needs `role_arn`",
        ),
        (
            format!("{agent}{AWS_SCOPE}duration_minutes = 10\n{AWS_ALLOW}"),
            "base.toml:11:20: duration_minutes `10` must be 15 (STS's minimum) to 720",
        ),
        (
            format!("{agent}{AWS_SCOPE}max_signed_body = 1000000000\n{AWS_ALLOW}"),
            "base.toml:11:19: max_signed_body must be at most",
        ),
        (
            format!("{agent}{AWS_SCOPE}refresh_margin = \"30s\"\n{AWS_ALLOW}"),
            "base.toml:11:18: refresh_margin must not be shorter than safety_margin",
        ),
        (
            format!("{agent}{AWS_SCOPE}env = \"T\"\n{AWS_ALLOW}"),
            "base.toml:11:7: `env` does not apply to an `aws` credential",
        ),
        (
            format!("{agent}{AWS_SCOPE}"),
            "base.toml:8:1: a scope with an `aws` credential needs at least one allow rule with `actions`",
        ),
        (
            format!("{agent}{AWS_SCOPE}[[scope.allow]]\nactions = [\"GetObject\"]\n"),
            "base.toml:12:12: action `GetObject` must look like `s3:GetObject`",
        ),
        (
            format!(
                "{agent}{AWS_SCOPE}[[scope.allow]]\nactions = [\"s3:GetObject\"]\nresources = [\"bucket\"]\n"
            ),
            "base.toml:13:14: resource `bucket` must be an ARN or `*`",
        ),
        (
            format!("{agent}{AWS_SCOPE}[[scope.allow]]\npaths = [\"/\"]\n{AWS_ALLOW}"),
            "base.toml:6:8: scope `s` has an `aws` credential, so its rules take `actions`, not `paths`",
        ),
        (
            format!("{agent}{scope}[[scope.allow]]\nactions = [\"s3:GetObject\"]\n"),
            "base.toml:6:8: scope `s` has rules with `actions` but no `aws` credential",
        ),
        (
            format!(
                "{agent}{}",
                AWS_SCOPE.replace("s3.us-east-1.amazonaws.com", "127.0.0.1:5000") + AWS_ALLOW
            ),
            "base.toml:7:12: cannot tell the AWS service and region from host `127.0.0.1`",
        ),
        (
            format!(
                "{agent}{AWS_SCOPE}[[scope.allow]]\nactions = [\"s3:GetObject\"]\nresources = [{}]\n",
                (0..60)
                    .map(|i| format!("\"arn:aws:s3:::bucket-number-{i}/*\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "base.toml:8:1: the session policy generated from this scope's rules is",
        ),
        (
            format!("{agent}{scope}route = \"v1\"\n"),
            "base.toml:8:9: route `v1` is reserved for clawgate's own endpoints",
        ),
        (
            format!(
                "{agent}{scope}[[sentinel]]\nname = \"gh\"\nplaceholder = \"short\"\nhosts = [\"api.github.com\"]\nenv = \"T\"\n"
            ),
            "base.toml:10:15: placeholder of sentinel `gh` must be at least 24",
        ),
        (
            format!(
                "{agent}{scope}[[sentinel]]\nname = \"gh\"\nplaceholder = \"clawgate-sentinel-0123456789abcdef\"\nhosts = []\nenv = \"T\"\n"
            ),
            "base.toml:8:1: sentinel `gh` has no hosts",
        ),
        (
            agent.replace(
                "scopes = [\"s\"]",
                "scopes = [\"s\"]\nvend_token_file = \"absent.token\"",
            ) + scope,
            "base.toml:5:19: cannot read vending token file `absent.token`",
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
        (
            format!("{agent}{scope}connect = \"splice\"\n"),
            "base.toml:8:11: connect `splice` must be `intercept` or `tunnel`",
        ),
        (
            format!("{agent}{scope}connect = \"tunnel\"\n[[scope.allow]]\npaths = [\"/\"]\n"),
            "base.toml:8:11: scope `s` tunnels, so it cannot have rules or a credential",
        ),
        (
            format!("{agent}{scope}allow_private = [\"10.0.0.0/33\"]\n"),
            "base.toml:8:18: allow_private entry is not an address, range or host: `10.0.0.0/33` has a prefix length beyond 32",
        ),
        (
            format!("{agent}{scope}allow_private = [\"999.1\"]\n"),
            "base.toml:8:18: allow_private entry is not an address, range or host: host `999.1` is not a valid IPv4 address",
        ),
        (
            format!("{agent}{scope}ports = []\n"),
            "base.toml:8:9: ports must list at least one port, none of them 0",
        ),
        (
            format!(
                "{agent}{}",
                scope.replace("https://x.example", "https://256.1.1.1")
            ),
            "base.toml:7:12: upstream `https://256.1.1.1`: host `256.1.1.1` is not a valid IPv4 address",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"oauth2\"\nclient_id = \"c\"\nenv = \"T\"\n"
            ),
            "base.toml:8:1: an `oauth2` credential needs exactly one of `token_endpoint` or `issuer`",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"oauth2\"\ntoken_endpoint = \"http://idp/token\"\nclient_id = \"c\"\nenv = \"T\"\n"
            ),
            "base.toml:10:18: `http://idp/token` is not an https URL",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"oauth2\"\ntoken_endpoint = \"https://idp/token\"\nclient_id = \"c\"\nclient_auth = \"mtls\"\n"
            ),
            "base.toml:12:15: client_auth `mtls` is not known",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"oauth2\"\nissuer = \"https://idp\"\nclient_id = \"c\"\nclient_auth = \"private_key_jwt\"\n"
            ),
            "base.toml:8:1: `private_key_jwt` needs `private_key_file` or `secrets_manager` (not both)",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"oauth2\"\nissuer = \"https://idp\"\nclient_id = \"c\"\nenv = \"T\"\nrefresh_token_file = \"missing-refresh-token\"\n"
            ),
            "base.toml:13:22: cannot read a refresh token from `missing-refresh-token`",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"jwt_bearer\"\nissuer = \"https://idp\"\nassertion_issuer = \"a\"\nrefresh_token_secrets_manager = \"rt\"\nprivate_key_file = \"k.pem\"\n"
            ),
            "base.toml:12:33: `refresh_token_secrets_manager` does not apply to a `jwt_bearer` credential",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"secret\"\nenv = \"T\"\nrefresh_token_file = \"rt\"\n"
            ),
            "base.toml:11:22: `refresh_token_file` does not apply to a `secret` credential",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"secret\"\nenv = \"T\"\nscope = \"x\"\n"
            ),
            "base.toml:11:9: `scope` does not apply to a `secret` credential",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"github_app\"\nprivate_key_file = \"k.pem\"\n"
            ),
            "base.toml:8:1: a `github_app` credential needs `app_id` and `installation_id`",
        ),
        (
            format!(
                "{agent}{scope}[scope.credential]\nkind = \"github_app\"\napp_id = 1\ninstallation_id = 2\nprivate_key_file = \"missing.pem\"\n"
            ),
            "base.toml:12:20: private key file `missing.pem` does not hold an RSA PEM key",
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
    let err = load(dir.path(), &LoadOptions::new(&no_env)).unwrap_err();
    assert!(
        err.to_string().contains("no `*.toml` policy files"),
        "{err}"
    );
    let err = load(&dir.path().join("absent"), &LoadOptions::new(&no_env)).unwrap_err();
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
    let Some(crate::credentials::Credential::Secret(secret)) = plain.credential.as_deref() else {
        panic!("not a secret credential");
    };
    assert!(!secret.value.is_available());
}

#[test]
fn connect_mode_ports_and_private_upstreams() {
    let text = "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"t\", \"i\", \"p\", \"o\"]\n\
        [[scope]]\nname = \"t\"\nupstream = \"https://t.example\"\n\
        [[scope]]\nname = \"i\"\nupstream = \"https://I.Example.\"\nports = [443, 8443]\n[[scope.allow]]\npaths = [\"/\"]\n\
        [[scope]]\nname = \"p\"\nupstream = \"https://0x7f000001:9000\"\n\
        [[scope]]\nname = \"o\"\nupstream = \"http://10.1.2.3\"\nallow_private = [\"10.0.0.0/8\"]\n";
    let (policy, warnings) = load_text(&[("base.toml", text)]).unwrap();
    let scope = |name: &str| policy.scopes().iter().find(|s| s.name == name).unwrap();
    assert_eq!(scope("t").connect, ConnectMode::Tunnel);
    assert_eq!(scope("t").ports, vec![443]);
    assert_eq!(scope("i").connect, ConnectMode::Intercept);
    assert_eq!(scope("i").upstream.host, "i.example");
    assert_eq!(scope("i").ports, vec![443, 8443]);
    // Any spelling of a loopback upstream is the one address, and it is
    // refused (with a warning at load) until `allow_private` names it.
    assert_eq!(scope("p").upstream.host, "127.0.0.1");
    assert_eq!(scope("p").blocked.unwrap().range, "loopback");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].message.contains("egress-address-blocked"));
    assert!(scope("o").blocked.is_none());
    assert_eq!(scope("o").ports, vec![80]);
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

#[test]
fn locate_counts_lines_and_characters() {
    assert_eq!(report::locate("ab\ncdé\nx", 0), (1, 1));
    assert_eq!(report::locate("ab\ncdé\nx", 3), (2, 1));
    assert_eq!(report::locate("ab\ncdé\nx", 7), (2, 4));
    assert_eq!(report::locate("ab\ncdé\nx", 8), (3, 1));
}
