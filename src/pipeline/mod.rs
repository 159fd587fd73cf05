//! One call, in order: route → identify and adjudicate → sentinels and
//! credential ([`admit`]) → record the decision → forward → record the
//! outcome. Credential vending ([`vend`]) is a call of its own kind.
//!
//! Invariants:
//! - Exactly one decision record per call: a [`CallRecord`] made when the
//!   call starts (here, in [`crate::connect`] and in [`vend`]), filled in by
//!   each step and committed once, before anything is forwarded; dropped
//!   uncommitted on any path it still writes one. If it cannot be committed
//!   the call is refused with `audit-unavailable` (fail closed).
//! - An allowed call gets exactly one outcome record, emitted when its response
//!   body is dropped (finished, failed or abandoned by the agent), when its
//!   tunnel or upgraded socket closes, or at once when the upstream cannot be
//!   reached.
//! - Requests inside an intercepted tunnel are calls like any other: routed to
//!   the host and port the `CONNECT` named, then the same order.
//! - The policy a call starts with is the policy it finishes with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

mod admit;
mod ask;
mod credential;
mod held;
mod mcp;
pub mod vend;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, field};

use crate::audit::AuditLog;
use crate::body::{CountingBody, FailureFlag, ProxyBody};
use crate::credentials::Broker;
use crate::error::{REQUEST_ID_HEADER, Reason, Refusal, Via};
use crate::forward::{Upstreams, strip_hop_by_hop};
use crate::identity::PeerIdentity;
use crate::intercept::Interceptor;
use crate::lapse::Lapses;
use crate::limits::{LimitStore, Limits};
use crate::metrics::{Metrics, Stage};
use crate::overrides::Overrides;
use crate::policy::Policy;
use crate::record::{CallRecord, InFlight, Outcome};
use crate::route::Inside;
use crate::token::Verifier;

pub(crate) use admit::run_token;
use admit::{Admission, Admitted};
pub use held::BodyLimits;

/// Who is on the other end of one TLS connection.
#[derive(Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// What its verified certificate proves (on the token listener, the
    /// names of the agent its token or proxy key claims).
    pub identity: PeerIdentity,
    /// The SHA-256 of the proxy key it presented on the token listener;
    /// checked against the policy in force on every call.
    pub proxy_key: Option<[u8; 32]>,
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
    /// Flips to `true` when shutdown begins: a call ended from then on
    /// without a decision is recorded `shutdown`.
    shutting_down: watch::Sender<bool>,
    rates: Arc<dyn LimitStore>,
    overrides: Arc<Overrides>,
    metrics: Metrics,
    tokens: Verifier,
    mcp: Arc<crate::mcp::McpState>,
    lapses: Lapses,
    live: Arc<crate::live::Live>,
    needles: crate::response::guard::NeedleCache,
    /// Exports one span per call, when `serve --otlp-endpoint` is given.
    tracer: Option<crate::trace::Tracer>,
    approvals: Arc<crate::approvals::Approvals>,
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
            shutting_down: watch::Sender::new(false),
            rates: Arc::new(Limits::default()),
            overrides: parts.overrides,
            metrics: Metrics::default(),
            tokens: Verifier::none(),
            lapses: Lapses::default(),
            live: Arc::default(),
            mcp: Arc::new(crate::mcp::McpState::ephemeral()),
            needles: crate::response::guard::NeedleCache::default(),
            tracer: None,
            approvals: Arc::new(crate::approvals::Approvals::in_memory()),
        }
    }

    /// The pipeline, keeping approvals in `approvals`.
    pub fn with_approvals(self, approvals: Arc<crate::approvals::Approvals>) -> Pipeline {
        Pipeline { approvals, ..self }
    }

    /// Approvals for `[[scope.ask]]` rules.
    pub fn approvals(&self) -> &Arc<crate::approvals::Approvals> {
        &self.approvals
    }

    /// The pipeline, hashing MCP arguments with this state's key.
    pub fn with_mcp(self, mcp: crate::mcp::McpState) -> Pipeline {
        Pipeline {
            mcp: Arc::new(mcp),
            ..self
        }
    }

    /// Live tunnels, WebSockets and kept-alive connections that overrides
    /// and reloads can end.
    pub fn live(&self) -> &Arc<crate::live::Live> {
        &self.live
    }

    /// Ends every tunnel and intercepted connection (at shutdown, after the
    /// drain timeout).
    pub fn end_tunnels(&self) {
        self.shutting_down.send_replace(true);
        self.stopping.send_replace(true);
    }

    /// The pipeline, keeping rate limits in `store` (shared by a fleet)
    /// instead of in this process.
    pub fn with_limits(self, store: Arc<dyn LimitStore>) -> Pipeline {
        Pipeline {
            rates: store,
            ..self
        }
    }

    /// Where the rate limits live.
    pub fn limits(&self) -> &Arc<dyn LimitStore> {
        &self.rates
    }

    /// Marks the start of shutdown: calls ended from now on before they
    /// were decided are recorded `shutdown`, not `client-cancelled`.
    pub fn begin_shutdown(&self) {
        self.shutting_down.send_replace(true);
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
        self.lapses.changed();
    }

    /// The lapses of exceptions and overrides.
    pub fn lapses(&self) -> &Lapses {
        &self.lapses
    }

    /// Records every lapse due by `now` before the caller records a decision
    /// taken at `now` (cause before effect; see [`crate::lapse`]).
    pub fn settle_lapses(&self, now: SystemTime) {
        self.lapses
            .settle(&self.policy.load(), &self.overrides, &self.audit, now);
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
        self.in_flight.wait_idle(limit).await
    }

    /// Exports a span for every call through `tracer`.
    pub fn with_tracer(mut self, tracer: crate::trace::Tracer) -> Pipeline {
        self.tracer = Some(tracer);
        self
    }

    /// The span exporter, when traces are exported.
    pub fn tracer(&self) -> Option<&crate::trace::Tracer> {
        self.tracer.as_ref()
    }

    /// The record of a call that starts now; `outcome` when an allowed call
    /// is followed by an outcome record.
    pub(crate) fn start_record(&self, request_id: &str, outcome: bool) -> CallRecord {
        CallRecord::start(
            &self.audit,
            request_id,
            self.shutting_down.subscribe(),
            outcome.then_some(&self.in_flight),
        )
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The decision log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The MCP state: definition pins, pending lists.
    pub fn mcp(&self) -> &crate::mcp::McpState {
        &self.mcp
    }

    /// Runs one request from inside an intercepted `CONNECT`.
    pub(crate) async fn handle_inside(
        &self,
        peer: &Peer,
        inside: &Inside,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        // The run token the CONNECT proved holds for the whole tunnel.
        if let Some(token) = &inside.run_token {
            req.headers_mut()
                .insert(crate::token::RUN_TOKEN_HEADER, token.clone());
        }
        self.call(peer, Some(inside), req).await
    }

    pub(crate) async fn call(
        &self,
        peer: &Peer,
        inside: Option<&Inside>,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
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
            let now = SystemTime::now();
            self.settle_lapses(now);
            // The policy is read once: a reload mid-call does not change it.
            let policy = self.policy.load_full();
            // Made first: from here on, whatever happens to this task, the
            // call leaves exactly one decision record.
            let mut record = self.start_record(&request_id, true);
            // An absolute-form request or one inside a tunnel is talking to a
            // proxy: its refusals say so in `Proxy-Status`.
            record.via = if inside.is_some()
                || (req.version() != http::Version::HTTP_2 && req.uri().authority().is_some())
            {
                Via::Proxy
            } else {
                Via::Server
            };
            record.client_addr = Some(peer.addr.to_string());
            record.cert_fp = Some(peer.identity.fingerprint.clone());
            record.method = Some(req.method().as_str().to_owned());
            record.policy_digest = Some(policy.digest().to_owned());
            if let Some(tracer) = &self.tracer {
                // The upstream sees clawgate's span as the parent, in the
                // agent's trace when it sent one.
                let span = tracer.start(req.headers().get(crate::trace::TRACEPARENT));
                if let Ok(value) = HeaderValue::from_str(&span.context().traceparent()) {
                    req.headers_mut().insert(crate::trace::TRACEPARENT, value);
                }
                record.trace(span);
            }

            let (parts, body) = req.into_parts();
            let admission = Admission {
                peer,
                inside,
                policy: &policy,
                broker: &self.broker,
                limits: self.limits,
                request_id: &request_id,
                now,
                rates: &*self.rates,
                overrides: &self.overrides,
                metrics: &self.metrics,
                tokens: &self.tokens,
                mcp: &self.mcp,
                approvals: &self.approvals,
                audit: &self.audit,
            };
            let verdict = admission.admit(parts, held::boxed(body), &mut record).await;

            let reason = verdict
                .as_ref()
                .err()
                .map_or(Reason::Allowed, Refusal::reason);
            let effect = if reason == Reason::Allowed {
                "allow"
            } else {
                "deny"
            };
            self.metrics
                .call(effect, reason.code(), record.scope.as_deref());
            let span = tracing::Span::current();
            span.record("decision.effect", effect);
            span.record("decision.reason", reason.code());
            let via = record.via;
            // An MCP message is refused in JSON-RPC, with its id.
            let mcp_message = record
                .mcp
                .clone()
                .filter(|m| m.method != "GET" && m.method != "DELETE");
            // The one place a decision is committed, on every path.
            let outcome = match record.commit(verdict.as_ref().map(|_| ())).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return Refusal::from(Reason::AuditUnavailable).response(&request_id, via);
                }
            };
            match (verdict, outcome) {
                (Ok(admitted), Some(outcome)) => {
                    let upgrade = upgrade.map(|(value, on)| (value, on, peer));
                    self.forward(admitted, outcome, &request_id, upgrade, via)
                        .await
                }
                (Err(refusal), _) => {
                    tracing::debug!("call refused");
                    match &mcp_message {
                        Some(message) => refusal.mcp_response(&request_id, via, message),
                        None => refusal.response(&request_id, via),
                    }
                }
                (Ok(_), None) => Refusal::from(Reason::AuditUnavailable).response(&request_id, via),
            }
        }
        .instrument(span)
        .await
    }

    /// Splices an upgraded connection in its own task, registered as live
    /// so that overrides and reloads can end it.
    fn splice_upgrade(
        &self,
        (agent_side, upstream_side): (hyper::upgrade::OnUpgrade, hyper::upgrade::OnUpgrade),
        outcome: Outcome,
        peer: &Peer,
        guard: Option<crate::response::guard::Guard>,
    ) {
        let stopping = self.stopping.subscribe();
        let membership = self.live.register(
            outcome.subject(peer),
            outcome.policy_digest().unwrap_or_default(),
        );
        tokio::spawn(
            crate::upgrade::splice(
                agent_side,
                upstream_side,
                outcome,
                (stopping, membership),
                guard,
            )
            .in_current_span(),
        );
        tracing::debug!("upgrade forwarded");
    }

    /// The reflection guard of an admitted call: `None` when its scope says
    /// `reflection = "off"` or nothing was injected.
    fn reflection_guard(
        &self,
        permit: &crate::policy::Permitted,
        injected: &[Arc<secrecy::SecretString>],
    ) -> Option<crate::response::guard::Guard> {
        let scope = permit.scope();
        if scope.reflection == crate::policy::Reflection::Off {
            return None;
        }
        let needles = self.needles.get(injected)?;
        crate::response::guard::Guard::new(
            needles,
            scope.reflection,
            &scope.name,
            self.metrics.reflections(),
        )
    }

    async fn forward(
        &self,
        admitted: Admitted,
        mut outcome: Outcome,
        request_id: &str,
        upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade, &Peer)>,
        via: Via,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = admitted.request.into_parts();
        let head = parts.method == http::Method::HEAD;
        let guard = self.reflection_guard(&admitted.permit, &admitted.injected);
        if let Some((value, _, _)) = &upgrade {
            crate::upgrade::restore(&mut parts.headers, value);
            if guard.is_some() {
                // Compressed frames could not be scanned: not offered.
                parts.headers.remove(http::header::SEC_WEBSOCKET_EXTENSIONS);
            }
        }
        let upload_failed = FailureFlag::default();
        let upstream_body = CountingBody::guarded(
            body,
            Arc::clone(&outcome.bytes_up),
            None,
            upload_failed.clone(),
        );
        let request = Request::from_parts(parts, upstream_body);
        let deadline = outcome.started() + self.upstreams.timeouts().total;
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
                return Refusal::from(reason).response(request_id, via);
            }
        };
        if let Some((value, agent_side, peer)) = upgrade
            && response.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream_side = hyper::upgrade::on(&mut response);
            let (mut parts, _) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(guard) = &guard {
                outcome.watch_reflection(Arc::clone(&guard.tally));
                if guard.headers(&mut parts.headers, "header").is_err() {
                    return reflected(outcome, None, request_id, via);
                }
            }
            crate::upgrade::restore(&mut parts.headers, &value);
            if let Ok(id) = HeaderValue::from_str(request_id) {
                parts.headers.insert(REQUEST_ID_HEADER, id);
            }
            outcome.status = Some(parts.status.as_u16());
            outcome.reason = Reason::Allowed;
            self.splice_upgrade((agent_side, upstream_side), outcome, peer, guard);
            let empty = http_body_util::Empty::new().map_err(|never| match never {});
            return Response::from_parts(parts, empty.boxed());
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(id) = HeaderValue::from_str(request_id) {
            parts.headers.insert(REQUEST_ID_HEADER, id);
        }
        let mut body: ProxyBody = body.map_err(Into::into).boxed();
        if let Some(guard) = &guard {
            outcome.watch_reflection(Arc::clone(&guard.tally));
            body = match guard.response(&mut parts, body, head, deadline).await {
                Ok(body) => body,
                Err(refused) => return reflected(outcome, Some(refused), request_id, via),
            };
        }
        outcome.status = Some(parts.status.as_u16());
        outcome.reason = Reason::Allowed;
        let (body, deadline) = match admitted.mcp {
            Some(mut exchange) => {
                let inspector = crate::mcp::results::Inspector::new(
                    &exchange.rules.results,
                    exchange.enforce,
                    self.needles.get(&admitted.injected),
                );
                outcome.watch_results(inspector.clone());
                exchange.results = Some(inspector);
                match self.mcp_response(exchange, &mut parts, body, &mut outcome, request_id, via) {
                    Ok(body) => (body, None),
                    Err(refusal) => return *refusal,
                }
            }
            None => (body, Some(deadline)),
        };
        let counter = Arc::clone(&outcome.bytes_down);
        let body = CountingBody::guarded(body, counter, deadline, outcome);
        // Per call: debug. The decision log is the per-call record.
        tracing::debug!(status = parts.status.as_u16(), "call forwarded");
        Response::from_parts(parts, body.boxed())
    }
}

/// The answer to a response the reflection guard refused before its head
/// was sent: a 502 `credential-reflected`, and an outcome record saying why.
fn reflected(
    mut outcome: Outcome,
    refused: Option<crate::response::guard::Refused>,
    request_id: &str,
    via: Via,
) -> Response<ProxyBody> {
    if let Some(crate::response::guard::Refused::Unreadable) = refused {
        let reason = Reason::UpstreamUnreachable;
        outcome.status = Some(reason.status().as_u16());
        outcome.reason = reason;
        drop(outcome);
        return Refusal::from(reason).response(request_id, via);
    }
    let reason = Reason::CredentialReflected;
    if let Some(crate::response::guard::Refused::Unscannable(coding)) = refused {
        outcome.add_detail(&format!(
            "credential-reflected: content-encoding `{coding}` cannot be scanned"
        ));
    }
    tracing::warn!("response refused by the reflection guard");
    outcome.status = Some(reason.status().as_u16());
    outcome.reason = reason;
    drop(outcome);
    Refusal::from(reason).response(request_id, via)
}
