//! `POST [base]`: the send half of Server-Sent Events and long polling.
//!
//! The POST may reach any node: the node that holds the token delivers it; another node reads the body and relays
//! it to the connection's home (`super::relay`), which delivers it or, for an SSE stream that another node took,
//! passes it on to that node.

use actix_web::http::StatusCode;
use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::super::Node;
use super::endpoint::{lookup, HubEndpoint, Lookup};
use super::relay;
use super::reply::Reply;
use crate::transport::{PostInFlight, PostSender, TransportKind};

/// The send half of SSE and long polling for a token this node holds: the whole body goes to the connection, then
/// `200` (docs/protocol.md#post-send-half).
pub(super) async fn post(node: &Node, endpoint: &HubEndpoint, token: &str, body: web::Payload) -> Reply {
    let sender = match sender_of(endpoint, token) {
        Ok(sender) => sender,
        Err(Forward::Reply(reply)) => return reply,
        Err(Forward::To(server)) => {
            return match read_body(node, body).await {
                Ok(bytes) => relay::post(node, endpoint, &server, token, bytes).await,
                Err(reply) => reply,
            }
        }
    };
    let Some(in_flight) = sender.begin() else {
        return busy();
    };
    match read_body(node, body).await {
        Ok(bytes) => deliver(in_flight, bytes).await,
        Err(reply) => reply,
    }
}

/// A POST's body that another node read and relayed here, for a token this node holds.
pub(super) async fn post_bytes(node: &Node, endpoint: &HubEndpoint, token: &str, bytes: Bytes) -> Reply {
    let sender = match sender_of(endpoint, token) {
        Ok(sender) => sender,
        Err(Forward::Reply(reply)) => return reply,
        Err(Forward::To(server)) => return relay::post(node, endpoint, &server, token, bytes).await,
    };
    match sender.begin() {
        Some(in_flight) => deliver(in_flight, bytes).await,
        None => busy(),
    }
}

/// Hands a POST's body to the connection: `200` once it took it.
async fn deliver(in_flight: PostInFlight, bytes: Bytes) -> Reply {
    if bytes.is_empty() {
        return Reply::empty(StatusCode::OK);
    }
    match in_flight.deliver(bytes).await {
        Ok(()) => Reply::empty(StatusCode::OK),
        Err(_) => Reply::no_connection(),
    }
}

/// Where a POST for a token this node knows goes instead of a sender here.
enum Forward {
    /// Answer this.
    Reply(Reply),
    /// The SSE stream of this connection runs on that node.
    To(crate::cluster::NodeId),
}

fn sender_of(endpoint: &HubEndpoint, token: &str) -> Result<PostSender, Forward> {
    match lookup(endpoint, token) {
        Lookup::Missing => Err(Forward::Reply(Reply::no_connection())),
        Lookup::Fresh(_) => Err(Forward::Reply(Reply::text(
            StatusCode::BAD_REQUEST,
            "The connection has no transport yet; open one before sending.",
        ))),
        Lookup::Open(TransportKind::WebSockets, ..) | Lookup::Adopted(_, TransportKind::WebSockets) => {
            Err(Forward::Reply(Reply::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST requests are not allowed on WebSocket connections.",
            )))
        }
        Lookup::Adopted(server, _) => Err(Forward::To(server)),
        Lookup::Open(_, Some(sender), _) => Ok(sender),
        Lookup::Open(_, None, _) => Err(Forward::Reply(Reply::no_connection())),
    }
}

fn busy() -> Reply {
    Reply::text(
        StatusCode::CONFLICT,
        "Another POST request is still in progress for this connection.",
    )
}

/// A POST's whole body, at most the node's message size limit.
pub(super) async fn read_body(node: &Node, mut body: web::Payload) -> Result<Bytes, Reply> {
    let max = node.limits().max_frame;
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return Err(Reply::text(StatusCode::BAD_REQUEST, "The request body could not be read."));
        };
        if bytes.len() + chunk.len() > max {
            node.limits().bounds_hit.bodies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Reply::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The request body exceeds the maximum of {max} bytes."),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}
