//! The clock of governance: exceptions and overrides lapse at their expiry,
//! and each lapse is a record.
//!
//! Invariants:
//! - Each lapse is recorded once, across restarts too (the exceptions'
//!   lapses are read back from the log at start; a lapsed override leaves
//!   its store when its lapse is recorded).
//! - Cause before effect: a decision taken at `now` is recorded after the
//!   record of every lapse due by `now`. A timer (the reload task)
//!   records each lapse at its expiry; every decision path calls
//!   [`Lapses::settle`] first, which costs one atomic load unless a lapse
//!   is due, so a call in the same instant as a lapse cannot overtake it.
//!   On a fleet, a list another replica changed is looked at on the next
//!   settle too, so whichever replica notices an expiry records it (once:
//!   see `overrides`), stamped with the expiry rather than the moment noticed.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::audit::{AuditLog, DecisionRecord, Filter, kind};
use crate::error::Reason;
use crate::overrides::Overrides;
use crate::policy::{Policy, rfc3339};

/// No lapse is pending.
const NEVER: u64 = u64::MAX;

/// The lapses recorded so far and the next one due.
#[derive(Debug)]
pub struct Lapses {
    /// Milliseconds since the epoch of the earliest unrecorded expiry.
    next_due: AtomicU64,
    /// (exception id, expiry) of every exception lapse recorded.
    recorded: Mutex<HashSet<(String, String)>>,
}

impl Default for Lapses {
    fn default() -> Self {
        Lapses {
            // Due at once: the first settle computes the real deadline.
            next_due: AtomicU64::new(0),
            recorded: Mutex::new(HashSet::new()),
        }
    }
}

impl Lapses {
    /// Remembers the exception lapses an earlier run already recorded.
    pub fn seed(&self, audit_path: &std::path::Path) {
        if let Ok(records) = crate::audit::query(audit_path, &Self::seed_filter()) {
            self.seed_from(records);
        }
    }

    /// The records [`Lapses::seed_from`] wants: every recorded exception
    /// lapse (on a fleet's store, every replica's).
    pub fn seed_filter() -> Filter {
        Filter {
            reason: Some(Reason::ExceptionExpired.code().to_owned()),
            limit: Some(100_000),
            ..Filter::default()
        }
    }

    /// Remembers the exception lapses in `records`.
    pub fn seed_from(&self, records: Vec<crate::audit::DecisionRecord>) {
        let Ok(mut set) = self.recorded.lock() else {
            return;
        };
        for r in records {
            if let (Some(id), Some(at)) = (
                r.exception,
                r.detail
                    .and_then(|d| d.strip_prefix("expired at ").map(str::to_owned)),
            ) {
                set.insert((id, at));
            }
        }
    }

    /// Something that may lapse changed (a policy put in force, an override
    /// created): the next settle looks again.
    pub fn changed(&self) {
        // Under the lock, so a settle in progress cannot overwrite this
        // with a deadline computed before the change.
        let _settling = self.recorded.lock();
        self.next_due.store(0, Ordering::SeqCst);
    }

    /// When the next lapse is due, if any is pending.
    pub fn next_due(&self) -> Option<SystemTime> {
        match self.next_due.load(Ordering::SeqCst) {
            NEVER => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Records every lapse due by `now` that is not recorded yet: the
    /// exceptions of `policy` and the overrides in `overrides`.
    pub fn settle(
        &self,
        policy: &Policy,
        overrides: &Overrides,
        audit: &AuditLog,
        now: SystemTime,
    ) {
        if millis(now) < self.next_due.load(Ordering::SeqCst) && !overrides.moved() {
            return;
        }
        // One settler at a time, holding the set while it queues: a second
        // caller waits here rather than deciding before the lapse is queued.
        let Ok(mut recorded) = self.recorded.lock() else {
            return;
        };
        let mut next = NEVER;
        for exception in policy.exceptions() {
            let key = (exception.id.clone(), rfc3339(exception.expires));
            if exception.active_at(now) {
                next = next.min(millis(exception.expires));
                continue;
            }
            if !recorded.insert(key.clone()) {
                continue;
            }
            let mut record =
                DecisionRecord::new(kind::EXCEPTION, &uuid::Uuid::now_v7().to_string());
            record.reason = Reason::ExceptionExpired.code().to_owned();
            record.agent = Some(policy.agent(exception.agent).name.clone());
            record.exception = Some(exception.id.clone());
            record.policy_digest = Some(policy.digest().to_owned());
            record.detail = Some(format!("expired at {}", key.1));
            tracing::info!(exception = %exception.id, "exception lapsed");
            audit.append(record);
        }
        match overrides.sweep(now) {
            Ok(lapsed) => {
                for o in lapsed {
                    tracing::info!(id = %o.id, "override lapsed");
                    // Stamped with its expiry, not with when it was noticed.
                    let mut record = o.record("lapsed", None);
                    record.ts = crate::audit::format_ts(time::OffsetDateTime::from(o.expires));
                    audit.append(record);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "overrides could not be swept");
                // Try again on the next call or tick.
                next = 0;
            }
        }
        for o in overrides.all().iter() {
            next = next.min(millis(o.expires));
        }
        self.next_due.store(next, Ordering::SeqCst);
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(NEVER - 1))
}

#[cfg(test)]
#[path = "lapse_tests.rs"]
mod tests;
