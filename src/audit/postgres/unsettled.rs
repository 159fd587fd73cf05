//! A batch whose statement reached PostgreSQL but whose answer never came
//! back (the connection died or the batch timed out). Its calls were
//! refused with 503 `audit-unavailable`, yet the batch may have committed:
//! then the log would say "allowed" for calls that were never forwarded.
//!
//! The writer keeps such a batch's allowed decisions. When it next opens a
//! session it reads the chain's head: if the head is the one the batch would
//! have left, the batch committed, and each of those decisions gets an
//! outcome record saying what happened (reason `audit-unavailable`, status
//! 503, not forwarded) before anything else is written. If the head is
//! where it was before the batch, nothing committed and nothing is added.

use crate::audit::chain::Head;
use crate::audit::{DecisionRecord, kind};
use crate::error::Reason;

/// What the outcome record's detail says.
pub(super) const DETAIL: &str = "the decision was committed but its acknowledgement was lost: \
     the call was refused with 503 and not forwarded";

/// A batch sent without an answer.
#[derive(Debug)]
pub(super) struct Unsettled {
    /// The head the batch leaves if it committed.
    pub(super) committed: Head,
    /// Its allowed decisions.
    pub(super) decisions: Vec<DecisionRecord>,
}

impl Unsettled {
    /// The batch's allowed decisions, kept against `committed`; `None` when
    /// there are none.
    pub(super) fn of<'a>(
        committed: &Head,
        records: impl Iterator<Item = &'a DecisionRecord>,
    ) -> Option<Unsettled> {
        let decisions: Vec<DecisionRecord> = records
            .filter(|r| r.kind == kind::DECISION && r.decision.as_deref() == Some("allow"))
            .cloned()
            .collect();
        (!decisions.is_empty()).then(|| Unsettled {
            committed: committed.clone(),
            decisions,
        })
    }

    /// The outcome records owed when the chain's head is `head`: one per
    /// decision if the batch committed, none if it did not.
    pub(super) fn owed(self, head: &Head) -> Vec<DecisionRecord> {
        if *head != self.committed {
            return Vec::new();
        }
        self.decisions
            .into_iter()
            .map(|decision| DecisionRecord {
                seq: 0,
                kind: kind::OUTCOME.to_owned(),
                ts: crate::audit::now_rfc3339(),
                reason: Reason::AuditUnavailable.code().to_owned(),
                status: Some(503),
                would_deny: None,
                bytes_up: None,
                bytes_down: None,
                duration_ms: None,
                detail: Some(DETAIL.to_owned()),
                chain: None,
                prev_hash: String::new(),
                hash: String::new(),
                ..decision
            })
            .collect()
    }
}
