//! An in-process cluster for tests: N nodes on ephemeral `127.0.0.1` HTTP ports, gossiping and linked over
//! in-memory networks (ractor_cluster cannot host several nodes in one process; see `cluster::link`), with
//! faults: kill, restart (a new incarnation of the same name), freeze and thaw, partition and heal.
//!
//! Clients connect to each node's real HTTP port, so tests use real SignalR clients; only node-to-node traffic
//! is in memory, and it carries the same encoded frames the real links carry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::link::memory::MemoryNetwork;
use crate::cluster::{GossipNetwork, LinkConfig, MembershipConfig};
use crate::connection::Limits;
use crate::hub::{Hub, HubContext};
use crate::mesh::MeshBoundsHit;
use crate::node::{ClusterSettings, Node, NodeError, NodeHandle};

/// The cluster secret of test clusters.
const TEST_SECRET: &str = "hubmesh-test-cluster";

/// The REST API access key of every node of a test cluster (`tests/rest_api.rs` signs its tokens with it).
pub const TEST_REST_ACCESS_KEY: &str = "hubmesh-test-rest-access-key";

type HubFactory = Arc<dyn Fn() -> Vec<Hub> + Send + Sync>;

struct TestNode {
    name: String,
    /// Hubs this node only sends to (a backend node serving no clients).
    send_only: Vec<String>,
    handle: Option<NodeHandle>,
    gossip_addr: Option<SocketAddr>,
}

/// N nodes in this process forming one cluster.
pub struct TestCluster {
    gossip: GossipNetwork,
    links: MemoryNetwork,
    hubs: HubFactory,
    limits: Limits,
    nodes: Vec<TestNode>,
}

impl TestCluster {
    /// Starts `count` nodes named `node-1` … serving the hubs `hubs` makes (called once per node).
    pub async fn start(count: usize, hubs: impl Fn() -> Vec<Hub> + Send + Sync + 'static) -> Result<Self, NodeError> {
        Self::start_with_limits(count, Limits::default(), hubs).await
    }

    /// As [`TestCluster::start`], every node with connection limits `limits`.
    pub async fn start_with_limits(
        count: usize,
        limits: Limits,
        hubs: impl Fn() -> Vec<Hub> + Send + Sync + 'static,
    ) -> Result<Self, NodeError> {
        let mut cluster = TestCluster {
            gossip: GossipNetwork::in_memory(),
            links: MemoryNetwork::new(),
            hubs: Arc::new(hubs),
            limits,
            nodes: Vec::new(),
        };
        for index in 0..count {
            cluster.nodes.push(TestNode {
                name: format!("node-{}", index + 1),
                send_only: Vec::new(),
                handle: None,
                gossip_addr: None,
            });
            cluster.start_node(index).await?;
        }
        Ok(cluster)
    }

    fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|node| node.gossip_addr.map(|addr| addr.to_string()))
            .collect()
    }

    async fn start_node(&mut self, index: usize) -> Result<(), NodeError> {
        let seeds = self.seeds();
        let Some(node) = self.nodes.get(index) else {
            return Err(NodeError::Cluster(format!("no node {index}")));
        };
        let name = node.name.clone();
        let send_only = node.send_only.clone();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let membership = MembershipConfig::new(name.as_str(), "test", loopback).with_seeds(seeds);
        let settings = ClusterSettings::real(membership, LinkConfig::new(loopback, TEST_SECRET))
            .over_in_memory_networks(self.gossip.clone(), self.links.clone());
        let mut builder = Node::builder()
            .name(&name)
            .listen("127.0.0.1:0")
            // Counters of their own: a clone of `Limits` shares them, and each node keeps separate figures.
            .limits(Limits {
                counters: Arc::default(),
                bounds_hit: Arc::default(),
                ..self.limits.clone()
            })
            .cluster(settings)
            .rest_access_key(TEST_REST_ACCESS_KEY);
        if send_only.is_empty() {
            for hub in (self.hubs)() {
                builder = builder.hub(hub);
            }
        } else {
            for hub in &send_only {
                builder = builder.send_only_hub(hub);
            }
        }
        let handle = builder.start().await?;
        let gossip_addr = handle.node().gossip_addr().await;
        if let Some(node) = self.nodes.get_mut(index) {
            node.handle = Some(handle);
            node.gossip_addr = gossip_addr;
        }
        Ok(())
    }

    /// Adds a backend node that serves no clients and only sends to hub `hub`; returns its index.
    pub async fn add_backend(&mut self, hub: &str) -> Result<usize, NodeError> {
        let index = self.nodes.len();
        self.nodes.push(TestNode {
            name: format!("backend-{}", index + 1),
            send_only: vec![hub.to_owned()],
            handle: None,
            gossip_addr: None,
        });
        self.start_node(index).await?;
        Ok(index)
    }

    /// The number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `http://127.0.0.1:<port>` of node `index`, if it runs.
    pub fn url(&self, index: usize) -> Option<String> {
        self.nodes.get(index)?.handle.as_ref().map(NodeHandle::url)
    }

    /// The name of node `index`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.nodes.get(index).map(|node| node.name.as_str())
    }

    /// The context of hub `hub` on node `index`, to send from the node as a backend would.
    pub fn context(&self, index: usize, hub: &str) -> Option<HubContext> {
        self.nodes.get(index)?.handle.as_ref()?.hub_context(hub)
    }

    /// How often node `index`'s mesh hit its bounds, if it runs `hub`.
    pub fn mesh_bounds_hit(&self, index: usize, hub: &str) -> Option<Arc<MeshBoundsHit>> {
        Some(self.context(index, hub)?.router().bounds_hit())
    }

    /// Waits until every running node sees exactly the running nodes as live, each in its current incarnation
    /// (a restarted node's new generation, not its earlier one); returns how long it took.
    pub async fn wait_for_members(&self, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let mut expected: Vec<String> = Vec::new();
        for node in self.nodes.iter().filter_map(|node| node.handle.as_ref()) {
            match node.node().cluster_view().await {
                Some(view) => expected.push(view.self_id.to_string()),
                None => return Err("a running node has no cluster".into()),
            }
        }
        expected.sort_unstable();
        loop {
            let mut agreed = true;
            let mut seen = Vec::new();
            for node in self.nodes.iter().filter_map(|node| node.handle.as_ref()) {
                let view = node.node().cluster_view().await;
                let mut live: Vec<String> = view
                    .map(|view| view.live.iter().map(|member| member.id.to_string()).collect())
                    .unwrap_or_default();
                live.sort_unstable();
                if live != expected {
                    agreed = false;
                    seen.push(live);
                    break;
                }
            }
            // And none still holds group sends after the change (so what a test sends next is not held).
            if agreed
                && self
                    .nodes
                    .iter()
                    .filter_map(|node| node.handle.as_ref())
                    .all(|node| !node.node().router().is_settling())
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "the nodes did not agree on the members {expected:?} within {timeout:?} (one saw {seen:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills node `index` as a crash would: it is cut off from gossip and links first (so it says goodbye to
    /// nobody), then its server and connections stop.
    pub async fn kill(&mut self, index: usize) {
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        self.links.kill(&node.name);
        if let Some(addr) = node.gossip_addr {
            self.gossip.freeze(addr);
        }
        if let Some(handle) = node.handle.take() {
            handle.stop().await;
        }
    }

    /// Stops node `index` as an operator's stop does: it closes what connections it still has and says it leaves
    /// (status `left`), so its peers count it gone at once; it is not started again.
    pub async fn leave(&mut self, index: usize) {
        if let Some(handle) = self.nodes.get_mut(index).and_then(|node| node.handle.take()) {
            handle.stop().await;
        }
    }

    /// Restarts node `index` as a crashed process started again on the same configuration would be: it is
    /// [killed](TestCluster::kill) if it runs, then started under the same name with a new, higher generation, the
    /// same hubs and the running nodes as seeds. Its clients are gone; new ones connect to its new [url](Self::url).
    pub async fn restart(&mut self, index: usize) -> Result<(), NodeError> {
        self.kill(index).await;
        // The killed node's gossip address is free again (the new one may be given it): let it through.
        if let Some(addr) = self.nodes.get_mut(index).and_then(|node| node.gossip_addr.take()) {
            self.gossip.thaw(addr);
        }
        self.start_node(index).await
    }

    /// Restarts node `index` as an operator's restart does: it stops gracefully (closing what connections it still
    /// has, and saying it leaves), then starts again under the same name with a new, higher generation, the same
    /// hubs and the running nodes as seeds, at a new [url](Self::url).
    pub async fn restart_gracefully(&mut self, index: usize) -> Result<(), NodeError> {
        self.leave(index).await;
        self.start_node(index).await
    }

    /// Freezes node `index` (as SIGSTOP would, for its peers): no gossip and no link traffic in or out; its clients
    /// stay connected.
    pub fn freeze(&self, index: usize) {
        if let Some(node) = self.nodes.get(index) {
            self.links.freeze(&node.name);
            if let Some(addr) = node.gossip_addr {
                self.gossip.freeze(addr);
            }
        }
    }

    /// Undoes [`TestCluster::freeze`] (SIGCONT).
    pub fn thaw(&self, index: usize) {
        if let Some(node) = self.nodes.get(index) {
            self.links.thaw(&node.name);
            if let Some(addr) = node.gossip_addr {
                self.gossip.thaw(addr);
            }
        }
    }

    /// Holds every link frame between nodes `a` and `b`, both ways, until [`TestCluster::heal_links`]; gossip
    /// still flows, so neither is declared dead (a link that stays full, as a peer that stopped reading its socket).
    pub fn partition_links(&self, a: usize, b: usize) {
        if let (Some(a), Some(b)) = (self.nodes.get(a), self.nodes.get(b)) {
            self.links.partition(&[&a.name], &[&b.name]);
        }
    }

    /// Undoes every [`TestCluster::partition_links`] (and link freezes).
    pub fn heal_links(&self) {
        self.links.heal();
    }

    /// Cuts nodes `side_a` from nodes `side_b`, gossip and links, both ways, until [`TestCluster::heal`]: each
    /// side keeps running and serving its clients, and hears nothing of the other (a network partition).
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) {
        let names = |side: &[usize]| -> Vec<String> {
            side.iter()
                .filter_map(|&index| self.nodes.get(index))
                .map(|node| node.name.clone())
                .collect()
        };
        let gossip = |side: &[usize]| -> Vec<std::net::SocketAddr> {
            side.iter()
                .filter_map(|&index| self.nodes.get(index)?.gossip_addr)
                .collect()
        };
        self.links.partition(&names(side_a), &names(side_b));
        self.gossip.partition(&gossip(side_a), &gossip(side_b));
    }

    /// Undoes every partition and freeze, of gossip and links.
    pub fn heal(&self) {
        self.links.heal();
        self.gossip.heal();
    }

    /// Node `index`, if it runs.
    pub fn node(&self, index: usize) -> Option<&Node> {
        self.nodes.get(index)?.handle.as_ref().map(NodeHandle::node)
    }

    /// Stops every node.
    pub async fn stop(mut self) {
        // Together: each node's goodbye takes a few gossip rounds.
        let stops = self
            .nodes
            .iter_mut()
            .filter_map(|node| node.handle.take())
            .map(NodeHandle::stop);
        futures_util::future::join_all(stops).await;
    }
}
