//! `[[scope.ask]]`: every validation error, and which calls a rule names.

use super::super::{Call, LoadOptions, Policy, Target, load};
use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_text(text: &str) -> Result<Policy, super::super::LoadError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), text).unwrap();
    load(dir.path(), &LoadOptions::new(&no_env)).map(|(p, _)| p)
}

const HEAD: &str = "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"s\"]\n[[scope]]\nname = \"s\"\nupstream = \"https://x.example\"\nroute = \"s\"\n[[scope.allow]]\npaths = [\"/**\"]\n";

fn ask(body: &str) -> String {
    format!("{HEAD}[[scope.ask]]\n{body}")
}

#[test]
fn every_ask_error_names_its_place() {
    let ok = "paths = [\"/d/**\"]\napprovers = [\"admins\"]\nwhy = \"w\"\n";
    let cases = [
        (
            ask("paths = [\"/d\"]\napprovers = []\nwhy = \"w\"\n"),
            "base.toml:13:13: ask `s.ask[0]` names no approvers",
        ),
        (
            ask("paths = [\"/d\"]\napprovers = [\"auditors\"]\nwhy = \"w\"\n"),
            "base.toml:13:14: ask `s.ask[0]`: auditors read, they cannot approve",
        ),
        (
            ask("paths = [\"/d\"]\napprovers = [\"alice\"]\nwhy = \"w\"\n"),
            "base.toml:13:14: approver `alice` of ask `s.ask[0]` is neither `admins` nor an identity",
        ),
        (
            ask("paths = [\"/d\"]\napprovers = [\"admins\"]\nwhy = \" \"\n"),
            "base.toml:14:7: ask `s.ask[0]` needs a `why`",
        ),
        (
            ask(&format!("{ok}hold = \"121s\"\n")),
            "base.toml:15:8: hold of ask `s.ask[0]` must be at most 120s and at most its ttl",
        ),
        (
            ask(&format!("{ok}ttl = \"10s\"\nhold = \"20s\"\n")),
            "base.toml:16:8: hold of ask `s.ask[0]` must be at most 120s",
        ),
        (
            ask(&format!("{ok}ttl = \"0s\"\n")),
            "base.toml:15:7: ttl of ask `s.ask[0]` must be more than zero and at most 24h",
        ),
        (
            ask(&format!("{ok}window = \"2d\"\n")),
            "base.toml:15:10: window of ask `s.ask[0]` must be more than zero",
        ),
        (
            ask(&format!("{ok}uses = 0\n")),
            "base.toml:15:8: uses of ask `s.ask[0]` must be 1 to 100",
        ),
        (
            ask(&format!("{ok}webhook = \"http://hooks.example\"\n")),
            "base.toml:15:11: webhook of ask `s.ask[0]` must be an https:// URL",
        ),
        (
            ask(&format!("{ok}tools = [\"t\"]\n")),
            "base.toml:11:1: ask `s.ask[0]` must name exactly one of",
        ),
        (
            ask("methods = [\"POST\"]\napprovers = [\"admins\"]\nwhy = \"w\"\n"),
            "base.toml:11:1: ask `s.ask[0]` must name exactly one of",
        ),
        (
            ask("paths = [\"d\"]\napprovers = [\"admins\"]\nwhy = \"w\"\n"),
            "base.toml:12:10: path `d` must start with `/`",
        ),
        (
            ask(&format!("{ok}colour = 1\n")),
            "base.toml:15:1: unknown field `colour`",
        ),
        (
            ask("approvers = [\"admins\"]\n"),
            "base.toml:11:1: missing field `why`",
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
            "expected `{expected}`\n got `{line}`\n all: {err}"
        );
    }
}

#[test]
fn defaults_and_what_a_rule_names() {
    let text = ask(
        "id = \"deploys\"\nmethods = [\"POST\"]\npaths = [\"/d/**\"]\napprovers = [\"admins\", \"cn:alice\"]\nwhy = \"w\"\n",
    );
    let policy = load_text(&text).unwrap();
    let scope = policy.scope(policy.scope_named("s").unwrap());
    let rule = &scope.ask[0];
    assert_eq!(
        (rule.ttl, rule.uses, rule.window, rule.hold),
        (DEFAULT_TTL, 1, None, Duration::ZERO)
    );
    assert_eq!(rule.approvers.describe(), ["admins", "cn:alice"]);
    let peer = [crate::identity::PeerName::Cn("a".into())];
    let call = |method, path| Call {
        peer: &peer,
        target: Target::Route("s"),
        method,
        path,
        aws: None,
        mcp: None,
        now: std::time::SystemTime::UNIX_EPOCH,
    };
    assert_eq!(
        ask_for(scope, &call("POST", "/d/x")).map(|r| &*r.id),
        Some("deploys")
    );
    assert!(ask_for(scope, &call("GET", "/d/x")).is_none());
    assert!(ask_for(scope, &call("POST", "/e/x")).is_none());
    assert!(ask_for(scope, &call("POST", "/d")).is_none());
    assert!(
        rule.approvers
            .admit(&[crate::identity::PeerName::Cn("alice".into())], false)
    );
    assert!(rule.approvers.admit(&[], true));
    assert!(
        !rule
            .approvers
            .admit(&[crate::identity::PeerName::Cn("bob".into())], false)
    );
}

#[test]
fn aws_and_mcp_ask_rules_name_actions_and_tools() {
    let aws = super::super::aws::AwsRule {
        id: "iam".into(),
        allow: true,
        actions: vec!["iam:*".into()],
        resources: vec!["*".into()],
    };
    let rule = AskRule {
        id: "iam".into(),
        on: AskOn::Aws(aws),
        approvers: Approvers::default(),
        why: "w".into(),
        ttl: DEFAULT_TTL,
        uses: 1,
        window: None,
        hold: Duration::ZERO,
        webhook: None,
    };
    let AskOn::Aws(aws) = &rule.on else {
        panic!("an aws rule");
    };
    let create = super::super::aws::AwsRequest {
        action: "iam:CreateUser".into(),
        resource: None,
    };
    let read = super::super::aws::AwsRequest {
        action: "s3:GetObject".into(),
        resource: Some("arn:aws:s3:::b/k".into()),
    };
    assert!(aws.matches(&create));
    assert!(!aws.matches(&read));
    assert!(super::super::aws::wildcard("delete_*", "delete_repo"));
    assert!(!super::super::aws::wildcard("delete_*", "read_repo"));
}
