//! `clawgate mcp pins`: first-use pins through the admin API
//! (`/v1/mcp/pins`), or a server's tool hashes for a policy pin table.

use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use http::Method;

use crate::cli::{ApproverArgs, PinsCommand};

pub(crate) async fn run(command: PinsCommand) -> anyhow::Result<ExitCode> {
    let (to, method, path, body) = match &command {
        PinsCommand::List { to, .. } => (to, Method::GET, "/v1/mcp/pins", None),
        PinsCommand::Accept {
            scope,
            tool,
            hash,
            to,
        } => (
            to,
            Method::POST,
            "/v1/mcp/pins/accept",
            Some(serde_json::json!({ "scope": scope, "tool": tool, "hash": hash })),
        ),
        PinsCommand::Forget { scope, tool, to } => (
            to,
            Method::POST,
            "/v1/mcp/pins/forget",
            Some(serde_json::json!({ "scope": scope, "tool": tool })),
        ),
    };
    let ApproverArgs {
        admin,
        ca,
        cert,
        key,
    } = to;
    let body = body.map(|b| Bytes::from(b.to_string()));
    let (status, answer) =
        clawgate::admin::client::request(admin, (method, path, body), ca, cert, key).await?;
    if status != 200 {
        anyhow::bail!(
            "admin api answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&answer).context("admin api answered something that is not JSON")?;
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
    match command {
        PinsCommand::List { json: false, .. } => {
            let empty = Vec::new();
            let pins = v["pins"].as_array().unwrap_or(&empty);
            if pins.is_empty() {
                println!("no first-use pins");
            }
            for p in pins {
                let mark = if p["changed"].as_bool() == Some(true) {
                    format!(" CHANGED, last seen {}", s(p, "last_seen"))
                } else {
                    String::new()
                };
                println!("{} {} {}{mark}", s(p, "scope"), s(p, "tool"), s(p, "pin"));
            }
        }
        PinsCommand::List { .. } => println!("{}", serde_json::to_string_pretty(&v)?),
        PinsCommand::Accept { .. } | PinsCommand::Forget { .. } => println!(
            "{} {}: {} (was {})",
            s(&v, "scope"),
            s(&v, "tool"),
            if v["change"] == "accepted" {
                format!("pinned to {}", s(&v, "pin"))
            } else {
                "forgotten; pinned afresh at the next sighting".to_owned()
            },
            s(&v, "old_pin")
        ),
    }
    Ok(ExitCode::SUCCESS)
}
