use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use secrecy::SecretString;

use super::*;

const SECRET: &str = "tok-5a7e1c0d9b3f";

fn guard(mode: Reflection) -> Guard {
    let cache = NeedleCache::default();
    let needles = cache
        .get(&[Arc::new(SecretString::from(SECRET.to_owned()))])
        .unwrap();
    Guard::new(needles, mode, "echo", Arc::default()).unwrap()
}

fn chunks(parts: Vec<Vec<u8>>) -> ProxyBody {
    let frames = parts
        .into_iter()
        .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from(p))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

async fn collect(body: ProxyBody) -> Result<Vec<u8>, BoxError> {
    Ok(body.collect().await?.to_bytes().to_vec())
}

#[tokio::test]
async fn headers_and_a_split_body_are_redacted_and_tallied() {
    let g = guard(Reflection::Redact);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-echo",
        HeaderValue::from_static("Bearer tok-5a7e1c0d9b3f"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("40"));
    g.headers(&mut headers, "header").unwrap();
    assert_eq!(headers["x-echo"], "Bearer [clawgate:redacted]");
    let body = g
        .body(
            chunks(vec![b"{\"a\":\"tok-5a7e".to_vec(), b"1c0d9b3f\"}".to_vec()]),
            &mut headers,
            false,
        )
        .unwrap();
    assert!(headers.get(header::CONTENT_LENGTH).is_none());
    let out = collect(body).await.unwrap();
    assert_eq!(out, b"{\"a\":\"[clawgate:redacted]\"}");
    let summary = g.tally.settle().unwrap();
    assert_eq!(
        summary.detail,
        "credential-reflected: 2 redacted (header x-echo, body)"
    );
    assert!(!summary.refused);
    assert!(!summary.detail.contains(SECRET));
}

#[tokio::test]
async fn refuse_cuts_the_stream_and_the_head() {
    let g = guard(Reflection::Refuse);
    let mut headers = HeaderMap::new();
    let body = g
        .body(
            chunks(vec![b"ok ".to_vec(), SECRET.as_bytes().to_vec()]),
            &mut headers,
            false,
        )
        .unwrap();
    let err = collect(body).await.unwrap_err();
    assert!(err.is::<ReflectionRefused>(), "{err}");
    assert!(g.tally.settle().unwrap().refused);

    let g = guard(Reflection::Refuse);
    headers.insert("x-echo", HeaderValue::from_static(SECRET));
    assert_eq!(g.headers(&mut headers, "header"), Err(Refused::Reflected));
}

#[tokio::test]
async fn gzip_is_decoded_scanned_and_passed_decoded() {
    let g = guard(Reflection::Redact);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(format!("<p>{SECRET}</p>").as_bytes()).unwrap();
    let compressed = gz.finish().unwrap();
    let (a, b) = compressed.split_at(compressed.len() / 2);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    let body = g
        .body(chunks(vec![a.to_vec(), b.to_vec()]), &mut headers, false)
        .unwrap();
    assert!(headers.get(header::CONTENT_ENCODING).is_none());
    assert_eq!(collect(body).await.unwrap(), b"<p>[clawgate:redacted]</p>");
}

#[test]
fn an_unknown_coding_is_refused_and_off_builds_no_guard() {
    let g = guard(Reflection::Redact);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
    assert_eq!(
        g.body(chunks(vec![]), &mut headers, false).err(),
        Some(Refused::Unscannable("br".into()))
    );
    let needles = NeedleCache::default()
        .get(&[Arc::new(SecretString::from(SECRET.to_owned()))])
        .unwrap();
    assert!(Guard::new(needles, Reflection::Off, "echo", Arc::default()).is_none());
}
