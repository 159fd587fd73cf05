//! The admin and auditor API: a second mTLS listener (same CA as agents)
//! for health, metrics, the decision log, policy status, reload and
//! overrides.
//!
//! Invariants:
//! - Roles come from the policy in force (`[roles]`): identities listed as
//!   `admins` may read and change, `auditors` may read. Every other
//!   certificate, agents' included, gets 403; a peer without a certificate
//!   never completes the handshake.
//! - A certificate whose serial an override revokes is refused on every
//!   endpoint before its role is read, and the refusal is a decision record
//!   (mode `admin`). An admin cannot revoke their own certificate's serial.
//! - Reading is never a change; every change (reload, override created or
//!   removed) is a record.
//! - Nothing here is reachable from the agent listener.

pub mod client;
pub use crate::metrics;
mod approvals;
mod explain;
mod overrides;
mod pins;
mod status;
mod views;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accept::{self, Accepted, Rejections, Served};
use crate::audit::{DecisionRecord, Filter, Format, kind};
use crate::error::{REQUEST_ID_HEADER, Reason};
use crate::identity::{self, PeerIdentity, PeerName};
use crate::pipeline::Pipeline;
use crate::reload::Reloader;
use crate::tls::{Door, TlsStore};

pub use status::{PolicyStatus, status_of};

/// The largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// What a caller of the admin API may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read: health, metrics, audit, status, overrides.
    Auditor,
    /// Read and change: reload, overrides.
    Admin,
}

/// Everything the admin API reads or changes.
#[derive(Debug)]
pub struct Admin {
    /// The pipeline (policy in force, overrides, metrics, decision log).
    pub pipeline: Arc<Pipeline>,
    /// Reloads the policy directory.
    pub reloader: Arc<Reloader>,
    /// Where the decision log is read, for queries.
    pub audit_source: crate::audit::Source,
    /// The TLS material, for `POST /v1/certs/reload`.
    pub certs: Option<Arc<TlsStore>>,
    /// What the scheduled walk of the chain last found.
    pub chain_health: Arc<crate::audit::health::ChainHealth>,
}

type AdminBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Accepts admin connections until `shutdown` flips, then drains them
/// within `drain`. A peer without a certificate of the agent CA never
/// completes the handshake and is recorded `tls-rejected`.
pub async fn serve(
    tcp: TcpListener,
    tls: Arc<TlsStore>,
    rejections: Arc<Rejections>,
    admin: Arc<Admin>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let listener = accept::Listener {
        name: "admin",
        tcp,
        tls: Some((tls, Door::Admin)),
        rejections,
        gate: accept::new_gate(),
    };
    let make = move |accepted: Accepted| {
        // Names for the role, the serial for revocation: both from the
        // verified leaf.
        let peer = accepted
            .leaf
            .as_ref()
            .and_then(|der| identity::from_der(der).ok())
            .ok_or_else(|| "no usable client certificate".to_owned())?;
        let peer = Arc::new(peer);
        let admin = Arc::clone(&admin);
        let addr = accepted.addr;
        let service = service_fn(move |req| {
            let admin = Arc::clone(&admin);
            let peer = Arc::clone(&peer);
            async move { Ok::<_, Infallible>(admin.handle(&peer, addr, req).await) }
        });
        Ok(Served {
            service,
            until: None,
        })
    };
    accept::serve(listener, make, shutdown, drain).await;
}

impl Admin {
    /// The role the policy in force gives these names, if any.
    pub fn role_of(&self, names: &[PeerName]) -> Option<Role> {
        let policy = self.pipeline.policy();
        let roles = policy.roles();
        if names.iter().any(|n| roles.admins.contains(n)) {
            Some(Role::Admin)
        } else if names.iter().any(|n| roles.auditors.contains(n)) {
            Some(Role::Auditor)
        } else {
            None
        }
    }

    /// Answers one admin request from `peer`, whose certificate the
    /// listener verified.
    pub async fn handle(
        &self,
        peer: &PeerIdentity,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<AdminBody> {
        let now = SystemTime::now();
        self.pipeline.settle_lapses(now);
        // A revoked serial first, reading included: a leaked admin
        // certificate must not read the log, nor undo the override meant to
        // stop it.
        if let Some(o) = self
            .pipeline
            .overrides()
            .refusing(None, Some(&peer.serial), None, now)
        {
            let asked = (
                req.method().as_str().to_owned(),
                req.uri().path().to_owned(),
            );
            let refused = (Reason::SerialRevoked, format!("override {}", o.id));
            tracing::warn!(client = %addr, override_id = %o.id, "admin api refused: serial revoked");
            return self.refuse(peer, addr, asked, refused, None).await;
        }
        let names = peer.names.as_slice();
        if req.uri().path().starts_with(approvals::PREFIX) {
            // Approvers named by identity may hold no role.
            let role = self.role_of(names);
            return self.approvals(peer, addr, role, req).await;
        }
        let Some(role) = self.role_of(names) else {
            let asked = (
                req.method().as_str().to_owned(),
                req.uri().path().to_owned(),
            );
            let refused = (
                Reason::AdminRoleRequired,
                "no admin or auditor role".to_owned(),
            );
            tracing::info!(client = %addr, "admin api refused: no role");
            let message = "no admin or auditor role";
            return self.refuse(peer, addr, asked, refused, Some(message)).await;
        };
        let who = names.first().map(ToString::to_string).unwrap_or_default();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let needs_admin = method != Method::GET;
        if needs_admin && role != Role::Admin {
            let asked = (method.as_str().to_owned(), path.clone());
            let refused = (
                Reason::AdminRoleRequired,
                "this needs the admin role; the caller is an auditor".to_owned(),
            );
            let message = "this needs the admin role";
            return self.refuse(peer, addr, asked, refused, Some(message)).await;
        }
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => self.healthz(),
            (Method::GET, "/readyz") => self.readyz(),
            (Method::GET, "/metrics") => self.metrics(),
            (Method::GET, "/v1/audit") => self.audit(&query).await,
            (Method::GET, "/v1/audit/stats") => self.audit_stats(&query).await,
            (Method::GET, "/v1/audit/findings") => self.audit_findings(&query).await,
            (Method::GET, "/v1/audit/verify") => match self.audit_source.verify().await {
                Ok(mut v) => {
                    v["intact"] = serde_json::Value::Bool(true);
                    json(StatusCode::OK, &v)
                }
                Err(why) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "intact": false, "error": why }),
                ),
            },
            (Method::GET, "/v1/policy/status") => json(
                StatusCode::OK,
                &status_of(self, SystemTime::now()).to_json(),
            ),
            (Method::GET, "/v1/policy/explain") => self.explain(&query),
            (Method::POST, "/v1/policy/reload") => {
                match self.reloader.reload(&format!("api by {who}")).await {
                    Ok(done) => json(
                        StatusCode::OK,
                        &serde_json::json!({ "digest": done.digest, "changed": done.changed }),
                    ),
                    Err(e) => json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &serde_json::json!({ "error": "policy refused", "problems": e }),
                    ),
                }
            }
            (Method::POST, "/v1/certs/reload") => match &self.certs {
                Some(certs) => match certs.reload(&format!("api by {who}")).await {
                    Ok(()) => json(StatusCode::OK, &serde_json::json!({ "reloaded": true })),
                    Err(e) => json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &serde_json::json!({ "error": "certificates refused", "problems": e }),
                    ),
                },
                None => error(StatusCode::NOT_FOUND, "no such endpoint"),
            },
            (Method::GET, "/v1/overrides") => json(StatusCode::OK, &self.in_force(now)),
            (Method::POST, "/v1/overrides") => self.create_override(req, &who, peer).await,
            (Method::GET, "/v1/mcp/pins") => self.list_pins(),
            (Method::POST, "/v1/mcp/pins/accept") => self.change_pin(req, true, &who).await,
            (Method::POST, "/v1/mcp/pins/forget") => self.change_pin(req, false, &who).await,
            (Method::DELETE, p) if p.starts_with("/v1/overrides/") => {
                self.remove_override(&p["/v1/overrides/".len()..], &who)
                    .await
            }
            _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    /// Alive; says so with the state of the shared rate limit store, which
    /// degrades a replica (the failure mode decides) but does not stop it.
    fn healthz(&self) -> Response<AdminBody> {
        match self.pipeline.limits().shared_stats() {
            Some(store) if !store.up => text(
                StatusCode::OK,
                &format!(
                    "ok\nlimits-store: down (failure mode {})\n",
                    store.mode.as_str()
                ),
            ),
            Some(_) => text(StatusCode::OK, "ok\nlimits-store: up\n"),
            None => text(StatusCode::OK, "ok\n"),
        }
    }

    /// Ready while the decision log can be written and its chain's last
    /// walk did not find a break (evidence that no longer verifies is not a
    /// state to keep taking traffic in unnoticed).
    fn readyz(&self) -> Response<AdminBody> {
        if !self.pipeline.audit().is_healthy() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the decision log cannot be written\n",
            );
        }
        let chain = self
            .pipeline
            .audit()
            .tail_break()
            .map(crate::audit::health::ChainState::Broken)
            .or_else(|| self.chain_health.state());
        match chain {
            Some(crate::audit::health::ChainState::Broken(seq)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "not ready: the decision log's chain is broken at record {seq} (see `clawgate audit verify`)\n"
                ),
            ),
            _ => text(StatusCode::OK, "ready\n"),
        }
    }

    fn metrics(&self) -> Response<AdminBody> {
        let broker = self.pipeline.broker();
        let per_kind = broker.kind_stats();
        let stats = per_kind.map(|(_, s)| s);
        let sum = |f: fn(&crate::credentials::cache::CacheStats) -> u64| -> u64 {
            stats.iter().map(|s| f(s)).sum()
        };
        use std::sync::atomic::Ordering::Relaxed;
        let audit = self.pipeline.audit();
        let now = SystemTime::now();
        let status = status::status_of(self, now);
        let next_lapse_seconds = self
            .pipeline
            .overrides()
            .all()
            .iter()
            .filter(|o| o.active_at(now))
            .map(|o| o.expires.duration_since(now).unwrap_or_default().as_secs())
            .chain(
                status
                    .exceptions
                    .iter()
                    .filter_map(|e| e["expires_in_seconds"].as_u64()),
            )
            .min();
        let gauges = metrics::Gauges {
            policy_drifted: status.drifted(),
            next_lapse_seconds,
            policy_digest: self.pipeline.policy().digest().to_owned(),
            policy_valid: self.reloader.status().valid,
            cache_hits: sum(|s| s.hits.load(Relaxed)),
            cache_misses: sum(|s| s.misses.load(Relaxed)),
            cache_fetches: sum(|s| s.fetches.load(Relaxed)),
            audit_dropped: audit.dropped_records(),
            audit_healthy: audit.is_healthy(),
            // A head changed behind the writer is a break the walk of the
            // whole chain cannot see (a cut tail verifies).
            audit_chain: audit
                .tail_break()
                .map(crate::audit::health::ChainState::Broken)
                .or_else(|| self.chain_health.state()),
            overrides_active: self
                .pipeline
                .overrides()
                .all()
                .iter()
                .filter(|o| o.active_at(now))
                .count() as u64,
            audit_batches: Some(audit.batch_stats()),
            limits_store: self.pipeline.limits().shared_stats(),
            credential_kinds: per_kind
                .iter()
                .map(|(kind, s)| (*kind, s.hits.load(Relaxed), s.fetches.load(Relaxed)))
                .collect(),
            trace_spans: self
                .pipeline
                .tracer()
                .map(|t| std::sync::Arc::clone(t.counts())),
            approvals_pending: self.pipeline.approvals().store().pending_count(now) as u64,
            approvals_held: self.pipeline.approvals().held_now() as u64,
        };
        let mut response = text(StatusCode::OK, &self.pipeline.metrics().render(&gauges));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    async fn audit(&self, query: &str) -> Response<AdminBody> {
        let filter = match parse_filter(query) {
            Ok(f) => f,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let records = match self.audit_source.query(&filter).await {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "audit query failed");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the decision log cannot be read",
                );
            }
        };
        let mut out = Vec::new();
        if crate::audit::render(&records, Format::Json, &mut out).is_err() {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "records could not be written",
            );
        }
        let mut response = Response::new(full(out));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        response
    }

    /// The overrides in force at `now`, as the API lists them.
    fn in_force(&self, now: SystemTime) -> serde_json::Value {
        serde_json::Value::Array(
            self.pipeline
                .overrides()
                .all()
                .iter()
                .filter(|o| o.active_at(now))
                .map(|o| self.pipeline.overrides().describe(o, now))
                .collect(),
        )
    }

    /// 403 for a refused admin API request (a revoked serial, no role for
    /// it), with its decision record: the method, path, certificate
    /// fingerprint and every name on it. `message` keeps a refusal's
    /// established `error` text; without it the body says `denied`.
    async fn refuse(
        &self,
        peer: &PeerIdentity,
        addr: SocketAddr,
        (method, path): (String, String),
        (reason, why): (Reason, String),
        message: Option<&str>,
    ) -> Response<AdminBody> {
        let request_id = uuid::Uuid::now_v7().to_string();
        let mut record = DecisionRecord::new(kind::DECISION, &request_id);
        record.mode = Some("admin".into());
        record.client_addr = Some(addr.to_string());
        record.cert_fp = Some(peer.fingerprint.clone());
        record.method = Some(method);
        record.path = Some(path);
        record.decision = Some("deny".into());
        record.reason = reason.code().to_owned();
        record.policy_digest = Some(self.pipeline.policy().digest().to_owned());
        let names: Vec<String> = peer.names.iter().map(ToString::to_string).collect();
        let who = names.first().cloned().unwrap_or_default();
        record.detail = Some(format!(
            "{why}; admin api caller {who}; certificate names [{}]",
            names.join(", ")
        ));
        // Durable before the answer, like every decision; refused either way.
        if let Err(e) = self.pipeline.audit().append_durable(record).await {
            tracing::error!(error = %e, "admin refusal not recorded");
        }
        let mut response = json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({
                "error": message.unwrap_or("denied"),
                "reason": reason.code(),
                "request_id": request_id,
            }),
        );
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        response
    }
}

/// The filters of `audit query`, from a query string.
fn parse_filter(query: &str) -> Result<Filter, String> {
    let mut filter = Filter {
        limit: Some(100),
        ..Filter::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "agent" => filter.agent = Some(value),
            "scope" => filter.scope = Some(value),
            "decision" if value == "allow" || value == "deny" => filter.decision = Some(value),
            "reason" => filter.reason = Some(value),
            "host" => filter.host = Some(value),
            "trace_id" => filter.trace_id = Some(value),
            "source" => filter.source = Some(value),
            "request_id" => filter.request_id = Some(value),
            "kind" => filter.kinds = value.split(',').map(str::to_owned).collect(),
            "would_deny" => filter.would_deny = value == "true" || value == "1",
            "since" => filter.since = Some(parse_time(&value)?),
            "until" => filter.until = Some(parse_time(&value)?),
            "limit" => {
                filter.limit = Some(
                    value
                        .parse()
                        .map_err(|_| format!("limit `{value}` must be a number"))?,
                );
            }
            other => return Err(format!("unknown filter `{other}`")),
        }
    }
    Ok(filter)
}

/// RFC 3339, or a duration back from now, as the records' time format.
pub fn parse_time(text: &str) -> Result<String, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(crate::audit::format_ts(t));
    }
    let back = humantime::parse_duration(text).map_err(|_| {
        format!("`{text}` is neither an RFC 3339 time nor a duration such as `15m`")
    })?;
    Ok(crate::audit::format_ts(
        time::OffsetDateTime::now_utc() - back,
    ))
}

fn full(bytes: impl Into<Bytes>) -> AdminBody {
    Full::new(bytes.into()).boxed()
}

fn text(status: StatusCode, body: &str) -> Response<AdminBody> {
    let mut response = Response::new(full(body.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<AdminBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response<AdminBody> {
    json(status, &serde_json::json!({ "error": message }))
}
