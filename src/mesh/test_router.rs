//! A router fed by hand for the mesh's unit tests: a hub with no connections (or members that record what they
//! got), links that record every frame sent,
//! and link events made from envelopes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::envelope::Envelope;
use super::group::GroupKey;
use super::{LocalHub, MeshError, Router};
use crate::cluster::link::LinkCounters;
use crate::cluster::{LinkError, LinkEvent, Links, NodeId, PeerInfo};
use crate::connection::{ConnectionHandle, ConnectionId, SharedFrame};
use crate::protocol::Protocol;

/// A hub for the mesh's unit tests: with no connections here, or with members in every group that record the
/// frames they got, in order.
#[derive(Default)]
pub(super) struct TestHub {
    members_everywhere: bool,
    pub(super) got: Mutex<Vec<(String, Bytes)>>,
    /// Deliveries (`<group> <frame>`), joins (`+<group> <id>`) and leaves (`-<group> <id>`), in order.
    pub(super) events: Mutex<Vec<String>>,
}

impl TestHub {
    /// Members here in every group.
    pub(super) fn with_members() -> Self {
        TestHub {
            members_everywhere: true,
            ..TestHub::default()
        }
    }
}

impl LocalHub for TestHub {
    fn deliver_all(&self, _: &Arc<SharedFrame>, _: &[ConnectionId]) {}
    fn deliver_to(&self, ids: &[ConnectionId], frame: &Arc<SharedFrame>) {
        let bytes = frame.bytes(Protocol::Json).cloned().unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).trim_end_matches('\x1e').to_string();
        let ids: Vec<&str> = ids.iter().map(ConnectionId::as_str).collect();
        self.events.lock().push(format!("to {} {text}", ids.join(",")));
    }
    fn deliver_group(&self, key: &GroupKey, frame: &Arc<SharedFrame>, except: &[ConnectionId]) -> bool {
        if self.members_everywhere {
            let bytes = frame.bytes(Protocol::Json).cloned().unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).trim_end_matches('\x1e').to_string();
            let except: Vec<&str> = except.iter().map(ConnectionId::as_str).collect();
            let except = if except.is_empty() { String::new() } else { format!(" except {}", except.join(",")) };
            self.events.lock().push(format!("{} {text}{except}", key.name));
            self.got.lock().push((key.name.to_string(), bytes));
        }
        self.members_everywhere
    }
    fn has_local_members(&self, _: &GroupKey) -> bool {
        self.members_everywhere
    }
    fn local_join(&self, key: &GroupKey, id: &ConnectionId) -> Result<(), MeshError> {
        self.events.lock().push(format!("+{} {id}", key.name));
        Ok(())
    }
    fn local_leave(&self, key: &GroupKey, id: &ConnectionId) -> bool {
        self.events.lock().push(format!("-{} {id}", key.name));
        self.members_everywhere
    }
    fn local_memberships(&self) -> Vec<(GroupKey, Vec<ConnectionId>)> {
        Vec::new()
    }
    fn handle_of(&self, _: &ConnectionId) -> Option<ConnectionHandle> {
        None
    }
    fn close_all_with(&self, _: &str) {}
}

/// A peer's snapshot of one member in group `key`.
pub(super) fn snapshot(key: &GroupKey, member: &str) -> Envelope {
    Envelope::Snapshot {
        part: 0,
        last: true,
        groups: vec![(key.clone(), vec![ConnectionId::new(member.to_string())])],
    }
}

/// Waits until `done` holds, at most 5 s.
pub(super) async fn until(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
pub(super) type OwnerNode = (Arc<Router<TestHub>>, Arc<RecordingLinks>, Arc<TestHub>);

pub(super) fn owner_node(owner: &NodeId) -> OwnerNode {
    let router: Arc<Router<TestHub>> =
        Router::new(&owner.name, tokio::runtime::Handle::current(), tracing::Span::none());
    let hub = Arc::new(TestHub::default());
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
