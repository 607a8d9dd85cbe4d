//! The operator's route `POST /_hubmesh/drain` ([`DRAIN_PATH`]): asks the node to drain and leave, as SIGTERM asks
//! a `hubmesh node` process to, and answers 202 at once. The node does not drain itself here: whoever runs it
//! (the `hubmesh node` process, or an application that serves the node) waits on [`Node::drain_requested`] and then
//! drains with its own window ([`Node::drain`], [`crate::NodeHandle::drain`]) and exits, so both ways out of the
//! process are the same code.
//!
//! Authentication: an operator action changes the cluster, so it needs the REST API's credential, a bearer token
//! signed with the node's REST access key by the REST API's rule (HS256, `exp`, `aud` = the request URL
//! `http[s]://host:port/_hubmesh/drain`; [`super::rest`]). Without an access key the route is off (404); a missing
//! or bad token gets 401 and never drains; a method other than POST gets 405. Asking twice is harmless: the second
//! request gets 202 too.
//!
//! Bounds: a request holds nothing; refusals are logged at debug level. Calls [`super::rest`]'s token check only.

use actix_web::http::{header, Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;

use super::super::Node;

/// The path an operator `POST`s to drain the node.
pub const DRAIN_PATH: &str = "/_hubmesh/drain";

/// Whether a drain was asked for over HTTP; set once, never cleared (a drain is the end of a node's life).
#[derive(Debug)]
pub(crate) struct DrainRequest(tokio::sync::watch::Sender<bool>);

impl Default for DrainRequest {
    fn default() -> Self {
        DrainRequest(tokio::sync::watch::Sender::new(false))
    }
}

impl Node {
    /// Asks whoever runs this node to drain it ([`Node::drain_requested`] returns); what `POST /_hubmesh/drain`
    /// does once authenticated. It does not drain by itself.
    pub fn request_drain(&self) {
        self.inner.drain_request.0.send_replace(true);
    }

    /// Returns once a drain was asked for ([`Node::request_drain`], `POST /_hubmesh/drain`), at once if it already
    /// was. The `hubmesh node` process waits on it beside SIGTERM; an application that serves the node itself and
    /// wants the route to work should too, then call [`Node::drain`] with its window and stop.
    pub async fn drain_requested(&self) {
        let mut requested = self.inner.drain_request.0.subscribe();
        // The sender lives as long as the node (`self`), so the wait ends only when a drain is asked for.
        let _ = requested.wait_for(|asked| *asked).await;
    }
}

/// Answers a request for [`DRAIN_PATH`].
pub(super) fn answer(node: &Node, request: &HttpRequest) -> HttpResponse {
    let Some(api) = node.rest_api() else {
        return HttpResponse::NotFound().json(json!({
            "code": "NotFound",
            "message": "the operator API is off: it needs the node's REST access key (rest.access_key)",
        }));
    };
    if request.method() != Method::POST {
        return HttpResponse::build(StatusCode::METHOD_NOT_ALLOWED)
            .insert_header((header::ALLOW, "POST"))
            .finish();
    }
    if let Err(error) = super::rest::authenticate(api, request) {
        tracing::debug!(parent: node.span(), %error, "a drain request was refused");
        return HttpResponse::build(StatusCode::UNAUTHORIZED)
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({ "code": "Unauthorized", "message": error.to_string() }));
    }
    node.span()
        .in_scope(|| tracing::info!(peer = ?request.peer_addr(), "a drain was asked for over HTTP"));
    node.request_drain();
    HttpResponse::Accepted().json(json!({ "node": node.name(), "status": "draining" }))
}
