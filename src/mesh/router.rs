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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::arrivals::{Arrivals, HANDED_FROM_WINDOW};
use super::owner::YOUNG;
use super::delivery::RouterFanout;
use super::directory::GroupDirectory;
use super::envelope::{Envelope, WireFrame};
use super::group::{GroupKey, Stamp};
use super::bounds::{MeshBoundsHit, MeshCounters};
use super::group_send::{HeldSend, RetainedSends};
use super::hints::{Hints, Route};
use super::kept::KeptGroups;
use super::kept_broadcasts::KeptBroadcasts;
use super::kept_direct::{Held, KeptDirects, Orphans, RetainedDirects};
use super::offers::Offers;
use super::ops_queue::OpsQueue;
use super::rehome::CutOff;
use super::relay::{AdoptedOut, RelayHost};
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
    /// The live nodes that own groups and users, sorted: those not handing over (a draining node hands its groups
    /// over before it leaves, `mesh/rehome.rs`), or all of them when every one hands over.
    pub(super) placed: RwLock<Vec<NodeId>>,
    /// When `placed` last changed, and what it was before: for a while after, this node's fan-outs of a group it
    /// took over from a live owner say so ([`Router::handed_from`]).
    pub(super) placed_before: RwLock<Option<(tokio::time::Instant, Vec<NodeId>)>>,
    /// When `live` last changed (a re-home started).
    pub(super) live_changed: Mutex<tokio::time::Instant>,
    /// When a link to a peer last opened or dropped (a peer may declare this node dead and back while this
    /// node's own view stays the same).
    pub(super) links_changed: Mutex<tokio::time::Instant>,
    pub(super) pending: Mutex<HashMap<u64, Pending>>,
    pub(super) next_request: AtomicU64,
    pub(super) held: Mutex<VecDeque<HeldSend>>,
    /// Sends handed to remote owners in the last [`super::group_send::RETAIN`], oldest first.
    pub(super) retained: Mutex<RetainedSends>,
    /// This node's sequence number for group sends.
    pub(super) next_seq: AtomicU64,
    /// Whether this node's membership queue is holding group sends after a membership change (settling).
    pub(super) settling: std::sync::atomic::AtomicBool,
    /// When this node started: a young node's view of the cluster is still growing.
    pub(super) born: tokio::time::Instant,
    /// Per group and origin node name, what of the origin's sends arrived here (`mesh/arrivals.rs`). Keyed by
    /// name so that a restart replaces the entry rather than adding one.
    pub(super) delivered: Mutex<Arrivals<InOrder>>,
    /// The groups followed for connections this node keeps for others, with their histories (`super::kept`).
    /// Locked under `delivered`, never the other way.
    pub(super) kept: Mutex<KeptGroups>,
    /// Per group, the sequence number of this node's last send to it (a send's [`Stamp::prev`]), at most
    /// [`super::group_send::LAST_SENT_CAP`] groups. Locked under `held`.
    pub(super) last_sent: Mutex<HashMap<GroupKey, u64>>,
    /// Per node name that left the view and has not come back, the newest generation of it that left: what that
    /// incarnation still had in flight is ignored. At most `DEPARTED_CAP` (`mesh/rehome.rs`).
    pub(super) departed: Mutex<HashMap<Arc<str>, u64>>,
    pub(super) ops: OpsQueue,
    /// How often the mesh's bounds were hit.
    pub(super) bounds_hit: Arc<MeshBoundsHit>,
    pub(super) counters: Arc<MeshCounters>,
    /// Held while a snapshot is read and its parts sent, and while a membership change goes to a peer owner: two
    /// snapshots to one peer never interleave, and a change made after a snapshot was read goes out after it.
    pub(super) membership_sends: Mutex<()>,
    /// The node layer's side of relays (see `super::relay`).
    pub(super) relay_host: RwLock<Option<Weak<dyn RelayHost>>>,
    /// Connections negotiated here that run on other nodes, with their server (bounded by
    /// [`super::relay::MAX_ADOPTED_OUT`]).
    pub(super) adopted_out: Mutex<AdoptedOut>,
    /// Adoptions refused at that bound.
    pub(super) adoptions_refused: AtomicU64,
    /// Where connections adopted by other nodes run, as this node learned (bounded by
    /// [`super::hints::MAX_HINTS`]).
    pub(super) hints: Mutex<Hints>,
    /// Switches to a hinted server given up (fence unanswered in time, or too many sends held).
    pub(super) fence_gave_up: AtomicU64,
    /// Sends to connections this node negotiated that it passed on to the node running them.
    pub(super) passed_on: AtomicU64,
    /// Sends by a stale location hint passed on to their connection's home (`super::hints`).
    pub(super) passed_home: AtomicU64,
    /// Sends a young node offered to every peer, for connections of its name it did not know (`super::relay`).
    pub(super) offered: AtomicU64,
    /// What this node offered while young, and to which peers (`super::offers`).
    pub(super) offers: Mutex<Offers>,
    /// Broadcasts recorded for the connections this node keeps (`super::kept_broadcasts`).
    pub(super) kept_broadcasts: Mutex<KeptBroadcasts>,
    /// This node's sequence number for broadcasts, locked while one is numbered and sent.
    pub(super) next_broadcast: Mutex<u64>,
    /// This node's sequence number for sends by id, locked while one is numbered and sent (`super::kept_direct`).
    pub(super) next_direct: Mutex<u64>,
    /// Sends by id passed to other nodes lately, to send again if they leave.
    pub(super) retained_direct: Mutex<RetainedDirects>,
    /// Connections kept here, or taken over lately, for their sends by id.
    pub(super) kept_direct: Mutex<KeptDirects>,
    /// How many entries `kept_direct` has (read without its lock on every send).
    pub(super) kept_direct_count: AtomicUsize,
    /// Connections of this node whose server left lately.
    pub(super) orphans: Mutex<Orphans>,
    /// What connections that left groups here for another node had got of them (`super::sends_got`).
    pub(super) left_notes: Mutex<super::sends_got::LeftNotes>,
    /// Incarnations this node had declared dead that are live again, to be told so once a link to them is up
    /// (`super::rehome`); at most one per name of the cluster.
    pub(super) rejoined: Mutex<HashSet<NodeId>>,
    /// Notices that peers had declared this node dead, and when this node itself last stalled
    /// (`super::rehome`).
    pub(super) cut_off: Mutex<CutOff>,
    pub(super) span: tracing::Span,
}

/// A group send waiting at a member node for an earlier one (`mesh/arrivals.rs`): its frame and who not to
/// deliver it to.
pub(super) type Delivered = (Arc<SharedFrame>, Arc<[ConnectionId]>, Stamp);

/// What a member node's records keep in a group's order (`mesh/arrivals.rs`): a send, or an owner's marker moving
/// a member of this node in or out of the group (`mesh/moves.rs`).
pub(super) enum InOrder {
    Send(Delivered),
    Moved { connection: ConnectionId, arriving: bool },
}

/// The node part of a connection id (`<random>.<node>`), if any.
pub(crate) fn node_of(id: &ConnectionId) -> Option<&str> {
    id.as_str().split_once('.').map(|(_, node)| node)
}

impl<H: LocalHub> Router<H> {
    /// A router for node `node`; group actors run on `runtime`.
    pub(crate) fn new(node: &str, runtime: tokio::runtime::Handle, span: tracing::Span) -> Arc<Router<H>> {
        let (ops, queue) = super::ops_queue::ops_queue();
        let router = Arc::new_cyclic(|weak: &Weak<Router<H>>| Router {
            node: node.into(),
            generation: AtomicU64::new(0),
            hubs: RwLock::new(HashMap::new()),
            groups: GroupDirectory::new(runtime.clone(), Arc::new(RouterFanout(weak.clone()))),
            links: RwLock::new(None),
            live: RwLock::new(vec![NodeId::new(node, 0)]),
            placed: RwLock::new(vec![NodeId::new(node, 0)]),
            placed_before: RwLock::new(None),
            live_changed: Mutex::new(tokio::time::Instant::now()),
            links_changed: Mutex::new(tokio::time::Instant::now()),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            held: Mutex::new(VecDeque::new()),
            retained: Mutex::default(),
            next_seq: AtomicU64::new(1),
            settling: std::sync::atomic::AtomicBool::new(false),
            born: tokio::time::Instant::now(),
            delivered: Mutex::new(Arrivals::default()),
            kept: Mutex::new(KeptGroups::default()),
            last_sent: Mutex::new(HashMap::new()),
            departed: Mutex::new(HashMap::new()),
            ops,
            relay_host: RwLock::new(None),
            adopted_out: Mutex::new(AdoptedOut::new()),
            adoptions_refused: AtomicU64::new(0),
            hints: Mutex::new(Hints::new()),
            fence_gave_up: AtomicU64::new(0),
            passed_on: AtomicU64::new(0),
            passed_home: AtomicU64::new(0),
            offered: AtomicU64::new(0),
            offers: Mutex::default(),
            kept_broadcasts: Mutex::default(),
            next_broadcast: Mutex::new(1),
            next_direct: Mutex::new(1),
            retained_direct: Mutex::default(),
            kept_direct: Mutex::default(),
            kept_direct_count: AtomicUsize::new(0),
            orphans: Mutex::default(),
            left_notes: Mutex::default(),
            rejoined: Mutex::new(HashSet::new()),
            cut_off: Mutex::new(CutOff::default()),
            bounds_hit: Arc::default(),
            counters: Arc::default(),
            membership_sends: Mutex::new(()),
            span,
        });
        runtime.spawn(super::owner::run_membership_queue(Arc::downgrade(&router), queue));
        runtime.spawn(super::rehome::watch_for_stalls(Arc::downgrade(&router)));
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
        for list in [&self.live, &self.placed] {
            let mut list = list.write();
            for entry in list.iter_mut().filter(|entry| entry.name == self.node) {
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

    /// Whether a newer generation of `from`'s name is live or departed: that incarnation's life is over for good
    /// (unlike one that only left the view, which may be back: frozen, or cut off).
    pub(super) fn is_superseded(&self, from: &NodeId) -> bool {
        self.life_over(from, false)
    }

    /// Whether what `from` sent is from an earlier life: a newer generation of its name is live, or it left the
    /// view (and is not back). A peer not yet in this node's view (just started) is not stale.
    pub(super) fn is_stale(&self, from: &NodeId) -> bool {
        self.life_over(from, true)
    }

    /// A newer generation of `from`'s name is live, or departed (`from`'s own departure counts with `own`).
    fn life_over(&self, from: &NodeId, own: bool) -> bool {
        {
            let live = self.live.read();
            if let Some(current) = live.iter().find(|id| id.name == from.name) {
                return current.generation > from.generation;
            }
        }
        self.departed
            .lock()
            .get(&from.name)
            .is_some_and(|&left| left > from.generation || (own && left == from.generation))
    }

    pub(super) fn is_local(&self, node: &str) -> bool {
        node == &*self.node
    }

    /// The node a connection lives on (ids without a node part are taken as local).
    pub(super) fn home_of<'a>(&'a self, id: &'a ConnectionId) -> &'a str {
        node_of(id).unwrap_or(&self.node)
    }

    /// The node (incarnation) that owns `key` under the current view: a live node that does not hand over.
    pub(super) fn owner_of(&self, key: &GroupKey) -> NodeId {
        let placed = self.placed.read();
        crate::cluster::owner(&key.placement_bytes(), &placed)
            .cloned()
            .unwrap_or_else(|| self.id())
    }

    /// The owner this node took group `key` over from, when that owner is live and this happened less than
    /// [`HANDED_FROM_WINDOW`] ago (the last change of the nodes that own groups), or this node is young (it joined,
    /// and took from the others the groups it wins): that owner's last fan-outs of the group come before this
    /// node's (`mesh/arrivals.rs`).
    pub(super) fn handed_from(&self, key: &GroupKey) -> Option<NodeId> {
        let bytes = key.placement_bytes();
        let mut previous = {
            let before = self.placed_before.read();
            before
                .as_ref()
                .filter(|(at, _)| at.elapsed() < HANDED_FROM_WINDOW)
                .and_then(|(_, before)| crate::cluster::owner(&bytes, before))
                .filter(|owner| !self.is_local(&owner.name))
                .cloned()
        };
        if previous.is_none() && self.born.elapsed() < YOUNG {
            let others: Vec<NodeId> = self
                .placed
                .read()
                .iter()
                .filter(|id| !self.is_local(&id.name))
                .cloned()
                .collect();
            previous = crate::cluster::owner(&bytes, &others).cloned();
        }
        previous.filter(|owner| self.live.read().contains(owner))
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
    /// Each is numbered (`super::kept_broadcasts`), and numbered and sent under one lock, so that every node,
    /// this one included, gets this node's broadcasts in the order of their numbers.
    pub(crate) fn broadcast(&self, hub: &Arc<str>, frame: Arc<SharedFrame>, except: Arc<[ConnectionId]>) {
        let mut next = self.next_broadcast.lock();
        let seq = *next;
        *next += 1;
        let peers = self.peers();
        if !peers.is_empty() {
            let wire = WireFrame::of(&frame);
            for peer in peers {
                let envelope = Envelope::Broadcast {
                    hub: hub.clone(),
                    except: except.to_vec(),
                    frame: wire.clone(),
                    seq,
                };
                if let Err(error) = self.send_to_peer(&peer, &envelope) {
                    tracing::warn!(parent: &self.span, %error, "a broadcast could not reach a node");
                }
            }
        }
        let marked = SharedFrame::with_mark(&frame, Self::broadcast_mark(&self.id(), seq));
        self.deliver_broadcast(hub, marked, except);
    }

    /// Delivers `frame` to these connections, wherever they live: straight to the node that serves each one as far
    /// as this node knows (this node, the server of a connection it negotiated, the server a hint names), else
    /// through the connection's home (see `super::hints`), and through every live peer when the home is gone (only
    /// the node that serves an adopted connection delivers it).
    pub(crate) fn to_connections(&self, hub: &Arc<str>, ids: &[ConnectionId], frame: Arc<SharedFrame>) {
        // Numbered, and sent under the numbering lock (`super::kept_direct`).
        let mut numbering = self.next_direct.lock();
        let seq = *numbering;
        *numbering += 1;
        let frame = SharedFrame::with_mark(&frame, self.direct_mark(seq));
        let mut here = Vec::new();
        let mut to_server: HashMap<NodeId, Vec<ConnectionId>> = HashMap::new();
        let mut elsewhere = Vec::new();
        for id in ids {
            if self.is_local(self.home_of(id)) {
                match self.adopted_out.lock().get(id) {
                    Some(server) => to_server.entry(server.clone()).or_default().push(id.clone()),
                    None => here.push(id.clone()),
                }
            } else if self.hub(hub).is_some_and(|runtime| runtime.handle_of(id).is_some()) {
                // Adopted here: served here, whatever its name says.
                here.push(id.clone());
            } else {
                elsewhere.push(id.clone());
            }
        }
        let mut wire = None;
        let mut make = || wire.get_or_insert_with(|| WireFrame::of(&frame)).clone();
        if !here.is_empty() {
            if let Some(runtime) = self.hub(hub) {
                // Those kept here for a server that died, or taken over lately, keep their order (`super::kept_direct`):
                // one kept here that is registered here is being taken over here, and gets what is held for it, in
                // order, at its resume.
                let here = if self.has_kept_direct() {
                    let hold = |id: &ConnectionId| self.is_orphan(id) || runtime.handle_of(id).is_some();
                    self.take_kept_direct(hub, here, &make(), &hold, Held::PassedOn)
                } else {
                    here
                };
                let here = self.offer_unknown(&runtime, hub, here, &mut make);
                runtime.deliver_to(&here, &frame);
            }
        }
        for (server, ids) in to_server {
            self.send_direct(&server, hub, ids, make());
        }
        if elsewhere.is_empty() {
            return;
        }
        // Held until everything is sent: a fence must not overtake a send decided before it (`super::hints`).
        let mut hints = self.hints.lock();
        let mut direct: HashMap<NodeId, Vec<ConnectionId>> = HashMap::new();
        let mut via_home: HashMap<String, Vec<ConnectionId>> = HashMap::new();
        for id in elsewhere {
            let mut given_up = Vec::new();
            match self.hinted_route(&mut hints, hub, &id, &mut make, &mut given_up) {
                Route::Direct(server) => direct.entry(server).or_default().push(id),
                Route::Held => {}
                Route::Home => {
                    let home = self.home_of(&id).to_owned();
                    for (held_hub, held_frame) in given_up {
                        self.send_direct_via_home(&home, &held_hub, vec![id.clone()], held_frame);
                    }
                    via_home.entry(home).or_default().push(id);
                }
            }
        }
        for (server, ids) in direct {
            self.send_hinted(&server, hub, ids, make());
        }
        for (home, ids) in via_home {
            self.send_direct_via_home(&home, hub, ids, make());
        }
        drop(hints);
        drop(numbering);
    }

    /// A send to connections by id through their home (kept to send again if it leaves), or to every live peer
    /// when the home is gone, this node included: it may be the keeper of a connection whose server died with its
    /// home (`super::kept_direct`), and holds the send for it until it takes the connection over. The peers get
    /// those it holds too: the server of a connection kept here may be alive (one taken over, or moved, after its
    /// home died), and a take-over leaves out what the server numbered.
    pub(super) fn send_direct_via_home(&self, home: &str, hub: &Arc<str>, ids: Vec<ConnectionId>, frame: WireFrame) {
        match self.live_peer(home) {
            Some(peer) => {
                self.send_direct(&peer, hub, ids, frame);
            }
            None => {
                let ids = self.take_kept_direct(hub, ids, &frame, &|id| self.for_keeper(id), Held::PassedOn);
                if ids.is_empty() {
                    return;
                }
                let envelope = Envelope::ToConnections {
                    hub: hub.clone(),
                    ids,
                    frame,
                    hinted: false,
                };
                self.send_to_home(home, &envelope);
            }
        }
    }

    /// Sends to a connection's home, or to every live peer when the home is gone (a connection it negotiated may
    /// still run on a live node).
    pub(super) fn send_to_home(&self, home: &str, envelope: &Envelope) {
        if self.live_peer(home).is_none() {
            for peer in self.peers() {
                let _ = self.send_to_peer(&peer, envelope);
            }
            return;
        }
        if let Err(error) = self.send_to(home, envelope) {
            tracing::debug!(parent: &self.span, %error, home, "a send to connections of a node failed");
        }
    }

    /// Delivers a peer's send to connections: those served here, and on to the server of those negotiated here
    /// that run elsewhere. One that came by the sender's location hint (`hinted`) and that this node neither
    /// serves nor is the home of goes on through its home: the hint is stale (this node gave the connection up,
    /// a take-over of a stale copy undone, say, while it runs on elsewhere), and only the home knows where it runs.
    /// The sender's later sends take the same way, so they keep their order.
    pub(super) fn deliver_to_connections(
        &self,
        from: &NodeId,
        hub: &Arc<str>,
        ids: Vec<ConnectionId>,
        frame: WireFrame,
        hinted: bool,
    ) {
        // Those this node keeps for a server that died, or took over lately (`super::kept_direct`).
        let ids = self.take_kept_direct(hub, ids, &frame, &|id| self.for_keeper(id), Held::PassedOn);
        if ids.is_empty() {
            return;
        }
        // Those of this node's name that it lost track of go to whoever serves them (`Router::offer_unknown`).
        let ids = match self.hub(hub) {
            Some(runtime) => {
                let (mine, others): (Vec<ConnectionId>, Vec<ConnectionId>) =
                    ids.into_iter().partition(|id| self.is_local(self.home_of(id)));
                let mut ids = self.offer_unknown(&runtime, hub, mine, &mut || frame.clone());
                let others = if hinted {
                    self.pass_strays_home(&runtime, hub, others, &frame)
                } else {
                    others
                };
                ids.extend(others);
                ids
            }
            None => ids,
        };
        let adopted: Vec<(ConnectionId, NodeId)> = {
            let adopted_out = self.adopted_out.lock();
            if adopted_out.is_empty() {
                Vec::new()
            } else {
                ids.iter()
                    .filter_map(|id| adopted_out.get(id).map(|server| (id.clone(), server.clone())))
                    .collect()
            }
        };
        if adopted.is_empty() {
            if let Some(runtime) = self.hub(hub) {
                runtime.deliver_to(&ids, &frame.into_frame());
            }
            return;
        }
        let here: Vec<ConnectionId> = ids
            .into_iter()
            .filter(|id| !adopted.iter().any(|(away, _)| away == id))
            .collect();
        let mut by_server: HashMap<NodeId, Vec<ConnectionId>> = HashMap::new();
        for (id, server) in adopted {
            by_server.entry(server).or_default().push(id);
        }
        self.passed_on.fetch_add(1, Ordering::Relaxed);
        for (server, ids) in by_server {
            if server != *from {
                // The sender can reach the server straight (`super::hints`).
                let hint = Envelope::Hint {
                    hub: hub.clone(),
                    ids: ids.clone(),
                    server: server.clone(),
                };
                let _ = self.send_to_peer(from, &hint);
            }
            self.send_direct(&server, hub, ids, frame.clone());
        }
        if !here.is_empty() {
            if let Some(runtime) = self.hub(hub) {
                runtime.deliver_to(&here, &frame.into_frame());
            }
        }
    }

    /// Stops the group actors (node shutdown).
    pub(crate) fn shutdown(&self) {
        self.groups.stop_all();
    }
}
