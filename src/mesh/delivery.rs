//! The last leg of a group send: a group actor's fan-out to the nodes that hold members (one link message per
//! node), and delivery to this node's members, once: a send re-sent after its owner died is recognised by its
//! stamp and dropped where it already arrived.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Weak};

use super::envelope::{Envelope, WireFrame};
use super::group::{GroupKey, Stamp};
use super::group_actor::{Delivery, Fanout};
use super::{LocalHub, Router};
use crate::cluster::{LinkError, NodeId};
use crate::connection::{ConnectionId, SharedFrame};

/// The most (group, origin node) pairs whose last delivered sequence number a node keeps (one per group with
/// members here and node that sends to it; dropped when the group has no member here any more). Past it, the
/// sends of a new pair are delivered without a record, counted: one of them re-sent after its owner died could
/// then arrive twice.
pub const DELIVERED_CAP: usize = 262_144;

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

    fn moved(&self, node: &NodeId, key: &GroupKey, id: &ConnectionId, arriving: bool) -> Delivery {
        let Some(router) = self.0.upgrade() else {
            return Delivery::Gone;
        };
        if router.is_local(&node.name) {
            router.on_member_moved(key, id, arriving);
            return Delivery::Sent;
        }
        let envelope = Envelope::MemberMoved {
            key: key.clone(),
            connection: id.clone(),
            arriving,
        };
        match router.send_to_peer(node, &envelope) {
            Ok(()) => Delivery::Sent,
            Err(LinkError::QueueFull(_)) => Delivery::Full,
            Err(_) => Delivery::Gone,
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
        let mut untracked = false;
        {
            let mut delivered = self.delivered.lock();
            let full = delivered.len() >= DELIVERED_CAP;
            match delivered.entry((key.clone(), stamp.origin.name.clone())) {
                Entry::Occupied(entry) => {
                    let (generation, last) = entry.into_mut();
                    match stamp.origin.generation.cmp(generation) {
                        // A later incarnation of the sender (it restarted and counts from 1 again): its sequence
                        // starts here, and the earlier one's is forgotten.
                        Ordering::Greater => (*generation, *last) = (stamp.origin.generation, 0),
                        // From an earlier incarnation, after its successor's sends: that life is over.
                        Ordering::Less => return,
                        Ordering::Equal => {}
                    }
                    if stamp.seq <= *last {
                        // A re-sent send that arrived here before its owner died.
                        tracing::trace!(parent: &self.span, ?key, origin = %stamp.origin, seq = stamp.seq, last = *last, "a group send arrived again");
                        return;
                    }
                    *last = stamp.seq;
                }
                // Over the bound: delivered without a record, so a re-send of it could arrive twice (counted).
                Entry::Vacant(_) if full => untracked = true,
                Entry::Vacant(entry) => {
                    entry.insert((stamp.origin.generation, stamp.seq));
                }
            }
        }
        if untracked {
            let hit = &self.bounds_hit;
            hit.hit(
                &hit.delivered_untracked,
                1,
                &self.span,
                "the table of delivered group sends is full: delivered one without a record",
            );
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
