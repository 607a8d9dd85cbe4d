//! The status report a node serves at [`STATUS_PATH`]: the cluster as this node sees it (members with their
//! generation, status, addresses and uptime; dead members), and this node's own figures (connections per hub,
//! groups owned, the health of its links, readiness, deliveries and client messages so far), and each live
//! member's load as it publishes it in gossip (`super::metrics`: connections, deliveries, client messages), which
//! the live page charts. `hubmesh status` prints it; scripts read it as JSON.
//!
//! The types serialize to the JSON document and deserialize from it, so Rust tools can read a node's report.
//! This file reads the node, its membership view and its cluster health; it changes nothing.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::cluster::{HUBS_KEY, STARTED_KEY};
use super::metrics::{Load, LOAD_KEY};
use super::Node;
use crate::cluster::membership::STATUS_KEY;
use crate::cluster::LINK_ADDRESS_KEY;

/// The path of a node's status report.
pub const STATUS_PATH: &str = "/_hubmesh/status";

/// One node's report: itself, then the cluster as it sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The reporting node's name.
    pub node: String,
    /// Its generation, if it is in a cluster.
    pub generation: Option<u64>,
    /// `joining`, `serving` or `draining`: its lifecycle.
    pub status: String,
    /// Whether it answers `GET /readyz` with 200.
    pub ready: bool,
    /// Why it is not ready (empty when ready).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Whether it is in a cluster (else a single node).
    pub clustered: bool,
    /// When it started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// How long it has run, in milliseconds.
    pub uptime_ms: u64,
    /// Its connections, all hubs.
    pub connections: usize,
    /// The groups (named and user) it owns, all hubs.
    pub groups_owned: usize,
    /// Messages it has handed to its connections so far, one per recipient, all kinds (`hubmesh_deliveries`).
    #[serde(default)]
    pub deliveries: u64,
    /// Hub messages it has received from its clients so far (`hubmesh_client_messages_received`).
    #[serde(default)]
    pub messages_received: u64,
    /// Per hub it serves: connections and groups owned.
    #[serde(default)]
    pub hubs: Vec<HubReport>,
    /// Its links, one per live peer of its view.
    #[serde(default)]
    pub links: Vec<LinkReport>,
    /// The live members of its view, itself included, sorted by name (a single node lists itself).
    #[serde(default)]
    pub members: Vec<MemberReport>,
    /// Members its view holds as dead.
    #[serde(default)]
    pub dead: Vec<NodeRef>,
}

/// One hub of the reporting node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubReport {
    /// The hub's name.
    pub name: String,
    /// Its connections on this node.
    pub connections: usize,
    /// Its groups (named and user) this node owns.
    pub groups_owned: usize,
}

/// The reporting node's link to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkReport {
    /// The peer's name.
    pub node: String,
    /// The peer's generation.
    pub generation: u64,
    /// The address the peer published for links.
    pub address: Option<String>,
    /// Whether the link is up.
    pub up: bool,
}

/// A live member as the reporting node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    /// Its name.
    pub name: String,
    /// Its generation (none for a single node).
    pub generation: Option<u64>,
    /// The status it published (`joining`, `serving`, `draining`).
    pub status: Option<String>,
    /// Whether it is the reporting node.
    pub local: bool,
    /// The address it gossips on.
    pub gossip_address: Option<String>,
    /// The address it accepts links on.
    pub link_address: Option<String>,
    /// The hubs it serves.
    #[serde(default)]
    pub hubs: Vec<String>,
    /// When it started, milliseconds since the Unix epoch, as it published.
    pub started_ms: Option<u64>,
    /// How long it has run, in milliseconds, by the reporting node's clock.
    pub uptime_ms: Option<u64>,
    /// Whether the reporting node's link to it is up (none for the reporting node itself).
    pub link_up: Option<bool>,
    /// Its connections, all hubs: the reporting node's own now, a peer's as it last published it (none if it has
    /// not yet).
    #[serde(default)]
    pub connections: Option<u64>,
    /// Messages it has handed to its connections so far, as for `connections`.
    #[serde(default)]
    pub deliveries: Option<u64>,
    /// Hub messages it has received from its clients so far, as for `connections`.
    #[serde(default)]
    pub messages_received: Option<u64>,
}

/// A member by name and generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    /// Its name.
    pub name: String,
    /// Its generation.
    pub generation: u64,
}

/// Milliseconds since the Unix epoch (0 before it, saturated far after it).
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The report of `node` now.
pub(crate) async fn report(node: &Node) -> StatusReport {
    let now_ms = unix_ms(SystemTime::now());
    let started_ms = unix_ms(node.inner.started);
    let readiness = node.readiness().await;
    let load = Load::of(node);

    let mut owned: BTreeMap<String, usize> = BTreeMap::new();
    let mut router = None;
    let mut hubs: Vec<HubReport> = Vec::new();
    for endpoint in node.inner.endpoints.values() {
        let context = &endpoint.context;
        router.get_or_insert_with(|| context.router().clone());
        hubs.push(HubReport {
            name: context.hub().name().to_owned(),
            connections: context.local_connection_count(),
            groups_owned: 0,
        });
    }
    if let Some(router) = router {
        for key in router.owned_groups() {
            *owned.entry(key.hub.to_string()).or_default() += 1;
        }
    }
    for hub in &mut hubs {
        hub.groups_owned = owned.get(&hub.name).copied().unwrap_or(0);
    }
    hubs.sort_by(|a, b| a.name.cmp(&b.name));

    let mut report = StatusReport {
        node: node.name().to_owned(),
        generation: None,
        status: readiness.status.as_str().to_owned(),
        ready: readiness.is_ready(),
        reasons: readiness.reasons,
        clustered: false,
        started_ms,
        uptime_ms: now_ms.saturating_sub(started_ms),
        connections: hubs.iter().map(|hub| hub.connections).sum(),
        groups_owned: owned.values().sum(),
        deliveries: load.deliveries,
        messages_received: load.messages,
        hubs,
        links: Vec::new(),
        members: Vec::new(),
        dead: Vec::new(),
    };

    let cluster = node.inner.cluster.lock().await;
    let Some(cluster) = cluster.as_ref() else {
        report.members.push(MemberReport {
            name: report.node.clone(),
            generation: None,
            status: Some(report.status.clone()),
            local: true,
            gossip_address: None,
            link_address: None,
            hubs: report.hubs.iter().map(|hub| hub.name.clone()).collect(),
            started_ms: Some(started_ms),
            uptime_ms: Some(report.uptime_ms),
            link_up: None,
            connections: Some(load.connections),
            deliveries: Some(load.deliveries),
            messages_received: Some(load.messages),
        });
        return report;
    };
    let view = cluster.membership().view();
    let health = cluster.health();
    report.clustered = true;
    report.generation = Some(view.self_id.generation);
    for member in &view.live {
        let local = member.id == view.self_id;
        let link_up = (!local).then(|| health.link_up(&member.id));
        let link_address = member.get(LINK_ADDRESS_KEY).map(str::to_owned);
        if let Some(up) = link_up {
            report.links.push(LinkReport {
                node: member.id.name.to_string(),
                generation: member.id.generation,
                address: link_address.clone(),
                up,
            });
        }
        let member_started = member.get(STARTED_KEY).and_then(|value| value.parse::<u64>().ok());
        let member_load = if local {
            Some(load)
        } else {
            member.get(LOAD_KEY).and_then(Load::parse)
        };
        report.members.push(MemberReport {
            name: member.id.name.to_string(),
            generation: Some(member.id.generation),
            status: member.get(STATUS_KEY).map(str::to_owned),
            local,
            gossip_address: Some(member.gossip_addr.to_string()),
            link_address,
            hubs: member
                .get(HUBS_KEY)
                .map(|hubs| {
                    hubs.split(',')
                        .filter(|hub| !hub.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            started_ms: member_started,
            uptime_ms: member_started.map(|started| now_ms.saturating_sub(started)),
            link_up,
            connections: member_load.map(|load| load.connections),
            deliveries: member_load.map(|load| load.deliveries),
            messages_received: member_load.map(|load| load.messages),
        });
    }
    report.members.sort_by(|a, b| a.name.cmp(&b.name));
    report.dead = view
        .dead
        .iter()
        .map(|id| NodeRef {
            name: id.name.to_string(),
            generation: id.generation,
        })
        .collect();
    report
}
