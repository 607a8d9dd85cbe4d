//! Group and user actors (ractor): each sequences every send to one group, or to the connections of one user.
//!
//! A group's actor lives on its *owner*, the node that rendezvous hashing over the live members picks for the
//! group's key; it is started there at the group's first send and stopped once the group has no members and no
//! send left to fan out. The group's members (which connections of which node) are the owner's directory's
//! (`mesh/directory.rs`), changed by joins and leaves without a message to the actor, so a join costs the actor
//! nothing; each send carries the nodes that held members when the owner accepted it. A send goes once to each of
//! those nodes (through the [`Fanout`] the router provides), and that node delivers to its own members. So a group
//! message crosses to a node once, not once per member, and the frame is encoded once per protocol at the sender.
//!
//! A user is a group of another kind (`super::GroupKind::User`), as in SignalR.Orleans, so `Clients.user` and
//! `Clients.group` share one mechanism. Actors are found through the node's `GroupDirectory`
//! (`mesh/directory.rs`), never through ractor's process-global registry, so several nodes can share a process.
//!
//! Ordering: the owner hands a group's sends to its actor in the order it accepted them, in order with the
//! group's membership changes (each send names the nodes of that moment); the actor handles one message at a
//! time, and the link to each node is FIFO, so every member receives the group's messages in the order the owner
//! accepted them (per-group total order).
//!
//! Group actors run on the node's multi-threaded runtime, never on an HTTP worker: they are spawned through the
//! runtime handle the directory holds. This module may call the connection layer (ids, shared frames); it knows
//! nothing of hubs' methods or of how frames travel between nodes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

    /// Tells `node`, after this node's last delivery of the group to it, that this node released the group
    /// (ownership moved while it was live), so that a new owner's sends waiting there behind it go
    /// (`super::arrivals`).
    fn released(&self, node: &NodeId, key: &GroupKey) -> Delivery;

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

/// Messages a group actor handles: the group's sends and move markers, in the order its owner accepted them.
/// The members themselves are the directory's (`super::directory`): a send carries the nodes that held members
/// when the owner accepted it.
pub enum GroupMessage {
    /// Deliver a frame to every member but those in `except`.
    Send {
        /// The nodes that held members when the owner accepted the send.
        nodes: Arc<[NodeId]>,
        /// The frame, encoded at most once per protocol.
        frame: Arc<SharedFrame>,
        /// Members that must not receive it.
        except: Arc<[ConnectionId]>,
        /// Who sent it.
        stamp: Stamp,
    },
    /// Connection `id` moved from node `from` to node `to` (the directory moved it): the actor tells `from` that it
    /// is out of that node's copy of later sends and `to` that it is in (markers in order with the deliveries), then
    /// replies.
    Move {
        /// The incarnation it leaves.
        from: NodeId,
        /// The incarnation it moves to.
        to: NodeId,
        /// The connection.
        id: ConnectionId,
        /// Answered once both markers went.
        reply: RpcReplyPort<()>,
    },
    /// Ownership of the group moved away while this node is live: after the sends before it, tell each node that
    /// held members that this node released the group. The actor stops after it.
    Release {
        /// The nodes that held members.
        nodes: Arc<[NodeId]>,
    },
}

// With ractor's `cluster` feature there is no blanket `Message` impl; group messages never leave the node.
impl ractor::Message for GroupMessage {}

pub(super) struct GroupActor {
    pub(super) key: GroupKey,
    pub(super) fanout: Arc<dyn Fanout>,
    /// Sends waiting in this actor's mailbox, counted up by the directory (under its bound) and down here as the
    /// actor takes them.
    pub(super) queued: Arc<AtomicUsize>,
    /// Whether the actor is fanning a send out (it may be waiting for a full link).
    pub(super) busy: Arc<AtomicBool>,
}

/// A group actor's state: the member nodes whose link stayed full for [`FANOUT_PATIENCE`].
#[derive(Default)]
pub struct GroupState {
    stalled: HashSet<NodeId>,
}

impl GroupActor {
    /// Hands a send to every member node, waiting (up to [`FANOUT_PATIENCE`]) for a node whose link is full.
    async fn fan_out(
        &self,
        state: &mut GroupState,
        nodes: &[NodeId],
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
    ) {
        if !state.stalled.is_empty() {
            // A node that no longer holds members is no longer waited for, nor remembered.
            state.stalled.retain(|node| nodes.contains(node));
        }
        for node in nodes {
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

/// Tells `node` that this node released group `key`, waiting (up to [`FANOUT_PATIENCE`]) for a full link: a lost
/// marker makes that node's new owner's sends wait there until its wait ends (`super::arrivals::GAP_WAIT`).
pub(super) async fn release(fanout: &dyn Fanout, node: &NodeId, key: &GroupKey) {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let delivery = fanout.released(node, key);
        if delivery != Delivery::Full || started.elapsed() >= FANOUT_PATIENCE {
            tracing::trace!(?key, %node, ?delivery, "told a member node this node released a group");
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
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
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GroupMessage::Send {
                nodes,
                frame,
                except,
                stamp,
            } => {
                // Busy before it leaves the mailbox's count, so that the directory never sees it idle meanwhile.
                self.busy.store(true, Ordering::SeqCst);
                self.queued.fetch_sub(1, Ordering::SeqCst);
                self.fan_out(state, &nodes, &frame, &except, &stamp).await;
                self.busy.store(false, Ordering::SeqCst);
            }
            GroupMessage::Move { from, to, id, reply } => {
                self.mark(&from, &id, false).await;
                self.mark(&to, &id, true).await;
                let _ = reply.send(());
            }
            GroupMessage::Release { nodes } => {
                for node in nodes.iter() {
                    release(self.fanout.as_ref(), node, &self.key).await;
                }
            }
        }
        Ok(())
    }
}
