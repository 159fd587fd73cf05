//! The auditor's views over the log: `/v1/audit/stats` and
//! `/v1/audit/findings` (the log's findings plus lapses and drift).

use std::collections::HashMap;
use std::time::SystemTime;

use http::{Response, StatusCode};

use super::{Admin, AdminBody, error, json, parse_time, status, status_of};
use crate::audit::Filter;

impl Admin {
    /// The records of a window, `since` (24 h by default) to now.
    async fn window(
        &self,
        query: &str,
        allowed: &[&str],
    ) -> Result<(Vec<crate::audit::DecisionRecord>, HashMap<String, String>), Response<AdminBody>>
    {
        let mut params = HashMap::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k != "since" && !allowed.contains(&k.as_ref()) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter `{k}`"),
                ));
            }
            params.insert(k.into_owned(), v.into_owned());
        }
        let since = parse_time(params.get("since").map_or("24h", String::as_str))
            .map_err(|e| error(StatusCode::BAD_REQUEST, &e))?;
        let filter = Filter {
            since: Some(since),
            limit: None,
            ..Filter::default()
        };
        match self.audit_source.query(&filter).await {
            Ok(records) => Ok((records, params)),
            Err(e) => {
                tracing::error!(error = %e, "audit query failed");
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the decision log cannot be read",
                ))
            }
        }
    }

    pub(super) async fn audit_stats(&self, query: &str) -> Response<AdminBody> {
        let (records, params) = match self.window(query, &["by"]).await {
            Ok(w) => w,
            Err(response) => return response,
        };
        let by = match params
            .get("by")
            .map(|b| b.parse::<crate::audit::stats::By>())
            .transpose()
        {
            Ok(by) => by,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let mut stats = crate::audit::stats::stats(&records, by);
        // The window's start, as `window` read it.
        let since =
            parse_time(params.get("since").map_or("24h", String::as_str)).unwrap_or_default();
        match self.audit_source.retained_from().await {
            Ok(from) => {
                stats.covers_from = crate::audit::stats::covers_from(&since, from.as_deref())
            }
            Err(e) => tracing::warn!(error = %e, "the decision log's oldest record cannot be read"),
        }
        json(
            StatusCode::OK,
            &serde_json::to_value(&stats).unwrap_or_default(),
        )
    }

    /// Findings of the log, and of the live state: what lapses within 24 h,
    /// and drift.
    pub(super) async fn audit_findings(&self, query: &str) -> Response<AdminBody> {
        let (records, params) = match self.window(query, &["recent", "burst"]).await {
            Ok(w) => w,
            Err(response) => return response,
        };
        let recent = match parse_time(params.get("recent").map_or("1h", String::as_str)) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let mut thresholds = crate::audit::stats::Thresholds::default();
        if let Some(b) = params.get("burst") {
            match b.parse() {
                Ok(b) => thresholds.burst = b,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("burst `{b}` must be a number"),
                    );
                }
            }
        }
        let mut found = crate::audit::stats::findings(&records, &recent, thresholds);
        let now = SystemTime::now();
        found.extend(crate::audit::approval_findings::findings(&records, now));
        let status = status_of(self, now);
        let lapsing = |kind: &str, v: &serde_json::Value| {
            let left = v["expires_in_seconds"].as_u64()?;
            (left <= status::SOON.as_secs()).then(|| crate::audit::stats::Finding {
                kind: "lapsing-soon".into(),
                subject: v["id"].as_str().unwrap_or("-").to_owned(),
                detail: format!("{kind} lapses in {left} s"),
                count: 1,
            })
        };
        found.extend(
            status
                .exceptions
                .iter()
                .filter_map(|e| lapsing("exception", e)),
        );
        found.extend(
            status
                .overrides
                .iter()
                .filter_map(|o| lapsing("override", o)),
        );
        if status.drifted() {
            found.push(crate::audit::stats::Finding {
                kind: "drift".into(),
                subject: status.in_force.clone(),
                detail: "runtime behaviour differs from the policy files (see /v1/policy/status)"
                    .into(),
                count: 1,
            });
        }
        json(
            StatusCode::OK,
            &serde_json::to_value(&found).unwrap_or_default(),
        )
    }
}
