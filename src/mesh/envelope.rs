//! The node-to-node messages of the mesh ([`Envelope`], rmp-serde over the cluster's links) and how their
//! errors map to and from [`MeshError`].
//!
//! Wire types only: what a message means is decided by the router's inbound side ([`super::inbound`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::group::{GroupError, GroupKey, Stamp};
use super::MeshError;
use crate::cluster::NodeId;
use crate::connection::{ClientResultError, ConnectionId, SendMark, SharedFrame};
use crate::protocol::Protocol;

/// A frame encoded once per protocol at the sender, so receiving nodes encode nothing; with its mark, if it has
/// one (a send to connections by id: `super::kept_direct`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WireFrame {
    json: Option<Bytes>,
    msgpack: Option<Bytes>,
    #[serde(default)]
    mark: Option<Box<SendMark>>,
}

impl WireFrame {
    pub(super) fn of(frame: &SharedFrame) -> WireFrame {
        WireFrame {
            json: frame.bytes(Protocol::Json).cloned(),
            msgpack: frame.bytes(Protocol::MessagePack).cloned(),
            mark: frame.mark().filter(|mark| mark.direct).cloned().map(Box::new),
        }
    }

    /// The mark it carries.
    pub(super) fn mark(&self) -> Option<&SendMark> {
        self.mark.as_deref()
    }

    pub(super) fn into_frame(self) -> Arc<SharedFrame> {
        let frame = SharedFrame::pre_encoded(self.json, self.msgpack);
        match self.mark {
            Some(mark) => SharedFrame::with_mark(&frame, *mark),
            None => frame,
        }
    }
}

/// A node-to-node message.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Envelope {
    /// To every connection of a hub on the receiving node.
    Broadcast {
        hub: Arc<str>,
        except: Vec<ConnectionId>,
        frame: WireFrame,
        /// The sender's number for it (`super::kept_broadcasts`).
        seq: u64,
    },
    /// To these connections, which live on the receiving node.
    ToConnections {
        hub: Arc<str>,
        ids: Vec<ConnectionId>,
        frame: WireFrame,
        /// Sent here by the sender's location hint (`super::hints`) rather than by the home or to every peer: one
        /// the receiver no longer serves goes on through its home (`Router::deliver_to_connections`).
        #[serde(default)]
        hinted: bool,
    },
    /// A send to connections by id sent again because the node it went to left (`super::kept_direct`): for the
    /// node that keeps or took over any of them.
    Resent {
        hub: Arc<str>,
        ids: Vec<ConnectionId>,
        frame: WireFrame,
    },
    /// A send to a group, to its owner.
    GroupSend {
        key: GroupKey,
        except: Vec<ConnectionId>,
        frame: WireFrame,
        stamp: Stamp,
    },
    /// From a group's owner to a node that holds members: deliver to them.
    GroupDeliver {
        key: GroupKey,
        except: Vec<ConnectionId>,
        frame: WireFrame,
        stamp: Stamp,
        /// The live owner the sender took the group over from lately, whose last fan-outs come first
        /// (`mesh/arrivals.rs`).
        #[serde(default)]
        handed_from: Option<NodeId>,
    },
    /// From a group's former owner, after its last fan-out of the group to this node: it released the group (its
    /// ownership moved while it was live).
    GroupReleased { key: GroupKey },
    /// Every membership the sender holds in groups the receiver owns (after ownership may have moved), in parts
    /// under the link frame cap: `part` counts from 0, `last` ends the snapshot (see `mesh/rehome.rs`).
    Snapshot {
        part: u32,
        last: bool,
        groups: Vec<(GroupKey, Vec<ConnectionId>)>,
    },
    /// Please send your snapshots (you were away, or are new).
    SnapshotRequest,
    /// A request that expects a [`Envelope::Reply`] with the same id.
    Request { id: u64, request: Request },
    /// The answer to a request.
    Reply { id: u64, answer: Answer },
    /// From a connection's home that does not know where it runs (an earlier incarnation of the home negotiated
    /// it, and it moved away in that one's drain): deliver to those of `ids` served here, and answer
    /// [`Envelope::Serving`] with them.
    Offered {
        hub: Arc<str>,
        ids: Vec<ConnectionId>,
        frame: WireFrame,
    },
    /// The answer to [`Envelope::Offered`]: these connections of the receiver's name run on the sender.
    Serving { hub: Arc<str>, ids: Vec<ConnectionId> },
    /// From a connection's home to a node whose send it passed on: these connections run on `server`.
    Hint {
        hub: Arc<str>,
        ids: Vec<ConnectionId>,
        server: NodeId,
    },
    /// Sent by `origin` through a connection's home to its server, after `origin`'s earlier sends to it.
    Fence {
        hub: Arc<str>,
        id: ConnectionId,
        nonce: u64,
        origin: NodeId,
    },
    /// The server's answer to a fence (`None`: the home no longer passes sends on for it).
    FenceAck {
        id: ConnectionId,
        nonce: u64,
        server: Option<NodeId>,
    },
    /// To an incarnation that this node had declared dead and now sees live again: what was sent to its
    /// connections meanwhile did not reach them. `stalled`: this node itself was stalled (stopped) lately, so
    /// the verdict says more about it than about the receiver.
    DeclaredDead { stalled: bool },
    /// A frame of a connection's transport tunneled between nodes (see `super::relay`), in link order.
    Tunnel { payload: Bytes },
    /// From a group's owner, in order with its deliveries: a moving connection is in this node's copy of the
    /// group's sends from now on (`arriving`), or no longer (`super::moves`).
    MemberMoved { key: GroupKey, connection: ConnectionId, arriving: bool },
    /// From a group's owner to a node it had declared dead and sees again: a send to the group it accepted
    /// meanwhile, which went without that node (`super::missed`). Delivered only where the receiver still follows
    /// the origin's sends to the group.
    GroupMissed {
        key: GroupKey,
        except: Vec<ConnectionId>,
        frame: WireFrame,
        stamp: Stamp,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    /// Add a connection of the receiving node to a group (sent by the node where `Groups::add` was called).
    Join { key: GroupKey, connection: ConnectionId },
    /// Remove a connection of the receiving node from a group.
    Leave { key: GroupKey, connection: ConnectionId },
    /// Remove a connection of the receiving node from every named group of its hub.
    LeaveAll { hub: Arc<str>, connection: ConnectionId },
    /// To a group's owner: a connection of the sender joined.
    Register { key: GroupKey, connection: ConnectionId },
    /// To a group's owner: a connection of the sender left.
    Unregister { key: GroupKey, connection: ConnectionId },
    /// To a group's owner: a connection of the sender moves to node `to` (`super::moves`).
    Move { key: GroupKey, connection: ConnectionId, to: NodeId },
    /// To a group's owner.
    Count { key: GroupKey },
    /// To a group's owner.
    Members { key: GroupKey },
    /// A client result from a connection of the receiving node: arguments are a MessagePack array.
    Invoke {
        hub: Arc<str>,
        connection: ConnectionId,
        target: String,
        arguments: Bytes,
        timeout_ms: u64,
    },
    /// A request of the node layer's, relayed to the node that can serve it (see `super::relay`).
    Relay { payload: Bytes },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Answer {
    Done,
    Count(usize),
    Members(Vec<ConnectionId>),
    /// A client's result as MessagePack, or none (void).
    Value(Option<Bytes>),
    Failed(WireError),
    /// The node layer's answer to a [`Request::Relay`].
    Relayed(Bytes),
    /// The peer left before it answered (made locally, never sent).
    PeerLeft,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum WireError {
    UnknownConnection(String),
    UnknownHub(String),
    Group(String),
    Disconnected(String),
    Client(String),
    Timeout(u64),
    BadResult(String),
    /// The link to a node was full.
    Busy(String),
    /// A node left.
    NodeGone(String),
    /// A request larger than the link frame cap.
    TooLarge { size: usize, max: usize },
}

impl From<MeshError> for WireError {
    fn from(error: MeshError) -> Self {
        match error {
            MeshError::UnknownConnection(id) => WireError::UnknownConnection(id),
            MeshError::ClientResult(ClientResultError::Disconnected(id)) => WireError::Disconnected(id),
            MeshError::ClientResult(ClientResultError::Client(message)) => WireError::Client(message),
            MeshError::ClientResult(ClientResultError::Timeout(limit)) => {
                WireError::Timeout(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX))
            }
            MeshError::ClientResult(ClientResultError::BadResult(message)) => WireError::BadResult(message),
            MeshError::Group(error) => WireError::Group(error.to_string()),
            MeshError::Busy(node) => WireError::Busy(node),
            MeshError::NodeGone(node) => WireError::NodeGone(node),
            MeshError::TooLarge { size, max } => WireError::TooLarge { size, max },
        }
    }
}

impl From<WireError> for MeshError {
    fn from(error: WireError) -> Self {
        match error {
            WireError::UnknownConnection(id) => MeshError::UnknownConnection(id),
            WireError::UnknownHub(hub) => {
                MeshError::Group(GroupError::Unavailable(format!("the peer does not serve hub '{hub}'")))
            }
            WireError::Group(message) => MeshError::Group(GroupError::Unavailable(message)),
            WireError::Disconnected(id) => MeshError::ClientResult(ClientResultError::Disconnected(id)),
            WireError::Client(message) => MeshError::ClientResult(ClientResultError::Client(message)),
            WireError::Timeout(ms) => MeshError::ClientResult(ClientResultError::Timeout(Duration::from_millis(ms))),
            WireError::BadResult(message) => MeshError::ClientResult(ClientResultError::BadResult(message)),
            WireError::Busy(node) => MeshError::Busy(node),
            WireError::NodeGone(node) => MeshError::NodeGone(node),
            WireError::TooLarge { size, max } => MeshError::TooLarge { size, max },
        }
    }
}

pub(super) fn unexpected(answer: Answer) -> MeshError {
    match answer {
        Answer::Failed(error) => error.into(),
        Answer::PeerLeft => MeshError::Group(GroupError::Unavailable("the node left the cluster".into())),
        other => MeshError::Group(GroupError::Unavailable(format!(
            "unexpected answer from a node: {other:?}"
        ))),
    }
}

/// Decodes a link frame as the router does (`mesh/inbound.rs`), for the fuzz targets (`tests/fuzz`): whether it is
/// an envelope, and, if it is, whether it encodes again.
#[cfg(feature = "internals")]
pub fn decode_frame(frame: &[u8]) -> (bool, bool) {
    match rmp_serde::from_slice::<Envelope>(frame) {
        Ok(envelope) => (true, rmp_serde::to_vec(&envelope).is_ok()),
        Err(_) => (false, false),
    }
}
