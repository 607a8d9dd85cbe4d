//! Long polling: `GET [base]` polls (the first one opens the connection), `DELETE [base]` ends the connection.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use super::super::Node;
use super::access::request_info;
use super::endpoint::{claim, lookup, spawn_connection, Active, HubEndpoint, Lookup};
use super::{no_connection, text};
use crate::auth::Authenticated;
use crate::connection::{self, Limits};
use crate::protocol::TransferFormat;
use crate::transport::long_polling::{self, LongPollingOptions, PollOutcome};
use crate::transport::{post_channel, TransportKind};

pub(super) async fn long_poll(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: String,
    request: &HttpRequest,
    user: Option<Authenticated>,
) -> HttpResponse {
    let id = match lookup(&endpoint, &token) {
        Lookup::Missing => return no_connection(),
        Lookup::Open(TransportKind::LongPolling, _, Some(poll)) => return poll_response(poll.poll().await),
        Lookup::Open(..) => return text(StatusCode::BAD_REQUEST, "Cannot change transports mid-connection"),
        Lookup::Fresh(id) => id,
    };
    let (post, inbound) = post_channel();
    let (poll, transport) = long_polling::long_polling(long_polling_options(node.limits()), inbound);
    if !claim(&endpoint, &token, Active::LongPolling(post, poll.clone())) {
        return text(
            StatusCode::CONFLICT,
            "Another transport is opening for this connection.",
        );
    }
    spawn_connection(
        node,
        endpoint,
        token,
        id,
        request_info(request.head(), user),
        async move |setup| {
            connection::run(transport, setup).await;
            // The client may still have to drain the Close message and see the final 204 before the token goes.
            poll.terminated().await;
        },
    );
    // The first poll answers at once and marks the connection initialized (docs/protocol.md#first-poll); the
    // client sends its handshake only after it.
    HttpResponse::Ok().content_type("text/plain").finish()
}

/// The long-polling timers and caps that `limits` set.
pub(crate) fn long_polling_options(limits: &Limits) -> LongPollingOptions {
    LongPollingOptions {
        poll_timeout: limits.poll_timeout,
        disconnect_timeout: limits.poll_disconnect_timeout,
        max_response: limits.write_batch.max(1),
        max_queued: limits.max_frame.max(limits.write_batch),
    }
}

/// The response to a long poll with `outcome`, for any handler of a long-polling transport (hubs here, raw
/// connection handlers such as the test server's `/echo`).
pub fn poll_response(outcome: PollOutcome) -> HttpResponse {
    match outcome {
        PollOutcome::Data(bytes, format) => {
            let content_type = match format {
                TransferFormat::Text => "text/plain; charset=utf-8",
                TransferFormat::Binary => "application/octet-stream",
            };
            HttpResponse::Ok().content_type(content_type).body(bytes)
        }
        PollOutcome::TimedOut => HttpResponse::Ok().content_type("text/plain").finish(),
        PollOutcome::Superseded | PollOutcome::Ended => HttpResponse::NoContent().finish(),
    }
}

/// `DELETE [base]`: ends a long-polling connection; its pending poll gets 204 (docs/protocol.md#long-polling-delete).
pub(super) fn delete(endpoint: &HubEndpoint, token: &str) -> HttpResponse {
    match lookup(endpoint, token) {
        Lookup::Missing => no_connection(),
        Lookup::Open(TransportKind::LongPolling, _, Some(poll)) => {
            poll.delete();
            HttpResponse::Accepted().finish()
        }
        Lookup::Open(..) => text(
            StatusCode::BAD_REQUEST,
            "Cannot terminate this connection using the DELETE endpoint.",
        ),
        Lookup::Fresh(_) => {
            endpoint.tokens.lock().remove(token);
            HttpResponse::Accepted().finish()
        }
    }
}
