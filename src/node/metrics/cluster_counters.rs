//! [`ClusterCounters`]: what a node's cluster tasks (`super::super::cluster`) count for its metrics: link frames
//! and bytes received, membership views seen, members declared dead. Relaxed atomics, added to where the tasks
//! already run (one add per frame, a few per view change), read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cluster::{MembershipView, NodeId};

/// The counts of a node's cluster tasks; kept in its `ClusterHealth`.
#[derive(Debug, Default)]
pub(crate) struct ClusterCounters {
    link_frames_received: AtomicU64,
    link_bytes_received: AtomicU64,
    membership_changes: AtomicU64,
    declared_dead: AtomicU64,
}

impl ClusterCounters {
    /// A frame of `bytes` bytes came over a link.
    pub(crate) fn link_frame(&self, bytes: usize) {
        self.link_frames_received.fetch_add(1, Ordering::Relaxed);
        self.link_bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The membership view changed to `view`; `previous_live` holds the live members of the view before (none for
    /// the first), replaced by this one's. A member that was live and is now dead counts as declared dead (one the
    /// view lists dead before it ever saw it live, as gossip may while it learns of a new member, does not).
    pub(crate) fn view_changed(&self, view: &MembershipView, previous_live: &mut Option<Vec<NodeId>>) {
        if let Some(before) = previous_live.as_ref() {
            self.membership_changes.fetch_add(1, Ordering::Relaxed);
            let newly_dead = view.dead.iter().filter(|id| before.contains(id)).count();
            self.declared_dead.fetch_add(newly_dead as u64, Ordering::Relaxed);
        }
        *previous_live = Some(view.live_ids());
    }

    /// Link frames received so far.
    pub(crate) fn link_frames_received(&self) -> u64 {
        self.link_frames_received.load(Ordering::Relaxed)
    }

    /// Link bytes received so far.
    pub(crate) fn link_bytes_received(&self) -> u64 {
        self.link_bytes_received.load(Ordering::Relaxed)
    }

    /// Membership views seen after the first.
    pub(crate) fn membership_changes(&self) -> u64 {
        self.membership_changes.load(Ordering::Relaxed)
    }

    /// Members this node's view declared dead.
    pub(crate) fn declared_dead(&self) -> u64 {
        self.declared_dead.load(Ordering::Relaxed)
    }
}
