//! The raw `/echo` endpoint: no hub protocol, every chunk echoed back, over WebSockets, Server-Sent Events and long
//! polling through the transport modules (SSE and long polling only for a client that sends the negotiate's
//! `testCookie` back, as upstream's). Owns the negotiated echo connections and their HTTP handlers.

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::connection::Limits;
use crate::node::http::{long_polling_options, poll_response, random_id, sse_response, NEGOTIATE_EXPIRY};
use crate::protocol::negotiate::{AvailableTransport, NegotiateResponse};
use crate::protocol::TransferFormat;
use crate::transport::long_polling::{long_polling, LongPollingHandle};
use crate::transport::sse::SseTransport;
use crate::transport::upgraded::UpgradedWebSocket;
use crate::transport::{post_channel, CloseKind, PostSender, Transport, TransportKind};

/// The cookie every negotiate sets, which an echo connection over SSE or long polling must carry.
const TEST_COOKIE: &str = "testCookie";

/// The negotiated connections of the raw `/echo` endpoint, by connection token, and the limits its long polls use.
pub(super) struct EchoConnections {
    limits: Limits,
    slots: Mutex<HashMap<String, EchoSlot>>,
}

/// What an `/echo` connection token addresses.
enum EchoSlot {
    /// Negotiated then, no transport open yet.
    Fresh(Instant),
    /// An SSE stream is open; POST bodies go through the sender.
    ServerSentEvents(PostSender),
    /// Long polling is running.
    LongPolling(PostSender, LongPollingHandle),
}

impl EchoConnections {
    /// No connections yet; long polls use `limits`.
    pub(super) fn new(limits: Limits) -> Self {
        EchoConnections {
            limits,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn forget(&self, token: &str) {
        self.slots.lock().remove(token);
    }
}

/// `POST /echo/negotiate`: the raw echo endpoint offers WebSockets, Server-Sent Events (text) and long polling.
pub(super) async fn echo_negotiate(request: HttpRequest, echo: web::Data<EchoConnections>) -> HttpResponse {
    let version = crate::hub::url_query_value(request.query_string(), "negotiateVersion")
        .and_then(|version| version.parse::<u32>().ok())
        .unwrap_or(0)
        .min(1);
    let id = random_id::<16>();
    let token = if version >= 1 { random_id::<32>() } else { id.clone() };
    let both = vec![TransferFormat::Text, TransferFormat::Binary];
    let transports = vec![
        AvailableTransport::new(TransportKind::WebSockets.name(), both.clone()),
        AvailableTransport::new(TransportKind::ServerSentEvents.name(), vec![TransferFormat::Text]),
        AvailableTransport::new(TransportKind::LongPolling.name(), both),
    ];
    {
        let mut slots = echo.slots.lock();
        slots.retain(|_, slot| !matches!(slot, EchoSlot::Fresh(created) if created.elapsed() >= NEGOTIATE_EXPIRY));
        slots.insert(token.clone(), EchoSlot::Fresh(Instant::now()));
    }
    HttpResponse::Ok().json(NegotiateResponse::new(version, id, token, transports))
}

fn echo_text(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status).content_type("text/plain").body(body)
}

/// The raw echo handler, over any transport: every chunk the client sends goes back as it came (text, or binary
/// when it is not UTF-8 and the transport can carry binary), until the client leaves.
async fn echo_chunks<T: Transport>(mut transport: T) {
    while let Some(Ok(chunk)) = transport.recv().await {
        let format = if transport.kind() == TransportKind::ServerSentEvents || std::str::from_utf8(&chunk).is_ok() {
            TransferFormat::Text
        } else {
            TransferFormat::Binary
        };
        if transport.send(chunk, format).await.is_err() {
            break;
        }
    }
    transport.close(CloseKind::Normal).await;
}

/// As upstream's echo handler: a connection whose opening request (the event stream, the first poll) carries no
/// `testCookie` ends at once, unread, so a client that withholds credentials (`withCredentials: false` across
/// sites) sees its connection close without an echo; with the cookie, every chunk is echoed. WebSockets are exempt.
async fn echo_if_cookie<T: Transport>(transport: T, has_cookie: bool) {
    if has_cookie {
        echo_chunks(transport).await;
    } else {
        transport.close(CloseKind::Normal).await;
    }
}

/// `GET /echo?id=`: an SSE stream (`Accept: text/event-stream`) or a long poll; the first poll answers at once,
/// later ones wait for echoes, the last gets 204. A WebSocket upgrade never gets here: the server hands it to
/// [`echo_socket`].
pub(super) async fn echo_get(request: HttpRequest, echo: web::Data<EchoConnections>) -> HttpResponse {
    let Some(token) = crate::hub::url_query_value(request.query_string(), "id") else {
        return echo_text(StatusCode::BAD_REQUEST, "Connection ID required");
    };
    let wants_sse = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    let open_poll = match echo.slots.lock().get(&token) {
        Some(EchoSlot::LongPolling(_, poll)) if !wants_sse => Some(poll.clone()),
        _ => None,
    };
    if let Some(poll) = open_poll {
        return poll_response(poll.poll().await);
    }
    let has_cookie = request.cookie(TEST_COOKIE).is_some();
    let (post, inbound) = post_channel();
    let mut slots = echo.slots.lock();
    match slots.get(&token) {
        None => echo_text(StatusCode::NOT_FOUND, "No Connection with that ID"),
        Some(EchoSlot::Fresh(created)) if created.elapsed() >= NEGOTIATE_EXPIRY => {
            slots.remove(&token);
            echo_text(StatusCode::NOT_FOUND, "No Connection with that ID")
        }
        Some(EchoSlot::Fresh(_)) if wants_sse => {
            slots.insert(token.clone(), EchoSlot::ServerSentEvents(post));
            drop(slots);
            let (transport, events) = SseTransport::new(inbound);
            let echo = echo.into_inner();
            actix_web::rt::spawn(async move {
                echo_if_cookie(transport, has_cookie).await;
                echo.forget(&token);
            });
            sse_response(events)
        }
        Some(EchoSlot::Fresh(_)) => {
            let (poll, transport) = long_polling(long_polling_options(&echo.limits), inbound);
            slots.insert(token.clone(), EchoSlot::LongPolling(post, poll.clone()));
            drop(slots);
            let echo = echo.into_inner();
            actix_web::rt::spawn(async move {
                echo_if_cookie(transport, has_cookie).await;
                poll.terminated().await;
                echo.forget(&token);
            });
            HttpResponse::Ok().content_type("text/plain").finish()
        }
        Some(EchoSlot::ServerSentEvents(_)) if wants_sse => echo_text(
            StatusCode::CONFLICT,
            "Another Server-Sent Events stream is already open for this connection.",
        ),
        Some(_) => echo_text(StatusCode::BAD_REQUEST, "Cannot change transports mid-connection"),
    }
}

/// `POST /echo?id=`: the send half of SSE and long polling; each whole body is echoed back as one chunk.
pub(super) async fn echo_post(
    request: HttpRequest,
    mut body: web::Payload,
    echo: web::Data<EchoConnections>,
) -> HttpResponse {
    let Some(token) = crate::hub::url_query_value(request.query_string(), "id") else {
        return echo_text(StatusCode::BAD_REQUEST, "Connection ID required");
    };
    let sender = match echo.slots.lock().get(&token) {
        None => return echo_text(StatusCode::NOT_FOUND, "No Connection with that ID"),
        Some(EchoSlot::Fresh(_)) => {
            return echo_text(
                StatusCode::BAD_REQUEST,
                "The connection has no transport yet; open one before sending.",
            )
        }
        Some(EchoSlot::ServerSentEvents(sender) | EchoSlot::LongPolling(sender, _)) => sender.clone(),
    };
    let Some(in_flight) = sender.begin() else {
        return echo_text(
            StatusCode::CONFLICT,
            "Another POST request is still in progress for this connection.",
        );
    };
    let max = echo.limits.max_frame;
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return echo_text(StatusCode::BAD_REQUEST, "The request body could not be read.");
        };
        if bytes.len() + chunk.len() > max {
            return echo_text(StatusCode::PAYLOAD_TOO_LARGE, "The request body is too large.");
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.is_empty() {
        return HttpResponse::Ok().finish();
    }
    match in_flight.deliver(bytes.freeze()).await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(_) => echo_text(StatusCode::NOT_FOUND, "No Connection with that ID"),
    }
}

/// `DELETE /echo?id=`: ends a long-polling echo connection (its pending poll gets 204) or forgets a fresh token.
pub(super) async fn echo_delete(request: HttpRequest, echo: web::Data<EchoConnections>) -> HttpResponse {
    let Some(token) = crate::hub::url_query_value(request.query_string(), "id") else {
        return echo_text(StatusCode::BAD_REQUEST, "Connection ID required");
    };
    let mut slots = echo.slots.lock();
    match slots.get(&token) {
        None => echo_text(StatusCode::NOT_FOUND, "No Connection with that ID"),
        Some(EchoSlot::LongPolling(_, poll)) => {
            poll.delete();
            HttpResponse::Accepted().finish()
        }
        Some(EchoSlot::Fresh(_)) => {
            slots.remove(&token);
            HttpResponse::Accepted().finish()
        }
        Some(EchoSlot::ServerSentEvents(_)) => echo_text(
            StatusCode::BAD_REQUEST,
            "Cannot terminate this connection using the DELETE endpoint.",
        ),
    }
}

/// `GET /echo` as a WebSocket (with or without an id): sends every message back as it came, no hub protocol. A
/// client's Close is answered with 1000, as ASP.NET does (docs/protocol.md#websocket-close-codes).
pub(super) async fn echo_socket(mut socket: UpgradedWebSocket) {
    while let Some(Ok((bytes, format))) = socket.recv_message().await {
        if socket.send(bytes, format).await.is_err() {
            return;
        }
    }
    socket.close(CloseKind::Normal).await;
}
