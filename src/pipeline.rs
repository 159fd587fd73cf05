//! One call, in order: route → identify and adjudicate → credential → record
//! the decision → forward → record the outcome.
//!
//! Invariants:
//! - Exactly one decision record per call, written in `Pipeline::call` (for a
//!   `CONNECT`, in [`crate::connect`], by the same steps) and nowhere else,
//!   and committed before anything is forwarded. If it cannot be committed the
//!   call is refused with `audit-unavailable` (fail closed).
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

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, Version, header, request::Parts};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{Instrument, field};

use crate::audit::{AuditLog, DecisionRecord, kind};
use crate::body::{BodyGuard, CountingBody, FailureFlag, ProxyBody};
use crate::connect::Inside;
use crate::error::{REQUEST_ID_HEADER, Reason, refusal_response};
use crate::forward::{Upstreams, strip_hop_by_hop, upstream_uri};
use crate::identity::PeerIdentity;
use crate::intercept::Interceptor;
use crate::policy::{Call, Decision, Permitted, Policy, Target, Upstream, decide};
use crate::route::{Destination, Mode, Routed, encode_path, normalise_path, route};

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
    in_flight: Arc<InFlight>,
    /// Flips to `true` when tunnels and intercepted connections must end.
    pub(crate) stopping: watch::Sender<bool>,
}

/// A call that may go upstream: the permit and the prepared request head.
struct Admitted {
    permit: Permitted,
    parts: Parts,
}

impl Pipeline {
    /// A pipeline over a loaded policy, a decision log, upstream clients and
    /// the interception CA.
    pub fn new(
        policy: Arc<Policy>,
        audit: AuditLog,
        upstreams: Upstreams,
        interceptor: Interceptor,
    ) -> Pipeline {
        Pipeline {
            policy: ArcSwap::new(policy),
            audit,
            upstreams,
            interceptor,
            in_flight: Arc::default(),
            stopping: watch::Sender::new(false),
        }
    }

    /// Ends every tunnel and intercepted connection (at shutdown, after the
    /// drain timeout).
    pub fn end_tunnels(&self) {
        self.stopping.send_replace(true);
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
            let verdict = admit(peer, &policy, inside, parts, &mut record);

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
            let span = tracing::Span::current();
            span.record("decision.effect", record.decision.as_deref());
            span.record("decision.reason", reason.code());
            // The outcome guard exists before the commit is awaited: if the
            // agent goes away from here on, the outcome says `client-cancelled`.
            let mut outcome = verdict.is_ok().then(|| self.outcome_for(&record, started));
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
                    self.forward(admitted, body, outcome, &request_id, upgrade)
                        .await
                }
                (Err(reason), _) => {
                    tracing::info!("call refused");
                    refusal_response(reason, &request_id)
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
            _in_flight: InFlightGuard::new(&self.in_flight),
        }
    }

    async fn forward(
        &self,
        mut admitted: Admitted,
        body: Incoming,
        mut outcome: Outcome,
        request_id: &str,
        upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    ) -> Response<ProxyBody> {
        if let Some((value, _)) = &upgrade {
            crate::upgrade::restore(&mut admitted.parts.headers, value);
        }
        let upload_failed = FailureFlag::default();
        let upstream_body = CountingBody::guarded(
            body,
            Arc::clone(&outcome.bytes_up),
            None,
            upload_failed.clone(),
        );
        let request = Request::from_parts(admitted.parts, upstream_body);
        let deadline = outcome.started + self.upstreams.timeouts().total;
        let http1_only = upgrade.is_some();
        let mut response = match self
            .upstreams
            .send(&admitted.permit, request, http1_only)
            .await
        {
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
        let counter = Arc::clone(&outcome.bytes_down);
        let body = CountingBody::guarded(body, counter, Some(deadline), outcome);
        tracing::info!(status = parts.status.as_u16(), "call forwarded");
        Response::from_parts(parts, body.boxed())
    }
}

/// Routes, identifies and adjudicates a call, and prepares the request head
/// for the upstream. Fills in the record as it learns things. Synchronous and
/// free of I/O: nothing has left clawgate yet.
fn admit(
    peer: &Peer,
    policy: &Arc<Policy>,
    inside: Option<&Inside>,
    mut parts: Parts,
    record: &mut DecisionRecord,
) -> Result<Admitted, Reason> {
    // Identity first: a call from an unknown agent learns nothing about
    // routes and resolves no name.
    let agent = policy.agent_for(&peer.identity.names);
    if let Some(agent) = agent {
        let name = &policy.agent(agent).name;
        tracing::Span::current().record("agent.id", name.as_str());
        record.agent = Some(name.clone());
    }
    let routed = match inside {
        Some(inside) => route_inside(inside, &parts),
        None => route(&parts_request(&parts)),
    };
    if let Some(inside) = inside {
        record.detail = Some(format!("inside connect {}", inside.connect_id));
    }
    let routed = match routed {
        Ok(routed) => routed,
        Err(e) => {
            record.path = Some(parts.uri.path().to_owned());
            tracing::info!(error = %e, "request not routable");
            return Err(if agent.is_none() {
                Reason::UnknownAgent
            } else {
                Reason::MalformedRequest
            });
        }
    };
    record.mode = Some(routed.mode.as_str().to_owned());
    let (target, path) = match &routed.destination {
        Destination::Route { route, path } => {
            // Until a scope is known, the record keeps the route the agent tried.
            record.path = Some(format!("/{route}{path}"));
            (Target::Route(route), path.as_str())
        }
        Destination::Host { host, port, path } => {
            record.host = Some(host.clone());
            record.path = Some(path.clone());
            (Target::Host { host, port: *port }, path.as_str())
        }
        // CONNECT never reaches here (see `Pipeline::handle`).
        Destination::Connect { host, .. } => {
            record.host = Some(host.clone());
            return Err(if agent.is_none() {
                Reason::UnknownAgent
            } else {
                Reason::MalformedRequest
            });
        }
    };
    let call = Call {
        peer: &peer.identity.names,
        target,
        method: parts.method.as_str(),
        path,
    };
    let decision = decide(&call, policy);
    describe(&decision, policy, record);
    if decision.scope().is_some() && matches!(target, Target::Route(_)) {
        // Inside a scope, the record holds the path the rules matched.
        record.path = Some(path.to_owned());
    }
    let permit = Permitted::new(policy, &decision).ok_or(decision.reason())?;
    let scope = permit.scope();
    // The path the upstream sees: the base path joined with the path below
    // the route, or the agent's full path in forward-proxy mode.
    let upstream_path = encode_path(&match target {
        Target::Route(_) => format!("{}{path}", scope.upstream.base_path),
        Target::Host { .. } | Target::Connect { .. } => path.to_owned(),
    });
    // Inside an intercepted tunnel the agent spoke TLS to the host and port
    // it named, so the call goes there over verified TLS, never in clear.
    let upstream = match inside {
        Some(inside) => Upstream {
            scheme: http::uri::Scheme::HTTPS,
            port: inside.port,
            ..scope.upstream.clone()
        },
        None => scope.upstream.clone(),
    };

    // Prepare the upstream request head; a credential that cannot be injected
    // is a refusal, recorded as such, before anything leaves.
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    if let Some(credential) = &scope.credential {
        record.credential_kind = Some(credential.kind().to_owned());
        record.credential_ref = Some(credential.source.to_string());
        credential.inject(&mut parts.headers).map_err(|e| {
            tracing::warn!(error = %e, "credential not injected");
            Reason::CredentialUnavailable
        })?;
    }
    parts.uri = upstream_uri(&upstream, &upstream_path, routed.query.as_deref())?;
    parts.version = Version::HTTP_11;
    Ok(Admitted { permit, parts })
}

/// Routes a request inside an intercepted tunnel: the host and port are the
/// ones the `CONNECT` named and policy allowed, whatever `Host` or
/// `:authority` the agent sends inside.
fn route_inside(inside: &Inside, parts: &Parts) -> Result<Routed, crate::route::RouteError> {
    if !parts
        .method
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_uppercase())
    {
        return Err(crate::route::RouteError::BadMethod);
    }
    Ok(Routed {
        mode: Mode::Intercept,
        destination: Destination::Host {
            host: inside.host.to_string(),
            port: Some(inside.port),
            path: normalise_path(parts.uri.path())?,
        },
        query: parts.uri.query().map(str::to_owned),
    })
}

/// A body-less request view of `parts`, for routing.
fn parts_request(parts: &Parts) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    req
}

/// Copies what the decision says into the record.
fn describe(decision: &Decision, policy: &Policy, record: &mut DecisionRecord) {
    if let Some(scope) = decision.scope().map(|id| policy.scope(id)) {
        tracing::Span::current().record("scope.id", scope.name.as_str());
        tracing::Span::current().record("upstream.host", scope.upstream.host.as_str());
        record.scope = Some(scope.name.clone());
        record.host = Some(scope.upstream.host.clone());
    }
    record.rule = decision.rule().map(str::to_owned);
    record.would_deny = decision.would_deny().map(|r| r.code().to_owned());
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
        if self.reason == Reason::Allowed && !self.finished {
            // The response body was abandoned before its end.
            self.reason = Reason::ClientCancelled;
        }
        record.ts = crate::audit::now_rfc3339();
        record.reason = self.reason.code().to_owned();
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
