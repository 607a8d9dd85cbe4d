//! [`MembershipConfig`]: how a node joins the cluster and detects failures, with the measured defaults and their
//! checks.

use std::net::SocketAddr;
use std::time::Duration;

use super::MembershipError;

/// How a node joins the cluster and detects failures.
///
/// [`MembershipConfig::new`] fills in the measured defaults (`tests/cli/processes.rs` measures detection and, with
/// `--ignored`, soaks for false suspicion); change them only with a soak test of your own.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// This node's name, unique in the cluster and stable across restarts.
    pub node_name: String,
    /// This incarnation's generation; `None` takes the start time in milliseconds since the Unix epoch. Set it
    /// explicitly only if two starts of the same name could fall in the same millisecond or the clock may go back.
    pub generation: Option<u64>,
    /// Nodes gossip only with nodes of the same cluster id.
    pub cluster_id: String,
    /// The UDP address to bind for gossip; port 0 picks a free port.
    pub gossip_listen: SocketAddr,
    /// The address other nodes reach this node's gossip at. Port 0 means the port actually bound, and an
    /// unspecified IP (`0.0.0.0`) means the IP of `gossip_listen`, which must then be a specific one.
    pub gossip_advertise: SocketAddr,
    /// Seed addresses (`ip:port` or `host:port`, resolved again every minute). Any live seed suffices; list every
    /// seed on every node. A node's own address may be listed.
    pub seeds: Vec<String>,
    /// Time between gossip rounds (default 200 ms).
    pub gossip_interval: Duration,
    /// Phi above which a peer is declared dead (default 16).
    pub phi_threshold: f64,
    /// Heartbeat interval assumed before any is observed (default 200 ms).
    pub initial_interval: Duration,
    /// Heartbeat intervals longer than this are left out of the mean (default 2 s).
    pub max_interval: Duration,
    /// Number of heartbeat intervals the mean is taken over (default 1000).
    pub sampling_window_size: usize,
    /// How long a dead member is remembered before it is forgotten (default 600 s).
    pub dead_node_grace_period: Duration,
    /// How long deleted keys are kept as tombstones (default 3600 s).
    pub marked_for_deletion_grace_period: Duration,
}

impl MembershipConfig {
    /// A configuration with the measured defaults, advertising `gossip_listen` and with no seeds.
    pub fn new(node_name: impl Into<String>, cluster_id: impl Into<String>, gossip_listen: SocketAddr) -> Self {
        Self {
            node_name: node_name.into(),
            generation: None,
            cluster_id: cluster_id.into(),
            gossip_listen,
            gossip_advertise: gossip_listen,
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(200),
            phi_threshold: 16.0,
            initial_interval: Duration::from_millis(200),
            max_interval: Duration::from_secs(2),
            sampling_window_size: 1000,
            dead_node_grace_period: Duration::from_secs(600),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
        }
    }

    /// Replaces the seed list.
    pub fn with_seeds<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    pub(super) fn validate(&self) -> Result<(), MembershipError> {
        let invalid = |field: &'static str, reason: &'static str| Err(MembershipError::InvalidConfig { field, reason });
        if self.node_name.is_empty() {
            return invalid("node_name", "must not be empty");
        }
        if self.cluster_id.is_empty() {
            return invalid("cluster_id", "must not be empty");
        }
        if self.gossip_interval.is_zero() {
            return invalid("gossip_interval", "must be greater than zero");
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return invalid("phi_threshold", "must be a positive number");
        }
        if self.initial_interval.is_zero() {
            return invalid("initial_interval", "must be greater than zero");
        }
        if self.max_interval < self.gossip_interval {
            return invalid("max_interval", "must be at least gossip_interval");
        }
        if self.sampling_window_size == 0 {
            return invalid("sampling_window_size", "must be at least 1");
        }
        Ok(())
    }

    /// The address peers reach this node at, once `bound` (the address actually bound) is known.
    pub(super) fn advertise(&self, bound: SocketAddr) -> Result<SocketAddr, MembershipError> {
        let mut advertise = self.gossip_advertise;
        if advertise.ip().is_unspecified() {
            advertise.set_ip(bound.ip());
        }
        if advertise.port() == 0 {
            advertise.set_port(bound.port());
        }
        if advertise.ip().is_unspecified() {
            return Err(MembershipError::UnspecifiedAdvertise {
                listen: self.gossip_listen,
            });
        }
        Ok(advertise)
    }
}
