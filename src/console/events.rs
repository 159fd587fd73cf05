//! What happened, in order: the event timeline (reloads, overrides created,
//! lifted and lapsed, exception lapses, certificate reloads, archives and
//! prunes), the filtered decisions with their outcomes beside them, and one
//! call's every recorded field. Records carry attacker-chosen text (paths,
//! hosts, reasons typed by an admin): every value is escaped, and links are
//! built from URL-encoded ids.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::api::Lines;
use super::filters::Filters;
use super::{enc, esc, s};

/// The record kinds the timeline shows: everything that is not a call.
pub(super) const TIMELINE_KINDS: &str =
    "policy,override,exception,approval,certs,archive,prune,summary";

/// The `/v1/audit` query of the timeline within the filters' time range.
pub(super) fn timeline_query(f: &Filters) -> String {
    let mut q = format!("/v1/audit?limit=100&kind={}", enc(TIMELINE_KINDS));
    q.push_str(&f.time_query());
    q
}

/// The `/v1/audit` query of the filtered calls (decisions and outcomes).
pub(super) fn calls_query(f: &Filters) -> String {
    format!("/v1/audit?limit=300{}", f.query())
}

/// The timeline, newest first.
pub(super) fn timeline_section(o: &mut String, events: &Lines) {
    let records = match events {
        Ok(r) => r,
        Err(e) => {
            let _ = write!(o, "<p class=bad>{}</p>", esc(e));
            return;
        }
    };
    if records.is_empty() {
        o.push_str("<p id=no-events>no events in the window</p>");
        return;
    }
    o.push_str("<table><tr><th>time</th><th>event</th><th>about</th><th>detail</th></tr>");
    for r in records.iter().rev() {
        let event = match (r["kind"].as_str(), s(&r["detail"])) {
            (Some("override"), d) if d.starts_with("created") => "override created".to_owned(),
            (Some("override"), d) if d.starts_with("removed") => "override lifted".to_owned(),
            (Some("override"), d) if d.starts_with("lapsed") => "override lapsed".to_owned(),
            (Some("exception"), _) => "exception lapsed".to_owned(),
            (Some("policy"), _) => format!("policy: {}", s(&r["reason"])),
            (_, _) => format!("{}: {}", s(&r["kind"]), s(&r["reason"])),
        };
        let about = ["exception", "agent", "scope", "policy_digest"]
            .iter()
            .find_map(|k| r[*k].as_str())
            .unwrap_or("-");
        let _ = write!(
            o,
            "<tr class=event><td>{}</td><td class=what>{}</td><td>{}</td><td class=detail>{}</td></tr>",
            esc(&s(&r["ts"])),
            esc(&event),
            esc(about),
            esc(&s(&r["detail"]))
        );
    }
    o.push_str("</table>");
}

/// The filtered decisions, newest first, each with its outcome and a link
/// to every field of both.
pub(super) fn calls_section(o: &mut String, calls: &Lines) {
    let records = match calls {
        Ok(r) => r,
        Err(e) => {
            let _ = write!(o, "<p class=bad>{}</p>", esc(e));
            return;
        }
    };
    let outcomes: HashMap<&str, &serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "outcome")
        .filter_map(|r| Some((r["request_id"].as_str()?, r)))
        .collect();
    o.push_str(
        "<table><tr><th>time</th><th>agent</th><th>scope</th><th>source</th><th>method</th>\
         <th>host</th><th>path</th><th>decision</th><th>reason</th><th>outcome</th><th></th></tr>",
    );
    for r in records.iter().rev().filter(|r| r["kind"] == "decision") {
        let id = r["request_id"].as_str().unwrap_or_default();
        let allowed = r["decision"] == "allow";
        let outcome = outcomes.get(id).map_or_else(
            || {
                if allowed {
                    ("-".to_owned(), "")
                } else {
                    (String::new(), "")
                }
            },
            |out| {
                let status = out["status"].as_i64();
                let failed = status.is_some_and(|st| st >= 500);
                let mut text = status.map_or_else(|| "-".to_owned(), |st| st.to_string());
                if failed {
                    text.push_str(" failed upstream");
                }
                if out["reason"] != r["reason"] {
                    let _ = write!(text, " ({})", s(&out["reason"]));
                }
                (text, if failed { "bad" } else { "ok" })
            },
        );
        let _ = write!(
            o,
            "<tr class=decision><td>{}</td><td class=agent>{}</td><td class=scope>{}</td><td class=source>{}</td>\
             <td>{}</td><td>{}</td><td class=path>{}</td><td class={}>{}</td><td>{}</td><td class=\"outcome {}\">{}</td>\
             <td><a class=drill href=\"/record?id={}\">record</a></td></tr>",
            esc(&s(&r["ts"])),
            esc(&s(&r["agent"])),
            esc(&s(&r["scope"])),
            esc(&s(&r["client_addr"])),
            esc(&s(&r["method"])),
            esc(&s(&r["host"])),
            esc(&s(&r["path"])),
            if allowed { "ok" } else { "bad" },
            esc(&s(&r["decision"])),
            esc(&s(&r["reason"])),
            outcome.1,
            esc(&outcome.0),
            esc(&enc(id))
        );
    }
    o.push_str("</table>");
}

/// One call: every field of its decision and outcome records (or of
/// whatever records carry the id), in the order the log holds them.
pub(super) fn record_section(o: &mut String, id: &str, found: &Lines) {
    let records = match found {
        Ok(r) => r,
        Err(e) => {
            let _ = write!(o, "<p class=bad>{}</p>", esc(e));
            return;
        }
    };
    if records.is_empty() {
        let _ = write!(
            o,
            "<p class=bad id=no-record>no record with request id <code>{}</code> (pruned, or never written)</p>",
            esc(id)
        );
        return;
    }
    let allowed = records
        .iter()
        .any(|r| r["kind"] == "decision" && r["decision"] == "allow");
    if allowed && !records.iter().any(|r| r["kind"] == "outcome") {
        o.push_str("<p class=notice>allowed, and no outcome record yet (the call may still be running)</p>");
    }
    for r in records {
        let _ = write!(
            o,
            "<section class=record><h2>{} record, seq {}</h2><table class=fields>",
            esc(&s(&r["kind"])),
            esc(&s(&r["seq"]))
        );
        if let Some(fields) = r.as_object() {
            for (k, v) in fields {
                let _ = write!(
                    o,
                    "<tr><th>{}</th><td class=\"field-{}\">{}</td></tr>",
                    esc(k),
                    esc(k),
                    esc(&s(v))
                );
            }
        }
        o.push_str("</table></section>");
    }
}
