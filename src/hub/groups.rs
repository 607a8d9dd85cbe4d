//! `Groups`: add and remove connections, and (beyond SignalR) count and list a group's members.

use super::{HubContext, HubError};
use crate::connection::ConnectionId;
use crate::group::GroupKey;

/// Manages the groups of a hub.
#[derive(Clone, Debug)]
pub struct Groups {
    context: HubContext,
}

impl Groups {
    pub(crate) fn new(context: HubContext) -> Self {
        Groups { context }
    }

    /// Adds a connection to a group. Returns once the membership is in force: a send to the group that starts
    /// after this returns reaches the connection. An unknown connection fails at once.
    pub async fn add(&self, connection: &ConnectionId, group: &str) -> Result<(), HubError> {
        let handle = self
            .context
            .note_joined(connection, group)
            .ok_or_else(|| HubError::UnknownConnection(connection.to_string()))?;
        let added = self
            .context
            .group_directory()
            .add(&GroupKey::named(group), connection.clone(), handle)
            .await;
        if added.is_err() {
            self.context.note_left(connection, group);
        }
        Ok(added?)
    }

    /// Removes a connection from a group; removing a non-member is not an error.
    pub async fn remove(&self, connection: &ConnectionId, group: &str) -> Result<(), HubError> {
        if !self.context.note_left(connection, group) {
            return Err(HubError::UnknownConnection(connection.to_string()));
        }
        Ok(self
            .context
            .group_directory()
            .remove(&GroupKey::named(group), connection.clone())
            .await?)
    }

    /// The number of connections in a group.
    pub async fn count(&self, group: &str) -> Result<usize, HubError> {
        Ok(self.context.group_directory().count(&GroupKey::named(group)).await?)
    }

    /// The connections in a group.
    pub async fn members(&self, group: &str) -> Result<Vec<ConnectionId>, HubError> {
        Ok(self.context.group_directory().members(&GroupKey::named(group)).await?)
    }
}
