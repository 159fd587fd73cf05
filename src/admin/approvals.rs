//! `/v1/approvals`: approvers answer the calls `[[scope.ask]]` rules hold.
//!
//! - `GET /v1/approvals` (pending; `?all=true` for every state) and
//!   `GET /v1/approvals/<id>`: any role, or an identity some ask rule names.
//! - `POST /v1/approvals/<id>/approve` and `POST /v1/approvals/<id>/deny`
//!   (JSON `{"reason": "..."}`, required): only an approver the ask rule
//!   names (the `admins` role or an identity), never an auditor, never the
//!   agent whose call it is. Every refusal is a record (403); every answer
//!   is an `approval` record, committed before the answer takes effect.

use std::net::SocketAddr;
use std::time::SystemTime;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{Admin, AdminBody, MAX_BODY, Role, error, json};
use crate::approvals::{AnswerError, Approver};
use crate::error::Reason;
use crate::identity::PeerIdentity;

/// The path prefix of every approvals endpoint.
pub(super) const PREFIX: &str = "/v1/approvals";

impl Admin {
    /// Answers one `/v1/approvals` request; `role` is the caller's role, if
    /// any (an approver named by identity may have none).
    pub(super) async fn approvals(
        &self,
        peer: &PeerIdentity,
        addr: SocketAddr,
        role: Option<Role>,
        req: Request<Incoming>,
    ) -> Response<AdminBody> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let asked = (method.as_str().to_owned(), path.clone());
        let names: Vec<String> = peer.names.iter().map(ToString::to_string).collect();
        let named = self.named_approver(&names);
        if role.is_none() && !named {
            let refused = (
                Reason::AdminRoleRequired,
                "no admin or auditor role, and no ask rule names this identity".to_owned(),
            );
            return self
                .refuse(peer, addr, asked, refused, Some("no admin or auditor role"))
                .await;
        }
        let now = SystemTime::now();
        let rest = path.strip_prefix(PREFIX).unwrap_or_default();
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match (method, parts.as_slice()) {
            (Method::GET, []) => {
                let all = query.split('&').any(|p| p == "all=true" || p == "all=1");
                let (list, expired) = self.pipeline.approvals().store().list(now, all);
                self.pipeline.record_expired_approvals(&expired, now).await;
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "approvals": list, "now": crate::policy::rfc3339(now) }),
                )
            }
            (Method::GET, [id]) => match self.pipeline.approvals().store().get(id, now) {
                Some(a) => {
                    let mut body = serde_json::to_value(&a).unwrap_or_default();
                    body["url"] = self.pipeline.approvals().link(&a.id).into();
                    json(StatusCode::OK, &body)
                }
                None => error(StatusCode::NOT_FOUND, "no such approval"),
            },
            (Method::POST, [id, verb @ ("approve" | "deny")]) => {
                let deny = if *verb == "deny" {
                    match deny_reason(req).await {
                        Ok(reason) => Some(reason),
                        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
                    }
                } else {
                    None
                };
                let answer = (id.to_string(), deny);
                self.answer(peer, addr, role, answer, names).await
            }
            _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    /// Whether some ask rule in force names one of these identities.
    fn named_approver(&self, names: &[String]) -> bool {
        let policy = self.pipeline.policy();
        policy.scopes().iter().any(|s| {
            s.ask.iter().any(|r| {
                r.approvers
                    .names
                    .iter()
                    .any(|n| names.contains(&n.to_string()))
            })
        })
    }

    async fn answer(
        &self,
        peer: &PeerIdentity,
        addr: SocketAddr,
        role: Option<Role>,
        (id, deny): (String, Option<String>),
        names: Vec<String>,
    ) -> Response<AdminBody> {
        let verb = if deny.is_some() { "deny" } else { "approve" };
        let asked = ("POST".to_owned(), format!("{PREFIX}/{id}/{verb}"));
        if role == Some(Role::Auditor) {
            let refused = (
                Reason::ApproverNotAllowed,
                format!("auditors cannot answer approvals; approval {id}"),
            );
            let message = "auditors cannot answer approvals";
            return self.refuse(peer, addr, asked, refused, Some(message)).await;
        }
        let policy = self.pipeline.policy();
        let agent = policy
            .agent_for(&peer.names)
            .map(|a| policy.agent(a).name.clone());
        let who = names.first().cloned().unwrap_or_default();
        let approver = Approver {
            who: &who,
            names,
            is_admin: role == Some(Role::Admin),
            agent: agent.as_deref(),
        };
        let store = self.pipeline.approvals().store();
        let now = SystemTime::now();
        // Checked first, recorded, then applied: the answer is a record
        // before any call can act on it.
        let preview = match store.check_answer(&id, &approver, deny.as_deref(), now) {
            Ok(a) => a,
            Err(e) => return self.refuse_answer(peer, addr, asked, &id, e).await,
        };
        let (reason, outcome) = match deny {
            Some(_) => (Reason::ApprovalDenied, "denied"),
            None => (Reason::ApprovalGranted, "granted"),
        };
        if let Err(e) = self
            .pipeline
            .audit()
            .append_durable(preview.record(reason))
            .await
        {
            tracing::error!(error = %e, "approval answer not recorded; not applied");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the answer could not be recorded, so it was not applied",
            );
        }
        match store.answer(&id, &approver, deny.as_deref(), now) {
            Ok(answered) => {
                self.pipeline.approvals().notify();
                self.pipeline
                    .metrics()
                    .approval_decided(outcome, &answered.times);
                tracing::warn!(approval = %id, by = %who, outcome, "approval answered");
                json(
                    StatusCode::OK,
                    &serde_json::to_value(&answered).unwrap_or_default(),
                )
            }
            Err(e) => {
                // Answered by someone else in between: the record says so.
                let mut record = preview.record(reason);
                record.add_detail(&format!("not applied: {e}"));
                self.pipeline.audit().append(record);
                error(StatusCode::CONFLICT, &e.to_string())
            }
        }
    }

    async fn refuse_answer(
        &self,
        peer: &PeerIdentity,
        addr: SocketAddr,
        asked: (String, String),
        id: &str,
        e: AnswerError,
    ) -> Response<AdminBody> {
        match e {
            AnswerError::NotFound(_) => error(StatusCode::NOT_FOUND, &e.to_string()),
            AnswerError::NotPending(..) => error(StatusCode::CONFLICT, &e.to_string()),
            AnswerError::OwnCall | AnswerError::NotApprover(_) => {
                let refused = (Reason::ApproverNotAllowed, format!("{e}; approval {id}"));
                let message = e.to_string();
                self.refuse(peer, addr, asked, refused, Some(&message))
                    .await
            }
        }
    }
}

/// The `reason` a deny must carry.
async fn deny_reason(req: Request<Incoming>) -> Result<String, String> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| "body unreadable or too large".to_owned())?
        .to_bytes();
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Deny {
        reason: String,
    }
    let deny: Deny = serde_json::from_slice(&body)
        .map_err(|e| format!("body must be JSON with a `reason`: {e}"))?;
    let reason = deny.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err("`reason` must be 1 to 500 characters".into());
    }
    Ok(reason.to_owned())
}
