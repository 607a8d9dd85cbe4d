//! Group and user actors (ractor): each owns the membership of one group, or the connections of one user, and
//! fans every send to the group out in one order.
//!
//! A user is a group of another kind ([`GroupKind::User`]), as in SignalR.Orleans, so `Clients.user` and
//! `Clients.group` share one mechanism. An actor is started on first use by the hub's [`GroupDirectory`] (never
//! through ractor's process-global registry, so several nodes can share a process) and stops itself when its
//! last member leaves.
//!
//! Ordering: a group actor handles one message at a time, so every member receives the group's messages in the
//! order the actor accepted them (per-group total order), and messages from one sender in the order sent.
//!
//! Group actors run on the node's multi-threaded runtime, never on an HTTP worker: they are spawned through the
//! runtime handle the directory holds. This module may call the connection layer (handles, shared frames); it
//! knows nothing of hub methods.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::connection::{ConnectionHandle, ConnectionId, SharedFrame};

/// Whether a group is a named group or the connections of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupKind {
    /// `Groups.add` / `Clients.group`.
    Named,
    /// `Clients.user`: every connection of one user id.
    User,
}

/// The key of a group within one hub.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// Named group or user.
    pub kind: GroupKind,
    /// The group's name or the user's id.
    pub name: Arc<str>,
}

impl GroupKey {
    /// A named group.
    pub fn named(name: &str) -> Self {
        GroupKey {
            kind: GroupKind::Named,
            name: name.into(),
        }
    }

    /// The group of one user's connections.
    pub fn user(id: &str) -> Self {
        GroupKey {
            kind: GroupKind::User,
            name: id.into(),
        }
    }
}

/// Why a group operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The group actor could not be started or did not answer.
    #[error("the group actor is unavailable: {0}")]
    Unavailable(String),
}

/// Messages a group actor handles.
pub enum GroupMessage {
    /// Add a member; replies with the member count.
    Add(ConnectionId, ConnectionHandle, RpcReplyPort<usize>),
    /// Remove a member; replies with the member count. The actor stops when none are left.
    Remove(ConnectionId, RpcReplyPort<usize>),
    /// Deliver a frame to every member but those in `except`.
    Send {
        /// The frame, encoded at most once per protocol for all members.
        frame: Arc<SharedFrame>,
        /// Members that must not receive it.
        except: Arc<[ConnectionId]>,
    },
    /// Reply with the member count.
    Count(RpcReplyPort<usize>),
    /// Reply with the member ids.
    Members(RpcReplyPort<Vec<ConnectionId>>),
}

struct GroupActor;

impl Actor for GroupActor {
    type Msg = GroupMessage;
    type State = HashMap<ConnectionId, ConnectionHandle>;
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
            GroupMessage::Add(id, handle, reply) => {
                members.insert(id, handle);
                let _ = reply.send(members.len());
            }
            GroupMessage::Remove(id, reply) => {
                members.remove(&id);
                let _ = reply.send(members.len());
                if members.is_empty() {
                    // Messages queued behind this one are dropped with their reply ports, so an `add` that
                    // raced with the last `remove` sees a failed call and retries on a fresh actor.
                    myself.stop(None);
                }
            }
            GroupMessage::Send { frame, except } => {
                for (id, handle) in members.iter() {
                    if except.contains(id) {
                        continue;
                    }
                    // A full mailbox closes that member (slow consumer); the others are not held up.
                    let _ = handle.deliver(frame.clone());
                }
            }
            GroupMessage::Count(reply) => {
                let _ = reply.send(members.len());
            }
            GroupMessage::Members(reply) => {
                let _ = reply.send(members.keys().cloned().collect());
            }
        }
        Ok(())
    }
}

/// How long a caller waits for a group actor's answer before the operation fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `add` retries when it raced with a group that was stopping.
const ADD_ATTEMPTS: usize = 4;

/// The group actors of one hub on one node, by key.
pub struct GroupDirectory {
    actors: Mutex<HashMap<GroupKey, ActorRef<GroupMessage>>>,
    runtime: tokio::runtime::Handle,
}

impl GroupDirectory {
    /// A directory whose actors run on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        GroupDirectory {
            actors: Mutex::new(HashMap::new()),
            runtime,
        }
    }

    fn existing(&self, key: &GroupKey) -> Option<ActorRef<GroupMessage>> {
        self.actors.lock().get(key).cloned()
    }

    async fn get_or_start(&self, key: &GroupKey) -> Result<ActorRef<GroupMessage>, GroupError> {
        if let Some(actor) = self.existing(key) {
            return Ok(actor);
        }
        let spawned = self
            .runtime
            .spawn(async { Actor::spawn(None, GroupActor, ()).await })
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

    /// Adds a member; returns once the actor holds it.
    pub async fn add(&self, key: &GroupKey, id: ConnectionId, handle: ConnectionHandle) -> Result<(), GroupError> {
        let mut last_error = String::new();
        for _ in 0..ADD_ATTEMPTS {
            let actor = self.get_or_start(key).await?;
            let (id, handle) = (id.clone(), handle.clone());
            match actor
                .call(|reply| GroupMessage::Add(id, handle, reply), Some(CALL_TIMEOUT))
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

    /// Removes a member; a group that was never started is not started for it.
    pub async fn remove(&self, key: &GroupKey, id: ConnectionId) -> Result<(), GroupError> {
        let Some(actor) = self.existing(key) else {
            return Ok(());
        };
        match actor
            .call(|reply| GroupMessage::Remove(id, reply), Some(CALL_TIMEOUT))
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

    /// Sends a frame to the group's members, except `except`. A group with no actor has no members.
    pub fn send(&self, key: &GroupKey, frame: Arc<SharedFrame>, except: Arc<[ConnectionId]>) {
        if let Some(actor) = self.existing(key) {
            let _ = actor.cast(GroupMessage::Send { frame, except });
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
