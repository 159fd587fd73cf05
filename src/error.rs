//! Typed reasons and their one mapping to responses.
//!
//! Every decision clawgate makes carries a [`Reason`]. The same kebab-case code
//! appears in the response body an agent sees and in the decision record an
//! auditor reads. A refused call is a [`Refusal`]: the reason plus the data
//! the agent needs (`Retry-After`, a challenge); [`Refusal::response`] is the
//! only place a refusal becomes status, body and headers, and proxy
//! refusals carry an RFC 9209 `Proxy-Status` with the reason code.
//!
//! Never put anything but the reason code and the request id in a refusal body:
//! a body must not echo agent input, upstream detail or secret material.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;
use crate::limits::Limited;

mod reason;
pub use reason::{PROXY_STATUS_HEADER, Reason, proxy_status};

/// The header that carries the request id on every response, allowed or not.
pub const REQUEST_ID_HEADER: &str = "x-clawgate-request-id";

/// A refused call: its reason and whatever the agent needs to act on it.
/// [`Refusal::response`] is the one place a refusal becomes status, body
/// and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A reason that needs nothing more than its code.
    Denied(Reason),
    /// A rate limit refused the call: which one, and when to try again.
    RateLimited(Limited),
    /// No run token was sent where one is needed: the answer asks for one.
    Unauthenticated(Challenge),
    /// The call waits for a person: which approval, where an approver
    /// answers it, and when to try again.
    ApprovalRequired(AskPending),
}

/// What an agent told to wait for approval needs to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskPending {
    /// The approval's id.
    pub id: String,
    /// Where an approver sees and answers it (the admin API or console).
    pub url: String,
    /// Seconds until a retry is worth making.
    pub retry_after: u64,
}

/// How a refusal for want of a token asks for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A proxy listener: 407 with `Proxy-Authenticate: Basic`.
    Proxy,
    /// The vending listener: 401 with `WWW-Authenticate: Bearer`.
    Bearer,
}

/// Whether the agent is talking to clawgate as a proxy (`CONNECT`, absolute
/// form, inside an intercepted tunnel) or as a server (gateway, vending);
/// proxy refusals carry `Proxy-Status` (RFC 9209).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// clawgate answers as a proxy.
    Proxy,
    /// clawgate answers as the server.
    Server,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Refusal {
        Refusal::Denied(reason)
    }
}

impl Refusal {
    /// The reason code this refusal is recorded and answered with.
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::Denied(reason) => *reason,
            Refusal::RateLimited(_) => Reason::RateLimited,
            Refusal::Unauthenticated(_) => Reason::RunTokenMissing,
            Refusal::ApprovalRequired(_) => Reason::ApprovalRequired,
        }
    }

    /// What the decision record says beyond the reason code, if anything.
    pub fn detail(&self) -> Option<String> {
        match self {
            Refusal::RateLimited(limited) => Some(limited.to_string()),
            Refusal::ApprovalRequired(pending) => Some(format!("approval {}", pending.id)),
            Refusal::Denied(_) | Refusal::Unauthenticated(_) => None,
        }
    }

    /// The response for this refusal: status, a small JSON body, the request
    /// id header, and the headers the refusal's data calls for.
    pub fn response(&self, request_id: &str, via: Via) -> Response<ProxyBody> {
        self.answer(request_id, via, None)
    }

    /// The response for a refused MCP message: a JSON-RPC error with the
    /// request's id, so the agent's model reads a refusal rather than a
    /// transport failure, with the same headers as [`Refusal::response`]. A
    /// request refused by policy gets HTTP 200; a notification, a malformed
    /// body, a batch or disagreeing headers get the reason's status. A
    /// refused tool, resource or prompt reads like an unknown one, so that
    /// its existence is not revealed; `error.data` holds the reason code and
    /// the request id, and nothing the agent sent.
    pub fn mcp_response(
        &self,
        request_id: &str,
        via: Via,
        message: &crate::audit::McpRecord,
    ) -> Response<ProxyBody> {
        self.answer(request_id, via, Some(message))
    }

    fn answer(
        &self,
        request_id: &str,
        via: Via,
        mcp: Option<&crate::audit::McpRecord>,
    ) -> Response<ProxyBody> {
        let reason = self.reason();
        let (status, extra) = match self {
            Refusal::Denied(reason) => (reason.status(), None),
            Refusal::RateLimited(limited) => (
                StatusCode::TOO_MANY_REQUESTS,
                Some((
                    header::RETRY_AFTER,
                    HeaderValue::from(limited.retry_after_secs()),
                )),
            ),
            Refusal::Unauthenticated(Challenge::Proxy) => (
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                Some((
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"clawgate\""),
                )),
            ),
            Refusal::Unauthenticated(Challenge::Bearer) => (
                StatusCode::UNAUTHORIZED,
                Some((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"clawgate\""),
                )),
            ),
            Refusal::ApprovalRequired(pending) => (
                StatusCode::FORBIDDEN,
                Some((header::RETRY_AFTER, HeaderValue::from(pending.retry_after))),
            ),
        };
        let (status, body) = match mcp {
            None => (
                status,
                serde_json::json!({
                    "error": reason.error_kind(),
                    "reason": reason.code(),
                    "request_id": request_id,
                }),
            ),
            Some(message) => mcp_error(reason, status, message, request_id),
        };
        let body = match self {
            Refusal::ApprovalRequired(pending) => with_approval(body, pending),
            _ => body,
        };
        let mut response = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID_HEADER, id);
        }
        if let Some((name, value)) = extra {
            headers.insert(name, value);
        }
        if via == Via::Proxy
            && let Ok(value) = HeaderValue::from_str(&proxy_status(reason))
        {
            headers.insert(PROXY_STATUS_HEADER, value);
        }
        response
    }
}

/// A refusal body with the approval the agent waits for: at the top level
/// of a plain refusal, in `error.data` of a JSON-RPC error (where MCP
/// clients show it to their user).
fn with_approval(mut body: serde_json::Value, pending: &AskPending) -> serde_json::Value {
    let target = match body.pointer_mut("/error/data") {
        Some(data) => data,
        None => &mut body,
    };
    if let Some(object) = target.as_object_mut() {
        object.insert("approval_id".into(), pending.id.clone().into());
        object.insert("approval_url".into(), pending.url.clone().into());
        object.insert("retry_after".into(), pending.retry_after.into());
    }
    body
}

/// The status and JSON-RPC error body of a refused MCP message.
fn mcp_error(
    reason: Reason,
    status: StatusCode,
    message: &crate::audit::McpRecord,
    request_id: &str,
) -> (StatusCode, serde_json::Value) {
    use crate::mcp::jsonrpc::{INVALID_REQUEST, Id, REFUSAL_CODE, refusal};
    let id = message
        .id
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .map(Id);
    let by_rule = matches!(
        reason,
        Reason::NoMatchingRule
            | Reason::DeniedByRule
            | Reason::ToolArgumentsRefused
            | Reason::ToolDefinitionChanged
            | Reason::ToolDefinitionUnverified
            | Reason::ResourceUriRefused
    );
    let (code, text) = match (reason, message.method.as_str()) {
        (Reason::McpHeaderMismatch, _) => (-32020, "Header mismatch"),
        (Reason::ApprovalRequired, _) => (REFUSAL_CODE, "Approval required"),
        (Reason::MalformedRequest | Reason::McpBatchRefused | Reason::RequestTooLarge, _) => {
            (INVALID_REQUEST, "Invalid Request")
        }
        (_, "tools/call") if by_rule => (REFUSAL_CODE, "Unknown tool"),
        (_, m) if by_rule && m.starts_with("resources/") => (REFUSAL_CODE, "Resource not found"),
        (_, "prompts/get") if by_rule => (REFUSAL_CODE, "Unknown prompt"),
        _ => (REFUSAL_CODE, "Denied by policy"),
    };
    let status = match (&id, code) {
        (Some(_), REFUSAL_CODE) => StatusCode::OK,
        _ => status,
    };
    (
        status,
        refusal(id.as_ref(), code, text, reason.code(), request_id),
    )
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
