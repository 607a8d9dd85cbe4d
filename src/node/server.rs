//! The node's own HTTP server: an actix-web `App` for requests, and actix-http's upgrade hook for WebSockets.
//!
//! This replaces actix-web's `HttpServer` for the servers hubmesh runs itself (a node, the test hub), and the
//! reason is memory and CPU per WebSocket. Under `HttpServer` an upgraded socket stays with the HTTP/1 dispatcher
//! for its whole life, with an 8 KiB read and an 8 KiB write buffer, and every message passes through actix-ws's
//! channel and the dispatcher's task: 14 KB per idle connection before hubmesh holds anything
//! (`examples/actix_floor.rs`), and two task wake-ups per delivery. Here the same actix-http service carries every
//! request, but a WebSocket upgrade goes to [`Upgrades`]: it routes and authenticates the request like any hub
//! request ([`super::http`]), answers the handshake, takes the socket with whatever was read past the request, lets
//! the dispatcher and its buffers go, and hands the socket to the connection task as an
//! [`UpgradedWebSocket`]. Everything else (negotiate, SSE, long polling, an application's own routes) is served by
//! the `App` exactly as under `HttpServer`.
//!
//! A hub mounted with [`super::Node::configure`] in an application's own `HttpServer` still works; its WebSockets
//! then take the actix-ws path ([`crate::transport::websocket`]).
//!
//! Calls: [`super::http`] for routing and connection start-up, the transports for the socket. Known difference
//! from `HttpServer`: the `App` sees actix-web's default `AppConfig`, so `ConnectionInfo::scheme` is `http` on an
//! HTTPS listener unless a proxy header says otherwise; the test hub marks its HTTPS listener with app data
//! instead ([`Listener::https`] gives it the flag through the factory).

use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_codec::{AsyncRead, AsyncWrite, Framed};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::{h1, ConnectionType, HttpService, KeepAlive, Request, Response};
use actix_server::Server;
use actix_service::{fn_service, map_config, IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt as _};
use actix_web::dev::AppConfig;
use futures_util::SinkExt;

use super::http::{accept_hub_websocket, normalize_path, AcceptedWebSocket};
use super::Node;
use crate::transport::upgraded::UpgradedWebSocket;

/// What a plain WebSocket route does with its socket (the test hub's `/echo`): runs on the accepting worker.
pub type WebSocketHandler = Arc<dyn Fn(UpgradedWebSocket) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// How long a connection that is done may take to close.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where WebSocket upgrades go: a node's hubs, and optionally plain WebSocket routes by path (matched like hub
/// paths, case-insensitively). Any other upgrade gets 404.
#[derive(Clone)]
pub struct Upgrades {
    node: Node,
    routes: HashMap<String, WebSocketHandler>,
}

impl Upgrades {
    /// Upgrades for `node`'s hubs.
    pub fn new(node: Node) -> Self {
        Upgrades {
            node,
            routes: HashMap::new(),
        }
    }

    /// Adds a plain WebSocket route at `path` (the test server's `/echo`).
    #[cfg(feature = "test-util")]
    pub fn route(mut self, path: &str, handler: WebSocketHandler) -> Self {
        self.routes.insert(normalize_path(path), handler);
        self
    }

    fn factory<T>(
        &self,
    ) -> impl ServiceFactory<
        (Request, Framed<T, h1::Codec>),
        Config = (),
        Response = (),
        Error = actix_web::Error,
        InitError = (),
    >
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let upgrades = self.clone();
        fn_service(move |(request, framed): (Request, Framed<T, h1::Codec>)| {
            let upgrades = upgrades.clone();
            async move {
                upgrades.upgrade(request, framed).await;
                Ok(())
            }
        })
    }

    async fn upgrade<T>(self, request: Request, mut framed: Framed<T, h1::Codec>)
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let head = request.head();
        if let Err(error) = actix_http::ws::verify_handshake(head) {
            refuse(&mut framed, Response::from(error)).await;
            return;
        }
        let target = match self.routes.get(&normalize_path(head.uri.path())) {
            Some(handler) => Target::Route(handler.clone(), self.node.limits().max_frame),
            None => {
                // A full node takes no new connection (an unknown path then gets 503, not 404).
                if let Some(refusal) = self.node.admission().refuse_websocket(self.node.limits(), head) {
                    refuse(&mut framed, refusal.into()).await;
                    return;
                }
                match accept_hub_websocket(&self.node, head).await {
                    Ok(accepted) => Target::Hub(accepted),
                    Err(refusal) => {
                        refuse(&mut framed, (*refusal).into()).await;
                        return;
                    }
                }
            }
        };
        let switching = actix_http::ws::handshake_response(head).finish().drop_body();
        if framed
            .send(h1::Message::Item((switching, BodySize::None)))
            .await
            .is_err()
        {
            if let Target::Hub(accepted) = target {
                accepted.abandon();
            }
            return;
        }
        let parts = framed.into_parts();
        let max_frame = match &target {
            Target::Hub(accepted) => accepted.max_frame(),
            Target::Route(_, max_frame) => *max_frame,
        };
        // The dispatcher's buffers are dropped here; only bytes already read past the request are kept.
        let socket = UpgradedWebSocket::new(Box::new(parts.io), &parts.read_buf, max_frame);
        match target {
            Target::Hub(accepted) => accepted.start(socket),
            Target::Route(handler, _) => {
                actix_web::rt::spawn(handler(socket));
            }
        }
    }
}

enum Target {
    Hub(AcceptedWebSocket),
    Route(WebSocketHandler, usize),
}

/// Answers an upgrade request that is not accepted, and closes the connection.
async fn refuse<T>(framed: &mut Framed<T, h1::Codec>, response: Response<BoxBody>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut response, body) = response.into_parts();
    response.head_mut().set_connection_type(ConnectionType::Close);
    let body = actix_http::body::to_bytes(body).await.unwrap_or_default();
    let size = BodySize::Sized(body.len() as u64);
    if framed.send(h1::Message::Item((response, size))).await.is_err() {
        return;
    }
    if !body.is_empty() && framed.send(h1::Message::Chunk(Some(body))).await.is_err() {
        return;
    }
    let _ = framed.send(h1::Message::Chunk(None)).await;
}

/// A socket to serve on, with the TLS settings that make it HTTPS.
pub struct Listener {
    socket: TcpListener,
    tls: Option<rustls::ServerConfig>,
}

impl Listener {
    /// Plain HTTP on `socket`.
    pub fn http(socket: TcpListener) -> Self {
        Listener { socket, tls: None }
    }

    /// HTTPS on `socket`.
    pub fn https(socket: TcpListener, tls: rustls::ServerConfig) -> Self {
        Listener { socket, tls: Some(tls) }
    }
}

/// The HTTP settings of every listener (a macro: the builder's type depends on the listener's stream and the
/// app, which a function would have to spell out).
/// `$timeout` is [`crate::Limits::request_header_timeout`]: how long a request's head may take to arrive (408 and
/// closed after), and an idle keep-alive connection may stay.
macro_rules! http_service {
    ($timeout:expr) => {
        HttpService::build()
            .keep_alive(KeepAlive::Timeout($timeout))
            .client_request_timeout($timeout)
            .client_disconnect_timeout(DISCONNECT_TIMEOUT)
            // A client that closes its socket ends the request at once: its SSE stream or long poll is dropped, and
            // the connection with it, instead of lingering until a write to the dead socket fails.
            .h1_allow_half_closed(false)
    };
}

/// Serves `app` (called once per worker and listener, with whether that listener is HTTPS) on `listeners`, with
/// WebSocket upgrades going to `upgrades`; `workers` HTTP worker threads. The returned server runs when polled
/// (spawn it); stop it through its handle.
pub fn serve<F, I, S, B>(
    app: F,
    upgrades: Upgrades,
    listeners: Vec<Listener>,
    workers: usize,
) -> std::io::Result<Server>
where
    F: Fn(bool) -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let mut builder = Server::build()
        .workers(workers.max(1))
        .shutdown_timeout(2)
        .disable_signals();
    for (index, Listener { socket, tls }) in listeners.into_iter().enumerate() {
        let app = app.clone();
        let upgrades = upgrades.clone();
        let header_timeout = upgrades.node.limits().request_header_timeout;
        let name = format!("hubmesh-http-{index}");
        builder = match tls {
            None => builder.listen(name, socket, move || {
                http_service!(header_timeout)
                    .upgrade(upgrades.factory())
                    .finish(map_config(
                        app(false).into_factory().map_err(|error| error.into().error_response()),
                        |_| AppConfig::default(),
                    ))
                    .tcp()
            })?,
            Some(tls) => builder.listen(name, socket, move || {
                http_service!(header_timeout)
                    .upgrade(upgrades.factory())
                    .finish(map_config(
                        app(true).into_factory().map_err(|error| error.into().error_response()),
                        |_| AppConfig::default(),
                    ))
                    .rustls_0_23(tls.clone())
            })?,
        };
    }
    Ok(builder.run())
}

/// A node's routes being served by [`serve`]: the one stop sequence for every server hubmesh runs itself (a node's,
/// the test hub's).
pub(crate) struct Serving {
    node: Node,
    server: actix_server::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Serving {
    /// Runs `server`, which serves `node`, on the current tokio runtime.
    pub(crate) fn spawn(node: Node, server: Server) -> Serving {
        Serving {
            node,
            server: server.handle(),
            task: tokio::spawn(server),
        }
    }

    /// The node served.
    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// Stops serving: connections are told goodbye, then the server stops and the node's hubs shut down.
    pub(crate) async fn stop(self, grace: Duration) {
        // Say goodbye first (Close with allowReconnect, so clients with automatic reconnect go to another node),
        // then stop the server; actix would otherwise wait out its shutdown timeout on open WebSockets.
        self.server.pause().await;
        self.node.close_connections(grace).await;
        self.server.stop(true).await;
        let _ = self.task.await;
        self.node.shutdown_hubs().await;
    }

    /// Waits until the server stops (for example after a stop from elsewhere), then shuts the node's hubs down.
    pub(crate) async fn wait(self) -> std::io::Result<()> {
        let result = self.task.await.unwrap_or(Ok(()));
        self.node.shutdown_hubs().await;
        result
    }
}
