//! What every compiling step of the loader shares: the options it runs with,
//! the problems it reports (with file, line and column), and the small
//! checks used by more than one kind of entry.
//!
//! The steps (`scope`, `credential`, `exception`) depend on this module and
//! [`super::load`] depends on them, never the other way round.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use toml::Spanned;

/// The default and largest allowed `max_exception`: 7 days.
pub const DEFAULT_MAX_EXCEPTION: Duration = Duration::from_secs(7 * 86_400);

/// What loading needs from the outside world besides the files.
pub struct LoadOptions<'a> {
    /// Looks up an environment variable (the process environment in
    /// production; tests pass a map so they never mutate the environment).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The time exceptions are judged against.
    pub now: SystemTime,
    /// How far ahead an exception may expire.
    pub max_exception: Duration,
}

impl<'a> LoadOptions<'a> {
    /// Options with the clock read now and the default exception maximum.
    pub fn new(env: &'a dyn Fn(&str) -> Option<String>) -> LoadOptions<'a> {
        LoadOptions {
            env,
            now: SystemTime::now(),
            max_exception: DEFAULT_MAX_EXCEPTION,
        }
    }
}

impl fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions").finish_non_exhaustive()
    }
}

/// One problem (or warning) at a place in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file, as found in the directory.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is about the whole file.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Lowercase, no trailing period, user input in backticks.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

/// A policy directory that did not validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// Every problem found, in file order.
    pub problems: Vec<PolicyError>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// A file's path and text, kept to turn byte spans into lines and columns.
pub(super) struct Source {
    pub(super) path: PathBuf,
    pub(super) text: String,
}

/// Collects problems and warnings while validating.
pub(super) struct Report<'s> {
    sources: &'s [Source],
    pub(super) problems: Vec<PolicyError>,
    pub(super) warnings: Vec<PolicyError>,
    /// Files whose TOML syntax is broken: what they define may be missing,
    /// so a reference to an unknown name may only be a consequence.
    unreadable: Vec<usize>,
}

impl<'s> Report<'s> {
    /// A report over `sources`, starting with `problems` (files that could
    /// not be read at all).
    pub(super) fn new(sources: &'s [Source], problems: Vec<PolicyError>) -> Report<'s> {
        Report {
            sources,
            problems,
            warnings: Vec::new(),
            unreadable: Vec::new(),
        }
    }

    fn at(&self, file: usize, span: Range<usize>, message: String) -> PolicyError {
        let source = &self.sources[file];
        let (line, col) = locate(&source.text, span.start);
        PolicyError {
            file: source.path.clone(),
            line,
            col,
            message,
        }
    }

    pub(super) fn error(&mut self, file: usize, span: Range<usize>, message: String) {
        let e = self.at(file, span, message);
        self.problems.push(e);
    }

    pub(super) fn warn(&mut self, file: usize, span: Range<usize>, message: String) {
        let w = self.at(file, span, message);
        self.warnings.push(w);
    }

    /// A TOML syntax error in `file`: reported, and remembered so that
    /// references to names the file may have defined are marked.
    pub(super) fn syntax_error(&mut self, file: usize, span: Range<usize>, message: String) {
        if !self.unreadable.contains(&file) {
            self.unreadable.push(file);
        }
        self.error(file, span, message);
    }

    /// A reference to a name nothing defines (or a key nothing expects).
    /// When a file could not be read whole, the name may be defined there,
    /// or the key a fragment of the broken line: the message says so, so
    /// the admin fixes the cause first.
    pub(super) fn unknown_name(&mut self, file: usize, span: Range<usize>, message: String) {
        let message = match self.unreadable.first() {
            None => message,
            Some(&broken) => {
                let name = self.sources[broken]
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("{message} (may be a consequence of the syntax error in `{name}`)")
            }
        };
        self.error(file, span, message);
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn locate(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A `rate` with its optional `burst`, reported at its place.
pub(super) fn compile_rate(
    report: &mut Report<'_>,
    file: usize,
    rate: Option<&Spanned<String>>,
    burst: Option<&Spanned<u32>>,
) -> Option<crate::limits::Rate> {
    match (rate, burst) {
        (None, None) => None,
        (None, Some(b)) => {
            report.error(file, b.span(), "`burst` needs a `rate`".into());
            None
        }
        (Some(rate), burst) => {
            match crate::limits::Rate::parse(rate.get_ref(), burst.map(|b| *b.get_ref())) {
                Ok(r) => Some(r),
                Err(e) => {
                    let span = match (&e, burst) {
                        (crate::limits::RateError::ZeroBurst, Some(b)) => b.span(),
                        _ => rate.span(),
                    };
                    report.error(file, span, e.to_string());
                    None
                }
            }
        }
    }
}

/// 1 to 64 of `a-z`, `0-9`, `.`, `_`, `-`: the names of agents, scopes,
/// exceptions and sentinels.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}
