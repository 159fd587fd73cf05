//! One call, in order: route → identify and adjudicate → sentinels and
//! credential ([`admit`]) → record the decision → forward → record the
//! outcome. Credential vending ([`vend`]) is a call of its own kind.
//!
//! Invariants:
//! - Exactly one decision record per call, written in `Pipeline::call` (for a
//!   `CONNECT`, in [`crate::connect`], by the same steps; for a vend, in
//!   [`vend`]) and nowhere else, and committed before anything is forwarded.
//!   If it cannot be committed the call is refused with `audit-unavailable`
//!   (fail closed).
//! - An allowed call gets exactly one outcome record, emitted when its response
//!   body is dropped (finished, failed or abandoned by the agent), when its
//!   tunnel or upgraded socket closes, or at once when the upstream cannot be
//!   reached.
//! - Requests inside an intercepted tunnel are calls like any other: routed to
//!   the host and port the `CONNECT` named, then the same order.
//! - The policy a call starts with is the policy it finishes with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

mod admit;
mod credential;
mod mcp;
pub mod vend;

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{Instrument, field};

use crate::admin::metrics::{Metrics, Stage};
use crate::audit::{AuditLog, DecisionRecord, kind};
use crate::body::{BodyGuard, CountingBody, FailureFlag, ProxyBody};
use crate::connect::Inside;
use crate::credentials::Broker;
use crate::error::{REQUEST_ID_HEADER, Reason, mcp_refusal_response, refusal_response};
use crate::forward::{Upstreams, strip_hop_by_hop};
use crate::identity::PeerIdentity;
use crate::intercept::Interceptor;
use crate::limits::Limits;
use crate::overrides::Overrides;
use crate::policy::Policy;
use crate::token::Verifier;

pub use admit::BodyLimits;
use admit::{Admission, Admitted};
use vend::{VendCaller, vend_scope};

/// Who is on the other end of one TLS connection.
#[derive(Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// What its verified certificate proves.
    pub identity: PeerIdentity,
}

/// The shared state every call runs through.
#[derive(Debug)]
pub struct Pipeline {
    policy: ArcSwap<Policy>,
    audit: AuditLog,
    pub(crate) upstreams: Upstreams,
    pub(crate) interceptor: Interceptor,
    broker: Arc<Broker>,
    limits: BodyLimits,
    in_flight: Arc<InFlight>,
    /// Flips to `true` when tunnels and intercepted connections must end.
    pub(crate) stopping: watch::Sender<bool>,
    rates: Limits,
    overrides: Arc<Overrides>,
    metrics: Metrics,
    tokens: Verifier,
    mcp: Arc<crate::mcp::McpState>,
}

/// What a pipeline is made of, besides the policy and the decision log.
#[derive(Debug)]
pub struct Parts {
    /// Upstream clients.
    pub upstreams: Upstreams,
    /// The interception CA.
    pub interceptor: Interceptor,
    /// The credential broker.
    pub broker: Arc<Broker>,
    /// How much of a body is read before deciding.
    pub limits: BodyLimits,
    /// Runtime overrides (isolations, revoked serials, disabled scopes).
    pub overrides: Arc<Overrides>,
}

impl Pipeline {
    /// A pipeline over a loaded policy, a decision log, upstream clients,
    /// the interception CA, a credential broker and the overrides.
    pub fn new(policy: Arc<Policy>, audit: AuditLog, parts: Parts) -> Pipeline {
        Pipeline {
            policy: ArcSwap::new(policy),
            audit,
            upstreams: parts.upstreams,
            interceptor: parts.interceptor,
            broker: parts.broker,
            limits: parts.limits,
            in_flight: Arc::default(),
            stopping: watch::Sender::new(false),
            rates: Limits::default(),
            overrides: parts.overrides,
            metrics: Metrics::default(),
            tokens: Verifier::none(),
            mcp: Arc::new(crate::mcp::McpState::ephemeral()),
        }
    }

    /// The pipeline, hashing MCP arguments with this state's key.
    pub fn with_mcp(self, mcp: crate::mcp::McpState) -> Pipeline {
        Pipeline {
            mcp: Arc::new(mcp),
            ..self
        }
    }

    /// Ends every tunnel and intercepted connection (at shutdown, after the
    /// drain timeout).
    pub fn end_tunnels(&self) {
        self.stopping.send_replace(true);
    }

    /// The pipeline, verifying run tokens with `tokens`.
    pub fn with_tokens(self, tokens: Verifier) -> Pipeline {
        Pipeline { tokens, ..self }
    }

    /// The run token verifier.
    pub fn tokens(&self) -> &Verifier {
        &self.tokens
    }

    /// Puts a validated policy in force for calls that start from now on;
    /// calls in flight finish under the one they started with.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        self.policy.store(policy);
    }

    /// The runtime overrides.
    pub fn overrides(&self) -> &Arc<Overrides> {
        &self.overrides
    }

    /// The counters behind `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The credential broker.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Waits until every allowed call has queued its outcome record, or
    /// `limit` passes; says whether it got there.
    pub async fn wait_idle(&self, limit: std::time::Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.in_flight.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.count.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The decision log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Runs one call through the pipeline. Never fails: every problem becomes
    /// a refusal response with a reason.
    pub async fn handle(
        self: &Arc<Self>,
        peer: &Arc<Peer>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        // Only the uppercase method is a CONNECT; `connect` is refused as
        // malformed by routing like any lowercase method.
        if req.method() == Method::CONNECT {
            return self.connect(peer, req).await;
        }
        // Vending is clawgate's own endpoint: origin form only, so that an
        // absolute-form request for some other host's `/v1/credentials/…`
        // is proxied like any other, never answered with credentials.
        let origin_form = req.version() == http::Version::HTTP_2 || req.uri().authority().is_none();
        if origin_form && vend_scope(&req).is_some() {
            let policy = self.policy.load_full();
            let agent = policy.agent_for(&peer.identity.names);
            let caller = VendCaller {
                agent,
                cert_fp: Some(&peer.identity.fingerprint),
                serial: Some(&peer.identity.serial),
                run: None,
                token_scopes: None,
                addr: peer.addr,
            };
            return self.vend(&policy, caller, &req).await;
        }
        self.call(peer, None, req).await
    }

    /// Runs one request from inside an intercepted `CONNECT`.
    pub(crate) async fn handle_inside(
        &self,
        peer: &Peer,
        inside: &Inside,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        self.call(peer, Some(inside), req).await
    }

    async fn call(
        &self,
        peer: &Peer,
        inside: Option<&Inside>,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        // A WebSocket upgrade is adjudicated here like any call; its socket
        // is spliced only if the upstream agrees to switch.
        let upgrade = crate::upgrade::websocket(&req).map(|value| {
            let on_upgrade = hyper::upgrade::on(&mut req);
            (value, on_upgrade)
        });
        let request_id = uuid::Uuid::now_v7().to_string();
        let span = tracing::info_span!(
            "call",
            request.id = %request_id,
            agent.id = field::Empty,
            run.id = field::Empty,
            scope.id = field::Empty,
            decision.effect = field::Empty,
            decision.reason = field::Empty,
            upstream.host = field::Empty,
        );
        async {
            // The policy is read once: a reload mid-call does not change it.
            let policy = self.policy.load_full();
            let mut record = DecisionRecord::new(kind::DECISION, &request_id);
            record.client_addr = Some(peer.addr.to_string());
            record.cert_fp = Some(peer.identity.fingerprint.clone());
            record.method = Some(req.method().as_str().to_owned());
            record.policy_digest = Some(policy.digest().to_owned());

            let (parts, body) = req.into_parts();
            let admission = Admission {
                peer,
                inside,
                policy: &policy,
                broker: &self.broker,
                limits: self.limits,
                request_id: &request_id,
                now: SystemTime::now(),
                rates: &self.rates,
                overrides: &self.overrides,
                metrics: &self.metrics,
                retry_after: AtomicU64::new(0),
                tokens: &self.tokens,
                mcp: &self.mcp,
            };
            let verdict = admission
                .admit(parts, admit::boxed(body), &mut record)
                .await;
            let retry_after = admission.retry_after.load(Ordering::Relaxed);

            // The one place a decision is recorded, on every path.
            let reason = verdict.as_ref().err().copied().unwrap_or(Reason::Allowed);
            record.reason = reason.code().to_owned();
            record.decision = Some(
                if reason == Reason::Allowed {
                    "allow"
                } else {
                    "deny"
                }
                .into(),
            );
            self.metrics.call(
                record.decision.as_deref().unwrap_or("deny"),
                reason.code(),
                record.scope.as_deref(),
            );
            let span = tracing::Span::current();
            span.record("decision.effect", record.decision.as_deref());
            span.record("decision.reason", reason.code());
            // The outcome guard exists before the commit is awaited: if the
            // agent goes away from here on, the outcome says `client-cancelled`.
            let mut outcome = verdict.is_ok().then(|| self.outcome_for(&record, started));
            // An MCP message is refused in JSON-RPC, with its id.
            let mcp_refusal = record
                .mcp
                .clone()
                .filter(|m| m.method != "GET" && m.method != "DELETE");
            if let Err(e) = self.audit.append_durable(record).await {
                tracing::error!(error = %e, "decision not recorded; refusing the call");
                if let Some(outcome) = outcome.as_mut() {
                    // No decision, no outcome.
                    outcome.record = None;
                }
                return refusal_response(Reason::AuditUnavailable, &request_id);
            }
            match (verdict, outcome) {
                (Ok(admitted), Some(outcome)) => {
                    self.forward(admitted, outcome, &request_id, upgrade).await
                }
                (Err(reason), _) => {
                    tracing::debug!("call refused");
                    let mut response = match &mcp_refusal {
                        Some(m) => mcp_refusal_response(reason, m, &request_id),
                        None => refusal_response(reason, &request_id),
                    };
                    if retry_after > 0 {
                        response
                            .headers_mut()
                            .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
                    }
                    response
                }
                (Ok(_), None) => refusal_response(Reason::AuditUnavailable, &request_id),
            }
        }
        .instrument(span)
        .await
    }

    /// The guard that writes the outcome record of an allowed call when it
    /// is dropped.
    pub(crate) fn outcome_for(&self, decision: &DecisionRecord, started: Instant) -> Outcome {
        Outcome {
            audit: self.audit.clone(),
            record: Some(outcome_template(decision)),
            started,
            bytes_up: Arc::new(AtomicU64::new(0)),
            bytes_down: Arc::new(AtomicU64::new(0)),
            status: None,
            reason: Reason::ClientCancelled,
            finished: false,
            mcp_is_error: None,
            _in_flight: InFlightGuard::new(&self.in_flight),
        }
    }

    async fn forward(
        &self,
        admitted: Admitted,
        mut outcome: Outcome,
        request_id: &str,
        upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = admitted.request.into_parts();
        if let Some((value, _)) = &upgrade {
            crate::upgrade::restore(&mut parts.headers, value);
        }
        let upload_failed = FailureFlag::default();
        let upstream_body = CountingBody::guarded(
            body,
            Arc::clone(&outcome.bytes_up),
            None,
            upload_failed.clone(),
        );
        let request = Request::from_parts(parts, upstream_body);
        let deadline = outcome.started + self.upstreams.timeouts().total;
        let sent = Instant::now();
        let http1_only = upgrade.is_some();
        let sending = self
            .upstreams
            .send(&admitted.permit, request, http1_only)
            .await;
        self.metrics.observe(Stage::Upstream, sent.elapsed());
        let mut response = match sending {
            Ok(response) => response,
            Err(reason) => {
                // A broken upload is the agent's doing, not the upstream's.
                let reason = if upload_failed.0.load(Ordering::Relaxed) {
                    Reason::ClientCancelled
                } else {
                    reason
                };
                outcome.status = Some(reason.status().as_u16());
                outcome.reason = reason;
                drop(outcome);
                return refusal_response(reason, request_id);
            }
        };
        if let Some((value, agent_side)) = upgrade
            && response.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream_side = hyper::upgrade::on(&mut response);
            let (mut parts, _) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            crate::upgrade::restore(&mut parts.headers, &value);
            if let Ok(id) = HeaderValue::from_str(request_id) {
                parts.headers.insert(REQUEST_ID_HEADER, id);
            }
            outcome.status = Some(parts.status.as_u16());
            outcome.reason = Reason::Allowed;
            let stopping = self.stopping.subscribe();
            tokio::spawn(
                crate::upgrade::splice(agent_side, upstream_side, outcome, stopping)
                    .in_current_span(),
            );
            tracing::info!("upgrade forwarded");
            let empty = http_body_util::Empty::new().map_err(|never| match never {});
            return Response::from_parts(parts, empty.boxed());
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(id) = HeaderValue::from_str(request_id) {
            parts.headers.insert(REQUEST_ID_HEADER, id);
        }
        outcome.status = Some(parts.status.as_u16());
        outcome.reason = Reason::Allowed;
        let (body, deadline) = match admitted.mcp {
            Some(exchange) => {
                let body = body.map_err(Into::into).boxed();
                match self.mcp_response(exchange, &mut parts, body, &mut outcome, request_id) {
                    Ok(body) => (body, None),
                    Err(refusal) => return *refusal,
                }
            }
            None => (body.map_err(Into::into).boxed(), Some(deadline)),
        };
        let counter = Arc::clone(&outcome.bytes_down);
        let body = CountingBody::guarded(body, counter, deadline, outcome);
        // Per call: debug. The decision log is the per-call record.
        tracing::debug!(status = parts.status.as_u16(), "call forwarded");
        Response::from_parts(parts, body.boxed())
    }
}

fn outcome_template(decision: &DecisionRecord) -> DecisionRecord {
    DecisionRecord {
        kind: kind::OUTCOME.to_owned(),
        request_id: decision.request_id.clone(),
        mode: decision.mode.clone(),
        agent: decision.agent.clone(),
        cert_fp: decision.cert_fp.clone(),
        run_id: decision.run_id.clone(),
        client_addr: decision.client_addr.clone(),
        method: decision.method.clone(),
        host: decision.host.clone(),
        path: decision.path.clone(),
        scope: decision.scope.clone(),
        rule: decision.rule.clone(),
        decision: decision.decision.clone(),
        credential_kind: decision.credential_kind.clone(),
        credential_ref: decision.credential_ref.clone(),
        action: decision.action.clone(),
        exception: decision.exception.clone(),
        mcp: decision.mcp.clone(),
        policy_digest: decision.policy_digest.clone(),
        detail: decision.detail.clone(),
        ..DecisionRecord::default()
    }
}

/// Emits the outcome record when dropped: with the response body, or at once
/// when the upstream failed or the agent went away.
#[derive(Debug)]
pub(crate) struct Outcome {
    audit: AuditLog,
    record: Option<DecisionRecord>,
    started: Instant,
    pub(crate) bytes_up: Arc<AtomicU64>,
    pub(crate) bytes_down: Arc<AtomicU64>,
    pub(crate) status: Option<u16>,
    pub(crate) reason: Reason,
    pub(crate) finished: bool,
    /// For a `tools/call`: whether its result had `isError`.
    mcp_is_error: Option<Arc<crate::mcp::response::IsError>>,
    _in_flight: InFlightGuard,
}

impl Outcome {
    /// Drops the guard without an outcome record: the decision it belongs
    /// to was never recorded.
    pub(crate) fn forget(mut self) {
        self.record = None;
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
        let answered = self.mcp_is_error.as_ref().is_some_and(|a| a.answered());
        if self.reason == Reason::Allowed && !self.finished && !answered {
            // The response body was abandoned before its end.
            self.reason = Reason::ClientCancelled;
        }
        record.ts = crate::audit::now_rfc3339();
        record.reason = self.reason.code().to_owned();
        if let (Some(mcp), Some(flag)) = (record.mcp.as_mut(), &self.mcp_is_error) {
            mcp.is_error = flag.get();
        }
        record.status = self.status.map(i64::from);
        record.bytes_up = Some(to_i64(self.bytes_up.load(Ordering::Relaxed)));
        record.bytes_down = Some(to_i64(self.bytes_down.load(Ordering::Relaxed)));
        record.duration_ms = Some(to_i64(
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ));
        self.audit.append(record);
    }
}

/// Counts calls whose outcome record is still to come, so shutdown can wait
/// for them before the decision log closes.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
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

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
