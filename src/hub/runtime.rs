//! A hub running on a node: its definition, the registry of its connections here, and which of them are in
//! which group (the table a group delivery to this node is fanned out from). The mesh reaches it through
//! [`LocalHub`], which it implements.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;

use super::Hub;
use crate::connection::{deliver_each, ConnectionCounters, ConnectionHandle, ConnectionId, DeliveryKind, SharedFrame};
use crate::mesh::GroupKind;
use crate::mesh::{GroupKey, LocalHub, MeshError, Router};

/// The node's router, as the hubs and the node use it: the mesh over this node's hub runtimes.
pub(crate) type NodeRouter = Router<HubRuntime>;

/// One connection in the hub's registry, with the groups it joined (so it can leave them when it ends).
struct Member {
    handle: ConnectionHandle,
    groups: HashSet<GroupKey>,
    /// Moving here from another node and not started yet (`super::moving`): broadcasts skip it, since the node
    /// it comes from still delivers them.
    arriving: bool,
}

/// A hub running on a node: its definition, its connections here, and which of them are in which group.
pub(crate) struct HubRuntime {
    pub(super) hub: Hub,
    pub(super) name: Arc<str>,
    connections: RwLock<HashMap<ConnectionId, Member>>,
    /// This node's members of each group: the table a group delivery to this node is fanned out from.
    local_groups: RwLock<HashMap<GroupKey, HashMap<ConnectionId, ConnectionHandle>>>,
    pub(super) router: Arc<NodeRouter>,
    /// The node's connection counters, where deliveries are counted (one add per fan-out).
    counters: Arc<ConnectionCounters>,
}

impl HubRuntime {
    /// Starts `hub` on this node and registers it with `router`.
    pub(super) fn start(hub: Hub, router: Arc<NodeRouter>, counters: Arc<ConnectionCounters>) -> Arc<HubRuntime> {
        let name: Arc<str> = hub.name.as_str().into();
        let runtime = Arc::new(HubRuntime {
            hub,
            name: name.clone(),
            connections: RwLock::new(HashMap::new()),
            local_groups: RwLock::new(HashMap::new()),
            router: router.clone(),
            counters,
        });
        router.register_hub(&name, &runtime);
        runtime
    }

    /// Adds a connection that completed its handshake to the registry.
    pub(super) fn add_connection(&self, id: ConnectionId, handle: ConnectionHandle) {
        self.connections.write().insert(
            id,
            Member {
                handle,
                groups: HashSet::new(),
                arriving: false,
            },
        );
    }

    /// Adds a connection that is moving here from another node (`super::moving`); false if the id is taken.
    pub(super) fn add_arriving(&self, id: ConnectionId, handle: ConnectionHandle) -> bool {
        let mut connections = self.connections.write();
        if connections.contains_key(&id) {
            return false;
        }
        connections.insert(
            id,
            Member {
                handle,
                groups: HashSet::new(),
                arriving: true,
            },
        );
        true
    }

    /// The connection that moved here has started: it is an ordinary one from now on.
    pub(super) fn arrived(&self, id: &ConnectionId) {
        if let Some(member) = self.connections.write().get_mut(id) {
            member.arriving = false;
        }
    }

    /// The groups a connection here is in (`None` if it is not here).
    pub(super) fn groups_of(&self, id: &ConnectionId) -> Option<Vec<GroupKey>> {
        self.connections
            .read()
            .get(id)
            .map(|member| member.groups.iter().cloned().collect())
    }

    /// Takes a connection that moves away out of the registry and the local group table, without its groups'
    /// owners hearing of it (they moved it already); its handle, if it was here.
    pub(super) fn hand_off(&self, id: &ConnectionId) -> Option<(ConnectionHandle, Vec<GroupKey>)> {
        let member = self.connections.write().remove(id)?;
        let groups: Vec<GroupKey> = member.groups.into_iter().collect();
        let mut table = self.local_groups.write();
        for key in &groups {
            drop_from_table(&mut table, key, id);
        }
        Some((member.handle, groups))
    }

    /// Removes a connection that ended from the registry and from the local group table; returns the groups it
    /// was in, for their owners to drop it.
    pub(super) fn remove_connection(&self, id: &ConnectionId) -> Vec<GroupKey> {
        let member = self.connections.write().remove(id);
        let groups: Vec<GroupKey> = member
            .map(|member| member.groups.into_iter().collect())
            .unwrap_or_default();
        {
            let mut table = self.local_groups.write();
            for key in &groups {
                drop_from_table(&mut table, key, id);
            }
        }
        groups
    }

    /// The number of connections here.
    pub(super) fn connection_count(&self) -> usize {
        self.connections.read().len()
    }

    /// The number of group memberships (named groups and users) held by connections here.
    pub(super) fn membership_count(&self) -> usize {
        self.local_groups.read().values().map(HashMap::len).sum()
    }

    /// Asks every connection here to close with a Close message.
    /// The ids of the connections here.
    pub(super) fn connection_ids(&self) -> Vec<ConnectionId> {
        self.connections.read().keys().cloned().collect()
    }

    /// Asks these connections (those still here) to close with a Close message.
    pub(super) fn close_these(&self, ids: &[ConnectionId], allow_reconnect: bool) {
        self.each_of(ids, |handle| handle.close(None, allow_reconnect));
    }

    /// A drain's close of these connections, once the calls of their clients have finished
    /// (`ConnectionHandle::close_after_calls`).
    pub(super) fn close_these_after_calls(&self, ids: &[ConnectionId]) {
        self.each_of(ids, ConnectionHandle::close_after_calls);
    }

    /// Calls `act` on the handle of each of these connections that is still here.
    fn each_of(&self, ids: &[ConnectionId], act: impl Fn(&ConnectionHandle)) {
        let connections = self.connections.read();
        for member in ids.iter().filter_map(|id| connections.get(id)) {
            act(&member.handle);
        }
    }

    /// Drops connection `id`'s socket without a Close message if it has a keeper (which runs it now); closes it
    /// with `reason` otherwise.
    pub(super) fn drop_for_keeper(&self, id: &ConnectionId, reason: &str) {
        if let Some(member) = self.connections.read().get(id) {
            member.handle.drop_taken_over(reason);
        }
    }

    pub(super) fn close_all(&self, allow_reconnect: bool) {
        for member in self.connections.read().values() {
            member.handle.close(None, allow_reconnect);
        }
    }
}

impl LocalHub for HubRuntime {
    fn handle_of(&self, id: &ConnectionId) -> Option<ConnectionHandle> {
        self.connections.read().get(id).map(|member| member.handle.clone())
    }

    fn close_all_with(&self, error: &str) {
        for member in self.connections.read().values() {
            member.handle.close_cut_off(error);
        }
    }

    /// Delivers to every connection here but `except`. A full mailbox closes that connection (slow consumer).
    fn deliver_all(&self, frame: &Arc<SharedFrame>, except: &[ConnectionId]) {
        let mut count = 0;
        deliver_each(
            self.connections
                .read()
                .iter()
                .filter(|(id, member)| !member.arriving && !except.contains(id))
                .map(|(_, member)| &member.handle)
                .inspect(|_| count += 1),
            frame,
            true,
        );
        self.counters.delivered(DeliveryKind::Broadcast, count);
    }

    /// Delivers to these connections, those that are here.
    fn deliver_to(&self, ids: &[ConnectionId], frame: &Arc<SharedFrame>) {
        let connections = self.connections.read();
        let mut count = 0;
        deliver_each(
            ids.iter()
                .filter_map(|id| connections.get(id))
                .map(|member| &member.handle)
                .inspect(|_| count += 1),
            frame,
            false,
        );
        self.counters.delivered(DeliveryKind::Direct, count);
    }

    /// Delivers to this node's members of a group but `except`.
    /// Returns false when this node holds no member of the group.
    fn deliver_group(&self, key: &GroupKey, frame: &Arc<SharedFrame>, except: &[ConnectionId]) -> bool {
        let groups = self.local_groups.read();
        let Some(members) = groups.get(key) else {
            return false;
        };
        let mut count = 0;
        deliver_each(
            members
                .iter()
                .filter(|(id, _)| !except.contains(id))
                .map(|(_, handle)| handle)
                .inspect(|_| count += 1),
            frame,
            true,
        );
        let kind = match key.kind {
            GroupKind::Named => DeliveryKind::Group,
            GroupKind::User => DeliveryKind::User,
        };
        self.counters.delivered(kind, count);
        true
    }

    /// Records that connection `id` (of this node) is in group `key`; fails at once for an unknown connection.
    fn local_join(&self, key: &GroupKey, id: &ConnectionId) -> Result<(), MeshError> {
        let mut connections = self.connections.write();
        let member = connections
            .get_mut(id)
            .ok_or_else(|| MeshError::UnknownConnection(id.to_string()))?;
        member.groups.insert(key.clone());
        member.handle.kept_group(&key.name, key.kind == GroupKind::User, true);
        self.local_groups
            .write()
            .entry(key.clone())
            .or_default()
            .insert(id.clone(), member.handle.clone());
        Ok(())
    }

    fn has_local_members(&self, key: &GroupKey) -> bool {
        self.local_groups.read().get(key).is_some_and(|members| !members.is_empty())
    }

    /// Records that connection `id` left group `key`; false if the connection is not here.
    fn local_leave(&self, key: &GroupKey, id: &ConnectionId) -> bool {
        let mut connections = self.connections.write();
        let Some(member) = connections.get_mut(id) else {
            return false;
        };
        member.groups.remove(key);
        member.handle.kept_group(&key.name, key.kind == GroupKind::User, false);
        drop_from_table(&mut self.local_groups.write(), key, id);
        true
    }

    /// Every group membership this node holds, by group.
    fn local_memberships(&self) -> Vec<(GroupKey, Vec<ConnectionId>)> {
        self.local_groups
            .read()
            .iter()
            .map(|(key, members)| (key.clone(), members.keys().cloned().collect()))
            .collect()
    }
}

fn drop_from_table(
    table: &mut HashMap<GroupKey, HashMap<ConnectionId, ConnectionHandle>>,
    key: &GroupKey,
    id: &ConnectionId,
) {
    if let Some(members) = table.get_mut(key) {
        members.remove(id);
        if members.is_empty() {
            table.remove(key);
        }
    }
}
