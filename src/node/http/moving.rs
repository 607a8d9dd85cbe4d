//! Moving stateful WebSocket connections off a draining node (docs/any-node-design.md, section 5a), or to the node
//! their client reconnected to ([`move_to_client`]): the order of the steps, on the node a connection leaves (S)
//! and the node it moves to (T).
//!
//! 1. S asks T to prepare ([`Op::Prepare`](super::relay)): T makes the connection's mailbox and registers it as
//!    arriving (`src/hub/moving.rs`), so that what is sent to it on T waits there.
//! 2. S moves its groups at their owners; the owners' markers switch each group's sends from S to T in the
//!    group's order (`src/mesh/moves.rs`).
//! 3. S hands it off: direct sends that reach S go on to T, and it leaves S's registry.
//! 4. S's connection task hands over its state (replay buffer, receive state, session), once no call of the
//!    client's runs (`src/connection/moving.rs`), and waits.
//! 5. S has T install it ([`Op::Install`](super::relay)): T starts its task from that state, detached, and holds
//!    its token, so a reconnect that reaches T resumes it. S records that T serves it (a reconnect that reaches S,
//!    or its home, is passed on to T) and tells its home if that is a third node.
//! 6. S lets the old task drop the client's socket: the client reconnects, through the load balancer, to any node.
//!
//! A move that fails before step 4 falls back to what drain does without moves: Close with `allowReconnect`.
//! T forgets an arrival that was not installed within [`ARRIVAL_EXPIRY`]. Arrivals are bounded by
//! [`MAX_ARRIVALS`] per hub (refused beyond: the connection is closed instead of moved).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use futures_util::FutureExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::Instrument;

use super::super::Node;
use super::endpoint::{Active, HubEndpoint, Negotiated};
use super::keeping::KeepSink;
use super::reply::Reply;
use crate::cluster::{NodeId, NodeStatus};
use crate::connection::keeper::Keeper;
use crate::connection::moving::{run_moved, MovedSetup, MovedState};
use crate::connection::reconnect::{self, ResumeHandle};
use crate::connection::{ConnectionHandle, ConnectionId, RequestInfo, Session};
use crate::mesh::{GroupKey, SendsGot};
use crate::transport::TransportKind;

/// How long one connection's move may take before it is given up (steps 1 to 4; a running call counts).
const MOVE_LIMIT: Duration = Duration::from_secs(5);
/// How long a node keeps an arrival that was prepared and not installed.
pub(super) const ARRIVAL_EXPIRY: Duration = Duration::from_secs(30);
/// The most connections moving to one hub of a node at once.
pub(super) const MAX_ARRIVALS: usize = 16_384;
/// A node's answer to a move's prepare when it is not serving: it registered nothing (see [`move_one`]).
const NOT_SERVING: StatusCode = StatusCode::MISDIRECTED_REQUEST;
/// How many connections a node moves at once.
const MOVES_AT_ONCE: usize = 32;

/// A connection prepared to arrive here: its handle (mailbox) and when it was prepared.
pub(super) struct Arrival {
    id: ConnectionId,
    handle: ConnectionHandle,
    prepared: Instant,
}

/// The arrivals of one hub, by token.
pub(super) type Arrivals = HashMap<String, Arrival>;

/// What a moving connection's session is, as it crosses a link with its state.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MovedConnection {
    state: MovedState,
    user: Option<String>,
    claims: Option<crate::auth::Claims>,
    query: String,
    headers: Vec<(String, String)>,
    /// The node that negotiated it.
    home: NodeId,
    /// What it got of its groups' sends on the node it left (from its copy, after a keeper's take-over).
    #[serde(default)]
    sends_got: SendsGot,
}

impl MovedConnection {
    /// A connection's state and request, to start it on another node (a keeper's take-over, `super::keeping`),
    /// and what its copy said it got of its groups' sends.
    pub(super) fn new(state: MovedState, request: RequestInfo, home: NodeId, sends_got: SendsGot) -> Self {
        MovedConnection {
            state,
            user: request.user,
            claims: request.claims.as_deref().cloned(),
            query: request.query,
            headers: request.headers.to_pairs(),
            home,
            sends_got,
        }
    }
}

/// The stateful WebSocket connections of `endpoint` running here, which may move: their tokens and homes by id.
pub(crate) fn movable(node: &Node, endpoint: &HubEndpoint) -> HashMap<ConnectionId, (String, NodeId)> {
    let here = node.router().incarnation();
    endpoint
        .tokens
        .lock()
        .iter()
        .filter_map(|(token, negotiated)| match negotiated {
            Negotiated {
                stateful: true,
                active: Some(Active::WebSocket(Some(handle))),
                id,
                home,
                ..
            } if !handle.is_closed() => {
                Some((id.clone(), (token.clone(), home.clone().unwrap_or_else(|| here.clone()))))
            }
            _ => None,
        })
        .collect()
}

/// One slice of a drain: moves those of `ids` that are in `movable` to ready peers, and closes the others with a
/// Close that allows reconnecting once the calls of their clients have finished (the drain's end closes those
/// still open, `Node::drain`), and those whose move failed at once (the move waited for their calls already).
pub(crate) async fn move_or_close(
    node: &Node,
    endpoint: &Arc<HubEndpoint>,
    ids: &[ConnectionId],
    movable: &HashMap<ConnectionId, (String, NodeId)>,
) {
    let (moving, closing): (Vec<&ConnectionId>, Vec<&ConnectionId>) =
        ids.iter().partition(|id| movable.contains_key(*id));
    let mut close: Vec<ConnectionId> = closing.into_iter().cloned().collect();
    endpoint.context.close_local_after_calls(&close);
    let moving: Vec<(String, ConnectionId, NodeId)> = moving
        .into_iter()
        .filter_map(|id| movable.get(id).map(|(token, home)| (token.clone(), id.clone(), home.clone())))
        .collect();
    close = move_connections(node, endpoint, moving).await;
    endpoint.context.close_local(&close, true);
}

/// The ready peers a connection may move to (and where a moved one is looked for first, `super::websocket`).
pub(super) async fn ready_peers(node: &Node) -> Vec<NodeId> {
    let Some(view) = node.cluster_view().await else {
        return Vec::new();
    };
    view.peers()
        .filter(|member| member.status() == Some(NodeStatus::Serving))
        .map(|member| member.id.clone())
        .collect()
}

/// Moves these connections of `endpoint` (from [`movable`]) to ready peers, [`MOVES_AT_ONCE`] at a time; the ids
/// of those that could not move (the caller closes them).
pub(super) async fn move_connections(
    node: &Node,
    endpoint: &Arc<HubEndpoint>,
    connections: Vec<(String, ConnectionId, NodeId)>,
) -> Vec<ConnectionId> {
    let peers = ready_peers(node).await;
    if peers.is_empty() {
        return connections.into_iter().map(|(_, id, _)| id).collect();
    }
    let mut failed = Vec::new();
    let mut pending = connections.into_iter();
    loop {
        let chunk: Vec<_> = pending.by_ref().take(MOVES_AT_ONCE).collect();
        if chunk.is_empty() {
            return failed;
        }
        // A group whose ownership moves while its member moves learns of the move from the old owner only; so
        // moves start on a settled view, and are told again to the owners of a view that changed meanwhile.
        let view_before = settled_view(node).await;
        let moves = chunk.into_iter().map(|(token, id, home)| {
            // Rendezvous on the connection id: the same choice from any node with the same view.
            let to = crate::cluster::owner(id.as_str().as_bytes(), &peers).cloned();
            async move {
                match to {
                    Some(to) => match move_one(node, endpoint, &token, &id, &home, &to, false).await {
                        Ok(groups) => Ok(Some((id, groups, to))),
                        // A resume moves it meanwhile (`move_to_client`): not closed under that move.
                        Err(MoveFailed::Moving) => Ok(None),
                        Err(failed) => Err((id, failed.why().to_owned())),
                    },
                    None => Err((id, "no ready peer".to_owned())),
                }
            }
        });
        let mut moved = Vec::new();
        for result in futures_util::future::join_all(moves).await {
            match result {
                Ok(Some(done)) => moved.push(done),
                Ok(None) => {}
                Err((id, why)) => {
                    tracing::info!(parent: node.span(), %id, %why, "a stateful connection could not move; closing it");
                    failed.push(id);
                }
            }
        }
        if node.router().live_changed_at() != view_before {
            let _ = settled_view(node).await;
            for (id, groups, to) in moved {
                if let Err(error) = endpoint.context.repeat_moves(&id, &groups, &to, MOVE_LIMIT).await {
                    tracing::info!(parent: node.span(), %id, %error, "a moved connection's groups were not told again");
                }
            }
        }
    }
}

/// What became of a stateful connection running here whose client resumed on another node.
pub(super) enum ToClient {
    /// It runs on the client's node now, which resumes it there.
    Moved,
    /// It was not moved and still runs here: the client resumes it on a tunnel.
    Stays,
    /// It is moving already (an earlier resume, or a drain): this resume is refused, and the client reconnects
    /// again (to where it moved). Resuming it here while its task hands its state over would replay records twice.
    Busy,
    /// Its move broke off after the client's node may have taken it in part: it was closed.
    Lost,
}

/// S, when the client of a stateful WebSocket connection running here reconnects on `to` (through a load balancer
/// without affinity): moves the connection to `to`, so that `to` runs it and this node holds nothing of it, rather
/// than resuming it on a tunnel that would carry each of its messages over a link for the rest of its life
/// (docs/any-node-design.md, section 5). The move is a drain's (steps 1 to 7 above). It is tried only in a calm
/// cluster (every peer serving, and neither the live members nor a link changed for [`RESUME_CALM`], here and, at
/// its prepare, on `to`); otherwise the connection stays here and resumes on the tunnel.
pub(super) async fn move_to_client(node: &Node, endpoint: &Arc<HubEndpoint>, token: &str, to: &NodeId) -> ToClient {
    let here = node.router().incarnation();
    if *to == here || node.lifecycle_status() != NodeStatus::Serving {
        return ToClient::Stays;
    }
    // Only in a calm cluster: every peer serving, and no change of the live members or links for a while. While nodes
    // drain, restart or die, owners re-home groups and senders send again what an owner that left had not passed
    // on, and a move among those made a rolling restart under official clients deliver user messages twice (2 of
    // 4 runs of `tests/drain_moves.rs`). The connection then resumes on the tunnel, as the client does not wait.
    let view_before = node.router().live_changed_at();
    if !is_calm(node) || !all_peers_serving(node).await {
        return ToClient::Stays;
    }
    if !ready_peers(node).await.contains(to) {
        return ToClient::Stays;
    }
    let (id, home) = match endpoint.tokens.lock().get(token) {
        Some(Negotiated {
            stateful: true,
            active: Some(Active::WebSocket(Some(handle))),
            id,
            home,
            ..
        }) if !handle.is_closed() => (id.clone(), home.clone().unwrap_or_else(|| here.clone())),
        _ => return ToClient::Stays,
    };
    match move_one(node, endpoint, token, &id, &home, to, true).await {
        Ok(groups) => {
            if node.router().live_changed_at() != view_before {
                let _ = settled_view(node).await;
                if let Err(error) = endpoint.context.repeat_moves(&id, &groups, to, MOVE_LIMIT).await {
                    tracing::info!(parent: node.span(), %id, %error, "a moved connection's groups were not told again");
                }
            }
            tracing::debug!(parent: node.span(), %id, %to, "a resumed connection moved to its client's node");
            ToClient::Moved
        }
        Err(MoveFailed::NotServing) => {
            tracing::debug!(parent: node.span(), %id, %to, "the client's node is not serving; the connection resumes on a tunnel");
            ToClient::Stays
        }
        Err(MoveFailed::Moving) => {
            tracing::debug!(parent: node.span(), %id, %to, "a resume of a connection that is moving; refused");
            ToClient::Busy
        }
        Err(MoveFailed::Broken(why)) => {
            tracing::info!(parent: node.span(), %id, %to, %why, "a resumed connection's move broke off; closing it");
            endpoint.context.close_local(std::slice::from_ref(&id), true);
            ToClient::Lost
        }
    }
}

/// How long the view must stay the same to count as settled (re-homing after a change takes the peers'
/// snapshots, a round trip or so), and the longest wait for it.
const SETTLED_AFTER: Duration = Duration::from_millis(500);
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// How long the live members and the links must have stayed the same for a resume to move its connection to the
/// client's node.
const RESUME_CALM: Duration = Duration::from_secs(2);

/// Whether neither this node's view of the live members nor any of its links changed in the last [`RESUME_CALM`].
/// Links count: a peer that declared this node dead and back (a one-way cut) changed its own view and re-homed
/// groups while this node's view stayed the same (a chaos run counted one member twice after a move then, seed
/// 1796668467567854582: the group's owner took a snapshot of the node the member was leaving).
fn is_calm(node: &Node) -> bool {
    let router = node.router();
    router.live_changed_at().elapsed() >= RESUME_CALM && router.links_changed_at().elapsed() >= RESUME_CALM
}

/// Whether every peer in this node's view is serving (none joining, draining or stopping).
async fn all_peers_serving(node: &Node) -> bool {
    match node.cluster_view().await {
        Some(view) => view.peers().all(|member| member.status() == Some(NodeStatus::Serving)),
        None => false,
    }
}

/// Waits (at most [`SETTLE_LIMIT`]) until this node's view of the live members has not changed for
/// [`SETTLED_AFTER`]; when it last changed.
async fn settled_view(node: &Node) -> Instant {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let changed = node.router().live_changed_at();
        if changed.elapsed() >= SETTLED_AFTER || Instant::now() >= deadline {
            return changed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why a move did not happen.
pub(super) enum MoveFailed {
    /// The node it was to move to is not serving, and registered nothing: the connection goes on here.
    NotServing,
    /// It is moving already (another resume, or a drain).
    Moving,
    /// Anything else, after which the connection cannot go on here: the node it was to move to may hold it as
    /// arriving (a prepare whose answer was lost, a home that did not switch), or routes and groups were switched
    /// to that node. The caller closes it.
    Broken(String),
}

impl MoveFailed {
    fn broken(why: impl Into<String>) -> Self {
        MoveFailed::Broken(why.into())
    }

    pub(super) fn why(&self) -> &str {
        match self {
            MoveFailed::NotServing => "the peer is not serving",
            MoveFailed::Moving => "it is moving already",
            MoveFailed::Broken(why) => why,
        }
    }
}

/// A connection's token in [`HubEndpoint::leaving`] while it moves; taken out when dropped.
struct Leaving<'a> {
    moving: &'a Mutex<HashSet<String>>,
    token: &'a str,
}

impl<'a> Leaving<'a> {
    /// `None` if the connection of `token` is in `moving` already.
    fn start(moving: &'a Mutex<HashSet<String>>, token: &'a str) -> Option<Self> {
        // The lock is let go before a `Leaving` exists: one dropped under it would lock it again (a second move
        // of the same connection hung a node so, in a chaos run).
        let inserted = moving.lock().insert(token.to_owned());
        inserted.then(|| Leaving { moving, token })
    }
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.moving.lock().remove(self.token);
    }
}

/// Moves one connection to `to` (steps 1 to 7 of this file's doc); the groups it moved. With `calm` (a resume's
/// move), `to` refuses unless its own cluster is calm too ([`is_calm`]).
async fn move_one(
    node: &Node,
    endpoint: &Arc<HubEndpoint>,
    token: &str,
    id: &ConnectionId,
    home: &NodeId,
    to: &NodeId,
    calm: bool,
) -> Result<Vec<GroupKey>, MoveFailed> {
    let Some(_leaving) = Leaving::start(&endpoint.leaving, token) else {
        return Err(MoveFailed::Moving);
    };
    let context = &endpoint.context;
    // 1. Prepare. Only a peer's "not serving" says for sure that it registered nothing: an answer lost on the way
    // (a 404 or 503 of the link, a timeout) may follow a prepare that registered the connection there as arriving
    // and took the route to this node out, which the connection could not go on beside (a chaos run lost the
    // memberships of a connection that resumed on a tunnel after such a prepare).
    let prepare = super::relay::Op::Prepare { id: id.clone(), calm };
    match super::relay::ask_op(node, endpoint, to, token, prepare).await {
        Ok(reply) if reply.status() == StatusCode::OK => {}
        Ok(reply) if reply.status() == NOT_SERVING => return Err(MoveFailed::NotServing),
        Ok(reply) => return Err(MoveFailed::broken(format!("the peer did not prepare: {}", reply.status()))),
        Err(error) => return Err(MoveFailed::broken(error)),
    }
    // 2. Its home (if a third node) passes direct sends to the new server from now on. Its answer comes after
    // the sends it passed here before, so those are in the connection's mailbox when it hands over.
    let here = node.router().incarnation();
    let home = &live_home(node, home.clone());
    // A home that has left holds nothing to switch: senders find the connection without it.
    let home_live = node.router().is_live_incarnation(&home.name, home.generation);
    if *home != here && home != to && home_live {
        let op = super::relay::Op::Moved { server: to.clone() };
        // A home that took the move in part and timed out passes on to `to`, where the connection is not
        // installed: so a home that did not answer counts as switched.
        match super::relay::ask_op(node, endpoint, home, token, op).await {
            Ok(reply) if reply.status() == StatusCode::OK => {}
            Ok(reply) => return Err(MoveFailed::broken(format!("its home did not switch: {}", reply.status()))),
            Err(error) => return Err(MoveFailed::broken(format!("its home did not switch: {error}"))),
        }
    }
    // 3. Groups.
    let groups = context
        .move_groups(id, to, MOVE_LIMIT)
        .await
        .map_err(|error| MoveFailed::broken(format!("its groups did not move: {error}")))?;
    // 4. Direct sends that reach this node.
    let handle = context
        .hand_off(id, to)
        .ok_or_else(|| MoveFailed::broken("it ended, or too many connections of this node run elsewhere"))?;
    // 5. Its state.
    let handover = match handle.move_out().await {
        Ok(answer) => tokio::time::timeout(MOVE_LIMIT, answer).await,
        Err(error) => return Err(MoveFailed::broken(error.to_string())),
    };
    let handover = match handover {
        Ok(Ok(handover)) => handover,
        _ => {
            handle.close(None, true);
            return Err(MoveFailed::broken("its task did not hand its state over in time"));
        }
    };
    let session = &handover.session;
    let moved = MovedConnection {
        state: handover.state,
        user: session.user.clone(),
        claims: session.claims.as_deref().cloned(),
        query: session.query.clone(),
        headers: session.headers.to_pairs(),
        home: home.clone(),
        // Noted when its groups' owners' markers took it out of them here (step 3).
        sends_got: context.router().take_sends_got(id),
    };
    // 6. Install, then record where it runs.
    let installed =
        super::relay::ask_op(node, endpoint, to, token, super::relay::Op::Install { moved: Box::new(moved) }).await;
    if let Some(negotiated) = endpoint.tokens.lock().get_mut(token) {
        negotiated.active = Some(Active::Adopted {
            server: to.clone(),
            transport: TransportKind::WebSockets,
        });
    }
    // 7. The old task lets the client's socket go.
    drop(handover.release);
    match installed {
        Ok(reply) if reply.status() == StatusCode::OK => Ok(groups),
        Ok(reply) => Err(MoveFailed::broken(format!("the peer did not install it: {}", reply.status()))),
        Err(error) => Err(MoveFailed::broken(error)),
    }
}

/// What becomes, at [`prepare`], of the sends by id this node holds for the connection if it keeps it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum HeldSends {
    /// A keeper's take-over: it goes on holding them, and resumes them in order (`src/mesh/kept_direct.rs`).
    KeepHolding,
    /// A drain's move: it stops holding them (see [`prepare_move`]).
    Release,
}

/// T, step 1: registers the connection as arriving.
pub(super) fn prepare(node: &Node, endpoint: &Arc<HubEndpoint>, token: &str, id: ConnectionId, held: HeldSends) -> Reply {
    let handle = ConnectionHandle::arriving(id.clone(), node.limits(), None);
    let forget = id.clone();
    {
        let mut arrivals = endpoint.arrivals.lock();
        if arrivals.len() >= MAX_ARRIVALS {
            return Reply::unavailable(format!("{MAX_ARRIVALS} connections are moving here already"));
        }
        if arrivals.contains_key(token) || !endpoint.context.add_arriving(id.clone(), handle.clone()) {
            return Reply::text(StatusCode::CONFLICT, "this connection is here already");
        }
        arrivals.insert(
            token.to_owned(),
            Arrival {
                id,
                handle,
                prepared: Instant::now(),
            },
        );
    }
    // Released before the home's route below switches to the arriving mailbox: a send by id from here after the
    // switch, held as for a take-over here, was dropped with the rest (drain test, direct #60 lost).
    if held == HeldSends::Release {
        node.router().unkeep_direct(&forget);
    }
    // If this node is its home, its direct sends go to the arriving mailbox from now on, not to the node it
    // leaves; this answer follows the ones sent there before, which that node puts in its mailbox first.
    node.router().forget_adopted(&forget);
    // Forgotten if it is not installed in time (the node it came from gave the move up, or died).
    let (endpoint, token) = (endpoint.clone(), token.to_owned());
    tokio::spawn(async move {
        tokio::time::sleep(ARRIVAL_EXPIRY).await;
        let expired = {
            let mut arrivals = endpoint.arrivals.lock();
            match arrivals.get(&token) {
                Some(arrival) if arrival.prepared.elapsed() >= ARRIVAL_EXPIRY => arrivals.remove(&token),
                _ => None,
            }
        };
        if let Some(arrival) = expired {
            endpoint.context.abandon_arrival(&arrival.id).await;
        }
    });
    Reply::empty(StatusCode::OK)
}

/// T, step 1 of a drain's move: [`prepare`], and if this node keeps the connection (the same rendezvous on its id
/// picks its keeper and where it moves), it stops holding its sends by id for a take-over: from now on they are
/// for the arriving mailbox. Held, they were dropped when the node it left said the copy had ended (chaos
/// defect 18 in `tests/cli/chaos/README.md`); those held before are ones its server got too (sent again, or sent
/// to every peer). A keeper's own take-over calls [`prepare`] and keeps holding them until it resumes them.
///
/// A node that is not serving (draining, or not ready yet) refuses: a drain takes the list of its connections when
/// it starts, so one that arrived later would be left behind, and the node it came from tries another or resumes
/// it where it is.
///
/// A resume's move (`calm`) is refused the same way unless this node's cluster is calm too ([`is_calm`]).
pub(super) fn prepare_move(node: &Node, endpoint: &Arc<HubEndpoint>, token: &str, id: ConnectionId, calm: bool) -> Reply {
    if node.lifecycle_status() != NodeStatus::Serving {
        return Reply::text(NOT_SERVING, "this node is not serving");
    }
    if calm && !is_calm(node) {
        return Reply::text(NOT_SERVING, "this node's cluster is not calm");
    }
    prepare(node, endpoint, token, id, HeldSends::Release)
}

/// T, step 5: starts the connection that arrived, from its state, and takes its token.
pub(super) fn install(node: &Node, endpoint: &Arc<HubEndpoint>, token: &str, moved: MovedConnection, keep: bool) -> Reply {
    let Some(arrival) = endpoint.arrivals.lock().remove(token) else {
        return Reply::no_connection();
    };
    let MovedConnection {
        state,
        user,
        claims,
        query,
        headers,
        home,
        sends_got,
    } = moved;
    let request = RequestInfo {
        user,
        claims: claims.map(Arc::new),
        query,
        headers: headers.into_iter().collect(),
    };
    let Some(protocol) = crate::protocol::Protocol::from_name(&state.protocol) else {
        return Reply::text(StatusCode::BAD_REQUEST, "unknown protocol");
    };
    // The connection drops the group sends it got where it ran if they reach it again here, whatever this node's
    // records of their origins say (`src/connection/groups_got.rs`).
    let mut state = state;
    state.groups_got = groups_got(&sends_got);
    // Kept anew here (`keep`: a drain's move, or a keeper's take-over): a later death of this node does not lose
    // it (`super::keeping`).
    let keeper: Option<Arc<dyn Keeper>> = keep.then(|| {
        let sink: Arc<dyn Keeper> = KeepSink::moved(
            node,
            endpoint.path(),
            token,
            arrival.id.clone(),
            home.clone(),
            &request,
            &state,
            &sends_got,
        );
        sink
    });
    let session = Arc::new(Session {
        id: arrival.id.clone(),
        user: request.user,
        claims: request.claims,
        transport: TransportKind::WebSockets,
        protocol,
        query: request.query,
        headers: request.headers,
        handle: arrival.handle,
    });
    let (resume_handle, slot): (ResumeHandle, _) = reconnect::resume_channel();
    let setup = MovedSetup {
        session,
        limits: node.shared_limits(),
        host: Arc::new(endpoint.context.clone()),
        resume: slot,
        keeper: keeper.clone(),
    };
    let run = match run_moved(state, setup) {
        Ok(run) => run,
        Err(error) => return Reply::text(StatusCode::BAD_REQUEST, error.to_string()),
    };
    // The groups an owner's marker moved it into before it was its keeper's (from now on each join reaches the
    // keeper itself), then the whole copy to a keeper, before the connection numbers a record.
    if let Some(keeper) = &keeper {
        for key in endpoint.context.groups_of(&arrival.id).unwrap_or_default() {
            keeper.group(&key.name, key.kind == crate::mesh::GroupKind::User, true);
        }
        keeper.opened(protocol);
    }
    let here = node.router().incarnation();
    endpoint.tokens.lock().insert(
        token.to_owned(),
        Negotiated {
            id: arrival.id.clone(),
            created: Instant::now(),
            stateful: true,
            active: Some(Active::WebSocket(Some(resume_handle))),
            home: (home != here).then_some(home),
        },
    );
    // Its home passed what reached it on to the node it left; here, it is served here.
    node.router().forget_adopted(&arrival.id);
    endpoint.context.arrived(&arrival.id);
    // The sends it got where it was are repeats here if they come again (sent again after their owner left,
    // seconds from now): off the install's path, which the node it left waits for.
    let router = endpoint.context.router().clone();
    tokio::spawn(async move { router.seed_arrivals(&sends_got) });
    let (node, endpoint, token) = (node.clone(), endpoint.clone(), token.to_owned());
    let span = node.span().clone();
    tokio::spawn(run.map(move |()| endpoint.forget(&node, &token)).instrument(span));
    Reply::empty(StatusCode::OK)
}

/// The move's note of what a connection got of its groups' sends, as its own filter takes it.
fn groups_got(sends_got: &crate::mesh::SendsGot) -> Vec<crate::connection::GroupGot> {
    sends_got
        .groups
        .iter()
        .flat_map(|(key, origins)| {
            origins.iter().map(|origin| crate::connection::GroupGot {
                group: key.name.clone(),
                user: key.kind == crate::mesh::GroupKind::User,
                origin: Arc::from(origin.origin.as_str()),
                generation: origin.generation,
                last: origin.last,
            })
        })
        .collect()
}

/// The incarnation of a connection's home to address now: `home` (the one that negotiated it, as a token record
/// or a kept copy names it) or, when that one restarted since, the live one of its name. The restarted home knows
/// of the connection only from what the node serving it tells it (`super::home_report`, `Op::Moved`,
/// `Op::TakenOver`); told nothing, it drops the connection's sends by id once it is past its first seconds. (A
/// drain moved a connection without telling the restarted home, whose earlier incarnation its record named: the
/// official clients' rolling restart in `tests/cli/rolling_restart.rs` lost direct messages so.)
pub(super) fn live_home(node: &Node, home: NodeId) -> NodeId {
    match node.router().live_incarnation(&home.name) {
        Some(live) if live.generation > home.generation => live,
        _ => home,
    }
}

/// The home, when the node serving one of its connections moved it to `server`: passes on to `server` from now
/// on. A home restarted since the connection was negotiated may have no record of it yet (the report of the node
/// that served it is on its way, or failed): it takes the move as that report.
pub(super) fn moved_elsewhere(node: &Node, endpoint: &HubEndpoint, from: &NodeId, token: &str, server: NodeId) -> Reply {
    let id = {
        let mut tokens = endpoint.tokens.lock();
        match tokens.get_mut(token) {
            Some(Negotiated {
                active: Some(Active::Adopted { server: current, .. }),
                id,
                ..
            }) if current == from => {
                *current = server.clone();
                id.clone()
            }
            Some(_) => return Reply::no_connection(),
            None => {
                // Only a connection of this node's name, negotiated by an earlier incarnation (a token this one
                // issued and forgot has ended).
                let Some(claims) = node.token_keys().check(endpoint.path(), token) else {
                    return Reply::no_connection();
                };
                let here = node.router().incarnation();
                if crate::mesh::node_of(&claims.id) != Some(&*here.name) || claims.home_generation >= here.generation {
                    return Reply::no_connection();
                }
                tokens.insert(
                    token.to_owned(),
                    runs_elsewhere(claims.id.clone(), server.clone(), TransportKind::WebSockets),
                );
                claims.id
            }
        }
    };
    match node.router().adopt_out(id, server) {
        Ok(()) => Reply::empty(StatusCode::OK),
        Err(error) => Reply::unavailable(error),
    }
}

/// The home's record of a stateful connection of its name that `server` runs over `transport`.
fn runs_elsewhere(id: ConnectionId, server: NodeId, transport: TransportKind) -> Negotiated {
    Negotiated {
        id,
        created: Instant::now(),
        stateful: true,
        active: Some(Active::Adopted { server, transport }),
        home: None,
    }
}

/// How a home hears that a peer runs one of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerRuns {
    /// The keeper took it over: its server died, whatever the home's record says.
    TakenOver,
    /// The node serving it reports to a restarted home (`super::home_report`): a record the home has of another
    /// server came from a move after the report was made, and stays.
    Reported,
}

/// The home, when a peer runs one of its connections that it did not know ran there: the keeper took it over
/// after the node serving it died (`super::keeping`), or this node restarted after its drain moved it there
/// (`super::home_report`). The home passes on to `from` from now on, as for a connection that moved there.
pub(super) fn runs_on_peer(
    node: &Node,
    endpoint: &HubEndpoint,
    from: &NodeId,
    token: &str,
    id: ConnectionId,
    transport: TransportKind,
    news: PeerRuns,
) -> Reply {
    {
        let mut tokens = endpoint.tokens.lock();
        match tokens.get_mut(token) {
            // A report that crossed a move: the record of the move is the later one.
            Some(Negotiated {
                active: Some(Active::Adopted { server, .. }),
                id: known,
                ..
            }) if *known == id && news == PeerRuns::Reported && server != from => {
                return Reply::text(StatusCode::CONFLICT, "this connection runs elsewhere");
            }
            // The node that served it is dead; its entry may still be here if the view has not lost it yet.
            Some(Negotiated {
                active: Some(Active::Adopted { server, .. }),
                id: known,
                ..
            }) if *known == id => {
                *server = from.clone();
            }
            Some(_) => return Reply::text(StatusCode::CONFLICT, "this connection runs here"),
            None => {
                tokens.insert(token.to_owned(), runs_elsewhere(id.clone(), from.clone(), transport));
            }
        }
    }
    match node.router().adopt_out(id, from.clone()) {
        Ok(()) => Reply::empty(StatusCode::OK),
        Err(error) => Reply::unavailable(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_move_of_a_moving_connection_is_refused_and_leaves_the_first_in_place() {
        let moving = Mutex::new(HashSet::new());
        let first = Leaving::start(&moving, "token");
        assert!(first.is_some());
        assert!(Leaving::start(&moving, "token").is_none(), "a second move while the first runs");
        assert!(moving.lock().contains("token"), "the refused second move took the first one's entry out");
        assert!(Leaving::start(&moving, "other").is_some());
        drop(first);
        assert!(!moving.lock().contains("token"));
        assert!(Leaving::start(&moving, "token").is_some(), "a move after the first one ended");
    }
}
