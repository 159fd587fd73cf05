use serde_json::json;

use super::*;

#[test]
fn requests_notifications_and_responses_are_told_apart() {
    let m =
        parse_message(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}"#)
            .unwrap();
    assert_eq!(m.method(), Some("tools/call"));
    assert_eq!(m.id().map(Id::text).as_deref(), Some("7"));
    let m =
        parse_message(br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}"#).unwrap();
    assert!(matches!(m, Message::Notification { .. }));
    let m = parse_message(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
    assert!(matches!(m, Message::Response { error: false, .. }));
    let m =
        parse_message(br#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}"#).unwrap();
    assert!(matches!(
        m,
        Message::Response {
            id: None,
            error: true,
            ..
        }
    ));
}

#[test]
fn duplicate_keys_anywhere_are_malformed() {
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"p":[{"x":1,"x":2}]}}}"#,
    ] {
        assert!(
            matches!(parse_message(body.as_bytes()), Err(FrameError::Json(_))),
            "{body}"
        );
    }
}

#[test]
fn batches_and_other_shapes_are_refused() {
    assert_eq!(
        parse_message(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#),
        Err(FrameError::Batch)
    );
    for body in [
        r#"{"id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":"s"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","result":{}}"#,
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
        r#""text""#,
    ] {
        assert!(
            matches!(parse_message(body.as_bytes()), Err(FrameError::Shape(_))),
            "{body}"
        );
    }
    assert!(matches!(
        parse_message(b"{\"jsonrpc\":\"2.0\"} trailing"),
        Err(FrameError::Json(_))
    ));
}

#[test]
fn a_refusal_carries_the_id_the_reason_and_the_request_id_only() {
    let id = Id(json!("req-1"));
    let body = refusal(
        Some(&id),
        REFUSAL_CODE,
        "Unknown tool",
        "denied-by-rule",
        "rid",
    );
    assert_eq!(body["id"], json!("req-1"));
    assert_eq!(body["error"]["code"], json!(REFUSAL_CODE));
    assert_eq!(body["error"]["data"]["reason"], json!("denied-by-rule"));
    assert_eq!(body["error"]["data"]["request_id"], json!("rid"));
    assert_eq!(
        refusal(None, INVALID_REQUEST, "m", "r", "x")["id"],
        json!(null)
    );
}
