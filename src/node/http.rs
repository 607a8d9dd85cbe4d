//! The HTTP face of a node: hub routes matched case-insensitively, negotiate, and the three transports.
//!
//! Routes for a hub at `[base]` (docs/protocol.md#routes): `POST [base]/negotiate`; `GET [base]` for a
//! WebSocket upgrade (with `?id=<connectionToken>` after negotiate or without an id for `skipNegotiation`), an
//! SSE stream (`Accept: text/event-stream`) or a long poll (anything else); `POST [base]` for the send half of
//! SSE and long polling; `DELETE [base]` to end a long-polling connection.
//!
//! Negotiated connections that never connect expire after `NEGOTIATE_EXPIRY`. A token addresses at most one
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
//!
//! # Files
//!
//! This file routes each request to its handler (and serves [`CLUSTER_PATH`]); beside it:
//! * `health`: the probes `GET /healthz` and `GET /readyz`, the status report `GET /_hubmesh/status`, `GET /metrics`;
//! * `live`: the live page `GET /_hubmesh/` and its files (`live/`);
//! * `endpoint`: `HubEndpoint`, one hub's negotiated tokens and what each addresses;
//! * `negotiate`: `POST [base]/negotiate`;
//! * `access`: authentication, the 401 and 403 refusals, and the request info hub code sees;
//! * `websocket`, `sse`, `long_polling`: the handler of each transport (`long_polling` also answers `DELETE`);
//! * `send`: `POST [base]`, the send half of SSE and long polling;
//! * `token`: connection tokens any node of the cluster can check; `relay`: the requests of a connection that
//!   reach a node other than the one holding it (adopted WebSockets and SSE streams, relayed polls, POSTs and
//!   DELETEs); `reply`: a transport request's answer as data that can cross the links; `tunnel`: a stateful
//!   connection's reconnected socket on one node carrying the connection that runs on another; `home_report`:
//!   telling a restarted home which of its connections run here.
//! * `rest`: the Azure SignalR-style REST API under `/api/`, when the node has an access key;
//! * `admin`: the operator's `POST /_hubmesh/drain`, authenticated with the REST access key.

mod access;
mod admin;
mod endpoint;
mod health;
mod home_report;
mod keeping;
mod live;
mod long_polling;
mod moving;
mod negotiate;
mod relay;
mod reply;
mod rest;
mod send;
mod sse;
mod token;
mod tunnel;
mod websocket;

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use super::Node;
#[cfg(doc)]
use crate::connection::{
    reconnect::{self, ResumeHandle},
    RequestInfo,
};
#[cfg(doc)]
use crate::hub::HubContext;
use crate::transport::TransportKind;
use access::{authenticate, request_info};
use long_polling::{delete, long_poll};
use negotiate::negotiate;
use relay::Route;
use reply::Reply;
use send::{post, read_body};
use sse::connect_sse;
use websocket::{accept_websocket, is_websocket_upgrade, upgrade_with_actix_ws};

pub use admin::DRAIN_PATH;
pub(crate) use admin::DrainRequest;
pub(crate) use endpoint::HubEndpoint;
pub(crate) use moving::{move_or_close, movable};
pub(crate) use relay::NodeRelays;
pub(crate) use token::TokenKeys;
pub(crate) use tunnel::Tunnels;
pub(crate) use keeping::{flusher as keeping_flusher, Keeping};
pub(crate) use rest::RestApi;
// The test server's raw `/echo` transports use these too.
#[cfg(feature = "test-util")]
pub(crate) use endpoint::NEGOTIATE_EXPIRY;
#[cfg(feature = "test-util")]
pub(crate) use long_polling::{long_polling_options, poll_response};
#[cfg(feature = "test-util")]
pub(crate) use negotiate::random_id;
#[cfg(feature = "test-util")]
pub(crate) use sse::sse_response;
pub(crate) use websocket::{accept_hub_websocket, AcceptedWebSocket};

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

pub(crate) fn configure(node: Node, config: &mut web::ServiceConfig) {
    config.app_data(web::Data::new(node)).default_service(web::to(dispatch));
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status).content_type("text/plain").body(body)
}

/// The path of the node's cluster view, for operators and tests: `{"node": …, "live": [names], "incarnations":
/// ["name.generation", …]}` (the same members, each with its generation: a restarted node shows a new one).
pub const CLUSTER_PATH: &str = "/_hubmesh/cluster";

async fn dispatch(request: HttpRequest, body: web::Payload, node: web::Data<Node>) -> HttpResponse {
    if rest::serves(&node, &request) { return rest::answer(&node, &request, body).await; }
    let path = normalize_path(request.path());
    if path == DRAIN_PATH { return admin::answer(&node, &request); }
    if path == CLUSTER_PATH && request.method() == Method::GET {
        let (live, incarnations): (Vec<String>, Vec<String>) = match node.cluster_view().await {
            Some(view) => view
                .live
                .iter()
                .map(|member| (member.id.name.to_string(), member.id.to_string()))
                .unzip(),
            None => (vec![node.name().to_owned()], Vec::new()),
        };
        return HttpResponse::Ok().json(serde_json::json!({ "node": node.name(), "live": live, "incarnations": incarnations }));
    }
    if request.method() == Method::GET {
        if let Some(response) = health::answer(&node, &path).await {
            return response;
        }
    }
    if let Some(base) = path.strip_suffix("/negotiate") {
        if let Some(endpoint) = node.endpoint(base) {
            if request.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "");
            }
            let peer = request.peer_addr().map(|peer| peer.ip());
            if let Some(refusal) = node.admission().refuse_negotiate(node.limits(), peer) {
                return refusal;
            }
            return match authenticate(&node, endpoint, request.head()) {
                Ok(_) => negotiate(&node, endpoint, &request).await,
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
            if let Some(refusal) = node.admission().refuse_websocket(node.limits(), request.head()) {
                return refusal;
            }
            match accept_websocket(&node, endpoint, token, request.head(), user).await {
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
                if let Some(refusal) = node.admission().refuse_connection(node.limits()) {
                    return refusal;
                }
                return connect_sse(&node, endpoint, token, &request, user).await;
            }
            let info = || request_info(request.head(), user);
            match relay::route(&node, &endpoint, &token) {
                Route::Here => long_poll(&node, endpoint, token, info).await,
                Route::Home(home, _) => relay::poll(&node, &endpoint, &home, &token, info).await,
                Route::Missing => Reply::no_connection(),
            }
            .into_response()
        }
        Method::POST => match token {
            None => text(StatusCode::BAD_REQUEST, "Connection ID required"),
            Some(token) => match relay::route(&node, &endpoint, &token) {
                Route::Here => post(&node, &endpoint, &token, body).await,
                Route::Home(home, _) => match read_body(&node, body).await {
                    Ok(bytes) => relay::post(&node, &endpoint, &home, &token, bytes).await,
                    Err(reply) => reply,
                },
                Route::Missing => Reply::no_connection(),
            }
            .into_response(),
        },
        Method::DELETE => match token {
            None => text(StatusCode::BAD_REQUEST, "Connection ID required"),
            Some(token) => match relay::route(&node, &endpoint, &token) {
                Route::Here => delete(&endpoint, &token),
                Route::Home(home, _) => relay::delete(&node, &endpoint, &home, &token).await,
                Route::Missing => Reply::no_connection(),
            }
            .into_response(),
        },
        _ => text(StatusCode::METHOD_NOT_ALLOWED, ""),
    }
}

fn no_connection() -> HttpResponse {
    text(StatusCode::NOT_FOUND, "No Connection with that ID")
}
