//! The last leg of a group send: a group actor's fan-out to the nodes that hold members (one link message per
//! node), and delivery to this node's members, once: a send re-sent after its owner died is recognised by its
//! stamp and dropped where it already arrived.

use std::sync::{Arc, Weak};

use super::arrivals::{Arrivals, Via};
use super::envelope::{Envelope, WireFrame};
use super::group::{GroupKey, Stamp};
use super::group_actor::{Delivery, Fanout};
use super::kept::mark_of;
use super::arrivals::Arrived;
use super::router::InOrder;
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
        let handed_from = router.handed_from(key);
        if router.is_local(&node.name) {
            let via = Via {
                owner: router.id(),
                handed_from,
            };
            router.deliver_group_locally(key, frame, except, stamp, Some(&via));
            return Delivery::Sent;
        }
        let envelope = Envelope::GroupDeliver {
            key: key.clone(),
            except: except.to_vec(),
            frame: WireFrame::of(frame),
            stamp: stamp.clone(),
            handed_from,
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
            router.apply_move_in_order(key, &router.id(), id, arriving);
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

    fn released(&self, node: &NodeId, key: &GroupKey) -> Delivery {
        let Some(router) = self.0.upgrade() else {
            return Delivery::Gone;
        };
        if router.is_local(&node.name) {
            router.apply_released(key, &router.id());
            return Delivery::Sent;
        }
        match router.send_to_peer(node, &Envelope::GroupReleased { key: key.clone() }) {
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
    /// Delivers a group send to this node's members, unless it was delivered here already; one that overtook an
    /// earlier send of its origin to the group waits for it (`mesh/arrivals.rs`). Delivered under the records'
    /// lock: what one arrival releases reaches the members before what the next one (on another link, or the
    /// gap expiry) releases, so the order the records decided is the order members see.
    pub(super) fn deliver_group_locally(
        &self,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
        via: Option<&Via>,
    ) {
        self.deliver_arrived(key, frame, except, stamp, via);
    }

    /// Delivers a send this node's members missed while the group's owner had declared this node dead
    /// (`super::missed`): only if this node still follows the origin's sends to the group (it delivered an earlier
    /// one, and its members did not all leave since), so a member that joined meanwhile gets nothing older, and
    /// only once, in the origin's order, as any group send.
    pub(super) fn deliver_missed_locally(
        &self,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
    ) {
        self.deliver_arrived(key, frame, except, stamp, None);
    }

    /// `via`: the owner that fanned the send out; none for a send kept while this node was declared dead (missed).
    fn deliver_arrived(
        &self,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
        via: Option<&Via>,
    ) {
        let missed = via.is_none();
        // Marked with its place in the group's order, for the keepers of stateful members (`super::kept`).
        let frame = SharedFrame::with_mark(frame, mark_of(key, stamp));
        let mut delivered = self.delivered.lock();
        if missed && !delivered.follows(key, &stamp.origin) {
            tracing::debug!(parent: &self.span, ?key, origin = %stamp.origin, seq = stamp.seq, "a missed group send for a group this node no longer follows: dropped");
            return;
        }
        let arrived = delivered.arrive(
            key,
            stamp,
            via,
            InOrder::Send((frame, Arc::clone(except), stamp.clone())),
            tokio::time::Instant::now(),
        );
        if arrived.deliver.is_empty() {
            tracing::trace!(
                parent: &self.span,
                ?key,
                origin = %stamp.origin,
                seq = stamp.seq,
                prev = stamp.prev,
                via = ?via,
                record = delivered.describe(key, &stamp.origin.name),
                "a group send arrived again, or waits for an earlier one"
            );
            return;
        }
        self.apply_arrived(&mut delivered, key, arrived);
    }

    /// An owner's marker moving `connection` in or out of group `key` here: applied after the sends held here,
    /// which come before it in the group's order (`mesh/arrivals.rs`), under the records' lock.
    /// `from`: the owner that sent it.
    pub(super) fn apply_move_in_order(&self, key: &GroupKey, from: &NodeId, connection: &ConnectionId, arriving: bool) {
        let mut delivered = self.delivered.lock();
        let moved = InOrder::Moved {
            connection: connection.clone(),
            arriving,
        };
        let arrived = delivered.after_held(key, Some(from), moved, tokio::time::Instant::now());
        if arrived.deliver.is_empty() {
            tracing::debug!(parent: &self.span, ?key, %connection, arriving, %from, "a member's move waits behind held group sends");
        }
        self.apply_arrived(&mut delivered, key, arrived);
    }

    /// Applies, in order, what the records handed back for group `key`, counting what their bounds did.
    fn apply_arrived(&self, delivered: &mut Arrivals<InOrder>, key: &GroupKey, arrived: Arrived<InOrder>) {
        let hit = &self.bounds_hit;
        if arrived.untracked {
            let what = "the table of delivered group sends is full: delivered one without a record";
            hit.hit(&hit.delivered_untracked, 1, &self.span, what);
        }
        if arrived.unordered > 0 {
            let what = "too many group sends wait for an earlier one: delivered some without it";
            hit.hit(&hit.waiting_refused, arrived.unordered, &self.span, what);
        }
        for item in arrived.deliver {
            self.apply_in_order(delivered, key, item);
        }
    }

    /// Owner `from` released group `key` while live (ownership moved): the new owner's sends that waited behind its
    /// last fan-outs go now, in order, under the records' lock.
    pub(super) fn apply_released(&self, key: &GroupKey, from: &NodeId) {
        let mut delivered = self.delivered.lock();
        tracing::trace!(parent: &self.span, ?key, %from, record = delivered.describe(key, &from.name), "an owner released a group");
        let arrived = delivered.released(key, from, tokio::time::Instant::now());
        self.apply_arrived(&mut delivered, key, arrived);
    }

    /// Sends that waited [`super::arrivals::GAP_WAIT`] for an earlier one go on without it (on the membership
    /// queue's tick), and so do a new owner's sends that waited that long for the old owner's release or whose old
    /// owner left the view; under the records' lock as in [`Router::deliver_group_locally`].
    pub(super) fn expire_gaps(&self) {
        let live = self.live.read().clone();
        let gone = |owner: &NodeId| !live.contains(owner);
        let mut delivered = self.delivered.lock();
        let mut deliver = Vec::new();
        let gaps = delivered.expire(tokio::time::Instant::now(), gone, &mut deliver);
        if gaps > 0 {
            let hit = &self.bounds_hit;
            let what = "an earlier group send never arrived: delivered those that waited for it";
            hit.hit(&hit.gaps_given_up, gaps, &self.span, what);
        }
        for (key, item) in deliver {
            self.apply_in_order(&mut delivered, &key, item);
        }
    }

    /// A send to this node's members, or a member's move here, in the group's order.
    fn apply_in_order(&self, delivered: &mut Arrivals<InOrder>, key: &GroupKey, item: InOrder) {
        match item {
            InOrder::Send((frame, except, stamp)) => self.deliver_to_members(delivered, key, &frame, &except, &stamp),
            InOrder::Moved { connection, arriving } => {
                if self.on_member_moved(key, &connection, arriving) {
                    self.note_left(delivered, key, &connection);
                }
            }
        }
    }

    fn deliver_to_members(
        &self,
        delivered: &mut Arrivals<InOrder>,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
    ) {
        let members_here = self
            .hub(&key.hub)
            .is_some_and(|runtime| runtime.deliver_group(key, frame, except));
        let followed = self
            .kept
            .lock()
            .record(key, stamp, frame, except, tokio::time::Instant::now());
        if !members_here && !followed {
            // No member here (any more): forget the group's records, so the table does not grow with every group
            // that ever existed.
            delivered.forget_group(key);
        }
    }
}
