//! Group and user actors (ractor): each owns the cluster-wide membership of one group, or the connections of one
//! user, and sequences every send to the group.
//!
//! A group's actor lives on its *owner*, the node that rendezvous hashing over the live members picks for the
//! group's key; it is started there on first use and stops itself when its last member leaves. It holds which
//! connections of which node are members, not their handles: a send goes once to each node that holds members
//! (through the [`Fanout`] the router provides), and that node delivers to its own members. So a group message
//! crosses to a node once, not once per member, and the frame is encoded once per protocol at the sender.
//!
//! A user is a group of another kind ([`GroupKind::User`]), as in SignalR.Orleans, so `Clients.user` and
//! `Clients.group` share one mechanism. Actors are found through the node's [`GroupDirectory`], never through
//! ractor's process-global registry, so several nodes can share a process.
//!
//! Ordering: a group actor handles one message at a time, and the link to each node is FIFO, so every member
//! receives the group's messages in the order the actor accepted them (per-group total order).
//!
//! Group actors run on the node's multi-threaded runtime, never on an HTTP worker: they are spawned through the
//! runtime handle the directory holds. This module may call the connection layer (ids, shared frames); it knows
//! nothing of hubs' methods or of how frames travel between nodes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::connection::{ConnectionId, SharedFrame};

/// Whether a group is a named group or the connections of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupKind {
    /// `Groups.add` / `Clients.group`.
    Named,
    /// `Clients.user`: every connection of one user id.
    User,
}

/// The key of a group: its hub, its kind and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupKey {
    /// The hub's name.
    pub hub: Arc<str>,
    /// Named group or user.
    pub kind: GroupKind,
    /// The group's name or the user's id.
    pub name: Arc<str>,
}

impl GroupKey {
    /// A named group of hub `hub`.
    pub fn named(hub: &str, name: &str) -> Self {
        GroupKey {
            hub: hub.into(),
            kind: GroupKind::Named,
            name: name.into(),
        }
    }

    /// The group of one user's connections to hub `hub`.
    pub fn user(hub: &str, id: &str) -> Self {
        GroupKey {
            hub: hub.into(),
            kind: GroupKind::User,
            name: id.into(),
        }
    }

    /// The bytes placement hashes: equal keys hash equally on every node.
    pub fn placement_bytes(&self) -> Vec<u8> {
        let kind = match self.kind {
            GroupKind::Named => b'g',
            GroupKind::User => b'u',
        };
        let mut bytes = Vec::with_capacity(self.hub.len() + self.name.len() + 3);
        bytes.extend_from_slice(self.hub.as_bytes());
        bytes.push(0);
        bytes.push(kind);
        bytes.push(0);
        bytes.extend_from_slice(self.name.as_bytes());
        bytes
    }
}

/// Why a group operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The group actor could not be started or did not answer.
    #[error("the group actor is unavailable: {0}")]
    Unavailable(String),
}

/// Who sent a group message, with the sender node's sequence number: a send re-sent after its group's owner
/// died is recognised and not delivered twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The node where the send started.
    pub origin: Arc<str>,
    /// That node's sequence number for it (increasing).
    pub seq: u64,
}

/// Delivers a group's frame to the members a node holds. The router implements it: its own node's members
/// directly, other nodes' members through one link message per node.
pub trait Fanout: Send + Sync + 'static {
    /// Delivers `frame` to the members of `key` on node `node`, except `except`.
    fn deliver(
        &self,
        node: &str,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        stamp: &Stamp,
    );
}

/// Messages a group actor handles.
pub enum GroupMessage {
    /// Connection `id` on node `node` joined; replies with the member count.
    Add {
        /// The node the connection lives on.
        node: Arc<str>,
        /// The connection.
        id: ConnectionId,
        /// Gets the member count.
        reply: RpcReplyPort<usize>,
    },
    /// Connection `id` on node `node` left; replies with the member count. The actor stops when none are left.
    Remove {
        /// The node the connection lives on.
        node: Arc<str>,
        /// The connection.
        id: ConnectionId,
        /// Gets the member count.
        reply: RpcReplyPort<usize>,
    },
    /// Node `node` holds exactly these members (its snapshot after ownership moved, or a repair).
    Replace {
        /// The node.
        node: Arc<str>,
        /// Its members of this group.
        ids: Vec<ConnectionId>,
    },
    /// Node `node` is gone: its connections leave the group.
    DropNode(Arc<str>),
    /// Deliver a frame to every member but those in `except`.
    Send {
        /// The frame, encoded at most once per protocol.
        frame: Arc<SharedFrame>,
        /// Members that must not receive it.
        except: Arc<[ConnectionId]>,
        /// Who sent it.
        stamp: Stamp,
    },
    /// Reply with the member count.
    Count(RpcReplyPort<usize>),
    /// Reply with the member ids.
    Members(RpcReplyPort<Vec<ConnectionId>>),
}

// With ractor's `cluster` feature there is no blanket `Message` impl; group messages never leave the node.
impl ractor::Message for GroupMessage {}

struct GroupActor {
    key: GroupKey,
    fanout: Arc<dyn Fanout>,
}

/// Members by the node they live on.
type Members = HashMap<Arc<str>, HashSet<ConnectionId>>;

fn member_count(members: &Members) -> usize {
    members.values().map(HashSet::len).sum()
}

impl Actor for GroupActor {
    type Msg = GroupMessage;
    type State = Members;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, _args: ()) -> Result<Self::State, ActorProcessingErr> {
        Ok(HashMap::new())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        members: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GroupMessage::Add { node, id, reply } => {
                members.entry(node).or_default().insert(id);
                let _ = reply.send(member_count(members));
            }
            GroupMessage::Remove { node, id, reply } => {
                if let Some(ids) = members.get_mut(&node) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        members.remove(&node);
                    }
                }
                let count = member_count(members);
                let _ = reply.send(count);
                if count == 0 {
                    // Messages queued behind this one are dropped with their reply ports, so an `add` that
                    // raced with the last `remove` sees a failed call and retries on a fresh actor.
                    myself.stop(None);
                }
            }
            GroupMessage::Replace { node, ids } => {
                if ids.is_empty() {
                    members.remove(&node);
                } else {
                    members.insert(node, ids.into_iter().collect());
                }
                if members.is_empty() {
                    myself.stop(None);
                }
            }
            GroupMessage::DropNode(node) => {
                members.remove(&node);
                if members.is_empty() {
                    myself.stop(None);
                }
            }
            GroupMessage::Send { frame, except, stamp } => {
                for node in members.keys() {
                    self.fanout.deliver(node, &self.key, &frame, &except, &stamp);
                }
            }
            GroupMessage::Count(reply) => {
                let _ = reply.send(member_count(members));
            }
            GroupMessage::Members(reply) => {
                let _ = reply.send(members.values().flatten().cloned().collect());
            }
        }
        Ok(())
    }
}

/// How long a caller waits for a group actor's answer before the operation fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `add` retries when it raced with a group that was stopping.
const ADD_ATTEMPTS: usize = 4;

/// The group actors this node owns, by key.
pub struct GroupDirectory {
    actors: Mutex<HashMap<GroupKey, ActorRef<GroupMessage>>>,
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
        self.actors.lock().get(key).cloned()
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
        let actor = GroupActor {
            key: key.clone(),
            fanout: self.fanout.clone(),
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
                Ok(existing.clone())
            }
            None => {
                actors.insert(key.clone(), actor.clone());
                Ok(actor)
            }
        }
    }

    fn forget(&self, key: &GroupKey, actor: &ActorRef<GroupMessage>) {
        let mut actors = self.actors.lock();
        if actors
            .get(key)
            .is_some_and(|current| current.get_id() == actor.get_id())
        {
            actors.remove(key);
        }
    }

    /// Adds connection `id` of node `node`; returns once the actor holds it.
    pub async fn add(&self, key: &GroupKey, node: &Arc<str>, id: ConnectionId) -> Result<(), GroupError> {
        let mut last_error = String::new();
        for _ in 0..ADD_ATTEMPTS {
            let actor = self.get_or_start(key).await?;
            let (node, id) = (node.clone(), id.clone());
            match actor
                .call(|reply| GroupMessage::Add { node, id, reply }, Some(CALL_TIMEOUT))
                .await
            {
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
    pub async fn remove(&self, key: &GroupKey, node: &Arc<str>, id: ConnectionId) -> Result<(), GroupError> {
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
    pub async fn replace(&self, key: &GroupKey, node: &Arc<str>, ids: Vec<ConnectionId>) -> Result<(), GroupError> {
        let actor = match self.existing(key) {
            Some(actor) => actor,
            None if ids.is_empty() => return Ok(()),
            None => self.get_or_start(key).await?,
        };
        if actor
            .cast(GroupMessage::Replace {
                node: node.clone(),
                ids,
            })
            .is_err()
        {
            self.forget(key, &actor);
        }
        Ok(())
    }

    /// Node `node` is gone: every group this node owns drops its members.
    pub fn drop_node(&self, node: &Arc<str>) {
        let actors: Vec<_> = self
            .actors
            .lock()
            .iter()
            .map(|(key, actor)| (key.clone(), actor.clone()))
            .collect();
        for (key, actor) in actors {
            if actor.cast(GroupMessage::DropNode(node.clone())).is_err() {
                self.forget(&key, &actor);
            }
        }
    }

    /// Stops the actors of groups this node no longer owns (ownership moved); their new owner rebuilds them.
    pub fn release(&self, keep: impl Fn(&GroupKey) -> bool) {
        let mut actors = self.actors.lock();
        actors.retain(|key, actor| {
            let kept = keep(key);
            if !kept {
                actor.stop(None);
            }
            kept
        });
    }

    /// Sends a frame to the group's members, except `except`. A group with no actor has no members.
    pub fn send(&self, key: &GroupKey, frame: Arc<SharedFrame>, except: Arc<[ConnectionId]>, stamp: Stamp) {
        if let Some(actor) = self.existing(key) {
            if actor.cast(GroupMessage::Send { frame, except, stamp }).is_err() {
                self.forget(key, &actor);
            }
        }
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
        for (_, actor) in self.actors.lock().drain() {
            actor.stop(None);
        }
    }
}
