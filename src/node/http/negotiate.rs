//! `POST [base]/negotiate`: a new connection id and token, the transports the hub offers, and stateful reconnect when
//! the client asks for it and it can work.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use bytes::Bytes;
use tokio::time::Instant;

use super::super::Node;
use super::endpoint::{HubEndpoint, Negotiated, IMPLEMENTED};
use super::reply::Reply;
use crate::protocol::negotiate::{AvailableTransport, NegotiateResponse};
use crate::protocol::TransferFormat;
use crate::transport::TransportKind;

/// A random URL-safe id of `N` bytes of entropy.
pub fn random_id<const N: usize>() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; N]>())
}

/// Answers a negotiate. A draining node makes no new connections of its own (docs/semantics.md, "Drain"): it has a
/// ready peer negotiate instead, over the links, so the connection's home is a node that stays; it negotiates
/// itself only when no ready peer answers.
pub(super) async fn negotiate(node: &Node, endpoint: &HubEndpoint, request: &HttpRequest) -> HttpResponse {
    if node.lifecycle_status() == crate::cluster::NodeStatus::Draining {
        if let Some(reply) = super::relay::negotiate_elsewhere(node, endpoint, request.query_string()).await {
            return reply.into_response();
        }
    }
    negotiate_here(node, endpoint, request.query_string()).into_response()
}

/// Negotiates a connection whose home is this node, for a request with this query string.
pub(super) fn negotiate_here(node: &Node, endpoint: &HubEndpoint, query: &str) -> Reply {
    let version = crate::hub::url_query_value(query, "negotiateVersion")
        .and_then(|version| version.parse::<u32>().ok())
        .unwrap_or(0);
    // Only when asked (else the client fails, docs/protocol.md#stateful-reconnect-offer), and only over WebSockets.
    let stateful = crate::hub::url_query_value(query, "useStatefulReconnect")
        .is_some_and(|asked| asked.eq_ignore_ascii_case("true"))
        && !node.limits().reconnect_window.is_zero()
        && endpoint.offers(TransportKind::WebSockets);
    let id = endpoint.context.new_connection_id(&random_id::<16>());
    // Version 1 tokens are signed, so that any node of the cluster can tell whose they are (`super::token`);
    // version 0 uses the id, which only the negotiating node knows.
    let token = if version >= 1 {
        node.token_keys()
            .issue(endpoint.path(), &id, node.router().incarnation().generation)
    } else {
        id.to_string()
    };
    let transports = IMPLEMENTED
        .iter()
        .filter(|transport| endpoint.offers(**transport))
        .map(|transport| AvailableTransport::new(transport.name(), transfer_formats(*transport)))
        .collect();
    {
        let negotiated = Negotiated {
            id: id.clone(),
            created: Instant::now(),
            stateful,
            active: None,
            home: None,
        };
        let limits = node.limits();
        endpoint
            .tokens
            .lock()
            .insert_fresh(token.clone(), negotiated, limits.max_pending_negotiations, &limits.bounds_hit);
    }
    let body =
        NegotiateResponse::new(version.min(1), id.to_string(), token, transports).with_stateful_reconnect(stateful);
    match serde_json::to_vec(&body) {
        Ok(json) => Reply::with_body(StatusCode::OK, "application/json", Bytes::from(json)),
        Err(error) => Reply::text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

fn transfer_formats(transport: TransportKind) -> Vec<TransferFormat> {
    match transport {
        TransportKind::ServerSentEvents => vec![TransferFormat::Text],
        TransportKind::WebSockets | TransportKind::LongPolling => vec![TransferFormat::Text, TransferFormat::Binary],
    }
}
