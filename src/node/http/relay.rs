//! Requests of a connection that reach a node other than the one holding it: with no sticky sessions, a load
//! balancer sends each request of a connection to any node (docs/any-node-design.md).
//!
//! A request whose token this node does not hold is checked ([`super::token`]): a token this cluster did not
//! issue, or whose home (the node that negotiated it) is not the live incarnation that issued it, gets 404 at
//! once. Otherwise:
//!
//! * **WebSockets and SSE are adopted.** The node that takes the upgrade or the event stream asks the home to
//!   claim the token for it ([`Op::Adopt`]); on success it runs the connection itself, so the bulk of the
//!   traffic (server to client) never crosses a link, and tells the home when the connection ends
//!   ([`Op::Release`]). The home records the adopter, and passes on what reaches it for that connection (sends
//!   through the mesh; SSE POSTs here).
//! * **Long polling runs at the home.** Polls, POSTs and DELETEs that reach another node are relayed to it
//!   ([`Op::Poll`], [`Op::Post`], [`Op::Delete`]) and answered with the home's [`Reply`].
//!
//! Relays go over the cluster's links as [`crate::mesh`] requests, so they are bounded by the links' frame cap
//! and credit window (a full link answers 503 at once) and by a deadline; the poll's deadline is the poll timeout
//! plus a margin. The payloads are this file's own, in MessagePack; the mesh carries them as bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::super::{Node, NodeInner};
use tracing::Instrument;

use super::endpoint::{claim_with, lookup, Active, HubEndpoint, Lookup, Negotiated};
use super::moving::ToClient;
use super::tunnel::{LinkTransport, SocketEnd};
use crate::connection::reconnect;
use super::reply::Reply;
use crate::auth::Claims;
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, RequestInfo};
use crate::mesh::{MeshError, RelayHost};
use crate::transport::TransportKind;

/// How long a relayed claim, POST or DELETE may take.
const RELAY_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than the poll timeout a relayed poll may take.
const POLL_MARGIN: Duration = Duration::from_secs(10);

/// A relayed request: the hub (by its path), the token, and what to do.
#[derive(Debug, Serialize, Deserialize)]
struct Relayed {
    path: String,
    token: String,
    op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Op {
    /// The sender took this transport for a fresh token and asks to run the connection; for a WebSocket of a
    /// stateful connection that is already open (its client reconnects), with the tunnel the sender opened for it.
    Adopt { transport: TransportKind, tunnel: Option<u64> },
    /// Resume the stateful connection of this token, which runs here, on a tunnel to the client's socket on
    /// node `client` (passed on by the home to the connection's server).
    Resume { client: NodeId, tunnel: u64 },
    /// A long poll. The first one opens the connection, as the request it came with describes: the request is sent
    /// only when the home asks for it ([`Answer::NeedsRequest`]), so later polls carry no copy of their headers.
    Poll { request: Option<WireRequest> },
    /// A POST's body.
    Post { body: Bytes },
    /// A long-polling DELETE.
    Delete,
    /// The connection the sender adopted has ended.
    Release,
    /// Negotiate a connection of this hub here, for a client whose request reached a draining node (the token
    /// field is empty): the answer is the negotiate response.
    Negotiate { query: String },
    /// A stateful connection of the sender's moves here: register it as arriving (`super::moving`).
    /// With `calm`, a resume's move (`super::moving::move_to_client`): refused unless this node's cluster is calm.
    Prepare {
        id: ConnectionId,
        #[serde(default)]
        calm: bool,
    },
    /// Start the connection that was prepared, from its state, and take its token (`super::moving`).
    Install { moved: Box<super::moving::MovedConnection> },
    /// To a connection's home, from the node that served it: it moved to `server` (`super::moving`).
    Moved { server: NodeId },
    /// To a connection's home, from its keeper: the keeper runs it now, its server died (`super::keeping`).
    TakenOver { id: ConnectionId },
    /// To a restarted home, from the node that runs one of its connections (`super::home_report`).
    Serves { id: ConnectionId, transport: TransportKind },
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    /// The sender may run the connection; stateful reconnect is on for it or not.
    Adopted { stateful: bool },
    /// The connection resumed on the tunnel; it runs on `server`.
    Resumed { server: NodeId },
    /// The connection moved to `server`, the node of the client's socket, which resumes it itself
    /// (`super::moving::move_to_client`); the tunnel it opened is not used.
    MovedTo { server: NodeId },
    /// This poll opens the connection: send it again with its request.
    NeedsRequest,
    Reply(Reply),
}

/// What hub code sees of the request that opens a connection, as it crosses a link.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireRequest {
    user: Option<String>,
    claims: Option<Claims>,
    query: String,
    headers: Vec<(String, String)>,
}

impl From<RequestInfo> for WireRequest {
    fn from(info: RequestInfo) -> Self {
        WireRequest {
            user: info.user,
            claims: info.claims.map(|claims| (*claims).clone()),
            query: info.query,
            headers: info.headers.to_pairs(),
        }
    }
}

impl From<WireRequest> for RequestInfo {
    fn from(wire: WireRequest) -> Self {
        RequestInfo {
            user: wire.user,
            claims: wire.claims.map(Arc::new),
            query: wire.query,
            headers: wire.headers.into_iter().collect(),
        }
    }
}

/// A request with nothing in it.
fn empty_request() -> RequestInfo {
    RequestInfo {
        user: None,
        claims: None,
        query: String::new(),
        headers: std::iter::empty::<(&str, &str)>().collect(),
    }
}

/// Where a request for a token goes.
pub(super) enum Route {
    /// This node holds the token.
    Here,
    /// The live node that negotiated it (its home), and the connection it names.
    Home(NodeId, ConnectionId),
    /// Nobody: 404.
    Missing,
}

/// Where a request for `token` of `endpoint` goes.
pub(super) fn route(node: &Node, endpoint: &HubEndpoint, token: &str) -> Route {
    if endpoint.tokens.lock().contains_key(token) {
        return Route::Here;
    }
    let router = node.router();
    let (id, home) = match node.token_keys().check(endpoint.path(), token) {
        Some(claims) => {
            let Some(home) = crate::mesh::node_of(&claims.id) else {
                return Route::Missing;
            };
            if !router.is_live_incarnation(home, claims.home_generation) {
                return Route::Missing;
            }
            let home = NodeId::new(home, claims.home_generation);
            (claims.id, home)
        }
        // Negotiate version 0 (older clients) uses the connection id as the token: it can only be asked of the
        // live node its id names, whose table knows it only if it was negotiated that way.
        None => {
            let id = ConnectionId::new(token);
            let Some(home) = crate::mesh::node_of(&id).and_then(|home| router.live_incarnation(home)) else {
                return Route::Missing;
            };
            (id, home)
        }
    };
    // A token of this node that it no longer holds (ended, expired, or of an earlier life) is over.
    if &*home.name == node.name() {
        return Route::Missing;
    }
    Route::Home(home, id)
}

/// For a token this cluster issued, whose home has left (`home_left`) or did not answer: the live peers but the
/// home, the likeliest server of its connection first (a drain moves a connection to the peer that rendezvous on
/// its id picks, `super::moving`). Empty for any other token.
pub(super) fn servers_without_home(node: &Node, endpoint: &HubEndpoint, token: &str, home_left: bool) -> Vec<NodeId> {
    let Some(claims) = node.token_keys().check(endpoint.path(), token) else {
        return Vec::new();
    };
    let router = node.router();
    let Some(home) = crate::mesh::node_of(&claims.id) else {
        return Vec::new();
    };
    if home_left && router.is_live_incarnation(home, claims.home_generation) {
        return Vec::new();
    }
    // Only the home's own incarnation is left out: a node restarted under its name is another one, which may
    // serve the connection now.
    let peers: Vec<NodeId> = router
        .peer_incarnations()
        .into_iter()
        .filter(|peer| !(&*peer.name == home && peer.generation == claims.home_generation))
        .collect();
    crate::cluster::ranked(claims.id.as_str().as_bytes(), &peers)
        .into_iter()
        .cloned()
        .collect()
}

fn encode(path: &str, token: &str, op: Op) -> Option<Bytes> {
    let relayed = Relayed {
        path: path.to_owned(),
        token: token.to_owned(),
        op,
    };
    rmp_serde::to_vec(&relayed).ok().map(Bytes::from)
}

/// Sends `op` to `node` and waits for its answer (a reply that says what went wrong, if none came).
async fn ask(node: &Node, endpoint: &HubEndpoint, target: &NodeId, token: &str, op: Op, timeout: Duration) -> Answer {
    let Some(payload) = encode(endpoint.path(), token, op) else {
        return Answer::Reply(Reply::text(StatusCode::INTERNAL_SERVER_ERROR, "The request could not be relayed."));
    };
    match node
        .router()
        .relay(&target.name, target.generation, payload, timeout)
        .await
    {
        Ok(bytes) => rmp_serde::from_slice(&bytes).unwrap_or_else(|error| {
            tracing::warn!(parent: node.span(), %error, node = %target, "an undecodable relay answer");
            Answer::Reply(Reply::text(StatusCode::BAD_GATEWAY, "The connection's node answered garbage."))
        }),
        // The node died or restarted: its connections are gone with it.
        Err(MeshError::NodeGone(_)) => Answer::Reply(Reply::no_connection()),
        Err(error @ MeshError::TooLarge { .. }) => {
            Answer::Reply(Reply::text(StatusCode::PAYLOAD_TOO_LARGE, error.to_string()))
        }
        Err(error) => Answer::Reply(Reply::unavailable(error)),
    }
}

/// Sends `op` for `token` to `target`: its reply, or why there is none.
pub(super) async fn ask_op(node: &Node, endpoint: &HubEndpoint, target: &NodeId, token: &str, op: Op) -> Result<Reply, String> {
    match ask(node, endpoint, target, token, op, RELAY_TIMEOUT).await {
        Answer::Reply(reply) => Ok(reply),
        answer => Err(format!("an unexpected answer: {answer:?}")),
    }
}

/// What the home says to a transport request for one of its tokens.
pub(super) enum Adoption {
    /// Run the connection here; stateful reconnect is on for it or not.
    Adopted { stateful: bool },
    /// The stateful connection, which ran elsewhere, resumed.
    Resumed(Resumption),
}

/// How a stateful connection that ran on another node resumes for a client whose socket reached this node.
pub(super) enum Resumption {
    /// On the tunnel of `socket`: pump the client's socket through it.
    Tunnel(SocketEnd),
    /// Here: it moved to this node, which holds its token now.
    Here,
}

/// Asks the home to let this node run the connection of `token` over `transport`; for a WebSocket, a stateful
/// connection that runs elsewhere resumes on a tunnel instead. The reply that refuses it otherwise.
pub(super) async fn adopt(
    node: &Node,
    endpoint: &HubEndpoint,
    home: &NodeId,
    token: &str,
    transport: TransportKind,
) -> Result<Adoption, Reply> {
    // The tunnel end is opened before asking: the connection may write to it before the answer comes back.
    let socket = if transport == TransportKind::WebSockets {
        Some(SocketEnd::open(node).ok_or_else(|| Reply::unavailable("too many tunnels"))?)
    } else {
        None
    };
    let op = Op::Adopt {
        transport,
        tunnel: socket.as_ref().map(SocketEnd::tunnel),
    };
    match ask(node, endpoint, home, token, op, RELAY_TIMEOUT).await {
        Answer::Adopted { stateful } => Ok(Adoption::Adopted { stateful }),
        Answer::Resumed { server } => match socket {
            Some(mut socket) => {
                socket.resumed_on(server);
                Ok(Adoption::Resumed(Resumption::Tunnel(socket)))
            }
            None => Err(out_of_turn()),
        },
        Answer::MovedTo { server } if server == node.router().incarnation() => Ok(Adoption::Resumed(Resumption::Here)),
        Answer::Reply(reply) => Err(reply),
        Answer::MovedTo { .. } | Answer::NeedsRequest => Err(out_of_turn()),
    }
}

fn out_of_turn() -> Reply {
    Reply::text(StatusCode::BAD_GATEWAY, "The connection's node answered out of turn.")
}

/// Resumes the stateful connection of `token`, which `server` runs, on a tunnel from this node's socket, or here
/// if `server` moved it here.
pub(super) async fn resume_on(node: &Node, endpoint: &HubEndpoint, server: &NodeId, token: &str) -> Result<Resumption, Reply> {
    let mut socket = SocketEnd::open(node).ok_or_else(|| Reply::unavailable("too many tunnels"))?;
    let here = node.router().incarnation();
    let op = Op::Resume {
        client: here.clone(),
        tunnel: socket.tunnel(),
    };
    match ask(node, endpoint, server, token, op, RELAY_TIMEOUT).await {
        Answer::Resumed { server } => {
            socket.resumed_on(server);
            Ok(Resumption::Tunnel(socket))
        }
        Answer::MovedTo { server } if server == here => Ok(Resumption::Here),
        Answer::Reply(reply) => Err(reply),
        Answer::MovedTo { .. } | Answer::Adopted { .. } | Answer::NeedsRequest => Err(out_of_turn()),
    }
}

/// A long poll relayed to the home; `request` describes it, for the first poll, which opens the connection.
pub(super) async fn poll(
    node: &Node,
    endpoint: &HubEndpoint,
    home: &NodeId,
    token: &str,
    request: impl FnOnce() -> RequestInfo,
) -> Reply {
    let timeout = node.limits().poll_timeout + POLL_MARGIN;
    match ask(node, endpoint, home, token, Op::Poll { request: None }, timeout).await {
        Answer::NeedsRequest => {
            let op = Op::Poll {
                request: Some(request().into()),
            };
            reply_of(ask(node, endpoint, home, token, op, timeout).await)
        }
        answer => reply_of(answer),
    }
}

/// A POST's body relayed to the home (or by the home to the node that took the connection's SSE stream).
pub(super) async fn post(node: &Node, endpoint: &HubEndpoint, home: &NodeId, token: &str, body: Bytes) -> Reply {
    reply_of(ask(node, endpoint, home, token, Op::Post { body }, RELAY_TIMEOUT).await)
}

/// A DELETE relayed to the home.
pub(super) async fn delete(node: &Node, endpoint: &HubEndpoint, home: &NodeId, token: &str) -> Reply {
    reply_of(ask(node, endpoint, home, token, Op::Delete, RELAY_TIMEOUT).await)
}

fn reply_of(answer: Answer) -> Reply {
    match answer {
        Answer::Reply(reply) => reply,
        Answer::Adopted { .. } | Answer::Resumed { .. } | Answer::MovedTo { .. } | Answer::NeedsRequest => out_of_turn(),
    }
}

/// Has a ready peer negotiate for a client whose request reached this (draining) node: the peer's negotiate
/// response, or `None` when no ready peer answered with one (then this node negotiates itself).
pub(super) async fn negotiate_elsewhere(node: &Node, endpoint: &HubEndpoint, query: &str) -> Option<Reply> {
    let view = node.cluster_view().await?;
    let ready: Vec<NodeId> = view
        .peers()
        .filter(|member| member.status() == Some(crate::cluster::NodeStatus::Serving))
        .map(|member| member.id.clone())
        .collect();
    // A random ready peer, so that a draining node's negotiates spread as the load balancer's would.
    let first = rand::random_range(0..ready.len().max(1));
    for peer in ready.iter().cycle().skip(first).take(ready.len()) {
        let op = Op::Negotiate { query: query.to_owned() };
        match ask(node, endpoint, peer, "", op, RELAY_TIMEOUT).await {
            Answer::Reply(reply) if reply.status() == StatusCode::OK => return Some(reply),
            answer => tracing::debug!(parent: node.span(), %peer, ?answer, "a peer did not negotiate for this draining node"),
        }
    }
    None
}

/// Tells `home` that the connection of `token`, which this node adopted, has ended (in the background; if the home
/// is gone, so is its record).
pub(super) fn release(node: &Node, endpoint: &HubEndpoint, home: NodeId, token: String) {
    let Some(payload) = encode(endpoint.path(), &token, Op::Release) else {
        return;
    };
    let node = node.clone();
    tokio::spawn(async move {
        if let Err(error) = node
            .router()
            .relay(&home.name, home.generation, payload, RELAY_TIMEOUT)
            .await
        {
            tracing::debug!(parent: node.span(), %error, %home, "the end of an adopted connection could not be told");
        }
    });
}

/// The home's side: serves a request that `from` relayed.
async fn serve(node: Node, from: NodeId, payload: Bytes) -> Answer {
    let relayed: Relayed = match rmp_serde::from_slice(&payload) {
        Ok(relayed) => relayed,
        Err(error) => {
            tracing::warn!(parent: node.span(), %error, %from, "an undecodable relayed request");
            return Answer::Reply(Reply::text(StatusCode::BAD_REQUEST, "undecodable relayed request"));
        }
    };
    let Some(endpoint) = node.endpoint(&relayed.path).cloned() else {
        return Answer::Reply(Reply::text(StatusCode::NOT_FOUND, ""));
    };
    let token = relayed.token;
    match relayed.op {
        Op::Adopt { transport, tunnel } => adopt_here(&node, &endpoint, from, &token, transport, tunnel).await,
        Op::Resume { client, tunnel } => match moved_to(&endpoint, &token) {
            // It moved on from here (`super::moving`): pass the resume on.
            Some(server) => ask(&node, &endpoint, &server, &token, Op::Resume { client, tunnel }, RELAY_TIMEOUT).await,
            None => resume_or_move(&node, &endpoint, &token, client, tunnel).await,
        },
        Op::Prepare { id, calm } => Answer::Reply(super::moving::prepare_move(&node, &endpoint, &token, id, calm)),
        Op::Install { moved } => Answer::Reply(super::moving::install(&node, &endpoint, &token, *moved, true)),
        Op::Moved { server } => Answer::Reply(super::moving::moved_elsewhere(&node, &endpoint, &from, &token, server)),
        Op::TakenOver { id } => {
            let (transport, news) = (TransportKind::WebSockets, super::moving::PeerRuns::TakenOver);
            Answer::Reply(super::moving::runs_on_peer(&node, &endpoint, &from, &token, id, transport, news))
        }
        Op::Serves { id, transport } => {
            let news = super::moving::PeerRuns::Reported;
            Answer::Reply(super::moving::runs_on_peer(&node, &endpoint, &from, &token, id, transport, news))
        }
        Op::Poll { request: None } if matches!(lookup(&endpoint, &token), Lookup::Fresh(_)) => Answer::NeedsRequest,
        Op::Poll { request } => {
            // Only a fresh token's poll reads the request, and that one always comes with it.
            let info = move || request.map(RequestInfo::from).unwrap_or_else(empty_request);
            Answer::Reply(super::long_polling::long_poll(&node, endpoint, token, info).await)
        }
        Op::Post { body } => Answer::Reply(super::send::post_bytes(&node, &endpoint, &token, body).await),
        Op::Delete => Answer::Reply(super::long_polling::delete(&endpoint, &token)),
        Op::Negotiate { query } => Answer::Reply(super::negotiate::negotiate_here(&node, &endpoint, &query)),
        Op::Release => {
            let released = {
                let mut tokens = endpoint.tokens.lock();
                let adopted_by_sender = matches!(
                    tokens.get(&token).and_then(|negotiated| negotiated.active.as_ref()),
                    Some(Active::Adopted { server, .. }) if *server == from
                );
                if adopted_by_sender {
                    tokens.remove(&token)
                } else {
                    None
                }
            };
            if let Some(negotiated) = released {
                node.router().forget_adopted(&negotiated.id);
            }
            Answer::Reply(Reply::empty(StatusCode::OK))
        }
    }
}

/// Lets `from` run the connection of a fresh token over `transport`, resumes a stateful connection on the tunnel
/// `from` opened (here, or through the node that adopted it), or refuses as this node would refuse that
/// transport's request itself.
async fn adopt_here(
    node: &Node,
    endpoint: &Arc<HubEndpoint>,
    from: NodeId,
    token: &str,
    transport: TransportKind,
    tunnel: Option<u64>,
) -> Answer {
    let mut found = lookup(endpoint, token);
    // A reconnect for a connection this node keeps (`super::keeping`): resumed by its server, or taken over here
    // once that server is declared dead.
    if let (Lookup::Missing, Some(tunnel)) = (&found, tunnel) {
        if let Some(answer) = resume_kept(node, endpoint, &from, token, tunnel).await {
            return answer;
        }
        found = lookup(endpoint, token);
    }
    let id = match (found, tunnel) {
        (Lookup::Missing, _) => return Answer::Reply(Reply::no_connection()),
        (Lookup::Fresh(id), _) => id,
        (Lookup::Open(TransportKind::WebSockets, ..), Some(tunnel)) if is_stateful(endpoint, token) => {
            return resume_or_move(node, endpoint, token, from, tunnel).await
        }
        (Lookup::Adopted(server, TransportKind::WebSockets), Some(tunnel)) if is_stateful(endpoint, token) => {
            // The server answers the socket's node directly over the tunnel; this node only passes the request on.
            let op = Op::Resume {
                client: from.clone(),
                tunnel,
            };
            let answer = ask(node, endpoint, &server, token, op, RELAY_TIMEOUT).await;
            if matches!(answer, Answer::Resumed { .. } | Answer::MovedTo { .. }) {
                return answer;
            }
            tracing::debug!(parent: node.span(), %server, ?answer, "a resume passed on to a connection's server failed");
            // Its server may have died meanwhile, and its keeper taken it over: this node, or a peer that told this
            // node (its home) so (`super::keeping`).
            node.keeping().wait_taken_over(endpoint, token).await;
            return match lookup(endpoint, token) {
                Lookup::Open(TransportKind::WebSockets, ..) => resume_or_move(node, endpoint, token, from, tunnel).await,
                Lookup::Adopted(keeper, TransportKind::WebSockets) if keeper != server => {
                    ask(node, endpoint, &keeper, token, Op::Resume { client: from, tunnel }, RELAY_TIMEOUT).await
                }
                _ => answer,
            };
        }
        (Lookup::Open(open, ..) | Lookup::Adopted(_, open), _) => {
            return Answer::Reply(match (open, transport) {
                (TransportKind::WebSockets, TransportKind::WebSockets) => Reply::text(
                    StatusCode::CONFLICT,
                    "Another WebSocket is already open for this connection.",
                ),
                (TransportKind::ServerSentEvents, TransportKind::ServerSentEvents) => Reply::text(
                    StatusCode::CONFLICT,
                    "Another Server-Sent Events stream is already open for this connection.",
                ),
                _ => Reply::text(StatusCode::BAD_REQUEST, "Cannot change transports mid-connection"),
            })
        }
    };
    let active = Active::Adopted {
        server: from.clone(),
        transport,
    };
    let Some(stateful) = claim_with(endpoint, token, active) else {
        return Answer::Reply(Reply::text(
            StatusCode::CONFLICT,
            "Another transport is opening for this connection.",
        ));
    };
    if let Err(error) = node.router().adopt_out(id, from) {
        endpoint.tokens.lock().remove(token);
        return Answer::Reply(Reply::unavailable(error));
    }
    Answer::Adopted {
        stateful: stateful && transport == TransportKind::WebSockets,
    }
}

/// A reconnect, on tunnel `tunnel` from `from`, for a connection this node may keep. When its server is live in
/// this node's view, the resume is passed on to it at once (the client's socket may have dropped with its server
/// alive, and no take-over would come) while this node waits for a take-over all the same (the server may have
/// died and not be declared dead yet, and then cannot answer): the server's answer if it resumed the connection;
/// `None` once this node took it over, or does not keep it, or the wait ended (the caller looks again).
async fn resume_kept(node: &Node, endpoint: &HubEndpoint, from: &NodeId, token: &str, tunnel: u64) -> Option<Answer> {
    let Some(server) = node.keeping().live_server_of(node, token) else {
        node.keeping().wait_taken_over(endpoint, token).await;
        return None;
    };
    let op = Op::Resume {
        client: from.clone(),
        tunnel,
    };
    let asked = ask(node, endpoint, &server, token, op, RELAY_TIMEOUT);
    let resumed = |answer: &Answer| matches!(answer, Answer::Resumed { .. } | Answer::MovedTo { .. });
    match node.keeping().unless_taken_over(endpoint, token, asked, resumed).await? {
        answer @ (Answer::Resumed { .. } | Answer::MovedTo { .. }) => Some(answer),
        // Any other answer waited for the take-over, which did not come: the caller looks again.
        answer => {
            tracing::debug!(parent: node.span(), %server, ?answer, "a kept connection's server did not resume it");
            None
        }
    }
}

/// The node a stateful WebSocket connection that ran here moved to, if it did.
pub(super) fn moved_to(endpoint: &HubEndpoint, token: &str) -> Option<NodeId> {
    match endpoint.tokens.lock().get(token) {
        Some(Negotiated {
            active:
                Some(Active::Adopted {
                    server,
                    transport: TransportKind::WebSockets,
                }),
            stateful: true,
            ..
        }) => Some(server.clone()),
        _ => None,
    }
}

fn is_stateful(endpoint: &HubEndpoint, token: &str) -> bool {
    endpoint
        .tokens
        .lock()
        .get(token)
        .is_some_and(|negotiated| negotiated.stateful)
}

/// The stateful WebSocket connection of `token`, which runs here, and whose client reconnected on `client`: moved
/// to `client` when it can be (`super::moving::move_to_client`), so that no link carries its messages from then
/// on; resumed here on tunnel `tunnel` otherwise.
async fn resume_or_move(node: &Node, endpoint: &Arc<HubEndpoint>, token: &str, client: NodeId, tunnel: u64) -> Answer {
    match super::moving::move_to_client(node, endpoint, token, &client).await {
        ToClient::Moved => Answer::MovedTo { server: client },
        ToClient::Stays => resume_here(node, endpoint, token, client, tunnel),
        ToClient::Busy => Answer::Reply(Reply::unavailable("the connection is moving; reconnect")),
        ToClient::Lost => Answer::Reply(Reply::no_connection()),
    }
}

/// Resumes the stateful WebSocket connection of `token`, which runs here, on tunnel `tunnel` from `client`.
fn resume_here(node: &Node, endpoint: &HubEndpoint, token: &str, client: NodeId, tunnel: u64) -> Answer {
    let handle = match endpoint.tokens.lock().get(token) {
        Some(Negotiated {
            active: Some(Active::WebSocket(Some(handle))),
            ..
        }) if !handle.is_closed() => handle.clone(),
        _ => return Answer::Reply(Reply::no_connection()),
    };
    tracing::debug!(parent: node.span(), %client, tunnel, "resumes a connection on a tunnel");
    let Some(transport) = LinkTransport::open(node, client, tunnel) else {
        return Answer::Reply(Reply::unavailable("too many tunnels"));
    };
    let (relay, pump) = reconnect::relay(transport);
    if !handle.resume(relay) {
        // The connection ended meanwhile, or another reconnect is being handed over.
        return Answer::Reply(Reply::no_connection());
    }
    tokio::spawn(pump.instrument(node.span().clone()));
    Answer::Resumed {
        server: node.router().incarnation(),
    }
}

/// The node's [`RelayHost`], registered with its router.
pub(crate) struct NodeRelays(pub(crate) Weak<NodeInner>);

impl RelayHost for NodeRelays {
    fn serve_relay(&self, from: NodeId, payload: Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send>> {
        let node = self.0.upgrade().map(Node::from_inner);
        Box::pin(async move {
            let answer = match node {
                Some(node) => serve(node, from, payload).await,
                None => Answer::Reply(Reply::no_connection()),
            };
            rmp_serde::to_vec(&answer).map(Bytes::from).unwrap_or_default()
        })
    }

    fn peer_joined(&self, peer: &NodeId) {
        if let Some(node) = self.0.upgrade().map(Node::from_inner) {
            super::home_report::peer_joined(&node, peer);
            node.keeping().peer_joined(&node, peer);
        }
    }

    fn peer_left(&self, peer: &NodeId) {
        if let Some(node) = self.0.upgrade().map(Node::from_inner) {
            for endpoint in node.endpoints() {
                endpoint.forget_adopted_by(peer);
            }
            node.tunnels().peer_left(peer);
            node.keeping().peer_left(&node, peer);
        }
    }

    fn tunnel_frame(&self, from: &NodeId, payload: Bytes) {
        if let Some(node) = self.0.upgrade().map(Node::from_inner) {
            match payload.split_first() {
                Some((&super::keeping::KEEP_FRAME, frame)) => node.keeping().on_frame(&node, from, frame),
                Some((_, frame)) => node.tunnels().on_frame(&node, from, frame),
                None => {}
            }
        }
    }
}
