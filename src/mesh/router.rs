//! The router: the mesh's one object per node, shared by the node's hubs. It holds the node's view of the
//! cluster (who is live, who owns a group, where a connection lives), the hubs running here (by name, as
//! [`LocalHub`]s), the links, and the state of the other files of the mesh; and it sends to all connections of a
//! hub and to chosen connections, wherever they live.
//!
//! The router is not a ractor actor: its state is a few maps read by many tasks at once, and a mailbox in front
//! of it would add a hop to every send. The per-node actor that ractor_cluster needs lives in the link layer
//! ([`crate::cluster::link`]), which hands frames to the router in order.
//!
//! It is generic over the hub type ([`LocalHub`]) rather than holding trait objects, so that local delivery stays
//! a direct call on every send.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::delivery::RouterFanout;
use super::directory::GroupDirectory;
use super::envelope::{Envelope, WireFrame};
use super::group::GroupKey;
use super::bounds::MeshBoundsHit;
use super::group_send::{HeldSend, RetainedSends};
use super::owner::OpsQueue;
use super::requests::Pending;
use super::LocalHub;
use crate::cluster::{LinkError, Links, NodeId};
use crate::connection::{ConnectionId, SharedFrame};

/// The node's router; see the module doc.
pub(crate) struct Router<H> {
    pub(super) node: Arc<str>,
    /// This node's generation (0 until it joins a cluster): with `node`, the incarnation its sends are stamped with
    /// and its members are registered under.
    generation: AtomicU64,
    hubs: RwLock<HashMap<Arc<str>, Weak<H>>>,
    pub(super) groups: GroupDirectory,
    links: RwLock<Option<Arc<dyn Links>>>,
    /// Live nodes, this one included, sorted.
    pub(super) live: RwLock<Vec<NodeId>>,
    pub(super) pending: Mutex<HashMap<u64, Pending>>,
    pub(super) next_request: AtomicU64,
    pub(super) held: Mutex<VecDeque<HeldSend>>,
    /// Sends handed to remote owners in the last [`super::group_send::RETAIN`], oldest first.
    pub(super) retained: Mutex<RetainedSends>,
    /// This node's sequence number for group sends.
    pub(super) next_seq: AtomicU64,
    /// Per group and origin node name, the origin's generation and the last sequence number of it delivered here
    /// (re-sent sends are dropped). Keyed by name so that a restart replaces the entry rather than adding one.
    pub(super) delivered: Mutex<HashMap<(GroupKey, Arc<str>), Delivered>>,
    /// Per node name that left the view and has not come back, the newest generation of it that left: what that
    /// incarnation still had in flight is ignored. At most `DEPARTED_CAP` (`mesh/rehome.rs`).
    pub(super) departed: Mutex<HashMap<Arc<str>, u64>>,
    pub(super) ops: OpsQueue,
    /// How often the mesh's bounds were hit.
    pub(super) bounds_hit: Arc<MeshBoundsHit>,
    /// Held while a snapshot's parts are sent, so two snapshots to one peer never interleave.
    pub(super) snapshot_sends: Mutex<()>,
    pub(super) span: tracing::Span,
}

/// Of one origin's sends to one group: the origin's generation, and the last sequence number of it delivered here.
pub(super) type Delivered = (u64, u64);

/// The node part of a connection id (`<random>.<node>`), if any.
pub(crate) fn node_of(id: &ConnectionId) -> Option<&str> {
    id.as_str().split_once('.').map(|(_, node)| node)
}

impl<H: LocalHub> Router<H> {
    /// A router for node `node`; group actors run on `runtime`.
    pub(crate) fn new(node: &str, runtime: tokio::runtime::Handle, span: tracing::Span) -> Arc<Router<H>> {
        let (ops, queue) = super::owner::ops_queue();
        let router = Arc::new_cyclic(|weak: &Weak<Router<H>>| Router {
            node: node.into(),
            generation: AtomicU64::new(0),
            hubs: RwLock::new(HashMap::new()),
            groups: GroupDirectory::new(runtime.clone(), Arc::new(RouterFanout(weak.clone()))),
            links: RwLock::new(None),
            live: RwLock::new(vec![NodeId::new(node, 0)]),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            held: Mutex::new(VecDeque::new()),
            retained: Mutex::default(),
            next_seq: AtomicU64::new(1),
            delivered: Mutex::new(HashMap::new()),
            departed: Mutex::new(HashMap::new()),
            ops,
            bounds_hit: Arc::default(),
            snapshot_sends: Mutex::new(()),
            span,
        });
        runtime.spawn(super::owner::run_membership_queue(Arc::downgrade(&router), queue));
        router
    }

    /// A new connection id that names this node.
    pub(crate) fn new_connection_id(&self, random: &str) -> ConnectionId {
        ConnectionId::new(format!("{random}.{}", self.node))
    }

    /// Makes hub `name` of this node reachable: sends to it from any node are delivered through `runtime`.
    pub(crate) fn register_hub(&self, name: &str, runtime: &Arc<H>) {
        self.hubs.write().insert(name.into(), Arc::downgrade(runtime));
    }

    pub(super) fn hub(&self, name: &str) -> Option<Arc<H>> {
        self.hubs.read().get(name).and_then(Weak::upgrade)
    }

    /// The hubs running here.
    pub(super) fn runtimes(&self) -> Vec<Arc<H>> {
        self.hubs.read().values().filter_map(Weak::upgrade).collect()
    }

    /// Connects the router to the cluster's links, as incarnation `id` of this node.
    pub(crate) fn attach_links(&self, links: Arc<dyn Links>, id: &NodeId) {
        self.generation.store(id.generation, Ordering::Relaxed);
        {
            let mut live = self.live.write();
            for entry in live.iter_mut().filter(|entry| entry.name == self.node) {
                entry.generation = id.generation;
            }
        }
        *self.links.write() = Some(links);
    }

    /// The keys of the groups (named and user) this node owns now, for the node's status report.
    pub(crate) fn owned_groups(&self) -> Vec<GroupKey> {
        self.groups.keys()
    }

    /// This node's incarnation.
    pub(super) fn id(&self) -> NodeId {
        NodeId {
            name: self.node.clone(),
            generation: self.generation.load(Ordering::Relaxed),
        }
    }

    /// Whether what `from` sent is from an earlier life: a newer generation of its name is live, or it left the
    /// view (and is not back). A peer not yet in this node's view (just started) is not stale.
    pub(super) fn is_stale(&self, from: &NodeId) -> bool {
        {
            let live = self.live.read();
            if let Some(current) = live.iter().find(|id| id.name == from.name) {
                return current.generation > from.generation;
            }
        }
        self.departed
            .lock()
            .get(&from.name)
            .is_some_and(|&left| left >= from.generation)
    }

    pub(super) fn is_local(&self, node: &str) -> bool {
        node == &*self.node
    }

    /// The node a connection lives on (ids without a node part are taken as local).
    pub(super) fn home_of<'a>(&'a self, id: &'a ConnectionId) -> &'a str {
        node_of(id).unwrap_or(&self.node)
    }

    /// The node (incarnation) that owns `key` under the current view.
    pub(super) fn owner_of(&self, key: &GroupKey) -> NodeId {
        let live = self.live.read();
        crate::cluster::owner(&key.placement_bytes(), &live)
            .cloned()
            .unwrap_or_else(|| self.id())
    }

    pub(super) fn live_peer(&self, node: &str) -> Option<NodeId> {
        self.live
            .read()
            .iter()
            .find(|id| &*id.name == node && !self.is_local(node))
            .cloned()
    }

    pub(super) fn peers(&self) -> Vec<NodeId> {
        self.live
            .read()
            .iter()
            .filter(|id| !self.is_local(&id.name))
            .cloned()
            .collect()
    }

    /// Sends to the live incarnation of node `node` (by name: a connection's home, a request's target).
    pub(super) fn send_to(&self, node: &str, envelope: &Envelope) -> Result<(), LinkError> {
        let peer = self
            .live_peer(node)
            .ok_or_else(|| LinkError::NoLink(NodeId::new(node, 0)))?;
        self.send_to_peer(&peer, envelope)
    }

    /// Sends to this incarnation of a node only (a reply, a snapshot, a group's owner or member node): never to a
    /// later generation of the same name, which did not ask and holds none of what the earlier one held.
    pub(super) fn send_to_peer(&self, peer: &NodeId, envelope: &Envelope) -> Result<(), LinkError> {
        let links = self
            .links
            .read()
            .clone()
            .ok_or_else(|| LinkError::NoLink(peer.clone()))?;
        let frame = rmp_serde::to_vec(envelope).map_err(|error| LinkError::Start(error.to_string()))?;
        links.send(peer, Bytes::from(frame))
    }

    /// Delivers `frame` to every connection of `hub` on every node, except `except`.
    pub(crate) fn broadcast(&self, hub: &Arc<str>, frame: Arc<SharedFrame>, except: Arc<[ConnectionId]>) {
        if let Some(runtime) = self.hub(hub) {
            runtime.deliver_all(&frame, &except);
        }
        let peers = self.peers();
        if peers.is_empty() {
            return;
        }
        let wire = WireFrame::of(&frame);
        for peer in peers {
            let envelope = Envelope::Broadcast {
                hub: hub.clone(),
                except: except.to_vec(),
                frame: wire.clone(),
            };
            if let Err(error) = self.send_to_peer(&peer, &envelope) {
                tracing::warn!(parent: &self.span, %error, "a broadcast could not reach a node");
            }
        }
    }

    /// Delivers `frame` to these connections, wherever they live.
    pub(crate) fn to_connections(&self, hub: &Arc<str>, ids: &[ConnectionId], frame: Arc<SharedFrame>) {
        let mut by_node: HashMap<&str, Vec<ConnectionId>> = HashMap::new();
        for id in ids {
            by_node.entry(self.home_of(id)).or_default().push(id.clone());
        }
        let mut wire = None;
        for (node, ids) in by_node {
            if self.is_local(node) {
                if let Some(runtime) = self.hub(hub) {
                    runtime.deliver_to(&ids, &frame);
                }
                continue;
            }
            let envelope = Envelope::ToConnections {
                hub: hub.clone(),
                ids,
                frame: wire.get_or_insert_with(|| WireFrame::of(&frame)).clone(),
            };
            if let Err(error) = self.send_to(node, &envelope) {
                tracing::debug!(parent: &self.span, %error, node, "a send to connections of a node failed");
            }
        }
    }

    /// Stops the group actors (node shutdown).
    pub(crate) fn shutdown(&self) {
        self.groups.stop_all();
    }
}
