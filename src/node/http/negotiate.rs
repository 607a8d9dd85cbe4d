//! `POST [base]/negotiate`: a new connection id and token, the transports the hub offers, and stateful reconnect when
//! the client asks for it and it can work.

use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use tokio::time::Instant;

use super::super::Node;
use super::endpoint::{HubEndpoint, Negotiated, IMPLEMENTED};
use crate::protocol::negotiate::{AvailableTransport, NegotiateResponse};
use crate::protocol::TransferFormat;
use crate::transport::TransportKind;

/// A random URL-safe id of `N` bytes of entropy.
pub fn random_id<const N: usize>() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; N]>())
}

pub(super) fn negotiate(node: &Node, endpoint: &HubEndpoint, request: &HttpRequest) -> HttpResponse {
    let version = crate::hub::url_query_value(request.query_string(), "negotiateVersion")
        .and_then(|version| version.parse::<u32>().ok())
        .unwrap_or(0);
    // Only when asked (else the client fails, docs/protocol.md#stateful-reconnect-offer), and only over WebSockets.
    let stateful = crate::hub::url_query_value(request.query_string(), "useStatefulReconnect")
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
    HttpResponse::Ok().json(body)
}

fn transfer_formats(transport: TransportKind) -> Vec<TransferFormat> {
    match transport {
        TransportKind::ServerSentEvents => vec![TransferFormat::Text],
        TransportKind::WebSockets | TransportKind::LongPolling => vec![TransferFormat::Text, TransferFormat::Binary],
    }
}
