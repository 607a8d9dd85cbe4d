//! The group sends an owner fanned out without a node it had declared dead, kept for that node's return
//! ([`MissedSends`]).
//!
//! Why: failure detection is per node. A cut shorter than it for most nodes can still make one owner declare a
//! peer dead: the owner drops that peer's members, and its sends go on without them. If only a minority declared the
//! peer dead, the peer is not told (it keeps its connections, `docs/semantics.md`, "No silent gaps after a
//! freeze"), so its members would miss those sends without knowing (chaos defect 12,
//! `tests/cli/chaos/README.md`). So an owner keeps, for each incarnation it declared dead that had members in its
//! groups, the sends to those groups it accepted meanwhile; when that same incarnation is back and its snapshot
//! has given the groups its members again, the owner sends them to it (`Envelope::GroupMissed`). The member node
//! delivers one only where it still follows that origin's sends to the group, and only once
//! (`mesh/arrivals.rs`): a send that overtook it waits for it, a repeat is dropped, and a member that joined
//! meanwhile, or a node that closed its connections because most peers had declared it dead, gets nothing old.
//!
//! Plain data, kept by the membership queue (`mesh/owner.rs`), which records and hands back under its own lock.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::group::GroupKey;
use super::group_send::HeldSend;
use crate::cluster::NodeId;

/// How long an owner keeps sends for a node it declared dead: as long as links keep a departed peer's stream
/// for its return (`src/cluster/link/ractor/sender.rs`, `STREAM_GRACE`). Past it, a node that comes back is
/// more likely a longer freeze, which its peers tell it about (it closes its connections).
pub const MISSED_WINDOW: Duration = Duration::from_secs(30);

/// The most sends kept for nodes declared dead, all nodes together; past it, or past [`MISSED_BYTES_CAP`], a
/// node's later sends are not kept (counted): its members find the gap when the next send arrives
/// (`mesh/arrivals.rs`, [`super::arrivals::GAP_WAIT`]) and go on without it.
pub const MISSED_CAP: usize = 16_384;

/// The most bytes of frames those sends hold, all nodes together.
pub const MISSED_BYTES_CAP: usize = 64 * 1024 * 1024;

/// What is kept for one incarnation declared dead.
struct Missed {
    since: Instant,
    /// The groups (owned here) that had members of that node when it was declared dead.
    groups: HashSet<GroupKey>,
    /// Their sends accepted since, in the order accepted.
    sends: Vec<HeldSend>,
    bytes: usize,
    /// A send was not kept (over the bounds): later ones are not either, so what it gets back has no hole.
    full: bool,
}

/// The sends kept for incarnations this owner declared dead (see the module documentation).
#[derive(Default)]
pub(super) struct MissedSends {
    by_node: HashMap<NodeId, Missed>,
    count: usize,
    bytes: usize,
}

impl MissedSends {
    /// Whether nothing is kept for anyone: the common case, which costs a send nothing more.
    pub(super) fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// `node` was declared dead while it had members in `groups`: their sends are kept from now on.
    pub(super) fn node_left(&mut self, node: &NodeId, groups: Vec<GroupKey>, now: Instant) {
        if groups.is_empty() {
            return;
        }
        self.forget(node);
        self.by_node.insert(
            node.clone(),
            Missed {
                since: now,
                groups: groups.into_iter().collect(),
                sends: Vec::new(),
                bytes: 0,
                full: false,
            },
        );
    }

    /// An owner accepted `send`: kept for each node declared dead that had members in its group. Returns how
    /// many nodes' copies were not kept (over the bounds).
    pub(super) fn record(&mut self, send: &HeldSend) -> u64 {
        let bytes = send.frame_bytes();
        let mut refused = 0;
        for missed in self.by_node.values_mut() {
            if !missed.groups.contains(&send.key) {
                continue;
            }
            if missed.full || self.count >= MISSED_CAP || self.bytes + bytes > MISSED_BYTES_CAP {
                missed.full = true;
                refused += 1;
                continue;
            }
            missed.sends.push(send.clone());
            missed.bytes += bytes;
            self.count += 1;
            self.bytes += bytes;
        }
        refused
    }

    /// `node` is back, the same incarnation, and its members are in the groups again: what it missed, in the order
    /// accepted. Nothing is kept for it any more.
    pub(super) fn returned(&mut self, node: &NodeId) -> Vec<HeldSend> {
        self.forget(node).map(|missed| missed.sends).unwrap_or_default()
    }

    /// Forgets what was kept longer than [`MISSED_WINDOW`], and for incarnations whose life is over (`over`).
    pub(super) fn expire(&mut self, now: Instant, over: impl Fn(&NodeId) -> bool) {
        let gone: Vec<NodeId> = self
            .by_node
            .iter()
            .filter(|(node, missed)| now.duration_since(missed.since) > MISSED_WINDOW || over(node))
            .map(|(node, _)| node.clone())
            .collect();
        for node in gone {
            self.forget(&node);
        }
    }

    /// How many sends are kept now, all nodes together.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.count
    }

    fn forget(&mut self, node: &NodeId) -> Option<Missed> {
        let missed = self.by_node.remove(node)?;
        self.count -= missed.sends.len();
        self.bytes -= missed.bytes;
        Some(missed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::connection::SharedFrame;
    use crate::mesh::group::Stamp;

    fn send(group: &str, seq: u64) -> HeldSend {
        HeldSend {
            key: GroupKey::named("hub", group),
            except: Arc::from(Vec::new()),
            frame: SharedFrame::pre_encoded(Some(Bytes::from_static(b"{}\x1e")), None),
            stamp: Stamp {
                origin: NodeId::new("n1", 1),
                seq,
                prev: seq - 1,
            },
        }
    }

    #[test]
    fn a_returning_node_gets_the_sends_of_its_groups_in_order_and_only_once() {
        let (dead, other) = (NodeId::new("n3", 7), NodeId::new("n4", 7));
        let mut missed = MissedSends::default();
        let now = Instant::now();
        missed.node_left(&dead, vec![GroupKey::named("hub", "a")], now);
        assert!(!missed.is_empty());
        for (group, seq) in [("a", 1), ("b", 2), ("a", 3)] {
            assert_eq!(missed.record(&send(group, seq)), 0);
        }
        assert_eq!(missed.len(), 2);
        assert!(missed.returned(&other).is_empty());
        let back: Vec<u64> = missed.returned(&dead).iter().map(|send| send.stamp.seq).collect();
        assert_eq!(back, vec![1, 3]);
        assert!(missed.returned(&dead).is_empty());
        assert!(missed.is_empty());
        assert_eq!(missed.len(), 0);
    }

    #[test]
    fn past_the_bound_a_node_keeps_no_later_send_and_old_entries_expire() {
        let dead = NodeId::new("n3", 7);
        let mut missed = MissedSends::default();
        let now = Instant::now();
        missed.node_left(&dead, vec![GroupKey::named("hub", "a")], now);
        let mut refused = 0;
        for seq in 1..=(MISSED_CAP as u64 + 2) {
            refused += missed.record(&send("a", seq));
        }
        assert_eq!(refused, 2);
        assert_eq!(missed.len(), MISSED_CAP);
        missed.expire(now + MISSED_WINDOW + Duration::from_millis(1), |_| false);
        assert!(missed.is_empty());
        assert_eq!(missed.len(), 0);

        missed.node_left(&dead, vec![GroupKey::named("hub", "a")], now);
        missed.record(&send("a", 1));
        missed.expire(now, |node| node == &dead);
        assert!(missed.is_empty());
        // A node that had no members in groups owned here keeps nothing.
        missed.node_left(&dead, Vec::new(), now);
        assert!(missed.is_empty());
    }
}
