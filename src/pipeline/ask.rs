//! The ask step: after `decide` allowed a call and its limits passed, an
//! `[[scope.ask]]` rule that names it makes it wait for a person.
//!
//! The call's digest ([`crate::approvals::digest`]) finds its approval: a
//! grant lets it on (one use spent, named in the decision record), a denial
//! or an expiry refuses it, and otherwise an approval is requested (a
//! durable record first) and the call is held open up to the rule's `hold`
//! (bounded per agent and overall) or refused at once with the approval's
//! id to retry with.

use std::time::{Duration, SystemTime};

use crate::approvals::digest::{Bound, canonical_json, digest};
use crate::approvals::{Approval, Found, Shown, State, Times};
use crate::error::{AskPending, Reason, Refusal};
use crate::policy::ask::AskRule;
use crate::policy::{Call, Mode, Scope, rfc3339};
use crate::record::CallRecord;

use super::admit::Admission;
use super::held::Held;

/// How much of a body an approver is shown.
const PREVIEW_BYTES: usize = 4096;

/// The request an ask rule named, as the ask step needs it.
pub(super) struct Asked<'a> {
    pub rule: &'a AskRule,
    pub scope: &'a Scope,
    pub call: &'a Call<'a>,
    pub query: Option<&'a str>,
}

impl Admission<'_> {
    /// Lets the call on with an approval, or refuses it; the body is read
    /// (to bind it) and handed back.
    pub(super) async fn ask(
        &self,
        asked: Asked<'_>,
        held: Held,
        record: &mut CallRecord,
    ) -> Result<Held, Refusal> {
        let Asked { rule, scope, .. } = asked;
        if scope.mode == Mode::Report {
            record.add_detail(&format!("report mode: ask rule {} would ask", rule.id));
            return Ok(held);
        }
        let (body, held) = self.bound_body(&asked, held).await?;
        let agent = record.agent.clone().unwrap_or_default();
        let mcp_tool = asked.call.mcp.and_then(|m| m.name);
        let aws = asked
            .call
            .aws
            .map(|a| (a.action.as_str(), a.resource.as_deref()));
        let bound = Bound {
            agent: &agent,
            run: record.run_id.as_deref(),
            scope: &scope.name,
            method: asked.call.method,
            host: &scope.upstream.host,
            path: asked.call.path,
            query: asked.query,
            body: &body,
            tool: mcp_tool,
            aws,
        };
        let digest = digest(&bound);
        let mut changes = self.approvals.subscribe();
        let (found, requested, expired) =
            self.approvals
                .store()
                .find_or_request(&agent, &digest, self.now, || {
                    self.request_approval(&asked, &bound, &digest, record)
                });
        self.record_steps(&expired, Reason::ApprovalExpired).await?;
        let pending = match found {
            Found::Pending(p) => p,
            found => return conclude(found, record).map(|()| held),
        };
        if requested {
            // The request is a record before anyone is told of it.
            let recorded = self
                .record_steps(std::slice::from_ref(&pending), Reason::ApprovalRequested)
                .await;
            if let Err(refused) = recorded {
                self.approvals.store().remove(&pending.id);
                return Err(refused);
            }
            crate::approvals::webhook::notify(self.approvals, rule, scope, &pending);
        }
        if rule.hold.is_zero() {
            return Err(self.retry_later(&pending));
        }
        let Some(_slot) = self.approvals.hold(&agent) else {
            record.add_detail(&format!(
                "approval {} pending; too many calls held",
                pending.id
            ));
            return Err(Reason::ApprovalHoldsExhausted.into());
        };
        let until_expiry = pending
            .times
            .expires
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let deadline = tokio::time::Instant::now() + rule.hold.min(until_expiry);
        loop {
            let woke = tokio::time::timeout_at(deadline, changes.changed()).await;
            let now = SystemTime::now();
            let (found, expired) = self.approvals.store().find(&agent, &digest, now);
            self.record_steps(&expired, Reason::ApprovalExpired).await?;
            match found {
                Found::Pending(_) if matches!(woke, Ok(Ok(()))) => continue,
                Found::Pending(p) => return Err(self.retry_later(&p)),
                found => return conclude(found, record).map(|()| held),
            }
        }
    }

    /// The bytes the digest binds: for an MCP tool call the canonical
    /// arguments, otherwise the whole body (refused past the scan limit).
    async fn bound_body(&self, asked: &Asked<'_>, held: Held) -> Result<(Vec<u8>, Held), Refusal> {
        if let Some(mcp) = asked.call.mcp {
            let args = mcp.arguments.map(canonical_json).unwrap_or_default();
            return Ok((args.into_bytes(), held));
        }
        let prefix = held
            .read(self.limits.sentinel_scan, self.limits.read_timeout)
            .await?;
        if prefix.rest.is_some() {
            // A body too long to bind cannot be approved as it is.
            return Err(Reason::RequestTooLarge.into());
        }
        Ok((prefix.bytes.to_vec(), Held::Read(prefix)))
    }

    fn retry_later(&self, pending: &Approval) -> Refusal {
        let left = pending
            .times
            .expires
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .as_secs();
        Refusal::ApprovalRequired(AskPending {
            id: pending.id.clone(),
            url: self.approvals.link(&pending.id),
            retry_after: left.clamp(1, 10),
        })
    }

    /// Writes one record per approval step, durably: a step that cannot be
    /// recorded refuses the call (fail closed).
    async fn record_steps(&self, steps: &[Approval], reason: Reason) -> Result<(), Refusal> {
        for step in steps {
            if let Err(e) = self.audit.append_durable(step.record(reason)).await {
                tracing::error!(error = %e, "approval step not recorded");
                return Err(Reason::AuditUnavailable.into());
            }
            if reason == Reason::ApprovalExpired {
                self.metrics.approval_decided("expired", &step.times);
            }
        }
        Ok(())
    }

    fn request_approval(
        &self,
        asked: &Asked<'_>,
        bound: &Bound<'_>,
        digest: &str,
        record: &CallRecord,
    ) -> Approval {
        let rule = asked.rule;
        let sentinels = self.policy.sentinels();
        let preview = (!bound.body.is_empty() && asked.call.mcp.is_none()).then(|| {
            let end = bound.body.len().min(PREVIEW_BYTES);
            sentinels.mask(&String::from_utf8_lossy(&bound.body[..end]))
        });
        let shown = Shown {
            method: bound.method.to_owned(),
            host: bound.host.to_owned(),
            path: sentinels.mask(bound.path),
            query: bound.query.map(|q| sentinels.mask(q)),
            body_bytes: bound.body.len(),
            body_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bound.body)),
            body_preview: preview,
            tool: bound.tool.map(str::to_owned),
            arguments: asked
                .call
                .mcp
                .map(|_| sentinels.mask(&String::from_utf8_lossy(bound.body))),
            action: bound.aws.map(|(a, _)| a.to_owned()),
            resource: bound.aws.and_then(|(_, r)| r).map(str::to_owned),
        };
        let expires = self.now + rule.ttl;
        Approval {
            id: uuid::Uuid::now_v7().to_string(),
            agent: bound.agent.to_owned(),
            run: bound.run.map(str::to_owned),
            scope: bound.scope.to_owned(),
            rule: rule.id.to_string(),
            why: rule.why.clone(),
            approvers: rule.approvers.describe(),
            digest: digest.to_owned(),
            request: shown,
            request_id: record.request_id.clone(),
            state: State::Pending,
            requested_at: rfc3339(self.now),
            expires_at: rfc3339(expires),
            decided_by: None,
            decided_at: None,
            deny_reason: None,
            uses_left: rule.uses,
            usable_until: None,
            times: Times {
                requested: self.now,
                expires,
                usable_until: None,
                decided: None,
                window: rule.window,
            },
            told: false,
        }
    }
}

/// A call that found a grant goes on (naming it); a denial or an expiry
/// refuses it.
fn conclude(found: Found, record: &mut CallRecord) -> Result<(), Refusal> {
    match found {
        Found::Granted(a) => {
            let by = a.decided_by.as_deref().unwrap_or("?");
            record.add_detail(&format!(
                "approval {} granted by {by}; {} uses left",
                a.id, a.uses_left
            ));
            Ok(())
        }
        Found::Denied(a) => {
            let by = a.decided_by.as_deref().unwrap_or("?");
            record.add_detail(&format!("approval {} denied by {by}", a.id));
            Err(Reason::ApprovalDenied.into())
        }
        Found::Expired(a) => {
            record.add_detail(&format!("approval {} expired", a.id));
            Err(Reason::ApprovalExpired.into())
        }
        // Callers handle these before concluding.
        Found::Pending(a) => {
            record.add_detail(&format!("approval {} pending", a.id));
            Err(Reason::ApprovalRequired.into())
        }
        Found::Nothing => Err(Reason::ApprovalRequired.into()),
    }
}

impl super::Pipeline {
    /// Records approvals that expired unanswered or unused: those `expired`
    /// names, then every other one that lapsed by `now` (the housekeeping
    /// sweep calls this with none), so an expiry nobody asked about is
    /// still a record.
    pub async fn record_expired_approvals(&self, expired: &[Approval], now: SystemTime) {
        let (_, lapsed) = self.approvals.store().list(now, false);
        for a in expired.iter().chain(&lapsed) {
            self.metrics.approval_decided("expired", &a.times);
            if let Err(e) = self
                .audit
                .append_durable(a.record(Reason::ApprovalExpired))
                .await
            {
                tracing::error!(error = %e, "approval expiry not recorded");
            }
        }
    }
}
