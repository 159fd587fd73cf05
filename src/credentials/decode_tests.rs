use proptest::prelude::*;

use super::*;

const P: &str = "clawgate-sentinel-0123456789abcdef";

fn found_in(bytes: &[u8]) -> bool {
    let has = |b: &[u8]| {
        b.windows(P.len())
            .any(|w| w.eq_ignore_ascii_case(P.as_bytes()))
    };
    has(bytes) || variants(bytes).iter().any(|v| has(v))
}

#[test]
fn each_encoding_of_a_placeholder_is_undone() {
    let cases = [
        "clawgate%2Dsentinel%2D0123456789abcdef".to_owned(),
        "clawgate%252Dsentinel-0123456789abcdef".to_owned(),
        "token=clawgate-sentinel-0123456789ab%63def&x=1".to_owned(),
        r#"{"key":"\u0063lawgate-sentinel-0123456789abcdef"}"#.to_owned(),
        r#"{"key":"clawgate\u002dsentinel\u002d0123456789abcdef"}"#.to_owned(),
        r#"{"q":"clawgate%2Dsentinel-0123456789abcdef"}"#.to_owned(),
        "clawgate-sentinel-0123=\r\n456789abcdef".to_owned(),
        "clawgate=2Dsentinel-0123456789abcdef".to_owned(),
        // base64 in a multipart part, wrapped as MIME does.
        {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("key: {P}"));
            let (a, b) = b64.split_at(20);
            format!("--x\r\nContent-Transfer-Encoding: base64\r\n\r\n{a}\r\n{b}\r\n--x--")
        },
    ];
    for case in cases {
        assert!(found_in(case.as_bytes()), "{case}");
    }
}

#[test]
fn broken_escapes_are_kept_and_plain_text_has_no_variants() {
    assert_eq!(percent_decoded(b"100%zz+1"), b"100%zz 1");
    assert_eq!(json_unescaped(br"\u12 \q"), br"\u12 \q");
    assert!(variants(b"plain text").is_empty());
    assert_eq!(json_unescaped(br"\ud83e\udd80"), "🦀".as_bytes());
}

proptest! {
    /// Whatever bytes are around it, and whichever of its characters are
    /// percent-encoded or JSON-escaped, the placeholder is found.
    #[test]
    fn an_encoded_placeholder_is_always_found(
        before in "[a-zA-Z0-9 ]{0,20}",
        after in "[a-zA-Z0-9 ]{0,20}",
        mask in proptest::collection::vec(0u8..3, P.len()),
    ) {
        let mut encoded = String::new();
        let json = mask.contains(&2);
        for (c, m) in P.chars().zip(&mask) {
            match m {
                1 if !json => encoded.push_str(&format!("%{:02X}", c as u32)),
                2 => encoded.push_str(&format!("\\u{:04x}", c as u32)),
                _ => encoded.push(c),
            }
        }
        let text = format!("{before}{encoded}{after}");
        prop_assert!(found_in(text.as_bytes()), "{}", text);
    }

    /// Decoding never panics.
    #[test]
    fn decoding_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = variants(&bytes);
    }
}
