//! The last leg of a group send: a group actor's fan-out to the nodes that hold members (one link message per
//! node), and delivery to this node's members, once: a send re-sent after its owner died is recognised by its
//! stamp and dropped where it already arrived.

use std::cmp::Ordering;
use std::sync::{Arc, Weak};

use super::envelope::{Envelope, WireFrame};
use super::group::{GroupKey, Stamp};
use super::group_actor::{Delivery, Fanout};
use super::{LocalHub, Router};
use crate::cluster::{LinkError, NodeId};
use crate::connection::{ConnectionId, SharedFrame};

/// Delivers a group actor's sends: to this node's members directly, to other nodes through the links.
pub(super) struct RouterFanout<H>(pub(super) Weak<Router<H>>);

impl<H: LocalHub> Fanout for RouterFanout<H> {
    fn deliver(
        &self,
        node: &NodeId,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
    ) -> Delivery {
        let Some(router) = self.0.upgrade() else {
            return Delivery::Gone;
        };
        if router.is_local(&node.name) {
            router.deliver_group_locally(key, frame, except, stamp);
            return Delivery::Sent;
        }
        let envelope = Envelope::GroupDeliver {
            key: key.clone(),
            except: except.to_vec(),
            frame: WireFrame::of(frame),
            stamp: stamp.clone(),
        };
        match router.send_to_peer(node, &envelope) {
            Ok(()) => Delivery::Sent,
            Err(LinkError::QueueFull(_)) => Delivery::Full,
            Err(error) => {
                // A node that cannot be reached is leaving; its members leave with it.
                tracing::debug!(parent: &router.span, %error, %node, "group delivery to a node failed");
                Delivery::Gone
            }
        }
    }

    fn dropped(&self, node: &NodeId, key: &GroupKey) {
        if let Some(router) = self.0.upgrade() {
            let hit = &router.bounds_hit;
            let what = format!("a member node's link stayed full: dropped its copy of a send to {key:?} for {node}");
            hit.hit(&hit.fanout_dropped, 1, &router.span, &what);
        }
    }
}

impl<H: LocalHub> Router<H> {
    /// Delivers a group send to this node's members, unless it was delivered here already.
    pub(super) fn deliver_group_locally(
        &self,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
    ) {
        {
            let mut delivered = self.delivered.lock();
            let (generation, last) = delivered
                .entry((key.clone(), stamp.origin.name.clone()))
                .or_insert((stamp.origin.generation, 0));
            match stamp.origin.generation.cmp(generation) {
                // A later incarnation of the sender (it restarted and counts from 1 again): its sequence starts
                // here, and the earlier one's is forgotten.
                Ordering::Greater => (*generation, *last) = (stamp.origin.generation, 0),
                // From an earlier incarnation, after its successor's sends: that life is over.
                Ordering::Less => return,
                Ordering::Equal => {}
            }
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
            self.delivered.lock().remove(&(key.clone(), stamp.origin.name.clone()));
        }
    }
}
