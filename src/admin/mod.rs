//! The admin and auditor API: a second mTLS listener (same CA as agents)
//! for health, metrics, the decision log, policy status, reload and
//! overrides.
//!
//! Invariants:
//! - Roles come from the policy in force (`[roles]`): identities listed as
//!   `admins` may read and change, `auditors` may read. Every other
//!   certificate, agents' included, gets 403; a peer without a certificate
//!   never completes the handshake.
//! - Reading is never a change; every change (reload, override created or
//!   removed) is a record.
//! - Nothing here is reachable from the agent listener.

pub mod client;
pub use crate::metrics;
mod status;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::audit::{Filter, Format};
use crate::identity::{self, PeerName};
use crate::overrides::NewOverride;
use crate::pipeline::Pipeline;
use crate::reload::Reloader;

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
}

type AdminBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Accepts admin connections until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    admin: Arc<Admin>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, addr)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let admin = Arc::clone(&admin);
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                        tracing::info!(client = %addr, "admin handshake refused");
                        return;
                    };
                    let names = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|der| identity::from_der(der).ok())
                        .map(|id| id.names)
                        .unwrap_or_default();
                    let names = Arc::new(names);
                    let service = service_fn(move |req| {
                        let admin = Arc::clone(&admin);
                        let names = Arc::clone(&names);
                        async move { Ok::<_, Infallible>(admin.handle(&names, addr, req).await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
                    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
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

    async fn handle(
        &self,
        names: &[PeerName],
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<AdminBody> {
        let Some(role) = self.role_of(names) else {
            tracing::info!(client = %addr, "admin api refused: no role");
            return error(StatusCode::FORBIDDEN, "no admin or auditor role");
        };
        let who = names.first().map(ToString::to_string).unwrap_or_default();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let needs_admin = method != Method::GET;
        if needs_admin && role != Role::Admin {
            return error(StatusCode::FORBIDDEN, "this needs the admin role");
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
            (Method::POST, "/v1/policy/reload") => {
                match self.reloader.reload(&format!("api by {who}"), true).await {
                    Ok(digest) => json(StatusCode::OK, &serde_json::json!({ "digest": digest })),
                    Err(e) => json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &serde_json::json!({ "error": "policy refused", "problems": e }),
                    ),
                }
            }
            (Method::GET, "/v1/overrides") => {
                let now = SystemTime::now();
                let all: Vec<_> = self
                    .pipeline
                    .overrides()
                    .all()
                    .iter()
                    .filter(|o| o.active_at(now))
                    .map(|o| self.pipeline.overrides().describe(o, now))
                    .collect();
                json(StatusCode::OK, &serde_json::Value::Array(all))
            }
            (Method::POST, "/v1/overrides") => self.create_override(req, &who).await,
            (Method::DELETE, p) if p.starts_with("/v1/overrides/") => {
                self.remove_override(&p["/v1/overrides/".len()..], &who)
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

    fn readyz(&self) -> Response<AdminBody> {
        if self.pipeline.audit().is_healthy() {
            text(StatusCode::OK, "ready\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the decision log cannot be written\n",
            )
        }
    }

    fn metrics(&self) -> Response<AdminBody> {
        let broker = self.pipeline.broker();
        let stats = [broker.secret_stats(), broker.session_stats()];
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
            overrides_active: self
                .pipeline
                .overrides()
                .all()
                .iter()
                .filter(|o| o.active_at(now))
                .count() as u64,
            audit_batches: Some(audit.batch_stats()),
            limits_store: self.pipeline.limits().shared_stats(),
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

    /// The records of a window, `since` (24 h by default) to now.
    async fn window(
        &self,
        query: &str,
        allowed: &[&str],
    ) -> Result<(Vec<crate::audit::DecisionRecord>, HashMap<String, String>), Response<AdminBody>>
    {
        let mut params = HashMap::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k != "since" && !allowed.contains(&k.as_ref()) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter `{k}`"),
                ));
            }
            params.insert(k.into_owned(), v.into_owned());
        }
        let since = parse_time(params.get("since").map_or("24h", String::as_str))
            .map_err(|e| error(StatusCode::BAD_REQUEST, &e))?;
        let filter = Filter {
            since: Some(since),
            limit: None,
            ..Filter::default()
        };
        match self.audit_source.query(&filter).await {
            Ok(records) => Ok((records, params)),
            Err(e) => {
                tracing::error!(error = %e, "audit query failed");
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the decision log cannot be read",
                ))
            }
        }
    }

    async fn audit_stats(&self, query: &str) -> Response<AdminBody> {
        let (records, params) = match self.window(query, &["by"]).await {
            Ok(w) => w,
            Err(response) => return response,
        };
        let by = match params
            .get("by")
            .map(|b| b.parse::<crate::audit::stats::By>())
            .transpose()
        {
            Ok(by) => by,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let stats = crate::audit::stats::stats(&records, by);
        json(
            StatusCode::OK,
            &serde_json::to_value(&stats).unwrap_or_default(),
        )
    }

    /// Findings of the log, and of the live state: what lapses within 24 h,
    /// and drift.
    async fn audit_findings(&self, query: &str) -> Response<AdminBody> {
        let (records, params) = match self.window(query, &["recent", "burst"]).await {
            Ok(w) => w,
            Err(response) => return response,
        };
        let recent = match parse_time(params.get("recent").map_or("1h", String::as_str)) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let mut thresholds = crate::audit::stats::Thresholds::default();
        if let Some(b) = params.get("burst") {
            match b.parse() {
                Ok(b) => thresholds.burst = b,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("burst `{b}` must be a number"),
                    );
                }
            }
        }
        let mut found = crate::audit::stats::findings(&records, &recent, thresholds);
        let now = SystemTime::now();
        let status = status_of(self, now);
        let lapsing = |kind: &str, v: &serde_json::Value| {
            let left = v["expires_in_seconds"].as_u64()?;
            (left <= status::SOON.as_secs()).then(|| crate::audit::stats::Finding {
                kind: "lapsing-soon".into(),
                subject: v["id"].as_str().unwrap_or("-").to_owned(),
                detail: format!("{kind} lapses in {left} s"),
                count: 1,
            })
        };
        found.extend(
            status
                .exceptions
                .iter()
                .filter_map(|e| lapsing("exception", e)),
        );
        found.extend(
            status
                .overrides
                .iter()
                .filter_map(|o| lapsing("override", o)),
        );
        if status.drifted() {
            found.push(crate::audit::stats::Finding {
                kind: "drift".into(),
                subject: status.in_force.clone(),
                detail: "runtime behaviour differs from the policy files (see /v1/policy/status)"
                    .into(),
                count: 1,
            });
        }
        json(
            StatusCode::OK,
            &serde_json::to_value(&found).unwrap_or_default(),
        )
    }

    async fn create_override(&self, req: Request<Incoming>, who: &str) -> Response<AdminBody> {
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "body unreadable or too large"),
        };
        let new: NewOverride = match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("body must be JSON with kind, target, reason, expires_in: {e}"),
                );
            }
        };
        let now = SystemTime::now();
        match self.pipeline.overrides().create(&new, who, now) {
            Ok(o) => {
                tracing::warn!(id = %o.id, kind = o.kind.as_str(), target = %o.target, "override created");
                if let Err(e) = self
                    .pipeline
                    .audit()
                    .append_durable(o.record("created", Some(who)))
                    .await
                {
                    // Every change is a record: one that cannot be recorded
                    // is taken back.
                    tracing::error!(error = %e, "override creation not recorded; removing it");
                    let _ = self.pipeline.overrides().remove(&o.id);
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the override could not be recorded, so it was not made",
                    );
                }
                json(StatusCode::CREATED, &o.to_json(now))
            }
            Err(crate::overrides::OverrideError::Invalid(e)) => error(StatusCode::BAD_REQUEST, &e),
            Err(e) => {
                tracing::error!(error = %e, "override not stored");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "override could not be stored",
                )
            }
        }
    }

    fn remove_override(&self, id: &str, who: &str) -> Response<AdminBody> {
        match self.pipeline.overrides().remove(id) {
            Ok(Some(o)) => {
                tracing::warn!(id = %o.id, "override removed");
                self.pipeline.audit().append(o.record("removed", Some(who)));
                json(StatusCode::OK, &serde_json::json!({ "removed": o.id }))
            }
            Ok(None) => error(StatusCode::NOT_FOUND, "no such override"),
            Err(e) => {
                tracing::error!(error = %e, "override not removed");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "override could not be removed",
                )
            }
        }
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
