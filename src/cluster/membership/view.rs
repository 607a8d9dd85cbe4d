//! What a node knows of the cluster: [`Member`] and [`MembershipView`], and how a view is read off chitchat's state.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use chitchat::Chitchat;
use tracing::info;

#[cfg(doc)]
use super::MembershipConfig;
use super::{NodeId, NodeStatus, HANDING_OVER_KEY, STATUS_KEY};

/// A live member as the local node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Which node, which incarnation.
    pub id: NodeId,
    /// The address the member gossips on.
    pub gossip_addr: SocketAddr,
    /// The key-values the member published (including the reserved `hubmesh.` keys).
    pub state: BTreeMap<String, String>,
}

impl Member {
    /// The member's published status; `None` if it published none or an unknown one.
    pub fn status(&self) -> Option<NodeStatus> {
        self.state.get(STATUS_KEY).and_then(|value| value.parse().ok())
    }

    /// Whether the member hands what it owns over before it leaves ([`HANDING_OVER_KEY`]): nothing is placed on it.
    pub fn hands_over(&self) -> bool {
        self.state.contains_key(HANDING_OVER_KEY)
    }

    /// One published value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.state.get(key).map(String::as_str)
    }
}

/// What one node knows of the cluster at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipView {
    /// The local node.
    pub self_id: NodeId,
    /// Live members, the local node included, at most one generation per name, sorted by [`NodeId`].
    pub live: Vec<Member>,
    /// Members declared dead by the failure detector or superseded by a newer generation, sorted. Dead members are
    /// forgotten after [`MembershipConfig::dead_node_grace_period`].
    pub dead: Vec<NodeId>,
}

impl MembershipView {
    /// The ids of the live members, sorted: the input [`placement`](crate::cluster::placement) expects.
    pub fn live_ids(&self) -> Vec<NodeId> {
        self.live.iter().map(|member| member.id.clone()).collect()
    }

    /// The live member with this id.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.live.iter().find(|member| &member.id == id)
    }

    #[cfg(any(test, feature = "internals"))]
    /// The live member with this name, whatever its generation.
    pub fn member_named(&self, name: &str) -> Option<&Member> {
        self.live.iter().find(|member| &*member.id.name == name)
    }

    /// Whether this incarnation is live.
    pub fn is_live(&self, id: &NodeId) -> bool {
        self.member(id).is_some()
    }

    /// The live members other than the local node.
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.live.iter().filter(move |member| member.id != self.self_id)
    }
}

/// The view chitchat's state gives: live members (newest generation per name) and dead ones.
pub(super) fn build_view(chitchat: &Chitchat, self_id: &NodeId) -> MembershipView {
    let mut newest: HashMap<Arc<str>, Member> = HashMap::new();
    let mut dead: Vec<NodeId> = chitchat.dead_nodes().map(NodeId::from_chitchat).collect();
    for chitchat_id in chitchat.live_nodes() {
        let Some(node_state) = chitchat.node_state(chitchat_id) else {
            continue;
        };
        let member = Member {
            id: NodeId::from_chitchat(chitchat_id),
            gossip_addr: chitchat_id.gossip_advertise_addr,
            state: node_state
                .key_values()
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
        };
        // A peer that said it left is gone now, not after failure detection (it stops right after saying so).
        if member.id != *self_id && member.status() == Some(NodeStatus::Left) {
            dead.push(member.id);
            continue;
        }
        match newest.get_mut(&member.id.name) {
            Some(current) if current.id.generation >= member.id.generation => dead.push(member.id),
            Some(current) => dead.push(std::mem::replace(current, member).id),
            None => {
                newest.insert(Arc::clone(&member.id.name), member);
            }
        }
    }
    let mut live: Vec<Member> = newest.into_values().collect();
    live.sort_by(|a, b| a.id.cmp(&b.id));
    dead.retain(|id| live.binary_search_by(|member| member.id.cmp(id)).is_err());
    dead.sort();
    dead.dedup();
    MembershipView {
        self_id: self_id.clone(),
        live,
        dead,
    }
}

pub(super) fn log_changes(before: &MembershipView, after: &MembershipView) {
    for member in &after.live {
        if !before.is_live(&member.id) {
            info!(member = %member.id, gossip_addr = %member.gossip_addr, "member live");
        }
    }
    for member in &before.live {
        if !after.is_live(&member.id) {
            info!(member = %member.id, "member no longer live");
        }
    }
}
