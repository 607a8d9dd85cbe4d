//! `GET [base]` with `Accept: text/event-stream`: opens a token's Server-Sent Events stream and starts its
//! connection.

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};

use super::super::Node;
use super::access::request_info;
use super::endpoint::{claim, insert_adopted, lookup, spawn_connection, Active, HubEndpoint, Lookup};
use super::relay::{self, Route};
use super::{no_connection, text};
use crate::auth::Authenticated;
use crate::connection::{self, ConnectionId};
use crate::transport::sse::{SseStream, SseTransport};
use crate::transport::{post_channel, PostReceiver, TransportKind};

pub(super) async fn connect_sse(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: String,
    request: &HttpRequest,
    user: Option<Authenticated>,
) -> HttpResponse {
    match relay::route(node, &endpoint, &token) {
        Route::Here => connect_local(node, endpoint, token, request, user),
        Route::Missing => no_connection(),
        Route::Home(home, id) => {
            if let Err(reply) = relay::adopt(node, &endpoint, &home, &token, TransportKind::ServerSentEvents).await {
                return reply.into_response();
            }
            // (An SSE stream never resumes: the answer is `Adopted`.)
            let (post, inbound) = post_channel();
            insert_adopted(&endpoint, token.clone(), id.clone(), home, Active::ServerSentEvents(post), false);
            start(node, endpoint, token, id, request, user, inbound)
        }
    }
}

/// Opens the stream of a token this node holds.
fn connect_local(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: String,
    request: &HttpRequest,
    user: Option<Authenticated>,
) -> HttpResponse {
    let id = match lookup(&endpoint, &token) {
        Lookup::Missing => return no_connection(),
        Lookup::Open(TransportKind::ServerSentEvents, ..) | Lookup::Adopted(_, TransportKind::ServerSentEvents) => {
            return text(
                StatusCode::CONFLICT,
                "Another Server-Sent Events stream is already open for this connection.",
            )
        }
        Lookup::Open(..) | Lookup::Adopted(..) => {
            return text(StatusCode::BAD_REQUEST, "Cannot change transports mid-connection")
        }
        Lookup::Fresh(id) => id,
    };
    let (post, inbound) = post_channel();
    if !claim(&endpoint, &token, Active::ServerSentEvents(post)) {
        return text(
            StatusCode::CONFLICT,
            "Another transport is opening for this connection.",
        );
    }
    start(node, endpoint, token, id, request, user, inbound)
}

/// Starts the connection of a claimed token on this SSE stream.
fn start(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: String,
    id: ConnectionId,
    request: &HttpRequest,
    user: Option<Authenticated>,
    inbound: PostReceiver,
) -> HttpResponse {
    let (transport, events) = SseTransport::new(inbound);
    spawn_connection(
        node,
        endpoint,
        token,
        id,
        request_info(request.head(), user),
        async move |setup| {
            connection::run(transport, setup).await;
        },
    );
    sse_response(events)
}

/// The `200` response that carries an SSE connection's events, for any handler of an [`SseTransport`] (hubs here,
/// raw connection handlers such as the test server's `/echo`).
pub fn sse_response(events: SseStream) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Proxies such as nginx must not buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events)
}
