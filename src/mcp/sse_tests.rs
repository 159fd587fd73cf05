use proptest::prelude::*;

use super::*;

fn all(parser: &mut SseParser, chunks: &[&[u8]]) -> Vec<Piece> {
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut out).unwrap();
    }
    out
}

fn bytes_of(pieces: &[Piece]) -> Vec<u8> {
    pieces
        .iter()
        .flat_map(|p| match p {
            Piece::Raw(b) => b.to_vec(),
            Piece::Event(e) => e.raw.to_vec(),
        })
        .collect()
}

#[test]
fn events_come_out_one_at_a_time_with_their_fields() {
    let stream = b"id: 1\nevent: message\nretry: 500\ndata: {\"a\":1}\n\n: keep-alive\n\ndata: x\ndata: y\n\n";
    let mut parser = SseParser::new(1024);
    let out = all(&mut parser, &[stream]);
    let events: Vec<&Event> = out
        .iter()
        .filter_map(|p| match p {
            Piece::Event(e) => Some(e),
            Piece::Raw(_) => None,
        })
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data, b"{\"a\":1}");
    assert_eq!(events[0].fields, b"id: 1\nevent: message\nretry: 500\n");
    assert_eq!(events[1].data, b"x\ny");
    assert_eq!(bytes_of(&out), stream);
    // A rewritten event keeps its id, event and retry lines.
    assert_eq!(
        &events[0].with_data(b"{}")[..],
        b"id: 1\nevent: message\nretry: 500\ndata: {}\n\n"
    );
}

#[test]
fn keep_alives_pass_at_once_and_nothing_waits_for_the_end() {
    let mut parser = SseParser::new(1024);
    let mut out = Vec::new();
    parser.feed(b": ping\n", &mut out).unwrap();
    assert_eq!(
        out,
        vec![Piece::Raw(bytes::Bytes::from_static(b": ping\n"))]
    );
    out.clear();
    parser.feed(b"data: {\"x\"", &mut out).unwrap();
    assert!(out.is_empty() && parser.is_mid_event());
    parser.feed(b":1}\r\n\r\n", &mut out).unwrap();
    assert!(matches!(&out[0], Piece::Event(e) if e.data == b"{\"x\":1}"));
}

#[test]
fn crlf_split_across_chunks_is_one_line_end() {
    let mut parser = SseParser::new(1024);
    let out = all(&mut parser, &[b"data: a\r", b"\n\r", b"\n"]);
    assert_eq!(bytes_of(&out), b"data: a\r\n\r\n");
    assert_eq!(
        out.iter().filter(|p| matches!(p, Piece::Event(_))).count(),
        1
    );
}

#[test]
fn an_event_past_the_limit_is_an_error() {
    let mut parser = SseParser::new(16);
    let mut out = Vec::new();
    assert_eq!(
        parser.feed(b"data: 0123456789abcdefghij", &mut out),
        Err(TooLarge(16))
    );
}

proptest! {
    /// However a stream is cut into chunks, the bytes handed on are the
    /// bytes received, and the events are the same.
    #[test]
    fn chunking_never_changes_the_stream(cuts in proptest::collection::vec(0usize..120, 0..8)) {
        let stream: &[u8] = b"id: 7\r\ndata: {\"jsonrpc\":\"2.0\"}\r\n\r\n: ka\n\nevent: e\ndata: 1\ndata: 2\n\nretry: 9\n\n";
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&stream[last..p]);
            last = p;
        }
        chunks.push(&stream[last..]);
        let mut parser = SseParser::new(1 << 16);
        let out = all(&mut parser, &chunks);
        prop_assert_eq!(bytes_of(&out), stream.to_vec());
        let data: Vec<Vec<u8>> = out.iter().filter_map(|p| match p {
            Piece::Event(e) => Some(e.data.clone()),
            Piece::Raw(_) => None,
        }).collect();
        prop_assert_eq!(data, vec![b"{\"jsonrpc\":\"2.0\"}".to_vec(), b"1\n2".to_vec()]);
    }
}
