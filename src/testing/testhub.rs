//! The server the official SignalR functional tests run against (`SignalR.Client.FunctionalTestApp` upstream),
//! rebuilt on hubmesh: the `TestHub` and the routes listed in docs/protocol.md#test-server-routes
//! (docs/protocol.md#official-functional-test-app has the scenarios).
//!
//! Served by `cargo run --example testhub` and by [`super::TestHubServer`] in tests. `/authorizedhub` requires a
//! bearer token, which `GET /generateJwtToken` hands out: HS256 with a key random for each server ([`TestTokens`]),
//! user `testuser`, valid for 5 s (plus the authenticator's leeway). The raw `/echo` endpoint (no hub protocol,
//! every chunk echoed back) speaks WebSockets, Server-Sent Events and long polling through the transport modules;
//! `/bad-negotiate` answers negotiate with an error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::cookie::time::OffsetDateTime;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::stream;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::auth::{Authenticator, NAME_IDENTIFIER_CLAIM};
use crate::connection::{ConnectionId, Limits};
use crate::demo::demo_hub;
use crate::hub::{Caller, ClientStream, Hub, HubContext, HubError, Streamed};
use crate::node::http::{cors, long_polling_options, poll_response, random_id, sse_response, NEGOTIATE_EXPIRY};
use crate::node::server;
use crate::node::tls::TlsConfig;
use crate::node::{Node, NodeError, STOP_GRACE};
use crate::protocol::negotiate::{AvailableTransport, NegotiateResponse};
use crate::protocol::{Binary, Timestamp, TransferFormat};
use crate::transport::long_polling::{long_polling, LongPollingHandle};
use crate::transport::sse::SseTransport;
use crate::transport::upgraded::UpgradedWebSocket;
use crate::transport::{post_channel, CloseKind, PostSender, Transport, TransportKind};
use crate::CancellationToken;

/// `{Name, Value}`, sent back to the caller by `SendCustomObject` with PascalCase keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CustomObject {
    /// Any text.
    pub name: String,
    /// Any number.
    pub value: serde_json::Number,
}

/// The structure `EchoComplexObject` round-trips (docs/protocol.md#value-types).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ComplexObject {
    /// Base64 in JSON, `bin` in MessagePack.
    pub byte_array: Binary,
    /// ISO-8601 UTC in JSON, the timestamp extension in MessagePack.
    pub date_time: Timestamp,
    /// A GUID as text.
    pub guid: String,
    /// Integers.
    pub int_array: Vec<i64>,
    /// Text.
    pub string: String,
}

async fn echo(message: String) -> String {
    message
}

async fn get_caller_connection_id(caller: Caller) -> String {
    caller.connection_id().to_string()
}

async fn get_num_redirects(caller: Caller) -> i64 {
    caller
        .query_param("numRedirects")
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

async fn throw_exception(message: String) -> Result<(), HubError> {
    Err(HubError::exception("InvalidOperationException", message))
}

async fn invoke_with_string(caller: Caller, message: String) -> Result<(), HubError> {
    caller.clients().caller().send("Message", (message,))
}

async fn send_custom_object(caller: Caller, object: CustomObject) -> Result<(), HubError> {
    caller.clients().caller().send("CustomObject", (object,))
}

async fn stream_abc() -> Streamed {
    Streamed::new(stream::iter(["a", "b", "c"]))
}

/// Never yields; when the client cancels, tells it so through the hub context, as the upstream hub does.
async fn infinite_stream(caller: Caller, cancel: CancellationToken) -> Streamed {
    let context = caller.context().clone();
    let id = caller.connection_id().clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        // The connection may be gone already (a disconnect also cancels); then there is no one to tell.
        let _ = context.clients().client(&id).send("StreamCanceled", ());
    });
    Streamed::new(stream::pending::<String>())
}

async fn streaming_concat(mut items: ClientStream<String>) -> Result<String, HubError> {
    let mut joined = String::new();
    while let Some(item) = items.next().await {
        joined.push_str(&item?);
    }
    Ok(joined)
}

async fn empty_stream() -> Streamed {
    Streamed::new(stream::empty::<i32>())
}

async fn stream_throw_exception(message: String) -> Result<Streamed, HubError> {
    Err(HubError::exception("InvalidOperationException", message))
}

async fn get_active_transport_name(caller: Caller) -> &'static str {
    caller.transport().name()
}

async fn echo_complex_object(object: ComplexObject) -> ComplexObject {
    object
}

async fn send_complex_object() -> ComplexObject {
    ComplexObject {
        byte_array: Binary(vec![1, 2, 3]),
        date_time: Timestamp::from_unix(946_684_800, 0),
        guid: "00010203-0405-0607-0706-050403020100".into(),
        int_array: vec![1, 2, 3],
        string: "hello world".into(),
    }
}

async fn get_content_type_header(caller: Caller) -> Option<String> {
    caller.header("content-type").map(str::to_owned)
}

async fn get_header(caller: Caller, name: String) -> Option<String> {
    caller.header(&name).map(str::to_owned)
}

async fn get_cookie(caller: Caller, name: String) -> Option<String> {
    caller.cookie(&name).map(str::to_owned)
}

/// The TestHub with every method the functional tests call, named `name`, at `path`, offering `transports`.
pub fn test_hub(name: &str, path: &str, transports: &[TransportKind]) -> Hub {
    Hub::new(name)
        .path(path)
        .transports(transports)
        .detailed_errors(true)
        .method("Echo", echo)
        .method("GetCallerConnectionId", get_caller_connection_id)
        .method("GetNumRedirects", get_num_redirects)
        .method("ThrowException", throw_exception)
        .method("InvokeWithString", invoke_with_string)
        .method("SendCustomObject", send_custom_object)
        .method("Stream", stream_abc)
        .method("InfiniteStream", infinite_stream)
        .method("StreamingConcat", streaming_concat)
        .method("EmptyStream", empty_stream)
        .method("StreamThrowException", stream_throw_exception)
        .method("GetActiveTransportName", get_active_transport_name)
        .method("EchoComplexObject", echo_complex_object)
        .method("SendComplexObject", send_complex_object)
        .method("GetContentTypeHeader", get_content_type_header)
        .method("GetHeader", get_header)
        .method("GetCookie", get_cookie)
}

/// HubWithAuthorization at `/authorizedhub`: `Echo(string)`, for authenticated callers only.
pub fn authorized_hub() -> Hub {
    Hub::new("HubWithAuthorization")
        .path("/authorizedhub")
        .detailed_errors(true)
        .authorize()
        .method("Echo", echo)
}

/// How long a token from `GET /generateJwtToken` is valid.
pub const TEST_TOKEN_LIFETIME: Duration = Duration::from_secs(5);

/// The user id in tokens from `GET /generateJwtToken`.
pub const TEST_USER: &str = "testuser";

/// The HS256 key of one test server: tokens from `GET /generateJwtToken` and the node's authenticator.
#[derive(Clone)]
pub struct TestTokens {
    secret: Arc<[u8; 32]>,
}

impl std::fmt::Debug for TestTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestTokens(<redacted>)")
    }
}

impl TestTokens {
    /// A fresh random key.
    pub fn random() -> Self {
        TestTokens {
            secret: Arc::new(rand::random()),
        }
    }

    /// The authenticator that accepts this key's tokens.
    pub fn authenticator(&self) -> Authenticator {
        Authenticator::hs256(self.secret.as_slice())
    }

    /// A token for `user`, valid for `lifetime`, with the user in the name-identifier claim and in `sub`.
    pub fn token(&self, user: &str, lifetime: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let expires = jsonwebtoken::get_current_timestamp() + lifetime.as_secs();
        let claims = serde_json::json!({ NAME_IDENTIFIER_CLAIM: user, "sub": user, "exp": expires });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_slice()),
        )
    }
}

/// The test server's node: `/testhub`, `/testhub-nowebsockets`, `/authorizedhub` (tokens of `tokens`) and the demo
/// hub at `/hub`.
pub fn test_node(tokens: &TestTokens) -> Result<Node, NodeError> {
    Node::builder()
        .name("testhub")
        .auth(tokens.authenticator())
        .hub(authorized_hub())
        .hub(test_hub(
            "TestHub",
            "/testhub",
            &[
                TransportKind::WebSockets,
                TransportKind::ServerSentEvents,
                TransportKind::LongPolling,
            ],
        ))
        .hub(test_hub(
            "TestHubNoWebSockets",
            "/testhub-nowebsockets",
            &[TransportKind::ServerSentEvents, TransportKind::LongPolling],
        ))
        .hub(demo_hub())
        .build()
}

/// `GET /clientresult/{id}`: invokes `Result` on connection `id` and answers with its integer, or with the
/// failure's message ("Error: from callback", "Client didn't provide a result.").
async fn client_result(path: web::Path<String>, hub: web::Data<HubContext>) -> HttpResponse {
    let id = ConnectionId::new(path.into_inner());
    let answer = match hub.clients().client(&id).invoke::<i64, _>("Result", ()).await {
        Ok(value) => value.to_string(),
        Err(error) => error.to_string(),
    };
    HttpResponse::Ok().content_type("text/plain").body(answer)
}

/// Any path under `/redirect`: points the client at `/testHub` with a redirect count, as upstream does.
async fn redirect(request: HttpRequest, counter: web::Data<RedirectCounter>) -> HttpResponse {
    let base_url = crate::hub::url_query_value(request.query_string(), "baseUrl").unwrap_or_default();
    let count = counter.0.fetch_add(1, Ordering::Relaxed) + 1;
    HttpResponse::Ok().json(serde_json::json!({ "url": format!("{base_url}/testHub?numRedirects={count}") }))
}

struct RedirectCounter(AtomicU64);

/// The negotiated connections of the raw `/echo` endpoint, by connection token, and the limits its long polls use.
struct EchoConnections {
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
    fn forget(&self, token: &str) {
        self.slots.lock().remove(token);
    }
}

/// `POST /echo/negotiate`: the raw echo endpoint offers WebSockets, Server-Sent Events (text) and long polling.
async fn echo_negotiate(request: HttpRequest, echo: web::Data<EchoConnections>) -> HttpResponse {
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

/// `POST /bad-negotiate/negotiate`: a negotiate that fails with `{"error":"Some error"}` (HTTP 200), as upstream.
async fn bad_negotiate() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "error": "Some error" }))
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

/// `GET /echo?id=`: an SSE stream (`Accept: text/event-stream`) or a long poll; the first poll answers at once,
/// later ones wait for echoes, the last gets 204. A WebSocket upgrade never gets here: the server hands it to
/// [`echo_socket`].
async fn echo_get(request: HttpRequest, echo: web::Data<EchoConnections>) -> HttpResponse {
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
                echo_chunks(transport).await;
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
                echo_chunks(transport).await;
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
async fn echo_post(request: HttpRequest, mut body: web::Payload, echo: web::Data<EchoConnections>) -> HttpResponse {
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
async fn echo_delete(request: HttpRequest, echo: web::Data<EchoConnections>) -> HttpResponse {
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
async fn echo_socket(mut socket: UpgradedWebSocket) {
    while let Some(Ok((bytes, format))) = socket.recv_message().await {
        if socket.send(bytes, format).await.is_err() {
            return;
        }
    }
    socket.close(CloseKind::Normal).await;
}

/// `GET /generateJwtToken`: a raw JWT for user `testuser`, valid for [`TEST_TOKEN_LIFETIME`].
async fn generate_jwt_token(tokens: web::Data<TestTokens>) -> HttpResponse {
    match tokens.token(TEST_USER, TEST_TOKEN_LIFETIME) {
        Ok(token) => HttpResponse::Ok().content_type("text/plain").body(token),
        Err(error) => HttpResponse::build(StatusCode::INTERNAL_SERVER_ERROR)
            .content_type("text/plain")
            .body(format!("could not sign a token: {error}")),
    }
}

/// Sets the cookies the cookie tests look for on every negotiate (one of them already expired). Over HTTPS they are
/// `SameSite=None; Secure; Partitioned`, as upstream's server sets them, so that a browser page on another site
/// still sends them back.
async fn negotiate_cookies(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let is_negotiate = request.path().contains("/negotiate");
    let is_https = is_negotiate && request.app_data::<web::Data<Https>>().is_some_and(|https| https.0);
    let mut response = next.call(request).await?;
    if is_negotiate {
        let expired = Cookie::build("expiredCookie", "doesntmatter")
            .path("/")
            .expires(OffsetDateTime::UNIX_EPOCH)
            .finish();
        for mut cookie in [
            Cookie::build("testCookie", "testValue").path("/").finish(),
            Cookie::build("testCookie2", "testValue2").path("/").finish(),
            expired,
        ] {
            if !is_https {
                response.response_mut().add_cookie(&cookie)?;
                continue;
            }
            cookie.set_secure(true);
            cookie.set_same_site(SameSite::None);
            // The cookie crate of actix-web 4 predates the Partitioned attribute (CHIPS); it is appended by hand.
            let value = header::HeaderValue::from_str(&format!("{cookie}; Partitioned"))
                .map_err(actix_web::error::ErrorInternalServerError)?;
            response.response_mut().headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(response)
}

/// Whether the listener a request came in on is the HTTPS one.
struct Https(bool);

/// A running test server.
pub struct TestHubHandle {
    url: String,
    https_url: Option<String>,
    serving: server::Serving,
}

impl TestHubHandle {
    /// `http://127.0.0.1:<port>`, or the HTTPS URL when the server listens on HTTPS only.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `https://127.0.0.1:<port>` when the server also listens on HTTPS (a self-signed certificate).
    pub fn https_url(&self) -> Option<String> {
        self.https_url.clone()
    }

    /// Stops serving and waits for the server to end.
    pub async fn stop(self) {
        self.serving.stop(STOP_GRACE).await;
    }

    /// Waits until the server stops.
    pub async fn wait(self) -> std::io::Result<()> {
        self.serving.wait().await
    }
}

/// Why the test server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TestHubError {
    /// The node could not be built.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The address could not be bound.
    #[error("could not listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The self-signed certificate or the TLS configuration could not be made.
    #[error("could not set up HTTPS: {0}")]
    Tls(String),
    /// Neither an HTTP nor an HTTPS address was given.
    #[error("nothing to listen on: give an http:// or https:// URL")]
    NoAddress,
    /// A URL the server cannot serve.
    #[error("cannot serve '{0}': only http:// and https:// URLs with a host and port")]
    BadUrl(String),
}

/// Where the test server listens: plain HTTP, HTTPS with a self-signed certificate, or both (as upstream's test
/// server does, `ASPNETCORE_URLS=https://127.0.0.1:0;http://127.0.0.1:0`).
#[derive(Debug, Clone, Default)]
pub struct Listen {
    /// `host:port` for plain HTTP.
    pub http: Option<String>,
    /// `host:port` for HTTPS.
    pub https: Option<String>,
}

impl Listen {
    /// Parses an ASP.NET-style `;`-separated URL list; the first URL of each scheme is used.
    pub fn from_urls(urls: &str) -> Result<Listen, TestHubError> {
        let mut listen = Listen::default();
        for url in urls.split(';').map(str::trim).filter(|url| !url.is_empty()) {
            let (slot, address) = if let Some(address) = url.strip_prefix("http://") {
                (&mut listen.http, address)
            } else if let Some(address) = url.strip_prefix("https://") {
                (&mut listen.https, address)
            } else {
                return Err(TestHubError::BadUrl(url.to_owned()));
            };
            let address = address.trim_end_matches('/');
            if address.is_empty() || address.contains('/') {
                return Err(TestHubError::BadUrl(url.to_owned()));
            }
            slot.get_or_insert_with(|| address.to_owned());
        }
        if listen.http.is_none() && listen.https.is_none() {
            return Err(TestHubError::NoAddress);
        }
        Ok(listen)
    }
}

/// A TLS configuration with a fresh self-signed certificate for `127.0.0.1` and `localhost`.
fn self_signed_tls() -> Result<rustls::ServerConfig, TestHubError> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(|error| TestHubError::Tls(error.to_string()))?;
    let tls = TlsConfig::from_pem(
        certified.cert.pem().as_bytes(),
        certified.signing_key.serialize_pem().as_bytes(),
    )
    .map_err(|error| TestHubError::Tls(error.to_string()))?;
    Ok(tls.server_config())
}

/// Serves the test server on `address` (`127.0.0.1:0` picks a free port), plain HTTP, on the current tokio runtime.
pub async fn serve(address: &str) -> Result<TestHubHandle, TestHubError> {
    serve_on(&Listen {
        http: Some(address.to_owned()),
        https: None,
    })
    .await
}

/// Serves the test server on the addresses of `listen` (port 0 picks a free port) on the current tokio runtime.
pub async fn serve_on(listen: &Listen) -> Result<TestHubHandle, TestHubError> {
    let tokens = TestTokens::random();
    let node = test_node(&tokens)?;
    let tokens = web::Data::new(tokens);
    let test_hub = node
        .hub_context("TestHub")
        .ok_or_else(|| NodeError::DuplicatePath("/testhub".into()))?;
    let counter = web::Data::new(RedirectCounter(AtomicU64::new(0)));
    let echo = web::Data::new(EchoConnections {
        limits: node.limits().clone(),
        slots: Mutex::new(HashMap::new()),
    });
    let bind = |address: &str| -> Result<(std::net::TcpListener, std::net::SocketAddr), TestHubError> {
        let bind_error = |source| TestHubError::Bind {
            address: address.to_owned(),
            source,
        };
        let listener = std::net::TcpListener::bind(address).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok((listener, local_addr))
    };
    let http = listen.http.as_deref().map(bind).transpose()?;
    let https = listen.https.as_deref().map(bind).transpose()?;
    let app_node = node.clone();
    let test_hub = web::Data::new(test_hub);
    let app = move |https: bool| {
        let node = app_node.clone();
        App::new()
            .wrap(actix_web::middleware::from_fn(negotiate_cookies))
            .wrap(cors())
            .app_data(web::Data::new(Https(https)))
            .app_data(test_hub.clone())
            .app_data(counter.clone())
            .app_data(tokens.clone())
            .app_data(echo.clone())
            .route("/echo/negotiate", web::post().to(echo_negotiate))
            .route("/echo", web::get().to(echo_get))
            .route("/echo", web::post().to(echo_post))
            .route("/echo", web::delete().to(echo_delete))
            .route("/bad-negotiate/negotiate", web::post().to(bad_negotiate))
            .route("/clientresult/{id}", web::get().to(client_result))
            .route("/generateJwtToken", web::get().to(generate_jwt_token))
            .route("/redirect{tail:.*}", web::route().to(redirect))
            .configure(move |config| node.configure(config))
    };
    let mut listeners = Vec::new();
    let mut http_url = None;
    if let Some((listener, local_addr)) = http {
        listeners.push(server::Listener::http(listener));
        http_url = Some(format!("http://{local_addr}"));
    }
    let mut https_url = None;
    if let Some((listener, local_addr)) = https {
        listeners.push(server::Listener::https(listener, self_signed_tls()?));
        https_url = Some(format!("https://{local_addr}"));
    }
    let Some(url) = http_url.clone().or_else(|| https_url.clone()) else {
        return Err(TestHubError::NoAddress);
    };
    let upgrades = server::Upgrades::new(node.clone()).route("/echo", Arc::new(|socket| Box::pin(echo_socket(socket))));
    let server = server::serve(app, upgrades, listeners, 2).map_err(|source| TestHubError::Bind {
        address: url.clone(),
        source,
    })?;
    Ok(TestHubHandle {
        url,
        https_url,
        serving: server::Serving::spawn(node, server),
    })
}
