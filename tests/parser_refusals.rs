//! Requests the HTTP parser refuses before any service sees them (a
//! malformed request line or header: 400; a request head past the limit:
//! 431) are counted by source and kind and recorded as one `summary`
//! record per source, without any of the request's bytes. Raw TLS peers,
//! since curl will not send such requests; the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failed step should stop the test loudly"
)]

mod common;
#[path = "listeners/net.rs"]
#[allow(
    dead_code,
    reason = "the listener tests' raw peers; this test uses a few"
)]
mod net;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use clawgate::audit::DecisionRecord;
use common::Harness;

/// The counts a summary's detail gives for `kind` (`malformed (400)`).
fn count(detail: &str, kind: &str) -> u64 {
    detail
        .split([':', ','])
        .filter_map(|part| part.trim().strip_suffix(kind))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

fn summaries(h: &Harness, source: &str) -> Vec<DecisionRecord> {
    h.records()
        .into_iter()
        .filter(|r| r.kind == "summary" && r.client_addr.as_deref() == Some(source))
        .collect()
}

#[test]
fn parser_refusals_are_summarised_by_source_and_kind_without_their_bytes() {
    let h = Harness::start();
    let (cert, key) = h.agent_cert("research");
    let research = net::client_config(&h.certs.join("ca.pem"), Some((&cert, &key)));
    let source: IpAddr = "127.0.0.7".parse().unwrap();
    let port = h.port;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A request line that is not HTTP.
        let mut s = net::tls(&research, source, port).await;
        let head = net::exchange(&mut s, "GARBAGE parser-canary-1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        // A header name with a space in it.
        let mut s = net::tls(&research, source, port).await;
        let head = net::exchange(
            &mut s,
            "GET /echo/v1/items HTTP/1.1\r\nhost: localhost\r\nbad header: parser-canary-2\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        // More headers than the parser takes.
        let mut s = net::tls(&research, source, port).await;
        let mut request = String::from("GET /echo/v1/items HTTP/1.1\r\nhost: localhost\r\n");
        for i in 0..150 {
            request.push_str(&format!("x-h{i}: parser-canary-3\r\n"));
        }
        request.push_str("\r\n");
        let head = net::exchange(&mut s, &request).await;
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    });

    // The sweep writes them (every few seconds): the counts add up, by kind.
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let records = summaries(&h, "127.0.0.7");
        let details: Vec<&str> = records.iter().filter_map(|r| r.detail.as_deref()).collect();
        let malformed: u64 = details.iter().map(|d| count(d, "malformed (400)")).sum();
        let large: u64 = details
            .iter()
            .map(|d| count(d, "headers too large (431)"))
            .sum();
        if (malformed, large) == (2, 1) {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "counts {malformed} and {large} in {records:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in &records {
        assert_eq!(r.mode.as_deref(), Some("http"));
        assert_eq!(r.reason, "malformed-request");
        assert_eq!(r.decision.as_deref(), Some("deny"));
        assert!(
            r.detail.as_deref().unwrap().starts_with("agent listener: "),
            "{r:?}"
        );
    }
    // No request content anywhere in the log, and no call was decided.
    let all = serde_json::to_string(&h.records()).unwrap();
    assert!(!all.contains("parser-canary"), "{all}");
    assert!(
        !h.records().iter().any(|r| r.kind == "decision"
            && r.client_addr
                .as_deref()
                .is_some_and(|a| a.starts_with("127.0.0.7:"))),
        "no decision for a request never parsed"
    );
}
