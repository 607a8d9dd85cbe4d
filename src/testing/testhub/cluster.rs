//! The test server as a cluster: `count` test servers in this process, each with every route of the test server,
//! forming one cluster over in-memory gossip and links (as [`crate::testing::TestCluster`] does), sharing what
//! upstream's one process shares: the JWT key (a token from any node's `/generateJwtToken` is accepted by all) and
//! the `/redirect` counter. Put a load balancer without
//! affinity (the harness's round-robin proxy) in front of them and the official client suite runs against the
//! cluster as against one server. The raw `/echo` endpoint is not a hub: its connections stay on the node that
//! opened them, so a proxy pins `/echo` to one node.

use std::net::SocketAddr;

use super::hub::test_node_builder;
use super::server::{serve_node, Listen, RedirectCounter, TestHubError, TestHubHandle};
use super::tokens::TestTokens;
use crate::cluster::link::memory::MemoryNetwork;
use crate::cluster::{GossipNetwork, LinkConfig, MembershipConfig};
use crate::node::ClusterSettings;

/// The cluster secret of test server clusters.
const SECRET: &str = "hubmesh-testhub-cluster";

/// Starts `count` test servers named `testhub-1` … as one cluster, plain HTTP on ephemeral ports, on the current
/// tokio runtime; returns once each has joined (they then find each other by gossip within about a second).
pub async fn serve_cluster(count: usize) -> Result<Vec<TestHubHandle>, TestHubError> {
    let tokens = TestTokens::random();
    let counter = RedirectCounter::shared();
    let gossip = GossipNetwork::in_memory();
    let links = MemoryNetwork::new();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut seeds: Vec<String> = Vec::new();
    let mut servers = Vec::new();
    for index in 0..count {
        let name = format!("testhub-{}", index + 1);
        let membership = MembershipConfig::new(name.as_str(), "testhub", loopback).with_seeds(seeds.clone());
        let settings = ClusterSettings::real(membership, LinkConfig::new(loopback, SECRET))
            .over_in_memory_networks(gossip.clone(), links.clone());
        let node = test_node_builder(&tokens)
            .name(&name)
            .cluster(settings)
            .build_and_join()
            .await?;
        if let Some(addr) = node.gossip_addr().await {
            seeds.push(addr.to_string());
        }
        let listen = Listen {
            http: Some("127.0.0.1:0".to_owned()),
            https: None,
        };
        servers.push(serve_node(node, tokens.clone(), counter.clone(), &listen).await?);
    }
    Ok(servers)
}
