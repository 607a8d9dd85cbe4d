//! `GET [base]` with a WebSocket upgrade: the token checks, a new connection or a stateful one coming back, and the
//! upgrade, by the node's own server or by actix-ws in an application's server.

use std::sync::Arc;

use actix_web::dev::RequestHead;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::FutureExt;
use tracing::Instrument;

use super::super::Node;
use super::access::{authenticate, query_string, request_info};
use super::endpoint::{insert_adopted, Active, HubEndpoint, Negotiated, NEGOTIATE_EXPIRY};
use super::relay::{self, Adoption, Resumption, Route};
use super::reply::Reply;
use super::keeping::KeepSink;
use super::tunnel::SocketEnd;
use super::negotiate::random_id;
use super::{no_connection, normalize_path, text};
use crate::auth::Authenticated;
use crate::cluster::NodeId;
use crate::connection::reconnect::{self, ResumeHandle, ResumeSlot};
use crate::connection::{self, ConnectionId, ConnectionSetup};
use crate::transport::websocket::WebSocketTransport;
use crate::transport::TransportKind;

pub(super) fn is_websocket_upgrade(head: &RequestHead) -> bool {
    head.headers()
        .get(header::UPGRADE)
        .and_then(|upgrade| upgrade.to_str().ok())
        .is_some_and(|upgrade| upgrade.eq_ignore_ascii_case("websocket"))
}

/// A hub WebSocket request that passed routing, authentication and the token checks: what is left is the
/// upgrade, by whichever server carries it ([`upgrade_with_actix_ws`] or [`crate::node::server`]).
pub(crate) enum AcceptedWebSocket {
    /// A new connection (boxed: most of the size).
    New(Box<NewWebSocket>),
    /// A stateful connection whose client comes back.
    Resume {
        handle: ResumeHandle,
        max_frame: usize,
        span: tracing::Span,
    },
    /// A stateful connection whose client comes back here while the connection runs on another node: the socket
    /// is carried over a tunnel (`super::tunnel`).
    Tunnel {
        socket: SocketEnd,
        max_frame: usize,
        span: tracing::Span,
    },
}

/// A new hub connection over a WebSocket, before its upgrade.
pub(crate) struct NewWebSocket {
    node: Node,
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
            AcceptedWebSocket::Resume { max_frame, .. } | AcceptedWebSocket::Tunnel { max_frame, .. } => *max_frame,
        }
    }

    /// Starts the connection on `transport`, on this worker: a new connection task, or the relay that hands the
    /// socket to the waiting connection's task (which may run on another worker).
    pub(crate) fn start<T: crate::transport::Transport + 'static>(self, transport: T) {
        match self {
            AcceptedWebSocket::New(new) => {
                let NewWebSocket {
                    node,
                    endpoint,
                    token,
                    setup,
                    span,
                } = *new;
                // Chained with `map`, not awaited in an async block: that would hold the connection's future
                // twice (as captured and as awaited) for its whole life.
                let run = connection::run(transport, setup).map(move |()| {
                    if let Some(token) = token {
                        endpoint.forget(&node, &token);
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
            AcceptedWebSocket::Tunnel { socket, span, .. } => {
                actix_web::rt::spawn(socket.pump(transport).instrument(span));
            }
        }
    }

    /// The upgrade failed: the token may not be used again.
    pub(crate) fn abandon(self) {
        if let AcceptedWebSocket::New(new) = self {
            if let Some(token) = &new.token {
                new.endpoint.forget(&new.node, token);
            }
        }
    }
}

/// Routes and authenticates a WebSocket upgrade request for the node's own server: the hub it addresses and its
/// connection, or the response that refuses it.
pub(crate) async fn accept_hub_websocket(
    node: &Node,
    head: &RequestHead,
) -> Result<AcceptedWebSocket, Box<HttpResponse>> {
    let Some(endpoint) = node.endpoint(&normalize_path(head.uri.path())).cloned() else {
        return Err(text(StatusCode::NOT_FOUND, "").into());
    };
    let user = authenticate(node, &endpoint, head).map_err(|refusal| Box::new(refusal.response()))?;
    let token = crate::hub::url_query_value(query_string(head), "id");
    let started = std::time::Instant::now();
    let accepted = accept_websocket(node, endpoint, token, head, user).await;
    if let Ok(AcceptedWebSocket::Tunnel { socket, .. }) = &accepted {
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(parent: node.span(), tunnel = socket.tunnel(), took_ms, "a reconnecting socket resumes on a tunnel");
    }
    accepted
}

/// Accepts a WebSocket for `token`: a token this node holds as [`accept_local`] says; a token another live node
/// negotiated is adopted from it (`super::relay`), so that this node runs the connection.
pub(super) async fn accept_websocket(
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
    let Some(token) = token else {
        return accept_local(node, endpoint, None, head, user);
    };
    let (home, id) = match relay::route(node, &endpoint, &token) {
        Route::Here => {
            // A stateful connection negotiated here that another node runs: its client is back, here.
            let Some(server) = relay::moved_to(&endpoint, &token) else {
                return accept_local(node, endpoint, Some(token), head, user);
            };
            return match relay::resume_on(node, &endpoint, &server, &token).await {
                Ok(resumption) => resumed(node, endpoint, resumption, token, head, user),
                Err(reply) => {
                    tracing::debug!(parent: node.span(), %server, status = %reply.status(), "a resume passed on was refused");
                    // Its server may have died: its keeper (this node, or a peer) takes it over (`super::keeping`).
                    if let Some(accepted) = taken_over_here(node, &endpoint, &token, head, &user).await {
                        return accepted;
                    }
                    match resume_without_home(node, &endpoint, &token, false).await {
                        Some(resumption) => resumed(node, endpoint, resumption, token, head, user),
                        None => Err(Box::new(reply.into_response())),
                    }
                }
            };
        }
        Route::Missing => {
            if let Some(accepted) = taken_over_here(node, &endpoint, &token, head, &user).await {
                return accepted;
            }
            // A connection whose home left may have moved to a live node (a drain, `super::moving`), or been taken
            // over by its keeper (`super::keeping`; its home may be this node): ask them.
            let own = node
                .token_keys()
                .check(endpoint.path(), &token)
                .is_some_and(|claims| crate::mesh::node_of(&claims.id) == Some(node.name()));
            return match resume_without_home(node, &endpoint, &token, !own).await {
                Some(resumption) => resumed(node, endpoint, resumption, token, head, user),
                None => {
                    tracing::debug!(parent: node.span(), "a WebSocket for a token no node holds");
                    Err(no_connection().into())
                }
            };
        }
        Route::Home(home, id) => (home, id),
    };
    let stateful = match relay::adopt(node, &endpoint, &home, &token, TransportKind::WebSockets).await {
        Ok(Adoption::Adopted { stateful }) => stateful,
        Ok(Adoption::Resumed(resumption)) => return resumed(node, endpoint, resumption, token, head, user),
        // A home that died and is not declared dead yet cannot answer; the connection may run elsewhere.
        Err(reply) if matches!(reply.status(), StatusCode::NOT_FOUND | StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::debug!(parent: node.span(), %home, status = %reply.status(), "a reconnecting socket's home could not place it");
            if let Some(accepted) = taken_over_here(node, &endpoint, &token, head, &user).await {
                return accepted;
            }
            return match resume_without_home(node, &endpoint, &token, false).await {
                Some(resumption) => resumed(node, endpoint, resumption, token, head, user),
                None => {
                    tracing::debug!(parent: node.span(), %home, status = %reply.status(), "a WebSocket its home refused");
                    Err(Box::new(reply.into_response()))
                }
            };
        }
        Err(reply) => {
            tracing::debug!(parent: node.span(), %home, status = %reply.status(), "a WebSocket its home refused");
            return Err(Box::new(reply.into_response()));
        }
    };
    let (handle, resume) = if stateful {
        let (handle, slot) = reconnect::resume_channel();
        (Some(handle), Some(slot))
    } else {
        (None, None)
    };
    insert_adopted(&endpoint, token.clone(), id.clone(), home.clone(), Active::WebSocket(handle), stateful);
    Ok(new_websocket(node, endpoint, Some(token), id, head, user, resume, home))
}

/// Resumes a stateful connection whose home left (`home_left`) or could not answer, on whichever live peer serves
/// it now (a drain moves connections, `super::moving`): on a tunnel to it, or here if it moved here; `None` if no
/// peer serves it.
async fn resume_without_home(node: &Node, endpoint: &HubEndpoint, token: &str, home_left: bool) -> Option<Resumption> {
    let mut servers = relay::servers_without_home(node, endpoint, token, home_left);
    // Ready peers first (in their rank): a drain moves connections to them, and a draining or stopping peer only
    // passes the resume on, whose answer may not come back if it stops meanwhile.
    let ready = super::moving::ready_peers(node).await;
    servers.sort_by_key(|server| !ready.contains(server));
    for server in servers {
        if let Ok(Adoption::Resumed(resumption)) = relay::adopt(node, endpoint, &server, token, TransportKind::WebSockets).await {
            return Some(resumption);
        }
    }
    None
}

/// A reconnect for a connection this node keeps (`super::keeping`), or took over meanwhile: once taken over here,
/// accepted as a resume; `None` if this node does not keep it or did not take it over.
async fn taken_over_here(
    node: &Node,
    endpoint: &Arc<HubEndpoint>,
    token: &str,
    head: &RequestHead,
    user: &Option<Authenticated>,
) -> Option<Result<AcceptedWebSocket, Box<HttpResponse>>> {
    // Kept here for a live server (a connection that moved in a drain is kept anew): the server is asked at once,
    // since the client's socket may have dropped with its server alive (as at a keeper that is not the socket's
    // node, `relay::resume_kept`).
    if let Some(server) = node.keeping().live_server_of(node, token) {
        let adopted = relay::adopt(node, endpoint, &server, token, TransportKind::WebSockets);
        let is_resumed = |adoption: &Result<Adoption, Reply>| matches!(adoption, Ok(Adoption::Resumed(_)));
        // Any answer but a resume waited for the take-over, which did not come.
        return match node.keeping().unless_taken_over(endpoint, token, adopted, is_resumed).await {
            None => Some(accept_local(node, endpoint.clone(), Some(token.to_owned()), head, user.clone())),
            Some(Ok(Adoption::Resumed(resumption))) => {
                Some(resumed(node, endpoint.clone(), resumption, token.to_owned(), head, user.clone()))
            }
            Some(Ok(Adoption::Adopted { .. })) => {
                tracing::debug!(parent: node.span(), %server, "a kept connection's live server let this node adopt it");
                None
            }
            Some(Err(reply)) => {
                tracing::debug!(parent: node.span(), %server, status = %reply.status(), "a kept connection's server did not resume it");
                None
            }
        };
    }
    if !node.keeping().wait_taken_over(endpoint, token).await {
        return None;
    }
    Some(accept_local(node, endpoint.clone(), Some(token.to_owned()), head, user.clone()))
}

/// A reconnect for a stateful connection that ran on another node, accepted: on the tunnel to that node, or here
/// as a resume, where that node moved the connection.
fn resumed(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    resumption: Resumption,
    token: String,
    head: &RequestHead,
    user: Option<Authenticated>,
) -> Result<AcceptedWebSocket, Box<HttpResponse>> {
    match resumption {
        Resumption::Tunnel(socket) => Ok(tunnel(node, socket)),
        Resumption::Here => accept_local(node, endpoint, Some(token), head, user),
    }
}

fn tunnel(node: &Node, socket: SocketEnd) -> AcceptedWebSocket {
    AcceptedWebSocket::Tunnel {
        socket,
        max_frame: node.limits().max_frame,
        span: node.span().clone(),
    }
}

/// Accepts a WebSocket for a token this node holds (or a new connection without negotiate, with no token).
fn accept_local(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: Option<String>,
    head: &RequestHead,
    user: Option<Authenticated>,
) -> Result<AcceptedWebSocket, Box<HttpResponse>> {
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
                    active: Some(Active::WebSocket(_) | Active::Adopted {
                        transport: TransportKind::WebSockets,
                        ..
                    }),
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
    let home = node.router().incarnation();
    Ok(new_websocket(node, endpoint, token, id, head, user, resume, home))
}

/// A new connection `id` over the WebSocket that `head` asks for, its token (negotiated by `home`) forgotten when
/// it ends. A stateful one is kept on a peer (`super::keeping`).
#[allow(clippy::too_many_arguments)]
fn new_websocket(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: Option<String>,
    id: ConnectionId,
    head: &RequestHead,
    user: Option<Authenticated>,
    resume: Option<ResumeSlot>,
    home: NodeId,
) -> AcceptedWebSocket {
    let request = request_info(head, user);
    let keeper: Option<Arc<dyn crate::connection::keeper::Keeper>> = match (&token, &resume) {
        (Some(token), Some(_)) => Some(KeepSink::new(node, endpoint.path(), token, id.clone(), home, &request)),
        _ => None,
    };
    let setup = ConnectionSetup {
        id,
        request,
        limits: node.shared_limits(),
        host: Arc::new(endpoint.context.clone()),
        resume,
        wake_relay: node.wake_relay(),
        keeper,
    };
    AcceptedWebSocket::New(Box::new(NewWebSocket {
        node: node.clone(),
        endpoint,
        token,
        setup,
        span: node.span().clone(),
    }))
}

/// The upgrade of a hub mounted in an application's own actix-web server ([`Node::configure`]): there the socket
/// stays with actix-web's dispatcher, and actix-ws carries the messages.
pub(super) fn upgrade_with_actix_ws(
    accepted: AcceptedWebSocket,
    request: &HttpRequest,
    body: web::Payload,
) -> HttpResponse {
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
