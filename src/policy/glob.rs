//! Path globs, compiled to segments and matched without regex or allocation
//! beyond the path's segment list.
//!
//! Why not a regex-backed glob set: a policy with a thousand scopes holds a
//! thousand compiled automata, and a decision that touches a cold one pays for
//! cache misses that dwarf the match itself. Segments of literals, `*` and `?`
//! are small and cheap to walk.
//!
//! The syntax is a subset of globset's, and globset validates every pattern
//! first, so both agree on what is valid; a differential property test keeps
//! them agreeing on what matches:
//! - `*` matches any characters within one segment, `?` exactly one;
//! - a segment of `**` matches any number of segments (at the end: at least one,
//!   so `/v1/**` does not match `/v1`);
//! - `{a,b}` alternatives are expanded when the policy loads;
//! - character classes and backslash escapes are refused.

use std::fmt;

/// One part of a segment pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `*`: any run of characters, none of them `/`.
    Star,
    /// `?`: exactly one character that is not `/`.
    One,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**` as a whole segment.
    Any,
    /// A segment made of literals and wildcards.
    Parts(Vec<Part>),
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
            let segments = rest.split('/').map(segment).collect();
            Ok(PathGlob { segments })
        })
        .collect()
}

/// Expands one level of `{a,b}` groups (globset refuses nested ones).
fn expand(pattern: &str) -> Result<Vec<String>, GlobError> {
    let Some(open) = pattern.find('{') else {
        return Ok(vec![pattern.to_owned()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| GlobError("unclosed `{`".into()))?;
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    let mut out = Vec::new();
    for tail in expand(tail)? {
        for choice in pattern[open + 1..close].split(',') {
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
    let mut parts: Vec<Part> = Vec::new();
    let mut literal = String::new();
    for c in text.chars() {
        let wildcard = match c {
            '*' => Part::Star,
            '?' => Part::One,
            _ => {
                literal.push(c);
                continue;
            }
        };
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        // `**` inside a segment means the same as `*`.
        if !(wildcard == Part::Star && parts.last() == Some(&Part::Star)) {
            parts.push(wildcard);
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Segment::Parts(parts)
}

impl PathGlob {
    /// The leading segments that are plain literals.
    fn literal_prefix(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map_while(|segment| match segment {
            Segment::Parts(parts) => match parts.as_slice() {
                [Part::Literal(text)] => Some(text.as_str()),
                [] => Some(""),
                _ => None,
            },
            Segment::Any => None,
        })
    }

    /// Whether the path, split into segments after its leading `/`, matches.
    #[cfg(test)]
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

fn match_segments(pattern: &[Segment], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Segment::Any, [])) => !path.is_empty(),
        Some((Segment::Any, rest)) => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((Segment::Parts(parts), rest)) => match path.split_first() {
            Some((first, others)) => match_parts(parts, first) && match_segments(rest, others),
            None => false,
        },
    }
}

/// Wildcard match of one segment: literals, `*` (any run) and `?` (one char).
fn match_parts(parts: &[Part], text: &str) -> bool {
    match parts.split_first() {
        None => text.is_empty(),
        Some((Part::Literal(literal), rest)) => text
            .strip_prefix(literal.as_str())
            .is_some_and(|after| match_parts(rest, after)),
        Some((Part::One, rest)) => {
            let mut chars = text.chars();
            chars.next().is_some() && match_parts(rest, chars.as_str())
        }
        Some((Part::Star, rest)) => {
            if rest.is_empty() {
                return true;
            }
            text.char_indices()
                .map(|(i, _)| i)
                .chain(std::iter::once(text.len()))
                .any(|i| match_parts(rest, &text[i..]))
        }
    }
}

#[cfg(test)]
#[path = "glob_tests.rs"]
mod tests;
