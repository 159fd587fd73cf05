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

/// The header that carries the request id on every response, allowed or not.
pub const REQUEST_ID_HEADER: &str = "x-clawgate-request-id";

/// The closed set of reasons. Adding one means adding it to the README table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The call was allowed by a rule.
    Allowed,
    /// The peer failed the TLS handshake (no, expired, revoked or foreign
    /// certificate). Recorded only: the peer never gets an HTTP answer.
    TlsRejected,
    /// A valid certificate whose names map to no agent in policy.
    UnknownAgent,
    /// The route or host is not in any of the agent's scopes.
    NoMatchingScope,
    /// The scope has no allow rule for this method and path (deny by default).
    NoMatchingRule,
    /// An explicit deny rule matched.
    DeniedByRule,
    /// The destination resolved to (or is) an address in a refused range
    /// that no scope names in `allow_private`.
    EgressAddressBlocked,
    /// The request could not be interpreted safely (bad path, bad target).
    MalformedRequest,
    /// The scope injects a credential that is not available.
    CredentialUnavailable,
    /// A sentinel placeholder was headed to a host it is not bound to.
    SentinelMisdirected,
    /// An AWS request maps to no IAM action clawgate knows, and the scope
    /// does not allow every action.
    AwsActionUnmapped,
    /// The body is larger than clawgate will read to sign or scan it.
    RequestTooLarge,
    /// The upstream could not be reached or broke the exchange.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The decision could not be recorded, so the call was not forwarded.
    AuditUnavailable,
    /// A policy was loaded and put in force (a record, not a refusal).
    PolicyLoaded,
    /// The agent went away before the exchange finished (outcome records only).
    ClientCancelled,
    /// A rate limit of the agent, or of the agent in the scope, was reached.
    RateLimited,
    /// A policy exception reached its expiry (a record, once per exception).
    ExceptionExpired,
    /// A changed policy did not validate; the last good one stays (a record).
    PolicyRejected,
    /// An admin override isolates the agent.
    AgentIsolated,
    /// An admin override revokes the client certificate's serial.
    SerialRevoked,
    /// An admin override disables the scope.
    ScopeDisabled,
    /// An override was created, removed or lapsed (a record, not a refusal).
    OverrideChanged,
    /// A run token that does not verify (signature, issuer, audience, form).
    RunTokenInvalid,
    /// A run token past its expiry.
    RunTokenExpired,
    /// A run token issued for another agent than the certificate's.
    RunTokenWrongAgent,
    /// The scope is not among those the run token allows.
    RunTokenScope,
    /// The token listener needs a run token in `Proxy-Authorization`; the
    /// vending listener a vending or run token in `Authorization`.
    RunTokenMissing,
    /// A proxy key that matches no key in policy.
    ProxyKeyInvalid,
    /// A proxy key past its `expires` in policy.
    ProxyKeyExpired,
    /// An admin override revokes the proxy key.
    ProxyKeyRevoked,
    /// A tunnel, intercepted connection or upgraded socket ended normally:
    /// a peer closed it (outcome records only).
    TunnelClosed,
    /// An override (isolation, revoked serial, disabled scope) ended a live
    /// connection (outcome records only).
    EndedByOverride,
    /// A policy reload withdrew what a live connection was allowed, and
    /// ended it (outcome records only).
    EndedByPolicy,
    /// Certificates were reloaded and put in force (a record, not a refusal).
    CertsLoaded,
    /// A certificate reload failed; the old material stays (a record).
    CertsRejected,
    /// clawgate stopped before the call was decided or finished (decision
    /// and outcome records only; nobody is left to answer).
    Shutdown,
    /// An MCP tool's name is allowed, but its arguments meet no allow rule's
    /// conditions (or exceed the size limit).
    ToolArgumentsRefused,
    /// An MCP tool's definition differs from its pin (a "rug pull"): hidden
    /// from `tools/list` and refused.
    ToolDefinitionChanged,
    /// An MCP tool pinned in policy whose definition clawgate has not seen,
    /// so it cannot be checked against the pin.
    ToolDefinitionUnverified,
    /// A tool definition seen for the first time and pinned (a record).
    ToolPinned,
    /// An `Mcp-Method` or `Mcp-Name` header disagrees with the body.
    McpHeaderMismatch,
    /// A JSON-RPC batch (a JSON array) sent to an MCP endpoint.
    McpBatchRefused,
    /// The MCP upstream answered 401 with an OAuth challenge; the agent is
    /// not sent into an OAuth flow.
    UpstreamAuthRequired,
    /// A range of the log was exported to an archive (a record of kind
    /// `archive`, carrying the archive's manifest).
    LogArchived,
    /// Archived records were removed from the log (a record of kind
    /// `prune`, carrying the anchor verification starts from).
    LogPruned,
    /// A client certificate carries more than one clawgate identity (SPIFFE
    /// URI SAN); refused in the handshake. Recorded only.
    IdentityAmbiguous,
    /// A tunnel's TLS ClientHello names (SNI) another host than its
    /// `CONNECT` target; the tunnel is cut before a byte reaches the
    /// upstream (outcome records only).
    TunnelSniMismatch,
    /// A tunnel's first bytes are not a TLS ClientHello with a server name,
    /// and the scope does not allow that (outcome records only).
    TunnelSniMissing,
    /// A tunnel's ClientHello offers Encrypted Client Hello, which hides the
    /// real server name, and the scope does not allow that (outcome records
    /// only).
    TunnelEch,
    /// An admin API request from a certificate whose names hold no role
    /// for it: no role at all, or an auditor asking for a change.
    AdminRoleRequired,
    /// A value clawgate injected (a credential, a sentinel's value, an STS
    /// session) came back in a response: redacted, or the response refused
    /// (outcome records; a 502 when refused before the head was sent).
    CredentialReflected,
    /// A minted credential's provider refused the client or the grant
    /// (`invalid_grant`, `invalid_client`, `invalid_scope`, ...), and no
    /// token minted earlier was still usable.
    CredentialGrantInvalid,
    /// A minted credential's provider needs a person's consent or login.
    CredentialConsentRequired,
    /// A minted credential's token endpoint could not be reached (or gave
    /// no usable answer) past the grace of the token minted before.
    CredentialEndpointUnreachable,
    /// An MCP upstream answered with a redirect: it is not followed, and
    /// its `Location` (an upstream address) never reaches the agent.
    UpstreamRedirectRefused,
    /// A resource URI with a dot segment (`..`, `%2e%2e`, after
    /// normalisation) is refused before any rule sees it.
    ResourceUriRefused,
    /// A rotated refresh token could not be stored where the old one came
    /// from: the access token it came with is not used (fail closed).
    CredentialStoreFailed,
    /// An MCP result (a tool's result, a resource's contents, a prompt's
    /// messages) held something the scope's `[scope.mcp.results]` refuses:
    /// the agent got a JSON-RPC error instead (outcome records only).
    ToolResultRefused,
    /// The call matches an `[[scope.ask]]` rule and no approval covers it:
    /// the agent gets an approval id and URL and retries once approved.
    ApprovalRequired,
    /// A call asked for approval (a record of kind `approval`).
    ApprovalRequested,
    /// An approver granted an approval (a record of kind `approval`).
    ApprovalGranted,
    /// An approver denied the call's approval: the call is refused.
    ApprovalDenied,
    /// The call's approval was not answered before its ttl (or its hold)
    /// ran out: the call is refused.
    ApprovalExpired,
    /// Too many calls are already held waiting for approval (for this agent
    /// or overall): the call is refused rather than held.
    ApprovalHoldsExhausted,
    /// An approve or deny from someone the ask rule does not name, or from
    /// the agent whose call it is (admin API, 403).
    ApproverNotAllowed,
}

impl Reason {
    /// Every reason, in the order of the README table.
    pub const ALL: [Reason; 67] = [
        Reason::Allowed,
        Reason::TlsRejected,
        Reason::UnknownAgent,
        Reason::NoMatchingScope,
        Reason::NoMatchingRule,
        Reason::DeniedByRule,
        Reason::EgressAddressBlocked,
        Reason::MalformedRequest,
        Reason::CredentialUnavailable,
        Reason::SentinelMisdirected,
        Reason::AwsActionUnmapped,
        Reason::RequestTooLarge,
        Reason::UpstreamUnreachable,
        Reason::UpstreamTimeout,
        Reason::AuditUnavailable,
        Reason::PolicyLoaded,
        Reason::ClientCancelled,
        Reason::Shutdown,
        Reason::RateLimited,
        Reason::ExceptionExpired,
        Reason::PolicyRejected,
        Reason::AgentIsolated,
        Reason::SerialRevoked,
        Reason::ScopeDisabled,
        Reason::OverrideChanged,
        Reason::RunTokenInvalid,
        Reason::RunTokenExpired,
        Reason::RunTokenWrongAgent,
        Reason::RunTokenScope,
        Reason::RunTokenMissing,
        Reason::ProxyKeyInvalid,
        Reason::ProxyKeyExpired,
        Reason::ProxyKeyRevoked,
        Reason::ToolArgumentsRefused,
        Reason::ToolDefinitionChanged,
        Reason::ToolDefinitionUnverified,
        Reason::ToolPinned,
        Reason::McpHeaderMismatch,
        Reason::McpBatchRefused,
        Reason::UpstreamAuthRequired,
        Reason::TunnelClosed,
        Reason::EndedByOverride,
        Reason::EndedByPolicy,
        Reason::CertsLoaded,
        Reason::CertsRejected,
        Reason::LogArchived,
        Reason::LogPruned,
        Reason::IdentityAmbiguous,
        Reason::TunnelSniMismatch,
        Reason::TunnelSniMissing,
        Reason::TunnelEch,
        Reason::AdminRoleRequired,
        Reason::CredentialReflected,
        Reason::CredentialGrantInvalid,
        Reason::CredentialConsentRequired,
        Reason::CredentialEndpointUnreachable,
        Reason::UpstreamRedirectRefused,
        Reason::ResourceUriRefused,
        Reason::CredentialStoreFailed,
        Reason::ToolResultRefused,
        Reason::ApprovalRequired,
        Reason::ApprovalRequested,
        Reason::ApprovalGranted,
        Reason::ApprovalDenied,
        Reason::ApprovalExpired,
        Reason::ApprovalHoldsExhausted,
        Reason::ApproverNotAllowed,
    ];

    /// The kebab-case code used in responses, records and the README.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::TlsRejected => "tls-rejected",
            Reason::UnknownAgent => "unknown-agent",
            Reason::NoMatchingScope => "no-matching-scope",
            Reason::NoMatchingRule => "no-matching-rule",
            Reason::DeniedByRule => "denied-by-rule",
            Reason::EgressAddressBlocked => "egress-address-blocked",
            Reason::MalformedRequest => "malformed-request",
            Reason::CredentialUnavailable => "credential-unavailable",
            Reason::SentinelMisdirected => "sentinel-misdirected",
            Reason::AwsActionUnmapped => "aws-action-unmapped",
            Reason::RequestTooLarge => "request-too-large",
            Reason::UpstreamUnreachable => "upstream-unreachable",
            Reason::UpstreamTimeout => "upstream-timeout",
            Reason::AuditUnavailable => "audit-unavailable",
            Reason::PolicyLoaded => "policy-loaded",
            Reason::ClientCancelled => "client-cancelled",
            Reason::RateLimited => "rate-limited",
            Reason::ExceptionExpired => "exception-expired",
            Reason::PolicyRejected => "policy-rejected",
            Reason::AgentIsolated => "agent-isolated",
            Reason::SerialRevoked => "serial-revoked",
            Reason::ScopeDisabled => "scope-disabled",
            Reason::OverrideChanged => "override-changed",
            Reason::RunTokenInvalid => "run-token-invalid",
            Reason::RunTokenExpired => "run-token-expired",
            Reason::RunTokenWrongAgent => "run-token-wrong-agent",
            Reason::RunTokenScope => "run-token-scope",
            Reason::RunTokenMissing => "run-token-missing",
            Reason::ProxyKeyInvalid => "proxy-key-invalid",
            Reason::ProxyKeyExpired => "proxy-key-expired",
            Reason::ProxyKeyRevoked => "proxy-key-revoked",
            Reason::TunnelClosed => "tunnel-closed",
            Reason::EndedByOverride => "ended-by-override",
            Reason::EndedByPolicy => "ended-by-policy",
            Reason::CertsLoaded => "certs-loaded",
            Reason::CertsRejected => "certs-rejected",
            Reason::Shutdown => "shutdown",
            Reason::ToolArgumentsRefused => "tool-arguments-refused",
            Reason::ToolDefinitionChanged => "tool-definition-changed",
            Reason::ToolDefinitionUnverified => "tool-definition-unverified",
            Reason::ToolPinned => "tool-pinned",
            Reason::McpHeaderMismatch => "mcp-header-mismatch",
            Reason::McpBatchRefused => "mcp-batch-refused",
            Reason::UpstreamAuthRequired => "upstream-auth-required",
            Reason::LogArchived => "log-archived",
            Reason::LogPruned => "log-pruned",
            Reason::IdentityAmbiguous => "identity-ambiguous",
            Reason::TunnelSniMismatch => "tunnel-sni-mismatch",
            Reason::TunnelSniMissing => "tunnel-sni-missing",
            Reason::TunnelEch => "tunnel-ech",
            Reason::AdminRoleRequired => "admin-role-required",
            Reason::CredentialReflected => "credential-reflected",
            Reason::CredentialGrantInvalid => "credential-grant-invalid",
            Reason::CredentialConsentRequired => "credential-consent-required",
            Reason::CredentialEndpointUnreachable => "credential-endpoint-unreachable",
            Reason::UpstreamRedirectRefused => "upstream-redirect-refused",
            Reason::ResourceUriRefused => "resource-uri-refused",
            Reason::CredentialStoreFailed => "credential-store-failed",
            Reason::ToolResultRefused => "tool-result-refused",
            Reason::ApprovalRequired => "approval-required",
            Reason::ApprovalRequested => "approval-requested",
            Reason::ApprovalGranted => "approval-granted",
            Reason::ApprovalDenied => "approval-denied",
            Reason::ApprovalExpired => "approval-expired",
            Reason::ApprovalHoldsExhausted => "approval-holds-exhausted",
            Reason::ApproverNotAllowed => "approver-not-allowed",
        }
    }

    /// The status a refusal with this reason answers with (a refusal with
    /// data may refine it: see [`Refusal::response`]).
    pub const fn status(self) -> StatusCode {
        match self {
            // Never sent: these describe events, not answers.
            Reason::Allowed
            | Reason::PolicyLoaded
            | Reason::ExceptionExpired
            | Reason::PolicyRejected
            | Reason::OverrideChanged
            | Reason::ToolPinned
            | Reason::TunnelClosed
            | Reason::CertsLoaded
            | Reason::CertsRejected
            | Reason::LogArchived
            | Reason::LogPruned => StatusCode::OK,
            // Never sent: the connection is cut, not answered.
            Reason::EndedByOverride | Reason::EndedByPolicy => StatusCode::FORBIDDEN,
            // Never sent: nobody is left to receive it.
            Reason::ClientCancelled => StatusCode::BAD_REQUEST,
            Reason::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            // Never sent: a rejected handshake has no HTTP exchange.
            Reason::TlsRejected | Reason::IdentityAmbiguous => StatusCode::FORBIDDEN,
            // Never sent: the tunnel was answered, then cut.
            Reason::TunnelSniMismatch | Reason::TunnelSniMissing | Reason::TunnelEch => {
                StatusCode::FORBIDDEN
            }
            Reason::UnknownAgent
            | Reason::NoMatchingScope
            | Reason::NoMatchingRule
            | Reason::DeniedByRule
            | Reason::SentinelMisdirected
            | Reason::AwsActionUnmapped
            | Reason::EgressAddressBlocked
            | Reason::AgentIsolated
            | Reason::SerialRevoked
            | Reason::ScopeDisabled
            | Reason::RunTokenInvalid
            | Reason::RunTokenExpired
            | Reason::RunTokenWrongAgent
            | Reason::RunTokenScope
            | Reason::ProxyKeyInvalid
            | Reason::ProxyKeyExpired
            | Reason::ProxyKeyRevoked
            | Reason::ToolArgumentsRefused
            | Reason::ToolDefinitionChanged
            | Reason::ToolDefinitionUnverified
            | Reason::AdminRoleRequired => StatusCode::FORBIDDEN,
            Reason::RunTokenMissing => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::MalformedRequest | Reason::McpHeaderMismatch | Reason::McpBatchRefused => {
                StatusCode::BAD_REQUEST
            }
            Reason::CredentialUnavailable | Reason::AuditUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reason::UpstreamUnreachable | Reason::UpstreamAuthRequired => StatusCode::BAD_GATEWAY,
            Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::CredentialReflected | Reason::ToolResultRefused => StatusCode::BAD_GATEWAY,
            Reason::CredentialGrantInvalid
            | Reason::CredentialConsentRequired
            | Reason::CredentialEndpointUnreachable
            | Reason::CredentialStoreFailed => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamRedirectRefused => StatusCode::BAD_GATEWAY,
            Reason::ResourceUriRefused => StatusCode::FORBIDDEN,
            // Never sent: records of an approval's life.
            Reason::ApprovalRequested | Reason::ApprovalGranted => StatusCode::OK,
            Reason::ApprovalRequired
            | Reason::ApprovalDenied
            | Reason::ApprovalExpired
            | Reason::ApproverNotAllowed => StatusCode::FORBIDDEN,
            Reason::ApprovalHoldsExhausted => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Parses a code back into a reason (for `audit query --reason`).
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The `error` field of a refusal body: `denied` for a policy refusal,
    /// `unavailable` when clawgate or the upstream could not serve the call.
    fn error_kind(self) -> &'static str {
        // A reflected credential is a 502, but the response was refused by
        // policy, not lost.
        if self.status().is_server_error()
            && !matches!(
                self,
                Reason::CredentialReflected | Reason::ToolResultRefused
            )
        {
            "unavailable"
        } else {
            "denied"
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

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

/// The RFC 9209 header on every proxy refusal.
pub const PROXY_STATUS_HEADER: &str = "proxy-status";

/// The `Proxy-Status` value for a refusal: clawgate's name, the RFC 9209
/// error type closest to the reason, and the reason code as `details`.
pub fn proxy_status(reason: Reason) -> String {
    let error = match reason {
        Reason::EgressAddressBlocked => "destination_ip_prohibited",
        Reason::UpstreamUnreachable => "destination_unavailable",
        Reason::UpstreamTimeout => "http_response_timeout",
        Reason::MalformedRequest
        | Reason::RequestTooLarge
        | Reason::McpHeaderMismatch
        | Reason::McpBatchRefused => "http_request_error",
        Reason::CredentialUnavailable
        | Reason::AuditUnavailable
        | Reason::Shutdown
        | Reason::CredentialGrantInvalid
        | Reason::CredentialConsentRequired
        | Reason::CredentialEndpointUnreachable
        | Reason::CredentialStoreFailed => "proxy_internal_error",
        Reason::Allowed
        | Reason::TlsRejected
        | Reason::UnknownAgent
        | Reason::NoMatchingScope
        | Reason::NoMatchingRule
        | Reason::DeniedByRule
        | Reason::SentinelMisdirected
        | Reason::AwsActionUnmapped
        | Reason::PolicyLoaded
        | Reason::ClientCancelled
        | Reason::RateLimited
        | Reason::ExceptionExpired
        | Reason::PolicyRejected
        | Reason::AgentIsolated
        | Reason::SerialRevoked
        | Reason::ScopeDisabled
        | Reason::OverrideChanged
        | Reason::LogArchived
        | Reason::LogPruned
        | Reason::RunTokenInvalid
        | Reason::RunTokenExpired
        | Reason::RunTokenWrongAgent
        | Reason::RunTokenScope
        | Reason::RunTokenMissing
        | Reason::ProxyKeyInvalid
        | Reason::ProxyKeyExpired
        | Reason::ProxyKeyRevoked
        | Reason::ToolArgumentsRefused
        | Reason::ToolDefinitionChanged
        | Reason::ToolDefinitionUnverified
        | Reason::ToolPinned
        | Reason::UpstreamAuthRequired
        | Reason::TunnelClosed
        | Reason::EndedByOverride
        | Reason::EndedByPolicy
        | Reason::CertsLoaded
        | Reason::CertsRejected
        | Reason::IdentityAmbiguous
        | Reason::TunnelSniMismatch
        | Reason::TunnelSniMissing
        | Reason::TunnelEch
        | Reason::AdminRoleRequired
        | Reason::CredentialReflected
        | Reason::ResourceUriRefused
        | Reason::ToolResultRefused
        | Reason::ApprovalRequired
        | Reason::ApprovalRequested
        | Reason::ApprovalGranted
        | Reason::ApprovalDenied
        | Reason::ApprovalExpired
        | Reason::ApprovalHoldsExhausted
        | Reason::ApproverNotAllowed => "http_request_denied",
        Reason::UpstreamRedirectRefused => "http_protocol_error",
    };
    format!("clawgate; error={error}; details=\"{}\"", reason.code())
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
