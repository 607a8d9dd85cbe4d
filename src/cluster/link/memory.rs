//! In-memory links between the nodes of one in-process test cluster, with faults.
//!
//! # What this module owns
//!
//! [`MemoryNetwork`], the medium shared by every node of one in-process cluster (each test builds its own: there is
//! no process-global state), and [`MemoryLinks`], one node's [`Links`] on it. Frames are the real encoded bytes the
//! router would send over ractor_cluster; only the medium differs.
//!
//! # Semantics
//!
//! * A link between two nodes is opened by [`Links::update_peers`] on either side, as soon as the peer has joined
//!   the same network with exactly the incarnation named, no fault stands between the two, and the peer does not
//!   refuse it (it refuses an incarnation it saw live and no longer lists, or one superseded by a newer generation,
//!   as the accepting side of a real link does). Each side then gets [`LinkEvent::Up`] for the other, before any
//!   frame from it.
//! * Each direction of a link has its own bounded queue, [`LinkConfig::queue_frames`] frames of the sender, drained in
//!   order by one task into the receiver's event channel. A frame stays counted in the queue until the receiver's
//!   channel has room, so a slow receiver makes the sender's queue fill up and [`Links::send`] fail with
//!   [`LinkError::QueueFull`], as a real socket would.
//! * A link is closed when one side's [`Links::update_peers`] no longer lists a peer it has seen live, or lists a
//!   newer generation of it; when either node is [killed](MemoryNetwork::kill) or its [`MemoryLinks`] is dropped (a
//!   node that stops without a goodbye); or when a newer generation of a node joins. Both sides then get
//!   [`LinkEvent::Down`] once, after every frame delivered before it, and the frames still queued are dropped. A
//!   killed node gets no more events.
//! * A direction counts a stall on its sender's [`LinkCounters`] each time it waits for a fault to go or for room
//!   in the receiver's channel.
//! * Faults: [`MemoryNetwork::partition`] and [`MemoryNetwork::freeze`] **hold** frames (they stay queued and count
//!   against the queue) rather than drop them, as TCP holds unacknowledged data across a broken path or a stopped
//!   process (`SIGSTOP`); [`MemoryNetwork::heal`] and [`MemoryNetwork::thaw`] release them in order. Links are not
//!   closed by a fault itself: closing is membership's verdict (a frozen peer declared dead is removed by
//!   [`Links::update_peers`], which closes the link and drops what it held, with `Down` on both sides). No link
//!   can be opened across a fault; it opens once the fault is gone and a side still wants it.
//!
//! # What it may call
//!
//! tokio, tokio-util, parking_lot, bytes, tracing, and the link types of [`super`]. Nothing above the cluster layer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{LinkConfig, LinkCounters, LinkError, LinkEvent, Links, PeerCounters, PeerInfo};
use crate::cluster::membership::NodeId;

/// An in-process network of links shared by the nodes of one test cluster, with a fault layer.
///
/// Cloning is cheap and every clone is the same network, so a test keeps one clone to inject faults while its nodes
/// [join](MemoryNetwork::join) with others. Faults are keyed by node name, so they apply to every generation of a
/// name.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<NetState>,
    /// Bumped on every fault change, so held frames are looked at again.
    faults_changed: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            state: Mutex::new(NetState::default()),
            faults_changed: watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct NetState {
    /// The current incarnation of each joined name.
    nodes: HashMap<Arc<str>, Node>,
    /// Open links, keyed by the two incarnations in order.
    links: HashMap<(NodeId, NodeId), Link>,
    /// Partitioned name pairs, the smaller name first.
    cut: HashSet<(Arc<str>, Arc<str>)>,
    frozen: HashSet<Arc<str>>,
}

struct Node {
    id: NodeId,
    events: mpsc::Sender<LinkEvent>,
    queue_frames: usize,
    runtime: Handle,
    /// The live peers of the last [`Links::update_peers`].
    wanted: Vec<NodeId>,
    /// Per peer name, the newest generation this node has seen live: only incarnations no newer than it are torn
    /// down when they leave the live set. One entry per name, so restarts do not make it grow.
    seen_live: HashMap<Arc<str>, u64>,
    /// Its [`MemoryLinks`]' counters: a delivery counts a stall on its sender's.
    counters: Arc<LinkCounters>,
}

struct Link {
    /// Frames from the smaller incarnation of the key to the larger one.
    forward: Arc<DirectionQueue>,
    /// Frames from the larger to the smaller.
    backward: Arc<DirectionQueue>,
    closed: CancellationToken,
}

/// The frames queued in one direction of one link.
struct DirectionQueue {
    frames: Mutex<VecDeque<Bytes>>,
    capacity: usize,
    queued: Notify,
}

impl DirectionQueue {
    fn new(capacity: usize) -> Self {
        DirectionQueue {
            frames: Mutex::new(VecDeque::new()),
            capacity,
            queued: Notify::new(),
        }
    }
}

/// Whether this incarnation, or a newer one of its name, was seen live.
fn seen_before(seen_live: &HashMap<Arc<str>, u64>, peer: &NodeId) -> bool {
    seen_live.get(&peer.name).is_some_and(|&newest| newest >= peer.generation)
}

fn ordered(a: &NodeId, b: &NodeId) -> (NodeId, NodeId) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

fn name_pair(a: &Arc<str>, b: &Arc<str>) -> (Arc<str>, Arc<str>) {
    if a <= b {
        (Arc::clone(a), Arc::clone(b))
    } else {
        (Arc::clone(b), Arc::clone(a))
    }
}

impl NetState {
    fn blocked(&self, a: &Arc<str>, b: &Arc<str>) -> bool {
        self.frozen.contains(a) || self.frozen.contains(b) || self.cut.contains(&name_pair(a, b))
    }

    fn is_current(&self, id: &NodeId) -> bool {
        self.nodes.get(&id.name).is_some_and(|node| &node.id == id)
    }

    /// Closes the link between `a` and `b`, if open: its tasks drop what is queued and report `Down`.
    fn close(&mut self, a: &NodeId, b: &NodeId) {
        if let Some(link) = self.links.remove(&ordered(a, b)) {
            tracing::debug!(a = %a, b = %b, "memory link closed");
            link.closed.cancel();
        }
    }

    /// Closes every link of `id`.
    fn close_all(&mut self, id: &NodeId) {
        let keys: Vec<(NodeId, NodeId)> = self.links.keys().filter(|(a, b)| a == id || b == id).cloned().collect();
        for (a, b) in keys {
            self.close(&a, &b);
        }
    }

    /// Whether `node` refuses a link to `peer`: it saw `peer` live and no longer does, or wants a newer generation
    /// of it (the accepting side of a real link refuses such a session the same way).
    fn refuses(&self, node: &NodeId, peer: &NodeId) -> bool {
        self.nodes
            .get(&node.name)
            .filter(|entry| &entry.id == node)
            .is_some_and(|entry| {
                let gone = seen_before(&entry.seen_live, peer) && !entry.wanted.contains(peer);
                let superseded = entry
                    .wanted
                    .iter()
                    .any(|other| other.name == peer.name && other.generation > peer.generation);
                gone || superseded
            })
    }

    /// Opens every link some node wants and can have now: the peer is joined with that incarnation, no fault stands
    /// between them, and the peer does not refuse it.
    fn reconcile(&mut self, shared: &Arc<Shared>) {
        let mut wanted_pairs = Vec::new();
        for node in self.nodes.values() {
            for peer in &node.wanted {
                if peer != &node.id
                    && self.is_current(peer)
                    && !self.blocked(&node.id.name, &peer.name)
                    && !self.refuses(peer, &node.id)
                {
                    let key = ordered(&node.id, peer);
                    if !self.links.contains_key(&key) {
                        wanted_pairs.push(key);
                    }
                }
            }
        }
        for (a, b) in wanted_pairs {
            if !self.links.contains_key(&(a.clone(), b.clone())) {
                self.open(shared, a, b);
            }
        }
    }

    /// Opens the link between `a < b`, both current: a queue and a delivery task per direction.
    fn open(&mut self, shared: &Arc<Shared>, a: NodeId, b: NodeId) {
        let (Some(node_a), Some(node_b)) = (self.nodes.get(&a.name), self.nodes.get(&b.name)) else {
            return;
        };
        let forward = Arc::new(DirectionQueue::new(node_a.queue_frames));
        let backward = Arc::new(DirectionQueue::new(node_b.queue_frames));
        let closed = CancellationToken::new();
        let a_to_b = Delivery {
            shared: Arc::downgrade(shared),
            from: a.clone(),
            to: b.clone(),
            queue: Arc::clone(&forward),
            events: node_b.events.clone(),
            sender_counters: node_a.counters.peer(&b.name),
            closed: closed.clone(),
        };
        let b_to_a = Delivery {
            shared: Arc::downgrade(shared),
            from: b.clone(),
            to: a.clone(),
            queue: Arc::clone(&backward),
            events: node_a.events.clone(),
            sender_counters: node_b.counters.peer(&a.name),
            closed: closed.clone(),
        };
        let span_ab = tracing::debug_span!("memory_link", from = %a, to = %b);
        let span_ba = tracing::debug_span!("memory_link", from = %b, to = %a);
        node_b.runtime.spawn(a_to_b.run().instrument(span_ab));
        node_a.runtime.spawn(b_to_a.run().instrument(span_ba));
        tracing::debug!(a = %a, b = %b, "memory link opened");
        self.links.insert(
            (a, b),
            Link {
                forward,
                backward,
                closed,
            },
        );
    }
}

/// The task carrying one direction of one link into the receiver's event channel.
struct Delivery {
    shared: Weak<Shared>,
    from: NodeId,
    to: NodeId,
    queue: Arc<DirectionQueue>,
    events: mpsc::Sender<LinkEvent>,
    /// The sender's counters for the receiver: a full receiver is a stall.
    sender_counters: Arc<PeerCounters>,
    closed: CancellationToken,
}

impl Delivery {
    async fn run(self) {
        let Some(mut faults) = self.shared.upgrade().map(|shared| shared.faults_changed.subscribe()) else {
            return;
        };
        let up = tokio::select! {
            biased;
            () = self.closed.cancelled() => false,
            sent = self.events.send(LinkEvent::Up(self.from.clone())) => sent.is_ok(),
        };
        if !up {
            return;
        }
        self.deliver_frames(&mut faults).await;
        // Dropped with the link: whatever is still queued.
        self.queue.frames.lock().clear();
        let receiver_current = self
            .shared
            .upgrade()
            .is_some_and(|shared| shared.state.lock().is_current(&self.to));
        if receiver_current {
            let _ = self.events.send(LinkEvent::Down(self.from.clone())).await;
        }
    }

    /// Delivers queued frames in order until the link closes.
    async fn deliver_frames(&self, faults: &mut watch::Receiver<u64>) {
        loop {
            if self.queue.frames.lock().is_empty() {
                tokio::select! {
                    biased;
                    () = self.closed.cancelled() => return,
                    () = self.queue.queued.notified() => continue,
                }
            }
            faults.borrow_and_update();
            let blocked = match self.shared.upgrade() {
                Some(shared) => shared.state.lock().blocked(&self.from.name, &self.to.name),
                None => return,
            };
            if blocked {
                // As a real link's credit window runs out when the peer stops reading.
                self.sender_counters.stalled();
                tokio::select! {
                    biased;
                    () = self.closed.cancelled() => return,
                    changed = faults.changed() => if changed.is_err() { return } else { continue },
                }
            }
            if self.events.capacity() == 0 {
                self.sender_counters.stalled();
            }
            let permit = tokio::select! {
                biased;
                () = self.closed.cancelled() => return,
                permit = self.events.reserve() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            // The frame leaves the queue only now that the receiver has room for it.
            let frame = self.queue.frames.lock().pop_front();
            if let Some(frame) = frame {
                permit.send(LinkEvent::Frame {
                    from: self.from.clone(),
                    frame,
                });
            }
        }
    }
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        let mut nodes: Vec<String> = state.nodes.values().map(|node| node.id.to_string()).collect();
        nodes.sort_unstable();
        f.debug_struct("MemoryNetwork")
            .field("nodes", &nodes)
            .field("links", &state.links.len())
            .field("cut", &state.cut)
            .field("frozen", &state.frozen)
            .finish()
    }
}

impl MemoryNetwork {
    /// A fresh network with no nodes and no faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins node `self_id` to the network: its links deliver frames and link changes to `events`.
    ///
    /// A newer generation of a name supersedes the older one, whose links close (as the restart of a process
    /// would). Must be called inside a tokio runtime, which then runs this node's deliveries.
    pub fn join(
        &self,
        self_id: NodeId,
        config: &LinkConfig,
        events: mpsc::Sender<LinkEvent>,
    ) -> Result<Arc<MemoryLinks>, LinkError> {
        if config.queue_frames == 0 {
            return Err(LinkError::Start("queue_frames must be at least 1".to_owned()));
        }
        let runtime = Handle::try_current()
            .map_err(|_| LinkError::Start("memory links must be joined inside a tokio runtime".to_owned()))?;
        let counters = Arc::new(LinkCounters::default());
        let mut state = self.shared.state.lock();
        if let Some(existing) = state.nodes.get(&self_id.name) {
            if existing.id.generation >= self_id.generation {
                return Err(LinkError::Start(format!(
                    "node {} is already joined; a restart needs a newer generation than {}",
                    self_id, existing.id
                )));
            }
            let old = existing.id.clone();
            state.close_all(&old);
        }
        state.nodes.insert(
            Arc::clone(&self_id.name),
            Node {
                id: self_id.clone(),
                events,
                queue_frames: config.queue_frames,
                runtime,
                wanted: Vec::new(),
                seen_live: HashMap::new(),
                counters: Arc::clone(&counters),
            },
        );
        state.reconcile(&self.shared);
        tracing::debug!(node = %self_id, "joined the memory link network");
        Ok(Arc::new(MemoryLinks {
            id: self_id,
            max_frame: config.max_frame,
            network: self.clone(),
            counters,
        }))
    }

    /// Holds every frame between any node of `side_a` and any node of `side_b` (by name), in both directions,
    /// until [`heal`](Self::heal); no link opens between them meanwhile.
    pub fn partition<A: AsRef<str>, B: AsRef<str>>(&self, side_a: &[A], side_b: &[B]) {
        {
            let mut state = self.shared.state.lock();
            for a in side_a {
                for b in side_b {
                    let (a, b): (Arc<str>, Arc<str>) = (Arc::from(a.as_ref()), Arc::from(b.as_ref()));
                    if a != b {
                        state.cut.insert(name_pair(&a, &b));
                    }
                }
            }
        }
        self.faults_changed();
    }

    /// Holds every frame to and from node `name` until [`thaw`](Self::thaw) or [`heal`](Self::heal), as with a
    /// process stopped by `SIGSTOP`: its peers' queues to it fill up, and nothing it sends arrives.
    pub fn freeze(&self, name: &str) {
        self.shared.state.lock().frozen.insert(Arc::from(name));
        self.faults_changed();
    }

    /// Releases node `name` after [`freeze`](Self::freeze): held frames flow again in order, and links it or its
    /// peers want open.
    pub fn thaw(&self, name: &str) {
        {
            let mut state = self.shared.state.lock();
            state.frozen.remove(name);
            state.reconcile(&self.shared);
        }
        self.faults_changed();
    }

    /// Removes every partition and every freeze.
    pub fn heal(&self) {
        {
            let mut state = self.shared.state.lock();
            state.cut.clear();
            state.frozen.clear();
            state.reconcile(&self.shared);
        }
        self.faults_changed();
    }

    /// Kills node `name` as a crash would: its links close, its peers get [`LinkEvent::Down`] and it gets no more
    /// events; its [`MemoryLinks`] is inert from then on. The name may join again with a newer generation.
    pub fn kill(&self, name: &str) {
        let mut state = self.shared.state.lock();
        if let Some(node) = state.nodes.remove(name) {
            state.close_all(&node.id);
            tracing::debug!(node = %node.id, "killed on the memory link network");
        }
    }

    fn faults_changed(&self) {
        self.shared
            .faults_changed
            .send_modify(|counter| *counter = counter.wrapping_add(1));
    }
}

/// One node's links on a [`MemoryNetwork`].
///
/// Dropping it is the node stopping without a goodbye: its links close and its peers get [`LinkEvent::Down`].
pub struct MemoryLinks {
    id: NodeId,
    max_frame: usize,
    network: MemoryNetwork,
    counters: Arc<LinkCounters>,
}

impl fmt::Debug for MemoryLinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLinks")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MemoryLinks {
    /// This node's incarnation.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The queue of this node's direction of its link to `peer`, if this node is current and the link is open.
    fn queue_to(&self, peer: &NodeId) -> Option<Arc<DirectionQueue>> {
        let state = self.network.shared.state.lock();
        if !state.is_current(&self.id) {
            return None;
        }
        let link = state.links.get(&ordered(&self.id, peer))?;
        Some(Arc::clone(if self.id < *peer { &link.forward } else { &link.backward }))
    }
}

impl Links for MemoryLinks {
    fn advertised_address(&self) -> String {
        format!("memory:{}", self.id)
    }

    fn send(&self, peer: &NodeId, frame: Bytes) -> Result<(), LinkError> {
        if frame.len() > self.max_frame {
            return Err(LinkError::TooLarge {
                size: frame.len(),
                max: self.max_frame,
            });
        }
        let Some(queue) = self.queue_to(peer) else {
            return Err(LinkError::NoLink(peer.clone()));
        };
        let counters = self.counters.peer(&peer.name);
        {
            let mut frames = queue.frames.lock();
            if frames.len() >= queue.capacity {
                counters.queue_full();
                return Err(LinkError::QueueFull(peer.clone()));
            }
            counters.sent(frame.len());
            frames.push_back(frame);
        }
        queue.queued.notify_one();
        Ok(())
    }

    fn update_peers(&self, live: &[PeerInfo]) {
        let shared = &self.network.shared;
        let mut state = shared.state.lock();
        let Some(node) = state.nodes.get_mut(&self.id.name).filter(|node| node.id == self.id) else {
            return;
        };
        node.wanted = live
            .iter()
            .map(|peer| peer.id.clone())
            .filter(|id| id != &self.id)
            .collect();
        self.counters.keep_only(node.wanted.iter().map(|id| &id.name));
        for peer in &node.wanted {
            let newest = node.seen_live.entry(peer.name.clone()).or_insert(peer.generation);
            *newest = (*newest).max(peer.generation);
        }
        let wanted = node.wanted.clone();
        let seen_live = node.seen_live.clone();
        let to_close: Vec<NodeId> = state
            .links
            .keys()
            .filter_map(|(a, b)| {
                if a == &self.id {
                    Some(b.clone())
                } else if b == &self.id {
                    Some(a.clone())
                } else {
                    None
                }
            })
            .filter(|peer| {
                let gone = !wanted.contains(peer) && seen_before(&seen_live, peer);
                let superseded = wanted
                    .iter()
                    .any(|other| other.name == peer.name && other.generation > peer.generation);
                gone || superseded
            })
            .collect();
        for peer in to_close {
            state.close(&self.id, &peer);
        }
        state.reconcile(shared);
    }

    fn counters(&self) -> &LinkCounters {
        &self.counters
    }

    fn queue_depth(&self, name: &str) -> usize {
        let peer = self.network.shared.state.lock().nodes.get(name).map(|node| node.id.clone());
        peer.and_then(|peer| self.queue_to(&peer))
            .map_or(0, |queue| queue.frames.lock().len())
    }

    #[cfg(any(test, feature = "internals"))]
    fn connected(&self) -> Vec<NodeId> {
        let state = self.network.shared.state.lock();
        let mut peers: Vec<NodeId> = state
            .links
            .keys()
            .filter_map(|(a, b)| {
                if a == &self.id {
                    Some(b.clone())
                } else if b == &self.id {
                    Some(a.clone())
                } else {
                    None
                }
            })
            .collect();
        peers.sort();
        peers
    }
}

impl Drop for MemoryLinks {
    fn drop(&mut self) {
        let mut state = self.network.shared.state.lock();
        if state.is_current(&self.id) {
            state.nodes.remove(&self.id.name);
            state.close_all(&self.id);
        }
    }
}
