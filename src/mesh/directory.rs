//! The group actors this node owns, by key: found here, never through ractor's process-global registry, so
//! several nodes can share a process. Starts an actor on first use (on the node's multi-threaded runtime),
//! forgets it when it stopped, and turns each operation into a message or a call with a timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};

use super::group::{GroupError, GroupKey, Stamp};
use super::group_actor::{Fanout, GroupActor, GroupMessage};
use super::group_send::HELD_SENDS_CAP;
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, SharedFrame};

/// How long a caller waits for a group actor's answer before the operation fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `add` retries when it raced with a group that was stopping.
const ADD_ATTEMPTS: usize = 4;

/// The most sends waiting in one group actor's mailbox: the same bound as the sends a node holds
/// ([`HELD_SENDS_CAP`]). Only a group whose member nodes' links stay full gets there (its actor waits for them,
/// see [`super::group_actor::FANOUT_PATIENCE`]); a send past it is refused, and counted by the caller.
pub const MAILBOX_CAP: usize = HELD_SENDS_CAP;

/// A group's actor, with the count of sends waiting in its mailbox (the actor counts down as it takes them).
struct Group {
    actor: ActorRef<GroupMessage>,
    queued: Arc<AtomicUsize>,
}

/// The group actors this node owns, by key.
pub struct GroupDirectory {
    actors: Mutex<HashMap<GroupKey, Group>>,
    runtime: tokio::runtime::Handle,
    fanout: Arc<dyn Fanout>,
}

impl GroupDirectory {
    /// A directory whose actors run on `runtime` and deliver through `fanout`.
    pub fn new(runtime: tokio::runtime::Handle, fanout: Arc<dyn Fanout>) -> Self {
        GroupDirectory {
            actors: Mutex::new(HashMap::new()),
            runtime,
            fanout,
        }
    }

    fn existing(&self, key: &GroupKey) -> Option<ActorRef<GroupMessage>> {
        self.actors.lock().get(key).map(|group| group.actor.clone())
    }

    /// Whether this node runs the group's actor (the group has members and this node owns it).
    pub fn contains(&self, key: &GroupKey) -> bool {
        self.actors.lock().contains_key(key)
    }

    /// The keys of the groups this node owns now.
    pub fn keys(&self) -> Vec<GroupKey> {
        self.actors.lock().keys().cloned().collect()
    }

    async fn get_or_start(&self, key: &GroupKey) -> Result<ActorRef<GroupMessage>, GroupError> {
        if let Some(actor) = self.existing(key) {
            return Ok(actor);
        }
        let queued = Arc::new(AtomicUsize::new(0));
        let actor = GroupActor {
            key: key.clone(),
            fanout: self.fanout.clone(),
            queued: queued.clone(),
        };
        let spawned = self
            .runtime
            .spawn(async { Actor::spawn(None, actor, ()).await })
            .await
            .map_err(|error| GroupError::Unavailable(error.to_string()))?
            .map_err(|error| GroupError::Unavailable(error.to_string()))?;
        let (actor, _) = spawned;
        let mut actors = self.actors.lock();
        match actors.get(key) {
            // Another caller started one first: use theirs.
            Some(existing) => {
                actor.stop(None);
                Ok(existing.actor.clone())
            }
            None => {
                actors.insert(
                    key.clone(),
                    Group {
                        actor: actor.clone(),
                        queued,
                    },
                );
                Ok(actor)
            }
        }
    }

    fn forget(&self, key: &GroupKey, actor: &ActorRef<GroupMessage>) {
        let mut actors = self.actors.lock();
        if actors
            .get(key)
            .is_some_and(|current| current.actor.get_id() == actor.get_id())
        {
            actors.remove(key);
        }
    }

    /// Sends `message` to a group's actor; one that stopped is forgotten (it held nobody any more).
    fn cast(&self, key: &GroupKey, actor: &ActorRef<GroupMessage>, message: GroupMessage) {
        if actor.cast(message).is_err() {
            self.forget(key, actor);
        }
    }

    /// Adds connection `id` of node `node`; returns once the actor holds it.
    pub async fn add(&self, key: &GroupKey, node: &NodeId, id: ConnectionId) -> Result<(), GroupError> {
        self.call_started(key, |reply| GroupMessage::Add {
            node: node.clone(),
            id: id.clone(),
            reply,
        })
        .await
    }

    /// Moves connection `id` from node `from` to node `to`; returns once the actor has sent both nodes their
    /// markers (`super::moves`), in order with its deliveries.
    pub async fn move_member(&self, key: &GroupKey, from: &NodeId, to: &NodeId, id: ConnectionId) -> Result<(), GroupError> {
        self.call_started(key, |reply| GroupMessage::Move {
            from: from.clone(),
            to: to.clone(),
            id: id.clone(),
            reply,
        })
        .await
    }

    /// Calls the group's actor, started if need be, with the message `make` builds; an actor that was stopping is
    /// forgotten and a new one tried, up to [`ADD_ATTEMPTS`] times.
    async fn call_started(
        &self,
        key: &GroupKey,
        make: impl Fn(ractor::RpcReplyPort<usize>) -> GroupMessage,
    ) -> Result<(), GroupError> {
        let mut last_error = String::new();
        for _ in 0..ADD_ATTEMPTS {
            let actor = self.get_or_start(key).await?;
            match actor.call(&make, Some(CALL_TIMEOUT)).await {
                Ok(CallResult::Success(_)) => return Ok(()),
                Ok(CallResult::Timeout) => return Err(GroupError::Unavailable("timed out".into())),
                Ok(CallResult::SenderError) | Err(_) => {
                    last_error = "the group was stopping".into();
                    self.forget(key, &actor);
                }
            }
        }
        Err(GroupError::Unavailable(last_error))
    }

    /// Removes connection `id` of node `node`; a group that was never started is not started for it.
    pub async fn remove(&self, key: &GroupKey, node: &NodeId, id: ConnectionId) -> Result<(), GroupError> {
        let Some(actor) = self.existing(key) else {
            return Ok(());
        };
        let node = node.clone();
        match actor
            .call(|reply| GroupMessage::Remove { node, id, reply }, Some(CALL_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(0)) => {
                self.forget(key, &actor);
                Ok(())
            }
            Ok(CallResult::Success(_)) => Ok(()),
            Ok(CallResult::Timeout) => Err(GroupError::Unavailable("timed out".into())),
            // A stopped actor holds nobody.
            Ok(CallResult::SenderError) | Err(_) => {
                self.forget(key, &actor);
                Ok(())
            }
        }
    }

    /// Sets node `node`'s members of the group (an empty list removes them), starting the actor if needed.
    pub async fn replace(&self, key: &GroupKey, node: &NodeId, ids: Vec<ConnectionId>) -> Result<(), GroupError> {
        let actor = match self.existing(key) {
            Some(actor) => actor,
            None if ids.is_empty() => return Ok(()),
            None => self.get_or_start(key).await?,
        };
        self.cast(key, &actor, GroupMessage::Replace { node: node.clone(), ids });
        Ok(())
    }

    /// Adds these members of node `node` to those it holds (a snapshot whose list spans parts), starting the
    /// actor if needed.
    pub async fn extend(&self, key: &GroupKey, node: &NodeId, ids: Vec<ConnectionId>) -> Result<(), GroupError> {
        if ids.is_empty() {
            return Ok(());
        }
        let actor = self.get_or_start(key).await?;
        self.cast(key, &actor, GroupMessage::Extend { node: node.clone(), ids });
        Ok(())
    }

    /// This incarnation of node `node` is gone: every group this node owns drops its members.
    pub fn drop_node(&self, node: &NodeId) {
        let actors: Vec<_> = self
            .actors
            .lock()
            .iter()
            .map(|(key, group)| (key.clone(), group.actor.clone()))
            .collect();
        for (key, actor) in actors {
            self.cast(&key, &actor, GroupMessage::DropNode(node.clone()));
        }
    }

    /// Stops the actors of groups this node no longer owns (ownership moved); their new owner rebuilds them. Each
    /// first fans out the sends already in its mailbox (which reached it as the owner, before the move), rather
    /// than drop them; sends arriving after this go to the new owner.
    pub fn release(&self, keep: impl Fn(&GroupKey) -> bool) {
        let mut actors = self.actors.lock();
        actors.retain(|key, group| {
            let kept = keep(key);
            if !kept && group.actor.drain().is_err() {
                group.actor.stop(None);
            }
            kept
        });
    }

    /// Sends a frame to the group's members, except `except`. A group with no actor has no members. False when
    /// the actor's mailbox holds [`MAILBOX_CAP`] sends: the send was refused.
    pub fn send(&self, key: &GroupKey, frame: Arc<SharedFrame>, except: Arc<[ConnectionId]>, stamp: Stamp) -> bool {
        let actor = {
            let actors = self.actors.lock();
            let Some(group) = actors.get(key) else {
                return true;
            };
            if group.queued.fetch_add(1, Ordering::Relaxed) >= MAILBOX_CAP {
                group.queued.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
            group.actor.clone()
        };
        self.cast(key, &actor, GroupMessage::Send { frame, except, stamp });
        true
    }

    /// The number of members.
    pub async fn count(&self, key: &GroupKey) -> Result<usize, GroupError> {
        let Some(actor) = self.existing(key) else {
            return Ok(0);
        };
        match actor.call(GroupMessage::Count, Some(CALL_TIMEOUT)).await {
            Ok(CallResult::Success(count)) => Ok(count),
            Ok(CallResult::Timeout) => Err(GroupError::Unavailable("timed out".into())),
            Ok(CallResult::SenderError) | Err(_) => Ok(0),
        }
    }

    /// The member ids.
    pub async fn members(&self, key: &GroupKey) -> Result<Vec<ConnectionId>, GroupError> {
        let Some(actor) = self.existing(key) else {
            return Ok(Vec::new());
        };
        match actor.call(GroupMessage::Members, Some(CALL_TIMEOUT)).await {
            Ok(CallResult::Success(members)) => Ok(members),
            Ok(CallResult::Timeout) => Err(GroupError::Unavailable("timed out".into())),
            Ok(CallResult::SenderError) | Err(_) => Ok(Vec::new()),
        }
    }

    /// Stops every group actor (node shutdown).
    pub fn stop_all(&self) {
        for (_, group) in self.actors.lock().drain() {
            group.actor.stop(None);
        }
    }
}
