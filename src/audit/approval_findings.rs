//! Findings about approvals, read from the log: grants outside office
//! hours (Monday to Friday, 08:00 to 18:00 UTC), grants by the person who
//! last changed the policy through the API (they could have written the ask
//! rule they then answered), and requests still pending close to expiry.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, Weekday};

use super::stats::Finding;
use super::{DecisionRecord, kind};

/// A pending request this close to its expiry is a finding.
pub const NEAR_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// The text after `marker` in `detail`, up to the next `;`.
fn field<'a>(detail: &'a str, marker: &str) -> Option<&'a str> {
    let start = detail.find(marker)? + marker.len();
    let rest = &detail[start..];
    Some(rest.split(';').next().unwrap_or(rest).trim())
}

fn off_hours(t: OffsetDateTime) -> bool {
    matches!(t.weekday(), Weekday::Saturday | Weekday::Sunday) || !(8..18).contains(&t.hour())
}

/// The approval findings among `records` (oldest first) at `now`.
pub fn findings(records: &[DecisionRecord], now: SystemTime) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut policy_author: Option<String> = None;
    let mut open: BTreeMap<String, (String, String)> = BTreeMap::new();
    for r in records {
        let detail = r.detail.as_deref().unwrap_or_default();
        if r.kind == kind::POLICY {
            if let Some(who) = field(detail, "on api by ") {
                policy_author = Some(who.to_owned());
            }
            continue;
        }
        if r.kind != kind::APPROVAL {
            continue;
        }
        let agent = r.agent.clone().unwrap_or_default();
        match r.reason.as_str() {
            "approval-requested" => {
                if let Some(expires) = field(detail, "expires ") {
                    open.insert(r.request_id.clone(), (expires.to_owned(), agent));
                }
            }
            "approval-granted" => {
                open.remove(&r.request_id);
                let by = field(detail, "; by ").unwrap_or("-").to_owned();
                if OffsetDateTime::parse(&r.ts, &Rfc3339).is_ok_and(off_hours) {
                    out.push(Finding {
                        kind: "approval-off-hours".into(),
                        subject: r.request_id.clone(),
                        detail: format!("granted by {by} at {} for agent {agent}", r.ts),
                        count: 1,
                    });
                }
                if policy_author.as_deref() == Some(by.as_str()) {
                    out.push(Finding {
                        kind: "approval-by-policy-author".into(),
                        subject: r.request_id.clone(),
                        detail: format!(
                            "granted by {by}, who also made the last policy change through the api"
                        ),
                        count: 1,
                    });
                }
            }
            _ => {
                open.remove(&r.request_id);
            }
        }
    }
    let now = OffsetDateTime::from(now);
    for (id, (expires, agent)) in open {
        let Ok(at) = OffsetDateTime::parse(&expires, &Rfc3339) else {
            continue;
        };
        let left = at - now;
        if left.is_positive() && left <= NEAR_EXPIRY {
            out.push(Finding {
                kind: "approval-expiring".into(),
                subject: id,
                detail: format!(
                    "pending for agent {agent}; expires in {} s",
                    left.whole_seconds()
                ),
                count: 1,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, id: &str, reason: &str, ts: &str, detail: &str) -> DecisionRecord {
        let mut r = DecisionRecord::new(kind, id);
        r.reason = reason.into();
        r.ts = ts.into();
        r.agent = Some("builder".into());
        r.detail = Some(detail.into());
        r
    }

    #[test]
    fn off_hours_grants_policy_authors_and_near_expiry_are_found() {
        let records = vec![
            record(
                "policy",
                "p",
                "policy-loaded",
                "2026-12-05T10:00:00.000Z",
                "digest x; on api by cn:carol",
            ),
            record(
                "approval",
                "a1",
                "approval-requested",
                "2026-12-05T10:01:00.000Z",
                "approval a1; expires 2026-12-05T10:16:00Z",
            ),
            // A Saturday, by the policy's author.
            record(
                "approval",
                "a1",
                "approval-granted",
                "2026-12-05T10:02:00.000Z",
                "approval a1; by cn:carol; call r",
            ),
            record(
                "approval",
                "a2",
                "approval-requested",
                "2026-12-07T10:00:00.000Z",
                "approval a2; expires 2026-12-07T10:15:00Z",
            ),
            record(
                "approval",
                "a3",
                "approval-requested",
                "2026-12-07T10:00:00.000Z",
                "approval a3; expires 2026-12-07T11:00:00Z",
            ),
            record(
                "approval",
                "a4",
                "approval-requested",
                "2026-12-07T10:00:00.000Z",
                "approval a4; expires 2026-12-07T10:12:00Z",
            ),
            record(
                "approval",
                "a4",
                "approval-denied",
                "2026-12-07T10:01:00.000Z",
                "approval a4; by cn:dave",
            ),
            // A Monday at noon, by someone else: no finding.
            record(
                "approval",
                "a5",
                "approval-requested",
                "2026-12-07T12:00:00.000Z",
                "approval a5; expires 2026-12-07T12:15:00Z",
            ),
            record(
                "approval",
                "a5",
                "approval-granted",
                "2026-12-07T12:01:00.000Z",
                "approval a5; by cn:dave",
            ),
        ];
        let now = OffsetDateTime::parse("2026-12-07T10:11:00Z", &Rfc3339).unwrap();
        let found = findings(&records, now.into());
        let kinds: Vec<(&str, &str)> = found
            .iter()
            .map(|f| (f.kind.as_str(), f.subject.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("approval-off-hours", "a1"),
                ("approval-by-policy-author", "a1"),
                ("approval-expiring", "a2"),
            ]
        );
    }
}
