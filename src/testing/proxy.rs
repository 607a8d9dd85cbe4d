//! A round-robin HTTP/1.1 proxy for tests, the way a load balancer without affinity spreads a client over nodes:
//! it listens on `127.0.0.1:0` in front of a list of backend addresses and sends each *request* to the next
//! backend in turn, so the consecutive requests of one keep-alive client connection land on different backends.
//!
//! What it owns: its listener, the client connections it accepted, one backend connection per forwarded request
//! (opened for that request, never reused or pooled, so nothing ties a client to a backend), and the upgraded
//! connections it splices.
//!
//! Policy:
//! * **Per request, in turn.** hyper's HTTP/1.1 server reads each request of a keep-alive connection on its own;
//!   each goes to the next backend of the rotation ([`RoundRobinProxy::set_backends`] changes it at any time).
//! * **A backend that refuses the TCP connection is skipped** (or that does not accept within
//!   [`CONNECT_TIMEOUT`]), as a load balancer's health check would, and the request goes to the next one; when no
//!   backend of the rotation accepts, the client gets `502 Bad Gateway`.
//! * **WebSocket upgrades** go to the next backend like any request; once the backend answers `101`, the two
//!   upgraded connections are spliced byte for byte for their life.
//! * **Streaming passes through.** Request and response bodies are forwarded frame by frame as they come (Server-
//!   Sent Events, long polls, chunked bodies), never buffered whole; the proxy sets no timeouts on them.
//! * Hop-by-hop headers (`Connection` and what it names, `Keep-Alive`, `Proxy-Connection`) are the proxy's own on
//!   both sides, except on upgrades, which need them forwarded; everything else is forwarded as is (`Host` too).
//!
//! Controls for tests: [`RoundRobinProxy::routes`] (which backend each request went to), [`RoundRobinProxy::pin`]
//! (a path prefix that always goes to one backend),
//! [`RoundRobinProxy::cut_connections`] (closes every open client connection, upgraded or streaming connection
//! and backend connection at once, as a cut network would), [`RoundRobinProxy::set_backends`].
//!
//! Bounds: at most [`MAX_CLIENT_CONNECTIONS`] client connections (further ones wait in the listen backlog) and
//! [`MAX_TUNNELS`] upgraded connections (an upgrade beyond that gets `503`); a client connection has at most one
//! request in flight (HTTP/1.1 without pipelining), hence one backend connection in use; at most
//! [`MAX_BACKENDS`] backends; the route record keeps the last [`ROUTE_RECORD_CAPACITY`] requests. Every task
//! ends with its connection, at a cut, or when the proxy is dropped. Errors answer `502`/`503` or close the
//! connection; nothing panics.
//!
//! It calls hyper and tokio only (with their small helper crates): it knows nothing of nodes or SignalR.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Client connections served at once; more wait in the listen backlog until one ends.
pub const MAX_CLIENT_CONNECTIONS: usize = 512;
/// Upgraded (spliced) connections at once; an upgrade beyond them is answered `503`.
pub const MAX_TUNNELS: usize = 512;
/// Backends in the rotation.
pub const MAX_BACKENDS: usize = 64;
/// Requests the route record keeps (the oldest are dropped first).
pub const ROUTE_RECORD_CAPACITY: usize = 10_000;
/// How long a backend may take to accept a TCP connection before it is skipped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a failed `accept` (out of file descriptors, say), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// What the proxy refuses to do.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Binding `127.0.0.1:0` failed.
    #[error("the proxy could not listen on 127.0.0.1: {0}")]
    Listen(#[source] std::io::Error),
    /// The rotation would be longer than [`MAX_BACKENDS`].
    #[error("{0} backends given; the proxy takes at most {MAX_BACKENDS}")]
    TooManyBackends(usize),
}

/// One request as the proxy routed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The backend that accepted the request's connection.
    pub backend: SocketAddr,
    /// The request's method, e.g. `GET`.
    pub method: String,
    /// The request's path and query.
    pub target: String,
    /// Whether it asked for a protocol upgrade (a WebSocket).
    pub upgrade: bool,
}

/// The round-robin proxy; see the module docs. Stops, closing every connection, when dropped.
pub struct RoundRobinProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    backends: Mutex<Vec<SocketAddr>>,
    /// Path prefixes (lower case) whose requests always go to one backend, outside the rotation.
    pinned: Mutex<Vec<(String, SocketAddr)>>,
    /// The rotation's position: the next request's first try is `next % backends.len()`.
    next: AtomicUsize,
    routes: Mutex<VecDeque<Routed>>,
    /// Cancelled when the proxy is dropped; parent of every `cut`.
    shutdown: CancellationToken,
    /// Cancelled by [`RoundRobinProxy::cut_connections`] and then replaced: every connection task watches the one
    /// current when its client connection was accepted.
    cut: Mutex<CancellationToken>,
    tunnels: Arc<Semaphore>,
}

impl RoundRobinProxy {
    /// Listens on `127.0.0.1:0` in front of `backends` (in this order) and serves on the current tokio runtime.
    pub async fn start(backends: impl IntoIterator<Item = SocketAddr>) -> Result<RoundRobinProxy, ProxyError> {
        let backends = bounded_rotation(backends)?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(ProxyError::Listen)?;
        let addr = listener.local_addr().map_err(ProxyError::Listen)?;
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            backends: Mutex::new(backends),
            pinned: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            routes: Mutex::new(VecDeque::new()),
            cut: Mutex::new(shutdown.child_token()),
            shutdown,
            tunnels: Arc::new(Semaphore::new(MAX_TUNNELS)),
        });
        tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(RoundRobinProxy { addr, shared })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the rotation; requests already forwarded keep their backend.
    pub fn set_backends(&self, backends: impl IntoIterator<Item = SocketAddr>) -> Result<(), ProxyError> {
        *self.shared.backends.lock() = bounded_rotation(backends)?;
        Ok(())
    }

    /// Sends every request whose path starts with `path_prefix` (case-insensitive) to `backend`, outside the
    /// rotation, as a load balancer's path rule does (for an endpoint that is not a hub, such as the test
    /// server's raw `/echo`, whose connections only the node that opened them knows).
    pub fn pin(&self, path_prefix: &str, backend: SocketAddr) {
        let mut pinned = self.shared.pinned.lock();
        // Bounded like the rotation; a test never needs more.
        if pinned.len() < MAX_BACKENDS {
            pinned.push((path_prefix.to_ascii_lowercase(), backend));
        }
    }

    /// The rotation.
    pub fn backends(&self) -> Vec<SocketAddr> {
        self.shared.backends.lock().clone()
    }

    /// The requests routed so far (the last [`ROUTE_RECORD_CAPACITY`]), oldest first.
    pub fn routes(&self) -> Vec<Routed> {
        self.shared.routes.lock().iter().cloned().collect()
    }

    /// Like [`Self::routes`], and forgets them.
    pub fn take_routes(&self) -> Vec<Routed> {
        self.shared.routes.lock().drain(..).collect()
    }

    /// Abruptly closes every open connection: client connections (keep-alive or mid-request), upgraded
    /// connections, streaming responses and their backend connections. Connections accepted afterwards are
    /// served as usual.
    pub fn cut_connections(&self) {
        let mut cut = self.shared.cut.lock();
        cut.cancel();
        *cut = self.shared.shutdown.child_token();
    }
}

impl Drop for RoundRobinProxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn bounded_rotation(backends: impl IntoIterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, ProxyError> {
    let backends: Vec<SocketAddr> = backends.into_iter().take(MAX_BACKENDS + 1).collect();
    if backends.len() > MAX_BACKENDS {
        return Err(ProxyError::TooManyBackends(backends.len()));
    }
    Ok(backends)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(MAX_CLIENT_CONNECTIONS));
    loop {
        // The permit first: beyond the cap, clients wait in the backlog instead of being accepted and starved.
        let permit = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let cut = shared.cut.lock().clone();
                tokio::spawn(serve_client(stream, Arc::clone(&shared), cut, permit));
            }
            Err(_) => {
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

/// Serves one client connection, each of its requests forwarded on its own, until it ends or is cut.
async fn serve_client(stream: TcpStream, shared: Arc<Shared>, cut: CancellationToken, _permit: OwnedSemaphorePermit) {
    let _ = stream.set_nodelay(true);
    let service_cut = cut.clone();
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let cut = service_cut.clone();
        async move { Ok::<_, Infallible>(forward(&shared, &cut, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = connection => {}
    }
}

type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Forwards one request to the next backend that accepts a connection and answers with its response, streamed.
async fn forward(shared: &Shared, cut: &CancellationToken, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let upgrade = request.headers().contains_key(UPGRADE);
    let tunnel_permit = if upgrade {
        match Arc::clone(&shared.tunnels).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return plain(StatusCode::SERVICE_UNAVAILABLE, "too many upgraded connections"),
        }
    } else {
        None
    };
    let Some((backend, stream)) = shared.connect_for(request.uri().path()).await else {
        return plain(StatusCode::BAD_GATEWAY, "no backend accepted a connection");
    };
    shared.record(Routed {
        backend,
        method: request.method().as_str().to_owned(),
        target: request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().path().to_owned(), |target| target.as_str().to_owned()),
        upgrade,
    });
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(handshake) => handshake,
        Err(_) => return plain(StatusCode::BAD_GATEWAY, "the backend connection failed"),
    };
    // The backend connection lives until the response body ends (a stream, a long poll), its upgrade is handed to
    // the splice, or a cut.
    let backend_cut = cut.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = backend_cut.cancelled() => {}
            _ = connection.with_upgrades() => {}
        }
    });
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut request))
    } else {
        strip_hop_by_hop(request.headers_mut());
        None
    };
    let mut response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(_) => return plain(StatusCode::BAD_GATEWAY, "the backend failed the request"),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_upgrade), Some(permit)) = (client_upgrade, tunnel_permit) else {
            return plain(StatusCode::BAD_GATEWAY, "the backend switched protocols unasked");
        };
        let backend_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(splice(client_upgrade, backend_upgrade, cut.clone(), permit));
    } else {
        strip_hop_by_hop(response.headers_mut());
    }
    response.map(Either::Left)
}

impl Shared {
    /// The backend pinned for `path`, if any prefix pins it; else the next of the rotation.
    async fn connect_for(&self, path: &str) -> Option<(SocketAddr, TcpStream)> {
        let pinned = {
            let path = path.to_ascii_lowercase();
            self.pinned
                .lock()
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|(_, backend)| *backend)
        };
        let Some(backend) = pinned else {
            return self.connect_next().await;
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Some((backend, stream))
            }
            _ => None,
        }
    }

    /// The next backend of the rotation that accepts a TCP connection: at most one try per backend, each bounded by
    /// [`CONNECT_TIMEOUT`]. The request takes one place in the rotation and tries the backends in turn from there:
    /// drawing a place per try let concurrent requests draw the same refusing backend again and again, so that a
    /// burst of reconnects while a node stopped got `502` with two nodes up (the rolling-restart test's failed
    /// stateful reconnects).
    async fn connect_next(&self) -> Option<(SocketAddr, TcpStream)> {
        let backends = self.backends.lock().clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..backends.len() {
            let index = start.wrapping_add(offset) % backends.len();
            let Some(&backend) = backends.get(index) else {
                continue;
            };
            if let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
                let _ = stream.set_nodelay(true);
                return Some((backend, stream));
            }
        }
        None
    }

    fn record(&self, routed: Routed) {
        let mut routes = self.routes.lock();
        if routes.len() >= ROUTE_RECORD_CAPACITY {
            routes.pop_front();
        }
        routes.push_back(routed);
    }
}

/// Copies bytes both ways between the upgraded client and backend connections until either ends or a cut.
async fn splice(client: OnUpgrade, backend: OnUpgrade, cut: CancellationToken, _permit: OwnedSemaphorePermit) {
    let spliced = async move {
        let Ok((client, backend)) = tokio::try_join!(client, backend) else {
            return;
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
    };
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = spliced => {}
    }
}

/// Removes the headers that concern one hop only: `Connection`, the headers it names, `Keep-Alive` and
/// `Proxy-Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(CONNECTION);
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(text.as_bytes()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
