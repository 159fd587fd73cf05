//! The closed set of reasons every decision carries, their codes, their
//! statuses, and the `Proxy-Status` each maps to. Adding a reason means
//! adding it here (at the end of the enum, [`Reason::ALL`] and each match)
//! and to the README's reason table.

use http::StatusCode;

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
    pub(super) fn error_kind(self) -> &'static str {
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
