//! The HTTP face of a node: hub routes matched case-insensitively, negotiate, and the WebSocket upgrade.
//!
//! Routes for a hub at `[base]` (conformance section A): `POST [base]/negotiate`, `GET [base]` (WebSocket
//! upgrade, with `?id=<connectionToken>` after negotiate or without an id for `skipNegotiation`). Server-Sent
//! Events and long polling answer "not supported by this end point type" until they exist.
//!
//! Negotiated connections that never connect expire after [`NEGOTIATE_EXPIRY`]; a token addresses at most one
//! live transport (a second WebSocket for it gets 409), and a finished connection's token gets 404.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::Instrument;

use super::Node;
use crate::connection::{self, ConnectionId, ConnectionSetup, RequestInfo};
use crate::hub::HubContext;
use crate::protocol::negotiate::{AvailableTransport, NegotiateResponse};
use crate::protocol::TransferFormat;
use crate::transport::websocket::WebSocketTransport;
use crate::transport::TransportKind;

/// How long a negotiated connection may wait for its transport (ASP.NET's disconnect timeout).
pub const NEGOTIATE_EXPIRY: Duration = Duration::from_secs(15);

/// The transports this build can serve.
const IMPLEMENTED: &[TransportKind] = &[TransportKind::WebSockets];

struct Negotiated {
    id: ConnectionId,
    created: Instant,
    /// A transport is open for this token.
    active: bool,
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

/// CORS as browsers on another origin need it with credentials (conformance item 3): the origin is echoed,
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
            return if request.method() == Method::POST {
                negotiate(endpoint, &request)
            } else {
                text(StatusCode::METHOD_NOT_ALLOWED, "")
            };
        }
    }
    let Some(endpoint) = node.endpoint(&path).cloned() else {
        return text(StatusCode::NOT_FOUND, "");
    };
    let token = crate::hub::url_query_value(request.query_string(), "id");
    match *request.method() {
        Method::GET if is_websocket_upgrade(&request) => {
            if !endpoint.offers(TransportKind::WebSockets) {
                return text(
                    StatusCode::NOT_FOUND,
                    "WebSockets transport not supported by this end point type",
                );
            }
            connect_websocket(&node, endpoint, token, &request, body)
        }
        Method::GET => {
            let wants_sse = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|accept| accept.to_str().ok())
                .is_some_and(|accept| accept.contains("text/event-stream"));
            let (transport, message) = if wants_sse {
                (
                    TransportKind::ServerSentEvents,
                    "ServerSentEvents transport not supported by this end point type",
                )
            } else {
                (
                    TransportKind::LongPolling,
                    "LongPolling transport not supported by this end point type",
                )
            };
            if token.is_none() {
                return text(StatusCode::BAD_REQUEST, "Connection ID required");
            }
            debug_assert!(!endpoint.offers(transport));
            text(StatusCode::NOT_FOUND, message)
        }
        Method::POST | Method::DELETE => match token {
            None => text(StatusCode::BAD_REQUEST, "Connection ID required"),
            Some(token) => match endpoint.tokens.lock().get(&token) {
                // The only transport served so far is WebSockets, which takes no POST or DELETE.
                Some(_) => text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "POST requests are not allowed on WebSocket connections.",
                ),
                None => text(StatusCode::NOT_FOUND, "No Connection with that ID"),
            },
        },
        _ => text(StatusCode::METHOD_NOT_ALLOWED, ""),
    }
}

fn is_websocket_upgrade(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(header::UPGRADE)
        .and_then(|upgrade| upgrade.to_str().ok())
        .is_some_and(|upgrade| upgrade.eq_ignore_ascii_case("websocket"))
}

fn negotiate(endpoint: &HubEndpoint, request: &HttpRequest) -> HttpResponse {
    let version = crate::hub::url_query_value(request.query_string(), "negotiateVersion")
        .and_then(|version| version.parse::<u32>().ok())
        .unwrap_or(0);
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
        tokens.retain(|_, negotiated| negotiated.active || negotiated.created.elapsed() < NEGOTIATE_EXPIRY);
        tokens.insert(
            token.clone(),
            Negotiated {
                id: id.clone(),
                created: Instant::now(),
                active: false,
            },
        );
    }
    let body = NegotiateResponse::new(version.min(1), id.to_string(), token, transports);
    HttpResponse::Ok().json(body)
}

fn transfer_formats(transport: TransportKind) -> Vec<TransferFormat> {
    match transport {
        TransportKind::ServerSentEvents => vec![TransferFormat::Text],
        TransportKind::WebSockets | TransportKind::LongPolling => vec![TransferFormat::Text, TransferFormat::Binary],
    }
}

/// What hub code may read of the request that opens a connection.
fn request_info(request: &HttpRequest) -> RequestInfo {
    RequestInfo {
        user: None,
        query: request.query_string().to_owned(),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
    }
}

fn connect_websocket(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: Option<String>,
    request: &HttpRequest,
    body: web::Payload,
) -> HttpResponse {
    let id = match &token {
        // skipNegotiation: a new connection with a fresh id.
        None => endpoint.context.new_connection_id(&random_id::<16>()),
        Some(token) => {
            let mut tokens = endpoint.tokens.lock();
            match tokens.get_mut(token) {
                None => return text(StatusCode::NOT_FOUND, "No Connection with that ID"),
                Some(negotiated) if negotiated.active => {
                    return text(
                        StatusCode::CONFLICT,
                        "Another WebSocket is already open for this connection.",
                    )
                }
                Some(negotiated) if negotiated.created.elapsed() >= NEGOTIATE_EXPIRY => {
                    tokens.remove(token);
                    return text(StatusCode::NOT_FOUND, "No Connection with that ID");
                }
                Some(negotiated) => {
                    negotiated.active = true;
                    negotiated.id.clone()
                }
            }
        }
    };
    let (response, session, stream) = match actix_ws::handle(request, body) {
        Ok(upgraded) => upgraded,
        Err(error) => {
            if let Some(token) = &token {
                endpoint.tokens.lock().remove(token);
            }
            return error.error_response();
        }
    };
    let limits = node.limits().clone();
    let transport = WebSocketTransport::new(session, stream, limits.max_frame);
    let setup = ConnectionSetup {
        id,
        request: request_info(request),
        limits,
        host: Arc::new(endpoint.context.clone()),
    };
    let span = node.span().clone();
    actix_web::rt::spawn(
        async move {
            connection::run(transport, setup).await;
            if let Some(token) = token {
                endpoint.tokens.lock().remove(&token);
            }
        }
        .instrument(span),
    );
    response
}
