//! Path globs, compiled to segments and matched without regex or allocation
//! beyond the path's segment list.
//!
//! Why not a regex-backed glob set: a policy with a thousand scopes holds a
//! thousand compiled automata, and a decision that touches a cold one pays for
//! cache misses that dwarf the match itself. Segments of literals, `*` and `?`
//! are small and cheap to walk, and both levels of matching keep a single
//! backtrack point, so no pattern and no path can make a match expensive.
//!
//! The syntax is a subset of globset's, and globset validates every pattern
//! first, so both agree on what is valid; a differential property test keeps
//! them agreeing on what matches:
//! - `*` matches any characters within one segment, `?` exactly one;
//! - a segment of `**` matches any number of segments (at the end: at least one,
//!   so `/v1/**` does not match `/v1`);
//! - `{a,b}` alternatives are expanded when the policy loads (not nested, no
//!   empty alternative, no `*` touching the group);
//! - `?` is one character, not one byte;
//! - character classes and backslash escapes are refused.

use std::fmt;

/// One character of a segment pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Char {
    Literal(char),
    /// `*`: any run of characters, none of them `/`.
    Star,
    /// `?`: exactly one character that is not `/`.
    One,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**` as a whole segment: any run of segments.
    Any,
    /// Exactly one segment, whatever it holds (a trailing `**` needs one).
    One,
    /// A plain literal segment.
    Literal(String),
    /// A segment with `*` or `?` in it.
    Wild(Vec<Char>),
}

/// A compiled path glob (one alternative, after brace expansion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    segments: Vec<Segment>,
}

/// Why a glob cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobError(String);

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most alternatives one pattern may expand to.
const MAX_EXPANSIONS: usize = 64;

/// Compiles `pattern` (already accepted by globset) into its alternatives.
pub fn compile(pattern: &str) -> Result<Vec<PathGlob>, GlobError> {
    if pattern.contains(['[', ']', '\\']) {
        return Err(GlobError(
            "character classes and backslash escapes are not supported".into(),
        ));
    }
    expand(pattern)?
        .iter()
        .map(|alternative| {
            let rest = alternative
                .strip_prefix('/')
                .ok_or_else(|| GlobError("must start with `/`".into()))?;
            let mut segments: Vec<Segment> = rest.split('/').map(segment).collect();
            // A trailing `**` matches one segment or more, never none:
            // `/v1/**` matches `/v1/` and `/v1/a/b` but not `/v1`.
            if segments.last() == Some(&Segment::Any) {
                segments.insert(segments.len() - 1, Segment::One);
            }
            Ok(PathGlob { segments })
        })
        .collect()
}

/// Expands one level of `{a,b}` groups (globset refuses nested ones).
fn expand(pattern: &str) -> Result<Vec<String>, GlobError> {
    let Some(open) = pattern.find(['{', '}']) else {
        return Ok(vec![pattern.to_owned()]);
    };
    if pattern[open..].starts_with('}') {
        return Err(GlobError("`}` without `{`".into()));
    }
    let close = pattern[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| GlobError("unclosed `{`".into()))?;
    let group = &pattern[open + 1..close];
    if group.contains('{') {
        return Err(GlobError("nested `{` groups are not supported".into()));
    }
    // globset reads `**` next to or inside a group as a one-segment `*`; the
    // expansion would make it a whole-segment `**`. Refuse rather than differ.
    if group.contains("**")
        || pattern[..open].ends_with('*')
        || pattern[close + 1..].starts_with('*')
    {
        return Err(GlobError(
            "`*` directly next to or `**` inside a `{` group is not supported".into(),
        ));
    }
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    let mut out = Vec::new();
    for tail in expand(tail)? {
        for choice in group.split(',') {
            if choice.is_empty() {
                return Err(GlobError("empty alternative in a `{` group".into()));
            }
            out.push(format!("{head}{choice}{tail}"));
            if out.len() > MAX_EXPANSIONS {
                return Err(GlobError(format!(
                    "expands to more than {MAX_EXPANSIONS} alternatives"
                )));
            }
        }
    }
    Ok(out)
}

fn segment(text: &str) -> Segment {
    if text == "**" {
        return Segment::Any;
    }
    if !text.contains(['*', '?']) {
        return Segment::Literal(text.to_owned());
    }
    let mut chars: Vec<Char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        let token = match c {
            '*' => Char::Star,
            '?' => Char::One,
            c => Char::Literal(c),
        };
        // `**` inside a segment means the same as `*`.
        if !(token == Char::Star && chars.last() == Some(&Char::Star)) {
            chars.push(token);
        }
    }
    Segment::Wild(chars)
}

impl PathGlob {
    /// The leading segments that are plain literals.
    fn literal_prefix(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map_while(|segment| match segment {
            Segment::Literal(text) => Some(text.as_str()),
            Segment::Any | Segment::One | Segment::Wild(_) => None,
        })
    }

    /// Whether the path, split into segments after its leading `/`, matches.
    pub fn matches(&self, path_segments: &[&str]) -> bool {
        match_segments(&self.segments, path_segments)
    }
}

/// Globs indexed by their literal prefix in a segment trie, so a lookup
/// walks the path once and tries only the globs whose literal prefix the
/// path shares, whatever the number of rules.
#[derive(Debug, Default)]
pub struct GlobIndex<T> {
    root: Node,
    globs: Vec<(PathGlob, T)>,
}

#[derive(Debug, Default)]
struct Node {
    children: std::collections::HashMap<String, Node>,
    /// Globs whose literal prefix ends here: (glob index, prefix length).
    here: Vec<(usize, usize)>,
}

impl<T> GlobIndex<T> {
    /// Indexes `globs`, each carrying a value (the rule it belongs to).
    pub fn new(globs: Vec<(PathGlob, T)>) -> GlobIndex<T> {
        let mut root = Node::default();
        for (i, (glob, _)) in globs.iter().enumerate() {
            let mut node = &mut root;
            let mut depth = 0;
            for literal in glob.literal_prefix() {
                node = node.children.entry(literal.to_owned()).or_default();
                depth += 1;
            }
            node.here.push((i, depth));
        }
        GlobIndex { root, globs }
    }

    /// Calls `visit` with the value of every glob that matches `path`
    /// (segments after the leading `/`), until `visit` returns `false`.
    pub fn for_each_match(&self, path: &[&str], mut visit: impl FnMut(&T) -> bool) {
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            for &(glob, prefix) in &node.here {
                let (pattern, value) = &self.globs[glob];
                if match_segments(&pattern.segments[prefix..], &path[prefix..]) && !visit(value) {
                    return;
                }
            }
            match path
                .get(depth)
                .and_then(|segment| node.children.get(*segment))
            {
                Some(child) => {
                    node = child;
                    depth += 1;
                }
                None => return,
            }
        }
    }
}

/// Matches path segments against segment patterns. Like [`match_chars`], it
/// keeps one backtrack point (the last `**`), so the cost is at worst the
/// product of the two lengths, whatever pattern an admin writes or path an
/// agent sends.
fn match_segments(pattern: &[Segment], path: &[&str]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < path.len() {
        match pattern.get(p) {
            Some(Segment::Any) => {
                backtrack = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(Segment::One) => {
                p += 1;
                t += 1;
                continue;
            }
            Some(Segment::Literal(literal)) if literal == path[t] => {
                p += 1;
                t += 1;
                continue;
            }
            Some(Segment::Wild(chars)) if match_chars(chars, path[t]) => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match backtrack {
            Some((after_any, from)) => {
                backtrack = Some((after_any, from + 1));
                p = after_any;
                t = from + 1;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|segment| *segment == Segment::Any)
}

/// Wildcard match within one segment: `*` any run, `?` one character. One
/// backtrack point (the last `*`) makes it linear in practice.
fn match_chars(pattern: &[Char], text: &str) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while let Some(c) = text[t..].chars().next() {
        match pattern.get(p) {
            Some(Char::Star) => {
                backtrack = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(Char::One) => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            Some(Char::Literal(want)) if *want == c => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            _ => {}
        }
        match backtrack {
            Some((after_star, from)) => {
                let skipped = text[from..].chars().next().map_or(1, char::len_utf8);
                backtrack = Some((after_star, from + skipped));
                p = after_star;
                t = from + skipped;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == Char::Star)
}

#[cfg(test)]
#[path = "glob_tests.rs"]
mod tests;
