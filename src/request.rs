//! One request from a listener, sent where it belongs: a `CONNECT` to
//! [`crate::connect`], a credential vend to [`crate::pipeline::vend`], any
//! other request to the call pipeline.
//!
//! It sits above both so that neither the pipeline nor `connect` needs the
//! other's dispatch: `connect` uses the pipeline for the requests inside an
//! intercepted tunnel, and the pipeline never reaches back.

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::pipeline::vend::vend_scope;
use crate::pipeline::{Peer, Pipeline};

impl Pipeline {
    /// Runs one request. Never fails: every problem becomes a refusal
    /// response with a reason, and a record.
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
            return self.vend_for_peer(peer, req).await;
        }
        self.call(peer, None, req).await
    }
}
