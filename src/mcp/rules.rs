//! MCP rules as compiled from policy, and the pure decision on one message.
//!
//! Invariants:
//! - Deny by default: a tool, resource or prompt that no allow rule names is
//!   refused, and hidden from `tools/list`.
//! - An enforced deny rule that matches beats everything else.
//! - A condition on a missing value is false, negated or not (only
//!   `present = false` holds); there is no type coercion.
//! - Argument conditions are decided only at call time; list visibility
//!   depends on name rules and pins alone.
//! - Nothing here does I/O or reads a clock.

use std::collections::HashMap;
use std::sync::Arc;

use globset::GlobMatcher;
use serde_json::Value;

use crate::error::Reason;
use crate::limits::Rate;
use crate::policy::{Effect, Mode};

/// What a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `tools/call`, by tool name.
    Tool,
    /// `resources/read` (and `resources/subscribe`), by URI.
    Resource,
    /// `prompts/get`, by prompt name.
    Prompt,
}

/// The JSON types a `type` condition names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    /// A string.
    String,
    /// Any number.
    Number,
    /// A number written without fraction or exponent.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// An object.
    Object,
    /// An array.
    Array,
    /// `null`.
    Null,
}

impl JsonType {
    /// Parses a type name as policy writes it.
    pub fn parse(name: &str) -> Option<JsonType> {
        Some(match name {
            "string" => JsonType::String,
            "number" => JsonType::Number,
            "integer" => JsonType::Integer,
            "boolean" => JsonType::Boolean,
            "object" => JsonType::Object,
            "array" => JsonType::Array,
            "null" => JsonType::Null,
            _ => return None,
        })
    }

    fn holds(self, value: &Value) -> bool {
        match self {
            JsonType::String => value.is_string(),
            JsonType::Number => value.is_number(),
            JsonType::Integer => value.is_i64() || value.is_u64(),
            JsonType::Boolean => value.is_boolean(),
            JsonType::Object => value.is_object(),
            JsonType::Array => value.is_array(),
            JsonType::Null => value.is_null(),
        }
    }
}

/// One operator of a condition.
#[derive(Debug, Clone)]
pub enum Op {
    /// The value equals this JSON value (numbers compared as numbers).
    Equals(Value),
    /// The value equals one of these.
    OneOf(Vec<Value>),
    /// A string matching a glob (`*` within a `/` segment, `**` across).
    Glob(GlobMatcher),
    /// A string starting with this.
    Prefix(String),
    /// A string the regular expression finds a match in (`regex` crate:
    /// linear time; anchor with `^…$` for a whole match).
    Regex(regex::Regex),
    /// A number at least this.
    Min(f64),
    /// A number at most this.
    Max(f64),
    /// A string of at most this many characters, or an array of at most
    /// this many elements.
    MaxLength(usize),
    /// A value of this JSON type.
    Type(JsonType),
    /// `true`: the value is there; `false`: it is absent.
    Present(bool),
}

/// A condition on the value at a JSON pointer into the arguments.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The JSON pointer (`/path`, `/options/recursive`, `/files/0`).
    pub pointer: String,
    /// The operator.
    pub op: Op,
    /// `not_…`: holds when the value is there, of the operator's type, and
    /// does not satisfy it.
    pub negated: bool,
}

fn numbers_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

impl Condition {
    /// Whether the condition holds for `arguments`.
    pub fn holds(&self, arguments: &Value) -> bool {
        let value = arguments.pointer(&self.pointer);
        if let Op::Present(present) = self.op {
            return value.is_some() == (present != self.negated);
        }
        let Some(value) = value else {
            return false;
        };
        // `None`: the operator does not apply to this type (false either way).
        let verdict = match &self.op {
            Op::Equals(expected) => Some(numbers_equal(value, expected)),
            Op::OneOf(list) => Some(list.iter().any(|e| numbers_equal(value, e))),
            Op::Glob(glob) => value.as_str().map(|s| glob.is_match(s)),
            Op::Prefix(prefix) => value.as_str().map(|s| s.starts_with(prefix.as_str())),
            Op::Regex(re) => value.as_str().map(|s| re.is_match(s)),
            Op::Min(min) => value.as_f64().map(|n| n >= *min),
            Op::Max(max) => value.as_f64().map(|n| n <= *max),
            Op::MaxLength(max) => match value {
                Value::String(s) => Some(s.chars().count() <= *max),
                Value::Array(a) => Some(a.len() <= *max),
                _ => None,
            },
            Op::Type(t) => Some(t.holds(value)),
            Op::Present(_) => None,
        };
        verdict.is_some_and(|v| v != self.negated)
    }

    /// The top-level argument this condition names, if any.
    fn first_key(&self) -> Option<String> {
        let rest = self.pointer.strip_prefix('/')?;
        let first = rest.split('/').next()?;
        Some(first.replace("~1", "/").replace("~0", "~"))
    }
}

/// Names a rule matches: globs over tool names, resource URIs or prompt names.
#[derive(Debug, Clone)]
pub struct Names(pub globset::GlobSet);

/// One MCP allow or deny rule.
#[derive(Debug, Clone)]
pub struct McpRule {
    /// Names the rule in records.
    pub id: Arc<str>,
    /// Allow or deny.
    pub effect: Effect,
    /// What it names.
    pub kind: Kind,
    /// The names it matches.
    pub names: Names,
    /// Conditions on the arguments, all of which must hold.
    pub conditions: Vec<Condition>,
    /// Whether arguments no condition names may be sent (allow rules).
    pub other_arguments: bool,
    /// The most argument bytes (compact JSON) the rule accepts.
    pub max_argument_bytes: Option<usize>,
    /// Each agent's rate limit on calls this rule allows.
    pub rate: Option<Rate>,
    /// `report`: the rule's refusals are recorded, not enforced.
    pub mode: Mode,
}

impl McpRule {
    fn is_unconditional(&self) -> bool {
        self.conditions.is_empty() && self.max_argument_bytes.is_none() && self.other_arguments
    }

    /// Whether the arguments satisfy the rule's conditions and limits.
    fn arguments_pass(&self, call: &McpCall<'_>) -> bool {
        if self
            .max_argument_bytes
            .is_some_and(|max| call.arguments_size > max)
        {
            return false;
        }
        let empty = Value::Object(serde_json::Map::new());
        let arguments = call.arguments.unwrap_or(&empty);
        if !self.other_arguments {
            let named: Vec<String> = self
                .conditions
                .iter()
                .filter_map(Condition::first_key)
                .collect();
            let all_named = match arguments {
                Value::Object(map) => map.keys().all(|k| named.iter().any(|n| n == k)),
                _ => false,
            };
            if !all_named {
                return false;
            }
        }
        self.conditions.iter().all(|c| c.holds(arguments))
    }
}

/// Whether first-seen tool definitions are pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinMode {
    /// The first definition seen of each tool is pinned for the life of the
    /// process (policy pins take precedence).
    FirstUse,
    /// Only policy pins.
    Off,
}

/// The MCP rules of one scope.
#[derive(Debug, Clone)]
pub struct McpRules {
    /// The MCP endpoint's path, relative to the scope's upstream base path.
    pub endpoint: String,
    /// Every rule; deny rules first.
    pub rules: Vec<McpRule>,
    /// The most argument bytes any `tools/call` may carry.
    pub max_argument_bytes: Option<usize>,
    /// Pinning of first-seen definitions.
    pub pin_mode: PinMode,
    /// Definition hashes pinned in policy, by tool name.
    pub pins: HashMap<String, String>,
    /// What results are inspected for (`[scope.mcp.results]`).
    pub results: std::sync::Arc<super::results::ResultRules>,
}

/// An MCP message as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct McpCall<'a> {
    /// The JSON-RPC method (`tools/call`), or for a message that is no
    /// request, what it is (`response`).
    pub method: &'a str,
    /// The tool name, resource URI or prompt name.
    pub name: Option<&'a str>,
    /// The tool's arguments.
    pub arguments: Option<&'a Value>,
    /// Their size as compact JSON.
    pub arguments_size: usize,
    /// The hash of the tool's definition as last seen from the server.
    pub definition: Option<&'a str>,
    /// The hash pinned on first use, if any.
    pub first_pin: Option<&'a str>,
}

/// The outcome of [`decide_mcp`]: the verdict, the rule, and what report
/// mode hid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpVerdict {
    /// Allow or deny.
    pub effect: Effect,
    /// Why.
    pub reason: Reason,
    /// The deciding rule.
    pub rule: Option<Arc<str>>,
    /// A refusal a report-mode rule did not enforce.
    pub would_deny: Option<Reason>,
}

impl McpVerdict {
    fn new(effect: Effect, reason: Reason, rule: Option<&McpRule>) -> McpVerdict {
        McpVerdict {
            effect,
            reason,
            rule: rule.map(|r| Arc::clone(&r.id)),
            would_deny: None,
        }
    }
}

/// The rule kind a method is decided by, if any.
pub fn kind_of(method: &str) -> Option<Kind> {
    match method {
        "tools/call" => Some(Kind::Tool),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some(Kind::Resource),
        "prompts/get" => Some(Kind::Prompt),
        _ => None,
    }
}

impl McpRules {
    /// The pin a tool's definition must match: policy's, else the first use.
    pub fn pin_for<'a>(&'a self, tool: &str, first_pin: Option<&'a str>) -> Option<&'a str> {
        match self.pins.get(tool) {
            Some(pin) => Some(pin.as_str()),
            None if self.pin_mode == PinMode::FirstUse => first_pin,
            None => None,
        }
    }

    /// Whether a tool is listed to agents of this scope: some allow rule
    /// names it, no unconditional enforced deny rule does, and its
    /// definition matches its pin.
    pub fn visible(&self, tool: &str, definition: &str, first_pin: Option<&str>) -> bool {
        let named = |r: &&McpRule| r.kind == Kind::Tool && r.names.0.is_match(tool);
        let denied =
            self.rules.iter().filter(named).any(|r| {
                r.effect == Effect::Deny && r.mode == Mode::Enforce && r.is_unconditional()
            });
        let allowed = self
            .rules
            .iter()
            .filter(named)
            .any(|r| r.effect == Effect::Allow);
        let pinned = self
            .pin_for(tool, first_pin)
            .is_none_or(|pin| pin == definition);
        allowed && !denied && pinned
    }

    /// Whether a prompt (by name) or a resource or resource template (by
    /// URI, normalised) is listed to agents of this scope: some allow rule
    /// names it and no unconditional enforced deny rule does.
    pub fn listed(&self, kind: Kind, name: &str) -> bool {
        let normal;
        let name = match kind {
            Kind::Resource => match super::uri::normalise(name) {
                Ok(uri) => {
                    normal = uri;
                    normal.as_str()
                }
                Err(_) => return false,
            },
            Kind::Tool | Kind::Prompt => name,
        };
        let named = |r: &&McpRule| r.kind == kind && r.names.0.is_match(name);
        let denied =
            self.rules.iter().filter(named).any(|r| {
                r.effect == Effect::Deny && r.mode == Mode::Enforce && r.is_unconditional()
            });
        let allowed = self
            .rules
            .iter()
            .filter(named)
            .any(|r| r.effect == Effect::Allow);
        allowed && !denied
    }

    /// `subscriptions/listen` (2026-07-28): each resource URI it subscribes
    /// to (`params.notifications.resourceSubscriptions`, passed in as the
    /// arguments) is decided as `resources/subscribe` would be; the first
    /// refusal refuses the whole stream.
    fn decide_listen(&self, call: &McpCall<'_>) -> McpVerdict {
        let Some(uris) = call.arguments else {
            return McpVerdict::new(Effect::Allow, Reason::Allowed, None);
        };
        let Some(uris) = uris.as_array() else {
            return McpVerdict::new(Effect::Deny, Reason::MalformedRequest, None);
        };
        let mut verdict = McpVerdict::new(Effect::Allow, Reason::Allowed, None);
        for uri in uris {
            let Some(uri) = uri.as_str() else {
                return McpVerdict::new(Effect::Deny, Reason::MalformedRequest, None);
            };
            let one = self.decide(&McpCall {
                method: "resources/subscribe",
                name: Some(uri),
                arguments: None,
                arguments_size: 0,
                definition: None,
                first_pin: None,
            });
            if one.effect == Effect::Deny {
                return one;
            }
            if verdict.rule.is_none() || one.would_deny.is_some() {
                verdict = one;
            }
        }
        verdict
    }

    /// Whether the decision on a `tools/call` of `tool` may depend on its
    /// arguments (a condition, a size limit, a closed argument list): then
    /// a record, which keeps only their digest, cannot be re-decided.
    pub fn depends_on_arguments(&self, tool: &str) -> bool {
        self.max_argument_bytes.is_some()
            || self
                .rules
                .iter()
                .any(|r| r.kind == Kind::Tool && r.names.0.is_match(tool) && !r.is_unconditional())
    }

    /// The rate limit of the rule with this id.
    pub fn rate_of(&self, rule: &str) -> Option<Rate> {
        self.rules
            .iter()
            .find(|r| &*r.id == rule)
            .and_then(|r| r.rate)
    }

    /// Decides one MCP message: pure, total, deny by default for the
    /// methods rules govern, allow for the protocol's other methods.
    pub fn decide(&self, call: &McpCall<'_>) -> McpVerdict {
        let Some(kind) = kind_of(call.method) else {
            if call.method == "subscriptions/listen" {
                return self.decide_listen(call);
            }
            return McpVerdict::new(Effect::Allow, Reason::Allowed, None);
        };
        let Some(name) = call.name else {
            return McpVerdict::new(Effect::Deny, Reason::MalformedRequest, None);
        };
        // Rules meet one spelling of a URI; one with a dot segment, none.
        let normal;
        let name = if kind == Kind::Resource {
            match super::uri::normalise(name) {
                Ok(uri) => {
                    normal = uri;
                    normal.as_str()
                }
                Err(_) => return McpVerdict::new(Effect::Deny, Reason::ResourceUriRefused, None),
            }
        } else {
            name
        };
        let mut would_deny = None;
        let named = |r: &&McpRule| r.kind == kind && r.names.0.is_match(name);
        for rule in self
            .rules
            .iter()
            .filter(named)
            .filter(|r| r.effect == Effect::Deny)
        {
            if rule.arguments_pass(call) {
                if rule.mode == Mode::Enforce {
                    return McpVerdict::new(Effect::Deny, Reason::DeniedByRule, Some(rule));
                }
                would_deny.get_or_insert((Reason::DeniedByRule, Arc::clone(&rule.id)));
            }
        }
        if kind == Kind::Tool {
            if self
                .max_argument_bytes
                .is_some_and(|max| call.arguments_size > max)
            {
                return McpVerdict::new(Effect::Deny, Reason::ToolArgumentsRefused, None);
            }
            if let Some(pin) = self.pin_for(name, call.first_pin) {
                match call.definition {
                    None => {
                        return McpVerdict::new(
                            Effect::Deny,
                            Reason::ToolDefinitionUnverified,
                            None,
                        );
                    }
                    Some(seen) if seen != pin => {
                        return McpVerdict::new(Effect::Deny, Reason::ToolDefinitionChanged, None);
                    }
                    Some(_) => {}
                }
            }
        }
        let mut refused_by: Option<&McpRule> = None;
        for rule in self
            .rules
            .iter()
            .filter(named)
            .filter(|r| r.effect == Effect::Allow)
        {
            if rule.arguments_pass(call) {
                let mut verdict = McpVerdict::new(Effect::Allow, Reason::Allowed, Some(rule));
                if let Some((reason, id)) = would_deny {
                    verdict.would_deny = Some(reason);
                    verdict.rule = Some(id);
                }
                return verdict;
            }
            refused_by.get_or_insert(rule);
        }
        match refused_by {
            Some(rule) if rule.mode == Mode::Report => McpVerdict {
                effect: Effect::Allow,
                reason: Reason::Allowed,
                rule: Some(Arc::clone(&rule.id)),
                would_deny: Some(Reason::ToolArgumentsRefused),
            },
            Some(rule) => McpVerdict::new(Effect::Deny, Reason::ToolArgumentsRefused, Some(rule)),
            None => McpVerdict::new(Effect::Deny, Reason::NoMatchingRule, None),
        }
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
