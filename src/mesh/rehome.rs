//! Re-homing: what the router does when the cluster's membership changes. Members of nodes that left are
//! dropped and requests waiting on them fail; groups this node no longer owns are given up; every node sends
//! snapshots of its own members so that owners, old and new, hold every membership; sends retained for an owner
//! that left go again, and held sends are retried.

use std::collections::HashSet;
use std::sync::Arc;

use super::envelope::Envelope;
use super::group::GroupKey;
use super::owner::MembershipOp;
use super::{LocalHub, Router};
use crate::cluster::NodeId;
use crate::connection::ConnectionId;

impl<H: LocalHub> Router<H> {
    /// Applies a new live set (this node included): drops members of nodes that left, fails requests waiting on
    /// them, gives up groups this node no longer owns, sends snapshots so owners (old and new) hold every
    /// membership, and retries held sends.
    pub(crate) fn on_view(self: &Arc<Self>, mut live: Vec<NodeId>) {
        live.sort();
        if !live.iter().any(|id| self.is_local(&id.name)) {
            // Membership can briefly report this node as missing (after a stall); keep routing to itself.
            live.push(self.id());
            live.sort();
        }
        // Under `held`: the new owners and the re-sends of sends handed to the owners that left appear to senders
        // at once (see `group_send_stamped`), so no later send overtakes a re-send.
        let mut held = self.held.lock();
        let (left, joined) = {
            let mut current = self.live.write();
            if *current == live {
                return;
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
            (left, joined)
        };
        self.resend_retained(&left, &mut held);
        drop(held);
        tracing::info!(parent: &self.span, ?left, ?joined, "membership changed");
        {
            // What an incarnation that left still had in flight is ignored from now on (`is_stale`), until that
            // incarnation is live again (a thawed node keeps its generation). One entry per absent name.
            let mut departed = self.departed.lock();
            for id in &left {
                let newest = departed.entry(id.name.clone()).or_insert(id.generation);
                *newest = (*newest).max(id.generation);
            }
            for id in &joined {
                departed.remove(&id.name);
            }
        }
        for node in &left {
            // A node that came back as a new generation is in both lists (by name): only the old incarnation's
            // requests fail and only its members go; the new one's are kept.
            self.fail_pending(node);
            self.peer_left_relays(node);
            self.peer_left_hints(node);
        }
        if !left.is_empty() {
            self.enqueue(MembershipOp::NodesLeft { nodes: left.clone() });
        }
        self.groups.release(|key| self.is_local(&self.owner_of(key).name));
        let peers = self.peers();
        self.enqueue(MembershipOp::ViewChanged { peers: peers.clone() });
        for peer in &peers {
            // Push ours, and pull theirs: a snapshot sent in answer to this request is read after this view
            // change, so the groups this node now owns get every member.
            self.send_snapshot_to(peer);
            let _ = self.send_to_peer(peer, &Envelope::SnapshotRequest);
        }
        self.enqueue(MembershipOp::OwnSnapshot);
        self.flush_held();
    }

    /// This node's memberships in the groups `owner` owns.
    /// Every membership this node holds. Whole, not only the groups the receiver owns in this node's view:
    /// views change at slightly different times on different nodes, and the receiver picks by its own.
    pub(super) fn local_snapshot(&self) -> Vec<(GroupKey, Vec<ConnectionId>)> {
        self.runtimes()
            .iter()
            .flat_map(|runtime| runtime.local_memberships())
            .collect()
    }

    pub(super) fn send_snapshot_to(&self, node: &NodeId) {
        let groups = self.local_snapshot();
        if let Err(error) = self.send_to_peer(node, &Envelope::Snapshot { groups }) {
            tracing::debug!(parent: &self.span, %error, %node, "a snapshot could not be sent");
        }
    }

    /// Makes the groups this node owns hold exactly `from`'s memberships listed in its snapshot.
    pub(super) async fn apply_snapshot(&self, from: &NodeId, groups: Vec<(GroupKey, Vec<ConnectionId>)>) {
        // Only the groups this node owns in its own view; the rest are other owners' business.
        let groups: Vec<(GroupKey, Vec<ConnectionId>)> = groups
            .into_iter()
            .filter(|(key, _)| self.is_local(&self.owner_of(key).name))
            .collect();
        let listed: HashSet<GroupKey> = groups.iter().map(|(key, _)| key.clone()).collect();
        for (key, members) in groups {
            if let Err(error) = self.groups.replace(&key, from, members).await {
                tracing::warn!(parent: &self.span, %error, "a snapshot could not be applied");
            }
        }
        // Groups this node owns that the snapshot does not list hold none of `from`'s connections.
        for key in self.groups.keys() {
            if !listed.contains(&key) {
                let _ = self.groups.replace(&key, from, Vec::new()).await;
            }
        }
    }
}
