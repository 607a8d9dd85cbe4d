//! [`RactorLinks`], the public handle of a process's links: it starts them (the process slot, the listener, the
//! `NodeServer`, the link endpoint and its ticks), implements [`Links`] by queueing frames for each link's sender
//! task, and stops them.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use ::ractor::{Actor, ActorRef};
use bytes::Bytes;
use parking_lot::RwLock;
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::codec::{Control, EndpointMsg};
use super::endpoint::{EndpointArgs, LinkEndpoint};
use super::sender::PeerQueue;
use super::{AUTH_DEADLINE, MAX_LINK_FRAME};
use crate::cluster::link::{LinkConfig, LinkCounters, LinkError, LinkEvent, LinkTls, Links, PeerInfo};
use crate::cluster::membership::NodeId;

/// How often the endpoint looks at dials, pending sessions and authentication deadlines.
const TICK: Duration = Duration::from_millis(250);

/// The host part of every ractor node name (`"{incarnation}@hubmesh"`); peers are found by address, not by host.
const HOSTNAME: &str = "hubmesh";

/// Whether this process runs a [`RactorLinks`].
static PROCESS_SLOT: AtomicBool = AtomicBool::new(false);

/// The ractor node name of incarnation `id`.
fn node_name(id: &NodeId) -> String {
    id.to_string()
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

/// A process's links to its peers over ractor_cluster (see the module documentation). At most one per process.
///
/// Dropping it stops the endpoint and the `NodeServer` with all its sessions (peers see the links go down) and frees
/// the process's slot; `RactorLinks::shutdown` does the same and waits for it.
pub struct RactorLinks {
    self_id: NodeId,
    advertised: String,
    max_frame: usize,
    senders: Arc<RwLock<HashMap<NodeId, PeerQueue>>>,
    counters: Arc<LinkCounters>,
    endpoint: ActorRef<EndpointMsg>,
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
    /// `NodeServer` (cookie: the cluster secret) and the endpoint. Link events go to `events`; links open once
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
        let counters = Arc::new(LinkCounters::default());
        let args = EndpointArgs {
            self_id: self_id.clone(),
            config: config.clone(),
            events,
            node_server: node_server.clone(),
            senders: Arc::clone(&senders),
            counters: Arc::clone(&counters),
        };
        let endpoint = match Actor::spawn(None, LinkEndpoint, args).await {
            Ok((endpoint, _)) => endpoint,
            Err(error) => {
                node_server.stop(None);
                return Err(LinkError::Start(format!("the link endpoint did not start: {error}")));
            }
        };
        let subscribed = node_server.cast(NodeServerMessage::SubscribeToEvents {
            id: "hubmesh.links".to_owned(),
            subscription: Box::new(SessionEvents {
                endpoint: endpoint.clone(),
            }),
        });
        if subscribed.is_err() {
            endpoint.stop(None);
            node_server.stop(None);
            return Err(LinkError::Start(
                "the ractor_cluster node server stopped at once".to_owned(),
            ));
        }

        let span = tracing::info_span!("links", node = %self_id, address = %advertised);
        let accept = tokio::spawn(accept_loop(listener, node_server.clone(), config.tls.clone()).instrument(span.clone()));
        let tick_endpoint = endpoint.clone();
        let ticks = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if tick_endpoint.cast(EndpointMsg::Control(Control::Tick)).is_err() {
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
            counters,
            endpoint,
            node_server,
            tasks: vec![accept, ticks],
            _slot: slot,
        }))
    }

    /// This process's incarnation.
    #[cfg(any(test, feature = "internals"))]
    pub fn id(&self) -> &NodeId {
        &self.self_id
    }

    #[cfg(any(test, feature = "internals"))]
    /// Stops the links and waits until the endpoint and the `NodeServer` have stopped (peers see the links go down).
    pub async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.node_server
            .stop_children(Some("hubmesh: links shut down".to_owned()));
        let _ = self.endpoint.stop_and_wait(None, Some(Duration::from_secs(2))).await;
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
        self.endpoint.stop(None);
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

/// Accepts link connections and hands them to the `NodeServer`, which authenticates them; with TLS, once the
/// handshake (within [`AUTH_DEADLINE`], on a task of its own) checked the peer's certificate.
async fn accept_loop(listener: TcpListener, node_server: ActorRef<NodeServerMessage>, tls: Option<LinkTls>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer_addr)) => {
                let _ = stream.set_nodelay(true);
                let local_addr = stream.local_addr().unwrap_or(peer_addr);
                let Some(tls) = &tls else {
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
                    continue;
                };
                let acceptor = tls.acceptor();
                let node_server = node_server.clone();
                tokio::spawn(
                    async move {
                        let stream = match tokio::time::timeout(AUTH_DEADLINE, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::warn!(
                                    %peer_addr,
                                    %error,
                                    "a link connection failed its TLS handshake (a certificate the cluster does not \
                                     trust?)"
                                );
                                return;
                            }
                            Err(_) => {
                                tracing::warn!(%peer_addr, "a link connection did not finish its TLS handshake in time");
                                return;
                            }
                        };
                        let _ = node_server.cast(NodeServerMessage::ConnectionOpened {
                            stream: Box::new(NetworkStream::TlsServer {
                                peer_addr,
                                local_addr,
                                stream,
                            }),
                            is_server: true,
                        });
                        tracing::debug!(%peer_addr, "link connection accepted over TLS");
                    }
                    .in_current_span(),
                );
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
        let counters = self.counters.peer(&peer.name);
        let bytes = frame.len();
        match sender.frames.try_send(frame) {
            Ok(()) => {
                counters.sent(bytes);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                counters.queue_full();
                Err(LinkError::QueueFull(peer.clone()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(LinkError::NoLink(peer.clone())),
        }
    }

    fn counters(&self) -> &LinkCounters {
        &self.counters
    }

    fn queue_depth(&self, name: &str) -> usize {
        self.senders
            .read()
            .iter()
            .filter(|(peer, _)| &*peer.name == name)
            .map(|(_, sender)| sender.frames.max_capacity() - sender.frames.capacity())
            .sum()
    }

    fn update_peers(&self, live: &[PeerInfo]) {
        self.counters.keep_only(live.iter().map(|peer| &peer.id.name));
        let _ = self
            .endpoint
            .cast(EndpointMsg::Control(Control::UpdatePeers(live.to_vec())));
    }

    #[cfg(any(test, feature = "internals"))]
    fn connected(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self
            .senders
            .read()
            .iter()
            .filter(|(_, queue)| queue.up)
            .map(|(peer, _)| peer.clone())
            .collect();
        peers.sort();
        peers
    }
}

/// Forwards the `NodeServer`'s session events to the endpoint.
struct SessionEvents {
    endpoint: ActorRef<EndpointMsg>,
}

impl SessionEvents {
    fn notify(&self, control: Control) {
        let _ = self.endpoint.cast(EndpointMsg::Control(control));
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
