//! The router: makes every send location-transparent. One per node, shared by the node's hubs.
//!
//! # What it owns
//!
//! * Where things are. A connection id ends with `.<node name>`, so a send to a connection goes straight to its
//!   node with no lookup. A group (or user) is owned by the node that rendezvous hashing over the live members
//!   picks ([`crate::cluster::owner`]); its actor there ([`crate::group`]) holds which connections of which node
//!   are members and sequences the group's sends.
//! * The node-to-node messages ([`Envelope`], rmp-serde) over the cluster's links, with request/reply
//!   correlation for group membership, counts and client results.
//! * What happens when membership changes: groups owned by a node that left move to their new owner, which
//!   rebuilds their membership from snapshots that every node sends of its own members; group sends whose owner
//!   is unreachable are held (at most [`HELD_SENDS_CAP`]) and delivered in order once an owner is reachable;
//!   requests waiting on a node that left fail at once.
//!
//! A node that is not part of a cluster is a cluster of one: the same code paths run, without links.
//!
//! The router is not a ractor actor: its state is a few maps read by many tasks at once, and a mailbox in front
//! of it would add a hop to every send. The per-node actor that ractor_cluster needs lives in the link layer
//! ([`crate::cluster::link`]), which hands frames to the router in order.
//!
//! # What it may call
//!
//! The hub runtime (local delivery and the local group table), the group actors, the connection layer (handles,
//! shared frames) and the cluster layer (membership view, placement, links). It knows nothing of HTTP.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{HubError, HubRuntime};
use crate::cluster::{LinkError, LinkEvent, Links, NodeId};
use crate::connection::{ClientResultError, ConnectionId, SharedFrame};
use crate::group::{Fanout, GroupDirectory, GroupError, GroupKey, Stamp};
use crate::protocol::{Protocol, RawValue};

/// The most group sends a node holds while their owner is unreachable; beyond it the oldest are dropped (and
/// logged), so a long outage cannot exhaust memory.
pub const HELD_SENDS_CAP: usize = 10_000;

/// After a membership change, how long an owner holds group sends while it waits for the snapshots of its
/// peers (so a re-homed group has all its members before it delivers).
const SETTLE: Duration = Duration::from_secs(3);
/// How long an owner keeps a send to a group it has no members for, in case the members are on their way
/// (a snapshot or a join that raced with the send across different links).
const ORPHAN_WINDOW: Duration = Duration::from_secs(3);

/// How long a node keeps a group send it handed to a remote owner, to send it again if that owner dies before
/// its members got it: longer than failure detection (3 s) plus settling.
const RETAIN: Duration = Duration::from_secs(8);

/// How many owners a membership request tries when owners leave while it waits.
const OWNER_ATTEMPTS: usize = 3;

/// How long a membership request (add, remove, count) waits for a peer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request retries while the link to a live peer is not up yet (just after it joined).
const LINK_WAIT: Duration = Duration::from_secs(3);

/// A frame encoded once per protocol at the sender, so receiving nodes encode nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireFrame {
    json: Option<Bytes>,
    msgpack: Option<Bytes>,
}

impl WireFrame {
    fn of(frame: &SharedFrame) -> WireFrame {
        WireFrame {
            json: frame.bytes(Protocol::Json).cloned(),
            msgpack: frame.bytes(Protocol::MessagePack).cloned(),
        }
    }

    fn into_frame(self) -> Arc<SharedFrame> {
        SharedFrame::pre_encoded(self.json, self.msgpack)
    }
}

/// A node-to-node message.
#[derive(Debug, Serialize, Deserialize)]
enum Envelope {
    /// To every connection of a hub on the receiving node.
    Broadcast {
        hub: Arc<str>,
        except: Vec<ConnectionId>,
        frame: WireFrame,
    },
    /// To these connections, which live on the receiving node.
    ToConnections {
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
    },
    /// Every membership the sender holds in groups the receiver owns (after ownership may have moved).
    Snapshot { groups: Vec<(GroupKey, Vec<ConnectionId>)> },
    /// Please send your snapshots (you were away, or are new).
    SnapshotRequest,
    /// A request that expects a [`Envelope::Reply`] with the same id.
    Request { id: u64, request: Request },
    /// The answer to a request.
    Reply { id: u64, answer: Answer },
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Add a connection of the receiving node to a group (sent by the node where `Groups::add` was called).
    Join { key: GroupKey, connection: ConnectionId },
    /// Remove a connection of the receiving node from a group.
    Leave { key: GroupKey, connection: ConnectionId },
    /// To a group's owner: a connection of the sender joined.
    Register { key: GroupKey, connection: ConnectionId },
    /// To a group's owner: a connection of the sender left.
    Unregister { key: GroupKey, connection: ConnectionId },
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
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Done,
    Count(usize),
    Members(Vec<ConnectionId>),
    /// A client's result as MessagePack, or none (void).
    Value(Option<Bytes>),
    Failed(WireError),
    /// The peer left before it answered (made locally, never sent).
    PeerLeft,
}

#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    UnknownConnection(String),
    UnknownHub(String),
    Group(String),
    Disconnected(String),
    Client(String),
    Timeout(u64),
    BadResult(String),
}

impl From<HubError> for WireError {
    fn from(error: HubError) -> Self {
        match error {
            HubError::UnknownConnection(id) => WireError::UnknownConnection(id),
            HubError::ClientResult(ClientResultError::Disconnected(id)) => WireError::Disconnected(id),
            HubError::ClientResult(ClientResultError::Client(message)) => WireError::Client(message),
            HubError::ClientResult(ClientResultError::Timeout(limit)) => {
                WireError::Timeout(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX))
            }
            HubError::ClientResult(ClientResultError::BadResult(message)) => WireError::BadResult(message),
            other => WireError::Group(other.to_string()),
        }
    }
}

impl From<WireError> for HubError {
    fn from(error: WireError) -> Self {
        match error {
            WireError::UnknownConnection(id) => HubError::UnknownConnection(id),
            WireError::UnknownHub(hub) => {
                HubError::Group(GroupError::Unavailable(format!("the peer does not serve hub '{hub}'")))
            }
            WireError::Group(message) => HubError::Group(GroupError::Unavailable(message)),
            WireError::Disconnected(id) => HubError::ClientResult(ClientResultError::Disconnected(id)),
            WireError::Client(message) => HubError::ClientResult(ClientResultError::Client(message)),
            WireError::Timeout(ms) => HubError::ClientResult(ClientResultError::Timeout(Duration::from_millis(ms))),
            WireError::BadResult(message) => HubError::ClientResult(ClientResultError::BadResult(message)),
        }
    }
}

struct Pending {
    node: Arc<str>,
    reply: oneshot::Sender<Answer>,
}

/// A change to the groups this node owns. Applied one at a time, in arrival order, so a snapshot and the
/// joins and leaves that follow it on the same link take effect in the order they were sent.
enum MembershipOp {
    Register {
        from: Arc<str>,
        key: GroupKey,
        connection: ConnectionId,
        done: Done,
    },
    Unregister {
        from: Arc<str>,
        key: GroupKey,
        connection: ConnectionId,
        done: Done,
    },
    /// A peer's snapshot.
    Snapshot {
        from: Arc<str>,
        groups: Vec<(GroupKey, Vec<ConnectionId>)>,
    },
    /// This node's own memberships, read when the op is applied.
    OwnSnapshot,
    /// A send to a group this node owns, in arrival order with the membership changes.
    Send { send: HeldSend },
    /// Membership changed: hold group sends until these peers' snapshots arrive (or [`SETTLE`] passes).
    ViewChanged { peers: Vec<Arc<str>> },
}

type Orphan = (tokio::time::Instant, HeldSend);

/// What the membership queue keeps between ops.
#[derive(Default)]
struct OpsState {
    /// While settling: the deadline and the peers whose snapshots are still awaited.
    settling: Option<(tokio::time::Instant, HashSet<Arc<str>>)>,
    /// Sends held while settling, in order.
    deferred: VecDeque<HeldSend>,
    /// Sends to groups without members here yet, with when they arrived.
    orphans: HashMap<GroupKey, VecDeque<Orphan>>,
}

/// Who waits for a membership op.
enum Done {
    Local(oneshot::Sender<Result<(), HubError>>),
    Remote { from: Arc<str>, id: u64 },
}

#[derive(Clone)]
struct HeldSend {
    key: GroupKey,
    except: Arc<[ConnectionId]>,
    frame: Arc<SharedFrame>,
    stamp: Stamp,
}

/// A group send handed to a remote owner, kept a while in case the owner dies before its members got it.
struct Retained {
    at: tokio::time::Instant,
    owner: Arc<str>,
    send: HeldSend,
}

/// The node's router; see the module doc.
pub(crate) struct Router {
    node: Arc<str>,
    hubs: RwLock<HashMap<Arc<str>, Weak<HubRuntime>>>,
    groups: GroupDirectory,
    links: RwLock<Option<Arc<dyn Links>>>,
    /// Live nodes, this one included, sorted.
    live: RwLock<Vec<NodeId>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_request: AtomicU64,
    held: Mutex<VecDeque<HeldSend>>,
    /// Sends handed to remote owners in the last [`RETAIN`], oldest first.
    retained: Mutex<VecDeque<Retained>>,
    /// This node's sequence number for group sends.
    next_seq: AtomicU64,
    /// The last sequence number delivered here per group and origin (re-sent sends are dropped).
    delivered: Mutex<HashMap<(GroupKey, Arc<str>), u64>>,
    ops: tokio::sync::mpsc::UnboundedSender<MembershipOp>,
    span: tracing::Span,
}

/// Delivers a group actor's sends: to this node's members directly, to other nodes through the links.
struct RouterFanout(Weak<Router>);

impl Fanout for RouterFanout {
    fn deliver(
        &self,
        node: &str,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
    ) {
        let Some(router) = self.0.upgrade() else {
            return;
        };
        if node == &*router.node {
            router.deliver_group_locally(key, frame, except, stamp);
        } else {
            let envelope = Envelope::GroupDeliver {
                key: key.clone(),
                except: except.to_vec(),
                frame: WireFrame::of(frame),
                stamp: stamp.clone(),
            };
            // A node that cannot be reached is leaving; its members leave with it.
            if let Err(error) = router.send_to(node, &envelope) {
                tracing::debug!(parent: &router.span, %error, node, "group delivery to a node failed");
            }
        }
    }
}

/// The node part of a connection id (`<random>.<node>`), if any.
pub(crate) fn node_of(id: &ConnectionId) -> Option<&str> {
    id.as_str().split_once('.').map(|(_, node)| node)
}

impl Router {
    /// A router for node `node`; group actors run on `runtime`.
    pub(crate) fn new(node: &str, runtime: tokio::runtime::Handle, span: tracing::Span) -> Arc<Router> {
        let (ops, mut queue) = tokio::sync::mpsc::unbounded_channel();
        let router = Arc::new_cyclic(|weak: &Weak<Router>| Router {
            node: node.into(),
            hubs: RwLock::new(HashMap::new()),
            groups: GroupDirectory::new(runtime.clone(), Arc::new(RouterFanout(weak.clone()))),
            links: RwLock::new(None),
            live: RwLock::new(vec![NodeId::new(node, 0)]),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            held: Mutex::new(VecDeque::new()),
            retained: Mutex::new(VecDeque::new()),
            next_seq: AtomicU64::new(1),
            delivered: Mutex::new(HashMap::new()),
            ops,
            span,
        });
        let weak = Arc::downgrade(&router);
        runtime.spawn(async move {
            let mut state = OpsState::default();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                let op = tokio::select! {
                    op = queue.recv() => match op {
                        Some(op) => Some(op),
                        None => return,
                    },
                    _ = tick.tick() => None,
                };
                let Some(router) = weak.upgrade() else {
                    return;
                };
                if let Some(op) = op {
                    router.apply(op, &mut state).await;
                }
                router.housekeep(&mut state);
            }
        });
        router
    }

    fn enqueue(&self, op: MembershipOp) {
        // The queue lives as long as the router; a send fails only while the node shuts down.
        let _ = self.ops.send(op);
    }

    async fn apply(&self, op: MembershipOp, state: &mut OpsState) {
        match op {
            MembershipOp::Register {
                from,
                key,
                connection,
                done,
            } => {
                let result = self.groups.add(&key, &from, connection).await.map_err(HubError::from);
                self.finish(done, result);
                self.release_orphans(&key, state);
            }
            MembershipOp::Unregister {
                from,
                key,
                connection,
                done,
            } => {
                let result = self
                    .groups
                    .remove(&key, &from, connection)
                    .await
                    .map_err(HubError::from);
                self.finish(done, result);
            }
            MembershipOp::Snapshot { from, groups } => {
                let keys: Vec<GroupKey> = groups.iter().map(|(key, _)| key.clone()).collect();
                self.apply_snapshot(&from, groups).await;
                if let Some((_, awaiting)) = &mut state.settling {
                    awaiting.remove(&from);
                }
                for key in keys {
                    self.release_orphans(&key, state);
                }
            }
            MembershipOp::OwnSnapshot => {
                let node = self.node.clone();
                let own = self.local_snapshot();
                let keys: Vec<GroupKey> = own.iter().map(|(key, _)| key.clone()).collect();
                self.apply_snapshot(&node, own).await;
                for key in keys {
                    self.release_orphans(&key, state);
                }
            }
            MembershipOp::Send { send } => {
                if state.settling.is_some() {
                    push_capped(&mut state.deferred, send, &self.span);
                } else {
                    self.owner_send(send, state);
                }
            }
            MembershipOp::ViewChanged { peers } => {
                let deadline = tokio::time::Instant::now() + SETTLE;
                state.settling = Some((deadline, peers.into_iter().collect()));
            }
        }
    }

    /// Ends settling when every awaited snapshot arrived or the deadline passed, and expires old orphans.
    fn housekeep(&self, state: &mut OpsState) {
        let now = tokio::time::Instant::now();
        let settled = match &state.settling {
            Some((deadline, awaiting)) => awaiting.is_empty() || now >= *deadline,
            None => false,
        };
        if settled {
            state.settling = None;
            while let Some(send) = state.deferred.pop_front() {
                self.owner_send(send, state);
            }
        }
        state.orphans.retain(|_, sends| {
            while sends
                .front()
                .is_some_and(|(since, _)| now.duration_since(*since) > ORPHAN_WINDOW)
            {
                sends.pop_front();
            }
            !sends.is_empty()
        });
    }

    /// Delivers a send as the group's owner, or keeps it a while if the group has no members here yet.
    fn owner_send(&self, send: HeldSend, state: &mut OpsState) {
        let key = send.key.clone();
        if let Some(waiting) = state.orphans.get_mut(&key) {
            // Earlier sends to this group are still waiting: keep the order.
            waiting.push_back((tokio::time::Instant::now(), send));
            self.release_orphans(&key, state);
        } else if self.groups.contains(&key) {
            self.groups.send(&key, send.frame, send.except, send.stamp);
        } else {
            let waiting = state.orphans.entry(key).or_default();
            if waiting.len() >= HELD_SENDS_CAP {
                waiting.pop_front();
            }
            waiting.push_back((tokio::time::Instant::now(), send));
        }
    }

    fn release_orphans(&self, key: &GroupKey, state: &mut OpsState) {
        if !self.groups.contains(key) {
            return;
        }
        if let Some(waiting) = state.orphans.remove(key) {
            for (_, send) in waiting {
                self.groups.send(key, send.frame, send.except, send.stamp);
            }
        }
    }

    fn finish(&self, done: Done, result: Result<(), HubError>) {
        match done {
            Done::Local(reply) => {
                let _ = reply.send(result);
            }
            Done::Remote { from, id } => {
                let answer = match result {
                    Ok(()) => Answer::Done,
                    Err(error) => Answer::Failed(error.into()),
                };
                if let Err(error) = self.send_to(&from, &Envelope::Reply { id, answer }) {
                    tracing::debug!(parent: &self.span, %error, "a reply could not be sent");
                }
            }
        }
    }

    async fn own_op(&self, make: impl FnOnce(Done) -> MembershipOp) -> Result<(), HubError> {
        let (reply, done) = oneshot::channel();
        self.enqueue(make(Done::Local(reply)));
        done.await
            .unwrap_or_else(|_| Err(HubError::Group(GroupError::Unavailable("the node is stopping".into()))))
    }

    /// A new connection id that names this node.
    pub(crate) fn new_connection_id(&self, random: &str) -> ConnectionId {
        ConnectionId::new(format!("{random}.{}", self.node))
    }

    pub(crate) fn register_hub(&self, name: &str, runtime: &Arc<HubRuntime>) {
        self.hubs.write().insert(name.into(), Arc::downgrade(runtime));
    }

    fn hub(&self, name: &str) -> Option<Arc<HubRuntime>> {
        self.hubs.read().get(name).and_then(Weak::upgrade)
    }

    /// Connects the router to the cluster's links.
    pub(crate) fn attach_links(&self, links: Arc<dyn Links>) {
        *self.links.write() = Some(links);
    }

    fn is_local(&self, node: &str) -> bool {
        node == &*self.node
    }

    /// The node a connection lives on (ids without a node part are taken as local).
    fn home_of<'a>(&'a self, id: &'a ConnectionId) -> &'a str {
        node_of(id).unwrap_or(&self.node)
    }

    /// The node that owns `key` under the current view.
    fn owner_of(&self, key: &GroupKey) -> Arc<str> {
        let live = self.live.read();
        crate::cluster::owner(&key.placement_bytes(), &live)
            .map(|id| id.name.clone())
            .unwrap_or_else(|| self.node.clone())
    }

    fn live_peer(&self, node: &str) -> Option<NodeId> {
        self.live
            .read()
            .iter()
            .find(|id| &*id.name == node && !self.is_local(node))
            .cloned()
    }

    fn peers(&self) -> Vec<NodeId> {
        self.live
            .read()
            .iter()
            .filter(|id| !self.is_local(&id.name))
            .cloned()
            .collect()
    }

    fn send_to(&self, node: &str, envelope: &Envelope) -> Result<(), LinkError> {
        let peer = self
            .live_peer(node)
            .ok_or_else(|| LinkError::NoLink(NodeId::new(node, 0)))?;
        let links = self
            .links
            .read()
            .clone()
            .ok_or_else(|| LinkError::NoLink(peer.clone()))?;
        let frame = rmp_serde::to_vec(envelope).map_err(|error| LinkError::Start(error.to_string()))?;
        links.send(&peer, Bytes::from(frame))
    }

    // ----- sends -----

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
            if let Err(error) = self.send_to(&peer.name, &envelope) {
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

    /// Sends `frame` to the members of `key` through its owner, holding it while the owner is unreachable.
    pub(crate) fn group_send(&self, key: &GroupKey, frame: Arc<SharedFrame>, except: Arc<[ConnectionId]>) {
        let stamp = Stamp {
            origin: self.node.clone(),
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        };
        self.group_send_stamped(HeldSend {
            key: key.clone(),
            except,
            frame,
            stamp,
        });
    }

    fn group_send_stamped(&self, send: HeldSend) {
        // Keep the order of sends: while earlier sends are held, later ones queue behind them.
        if !self.held.lock().is_empty() {
            self.hold(send);
            self.flush_held();
            return;
        }
        if let Err(held) = self.try_group_send(send) {
            self.hold(held);
        }
    }

    fn try_group_send(&self, send: HeldSend) -> Result<(), HeldSend> {
        let owner = self.owner_of(&send.key);
        if self.is_local(&owner) {
            self.enqueue(MembershipOp::Send { send });
            return Ok(());
        }
        let envelope = Envelope::GroupSend {
            key: send.key.clone(),
            except: send.except.to_vec(),
            frame: WireFrame::of(&send.frame),
            stamp: send.stamp.clone(),
        };
        match self.send_to(&owner, &envelope) {
            Ok(()) => {
                self.retain(owner, send);
                Ok(())
            }
            Err(error) => {
                tracing::debug!(parent: &self.span, %error, %owner, "group owner unreachable; holding the send");
                Err(send)
            }
        }
    }

    fn retain(&self, owner: Arc<str>, send: HeldSend) {
        let now = tokio::time::Instant::now();
        let mut retained = self.retained.lock();
        while retained
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.at) > RETAIN || retained.len() >= HELD_SENDS_CAP)
        {
            retained.pop_front();
        }
        retained.push_back(Retained { at: now, owner, send });
    }

    /// Sends handed to owners that have now left go again, to the new owners, ahead of anything held since.
    fn resend_retained(&self, left: &[Arc<str>]) {
        let resend: Vec<HeldSend> = {
            let mut retained = self.retained.lock();
            let (gone, kept): (VecDeque<Retained>, VecDeque<Retained>) =
                retained.drain(..).partition(|entry| left.contains(&entry.owner));
            *retained = kept;
            gone.into_iter().map(|entry| entry.send).collect()
        };
        if resend.is_empty() {
            return;
        }
        tracing::info!(parent: &self.span, count = resend.len(), "re-sending group sends whose owner left");
        let mut held = self.held.lock();
        for send in resend.into_iter().rev() {
            held.push_front(send);
        }
    }

    fn hold(&self, send: HeldSend) {
        let mut held = self.held.lock();
        if held.len() >= HELD_SENDS_CAP {
            held.pop_front();
            tracing::warn!(parent: &self.span, cap = HELD_SENDS_CAP, "held group sends over the cap: dropped the oldest");
        }
        held.push_back(send);
    }

    /// Retries held group sends in order; stops at the first that still cannot go.
    fn flush_held(&self) {
        let mut held = self.held.lock();
        while let Some(send) = held.pop_front() {
            if let Err(send) = self.try_group_send(send) {
                held.push_front(send);
                return;
            }
        }
    }

    fn deliver_group_locally(
        &self,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
    ) {
        {
            let mut delivered = self.delivered.lock();
            let last = delivered.entry((key.clone(), stamp.origin.clone())).or_insert(0);
            if stamp.seq <= *last {
                // A re-sent send that arrived here before its owner died.
                return;
            }
            *last = stamp.seq;
        }
        let held_here = self
            .hub(&key.hub)
            .is_some_and(|runtime| runtime.deliver_group(key, frame, except));
        if !held_here {
            // No member here (any more): forget the group's sequence numbers, so the table does not grow with
            // every group that ever existed.
            self.delivered.lock().remove(&(key.clone(), stamp.origin.clone()));
        }
    }

    // ----- membership -----

    /// Adds a connection (of any node) to a group; returns once the membership is in force cluster-wide.
    pub(crate) async fn group_add(&self, key: GroupKey, connection: ConnectionId) -> Result<(), HubError> {
        self.change_membership(key, connection, true).await
    }

    /// Removes a connection (of any node) from a group.
    pub(crate) async fn group_remove(&self, key: GroupKey, connection: ConnectionId) -> Result<(), HubError> {
        self.change_membership(key, connection, false).await
    }

    /// Joins or leaves on the connection's own node, which records it locally and then at the group's owner.
    async fn change_membership(&self, key: GroupKey, connection: ConnectionId, join: bool) -> Result<(), HubError> {
        let home = self.home_of(&connection).to_owned();
        if self.is_local(&home) {
            return if join {
                self.join_local(key, connection).await
            } else {
                self.leave_local(key, connection).await
            };
        }
        let id = connection.clone();
        let request = if join {
            Request::Join { key, connection }
        } else {
            Request::Leave { key, connection }
        };
        match self.request(&home, request).await {
            Answer::Done => Ok(()),
            Answer::PeerLeft => Err(HubError::UnknownConnection(id.to_string())),
            answer => Err(unexpected(answer)),
        }
    }

    async fn join_local(&self, key: GroupKey, connection: ConnectionId) -> Result<(), HubError> {
        let runtime = self
            .hub(&key.hub)
            .ok_or_else(|| HubError::UnknownConnection(connection.to_string()))?;
        runtime.local_join(&key, &connection)?;
        if let Err(error) = self.register(key.clone(), connection.clone()).await {
            runtime.local_leave(&key, &connection);
            return Err(error);
        }
        Ok(())
    }

    async fn leave_local(&self, key: GroupKey, connection: ConnectionId) -> Result<(), HubError> {
        let runtime = self
            .hub(&key.hub)
            .ok_or_else(|| HubError::UnknownConnection(connection.to_string()))?;
        if !runtime.local_leave(&key, &connection) {
            return Err(HubError::UnknownConnection(connection.to_string()));
        }
        self.unregister(key, connection).await
    }

    /// Records at the group's owner that a connection of this node joined.
    async fn register(&self, key: GroupKey, connection: ConnectionId) -> Result<(), HubError> {
        let mut attempts = OWNER_ATTEMPTS;
        loop {
            let owner = self.owner_of(&key);
            if self.is_local(&owner) {
                let from = self.node.clone();
                return self
                    .own_op(|done| MembershipOp::Register {
                        from,
                        key,
                        connection,
                        done,
                    })
                    .await;
            }
            let request = Request::Register {
                key: key.clone(),
                connection: connection.clone(),
            };
            match self.request(&owner, request).await {
                Answer::Done => return Ok(()),
                // The owner left while we asked: the next owner takes the membership.
                Answer::PeerLeft if attempts > 1 => attempts -= 1,
                answer => return Err(unexpected(answer)),
            }
        }
    }

    /// Records at the group's owner that a connection of this node left.
    pub(crate) async fn unregister(&self, key: GroupKey, connection: ConnectionId) -> Result<(), HubError> {
        let owner = self.owner_of(&key);
        if self.is_local(&owner) {
            let from = self.node.clone();
            return self
                .own_op(|done| MembershipOp::Unregister {
                    from,
                    key,
                    connection,
                    done,
                })
                .await;
        }
        match self.request(&owner, Request::Unregister { key, connection }).await {
            Answer::Done => Ok(()),
            // The owner left; the next owner rebuilds from snapshots, which no longer list the connection.
            Answer::PeerLeft => Ok(()),
            answer => Err(unexpected(answer)),
        }
    }

    /// The number of members of a group, cluster-wide.
    pub(crate) async fn group_count(&self, key: GroupKey) -> Result<usize, HubError> {
        let mut attempts = OWNER_ATTEMPTS;
        loop {
            let owner = self.owner_of(&key);
            if self.is_local(&owner) {
                return Ok(self.groups.count(&key).await?);
            }
            match self.request(&owner, Request::Count { key: key.clone() }).await {
                Answer::Count(count) => return Ok(count),
                // The owner left while we asked: ask the next one.
                Answer::PeerLeft if attempts > 1 => attempts -= 1,
                answer => return Err(unexpected(answer)),
            }
        }
    }

    /// The members of a group, cluster-wide.
    pub(crate) async fn group_members(&self, key: GroupKey) -> Result<Vec<ConnectionId>, HubError> {
        let mut attempts = OWNER_ATTEMPTS;
        loop {
            let owner = self.owner_of(&key);
            if self.is_local(&owner) {
                return Ok(self.groups.members(&key).await?);
            }
            match self.request(&owner, Request::Members { key: key.clone() }).await {
                Answer::Members(members) => return Ok(members),
                Answer::PeerLeft if attempts > 1 => attempts -= 1,
                answer => return Err(unexpected(answer)),
            }
        }
    }

    /// A client result from a connection of any node. `arguments` must serialize as a sequence.
    pub(crate) async fn invoke(
        &self,
        hub: &Arc<str>,
        connection: &ConnectionId,
        target: &str,
        arguments: RawValue,
        timeout: Duration,
    ) -> Result<Option<RawValue>, HubError> {
        let home = self.home_of(connection).to_owned();
        if self.is_local(&home) {
            let runtime = self
                .hub(hub)
                .ok_or_else(|| HubError::UnknownConnection(connection.to_string()))?;
            let handle = runtime
                .handle_of(connection)
                .ok_or_else(|| HubError::UnknownConnection(connection.to_string()))?;
            return Ok(handle.invoke(target, arguments, timeout).await?);
        }
        let arguments = match arguments {
            RawValue::MsgPack(bytes) => bytes,
            other => match RawValue::encode(Protocol::MessagePack, &other) {
                Ok(RawValue::MsgPack(bytes)) => bytes,
                _ => {
                    return Err(HubError::ClientResult(ClientResultError::BadResult(
                        "unencodable arguments".into(),
                    )))
                }
            },
        };
        let request = Request::Invoke {
            hub: hub.clone(),
            connection: connection.clone(),
            target: target.to_owned(),
            arguments,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let answer = self
            .request_with_timeout(&home, request, timeout + Duration::from_secs(1))
            .await;
        match answer {
            Answer::Value(None) => Ok(None),
            Answer::Value(Some(bytes)) => RawValue::from_msgpack_bytes(bytes)
                .map(Some)
                .map_err(|error| HubError::ClientResult(ClientResultError::BadResult(error.to_string()))),
            Answer::PeerLeft => Err(HubError::ClientResult(ClientResultError::Disconnected(
                connection.to_string(),
            ))),
            answer => Err(unexpected(answer)),
        }
    }

    async fn request(&self, node: &str, request: Request) -> Answer {
        self.request_with_timeout(node, request, REQUEST_TIMEOUT).await
    }

    async fn request_with_timeout(&self, node: &str, request: Request, timeout: Duration) -> Answer {
        if self.live_peer(node).is_none() {
            return Answer::PeerLeft;
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.pending.lock().insert(
            id,
            Pending {
                node: node.into(),
                reply,
            },
        );
        let envelope = Envelope::Request { id, request };
        // A peer that just joined may not have its link up yet: retry for a short while.
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            match self.send_to(node, &envelope) {
                Ok(()) => break,
                Err(LinkError::NoLink(_)) if started.elapsed() < LINK_WAIT && self.live_peer(node).is_some() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
                Err(error) => {
                    self.pending.lock().remove(&id);
                    tracing::debug!(parent: &self.span, %error, node, "a request could not be sent");
                    return Answer::PeerLeft;
                }
            }
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Answer::PeerLeft,
            Err(_) => {
                self.pending.lock().remove(&id);
                Answer::Failed(WireError::Group(format!(
                    "node '{node}' did not answer within {timeout:?}"
                )))
            }
        }
    }

    // ----- inbound -----

    /// Handles one event from the links. Runs on the node's runtime, one event at a time, in link order.
    pub(crate) fn on_link_event(self: &Arc<Self>, event: LinkEvent) {
        match event {
            LinkEvent::Frame { from, frame } => match rmp_serde::from_slice::<Envelope>(&frame) {
                Ok(envelope) => self.on_envelope(&from.name, envelope),
                Err(error) => {
                    tracing::warn!(parent: &self.span, %error, from = %from, "dropped an undecodable frame from a peer");
                }
            },
            LinkEvent::Up(peer) => {
                // A link (re)opened: whatever was sent while it was down is lost, so both sides exchange their
                // snapshots again (a thawed node gets its memberships back this way) and held sends go.
                tracing::debug!(parent: &self.span, peer = %peer, "link up");
                self.send_snapshot_to(&peer.name);
                let _ = self.send_to(&peer.name, &Envelope::SnapshotRequest);
                self.flush_held();
            }
            LinkEvent::Down(peer) => {
                // Whatever was in flight on that link is lost: requests waiting on the peer fail now rather than
                // at their timeout (a crashed peer's link resets long before gossip declares it dead).
                tracing::debug!(parent: &self.span, peer = %peer, "link down");
                self.fail_pending(&peer.name);
            }
        }
    }

    fn on_envelope(self: &Arc<Self>, from: &str, envelope: Envelope) {
        match envelope {
            Envelope::Broadcast { hub, except, frame } => {
                if let Some(runtime) = self.hub(&hub) {
                    runtime.deliver_all(&frame.into_frame(), &except);
                }
            }
            Envelope::ToConnections { hub, ids, frame } => {
                if let Some(runtime) = self.hub(&hub) {
                    runtime.deliver_to(&ids, &frame.into_frame());
                }
            }
            Envelope::GroupSend {
                key,
                except,
                frame,
                stamp,
            } => {
                // Sent to this node as the owner; if ownership moved meanwhile, pass it on in order.
                self.group_send_stamped(HeldSend {
                    key,
                    except: except.into(),
                    frame: frame.into_frame(),
                    stamp,
                });
            }
            Envelope::GroupDeliver {
                key,
                except,
                frame,
                stamp,
            } => {
                self.deliver_group_locally(&key, &frame.into_frame(), &except.into(), &stamp);
            }
            Envelope::Snapshot { groups } => self.enqueue(MembershipOp::Snapshot {
                from: from.into(),
                groups,
            }),
            Envelope::Request {
                id,
                request: Request::Register { key, connection },
            } => self.enqueue(MembershipOp::Register {
                from: from.into(),
                key,
                connection,
                done: Done::Remote { from: from.into(), id },
            }),
            Envelope::Request {
                id,
                request: Request::Unregister { key, connection },
            } => self.enqueue(MembershipOp::Unregister {
                from: from.into(),
                key,
                connection,
                done: Done::Remote { from: from.into(), id },
            }),
            Envelope::SnapshotRequest => self.send_snapshot_to(from),
            Envelope::Request { id, request } => {
                let router = self.clone();
                let from: Arc<str> = from.into();
                tokio::spawn(async move {
                    let answer = router.serve(&from, request).await;
                    if let Err(error) = router.send_to(&from, &Envelope::Reply { id, answer }) {
                        tracing::debug!(parent: &router.span, %error, "a reply could not be sent");
                    }
                });
            }
            Envelope::Reply { id, answer } => {
                if let Some(pending) = self.pending.lock().remove(&id) {
                    let _ = pending.reply.send(answer);
                }
            }
        }
    }

    async fn serve(&self, from: &Arc<str>, request: Request) -> Answer {
        let result: Result<Answer, HubError> = async {
            Ok(match request {
                Request::Join { key, connection } => {
                    self.join_local(key, connection).await?;
                    Answer::Done
                }
                Request::Leave { key, connection } => {
                    self.leave_local(key, connection).await?;
                    Answer::Done
                }
                // Ordered with snapshots instead; see `on_envelope`.
                Request::Register { .. } | Request::Unregister { .. } => {
                    tracing::warn!(parent: &self.span, from = %from, "a membership request bypassed the queue");
                    Answer::Failed(WireError::Group("misrouted membership request".into()))
                }
                Request::Count { key } => Answer::Count(self.groups.count(&key).await?),
                Request::Members { key } => Answer::Members(self.groups.members(&key).await?),
                Request::Invoke {
                    hub,
                    connection,
                    target,
                    arguments,
                    timeout_ms,
                } => {
                    let arguments = RawValue::from_msgpack_bytes(arguments)
                        .map_err(|error| HubError::ClientResult(ClientResultError::BadResult(error.to_string())))?;
                    let value = self
                        .invoke(&hub, &connection, &target, arguments, Duration::from_millis(timeout_ms))
                        .await?;
                    let value = match value {
                        None => None,
                        Some(RawValue::MsgPack(bytes)) => Some(bytes),
                        Some(other) => match RawValue::encode(Protocol::MessagePack, &other) {
                            Ok(RawValue::MsgPack(bytes)) => Some(bytes),
                            _ => None,
                        },
                    };
                    Answer::Value(value)
                }
            })
        }
        .await;
        result.unwrap_or_else(|error| Answer::Failed(error.into()))
    }

    // ----- membership changes -----

    /// Applies a new live set (this node included): drops members of nodes that left, fails requests waiting on
    /// them, gives up groups this node no longer owns, sends snapshots so owners (old and new) hold every
    /// membership, and retries held sends.
    pub(crate) fn on_view(self: &Arc<Self>, mut live: Vec<NodeId>) {
        live.sort();
        if !live.iter().any(|id| self.is_local(&id.name)) {
            // Membership can briefly report this node as missing (after a stall); keep routing to itself.
            live.push(NodeId::new(&*self.node, 0));
            live.sort();
        }
        let (left, joined) = {
            let mut current = self.live.write();
            if *current == live {
                return;
            }
            let before: HashSet<&NodeId> = current.iter().collect();
            let after: HashSet<&NodeId> = live.iter().collect();
            let left: Vec<Arc<str>> = before
                .difference(&after)
                .map(|id| id.name.clone())
                .filter(|name| !self.is_local(name))
                .collect();
            let joined: Vec<Arc<str>> = after.difference(&before).map(|id| id.name.clone()).collect();
            *current = live;
            (left, joined)
        };
        tracing::info!(parent: &self.span, ?left, ?joined, "membership changed");
        for node in &left {
            // A node that came back as a new generation is in both lists: its old members are gone too.
            self.groups.drop_node(node);
            self.fail_pending(node);
        }
        self.groups.release(|key| self.is_local(&self.owner_of(key)));
        self.resend_retained(&left);
        self.enqueue(MembershipOp::ViewChanged {
            peers: self.peers().into_iter().map(|peer| peer.name).collect(),
        });
        for peer in self.peers() {
            // Push ours, and pull theirs: a snapshot sent in answer to this request is read after this view
            // change, so the groups this node now owns get every member.
            self.send_snapshot_to(&peer.name);
            let _ = self.send_to(&peer.name, &Envelope::SnapshotRequest);
        }
        self.enqueue(MembershipOp::OwnSnapshot);
        self.flush_held();
    }

    /// Fails every request waiting on `node` with [`Answer::PeerLeft`].
    fn fail_pending(&self, node: &str) {
        let failed: Vec<Pending> = {
            let mut pending = self.pending.lock();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, request)| &*request.node == node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| pending.remove(&id)).collect()
        };
        for request in failed {
            let _ = request.reply.send(Answer::PeerLeft);
        }
    }

    fn runtimes(&self) -> Vec<Arc<HubRuntime>> {
        self.hubs.read().values().filter_map(Weak::upgrade).collect()
    }

    /// This node's memberships in the groups `owner` owns.
    /// Every membership this node holds. Whole, not only the groups the receiver owns in this node's view:
    /// views change at slightly different times on different nodes, and the receiver picks by its own.
    fn local_snapshot(&self) -> Vec<(GroupKey, Vec<ConnectionId>)> {
        self.runtimes()
            .iter()
            .flat_map(|runtime| runtime.local_memberships())
            .collect()
    }

    fn send_snapshot_to(&self, node: &str) {
        let groups = self.local_snapshot();
        if let Err(error) = self.send_to(node, &Envelope::Snapshot { groups }) {
            tracing::debug!(parent: &self.span, %error, node, "a snapshot could not be sent");
        }
    }

    /// Makes the groups this node owns hold exactly `from`'s memberships listed in its snapshot.
    async fn apply_snapshot(&self, from: &Arc<str>, groups: Vec<(GroupKey, Vec<ConnectionId>)>) {
        // Only the groups this node owns in its own view; the rest are other owners' business.
        let groups: Vec<(GroupKey, Vec<ConnectionId>)> = groups
            .into_iter()
            .filter(|(key, _)| self.is_local(&self.owner_of(key)))
            .collect();
        let listed: HashSet<GroupKey> = groups.iter().map(|(key, _)| key.clone()).collect();
        for (key, members) in groups {
            if let Err(error) = self.groups.replace(&key, from, members).await {
                tracing::warn!(parent: &self.span, %error, "a snapshot could not be applied");
            }
        }
        // Groups this node owns that the snapshot does not list hold none of `from`'s connections.
        for key in self.groups.keys() {
            if !listed.contains(&key) {
                let _ = self.groups.replace(&key, from, Vec::new()).await;
            }
        }
    }

    /// Stops the group actors (node shutdown).
    pub(crate) fn shutdown(&self) {
        self.groups.stop_all();
    }
}

fn push_capped(queue: &mut VecDeque<HeldSend>, send: HeldSend, span: &tracing::Span) {
    if queue.len() >= HELD_SENDS_CAP {
        queue.pop_front();
        tracing::warn!(parent: span, cap = HELD_SENDS_CAP, "group sends held while settling over the cap: dropped the oldest");
    }
    queue.push_back(send);
}

fn unexpected(answer: Answer) -> HubError {
    match answer {
        Answer::Failed(error) => error.into(),
        Answer::PeerLeft => HubError::Group(GroupError::Unavailable("the node left the cluster".into())),
        other => HubError::Group(GroupError::Unavailable(format!(
            "unexpected answer from a node: {other:?}"
        ))),
    }
}
