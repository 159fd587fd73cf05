//! Path spellings that some upstreams fold into another path.
//!
//! Rules match the decoded path exactly, but an upstream may not read it
//! exactly: IIS and Windows file systems drop a trailing `.` or space from
//! a segment, some object stores and frameworks apply Unicode
//! compatibility normalisation (NFKC, so a fullwidth `．` is `.` and `ｓ`
//! is `s`), and invisible code points (zero-width, bidi controls, tag
//! characters) vanish in logs and in some routers. Each is a way past a
//! deny rule, so a scope refuses them (`malformed-request`) unless it sets
//! `path_strictness = "lenient"`.
//!
//! Pure and cheap: an ASCII path costs one pass over its bytes; only
//! non-ASCII characters are normalised, one at a time.

use unicode_normalization::UnicodeNormalization;

/// The first hazard in a decoded path, named for the record; `None` when
/// the path reads the same to every upstream.
pub fn hazard(path: &str) -> Option<&'static str> {
    for segment in path.split('/') {
        if let Some(last) = segment.chars().next_back()
            && (last == '.' || last.is_whitespace())
        {
            return Some("a path segment ends in `.` or whitespace");
        }
    }
    if path.is_ascii() {
        return None;
    }
    for c in path.chars().filter(|c| !c.is_ascii()) {
        if invisible(c) {
            return Some("an invisible code point in the path");
        }
        if c.nfkc().any(|n| n.is_ascii()) {
            return Some("a path character that normalises (NFKC) to ASCII");
        }
    }
    None
}

/// Code points that render as nothing: zero-width characters and joiners,
/// bidi controls, the BOM, soft hyphen, tag characters, variation
/// selectors, and the other default-ignorable formatting characters.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{034F}'
        | '\u{061C}'
        | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}'
        | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hazards_are_found() {
        for path in [
            "/allowed/secret./x",
            "/allowed/secret /x",
            "/allowed/secret\t",
            "/allowed/secret\u{00A0}/x",
            "/allowed/secret\u{FF0E}/x",
            "/allowed/\u{FF53}ecret/x",
            "/allowed/se\u{200B}cret/x",
            "/allowed/secret\u{202E}/x",
            "/allowed/secret\u{E0041}/x",
            "/allowed/secret\u{FEFF}",
            "/allowed/\u{2024}/x",
        ] {
            assert!(hazard(path).is_some(), "{path:?}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/",
            "/allowed/secret/x",
            "/v1/files/report.txt",
            "/v1/items/",
            "/wiki/Zürich",
            "/wiki/東京",
            "/search/naïve café",
            "/emoji/🦀",
        ] {
            assert_eq!(hazard(path), None, "{path:?}");
        }
    }

    proptest! {
        /// A path of letters, digits and inner dots or dashes is never a hazard.
        #[test]
        fn plain_segments_pass(segments in proptest::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9.-]{0,8}[a-zA-Z0-9])?", 0..6)) {
            let path = format!("/{}", segments.join("/"));
            prop_assert_eq!(hazard(&path), None);
        }

        /// Any segment ending in a dot is a hazard wherever it stands.
        #[test]
        fn a_trailing_dot_is_always_found(before in "[a-z/]{0,10}", segment in "[a-z]{1,5}", after in "(/[a-z]{1,5}){0,3}") {
            let path = format!("/{before}/{segment}.{after}");
            prop_assert!(hazard(&path).is_some());
        }
    }
}
