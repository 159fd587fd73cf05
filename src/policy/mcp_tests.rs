//! `[scope.mcp]`: loading, every operator and its negation through the pure
//! `decide`, list visibility, pins, and "a deny rule on a tool wins".

use std::time::SystemTime;

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::error::Reason;
use crate::identity::PeerName;
use crate::mcp::McpCall;
use crate::policy::{Call, Decision, Effect, LoadOptions, Policy, Target, decide, load};

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_mcp(mcp: &str) -> Result<Policy, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let text = format!(
        "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"s\"]\n[[scope]]\nname = \"s\"\nupstream = \"https://mcp.example\"\nroute = \"s\"\n{mcp}"
    );
    std::fs::write(dir.path().join("p.toml"), text).map_err(|e| e.to_string())?;
    load(dir.path(), &LoadOptions::new(&no_env))
        .map(|(p, _)| p)
        .map_err(|e| e.to_string())
}

fn call_tool(policy: &Policy, tool: &str, arguments: &Value) -> Decision {
    let size = arguments.to_string().len();
    let mcp = McpCall {
        method: "tools/call",
        name: Some(tool),
        arguments: Some(arguments),
        arguments_size: size,
        definition: None,
        first_pin: None,
    };
    decide(
        &Call {
            peer: &[PeerName::Cn("a".into())],
            target: Target::Route("s"),
            method: "POST",
            path: "/mcp",
            aws: None,
            mcp: Some(&mcp),
            now: SystemTime::UNIX_EPOCH,
        },
        policy,
    )
}

fn rule_with(pointer: &str, condition: &str) -> String {
    format!(
        "[scope.mcp]\n[[scope.mcp.allow]]\nid = \"r\"\ntools = [\"t\"]\n[scope.mcp.allow.args]\n\"{pointer}\" = {{ {condition} }}\n"
    )
}

/// Every operator and its negated form: the arguments, and whether the
/// call is allowed. A missing value is false, negated or not.
#[test]
fn every_operator_and_its_negation() {
    let cases: Vec<(&str, Value, bool)> = vec![
        ("equals = \"acme\"", json!({"v": "acme"}), true),
        ("equals = \"acme\"", json!({"v": "evil"}), false),
        ("equals = 5", json!({"v": 5.0}), true),
        ("equals = 5", json!({"v": "5"}), false),
        ("not_equals = \"acme\"", json!({"v": "evil"}), true),
        ("not_equals = \"acme\"", json!({"v": "acme"}), false),
        ("not_equals = \"acme\"", json!({}), false),
        ("one_of = [\"a\", \"b\"]", json!({"v": "b"}), true),
        ("one_of = [\"a\", \"b\"]", json!({"v": "c"}), false),
        ("not_one_of = [\"a\", \"b\"]", json!({"v": "c"}), true),
        ("not_one_of = [\"a\", \"b\"]", json!({"v": "a"}), false),
        ("glob = \"/ws/**\"", json!({"v": "/ws/a/b"}), true),
        ("glob = \"/ws/*\"", json!({"v": "/ws/a/b"}), false),
        ("not_glob = \"**/.env\"", json!({"v": "/ws/a"}), true),
        ("not_glob = \"**/.env\"", json!({"v": "/ws/.env"}), false),
        ("prefix = \"/ws/\"", json!({"v": "/ws/x"}), true),
        ("prefix = \"/ws/\"", json!({"v": "/etc"}), false),
        ("prefix = \"/ws/\"", json!({"v": 3}), false),
        ("not_prefix = \"/etc\"", json!({"v": "/ws"}), true),
        ("not_prefix = \"/etc\"", json!({"v": "/etc/passwd"}), false),
        ("not_prefix = \"/etc\"", json!({"v": 3}), false),
        ("regex = '^(?i)select\\b'", json!({"v": "SELECT 1"}), true),
        ("regex = '^(?i)select\\b'", json!({"v": "DROP"}), false),
        ("not_regex = 'drop'", json!({"v": "select"}), true),
        ("not_regex = 'drop'", json!({"v": "drop"}), false),
        ("min = 1", json!({"v": 1}), true),
        ("min = 1", json!({"v": 0.5}), false),
        ("min = 1", json!({"v": "9"}), false),
        ("not_min = 10", json!({"v": 9}), true),
        ("not_min = 10", json!({"v": 10}), false),
        ("max = 10", json!({"v": 10}), true),
        ("max = 10", json!({"v": 11}), false),
        ("not_max = 10", json!({"v": 11}), true),
        ("not_max = 10", json!({"v": 10}), false),
        ("max_length = 3", json!({"v": "abc"}), true),
        ("max_length = 3", json!({"v": "abcd"}), false),
        ("max_length = 2", json!({"v": [1, 2]}), true),
        ("max_length = 2", json!({"v": 1}), false),
        ("not_max_length = 3", json!({"v": "abcd"}), true),
        ("not_max_length = 3", json!({"v": "abc"}), false),
        ("type = \"integer\"", json!({"v": 3}), true),
        ("type = \"integer\"", json!({"v": 3.5}), false),
        ("type = \"boolean\"", json!({"v": true}), true),
        ("type = \"array\"", json!({"v": {}}), false),
        ("not_type = \"string\"", json!({"v": 1}), true),
        ("not_type = \"string\"", json!({"v": "1"}), false),
        ("not_type = \"string\"", json!({}), false),
        ("present = true", json!({"v": null}), true),
        ("present = true", json!({}), false),
        ("present = false", json!({}), true),
        ("present = false", json!({"v": 1}), false),
    ];
    for (condition, arguments, allowed) in cases {
        let policy = load_mcp(&rule_with("/v", condition)).unwrap();
        let d = call_tool(&policy, "t", &arguments);
        let want = if allowed {
            Reason::Allowed
        } else {
            Reason::ToolArgumentsRefused
        };
        assert_eq!(d.reason(), want, "{condition} on {arguments}");
        assert_eq!(d.rule(), Some("r"));
    }
}

#[test]
fn nested_pointers_sizes_and_unnamed_arguments() {
    let policy = load_mcp(&format!(
        "{}\"/opts/mode\" = {{ equals = \"ro\" }}\n",
        rule_with("/files/0", "prefix = \"/ws/\"").replace(
            "[[scope.mcp.allow]]",
            "[[scope.mcp.allow]]\nother_arguments = \"deny\"\nmax_argument_bytes = 64"
        )
    ))
    .unwrap();
    let ok = json!({"files": ["/ws/a"], "opts": {"mode": "ro"}});
    assert_eq!(call_tool(&policy, "t", &ok).reason(), Reason::Allowed);
    let extra = json!({"files": ["/ws/a"], "opts": {"mode": "ro"}, "force": true});
    assert_eq!(
        call_tool(&policy, "t", &extra).reason(),
        Reason::ToolArgumentsRefused
    );
    let big = json!({"files": ["/ws/".to_owned() + &"a".repeat(80)], "opts": {"mode": "ro"}});
    assert_eq!(
        call_tool(&policy, "t", &big).reason(),
        Reason::ToolArgumentsRefused
    );
}

#[test]
fn unknown_tools_deny_rules_and_report_mode() {
    let policy = load_mcp(
        "[scope.mcp]\n[[scope.mcp.allow]]\ntools = [\"read_*\", \"*_repo\"]\n[[scope.mcp.deny]]\nid = \"d\"\ntools = [\"delete_*\"]\n[[scope.mcp.deny]]\nid = \"soft\"\nmode = \"report\"\ntools = [\"read_secret\"]\n",
    )
    .unwrap();
    assert_eq!(
        call_tool(&policy, "read_x", &json!({})).reason(),
        Reason::Allowed
    );
    assert_eq!(
        call_tool(&policy, "write_x", &json!({})).reason(),
        Reason::NoMatchingRule
    );
    let d = call_tool(&policy, "delete_repo", &json!({}));
    assert_eq!(
        (d.effect(), d.reason(), d.rule()),
        (Effect::Deny, Reason::DeniedByRule, Some("d"))
    );
    let d = call_tool(&policy, "read_secret", &json!({}));
    assert_eq!(d.effect(), Effect::Allow);
    assert_eq!(d.would_deny(), Some(Reason::DeniedByRule));
    let rules = policy.scope(0).mcp.as_ref().unwrap();
    assert!(rules.visible("read_x", "h", None));
    assert!(
        !rules.visible("delete_repo", "h", None),
        "an unconditional deny hides"
    );
    assert!(
        !rules.visible("write_x", "h", None),
        "no allow rule: hidden"
    );
}

#[test]
fn list_visibility_ignores_argument_conditions_and_follows_pins() {
    let hash = format!("sha256:{}", "a".repeat(64));
    let policy = load_mcp(&format!(
        "{}[scope.mcp.pins]\nt = \"{hash}\"\n",
        rule_with("/v", "equals = 1").replace(
            "[[scope.mcp.allow]]",
            "pin = \"first-use\"\n[[scope.mcp.allow]]"
        )
    ))
    .unwrap();
    let rules = policy.scope(0).mcp.as_ref().unwrap();
    assert!(rules.visible("t", &hash, None));
    assert!(!rules.visible("t", "sha256:other", None));
    // A policy pin wins over the first-use pin.
    assert!(rules.visible("t", &hash, Some("sha256:first")));
    let mut pinned = McpCall {
        method: "tools/call",
        name: Some("t"),
        arguments: None,
        arguments_size: 2,
        definition: Some("sha256:other"),
        first_pin: None,
    };
    let args = json!({"v": 1});
    pinned.arguments = Some(&args);
    assert_eq!(rules.decide(&pinned).reason, Reason::ToolDefinitionChanged);
    pinned.definition = None;
    assert_eq!(
        rules.decide(&pinned).reason,
        Reason::ToolDefinitionUnverified
    );
    pinned.definition = Some(&hash);
    assert_eq!(rules.decide(&pinned).reason, Reason::Allowed);
}

#[test]
fn resources_and_prompts_by_uri_and_name() {
    let policy = load_mcp(
        "[scope.mcp]\n[[scope.mcp.allow]]\nresources = [\"file:///ws/**\"]\n[[scope.mcp.allow]]\nprompts = [\"summarise\"]\n",
    )
    .unwrap();
    let rules = policy.scope(0).mcp.as_ref().unwrap();
    let call = |method: &'static str, name: &'static str| McpCall {
        method,
        name: Some(name),
        arguments: None,
        arguments_size: 0,
        definition: None,
        first_pin: None,
    };
    assert_eq!(
        rules
            .decide(&call("resources/read", "file:///ws/a/b"))
            .reason,
        Reason::Allowed
    );
    assert_eq!(
        rules
            .decide(&call("resources/read", "file:///etc/passwd"))
            .reason,
        Reason::NoMatchingRule
    );
    assert_eq!(
        rules.decide(&call("prompts/get", "summarise")).reason,
        Reason::Allowed
    );
    assert_eq!(
        rules.decide(&call("prompts/get", "other")).reason,
        Reason::NoMatchingRule
    );
    assert_eq!(
        rules.decide(&call("initialize", "x")).reason,
        Reason::Allowed
    );
}

#[test]
fn loader_errors_name_the_place() {
    let cases = [
        (
            "[scope.mcp]\n[[scope.mcp.allow]]\ntools = [\"a\"]\nprompts = [\"b\"]\n",
            "needs exactly one of `tools`, `resources` or `prompts`",
        ),
        (
            &rule_with("/v", "regex = '('"),
            "is not a valid regular expression",
        ),
        (&rule_with("v", "equals = 1"), "`v` is not a JSON pointer"),
        (
            &rule_with("/v", "type = \"text\""),
            "type `text` must be one of",
        ),
        (&rule_with("/v", "shape = 1"), "unknown field `shape`"),
        (
            "[scope.mcp]\npin = \"always\"\n",
            "pin `always` must be `first-use` or `off`",
        ),
        (
            "[scope.mcp]\n[scope.mcp.pins]\nt = \"md5:x\"\n",
            "pin of tool `t` must be `sha256:`",
        ),
        (
            "[scope.mcp]\nendpoint = \"mcp\"\n",
            "endpoint `mcp` must be a normalised path",
        ),
        (
            "connect = \"tunnel\"\n[scope.mcp]\n[[scope.mcp.allow]]\ntools = [\"*\"]\n",
            "tunnels, so it cannot have MCP rules",
        ),
        (
            "[scope.mcp]\n[[scope.mcp.allow]]\nresources = [\"x\"]\n[scope.mcp.allow.args]\n\"/a\" = { equals = 1 }\n",
            "argument conditions apply to `tools` rules only",
        ),
    ];
    for (mcp, message) in cases {
        let e = load_mcp(mcp).unwrap_err();
        assert!(e.contains(message), "{mcp}\n{e}");
        assert!(e.contains("p.toml:"), "{e}");
    }
}

fn arb_tool_glob() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["*", "t*", "*t", "tool", "other", "t?ol", "{tool,x}"])
        .prop_map(str::to_owned)
}

fn arb_condition() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        "[scope.mcp.allow.args]\n\"/v\" = { equals = 1 }\n",
        "[scope.mcp.allow.args]\n\"/v\" = { not_equals = 1 }\n",
        "[scope.mcp.allow.args]\n\"/v\" = { present = false }\n",
        "mode = \"report\"\n",
    ])
    .prop_map(str::to_owned)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// An enforced deny rule on a tool wins whatever else the scope holds:
    /// any allow rules, with or without conditions or report mode, any
    /// arguments. The tool is refused and hidden.
    #[test]
    fn a_deny_rule_on_a_tool_always_wins(
        allows in prop::collection::vec((arb_tool_glob(), arb_condition()), 0..5),
        deny in prop::sample::select(vec!["tool", "t*", "*", "{x,tool}"]),
        v in prop::option::of(0i64..3),
    ) {
        let mut text = String::from("[scope.mcp]\n");
        for (glob, extra) in &allows {
            text.push_str(&format!("[[scope.mcp.allow]]\ntools = [\"{glob}\"]\n{extra}"));
        }
        text.push_str(&format!("[[scope.mcp.deny]]\nid = \"no\"\ntools = [\"{deny}\"]\n"));
        let policy = load_mcp(&text).unwrap();
        let args = v.map_or_else(|| json!({}), |v| json!({"v": v}));
        let d = call_tool(&policy, "tool", &args);
        prop_assert_eq!(d.effect(), Effect::Deny);
        prop_assert_eq!(d.reason(), Reason::DeniedByRule);
        prop_assert_eq!(d.rule(), Some("no"));
        prop_assert!(!policy.scope(0).mcp.as_ref().unwrap().visible("tool", "h", None));
    }
}
