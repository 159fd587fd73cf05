//! Tool-definition hashes and the pins they are held to.
//!
//! A tool's canonical definition is its `name`, `description`, `inputSchema`
//! and `annotations` (those present), written as JSON with sorted keys and
//! no whitespace; its hash is `sha256:<hex>` of that text. A server that
//! changes any of them under an agent (a "rug pull") changes the hash.
//!
//! Invariants:
//! - The first hash seen of a tool in a scope stays its first-use pin; later
//!   sightings never move it. With a store ([`super::pin_store`]) it
//!   outlives the process: every first or changed sighting is handed to it.
//! - The store is bounded: past [`MAX_TOOLS`] tools per store nothing new is
//!   pinned, and such tools have no first-use pin (policy pins still apply).

use dashmap::DashMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The most tools a store keeps.
pub const MAX_TOOLS: usize = 100_000;

/// The fields of a tool that its hash covers.
pub const HASHED_FIELDS: [&str; 4] = ["name", "description", "inputSchema", "annotations"];

/// Writes `value` as JSON with object keys sorted and no whitespace.
pub fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `sha256:<hex>` of a tool's canonical definition.
pub fn definition_hash(tool: &Value) -> String {
    // The hashed fields in sorted order, written as `canonical` would write
    // an object holding only them.
    let mut sorted = HASHED_FIELDS;
    sorted.sort_unstable();
    let mut text = String::from("{");
    for field in sorted {
        if let Some(v) = tool.get(field) {
            if text.len() > 1 {
                text.push(',');
            }
            text.push('"');
            text.push_str(field);
            text.push_str("\":");
            canonical(v, &mut text);
        }
    }
    text.push('}');
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// What a sighting of a tool's definition meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sighting {
    /// The first time this tool was seen: its hash is now pinned.
    First,
    /// The same definition as the last sighting.
    Same,
    /// A different definition from the last sighting.
    Changed {
        /// The hash seen before.
        before: String,
    },
}

/// The definitions seen per (scope, tool): the first (the pin) and the last.
#[derive(Debug, Default)]
pub struct PinStore {
    tools: DashMap<(String, String), (String, String)>,
    /// Where first and changed sightings are stored, when they are.
    sink: std::sync::OnceLock<std::sync::mpsc::Sender<super::pin_store::PinRow>>,
    /// The database the sink writes, for admin changes written in place.
    db: std::sync::OnceLock<std::path::PathBuf>,
}

impl PinStore {
    /// Takes the pins a store kept (at start, before any sighting).
    pub fn restore(&self, rows: Vec<super::pin_store::PinRow>) {
        for row in rows.into_iter().take(MAX_TOOLS) {
            self.tools
                .insert((row.scope, row.tool), (row.first, row.last));
        }
    }

    /// Hands every first or changed sighting from now on to `sink`, which
    /// writes the database at `db`.
    pub fn persist_to(
        &self,
        sink: std::sync::mpsc::Sender<super::pin_store::PinRow>,
        db: std::path::PathBuf,
    ) {
        let _ = self.sink.set(sink);
        let _ = self.db.set(db);
    }

    /// The database pins are kept in, when they are kept.
    pub fn db(&self) -> Option<&std::path::Path> {
        self.db.get().map(std::path::PathBuf::as_path)
    }

    /// Every pin, sorted by scope then tool.
    pub fn list(&self) -> Vec<super::pin_store::PinRow> {
        let mut rows: Vec<_> = self
            .tools
            .iter()
            .map(|e| super::pin_store::PinRow {
                scope: e.key().0.clone(),
                tool: e.key().1.clone(),
                first: e.value().0.clone(),
                last: e.value().1.clone(),
            })
            .collect();
        rows.sort_by(|a, b| (&a.scope, &a.tool).cmp(&(&b.scope, &b.tool)));
        rows
    }

    /// Pins `tool` in `scope` to `hash` (the first and last hash from now
    /// on), in memory; the store was written by the caller first.
    pub fn set(&self, scope: &str, tool: &str, hash: &str) {
        self.tools.insert(
            (scope.to_owned(), tool.to_owned()),
            (hash.to_owned(), hash.to_owned()),
        );
    }

    /// Drops the pin of `tool` in `scope` from memory: its next sighting
    /// pins afresh. Answers the pin dropped.
    pub fn forget(&self, scope: &str, tool: &str) -> Option<(String, String)> {
        self.tools
            .remove(&(scope.to_owned(), tool.to_owned()))
            .map(|(_, v)| v)
    }

    /// Records a sighting of `tool` in `scope` with `hash`.
    pub fn observe(&self, scope: &str, tool: &str, hash: &str) -> Sighting {
        let key = (scope.to_owned(), tool.to_owned());
        if let Some(mut entry) = self.tools.get_mut(&key) {
            let (first, last) = entry.value_mut();
            if last == hash {
                return Sighting::Same;
            }
            let before = std::mem::replace(last, hash.to_owned());
            let first = first.clone();
            drop(entry);
            self.store(scope, tool, first, hash);
            return Sighting::Changed { before };
        }
        if self.tools.len() >= MAX_TOOLS {
            return Sighting::Same;
        }
        self.tools.insert(key, (hash.to_owned(), hash.to_owned()));
        self.store(scope, tool, hash.to_owned(), hash);
        Sighting::First
    }

    fn store(&self, scope: &str, tool: &str, first: String, last: &str) {
        if let Some(sink) = self.sink.get() {
            let _ = sink.send(super::pin_store::PinRow {
                scope: scope.to_owned(),
                tool: tool.to_owned(),
                first,
                last: last.to_owned(),
            });
        }
    }

    /// The first-use pin and the last hash seen of `tool` in `scope`.
    pub fn get(&self, scope: &str, tool: &str) -> Option<(String, String)> {
        self.tools
            .get(&(scope.to_owned(), tool.to_owned()))
            .map(|e| e.value().clone())
    }
}

#[cfg(test)]
#[path = "pins_tests.rs"]
mod tests;
