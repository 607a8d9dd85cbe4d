//! Joining a cluster: starts the node's links and gossip membership, publishes what peers need (the link
//! address, the hubs served, the node's status) and its start time (for status reports), and drives links and the
//! mesh's router from every membership change.
//!
//! Membership decides, links follow: a peer gets a link when gossip reports it live and loses it when gossip
//! declares it dead (or a newer generation of it appears), so ractor_cluster's missing failure detector and
//! reconnect are chitchat's job here.
//!
//! The tasks here also keep [`ClusterHealth`]: which links are up and which live set the router placed keys
//! with, what readiness (`super::readiness`) and the status report read.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::Instrument;

use super::metrics::ClusterCounters;
use super::{ClusterNetwork, ClusterSettings, NodeError};
use crate::cluster::link::ractor::RactorLinks;
use crate::cluster::{GossipKeys, LinkEvent, Links, Membership, MembershipView, NodeId, NodeStatus, PeerInfo, LINK_ADDRESS_KEY};
use crate::mesh::{LocalHub, Router};

/// The membership key listing the hubs a node serves, comma-separated.
pub const HUBS_KEY: &str = "hubs";

/// The membership key holding when the node started, in milliseconds since the Unix epoch (for uptimes).
pub const STARTED_KEY: &str = "started";

/// How many link events may wait for the router before the links slow down.
const EVENT_QUEUE: usize = 16 * 1024;

/// A node's part of the cluster, kept until the node stops.
pub(crate) struct ClusterRuntime {
    membership: Membership,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    health: Arc<ClusterHealth>,
    /// The node's links, for their per-peer figures.
    links: Arc<dyn Links>,
}

/// What the cluster tasks have seen so far: the peers with a link up, and the live set the router last placed
/// keys with. Written on link and view changes only, never per frame.
#[derive(Debug, Default)]
pub(crate) struct ClusterHealth {
    links_up: parking_lot::Mutex<HashSet<NodeId>>,
    placed: parking_lot::Mutex<Vec<NodeId>>,
    /// Set the first time the node is found ready: from then on a link that drops no longer makes it unready.
    ready_once: std::sync::atomic::AtomicBool,
    /// Link frames, membership changes and deaths, counted for the metrics.
    pub(crate) counters: ClusterCounters,
}

impl ClusterHealth {
    /// Whether the link to `peer` is up.
    pub(crate) fn link_up(&self, peer: &NodeId) -> bool {
        self.links_up.lock().contains(peer)
    }

    /// Whether the router placed keys with exactly these live members (sorted, this node included).
    pub(crate) fn placed_with(&self, live: &[NodeId]) -> bool {
        *self.placed.lock() == live
    }

    /// Whether the node has been found ready before.
    pub(crate) fn was_ready(&self) -> bool {
        self.ready_once.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records that the node was found ready.
    pub(crate) fn mark_ready(&self) {
        self.ready_once.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl ClusterRuntime {
    /// The membership, for status and views.
    pub(crate) fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Links and placement as the cluster tasks last saw them.
    pub(crate) fn health(&self) -> &ClusterHealth {
        &self.health
    }

    /// The node's links.
    pub(crate) fn links(&self) -> &dyn Links {
        &*self.links
    }

    /// Leaves: stops driving links and gossip (peers then see this node die).
    pub(crate) async fn leave(self) {
        self.membership.announce_leaving().await;
        for task in &self.tasks {
            task.abort();
        }
        if let Err(error) = self.membership.shutdown().await {
            tracing::warn!(%error, "gossip did not stop cleanly");
        }
    }
}

fn generation_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The live peers (this node excluded) with the link address each one published.
pub(crate) fn peers_of(view: &MembershipView) -> Vec<PeerInfo> {
    view.live
        .iter()
        .filter(|member| member.id != view.self_id)
        .filter_map(|member| {
            member.get(LINK_ADDRESS_KEY).map(|address| PeerInfo {
                id: member.id.clone(),
                link_address: address.to_owned(),
            })
        })
        .collect()
}

/// Starts links and membership for node `name` and connects them to `router` (the mesh; generic over the hubs it
/// delivers to, which this file does not need to know).
pub(crate) async fn join<H: LocalHub>(
    name: &str,
    hubs: Vec<String>,
    mut settings: ClusterSettings,
    router: Arc<Router<H>>,
    span: tracing::Span,
    started_ms: u64,
) -> Result<ClusterRuntime, NodeError> {
    let generation = settings.membership.generation.unwrap_or_else(generation_now);
    settings.membership.generation = Some(generation);
    settings.membership.node_name = name.to_owned();
    let self_id = NodeId::new(name, generation);

    let (events, mut inbound) = mpsc::channel::<LinkEvent>(EVENT_QUEUE);
    let links: Arc<dyn Links> = match &settings.network {
        ClusterNetwork::Real => RactorLinks::start(self_id.clone(), settings.link.clone(), events)
            .await
            .map_err(|error| NodeError::Cluster(error.to_string()))?,
        #[cfg(feature = "test-util")]
        ClusterNetwork::InMemory { links, .. } => links
            .join(self_id.clone(), &settings.link, events)
            .map_err(|error| NodeError::Cluster(error.to_string()))?,
    };

    let mut state = BTreeMap::new();
    state.insert(LINK_ADDRESS_KEY.to_owned(), links.advertised_address());
    state.insert(HUBS_KEY.to_owned(), hubs.join(","));
    state.insert(STARTED_KEY.to_owned(), started_ms.to_string());
    let membership = match &settings.network {
        ClusterNetwork::Real => {
            let keys = GossipKeys::new(&settings.link.secret, &settings.link.previous_secrets);
            Membership::start(settings.membership.clone(), keys, state).await
        }
        #[cfg(feature = "test-util")]
        ClusterNetwork::InMemory { gossip, .. } => {
            Membership::start_on(settings.membership.clone(), state, gossip).await
        }
    }
    .map_err(|error| NodeError::Cluster(error.to_string()))?;
    router.attach_links(links.clone(), &self_id);

    let health = Arc::new(ClusterHealth::default());
    let mut tasks = Vec::new();
    let events_router = router.clone();
    let events_health = health.clone();
    let events_links = links.clone();
    tasks.push(tokio::spawn(
        async move {
            while let Some(event) = inbound.recv().await {
                match &event {
                    LinkEvent::Frame { from, frame } => {
                        events_health.counters.link_frame(frame.len());
                        events_links.counters().peer(&from.name).received(frame.len());
                    }
                    LinkEvent::Up(peer) => {
                        events_health.links_up.lock().insert(peer.clone());
                    }
                    LinkEvent::Down(peer) => {
                        events_health.links_up.lock().remove(peer);
                    }
                }
                events_router.on_link_event(event);
            }
        }
        .instrument(span.clone()),
    ));
    let mut views = membership.subscribe();
    let view_router = router.clone();
    let view_health = health.clone();
    let view_links = links.clone();
    tasks.push(tokio::spawn(
        async move {
            let mut previous_live = None;
            loop {
                let view = views.borrow_and_update().clone();
                view_health.counters.view_changed(&view, &mut previous_live);
                view_links.update_peers(&peers_of(&view));
                let live = view.live_ids();
                let handing_over: Vec<NodeId> = view
                    .live
                    .iter()
                    .filter(|member| member.hands_over())
                    .map(|member| member.id.clone())
                    .collect();
                view_router.on_view_handing_over(live.clone(), &handing_over);
                *view_health.placed.lock() = live;
                if views.changed().await.is_err() {
                    return;
                }
            }
        }
        .instrument(span),
    ));
    membership.set_status(NodeStatus::Serving).await;
    Ok(ClusterRuntime {
        membership,
        tasks,
        health,
        links,
    })
}
