//! `clawgate approvals`: the admin API's `/v1/approvals`, from a terminal.

use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use http::Method;

use crate::cli::{ApprovalsCommand, ApproverArgs};

pub(crate) async fn run(command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let (to, method, path, body) = match &command {
        ApprovalsCommand::List { to, all, .. } => {
            let path = if *all {
                "/v1/approvals?all=true".to_owned()
            } else {
                "/v1/approvals".to_owned()
            };
            (to, Method::GET, path, None)
        }
        ApprovalsCommand::Show { id, to } => (
            to,
            Method::GET,
            format!("/v1/approvals/{}", checked(id)?),
            None,
        ),
        ApprovalsCommand::Approve { id, to } => (
            to,
            Method::POST,
            format!("/v1/approvals/{}/approve", checked(id)?),
            Some(Bytes::from_static(b"{}")),
        ),
        ApprovalsCommand::Deny { id, reason, to } => (
            to,
            Method::POST,
            format!("/v1/approvals/{}/deny", checked(id)?),
            Some(Bytes::from(
                serde_json::json!({ "reason": reason }).to_string(),
            )),
        ),
    };
    let ApproverArgs {
        admin,
        ca,
        cert,
        key,
    } = to;
    let (status, answer) =
        clawgate::admin::client::request(admin, (method, &path, body), ca, cert, key).await?;
    if status != 200 {
        anyhow::bail!(
            "admin api answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&answer).context("admin api answered something that is not JSON")?;
    match command {
        ApprovalsCommand::List { json: false, .. } => print_list(&v),
        ApprovalsCommand::Approve { .. } | ApprovalsCommand::Deny { .. } => {
            let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
            println!("approval {} {} by {}", s("id"), s("state"), s("decided_by"));
        }
        _ => println!("{}", serde_json::to_string_pretty(&v)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// An id goes into a URL path: only what a UUID holds.
fn checked(id: &str) -> anyhow::Result<&str> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        anyhow::bail!("`{id}` is not an approval id");
    }
    Ok(id)
}

fn print_list(v: &serde_json::Value) {
    let empty = Vec::new();
    let list = v["approvals"].as_array().unwrap_or(&empty);
    if list.is_empty() {
        println!("no approvals pending");
        return;
    }
    println!(
        "{:<36}  {:<8}  {:<12}  {:<12}  {:<20}  request",
        "id", "state", "agent", "scope", "expires"
    );
    for a in list {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
        let r = &a["request"];
        let what = match (r["tool"].as_str(), r["action"].as_str()) {
            (Some(tool), _) => format!("tool {tool}"),
            (None, Some(action)) => format!("aws {action}"),
            _ => format!("{} {}{}", s(&r["method"]), s(&r["host"]), s(&r["path"])),
        };
        println!(
            "{:<36}  {:<8}  {:<12}  {:<12}  {:<20}  {what} ({})",
            s(&a["id"]),
            s(&a["state"]),
            s(&a["agent"]),
            s(&a["scope"]),
            s(&a["expires_at"]),
            s(&a["why"]),
        );
    }
}
