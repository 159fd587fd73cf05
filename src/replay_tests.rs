//! Replay's honesty on records that cannot be re-decided (MCP arguments
//! known only by digest, S3 resources not recorded) and its re-decisions of
//! those that can (MCP tools by name, AWS actions, exceptions at the time
//! of the call).
#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;
use crate::audit::McpRecord;
use crate::policy::{LoadOptions, load};

fn policy(text: &str) -> Policy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let env = |_: &str| None;
    load(dir.path(), &LoadOptions::new(&env)).unwrap().0
}

const AGENT: &str =
    "[[agent]]\nname = \"a\"\nidentities = [\"cn:a\"]\nscopes = [\"tools\", \"s3\"]\n";
const S3: &str = "[[scope]]\nname = \"s3\"\nupstream = \"https://s3.us-east-1.amazonaws.com\"\n[scope.credential]\nkind = \"aws\"\nrole_arn = \"arn:aws:iam::123456789012:role/r\"\n";

fn mcp_scope(allow: &str) -> String {
    format!(
        "[[scope]]\nname = \"tools\"\nupstream = \"https://mcp.example\"\nroute = \"tools\"\n[scope.mcp]\n{allow}"
    )
}

fn record(reason: &str, scope: &str, path: &str) -> DecisionRecord {
    DecisionRecord {
        seq: 1,
        ts: "2026-12-01T10:00:00.000Z".into(),
        kind: "decision".into(),
        request_id: "r1".into(),
        mode: Some("gateway".into()),
        agent: Some("a".into()),
        method: Some("POST".into()),
        path: Some(path.into()),
        scope: Some(scope.into()),
        decision: Some(if reason == "allowed" { "allow" } else { "deny" }.into()),
        reason: reason.into(),
        ..DecisionRecord::default()
    }
}

fn tool_call(tool: &str, reason: &str) -> DecisionRecord {
    DecisionRecord {
        mcp: Some(McpRecord {
            method: "tools/call".into(),
            name: Some(tool.into()),
            arguments_hash: Some("hmac-sha256:00".into()),
            ..McpRecord::default()
        }),
        ..record(reason, "tools", "/mcp")
    }
}

#[test]
fn mcp_tools_are_re_decided_by_name_unless_arguments_decide() {
    let now = mcp_scope(
        "[[scope.mcp.allow]]\nid = \"read\"\ntools = [\"read_file\"]\n[[scope.mcp.allow]]\nid = \"query\"\ntools = [\"query\"]\n[scope.mcp.allow.args]\n\"/sql\" = { prefix = \"SELECT\" }\n",
    );
    let candidate = policy(&format!(
        "{AGENT}{now}{S3}[[scope.allow]]\nactions = [\"*\"]\n"
    ));
    let mut replay = Replay::new(&candidate, Select::default());
    replay.feed(&tool_call("read_file", "allowed"));
    replay.feed(&tool_call("read_dir", "allowed"));
    replay.feed(&tool_call("query", "tool-arguments-refused"));
    let s = &replay.summary;
    assert_eq!(
        (s.records, s.re_decided, s.unchanged, s.flipped),
        (3, 2, 1, 1)
    );
    assert_eq!(
        s.not_re_decidable.get("mcp-arguments-digest-only"),
        Some(&1)
    );
    let (key, group) = s.flips.iter().next().unwrap();
    assert_eq!(
        (key.direction, key.then.as_str(), key.now.as_str()),
        ("allow->deny", "allowed", "no-matching-rule")
    );
    assert_eq!(group.count, 1);
}

#[test]
fn aws_actions_are_re_decided_and_s3_resources_are_not_guessed() {
    let tools = mcp_scope("[[scope.mcp.allow]]\nid = \"read\"\ntools = [\"*\"]\n");
    let by_action = policy(&format!(
        "{AGENT}{tools}{S3}[[scope.allow]]\nid = \"get\"\nactions = [\"s3:GetObject\"]\n"
    ));
    let by_resource = policy(&format!(
        "{AGENT}{tools}{S3}[[scope.allow]]\nid = \"get\"\nactions = [\"s3:*\"]\nresources = [\"arn:aws:s3:::reports/*\"]\n"
    ));
    let put = DecisionRecord {
        mode: Some("forward".into()),
        host: Some("s3.us-east-1.amazonaws.com".into()),
        method: Some("PUT".into()),
        action: Some("s3:PutObject".into()),
        ..record("allowed", "s3", "/reports/q1.csv")
    };
    let mut replay = Replay::new(&by_action, Select::default());
    replay.feed(&put);
    assert_eq!(replay.summary.flipped, 1);
    let key = replay.summary.flips.keys().next().unwrap();
    assert_eq!(key.now, "no-matching-rule");
    let mut replay = Replay::new(&by_resource, Select::default());
    replay.feed(&put);
    assert_eq!(replay.summary.re_decided, 0);
    assert_eq!(
        replay
            .summary
            .not_re_decidable
            .get("aws-resource-not-recorded"),
        Some(&1)
    );
}

#[test]
fn filters_and_kinds_leave_records_out() {
    let tools = mcp_scope("[[scope.mcp.allow]]\nid = \"read\"\ntools = [\"*\"]\n");
    let p = policy(&format!(
        "{AGENT}{tools}{S3}[[scope.allow]]\nactions = [\"*\"]\n"
    ));
    let mut replay = Replay::new(
        &p,
        Select {
            agent: Some("b".into()),
            scope: None,
        },
    );
    replay.feed(&tool_call("x", "allowed"));
    let outcome = DecisionRecord {
        kind: "outcome".into(),
        ..tool_call("x", "allowed")
    };
    replay.feed(&outcome);
    assert_eq!((replay.summary.records, replay.summary.skipped), (0, 1));
}
