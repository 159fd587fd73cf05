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
        (Reason::ScopeDisabled, 403),
    ];
    for (reason, status) in table {
        assert_eq!(reason.status().as_u16(), status, "{reason}");
    }
}

#[tokio::test]
async fn refusal_body_carries_reason_and_request_id_only() {
    let response = refusal_response(Reason::DeniedByRule, "req-1");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.headers()[REQUEST_ID_HEADER], "req-1");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"error": "denied", "reason": "denied-by-rule", "request_id": "req-1"})
    );
    let response = refusal_response(Reason::UpstreamTimeout, "req-2");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["error"], "unavailable");
}
