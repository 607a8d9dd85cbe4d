//! Links between processes over ractor_cluster, authenticated by the cluster secret.
//!
//! # What this module owns
//!
//! [`RactorLinks`]: this process's ractor_cluster `NodeServer`, the TCP listener in front of it, and one router
//! actor (remotable, in the process group [`router_group`] of this incarnation) that sends and receives every link
//! message. Each link has a bounded frame queue, a sender task that batches, and a credit window.
//!
//! # How it works
//!
//! * **Identity.** The ractor node name is the incarnation, `"{name}.{generation}"`, so two generations of a node are
//!   two ractor nodes. The cookie is the cluster secret: a peer with another secret fails ractor_cluster's challenge,
//!   gets no link, and the failed connection is logged with `tracing::warn`. A connection that has not authenticated
//!   within [`AUTH_DEADLINE`] (garbage bytes, a silent client) is closed.
//! * **Driven by membership.** For each live peer without a link, only the lower [`NodeId`] dials, at most once per
//!   backoff (1 s doubling to 8 s). A link is torn down (its session actor stopped: ractor_cluster has no disconnect
//!   call) only when a peer seen live leaves the live set or a newer generation of it is live, never for a peer not
//!   yet seen live: the accepting side learns of the dialer a little later. A link whose TCP session ends (a killed
//!   peer's reset) goes down at once; both paths emit one [`LinkEvent::Down`].
//! * **Finding the peer's router.** Once a session is ready, the peer's router is the member of the process group
//!   `router_group(peer)` whose remote node id is that session's (unambiguous across processes).
//! * **Batching and credit.** [`Links::send`] puts the frame in the peer's bounded queue ([`LinkConfig::queue_frames`]
//!   frames) or fails with [`LinkError::QueueFull`]. The link's sender task takes up to [`LinkConfig::batch_frames`]
//!   frames (and at most [`LinkConfig::max_frame`] bytes), waiting up to [`LinkConfig::batch_linger`] for a partial
//!   batch, and casts them as one message to the peer's router. The receiving router delivers the frames to its
//!   event channel (waiting when that channel is full) and, every [`ACK_EVERY`] batches, casts a cumulative
//!   acknowledgement back. A sender never has more than [`WINDOW_BATCHES`] batches unacknowledged, so a slow or
//!   stalled peer stops the sender task, the queue fills, and sends fail with `QueueFull`: the sender's memory stays
//!   flat (queue + window), and the receiver's router mailbox holds at most one window per peer. Counts are per
//!   link epoch, so a new session starts a fresh window.
//! * **Frame cap.** `max_frame` may not exceed [`MAX_LINK_FRAME`] (8 MiB); a batch is at most `max_frame` bytes of
//!   frames plus a few bytes per frame, so every link message stays under ractor_cluster's 16 MiB inbound limit, which
//!   is what closes a connection. Oversized frames are refused at [`Links::send`]; a peer's oversized frame is dropped
//!   on arrival, and a message that does not decode is dropped by ractor without harm to the link.
//!
//! # One per process
//!
//! ractor_cluster keeps process-global state (the `pg` groups and the actor registry, which every `NodeServer`
//! announces to its peers), so several nodes in one process interfere. A process therefore holds at most one
//! [`RactorLinks`]: a second [`RactorLinks::start`] while one runs returns [`LinkError::Start`]. In-process clusters
//! use [`super::memory`] instead.
//!
//! ractor_cluster's `NodeServer` always runs a listener of its own; it is bound to `127.0.0.1` on an ephemeral port
//! and never advertised: peers dial the listener this module binds on [`LinkConfig::listen`], whose accepted sockets
//! are handed to the `NodeServer`.
//!
//! # What it may call
//!
//! ractor, ractor_cluster, tokio, bytes, parking_lot, tracing, and the link types of [`super`]. No hub types.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use ::ractor::message::{BoxedDowncastErr, SerializedMessage};
use ::ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, Message};
use bytes::{Buf, BufMut, Bytes};
use parking_lot::RwLock;
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage, NodeSessionMessage};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::{LinkConfig, LinkError, LinkEvent, Links, PeerInfo};
use crate::cluster::membership::NodeId;

/// The largest [`LinkConfig::max_frame`] accepted: half of ractor_cluster's inbound frame limit (16 MiB), leaving
/// room for a batch's framing.
pub const MAX_LINK_FRAME: usize = 8 << 20;

/// Batches a sender may have unacknowledged on one link.
pub const WINDOW_BATCHES: u64 = 32;

/// A receiver acknowledges every this many batches (cumulatively); must divide into [`WINDOW_BATCHES`].
pub const ACK_EVERY: u64 = 8;

/// A connection that has not authenticated within this time is closed.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(5);

/// The first wait between two dials of the same peer; it doubles up to [`DIAL_BACKOFF_MAX`].
pub const DIAL_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between two dials of the same peer.
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(8);

/// How long one dial (the TCP connect) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the router looks at dials, pending sessions and authentication deadlines.
const TICK: Duration = Duration::from_millis(250);

/// Ticks a ready session may wait for the peer's router to appear in its group before it is closed.
const ROUTER_LOOKUP_TICKS: u32 = 20;

/// The host part of every ractor node name (`"{incarnation}@hubmesh"`); peers are found by address, not by host.
const HOSTNAME: &str = "hubmesh";

/// Version byte of the link message encoding.
const WIRE_VERSION: u8 = 1;

const VARIANT_BATCH: &str = "hubmesh.batch";
const VARIANT_ACK: &str = "hubmesh.ack";

/// Whether this process runs a [`RactorLinks`].
static PROCESS_SLOT: AtomicBool = AtomicBool::new(false);

/// The process group of the router of incarnation `id`.
pub fn router_group(id: &NodeId) -> String {
    format!("hubmesh.router:{id}")
}

/// The ractor node name of incarnation `id`.
fn node_name(id: &NodeId) -> String {
    id.to_string()
}

/// The incarnation named by a peer's ractor name (`"{name}.{generation}@{host}"`).
fn parse_peer(ractor_name: &str) -> Option<NodeId> {
    let (node, _host) = ractor_name.rsplit_once('@')?;
    let (name, generation) = node.rsplit_once('.')?;
    if name.is_empty() {
        return None;
    }
    Some(NodeId::new(name, generation.parse::<u64>().ok()?))
}

fn peer_of(session: &NodeServerSessionInformation) -> Option<NodeId> {
    session.peer_name.as_ref().and_then(|name| parse_peer(&name.name))
}

/// Holds the process's one [`RactorLinks`] slot until dropped.
struct ProcessSlot;

impl ProcessSlot {
    fn acquire() -> Result<Self, LinkError> {
        PROCESS_SLOT
            .compare_exchange(false, true, AtomicOrdering::SeqCst, AtomicOrdering::SeqCst)
            .map(|_| ProcessSlot)
            .map_err(|_| {
                LinkError::Start(
                    "ractor_cluster links already run in this process: a process holds at most one RactorLinks \
                     (in-process clusters use memory links)"
                        .to_owned(),
                )
            })
    }
}

impl Drop for ProcessSlot {
    fn drop(&mut self) {
        PROCESS_SLOT.store(false, AtomicOrdering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Link messages
// ---------------------------------------------------------------------------------------------------------------

/// Frames from one incarnation, in send order.
#[derive(Debug)]
struct Batch {
    from: NodeId,
    epoch: u64,
    frames: Vec<Bytes>,
}

/// The receiver of `epoch`'s batches has delivered `count` of them.
#[derive(Debug)]
struct Ack {
    from: NodeId,
    epoch: u64,
    count: u64,
}

/// Local notices to the router.
enum Control {
    UpdatePeers(Vec<PeerInfo>),
    SessionOpened(NodeServerSessionInformation),
    SessionAuthenticated(NodeServerSessionInformation),
    SessionReady(NodeServerSessionInformation),
    SessionClosed(NodeServerSessionInformation),
    DialFailed { peer: NodeId, error: String },
    Tick,
}

/// The router's messages: batches and acknowledgements travel between processes, controls stay local.
enum RouterMsg {
    Batch(Batch),
    Ack(Ack),
    Control(Control),
}

fn put_sender(buf: &mut Vec<u8>, from: &NodeId, epoch: u64) {
    buf.put_u8(WIRE_VERSION);
    let name = from.name.as_bytes();
    // Names are short; one longer than u16 cannot be sent and is cut (the peer then drops the message).
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    buf.put_u16(len);
    buf.put_slice(name.get(..usize::from(len)).unwrap_or(name));
    buf.put_u64(from.generation);
    buf.put_u64(epoch);
}

fn get_sender(buf: &mut Bytes) -> Option<(NodeId, u64)> {
    if buf.remaining() < 3 || buf.get_u8() != WIRE_VERSION {
        return None;
    }
    let len = usize::from(buf.get_u16());
    if buf.remaining() < len + 16 {
        return None;
    }
    let name = std::str::from_utf8(&buf.split_to(len)).ok()?.to_owned();
    let generation = buf.get_u64();
    let epoch = buf.get_u64();
    Some((NodeId::new(name, generation), epoch))
}

impl Batch {
    fn encode(&self) -> Vec<u8> {
        let size: usize = self.frames.iter().map(|frame| frame.len() + 4).sum();
        let mut buf = Vec::with_capacity(size + self.from.name.len() + 32);
        put_sender(&mut buf, &self.from, self.epoch);
        buf.put_u32(u32::try_from(self.frames.len()).unwrap_or(u32::MAX));
        for frame in &self.frames {
            buf.put_u32(u32::try_from(frame.len()).unwrap_or(u32::MAX));
            buf.put_slice(frame);
        }
        buf
    }

    fn decode(bytes: Vec<u8>) -> Option<Self> {
        let mut buf = Bytes::from(bytes);
        let (from, epoch) = get_sender(&mut buf)?;
        if buf.remaining() < 4 {
            return None;
        }
        let count = buf.get_u32() as usize;
        // Every frame takes at least its 4-byte length: a count larger than that is a lie.
        if count > buf.remaining() / 4 {
            return None;
        }
        let mut frames = Vec::with_capacity(count);
        for _ in 0..count {
            if buf.remaining() < 4 {
                return None;
            }
            let len = buf.get_u32() as usize;
            if buf.remaining() < len {
                return None;
            }
            frames.push(buf.split_to(len));
        }
        Some(Batch { from, epoch, frames })
    }
}

impl Ack {
    fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.from.name.len() + 40);
        put_sender(&mut buf, &self.from, self.epoch);
        buf.put_u64(self.count);
        buf
    }

    fn decode(bytes: Vec<u8>) -> Option<Self> {
        let mut buf = Bytes::from(bytes);
        let (from, epoch) = get_sender(&mut buf)?;
        if buf.remaining() < 8 {
            return None;
        }
        Some(Ack {
            from,
            epoch,
            count: buf.get_u64(),
        })
    }
}

impl Message for RouterMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        let (variant, args) = match self {
            RouterMsg::Batch(batch) => (VARIANT_BATCH, batch.encode()),
            RouterMsg::Ack(ack) => (VARIANT_ACK, ack.encode()),
            RouterMsg::Control(_) => return Err(BoxedDowncastErr),
        };
        Ok(SerializedMessage::Cast {
            variant: variant.to_owned(),
            args,
            metadata: None,
        })
    }

    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match message {
            SerializedMessage::Cast { variant, args, .. } if variant == VARIANT_BATCH => {
                Batch::decode(args).map(RouterMsg::Batch).ok_or(BoxedDowncastErr)
            }
            SerializedMessage::Cast { variant, args, .. } if variant == VARIANT_ACK => {
                Ack::decode(args).map(RouterMsg::Ack).ok_or(BoxedDowncastErr)
            }
            _ => Err(BoxedDowncastErr),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The public handle
// ---------------------------------------------------------------------------------------------------------------

/// A process's links to its peers over ractor_cluster (see the module documentation). At most one per process.
///
/// Dropping it stops the router and the `NodeServer` with all its sessions (peers see the links go down) and frees
/// the process's slot; [`RactorLinks::shutdown`] does the same and waits for it.
pub struct RactorLinks {
    self_id: NodeId,
    advertised: String,
    max_frame: usize,
    senders: Arc<RwLock<HashMap<NodeId, mpsc::Sender<Bytes>>>>,
    router: ActorRef<RouterMsg>,
    node_server: ActorRef<NodeServerMessage>,
    tasks: Vec<JoinHandle<()>>,
    _slot: ProcessSlot,
}

impl fmt::Debug for RactorLinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RactorLinks")
            .field("self_id", &self.self_id)
            .field("advertised", &self.advertised)
            .finish_non_exhaustive()
    }
}

fn validate(config: &LinkConfig) -> Result<(), LinkError> {
    let invalid = |reason: &str| Err(LinkError::Start(reason.to_owned()));
    if config.secret.is_empty() {
        return invalid("the cluster secret must not be empty");
    }
    if config.queue_frames == 0 {
        return invalid("queue_frames must be at least 1");
    }
    if config.batch_frames == 0 {
        return invalid("batch_frames must be at least 1");
    }
    if config.max_frame == 0 || config.max_frame > MAX_LINK_FRAME {
        return Err(LinkError::Start(format!(
            "max_frame must be between 1 and {MAX_LINK_FRAME} bytes (ractor_cluster refuses messages over 16 MiB)"
        )));
    }
    Ok(())
}

impl RactorLinks {
    /// Starts this process's links for incarnation `self_id`: binds [`LinkConfig::listen`], starts the ractor_cluster
    /// `NodeServer` (cookie: the cluster secret) and the router. Link events go to `events`; links open once
    /// [`Links::update_peers`] names live peers.
    ///
    /// Fails if the configuration is out of range, the address cannot be bound, the advertised address is
    /// unspecified, or this process already runs a [`RactorLinks`].
    pub async fn start(
        self_id: NodeId,
        config: LinkConfig,
        events: mpsc::Sender<LinkEvent>,
    ) -> Result<Arc<RactorLinks>, LinkError> {
        validate(&config)?;
        let slot = ProcessSlot::acquire()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|error| LinkError::Start(format!("cannot bind the link address {}: {error}", config.listen)))?;
        let bound = listener
            .local_addr()
            .map_err(|error| LinkError::Start(format!("cannot read the bound link address: {error}")))?;
        let advertised = advertise(config.advertise, bound)?;

        let server = NodeServer::new(
            0,
            config.secret.clone(),
            node_name(&self_id),
            HOSTNAME.to_owned(),
            None,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let (node_server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|error| LinkError::Start(format!("the ractor_cluster node server did not start: {error}")))?;

        let senders = Arc::new(RwLock::new(HashMap::new()));
        let args = RouterArgs {
            self_id: self_id.clone(),
            config: config.clone(),
            events,
            node_server: node_server.clone(),
            senders: Arc::clone(&senders),
        };
        let router = match Actor::spawn(None, Router, args).await {
            Ok((router, _)) => router,
            Err(error) => {
                node_server.stop(None);
                return Err(LinkError::Start(format!("the link router did not start: {error}")));
            }
        };
        let subscribed = node_server.cast(NodeServerMessage::SubscribeToEvents {
            id: "hubmesh.links".to_owned(),
            subscription: Box::new(SessionEvents { router: router.clone() }),
        });
        if subscribed.is_err() {
            router.stop(None);
            node_server.stop(None);
            return Err(LinkError::Start(
                "the ractor_cluster node server stopped at once".to_owned(),
            ));
        }

        let span = tracing::info_span!("links", node = %self_id, address = %advertised);
        let accept = tokio::spawn(accept_loop(listener, node_server.clone()).instrument(span.clone()));
        let tick_router = router.clone();
        let ticks = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if tick_router.cast(RouterMsg::Control(Control::Tick)).is_err() {
                    return;
                }
            }
        });
        tracing::info!(parent: &span, "links listening");
        Ok(Arc::new(RactorLinks {
            self_id,
            advertised: advertised.to_string(),
            max_frame: config.max_frame,
            senders,
            router,
            node_server,
            tasks: vec![accept, ticks],
            _slot: slot,
        }))
    }

    /// This process's incarnation.
    pub fn id(&self) -> &NodeId {
        &self.self_id
    }

    /// Stops the links and waits until the router and the `NodeServer` have stopped (peers see the links go down).
    pub async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.node_server
            .stop_children(Some("hubmesh: links shut down".to_owned()));
        let _ = self.router.stop_and_wait(None, Some(Duration::from_secs(2))).await;
        let _ = self.node_server.stop_and_wait(None, Some(Duration::from_secs(2))).await;
    }
}

impl Drop for RactorLinks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.node_server
            .stop_children(Some("hubmesh: links dropped".to_owned()));
        self.node_server.stop(None);
        self.router.stop(None);
    }
}

fn advertise(configured: SocketAddr, bound: SocketAddr) -> Result<SocketAddr, LinkError> {
    let mut advertised = configured;
    if advertised.ip().is_unspecified() {
        advertised.set_ip(bound.ip());
    }
    if advertised.port() == 0 {
        advertised.set_port(bound.port());
    }
    if advertised.ip().is_unspecified() {
        return Err(LinkError::Start(format!(
            "the link address {bound} is unspecified: set an advertise address peers can reach"
        )));
    }
    Ok(advertised)
}

/// Accepts link connections and hands them to the `NodeServer`, which authenticates them.
async fn accept_loop(listener: TcpListener, node_server: ActorRef<NodeServerMessage>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer_addr)) => {
                let _ = stream.set_nodelay(true);
                let local_addr = stream.local_addr().unwrap_or(peer_addr);
                let opened = node_server.cast(NodeServerMessage::ConnectionOpened {
                    stream: Box::new(NetworkStream::Raw {
                        peer_addr,
                        local_addr,
                        stream,
                    }),
                    is_server: true,
                });
                if opened.is_err() {
                    return;
                }
                tracing::debug!(%peer_addr, "link connection accepted");
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a link connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Links for RactorLinks {
    fn advertised_address(&self) -> String {
        self.advertised.clone()
    }

    fn send(&self, peer: &NodeId, frame: Bytes) -> Result<(), LinkError> {
        if frame.len() > self.max_frame {
            return Err(LinkError::TooLarge {
                size: frame.len(),
                max: self.max_frame,
            });
        }
        let senders = self.senders.read();
        let Some(sender) = senders.get(peer) else {
            return Err(LinkError::NoLink(peer.clone()));
        };
        sender.try_send(frame).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => LinkError::QueueFull(peer.clone()),
            mpsc::error::TrySendError::Closed(_) => LinkError::NoLink(peer.clone()),
        })
    }

    fn update_peers(&self, live: &[PeerInfo]) {
        let _ = self
            .router
            .cast(RouterMsg::Control(Control::UpdatePeers(live.to_vec())));
    }

    fn connected(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self.senders.read().keys().cloned().collect();
        peers.sort();
        peers
    }
}

/// Forwards the `NodeServer`'s session events to the router.
struct SessionEvents {
    router: ActorRef<RouterMsg>,
}

impl SessionEvents {
    fn notify(&self, control: Control) {
        let _ = self.router.cast(RouterMsg::Control(control));
    }
}

impl NodeEventSubscription for SessionEvents {
    fn node_session_opened(&self, session: NodeServerSessionInformation) {
        self.notify(Control::SessionOpened(session));
    }

    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        self.notify(Control::SessionClosed(session));
    }

    fn node_session_authenticated(&self, session: NodeServerSessionInformation) {
        self.notify(Control::SessionAuthenticated(session));
    }

    fn node_session_ready(&self, session: NodeServerSessionInformation) {
        self.notify(Control::SessionReady(session));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The router actor
// ---------------------------------------------------------------------------------------------------------------

struct Router;

struct RouterArgs {
    self_id: NodeId,
    config: LinkConfig,
    events: mpsc::Sender<LinkEvent>,
    node_server: ActorRef<NodeServerMessage>,
    senders: Arc<RwLock<HashMap<NodeId, mpsc::Sender<Bytes>>>>,
}

struct SessionEntry {
    actor: ActorRef<NodeSessionMessage>,
    opened: Instant,
    authenticated: bool,
}

struct DialState {
    next_at: Instant,
    backoff: Duration,
    attempts: u32,
}

struct LinkState {
    session: ActorRef<NodeSessionMessage>,
    remote: ActorRef<RouterMsg>,
    epoch: u64,
    acked: watch::Sender<u64>,
    sender: JoinHandle<()>,
    span: tracing::Span,
}

/// What this node has received on a peer's current epoch.
struct Inbound {
    epoch: u64,
    batches: u64,
}

struct RouterState {
    myself: ActorRef<RouterMsg>,
    self_id: NodeId,
    config: LinkConfig,
    events: mpsc::Sender<LinkEvent>,
    node_server: ActorRef<NodeServerMessage>,
    senders: Arc<RwLock<HashMap<NodeId, mpsc::Sender<Bytes>>>>,
    /// Live peers (this node excluded) and their link addresses, from the last membership view.
    live: HashMap<NodeId, String>,
    seen_live: HashSet<NodeId>,
    links: HashMap<NodeId, LinkState>,
    sessions: HashMap<ActorId, SessionEntry>,
    /// Ready sessions whose peer router is not yet in its group, with the ticks waited.
    pending: HashMap<ActorId, (NodeServerSessionInformation, u32)>,
    dials: HashMap<NodeId, DialState>,
    inbound: HashMap<NodeId, Inbound>,
    next_epoch: u64,
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        ::ractor::pg::join(router_group(&args.self_id), vec![myself.get_cell()]);
        Ok(RouterState {
            myself,
            self_id: args.self_id,
            config: args.config,
            events: args.events,
            node_server: args.node_server,
            senders: args.senders,
            live: HashMap::new(),
            seen_live: HashSet::new(),
            links: HashMap::new(),
            sessions: HashMap::new(),
            pending: HashMap::new(),
            dials: HashMap::new(),
            inbound: HashMap::new(),
            next_epoch: 1,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMsg>,
        message: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RouterMsg::Batch(batch) => state.on_batch(batch).await,
            RouterMsg::Ack(ack) => state.on_ack(&ack),
            RouterMsg::Control(control) => state.on_control(control).await,
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<RouterMsg>, state: &mut RouterState) -> Result<(), ActorProcessingErr> {
        let peers: Vec<NodeId> = state.links.keys().cloned().collect();
        for peer in peers {
            state.close_link(&peer, "links stopped", true).await;
        }
        Ok(())
    }
}

impl RouterState {
    async fn on_control(&mut self, control: Control) {
        match control {
            Control::UpdatePeers(live) => self.update_peers(live).await,
            Control::SessionOpened(session) => {
                self.sessions.insert(
                    session.actor.get_id(),
                    SessionEntry {
                        actor: session.actor.clone(),
                        opened: Instant::now(),
                        authenticated: false,
                    },
                );
            }
            Control::SessionAuthenticated(session) => self.mark_authenticated(&session),
            Control::SessionReady(session) => {
                self.mark_authenticated(&session);
                self.on_session_ready(session).await;
            }
            Control::SessionClosed(session) => self.on_session_closed(&session).await,
            Control::DialFailed { peer, error } => {
                let attempts = self.dials.get(&peer).map_or(0, |dial| dial.attempts);
                if attempts == 5 {
                    tracing::warn!(peer = %peer, %error, attempts, "cannot dial a live peer; still retrying");
                } else {
                    tracing::debug!(peer = %peer, %error, attempts, "dial failed");
                }
            }
            Control::Tick => self.on_tick().await,
        }
    }

    fn mark_authenticated(&mut self, session: &NodeServerSessionInformation) {
        let entry = self
            .sessions
            .entry(session.actor.get_id())
            .or_insert_with(|| SessionEntry {
                actor: session.actor.clone(),
                opened: Instant::now(),
                authenticated: true,
            });
        entry.authenticated = true;
    }

    /// Whether a link to `peer` must not exist: it was live and is no longer, or a newer generation is live.
    fn unwanted(&self, peer: &NodeId) -> bool {
        let gone = !self.live.contains_key(peer) && self.seen_live.contains(peer);
        let superseded = self
            .live
            .keys()
            .any(|other| other.name == peer.name && other.generation > peer.generation);
        gone || superseded
    }

    async fn update_peers(&mut self, live: Vec<PeerInfo>) {
        self.live = live
            .into_iter()
            .filter(|peer| peer.id != self.self_id)
            .map(|peer| (peer.id, peer.link_address))
            .collect();
        self.seen_live.extend(self.live.keys().cloned());
        let doomed: Vec<NodeId> = self.links.keys().filter(|peer| self.unwanted(peer)).cloned().collect();
        for peer in doomed {
            self.close_link(&peer, "no longer live or superseded", true).await;
        }
        let stale: Vec<NodeId> = self
            .inbound
            .keys()
            .filter(|peer| self.unwanted(peer))
            .cloned()
            .collect();
        for peer in stale {
            self.inbound.remove(&peer);
        }
        let live = &self.live;
        self.dials.retain(|peer, _| live.contains_key(peer));
        self.dial_missing();
    }

    /// Dials every live peer above this node that has no link and whose backoff has passed.
    fn dial_missing(&mut self) {
        let now = Instant::now();
        for (peer, address) in &self.live {
            if &self.self_id >= peer || self.links.contains_key(peer) {
                continue;
            }
            let dial = self.dials.entry(peer.clone()).or_insert(DialState {
                next_at: now,
                backoff: DIAL_BACKOFF,
                attempts: 0,
            });
            if now < dial.next_at {
                continue;
            }
            dial.next_at = now + dial.backoff;
            dial.backoff = (dial.backoff * 2).min(DIAL_BACKOFF_MAX);
            dial.attempts += 1;
            let node_server = self.node_server.clone();
            let router = self.myself.clone();
            let peer = peer.clone();
            let address = address.clone();
            let span = tracing::debug_span!("dial", peer = %peer, %address);
            tokio::spawn(
                async move {
                    let outcome = tokio::time::timeout(
                        DIAL_TIMEOUT,
                        ractor_cluster::client_connect(&node_server, address.as_str()),
                    )
                    .await;
                    let error = match outcome {
                        Ok(Ok(())) => {
                            tracing::debug!("dialed; authenticating");
                            return;
                        }
                        Ok(Err(error)) => error.to_string(),
                        Err(_) => "timed out".to_owned(),
                    };
                    let _ = router.cast(RouterMsg::Control(Control::DialFailed { peer, error }));
                }
                .instrument(span),
            );
        }
    }

    async fn on_tick(&mut self) {
        self.dial_missing();
        let now = Instant::now();
        for entry in self.sessions.values() {
            if !entry.authenticated && now.duration_since(entry.opened) > AUTH_DEADLINE {
                entry.actor.stop(Some("hubmesh: not authenticated in time".to_owned()));
            }
        }
        let pending: Vec<ActorId> = self.pending.keys().copied().collect();
        for id in pending {
            let Some((session, waited)) = self.pending.remove(&id) else {
                continue;
            };
            if waited >= ROUTER_LOOKUP_TICKS {
                let peer = session.peer_name.as_ref().map(|name| name.name.clone());
                tracing::warn!(?peer, "a peer session never showed a link router; closing it");
                session.actor.stop(Some("hubmesh: no link router".to_owned()));
                continue;
            }
            if !self.try_open(session.clone()).await {
                self.pending.insert(id, (session, waited + 1));
            }
        }
    }

    async fn on_session_ready(&mut self, session: NodeServerSessionInformation) {
        let id = session.actor.get_id();
        if !self.try_open(session.clone()).await && self.sessions.contains_key(&id) {
            self.pending.insert(id, (session, 0));
        }
    }

    /// Opens the link carried by a ready session, unless it must not exist. Returns false if the peer's router is
    /// not yet known (try again later).
    async fn try_open(&mut self, session: NodeServerSessionInformation) -> bool {
        let Some(peer) = peer_of(&session) else {
            tracing::warn!(name = ?session.peer_name, "a peer with an unreadable node name; closing its session");
            session.actor.stop(Some("hubmesh: unreadable node name".to_owned()));
            return true;
        };
        if peer == self.self_id || self.unwanted(&peer) {
            tracing::info!(peer = %peer, "refusing a link to a dead, superseded or self incarnation");
            session.actor.stop(Some("hubmesh: unwanted incarnation".to_owned()));
            return true;
        }
        if let Some(link) = self.links.get(&peer) {
            if link.session.get_id() == session.actor.get_id() {
                return true;
            }
        }
        let remote = ::ractor::pg::get_members(&router_group(&peer))
            .into_iter()
            .find(|cell| !cell.get_id().is_local() && cell.get_id().node() == session.node_id);
        let Some(remote) = remote else {
            return false;
        };
        if self.links.contains_key(&peer) {
            self.close_link(&peer, "replaced by a new session", true).await;
        }
        self.open_link(peer, session.actor, ActorRef::from(remote)).await;
        true
    }

    async fn open_link(&mut self, peer: NodeId, session: ActorRef<NodeSessionMessage>, remote: ActorRef<RouterMsg>) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let span = tracing::info_span!("link", node = %self.self_id, peer = %peer, epoch);
        let (frames, queue) = mpsc::channel(self.config.queue_frames);
        let (acked, acked_rx) = watch::channel(0);
        let sender = tokio::spawn(
            SenderTask {
                queue,
                remote: remote.clone(),
                acked: acked_rx,
                from: self.self_id.clone(),
                epoch,
                batch_frames: self.config.batch_frames,
                batch_bytes: self.config.max_frame,
                linger: self.config.batch_linger,
            }
            .run()
            .instrument(span.clone()),
        );
        self.senders.write().insert(peer.clone(), frames);
        self.links.insert(
            peer.clone(),
            LinkState {
                session,
                remote,
                epoch,
                acked,
                sender,
                span: span.clone(),
            },
        );
        self.dials.remove(&peer);
        tracing::info!(parent: &span, "link up");
        let _ = self.events.send(LinkEvent::Up(peer)).await;
    }

    /// Closes the link to `peer`, if any: drops its queue and reports `Down`. `stop_session` also closes the TCP
    /// session (when membership, not the network, ended the link).
    async fn close_link(&mut self, peer: &NodeId, reason: &str, stop_session: bool) {
        let Some(link) = self.links.remove(peer) else {
            return;
        };
        self.senders.write().remove(peer);
        link.sender.abort();
        if stop_session {
            link.session.stop(Some(format!("hubmesh: {reason}")));
        }
        tracing::info!(parent: &link.span, reason, "link down");
        let _ = self.events.send(LinkEvent::Down(peer.clone())).await;
    }

    async fn on_session_closed(&mut self, session: &NodeServerSessionInformation) {
        let id = session.actor.get_id();
        self.pending.remove(&id);
        if let Some(entry) = self.sessions.remove(&id) {
            if !entry.authenticated {
                tracing::warn!(
                    peer_addr = %session.peer_addr,
                    claimed_name = ?session.peer_name.as_ref().map(|name| &name.name),
                    dialed = !session.is_server,
                    "a link connection closed before authenticating: wrong cluster secret, or not a hubmesh node"
                );
            }
        }
        let peer = self
            .links
            .iter()
            .find(|(_, link)| link.session.get_id() == id)
            .map(|(peer, _)| peer.clone());
        if let Some(peer) = peer {
            self.close_link(&peer, "session closed", false).await;
            self.dial_missing();
        }
    }

    /// Finds the authenticated session of `peer` when its first batch arrives before the session's ready notice.
    async fn adopt_session_of(&mut self, peer: &NodeId) {
        let sessions = ::ractor::call_t!(self.node_server, NodeServerMessage::GetSessions, 500);
        let Ok(sessions) = sessions else {
            return;
        };
        let session = sessions
            .into_values()
            .find(|session| peer_of(session).as_ref() == Some(peer));
        if let Some(session) = session {
            self.mark_authenticated(&session);
            self.try_open(session).await;
        }
    }

    async fn on_batch(&mut self, batch: Batch) {
        let peer = batch.from;
        if !self.links.contains_key(&peer) {
            self.adopt_session_of(&peer).await;
        }
        let Some(link) = self.links.get(&peer) else {
            tracing::debug!(peer = %peer, frames = batch.frames.len(), "dropped a batch from a peer with no link");
            return;
        };
        let remote = link.remote.clone();
        let span = link.span.clone();
        for frame in batch.frames {
            if frame.len() > self.config.max_frame {
                let (size, max) = (frame.len(), self.config.max_frame);
                tracing::warn!(parent: &span, size, max, "dropped an oversized frame");
                continue;
            }
            let delivered = self.events.send(LinkEvent::Frame {
                from: peer.clone(),
                frame,
            });
            if delivered.await.is_err() {
                return;
            }
        }
        let inbound = self.inbound.entry(peer.clone()).or_insert(Inbound {
            epoch: batch.epoch,
            batches: 0,
        });
        if inbound.epoch != batch.epoch {
            inbound.epoch = batch.epoch;
            inbound.batches = 0;
        }
        inbound.batches += 1;
        if inbound.batches.is_multiple_of(ACK_EVERY) {
            let ack = Ack {
                from: self.self_id.clone(),
                epoch: batch.epoch,
                count: inbound.batches,
            };
            send_ack(&peer, remote, ack);
        }
    }

    fn on_ack(&mut self, ack: &Ack) {
        if let Some(link) = self.links.get(&ack.from) {
            if link.epoch == ack.epoch {
                link.acked.send_if_modified(|acked| {
                    let advanced = ack.count > *acked;
                    if advanced {
                        *acked = ack.count;
                    }
                    advanced
                });
            }
        }
    }
}

/// Sends `ack` to the peer's router on the link's session or, if that session just ended, on any other.
fn send_ack(peer: &NodeId, remote: ActorRef<RouterMsg>, ack: Ack) {
    let Err(error) = remote.cast(RouterMsg::Ack(ack)) else {
        return;
    };
    let ::ractor::MessagingErr::SendErr(RouterMsg::Ack(mut ack)) = error else {
        return;
    };
    for cell in ::ractor::pg::get_members(&router_group(peer)) {
        if cell.get_id().is_local() || cell.get_id() == remote.get_id() {
            continue;
        }
        match ActorRef::<RouterMsg>::from(cell).cast(RouterMsg::Ack(ack)) {
            Ok(()) => return,
            Err(::ractor::MessagingErr::SendErr(RouterMsg::Ack(back))) => ack = back,
            Err(_) => return,
        }
    }
}

/// One link's sender: batches the queue and keeps at most [`WINDOW_BATCHES`] unacknowledged.
struct SenderTask {
    queue: mpsc::Receiver<Bytes>,
    remote: ActorRef<RouterMsg>,
    acked: watch::Receiver<u64>,
    from: NodeId,
    epoch: u64,
    batch_frames: usize,
    batch_bytes: usize,
    linger: Duration,
}

impl SenderTask {
    async fn run(mut self) {
        let mut sent: u64 = 0;
        let mut carry: Option<Bytes> = None;
        loop {
            let first = match carry.take() {
                Some(frame) => frame,
                None => match self.queue.recv().await {
                    Some(frame) => frame,
                    None => return,
                },
            };
            let (frames, next) = self.fill(first).await;
            carry = next;
            while sent.saturating_sub(*self.acked.borrow_and_update()) >= WINDOW_BATCHES {
                if self.acked.changed().await.is_err() {
                    return;
                }
            }
            let batch = Batch {
                from: self.from.clone(),
                epoch: self.epoch,
                frames,
            };
            if self.remote.cast(RouterMsg::Batch(batch)).is_err() {
                tracing::debug!("the peer's router is gone; the sender stops");
                return;
            }
            sent += 1;
        }
    }

    /// Completes a batch that starts with `first`: up to `batch_frames` frames and `batch_bytes` bytes, waiting up to
    /// `linger` for more. Returns the batch and the frame that did not fit, if any.
    async fn fill(&mut self, first: Bytes) -> (Vec<Bytes>, Option<Bytes>) {
        let mut bytes = first.len();
        let mut frames = vec![first];
        let deadline = Instant::now() + self.linger;
        while frames.len() < self.batch_frames {
            let next = match self.queue.try_recv() {
                Ok(frame) => frame,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if self.linger.is_zero() {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, self.queue.recv()).await {
                        Ok(Some(frame)) => frame,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            if bytes + next.len() > self.batch_bytes {
                return (frames, Some(next));
            }
            bytes += next.len();
            frames.push(next);
        }
        (frames, None)
    }
}
