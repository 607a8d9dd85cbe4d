//! The link endpoint: the one actor per process (remotable, in the process group [`endpoint_group`] of this
//! incarnation) that sends and receives every link message. It follows membership (dials, tears links down), tracks
//! ractor_cluster's sessions and their authentication, opens a link (a sender task for the peer's stream, see
//! `super::sender`) once a session's peer endpoint is found, delivers arriving batches to the event channel once
//! each (a batch sent again on a new link is dropped by its sequence number) and acknowledges them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use parking_lot::RwLock;
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeServerMessage, NodeSessionMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::codec::{Ack, Batch, Control, EndpointMsg};
use super::sender::{Batching, PeerQueue, Stream};
use super::{ACK_EVERY, AUTH_DEADLINE, DIAL_BACKOFF, DIAL_BACKOFF_MAX, STREAM_GRACE};
use crate::cluster::link::{LinkConfig, LinkCounters, LinkEvent, LinkTls, PeerInfo};
use crate::cluster::membership::NodeId;

/// How long one dial (the TCP connect) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Ticks a ready session may wait for the peer's endpoint to appear in its group before it is closed.
const ENDPOINT_LOOKUP_TICKS: u32 = 20;

/// The process group of the link endpoint of incarnation `id`. The group's name is what peers look the endpoint up
/// by, so it keeps the actor's former name.
pub fn endpoint_group(id: &NodeId) -> String {
    format!("hubmesh.router:{id}")
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

/// Dials `peer` at `address` and hands the connection to the `NodeServer`: over TLS when `tls` is set, checking
/// that the peer's certificate names it. A TLS failure is logged as a warning at once: it will not heal by retrying.
async fn dial_peer(
    node_server: &ActorRef<NodeServerMessage>,
    address: &str,
    peer: &NodeId,
    tls: Option<LinkTls>,
) -> Result<(), String> {
    let Some(tls) = tls else {
        return ractor_cluster::client_connect(node_server, address)
            .await
            .map_err(|error| error.to_string());
    };
    let name = LinkTls::server_name(&peer.name)?;
    match ractor_cluster::client_connect_enc(node_server, address, tls.connector(), name).await {
        Ok(()) => Ok(()),
        Err(ractor_cluster::ClientConnectErr::Encryption(error)) => {
            tracing::warn!(%peer, %error, "the link's TLS handshake failed (a certificate the cluster does not trust?)");
            Err(format!("TLS handshake failed: {error}"))
        }
        Err(error) => Err(error.to_string()),
    }
}

/// The link endpoint actor (see the module documentation).
pub(super) struct LinkEndpoint;

pub(super) struct EndpointArgs {
    pub(super) self_id: NodeId,
    pub(super) config: LinkConfig,
    pub(super) events: mpsc::Sender<LinkEvent>,
    pub(super) node_server: ActorRef<NodeServerMessage>,
    pub(super) senders: Arc<RwLock<HashMap<NodeId, PeerQueue>>>,
    pub(super) counters: Arc<LinkCounters>,
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
    remote: ActorRef<EndpointMsg>,
    /// Stops the link's sender task (the stream's queue and window stay for the next link).
    stop: CancellationToken,
    span: tracing::Span,
}

/// What this node has received of a peer incarnation's stream: batches up to `received`.
struct Inbound {
    stream: u64,
    received: u64,
}

pub(super) struct EndpointState {
    myself: ActorRef<EndpointMsg>,
    self_id: NodeId,
    config: LinkConfig,
    events: mpsc::Sender<LinkEvent>,
    node_server: ActorRef<NodeServerMessage>,
    senders: Arc<RwLock<HashMap<NodeId, PeerQueue>>>,
    counters: Arc<LinkCounters>,
    /// Per peer incarnation with a link now or earlier, this node's frames to it (kept while the link is down,
    /// dropped when the peer is superseded or has not been live for [`STREAM_GRACE`]).
    streams: HashMap<NodeId, Stream>,
    /// Live peers (this node excluded) and their link addresses, from the last membership view.
    live: HashMap<NodeId, String>,
    /// Per peer name, the newest generation seen live: an incarnation no newer than it that is not live now has
    /// left (or was superseded). One entry per name, so restarts do not make it grow.
    seen_live: HashMap<Arc<str>, u64>,
    links: HashMap<NodeId, LinkState>,
    sessions: HashMap<ActorId, SessionEntry>,
    /// Ready sessions whose peer endpoint is not yet in its group, with the ticks waited.
    pending: HashMap<ActorId, (NodeServerSessionInformation, u32)>,
    dials: HashMap<NodeId, DialState>,
    /// Per peer incarnation, what it sent this node: kept until a newer generation of its name is live (a peer that
    /// was dead for a moment and is live again resumes its stream, and nothing it sent arrives twice).
    inbound: HashMap<NodeId, Inbound>,
    /// Numbers links (for logs) and streams.
    next_epoch: u64,
}

impl Actor for LinkEndpoint {
    type Msg = EndpointMsg;
    type State = EndpointState;
    type Arguments = EndpointArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<EndpointMsg>,
        args: EndpointArgs,
    ) -> Result<EndpointState, ActorProcessingErr> {
        ::ractor::pg::join(endpoint_group(&args.self_id), vec![myself.get_cell()]);
        Ok(EndpointState {
            myself,
            self_id: args.self_id,
            config: args.config,
            events: args.events,
            node_server: args.node_server,
            senders: args.senders,
            counters: args.counters,
            streams: HashMap::new(),
            live: HashMap::new(),
            seen_live: HashMap::new(),
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
        _myself: ActorRef<EndpointMsg>,
        message: EndpointMsg,
        state: &mut EndpointState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EndpointMsg::Batch(batch) => state.on_batch(batch).await,
            EndpointMsg::Ack(ack) => state.on_ack(&ack),
            EndpointMsg::Control(control) => state.on_control(control).await,
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<EndpointMsg>,
        state: &mut EndpointState,
    ) -> Result<(), ActorProcessingErr> {
        let peers: Vec<NodeId> = state.links.keys().cloned().collect();
        for peer in peers {
            state.close_link(&peer, "links stopped", true).await;
        }
        Ok(())
    }
}

impl EndpointState {
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
        let gone = !self.live.contains_key(peer)
            && self
                .seen_live
                .get(&peer.name)
                .is_some_and(|&newest| newest >= peer.generation);
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
        for peer in self.live.keys() {
            let newest = self.seen_live.entry(peer.name.clone()).or_insert(peer.generation);
            *newest = (*newest).max(peer.generation);
        }
        let doomed: Vec<NodeId> = self.links.keys().filter(|peer| self.unwanted(peer)).cloned().collect();
        for peer in doomed {
            self.close_link(&peer, "no longer live or superseded", true).await;
        }
        // A superseded peer takes its stream (what was queued is dropped: the layer above re-sends what matters to
        // the new generation); one that left the live set keeps it a while, in case it was declared dead by mistake
        // and is live again (`super::sender`).
        let now = Instant::now();
        let mut superseded = Vec::new();
        for (peer, stream) in &mut self.streams {
            let newest = self.seen_live.get(&peer.name).copied();
            if newest.is_some_and(|newest| newest > peer.generation) {
                superseded.push(peer.clone());
            } else if self.live.contains_key(peer) {
                if stream.departed.take().is_some() {
                    tracing::debug!(peer = %peer, "a departed peer is live again: its stream resumes");
                    self.senders.write().insert(peer.clone(), stream.queue());
                }
            } else if stream.departed.is_none() && newest.is_some_and(|newest| newest >= peer.generation) {
                // Frames still queue: what the layer above had on its way when it let the peer go (an owner's
                // fan-out racing its view change) reaches it if it is live again.
                stream.departed = Some(now);
            }
        }
        for peer in superseded {
            self.streams.remove(&peer);
            self.senders.write().remove(&peer);
        }
        let seen_live = &self.seen_live;
        self.inbound
            .retain(|peer, _| seen_live.get(&peer.name).is_none_or(|&newest| newest <= peer.generation));
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
            let endpoint = self.myself.clone();
            let peer = peer.clone();
            let address = address.clone();
            let tls = self.config.tls.clone();
            let span = tracing::debug_span!("dial", peer = %peer, %address);
            tokio::spawn(
                async move {
                    let outcome = tokio::time::timeout(DIAL_TIMEOUT, dial_peer(&node_server, &address, &peer, tls)).await;
                    let error = match outcome {
                        Ok(Ok(())) => {
                            tracing::debug!("dialed; authenticating");
                            return;
                        }
                        Ok(Err(error)) => error,
                        Err(_) => "timed out".to_owned(),
                    };
                    let _ = endpoint.cast(EndpointMsg::Control(Control::DialFailed { peer, error }));
                }
                .instrument(span),
            );
        }
    }

    async fn on_tick(&mut self) {
        self.dial_missing();
        let now = Instant::now();
        let senders = &self.senders;
        self.streams.retain(|peer, stream| {
            let expired = stream.departed.is_some_and(|since| now.duration_since(since) > STREAM_GRACE);
            if expired {
                tracing::debug!(peer = %peer, "a departed peer's stream ends: not live again in time");
                senders.write().remove(peer);
            }
            !expired
        });
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
            if waited >= ENDPOINT_LOOKUP_TICKS {
                let peer = session.peer_name.as_ref().map(|name| name.name.clone());
                tracing::warn!(?peer, "a peer session never showed a link endpoint; closing it");
                session.actor.stop(Some("hubmesh: no link endpoint".to_owned()));
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

    /// Opens the link carried by a ready session, unless it must not exist. Returns false if the peer's endpoint is
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
        let remote = ::ractor::pg::get_members(&endpoint_group(&peer))
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

    async fn open_link(&mut self, peer: NodeId, session: ActorRef<NodeSessionMessage>, remote: ActorRef<EndpointMsg>) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let span = tracing::info_span!("link", node = %self.self_id, peer = %peer, epoch);
        if let Some(stream) = self.streams.get_mut(&peer) {
            if stream.departed.take().is_some() {
                self.senders.write().insert(peer.clone(), stream.queue());
            }
        } else {
            let id = self.next_epoch;
            self.next_epoch += 1;
            let (stream, frames) = Stream::new(id, self.config.queue_frames);
            self.streams.insert(peer.clone(), stream);
            self.senders.write().insert(peer.clone(), PeerQueue { frames, up: false });
        }
        let stop = CancellationToken::new();
        if let Some(stream) = self.streams.get(&peer) {
            let batching = Batching {
                batch_frames: self.config.batch_frames,
                batch_bytes: self.config.max_frame,
                linger: self.config.batch_linger,
            };
            let task = stream.sender(
                remote.clone(),
                self.self_id.clone(),
                batching,
                self.counters.peer(&peer.name),
                stop.clone(),
            );
            tokio::spawn(task.run().instrument(span.clone()));
        }
        if let Some(queue) = self.senders.write().get_mut(&peer) {
            queue.up = true;
        }
        self.links.insert(
            peer.clone(),
            LinkState {
                session,
                remote,
                stop,
                span: span.clone(),
            },
        );
        self.dials.remove(&peer);
        tracing::info!(parent: &span, "link up");
        let _ = self.events.send(LinkEvent::Up(peer)).await;
    }

    /// Closes the link to `peer`, if any, and reports `Down`; the peer's stream waits for the next link (or for the
    /// peer to leave). `stop_session` also closes the TCP session (when membership, not the network, ended it).
    async fn close_link(&mut self, peer: &NodeId, reason: &str, stop_session: bool) {
        let Some(link) = self.links.remove(peer) else {
            return;
        };
        link.stop.cancel();
        if let Some(queue) = self.senders.write().get_mut(peer) {
            queue.up = false;
        }
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
        let inbound = self.inbound.entry(peer.clone()).or_insert(Inbound {
            stream: batch.stream,
            received: 0,
        });
        if batch.stream < inbound.stream {
            tracing::debug!(parent: &span, stream = batch.stream, "dropped a batch of an earlier stream");
            return;
        }
        if batch.stream > inbound.stream {
            // The peer started a new stream to this node (it had dropped the old one with its link): count afresh.
            *inbound = Inbound {
                stream: batch.stream,
                received: 0,
            };
        }
        let (stream, seq) = (batch.stream, batch.seq);
        let fresh = seq > inbound.received;
        if fresh {
            if seq > inbound.received + 1 {
                tracing::warn!(parent: &span, expected = inbound.received + 1, seq, "batches missing from a peer's stream");
            }
            inbound.received = seq;
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
        } else {
            // Sent again on a new link: it arrived on the old one.
            tracing::trace!(parent: &span, seq, "dropped a batch that arrived before");
        }
        let received = self.inbound.get(&peer).map_or(0, |inbound| inbound.received);
        if seq.is_multiple_of(ACK_EVERY) || !fresh {
            let ack = Ack {
                from: self.self_id.clone(),
                stream,
                received,
            };
            send_ack(&peer, remote, ack);
        }
    }

    fn on_ack(&mut self, ack: &Ack) {
        if let Some(stream) = self.streams.get(&ack.from) {
            if stream.id == ack.stream {
                stream.on_ack(ack.received);
            }
        }
    }
}

/// Sends `ack` to the peer's endpoint on the link's session or, if that session just ended, on any other.
fn send_ack(peer: &NodeId, remote: ActorRef<EndpointMsg>, ack: Ack) {
    let Err(error) = remote.cast(EndpointMsg::Ack(ack)) else {
        return;
    };
    let ::ractor::MessagingErr::SendErr(EndpointMsg::Ack(mut ack)) = error else {
        return;
    };
    for cell in ::ractor::pg::get_members(&endpoint_group(peer)) {
        if cell.get_id().is_local() || cell.get_id() == remote.get_id() {
            continue;
        }
        match ActorRef::<EndpointMsg>::from(cell).cast(EndpointMsg::Ack(ack)) {
            Ok(()) => return,
            Err(::ractor::MessagingErr::SendErr(EndpointMsg::Ack(back))) => ack = back,
            Err(_) => return,
        }
    }
}
