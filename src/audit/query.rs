//! Reading the decision log: filters, and the table, JSON-lines and CSV forms.
//! Queries open the database read-only and never block the writer.

use std::io::{self, Write};
use std::path::Path;

use rusqlite::types::Value;

use super::chain::{COLUMNS, from_row, open_read_only};
use super::timeline;
use super::{AuditError, DecisionRecord};

/// Which records to return. Every field narrows; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exact agent name.
    pub agent: Option<String>,
    /// Exact scope name.
    pub scope: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    /// A reason code.
    pub reason: Option<String>,
    /// Exact host.
    pub host: Option<String>,
    /// The call whose span has this W3C trace id (32 hex digits).
    pub trace_id: Option<String>,
    /// Only report-mode records that enforce mode would have refused.
    pub would_deny: bool,
    /// Records at or after this RFC 3339 UTC time.
    pub since: Option<String>,
    /// Records before this RFC 3339 UTC time.
    pub until: Option<String>,
    /// At most this many records: the most recent ones, oldest first.
    pub limit: Option<u64>,
    /// The peer's address without its port (`10.0.0.9`, `::1`).
    pub source: Option<String>,
    /// Exact request id: a call's decision and outcome records.
    pub request_id: Option<String>,
    /// Record kinds (`override`, `policy`, …); empty means any.
    pub kinds: Vec<String>,
}

impl Filter {
    /// The three values a `source` filter compares `client_addr` with: the
    /// address alone, and the prefixes of it with a port (`a:`, `[a]:`).
    pub fn source_forms(&self) -> Option<[String; 3]> {
        self.source
            .as_ref()
            .map(|s| [s.clone(), format!("{s}:"), format!("[{s}]:")])
    }
}

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line.
    Json,
    /// RFC 4180 CSV with a header row.
    Csv,
}

/// Returns the records that pass `filter`, oldest first.
pub fn query(path: &Path, filter: &Filter) -> Result<Vec<DecisionRecord>, AuditError> {
    let conn = open_read_only(path)?;
    // One snapshot for the time search and the read: the writer may append
    // meanwhile.
    let snapshot = conn.unchecked_transaction()?;
    let mut clauses = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let mut eq = |column: &str, value: &Option<String>| {
        if let Some(v) = value {
            clauses.push(format!("{column} = ?"));
            args.push(Value::Text(v.clone()));
        }
    };
    eq("agent", &filter.agent);
    eq("scope", &filter.scope);
    eq("decision", &filter.decision);
    eq("reason", &filter.reason);
    eq("host", &filter.host);
    eq("trace_id", &filter.trace_id);
    eq("request_id", &filter.request_id);
    if !filter.kinds.is_empty() {
        let marks = vec!["?"; filter.kinds.len()].join(", ");
        clauses.push(format!("kind IN ({marks})"));
        args.extend(filter.kinds.iter().cloned().map(Value::Text));
    }
    if let Some([bare, v4, v6]) = filter.source_forms() {
        // Prefixes compared as text, not LIKE patterns: the value is input.
        clauses.push(
            "(client_addr = ? OR substr(client_addr, 1, length(?)) = ? \
             OR substr(client_addr, 1, length(?)) = ?)"
                .into(),
        );
        for v in [bare, v4.clone(), v4, v6.clone(), v6] {
            args.push(Value::Text(v));
        }
    }
    if filter.would_deny {
        clauses.push("would_deny IS NOT NULL".into());
    }
    if timeline::is_time_ordered(&snapshot)? {
        // Times do not go backwards along positions: a time range is a
        // range of positions, found by binary search.
        if let Some(since) = &filter.since {
            match timeline::first_at_or_after(&snapshot, since)? {
                Some(first) => {
                    clauses.push("seq >= ?".into());
                    args.push(Value::Integer(first));
                }
                None => return Ok(Vec::new()),
            }
        }
        if let Some(until) = &filter.until
            && let Some(cut) = timeline::first_at_or_after(&snapshot, until)?
        {
            clauses.push("seq < ?".into());
            args.push(Value::Integer(cut));
        }
    } else {
        if let Some(since) = &filter.since {
            clauses.push("ts >= ?".into());
            args.push(Value::Text(since.clone()));
        }
        if let Some(until) = &filter.until {
            clauses.push("ts < ?".into());
            args.push(Value::Text(until.clone()));
        }
    }
    let mut sql = format!("SELECT {COLUMNS} FROM records");
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(" ORDER BY seq DESC");
    if let Some(limit) = filter.limit {
        sql.push_str(" LIMIT ?");
        args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    }
    let mut stmt = snapshot.prepare(&sql)?;
    let mut records = stmt
        .query_map(rusqlite::params_from_iter(args), from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    records.reverse();
    Ok(records)
}

/// The time of the oldest record left in a pruned log (one with a `prune`
/// record), `None` for a log never pruned: a window that starts before it
/// is not complete. Reads two rows, whatever the size of the log.
pub fn retained_from(path: &Path) -> Result<Option<String>, AuditError> {
    use rusqlite::OptionalExtension as _;
    let conn = open_read_only(path)?;
    let snapshot = conn.unchecked_transaction()?;
    let pruned: Option<i64> = snapshot
        .query_row(
            "SELECT seq FROM records WHERE kind = ?1 ORDER BY seq DESC LIMIT 1",
            [super::kind::PRUNE],
            |row| row.get(0),
        )
        .optional()?;
    if pruned.is_none() {
        return Ok(None);
    }
    Ok(snapshot
        .query_row("SELECT ts FROM records ORDER BY seq LIMIT 1", [], |row| {
            row.get(0)
        })
        .optional()?)
}

/// Calls `visit` with each decision record at or after `since` (RFC 3339
/// UTC), oldest first, one row at a time: memory stays bounded whatever the
/// size of the log. Answers how many records were visited.
pub fn for_each_decision(
    path: &Path,
    since: Option<&str>,
    mut visit: impl FnMut(DecisionRecord),
) -> Result<u64, AuditError> {
    let conn = open_read_only(path)?;
    let snapshot = conn.unchecked_transaction()?;
    let mut sql = format!("SELECT {COLUMNS} FROM records WHERE kind = 'decision'");
    let mut args: Vec<Value> = Vec::new();
    if let Some(since) = since {
        if timeline::is_time_ordered(&snapshot)? {
            match timeline::first_at_or_after(&snapshot, since)? {
                Some(first) => {
                    sql.push_str(" AND seq >= ?");
                    args.push(Value::Integer(first));
                }
                None => return Ok(0),
            }
        } else {
            sql.push_str(" AND ts >= ?");
            args.push(Value::Text(since.to_owned()));
        }
    }
    sql.push_str(" ORDER BY seq");
    let mut stmt = snapshot.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut count = 0;
    while let Some(row) = rows.next()? {
        visit(from_row(row)?);
        count += 1;
    }
    Ok(count)
}

const TABLE_COLUMNS: [&str; 11] = [
    "seq", "time", "kind", "agent", "method", "host", "path", "scope", "decision", "reason",
    "status",
];

fn table_cells(r: &DecisionRecord) -> [String; 11] {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let reason = match (&r.would_deny, r.mode.as_deref(), &r.detail) {
        (Some(would), _, _) => format!("{} (would deny: {would})", r.reason),
        // A rejected handshake has nothing else to show: say why.
        (None, Some("tls"), Some(detail)) => format!("{} ({detail})", r.reason),
        _ => r.reason.clone(),
    };
    let path = match &r.mcp {
        Some(m) => format!(
            "{} {}{}",
            opt(&r.path),
            m.method,
            m.name
                .as_deref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default()
        ),
        None => opt(&r.path),
    };
    let host = match (r.mode.as_deref(), &r.client_addr) {
        (Some("tls"), Some(addr)) => format!("(from {addr})"),
        _ => opt(&r.host),
    };
    [
        r.seq.to_string(),
        r.ts.clone(),
        r.kind.clone(),
        opt(&r.agent),
        opt(&r.method),
        host,
        path,
        opt(&r.scope),
        opt(&r.decision),
        reason,
        r.status.map_or_else(|| "-".into(), |s| s.to_string()),
    ]
}

/// Writes `records` to `out` in `format`.
pub fn render(records: &[DecisionRecord], format: Format, out: &mut dyn Write) -> io::Result<()> {
    match format {
        Format::Json => {
            for record in records {
                serde_json::to_writer(&mut *out, record)?;
                writeln!(out)?;
            }
        }
        Format::Csv => {
            let columns: Vec<&str> = COLUMNS.split(',').map(str::trim).collect();
            writeln!(out, "{}", columns.join(","))?;
            for record in records {
                let value = serde_json::to_value(record).unwrap_or_default();
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| match value.get(*c) {
                        None | Some(serde_json::Value::Null) => String::new(),
                        Some(serde_json::Value::String(s)) => csv_cell(s),
                        Some(other) => csv_cell(&other.to_string()),
                    })
                    .collect();
                writeln!(out, "{}", cells.join(","))?;
            }
        }
        Format::Table => {
            let rows: Vec<[String; 11]> = records.iter().map(table_cells).collect();
            let mut widths = TABLE_COLUMNS.map(str::len);
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let line = |cells: &[String]| {
                cells
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            let header: Vec<String> = TABLE_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
            writeln!(out, "{}", line(&header))?;
            for row in &rows {
                writeln!(out, "{}", line(row))?;
            }
        }
    }
    Ok(())
}

fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}
