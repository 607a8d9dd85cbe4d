//! The groups this node owns, by key: their members (which connections of which node), and the actor that
//! sequences each group's sends, found here, never through ractor's process-global registry, so several nodes can
//! share a process.
//!
//! A join or a leave changes the members here, at once and without a message to anyone: the owner's membership
//! queue (`super::owner`) applies changes one at a time, in their order with the group's sends, and each send
//! takes the nodes that hold members at that moment to the group's actor. The actor is started (on the node's
//! multi-threaded runtime) at the group's first send, so a group that only sees joins and leaves never has one,
//! and stopped once the group has no members and its actor no send left to fan out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};

use super::group::{GroupError, GroupKey, Stamp};
use super::group_actor::{Fanout, GroupActor, GroupMessage};
use super::group_send::HELD_SENDS_CAP;
use super::kept::is_kept_member;
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, SharedFrame};

/// How long a move waits for the group's actor to send its markers before it fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The most sends waiting in one group actor's mailbox: the same bound as the sends a node holds
/// ([`HELD_SENDS_CAP`]). Only a group whose member nodes' links stay full gets there (its actor waits for them,
/// see [`super::group_actor::FANOUT_PATIENCE`]); a send past it is refused, and counted by the caller.
pub const MAILBOX_CAP: usize = HELD_SENDS_CAP;

/// A group's actor, with the count of sends in its mailbox (the actor counts down as it takes them) and whether it
/// is fanning one out.
#[derive(Clone)]
struct Sequencer {
    actor: ActorRef<GroupMessage>,
    queued: Arc<AtomicUsize>,
    busy: Arc<AtomicBool>,
}

impl Sequencer {
    fn idle(&self) -> bool {
        // The mailbox first: the actor is busy before a send leaves it.
        self.queued.load(Ordering::SeqCst) == 0 && !self.busy.load(Ordering::SeqCst)
    }
}

/// One group this node owns.
#[derive(Default)]
struct Group {
    /// Members by the incarnation of the node they live on: a restarted node's members are its new generation's,
    /// and the earlier generation's are dropped when it is declared dead, whatever order the two arrive in.
    members: HashMap<NodeId, HashSet<ConnectionId>>,
    /// The number of members, kept members included (`super::kept`): a group whose only members are kept
    /// still fans its sends out to their keepers.
    count: usize,
    /// How many of them are kept members, which count and list as no one.
    kept: usize,
    /// The nodes that hold members, shared with the sends that go to them; rebuilt when that set changes.
    nodes: Arc<[NodeId]>,
    /// Its actor, from its first send on.
    sequencer: Option<Sequencer>,
}

impl Group {
    fn rebuild_nodes(&mut self) {
        self.nodes = self.members.keys().cloned().collect();
    }

    /// Adds members of `node`.
    fn insert(&mut self, node: &NodeId, ids: impl IntoIterator<Item = ConnectionId>) {
        let new_node = !self.members.contains_key(node);
        let held = self.members.entry(node.clone()).or_default();
        let before = held.len();
        for id in ids {
            let kept = is_kept_member(&id);
            if held.insert(id) && kept {
                self.kept += 1;
            }
        }
        let (added, empty) = (held.len() - before, held.is_empty());
        self.count += added;
        if empty {
            self.members.remove(node);
        } else if new_node {
            self.rebuild_nodes();
        }
    }

    /// Removes member `id` of `node`.
    fn remove(&mut self, node: &NodeId, id: &ConnectionId) {
        if let Some(held) = self.members.get_mut(node) {
            if held.remove(id) {
                self.count -= 1;
                self.kept -= usize::from(is_kept_member(id));
            }
            if held.is_empty() {
                self.members.remove(node);
                self.rebuild_nodes();
            }
        }
    }

    /// Removes every member of `node`.
    fn remove_node(&mut self, node: &NodeId) {
        if let Some(held) = self.members.remove(node) {
            self.count -= held.len();
            self.kept -= held.iter().filter(|id| is_kept_member(id)).count();
            self.rebuild_nodes();
        }
    }
}

#[derive(Default)]
struct Groups {
    by_key: HashMap<GroupKey, Group>,
    /// Groups without members whose actor still had sends to fan out: forgotten once it is idle
    /// ([`GroupDirectory::sweep`]), so that a send accepted later never overtakes them through a second actor.
    retiring: HashSet<GroupKey>,
}

impl Groups {
    /// A group that has no members left goes, with its actor once that is idle.
    fn retire_if_empty(&mut self, key: &GroupKey) {
        let Some(group) = self.by_key.get(key) else {
            return;
        };
        if group.count > 0 {
            return;
        }
        if group.sequencer.as_ref().is_some_and(|sequencer| !sequencer.idle()) {
            self.retiring.insert(key.clone());
            return;
        }
        if let Some(group) = self.by_key.remove(key) {
            stop(group);
        }
        self.retiring.remove(key);
    }
}

/// Lets a group's actor fan out what it holds, then stop.
fn stop(group: Group) {
    if let Some(sequencer) = group.sequencer {
        if sequencer.actor.drain().is_err() {
            sequencer.actor.stop(None);
        }
    }
}

/// The groups this node owns, by key.
pub struct GroupDirectory {
    groups: Mutex<Groups>,
    runtime: tokio::runtime::Handle,
    fanout: Arc<dyn Fanout>,
}

impl GroupDirectory {
    /// A directory whose actors run on `runtime` and deliver through `fanout`.
    pub fn new(runtime: tokio::runtime::Handle, fanout: Arc<dyn Fanout>) -> Self {
        GroupDirectory {
            groups: Mutex::new(Groups::default()),
            runtime,
            fanout,
        }
    }

    /// Whether this node holds members of the group (it owns the group and the group has members).
    pub fn contains(&self, key: &GroupKey) -> bool {
        self.groups.lock().by_key.get(key).is_some_and(|group| group.count > 0)
    }

    /// The keys of the groups this node owns now (those with members).
    pub fn keys(&self) -> Vec<GroupKey> {
        self.groups
            .lock()
            .by_key
            .iter()
            .filter(|(_, group)| group.count > 0)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Adds connection `id` of node `node`; returns the member count.
    pub fn add(&self, key: &GroupKey, node: &NodeId, id: ConnectionId) -> usize {
        let mut groups = self.groups.lock();
        let group = groups.by_key.entry(key.clone()).or_default();
        group.insert(node, [id]);
        let count = group.count;
        groups.retiring.remove(key);
        count
    }

    /// Removes connection `id` of node `node`; returns the member count.
    pub fn remove(&self, key: &GroupKey, node: &NodeId, id: &ConnectionId) -> usize {
        let mut groups = self.groups.lock();
        let Some(group) = groups.by_key.get_mut(key) else {
            return 0;
        };
        group.remove(node, id);
        let count = group.count;
        groups.retire_if_empty(key);
        count
    }

    /// Sets node `node`'s members of the group (an empty list removes them).
    pub fn replace(&self, key: &GroupKey, node: &NodeId, ids: Vec<ConnectionId>) {
        let mut groups = self.groups.lock();
        if ids.is_empty() {
            if let Some(group) = groups.by_key.get_mut(key) {
                group.remove_node(node);
                groups.retire_if_empty(key);
            }
            return;
        }
        let group = groups.by_key.entry(key.clone()).or_default();
        group.remove_node(node);
        group.insert(node, ids);
        groups.retiring.remove(key);
    }

    /// Adds these members of node `node` to those it holds (a snapshot whose list spans parts).
    pub fn extend(&self, key: &GroupKey, node: &NodeId, ids: Vec<ConnectionId>) {
        if ids.is_empty() {
            return;
        }
        let mut groups = self.groups.lock();
        groups.by_key.entry(key.clone()).or_default().insert(node, ids);
        groups.retiring.remove(key);
    }

    /// This incarnation of node `node` is gone: every group this node owns drops its members. Returns the groups
    /// that had some.
    pub fn drop_node(&self, node: &NodeId) -> Vec<GroupKey> {
        let mut groups = self.groups.lock();
        let mut dropped = Vec::new();
        let mut emptied = Vec::new();
        for (key, group) in groups.by_key.iter_mut() {
            if group.members.contains_key(node) {
                group.remove_node(node);
                dropped.push(key.clone());
                if group.count == 0 {
                    emptied.push(key.clone());
                }
            }
        }
        for key in emptied {
            groups.retire_if_empty(&key);
        }
        dropped
    }

    /// Forgets the groups this node no longer owns (ownership moved); their new owner rebuilds them. Each actor
    /// first fans out the sends already in its mailbox (which reached it as the owner, before the move), rather
    /// than drop them; sends arriving after this go to the new owner.
    ///
    /// Each node that holds members is told, after the group's last delivery to it, that this node released the
    /// group, so that the new owner's first sends, which may reach it sooner through another link, wait there for
    /// the last ones of this node (`super::arrivals`).
    pub fn release(&self, keep: impl Fn(&GroupKey) -> bool) {
        let mut groups = self.groups.lock();
        let released: Vec<GroupKey> = groups.by_key.keys().filter(|key| !keep(key)).cloned().collect();
        for key in released {
            if let Some(group) = groups.by_key.remove(&key) {
                self.hand_over(key.clone(), group);
            }
            groups.retiring.remove(&key);
        }
    }

    /// Tells the group's member nodes, after its actor's last fan-out, that this node released it; stops the actor.
    fn hand_over(&self, key: GroupKey, group: Group) {
        let nodes = group.nodes.clone();
        tracing::trace!(?key, ?nodes, sequenced = group.sequencer.is_some(), "hands a group over");
        if nodes.is_empty() {
            return stop(group);
        }
        if let Some(sequencer) = &group.sequencer {
            if sequencer.actor.cast(GroupMessage::Release { nodes: nodes.clone() }).is_ok() {
                return stop(group);
            }
        }
        stop(group);
        let fanout = self.fanout.clone();
        self.runtime.spawn(async move {
            for node in nodes.iter() {
                super::group_actor::release(fanout.as_ref(), node, &key).await;
            }
        });
    }

    /// Forgets the groups without members whose actors have become idle.
    pub fn sweep(&self) {
        let mut groups = self.groups.lock();
        if groups.retiring.is_empty() {
            return;
        }
        let retiring: Vec<GroupKey> = groups.retiring.drain().collect();
        for key in retiring {
            groups.retire_if_empty(&key);
        }
    }

    /// The group's actor, started if it has none (its first send).
    async fn sequencer(&self, key: &GroupKey) -> Result<Sequencer, GroupError> {
        if let Some(sequencer) = self.groups.lock().by_key.get(key).and_then(|group| group.sequencer.clone()) {
            return Ok(sequencer);
        }
        let queued = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicBool::new(false));
        let actor = GroupActor {
            key: key.clone(),
            fanout: self.fanout.clone(),
            queued: queued.clone(),
            busy: busy.clone(),
        };
        let (actor, _) = self
            .runtime
            .spawn(async { Actor::spawn(None, actor, ()).await })
            .await
            .map_err(|error| GroupError::Unavailable(error.to_string()))?
            .map_err(|error| GroupError::Unavailable(error.to_string()))?;
        let started = Sequencer { actor, queued, busy };
        let mut groups = self.groups.lock();
        match groups.by_key.get_mut(key) {
            Some(group) => match &group.sequencer {
                // Another caller started one first: use theirs.
                Some(existing) => {
                    started.actor.stop(None);
                    Ok(existing.clone())
                }
                None => {
                    group.sequencer = Some(started.clone());
                    Ok(started)
                }
            },
            // The group went meanwhile: nothing to sequence.
            None => {
                started.actor.stop(None);
                Err(GroupError::Unavailable("the group has no members".into()))
            }
        }
    }

    /// Moves connection `id` from node `from` to node `to`; returns once the group's actor has sent both nodes
    /// their markers (`super::moves`), in order with its deliveries.
    pub async fn move_member(&self, key: &GroupKey, from: &NodeId, to: &NodeId, id: ConnectionId) -> Result<(), GroupError> {
        {
            let mut groups = self.groups.lock();
            let group = groups.by_key.entry(key.clone()).or_default();
            group.remove(from, &id);
            group.insert(to, [id.clone()]);
            groups.retiring.remove(key);
        }
        let sequencer = self.sequencer(key).await?;
        let (from, to) = (from.clone(), to.clone());
        match sequencer
            .actor
            .call(|reply| GroupMessage::Move { from, to, id, reply }, Some(CALL_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(())) => Ok(()),
            Ok(CallResult::Timeout) => Err(GroupError::Unavailable("timed out".into())),
            Ok(CallResult::SenderError) | Err(_) => Err(GroupError::Unavailable("the group was stopping".into())),
        }
    }

    /// Sends a frame to the group's members, except `except`. A group without members here has none. False
    /// when the group's actor holds [`MAILBOX_CAP`] sends: the send was refused.
    pub async fn send(&self, key: &GroupKey, frame: Arc<SharedFrame>, except: Arc<[ConnectionId]>, stamp: Stamp) -> bool {
        if !self.contains(key) {
            return true;
        }
        let sequencer = match self.sequencer(key).await {
            Ok(sequencer) => sequencer,
            Err(_) => return true,
        };
        if sequencer.queued.fetch_add(1, Ordering::Relaxed) >= MAILBOX_CAP {
            sequencer.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        // The nodes of this moment, after every membership change the owner applied before this send.
        let nodes = self
            .groups
            .lock()
            .by_key
            .get(key)
            .map(|group| group.nodes.clone())
            .unwrap_or_default();
        if sequencer
            .actor
            .cast(GroupMessage::Send {
                nodes,
                frame,
                except,
                stamp,
            })
            .is_err()
        {
            // The actor failed: the next send starts another.
            sequencer.queued.fetch_sub(1, Ordering::Relaxed);
            let mut groups = self.groups.lock();
            if let Some(group) = groups.by_key.get_mut(key) {
                if group
                    .sequencer
                    .as_ref()
                    .is_some_and(|current| current.actor.get_id() == sequencer.actor.get_id())
                {
                    group.sequencer = None;
                }
            }
        }
        true
    }

    /// The number of members.
    pub fn count(&self, key: &GroupKey) -> usize {
        self.groups.lock().by_key.get(key).map_or(0, |group| group.count - group.kept)
    }

    /// The member ids (kept members are not members of their own).
    pub fn members(&self, key: &GroupKey) -> Vec<ConnectionId> {
        self.groups
            .lock()
            .by_key
            .get(key)
            .map(|group| {
                group
                    .members
                    .values()
                    .flatten()
                    .filter(|id| !is_kept_member(id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops every group actor (node shutdown).
    pub fn stop_all(&self) {
        let mut groups = self.groups.lock();
        groups.retiring.clear();
        for (_, group) in groups.by_key.drain() {
            if let Some(sequencer) = group.sequencer {
                sequencer.actor.stop(None);
            }
        }
    }
}
