//! `POST [base]`: the send half of Server-Sent Events and long polling.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::super::Node;
use super::endpoint::{lookup, HubEndpoint, Lookup};
use super::{no_connection, text};
use crate::transport::TransportKind;

/// The send half of SSE and long polling: the whole body goes to the connection, then `200`
/// (docs/protocol.md#post-send-half).
pub(super) async fn post(node: &Node, endpoint: &HubEndpoint, token: &str, mut body: web::Payload) -> HttpResponse {
    let sender = match lookup(endpoint, token) {
        Lookup::Missing => return no_connection(),
        Lookup::Fresh(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "The connection has no transport yet; open one before sending.",
            )
        }
        Lookup::Open(TransportKind::WebSockets, ..) => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST requests are not allowed on WebSocket connections.",
            )
        }
        Lookup::Open(_, Some(sender), _) => sender,
        Lookup::Open(_, None, _) => return no_connection(),
    };
    let Some(in_flight) = sender.begin() else {
        return text(
            StatusCode::CONFLICT,
            "Another POST request is still in progress for this connection.",
        );
    };
    let max = node.limits().max_frame;
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return text(StatusCode::BAD_REQUEST, "The request body could not be read.");
        };
        if bytes.len() + chunk.len() > max {
            return HttpResponse::build(StatusCode::PAYLOAD_TOO_LARGE)
                .content_type("text/plain")
                .body(format!("The request body exceeds the maximum of {max} bytes."));
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.is_empty() {
        return HttpResponse::Ok().finish();
    }
    match in_flight.deliver(Bytes::from(bytes)).await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(_) => no_connection(),
    }
}
