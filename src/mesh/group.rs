//! What names a group and its sends: a group's key ([`GroupKey`]: its hub, its kind, its name), the stamp of a
//! group send ([`Stamp`]), and why a group operation failed ([`GroupError`]). Plain data, shared by the group
//! actors, the wire messages and the hub layer.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cluster::NodeId;

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

/// Who sent a group message, with the sender's sequence number: a send re-sent after its group's owner died is
/// recognised and not delivered twice.
///
/// The sender is an incarnation (name and generation), not a name: a restarted node counts from 1 again, and its
/// new generation tells its sends from the repeats of its earlier life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The incarnation of the node where the send started.
    pub origin: NodeId,
    /// That incarnation's sequence number for it (increasing from 1).
    pub seq: u64,
    /// The sequence number of that incarnation's previous send to the same group (0: none, or forgotten): a member
    /// node that sees a later send before it waits for it (`mesh/arrivals.rs`).
    #[serde(default)]
    pub prev: u64,
}
