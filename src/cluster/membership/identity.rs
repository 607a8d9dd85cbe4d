//! Who a node is and where it is in its life: [`NodeId`] (a name and a generation) and [`NodeStatus`], which each
//! node publishes under [`STATUS_KEY`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chitchat::ChitchatId;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::STATUS_KEY;

/// One incarnation of a node: its name and its generation.
///
/// Two incarnations of the same name are different nodes: a restarted node has a new, higher generation. Ordered by
/// name, then generation. Displayed as `name.generation`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// The node's configured name, unique in the cluster and stable across restarts.
    pub name: Arc<str>,
    /// The incarnation: larger for a later start of the same name.
    pub generation: u64,
}

impl NodeId {
    /// A node id from its parts.
    pub fn new(name: impl Into<Arc<str>>, generation: u64) -> Self {
        Self {
            name: name.into(),
            generation,
        }
    }

    pub(super) fn from_chitchat(id: &ChitchatId) -> Self {
        Self {
            name: Arc::clone(&id.node_id),
            generation: id.generation_id,
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.generation)
    }
}

/// Where a node is in its life, as it publishes under [`STATUS_KEY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Started, not yet ready to take work (the status every node starts with).
    Joining,
    /// Ready: takes clients and owns placed keys.
    Serving,
    /// Leaving: hands its work off and should not be given new work.
    Draining,
    /// Gone on purpose: it is about to stop, and its peers count it as dead at once rather than after failure
    /// detection, so its groups move without waiting.
    Left,
}

impl NodeStatus {
    /// The value published under [`STATUS_KEY`].
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Joining => "joining",
            NodeStatus::Serving => "serving",
            NodeStatus::Draining => "draining",
            NodeStatus::Left => "left",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value under [`STATUS_KEY`] that is not a [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown node status `{0}` (expected joining, serving, draining or left)")]
pub struct UnknownStatus(pub String);

impl FromStr for NodeStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "joining" => Ok(NodeStatus::Joining),
            "serving" => Ok(NodeStatus::Serving),
            "draining" => Ok(NodeStatus::Draining),
            "left" => Ok(NodeStatus::Left),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}
