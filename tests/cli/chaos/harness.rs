//! The running harness: the relay, the five nodes (and the wrong-secret one, started only for its fault), the load,
//! and applying one fault at a time, with the checks made right after each heal: views converge within 5 s, and
//! every node answers every group's member count in line with the connections the harness holds within 5 s.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::clients::{
    group_counts, group_members, run_client, run_rest_sender, run_stateful_client, user_in_group, Load,
};
use super::nodes::{converge, view, Node, SECRET};
use super::official::{run_official, OfficialSlot};
use super::relay::Relay;
use super::schedule::{Fault, Way};

/// Nodes of the cluster.
pub const NODES: usize = 5;
/// Client slots per node: raw test clients, and official ones (`official.rs`).
pub const CLIENTS_PER_NODE: usize = 4;
pub const OFFICIAL_PER_NODE: usize = 1;
/// Groups, and how many of them each client joins.
pub const GROUPS: usize = 12;
pub const GROUPS_PER_CLIENT: usize = 3;
/// The promise checked after each heal.
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(5);

/// A broken promise: when, and what (message, group, nodes).
#[derive(Debug, Clone)]
pub struct Violation {
    pub at: Duration,
    pub what: String,
}

/// A fault as it was applied: the nodes it touched, from its start to its heal (and, for the record, how long
/// views took to converge after it).
#[derive(Debug, Clone)]
pub struct Applied {
    pub fault: String,
    pub nodes: Vec<usize>,
    pub start: Duration,
    pub healed: Duration,
    pub converged_after: Option<Duration>,
}

pub struct Harness {
    /// Stateful-reconnect receivers per node.
    stateful_per_node: usize,
    pub relay: Relay,
    pub nodes: Vec<Node>,
    intruder: Node,
    pub load: Arc<Load>,
    pub groups: Vec<String>,
    pub applied: Vec<Applied>,
    pub violations: Vec<Violation>,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.load.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock_seed(seed: u64, salt: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(salt)
}

impl Harness {
    /// Starts the relay and the five nodes, waits for them to form a cluster, and starts the load, with
    /// `stateful_per_node` stateful-reconnect receivers per node (`clients::run_stateful_client`) among the clients.
    pub async fn start(seed: u64, stateful_per_node: usize) -> anyhow::Result<Harness> {
        let dir = tempfile::tempdir()?;
        let relay = Relay::start(NODES + 1).await?;
        let seeds: Vec<_> = relay.ports[..NODES].iter().map(|ports| ports.relay_gossip).collect();
        let mut nodes = Vec::new();
        for index in 0..NODES {
            let name = format!("node-{}", index + 1);
            nodes.push(Node::configure(
                dir.path(),
                index,
                &name,
                &relay.ports[index],
                &seeds,
                SECRET,
            )?);
        }
        let intruder = Node::configure(
            dir.path(),
            NODES,
            "intruder",
            &relay.ports[NODES],
            &seeds,
            "not-the-cluster-secret",
        )?;
        for node in &mut nodes {
            let pid = node.start().await?;
            relay.faults.set_pid(node.index, Some(pid));
        }
        let load = Load::new(nodes.iter().map(|node| node.http).collect());
        let groups: Vec<String> = (0..GROUPS).map(|group| format!("group-{group}")).collect();
        let mut harness = Harness {
            relay,
            nodes,
            intruder,
            load,
            groups,
            applied: Vec::new(),
            stateful_per_node,
            violations: Vec::new(),
            tasks: Vec::new(),
            _dir: dir,
        };
        harness
            .converged(Duration::from_secs(30))
            .await
            .map_err(|views| anyhow::anyhow!("the five nodes did not form a cluster in 30 s: {views}"))?;
        harness.start_load(seed);
        Ok(harness)
    }

    fn start_load(&mut self, seed: u64) {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut random = rand::rngs::StdRng::seed_from_u64(lock_seed(seed, 1));
        // Each client's groups, in turn from the one seeded generator, so a seed gives every client the same ones.
        let all = self.groups.clone();
        let pick = |random: &mut rand::rngs::StdRng| {
            let mut groups = all.clone();
            groups.shuffle(random);
            groups.truncate(GROUPS_PER_CLIENT);
            groups
        };
        let mut slots = Vec::new();
        for node in 0..NODES {
            for slot in 0..CLIENTS_PER_NODE {
                let groups = pick(&mut random);
                self.tasks
                    .push(tokio::spawn(run_client(self.load.clone(), node, slot, groups)));
                slots.push(format!("n{node}c{slot}"));
            }
        }
        for node in 0..NODES {
            for slot in 0..self.stateful_per_node {
                let groups = pick(&mut random);
                self.tasks
                    .push(tokio::spawn(run_stateful_client(self.load.clone(), node, slot, groups)));
                slots.push(format!("n{node}s{slot}"));
            }
        }
        let mut official = Vec::new();
        for node in 0..NODES {
            for slot in 0..OFFICIAL_PER_NODE {
                let groups = pick(&mut random);
                let name = format!("n{node}o{slot}");
                slots.push(name.clone());
                official.push(OfficialSlot { name, node, groups });
            }
        }
        let load = self.load.clone();
        self.tasks.push(tokio::spawn(async move {
            if let Err(error) = run_official(load, official).await {
                println!("the official clients failed: {error:#}");
            }
        }));
        for node in 0..NODES {
            let sender = run_rest_sender(
                self.load.clone(),
                node,
                slots.clone(),
                lock_seed(seed, 10 + node as u64),
            );
            self.tasks.push(tokio::spawn(sender));
        }
    }

    fn violation(&mut self, what: String) {
        let at = self.load.now();
        println!("VIOLATION at {:.3} s: {what}", at.as_secs_f64());
        self.violations.push(Violation { at, what });
    }

    /// Waits until every client slot has a connection that joined its groups and is not resuming (at most `limit`).
    pub async fn all_clients_joined(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            // Not one whose socket dropped and that is resuming: whether it comes back is not known yet (a
            // record taken then counted one as open that no node held any more, defect 36).
            let settled = self
                .load
                .open_members()
                .iter()
                .filter(|connection| !connection.resuming)
                .count();
            if settled == NODES * (CLIENTS_PER_NODE + self.stateful_per_node + OFFICIAL_PER_NODE) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn addresses(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.nodes.iter().map(|node| (node.name.clone(), node.http)).collect()
    }

    async fn converged(&self, limit: Duration) -> Result<Duration, String> {
        converge(&self.addresses(), limit).await
    }

    /// After a heal: views must converge within 5 s (a violation otherwise, and then up to 30 s more to go on),
    /// then every node's group member counts must match the harness's connections within 5 s.
    async fn after_heal(&mut self, fault: &str) -> Option<Duration> {
        let converged = match self.converged(CONVERGE_WITHIN).await {
            Ok(took) => Some(took),
            Err(views) => {
                self.violation(format!(
                    "views did not converge within 5 s after healing {fault}: {views}"
                ));
                if let Err(views) = self.converged(Duration::from_secs(30)).await {
                    self.violation(format!(
                        "views did not converge within 35 s after healing {fault}: {views}"
                    ));
                }
                None
            }
        };
        self.check_memberships(fault, CONVERGE_WITHIN).await;
        converged
    }

    /// Every node's member count of every group, within the bounds the harness's connections set: at least the
    /// connections that had joined before the poll and are still open after it, at most those that were open
    /// (or opening) at some time during it. Polled until it holds, at most `limit`.
    pub async fn check_memberships(&mut self, after: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let mut wrong = Vec::new();
            for node in 0..NODES {
                let before = self.load.now();
                let counts = group_counts(self.nodes[node].http, &self.groups).await;
                let polled = self.load.now();
                let connections = self.load.with(|record| record.connections.clone());
                let Some(counts) = counts else {
                    wrong.push(format!("{} did not answer GroupCount", self.nodes[node].name));
                    continue;
                };
                for (group, count) in self.groups.iter().zip(counts) {
                    let members = connections
                        .iter()
                        .filter(|connection| connection.groups.contains(group));
                    let (mut low, mut high) = (0u64, 0u64);
                    for connection in members {
                        let held = connection.closed.is_none() && !connection.resuming;
                        if connection.joined.is_some_and(|joined| joined <= before) && held {
                            low += 1;
                        }
                        if connection.opened <= polled && connection.closed.is_none_or(|closed| closed >= before) {
                            high += 1;
                        }
                    }
                    if count < low || count > high {
                        wrong.push(format!(
                            "{} counts {count} members of {group}, the harness holds between {low} and {high}",
                            self.nodes[node].name
                        ));
                    }
                }
            }
            if wrong.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let lost = self.members_not_found().await;
                let ghosts = self.members_not_held().await;
                self.violation(format!(
                    "memberships after {after}, 5 s on: {}; members the owners do not know of: {lost:?}; members \
                     the harness does not hold open: {ghosts:?}",
                    wrong.join("; ")
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The open, joined connections whose user the first node finds in none of their groups' memberships
    /// (asked of each group's owner through the REST API), as `label: group`.
    async fn members_not_found(&self) -> Vec<String> {
        let mut lost = Vec::new();
        for connection in self.load.open_members() {
            for group in &connection.groups {
                if user_in_group(self.nodes[0].http, &connection.user, group).await == Some(false) {
                    lost.push(format!("{} (node-{}): {group}", connection.label, connection.node + 1));
                }
            }
        }
        lost
    }

    /// The members the first node lists (`GroupMembers`, asked of each group's owner) that are no open connection
    /// of the harness, each with what the harness recorded of it (its label, when it opened, joined and closed,
    /// and why it closed), or "unknown" for an id it never saw.
    async fn members_not_held(&self) -> Vec<String> {
        let connections = self.load.with(|record| record.connections.clone());
        let mut extra = Vec::new();
        for group in &self.groups {
            let Some(members) = group_members(self.nodes[0].http, group).await else {
                extra.push(format!("{group}: no answer"));
                continue;
            };
            for id in members {
                let known = connections.iter().rev().find(|connection| connection.id == id);
                match known {
                    Some(connection) if connection.closed.is_none() && connection.groups.contains(group) => {}
                    Some(connection) => extra.push(format!(
                        "{group}: {id} = {} (opened {:?}, joined {:?}, closed {:?}: {:?})",
                        connection.label,
                        connection.opened,
                        connection.joined,
                        connection.closed,
                        connection.close_reason
                    )),
                    None => extra.push(format!("{group}: {id} (unknown)")),
                }
            }
        }
        extra
    }

    async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        let pid = self.nodes[node].start().await?;
        self.relay.faults.set_pid(node, Some(pid));
        Ok(())
    }

    fn cut(&self, side: &[usize], way: Way, links_only: bool) {
        let rest: Vec<usize> = (0..NODES).filter(|node| !side.contains(node)).collect();
        let faults = &self.relay.faults;
        match way {
            Way::Both => {
                faults.cut(side, &rest, links_only);
                faults.cut(&rest, side, links_only);
            }
            Way::Outbound => faults.cut(side, &rest, links_only),
            Way::Inbound => faults.cut(&rest, side, links_only),
        }
    }

    fn pair_cut(&self, a: usize, b: usize, way: Way) {
        let faults = &self.relay.faults;
        match way {
            Way::Both => {
                faults.cut(&[a], &[b], false);
                faults.cut(&[b], &[a], false);
            }
            Way::Outbound => faults.cut(&[a], &[b], false),
            Way::Inbound => faults.cut(&[b], &[a], false),
        }
    }

    /// Applies one fault, heals it, and checks what must hold after the heal.
    pub async fn apply(&mut self, fault: Fault) -> anyhow::Result<()> {
        let description = format!("{fault:?}");
        // The wall clock too, to find the fault in the nodes' logs.
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64() % 86_400.0);
        println!(
            "[{:7.3} s] fault: {description} (at {:02}:{:02}:{:06.3} UTC)",
            self.load.now().as_secs_f64(),
            (wall / 3600.0) as u64,
            (wall % 3600.0 / 60.0) as u64,
            wall % 60.0
        );
        if let Fault::RollingRestart = fault {
            for node in 0..NODES {
                let start = self.load.now();
                self.nodes[node].stop()?;
                self.relay.faults.set_pid(node, None);
                self.restart(node).await?;
                let healed = self.load.now();
                let what = format!("the rolling restart of {}", self.nodes[node].name);
                let converged_after = self.after_heal(&what).await;
                self.applied.push(Applied {
                    fault: what,
                    nodes: vec![node],
                    start,
                    healed,
                    converged_after,
                });
            }
            return Ok(());
        }
        let start = self.load.now();
        match &fault {
            Fault::Kill { node, down } => {
                self.nodes[*node].kill();
                self.relay.faults.set_pid(*node, None);
                tokio::time::sleep(*down).await;
                self.restart(*node).await?;
            }
            Fault::Freeze { node, lasting } => {
                self.nodes[*node].freeze()?;
                tokio::time::sleep(*lasting).await;
                self.nodes[*node].thaw()?;
            }
            Fault::Partition { side, way, lasting } => {
                self.cut(side, *way, false);
                tokio::time::sleep(*lasting).await;
            }
            Fault::PairCut { a, b, way, lasting } => {
                self.pair_cut(*a, *b, *way);
                tokio::time::sleep(*lasting).await;
            }
            Fault::LinksOnly { side, lasting } => {
                self.cut(side, Way::Both, true);
                tokio::time::sleep(*lasting).await;
            }
            Fault::Delay { node, delay, lasting } => {
                self.relay.faults.delay(*node, *delay);
                tokio::time::sleep(*lasting).await;
            }
            Fault::WrongSecret { lasting } => self.run_intruder(*lasting).await?,
            Fault::RollingRestart => {}
        }
        self.relay.faults.heal();
        let healed = self.load.now();
        let converged_after = self.after_heal(&description).await;
        self.applied.push(Applied {
            fault: description,
            nodes: fault.nodes(NODES),
            start,
            healed,
            converged_after,
        });
        Ok(())
    }

    /// The node with another secret runs for `lasting`: no real node may list it, and it may list none of them.
    async fn run_intruder(&mut self, lasting: Duration) -> anyhow::Result<()> {
        let pid = self.intruder.start().await?;
        self.relay.faults.set_pid(NODES, Some(pid));
        let until = Instant::now() + lasting;
        let real: BTreeSet<String> = self.nodes.iter().map(|node| node.name.clone()).collect();
        while Instant::now() < until {
            for node in 0..NODES {
                if let Some((live, _)) = view(self.nodes[node].http).await {
                    if live.contains("intruder") {
                        let name = self.nodes[node].name.clone();
                        self.violation(format!("{name} lists the node with another secret: {live:?}"));
                    }
                }
            }
            if let Some((live, _)) = view(self.intruder.http).await {
                if !live.is_disjoint(&real) {
                    self.violation(format!("the node with another secret lists members: {live:?}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.intruder.kill();
        self.relay.faults.set_pid(NODES, None);
        Ok(())
    }

    /// Copies every node's log to a directory that outlives the run (`$TMPDIR/hubmesh-chaos-<seed>`); returns it.
    pub fn keep_logs(&self, seed: u64) -> std::io::Result<std::path::PathBuf> {
        let kept = std::env::temp_dir().join(format!("hubmesh-chaos-{seed}"));
        std::fs::create_dir_all(&kept)?;
        for node in self.nodes.iter().chain(std::iter::once(&self.intruder)) {
            if node.log.exists() {
                std::fs::copy(&node.log, kept.join(format!("{}.log", node.name)))?;
            }
        }
        Ok(kept)
    }

    /// Resident memory of each node, KiB.
    pub fn rss(&self) -> Vec<Option<u64>> {
        self.nodes.iter().map(Node::rss_kib).collect()
    }

    /// Panic lines in every log (the intruder's too).
    pub fn panics(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .chain(std::iter::once(&self.intruder))
            .flat_map(|node| node.panics().into_iter().map(|line| (node.name.clone(), line)))
            .collect()
    }
}
