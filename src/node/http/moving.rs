//! Moving stateful WebSocket connections off a draining node (docs/any-node-design.md, section 5a): the order of
//! the steps, on the node a connection leaves (S) and the node it moves to (T).
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use futures_util::FutureExt;
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

/// One slice of a drain: moves those of `ids` that are in `movable` to ready peers, and closes the others (and
/// those whose move failed) with a Close that allows reconnecting.
pub(crate) async fn move_or_close(
    node: &Node,
    endpoint: &Arc<HubEndpoint>,
    ids: &[ConnectionId],
    movable: &HashMap<ConnectionId, (String, NodeId)>,
) {
    let (moving, closing): (Vec<&ConnectionId>, Vec<&ConnectionId>) =
        ids.iter().partition(|id| movable.contains_key(*id));
    let mut close: Vec<ConnectionId> = closing.into_iter().cloned().collect();
    endpoint.context.close_local(&close, true);
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
                    Some(to) => match move_one(node, endpoint, &token, &id, &home, &to).await {
                        Ok(groups) => Ok((id, groups, to)),
                        Err(why) => Err((id, why)),
                    },
                    None => Err((id, "no ready peer".to_owned())),
                }
            }
        });
        let mut moved = Vec::new();
        for result in futures_util::future::join_all(moves).await {
            match result {
                Ok(done) => moved.push(done),
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

/// How long the view must stay the same to count as settled (re-homing after a change takes the peers'
/// snapshots, a round trip or so), and the longest wait for it.
const SETTLED_AFTER: Duration = Duration::from_millis(500);
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

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

/// Moves one connection to `to` (steps 1 to 7 of this file's doc); the groups it moved.
async fn move_one(
    node: &Node,
    endpoint: &Arc<HubEndpoint>,
    token: &str,
    id: &ConnectionId,
    home: &NodeId,
    to: &NodeId,
) -> Result<Vec<GroupKey>, String> {
    let context = &endpoint.context;
    // 1. Prepare.
    match super::relay::ask_op(node, endpoint, to, token, super::relay::Op::Prepare { id: id.clone() }).await {
        Ok(reply) if reply.status() == StatusCode::OK => {}
        Ok(reply) => return Err(format!("the peer refused: {}", reply.status())),
        Err(error) => return Err(error),
    }
    // 2. Its home (if a third node) passes direct sends to the new server from now on. Its answer comes after
    // the sends it passed here before, so those are in the connection's mailbox when it hands over.
    let here = node.router().incarnation();
    // A home that has left holds nothing to switch: senders find the connection without it.
    let home_live = node.router().is_live_incarnation(&home.name, home.generation);
    if *home != here && home != to && home_live {
        let op = super::relay::Op::Moved { server: to.clone() };
        match super::relay::ask_op(node, endpoint, home, token, op).await {
            Ok(reply) if reply.status() == StatusCode::OK => {}
            Ok(reply) => return Err(format!("its home did not switch: {}", reply.status())),
            Err(error) => return Err(format!("its home did not switch: {error}")),
        }
    }
    // 3. Groups.
    let groups = context
        .move_groups(id, to, MOVE_LIMIT)
        .await
        .map_err(|error| format!("its groups did not move: {error}"))?;
    // 4. Direct sends that reach this node.
    let handle = context
        .hand_off(id, to)
        .ok_or_else(|| "it ended, or too many connections of this node run elsewhere".to_owned())?;
    // 5. Its state.
    let handover = match handle.move_out().await {
        Ok(answer) => tokio::time::timeout(MOVE_LIMIT, answer).await,
        Err(error) => return Err(error.to_string()),
    };
    let handover = match handover {
        Ok(Ok(handover)) => handover,
        _ => {
            handle.close(None, true);
            return Err("its task did not hand its state over in time".to_owned());
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
        Ok(reply) => Err(format!("the peer did not install it: {}", reply.status())),
        Err(error) => Err(error),
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
pub(super) fn prepare_move(node: &Node, endpoint: &Arc<HubEndpoint>, token: &str, id: ConnectionId) -> Reply {
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

/// The home, when the node serving one of its connections moved it to `server`: passes on to `server` from now
/// on.
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
            _ => return Reply::no_connection(),
        }
    };
    match node.router().adopt_out(id, server) {
        Ok(()) => Reply::empty(StatusCode::OK),
        Err(error) => Reply::unavailable(error),
    }
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
) -> Reply {
    {
        let mut tokens = endpoint.tokens.lock();
        match tokens.get_mut(token) {
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
                tokens.insert(
                    token.to_owned(),
                    Negotiated {
                        id: id.clone(),
                        created: Instant::now(),
                        stateful: true,
                        active: Some(Active::Adopted {
                            server: from.clone(),
                            transport,
                        }),
                        home: None,
                    },
                );
            }
        }
    }
    match node.router().adopt_out(id, from.clone()) {
        Ok(()) => Reply::empty(StatusCode::OK),
        Err(error) => Reply::unavailable(error),
    }
}
