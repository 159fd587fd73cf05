use super::context::parse;
use super::*;

#[test]
fn traceparent_is_parsed_as_the_w3c_recommendation_says() {
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (trace, parent, flags) = parse(good).unwrap();
    assert_eq!(hex::encode(trace), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex::encode(parent), "00f067aa0ba902b7");
    assert_eq!(flags, 1);
    // A later version may carry more fields after a dash.
    assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
    ] {
        assert!(parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn a_call_continues_the_agents_trace_under_a_span_of_its_own() {
    let incoming =
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    let context = TraceContext::continue_or_start(Some(&incoming));
    assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        context.parent.map(hex::encode).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert_ne!(context.span_id, [0; 8]);
    let upstream = context.traceparent();
    assert!(upstream.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(upstream.ends_with("-00"), "the agent's flags are kept");
    assert_eq!(parse(&upstream).map(|p| p.1), Some(context.span_id));

    let fresh = TraceContext::continue_or_start(None);
    assert!(fresh.parent.is_none());
    assert_ne!(fresh.trace_id, context.trace_id);
    assert!(parse(&fresh.traceparent()).is_some());
}

#[test]
fn a_batch_encodes_as_an_otlp_request() {
    use prost::Message;
    let context = TraceContext::continue_or_start(None);
    let span = SpanData {
        context,
        name: "call GET".into(),
        start: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1),
        end: std::time::UNIX_EPOCH + std::time::Duration::from_secs(2),
        attributes: vec![
            ("clawgate.agent", Value::Text("research".into())),
            ("http.response.status_code", Value::Int(200)),
        ],
        error: None,
    };
    let bytes = export::encode(&[span], "replica-a");
    let decoded = proto::ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
    let spans = &decoded.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].trace_id, context.trace_id.to_vec());
    assert_eq!(spans[0].start_time_unix_nano, 1_000_000_000);
    assert_eq!(spans[0].attributes[0].key, "clawgate.agent");
    assert_eq!(spans[0].status.as_ref().map(|s| s.code), Some(1));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let (queue, _receiver) = tokio::sync::mpsc::channel(1);
    let tracer = Tracer {
        queue,
        counts: Arc::default(),
    };
    let record = crate::audit::DecisionRecord::new("decision", "r1");
    for _ in 0..3 {
        let mut span = tracer.start(None);
        span.decided(&record);
        span.end(&record);
    }
    assert_eq!(tracer.counts().dropped.load(Ordering::Relaxed), 2);
}
