//! `Groups`: add and remove connections, and (beyond SignalR) count and list a group's members.

use super::{HubContext, HubError};
use crate::connection::ConnectionId;
use crate::mesh::GroupKey;

/// Manages the groups of a hub (SignalR's `Groups`), cluster-wide: a group's members may be connected to any
/// node. Get one from [`crate::Caller::groups`] or [`crate::HubContext::groups`].
///
/// ```no_run
/// use hubmesh::{Caller, HubError};
///
/// async fn join(caller: Caller, room: String) -> Result<usize, HubError> {
///     caller.groups().add(caller.connection_id(), &room).await?;
///     caller.clients().group(&room).send("Joined", (caller.connection_id().to_string(),))?;
///     caller.groups().count(&room).await
/// }
///
/// async fn leave(caller: Caller, room: String) -> Result<(), HubError> {
///     caller.groups().remove(caller.connection_id(), &room).await
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Groups {
    context: HubContext,
}

impl Groups {
    pub(crate) fn new(context: HubContext) -> Self {
        Groups { context }
    }

    /// Adds a connection, of any node, to a group. Returns once the membership is in force cluster-wide: a send
    /// to the group that starts after this returns reaches the connection. An unknown connection fails at once.
    pub async fn add(&self, connection: &ConnectionId, group: &str) -> Result<(), HubError> {
        let key = GroupKey::named(self.context.name(), group);
        Ok(self.context.router().group_add(key, connection.clone()).await?)
    }

    /// Removes a connection, of any node, from a group; removing a non-member is not an error.
    pub async fn remove(&self, connection: &ConnectionId, group: &str) -> Result<(), HubError> {
        let key = GroupKey::named(self.context.name(), group);
        Ok(self.context.router().group_remove(key, connection.clone()).await?)
    }

    /// The number of connections in a group, cluster-wide.
    pub async fn count(&self, group: &str) -> Result<usize, HubError> {
        let key = GroupKey::named(self.context.name(), group);
        Ok(self.context.router().group_count(key).await?)
    }

    /// The connections in a group, cluster-wide.
    pub async fn members(&self, group: &str) -> Result<Vec<ConnectionId>, HubError> {
        let key = GroupKey::named(self.context.name(), group);
        Ok(self.context.router().group_members(key).await?)
    }
}
