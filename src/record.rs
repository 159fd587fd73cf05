//! One record per call: [`CallRecord`] is created when a call starts, filled
//! in by each step (identity, route, decision, credential), and committed
//! once. [`Outcome`] writes what happened after an allowed call.
//!
//! Invariants:
//! - A call writes exactly one decision record. Committed, it is the one
//!   [`CallRecord::commit`] queued; dropped uncommitted (the task cancelled
//!   mid mint, mid fetch, mid resolve, mid body read, or aborted at
//!   shutdown), the guard writes it with reason `client-cancelled`, or
//!   `shutdown` when clawgate is stopping.
//! - The outcome record is derived from the committed decision record (a
//!   copy with the outcome's fields), never assembled field by field.
//! - An outcome guard exists before the commit is awaited: an agent that
//!   goes away from then on leaves an outcome saying so.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::audit::{AuditError, AuditLog, DecisionRecord, kind};
use crate::body::BodyGuard;
use crate::error::{Reason, Refusal, Via};
use crate::trace::CallSpan;

/// The decision record of one call, as it is being built.
#[derive(Debug)]
pub struct CallRecord {
    audit: AuditLog,
    record: DecisionRecord,
    committed: bool,
    started: Instant,
    stopping: watch::Receiver<bool>,
    /// Set for calls whose allowed decision is followed by an outcome.
    in_flight: Option<Arc<InFlight>>,
    /// The call's span, when traces are exported.
    span: Option<CallSpan>,
    /// How refusals of this call are answered.
    pub via: Via,
}

impl CallRecord {
    /// The record of a call that starts now. `stopping` tells a cancellation
    /// at shutdown from an agent going away; `in_flight` is given when an
    /// allowed call gets an outcome record.
    pub fn start(
        audit: &AuditLog,
        request_id: &str,
        stopping: watch::Receiver<bool>,
        in_flight: Option<&Arc<InFlight>>,
    ) -> CallRecord {
        CallRecord {
            audit: audit.clone(),
            record: DecisionRecord::new(kind::DECISION, request_id),
            committed: false,
            started: Instant::now(),
            stopping,
            in_flight: in_flight.map(Arc::clone),
            span: None,
            via: Via::Server,
        }
    }

    /// Traces the call under `span`: its trace id goes into the record, and
    /// the span ends with the call's last record.
    pub fn trace(&mut self, span: CallSpan) {
        self.record.trace_id = Some(span.context().trace_id_hex());
        self.span = Some(span);
    }

    /// When the call started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stamps the verdict and queues the decision record, then waits until it
    /// is durable. An allowed call gets its outcome guard, made before the
    /// wait. `Err` means the decision could not be recorded: the call must be
    /// refused with `audit-unavailable`.
    pub async fn commit(
        mut self,
        verdict: Result<(), &Refusal>,
    ) -> Result<Option<Outcome>, AuditError> {
        let reason = verdict.map_or_else(Refusal::reason, |()| Reason::Allowed);
        stamp(&mut self.record, reason);
        if let Err(detail) = verdict.map_err(Refusal::detail)
            && let Some(detail) = detail
        {
            self.record.add_detail(&detail);
        }
        let mut span = self.span.take();
        if let Some(span) = span.as_mut() {
            span.decided(&self.record);
        }
        let outcome = match (&self.in_flight, verdict) {
            (Some(in_flight), Ok(())) => Some(Outcome::new(
                &self.audit,
                outcome_of(&self.record),
                self.started,
                in_flight,
            )),
            _ => None,
        };
        // A refused call's span ends with its decision; an allowed one's
        // with its outcome.
        let span = match (span, outcome.as_ref()) {
            (Some(span), Some(_)) => Some(span),
            (Some(span), None) => {
                span.end(&self.record);
                None
            }
            (None, _) => None,
        };
        let outcome = outcome.map(|mut outcome| {
            outcome.span = span;
            outcome
        });
        let record = std::mem::take(&mut self.record);
        // From here the record is the writer's: a cancelled wait below
        // leaves it to be written, and the guard writes nothing more.
        self.committed = true;
        let queued = self.audit.queue_durable(record);
        let committed = match queued {
            Ok(receipt) => receipt.committed().await,
            Err(e) => Err(e),
        };
        match committed {
            Ok(_) => Ok(outcome),
            Err(e) => {
                if let Some(outcome) = outcome {
                    // No decision, no outcome.
                    outcome.forget();
                }
                self.audit.refused_unrecorded(&e);
                Err(e)
            }
        }
    }
}

impl Deref for CallRecord {
    type Target = DecisionRecord;

    fn deref(&self) -> &DecisionRecord {
        &self.record
    }
}

impl DerefMut for CallRecord {
    fn deref_mut(&mut self) -> &mut DecisionRecord {
        &mut self.record
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let reason = if *self.stopping.borrow() {
            Reason::Shutdown
        } else {
            Reason::ClientCancelled
        };
        let mut record = std::mem::take(&mut self.record);
        stamp(&mut record, reason);
        record.duration_ms = Some(millis(self.started));
        if let Some(span) = self.span.take() {
            span.end(&record);
        }
        tracing::debug!(
            request.id = %record.request_id,
            decision.reason = reason.code(),
            "call ended before it was decided"
        );
        self.audit.append(record);
    }
}

/// Writes the verdict into a decision record.
fn stamp(record: &mut DecisionRecord, reason: Reason) {
    record.ts = crate::audit::now_rfc3339();
    record.reason = reason.code().to_owned();
    record.decision = Some(
        if reason == Reason::Allowed {
            "allow"
        } else {
            "deny"
        }
        .into(),
    );
}

/// The outcome record of a decision: the same call, kind `outcome`, with the
/// outcome's own fields still to fill.
fn outcome_of(decision: &DecisionRecord) -> DecisionRecord {
    DecisionRecord {
        seq: 0,
        kind: kind::OUTCOME.to_owned(),
        would_deny: None,
        status: None,
        bytes_up: None,
        bytes_down: None,
        duration_ms: None,
        prev_hash: String::new(),
        hash: String::new(),
        ..decision.clone()
    }
}

/// Emits the outcome record when dropped: with the response body, or at once
/// when the upstream failed or the agent went away.
#[derive(Debug)]
pub struct Outcome {
    audit: AuditLog,
    record: Option<DecisionRecord>,
    started: Instant,
    /// Bytes the agent sent upstream.
    pub bytes_up: Arc<AtomicU64>,
    /// Bytes sent to the agent.
    pub bytes_down: Arc<AtomicU64>,
    /// The status the agent received.
    pub status: Option<u16>,
    /// Why the exchange ended.
    pub reason: Reason,
    /// Whether the exchange reached its end.
    pub finished: bool,
    /// For an MCP request: whether its answer passed, and `isError` of a
    /// `tools/call` result.
    mcp_answer: Option<Arc<crate::mcp::response::IsError>>,
    /// What the reflection guard found in the response, if it watched it.
    reflection: Option<Arc<crate::response::guard::Tally>>,
    /// The call's span, ended with this outcome.
    span: Option<CallSpan>,
    /// What the inspection of MCP results found, and the rules it ran.
    mcp_results: Option<crate::mcp::results::Inspector>,
    _in_flight: InFlightGuard,
}

impl Outcome {
    fn new(
        audit: &AuditLog,
        record: DecisionRecord,
        started: Instant,
        in_flight: &Arc<InFlight>,
    ) -> Outcome {
        Outcome {
            audit: audit.clone(),
            record: Some(record),
            started,
            bytes_up: Arc::new(AtomicU64::new(0)),
            bytes_down: Arc::new(AtomicU64::new(0)),
            status: None,
            reason: Reason::ClientCancelled,
            finished: false,
            mcp_answer: None,
            reflection: None,
            span: None,
            mcp_results: None,
            _in_flight: InFlightGuard::new(in_flight),
        }
    }

    /// When the call started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The outcome record as it stands (a copy of the decision's).
    pub fn record(&self) -> Option<&DecisionRecord> {
        self.record.as_ref()
    }

    /// Takes `isError` and the answer's passing from an MCP response filter.
    pub fn watch_mcp(&mut self, answer: Arc<crate::mcp::response::IsError>) {
        self.mcp_answer = Some(answer);
    }

    /// Takes what the reflection guard finds in the response: the record
    /// says how many values, where, and whether the response was cut.
    pub fn watch_reflection(&mut self, tally: Arc<crate::response::guard::Tally>) {
        self.reflection = Some(tally);
    }

    /// Takes what the inspection of MCP results finds: the record says how
    /// many of each kind and what was done, and a refusal is its reason.
    pub fn watch_results(&mut self, inspector: crate::mcp::results::Inspector) {
        self.mcp_results = Some(inspector);
    }

    /// Adds a note to the outcome record's detail.
    pub fn add_detail(&mut self, note: &str) {
        if let Some(record) = self.record.as_mut() {
            record.add_detail(note);
        }
    }

    /// Drops the guard without an outcome record: the decision it belongs
    /// to was never recorded.
    pub fn forget(mut self) {
        self.record = None;
    }

    /// What a live connection under this outcome was allowed as.
    pub fn subject(&self, peer: &crate::pipeline::Peer) -> crate::live::Subject {
        let record = self.record.as_ref();
        crate::live::Subject {
            names: peer.identity.names.clone(),
            agent: record.and_then(|r| r.agent.clone()),
            serial: (!peer.identity.serial.is_empty()).then(|| peer.identity.serial.clone()),
            scope: record.and_then(|r| r.scope.clone()),
            connect: None,
            proxy_key: peer.proxy_key,
        }
    }

    /// The digest of the policy the decision was made under.
    pub fn policy_digest(&self) -> Option<&str> {
        self.record.as_ref()?.policy_digest.as_deref()
    }

    /// A tunnel or upgraded socket that a peer closed: a normal end.
    pub fn closed(&mut self) {
        self.finished = true;
        if self.reason == Reason::Allowed {
            self.reason = Reason::TunnelClosed;
        }
    }

    /// Adds `detail` to the outcome record's detail.
    pub fn note(&mut self, detail: &str) {
        if let Some(record) = self.record.as_mut() {
            record.detail = Some(match record.detail.take() {
                Some(before) => format!("{before}; {detail}"),
                None => detail.to_owned(),
            });
        }
    }

    /// Ends the record as `ended`, with why, when a live connection was cut.
    pub fn ended(&mut self, ended: crate::live::Ended) {
        self.reason = ended.reason;
        if let Some(record) = self.record.as_mut() {
            record.detail = Some(match record.detail.take() {
                Some(before) => format!("{before}; {}", ended.detail),
                None => ended.detail,
            });
        }
    }
}

impl BodyGuard for Outcome {
    fn finished(&mut self) {
        self.finished = true;
    }

    fn failed(&mut self) {
        if self.reason == Reason::Allowed {
            self.reason = Reason::UpstreamUnreachable;
        }
    }

    fn deadline_passed(&mut self) {
        self.reason = Reason::UpstreamTimeout;
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        // An MCP exchange is complete once the answer to its request has
        // passed, even if the agent then closes the stream.
        let answered = self.mcp_answer.as_ref().is_some_and(|a| a.answered());
        if self.reason == Reason::Allowed && !self.finished && !answered {
            // The response body was abandoned before its end.
            self.reason = Reason::ClientCancelled;
        }
        // A response that carried an injected value says so in its detail;
        // one cut for it (mode `refuse`) has it as its reason. A redacted
        // response was still allowed and delivered, so its reason stays.
        if let Some(summary) = self.reflection.as_ref().and_then(|t| t.settle()) {
            record.add_detail(&summary.detail);
            if summary.refused {
                self.reason = Reason::CredentialReflected;
            }
        }
        if let Some((detail, refused)) = self
            .mcp_results
            .as_ref()
            .and_then(|i| i.tally.settle(&i.rules))
        {
            record.add_detail(&detail);
            if refused {
                self.reason = Reason::ToolResultRefused;
            }
        }
        if let (Some(mcp), Some(answer)) = (record.mcp.as_mut(), &self.mcp_answer) {
            mcp.is_error = answer.get();
        }
        if self.mcp_answer.as_ref().is_some_and(|a| a.input_required()) {
            // A 2026-07-28 multi-round-trip result: a retry follows.
            record.add_detail("mcp input required");
        }
        record.ts = crate::audit::now_rfc3339();
        record.reason = self.reason.code().to_owned();
        record.status = self.status.map(i64::from);
        record.bytes_up = Some(to_i64(self.bytes_up.load(Ordering::Relaxed)));
        record.bytes_down = Some(to_i64(self.bytes_down.load(Ordering::Relaxed)));
        record.duration_ms = Some(millis(self.started));
        if let Some(span) = self.span.take() {
            span.end(&record);
        }
        self.audit.append(record);
    }
}

/// Counts calls whose outcome record is still to come, so shutdown can wait
/// for them before the decision log closes.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Waits until every allowed call has queued its outcome record, or
    /// `limit` passes; says whether it got there.
    pub async fn wait_idle(&self, limit: std::time::Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

/// One call in flight; dropped after its outcome record is queued.
#[derive(Debug)]
struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    fn new(in_flight: &Arc<InFlight>) -> InFlightGuard {
        in_flight.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(Arc::clone(in_flight))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn millis(started: Instant) -> i64 {
    to_i64(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
