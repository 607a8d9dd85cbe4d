//! Whether a node should be given traffic: its lifecycle ([`Lifecycle`], which reuses [`NodeStatus`]; a drain sets
//! it with `Node::set_lifecycle_status`) and the readiness rule `GET /readyz` answers with ([`Readiness`]).
//!
//! A node is **ready** when all of these hold:
//! * its lifecycle is [`NodeStatus::Serving`]: it has finished building and joining (a single node is serving
//!   once built), and it is neither stopping nor draining;
//! * in a cluster, its own membership view lists itself live;
//! * in a cluster, until the node has been ready once, the link to every live peer of that view (each one that
//!   published a link address) is up; after that a link that drops does not make it unready (it still serves its
//!   own clients, and one node's death must not take every other node out of the load balancer);
//! * in a cluster, the router has placed keys with that same live set, so the groups this node owns under the
//!   view are the ones it serves: it owns its share.
//!
//! A node alone in its view (the first node of a cluster, its seeds not up yet) is ready: it owns every key.
//! Reads only; the cluster tasks (`super::cluster`) keep the link and placement state this rule reads.

use std::sync::atomic::{AtomicU8, Ordering};

use super::cluster::{peers_of, ClusterRuntime};
use super::Node;
use crate::cluster::NodeStatus;

impl Node {
    /// The node's lifecycle status (`Draining` once it stops).
    pub(crate) fn lifecycle_status(&self) -> NodeStatus {
        self.inner.lifecycle.get()
    }

    /// Moves the node to `status`; `Draining` makes it unready at once (docs/semantics.md#readiness).
    pub(crate) fn set_lifecycle_status(&self, status: NodeStatus) {
        self.inner.lifecycle.set(status);
    }

    /// Whether the node should be given traffic now, and why not.
    pub(crate) async fn readiness(&self) -> Readiness {
        let cluster = self.inner.cluster.lock().await;
        check(self.lifecycle_status(), cluster.as_ref())
    }
}

/// Where the node is in its life: [`NodeStatus::Joining`] until built and joined, [`NodeStatus::Serving`] then,
/// [`NodeStatus::Draining`] once it stops (or drains). Only `Serving` is ready.
#[derive(Debug)]
pub(crate) struct Lifecycle(AtomicU8);

impl Lifecycle {
    /// A node that has not finished joining.
    pub(crate) fn joining() -> Self {
        Lifecycle(AtomicU8::new(encode(NodeStatus::Joining)))
    }

    pub(crate) fn get(&self) -> NodeStatus {
        match self.0.load(Ordering::Acquire) {
            0 => NodeStatus::Joining,
            1 => NodeStatus::Serving,
            2 => NodeStatus::Draining,
            _ => NodeStatus::Left,
        }
    }

    pub(crate) fn set(&self, status: NodeStatus) {
        self.0.store(encode(status), Ordering::Release);
    }
}

fn encode(status: NodeStatus) -> u8 {
    match status {
        NodeStatus::Joining => 0,
        NodeStatus::Serving => 1,
        NodeStatus::Draining => 2,
        NodeStatus::Left => 3,
    }
}

/// The answer to "should this node be given traffic?", with the reasons when not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// The node's lifecycle status.
    pub(crate) status: NodeStatus,
    /// Why the node is not ready; empty when it is.
    pub(crate) reasons: Vec<String>,
}

impl Readiness {
    pub(crate) fn is_ready(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// Applies the rule in the module doc to a node with this status and cluster (`None` for a single node).
pub(crate) fn check(status: NodeStatus, cluster: Option<&ClusterRuntime>) -> Readiness {
    let mut reasons = Vec::new();
    match status {
        NodeStatus::Serving => {}
        NodeStatus::Joining => reasons.push("joining: the node has not finished starting".to_owned()),
        NodeStatus::Draining => reasons.push("draining: the node is stopping".to_owned()),
        NodeStatus::Left => reasons.push("left: the node has left the cluster".to_owned()),
    }
    if let Some(cluster) = cluster {
        let view = cluster.membership().view();
        let health = cluster.health();
        if !view.is_live(&view.self_id) {
            reasons.push(format!("not joined: {} is not live in its own view", view.self_id));
        }
        if !health.was_ready() {
            for peer in peers_of(&view) {
                if !health.link_up(&peer.id) {
                    reasons.push(format!("link to {} is not up", peer.id));
                }
            }
        }
        if !health.placed_with(&view.live_ids()) {
            reasons.push("placement has not taken the current view yet".to_owned());
        }
        if reasons.is_empty() {
            health.mark_ready();
        }
    }
    Readiness { status, reasons }
}

#[cfg(test)]
mod tests {
    use super::{check, Lifecycle};
    use crate::cluster::NodeStatus;

    #[test]
    fn only_a_serving_single_node_is_ready() {
        let lifecycle = Lifecycle::joining();
        assert_eq!(lifecycle.get(), NodeStatus::Joining);
        assert!(!check(lifecycle.get(), None).is_ready());
        lifecycle.set(NodeStatus::Serving);
        assert!(check(lifecycle.get(), None).is_ready());
        lifecycle.set(NodeStatus::Draining);
        let draining = check(lifecycle.get(), None);
        assert!(!draining.is_ready());
        assert!(draining.reasons[0].starts_with("draining"), "{draining:?}");
    }
}
