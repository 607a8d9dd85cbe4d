//! Joining a cluster: starts the node's links and gossip membership, publishes what peers need (the link
//! address, the hubs served, the node's status), and drives links and the mesh's router from every membership change.
//!
//! Membership decides, links follow: a peer gets a link when gossip reports it live and loses it when gossip
//! declares it dead (or a newer generation of it appears), so ractor_cluster's missing failure detector and
//! reconnect are chitchat's job here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::Instrument;

use super::{ClusterNetwork, ClusterSettings, NodeError};
use crate::cluster::link::ractor::RactorLinks;
use crate::cluster::{LinkEvent, Links, Membership, MembershipView, NodeId, NodeStatus, PeerInfo, LINK_ADDRESS_KEY};
use crate::mesh::{LocalHub, Router};

/// The membership key listing the hubs a node serves, comma-separated.
pub const HUBS_KEY: &str = "hubs";

/// How many link events may wait for the router before the links slow down.
const EVENT_QUEUE: usize = 16 * 1024;

/// A node's part of the cluster, kept until the node stops.
pub(crate) struct ClusterRuntime {
    membership: Membership,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClusterRuntime {
    /// The membership, for status and views.
    pub(crate) fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Leaves: stops driving links and gossip (peers then see this node die).
    pub(crate) async fn leave(self) {
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
fn peers_of(view: &MembershipView) -> Vec<PeerInfo> {
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
    let membership = match &settings.network {
        ClusterNetwork::Real => Membership::start(settings.membership.clone(), state).await,
        #[cfg(feature = "test-util")]
        ClusterNetwork::InMemory { gossip, .. } => {
            Membership::start_on(settings.membership.clone(), state, gossip).await
        }
    }
    .map_err(|error| NodeError::Cluster(error.to_string()))?;
    router.attach_links(links.clone(), &self_id);

    let mut tasks = Vec::new();
    let events_router = router.clone();
    tasks.push(tokio::spawn(
        async move {
            while let Some(event) = inbound.recv().await {
                events_router.on_link_event(event);
            }
        }
        .instrument(span.clone()),
    ));
    let mut views = membership.subscribe();
    let view_router = router.clone();
    tasks.push(tokio::spawn(
        async move {
            loop {
                let view = views.borrow_and_update().clone();
                links.update_peers(&peers_of(&view));
                view_router.on_view(view.live_ids());
                if views.changed().await.is_err() {
                    return;
                }
            }
        }
        .instrument(span),
    ));
    membership.set_status(NodeStatus::Serving).await;
    Ok(ClusterRuntime { membership, tasks })
}
