//! Connections served by a node other than the one whose name they carry, and the requests relayed between nodes
//! for them (docs/any-node-design.md).
//!
//! A connection id ends with the name of its *home*, the node that negotiated it; the node that runs its
//! connection task (its *server*) is another one when a load balancer sent the transport elsewhere. This file
//! keeps the mesh's side of that:
//!
//! * **Adopted out:** the home remembers which peer incarnation serves each of its connections that run
//!   elsewhere (at most [`MAX_ADOPTED_OUT`]), and sends, memberships and client results addressed to such a
//!   connection through the home go on to that server. Entries go when the server says the connection ended,
//!   or when that incarnation leaves the view.
//! * **Finding the server:** [`Router::server_of`]: this node if the hub holds the connection here; else the
//!   server the home recorded; else the home. A send whose home is not live is offered to every live peer: only
//!   the node that serves the connection delivers it.
//! * **Relays:** a request the node layer relays to a peer ([`Router::relay`]) and the node layer's answer to
//!   one ([`RelayHost`]); and tunnel frames ([`Router::send_tunnel`]), one-way and in link order, for a
//!   transport whose socket is on one node and whose connection runs on another. The mesh carries them as opaque bytes over the links, under the links' credit window
//!   (a full link fails the relay at once) and with a deadline; it knows nothing of HTTP.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;

use super::envelope::{unexpected, Answer, Envelope, Request};
use super::{LocalHub, MeshError, Router};
use crate::cluster::NodeId;
use crate::connection::ConnectionId;

/// How many connections negotiated here may run on other nodes at once; adoption beyond is refused.
pub const MAX_ADOPTED_OUT: usize = 1 << 20;

/// The node layer's side of relays: it serves the requests peers relay to this node and forgets what a peer that
/// left had adopted. Registered with [`Router::set_relay_host`].
pub(crate) trait RelayHost: Send + Sync + 'static {
    /// Answers a request that peer `from` relayed here (both in the node layer's own encoding).
    fn serve_relay(&self, from: NodeId, payload: Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send>>;

    /// Incarnation `peer` left the view: the connections it had adopted from this node are gone.
    fn peer_left(&self, peer: &NodeId);

    /// Incarnation `peer` joined the view. When it is a new incarnation of the home of connections served here
    /// (restarted after its drain moved them here), the node layer tells it which, so that it passes their sends
    /// and requests on instead of dropping them.
    fn peer_joined(&self, peer: &NodeId);

    /// A tunnel frame from `from` (see [`Router::send_tunnel`]), in the order the link delivered it. Must not
    /// block: it runs on the task that reads the links.
    fn tunnel_frame(&self, from: &NodeId, payload: Bytes);
}

/// The connections of this node that run elsewhere, by id, with the incarnation that serves each.
pub(super) type AdoptedOut = HashMap<ConnectionId, NodeId>;

/// Why a peer may not adopt a connection of this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdoptError {
    /// [`MAX_ADOPTED_OUT`] connections of this node already run elsewhere.
    #[error("this node already has {0} connections served by other nodes")]
    Full(usize),
}

impl<H: LocalHub> Router<H> {
    /// Registers the node layer's relay host.
    pub(crate) fn set_relay_host(&self, host: Weak<dyn RelayHost>) {
        *self.relay_host.write() = Some(host);
    }

    /// Whether incarnation `generation` of node `name` is live in this node's view (this node included).
    pub(crate) fn is_live_incarnation(&self, name: &str, generation: u64) -> bool {
        self.live
            .read()
            .iter()
            .any(|id| &*id.name == name && id.generation == generation)
    }

    /// Whether incarnation `id` left this node's view (declared dead, or superseded by a newer generation) and is
    /// not back; a peer not in the view yet (just started) has not left.
    pub(crate) fn has_left(&self, id: &NodeId) -> bool {
        self.is_stale(id)
    }

    /// The live incarnation of node `name`, if it is a live peer.
    pub(crate) fn live_incarnation(&self, name: &str) -> Option<NodeId> {
        self.live_peer(name)
    }

    /// When this node's view of the live members last changed.
    pub(crate) fn live_changed_at(&self) -> tokio::time::Instant {
        *self.live_changed.lock()
    }

    /// When a link of this node last opened or dropped.
    pub(crate) fn links_changed_at(&self) -> tokio::time::Instant {
        *self.links_changed.lock()
    }

    /// Whether this node's membership queue holds group sends after a membership change right now (for the test
    /// harness, which waits until no node does).
    #[cfg(feature = "test-util")]
    pub(crate) fn is_settling(&self) -> bool {
        self.settling.load(Ordering::Relaxed)
    }

    /// The live peers' incarnations.
    pub(crate) fn peer_incarnations(&self) -> Vec<NodeId> {
        self.peers()
    }

    /// This node's incarnation (generation 0 until it joins a cluster).
    pub(crate) fn incarnation(&self) -> NodeId {
        self.id()
    }

    /// Records that connection `id` of this node is served by `server` from now on.
    pub(crate) fn adopt_out(&self, id: ConnectionId, server: NodeId) -> Result<(), AdoptError> {
        // Sends by id wait until the route is changed and what went the old way went again (`super::kept_direct`).
        let _numbering = self.next_direct.lock();
        let old = {
            let mut adopted = self.adopted_out.lock();
            if adopted.len() >= MAX_ADOPTED_OUT && !adopted.contains_key(&id) {
                self.adoptions_refused.fetch_add(1, Ordering::Relaxed);
                return Err(AdoptError::Full(adopted.len()));
            }
            adopted.insert(id.clone(), server.clone())
        };
        if let Some(old) = old.filter(|old| *old != server) {
            self.reroute_retained(&id, &old, &server);
        }
        Ok(())
    }

    /// Forgets that connection `id` runs elsewhere (it ended there, or runs here now).
    pub(crate) fn forget_adopted(&self, id: &ConnectionId) {
        self.adopted_out.lock().remove(id);
        // Nor where it ran before its server left: one taken over here (its home) must not get that route back
        // when the server returns (`Router::servers_back`), which sent its sends by id to a node that had dropped
        // it (chaos defect 38).
        self.orphans.lock().remove(id);
    }


    /// Tells the node layer that `peer` joined the view.
    pub(super) fn peer_joined_relays(&self, peer: &NodeId) {
        let host = self.relay_host.read().as_ref().and_then(Weak::upgrade);
        if let Some(host) = host {
            host.peer_joined(peer);
        }
    }

    /// Forgets the connections `peer` served (the view lost that incarnation); the node layer is told after
    /// ([`Router::peer_left_host`]).
    pub(super) fn peer_left_relays(&self, peer: &NodeId) {
        let mut orphaned = Vec::new();
        self.adopted_out.lock().retain(|id, server| {
            let left = server == peer;
            if left {
                orphaned.push((id.clone(), server.clone()));
            }
            !left
        });
        // Their keepers may take them over: their sends are offered to every peer a while (`super::kept_direct`).
        self.orphan(orphaned);
    }

    /// Tells the node layer that `peer` left (what it had adopted from this node is gone; what it ran that this
    /// node keeps is taken over).
    pub(super) fn peer_left_host(&self, peer: &NodeId) {
        let host = self.relay_host.read().as_ref().and_then(Weak::upgrade);
        if let Some(host) = host {
            host.peer_left(peer);
        }
    }

    /// The node that serves connection `id` of hub `hub`, as far as this node knows: `None` for this node.
    pub(super) fn server_of(&self, hub: &str, id: &ConnectionId) -> Option<String> {
        let home = self.home_of(id);
        if self.is_local(home) {
            return self.adopted_out.lock().get(id).map(|server| server.name.to_string());
        }
        if self.hub(hub).is_some_and(|runtime| runtime.handle_of(id).is_some()) {
            // Adopted here: served here, whatever its name says.
            return None;
        }
        Some(home.to_owned())
    }

    /// Relays `payload` to the node layer of incarnation `generation` of node `node`; its answer, or why there is
    /// none within `timeout`.
    pub(crate) async fn relay(
        &self,
        node: &str,
        generation: u64,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, MeshError> {
        if !self.is_live_incarnation(node, generation) {
            return Err(MeshError::NodeGone(node.to_owned()));
        }
        match self
            .request_with_timeout(node, Request::Relay { payload }, timeout)
            .await
        {
            Answer::Relayed(answer) => Ok(answer),
            Answer::PeerLeft => Err(MeshError::NodeGone(node.to_owned())),
            answer => Err(unexpected(answer)),
        }
    }

    /// Sends a tunnel frame to incarnation `peer`: delivered to its node layer in the order sent, after anything
    /// sent to it before, or not at all (the link is full or gone: the caller ends the tunnel).
    pub(crate) fn send_tunnel(&self, peer: &NodeId, payload: Bytes) -> Result<(), MeshError> {
        match self.send_to_peer(peer, &Envelope::Tunnel { payload }) {
            Ok(()) => Ok(()),
            Err(crate::cluster::LinkError::QueueFull(_)) => Err(MeshError::Busy(peer.name.to_string())),
            Err(_) => Err(MeshError::NodeGone(peer.name.to_string())),
        }
    }

    pub(super) fn on_tunnel_frame(&self, from: &NodeId, payload: Bytes) {
        let host = self.relay_host.read().as_ref().and_then(Weak::upgrade);
        if let Some(host) = host {
            host.tunnel_frame(from, payload);
        }
    }

    /// Serves a relayed request through the node layer (an empty answer if it has gone).
    pub(super) async fn serve_relay(&self, from: &NodeId, payload: Bytes) -> Answer {
        let host = self.relay_host.read().as_ref().and_then(Weak::upgrade);
        match host {
            Some(host) => Answer::Relayed(host.serve_relay(from.clone(), payload).await),
            None => Answer::Failed(super::envelope::WireError::Group("this node serves no relays".into())),
        }
    }
}
