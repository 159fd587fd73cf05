//! Admission: everything between receiving a request and sending it on.
//!
//! In order, because each step needs the one before:
//! 1. identity (the certificate, narrowed by a run token when one is
//!    sent), then routing (a call from an unknown agent learns nothing);
//! 2. for a scope with an `aws` credential, the IAM action (which may need
//!    the first bytes of a form body);
//! 3. `decide`, then the overrides and rate limits of the scope it landed
//!    in (only calls policy allows spend the rate budget);
//! 4. sentinels: a placeholder headed to a host it is not bound to refuses
//!    the call; bound ones are swapped for their values;
//! 5. the scope's credential: a secret injected, or the request re-signed
//!    with minted STS credentials (last, since the signature covers the
//!    final headers and body).
//!
//! Nothing here sends anything upstream; the caller records the decision
//! first. Every failure is a [`Reason`], and the record says what was known.

use std::sync::Arc;
use std::time::SystemTime;

use secrecy::SecretString;

use http::request::Parts;
use http::{Request, Version, header};

use crate::audit::DecisionRecord;
use crate::body::ProxyBody;
use crate::credentials::sigv4;
use crate::credentials::{Broker, MintContext};
use crate::error::{Challenge, Reason, Refusal};
use crate::forward::{strip_hop_by_hop, upstream_uri};
use crate::identity::PeerIdentity;
use crate::metrics::{Metrics, Stage};
use crate::overrides::Overrides;
use crate::policy::aws::{AwsRequest, FormBody, RequestView, classify};
use crate::policy::{
    AgentId, Call, Decision, Permitted, Policy, Reflection, Scope, Target, Upstream, decide,
};
use crate::record::CallRecord;
use crate::route::{Destination, Inside, Mode, Routed, encode_path, normalise_path, route};
use crate::token::{Claims, RUN_TOKEN_HEADER, Verifier};

use super::Peer;
use super::held::{BodyLimits, Held};

/// A call that may go upstream: the permit and the prepared request.
pub(super) struct Admitted {
    pub permit: Permitted,
    pub request: Request<ProxyBody>,
    /// For a request to an MCP endpoint: what the way back needs.
    pub mcp: Option<super::mcp::Exchange>,
    /// Every value clawgate put into the request (the scope's secret,
    /// sentinels' values, the STS session): what the reflection guard
    /// looks for in the response.
    pub injected: Vec<Arc<SecretString>>,
}

/// Everything admission needs besides the request.
pub(super) struct Admission<'a> {
    pub peer: &'a Peer,
    /// The intercepted `CONNECT` this request arrived in, if any.
    pub inside: Option<&'a Inside>,
    pub policy: &'a Arc<Policy>,
    pub broker: &'a Arc<Broker>,
    pub limits: BodyLimits,
    pub request_id: &'a str,
    /// The time the call is judged at (exceptions, overrides).
    pub now: SystemTime,
    pub rates: &'a dyn crate::limits::LimitStore,
    pub overrides: &'a Overrides,
    pub metrics: &'a Metrics,
    /// Verifies run tokens.
    pub tokens: &'a Verifier,
    /// MCP pins, pending lists and the argument-hash key.
    pub mcp: &'a Arc<crate::mcp::McpState>,
    /// Approvals for `[[scope.ask]]` rules.
    pub approvals: &'a crate::approvals::Approvals,
    /// The decision log (approval steps are records of their own).
    pub audit: &'a crate::audit::AuditLog,
}

/// What identification and routing established about a call.
struct Identified {
    agent: Option<AgentId>,
    run: Option<Claims>,
    routed: Routed,
}

/// A call `decide` allowed, with what it still needs on its way out.
struct Judged {
    permit: Permitted,
    /// The path the rules matched, under the route or host.
    path: String,
    query: Option<String>,
    held: Held,
    mcp: Option<super::mcp::Exchange>,
}

impl Admission<'_> {
    /// Routes, identifies and adjudicates a call, then prepares it for the
    /// upstream. Fills in the record as it learns things.
    pub async fn admit(
        &self,
        mut parts: Parts,
        body: ProxyBody,
        record: &mut CallRecord,
    ) -> Result<Admitted, Refusal> {
        let identified = self.identify(&mut parts, record)?;
        let judged = self
            .judge(&identified, &parts, Held::Stream(body), record)
            .await?;
        self.prepare(judged, parts, record).await
    }

    /// Step 1: who is calling (certificate, run token), where to (routing,
    /// which resolves no name), and whether an override refuses the agent
    /// or its certificate. The record gets mode, host, path and, where the
    /// route lands in one, the scope, so a refusal here is as complete as an
    /// allowed call's record.
    fn identify(&self, parts: &mut Parts, record: &mut CallRecord) -> Result<Identified, Refusal> {
        let policy = self.policy;
        // Identity first: a call from an unknown agent learns nothing about
        // routes, and resolves no name.
        let mut key_refused = None;
        let agent = match &self.peer.proxy_key {
            // A proxy key proves its agent against the policy in force; a
            // refusal waits until the record says where the call was headed.
            Some(sha256) => {
                crate::token::proxy_key::identify(policy, self.overrides, sha256, self.now, record)
                    .map_err(|reason| key_refused = Some(reason))
                    .ok()
            }
            None => policy.agent_for(&self.peer.identity.names),
        };
        if let Some(agent) = agent {
            let name = &policy.agent(agent).name;
            tracing::Span::current().record("agent.id", name.as_str());
            record.agent = Some(name.clone());
        } else if self.peer.proxy_key.is_none() && !self.peer.identity.fingerprint.is_empty() {
            // An unknown certificate: its names say whose it is.
            record.add_detail(&self.peer.identity.names_note());
        }
        record.path = Some(parts.uri.path().to_owned());
        let routed = match self.inside {
            Some(inside) => route_inside(inside, parts),
            None => route(&parts_request(parts)),
        };
        if let Some(inside) = self.inside {
            record.add_detail(&format!("inside connect {}", inside.connect_id));
        }
        if let Ok(routed) = &routed {
            self.describe_route(agent, routed, record);
        }
        if let Some(reason) = key_refused {
            return Err(reason.into());
        }
        let run = run_token(
            self.tokens,
            parts.headers.get(RUN_TOKEN_HEADER),
            &self.peer.identity,
            record,
        );
        // The header never goes upstream.
        parts.headers.remove(RUN_TOKEN_HEADER);
        let run = run?;
        // Overrides right after identity: an isolated agent or a revoked
        // certificate learns nothing more.
        let serial = &self.peer.identity.serial;
        if let Some(o) = self.overrides.refusing(
            record.agent.as_deref(),
            // The token listener's peers have no certificate, so no serial.
            (!serial.is_empty()).then_some(serial.as_str()),
            None,
            self.now,
        ) {
            record.add_detail(&format!("override {}", o.id));
            return Err(o.kind.reason().into());
        }
        let routed = routed.map_err(|e| {
            tracing::debug!(error = %e, "request not routable");
            if agent.is_none() {
                Reason::UnknownAgent
            } else {
                Reason::MalformedRequest
            }
        })?;
        if matches!(routed.destination, Destination::Connect { .. }) || agent.is_none() {
            // CONNECT never reaches here (see `Pipeline::handle`); a call
            // from an unknown agent is refused after routing, so its record
            // says where it was headed.
            return Err(if agent.is_none() {
                Reason::UnknownAgent
            } else {
                Reason::MalformedRequest
            }
            .into());
        }
        Ok(Identified { agent, run, routed })
    }

    /// What routing found, into the record: mode, host, path, and the scope
    /// the route lands in for this agent, if any.
    fn describe_route(&self, agent: Option<AgentId>, routed: &Routed, record: &mut CallRecord) {
        record.mode = Some(routed.mode.as_str().to_owned());
        let target = match &routed.destination {
            Destination::Route { route, path } => {
                // Until a scope is known, the record keeps the route the agent tried.
                record.path = Some(format!("/{route}{path}"));
                Target::Route(route)
            }
            Destination::Host { host, port, path } => {
                record.host = Some(host.clone());
                record.path = Some(path.clone());
                Target::Host { host, port: *port }
            }
            Destination::Connect { host, .. } => {
                record.host = Some(host.clone());
                return;
            }
        };
        if let Some((id, _)) = agent.and_then(|a| self.policy.scope_at(a, target, self.now)) {
            let scope = self.policy.scope(id);
            record.scope = Some(scope.name.clone());
            record.host = Some(scope.upstream.host.clone());
            if let Destination::Route { path, .. } = &routed.destination {
                // Inside a scope, the record holds the path the rules match.
                record.path = Some(path.clone());
            }
        }
    }

    /// Step 2: the IAM action (for an AWS scope), `decide`, the run token's
    /// narrowing, then the overrides and rate limits of the scope it landed
    /// in (only calls policy allows spend the rate budget).
    async fn judge(
        &self,
        identified: &Identified,
        parts: &Parts,
        held: Held,
        record: &mut CallRecord,
    ) -> Result<Judged, Refusal> {
        let policy = self.policy;
        let (target, path) = match &identified.routed.destination {
            Destination::Route { route, path } => (Target::Route(route), path.as_str()),
            Destination::Host { host, port, path } => {
                (Target::Host { host, port: *port }, path.as_str())
            }
            Destination::Connect { .. } => return Err(Reason::MalformedRequest.into()),
        };
        let query = identified.routed.query.clone();
        // An AWS scope decides on the IAM action, which may sit in the body.
        let aws_scope = identified
            .agent
            .and_then(|a| policy.scope_at(a, target, self.now))
            .map(|(id, _)| policy.scope(id))
            .filter(|scope| scope.aws().is_some());
        let (aws_request, held) = match aws_scope {
            Some(scope) => {
                let upstream_path = upstream_path(scope, target, path);
                let (mapped, held) = self
                    .aws_request(scope, parts, &upstream_path, query.as_deref(), held)
                    .await?;
                record.action = mapped.as_ref().map(|m| m.action.clone());
                (mapped, held)
            }
            None => (None, held),
        };
        // An MCP scope decides a JSON-RPC message, wherever it is sent, on
        // the message.
        let mcp_scope = identified
            .agent
            .and_then(|a| policy.scope_at(a, target, self.now))
            .map(|(id, _)| policy.scope(id))
            .and_then(|scope| scope.mcp.as_ref().map(|r| (scope, r)));
        let (mcp_read, held) = match mcp_scope {
            Some((scope, _)) => {
                let (read, held) = super::mcp::read(
                    self.mcp,
                    scope,
                    super::mcp::endpoint(scope, target, path).is_some(),
                    parts,
                    held,
                    self.limits.read_timeout,
                    record,
                )
                .await?;
                (Some(read), held)
            }
            None => (None, held),
        };
        let mcp_call = mcp_read.as_ref().and_then(super::mcp::Read::call);
        let call = Call {
            peer: &self.peer.identity.names,
            target,
            method: parts.method.as_str(),
            path,
            aws: aws_request.as_ref(),
            now: self.now,
            mcp: mcp_call.as_ref(),
        };
        let decided = std::time::Instant::now();
        let decision = decide(&call, policy);
        self.metrics.observe(Stage::Decide, decided.elapsed());
        describe(&decision, policy, record);
        let malformed = Some(Reason::MalformedRequest);
        if (Some(decision.reason()) == malformed || decision.would_deny() == malformed)
            && let Some(why) = crate::policy::path_hazard(path)
        {
            record.add_detail(why);
        }
        if decision.scope().is_some() && matches!(target, Target::Route(_)) {
            // Inside a scope, the record holds the path the rules matched.
            record.path = Some(path.to_owned());
        }
        let permit = Permitted::new(policy, &decision).ok_or(decision.reason())?;
        let scope = permit.scope();
        if let Some(allowed) = identified.run.as_ref().and_then(|c| c.scopes.as_ref())
            && !allowed.contains(&scope.name)
        {
            // The token narrows: a scope it leaves out is refused.
            return Err(Reason::RunTokenScope.into());
        }
        self.limit(&decision, scope, record).await?;
        // Ask after allow and the limits: deny wins over ask, and a call
        // that would be refused anyway bothers nobody.
        let held = match crate::policy::ask::ask_for(scope, &call) {
            Some(rule) => {
                let asked = super::ask::Asked {
                    rule,
                    scope,
                    call: &call,
                    query: query.as_deref(),
                };
                self.ask(asked, held, record).await?
            }
            None => held,
        };
        let mcp = match (mcp_scope, &mcp_read) {
            (Some((_, rules)), Some(read)) => {
                Some(super::mcp::exchange(self.mcp, scope, rules, read, parts))
            }
            _ => None,
        };
        let path = upstream_path(scope, target, path);
        Ok(Judged {
            permit,
            path,
            query,
            held,
            mcp,
        })
    }

    /// Step 3: sentinels, the scope's credential (a secret injected, or the
    /// request re-signed with minted STS credentials, last, since the
    /// signature covers the final headers and body), and the upstream URI.
    async fn prepare(
        &self,
        judged: Judged,
        mut parts: Parts,
        record: &mut CallRecord,
    ) -> Result<Admitted, Refusal> {
        let Judged {
            permit,
            path,
            mut query,
            mut held,
            mcp,
        } = judged;
        let scope = permit.scope();
        let upstream_path = encode_path(&path);
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        if mcp.is_some() {
            // MCP responses are read to be filtered: no compression.
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                http::HeaderValue::from_static("identity"),
            );
        }
        let ctx = MintContext {
            request_id: self.request_id.to_owned(),
            agent: record.agent.clone().unwrap_or_default(),
            run: record.run_id.clone(),
            scope: scope.name.clone(),
        };
        if mcp.is_some() && record.trace_id.is_some() {
            // Before the sentinel swap: what goes upstream is rewritten once.
            held = super::mcp::carry_trace(&mut parts, held);
        }
        let (swapped, mut injected) = self
            .swap_sentinels(scope, &mut parts, &mut query, held, &ctx, record)
            .await?;
        held = swapped;
        if scope.reflection != Reflection::Off {
            // What comes back is scanned: uncompressed is cheaper to scan.
            crate::response::guard::ask_identity(&mut parts.headers);
        }

        if let Some(credential) = &scope.credential {
            record.credential_kind = Some(credential.kind().to_owned());
            record.credential_ref = Some(credential.reference());
        }
        self.inject_credential(scope, &mut parts, &mut query, &ctx, &mut injected)
            .await?;
        if scope.aws().is_some() {
            // A presigned URL carries the agent's signature in its query.
            query = query.as_deref().and_then(sigv4::strip_presign);
        }
        // Inside an intercepted tunnel the agent spoke TLS to the host and
        // port it named, so the call goes there over verified TLS, never in
        // clear.
        let upstream = match self.inside {
            Some(inside) => Upstream {
                scheme: http::uri::Scheme::HTTPS,
                port: inside.port,
                ..scope.upstream.clone()
            },
            None => scope.upstream.clone(),
        };
        parts.uri = upstream_uri(&upstream, &upstream_path, query.as_deref())?;
        parts.version = Version::HTTP_11;
        if let Some(aws) = scope.aws() {
            held = self
                .resign(scope, aws, &ctx, &mut parts, held, record, &mut injected)
                .await?;
        }
        Ok(Admitted {
            permit,
            request: Request::from_parts(parts, held.into_body()),
            mcp,
            injected,
        })
    }

    /// The step after `decide`: an override disabling the scope, then the
    /// agent's rate and its rate in the scope.
    async fn limit(
        &self,
        decision: &Decision,
        scope: &Scope,
        record: &mut CallRecord,
    ) -> Result<(), Refusal> {
        if let Some(o) = self
            .overrides
            .refusing(None, None, Some(&scope.name), self.now)
        {
            record.add_detail(&format!("override {}", o.id));
            return Err(o.kind.reason().into());
        }
        let Some(agent) = decision.agent().map(|a| self.policy.agent(a)) else {
            return Ok(());
        };
        let tool_rate = scope
            .mcp
            .as_ref()
            .zip(decision.rule())
            .and_then(|(rules, rule)| rules.rate_of(rule).map(|rate| (rule, rate)));
        self.rates
            .check(&agent.name, agent.rate, &scope.name, scope.rate)
            .await
            .and_then(|()| match tool_rate {
                Some((rule, rate)) => self.rates.check_rule(&agent.name, &scope.name, rule, rate),
                None => Ok(()),
            })
            .map_err(Refusal::RateLimited)
    }

    /// Maps the request to its IAM action, reading a form body if the
    /// action may be in it.
    async fn aws_request(
        &self,
        scope: &Scope,
        parts: &Parts,
        path: &str,
        query: Option<&str>,
        held: Held,
    ) -> Result<(Option<AwsRequest>, Held), Reason> {
        let Some((service, _)) = scope.signing() else {
            return Ok((None, held));
        };
        let headers = &parts.headers;
        let single = |name: &str| {
            let mut values = headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (None, _) => Ok(None),
                (Some(v), None) => v.to_str().map(Some).map_err(|_| ()),
                (Some(_), Some(_)) => Err(()),
            }
        };
        let target = single("x-amz-target");
        let content_type = single("content-type");
        // Headers that turn one S3 action into another, or add one.
        let s3_modifiers = headers.keys().any(|k| {
            let k = k.as_str();
            k == "x-amz-copy-source"
                || k == "x-amz-acl"
                || k.starts_with("x-amz-grant-")
                || k.starts_with("x-amz-object-lock-")
        });
        let is_form = content_type.ok().flatten().is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
        let held = if is_form && parts.method == http::Method::POST {
            Held::Read(
                held.read(self.limits.aws_form, self.limits.read_timeout)
                    .await?,
            )
        } else {
            held
        };
        let form_body = match &held {
            Held::Read(prefix) if prefix.is_complete() => FormBody::Complete(&prefix.bytes[..]),
            Held::Read(_) => FormBody::Unread,
            Held::Stream(_) => FormBody::None,
        };
        let view = RequestView {
            method: parts.method.as_str(),
            path,
            query,
            target: target.ok().flatten(),
            form_body,
            ambiguous: target.is_err()
                || content_type.is_err()
                || (service == "s3" && s3_modifiers),
            host: &scope.upstream.host,
            service: &service,
        };
        Ok((classify(&view), held))
    }
}

/// The run token step, the same on every path: a token in
/// [`RUN_TOKEN_HEADER`] must verify and name the agent; its run id goes into
/// the record (even when the token is refused for its expiry or its agent).
/// Without a certificate (the token listener) the token is the only
/// identity there is, so it must be there.
pub(crate) fn run_token(
    tokens: &Verifier,
    value: Option<&http::HeaderValue>,
    identity: &PeerIdentity,
    record: &mut DecisionRecord,
) -> Result<Option<Claims>, Refusal> {
    let Some(value) = value else {
        if identity.fingerprint.is_empty() {
            return Err(Refusal::Unauthenticated(Challenge::Proxy));
        }
        return Ok(None);
    };
    let token = value.to_str().map_err(|_| Reason::RunTokenInvalid)?;
    match tokens.verify_run(token.trim(), record.agent.as_deref(), SystemTime::now()) {
        Ok(claims) => {
            tracing::Span::current().record("run.id", claims.run.as_str());
            record.run_id = Some(claims.run.clone());
            Ok(Some(claims))
        }
        Err(refused) => {
            tracing::debug!(reason = %refused.reason, "run token refused");
            record.run_id = refused.run;
            Err(refused.reason.into())
        }
    }
}

/// The path the upstream sees: under the scope's base path for a route.
fn upstream_path(scope: &Scope, target: Target<'_>, path: &str) -> String {
    match target {
        Target::Route(_) => format!("{}{path}", scope.upstream.base_path),
        Target::Host { .. } | Target::Connect { .. } => path.to_owned(),
    }
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
    record.exception = decision
        .exception()
        .map(|i| policy.exceptions()[i].id.clone());
    record.would_deny = decision.would_deny().map(|r| r.code().to_owned());
}
