//! The HTTP face of a node: hub routes matched case-insensitively, negotiate, and the three transports.
//!
//! Routes for a hub at `[base]` (docs/protocol.md#routes): `POST [base]/negotiate`; `GET [base]` for a
//! WebSocket upgrade (with `?id=<connectionToken>` after negotiate or without an id for `skipNegotiation`), an
//! SSE stream (`Accept: text/event-stream`) or a long poll (anything else); `POST [base]` for the send half of
//! SSE and long polling; `DELETE [base]` to end a long-polling connection.
//!
//! Negotiated connections that never connect expire after [`NEGOTIATE_EXPIRY`]. A token addresses at most one
//! transport: a second WebSocket or SSE stream for it gets 409, another transport 400, a second concurrent POST
//! 409, and a finished connection's token 404. A new poll while one is pending ends the older with 204
//! (docs/protocol.md#later-polls). The connection task starts on the WebSocket upgrade, the SSE GET or the first
//! poll (answered at once), and hub code sees that request (docs/protocol.md#request-context). This module calls
//! the transports and the connection task; the hub layer only through [`HubContext`].
//!
//! Stateful reconnect: negotiate offers it when the client asks (`useStatefulReconnect=true`), the hub
//! serves WebSockets and `Limits::reconnect_window` is not zero. Such a token keeps addressing its connection while
//! the connection task waits for its client to come back: a WebSocket for such a token is accepted (replacing the
//! one the connection has, which is usually dead and not yet noticed, as ASP.NET does) and handed to that task through its [`ResumeHandle`] (via [`reconnect::relay`], since the task may run
//! on another worker); once the connection has ended the token gets 404 (docs/protocol.md#stateful-reconnect).
//!
//! Authentication: every hub request is authenticated with the node's [`crate::auth::Authenticator`],
//! if it has one, from the `Authorization: Bearer` header or else the `access_token` query parameter. A valid
//! token makes the connection's user and claims ([`RequestInfo`]); an invalid one makes the request anonymous. A
//! hub that requires a user answers anonymous negotiate and transport requests with 401 and an empty body (the
//! client's error then reads `Unauthorized: Status code '401'`), and authenticated ones that lack a required claim
//! with 403 (docs/protocol.md#authentication).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::RequestHead;
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::Instrument;

use super::Node;
use crate::auth::{self, AuthError, Authenticated};
use crate::connection::reconnect::{self, ResumeHandle};
use crate::connection::{self, ConnectionId, ConnectionSetup, Limits, RequestInfo};
use crate::hub::HubContext;
use crate::protocol::negotiate::{AvailableTransport, NegotiateResponse};
use crate::protocol::TransferFormat;
use crate::transport::long_polling::{self, LongPollingHandle, LongPollingOptions, PollOutcome};
use crate::transport::sse::{SseStream, SseTransport};
use crate::transport::websocket::WebSocketTransport;
use crate::transport::{post_channel, PostSender, TransportKind};

/// How long a negotiated connection may wait for its transport (ASP.NET's disconnect timeout).
pub const NEGOTIATE_EXPIRY: Duration = Duration::from_secs(15);

/// The transports this build can serve.
const IMPLEMENTED: &[TransportKind] = &[
    TransportKind::WebSockets,
    TransportKind::ServerSentEvents,
    TransportKind::LongPolling,
];

struct Negotiated {
    id: ConnectionId,
    created: Instant,
    /// Whether negotiate turned stateful reconnect on for this token.
    stateful: bool,
    /// The transport open for this token, once one is.
    active: Option<Active>,
}

/// The HTTP side of the transport a token's connection runs on.
enum Active {
    /// A WebSocket, with the way to resume its connection when stateful reconnect is on.
    WebSocket(Option<ResumeHandle>),
    ServerSentEvents(PostSender),
    LongPolling(PostSender, LongPollingHandle),
}

impl Active {
    fn kind(&self) -> TransportKind {
        match self {
            Active::WebSocket(_) => TransportKind::WebSockets,
            Active::ServerSentEvents(_) => TransportKind::ServerSentEvents,
            Active::LongPolling(..) => TransportKind::LongPolling,
        }
    }
}

/// One hub as served over HTTP: its context and its negotiated connection tokens.
pub(crate) struct HubEndpoint {
    pub(crate) context: HubContext,
    tokens: Mutex<HashMap<String, Negotiated>>,
}

impl HubEndpoint {
    pub(crate) fn new(context: HubContext) -> Self {
        HubEndpoint {
            context,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn offers(&self, transport: TransportKind) -> bool {
        IMPLEMENTED.contains(&transport) && self.context.hub().offered_transports().contains(&transport)
    }
}

/// Lower-cases a path and drops trailing slashes, the form hub paths are looked up in.
pub(crate) fn normalize_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    let with_root = if trimmed.starts_with('/') {
        trimmed.to_ascii_lowercase()
    } else {
        format!("/{}", trimmed.to_ascii_lowercase())
    };
    with_root
}

/// CORS as browsers on another origin need it (docs/protocol.md#cors-with-credentials): the origin is echoed,
/// credentials allowed, requested methods and headers allowed, preflights answered.
pub fn cors() -> actix_cors::Cors {
    actix_cors::Cors::permissive()
}

pub(crate) fn configure(node: Node, config: &mut web::ServiceConfig) {
    config.app_data(web::Data::new(node)).default_service(web::to(dispatch));
}

/// A random URL-safe id of `N` bytes of entropy.
pub fn random_id<const N: usize>() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; N]>())
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status).content_type("text/plain").body(body)
}

/// The path of the node's cluster view, for operators and tests: `{"node": …, "live": [names]}`.
pub const CLUSTER_PATH: &str = "/_hubmesh/cluster";

async fn dispatch(request: HttpRequest, body: web::Payload, node: web::Data<Node>) -> HttpResponse {
    let path = normalize_path(request.path());
    if path == CLUSTER_PATH && request.method() == Method::GET {
        let live: Vec<String> = match node.cluster_view().await {
            Some(view) => view.live.iter().map(|member| member.id.name.to_string()).collect(),
            None => vec![node.name().to_owned()],
        };
        return HttpResponse::Ok().json(serde_json::json!({ "node": node.name(), "live": live }));
    }
    if let Some(base) = path.strip_suffix("/negotiate") {
        if let Some(endpoint) = node.endpoint(base) {
            if request.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "");
            }
            return match authenticate(&node, endpoint, request.head()) {
                Ok(_) => negotiate(&node, endpoint, &request),
                Err(refusal) => refusal.response(),
            };
        }
    }
    let Some(endpoint) = node.endpoint(&path).cloned() else {
        return text(StatusCode::NOT_FOUND, "");
    };
    let user = match authenticate(&node, &endpoint, request.head()) {
        Ok(user) => user,
        Err(refusal) => return refusal.response(),
    };
    let token = crate::hub::url_query_value(request.query_string(), "id");
    match *request.method() {
        Method::GET if is_websocket_upgrade(request.head()) => {
            match accept_websocket(&node, endpoint, token, request.head(), user) {
                Ok(accepted) => upgrade_with_actix_ws(accepted, &request, body),
                Err(refusal) => *refusal,
            }
        }
        Method::GET => {
            let wants_sse = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|accept| accept.to_str().ok())
                .is_some_and(|accept| accept.contains("text/event-stream"));
            let transport = if wants_sse {
                TransportKind::ServerSentEvents
            } else {
                TransportKind::LongPolling
            };
            let Some(token) = token else {
                return text(StatusCode::BAD_REQUEST, "Connection ID required");
            };
            if !endpoint.offers(transport) {
                return HttpResponse::build(StatusCode::NOT_FOUND)
                    .content_type("text/plain")
                    .body(format!(
                        "{} transport not supported by this end point type",
                        transport.name()
                    ));
            }
            if wants_sse {
                connect_sse(&node, endpoint, token, &request, user)
            } else {
                long_poll(&node, endpoint, token, &request, user).await
            }
        }
        Method::POST => match token {
            None => text(StatusCode::BAD_REQUEST, "Connection ID required"),
            Some(token) => post(&node, &endpoint, &token, body).await,
        },
        Method::DELETE => match token {
            None => text(StatusCode::BAD_REQUEST, "Connection ID required"),
            Some(token) => delete(&endpoint, &token),
        },
        _ => text(StatusCode::METHOD_NOT_ALLOWED, ""),
    }
}

/// Why a hub request is refused: its response has an empty body (docs/protocol.md#error-bodies).
enum Refusal {
    /// No valid token (with why a token that was sent is not accepted): 401.
    Unauthorized(Option<AuthError>),
    /// A valid token without a claim the hub requires: 403.
    Forbidden,
}

impl Refusal {
    fn response(self) -> HttpResponse {
        match self {
            Refusal::Unauthorized(refused) => {
                // RFC 6750: name the scheme, and say why a token that was sent is not accepted.
                let challenge = match refused {
                    Some(error) => {
                        let description: String = error
                            .to_string()
                            .chars()
                            .filter(|c| (c.is_ascii_graphic() || *c == ' ') && *c != '"' && *c != '\\')
                            .collect();
                        format!("Bearer error=\"invalid_token\", error_description=\"{description}\"")
                    }
                    None => "Bearer".to_owned(),
                };
                HttpResponse::Unauthorized()
                    .insert_header((header::WWW_AUTHENTICATE, challenge))
                    .finish()
            }
            Refusal::Forbidden => HttpResponse::Forbidden().finish(),
        }
    }
}

/// Authenticates a hub request: `Ok` with the user of a valid bearer token (or `None`, anonymous), or why a hub
/// whose requirement the request does not meet refuses it.
fn authenticate(node: &Node, endpoint: &HubEndpoint, head: &RequestHead) -> Result<Option<Authenticated>, Refusal> {
    let header = head
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let token = auth::bearer_token(header, query_string(head));
    let mut refused = None;
    let user = match (node.authenticator(), &token) {
        (Some(authenticator), Some(token)) => match authenticator.authenticate(token) {
            Ok(user) => Some(user),
            Err(error) => {
                tracing::debug!(%error, path = head.uri.path(), "bearer token refused");
                refused = Some(error);
                None
            }
        },
        _ => None,
    };
    let Some(requirement) = endpoint.context.hub().requirement() else {
        return Ok(user);
    };
    match &user {
        None => Err(Refusal::Unauthorized(refused)),
        Some(user) if !requirement.allows(Some(&user.claims)) => Err(Refusal::Forbidden),
        Some(_) => Ok(user),
    }
}

/// What a token addresses, for the HTTP transports.
enum Lookup {
    /// Unknown, finished or expired: 404.
    Missing,
    /// Negotiated, no transport open yet.
    Fresh(ConnectionId),
    /// A transport is open; clones of its HTTP side.
    Open(TransportKind, Option<PostSender>, Option<LongPollingHandle>),
}

fn lookup(endpoint: &HubEndpoint, token: &str) -> Lookup {
    let mut tokens = endpoint.tokens.lock();
    match tokens.get(token) {
        None => Lookup::Missing,
        Some(negotiated) => match &negotiated.active {
            Some(active) => {
                let (post, poll) = match active {
                    Active::WebSocket(_) => (None, None),
                    Active::ServerSentEvents(post) => (Some(post.clone()), None),
                    Active::LongPolling(post, poll) => (Some(post.clone()), Some(poll.clone())),
                };
                Lookup::Open(active.kind(), post, poll)
            }
            None if negotiated.created.elapsed() >= NEGOTIATE_EXPIRY => {
                tokens.remove(token);
                Lookup::Missing
            }
            None => Lookup::Fresh(negotiated.id.clone()),
        },
    }
}

fn no_connection() -> HttpResponse {
    text(StatusCode::NOT_FOUND, "No Connection with that ID")
}

/// Claims a fresh token for `active`; `false` if another request claimed it first.
fn claim(endpoint: &HubEndpoint, token: &str, active: Active) -> bool {
    match endpoint.tokens.lock().get_mut(token) {
        Some(negotiated) if negotiated.active.is_none() => {
            negotiated.active = Some(active);
            true
        }
        _ => false,
    }
}

fn connect_sse(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: String,
    request: &HttpRequest,
    user: Option<Authenticated>,
) -> HttpResponse {
    let id = match lookup(&endpoint, &token) {
        Lookup::Missing => return no_connection(),
        Lookup::Open(TransportKind::ServerSentEvents, ..) => {
            return text(
                StatusCode::CONFLICT,
                "Another Server-Sent Events stream is already open for this connection.",
            )
        }
        Lookup::Open(..) => return text(StatusCode::BAD_REQUEST, "Cannot change transports mid-connection"),
        Lookup::Fresh(id) => id,
    };
    let (post, inbound) = post_channel();
    if !claim(&endpoint, &token, Active::ServerSentEvents(post)) {
        return text(
            StatusCode::CONFLICT,
            "Another transport is opening for this connection.",
        );
    }
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

async fn long_poll(
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

/// The send half of SSE and long polling: the whole body goes to the connection, then `200`
/// (docs/protocol.md#post-send-half).
async fn post(node: &Node, endpoint: &HubEndpoint, token: &str, mut body: web::Payload) -> HttpResponse {
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

/// `DELETE [base]`: ends a long-polling connection; its pending poll gets 204 (docs/protocol.md#long-polling-delete).
fn delete(endpoint: &HubEndpoint, token: &str) -> HttpResponse {
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

/// Spawns the connection task of a newly opened SSE or long-polling connection on this worker; the token is
/// forgotten when `run` ends.
fn spawn_connection<F>(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: String,
    id: ConnectionId,
    request: RequestInfo,
    run: impl FnOnce(ConnectionSetup) -> F,
) where
    F: std::future::Future<Output = ()> + 'static,
{
    let setup = ConnectionSetup {
        id,
        request,
        limits: node.shared_limits(),
        host: Arc::new(endpoint.context.clone()),
        resume: None,
        wake_relay: node.wake_relay(),
    };
    // Chained with `map`, not awaited in an async block, which would hold the connection's future twice.
    let task = run(setup).map(move |()| {
        endpoint.tokens.lock().remove(&token);
    });
    actix_web::rt::spawn(task.instrument(node.span().clone()));
}

fn is_websocket_upgrade(head: &RequestHead) -> bool {
    head.headers()
        .get(header::UPGRADE)
        .and_then(|upgrade| upgrade.to_str().ok())
        .is_some_and(|upgrade| upgrade.eq_ignore_ascii_case("websocket"))
}

fn negotiate(node: &Node, endpoint: &HubEndpoint, request: &HttpRequest) -> HttpResponse {
    let version = crate::hub::url_query_value(request.query_string(), "negotiateVersion")
        .and_then(|version| version.parse::<u32>().ok())
        .unwrap_or(0);
    // Only when asked (else the client fails, docs/protocol.md#stateful-reconnect-offer), and only over WebSockets.
    let stateful = crate::hub::url_query_value(request.query_string(), "useStatefulReconnect")
        .is_some_and(|asked| asked.eq_ignore_ascii_case("true"))
        && !node.limits().reconnect_window.is_zero()
        && endpoint.offers(TransportKind::WebSockets);
    let id = endpoint.context.new_connection_id(&random_id::<16>());
    let token = if version >= 1 {
        random_id::<32>()
    } else {
        id.to_string()
    };
    let transports = IMPLEMENTED
        .iter()
        .filter(|transport| endpoint.offers(**transport))
        .map(|transport| AvailableTransport::new(transport.name(), transfer_formats(*transport)))
        .collect();
    {
        let mut tokens = endpoint.tokens.lock();
        tokens.retain(|_, negotiated| negotiated.active.is_some() || negotiated.created.elapsed() < NEGOTIATE_EXPIRY);
        tokens.insert(
            token.clone(),
            Negotiated {
                id: id.clone(),
                created: Instant::now(),
                stateful,
                active: None,
            },
        );
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

/// The query of a request, without the `?` (empty if none).
fn query_string(head: &RequestHead) -> &str {
    head.uri.query().unwrap_or_default()
}

/// What hub code may read of the request that opens a connection, and who made it.
fn request_info(head: &RequestHead, user: Option<Authenticated>) -> RequestInfo {
    let (user, claims) = match user {
        Some(authenticated) => (authenticated.user, Some(authenticated.claims)),
        None => (None, None),
    };
    RequestInfo {
        user,
        claims,
        query: query_string(head).to_owned(),
        headers: head
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes())))
            .collect(),
    }
}

/// A hub WebSocket request that passed routing, authentication and the token checks: what is left is the
/// upgrade, by whichever server carries it ([`upgrade_with_actix_ws`] or [`super::server`]).
pub(crate) enum AcceptedWebSocket {
    /// A new connection (boxed: most of the size).
    New(Box<NewWebSocket>),
    /// A stateful connection whose client comes back.
    Resume {
        handle: ResumeHandle,
        max_frame: usize,
        span: tracing::Span,
    },
}

/// A new hub connection over a WebSocket, before its upgrade.
pub(crate) struct NewWebSocket {
    endpoint: Arc<HubEndpoint>,
    /// The connection token, forgotten when the connection ends (none with `skipNegotiation`).
    token: Option<String>,
    setup: ConnectionSetup,
    span: tracing::Span,
}

impl AcceptedWebSocket {
    /// The largest message the connection takes from its client.
    pub(crate) fn max_frame(&self) -> usize {
        match self {
            AcceptedWebSocket::New(new) => new.setup.limits.max_frame,
            AcceptedWebSocket::Resume { max_frame, .. } => *max_frame,
        }
    }

    /// Starts the connection on `transport`, on this worker: a new connection task, or the relay that hands the
    /// socket to the waiting connection's task (which may run on another worker).
    pub(crate) fn start<T: crate::transport::Transport + 'static>(self, transport: T) {
        match self {
            AcceptedWebSocket::New(new) => {
                let NewWebSocket {
                    endpoint,
                    token,
                    setup,
                    span,
                } = *new;
                // Chained with `map`, not awaited in an async block: that would hold the connection's future
                // twice (as captured and as awaited) for its whole life.
                let run = connection::run(transport, setup).map(move |()| {
                    if let Some(token) = token {
                        endpoint.tokens.lock().remove(&token);
                    }
                });
                actix_web::rt::spawn(run.instrument(span));
            }
            AcceptedWebSocket::Resume { handle, span, .. } => {
                let (relay, pump) = reconnect::relay(transport);
                if !handle.resume(relay) {
                    // The connection ended meanwhile; the pump sees its relay dropped and lets the socket go.
                    tracing::debug!("a stateful reconnect arrived after the connection ended");
                }
                actix_web::rt::spawn(pump.instrument(span));
            }
        }
    }

    /// The upgrade failed: the token may not be used again.
    pub(crate) fn abandon(self) {
        if let AcceptedWebSocket::New(new) = self {
            if let Some(token) = &new.token {
                new.endpoint.tokens.lock().remove(token);
            }
        }
    }
}

/// Routes and authenticates a WebSocket upgrade request for the node's own server: the hub it addresses and its
/// connection, or the response that refuses it.
pub(crate) fn accept_hub_websocket(node: &Node, head: &RequestHead) -> Result<AcceptedWebSocket, Box<HttpResponse>> {
    let Some(endpoint) = node.endpoint(&normalize_path(head.uri.path())).cloned() else {
        return Err(text(StatusCode::NOT_FOUND, "").into());
    };
    let user = authenticate(node, &endpoint, head).map_err(|refusal| Box::new(refusal.response()))?;
    let token = crate::hub::url_query_value(query_string(head), "id");
    accept_websocket(node, endpoint, token, head, user)
}

fn accept_websocket(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: Option<String>,
    head: &RequestHead,
    user: Option<Authenticated>,
) -> Result<AcceptedWebSocket, Box<HttpResponse>> {
    if !endpoint.offers(TransportKind::WebSockets) {
        return Err(text(
            StatusCode::NOT_FOUND,
            "WebSockets transport not supported by this end point type",
        )
        .into());
    }
    let mut resume = None;
    let id = match &token {
        // skipNegotiation: a new connection with a fresh id.
        None => endpoint.context.new_connection_id(&random_id::<16>()),
        Some(token) => {
            let mut tokens = endpoint.tokens.lock();
            match tokens.get_mut(token) {
                None => return Err(no_connection().into()),
                Some(Negotiated {
                    active: Some(Active::WebSocket(Some(handle))),
                    ..
                }) if !handle.is_closed() => {
                    return Ok(AcceptedWebSocket::Resume {
                        handle: handle.clone(),
                        max_frame: node.limits().max_frame,
                        span: node.span().clone(),
                    })
                }
                Some(Negotiated {
                    active: Some(Active::WebSocket(_)),
                    ..
                }) => {
                    return Err(text(
                        StatusCode::CONFLICT,
                        "Another WebSocket is already open for this connection.",
                    )
                    .into())
                }
                Some(Negotiated { active: Some(_), .. }) => {
                    return Err(text(StatusCode::BAD_REQUEST, "Cannot change transports mid-connection").into())
                }
                Some(negotiated) if negotiated.created.elapsed() >= NEGOTIATE_EXPIRY => {
                    tokens.remove(token);
                    return Err(no_connection().into());
                }
                Some(negotiated) => {
                    let handle = if negotiated.stateful {
                        let (handle, slot) = reconnect::resume_channel();
                        resume = Some(slot);
                        Some(handle)
                    } else {
                        None
                    };
                    negotiated.active = Some(Active::WebSocket(handle));
                    negotiated.id.clone()
                }
            }
        }
    };
    let setup = ConnectionSetup {
        id,
        request: request_info(head, user),
        limits: node.shared_limits(),
        host: Arc::new(endpoint.context.clone()),
        resume,
        wake_relay: node.wake_relay(),
    };
    Ok(AcceptedWebSocket::New(Box::new(NewWebSocket {
        endpoint,
        token,
        setup,
        span: node.span().clone(),
    })))
}

/// The upgrade of a hub mounted in an application's own actix-web server ([`Node::configure`]): there the socket
/// stays with actix-web's dispatcher, and actix-ws carries the messages.
fn upgrade_with_actix_ws(accepted: AcceptedWebSocket, request: &HttpRequest, body: web::Payload) -> HttpResponse {
    let (response, session, stream) = match actix_ws::handle(request, body) {
        Ok(upgraded) => upgraded,
        Err(error) => {
            accepted.abandon();
            return error.error_response();
        }
    };
    let max_frame = accepted.max_frame();
    accepted.start(WebSocketTransport::new(session, stream, max_frame));
    response
}
