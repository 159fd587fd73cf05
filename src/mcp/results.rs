//! What MCP servers return, inspected before the agent reads it: tool
//! results (text, structured content, embedded resources), `resources/read`
//! contents and `prompts/get` messages. Secrets (values clawgate injected,
//! well-known key formats, the policy's patterns) and hidden instructions
//! (invisible Unicode, ANSI escape sequences, the policy's patterns) are
//! found in the decoded JSON string values, so an escaped `\u001b` or
//! `\udb40\udc41` is seen, and the message is written again when changed.
//!
//! Invariants:
//! - A matched text is never recorded, logged or formatted: a finding is a
//!   kind and a count ([`Tally`]).
//! - Values clawgate injected are always at least redacted.
//! - `blob` values (base64) are not searched: redacting inside one would
//!   corrupt it, and it is not text an agent reads.

use std::sync::{Arc, LazyLock, Mutex};

use regex::Regex;
use serde_json::Value;

use crate::response::reflect::{MARKER, Needles};

/// The kinds of finding, in the order a record lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A value clawgate injected into a call (a credential, a sentinel's
    /// value, a minted token).
    InjectedSecret,
    /// A well-known key format ([`KEY_FORMATS`]).
    KeyFormat,
    /// A secret pattern the policy adds.
    SecretPattern,
    /// Invisible Unicode: tag characters, bidirectional controls,
    /// zero-width characters.
    InvisibleUnicode,
    /// An ANSI escape sequence (or a lone ESC or CSI).
    AnsiEscape,
    /// An instruction pattern the policy adds.
    InstructionPattern,
}

impl Kind {
    /// Every kind, in record order.
    pub const ALL: [Kind; 6] = [
        Kind::InjectedSecret,
        Kind::KeyFormat,
        Kind::SecretPattern,
        Kind::InvisibleUnicode,
        Kind::AnsiEscape,
        Kind::InstructionPattern,
    ];

    /// The kind's name in records and policy.
    pub fn code(self) -> &'static str {
        match self {
            Kind::InjectedSecret => "injected-secret",
            Kind::KeyFormat => "key-format",
            Kind::SecretPattern => "secret-pattern",
            Kind::InvisibleUnicode => "invisible-unicode",
            Kind::AnsiEscape => "ansi-escape",
            Kind::InstructionPattern => "instruction-pattern",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What happens to what a kind finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Replaced by `[clawgate:redacted]`.
    Redact,
    /// Removed (invisible characters, escape sequences).
    Strip,
    /// The whole message replaced by a JSON-RPC error.
    Refuse,
    /// Recorded and handed on unchanged.
    Report,
    /// Not looked for.
    Off,
}

impl Act {
    /// The verb a record uses.
    fn done(self) -> &'static str {
        match self {
            Act::Redact => "redacted",
            Act::Strip => "stripped",
            Act::Refuse => "refused",
            Act::Report | Act::Off => "reported",
        }
    }
}

/// The well-known key formats searched by default: (name, pattern). Each
/// match is one finding of kind `key-format`.
pub const KEY_FORMATS: [(&str, &str); 9] = [
    (
        "aws-access-key-id",
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
    ),
    (
        "aws-secret-access-key",
        r#"(?i:aws_?secret_?(?:access_?)?key)["']?\s*[:=]\s*["']?[A-Za-z0-9/+]{40}"#,
    ),
    (
        "github-token",
        r"\b(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{36}\b",
    ),
    (
        "github-fine-grained-token",
        r"\bgithub_pat_[A-Za-z0-9_]{22,255}",
    ),
    ("slack-token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    ("google-api-key", r"\bAIza[0-9A-Za-z_-]{35}"),
    (
        "private-key-pem",
        r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*)",
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
    ),
    ("stripe-live-key", r"\b[rs]k_live_[A-Za-z0-9]{20,}"),
];

static KEYS: LazyLock<Option<Regex>> = LazyLock::new(|| {
    let joined = KEY_FORMATS
        .iter()
        .map(|(_, p)| format!("(?:{p})"))
        .collect::<Vec<_>>()
        .join("|");
    Regex::new(&joined).ok()
});

static ANSI: LazyLock<Option<Regex>> = LazyLock::new(|| {
    // CSI, OSC (ended by BEL or ST, or by nothing), two-byte escapes, a lone
    // ESC; and the one-character CSI (U+009B) with its parameters.
    Regex::new(
        r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~]|)|\x{9b}[0-?]*[ -/]*[@-~]?",
    )
    .ok()
});

/// Whether `c` is an invisible character clawgate strips: tag characters
/// (U+E0000–E007F), bidirectional controls and marks, zero-width
/// characters and invisible operators, the byte-order mark.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{E0000}'..='\u{E007F}'
        | '\u{061C}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{FEFF}')
}

/// A scope's `[scope.mcp.results]`, compiled.
#[derive(Debug, Clone)]
pub struct ResultRules {
    /// Values clawgate injected: `Redact` or `Refuse`.
    pub injected: Act,
    /// Well-known key formats.
    pub key_formats: Act,
    /// Invisible Unicode.
    pub invisible: Act,
    /// ANSI escape sequences.
    pub ansi: Act,
    /// The policy's secret patterns (one alternation) and their action.
    pub secrets: Option<(Regex, Act)>,
    /// The policy's instruction patterns (one alternation) and their action.
    pub instructions: Option<(Regex, Act)>,
}

impl Default for ResultRules {
    /// The safe defaults: injected values and key formats redacted,
    /// invisible characters and escape sequences stripped.
    fn default() -> ResultRules {
        ResultRules {
            injected: Act::Redact,
            key_formats: Act::Redact,
            invisible: Act::Strip,
            ansi: Act::Strip,
            secrets: None,
            instructions: None,
        }
    }
}

/// What one message held: a count per kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    counts: [usize; 6],
    changed: bool,
}

impl Findings {
    /// How many of `kind` were found.
    pub fn count(&self, kind: Kind) -> usize {
        self.counts[kind.index()]
    }

    /// Whether anything was found.
    pub fn any(&self) -> bool {
        self.counts.iter().any(|&c| c > 0)
    }

    /// Whether the message was changed (redacted or stripped).
    pub fn changed(&self) -> bool {
        self.changed
    }
}

impl ResultRules {
    fn act(&self, kind: Kind) -> Act {
        match kind {
            Kind::InjectedSecret => self.injected,
            Kind::KeyFormat => self.key_formats,
            Kind::SecretPattern => self.secrets.as_ref().map_or(Act::Off, |(_, a)| *a),
            Kind::InvisibleUnicode => self.invisible,
            Kind::AnsiEscape => self.ansi,
            Kind::InstructionPattern => self.instructions.as_ref().map_or(Act::Off, |(_, a)| *a),
        }
    }

    /// Whether `findings` refuse the message.
    pub fn refuses(&self, findings: &Findings) -> bool {
        Kind::ALL
            .iter()
            .any(|&k| findings.count(k) > 0 && self.act(k) == Act::Refuse)
    }

    /// Inspects every string in `value` (but `blob`s), changing it as the
    /// actions say.
    pub fn inspect(&self, value: &mut Value, needles: Option<&Needles>, found: &mut Findings) {
        match value {
            Value::String(text) => self.text(text, needles, found),
            Value::Array(items) => {
                for item in items {
                    self.inspect(item, needles, found);
                }
            }
            Value::Object(fields) => {
                for (key, item) in fields.iter_mut() {
                    if key != "blob" {
                        self.inspect(item, needles, found);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Inspects one decoded string. Invisible characters go first, so that
    /// ones planted inside a key do not hide it.
    fn text(&self, text: &mut String, needles: Option<&Needles>, found: &mut Findings) {
        if text.bytes().any(|b| b >= 0x80 || b == 0x1b) {
            if self.invisible != Act::Off {
                let n = text.chars().filter(|&c| is_invisible(c)).count();
                if n > 0 {
                    found.counts[Kind::InvisibleUnicode.index()] += n;
                    if matches!(self.invisible, Act::Strip | Act::Redact) {
                        text.retain(|c| !is_invisible(c));
                        found.changed = true;
                    }
                }
            }
            if self.ansi != Act::Off
                && let Some(ansi) = ANSI.as_ref()
            {
                let replace = matches!(self.ansi, Act::Strip | Act::Redact);
                replace_matches(ansi, text, Kind::AnsiEscape, replace, b"", found);
            }
        }
        if let Some(needles) = needles
            && let Some((out, hits)) = needles.redact(text.as_bytes())
            && hits > 0
        {
            found.counts[Kind::InjectedSecret.index()] += hits;
            // Always redacted, whatever else happens to the message.
            *text = String::from_utf8(out)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            found.changed = true;
        }
        if self.key_formats != Act::Off
            && let Some(keys) = KEYS.as_ref()
        {
            let replace = self.key_formats == Act::Redact;
            replace_matches(keys, text, Kind::KeyFormat, replace, MARKER, found);
        }
        if let Some((pattern, act)) = &self.secrets {
            let replace = *act == Act::Redact;
            replace_matches(pattern, text, Kind::SecretPattern, replace, MARKER, found);
        }
        if let Some((pattern, act)) = &self.instructions {
            let replace = *act == Act::Redact;
            replace_matches(
                pattern,
                text,
                Kind::InstructionPattern,
                replace,
                MARKER,
                found,
            );
        }
    }
}

/// Counts `pattern`'s matches in `text` as `kind`, and when `replace`,
/// replaces each with `with`.
fn replace_matches(
    pattern: &Regex,
    text: &mut String,
    kind: Kind,
    replace: bool,
    with: &[u8],
    found: &mut Findings,
) {
    let mut last = 0;
    let mut out = String::new();
    let mut hits = 0;
    for m in pattern.find_iter(text) {
        if m.is_empty() {
            continue;
        }
        hits += 1;
        if replace {
            out.push_str(&text[last..m.start()]);
            out.push_str(std::str::from_utf8(with).unwrap_or(""));
            last = m.end();
        }
    }
    if hits == 0 {
        return;
    }
    found.counts[kind.index()] += hits;
    if replace {
        out.push_str(&text[last..]);
        *text = out;
        found.changed = true;
    }
}

/// Whether a JSON-RPC result is one the inspection reads: it carries what
/// a tool, a resource or a prompt returned, whatever request it answers.
pub fn is_inspected(result: &Value) -> bool {
    ["content", "structuredContent", "contents", "messages"]
        .iter()
        .any(|k| result.get(k).is_some())
}

/// What an exchange's inspection found, for its outcome record.
#[derive(Debug, Default)]
pub struct Tally {
    inner: Mutex<(Findings, bool)>,
}

impl Tally {
    /// Adds one message's findings; `refused` when it was refused.
    pub fn add(&self, findings: &Findings, refused: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            for kind in Kind::ALL {
                inner.0.counts[kind.index()] += findings.count(kind);
            }
            inner.1 |= refused;
        }
    }

    /// The detail for the outcome record, `tool-result: 2 key-format
    /// redacted, 1 ansi-escape stripped`, and whether a message was refused;
    /// `None` when nothing was found.
    pub fn settle(&self, rules: &ResultRules) -> Option<(String, bool)> {
        let inner = self.inner.lock().ok()?;
        let (findings, refused) = &*inner;
        if !findings.any() {
            return None;
        }
        let parts: Vec<String> = Kind::ALL
            .iter()
            .filter(|&&k| findings.count(k) > 0)
            .map(|&k| {
                let act = match rules.act(k) {
                    // Injected values are redacted even when the message
                    // is also refused for something else.
                    Act::Refuse if !*refused => Act::Report,
                    other => other,
                };
                format!("{} {} {}", findings.count(k), k.code(), act.done())
            })
            .collect();
        Some((format!("tool-result: {}", parts.join(", ")), *refused))
    }
}

/// The inspection of one exchange's results.
#[derive(Debug, Clone)]
pub struct Inspector {
    /// The scope's rules.
    pub rules: Arc<ResultRules>,
    /// The values injected into the call, when any.
    pub needles: Option<Arc<Needles>>,
    /// What was found, for the outcome record.
    pub tally: Arc<Tally>,
}

/// What the inspection made of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to change.
    Pass,
    /// The result, changed.
    Changed(Value),
    /// Refused: the agent gets an error naming these kinds.
    Refused(Vec<&'static str>),
}

impl Inspector {
    /// The inspection of one exchange under `rules`. Out of enforce mode
    /// nothing is refused (a refusal is reported instead); what would be
    /// redacted or stripped still is.
    pub fn new(
        rules: &Arc<ResultRules>,
        enforce: bool,
        needles: Option<Arc<Needles>>,
    ) -> Inspector {
        let rules = if enforce {
            Arc::clone(rules)
        } else {
            let mut lenient = ResultRules::clone(rules);
            for act in [
                &mut lenient.key_formats,
                &mut lenient.invisible,
                &mut lenient.ansi,
            ] {
                if *act == Act::Refuse {
                    *act = Act::Report;
                }
            }
            if lenient.injected == Act::Refuse {
                lenient.injected = Act::Redact;
            }
            for (_, act) in [&mut lenient.secrets, &mut lenient.instructions]
                .into_iter()
                .flatten()
            {
                if *act == Act::Refuse {
                    *act = Act::Report;
                }
            }
            Arc::new(lenient)
        };
        Inspector {
            rules,
            needles,
            tally: Arc::default(),
        }
    }

    /// Inspects one result (which [`is_inspected`] said is read).
    pub fn result(&self, mut result: Value) -> Verdict {
        let mut found = Findings::default();
        self.rules
            .inspect(&mut result, self.needles.as_deref(), &mut found);
        let refused = self.rules.refuses(&found);
        self.tally.add(&found, refused);
        if refused {
            let kinds = Kind::ALL
                .iter()
                .filter(|&&k| found.count(k) > 0 && self.rules.act(k) == Act::Refuse)
                .map(|k| k.code())
                .collect();
            return Verdict::Refused(kinds);
        }
        if found.changed() {
            Verdict::Changed(result)
        } else {
            Verdict::Pass
        }
    }

    /// The JSON-RPC error that replaces a refused result with id `id`.
    pub fn refusal(id: &Value, kinds: &[&str]) -> Vec<u8> {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": crate::mcp::jsonrpc::REFUSAL_CODE,
                "message": format!("Refused by policy: the result held {}", kinds.join(", ")),
                "data": {"reason": crate::error::Reason::ToolResultRefused.code(), "kinds": kinds},
            },
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "results_tests.rs"]
mod tests;
