//! The admin API's override changes: create (isolate an agent, revoke a
//! serial, disable a scope) and remove. Each change is a durable record
//! before it takes effect. Split from [`super`] only for size.

use std::time::SystemTime;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{Admin, AdminBody, MAX_BODY, error, json};
use crate::identity::PeerIdentity;
use crate::overrides::{NewOverride, OverrideError, OverrideKind, normalise_serial, peer_serial};

impl Admin {
    pub(super) async fn create_override(
        &self,
        req: Request<Incoming>,
        who: &str,
        peer: &PeerIdentity,
    ) -> Response<AdminBody> {
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "body unreadable or too large"),
        };
        let new: NewOverride = match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "body must be JSON with kind, target, reason, expires_in (and optionally force): {e}"
                    ),
                );
            }
        };
        // An admin cannot lock themselves out by mistake: their own serial
        // is revoked from another admin's certificate, or by the CRL.
        if new.kind == OverrideKind::RevokeSerial.as_str()
            && normalise_serial(new.target.trim()).ok() == Some(peer_serial(&peer.serial))
        {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "refusing to revoke serial `{}`: it is the serial of the certificate making this request, so this admin would be locked out; revoke it from another admin's certificate or with the CRL",
                    new.target.trim()
                ),
            );
        }
        let now = SystemTime::now();
        let policy = self.pipeline.policy();
        let made = match self.pipeline.overrides().create(&new, who, now, &*policy) {
            Ok(made) => made,
            Err(OverrideError::Invalid(e)) => return error(StatusCode::BAD_REQUEST, &e),
            Err(e) => {
                tracing::error!(error = %e, "override not stored");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "override could not be stored",
                );
            }
        };
        let o = &made.created;
        tracing::warn!(id = %o.id, kind = o.kind.as_str(), target = %o.target, forced = made.forced, "override created");
        let mut record = o.record("created", Some(who));
        if made.forced {
            record.detail = record.detail.map(|d| {
                format!(
                    "{d}; forced: the policy in force does not define `{}`",
                    o.target
                )
            });
        }
        // The record first: on a fleet's store nothing enforces the
        // override until its creation is committed, after this record.
        let recorded = self.pipeline.audit().append_durable(record).await;
        if let Err(e) = &recorded {
            // Every change is a record: one that cannot be recorded is
            // taken back.
            tracing::error!(error = %e, "override creation not recorded; taking it back");
        }
        let finished = self
            .pipeline
            .overrides()
            .finish_creation(&o.id, recorded.is_ok())
            .await;
        if recorded.is_err() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the override could not be recorded, so it was not made",
            );
        }
        if let Err(e) = finished {
            tracing::error!(error = %e, "override recorded but not stored; recording that");
            self.pipeline
                .audit()
                .append(o.record("not stored, so never in force", None));
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "override could not be stored",
            );
        }
        // It may lapse before anything else that was due.
        self.pipeline.lapses().changed();
        let mut body = o.to_json(now);
        body["target_as_given"] = made.target_as_given.clone().into();
        body["forced"] = made.forced.into();
        body["effect"] = o.effect().into();
        body["in_force"] = self.in_force(now);
        json(StatusCode::CREATED, &body)
    }

    pub(super) async fn remove_override(&self, id: &str, who: &str) -> Response<AdminBody> {
        let o = match self.pipeline.overrides().remove(id) {
            Ok(Some(o)) => o,
            Ok(None) => return error(StatusCode::NOT_FOUND, "no such override"),
            Err(e) => {
                tracing::error!(error = %e, "override not removed");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "override could not be removed",
                );
            }
        };
        // The record first: on a fleet's store the override stays in force
        // until its removal is committed, after this record.
        let recorded = self
            .pipeline
            .audit()
            .append_durable(o.record("removed", Some(who)))
            .await;
        if let Err(e) = &recorded {
            tracing::error!(error = %e, "override removal not recorded");
        }
        let finished = self
            .pipeline
            .overrides()
            .finish_removal(&o.id, recorded.is_ok())
            .await;
        if let Err(e) = finished {
            tracing::error!(error = %e, "override not removed; it stays in force");
            if recorded.is_ok() {
                self.pipeline
                    .audit()
                    .append(o.record("not removed, so still in force", None));
            }
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "override could not be removed",
            );
        }
        tracing::warn!(id = %o.id, "override removed");
        json(
            StatusCode::OK,
            &serde_json::json!({
                "removed": o.id,
                "in_force": self.in_force(SystemTime::now()),
            }),
        )
    }
}
