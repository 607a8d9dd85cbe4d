//! A connection moving between nodes, the hub's side (docs/any-node-design.md, section 5a): on the node it
//! leaves, its groups are moved at their owners and it is handed off (out of the registry, its direct sends passed
//! on to the node it moves to); on the node it moves to, it is registered as arriving before its task starts, so
//! that the owners' markers and the sends after them find it. The order of the steps is the node layer's
//! (`src/node/http/moving.rs`).

use std::time::Duration;

use super::HubContext;
use crate::mesh::NodeId;
use crate::connection::{ConnectionHandle, ConnectionId};
use crate::mesh::{GroupError, GroupKey, MeshError};

impl HubContext {
    /// The groups (its user's included) connection `id` is in here; `None` if it is not here.
    pub(crate) fn groups_of(&self, id: &ConnectionId) -> Option<Vec<GroupKey>> {
        self.runtime.groups_of(id)
    }

    /// Moves connection `id` of this node to node `to` in each of its groups, at their owners, and waits (at most
    /// `limit`) until every owner's marker has taken it out of this node's table: from then on every group send
    /// reaches it through `to`. The groups it moved.
    pub(crate) async fn move_groups(
        &self,
        id: &ConnectionId,
        to: &NodeId,
        limit: Duration,
    ) -> Result<Vec<GroupKey>, MeshError> {
        let deadline = tokio::time::Instant::now() + limit;
        let groups = self.groups_of(id).ok_or_else(|| MeshError::UnknownConnection(id.to_string()))?;
        self.repeat_moves(id, &groups, to, limit).await?;
        // The markers to this node may still be on their way behind the owners' deliveries.
        let mut pause = Duration::from_millis(1);
        loop {
            match self.groups_of(id) {
                Some(left) if left.is_empty() => return Ok(groups),
                Some(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Some(_) => return Err(unavailable("a group's owner did not move the connection in time")),
                None => return Err(MeshError::UnknownConnection(id.to_string())),
            }
        }
    }

    /// Asks the owners of `groups` to move connection `id` from this node to `to` (again: after ownership moved
    /// during a move, the new owners learn it; for an owner that knows it already, nothing changes).
    pub(crate) async fn repeat_moves(
        &self,
        id: &ConnectionId,
        groups: &[GroupKey],
        to: &NodeId,
        limit: Duration,
    ) -> Result<(), MeshError> {
        let router = self.router();
        let moves = groups
            .iter()
            .map(|key| router.move_member(key.clone(), id.clone(), to.clone()));
        let results = tokio::time::timeout(limit, futures_util::future::join_all(moves))
            .await
            .map_err(|_| unavailable("the groups' owners did not answer in time"))?;
        results.into_iter().collect::<Result<Vec<()>, MeshError>>()?;
        Ok(())
    }

    /// Hands connection `id` off to node `to`: direct sends that reach this node for it go on to `to` from now on,
    /// and it leaves the registry without its groups' owners hearing of it. Its handle, to ask its task for its
    /// state; `None` if it is not here or too many connections of this node run elsewhere already.
    pub(crate) fn hand_off(&self, id: &ConnectionId, to: &NodeId) -> Option<ConnectionHandle> {
        // Passed on first, then out of the registry: a send between the two goes either way, never nowhere.
        self.router().adopt_out(id.clone(), to.clone()).ok()?;
        self.runtime.hand_off(id).map(|(handle, _)| handle)
    }

    /// Registers a connection that is moving here; false if its id is taken.
    pub(crate) fn add_arriving(&self, id: ConnectionId, handle: ConnectionHandle) -> bool {
        self.runtime.add_arriving(id, handle)
    }

    /// The connection that moved here has started.
    pub(crate) fn arrived(&self, id: &ConnectionId) {
        self.runtime.arrived(id);
    }

    /// A connection that was moving here will not start: it leaves the registry and the groups it joined here.
    pub(crate) async fn abandon_arrival(&self, id: &ConnectionId) {
        for key in self.runtime.remove_connection(id) {
            if let Err(error) = self.router().unregister(key, id.clone()).await {
                tracing::debug!(%error, %id, "a group could not drop a connection that did not arrive");
            }
        }
    }
}

fn unavailable(why: &str) -> MeshError {
    MeshError::Group(GroupError::Unavailable(why.to_owned()))
}
