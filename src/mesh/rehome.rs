//! Re-homing: what the router does when the cluster's membership changes. Members of nodes that left are
//! dropped and requests waiting on them fail; groups this node no longer owns are given up; every node sends
//! snapshots of its own members so that owners, old and new, hold every membership; sends retained for an owner
//! that left go again, and held sends are retried.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::envelope::Envelope;
use super::group::GroupKey;
use super::owner::MembershipOp;
use super::router::InOrder;
use super::{LocalHub, Router};
use crate::cluster::{LinkError, NodeId};
use crate::connection::ConnectionId;

/// How long notices that peers had declared this node dead count together, and how long after closing its
/// connections for them a node ignores further ones (one from each peer arrives for one episode).
pub const CUT_OFF_QUIET: Duration = Duration::from_secs(10);

/// The notices that peers had declared this node dead (`Router::on_declared_dead`), and when this node last
/// stalled.
#[derive(Default)]
pub(super) struct CutOff {
    first_notice: Option<tokio::time::Instant>,
    notified_by: HashSet<Arc<str>>,
    closed_at: Option<tokio::time::Instant>,
    stalled_at: Option<tokio::time::Instant>,
    /// When the stall watcher last ran: long ago means the node is stalled right now (it was just resumed, and the
    /// watcher has not run yet).
    last_check: Option<tokio::time::Instant>,
    /// Times this node closed its connections for it.
    closes: u64,
    /// The largest view (nodes live, this one included) held within the last [`VIEW_MEMORY`], and when it was last
    /// held: the size a majority is counted against ([`Router::sees_minority`]).
    largest_view: Option<(usize, tokio::time::Instant)>,
    /// The current view's size.
    view: usize,
}

/// How often a node checks that it is not stalled, and the gap between checks that counts as a stall (a stopped
/// process, or one starved that long): about the failure-detection time, past which peers declare it dead.
const STALL_CHECK: Duration = Duration::from_millis(250);
const STALL_GAP: Duration = Duration::from_millis(1000);
/// How long after a stall a node's notices say it stalled.
const STALL_MEMORY: Duration = Duration::from_secs(30);
/// How long a node counts a larger view it had as the cluster's size: a cluster that shrank for good (nodes
/// scaled down, or dead and not replaced) is counted at its new size after it.
const VIEW_MEMORY: Duration = Duration::from_secs(60);

/// Notes when the node's runtime stalled (its timer fired much later than asked), until the router is gone.
pub(super) async fn watch_for_stalls<H: LocalHub>(router: Weak<Router<H>>) {
    loop {
        let asked = tokio::time::Instant::now();
        tokio::time::sleep(STALL_CHECK).await;
        let now = tokio::time::Instant::now();
        let Some(router) = router.upgrade() else {
            return;
        };
        let mut cut_off = router.cut_off.lock();
        if now.duration_since(asked) >= STALL_GAP {
            cut_off.stalled_at = Some(now);
        }
        cut_off.last_check = Some(now);
    }
}

/// The error of the Close message a connection gets when its node was declared dead by its peers.
pub const CUT_OFF_ERROR: &str =
    "This server was cut off from its cluster and may have missed messages for this connection; reconnect.";

impl<H: LocalHub> Router<H> {
    /// Applies a new live set (this node included) where no node hands over; see [`Router::on_view_handing_over`].
    #[cfg(test)]
    pub(crate) fn on_view(self: &Arc<Self>, live: Vec<NodeId>) {
        self.on_view_handing_over(live, &[]);
    }

    /// Applies a new live set (this node included), of which the nodes in `handing_over` hand what they own over
    /// before they leave: drops members of nodes that left, fails requests waiting on them, gives up groups this
    /// node no longer owns, sends snapshots so owners (old and new) hold every membership, and retries held sends.
    ///
    /// A node that hands over owns nothing (unless every node does): a draining node says so once its connections
    /// are gone (`Node::drain`), so its groups and users move to their next owners while it is live and linked and
    /// nothing is left to move when it leaves. The move is the one a view change makes: the old owner gives a group
    /// up in its membership queue after the sends queued before (its actor fans them out, then tells the member
    /// nodes it released the group), passes later ones on, and the new owner holds the group's sends until every
    /// peer's snapshot is in.
    pub(crate) fn on_view_handing_over(self: &Arc<Self>, mut live: Vec<NodeId>, handing_over: &[NodeId]) {
        live.sort();
        if !live.iter().any(|id| self.is_local(&id.name)) {
            // Membership can briefly report this node as missing (after a stall); keep routing to itself.
            live.push(self.id());
            live.sort();
        }
        // Sends by id wait from here until those passed to nodes that left went again (`super::kept_direct`): none
        // may take a route through a node that left, or overtake the sends that go again.
        let numbering = self.next_direct.lock();
        // Under `held`: the new owners and the re-sends of sends handed to the owners that left appear to senders
        // at once (see `group_send_stamped`), so no later send overtakes a re-send.
        let mut held = self.held.lock();
        let mut placed: Vec<NodeId> = live.iter().filter(|id| !handing_over.contains(id)).cloned().collect();
        if placed.is_empty() {
            placed.clone_from(&live);
        }
        let (left, joined) = {
            let mut current = self.live.write();
            let mut current_placed = self.placed.write();
            if *current == live && *current_placed == placed {
                return;
            }
            if *current_placed != placed {
                let before = std::mem::replace(&mut *current_placed, placed);
                *self.placed_before.write() = Some((tokio::time::Instant::now(), before));
            }
            let before: HashSet<&NodeId> = current.iter().collect();
            let after: HashSet<&NodeId> = live.iter().collect();
            let left: Vec<NodeId> = before
                .difference(&after)
                .filter(|id| !self.is_local(&id.name))
                .map(|&id| id.clone())
                .collect();
            let joined: Vec<NodeId> = after.difference(&before).map(|&id| id.clone()).collect();
            *current = live;
            *self.live_changed.lock() = tokio::time::Instant::now();
            (left, joined)
        };
        self.resend_retained(&left, &mut held);
        // Queued before `held` is let go: a send flushed after it (the re-sends, by the queue's tick or a sender)
        // must reach the membership queue behind the change, so that a group this node now owns holds it while
        // settling; ahead of it, the re-sends met no group yet and went out to this node's members alone (the
        // long rolling-restart test lost sends that way).
        if !left.is_empty() {
            self.enqueue(MembershipOp::NodesLeft { nodes: left.clone() });
        }
        // The groups this node no longer owns are released in the membership queue, in order: the sends queued
        // before this change still reach their actors (`MembershipOp::ViewChanged`).
        let peers = self.peers();
        self.note_view_size(peers.len() + 1);
        let returning = {
            let departed = self.departed.lock();
            joined.iter().any(|id| departed.get(&id.name) == Some(&id.generation))
        };
        self.enqueue(MembershipOp::ViewChanged {
            peers: peers.clone(),
            joined: !joined.is_empty(),
            returning,
        });
        drop(held);
        tracing::info!(parent: &self.span, ?left, ?joined, "membership changed");
        let mut returned = Vec::new();
        {
            // What an incarnation that left still had in flight is ignored from now on (`is_stale`), until that
            // incarnation is live again (a thawed node keeps its generation). One entry per absent name.
            let mut departed = self.departed.lock();
            for id in &left {
                let newest = departed.entry(id.name.clone()).or_insert(id.generation);
                *newest = (*newest).max(id.generation);
            }
            for id in &joined {
                // The very incarnation this node declared dead is back (it was frozen or cut off): what was sent
                // to its connections meanwhile never reached them. It is told so once a link is up, and closes
                // them (`on_declared_dead`), so that no client misses messages without knowing.
                if departed.remove(&id.name) == Some(id.generation) && !self.is_local(&id.name) {
                    returned.push(id.clone());
                    self.rejoined.lock().insert(id.clone());
                    if self.send_to_peer(id, &self.declared_dead_notice()).is_ok() {
                        self.rejoined.lock().remove(id);
                    }
                }
            }
            // Names that never come back (a cluster whose nodes get new names) are forgotten, oldest generation
            // (start time) first, past the bound.
            let over = departed.len().saturating_sub(DEPARTED_CAP);
            if over > 0 {
                let mut oldest: Vec<(u64, Arc<str>)> =
                    departed.iter().map(|(name, &generation)| (generation, name.clone())).collect();
                oldest.sort_unstable();
                for (_, name) in oldest.into_iter().take(over) {
                    departed.remove(&name);
                }
                let hit = &self.bounds_hit;
                hit.hit(&hit.departed_evicted, over as u64, &self.span, "forgot the oldest departed nodes over their bound");
            }
        }
        // Where this node's connections run, as the servers that are back still serve them (`super::kept_direct`).
        self.servers_back(&returned);
        for node in &left {
            // A node that came back as a new generation is in both lists (by name): only the old incarnation's
            // requests fail and only its members go; the new one's are kept.
            self.fail_pending(node);
            self.peer_left_relays(node);
            self.peer_left_hints(node);
        }
        // The sends by id passed to nodes that left go again, for the keepers of their connections: after the
        // routes through those nodes are forgotten above, so that no later send can take one, and before the node
        // layer takes their connections over, so that the keeper here holds its own when it does.
        self.resend_direct(&left);
        drop(numbering);
        for node in &left {
            self.peer_left_host(node);
        }
        for peer in &peers {
            // Push ours, and pull theirs: a snapshot sent in answer to this request is read after this view
            // change, so the groups this node now owns get every member.
            self.send_snapshot_to(peer);
            let _ = self.send_to_peer(peer, &Envelope::SnapshotRequest);
        }
        self.enqueue(MembershipOp::OwnSnapshot);
        self.flush_held();
        self.offers_on_view(&peers);
        for node in joined.iter().filter(|id| !self.is_local(&id.name)) {
            self.peer_joined_relays(node);
        }
    }

    /// Peer `from` had declared this node dead and sees it live again. When a majority of its peers did so within
    /// [`CUT_OFF_QUIET`] (this node was frozen or cut off from most of the cluster past failure detection), its
    /// connections may have missed messages: each is closed with a Close message that allows reconnecting, so
    /// that its client starts over and knows. A node only a minority declared dead (the other side of a freeze:
    /// the frozen node declared everyone dead) keeps its connections. Once per episode: notices within
    /// [`CUT_OFF_QUIET`] after a close are ignored.
    pub(super) fn on_declared_dead(&self, from: &NodeId, sender_stalled: bool) {
        if sender_stalled {
            // The peer was stopped itself (SIGSTOP, a long pause): it declared everyone dead, and sent nothing.
            return;
        }
        let peers = self.peers().len().max(1);
        {
            let now = tokio::time::Instant::now();
            let mut cut_off = self.cut_off.lock();
            if cut_off.closed_at.is_some_and(|at| now.duration_since(at) < CUT_OFF_QUIET) {
                return;
            }
            if cut_off.first_notice.is_none_or(|at| now.duration_since(at) >= CUT_OFF_QUIET) {
                cut_off.first_notice = Some(now);
                cut_off.notified_by.clear();
            }
            // At most one entry per name of the cluster.
            cut_off.notified_by.insert(from.name.clone());
            if cut_off.notified_by.len() * 2 <= peers {
                return;
            }
            cut_off.closed_at = Some(now);
            cut_off.closes += 1;
            cut_off.first_notice = None;
            cut_off.notified_by.clear();
        }
        tracing::warn!(parent: &self.span, by = %from, "most peers had declared this node dead: closing its connections, which may have missed messages");
        for runtime in self.runtimes() {
            runtime.close_all_with(CUT_OFF_ERROR);
        }
    }

    /// How often this node closed its connections because most peers had declared it dead.
    pub(super) fn cut_off_closes(&self) -> u64 {
        self.cut_off.lock().closes
    }

    /// The notice to a peer this node had declared dead, saying whether this node itself stalled lately.
    pub(super) fn declared_dead_notice(&self) -> Envelope {
        Envelope::DeclaredDead {
            stalled: self.stalled_lately(),
        }
    }

    /// Notes the size of a new view (this node included), for [`Router::sees_minority`].
    pub(super) fn note_view_size(&self, size: usize) {
        let now = tokio::time::Instant::now();
        let mut cut_off = self.cut_off.lock();
        let before = cut_off.view;
        if let Some((largest, since)) = &mut cut_off.largest_view {
            if before >= *largest {
                // The largest view held until now.
                *since = now;
            }
        }
        cut_off.view = size;
        let replace = cut_off
            .largest_view
            .is_none_or(|(largest, since)| size >= largest || now.duration_since(since) > VIEW_MEMORY);
        if replace {
            cut_off.largest_view = Some((size, now));
        }
    }

    /// Whether this node's view holds fewer than half the nodes of its largest view lately: most of the cluster left
    /// its view at once, so it is more likely cut off (an inbound-only partition, say) than they dead, and its own
    /// view of who died is not to be acted on (a keeper's take-over, `src/node`). In a cluster of two, the one left
    /// holds half, and acts.
    pub(crate) fn sees_minority(&self) -> bool {
        let cut_off = self.cut_off.lock();
        cut_off
            .largest_view
            .is_some_and(|(largest, _)| cut_off.view * 2 < largest)
    }

    /// Whether this node stalled lately (a stall the watcher saw within [`STALL_MEMORY`], or one going on now:
    /// resumed, with the watcher not run since): then its notices that a peer declared it dead say so.
    pub(crate) fn stalled_lately(&self) -> bool {
        self.stalled_within(STALL_MEMORY)
    }

    /// Whether this node stalled within `memory` (or is stalled now, with the watcher not run since): then its own
    /// view of who died is not to be acted on for a while (a keeper's take-over, `src/node`).
    pub(crate) fn stalled_within(&self, memory: Duration) -> bool {
        let cut_off = self.cut_off.lock();
        cut_off.stalled_at.is_some_and(|at| at.elapsed() < memory)
            || cut_off.last_check.is_some_and(|at| at.elapsed() >= STALL_GAP)
    }

    /// Every membership this node holds. Whole, not only the groups the receiver owns in this node's view:
    /// views change at slightly different times on different nodes, and the receiver picks by its own.
    ///
    /// A member moving here whose owner's marker waits behind held sends (`mesh/arrivals.rs`) is listed too: the
    /// owner moved it here, and a new owner that learnt the group from this snapshot would otherwise never fan out
    /// to it. Read before the memberships, so a marker applied between the two reads is in the second.
    pub(super) fn local_snapshot(&self) -> Vec<(GroupKey, Vec<ConnectionId>)> {
        let mut arriving: HashMap<GroupKey, Vec<ConnectionId>> = HashMap::new();
        for (key, item) in self.delivered.lock().waiting_markers() {
            if let InOrder::Moved { connection, arriving: true } = item {
                arriving.entry(key.clone()).or_default().push(connection.clone());
            }
        }
        let mut snapshot: Vec<(GroupKey, Vec<ConnectionId>)> = self
            .runtimes()
            .iter()
            .flat_map(|runtime| runtime.local_memberships())
            .map(|(key, mut members)| {
                if let Some(more) = arriving.remove(&key) {
                    let more: Vec<ConnectionId> = more.into_iter().filter(|id| !members.contains(id)).collect();
                    members.extend(more);
                }
                (key, members)
            })
            .collect();
        snapshot.extend(arriving);
        // The kept members this node holds for connections it keeps (`super::kept`) travel like its own.
        snapshot.extend(self.kept.lock().snapshot());
        snapshot
    }

    /// Sends this node's snapshot to `node`, in parts under the link frame cap (see [`snapshot_parts`]). Parts of
    /// one snapshot follow each other on the link: two snapshots to the same peer never interleave. Read and sent
    /// under `membership_sends`, which a join's or leave's request to a peer owner takes too (`requests.rs`): a
    /// change made after the read goes out after the snapshot, so the owner, which applies a node's snapshots and
    /// changes in link order, never has a snapshot undo a later leave (a member that outlived its connection) or
    /// a later join.
    pub(super) fn send_snapshot_to(&self, node: &NodeId) {
        let _in_order = self.membership_sends.lock();
        let mut remaining = self.local_snapshot();
        let mut budget = SNAPSHOT_PART_BYTES;
        let mut part: u32 = 0;
        'budget: loop {
            let parts = snapshot_parts(std::mem::take(&mut remaining), budget);
            let count = parts.len();
            let mut parts = parts.into_iter().enumerate();
            while let Some((index, groups)) = parts.next() {
                let envelope = Envelope::Snapshot {
                    part,
                    last: index + 1 == count,
                    groups,
                };
                match self.send_to_peer(node, &envelope) {
                    Ok(()) => part = part.saturating_add(1),
                    // A smaller frame cap than this node's parts: split the rest finer. The receiver does not
                    // mind where parts end (a group's members may span parts).
                    Err(LinkError::TooLarge { max, .. }) if max / 2 >= MIN_SNAPSHOT_PART_BYTES => {
                        budget = budget.min(max / 2);
                        let Envelope::Snapshot { groups, .. } = envelope else {
                            return;
                        };
                        remaining = groups;
                        remaining.extend(parts.flat_map(|(_, groups)| groups));
                        continue 'budget;
                    }
                    Err(error) => {
                        // The receiver sees no last part and asks again, or settles at its deadline; the next
                        // link-up or view change sends a whole snapshot again.
                        tracing::debug!(parent: &self.span, %error, %node, part, "a snapshot could not be sent");
                        return;
                    }
                }
            }
            return;
        }
    }

    /// Applies one part of `from`'s snapshot to the groups this node owns: a group met for the first time in this
    /// snapshot (not in `listed`) holds exactly the members listed for `from`; one met again (its members span
    /// parts) gets the rest added. `listed` collects the groups met so far.
    pub(super) fn apply_snapshot_part(
        &self,
        from: &NodeId,
        groups: Vec<(GroupKey, Vec<ConnectionId>)>,
        listed: &mut HashSet<GroupKey>,
    ) {
        // Only the groups this node owns in its own view; the rest are other owners' business.
        for (key, members) in groups {
            if !self.is_local(&self.owner_of(&key).name) {
                continue;
            }
            if listed.contains(&key) {
                self.groups.extend(&key, from, members);
            } else {
                listed.insert(key.clone());
                self.groups.replace(&key, from, members);
            }
        }
    }

    /// After the last part of `from`'s snapshot: groups this node owns that it did not list hold none of `from`'s
    /// connections. A group it holds but no longer owns (a view change placed it elsewhere, and its release waits
    /// in the membership queue) keeps them, as [`Router::apply_snapshot_part`] left it: the release tells the
    /// nodes it lists, and a node left out would hold the new owner's sends until it gives up waiting.
    pub(super) fn finish_snapshot(&self, from: &NodeId, listed: &HashSet<GroupKey>) {
        for key in self.groups.keys() {
            if !listed.contains(&key) && self.is_local(&self.owner_of(&key).name) {
                self.groups.replace(&key, from, Vec::new());
            }
        }
    }
}

/// The most node names a router remembers as departed (left the view and not back), to ignore what their last
/// incarnation still had in flight. Past it the oldest are forgotten, counted: a message of one of those that
/// arrives after thousands of other nodes left is taken as current.
pub const DEPARTED_CAP: usize = 4_096;

/// The size a snapshot part aims at (estimated, see [`snapshot_parts`]): a quarter of the default link frame cap
/// (1 MiB), so an estimate off by a factor of four still fits. A node with a smaller cap splits finer when a part
/// is refused as too large.
const SNAPSHOT_PART_BYTES: usize = 256 * 1024;
/// Below this a part is not split further (a frame cap this small cannot carry a snapshot).
const MIN_SNAPSHOT_PART_BYTES: usize = 4 * 1024;

/// Splits a snapshot into parts of about `budget` encoded bytes each, in order. A group whose members do not fit
/// in what is left of a part continues in the next one (listed again with the rest of its members). Every part
/// holds at least one membership, so a budget smaller than one membership still makes progress.
pub(super) fn snapshot_parts(
    groups: Vec<(GroupKey, Vec<ConnectionId>)>,
    budget: usize,
) -> Vec<Vec<(GroupKey, Vec<ConnectionId>)>> {
    // Estimates of MessagePack's size, generous: strings plus their headers and the structures around them.
    fn key_bytes(key: &GroupKey) -> usize {
        key.hub.len() + key.name.len() + 32
    }
    fn id_bytes(id: &ConnectionId) -> usize {
        id.as_str().len() + 8
    }
    let mut parts = Vec::new();
    let mut part: Vec<(GroupKey, Vec<ConnectionId>)> = Vec::new();
    let mut used = 0;
    for (key, members) in groups {
        let key_cost = key_bytes(&key);
        if !part.is_empty() && used + key_cost > budget {
            parts.push(std::mem::take(&mut part));
            used = 0;
        }
        used += key_cost;
        let mut entry = Vec::new();
        for id in members {
            let cost = id_bytes(&id);
            if used + cost > budget && !(entry.is_empty() && part.is_empty()) {
                // The part is full: the group continues in the next one.
                if !entry.is_empty() {
                    part.push((key.clone(), std::mem::take(&mut entry)));
                }
                parts.push(std::mem::take(&mut part));
                used = key_cost;
            }
            used += cost;
            entry.push(id);
        }
        part.push((key, entry));
    }
    if !part.is_empty() || parts.is_empty() {
        // An empty snapshot is one empty part: it still says "none of mine".
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn snapshot(groups: usize, members: usize) -> Vec<(GroupKey, Vec<ConnectionId>)> {
        (0..groups)
            .map(|group| {
                let ids = (0..members)
                    .map(|member| ConnectionId::new(format!("c{group}-{member}.node-1")))
                    .collect();
                (GroupKey::named("hub", &format!("g{group}")), ids)
            })
            .collect()
    }

    /// The memberships of the parts, in order, as (group, connection) pairs.
    fn flatten(parts: &[Vec<(GroupKey, Vec<ConnectionId>)>]) -> Vec<(String, String)> {
        parts
            .iter()
            .flatten()
            .flat_map(|(key, ids)| ids.iter().map(|id| (key.name.to_string(), id.to_string())))
            .collect()
    }

    #[test]
    fn parts_stay_under_the_budget_and_keep_every_membership_in_order() {
        for (groups, members, budget) in [(1, 10_000, 4096), (3_000, 3, 4096), (50, 200, 1000), (7, 0, 100)] {
            let whole = snapshot(groups, members);
            let parts = snapshot_parts(whole.clone(), budget);
            assert_eq!(flatten(&parts), flatten(&[whole]), "{groups} groups of {members}");
            for part in &parts {
                let encoded = rmp_serde::to_vec(part).unwrap();
                assert!(encoded.len() <= budget, "a part of {} bytes over {budget}", encoded.len());
            }
            // Every group is listed, even one without members here ("none of mine" is news to its owner).
            let listed: HashSet<&GroupKey> = parts.iter().flatten().map(|(key, _)| key).collect();
            assert_eq!(listed.len(), groups);
        }
    }

    #[test]
    fn a_budget_smaller_than_one_membership_still_makes_progress() {
        let parts = snapshot_parts(snapshot(2, 3), 1);
        assert_eq!(parts.len(), 6);
        assert_eq!(flatten(&parts).len(), 6);
    }

    #[test]
    fn an_empty_snapshot_is_one_empty_part() {
        assert_eq!(snapshot_parts(Vec::new(), 4096).len(), 1);
    }

    /// A node that loses most of the cluster from its view at once (cut off) sees a minority until most of it is
    /// back; one that loses a node of three, or the other of two, does not; a smaller view counts as the cluster's
    /// size once the larger one is a minute old.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_node_that_lost_most_of_its_view_at_once_sees_a_minority() {
        use super::super::test_router::owner_node;
        let names = ["n1", "n2", "n3", "n4", "n5"];
        let nodes: Vec<NodeId> = names.iter().map(|name| NodeId::new(*name, 7)).collect();
        let (router, _links, _hub) = owner_node(&nodes[0]);
        router.on_view(nodes.clone());
        assert!(!router.sees_minority());
        router.on_view(nodes[..1].to_vec());
        assert!(router.sees_minority(), "alone of five");
        router.on_view(nodes[..2].to_vec());
        assert!(router.sees_minority(), "two of five");
        router.on_view(nodes[..3].to_vec());
        assert!(!router.sees_minority(), "three of five");
        router.on_view(nodes[..2].to_vec());
        assert!(router.sees_minority(), "two of five, again");
        // A minute at two: two is the cluster's size now, and one of them acts alone.
        tokio::time::sleep(VIEW_MEMORY + Duration::from_secs(1)).await;
        router.on_view(nodes[..1].to_vec());
        assert!(!router.sees_minority(), "the other of two");
        // Five for a long while, then cut off: a minority however long the five lasted.
        router.on_view(nodes.clone());
        tokio::time::sleep(VIEW_MEMORY * 3).await;
        router.on_view(nodes[..1].to_vec());
        assert!(router.sees_minority(), "cut off after a long spell of five");
    }
}
