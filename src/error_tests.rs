use super::*;

#[test]
fn every_reason_has_a_unique_code_that_round_trips() {
    let mut seen = std::collections::HashSet::new();
    for reason in Reason::ALL {
        assert!(seen.insert(reason.code()), "duplicate code {reason}");
        assert_eq!(Reason::from_code(reason.code()), Some(reason));
        assert!(
            reason
                .code()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-')
        );
    }
    assert_eq!(Reason::from_code("no-such-reason"), None);
}

#[test]
fn reasons_map_to_the_documented_statuses() {
    let table = [
        (Reason::Allowed, 200),
        (Reason::UnknownAgent, 403),
        (Reason::NoMatchingScope, 403),
        (Reason::NoMatchingRule, 403),
        (Reason::DeniedByRule, 403),
        (Reason::EgressAddressBlocked, 403),
        (Reason::MalformedRequest, 400),
        (Reason::CredentialUnavailable, 503),
        (Reason::UpstreamUnreachable, 502),
        (Reason::UpstreamTimeout, 504),
        (Reason::AuditUnavailable, 503),
        (Reason::RateLimited, 429),
        (Reason::AgentIsolated, 403),
        (Reason::SerialRevoked, 403),
        (Reason::AdminRoleRequired, 403),
        (Reason::ScopeDisabled, 403),
        (Reason::ApprovalRequired, 403),
        (Reason::ApprovalDenied, 403),
        (Reason::ApprovalExpired, 403),
        (Reason::ApprovalHoldsExhausted, 429),
        (Reason::ApproverNotAllowed, 403),
    ];
    for (reason, status) in table {
        assert_eq!(reason.status().as_u16(), status, "{reason}");
    }
}

#[tokio::test]
async fn refusal_body_carries_reason_and_request_id_only() {
    let response = Refusal::from(Reason::DeniedByRule).response("req-1", Via::Server);
    assert!(response.headers().get(PROXY_STATUS_HEADER).is_none());
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.headers()[REQUEST_ID_HEADER], "req-1");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"error": "denied", "reason": "denied-by-rule", "request_id": "req-1"})
    );
    let response = Refusal::from(Reason::UpstreamTimeout).response("req-2", Via::Server);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["error"], "unavailable");
}

#[test]
fn a_refusal_carries_its_data_into_its_headers() {
    let limited = crate::limits::Limited {
        which: "scope",
        name: "echo".into(),
        rate: crate::limits::Rate::parse("2/min", None).unwrap(),
        retry_after: std::time::Duration::from_millis(2500),
    };
    let refusal = Refusal::RateLimited(limited);
    assert_eq!(refusal.reason(), Reason::RateLimited);
    assert_eq!(
        refusal.detail().as_deref(),
        Some("scope rate limit `echo` 2/min burst 2; retry after 3s")
    );
    let response = refusal.response("r", Via::Server);
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::RETRY_AFTER], "3");

    let response = Refusal::Unauthenticated(Challenge::Proxy).response("r", Via::Proxy);
    assert_eq!(response.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    assert_eq!(
        response.headers()[header::PROXY_AUTHENTICATE],
        "Basic realm=\"clawgate\""
    );
    let response = Refusal::Unauthenticated(Challenge::Bearer).response("r", Via::Server);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"clawgate\""
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "the body still says why"
    );
}

#[test]
fn proxy_refusals_carry_proxy_status_with_the_reason_code() {
    let response = Refusal::from(Reason::EgressAddressBlocked).response("r", Via::Proxy);
    assert_eq!(
        response.headers()[PROXY_STATUS_HEADER],
        "clawgate; error=destination_ip_prohibited; details=\"egress-address-blocked\""
    );
    for reason in Reason::ALL {
        let value = proxy_status(reason);
        assert!(value.starts_with("clawgate; error="), "{value}");
        assert!(value.ends_with(&format!("details=\"{}\"", reason.code())));
    }
}

#[tokio::test]
async fn an_approval_refusal_carries_its_id_url_and_retry_after() {
    let pending = AskPending {
        id: "a-1".into(),
        url: "https://admin/v1/approvals/a-1".into(),
        retry_after: 7,
    };
    let refusal = Refusal::ApprovalRequired(pending);
    assert_eq!(refusal.reason(), Reason::ApprovalRequired);
    let response = refusal.response("r", Via::Proxy);
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    assert!(
        response.headers()[PROXY_STATUS_HEADER]
            .to_str()
            .unwrap()
            .contains("approval-required")
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["approval_id"], "a-1");
    assert_eq!(json["approval_url"], "https://admin/v1/approvals/a-1");
    assert_eq!(json["reason"], "approval-required");
}
