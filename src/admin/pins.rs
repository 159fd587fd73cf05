//! `/v1/mcp/pins`: first-use MCP tool pins, listed, accepted and forgotten.
//!
//! Invariants:
//! - Listing is reading (auditors may); accepting and forgetting are
//!   changes (admins only, refused and recorded otherwise by the caller).
//! - A change is a decision record (kind `pin`, mode `admin`), written
//!   durably before the pin table beside the log, and that before memory:
//!   a change that cannot be recorded is not made.
//! - Records carry scope, tool and hashes only: never a definition's text.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{Admin, AdminBody, MAX_BODY, error, json};
use crate::audit::{DecisionRecord, McpRecord, kind};
use crate::error::Reason;

/// What `accept` and `forget` are sent.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PinChange {
    scope: String,
    tool: String,
    /// For `accept`: the hash to pin (the last one seen when absent).
    #[serde(default)]
    hash: Option<String>,
}

/// A change to make, once recorded.
enum Change {
    Accept(String),
    Forget,
}

impl Admin {
    /// Every first-use pin, with whether its tool's definition changed.
    pub(super) fn list_pins(&self) -> Response<AdminBody> {
        let pins: Vec<serde_json::Value> = self
            .pipeline
            .mcp()
            .pins
            .list()
            .into_iter()
            .map(|p| {
                serde_json::json!({
                    "scope": p.scope,
                    "tool": p.tool,
                    "pin": p.first,
                    "last_seen": p.last,
                    "changed": p.first != p.last,
                })
            })
            .collect();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "pins": pins,
                "stored": self.pipeline.mcp().pins.db().is_some(),
            }),
        )
    }

    /// `POST /v1/mcp/pins/accept` or `/forget`.
    pub(super) async fn change_pin(
        &self,
        req: Request<Incoming>,
        accept: bool,
        who: &str,
    ) -> Response<AdminBody> {
        let body: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "body unreadable or too large"),
        };
        let asked: PinChange = match serde_json::from_slice(&body) {
            Ok(c) => c,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "body must be JSON with scope, tool (and for accept, optionally hash): {e}"
                    ),
                );
            }
        };
        let pins = &self.pipeline.mcp().pins;
        let Some((first, last)) = pins.get(&asked.scope, &asked.tool) else {
            return error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no pin for tool `{}` in scope `{}`",
                    asked.tool, asked.scope
                ),
            );
        };
        let change = if accept {
            let hash = asked.hash.clone().unwrap_or_else(|| last.clone());
            if !is_hash(&hash) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "hash must be sha256: and 64 lowercase hex digits",
                );
            }
            Change::Accept(hash)
        } else if asked.hash.is_some() {
            return error(StatusCode::BAD_REQUEST, "forget takes no hash");
        } else {
            Change::Forget
        };
        let (verb, new) = match &change {
            Change::Accept(h) => ("accepted", h.as_str()),
            Change::Forget => ("forgotten", "none (pinned afresh at the next sighting)"),
        };
        let mut record = DecisionRecord::new(kind::PIN, &uuid::Uuid::now_v7().to_string());
        record.mode = Some("admin".into());
        record.reason = Reason::Allowed.code().to_owned();
        record.scope = Some(asked.scope.clone());
        record.policy_digest = Some(self.pipeline.policy().digest().to_owned());
        record.mcp = Some(McpRecord {
            method: format!("pin-{}", if accept { "accept" } else { "forget" }),
            name: Some(asked.tool.clone()),
            definition: Some(last.clone()),
            ..McpRecord::default()
        });
        record.detail = Some(format!(
            "pin {verb} by {who}: scope `{}` tool `{}`; old pin {first} (last seen {last}); new pin {new}",
            asked.scope, asked.tool
        ));
        if let Err(e) = self.pipeline.audit().append_durable(record.clone()).await {
            tracing::error!(error = %e, "pin change not recorded; not made");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the change could not be recorded, so it was not made",
            );
        }
        if let Some(db) = pins.db().map(std::path::Path::to_path_buf) {
            let (scope, tool) = (asked.scope.clone(), asked.tool.clone());
            let hash = match &change {
                Change::Accept(h) => Some(h.clone()),
                Change::Forget => None,
            };
            let stored = tokio::task::spawn_blocking(move || match hash {
                Some(h) => crate::mcp::pin_store::accept(&db, &scope, &tool, &h),
                None => crate::mcp::pin_store::forget(&db, &scope, &tool),
            })
            .await;
            if !matches!(stored, Ok(Ok(()))) {
                tracing::error!("pin change recorded but not stored; recording that");
                record.add_detail("not stored, so not made");
                self.pipeline.audit().append(record);
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the pin table could not be written, so the change was not made",
                );
            }
        }
        match &change {
            Change::Accept(h) => pins.set(&asked.scope, &asked.tool, h),
            Change::Forget => {
                pins.forget(&asked.scope, &asked.tool);
            }
        }
        tracing::warn!(scope = %asked.scope, tool = %asked.tool, change = verb, "MCP pin changed");
        json(
            StatusCode::OK,
            &serde_json::json!({
                "scope": asked.scope,
                "tool": asked.tool,
                "change": verb,
                "old_pin": first,
                "last_seen": last,
                "pin": match &change { Change::Accept(h) => Some(h.as_str()), Change::Forget => None },
            }),
        )
    }
}

/// `sha256:` and 64 lowercase hex digits.
fn is_hash(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}
