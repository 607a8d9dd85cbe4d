//! How often the mesh's bounds were hit ([`MeshBoundsHit`], one per router), as [`crate::Limits::bounds_hit`]
//! counts the connections' bounds. The bounds themselves live beside what they bound (`mesh/group_send.rs`,
//! `mesh/owner.rs`, `mesh/directory.rs`, `mesh/arrivals.rs`); `docs/semantics.md` ("Bounds") lists them with
//! their policies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{LocalHub, Router};

/// How often each of the mesh's bounds was hit on one node. Counted only where a bound is hit, never per message.
#[derive(Debug, Default)]
pub struct MeshBoundsHit {
    /// Group sends forgotten from the retained buffer before their time ([`super::group_send::RETAIN`]) was up,
    /// to stay within its count or byte bound.
    pub retained_evicted: AtomicU64,
    /// Group sends dropped (the oldest) because more than the bound were held for unreachable owners.
    pub held_dropped: AtomicU64,
    /// Group sends dropped (the oldest) because more than the bound were held by an owner while it settled.
    pub deferred_dropped: AtomicU64,
    /// Group sends to groups without members here dropped because too many already waited for members.
    pub orphans_dropped: AtomicU64,
    /// Joins and leaves refused, and sends held back at their sender, because the membership queue was full.
    pub ops_refused: AtomicU64,
    /// Group sends dropped because their group actor's mailbox held [`super::directory::MAILBOX_CAP`] sends.
    pub mailbox_refused: AtomicU64,
    /// Group sends delivered without a dedupe record because [`super::arrivals::DELIVERED_CAP`] pairs were kept.
    pub delivered_untracked: AtomicU64,
    /// Departed node names forgotten past [`super::rehome::DEPARTED_CAP`].
    pub departed_evicted: AtomicU64,
    /// Copies of group sends to a member node dropped because its link stayed full for
    /// [`super::group_actor::FANOUT_PATIENCE`].
    pub fanout_dropped: AtomicU64,
    /// Times the table of each group's last send from this node ([`super::group_send::LAST_SENT_CAP`]) was full and
    /// forgotten.
    pub last_sent_cleared: AtomicU64,
    /// Sends delivered without the earlier send of their origin they waited for, because
    /// [`super::arrivals::WAITING_CAP`] sends waited already.
    pub waiting_refused: AtomicU64,
    /// Earlier sends given up on after [`super::arrivals::GAP_WAIT`]: the sends that waited for them went on.
    pub gaps_given_up: AtomicU64,
    /// Groups not followed for a kept connection, because [`super::kept::KEPT_GROUPS_CAP`] were followed already.
    pub kept_groups_refused: AtomicU64,
    /// Kept connections resumed after sends they missed had left their group's history
    /// ([`super::kept::KEPT_HISTORY_CAP`]).
    pub kept_history_gaps: AtomicU64,
    /// Offers of a young node that no peer had answered, dropped (the oldest) past
    /// [`super::offers::MAX_UNANSWERED_OFFERS`].
    pub offers_dropped: AtomicU64,
    /// Broadcasts dropped (the oldest) from a hub's history for kept connections past
    /// [`super::kept_broadcasts::KEPT_BROADCASTS_CAP`].
    pub kept_broadcasts_evicted: AtomicU64,
    /// Sends by id forgotten before [`super::kept_direct::RETAIN_DIRECT`] was up, past
    /// [`super::kept_direct::RETAINED_DIRECT_CAP`] (they cannot be sent again if their node dies).
    pub direct_retained_evicted: AtomicU64,
    /// Sends by id a keeper did not hold for a kept connection, past [`super::kept_direct::KEPT_DIRECT_CAP`] or
    /// [`super::kept_direct::KEPT_DIRECT_TOTAL_CAP`].
    pub kept_direct_dropped: AtomicU64,
    /// Copies of group sends an owner did not keep for a node it declared dead, past
    /// [`super::missed::MISSED_CAP`] or [`super::missed::MISSED_BYTES_CAP`] (that node's members miss them if it
    /// comes back).
    pub missed_refused: AtomicU64,
    /// Connections that moved without what they got of their groups' sends, past
    /// [`super::sends_got::LEFT_NOTES_CAP`] (a send re-sent after its owner left could reach one twice).
    pub left_notes_refused: AtomicU64,
}

impl MeshBoundsHit {
    /// Adds `count` hits to `counter`; logs a warning on the first hit and then at every power of two, so a bound
    /// hit all the time is visible without a log line per message.
    pub(super) fn hit(&self, counter: &AtomicU64, count: u64, span: &tracing::Span, what: &str) {
        let before = counter.fetch_add(count, Ordering::Relaxed);
        let after = before + count;
        if before == 0 || after.ilog2() != before.ilog2() {
            tracing::warn!(parent: span, total = after, "{what}");
        }
    }
}

/// Beside the bounds, what the mesh counts for the node's metrics: group sends held at their sender (their owner
/// unreachable, or earlier sends still held) and sent again after their owner left, and re-homing: how long an
/// owner held sends after a membership change until every snapshot it waited for arrived (or it stopped waiting).
#[derive(Debug, Default)]
pub struct MeshCounters {
    /// Group sends that waited in the sender's held queue.
    pub sends_held: AtomicU64,
    /// Group sends sent again because the owner they were handed to left.
    pub sends_resent: AtomicU64,
    /// Group sends an owner sent again to a node it had declared dead, once that node was back
    /// (`super::missed`).
    pub missed_resent: AtomicU64,
    /// Membership changes this node finished re-homing after.
    pub rehomes: AtomicU64,
    /// Their durations together, in microseconds.
    pub rehome_micros_total: AtomicU64,
    /// The last one's, in microseconds.
    pub rehome_last_micros: AtomicU64,
}

impl MeshCounters {
    /// Re-homing after a membership change took `took`.
    pub(super) fn rehomed(&self, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.rehomes.fetch_add(1, Ordering::Relaxed);
        self.rehome_micros_total.fetch_add(micros, Ordering::Relaxed);
        self.rehome_last_micros.store(micros, Ordering::Relaxed);
    }
}

impl<H: LocalHub> Router<H> {
    /// How often this node's mesh hit its bounds, for the node to report (and tests to read).
    pub(crate) fn bounds_hit(&self) -> Arc<MeshBoundsHit> {
        self.bounds_hit.clone()
    }

    /// What this node's mesh counted of held and re-sent sends and of re-homing, for the node to report.
    pub(crate) fn mesh_counters(&self) -> Arc<MeshCounters> {
        self.counters.clone()
    }

    /// Group sends held at this node now, waiting for their owner.
    pub(crate) fn sends_held_now(&self) -> usize {
        self.held.lock().len()
    }
}
