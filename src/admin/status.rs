//! `GET /v1/policy/status`: the policy in force against the files on disk,
//! and everything that makes runtime behaviour differ from the files.
//!
//! Drift means: the files differ from the policy in force (edited but not
//! loaded, or refused), or any override is in force. Each cause is named in
//! `drift`, so the text form can say why.

use std::time::{Duration, SystemTime};

use super::Admin;
use crate::policy::rfc3339;

/// Exceptions lapsing within this window are listed as lapsing soon.
pub const SOON: Duration = Duration::from_secs(24 * 3600);

/// The status the API answers and `policy status` prints.
#[derive(Debug, Clone)]
pub struct PolicyStatus {
    /// The digest of the policy in force.
    pub in_force: String,
    /// The digest of the files on disk now, or why it could not be read.
    pub on_disk: Result<String, String>,
    /// Whether the files validated at the last load.
    pub valid: bool,
    /// The problems of the last refused load.
    pub error: Option<String>,
    /// Active exceptions as JSON objects.
    pub exceptions: Vec<serde_json::Value>,
    /// Active overrides as JSON objects.
    pub overrides: Vec<serde_json::Value>,
    /// Ids of exceptions lapsing within 24 hours.
    pub lapsing_soon: Vec<String>,
}

impl PolicyStatus {
    /// Whether runtime behaviour differs from the files.
    pub fn drifted(&self) -> bool {
        self.on_disk.as_deref() != Ok(self.in_force.as_str())
            || !self.valid
            || !self.overrides.is_empty()
    }

    /// Why runtime behaviour differs from the files, one sentence each
    /// (empty when in sync).
    pub fn drift(&self) -> Vec<String> {
        let mut why = Vec::new();
        match &self.on_disk {
            Err(e) => why.push(format!("the policy files cannot be read: {e}")),
            Ok(d) if *d != self.in_force && self.valid => why.push(
                "the files on disk differ from the policy in force (edited, not yet loaded)".into(),
            ),
            Ok(_) => {}
        }
        if !self.valid {
            why.push(
                "the files on disk do not validate; the last good policy stays in force".into(),
            );
        }
        if !self.overrides.is_empty() {
            let each: Vec<String> = self
                .overrides
                .iter()
                .map(|o| {
                    let verb = match o["kind"].as_str() {
                        Some("isolate-agent") => "isolate agent",
                        Some("revoke-serial") => "revoke serial",
                        Some("disable-scope") => "disable scope",
                        _ => "override",
                    };
                    format!(
                        "{verb} {} until {}",
                        o["target"].as_str().unwrap_or("-"),
                        o["expires"].as_str().unwrap_or("-")
                    )
                })
                .collect();
            let n = each.len();
            let noun = if n == 1 { "override" } else { "overrides" };
            why.push(format!("{n} {noun} in force: {}", each.join("; ")));
        }
        why
    }

    /// The JSON form.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "drift": self.drift(),
            "in_force": self.in_force,
            "on_disk": self.on_disk.as_ref().ok(),
            "on_disk_error": self.on_disk.as_ref().err(),
            "valid": self.valid,
            "error": self.error,
            "in_sync": !self.drifted(),
            "exceptions": self.exceptions,
            "lapsing_within_24h": self.lapsing_soon,
            "overrides": self.overrides,
        })
    }
}

/// The status of `admin` at `now`.
pub fn status_of(admin: &Admin, now: SystemTime) -> PolicyStatus {
    let policy = admin.pipeline.policy();
    let reload = admin.reloader.status();
    let mut exceptions = Vec::new();
    let mut lapsing_soon = Vec::new();
    for e in policy.exceptions().iter().filter(|e| e.active_at(now)) {
        let left = e.expires.duration_since(now).unwrap_or_default();
        if left <= SOON {
            lapsing_soon.push(e.id.clone());
        }
        let scopes: Vec<&str> = e
            .scopes
            .iter()
            .map(|&s| policy.scope(s).name.as_str())
            .collect();
        exceptions.push(serde_json::json!({
            "id": e.id,
            "agent": policy.agent(e.agent).name,
            "scopes": scopes,
            "reason": e.reason,
            "approved_by": e.approved_by,
            "ticket": e.ticket,
            "expires": rfc3339(e.expires),
            "expires_in_seconds": left.as_secs(),
        }));
    }
    let overrides = admin
        .pipeline
        .overrides()
        .all()
        .iter()
        .filter(|o| o.active_at(now))
        .map(|o| admin.pipeline.overrides().describe(o, now))
        .collect();
    PolicyStatus {
        in_force: policy.digest().to_owned(),
        on_disk: crate::policy::disk_digest(admin.reloader.dir()),
        valid: reload.valid,
        error: reload.error,
        exceptions,
        overrides,
        lapsing_soon,
    }
}
