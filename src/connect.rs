//! `CONNECT host:port`: identify, decide on the host, check the egress
//! address, then tunnel or intercept.
//!
//! - **tunnel**: bytes are spliced between the agent and the address that
//!   passed the egress check. The decision is host-level; the outcome record
//!   holds bytes each way and the duration.
//! - **intercept**: clawgate answers the `CONNECT`, terminates the agent's TLS
//!   with a leaf minted for the host, and serves HTTP/1.1 and HTTP/2 inside.
//!   Every request inside runs the whole pipeline (decide on method and path,
//!   inject the credential, forward, record) as mode `intercept`.
//!
//! Invariants: identity comes first (a `CONNECT` from an unknown agent
//! resolves no name and opens no connection); the `CONNECT` gets exactly one
//! decision record, committed before any byte is spliced or any leaf is
//! served, and, when allowed, one outcome record when the tunnel ends.

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tracing::{Instrument, field};

use crate::body::ProxyBody;
use crate::egress::{self, EgressError, Host};
use crate::error::{REQUEST_ID_HEADER, Reason, Refusal, Via};
use crate::pipeline::{Peer, Pipeline};
use crate::policy::{Call, ConnectMode, Permitted, Policy, Strictness, Target, decide};
use crate::record::{CallRecord, Outcome};
use crate::route::{Destination, Inside, Mode, route};
use crate::upgrade::{Counted, closed_by_peer};

/// An allowed `CONNECT`, ready to be answered.
enum Plan {
    Tunnel {
        host: Host,
        port: u16,
        addrs: Vec<std::net::SocketAddr>,
        /// What the scope lets through unchecked in the ClientHello.
        strictness: Strictness,
    },
    Intercept {
        inside: Inside,
        tls: Arc<ServerConfig>,
    },
}

impl Pipeline {
    /// Handles a `CONNECT`. Never fails: every problem is a refusal.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        peer: &Arc<Peer>,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let request_id = uuid::Uuid::now_v7().to_string();
        let span = tracing::info_span!(
            "connect",
            request.id = %request_id,
            agent.id = field::Empty,
            run.id = field::Empty,
            scope.id = field::Empty,
            decision.effect = field::Empty,
            decision.reason = field::Empty,
            upstream.host = field::Empty,
        );
        let pipeline = Arc::clone(self);
        let peer = Arc::clone(peer);
        async move {
            let policy = pipeline.policy();
            // Made first: a CONNECT cancelled mid resolve still leaves its
            // decision record.
            let mut record = pipeline.start_record(&request_id, true);
            record.via = Via::Proxy;
            record.mode = Some(Mode::Connect.as_str().to_owned());
            record.client_addr = Some(peer.addr.to_string());
            record.cert_fp = Some(peer.identity.fingerprint.clone());
            record.method = Some("CONNECT".into());
            record.policy_digest = Some(policy.digest().to_owned());

            let verdict = pipeline
                .plan(&peer, &policy, &req, &request_id, &mut record)
                .await;
            let reason = verdict
                .as_ref()
                .err()
                .map_or(Reason::Allowed, Refusal::reason);
            let effect = if reason == Reason::Allowed {
                "allow"
            } else {
                "deny"
            };
            pipeline
                .metrics()
                .call(effect, reason.code(), record.scope.as_deref());
            let span = tracing::Span::current();
            span.record("decision.effect", effect);
            span.record("decision.reason", reason.code());
            let refused = |refusal: &Refusal| refusal.response(&request_id, Via::Proxy);
            // What an open tunnel was allowed as, for overrides and reloads;
            // the host as `decide` saw it, so a reload decides it again on
            // the same terms.
            let subject = crate::live::Subject {
                names: peer.identity.names.clone(),
                agent: record.agent.clone(),
                serial: (!peer.identity.serial.is_empty()).then(|| peer.identity.serial.clone()),
                scope: record.scope.clone(),
                connect: match &verdict {
                    Ok(Plan::Tunnel { port, .. }) => record.host.clone().map(|h| (h, *port)),
                    Ok(Plan::Intercept { inside, .. }) => {
                        record.host.clone().map(|h| (h, inside.port))
                    }
                    Err(_) => None,
                },
                proxy_key: peer.proxy_key,
            };
            let Ok(outcome) = record.commit(verdict.as_ref().map(|_| ())).await else {
                return refused(&Reason::AuditUnavailable.into());
            };
            let (plan, mut outcome) = match (verdict, outcome) {
                (Ok(plan), Some(outcome)) => (plan, outcome),
                (Err(refusal), _) => {
                    tracing::debug!("connect refused");
                    return refused(&refusal);
                }
                (Ok(_), None) => return refused(&Reason::AuditUnavailable.into()),
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            let upstream = match &plan {
                Plan::Tunnel { host, addrs, .. } => {
                    let limit = pipeline.upstreams.timeouts().connect;
                    match egress::connect_checked(host, addrs, limit).await {
                        Ok(stream) => Some(stream),
                        Err(e) => {
                            tracing::warn!(error = %e, "tunnel upstream unreachable");
                            let reason = match e {
                                EgressError::Timeout(_) => Reason::UpstreamTimeout,
                                _ => Reason::UpstreamUnreachable,
                            };
                            outcome.status = Some(reason.status().as_u16());
                            outcome.reason = reason;
                            drop(outcome);
                            return refused(&reason.into());
                        }
                    }
                }
                Plan::Intercept { .. } => None,
            };
            outcome.status = Some(200);
            outcome.reason = Reason::Allowed;
            let membership = pipeline.live().register(subject, policy.digest());
            let task = Arc::clone(&pipeline).run_tunnel(
                plan,
                upstream,
                on_upgrade,
                (peer, membership),
                outcome,
            );
            tokio::spawn(task.in_current_span());
            tracing::debug!("connect allowed");
            let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
            if let Ok(id) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, id);
            }
            response
        }
        .instrument(span)
        .await
    }

    /// Identifies, decides and checks the egress address. Fills in the
    /// record as it learns things.
    async fn plan(
        &self,
        peer: &Peer,
        policy: &Arc<Policy>,
        req: &Request<Incoming>,
        request_id: &str,
        record: &mut CallRecord,
    ) -> Result<Plan, Refusal> {
        let (run, now) = self.connect_agent(peer, policy, req, record)?;
        let (host, port) = connect_target(req, record)?;
        record.host = Some(host.clone());
        record.detail = Some(format!("port {port}"));
        let call = Call {
            peer: &peer.identity.names,
            target: Target::Connect { host: &host, port },
            method: "CONNECT",
            path: "/",
            aws: None,
            mcp: None,
            now,
        };
        let decision = decide(&call, policy);
        if let Some(scope) = decision.scope().map(|id| policy.scope(id)) {
            tracing::Span::current().record("scope.id", scope.name.as_str());
            tracing::Span::current().record("upstream.host", scope.upstream.host.as_str());
            record.scope = Some(scope.name.clone());
            record.detail = Some(format!("{} port {port}", scope.connect.as_str()));
        }
        let permit = Permitted::new(policy, &decision).ok_or(decision.reason())?;
        let scope = permit.scope();
        if let Some(allowed) = run.as_ref().and_then(|c| c.scopes.as_ref())
            && !allowed.contains(&scope.name)
        {
            // The token narrows: a scope it leaves out is refused.
            return Err(Reason::RunTokenScope.into());
        }
        if let Some(o) = self
            .overrides()
            .refusing(None, None, Some(&scope.name), now)
        {
            record.add_detail(&format!("override {}", o.id));
            return Err(o.kind.reason().into());
        }
        let host = egress::normalise_host(&host).map_err(|_| Reason::MalformedRequest)?;
        let addrs = self.checked_addrs(&host, port, scope, record).await?;
        match scope.connect {
            ConnectMode::Tunnel => Ok(Plan::Tunnel {
                host,
                port,
                addrs,
                strictness: scope.strictness,
            }),
            ConnectMode::Intercept => {
                let tls = self.interceptor.server_config(&host).map_err(|e| {
                    tracing::error!(error = %e, "cannot mint an interception leaf");
                    Reason::MalformedRequest
                })?;
                Ok(Plan::Intercept {
                    inside: Inside {
                        host,
                        port,
                        connect_id: request_id.to_owned(),
                        // A token peer has no other identity inside.
                        run_token: run
                            .is_some()
                            .then(|| req.headers().get(crate::token::RUN_TOKEN_HEADER).cloned())
                            .flatten(),
                    },
                    tls,
                })
            }
        }
    }

    /// Who the agent is (certificate or proxy key), its run token, and the
    /// overrides that refuse it; fills in the record as it learns.
    fn connect_agent(
        &self,
        peer: &Peer,
        policy: &Arc<Policy>,
        req: &Request<Incoming>,
        record: &mut CallRecord,
    ) -> Result<(Option<crate::token::Claims>, std::time::SystemTime), Refusal> {
        // What the agent asked for, for the record whatever follows.
        record.host = req.uri().host().map(str::to_owned);
        // Identity before anything else: an unknown agent's CONNECT resolves
        // no name and opens no connection.
        let now = std::time::SystemTime::now();
        let agent = match &peer.proxy_key {
            // A proxy key proves its agent against the policy in force.
            Some(sha256) => Some(crate::token::proxy_key::identify(
                policy,
                self.overrides(),
                sha256,
                now,
                record,
            )?),
            None => policy.agent_for(&peer.identity.names),
        };
        let Some(agent) = agent else {
            // Without a certificate (the token listener) and without a
            // token, the answer asks for one.
            if peer.identity.fingerprint.is_empty()
                && !req.headers().contains_key(crate::token::RUN_TOKEN_HEADER)
            {
                return Err(Refusal::Unauthenticated(crate::error::Challenge::Proxy));
            }
            if peer.proxy_key.is_none() {
                record.add_detail(&peer.identity.names_note());
            }
            return Err(Reason::UnknownAgent.into());
        };
        let name = &policy.agent(agent).name;
        tracing::Span::current().record("agent.id", name.as_str());
        record.agent = Some(name.clone());
        // The run token, as on every path: it must name this agent, its run
        // goes into the record, and it narrows the scopes.
        let run = crate::pipeline::run_token(
            self.tokens(),
            req.headers().get(crate::token::RUN_TOKEN_HEADER),
            &peer.identity,
            record,
        )?;
        // Overrides right after identity, as for every other call: an
        // isolated agent or a revoked certificate opens no tunnel.
        let now = std::time::SystemTime::now();
        self.settle_lapses(now);
        let serial = &peer.identity.serial;
        if let Some(o) = self.overrides().refusing(
            Some(name.as_str()),
            (!serial.is_empty()).then_some(serial.as_str()),
            None,
            now,
        ) {
            record.host = req.uri().host().map(str::to_owned);
            record.add_detail(&format!("override {}", o.id));
            return Err(o.kind.reason().into());
        }
        Ok((run, now))
    }

    /// Resolves the tunnel's target and checks every address against the
    /// scope's egress rules, before the decision is recorded, so the record
    /// says why; a tunnel then connects only to these addresses.
    async fn checked_addrs(
        &self,
        host: &Host,
        port: u16,
        scope: &crate::policy::Scope,
        record: &mut CallRecord,
    ) -> Result<Vec<std::net::SocketAddr>, Refusal> {
        egress::resolve_checked(host, port, &scope.allow_private, self.upstreams.pins())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "connect target refused or unresolvable");
                if let EgressError::Blocked(blocked) = &e {
                    record.detail =
                        Some(format!("{} port {port}: {blocked}", scope.connect.as_str()));
                }
                match e {
                    EgressError::Blocked(_) => Reason::EgressAddressBlocked,
                    EgressError::Timeout(_) => Reason::UpstreamTimeout,
                    _ => Reason::UpstreamUnreachable,
                }
            })
            .map_err(Refusal::from)
    }

    /// Runs an allowed tunnel until either side ends it or clawgate stops;
    /// the outcome record is written when `outcome` drops.
    async fn run_tunnel(
        self: Arc<Self>,
        plan: Plan,
        upstream: Option<TcpStream>,
        on_upgrade: hyper::upgrade::OnUpgrade,
        (peer, mut membership): (Arc<Peer>, crate::live::Membership),
        mut outcome: Outcome,
    ) {
        let mut stopping = self.stopping.subscribe();
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "connect was not upgraded");
                return;
            }
        };
        let mut agent = Counted {
            inner: TokioIo::new(upgraded),
            read: Arc::clone(&outcome.bytes_up),
            written: Arc::clone(&outcome.bytes_down),
        };
        let work = async {
            match (plan, upstream) {
                (
                    Plan::Tunnel {
                        host, strictness, ..
                    },
                    Some(mut upstream),
                ) => {
                    // The ClientHello is checked before any byte of it
                    // reaches the upstream.
                    if !self
                        .tunnel_carries_host(
                            &mut agent,
                            &mut upstream,
                            &host,
                            strictness,
                            &mut outcome,
                        )
                        .await
                    {
                        return;
                    }
                    match tokio::io::copy_bidirectional(&mut agent, &mut upstream).await {
                        Ok(_) => outcome.closed(),
                        // Either end hanging up abruptly is how most TLS
                        // sessions end; the tunnel itself did its work.
                        Err(e) if closed_by_peer(&e) => {
                            tracing::debug!(error = %e, "tunnel closed by a peer");
                            outcome.closed();
                        }
                        Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
                    }
                }
                (Plan::Intercept { inside, tls }, _) => {
                    let tls = match crate::accept::inner_handshake(agent, tls).await {
                        Ok(tls) => tls,
                        Err(why) => {
                            tracing::debug!(%why, "intercepted handshake failed");
                            return;
                        }
                    };
                    let inside = Arc::new(inside);
                    let pipeline = Arc::clone(&self);
                    let service = service_fn(move |req| {
                        let pipeline = Arc::clone(&pipeline);
                        let peer = Arc::clone(&peer);
                        let inside = Arc::clone(&inside);
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                pipeline.handle_inside(&peer, &inside, req).await,
                            )
                        }
                    });
                    let builder = crate::accept::http_builder();
                    match builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await
                    {
                        Ok(()) => outcome.closed(),
                        // The agent hung up between requests: a normal end.
                        Err(e) if !cut_mid_exchange(&*e) => {
                            tracing::debug!(error = %e, "intercepted connection closed by the agent");
                            outcome.closed();
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "intercepted connection cut mid-exchange");
                        }
                    }
                }
                (Plan::Tunnel { .. }, None) => {}
            }
        };
        tokio::select! {
            () = work => {}
            ended = membership.ended() => {
                tracing::debug!(reason = %ended.reason, "tunnel ended: no longer allowed");
                outcome.ended(ended);
            }
            _ = stopping.wait_for(|stop| *stop) => {
                tracing::debug!("tunnel ended at shutdown");
            }
        }
    }
}

impl Pipeline {
    /// Reads the tunnel's ClientHello and judges it against the `CONNECT`
    /// target; when allowed, sends what was read on to the upstream. The
    /// record gets the server name either way; a refusal is the outcome's
    /// reason (and a `deny` in the metrics), and the tunnel is cut.
    async fn tunnel_carries_host<A>(
        &self,
        agent: &mut A,
        upstream: &mut TcpStream,
        host: &Host,
        strictness: Strictness,
        outcome: &mut Outcome,
    ) -> bool
    where
        A: tokio::io::AsyncRead + Unpin,
    {
        use crate::client_hello::{HELLO_TIMEOUT, Hello, ReadError, judge, read};
        let mut start = Vec::new();
        let hello = match read(agent, &mut start, HELLO_TIMEOUT).await {
            Ok(hello) => hello,
            // A protocol whose server speaks first sends nothing.
            Err(ReadError::Timeout(_)) => Hello::NotTls {
                why: "no ClientHello in time",
            },
            Err(ReadError::Closed) => {
                outcome.closed();
                return false;
            }
            Err(e) => {
                tracing::info!(error = %e, "tunnel ended before its ClientHello");
                return false;
            }
        };
        match judge(&hello, host, strictness) {
            Ok(detail) => {
                outcome.note(&detail);
                if let Err(e) = tokio::io::AsyncWriteExt::write_all(upstream, &start).await {
                    tracing::info!(error = %e, "tunnel upstream failed");
                    return false;
                }
                true
            }
            Err((reason, detail)) => {
                tracing::warn!(reason = %reason, %detail, "tunnel refused: its ClientHello");
                outcome.reason = reason;
                outcome.finished = true;
                outcome.note(&detail);
                let scope = outcome.record().and_then(|r| r.scope.clone());
                self.metrics().call("deny", reason.code(), scope.as_deref());
                false
            }
        }
    }
}

/// Whether an intercepted connection's error means a request was cut off
/// (rather than the agent hanging up between requests).
fn cut_mid_exchange(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_body_write_aborted())
        {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return !closed_by_peer(io);
        }
        next = error.source();
    }
    true
}

/// The `host:port` a `CONNECT` names; anything else is malformed.
fn connect_target(
    req: &Request<Incoming>,
    record: &mut CallRecord,
) -> Result<(String, u16), Refusal> {
    match route(req) {
        Ok(routed) => match routed.destination {
            Destination::Connect {
                host,
                port: Some(port),
            } => Ok((host, port)),
            _ => Err(Reason::MalformedRequest.into()),
        },
        Err(e) => {
            record.host = req.uri().host().map(str::to_owned);
            tracing::debug!(error = %e, "connect target not acceptable");
            Err(Reason::MalformedRequest.into())
        }
    }
}
