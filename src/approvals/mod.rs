//! Approvals: calls an `[[scope.ask]]` rule holds until a person answers.
//!
//! An approval binds the digest of one exact request ([`digest`]) for one
//! agent: a grant lets that agent make that request at most `uses` times
//! before it expires, and a request with any byte changed has another
//! digest, so it asks again. Approvers answer out of band (admin API, CLI,
//! console), never through the agent listener, and never as the agent whose
//! call it is.
//!
//! Invariants:
//! - What an approver is shown never holds a secret: sentinel placeholders
//!   are masked, and clawgate's own credentials are injected only after the
//!   approval (so they are not in the request yet).
//! - Each step (requested, granted, denied, expired) is a record of kind
//!   `approval`, written by the caller from [`Approval::record`]; the call
//!   that uses a grant names it in its own decision record.
//! - Held calls are bounded per agent and overall ([`HoldLimits`]); a call
//!   past the bound is refused, never queued.

pub mod digest;
mod sqlite;
mod store;
#[cfg(test)]
mod tests;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::audit::DecisionRecord;
use crate::error::Reason;
use crate::policy::rfc3339;

pub use store::{ApprovalStore, Approver};

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Waiting for an answer.
    Pending,
    /// Approved, with uses left.
    Granted,
    /// Refused by an approver.
    Denied,
    /// Not answered in time, or granted and not used in time.
    Expired,
    /// Granted, and every use spent.
    Used,
}

impl State {
    /// The name used in the API and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Granted => "granted",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Used => "used",
        }
    }
}

/// The request as an approver sees it: what the agent asked, with sentinel
/// placeholders masked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Shown {
    /// The HTTP method.
    pub method: String,
    /// The upstream host.
    pub host: String,
    /// The normalised path.
    pub path: String,
    /// The query string, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The body's size in bytes.
    pub body_bytes: usize,
    /// The body's SHA-256, hex.
    pub body_sha256: String,
    /// The start of the body (UTF-8, lossy), for the approver to read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_preview: Option<String>,
    /// For MCP: the tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// For MCP: the canonical JSON of the arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// For AWS: the IAM action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// For AWS: the resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// One approval request and its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approval {
    /// Its id (a UUID v7).
    pub id: String,
    /// The agent whose call it is.
    pub agent: String,
    /// The run, when the call carried a run token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The scope.
    pub scope: String,
    /// The ask rule.
    pub rule: String,
    /// The rule's `why`.
    pub why: String,
    /// Who may answer (`admins` and identities).
    pub approvers: Vec<String>,
    /// The digest of the exact request.
    pub digest: String,
    /// The request, as shown.
    pub request: Shown,
    /// The request id of the call that asked.
    pub request_id: String,
    /// Where it stands.
    pub state: State,
    /// When it was asked (RFC 3339).
    pub requested_at: String,
    /// When a pending request expires (RFC 3339).
    pub expires_at: String,
    /// Who answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// Why it was denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_reason: Option<String>,
    /// Calls the grant still lets through.
    pub uses_left: u32,
    /// Until when a grant is usable (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usable_until: Option<String>,
    /// Times, for the store's own checks.
    #[serde(skip)]
    pub times: Times,
    /// A denial or expiry was told to the agent (it asks afresh next).
    #[serde(skip)]
    pub told: bool,
}

/// An approval's times, as clock values.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// Asked.
    pub requested: SystemTime,
    /// A pending request expires.
    pub expires: SystemTime,
    /// A grant is usable until.
    pub usable_until: Option<SystemTime>,
    /// Answered.
    pub decided: Option<SystemTime>,
    /// How long a grant lasts once given (`window`), if set.
    pub window: Option<Duration>,
}

impl Default for Times {
    fn default() -> Self {
        Times {
            requested: SystemTime::UNIX_EPOCH,
            expires: SystemTime::UNIX_EPOCH,
            usable_until: None,
            decided: None,
            window: None,
        }
    }
}

impl Approval {
    /// The `approval` record of a step in this approval's life.
    pub fn record(&self, reason: Reason) -> DecisionRecord {
        let mut record = DecisionRecord::new(crate::audit::kind::APPROVAL, &self.id);
        record.reason = reason.code().to_owned();
        record.agent = Some(self.agent.clone());
        record.run_id = self.run.clone();
        record.scope = Some(self.scope.clone());
        record.rule = Some(self.rule.clone());
        record.method = Some(self.request.method.clone());
        record.host = Some(self.request.host.clone());
        record.path = Some(self.request.path.clone());
        record.action = self.request.action.clone();
        let by = self
            .decided_by
            .as_ref()
            .map(|b| format!("; by {b}"))
            .unwrap_or_default();
        let denial = self
            .deny_reason
            .as_ref()
            .map(|r| format!("; reason: {r}"))
            .unwrap_or_default();
        let tool = self
            .request
            .tool
            .as_ref()
            .map(|t| format!("; tool {t}"))
            .unwrap_or_default();
        record.detail = Some(format!(
            "approval {}{by}{denial}{tool}; call {}; expires {}; digest {}; why: {}",
            self.id, self.request_id, self.expires_at, self.digest, self.why
        ));
        record
    }
}

/// How many calls may be held waiting at once.
#[derive(Debug, Clone, Copy)]
pub struct HoldLimits {
    /// Per agent.
    pub per_agent: usize,
    /// Overall.
    pub total: usize,
}

impl Default for HoldLimits {
    fn default() -> Self {
        HoldLimits {
            per_agent: 8,
            total: 256,
        }
    }
}

/// What a call that needs approval finds.
#[derive(Debug)]
pub enum Found {
    /// A grant covers it; one use was spent.
    Granted(Approval),
    /// Its approval is still pending.
    Pending(Approval),
    /// Its approval was denied (told once).
    Denied(Approval),
    /// Its approval expired (told once); the record is to be written.
    Expired(Approval),
    /// Nothing: a new request is to be made.
    Nothing,
}

/// Why an answer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    /// No approval has this id.
    #[error("no approval `{0}`")]
    NotFound(String),
    /// It was already answered or expired.
    #[error("approval `{0}` is {1}, not pending")]
    NotPending(String, &'static str),
    /// The approver is the agent whose call it is.
    #[error("the agent whose call it is cannot answer its own approval")]
    OwnCall,
    /// The approver is not named by the ask rule.
    #[error("this approver is not named by ask rule `{0}`")]
    NotApprover(String),
}

/// A held call's place in the bound; freed when dropped.
#[derive(Debug)]
pub struct HoldSlot<'a> {
    approvals: &'a Approvals,
    agent: String,
}

impl Drop for HoldSlot<'_> {
    fn drop(&mut self) {
        let mut held = self
            .approvals
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = held.per_agent.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.per_agent.remove(&self.agent);
            }
        }
        held.total = held.total.saturating_sub(1);
    }
}

#[derive(Debug, Default)]
struct Held {
    per_agent: HashMap<String, usize>,
    total: usize,
}

/// Every approval this process knows, the held-call bound, and a signal
/// that wakes held calls when an answer arrives.
#[derive(Debug)]
pub struct Approvals {
    store: ApprovalStore,
    held: Mutex<Held>,
    limits: HoldLimits,
    changed: watch::Sender<u64>,
    /// Prefix of an approval's link (`…/v1/approvals/`).
    link_base: String,
}

impl Approvals {
    /// Approvals kept in `store`, links under `link_base`.
    pub fn new(store: ApprovalStore, limits: HoldLimits, link_base: String) -> Approvals {
        Approvals {
            store,
            held: Mutex::new(Held::default()),
            limits,
            changed: watch::channel(0).0,
            link_base,
        }
    }

    /// Approvals in memory only (tests, `demo`).
    pub fn in_memory() -> Approvals {
        Approvals::new(
            ApprovalStore::memory(),
            HoldLimits::default(),
            "https://clawgate-admin/v1/approvals/".into(),
        )
    }

    /// The link an approver follows for `id`.
    pub fn link(&self, id: &str) -> String {
        format!("{}{id}", self.link_base)
    }

    /// The store.
    pub fn store(&self) -> &ApprovalStore {
        &self.store
    }

    /// A place among the held calls, or `None` when the bound is reached.
    pub fn hold(&self, agent: &str) -> Option<HoldSlot<'_>> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = held.per_agent.get(agent).copied().unwrap_or(0);
        if mine >= self.limits.per_agent || held.total >= self.limits.total {
            return None;
        }
        held.per_agent.insert(agent.to_owned(), mine + 1);
        held.total += 1;
        Some(HoldSlot {
            approvals: self,
            agent: agent.to_owned(),
        })
    }

    /// How many calls are held now.
    pub fn held_now(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .total
    }

    /// Wakes held calls: something was answered.
    pub fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver woken whenever something is answered; subscribe before
    /// looking, so no answer falls between the look and the wait.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// The RFC 3339 form of an optional time.
fn when(t: Option<SystemTime>) -> Option<String> {
    t.map(rfc3339)
}
