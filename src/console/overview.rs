//! The overview: the answers an on-call engineer wants at a glance (the
//! chain, drift and its cause, calls and refusals, findings, what is in
//! force and when it lapses). Every value is escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::api::{Answer, Lines};
use super::{esc, s};

/// Whether the chain verifies, with its head.
pub(super) fn chain_section(o: &mut String, verify: &Answer) {
    match &verify {
        Ok(v) if v["intact"] == true => {
            let _ = write!(
                o,
                "<p><span class=ok id=chain-status>intact</span> {} records, head <code>{}</code>{}</p>",
                esc(&s(&v["records"])),
                esc(&s(&v["head"])),
                v["pruned_anchor"]
                    .as_str()
                    .map(|a| format!(", pruned up to <code>{}</code>", esc(a)))
                    .unwrap_or_default()
            );
        }
        Ok(v) => {
            let _ = write!(
                o,
                "<p><span class=bad id=chain-status>BROKEN</span> {}</p>",
                esc(&s(&v["error"]))
            );
        }
        Err(e) => {
            let _ = write!(
                o,
                "<p><span class=bad id=chain-status>unknown</span> {}</p>",
                esc(e)
            );
        }
    }
}

/// Whether the policy in force is the files' (drift).
pub(super) fn policy_section(o: &mut String, status: &Answer) {
    match &status {
        Ok(st) => {
            let in_sync = st["in_sync"] == true;
            let _ = write!(
                o,
                "<p><span class={} id=drift-status>{}</span> in force <code>{}</code>, valid: {}</p>",
                if in_sync { "ok" } else { "bad" },
                if in_sync { "in sync" } else { "DRIFTED" },
                esc(&s(&st["in_force"])),
                esc(&s(&st["valid"]))
            );
            // The cause in words, one line each (what `policy status` says).
            let causes: Vec<&serde_json::Value> =
                st["drift"].as_array().into_iter().flatten().collect();
            if !causes.is_empty() {
                o.push_str("<ul id=drift-cause>");
                for c in causes {
                    let _ = write!(o, "<li>{}</li>", esc(&s(c)));
                }
                o.push_str("</ul>");
            }
        }
        Err(e) => {
            let _ = write!(o, "<p class=bad id=drift-status>unknown: {}</p>", esc(e));
        }
    }
}

/// Calls over the last hour, per five minutes, by decision.
pub(super) fn calls_section(o: &mut String, hour: &Lines) {
    match &hour {
        Ok(records) => {
            let mut buckets: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
            let failed = failed_ids(records);
            for r in records.iter().filter(|r| r["kind"] == "decision") {
                let ts = r["ts"].as_str().unwrap_or_default();
                // `YYYY-MM-DDTHH:MM`: the minute floored to five.
                let Some(minute) = ts.get(14..16).and_then(|m| m.parse::<u32>().ok()) else {
                    continue;
                };
                let key = format!(
                    "{}{:02}",
                    ts.get(11..14).unwrap_or_default(),
                    minute / 5 * 5
                );
                let e = buckets.entry(key).or_default();
                if r["decision"] == "allow" {
                    e.0 += 1;
                    if r["request_id"]
                        .as_str()
                        .is_some_and(|id| failed.contains(id))
                    {
                        e.2 += 1;
                    }
                } else {
                    e.1 += 1;
                }
            }
            let max = buckets
                .values()
                .map(|(a, d, _)| a + d)
                .max()
                .unwrap_or(1)
                .max(1);
            o.push_str(
                "<table><tr><th>from (UTC)</th><th>allowed</th><th>refused</th><th>allowed, failed upstream</th><th></th></tr>",
            );
            for (k, (a, d, f)) in &buckets {
                let _ = write!(
                    o,
                    "<tr class=bucket><td>{}</td><td class=allowed>{a}</td><td class=refused>{d}</td><td class=failed>{f}</td>\
                     <td><span class='bar allow' style='width:{}px'></span><span class='bar deny' style='width:{}px'></span></td></tr>",
                    esc(k),
                    a * 300 / max,
                    d * 300 / max
                );
            }
            o.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(o, "<p class=bad>{}</p>", esc(e));
        }
    }
}

/// The top refusal reasons of the last 24 hours.
pub(super) fn reasons_section(o: &mut String, stats: &Answer) {
    match &stats {
        Ok(st) => {
            o.push_str("<table><tr><th>reason</th><th>calls</th></tr>");
            for pair in st["top_refusal_reasons"].as_array().into_iter().flatten() {
                let _ = write!(
                    o,
                    "<tr class=reason><td>{}</td><td>{}</td></tr>",
                    esc(&s(&pair[0])),
                    esc(&s(&pair[1]))
                );
            }
            let _ = write!(
                o,
                "</table><p id=totals>allowed {} (of which failed upstream {}), refused {}, would-deny {}</p>",
                esc(&s(&st["total"]["allowed"])),
                esc(&s(&st["total"]["failed_upstream"])),
                esc(&s(&st["total"]["refused"])),
                esc(&s(&st["total"]["would_deny"]))
            );
        }
        Err(e) => {
            let _ = write!(o, "<p class=bad>{}</p>", esc(e));
        }
    }
}

/// Overrides and exceptions in force, with time left.
pub(super) fn lapses_section(o: &mut String, status: &Answer) {
    if let Ok(st) = &status {
        let left = |v: &serde_json::Value| {
            humantime::format_duration(std::time::Duration::from_secs(
                v["expires_in_seconds"].as_u64().unwrap_or(0),
            ))
            .to_string()
        };
        for ov in st["overrides"].as_array().into_iter().flatten() {
            let _ = write!(
                o,
                "<tr class=override><td>override {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s(&ov["kind"])),
                esc(&s(&ov["id"])),
                esc(&s(&ov["target"])),
                esc(&left(ov))
            );
        }
        for ex in st["exceptions"].as_array().into_iter().flatten() {
            let _ = write!(
                o,
                "<tr class=exception><td>exception</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s(&ex["id"])),
                esc(&s(&ex["agent"])),
                esc(&left(ex))
            );
        }
    }
}

/// The request ids of outcome records with a status of 500 or more: allowed
/// calls that failed all the same.
pub(super) fn failed_ids(records: &[serde_json::Value]) -> std::collections::HashSet<&str> {
    records
        .iter()
        .filter(|r| r["kind"] == "outcome" && r["status"].as_i64().is_some_and(|s| s >= 500))
        .filter_map(|r| r["request_id"].as_str())
        .collect()
}

/// The findings of the window (the log's, and lapses and drift).
pub(super) fn findings_section(o: &mut String, found: &Answer) {
    match found {
        Ok(v) => {
            let list: Vec<&serde_json::Value> = v.as_array().into_iter().flatten().collect();
            if list.is_empty() {
                o.push_str("<p id=no-findings>none</p>");
                return;
            }
            o.push_str("<table><tr><th>kind</th><th>subject</th><th>detail</th></tr>");
            for f in list {
                let _ = write!(
                    o,
                    "<tr class=finding><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&s(&f["kind"])),
                    esc(&s(&f["subject"])),
                    esc(&s(&f["detail"]))
                );
            }
            o.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(o, "<p class=bad>{}</p>", esc(e));
        }
    }
}

/// A notice when the window reaches past pruned history (the stats'
/// `covers_from`).
pub(super) fn pruned_notice(o: &mut String, stats: &[&Answer]) {
    let from = stats
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .filter_map(|st| st["covers_from"].as_str())
        .max();
    if let Some(from) = from {
        let _ = write!(
            o,
            "<p class=notice id=pruned>{}</p>",
            esc(&crate::audit::stats::pruned_notice(from))
        );
    }
}
