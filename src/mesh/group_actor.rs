//! Group and user actors (ractor): each owns the cluster-wide membership of one group, or the connections of one
//! user, and sequences every send to the group.
//!
//! A group's actor lives on its *owner*, the node that rendezvous hashing over the live members picks for the
//! group's key; it is started there on first use and stops itself when its last member leaves. It holds which
//! connections of which node are members, not their handles: a send goes once to each node that holds members
//! (through the [`Fanout`] the router provides), and that node delivers to its own members. So a group message
//! crosses to a node once, not once per member, and the frame is encoded once per protocol at the sender.
//!
//! A user is a group of another kind (`super::GroupKind::User`), as in SignalR.Orleans, so `Clients.user` and
//! `Clients.group` share one mechanism. Actors are found through the node's `GroupDirectory`
//! (`mesh/directory.rs`), never through ractor's process-global registry, so several nodes can share a process.
//!
//! Ordering: a group actor handles one message at a time, and the link to each node is FIFO, so every member
//! receives the group's messages in the order the actor accepted them (per-group total order).
//!
//! Group actors run on the node's multi-threaded runtime, never on an HTTP worker: they are spawned through the
//! runtime handle the directory holds. This module may call the connection layer (ids, shared frames); it knows
//! nothing of hubs' methods or of how frames travel between nodes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::group::{GroupKey, Stamp};
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, SharedFrame};

/// Delivers a group's frame to the members a node holds. The router implements it: its own node's members
/// directly, other nodes' members through one link message per node.
pub trait Fanout: Send + Sync + 'static {
    /// Delivers `frame` to the members of `key` on node `node` (that incarnation only), except `except`.
    fn deliver(
        &self,
        node: &NodeId,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
    ) -> Delivery;

    /// A send to `node` was dropped: its link stayed full for [`FANOUT_PATIENCE`] (counted and logged).
    fn dropped(&self, node: &NodeId, key: &GroupKey);

    /// Tells `node`, in order with its deliveries, that member `id` is in its copy of the group's sends from
    /// now on (`arriving`), or no longer (a member moving between nodes, `super::moves`).
    fn moved(&self, node: &NodeId, key: &GroupKey, id: &ConnectionId, arriving: bool) -> Delivery;
}

/// What became of one node's copy of a group send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered, or handed to the node's link.
    Sent,
    /// The node's link queue is full (a slow or stalled node): try again shortly.
    Full,
    /// The node cannot be reached: it is leaving, and its members with it.
    Gone,
}

/// How long a group actor keeps trying a node whose link queue is full before it drops that node's copy of a send
/// (backpressure: the group's later sends wait behind it, in order). About failure detection: a node stalled for
/// longer is being declared dead. Once a node made it give up, its later copies are tried once each until one
/// goes through, so a stalled node holds its groups up once, not for every send.
pub const FANOUT_PATIENCE: Duration = Duration::from_secs(3);

/// Messages a group actor handles.
pub enum GroupMessage {
    /// Connection `id` on node `node` joined; replies with the member count.
    Add {
        /// The incarnation of the node the connection lives on.
        node: NodeId,
        /// The connection.
        id: ConnectionId,
        /// Gets the member count.
        reply: RpcReplyPort<usize>,
    },
    /// Connection `id` on node `node` left; replies with the member count. The actor stops when none are left.
    Remove {
        /// The incarnation of the node the connection lives on.
        node: NodeId,
        /// The connection.
        id: ConnectionId,
        /// Gets the member count.
        reply: RpcReplyPort<usize>,
    },
    /// Node `node` holds exactly these members (its snapshot after ownership moved, or a repair).
    Replace {
        /// The node's incarnation.
        node: NodeId,
        /// Its members of this group.
        ids: Vec<ConnectionId>,
    },
    /// Node `node` holds these members too (the rest of its snapshot's list, when that spans several parts).
    Extend {
        /// The node's incarnation.
        node: NodeId,
        /// More of its members of this group.
        ids: Vec<ConnectionId>,
    },
    /// This incarnation of a node is gone (dead, or superseded by a newer generation): its connections leave the
    /// group. A newer generation of the same name keeps its own members.
    DropNode(NodeId),
    /// Deliver a frame to every member but those in `except`.
    Send {
        /// The frame, encoded at most once per protocol.
        frame: Arc<SharedFrame>,
        /// Members that must not receive it.
        except: Arc<[ConnectionId]>,
        /// Who sent it.
        stamp: Stamp,
    },
    /// Connection `id` moves from node `from` to node `to`: the actor tells `from` that it is out of that node's
    /// copy of later sends and `to` that it is in (markers in order with the deliveries); replies with the count.
    Move {
        /// The incarnation it leaves.
        from: NodeId,
        /// The incarnation it moves to.
        to: NodeId,
        /// The connection.
        id: ConnectionId,
        /// Gets the member count.
        reply: RpcReplyPort<usize>,
    },
    /// Reply with the member count.
    Count(RpcReplyPort<usize>),
    /// Reply with the member ids.
    Members(RpcReplyPort<Vec<ConnectionId>>),
}

// With ractor's `cluster` feature there is no blanket `Message` impl; group messages never leave the node.
impl ractor::Message for GroupMessage {}

pub(super) struct GroupActor {
    pub(super) key: GroupKey,
    pub(super) fanout: Arc<dyn Fanout>,
    /// Sends waiting in this actor's mailbox, counted up by the directory (under its bound) and down here.
    pub(super) queued: Arc<AtomicUsize>,
}

/// Members by the incarnation of the node they live on: a restarted node's members are its new generation's, and
/// the earlier generation's are dropped when it is declared dead, whatever order the two arrive in.
type Members = HashMap<NodeId, HashSet<ConnectionId>>;

/// A group actor's state: its members, and the member nodes whose link stayed full for [`FANOUT_PATIENCE`].
#[derive(Default)]
pub struct GroupState {
    members: Members,
    stalled: HashSet<NodeId>,
}

fn member_count(members: &Members) -> usize {
    members.values().map(HashSet::len).sum()
}

impl GroupActor {
    /// Hands a send to every member node, waiting (up to [`FANOUT_PATIENCE`]) for a node whose link is full.
    async fn fan_out(&self, state: &mut GroupState, frame: &Arc<SharedFrame>, except: &Arc<[ConnectionId]>, stamp: &Stamp) {
        for node in state.members.keys() {
            let started = tokio::time::Instant::now();
            let mut pause = Duration::from_millis(1);
            loop {
                match self.fanout.deliver(node, &self.key, frame, except, stamp) {
                    Delivery::Sent => {
                        state.stalled.remove(node);
                        break;
                    }
                    Delivery::Gone => break,
                    Delivery::Full if !state.stalled.contains(node) && started.elapsed() < FANOUT_PATIENCE => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(20));
                    }
                    Delivery::Full => {
                        state.stalled.insert(node.clone());
                        self.fanout.dropped(node, &self.key);
                        break;
                    }
                }
            }
        }
    }
}

impl GroupActor {
    /// Sends a move marker, waiting (up to [`FANOUT_PATIENCE`]) for a node whose link is full: a lost marker
    /// leaves the move unfinished (the moving node then gives it up).
    async fn mark(&self, node: &NodeId, id: &ConnectionId, arriving: bool) {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(1);
        while self.fanout.moved(node, &self.key, id, arriving) == Delivery::Full && started.elapsed() < FANOUT_PATIENCE {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Actor for GroupActor {
    type Msg = GroupMessage;
    type State = GroupState;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, _args: ()) -> Result<Self::State, ActorProcessingErr> {
        Ok(GroupState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let members = &mut state.members;
        match message {
            GroupMessage::Add { node, id, reply } => {
                members.entry(node).or_default().insert(id);
                let _ = reply.send(member_count(members));
            }
            GroupMessage::Remove { node, id, reply } => {
                if let Some(ids) = members.get_mut(&node) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        members.remove(&node);
                    }
                }
                let count = member_count(members);
                let _ = reply.send(count);
                if count == 0 {
                    // Messages queued behind this one are dropped with their reply ports, so an `add` that
                    // raced with the last `remove` sees a failed call and retries on a fresh actor.
                    myself.stop(None);
                }
            }
            GroupMessage::Replace { node, ids } => {
                if ids.is_empty() {
                    members.remove(&node);
                } else {
                    members.insert(node, ids.into_iter().collect());
                }
                if members.is_empty() {
                    myself.stop(None);
                }
            }
            GroupMessage::Extend { node, ids } => {
                members.entry(node).or_default().extend(ids);
            }
            GroupMessage::DropNode(node) => {
                members.remove(&node);
                state.stalled.remove(&node);
                if members.is_empty() {
                    myself.stop(None);
                }
            }
            GroupMessage::Send { frame, except, stamp } => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.fan_out(state, &frame, &except, &stamp).await;
            }
            GroupMessage::Move { from, to, id, reply } => {
                if let Some(ids) = members.get_mut(&from) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        members.remove(&from);
                    }
                }
                members.entry(to.clone()).or_default().insert(id.clone());
                self.mark(&from, &id, false).await;
                self.mark(&to, &id, true).await;
                let _ = reply.send(member_count(members));
            }
            GroupMessage::Count(reply) => {
                let _ = reply.send(member_count(members));
            }
            GroupMessage::Members(reply) => {
                let _ = reply.send(members.values().flatten().cloned().collect());
            }
        }
        Ok(())
    }
}
