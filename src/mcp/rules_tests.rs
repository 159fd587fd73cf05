use serde_json::json;

use super::*;

fn condition(pointer: &str, op: Op, negated: bool) -> Condition {
    Condition {
        pointer: pointer.into(),
        op,
        negated,
    }
}

#[test]
fn a_missing_value_is_false_except_for_absence() {
    let args = json!({"a": {"b": 1}});
    assert!(condition("/a/b", Op::Present(true), false).holds(&args));
    assert!(!condition("/a/c", Op::Present(true), false).holds(&args));
    assert!(condition("/a/c", Op::Present(false), false).holds(&args));
    for op in [
        Op::Equals(json!(1)),
        Op::Prefix("x".into()),
        Op::Min(0.0),
        Op::Type(JsonType::Number),
        Op::MaxLength(9),
    ] {
        assert!(!condition("/a/c", op.clone(), false).holds(&args));
        assert!(!condition("/a/c", op, true).holds(&args));
    }
}

#[test]
fn no_type_coercion() {
    let args = json!({"n": "5", "s": 5});
    assert!(!condition("/n", Op::Min(1.0), false).holds(&args));
    assert!(!condition("/n", Op::Min(1.0), true).holds(&args));
    assert!(!condition("/s", Op::Prefix("5".into()), false).holds(&args));
    assert!(!condition("/s", Op::Equals(json!("5")), false).holds(&args));
    assert!(condition("/s", Op::Equals(json!("5")), true).holds(&args));
}

#[test]
fn pointer_escapes_name_the_top_level_argument() {
    let c = condition("/a~1b/c", Op::Present(true), false);
    assert_eq!(c.first_key().as_deref(), Some("a/b"));
    assert!(c.holds(&json!({"a/b": {"c": 0}})));
}

#[test]
fn methods_rules_do_not_govern_are_allowed() {
    let rules = McpRules {
        endpoint: "/mcp".into(),
        rules: Vec::new(),
        max_argument_bytes: None,
        pin_mode: PinMode::FirstUse,
        pins: HashMap::new(),
        results: Default::default(),
    };
    for method in [
        "initialize",
        "tools/list",
        "ping",
        "notifications/initialized",
        "response",
    ] {
        let call = McpCall {
            method,
            name: None,
            arguments: None,
            arguments_size: 0,
            definition: None,
            first_pin: None,
        };
        assert_eq!(rules.decide(&call).reason, Reason::Allowed, "{method}");
    }
    let call = McpCall {
        method: "tools/call",
        name: None,
        arguments: None,
        arguments_size: 0,
        definition: None,
        first_pin: None,
    };
    assert_eq!(rules.decide(&call).reason, Reason::MalformedRequest);
}
