//! Group membership from any node: joining and leaving (done on the connection's own node, which records it in
//! its hub's local table and then at the group's owner), counting and listing members (asked of the owner), with
//! a retry on the next owner when the owner leaves meanwhile.

use std::sync::Arc;

use super::envelope::{unexpected, Answer, Request};
use super::group::{GroupKey, GroupKind};
use super::owner::{Done, MembershipOp};
use super::{LocalHub, MeshError, Router};
use crate::cluster::NodeId;
use crate::connection::ConnectionId;

/// How many owners a membership request tries when owners leave while it waits.
const OWNER_ATTEMPTS: usize = 3;

impl<H: LocalHub> Router<H> {
    /// Adds a connection (of any node) to a group; returns once the membership is in force cluster-wide.
    pub(crate) async fn group_add(&self, key: GroupKey, connection: ConnectionId) -> Result<(), MeshError> {
        self.change_membership(key, connection, true).await
    }

    /// Removes a connection (of any node) from a group.
    pub(crate) async fn group_remove(&self, key: GroupKey, connection: ConnectionId) -> Result<(), MeshError> {
        self.change_membership(key, connection, false).await
    }

    /// Joins or leaves on the connection's own node, which records it locally and then at the group's owner.
    async fn change_membership(&self, key: GroupKey, connection: ConnectionId, join: bool) -> Result<(), MeshError> {
        let Some(server) = self.server_of(&key.hub, &connection) else {
            return if join {
                self.join_local(key, connection).await
            } else {
                self.leave_local(key, connection).await
            };
        };
        let id = connection.clone();
        let request = if join {
            Request::Join { key, connection }
        } else {
            Request::Leave { key, connection }
        };
        match self.request(&server, request).await {
            Answer::Done => Ok(()),
            Answer::PeerLeft => Err(MeshError::UnknownConnection(id.to_string())),
            answer => Err(unexpected(answer)),
        }
    }

    /// Removes a connection (of any node) from every named group of hub `hub` it is in, on its own node.
    pub(crate) async fn group_leave_all(&self, hub: Arc<str>, connection: ConnectionId) -> Result<(), MeshError> {
        let Some(server) = self.server_of(&hub, &connection) else {
            return self.leave_all_local(hub, connection).await;
        };
        let id = connection.clone();
        match self.request(&server, Request::LeaveAll { hub, connection }).await {
            Answer::Done => Ok(()),
            Answer::PeerLeft => Err(MeshError::UnknownConnection(id.to_string())),
            answer => Err(unexpected(answer)),
        }
    }

    pub(super) async fn leave_all_local(&self, hub: Arc<str>, connection: ConnectionId) -> Result<(), MeshError> {
        let unknown = || MeshError::UnknownConnection(connection.to_string());
        let runtime = self.hub(&hub).ok_or_else(unknown)?;
        runtime.handle_of(&connection).ok_or_else(unknown)?;
        // An admin call, not a message path: reading this node's membership table once is fine.
        let groups: Vec<GroupKey> = runtime
            .local_memberships()
            .into_iter()
            .filter(|(key, members)| key.kind == GroupKind::Named && members.contains(&connection))
            .map(|(key, _)| key)
            .collect();
        for key in groups {
            match self.leave_local(key, connection.clone()).await {
                // The connection ended meanwhile: it is in no group any more.
                Ok(()) | Err(MeshError::UnknownConnection(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    pub(super) async fn join_local(&self, key: GroupKey, connection: ConnectionId) -> Result<(), MeshError> {
        let runtime = self
            .hub(&key.hub)
            .ok_or_else(|| MeshError::UnknownConnection(connection.to_string()))?;
        runtime.local_join(&key, &connection)?;
        if let Err(error) = self.register(key.clone(), connection.clone()).await {
            runtime.local_leave(&key, &connection);
            return Err(error);
        }
        Ok(())
    }

    /// Puts a connection this node took over (`src/node/http/keeping.rs`) back in a group it was in: in the hub's
    /// local table, then at the group's owner. Unlike a client's join, a registration that fails (the owner did not
    /// answer, or owners kept leaving) does not undo the local one: the client is in the group as far as it knows
    /// and is never told otherwise, and the owner gets the member from this node's snapshot after the view change
    /// that failed it, or from the registration still on its way. Undoing it lost the membership for good (a chaos
    /// run, `tests/cli/chaos/README.md`, "The memberships of seed 1796631002345905947").
    pub(crate) async fn rejoin_taken_over(&self, key: GroupKey, connection: ConnectionId) -> Result<(), MeshError> {
        let runtime = self
            .hub(&key.hub)
            .ok_or_else(|| MeshError::UnknownConnection(connection.to_string()))?;
        runtime.local_join(&key, &connection)?;
        self.register(key, connection).await
    }

    pub(super) async fn leave_local(&self, key: GroupKey, connection: ConnectionId) -> Result<(), MeshError> {
        let runtime = self
            .hub(&key.hub)
            .ok_or_else(|| MeshError::UnknownConnection(connection.to_string()))?;
        if !runtime.local_leave(&key, &connection) {
            return Err(MeshError::UnknownConnection(connection.to_string()));
        }
        self.unregister(key, connection).await
    }

    /// Records at the group's owner that a connection of this node joined.
    pub(super) async fn register(&self, key: GroupKey, connection: ConnectionId) -> Result<(), MeshError> {
        let (op_key, op_connection) = (key.clone(), connection.clone());
        self.at_owner(
            &key,
            |from, done| MembershipOp::Register {
                from,
                key: op_key,
                connection: op_connection,
                done,
            },
            || Request::Register {
                key: key.clone(),
                connection: connection.clone(),
            },
        )
        .await
    }

    /// Applies a membership change of this node's at the group's owner: this node's membership queue (`op`, given
    /// this node's incarnation) or the owner's (`request`), asked again of the next owner when the owner leaves
    /// while it is asked.
    pub(super) async fn at_owner(
        &self,
        key: &GroupKey,
        op: impl FnOnce(NodeId, Done) -> MembershipOp,
        request: impl Fn() -> Request,
    ) -> Result<(), MeshError> {
        let mut attempts = OWNER_ATTEMPTS;
        loop {
            let owner = self.owner_of(key);
            if self.is_local(&owner.name) {
                let from = self.id();
                return self.own_op(|done| op(from, done)).await;
            }
            match self.request(&owner.name, request()).await {
                Answer::Done => return Ok(()),
                // The owner left while we asked: the next owner takes the change.
                Answer::PeerLeft if attempts > 1 => attempts -= 1,
                answer => return Err(unexpected(answer)),
            }
        }
    }

    /// Records at the group's owner that a connection of this node left.
    pub(crate) async fn unregister(&self, key: GroupKey, connection: ConnectionId) -> Result<(), MeshError> {
        // The caller took the connection out of this node's table: if it was the group's last member here, the
        // group's records go, so a member that joins later waits for no send it could not have got
        // (`mesh/arrivals.rs`).
        if self.hub(&key.hub).is_some_and(|runtime| !runtime.has_local_members(&key)) && !self.kept.lock().follows(&key) {
            self.delivered.lock().forget_group(&key);
        }
        let owner = self.owner_of(&key);
        if self.is_local(&owner.name) {
            let from = self.id();
            return self
                .own_op(|done| MembershipOp::Unregister {
                    from,
                    key,
                    connection,
                    done,
                })
                .await;
        }
        match self.request(&owner.name, Request::Unregister { key, connection }).await {
            Answer::Done => Ok(()),
            // The owner left; the next owner rebuilds from snapshots, which no longer list the connection.
            Answer::PeerLeft => Ok(()),
            answer => Err(unexpected(answer)),
        }
    }

    /// The number of members of a group, cluster-wide.
    pub(crate) async fn group_count(&self, key: GroupKey) -> Result<usize, MeshError> {
        let mut attempts = OWNER_ATTEMPTS;
        loop {
            let owner = self.owner_of(&key);
            if self.is_local(&owner.name) {
                return Ok(self.groups.count(&key));
            }
            match self.request(&owner.name, Request::Count { key: key.clone() }).await {
                Answer::Count(count) => return Ok(count),
                // The owner left while we asked: ask the next one.
                Answer::PeerLeft if attempts > 1 => attempts -= 1,
                answer => return Err(unexpected(answer)),
            }
        }
    }

    /// The members of a group, cluster-wide.
    pub(crate) async fn group_members(&self, key: GroupKey) -> Result<Vec<ConnectionId>, MeshError> {
        let mut attempts = OWNER_ATTEMPTS;
        loop {
            let owner = self.owner_of(&key);
            if self.is_local(&owner.name) {
                return Ok(self.groups.members(&key));
            }
            match self.request(&owner.name, Request::Members { key: key.clone() }).await {
                Answer::Members(members) => return Ok(members),
                Answer::PeerLeft if attempts > 1 => attempts -= 1,
                answer => return Err(unexpected(answer)),
            }
        }
    }
}
