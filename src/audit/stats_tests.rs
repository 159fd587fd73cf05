use super::*;

fn rec(ts: &str, agent: &str, decision: &str, reason: &str, addr: &str) -> DecisionRecord {
    let mut r = DecisionRecord::new(kind::DECISION, "r");
    r.ts = ts.into();
    r.agent = Some(agent.into());
    r.decision = Some(decision.into());
    r.reason = reason.into();
    r.client_addr = Some(addr.into());
    r.host = Some("api.example".into());
    r
}

#[test]
fn stats_count_decisions_by_group_with_top_reasons() {
    let mut v = vec![
        rec(
            "2026-01-01T00:00:00.000Z",
            "a",
            "allow",
            "allowed",
            "1.1.1.1:1",
        ),
        rec(
            "2026-01-01T00:00:01.000Z",
            "a",
            "deny",
            "denied-by-rule",
            "1.1.1.1:1",
        ),
        rec(
            "2026-01-01T00:00:02.000Z",
            "b",
            "deny",
            "denied-by-rule",
            "1.1.1.1:1",
        ),
        rec(
            "2026-01-01T00:00:03.000Z",
            "b",
            "deny",
            "rate-limited",
            "1.1.1.1:1",
        ),
    ];
    v[0].would_deny = Some("no-matching-rule".into());
    let mut outcome = v[0].clone();
    outcome.kind = kind::OUTCOME.into();
    v.push(outcome);
    let s = stats(&v, Some(By::Agent));
    assert_eq!(
        (s.total.allowed, s.total.refused, s.total.would_deny),
        (1, 3, 1)
    );
    assert_eq!(s.groups[0].key, "a");
    assert_eq!((s.groups[1].key.as_str(), s.groups[1].refused), ("b", 2));
    assert_eq!(s.top_refusal_reasons[0], ("denied-by-rule".into(), 2));
    assert_eq!(s.top_hosts[0], ("api.example".into(), 4));
    let mut text = Vec::new();
    csv(&s, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("group,\"b\",0,2,0,2"), "{text}");
}

#[test]
fn findings_name_bursts_per_source_rises_and_single_events() {
    let mut v = Vec::new();
    for i in 0..12 {
        v.push(rec(
            &format!("2026-01-01T00:00:{i:02}.000Z"),
            "x",
            "deny",
            "tls-rejected",
            &format!("10.0.0.9:{}", 4000 + i),
        ));
    }
    for i in 0..3 {
        v.push(rec(
            &format!("2026-01-01T00:00:{i:02}.500Z"),
            "y",
            "deny",
            "tls-rejected",
            "10.0.0.8:1",
        ));
    }
    // Agent z: one refusal in the first 50 s, eight in the last 10 s.
    v.push(rec(
        "2026-01-01T00:00:05.000Z",
        "z",
        "deny",
        "denied-by-rule",
        "1.1.1.1:1",
    ));
    for i in 0..8 {
        v.push(rec(
            &format!("2026-01-01T00:00:5{i}.000Z"),
            "z",
            "deny",
            "denied-by-rule",
            "1.1.1.1:1",
        ));
    }
    v.push(rec(
        "2026-01-01T00:00:59.000Z",
        "z",
        "deny",
        "sentinel-misdirected",
        "1.1.1.1:1",
    ));
    v.push(rec(
        "2026-01-01T00:00:59.500Z",
        "m",
        "deny",
        MCP_TOOLS_CHANGED,
        "1.1.1.1:1",
    ));
    v.sort_by(|a, b| a.ts.cmp(&b.ts));
    let f = findings(&v, "2026-01-01T00:00:50.000Z", Thresholds::default());
    let kinds: Vec<(&str, &str)> = f
        .iter()
        .map(|f| (f.kind.as_str(), f.subject.as_str()))
        .collect();
    assert!(kinds.contains(&("burst", "10.0.0.9")), "{kinds:?}");
    assert!(!kinds.contains(&("burst", "10.0.0.8")), "{kinds:?}");
    assert!(kinds.contains(&("refusals-rising", "z")), "{kinds:?}");
    assert!(
        !kinds.iter().any(|k| k == &("refusals-rising", "x")),
        "x is steady: {kinds:?}"
    );
    assert!(kinds.contains(&("sentinel-misdirected", "z")), "{kinds:?}");
    assert!(kinds.contains(&(MCP_TOOLS_CHANGED, "m")), "{kinds:?}");
    assert_eq!(
        MCP_TOOLS_CHANGED,
        crate::error::Reason::ToolDefinitionChanged.code()
    );
}

#[test]
fn a_reflected_credential_is_a_finding_and_a_top_reason() {
    let mut redacted = rec(
        "2026-01-01T00:00:10.000Z",
        "r",
        "allow",
        "allowed",
        "1.1.1.1:1",
    );
    redacted.kind = kind::OUTCOME.into();
    redacted.detail = Some("credential-reflected: 2 redacted (header x-echo, body)".into());
    let mut refused = rec(
        "2026-01-01T00:00:11.000Z",
        "s",
        "allow",
        REFLECTED,
        "1.1.1.1:1",
    );
    refused.kind = kind::OUTCOME.into();
    let plain = rec(
        "2026-01-01T00:00:12.000Z",
        "t",
        "allow",
        "allowed",
        "1.1.1.1:1",
    );
    let v = vec![redacted, refused, plain];
    let f = findings(&v, "2026-01-01T00:00:00.000Z", Thresholds::default());
    let kinds: Vec<(&str, &str)> = f
        .iter()
        .map(|f| (f.kind.as_str(), f.subject.as_str()))
        .collect();
    assert_eq!(kinds, vec![(REFLECTED, "r"), (REFLECTED, "s")]);
    assert!(f[0].detail.contains("header x-echo"), "{f:?}");
    let s = stats(&v, None);
    assert_eq!(s.top_refusal_reasons, vec![(REFLECTED.to_owned(), 2)]);
    assert_eq!(REFLECTED, crate::error::Reason::CredentialReflected.code());
}

#[test]
fn a_tunnel_cut_at_its_hello_counts_among_refusals_and_is_a_finding() {
    let decision = rec(
        "2026-01-01T00:00:00.000Z",
        "a",
        "allow",
        "allowed",
        "1.1.1.1:1",
    );
    let mut cut = decision.clone();
    cut.kind = kind::OUTCOME.into();
    cut.reason = "tunnel-sni-mismatch".into();
    cut.detail = Some("sni evil.example, CONNECT api.example".into());
    let mut closed = decision.clone();
    closed.kind = kind::OUTCOME.into();
    closed.reason = "tunnel-closed".into();
    let v = vec![decision, cut, closed];
    let s = stats(&v, None);
    assert_eq!((s.total.allowed, s.total.refused), (1, 0), "decisions only");
    assert_eq!(
        s.top_refusal_reasons,
        vec![("tunnel-sni-mismatch".into(), 1)]
    );
    let f = findings(&v, "2026-01-01T00:00:00.000Z", Thresholds::default());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].kind, "tunnel-sni-mismatch");
    assert!(f[0].detail.contains("sni evil.example"));
}

#[test]
fn minted_tokens_broader_than_requested_are_a_finding_per_scope() {
    let mint = |scope: &str, detail: &str| DecisionRecord {
        ts: "2026-01-01T00:00:10.000Z".into(),
        kind: kind::MINT.into(),
        scope: Some(scope.into()),
        credential_kind: Some("oauth2".into()),
        reason: "allowed".into(),
        detail: Some(detail.into()),
        ..DecisionRecord::default()
    };
    let records = vec![
        mint(
            "billing",
            "client_credentials via client_secret_basic: lifetime 300s, requested scope `read`, granted `read write`; granted-broader `write`",
        ),
        mint(
            "billing",
            "client_credentials via client_secret_basic: lifetime 300s, requested scope `read`, granted `read write`; granted-broader `write`",
        ),
        mint(
            "exact",
            "client_credentials via client_secret_basic: lifetime 300s, requested scope `read`, granted `read`",
        ),
    ];
    let found: Vec<_> = findings(&records, "2026-01-01T00:00:00.000Z", Thresholds::default())
        .into_iter()
        .filter(|f| f.kind == "credential-broader")
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].subject, "billing");
    assert_eq!(found[0].count, 2);
    assert!(
        found[0].detail.contains("granted-broader `write`"),
        "{found:?}"
    );
}

#[test]
fn allowed_calls_that_failed_upstream_are_counted_apart() {
    let mut v = Vec::new();
    for (i, status) in [200, 502, 503, 404].into_iter().enumerate() {
        let mut d = rec(
            &format!("2026-01-01T00:00:0{i}.000Z"),
            "a",
            "allow",
            "allowed",
            "1.1.1.1:1",
        );
        d.request_id = format!("r{i}");
        let mut o = d.clone();
        o.kind = kind::OUTCOME.into();
        o.status = Some(status);
        v.push(d);
        v.push(o);
    }
    let s = stats(&v, Some(By::Agent));
    assert_eq!((s.total.allowed, s.total.failed_upstream), (4, 2));
    assert_eq!(s.groups[0].failed_upstream, 2);
    let mut text = Vec::new();
    csv(&s, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("total,\"all\",4,0,0,4,2"), "{text}");
    let mut table_text = Vec::new();
    table(&s, &mut table_text).unwrap();
    assert!(
        String::from_utf8(table_text)
            .unwrap()
            .contains("(failed upstream)")
    );
}

#[test]
fn a_window_past_pruned_history_says_where_it_starts() {
    let since = "2026-01-01T00:00:00.000Z";
    assert_eq!(covers_from(since, None), None);
    assert_eq!(covers_from(since, Some("2025-12-31T00:00:00.000Z")), None);
    assert_eq!(
        covers_from(since, Some("2026-01-01T00:30:00.000Z")).as_deref(),
        Some("2026-01-01T00:30:00.000Z")
    );
    assert!(pruned_notice("T").contains("cover only records from T on"));
}

/// A young log (or an agent new to it) has no baseline: its first refusals
/// are not a rise "against 0 before". With a baseline as long as the recent
/// part, the same refusals are one.
#[test]
fn refusals_rising_needs_a_baseline_as_long_as_the_recent_part() {
    let young: Vec<_> = (0..8)
        .map(|i| {
            rec(
                &format!("2026-01-01T00:00:5{i}.000Z"),
                "z",
                "deny",
                "denied-by-rule",
                "1.1.1.1:1",
            )
        })
        .collect();
    // The recent part starts before the log does.
    let f = findings(&young, "2026-01-01T00:00:00.000Z", Thresholds::default());
    assert!(!f.iter().any(|f| f.kind == "refusals-rising"), "{f:?}");
    // Recent part from :50; the agent first seen at :45, 5 s before: too short.
    let mut short = young.clone();
    short.insert(
        0,
        rec(
            "2026-01-01T00:00:45.000Z",
            "z",
            "allow",
            "allowed",
            "1.1.1.1:1",
        ),
    );
    let f = findings(&short, "2026-01-01T00:00:50.000Z", Thresholds::default());
    assert!(!f.iter().any(|f| f.kind == "refusals-rising"), "{f:?}");
    // Seen since :10 with no refusal: a real rise.
    let mut long = young;
    long.insert(
        0,
        rec(
            "2026-01-01T00:00:10.000Z",
            "z",
            "allow",
            "allowed",
            "1.1.1.1:1",
        ),
    );
    let f = findings(&long, "2026-01-01T00:00:50.000Z", Thresholds::default());
    assert!(
        f.iter()
            .any(|f| f.kind == "refusals-rising" && f.detail.contains("against 0 before")),
        "{f:?}"
    );
}
