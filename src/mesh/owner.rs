//! The owner's side of the groups this node owns: membership changes (from this node, from peers, from
//! snapshots) and sends to those groups, applied one at a time in arrival order, through one queue, the membership
//! queue, and its task. A join or a leave that finds the queue empty and its state free is applied at once by its
//! caller (the connection's task, or the link's for a peer's), under the same lock the task applies ops under:
//! the order is the same as through the queue (nothing was waiting ahead of it), without waking the task. After a
//! change of the cluster's membership it holds sends until the peers' snapshots arrived (settling), and it keeps
//! sends to a group that has no members here yet for a while (orphans), in case they are on their way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::oneshot;

use super::envelope::{Answer, Envelope, WireFrame};
use super::group::{GroupError, GroupKey};
use super::group_send::{HeldSend, HELD_SENDS_CAP};
use super::missed::MissedSends;
use super::ops_queue::OpsReceiver;
use super::{LocalHub, MeshError, Router};
use crate::cluster::NodeId;
use crate::connection::ConnectionId;

/// After a membership change, how long an owner holds group sends while it waits for the snapshots of its
/// peers (so a re-homed group has all its members before it delivers).
const SETTLE: Duration = Duration::from_secs(3);
/// After a change that added nodes, how long an owner holds group sends at least: a node that just joined sees the
/// others over a few gossip rounds (about 200 ms each), and a group placed on it meanwhile would miss the members
/// of a node it does not see yet.
const SETTLE_AFTER_JOIN: Duration = Duration::from_secs(1);
/// How long after its start a node counts as young, whose view may still be growing.
pub(super) const YOUNG: Duration = Duration::from_secs(10);
/// How long an owner keeps a send to a group it has no members for, in case the members are on their way
/// (a snapshot or a join that raced with the send across different links).
const ORPHAN_WINDOW: Duration = Duration::from_secs(3);
/// The most sends an owner keeps for groups without members here, all groups together: a send past it is dropped
/// (counted), as it most likely had no member to reach. A client sending to many groups nobody joined makes
/// that happen, not memory growth.
const ORPHANS_CAP: usize = HELD_SENDS_CAP;

/// A change to the groups this node owns. Applied one at a time, in arrival order, so a snapshot and the
/// joins and leaves that follow it on the same link take effect in the order they were sent.
pub(super) enum MembershipOp {
    Register {
        from: NodeId,
        key: GroupKey,
        connection: ConnectionId,
        done: Done,
    },
    Unregister {
        from: NodeId,
        key: GroupKey,
        connection: ConnectionId,
        done: Done,
    },
    /// A member of node `from` moves to node `to` (`super::moves`).
    Move {
        from: NodeId,
        to: NodeId,
        key: GroupKey,
        connection: ConnectionId,
        done: Done,
    },
    /// A part of a peer's snapshot: parts count from 0, and the last says so.
    Snapshot {
        from: NodeId,
        part: u32,
        last: bool,
        groups: Vec<(GroupKey, Vec<ConnectionId>)>,
    },
    /// This node's own memberships, read when the op is applied.
    OwnSnapshot,
    /// A send to a group this node owns, in arrival order with the membership changes.
    Send { send: HeldSend },
    /// These incarnations left the view (dead, or superseded by a newer generation of their name): their members
    /// leave every group this node owns. In the queue, so that a join or snapshot of theirs queued before it is
    /// undone, and one queued after it is ignored (it is stale by then).
    NodesLeft { nodes: Vec<NodeId> },
    /// Membership changed: hold group sends until these peers' snapshots arrive (or [`SETTLE`] passes). `joined`:
    /// the change added nodes; `returning`: some of them are incarnations this node had declared dead (it was cut
    /// off or frozen), so its view grows back over a few gossip rounds, as a young node's does.
    ViewChanged {
        peers: Vec<NodeId>,
        joined: bool,
        returning: bool,
    },
}

type Orphan = (tokio::time::Instant, HeldSend);

/// What the membership queue keeps between ops.
#[derive(Default)]
pub(super) struct OpsState {
    /// While settling: the deadline and the peers whose snapshots are still awaited.
    settling: Option<(tokio::time::Instant, HashSet<NodeId>)>,
    /// After a change that added nodes: settling lasts at least until then.
    settle_not_before: Option<tokio::time::Instant>,
    /// The peers of the last view change this queue applied: what its sends and snapshots are in order with.
    view: HashSet<NodeId>,
    /// Senders not in `view` when their sends arrived (this node's view lags theirs): settling lasts until a view
    /// change that holds each is applied (it asks every peer for its members) or it is gone, or the deadline
    /// passes. Their snapshots alone do not end it: the sender placed the group here by a view that may hold
    /// further nodes whose members this node lacks. At most one entry per node name.
    unseen_senders: HashSet<NodeId>,
    /// Sends held while settling, in order.
    deferred: VecDeque<HeldSend>,
    /// Sends to groups without members here yet, with when they arrived.
    orphans: HashMap<GroupKey, VecDeque<Orphan>>,
    /// How many sends `orphans` holds, at most [`ORPHANS_CAP`].
    orphan_count: usize,
    /// Per peer, the snapshot whose parts are arriving (one per peer: a new part 0 starts over).
    snapshots: HashMap<NodeId, SnapshotParts>,
    /// The sends accepted for groups with members on nodes this node declared dead, for their return
    /// (`mesh/missed.rs`).
    missed: MissedSends,
}

impl OpsState {
    /// Whether sends to group `key` wait for its members here.
    pub(super) fn has_orphans(&self, key: &GroupKey) -> bool {
        self.orphans.contains_key(key)
    }
}

/// A peer's snapshot while its parts arrive.
#[derive(Default)]
struct SnapshotParts {
    /// The part expected next.
    next: u32,
    /// The groups this node owns that earlier parts listed.
    listed: HashSet<GroupKey>,
    /// A part went missing: the groups not listed cannot be told from those in the lost part.
    broken: bool,
}

/// Who waits for a membership op.
pub(super) enum Done {
    Local(oneshot::Sender<Result<(), MeshError>>),
    Remote { from: NodeId, id: u64 },
}

/// Runs the membership queue of `router` until the router is gone: applies each op as it arrives, and every
/// 100 ms ends settling, expires orphans that waited too long, and retries held group sends.
pub(super) async fn run_membership_queue<H: LocalHub>(
    weak: Weak<Router<H>>,
    mut queue: OpsReceiver,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let op = tokio::select! {
            op = queue.receiver.recv() => match op {
                Some(op) => {
                    if op.is_input() {
                        queue.queued.fetch_sub(1, Ordering::Relaxed);
                    }
                    Some(op)
                }
                None => return,
            },
            _ = tick.tick() => None,
        };
        let Some(router) = weak.upgrade() else {
            return;
        };
        let mut state = queue.state.lock().await;
        match op {
            Some(op) => {
                router.apply(op, &mut state).await;
                // Under the lock: a caller that sees no op pending may apply its own at once.
                queue.pending.fetch_sub(1, Ordering::Release);
            }
            None => {
                // Held sends are otherwise retried only by the next send, a link that comes up, or a view change:
                // a link whose queue was full (a slow peer) drains with no event, and the last sends before a
                // quiet spell would wait for the next one.
                router.flush_held();
                router.expire_gaps();
                router.expire_fences();
                // On the tick only: it visits every group with waiting sends, which must not cost every op.
                router.expire_orphans(&mut state);
                router.expire_missed(&mut state);
                router.expire_left_notes();
                router.groups.sweep();
                router.kept.lock().sweep(tokio::time::Instant::now());
            }
        }
        router.end_settling(&mut state).await;
        router.settling.store(state.settling.is_some(), Ordering::Relaxed);
    }
}

impl<H: LocalHub> Router<H> {
    /// Applies a join: refused for an incarnation that is gone, else in force at once.
    pub(super) fn register_now(&self, from: &NodeId, key: &GroupKey, connection: ConnectionId, done: Done) {
        if self.is_stale(from) {
            return self.finish(done, Err(left_error()));
        }
        self.groups.add(key, from, connection);
        self.finish(done, Ok(()));
    }

    /// Applies a leave.
    pub(super) fn unregister_now(&self, from: &NodeId, key: &GroupKey, connection: &ConnectionId, done: Done) {
        self.groups.remove(key, from, connection);
        self.finish(done, Ok(()));
    }

    async fn apply(&self, op: MembershipOp, state: &mut OpsState) {
        match op {
            MembershipOp::Register {
                from,
                key,
                connection,
                done,
            } => {
                self.register_now(&from, &key, connection, done);
                self.release_orphans(&key, state).await;
            }
            MembershipOp::Move {
                from,
                to,
                key,
                connection,
                done,
            } => {
                if self.is_stale(&from) || self.is_stale(&to) {
                    return self.finish(done, Err(left_error()));
                }
                let result = self
                    .groups
                    .move_member(&key, &from, &to, connection)
                    .await
                    .map_err(MeshError::from);
                self.finish(done, result);
                self.release_orphans(&key, state).await;
            }
            MembershipOp::Unregister {
                from,
                key,
                connection,
                done,
            } => self.unregister_now(&from, &key, &connection, done),
            MembershipOp::Snapshot { from, part, .. } if self.is_stale(&from) => {
                tracing::debug!(parent: &self.span, %from, part, "a snapshot of an incarnation that left: dropped");
                state.snapshots.remove(&from);
                if let Some((_, awaiting)) = &mut state.settling {
                    awaiting.remove(&from);
                }
            }
            MembershipOp::Snapshot {
                from,
                part,
                last,
                groups,
            } => {
                let keys: Vec<GroupKey> = groups.iter().map(|(key, _)| key.clone()).collect();
                tracing::debug!(parent: &self.span, %from, part, last, groups = keys.len(), "a snapshot part arrived");
                if part == 0 {
                    state.snapshots.insert(from.clone(), SnapshotParts::default());
                }
                // A missing entry means its first part was lost: what arrives still counts, but it is not whole.
                let parts = state.snapshots.entry(from.clone()).or_insert_with(|| SnapshotParts {
                    broken: true,
                    ..SnapshotParts::default()
                });
                parts.broken |= parts.next != part;
                parts.next = part.saturating_add(1);
                self.apply_snapshot_part(&from, groups, &mut parts.listed);
                if last {
                    if let Some(parts) = state.snapshots.remove(&from) {
                        if parts.broken {
                            // Ask for a whole one; settling waits for it (or its deadline).
                            tracing::debug!(parent: &self.span, %from, "a snapshot arrived with parts missing");
                            let _ = self.send_to_peer(&from, &Envelope::SnapshotRequest);
                        } else {
                            self.finish_snapshot(&from, &parts.listed);
                            if let Some((_, awaiting)) = &mut state.settling {
                                awaiting.remove(&from);
                            }
                            if !state.missed.is_empty() {
                                // Its members are back in the groups: later sends reach them through the actors,
                                // and what they missed goes ahead of those.
                                self.send_missed(&from, state.missed.returned(&from));
                            }
                        }
                    }
                }
                for key in keys {
                    self.release_orphans(&key, state).await;
                }
            }
            MembershipOp::OwnSnapshot => {
                let node = self.id();
                let own = self.local_snapshot();
                let keys: Vec<GroupKey> = own.iter().map(|(key, _)| key.clone()).collect();
                let mut listed = HashSet::new();
                self.apply_snapshot_part(&node, own, &mut listed);
                self.finish_snapshot(&node, &listed);
                for key in keys {
                    self.release_orphans(&key, state).await;
                }
            }
            MembershipOp::Send { send } => {
                let origin = &send.stamp.origin;
                // A sender this node declared dead and hears from again counts too (an inbound-only partition of
                // this node ended): its view is ahead of this node's, and this node dropped the members of every
                // node it declared dead.
                let unseen =
                    !self.is_local(&origin.name) && !state.view.contains(origin) && !self.is_superseded(origin);
                if unseen && state.unseen_senders.iter().all(|sender| sender.name != origin.name) {
                    state.unseen_senders.insert(origin.clone());
                }
                if state.settling.is_none() && unseen {
                    // A sender this node does not see yet: its view is ahead of this node's (this node just
                    // joined, and the sender placed the group here before this node knows its peers), so this
                    // node may not hold every member yet. Hold the group's sends until this node's own view
                    // change has gathered the peers' snapshots (or `SETTLE` passes).
                    let deadline = tokio::time::Instant::now() + SETTLE;
                    state.settling = Some((deadline, std::iter::once(origin.clone()).collect()));
                }
                if state.settling.is_some() {
                    state.deferred.push_back(send);
                    if state.deferred.len() > HELD_SENDS_CAP {
                        state.deferred.pop_front();
                        let hit = &self.bounds_hit;
                        hit.hit(
                            &hit.deferred_dropped,
                            1,
                            &self.span,
                            "group sends held while settling over their bound: dropped the oldest",
                        );
                    }
                } else {
                    self.owner_send(send, state).await;
                }
            }
            MembershipOp::NodesLeft { nodes } => {
                let now = tokio::time::Instant::now();
                for node in &nodes {
                    state.snapshots.remove(node);
                    let groups = self.groups.drop_node(node);
                    if !self.is_superseded(node) {
                        // Declared dead, and it may be back (frozen, or cut off from this node only).
                        state.missed.node_left(node, groups, now);
                    }
                }
            }
            MembershipOp::ViewChanged {
                peers,
                joined,
                returning,
            } => {
                // After every send queued before the change: those reached the actors of the groups this node
                // owned then, which fan out what they hold before they stop.
                self.groups.release(|key| self.is_local(&self.owner_of(key).name));
                let now = tokio::time::Instant::now();
                state.view = peers.iter().cloned().collect();
                state.settling = Some((now + SETTLE, peers.into_iter().collect()));
                if joined && (returning || self.born.elapsed() < YOUNG) {
                    // This node joined lately, or sees again nodes it had declared dead: its view may still be
                    // growing (it may not see every member yet, and so not have asked every node for its members),
                    // so it holds a little longer. (A soak saw an owner cut off by an inbound-only partition see two
                    // of its peers again 200 ms before the other two, and deliver in between without their members.)
                    state.settle_not_before = Some(now + SETTLE_AFTER_JOIN);
                }
                // A snapshot whose parts span the change was filtered by two views (which groups this node
                // owns): it settles nothing. The view change asked every peer for a new one.
                for parts in state.snapshots.values_mut() {
                    parts.broken = true;
                }
            }
        }
    }

    /// Ends settling when every awaited snapshot arrived or the deadline passed.
    async fn end_settling(&self, state: &mut OpsState) {
        let now = tokio::time::Instant::now();
        let settled = match &state.settling {
            Some((deadline, awaiting)) => {
                let seen = state
                    .unseen_senders
                    .iter()
                    .all(|sender| state.view.contains(sender) || self.is_superseded(sender));
                (awaiting.is_empty() && seen && state.settle_not_before.is_none_or(|at| now >= at))
                    || now >= *deadline
            }
            None => false,
        };
        if settled {
            state.settle_not_before = None;
            state.unseen_senders.clear();
            if let Some((deadline, _)) = state.settling.take() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                self.counters.rehomed(SETTLE.saturating_sub(left));
            }
            let waiting: Vec<GroupKey> = state.orphans.keys().cloned().collect();
            for key in waiting {
                self.release_orphans(&key, state).await;
            }
            // Some sends came straight from their origin and some were passed on by the previous owner, so an
            // origin's later send may have come first: each origin's sends to a group go in its order.
            in_origin_order(&mut state.deferred);
            while let Some(send) = state.deferred.pop_front() {
                self.owner_send(send, state).await;
            }
        }
    }

    /// Forgets the sends kept for nodes declared dead longer ago than [`super::missed::MISSED_WINDOW`], or whose
    /// life is over (a newer generation of their name).
    fn expire_missed(&self, state: &mut OpsState) {
        if !state.missed.is_empty() {
            state
                .missed
                .expire(tokio::time::Instant::now(), |node| self.is_superseded(node));
        }
    }

    /// Sends to `node`, which is back, the sends of its groups it missed while this node had declared it dead; its
    /// node delivers those its members still wait for (`Envelope::GroupMissed`).
    fn send_missed(&self, node: &NodeId, sends: Vec<HeldSend>) {
        if sends.is_empty() {
            return;
        }
        let mut sent = 0;
        for send in &sends {
            let envelope = Envelope::GroupMissed {
                key: send.key.clone(),
                except: send.except.to_vec(),
                frame: WireFrame::of(&send.frame),
                stamp: send.stamp.clone(),
            };
            match self.send_to_peer(node, &envelope) {
                Ok(()) => sent += 1,
                Err(error) => {
                    tracing::debug!(parent: &self.span, %error, %node, "could not send a node the sends it missed");
                    break;
                }
            }
        }
        tracing::info!(parent: &self.span, %node, sent, of = sends.len(), "sent a node that is back the group sends it missed");
        self.counters.missed_resent.fetch_add(sent, Ordering::Relaxed);
    }

    /// Drops sends that waited for members longer than [`ORPHAN_WINDOW`].
    fn expire_orphans(&self, state: &mut OpsState) {
        if state.settling.is_some() {
            // They wait for the end of settling (bounded by `ORPHANS_CAP`).
            return;
        }
        let now = tokio::time::Instant::now();
        let mut expired = 0;
        let span = &self.span;
        state.orphans.retain(|key, sends| {
            let before = expired;
            while sends
                .front()
                .is_some_and(|(since, _)| now.duration_since(*since) > ORPHAN_WINDOW)
            {
                sends.pop_front();
                expired += 1;
            }
            if expired > before {
                tracing::debug!(parent: span, ?key, sends = expired - before, "sends to a group with no members here dropped after the orphan window");
            }
            !sends.is_empty()
        });
        state.orphan_count -= expired;
    }

    /// Delivers a send as the group's owner, or keeps it a while if the group has no members here yet.
    async fn owner_send(&self, send: HeldSend, state: &mut OpsState) {
        let key = send.key.clone();
        if !self.is_local(&self.owner_of(&key).name) {
            // Ownership moved while the send waited here (settling): pass it on to the owner now.
            self.group_send_stamped(send);
            return;
        }
        if !state.missed.is_empty() {
            let refused = state.missed.record(&send);
            if refused > 0 {
                let hit = &self.bounds_hit;
                let what = "group sends kept for nodes declared dead over their bound: kept no later one";
                hit.hit(&hit.missed_refused, refused, &self.span, what);
            }
        }
        let waiting = state.orphans.contains_key(&key);
        if !waiting && self.groups.contains(&key) {
            self.send_to_actor(&key, send).await;
            return;
        }
        if state.orphan_count >= ORPHANS_CAP {
            let hit = &self.bounds_hit;
            hit.hit(
                &hit.orphans_dropped,
                1,
                &self.span,
                "group sends waiting for members over their bound: dropped one",
            );
            return;
        }
        // Behind earlier sends to this group that are still waiting, to keep the order.
        state.orphans.entry(key.clone()).or_default().push_back((tokio::time::Instant::now(), send));
        state.orphan_count += 1;
        if waiting {
            self.release_orphans(&key, state).await;
        }
    }

    async fn release_orphans(&self, key: &GroupKey, state: &mut OpsState) {
        // While settling the group may lack the members of peers whose snapshots are on their way: its orphans
        // wait for the end of settling (`end_settling`), as the deferred sends do.
        if state.settling.is_some() || !self.groups.contains(key) {
            return;
        }
        if let Some(waiting) = state.orphans.remove(key) {
            state.orphan_count -= waiting.len();
            for (_, send) in waiting {
                self.send_to_actor(key, send).await;
            }
        }
    }

    /// Hands a send to its group's actor; one past the actor's mailbox bound is dropped, counted and logged.
    async fn send_to_actor(&self, key: &GroupKey, send: HeldSend) {
        if !self.groups.send(key, send.frame, send.except, send.stamp).await {
            let hit = &self.bounds_hit;
            hit.hit(
                &hit.mailbox_refused,
                1,
                &self.span,
                "a group actor's mailbox is full (its member nodes' links stay full): dropped a send",
            );
        }
    }

    pub(super) fn finish(&self, done: Done, result: Result<(), MeshError>) {
        match done {
            Done::Local(reply) => {
                let _ = reply.send(result);
            }
            Done::Remote { from, id } => {
                let answer = match result {
                    Ok(()) => Answer::Done,
                    Err(error) => Answer::Failed(error.into()),
                };
                if let Err(error) = self.send_to_peer(&from, &Envelope::Reply { id, answer }) {
                    tracing::debug!(parent: &self.span, %error, "a reply could not be sent");
                }
            }
        }
    }

}

/// Puts each origin's sends to each group in `queue` in its sequence order, among the places they hold: the
/// interleaving of different origins and groups stays as it arrived.
fn in_origin_order(queue: &mut VecDeque<HeldSend>) {
    let mut places: HashMap<(&GroupKey, &NodeId), Vec<usize>> = HashMap::new();
    for (index, send) in queue.iter().enumerate() {
        places.entry((&send.key, &send.stamp.origin)).or_default().push(index);
    }
    let unordered: Vec<Vec<usize>> = places
        .into_values()
        .filter(|places| places.windows(2).any(|pair| queue[pair[0]].stamp.seq > queue[pair[1]].stamp.seq))
        .collect();
    for places in unordered {
        let mut sends: Vec<HeldSend> = places.iter().map(|&index| queue[index].clone()).collect();
        sends.sort_by_key(|send| send.stamp.seq);
        for (index, send) in places.into_iter().zip(sends) {
            queue[index] = send;
        }
    }
}

fn left_error() -> MeshError {
    MeshError::Group(GroupError::Unavailable("the node left the cluster".into()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::connection::SharedFrame;
    use crate::mesh::group::Stamp;

    fn send(group: &str, origin: &str, seq: u64) -> HeldSend {
        HeldSend {
            key: GroupKey::named("hub", group),
            except: Arc::from(Vec::new()),
            frame: SharedFrame::pre_encoded(None, None),
            stamp: Stamp {
                origin: NodeId::new(origin, 1),
                seq,
                prev: 0,
            },
        }
    }

    #[test]
    fn each_origin_goes_in_its_order_and_the_rest_keeps_its_places() {
        let mut queue: VecDeque<HeldSend> = [
            send("g", "x", 7),
            send("g", "y", 1),
            send("h", "x", 5),
            send("g", "x", 6),
            send("g", "y", 2),
        ]
        .into_iter()
        .collect();
        in_origin_order(&mut queue);
        let got: Vec<(String, String, u64)> = queue
            .iter()
            .map(|send| (send.key.name.to_string(), send.stamp.origin.name.to_string(), send.stamp.seq))
            .collect();
        let want = [("g", "x", 6), ("g", "y", 1), ("h", "x", 5), ("g", "x", 7), ("g", "y", 2)];
        let want: Vec<(String, String, u64)> =
            want.iter().map(|(g, o, s)| (g.to_string(), o.to_string(), *s)).collect();
        assert_eq!(got, want);
    }
}
