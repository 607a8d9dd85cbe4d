//! Long polling: `GET [base]` polls (the first one opens the connection), `DELETE [base]` ends the connection.
//!
//! A long-polling connection runs on the node that negotiated it (its home); polls, POSTs and DELETEs that reach
//! another node are relayed there (`super::relay`), so these handlers answer with a [`Reply`] that can cross the
//! links.

use std::sync::Arc;

use actix_web::http::StatusCode;

use super::super::Node;
use super::endpoint::{claim, lookup, spawn_connection, Active, HubEndpoint, Lookup};
use super::reply::Reply;
use crate::connection::{self, Limits, RequestInfo};
use crate::protocol::TransferFormat;
use crate::transport::long_polling::{self, LongPollingOptions, PollOutcome};
use crate::transport::{post_channel, TransportKind};

/// A poll of the connection of `token`, which this node holds: the first one opens the connection (hub code sees
/// the request `request` describes) and answers at once; later ones wait for messages.
pub(super) async fn long_poll(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: String,
    request: impl FnOnce() -> RequestInfo,
) -> Reply {
    let id = match lookup(&endpoint, &token) {
        Lookup::Missing => return Reply::no_connection(),
        Lookup::Open(TransportKind::LongPolling, _, Some(poll)) => return poll_reply(poll.poll().await),
        Lookup::Open(..) | Lookup::Adopted(..) => {
            return Reply::text(StatusCode::BAD_REQUEST, "Cannot change transports mid-connection")
        }
        Lookup::Fresh(id) => id,
    };
    let (post, inbound) = post_channel();
    let (poll, transport) = long_polling::long_polling(long_polling_options(node.limits()), inbound);
    if !claim(&endpoint, &token, Active::LongPolling(post, poll.clone())) {
        return Reply::text(StatusCode::CONFLICT, "Another transport is opening for this connection.");
    }
    spawn_connection(node, endpoint, token, id, request(), async move |setup| {
        connection::run(transport, setup).await;
        // The client may still have to drain the Close message and see the final 204 before the token goes.
        poll.terminated().await;
    });
    // The first poll answers at once and marks the connection initialized (docs/protocol.md#first-poll); the
    // client sends its handshake only after it.
    Reply::with_body(StatusCode::OK, "text/plain", bytes::Bytes::new())
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

fn poll_reply(outcome: PollOutcome) -> Reply {
    match outcome {
        PollOutcome::Data(bytes, format) => {
            let content_type = match format {
                TransferFormat::Text => "text/plain; charset=utf-8",
                TransferFormat::Binary => "application/octet-stream",
            };
            Reply::with_body(StatusCode::OK, content_type, bytes)
        }
        PollOutcome::TimedOut => Reply::with_body(StatusCode::OK, "text/plain", bytes::Bytes::new()),
        PollOutcome::Superseded | PollOutcome::Ended => Reply::empty(StatusCode::NO_CONTENT),
    }
}

/// The response to a long poll with `outcome`, for raw connection handlers such as the test server's `/echo`.
#[cfg(feature = "test-util")]
pub fn poll_response(outcome: PollOutcome) -> actix_web::HttpResponse {
    poll_reply(outcome).into_response()
}

/// `DELETE [base]`: ends a long-polling connection; its pending poll gets 204 (docs/protocol.md#long-polling-delete).
pub(super) fn delete(endpoint: &HubEndpoint, token: &str) -> Reply {
    match lookup(endpoint, token) {
        Lookup::Missing => Reply::no_connection(),
        Lookup::Open(TransportKind::LongPolling, _, Some(poll)) => {
            poll.delete();
            Reply::empty(StatusCode::ACCEPTED)
        }
        Lookup::Open(..) | Lookup::Adopted(..) => Reply::text(
            StatusCode::BAD_REQUEST,
            "Cannot terminate this connection using the DELETE endpoint.",
        ),
        Lookup::Fresh(_) => {
            endpoint.tokens.lock().remove(token);
            Reply::empty(StatusCode::ACCEPTED)
        }
    }
}
