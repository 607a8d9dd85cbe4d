//! The entrance of the owner's membership queue (`super::owner`): admission under [`OPS_CAP`], and a join or leave
//! applied at once by its caller when nothing waits ahead of it, under the lock the queue's task applies ops under.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::group::GroupError;
use super::group_send::{HeldSend, HELD_SENDS_CAP};
use super::owner::{Done, MembershipOp, OpsState};
use super::{LocalHub, MeshError, Router};

/// The most sends, joins and leaves (what clients and peers cause) waiting in the membership queue: the same
/// bound as the sends a node holds ([`HELD_SENDS_CAP`]). Past it a send stays held at its sender (backpressure:
/// it goes when the queue drained, in order) and a join or leave is refused with [`queue_full`]. What the
/// cluster's membership changes enqueue (views, snapshots) is not counted: it is bounded by those changes.
pub(super) const OPS_CAP: usize = HELD_SENDS_CAP;

/// The sending side of the membership queue, with the count of ops under [`OPS_CAP`] waiting in it.
pub(super) struct OpsQueue {
    sender: mpsc::UnboundedSender<MembershipOp>,
    queued: Arc<AtomicUsize>,
    /// Every op queued and not yet applied: an op may be applied at once only when this is zero.
    pending: Arc<AtomicUsize>,
    /// What the ops are applied to, locked while one is.
    state: Arc<tokio::sync::Mutex<OpsState>>,
}

/// The receiving side of the membership queue.
pub(super) struct OpsReceiver {
    pub(super) receiver: mpsc::UnboundedReceiver<MembershipOp>,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) pending: Arc<AtomicUsize>,
    pub(super) state: Arc<tokio::sync::Mutex<OpsState>>,
}

/// A new membership queue.
pub(super) fn ops_queue() -> (OpsQueue, OpsReceiver) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let pending = Arc::new(AtomicUsize::new(0));
    let state = Arc::new(tokio::sync::Mutex::new(OpsState::default()));
    (
        OpsQueue {
            sender,
            queued: queued.clone(),
            pending: pending.clone(),
            state: state.clone(),
        },
        OpsReceiver {
            receiver,
            queued,
            pending,
            state,
        },
    )
}

impl MembershipOp {
    /// Whether clients or peers cause this op (counted under [`OPS_CAP`]), rather than membership changes.
    pub(super) fn is_input(&self) -> bool {
        matches!(
            self,
            MembershipOp::Register { .. }
                | MembershipOp::Unregister { .. }
                | MembershipOp::Move { .. }
                | MembershipOp::Send { .. }
        )
    }
}

/// Why a join or leave was refused: the owner's membership queue is full.
fn queue_full() -> MeshError {
    MeshError::Group(GroupError::Unavailable(format!(
        "the group's owner has {OPS_CAP} membership changes and sends waiting; try again"
    )))
}


impl<H: LocalHub> Router<H> {
    /// Queues an op; a join or leave over [`OPS_CAP`] is refused (its caller gets [`queue_full`]), and a send
    /// should go through [`Router::try_enqueue_send`] instead, which hands it back.
    pub(super) fn enqueue(&self, op: MembershipOp) {
        let Some(op) = self.apply_at_once(op) else {
            return;
        };
        if op.is_input() && !self.admit() {
            match op {
                MembershipOp::Register { done, .. }
                | MembershipOp::Unregister { done, .. }
                | MembershipOp::Move { done, .. } => {
                    self.finish(done, Err(queue_full()));
                }
                _ => {}
            }
            return;
        }
        self.push_op(op);
    }

    /// Queues a send to a group this node owns, or hands it back when the queue holds [`OPS_CAP`] ops (the
    /// caller holds it and tries again).
    pub(super) fn try_enqueue_send(&self, send: HeldSend) -> Result<(), HeldSend> {
        if !self.admit() {
            return Err(send);
        }
        self.push_op(MembershipOp::Send { send });
        Ok(())
    }

    /// Takes a place under [`OPS_CAP`], or counts a refusal.
    fn admit(&self) -> bool {
        if self.ops.queued.fetch_add(1, Ordering::Relaxed) < OPS_CAP {
            return true;
        }
        self.ops.queued.fetch_sub(1, Ordering::Relaxed);
        let hit = &self.bounds_hit;
        hit.hit(&hit.ops_refused, 1, &self.span, "the membership queue is full: refused a join, leave or send");
        false
    }

    fn push_op(&self, op: MembershipOp) {
        let input = op.is_input();
        self.ops.pending.fetch_add(1, Ordering::AcqRel);
        // The queue lives as long as the router; a send fails only while the node shuts down.
        if self.ops.sender.send(op).is_err() {
            self.ops.pending.fetch_sub(1, Ordering::AcqRel);
            if input {
                self.ops.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Applies a join or leave at once, in the caller's task, when no op is waiting ahead of it and the queue's
    /// state is free: the same order as through the queue, without a hand-off to the queue's task. Hands the op
    /// back otherwise (it is queued), and for a join to a group with sends waiting for members (orphans), which
    /// the queue's task releases.
    fn apply_at_once(&self, op: MembershipOp) -> Option<MembershipOp> {
        if !matches!(op, MembershipOp::Register { .. } | MembershipOp::Unregister { .. })
            || self.ops.pending.load(Ordering::Acquire) != 0
        {
            return Some(op);
        }
        let Ok(state) = self.ops.state.try_lock() else {
            return Some(op);
        };
        // Checked again under the lock, which the queue's task holds until an op it took is applied.
        if self.ops.pending.load(Ordering::Acquire) != 0 {
            return Some(op);
        }
        match op {
            MembershipOp::Register { ref key, .. } if state.has_orphans(key) => Some(op),
            MembershipOp::Register {
                from,
                key,
                connection,
                done,
            } => {
                self.register_now(&from, &key, connection, done);
                None
            }
            MembershipOp::Unregister {
                from,
                key,
                connection,
                done,
            } => {
                self.unregister_now(&from, &key, &connection, done);
                None
            }
            op => Some(op),
        }
    }

    pub(super) async fn own_op(&self, make: impl FnOnce(Done) -> MembershipOp) -> Result<(), MeshError> {
        let (reply, done) = oneshot::channel();
        self.enqueue(make(Done::Local(reply)));
        done.await
            .unwrap_or_else(|_| Err(MeshError::Group(GroupError::Unavailable("the node is stopping".into()))))
    }
}
