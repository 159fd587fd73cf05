use std::sync::Arc;

use secrecy::SecretString;

use super::*;
use crate::response::guard::NeedleCache;

const SECRET: &str = "ws-secret-0a1b2c3d4e5f";

fn guard(mode: Reflection) -> Guard {
    let needles = NeedleCache::default()
        .get(&[Arc::new(SecretString::from(SECRET.to_owned()))])
        .unwrap();
    Guard::new(needles, mode, "ws", Arc::default()).unwrap()
}

fn frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_frame(&mut out, b0, payload);
    let mut v = out.to_vec();
    if let Some(m) = mask {
        v[1] |= 0x80;
        let at = v.len() - payload.len();
        let mut masked: Vec<u8> = v[..at].to_vec();
        masked.extend_from_slice(&m);
        masked.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        return masked;
    }
    v
}

/// Splits frames back out of what the filter wrote: (first byte, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let b0 = bytes[0];
        let (len, at) = match bytes[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => panic!("no test frame is that large"),
            n => (usize::from(n), 2),
        };
        out.push((b0, bytes[at..at + len].to_vec()));
        bytes = &bytes[at + len..];
    }
    out
}

#[test]
fn a_value_split_across_fragments_and_reads_is_redacted() {
    let g = guard(Reflection::Redact);
    let mut f = FrameFilter::new(g.clone());
    let text = format!("{{\"auth\":\"Bearer {SECRET}\"}}");
    let (a, b) = text.as_bytes().split_at(20);
    let mut wire = frame(0x01, a, None); // text, not final
    wire.extend(frame(0x89, b"ping", None)); // a ping between fragments
    wire.extend(frame(0x80, b, Some([1, 2, 3, 4]))); // continuation, final
    let mut out = BytesMut::new();
    // Fed three bytes at a time: headers and payloads cut anywhere.
    for piece in wire.chunks(3) {
        out.extend_from_slice(&f.push(piece).unwrap());
    }
    let got = frames(&out);
    assert_eq!(got[1], (0x89, b"ping".to_vec()));
    let message: Vec<u8> = [got[0].1.clone(), got[2].1.clone()].concat();
    assert_eq!(
        String::from_utf8(message).unwrap(),
        "{\"auth\":\"Bearer [clawgate:redacted]\"}"
    );
    assert_eq!((got[0].0, got[2].0), (0x01, 0x80));
    let summary = g.tally.settle().unwrap();
    assert_eq!(summary.detail, "credential-reflected: 1 redacted (frame)");
}

#[test]
fn refuse_and_unscannable_frames_cut_the_connection() {
    let mut f = FrameFilter::new(guard(Reflection::Refuse));
    assert_eq!(
        f.push(&frame(0x81, SECRET.as_bytes(), None)),
        Err(Cut::Reflected)
    );
    let mut f = FrameFilter::new(guard(Reflection::Redact));
    assert_eq!(
        f.push(&frame(0xc1, b"deflated", None)),
        Err(Cut::Unscannable("compressed frame"))
    );
    let mut huge = vec![0x82, 127];
    huge.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
    assert!(
        FrameFilter::new(guard(Reflection::Redact))
            .push(&huge)
            .is_err()
    );
}

#[test]
fn long_frames_keep_a_correct_length() {
    let g = guard(Reflection::Redact);
    let mut f = FrameFilter::new(g);
    let mut payload = vec![b'x'; 70_000];
    payload[100..100 + SECRET.len()].copy_from_slice(SECRET.as_bytes());
    let out = f.push(&frame(0x82, &payload, None)).unwrap();
    assert_eq!(out[1], 127);
    let len = u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize;
    assert_eq!(len, out.len() - 10);
    assert_eq!(len, 70_000 - SECRET.len() + "[clawgate:redacted]".len());
}
