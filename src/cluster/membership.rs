//! Cluster membership and failure detection by gossip.
//!
//! # What this module owns
//!
//! [`Membership`]: one node's seat in the cluster. It gossips with the seeds and the members it learns of, publishes
//! the node's own string key-values (and its [`NodeStatus`] under [`STATUS_KEY`]), runs the phi-accrual failure
//! detector, and keeps a [`MembershipView`] (the live members with their key-values, and the dead ones) that
//! [`Membership::subscribe`] hands out as a `tokio::sync::watch` channel. Higher layers (the router opening and
//! closing links, placement) react to that channel; they never see chitchat, which does the work underneath.
//!
//! The handle and the task that keeps the view live from chitchat's state are here; beside them:
//!
//! * `identity`: [`NodeId`] and [`NodeStatus`];
//! * `view`: `Member` and [`MembershipView`], and how a view is read off chitchat's state;
//! * `config`: [`MembershipConfig`], its defaults and its checks.
//!
//! # Semantics
//!
//! * A node is a [`NodeId`]: its name and a generation (by default the start time in milliseconds since the Unix
//!   epoch). A restarted node is a new generation: the view lists only the newest live generation of each name and
//!   reports older ones as dead at once, without waiting for the failure detector.
//! * A peer is live while its phi (time since its last fresh heartbeat divided by the mean heartbeat interval)
//!   stays under [`MembershipConfig::phi_threshold`]; liveness is re-evaluated once per gossip round. The defaults
//!   are measured settings (`tests/cli/processes.rs`): a killed or stopped peer is declared dead in about 1–2 s on a
//!   three-node loopback cluster, with no false suspicion under load.
//! * Gossip has no goodbye: a node that shuts down is declared dead by the failure detector like a crashed one.
//!   Publish [`NodeStatus::Draining`] first for a graceful exit.
//! * The view is rebuilt when the live set or any live member's key-values change, and at least once a second.
//!   A node's own key-value changes reach its own view at the end of the next gossip round.
//! * A node resuming from a long stall may see all its peers dead for one round and then live again: consumers of
//!   the view must tolerate one flap.
//!
//! # What it may call
//!
//! chitchat, tokio and tracing, and [`super::gossip_network`] for the medium (with [`super::gossip_auth`]'s keys). Nothing above the cluster layer.

mod config;
mod identity;
mod view;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, Instrument, Span};

use super::gossip_auth::GossipKeys;
use super::gossip_network::{GossipNetwork, OpenedSocket};
use view::{build_view, log_changes};

pub use config::MembershipConfig;
pub use identity::{NodeId, NodeStatus};
#[cfg(feature = "internals")]
pub use identity::UnknownStatus;
#[cfg(any(test, feature = "internals"))]
pub use view::Member;
pub use view::MembershipView;

/// Keys starting with this prefix are reserved for hubmesh itself; `Membership::set` refuses them.
pub const RESERVED_KEY_PREFIX: &str = "hubmesh.";

/// The key under which each node publishes its [`NodeStatus`].
pub const STATUS_KEY: &str = "hubmesh.status";

/// The key a draining node publishes once its connections are gone, right before it leaves: its peers place no
/// group or user on it any more, so what it owns moves to the next owners while it is live and linked
/// (docs/semantics.md, "Drain").
pub const HANDING_OVER_KEY: &str = "hubmesh.handing_over";

/// How often the view is rebuilt even when chitchat reports no change (to pick up nodes that turned dead without
/// ever being live, which do not change the live set).
const VIEW_REFRESH: Duration = Duration::from_secs(1);
/// How many gossip rounds a leaving node waits for its peers to hear that it leaves: each round it tells three
/// peers, and they tell others, so a few reach a cluster of tens.
const LEAVE_ROUNDS: u32 = 3;

/// Why membership could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// A configuration value is out of range.
    #[error("invalid membership setting `{field}`: {reason}")]
    InvalidConfig {
        /// The [`MembershipConfig`] field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The gossip socket could not be bound.
    #[error("cannot bind the gossip socket on {addr}: {reason}")]
    Bind {
        /// The listen address.
        addr: SocketAddr,
        /// The underlying error.
        reason: String,
    },
    /// No advertise address can be derived: set `gossip_advertise` to an address peers can reach.
    #[error("gossip listens on {listen} but no gossip_advertise address is set that peers could reach")]
    UnspecifiedAdvertise {
        /// The listen address.
        listen: SocketAddr,
    },
    /// A key under [`RESERVED_KEY_PREFIX`] was given to `Membership::set` or in the initial state.
    #[error("key `{0}` is reserved for hubmesh (prefix `hubmesh.`)")]
    ReservedKey(String),
    /// The gossip task failed to start or stopped with an error.
    #[error("gossip failed: {0}")]
    Gossip(String),
}

/// One node's membership in the cluster: gossip, failure detection and the live view.
///
/// Dropping it stops gossip (peers will declare the node dead); [`shutdown`](Self::shutdown) also waits for the
/// background tasks to end.
pub struct Membership {
    id: NodeId,
    gossip_addr: SocketAddr,
    /// How often it gossips: how long saying something takes to reach the peers.
    gossip_interval: Duration,
    chitchat: ChitchatHandle,
    view: watch::Receiver<MembershipView>,
    stop_view: oneshot::Sender<()>,
    view_task: JoinHandle<()>,
    span: Span,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("id", &self.id)
            .field("gossip_addr", &self.gossip_addr)
            .finish()
    }
}

impl Membership {
    /// Starts gossiping over real UDP, every datagram authenticated with `keys` (derived from the cluster secret),
    /// publishing `initial_state` (plus [`NodeStatus::Joining`]).
    pub async fn start(
        config: MembershipConfig,
        keys: GossipKeys,
        initial_state: BTreeMap<String, String>,
    ) -> Result<Membership, MembershipError> {
        Self::start_on(config, initial_state, &GossipNetwork::udp(keys)).await
    }

    /// Starts gossiping over `network`: real UDP, or an in-process network shared by the nodes of a test (see
    /// `GossipNetwork::in_memory`), with its faults applied.
    pub async fn start_on(
        config: MembershipConfig,
        initial_state: BTreeMap<String, String>,
        network: &GossipNetwork,
    ) -> Result<Membership, MembershipError> {
        config.validate()?;
        if let Some(key) = initial_state.keys().find(|key| key.starts_with(RESERVED_KEY_PREFIX)) {
            return Err(MembershipError::ReservedKey(key.clone()));
        }
        let generation = config.generation.unwrap_or_else(now_millis);
        let id = NodeId::new(config.node_name.as_str(), generation);
        let span = tracing::info_span!("membership", node = %config.node_name, generation);

        let (socket, bound) = network
            .open(config.gossip_listen)
            .await
            .map_err(|err| MembershipError::Bind {
                addr: config.gossip_listen,
                reason: format!("{err:#}"),
            })?;
        let gossip_addr = config.advertise(bound)?;
        let transport = OpenedSocket::new(network.guard(socket, gossip_addr));

        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_name.as_str(), generation, gossip_addr),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: bound,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: config.sampling_window_size,
                max_interval: config.max_interval,
                initial_interval: config.initial_interval,
                dead_node_grace_period: config.dead_node_grace_period,
            },
            marked_for_deletion_grace_period: config.marked_for_deletion_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let mut key_values: Vec<(String, String)> = initial_state.into_iter().collect();
        key_values.push((STATUS_KEY.to_owned(), NodeStatus::Joining.as_str().to_owned()));
        let chitchat = spawn_chitchat(chitchat_config, key_values, &transport)
            .await
            .map_err(|err| MembershipError::Gossip(format!("{err:#}")))?;

        // The first view holds the local node alone (peers come with gossip), so it is never empty.
        let first_view = build_view(&*chitchat.chitchat().lock().await, &id);
        let (view_tx, view) = watch::channel(first_view);
        let (stop_view, stop_rx) = oneshot::channel();
        let view_task =
            tokio::spawn(maintain_view(chitchat.chitchat(), id.clone(), view_tx, stop_rx).instrument(span.clone()));
        span.in_scope(|| info!(%gossip_addr, seeds = ?config.seeds, "membership started"));
        Ok(Membership {
            id,
            gossip_addr,
            gossip_interval: config.gossip_interval,
            chitchat,
            view,
            stop_view,
            view_task,
            span,
        })
    }

    #[cfg(any(test, feature = "internals"))]
    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The address this node gossips on, as peers see it (a listen port of 0 resolved).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Publishes `key = value` in this node's state. Keys under [`RESERVED_KEY_PREFIX`] are refused.
    pub async fn set(&self, key: &str, value: &str) -> Result<(), MembershipError> {
        if key.starts_with(RESERVED_KEY_PREFIX) {
            return Err(MembershipError::ReservedKey(key.to_owned()));
        }
        self.set_raw(key, value).await;
        Ok(())
    }

    #[cfg(any(test, feature = "internals"))]
    /// Removes `key` from this node's state (peers see it gone once the deletion has gossiped).
    pub async fn remove(&self, key: &str) -> Result<(), MembershipError> {
        if key.starts_with(RESERVED_KEY_PREFIX) {
            return Err(MembershipError::ReservedKey(key.to_owned()));
        }
        self.chitchat
            .with_chitchat(|chitchat| chitchat.self_node_state().delete(key))
            .await;
        Ok(())
    }

    /// Says that this node leaves the cluster now ([`NodeStatus::Left`]) and waits a few gossip rounds for the
    /// peers to hear it: they count it as dead at once, so its groups move without waiting for failure detection.
    /// Call it right before [`Membership::shutdown`], when the node holds no connection any more.
    pub async fn announce_leaving(&self) {
        self.set_status(NodeStatus::Left).await;
        if self.view().live.len() > 1 {
            tokio::time::sleep(self.gossip_interval * LEAVE_ROUNDS).await;
        }
    }

    /// Says that this node hands what it owns over ([`HANDING_OVER_KEY`]); returns how long its peers take to hear
    /// it (a few gossip rounds).
    pub async fn announce_handing_over(&self) -> Duration {
        self.span.in_scope(|| info!("handing groups and users over"));
        self.set_raw(HANDING_OVER_KEY, "true").await;
        self.gossip_interval * LEAVE_ROUNDS
    }

    /// Publishes this node's status under [`STATUS_KEY`].
    pub async fn set_status(&self, status: NodeStatus) {
        self.span.in_scope(|| info!(%status, "node status"));
        self.set_raw(STATUS_KEY, status.as_str()).await;
    }

    async fn set_raw(&self, key: &str, value: &str) {
        self.chitchat
            .with_chitchat(|chitchat| chitchat.self_node_state().set(key, value))
            .await;
    }

    /// A receiver of the membership view: it holds the latest view and wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<MembershipView> {
        self.view.clone()
    }

    /// The latest view.
    pub fn view(&self) -> MembershipView {
        self.view.borrow().clone()
    }

    #[cfg(any(test, feature = "internals"))]
    /// The live members, this node included, newest generation of each name only.
    pub fn live_members(&self) -> Vec<Member> {
        self.view.borrow().live.clone()
    }

    #[cfg(any(test, feature = "internals"))]
    /// The members declared dead or superseded by a newer generation.
    pub fn dead_members(&self) -> Vec<NodeId> {
        self.view.borrow().dead.clone()
    }

    #[cfg(any(test, feature = "internals"))]
    /// The longest current failure detection timeout over the live peers: how long a peer may stay silent before
    /// it is declared dead (to which one gossip round may be added). `None` while no peer has been observed long
    /// enough. It shrinks as the cluster grows, since each node heartbeats on every gossip message it handles.
    pub async fn failure_detection_timeout(&self) -> Option<Duration> {
        self.chitchat
            .with_chitchat(|chitchat| {
                let peers: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
                peers
                    .iter()
                    .filter_map(|peer| chitchat.failure_detection_timeout(peer))
                    .max()
            })
            .await
    }

    /// Stops gossiping and waits for the background tasks to end. Peers declare this node dead by failure
    /// detection; subscribers' receivers report the sender closed.
    pub async fn shutdown(self) -> Result<(), MembershipError> {
        let Membership {
            chitchat,
            stop_view,
            view_task,
            span,
            ..
        } = self;
        drop(stop_view);
        let view_result = view_task.await;
        let gossip_result = chitchat.shutdown().await;
        span.in_scope(|| info!("membership stopped"));
        view_result.map_err(|err| MembershipError::Gossip(err.to_string()))?;
        gossip_result.map_err(|err| MembershipError::Gossip(format!("{err:#}")))
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Keeps `view_tx` up to date with chitchat's state until `stop` fires or is dropped.
async fn maintain_view(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    self_id: NodeId,
    view_tx: watch::Sender<MembershipView>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut live_changes = chitchat.lock().await.live_nodes_watcher();
    let mut refresh = tokio::time::interval(VIEW_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = live_changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = refresh.tick() => {}
        }
        let view = build_view(&*chitchat.lock().await, &self_id);
        view_tx.send_if_modified(|current| {
            if *current == view {
                return false;
            }
            log_changes(current, &view);
            *current = view;
            true
        });
    }
    debug!("membership view task stopped");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]
mod tests {
    use super::*;
    use std::time::Instant;

    const CLUSTER: &str = "test-cluster";
    /// Upper bound for any one wait in these tests; the expected times are a few seconds at most.
    const WAIT: Duration = Duration::from_secs(10);

    fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn keys() -> GossipKeys {
        GossipKeys::new("membership-test-secret", &[] as &[&str])
    }

    fn state(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Waits until `pred` holds for the view of `rx`, returning how long it took; `None` after `limit`. Bounded in
    /// time and in wake-ups.
    async fn wait_for(
        rx: &mut watch::Receiver<MembershipView>,
        limit: Duration,
        pred: impl Fn(&MembershipView) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        for _ in 0..10_000 {
            if pred(&rx.borrow_and_update()) {
                return Some(start.elapsed());
            }
            let remaining = limit.checked_sub(start.elapsed())?;
            match tokio::time::timeout(remaining, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
        None
    }

    fn sees_all(view: &MembershipView, nodes: &[&NodeId]) -> bool {
        view.live.len() == nodes.len() && nodes.iter().all(|id| view.is_live(id))
    }

    async fn start_udp(name: &str, seeds: &[SocketAddr], kv: &[(&str, &str)]) -> Membership {
        let config =
            MembershipConfig::new(name, CLUSTER, localhost()).with_seeds(seeds.iter().map(|addr| addr.to_string()));
        Membership::start(config, keys(), state(kv)).await.unwrap()
    }

    /// Starts three nodes over UDP seeded by the first, and waits until every node sees all three.
    async fn three_converged(names: [&str; 3]) -> Vec<Membership> {
        let a = start_udp(names[0], &[], &[("http", "a")]).await;
        let seed = [a.gossip_addr()];
        let b = start_udp(names[1], &seed, &[("http", "b")]).await;
        let c = start_udp(names[2], &seed, &[("http", "c")]).await;
        let nodes = vec![a, b, c];
        let ids: Vec<&NodeId> = nodes.iter().map(Membership::id).collect();
        for node in &nodes {
            let took = wait_for(&mut node.subscribe(), WAIT, |view| sees_all(view, &ids)).await;
            assert!(took.is_some(), "{} did not see all three: {:?}", node.id(), node.view());
        }
        nodes
    }

    #[tokio::test]
    async fn a_fresh_node_sees_itself() {
        let node = start_udp("alone", &[], &[("http", "x")]).await;
        let view = node.view();
        assert_eq!(view.live_ids(), vec![node.id().clone()]);
        assert_eq!(view.live[0].status(), Some(NodeStatus::Joining));
        assert_eq!(view.peers().count(), 0);
        node.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn three_nodes_converge_with_key_values() {
        let start = Instant::now();
        let nodes = three_converged(["conv-a", "conv-b", "conv-c"]).await;
        println!("three UDP nodes converged in {:?}", start.elapsed());
        let expected = [("conv-a", "a"), ("conv-b", "b"), ("conv-c", "c")];
        for node in &nodes {
            let mut rx = node.subscribe();
            let took = wait_for(&mut rx, WAIT, |view| {
                expected.iter().all(|(name, http)| {
                    view.member_named(name).is_some_and(|m| m.get("http") == Some(*http))
                        && view.member_named(name).and_then(Member::status) == Some(NodeStatus::Joining)
                })
            })
            .await;
            assert!(took.is_some(), "{} lacks key-values: {:?}", node.id(), node.view());
            assert_eq!(node.live_members().len(), 3);
            assert!(node.dead_members().is_empty());
        }

        // An update made on one node reaches the others.
        nodes[2].set("http", "c2").await.unwrap();
        nodes[2].set_status(NodeStatus::Serving).await;
        for node in &nodes {
            let took = wait_for(&mut node.subscribe(), WAIT, |view| {
                view.member_named("conv-c")
                    .is_some_and(|m| m.get("http") == Some("c2") && m.status() == Some(NodeStatus::Serving))
            })
            .await;
            assert!(took.is_some(), "{} missed the update: {:?}", node.id(), node.view());
        }
        assert!(matches!(
            nodes[0].set("hubmesh.x", "y").await,
            Err(MembershipError::ReservedKey(_))
        ));

        // A removed key disappears everywhere.
        nodes[2].remove("http").await.unwrap();
        for node in &nodes {
            let took = wait_for(&mut node.subscribe(), WAIT, |view| {
                view.member_named("conv-c").is_some_and(|m| m.get("http").is_none())
            })
            .await;
            assert!(
                took.is_some(),
                "{} still sees the removed key: {:?}",
                node.id(),
                node.view()
            );
        }
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    }

    /// Waits on every node at once until `pred` holds for its view, and returns for each node the time from `since`
    /// (measured when that node's view changed, not when it was looked at). Panics naming `what` on a timeout.
    async fn times_until<P>(nodes: &[&Membership], since: Instant, what: &str, pred: P) -> Vec<Duration>
    where
        P: Fn(&MembershipView) -> bool + Clone + Send + 'static,
    {
        let mut waits = tokio::task::JoinSet::new();
        for (index, node) in nodes.iter().enumerate() {
            let mut rx = node.subscribe();
            let pred = pred.clone();
            waits.spawn(async move { (index, wait_for(&mut rx, WAIT, pred).await.map(|_| since.elapsed())) });
        }
        let mut times = vec![Duration::ZERO; nodes.len()];
        while let Some(joined) = waits.join_next().await {
            let (index, took) = joined.unwrap();
            let took = took.unwrap_or_else(|| {
                panic!(
                    "{}: {what} not within {WAIT:?}: {:?}",
                    nodes[index].id(),
                    nodes[index].view()
                )
            });
            println!("{}: {what} after {took:?}", nodes[index].id());
            times[index] = took;
        }
        times
    }

    #[tokio::test]
    async fn shut_down_node_is_declared_dead() {
        let mut nodes = three_converged(["kill-a", "kill-b", "kill-c"]).await;
        // Let the failure detector gather some intervals, as in a running cluster.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let timeout = nodes[0].failure_detection_timeout().await;
        println!("failure detection timeout reported with 3 nodes: {timeout:?}");
        assert!(timeout.is_some());

        let victim = nodes.pop().unwrap();
        let victim_id = victim.id().clone();
        victim.shutdown().await.unwrap();
        let since = Instant::now();
        let survivors: Vec<&Membership> = nodes.iter().collect();
        let dead = victim_id.clone();
        times_until(&survivors, since, "shut-down node declared dead", move |view| {
            !view.is_live(&dead) && view.dead.contains(&dead) && view.live.len() == 2
        })
        .await;
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    }

    /// A node that says it leaves is dead for its peers at once: here failure detection would take far longer
    /// than the wait (its threshold is set out of reach), so only the announcement can make them drop it.
    #[tokio::test]
    async fn a_node_that_announces_leaving_is_dropped_without_failure_detection() {
        let network = GossipNetwork::udp(keys());
        let mut nodes = converged_with(&network, &["left-a", "left-b", "left-c"], |config| {
            config.phi_threshold = 10_000.0;
        })
        .await;
        let leaving = nodes.pop().unwrap();
        let gone = leaving.id().clone();
        leaving.announce_leaving().await;
        leaving.shutdown().await.unwrap();
        let survivors: Vec<&Membership> = nodes.iter().collect();
        times_until(&survivors, Instant::now(), "the node that left is dropped", move |view| {
            !view.is_live(&gone) && view.live.len() == 2
        })
        .await;
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    }

    /// Starts `names` on `network`, each seeded by the ones before it, and waits until all see all.
    async fn converged_on(network: &GossipNetwork, names: &[&str]) -> Vec<Membership> {
        converged_with(network, names, |_| {}).await
    }

    /// The same, each node's configuration changed by `adjust` first.
    async fn converged_with(
        network: &GossipNetwork,
        names: &[&str],
        adjust: impl Fn(&mut MembershipConfig),
    ) -> Vec<Membership> {
        let mut nodes = Vec::new();
        let mut seeds: Vec<String> = Vec::new();
        for name in names {
            let mut config = MembershipConfig::new(*name, CLUSTER, localhost()).with_seeds(seeds.clone());
            adjust(&mut config);
            let node = Membership::start_on(config, state(&[("role", name)]), network)
                .await
                .unwrap();
            seeds.push(node.gossip_addr().to_string());
            nodes.push(node);
        }
        let refs: Vec<&Membership> = nodes.iter().collect();
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id().clone()).collect();
        times_until(&refs, Instant::now(), "converged", move |view| {
            sees_all(view, &ids.iter().collect::<Vec<_>>())
        })
        .await;
        nodes
    }

    #[tokio::test]
    async fn frozen_node_is_declared_dead_and_comes_back() {
        let network = GossipNetwork::udp(keys());
        let nodes = converged_on(&network, &["frz-a", "frz-b", "frz-c"]).await;
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id().clone()).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;

        network.freeze(nodes[2].gossip_addr());
        let frozen = ids[2].clone();
        let others: Vec<&Membership> = nodes[..2].iter().collect();
        times_until(&others, Instant::now(), "frozen node declared dead", move |view| {
            !view.is_live(&frozen)
        })
        .await;

        network.thaw(nodes[2].gossip_addr());
        let all: Vec<&Membership> = nodes.iter().collect();
        times_until(&all, Instant::now(), "all three live again after thaw", move |view| {
            sees_all(view, &ids.iter().collect::<Vec<_>>())
        })
        .await;
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    }

    #[tokio::test]
    async fn partitioned_node_is_declared_dead_in_memory_and_heals() {
        let network = GossipNetwork::in_memory();
        let nodes = converged_on(&network, &["part-a", "part-b", "part-c"]).await;
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id().clone()).collect();
        assert_eq!(
            nodes[2].view().member_named("part-a").and_then(|m| m.get("role")),
            Some("part-a")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;

        let addrs: Vec<SocketAddr> = nodes.iter().map(Membership::gossip_addr).collect();
        network.partition(&addrs[2..], &addrs[..2]);
        let since = Instant::now();
        let cut_off = ids[2].clone();
        let majority: Vec<&Membership> = nodes[..2].iter().collect();
        times_until(&majority, since, "partitioned node declared dead", move |view| {
            !view.is_live(&cut_off) && view.dead.contains(&cut_off) && view.live.len() == 2
        })
        .await;
        times_until(
            &[&nodes[2]],
            since,
            "majority declared dead by the cut-off node",
            |view| view.live.len() == 1 && view.dead.len() == 2,
        )
        .await;

        network.heal();
        let all: Vec<&Membership> = nodes.iter().collect();
        times_until(&all, Instant::now(), "all three live again after heal", move |view| {
            sees_all(view, &ids.iter().collect::<Vec<_>>()) && view.dead.is_empty()
        })
        .await;
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    }

    #[tokio::test]
    async fn restarted_node_is_seen_as_new_generation() {
        let a = start_udp("rst-a", &[], &[]).await;
        let seed = [a.gossip_addr()];
        let b = start_udp("rst-b", &seed, &[("incarnation", "1")]).await;
        let (old_id, b_addr) = (b.id().clone(), b.gossip_addr());
        assert!(wait_for(&mut a.subscribe(), WAIT, |view| view.is_live(&old_id))
            .await
            .is_some());
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.shutdown().await.unwrap();

        // Same name, same address, new generation (the default one: start time in ms).
        tokio::time::sleep(Duration::from_millis(5)).await;
        let config = MembershipConfig::new("rst-b", CLUSTER, b_addr).with_seeds([seed[0].to_string()]);
        let restarted_at = Instant::now();
        let b2 = Membership::start(config, keys(), state(&[("incarnation", "2")])).await.unwrap();
        let new_id = b2.id().clone();
        assert!(
            new_id.generation > old_id.generation,
            "{new_id} is not newer than {old_id}"
        );
        let (new, old) = (new_id.clone(), old_id.clone());
        times_until(
            &[&a],
            restarted_at,
            "restarted node seen as its new generation",
            move |view| {
                view.member_named("rst-b")
                    .is_some_and(|m| m.id == new && m.get("incarnation") == Some("2"))
                    && !view.is_live(&old)
                    && view.dead.contains(&old)
            },
        )
        .await;
        times_until(&[&b2], restarted_at, "restarted node sees the cluster", |view| {
            view.live.len() == 2
        })
        .await;
        a.shutdown().await.unwrap();
        b2.shutdown().await.unwrap();
    }

    /// Starts a node over real UDP with `keys`, seeded by `seeds`.
    async fn start_keyed(name: &str, keys: GossipKeys, seeds: &[SocketAddr]) -> Membership {
        let config =
            MembershipConfig::new(name, CLUSTER, localhost()).with_seeds(seeds.iter().map(|addr| addr.to_string()));
        Membership::start(config, keys, BTreeMap::new()).await.unwrap()
    }

    #[tokio::test]
    async fn a_node_with_another_secret_is_never_listed() {
        let nodes = three_converged(["sec-a", "sec-b", "sec-c"]).await;
        let seeds: Vec<SocketAddr> = nodes.iter().map(Membership::gossip_addr).collect();
        // Same cluster id, every real node as a seed, another secret.
        let intruder = start_keyed("sec-x", GossipKeys::new("not-the-secret", &[] as &[&str]), &seeds).await;
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            for node in &nodes {
                let view = node.view();
                assert!(
                    view.member_named("sec-x").is_none() && !view.dead.iter().any(|id| &*id.name == "sec-x"),
                    "{} lists the intruder: {view:?}",
                    node.id()
                );
                assert_eq!(view.live.len(), 3, "{} lost a member: {view:?}", node.id());
            }
            assert_eq!(intruder.view().live.len(), 1, "the intruder learnt of the cluster");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        intruder.shutdown().await.unwrap();
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    }

    #[tokio::test]
    async fn nodes_see_each_other_across_a_secret_rotation() {
        // A has moved to s2 and still accepts s1; B still runs s1 alone.
        let a = start_keyed("rot-a", GossipKeys::new("s2", &["s1"]), &[]).await;
        let seed = [a.gossip_addr()];
        let b = start_keyed("rot-b", GossipKeys::new("s1", &[] as &[&str]), &seed).await;
        let ids = [a.id().clone(), b.id().clone()];
        times_until(&[&a, &b], Instant::now(), "A (s2, previous s1) and B (s1) see each other", move |view| {
            sees_all(view, &ids.iter().collect::<Vec<_>>())
        })
        .await;
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn seed_that_starts_last_lets_the_cluster_form() {
        // Reserve a port for the seed, then free it so the seed can bind it later.
        let seed_addr = std::net::UdpSocket::bind(localhost()).unwrap().local_addr().unwrap();
        let seed = [seed_addr];
        let a = start_udp("late-a", &seed, &[]).await;
        let b = start_udp("late-b", &seed, &[]).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            a.live_members().len(),
            1,
            "a found someone without the seed: {:?}",
            a.view()
        );

        let seed_started = Instant::now();
        let config = MembershipConfig::new("late-seed", CLUSTER, seed_addr).with_seeds([seed_addr.to_string()]);
        let s = Membership::start(config, keys(), BTreeMap::new()).await.unwrap();
        assert_eq!(s.gossip_addr(), seed_addr);
        let ids = [a.id().clone(), b.id().clone(), s.id().clone()];
        times_until(
            &[&a, &b, &s],
            seed_started,
            "all three live after the late seed started",
            move |view| sees_all(view, &ids.iter().collect::<Vec<_>>()),
        )
        .await;
        for node in [a, b, s] {
            node.shutdown().await.unwrap();
        }
    }

    #[tokio::test]
    async fn bad_settings_are_refused() {
        let mut config = MembershipConfig::new("bad", CLUSTER, localhost());
        config.phi_threshold = 0.0;
        let err = Membership::start(config, keys(), BTreeMap::new()).await.unwrap_err();
        assert!(
            matches!(
                err,
                MembershipError::InvalidConfig {
                    field: "phi_threshold",
                    ..
                }
            ),
            "{err}"
        );

        let config = MembershipConfig::new("bad", CLUSTER, SocketAddr::from(([0, 0, 0, 0], 0)));
        let err = Membership::start(config, keys(), BTreeMap::new()).await.unwrap_err();
        assert!(matches!(err, MembershipError::UnspecifiedAdvertise { .. }), "{err}");

        let config = MembershipConfig::new("bad", CLUSTER, localhost());
        let err = Membership::start(config, keys(), state(&[("hubmesh.status", "serving")]))
            .await
            .unwrap_err();
        assert!(matches!(err, MembershipError::ReservedKey(_)), "{err}");

        let taken = std::net::UdpSocket::bind(localhost()).unwrap();
        let config = MembershipConfig::new("bad", CLUSTER, taken.local_addr().unwrap());
        let err = Membership::start(config, keys(), BTreeMap::new()).await.unwrap_err();
        assert!(matches!(err, MembershipError::Bind { .. }), "{err}");
    }

    #[test]
    fn status_round_trips() {
        for status in [NodeStatus::Joining, NodeStatus::Serving, NodeStatus::Draining] {
            assert_eq!(status.as_str().parse::<NodeStatus>(), Ok(status));
        }
        assert!("sleeping".parse::<NodeStatus>().is_err());
        assert_eq!(NodeId::new("n1", 7).to_string(), "n1.7");
    }
}
