//! The webhook an ask rule names: told of each new approval request, off
//! the call path (a slow or broken receiver never delays or fails a call).
//!
//! One JSON body serves both a plain receiver and a Slack incoming webhook:
//! Slack reads `text`, others read `approval`. It carries what the approver
//! list shows (sentinel placeholders masked, no credential: none has been
//! injected yet) and the approval's link. The receiver is reached over
//! verified TLS (public roots plus the scope's `ca_file`), through the same
//! egress check as the scope's calls.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;

use super::{Approval, Approvals};
use crate::forward::{Timeouts, token_client};
use crate::policy::Scope;
use crate::policy::ask::AskRule;

/// The body sent to the webhook.
pub fn body(approval: &Approval, link: &str) -> serde_json::Value {
    let r = &approval.request;
    let what = match (&r.tool, &r.action) {
        (Some(tool), _) => format!("MCP tool `{tool}`"),
        (None, Some(action)) => format!("AWS `{action}`"),
        (None, None) => format!("`{} {}{}`", r.method, r.host, r.path),
    };
    serde_json::json!({
        "text": format!(
            "clawgate: agent `{}` asks to call {what} in scope `{}` ({}). Approve or deny before {}: {link}",
            approval.agent, approval.scope, approval.why, approval.expires_at
        ),
        "approval": approval,
        "url": link,
    })
}

/// Sends the notification of `approval` to the rule's webhook, if any, in
/// a task of its own.
pub fn notify(approvals: &Approvals, rule: &AskRule, scope: &Scope, approval: &Approval) {
    let Some(url) = rule.webhook.clone() else {
        return;
    };
    let payload = body(approval, &approvals.link(&approval.id)).to_string();
    let roots = Arc::clone(&scope.ca_certs);
    let allow = Arc::clone(&scope.allow_private);
    let id = approval.id.clone();
    tokio::spawn(async move {
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(15),
        };
        let sent = async {
            let client =
                token_client(&roots, allow, Arc::default(), timeouts).map_err(|e| e.to_string())?;
            let request = Request::post(url.as_str())
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(payload)))
                .map_err(|e| e.to_string())?;
            let response = tokio::time::timeout(timeouts.total, client.request(request))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(response.status())
        };
        match sent.await {
            Ok(status) if status.is_success() => {
                tracing::info!(approval = %id, "approval webhook told");
            }
            Ok(status) => tracing::warn!(approval = %id, %status, "approval webhook refused"),
            Err(error) => tracing::warn!(approval = %id, %error, "approval webhook failed"),
        }
    });
}
