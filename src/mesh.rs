//! The mesh: everything that makes the cluster the hubs' backplane, so that every send is location-transparent.
//! One `Router` per node, shared by the node's hubs.
//!
//! # What it owns
//!
//! * Where things are. A connection id ends with `.<node name>`, so a send to a connection goes straight to its
//!   node with no lookup. A group (or user) is owned by the node that rendezvous hashing over the live members
//!   picks ([`crate::cluster::owner`]); the owner's directory holds which connections of which node are members,
//!   and the group's actor there sequences the group's sends.
//! * The node-to-node messages (rmp-serde) over the cluster's links, with request/reply correlation for group
//!   membership, counts and client results.
//! * What happens when membership changes: groups owned by a node that left move to their new owner, which
//!   rebuilds their membership from snapshots that every node sends of its own members; group sends whose owner
//!   is unreachable are held (at most `HELD_SENDS_CAP`, sized for `MAX_GROUP_SEND_RATE`) and delivered in order
//!   once an owner is reachable, and sends handed to an owner that died go again, delivered once; requests
//!   waiting on a node that left fail at once.
//!
//! * Who the peers are: incarnations ([`crate::cluster::NodeId`], name and generation), not names. Group
//!   members, pending requests, retained sends, awaited snapshots and the stamps of group sends are keyed by
//!   incarnation, so a restarted node is a new member at once and nothing of its earlier life is taken for it.
//!
//! A node that is not part of a cluster is a cluster of one: the same code paths run, without links.
//!
//! # Files
//!
//! * `mesh/router.rs`: the `Router`, its view of the cluster, and the sends to all and to chosen connections.
//! * `mesh/group.rs`: group keys, send stamps, group errors.
//! * `mesh/group_actor.rs`: the group and user actors (ractor), which sequence sends. `mesh/directory.rs`: the
//!   groups this node owns, their members and their actors.
//! * `mesh/envelope.rs`: the wire types. `mesh/inbound.rs`: what the router does with each message from a peer.
//! * `mesh/group_send.rs`: a group send from its sender to the group's owner (held, retained, re-sent).
//! * `mesh/owner.rs`: the owner's side, one membership change or send at a time, in arrival order.
//!   `mesh/ops_queue.rs`: how a change or send gets in (bounded; a join or leave with nothing ahead of it is
//!   applied at once).
//! * `mesh/delivery.rs`: a group actor's fan-out to member nodes, and delivery to this node's members, once.
//! * `mesh/arrivals.rs`: a member node's record of each group's sends per origin: repeats dropped, overtaken sends
//!   waited for.
//! * `mesh/missed.rs`: the sends an owner accepted while it had declared a node dead, for that node's return.
//! * `mesh/members.rs`: joining, leaving, counting and listing a group, from any node.
//! * `mesh/requests.rs`: request/reply between nodes, and serving a peer's requests (client results included).
//! * `mesh/rehome.rs`: the cluster's membership changes: snapshots and re-homing.
//! * `mesh/hints.rs`: location hints, so that direct sends to an adopted connection go straight to its server.
//! * `mesh/relay.rs`: connections served by a node other than their home (adopted), and the requests the node
//!   layer relays between nodes for them.
//! * `mesh/bounds.rs`: how often the mesh's bounds were hit.
//!
//! # What it may call
//!
//! Dependencies point one way: protocol → transport → connection → mesh → hub → node. The mesh uses the
//! connection layer (ids, handles, shared frames, client-result errors), the protocol layer (payloads) and the
//! cluster layer (membership view, placement, links). It never names a hub type: it reaches the hubs running on
//! this node through the `LocalHub` trait, which the hub layer implements for its runtime and registers by name
//! (`Router::register_hub`), and its operations fail with a [`MeshError`], which the hub layer converts into
//! its own error. It knows nothing of HTTP.
//!
//! Checked by reading the `use crate::` lines of `src/mesh.rs` and `src/mesh/`: they name only
//! `crate::connection`, `crate::protocol` and `crate::cluster` (`grep -rn "crate::" src/mesh.rs src/mesh/`
//! finds no `crate::hub` or `crate::node`), and neither of those layers names `crate::mesh`.

mod arrivals;
mod bounds;
mod delivery;
mod directory;
mod envelope;
mod group;
mod group_actor;
mod group_send;
mod hints;
mod inbound;
mod kept;
mod kept_broadcasts;
mod kept_direct;
mod members;
mod missed;
mod moves;
mod offers;
mod ops_queue;
mod owner;
mod rehome;
mod sends_got;
#[cfg(test)]
mod handover_tests;
#[cfg(test)]
mod missed_tests;
#[cfg(test)]
mod move_order_tests;
#[cfg(test)]
mod settling_tests;
#[cfg(test)]
mod test_router;
#[cfg(test)]
mod offers_tests;
#[cfg(test)]
mod snapshot_order_tests;
mod relay;
mod requests;
mod router;

use std::sync::Arc;

use crate::connection::{ClientResultError, ConnectionHandle, ConnectionId, SharedFrame};

pub use group::{GroupError, GroupKey};
#[cfg(not(feature = "internals"))]
pub(crate) use group::GroupKind;
#[cfg(feature = "internals")]
pub use group::{GroupKind, Stamp};
#[cfg(feature = "internals")]
pub use bounds::{MeshBoundsHit, MeshCounters};
#[cfg(feature = "internals")]
pub use envelope::decode_frame;
#[cfg(not(feature = "internals"))]
pub(crate) use bounds::{MeshBoundsHit, MeshCounters};
#[cfg(feature = "internals")]
pub use group_send::{HELD_SENDS_CAP, MAX_GROUP_SEND_RATE, RETAINED_BYTES_CAP};
#[cfg(feature = "internals")]
pub use hints::RelayCounts;
pub(crate) use hints::RelayFigures;
pub(crate) use relay::RelayHost;
#[cfg(feature = "internals")]
pub use relay::MAX_ADOPTED_OUT;
pub(crate) use router::{node_of, Router};
pub(crate) use sends_got::{OriginLast, SendsGot};
// The incarnations peers are named by, for the layers above that move connections between them.
pub(crate) use crate::cluster::NodeId;

/// Why a mesh operation failed. The hub layer turns it into a `HubError` with the same text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// No connection with this id exists.
    #[error("Connection '{0}' does not exist.")]
    UnknownConnection(String),
    /// A group could not be reached.
    #[error("{0}")]
    Group(#[from] GroupError),
    /// A client result failed.
    #[error(transparent)]
    ClientResult(#[from] ClientResultError),
    /// The link to a node is full (it is slow or stalled): try again later.
    #[error("the link to node '{0}' is full")]
    Busy(String),
    /// The node that holds what was asked for is not (or no longer) in the cluster.
    #[error("node '{0}' is not in the cluster")]
    NodeGone(String),
    /// A request larger than the link frame cap.
    #[error("a request of {size} bytes exceeds the link frame cap of {max} bytes")]
    TooLarge {
        /// Its size, encoded.
        size: usize,
        /// The cap.
        max: usize,
    },
}

/// A hub running on this node, as the mesh sees it: its local connections and its table of local group
/// members. The hub layer implements it for its runtime; the router holds one per hub name.
pub(crate) trait LocalHub: Send + Sync + 'static {
    /// Delivers to every connection here but `except`. A full mailbox closes that connection (slow consumer).
    fn deliver_all(&self, frame: &Arc<SharedFrame>, except: &[ConnectionId]);

    /// Delivers to these connections, those that are here.
    fn deliver_to(&self, ids: &[ConnectionId], frame: &Arc<SharedFrame>);

    /// Delivers to this node's members of a group but `except`. Returns false when this node holds no member of
    /// the group.
    fn deliver_group(&self, key: &GroupKey, frame: &Arc<SharedFrame>, except: &[ConnectionId]) -> bool;

    /// Whether a connection of this node is in group `key`.
    fn has_local_members(&self, key: &GroupKey) -> bool;

    /// Records that connection `id` (of this node) is in group `key`; fails at once for an unknown connection.
    fn local_join(&self, key: &GroupKey, id: &ConnectionId) -> Result<(), MeshError>;

    /// Records that connection `id` left group `key`; false if the connection is not here.
    fn local_leave(&self, key: &GroupKey, id: &ConnectionId) -> bool;

    /// Every group membership this node holds, by group.
    fn local_memberships(&self) -> Vec<(GroupKey, Vec<ConnectionId>)>;

    /// The handle of connection `id`, if it is here (to run a client result on it).
    fn handle_of(&self, id: &ConnectionId) -> Option<ConnectionHandle>;

    /// Closes every connection here with a Close message carrying `error` that allows reconnecting.
    fn close_all_with(&self, error: &str);
}
