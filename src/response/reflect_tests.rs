use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use proptest::prelude::*;
use secrecy::SecretString;

use super::*;

const SECRET: &str = "sk-live/4f+9a c\"x&y";

fn needles(values: &[&str]) -> Arc<Needles> {
    let values: Vec<_> = values
        .iter()
        .map(|v| Arc::new(SecretString::from((*v).to_owned())))
        .collect();
    Arc::new(Needles::new(&values).unwrap())
}

fn stream(n: &Arc<Needles>, chunks: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut s = Scanner::new(Arc::clone(n));
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&s.push(Bytes::copy_from_slice(c)).0);
    }
    out.extend_from_slice(&s.finish().0);
    (out, s.hits)
}

#[test]
fn every_listed_encoding_is_redacted() {
    let n = needles(&[SECRET]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{SECRET}"));
    let url64 = base64::engine::general_purpose::URL_SAFE.encode(format!("ab{SECRET}"));
    let json = serde_json::to_string(SECRET).unwrap();
    let percent: String = form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    let forms = [
        SECRET.to_owned(),
        json[1..json.len() - 1].to_owned(),
        percent,
        percent_encoded(SECRET.as_bytes()),
        html_escaped(SECRET),
    ];
    for form in forms.iter().chain([&b64, &url64]) {
        let text = format!("before {form} after");
        let (out, hits) = stream(&n, &[text.as_bytes()]);
        let out = String::from_utf8(out).unwrap();
        assert!(hits >= 1, "{form} not found");
        assert!(out.contains("[clawgate:redacted]"), "{out}");
        assert!(!out.contains(form.as_str()), "{out}");
    }
}

#[test]
fn text_without_needles_passes_unchanged_and_uncopied() {
    let n = needles(&[SECRET]);
    let mut s = Scanner::new(n);
    let chunk = Bytes::from_static(b"nothing to see here, only zzzz");
    let (out, hits) = s.push(chunk.clone());
    assert_eq!(hits, 0);
    assert_eq!(out, chunk, "no byte may be held back that starts no needle");
}

#[test]
fn a_needle_split_at_every_point_is_found() {
    let n = needles(&[SECRET]);
    let text = format!("{{\"auth\":\"Bearer {SECRET}\"}}");
    for cut in 0..=text.len() {
        let (a, b) = text.as_bytes().split_at(cut);
        let (out, hits) = stream(&n, &[a, b]);
        assert_eq!(hits, 1, "cut at {cut}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"auth\":\"Bearer [clawgate:redacted]\"}"
        );
    }
}

#[test]
fn short_values_are_searched_only_as_they_are() {
    let n = needles(&["abc"]);
    assert_eq!(n.len(), 1);
    let (out, hits) = stream(&n, &[b"xabcx YWJj"]);
    assert_eq!(
        (out.as_slice(), hits),
        (&b"x[clawgate:redacted]x YWJj"[..], 1)
    );
}

#[test]
fn debug_shows_counts_only() {
    let n = needles(&[SECRET]);
    let shown = format!("{n:?}");
    assert!(!shown.contains("sk-live"), "{shown}");
    assert!(shown.contains("values: 1"), "{shown}");
}

proptest! {
    #[test]
    fn chunking_never_changes_the_result(
        pre in "[a-z \"]{0,40}",
        post in "[a-z \"]{0,40}",
        cuts in proptest::collection::vec(0usize..120, 0..6),
    ) {
        let n = needles(&[SECRET, "second-value-1234"]);
        let text = format!("{pre}{SECRET}{post}second-value-1234{pre}");
        let whole = stream(&n, &[text.as_bytes()]);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut at = 0;
        for c in cuts {
            chunks.push(&text.as_bytes()[at..c]);
            at = c;
        }
        chunks.push(&text.as_bytes()[at..]);
        let split = stream(&n, &chunks);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(whole.1, 2);
    }
}
