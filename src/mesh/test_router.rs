//! A router fed by hand for the mesh's unit tests: a hub with no connections, links that record every frame sent,
//! and link events made from envelopes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::envelope::Envelope;
use super::group::GroupKey;
use super::{LocalHub, MeshError, Router};
use crate::cluster::link::LinkCounters;
use crate::cluster::{LinkError, LinkEvent, Links, NodeId, PeerInfo};
use crate::connection::{ConnectionHandle, ConnectionId, SharedFrame};

/// A hub with no connections here.
pub(super) struct NoConnections;

impl LocalHub for NoConnections {
    fn deliver_all(&self, _: &Arc<SharedFrame>, _: &[ConnectionId]) {}
    fn deliver_to(&self, _: &[ConnectionId], _: &Arc<SharedFrame>) {}
    fn deliver_group(&self, _: &GroupKey, _: &Arc<SharedFrame>, _: &[ConnectionId]) -> bool {
        false
    }
    fn has_local_members(&self, _: &GroupKey) -> bool {
        false
    }
    fn local_join(&self, _: &GroupKey, _: &ConnectionId) -> Result<(), MeshError> {
        Ok(())
    }
    fn local_leave(&self, _: &GroupKey, _: &ConnectionId) -> bool {
        false
    }
    fn local_memberships(&self) -> Vec<(GroupKey, Vec<ConnectionId>)> {
        Vec::new()
    }
    fn handle_of(&self, _: &ConnectionId) -> Option<ConnectionHandle> {
        None
    }
    fn close_all_with(&self, _: &str) {}
}

/// Links to every peer, up, that record each frame sent.
#[derive(Default)]
pub(super) struct RecordingLinks {
    pub(super) sent: Mutex<Vec<(NodeId, Bytes)>>,
    counters: LinkCounters,
}

impl RecordingLinks {
    /// Every envelope sent, with the peer it went to, in order.
    pub(super) fn envelopes(&self) -> Vec<(String, Envelope)> {
        self.sent
            .lock()
            .iter()
            .filter_map(|(peer, frame)| Some((peer.name.to_string(), rmp_serde::from_slice(frame).ok()?)))
            .collect()
    }

    /// The peers each `GroupDeliver` of group `key` went to, in order.
    pub(super) fn deliveries_of(&self, key: &GroupKey) -> Vec<String> {
        self.sent
            .lock()
            .iter()
            .filter_map(|(peer, frame)| match rmp_serde::from_slice::<Envelope>(frame) {
                Ok(Envelope::GroupDeliver { key: delivered, .. }) if &delivered == key => Some(peer.name.to_string()),
                _ => None,
            })
            .collect()
    }
}

impl Links for RecordingLinks {
    fn advertised_address(&self) -> String {
        String::new()
    }
    fn send(&self, peer: &NodeId, frame: Bytes) -> Result<(), LinkError> {
        self.sent.lock().push((peer.clone(), frame));
        Ok(())
    }
    fn update_peers(&self, _: &[PeerInfo]) {}
    fn connected(&self) -> Vec<NodeId> {
        Vec::new()
    }
    fn counters(&self) -> &LinkCounters {
        &self.counters
    }
    fn queue_depth(&self, _: &str) -> usize {
        0
    }
}

pub(super) fn frame(from: &NodeId, envelope: &Envelope) -> LinkEvent {
    LinkEvent::Frame {
        from: from.clone(),
        frame: Bytes::from(rmp_serde::to_vec(envelope).unwrap()),
    }
}

/// Router `owner` of a hub with no connections here (kept alive by the caller: the router holds it weakly), with
/// links that record what it sends.
pub(super) type OwnerNode = (Arc<Router<NoConnections>>, Arc<RecordingLinks>, Arc<NoConnections>);

pub(super) fn owner_node(owner: &NodeId) -> OwnerNode {
    let router: Arc<Router<NoConnections>> =
        Router::new(&owner.name, tokio::runtime::Handle::current(), tracing::Span::none());
    let hub = Arc::new(NoConnections);
    router.register_hub("hub", &hub);
    let links = Arc::new(RecordingLinks::default());
    router.attach_links(links.clone(), owner);
    (router, links, hub)
}

/// A group `owner` owns in each of `views`.
pub(super) fn owned_by(owner: &NodeId, views: &[&Vec<NodeId>]) -> GroupKey {
    (0..1_000)
        .map(|index| GroupKey::named("hub", &format!("g{index}")))
        .find(|key| {
            views
                .iter()
                .all(|view| crate::cluster::owner(&key.placement_bytes(), view) == Some(owner))
        })
        .unwrap()
}
